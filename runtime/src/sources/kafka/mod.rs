//! The `kafka` source: a consumer in a consumer group (rdkafka
//! `StreamConsumer`) with manual, contiguous commits.
//!
//! # Delivery
//!
//! Auto-commit and the automatic offset store are off. A background task keeps
//! polling the consumer (so it stays in the group and serves rebalances even
//! while paused), turns each record into a [`Message`] (topic, partition,
//! offset, key, payload, headers, timestamp; attempt 1) and queues it for
//! [`Source::next`].
//!
//! # Settling and commits
//!
//! Settles may come in any order (`concurrency` > 1). Per partition the
//! [`tracker::Tracker`] keeps the offsets received and not settled; the
//! commit position is the lowest of them, or one past the highest received
//! when all are settled, so a commit never passes a message still being
//! worked on. Positions are committed asynchronously every `commit_interval`
//! and as soon as half of `max_in_flight` settled since the last commit (so a
//! crash repeats at most about 1.5 × `max_in_flight` messages however fast
//! the stream runs), synchronously by [`Source::close`], and synchronously for the revoked
//! partitions when a rebalance takes them away (queued messages of those
//! partitions are dropped; the new owner reads them from the committed
//! position). `Redeliver { delay }` keeps the offset outstanding and hands the
//! same message out again (`attempt + 1`) after the delay; a Kafka consumer
//! cannot "nak", and since the source still holds the message no seek is
//! needed.
//!
//! # Exactly once
//!
//! With `delivery = "exactly-once"` nothing is committed as above: the
//! offsets go into the pipeline's Kafka transaction with the outputs and
//! dead letters of the same messages (`exactly_once`: the drain before each
//! commit, the abort and rewind, the stale deliveries of an aborted one).
//!
//! # Backpressure
//!
//! When `max_in_flight` messages are received and unsettled, intake holds
//! (the poll task stops taking records; librdkafka's prefetch queue is
//! bounded by `queued.max.messages.kbytes`) until a quarter of them settled;
//! if it stays full for [`HOLD_BEFORE_PAUSE`], every assigned partition is
//! paused, so the poll task can serve rebalances again without taking more.
//! [`Source::pause`] (circuit breaker) pauses them too. Polling never stops.

mod context;
mod exactly_once;
pub mod tracker;

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures::FutureExt as _;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use rdkafka::Message as _;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::delayed::Delayed;
use super::{Delivery, Settle, Settlement, Source, SourceError};
use crate::brokers::kafka::Probe;
use crate::brokers::kafka::txn::{Txn, TxnError};
use crate::config::kafka::{KafkaSourceConfig, KafkaStart, client_config};
use crate::message::{Header, Message};
use crate::stats::{LagGauge, SourceHealth};
use context::{Ctx, classify};
use tracker::{Tp, Tracker};

/// How long `open` waits for the brokers to answer.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often librdkafka reports statistics, hence the consumer lag, unless
/// `options` set `statistics.interval.ms`.
const LAG_INTERVAL_MS: &str = "5000";
/// How long intake may hold at `max_in_flight` before the partitions are
/// paused. Pausing purges librdkafka's prefetched messages and the fetcher
/// takes about a second to start again after `resume`, which made every
/// short full/drain cycle of a fast pipeline a one-second stall; holding
/// (not calling `recv`) costs nothing, and the pause only comes when the
/// pipeline stays full (rebalances are served again once paused).
const HOLD_BEFORE_PAUSE: Duration = Duration::from_secs(5);
/// How long a synchronous commit (close) may take.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A `kafka` source. See the module documentation.
pub struct KafkaSource {
    shared: Arc<Shared>,
    /// `None` only while dropping.
    consumer: Option<Arc<StreamConsumer<Ctx>>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// State shared by the source, its poll task, its settle handles and the
/// consumer's callbacks.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Wakes `next()`: a message or a redelivery is ready, or a fatal error.
    ready: Notify,
    /// Wakes the poll task: a commit by count is due, a full intake may take
    /// again, or partitions were revoked.
    wake: Notify,
    max_in_flight: usize,
    pipeline: String,
    /// Where the statistics callback reports the consumer lag.
    lag: std::sync::OnceLock<LagGauge>,
    /// Where the source says whether it consumes (holds partitions).
    health: std::sync::OnceLock<SourceHealth>,
    /// `session.timeout.ms`: how long the member may hold no partition
    /// before it says so.
    session_timeout: Duration,
    /// The pipeline's transaction (`delivery = "exactly-once"`): offsets go
    /// into it instead of being committed (see `exactly_once`).
    txn: Option<Arc<Txn>>,
    /// Exactly-once: how long a drain may wait for messages handed out
    /// before the transaction is aborted instead (half the transaction timeout).
    drain_limit: Duration,
}

