//! An in-memory storage that knows what is durable, for deterministic fault tests.
//!
//! Every file keeps two images: `current` (what reads see) and `durable` (what survives a
//! crash). `fdatasync` makes durable the writes issued before it (not those that land while it
//! runs, as on a real disk). [`MemStorage::crash`] models a power cut: each
//! file falls back to its durable image plus a seeded prefix of the writes issued since, the last
//! of which may be torn at a 512-byte sector boundary. Files created since their directory was
//! last synced vanish.
//!
//! Faults come from [`FaultConfig`] and a seeded ChaCha RNG, so a failing seed reproduces:
//! EIO on write or fdatasync, torn writes (a prefix of sectors lands, then EIO), and ENOSPC when
//! the allocated bytes would exceed a capacity (which can be raised again, as when space is freed).

use super::{IoBuffer, OpenMode, Storage, StorageFile};
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

const SECTOR: usize = 512;

/// Fault probabilities (parts per million per operation) and limits.
#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    /// Seed of the fault RNG.
    pub seed: u64,
    /// Chance that a write fails with EIO having written nothing.
    pub write_eio_ppm: u32,
    /// Chance that a write lands only partly (a prefix of sectors) and then fails with EIO.
    pub write_torn_ppm: u32,
    /// Chance that an fdatasync fails with EIO. The writes it covered are then lost (the
    /// kernel drops the pages of a failed writeback; a failed device flush may lose its cache),
    /// so no later fdatasync makes them durable.
    pub fsync_eio_ppm: u32,
    /// Chance that a write, fdatasync or preallocation first yields to the executor, one to
    /// three times, so concurrent tasks interleave with I/O as they would on a real disk and
    /// operations complete out of issue order (deterministic under a FIFO executor).
    pub yield_ppm: u32,
    /// Total bytes the store may hold across files; writes and preallocations beyond it fail
    /// with ENOSPC. `None` means unlimited.
    pub capacity_bytes: Option<u64>,
}

/// Counters of what the store did, for tests to assert on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemStats {
    /// Successful writes.
    pub writes: u64,
    /// Successful fdatasyncs.
    pub fsyncs: u64,
    /// Faults injected (EIO, torn, ENOSPC).
    pub faults_injected: u64,
    /// Crashes simulated.
    pub crashes: u64,
}

#[derive(Debug, Default, Clone)]
struct FileData {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Writes and size changes since the last successful fdatasync, in issue order.
    unsynced: Vec<PendingOp>,
    /// Operations taken off the front of `unsynced` so far (made durable or lost): an
    /// fdatasync covers the ones issued before it, counted from here.
    synced_ops: usize,
}

#[derive(Debug, Clone)]
enum PendingOp {
    Write { pos: u64, data: Vec<u8> },
    SetLen(u64),
}

impl FileData {
    fn apply(image: &mut Vec<u8>, op: &PendingOp) {
        match op {
            PendingOp::Write { pos, data } => {
                let pos = usize::try_from(*pos).expect("in-memory file fits in memory");
                if image.len() < pos + data.len() {
                    image.resize(pos + data.len(), 0);
                }
                image[pos..pos + data.len()].copy_from_slice(data);
            }
            PendingOp::SetLen(len) => image.resize(
                usize::try_from(*len).expect("in-memory file fits in memory"),
                0,
            ),
        }
    }
}

#[derive(Debug)]
struct MemFs {
    files: BTreeMap<PathBuf, Rc<RefCell<FileData>>>,
    dirs: BTreeSet<PathBuf>,
    /// Files created since their directory was last synced.
    undurable_names: BTreeSet<PathBuf>,
    config: FaultConfig,
    rng: ChaCha8Rng,
    stats: MemStats,
    /// While set, every fdatasync waits after it was issued ([`MemStorage::hold_fdatasyncs`]).
    fdatasyncs_held: bool,
}

impl MemFs {
    fn roll(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.rng.gen_range(0..1_000_000u32) < ppm
    }

    fn allocated_bytes(&self) -> u64 {
        self.files
            .values()
            .map(|f| f.borrow().current.len() as u64)
            .sum()
    }

