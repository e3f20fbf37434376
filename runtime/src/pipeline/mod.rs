//! One pipeline: source → (dedup) → handler → sinks → settle, with failures
//! routed by the policy table and intake gated by the circuit breaker.
//!
//! The stages, each a module: `intake` (the dispatcher), `worker` (the
//! handler call and the publish window), `publish` (outputs → sink records,
//! dead letters), `failed` (the policy's decision for a failed message
//! carried out), and for the plugin versions `slot` (the stable version and
//! a canary, swapped while running), `canary` (the canary's counts and rule)
//! and `lanes` (a worker's instance of each version). This module holds what
//! they share and [`Pipeline::run`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use crate::engine::Plugin;
use crate::failure::Failure;
use crate::message::Message;
use crate::policy::Policy;
use crate::policy::breaker::Breaker;
use crate::policy::dedup::Dedup;
use crate::sinks::Sink;
use crate::sources::{Delivery, Settle, Settlement, Source};
use crate::stats::{Snapshot, Stats};
use intake::dispatch;
use publish::close_sinks;
use worker::worker;

pub mod canary;
mod failed;
mod intake;
mod lanes;
mod publish;
mod slot;
mod window;
mod worker;

pub use slot::{History, PluginSlot};

/// Deliveries queued per worker: small, so a slow handler slows intake.
const WORKER_QUEUE: usize = 16;
/// Longest a publish may take before it counts as a `sink` failure.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// The sinks a pipeline publishes to.
#[derive(Clone, Default)]
pub struct Sinks {
    /// Outputs that name no sink go here.
    pub default: Option<Arc<dyn Sink>>,
    /// Outputs naming a sink go to the one of that name.
    pub named: HashMap<String, Arc<dyn Sink>>,
}

/// Why a pipeline ended other than by finishing or by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The policy said `stop` for a failure.
    #[error("pipeline {pipeline} stopped by policy after a {failure}")]
    Stopped { pipeline: String, failure: Failure },
    /// The source failed for good (bad credentials, missing topic, ...).
    #[error("pipeline {pipeline}: source failed: {message}")]
    Source { pipeline: String, message: String },
    /// A part of the pipeline panicked (a bug in Sluice or a library it
    /// uses). What it held was never settled: the source delivers it again.
    #[error("pipeline {pipeline} crashed: {message}")]
    Crashed { pipeline: String, message: String },
}

/// The parts a pipeline is made of.
pub struct Parts {
    pub name: String,
    pub source: Box<dyn Source>,
    pub plugin: Plugin,
    pub sinks: Sinks,
    pub dead_letter: Option<Arc<dyn Sink>>,
    pub policy: Policy,
    pub breaker: crate::config::BreakerConfig,
    pub dedup: Option<Dedup>,
    /// Workers; messages with the same key stay in order.
    pub concurrency: usize,
    /// Messages one worker may have sent and not yet seen accepted by the
    /// sink; 1 = wait for each publish before the next message.
    pub publish_window: usize,
    /// Most messages one handler call may take (already waiting ones only).
    pub batch: usize,
    pub publish_timeout: Duration,
}

struct Shared {
    name: String,
    plugin: PluginSlot,
    sinks: Sinks,
    dead_letter: Option<Arc<dyn Sink>>,
    policy: Policy,
    breaker: Arc<Breaker>,
    stats: Arc<Stats>,
    redelivers: bool,
    dedup: Option<Arc<Mutex<Dedup>>>,
    publish_timeout: Duration,
    publish_window: usize,
    batch: usize,
    /// Set by a worker whose message the policy says to `stop` on.
    stopping: AtomicBool,
    stop_failure: Mutex<Option<Failure>>,
    /// Set at shutdown: retries are handed back to the source instead of slept.
    shutting_down: AtomicBool,
    wake: Notify,
}

/// A pipeline ready to run.
pub struct Pipeline {
    source: Box<dyn Source>,
    shared: Arc<Shared>,
    concurrency: usize,
}

