//! The per-core batch cache: recent batches of every log on the core, served to readers from
//! memory so tail reads never touch the disk (we do not rely on the page cache: files are
//! O_DIRECT).
//!
//! Bounded by `budget_bytes`; evicts in insertion order (the oldest appended batch first), which
//! for a log is the coldest data. Payloads are shared `Bytes`, so caching costs no copy.

use crate::envelope::{StoredBatch, HEADER_BYTES};
use ahash::AHashMap;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

/// The cache shared by all logs of one core.
pub type SharedBatchCache = Rc<RefCell<BatchCache>>;

/// Counters of the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads served from memory.
    pub hits: u64,
    /// Reads that went to disk.
    pub misses: u64,
    /// Bytes held now.
    pub bytes: usize,
    /// Batches evicted for room.
    pub evictions: u64,
}

/// See the module doc.
#[derive(Debug)]
pub struct BatchCache {
    budget_bytes: usize,
    used_bytes: usize,
    next_log_id: u64,
    logs: AHashMap<u64, BTreeMap<i64, StoredBatch>>,
    fifo: VecDeque<(u64, i64)>,
    stats: CacheStats,
}

fn cost(batch: &StoredBatch) -> usize {
    HEADER_BYTES + batch.payload.len()
}

impl BatchCache {
    /// A cache holding at most `budget_bytes`.
    pub fn new(budget_bytes: usize) -> Self {
        BatchCache {
            budget_bytes,
            used_bytes: 0,
            next_log_id: 1,
            logs: AHashMap::new(),
            fifo: VecDeque::new(),
            stats: CacheStats::default(),
        }
    }

    /// A shared cache for one core.
    pub fn shared(budget_bytes: usize) -> SharedBatchCache {
        Rc::new(RefCell::new(Self::new(budget_bytes)))
    }

    /// Registers a log and returns its id.
    pub fn register_log(&mut self) -> u64 {
        let id = self.next_log_id;
        self.next_log_id += 1;
        self.logs.insert(id, BTreeMap::new());
        id
    }

    /// Forgets a log entirely.
    pub fn remove_log(&mut self, log: u64) {
        if let Some(batches) = self.logs.remove(&log) {
            self.used_bytes -= batches.values().map(cost).sum::<usize>();
        }
        self.stats.bytes = self.used_bytes;
    }

    /// Adds a batch just appended to `log`.
    pub fn insert(&mut self, log: u64, batch: StoredBatch) {
        let size = cost(&batch);
        if size > self.budget_bytes {
            return;
        }
        let Some(batches) = self.logs.get_mut(&log) else {
            return;
        };
        let base = batch.header.base_offset;
        if let Some(old) = batches.insert(base, batch) {
            self.used_bytes -= cost(&old);
        }
        self.used_bytes += size;
        self.fifo.push_back((log, base));
        while self.used_bytes > self.budget_bytes {
            let Some((l, b)) = self.fifo.pop_front() else {
                break;
            };
            if let Some(removed) = self.logs.get_mut(&l).and_then(|m| m.remove(&b)) {
                self.used_bytes -= cost(&removed);
                self.stats.evictions += 1;
            }
        }
        self.stats.bytes = self.used_bytes;
    }

    /// Whole batches of `log` starting with the one that holds `offset`, below `upto`, until
    /// `max_bytes` of payload (at least one batch). `None` when the first batch is not cached.
    pub fn read(
        &mut self,
        log: u64,
        offset: i64,
        max_bytes: usize,
        upto: i64,
    ) -> Option<Vec<StoredBatch>> {
        let batches = self.logs.get(&log)?;
        let first = batches.range(..=offset).next_back().map(|(_, b)| b);
        let first = match first {
            Some(b) if b.header.next_offset() > offset => b,
            _ => {
                self.stats.misses += 1;
                return None;
            }
        };
        let mut out = vec![first.clone()];
        let mut bytes = first.payload.len();
        let mut next = first.header.next_offset();
        for (&base, batch) in batches.range(first.header.base_offset + 1..) {
            if base != next || base >= upto || bytes + batch.payload.len() > max_bytes {
                break;
            }
            bytes += batch.payload.len();
            next = batch.header.next_offset();
            out.push(batch.clone());
        }
        self.stats.hits += 1;
        Some(out)
    }

    /// Drops every batch of `log` at or after `offset` (suffix truncation).
    pub fn remove_from(&mut self, log: u64, offset: i64) {
        if let Some(batches) = self.logs.get_mut(&log) {
            let removed = batches.split_off(&offset);
            self.used_bytes -= removed.values().map(cost).sum::<usize>();
            // A batch that straddles `offset` goes too.
            if let Some((&base, b)) = batches.iter().next_back() {
                if b.header.next_offset() > offset {
                    let b = batches.remove(&base).expect("present");
                    self.used_bytes -= cost(&b);
                }
            }
        }
        self.stats.bytes = self.used_bytes;
    }

    /// Drops every batch of `log` wholly below `offset` (prefix truncation, retention).
    pub fn remove_below(&mut self, log: u64, offset: i64) {
        if let Some(batches) = self.logs.get_mut(&log) {
            let keep = batches.split_off(&offset);
            let dropped = std::mem::replace(batches, keep);
            for (base, b) in dropped {
                if b.header.next_offset() > offset {
                    batches.insert(base, b);
                } else {
                    self.used_bytes -= cost(&b);
                }
            }
        }
        self.stats.bytes = self.used_bytes;
    }

    /// Counters.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }
}
