//! The pipeline on the embedded `file` source: routing by `[errors]`, retries
//! with growing delays (paused time), byte-exact dead letters, a dead-letter
//! write failure that leaves the message unsettled, and restarts that neither
//! lose nor repeat lines.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use sluice::config::{self, PipelineConfig};
use sluice::engine::{Plugin, PluginSpec};
use sluice::failure::{Failure, FailureClass};
use sluice::sinks::{Accepted, Record, Sink};

/// A sink that records what it accepted (with the paused clock's time) and
/// fails the first `fail` publishes with `class`: fault injection for a sink.
#[derive(Clone, Default)]
struct FlakySink {
    state: Arc<Mutex<FlakyState>>,
}

#[derive(Default)]
struct FlakyState {
    fail: usize,
    class: Option<FailureClass>,
    attempts: Vec<tokio::time::Instant>,
    accepted: Vec<Record>,
}

impl FlakySink {
    fn failing(fail: usize, class: FailureClass) -> Self {
        let s = FlakySink::default();
        {
            let mut st = s.state.lock().unwrap();
            st.fail = fail;
            st.class = Some(class);
        }
        s
    }
    fn accepted(&self) -> Vec<Record> {
        self.state.lock().unwrap().accepted.clone()
    }
    fn attempts(&self) -> Vec<tokio::time::Instant> {
        self.state.lock().unwrap().attempts.clone()
    }
}

impl Sink for FlakySink {
    fn send<'a>(&'a self, records: &'a [Record]) -> BoxFuture<'a, Result<Accepted, Failure>> {
        Box::pin(async move {
            let mut st = self.state.lock().unwrap();
            st.attempts.push(tokio::time::Instant::now());
            if st.fail > 0 {
                st.fail -= 1;
                return Err(Failure::new(
                    st.class.unwrap_or(FailureClass::Sink),
                    "injected sink failure",
                ));
            }
            st.accepted.extend_from_slice(records);
            Ok(sluice::sinks::done())
        })
    }
}

fn write_pipeline(dir: &Path, body: &str) -> PipelineConfig {
    let file = dir.join("p.toml");
    std::fs::write(&file, body).unwrap();
    config::load(&file).unwrap_or_else(|e| panic!("{e}"))
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn dead_letters(path: &Path) -> Vec<sluice::envelope::Envelope> {
    lines(path)
        .iter()
        .map(|l| sluice::envelope::decode(l).unwrap())
        .collect()
}

fn header(e: &sluice::envelope::Envelope, k: &str) -> Option<String> {
    e.headers
        .iter()
        .find(|h| h.key == k)
        .map(|h| String::from_utf8_lossy(&h.value).into_owned())
}

async fn run(cfg: &PipelineConfig) -> sluice::stats::Snapshot {
    let engine = common::engine();
    let p = sluice::connect::build(cfg, &engine).await.expect("build");
    p.run(std::future::pending()).await.expect("run")
}

fn base_toml(dir: &Path, plugin: &str, extra: &str) -> String {
    format!(
        r#"name = "t"
[source]
type = "file"
path = "{d}/in.txt"
[handler]
plugin = "{plugin}"
fuel = 50_000_000
timeout = "200ms"
memory = "16MiB"
max_output_bytes = "1MiB"
[sink]
type = "file"
path = "{d}/out.txt"
[dead_letter]
type = "file"
path = "{d}/dlq.jsonl"
[retry]
max_attempts = 3
initial = "10ms"
max = "50ms"
{extra}
"#,
        d = dir.display(),
        plugin = common::plugin(plugin).display()
    )
}

/// Each hostile fixture, mixed into good lines, is classed and routed as
/// `[errors]` says; the good lines after it still come out.
#[tokio::test]
async fn hostile_fixtures_are_routed_by_the_errors_table() {
    let cases: &[(&str, &str, &str, &str)] = &[
        // plugin, trigger, expected class, action for that class
        ("panic", "panic", "trap", "dead-letter"),
        ("infinite-loop", "loop", "fuel", "dead-letter"),
        ("alloc-bomb", "alloc", "memory", "dead-letter"),
        ("deep-recursion", "recurse", "trap", "drop"),
        ("fuel-burner", "burn", "fuel", "drop"),
        ("big-output", "big", "memory", "dead-letter"),
        ("fatal-on", "bad-1", "fatal", "dead-letter"),
    ];
    for (plugin, trigger, class, action) in cases {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("in.txt"),
            format!("a\nb\n{trigger}\nc\n{trigger}\nd\n"),
        )
        .unwrap();
        let cfg = write_pipeline(
            d,
            &base_toml(d, plugin, &format!("[errors]\n{class} = \"{action}\"")),
        );
        let s = run(&cfg).await;
        assert_eq!(
            lines(&d.join("out.txt")),
            vec!["a", "b", "c", "d"],
            "{plugin}: good lines flow"
        );
        let dead = dead_letters(&d.join("dlq.jsonl"));
        if *action == "dead-letter" {
            assert_eq!(dead.len(), 2, "{plugin}");
            for e in &dead {
                assert_eq!(e.payload, trigger.as_bytes());
                assert_eq!(
                    header(e, "sluice-error-class").as_deref(),
                    Some(*class),
                    "{plugin}"
                );
            }
        } else {
            assert!(dead.is_empty(), "{plugin}: dropped, not dead-lettered");
            assert_eq!(s.dropped, 2, "{plugin}");
        }
        assert_eq!(s.received, 6);
        assert_eq!(s.succeeded, 4);
        eprintln!("[{plugin}] {class} → {action}: {s:?}");
    }
}

