//! Failure classes: every failure knows its class where it is created, so the
//! policy is a table lookup (`policy/`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The class of a failure. The pipeline's `[errors]` table maps each to an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureClass {
    /// The handler returned `retriable`: a transient problem.
    Retriable,
    /// The handler returned `fatal`: this message will never succeed.
    Fatal,
    /// The handler trapped: panic, `unreachable`, WASI `exit`, stack overflow, bad output.
    Trap,
    /// The handler ran past its wall-clock budget (`timeout`).
    Timeout,
    /// The handler ran out of fuel (instructions).
    Fuel,
    /// The handler tried to grow its memory past its cap.
    Memory,
    /// An output could not be published for a transient reason (broker away, timeout, queue full).
    Sink,
    /// The broker refused this very message and always will (too large, invalid topic, not authorised).
    Rejected,
    /// The source could not turn the bytes into a message.
    Decode,
}

impl FailureClass {
    /// Every class, in the order the documentation lists them.
    pub const ALL: [FailureClass; 9] = [
        FailureClass::Retriable,
        FailureClass::Fatal,
        FailureClass::Trap,
        FailureClass::Timeout,
        FailureClass::Fuel,
        FailureClass::Memory,
        FailureClass::Sink,
        FailureClass::Rejected,
        FailureClass::Decode,
    ];

    /// The name used in TOML, headers, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Retriable => "retriable",
            FailureClass::Fatal => "fatal",
            FailureClass::Trap => "trap",
            FailureClass::Timeout => "timeout",
            FailureClass::Fuel => "fuel",
            FailureClass::Memory => "memory",
            FailureClass::Sink => "sink",
            FailureClass::Rejected => "rejected",
            FailureClass::Decode => "decode",
        }
    }

    /// Whether the failure may be about the circumstances rather than the
    /// message: the classes the circuit breaker may count (see
    /// `Policy::counts_for_breaker`).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            FailureClass::Retriable | FailureClass::Timeout | FailureClass::Sink
        )
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified failure of one message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class}: {message}")]
pub struct Failure {
    pub class: FailureClass,
    pub message: String,
    /// The broker refused the record because it is full (a stream or
    /// account at its limits, its store out of space): a `sink` failure
    /// that `/metrics` counts on its own (`sluice_broker_full_total`).
    pub broker_full: bool,
    /// The Kafka transaction this message's outputs went into was aborted
    /// (`delivery = "exactly-once"`): the source reads the message again from
    /// the last committed offset, so this copy is handed back, not retried.
    pub abandoned: bool,
}

impl Failure {
    pub fn new(class: FailureClass, message: impl Into<String>) -> Self {
        Failure {
            class,
            message: message.into(),
            broker_full: false,
            abandoned: false,
        }
    }

    /// A message whose transaction was aborted: see [`Failure::abandoned`].
    pub fn abandoned(message: impl Into<String>) -> Self {
        Failure {
            abandoned: true,
            ..Failure::new(FailureClass::Sink, message)
        }
    }

    /// A `sink` failure because the broker is full: transient, it passes
    /// once the broker has room again.
    pub fn broker_full(message: impl Into<String>) -> Self {
        Failure {
            broker_full: true,
            ..Failure::new(FailureClass::Sink, message)
        }
    }
}
