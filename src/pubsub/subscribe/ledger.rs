//! The exactly-once bookkeeping of sub, without I/O: per assigned partition, the offset
//! PostgreSQL holds, the offsets of the batch in hand, and which partitions are read to
//! their end.
//!
//! The guarantee rests on two things kept here. A message below the offset already
//! stored, or already in hand, is skipped. And each commit moves a partition's stored
//! offset only from the value the ledger expects (the fence, in
//! [`super::store`]): a consumer whose picture is stale, because the partition moved
//! to another consumer, commits nothing and rewinds.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

/// Where to start reading a partition: at an offset, or at the beginning of what Kafka
/// still holds when PostgreSQL has no offset for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    At(i64),
    Beginning,
}

/// What to do with a consumed message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Store it: it is the next one expected.
    Take,
    /// Store it, though the offsets in `missing` never arrived: Kafka deleted them
    /// (retention) before they were read.
    TakeAfterGap { missing: Range<i64> },
    /// Skip it: it is stored already or in the batch in hand (a re-delivery after a
    /// seek, or a rewind).
    Held,
    /// Skip it: its partition is not assigned to this consumer (a straggler fetched
    /// before a revoke).
    NotAssigned,
}

#[derive(Debug, Default)]
pub struct Ledger {
    /// Per assigned partition, the next offset PostgreSQL holds (None: no row yet).
    stored: BTreeMap<i32, Option<i64>>,
    /// Per partition with messages in hand, the offset after the last of them.
    pending: BTreeMap<i32, i64>,
    /// Assigned partitions read to their end, with nothing newer in hand.
    at_end: BTreeSet<i32>,
}

impl Ledger {
    /// Takes on newly assigned partitions, with the offsets PostgreSQL holds for some
    /// of them, and says where to read each from.
    ///
    /// When the stored offsets could not be read, the caller passes none: every
    /// partition then starts at the beginning and expects no stored row. That is safe
    /// only because of the fence. If PostgreSQL does hold an offset, the first commit
    /// finds it where "no row" was expected, writes nothing, and the rewind that
    /// follows reads the real offsets.
    pub fn assign(&mut self, partitions: &[i32], stored: &BTreeMap<i32, i64>) -> Vec<(i32, Start)> {
        self.take_positions(partitions, stored)
    }

    /// Drops every partition and everything in hand; the batch in hand must be
    /// dropped with it. Returns the partitions that were assigned.
    pub fn revoke(&mut self) -> Vec<i32> {
        let revoked = self.partitions();
        self.stored.clear();
        self.pending.clear();
        self.at_end.clear();
        revoked
    }

    /// After a failed or fenced commit: forgets what was in hand and starts every
    /// assigned partition again from what PostgreSQL holds now.
    pub fn rewind(&mut self, stored: &BTreeMap<i32, i64>) -> Vec<(i32, Start)> {
        let partitions = self.partitions();
        self.take_positions(&partitions, stored)
    }

    fn take_positions(
        &mut self,
        partitions: &[i32],
        stored: &BTreeMap<i32, i64>,
    ) -> Vec<(i32, Start)> {
        partitions
            .iter()
            .map(|&partition| {
                let next = stored.get(&partition).copied();
                self.stored.insert(partition, next);
                self.pending.remove(&partition);
                self.at_end.remove(&partition);
                (partition, next.map_or(Start::Beginning, Start::At))
            })
            .collect()
    }

    /// Judges a consumed message; one that is taken counts as in hand from now on.
    pub fn judge(&mut self, partition: i32, offset: i64) -> Verdict {
        let Some(&stored) = self.stored.get(&partition) else {
            return Verdict::NotAssigned;
        };
        let next = self.pending.get(&partition).copied().or(stored);
        let verdict = match next {
            Some(next) if offset < next => return Verdict::Held,
            Some(next) if offset > next => Verdict::TakeAfterGap {
                missing: next..offset,
            },
            _ => Verdict::Take,
        };
        self.pending.insert(partition, offset + 1);
        self.at_end.remove(&partition);
        verdict
    }

    /// Kafka says the partition has nothing after what was read. (For a partition not
    /// assigned yet, the mark is cleared when it is.)
    pub fn reached_end(&mut self, partition: i32) {
        self.at_end.insert(partition);
    }

    /// Whether every assigned partition is stored up to its end: what `--once` waits
    /// for. A consumer with no partitions yet is not caught up.
    pub fn caught_up(&self) -> bool {
        !self.stored.is_empty()
            && self.pending.is_empty()
            && self.stored.keys().all(|p| self.at_end.contains(p))
    }

    /// The offsets the batch in hand moves its partitions to.
    pub fn pending(&self) -> &BTreeMap<i32, i64> {
        &self.pending
    }

    /// The offsets PostgreSQL must still hold for a commit to go ahead: the fence.
    pub fn expected(&self) -> &BTreeMap<i32, Option<i64>> {
        &self.stored
    }

    /// The batch in hand is committed: its offsets are what PostgreSQL holds now.
    pub fn committed(&mut self) {
        for (partition, next) in std::mem::take(&mut self.pending) {
            self.stored.insert(partition, Some(next));
        }
    }

