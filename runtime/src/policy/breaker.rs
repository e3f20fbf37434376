//! The circuit breaker (closed → open → half-open). It counts the failures
//! [`Policy::counts_for_breaker`](super::Policy::counts_for_breaker) names;
//! while open, the pipeline takes nothing from the source (a request/reply
//! source's requests are taken and answered `unavailable`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::BreakerConfig;

/// The breaker's state, as shown in logs, metrics and the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { successes: u32, probing: bool },
}

/// A per-pipeline circuit breaker.
pub struct Breaker {
    cfg: BreakerConfig,
    pipeline: String,
    state: Mutex<State>,
    changed: Notify,
    /// Messages held by [`Breaker::hold`]; changed only under the state lock.
    held: AtomicU32,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig, pipeline: &str) -> Self {
        Breaker {
            cfg,
            pipeline: pipeline.to_string(),
            state: Mutex::new(State::Closed { failures: 0 }),
            changed: Notify::new(),
            held: AtomicU32::new(0),
        }
    }

    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the state is still valid.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until one more message may be taken: at once when closed; after
    /// `open_for` when open (then exactly one probe); in half-open, when no
    /// probe is in flight. While a message is held ([`Breaker::hold`]), that
    /// message is the probe and no new one is let in.
    pub async fn admit(&self) {
        self.acquire(false).await
    }

    /// Opens the breaker for a message whose sink failed on every attempt and
    /// waits until it may be tried again, as the probe. While any message is
    /// held, [`Breaker::admit`] lets nothing new in: a probe taken from the
    /// source would queue behind the held message in its worker, while the
    /// held message waited for that probe to end — both stuck for good.
    pub async fn hold(&self) {
        if !self.cfg.enabled {
            return;
        }
        {
            let mut s = self.lock();
            self.held.fetch_add(1, Ordering::Relaxed);
            if !matches!(*s, State::Open { .. }) {
                self.open(&mut s, 0);
            }
        }
        self.changed.notify_waiters();
        // Released when the wait ends or is abandoned (shutdown).
        struct Release<'a>(&'a Breaker);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                let s = self.0.lock();
                self.0.held.fetch_sub(1, Ordering::Relaxed);
                drop(s);
                self.0.changed.notify_waiters();
            }
        }
        let _release = Release(self);
        self.acquire(true).await
    }

    /// Lets one more message in now if [`Breaker::admit`] would (taking
    /// the probe's place when half-open); false when it would wait. A
    /// request/reply pipeline asks this for each request it takes while
    /// the breaker is not closed, and answers those it may not handle.
    pub fn try_admit(&self) -> bool {
        !self.cfg.enabled || self.poll_acquire(false).is_ok()
    }

    /// One look at the state: `Ok` when a message may go in now (the probe
    /// is taken), else how long to wait (`None`: until the state changes).
    fn poll_acquire(&self, held: bool) -> Result<(), Option<Duration>> {
        let mut s = self.lock();
        // New intake waits while held messages are the probes.
        let yield_to_held = !held && self.held.load(Ordering::Relaxed) > 0;
        match *s {
            State::Closed { .. } => Ok(()),
            State::Open { .. } if yield_to_held => Err(None),
            State::HalfOpen { .. } if yield_to_held => Err(None),
            State::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    tracing::info!(pipeline = %self.pipeline, "circuit breaker half-open: letting one probe message through");
                    *s = State::HalfOpen {
                        successes: 0,
                        probing: true,
                    };
                    return Ok(());
                }
                Err(Some(until - now))
            }
            State::HalfOpen {
                ref mut probing, ..
            } => {
                if !*probing {
                    *probing = true;
                    return Ok(());
                }
                Err(None)
            }
        }
    }

    async fn acquire(&self, held: bool) {
        if !self.cfg.enabled {
            return;
        }
        loop {
            let notified = self.changed.notified();
            let wait = match self.poll_acquire(held) {
                Ok(()) => return,
                Err(wait) => wait,
            };
            match wait {
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Records a message that succeeded.
    pub fn success(&self) {
        if !self.cfg.enabled {
            return;
        }
        let mut s = self.lock();
        match *s {
            State::Closed { ref mut failures } => *failures = 0,
            State::HalfOpen { successes, .. } => {
                let successes = successes + 1;
                if successes >= self.cfg.success_threshold {
                    tracing::info!(pipeline = %self.pipeline, "circuit breaker closed");
                    *s = State::Closed { failures: 0 };
                } else {
                    *s = State::HalfOpen {
                        successes,
                        probing: false,
                    };
                }
            }
            State::Open { .. } => {}
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// Records a transient failure (one attempt).
    pub fn failure(&self) {
        if !self.cfg.enabled {
            return;
        }
        let mut s = self.lock();
        match *s {
            State::Closed { failures } => {
                let failures = failures + 1;
                if failures >= self.cfg.failure_threshold {
                    self.open(&mut s, failures);
                } else {
                    *s = State::Closed { failures };
                }
            }
            State::HalfOpen { .. } => self.open(&mut s, 1),
            State::Open { .. } => {}
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// Opens the breaker now (e.g. a sink failure used every attempt).
    pub fn trip(&self) {
        if !self.cfg.enabled {
            return;
        }
        let mut s = self.lock();
        if !matches!(*s, State::Open { .. }) {
            self.open(&mut s, 0);
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// A probe that ended with neither success nor a transient failure (e.g.
    /// a poison message): let the next probe through.
    pub fn neutral(&self) {
        let mut s = self.lock();
        if let State::HalfOpen {
            ref mut probing, ..
        } = *s
        {
            *probing = false;
        }
        drop(s);
        self.changed.notify_waiters();
    }

    fn open(&self, s: &mut State, failures: u32) {
        tracing::warn!(pipeline = %self.pipeline, failures, open_for = ?self.cfg.open_for.0,
            "circuit breaker open: intake paused");
        *s = State::Open {
            until: Instant::now() + self.cfg.open_for.0,
        };
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::Dur;

    fn breaker() -> Breaker {
        Breaker::new(
            BreakerConfig {
                enabled: true,
                failure_threshold: 3,
                success_threshold: 2,
                open_for: Dur(Duration::from_secs(30)),
            },
            "t",
        )
    }

    #[tokio::test(start_paused = true)]
    async fn opens_probes_and_closes() {
        let b = breaker();
        b.failure();
        b.failure();
        b.success();
        b.failure();
        b.failure();
        assert_eq!(b.state(), BreakerState::Closed, "success resets the count");
        b.failure();
        assert_eq!(b.state(), BreakerState::Open);
        let start = Instant::now();
        b.admit().await;
        assert!(start.elapsed() >= Duration::from_secs(30));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // A second admit waits for the probe's outcome.
        let second = tokio::time::timeout(Duration::from_secs(1), b.admit()).await;
        assert!(second.is_err(), "only one probe at a time");
        b.success();
        b.admit().await;
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn held_message_is_the_probe() {
        let b = std::sync::Arc::new(breaker());
        let held = tokio::spawn({
            let b = b.clone();
            async move { b.hold().await }
        });
        tokio::task::yield_now().await;
        assert_eq!(b.state(), BreakerState::Open, "holding opens the breaker");
        let intake = tokio::spawn({
            let b = b.clone();
            async move { b.admit().await }
        });
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(held.is_finished(), "the held message probes after open_for");
        assert!(
            !intake.is_finished(),
            "no new message while the held one probes"
        );
        b.success();
        tokio::time::timeout(Duration::from_secs(1), intake)
            .await
            .expect("intake goes on once the probe succeeded")
            .expect("task");
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_hold_releases_intake() {
        let b = breaker();
        // Shutdown while held: the hold is dropped, intake is not blocked by it.
        let _ = tokio::time::timeout(Duration::from_secs(1), b.hold()).await;
        tokio::time::timeout(Duration::from_secs(60), b.admit())
            .await
            .expect("admit after open_for");
    }

    #[tokio::test(start_paused = true)]
    async fn try_admit_takes_the_probe_without_waiting() {
        let b = breaker();
        assert!(b.try_admit(), "closed");
        b.trip();
        assert!(!b.try_admit(), "open");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(b.try_admit(), "the probe after open_for");
        assert!(!b.try_admit(), "one probe at a time");
        b.success();
        assert!(b.try_admit(), "the next probe");
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens() {
        let b = breaker();
        b.trip();
        b.admit().await;
        b.failure();
        assert_eq!(b.state(), BreakerState::Open);
    }
}
