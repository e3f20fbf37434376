//! What a Kafka source and sink share: librdkafka's log lines bridged to
//! `tracing` at their level, under the pipeline's name; the producer's
//! callbacks; and the transaction of an exactly-once pipeline (`txn`).

pub mod txn;

use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;

/// Writes one librdkafka log line (facility `fac`) to `tracing`.
pub(crate) fn log(pipeline: &str, level: RDKafkaLogLevel, fac: &str, msg: &str) {
    let p = pipeline;
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(pipeline = %p, "librdkafka {fac}: {msg}"),
        RDKafkaLogLevel::Warning => tracing::warn!(pipeline = %p, "librdkafka {fac}: {msg}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(pipeline = %p, "librdkafka {fac}: {msg}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(pipeline = %p, "librdkafka {fac}: {msg}"),
    }
}

/// A producer's callbacks: logs to `tracing`, remembers the last error.
#[derive(Clone)]
pub(crate) struct ProducerCtx {
    pub(crate) pipeline: Arc<str>,
    pub(crate) last_error: Arc<Mutex<Option<String>>>,
}

impl ProducerCtx {
    pub(crate) fn new(pipeline: &str) -> Self {
        ProducerCtx {
            pipeline: Arc::from(pipeline),
            last_error: Arc::new(Mutex::new(None)),
        }
    }
}

impl ClientContext for ProducerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        log(&self.pipeline, level, fac, msg);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let text = format!("{error}: {reason}");
        tracing::debug!(pipeline = %self.pipeline, "kafka producer: {text}");
        crate::config::kafka::remember_error(&self.last_error, &error, text);
    }
}
