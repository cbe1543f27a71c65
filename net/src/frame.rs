//! Kafka framing: a 4-byte big-endian size, then that many bytes of request or response.
//!
//! The size is checked against [`FrameLimits::frame_bytes_max`] before any buffer is allocated, so a
//! hostile prefix cannot make us reserve gigabytes. A bad prefix is a [`FrameError`]; the caller
//! closes the connection (there is no way to resynchronise a byte stream with broken framing).

use bytes::{BufMut, Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt};
use thiserror::Error;

/// Bytes of the size prefix.
pub const FRAME_PREFIX_BYTES: usize = 4;
/// Smallest valid request: api key (2), api version (2), correlation id (4).
pub const REQUEST_FRAME_BYTES_MIN: usize = 8;
/// Default largest request frame, as Kafka's `socket.request.max.bytes` (100 MiB).
pub const FRAME_BYTES_MAX_DEFAULT: usize = 100 * 1024 * 1024;

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

/// Read one frame. `Ok(None)` when the peer closed the connection cleanly between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    limits: FrameLimits,
) -> Result<Option<Bytes>, FrameError> {
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    let mut filled = 0;
    while filled < FRAME_PREFIX_BYTES {
        let read = reader.read(&mut prefix[filled..]).await?;
        if read == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated { read: filled, expected: FRAME_PREFIX_BYTES });
        }
        filled += read;
    }
    let size = frame_size(prefix, limits)?;
    // Allocation happens only after the size passed the limit check above.
    let mut body = vec![0u8; size];
    let mut filled = 0;
    while filled < size {
        let read = reader.read(&mut body[filled..]).await?;
        if read == 0 {
            return Err(FrameError::Truncated { read: filled, expected: size });
        }
        filled += read;
    }
    Ok(Some(Bytes::from(body)))
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

    #[test]
    fn reads_frames_and_detects_truncation() {
        let mut stream = frame_bytes(&[1, 2, 3, 4, 5, 6, 7, 8]).to_vec();
        stream.extend_from_slice(&frame_bytes(&[9; 10]));
        let mut reader = futures_lite::io::Cursor::new(stream.clone());
        let limits = FrameLimits::default();
        let first = futures_lite::future::block_on(read_frame(&mut reader, limits)).unwrap();
        assert_eq!(first.unwrap().len(), 8);
        let second = futures_lite::future::block_on(read_frame(&mut reader, limits)).unwrap();
        assert_eq!(second.unwrap().len(), 10);
        assert!(futures_lite::future::block_on(read_frame(&mut reader, limits)).unwrap().is_none());
        let mut cut = futures_lite::io::Cursor::new(stream[..6].to_vec());
        assert!(matches!(
            futures_lite::future::block_on(read_frame(&mut cut, limits)),
            Err(FrameError::Truncated { .. })
        ));
    }
}
