//! Configuration of the `mqtt` source and sink (`type = "mqtt"`), MQTT 3.1.1 and 5.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::secret::Secret;
use super::table::Problem;
use super::tls::TlsConfig;
use super::units::Dur;

/// The MQTT protocol version spoken to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
pub enum MqttVersion {
    /// MQTT 3.1.1: no headers (user properties), no reason codes on PUBACK.
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5: user properties carry headers; PUBACK reason codes tell refusals apart.
    #[default]
    #[serde(rename = "5")]
    V5,
}

/// `[source] type = "mqtt"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceConfig {
    /// The broker, `mqtt://host:port` (default port 1883) or `mqtts://host:port`
    /// (TLS, default port 8883). Give this or `urls`.
    #[serde(default)]
    pub url: Option<String>,
    /// Several brokers for failover (a primary and standbys), tried in order:
    /// when a connection is lost or an attempt fails Sluice moves to the next
    /// one, after the last back to the first, and stays on a broker while it
    /// works. A session lives on one broker: after a failover without a
    /// session there the subscriptions are made again, and messages queued for
    /// this client on the other broker wait there (see `docs/brokers.md`).
    #[serde(default)]
    pub urls: Vec<String>,
    /// Topic filters to subscribe to (`+` and `#` wildcards). MQTT 5 shared
    /// subscriptions `$share/<group>/<filter>` split the messages between the
    /// instances subscribed with the same group.
    pub topics: Vec<String>,
    /// Subscription QoS: 0 (at most once, nothing to acknowledge), 1 (at least
    /// once) or 2 (exactly once between broker and Sluice).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// `"5"` or `"3.1.1"`.
    #[serde(default)]
    pub version: MqttVersion,
    /// The client identifier. It names the broker-side session, so it must stay
    /// the same across restarts for a persistent session, and differ between
    /// instances (the broker disconnects the older of two clients with one id).
    /// Default: `sluice-<pipeline>`, plus `-<hostname>` when a topic is a shared
    /// subscription (set it yourself for several instances on one host).
    #[serde(default)]
    pub client_id: Option<String>,
    /// `false` (default): a persistent session, so QoS 1/2 messages published
    /// while Sluice is away are queued by the broker and delivered when it
    /// comes back. `true`: start a fresh session on every connect.
    #[serde(default)]
    pub clean_session: bool,
    /// MQTT 5: how long the broker keeps the session after a disconnect
    /// (`clean_session = false` only). 3.1.1 sessions last until the broker
    /// expires them by its own settings (Mosquitto `persistent_client_expiration`).
    #[serde(default = "default_session_expiry")]
    pub session_expiry: Dur,
    /// Keep-alive interval: the connection is dropped and made again when the
    /// broker stays silent for 1.5 times this. `"0s"` turns it off; else at least 1s.
    #[serde(default = "default_keep_alive")]
    pub keep_alive: Dur,
    /// Messages received and not yet acknowledged, at most (the receive window;
    /// backpressure). Sent as the MQTT 5 Receive Maximum. On 3.1.1 the broker
    /// sets its own window (Mosquitto `max_inflight_messages`).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u16,
    /// The user name to connect with.
    #[serde(default)]
    pub username: Option<String>,
    /// The password, from a file or an environment variable (`username` needed).
    #[serde(default)]
    pub password: Option<Secret>,
    /// TLS settings (on by default for `mqtts://`).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// How long one connection attempt may take. Start-up waits this long for
    /// each broker in the list (plus the reconnect pauses) before it fails.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// The longest pause between two reconnection attempts (exponential backoff
    /// from 100ms, with jitter).
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max: Dur,
}

