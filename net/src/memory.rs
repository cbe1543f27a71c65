//! A bounded in-memory [`PartitionStore`]: tests and `rill serve` until the engine lands.
//!
//! Each core owns one store. Batches are kept as patched copies of the producer's bytes in a deque
//! per partition; retention drops whole batches from the front. A byte budget covers all
//! partitions of the store; an append that would exceed it fails with [`StorageError::Full`] and
//! changes nothing. Nothing survives a restart.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use crate::backend::{
    AppendBatches, AppendOutcome, BatchSummary, PartitionOffsets, PartitionStore, ReadOutcome, StorageError,
    TimestampOffset, TopicConfig, TopicPartition,
};
use crate::batch::{parse_batches, patch_base_offset};
use crate::notify::ChangeSignal;

struct StoredBatch {
    base_offset: i64,
    last_offset: i64,
    max_timestamp: i64,
    /// Broker time when stored, for `retention.ms` (Kafka uses max timestamp; producers' clocks
    /// cannot be trusted to expire data, so we use the later of the two).
    stored_at_ms: i64,
    bytes: Bytes,
}

struct MemoryPartition {
    config: TopicConfig,
    batches: VecDeque<StoredBatch>,
    log_start_offset: i64,
    log_end_offset: i64,
    size_bytes: u64,
    signal: ChangeSignal,
}

impl MemoryPartition {
    fn apply_retention(&mut self, now_ms: i64) -> u64 {
        let mut freed = 0;
        // Keep the last batch so the log end stays readable metadata-wise; Kafka keeps the active
        // segment for the same reason.
        while self.batches.len() > 1 {
            let front = self.batches.front().expect("len > 1");
            let too_big = self.config.retention_bytes >= 0
                && self.size_bytes > u64::try_from(self.config.retention_bytes).unwrap_or(0);
            let too_old = self.config.retention_ms >= 0
                && now_ms - front.stored_at_ms.max(front.max_timestamp) > self.config.retention_ms;
            if !too_big && !too_old {
                break;
            }
            let dropped = self.batches.pop_front().expect("len > 1");
            let size = dropped.bytes.len() as u64;
            self.size_bytes -= size;
            freed += size;
            self.log_start_offset = dropped.last_offset + 1;
        }
        freed
    }
}

/// In-memory partitions of one core, bounded by `limit_bytes`.
pub struct MemoryStore {
    partitions: RefCell<HashMap<TopicPartition, MemoryPartition>>,
    used_bytes: RefCell<u64>,
    limit_bytes: u64,
}

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

impl MemoryStore {
    /// A store that holds at most `limit_bytes` of batches over all its partitions.
    pub fn new(limit_bytes: u64) -> Self {
        assert!(limit_bytes > 0);
        Self { partitions: RefCell::default(), used_bytes: RefCell::new(0), limit_bytes }
    }

    /// Bytes of batches held.
    pub fn used_bytes(&self) -> u64 {
        *self.used_bytes.borrow()
    }

    fn unknown(partition: &TopicPartition) -> StorageError {
        StorageError::UnknownPartition(partition.clone())
    }

