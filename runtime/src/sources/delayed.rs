//! Deliveries a source holds back until they are due (a redelivery asked
//! for with a delay): the earliest due first, and among equal due times the
//! one put back first. The file, Kafka and MQTT sources keep theirs here.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use tokio::time::Instant;

/// Items waiting for their due time.
pub(crate) struct Delayed<T> {
    heap: BinaryHeap<Entry<T>>,
    /// Orders equal due times by arrival.
    seq: u64,
}

struct Entry<T> {
    due: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    /// Reversed, so the max-heap pops the earliest due first.
    fn cmp(&self, other: &Self) -> Ordering {
        Reverse((self.due, self.seq)).cmp(&Reverse((other.due, other.seq)))
    }
}

impl<T> Default for Delayed<T> {
    fn default() -> Self {
        Delayed {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<T> Delayed<T> {
    /// Holds `item` back until `due`.
    pub(crate) fn push(&mut self, due: Instant, item: T) {
        self.seq += 1;
        self.heap.push(Entry {
            due,
            seq: self.seq,
            item,
        });
    }

    /// When the earliest item is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.due)
    }

    /// The earliest item, if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<T> {
        if self.heap.peek()?.due <= now {
            return self.heap.pop().map(|e| e.item);
        }
        None
    }

    /// Keeps only the items `keep` says to.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.heap.retain(|e| keep(&e.item));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn earliest_due_first_then_arrival_order() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Delayed::default();
        d.push(t0 + ms(30), "c");
        d.push(t0 + ms(10), "a");
        d.push(t0 + ms(10), "b");
        assert_eq!(d.next_due(), Some(t0 + ms(10)));
        assert_eq!(d.pop_due(t0), None, "nothing due yet");
        assert_eq!(d.pop_due(t0 + ms(10)), Some("a"));
        assert_eq!(d.pop_due(t0 + ms(10)), Some("b"));
        assert_eq!(d.pop_due(t0 + ms(20)), None);
        d.retain(|s| *s != "c");
        assert_eq!(d.next_due(), None);
        assert_eq!(d.pop_due(t0 + ms(40)), None);
    }
}
