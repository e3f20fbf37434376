//! Sluice against its WASM peers (the CPU targets of `docs/performance.md`), all three in one process:
//! the same map (ASCII uppercase of a 100-byte payload, one record per call)
//! run by Sluice's engine (wasmtime 48), Extism (wasmtime 43) and Fluvio's
//! SmartModule engine (wasmtime 34), each with its guards armed.
//!
//! Measures CPU time per message (process and calling thread, `getrusage`)
//! and wall time per message over `BENCH_N` calls after a warm-up, one thread,
//! `BENCH_REPS` repetitions alternating the engines, best repetition kept.
//!
//! Run: `bash bench/peers/run.sh` (builds the guests, then this binary).
//! Usage: `sluice-peers-bench GUEST_DIR OUT_JSON [--only sluice|extism|fluvio]`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use fluvio_smartengine::{
    DEFAULT_SMARTENGINE_VERSION, SmartEngine, SmartModuleChainBuilder, SmartModuleChainInstance,
    SmartModuleConfig,
};
use fluvio_smartmodule::Record;
use fluvio_smartmodule::dataplane::smartmodule::SmartModuleInput;
use sluice::engine::{Engine, EngineOptions, Plugin, PluginSpec, Worker};
use sluice::message::Message;

const PAYLOAD: usize = 100;
/// Distinct payloads, cycled through.
const DISTINCT: usize = 1024;
/// Untimed calls right before each timed repetition.
const REP_WARMUP: usize = 2_000;
/// The guards, the same for all three where the engine has them: Sluice's defaults.
const FUEL: u64 = 100_000_000;
const TIMEOUT: Duration = Duration::from_secs(1);
const MEMORY: u64 = 64 << 20;

/// What the table and the JSON name each engine with.
const NAMES: [&str; 3] = ["sluice", "extism", "fluvio"];
const VERSIONS: [&str; 3] = [
    "sluice (this repo), wasmtime 48.0.8",
    "extism 1.30.0, wasmtime 43.0.2",
    "fluvio-smartengine 0.50.1, wasmtime 34.0.2",
];
const GUARDS: [&str; 3] = [
    "fuel 100M + epoch deadline 1 s (5 ms ticker thread, the engine default) + 64 MiB memory limiter, set every call",
    "with_fuel_limit(100M) + with_timeout(1 s) (timer thread) + with_memory_max(1024 pages = 64 MiB)",
    "fuel metering (topped up every call; 0.50.1 has no fuel limit setting) + set_store_memory_limit(64 MiB); no timeout in 0.50.1",
];

fn payloads() -> Vec<Vec<u8>> {
    (0..DISTINCT)
        .map(|i| {
            let mut p = format!("record {i:06} ").into_bytes();
            let letters = b"abcdefghijklmnopqrstuvwxyz0123456789 -";
            while p.len() < PAYLOAD {
                p.push(letters[(p.len() * 7 + i) % letters.len()]);
            }
            p
        })
        .collect()
}

/// One engine ready to run `n` calls starting at message `start`.
trait Peer {
    /// Runs calls `start..start + n`, checking each output.
    fn run(&mut self, start: usize, n: usize) -> anyhow::Result<()>;
    /// Called (untimed) before each repetition.
    fn fresh(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

struct SluicePeer {
    rt: tokio::runtime::Runtime,
    worker: Worker,
    msgs: Vec<Message>,
}

impl SluicePeer {
    fn new(wasm: &Path, payloads: &[Vec<u8>]) -> anyhow::Result<Self> {
        // One thread: the calls run on the thread that calls `run`.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let worker = rt.block_on(async {
            let engine = Engine::new(EngineOptions {
                cache_dir: None,
                ..Default::default()
            })?;
            let mut spec = PluginSpec::new(wasm);
            spec.fuel = FUEL;
            spec.timeout = TIMEOUT;
            spec.memory = MEMORY;
            let plugin = Plugin::load(&engine, spec).await?;
            anyhow::Ok(Worker::new(plugin))
        })?;
        let msgs = payloads
            .iter()
            .map(|p| Message::new("bench", p.clone()))
            .collect();
        Ok(SluicePeer { rt, worker, msgs })
    }
}

