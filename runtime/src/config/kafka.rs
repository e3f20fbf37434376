//! Configuration of the `kafka` source and sink (`type = "kafka"`).
//!
//! ```toml
//! [source]
//! type = "kafka"
//! brokers = ["127.0.0.1:9092"]        # or "k1:9092,k2:9092"
//! topics = ["logs"]
//! group = "log-parser"
//! start = "earliest"                  # where a new group starts
//! commit_interval = "500ms"
//! max_in_flight = 1000
//! session_timeout = "10s"
//! options = { "fetch.wait.max.ms" = 100 }
//!
//! [sink]
//! type = "kafka"
//! brokers = ["127.0.0.1:9092"]
//! topic = "parsed"
//! timeout = "30s"
//!
//! [sink.security]                     # same table for sources
//! protocol = "sasl_ssl"
//! sasl_mechanism = "SCRAM-SHA-512"
//! username = "sluice"
//! password = { env = "KAFKA_PASSWORD" }
//! ca_file = "ca.pem"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::secret::Secret;
use super::table::Problem;
use super::units::Dur;

/// `[source] type = "kafka"`: a consumer in a consumer group.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers, `host:port`: a list (`["k1:9092", "k2:9092"]`) or one
    /// comma-separated string (`"k1:9092,k2:9092"`). Any one reachable broker
    /// is enough; the client learns the rest of the cluster from it.
    #[serde(deserialize_with = "brokers_list")]
    pub brokers: Vec<String>,
    /// Topics to consume. A name starting with `^` is a regular expression
    /// (librdkafka syntax) matching every topic it names, now and later.
    pub topics: Vec<String>,
    /// Consumer group id. Instances of a pipeline with the same group share
    /// the topics' partitions; offsets are committed under it.
    pub group: String,
    /// Where a group with no committed offset starts: `earliest` (the oldest
    /// retained message) or `latest` (only messages produced from now on).
    #[serde(default)]
    pub start: KafkaStart,
    /// Offsets are committed in batches: a settled offset is committed at the
    /// latest this long after it settled, or sooner once half of
    /// `max_in_flight` settled since the last commit, and always on shutdown
    /// and when a partition is revoked. After a crash the group re-reads at
    /// most the unsettled window plus what settled since the last commit.
    #[serde(default = "default_commit_interval")]
    pub commit_interval: Dur,
    /// Messages received but not yet settled, at most, across all partitions.
    /// At the limit the source takes no more records until a quarter of them
    /// settled; when it stays full for 5 s it pauses its partitions (the
    /// consumer keeps polling, so it stays in the group).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// `session.timeout.ms`: how long the group waits for a silent member
    /// before giving its partitions to others. Brokers usually require at
    /// least 6 s (Kafka's `group.min.session.timeout.ms`).
    #[serde(default = "default_session_timeout")]
    pub session_timeout: Dur,
    /// TLS and SASL settings. Default: plaintext, no authentication.
    #[serde(default)]
    pub security: KafkaSecurity,
    /// `at-least-once` (default): offsets are committed once messages are
    /// settled; a crash repeats what settled since the last commit.
    /// `exactly-once`: every sink (outputs and dead letter) must be `kafka` on
    /// this cluster; each batch of messages, their outputs, their dead-letter
    /// records and the consumer offsets are written in one Kafka transaction,
    /// every `commit_interval`. Consumers that read the outputs with
    /// `isolation.level = read_committed` see each output once.
    #[serde(default)]
    pub delivery: KafkaDelivery,
    /// `exactly-once` only: the producer's `transactional.id`, the same
    /// across restarts of this instance, so that a restarted instance fences
    /// the old one (and aborts what it left open). Instances sharing the
    /// group need one each (e.g. `"orders-${HOSTNAME}"`). Default:
    /// `sluice-<group>-<pipeline name>`.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// `exactly-once` only: `transaction.timeout.ms`, how long a transaction
    /// may stay open before the broker aborts it. It must cover
    /// `commit_interval` plus the retries of the slowest message in it.
    #[serde(default = "default_transaction_timeout")]
    pub transaction_timeout: Dur,
    /// Raw librdkafka consumer options (`"fetch.wait.max.ms" = 100`), passed
    /// through after Sluice's own. Options that would break the delivery rules
    /// (`enable.auto.commit`, `enable.auto.offset.store`), that have a key of
    /// their own here (`group.id`, `bootstrap.servers`, ...) or that hold a
    /// secret are refused.
    #[serde(default)]
    pub options: BTreeMap<String, OptionValue>,
}

