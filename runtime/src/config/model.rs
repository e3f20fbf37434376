//! The pipeline TOML as Rust types. Every field's `///` doc is the user
//! documentation of that key; `deny_unknown_fields` everywhere.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use super::canary::CanaryConfig;
use super::units::{Dur, Size};
use crate::failure::FailureClass;

/// One pipeline file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// The pipeline's name: labels its metrics, logs and dead-letter records.
    pub name: String,
    /// Where messages come from.
    pub source: SourceConfig,
    /// The WebAssembly handler run on every message.
    pub handler: HandlerConfig,
    /// The default sink: outputs that name no sink go here. Optional when
    /// every output names one of `[sinks.*]`, or the handler produces none.
    #[serde(default)]
    pub sink: Option<SinkConfig>,
    /// Named sinks, chosen by an output's `sink` field.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
    /// How failed messages are retried.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Where dead-lettered messages go: any sink type. Required when some
    /// class maps to `dead-letter`.
    #[serde(default)]
    pub dead_letter: Option<SinkConfig>,
    /// What to do with each failure class.
    #[serde(default)]
    pub errors: ErrorsConfig,
    /// Pauses intake while transient failures persist.
    #[serde(default)]
    pub circuit_breaker: BreakerConfig,
    /// Drops redelivered duplicates. Off unless present.
    #[serde(default)]
    pub dedup: Option<DedupConfig>,
}

/// The `[source]` table; `type` selects the broker.
///
/// A new source type needs a line in `sections::SOURCE_TYPES` (its `type`
/// name and reader) and an arm in [`SourceConfig::table`]: its checks and
/// paths are its [`super::table::Table`].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceConfig {
    /// Lines from a file or standard input.
    File(FileSourceConfig),
    /// A Kafka consumer group.
    Kafka(super::kafka::KafkaSourceConfig),
    /// MQTT 3.1.1 / 5 subscriptions.
    Mqtt(super::mqtt::MqttSourceConfig),
    /// A NATS core subscription (at-most-once), optionally request/reply.
    Nats(super::nats::NatsSourceConfig),
    /// A JetStream durable pull consumer.
    Jetstream(super::nats::JetStreamSourceConfig),
}

/// The `[sink]`, `[sinks.NAME]` and `[dead_letter]` tables; `type` selects the broker.
///
/// A new sink type needs a line in `sections::SINK_TYPES`, like a source type.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    /// Lines to a file or standard output.
    File(FileSinkConfig),
    /// A Kafka topic (idempotent producer, `acks=all`).
    Kafka(super::kafka::KafkaSinkConfig),
    /// An MQTT topic.
    Mqtt(super::mqtt::MqttSinkConfig),
    /// A NATS core subject.
    Nats(super::nats::NatsSinkConfig),
    /// A JetStream subject (publish acknowledged, `Nats-Msg-Id` dedup).
    Jetstream(super::nats::JetStreamSinkConfig),
}

/// How the `file` source turns a line into a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FileSourceFormat {
    /// Each line's bytes (without the newline) are the payload.
    #[default]
    Lines,
    /// Each line must be a JSON document; it is the payload. A line that is not
    /// JSON is a `decode` failure.
    Json,
    /// Each line is a JSON envelope `{"payload": "...", "key": "...",
    /// "headers": {"k": "v"}, "topic": "..."}` (the format the `file` sink
    /// writes with `format = "envelope"`); `payload_base64` / `key_base64` for
    /// bytes that are not UTF-8.
    Envelope,
}

/// `[source] type = "file"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The file to read, or `"-"` for standard input. Relative paths are
    /// relative to the pipeline file.
    pub path: PathBuf,
    /// How a line becomes a message.
    #[serde(default)]
    pub format: FileSourceFormat,
    /// `false`: finish once every line is settled (`sluice run` then exits 0).
    /// `true`: keep reading lines appended to the file.
    #[serde(default)]
    pub follow: bool,
    /// Where the position of the first unsettled line is kept, so a restarted
    /// pipeline resumes there. Default: `<path>.sluice-checkpoint` beside the
    /// file. Not used for standard input.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    /// The topic given to messages. Default: the file's path.
    #[serde(default)]
    pub topic: Option<String>,
    /// Lines handed out but not yet settled, at most (backpressure).
    #[serde(default = "default_file_in_flight")]
    pub max_in_flight: usize,
    /// How often the checkpoint is written while lines settle (and always
    /// when the source closes). It never moves past a line that is not
    /// settled, and when a `file` sink or dead letter of the pipeline has
    /// `fsync = true`, those files are synced before the checkpoint is
    /// written and the checkpoint is synced after it. It is written sooner
    /// once `max_in_flight` lines settled since the last one, and the source
    /// hands out no line while 2 × `max_in_flight` lines were handed out
    /// past it: a killed process repeats at most that many lines. `"0s"`
    /// writes it on every advance (one write, and with `fsync` three syncs,
    /// per settled line).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: Dur,
}

