//! Frames: the unit a link carries.
//!
//! A frame is a small rkyv-archived *header* (a consensus message, a heartbeat, an envelope's
//! metadata) plus an optional opaque *body* (a batch envelope's bytes, passed through untouched:
//! never re-encoded). On a QUIC stream a frame is laid out as
//!
//! | bytes | field |
//! |---|---|
//! | 4 | header length, u32 little endian |
//! | 4 | body length, u32 little endian |
//! | header length | header bytes (rkyv archive, validated by the receiver on access) |
//! | body length | body bytes |
//!
//! Lengths are checked against [`FRAME_HEADER_BYTES_MAX`] / [`FRAME_BODY_BYTES_MAX`] before any
//! buffer is sized from them: a peer cannot make us allocate more than a frame's limit.

use bytes::{Buf, Bytes, BytesMut};
use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::TransportError;

/// Size of the length prefix in front of every frame on a stream.
pub const FRAME_PREFIX_BYTES: usize = 8;
/// Largest header: consensus messages and envelope metadata are far smaller.
pub const FRAME_HEADER_BYTES_MAX: usize = 64 * 1024;
/// Largest body: a batch envelope (Kafka's default `message.max.bytes` is 1 MiB; we allow 8x).
pub const FRAME_BODY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Largest frame on the wire.
pub const FRAME_BYTES_MAX: usize = FRAME_PREFIX_BYTES + FRAME_HEADER_BYTES_MAX + FRAME_BODY_BYTES_MAX;

const _: () = assert!(FRAME_HEADER_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(FRAME_BODY_BYTES_MAX <= u32::MAX as usize);

/// One message on a lane: an rkyv header and an opaque body.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Frame {
    /// rkyv archive of a message type (may be empty).
    pub header: Bytes,
    /// Opaque bytes carried after the header, e.g. a batch envelope (may be empty).
    pub body: Bytes,
}

impl Frame {
    /// A frame from raw parts; checks the limits.
    pub fn new(header: Bytes, body: Bytes) -> Result<Self, TransportError> {
        if header.len() > FRAME_HEADER_BYTES_MAX || body.len() > FRAME_BODY_BYTES_MAX {
            return Err(TransportError::FrameTooLarge {
                header_bytes: header.len(),
                body_bytes: body.len(),
            });
        }
        Ok(Self { header, body })
    }

    /// Archives `message` with rkyv as the header and attaches `body` as it is.
    pub fn archive<T>(message: &T, body: Bytes) -> Result<Self, TransportError>
    where
        T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>,
        >,
    {
        let archived = rkyv::to_bytes::<rancor::Error>(message)
            .map_err(|e| TransportError::Encode { reason: e.to_string() })?;
        Self::new(Bytes::copy_from_slice(&archived), body)
    }

    /// Validates the header (bytecheck) and deserializes it. The header is copied into an aligned
    /// buffer first because a received header sits at an arbitrary offset of a stream buffer.
    pub fn unarchive<T>(&self) -> Result<T, TransportError>
    where
        T: rkyv::Archive,
        T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>
            + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
    {
        let mut aligned = AlignedVec::<16>::with_capacity(self.header.len());
        aligned.extend_from_slice(&self.header);
        rkyv::from_bytes::<T, rancor::Error>(&aligned)
            .map_err(|e| TransportError::Decode { reason: e.to_string() })
    }

    /// Bytes this frame occupies on the wire; also the unit of queue accounting.
    pub fn wire_bytes(&self) -> usize {
        FRAME_PREFIX_BYTES + self.header.len() + self.body.len()
    }

    /// The length prefix for this frame.
    pub fn prefix(&self) -> Bytes {
        let mut prefix = BytesMut::with_capacity(FRAME_PREFIX_BYTES);
        prefix.extend_from_slice(&u32::try_from(self.header.len()).expect("checked").to_le_bytes());
        prefix.extend_from_slice(&u32::try_from(self.body.len()).expect("checked").to_le_bytes());
        prefix.freeze()
    }

