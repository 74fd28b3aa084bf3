//! Which handed-out records of each assigned partition are done, and so which offset the
//! group may commit: the one just past the longest run of done records from the oldest one
//! handed out, never past a record that is not done.

use std::collections::{BTreeMap, HashMap};

/// Identifies a record handed out by a [`KafkaReader`](super::KafkaReader): its partition and
/// offset, and the assignment it was handed out under (a token of a partition since taken
/// away is a no-op).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaToken {
    partition: i32,
    offset: i64,
    assignment: u64,
}

impl KafkaToken {
    /// The record's partition.
    pub(super) fn partition(&self) -> i32 {
        self.partition
    }
}

/// The records handed out from one partition under one assignment.
#[derive(Debug)]
struct Partition {
    assignment: u64,
    /// Offsets handed out and not yet behind the commit position → done.
    held: BTreeMap<i64, bool>,
    /// One past the highest offset handed out.
    next: i64,
}

/// The handed-out records of every assigned partition.
#[derive(Debug, Default)]
pub(super) struct Offsets {
    /// Counts the times partitions were taken away; a partition's records are tracked under
    /// the count at its first hand-out.
    assignment: u64,
    partitions: HashMap<i32, Partition>,
}

impl Offsets {
    /// Notes that the record at `offset` of `partition` is handed out, returning its token;
    /// `None` if it was handed out before under this assignment (it is not handed out twice).
    pub(super) fn hand_out(&mut self, partition: i32, offset: i64) -> Option<KafkaToken> {
        let assignment = self.assignment;
        let tracked = self.partitions.entry(partition).or_insert(Partition {
            assignment,
            held: BTreeMap::new(),
            next: offset,
        });
        if offset < tracked.next {
            return None;
        }
        tracked.held.insert(offset, false);
        tracked.next = offset + 1;
        Some(KafkaToken {
            partition,
            offset,
            assignment: tracked.assignment,
        })
    }

    /// Marks the token's record done. Returns the partition's new commit position (the
    /// offset to read from after a restart) if it moved.
    pub(super) fn done(&mut self, token: &KafkaToken) -> Option<i64> {
        let tracked = self.partitions.get_mut(&token.partition)?;
        if tracked.assignment != token.assignment {
            return None;
        }
        *tracked.held.get_mut(&token.offset)? = true;
        let mut position = None;
        while let Some(entry) = tracked.held.first_entry() {
            if !*entry.get() {
                break;
            }
            position = Some(entry.key() + 1);
            entry.remove();
        }
        position
    }

    /// The partitions were taken away (a rebalance): their tokens become no-ops, and their
    /// records not done are read again by whoever gets the partitions.
    pub(super) fn revoke(&mut self, partitions: impl IntoIterator<Item = i32>) {
        self.assignment += 1;
        for partition in partitions {
            self.partitions.remove(&partition);
        }
    }

    /// Every partition was taken away.
    pub(super) fn revoke_all(&mut self) {
        let all: Vec<i32> = self.partitions.keys().copied().collect();
        self.revoke(all);
    }

    /// One past the highest offset handed out from `partition` under this assignment.
    pub(super) fn next(&self, partition: i32) -> Option<i64> {
        self.partitions.get(&partition).map(|tracked| tracked.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_position_stops_at_the_oldest_record_not_done() {
        let mut offsets = Offsets::default();
        let tokens: Vec<KafkaToken> = (10..14)
            .map(|offset| offsets.hand_out(0, offset).unwrap())
            .collect();
        // 11 and 13 first: 10 is not done, so nothing can be committed.
        assert_eq!(offsets.done(&tokens[1]), None);
        assert_eq!(offsets.done(&tokens[3]), None);
        assert_eq!(offsets.done(&tokens[0]), Some(12));
        assert_eq!(offsets.done(&tokens[2]), Some(14));
        // Done twice is harmless.
        assert_eq!(offsets.done(&tokens[2]), None);
        assert_eq!(offsets.next(0), Some(14));
    }

    #[test]
    fn gaps_in_offsets_do_not_hold_the_position_back() {
        let mut offsets = Offsets::default();
        let first = offsets.hand_out(3, 5).unwrap();
        let second = offsets.hand_out(3, 9).unwrap();
        assert_eq!(offsets.done(&first), Some(6));
        assert_eq!(offsets.done(&second), Some(10));
    }

    #[test]
    fn partitions_are_independent_and_a_record_is_handed_out_once() {
        let mut offsets = Offsets::default();
        let a = offsets.hand_out(0, 0).unwrap();
        let b = offsets.hand_out(1, 0).unwrap();
        assert_eq!(offsets.hand_out(0, 0), None);
        assert_eq!(offsets.done(&b), Some(1));
        assert_eq!(offsets.done(&a), Some(1));
    }

    #[test]
    fn tokens_of_a_revoked_partition_are_no_ops() {
        let mut offsets = Offsets::default();
        let old = offsets.hand_out(0, 7).unwrap();
        let other = offsets.hand_out(1, 2).unwrap();
        offsets.revoke([0]);
        assert_eq!(offsets.next(0), None);
        // Assigned again: the group hands out 7 again, under a new token.
        let new = offsets.hand_out(0, 7).unwrap();
        assert_ne!(old, new);
        assert_eq!(offsets.done(&old), None);
        assert_eq!(offsets.done(&new), Some(8));
        // Partition 1 was kept, with its tokens.
        assert_eq!(offsets.done(&other), Some(3));
    }
}