/// `type = "kafka"` as a sink or dead letter: an idempotent producer with `acks=all`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, `host:port`: a list or one comma-separated string.
    #[serde(deserialize_with = "brokers_list")]
    pub brokers: Vec<String>,
    /// The topic for outputs that name none. Without it every output must
    /// name its topic (an output without one is `rejected`).
    #[serde(default)]
    pub topic: Option<String>,
    /// How long a record may take to be acknowledged by all in-sync replicas
    /// (`message.timeout.ms`, including librdkafka's own retries). Past it the
    /// publish fails with the `sink` class and the pipeline retries it.
    #[serde(default = "default_sink_timeout")]
    pub timeout: Dur,
    /// TLS and SASL settings. Default: plaintext, no authentication.
    #[serde(default)]
    pub security: KafkaSecurity,
    /// Raw librdkafka producer options (`"compression.type" = "zstd"`,
    /// `"linger.ms" = 5`). Options that would weaken delivery
    /// (`enable.idempotence = false`, `acks` other than `all`), that have a key
    /// of their own here, or that hold a secret are refused.
    #[serde(default)]
    pub options: BTreeMap<String, OptionValue>,
}

/// What a crash may repeat: see [`KafkaSourceConfig::delivery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum KafkaDelivery {
    /// Offsets committed after settling: a crash repeats a bounded window.
    #[default]
    AtLeastOnce,
    /// Outputs, dead letters and offsets in one transaction per batch.
    ExactlyOnce,
}

/// Where a consumer group without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KafkaStart {
    /// The oldest message the broker still retains.
    #[default]
    Earliest,
    /// Only messages produced after the group first joins.
    Latest,
}

/// The `security` table of a kafka source or sink.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSecurity {
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub protocol: KafkaProtocol,
    /// SASL mechanism for the `sasl_*` protocols: `PLAIN` (default),
    /// `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    /// SASL user name.
    #[serde(default)]
    pub username: Option<String>,
    /// SASL password, from a file or an environment variable (never in the TOML).
    #[serde(default)]
    pub password: Option<Secret>,
    /// PEM file of the CA certificates that verify the brokers (`ssl`,
    /// `sasl_ssl`). Default: the system's trust store. Relative to the pipeline file.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS. Relative to the pipeline file.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (unencrypted). Relative to the pipeline file.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KafkaProtocol {
    /// No TLS, no authentication.
    #[default]
    Plaintext,
    /// TLS, optionally with a client certificate.
    Ssl,
    /// SASL authentication without TLS.
    SaslPlaintext,
    /// SASL authentication over TLS.
    SaslSsl,
}

impl KafkaProtocol {
    /// librdkafka's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaProtocol::Plaintext => "plaintext",
            KafkaProtocol::Ssl => "ssl",
            KafkaProtocol::SaslPlaintext => "sasl_plaintext",
            KafkaProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn sasl(self) -> bool {
        matches!(self, KafkaProtocol::SaslPlaintext | KafkaProtocol::SaslSsl)
    }

    fn tls(self) -> bool {
        matches!(self, KafkaProtocol::Ssl | KafkaProtocol::SaslSsl)
    }
}

/// A value in an `options` table: librdkafka takes every option as a string,
/// so numbers and booleans are written out as TOML has them.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum OptionValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl fmt::Display for OptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionValue::Bool(b) => write!(f, "{b}"),
            OptionValue::Int(i) => write!(f, "{i}"),
            OptionValue::Float(x) => write!(f, "{x}"),
            OptionValue::Str(s) => f.write_str(s),
        }
    }
}

fn default_commit_interval() -> Dur {
    Dur(Duration::from_millis(500))
}

fn default_max_in_flight() -> usize {
    1000
}

fn default_transaction_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}

fn default_session_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

fn default_sink_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