#[derive(Default)]
pub(crate) struct State {
    tracker: Tracker,
    queue: VecDeque<Queued>,
    redeliveries: Delayed<Queued>,
    /// Paused by the pipeline (circuit breaker).
    user_paused: bool,
    /// `max_in_flight` was reached: intake holds (no `recv`) until a quarter settled.
    full: bool,
    /// When `full` last became true; past [`HOLD_BEFORE_PAUSE`] the partitions are paused.
    full_since: Option<Instant>,
    /// What the consumer's partitions currently are.
    applied_pause: bool,
    closed: bool,
    fatal: Option<String>,
    /// Partitions the group assigned to this member.
    assigned: HashSet<Tp>,
    /// Since when the member holds no partition (`open`, or the revoke
    /// that took its last); `None` while it holds some.
    unassigned_since: Option<Instant>,
    /// It held a partition once.
    ever_assigned: bool,
    /// The time without partitions past the session timeout was logged.
    warned_unassigned: bool,
    /// Exactly-once: messages handed out (by `next`) and not settled.
    handed_out: usize,
    /// Exactly-once: aborts so far; a settle handle carries the count of its
    /// hand-out, so a stale one (handed out before an abort) is told apart.
    rewinds: u64,
    /// Exactly-once: since when the source holds new messages back so that
    /// the transaction can be committed.
    draining_since: Option<Instant>,
    /// Exactly-once: a commit or abort is under way; nothing is handed out.
    committing: bool,
    /// Exactly-once: a failed abort is tried again from then.
    retry_at: Option<Instant>,
}

struct Queued {
    tp: Tp,
    generation: u64,
    message: Message,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a fatal error for `next()` to return.
    pub(crate) fn fail(&self, message: String) {
        let mut st = self.lock();
        if st.fatal.is_none() {
            st.fatal = Some(message);
        }
        drop(st);
        self.ready.notify_one();
    }

    /// A rebalance took these partitions: forget them and their queued
    /// messages; returns the positions to commit for them.
    pub(crate) fn revoke(&self, tps: &[Tp]) -> Vec<(Tp, i64)> {
        let mut st = self.lock();
        let commits = tps
            .iter()
            .filter_map(|tp| st.tracker.revoke(tp).map(|pos| (tp.clone(), pos)))
            .collect();
        st.queue.retain(|q| !tps.contains(&q.tp));
        st.redeliveries.retain(|q| !tps.contains(&q.tp));
        for tp in tps {
            st.assigned.remove(tp);
        }
        if st.assigned.is_empty() && st.unassigned_since.is_none() {
            st.unassigned_since = Some(Instant::now());
        }
        drop(st);
        self.wake.notify_one();
        commits
    }

    /// Partitions were assigned; true when they must be paused right away.
    pub(crate) fn assign(&self, tps: Vec<Tp>) -> bool {
        let mut st = self.lock();
        for tp in tps {
            st.assigned.insert(tp.clone());
            st.tracker.assign(tp);
        }
        if !st.assigned.is_empty() {
            if st.warned_unassigned {
                tracing::info!(pipeline = %self.pipeline, partitions = st.assigned.len(),
                    "kafka source: partitions assigned again; consuming");
            }
            st.unassigned_since = None;
            st.ever_assigned = true;
            st.warned_unassigned = false;
        }
        let paused = st.applied_pause;
        self.check_assignment(&mut st);
        paused
    }

