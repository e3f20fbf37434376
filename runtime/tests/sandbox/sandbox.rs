//! The sandbox: each hostile fixture is classified correctly, and the next
//! message runs on a fresh instance and succeeds.

use crate::common;

use std::time::Duration;

use sluice::engine::{Plugin, PluginError, PluginSpec, Worker};
use sluice::failure::FailureClass;
use sluice::message::Message;

fn spec(name: &str) -> PluginSpec {
    let mut s = PluginSpec::new(common::plugin(name));
    s.fuel = 200_000_000;
    s.timeout = Duration::from_millis(300);
    s.memory = 32 << 20;
    s.max_output_bytes = 1 << 20;
    s
}

/// Runs "before", the trigger, "after" through one worker; returns the
/// trigger's failure class and message, and checks both neighbours echo.
async fn poison(spec: PluginSpec, trigger: &str) -> (FailureClass, String) {
    let engine = common::engine();
    let plugin = Plugin::load(&engine, spec).await.expect("load");
    let mut w = Worker::new(plugin);
    let (before, _) = w.handle(&Message::new("t", "before")).await;
    assert_eq!(before.expect("before succeeds")[0].payload, "before");
    let (bad, _) = w.handle(&Message::new("t", trigger.to_string())).await;
    let failure = bad.expect_err("the trigger must fail");
    let (after, _) = w.handle(&Message::new("t", "after")).await;
    assert_eq!(
        after.expect("a fresh instance handles the next message")[0].payload,
        "after"
    );
    (failure.class, failure.message)
}

/// The guest's panic line in a failure message, "handler panicked at
/// FILE:LINE:COL: TEXT": checks the file and that line and column are
/// numbers, and returns the text.
fn panic_text<'a>(msg: &'a str, file: &str) -> &'a str {
    let line = msg
        .split_once("handler panicked at ")
        .map(|(_, l)| l)
        .unwrap_or_else(|| panic!("no panic line in {msg:?}"));
    let (at, text) = line.split_once(": ").expect("location: message");
    let at: Vec<&str> = at.split(':').collect();
    assert_eq!(at[0], file, "{msg}");
    assert!(
        at.len() == 3
            && at[1..]
                .iter()
                .all(|n| n.parse::<u32>().is_ok_and(|n| n > 0)),
        "line and column in {msg:?}"
    );
    text
}

#[tokio::test]
async fn panic_is_a_trap_with_its_message() {
    let (class, msg) = poison(spec("panic"), "panic").await;
    assert_eq!(class, FailureClass::Trap, "{msg}");
    assert_eq!(
        panic_text(&msg, "panic/src/lib.rs"),
        "the payload asked for a panic"
    );
}

/// A formatted panic message reaches the failure on one line, after where
/// it panicked.
#[tokio::test]
async fn a_formatted_panic_is_one_line_with_its_location() {
    let (class, msg) = poison(spec("hostile"), "crash-7").await;
    assert_eq!(class, FailureClass::Trap, "{msg}");
    assert_eq!(
        panic_text(&msg, "hostile/src/lib.rs"),
        "crash-7 over two lines"
    );
}

/// A fresh instance after a trap starts from the module's initial memory,
/// also when it reuses the trapped instance's pool slot, whose dirty pages
/// are reset in place (PAGEMAP_SCAN) rather than unmapped.
#[tokio::test]
async fn a_fresh_instance_after_a_trap_starts_from_clean_memory() {
    let engine = common::engine();
    let plugin = Plugin::load(&engine, spec("panic")).await.expect("load");
    let mut w = Worker::new(plugin);
    let count = |r: Result<Vec<sluice::message::Output>, sluice::failure::Failure>| {
        String::from_utf8(r.expect("count succeeds")[0].payload.to_vec()).expect("utf-8")
    };
    for round in 0..50 {
        for expected in 1..=3 {
            let (r, _) = w.handle(&Message::new("t", "count")).await;
            assert_eq!(count(r), expected.to_string(), "round {round}");
        }
        let (r, _) = w.handle(&Message::new("t", "panic")).await;
        assert_eq!(r.expect_err("panics").class, FailureClass::Trap);
    }
}