/// Retries wait 1 s, 2 s, 4 s (no jitter) on the paused clock, then succeed.
#[tokio::test(start_paused = true)]
async fn retries_back_off_exponentially_then_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("in.txt"), "x\n").unwrap();
    let mut cfg = write_pipeline(d, &base_toml(d, "echo", ""));
    cfg.retry.max_attempts = 5;
    cfg.retry.initial = config::units::Dur(Duration::from_secs(1));
    cfg.retry.max = config::units::Dur(Duration::from_secs(60));
    cfg.retry.jitter = config::Jitter::None;
    cfg.circuit_breaker.enabled = false;
    let sink = FlakySink::failing(3, FailureClass::Sink);
    let s = run_with_sink(&cfg, sink.clone(), None).await;
    let t = sink.attempts();
    assert_eq!(t.len(), 4, "three failures then a success");
    let gaps: Vec<Duration> = t.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, want) in gaps.iter().zip([1u64, 2, 4]) {
        assert!(
            *gap >= Duration::from_secs(want)
                && *gap < Duration::from_secs(want) + Duration::from_millis(50),
            "gaps {gaps:?}"
        );
    }
    assert_eq!(sink.accepted().len(), 1);
    assert_eq!(s.retries, 3);
    assert_eq!(s.succeeded, 1);
}

/// Retries stop at max_attempts; the message is dead-lettered with the count.
#[tokio::test(start_paused = true)]
async fn retries_stop_at_max_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("in.txt"), "x\ny\n").unwrap();
    let mut cfg = write_pipeline(d, &base_toml(d, "flaky", ""));
    cfg.handler.config.insert("fail_times".into(), "10".into());
    cfg.retry.jitter = config::Jitter::None;
    let s = run(&cfg).await;
    let dead = dead_letters(&d.join("dlq.jsonl"));
    assert_eq!(dead.len(), 2);
    for e in &dead {
        assert_eq!(
            header(e, "sluice-error-class").as_deref(),
            Some("retriable")
        );
        assert_eq!(header(e, "sluice-attempts").as_deref(), Some("3"));
    }
    assert_eq!(s.retries, 4, "two retries per message");
    assert_eq!(s.dead_lettered, 2);
}