    /// Tells the health (hence readiness and `/pipelines`) whether the
    /// member consumes: it does once it holds a partition; before its first
    /// assignment it does not; after a revoke left it none it still counts
    /// as consuming (a rebalance under way) until the session timeout, and
    /// then says so, once in the log.
    pub(crate) fn check_assignment(&self, st: &mut State) {
        let Some(health) = self.health.get() else {
            return;
        };
        let Some(since) = st.unassigned_since else {
            health.consuming();
            return;
        };
        let idle = since.elapsed();
        if idle >= self.session_timeout {
            let why = format!(
                "no partitions assigned for {}s (longer than session_timeout {}s): consuming nothing",
                idle.as_secs(),
                self.session_timeout.as_secs()
            );
            if !st.warned_unassigned {
                st.warned_unassigned = true;
                tracing::warn!(pipeline = %self.pipeline,
                    "kafka source: {why} (more members in the group than partitions, or the group coordinator does not rebalance)");
            }
            health.idle(why);
        } else if !st.ever_assigned {
            health.idle("waiting for the group to assign partitions".into());
        } else {
            health.consuming();
        }
        if st.assigned.is_empty()
            && let Some(lag) = self.lag.get()
        {
            lag.clear();
        }
    }

    /// A commit failed: try these positions again at the next tick.
    pub(crate) fn uncommit(&self, failed: &[(Tp, i64)]) {
        let mut st = self.lock();
        for (tp, pos) in failed {
            st.tracker.uncommit(tp, *pos);
        }
    }

    pub(crate) fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// The gauge the consumer lag goes to, once the pipeline handed it over.
    pub(crate) fn lag(&self) -> Option<&LagGauge> {
        self.lag.get()
    }
}

/// Builds a topic-partition list with offsets.
pub(crate) fn tpl_of(positions: &[(Tp, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(positions.len());
    for ((topic, partition), pos) in positions {
        // Only fails for an invalid offset, which a position never is.
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*pos));
    }
    tpl
}

/// Opens the consumer, checks that the brokers answer (a wrong password or
/// an unreachable cluster fails here, within [`OPEN_TIMEOUT`]) and subscribes.
pub async fn open(cfg: &KafkaSourceConfig, pipeline: &str) -> anyhow::Result<KafkaSource> {
    open_with(cfg, pipeline, None).await
}