#[tokio::test]
async fn infinite_loop_is_a_timeout_when_fuel_is_plenty() {
    let mut s = spec("infinite-loop");
    s.fuel = u64::MAX / 2;
    s.timeout = Duration::from_millis(100);
    let start = std::time::Instant::now();
    let (class, msg) = poison(s, "loop").await;
    assert_eq!(class, FailureClass::Timeout, "{msg}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn infinite_loop_runs_out_of_fuel_when_fuel_is_small() {
    let mut s = spec("infinite-loop");
    s.fuel = 5_000_000;
    s.timeout = Duration::from_secs(5);
    let (class, msg) = poison(s, "loop").await;
    assert_eq!(class, FailureClass::Fuel, "{msg}");
}

#[tokio::test]
async fn alloc_bomb_hits_the_memory_cap() {
    let (class, msg) = poison(spec("alloc-bomb"), "alloc").await;
    assert_eq!(class, FailureClass::Memory, "{msg}");
    assert!(msg.contains("cap"), "{msg}");
}

#[tokio::test]
async fn deep_recursion_traps() {
    let (class, msg) = poison(spec("deep-recursion"), "recurse").await;
    assert_eq!(class, FailureClass::Trap, "{msg}");
}

#[tokio::test]
async fn long_computation_runs_out_of_fuel() {
    let mut s = spec("fuel-burner");
    s.fuel = 10_000_000;
    s.timeout = Duration::from_secs(5);
    let (class, msg) = poison(s, "burn").await;
    assert_eq!(class, FailureClass::Fuel, "{msg}");
}

#[tokio::test]
async fn enormous_output_is_refused() {
    // Within the memory cap but past max_output_bytes: a bad output (trap).
    let mut s = spec("big-output");
    s.memory = 64 << 20;
    // Lifting 8 MiB in a debug build took past the default 300 ms on a
    // busy machine; this test is about size, not time.
    s.timeout = Duration::from_secs(10);
    s.config.push(("bytes".into(), (8 << 20).to_string()));
    let (class, msg) = poison(s, "big").await;
    assert_eq!(class, FailureClass::Trap, "{msg}");
    assert!(msg.contains("max_output_bytes"), "{msg}");
    // Past the memory cap: the memory class.
    let mut s = spec("big-output");
    s.memory = 16 << 20;
    s.timeout = Duration::from_secs(10);
    s.config.push(("bytes".into(), (32 << 20).to_string()));
    let (class, msg) = poison(s, "big").await;
    assert_eq!(class, FailureClass::Memory, "{msg}");
}

/// WASI is linked but grants nothing: no file is found, no environment
/// variable or argument is passed; stdout takes the bytes and throws them
/// away; the clocks work. Asked for twice in one instance, and again after
/// a trap, so the context WASI works from (built on the first call that
/// needs it) is the same sealed one each time.
#[tokio::test]
async fn wasi_grants_no_files_env_or_args() {
    let engine = common::engine();
    let plugin = Plugin::load(&engine, spec("hostile")).await.expect("load");
    let mut w = Worker::new(plugin);
    let expected =
        "fs=/:NotFound,.:NotFound,/etc/passwd:NotFound;env=0;args=0;stdout=written;clock=1";
    for payload in ["peek", "peek", "panic", "peek"] {
        let (out, _) = w.handle(&Message::new("t", payload)).await;
        if payload == "panic" {
            assert_eq!(out.expect_err("panics").class, FailureClass::Trap);
            continue;
        }
        let out = out.expect("peek answers");
        assert_eq!(String::from_utf8_lossy(&out[0].payload), expected);
    }
}

#[tokio::test]
async fn handler_errors_keep_the_instance() {
    let engine = common::engine();
    let mut s = spec("flaky");
    s.config.push(("fail_times".into(), "2".into()));
    let mut w = Worker::new(Plugin::load(&engine, s).await.unwrap());
    let mut m = Message::new("t", "x");
    for attempt in 1..=2 {
        m.attempt = attempt;
        let f = w.handle(&m).await.0.unwrap_err();
        assert_eq!(f.class, FailureClass::Retriable, "{}", f.message);
    }
    m.attempt = 3;
    assert_eq!(w.handle(&m).await.0.unwrap()[0].payload, "x");

    let mut w = Worker::new(Plugin::load(&engine, spec("fatal-on")).await.unwrap());
    let f = w.handle(&Message::new("t", "bad-1")).await.0.unwrap_err();
    assert_eq!(f.class, FailureClass::Fatal);
    assert!(f.message.contains("bad-1"));
}

#[tokio::test]
async fn fuel_is_measured_per_call() {
    let engine = common::engine();
    let mut w = Worker::new(Plugin::load(&engine, spec("echo")).await.unwrap());
    let (r, cost) = w.handle(&Message::new("t", "hello")).await;
    assert!(r.is_ok());
    assert!(cost.fuel_used > 0 && cost.fuel_used < 1_000_000, "{cost:?}");
}

#[tokio::test]
async fn kv_store_is_shared_and_survives_a_fresh_instance() {
    let engine = common::engine();
    let mut w = Worker::new(Plugin::load(&engine, spec("kv-counter")).await.unwrap());
    let mut m = Message::new("t", "p");
    m.key = Some("dev-1".into());
    for n in 1..=3 {
        let out = w.handle(&m).await.0.unwrap();
        assert_eq!(out[0].payload, format!("dev-1={n}"));
    }
}

#[tokio::test]
async fn bad_plugins_say_what_is_wrong() {
    let engine = common::engine();
    let dir = tempfile::tempdir().unwrap();
    // A component that exports nothing.
    let empty = dir.path().join("empty.wasm");
    std::fs::write(&empty, wat::parse_str("(component)").unwrap()).unwrap();
    let e = Plugin::load(&engine, PluginSpec::new(&empty))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, PluginError::World { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("missing export `init`") && text.contains("missing export `handle`"),
        "{text}"
    );
    // A core module instead of a component.
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, wat::parse_str("(module)").unwrap()).unwrap();
    let e = Plugin::load(&engine, PluginSpec::new(&core))
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("core module"), "{e}");
    // Not wasm at all, and a missing file.
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"hello").unwrap();
    assert!(Plugin::load(&engine, PluginSpec::new(&junk)).await.is_err());
    let e = Plugin::load(&engine, PluginSpec::new(dir.path().join("nope.wasm")))
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("cannot read"), "{e}");
}