impl Pipeline {
    pub fn new(mut parts: Parts) -> Self {
        let redelivers = parts.source.redelivers();
        let stats = Arc::new(Stats::default());
        parts.source.report_lag(stats.source_lag.clone());
        parts.source.report_drops(stats.source_drops.clone());
        parts.source.report_health(stats.source_health.clone());
        Pipeline {
            source: parts.source,
            concurrency: parts.concurrency.max(1),
            shared: Arc::new(Shared {
                breaker: Arc::new(Breaker::new(parts.breaker, &parts.name)),
                plugin: PluginSlot::new(&parts.name, parts.plugin),
                name: parts.name,
                sinks: parts.sinks,
                dead_letter: parts.dead_letter,
                policy: parts.policy,
                stats,
                redelivers,
                dedup: parts.dedup.map(|d| Arc::new(Mutex::new(d))),
                publish_timeout: parts.publish_timeout,
                publish_window: parts.publish_window.max(1),
                batch: parts.batch.max(1),
                stopping: AtomicBool::new(false),
                stop_failure: Mutex::new(None),
                shutting_down: AtomicBool::new(false),
                wake: Notify::new(),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// The handle to swap the plugin while running.
    pub fn plugin_slot(&self) -> PluginSlot {
        self.shared.plugin.clone()
    }

    /// The breaker, for state reporting.
    pub fn breaker(&self) -> Arc<Breaker> {
        self.shared.breaker.clone()
    }

    /// Runs until the source is finished, `shutdown` resolves, or the policy
    /// says stop. On shutdown, intake stops and messages in flight are
    /// finished or handed back to the source, never lost.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Snapshot, PipelineError> {
        let sh = self.shared.clone();
        let mut senders = Vec::with_capacity(self.concurrency);
        let mut queues = Vec::with_capacity(self.concurrency);
        for _ in 0..self.concurrency {
            // Room for a whole batch to be waiting.
            let (tx, rx) = mpsc::channel::<Delivery>(WORKER_QUEUE.max(sh.batch));
            senders.push(tx);
            queues.push(rx);
        }
        let source_error = if queues.len() == 1 {
            // One worker runs in this task beside the dispatcher: handing it
            // a message is then no wake-up of another thread.
            let rx = queues.remove(0);
            let intake = dispatch(&mut self.source, &sh, senders, shutdown);
            tokio::join!(intake, worker(sh.clone(), rx)).0
        } else {
            let workers: Vec<_> = queues
                .into_iter()
                .map(|rx| tokio::spawn(worker(sh.clone(), rx)))
                .collect();
            let source_error = dispatch(&mut self.source, &sh, senders, shutdown).await;
            let mut crashed = None;
            for w in workers {
                if let Err(e) = w.await {
                    tracing::error!(pipeline = %sh.name, "worker task failed: {e}");
                    crashed.get_or_insert(e.to_string());
                }
            }
            if let Some(message) = crashed {
                self.source.close().await;
                close_sinks(&sh).await;
                return Err(PipelineError::Crashed {
                    pipeline: sh.name.clone(),
                    message,
                });
            }
            source_error
        };
        // Deliveries settled after close still reach the source's checkpoint.
        self.source.close().await;
        close_sinks(&sh).await;
        if let Some(message) = source_error {
            return Err(PipelineError::Source {
                pipeline: sh.name.clone(),
                message,
            });
        }
        let stopped = sh
            .stop_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(failure) = stopped {
            return Err(PipelineError::Stopped {
                pipeline: sh.name.clone(),
                failure,
            });
        }
        Ok(sh.stats.snapshot())
    }
}

async fn settle(sh: &Shared, handle: Box<dyn Settle>, how: Settlement) {
    if matches!(how, Settlement::Redeliver { .. }) {
        sh.stats.redelivered.fetch_add(1, Relaxed);
    }
    if let Err(e) = handle.settle(how).await {
        // Not settled means the broker redelivers it: a duplicate, never a loss.
        tracing::warn!(pipeline = %sh.name, "settle ({how:?}) failed: {e:#}");
    }
}

/// Hands a delivery back to the source untouched, to be delivered again
/// now (shutdown, a stop by policy, no dead letter to write to).
async fn hand_back(sh: &Shared, handle: Box<dyn Settle>) {
    settle(
        sh,
        handle,
        Settlement::Redeliver {
            delay: Duration::ZERO,
        },
    )
    .await;
}

fn remember(sh: &Shared, msg: &Message) {
    if let Some(dedup) = &sh.dedup {
        let mut d = dedup.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = d.id(msg) {
            d.remember(id);
        }
    }
}
