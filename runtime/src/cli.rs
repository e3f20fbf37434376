//! The subcommands behind `sluice run`, `sluice check` and `sluice call`;
//! `author` holds `sluice new` and `sluice test`, `replay` `sluice replay`.

pub mod author;
pub mod replay;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use sluice::config::{self, units};
use sluice::engine::{Compiler, Engine, EngineOptions, Plugin, PluginSpec, Worker};
use sluice::message::Message;

/// Arguments of `sluice call`.
#[derive(clap::Args)]
pub struct CallArgs {
    /// The handler: a .wasm component or a folder holding one.
    #[arg(long)]
    plugin: PathBuf,
    /// A `key=value` pair for the handler's `init` (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    config: Vec<String>,
    /// A message payload (repeatable).
    #[arg(long, conflicts_with = "input")]
    payload: Vec<String>,
    /// A file whose lines are the message payloads ("-" for stdin).
    #[arg(long)]
    input: Option<PathBuf>,
    /// The topic the messages appear to come from.
    #[arg(long, default_value = "call")]
    topic: String,
    /// The message key.
    #[arg(long)]
    key: Option<String>,
    /// The attempt number the handler sees.
    #[arg(long, default_value_t = 1)]
    attempt: u32,
    /// Fuel per call.
    #[arg(long, default_value_t = 100_000_000)]
    fuel: u64,
    /// Wall-clock budget per call, e.g. "250ms".
    #[arg(long, default_value = "1s")]
    timeout: String,
    /// Memory cap, e.g. "64MiB".
    #[arg(long, default_value = "64MiB")]
    memory: String,
    /// Print one JSON object per message instead of text.
    #[arg(long)]
    json: bool,
}

/// The engine of every subcommand: plugins are untrusted, so they are
/// compiled by a child process of this binary, under their limits.
pub(crate) fn engine() -> anyhow::Result<Engine> {
    engine_with(EngineOptions::default().max_instances)
}

/// The engine with a pool of `max_instances` handler instances.
fn engine_with(max_instances: u32) -> anyhow::Result<Engine> {
    let exe = std::env::current_exe().context("cannot find the sluice binary to compile with")?;
    Engine::new(EngineOptions {
        compiler: Compiler::Child { exe },
        max_instances,
        ..EngineOptions::default()
    })
}

