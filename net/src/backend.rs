//! The storage seam: what the Kafka front-end needs from the partitions one core owns.
//!
//! # Who implements it
//! [`crate::memory::MemoryStore`] (bounded, in memory) backs tests and `rill serve` today; the
//! engine's direct-I/O `PartitionLog` will implement the same trait. One instance exists per core
//! and is only ever called from that core (thread-per-core), so the futures carry no `Send` bound
//! and implementations may use `RefCell` instead of locks.
//!
//! # Contract shared by every method
//! - Partitions are named by [`TopicPartition`]; a method on a partition that does not exist returns
//!   [`StorageError::UnknownPartition`] (the broker maps it to UNKNOWN_TOPIC_OR_PARTITION).
//! - Offsets are Kafka offsets: the first record ever appended gets offset 0. `log_start_offset` is
//!   the first offset still stored (it moves up with retention); the high watermark (`hw`) is one
//!   past the last offset a consumer may read (acknowledged data); `log_end_offset` is one past the
//!   last offset appended. Without replication `hw == log_end_offset` once `append` resolves.
//! - Batches are Kafka RecordBatch v2 bytes. The front-end has already verified each batch's CRC
//!   and header ([`crate::batch::parse_batches`]) and passes the parsed headers along; the
//!   implementation must store the bytes untouched except for the 8-byte base offset, which it
//!   assigns and patches (it lies outside Kafka's CRC).
//! - Errors are returned, never panics, and one failing partition must not affect the others.

use std::future::Future;

use bytes::Bytes;
use thiserror::Error;

use crate::batch::BatchHeader;

/// Resolves once staged batches are durable per the store's durability (see
/// [`PartitionStore::append_staged`]).
pub type Durable = std::pin::Pin<Box<dyn Future<Output = Result<(), StorageError>>>>;

/// A topic name and partition index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: String,
    /// Partition index, from 0.
    pub partition: i32,
}

impl TopicPartition {
    /// Build a topic-partition.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self { topic: topic.into(), partition }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}-{}", self.topic, self.partition)
    }
}

/// Per-topic settings the storage honours. Values are Kafka's topic config keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// `retention.ms`: drop whole batches older than this; -1 keeps forever.
    pub retention_ms: i64,
    /// `retention.bytes`: drop oldest whole batches while the partition is larger; -1 unlimited.
    pub retention_bytes: i64,
    /// `segment.bytes`: target segment size (the in-memory store ignores it).
    pub segment_bytes: i64,
    /// `max.message.bytes`: largest records field accepted for one partition in one request.
    pub max_message_bytes: i32,
    /// `cleanup.policy`: only `delete` is supported.
    pub cleanup_policy: String,
    /// `preallocate`: reserve each new segment's whole file when it starts (one fallocate per
    /// segment) instead of in growing steps; for a few partitions that stream fast.
    pub preallocate: bool,
}

/// Defaults match Kafka's broker defaults.
impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            segment_bytes: 1 << 30,
            max_message_bytes: 1_048_588,
            cleanup_policy: "delete".to_string(),
            preallocate: false,
        }
    }
}

/// Batches to append to one partition: the raw bytes plus the front-end's parsed headers.
#[derive(Debug, Clone)]
pub struct AppendBatches {
    /// One or more whole RecordBatch v2 batches, back to back.
    pub bytes: Bytes,
    /// The headers of `bytes`, in order, covering it exactly (see [`crate::batch::parse_batches`]).
    pub headers: Vec<BatchHeader>,
}

/// What an append produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Offset assigned to the first record of the first batch.
    pub base_offset: i64,
    /// Offset assigned to the last record of the last batch.
    pub last_offset: i64,
    /// Broker time used as the timestamp when the topic uses LogAppendTime, else -1.
    pub log_append_time_ms: i64,
    /// The partition's log start offset after the append (retention may have moved it).
    pub log_start_offset: i64,
}

/// What a read returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Whole batches, back to back; may start before the requested offset (the batch containing
    /// it) and is empty when the offset equals the high watermark.
    pub records: Bytes,
    /// High watermark at the time of the read.
    pub high_watermark: i64,
    /// Log start offset at the time of the read.
    pub log_start_offset: i64,
}

/// Offsets of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// First offset still stored.
    pub log_start_offset: i64,
    /// One past the last readable offset.
    pub high_watermark: i64,
}

