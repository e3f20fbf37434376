//! One pipeline: source → (dedup) → handler → sinks → settle, with failures
//! routed by the policy table and intake gated by the circuit breaker.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::FutureExt as _;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::engine::{Handled, Plugin, Worker};
use crate::failure::{Failure, FailureClass};
use crate::message::{Message, Output};
use crate::router::breaker::{Breaker, BreakerState};
use crate::router::dedup::{self, Dedup};
use crate::router::{Decision, Policy, backoff, dead_letter};
use crate::sinks::{Accepted, Record, Sink};
use crate::sources::{Answer, Delivery, Settle, Settlement, Source, SourceError};
use crate::stats::{Snapshot, Stats};
use window::Window;

mod window;

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

/// Swaps the plugin version of a running pipeline. Messages in flight finish
/// on the version they started with; the next message uses the new one.
#[derive(Clone)]
pub struct PluginSlot {
    current: Arc<RwLock<Plugin>>,
    version: Arc<AtomicU64>,
}

impl PluginSlot {
    fn new(p: Plugin) -> Self {
        PluginSlot {
            current: Arc::new(RwLock::new(p)),
            version: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The version new messages get.
    pub fn get(&self) -> Plugin {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Installs `p` for the next messages.
    pub fn swap(&self, p: Plugin) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = p;
        self.version.fetch_add(1, Relaxed);
    }
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
                name: parts.name,
                plugin: PluginSlot::new(parts.plugin),
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

/// Takes deliveries from the source while the breaker admits them, drops
/// duplicates and hands each to its worker, until the source ends, shutdown
/// or a stop; then closes intake. Returns the source's fatal error, if any.
async fn dispatch(
    source: &mut Box<dyn Source>,
    sh: &Arc<Shared>,
    senders: Vec<mpsc::Sender<Delivery>>,
    shutdown: impl Future<Output = ()>,
) -> Option<String> {
    tokio::pin!(shutdown);
    let mut round_robin = 0usize;
    let mut source_error = None;
    // A request/reply source is not paused by the breaker: its requests are
    // taken and answered `unavailable` while it admits nothing.
    let answers_requests = source.answers_requests();
    loop {
        if sh.stopping.load(Relaxed) {
            break;
        }
        if !answers_requests && sh.breaker.state() != BreakerState::Closed {
            source.pause();
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = sh.wake.notified() => continue,
                _ = sh.breaker.admit() => {}
            }
            source.resume();
        }
        // A delivery the source already holds is taken without the select
        // (a boxed `next` future and a wake-up registration per message);
        // shutdown is still seen first.
        if shutdown.as_mut().now_or_never().is_some() {
            break;
        }
        let next = match source.try_next() {
            Some(n) => n,
            None => tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = sh.wake.notified() => continue,
                n = source.next() => n,
            },
        };
        let delivery = match next {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(SourceError::Fatal(message)) => {
                tracing::error!(pipeline = %sh.name, "source failed: {message}");
                source_error = Some(message);
                break;
            }
            Err(SourceError::Transient(message)) => {
                tracing::warn!(pipeline = %sh.name, "source: {message}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        sh.stats.received.fetch_add(1, Relaxed);
        let delivery = match &sh.dedup {
            Some(dedup) => match dedup_check(sh, dedup, delivery).await {
                Some(d) => d,
                None => continue,
            },
            None => delivery,
        };
        if answers_requests && sh.breaker.state() != BreakerState::Closed && !sh.breaker.try_admit()
        {
            if delivery.wants_answer() {
                shed(
                    sh,
                    delivery,
                    "circuit breaker open: the request was not handled",
                );
                continue;
            }
            // A plain message on the subject waits for the breaker.
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    hand_back(sh, delivery.into_parts().2).await;
                    break;
                }
                _ = sh.breaker.admit() => {}
            }
        }
        let shard = shard_of(&delivery.message, senders.len(), &mut round_robin);
        // A full queue (a worker holding a message for the breaker, a
        // slow handler) must not keep shutdown from being seen.
        let permit = tokio::select! {
            biased;
            _ = &mut shutdown => {
                hand_back(sh, delivery.into_parts().2).await;
                break;
            }
            p = senders[shard].reserve() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        permit.send(delivery);
    }
    sh.shutting_down.store(true, Relaxed);
    // Wake workers holding a message for the breaker or sleeping a retry.
    sh.wake.notify_waiters();
    drop(senders);
    source.close().await;
    source_error
}

/// Answers a request the pipeline will not handle (`unavailable`, `why`)
/// and counts it as shed. The reply is sent from a task of its own, so a
/// burst of shed requests does not hold intake for a flush each.
fn shed(sh: &Shared, delivery: Delivery, why: &str) {
    let (_, _, mut handle) = delivery.into_parts();
    handle.answer(Answer::Unavailable(why.to_string()));
    sh.stats.shed.fetch_add(1, Relaxed);
    let reply = handle.settle(Settlement::Terminated);
    let name = sh.name.clone();
    tokio::spawn(async move {
        if let Err(e) = reply.await {
            tracing::warn!(pipeline = %name, "answering a shed request failed: {e:#}");
        }
    });
}

async fn close_sinks(sh: &Shared) {
    let all = sh
        .sinks
        .default
        .iter()
        .chain(sh.sinks.named.values())
        .chain(sh.dead_letter.iter());
    for s in all {
        if let Err(e) = s.close().await {
            tracing::warn!(pipeline = %sh.name, "closing a sink: {e:#}");
        }
    }
}

/// Same key → same worker; no key → same partition / topic → same worker, so
/// a partition's order holds; round robin only when there is neither.
fn shard_of(msg: &Message, n: usize, rr: &mut usize) -> usize {
    if n == 1 {
        return 0;
    }
    let mut h = DefaultHasher::new();
    match (&msg.key, msg.partition) {
        (Some(k), _) => k.hash(&mut h),
        (None, Some(p)) => (&msg.topic, p).hash(&mut h),
        (None, None) => {
            *rr = (*rr + 1) % n;
            return *rr;
        }
    }
    (h.finish() % n as u64) as usize
}

/// A message whose outputs were sent, waiting for the sink to accept them.
/// Moved several times per message: kept small (the reply, which only a
/// request has, is boxed).
struct Sent {
    msg: Message,
    /// What its record ids are derived from, kept for its retries.
    ids: Ids,
    handle: Box<dyn Settle>,
    reply: Option<Box<Output>>,
    outputs: usize,
}

/// A call's outputs, sent: the reply (for a request), how many went to
/// sinks, and the wait for their acceptance, due by `deadline`.
struct Sending {
    reply: Option<Box<Output>>,
    outputs: usize,
    accepted: Accepted,
    deadline: Instant,
}

async fn worker(sh: Arc<Shared>, mut rx: mpsc::Receiver<Delivery>) {
    let mut version = sh.plugin.version.load(Relaxed);
    let mut w = Worker::new(sh.plugin.get());
    let mut window = Window::new(sh.publish_timeout);
    let mut batch: Vec<Delivery> = Vec::with_capacity(sh.batch);
    loop {
        // Settle what the sink accepted first; take a new message only while
        // the window has room.
        let d = tokio::select! {
            biased;
            Some((sent, accepted)) = window.next(), if !window.is_empty() => {
                finish(&sh, &mut w, sent, accepted).await;
                continue;
            }
            d = rx.recv(), if window.len() < sh.publish_window => match d {
                Some(d) => d,
                None => break,
            },
        };
        // What is already waiting joins it, as far as the batch size and
        // the window allow; nothing waits for a batch to fill.
        batch.push(d);
        let room = sh.batch.min(sh.publish_window - window.len());
        while batch.len() < room {
            match rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        let v = sh.plugin.version.load(Relaxed);
        if v != version {
            version = v;
            w.set_plugin(sh.plugin.get());
        }
        run_batch(&sh, &mut w, &mut window, &mut batch).await;
    }
    while let Some((sent, accepted)) = window.next().await {
        finish(&sh, &mut w, sent, accepted).await;
    }
}

/// Handles `batch` (emptying it): one handler call for all the messages
/// where the plugin takes batches, then each message's outputs sent in
/// order, or its failure taken down the failure path.
async fn run_batch(
    sh: &Shared,
    w: &mut Worker,
    window: &mut Window<Sent>,
    batch: &mut Vec<Delivery>,
) {
    sh.stats.in_flight.fetch_add(batch.len() as u64, Relaxed);
    let answers: Vec<Handled> = if batch.len() > 1 && !sh.stopping.load(Relaxed) {
        let msgs: Vec<&Message> = batch
            .iter()
            .filter(|d| d.decode_error.is_none())
            .map(|d| &d.message)
            .collect();
        let answers = w.handle_batch(&msgs).await;
        sh.stats.batched.fetch_add(answers.len() as u64, Relaxed);
        answers
    } else {
        Vec::new()
    };
    // Answers belong to the decoded messages in order; those without one
    // (no batch, or after the batch's failure) are handled one per call.
    let mut answers = answers.into_iter();
    for (msg, decode_error, handle) in batch.drain(..).map(Delivery::into_parts) {
        if sh.stopping.load(Relaxed) {
            // The pipeline is stopping by policy: hand the rest back untouched.
            hand_back(sh, handle).await;
            sh.stats.in_flight.fetch_sub(1, Relaxed);
            continue;
        }
        let ids = Ids::of(&msg);
        let first = match &decode_error {
            Some(e) => Failure::new(FailureClass::Decode, e.clone()),
            None => {
                let answer = match answers.next() {
                    Some(a) => a,
                    None => w.handle(&msg).await,
                };
                match send_answer(sh, answer, &msg, ids, handle.wants_answer()).await {
                    Ok(s) => {
                        let sent = Sent {
                            msg,
                            ids,
                            handle,
                            reply: s.reply,
                            outputs: s.outputs,
                        };
                        window.push(sent, s.accepted, s.deadline);
                        continue;
                    }
                    Err(f) => f,
                }
            }
        };
        // A failure is handled with nothing else in flight: what was sent
        // before it is settled first, retries then run one at a time.
        while let Some((sent, accepted)) = window.next().await {
            finish(sh, w, sent, accepted).await;
        }
        // Boxed: the failure path's future is large, and every future
        // that holds it in place is copied at each call and await.
        Box::pin(failed(sh, w, msg, handle, ids, decode_error, first)).await;
    }
}

/// Settles a sent message once its outputs were accepted, or takes it down
/// the failure path.
async fn finish(sh: &Shared, w: &mut Worker, sent: Sent, accepted: Result<(), Failure>) {
    let Sent {
        msg,
        ids,
        handle,
        reply,
        outputs,
    } = sent;
    match accepted {
        Ok(()) => {
            succeeded(sh, &msg, handle, reply, outputs).await;
            sh.stats.in_flight.fetch_sub(1, Relaxed);
        }
        // Boxed, as in `run_batch`: `finish` runs for every message.
        Err(f) => Box::pin(failed(sh, w, msg, handle, ids, None, f)).await,
    }
}

/// The failure path of one message; records a `stop` from the policy.
async fn failed(
    sh: &Shared,
    w: &mut Worker,
    msg: Message,
    handle: Box<dyn Settle>,
    ids: Ids,
    decode_error: Option<String>,
    f: Failure,
) {
    let result = process(sh, w, msg, handle, ids, decode_error, f).await;
    sh.stats.in_flight.fetch_sub(1, Relaxed);
    if let Err(failure) = result {
        tracing::error!(pipeline = %sh.name, "stopping by policy: {failure}");
        *sh.stop_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(failure);
        sh.stopping.store(true, Relaxed);
        sh.wake.notify_waiters();
    }
}

/// Runs the handler and sends its outputs.
async fn call_and_send(
    sh: &Shared,
    w: &mut Worker,
    msg: &Message,
    ids: Ids,
    wants_answer: bool,
) -> Result<Sending, Failure> {
    let answer = w.handle(msg).await;
    send_answer(sh, answer, msg, ids, wants_answer).await
}

/// Sends the outputs of a handler's answer (see [`call_and_send`]).
async fn send_answer(
    sh: &Shared,
    (result, cost): Handled,
    msg: &Message,
    ids: Ids,
    wants_answer: bool,
) -> Result<Sending, Failure> {
    sh.stats.fuel_used.fetch_add(cost.fuel_used, Relaxed);
    if cost.log_dropped > 0 {
        sh.stats
            .guest_log_dropped
            .fetch_add(u64::from(cost.log_dropped), Relaxed);
    }
    sh.stats.handler_latency.observe(cost.elapsed);
    let mut outputs = result?;
    // A request's first output is its reply, not a sink record.
    let reply = (wants_answer && !outputs.is_empty()).then(|| Box::new(outputs.remove(0)));
    let n = outputs.len();
    let deadline = Instant::now() + sh.publish_timeout;
    let accepted = send(sh, msg, ids, outputs, deadline).await?;
    Ok(Sending {
        reply,
        outputs: n,
        accepted,
        deadline,
    })
}

async fn succeeded(
    sh: &Shared,
    msg: &Message,
    mut handle: Box<dyn Settle>,
    reply: Option<Box<Output>>,
    outputs: usize,
) {
    if let Some(r) = reply {
        handle.answer(Answer::Reply(*r));
    }
    sh.stats.outputs.fetch_add(outputs as u64, Relaxed);
    sh.stats.succeeded.fetch_add(1, Relaxed);
    sh.breaker.success();
    remember(sh, msg);
    settle(sh, handle, Settlement::Ack).await;
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

/// Sleeps unless shutdown starts first; true when the sleep completed.
async fn sleep_unless_shutdown(sh: &Shared, d: Duration) -> bool {
    if sh.shutting_down.load(Relaxed) {
        return false;
    }
    let deadline = tokio::time::Instant::now() + d;
    loop {
        let notified = sh.wake.notified();
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return true,
            _ = notified => if sh.shutting_down.load(Relaxed) || sh.stopping.load(Relaxed) { return false },
        }
    }
}

/// Takes a message that failed with `first` to its end: retried (handler
/// and publish again, one at a time), dead-lettered, dropped or stopped on,
/// as the policy says. `Err` means the policy said stop.
async fn process(
    sh: &Shared,
    w: &mut Worker,
    mut msg: Message,
    mut handle: Box<dyn Settle>,
    ids: Ids,
    decode_error: Option<String>,
    first: Failure,
) -> Result<(), Failure> {
    let mut next = Some(first);
    loop {
        let failure = match (next.take(), &decode_error) {
            (Some(f), _) => f,
            (None, Some(e)) => Failure::new(FailureClass::Decode, e.clone()),
            (None, None) => match call_and_send(sh, w, &msg, ids, handle.wants_answer()).await {
                Ok(s) => match tokio::time::timeout_at(s.deadline, s.accepted).await {
                    Ok(Ok(())) => {
                        succeeded(sh, &msg, handle, s.reply, s.outputs).await;
                        return Ok(());
                    }
                    Ok(Err(f)) => f,
                    Err(_) => publish_timed_out(sh.publish_timeout),
                },
                Err(f) => f,
            },
        };
        if handle.wants_answer() {
            handle.answer(Answer::Failed(failure.clone()));
        }
        sh.stats.failure(failure.class, &failure.message);
        if failure.broker_full {
            sh.stats.broker_full.fetch_add(1, Relaxed);
        }
        tracing::debug!(pipeline = %sh.name, topic = %msg.topic, offset = ?msg.offset, attempt = msg.attempt, "{failure}");
        let counts_for_breaker = sh.policy.counts_for_breaker(failure.class);
        if counts_for_breaker {
            sh.breaker.failure();
        }
        match sh.policy.decide(failure.class, msg.attempt) {
            Decision::Retry(delay) => {
                sh.stats.retries.fetch_add(1, Relaxed);
                if sh.redelivers {
                    // The broker keeps the schedule (JetStream nak with delay).
                    settle(sh, handle, Settlement::Redeliver { delay }).await;
                    return Ok(());
                }
                if !sleep_unless_shutdown(sh, delay).await {
                    hand_back(sh, handle).await;
                    return Ok(());
                }
                msg.attempt += 1;
            }
            Decision::DeadLetter { exhausted: true }
                if failure.class == FailureClass::Sink && sh.breaker.enabled() =>
            {
                // The sink is away, not the message at fault: do not burn the
                // stream into the dead letter. Open the breaker and try this
                // message again as the probe once it half-opens.
                tracing::warn!(pipeline = %sh.name, "sink failing after {} attempts ({failure}); holding the message", msg.attempt);
                tokio::select! {
                    _ = sh.breaker.hold() => {}
                    _ = wait_shutdown(sh) => {
                        hand_back(sh, handle).await;
                        return Ok(());
                    }
                }
                msg.attempt += 1;
            }
            Decision::DeadLetter { .. } => {
                if !counts_for_breaker {
                    sh.breaker.neutral();
                }
                let Some(dlq) = &sh.dead_letter else {
                    hand_back(sh, handle).await;
                    return Err(Failure::new(
                        failure.class,
                        format!(
                            "{} (and the pipeline has no [dead_letter] to send it to)",
                            failure.message
                        ),
                    ));
                };
                let digest = w.plugin().digest().to_string();
                let record = dead_letter::record(
                    &msg,
                    &failure,
                    msg.attempt,
                    &sh.name,
                    &digest,
                    format!("{}:dlq", ids.base(sh, &msg)),
                );
                match publish_dead_letter(sh, dlq.as_ref(), &record).await {
                    Ok(()) => {
                        sh.stats.dead_lettered.fetch_add(1, Relaxed);
                        remember(sh, &msg);
                        settle(sh, handle, Settlement::Terminated).await;
                    }
                    Err(e) if e.class == FailureClass::Rejected => {
                        // No form of the record fits the sink: trying again
                        // would only spin. Stop; the message stays unsettled.
                        hand_back(sh, handle).await;
                        return Err(Failure::new(
                            FailureClass::Rejected,
                            format!(
                                "the dead-letter sink refuses even the bare record of a message that failed with {failure} ({e}); the pipeline stops"
                            ),
                        ));
                    }
                    Err(e) => {
                        // Not settled: the source delivers it again later.
                        if e.broker_full {
                            sh.stats.broker_full.fetch_add(1, Relaxed);
                        }
                        let delay = backoff::delay(&sh.policy.retry, msg.attempt + 1);
                        tracing::error!(pipeline = %sh.name, "dead-letter write failed ({e}); the message stays unsettled and is redelivered in {delay:?}");
                        settle(sh, handle, Settlement::Redeliver { delay }).await;
                    }
                }
                return Ok(());
            }
            Decision::Drop { .. } => {
                if !counts_for_breaker {
                    sh.breaker.neutral();
                }
                sh.stats.dropped.fetch_add(1, Relaxed);
                tracing::info!(pipeline = %sh.name, "dropped by policy: {failure}");
                remember(sh, &msg);
                settle(sh, handle, Settlement::Ack).await;
                return Ok(());
            }
            Decision::Stop => {
                hand_back(sh, handle).await;
                return Err(failure);
            }
        }
    }
}

async fn wait_shutdown(sh: &Shared) {
    loop {
        let n = sh.wake.notified();
        if sh.shutting_down.load(Relaxed) || sh.stopping.load(Relaxed) {
            return;
        }
        n.await;
    }
}

/// Drops a copy of a message settled within the window (acknowledged),
/// hands back a copy whose original is still being handled (the broker
/// brings it again later), and returns any other delivery with its id kept
/// in flight until it is settled.
async fn dedup_check(
    sh: &Shared,
    dedup: &Arc<Mutex<Dedup>>,
    delivery: Delivery,
) -> Option<Delivery> {
    let (id, seen) = {
        let mut d = dedup.lock().unwrap_or_else(|e| e.into_inner());
        match d.id(&delivery.message) {
            Some(id) => {
                let seen = d.check(&id);
                (Some(id), seen)
            }
            None => (None, dedup::Seen::New),
        }
    };
    let how = match (seen, id) {
        (dedup::Seen::New, None) => return Some(delivery),
        (dedup::Seen::New, Some(id)) => {
            let (msg, decode_error, handle) = delivery.into_parts();
            let handle = Box::new(dedup::Tracked::new(handle, dedup.clone(), id));
            return Some(match decode_error {
                Some(e) => Delivery::undecodable(msg, e, handle),
                None => Delivery::new(msg, handle),
            });
        }
        (dedup::Seen::Settled, _) => {
            sh.stats.deduplicated.fetch_add(1, Relaxed);
            Settlement::Ack
        }
        (dedup::Seen::InFlight, _) => {
            sh.stats.redelivered.fetch_add(1, Relaxed);
            Settlement::Redeliver {
                delay: backoff::base_delay(&sh.policy.retry, 2),
            }
        }
    };
    if let Err(e) = delivery.settle(how).await {
        tracing::warn!(pipeline = %sh.name, "settling a duplicate failed: {e:#}");
    }
    None
}

fn remember(sh: &Shared, msg: &Message) {
    if let Some(dedup) = &sh.dedup {
        let mut d = dedup.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = d.id(msg) {
            d.remember(id);
        }
    }
}

/// What the stable ids of a message's records are made from (the same on
/// every retry of the delivery): the message's own position where it has
/// one, else a number unique to this delivery. The id text itself is built
/// only for sinks that read it ([`Sink::wants_ids`]) and for dead letters.
#[derive(Debug, Clone, Copy)]
struct Ids {
    /// For a message without an offset (NATS core, MQTT, stdin): this
    /// delivery's number, so two equal payloads are never taken for one by
    /// a deduplicating sink.
    delivery: Option<u64>,
}

impl Ids {
    fn of(msg: &Message) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Ids {
            delivery: msg.offset.is_none().then(|| NEXT.fetch_add(1, Relaxed)),
        }
    }

    /// `<pipeline>:<topic>:<partition>:<offset>`, or
    /// `<pipeline>:<topic>:<process nonce>-<delivery>` without an offset.
    fn base(self, sh: &Shared, msg: &Message) -> String {
        // Built by hand: `format!` (padded hex, then the formatter's
        // per-character writes) showed in profiles.
        let mut num = itoa::Buffer::new();
        let mut id = String::with_capacity(sh.name.len() + msg.topic.len() + 40);
        id.push_str(&sh.name);
        id.push(':');
        id.push_str(&msg.topic);
        id.push(':');
        match (msg.offset, self.delivery) {
            (Some(o), _) => {
                id.push_str(num.format(msg.partition.unwrap_or(0)));
                id.push(':');
                id.push_str(num.format(o));
            }
            (None, delivery) => {
                static NONCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
                id.push_str(NONCE.get_or_init(|| format!("{:016x}", rand::random::<u64>())));
                id.push('-');
                id.push_str(num.format(delivery.unwrap_or(0)));
            }
        }
        id
    }
}

/// Publishes a dead-letter record; when the sink refuses it for good
/// (`rejected`), publishes it cut down step by step
/// ([`dead_letter::cut_down`]) until one fits. The last failure otherwise.
async fn publish_dead_letter(sh: &Shared, dlq: &dyn Sink, record: &Record) -> Result<(), Failure> {
    let mut failed = match timed_publish(sh, dlq, std::slice::from_ref(record)).await {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    for step in 1.. {
        if failed.class != FailureClass::Rejected {
            break;
        }
        let Some((cut, how)) = dead_letter::cut_down(record, step) else {
            break;
        };
        tracing::warn!(pipeline = %sh.name, "the dead-letter sink refused a record ({failed}); sending it {how}");
        match timed_publish(sh, dlq, std::slice::from_ref(&cut)).await {
            Ok(()) => return Ok(()),
            Err(e) => failed = e,
        }
    }
    Err(failed)
}

async fn timed_publish(sh: &Shared, sink: &dyn Sink, records: &[Record]) -> Result<(), Failure> {
    match tokio::time::timeout(sh.publish_timeout, sink.publish(records)).await {
        Ok(r) => r,
        Err(_) => Err(publish_timed_out(sh.publish_timeout)),
    }
}

fn publish_timed_out(timeout: Duration) -> Failure {
    Failure::new(
        FailureClass::Sink,
        format!("publish timed out after {timeout:?}"),
    )
}

/// Sends a call's outputs, in order, grouped by sink; the returned future
/// resolves once every sink accepted its share. Sending must be done by
/// `deadline`; the caller bounds the wait for acceptance by it (one timer
/// per worker's window, not one per message).
async fn send(
    sh: &Shared,
    msg: &Message,
    ids: Ids,
    outputs: Vec<Output>,
    deadline: Instant,
) -> Result<Accepted, Failure> {
    // Every output is checked before any is sent: a message whose second
    // output names no sink must not have its first one published (and again
    // on every retry).
    for o in &outputs {
        if let Some(problem) = sink_for(sh, o.sink.as_deref())?.refuses(o) {
            return Err(Failure::new(
                FailureClass::Rejected,
                format!("bad output: {problem}"),
            ));
        }
    }
    // Most calls publish to one sink: its wait is kept without a Vec.
    let mut first_wait: Option<Accepted> = None;
    let mut more_waits: Vec<Accepted> = Vec::new();
    // The ids' common part, built once a sink wants ids.
    let mut built: Option<String> = None;
    let mut i = 0;
    let mut outputs = outputs.into_iter().peekable();
    while let Some(first) = outputs.next() {
        let name = first.sink.clone();
        let sink = sink_for(sh, name.as_deref())?;
        let base = if sink.wants_ids() {
            Some(built.get_or_insert_with(|| ids.base(sh, msg)).as_str())
        } else {
            None
        };
        i += 1;
        let head = record(first, base, i);
        let sending = if outputs.peek().is_some_and(|o| o.sink == name) {
            let mut records = vec![head];
            while let Some(o) = outputs.next_if(|o| o.sink == name) {
                i += 1;
                records.push(record(o, base, i));
            }
            crate::sinks::within(deadline, sink.send(&records)).await
        } else {
            // One record for this sink (the common case) needs no Vec.
            crate::sinks::within(deadline, sink.send(std::slice::from_ref(&head))).await
        };
        let wait = sending.map_err(|_| publish_timed_out(sh.publish_timeout))??;
        match first_wait {
            None => first_wait = Some(wait),
            Some(_) => more_waits.push(wait),
        }
    }
    let Some(first_wait) = first_wait else {
        return Ok(crate::sinks::done());
    };
    if more_waits.is_empty() {
        return Ok(first_wait);
    }
    Ok(Box::pin(async move {
        first_wait.await?;
        for wait in more_waits {
            wait.await?;
        }
        Ok(())
    }))
}

/// The sink an output names (`None`: the pipeline's default sink).
fn sink_for<'a>(sh: &'a Shared, name: Option<&str>) -> Result<&'a dyn Sink, Failure> {
    match name {
        None => sh.sinks.default.as_deref().ok_or_else(|| {
            Failure::new(
                FailureClass::Trap,
                "bad output: it names no sink and the pipeline has no default [sink]",
            )
        }),
        Some(s) => sh.sinks.named.get(s).map(|b| &**b).ok_or_else(|| {
            let known: Vec<&str> = sh.sinks.named.keys().map(String::as_str).collect();
            Failure::new(
                FailureClass::Trap,
                format!(
                    "bad output: no sink named \"{}\" (the pipeline has: {})",
                    crate::engine::guest_text(s),
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        }),
    }
}

/// Output number `i` of a call as a sink record, with its stable id
/// `<base>:<i>` when the sink wants ids (`base` given), else none.
fn record(o: Output, base: Option<&str>, i: usize) -> Record {
    let id = match base {
        Some(base) => {
            let mut id = String::with_capacity(base.len() + 4);
            id.push_str(base);
            id.push(':');
            id.push_str(itoa::Buffer::new().format(i));
            id
        }
        None => String::new(),
    };
    Record {
        topic: o.topic,
        key: o.key,
        payload: o.payload,
        headers: o.headers,
        id,
    }
}
