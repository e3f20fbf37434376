//! Handler benchmark: the same logic as a WASM component and as native Rust,
//! through the same pipeline path (in-memory source and sink), plus the cost
//! of a trap and the fresh instance after it.
//!
//! Run: `bash plugins/build.sh && cargo bench -p sluice --bench handler`
//! Writes `target/bench/handler.json`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::config::BreakerConfig;
use sluice::engine::{Engine, EngineOptions, NativeFn, Plugin, PluginSpec, Worker};
use sluice::failure::{Failure, FailureClass};
use sluice::message::{Header, Message, Output};
use sluice::pipeline::{Parts, Pipeline, Sinks};
use sluice::policy::Policy;
use sluice::sinks::memory::MemorySink;
use sluice::sources::memory::MemorySource;

/// The log-parser plugin's parsing code, compiled natively.
#[path = "../../plugins/log-parser/src/parse.rs"]
#[allow(dead_code)]
mod parse;

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn log_lines(n: usize) -> Vec<Message> {
    let levels = ["INFO", "WARN", "ERROR", "DEBUG"];
    let services = ["api", "payments", "auth", "inventory"];
    (0..n)
        .map(|i| {
            let line = format!(
                "2026-11-26T09:15:{:02}.{:03}Z {} [{}] request done user={} ms={}",
                i % 60,
                i % 1000,
                levels[i % 4],
                services[i % 4],
                i % 977,
                i % 100
            );
            Message::new("logs", line)
        })
        .collect()
}

fn echo_messages(n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| Message::new("bench", format!("{:0100}", i)))
        .collect()
}

fn native_log_parser() -> NativeFn {
    Arc::new(|m: &Message| {
        let r = parse::parse_line(&m.payload).map_err(|e| Failure::new(FailureClass::Fatal, e))?;
        let mut o = Output::new(parse::to_json(&r));
        o.key = Some(r.service.as_bytes().to_vec().into());
        o.headers.push(Header::new("level", r.level.as_str()));
        Ok(vec![o])
    })
}

fn native_echo() -> NativeFn {
    Arc::new(|m: &Message| Ok(vec![Output::new(m.payload.clone())]))
}

/// The pipelines' default `handler.batch`.
const BATCH: usize = 16;

