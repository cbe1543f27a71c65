//! Kafka framing: a 4-byte big-endian size, then that many bytes of request or response.
//!
//! The size is checked against [`FrameLimits::frame_bytes_max`] before any buffer is allocated, so a
//! hostile prefix cannot make us reserve gigabytes. A bad prefix is a [`FrameError`]; the caller
//! closes the connection (there is no way to resynchronise a byte stream with broken framing).
//!
//! [`read_frame_timed`] reads under the two clocks a broker needs against slow or silent peers: an idle
//! limit between frames and a deadline for completing a frame once its first byte arrived (a
//! slow-loris client trickling one byte at a time hits the second). The body buffer grows as bytes
//! arrive, so an announced size costs memory only once it is actually sent.

use std::future::Future;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt};
use thiserror::Error;

/// Bytes of the size prefix.
pub const FRAME_PREFIX_BYTES: usize = 4;
/// Smallest valid request: api key (2), api version (2), correlation id (4).
pub const REQUEST_FRAME_BYTES_MIN: usize = 8;
/// Default largest request frame, as Kafka's `socket.request.max.bytes` (100 MiB).
pub const FRAME_BYTES_MAX_DEFAULT: usize = 100 * 1024 * 1024;
/// Default idle limit between requests, as Kafka's `connections.max.idle.ms` (10 minutes).
pub const IDLE_MS_DEFAULT: u64 = 600_000;
/// Default time a client gets to send a whole request once it started one, in milliseconds.
pub const FRAME_COMPLETE_MS_DEFAULT: u64 = 30_000;
/// Largest step by which a frame's body buffer grows while its bytes arrive.
pub const BODY_GROWTH_BYTES_MAX: usize = 1024 * 1024;

/// How long a peer may stay silent, and how long it may take over one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTimeouts {
    /// Longest silence before the first byte of a frame.
    pub idle: Duration,
    /// Longest time from a frame's first byte to its last.
    pub complete: Duration,
}

impl Default for FrameTimeouts {
    fn default() -> Self {
        Self { idle: Duration::from_millis(IDLE_MS_DEFAULT), complete: Duration::from_millis(FRAME_COMPLETE_MS_DEFAULT) }
    }
}

/// Limits applied while reading frames.
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    /// Largest frame accepted, in bytes, excluding the 4-byte prefix.
    pub frame_bytes_max: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self { frame_bytes_max: FRAME_BYTES_MAX_DEFAULT }
    }
}

/// Why a frame could not be read.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The size prefix is negative, too small for a request header, or above the limit.
    #[error("frame size {size} outside [{min}, {max}] bytes")]
    InvalidSize {
        /// The announced size.
        size: i64,
        /// Smallest accepted.
        min: usize,
        /// Largest accepted.
        max: usize,
    },
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed mid-frame after {read} of {expected} bytes")]
    Truncated {
        /// Bytes received.
        read: usize,
        /// Bytes announced.
        expected: usize,
    },
    /// No frame started within the idle limit.
    #[error("idle for {0:?} between requests")]
    Idle(Duration),
    /// A frame was started but not completed within the deadline (a slow or stalled sender).
    #[error("request not completed within {limit:?}: {read} of {expected} bytes received")]
    TooSlow {
        /// The deadline.
        limit: Duration,
        /// Bytes received, prefix included.
        read: usize,
        /// Bytes announced, prefix included (0 while the prefix itself is incomplete).
        expected: usize,
    },
    /// Socket error.
    #[error("socket error reading frame: {0}")]
    Io(#[from] std::io::Error),
}

/// Validate a size prefix. Pure, so fuzzing and unit tests cover it without sockets.
pub fn frame_size(prefix: [u8; FRAME_PREFIX_BYTES], limits: FrameLimits) -> Result<usize, FrameError> {
    let size = i32::from_be_bytes(prefix);
    let invalid = || FrameError::InvalidSize {
        size: i64::from(size),
        min: REQUEST_FRAME_BYTES_MIN,
        max: limits.frame_bytes_max,
    };
    let size = usize::try_from(size).map_err(|_| invalid())?;
    if size < REQUEST_FRAME_BYTES_MIN || size > limits.frame_bytes_max {
        return Err(invalid());
    }
    Ok(size)
}

