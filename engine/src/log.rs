//! The partition log: an ordered sequence of segments with group-committed appends.
//!
//! Terms used here: the *log end offset* is the offset the next batch gets; the *written* and
//! *durable* end offsets are how far writes have completed and how far an fdatasync has covered.
//!
//! ## Appends and group commit (hot path)
//! `append` takes the stage lock (FIFO), rolls or preallocates if needed, then synchronously
//! assigns offsets, patches the batch, copies the frame into the active segment's chunks and the
//! batch cache, and releases the lock. What it waits for next depends on [`Durability`]: with
//! `Fsync` it waits until an fdatasync covers its bytes. Flushes write one at a time under the
//! flush lock; each one writes *everything* staged so far, so every append queued behind a
//! running flush is covered by the next single write and fdatasync. A group commit fdatasyncs
//! after releasing the lock ([`PendingSync`]): the next group's write goes to the disk while the
//! device flushes this one, and group commits publish their durable end in the order they were
//! written, each only if no fdatasync before it failed.
//!
//! An fdatasync or write error fails the log for good (fsyncgate): no later append is ever
//! acknowledged. ENOSPC while reserving space is an ordinary, retryable error.

use crate::cache::SharedBatchCache;
use crate::clock::Clock;
use crate::envelope::{self, EnvelopeError, KafkaBatchError, StoredBatch, HEADER_BYTES};
use crate::recovery::{self, ScanOutcome};
use crate::segment::{self, Segment, SegmentWriter, SparseIndex, WriteOp};
use crate::storage::{align_down, IoBuffer, OpenMode, Storage, StorageFile};
use crate::sync::{LocalMutex, LocalMutexGuard, WakeList};
use bytes::{Bytes, BytesMut};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use thiserror::Error;
use tracing::{info, warn};

/// Name of the file holding the logical log start offset.
const START_OFFSET_FILE: &str = "start.offset";
const START_OFFSET_MAGIC: u32 = u32::from_le_bytes(*b"RILS");

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// After an fdatasync covers the batch.
    Fsync,
    /// After the write to the file completed (survives a process crash, not a power cut).
    Write,
    /// As soon as it is staged in memory (the caller flushes; replication provides safety).
    Memory,
}

/// Configuration of one log. Limits carry their unit last.
#[derive(Debug, Clone, Copy)]
pub struct LogConfig {
    /// Roll to a new segment beyond this size.
    pub segment_bytes: u64,
    /// Roll to a new segment when the active one is older than this.
    pub segment_ms: i64,
    /// Delete old segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// Delete segments whose newest batch is older than this.
    pub retention_ms: Option<i64>,
    /// Largest accepted Kafka batch.
    pub batch_bytes_max: usize,
    /// Bytes between sparse index entries.
    pub index_interval_bytes: u64,
    /// Staging chunk size (a multiple of 4 KiB).
    pub chunk_bytes: usize,
    /// Chunks kept for reuse.
    pub chunk_pool_max: usize,
    /// Reserve this much more file space whenever the reserve runs out; doubled for each
    /// reservation that follows the last within a second, up to [`PREALLOCATE_STEP_BYTES_MAX`]
    /// (see `PartitionLog::reserve_step`).
    pub preallocate_bytes: u64,
    /// With `Durability::Memory`, an append that finds more than this staged waits until it is
    /// written; callers with a spawner start [`PartitionLog::write_out`] in the background at
    /// half of it ([`PartitionLog::write_out_due`]) so appends rarely get there.
    pub staged_bytes_max: usize,
    /// `Write` flushes whose batches average at least this size hand the next flush over
    /// first (see [`PartitionLog::flush_to`]); default [`STREAMING_BATCH_BYTES`].
    pub streaming_batch_bytes: u64,
    /// An `Fsync` group commit that wrote at least this much fdatasyncs after releasing the
    /// flush lock, so the next group's write overlaps its fdatasync; a smaller one holds the
    /// lock through it (see [`PartitionLog::flush_to`]). Default [`PIPELINED_SYNC_BYTES`]
    /// (never): for devices whose writes and flushes do not slow each other down.
    pub pipelined_sync_bytes: u64,
    /// How far ahead of the active segment's end [`PartitionLog::zero_ahead`] keeps the file
    /// written with zeros (a multiple of 4 KiB; 0: never). Default [`ZERO_AHEAD_BYTES`].
    pub zero_ahead_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: None,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            batch_bytes_max: 1024 * 1024 + 12 * 1024,
            index_interval_bytes: 4096,
            // 1 MiB writes reach the disk's sequential bandwidth (see docs/BENCHMARKS.md);
            // memory per appending log: the active chunk plus the pool (docs/decisions.md).
            chunk_bytes: 1024 * 1024,
            chunk_pool_max: 4,
            preallocate_bytes: 32 * 1024 * 1024,
            staged_bytes_max: 4 * 1024 * 1024,
            streaming_batch_bytes: STREAMING_BATCH_BYTES,
            pipelined_sync_bytes: PIPELINED_SYNC_BYTES,
            zero_ahead_bytes: ZERO_AHEAD_BYTES,
        }
    }
}

/// Errors of the log. Each names what a Kafka client should be told (`net` maps them).
#[derive(Debug, Error)]
pub enum LogError {
    /// An I/O operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The log failed earlier (a write or fdatasync error) and accepts nothing more.
    #[error("log {dir} failed and is read-only until restart: {reason}")]
    Failed {
        /// The log directory.
        dir: PathBuf,
        /// The first failure.
        reason: String,
    },
    /// Recovery found damage followed by valid data; the log refuses to open.
    #[error("log {dir} fenced: damage in {segment} at byte {position} ({reason}) with valid data after it at byte {next_valid_position}; refusing to truncate acknowledged data")]
    Fenced {
        /// The log directory.
        dir: PathBuf,
        /// The segment file.
        segment: String,
        /// Where the damage is.
        position: u64,
        /// What the damage is.
        reason: String,
        /// Where valid data resumes.
        next_valid_position: u64,
    },
    /// No space left for the batch; nothing was stored. Retry after space is freed.
    #[error("no space left on device for log {dir}")]
    NoSpace {
        /// The log directory.
        dir: PathBuf,
    },
    /// The batch is larger than the configured maximum.
    #[error("batch of {size} bytes exceeds the maximum of {max}")]
    BatchTooLarge {
        /// Batch size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a valid Kafka RecordBatch v2.
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] KafkaBatchError),
    /// An offset outside the log.
    #[error("offset {offset} out of range [{start}, {end}]")]
    OffsetOutOfRange {
        /// Requested.
        offset: i64,
        /// Log start offset.
        start: i64,
        /// Log end offset.
        end: i64,
    },
    /// Suffix truncation inside a batch.
    #[error("offset {0} is not a batch boundary")]
    NotBatchBoundary(i64),
    /// A frame read back from disk failed validation.
    #[error("corrupt frame in {path} at byte {position}: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where.
        position: u64,
        /// What is wrong.
        source: EnvelopeError,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LogError + 'a {
    move |source| LogError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn is_enospc(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC)
}

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Offset of the last record.
    pub last_offset: i64,
    /// The log start offset after the append.
    pub log_start_offset: i64,
}

/// What retention deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Segments removed.
    pub segments_deleted: usize,
    /// Bytes removed.
    pub bytes_deleted: u64,
}

/// Counters of one log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Appends accepted.
    pub appends: u64,
    /// Flushes run.
    pub flushes: u64,
    /// Latencies of the group-commit fdatasyncs (their sum is the time spent in fdatasync).
    pub fdatasync_latency: crate::stats::IoLatency,
    /// Latencies of the fallocate calls reserving space ahead of appends.
    pub preallocate_latency: crate::stats::IoLatency,
    /// Latencies of a flush's writes to one segment: from issuing them (concurrently) until the
    /// last completes.
    pub write_latency: crate::stats::IoLatency,
    /// Bytes written to files (including rewritten tail pages).
    pub bytes_written: u64,
    /// Bytes of zeros written ahead of appends by [`PartitionLog::zero_ahead`].
    pub bytes_zeroed: u64,
}

impl LogStats {
    /// Group-commit fdatasync calls issued (the count of their latency histogram).
    pub fn fdatasyncs(&self) -> u64 {
        self.fdatasync_latency.count
    }
}

/// A group commit between its writes and its publication: written under the flush lock,
/// fdatasynced after releasing it ([`PartitionLog::finish_sync`]).
struct PendingSync<F> {
    /// Issue order; group commits publish in it.
    ticket: u64,
    /// The active segment's file when it was written.
    file: Rc<F>,
    /// That segment's base offset.
    base: i64,
    /// The durable end once its fdatasync returns (the log end when it was written).
    target: i64,
    /// The start of the next epoch: the unsynced window once this one is durable.
    next_window: u64,
    /// `suffix_truncations` when it was written.
    truncations: u64,
}

/// Fails the log if dropped armed: a flush whose future is dropped between taking the staged
/// bytes and seeing their writes complete cannot know what reached the disk, and nothing would
/// write those bytes again (a later flush would count them written).
struct FailIfCancelled<'a, S: Storage> {
    log: &'a PartitionLog<S>,
    armed: bool,
    reason: &'static str,
}

impl<'a, S: Storage> FailIfCancelled<'a, S> {
    /// `reason` is what the log's failure says if the guard is dropped armed.
    fn new(log: &'a PartitionLog<S>, reason: &'static str) -> Self {
        Self {
            log,
            armed: true,
            reason,
        }
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl<S: Storage> Drop for FailIfCancelled<'_, S> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.log.fail(self.reason.to_string());
        }
    }
}

