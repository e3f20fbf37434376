//! Fault injection against real brokers: each test produces a known set of
//! messages, injects one fault (a broker killed and restarted, a connection
//! cut through a TCP proxy, a sink away for longer than the retry budget,
//! poison messages, a burst beyond the handler's speed), then accounts for
//! every message — delivered, dead-lettered, dropped, duplicated or lost —
//! and measures the recovery time: from the end of the fault to the first
//! output that came after it. Each prints one machine-greppable line:
//!
//! `[fault] name=... sent=... delivered=... dead=... dropped=... dup=... lost=... recovery_ms=...`
//!
//! Every broker is a private instance on a free loopback port, started and
//! killed by PID by the test. SIGKILL of `sluice` itself mid-stream is the
//! conformance suite's `no_loss_across_sigkill` (every broker type), not
//! repeated here.
//!
//! Run: `cargo test -p sluice --test faults -- --nocapture`.

#[path = "../common/mod.rs"]
mod common;

/// Counting every message's fate, and the steps most fault tests share.
mod account;
/// Captures of the output and dead-letter topics, and the topics of a test.
mod capture;
/// The pipeline files: each broker's TOML over a test's topics.
mod pipelines;

/// A sink away for longer than the retry budget: the circuit breaker.
mod breaker;
/// A burst beyond the handler's speed: memory bounded by the source.
mod burst;
/// A NATS cluster node killed: failover.
mod cluster;
/// A broker at its limits: a full JetStream stream.
mod full;
/// Kafka node failure: bootstrap past a dead address; a full broker.
mod kafka_nodes;
/// Poison mixed into good messages, and a burst beyond the handler's speed.
mod load;
/// A broker restarted, a connection cut or hung, mid-stream.
mod outages;
/// A QoS 2 release (PUBREL) lost with a connection.
mod release;
/// A queue-group request/reply service through NATS cluster failover.
mod requests;
/// MQTT primary/standby switch-over and back.
mod switchover;

/// Held by the test that measures the `sluice` process's resident memory and
/// by the tests that run several brokers (the three-node cluster, the MQTT
/// primary and standby), so that the measurement never runs beside
/// the heaviest tests of the suite (whose load it would count).
static HEAVY: std::sync::LazyLock<tokio::sync::Mutex<()>> =
    std::sync::LazyLock::new(|| tokio::sync::Mutex::new(()));