/// Read one frame under `timeouts`, with `sleep` as the runtime's timer. Once the size is known
/// and valid, `admit(size)` runs before any body byte is read or buffered: the caller's memory
/// budget waits there (untimed: the wait is the broker's, not the peer's), and its result comes
/// back with the frame. `Ok(None)` when the peer closed the connection cleanly between frames.
pub async fn read_frame_timed<R, S, F, A, AF, P>(
    reader: &mut R,
    limits: FrameLimits,
    timeouts: FrameTimeouts,
    sleep: S,
    admit: A,
) -> Result<Option<(Bytes, P)>, FrameError>
where
    R: AsyncRead + Unpin,
    S: Fn(Duration) -> F,
    F: Future<Output = ()>,
    A: FnOnce(usize) -> AF,
    AF: Future<Output = P>,
{
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    let first = futures_lite::future::or(async { Some(reader.read(&mut prefix).await) }, async {
        sleep(timeouts.idle).await;
        None
    })
    .await;
    let read = match first {
        None => return Err(FrameError::Idle(timeouts.idle)),
        Some(read) => read?,
    };
    if read == 0 {
        return Ok(None);
    }
    let mut progress = Progress::default();
    let too_slow = |progress: &Progress| FrameError::TooSlow {
        limit: timeouts.complete,
        read: progress.read,
        expected: progress.expected,
    };
    let size = futures_lite::future::or(async { Some(finish_prefix(reader, limits, prefix, read, &mut progress).await) }, async {
        sleep(timeouts.complete).await;
        None
    })
    .await;
    let size = match size {
        Some(size) => size?,
        None => return Err(too_slow(&progress)),
    };
    let admitted = admit(size).await;
    let body = futures_lite::future::or(async { Some(read_body(reader, size, &mut progress).await) }, async {
        sleep(timeouts.complete).await;
        None
    })
    .await;
    match body {
        Some(body) => Ok(Some((body?, admitted))),
        None => Err(too_slow(&progress)),
    }
}

/// How far a frame got, for the error of one that missed its deadline.
#[derive(Debug, Default)]
struct Progress {
    read: usize,
    expected: usize,
}

/// Finish a size prefix whose first `filled` bytes are in `prefix`, and check it.
async fn finish_prefix<R: AsyncRead + Unpin>(
    reader: &mut R,
    limits: FrameLimits,
    mut prefix: [u8; FRAME_PREFIX_BYTES],
    mut filled: usize,
    progress: &mut Progress,
) -> Result<usize, FrameError> {
    progress.read = filled;
    while filled < FRAME_PREFIX_BYTES {
        let read = reader.read(&mut prefix[filled..]).await?;
        if read == 0 {
            return Err(FrameError::Truncated { read: filled, expected: FRAME_PREFIX_BYTES });
        }
        filled += read;
        progress.read = filled;
    }
    let size = frame_size(prefix, limits)?;
    progress.expected = FRAME_PREFIX_BYTES + size;
    Ok(size)
}

/// Read a body of `size` checked bytes. The buffer grows only as bytes arrive, so an announced
/// but unsent body costs nothing.
async fn read_body<R: AsyncRead + Unpin>(reader: &mut R, size: usize, progress: &mut Progress) -> Result<Bytes, FrameError> {
    let mut body = vec![0u8; size.min(BODY_GROWTH_BYTES_MAX)];
    let mut filled = 0;
    while filled < size {
        if filled == body.len() {
            let grown = (body.len() * 2).min(body.len() + BODY_GROWTH_BYTES_MAX).min(size);
            body.resize(grown, 0);
        }
        let read = reader.read(&mut body[filled..]).await?;
        if read == 0 {
            return Err(FrameError::Truncated { read: filled, expected: size });
        }
        filled += read;
        progress.read = FRAME_PREFIX_BYTES + filled;
    }
    Ok(Bytes::from(body))
}