    /// ENOSPC check for growing a file from `old_len` to `new_len`.
    /// (Call before borrowing any file's data mutably.)
    fn check_space(&mut self, old_len: u64, new_len: u64) -> io::Result<()> {
        let Some(capacity) = self.config.capacity_bytes else {
            return Ok(());
        };
        if new_len > old_len && self.allocated_bytes() + (new_len - old_len) > capacity {
            self.stats.faults_injected += 1;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}

/// The in-memory store. Clones share the same file system.
#[derive(Debug, Clone)]
pub struct MemStorage {
    fs: Rc<RefCell<MemFs>>,
}

impl MemStorage {
    /// A store with the given faults.
    pub fn new(config: FaultConfig) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        let fs = MemFs {
            files: BTreeMap::new(),
            dirs: BTreeSet::new(),
            undurable_names: BTreeSet::new(),
            config,
            rng,
            stats: MemStats::default(),
            fdatasyncs_held: false,
        };
        MemStorage {
            fs: Rc::new(RefCell::new(fs)),
        }
    }

    /// A store without faults.
    pub fn reliable() -> Self {
        Self::new(FaultConfig::default())
    }

    /// While `held`, every fdatasync, once issued, waits (yielding to the executor) until it is
    /// released: a test can keep a group commit's fdatasync in flight and see what the log does
    /// meanwhile.
    pub fn hold_fdatasyncs(&self, held: bool) {
        self.fs.borrow_mut().fdatasyncs_held = held;
    }

    /// Replaces the fault configuration (keeps the RNG stream).
    pub fn set_faults(&self, config: FaultConfig) {
        self.fs.borrow_mut().config = config;
    }

    /// Counters so far.
    pub fn stats(&self) -> MemStats {
        self.fs.borrow().stats.clone()
    }

    /// Simulates a power cut: every file keeps its durable image plus a seeded prefix of the
    /// operations issued since, the last write possibly torn at a sector boundary. Open handles
    /// must not be used afterwards (open the log again).
    pub fn crash(&self) {
        let mut fs = self.fs.borrow_mut();
        fs.stats.crashes += 1;
        for name in std::mem::take(&mut fs.undurable_names) {
            fs.files.remove(&name);
        }
        let files: Vec<_> = fs.files.values().cloned().collect();
        for file in files {
            let replacement = {
                let mut f = file.borrow_mut();
                let mut image = f.durable.clone();
                let ops = std::mem::take(&mut f.unsynced);
                f.synced_ops += ops.len();
                let keep = fs.rng.gen_range(0..=ops.len());
                for (i, op) in ops.iter().take(keep).enumerate() {
                    let torn = i + 1 == keep && fs.rng.gen_bool(0.5);
                    match op {
                        PendingOp::Write { pos, data } if torn => {
                            let sectors = data.len().div_ceil(SECTOR);
                            let landed = fs.rng.gen_range(0..=sectors) * SECTOR;
                            let data = data[..landed.min(data.len())].to_vec();
                            FileData::apply(&mut image, &PendingOp::Write { pos: *pos, data });
                        }
                        _ => FileData::apply(&mut image, op),
                    }
                }
                image
            };
            let mut f = file.borrow_mut();
            f.current = replacement.clone();
            f.durable = replacement;
        }
    }

    /// Direct access for corruption tests: flips bits or rewrites bytes of a file's current and
    /// durable images.
    pub fn corrupt(&self, path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
        let fs = self.fs.borrow();
        let file = fs.files.get(path).expect("corrupting a file that exists");
        let mut f = file.borrow_mut();
        edit(&mut f.current);
        f.durable = f.current.clone();
        f.synced_ops += f.unsynced.len();
        f.unsynced.clear();
    }

    /// Paths of all files, sorted.
    pub fn file_paths(&self) -> Vec<PathBuf> {
        self.fs.borrow().files.keys().cloned().collect()
    }
}

/// An aligned in-memory buffer.
#[derive(Debug)]
pub struct MemBuffer(Vec<u8>);

impl IoBuffer for MemBuffer {
    fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// A handle to an in-memory file.
#[derive(Debug)]
pub struct MemFile {
    fs: Rc<RefCell<MemFs>>,
    data: Rc<RefCell<FileData>>,
    path: PathBuf,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl Storage for MemStorage {
    type File = MemFile;

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut fs = self.fs.borrow_mut();
        for ancestor in dir.ancestors() {
            fs.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    async fn open(&self, path: &Path, mode: OpenMode) -> io::Result<MemFile> {
        let mut fs = self.fs.borrow_mut();
        let parent = path.parent().unwrap_or(Path::new(""));
        if !fs.dirs.contains(parent) {
            return Err(not_found(parent));
        }
        let data = match (mode, fs.files.get(path)) {
            (OpenMode::CreateNew, Some(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    path.display().to_string(),
                ))
            }
            (OpenMode::CreateNew, None) => {
                let data = Rc::new(RefCell::new(FileData::default()));
                fs.files.insert(path.to_path_buf(), data.clone());
                fs.undurable_names.insert(path.to_path_buf());
                data
            }
            (OpenMode::Existing, Some(data)) => data.clone(),
            (OpenMode::Existing, None) => return Err(not_found(path)),
        };
        Ok(MemFile {
            fs: self.fs.clone(),
            data,
            path: path.to_path_buf(),
        })
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let fs = self.fs.borrow();
        if !fs.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let mut names: Vec<String> = fs
            .files
            .keys()
            .chain(fs.dirs.iter())
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.fs.borrow_mut();
        fs.undurable_names.remove(path);
        fs.files
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }

    async fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut fs = self.fs.borrow_mut();
        fs.files.retain(|p, _| !p.starts_with(dir));
        fs.dirs.retain(|p| !p.starts_with(dir));
        Ok(())
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut fs = self.fs.borrow_mut();
        fs.undurable_names.retain(|p| p.parent() != Some(dir));
        Ok(())
    }
}

impl MemFile {
    async fn maybe_yield(&self) {
        let yields = {
            let mut fs = self.fs.borrow_mut();
            let ppm = fs.config.yield_ppm;
            if fs.roll(ppm) {
                fs.rng.gen_range(1..=3)
            } else {
                0
            }
        };
        for _ in 0..yields {
            futures_lite::future::yield_now().await;
        }
    }
}

impl StorageFile for MemFile {
    type Buffer = MemBuffer;

