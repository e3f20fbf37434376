//! Guests written to break the sandbox's promises: whatever a handler does,
//! it costs the runtime at most its budgets and the message its class. A
//! wall-clock deadline that holds inside host calls (WASI sleeps, `init`),
//! answers checked as they arrive (count, size, the message they belong to),
//! batch failures pinned only where they can be, guest text that cannot
//! forge a log line, and no network.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::guest::{Guest, ONE_OUTPUT, OUTPUTS, PAYLOAD};
use sluice::engine::{Plugin, PluginError, PluginSpec, Worker};
use sluice::failure::{Failure, FailureClass};
use sluice::message::{Message, Output};
use sluice::pipeline::{Parts, Pipeline};
use sluice::sinks::memory::MemorySink;
use sluice::sources::memory::MemorySource;

/// The deadline every test here runs under.
const TIMEOUT: Duration = Duration::from_millis(200);

/// How far past its deadline a call may end (the issue's bound; the
/// watchdog's grace is 20 ms, the rest is a busy debug build's slack).
const PAST_DEADLINE: Duration = Duration::from_millis(100);

fn spec(path: impl Into<std::path::PathBuf>) -> PluginSpec {
    let mut s = PluginSpec::new(path);
    s.timeout = TIMEOUT;
    s.max_output_bytes = 1 << 20;
    s
}

async fn worker(spec: PluginSpec) -> Worker {
    let plugin = Plugin::load(&common::engine(), spec)
        .await
        .unwrap_or_else(|e| panic!("load: {e}"));
    Worker::new(plugin)
}

fn failure(r: &Result<Vec<Output>, Failure>) -> &Failure {
    match r {
        Ok(o) => panic!("expected a failure, got {} output(s)", o.len()),
        Err(f) => f,
    }
}

fn payloads(r: &Result<Vec<Output>, Failure>) -> Vec<String> {
    match r {
        Ok(o) => o
            .iter()
            .map(|o| String::from_utf8_lossy(&o.payload).into_owned())
            .collect(),
        Err(f) => panic!("expected outputs, got {f}"),
    }
}

/// Runs `payload` on `w` (after a warm-up message, so the instance exists)
/// and returns the failure and how long the call took.
async fn timed_failure(w: &mut Worker, payload: &str) -> (Failure, Duration) {
    let (warm, _) = w.handle(&Message::new("t", "warm")).await;
    assert!(warm.is_ok(), "warm-up: {:?}", warm.err());
    let start = Instant::now();
    let (r, _) = w.handle(&Message::new("t", payload.to_string())).await;
    (failure(&r).clone(), start.elapsed())
}

#[tokio::test]
async fn a_wasi_sleep_ends_at_the_deadline_as_a_timeout() {
    let mut w = worker(spec(common::plugin("hostile"))).await;
    // Five seconds, and a sleep that would never end.
    for trigger in ["sleep-5000", "sleep-18446744073709551"] {
        let (f, took) = timed_failure(&mut w, trigger).await;
        assert_eq!(f.class, FailureClass::Timeout, "{trigger}: {f}");
        assert!(f.message.contains("host call"), "{f}");
        assert!(
            took < TIMEOUT + PAST_DEADLINE,
            "{trigger}: ended {took:?} after it started, deadline {TIMEOUT:?}"
        );
    }
    // The instance was discarded; the next message gets a fresh one.
    let (r, _) = w.handle(&Message::new("t", "after")).await;
    assert_eq!(payloads(&r), ["after"]);
    // A short sleep within the deadline is allowed.
    let (r, _) = w.handle(&Message::new("t", "sleep-20")).await;
    assert_eq!(payloads(&r), ["sleep-20"]);
}

