//! One segment file: its sparse indexes and its appender.
//!
//! File names carry what recovery needs: `<base_offset:020>-<term>-v<format>.log`.
//!
//! ## The appender (hot path)
//! Frames are copied into 4 KiB-aligned chunks (`chunk_bytes`, pooled per log). A flush turns
//! the dirty range into writes: a chunk that filled up before any of it was written goes to disk
//! as it is (no copy); the partly written or partly filled chunks have only their aligned dirty
//! range copied into a fresh buffer, whose tail past the logical end is zero. The last page is
//! rewritten by the next flush (it still holds the bytes already written, so a torn rewrite
//! changes nothing that was acknowledged). On reopen the tail page is read back into the first
//! chunk so appends continue mid-page.

use crate::storage::{align_down, align_up, IoBuffer, StorageFile, IO_ALIGN};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;

/// Format version in segment file names.
pub const SEGMENT_FORMAT: u16 = 1;

/// The file name of a segment.
pub fn segment_file_name(base_offset: i64, term: u64) -> String {
    format!("{base_offset:020}-{term}-v{SEGMENT_FORMAT}.log")
}

/// Parses a segment file name into (base offset, term); `None` for other files.
pub fn parse_segment_file_name(name: &str) -> Option<(i64, u64)> {
    let stem = name.strip_suffix(&format!("-v{SEGMENT_FORMAT}.log"))?;
    let (base, term) = stem.split_once('-')?;
    Some((base.parse().ok()?, term.parse().ok()?))
}

/// Sparse offset→position and timestamp→offset indexes of one segment, kept in memory and
/// rebuilt from the data on recovery (never trusted from disk).
#[derive(Debug, Clone, Default)]
pub struct SparseIndex {
    /// (batch base offset, position), increasing.
    offsets: Vec<(i64, u64)>,
    /// (largest timestamp so far, base offset of the batch that reached it), increasing.
    times: Vec<(i64, i64)>,
    bytes_since_entry: u64,
    interval_bytes: u64,
}

impl SparseIndex {
    /// An empty index with an entry every `interval_bytes`.
    pub fn new(interval_bytes: u64) -> Self {
        SparseIndex {
            interval_bytes,
            ..Default::default()
        }
    }

    /// Notes a batch at `position` (called for every batch in order).
    pub fn note(&mut self, base_offset: i64, position: u64, max_timestamp: i64, frame_bytes: u64) {
        let due = self.offsets.is_empty() || self.bytes_since_entry >= self.interval_bytes;
        if due {
            self.offsets.push((base_offset, position));
            self.bytes_since_entry = 0;
        }
        if self.times.last().is_none_or(|&(t, _)| max_timestamp > t)
            && (due || self.times.is_empty())
        {
            self.times.push((max_timestamp, base_offset));
        }
        self.bytes_since_entry += frame_bytes;
    }

    /// Position of the last indexed batch with base offset at or below `offset` (0 if none).
    pub fn position_for(&self, offset: i64) -> u64 {
        match self.offsets.partition_point(|&(o, _)| o <= offset) {
            0 => 0,
            i => self.offsets[i - 1].1,
        }
    }

    /// An offset from which a scan finds the first batch whose max timestamp is at least `ts`:
    /// the batch before the first index entry reaching `ts`.
    pub fn offset_for_timestamp(&self, ts: i64) -> Option<i64> {
        let i = self.times.partition_point(|&(t, _)| t < ts);
        match i {
            0 => None,
            i => Some(self.times[i - 1].1),
        }
    }

    /// Drops entries at or after `offset`.
    pub fn truncate(&mut self, offset: i64) {
        self.offsets.retain(|&(o, _)| o < offset);
        self.times.retain(|&(_, o)| o < offset);
        self.bytes_since_entry = self.interval_bytes;
    }
}

/// A write the flush must issue.
pub(crate) struct WriteOp<B> {
    pub buf: Rc<B>,
    pub position: u64,
    /// A pooled chunk that goes back to the pool once written.
    pub pooled: bool,
}

struct FullChunk<B> {
    buf: B,
    position: u64,
    written: usize,
}

/// Staging of one segment's appends into aligned chunks.
pub(crate) struct SegmentWriter<B> {
    chunk_bytes: usize,
    active: Option<B>,
    active_position: u64,
    active_len: usize,
    active_written: usize,
    full: VecDeque<FullChunk<B>>,
    /// Where each staged frame not yet handed to a write ends (file position) and the offset
    /// after it, in order: the places a bounded flush may stop.
    frame_ends: VecDeque<(u64, i64)>,
}

