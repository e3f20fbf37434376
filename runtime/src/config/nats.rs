//! Configuration of the `nats` (core) and `jetstream` broker types: one
//! connection part ([`NatsConnection`], flattened into each table) plus the
//! keys of each source and sink.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::secret::Secret;
use super::table::Problem;
use super::tls::TlsConfig;
use super::units::{Dur, Size};

/// The default server when neither `url` nor `urls` is given.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// How to reach and log in to a NATS server; the same keys for every `nats`
/// and `jetstream` table.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConnection {
    /// The server, e.g. `"nats://127.0.0.1:4222"` (`tls://` for TLS). Default
    /// `nats://127.0.0.1:4222` when `urls` is not given either.
    #[serde(default)]
    pub url: Option<String>,
    /// Several servers of one cluster, for failover: the client connects to
    /// one and moves to another when it goes away. Not together with `url`.
    #[serde(default)]
    pub urls: Vec<String>,
    /// A token (`nats-server --auth`), read from a file or an environment variable.
    #[serde(default)]
    pub token: Option<Secret>,
    /// User name for user/password authentication (with `password`).
    #[serde(default)]
    pub user: Option<String>,
    /// Password for `user`, read from a file or an environment variable.
    #[serde(default)]
    pub password: Option<Secret>,
    /// A `.creds` file (JWT plus NKey seed) for decentralised authentication.
    /// Relative paths are relative to the pipeline file.
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    /// TLS: custom CA, client certificate. Present means TLS is required.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// How long one connection attempt (TCP, TLS and the handshake) may take.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// First delay between reconnect attempts; it doubles per attempt up to
    /// `reconnect_max`, each delay randomised (full jitter) so many instances
    /// do not reconnect in the same instant.
    #[serde(default = "default_reconnect_initial")]
    pub reconnect_initial: Dur,
    /// Longest delay between two reconnect attempts.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max: Dur,
}

fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_reconnect_initial() -> Dur {
    Dur(Duration::from_millis(100))
}
fn default_reconnect_max() -> Dur {
    Dur(Duration::from_secs(8))
}

impl NatsConnection {
    /// The servers to connect to, in order.
    pub fn servers(&self) -> Vec<String> {
        match (&self.url, self.urls.is_empty()) {
            (Some(u), _) => vec![u.clone()],
            (None, false) => self.urls.clone(),
            (None, true) => vec![DEFAULT_URL.to_string()],
        }
    }

    /// Problems with the connection keys.
    pub fn validate(&self) -> Vec<Problem> {
        let mut e = Vec::new();
        if self.url.is_some() && !self.urls.is_empty() {
            e.push(Problem::new(
                "urls".into(),
                "`url` and `urls` are both set; give one server as `url` or several as `urls`"
                    .into(),
            ));
        }
        let named: Vec<(&str, &String)> = self
            .url
            .iter()
            .map(|u| ("url", u))
            .chain(self.urls.iter().map(|u| ("urls", u)))
            .collect();
        for (key, u) in named {
            if let Err(why) = check_url(u) {
                e.push(Problem::new(key.into(), why));
            }
        }
        let methods = [
            self.token.is_some(),
            self.user.is_some() || self.password.is_some(),
            self.creds_file.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            e.push(Problem::new(
                "token".into(),
                "choose one way to log in: `token`, `user` + `password`, or `creds_file`".into(),
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            let key = if self.user.is_some() {
                "password"
            } else {
                "user"
            };
            e.push(Problem::new(
                key.into(),
                "`user` and `password` go together; give both or neither".into(),
            ));
        }
        if let Some(t) = &self.tls {
            t.check("tls.", &mut e);
        }
        if self.connect_timeout.0.is_zero() {
            e.push(Problem::new(
                "connect_timeout".into(),
                "must be longer than 0s".into(),
            ));
        }
        if self.reconnect_initial.0.is_zero() {
            e.push(Problem::new(
                "reconnect_initial".into(),
                "must be longer than 0s".into(),
            ));
        }
        if self.reconnect_max.0 < self.reconnect_initial.0 {
            e.push(Problem::new(
                "reconnect_max".into(),
                format!(
                    "must be at least `reconnect_initial` ({})",
                    humantime::format_duration(self.reconnect_initial.0)
                ),
            ));
        }
        e
    }

    /// Makes relative secret, credentials and certificate paths relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(s) = &mut self.token {
            s.resolve(base);
        }
        if let Some(s) = &mut self.password {
            s.resolve(base);
        }
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(p) = p
                && p.is_relative()
            {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.creds_file);
        if let Some(t) = &mut self.tls {
            t.resolve_paths(base);
        }
    }
}