    pub fn partitions(&self) -> Vec<i32> {
        self.stored.keys().copied().collect()
    }

    pub fn is_assigned(&self) -> bool {
        !self.stored.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(pairs: &[(i32, i64)]) -> BTreeMap<i32, i64> {
        pairs.iter().copied().collect()
    }

    /// A ledger holding partitions 0 and 1, with 0 stored up to offset 10.
    fn assigned() -> Ledger {
        let mut ledger = Ledger::default();
        ledger.assign(&[0, 1], &stored(&[(0, 10)]));
        ledger
    }

    #[test]
    fn assignment_starts_at_the_stored_offset_or_the_beginning() {
        let mut ledger = Ledger::default();
        let starts = ledger.assign(&[0, 1], &stored(&[(0, 10), (7, 3)]));
        assert_eq!(starts, [(0, Start::At(10)), (1, Start::Beginning)]);
        assert_eq!(
            ledger.expected(),
            &BTreeMap::from([(0, Some(10)), (1, None)]),
            "the fence expects what PostgreSQL holds, and no row where it has none"
        );
    }

    #[test]
    fn a_message_below_the_stored_offset_is_skipped() {
        let mut ledger = assigned();
        assert_eq!(ledger.judge(0, 9), Verdict::Held);
        assert_eq!(ledger.judge(0, 10), Verdict::Take);
        assert_eq!(ledger.judge(0, 10), Verdict::Held, "already in hand");
        assert_eq!(ledger.judge(1, 0), Verdict::Take, "nothing stored: from 0");
        assert_eq!(ledger.pending(), &BTreeMap::from([(0, 11), (1, 1)]));
    }

    #[test]
    fn a_gap_is_taken_and_named() {
        let mut ledger = assigned();
        assert_eq!(
            ledger.judge(0, 15),
            Verdict::TakeAfterGap { missing: 10..15 }
        );
        assert_eq!(ledger.pending(), &BTreeMap::from([(0, 16)]));
        assert_eq!(ledger.judge(0, 16), Verdict::Take);
    }

    #[test]
    fn stragglers_after_a_revoke_are_not_taken() {
        let mut ledger = assigned();
        assert_eq!(ledger.judge(0, 10), Verdict::Take);
        assert_eq!(ledger.revoke(), [0, 1]);
        assert_eq!(ledger.judge(0, 11), Verdict::NotAssigned);
        assert!(ledger.pending().is_empty(), "what was in hand is dropped");
        assert!(!ledger.is_assigned());
        ledger.reached_end(0);
        assert!(!ledger.caught_up(), "no partitions, so not caught up");
    }

    #[test]
    fn caught_up_once_every_partition_is_at_its_end_with_nothing_in_hand() {
        let mut ledger = assigned();
        assert!(!ledger.caught_up());
        ledger.reached_end(0);
        assert!(!ledger.caught_up(), "partition 1 is not at its end");
        ledger.reached_end(1);
        assert!(ledger.caught_up());
        assert_eq!(ledger.judge(1, 0), Verdict::Take);
        assert!(
            !ledger.caught_up(),
            "a message in hand, and 1 is no longer at its end"
        );
        ledger.reached_end(1);
        assert!(!ledger.caught_up(), "the message in hand is not stored yet");
        ledger.committed();
        assert!(ledger.caught_up());
        ledger.judge(0, 10);
        ledger.committed();
        assert!(
            !ledger.caught_up(),
            "after a new message, partition 0's end is to be reached again"
        );
    }

    #[test]
    fn a_commit_moves_the_fence_to_the_offsets_in_hand() {
        let mut ledger = assigned();
        ledger.judge(0, 10);
        ledger.judge(0, 11);
        ledger.committed();
        assert_eq!(
            ledger.expected(),
            &BTreeMap::from([(0, Some(12)), (1, None)])
        );
        assert!(ledger.pending().is_empty());
        assert_eq!(ledger.judge(0, 11), Verdict::Held, "stored now");
    }

    #[test]
    fn a_rewind_after_a_fence_drops_what_was_in_hand_and_rereads_the_stored_offsets() {
        let mut ledger = assigned();
        ledger.judge(0, 10);
        ledger.judge(1, 0);
        ledger.reached_end(0);
        // Another consumer stored partition 0 up to 20 meanwhile, and 1 up to 5.
        let starts = ledger.rewind(&stored(&[(0, 20), (1, 5)]));
        assert_eq!(starts, [(0, Start::At(20)), (1, Start::At(5))]);
        assert!(ledger.pending().is_empty());
        assert_eq!(
            ledger.expected(),
            &BTreeMap::from([(0, Some(20)), (1, Some(5))])
        );
        assert!(!ledger.caught_up(), "the ends are to be reached again");
        assert_eq!(ledger.judge(0, 19), Verdict::Held);
        assert_eq!(ledger.judge(0, 20), Verdict::Take);
    }

    #[test]
    fn a_partition_that_ends_before_assignment_is_ignored() {
        let mut ledger = Ledger::default();
        ledger.reached_end(3);
        ledger.assign(&[3], &BTreeMap::new());
        assert!(
            !ledger.caught_up(),
            "the end was of a partition not yet ours"
        );
    }
}