#[tokio::test]
async fn a_sleep_in_a_batch_ends_at_that_messages_deadline() {
    let mut w = worker(spec(common::plugin("hostile"))).await;
    let (warm, _) = w.handle(&Message::new("t", "warm")).await;
    assert!(warm.is_ok());
    let batch = [
        Message::new("t", "sleep-50"),
        Message::new("t", "sleep-100000"),
        Message::new("t", "after"),
    ];
    let refs: Vec<&Message> = batch.iter().collect();
    let start = Instant::now();
    let answers = w.handle_batch(&refs).await;
    let took = start.elapsed();
    assert_eq!(answers.len(), 2, "the sleeper is pinned; `after` is left");
    assert_eq!(payloads(&answers[0].0), ["sleep-50"]);
    let f = failure(&answers[1].0);
    assert_eq!(f.class, FailureClass::Timeout, "{f}");
    // The first message's 50 ms, then the second's own deadline.
    let bound = Duration::from_millis(50) + TIMEOUT + PAST_DEADLINE;
    assert!(took < bound, "the batch took {took:?}, bound {bound:?}");
}

/// A caller that gives up on a call (drops its future while the handler
/// waits in a host call, one message or a batch) leaves no half-run
/// instance behind: the next call gets a fresh one and succeeds.
#[tokio::test]
async fn a_call_its_caller_gave_up_on_leaves_no_broken_instance() {
    let mut w = worker(spec(common::plugin("hostile"))).await;
    let (warm, _) = w.handle(&Message::new("t", "warm")).await;
    assert!(warm.is_ok());
    let sleep = Message::new("t", "sleep-5000");
    let gave_up = tokio::time::timeout(Duration::from_millis(50), w.handle(&sleep)).await;
    assert!(gave_up.is_err(), "the caller gave up on the sleep");
    let (r, _) = w.handle(&Message::new("t", "after")).await;
    assert_eq!(payloads(&r), ["after"]);

    let batch = [Message::new("t", "a"), Message::new("t", "sleep-5000")];
    let refs: Vec<&Message> = batch.iter().collect();
    let gave_up = tokio::time::timeout(Duration::from_millis(50), w.handle_batch(&refs)).await;
    assert!(gave_up.is_err(), "the caller gave up on the batch");
    let batch = [Message::new("t", "b"), Message::new("t", "c")];
    let refs: Vec<&Message> = batch.iter().collect();
    let answers = w.handle_batch(&refs).await;
    let got: Vec<Vec<String>> = answers.iter().map(|(r, _)| payloads(r)).collect();
    assert_eq!(got, [["b"], ["c"]]);
}

/// A core module sleeping through WASI preview 1 (`poll_oneoff` on the
/// monotonic clock for u64::MAX ns, through the adapter Sluice adds).
#[tokio::test]
async fn a_preview1_poll_oneoff_forever_ends_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let sleep = r#"
        (i64.store (i32.const 64) (i64.const 0))
        (i32.store8 (i32.const 72) (i32.const 0))
        (i32.store (i32.const 80) (i32.const 1))
        (i64.store (i32.const 88) (i64.const -1))
        (i64.store (i32.const 96) (i64.const 0))
        (i32.store16 (i32.const 104) (i32.const 0))
        (drop (call $poll (i32.const 64) (i32.const 256) (i32.const 1) (i32.const 512)))"#;
    let handle = format!("{sleep} {ONE_OUTPUT}");
    let path = Guest {
        imports: r#"(import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))"#,
        handle: Some(&handle),
        ..Default::default()
    }
    .write(dir.path(), "poll-forever");
    let mut w = worker(spec(&path)).await;
    let start = Instant::now();
    let (r, _) = w.handle(&Message::new("t", "x")).await;
    let took = start.elapsed();
    let f = failure(&r);
    assert_eq!(f.class, FailureClass::Timeout, "{f}");
    // The first call also makes the instance.
    assert!(took < TIMEOUT + PAST_DEADLINE * 3, "took {took:?}");
}

