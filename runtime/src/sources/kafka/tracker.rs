//! Per-partition bookkeeping of the kafka source: which offsets were received
//! and not yet settled, and what may be committed. Pure (no I/O), so the
//! commit rule is unit-tested on its own.
//!
//! The commit rule: a partition's commit position is its lowest unsettled
//! offset, or one past the highest offset received when everything received
//! is settled. Out-of-order settles therefore never commit past a message
//! that is still being worked on (or waiting to be redelivered).

use std::collections::HashMap;
use std::sync::Arc;

use crate::sources::low_water::LowWater;

/// A topic and partition.
pub type Tp = (Arc<str>, i32);

/// One assigned partition.
#[derive(Debug)]
struct Part {
    /// Which assignment this is: settles of an older one are ignored.
    generation: u64,
    /// Received and not settled (handed out, queued or waiting to be redelivered).
    outstanding: LowWater<i64>,
    /// One past the highest offset received.
    next: Option<i64>,
    /// The position last committed (or being committed).
    committed: Option<i64>,
    /// Where this assignment's reading started, moved by each commit known
    /// to have succeeded: where an aborted transaction rewinds to.
    base: Option<i64>,
    /// The highest offset settled: above the first unsettled one, the
    /// settled messages are not a contiguous prefix (a gap).
    max_settled: Option<i64>,
}

impl Part {
    fn position(&self) -> Option<i64> {
        self.outstanding.first_unsettled().or(self.next)
    }
}

/// The tracker of every partition currently assigned.
#[derive(Debug, Default)]
pub struct Tracker {
    parts: HashMap<Tp, Part>,
    generations: u64,
    /// Received and not settled, across all partitions.
    in_flight: usize,
    /// Settled since the last [`Tracker::to_commit`], across all partitions.
    settled_since_commit: usize,
}

impl Tracker {
    /// Received and not settled, across all partitions.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Settled since positions were last taken for a commit.
    pub fn settled_since_commit(&self) -> usize {
        self.settled_since_commit
    }

    /// A (re)assigned partition starts a new generation with nothing tracked.
    pub fn assign(&mut self, tp: Tp) {
        self.generations += 1;
        if let Some(old) = self.parts.insert(
            tp,
            Part {
                generation: self.generations,
                outstanding: LowWater::default(),
                next: None,
                committed: None,
                base: None,
                max_settled: None,
            },
        ) {
            self.in_flight -= old.outstanding.unsettled();
        }
    }

    /// Records a received offset; returns the generation its settle must carry.
    pub fn received(&mut self, tp: &Tp, offset: i64) -> u64 {
        if !self.parts.contains_key(tp) {
            // A message before its assign callback was seen: track it anyway.
            self.assign(tp.clone());
        }
        let Some(p) = self.parts.get_mut(tp) else {
            unreachable!("inserted above")
        };
        if p.outstanding.push(offset) {
            self.in_flight += 1;
        }
        p.base.get_or_insert(offset);
        p.next = Some(p.next.map_or(offset + 1, |n| n.max(offset + 1)));
        p.generation
    }

    /// Whether `generation` is still the live assignment of `tp`.
    pub fn is_current(&self, tp: &Tp, generation: u64) -> bool {
        self.parts
            .get(tp)
            .is_some_and(|p| p.generation == generation)
    }

    /// Marks an offset done. Ignored for a revoked or older assignment.
    pub fn settled(&mut self, tp: &Tp, generation: u64, offset: i64) {
        if let Some(p) = self.parts.get_mut(tp)
            && p.generation == generation
            && p.outstanding.settle(offset)
        {
            // Only the mark matters once they settled.
            p.outstanding.forget_settled();
            p.max_settled = Some(p.max_settled.map_or(offset, |m| m.max(offset)));
            self.in_flight -= 1;
            self.settled_since_commit += 1;
        }
    }

    /// Positions that moved past what was last committed, marking them
    /// committed (call [`Tracker::uncommit`] if the commit fails).
    pub fn to_commit(&mut self) -> Vec<(Tp, i64)> {
        self.settled_since_commit = 0;
        let mut out = Vec::new();
        for (tp, p) in &mut self.parts {
            if let Some(pos) = p.position()
                && p.committed.is_none_or(|c| pos > c)
            {
                p.committed = Some(pos);
                out.push((tp.clone(), pos));
            }
        }
        out.sort();
        out
    }

    /// Every partition's position, whether or not it moved (for a final commit).
    pub fn positions(&self) -> Vec<(Tp, i64)> {
        let mut out: Vec<(Tp, i64)> = self
            .parts
            .iter()
            .filter_map(|(tp, p)| p.position().map(|pos| (tp.clone(), pos)))
            .collect();
        out.sort();
        out
    }

    /// A commit of `pos` for `tp` failed: commit it again next time.
    pub fn uncommit(&mut self, tp: &Tp, pos: i64) {
        if let Some(p) = self.parts.get_mut(tp)
            && p.committed == Some(pos)
        {
            p.committed = None;
        }
    }