    fn append_now(
        &self,
        partition: &TopicPartition,
        batches: AppendBatches,
    ) -> Result<AppendOutcome, StorageError> {
        let mut partitions = self.partitions.borrow_mut();
        let state = partitions.get_mut(partition).ok_or_else(|| Self::unknown(partition))?;
        let needed_bytes = batches.bytes.len() as u64;
        let used_bytes = *self.used_bytes.borrow();
        if used_bytes + needed_bytes > self.limit_bytes {
            return Err(StorageError::Full {
                partition: partition.clone(),
                needed_bytes,
                used_bytes,
                limit_bytes: self.limit_bytes,
            });
        }
        assert!(!batches.headers.is_empty());
        assert_eq!(
            batches.headers.iter().map(|header| header.size_bytes).sum::<usize>(),
            batches.bytes.len()
        );
        let mut patched = BytesMut::from(&batches.bytes[..]);
        let base_offset = state.log_end_offset;
        let stored_at_ms = now_ms();
        let mut next_offset = base_offset;
        let mut ranges = Vec::with_capacity(batches.headers.len());
        for header in &batches.headers {
            patch_base_offset(&mut patched, header.position, next_offset);
            let last_offset = next_offset + i64::from(header.last_offset_delta);
            ranges.push((header.position, header.size_bytes, next_offset, last_offset, header.max_timestamp));
            next_offset = last_offset + 1;
        }
        let patched = patched.freeze();
        for (position, size, base, last, max_timestamp) in ranges {
            state.batches.push_back(StoredBatch {
                base_offset: base,
                last_offset: last,
                max_timestamp,
                stored_at_ms,
                bytes: patched.slice(position..position + size),
            });
        }
        state.log_end_offset = next_offset;
        state.size_bytes += needed_bytes;
        let freed = state.apply_retention(stored_at_ms);
        *self.used_bytes.borrow_mut() = used_bytes + needed_bytes - freed;
        state.signal.notify();
        Ok(AppendOutcome {
            base_offset,
            last_offset: next_offset - 1,
            log_append_time_ms: -1,
            log_start_offset: state.log_start_offset,
        })
    }

    fn read_now(
        &self,
        partition: &TopicPartition,
        offset: i64,
        max_bytes: usize,
    ) -> Result<ReadOutcome, StorageError> {
        let partitions = self.partitions.borrow();
        let state = partitions.get(partition).ok_or_else(|| Self::unknown(partition))?;
        let high_watermark = state.log_end_offset;
        if offset < state.log_start_offset || offset > high_watermark {
            return Err(StorageError::OffsetOutOfRange {
                partition: partition.clone(),
                offset,
                log_start_offset: state.log_start_offset,
                high_watermark,
            });
        }
        // Batches are sorted by offset: binary search the first batch whose last offset >= offset.
        let first = state.batches.partition_point(|batch| batch.last_offset < offset);
        let mut records = BytesMut::new();
        for batch in state.batches.iter().skip(first) {
            if !records.is_empty() && records.len() + batch.bytes.len() > max_bytes {
                break;
            }
            records.extend_from_slice(&batch.bytes);
        }
        Ok(ReadOutcome {
            records: records.freeze(),
            high_watermark,
            log_start_offset: state.log_start_offset,
        })
    }
}

impl PartitionStore for MemoryStore {
    fn create_partition(
        &self,
        partition: &TopicPartition,
        config: &TopicConfig,
    ) -> impl Future<Output = Result<(), StorageError>> {
        let result = {
            let mut partitions = self.partitions.borrow_mut();
            if partitions.contains_key(partition) {
                Err(StorageError::PartitionExists(partition.clone()))
            } else {
                partitions.insert(
                    partition.clone(),
                    MemoryPartition {
                        config: config.clone(),
                        batches: VecDeque::new(),
                        log_start_offset: 0,
                        log_end_offset: 0,
                        size_bytes: 0,
                        signal: ChangeSignal::new(),
                    },
                );
                Ok(())
            }
        };
        std::future::ready(result)
    }

    fn delete_partition(
        &self,
        partition: &TopicPartition,
    ) -> impl Future<Output = Result<(), StorageError>> {
        let removed = self.partitions.borrow_mut().remove(partition);
        let result = match removed {
            Some(state) => {
                *self.used_bytes.borrow_mut() -= state.size_bytes;
                state.signal.notify();
                Ok(())
            }
            None => Err(Self::unknown(partition)),
        };
        std::future::ready(result)
    }

    fn update_config(
        &self,
        partition: &TopicPartition,
        config: &TopicConfig,
    ) -> impl Future<Output = Result<(), StorageError>> {
        let result = match self.partitions.borrow_mut().get_mut(partition) {
            Some(state) => {
                state.config = config.clone();
                Ok(())
            }
            None => Err(Self::unknown(partition)),
        };
        std::future::ready(result)
    }