fn default_file_in_flight() -> usize {
    1024
}
impl FileSourceConfig {
    /// The checkpoint file: `checkpoint`, else `<path>.sluice-checkpoint`.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.checkpoint
            .clone()
            .unwrap_or_else(|| default_checkpoint_path(&self.path))
    }
}

/// The default checkpoint path: `<path>.sluice-checkpoint`.
pub fn default_checkpoint_path(path: &std::path::Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sluice-checkpoint");
    PathBuf::from(s)
}

fn default_checkpoint_every() -> Dur {
    Dur(Duration::from_millis(100))
}

/// How the `file` sink writes a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FileSinkFormat {
    /// The payload followed by a newline.
    #[default]
    Lines,
    /// One JSON envelope per line: topic, key, payload, headers (bytes that are
    /// not UTF-8 as `*_base64`). The default for dead letters.
    Envelope,
}

/// `type = "file"` as a sink.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The file to append to, or `"-"` for standard output. Relative paths are
    /// relative to the pipeline file.
    pub path: PathBuf,
    /// How a record is written. Default `lines`; `envelope` for dead letters.
    #[serde(default)]
    pub format: Option<FileSinkFormat>,
    /// Sync the file's data to disk before its records count as written
    /// (survives a power cut, not only a process crash). Records are written
    /// in groups (one `write` for whatever arrived within a millisecond), and
    /// so are the syncs. Behind a `file` source the source syncs the file
    /// instead, before each checkpoint (see the source's `checkpoint_every`):
    /// a power cut then repeats lines, it loses none.
    #[serde(default)]
    pub fsync: bool,
}

/// The `[handler]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    /// A `.wasm` component (or a folder holding exactly one `.wasm` file).
    /// Relative paths are relative to the pipeline file.
    pub plugin: PathBuf,
    /// Instructions (fuel units) one message may use (in a batch, each
    /// message has its own).
    #[serde(default = "default_fuel")]
    pub fuel: u64,
    /// Wall-clock time one message may take (in a batch, each message has
    /// its own deadline). A call past it is stopped within
    /// one epoch tick (5 ms) after it, never before.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Linear memory one instance may grow to, all its memories together.
    #[serde(default = "default_memory")]
    pub memory: Size,
    /// Messages handled at once. Messages with the same key (or, without a
    /// key, from the same partition / topic) stay in order.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Messages one worker may have published and not yet seen acknowledged
    /// by the sink while it handles the next ones. Settles still follow
    /// acknowledgements, so nothing leaves the source early; a publish that
    /// fails is retried after the messages sent before it were settled, so
    /// within a key the order of outputs holds unless a publish fails. `1`
    /// waits for every publish before the next message (strict order even
    /// across sink failures, at the cost of one broker round trip per message).
    /// The default (1024) is above the sources' own in-flight limits
    /// (Kafka `max_in_flight` and JetStream `max_ack_pending` 1000), so the
    /// source, not this window, bounds what is outstanding: a window below
    /// the broker's rate × acknowledgement latency caps throughput (128 held
    /// Kafka at ~80k msg/s with its 1 ms linger).
    #[serde(default = "default_publish_window")]
    pub publish_window: usize,
    /// Most messages one handler call may take, for handlers that accept
    /// batches (the Rust SDK's do; other tool chains get one message per
    /// call). Only messages already waiting are batched, so a quiet stream
    /// never waits for a batch to fill. Each message still runs under its
    /// own `fuel` and `timeout` and gets its own outputs, failure and
    /// settle: a trap is pinned on the message that caused it, the messages
    /// before it keep their answers and the rest go on a fresh instance. A
    /// message retried in place runs again after the rest of its batch was
    /// handled (their outputs still wait for it). `1` = one message per call.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Largest total size of the outputs of one message; more is a `trap`.
    /// Each output counts 64 bytes and each header 16 beyond its own bytes,
    /// so that empty outputs are not free. Answers are checked before they
    /// are copied out of the sandbox, and the host never copies much more
    /// than this out of one call.
    #[serde(default = "default_max_output")]
    pub max_output_bytes: Size,
    /// Most outputs one message may have; more is a `trap`.
    #[serde(default = "default_max_outputs")]
    pub max_outputs: u32,
    /// Passed to the handler's `init` as string pairs.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Entries the handler's key/value store may hold.
    #[serde(default = "default_kv_entries")]
    pub kv_max_entries: usize,
    /// Bytes (keys plus values) the handler's key/value store may hold.
    #[serde(default = "default_kv_bytes")]
    pub kv_max_bytes: Size,
    /// Longest time compiling the plugin may take when it is not in the
    /// compile cache (a new version, a hot swap, a new Sluice). The compiler
    /// runs in a process of its own, which is killed past this; the plugin
    /// is then refused ("compiling the plugin took longer than
    /// handler.compile_timeout"), and on a hot swap the running version keeps
    /// running. The default leaves ample room for the 12-18 MB Python and JS
    /// components of the examples (15 s each on a quiet 2-core machine, 45 s
    /// beside a busy build); a plugin built to stall the compiler would
    /// otherwise hold a core and gigabytes for minutes.
    #[serde(default = "default_compile_timeout")]
    pub compile_timeout: Dur,
    /// Most memory compiling the plugin may use: the compiler process's
    /// `RLIMIT_DATA` (its heap and other private writable memory; about
    /// 40MiB of it is the compiler's own). Past it the plugin is refused ("compiling the plugin
    /// needed more memory than handler.compile_memory"), and on a hot swap
    /// the running version keeps running.
    #[serde(default = "default_compile_memory")]
    pub compile_memory: Size,
    /// A new version rolled out to a share of the keys beside this one, rolled
    /// back or promoted by a rule (see [`CanaryConfig`]).
    #[serde(default)]
    pub canary: Option<CanaryConfig>,
}