fn check_url(url: &str) -> Result<(), String> {
    // Shown without the password of its userinfo, if it has one.
    let u = super::secret::redact_url(url);
    if super::secret::has_credentials(url) {
        return Err(format!(
            "{u:?} holds credentials (not shown), and secrets are never written in the TOML; \
             expected them in `username` with `password = {{ env = \"VAR\" }}`, or `token = {{ env = \"VAR\" }}`"
        ));
    }
    let rest = match url.split_once("://") {
        Some((scheme, rest)) => {
            if !matches!(scheme, "nats" | "tls" | "ws" | "wss") {
                return Err(format!(
                    "{u:?} has the scheme {scheme:?}; expected nats://, tls://, ws:// or wss://"
                ));
            }
            rest
        }
        None => url,
    };
    let expected = "expected e.g. \"nats://127.0.0.1:4222\"";
    if rest.is_empty() || rest.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!("{u:?} is not a server address; {expected}"));
    }
    // host[:port], the host possibly an [IPv6] literal; a path may follow (ws).
    let authority = rest.split('/').next().unwrap_or_default();
    let port = match authority.rsplit_once(':') {
        Some((host, port))
            if !host.ends_with(':') && (!host.starts_with('[') || host.ends_with(']')) =>
        {
            Some(port)
        }
        _ => None,
    };
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(format!(
            "{u:?} has the port {port:?}; a port is a number from 1 to 65535, {expected}"
        ));
    }
    Ok(())
}

/// The longest subject or queue group accepted: the server reads a
/// protocol line of at most 4 KiB, which also holds the other arguments.
pub const MAX_SUBJECT_BYTES: usize = 2048;

/// Whether `s` is no subject NATS accepts (to publish to, when
/// `wildcards` is false): empty, with spaces or control characters, an
/// empty token, or wildcards.
pub fn bad_subject(s: &str, wildcards: bool) -> bool {
    s.is_empty()
        || s.len() > MAX_SUBJECT_BYTES
        || s.contains(|c: char| c.is_whitespace() || c.is_control())
        || s.split('.').any(str::is_empty)
        || (!wildcards && s.split('.').any(|t| t == "*" || t == ">"))
}

/// Problems with a subject used for publishing or subscribing.
fn check_subject(key: &str, s: &str, wildcards: bool, e: &mut Vec<Problem>) {
    if bad_subject(s, wildcards) {
        let what = if wildcards {
            "a subject such as \"orders.*\" or \"events.>\""
        } else {
            "a subject without wildcards such as \"orders.created\""
        };
        e.push(Problem::new(
            key.into(),
            format!(
                "{:?} is not a valid subject; expected {what}, at most {MAX_SUBJECT_BYTES} bytes",
                shown(s)
            ),
        ));
    } else if wildcards {
        let tokens: Vec<&str> = s.split('.').collect();
        if tokens[..tokens.len() - 1].contains(&">") {
            e.push(Problem::new(
                key.into(),
                format!("{s:?}: `>` may only be the last token"),
            ));
        }
    }
}

/// The longest stream or consumer name JetStream accepts.
const MAX_NAME_BYTES: usize = 255;