/// [`open`]; with `txn`, offsets are committed in the pipeline's transaction
/// (`delivery = "exactly-once"`, see `exactly_once`).
pub async fn open_with(
    cfg: &KafkaSourceConfig,
    pipeline: &str,
    txn: Option<Arc<Txn>>,
) -> anyhow::Result<KafkaSource> {
    let problems = cfg.validate();
    if let Some(p) = problems.first() {
        anyhow::bail!("kafka source: {p}");
    }
    let session_ms = cfg.session_timeout.0.as_millis().to_string();
    let client_id = format!("sluice-{pipeline}");
    let mut c = client_config(
        &cfg.brokers,
        &cfg.security,
        &cfg.options,
        &[("client.id", client_id.as_str())],
    )
    .context("kafka source")?;
    // The consumer lag comes from librdkafka's statistics (see `Ctx::stats`).
    if !cfg.options.contains_key("statistics.interval.ms") {
        c.set("statistics.interval.ms", LAG_INTERVAL_MS);
    }
    // Sluice's own settings come last: the delivery rule depends on them.
    c.set("group.id", &cfg.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", &session_ms)
        .set(
            "auto.offset.reset",
            match cfg.start {
                KafkaStart::Earliest => "earliest",
                KafkaStart::Latest => "latest",
            },
        );
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        ready: Notify::new(),
        wake: Notify::new(),
        max_in_flight: cfg.max_in_flight.max(1),
        pipeline: pipeline.to_string(),
        lag: std::sync::OnceLock::new(),
        health: std::sync::OnceLock::new(),
        session_timeout: cfg.session_timeout.0,
        txn,
        drain_limit: cfg.transaction_timeout.0 / 2,
    });
    shared.lock().unassigned_since = Some(Instant::now());
    let ctx = Ctx::new(shared.clone());
    let last_error = ctx.last_error.clone();
    let refused = ctx.refused.clone();
    let consumer: StreamConsumer<Ctx> = c
        .create_with_context(ctx)
        .context("kafka source: creating the consumer")?;
    let consumer = Arc::new(consumer);

    // Reach the cluster once, so bad credentials or addresses fail `open`.
    let probe = consumer.clone();
    let metadata = tokio::task::spawn_blocking(move || probe.fetch_metadata(None, OPEN_TIMEOUT));
    // Polling serves the consumer's events: its error callback records a refusal.
    let polled = &consumer;
    let serve = move || async move { drop(polled.recv().await) };
    let metadata = match crate::brokers::kafka::probe(metadata, &refused, serve).await {
        Probe::Done(r) => r?,
        Probe::Refused(why) => {
            release(consumer);
            anyhow::bail!(
                "kafka source: the brokers {} refused the credentials: {why}",
                cfg.brokers.join(",")
            );
        }
    };
    if let Err(e) = metadata {
        // Serve queued events so the error callback records the cause.
        let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
        let cause = last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| e.to_string());
        release(consumer);
        anyhow::bail!(
            "kafka source: the brokers {} did not answer within {OPEN_TIMEOUT:?}: {cause}",
            cfg.brokers.join(",")
        );
    }
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    if let Err(e) = consumer.subscribe(&topics) {
        release(consumer);
        return Err(e)
            .with_context(|| format!("kafka source: subscribing to {}", cfg.topics.join(",")));
    }

    let (stop, stop_rx) = oneshot::channel();
    let task = tokio::spawn(poll_task(
        consumer.clone(),
        shared.clone(),
        cfg.commit_interval.0,
        stop_rx,
    ));
    Ok(KafkaSource {
        shared,
        consumer: Some(consumer),
        stop: Some(stop),
        task: Some(task),
    })
}

/// Most records taken from librdkafka's queue in one turn of the poll task:
/// what is already fetched is taken under one lock and one wake-up of the
/// pipeline, yet commits and `stop` are still looked at between turns.
const TAKE_AT_ONCE: usize = 256;

/// Keeps polling the consumer: queues messages, applies pauses, commits.
async fn poll_task(
    consumer: Arc<StreamConsumer<Ctx>>,
    shared: Arc<Shared>,
    commit_interval: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval_at(Instant::now() + commit_interval, commit_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = WarnLimiter::default();
    // One stream for the task's life: `recv` registers and drops a waker
    // slot (a mutex each way) per message.
    let mut stream = consumer.stream();
    let mut taken: Vec<(Tp, Message)> = Vec::new();
    let mut topic: Option<Arc<str>> = None;
    loop {
        apply_pause(&consumer, &shared);
        let drain_deadline = match &shared.txn {
            Some(txn) => exactly_once::step(&consumer, &shared, txn).await,
            None => None,
        };
        // Full but not (yet) paused: take nothing more, and look again when
        // the hold would turn into a pause.
        let (holding, pause_at, room) = {
            let st = shared.lock();
            (
                st.full && !st.applied_pause,
                st.full_since
                    .map_or_else(Instant::now, |t| t + HOLD_BEFORE_PAUSE),
                shared.max_in_flight.saturating_sub(st.tracker.in_flight()),
            )
        };
        tokio::select! {
            biased;
            _ = &mut stop => {
                drop(stream);
                release(consumer);
                return;
            }
            _ = shared.wake.notified() => {
                // Fast streams commit by count too, so what a crash repeats
                // stays bounded by the window, not by the rate × the interval.
                let settled = shared.lock().tracker.settled_since_commit();
                if settled >= commit_every(shared.max_in_flight) {
                    commit(&consumer, &shared, CommitMode::Async);
                }
            }
            _ = tick.tick() => {
                commit(&consumer, &shared, CommitMode::Async);
                shared.check_assignment(&mut shared.lock());
            }
            _ = tokio::time::sleep_until(pause_at), if holding => {}
            _ = exactly_once::broken(&shared) => {}
            _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(Instant::now)), if drain_deadline.is_some() => {}
            r = stream.next(), if !holding => {
                let mut next = r;
                // The first record, then whatever librdkafka already holds,
                // up to the room left in the window.
                while let Some(r) = next {
                    match r {
                        Ok(m) => taken.push(convert(&m, &mut topic)),
                        Err(e) => match classify(&e) {
                            Some(fatal) => {
                                tracing::error!(pipeline = %shared.pipeline, "kafka source: {fatal}");
                                shared.fail(fatal);
                                break;
                            }
                            None => {
                                if warned.allow() {
                                    tracing::warn!(pipeline = %shared.pipeline, "kafka source: {e}");
                                }
                            }
                        },
                    }
                    if taken.len() >= room.clamp(1, TAKE_AT_ONCE) {
                        break;
                    }
                    next = stream.next().now_or_never().flatten();
                }
                if !taken.is_empty() {
                    receive(&shared, &mut taken);
                }
            }
        }
    }
}