/// Accepts `["a:1", "b:2"]` or `"a:1,b:2"`.
fn brokers_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of \"host:port\" strings or one comma-separated string")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<String>, E> {
            Ok(s.split(',').map(|b| b.trim().to_string()).collect())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                out.push(s.trim().to_string());
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// Consumer options Sluice sets itself or that would break the delivery rule.
/// (key, why, the only value accepted if any).
const SOURCE_REFUSED: &[(&str, &str, Option<&str>)] = &[
    (
        "enable.auto.commit",
        "Sluice commits offsets itself, only once messages are settled",
        Some("false"),
    ),
    (
        "auto.commit.enable",
        "Sluice commits offsets itself, only once messages are settled",
        Some("false"),
    ),
    (
        "enable.auto.offset.store",
        "Sluice stores offsets itself, only once messages are settled",
        Some("false"),
    ),
    ("group.id", "use the `group` key", None),
    ("auto.offset.reset", "use the `start` key", None),
    ("session.timeout.ms", "use the `session_timeout` key", None),
    (
        "enable.partition.eof",
        "Sluice consumes continuously; partition EOF events are not used",
        Some("false"),
    ),
];

/// Producer options Sluice sets itself or that would weaken delivery.
const SINK_REFUSED: &[(&str, &str, Option<&str>)] = &[
    (
        "transactional.id",
        "set `delivery = \"exactly-once\"` and `transactional_id` in the kafka [source]",
        None,
    ),
    (
        "enable.idempotence",
        "the sink is an idempotent producer, so retries never duplicate or reorder",
        Some("true"),
    ),
    (
        "acks",
        "every record must be acknowledged by all in-sync replicas",
        Some("all"),
    ),
    (
        "request.required.acks",
        "every record must be acknowledged by all in-sync replicas",
        Some("all"),
    ),
    ("message.timeout.ms", "use the `timeout` key", None),
    ("delivery.timeout.ms", "use the `timeout` key", None),
];

/// Options common to both that have a key of their own here.
const COMMON_REFUSED: &[(&str, &str)] = &[
    ("bootstrap.servers", "use the `brokers` key"),
    ("metadata.broker.list", "use the `brokers` key"),
    ("security.protocol", "use `security.protocol`"),
    ("sasl.mechanism", "use `security.sasl_mechanism`"),
    ("sasl.mechanisms", "use `security.sasl_mechanism`"),
    ("sasl.username", "use `security.username`"),
    ("ssl.ca.location", "use `security.ca_file`"),
    ("ssl.certificate.location", "use `security.cert_file`"),
    ("ssl.key.location", "use `security.key_file`"),
];

fn check_brokers(brokers: &[String], errs: &mut Vec<Problem>) {
    if brokers.is_empty() {
        errs.push(Problem::new(
            "brokers".into(),
            "at least one broker is needed, e.g. [\"127.0.0.1:9092\"]".into(),
        ));
    }
    for b in brokers {
        let ok = b
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            errs.push(Problem::new(
                "brokers".into(),
                format!("{b:?} is not host:port (e.g. \"127.0.0.1:9092\"; no scheme)"),
            ));
        }
    }
}

fn check_security(s: &KafkaSecurity, errs: &mut Vec<Problem>) {
    let p = s.protocol;
    if let Some(m) = &s.sasl_mechanism {
        if !p.sasl() {
            errs.push(Problem::new(
                "security.sasl_mechanism".into(),
                format!(
                    "set, but protocol is {:?}: use protocol \"sasl_plaintext\" or \"sasl_ssl\"",
                    p.as_str()
                ),
            ));
        }
        if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&m.as_str()) {
            errs.push(Problem::new(
                "security.sasl_mechanism".into(),
                format!("{m:?}: expected \"PLAIN\", \"SCRAM-SHA-256\" or \"SCRAM-SHA-512\""),
            ));
        }
    }
    if p.sasl() {
        if s.username.as_deref().is_none_or(str::is_empty) {
            errs.push(Problem::new(
                "security.username".into(),
                format!("protocol {:?} needs a username", p.as_str()),
            ));
        }
        if s.password.is_none() {
            errs.push(Problem::new(
                "security.password".into(),
                format!(
                    "protocol {:?} needs a password: {{ env = \"VAR\" }} or {{ file = \"path\" }}",
                    p.as_str()
                ),
            ));
        }
    } else if s.username.is_some() || s.password.is_some() {
        errs.push(Problem::new(
            "security.protocol".into(),
            "a username/password is set, but the protocol is not \"sasl_plaintext\" or \"sasl_ssl\"".into(),
        ));
    }
    if let Some(pw) = &s.password
        && (pw.env.is_some() == pw.file.is_some())
    {
        errs.push(Problem::new(
            "security.password".into(),
            "a secret takes exactly one of `env = \"VAR\"` or `file = \"path\"`".into(),
        ));
    }
    for (key, v) in [
        ("ca_file", &s.ca_file),
        ("cert_file", &s.cert_file),
        ("key_file", &s.key_file),
    ] {
        if v.is_some() && !p.tls() {
            errs.push(Problem::new(
                format!("security.{key}"),
                format!(
                    "set, but protocol is {:?}: use \"ssl\" or \"sasl_ssl\"",
                    p.as_str()
                ),
            ));
        }
    }
    if s.cert_file.is_some() != s.key_file.is_some() {
        errs.push(Problem::new(
            "security.cert_file".into(),
            "cert_file and key_file go together".into(),
        ));
    }
}