struct LogState<F: StorageFile> {
    segments: BTreeMap<i64, Segment<F>>,
    log_start_offset: i64,
    next_offset: i64,
    written_offset: i64,
    durable_offset: i64,
    last_term: u64,
    write_epoch: u64,
    /// Start of the active segment's oldest epoch not yet known durable: the current epoch's
    /// start, except while group commits ([`PendingSync`]) fdatasync older epochs.
    /// Frames carry it (as their header's `epoch_start`), so recovery knows which damage a power
    /// cut can explain (recovery.rs).
    window_start: u64,
    /// `truncate_suffix` calls so far: a group commit that saw one happen during its
    /// fdatasync does not record what it synced (those offsets may now hold other batches).
    suffix_truncations: u64,
    failed: Option<String>,
    pool: Vec<F::Buffer>,
    stats: LogStats,
}

impl<F: StorageFile> LogState<F> {
    fn active(&self) -> &Segment<F> {
        self.segments
            .values()
            .next_back()
            .expect("a log always has an active segment")
    }
    fn active_mut(&mut self) -> &mut Segment<F> {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log always has an active segment")
    }
}

/// Default of [`LogConfig::streaming_batch_bytes`]. Copying and checksumming a batch this large
/// takes far longer (about 250 µs per MiB here) than the executor turn that hands the next flush
/// to the disk first, so a `Write` flush whose batches average at least this much hands over
/// (see [`PartitionLog::flush_to`]). Below it the served appenders go first: each stages its
/// next batch before the next flush starts, so that flush carries more of them (handing over
/// there halved the rate of 4 KiB appends).
pub const STREAMING_BATCH_BYTES: u64 = 256 << 10;

/// Default of [`LogConfig::pipelined_sync_bytes`]: never (every `Fsync` group commit holds the
/// flush lock through its fdatasync). On this machine's disk the overlap did not pay: 64
/// concurrent 4 KiB appenders lost ~40% of their rate (groups split in two, twice the
/// fdatasyncs), small groups at 50,000 records/s lost 16–22% on p50 and 6–28% on p99, and a
/// producer's closed loop gained ~4% at best, within the noise (docs/BENCHMARKS.md, session 11).
pub const PIPELINED_SYNC_BYTES: u64 = u64::MAX;

/// Largest reservation step of a fast stream. ext4 makes every fallocate wait until the file's
/// direct I/O in flight completes, so each step idles the disk once: 32 MiB steps cost a 1 MiB
/// append stream 11–15% of its time here, 256 MiB steps 4–5% (docs/BENCHMARKS.md, issue 2).
pub const PREALLOCATE_STEP_BYTES_MAX: u64 = 256 << 20;

/// Default of [`LogConfig::zero_ahead_bytes`]: at 5 MB/s of appends (50,000 records/s of 100
/// bytes) this lasts 1.6 s, far beyond the broker's 100 ms between calls.
pub const ZERO_AHEAD_BYTES: u64 = 8 << 20;

/// Largest zero write [`PartitionLog::zero_ahead`] issues while it holds the flush lock: about
/// 0.2 ms of this disk's bandwidth, the most a flush waits behind it.
const ZERO_WRITE_BYTES: u64 = 256 << 10;
const _: () = assert!(ZERO_WRITE_BYTES % crate::storage::IO_ALIGN == 0);

/// One step of `flush_to`, recorded for tests.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlushEvent {
    /// A flush started.
    Start,
    /// A flush ended with everything below `written` written; `handed_over`: appenders it did
    /// not serve were woken first to start the next one.
    End { written: i64, handed_over: bool },
    /// `flush_to(offset, ..)` returned successfully.
    Return { offset: i64 },
}

/// The flush lock, held. Releasing it (explicitly or on drop, an error path included) wakes
/// the `Write` appenders parked until the flush ended.
struct FlushGuard<'a, S: Storage> {
    log: &'a PartitionLog<S>,
    guard: Option<LocalMutexGuard>,
}

impl<S: Storage> FlushGuard<'_, S> {
    /// Releases the lock and wakes the parked appenders; after a streaming flush, those whose
    /// bytes are still unwritten first. Returns whether any of those were woken.
    fn release(mut self) -> bool {
        self.release_now()
    }

    fn release_now(&mut self) -> bool {
        let Some(guard) = self.guard.take() else {
            return false;
        };
        drop(guard);
        let log = self.log;
        if log.streaming.get() {
            let unwritten = |offset: i64| !log.reached(offset, false);
            log.flush_waiters.wake_all(Some(&unwritten)) > 0
        } else {
            log.flush_waiters.wake_all(None);
            false
        }
    }
}

impl<S: Storage> Drop for FlushGuard<'_, S> {
    fn drop(&mut self) {
        self.release_now();
    }
}

/// A partition's log on one core. Not `Send`: it lives on the core that owns the partition.
pub struct PartitionLog<S: Storage> {
    storage: S,
    dir: PathBuf,
    config: Cell<LogConfig>,
    clock: Rc<dyn Clock>,
    cache: SharedBatchCache,
    cache_id: u64,
    state: RefCell<LogState<S::File>>,
    stage_lock: LocalMutex,
    flush_lock: LocalMutex,
    /// `Write` appenders waiting for the flush in progress to end, with the offset they need
    /// written (see [`PartitionLog::flush_to`]).
    flush_waiters: WakeList<i64>,
    /// The last flush was a streaming one (see [`STREAMING_BATCH_BYTES`]).
    streaming: Cell<bool>,
    /// Bytes the last flush without fdatasync wrote: half of it and of what is staged is the
    /// next streaming flush's budget.
    streaming_flush_bytes: Cell<u64>,
    /// A [`sync_behind_appends`](Self::sync_behind_appends) is running.
    syncing_behind: Cell<bool>,
    /// Group commits whose fdatasync runs outside the flush lock ([`PendingSync`]): how many
    /// were issued, and how many published their durable end (in issue order).
    syncs_issued: Cell<u64>,
    syncs_published: Cell<u64>,
    /// The durable end the issued group commits reach once published: an `Fsync` appender
    /// below it waits for them instead of flushing again.
    sync_target: Cell<i64>,
    /// Tasks waiting for an issued group commit to publish (appenders it covers, and later
    /// group commits waiting for their turn), woken on every publication and on failure.
    sync_waiters: WakeList<i64>,
    /// Appends staged before the last flush started (the next one writes those since).
    appends_flushed: Cell<u64>,
    /// The active segment (base offset) and its size when `zero_ahead` last ran: how fast
    /// appends consume its zeros.
    zero_mark: Cell<(i64, u64)>,
    /// When appends last reserved file space (log clock, ms) and the step they took.
    reserve_pace: Cell<(i64, u64)>,
    /// What `flush_to` did, in order (tests check the hand-over between flushes).
    #[cfg(test)]
    flush_trace: RefCell<Vec<FlushEvent>>,
    closed: Cell<bool>,
}