async fn run_with_sink(
    cfg: &PipelineConfig,
    sink: FlakySink,
    dlq: Option<FlakySink>,
) -> sluice::stats::Snapshot {
    let engine = common::engine();
    let plugin = Plugin::load(&engine, PluginSpec::from_config(&cfg.name, &cfg.handler))
        .await
        .unwrap();
    let source = sluice::connect::open_source(&cfg.source, &cfg.name)
        .await
        .unwrap();
    let dead_letter: Option<Arc<dyn Sink>> = match dlq {
        Some(d) => Some(Arc::new(d)),
        None => Some(
            sluice::connect::open_sink(cfg.dead_letter.as_ref().unwrap(), true, &cfg.name)
                .await
                .unwrap(),
        ),
    };
    let p = sluice::pipeline::Pipeline::new(sluice::pipeline::Parts {
        name: cfg.name.clone(),
        source,
        plugin,
        sinks: sluice::pipeline::Sinks {
            default: Some(Arc::new(sink)),
            named: Default::default(),
        },
        dead_letter,
        policy: sluice::policy::Policy {
            errors: cfg.errors.clone(),
            retry: cfg.retry.clone(),
        },
        breaker: cfg.circuit_breaker.clone(),
        dedup: None,
        concurrency: cfg.handler.concurrency,
        publish_window: cfg.handler.publish_window,
        batch: cfg.handler.batch,
        publish_timeout: Duration::from_secs(30),
    });
    p.run(std::future::pending()).await.expect("run")
}

/// Dead-letter records keep payload and key byte for byte (not UTF-8 here)
/// and carry the metadata.
#[tokio::test]
async fn dead_letters_are_byte_exact_with_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bad: Vec<u8> = b"bad\xff\x00\xfe\tend".to_vec();
    let mut input = b"good\n".to_vec();
    input.extend_from_slice(&bad);
    input.extend_from_slice(b"\n");
    std::fs::write(d.join("in.txt"), &input).unwrap();
    let cfg = write_pipeline(d, &base_toml(d, "fatal-on", ""));
    run(&cfg).await;
    let dead = dead_letters(&d.join("dlq.jsonl"));
    assert_eq!(dead.len(), 1);
    let e = &dead[0];
    assert_eq!(e.payload.as_ref(), bad.as_slice(), "payload byte for byte");
    assert_eq!(header(e, "sluice-error-class").as_deref(), Some("fatal"));
    assert!(
        header(e, "sluice-error-message")
            .unwrap()
            .starts_with("refused: bad")
    );
    assert_eq!(header(e, "sluice-attempts").as_deref(), Some("1"));
    assert_eq!(header(e, "sluice-pipeline").as_deref(), Some("t"));
    assert!(
        header(e, "sluice-plugin-digest")
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(
        header(e, "sluice-source-topic")
            .unwrap()
            .ends_with("in.txt")
    );
    assert_eq!(header(e, "sluice-source-offset").as_deref(), Some("5"));
    let at = header(e, "sluice-failed-at").unwrap();
    assert!(humantime::parse_rfc3339(&at).is_ok(), "RFC 3339: {at}");
}

/// When the dead-letter write fails, the line is not settled: it comes back
/// and is dead-lettered once the dead-letter sink works again.
#[tokio::test]
async fn failed_dead_letter_write_leaves_the_message_unsettled() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("in.txt"), "ok-1\nbad-2\nok-3\n").unwrap();
    let cfg = write_pipeline(d, &base_toml(d, "fatal-on", ""));
    let out = FlakySink::default();
    let dlq = FlakySink::failing(2, FailureClass::Sink);
    let s = run_with_sink(&cfg, out.clone(), Some(dlq.clone())).await;
    let dead = dlq.accepted();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, "bad-2");
    assert_eq!(
        dlq.attempts().len(),
        3,
        "two failed writes, then one that worked"
    );
    assert_eq!(s.redelivered, 2);
    assert_eq!(out.accepted().len(), 2);
    // Everything is settled now: the checkpoint is at the end of the file.
    let cp = std::fs::read_to_string(d.join("in.txt.sluice-checkpoint")).unwrap();
    assert!(
        cp.starts_with(&format!("{:020}", "ok-1\nbad-2\nok-3\n".len())),
        "{cp}"
    );
}