/// `type = "mqtt"` as a `[sink]`, `[sinks.NAME]` or `[dead_letter]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkConfig {
    /// The broker, `mqtt://host:port` or `mqtts://host:port`. Give this or `urls`.
    #[serde(default)]
    pub url: Option<String>,
    /// Several brokers for failover, tried in order like the source's `urls`.
    #[serde(default)]
    pub urls: Vec<String>,
    /// The topic of records that name none. Without it, every output must name a topic.
    #[serde(default)]
    pub topic: Option<String>,
    /// Publish QoS: 0 (returns once written to the socket), 1 (returns on
    /// PUBACK) or 2 (returns on PUBCOMP).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Publish with the retain flag.
    #[serde(default)]
    pub retain: bool,
    /// `"5"` or `"3.1.1"`.
    #[serde(default)]
    pub version: MqttVersion,
    /// The client identifier. Default: `sluice-<pipeline>-pub-<random>` (the
    /// sink always starts a clean session, so it need not be stable).
    #[serde(default)]
    pub client_id: Option<String>,
    /// The user name to connect with.
    #[serde(default)]
    pub username: Option<String>,
    /// The password, from a file or an environment variable (`username` needed).
    #[serde(default)]
    pub password: Option<Secret>,
    /// TLS settings (on by default for `mqtts://`).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// How long a publish may wait for its acknowledgement before it fails
    /// (class `sink`, retried).
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Keep-alive interval (`"0s"` = off; else at least 1s).
    #[serde(default = "default_keep_alive")]
    pub keep_alive: Dur,
    /// QoS 1/2 publishes awaiting their acknowledgement, at most.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u16,
    /// Publish each record as a JSON envelope (`{"topic", "key", "payload",
    /// "headers"}`, see the `file` sink) instead of its bare payload. Default:
    /// `true` for a `[dead_letter]` on MQTT 3.1.1 (which has no headers to
    /// carry the `sluice-*` metadata), else `false`.
    #[serde(default)]
    pub envelope: Option<bool>,
    /// How long one connection attempt may take. Start-up waits this long for
    /// each broker in the list (plus the reconnect pauses) before it fails.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// The longest pause between two reconnection attempts.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max: Dur,
}

fn default_qos() -> u8 {
    1
}
fn default_session_expiry() -> Dur {
    Dur(Duration::from_secs(3600))
}
fn default_keep_alive() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_in_flight() -> u16 {
    64
}
fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_reconnect_max() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

/// One broker address taken from a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    /// `mqtts://` / `ssl://`.
    pub tls: bool,
}

/// Parses `mqtt://host[:port]`, `mqtts://host[:port]` (also `tcp://`, `ssl://`).
pub fn parse_url(raw: &str) -> Result<BrokerAddr, String> {
    let expected = "expected mqtt://host:port or mqtts://host:port";
    // Every message shows the URL without the password of its userinfo.
    let url = &*super::secret::redact_url(raw);
    let (scheme, rest) = raw
        .split_once("://")
        .ok_or_else(|| format!("{url:?} has no scheme; {expected}"))?;
    let (tls, default_port) = match scheme {
        "mqtt" | "tcp" => (false, 1883),
        "mqtts" | "ssl" => (true, 8883),
        _ => return Err(format!("unknown scheme {scheme:?} in {url:?}; {expected}")),
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return Err(format!(
            "{url:?} has a path, query or credentials; {expected} (credentials go in `username` and \
             `password = {{ env = \"VAR\" }}`: secrets are never written in the TOML)"
        ));
    }
    let (host, port) = if let Some(h) = rest.strip_prefix('[') {
        // [v6]:port
        let (h, p) = h
            .split_once(']')
            .ok_or_else(|| format!("unclosed `[` in {url:?}"))?;
        (h.to_string(), p.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host; {expected}"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("bad port {p:?} in {url:?}; {expected}"))?,
    };
    Ok(BrokerAddr { host, port, tls })
}

/// Problems with a topic filter (wildcards allowed), or `None`.
pub fn filter_problem(filter: &str) -> Option<String> {
    if filter.len() > MAX_STRING_BYTES {
        return Some(format!(
            "a topic filter is at most {MAX_STRING_BYTES} bytes long, found {}",
            filter.len()
        ));
    }
    let f = match filter.strip_prefix("$share/") {
        Some(rest) => match rest.split_once('/') {
            Some((group, f)) if !group.is_empty() && !group.contains(['+', '#']) => f,
            _ => {
                return Some(format!(
                    "{filter:?}: a shared subscription is `$share/<group>/<filter>` with a group name without wildcards"
                ));
            }
        },
        None => filter,
    };
    if f.is_empty() {
        return Some("a topic filter cannot be empty".into());
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i != levels.len() - 1) {
            return Some(format!(
                "{filter:?}: `#` must be a whole level and the last one"
            ));
        }
        if l.contains('+') && *l != "+" {
            return Some(format!("{filter:?}: `+` must be a whole level"));
        }
    }
    if f.contains('\0') {
        return Some(format!("{filter:?} contains a NUL character"));
    }
    None
}

