//! The low-water mark of a source that commits a position: offsets handed
//! out in increasing order and settled in any order; the position to resume
//! at is the first offset not settled. The file source's checkpoint and the
//! Kafka source's commits (one per partition) both keep theirs here.

use std::collections::VecDeque;

/// Offsets handed out, with whether each settled.
#[derive(Debug)]
pub(crate) struct LowWater<T> {
    /// In offset order. Settled entries before the first unsettled one stay
    /// until [`LowWater::forget_settled_before`] drops them (the file source
    /// keeps them until its checkpoint covers them: they are what a kill
    /// would repeat).
    entries: VecDeque<(T, bool)>,
    /// How many entries at the front settled (the first unsettled follows).
    settled_front: usize,
    unsettled: usize,
}

impl<T> Default for LowWater<T> {
    fn default() -> Self {
        LowWater {
            entries: VecDeque::new(),
            settled_front: 0,
            unsettled: 0,
        }
    }
}

impl<T: Ord + Copy> LowWater<T> {
    /// Records `offset` as handed out and not settled; false when it already
    /// was. Offsets normally grow; one that does not (a partition read again
    /// from an earlier position) takes its place in order.
    pub(crate) fn push(&mut self, offset: T) -> bool {
        match self.entries.back() {
            Some(&(last, _)) if last >= offset => {
                let i = match self.entries.binary_search_by(|e| e.0.cmp(&offset)) {
                    Ok(i) if self.entries[i].1 => {
                        self.entries[i].1 = false;
                        i
                    }
                    Ok(_) => return false,
                    Err(i) => {
                        self.entries.insert(i, (offset, false));
                        i
                    }
                };
                // Everything before it settled when it lies before the
                // first unsettled offset.
                self.settled_front = self.settled_front.min(i);
            }
            _ => self.entries.push_back((offset, false)),
        }
        self.unsettled += 1;
        true
    }

    /// Marks `offset` settled; false when it was not handed out or already settled.
    pub(crate) fn settle(&mut self, offset: T) -> bool {
        let Ok(i) = self.entries.binary_search_by(|e| e.0.cmp(&offset)) else {
            return false;
        };
        if self.entries[i].1 {
            return false;
        }
        self.entries[i].1 = true;
        self.unsettled -= 1;
        while self.entries.get(self.settled_front).is_some_and(|e| e.1) {
            self.settled_front += 1;
        }
        true
    }

    /// The first offset handed out and not settled.
    pub(crate) fn first_unsettled(&self) -> Option<T> {
        self.entries.get(self.settled_front).map(|e| e.0)
    }

    /// Offsets handed out and not settled.
    pub(crate) fn unsettled(&self) -> usize {
        self.unsettled
    }

    /// Offsets handed out since settled ones were last forgotten.
    pub(crate) fn handed_out(&self) -> usize {
        self.entries.len()
    }

    /// Settled offsets before the first unsettled one.
    pub(crate) fn settled_front(&self) -> usize {
        self.settled_front
    }

    /// Forgets the settled offsets at the front that lie before `offset`.
    pub(crate) fn forget_settled_before(&mut self, offset: T) {
        while self.entries.front().is_some_and(|e| e.0 < offset && e.1) {
            self.entries.pop_front();
            self.settled_front -= 1;
        }
    }

    /// Forgets every settled offset at the front.
    pub(crate) fn forget_settled(&mut self) {
        self.entries.drain(..self.settled_front);
        self.settled_front = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_is_the_first_unsettled_offset() {
        let mut w = LowWater::default();
        for o in [10u64, 20, 30] {
            assert!(w.push(o));
        }
        assert!(!w.push(20), "already outstanding");
        assert_eq!(w.first_unsettled(), Some(10));
        assert!(w.settle(20));
        assert!(!w.settle(20), "settled twice");
        assert!(!w.settle(25), "never handed out");
        assert_eq!(
            (w.first_unsettled(), w.unsettled(), w.settled_front()),
            (Some(10), 2, 0)
        );
        assert!(w.settle(10));
        assert_eq!((w.first_unsettled(), w.settled_front()), (Some(30), 2));
        w.forget_settled_before(20);
        assert_eq!((w.handed_out(), w.settled_front()), (2, 1));
        assert!(w.settle(30));
        assert_eq!((w.first_unsettled(), w.unsettled()), (None, 0));
        w.forget_settled();
        assert_eq!(w.handed_out(), 0);
    }

    #[test]
    fn an_offset_read_again_goes_back_in_order() {
        let mut w = LowWater::default();
        for o in [1i64, 2, 3] {
            w.push(o);
        }
        w.settle(1);
        w.settle(2);
        assert_eq!(w.first_unsettled(), Some(3));
        // Read again after it settled: outstanding once more, and the mark
        // goes back to it.
        assert!(w.push(2));
        assert_eq!((w.first_unsettled(), w.unsettled()), (Some(2), 2));
        w.forget_settled();
        // Before everything kept: inserted at the front.
        assert!(w.push(0));
        assert_eq!(w.first_unsettled(), Some(0));
        assert!(w.settle(0) && w.settle(2) && w.settle(3));
        assert_eq!((w.first_unsettled(), w.unsettled()), (None, 0));
    }
}