/// The default `handler.compile_timeout`: the examples' largest plugins
/// (Python, JS) compile in 15 s on a quiet 2-core machine, 45 s beside a
/// busy build.
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(120);
/// The default `handler.compile_memory`: the examples' largest plugin (JS,
/// 12 MB) peaks at 580 MB RSS and compiles under 768MiB of `RLIMIT_DATA`,
/// not under 512MiB; the Rust ones need 90 MB.
pub const DEFAULT_COMPILE_MEMORY: u64 = 2 << 30;

fn default_compile_timeout() -> Dur {
    Dur(DEFAULT_COMPILE_TIMEOUT)
}
fn default_compile_memory() -> Size {
    Size(DEFAULT_COMPILE_MEMORY)
}
fn default_fuel() -> u64 {
    100_000_000
}
fn default_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_memory() -> Size {
    Size(64 * 1024 * 1024)
}
fn default_concurrency() -> usize {
    1
}
fn default_publish_window() -> usize {
    1024
}
fn default_batch() -> usize {
    16
}
fn default_max_output() -> Size {
    Size(4 * 1024 * 1024)
}
fn default_max_outputs() -> u32 {
    1000
}
fn default_kv_entries() -> usize {
    10_000
}
fn default_kv_bytes() -> Size {
    Size(4 * 1024 * 1024)
}

/// Jitter applied to each retry delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Jitter {
    /// A random delay between 0 and the computed delay (AWS "full jitter").
    #[default]
    Full,
    /// Half the computed delay plus a random part of the other half.
    Equal,
    /// Exactly the computed delay.
    None,
}

/// The `[retry]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included. After the last, the `exhausted` action applies.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Delay before the second attempt.
    #[serde(default = "default_initial")]
    pub initial: Dur,
    /// Largest delay between two attempts.
    #[serde(default = "default_max_delay")]
    pub max: Dur,
    /// Each delay is the previous one times this.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Randomisation of each delay, so retries of many messages do not align.
    #[serde(default)]
    pub jitter: Jitter,
}

fn default_attempts() -> u32 {
    3
}
fn default_initial() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_max_delay() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_multiplier() -> f64 {
    2.0
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: default_attempts(),
            initial: default_initial(),
            max: default_max_delay(),
            multiplier: default_multiplier(),
            jitter: Jitter::default(),
        }
    }
}

/// What happens to a message that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Try again after a backoff delay, up to `retry.max_attempts`.
    Retry,
    /// Publish the original message with its failure to `[dead_letter]`, then settle it.
    DeadLetter,
    /// Settle it and count it as dropped.
    Drop,
    /// Stop the pipeline without settling it (it is redelivered on restart).
    Stop,
}