fn check_options(
    options: &BTreeMap<String, OptionValue>,
    refused: &[(&str, &str, Option<&str>)],
    errs: &mut Vec<Problem>,
) {
    for (k, v) in options {
        let key = format!("options.{k:?}");
        let value = v.to_string();
        if let Some((_, why, allowed)) = refused.iter().find(|(r, _, _)| r == k) {
            let accepted = allowed
                .is_some_and(|a| value.eq_ignore_ascii_case(a) || (a == "all" && value == "-1"));
            if !accepted {
                errs.push(Problem::new(
                    key,
                    match allowed {
                        Some(a) => {
                            format!("{k} = {value} is refused: {why} (only {a} is accepted)")
                        }
                        None => format!("{k} is refused: {why}"),
                    },
                ));
            }
            continue;
        }
        if let Some((_, why)) = COMMON_REFUSED.iter().find(|(r, _)| r == k) {
            errs.push(Problem::new(key, format!("{k} is refused: {why}")));
            continue;
        }
        let lower = k.to_ascii_lowercase();
        if lower.contains("password")
            || lower.contains("secret")
            || lower.contains("jaas")
            || lower == "sasl.oauthbearer.config"
            || lower.ends_with(".pem")
        {
            errs.push(Problem::new(
                key,
                format!(
                    "{k} holds a secret and secrets are never written in the TOML: use `security.password` (from a file or an environment variable)"
                ),
            ));
            continue;
        }
        // librdkafka knows its own options: unknown names and bad values fail here.
        if let Err(e) = rdkafka::ClientConfig::new()
            .set(k, &value)
            .create_native_config()
        {
            errs.push(Problem::new(
                key,
                format!("librdkafka does not accept it: {e}"),
            ));
        }
    }
}

impl KafkaSourceConfig {
    /// Whether outputs and offsets are written in transactions.
    pub fn exactly_once(&self) -> bool {
        self.delivery == KafkaDelivery::ExactlyOnce
    }

    /// The `transactional.id` of this instance (see `transactional_id`).
    pub fn transactional_id_for(&self, pipeline: &str) -> String {
        match &self.transactional_id {
            Some(id) => id.clone(),
            None => format!("sluice-{}-{pipeline}", self.group),
        }
    }

    /// Problems librdkafka would otherwise report at run time, as
    /// `(key under the table, what is wrong and what is expected)`.
    pub fn validate(&self) -> Vec<Problem> {
        let mut errs = Vec::new();
        check_brokers(&self.brokers, &mut errs);
        if self.topics.is_empty() {
            errs.push(Problem::new(
                "topics".into(),
                "at least one topic is needed".into(),
            ));
        }
        for t in &self.topics {
            if !valid_topic(t) && !t.starts_with('^') {
                errs.push(Problem::new("topics".into(), topic_rule(t)));
            }
        }
        if self.group.trim().is_empty() {
            errs.push(Problem::new(
                "group".into(),
                "a consumer group id is needed".into(),
            ));
        }
        if self.max_in_flight == 0 {
            errs.push(Problem::new(
                "max_in_flight".into(),
                "must be at least 1".into(),
            ));
        }
        if self.commit_interval.0 < Duration::from_millis(1) {
            errs.push(Problem::new(
                "commit_interval".into(),
                "must be at least 1ms, e.g. \"500ms\"".into(),
            ));
        }
        let st = self.session_timeout.0;
        if st < Duration::from_secs(1) || st > Duration::from_secs(3600) {
            errs.push(Problem::new(
                "session_timeout".into(),
                "must be between \"1s\" and \"1h\" (brokers usually require at least \"6s\")"
                    .into(),
            ));
        }
        let tt = self.transaction_timeout.0;
        if tt < Duration::from_secs(1) || tt > Duration::from_secs(15 * 60) {
            errs.push(Problem::new(
                "transaction_timeout".into(),
                "must be between \"1s\" and \"15m\" (Kafka's default transaction.max.timeout.ms)"
                    .into(),
            ));
        } else if self.delivery == KafkaDelivery::ExactlyOnce && tt <= self.commit_interval.0 {
            errs.push(Problem::new(
                "transaction_timeout".into(),
                "must be longer than commit_interval: a transaction stays open that long".into(),
            ));
        }
        if let Some(id) = &self.transactional_id
            && (id.trim().is_empty() || id.len() > 249)
        {
            errs.push(Problem::new(
                "transactional_id".into(),
                "must be 1 to 249 characters".into(),
            ));
        }
        check_security(&self.security, &mut errs);
        check_options(&self.options, SOURCE_REFUSED, &mut errs);
        errs
    }

