//! Production storage: glommio files on io_uring, DMA (O_DIRECT) by default, or buffered through
//! the page cache ([`FileIo`]).
//!
//! Directory listing and directory fsync have no io_uring operation in glommio 0.9; they run on
//! glommio's blocking thread pool so the core never blocks (they happen at open, roll and
//! retention, not per append).

use super::{IoBuffer, OpenMode, Storage, StorageFile};
use bytes::Bytes;
use glommio::io::{BufferedFile, DmaBuffer, DmaFile, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Storage on the local file system through glommio's DMA files. Must be used inside a glommio
/// executor.
///
/// glommio 0.9 decides per device and per thread whether to use its I/O-poll ring by reading
/// the first block of the first DMA file it opens there. When that file is empty, the read
/// "succeeds" at end of file, glommio wrongly enables polled I/O, and every later read of real
/// data fails with EOPNOTSUPP on devices without poll queues (virtio here). So before the first
/// open on a device, [`prime_iopoll_probe`] opens a small non-empty file, making the probe see
/// the truth. See docs/decisions.md.
#[derive(Debug, Clone, Copy, Default)]
pub struct GlommioStorage {
    io: FileIo,
}

/// How [`GlommioStorage`] opens files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FileIo {
    /// O_DIRECT: a write completes once the device took it; the page cache is bypassed.
    #[default]
    Direct,
    /// Through the page cache: a write completes once the kernel holds the bytes (they survive
    /// the process, not a power cut, until an fdatasync), and the kernel writes them back later.
    /// Each write costs one copy into a plain buffer. For machines whose device writes stall
    /// (docs/decisions.md); every file of a store is opened the same way.
    Buffered,
}

impl GlommioStorage {
    /// Direct I/O (the default).
    pub const DIRECT: Self = Self { io: FileIo::Direct };
    /// Buffered I/O through the page cache.
    pub const BUFFERED: Self = Self {
        io: FileIo::Buffered,
    };

    /// A store whose files are opened for `io`.
    pub fn new(io: FileIo) -> Self {
        Self { io }
    }
}

/// An open file: a DMA file, or a buffered one.
#[derive(Debug)]
pub struct GlommioFile {
    file: Handle,
    path: PathBuf,
}

#[derive(Debug)]
enum Handle {
    Dma(DmaFile),
    /// glommio's file for the calls that may wait on the device (fdatasync, fallocate, reads of
    /// what the page cache lost), and a second descriptor of the same file for inline writes.
    Buffered {
        file: BufferedFile,
        inline: std::fs::File,
    },
}

/// Largest write to a buffered file made inline, by a `pwrite` on the core's own thread, rather
/// than through io_uring. ext4 takes no non-blocking buffered writes (`RWF_NOWAIT` gives
/// EOPNOTSUPP), so io_uring hands every one to an io-wq worker thread. That worker shares the
/// core's CPU, and a busy core runs out its scheduler slice before the worker gets the CPU back:
/// writes of a few KiB waited up to 5 ms for it (docs/BENCHMARKS.md, session 9). An inline write
/// is a copy into the page cache, a few µs per 4 KiB, with no thread hop. Larger writes, whose
/// copy would hold the core longer, still go through io_uring.
const INLINE_WRITE_BYTES_MAX: usize = 256 << 10;

impl IoBuffer for DmaBuffer {
    fn as_bytes(&self) -> &[u8] {
        DmaBuffer::as_bytes(self)
    }
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        DmaBuffer::as_bytes_mut(self)
    }
}

/// glommio's error as an `io::Error` that keeps the OS error code (its own conversion turns an
/// ENOSPC into an opaque message, and the log must tell a full disk from a failing one). The
/// log adds the operation and path itself.
fn os_error(error: glommio::GlommioError<()>) -> io::Error {
    match error {
        glommio::GlommioError::IoError(source)
        | glommio::GlommioError::EnhancedIoError { source, .. } => source,
        other => io::Error::from(other),
    }
}

/// Timers `yield_to_io` tries before it gives up yielding (each one normally waits).
const YIELD_TO_IO_TRIES: usize = 8;

/// Runs `future`; true when it was pending at least once (it yielded to the executor).
/// `futures_lite::future::poll_once` then `.await` is not the same: it polls again in the same
/// turn, by when a 1 µs timer may have expired, and the task never leaves the run queue (the
/// hand-over test then failed 34 runs in 40).
async fn waited<F: std::future::Future>(future: F) -> bool {
    let mut future = std::pin::pin!(future);
    let mut pending = false;
    std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
        std::task::Poll::Ready(_) => std::task::Poll::Ready(pending),
        std::task::Poll::Pending => {
            pending = true;
            std::task::Poll::Pending
        }
    })
    .await
}

async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> io::Result<R> + Send + 'static,
) -> io::Result<R> {
    glommio::executor().spawn_blocking(f).await
}