#[tokio::test]
async fn init_waiting_in_a_host_call_is_refused_at_its_deadline() {
    let mut s = spec(common::plugin("hostile"));
    s.config.push(("init_sleep_ms".into(), "3600000".into()));
    let start = Instant::now();
    let loaded = tokio::time::timeout(Duration::from_secs(20), Plugin::load(&common::engine(), s))
        .await
        .expect("loading must not wait for init's hour-long sleep");
    let e = loaded.err().expect("refused");
    assert!(matches!(e, PluginError::Init { .. }), "{e}");
    assert!(e.to_string().contains("timeout"), "{e}");
    println!("refused after {:?}: {e}", start.elapsed());
}

fn outputs_guest(dir: &std::path::Path, name: &str, n: u32, len: u32) -> std::path::PathBuf {
    let handle =
        format!("(call $outputs (i32.const {n}) (i32.const {len})) (call $ok (i32.const {n}))");
    Guest {
        handle: Some(&handle),
        ..Default::default()
    }
    .write(dir, name)
}

#[tokio::test]
async fn outputs_are_capped_in_number_and_empty_ones_are_not_free() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(outputs_guest(dir.path(), "thousand", 1000, 0));
    s.max_outputs = 1000;
    let (r, _) = worker(s).await.handle(&Message::new("t", "x")).await;
    assert_eq!(payloads(&r).len(), 1000, "max_outputs itself is allowed");

    let mut s = spec(outputs_guest(dir.path(), "one-more", 1001, 0));
    s.max_outputs = 1000;
    let (r, _) = worker(s).await.handle(&Message::new("t", "x")).await;
    let f = failure(&r);
    assert_eq!(f.class, FailureClass::Trap);
    assert!(f.message.contains("more than max_outputs = 1000"), "{f}");

    // 20,000 empty outputs: 64 bytes each against 1 MiB.
    let mut s = spec(outputs_guest(dir.path(), "empties", 20_000, 0));
    s.max_outputs = 100_000;
    let (r, _) = worker(s).await.handle(&Message::new("t", "x")).await;
    let f = failure(&r);
    assert!(f.message.contains("max_output_bytes = 1048576"), "{f}");

    // 100,000 outputs: refused while being copied out of the guest.
    let mut s = spec(outputs_guest(dir.path(), "flood", 100_000, 0));
    s.max_outputs = 100_000;
    let (r, _) = worker(s).await.handle(&Message::new("t", "x")).await;
    let f = failure(&r);
    assert_eq!(f.class, FailureClass::Trap);
    assert!(f.message.starts_with("bad output"), "{f}");
}

/// A batch guest that answers through `$done` (`columns.answer`) as `body` says.
fn batch_guest(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    Guest {
        batch: Some(body),
        ..Default::default()
    }
    .write(dir, name)
}

fn done(position: u32) -> String {
    format!(
        "(call $done (i32.const {position}) (i32.const 0) (i32.const {OUTPUTS}) (i32.const 0) (i32.const 0))"
    )
}

fn three() -> [Message; 3] {
    [
        Message::new("t", "a"),
        Message::new("t", "b"),
        Message::new("t", "c"),
    ]
}

#[tokio::test]
async fn an_answer_for_the_wrong_message_is_a_protocol_violation() {
    let dir = tempfile::tempdir().unwrap();
    // Message 0 answered twice: the second must not land on message 1.
    let twice = batch_guest(dir.path(), "twice", &format!("{} {}", done(0), done(0)));
    let mut w = worker(spec(twice)).await;
    let msgs = three();
    let refs: Vec<&Message> = msgs.iter().collect();
    let answers = w.handle_batch(&refs).await;
    assert_eq!(answers.len(), 2, "message 0's answer, then the violation");
    assert!(answers[0].0.as_ref().is_ok_and(Vec::is_empty));
    let f = failure(&answers[1].0);
    assert_eq!(f.class, FailureClass::Trap);
    assert!(
        f.message
            .contains("protocol violation during handle: `columns.answer` answered message 0 where message 1 was next"),
        "{f}"
    );

    // An answer for message 1 first: nothing can be pinned, the batch's
    // messages go one per call.
    let skip = batch_guest(dir.path(), "skip", &done(1));
    let mut w = worker(spec(skip)).await;
    assert!(w.handle_batch(&refs).await.is_empty());
    let (r, _) = w.handle(&msgs[0]).await;
    assert_eq!(payloads(&r), ["ok"]);
}