    /// The three chunks written to a stream for this frame: prefix, header, body. Header and body
    /// are reference-counted slices: writing them copies nothing here.
    pub fn wire_chunks(&self) -> Vec<Bytes> {
        vec![self.prefix(), self.header.clone(), self.body.clone()]
    }
}

/// Reassembles frames from the byte chunks of one ordered stream.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: BytesMut,
}

impl FrameDecoder {
    /// Appends received stream bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// Takes `count` raw bytes off the front (for a stream preamble), if that many are buffered.
    pub fn take_raw(&mut self, count: usize) -> Option<Bytes> {
        if self.buffer.len() < count {
            return None;
        }
        Some(self.buffer.split_to(count).freeze())
    }

    /// Returns the next complete frame, `Ok(None)` if more bytes are needed, or an error if the
    /// peer announced a frame over the limits (the stream is then unusable).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, TransportError> {
        if self.buffer.len() < FRAME_PREFIX_BYTES {
            return Ok(None);
        }
        let mut prefix = &self.buffer[..FRAME_PREFIX_BYTES];
        let header_bytes = prefix.get_u32_le() as usize;
        let body_bytes = prefix.get_u32_le() as usize;
        if header_bytes > FRAME_HEADER_BYTES_MAX || body_bytes > FRAME_BODY_BYTES_MAX {
            return Err(TransportError::FrameTooLarge { header_bytes, body_bytes });
        }
        let total = FRAME_PREFIX_BYTES + header_bytes + body_bytes;
        if self.buffer.len() < total {
            // Reserve once for the whole frame so a large body is not grown chunk by chunk.
            self.buffer.reserve(total - self.buffer.len());
            return Ok(None);
        }
        let mut whole = self.buffer.split_to(total).freeze();
        whole.advance(FRAME_PREFIX_BYTES);
        let body = whole.split_off(header_bytes);
        assert_eq!(whole.len(), header_bytes);
        assert_eq!(body.len(), body_bytes);
        Ok(Some(Frame { header: whole, body }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
    struct Ping {
        term: u64,
        note: String,
    }

    #[test]
    fn archive_round_trip_keeps_body_bytes() {
        let body = Bytes::from_static(b"batch-envelope-bytes");
        let frame = Frame::archive(&Ping { term: 7, note: "hi".into() }, body.clone()).unwrap();
        assert_eq!(frame.body.as_ptr(), body.as_ptr(), "body must not be copied");
        let ping: Ping = frame.unarchive().unwrap();
        assert_eq!(ping, Ping { term: 7, note: "hi".into() });
    }

    #[test]
    fn decoder_reassembles_frames_split_at_every_byte() {
        let frames: Vec<Frame> = (0..5u8)
            .map(|i| Frame::new(Bytes::from(vec![i; i as usize]), Bytes::from(vec![i; 3 * i as usize])).unwrap())
            .collect();
        let wire: Vec<u8> = frames.iter().flat_map(|f| f.wire_chunks().concat()).collect();
        for split in 1..wire.len() {
            let mut decoder = FrameDecoder::default();
            let mut out = Vec::new();
            for piece in wire.chunks(split) {
                decoder.push(piece);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    out.push(frame);
                }
            }
            assert_eq!(out, frames, "split {split}");
            assert_eq!(decoder.buffered_bytes(), 0);
        }
    }

    #[test]
    fn decoder_refuses_oversized_frame_before_allocating() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&0u32.to_le_bytes());
        decoder.push(&u32::MAX.to_le_bytes());
        assert!(matches!(decoder.next_frame(), Err(TransportError::FrameTooLarge { .. })));
    }

    #[test]
    fn corrupt_header_is_rejected_by_bytecheck() {
        let frame = Frame::new(Bytes::from_static(&[0xff; 3]), Bytes::new()).unwrap();
        assert!(matches!(frame.unarchive::<Ping>(), Err(TransportError::Decode { .. })));
    }
}