impl Storage for GlommioStorage {
    type File = GlommioFile;

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let dir = dir.to_path_buf();
        blocking(move || std::fs::create_dir_all(dir)).await
    }

    async fn open(&self, path: &Path, mode: OpenMode) -> io::Result<GlommioFile> {
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if mode == OpenMode::CreateNew {
            options.create_new(true);
        }
        let file = match self.io {
            FileIo::Direct => {
                if let Some(dir) = path.parent() {
                    prime_iopoll_probe(dir).await?;
                }
                Handle::Dma(options.dma_open(path).await.map_err(os_error)?)
            }
            FileIo::Buffered => {
                let file = options.buffered_open(path).await.map_err(os_error)?;
                let inline_path = path.to_path_buf();
                let inline = blocking(move || {
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(inline_path)
                })
                .await?;
                Handle::Buffered { file, inline }
            }
        };
        Ok(GlommioFile {
            file,
            path: path.to_path_buf(),
        })
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let dir = dir.to_path_buf();
        blocking(move || {
            let mut names = Vec::new();
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
            names.sort();
            Ok(names)
        })
        .await
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        glommio::io::remove(path).await.map_err(os_error)
    }

    async fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let dir = dir.to_path_buf();
        blocking(move || std::fs::remove_dir_all(dir)).await
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let dir = dir.to_path_buf();
        blocking(move || std::fs::File::open(dir)?.sync_all()).await
    }

    /// glommio 0.9 hands disk I/O to the kernel only between runs of its task queues (see
    /// docs/decisions.md, "Runtime"). A timer that has not yet expired takes this task off the
    /// run queue; once no task is runnable the executor submits, then the timer fires. A timer
    /// already expired at its first poll (this thread was descheduled in between) returns at
    /// once without yielding, so that case takes another one.
    async fn yield_to_io(&self) {
        for _ in 0..YIELD_TO_IO_TRIES {
            if waited(glommio::timer::sleep(std::time::Duration::from_micros(1))).await {
                return;
            }
        }
    }
}

thread_local! {
    static PRIMED_DEVICES: std::cell::RefCell<std::collections::BTreeSet<u64>> =
        const { std::cell::RefCell::new(std::collections::BTreeSet::new()) };
}

/// Makes glommio's per-thread iopoll probe for `dir`'s device read real data (see
/// [`GlommioStorage`]). Runs once per device and thread.
pub async fn prime_iopoll_probe(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir)?.dev();
    if PRIMED_DEVICES.with(|p| p.borrow().contains(&dev)) {
        return Ok(());
    }
    let probe = dir.join(format!(".rill-iopoll-probe-{}", std::process::id()));
    let probe_path = probe.clone();
    blocking(move || std::fs::write(probe_path, vec![0x5a; 4096])).await?;
    let opened = OpenOptions::new()
        .read(true)
        .dma_open(&probe)
        .await
        .map_err(os_error);
    if let Ok(file) = opened {
        let _ = file.close().await;
    }
    let _ = std::fs::remove_file(&probe);
    PRIMED_DEVICES.with(|p| p.borrow_mut().insert(dev));
    Ok(())
}

impl StorageFile for GlommioFile {
    type Buffer = DmaBuffer;

    fn alloc_buffer(&self, len: usize) -> DmaBuffer {
        // Aligned either way, so the log's staging works alike on both kinds of file.
        let mut buf = match &self.file {
            Handle::Dma(file) => file.alloc_dma_buffer(len),
            Handle::Buffered { .. } => glommio::allocate_dma_buffer(len),
        };
        buf.as_bytes_mut().fill(0);
        buf
    }

    async fn write_at(&self, buf: Rc<DmaBuffer>, pos: u64) -> io::Result<usize> {
        match &self.file {
            Handle::Dma(file) => file.write_rc_at(buf, pos).await.map_err(os_error),
            Handle::Buffered { inline, .. } if buf.as_bytes().len() <= INLINE_WRITE_BYTES_MAX => {
                use std::os::unix::fs::FileExt;
                inline.write_all_at(buf.as_bytes(), pos)?;
                Ok(buf.as_bytes().len())
            }
            // glommio's buffered write takes ownership of a Vec: one copy.
            Handle::Buffered { file, .. } => file
                .write_at(buf.as_bytes().to_vec(), pos)
                .await
                .map_err(os_error),
        }
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        let result = match &self.file {
            Handle::Dma(file) => file.read_at(pos, len).await,
            Handle::Buffered { file, .. } => file.read_at(pos, len).await,
        }
        .map_err(os_error)?;
        Ok(Bytes::copy_from_slice(&result))
    }

    async fn fdatasync(&self) -> io::Result<()> {
        match &self.file {
            Handle::Dma(file) => file.fdatasync().await,
            Handle::Buffered { file, .. } => file.fdatasync().await,
        }
        .map_err(os_error)
    }

    async fn preallocate(&self, len: u64) -> io::Result<()> {
        match &self.file {
            Handle::Dma(file) => file.pre_allocate(len, false).await,
            Handle::Buffered { file, .. } => file.pre_allocate(len, false).await,
        }
        .map_err(os_error)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        match &self.file {
            Handle::Dma(file) => file.truncate(len).await,
            Handle::Buffered { file, .. } => file.truncate(len).await,
        }
        .map_err(os_error)
    }

    async fn size(&self) -> io::Result<u64> {
        match &self.file {
            Handle::Dma(file) => file.file_size().await,
            Handle::Buffered { file, .. } => file.file_size().await,
        }
        .map_err(os_error)
    }

    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    async fn close(self) -> io::Result<()> {
        match self.file {
            Handle::Dma(file) => file.close().await,
            Handle::Buffered { file, .. } => file.close().await,
        }
        .map_err(os_error)
    }
}
