//! Memory soak: resident memory of one pipeline streaming at full speed for
//! minutes (echo.wasm under all three budgets, an endless in-process source,
//! an in-memory sink), sampled every few seconds, and the idle footprint of a
//! pipeline (what one more running but idle pipeline adds).
//!
//! Run: `bash plugins/build.sh && cargo bench -p sluice --bench soak`
//! (`SOAK_SECS`, default 600). Writes `target/bench/soak.json`.
//!
//! `SOAK_POISON=1`: the stream is all poison instead (panic.wasm, every
//! message traps, is dead-lettered and the next gets a fresh instance from a
//! reused pool slot), to show slot reuse keeps memory flat; writes
//! `target/bench/soak-poison.json`. The idle footprint is then that of
//! pipelines holding a panic.wasm instance (their one message is good).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sluice::config::BreakerConfig;
use sluice::engine::{Engine, EngineOptions, Plugin, PluginSpec};
use sluice::message::Message;
use sluice::pipeline::{Parts, Pipeline, Sinks};
use sluice::policy::Policy;
use sluice::sinks::memory::MemorySink;
use sluice::sources::{Delivery, Settle, Settlement, Source, SourceError};

/// How often resident memory is read.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples before this are warm-up (caches, pools and allocator arenas fill).
const WARM_UP: Duration = Duration::from_secs(60);
/// Idle pipelines started to measure the footprint of one.
const IDLE_PIPELINES: usize = 20;

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Endless 100-byte messages until `stop`; `idle` ones yield one message
/// (so the pipeline holds a handler instance) and then nothing.
struct Endless {
    next: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    idle: bool,
    /// The same payload for every message; `None`: each message's number,
    /// zero-padded to 100 bytes.
    payload: Option<&'static str>,
}

struct Ack(Arc<AtomicU64>);

impl Settle for Ack {
    fn settle(self: Box<Self>, how: Settlement) -> BoxFuture<'static, anyhow::Result<()>> {
        if matches!(how, Settlement::Ack | Settlement::Terminated) {
            self.0.fetch_add(1, Relaxed);
        }
        Box::pin(async { Ok(()) })
    }
}

impl Source for Endless {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Delivery>, SourceError>> {
        if self.idle && self.next > 0 {
            return Box::pin(std::future::pending());
        }
        if self.stop.load(Relaxed) {
            return Box::pin(async { Ok(None) });
        }
        self.next += 1;
        let mut m = match self.payload {
            Some(p) => Message::new("soak", p),
            None => Message::new("soak", format!("{:0100}", self.next)),
        };
        m.offset = Some(self.next as i64);
        let d = Delivery::new(m, Box::new(Ack(self.acked.clone())));
        Box::pin(async move { Ok(Some(d)) })
    }
}

fn pipeline(name: &str, plugin: &Plugin, source: Endless) -> Pipeline {
    Pipeline::new(Parts {
        name: name.into(),
        source: Box::new(source),
        plugin: plugin.clone(),
        sinks: Sinks {
            default: Some(Arc::new(MemorySink::counting())),
            named: Default::default(),
        },
        dead_letter: Some(Arc::new(MemorySink::counting())),
        policy: Policy {
            errors: Default::default(),
            retry: Default::default(),
        },
        breaker: BreakerConfig::default(),
        dedup: None,
        concurrency: 1,
        publish_window: 128,
        batch: 16,
        publish_timeout: Duration::from_secs(30),
    })
}