/// The longest string MQTT carries (a two-byte length prefix): topics,
/// topic filters, client ids.
pub const MAX_STRING_BYTES: usize = 65535;

/// Problems with a `client_id`, or `None`; `what` says what it is for.
fn client_id_problem(id: &str, what: &str) -> Option<String> {
    if id.is_empty() {
        Some(format!("cannot be empty ({what})"))
    } else if id.len() > MAX_STRING_BYTES {
        Some(format!(
            "is at most {MAX_STRING_BYTES} bytes long, found {}",
            id.len()
        ))
    } else if id.chars().any(char::is_control) {
        Some("cannot contain control characters (NUL, line breaks, ...)".into())
    } else {
        None
    }
}

/// Problems with a topic name to publish to (no wildcards), or `None`.
/// The topic itself is not echoed (it may be long, or a handler's).
pub fn topic_problem(topic: &str) -> Option<String> {
    if topic.is_empty() {
        Some("a topic cannot be empty".into())
    } else if topic.len() > MAX_STRING_BYTES {
        Some(format!(
            "a topic is at most {MAX_STRING_BYTES} bytes long, found {}",
            topic.len()
        ))
    } else if topic.contains(['+', '#']) {
        Some("a topic to publish to cannot contain the wildcards `+` or `#`".into())
    } else if topic.chars().any(char::is_control) {
        Some("a topic cannot contain control characters (NUL, line breaks, ...)".into())
    } else {
        None
    }
}

/// Checks shared by the source and sink tables.
#[allow(clippy::too_many_arguments)]
fn validate_common(
    out: &mut Vec<Problem>,
    url: &Option<String>,
    urls: &[String],
    qos: u8,
    keep_alive: Dur,
    max_in_flight: u16,
    username: &Option<String>,
    password: &Option<Secret>,
    tls: &Option<TlsConfig>,
    connect_timeout: Dur,
    reconnect_max: Dur,
) {
    match (url, urls.is_empty()) {
        (None, true) => out.push(Problem::new(
            "url".into(),
            "missing: give `url = \"mqtt://host:1883\"` or `urls = [...]`".into(),
        )),
        (Some(_), false) => out.push(Problem::new(
            "urls".into(),
            "give `url` or `urls`, not both".into(),
        )),
        (Some(u), true) => {
            if let Err(e) = parse_url(u) {
                out.push(Problem::new("url".into(), e));
            }
        }
        (None, false) => {
            for u in urls {
                if let Err(e) = parse_url(u) {
                    out.push(Problem::new("urls".into(), e));
                }
            }
        }
    }
    if qos > 2 {
        out.push(Problem::new(
            "qos".into(),
            format!("must be 0, 1 or 2, found {qos}"),
        ));
    }
    let ka = keep_alive.0;
    if !ka.is_zero() && ka < Duration::from_secs(1) {
        out.push(Problem::new(
            "keep_alive".into(),
            "must be \"0s\" (off) or at least \"1s\"".into(),
        ));
    }
    if ka.as_secs() > u64::from(u16::MAX) {
        out.push(Problem::new(
            "keep_alive".into(),
            "must be at most 65535s".into(),
        ));
    }
    if max_in_flight == 0 {
        out.push(Problem::new(
            "max_in_flight".into(),
            "must be at least 1".into(),
        ));
    }
    if password.is_some() && username.is_none() {
        out.push(Problem::new(
            "password".into(),
            "a password needs a `username` too".into(),
        ));
    }
    if let Some(t) = tls {
        t.check("tls.", out);
    }
    if connect_timeout.0 < Duration::from_secs(1) {
        out.push(Problem::new(
            "connect_timeout".into(),
            "must be at least \"1s\"".into(),
        ));
    }
    if reconnect_max.0 < Duration::from_millis(100) {
        out.push(Problem::new(
            "reconnect_max".into(),
            "must be at least \"100ms\"".into(),
        ));
    }
}

