//! The durable [`PartitionStore`]: one core's partitions as the engine's direct-I/O logs.
//!
//! Each partition is a [`PartitionLog`] in `<data_dir>/<topic>/<partition>/`, opened (and
//! recovered) when the controller creates the partition on this core, so a restart finds every
//! acknowledged batch. All logs of the core share one batch cache, which serves tail reads from
//! memory.
//!
//! The high watermark is what the configured [`Durability`] has made safe: with `Fsync` (the
//! default) the offset below which an fdatasync has returned, so consumers never see data a power
//! cut could take back.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use rill_engine::storage::glommio_fs::{FileIo, GlommioStorage};
use rill_engine::{
    BatchCache, Clock, Durability, LogConfig, LogError, PartitionLog, SharedBatchCache, SystemClock,
};

use crate::backend::{
    AppendBatches, Durable, AppendOutcome, BatchSummary, PartitionOffsets, StorageStats, PartitionStore, ReadOutcome, StorageError,
    TimestampOffset, TopicConfig, TopicPartition,
};
use crate::notify::ChangeSignal;

/// How often an append also applies retention, at most.
const RETENTION_INTERVAL_MS: i64 = 1000;
/// Most bytes one [`PartitionStore::recent_batches`] scan reads; when the window would need more,
/// the window is halved (recent batches matter most: they are the ones a producer retries).
pub const PRODUCER_SCAN_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Bytes asked for per read while scanning.
const PRODUCER_SCAN_READ_BYTES: usize = 1024 * 1024;
/// Most times the scan window is halved (2^40 records is beyond any window asked for).
const PRODUCER_SCAN_HALVINGS_MAX: u32 = 40;

struct DiskPartition {
    log: Rc<PartitionLog<GlommioStorage>>,
    /// A background write-out (durability `memory`) is spawned and not finished.
    writing_out: Cell<bool>,
    signal: ChangeSignal,
    retention_checked_ms: Cell<i64>,
}

/// One core's partitions on disk.
pub struct DiskStore {
    data_dir: PathBuf,
    /// How the logs' files are opened (direct I/O unless [`DiskStore::with_file_io`] says otherwise).
    storage: GlommioStorage,
    durability: Durability,
    cache: SharedBatchCache,
    clock: Rc<dyn Clock>,
    partitions: Rc<RefCell<HashMap<TopicPartition, Rc<DiskPartition>>>>,
    /// Partitions whose log refused to open (interior damage, I/O errors), with the reason.
    open_failures: RefCell<HashMap<TopicPartition, String>>,
    /// Counters of deleted partitions' logs, so the node's totals never go down.
    retired: RefCell<StorageStats>,
}

impl DiskStore {
    /// A store rooted at `data_dir` acknowledging per `durability`, with a batch cache of
    /// `cache_bytes` shared by its partitions. Must be used inside a glommio executor.
    pub fn new(data_dir: impl Into<PathBuf>, durability: Durability, cache_bytes: usize) -> Self {
        Self {
            data_dir: data_dir.into(),
            storage: GlommioStorage::DIRECT,
            durability,
            cache: BatchCache::shared(cache_bytes),
            clock: Rc::new(SystemClock),
            partitions: Rc::default(),
            open_failures: RefCell::default(),
            retired: RefCell::default(),
        }
    }

    /// The same store with its logs' files opened for `io` (buffered: through the page cache).
    pub fn with_file_io(mut self, io: FileIo) -> Self {
        self.storage = GlommioStorage::new(io);
        self
    }

