//! Dedup: remembers the ids of settled messages for a time window (bounded
//! in entries) and recognises a redelivered or republished duplicate, and
//! the ids of messages in flight (handed to a worker, not yet settled), so a
//! copy the broker redelivers while its original is still being handled is
//! told apart too.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::config::DedupConfig;
use crate::message::Message;

/// What a message's id says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not seen within the window: handle it.
    New,
    /// A message with this id was settled within the window: drop this copy.
    Settled,
    /// A message with this id is being handled now: this copy must neither
    /// be handled (it would give a second output) nor acknowledged (the
    /// original may yet fail and need the broker's redelivery); it is
    /// handed back, and by the time it comes again the original is settled.
    InFlight,
}

/// What identifies a message for dedup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DedupBy {
    Key,
    Payload,
    Header(String),
}

impl DedupBy {
    /// Parses `key`, `payload` or `header:NAME`.
    pub fn parse(s: &str) -> Option<DedupBy> {
        match s {
            "key" => Some(DedupBy::Key),
            "payload" => Some(DedupBy::Payload),
            _ => s
                .strip_prefix("header:")
                .filter(|n| !n.is_empty())
                .map(|n| DedupBy::Header(n.to_string())),
        }
    }
}

/// A windowed, bounded set of seen ids.
pub struct Dedup {
    by: DedupBy,
    window: Duration,
    max_entries: usize,
    seen: HashMap<Vec<u8>, Instant>,
    order: VecDeque<(Instant, Vec<u8>)>,
    /// Copies of each id handed to workers and not yet settled. Bounded by
    /// what the pipeline holds (the source's in-flight limit).
    in_flight: HashMap<Vec<u8>, u32>,
}

impl Dedup {
    pub fn new(cfg: &DedupConfig) -> Option<Dedup> {
        Some(Dedup {
            by: DedupBy::parse(&cfg.by)?,
            window: cfg.window.0,
            max_entries: cfg.max_entries.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
            in_flight: HashMap::new(),
        })
    }

    /// The id of a message; `None` when it has none (no key, no such header):
    /// such messages are never treated as duplicates.
    pub fn id(&self, msg: &Message) -> Option<Vec<u8>> {
        match &self.by {
            DedupBy::Key => msg.key.as_ref().map(|k| k.to_vec()),
            DedupBy::Payload => Some(Sha256::digest(&msg.payload).to_vec()),
            DedupBy::Header(h) => msg.header(h).map(|v| v.to_vec()),
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((t, _)) = self.order.front() {
            if now.duration_since(*t) < self.window && self.order.len() <= self.max_entries {
                break;
            }
            if let Some((t, id)) = self.order.pop_front()
                && self.seen.get(&id) == Some(&t)
            {
                self.seen.remove(&id);
            }
        }
    }

    /// Whether `id` was settled within the window.
    pub fn is_duplicate(&mut self, id: &[u8]) -> bool {
        self.expire(Instant::now());
        self.seen.contains_key(id)
    }

    /// Whether `id` was settled within the window or is in flight now.
    pub fn check(&mut self, id: &[u8]) -> Seen {
        if self.is_duplicate(id) {
            Seen::Settled
        } else if self.in_flight.contains_key(id) {
            Seen::InFlight
        } else {
            Seen::New
        }
    }

    /// Counts a copy of `id` as in flight until [`Dedup::end`].
    pub fn begin(&mut self, id: Vec<u8>) {
        *self.in_flight.entry(id).or_default() += 1;
    }

    /// A copy of `id` begun with [`Dedup::begin`] was settled or let go.
    pub fn end(&mut self, id: &[u8]) {
        if let Some(n) = self.in_flight.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(id);
            }
        }
    }

    /// Remembers a settled message's id.
    pub fn remember(&mut self, id: Vec<u8>) {
        let now = Instant::now();
        self.seen.insert(id.clone(), now);
        self.order.push_back((now, id));
        self.expire(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::Dur;

    #[tokio::test(start_paused = true)]
    async fn window_and_bound() {
        let cfg = DedupConfig {
            by: "header:id".into(),
            window: Dur(Duration::from_secs(10)),
            max_entries: 2,
        };
        let mut d = Dedup::new(&cfg).unwrap();
        let mut m = Message::new("t", "x");
        assert_eq!(d.id(&m), None);
        m.headers.push(crate::message::Header::new("id", "1"));
        let id = d.id(&m).unwrap();
        assert!(!d.is_duplicate(&id));
        d.remember(id.clone());
        assert!(d.is_duplicate(&id));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!d.is_duplicate(&id), "forgotten after the window");
        d.remember(b"a".to_vec());
        d.remember(b"b".to_vec());
        d.remember(b"c".to_vec());
        assert!(!d.is_duplicate(b"a"), "bounded: oldest forgotten");
        assert!(d.is_duplicate(b"c"));
        assert!(DedupBy::parse("header:").is_none());
    }
}