/// Drops a consumer handle on a thread of its own: dropping the last one
/// leaves the group, which waits for the brokers (long, if they are away)
/// and must not block the async runtime.
fn release(consumer: Arc<StreamConsumer<Ctx>>) {
    let spawned = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(move || drop(consumer));
    if let Err(e) = spawned {
        tracing::warn!("kafka source: cannot spawn the closing thread: {e}");
    }
}

/// At most one warning per 5 s for a repeating condition.
#[derive(Default)]
pub(crate) struct WarnLimiter(Option<std::time::Instant>);

impl WarnLimiter {
    pub(crate) fn allow(&mut self) -> bool {
        let now = std::time::Instant::now();
        if self
            .0
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(5))
        {
            return false;
        }
        self.0 = Some(now);
        true
    }
}

/// Turns a record into a message and its partition; the topic's name is
/// shared with the previous record's when it is the same.
fn convert(m: &BorrowedMessage<'_>, last_topic: &mut Option<Arc<str>>) -> (Tp, Message) {
    let topic = match last_topic {
        Some(t) if &**t == m.topic() => t.clone(),
        _ => last_topic.insert(Arc::from(m.topic())).clone(),
    };
    let message = Message {
        topic: m.topic().to_string(),
        partition: Some(m.partition()),
        offset: Some(m.offset()),
        key: m.key().map(Bytes::copy_from_slice),
        payload: m.payload().map(Bytes::copy_from_slice).unwrap_or_default(),
        headers: m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        Header::new(
                            h.key,
                            h.value.map(Bytes::copy_from_slice).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        timestamp_ms: m
            .timestamp()
            .to_millis()
            .and_then(|t| u64::try_from(t).ok()),
        attempt: 1,
    };
    ((topic, m.partition()), message)
}

/// Queues the messages taken (emptying `taken`) under one lock and wakes `next()` once.
fn receive(shared: &Shared, taken: &mut Vec<(Tp, Message)>) {
    let mut st = shared.lock();
    for (tp, message) in taken.drain(..) {
        let offset = message.offset.unwrap_or_default();
        let generation = st.tracker.received(&tp, offset);
        st.queue.push_back(Queued {
            tp,
            generation,
            message,
        });
    }
    if st.tracker.in_flight() >= shared.max_in_flight && !st.full {
        st.full = true;
        st.full_since = Some(Instant::now());
    }
    drop(st);
    shared.ready.notify_one();
}

/// Pauses or resumes every assigned partition to match the wanted state.
fn apply_pause(consumer: &StreamConsumer<Ctx>, shared: &Shared) {
    let mut st = shared.lock();
    if st.full && st.tracker.in_flight() <= resume_at(shared.max_in_flight) {
        st.full = false;
        st.full_since = None;
    }
    let long_full = st.full
        && st
            .full_since
            .is_some_and(|t| t.elapsed() >= HOLD_BEFORE_PAUSE);
    let want = st.user_paused || long_full || st.closed;
    if want == st.applied_pause {
        return;
    }
    st.applied_pause = want;
    drop(st);
    let assignment = match consumer.assignment() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(pipeline = %shared.pipeline, "kafka source: reading the assignment: {e}");
            return;
        }
    };
    let r = if want {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    if let Err(e) = r {
        tracing::warn!(pipeline = %shared.pipeline, "kafka source: pause/resume: {e}");
    }
}

