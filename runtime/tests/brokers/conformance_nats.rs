//! The conformance suite against `jetstream` (source and sink, on the NATS
//! server at 127.0.0.1:4222) and core `nats` (on a private, monitored
//! server: core NATS keeps nothing, so the producer waits until Sluice has
//! subscribed; at most once, so the SIGKILL count does not apply).

use crate::common;
use crate::conformance;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use common::nats::{NatsServer, stream_of};
use conformance::{Collector, Fixture, TestMsg};
use futures::StreamExt as _;
use futures::future::BoxFuture;
use sluice::brokers::nats::{from_nats_headers, to_nats_headers};
use sluice::message::Header;

const URL: &str = "nats://127.0.0.1:4222";

fn test_msg(headers: Option<&async_nats::HeaderMap>, payload: &Bytes) -> TestMsg {
    let (headers, key) = from_nats_headers(headers);
    TestMsg {
        key: key.map(|k| k.to_vec()),
        payload: payload.to_vec(),
        headers: headers
            .into_iter()
            .map(|h| (h.key, h.value.to_vec()))
            .collect(),
    }
}

fn nats_headers(m: &TestMsg) -> async_nats::HeaderMap {
    let hs: Vec<Header> = m
        .headers
        .iter()
        .map(|(k, v)| Header::new(k.clone(), v.clone()))
        .collect();
    let key = m.key.clone().map(Bytes::from);
    to_nats_headers(&hs, key.as_ref())
}

struct JetStreamFixture {
    js: jetstream::Context,
}

impl JetStreamFixture {
    async fn ensure(&self, topic: &str) -> anyhow::Result<stream::Stream> {
        Ok(self
            .js
            .get_or_create_stream(stream::Config {
                name: stream_of(topic),
                subjects: vec![topic.to_string()],
                ..Default::default()
            })
            .await?)
    }
}

struct JetStreamCollector {
    consumer: consumer::PullConsumer,
    got: Vec<TestMsg>,
}

impl Collector for JetStreamCollector {
    fn collect(&mut self, n: usize, timeout: Duration) -> BoxFuture<'_, Vec<TestMsg>> {
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            loop {
                match self
                    .consumer
                    .fetch()
                    .max_messages(1000)
                    .expires(Duration::from_millis(100))
                    .messages()
                    .await
                {
                    Ok(mut b) => {
                        while let Some(m) = b.next().await {
                            match m {
                                Ok(m) => {
                                    let _ = m.ack().await;
                                    self.got.push(test_msg(m.headers.as_ref(), &m.payload));
                                }
                                Err(e) => eprintln!("[jetstream collector] {e}"),
                            }
                        }
                    }
                    Err(e) => {
                        eprintln!("[jetstream collector] fetch: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                if self.got.len() >= n || Instant::now() > deadline {
                    return self.got.clone();
                }
            }
        })
    }
}

impl Fixture for JetStreamFixture {
    fn name(&self) -> String {
        "jetstream".into()
    }

    fn source_toml(&self, topic: &str, group: &str) -> String {
        // The server redelivers retried messages while the pipeline takes the
        // next ones, so the retry scenario's first attempts (10 messages, each
        // failing once or twice) are consecutive failures and open the default
        // breaker for 60 s. Keep the breaker on, but short (a table of its own
        // after the [source] body; see the helper's report).
        format!(
            "type = \"jetstream\"\nurl = \"{URL}\"\nstream = \"{}\"\nsubjects = [\"{topic}\"]\n\
             durable = \"{group}\"\nack_wait = \"3s\"\nin_progress_every = \"1s\"\n\n\
             [circuit_breaker]\nopen_for = \"1s\"",
            stream_of(topic)
        )
    }

    fn sink_toml(&self, topic: &str) -> String {
        format!(
            "type = \"jetstream\"\nurl = \"{URL}\"\nsubject = \"{topic}\"\nstream = \"{}\"",
            stream_of(topic)
        )
    }

