//! Turns a validated [`PipelineConfig`] into a runnable [`Pipeline`]: opens
//! the source and sinks it names and loads its plugin.

use std::sync::Arc;

use anyhow::Context;

use crate::brokers::kafka::txn::Txn;
use crate::config::kafka::KafkaSinkConfig;
use crate::config::{FileSinkFormat, PipelineConfig, SinkConfig, SourceConfig};
use crate::engine::{Engine, Plugin, PluginSpec};
use crate::files::SyncTarget;
use crate::pipeline::{DEFAULT_PUBLISH_TIMEOUT, Parts, Pipeline, Sinks};
use crate::policy::Policy;
use crate::policy::dedup::Dedup;
use crate::sinks::Sink;
use crate::sources::Source;

/// Opens the source a `[source]` table describes.
pub async fn open_source(cfg: &SourceConfig, pipeline: &str) -> anyhow::Result<Box<dyn Source>> {
    use crate::sources::{jetstream, kafka, mqtt, nats};
    Ok(match cfg {
        SourceConfig::File(f) => Box::new(crate::sources::file::open(f)?),
        SourceConfig::Kafka(c) => Box::new(kafka::open(c, pipeline).await?),
        SourceConfig::Mqtt(c) => Box::new(mqtt::open(c, pipeline).await?),
        SourceConfig::Nats(c) => Box::new(nats::open(c, pipeline).await?),
        SourceConfig::Jetstream(c) => Box::new(jetstream::open(c, pipeline).await?),
    })
}

/// Opens a sink; `dead_letter` picks the defaults for dead letters.
pub async fn open_sink(
    cfg: &SinkConfig,
    dead_letter: bool,
    pipeline: &str,
) -> anyhow::Result<Arc<dyn Sink>> {
    open_sink_syncing(cfg, dead_letter, pipeline, None, None).await
}

/// The transaction of a `delivery = "exactly-once"` kafka source: one
/// producer with the settings of the first kafka sink (validation made them
/// all alike), or of the source's cluster when there is none.
async fn open_txn(cfg: &PipelineConfig) -> anyhow::Result<Option<Arc<Txn>>> {
    let SourceConfig::Kafka(src) = &cfg.source else {
        return Ok(None);
    };
    if !src.exactly_once() {
        return Ok(None);
    }
    let sink = cfg
        .sink
        .iter()
        .chain(cfg.sinks.values())
        .chain(cfg.dead_letter.iter())
        .find_map(|s| match s {
            SinkConfig::Kafka(k) => Some(k.clone()),
            _ => None,
        });
    let sink = match sink {
        Some(k) => k,
        None => {
            let mut k: KafkaSinkConfig = toml::from_str(&format!("brokers = {:?}", src.brokers))
                .context("kafka: the transactional producer's settings")?;
            k.security = src.security.clone();
            k
        }
    };
    let mut c = crate::sinks::kafka::producer_config(&sink, &cfg.name)?;
    let timeout = src.transaction_timeout.0;
    // librdkafka requires a record's timeout within the transaction's.
    let message_timeout = sink.timeout.0.min(timeout);
    c.set("transactional.id", src.transactional_id_for(&cfg.name))
        .set("transaction.timeout.ms", timeout.as_millis().to_string())
        .set(
            "message.timeout.ms",
            message_timeout.as_millis().to_string(),
        );
    Txn::open(c, &cfg.name)
        .await
        .map(Some)
        .with_context(|| format!("pipeline {}: opening the kafka transaction", cfg.name))
}

