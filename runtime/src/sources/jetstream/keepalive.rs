//! `in_progress` for every JetStream message handed out and not settled,
//! told by one task per source instead of a task and a timer per message.
//!
//! The task wakes every half `every` and tells each message whose last word
//! would otherwise be older than `every` by its next wake, so no message
//! goes longer than `every` without one (and `every < ack_wait` is checked
//! by the config).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::message::{AckKind, Acker};
use tokio::time::Instant;

/// Messages out, keyed by a number of their own.
#[derive(Default)]
struct Out {
    next: u64,
    items: HashMap<u64, Item>,
}

struct Item {
    acker: Arc<Acker>,
    /// When the server last heard of it (handed out, or `in_progress`).
    told: Instant,
}

/// The registry shared by the source, its settle handles and the task.
pub(super) struct Keepalive {
    out: Mutex<Out>,
    every: Duration,
}

impl Keepalive {
    /// Starts the task (it ends once the source and every handle are gone).
    pub(super) fn start(every: Duration) -> Arc<Keepalive> {
        let k = Arc::new(Keepalive {
            out: Mutex::new(Out::default()),
            every,
        });
        let weak = Arc::downgrade(&k);
        let period = (every / 2).max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(k) = weak.upgrade() else { return };
                let due = k.due(period);
                drop(k);
                for acker in due {
                    if let Err(e) = acker.ack_with(AckKind::Progress).await {
                        tracing::debug!("in_progress failed: {e}");
                    }
                }
            }
        });
        k
    }

    fn lock(&self) -> MutexGuard<'_, Out> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a message handed out now; returns its key.
    pub(super) fn add(&self, acker: Arc<Acker>) -> u64 {
        let mut out = self.lock();
        out.next += 1;
        let key = out.next;
        out.items.insert(
            key,
            Item {
                acker,
                told: Instant::now(),
            },
        );
        key
    }

    /// The message was settled (or dropped): nothing more to tell.
    pub(super) fn remove(&self, key: u64) {
        self.lock().items.remove(&key);
    }

    /// The messages to tell at this wake (marked as told now).
    fn due(&self, period: Duration) -> Vec<Arc<Acker>> {
        let now = Instant::now();
        let mut out = self.lock();
        out.items
            .values_mut()
            .filter(|i| now.duration_since(i.told) + period >= self.every)
            .map(|i| {
                i.told = now;
                i.acker.clone()
            })
            .collect()
    }
}
