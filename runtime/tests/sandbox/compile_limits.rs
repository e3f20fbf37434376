//! Compiling an untrusted plugin is bounded by `handler.compile_timeout` and
//! `handler.compile_memory` (engine/compile.rs): `sluice check` and a hot
//! swap refuse a compile bomb with the limit named, the running version
//! keeps serving, and a normal plugin still loads through the compiler child
//! and the disk cache.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::admin::{pipeline, spawn, wait_until};
use common::bomb;
use sluice::engine::{Compiler, Engine, EngineOptions, Plugin, PluginError, PluginSpec, Worker};
use sluice::message::Message;

/// A pipeline reading `<d>/<name>.in` (followed) through `plugin` into `<d>/<name>.out`.
fn pipeline_toml(d: &Path, name: &str, plugin: &Path, handler_extra: &str) -> String {
    format!(
        r#"name = "{name}"
[source]
type = "file"
path = "{d}/{name}.in"
follow = true
[handler]
plugin = "{plugin}"
config = {{ tag = "old" }}
{handler_extra}
[sink]
type = "file"
path = "{d}/{name}.out"
[dead_letter]
type = "file"
path = "{d}/{name}.dlq"
"#,
        d = d.display(),
        plugin = plugin.display(),
    )
}

/// Runs `sluice check` on one pipeline whose plugin is `wasm`: (exit code,
/// stderr, how long it took).
fn check(wasm: &[u8], handler_extra: &str) -> (i32, String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("bomb.wasm");
    std::fs::write(&plugin, wasm).unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        pipeline_toml(dir.path(), "p", &plugin, handler_extra),
    )
    .unwrap();
    let started = Instant::now();
    let (code, _, stderr) = common::run_sluice(&["check", file.to_str().unwrap()]);
    (code, stderr, started.elapsed())
}