fn resolve_common(base: &Path, password: &mut Option<Secret>, tls: &mut Option<TlsConfig>) {
    if let Some(s) = password {
        s.resolve(base);
    }
    if let Some(t) = tls {
        t.resolve_paths(base);
    }
}

impl MqttSourceConfig {
    /// The broker URLs, in failover order.
    pub fn all_urls(&self) -> Vec<String> {
        self.url
            .iter()
            .cloned()
            .chain(self.urls.iter().cloned())
            .collect()
    }

    /// Rules the types do not enforce: `(key, what is wrong and what is expected)`.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        validate_common(
            &mut out,
            &self.url,
            &self.urls,
            self.qos,
            self.keep_alive,
            self.max_in_flight,
            &self.username,
            &self.password,
            &self.tls,
            self.connect_timeout,
            self.reconnect_max,
        );
        if self.topics.is_empty() {
            out.push(Problem::new(
                "topics".into(),
                "must name at least one topic filter, e.g. [\"devices/+/telemetry\"]".into(),
            ));
        }
        for t in &self.topics {
            if let Some(p) = filter_problem(t) {
                out.push(Problem::new("topics".into(), p));
            }
        }
        if let Some(p) = self
            .client_id
            .as_deref()
            .and_then(|id| client_id_problem(id, "a persistent session needs a name"))
        {
            out.push(Problem::new("client_id".into(), p));
        }
        if self.version == MqttVersion::V5 && self.session_expiry.0.as_secs() > u64::from(u32::MAX)
        {
            out.push(Problem::new(
                "session_expiry".into(),
                "must be at most 4294967295s".into(),
            ));
        }
        out
    }

    /// Makes the secret and TLS files relative to `base` (the pipeline file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        resolve_common(base, &mut self.password, &mut self.tls);
    }
}

impl MqttSinkConfig {
    /// The broker URLs, in failover order.
    pub fn all_urls(&self) -> Vec<String> {
        self.url
            .iter()
            .cloned()
            .chain(self.urls.iter().cloned())
            .collect()
    }