impl<B: IoBuffer> SegmentWriter<B> {
    /// A writer whose next byte goes at `end`; `tail` holds the bytes of the file from
    /// `align_down(end)` to `end` (the partial last page), reloaded from disk.
    pub fn new(chunk_bytes: usize, end: u64, tail: &[u8], mut chunk: B) -> Self {
        assert_eq!(chunk_bytes as u64 % IO_ALIGN, 0);
        assert_eq!(chunk.as_bytes().len(), chunk_bytes);
        let active_position = align_down(end);
        let active_len = usize::try_from(end - active_position).expect("below a page");
        assert_eq!(tail.len(), active_len);
        chunk.as_bytes_mut()[..active_len].copy_from_slice(tail);
        SegmentWriter {
            chunk_bytes,
            active: Some(chunk),
            active_position,
            active_len,
            active_written: active_len,
            full: VecDeque::new(),
            frame_ends: VecDeque::new(),
        }
    }

    /// Bytes staged but not yet handed to a write.
    pub fn dirty_bytes(&self) -> usize {
        let full: usize = self.full.iter().map(|c| self.chunk_bytes - c.written).sum();
        full + self.active_len - self.active_written
    }

    /// Copies `bytes` into the chunks. `take_chunk` supplies empty chunks.
    pub fn stage(&mut self, mut bytes: &[u8], take_chunk: &mut impl FnMut() -> B) {
        while !bytes.is_empty() {
            let chunk = self.active.get_or_insert_with(&mut *take_chunk);
            let n = (self.chunk_bytes - self.active_len).min(bytes.len());
            chunk.as_bytes_mut()[self.active_len..self.active_len + n].copy_from_slice(&bytes[..n]);
            self.active_len += n;
            bytes = &bytes[n..];
            if self.active_len == self.chunk_bytes {
                let buf = self.active.take().expect("just filled");
                self.full.push_back(FullChunk {
                    buf,
                    position: self.active_position,
                    written: self.active_written,
                });
                self.active_position += self.chunk_bytes as u64;
                self.active_len = 0;
                self.active_written = 0;
            }
        }
    }

    /// Notes that a whole frame was staged, `next_offset` being the offset after it.
    pub fn mark_frame_end(&mut self, next_offset: i64) {
        let end = self.active_position + self.active_len as u64;
        self.frame_ends.push_back((end, next_offset));
    }

    /// The first file position where nothing staged has been handed to a write yet.
    fn dirty_start(&self) -> u64 {
        match self.full.front() {
            Some(chunk) => chunk.position + chunk.written as u64,
            None => self.active_position + self.active_written as u64,
        }
    }

    /// Where a flush that should write about `bytes` of what is staged stops: the end of the
    /// first staged frame at which at least `bytes` lie behind, or of the last one, with the
    /// offset after that frame. `None` when no whole frame is staged.
    pub fn frame_end_after(&self, bytes: u64) -> Option<(u64, i64)> {
        let start = self.dirty_start();
        self.frame_ends
            .iter()
            .find(|&&(end, _)| end.saturating_sub(start) >= bytes)
            .or(self.frame_ends.back())
            .copied()
    }

    /// Turns everything staged into writes of aligned ranges. `alloc` makes zeroed buffers;
    /// `recycle` takes back chunks that were copied rather than written.
    #[cfg(test)]
    pub fn take_writes(
        &mut self,
        alloc: &mut impl FnMut(usize) -> B,
        recycle: &mut impl FnMut(B),
    ) -> Vec<WriteOp<B>> {
        self.take_writes_below(u64::MAX, alloc, recycle)
    }

    /// [`take_writes`](Self::take_writes) of the staged bytes below file position `limit` only
    /// (a frame end, from [`frame_end_after`](Self::frame_end_after)): the page holding `limit`
    /// is written with zeros past it, and the next take rewrites it whole, as it does the last
    /// page of every take.
    pub fn take_writes_below(
        &mut self,
        limit: u64,
        alloc: &mut impl FnMut(usize) -> B,
        recycle: &mut impl FnMut(B),
    ) -> Vec<WriteOp<B>> {
        let mut ops = Vec::new();
        while let Some(chunk) = self.full.front_mut() {
            let end = chunk.position + self.chunk_bytes as u64;
            if limit >= end && chunk.written == 0 {
                let chunk = self.full.pop_front().expect("just seen");
                ops.push(WriteOp {
                    buf: Rc::new(chunk.buf),
                    position: chunk.position,
                    pooled: true,
                });
                continue;
            }
            if limit <= chunk.position + chunk.written as u64 {
                break;
            }
            let upto = usize::try_from(limit.min(end) - chunk.position).expect("within a chunk");
            ops.push(copy_range(
                &chunk.buf,
                chunk.position,
                chunk.written,
                upto,
                alloc,
            ));
            if upto < self.chunk_bytes {
                chunk.written = upto;
                break;
            }
            let chunk = self.full.pop_front().expect("just seen");
            recycle(chunk.buf);
        }
        if self.full.is_empty() && limit > self.active_position + self.active_written as u64 {
            let upto = usize::try_from((limit - self.active_position).min(self.active_len as u64))
                .expect("within a chunk");
            if upto > self.active_written {
                let chunk = self.active.as_ref().expect("dirty bytes live in a chunk");
                let (written, position) = (self.active_written, self.active_position);
                ops.push(copy_range(chunk, position, written, upto, alloc));
                self.active_written = upto;
            }
        }
        while self
            .frame_ends
            .front()
            .is_some_and(|&(end, _)| end <= limit)
        {
            self.frame_ends.pop_front();
        }
        ops
    }