    fn append(
        &self,
        partition: &TopicPartition,
        batches: AppendBatches,
    ) -> impl Future<Output = Result<AppendOutcome, StorageError>> {
        std::future::ready(self.append_now(partition, batches))
    }

    fn read(
        &self,
        partition: &TopicPartition,
        offset: i64,
        max_bytes: usize,
    ) -> impl Future<Output = Result<ReadOutcome, StorageError>> {
        std::future::ready(self.read_now(partition, offset, max_bytes))
    }

    fn offsets(&self, partition: &TopicPartition) -> Result<PartitionOffsets, StorageError> {
        let partitions = self.partitions.borrow();
        let state = partitions.get(partition).ok_or_else(|| Self::unknown(partition))?;
        Ok(PartitionOffsets {
            log_start_offset: state.log_start_offset,
            high_watermark: state.log_end_offset,
        })
    }

    fn offset_for_timestamp(
        &self,
        partition: &TopicPartition,
        timestamp: i64,
    ) -> impl Future<Output = Result<Option<TimestampOffset>, StorageError>> {
        let partitions = self.partitions.borrow();
        let result = partitions.get(partition).ok_or_else(|| Self::unknown(partition)).map(|state| {
            state.batches.iter().find(|batch| batch.max_timestamp >= timestamp).map(|batch| {
                TimestampOffset {
                    offset: batch.base_offset.max(state.log_start_offset),
                    timestamp: batch.max_timestamp,
                }
            })
        });
        std::future::ready(result)
    }

    fn recent_batches(
        &self,
        partition: &TopicPartition,
        records_max: i64,
    ) -> impl Future<Output = Result<Vec<BatchSummary>, StorageError>> {
        let partitions = self.partitions.borrow();
        let result = partitions.get(partition).ok_or_else(|| Self::unknown(partition)).map(|state| {
            let from = state.log_end_offset.saturating_sub(records_max);
            let first = state.batches.partition_point(|batch| batch.last_offset < from);
            state
                .batches
                .iter()
                .skip(first)
                // Stored batches were validated on append; a parse failure cannot happen.
                .filter_map(|batch| parse_batches(&batch.bytes).ok().and_then(|headers| headers.first().copied()))
                .filter(|header| header.is_idempotent())
                .map(|header| BatchSummary {
                    base_offset: header.base_offset,
                    last_offset_delta: header.last_offset_delta,
                    producer_id: header.producer_id,
                    producer_epoch: header.producer_epoch,
                    base_sequence: header.base_sequence,
                })
                .collect()
        });
        std::future::ready(result)
    }

    fn wait_for_data(
        &self,
        partition: &TopicPartition,
        high_watermark: i64,
    ) -> Result<impl Future<Output = ()> + 'static, StorageError> {
        let partitions = self.partitions.borrow();
        let state = partitions.get(partition).ok_or_else(|| Self::unknown(partition))?;
        Ok(state.signal.wait_unless(state.log_end_offset > high_watermark))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{encode_test_batch, parse_batches};
    use futures::executor::block_on;

    fn batches(count: i32) -> AppendBatches {
        let bytes = Bytes::from(encode_test_batch(-1, -1, count, 100));
        let headers = parse_batches(&bytes).unwrap();
        AppendBatches { bytes, headers }
    }