/// Result of a timestamp lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampOffset {
    /// Offset of the first batch whose max timestamp is at least the requested timestamp.
    pub offset: i64,
    /// That batch's max timestamp.
    pub timestamp: i64,
}

/// The producer fields of one stored batch, for rebuilding idempotent-producer state when a
/// partition is reopened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSummary {
    /// Offset of the batch's first record.
    pub base_offset: i64,
    /// Offset of its last record relative to `base_offset`.
    pub last_offset_delta: i32,
    /// Producer id (non-negative: only idempotent batches are summarised).
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i16,
    /// Sequence of the first record.
    pub base_sequence: i32,
}

/// Storage counters of one core, for `/metrics`. Zero for stores without the notion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Bytes held by the core's logs.
    pub log_bytes: u64,
    /// Reads served from the batch cache.
    pub cache_hits: u64,
    /// Reads that went to disk.
    pub cache_misses: u64,
    /// Group-commit fdatasync latencies over the core's logs.
    pub fdatasync_latency: rill_engine::IoLatency,
    /// fallocate latencies over the core's logs.
    pub preallocate_latency: rill_engine::IoLatency,
    /// Write latencies (a flush's writes to one segment) over the core's logs.
    pub write_latency: rill_engine::IoLatency,
    /// Bytes of zeros written ahead of appends over the core's logs.
    pub bytes_zeroed: u64,
}

impl StorageStats {
    /// Group-commit fdatasync calls issued by the core's logs (the count of their histogram).
    pub fn fdatasyncs(&self) -> u64 {
        self.fdatasync_latency.count
    }

    /// Adds one log's storage-call latencies (the counters that outlive a deleted log).
    pub fn add_log_latencies(&mut self, log: &rill_engine::LogStats) {
        self.fdatasync_latency.merge(&log.fdatasync_latency);
        self.preallocate_latency.merge(&log.preallocate_latency);
        self.write_latency.merge(&log.write_latency);
        self.bytes_zeroed += log.bytes_zeroed;
    }
}

/// Storage failures, each mapped by the broker to a Kafka error code.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StorageError {
    /// The partition does not exist on this core.
    #[error("unknown partition {0}")]
    UnknownPartition(TopicPartition),
    /// `create_partition` for a partition that exists.
    #[error("partition {0} already exists")]
    PartitionExists(TopicPartition),
    /// Requested offset outside `[log_start_offset, high_watermark]`.
    #[error("offset {offset} out of range [{log_start_offset}, {high_watermark}] in {partition}")]
    OffsetOutOfRange {
        /// The partition.
        partition: TopicPartition,
        /// The offset asked for.
        offset: i64,
        /// First stored offset.
        log_start_offset: i64,
        /// High watermark.
        high_watermark: i64,
    },
    /// The storage budget is exhausted (memory or disk); nothing was appended.
    #[error("storage full appending {needed_bytes} bytes to {partition}: {used_bytes} of {limit_bytes} used")]
    Full {
        /// The partition.
        partition: TopicPartition,
        /// Bytes the append needed.
        needed_bytes: u64,
        /// Bytes in use.
        used_bytes: u64,
        /// The budget.
        limit_bytes: u64,
    },
    /// An I/O error (the engine's); the log is fenced if it was an fsync error.
    #[error("storage I/O error on {partition}: {message}")]
    Io {
        /// The partition.
        partition: TopicPartition,
        /// What failed.
        message: String,
    },
}

/// The partitions owned by one core. See the module documentation for the shared contract.
pub trait PartitionStore {
    /// Create an empty partition (log start 0, high watermark 0) with `config`.
    /// Fails with [`StorageError::PartitionExists`] if it exists. Durable when resolved.
    fn create_partition(
        &self,
        partition: &TopicPartition,
        config: &TopicConfig,
    ) -> impl Future<Output = Result<(), StorageError>>;

    /// Delete a partition and all its data. Waiters in [`PartitionStore::wait_for_data`] resolve.
    fn delete_partition(
        &self,
        partition: &TopicPartition,
    ) -> impl Future<Output = Result<(), StorageError>>;

    /// Replace a partition's config; retention changes apply no later than the next append.
    fn update_config(
        &self,
        partition: &TopicPartition,
        config: &TopicConfig,
    ) -> impl Future<Output = Result<(), StorageError>>;