/// [`open_sink`]; a `file` sink with `fsync = true` hands its syncing to
/// `defer` when given (the pipeline's `file` source syncs it before each
/// checkpoint instead of after each write).
async fn open_sink_syncing(
    cfg: &SinkConfig,
    dead_letter: bool,
    pipeline: &str,
    defer: Option<&mut Vec<SyncTarget>>,
    txn: Option<&Arc<Txn>>,
) -> anyhow::Result<Arc<dyn Sink>> {
    use crate::sinks::{jetstream, kafka, mqtt, nats};
    if let (SinkConfig::Kafka(c), Some(t)) = (cfg, txn) {
        return Ok(Arc::new(kafka::open_transactional(c, t.clone())?));
    }
    Ok(match cfg {
        SinkConfig::File(f) => {
            let format = if dead_letter {
                FileSinkFormat::Envelope
            } else {
                FileSinkFormat::Lines
            };
            let sink = crate::sinks::file::open(f, format)?;
            if let Some(defer) = defer {
                defer.extend(sink.defer_sync());
            }
            Arc::new(sink)
        }
        SinkConfig::Kafka(c) => Arc::new(kafka::open(c, pipeline).await?),
        SinkConfig::Mqtt(c) => Arc::new(mqtt::open_with(c, pipeline, dead_letter).await?),
        SinkConfig::Nats(c) => Arc::new(nats::open(c, pipeline).await?),
        SinkConfig::Jetstream(c) => Arc::new(jetstream::open(c, pipeline).await?),
    })
}

/// Loads the plugin and opens everything a pipeline needs.
pub async fn build(cfg: &PipelineConfig, engine: &Engine) -> anyhow::Result<Pipeline> {
    let plugin = Plugin::load(engine, PluginSpec::from_config(&cfg.name, &cfg.handler)).await?;
    build_with_plugin(cfg, plugin).await
}

/// Opens everything a pipeline needs, with a plugin already loaded.
pub async fn build_with_plugin(cfg: &PipelineConfig, plugin: Plugin) -> anyhow::Result<Pipeline> {
    let name = &cfg.name;
    // Behind a `file` source (not standard input), file sinks with `fsync`
    // leave syncing to the source's checkpoint.
    let mut sync = Vec::new();
    let mut defer = match &cfg.source {
        SourceConfig::File(f) if f.path != std::path::Path::new("-") => Some(&mut sync),
        _ => None,
    };
    let txn = open_txn(cfg).await?;
    let mut sinks = Sinks::default();
    if let Some(s) = &cfg.sink {
        sinks.default = Some(
            open_sink_syncing(s, false, name, defer.as_deref_mut(), txn.as_ref())
                .await
                .with_context(|| format!("pipeline {name}: opening [sink]"))?,
        );
    }
    for (sink_name, s) in &cfg.sinks {
        let sink = open_sink_syncing(s, false, name, defer.as_deref_mut(), txn.as_ref())
            .await
            .with_context(|| format!("pipeline {name}: opening [sinks.{sink_name}]"))?;
        sinks.named.insert(sink_name.clone(), sink);
    }
    let dead_letter = match &cfg.dead_letter {
        Some(s) => Some(
            open_sink_syncing(s, true, name, defer, txn.as_ref())
                .await
                .with_context(|| format!("pipeline {name}: opening [dead_letter]"))?,
        ),
        None => None,
    };
    let source: Box<dyn Source> = match &cfg.source {
        SourceConfig::File(f) => Box::new(
            crate::sources::file::open_with(f, sync)
                .with_context(|| format!("pipeline {name}: opening [source]"))?,
        ),
        SourceConfig::Kafka(k) if txn.is_some() => Box::new(
            crate::sources::kafka::open_with(k, name, txn.clone())
                .await
                .with_context(|| format!("pipeline {name}: opening [source]"))?,
        ),
        other => open_source(other, name)
            .await
            .with_context(|| format!("pipeline {name}: opening [source]"))?,
    };
    Ok(Pipeline::new(Parts {
        name: name.clone(),
        source,
        plugin,
        sinks,
        dead_letter,
        policy: Policy {
            errors: cfg.errors.clone(),
            retry: cfg.retry.clone(),
        },
        breaker: cfg.circuit_breaker.clone(),
        dedup: cfg.dedup.as_ref().and_then(Dedup::new),
        concurrency: cfg.handler.concurrency,
        publish_window: cfg.handler.publish_window,
        batch: cfg.handler.batch,
        publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
    }))
}