/// The `[errors]` table: one action per failure class.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorsConfig {
    /// The handler said `retriable`. Default `retry`.
    #[serde(default = "retry")]
    pub retriable: Action,
    /// The handler said `fatal`. Default `dead-letter`.
    #[serde(default = "dead_letter")]
    pub fatal: Action,
    /// The handler trapped (panic, unreachable, exit, stack overflow, bad output). Default `dead-letter`.
    #[serde(default = "dead_letter")]
    pub trap: Action,
    /// The handler ran past `handler.timeout`. Default `retry`.
    #[serde(default = "retry")]
    pub timeout: Action,
    /// The handler ran out of fuel; deterministic, so default `dead-letter`.
    #[serde(default = "dead_letter")]
    pub fuel: Action,
    /// The handler grew past `handler.memory`. Default `dead-letter`.
    #[serde(default = "dead_letter")]
    pub memory: Action,
    /// An output could not be published for a transient reason. Default `retry`.
    #[serde(default = "retry")]
    pub sink: Action,
    /// The broker refused an output for good. Default `dead-letter`.
    #[serde(default = "dead_letter")]
    pub rejected: Action,
    /// The source could not decode the bytes. Default `dead-letter`.
    #[serde(default = "dead_letter")]
    pub decode: Action,
    /// What happens once a retried message used all its attempts. Default
    /// `dead-letter`; `retry` is not allowed here.
    #[serde(default = "dead_letter")]
    pub exhausted: Action,
}

fn retry() -> Action {
    Action::Retry
}
fn dead_letter() -> Action {
    Action::DeadLetter
}

impl Default for ErrorsConfig {
    fn default() -> Self {
        ErrorsConfig {
            retriable: Action::Retry,
            fatal: Action::DeadLetter,
            trap: Action::DeadLetter,
            timeout: Action::Retry,
            fuel: Action::DeadLetter,
            memory: Action::DeadLetter,
            sink: Action::Retry,
            rejected: Action::DeadLetter,
            decode: Action::DeadLetter,
            exhausted: Action::DeadLetter,
        }
    }
}

impl ErrorsConfig {
    /// The action for a class.
    pub fn action(&self, class: FailureClass) -> Action {
        match class {
            FailureClass::Retriable => self.retriable,
            FailureClass::Fatal => self.fatal,
            FailureClass::Trap => self.trap,
            FailureClass::Timeout => self.timeout,
            FailureClass::Fuel => self.fuel,
            FailureClass::Memory => self.memory,
            FailureClass::Sink => self.sink,
            FailureClass::Rejected => self.rejected,
            FailureClass::Decode => self.decode,
        }
    }
}

/// The `[circuit_breaker]` table. It counts `sink` failures, and `retriable`
/// and `timeout` where `[errors]` retries them: a poison message, or one the
/// policy dead-letters or drops at once, does not open it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// `false` turns the breaker off.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Consecutive transient failures that open the breaker.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// Successes in half-open state that close it again.
    #[serde(default = "default_success_threshold")]
    pub success_threshold: u32,
    /// How long it stays open before letting one probe message through.
    #[serde(default = "default_open_for")]
    pub open_for: Dur,
}

fn yes() -> bool {
    true
}
fn default_failure_threshold() -> u32 {
    5
}
fn default_success_threshold() -> u32 {
    2
}
fn default_open_for() -> Dur {
    Dur(Duration::from_secs(60))
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            failure_threshold: default_failure_threshold(),
            success_threshold: default_success_threshold(),
            open_for: default_open_for(),
        }
    }
}

/// The `[dedup]` table: a message whose id was settled within `window` is
/// acknowledged and not handled again; one whose id is being handled right
/// now (the broker redelivered it meanwhile) is handed back to the source
/// and dropped when it comes again.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// What identifies a message: `"key"` (the message key), `"payload"` (a
    /// hash of the payload) or `"header:NAME"` (e.g. `"header:Nats-Msg-Id"`).
    pub by: String,
    /// How long an id is remembered.
    #[serde(default = "default_dedup_window")]
    pub window: Dur,
    /// Ids remembered at most; the oldest are forgotten first.
    #[serde(default = "default_dedup_entries")]
    pub max_entries: usize,
}

fn default_dedup_window() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_dedup_entries() -> usize {
    100_000
}
