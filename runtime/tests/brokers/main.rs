//! Broker behaviour end to end against real brokers: the conformance suite run over every source and sink type, and each broker's own delivery, readiness and request/reply tests.
//!
//! One test binary (`cargo test -p sluice --test brokers`), a module per concern;
//! filter by module: `cargo test -p sluice --test brokers -- <module>::`.

#[path = "../common/mod.rs"]
mod common;
#[path = "../conformance/mod.rs"]
mod conformance;

mod conformance_file;
mod conformance_kafka;
mod conformance_mqtt;
mod conformance_nats;
mod jetstream_delivery;
mod kafka_delivery;
mod kafka_exactly_once;
mod kafka_readiness;
mod mqtt_delivery;
mod nats_core;
mod pipeline_file;
mod request_reply;
