//! The conformance suite against a private Mosquitto, once with MQTT 5 and
//! once with MQTT 3.1.1 (dead letters as JSON envelopes there).
//!
//! MQTT keeps nothing for absent subscribers, so `produce` first makes the
//! source's persistent session (same client id, subscribed at QoS 1): the
//! messages then wait in it until `sluice` connects, as they would for a
//! device fleet publishing while Sluice restarts. The broker runs with
//! `max_queued_messages 100000` so none are dropped.

use crate::common;
use crate::conformance;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::mqtt::{Mosquitto, Opts, TestClient, client, create_session};
use conformance::{Collector, Fixture, TestMsg};
use futures::future::BoxFuture;

struct MqttFixture {
    broker: Mosquitto,
    v311: bool,
    /// Input topic → the client id its source uses.
    sessions: Mutex<HashMap<String, String>>,
}

impl MqttFixture {
    fn version(&self) -> &'static str {
        if self.v311 { "3.1.1" } else { "5" }
    }
}

struct MqttCollector {
    client: TestClient,
    /// Dead letters on 3.1.1 are envelopes: decode them into headers.
    envelope: bool,
}

impl Collector for MqttCollector {
    fn collect(&mut self, n: usize, timeout: Duration) -> BoxFuture<'_, Vec<TestMsg>> {
        Box::pin(async move {
            let got = self.client.received_at_least(n, timeout).await;
            got.into_iter()
                .map(|(_, payload, props)| {
                    if self.envelope
                        && let Ok(e) = std::str::from_utf8(&payload)
                            .map_err(|e| e.to_string())
                            .and_then(sluice::envelope::decode)
                    {
                        return TestMsg {
                            key: e.key.map(|k| k.to_vec()),
                            payload: e.payload.to_vec(),
                            headers: e
                                .headers
                                .into_iter()
                                .map(|h| (h.key, h.value.to_vec()))
                                .collect(),
                        };
                    }
                    TestMsg {
                        key: None,
                        payload: payload.to_vec(),
                        headers: props
                            .into_iter()
                            .map(|(k, v)| (k, v.into_bytes()))
                            .collect(),
                    }
                })
                .collect()
        })
    }
}

impl Fixture for MqttFixture {
    fn name(&self) -> String {
        format!("mqtt{}", if self.v311 { "311" } else { "5" })
    }

    fn source_toml(&self, topic: &str, group: &str) -> String {
        let id: String = group
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        self.sessions
            .lock()
            .unwrap()
            .insert(topic.to_string(), id.clone());
        format!(
            "type = \"mqtt\"\nurl = \"{}\"\ntopics = [\"{topic}\"]\nqos = 1\nversion = \"{}\"\nclient_id = \"{id}\"\nreconnect_max = \"1s\"",
            self.broker.url(),
            self.version()
        )
    }

    fn sink_toml(&self, topic: &str) -> String {
        // 3.1.1 dead letters are JSON envelopes by default: nothing to set here.
        format!(
            "type = \"mqtt\"\nurl = \"{}\"\ntopic = \"{topic}\"\nqos = 1\nversion = \"{}\"",
            self.broker.url(),
            self.version()
        )
    }

    fn collector<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Box<dyn Collector>>> {
        Box::pin(async move {
            // The capture speaks MQTT 5 to see user properties; 3.1.1 publishes reach it unchanged.
            let c = client(self.broker.port, false, &common::unique("capture"), false).await;
            c.subscribe(topic).await;
            Ok(Box::new(MqttCollector {
                client: c,
                envelope: self.v311 && topic.ends_with("-dlq"),
            }) as Box<dyn Collector>)
        })
    }

    fn produce<'a>(
        &'a self,
        topic: &'a str,
        msgs: &'a [TestMsg],
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let id = self.sessions.lock().unwrap().get(topic).cloned();
            if let Some(id) = id {
                create_session(self.broker.port, self.v311, &id, topic).await;
            }
            let c = client(
                self.broker.port,
                self.v311,
                &common::unique("producer"),
                false,
            )
            .await;
            #[allow(clippy::type_complexity)]
            let batch: Vec<(Vec<u8>, Vec<(String, String)>)> = msgs
                .iter()
                .map(|m| {
                    let props = m
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                        .collect();
                    (m.payload.clone(), props)
                })
                .collect();
            let t = Instant::now();
            c.publish(topic, 1, &batch).await;
            eprintln!(
                "[{}] produced {} QoS 1 messages in {:?}",
                self.name(),
                msgs.len(),
                t.elapsed()
            );
            c.disconnect().await;
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_conformance() {
    let fx = MqttFixture {
        broker: Mosquitto::start(Opts::default()),
        v311: false,
        sessions: Mutex::new(HashMap::new()),
    };
    conformance::run_all(&fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt311_conformance() {
    let fx = MqttFixture {
        broker: Mosquitto::start(Opts::default()),
        v311: true,
        sessions: Mutex::new(HashMap::new()),
    };
    conformance::run_all(&fx).await;
}
