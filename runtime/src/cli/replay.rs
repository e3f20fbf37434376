//! `sluice replay`: dead-letter records back through a pipeline, or with
//! `--dry-run`, what would be replayed and what the handler would answer.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use sluice::authoring::replay::{Filter, ReplaySource, position};
use sluice::config::{self, units};
use sluice::engine::{Plugin, PluginSpec, Worker};
use sluice::failure::FailureClass;
use sluice::pipeline::{DEFAULT_PUBLISH_TIMEOUT, Parts, Pipeline, Sinks};
use sluice::router::Policy;
use sluice::sources::Source;

/// Arguments of `sluice replay`.
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// A pipeline file whose `[source]` reads the dead-letter records (a
    /// `file` with `format = "envelope"`, a Kafka or MQTT topic, a JetStream
    /// stream); its handler, sinks and dead letter take the replayed messages.
    pipeline: PathBuf,
    /// The handler to replay through instead of the pipeline's.
    #[arg(long, value_name = "WASM")]
    plugin: Option<PathBuf>,
    /// Only records of this failure class (repeatable).
    #[arg(long = "class", value_name = "CLASS", value_parser = parse_class)]
    classes: Vec<FailureClass>,
    /// Only records dead-lettered by this pipeline.
    #[arg(long, value_name = "NAME")]
    failed_in: Option<String>,
    /// Only records failed by this plugin digest (or a prefix of it).
    #[arg(long, value_name = "DIGEST")]
    digest: Option<String>,
    /// Only records that failed at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    since: Option<SystemTime>,
    /// Only records that failed before this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    until: Option<SystemTime>,
    /// Only records whose source topic was this.
    #[arg(long, value_name = "TOPIC")]
    topic: Option<String>,
    /// Show what would be replayed and what the handler would answer;
    /// publish nothing and settle nothing.
    #[arg(long)]
    dry_run: bool,
    /// End once no record came for this long, e.g. "5s".
    #[arg(long, default_value = "5s", value_parser = parse_dur)]
    idle: Duration,
    /// With --dry-run: the most records shown.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Allow filters on an MQTT dead letter, whose broker keeps nothing once
    /// acknowledged: the records the filters leave out are then gone.
    #[arg(long)]
    discard_left_out: bool,
}

fn parse_class(s: &str) -> Result<FailureClass, String> {
    FailureClass::ALL
        .into_iter()
        .find(|c| c.as_str() == s)
        .ok_or_else(|| {
            let all: Vec<&str> = FailureClass::ALL.iter().map(|c| c.as_str()).collect();
            format!("unknown class {s:?} (one of {})", all.join(", "))
        })
}

fn parse_time(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(s).map_err(|e| format!("{s:?}: {e} (e.g. 2026-01-31T12:00:00Z)"))
}

fn parse_dur(s: &str) -> Result<Duration, String> {
    toml::Value::String(s.into())
        .try_into::<units::Dur>()
        .map(|d| d.0)
        .map_err(|e| e.to_string())
}

