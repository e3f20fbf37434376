//! Background captures of a test's output and dead-letter topics, each
//! record stamped with its arrival time and `sluice-error-class`, and the
//! topics of one test made ready (input created or subscribed, outputs
//! captured) for each broker type.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt as _;

use crate::common;
use crate::common::kafka::{KafkaBroker, TestRecord};
use crate::common::mqtt::{client, create_session};
use crate::common::nats::stream_of;

/// One captured record: payload, when it arrived, its `sluice-error-class`.
#[derive(Clone, Debug)]
pub struct Got {
    pub payload: Vec<u8>,
    pub at: Instant,
    pub class: Option<String>,
}

/// Everything captured from one topic, stamped with its arrival time.
#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<Vec<Got>>>);

impl Seen {
    pub fn push(&self, payload: &[u8], class: Option<String>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(Got {
            payload: payload.to_vec(),
            at: Instant::now(),
            class,
        });
    }

    pub fn all(&self) -> Vec<Got> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Distinct payloads captured.
    pub fn unique(&self) -> usize {
        let all = self.all();
        let set: std::collections::HashSet<&[u8]> =
            all.iter().map(|g| g.payload.as_slice()).collect();
        set.len()
    }

    /// The first arrival at or after `t`.
    pub fn first_after(&self, t: Instant) -> Option<Instant> {
        self.all().iter().map(|g| g.at).filter(|a| *a >= t).min()
    }
}