    fn collector<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Box<dyn Collector>>> {
        Box::pin(async move {
            let s = self.ensure(topic).await?;
            // Durable: an idle ephemeral consumer is deleted by the server after 5 s.
            let name = format!("collector_{}", stream_of(topic));
            let consumer = s
                .get_or_create_consumer(
                    &name,
                    consumer::pull::Config {
                        durable_name: Some(name.clone()),
                        ..Default::default()
                    },
                )
                .await?;
            Ok(Box::new(JetStreamCollector {
                consumer,
                got: Vec::new(),
            }) as Box<dyn Collector>)
        })
    }

    fn produce<'a>(
        &'a self,
        topic: &'a str,
        msgs: &'a [TestMsg],
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.ensure(topic).await?;
            let mut acks = Vec::new();
            for m in msgs {
                let ack = self
                    .js
                    .publish_with_headers(
                        topic.to_string(),
                        nats_headers(m),
                        Bytes::from(m.payload.clone()),
                    )
                    .await?;
                acks.push(ack);
                if acks.len() >= 256 {
                    for a in acks.drain(..) {
                        a.await?;
                    }
                }
            }
            for a in acks {
                a.await?;
            }
            Ok(())
        })
    }
}

struct CoreFixture {
    server: NatsServer,
    client: async_nats::Client,
}

struct CoreCollector {
    got: Arc<Mutex<Vec<TestMsg>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CoreCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector for CoreCollector {
    fn collect(&mut self, n: usize, timeout: Duration) -> BoxFuture<'_, Vec<TestMsg>> {
        Box::pin(conformance::poll(
            n,
            timeout,
            Duration::from_millis(20),
            || self.got.lock().unwrap().clone(),
        ))
    }
}

impl Fixture for CoreFixture {
    fn name(&self) -> String {
        "nats".into()
    }

    fn source_toml(&self, topic: &str, group: &str) -> String {
        format!(
            "type = \"nats\"\nurl = \"{}\"\nsubject = \"{topic}\"\nqueue_group = \"{group}\"",
            self.server.url()
        )
    }

    fn sink_toml(&self, topic: &str) -> String {
        format!(
            "type = \"nats\"\nurl = \"{}\"\nsubject = \"{topic}\"",
            self.server.url()
        )
    }

    fn collector<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Box<dyn Collector>>> {
        Box::pin(async move {
            let mut sub = self.client.subscribe(topic.to_string()).await?;
            self.client.flush().await?;
            // `flush` only writes SUB out; wait until the server has it.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !self.server.has_subscriber(topic) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let got = Arc::new(Mutex::new(Vec::new()));
            let g = got.clone();
            let task = tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    g.lock()
                        .unwrap()
                        .push(test_msg(m.headers.as_ref(), &m.payload));
                }
            });
            Ok(Box::new(CoreCollector { got, task }) as Box<dyn Collector>)
        })
    }

    /// Core NATS keeps nothing for absent subscribers: publish in the
    /// background once Sluice has subscribed to `topic` (at most 60 s).
    fn produce<'a>(
        &'a self,
        topic: &'a str,
        msgs: &'a [TestMsg],
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let client = self.client.clone();
            let topic = topic.to_string();
            let msgs = msgs.to_vec();
            let port = self.server.monitor.expect("monitored server");
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let t = topic.clone();
                    let seen =
                        tokio::task::spawn_blocking(move || common::nats::subscribed(port, &t));
                    if seen.await.unwrap_or(false) {
                        break;
                    }
                    if Instant::now() > deadline {
                        eprintln!("[nats] nobody subscribed to {topic} in 60 s; not producing");
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                for m in &msgs {
                    let _ = client
                        .publish_with_headers(
                            topic.clone(),
                            nats_headers(m),
                            Bytes::from(m.payload.clone()),
                        )
                        .await;
                }
                let _ = client.flush().await;
            });
            Ok(())
        })
    }

    fn at_least_once(&self) -> bool {
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_jetstream() {
    let client = async_nats::connect(URL)
        .await
        .expect("NATS with JetStream on 127.0.0.1:4222");
    let fx = JetStreamFixture {
        js: jetstream::new(client),
    };
    conformance::run_all(&fx).await;
    conformance::scale_out_sigkill(&fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_nats_core() {
    let server = NatsServer::monitored();
    let client = async_nats::connect(server.url())
        .await
        .expect("private NATS");
    let fx = CoreFixture { server, client };
    conformance::run_all(&fx).await;
}