#[tokio::test]
async fn a_batch_that_fails_before_its_first_answer_blames_no_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = batch_guest(dir.path(), "batch-traps", "unreachable");
    let mut w = worker(spec(path)).await;
    let msgs = three();
    let refs: Vec<&Message> = msgs.iter().collect();
    assert!(
        w.handle_batch(&refs).await.is_empty(),
        "a trap before the first answer is pinned on no message"
    );
    for m in &msgs {
        let (r, _) = w.handle(m).await;
        assert_eq!(payloads(&r), ["ok"], "each succeeds alone");
    }
}

/// Collects what `tracing` writes on this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn guest_log_lines_are_escaped_and_bounded_per_message() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut w = worker(spec(common::plugin("hostile"))).await;
    let (r, stats) = w.handle(&Message::new("t", "logflood-1000")).await;
    assert_eq!(payloads(&r), ["logflood-1000"]);
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let kept = text.lines().filter(|l| l.contains("line ")).count();
    println!("{kept} lines kept, {} dropped", stats.log_dropped);
    assert_eq!(kept + stats.log_dropped as usize, 1000);
    assert!(
        (100..400).contains(&kept),
        "about 16 KiB of ~90-byte lines kept: {kept}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("2026-01-01")),
        "a forged line reached the log:\n{text}"
    );
    assert!(text.contains("\\n2026-01-01"), "the break is shown escaped");
    // The next message has its own budget.
    let (_, stats) = w.handle(&Message::new("t", "logflood-10")).await;
    assert_eq!(stats.log_dropped, 0);
    // Sluice's warning about the drops is its own line: said once per
    // instance, however many messages flood.
    for _ in 0..3 {
        let (_, stats) = w.handle(&Message::new("t", "logflood-1000")).await;
        assert!(stats.log_dropped > 0);
    }
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.matches("logged more than").count(), 1, "{text}");
}

/// A batch handler that returns without answering: its messages go one
/// per call, it is not handed a batch for every message, and Sluice says so
/// once rather than once per batch.
#[tokio::test]
async fn a_batch_that_answers_nothing_is_neither_retried_nor_logged_per_batch() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();
    let mut w = worker(spec(batch_guest(dir.path(), "silent", "nop"))).await;
    let msgs = three();
    let refs: Vec<&Message> = msgs.iter().collect();
    for _ in 0..10 {
        assert!(w.handle_batch(&refs).await.is_empty());
        for m in &msgs {
            let (r, _) = w.handle(m).await;
            assert_eq!(payloads(&r), ["ok"]);
        }
    }
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.matches("answered 0 of 3").count(), 1, "{text}");
}

#[tokio::test]
async fn the_network_is_not_granted() {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let port = tcp.local_addr().unwrap().port();
    let udp = std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
    udp.set_nonblocking(true).unwrap();
    let mut w = worker(spec(common::plugin("hostile"))).await;
    let (r, _) = w
        .handle(&Message::new("t", format!("connect-{port}")))
        .await;
    let answer = payloads(&r).remove(0);
    println!("{answer}");
    assert!(answer.starts_with("tcp="), "{answer}");
    assert!(!answer.contains("tcp=connected"), "{answer}");
    assert!(!answer.contains("udp=sent"), "{answer}");
    std::thread::sleep(Duration::from_millis(50));
    assert!(tcp.accept().is_err(), "a connection reached the listener");
    let mut buf = [0u8; 16];
    assert!(udp.recv_from(&mut buf).is_err(), "a datagram arrived");
}

