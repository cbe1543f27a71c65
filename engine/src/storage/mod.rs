//! The storage seam: every file operation the engine performs goes through [`Storage`] and
//! [`StorageFile`].
//!
//! Two implementations: [`glommio_fs::GlommioStorage`] (files on io_uring, O_DIRECT by default: the
//! production one) and [`memory::MemStorage`] (an in-memory file system that models what is
//! durable, tears writes on a simulated crash, and injects EIO/ENOSPC deterministically from a
//! seed). Futures carry no `Send` bound: a storage instance lives on one core.
//!
//! Contract for writers: positions and lengths passed to [`StorageFile::write_at`] are multiples
//! of [`IO_ALIGN`]; buffers come from [`StorageFile::alloc_buffer`].

// The seam is thread-per-core: its futures are deliberately not `Send`.
#![allow(async_fn_in_trait)]

pub mod glommio_fs;
pub mod memory;

use bytes::Bytes;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Alignment of every direct-I/O write position and length.
pub const IO_ALIGN: u64 = 4096;
/// [`IO_ALIGN`] as a buffer length.
pub const IO_ALIGN_BYTES: usize = 4096;
const _: () = assert!(IO_ALIGN == IO_ALIGN_BYTES as u64);

/// Rounds `v` down to a multiple of [`IO_ALIGN`].
pub fn align_down(v: u64) -> u64 {
    v & !(IO_ALIGN - 1)
}

/// Rounds `v` up to a multiple of [`IO_ALIGN`].
pub fn align_up(v: u64) -> u64 {
    align_down(v + IO_ALIGN - 1)
}

/// A buffer suitable for direct I/O (aligned memory).
pub trait IoBuffer: 'static {
    /// The buffer's bytes.
    fn as_bytes(&self) -> &[u8];
    /// The buffer's bytes, writable.
    fn as_bytes_mut(&mut self) -> &mut [u8];
}

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create it; fail if it exists.
    CreateNew,
    /// Open an existing file for reading and writing.
    Existing,
}

/// A directory-level view of the storage.
pub trait Storage: Clone + 'static {
    /// The file type.
    type File: StorageFile;
    /// Creates a directory and its parents.
    async fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Opens (or creates) a file for reads and writes (direct I/O, unless the store says otherwise).
    async fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Self::File>;
    /// Names of the files directly inside `dir`, sorted.
    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Removes a file.
    async fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything under it.
    async fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Makes the directory's entries (created and removed files) durable.
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Returns once the runtime has handed the I/O queued so far to the kernel. A runtime that
    /// submits I/O at once (or a simulated store) returns at once: the default.
    async fn yield_to_io(&self) {}
}

/// One open file.
pub trait StorageFile: 'static {
    /// The direct-I/O buffer type.
    type Buffer: IoBuffer;
    /// Allocates an aligned buffer of `len` bytes (a multiple of [`IO_ALIGN`]), zeroed.
    fn alloc_buffer(&self, len: usize) -> Self::Buffer;
    /// Writes the whole buffer at `pos` (aligned). Returns bytes written.
    async fn write_at(&self, buf: Rc<Self::Buffer>, pos: u64) -> io::Result<usize>;
    /// Reads up to `len` bytes at `pos` (any alignment); shorter at the end of the file.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes>;
    /// Makes every completed write durable.
    async fn fdatasync(&self) -> io::Result<()>;
    /// Reserves space so the file can grow to `len` bytes; extends the visible size to `len`.
    async fn preallocate(&self, len: u64) -> io::Result<()>;
    /// Sets the file's size.
    async fn truncate(&self, len: u64) -> io::Result<()>;
    /// The file's size.
    async fn size(&self) -> io::Result<u64>;
    /// The file's path.
    fn path(&self) -> PathBuf;
    /// Closes the file now (rather than whenever the runtime gets to it after a drop).
    async fn close(self) -> io::Result<()>;
}