/// Received and unsettled messages at or below which a full intake takes
/// again: three quarters of the window.
fn resume_at(max_in_flight: usize) -> usize {
    max_in_flight - (max_in_flight / 4).max(1).min(max_in_flight)
}

/// Settled messages that trigger a commit before the interval is up: half
/// the in-flight window.
fn commit_every(max_in_flight: usize) -> usize {
    (max_in_flight / 2).max(1)
}

/// Commits every position that moved (exactly-once: starts a drain for
/// the transaction's commit instead).
fn commit(consumer: &StreamConsumer<Ctx>, shared: &Shared, mode: CommitMode) {
    if let Some(txn) = &shared.txn {
        exactly_once::request(shared, txn);
        return;
    }
    let positions = shared.lock().tracker.to_commit();
    if positions.is_empty() {
        return;
    }
    if let Err(e) = consumer.commit(&tpl_of(&positions), mode) {
        tracing::warn!(pipeline = %shared.pipeline, "kafka source: commit failed: {e}");
        shared.uncommit(&positions);
    }
}

impl Source for KafkaSource {
    fn report_lag(&mut self, gauge: LagGauge) {
        let _ = self.shared.lag.set(gauge);
    }

    fn report_health(&mut self, health: SourceHealth) {
        let _ = self.shared.health.set(health);
        self.shared.check_assignment(&mut self.shared.lock());
    }

    fn next(&mut self) -> BoxFuture<'_, Result<Option<Delivery>, SourceError>> {
        Box::pin(async move {
            loop {
                let due = match self.take_ready() {
                    Ok(taken) => return taken,
                    Err(due) => due,
                };
                match due {
                    Some(due) => {
                        tokio::select! {
                            _ = self.shared.ready.notified() => {}
                            _ = tokio::time::sleep_until(due) => {}
                        }
                    }
                    None => self.shared.ready.notified().await,
                }
            }
        })
    }

    fn try_next(&mut self) -> Option<Result<Option<Delivery>, SourceError>> {
        self.take_ready().ok()
    }

    fn pause(&mut self) {
        self.shared.lock().user_paused = true;
        if let Some(c) = &self.consumer {
            apply_pause(c, &self.shared);
        }
    }

    fn resume(&mut self) {
        self.shared.lock().user_paused = false;
        if let Some(c) = &self.consumer {
            apply_pause(c, &self.shared);
        }
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.shared.lock().closed = true;
            self.shared.ready.notify_one();
            let Some(consumer) = self.consumer.clone() else {
                return;
            };
            apply_pause(&consumer, &self.shared);
            if self.shared.txn.is_some() {
                exactly_once::close(consumer, self.shared.clone(), COMMIT_TIMEOUT).await;
                return;
            }
            // Commit everything settled, synchronously.
            let shared = self.shared.clone();
            let done = tokio::task::spawn_blocking(move || {
                let positions = shared.lock().tracker.positions();
                if positions.is_empty() {
                    return;
                }
                if let Err(e) = consumer.commit(&tpl_of(&positions), CommitMode::Sync) {
                    tracing::warn!(pipeline = %shared.pipeline, "kafka source: final commit failed: {e}");
                    shared.uncommit(&positions);
                }
            });
            if tokio::time::timeout(COMMIT_TIMEOUT, done).await.is_err() {
                tracing::warn!(pipeline = %self.shared.pipeline,
                    "kafka source: final commit did not finish within {COMMIT_TIMEOUT:?}");
            }
        })
    }
}

