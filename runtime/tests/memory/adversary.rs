//! Adversary: new instances of the attack classes the hostile-guest tests
//! cover (host calls that cannot be interrupted, log budgets, host memory a
//! guest can pin, plugin files that are not files). Each test asserts the
//! promise of docs/handlers.md "What a handler can cost"; a failing test is a hole.
//! Memory figures are read from this process's RSS: the tests that measure
//! it (or allocate much) take [`SERIAL`] so that they never overlap.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::guest::{Guest, OUTPUTS, PAYLOAD};
use sluice::engine::{Plugin, PluginSpec, Worker};
use sluice::failure::FailureClass;
use sluice::message::Message;

/// The bound a whole test may take before it counts as a hang.
const TEST_LIMIT: Duration = Duration::from_secs(120);

/// How far past its deadline a call may end (docs/failures.md: 20 ms; the rest is a
/// busy debug build's slack, as in hostile_guests.rs).
const PAST_DEADLINE: Duration = Duration::from_millis(100);

use crate::MEASURING as SERIAL;

async fn load(spec: PluginSpec) -> Worker {
    let plugin = Plugin::load(&common::engine(), spec)
        .await
        .unwrap_or_else(|e| panic!("load: {e}"));
    Worker::new(plugin)
}

/// Counts the tracing events the guest's `log` produced (target `sluice::guest`).
struct CountGuestLines(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountGuestLines {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if e.metadata().target() == "sluice::guest" {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// "a message may log 16 KiB, further lines are dropped and counted", each
/// line counted 64 bytes beyond its own: 100,000 empty or 1-byte lines in
/// one message reach the log as at most 256 lines (+1 warning), the rest
/// dropped and counted. (An empty line once cost nothing against the budget.)
#[tokio::test]
async fn tiny_log_lines_are_bounded_per_message() {
    for len in [0, 1] {
        tiny_log_lines(len).await;
    }
}

async fn tiny_log_lines(len: u32) {
    use tracing_subscriber::layer::SubscriberExt;
    let lines = Arc::new(AtomicUsize::new(0));
    let subscriber = tracing_subscriber::registry().with(CountGuestLines(lines.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);

    const N: u32 = 100_000;
    let handle = format!(
        "(local $i i32)
         (block $end (loop $next
           (br_if $end (i32.ge_u (local.get $i) (i32.const {N})))
           (call $log (i32.const 2) (i32.const {PAYLOAD}) (i32.const {len}))
           (local.set $i (i32.add (local.get $i) (i32.const 1)))
           (br $next)))
         (call $outputs (i32.const 1) (i32.const 2)) (call $ok (i32.const 1))"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = Guest {
        handle: Some(&handle),
        ..Default::default()
    }
    .write(dir.path(), "tiny_lines");
    let mut spec = PluginSpec::new(&path);
    spec.timeout = Duration::from_secs(20);
    let mut w = load(spec).await;
    let before = lines.load(Ordering::Relaxed);
    let (r, stats) = tokio::time::timeout(TEST_LIMIT, w.handle(&Message::new("t", "x")))
        .await
        .expect("hang");
    let logged = lines.load(Ordering::Relaxed) - before;
    println!(
        "{N} log calls of {len} byte(s): {logged} lines reached the log, {} counted as dropped, took {:?}",
        stats.log_dropped, stats.elapsed
    );
    assert!(r.is_ok(), "{:?}", r.err());
    assert!(
        logged <= 256 + 1,
        "{logged} guest log lines for one message"
    );
    assert_eq!(logged + stats.log_dropped as usize, N as usize + 1);
}

/// WASI `random_get` (preview 1 → `wasi:random.get-random-bytes`) is a
/// synchronous host call: the host makes every byte asked for before the
/// deadline can be looked at. A request past 64 KiB is refused (`trap`,
/// naming the limit); a loop of the largest allowed requests with a 10 ms
/// timeout still ends within the bound past it, as a `timeout`.
#[tokio::test]
async fn a_huge_random_get_ends_at_the_deadline() {
    for (len, class) in [
        (64 << 20, FailureClass::Trap),
        (64 << 10, FailureClass::Timeout),
    ] {
        random_get_loop(len, class).await;
    }
}

async fn random_get_loop(len: u32, class: FailureClass) {
    let _serial = SERIAL.lock().await;
    let handle = format!(
        "(local $i i32)
         (block $end (loop $next
           (br_if $end (i32.ge_u (local.get $i) (i32.const 1000000)))
           (drop (call $random_get (i32.const 0) (i32.const {len})))
           (local.set $i (i32.add (local.get $i) (i32.const 1)))
           (br $next)))
         (call $outputs (i32.const 1) (i32.const 2)) (call $ok (i32.const 1))"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = Guest {
        handle: Some(&handle),
        imports: r#"(import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))"#,
        // Room for 64 MiB at address 0: grow to 65 MiB first.
        init: Some(
            "(drop (memory.grow (i32.const 784)))
             (i32.store8 (i32.const 0) (i32.const 0)) (i32.const 0)",
        ),
        ..Default::default()
    }
    .write(dir.path(), "random");
    let mut spec = PluginSpec::new(&path);
    spec.memory = 80 << 20;
    spec.timeout = Duration::from_millis(10);
    let mut w = load(spec).await;
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
    let before = common::reset_peak_rss();
    let start = Instant::now();
    let (r, _) = tokio::time::timeout(TEST_LIMIT, w.handle(&Message::new("t", "x")))
        .await
        .expect("hang");
    let took = start.elapsed();
    let grew = common::peak_rss().saturating_sub(before);
    let f = r.expect_err("must not finish 1000 × 64 MiB within 10 ms");
    println!(
        "random_get({len} bytes) loop, timeout 10ms: ended after {took:?} as {:?}; host peak RSS +{} MiB",
        f.class,
        grew >> 20
    );
    assert_eq!(f.class, class, "{f}");
    if class == FailureClass::Trap {
        assert!(f.message.contains("exceeds limit 65536"), "{f}");
    }
    assert!(
        took < Duration::from_millis(10) + PAST_DEADLINE,
        "ran {took:?} past a 10 ms timeout inside random_get"
    );
}

/// The same host call with a guest whose memory cap (16 MiB + the adapter's
/// pages) cannot hold the answer: the host still makes all 64 MiB before
/// lowering fails. What one guest call makes the host allocate should not
/// exceed what its budgets allow (memory cap / hostcall budget).
#[tokio::test]
async fn random_get_does_not_allocate_past_the_guest_memory_cap() {
    let _serial = SERIAL.lock().await;
    let handle = format!(
        "(drop (call $random_get (i32.const 0) (i32.const {len})))
         (call $outputs (i32.const 1) (i32.const 2)) (call $ok (i32.const 1))",
        len = 64 << 20
    );
    let dir = tempfile::tempdir().unwrap();
    let path = Guest {
        handle: Some(&handle),
        imports: r#"(import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))"#,
        ..Default::default()
    }
    .write(dir.path(), "random_small");
    let mut spec = PluginSpec::new(&path);
    spec.memory = 17 << 20;
    spec.max_output_bytes = 64 << 10;
    spec.kv_max_bytes = 64 << 10;
    spec.timeout = Duration::from_secs(5);
    let mut w = load(spec).await;
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
    let before = common::reset_peak_rss();
    let (r, _) = tokio::time::timeout(TEST_LIMIT, w.handle(&Message::new("t", "x")))
        .await
        .expect("hang");
    let grew = common::peak_rss().saturating_sub(before);
    println!(
        "random_get(64 MiB) with a 17 MiB memory cap: {:?}; host peak RSS +{} MiB",
        r.as_ref().err().map(|f| f.to_string()),
        grew >> 20
    );
    assert!(r.is_err(), "64 MiB cannot fit in 17 MiB");
    assert!(
        grew < 32 << 20,
        "the host allocated {} MiB for a guest capped at 17 MiB of memory and ~1 MiB of hostcall budget",
        grew >> 20
    );
}

/// `columns.answer` called from `init` (not in a batch) is a protocol
/// violation: the plugin is refused, the host does not panic.
#[tokio::test]
async fn done_from_init_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = Guest {
        init: Some(&format!(
            "(call $outputs (i32.const 1) (i32.const 2))
             (call $done (i32.const 0) (i32.const 0) (i32.const {OUTPUTS}) (i32.const 1) (i32.const 0))
             (i32.store8 (i32.const 0) (i32.const 0)) (i32.const 0)"
        )),
        batch: Some("(nop)"),
        ..Default::default()
    }
    .write(dir.path(), "done_in_init");
    let r = tokio::time::timeout(
        TEST_LIMIT,
        Plugin::load(&common::engine(), PluginSpec::new(&path)),
    )
    .await
    .expect("hang");
    let e = r.err().expect("refused");
    assert!(e.to_string().contains("outside `handle-batch`"), "{e}");
}

/// `columns.answer` called from `handle` (a single-message call of a batch
/// handler): a trap of that message, not a panic or an answer.
#[tokio::test]
async fn done_from_handle_is_a_trap() {
    let dir = tempfile::tempdir().unwrap();
    let path = Guest {
        handle: Some(&format!(
            "(call $outputs (i32.const 1) (i32.const 2))
             (call $done (i32.const 0) (i32.const 0) (i32.const {OUTPUTS}) (i32.const 1) (i32.const 0))
             (call $ok (i32.const 1))"
        )),
        batch: Some("(nop)"),
        ..Default::default()
    }
    .write(dir.path(), "done_in_handle");
    let mut w = load(PluginSpec::new(&path)).await;
    let (r, _) = tokio::time::timeout(TEST_LIMIT, w.handle(&Message::new("t", "x")))
        .await
        .expect("hang");
    let f = r.expect_err("trap");
    assert_eq!(f.class, FailureClass::Trap, "{f}");
}

/// A `fatal(string)` of 12 MiB (inside the default hostcall budget): the
/// failure text is cut to ~2 KiB and escaped.
#[tokio::test]
async fn a_huge_handler_error_is_cut() {
    let _serial = SERIAL.lock().await;
    let len = 12u32 << 20;
    let handle = format!(
        "(memory.fill (i32.const {PAYLOAD}) (i32.const 10) (i32.const {len}))
         (i32.store8 (i32.const 16) (i32.const 1))
         (i32.store8 offset=4 (i32.const 16) (i32.const 1))
         (i32.store offset=8 (i32.const 16) (i32.const {PAYLOAD}))
         (i32.store offset=12 (i32.const 16) (i32.const {len}))
         (i32.const 16)"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = Guest {
        handle: Some(&handle),
        init: Some(
            "(drop (memory.grow (i32.const 256)))
             (i32.store8 (i32.const 0) (i32.const 0)) (i32.const 0)",
        ),
        ..Default::default()
    }
    .write(dir.path(), "huge_error");
    let mut w = load(PluginSpec::new(&path)).await;
    let (r, _) = tokio::time::timeout(TEST_LIMIT, w.handle(&Message::new("t", "x")))
        .await
        .expect("hang");
    let f = r.expect_err("fatal");
    assert_eq!(f.class, FailureClass::Fatal, "{f}");
    assert!(f.message.len() < 4096, "{} bytes", f.message.len());
    assert!(!f.message.contains('\n'));
}

/// Runs `sluice <args>` under `ulimit -d` (2 GiB of data: a guard so a
/// hole cannot take the machine's memory), killed after `limit`. Returns
/// (exit status text, stderr, how long it ran, whether it was killed).
fn sluice_limited(args: &[&str], limit: Duration) -> (String, String, Duration, bool) {
    use std::process::{Command, Stdio};
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg("ulimit -d 2097152; exec /usr/bin/time -f 'MAXRSS %M' \"$0\" \"$@\"")
        .arg(common::sluice_bin())
        .args(args)
        .env("SLUICE_CACHE_DIR", common::cache_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // A group of its own, so that a kill reaches `time`'s child too.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn sluice");
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let mut killed = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > limit {
            let pgid = i32::try_from(child.id()).expect("pid");
            assert!(pgid > 1);
            // SAFETY: signals only the group this test made for the child.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.kill();
            killed = true;
            break child.wait().expect("reap");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = start.elapsed();
    (
        format!("{status}"),
        reader.join().unwrap_or_default(),
        took,
        killed,
    )
}

fn tail(s: &str) -> &str {
    let mut start = s.len().saturating_sub(600);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The child's peak RSS in MiB, from `/usr/bin/time`'s last line.
fn max_rss_mib(stderr: &str) -> u64 {
    stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("MAXRSS "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(0, |kib| kib >> 10)
}

/// `handler.plugin = "/dev/zero"`: the plugin is read whole into memory
/// before anything looks at it, so reading an endless file grows the host
/// until an allocation fails. It must be refused, not crash the process.
#[test]
fn a_plugin_that_is_dev_zero_is_refused() {
    let (status, err, took, killed) = sluice_limited(
        &["call", "--plugin", "/dev/zero", "--payload", "x"],
        Duration::from_secs(60),
    );
    let peak = max_rss_mib(&err);
    println!(
        "/dev/zero as plugin: {status} after {took:?}, killed={killed}, peak RSS {peak} MiB\n{}",
        tail(&err)
    );
    assert!(!killed, "hung reading /dev/zero");
    assert!(
        status.contains("exit status: 1") || status.contains("exit status: 2"),
        "sluice crashed ({status}) instead of refusing /dev/zero: {}",
        tail(&err)
    );
    // Refused for what it is, not because the 2 GiB guard stopped the read.
    assert!(
        !err.contains("out of memory") && peak < 256,
        "/dev/zero was read until memory ran out (peak RSS {peak} MiB under a 2 GiB guard)"
    );
}

/// A plugin file that is a FIFO: opening it blocks until a writer comes,
/// so the load (on an async worker thread) never returns.
#[test]
fn a_plugin_that_is_a_fifo_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("handler.wasm");
    let ok = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(ok.success());
    for plugin in [fifo.clone(), dir.path().to_path_buf()] {
        let (status, err, took, killed) = sluice_limited(
            &[
                "call",
                "--plugin",
                plugin.to_str().unwrap(),
                "--payload",
                "x",
            ],
            Duration::from_secs(15),
        );
        println!(
            "FIFO {} as plugin: {status} after {took:?}, killed={killed}\n{}",
            plugin.display(),
            tail(&err)
        );
        assert!(
            !killed,
            "`sluice call` hung for {took:?} on a FIFO plugin ({})",
            plugin.display()
        );
    }
}

/// A plugin file of 768 MiB (sparse: it costs no disk) starting with the wasm
/// magic: read whole into memory (and copied for the compiler child) before
/// any bound applies. It must be refused without the host allocating it.
#[test]
fn a_huge_plugin_file_is_refused_without_reading_it_whole() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.wasm");
    {
        let f = std::fs::File::create(&big).unwrap();
        use std::io::Write;
        (&f).write_all(b"\0asm\x01\0\0\0").unwrap();
        f.set_len(768 << 20).unwrap();
    }
    let (status, err, took, killed) = sluice_limited(
        &["call", "--plugin", big.to_str().unwrap(), "--payload", "x"],
        Duration::from_secs(90),
    );
    let peak = max_rss_mib(&err);
    println!(
        "768 MiB sparse plugin: {status} after {took:?}, killed={killed}, peak RSS {peak} MiB\n{}",
        tail(&err)
    );
    assert!(!killed, "hung on a 768 MiB plugin");
    assert!(
        status.contains("exit status: 1") || status.contains("exit status: 2"),
        "sluice crashed ({status}) on a 768 MiB plugin: {}",
        tail(&err)
    );
    assert!(
        peak < 256,
        "the host grew to {peak} MiB to refuse a 768 MiB plugin file"
    );
}

/// A component (built here with `wit-component` from a core module, as any
/// tool chain would) whose world also imports `wasi:clocks/monotonic-clock`.
fn component_with_clock(
    dir: &std::path::Path,
    guest: &Guest<'_>,
    name: &str,
) -> std::path::PathBuf {
    const HANDLER_WIT: &str = include_str!("../../../guest-sdk/wit/handler.wit");
    let mut resolve = wit_parser::Resolve::default();
    resolve
        .push_str(
            "poll.wit",
            "package wasi:io@0.2.0;\ninterface poll { resource pollable { ready: func() -> bool; } }\n",
        )
        .unwrap();
    resolve
        .push_str(
            "clocks.wit",
            "package wasi:clocks@0.2.0;\ninterface monotonic-clock {\n use wasi:io/poll@0.2.0.{pollable};\n subscribe-duration: func(when: u64) -> pollable;\n}\n",
        )
        .unwrap();
    resolve.push_str("handler.wit", HANDLER_WIT).unwrap();
    let pkg = resolve
        .push_str(
            "leak.wit",
            "package adv:leak;\nworld leak {\n import wasi:clocks/monotonic-clock@0.2.0;\n include sluice:handler/handler@0.1.0;\n}\n",
        )
        .unwrap();
    let world = resolve.select_world(&[pkg], Some("leak")).unwrap();
    let mut module = wat::parse_str(guest.wat()).unwrap_or_else(|e| panic!("{name}: {e}"));
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .unwrap();
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .unwrap()
        .encode()
        .unwrap();
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, component).unwrap();
    path
}

/// A guest that never drops the pollables it asks for keeps them, and their
/// host-side entries, across messages: its instance is reused after each
/// successful message. wasmtime caps live handles per store at 100,000, so
/// the host memory pinned is bounded per instance, but not by the guest's
/// memory cap. Measures what 90,000 leaked pollables cost the host and holds
/// it under the guest's own memory cap (17 MiB).
#[tokio::test]
async fn leaked_wasi_pollables_do_not_grow_the_host_past_the_memory_cap() {
    let _serial = SERIAL.lock().await;
    let handle = "(local $i i32)
         (block $end (loop $next
           (br_if $end (i32.ge_u (local.get $i) (i32.const 10000)))
           (drop (call $sub (i64.const 1000000000000)))
           (local.set $i (i32.add (local.get $i) (i32.const 1)))
           (br $next)))
         (call $outputs (i32.const 1) (i32.const 2)) (call $ok (i32.const 1))";
    let dir = tempfile::tempdir().unwrap();
    let guest = Guest {
        handle: Some(handle),
        imports: r#"(import "wasi:clocks/monotonic-clock@0.2.0" "subscribe-duration" (func $sub (param i64) (result i32)))"#,
        ..Default::default()
    };
    let path = component_with_clock(dir.path(), &guest, "leak");
    let mut spec = PluginSpec::new(&path);
    spec.memory = 17 << 20;
    spec.timeout = Duration::from_secs(10);
    let mut w = load(spec).await;
    let (warm, _) = w.handle(&Message::new("t", "warm")).await;
    assert!(warm.is_ok(), "{:?}", warm.err());
    let before = common::rss();
    let mut classes = Vec::new();
    let started = Instant::now();
    for i in 0..12 {
        let (r, _) =
            tokio::time::timeout(TEST_LIMIT, w.handle(&Message::new("t", format!("m{i}"))))
                .await
                .expect("hang");
        classes.push(
            r.as_ref()
                .map(|_| "ok".to_string())
                .unwrap_or_else(|f| f.to_string()),
        );
        if i == 7 {
            let grew = common::rss().saturating_sub(before);
            println!(
                "90,000 leaked pollables in one instance: host RSS +{} MiB ({} B each)",
                grew >> 20,
                grew / 90_000
            );
        }
    }
    println!("took {:?}; answers: {classes:?}", started.elapsed());
    let grew = common::rss().saturating_sub(before);
    assert!(
        grew < 17 << 20,
        "leaked handles pinned {} MiB of host memory for a guest capped at 17 MiB",
        grew >> 20
    );
}