    /// Makes the security files relative to `base` (the pipeline file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        self.security.resolve_paths(base);
    }
}

impl KafkaSinkConfig {
    /// Problems librdkafka would otherwise report at run time, as
    /// `(key under the table, what is wrong and what is expected)`.
    pub fn validate(&self) -> Vec<Problem> {
        let mut errs = Vec::new();
        check_brokers(&self.brokers, &mut errs);
        if let Some(t) = &self.topic
            && !valid_topic(t)
        {
            errs.push(Problem::new("topic".into(), topic_rule(t)));
        }
        let t = self.timeout.0;
        if t < Duration::from_millis(1) || t > Duration::from_secs(24 * 3600) {
            errs.push(Problem::new(
                "timeout".into(),
                "must be between \"1ms\" and \"24h\", e.g. \"30s\"".into(),
            ));
        }
        check_security(&self.security, &mut errs);
        check_options(&self.options, SINK_REFUSED, &mut errs);
        errs
    }

    /// Makes the security files relative to `base` (the pipeline file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        self.security.resolve_paths(base);
    }
}

impl KafkaSecurity {
    fn resolve_paths(&mut self, base: &Path) {
        if let Some(pw) = &mut self.password {
            pw.resolve(base);
        }
        for p in [&mut self.ca_file, &mut self.cert_file, &mut self.key_file]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Sets the librdkafka options for this table, reading the password.
    pub fn apply(&self, c: &mut rdkafka::ClientConfig) -> anyhow::Result<()> {
        c.set("security.protocol", self.protocol.as_str());
        if self.protocol.sasl() {
            c.set(
                "sasl.mechanisms",
                self.sasl_mechanism.as_deref().unwrap_or("PLAIN"),
            );
            if let Some(u) = &self.username {
                c.set("sasl.username", u);
            }
            if let Some(pw) = &self.password {
                c.set("sasl.password", pw.read()?);
            }
        }
        if let Some(p) = &self.ca_file {
            c.set("ssl.ca.location", p.display().to_string());
        }
        if let Some(p) = &self.cert_file {
            c.set("ssl.certificate.location", p.display().to_string());
        }
        if let Some(p) = &self.key_file {
            c.set("ssl.key.location", p.display().to_string());
        }
        Ok(())
    }
}

/// Records a client error as the one an open that timed out will name.
/// "All brokers are down" only follows from each broker's own failure (a
/// refused certificate or password, a refused connection): it never
/// replaces the cause recorded before it.
pub fn remember_error(
    last: &std::sync::Mutex<Option<String>>,
    error: &rdkafka::error::KafkaError,
    text: String,
) {
    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
    let summary =
        error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown);
    if !(summary && last.is_some()) {
        *last = Some(text);
    }
}

/// A librdkafka configuration with the brokers, the security table and the
/// raw `options` (last, so they win over Sluice's tunable defaults). Reads
/// the password secret.
pub fn client_config(
    brokers: &[String],
    security: &KafkaSecurity,
    options: &BTreeMap<String, OptionValue>,
    defaults: &[(&str, &str)],
) -> anyhow::Result<rdkafka::ClientConfig> {
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", brokers.join(","));
    // Capped exponential reconnect backoff (librdkafka adds jitter of ±20%).
    c.set("reconnect.backoff.ms", "100");
    c.set("reconnect.backoff.max.ms", "10000");
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    security.apply(&mut c)?;
    for (k, v) in options {
        c.set(k, v.to_string());
    }
    Ok(c)
}