/// A pipeline shut down mid-stream and started again neither loses nor repeats lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_neither_loses_nor_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let n = 5000;
    let input: String = (0..n).map(|i| format!("line-{i:05}\n")).collect();
    std::fs::write(d.join("in.txt"), &input).unwrap();
    let mut cfg = write_pipeline(d, &base_toml(d, "echo", ""));
    cfg.handler.concurrency = 4;
    let engine = common::engine();
    let mut runs = 0;
    loop {
        runs += 1;
        let p = sluice::connect::build(&cfg, &engine).await.unwrap();
        let stats = p.stats();
        // Stop each run once it has done some work (graceful shutdown).
        let stop = async move {
            while stats.succeeded.load(std::sync::atomic::Ordering::Relaxed) < 700 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let s = p.run(stop).await.unwrap();
        if s.received == 0 || runs > 50 {
            break;
        }
    }
    let got = lines(&d.join("out.txt"));
    let mut sorted = got.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), got.len(), "no line repeated");
    assert_eq!(got.len(), n, "no line lost");
    assert!(
        runs > 3,
        "the stream was interrupted several times ({runs} runs)"
    );
    common::report("file restart", n, got.len(), 0, 0, 0);
}

/// `sluice run` on a finite file exits 0 once every line is settled, and a
/// second run finds nothing left to do.
#[test]
fn sluice_run_batch_exits_zero_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("in.txt"),
        "2026-11-26T09:15:02.123Z INFO [api] ok path=/a\nnot a log line\n2026-11-26T09:15:03.000Z ERROR [db] down\n",
    )
    .unwrap();
    std::fs::write(d.join("p.toml"), base_toml(d, "log-parser", "")).unwrap();
    let p = d.join("p.toml");
    let (code, _, err) = common::run_sluice(&["run", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("received 3, succeeded 2"), "{err}");
    assert_eq!(lines(&d.join("out.txt")).len(), 2);
    let dead = dead_letters(&d.join("dlq.jsonl"));
    assert_eq!(dead.len(), 1);
    assert!(
        header(&dead[0], "sluice-error-message")
            .unwrap()
            .contains("malformed log line")
    );
    let (code, _, err) = common::run_sluice(&["run", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("received 0"), "{err}");
    let _ = PathBuf::new();
}

/// `sluice call` shows outputs and failure classes.
#[test]
fn sluice_call_shows_outputs_and_classes() {
    let plugin = common::plugin("panic");
    let (code, out, _) = common::run_sluice(&[
        "call",
        "--plugin",
        plugin.to_str().unwrap(),
        "--payload",
        "hi",
        "--payload",
        "panic",
        "--payload",
        "again",
    ]);
    assert_eq!(code, 1, "a failure makes the exit code 1");
    assert!(out.contains("#1 ok: 1 output(s)"), "{out}");
    assert!(out.contains("#2 trap:"), "{out}");
    assert!(out.contains("#3 ok"), "{out}");
}

/// A sink whose acknowledgements come later than its sends (like a broker's
/// PubAck): an acknowledgement waits for a permit the test hands out; the
/// sink counts how many sends wait at once, and the acknowledgement of the
/// record `fail_at` fails once with a `sink` failure.
#[derive(Clone, Default)]
struct SlowAckSink(Arc<SlowAck>);

struct SlowAck {
    state: Mutex<SlowAckState>,
    gate: tokio::sync::Semaphore,
}

impl Default for SlowAck {
    fn default() -> Self {
        SlowAck {
            state: Mutex::default(),
            gate: tokio::sync::Semaphore::new(0),
        }
    }
}

#[derive(Default)]
struct SlowAckState {
    sent: Vec<String>,
    /// The record id of each send, beside `sent`.
    ids: Vec<String>,
    waiting: usize,
    most_waiting: usize,
    fail_at: Option<String>,
}

impl Sink for SlowAckSink {
    /// The test checks each send's record id.
    fn wants_ids(&self) -> bool {
        true
    }

    fn send<'a>(&'a self, records: &'a [Record]) -> BoxFuture<'a, Result<Accepted, Failure>> {
        let payload = String::from_utf8_lossy(&records[0].payload).into_owned();
        let fail = {
            let mut st = self.0.state.lock().unwrap();
            st.sent.push(payload.clone());
            st.ids.push(records[0].id.clone());
            st.waiting += 1;
            st.most_waiting = st.most_waiting.max(st.waiting);
            let fail = st.fail_at.as_deref() == Some(payload.as_str());
            if fail {
                st.fail_at = None;
            }
            fail
        };
        let me = self.0.clone();
        let accepted: Accepted = Box::pin(async move {
            me.gate.acquire().await.expect("gate").forget();
            me.state.lock().unwrap().waiting -= 1;
            if fail {
                Err(Failure::new(FailureClass::Sink, "injected ack failure"))
            } else {
                Ok(())
            }
        });
        Box::pin(async move { Ok(accepted) })
    }
}

/// A worker keeps up to `publish_window` messages sent and unacknowledged,
/// settles each only after its acknowledgement, and a failed acknowledgement
/// is retried: every message is published and settled exactly once, none
/// early, and the retried one comes out again under the same record id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_window_pipelines_sends_and_settles_after_acks() {
    use std::sync::atomic::Ordering::Relaxed;
    let n = 200;
    let window = 16;
    let sink = SlowAckSink::default();
    sink.0.state.lock().unwrap().fail_at = Some("m-050".into());
    let engine = common::engine();
    let plugin = Plugin::load(&engine, PluginSpec::new(common::plugin("echo")))
        .await
        .unwrap();
    let source = sluice::sources::memory::MemorySource::new(
        (0..n).map(|i| sluice::message::Message::new("t", format!("m-{i:03}"))),
    );
    let settled = source.settled();
    let p = sluice::pipeline::Pipeline::new(sluice::pipeline::Parts {
        name: "window".into(),
        source: Box::new(source),
        plugin,
        sinks: sluice::pipeline::Sinks {
            default: Some(Arc::new(sink.clone())),
            named: Default::default(),
        },
        dead_letter: None,
        policy: sluice::policy::Policy {
            errors: Default::default(),
            retry: Default::default(),
        },
        breaker: Default::default(),
        dedup: None,
        concurrency: 1,
        publish_window: window,
        batch: 16,
        publish_timeout: Duration::from_secs(30),
    });
    let run = tokio::spawn(p.run(std::future::pending()));
    // Hand out acknowledgements one at a time, checking that no message was
    // settled before its acknowledgement.
    let mut given = 0;
    while !run.is_finished() {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let acked = settled.acked.load(Relaxed) as usize;
        assert!(
            acked <= given,
            "{acked} settled but only {given} acks given"
        );
        sink.0.gate.add_permits(1);
        given += 1;
        assert!(given < 100_000, "the pipeline does not finish");
    }
    let s = run.await.unwrap().expect("run");
    let st = sink.0.state.lock().unwrap();
    eprintln!(
        "[publish window] {n} messages, window {window}: at most {} sends waiting at once, \
         {} sends, {} acked, {} retried",
        st.most_waiting,
        st.sent.len(),
        settled.acked.load(Relaxed),
        s.retries
    );
    assert!(
        st.most_waiting > 1 && st.most_waiting <= window,
        "sends waiting at once: {} (window {window})",
        st.most_waiting
    );
    assert_eq!(settled.acked.load(Relaxed), n);
    assert_eq!(s.succeeded, n);
    assert_eq!(s.retries, 1);
    assert_eq!(
        st.sent.len() as u64,
        n + 1,
        "every message once, m-050 twice"
    );
    let mut unique: Vec<&String> = st.sent.iter().collect();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len() as u64, n);
    assert_eq!(st.sent.iter().filter(|p| *p == "m-050").count(), 2);
    // A retry republishes under the same record id, so a deduplicating sink
    // (JetStream `Nats-Msg-Id`) stores it once.
    let retried: Vec<&String> = (st.sent.iter().zip(&st.ids))
        .filter(|(p, _)| *p == "m-050")
        .map(|(_, id)| id)
        .collect();
    assert_eq!(retried[0], retried[1], "record id of a retried message");
    let mut distinct: Vec<&String> = st.ids.iter().collect();
    distinct.sort();
    distinct.dedup();
    let some: Vec<_> = distinct.iter().take(3).collect();
    assert_eq!(distinct.len() as u64, n, "one id per message: {some:?}");
}