/// `sluice check`: every problem of every file, then exit 1 if there was one.
pub async fn check(files: Vec<PathBuf>) -> anyhow::Result<ExitCode> {
    let engine = engine()?;
    let mut bad = 0;
    for file in &files {
        match config::load(file) {
            Err(errors) => {
                bad += 1;
                eprintln!("{errors}");
            }
            Ok(cfg) => {
                match Plugin::load(&engine, PluginSpec::from_config(&cfg.name, &cfg.handler)).await
                {
                    Ok(p) => println!(
                        "{}: ok (pipeline {}, plugin {}, {})",
                        file.display(),
                        cfg.name,
                        p.digest(),
                        if p.takes_batches() && cfg.handler.batch > 1 {
                            format!("up to {} messages a call", cfg.handler.batch)
                        } else if p.takes_batches() {
                            "one message a call (batch = 1)".to_string()
                        } else {
                            "one message a call: the plugin exports no handle-batch".to_string()
                        }
                    ),
                    Err(e) => {
                        bad += 1;
                        let at = sluice::files::read_regular_text(
                            file,
                            sluice::files::MAX_PIPELINE_BYTES,
                        )
                        .map(|text| config::position_of(&text, &["handler", "plugin"]))
                        .unwrap_or_default();
                        eprintln!("{}{at}: handler.plugin: {e}", file.display());
                    }
                }
                if let Some(c) = &cfg.handler.canary {
                    let mut spec = PluginSpec::from_config(&cfg.name, &cfg.handler);
                    spec.path = c.plugin.clone();
                    match Plugin::load(&engine, spec).await {
                        Ok(p) => println!(
                            "{}: canary ok (plugin {}, share {})",
                            file.display(),
                            p.digest(),
                            c.share
                        ),
                        Err(e) => {
                            bad += 1;
                            let at = sluice::files::read_regular_text(
                                file,
                                sluice::files::MAX_PIPELINE_BYTES,
                            )
                            .map(|text| {
                                config::position_of(&text, &["handler", "canary", "plugin"])
                            })
                            .unwrap_or_default();
                            eprintln!("{}{at}: handler.canary.plugin: {e}", file.display());
                        }
                    }
                }
            }
        }
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Arguments of `sluice run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Pipeline files, and folders whose `*.toml` files are pipelines (watched:
    /// files added, changed or removed start, replace or stop pipelines).
    #[arg(required = true)]
    pipelines: Vec<PathBuf>,
    /// Serve the admin HTTP API (metrics, health, pipelines, reload) on ADDR, e.g. 127.0.0.1:9090.
    #[arg(long, value_name = "ADDR")]
    admin: Option<std::net::SocketAddr>,
    /// A file holding the bearer token that POST requests to the admin API
    /// must carry (default: `$SLUICE_ADMIN_TOKEN`, if set).
    #[arg(long, value_name = "PATH")]
    admin_token_file: Option<PathBuf>,
    /// Handler instances the process may hold at once, across all pipelines
    /// (each worker holds one; loading a plugin takes one for a moment). A
    /// pipeline that would not fit is refused.
    #[arg(long, value_name = "N", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(2..=1024))]
    max_instances: u32,
}

/// `sluice run`: all pipelines until they finish (only files given, every
/// one finished) or a signal comes; changes to watched files apply live.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Files named on the command line must be valid to start at all.
    let mut bad = false;
    for file in args.pipelines.iter().filter(|p| !p.is_dir()) {
        if let Err(e) = config::load(file) {
            eprintln!("{e}");
            bad = true;
        }
    }
    if bad {
        return Ok(ExitCode::FAILURE);
    }
    let token = sluice::admin::load_token(args.admin_token_file.as_deref())?;
    let supervisor =
        sluice::supervisor::Supervisor::new(engine_with(args.max_instances)?, args.pipelines);
    if let Some(addr) = args.admin {
        sluice::admin::serve(addr, supervisor.registry(), token).await?;
    }
    let ok = supervisor.run(wait_for_signal()).await?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `sluice call`: run a handler on payloads and print what happened.
pub async fn call(args: CallArgs) -> anyhow::Result<ExitCode> {
    let parse_dur = |s: &str| -> anyhow::Result<Duration> {
        Ok(toml::Value::String(s.into())
            .try_into::<units::Dur>()
            .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?
            .0)
    };
    let parse_size = |s: &str| -> anyhow::Result<u64> {
        Ok(toml::Value::String(s.into())
            .try_into::<units::Size>()
            .map_err(|e| anyhow::anyhow!("--memory: {e}"))?
            .0)
    };
    let mut spec = PluginSpec::new(&args.plugin);
    spec.fuel = args.fuel;
    spec.timeout = parse_dur(&args.timeout)?;
    spec.memory = parse_size(&args.memory)?;
    for kv in &args.config {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--config {kv:?}: expected KEY=VALUE"))?;
        spec.config.push((k.to_string(), v.to_string()));
    }
    let payloads: Vec<Vec<u8>> = match &args.input {
        Some(p) if p.as_os_str() == "-" => {
            let mut s = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut s)?;
            split_lines(&s)
        }
        Some(p) => {
            split_lines(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => args.payload.iter().map(|p| p.as_bytes().to_vec()).collect(),
    };
    let engine = engine()?;
    let plugin = Plugin::load(&engine, spec).await?;
    let mut worker = Worker::new(plugin);
    let mut failed = 0;
    for (i, payload) in payloads.into_iter().enumerate() {
        let mut msg = Message::new(args.topic.clone(), payload);
        msg.key = args.key.clone().map(|k| k.into_bytes().into());
        msg.attempt = args.attempt;
        let (result, cost) = worker.handle(&msg).await;
        let n = i + 1;
        match result {
            Ok(outputs) => {
                if args.json {
                    let outs: Vec<serde_json::Value> = outputs.iter().map(|o| serde_json::json!({
                        "sink": o.sink, "topic": o.topic,
                        "key": o.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
                        "payload": String::from_utf8_lossy(&o.payload),
                        "headers": o.headers.iter().map(|h| (h.key.clone(), String::from_utf8_lossy(&h.value).into_owned())).collect::<Vec<_>>(),
                    })).collect();
                    println!(
                        "{}",
                        serde_json::json!({"message": n, "ok": true, "outputs": outs, "fuel": cost.fuel_used})
                    );
                } else {
                    println!(
                        "#{n} ok: {} output(s), fuel {}, {:?}",
                        outputs.len(),
                        cost.fuel_used,
                        cost.elapsed
                    );
                    for o in &outputs {
                        let mut line = String::from("  ->");
                        if let Some(s) = &o.sink {
                            line += &format!(" sink={s}");
                        }
                        if let Some(t) = &o.topic {
                            line += &format!(" topic={t}");
                        }
                        if let Some(k) = &o.key {
                            line += &format!(" key={}", String::from_utf8_lossy(k));
                        }
                        for h in &o.headers {
                            line += &format!(" {}={}", h.key, String::from_utf8_lossy(&h.value));
                        }
                        println!("{line} {}", String::from_utf8_lossy(&o.payload));
                    }
                }
            }
            Err(f) => {
                failed += 1;
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({"message": n, "ok": false, "class": f.class.as_str(), "error": f.message})
                    );
                } else {
                    println!("#{n} {}: {}", f.class, f.message);
                }
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn split_lines(data: &[u8]) -> Vec<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = data.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    if lines.last().is_some_and(Vec::is_empty) {
        lines.pop();
    }
    lines
}