/// A message whose second output names a sink that does not exist has
/// none of its outputs published, on any attempt.
#[tokio::test]
async fn outputs_are_published_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let handle = format!(
        "(call $outputs (i32.const 2) (i32.const 2))
         (i32.store8 (i32.const {s}) (i32.const 1))
         (i32.store (i32.const {p}) (i32.const {name}))
         (i32.store (i32.const {l}) (i32.const 4))
         (call $ok (i32.const 2))",
        s = OUTPUTS + 52,
        p = OUTPUTS + 56,
        l = OUTPUTS + 60,
        name = PAYLOAD + 16,
    );
    let data = format!(r#"(data (i32.const {}) "nope")"#, PAYLOAD + 16);
    let path = Guest {
        handle: Some(&handle),
        funcs: &data,
        ..Default::default()
    }
    .write(dir.path(), "second-to-nowhere");
    let plugin = Plugin::load(&common::engine(), spec(&path)).await.unwrap();
    let total = 5;
    let source = MemorySource::new((0..total).map(|i| Message::new("t", format!("m{i}"))));
    let sink = Arc::new(MemorySink::keeping());
    let dlq = Arc::new(MemorySink::keeping());
    let p = Pipeline::new(Parts {
        publish_window: 16,
        batch: 1,
        publish_timeout: Duration::from_secs(5),
        ..common::memory_parts("all-or-nothing", source, plugin, &sink, Some(dlq.clone()))
    });
    let stats = p.run(std::future::pending()).await.expect("run");
    assert_eq!(
        sink.kept().len(),
        0,
        "no output of a refused message published"
    );
    assert_eq!(dlq.kept().len(), total);
    assert_eq!(stats.dead_lettered as usize, total);
    let last = stats.last_error.unwrap_or_default();
    assert!(last.contains("no sink named \"nope\""), "{last}");
}