/// Kafka's topic name rule: 1–249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn topic_rule(t: &str) -> String {
    format!(
        "{t:?} is not a valid topic name: 1 to 249 of a-z A-Z 0-9 . _ - (a source topic starting with ^ is a regular expression)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_brokers_down_never_hides_the_cause() {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode as C;
        let last = std::sync::Mutex::new(None);
        let down = || KafkaError::Global(C::AllBrokersDown);
        remember_error(&last, &down(), "all down".into());
        assert_eq!(
            last.lock().unwrap().as_deref(),
            Some("all down"),
            "nothing better yet"
        );
        remember_error(
            &last,
            &KafkaError::Global(C::SSL),
            "certificate verify failed".into(),
        );
        remember_error(&last, &down(), "all down".into());
        assert_eq!(
            last.lock().unwrap().as_deref(),
            Some("certificate verify failed")
        );
    }

    fn source(extra: &str) -> KafkaSourceConfig {
        toml::from_str(&format!(
            "brokers = \"a:9092, b:9093\"\ntopics = [\"t\"]\ngroup = \"g\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn defaults_and_broker_forms() {
        let s = source("");
        assert_eq!(s.brokers, ["a:9092", "b:9093"]);
        assert_eq!(s.start, KafkaStart::Earliest);
        assert_eq!(s.commit_interval.0, Duration::from_millis(500));
        assert_eq!(s.max_in_flight, 1000);
        assert_eq!(s.session_timeout.0, Duration::from_secs(10));
        assert!(s.validate().is_empty(), "{:?}", s.validate());
        let k: KafkaSinkConfig = toml::from_str("brokers = [\"h:1\"]\ntopic = \"o\"").unwrap();
        assert_eq!(k.timeout.0, Duration::from_secs(30));
        assert!(k.validate().is_empty(), "{:?}", k.validate());
    }

    #[test]
    fn refuses_options_that_break_delivery() {
        let s = source(
            "[options]\n\"enable.auto.commit\" = true\n\"group.id\" = \"x\"\n\"sasl.password\" = \"p\"\n\"fetch.wait.max.ms\" = 100\n\"no.such.option\" = 1\n\"enable.auto.offset.store\" = false",
        );
        let errs = s.validate();
        let keys: Vec<&str> = errs.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "options.\"enable.auto.commit\"",
                "options.\"group.id\"",
                "options.\"no.such.option\"",
                "options.\"sasl.password\"",
            ],
            "{errs:?}"
        );
        assert!(errs[0].message.contains("only false"), "{errs:?}");
        assert!(errs[3].message.contains("secret"), "{errs:?}");
        let k: KafkaSinkConfig = toml::from_str(
            "brokers = [\"h:1\"]\n[options]\nacks = 1\n\"enable.idempotence\" = false\n\"linger.ms\" = 2",
        )
        .unwrap();
        let errs = k.validate();
        assert_eq!(errs.len(), 2, "{errs:?}");
        let k: KafkaSinkConfig =
            toml::from_str("brokers = [\"h:1\"]\n[options]\nacks = \"all\"").unwrap();
        assert!(k.validate().is_empty());
    }

    #[test]
    fn checks_brokers_topics_and_security() {
        let s: KafkaSourceConfig = toml::from_str(
            "brokers = [\"kafka://h\"]\ntopics = [\"bad topic\", \"^re.*\"]\ngroup = \"\"\nmax_in_flight = 0\nsession_timeout = \"100ms\"\n[security]\nprotocol = \"sasl_ssl\"",
        )
        .unwrap();
        let keys: Vec<String> = s.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "brokers",
                "topics",
                "group",
                "max_in_flight",
                "session_timeout",
                "security.username",
                "security.password"
            ]
        );
        let mut s = source(
            "[security]\nprotocol = \"sasl_ssl\"\nusername = \"u\"\npassword = { file = \"pw\" }\nca_file = \"ca.pem\"",
        );
        assert!(s.validate().is_empty(), "{:?}", s.validate());
        s.resolve_paths(Path::new("/etc/sluice"));
        assert_eq!(
            s.security.ca_file.as_deref(),
            Some(Path::new("/etc/sluice/ca.pem"))
        );
        assert_eq!(
            s.security.password.as_ref().and_then(|p| p.file.as_deref()),
            Some(Path::new("/etc/sluice/pw"))
        );
        let e = toml::from_str::<KafkaSourceConfig>(
            "brokers = \"a:1\"\ntopics = [\"t\"]\ngroup = \"g\"\nbogus = 1",
        )
        .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
