//! Counters of one pipeline: what the summary, the metrics and the admin API report.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
    /// Failures by class, indexed like [`FailureClass::ALL`].
    pub failures: [AtomicU64; 9],
    pub last_error: Mutex<Option<String>>,
}

impl Stats {
    pub fn failure(&self, class: FailureClass, message: &str) {
        if let Some(i) = FailureClass::ALL.iter().position(|c| *c == class) {
            self.failures[i].fetch_add(1, Relaxed);
        }
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(format!("{class}: {message}"));
        }
    }

    pub fn snapshot(&self) -> Snapshot {
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
            failures: FailureClass::ALL
                .iter()
                .zip(&self.failures)
                .map(|(c, n)| (c.as_str(), n.load(Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            last_error: self.last_error.lock().ok().and_then(|l| l.clone()),
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
    /// Failures by class (classes with none left out).
    pub failures: Vec<(&'static str, u64)>,
    pub last_error: Option<String>,
}