/// Problems with a stream or consumer name.
fn check_name(key: &str, s: &str, e: &mut Vec<Problem>) {
    if s.is_empty()
        || s.len() > MAX_NAME_BYTES
        || s.contains(|c: char| {
            c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')
        })
    {
        e.push(Problem::new(
            key.into(),
            format!(
                "{:?} is not a valid name; expected letters, digits, `-` or `_` (no `.`, `*`, `>`, spaces), at most {MAX_NAME_BYTES} bytes",
                shown(s)
            ),
        ));
    }
}

/// A name or subject as an error shows it: cut to its first 64 characters.
fn shown(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// `[source] type = "nats"`: a core NATS subscription. At most once: a
/// message that arrives while Sluice is away or that a crash interrupts is
/// gone (use `jetstream` when that matters).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSourceConfig {
    #[serde(flatten)]
    pub connection: NatsConnection,
    /// The subject to subscribe to; wildcards allowed (`"orders.*"`, `"events.>"`).
    pub subject: String,
    /// A queue group: the instances in one group share the messages (each
    /// message goes to one of them). Default: none, every instance gets every message.
    #[serde(default)]
    pub queue_group: Option<String>,
    /// Messages received but not yet handed to the handler, at most. Beyond
    /// this the subscriber is a slow consumer: new messages are dropped and
    /// counted (`slow_consumer` in the logs), memory does not grow.
    #[serde(default = "default_pending_messages")]
    pub pending_messages: usize,
    /// Bytes (payloads) received but not yet handed to the handler, at most;
    /// see `pending_messages`.
    #[serde(default = "default_pending_bytes")]
    pub pending_bytes: Size,
    /// Answer requests: when a message has a reply subject, the handler's
    /// first output is sent to it as the reply (and not to a sink); when the
    /// message fails, the caller gets `fallback` or an error reply. `false`
    /// ignores reply subjects.
    #[serde(default = "yes")]
    pub request_reply: bool,
    /// The reply payload sent when a request fails (after the `[errors]`
    /// policy ran: retries exhausted, dropped, dead-lettered), with the header
    /// `sluice-error-class`. Without it the caller gets an error reply: an
    /// empty payload with the headers `Nats-Service-Error` (the class and
    /// message), `Nats-Service-Error-Code` (500) and `sluice-error-class`.
    #[serde(default)]
    pub fallback: Option<String>,
}

fn default_pending_messages() -> usize {
    1000
}
fn default_pending_bytes() -> Size {
    Size(10 * 1024 * 1024)
}
fn yes() -> bool {
    true
}

impl NatsSourceConfig {
    /// Problems with this table: (key, what is wrong and what is expected).
    pub fn validate(&self) -> Vec<Problem> {
        let mut e = self.connection.validate();
        check_subject("subject", &self.subject, true, &mut e);
        if let Some(q) = &self.queue_group
            && (q.is_empty()
                || q.len() > MAX_SUBJECT_BYTES
                || q.contains(|c: char| c.is_whitespace() || c.is_control()))
        {
            e.push(Problem::new(
                "queue_group".into(),
                format!(
                    "{:?} is not a valid queue group; expected a name without spaces or control characters, at most {MAX_SUBJECT_BYTES} bytes",
                    shown(q)
                ),
            ));
        }
        if self.pending_messages == 0 {
            e.push(Problem::new(
                "pending_messages".into(),
                "must be at least 1".into(),
            ));
        }
        if self.pending_bytes.0 == 0 {
            e.push(Problem::new(
                "pending_bytes".into(),
                "must be more than 0 bytes".into(),
            ));
        }
        if self.fallback.is_some() && !self.request_reply {
            e.push(Problem::new(
                "fallback".into(),
                "a fallback reply needs `request_reply = true`".into(),
            ));
        }
        e
    }

