//! Sources: one module per broker, each yielding [`Delivery`]s that carry the
//! means to settle them (commit, ack, PUBACK, checkpoint) exactly once.

mod delayed;
pub mod file;
pub mod jetstream;
pub mod kafka;
mod low_water;
pub mod memory;
pub mod mqtt;
pub mod nats;

use std::time::Duration;

use futures::future::BoxFuture;

use crate::failure::Failure;
use crate::message::{Message, Output};
use crate::stats::{LagGauge, SourceDrops, SourceHealth};
pub use crate::wait::settled;

/// What a request is answered with (NATS request/reply): see [`Settle::answer`].
#[derive(Debug, Clone)]
pub enum Answer {
    /// The handler succeeded; this is its first output (not published to a sink).
    Reply(Output),
    /// The message failed; this is its last failure.
    Failed(Failure),
    /// The pipeline could not take the message (it was shed): why.
    Unavailable(String),
}

/// How a delivery ends. Sent to the source exactly once per delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// The message is done: its outputs (or its dead-letter record) were
    /// accepted downstream, or the policy dropped it. Commit / ack / PUBACK.
    Ack,
    /// The message was dead-lettered. JetStream answers `term`; the other
    /// sources treat it as [`Settlement::Ack`].
    Terminated,
    /// The message is not done: deliver it again after `delay` (JetStream
    /// `nak` with delay; the others re-queue it). Nothing is committed past it.
    Redeliver { delay: Duration },
}

/// The source-specific half of a delivery: how to settle it.
pub trait Settle: Send + 'static {
    /// Settles the delivery. Called exactly once.
    fn settle(self: Box<Self>, how: Settlement) -> BoxFuture<'static, anyhow::Result<()>>;

    /// Tells the broker the message is still being worked on (JetStream
    /// `in_progress`). Default: nothing to tell.
    fn in_progress(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }

    /// True when the delivery is a request waiting for an answer (NATS
    /// request/reply). The pipeline then takes the handler's first output as
    /// the answer instead of publishing it, and reports failures to [`Settle::answer`].
    fn wants_answer(&self) -> bool {
        false
    }

    /// Records the answer the source sends when the delivery is settled.
    /// Called before `settle`, possibly several times (each failure, then a
    /// success); the last call counts. Default: nothing to answer.
    fn answer(&mut self, _answer: Answer) {}
}

/// One message plus the means to settle it.
pub struct Delivery {
    pub message: Message,
    /// Set when the source could not turn the bytes into a message; the payload
    /// then holds the raw bytes and the pipeline routes the `decode` class.
    pub decode_error: Option<String>,
    settle: Option<Box<dyn Settle>>,
}

impl Delivery {
    pub fn new(message: Message, settle: Box<dyn Settle>) -> Self {
        Delivery {
            message,
            decode_error: None,
            settle: Some(settle),
        }
    }

    /// A delivery whose bytes could not be decoded.
    pub fn undecodable(message: Message, error: String, settle: Box<dyn Settle>) -> Self {
        Delivery {
            message,
            decode_error: Some(error),
            settle: Some(settle),
        }
    }

    /// Settles the delivery; the handle is consumed, so it cannot happen twice.
    pub async fn settle(mut self, how: Settlement) -> anyhow::Result<()> {
        match self.settle.take() {
            Some(s) => s.settle(how).await,
            None => Ok(()),
        }
    }

    /// Whether the source wants the outcome handed to [`Settle::answer`]
    /// (a request that must get a reply).
    pub fn wants_answer(&self) -> bool {
        self.settle.as_ref().is_some_and(|s| s.wants_answer())
    }

    /// Splits the delivery into its message and its settle handle.
    pub fn into_parts(mut self) -> (Message, Option<String>, Box<dyn Settle>) {
        let settle = self
            .settle
            .take()
            .expect("a delivery always has its handle until settled");
        (
            std::mem::replace(&mut self.message, Message::new("", Vec::new())),
            self.decode_error.take(),
            settle,
        )
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if self.settle.is_some() {
            // Not a loss: an unsettled delivery is redelivered by the broker (or
            // re-read from the checkpoint), but it means a code path forgot it.
            tracing::warn!(topic = %self.message.topic, offset = ?self.message.offset,
                "delivery dropped without being settled; it will be redelivered");
        }
    }
}

/// Why a source failed as a whole (not one message).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The configuration or credentials are wrong; retrying will not help.
    #[error("{0}")]
    Fatal(String),
    /// The broker is away; the source keeps reconnecting.
    #[error("{0}")]
    Transient(String),
}

/// A stream of deliveries from one broker subscription.
pub trait Source: Send {
    /// The next delivery. `Ok(None)` means the source is finished: a `file`
    /// source with `follow = false` at end of input once every line it handed
    /// out is settled.
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Delivery>, SourceError>>;

    /// What [`Source::next`] would give at once, when the source has it
    /// without waiting; `None` means "call `next`". The pipeline asks this
    /// first, so a message already received costs no future of `next`.
    /// Default: always `None`.
    fn try_next(&mut self) -> Option<Result<Option<Delivery>, SourceError>> {
        None
    }

    /// True when the broker schedules redeliveries itself (JetStream): the
    /// policy then answers a retry with [`Settlement::Redeliver`] and the delay
    /// instead of sleeping, so a restart does not lose the schedule.
    fn redelivers(&self) -> bool {
        false
    }

    /// Hands the source the gauge where it reports how far behind the broker
    /// it is (Kafka consumer lag, JetStream pending). Default: the broker does
    /// not tell (MQTT, NATS core, files), and the gauge stays unknown.
    fn report_lag(&mut self, _gauge: LagGauge) {}

    /// Hands the source where it says whether it is consuming (a Kafka
    /// member holding no partition is not). Default: always consuming.
    fn report_health(&mut self, _health: SourceHealth) {}

    /// Hands the source where it reports what it drops before the pipeline
    /// takes it (NATS core past its pending limits). Default: it drops nothing.
    fn report_drops(&mut self, _drops: SourceDrops) {}

    /// True when its deliveries are requests whose callers wait for a reply
    /// (NATS request/reply). While the circuit breaker is open, the pipeline
    /// then keeps taking them and answers each `unavailable` (the fallback,
    /// or an error reply naming why) instead of pausing: a paused request
    /// would wait unanswered until its caller gave up.
    fn answers_requests(&self) -> bool {
        false
    }

    /// Stops taking new messages from the broker (circuit breaker open).
    /// Messages already handed out stay valid.
    fn pause(&mut self) {}

    /// Undoes [`Source::pause`].
    fn resume(&mut self) {}

    /// Stops intake for shutdown; deliveries already handed out may still be settled.
    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