/// `sluice replay`.
pub async fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = match config::load(&args.pipeline) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Some(p) = &args.plugin {
        cfg.handler.plugin = p.clone();
    }
    let name = cfg.name.clone();
    let engine = super::engine()?;
    let plugin = Plugin::load(&engine, PluginSpec::from_config(&name, &cfg.handler))
        .await
        .with_context(|| format!("{}: handler.plugin", args.pipeline.display()))?;
    let id = format!(
        "{name}@{}",
        humantime::format_rfc3339_millis(SystemTime::now())
    );
    let filter = Filter {
        classes: args.classes,
        pipeline: args.failed_in,
        digest: args.digest,
        since: args.since,
        until: args.until,
        topic: args.topic,
    };
    let filtered = !filter.classes.is_empty()
        || filter.pipeline.is_some()
        || filter.digest.is_some()
        || filter.since.is_some()
        || filter.until.is_some()
        || filter.topic.is_some();
    if filtered
        && !args.dry_run
        && !args.discard_left_out
        && matches!(cfg.source, config::SourceConfig::Mqtt(_))
    {
        eprintln!(
            "{}: [source] is MQTT: a record the filters leave out is acknowledged, and an MQTT broker keeps nothing once acknowledged. Replay without filters, or pass --discard-left-out to drop what they leave out.",
            args.pipeline.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    let inner = sluice::connect::open_source(&cfg.source, &name)
        .await
        .with_context(|| format!("{}: opening [source]", args.pipeline.display()))?;
    let mut source = ReplaySource::new(inner, filter, id.clone(), args.idle);
    let seen = source.seen.clone();
    if args.dry_run {
        return dry_run(source, plugin, args.limit).await;
    }
    let open = |s, dead_letter, what: String| {
        let name = name.clone();
        async move {
            sluice::connect::open_sink(s, dead_letter, &name)
                .await
                .with_context(|| format!("opening {what}"))
        }
    };
    let mut sinks = Sinks::default();
    if let Some(s) = &cfg.sink {
        sinks.default = Some(open(s, false, "[sink]".into()).await?);
    }
    for (n, s) in &cfg.sinks {
        sinks
            .named
            .insert(n.clone(), open(s, false, format!("[sinks.{n}]")).await?);
    }
    let dead_letter = match &cfg.dead_letter {
        Some(s) => Some(open(s, true, "[dead_letter]".into()).await?),
        None => None,
    };
    source.hold_skipped = None;
    let pipeline = Pipeline::new(Parts {
        name: name.clone(),
        source: Box::new(source),
        plugin,
        sinks,
        dead_letter,
        policy: Policy {
            errors: cfg.errors.clone(),
            retry: cfg.retry.clone(),
        },
        breaker: cfg.circuit_breaker.clone(),
        dedup: None,
        concurrency: cfg.handler.concurrency,
        publish_window: cfg.handler.publish_window,
        batch: cfg.handler.batch,
        publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
    });
    let snap = pipeline.run(super::wait_for_signal()).await?;
    println!(
        "replay {id}: {} record(s) replayed: {} succeeded ({} output(s)), {} dead-lettered again, {} dropped; {} left out by the filters",
        seen.replayed.load(Relaxed),
        snap.succeeded,
        snap.outputs,
        snap.dead_lettered,
        snap.dropped,
        seen.skipped.load(Relaxed),
    );
    Ok(ExitCode::SUCCESS)
}

/// `--dry-run`: each record the filters select and the handler's answer.
/// Every delivery is held until the end and never settled, so the dead
/// letters stay where they are.
async fn dry_run(
    mut source: ReplaySource,
    plugin: Plugin,
    limit: usize,
) -> anyhow::Result<ExitCode> {
    source.hold_skipped = Some(Vec::new());
    let mut worker = Worker::new(plugin);
    let mut held = Vec::new();
    while held.len() < limit {
        let Some(d) = source.next().await.map_err(|e| anyhow::anyhow!("{e}"))? else {
            break;
        };
        let at = position(&d.message);
        let msg = &d.message;
        let answer = match &d.decode_error {
            Some(e) => format!("not a record ({e}): would be dead-lettered again as decode"),
            None => match worker.handle(msg).await.0 {
                Ok(outs) => format!(
                    "ok: {} output(s){}",
                    outs.len(),
                    outs.iter()
                        .map(|o| format!(" {:?}", String::from_utf8_lossy(&o.payload)))
                        .collect::<String>()
                ),
                Err(f) => format!("{f}"),
            },
        };
        println!(
            "{} (topic {}, {} byte(s)): {answer}",
            at,
            msg.topic,
            msg.payload.len()
        );
        held.push(d.into_parts().2);
    }
    let skipped = source.hold_skipped.take().unwrap_or_default();
    println!(
        "dry run: {} record(s) would be replayed, {} left out by the filters; nothing was changed",
        held.len(),
        skipped.len()
    );
    for d in skipped {
        drop(d.into_parts());
    }
    source.close().await;
    Ok(ExitCode::SUCCESS)
}
