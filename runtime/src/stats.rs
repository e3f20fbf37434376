//! Counters of one pipeline: what the summary, the metrics and the admin API report.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;

use crate::failure::FailureClass;

/// Live counters, updated lock-free on the hot path.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    /// Messages whose outputs were all published.
    pub succeeded: AtomicU64,
    pub outputs: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub dropped: AtomicU64,
    pub deduplicated: AtomicU64,
    pub retries: AtomicU64,
    /// Deliveries handed back to the source for redelivery.
    pub redelivered: AtomicU64,
    pub in_flight: AtomicU64,
    pub fuel_used: AtomicU64,
    /// Messages answered by a handler call that took several (`handle-batch`).
    pub batched: AtomicU64,
    /// Handler log lines dropped past the per-message log budget.
    pub guest_log_dropped: AtomicU64,
    /// Failures by class, indexed like [`FailureClass::ALL`].
    pub failures: [AtomicU64; 9],
    /// Publishes (outputs and dead letters) the broker refused because it
    /// was full; each is also a `sink` failure or a failed dead-letter write.
    pub broker_full: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Wall-clock time of each handler call.
    pub handler_latency: Histogram,
    /// How far the pipeline is behind its source, as the broker reports it.
    pub source_lag: LagGauge,
    /// Requests answered `unavailable` unhandled because the circuit
    /// breaker was open (request/reply sources).
    pub shed: AtomicU64,
    /// What the source dropped before the pipeline took it.
    pub source_drops: SourceDrops,
    /// Whether the source is consuming, as it tells.
    pub source_health: SourceHealth,
}

/// Whether a source is consuming, and if not why: written by the source
/// (a Kafka member holding no partition), read by readiness and the admin
/// API. Consuming unless the source says otherwise.
#[derive(Debug, Clone, Default)]
pub struct SourceHealth(Arc<Mutex<Option<String>>>);

impl SourceHealth {
    /// The source consumes again.
    pub fn consuming(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The source consumes nothing, for this reason.
    pub fn idle(&self, why: String) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// Why the source consumes nothing; `None` while it consumes.
    pub fn idle_reason(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Messages a source dropped before the pipeline took them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts {
    /// Dropped at the source's pending limits (NATS core `pending_messages`,
    /// `pending_bytes`); a request among them was answered `unavailable`.
    pub shed: u64,
    /// NATS slow-consumer drops: `shed` plus those the client itself made
    /// before Sluice's queue (those requests got no answer).
    pub slow_consumer: u64,
}

/// Where a source lets the pipeline read its [`DropCounts`]: the source
/// installs a reader of its own counters once, the stats read it on demand.
#[derive(Clone, Default)]
pub struct SourceDrops(Arc<OnceLock<DropReader>>);

type DropReader = Box<dyn Fn() -> DropCounts + Send + Sync>;

impl SourceDrops {
    /// Installs the reader (the first one stays).
    pub fn set(&self, read: impl Fn() -> DropCounts + Send + Sync + 'static) {
        let _ = self.0.set(Box::new(read));
    }

    /// The counts now; zero when the source drops nothing.
    pub fn get(&self) -> DropCounts {
        self.0.get().map(|read| read()).unwrap_or_default()
    }
}

impl std::fmt::Debug for SourceDrops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// Messages waiting in the broker for this pipeline: Kafka consumer lag
/// summed over the assigned partitions, JetStream's pending count. Shared
/// with the source, which sets it; unknown until the broker tells.
#[derive(Debug, Clone)]
pub struct LagGauge(Arc<AtomicI64>);

impl Default for LagGauge {
    fn default() -> Self {
        LagGauge(Arc::new(AtomicI64::new(-1)))
    }
}

impl LagGauge {
    /// Records the latest lag.
    pub fn set(&self, lag: u64) {
        self.0
            .store(i64::try_from(lag).unwrap_or(i64::MAX), Relaxed);
    }

    /// The lag is not known (e.g. no partition is assigned): it reads
    /// `None`, never 0.
    pub fn clear(&self) {
        self.0.store(-1, Relaxed);
    }

    /// The latest lag; `None` until the source reported one.
    pub fn get(&self) -> Option<u64> {
        u64::try_from(self.0.load(Relaxed)).ok()
    }
}

/// Upper bounds (seconds) of the handler latency buckets; `+Inf` is implied.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A lock-free histogram over [`LATENCY_BUCKETS`] (Prometheus style).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per-bucket counts (not cumulative); the last one is `+Inf`.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(d.as_nanos() as u64, Relaxed);
    }

    /// Cumulative counts per bucket (the last is `+Inf`, i.e. the total) and
    /// the sum in seconds.
    pub fn cumulative(&self) -> (Vec<u64>, f64) {
        let mut total = 0;
        let counts = self
            .counts
            .iter()
            .map(|c| {
                total += c.load(Relaxed);
                total
            })
            .collect();
        (counts, self.sum_nanos.load(Relaxed) as f64 / 1e9)
    }
}

impl Stats {
    pub fn failure(&self, class: FailureClass, message: &str) {
        if let Some(i) = FailureClass::ALL.iter().position(|c| *c == class) {
            self.failures[i].fetch_add(1, Relaxed);
        }
        if let Ok(mut l) = self.last_error.lock() {
            // The last one's buffer is reused: a poison stream fails every message.
            let text = l.get_or_insert_with(String::new);
            text.clear();
            text.push_str(class.as_str());
            text.push_str(": ");
            text.push_str(message);
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let drops = self.source_drops.get();
        Snapshot {
            received: self.received.load(Relaxed),
            succeeded: self.succeeded.load(Relaxed),
            outputs: self.outputs.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            deduplicated: self.deduplicated.load(Relaxed),
            retries: self.retries.load(Relaxed),
            redelivered: self.redelivered.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            fuel_used: self.fuel_used.load(Relaxed),
            batched: self.batched.load(Relaxed),
            guest_log_dropped: self.guest_log_dropped.load(Relaxed),
            failures: FailureClass::ALL
                .iter()
                .zip(&self.failures)
                .map(|(c, n)| (c.as_str(), n.load(Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            broker_full: self.broker_full.load(Relaxed),
            last_error: self.last_error.lock().ok().and_then(|l| l.clone()),
            source_lag: self.source_lag.get(),
            shed: self.shed.load(Relaxed) + drops.shed,
            slow_consumer: drops.slow_consumer,
        }
    }
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Snapshot {
    pub received: u64,
    pub succeeded: u64,
    pub outputs: u64,
    pub dead_lettered: u64,
    pub dropped: u64,
    pub deduplicated: u64,
    pub retries: u64,
    pub redelivered: u64,
    pub in_flight: u64,
    pub fuel_used: u64,
    /// Messages answered by a handler call that took several.
    pub batched: u64,
    /// Handler log lines dropped past the per-message log budget.
    pub guest_log_dropped: u64,
    /// Failures by class (classes with none left out).
    pub failures: Vec<(&'static str, u64)>,
    /// Publishes refused because the broker was full.
    pub broker_full: u64,
    pub last_error: Option<String>,
    /// Messages waiting in the broker (Kafka consumer lag, JetStream pending),
    /// when the broker tells it.
    pub source_lag: Option<u64>,
    /// Messages let go unhandled: dropped at the source's pending limits, or
    /// requests answered `unavailable` while the circuit breaker was open.
    pub shed: u64,
    /// NATS core slow-consumer drops (see [`DropCounts::slow_consumer`]).
    pub slow_consumer: u64,
}