impl Peer for SluicePeer {
    fn run(&mut self, start: usize, n: usize) -> anyhow::Result<()> {
        let SluicePeer { rt, worker, msgs } = self;
        rt.block_on(async {
            for i in start..start + n {
                let msg = &msgs[i % DISTINCT];
                let (out, _) = worker.handle(msg).await;
                let out = out.map_err(|f| anyhow::anyhow!("sluice: {f:?}"))?;
                ensure!(out.len() == 1 && out[0].payload.len() == PAYLOAD);
                black_box(out);
            }
            Ok(())
        })
    }
}

struct ExtismPeer {
    plugin: extism::Plugin,
    payloads: Vec<Vec<u8>>,
}

impl ExtismPeer {
    fn new(wasm: &Path, payloads: &[Vec<u8>]) -> anyhow::Result<Self> {
        let bytes = std::fs::read(wasm).with_context(|| format!("{}", wasm.display()))?;
        let manifest = extism::Manifest::new([extism::Wasm::data(bytes)])
            .with_timeout(TIMEOUT)
            .with_memory_max((MEMORY / 65536) as u32);
        let plugin = extism::PluginBuilder::new(manifest)
            .with_wasi(false)
            .with_fuel_limit(FUEL)
            .build()?;
        Ok(ExtismPeer {
            plugin,
            payloads: payloads.to_vec(),
        })
    }
}

impl Peer for ExtismPeer {
    fn run(&mut self, start: usize, n: usize) -> anyhow::Result<()> {
        for i in start..start + n {
            let input: &[u8] = &self.payloads[i % DISTINCT];
            let out: Vec<u8> = self.plugin.call("upper", input)?;
            ensure!(out.len() == PAYLOAD);
            black_box(out);
        }
        Ok(())
    }
}

struct FluvioPeer {
    engine: SmartEngine,
    wasm: Vec<u8>,
    chain: SmartModuleChainInstance,
    /// Calls made on this chain instance.
    calls: usize,
    payloads: Vec<Vec<u8>>,
}

impl FluvioPeer {
    fn new(wasm: &Path, payloads: &[Vec<u8>]) -> anyhow::Result<Self> {
        let wasm = std::fs::read(wasm).with_context(|| format!("{}", wasm.display()))?;
        let engine = SmartEngine::new();
        let chain = Self::chain(&engine, &wasm)?;
        Ok(FluvioPeer {
            engine,
            wasm,
            chain,
            calls: 0,
            payloads: payloads.to_vec(),
        })
    }

    fn chain(engine: &SmartEngine, wasm: &[u8]) -> anyhow::Result<SmartModuleChainInstance> {
        let mut builder = SmartModuleChainBuilder::default();
        builder.add_smart_module(
            SmartModuleConfig::builder()
                .smartmodule_names(&["upper".to_string()])
                .build()?,
            wasm.to_vec(),
        );
        builder.set_store_memory_limit(MEMORY as usize);
        builder.initialize(engine)
    }
}

impl Peer for FluvioPeer {
    fn run(&mut self, start: usize, n: usize) -> anyhow::Result<()> {
        for i in start..start + n {
            let record = Record::new(self.payloads[i % DISTINCT].clone());
            let input =
                SmartModuleInput::try_from_records(vec![record], DEFAULT_SMARTENGINE_VERSION)?;
            let out = self.chain.process(input).with_context(|| {
                format!("fluvio: call {} on this chain instance", self.calls + 1)
            })?;
            self.calls += 1;
            ensure!(out.error.is_none(), "fluvio: {:?}", out.error);
            ensure!(out.successes.len() == 1 && out.successes[0].value.len() == PAYLOAD);
            black_box(out);
        }
        Ok(())
    }