/// Messages per second through a whole pipeline (best of `reps`).
async fn throughput(
    plugin: &Plugin,
    msgs: &[Message],
    concurrency: usize,
    batch: usize,
    reps: usize,
) -> f64 {
    let mut best = 0f64;
    for _ in 0..reps {
        let sink = Arc::new(MemorySink::counting());
        let p = Pipeline::new(Parts {
            name: "bench".into(),
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
            concurrency,
            publish_window: 128,
            batch,
            publish_timeout: Duration::from_secs(30),
        });
        let start = Instant::now();
        // `BENCH_IN_TASK=1`: run the pipeline as a spawned task, the way
        // `sluice run` does, instead of on the bench's own thread.
        let s = if std::env::var_os("BENCH_IN_TASK").is_some() {
            tokio::spawn(p.run(std::future::pending()))
                .await
                .expect("task")
                .expect("run")
        } else {
            p.run(std::future::pending()).await.expect("run")
        };
        let rate = msgs.len() as f64 / start.elapsed().as_secs_f64();
        assert_eq!((s.succeeded + s.dead_lettered) as usize, msgs.len());
        best = best.max(rate);
    }
    best
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
    let engine = Engine::new(EngineOptions {
        cache_dir: Some(repo().join("target/bench-cache")),
        ..Default::default()
    })
    .unwrap();
    let load = |name: &str| {
        let mut s = PluginSpec::new(repo().join("plugins/dist").join(format!("{name}.wasm")));
        s.fuel = 10_000_000;
        s.timeout = Duration::from_millis(100);
        s.memory = 16 << 20;
        if let Some(mib) = std::env::var("BENCH_MEMORY_MIB")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            s.memory = mib << 20;
        }
        let engine = engine.clone();
        async move {
            Plugin::load(&engine, s)
                .await
                .expect("plugin (run plugins/build.sh)")
        }
    };
    // `BENCH_PROFILE=trap|call|batch|instantiate|bare|poison|stream SECS`: only
    // loop that path for a profiler (`stream` with `BENCH_NATIVE=1`: the
    // native echo through the same pipeline).
    // `BENCH_PLUGIN=NAME BENCH_PAYLOAD=TEXT`: another plugin of `plugins/dist`
    // and the payload it gets (healthy paths only; default: `panic`, "fine").
    if let Ok(what) = std::env::var("BENCH_PROFILE") {
        let secs: u64 = std::env::var("BENCH_PROFILE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10);
        let name = std::env::var("BENCH_PLUGIN").unwrap_or_else(|_| "panic".into());
        let plugin = load(&name).await;
        let mut w = Worker::new(plugin);
        let chosen = std::env::var("BENCH_PAYLOAD").unwrap_or_else(|_| "fine".into());
        // 'static, so each message borrows it as before (no copy per message).
        let chosen: &'static str = Box::leak(chosen.into_boxed_str());
        let payload = if what == "trap" || what == "poison" {
            "panic"
        } else {
            chosen
        };
        let t = Instant::now();
        let mut n = 0u64;
        if what == "poison" || what == "stream" {
            // The whole pipeline (in-memory source, sink and dead letter),
            // c=1, default batch: every message trapping, or all healthy.
            // `BENCH_NATIVE=1`: the native echo instead, the pipeline alone.
            let p = if std::env::var_os("BENCH_NATIVE").is_some() {
                Plugin::native(w.plugin(), native_echo())
            } else {
                w.plugin().clone()
            };
            let msgs: Vec<Message> = (0..20_000).map(|_| Message::new("b", payload)).collect();
            while t.elapsed() < Duration::from_secs(secs) {
                throughput(&p, &msgs, 1, BATCH, 1).await;
                n += msgs.len() as u64;
            }
        } else if what == "batch" {
            // Healthy calls of BATCH messages each, per message.
            let msgs: Vec<Message> = (0..BATCH).map(|_| Message::new("b", payload)).collect();
            let refs: Vec<&Message> = msgs.iter().collect();
            while t.elapsed() < Duration::from_secs(secs) {
                n += w.handle_batch(&refs).await.len() as u64;
            }
        } else if what == "instantiate" || what == "bare" {
            // Sluice's instantiation (dropped at once) or wasmtime's bare one.
            let plugin = w.plugin().clone();
            while t.elapsed() < Duration::from_secs(secs) {
                if what == "bare" {
                    plugin.instantiate_bare().await.expect("bare instantiation");
                } else {
                    drop(plugin.instantiate().await.expect("instantiation"));
                }
                n += 1;
            }
        } else {
            while t.elapsed() < Duration::from_secs(secs) {
                let _ = w.handle(&Message::new("b", payload)).await;
                n += 1;
            }
        }
        println!(
            "{what}: {:.2} µs each ({n} in all)",
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
        return;
    }
    let n = 200_000;
    let logs = log_lines(n);
    let echo_msgs = echo_messages(n);
    let parser = load("log-parser").await;
    let echo = load("echo").await;
    let mut rows = Vec::new();
    let mut json = serde_json::Map::new();
    for (name, wasm, native, msgs) in [
        (
            "log-parser",
            &parser,
            Plugin::native(&parser, native_log_parser()),
            &logs,
        ),
        (
            "echo",
            &echo,
            Plugin::native(&echo, native_echo()),
            &echo_msgs,
        ),
    ] {
        for conc in [1, 2] {
            // The default batch, then one message per call.
            for batch in [BATCH, 1] {
                let w = throughput(wasm, msgs, conc, batch, 3).await;
                let nat = throughput(&native, msgs, conc, batch, 3).await;
                rows.push(format!(
                    "| {name} | {conc} | {batch} | {:>9.0} | {:>9.0} | {:.2} |",
                    w,
                    nat,
                    w / nat
                ));
                let key = if batch == BATCH {
                    format!("{name}_c{conc}")
                } else {
                    format!("{name}_c{conc}_b{batch}")
                };
                json.insert(format!("{key}_wasm_msgs_per_s"), w.into());
                json.insert(format!("{key}_native_msgs_per_s"), nat.into());
                json.insert(format!("{key}_ratio"), (w / nat).into());
            }
        }
    }

    // The poison path: every message traps, is dead-lettered, and the next
    // one gets a fresh instance.
    let panic = load("panic").await;
    let poison: Vec<Message> = (0..20_000)
        .map(|_| Message::new("bench", "panic"))
        .collect();
    let healthy: Vec<Message> = (0..20_000).map(|_| Message::new("bench", "fine")).collect();
    let poison_rate = throughput(&panic, &poison, 1, BATCH, 3).await;
    let healthy_rate = throughput(&panic, &healthy, 1, BATCH, 3).await;
    let poison_b1 = throughput(&panic, &poison, 1, 1, 3).await;
    let healthy_b1 = throughput(&panic, &healthy, 1, 1, 3).await;

    // Cost of one trap + fresh instance, against one healthy call and one bare instantiation.
    let mut w = Worker::new(panic.clone());
    let reps = 5_000;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / reps as f64;
    let t = Instant::now();
    for _ in 0..reps {
        let _ = w.handle(&Message::new("b", "fine")).await;
    }
    let call_us = per(t.elapsed());
    let t = Instant::now();
    for _ in 0..reps {
        let _ = w.handle(&Message::new("b", "panic")).await;
    }
    let trap_us = per(t.elapsed());
    let t = Instant::now();
    for _ in 0..reps {
        drop(panic.instantiate().await.unwrap());
    }
    let inst_us = per(t.elapsed());
    let t = Instant::now();
    for _ in 0..reps {
        panic.instantiate_bare().await.unwrap();
    }
    let bare_us = per(t.elapsed());

    println!("\n| handler | concurrency | batch | WASM msg/s | native msg/s | WASM/native |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    println!("\n| path | msg/s or µs |\n|---|---|");
    println!(
        "| healthy stream (panic plugin, good payloads; batch {BATCH} / 1) | {healthy_rate:.0} / {healthy_b1:.0} msg/s |"
    );
    println!(
        "| poison stream (every message traps → dead letter → fresh instance; batch {BATCH} / 1) | {poison_rate:.0} msg/s ({:.2} of healthy) / {poison_b1:.0} msg/s ({:.2}) |",
        poison_rate / healthy_rate,
        poison_b1 / healthy_b1
    );
    println!("| one healthy call | {call_us:.2} µs |");
    println!("| one trapping call + fresh instance on the next | {trap_us:.2} µs |");
    println!(
        "| Sluice's instantiation: permit, store, limiter, budgets, instantiate, `init` (pooling allocator) | {inst_us:.2} µs |"
    );
    println!(
        "| wasmtime's bare pooling instantiation of the same component (`InstancePre::instantiate_async`) | {bare_us:.2} µs |"
    );
    println!(
        "| Sluice's re-instantiation / bare | {:.2} (target ≤ 2) |",
        inst_us / bare_us
    );
    json.insert("poison_msgs_per_s".into(), poison_rate.into());
    json.insert("healthy_msgs_per_s".into(), healthy_rate.into());
    json.insert("poison_b1_msgs_per_s".into(), poison_b1.into());
    json.insert("healthy_b1_msgs_per_s".into(), healthy_b1.into());
    json.insert("call_us".into(), call_us.into());
    json.insert("trap_and_reinstantiate_us".into(), trap_us.into());
    json.insert("instantiate_us".into(), inst_us.into());
    json.insert("bare_instantiate_us".into(), bare_us.into());
    json.insert("reinstantiate_over_bare".into(), (inst_us / bare_us).into());
    let out = repo().join("target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(
        out.join("handler.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    );
}