    /// Every `interval`, writes and fdatasyncs what each log holds beyond its durable end (for
    /// durability `write` and `memory`, whose acknowledgements do not wait for an fdatasync).
    /// Runs until the executor stops. A failing fdatasync fails that log, as on any path.
    pub fn flush_periodically(&self, interval: std::time::Duration) -> impl Future<Output = ()> + 'static {
        let behind = |log: &PartitionLog<GlommioStorage>| log.durable_end_offset() < log.log_end_offset();
        self.on_timer(interval, "periodic flush failed", behind, |log| async move { log.sync_behind_appends().await })
    }

    /// Every `interval`, writes zeros ahead of each log's end ([`PartitionLog::zero_ahead`]):
    /// appends then overwrite written blocks, and their fdatasyncs commit nothing to the file
    /// system's journal. Runs until the executor stops. A failing zero write fails that log.
    pub fn zero_ahead_periodically(&self, interval: std::time::Duration) -> impl Future<Output = ()> + 'static {
        self.on_timer(interval, "zeroing ahead failed", |_| true, |log| async move { log.zero_ahead().await })
    }

    /// Every `interval`, runs `work` on each log that has not failed and is `due`, one after
    /// another, logging a failure with `failed`. Runs until the executor stops.
    fn on_timer<R, W: Future<Output = Result<R, LogError>>>(
        &self,
        interval: std::time::Duration,
        failed: &'static str,
        due: impl Fn(&PartitionLog<GlommioStorage>) -> bool + 'static,
        work: impl Fn(Rc<PartitionLog<GlommioStorage>>) -> W + 'static,
    ) -> impl Future<Output = ()> + 'static {
        let partitions = Rc::clone(&self.partitions);
        async move {
            loop {
                glommio::timer::sleep(interval).await;
                let logs: Vec<(TopicPartition, Rc<PartitionLog<GlommioStorage>>)> = partitions
                    .borrow()
                    .iter()
                    .filter(|(_, p)| p.log.failure().is_none() && due(&p.log))
                    .map(|(tp, p)| (tp.clone(), Rc::clone(&p.log)))
                    .collect();
                for (partition, log) in logs {
                    if let Err(error) = work(log).await {
                        tracing::warn!(%partition, %error, "{failed}");
                    }
                }
            }
        }
    }

    /// The directory of a partition's log.
    pub fn partition_dir(data_dir: &Path, partition: &TopicPartition) -> PathBuf {
        data_dir.join(&partition.topic).join(partition.partition.to_string())
    }

    /// Batch cache counters (hits, misses, bytes), for metrics.
    pub fn cache_stats(&self) -> rill_engine::cache::CacheStats {
        self.cache.borrow().stats()
    }

    /// Bytes, fdatasyncs and storage-call latencies over this core's logs, for metrics.
    pub fn log_totals(&self) -> StorageStats {
        let partitions = self.partitions.borrow();
        let mut totals = *self.retired.borrow();
        for partition in partitions.values() {
            totals.log_bytes += partition.log.size_bytes();
            totals.add_log_latencies(&partition.log.stats());
        }
        totals
    }

    /// Logs that failed (fsync errors) and will not accept appends, and logs that refused to
    /// open (fenced by recovery), with the reason.
    pub fn failed_partitions(&self) -> Vec<(TopicPartition, String)> {
        let partitions = self.partitions.borrow();
        let mut failed: Vec<_> = partitions
            .iter()
            .filter_map(|(tp, p)| p.log.failure().map(|reason| (tp.clone(), reason)))
            .filter(|(_, reason)| reason != "closed")
            .collect();
        failed.extend(self.open_failures.borrow().iter().map(|(tp, reason)| (tp.clone(), reason.clone())));
        failed.sort();
        failed
    }

    /// Idempotent batch summaries from `from` to `end`, or `None` if that takes more than
    /// [`PRODUCER_SCAN_BYTES_MAX`].
    async fn scan_batches(
        &self,
        partition: &TopicPartition,
        log: &PartitionLog<GlommioStorage>,
        from: i64,
        end: i64,
    ) -> Result<Option<Vec<BatchSummary>>, StorageError> {
        let mut summaries = Vec::new();
        let mut offset = from;
        let mut bytes_read = 0usize;
        while offset < end {
            if bytes_read > PRODUCER_SCAN_BYTES_MAX {
                return Ok(None);
            }
            let batches = log.read(offset, PRODUCER_SCAN_READ_BYTES, end).await.map_err(|e| storage_error(partition, e))?;
            let Some(last) = batches.last() else { break };
            offset = last.header.base_offset + i64::from(last.header.last_offset_delta) + 1;
            for batch in &batches {
                bytes_read += batch.payload.len();
                let header = &batch.header;
                if header.producer_id >= 0 && header.base_offset >= from {
                    summaries.push(BatchSummary {
                        base_offset: header.base_offset,
                        last_offset_delta: header.last_offset_delta,
                        producer_id: header.producer_id,
                        producer_epoch: header.producer_epoch,
                        base_sequence: header.base_sequence,
                    });
                }
            }
        }
        Ok(Some(summaries))
    }

    /// Flushes and closes every log (orderly shutdown).
    pub async fn close_all(&self) {
        let logs: Vec<_> = self.partitions.borrow().values().map(|p| p.log.clone()).collect();
        for log in logs {
            if let Err(e) = log.close().await {
                tracing::error!(dir = %log.dir().display(), error = %e, "closing log");
            }
        }
    }

    fn get(&self, partition: &TopicPartition) -> Result<Rc<DiskPartition>, StorageError> {
        self.partitions
            .borrow()
            .get(partition)
            .cloned()
            .ok_or_else(|| StorageError::UnknownPartition(partition.clone()))
    }

    fn high_watermark(&self, log: &PartitionLog<GlommioStorage>) -> i64 {
        match self.durability {
            Durability::Fsync => log.durable_end_offset(),
            Durability::Write => log.written_end_offset(),
            Durability::Memory => log.log_end_offset(),
        }
    }

    /// Whether this append should also apply retention (at most every
    /// `RETENTION_INTERVAL_MS` per partition).
    fn retention_due(&self, state: &DiskPartition) -> bool {
        let now = self.clock.now_ms();
        if now - state.retention_checked_ms.get() < RETENTION_INTERVAL_MS {
            return false;
        }
        state.retention_checked_ms.set(now);
        true
    }
}

