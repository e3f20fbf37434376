//! What a Kafka source and sink share: librdkafka's log lines bridged to
//! `tracing` at their level, under the pipeline's name; the producer's
//! callbacks; the wait of `open` for the brokers, which ends as soon as they
//! refuse the credentials; and the transaction of an exactly-once pipeline
//! (`txn`).

pub mod txn;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// True when a client error means the brokers refused the credentials
/// (SASL): no retry will change that.
pub(crate) fn is_refusal(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed)
    )
}

/// How `open`'s wait for the brokers ended.
pub(crate) enum Probe<T> {
    /// The metadata request finished (answered or timed out).
    Done(T),
    /// The brokers refused the credentials: the client's error text.
    Refused(String),
}

/// Waits for `metadata` (the request `open` makes to reach the cluster),
/// looking every 100 ms, after `serve` (a consumer runs its error callback
/// only while polled), whether the client recorded in `refused` that the
/// brokers refused the credentials; librdkafka itself would retry them
/// until the request timed out.
pub(crate) async fn probe<T, F: Future>(
    metadata: impl Future<Output = T>,
    refused: &Mutex<Option<String>>,
    mut serve: impl FnMut() -> F,
) -> Probe<T> {
    tokio::pin!(metadata);
    loop {
        tokio::select! {
            r = &mut metadata => return Probe::Done(r),
            _ = tokio::time::timeout(Duration::from_millis(100), serve()) => {}
        }
        if let Some(why) = refused.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Probe::Refused(why);
        }
    }
}

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
    /// The brokers' refusal of the credentials, once reported (ends `open`).
    pub(crate) refused: Arc<Mutex<Option<String>>>,
}

impl ProducerCtx {
    pub(crate) fn new(pipeline: &str) -> Self {
        ProducerCtx {
            pipeline: Arc::from(pipeline),
            last_error: Arc::new(Mutex::new(None)),
            refused: Arc::new(Mutex::new(None)),
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
        if is_refusal(&error) {
            *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(text.clone());
        }
        crate::config::kafka::remember_error(&self.last_error, &error, text);
    }
}