    /// Makes relative paths relative to `base` (the pipeline file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        self.connection.resolve_paths(base);
    }
}

/// `[sink] type = "nats"`: core NATS publish. The server holds nothing: a
/// message with no subscriber at the moment it is published is gone.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    #[serde(flatten)]
    pub connection: NatsConnection,
    /// The subject outputs go to unless they name one.
    pub subject: String,
    /// How long a publish (with its flush to the server) may take before it is
    /// a `sink` failure.
    #[serde(default = "default_sink_timeout")]
    pub timeout: Dur,
}

fn default_sink_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}

impl NatsSinkConfig {
    /// Problems with this table: (key, what is wrong and what is expected).
    pub fn validate(&self) -> Vec<Problem> {
        let mut e = self.connection.validate();
        check_subject("subject", &self.subject, false, &mut e);
        if self.timeout.0.is_zero() {
            e.push(Problem::new(
                "timeout".into(),
                "must be longer than 0s".into(),
            ));
        }
        e
    }

    /// Makes relative paths relative to `base` (the pipeline file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        self.connection.resolve_paths(base);
    }
}

/// `[source] type = "jetstream"`: a durable pull consumer. At least once: a
/// message is acked only after its outputs or its dead letter were accepted.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamSourceConfig {
    #[serde(flatten)]
    pub connection: NatsConnection,
    /// The stream to read.
    pub stream: String,
    /// Subjects of the stream. When the stream does not exist, it is created
    /// with these (file storage, limits retention); without them a missing
    /// stream is an error. An existing stream is used as it is.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// The durable consumer's name: created if missing, bound if it exists.
    /// Several instances with the same `durable` share the work.
    pub durable: String,
    /// Only messages on this subject (wildcards allowed). Default: the whole stream.
    #[serde(default)]
    pub filter_subject: Option<String>,
    /// How long the server waits for an ack before redelivering a message.
    #[serde(default = "default_ack_wait")]
    pub ack_wait: Dur,
    /// Messages handed out and not yet acked, at most (backpressure: the
    /// server stops delivering beyond this).
    #[serde(default = "default_max_ack_pending")]
    pub max_ack_pending: i64,
    /// Deliveries of one message the server makes at most. Default: no limit,
    /// `retry.max_attempts` and `[errors]` decide (a message past the
    /// server's limit would silently stop being delivered).
    #[serde(default)]
    pub max_deliver: Option<i64>,
    /// Messages asked for per pull request; the next request goes out when
    /// half of one has arrived, so about this many wait in the client.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// While a message is handed out and not settled, tell the server every
    /// this often that it is still being worked on (`in_progress`), so a
    /// long handler or a slow sink does not make it redeliver. Must be shorter
    /// than `ack_wait`; `"0s"` turns it off. Default: a third of `ack_wait`.
    #[serde(default)]
    pub in_progress_every: Option<Dur>,
}

fn default_ack_wait() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_max_ack_pending() -> i64 {
    1000
}
fn default_batch() -> usize {
    64
}

impl JetStreamSourceConfig {
    /// How often a message still out is reported in progress (zero: never):
    /// as written, else a third of `ack_wait`, so a user who only lowers
    /// `ack_wait` never meets a key they did not write.
    pub fn in_progress_every(&self) -> Duration {
        self.in_progress_every.map_or(self.ack_wait.0 / 3, |d| d.0)
    }