#[test]
fn check_refuses_a_plugin_slower_to_compile_than_compile_timeout() {
    let (code, stderr, took) = check(&bomb::component(bomb::SLOW), r#"compile_timeout = "1s""#);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("p.toml:7:10: handler.plugin: plugin ")
            && stderr.contains(
                "refused: compiling the plugin took longer than handler.compile_timeout = 1s"
            ),
        "{stderr}"
    );
    // The compiler was stopped at the limit, not waited for.
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[test]
fn check_refuses_a_plugin_needing_more_memory_to_compile_than_compile_memory() {
    let (code, stderr, took) = check(
        &bomb::component(bomb::HEAVY),
        r#"compile_memory = "256MiB""#,
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(
            "refused: compiling the plugin needed more memory than handler.compile_memory = 256MiB"
        ),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

/// A bomb deployed over a running plugin is refused, the limit named in
/// `last_reload_error`, and the old version keeps handling messages. Two
/// pipelines, one limit each, so the other limit never races it.
#[test]
fn hot_swap_to_a_compile_bomb_keeps_the_old_version() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pd = d.join("pipelines");
    std::fs::create_dir_all(&pd).unwrap();
    let wasm = |name: &str| d.join(format!("{name}.wasm"));
    let out =
        |name: &str| std::fs::read_to_string(d.join(format!("{name}.out"))).unwrap_or_default();
    let append = |name: &str, line: &str| {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join(format!("{name}.in")))
            .unwrap();
        writeln!(f, "{line}").unwrap();
    };
    let limits = [
        ("mem", "compile_memory = \"256MiB\""),
        ("time", "compile_timeout = \"3s\""),
    ];
    for (name, limit) in limits {
        std::fs::copy(common::plugin("tagger"), wasm(name)).unwrap();
        append(name, "l1");
        std::fs::write(
            pd.join(format!("{name}.toml")),
            pipeline_toml(d, name, &wasm(name), limit),
        )
        .unwrap();
    }
    let port = common::free_port();
    let log = d.join("sluice.log");
    let mut proc = spawn(&[pd.to_str().unwrap()], port, &log);
    wait_until("the pipelines to run", Duration::from_secs(60), || {
        out("mem") == "old:l1\n" && out("time") == "old:l1\n"
    });

    let deploy = |name: &str, bytes: &[u8]| {
        let tmp = d.join(format!("{name}.tmp"));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, wasm(name)).unwrap();
    };
    deploy("mem", &bomb::component(bomb::HEAVY));
    deploy("time", &bomb::component(bomb::SLOW));
    for (name, refusal) in [
        (
            "mem",
            "refused: compiling the plugin needed more memory than handler.compile_memory = 256MiB",
        ),
        (
            "time",
            "refused: compiling the plugin took longer than handler.compile_timeout = 3s",
        ),
    ] {
        wait_until(
            &format!("the bomb of {name} to be refused"),
            Duration::from_secs(30),
            || {
                pipeline(port, name).is_some_and(|p| {
                    p["reloads"]["failed"] == 1
                        && p["last_reload_error"]
                            .as_str()
                            .is_some_and(|e| e.contains(refusal))
                })
            },
        );
        append(name, "l2");
        wait_until(
            &format!("the old version of {name} to handle l2"),
            Duration::from_secs(30),
            || out(name) == "old:l1\nold:l2\n",
        );
        let p = pipeline(port, name).unwrap();
        assert_eq!(p["state"], "running");
        assert_eq!(p["reloads"]["ok"], 0);
    }

    proc.signal("TERM");
    assert_eq!(
        proc.wait_timeout(Duration::from_secs(30)),
        Some(0),
        "log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

fn child_engine(cache: &Path, pooling: bool) -> Engine {
    Engine::new(EngineOptions {
        cache_dir: Some(cache.to_path_buf()),
        pooling,
        compiler: Compiler::Child {
            exe: common::sluice_bin(),
        },
        ..EngineOptions::default()
    })
    .expect("engine")
}

async fn echoes(plugin: Plugin) {
    let mut w = Worker::new(plugin);
    let (result, _) = w.handle(&Message::new("t", b"hi".to_vec())).await;
    let outputs = result.expect("echo handles the message");
    assert_eq!(outputs.len(), 1);
    assert_eq!(&outputs[0].payload[..], b"hi");
}

/// What the child compiles (with an engine without the pooling allocator)
/// loads into the parent's engine, pooled or not, and lands in the cache.
#[tokio::test]
async fn a_plugin_compiles_in_the_child_and_is_cached() {
    let cache = tempfile::tempdir().unwrap();
    let mut spec = PluginSpec::new(common::plugin("echo"));
    spec.compile_memory = sluice::config::MIN_COMPILE_MEMORY;

    let p = Plugin::load(&child_engine(cache.path(), true), spec.clone())
        .await
        .expect("compiled in the child under the smallest compile_memory");
    assert!(!p.from_cache());
    echoes(p).await;
    let entries = std::fs::read_dir(cache.path()).unwrap().count();
    assert_eq!(entries, 1, "one compiled component in the cache");

    for pooling in [true, false] {
        let p = Plugin::load(&child_engine(cache.path(), pooling), spec.clone())
            .await
            .expect("loaded from the cache");
        assert!(p.from_cache(), "pooling {pooling}");
        echoes(p).await;
    }
}

/// The child tells bytes that are no component, and a core module that
/// does not implement the world, apart, as compiling in process does.
#[tokio::test]
async fn the_child_reports_invalid_and_foreign_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let engine = child_engine(&dir.path().join("cache"), false);
    let load = |name: &str, bytes: Vec<u8>| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        Plugin::load(&engine, PluginSpec::new(path))
    };
    match load("foreign.wasm", wat::parse_str("(module)").unwrap()).await {
        Err(PluginError::World { .. }) => {}
        other => panic!("expected a world error, got {:?}", other.err()),
    }
    let mut broken = wat::parse_str("(component)").unwrap();
    broken.extend_from_slice(b"\x01garbage");
    match load("broken.wasm", broken).await {
        Err(PluginError::NotAComponent { message, .. }) => assert!(!message.is_empty()),
        other => panic!("expected not-a-component, got {:?}", other.err()),
    }
}