fn main() {
    // SAFETY: first thing in main, before any other thread exists.
    unsafe { sluice::engine::quiet_library_backtraces() };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let engine = Engine::new(EngineOptions {
        cache_dir: Some(repo().join("target/bench-cache")),
        ..Default::default()
    })
    .unwrap();
    let poison = std::env::var_os("SOAK_POISON").is_some();
    let (wasm, payload) = if poison {
        ("panic.wasm", Some("panic"))
    } else {
        ("echo.wasm", None)
    };
    // Default budgets: fuel 100M, deadline 1 s, memory 64 MiB.
    let spec = PluginSpec::new(repo().join("plugins/dist").join(wasm));
    let plugin = Plugin::load(&engine, spec)
        .await
        .expect("the plugin (run plugins/build.sh)");

    // Idle footprint: RSS before and after starting idle pipelines that each
    // handled one message first (so each holds its instance).
    let before_idle = rss();
    let stop_idle = Arc::new(AtomicBool::new(false));
    let mut idle = Vec::new();
    let mut idle_acked = Vec::new();
    for i in 0..IDLE_PIPELINES {
        let acked = Arc::new(AtomicU64::new(0));
        idle_acked.push(acked.clone());
        let p = pipeline(
            &format!("idle-{i}"),
            &plugin,
            Endless {
                next: 0,
                stop: stop_idle.clone(),
                acked: acked.clone(),
                idle: true,
                payload: None,
            },
        );
        idle.push(tokio::spawn(p.run(std::future::pending())));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while idle_acked.iter().any(|a| a.load(Relaxed) == 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_per_pipeline = rss().saturating_sub(before_idle) as f64 / IDLE_PIPELINES as f64;
    for t in idle {
        t.abort();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let p = pipeline(
        "soak",
        &plugin,
        Endless {
            next: 0,
            stop: stop.clone(),
            acked: acked.clone(),
            idle: false,
            payload,
        },
    );
    let start = Instant::now();
    let run = tokio::spawn(p.run(std::future::pending()));
    let mut samples: Vec<(f64, u64, u64)> = Vec::new();
    let mut last = (Instant::now(), 0u64);
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(SAMPLE_EVERY).await;
        let (t, n) = (start.elapsed().as_secs_f64(), acked.load(Relaxed));
        let rate = (n - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), n);
        let r = rss();
        println!(
            "t={t:>6.0}s rss={:>7.1} MiB messages={n} ({rate:.0} msg/s)",
            r as f64 / 1048576.0
        );
        samples.push((t, r, n));
    }
    stop.store(true, Relaxed);
    let snap = run.await.unwrap().expect("pipeline");
    let total = acked.load(Relaxed);
    let steady: Vec<u64> = samples
        .iter()
        .filter(|(t, _, _)| *t >= WARM_UP.as_secs_f64().min(secs as f64 / 2.0))
        .map(|s| s.1)
        .collect();
    let (min, max) = (
        *steady.iter().min().unwrap_or(&0),
        *steady.iter().max().unwrap_or(&0),
    );
    let (first, end) = (*steady.first().unwrap_or(&0), *steady.last().unwrap_or(&0));
    let spread = (max - min) as f64 / min.max(1) as f64;
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "\n{total} messages in {secs} s ({:.0} msg/s); succeeded {}, dead-lettered {}",
        total as f64 / secs as f64,
        snap.succeeded,
        snap.dead_lettered
    );
    println!(
        "RSS after warm-up: first {:.1} MiB, last {:.1} MiB, min {:.1}, max {:.1}: spread {:.1}% (target ≤ 10%)",
        mib(first),
        mib(end),
        mib(min),
        mib(max),
        spread * 100.0
    );
    println!(
        "idle pipeline footprint: {:.0} KiB each ({IDLE_PIPELINES} idle pipelines, each holding its handler instance)",
        idle_per_pipeline / 1024.0
    );
    let json = serde_json::json!({
        "seconds": secs,
        "messages": total,
        "plugin": wasm,
        "dead_lettered": snap.dead_lettered,
        "msgs_per_s": total as f64 / secs as f64,
        "rss_first_bytes": first,
        "rss_last_bytes": end,
        "rss_min_bytes": min,
        "rss_max_bytes": max,
        "rss_spread": spread,
        "idle_pipeline_bytes": idle_per_pipeline,
        "samples": samples.iter().map(|(t, r, n)| serde_json::json!({"t": t, "rss": r, "messages": n})).collect::<Vec<_>>(),
    });
    let out = repo().join("target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(
        out.join(if poison {
            "soak-poison.json"
        } else {
            "soak.json"
        }),
        serde_json::to_string_pretty(&json).unwrap(),
    );
}