impl KafkaSource {
    /// What `next` gives without waiting: a due redelivery, else the oldest
    /// fetched message, the fatal error or the end; otherwise `Err` with
    /// when the next redelivery is due (if any).
    fn take_ready(&self) -> Result<Result<Option<Delivery>, SourceError>, Option<Instant>> {
        let mut st = self.shared.lock();
        if let Some(f) = st.fatal.take() {
            return Ok(Err(SourceError::Fatal(f)));
        }
        if st.closed {
            return Ok(Ok(None));
        }
        let gate = match &self.shared.txn {
            Some(txn) => exactly_once::gate(&st, txn),
            None => exactly_once::Gate::All,
        };
        if gate == exactly_once::Gate::Nothing {
            return Err(None);
        }
        let now = Instant::now();
        let mut item = None;
        while let Some(q) = st.redeliveries.pop_due(now) {
            if st.tracker.is_current(&q.tp, q.generation) {
                item = Some(q);
                break;
            }
        }
        if item.is_none() && gate == exactly_once::Gate::All {
            item = st.queue.pop_front();
        }
        match item {
            Some(q) => {
                if self.shared.txn.is_some() {
                    st.handed_out += 1;
                }
                let rewinds = st.rewinds;
                Ok(Ok(Some(self.delivery(q, rewinds))))
            }
            None => Err(st.redeliveries.next_due()),
        }
    }

    fn delivery(&self, q: Queued, rewinds: u64) -> Delivery {
        let handle = KafkaSettle {
            shared: self.shared.clone(),
            tp: q.tp,
            generation: q.generation,
            rewinds,
            message: Some(q.message.clone()),
        };
        Delivery::new(q.message, Box::new(handle))
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        // Stops the poll task; dropping the last consumer handle leaves the
        // group, which revokes (and commits) the partitions.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // The task releases its handle when it sees `stop`; aborting
            // would drop it on a runtime thread instead.
            drop(task);
        }
        if let Some(c) = self.consumer.take() {
            release(c);
        }
    }
}

/// The settle handle of one kafka delivery.
struct KafkaSettle {
    shared: Arc<Shared>,
    tp: Tp,
    generation: u64,
    /// `State::rewinds` when it was handed out (exactly-once).
    rewinds: u64,
    /// `None` once settled.
    message: Option<Message>,
}

impl Settle for KafkaSettle {
    fn settle(mut self: Box<Self>, how: Settlement) -> BoxFuture<'static, anyhow::Result<()>> {
        let mut message = self.message.take();
        let shared = self.shared.clone();
        let tp = self.tp.clone();
        let generation = self.generation;
        let rewinds = self.rewinds;
        Box::pin(async move {
            let Some(mut message) = message.take() else {
                return Ok(());
            };
            let offset = message.offset.unwrap_or_default();
            let mut st = shared.lock();
            if let Some(txn) = &shared.txn
                && !exactly_once::settled(&shared, &mut st, txn, rewinds)
            {
                // Handed out before an abort: the message is read again.
                return Ok(());
            }
            match how {
                Settlement::Ack | Settlement::Terminated => {
                    st.tracker.settled(&tp, generation, offset);
                    // The poll task only has work when a commit by count is
                    // due or a full intake may take again: waking it for every
                    // settle cost a task switch per message.
                    let max = shared.max_in_flight;
                    let poke = st.tracker.settled_since_commit() >= commit_every(max)
                        || (st.full && st.tracker.in_flight() <= resume_at(max))
                        || (st.draining_since.is_some() && st.handed_out == 0);
                    drop(st);
                    if poke {
                        shared.wake.notify_one();
                    }
                }
                Settlement::Redeliver { delay } => {
                    if st.tracker.is_current(&tp, generation) {
                        message.attempt += 1;
                        st.redeliveries.push(
                            Instant::now() + delay,
                            Queued {
                                tp,
                                generation,
                                message,
                            },
                        );
                    }
                    drop(st);
                    shared.ready.notify_one();
                }
            }
            Ok(())
        })
    }
}

impl Drop for KafkaSettle {
    fn drop(&mut self) {
        // Exactly-once: a delivery dropped unsettled is read again after an
        // abort (nothing else would bring it back before a restart).
        if self.message.is_some()
            && let Some(txn) = &self.shared.txn
        {
            let mut st = self.shared.lock();
            if exactly_once::settled(&self.shared, &mut st, txn, self.rewinds) {
                txn.force_abort("a delivery was dropped unsettled".into());
            }
        }
    }
}