    /// A new chain instance: the 0.50.1 engine's guest memory grows with every
    /// call (see this crate's README), so one instance trips the 64 MiB cap after a few
    /// hundred thousand calls.
    fn fresh(&mut self) -> anyhow::Result<()> {
        self.chain = Self::chain(&self.engine, &self.wasm)?;
        self.calls = 0;
        Ok(())
    }
}

/// CPU time used so far: the whole process (all threads) and the calling thread.
fn cpu_now() -> (Duration, Duration) {
    fn get(who: libc::c_int) -> Duration {
        // SAFETY: getrusage only writes the struct it is given.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::getrusage(who, &mut ru) };
        assert_eq!(rc, 0, "getrusage");
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
    (get(libc::RUSAGE_SELF), get(libc::RUSAGE_THREAD))
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Process CPU µs per message (every thread, the engines' timer threads too).
    cpu_us: f64,
    /// CPU µs per message of the thread making the calls.
    thread_cpu_us: f64,
    wall_us: f64,
}

fn measure(peer: &mut dyn Peer, start: usize, n: usize) -> anyhow::Result<Sample> {
    let (p0, t0) = cpu_now();
    let w0 = Instant::now();
    peer.run(start, n)?;
    let wall = w0.elapsed();
    let (p1, t1) = cpu_now();
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    Ok(Sample {
        cpu_us: per(p1 - p0),
        thread_cpu_us: per(t1 - t0),
        wall_us: per(wall),
    })
}

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v}")),
        Err(_) => Ok(default),
    }
}