    /// Rules the types do not enforce: `(key, what is wrong and what is expected)`.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        validate_common(
            &mut out,
            &self.url,
            &self.urls,
            self.qos,
            self.keep_alive,
            self.max_in_flight,
            &self.username,
            &self.password,
            &self.tls,
            self.connect_timeout,
            self.reconnect_max,
        );
        if let Some(t) = &self.topic
            && let Some(p) = topic_problem(t)
        {
            out.push(Problem::new("topic".into(), p));
        }
        if let Some(p) = self
            .client_id
            .as_deref()
            .and_then(|id| client_id_problem(id, "the broker names the connection by it"))
        {
            out.push(Problem::new("client_id".into(), p));
        }
        if self.timeout.0.is_zero() {
            out.push(Problem::new(
                "timeout".into(),
                "must be longer than 0, e.g. \"10s\"".into(),
            ));
        }
        out
    }

    /// Makes the secret and TLS files relative to `base` (the pipeline file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        resolve_common(base, &mut self.password, &mut self.tls);
    }

    /// Whether records are published as JSON envelopes: `envelope` when set,
    /// else `dead_letter && version == 3.1.1`.
    pub fn uses_envelope(&self, dead_letter: bool) -> bool {
        self.envelope
            .unwrap_or(dead_letter && self.version == MqttVersion::V311)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strings past MQTT's two-byte length (client ids, topic filters) and
    /// control characters in a client id are refused by validation.
    #[test]
    fn strings_mqtt_cannot_carry_are_refused() {
        let long = "x".repeat(MAX_STRING_BYTES + 1);
        let source = |extra: &str| -> Vec<Problem> {
            let c: MqttSourceConfig =
                toml::from_str(&format!("url = \"mqtt://127.0.0.1:1883\"\n{extra}")).unwrap();
            c.validate()
        };
        let e = source(&format!("topics = [\"a\"]\nclient_id = \"{long}\""));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].key, "client_id");
        assert_eq!(
            source("topics = [\"a\"]\nclient_id = \"a\\u0000\"")[0].key,
            "client_id"
        );
        let e = source(&format!("topics = [\"{long}\"]"));
        assert_eq!(e[0].key, "topics");
        assert!(e[0].message.len() < 200, "the filter is not echoed");
        let sink: MqttSinkConfig = toml::from_str(&format!(
            "url = \"mqtt://127.0.0.1:1883\"\ntopic = \"o\"\nclient_id = \"{long}\""
        ))
        .unwrap();
        assert_eq!(sink.validate()[0].key, "client_id");
    }

    #[test]
    fn urls_parse() {
        let a = parse_url("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.tls), ("127.0.0.1", 1884, false));
        let a = parse_url("mqtts://broker.example").unwrap();
        assert_eq!((a.port, a.tls), (8883, true));
        let a = parse_url("mqtt://[::1]:1883").unwrap();
        assert_eq!(a.host, "::1");
        for bad in [
            "127.0.0.1:1883",
            "http://x",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:x",
            "mqtt://u:p@h",
            "mqtt://h/t",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn filters_and_topics() {
        for ok in ["a/b", "a/+/c", "#", "a/#", "$share/g/a/+", "+"] {
            assert_eq!(filter_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "a#",
            "a/#/b",
            "a+/b",
            "$share//a",
            "$share/g",
            "$share/g+/a",
        ] {
            assert!(filter_problem(bad).is_some(), "{bad}");
        }
        assert!(topic_problem("a/+").is_some());
        assert!(topic_problem("a/b").is_none());
    }

    #[test]
    fn source_defaults_and_validation() {
        let c: MqttSourceConfig =
            toml::from_str("url = \"mqtt://127.0.0.1:1883\"\ntopics = [\"a/#\"]").unwrap();
        assert_eq!(c.qos, 1);
        assert_eq!(c.version, MqttVersion::V5);
        assert!(!c.clean_session);
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let c: MqttSourceConfig = toml::from_str(
            "topics = []\nqos = 3\nversion = \"3.1.1\"\nkeep_alive = \"10ms\"\npassword = { env = \"P\" }",
        )
        .unwrap();
        let keys: Vec<String> = c.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["url", "qos", "keep_alive", "password", "topics"]);
        assert!(toml::from_str::<MqttSourceConfig>("topics = [\"a\"]\nversion = \"4\"").is_err());
        assert!(toml::from_str::<MqttSourceConfig>("topics = [\"a\"]\nbogus = 1").is_err());
    }

    #[test]
    fn sink_envelope_default() {
        let mut c: MqttSinkConfig = toml::from_str("url = \"mqtt://h\"\ntopic = \"dlq\"").unwrap();
        assert!(!c.uses_envelope(true));
        c.version = MqttVersion::V311;
        assert!(c.uses_envelope(true));
        assert!(!c.uses_envelope(false));
        c.envelope = Some(false);
        assert!(!c.uses_envelope(true));
        assert!(c.validate().is_empty());
    }
}