impl<S: Storage> std::fmt::Debug for PartitionLog<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionLog")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl<S: Storage> PartitionLog<S> {
    /// Opens the log in `dir` (creating it if empty), recovering every segment.
    pub async fn open(
        storage: S,
        dir: impl Into<PathBuf>,
        config: LogConfig,
        cache: SharedBatchCache,
        clock: Rc<dyn Clock>,
    ) -> Result<Self, LogError> {
        let dir = dir.into();
        assert!(
            config.chunk_bytes > 0 && config.chunk_bytes as u64 % crate::storage::IO_ALIGN == 0
        );
        storage
            .create_dir_all(&dir)
            .await
            .map_err(io_err("create dir", &dir))?;
        let names = storage.list_dir(&dir).await.map_err(io_err("list", &dir))?;
        let mut found: Vec<(i64, u64, String)> = names
            .iter()
            .filter_map(|n| segment::parse_segment_file_name(n).map(|(b, t)| (b, t, n.clone())))
            .collect();
        found.sort();
        let cache_id = cache.borrow_mut().register_log();
        let state = LogState {
            segments: BTreeMap::new(),
            log_start_offset: 0,
            next_offset: 0,
            written_offset: 0,
            durable_offset: 0,
            last_term: 0,
            write_epoch: 0,
            window_start: 0,
            suffix_truncations: 0,
            failed: None,
            pool: Vec::new(),
            stats: LogStats::default(),
        };
        let log = PartitionLog {
            storage,
            dir,
            config: Cell::new(config),
            clock,
            cache,
            cache_id,
            state: RefCell::new(state),
            stage_lock: LocalMutex::default(),
            flush_lock: LocalMutex::default(),
            flush_waiters: WakeList::default(),
            streaming: Cell::new(false),
            streaming_flush_bytes: Cell::new(0),
            syncing_behind: Cell::new(false),
            syncs_issued: Cell::new(0),
            syncs_published: Cell::new(0),
            sync_target: Cell::new(0),
            sync_waiters: WakeList::default(),
            appends_flushed: Cell::new(0),
            zero_mark: Cell::new((-1, 0)),
            reserve_pace: Cell::new((i64::MIN, 0)),
            #[cfg(test)]
            flush_trace: RefCell::default(),
            closed: Cell::new(false),
        };
        log.recover(found).await?;
        Ok(log)
    }

    async fn recover(&self, found: Vec<(i64, u64, String)>) -> Result<(), LogError> {
        let mut expected_base: Option<i64> = None;
        let mut orphans: Vec<PathBuf> = Vec::new();
        let mut torn_before: Option<(String, u64)> = None;
        for (base, _term, name) in found {
            let path = self.dir.join(&name);
            let file = self
                .storage
                .open(&path, OpenMode::Existing)
                .await
                .map_err(io_err("open", &path))?;
            let scan = recovery::scan_segment(&file, base)
                .await
                .map_err(io_err("scan", &path))?;
            // A roll creates the next segment before the previous one's tail is flushed. If
            // the power goes in between, that tail (never acknowledged) is lost and the new,
            // empty segment starts past the recovered end: an orphan, removed below. A gap
            // before a segment that holds data is damage.
            let gap = expected_base.is_some_and(|expected| base != expected);
            if (gap || !orphans.is_empty())
                && scan.frames.is_empty()
                && scan.outcome == ScanOutcome::Clean
            {
                warn!(segment = %path.display(), expected = ?expected_base, "removing empty segment orphaned by a lost tail");
                orphans.push(path);
                continue;
            }
            if gap || !orphans.is_empty() {
                let expected = expected_base.unwrap_or(base);
                return Err(self.fenced(
                    &name,
                    0,
                    format!("segment starts at offset {base}, expected {expected}"),
                    0,
                ));
            }
            // A torn tail is only sound at the end of the log: data kept after it means the
            // torn segment had been sealed (written, synced) before, so this is damage.
            if let Some((torn_name, torn_end)) = torn_before.take() {
                return Err(self.fenced(
                    &torn_name,
                    torn_end,
                    "torn tail in a sealed segment".into(),
                    0,
                ));
            }
            if matches!(scan.outcome, ScanOutcome::TornTail { .. }) {
                torn_before = Some((name.clone(), scan.valid_end));
            }
            match &scan.outcome {
                ScanOutcome::Clean => {}
                ScanOutcome::InteriorDamage {
                    position,
                    reason,
                    next_valid_position,
                } => {
                    return Err(self.fenced(
                        &name,
                        *position,
                        reason.clone(),
                        *next_valid_position,
                    ));
                }
                ScanOutcome::TornTail {
                    reason,
                    dropped_frames,
                } => {
                    warn!(
                        segment = %path.display(), valid_end = scan.valid_end, file_bytes = scan.file_bytes,
                        dropped_frames, %reason, "truncating torn tail of an unacknowledged write"
                    );
                }
            }
            if scan.valid_end < scan.file_bytes {
                file.truncate(scan.valid_end)
                    .await
                    .map_err(io_err("truncate", &path))?;
                file.fdatasync().await.map_err(io_err("fdatasync", &path))?;
            }
            let mut index = SparseIndex::new(self.config().index_interval_bytes);
            let mut max_timestamp = -1;
            let mut next_offset = base;
            let mut st = self.state.borrow_mut();
            for f in &scan.frames {
                index.note(
                    f.header.base_offset,
                    f.position,
                    f.header.max_timestamp,
                    f.header.frame_bytes() as u64,
                );
                max_timestamp = max_timestamp.max(f.header.max_timestamp);
                next_offset = f.header.next_offset();
                st.last_term = f.header.term;
                st.write_epoch = st.write_epoch.max(f.header.write_epoch + 1);
            }
            expected_base = Some(next_offset);
            let created_ms = self.clock.now_ms();
            st.segments.insert(
                base,
                Segment {
                    file: Rc::new(file),
                    path,
                    base_offset: base,
                    size: scan.valid_end,
                    written_size: scan.valid_end,
                    allocated: scan.valid_end,
                    zeroed: 0,
                    next_offset,
                    max_timestamp,
                    created_ms,
                    index,
                    writer: None,
                },
            );
        }
        for orphan in &orphans {
            self.storage
                .remove_file(orphan)
                .await
                .map_err(io_err("remove", orphan))?;
        }
        if !orphans.is_empty() {
            self.storage
                .sync_dir(&self.dir)
                .await
                .map_err(io_err("sync dir", &self.dir))?;
        }
        let first_base = {
            let st = self.state.borrow();
            st.segments.keys().next().copied()
        };
        match first_base {
            None => self.create_segment(0, 0).await?,
            Some(base) => {
                let start = self.read_start_offset().await?.unwrap_or(base).max(base);
                {
                    let mut st = self.state.borrow_mut();
                    let end = st.active().next_offset;
                    st.log_start_offset = start.min(end);
                    st.next_offset = end;
                    st.written_offset = end;
                    st.durable_offset = end;
                }
                self.attach_writer().await?;
            }
        }
        let st = self.state.borrow();
        info!(dir = %self.dir.display(), segments = st.segments.len(), start = st.log_start_offset, end = st.next_offset, "log opened");
        Ok(())
    }

    fn fenced(
        &self,
        segment: &str,
        position: u64,
        reason: String,
        next_valid_position: u64,
    ) -> LogError {
        let e = LogError::Fenced {
            dir: self.dir.clone(),
            segment: segment.to_string(),
            position,
            reason,
            next_valid_position,
        };
        tracing::error!(error = %e, "log recovery refused");
        e
    }

    /// Gives the active segment a writer, reloading its partial last page from disk.
    async fn attach_writer(&self) -> Result<(), LogError> {
        let (file, size) = {
            let st = self.state.borrow();
            let a = st.active();
            (a.file.clone(), a.size)
        };
        let tail_start = align_down(size);
        let tail = if size > tail_start {
            let path = file.path();
            file.read_at(
                tail_start,
                usize::try_from(size - tail_start).expect("page"),
            )
            .await
            .map_err(io_err("read tail page", &path))?
        } else {
            Bytes::new()
        };
        let mut st = self.state.borrow_mut();
        let chunk = take_chunk(&mut st.pool, &*file, self.config().chunk_bytes);
        let writer = SegmentWriter::new(self.config().chunk_bytes, size, &tail, chunk);
        let active = st.active_mut();
        active.writer = Some(writer);
        st.window_start = size;
        Ok(())
    }

    async fn create_segment(&self, base_offset: i64, term: u64) -> Result<(), LogError> {
        let path = self.dir.join(segment::segment_file_name(base_offset, term));
        let file = match self.storage.open(&path, OpenMode::CreateNew).await {
            Ok(f) => f,
            Err(e) if is_enospc(&e) => {
                return Err(LogError::NoSpace {
                    dir: self.dir.clone(),
                })
            }
            Err(e) => return Err(io_err("create", &path)(e)),
        };
        self.storage
            .sync_dir(&self.dir)
            .await
            .map_err(io_err("sync dir", &self.dir))?;
        let now = self.clock.now_ms();
        let mut st = self.state.borrow_mut();
        let chunk = take_chunk(&mut st.pool, &file, self.config().chunk_bytes);
        let writer = SegmentWriter::new(self.config().chunk_bytes, 0, &[], chunk);
        st.segments.insert(
            base_offset,
            Segment {
                file: Rc::new(file),
                path,
                base_offset,
                size: 0,
                written_size: 0,
                allocated: 0,
                zeroed: 0,
                next_offset: base_offset,
                max_timestamp: -1,
                created_ms: now,
                index: SparseIndex::new(self.config().index_interval_bytes),
                writer: Some(writer),
            },
        );
        st.window_start = 0;
        Ok(())
    }

    fn check_usable(&self) -> Result<(), LogError> {
        match &self.state.borrow().failed {
            Some(reason) => Err(LogError::Failed {
                dir: self.dir.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn fail(&self, reason: String) -> LogError {
        let mut st = self.state.borrow_mut();
        if st.failed.is_none() {
            tracing::error!(dir = %self.dir.display(), %reason, "log failed; no further appends will be acknowledged");
            st.failed = Some(reason.clone());
        }
        self.sync_waiters.wake_all(None);
        LogError::Failed {
            dir: self.dir.clone(),
            reason: st.failed.clone().expect("just set"),
        }
    }

    /// Appends one Kafka RecordBatch v2 (exactly one batch) in `term`. Assigns offsets by
    /// patching the batch's base offset and leader epoch. Resolves per `durability`.
    pub async fn append(
        &self,
        batch: BytesMut,
        term: u64,
        durability: Durability,
    ) -> Result<AppendResult, LogError> {
        self.append_with_index(batch, term, 0, durability).await
    }

    /// [`append`](Self::append) with a consensus index stored in the envelope.
    pub async fn append_with_index(
        &self,
        batch: BytesMut,
        term: u64,
        consensus_index: u64,
        durability: Durability,
    ) -> Result<AppendResult, LogError> {
        let results = self
            .append_many(vec![batch], term, consensus_index, durability)
            .await?;
        Ok(results[0])
    }

    /// Appends several batches back to back: all are validated before any is staged, they get
    /// consecutive offsets with nothing in between, and one durability wait covers them all.
    pub async fn append_many(
        &self,
        batches: Vec<BytesMut>,
        term: u64,
        consensus_index: u64,
        durability: Durability,
    ) -> Result<Vec<AppendResult>, LogError> {
        let results = self.stage_many(batches, term, consensus_index).await?;
        let end = results.last().expect("at least one").last_offset + 1;
        self.wait_durable(end, durability).await?;
        Ok(results)
    }

    /// The first half of [`append_many`](Self::append_many): validates, assigns offsets and
    /// stages the batches, and resolves as soon as their place in the log is fixed. Callers
    /// that must keep several appends in order (pipelined requests, idempotent producers) stage
    /// them one after another, then wait for durability concurrently with
    /// [`wait_durable`](Self::wait_durable), so one group commit covers them all.
    pub async fn stage_many(
        &self,
        batches: Vec<BytesMut>,
        term: u64,
        consensus_index: u64,
    ) -> Result<Vec<AppendResult>, LogError> {
        assert!(!batches.is_empty());
        let mut infos = Vec::with_capacity(batches.len());
        let mut frame_bytes = 0u64;
        for batch in &batches {
            if batch.len() > self.config().batch_bytes_max {
                return Err(LogError::BatchTooLarge {
                    size: batch.len(),
                    max: self.config().batch_bytes_max,
                });
            }
            infos.push(envelope::parse_kafka_batch(batch, true)?);
            frame_bytes += (HEADER_BYTES + batch.len()) as u64;
        }
        let guard = self.stage_lock.lock().await;
        self.check_usable()?;
        self.prepare_room(frame_bytes, term).await?;
        // The reservation may have awaited; a flush may have failed the log meanwhile.
        self.check_usable()?;
        let results: Vec<AppendResult> = batches
            .into_iter()
            .zip(infos)
            .map(|(batch, info)| self.stage(batch, info, term, consensus_index))
            .collect();
        drop(guard);
        Ok(results)
    }

    /// The second half of an append: waits until everything below `end_offset` is as durable
    /// as `durability` asks (written and fdatasync'd for `Fsync`).
    pub async fn wait_durable(
        &self,
        end_offset: i64,
        durability: Durability,
    ) -> Result<(), LogError> {
        match durability {
            Durability::Fsync => self.flush_to(end_offset, true).await,
            Durability::Write => self.flush_to(end_offset, false).await,
            Durability::Memory if self.staged_bytes() > self.config().staged_bytes_max => {
                self.flush_to(end_offset, false).await
            }
            Durability::Memory => Ok(()),
        }
    }

    fn staged_bytes(&self) -> usize {
        let st = self.state.borrow();
        st.segments
            .values()
            .filter_map(|s| s.writer.as_ref())
            .map(|w| w.dirty_bytes())
            .sum()
    }

    /// Rolls the active segment if this frame does not fit or it is too old, and reserves
    /// file space for the frame. Runs under the stage lock.
    async fn prepare_room(&self, frame_bytes: u64, term: u64) -> Result<(), LogError> {
        let (roll, next_offset) = {
            let st = self.state.borrow();
            let a = st.active();
            let too_big = a.size + frame_bytes > self.config().segment_bytes;
            let too_old = self.clock.now_ms() - a.created_ms >= self.config().segment_ms;
            (a.size > 0 && (too_big || too_old), st.next_offset)
        };
        if roll {
            self.roll(next_offset, term).await?;
        }
        let (file, size, allocated) = {
            let st = self.state.borrow();
            let a = st.active();
            (a.file.clone(), a.size, a.allocated)
        };
        if size + frame_bytes > allocated {
            let want = crate::storage::align_up(size + frame_bytes) + self.reserve_step();
            let want = want.min(self.segment_end(size + frame_bytes));
            // Reserve a step ahead; when the disk cannot hold the step, reserve just this frame
            // (a nearly full disk still takes what fits).
            let need = crate::storage::align_up(size + frame_bytes);
            let mut reserved = None;
            for target in [want, need] {
                if self.preallocate(&file, target).await? {
                    reserved = Some(target);
                    break;
                }
            }
            let Some(reserved) = reserved else {
                warn!(dir = %self.dir.display(), need, "no space for the batch; refusing it");
                return Err(LogError::NoSpace {
                    dir: self.dir.clone(),
                });
            };
            let mut st = self.state.borrow_mut();
            let active = st.active_mut();
            // `zero_ahead` may have reserved further meanwhile.
            active.allocated = active.allocated.max(reserved);
        }
        Ok(())
    }

    /// The step by which an append extends the reserve: `preallocate_bytes`, doubled for each
    /// reservation within a second of the last (a fast stream), up to
    /// [`PREALLOCATE_STEP_BYTES_MAX`]. So a stream reserves about a second of itself ahead and
    /// idles the disk for fewer fallocates, while a slow log keeps the small step (a broker has
    /// many of those, each holding its reserve until its segment rolls).
    fn reserve_step(&self) -> u64 {
        let base = self.config().preallocate_bytes;
        let now = self.clock.now_ms();
        let (last_ms, last_step) = self.reserve_pace.get();
        let step = if now.saturating_sub(last_ms) < 1000 {
            last_step
                .saturating_mul(2)
                .min(PREALLOCATE_STEP_BYTES_MAX)
                .max(base)
        } else {
            base
        };
        self.reserve_pace.set((now, step));
        step
    }

    /// Starts a new segment at `base_offset`; the old one is finalized by the next flush.
    async fn roll(&self, base_offset: i64, term: u64) -> Result<(), LogError> {
        self.create_segment(base_offset, term).await?;
        info!(dir = %self.dir.display(), base_offset, "rolled segment");
        Ok(())
    }

    /// The synchronous part of an append: offsets, patch, stage, index, cache.
    fn stage(
        &self,
        mut batch: BytesMut,
        mut info: envelope::KafkaBatchInfo,
        term: u64,
        consensus_index: u64,
    ) -> AppendResult {
        let mut st = self.state.borrow_mut();
        let base_offset = st.next_offset;
        let leader_epoch = i32::try_from(term).unwrap_or(i32::MAX);
        envelope::patch_kafka_batch(&mut batch, base_offset, leader_epoch);
        info.base_offset = base_offset;
        let payload = batch.freeze();
        let write_epoch = st.write_epoch;
        let epoch_start = st.window_start;
        let header = envelope::header_with_epoch(
            &info,
            payload.len(),
            term,
            consensus_index,
            write_epoch,
            epoch_start,
        );
        let header_bytes = envelope::encode_header(&header, &payload);
        let chunk_bytes = self.config().chunk_bytes;
        let LogState { segments, pool, .. } = &mut *st;
        let active = segments.values_mut().next_back().expect("active segment");
        let file = active.file.clone();
        let writer = active
            .writer
            .as_mut()
            .expect("the active segment has a writer");
        let mut take = || take_chunk(pool, &*file, chunk_bytes);
        writer.stage(&header_bytes, &mut take);
        writer.stage(&payload, &mut take);
        writer.mark_frame_end(header.next_offset());
        let frame_bytes = header.frame_bytes() as u64;
        active
            .index
            .note(base_offset, active.size, header.max_timestamp, frame_bytes);
        active.size += frame_bytes;
        active.next_offset = header.next_offset();
        active.max_timestamp = active.max_timestamp.max(header.max_timestamp);
        st.next_offset = header.next_offset();
        st.last_term = term;
        st.stats.appends += 1;
        let result = AppendResult {
            base_offset,
            last_offset: header.last_offset(),
            log_start_offset: st.log_start_offset,
        };
        drop(st);
        self.cache
            .borrow_mut()
            .insert(self.cache_id, StoredBatch { header, payload });
        result
    }

    /// Waits until everything below `offset` is written (and synced when `sync`).
    ///
    /// Group commit: one appender at a time flushes everything staged when it starts, under the
    /// flush lock, and the others queue for that lock in arrival order, so appenders that were
    /// served go on (stage their next batch) before the next flush starts and it takes more.
    ///
    /// A syncing flush that wrote at least `pipelined_sync_bytes` holds the lock only for its
    /// writes: it fdatasyncs after releasing it ([`PendingSync`]), so the next group's writes
    /// reach the disk while the device flushes this one's, and an appender whose bytes an issued
    /// fdatasync covers waits for that one. A smaller one fdatasyncs before releasing the lock.
    ///
    /// Streams of large batches (the last flush's batches averaged at least
    /// `streaming_batch_bytes`) are the exception for `Write` appenders: they park on
    /// `flush_waiters` instead, and at the end of the flush those whose bytes are still
    /// unwritten are woken first, so one of them issues the next flush before the served
    /// appenders (the flusher too) go on, and those first let that flush reach the disk
    /// ([`Storage::yield_to_io`]): the disk then writes while they copy their next batches in.
    /// Measured in docs/BENCHMARKS.md (issue 2, session 6). Such a flush writes only about half
    /// of what is outstanding: the staged frames up to the first frame end past half of what
    /// is staged plus what the last flush wrote, leaving the rest to the next flush. Without
    /// that budget, one disturbance (an fallocate holding up an append) locked an 8-appender
    /// stream for good into flushes of one batch and of the seven others, the single-batch ones
    /// writing at half the disk's pace: ~25% of the stream's bandwidth (issue 2, session 14).
    async fn flush_to(&self, offset: i64, sync: bool) -> Result<(), LogError> {
        loop {
            self.check_usable()?;
            if self.reached(offset, sync) {
                #[cfg(test)]
                self.flush_trace
                    .borrow_mut()
                    .push(FlushEvent::Return { offset });
                return Ok(());
            }
            if sync && self.sync_target.get() >= offset {
                self.sync_waiters.wait(offset).await;
                continue;
            }
            if !sync && self.streaming.get() && self.flush_lock.is_locked() {
                self.flush_waiters.wait(offset).await;
                if self.streaming.get() && self.reached(offset, false) {
                    self.storage.yield_to_io().await;
                }
                continue;
            }
            let flush = self.lock_flush().await;
            self.check_usable()?;
            // The flush this appender queued behind may have written its bytes and be
            // fdatasyncing them now.
            let covered = sync && self.sync_target.get() >= offset;
            let flushed = !self.reached(offset, sync) && !covered;
            let mut pending = None;
            if flushed {
                #[cfg(test)]
                self.flush_trace.borrow_mut().push(FlushEvent::Start);
                let (bytes_before, appends) = {
                    let st = self.state.borrow();
                    (st.stats.bytes_written, st.stats.appends)
                };
                let batches = appends - self.appends_flushed.replace(appends);
                if sync {
                    pending = Some(self.write_closing_epoch().await?);
                } else {
                    let last = self
                        .streaming
                        .get()
                        .then(|| self.streaming_flush_bytes.get());
                    self.flush_once(false, last).await?;
                }
                let wrote = self.state.borrow().stats.bytes_written - bytes_before;
                if !sync {
                    self.streaming_flush_bytes.set(wrote);
                }
                let streaming_bytes = self.config().streaming_batch_bytes * batches.max(1);
                self.streaming.set(!sync && wrote >= streaming_bytes);
                if wrote < self.config().pipelined_sync_bytes {
                    if let Some(pending) = pending.take() {
                        self.finish_sync(pending).await?;
                    }
                }
            }
            // An appender served while it queued for the lock hands over like the flusher.
            let handed_over = flush.release();
            if let Some(pending) = pending {
                self.finish_sync(pending).await?;
            }
            #[cfg(test)]
            if flushed {
                self.flush_trace.borrow_mut().push(FlushEvent::End {
                    written: self.state.borrow().written_offset,
                    handed_over,
                });
            }
            if handed_over {
                self.storage.yield_to_io().await;
            }
        }
    }

    /// What `flush_to` did so far, in order.
    #[cfg(test)]
    pub(crate) fn flush_trace(&self) -> Vec<FlushEvent> {
        self.flush_trace.borrow().clone()
    }

    /// Takes the flush lock; its release wakes the appenders parked in `flush_to`.
    async fn lock_flush(&self) -> FlushGuard<'_, S> {
        FlushGuard {
            log: self,
            guard: Some(self.flush_lock.lock().await),
        }
    }

    fn reached(&self, offset: i64, sync: bool) -> bool {
        let st = self.state.borrow();
        if sync {
            st.durable_offset >= offset
        } else {
            st.written_offset >= offset
        }
    }

    /// Writes everything staged now and, when `sync`, fdatasyncs before returning (the lock's
    /// holders that need the files settled: `close`, `truncate_suffix`). Runs under the flush
    /// lock. Segments that were rolled away are finalized first (written, synced, truncated),
    /// so a crash never leaves a torn sealed segment before valid data.
    ///
    /// With `last_bytes` (a streaming flush, given what the last one wrote), it writes the active
    /// segment's staged frames only up to the first frame end past half of what is staged plus
    /// `last_bytes` (see `flush_to`'s streams of large batches).
    async fn flush_once(&self, sync: bool, last_bytes: Option<u64>) -> Result<(), LogError> {
        self.state.borrow_mut().stats.flushes += 1;
        self.seal_rolled_segments().await?;
        let (active_base, target, limit) = {
            let mut st = self.state.borrow_mut();
            // Frames staged from now on belong to the next group commit. This runs with no
            // await before `write_segment` takes the staged bytes, so the flush writes exactly
            // the frames of the epoch it closes. Only a flush that syncs starts an epoch:
            // everything written since the last fdatasync is one epoch, since a power cut may
            // keep any of those writes and lose any other (recovery's torn-tail rule depends on
            // both; see recovery.rs).
            if sync {
                st.write_epoch += 1;
                // Nothing else writes while this flush holds the lock through its fdatasync,
                // which covers every earlier write (a group commit still fdatasyncing outside
                // the lock included), so the new epoch's frames reach the file only once the
                // older ones are durable.
                st.window_start = st.active().size;
            }
            let bound = last_bytes.and_then(|last| {
                let writer = st
                    .active()
                    .writer
                    .as_ref()
                    .expect("the active segment has a writer");
                writer.frame_end_after((writer.dirty_bytes() as u64 + last) / 2)
            });
            let (limit, target) = match bound {
                Some((limit, next_offset)) => (Some(limit), next_offset),
                None => (None, st.next_offset),
            };
            (
                *st.segments.keys().next_back().expect("active"),
                target,
                limit,
            )
        };
        self.write_segment(active_base, sync, limit).await?;
        let mut st = self.state.borrow_mut();
        st.written_offset = st.written_offset.max(target);
        if sync {
            st.durable_offset = st.durable_offset.max(target);
        }
        Ok(())
    }

    /// Writes, syncs and seals every segment rolled away from (appends may roll again
    /// meanwhile: repeats until none). Runs under the flush lock, so a crash never leaves a torn
    /// sealed segment before valid data.
    async fn seal_rolled_segments(&self) -> Result<(), LogError> {
        loop {
            let sealing: Vec<i64> = {
                let st = self.state.borrow();
                let active_base = *st.segments.keys().next_back().expect("active");
                st.segments
                    .iter()
                    .filter(|(b, s)| **b != active_base && s.writer.is_some())
                    .map(|(b, _)| *b)
                    .collect()
            };
            if sealing.is_empty() {
                break;
            }
            for base in sealing {
                self.write_segment(base, true, None).await?;
                self.seal_segment(base).await?;
            }
        }
        Ok(())
    }

    /// Issues one segment's dirty writes concurrently (those below file position `limit` only,
    /// a frame end, when given), then fdatasyncs when `sync`.
    async fn write_segment(
        &self,
        base: i64,
        sync: bool,
        limit: Option<u64>,
    ) -> Result<(), LogError> {
        // A log that failed meanwhile (an fdatasync outside the flush lock may have lost what it
        // covered) writes nothing more: a later segment's batches would land after a lost tail.
        self.check_usable()?;
        let (file, ops, size) = {
            let mut st = self.state.borrow_mut();
            let chunk_bytes = self.config().chunk_bytes;
            let pool_max = self.config().chunk_pool_max;
            let LogState { segments, pool, .. } = &mut *st;
            let Some(seg) = segments.get_mut(&base) else {
                return Ok(());
            };
            let file = seg.file.clone();
            let Some(writer) = seg.writer.as_mut() else {
                return Ok(());
            };
            let mut alloc = |n: usize| file.alloc_buffer(n);
            let mut recycle =
                |b: <S::File as StorageFile>::Buffer| recycle_chunk(pool, b, chunk_bytes, pool_max);
            let limit = limit.unwrap_or(u64::MAX);
            let ops = writer.take_writes_below(limit, &mut alloc, &mut recycle);
            (file, ops, seg.size.min(limit))
        };
        let path = file.path();
        let cancelled =
            FailIfCancelled::new(self, "a flush was cancelled with its writes in flight");
        let started = std::time::Instant::now();
        let results = futures::future::join_all(
            ops.iter()
                .map(|op| file.write_at(op.buf.clone(), op.position)),
        )
        .await;
        cancelled.disarm();
        if !ops.is_empty() {
            self.state
                .borrow_mut()
                .stats
                .write_latency
                .record(started.elapsed());
        }
        let mut written = 0u64;
        for (op, result) in ops.iter().zip(&results) {
            let want = op.buf.as_bytes().len();
            self.check_write("write", &path, op.position, want, result)?;
            written += want as u64;
        }
        self.return_chunks(ops);
        if sync {
            let started = std::time::Instant::now();
            if let Err(e) = file.fdatasync().await {
                return Err(self.fail(format!("fdatasync {}: {e}", path.display())));
            }
            let mut st = self.state.borrow_mut();
            st.stats.fdatasync_latency.record(started.elapsed());
        }
        let mut st = self.state.borrow_mut();
        st.stats.bytes_written += written;
        if let Some(seg) = st.segments.get_mut(&base) {
            seg.written_size = seg.written_size.max(size);
        }
        Ok(())
    }

    /// Fails the log unless a write of `want` bytes at `position` wrote them all. `what` names
    /// the write in the failure ("write", "zero write").
    fn check_write(
        &self,
        what: &str,
        path: &Path,
        position: u64,
        want: usize,
        result: &io::Result<usize>,
    ) -> Result<(), LogError> {
        match result {
            Ok(n) if *n == want => Ok(()),
            Ok(n) => Err(self.fail(format!(
                "short {what} to {} at {position}: {n} of {want}",
                path.display()
            ))),
            Err(e) => Err(self.fail(format!("{what} {} at {position}: {e}", path.display()))),
        }
    }

    fn return_chunks(&self, ops: Vec<WriteOp<<S::File as StorageFile>::Buffer>>) {
        let mut st = self.state.borrow_mut();
        for op in ops {
            if op.pooled {
                if let Ok(buf) = Rc::try_unwrap(op.buf) {
                    recycle_chunk(
                        &mut st.pool,
                        buf,
                        self.config().chunk_bytes,
                        self.config().chunk_pool_max,
                    );
                }
            }
        }
    }

    /// Cuts a written, synced, rolled-away segment to its logical size and drops its writer.
    async fn seal_segment(&self, base: i64) -> Result<(), LogError> {
        let (file, size) = {
            let st = self.state.borrow();
            let seg = &st.segments[&base];
            (seg.file.clone(), seg.size)
        };
        let path = file.path();
        if let Err(e) = file.truncate(size).await {
            return Err(self.fail(format!("truncate {}: {e}", path.display())));
        }
        if let Err(e) = file.fdatasync().await {
            return Err(self.fail(format!("fdatasync {}: {e}", path.display())));
        }
        let mut st = self.state.borrow_mut();
        let chunk = st
            .segments
            .get_mut(&base)
            .and_then(|s| s.writer.take())
            .and_then(|w| w.into_chunk());
        if let Some(chunk) = chunk {
            recycle_chunk(
                &mut st.pool,
                chunk,
                self.config().chunk_bytes,
                self.config().chunk_pool_max,
            );
        }
        st.segments.get_mut(&base).expect("present").allocated = size;
        Ok(())
    }

    /// Writes and fdatasyncs everything staged (for callers using `Durability::Memory`).
    pub async fn flush(&self) -> Result<(), LogError> {
        let end = self.log_end_offset();
        self.flush_to(end, true).await
    }

    /// Makes everything appended so far durable without holding appends up for the fdatasync:
    /// the periodic sync of `Write` and `Memory` durability (Kafka's `log.flush.interval.ms`,
    /// Redis's background fsync). A group commit like an `Fsync` appender's ([`PendingSync`]):
    /// it writes under the flush lock, then fdatasyncs with the lock released, so appends go on
    /// writing meanwhile. Returns at once when one is already running. A failed fdatasync fails
    /// the log, as on every path.
    pub async fn sync_behind_appends(&self) -> Result<(), LogError> {
        if self.syncing_behind.replace(true) {
            return Ok(());
        }
        struct Running<'a>(&'a Cell<bool>);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.set(false);
            }
        }
        let _running = Running(&self.syncing_behind);
        let pending = {
            let _flush = self.lock_flush().await;
            self.check_usable()?;
            self.write_closing_epoch().await?
        };
        self.finish_sync(pending).await
    }

    /// The first half of a group commit, under the flush lock: closes the write epoch and
    /// writes everything staged so far (segments rolled away from are sealed first).
    ///
    /// Frames staged from now on belong to the next epoch. This runs with no await between
    /// closing the epoch and `write_segment` taking the staged bytes, so the writes carry
    /// exactly the frames of the epoch they close. The unsynced window (`window_start`) stays
    /// at the oldest epoch not yet published durable, so frames staged while this epoch's
    /// fdatasync runs say that a power cut may find damage anywhere from there on, which
    /// recovery reads as the torn tail it is (recovery.rs).
    async fn write_closing_epoch(&self) -> Result<PendingSync<S::File>, LogError> {
        self.state.borrow_mut().stats.flushes += 1;
        self.seal_rolled_segments().await?;
        // Taken now: appends may roll to a new segment while the writes are in flight.
        let (base, file, target, next_window) = {
            let mut st = self.state.borrow_mut();
            st.write_epoch += 1;
            let base = *st.segments.keys().next_back().expect("active");
            (
                base,
                st.active().file.clone(),
                st.next_offset,
                st.active().size,
            )
        };
        self.write_segment(base, false, None).await?;
        let mut st = self.state.borrow_mut();
        st.written_offset = st.written_offset.max(target);
        let ticket = self.syncs_issued.get();
        self.syncs_issued.set(ticket + 1);
        self.sync_target.set(self.sync_target.get().max(target));
        Ok(PendingSync {
            ticket,
            file,
            base,
            target,
            next_window,
            truncations: st.suffix_truncations,
        })
    }

    /// The second half of a group commit, outside the flush lock: fdatasyncs, then publishes
    /// the durable end after every group commit issued before this one did (an fdatasync may
    /// return before an older one, whose failure must still stop this acknowledgement).
    async fn finish_sync(&self, pending: PendingSync<S::File>) -> Result<(), LogError> {
        let cancelled = FailIfCancelled::new(
            self,
            "a group commit was cancelled with its fdatasync in flight (later ones wait for it)",
        );
        let started = std::time::Instant::now();
        if let Err(e) = pending.file.fdatasync().await {
            cancelled.disarm();
            return Err(self.fail(format!("fdatasync {}: {e}", pending.file.path().display())));
        }
        self.state
            .borrow_mut()
            .stats
            .fdatasync_latency
            .record(started.elapsed());
        while self.syncs_published.get() != pending.ticket {
            if let Err(e) = self.check_usable() {
                cancelled.disarm();
                return Err(e);
            }
            self.sync_waiters.wait(pending.target).await;
        }
        cancelled.disarm();
        let result = self.check_usable();
        if result.is_ok() {
            let mut st = self.state.borrow_mut();
            // A `truncate_suffix` meanwhile may have put other batches at these offsets.
            if st.suffix_truncations == pending.truncations {
                st.durable_offset = st.durable_offset.max(pending.target);
                let active_base = *st.segments.keys().next_back().expect("active");
                if active_base == pending.base {
                    st.window_start = st.window_start.max(pending.next_window);
                }
            }
        }
        self.syncs_published.set(pending.ticket + 1);
        self.sync_waiters.wake_all(None);
        result
    }

    /// With `Durability::Memory`: more than half of `staged_bytes_max` is staged and no flush
    /// is running, so it is time for a background [`write_out`](Self::write_out), before an
    /// append reaches the limit and has to wait for the write itself.
    pub fn write_out_due(&self) -> bool {
        !self.flush_lock.is_locked() && self.staged_bytes() > self.config().staged_bytes_max / 2
    }

    /// Writes everything staged so far (no fdatasync): the background half of
    /// `Durability::Memory`.
    pub async fn write_out(&self) -> Result<(), LogError> {
        let end = self.log_end_offset();
        self.flush_to(end, false).await
    }

    /// Writes zeros over the active segment's file space ahead of its end, up to
    /// `zero_ahead_bytes` beyond it, reserving that space first when needed. Returns the bytes
    /// zeroed. The broker calls it on a timer; nothing in the append path depends on it.
    ///
    /// Why: fallocate reserves *unwritten* extents. The first write into each block converts its
    /// extent, and the next fdatasync must commit that change to the ext4 journal before it
    /// returns: a journal write and a second device flush on every group commit of a slow
    /// stream, and bulk commits that stall writes for tens of milliseconds (docs/decisions.md).
    /// Over zeroed blocks an append is a plain overwrite and an fdatasync a plain device flush.
    /// The reserve is extended here too, with no write of this log in flight (ext4 makes a
    /// fallocate wait for the file's direct I/O), so appends rarely reserve space themselves.
    ///
    /// Safety of the data: zeros go only above the page holding the log's last staged byte, and
    /// each zero write runs under the flush lock, which every write of batches also takes, so
    /// batches staged meanwhile reach the file after the zeros. Skipped (returns 0) while large
    /// batches stream in (the zeros would take half of their bandwidth), when appends consumed
    /// more than the whole lead since the last call (the zeros could never keep ahead), and when
    /// they consumed nothing.
    pub async fn zero_ahead(&self) -> Result<u64, LogError> {
        let ahead = crate::storage::align_up(self.config().zero_ahead_bytes);
        let consumed = {
            let st = self.state.borrow();
            let (base, size) = (st.active().base_offset, st.active().size);
            match self.zero_mark.replace((base, size)) {
                (marked, before) if marked == base => size.saturating_sub(before),
                _ => size,
            }
        };
        // A log that took no appends since the last call still has its lead (and one never
        // appended to may never be: `__consumer_offsets` has many such partitions).
        if ahead == 0 || consumed == 0 || consumed > ahead {
            return Ok(0);
        }
        let mut zeroed_now = 0;
        let mut zeros: Option<Rc<<S::File as StorageFile>::Buffer>> = None;
        let mut filling = false;
        while !self.streaming.get() {
            let _flush = self.lock_flush().await;
            if self.state.borrow().failed.is_some() {
                break;
            }
            let (file, base, start, limit) = {
                let st = self.state.borrow();
                let a = st.active();
                let end = crate::storage::align_up(a.size);
                (
                    a.file.clone(),
                    a.base_offset,
                    a.zeroed.max(end),
                    (end + ahead).min(self.segment_end(end)),
                )
            };
            // Top up only once half the lead is used, so the zeros go in fewer, larger steps.
            if start >= limit || (!filling && limit - start <= ahead / 2) {
                break;
            }
            filling = true;
            let Some(allocated) = self.reserve_for_zeros(&file, base, limit).await? else {
                break;
            };
            let end = limit.min(allocated).min(start + ZERO_WRITE_BYTES);
            if end <= start {
                break;
            }
            let len = usize::try_from(end - start).expect("at most ZERO_WRITE_BYTES");
            let buf = match &zeros {
                Some(buf) if buf.as_bytes().len() == len => Rc::clone(buf),
                _ => Rc::new(file.alloc_buffer(len)),
            };
            zeros.get_or_insert_with(|| Rc::clone(&buf));
            // One left in flight could land after a later write of batches there.
            let cancelled =
                FailIfCancelled::new(self, "zeroing ahead was cancelled with its write in flight");
            let result = file.write_at(buf, start).await;
            cancelled.disarm();
            self.check_write("zero write", &file.path(), start, len, &result)?;
            let mut st = self.state.borrow_mut();
            st.stats.bytes_zeroed += end - start;
            if let Some(seg) = st.segments.get_mut(&base) {
                seg.zeroed = seg.zeroed.max(end);
            }
            zeroed_now += end - start;
        }
        Ok(zeroed_now)
    }

    /// Extends segment `base`'s reserve to at least `limit` (one preallocation step beyond),
    /// for `zero_ahead`, under the flush lock; returns the reserve's end. None when the disk is
    /// full: appends then reserve (or refuse) for themselves.
    async fn reserve_for_zeros(
        &self,
        file: &S::File,
        base: i64,
        limit: u64,
    ) -> Result<Option<u64>, LogError> {
        let allocated = self
            .state
            .borrow()
            .segments
            .get(&base)
            .map_or(0, |s| s.allocated);
        if allocated >= limit {
            return Ok(Some(allocated));
        }
        let target = (limit + self.config().preallocate_bytes).min(self.segment_end(limit));
        if !self.preallocate(file, target).await? {
            return Ok(None);
        }
        let mut st = self.state.borrow_mut();
        let Some(seg) = st.segments.get_mut(&base) else {
            return Ok(None);
        };
        seg.allocated = seg.allocated.max(target);
        Ok(Some(seg.allocated))
    }

    /// Where a segment's file space ends: `segment_bytes`, or more for a segment that already
    /// holds `at_least` (one oversized batch), page-aligned.
    fn segment_end(&self, at_least: u64) -> u64 {
        crate::storage::align_up(self.config().segment_bytes.max(at_least))
    }

    /// Reserves file space up to `target` bytes, timed into the stats. False on ENOSPC (the
    /// caller decides); any other error fails the log.
    async fn preallocate(&self, file: &S::File, target: u64) -> Result<bool, LogError> {
        let started = std::time::Instant::now();
        let outcome = file.preallocate(target).await;
        self.state
            .borrow_mut()
            .stats
            .preallocate_latency
            .record(started.elapsed());
        match outcome {
            Ok(()) => Ok(true),
            Err(e) if is_enospc(&e) => Ok(false),
            Err(e) => Err(self.fail(format!("fallocate {}: {e}", file.path().display()))),
        }
    }

    /// Whole batches from the one holding `offset`, below `upto` (the high watermark), until
    /// `max_bytes` of payload; at least one batch when any is readable.
    pub async fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        upto: i64,
    ) -> Result<Vec<StoredBatch>, LogError> {
        let (start, end) = (self.log_start_offset(), self.log_end_offset());
        if offset < start || offset > end {
            return Err(LogError::OffsetOutOfRange { offset, start, end });
        }
        let upto = upto.min(end);
        if offset >= upto {
            return Ok(Vec::new());
        }
        if let Some(batches) = self
            .cache
            .borrow_mut()
            .read(self.cache_id, offset, max_bytes, upto)
        {
            return Ok(batches);
        }
        // Reads from disk see only completed writes.
        if !self.reached(upto, false) {
            self.flush_to(upto, false).await?;
        }
        self.read_from_disk(offset, max_bytes, upto).await
    }

    async fn read_from_disk(
        &self,
        offset: i64,
        max_bytes: usize,
        upto: i64,
    ) -> Result<Vec<StoredBatch>, LogError> {
        let mut offset = offset;
        loop {
            let found = {
                let st = self.state.borrow();
                st.segments.range(..=offset).next_back().map(|(_, s)| {
                    (
                        s.file.clone(),
                        s.index.position_for(offset),
                        s.written_size,
                        s.next_offset,
                    )
                })
            };
            let Some((file, position, readable, seg_next)) = found else {
                return Ok(Vec::new());
            };
            if offset >= seg_next {
                if seg_next >= upto || seg_next == self.log_end_offset() {
                    return Ok(Vec::new());
                }
                offset = seg_next;
                continue;
            }
            return self
                .read_segment(&file, position, readable, offset, max_bytes, upto)
                .await;
        }
    }

    async fn read_segment(
        &self,
        file: &S::File,
        mut position: u64,
        readable: u64,
        offset: i64,
        max_bytes: usize,
        upto: i64,
    ) -> Result<Vec<StoredBatch>, LogError> {
        let path = file.path();
        let mut out: Vec<StoredBatch> = Vec::new();
        let mut payload_bytes = 0usize;
        let window = max_bytes
            .saturating_add(HEADER_BYTES)
            .clamp(64 * 1024, 8 * 1024 * 1024);
        while position < readable {
            let len = usize::try_from((readable - position).min(window as u64)).expect("bounded");
            let bytes = file
                .read_at(position, len)
                .await
                .map_err(io_err("read", &path))?;
            let mut at = 0usize;
            loop {
                let rest = bytes.slice(at..);
                let header = match envelope::decode_header(&rest) {
                    Ok(h) => h,
                    Err(EnvelopeError::Truncated { .. }) if at > 0 => break,
                    Err(source) => return Err(self.corrupt(&path, position + at as u64, source)),
                };
                let frame = if rest.len() >= header.frame_bytes() {
                    rest.slice(..header.frame_bytes())
                } else if at == 0 {
                    // A frame larger than the window: read exactly it.
                    file.read_at(position, header.frame_bytes())
                        .await
                        .map_err(io_err("read", &path))?
                } else {
                    break;
                };
                let batch = self.checked_batch(&path, position + at as u64, frame)?;
                at += header.frame_bytes();
                if keep_batch(
                    &batch,
                    offset,
                    upto,
                    &mut out,
                    &mut payload_bytes,
                    max_bytes,
                ) {
                    return Ok(out);
                }
                if at >= bytes.len() {
                    break;
                }
            }
            position += at as u64;
        }
        Ok(out)
    }

    fn checked_batch(
        &self,
        path: &Path,
        position: u64,
        frame: Bytes,
    ) -> Result<StoredBatch, LogError> {
        match envelope::validate_frame(&frame) {
            Ok(header) => Ok(StoredBatch {
                header,
                payload: frame.slice(HEADER_BYTES..header.frame_bytes()),
            }),
            Err(source) => Err(self.corrupt(path, position, source)),
        }
    }

    fn corrupt(&self, path: &Path, position: u64, source: EnvelopeError) -> LogError {
        let e = LogError::Corrupt {
            path: path.to_path_buf(),
            position,
            source,
        };
        tracing::error!(error = %e, "corrupt data read back from disk");
        e
    }

    /// The base offset of the first batch whose max timestamp is at least `timestamp_ms`
    /// (`None` if there is none). Records before it inside that batch may be older.
    pub async fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<i64>, LogError> {
        let start = {
            let st = self.state.borrow();
            let seg = st
                .segments
                .values()
                .find(|s| s.max_timestamp >= timestamp_ms);
            seg.map(|s| {
                s.index
                    .offset_for_timestamp(timestamp_ms)
                    .unwrap_or(s.base_offset)
            })
        };
        let Some(mut offset) = start else {
            return Ok(None);
        };
        offset = offset.max(self.log_start_offset());
        let end = self.log_end_offset();
        while offset < end {
            let batches = self.read(offset, 1024 * 1024, end).await?;
            let Some(last) = batches.last() else { break };
            if let Some(b) = batches
                .iter()
                .find(|b| b.header.max_timestamp >= timestamp_ms)
            {
                return Ok(Some(b.header.base_offset.max(self.log_start_offset())));
            }
            offset = last.header.next_offset();
        }
        Ok(None)
    }

    /// Removes every batch at or after `offset` (a batch boundary). Consensus uses this when a
    /// follower's log diverges from the leader's.
    pub async fn truncate_suffix(&self, offset: i64) -> Result<(), LogError> {
        let _stage = self.stage_lock.lock().await;
        let _flush = self.lock_flush().await;
        self.check_usable()?;
        let (start, end) = (self.log_start_offset(), self.log_end_offset());
        if offset < start || offset > end {
            return Err(LogError::OffsetOutOfRange { offset, start, end });
        }
        if offset == end {
            return Ok(());
        }
        // Everything staged goes to disk first, so the cut happens on settled files.
        self.flush_once(true, None).await?;
        let (mut cut_base, mut cut_position) = self.boundary_position(offset).await?;
        let first = *self.state.borrow().segments.keys().next().expect("segment");
        // A cut at a segment's first batch removes that segment too (unless it is the first).
        let remove_from = if cut_position == 0 && cut_base != first {
            cut_base
        } else {
            cut_base + 1
        };
        let doomed: Vec<(i64, PathBuf)> = self
            .state
            .borrow()
            .segments
            .range(remove_from..)
            .map(|(b, s)| (*b, s.path.clone()))
            .collect();
        for (base, path) in &doomed {
            self.state.borrow_mut().segments.remove(base);
            self.storage
                .remove_file(path)
                .await
                .map_err(io_err("remove", path))?;
        }
        if remove_from == cut_base {
            let st = self.state.borrow();
            let (b, s) = st
                .segments
                .iter()
                .next_back()
                .expect("an earlier segment remains");
            (cut_base, cut_position) = (*b, s.size);
        }
        let file = self.state.borrow().segments[&cut_base].file.clone();
        let path = file.path();
        file.truncate(cut_position)
            .await
            .map_err(|e| self.fail(format!("truncate {}: {e}", path.display())))?;
        file.fdatasync()
            .await
            .map_err(|e| self.fail(format!("fdatasync {}: {e}", path.display())))?;
        self.storage
            .sync_dir(&self.dir)
            .await
            .map_err(io_err("sync dir", &self.dir))?;
        {
            let mut st = self.state.borrow_mut();
            let seg = st.segments.get_mut(&cut_base).expect("present");
            seg.size = cut_position;
            seg.written_size = cut_position;
            seg.allocated = cut_position;
            seg.zeroed = seg.zeroed.min(cut_position);
            seg.next_offset = offset;
            seg.index.truncate(offset);
            seg.writer = None;
            st.next_offset = offset;
            st.written_offset = offset;
            st.durable_offset = offset;
            st.suffix_truncations += 1;
        }
        // Group commits still fdatasyncing publish nothing now; appenders that waited for
        // them flush again.
        self.sync_target.set(self.sync_target.get().min(offset));
        self.sync_waiters.wake_all(None);
        self.cache.borrow_mut().remove_from(self.cache_id, offset);
        self.attach_writer().await?;
        let last_term = match self.log_start_offset() < offset {
            true => self
                .read(offset - 1, 1, offset)
                .await?
                .last()
                .map_or(0, |b| b.header.term),
            false => 0,
        };
        self.state.borrow_mut().last_term = last_term;
        info!(dir = %self.dir.display(), offset, "truncated log suffix");
        Ok(())
    }

    /// (segment base, byte position) of the batch starting at `offset`.
    async fn boundary_position(&self, offset: i64) -> Result<(i64, u64), LogError> {
        let (base, file, mut position, readable) = {
            let st = self.state.borrow();
            let (b, s) = st
                .segments
                .range(..=offset)
                .next_back()
                .expect("offset within the log");
            (
                *b,
                s.file.clone(),
                s.index.position_for(offset),
                s.written_size,
            )
        };
        if base == offset {
            return Ok((base, 0));
        }
        let path = file.path();
        while position < readable {
            let head = file
                .read_at(position, HEADER_BYTES)
                .await
                .map_err(io_err("read", &path))?;
            let header = envelope::decode_header(&head)
                .map_err(|source| self.corrupt(&path, position, source))?;
            if header.base_offset == offset {
                return Ok((base, position));
            }
            if header.base_offset > offset {
                break;
            }
            position += header.frame_bytes() as u64;
        }
        Err(LogError::NotBatchBoundary(offset))
    }

    /// Makes `offset` the new log start: whole segments below it are deleted, reads below it
    /// fail. The start is persisted.
    pub async fn truncate_prefix(&self, offset: i64) -> Result<RetentionOutcome, LogError> {
        self.check_usable()?;
        let offset = offset.min(self.log_end_offset());
        if offset <= self.log_start_offset() {
            return Ok(RetentionOutcome::default());
        }
        self.state.borrow_mut().log_start_offset = offset;
        self.write_start_offset(offset).await?;
        let doomed: Vec<i64> = {
            let st = self.state.borrow();
            let active = *st.segments.keys().next_back().expect("active");
            st.segments
                .values()
                .filter(|s| s.base_offset != active && s.next_offset <= offset)
                .map(|s| s.base_offset)
                .collect()
        };
        self.delete_segments(&doomed).await
    }

    /// Applies time and size retention now; never deletes the active segment.
    pub async fn apply_retention(&self) -> Result<RetentionOutcome, LogError> {
        self.check_usable()?;
        let now = self.clock.now_ms();
        let doomed: Vec<i64> = {
            let st = self.state.borrow();
            let active = *st.segments.keys().next_back().expect("active");
            let mut total: u64 = st.segments.values().map(|s| s.size).sum();
            let mut doomed = Vec::new();
            for s in st
                .segments
                .values()
                .filter(|s| s.base_offset != active && s.writer.is_none())
            {
                let expired = self
                    .config()
                    .retention_ms
                    .is_some_and(|ms| s.max_timestamp < now - ms);
                let oversize = self
                    .config()
                    .retention_bytes
                    .is_some_and(|max| total - s.size >= max);
                if !(expired || oversize) {
                    break;
                }
                total -= s.size;
                doomed.push(s.base_offset);
            }
            doomed
        };
        if let Some(&last) = doomed.last() {
            let new_start = self.state.borrow().segments[&last].next_offset;
            if new_start > self.log_start_offset() {
                self.state.borrow_mut().log_start_offset = new_start;
                self.write_start_offset(new_start).await?;
            }
        }
        self.delete_segments(&doomed).await
    }

    async fn delete_segments(&self, bases: &[i64]) -> Result<RetentionOutcome, LogError> {
        let mut outcome = RetentionOutcome::default();
        for base in bases {
            let removed = self.state.borrow_mut().segments.remove(base);
            let Some(seg) = removed else { continue };
            self.storage
                .remove_file(&seg.path)
                .await
                .map_err(io_err("remove", &seg.path))?;
            outcome.segments_deleted += 1;
            outcome.bytes_deleted += seg.size;
            info!(segment = %seg.path.display(), bytes = seg.size, "deleted segment");
        }
        if outcome.segments_deleted > 0 {
            self.storage
                .sync_dir(&self.dir)
                .await
                .map_err(io_err("sync dir", &self.dir))?;
            let start = self.log_start_offset();
            self.cache.borrow_mut().remove_below(self.cache_id, start);
        }
        Ok(outcome)
    }

    async fn write_start_offset(&self, offset: i64) -> Result<(), LogError> {
        let path = self.dir.join(START_OFFSET_FILE);
        let file = match self.storage.open(&path, OpenMode::Existing).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let f = self
                    .storage
                    .open(&path, OpenMode::CreateNew)
                    .await
                    .map_err(io_err("create", &path))?;
                self.storage
                    .sync_dir(&self.dir)
                    .await
                    .map_err(io_err("sync dir", &self.dir))?;
                f
            }
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let mut buf = file.alloc_buffer(crate::storage::IO_ALIGN_BYTES);
        let bytes = buf.as_bytes_mut();
        bytes[0..4].copy_from_slice(&START_OFFSET_MAGIC.to_le_bytes());
        bytes[4..12].copy_from_slice(&offset.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[0..12]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        file.write_at(Rc::new(buf), 0)
            .await
            .map_err(io_err("write", &path))?;
        file.fdatasync().await.map_err(io_err("fdatasync", &path))?;
        Ok(())
    }

    /// The persisted start offset, if the file exists and is intact (a torn one is ignored:
    /// falling back to the first segment exposes more data, never less).
    async fn read_start_offset(&self) -> Result<Option<i64>, LogError> {
        let path = self.dir.join(START_OFFSET_FILE);
        let file = match self.storage.open(&path, OpenMode::Existing).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let bytes = file.read_at(0, 16).await.map_err(io_err("read", &path))?;
        if bytes.len() < 16 || bytes[0..4] != START_OFFSET_MAGIC.to_le_bytes() {
            return Ok(None);
        }
        let crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4"));
        if crc != crc32c::crc32c(&bytes[0..12]) {
            warn!(path = %path.display(), "ignoring damaged start offset file");
            return Ok(None);
        }
        Ok(Some(i64::from_le_bytes(
            bytes[4..12].try_into().expect("8"),
        )))
    }

    /// Flushes, syncs and cuts every file to its logical size. The log is unusable afterwards.
    pub async fn close(&self) -> Result<(), LogError> {
        if self.closed.replace(true) {
            return Ok(());
        }
        let _stage = self.stage_lock.lock().await;
        let _flush = self.lock_flush().await;
        if self.state.borrow().failed.is_some() {
            self.cache.borrow_mut().remove_log(self.cache_id);
            let result = self.check_usable();
            self.close_files().await;
            return result;
        }
        self.flush_once(true, None).await?;
        // Group commits still fdatasyncing use the files; their appenders get their answer.
        while self.syncs_published.get() < self.syncs_issued.get() && self.check_usable().is_ok() {
            self.sync_waiters.wait(0).await;
        }
        self.check_usable()?;
        let active = *self
            .state
            .borrow()
            .segments
            .keys()
            .next_back()
            .expect("active");
        self.seal_segment(active).await?;
        self.state.borrow_mut().failed = Some("closed".into());
        self.cache.borrow_mut().remove_log(self.cache_id);
        self.close_files().await;
        Ok(())
    }

    /// Closes every segment file no reader still holds (the rest close when dropped).
    async fn close_files(&self) {
        let segments = std::mem::take(&mut self.state.borrow_mut().segments);
        for segment in segments.into_values() {
            if let Ok(file) = Rc::try_unwrap(segment.file) {
                if let Err(e) = file.close().await {
                    warn!(segment = %segment.path.display(), error = %e, "closing segment file");
                }
            }
        }
    }

    /// Deletes the whole log directory (topic deletion).
    pub async fn delete(self) -> Result<(), LogError> {
        let _stage = self.stage_lock.lock().await;
        let _flush = self.lock_flush().await;
        self.state.borrow_mut().failed = Some("deleted".into());
        self.close_files().await;
        self.cache.borrow_mut().remove_log(self.cache_id);
        self.storage
            .remove_dir_all(&self.dir)
            .await
            .map_err(io_err("remove dir", &self.dir))
    }

    /// The current configuration.
    pub fn config(&self) -> LogConfig {
        self.config.get()
    }

    /// Replaces the configuration (topic config changes). Chunk size changes apply to new
    /// segments only; retention applies at the next [`apply_retention`](Self::apply_retention).
    pub fn set_config(&self, config: LogConfig) {
        assert!(
            config.chunk_bytes > 0 && config.chunk_bytes as u64 % crate::storage::IO_ALIGN == 0
        );
        let mut config = config;
        config.chunk_bytes = self.config.get().chunk_bytes;
        self.config.set(config);
    }

    /// The first readable offset.
    pub fn log_start_offset(&self) -> i64 {
        self.state.borrow().log_start_offset
    }
    /// The offset the next batch gets.
    pub fn log_end_offset(&self) -> i64 {
        self.state.borrow().next_offset
    }
    /// Offsets below this are on disk (written, maybe not synced).
    pub fn written_end_offset(&self) -> i64 {
        self.state.borrow().written_offset
    }
    /// Offsets below this are covered by an fdatasync.
    pub fn durable_end_offset(&self) -> i64 {
        self.state.borrow().durable_offset
    }
    /// The term of the last batch (0 if empty).
    pub fn last_term(&self) -> u64 {
        self.state.borrow().last_term
    }
    /// Bytes held in segments.
    pub fn size_bytes(&self) -> u64 {
        self.state.borrow().segments.values().map(|s| s.size).sum()
    }
    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.state.borrow().segments.len()
    }
    /// Segment file names, oldest first.
    pub fn segment_names(&self) -> Vec<String> {
        self.state
            .borrow()
            .segments
            .values()
            .map(|s| s.file_name())
            .collect()
    }
    /// Counters.
    pub fn stats(&self) -> LogStats {
        self.state.borrow().stats
    }
    /// Why the log failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.state.borrow().failed.clone()
    }
    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Whether to stop after considering `batch` for a read.
fn keep_batch(
    batch: &StoredBatch,
    offset: i64,
    upto: i64,
    out: &mut Vec<StoredBatch>,
    bytes: &mut usize,
    max: usize,
) -> bool {
    if batch.header.next_offset() <= offset {
        return false;
    }
    if batch.header.base_offset >= upto {
        return true;
    }
    if !out.is_empty() && *bytes + batch.payload.len() > max {
        return true;
    }
    *bytes += batch.payload.len();
    out.push(batch.clone());
    *bytes >= max || batch.header.next_offset() >= upto
}

fn take_chunk<F: StorageFile>(
    pool: &mut Vec<F::Buffer>,
    file: &F,
    chunk_bytes: usize,
) -> F::Buffer {
    pool.pop().unwrap_or_else(|| file.alloc_buffer(chunk_bytes))
}

fn recycle_chunk<B: IoBuffer>(pool: &mut Vec<B>, buf: B, chunk_bytes: usize, pool_max: usize) {
    if buf.as_bytes().len() == chunk_bytes && pool.len() < pool_max {
        pool.push(buf);
    }
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
