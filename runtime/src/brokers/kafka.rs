//! What a Kafka source and sink share: librdkafka's log lines bridged to
//! `tracing` at their level, under the pipeline's name.

use rdkafka::config::RDKafkaLogLevel;

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
