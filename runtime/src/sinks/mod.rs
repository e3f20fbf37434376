//! Sinks: one module per broker. A sink returns from `publish` only once the
//! broker (or the file system) durably accepted every record.

pub mod file;
pub mod jetstream;
pub mod kafka;
pub mod memory;
pub mod mqtt;
pub mod nats;

use futures::future::BoxFuture;

use crate::failure::Failure;
use crate::message::Header;
use bytes::Bytes;

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Topic / subject; `None` = the sink's configured default.
    pub topic: Option<String>,
    pub key: Option<Bytes>,
    pub payload: Bytes,
    pub headers: Vec<Header>,
    /// A stable id for this record (same on every retry of the same message),
    /// for brokers that deduplicate (JetStream `Nats-Msg-Id`).
    pub id: String,
}

/// A publisher to one broker destination.
pub trait Sink: Send + Sync {
    /// Publishes the records in order and returns once all were accepted.
    /// A failure is classed [`crate::failure::FailureClass::Sink`] (transient:
    /// broker away, timeout, queue full) or
    /// [`crate::failure::FailureClass::Rejected`] (this very record is refused).
    fn publish<'a>(&'a self, records: &'a [Record]) -> BoxFuture<'a, Result<(), Failure>>;

    /// Flushes and closes the sink at shutdown.
    fn close(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }
}