    /// Gives back the active chunk (the writer is done).
    pub fn into_chunk(self) -> Option<B> {
        self.active
    }
}

/// A write of `chunk`'s bytes from the page holding `written` up to `upto` (chunk-relative),
/// copied into a fresh buffer whose tail past `upto` is zero.
fn copy_range<B: IoBuffer>(
    chunk: &B,
    position: u64,
    written: usize,
    upto: usize,
    alloc: &mut impl FnMut(usize) -> B,
) -> WriteOp<B> {
    let from = usize::try_from(align_down(written as u64)).expect("fits");
    let to = usize::try_from(align_up(upto as u64)).expect("fits");
    let mut buf = alloc(to - from);
    let dirty = &chunk.as_bytes()[from..upto];
    buf.as_bytes_mut()[..dirty.len()].copy_from_slice(dirty);
    debug_assert!(buf.as_bytes()[dirty.len()..].iter().all(|&b| b == 0));
    WriteOp {
        buf: Rc::new(buf),
        position: position + from as u64,
        pooled: false,
    }
}

/// One segment of a partition log.
pub(crate) struct Segment<F: StorageFile> {
    pub file: Rc<F>,
    pub path: PathBuf,
    pub base_offset: i64,
    /// Logical bytes (staged, whether or not written).
    pub size: u64,
    /// Bytes whose writes completed: readable from the file.
    pub written_size: u64,
    /// Bytes reserved with fallocate (the file's size while appending).
    pub allocated: u64,
    /// The file below this was written, with batches or with zeros by
    /// [`PartitionLog::zero_ahead`](crate::PartitionLog::zero_ahead): writes there overwrite
    /// written blocks (no unwritten-extent conversion for the next fdatasync to commit).
    /// 0 when unknown (a recovered segment).
    pub zeroed: u64,
    /// The offset after the last batch.
    pub next_offset: i64,
    /// Largest batch max timestamp, or -1.
    pub max_timestamp: i64,
    /// When the first batch was appended (roll by age), by the log's clock.
    pub created_ms: i64,
    pub index: SparseIndex,
    /// Present while the segment takes appends or awaits its final flush.
    pub writer: Option<SegmentWriter<F::Buffer>>,
}

impl<F: StorageFile> Segment<F> {
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string()
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test data sizes are small
mod tests {
    use super::*;
    use crate::storage::memory::MemBuffer;
    use crate::storage::{memory::MemStorage, OpenMode, Storage};
    use std::path::Path;

    fn chunk(n: usize) -> MemBuffer {
        let store = MemStorage::reliable();
        futures_lite::future::block_on(async {
            store.create_dir_all(Path::new("/x")).await.unwrap();
            let f = store
                .open(Path::new("/x/f"), OpenMode::CreateNew)
                .await
                .unwrap();
            f.alloc_buffer(n)
        })
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_file_name(42, 3), "00000000000000000042-3-v1.log");
        assert_eq!(
            parse_segment_file_name("00000000000000000042-3-v1.log"),
            Some((42, 3))
        );
        assert_eq!(parse_segment_file_name("start.offset"), None);
        assert_eq!(parse_segment_file_name("x-3-v1.log"), None);
    }

    /// Applies writes to a flat image, as the disk would.
    fn apply(image: &mut Vec<u8>, ops: &[WriteOp<MemBuffer>]) {
        for op in ops {
            let pos = op.position as usize;
            assert_eq!(pos % 4096, 0);
            assert_eq!(op.buf.as_bytes().len() % 4096, 0);
            if image.len() < pos + op.buf.as_bytes().len() {
                image.resize(pos + op.buf.as_bytes().len(), 0);
            }
            image[pos..pos + op.buf.as_bytes().len()].copy_from_slice(op.buf.as_bytes());
        }
    }

