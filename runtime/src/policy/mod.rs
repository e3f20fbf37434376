//! The failure policy: the `[errors]` table as a lookup, retry backoff,
//! dead-letter records, the circuit breaker and dedup.

pub mod backoff;
pub mod breaker;
pub mod dead_letter;
pub mod dedup;

use std::time::Duration;

use crate::config::{Action, ErrorsConfig, RetryConfig};
use crate::failure::FailureClass;

/// What to do with a message after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again after this delay.
    Retry(Duration),
    /// Publish a dead-letter record, then settle. `exhausted` when it got
    /// here because the retries ran out.
    DeadLetter { exhausted: bool },
    /// Settle and count as dropped.
    Drop { exhausted: bool },
    /// Stop the pipeline; do not settle.
    Stop,
}

/// The failure policy of one pipeline.
#[derive(Debug, Clone)]
pub struct Policy {
    pub errors: ErrorsConfig,
    pub retry: RetryConfig,
}

impl Policy {
    /// Whether a failure of `class` counts toward the circuit breaker. The
    /// breaker guards against an outage of what the pipeline depends on: a
    /// `sink` failure always counts; a handler-side transient class
    /// (`retriable`, `timeout`) counts only where `[errors]` retries it,
    /// i.e. where the user says it is about the circumstances. A failure the
    /// policy dead-letters or drops at once belongs to its message, and
    /// opening the breaker for it would stop every other message (a slow
    /// request would silence a request/reply service).
    pub fn counts_for_breaker(&self, class: FailureClass) -> bool {
        match class {
            FailureClass::Sink => true,
            c if c.is_transient() => self.errors.action(c) == Action::Retry,
            _ => false,
        }
    }

    /// The decision for a message that failed with `class` on attempt `attempt` (1-based).
    pub fn decide(&self, class: FailureClass, attempt: u32) -> Decision {
        match self.errors.action(class) {
            Action::Retry if attempt < self.retry.max_attempts => {
                Decision::Retry(backoff::delay(&self.retry, attempt + 1))
            }
            Action::Retry => match self.errors.exhausted {
                Action::Drop => Decision::Drop { exhausted: true },
                Action::Stop => Decision::Stop,
                // `retry` is refused by validation; treat it as dead-letter.
                Action::DeadLetter | Action::Retry => Decision::DeadLetter { exhausted: true },
            },
            Action::DeadLetter => Decision::DeadLetter { exhausted: false },
            Action::Drop => Decision::Drop { exhausted: false },
            Action::Stop => Decision::Stop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Jitter;
    use crate::config::units::Dur;

    #[test]
    fn table_and_exhaustion() {
        let p = Policy {
            errors: ErrorsConfig::default(),
            retry: RetryConfig {
                max_attempts: 3,
                initial: Dur(Duration::from_millis(10)),
                max: Dur(Duration::from_secs(1)),
                multiplier: 2.0,
                jitter: Jitter::None,
            },
        };
        assert_eq!(
            p.decide(FailureClass::Retriable, 1),
            Decision::Retry(Duration::from_millis(10))
        );
        assert_eq!(
            p.decide(FailureClass::Retriable, 2),
            Decision::Retry(Duration::from_millis(20))
        );
        assert_eq!(
            p.decide(FailureClass::Retriable, 3),
            Decision::DeadLetter { exhausted: true }
        );
        assert_eq!(
            p.decide(FailureClass::Fatal, 1),
            Decision::DeadLetter { exhausted: false }
        );
        let mut p2 = p.clone();
        p2.errors.trap = Action::Drop;
        p2.errors.fuel = Action::Stop;
        p2.errors.exhausted = Action::Drop;
        assert_eq!(
            p2.decide(FailureClass::Trap, 1),
            Decision::Drop { exhausted: false }
        );
        assert_eq!(p2.decide(FailureClass::Fuel, 1), Decision::Stop);
        assert_eq!(
            p2.decide(FailureClass::Timeout, 3),
            Decision::Drop { exhausted: true }
        );
        assert!(p.counts_for_breaker(FailureClass::Timeout));
        assert!(p.counts_for_breaker(FailureClass::Sink));
        assert!(!p.counts_for_breaker(FailureClass::Fatal));
        p2.errors.timeout = Action::DeadLetter;
        p2.errors.retriable = Action::Drop;
        p2.errors.sink = Action::DeadLetter;
        assert!(
            !p2.counts_for_breaker(FailureClass::Timeout),
            "dead-lettered at once"
        );
        assert!(
            !p2.counts_for_breaker(FailureClass::Retriable),
            "dropped at once"
        );
        assert!(
            p2.counts_for_breaker(FailureClass::Sink),
            "an outage whatever the action"
        );
    }
}