#[tokio::test]
async fn init_failure_refuses_the_plugin() {
    let engine = common::engine();
    let mut s = spec("log-parser");
    s.config.push(("min_level".into(), "loud".into()));
    let e = Plugin::load(&engine, s)
        .await
        .err()
        .expect("bad config refused");
    assert!(matches!(e, PluginError::Init { .. }), "{e}");
}

#[tokio::test]
async fn compiled_components_come_from_the_disk_cache() {
    let dir = tempfile::tempdir().unwrap();
    let opts = sluice::engine::EngineOptions {
        cache_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let e1 = sluice::engine::Engine::new(opts.clone()).unwrap();
    let p1 = Plugin::load(&e1, spec("echo")).await.unwrap();
    assert!(!p1.from_cache());
    let e2 = sluice::engine::Engine::new(opts).unwrap();
    let p2 = Plugin::load(&e2, spec("echo")).await.unwrap();
    assert!(p2.from_cache(), "second engine loads the compiled artifact");
    assert_eq!(p1.digest(), p2.digest());
}

/// A cache entry is native code run as it is: one that another user could
/// have written (a folder or file others may write) is not read; the plugin
/// is compiled again instead.
#[tokio::test]
async fn a_cache_others_can_write_is_not_trusted() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let opts = sluice::engine::EngineOptions {
        cache_dir: Some(cache.clone()),
        ..Default::default()
    };
    let load = || async {
        let e = sluice::engine::Engine::new(opts.clone()).unwrap();
        Plugin::load(&e, spec("echo")).await.unwrap().from_cache()
    };
    assert!(!load().await, "the first load compiles");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache), 0o700, "the cache folder is private");
    let entry = std::fs::read_dir(&cache)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(mode(&entry), 0o600, "a cache entry is private");
    assert!(load().await, "a private cache is read");

    let chmod = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    chmod(&entry, 0o666);
    assert!(!load().await, "an entry anyone may write is not read");
    chmod(&entry, 0o600);
    chmod(&cache, 0o777);
    assert!(!load().await, "a folder anyone may write is not read");
    chmod(&cache, 0o700);
    let elsewhere = dir.path().join("elsewhere.cwasm");
    std::fs::rename(&entry, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &entry).unwrap();
    assert!(
        !load().await,
        "a symbolic link is not followed into native code"
    );
}

/// A plugin's names (imports, exports) are untrusted text too: a load error
/// that names them escapes control characters and stays bounded, whatever
/// the module calls its imports.
#[tokio::test]
async fn load_errors_neither_forge_log_lines_nor_flood_the_log() {
    let forged = "\\0a2026-12-06T00:00:00.000000Z ERROR sluice::pipeline: pipeline=\\22prod\\22 forged\\1b[2J";
    let mut imports = format!("(import \"evil{forged}\" \"x\" (func))\n");
    for i in 0..5_000 {
        imports.push_str(&format!("(import \"{i:0>200}\" \"y\" (func))\n"));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = common::guest::Guest {
        imports: &imports,
        funcs: &format!("(func (export \"shown{forged}\"))"),
        ..Default::default()
    }
    .write(dir.path(), "names");
    let e = Plugin::load(&common::engine(), PluginSpec::new(&path))
        .await
        .err()
        .expect("refused: it imports what the host does not provide");
    let text = e.to_string();
    println!("{} bytes: {text}", text.len());
    assert!(matches!(e, PluginError::World { .. }), "{e}");
    assert!(text.contains("evil\\n2026"), "the import is named, escaped");
    assert!(!text.chars().any(char::is_control), "{text}");
    assert!(text.len() < 8 << 10, "a load error of {} bytes", text.len());
}

/// A core module's start function runs while the instance is made: under
/// the handler's budgets, so one that never returns refuses the plugin.
#[tokio::test]
async fn a_start_function_that_never_returns_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::guest::Guest {
        funcs: "(func $spin (loop $l (br $l))) (start $spin)",
        ..Default::default()
    }
    .write(dir.path(), "start-spins");
    let mut s = PluginSpec::new(&path);
    s.timeout = Duration::from_millis(200);
    let started = std::time::Instant::now();
    let loaded = tokio::time::timeout(Duration::from_secs(20), Plugin::load(&common::engine(), s))
        .await
        .expect("loading ends");
    let e = loaded.err().expect("refused");
    println!("refused after {:?}: {e}", started.elapsed());
    assert!(matches!(e, PluginError::Init { .. }), "{e}");
    assert!(
        e.to_string().contains("timeout") || e.to_string().contains("fuel"),
        "{e}"
    );
}

