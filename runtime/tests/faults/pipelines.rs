//! The pipeline files of the fault tests: the TOML of each broker's
//! pipeline over a test's topics, with short retries, a short circuit
//! breaker and quick reconnects, so a fault outlasts them within seconds.

use std::path::{Path, PathBuf};

use crate::capture::Topics;
use crate::common;
use crate::common::kafka::KafkaBroker;
use crate::common::mqtt::Mosquitto;
use crate::common::nats::stream_of;
use crate::common::proxy::Proxy;

/// Short retries, so an outage outlasts them quickly.
pub const RETRY: &str =
    "[retry]\nmax_attempts = 3\ninitial = \"50ms\"\nmax = \"200ms\"\njitter = \"none\"\n";

/// A short breaker, so a test sees it open and close within seconds.
pub const BREAKER: &str =
    "[circuit_breaker]\nfailure_threshold = 3\nsuccess_threshold = 2\nopen_for = \"1s\"\n";

/// The NATS connection keys that make reconnects quick in tests.
pub const NATS_RECONNECT: &str = "reconnect_initial = \"100ms\"\nreconnect_max = \"500ms\"\n";

/// Writes `<dir>/<name>.toml` and returns its path.
pub fn write_pipeline(dir: &Path, name: &str, body: &str) -> PathBuf {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, format!("name = \"{name}\"\n{body}")).expect("write pipeline");
    file
}

/// `[handler]` with a plugin and extra keys.
pub fn handler(plugin: &str, extra: &str) -> String {
    format!(
        "[handler]\nplugin = \"{}\"\n{extra}\n",
        common::plugin(plugin).display()
    )
}

/// Where each part of a pipeline connects: the broker itself, or a proxy
/// in front of it that the test cuts.
pub struct Urls<'a> {
    pub source: &'a str,
    pub sink: &'a str,
    pub dead_letter: &'a str,
}

impl<'a> Urls<'a> {
    /// Every part straight to `url`.
    pub fn all(url: &'a str) -> Self {
        Urls {
            source: url,
            sink: url,
            dead_letter: url,
        }
    }
}

/// Kafka from `t`'s input (group `<base>-g`) to its output, dead letters to
/// its dlq, `fatal-on` as the handler; short retries and breaker.
pub fn kafka_pipeline(b: &KafkaBroker, t: &Topics) -> String {
    format!(
        "[source]\n{}\n{}[sink]\n{}\n[dead_letter]\n{}\n{RETRY}{BREAKER}",
        common::kafka::source_toml(b, &t.input, &format!("{}-g", t.base), ""),
        handler("fatal-on", ""),
        common::kafka::sink_toml(b, &t.output),
        common::kafka::sink_toml(b, &t.dlq),
    )
}

/// MQTT 5 at QoS 1 over `t`'s topics, the source on its persistent
/// session; the sink waits `sink_timeout` for each PUBACK, the dead letter
/// 2 s. `tail` follows (retries, breaker, ...).
pub fn mqtt_pipeline(
    t: &Topics,
    urls: &Urls,
    sink_timeout: &str,
    handler: &str,
    tail: &str,
) -> String {
    let Topics {
        input, output, dlq, ..
    } = t;
    let client_id = t.client_id();
    let Urls {
        source,
        sink,
        dead_letter,
    } = urls;
    format!(
        "[source]\ntype = \"mqtt\"\nurl = \"{source}\"\ntopics = [\"{input}\"]\nqos = 1\nversion = \"5\"\nclient_id = \"{client_id}\"\nreconnect_max = \"500ms\"\n\n\
         {handler}\
         [sink]\ntype = \"mqtt\"\nurl = \"{sink}\"\ntopic = \"{output}\"\nqos = 1\ntimeout = \"{sink_timeout}\"\nreconnect_max = \"500ms\"\n\n\
         [dead_letter]\ntype = \"mqtt\"\nurl = \"{dead_letter}\"\ntopic = \"{dlq}\"\nqos = 1\ntimeout = \"2s\"\nreconnect_max = \"500ms\"\n\n\
         {tail}"
    )
}

/// The sink-cut tests' pipeline, written to `<dir>/<name>.toml`: MQTT over
/// `t`'s topics with only the sink's connection through `proxy` (the source
/// and the dead letters straight to `b`), the sink waiting 500 ms for each
/// PUBACK; `tail` follows the sections (retries, breaker).
pub fn mqtt_sink_via(
    (dir, name): (&Path, &str),
    (b, proxy): (&Mosquitto, &Proxy),
    t: &Topics,
    handler: &str,
    tail: &str,
) -> PathBuf {
    let (direct, through) = (b.url(), format!("mqtt://{}", proxy.addr()));
    let urls = Urls {
        sink: &through,
        ..Urls::all(&direct)
    };
    write_pipeline(dir, name, &mqtt_pipeline(t, &urls, "500ms", handler, tail))
}

/// JetStream over `t`'s subjects: a durable consumer (`source_keys`, e.g.
/// its `ack_wait`, besides an in-progress signal each second), the sink
/// with `sink_keys`, the dead letter with a 2 s timeout, every connection
/// reconnecting quickly. `tail` follows (retries, breaker, ...).
pub fn js_pipeline(
    t: &Topics,
    urls: &Urls,
    (source_keys, sink_keys): (&str, &str),
    handler: &str,
    tail: &str,
) -> String {
    let Topics {
        base,
        input,
        output,
        dlq,
        ..
    } = t;
    let Urls {
        source,
        sink,
        dead_letter,
    } = urls;
    let (stream, durable) = (stream_of(input), stream_of(base));
    format!(
        "[source]\ntype = \"jetstream\"\nurl = \"{source}\"\nstream = \"{stream}\"\ndurable = \"{durable}\"\n{source_keys}in_progress_every = \"1s\"\n{NATS_RECONNECT}\n\
         {handler}\
         [sink]\ntype = \"jetstream\"\nurl = \"{sink}\"\nsubject = \"{output}\"\n{sink_keys}{NATS_RECONNECT}\n\
         [dead_letter]\ntype = \"jetstream\"\nurl = \"{dead_letter}\"\nsubject = \"{dlq}\"\ntimeout = \"2s\"\n{NATS_RECONNECT}\n\
         {tail}"
    )
}
