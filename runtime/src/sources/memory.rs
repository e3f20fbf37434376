//! An in-memory source: a fixed list of messages, settled into counters.
//! For benchmarks (the pipeline path without a broker) and tests.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use futures::future::BoxFuture;

use super::{Delivery, Settle, Settlement, Source, SourceError};
use crate::message::Message;

/// How the deliveries of a [`MemorySource`] were settled.
#[derive(Debug, Default)]
pub struct Settled {
    pub acked: AtomicU64,
    pub terminated: AtomicU64,
    pub redelivered: AtomicU64,
}

/// Hands out its messages once each, then reports the end.
pub struct MemorySource {
    queue: VecDeque<Message>,
    settled: Arc<Settled>,
}

impl MemorySource {
    pub fn new(messages: impl IntoIterator<Item = Message>) -> Self {
        MemorySource {
            queue: messages.into_iter().collect(),
            settled: Arc::new(Settled::default()),
        }
    }

    fn pop(&mut self) -> Option<Delivery> {
        self.queue
            .pop_front()
            .map(|m| Delivery::new(m, Box::new(Handle(self.settled.clone()))))
    }

    /// The settle counters, shared with the deliveries.
    pub fn settled(&self) -> Arc<Settled> {
        self.settled.clone()
    }
}

struct Handle(Arc<Settled>);

impl Settle for Handle {
    fn settle(self: Box<Self>, how: Settlement) -> BoxFuture<'static, anyhow::Result<()>> {
        let c = match how {
            Settlement::Ack => &self.0.acked,
            Settlement::Terminated => &self.0.terminated,
            Settlement::Redeliver { .. } => &self.0.redelivered,
        };
        c.fetch_add(1, Relaxed);
        super::settled()
    }
}

impl Source for MemorySource {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Delivery>, SourceError>> {
        let d = self.pop();
        Box::pin(async move { Ok(d) })
    }

    fn try_next(&mut self) -> Option<Result<Option<Delivery>, SourceError>> {
        Some(Ok(self.pop()))
    }
}