/// Lines in a file, torn ones (a kill mid-write) left out.
fn whole_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read(path).unwrap_or_default();
    let end = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    String::from_utf8_lossy(&text[..end])
        .lines()
        .map(str::to_string)
        .collect()
}

/// `sluice run` killed (SIGKILL) mid-stream and started again loses no
/// line, and repeats at most 2 × `max_in_flight` lines: the source hands
/// out no line while that many are past the checkpoint written last, and
/// the checkpoint is written every `checkpoint_every` (100 ms) or once
/// `max_in_flight` lines settled.
#[test]
fn sigkill_mid_stream_loses_nothing_and_repeats_a_bounded_number() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let n = 200_000;
    let max_in_flight = 256;
    let input: String = (0..n)
        .map(|i| {
            if i % 1000 == 7 {
                format!("bad-{i:06}\n")
            } else {
                format!("line-{i:06}\n")
            }
        })
        .collect();
    std::fs::write(d.join("in.txt"), &input).unwrap();
    let source = format!("path = \"{}/in.txt\"", d.display());
    let toml = base_toml(d, "fatal-on", "").replace(
        &source,
        &format!("{source}\nmax_in_flight = {max_in_flight}\ncheckpoint_every = \"100ms\""),
    );
    assert!(toml.contains("checkpoint_every"), "{toml}");
    let file = d.join("p.toml");
    std::fs::write(&file, toml).unwrap();

    let out = d.join("out.txt");
    let dlq = d.join("dlq.jsonl");
    let p = common::spawn_sluice(&file);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while whole_lines(&out).len() < n / 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "no progress before the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    p.signal("KILL");
    drop(p);
    let seen = whole_lines(&out).len() + whole_lines(&dlq).len();
    assert!(
        seen < n / 2,
        "killed mid-stream: {seen} of {n} lines out before the kill"
    );

    let (code, _, err) = common::run_sluice(&["run", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");

    let mut count = std::collections::HashMap::<String, usize>::new();
    let outputs = whole_lines(&out);
    let dead: Vec<String> = whole_lines(&dlq)
        .iter()
        .filter_map(|l| sluice::envelope::decode(l).ok())
        .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
        .collect();
    for l in outputs.iter().chain(&dead) {
        *count.entry(l.clone()).or_default() += 1;
    }
    let lost: Vec<&str> = input
        .lines()
        .filter(|l| !count.contains_key(*l))
        .take(5)
        .collect();
    assert!(lost.is_empty(), "lost lines, e.g. {lost:?}");
    assert_eq!(count.len(), n, "nothing but the input came out");
    let dups = outputs.len() + dead.len() - n;
    common::report(
        "file sigkill (checkpoint every 100 ms)",
        n,
        outputs.len(),
        dead.len(),
        0,
        dups,
    );
    eprintln!("[file sigkill] {seen} lines out before the kill, {dups} repeated");
    assert!(
        dups <= 2 * max_in_flight,
        "{dups} lines repeated, more than 2 × max_in_flight"
    );
}

/// With `fsync = true` on the sink, each checkpoint is written only after the
/// sink's bytes for every line it covers were synced, and is itself synced
/// before the next: watched with `strace` on `sluice run` (every write,
/// positioned write and sync of the sink and the checkpoint, in order).
/// Echo writes each line back as it came, so a checkpoint at byte X covers
/// exactly X bytes of output.
#[test]
fn with_fsync_the_checkpoint_never_covers_an_unsynced_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let n = 60_000;
    let input: String = (0..n).map(|i| format!("line-{i:06}\n")).collect();
    std::fs::write(d.join("in.txt"), &input).unwrap();
    let toml = base_toml(d, "echo", "")
        .replace(
            &format!("path = \"{}/in.txt\"", d.display()),
            &format!(
                "path = \"{}/in.txt\"\nmax_in_flight = 512\ncheckpoint_every = \"10ms\"",
                d.display()
            ),
        )
        .replace(
            &format!("path = \"{}/out.txt\"", d.display()),
            &format!("path = \"{}/out.txt\"\nfsync = true", d.display()),
        );
    assert!(toml.contains("fsync = true") && toml.contains("checkpoint_every"));
    let file = d.join("p.toml");
    std::fs::write(&file, toml).unwrap();
    let trace = d.join("trace.txt");
    let status = std::process::Command::new("strace")
        .args(["-f", "-qq", "-y", "-s", "24", "-o"])
        .arg(&trace)
        .args(["-e", "trace=write,writev,pwrite64,fsync,fdatasync"])
        .arg(common::sluice_bin())
        .args(["run", file.to_str().unwrap()])
        .env("SLUICE_CACHE_DIR", common::cache_dir())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("strace (install it: apt-get install strace)");
    assert!(status.success(), "{status:?}");
    assert_eq!(std::fs::read(d.join("out.txt")).unwrap().len(), input.len());

    let out = format!("{}/out.txt>", d.display());
    let cp = ".sluice-checkpoint>";
    let text = std::fs::read_to_string(&trace).unwrap();
    // A call cut in two by another thread's: its start names the fd, its
    // end (`<... resumed>`) carries the result.
    let mut open: std::collections::HashMap<&str, &str> = Default::default();
    let (mut written, mut synced, mut syncing) = (0u64, 0u64, Vec::<(String, u64)>::new());
    let (mut checkpoints, mut last_cp, mut cp_unsynced) = (0, 0u64, false);
    for line in text.lines() {
        let Some((pid, call)) = line.split_once(' ') else {
            continue;
        };
        let call = call.trim_start();
        let (start, end) = if let Some(head) = call.strip_suffix(" <unfinished ...>") {
            open.insert(pid, head);
            (Some(head), None)
        } else if call.starts_with("<... ") {
            (None, open.remove(pid).map(|head| (head, call)))
        } else {
            (Some(call), Some((call, call)))
        };
        if let Some(head) = start {
            if head.starts_with("fdatasync(") || head.starts_with("fsync(") {
                if head.contains(&out) {
                    syncing.push((pid.to_string(), written));
                } else if head.contains(cp) {
                    cp_unsynced = false;
                }
            } else if head.starts_with("pwrite64(") && head.contains(cp) {
                let offset: u64 = head
                    .split('"')
                    .nth(1)
                    .and_then(|r| r.get(..20))
                    .and_then(|o| o.parse().ok())
                    .unwrap_or_else(|| panic!("a checkpoint record in {line}"));
                if offset > last_cp {
                    assert!(
                        !cp_unsynced,
                        "checkpoint {offset} written before the last one was synced"
                    );
                    assert!(
                        offset <= synced,
                        "checkpoint at byte {offset} written with {synced} output bytes synced"
                    );
                    checkpoints += 1;
                    cp_unsynced = true;
                    last_cp = offset;
                }
            }
        }
        if let Some((head, tail)) = end {
            let result: Option<u64> = tail.rsplit(" = ").next().and_then(|r| r.parse().ok());
            if (head.starts_with("write(") || head.starts_with("writev(")) && head.contains(&out) {
                written += result.unwrap_or(0);
            } else if (head.starts_with("fdatasync(") || head.starts_with("fsync("))
                && head.contains(&out)
                && let Some(i) = syncing.iter().position(|(p, _)| p == pid)
            {
                synced = synced.max(syncing.remove(i).1);
            }
        }
    }
    assert_eq!(
        written,
        input.len() as u64,
        "the trace saw every output byte"
    );
    assert!(!cp_unsynced, "the last checkpoint was never synced");
    assert_eq!(
        last_cp,
        input.len() as u64,
        "the last checkpoint is the end"
    );
    assert!(
        checkpoints >= 3,
        "only {checkpoints} checkpoints: nothing shown"
    );
    eprintln!("[file fsync order] {checkpoints} checkpoints, each after its outputs were synced");
}