    #[test]
    fn append_assigns_offsets_and_reads_whole_batches() {
        let store = MemoryStore::new(1 << 20);
        let tp = TopicPartition::new("t", 0);
        block_on(store.create_partition(&tp, &TopicConfig::default())).unwrap();
        let first = block_on(store.append(&tp, batches(3))).unwrap();
        let second = block_on(store.append(&tp, batches(2))).unwrap();
        assert_eq!((first.base_offset, first.last_offset), (0, 2));
        assert_eq!((second.base_offset, second.last_offset), (3, 4));
        // Offset 4 lies in the second batch: the read starts with that whole batch.
        let read = block_on(store.read(&tp, 4, 1)).unwrap();
        let headers = parse_batches(&read.records).unwrap();
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[0].base_offset, 3);
        assert_eq!(read.high_watermark, 5);
        // max_bytes of 1 still returns one batch; a large budget returns both.
        let all = block_on(store.read(&tp, 0, 1 << 20)).unwrap();
        assert_eq!(parse_batches(&all.records).unwrap().len(), 2);
        assert!(block_on(store.read(&tp, 5, 100)).unwrap().records.is_empty());
        assert!(matches!(
            block_on(store.read(&tp, 6, 100)),
            Err(StorageError::OffsetOutOfRange { .. })
        ));
    }

    #[test]
    fn full_store_rejects_without_change() {
        let one = batches(1);
        let store = MemoryStore::new(one.bytes.len() as u64 + 10);
        let tp = TopicPartition::new("t", 0);
        block_on(store.create_partition(&tp, &TopicConfig::default())).unwrap();
        block_on(store.append(&tp, one.clone())).unwrap();
        assert!(matches!(block_on(store.append(&tp, one)), Err(StorageError::Full { .. })));
        assert_eq!(store.offsets(&tp).unwrap().high_watermark, 1);
    }

    #[test]
    fn retention_bytes_moves_log_start() {
        let store = MemoryStore::new(1 << 20);
        let tp = TopicPartition::new("t", 0);
        let config = TopicConfig { retention_bytes: 1, ..TopicConfig::default() };
        block_on(store.create_partition(&tp, &config)).unwrap();
        for _ in 0..3 {
            block_on(store.append(&tp, batches(2))).unwrap();
        }
        let offsets = store.offsets(&tp).unwrap();
        assert_eq!(offsets.log_start_offset, 4);
        assert_eq!(offsets.high_watermark, 6);
        assert_eq!(store.used_bytes(), batches(2).bytes.len() as u64);
    }

    #[test]
    fn recent_batches_summarise_idempotent_tail() {
        let store = MemoryStore::new(1 << 20);
        let tp = TopicPartition::new("t", 0);
        block_on(store.create_partition(&tp, &TopicConfig::default())).unwrap();
        block_on(store.append(&tp, batches(4))).unwrap();
        for sequence in [0, 3, 6] {
            let bytes = Bytes::from(encode_test_batch(sequence, 9, 3, 100));
            let headers = parse_batches(&bytes).unwrap();
            block_on(store.append(&tp, AppendBatches { bytes, headers })).unwrap();
        }
        let all = block_on(store.recent_batches(&tp, 1_000)).unwrap();
        assert_eq!(all.iter().map(|b| (b.base_offset, b.base_sequence)).collect::<Vec<_>>(), vec![(4, 0), (7, 3), (10, 6)]);
        assert!(all.iter().all(|b| b.producer_id == 9 && b.last_offset_delta == 2));
        let tail = block_on(store.recent_batches(&tp, 2)).unwrap();
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0].base_offset, 10);
    }

    #[test]
    fn timestamp_lookup_and_wait() {
        let store = MemoryStore::new(1 << 20);
        let tp = TopicPartition::new("t", 0);
        block_on(store.create_partition(&tp, &TopicConfig::default())).unwrap();
        block_on(store.append(&tp, batches(2))).unwrap();
        let found = block_on(store.offset_for_timestamp(&tp, 50)).unwrap().unwrap();
        assert_eq!(found.offset, 0);
        assert_eq!(block_on(store.offset_for_timestamp(&tp, 101)).unwrap(), None);
        // Already above: resolves at once.
        block_on(store.wait_for_data(&tp, 1).unwrap());
        assert!(store.wait_for_data(&TopicPartition::new("x", 0), 0).is_err());
    }
}
