//! The conformance suite against both Kafka-protocol brokers, each a private
//! instance on a free port: noida-db and tansu (see `.ci/install-kafka-brokers.sh`).
//!
//! Broker notes (documented faults, not weakened checks): both run with
//! `session_timeout = "6s"` (noida refuses less); tansu gets
//! `fetch.wait.max.ms = 100` through `options` (its fetches otherwise wait the
//! full default) and its group join takes about half the session timeout,
//! which only adds start-up time. Every check of the suite runs on tansu;
//! noida-db cannot pass the SIGKILL check (see [`kafka_noida_conformance`]).

use crate::common;
use crate::conformance;

use std::time::Duration;

use common::kafka::{KafkaBroker, KafkaCollector, Kind, TestRecord};
use conformance::{Collector, Fixture, TestMsg};
use futures::future::BoxFuture;

struct KafkaFixture {
    broker: KafkaBroker,
}

struct Capture(KafkaCollector);

impl Collector for Capture {
    fn collect(&mut self, n: usize, timeout: Duration) -> BoxFuture<'_, Vec<TestMsg>> {
        Box::pin(async move {
            self.0
                .wait(n, timeout)
                .await
                .into_iter()
                .map(|r| TestMsg {
                    key: r.key,
                    payload: r.payload,
                    headers: r.headers,
                })
                .collect()
        })
    }
}

impl Fixture for KafkaFixture {
    /// `max_in_flight` (1000) unsettled, plus up to half of it settled and
    /// awaiting the count-triggered commit, plus commits still on the wire.
    fn duplicate_window(&self) -> usize {
        1000 + 500 + 128
    }
    fn name(&self) -> String {
        format!("kafka-{}", self.broker.kind.name())
    }

    fn source_toml(&self, topic: &str, group: &str) -> String {
        common::kafka::source_toml(&self.broker, topic, group, "")
    }

    fn sink_toml(&self, topic: &str) -> String {
        common::kafka::sink_toml(&self.broker, topic)
    }

    fn collector<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Box<dyn Collector>>> {
        Box::pin(async move {
            // One partition, so the order across the whole topic is checkable.
            self.broker.create_topic(topic, 1).await;
            Ok(Box::new(Capture(self.broker.collect(topic).await)) as Box<dyn Collector>)
        })
    }

    fn share<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.broker.create_topic(topic, 4).await;
            Ok(())
        })
    }

    fn produce<'a>(
        &'a self,
        topic: &'a str,
        msgs: &'a [TestMsg],
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.broker.create_topic(topic, 1).await;
            let recs: Vec<TestRecord> = msgs
                .iter()
                .map(|m| TestRecord {
                    key: m.key.clone(),
                    payload: m.payload.clone(),
                    headers: m.headers.clone(),
                    ..Default::default()
                })
                .collect();
            // Keyed records spread over the partitions (one, except for `share`).
            self.broker.produce(topic, None, &recs).await;
            Ok(())
        })
    }
}

/// noida-db runs every check but the SIGKILL one, which it cannot pass: a
/// member killed with SIGKILL is never evicted from its group there (not
/// after `session.timeout.ms`, not in 2 minutes), so the restarted instance's
/// JoinGroup never completes and it is never assigned a partition (seen: the
/// second `sluice` logged no assignment in 120 s; the same check passes on
/// tansu, and a live member joining a noida group does get its share, see
/// `kafka_delivery::revoke_commits_noida`). With a real Kafka the dead member
/// is expired after the session timeout. That check is its own ignored test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_noida_conformance() {
    let fx = KafkaFixture {
        broker: KafkaBroker::start(Kind::Noida),
    };
    conformance::in_order(&fx).await;
    conformance::dead_letters(&fx).await;
    conformance::retry_then_success(&fx).await;
}

/// The SIGKILL check on noida-db, kept runnable (`--ignored`) for when the
/// broker evicts dead members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "noida-db never evicts a SIGKILLed group member, so the restarted consumer is never assigned a partition (broker fault; the same check runs on tansu)"]
async fn kafka_noida_no_loss_across_sigkill() {
    let fx = KafkaFixture {
        broker: KafkaBroker::start(Kind::Noida),
    };
    conformance::no_loss_across_sigkill(&fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_tansu_conformance() {
    let fx = KafkaFixture {
        broker: KafkaBroker::start(Kind::Tansu),
    };
    conformance::run_all(&fx).await;
    conformance::scale_out_sigkill(&fx).await;
}