    /// Problems with this table: (key, what is wrong and what is expected).
    pub fn validate(&self) -> Vec<Problem> {
        let mut e = self.connection.validate();
        check_name("stream", &self.stream, &mut e);
        check_name("durable", &self.durable, &mut e);
        for s in &self.subjects {
            check_subject("subjects", s, true, &mut e);
        }
        if let Some(f) = &self.filter_subject {
            check_subject("filter_subject", f, true, &mut e);
        }
        if self.ack_wait.0 < Duration::from_millis(100) {
            e.push(Problem::new(
                "ack_wait".into(),
                "must be at least 100ms".into(),
            ));
        }
        if self.max_ack_pending < 1 {
            e.push(Problem::new(
                "max_ack_pending".into(),
                "must be at least 1".into(),
            ));
        }
        if let Some(m) = self.max_deliver
            && m < 1
            && m != -1
        {
            e.push(Problem::new(
                "max_deliver".into(),
                "must be at least 1 (or -1 for no limit)".into(),
            ));
        }
        if !(1..=10_000).contains(&self.batch) {
            e.push(Problem::new(
                "batch".into(),
                "must be between 1 and 10000".into(),
            ));
        }
        let every = self.in_progress_every();
        if !every.is_zero() && every >= self.ack_wait.0 {
            e.push(Problem::new(
                "in_progress_every".into(),
                format!(
                    "must be shorter than `ack_wait` ({}), or \"0s\" to turn it off",
                    humantime::format_duration(self.ack_wait.0)
                ),
            ));
        }
        e
    }

    /// Makes relative paths relative to `base` (the pipeline file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        self.connection.resolve_paths(base);
    }
}

/// `[sink] type = "jetstream"`: publishes into a stream and waits for the
/// server's acknowledgement. Each record carries `Nats-Msg-Id` (stable per
/// message and output), so a retried publish is stored once (within the
/// stream's duplicate window).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamSinkConfig {
    #[serde(flatten)]
    pub connection: NatsConnection,
    /// The subject outputs go to unless they name one. A stream must capture it.
    pub subject: String,
    /// A stream to create (capturing `subject`) when it does not exist.
    /// Default: none; the subject must belong to an existing stream.
    #[serde(default)]
    pub stream: Option<String>,
    /// How long a publish may wait for the server's acknowledgement before it
    /// is a `sink` failure.
    #[serde(default = "default_sink_timeout")]
    pub timeout: Dur,
}

impl JetStreamSinkConfig {
    /// Problems with this table: (key, what is wrong and what is expected).
    pub fn validate(&self) -> Vec<Problem> {
        let mut e = self.connection.validate();
        check_subject("subject", &self.subject, false, &mut e);
        if let Some(s) = &self.stream {
            check_name("stream", s, &mut e);
        }
        if self.timeout.0.is_zero() {
            e.push(Problem::new(
                "timeout".into(),
                "must be longer than 0s".into(),
            ));
        }
        e
    }