/// A guest that logs a lot while nobody reads Sluice's stderr: the pipe
/// fills, and the workers go on (log lines wait in a bounded queue, then are
/// dropped and counted) instead of blocking in the guest's `log` call. Each
/// message logs past its own budget too; both drops show in `/metrics`.
#[test]
fn a_stderr_nobody_reads_does_not_stop_the_handlers() {
    use common::admin::{http, metric};
    use std::io::Read;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let lines = 400;
    let input = "logflood-400\n".repeat(lines);
    let pipeline = file_pipeline(
        dir.path(),
        "loud",
        &input,
        true,
        &common::plugin("hostile"),
        "",
        FILE_SINK,
    );
    let port = common::free_port();
    let mut child = Command::new(common::sluice_bin())
        .arg("run")
        .arg(&pipeline)
        .args(["--admin", &format!("127.0.0.1:{port}")])
        .env("SLUICE_CACHE_DIR", common::cache_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    // 400 messages × 400 lines of ~150 bytes against a 64 KiB pipe.
    let out = dir.path().join("out.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    let count = || {
        std::fs::read_to_string(&out)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    while count() < lines && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let handled = count();
    let (_, metrics) = http(port, "GET", "/metrics", None);
    // Unblock the pipe so the process can end either way.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = child.wait().expect("wait");
    let log = reader.join().unwrap();
    assert_eq!(
        handled, lines,
        "handled {handled} of {lines} while stderr was not read"
    );
    let v = |s: &str| metric(&metrics, s).unwrap_or_else(|| panic!("{s} missing from\n{metrics}"));
    let guest_dropped = v("sluice_guest_log_dropped_total{pipeline=\"loud\"}");
    let process_dropped = v("sluice_log_lines_dropped_total");
    println!("guest lines dropped {guest_dropped}, process log lines dropped {process_dropped}");
    assert!(guest_dropped >= (lines * 200) as f64, "{guest_dropped}");
    assert!(process_dropped > 0.0, "{process_dropped}");
    let tail: Vec<&str> = log.lines().rev().take(5).collect();
    assert!(status.success(), "{status}; log tail: {tail:?}");
}

/// An output header name NATS cannot carry (here with a tab) made the NATS
/// client panic inside the worker, ending the pipeline; it is `rejected`
/// before anything is sent, and the pipeline goes on.
#[test]
fn a_header_name_nats_cannot_carry_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let handle = format!(
        "(call $outputs (i32.const 1) (i32.const 2))
         (i32.store (i32.const {hp}) (i32.const {h}))
         (i32.store (i32.const {hl}) (i32.const 1))
         (i32.store (i32.const {h}) (i32.const {name}))
         (i32.store (i32.const {h4}) (i32.const 4))
         (i32.store (i32.const {h8}) (i32.const {PAYLOAD}))
         (i32.store (i32.const {h12}) (i32.const 2))
         (call $ok (i32.const 1))",
        hp = OUTPUTS + 44,
        hl = OUTPUTS + 48,
        h = PAYLOAD + 64,
        h4 = PAYLOAD + 68,
        h8 = PAYLOAD + 72,
        h12 = PAYLOAD + 76,
        name = PAYLOAD + 32,
    );
    let data = format!(r#"(data (i32.const {}) "b\09ad")"#, PAYLOAD + 32);
    let plugin = Guest {
        handle: Some(&handle),
        funcs: &data,
        ..Default::default()
    }
    .write(dir.path(), "tab-header");
    let lines = 5;
    let input: String = (0..lines).map(|i| format!("m{i}\n")).collect();
    let sink = format!(
        "[sink]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nsubject = \"{}\"\n",
        common::unique("tab-header")
    );
    let pipeline = file_pipeline(dir.path(), "tab-header", &input, false, &plugin, "", &sink);
    let (code, _, stderr) = common::run_sluice(&["run", pipeline.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let dead = std::fs::read_to_string(dir.path().join("dead.log")).unwrap_or_default();
    assert_eq!(dead.lines().count(), lines, "{stderr}");
    for l in dead.lines() {
        assert!(
            l.contains("rejected") && l.contains("NATS header name"),
            "{l}"
        );
    }
}

/// A panic inside a pipeline (a bug: here a native stand-in handler that
/// panics) fails the pipeline instead of leaving it running with a worker
/// fewer, and what it held is handed back unsettled, never acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_worker_fails_its_pipeline() {
    let template = Plugin::load(&common::engine(), spec(common::plugin("echo")))
        .await
        .unwrap();
    let plugin = Plugin::native(
        &template,
        Arc::new(|m: &Message| {
            if m.payload.as_ref() == b"m7" {
                panic!("a bug");
            }
            Ok(vec![Output::new(m.payload.clone())])
        }),
    );
    let source = MemorySource::new((0..20).map(|i| Message::new("t", format!("m{i}"))));
    let settled = source.settled();
    let sink = Arc::new(MemorySink::keeping());
    let p = Pipeline::new(Parts {
        concurrency: 2,
        publish_window: 16,
        batch: 1,
        publish_timeout: Duration::from_secs(5),
        ..common::memory_parts("panics", source, plugin, &sink, None)
    });
    let e = tokio::time::timeout(Duration::from_secs(20), p.run(std::future::pending()))
        .await
        .expect("the pipeline ends")
        .expect_err("a crash is an error");
    assert!(e.to_string().contains("crashed"), "{e}");
    let acked = settled.acked.load(std::sync::atomic::Ordering::Relaxed) as usize;
    assert!(acked < 20, "m7 was never acked: {acked}");
    assert!(
        !sink.kept().iter().any(|r| r.payload.as_ref() == b"m7"),
        "m7 published"
    );
}

/// A `kv-set` with a time to live of u64::MAX ms once overflowed the
/// host's clock arithmetic (a panic in the host call); it now never expires.
#[tokio::test]
async fn a_kv_ttl_too_long_to_represent_never_expires() {
    let dir = tempfile::tempdir().unwrap();
    let handle = format!(
        "(call $kvset (i32.const {PAYLOAD}) (i32.const 2) (i32.const {PAYLOAD}) (i32.const 2)
                      (i32.const 1) (i64.const -1))
         {ONE_OUTPUT}"
    );
    let path = Guest {
        imports: r#"(import "sluice:handler/host@0.1.0" "kv-set" (func $kvset (param i32 i32 i32 i32 i32 i64)))"#,
        handle: Some(&handle),
        ..Default::default()
    }
    .write(dir.path(), "kv-forever");
    let plugin = Plugin::load(&common::engine(), spec(&path)).await.unwrap();
    let mut w = Worker::new(plugin.clone());
    for i in 0..3 {
        let (r, _) = w.handle(&Message::new("t", format!("m{i}"))).await;
        assert_eq!(payloads(&r), ["ok"]);
    }
}

/// `init` runs under the handler's fuel and memory budgets too: a plugin
/// whose `init` loops or grows past the cap is refused, naming the budget.
#[tokio::test]
async fn init_runs_under_fuel_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let looping = Guest {
        init: Some("(loop $l (br $l)) (i32.const 0)"),
        ..Default::default()
    }
    .write(dir.path(), "init-loops");
    let mut s = spec(&looping);
    s.fuel = 1_000_000;
    s.timeout = Duration::from_secs(30);
    let e = Plugin::load(&common::engine(), s)
        .await
        .err()
        .expect("refused");
    assert!(matches!(e, PluginError::Init { .. }), "{e}");
    assert!(e.to_string().contains("ran out of fuel"), "{e}");

    // 256 pages to start with; 2,000 more is past a 64 MiB cap.
    let growing = Guest {
        init: Some("(drop (memory.grow (i32.const 2000))) (i32.const 0)"),
        ..Default::default()
    }
    .write(dir.path(), "init-grows");
    let mut s = spec(&growing);
    s.memory = 64 << 20;
    let e = Plugin::load(&common::engine(), s)
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("memory limit exceeded"), "{e}");
}

