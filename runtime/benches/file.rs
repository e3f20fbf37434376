//! The embedded path: `file` source → echo → `file` sink against the same
//! pipeline with the in-memory source and sink, in one run, and the same file
//! pipeline with `fsync = true` on the sink.
//!
//! Run: `bash plugins/build.sh && cargo bench -p sluice --bench file`
//! (`BENCH_FILE_LINES=N`: N lines instead of 1,000,000; `BENCH_PROFILE=file`
//! or `memory`: that side alone, for callgrind). Each line is 100
//! bytes plus its newline; `batch = 16`, `max_in_flight = 4096`, `follow = false`.
//! Writes `target/bench/file.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::config::BreakerConfig;
use sluice::engine::{Engine, EngineOptions, Plugin, PluginSpec};
use sluice::message::Message;
use sluice::pipeline::{Parts, Pipeline, Sinks};
use sluice::policy::Policy;
use sluice::sinks::memory::MemorySink;
use sluice::sources::memory::MemorySource;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ has a parent")
        .to_path_buf()
}

/// Line `i`: 100 bytes (the number, zero-padded).
fn line(i: usize) -> String {
    format!("{i:0100}")
}

const BATCH: usize = 16;
const MAX_IN_FLIGHT: usize = 4096;

/// The pipeline file of the file → echo → file path in `dir`.
fn pipeline_toml(dir: &Path, fsync: bool) -> String {
    format!(
        r#"name = "bench-file"
[source]
type = "file"
path = "{d}/in.txt"
max_in_flight = {MAX_IN_FLIGHT}
[handler]
plugin = "{plugin}"
batch = {BATCH}
[sink]
type = "file"
path = "{d}/out.txt"
fsync = {fsync}
[dead_letter]
type = "file"
path = "{d}/dlq.jsonl"
"#,
        d = dir.display(),
        plugin = repo().join("plugins/dist/echo.wasm").display(),
    )
}

/// Lines per second through file → echo → file.
async fn file_rate(plugin: &Plugin, input: &[u8], n: usize, fsync: bool) -> f64 {
    let base = repo().join("target/bench-tmp");
    std::fs::create_dir_all(&base).expect("target/bench-tmp");
    let dir = tempfile::tempdir_in(&base).expect("temp dir");
    std::fs::write(dir.path().join("in.txt"), input).expect("write input");
    let file = dir.path().join("p.toml");
    std::fs::write(&file, pipeline_toml(dir.path(), fsync)).expect("write pipeline");
    let cfg = sluice::config::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let p = sluice::connect::build_with_plugin(&cfg, plugin.clone())
        .await
        .expect("build");
    let start = Instant::now();
    let s = p.run(std::future::pending()).await.expect("run");
    let rate = n as f64 / start.elapsed().as_secs_f64();
    assert_eq!(s.succeeded as usize, n, "every line handled");
    let out = std::fs::read(dir.path().join("out.txt")).expect("read output");
    assert_eq!(out.len(), input.len(), "every line written");
    rate
}

/// Messages per second through memory → echo → memory with the same settings.
async fn memory_rate(plugin: &Plugin, msgs: &[Message], publish_window: usize) -> f64 {
    let sink = Arc::new(MemorySink::counting());
    let p = Pipeline::new(Parts {
        name: "bench-memory".into(),
        source: Box::new(MemorySource::new(msgs.iter().cloned())),
        plugin: plugin.clone(),
        sinks: Sinks {
            default: Some(sink.clone()),
            named: Default::default(),
        },
        dead_letter: Some(Arc::new(MemorySink::counting())),
        policy: Policy {
            errors: Default::default(),
            retry: Default::default(),
        },
        breaker: BreakerConfig {
            enabled: false,
            ..Default::default()
        },
        dedup: None,
        concurrency: 1,
        publish_window,
        batch: BATCH,
        publish_timeout: Duration::from_secs(30),
    });
    let start = Instant::now();
    let s = p.run(std::future::pending()).await.expect("run");
    let rate = msgs.len() as f64 / start.elapsed().as_secs_f64();
    assert_eq!(s.succeeded as usize, msgs.len());
    rate
}

fn main() {
    // SAFETY: first thing in main, before any other thread exists.
    unsafe { sluice::engine::quiet_library_backtraces() };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench());
}

async fn bench() {
    let n: usize = std::env::var("BENCH_FILE_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let engine = Engine::new(EngineOptions {
        cache_dir: Some(repo().join("target/bench-cache")),
        ..Default::default()
    })
    .expect("engine");
    let pipeline_file = repo().join("target/bench-tmp/echo.toml");
    let _ = std::fs::create_dir_all(repo().join("target/bench-tmp"));
    std::fs::write(&pipeline_file, pipeline_toml(Path::new("/unused"), false))
        .expect("write pipeline");
    let cfg = sluice::config::load(&pipeline_file).unwrap_or_else(|e| panic!("{e}"));
    let plugin = Plugin::load(&engine, PluginSpec::from_config(&cfg.name, &cfg.handler))
        .await
        .expect("plugin (run plugins/build.sh)");

    // The in-memory pipeline gets the file pipeline's settings.
    let window = cfg.handler.publish_window;
    let mut input = Vec::with_capacity(n * 101);
    for i in 0..n {
        input.extend_from_slice(line(i).as_bytes());
        input.push(b'\n');
    }
    let msgs: Vec<Message> = (0..n).map(|i| Message::new("bench", line(i))).collect();

    // For instruction counts (callgrind at two run lengths): one side only.
    match std::env::var("BENCH_PROFILE").as_deref() {
        Ok("memory") => {
            memory_rate(&plugin, &msgs, window).await;
            return;
        }
        Ok("file") => {
            file_rate(&plugin, &input, n, false).await;
            return;
        }
        _ => {}
    }
    // Memory first and last, so a machine that speeds up or slows down
    // during the run shows as a spread; the best of each is compared.
    let mem1 = memory_rate(&plugin, &msgs, window).await;
    let file = file_rate(&plugin, &input, n, false).await;
    let file_sync = file_rate(&plugin, &input, n, true).await;
    let mem2 = memory_rate(&plugin, &msgs, window).await;
    let mem = mem1.max(mem2);

    println!("\n{n} lines of 100 bytes, echo, batch {BATCH}, max_in_flight {MAX_IN_FLIGHT}\n");
    println!("| path | lines/s | of in-memory |\n|---|---|---|");
    println!("| memory → echo → memory | {mem:.0} ({mem1:.0}, {mem2:.0}) | 1.00 |");
    println!("| file → echo → file | {file:.0} | {:.3} |", file / mem);
    println!(
        "| file → echo → file, `fsync = true` | {file_sync:.0} | {:.3} ({:.2} of fsync = false) |",
        file_sync / mem,
        file_sync / file
    );
    let json = serde_json::json!({
        "lines": n,
        "memory_msgs_per_s": mem,
        "file_lines_per_s": file,
        "file_fsync_lines_per_s": file_sync,
        "file_over_memory": file / mem,
        "file_fsync_over_memory": file_sync / mem,
        "fsync_over_no_fsync": file_sync / file,
    });
    let out = repo().join("target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(
        out.join("file.json"),
        serde_json::to_string_pretty(&json).expect("json"),
    );
}
