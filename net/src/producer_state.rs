//! Idempotent-producer state of one partition: a sans-I/O state machine.
//!
//! For each producer id it remembers the epoch and the last [`PRODUCER_BATCHES_REMEMBERED`]
//! batches (sequence range and assigned offsets), like Kafka. A retried batch that matches a
//! remembered one gets its original offsets back instead of being appended twice (Jepsen found
//! duplicates in a broker that answered this case with an error); a gap or reordering gets
//! OUT_OF_ORDER_SEQUENCE_NUMBER; an older epoch gets INVALID_PRODUCER_EPOCH.
//!
//! Use: [`ProducerStates::check`] before appending, [`ProducerStates::record`] after the append
//! succeeded. Both run on the partition's owner core, with no await in between for a given
//! partition's appends that could reorder them (the shard serialises appends per partition).

use std::collections::{HashMap, VecDeque};

/// How many batches per producer per partition are remembered for duplicate detection (Kafka: 5,
/// matching `max.in.flight.requests.per.connection` for idempotent producers).
pub const PRODUCER_BATCHES_REMEMBERED: usize = 5;
/// Offsets at the tail of a reopened partition's log scanned to rebuild producer state. A
/// producer whose last batch is older is forgotten (its next batch is accepted); retries after a
/// restart are of the batches in flight at the crash, which lie at the very tail.
pub const PRODUCER_STATE_SCAN_RECORDS: i64 = 100_000;
/// Producers remembered per partition before the least recently used one is forgotten.
pub const PRODUCERS_PER_PARTITION_MAX: usize = 10_000;

/// A remembered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RememberedBatch {
    /// First sequence of the batch.
    pub first_sequence: i32,
    /// Last sequence of the batch.
    pub last_sequence: i32,
    /// Offset assigned to its first record.
    pub base_offset: i64,
    /// Offset assigned to its last record.
    pub last_offset: i64,
}

#[derive(Debug, Default)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<RememberedBatch>,
    last_used: u64,
}

/// Verdict on an incoming idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceVerdict {
    /// Append it.
    Append,
    /// Already appended: answer with these offsets and append nothing.
    Duplicate(RememberedBatch),
    /// Sequence does not follow the last appended one: OUT_OF_ORDER_SEQUENCE_NUMBER.
    OutOfOrder {
        /// The sequence the partition expected.
        expected: i32,
    },
    /// Epoch older than the producer's current one: INVALID_PRODUCER_EPOCH.
    FencedEpoch {
        /// The current epoch.
        current: i16,
    },
}

/// Sequence of a batch's last record (wraps at `i32::MAX` as Kafka does).
pub fn last_sequence(base_sequence: i32, last_offset_delta: i32) -> i32 {
    let last = i64::from(base_sequence) + i64::from(last_offset_delta);
    i32::try_from(last % (i64::from(i32::MAX) + 1)).expect("below i32::MAX + 1")
}

fn next_sequence(sequence: i32) -> i32 {
    if sequence == i32::MAX {
        0
    } else {
        sequence + 1
    }
}

/// Producer states of one partition.
#[derive(Debug, Default)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
    clock: u64,
}

impl ProducerStates {
    /// Judge a batch from `producer_id`/`epoch` with sequences `first..=last`.
    pub fn check(&self, producer_id: i64, epoch: i16, first: i32, last: i32) -> SequenceVerdict {
        assert!(producer_id >= 0);
        let Some(entry) = self.producers.get(&producer_id) else {
            // Unknown producer: its state may have been lost (retention, restart of the in-memory
            // store); accept, as Kafka does for producers whose state expired.
            return SequenceVerdict::Append;
        };
        if epoch < entry.epoch {
            return SequenceVerdict::FencedEpoch { current: entry.epoch };
        }
        if epoch > entry.epoch {
            // A bumped epoch restarts sequences at 0.
            return if first == 0 {
                SequenceVerdict::Append
            } else {
                SequenceVerdict::OutOfOrder { expected: 0 }
            };
        }
        if let Some(batch) = entry
            .batches
            .iter()
            .find(|batch| batch.first_sequence == first && batch.last_sequence == last)
        {
            return SequenceVerdict::Duplicate(*batch);
        }
        let expected = entry.batches.back().map_or(0, |batch| next_sequence(batch.last_sequence));
        if entry.batches.is_empty() || first == expected {
            SequenceVerdict::Append
        } else {
            SequenceVerdict::OutOfOrder { expected }
        }
    }

    /// Remember a batch that was appended after [`ProducerStates::check`] said `Append`.
    pub fn record(&mut self, producer_id: i64, epoch: i16, batch: RememberedBatch) {
        assert!(batch.base_offset <= batch.last_offset);
        self.clock += 1;
        if !self.producers.contains_key(&producer_id) && self.producers.len() >= PRODUCERS_PER_PARTITION_MAX {
            let oldest = self
                .producers
                .iter()
                .min_by_key(|(_, entry)| entry.last_used)
                .map(|(id, _)| *id)
                .expect("map is full, so not empty");
            self.producers.remove(&oldest);
        }
        let entry = self.producers.entry(producer_id).or_default();
        if epoch != entry.epoch {
            entry.batches.clear();
            entry.epoch = epoch;
        }
        entry.last_used = self.clock;
        entry.batches.push_back(batch);
        while entry.batches.len() > PRODUCER_BATCHES_REMEMBERED {
            entry.batches.pop_front();
        }
        assert!(entry.batches.len() <= PRODUCER_BATCHES_REMEMBERED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(first: i32, last: i32, base: i64) -> RememberedBatch {
        RememberedBatch { first_sequence: first, last_sequence: last, base_offset: base, last_offset: base + i64::from(last - first) }
    }

    #[test]
    fn duplicate_returns_original_offsets() {
        let mut states = ProducerStates::default();
        assert_eq!(states.check(7, 0, 0, 9), SequenceVerdict::Append);
        states.record(7, 0, batch(0, 9, 100));
        assert_eq!(states.check(7, 0, 0, 9), SequenceVerdict::Duplicate(batch(0, 9, 100)));
        assert_eq!(states.check(7, 0, 10, 19), SequenceVerdict::Append);
    }

    #[test]
    fn gap_is_out_of_order_and_old_epoch_fenced() {
        let mut states = ProducerStates::default();
        states.record(7, 1, batch(0, 4, 0));
        assert_eq!(states.check(7, 1, 6, 8), SequenceVerdict::OutOfOrder { expected: 5 });
        assert_eq!(states.check(7, 0, 5, 8), SequenceVerdict::FencedEpoch { current: 1 });
        assert_eq!(states.check(7, 2, 3, 8), SequenceVerdict::OutOfOrder { expected: 0 });
        assert_eq!(states.check(7, 2, 0, 8), SequenceVerdict::Append);
    }

    #[test]
    fn remembers_only_last_five() {
        let mut states = ProducerStates::default();
        for i in 0..7 {
            states.record(1, 0, batch(i, i, i64::from(i)));
        }
        assert_eq!(states.check(1, 0, 1, 1), SequenceVerdict::OutOfOrder { expected: 7 });
        assert_eq!(states.check(1, 0, 2, 2), SequenceVerdict::Duplicate(batch(2, 2, 2)));
    }
}
