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
    /// Keep the message and wait until the circuit breaker half-opens; the
    /// message is then tried again as its probe.
    Hold,
    /// Leave the message unsettled: the source delivers it again after
    /// this delay.
    Redeliver(Duration),
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

    /// The decision the pipeline carries out for a message that failed with
    /// `class` on attempt `attempt`, `breaker` telling whether the circuit
    /// breaker is on: [`Policy::decide`], except that a `sink` failure whose
    /// retries ran out towards the dead letter is held for the breaker. The
    /// sink is away, not the message at fault: the stream is not burnt into
    /// the dead letter while it is.
    pub fn on_failure(&self, class: FailureClass, attempt: u32, breaker: bool) -> Decision {
        match self.decide(class, attempt) {
            Decision::DeadLetter { exhausted: true } if class == FailureClass::Sink && breaker => {
                Decision::Hold
            }
            d => d,
        }
    }

    /// The decision when writing the dead-letter record of a message on
    /// attempt `attempt` failed with `class`: a refusal for good (`rejected`,
    /// after every cut-down form of the record) stops the pipeline, since
    /// trying again would only spin; anything else leaves the message
    /// unsettled, to be delivered again after the retry backoff.
    pub fn on_dead_letter_failure(&self, class: FailureClass, attempt: u32) -> Decision {
        match class {
            FailureClass::Rejected => Decision::Stop,
            _ => Decision::Redeliver(backoff::delay(&self.retry, attempt + 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Jitter;
    use crate::config::units::Dur;

    fn policy() -> Policy {
        Policy {
            errors: ErrorsConfig::default(),
            retry: RetryConfig {
                max_attempts: 3,
                initial: Dur(Duration::from_millis(10)),
                max: Dur(Duration::from_secs(1)),
                multiplier: 2.0,
                jitter: Jitter::None,
            },
        }
    }

    #[test]
    fn exhausted_sink_failure_is_held_while_the_breaker_is_on() {
        let p = policy();
        assert_eq!(p.on_failure(FailureClass::Sink, 3, true), Decision::Hold);
        assert_eq!(
            p.on_failure(FailureClass::Sink, 3, false),
            Decision::DeadLetter { exhausted: true }
        );
        assert_eq!(
            p.on_failure(FailureClass::Sink, 1, true),
            Decision::Retry(Duration::from_millis(10))
        );
        // Only the sink is "away": other classes go to the dead letter.
        assert_eq!(
            p.on_failure(FailureClass::Retriable, 3, true),
            Decision::DeadLetter { exhausted: true }
        );
        // A sink failure the table dead-letters at once is the record's fault.
        let mut p2 = p.clone();
        p2.errors.sink = Action::DeadLetter;
        assert_eq!(
            p2.on_failure(FailureClass::Sink, 1, true),
            Decision::DeadLetter { exhausted: false }
        );
        // `exhausted = "drop"` is followed, not held.
        p2.errors.sink = Action::Retry;
        p2.errors.exhausted = Action::Drop;
        assert_eq!(
            p2.on_failure(FailureClass::Sink, 3, true),
            Decision::Drop { exhausted: true }
        );
    }

    #[test]
    fn failed_dead_letter_write_is_redelivered_after_backoff_or_stops() {
        let p = policy();
        assert_eq!(
            p.on_dead_letter_failure(FailureClass::Sink, 1),
            Decision::Redeliver(Duration::from_millis(10))
        );
        assert_eq!(
            p.on_dead_letter_failure(FailureClass::Sink, 3),
            Decision::Redeliver(Duration::from_millis(40))
        );
        assert_eq!(
            p.on_dead_letter_failure(FailureClass::Timeout, 2),
            Decision::Redeliver(Duration::from_millis(20))
        );
        assert_eq!(
            p.on_dead_letter_failure(FailureClass::Rejected, 1),
            Decision::Stop
        );
    }

    #[test]
    fn table_and_exhaustion() {
        let p = policy();
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
