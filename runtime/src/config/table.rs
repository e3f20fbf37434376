//! What the config layer asks of every source and sink table: the rules its
//! types cannot express, as [`Problem`]s, and its relative paths resolved.
//! [`SourceConfig::table`] and [`SinkConfig::table`] are the one dispatch over
//! the broker types, so a new type is a variant, an arm there and a line in
//! `sections::SOURCE_TYPES` / `SINK_TYPES`.

use std::path::{Path, PathBuf};

use super::model::{FileSinkConfig, FileSourceConfig, SinkConfig, SourceConfig};

/// A broken rule in a source or sink table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key, relative to the table, dotted for nested keys (`tls.cert_file`).
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl Problem {
    /// A problem at `key`.
    pub fn new(key: String, message: String) -> Self {
        Self { key, message }
    }
}

/// A source or sink table.
pub trait Table {
    /// The rules the types cannot express, each broken one with its key.
    fn validate(&self) -> Vec<Problem> {
        Vec::new()
    }

    /// Makes every relative path (files, secrets, certificates) relative to
    /// `base`, the pipeline file's folder.
    fn resolve_paths(&mut self, base: &Path);
}

impl SourceConfig {
    /// The table behind the variant.
    pub fn table(&self) -> &dyn Table {
        match self {
            SourceConfig::File(c) => c,
            SourceConfig::Kafka(c) => c,
            SourceConfig::Mqtt(c) => c,
            SourceConfig::Nats(c) => c,
            SourceConfig::Jetstream(c) => c,
        }
    }

    /// The table behind the variant, to change.
    pub fn table_mut(&mut self) -> &mut dyn Table {
        match self {
            SourceConfig::File(c) => c,
            SourceConfig::Kafka(c) => c,
            SourceConfig::Mqtt(c) => c,
            SourceConfig::Nats(c) => c,
            SourceConfig::Jetstream(c) => c,
        }
    }
}

impl SinkConfig {
    /// The table behind the variant.
    pub fn table(&self) -> &dyn Table {
        match self {
            SinkConfig::File(c) => c,
            SinkConfig::Kafka(c) => c,
            SinkConfig::Mqtt(c) => c,
            SinkConfig::Nats(c) => c,
            SinkConfig::Jetstream(c) => c,
        }
    }

    /// The table behind the variant, to change.
    pub fn table_mut(&mut self) -> &mut dyn Table {
        match self {
            SinkConfig::File(c) => c,
            SinkConfig::Kafka(c) => c,
            SinkConfig::Mqtt(c) => c,
            SinkConfig::Nats(c) => c,
            SinkConfig::Jetstream(c) => c,
        }
    }
}

/// Joins a relative path to `base`; `-` (standard input/output) stays as it is.
pub(crate) fn resolve(base: &Path, p: &mut PathBuf) {
    if p.as_os_str() != "-" && p.is_relative() {
        *p = base.join(&*p);
    }
}

/// [`resolve`] for an optional path.
pub(crate) fn resolve_opt(base: &Path, p: &mut Option<PathBuf>) {
    if let Some(p) = p {
        resolve(base, p);
    }
}

impl Table for FileSourceConfig {
    fn validate(&self) -> Vec<Problem> {
        if self.max_in_flight < 1 {
            return vec![Problem::new(
                "max_in_flight".into(),
                format!("must be at least 1, found {}", self.max_in_flight),
            )];
        }
        Vec::new()
    }

    fn resolve_paths(&mut self, base: &Path) {
        resolve(base, &mut self.path);
        resolve_opt(base, &mut self.checkpoint);
    }
}

impl Table for FileSinkConfig {
    fn resolve_paths(&mut self, base: &Path) {
        resolve(base, &mut self.path);
    }
}

/// [`Table`] for types whose inherent `validate` and `resolve_paths` say it.
macro_rules! broker_tables {
    ($($t:ty),* $(,)?) => {$(
        impl Table for $t {
            fn validate(&self) -> Vec<Problem> {
                <$t>::validate(self)
            }
            fn resolve_paths(&mut self, base: &Path) {
                <$t>::resolve_paths(self, base)
            }
        }
    )*};
}

broker_tables!(
    super::kafka::KafkaSourceConfig,
    super::kafka::KafkaSinkConfig,
    super::mqtt::MqttSourceConfig,
    super::mqtt::MqttSinkConfig,
    super::nats::NatsSourceConfig,
    super::nats::NatsSinkConfig,
    super::nats::JetStreamSourceConfig,
    super::nats::JetStreamSinkConfig,
);