/// Host calls at the deepest recursion a guest reaches: `log`, a WASI
/// clock read through the adapter, and `kv-get`, whose answer the host
/// lowers by calling back into the guest's allocator there. The guest's
/// stack runs out as a `trap`, never the host's.
#[tokio::test]
async fn host_calls_at_the_deepest_recursion_are_a_stack_overflow_trap() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::guest::PAYLOAD;
    let funcs = format!(
        r#"(func $deep
             (call $log (i32.const 2) (i32.const {p}) (i32.const 2))
             (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 64)))
             (call $kv_get (i32.const {p}) (i32.const 2) (i32.const 96))
             (call $deep))"#
    );
    let handle = format!(
        r#"(call $kv_set (i32.const {p}) (i32.const 2) (i32.const {p}) (i32.const 2) (i32.const 0) (i64.const 0))
           (if (i32.eq (local.get 6) (i32.const 4)) (then (call $deep)))
           {}"#,
        common::guest::ONE_OUTPUT
    );
    let path = common::guest::Guest {
        imports: r#"(import "sluice:handler/host@0.1.0" "kv-get" (func $kv_get (param i32 i32 i32)))
            (import "sluice:handler/host@0.1.0" "kv-set" (func $kv_set (param i32 i32 i32 i32 i32 i64)))
            (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))"#,
        handle: Some(&handle),
        funcs: &funcs,
        ..Default::default()
    }
    .write(dir.path(), "deep-host-calls");
    let mut s = PluginSpec::new(&path);
    s.timeout = Duration::from_secs(20);
    s.fuel = u64::MAX / 4;
    let mut w = Worker::new(Plugin::load(&common::engine(), s).await.expect("load"));
    // A payload of 4 bytes recurses; the others answer.
    let (r, _) = w.handle(&Message::new("t", "deep")).await;
    let f = r.expect_err("the stack runs out");
    assert_eq!(f.class, FailureClass::Trap, "{f}");
    assert!(f.message.contains("stack overflow"), "{f}");
    let (r, _) = w.handle(&Message::new("t", "after")).await;
    assert_eq!(r.expect("a fresh instance")[0].payload, "ok");
}

/// Memory grown inside a host call: `kv-get` lowers its 1 MiB answer
/// through the guest's allocator, which grows the memory past the cap. The
/// failure is `memory`, as for a growth in wasm code, and the next message
/// gets a fresh instance.
#[tokio::test]
async fn memory_grown_past_the_cap_inside_a_host_call_is_a_memory_failure() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::guest::PAYLOAD;
    // A 1 MiB value under key "ok"; then, for a 4-byte payload, the bump
    // heap moved to just under the 64 MiB cap before reading it back.
    let handle = format!(
        r#"(call $kv_set (i32.const {p}) (i32.const 2) (i32.const 0) (i32.const 1048576) (i32.const 0) (i64.const 0))
           (if (i32.eq (local.get 6) (i32.const 4)) (then
             (drop (memory.grow (i32.const 750)))
             (global.set $bump (i32.const 66060288))
             (call $kv_get (i32.const {p}) (i32.const 2) (i32.const 96))))
           {}"#,
        common::guest::ONE_OUTPUT
    );
    let path = common::guest::Guest {
        imports: r#"(import "sluice:handler/host@0.1.0" "kv-get" (func $kv_get (param i32 i32 i32)))
            (import "sluice:handler/host@0.1.0" "kv-set" (func $kv_set (param i32 i32 i32 i32 i32 i64)))"#,
        handle: Some(&handle),
        ..Default::default()
    }
    .write(dir.path(), "grow-in-host-call");
    let mut s = PluginSpec::new(&path);
    s.memory = 64 << 20;
    let mut w = Worker::new(Plugin::load(&common::engine(), s).await.expect("load"));
    let (r, _) = w.handle(&Message::new("t", "grow")).await;
    let f = r.expect_err("the answer does not fit under the cap");
    assert_eq!(f.class, FailureClass::Memory, "{f}");
    let (r, _) = w.handle(&Message::new("t", "after")).await;
    assert_eq!(r.expect("a fresh instance")[0].payload, "ok");
}