    /// Whether some partition has a message settled after one that is not:
    /// its position would not cover every settled message.
    pub fn gapped(&self) -> bool {
        self.parts.values().any(|p| {
            p.outstanding
                .first_unsettled()
                .zip(p.max_settled)
                .is_some_and(|(first, max)| max > first)
        })
    }

    /// These positions were committed for good: an abort rewinds no further back.
    pub fn committed_ok(&mut self, positions: &[(Tp, i64)]) {
        for (tp, pos) in positions {
            if let Some(p) = self.parts.get_mut(tp) {
                p.base = Some(*pos);
            }
        }
    }

    /// Starts `tp` again from where its last good commit left it (an aborted
    /// transaction): everything tracked is forgotten under a new generation.
    /// Returns the offset to seek to, when anything was read since.
    pub fn rewind(&mut self, tp: &Tp) -> Option<i64> {
        let p = self.parts.get(tp)?;
        let read_since = p.next.is_some_and(|n| p.base.is_none_or(|b| n > b));
        let base = p.base;
        self.assign(tp.clone());
        if let Some(p) = self.parts.get_mut(tp) {
            p.base = base;
        }
        base.filter(|_| read_since)
    }

    /// Forgets a revoked partition; returns its position to commit, if any.
    pub fn revoke(&mut self, tp: &Tp) -> Option<i64> {
        let p = self.parts.remove(tp)?;
        self.in_flight -= p.outstanding.unsettled();
        p.position()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> Tp {
        (Arc::from("t"), p)
    }

    #[test]
    fn commits_only_the_contiguous_settled_prefix() {
        let mut t = Tracker::default();
        t.assign(tp(0));
        let g = (0..5).map(|o| t.received(&tp(0), o)).last().unwrap();
        assert_eq!(t.in_flight(), 5);
        assert!(t.to_commit().iter().all(|(_, pos)| *pos == 0));
        // Settle 1, 2, 4: 0 is still open, nothing moves.
        for o in [1, 2, 4] {
            t.settled(&tp(0), g, o);
        }
        assert!(t.to_commit().is_empty());
        t.settled(&tp(0), g, 0);
        // Counted since the last `to_commit` (just above, which moved nothing).
        assert_eq!(t.settled_since_commit(), 1);
        assert_eq!(t.to_commit(), vec![(tp(0), 3)]);
        assert_eq!(
            t.settled_since_commit(),
            0,
            "taking positions resets the count"
        );
        assert!(t.to_commit().is_empty(), "no repeat when nothing moved");
        t.settled(&tp(0), g, 3);
        assert_eq!(t.to_commit(), vec![(tp(0), 5)]);
        assert_eq!(t.in_flight(), 0);
        // A failed commit is retried.
        t.uncommit(&tp(0), 5);
        assert_eq!(t.to_commit(), vec![(tp(0), 5)]);
    }

    #[test]
    fn offsets_with_gaps_and_revocation() {
        let mut t = Tracker::default();
        t.assign(tp(1));
        let g = t.received(&tp(1), 10);
        t.received(&tp(1), 13); // compacted / transaction markers in between
        t.settled(&tp(1), g, 13);
        assert_eq!(t.positions(), vec![(tp(1), 10)]);
        t.settled(&tp(1), g, 10);
        assert_eq!(t.positions(), vec![(tp(1), 14)]);
        t.received(&tp(1), 14);
        assert_eq!(t.revoke(&tp(1)), Some(14));
        assert_eq!(t.in_flight(), 0);
        // A settle of the old assignment after reassignment changes nothing.
        t.assign(tp(1));
        let g2 = t.received(&tp(1), 14);
        assert_ne!(g, g2);
        t.settled(&tp(1), g, 14);
        assert_eq!(t.in_flight(), 1);
        assert!(!t.is_current(&tp(1), g));
        t.settled(&tp(1), g2, 14);
        assert_eq!(t.positions(), vec![(tp(1), 15)]);
        assert_eq!(t.revoke(&tp(2)), None);
    }

    #[test]
    fn a_rewind_goes_back_to_the_last_good_commit() {
        let mut t = Tracker::default();
        t.assign(tp(0));
        let g = (10..15).map(|o| t.received(&tp(0), o)).last().unwrap();
        for o in 10..13 {
            t.settled(&tp(0), g, o);
        }
        assert!(!t.gapped());
        let pos = t.to_commit();
        assert_eq!(pos, vec![(tp(0), 13)]);
        t.committed_ok(&pos);
        t.received(&tp(0), 15);
        // 14 settles before 13: a gap.
        t.settled(&tp(0), g, 14);
        assert!(t.gapped());
        assert_eq!(t.rewind(&tp(0)), Some(13), "back to the commit, not to 10");
        assert_eq!(t.in_flight(), 0);
        assert!(!t.gapped());
        assert_eq!(t.rewind(&tp(0)), None, "nothing read since: no seek");
        // Without a commit, back to the first offset read.
        t.assign(tp(1));
        t.received(&tp(1), 7);
        assert_eq!(t.rewind(&tp(1)), Some(7));
    }
}