    fn alloc_buffer(&self, len: usize) -> MemBuffer {
        MemBuffer(vec![0; len])
    }

    async fn write_at(&self, buf: Rc<MemBuffer>, pos: u64) -> io::Result<usize> {
        self.maybe_yield().await;
        assert_eq!(
            pos % super::IO_ALIGN,
            0,
            "unaligned direct-I/O write position"
        );
        assert_eq!(
            buf.0.len() as u64 % super::IO_ALIGN,
            0,
            "unaligned direct-I/O write length"
        );
        let mut fs = self.fs.borrow_mut();
        let old_len = self.data.borrow().current.len() as u64;
        fs.check_space(old_len, pos + buf.0.len() as u64)?;
        let mut data = self.data.borrow_mut();
        let ppm = fs.config.write_eio_ppm;
        if fs.roll(ppm) {
            fs.stats.faults_injected += 1;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let ppm = fs.config.write_torn_ppm;
        if fs.roll(ppm) {
            fs.stats.faults_injected += 1;
            let sectors = buf.0.len() / SECTOR;
            let landed = fs.rng.gen_range(0..sectors) * SECTOR;
            let op = PendingOp::Write {
                pos,
                data: buf.0[..landed].to_vec(),
            };
            FileData::apply(&mut data.current, &op);
            data.unsynced.push(op);
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let op = PendingOp::Write {
            pos,
            data: buf.0.clone(),
        };
        FileData::apply(&mut data.current, &op);
        data.unsynced.push(op);
        fs.stats.writes += 1;
        Ok(buf.0.len())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        let data = self.data.borrow();
        let start = usize::try_from(pos)
            .expect("in-memory file fits in memory")
            .min(data.current.len());
        let end = (start + len).min(data.current.len());
        Ok(Bytes::copy_from_slice(&data.current[start..end]))
    }

    async fn fdatasync(&self) -> io::Result<()> {
        // It covers what was written before it was issued, not what lands while it runs.
        let (issued_at, covered) = {
            let data = self.data.borrow();
            (data.synced_ops, data.unsynced.len())
        };
        while self.fs.borrow().fdatasyncs_held {
            futures_lite::future::yield_now().await;
        }
        self.maybe_yield().await;
        let mut fs = self.fs.borrow_mut();
        let ppm = fs.config.fsync_eio_ppm;
        let failed = fs.roll(ppm);
        let mut data = self.data.borrow_mut();
        // Another fdatasync that ran meanwhile may have taken some of them already.
        let covered = covered.saturating_sub(data.synced_ops - issued_at);
        let ops: Vec<PendingOp> = data.unsynced.drain(..covered).collect();
        data.synced_ops += covered;
        if failed {
            fs.stats.faults_injected += 1;
            // Lost: what reads see falls back to the durable image plus the later writes.
            let mut current = data.durable.clone();
            for op in &data.unsynced {
                FileData::apply(&mut current, op);
            }
            data.current = current;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        for op in &ops {
            FileData::apply(&mut data.durable, op);
        }
        fs.stats.fsyncs += 1;
        Ok(())
    }

    async fn preallocate(&self, len: u64) -> io::Result<()> {
        self.maybe_yield().await;
        let mut fs = self.fs.borrow_mut();
        let old_len = self.data.borrow().current.len() as u64;
        if len <= old_len {
            return Ok(());
        }
        fs.check_space(old_len, len)?;
        let mut data = self.data.borrow_mut();
        let op = PendingOp::SetLen(len);
        FileData::apply(&mut data.current, &op);
        data.unsynced.push(op);
        Ok(())
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        let mut data = self.data.borrow_mut();
        let op = PendingOp::SetLen(len);
        FileData::apply(&mut data.current, &op);
        data.unsynced.push(op);
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.data.borrow().current.len() as u64)
    }

    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    async fn close(self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    fn page(byte: u8) -> Rc<MemBuffer> {
        Rc::new(MemBuffer(vec![byte; 4096]))
    }

    #[test]
    fn unsynced_writes_may_vanish_synced_ones_never() {
        for seed in 0..50 {
            let store = MemStorage::new(FaultConfig {
                seed,
                ..Default::default()
            });
            block_on(async {
                store.create_dir_all(Path::new("/d")).await.unwrap();
                let f = store
                    .open(Path::new("/d/f"), OpenMode::CreateNew)
                    .await
                    .unwrap();
                store.sync_dir(Path::new("/d")).await.unwrap();
                f.write_at(page(1), 0).await.unwrap();
                f.fdatasync().await.unwrap();
                f.write_at(page(2), 4096).await.unwrap();
                store.crash();
                let f = store
                    .open(Path::new("/d/f"), OpenMode::Existing)
                    .await
                    .unwrap();
                let got = f.read_at(0, 8192).await.unwrap();
                assert!(got.len() >= 4096);
                assert!(
                    got[..4096].iter().all(|&b| b == 1),
                    "seed {seed}: synced page lost"
                );
                // The unsynced page is absent, torn (a sector prefix), or whole.
                let tail = &got[4096..];
                let landed = tail.iter().take_while(|&&b| b == 2).count();
                assert_eq!(landed % SECTOR, 0);
            });
        }
    }

    #[test]
    fn files_not_dir_synced_vanish_on_crash() {
        let store = MemStorage::reliable();
        block_on(async {
            store.create_dir_all(Path::new("/d")).await.unwrap();
            store
                .open(Path::new("/d/a"), OpenMode::CreateNew)
                .await
                .unwrap();
            store.sync_dir(Path::new("/d")).await.unwrap();
            store
                .open(Path::new("/d/b"), OpenMode::CreateNew)
                .await
                .unwrap();
            store.crash();
            assert_eq!(
                store.list_dir(Path::new("/d")).await.unwrap(),
                vec!["a".to_string()]
            );
        });
    }

    #[test]
    fn enospc_at_capacity_and_recovers_when_raised() {
        let store = MemStorage::new(FaultConfig {
            capacity_bytes: Some(8192),
            ..Default::default()
        });
        block_on(async {
            store.create_dir_all(Path::new("/d")).await.unwrap();
            let f = store
                .open(Path::new("/d/f"), OpenMode::CreateNew)
                .await
                .unwrap();
            f.write_at(page(1), 0).await.unwrap();
            f.write_at(page(1), 4096).await.unwrap();
            let err = f.write_at(page(1), 8192).await.unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
            store.set_faults(FaultConfig {
                capacity_bytes: Some(16384),
                ..Default::default()
            });
            f.write_at(page(1), 8192).await.unwrap();
        });
    }

    #[test]
    fn fault_sequence_is_deterministic_for_a_seed() {
        let run = |seed| {
            let store = MemStorage::new(FaultConfig {
                seed,
                write_eio_ppm: 300_000,
                ..Default::default()
            });
            block_on(async {
                store.create_dir_all(Path::new("/d")).await.unwrap();
                let f = store
                    .open(Path::new("/d/f"), OpenMode::CreateNew)
                    .await
                    .unwrap();
                let mut outcomes = Vec::new();
                for i in 0..64 {
                    outcomes.push(f.write_at(page(1), i * 4096).await.is_ok());
                }
                outcomes
            })
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        assert!(run(7).iter().any(|ok| !ok));
    }
}
