//! Crash recovery: walk a segment file, verify every frame, and classify what follows the last
//! valid one.
//!
//! Nothing on disk is trusted: every frame's envelope CRC and Kafka CRC are recomputed and base
//! offsets must be contiguous. Indexes are rebuilt from the walk.
//!
//! ## What we find after the last valid frame, and what we do
//!
//! | on disk after the last valid frame | outcome | why it is safe |
//! |---|---|---|
//! | nothing, or only zero bytes (preallocated space) | `Clean` | an orderly end |
//! | non-zero bytes, and no valid frame anywhere after them | `TornTail`: truncate | a write in flight when the power went; it was never acknowledged, since acknowledgement follows fdatasync and nothing was written after it |
//! | damage, then valid frames, each staged while the damage lay in the unsynced window (its `epoch_start` at or before the damage: its own write epoch's start, or the start of the oldest epoch a group commit was still fdatasyncing), no earlier epoch after the damage, and a hole: an all-zero sector inside the damaged range, or zeros from the damage to the end of its sector | `TornTail`: truncate (with a warning naming what was dropped) | the pages of the epochs not yet synced land in any order on a power cut; a hole (zero sector) inside them followed by frames staged while they were unsynced is the signature of a commit whose fdatasync never returned, so nothing in it was acknowledged as durable |
//! | damage, then any other valid frame | `InteriorDamage`: refuse to open, fence the log | acknowledged data may be damaged; truncating would silently lose it |
//!
//! The third row is a deliberate, narrow departure from "truncate only when nothing valid
//! follows"; see docs/decisions.md.

use crate::envelope::{self, EnvelopeError, EnvelopeHeader, FRAME_MAGIC, HEADER_BYTES};
use crate::storage::StorageFile;
use bytes::Bytes;
use std::io;

/// Bytes read per I/O while walking a segment.
const SCAN_WINDOW_BYTES: usize = 4 * 1024 * 1024;
/// Sector size for hole detection.
const SECTOR_BYTES: u64 = 512;
const SECTOR_LEN: usize = 512;
const _: () = assert!(SECTOR_BYTES == SECTOR_LEN as u64);

/// What recovery keeps of each valid frame (enough to rebuild the indexes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    /// Position of the frame in the segment.
    pub position: u64,
    /// The frame's header.
    pub header: EnvelopeHeader,
}

impl FrameMeta {
    /// Position just after the frame.
    pub fn end(&self) -> u64 {
        self.position + self.header.frame_bytes() as u64
    }
}

/// How a segment's walk ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanOutcome {
    /// Valid frames, then nothing or zeros.
    Clean,
    /// Valid frames, then a torn tail that is safe to cut at `valid_end`.
    TornTail {
        /// What the damage was.
        reason: String,
        /// Valid frames of the unacknowledged group commit found after the damage and dropped.
        dropped_frames: usize,
    },
    /// Damage followed by valid data: the log must be fenced.
    InteriorDamage {
        /// Position of the damage.
        position: u64,
        /// What the damage was.
        reason: String,
        /// Position of the first valid frame after the damage.
        next_valid_position: u64,
    },
}

/// The result of walking one segment.
#[derive(Debug, Clone)]
pub struct SegmentScan {
    /// Every valid frame, in order.
    pub frames: Vec<FrameMeta>,
    /// End of the last valid frame.
    pub valid_end: u64,
    /// The file's size.
    pub file_bytes: u64,
    /// How the walk ended.
    pub outcome: ScanOutcome,
}

/// A sequential reader over a file with a sliding window.
struct Window<'a, F: StorageFile> {
    file: &'a F,
    file_bytes: u64,
    start: u64,
    bytes: Bytes,
}

impl<'a, F: StorageFile> Window<'a, F> {
    fn new(file: &'a F, file_bytes: u64) -> Self {
        Window {
            file,
            file_bytes,
            start: 0,
            bytes: Bytes::new(),
        }
    }

    /// Bytes from `pos`, at least `need` of them when the file has them.
    async fn at(&mut self, pos: u64, need: usize) -> io::Result<&[u8]> {
        let end = self.start + self.bytes.len() as u64;
        if pos < self.start || pos + need as u64 > end {
            let len = need.max(SCAN_WINDOW_BYTES);
            let len =
                len.min(usize::try_from(self.file_bytes.saturating_sub(pos)).unwrap_or(usize::MAX));
            self.bytes = self.file.read_at(pos, len).await?;
            self.start = pos;
        }
        let from = usize::try_from(pos - self.start).expect("window offset fits");
        Ok(&self.bytes[from..])
    }
}

/// Reads and validates one frame at `pos`.
async fn frame_at<F: StorageFile>(
    w: &mut Window<'_, F>,
    pos: u64,
) -> io::Result<Result<EnvelopeHeader, EnvelopeError>> {
    let head = w.at(pos, HEADER_BYTES).await?;
    let header = match envelope::decode_header(head) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    let bytes = w.at(pos, header.frame_bytes()).await?;
    Ok(envelope::validate_frame(bytes))
}