/// A background capture; stops on drop.
pub struct Capture {
    pub seen: Seen,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn class_of<'a>(mut headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Option<String> {
    headers
        .find(|(k, _)| *k == "sluice-error-class")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// Reads every partition of `topic` from the beginning (no group commits).
pub async fn kafka_capture(b: &KafkaBroker, topic: &str) -> Capture {
    b.create_topic(topic, 1).await;
    kafka_capture_with(b.config(), topic)
}

/// [`kafka_capture`] of an existing one-partition `topic`, through `config`.
pub fn kafka_capture_with(mut config: rdkafka::ClientConfig, topic: &str) -> Capture {
    use rdkafka::Message as _;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Headers as _;
    let consumer: StreamConsumer = config
        .set("group.id", format!("capture-{topic}"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .set("reconnect.backoff.max.ms", "500")
        .create()
        .expect("capture consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let seen = Seen::default();
    let s = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            match consumer.recv().await {
                Ok(m) => {
                    let class = m.headers().and_then(|hs| {
                        class_of(hs.iter().map(|h| (h.key, h.value.unwrap_or_default())))
                    });
                    s.push(m.payload().unwrap_or_default(), class);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    Capture { seen, task }
}

/// An MQTT 5 subscriber with a persistent session (it survives a broker
/// restart with persistence on) at QoS 1.
pub async fn mqtt_capture(port: u16, topic: &str) -> Capture {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut o = MqttOptions::new(common::unique("capture"), "127.0.0.1", port);
    o.set_clean_start(false)
        .set_session_expiry_interval(Some(3600))
        .set_max_packet_size(Some(1 << 24));
    let (c, mut l) = AsyncClient::new(o, 10_000);
    c.subscribe(topic, QoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    let seen = Seen::default();
    let s = seen.clone();
    let (subscribed, mut sub_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let _keep = c;
        loop {
            match l.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subscribed.send(true);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let props = p.properties.map(|p| p.user_properties).unwrap_or_default();
                    let class = props
                        .iter()
                        .find(|(k, _)| k == "sluice-error-class")
                        .map(|(_, v)| v.clone());
                    s.push(&p.payload, class);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(20), sub_rx.wait_for(|v| *v))
        .await
        .expect("SUBACK within 20 s")
        .expect("capture task alive");
    Capture { seen, task }
}

/// A core NATS subscriber (the client resubscribes after a reconnect).
pub async fn nats_capture(client: &async_nats::Client, subject: &str) -> Capture {
    let mut sub = client
        .subscribe(subject.to_string())
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    let seen = Seen::default();
    let s = seen.clone();
    let task = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let class = m
                .headers
                .as_ref()
                .and_then(|h| h.get("sluice-error-class").map(|v| v.as_str().to_string()));
            s.push(&m.payload, class);
        }
    });
    Capture { seen, task }
}

/// Creates the stream of `subject` (file storage, so it survives a
/// restart) with `replicas` copies (more than 1 on a clustered server).
async fn ensure_stream(js: &jetstream::Context, subject: &str, replicas: usize) -> stream::Stream {
    js.get_or_create_stream(stream::Config {
        name: stream_of(subject),
        subjects: vec![subject.to_string()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .expect("stream")
}

/// The topics of one test: `<base><sep>in`, `out` and `dlq`, with the
/// output and the dead letters captured from the start.
pub struct Topics {
    pub base: String,
    pub input: String,
    pub output: String,
    pub dlq: String,
    pub out: Capture,
    pub dead: Capture,
}

impl Topics {
    /// A fresh base from `prefix`, the three names with `sep` between, and
    /// the output and dead letters captured by `capture`.
    async fn new<F: Future<Output = Capture>>(
        prefix: &str,
        sep: char,
        capture: impl Fn(String) -> F,
    ) -> Topics {
        let base = common::unique(prefix);
        let [input, output, dlq] = ["in", "out", "dlq"].map(|what| format!("{base}{sep}{what}"));
        let out = capture(output.clone()).await;
        let dead = capture(dlq.clone()).await;
        Topics {
            base,
            input,
            output,
            dlq,
            out,
            dead,
        }
    }

    /// The MQTT source's client id, whose session holds the input's messages.
    pub fn client_id(&self) -> String {
        format!("{}-src", self.base)
    }
}

/// JetStream subjects (`<base>.in`, ...), the input's stream made.
pub async fn js_topics(js: &jetstream::Context, prefix: &str) -> Topics {
    js_topics_r(js, prefix, 1).await
}

/// [`js_topics`] with every stream in `replicas` copies (a clustered server).
pub async fn js_topics_r(js: &jetstream::Context, prefix: &str, replicas: usize) -> Topics {
    let t = Topics::new(prefix, '.', |name| async move {
        js_capture(js, &name, replicas).await
    })
    .await;
    ensure_stream(js, &t.input, replicas).await;
    t
}

/// Reads a stream (made with `replicas` copies if missing) through a
/// durable pull consumer; keeps pulling across server restarts.
pub async fn js_capture(js: &jetstream::Context, subject: &str, replicas: usize) -> Capture {
    let s = ensure_stream(js, subject, replicas).await;
    let name = format!("capture_{}", stream_of(subject));
    let consumer: consumer::PullConsumer = s
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                ..Default::default()
            },
        )
        .await
        .expect("capture consumer");
    let seen = Seen::default();
    let s = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            match consumer
                .fetch()
                .max_messages(500)
                .expires(Duration::from_millis(200))
                .messages()
                .await
            {
                Ok(mut b) => {
                    while let Some(m) = b.next().await {
                        match m {
                            Ok(m) => {
                                let class = m.headers.as_ref().and_then(|h| {
                                    h.get("sluice-error-class").map(|v| v.as_str().to_string())
                                });
                                s.push(&m.payload, class);
                                let _ = m.ack().await;
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    Capture { seen, task }
}

/// Publishes to JetStream and waits for every ack (retrying a publish that
/// failed, e.g. while the server restarts).
pub async fn js_produce(js: &jetstream::Context, subject: &str, msgs: &[Vec<u8>]) {
    for chunk in msgs.chunks(256) {
        let mut acks = Vec::new();
        for m in chunk {
            acks.push(
                js.publish(subject.to_string(), Bytes::from(m.clone()))
                    .await
                    .expect("publish"),
            );
        }
        for a in acks {
            a.await.expect("publish ack");
        }
    }
}

/// Core NATS subjects (`<base>.in`, ...).
pub async fn nats_topics(client: &async_nats::Client, prefix: &str) -> Topics {
    Topics::new(prefix, '.', |name| async move {
        nats_capture(client, &name).await
    })
    .await
}

/// Kafka topics (`<base>-in`, ...), the input created and `msgs` produced to it.
pub async fn kafka_topics(b: &KafkaBroker, prefix: &str, msgs: &[Vec<u8>]) -> Topics {
    let t = Topics::new(
        prefix,
        '-',
        |name| async move { kafka_capture(b, &name).await },
    )
    .await;
    b.create_topic(&t.input, 1).await;
    let records: Vec<TestRecord> = msgs.iter().map(|m| TestRecord::new(m.clone())).collect();
    b.produce(&t.input, Some(0), &records).await;
    t
}

/// MQTT topics (`<base>/in`, ...) and the source's persistent session, so
/// that what is published before Sluice connects is queued for it.
pub async fn mqtt_topics(port: u16, prefix: &str) -> Topics {
    let t = Topics::new(prefix, '/', |name| async move {
        mqtt_capture(port, &name).await
    })
    .await;
    create_session(port, false, &t.client_id(), &t.input).await;
    t
}

/// Publishes `msgs` to `topic` at QoS 1 and disconnects.
pub async fn mqtt_produce(port: u16, topic: &str, msgs: &[Vec<u8>]) {
    let producer = client(port, false, &common::unique("producer"), false).await;
    let batch: Vec<common::mqtt::Msg> = msgs.iter().map(|m| (m.clone(), vec![])).collect();
    producer.publish(topic, 1, &batch).await;
    producer.disconnect().await;
}

/// A NATS client for the tests that reconnects every 100 ms.
pub async fn nats_client(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(url)
        .await
        .expect("connect to the private nats-server")
}