    /// [`append`](PartitionStore::append) in two halves: resolves as soon as the batches have
    /// their offsets and their place in the log is fixed, returning the outcome and a future
    /// that resolves once they are durable (then waiters are woken, as for `append`). Callers
    /// that must keep appends in order stage them one after another and await durability
    /// concurrently, so one group commit covers many requests. The outcome must not be
    /// acknowledged to a client before the future resolves. The default stages nothing
    /// separately: it appends, then returns a future that is already done.
    fn append_staged(
        &self,
        partition: &TopicPartition,
        batches: AppendBatches,
    ) -> impl Future<Output = Result<(AppendOutcome, Durable), StorageError>> {
        let append = self.append(partition, batches);
        async move {
            let outcome = append.await?;
            let done: Durable = Box::pin(std::future::ready(Ok(())));
            Ok((outcome, done))
        }
    }

    /// Append `batches` atomically (all or none) at the log end: batch *i* gets base offset
    /// `log_end_offset + sum of (last_offset_delta + 1) of batches before it`, patched into its
    /// first 8 bytes. Resolves once the data is durable per the topic's durability setting and the
    /// high watermark covers it; then wakes [`PartitionStore::wait_for_data`] waiters. Appends
    /// to one partition resolve in the order they were called. May apply retention afterwards.
    fn append(
        &self,
        partition: &TopicPartition,
        batches: AppendBatches,
    ) -> impl Future<Output = Result<AppendOutcome, StorageError>>;

    /// Read whole batches starting with the one containing `offset`, adding batches while the total
    /// stays within `max_bytes`, but always returning at least one batch when `offset` is below the
    /// high watermark, even if it is larger than `max_bytes` (Kafka clients rely on this to make
    /// progress). Never returns data at or above the high watermark. `offset == high_watermark`
    /// returns empty records; an offset below the log start or above the high watermark returns
    /// [`StorageError::OffsetOutOfRange`].
    fn read(
        &self,
        partition: &TopicPartition,
        offset: i64,
        max_bytes: usize,
    ) -> impl Future<Output = Result<ReadOutcome, StorageError>>;

    /// Log start offset and high watermark, without I/O.
    fn offsets(&self, partition: &TopicPartition) -> Result<PartitionOffsets, StorageError>;

    /// The first batch whose max timestamp is `>= timestamp` (ListOffsets by time), or `None` when
    /// every stored batch is older.
    fn offset_for_timestamp(
        &self,
        partition: &TopicPartition,
        timestamp: i64,
    ) -> impl Future<Output = Result<Option<TimestampOffset>, StorageError>>;

    /// Resolves when the high watermark rises above `high_watermark`, or the partition is deleted.
    /// May resolve spuriously: callers re-check with [`PartitionStore::offsets`]. Fails at once
    /// with [`StorageError::UnknownPartition`] if the partition does not exist. The future must not
    /// borrow anything the store needs mutably, since many fetches wait at once.
    fn wait_for_data(
        &self,
        partition: &TopicPartition,
        high_watermark: i64,
    ) -> Result<impl Future<Output = ()> + 'static, StorageError>;

    /// Summaries of the idempotent batches (producer id >= 0) among the last `records_max`
    /// offsets of the partition, in offset order. Called when a partition is (re)opened, to
    /// rebuild the idempotence window of each producer; producers silent for longer are forgotten
    /// (the front-end then accepts their next batch, as Kafka does for expired producer state).
    /// Implementations may look at fewer offsets to bound the bytes read, never more.
    fn recent_batches(
        &self,
        partition: &TopicPartition,
        records_max: i64,
    ) -> impl Future<Output = Result<Vec<BatchSummary>, StorageError>>;

    /// Partitions that failed (I/O error, fsync error) or refused to open (damage), with the
    /// reason, for `/health`. Such a partition serves nothing; the others are unaffected.
    fn failed_partitions(&self) -> Vec<(TopicPartition, String)> {
        Vec::new()
    }

    /// Counters for `/metrics`.
    fn storage_stats(&self) -> StorageStats {
        StorageStats::default()
    }

    /// Orderly shutdown: make everything appended durable and release files. Called once, after
    /// the core stopped serving requests. The in-memory store has nothing to do.
    fn close(&self) -> impl Future<Output = ()> {
        std::future::ready(())
    }
}