    proptest::proptest! {
        #[test]
        fn staged_bytes_reach_the_image_exactly(
            sizes in proptest::collection::vec(1usize..40_000, 1..40),
            flush_every in 1usize..6,
        ) {
            let chunk_bytes = 16 * 1024;
            let mut writer = SegmentWriter::new(chunk_bytes, 0, &[], chunk(chunk_bytes));
            let mut expected = Vec::new();
            let mut image = Vec::new();
            let mut alloc = |n| chunk(n);
            let mut take = || chunk(chunk_bytes);
            for (i, size) in sizes.iter().enumerate() {
                let data: Vec<u8> = (0..*size).map(|j| ((i * 7 + j) % 251) as u8 + 1).collect();
                writer.stage(&data, &mut take);
                expected.extend_from_slice(&data);
                if i % flush_every == 0 {
                    let ops = writer.take_writes(&mut alloc, &mut |_| {});
                    apply(&mut image, &ops);
                    proptest::prop_assert_eq!(&image[..expected.len()], &expected[..]);
                    proptest::prop_assert!(image[expected.len()..].iter().all(|&b| b == 0));
                }
            }
            let ops = writer.take_writes(&mut alloc, &mut |_| {});
            apply(&mut image, &ops);
            proptest::prop_assert_eq!(&image[..expected.len()], &expected[..]);
            proptest::prop_assert_eq!(writer.dirty_bytes(), 0);
        }
    }

    proptest::proptest! {
        /// Bounded takes write exactly the frames up to the chosen frame end, zeros past it, and
        /// leave the rest staged for the next take.
        #[test]
        fn bounded_takes_stop_at_frame_ends(
            steps in proptest::collection::vec((1usize..40_000, 0u64..100_000, proptest::bool::ANY), 1..40),
        ) {
            let chunk_bytes = 16 * 1024;
            let mut writer = SegmentWriter::new(chunk_bytes, 0, &[], chunk(chunk_bytes));
            let (mut expected, mut image, mut ends) = (Vec::new(), Vec::new(), Vec::new());
            let mut alloc = |n| chunk(n);
            let mut take = || chunk(chunk_bytes);
            let mut written = 0u64;
            for (i, &(size, budget, flush)) in steps.iter().enumerate() {
                let data: Vec<u8> = (0..size).map(|j| ((i * 7 + j) % 251) as u8 + 1).collect();
                writer.stage(&data, &mut take);
                expected.extend_from_slice(&data);
                writer.mark_frame_end(i as i64 + 1);
                ends.push(expected.len() as u64);
                if !flush {
                    continue;
                }
                let (limit, next) = writer.frame_end_after(budget).expect("a frame is staged");
                // The first frame end at least `budget` past what was written, or the last.
                let want = ends
                    .iter()
                    .position(|&e| e > written && e - written >= budget)
                    .unwrap_or(ends.len() - 1);
                proptest::prop_assert_eq!((limit, next), (ends[want], want as i64 + 1));
                let ops = writer.take_writes_below(limit, &mut alloc, &mut |_| {});
                apply(&mut image, &ops);
                let limit = usize::try_from(limit).unwrap();
                proptest::prop_assert_eq!(&image[..limit], &expected[..limit]);
                proptest::prop_assert!(image[limit..].iter().all(|&b| b == 0));
                proptest::prop_assert_eq!(writer.dirty_bytes(), expected.len() - limit);
                written = limit as u64;
            }
            let ops = writer.take_writes(&mut alloc, &mut |_| {});
            apply(&mut image, &ops);
            proptest::prop_assert_eq!(&image[..expected.len()], &expected[..]);
            proptest::prop_assert_eq!(writer.dirty_bytes(), 0);
            proptest::prop_assert_eq!(writer.frame_end_after(0), None);
        }
    }

    #[test]
    fn reopened_writer_rewrites_the_tail_page() {
        let chunk_bytes = 8192;
        let tail = vec![7u8; 100];
        let mut writer = SegmentWriter::new(chunk_bytes, 4096 + 100, &tail, chunk(chunk_bytes));
        writer.stage(&[9u8; 10], &mut || chunk(chunk_bytes));
        let ops = writer.take_writes(&mut |n| chunk(n), &mut |_| {});
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].position, 4096);
        assert_eq!(&ops[0].buf.as_bytes()[..100], &tail[..]);
        assert_eq!(&ops[0].buf.as_bytes()[100..110], &[9u8; 10]);
    }

    #[test]
    fn index_lookups() {
        let mut index = SparseIndex::new(1000);
        for i in 0..10 {
            index.note(i * 10, i as u64 * 600, 1000 + i, 600);
        }
        assert_eq!(index.position_for(0), 0);
        assert_eq!(index.position_for(35), 2 * 600);
        assert_eq!(index.position_for(95), 8 * 600);
        assert_eq!(index.offset_for_timestamp(999), None);
        assert_eq!(index.offset_for_timestamp(1005), Some(40));
    }
}