/// SIGTERM while a handler sleeps for an hour in WASI: the call ends at its
/// deadline, the message is handed back or settled, and the process exits
/// (it once waited for the sleep, ignoring the signal).
#[test]
fn sigterm_ends_the_process_while_a_handler_sleeps() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = file_pipeline(
        dir.path(),
        "sleepy",
        "sleep-3600000\n",
        true,
        &common::plugin("hostile"),
        "timeout = \"2s\"\n",
        &format!("{FILE_SINK}[retry]\nmax_attempts = 100\ninitial = \"10ms\"\n"),
    );
    let mut proc = common::spawn_sluice(&pipeline);
    // Let the sleep start, then ask the process to stop.
    std::thread::sleep(Duration::from_millis(1500));
    proc.signal("TERM");
    let start = Instant::now();
    let code = proc.wait_timeout(Duration::from_secs(20));
    let log = std::fs::read_to_string(pipeline.with_extension("log")).unwrap_or_default();
    assert_eq!(code, Some(0), "log:\n{log}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "exited {:?} after SIGTERM",
        start.elapsed()
    );
}

/// A file sink to `out.log`, for [`file_pipeline`].
const FILE_SINK: &str = "[sink]\ntype = \"file\"\npath = \"out.log\"\n";

/// Writes `input` to `dir/in.log` and a pipeline `dir/p.toml` that reads
/// it (to its end, or following it) through `plugin` (with `handler` lines added to `[handler]`) into
/// `sink` (TOML sections), dead-lettering to `dead.log`.
fn file_pipeline(
    dir: &std::path::Path,
    name: &str,
    input: &str,
    follow: bool,
    plugin: &std::path::Path,
    handler: &str,
    sink: &str,
) -> std::path::PathBuf {
    std::fs::write(dir.join("in.log"), input).unwrap();
    let pipeline = dir.join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "name = \"{name}\"\n[source]\ntype = \"file\"\npath = \"in.log\"\nfollow = {follow}\n\
             [handler]\nplugin = \"{}\"\n{handler}[dead_letter]\ntype = \"file\"\npath = \"dead.log\"\n{sink}",
            plugin.display()
        ),
    )
    .unwrap();
    pipeline
}