/// Prefix `body` with its size.
pub fn frame_bytes(body: &[u8]) -> Bytes {
    let size = i32::try_from(body.len()).expect("response frames stay below 2 GiB");
    let mut framed = BytesMut::with_capacity(FRAME_PREFIX_BYTES + body.len());
    framed.put_i32(size);
    framed.put_slice(body);
    framed.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_checked_before_allocation() {
        let limits = FrameLimits { frame_bytes_max: 1024 };
        assert_eq!(frame_size(100i32.to_be_bytes(), limits).unwrap(), 100);
        assert!(frame_size((-1i32).to_be_bytes(), limits).is_err());
        assert!(frame_size(1025i32.to_be_bytes(), limits).is_err());
        assert!(frame_size(7i32.to_be_bytes(), limits).is_err());
        // The classic garbage case: an HTTP request on the Kafka port ("GET " = 0x47455420).
        assert!(frame_size(*b"GET ", FrameLimits::default()).is_err());
    }

    /// One frame with clocks that never fire.
    fn read_untimed<R: AsyncRead + Unpin>(reader: &mut R, limits: FrameLimits) -> Result<Option<Bytes>, FrameError> {
        let frame = futures_lite::future::block_on(read_frame_timed(reader, limits, FrameTimeouts::default(), thread_sleep, admit_any));
        frame.map(|admitted| admitted.map(|(frame, _)| frame))
    }

    #[test]
    fn reads_frames_and_detects_truncation() {
        let mut stream = frame_bytes(&[1, 2, 3, 4, 5, 6, 7, 8]).to_vec();
        stream.extend_from_slice(&frame_bytes(&[9; 10]));
        let mut reader = futures_lite::io::Cursor::new(stream.clone());
        let limits = FrameLimits::default();
        let first = read_untimed(&mut reader, limits).unwrap();
        assert_eq!(first.unwrap().len(), 8);
        let second = read_untimed(&mut reader, limits).unwrap();
        assert_eq!(second.unwrap().len(), 10);
        assert!(read_untimed(&mut reader, limits).unwrap().is_none());
        let mut cut = futures_lite::io::Cursor::new(stream[..6].to_vec());
        assert!(matches!(read_untimed(&mut cut, limits), Err(FrameError::Truncated { .. })));
    }

    /// A reader that yields `bytes` one at a time, each after `pause` (a slow-loris peer), on a
    /// plain thread clock so the test needs no runtime.
    struct Trickle {
        bytes: Vec<u8>,
        sent: usize,
        pause: Duration,
        waited: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            context: &mut std::task::Context<'_>,
            buffer: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            if self.sent == self.bytes.len() || buffer.is_empty() {
                return std::task::Poll::Ready(Ok(0));
            }
            // Every byte is "in flight" for one poll, as on a socket, so the deadline gets a look.
            if !self.waited {
                self.waited = true;
                context.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            self.waited = false;
            std::thread::sleep(self.pause);
            buffer[0] = self.bytes[self.sent];
            self.sent += 1;
            std::task::Poll::Ready(Ok(1))
        }
    }

    fn thread_sleep(_: Duration) -> std::future::Pending<()> {
        std::future::pending()
    }

    fn admit_any(size: usize) -> std::future::Ready<usize> {
        std::future::ready(size)
    }

    #[test]
    fn timed_reads_complete_frames_and_grow_buffers() {
        let body: Vec<u8> = (0..3 * BODY_GROWTH_BYTES_MAX + 7).map(|index| index as u8).collect();
        let mut reader = futures_lite::io::Cursor::new(frame_bytes(&body).to_vec());
        let limits = FrameLimits::default();
        let frame = futures_lite::future::block_on(read_frame_timed(&mut reader, limits, FrameTimeouts::default(), thread_sleep, admit_any));
        let (frame, admitted) = frame.unwrap().unwrap();
        assert_eq!(frame, body);
        assert_eq!(admitted, body.len());
        let end = futures_lite::future::block_on(read_frame_timed(&mut reader, limits, FrameTimeouts::default(), thread_sleep, admit_any));
        assert!(end.unwrap().is_none());
    }

    #[test]
    fn a_trickling_frame_misses_its_deadline_and_silence_is_idle() {
        let timeouts = FrameTimeouts { idle: Duration::from_millis(20), complete: Duration::from_millis(20) };
        // The timer fires after its duration; the reader hands out a byte every 2 ms, so the
        // 68-byte frame would need ~136 ms.
        let deadline_sleep = |limit: Duration| {
            let started = std::time::Instant::now();
            futures_lite::future::poll_fn(move |context| {
                if started.elapsed() >= limit {
                    std::task::Poll::Ready(())
                } else {
                    context.waker().wake_by_ref();
                    std::task::Poll::Pending
                }
            })
        };
        let mut slow = Trickle { bytes: frame_bytes(&[7; 64]).to_vec(), sent: 0, pause: Duration::from_millis(2), waited: false };
        let result = futures_lite::future::block_on(read_frame_timed(&mut slow, FrameLimits::default(), timeouts, deadline_sleep, admit_any));
        match result {
            Err(FrameError::TooSlow { read, expected, .. }) => {
                assert!(read > 0 && read < expected, "read {read} of {expected}");
                assert_eq!(expected, 68);
            }
            other => panic!("expected TooSlow, got {other:?}"),
        }
        let mut silent = futures_lite::io::Cursor::new(Vec::new());
        // An empty cursor reads 0 (a clean close), which is not idleness.
        let closed = futures_lite::future::block_on(read_frame_timed(&mut silent, FrameLimits::default(), timeouts, deadline_sleep, admit_any));
        assert!(closed.unwrap().is_none());
        let mut never = futures_lite::io::BufReader::new(Stalled);
        let idle = futures_lite::future::block_on(read_frame_timed(&mut never, FrameLimits::default(), timeouts, deadline_sleep, admit_any));
        assert!(matches!(idle, Err(FrameError::Idle(_))), "{idle:?}");
    }

    /// A peer that never sends.
    struct Stalled;

    impl AsyncRead for Stalled {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Pending
        }
    }
}