/// Walks a segment whose first batch must start at `base_offset`.
pub async fn scan_segment<F: StorageFile>(file: &F, base_offset: i64) -> io::Result<SegmentScan> {
    let file_bytes = file.size().await?;
    let mut w = Window::new(file, file_bytes);
    let mut frames: Vec<FrameMeta> = Vec::new();
    let mut pos = 0u64;
    let mut expected = base_offset;
    let damage = loop {
        if pos >= file_bytes {
            break None;
        }
        match frame_at(&mut w, pos).await? {
            Ok(h) if h.base_offset == expected => {
                frames.push(FrameMeta {
                    position: pos,
                    header: h,
                });
                expected = h.next_offset();
                pos += h.frame_bytes() as u64;
            }
            Ok(h) => {
                break Some(format!(
                    "offset gap: expected {expected}, found {}",
                    h.base_offset
                ))
            }
            Err(e) => break Some(e.to_string()),
        }
    };
    let valid_end = pos;
    let outcome = match damage {
        None => ScanOutcome::Clean,
        Some(reason) => classify_tail(&mut w, &frames, valid_end, reason).await?,
    };
    Ok(SegmentScan {
        frames,
        valid_end,
        file_bytes,
        outcome,
    })
}

async fn classify_tail<F: StorageFile>(
    w: &mut Window<'_, F>,
    frames: &[FrameMeta],
    damage_at: u64,
    reason: String,
) -> io::Result<ScanOutcome> {
    let later = valid_frames_after(w, damage_at).await?;
    if later.is_empty() {
        if all_zero(w, damage_at).await? {
            return Ok(ScanOutcome::Clean);
        }
        return Ok(ScanOutcome::TornTail {
            reason,
            dropped_frames: 0,
        });
    }
    let first_later = later[0];
    let epoch = first_later.header.write_epoch;
    let earlier_max = frames.iter().map(|f| f.header.write_epoch).max();
    // Each later frame's `epoch_start` is where the unsynced window began when it was staged:
    // its own epoch's start, or (while a group commit's fdatasync ran outside the flush lock)
    // the start of the oldest epoch being synced. Damage at or after it is what a power cut leaves in flight.
    let in_window = later
        .iter()
        .all(|f| f.header.write_epoch >= epoch && f.header.epoch_start <= damage_at);
    let no_older_after = earlier_max.is_none_or(|e| e <= epoch);
    let hole = zeros_to_sector_end(w, damage_at, first_later.position).await?
        || has_zero_sector(w, damage_at, first_later.position).await?;
    if in_window && no_older_after && hole {
        return Ok(ScanOutcome::TornTail {
            reason,
            dropped_frames: later.len(),
        });
    }
    Ok(ScanOutcome::InteriorDamage {
        position: damage_at,
        reason,
        next_valid_position: first_later.position,
    })
}

/// Every position after `from` where a valid frame starts (found by its magic).
async fn valid_frames_after<F: StorageFile>(
    w: &mut Window<'_, F>,
    from: u64,
) -> io::Result<Vec<FrameMeta>> {
    let magic = FRAME_MAGIC.to_le_bytes();
    let mut found = Vec::new();
    let mut pos = from + 1;
    while pos + HEADER_BYTES as u64 <= w.file_bytes {
        let bytes = w.at(pos, HEADER_BYTES).await?;
        let Some(i) = memchr::memmem::find(bytes, &magic) else {
            // Keep the last 3 bytes: a magic may straddle the window edge.
            pos += (bytes.len().saturating_sub(3)).max(1) as u64;
            continue;
        };
        let candidate = pos + i as u64;
        if let Ok(h) = frame_at(w, candidate).await? {
            found.push(FrameMeta {
                position: candidate,
                header: h,
            });
            pos = candidate + h.frame_bytes() as u64;
        } else {
            pos = candidate + 1;
        }
    }
    Ok(found)
}

async fn all_zero<F: StorageFile>(w: &mut Window<'_, F>, from: u64) -> io::Result<bool> {
    let mut pos = from;
    while pos < w.file_bytes {
        let bytes = w.at(pos, 1).await?;
        if bytes.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        pos += bytes.len() as u64;
    }
    Ok(true)
}

/// True when the bytes from `from` to the end of its sector (or `to`) are all zero: a lost
/// rewrite of a tail page leaves the old page behind, whose bytes after the old end are zero, so
/// a frame that should start there has a zero magic. A flipped bit never zeroes a magic: every
/// byte of `RILB` is non-zero and none is a single bit, so even one zero byte at a frame's start
/// takes more than a flip (a frame ending 1 to 3 bytes before a sector boundary leaves that few).
async fn zeros_to_sector_end<F: StorageFile>(
    w: &mut Window<'_, F>,
    from: u64,
    to: u64,
) -> io::Result<bool> {
    let end = (from / SECTOR_BYTES + 1) * SECTOR_BYTES;
    let end = end.min(to);
    let n = usize::try_from(end - from).expect("below a sector");
    // Every magic byte has two or more bits set (so is non-zero and no single flip zeroes it).
    const _: () = {
        let magic = FRAME_MAGIC.to_le_bytes();
        let mut index = 0;
        while index < magic.len() {
            assert!(magic[index].count_ones() > 1);
            index += 1;
        }
    };
    if n == 0 {
        return Ok(false);
    }
    let bytes = w.at(from, n).await?;
    Ok(bytes.len() >= n && bytes[..n].iter().all(|&b| b == 0))
}

/// True when an aligned all-zero sector lies inside `[from, to)` or straddles `from` (a lost
/// write leaves the preallocated zeros behind; a flipped bit does not).
async fn has_zero_sector<F: StorageFile>(
    w: &mut Window<'_, F>,
    from: u64,
    to: u64,
) -> io::Result<bool> {
    let mut sector = from - from % SECTOR_BYTES;
    while sector + SECTOR_BYTES <= to {
        let bytes = w.at(sector, SECTOR_LEN).await?;
        let n = usize::try_from(SECTOR_BYTES).expect("small");
        if bytes.len() >= n && bytes[..n].iter().all(|&b| b == 0) {
            return Ok(true);
        }
        sector += SECTOR_BYTES;
    }
    Ok(false)
}