/// Checks one call's output against the expected map, byte for byte.
fn check_outputs(
    sluice: &mut SluicePeer,
    extism: &mut ExtismPeer,
    fluvio: &mut FluvioPeer,
) -> anyhow::Result<()> {
    let input = &extism.payloads[3];
    let want = input.to_ascii_uppercase();
    let (s, _) = sluice.rt.block_on(sluice.worker.handle(&sluice.msgs[3]));
    let s = s.map_err(|f| anyhow::anyhow!("sluice: {f:?}"))?;
    let e: Vec<u8> = extism.plugin.call("upper", input.as_slice())?;
    let f = fluvio.chain.process(SmartModuleInput::try_from_records(
        vec![Record::new(input.clone())],
        DEFAULT_SMARTENGINE_VERSION,
    )?)?;
    ensure!(
        s[0].payload.as_ref() == want.as_slice(),
        "sluice output differs"
    );
    ensure!(e == want, "extism output differs");
    ensure!(
        f.successes[0].value.as_ref() == want.as_slice(),
        "fluvio output differs"
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        bail!(
            "usage: {} GUEST_DIR OUT_JSON [--only sluice|extism|fluvio]",
            args[0]
        );
    }
    let guests = PathBuf::from(&args[1]);
    let out_json = PathBuf::from(&args[2]);
    let only = match args.get(3).map(String::as_str) {
        Some("--only") => Some(args.get(4).context("--only needs a name")?.clone()),
        Some(a) => bail!("unknown argument {a}"),
        None => None,
    };
    let n = env_usize("BENCH_N", 200_000)?;
    let reps = env_usize("BENCH_REPS", 3)?;
    let warmup = env_usize("BENCH_WARMUP", 20_000)?;

    let payloads = payloads();
    let mut sluice = SluicePeer::new(&guests.join("sluice_upper.wasm"), &payloads)?;
    let mut extism = ExtismPeer::new(&guests.join("extism_upper.wasm"), &payloads)?;
    let mut fluvio = FluvioPeer::new(&guests.join("fluvio_upper.wasm"), &payloads)?;
    check_outputs(&mut sluice, &mut extism, &mut fluvio)?;

    let peers: [&mut dyn Peer; 3] = [&mut sluice, &mut extism, &mut fluvio];
    let active: Vec<usize> = match &only {
        Some(name) => vec![
            NAMES
                .iter()
                .position(|n| n == name)
                .with_context(|| format!("--only {name}: not one of {NAMES:?}"))?,
        ],
        None => (0..3).collect(),
    };

    for &i in &active {
        peers[i].run(0, warmup)?;
    }
    let mut best: [Option<Sample>; 3] = [None; 3];
    let mut all: [Vec<Sample>; 3] = Default::default();
    for rep in 0..reps {
        // Alternate the order too, so no engine always runs right after the same one.
        let order: Vec<usize> = if rep % 2 == 0 {
            active.clone()
        } else {
            active.iter().rev().copied().collect()
        };
        for i in order {
            peers[i].fresh()?;
            peers[i].run(0, REP_WARMUP)?;
            let s = measure(peers[i], warmup + rep * n, n)?;
            eprintln!(
                "rep {rep} {:>6}: {:.3} µs CPU/msg ({:.3} calling thread), {:.3} µs wall/msg",
                NAMES[i], s.cpu_us, s.thread_cpu_us, s.wall_us
            );
            all[i].push(s);
            if best[i].is_none_or(|b| s.cpu_us < b.cpu_us) {
                best[i] = Some(s);
            }
        }
    }

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "\n{n} calls per repetition, best of {reps} (by process CPU), one record of {PAYLOAD} bytes per call, load average at the end: {load}\n"
    );
    println!(
        "| engine | versions | CPU µs/msg (process) | CPU µs/msg (calling thread) | wall µs/msg |"
    );
    println!("|---|---|---|---|---|");
    let mut engines = serde_json::Map::new();
    for &i in &active {
        let b = best[i].expect("measured");
        println!(
            "| {} | {} | {:.3} | {:.3} | {:.3} |",
            NAMES[i], VERSIONS[i], b.cpu_us, b.thread_cpu_us, b.wall_us
        );
        let reps_json: Vec<serde_json::Value> = all[i]
            .iter()
            .map(|s| {
                serde_json::json!({
                    "cpu_us_per_msg": s.cpu_us,
                    "thread_cpu_us_per_msg": s.thread_cpu_us,
                    "wall_us_per_msg": s.wall_us,
                })
            })
            .collect();
        engines.insert(
            NAMES[i].into(),
            serde_json::json!({
                "versions": VERSIONS[i],
                "guards": GUARDS[i],
                "cpu_us_per_msg": b.cpu_us,
                "thread_cpu_us_per_msg": b.thread_cpu_us,
                "wall_us_per_msg": b.wall_us,
                "repetitions": reps_json,
            }),
        );
    }
    let mut json = serde_json::json!({
        "bench": "peers",
        "map": "ASCII uppercase, one record per call",
        "payload_bytes": PAYLOAD,
        "calls_per_repetition": n,
        "warmup_calls": warmup,
        "repetitions": reps,
        "best_by": "process CPU per message",
        "load_average_at_end": load,
        "engines": engines,
    });
    if only.is_none() {
        let s = best[0].expect("measured");
        let e = best[1].expect("measured");
        let f = best[2].expect("measured");
        let rows = [
            (
                "Sluice / Extism",
                s.cpu_us / e.cpu_us,
                s.wall_us / e.wall_us,
                0.10,
            ),
            (
                "Sluice / Fluvio",
                s.cpu_us / f.cpu_us,
                s.wall_us / f.wall_us,
                0.25,
            ),
        ];
        println!("\n| ratio | CPU | wall | target (CPU) | met |");
        println!("|---|---|---|---|---|");
        let mut ratios = serde_json::Map::new();
        for (name, cpu, wall, target) in rows {
            let met = cpu <= target;
            println!(
                "| {name} | {cpu:.3} | {wall:.3} | ≤ {target:.2} | {} |",
                if met {
                    "yes".to_string()
                } else {
                    format!("no, {:.1}× over", cpu / target)
                }
            );
            ratios.insert(
                name.to_lowercase().replace(" / ", "_over_"),
                serde_json::json!({
                    "cpu": cpu,
                    "wall": wall,
                    "target_cpu_at_most": target,
                    "met": met,
                }),
            );
        }
        json["ratios"] = ratios.into();
    }
    if let Some(dir) = out_json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out_json, serde_json::to_string_pretty(&json)?)?;
    println!("\nwrote {}", out_json.display());
    Ok(())
}