    /// Makes relative paths relative to `base` (the pipeline file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        self.connection.resolve_paths(base);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the server would refuse at run time (a port past 65535, NUL in
    /// a queue group or a stream name, a subject past the protocol line) is
    /// refused by validation, without echoing a long value whole.
    #[test]
    fn ports_names_and_lengths_the_server_refuses() {
        let source = |extra: &str| -> Vec<Problem> {
            let c: NatsSourceConfig =
                toml::from_str(&format!("subject = \"a.b\"\n{extra}")).unwrap();
            c.validate()
        };
        for url in [
            "nats://h:99999",
            "nats://h:0",
            "nats://h:x",
            "nats://[::1]:70000",
        ] {
            let e = source(&format!("url = \"{url}\""));
            assert!(
                e.iter()
                    .any(|p| p.key == "url" && p.message.contains("port")),
                "{url}: {e:?}"
            );
        }
        for url in [
            "nats://h",
            "nats://h:4222",
            "nats://[::1]:4222",
            "ws://h:80/path",
            "h:4222",
        ] {
            assert!(source(&format!("url = \"{url}\"")).is_empty(), "{url}");
        }
        let e = source("queue_group = \"q\\u0000\"");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].key, "queue_group");
        let long = "x".repeat(MAX_SUBJECT_BYTES);
        let e = source(&format!("queue_group = \"{long}x\""));
        assert_eq!(e[0].key, "queue_group");
        assert!(e[0].message.len() < 300, "the value is not echoed whole");
        let c: NatsSourceConfig = toml::from_str(&format!("subject = \"a.{long}\"")).unwrap();
        let e = c.validate();
        assert_eq!(e[0].key, "subject");
        assert!(e[0].message.len() < 300);
        let js = |stream: &str| -> Vec<Problem> {
            let c: JetStreamSourceConfig = toml::from_str(&format!(
                "stream = \"{stream}\"\ndurable = \"d\"\nsubjects = [\"a.>\"]"
            ))
            .unwrap();
            c.validate()
        };
        assert!(js("ORDERS").is_empty());
        assert_eq!(js("OR\\u0000D")[0].key, "stream");
        assert_eq!(js(&"S".repeat(256))[0].key, "stream");
    }

    #[test]
    fn flattened_connection_and_defaults() {
        let c: NatsSourceConfig = toml::from_str(
            r#"
            urls = ["nats://a:4222", "nats://b:4222"]
            token = { env = "T" }
            subject = "orders.*"
            fallback = "busy"
            connect_timeout = "2s"
            "#,
        )
        .unwrap();
        assert_eq!(c.connection.servers().len(), 2);
        assert_eq!(c.pending_messages, 1000);
        assert_eq!(c.pending_bytes.0, 10 << 20);
        assert!(c.request_reply);
        assert_eq!(c.connection.connect_timeout.0, Duration::from_secs(2));
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert!(!format!("{c:?}").contains("token = "));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = toml::from_str::<NatsSinkConfig>("subject = \"a\"\nsubjekt = \"b\"")
            .err()
            .unwrap();
        assert!(e.to_string().contains("subjekt"), "{e}");
        let e = toml::from_str::<JetStreamSourceConfig>(
            "stream = \"S\"\ndurable = \"d\"\ntls = { ca = \"x\" }",
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("ca"), "{e}");
    }

    #[test]
    fn validation_names_keys() {
        let c: JetStreamSourceConfig = toml::from_str(
            r#"
            url = "http://x"
            user = "u"
            stream = "a.b"
            durable = "d"
            subjects = ["ok.>", "bad. subject"]
            ack_wait = "5s"
            in_progress_every = "10s"
            batch = 0
            "#,
        )
        .unwrap();
        let keys: Vec<String> = c.validate().into_iter().map(|p| p.key).collect();
        for k in [
            "url",
            "password",
            "stream",
            "subjects",
            "batch",
            "in_progress_every",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
    }

    #[test]
    fn in_progress_every_follows_ack_wait_unless_written() {
        let c: JetStreamSourceConfig =
            toml::from_str("stream = \"S\"\ndurable = \"d\"\nack_wait = \"3s\"").unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.in_progress_every(), Duration::from_secs(1));
        let c: JetStreamSourceConfig = toml::from_str("stream = \"S\"\ndurable = \"d\"").unwrap();
        assert_eq!(c.in_progress_every(), Duration::from_secs(10));
        let c: JetStreamSourceConfig = toml::from_str(
            "stream = \"S\"\ndurable = \"d\"\nack_wait = \"3s\"\nin_progress_every = \"0s\"",
        )
        .unwrap();
        assert_eq!(c.in_progress_every(), Duration::ZERO);
    }

    #[test]
    fn resolves_relative_paths() {
        let mut c: JetStreamSinkConfig = toml::from_str(
            r#"
            subject = "out"
            creds_file = "a.creds"
            tls = { ca_file = "ca.pem" }
            "#,
        )
        .unwrap();
        c.resolve_paths(Path::new("/etc/sluice"));
        assert_eq!(
            c.connection.creds_file.as_deref(),
            Some(Path::new("/etc/sluice/a.creds"))
        );
        let ca = c.connection.tls.as_ref().and_then(|t| t.ca_file.as_deref());
        assert_eq!(ca, Some(Path::new("/etc/sluice/ca.pem")));
    }
}