/// Durability `memory`: once half the log's stage limit is staged, writes it out in a task of
/// its own, so the appends acknowledged from memory do not wait for that write (only one that
/// finds the whole limit staged does). One write-out per partition at a time.
fn start_write_out_if_due(partition: &TopicPartition, state: &Rc<DiskPartition>) {
    if state.writing_out.get() || !state.log.write_out_due() {
        return;
    }
    state.writing_out.set(true);
    let (partition, state) = (partition.clone(), Rc::clone(state));
    glommio::spawn_local(async move {
        if let Err(error) = state.log.write_out().await {
            tracing::warn!(%partition, %error, "background write-out failed");
        }
        state.writing_out.set(false);
    })
    .detach();
}

async fn apply_retention(partition: &TopicPartition, state: &DiskPartition) {
    match state.log.apply_retention().await {
        Ok(outcome) if outcome.segments_deleted > 0 => {
            tracing::info!(%partition, segments = outcome.segments_deleted, bytes = outcome.bytes_deleted, "retention");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(%partition, error = %e, "retention failed"),
    }
}

/// The engine's log settings for a topic config.
pub fn log_config(config: &TopicConfig) -> LogConfig {
    let defaults = LogConfig::default();
    let segment_bytes = u64::try_from(config.segment_bytes).unwrap_or(defaults.segment_bytes).max(64 * 1024);
    LogConfig {
        segment_bytes,
        // `preallocate`: a step of the whole segment, so a segment's first append reserves all
        // of it, on a file with no direct I/O in flight yet.
        preallocate_bytes: if config.preallocate { segment_bytes } else { defaults.preallocate_bytes },
        retention_ms: (config.retention_ms >= 0).then_some(config.retention_ms),
        retention_bytes: u64::try_from(config.retention_bytes).ok(),
        // The front-end enforces max.message.bytes per request; a single batch may carry a
        // little framing beyond it.
        batch_bytes_max: usize::try_from(config.max_message_bytes).unwrap_or(0).max(defaults.batch_bytes_max),
        ..defaults
    }
}

fn storage_error(partition: &TopicPartition, error: LogError) -> StorageError {
    match error {
        LogError::OffsetOutOfRange { offset, start, end } => StorageError::OffsetOutOfRange {
            partition: partition.clone(),
            offset,
            log_start_offset: start,
            high_watermark: end,
        },
        LogError::NoSpace { .. } => StorageError::Full {
            partition: partition.clone(),
            needed_bytes: 0,
            used_bytes: 0,
            limit_bytes: 0,
        },
        other => StorageError::Io { partition: partition.clone(), message: other.to_string() },
    }
}

impl PartitionStore for DiskStore {
    /// Opens the partition's log, recovering what a previous run left in its directory.
    fn create_partition(
        &self,
        partition: &TopicPartition,
        config: &TopicConfig,
    ) -> impl Future<Output = Result<(), StorageError>> {
        let partition = partition.clone();
        let config = config.clone();
        async move {
            if self.partitions.borrow().contains_key(&partition) {
                return Err(StorageError::PartitionExists(partition));
            }
            let dir = Self::partition_dir(&self.data_dir, &partition);
            let opened = PartitionLog::open(self.storage, dir, log_config(&config), self.cache.clone(), self.clock.clone()).await;
            let log = match opened {
                Ok(log) => {
                    self.open_failures.borrow_mut().remove(&partition);
                    log
                }
                Err(error) => {
                    // Kept for /health: the partition stays unavailable, the others keep serving.
                    self.open_failures.borrow_mut().insert(partition.clone(), error.to_string());
                    return Err(storage_error(&partition, error));
                }
            };
            let state = DiskPartition {
                log: Rc::new(log),
                signal: ChangeSignal::new(),
                retention_checked_ms: Cell::new(0),
                writing_out: Cell::new(false),
            };
            // Another create may have raced us across the await.
            let mut partitions = self.partitions.borrow_mut();
            if partitions.contains_key(&partition) {
                return Err(StorageError::PartitionExists(partition));
            }
            partitions.insert(partition, Rc::new(state));
            Ok(())
        }
    }

    fn delete_partition(
        &self,
        partition: &TopicPartition,
    ) -> impl Future<Output = Result<(), StorageError>> {
        let partition = partition.clone();
        async move {
            let removed = self.partitions.borrow_mut().remove(&partition);
            if removed.is_none() && self.open_failures.borrow_mut().remove(&partition).is_some() {
                // A log that never opened: its directory stays for an operator to inspect.
                tracing::warn!(%partition, "deleted a partition whose log had refused to open; its files are kept");
                return Ok(());
            }
            let state = removed.ok_or_else(|| StorageError::UnknownPartition(partition.clone()))?;
            state.signal.notify();
            let log = Rc::try_unwrap(state)
                .map_err(|_| StorageError::Io { partition: partition.clone(), message: "partition busy".into() })?
                .log;
            let log = Rc::try_unwrap(log)
                .map_err(|_| StorageError::Io { partition: partition.clone(), message: "partition busy".into() })?;
            // Counters survive the partition (log bytes do not: they are gone).
            self.retired.borrow_mut().add_log_latencies(&log.stats());
            log.delete().await.map_err(|e| storage_error(&partition, e))
        }
    }

    fn update_config(
        &self,
        partition: &TopicPartition,
        config: &TopicConfig,
    ) -> impl Future<Output = Result<(), StorageError>> {
        let result = self.get(partition).map(|state| {
            state.log.set_config(log_config(config));
            state.retention_checked_ms.set(0);
        });
        std::future::ready(result)
    }

    fn append(
        &self,
        partition: &TopicPartition,
        batches: AppendBatches,
    ) -> impl Future<Output = Result<AppendOutcome, StorageError>> {
        let staged = self.append_staged(partition, batches);
        async move {
            let (outcome, durable) = staged.await?;
            durable.await?;
            Ok(outcome)
        }
    }

    fn append_staged(
        &self,
        partition: &TopicPartition,
        batches: AppendBatches,
    ) -> impl Future<Output = Result<(AppendOutcome, Durable), StorageError>> {
        let partition = partition.clone();
        async move {
            let state = self.get(&partition)?;
            let parts: Vec<BytesMut> = batches
                .headers
                .iter()
                .map(|h| BytesMut::from(&batches.bytes[h.position..h.position + h.size_bytes]))
                .collect();
            if parts.is_empty() {
                let offsets = self.offsets(&partition)?;
                let outcome = AppendOutcome {
                    base_offset: offsets.high_watermark,
                    last_offset: offsets.high_watermark - 1,
                    log_append_time_ms: -1,
                    log_start_offset: offsets.log_start_offset,
                };
                let done: Durable = Box::pin(std::future::ready(Ok(())));
                return Ok((outcome, done));
            }
            let results = state.log.stage_many(parts, 0, 0).await.map_err(|e| storage_error(&partition, e))?;
            let first = results.first().expect("non-empty");
            let last = results.last().expect("non-empty");
            let outcome = AppendOutcome {
                base_offset: first.base_offset,
                last_offset: last.last_offset,
                log_append_time_ms: -1,
                log_start_offset: state.log.log_start_offset(),
            };
            let durability = self.durability;
            let retention_due = self.retention_due(&state);
            let end = last.last_offset + 1;
            if durability == Durability::Memory {
                start_write_out_if_due(&partition, &state);
            }
            let durable: Durable = Box::pin(async move {
                state.log.wait_durable(end, durability).await.map_err(|e| storage_error(&partition, e))?;
                state.signal.notify();
                if retention_due {
                    apply_retention(&partition, &state).await;
                }
                Ok(())
            });
            Ok((outcome, durable))
        }
    }

    fn read(
        &self,
        partition: &TopicPartition,
        offset: i64,
        max_bytes: usize,
    ) -> impl Future<Output = Result<ReadOutcome, StorageError>> {
        let partition = partition.clone();
        async move {
            let state = self.get(&partition)?;
            let hw = self.high_watermark(&state.log);
            let start = state.log.log_start_offset();
            if offset < start || offset > hw {
                return Err(StorageError::OffsetOutOfRange {
                    partition,
                    offset,
                    log_start_offset: start,
                    high_watermark: hw,
                });
            }
            let batches = state.log.read(offset, max_bytes, hw).await.map_err(|e| storage_error(&partition, e))?;
            let records = match batches.len() {
                0 => Bytes::new(),
                1 => batches[0].payload.clone(),
                _ => {
                    let mut out = BytesMut::with_capacity(batches.iter().map(|b| b.payload.len()).sum());
                    for b in &batches {
                        out.extend_from_slice(&b.payload);
                    }
                    out.freeze()
                }
            };
            Ok(ReadOutcome { records, high_watermark: hw, log_start_offset: state.log.log_start_offset() })
        }
    }

    fn offsets(&self, partition: &TopicPartition) -> Result<PartitionOffsets, StorageError> {
        let state = self.get(partition)?;
        Ok(PartitionOffsets {
            log_start_offset: state.log.log_start_offset(),
            high_watermark: self.high_watermark(&state.log),
        })
    }

    fn offset_for_timestamp(
        &self,
        partition: &TopicPartition,
        timestamp: i64,
    ) -> impl Future<Output = Result<Option<TimestampOffset>, StorageError>> {
        let partition = partition.clone();
        async move {
            let state = self.get(&partition)?;
            let hw = self.high_watermark(&state.log);
            let found = state.log.offset_for_timestamp(timestamp).await.map_err(|e| storage_error(&partition, e))?;
            let Some(offset) = found.filter(|&o| o < hw) else { return Ok(None) };
            let batch = state.log.read(offset, 1, hw).await.map_err(|e| storage_error(&partition, e))?;
            Ok(batch.first().map(|b| TimestampOffset { offset, timestamp: b.header.max_timestamp }))
        }
    }

    fn close(&self) -> impl Future<Output = ()> {
        self.close_all()
    }

    fn recent_batches(
        &self,
        partition: &TopicPartition,
        records_max: i64,
    ) -> impl Future<Output = Result<Vec<BatchSummary>, StorageError>> {
        let partition = partition.clone();
        async move {
            let state = self.get(&partition)?;
            let log = &state.log;
            let end = log.log_end_offset();
            let mut window = records_max.max(1);
            for _ in 0..PRODUCER_SCAN_HALVINGS_MAX {
                let from = end.saturating_sub(window).max(log.log_start_offset());
                if let Some(summaries) = self.scan_batches(&partition, log, from, end).await? {
                    return Ok(summaries);
                }
                window /= 2;
            }
            tracing::warn!(%partition, "producer state scan found no window within its byte budget");
            Ok(Vec::new())
        }
    }

    fn failed_partitions(&self) -> Vec<(TopicPartition, String)> {
        DiskStore::failed_partitions(self)
    }

    fn storage_stats(&self) -> StorageStats {
        let cache = self.cache_stats();
        StorageStats { cache_hits: cache.hits, cache_misses: cache.misses, ..self.log_totals() }
    }

    fn wait_for_data(
        &self,
        partition: &TopicPartition,
        high_watermark: i64,
    ) -> Result<impl Future<Output = ()> + 'static, StorageError> {
        let state = self.get(partition)?;
        Ok(state.signal.wait_unless(self.high_watermark(&state.log) > high_watermark))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{encode_test_batch, parse_batches};

    /// A directory on the data disk (O_DIRECT does not work on every /tmp).
    fn data_disk_tempdir() -> tempfile::TempDir {
        let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-tmp");
        std::fs::create_dir_all(&base).unwrap();
        tempfile::tempdir_in(base).unwrap()
    }

    fn batches(count: i32) -> AppendBatches {
        let bytes = Bytes::from(encode_test_batch(-1, -1, count, 100));
        let headers = parse_batches(&bytes).unwrap();
        AppendBatches { bytes, headers }
    }

    #[test]
    fn preallocate_reserves_a_whole_segment_per_step() {
        let config = TopicConfig { segment_bytes: 128 << 20, ..TopicConfig::default() };
        assert_eq!(log_config(&config).preallocate_bytes, LogConfig::default().preallocate_bytes);
        let config = TopicConfig { preallocate: true, ..config };
        assert_eq!(log_config(&config).preallocate_bytes, 128 << 20);
    }

    #[test]
    fn appends_survive_reopen_and_read_whole_batches() {
        let dir = data_disk_tempdir();
        let root = dir.path().to_path_buf();
        glommio::LocalExecutor::default().run(async move {
            let tp = TopicPartition::new("t", 0);
            let store = DiskStore::new(&root, Durability::Fsync, 1 << 20);
            store.create_partition(&tp, &TopicConfig::default()).await.unwrap();
            assert!(matches!(
                store.create_partition(&tp, &TopicConfig::default()).await,
                Err(StorageError::PartitionExists(_))
            ));
            let first = store.append(&tp, batches(3)).await.unwrap();
            let second = store.append(&tp, batches(2)).await.unwrap();
            assert_eq!((first.base_offset, first.last_offset), (0, 2));
            assert_eq!((second.base_offset, second.last_offset), (3, 4));
            assert_eq!(store.offsets(&tp).unwrap().high_watermark, 5);
            let read = store.read(&tp, 3, 1 << 20).await.unwrap();
            let headers = parse_batches(&read.records).unwrap();
            assert_eq!(headers.len(), 1);
            assert_eq!(headers[0].base_offset, 3);
            store.close_all().await;
            drop(store);

            let store = DiskStore::new(&root, Durability::Fsync, 1 << 20);
            store.create_partition(&tp, &TopicConfig::default()).await.unwrap();
            assert_eq!(store.offsets(&tp).unwrap().high_watermark, 5);
            let read = store.read(&tp, 0, 1 << 20).await.unwrap();
            assert_eq!(parse_batches(&read.records).unwrap().len(), 2);
            assert!(matches!(store.read(&tp, 6, 100).await, Err(StorageError::OffsetOutOfRange { .. })));
            store.append(&tp, batches(1)).await.unwrap();
            let before = store.log_totals();
            assert!(before.fdatasyncs() >= 1);
            store.delete_partition(&tp).await.unwrap();
            assert!(!DiskStore::partition_dir(&root, &tp).exists());
            // Counters outlive the partition (Prometheus counters never go down).
            let after = store.log_totals();
            assert_eq!(after.fdatasyncs(), before.fdatasyncs());
            assert_eq!(after.fdatasync_latency, before.fdatasync_latency);
            assert_eq!(after.log_bytes, 0);
        });
    }

    /// Waits until `done` holds, polling every 10 ms, for at most 20 s (background work on a
    /// loaded machine's disk is slow); the caller asserts what it waited for.
    async fn wait_until(done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !done() && std::time::Instant::now() < deadline {
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Waits until the log is durable up to `offset`, and fails the test otherwise.
    async fn durable_within(log: &PartitionLog<GlommioStorage>, offset: i64) {
        wait_until(|| log.durable_end_offset() >= offset).await;
        assert_eq!(log.durable_end_offset(), offset, "the timer fdatasynced the acknowledged appends");
    }

    #[test]
    fn periodic_flush_makes_write_durability_appends_durable() {
        for io in [FileIo::Direct, FileIo::Buffered] {
            periodic_flush_makes_appends_durable(io);
        }
    }

    fn periodic_flush_makes_appends_durable(io: FileIo) {
        let dir = data_disk_tempdir();
        let root = dir.path().to_path_buf();
        glommio::LocalExecutor::default().run(async move {
            let tp = TopicPartition::new("t", 0);
            let store = DiskStore::new(&root, Durability::Write, 1 << 20).with_file_io(io);
            store.create_partition(&tp, &TopicConfig::default()).await.unwrap();
            let log = store.get(&tp).unwrap().log.clone();
            store.append(&tp, batches(3)).await.unwrap();
            // Acknowledged once written: nothing has waited for an fdatasync yet.
            assert_eq!(log.written_end_offset(), 3);
            assert_eq!(log.durable_end_offset(), 0);
            let syncs = store.log_totals().fdatasyncs();
            glommio::spawn_local(store.flush_periodically(std::time::Duration::from_millis(20))).detach();
            durable_within(&log, 3).await;
            let after_first = store.log_totals().fdatasyncs();
            assert!(after_first > syncs);
            // A log with nothing new is not synced again.
            glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
            assert_eq!(store.log_totals().fdatasyncs(), after_first);
            store.append(&tp, batches(2)).await.unwrap();
            durable_within(&log, 5).await;
            store.close_all().await;
        });
    }

    #[test]
    fn memory_durability_writes_out_in_the_background() {
        let dir = data_disk_tempdir();
        let root = dir.path().to_path_buf();
        glommio::LocalExecutor::default().run(async move {
            let tp = TopicPartition::new("t", 0);
            let store = DiskStore::new(&root, Durability::Memory, 1 << 20);
            store.create_partition(&tp, &TopicConfig::default()).await.unwrap();
            let log = store.get(&tp).unwrap().log.clone();
            let half = log.config().staged_bytes_max / 2;
            let one = batches(100);
            let batch_bytes = one.bytes.len();
            let count = half / batch_bytes + 2;
            for _ in 0..count {
                store.append(&tp, batches(100)).await.unwrap();
            }
            assert_eq!(log.written_end_offset(), 0, "acknowledged from memory, nothing written yet");
            wait_until(|| log.written_end_offset() > 0).await;
            glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
            // Everything staged when the write-out started is written; what came after is below
            // half the limit and waits for the next one (or the timer).
            assert!(log.written_end_offset() > 0, "written out in the background");
            assert!(!log.write_out_due());
            assert_eq!(log.durable_end_offset(), 0, "written, not synced (that is the timer's job)");
            store.close_all().await;
        });
    }

    #[test]
    fn zeroing_ahead_on_a_timer_leaves_every_batch_readable() {
        let dir = data_disk_tempdir();
        let root = dir.path().to_path_buf();
        glommio::LocalExecutor::default().run(async move {
            let tp = TopicPartition::new("t", 0);
            let store = DiskStore::new(&root, Durability::Fsync, 0);
            store.create_partition(&tp, &TopicConfig::default()).await.unwrap();
            store.append(&tp, batches(3)).await.unwrap();
            glommio::spawn_local(store.zero_ahead_periodically(std::time::Duration::from_millis(10))).detach();
            // The lead takes a few of the timer's turns (256 KiB per write), more on a loaded
            // machine: wait for it, boundedly, then check no turn zeroes past it.
            let lead = rill_engine::log::ZERO_AHEAD_BYTES;
            wait_until(|| store.log_totals().bytes_zeroed >= lead).await;
            glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
            assert_eq!(store.log_totals().bytes_zeroed, lead, "the default lead, once");
            for _ in 0..20 {
                store.append(&tp, batches(2)).await.unwrap();
                glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
            }
            store.close_all().await;
            drop(store);
            let store = DiskStore::new(&root, Durability::Fsync, 0);
            store.create_partition(&tp, &TopicConfig::default()).await.unwrap();
            assert_eq!(store.offsets(&tp).unwrap().high_watermark, 43);
            let read = store.read(&tp, 0, 1 << 20).await.unwrap();
            assert_eq!(parse_batches(&read.records).unwrap().len(), 21);
            store.close_all().await;
        });
    }
}
