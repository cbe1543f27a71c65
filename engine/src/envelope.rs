//! The batch envelope: a small rkyv-archived header in front of a Kafka RecordBatch v2 payload.
//!
//! On disk (and between nodes) every batch is one *frame*:
//!
//! ```text
//! +---------------------------------+------------------------------------------+
//! | archived EnvelopeHeader (96 B)  | Kafka RecordBatch v2 bytes, verbatim      |
//! +---------------------------------+------------------------------------------+
//! ```
//!
//! The payload is the producer's bytes (compressed or not). The broker patches only the two
//! fields that lie outside Kafka's own CRC: the base offset and the partition leader epoch.
//!
//! ## What the envelope CRC covers, and why
//! `crc` is a crc32c over the header bytes after the `crc` field, chained with the payload's first
//! 21 bytes (base offset, batch length, leader epoch, magic and Kafka's CRC field). Kafka's own
//! CRC (crc32c) already covers the rest of the payload (attributes to the end), so validating a
//! frame checks both CRCs and every byte is covered, while an append hashes the payload once
//! instead of twice. See docs/decisions.md.
//!
//! The header is archived with rkyv (little-endian, unaligned primitives), so it is read in place
//! from any byte position, after `bytecheck` validation.

use bytes::Bytes;
use rkyv::rancor;
use thiserror::Error;

/// Magic number at the start of every frame: `RILB` in little-endian.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"RILB");
/// Current envelope format version.
pub const FORMAT_VERSION: u16 = 1;
/// Size of the archived header in bytes (pinned by a test).
pub const HEADER_BYTES: usize = 96;
/// Size of a Kafka RecordBatch v2 header (everything before the first record).
pub const KAFKA_BATCH_HEADER_BYTES: usize = 61;
/// Bytes at the front of a Kafka batch that Kafka's CRC does not cover.
const KAFKA_CRC_START: usize = 21;
/// The largest payload a frame may carry (a hard format limit; topics set lower limits).
pub const PAYLOAD_BYTES_MAX: usize = 64 * 1024 * 1024;

const _: () = assert!(KAFKA_CRC_START < KAFKA_BATCH_HEADER_BYTES);

/// The envelope header. Field order is the on-disk order; do not reorder (format version 1).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct EnvelopeHeader {
    /// [`FRAME_MAGIC`].
    pub magic: u32,
    /// crc32c of the header after this field and the payload's un-CRC'd prefix (see module doc).
    pub crc: u32,
    /// [`FORMAT_VERSION`].
    pub format_version: u16,
    /// Kafka batch attributes (compression, timestamp type, transactional, control).
    pub attributes: u16,
    /// Payload length in bytes.
    pub length: u32,
    /// Offset of the first record.
    pub base_offset: i64,
    /// Offset of the last record minus `base_offset`.
    pub last_offset_delta: i32,
    /// Number of records in the batch.
    pub record_count: i32,
    /// Timestamp of the first record (Kafka's base timestamp).
    pub first_timestamp: i64,
    /// Largest record timestamp in the batch.
    pub max_timestamp: i64,
    /// Idempotent producer id, or -1.
    pub producer_id: i64,
    /// Idempotent producer epoch, or -1.
    pub producer_epoch: i16,
    /// Zero; keeps later fields at their natural alignment in the archived layout.
    pub reserved: u16,
    /// Sequence number of the first record, or -1.
    pub base_sequence: i32,
    /// Consensus term (the Kafka partition leader epoch) the batch was appended in.
    pub term: u64,
    /// Consensus log index of the batch (0 on a single node).
    pub consensus_index: u64,
    /// Group-commit epoch: which flush of its log wrote the frame (see `recovery`).
    pub write_epoch: u64,
    /// Position in this segment where the unsynced window began when the frame was staged: where
    /// the frames of `write_epoch` begin, or, while a sync ran behind the appends, where the
    /// epoch it was fdatasyncing began (0 if that was in an earlier segment). Recovery uses it
    /// to prove a tear lies inside writes that were never synced.
    pub epoch_start: u64,
}

impl EnvelopeHeader {
    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// The offset after this batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    /// Whole frame size in bytes (header and payload).
    pub fn frame_bytes(&self) -> usize {
        HEADER_BYTES + self.length as usize
    }
}

/// Why bytes are not a valid frame.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Fewer bytes than a header.
    #[error("frame truncated: {have} bytes, need {need}")]
    Truncated {
        /// Bytes available.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The magic number is wrong (not a frame start; zeros after the end of a log land here).
    #[error("bad frame magic {found:#010x}")]
    BadMagic {
        /// The value found.
        found: u32,
    },
    /// rkyv's bytecheck refused the header.
    #[error("header failed validation: {0}")]
    Invalid(String),
    /// A format version this build does not read.
    #[error("unsupported envelope format version {0}")]
    UnsupportedVersion(u16),
    /// The payload length is beyond the format limit.
    #[error("payload length {0} exceeds the format limit")]
    LengthTooLarge(u32),
    /// The envelope CRC does not match.
    #[error("envelope crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    EnvelopeCrc {
        /// CRC in the header.
        stored: u32,
        /// CRC computed from the bytes.
        computed: u32,
    },
    /// The Kafka batch inside is malformed or its CRC does not match.
    #[error("kafka batch invalid: {0}")]
    KafkaBatch(#[from] KafkaBatchError),
    /// A header field disagrees with the Kafka batch it carries.
    #[error("envelope field {field} disagrees with the kafka batch")]
    Mismatch {
        /// Which field.
        field: &'static str,
    },
}

/// Why bytes are not a valid Kafka RecordBatch v2.
#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum KafkaBatchError {
    /// Shorter than the 61-byte batch header.
    #[error("batch of {0} bytes is shorter than a record batch header")]
    TooShort(usize),
    /// The batch length field disagrees with the bytes given.
    #[error("batch length field says {field} bytes, {actual} given")]
    LengthMismatch {
        /// 12 + the batchLength field.
        field: i64,
        /// Bytes given.
        actual: usize,
    },
    /// Not magic 2.
    #[error("record batch magic {0}, only v2 is supported")]
    UnsupportedMagic(i8),
    /// Kafka's CRC over attributes..end does not match.
    #[error("record batch crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc {
        /// Stored value.
        stored: u32,
        /// Computed value.
        computed: u32,
    },
    /// Negative record count or offset delta.
    #[error("record batch has negative record count or last offset delta")]
    NegativeCounts,
}

/// The fields of a Kafka RecordBatch v2 header that the log needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaBatchInfo {
    /// baseOffset as sent.
    pub base_offset: i64,
    /// partitionLeaderEpoch as sent.
    pub leader_epoch: i32,
    /// attributes.
    pub attributes: i16,
    /// lastOffsetDelta.
    pub last_offset_delta: i32,
    /// baseTimestamp.
    pub first_timestamp: i64,
    /// maxTimestamp.
    pub max_timestamp: i64,
    /// producerId.
    pub producer_id: i64,
    /// producerEpoch.
    pub producer_epoch: i16,
    /// baseSequence.
    pub base_sequence: i32,
    /// recordsCount.
    pub record_count: i32,
    /// crc as stored.
    pub crc: u32,
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

/// Parses and checks a Kafka RecordBatch v2 header; verifies Kafka's CRC when `verify_crc`.
///
/// `batch` must be exactly one batch.
pub fn parse_kafka_batch(
    batch: &[u8],
    verify_crc: bool,
) -> Result<KafkaBatchInfo, KafkaBatchError> {
    if batch.len() < KAFKA_BATCH_HEADER_BYTES {
        return Err(KafkaBatchError::TooShort(batch.len()));
    }
    let length_field = i64::from(be_i32(batch, 8)) + 12;
    if length_field != batch.len() as i64 {
        return Err(KafkaBatchError::LengthMismatch {
            field: length_field,
            actual: batch.len(),
        });
    }
    let magic = batch[16] as i8;
    if magic != 2 {
        return Err(KafkaBatchError::UnsupportedMagic(magic));
    }
    let info = KafkaBatchInfo {
        base_offset: be_i64(batch, 0),
        leader_epoch: be_i32(batch, 12),
        crc: u32::from_be_bytes(batch[17..21].try_into().expect("4 bytes")),
        attributes: be_i16(batch, 21),
        last_offset_delta: be_i32(batch, 23),
        first_timestamp: be_i64(batch, 27),
        max_timestamp: be_i64(batch, 35),
        producer_id: be_i64(batch, 43),
        producer_epoch: be_i16(batch, 51),
        base_sequence: be_i32(batch, 53),
        record_count: be_i32(batch, 57),
    };
    if info.record_count < 0 || info.last_offset_delta < 0 {
        return Err(KafkaBatchError::NegativeCounts);
    }
    if verify_crc {
        let computed = crc32c::crc32c(&batch[KAFKA_CRC_START..]);
        if computed != info.crc {
            return Err(KafkaBatchError::Crc {
                stored: info.crc,
                computed,
            });
        }
    }
    Ok(info)
}

/// Patches the fields outside Kafka's CRC: base offset and partition leader epoch.
pub fn patch_kafka_batch(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    assert!(batch.len() >= KAFKA_BATCH_HEADER_BYTES);
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
    batch[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Builds the envelope header for a (patched) Kafka batch.
pub fn header_for(
    info: &KafkaBatchInfo,
    payload_len: usize,
    term: u64,
    consensus_index: u64,
) -> EnvelopeHeader {
    header_with_epoch(info, payload_len, term, consensus_index, 0, 0)
}

/// Builds the envelope header with its group-commit epoch fields.
pub fn header_with_epoch(
    info: &KafkaBatchInfo,
    payload_len: usize,
    term: u64,
    consensus_index: u64,
    write_epoch: u64,
    epoch_start: u64,
) -> EnvelopeHeader {
    assert!(payload_len <= PAYLOAD_BYTES_MAX);
    EnvelopeHeader {
        magic: FRAME_MAGIC,
        crc: 0,
        format_version: FORMAT_VERSION,
        attributes: info.attributes as u16,
        length: u32::try_from(payload_len).expect("payload bounded by PAYLOAD_BYTES_MAX"),
        base_offset: info.base_offset,
        last_offset_delta: info.last_offset_delta,
        record_count: info.record_count,
        first_timestamp: info.first_timestamp,
        max_timestamp: info.max_timestamp,
        producer_id: info.producer_id,
        producer_epoch: info.producer_epoch,
        reserved: 0,
        base_sequence: info.base_sequence,
        term,
        consensus_index,
        write_epoch,
        epoch_start,
    }
}

/// Serializes `header` (computing its CRC over itself and `payload`) into exactly
/// [`HEADER_BYTES`] bytes.
pub fn encode_header(header: &EnvelopeHeader, payload: &[u8]) -> [u8; HEADER_BYTES] {
    assert!(payload.len() >= KAFKA_CRC_START);
    assert_eq!(header.length as usize, payload.len());
    let mut h = *header;
    h.crc = 0;
    let archived =
        rkyv::to_bytes::<rancor::Error>(&h).expect("serializing a flat struct cannot fail");
    let mut out = [0u8; HEADER_BYTES];
    out.copy_from_slice(&archived);
    let crc = frame_crc(&out, payload);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

fn frame_crc(header: &[u8], payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&header[8..HEADER_BYTES]);
    crc32c::crc32c_append(crc, &payload[..KAFKA_CRC_START])
}

/// Reads and validates only the header at the start of `bytes` (magic, bytecheck, version,
/// length bound). Does not check CRCs: use [`validate_frame`] once the payload is at hand.
pub fn decode_header(bytes: &[u8]) -> Result<EnvelopeHeader, EnvelopeError> {
    if bytes.len() < HEADER_BYTES {
        return Err(EnvelopeError::Truncated {
            have: bytes.len(),
            need: HEADER_BYTES,
        });
    }
    let magic = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    if magic != FRAME_MAGIC {
        return Err(EnvelopeError::BadMagic { found: magic });
    }
    let archived = rkyv::access::<ArchivedEnvelopeHeader, rancor::Error>(&bytes[..HEADER_BYTES])
        .map_err(|e| EnvelopeError::Invalid(e.to_string()))?;
    let header: EnvelopeHeader = rkyv::deserialize::<EnvelopeHeader, rancor::Error>(archived)
        .map_err(|e| EnvelopeError::Invalid(e.to_string()))?;
    if header.reserved != 0 {
        return Err(EnvelopeError::Invalid(format!(
            "reserved field is {}",
            header.reserved
        )));
    }
    if header.format_version != FORMAT_VERSION {
        return Err(EnvelopeError::UnsupportedVersion(header.format_version));
    }
    if header.length as usize > PAYLOAD_BYTES_MAX
        || (header.length as usize) < KAFKA_BATCH_HEADER_BYTES
    {
        return Err(EnvelopeError::LengthTooLarge(header.length));
    }
    Ok(header)
}

/// Validates a whole frame: header, both CRCs, and agreement between header and Kafka batch.
/// `frame` must hold at least `header.frame_bytes()` bytes; extra bytes are ignored.
pub fn validate_frame(frame: &[u8]) -> Result<EnvelopeHeader, EnvelopeError> {
    let header = decode_header(frame)?;
    let need = header.frame_bytes();
    if frame.len() < need {
        return Err(EnvelopeError::Truncated {
            have: frame.len(),
            need,
        });
    }
    let payload = &frame[HEADER_BYTES..need];
    let computed = frame_crc(&frame[..HEADER_BYTES], payload);
    if computed != header.crc {
        return Err(EnvelopeError::EnvelopeCrc {
            stored: header.crc,
            computed,
        });
    }
    let info = parse_kafka_batch(payload, true)?;
    check_agreement(&header, &info)?;
    Ok(header)
}

fn check_agreement(header: &EnvelopeHeader, info: &KafkaBatchInfo) -> Result<(), EnvelopeError> {
    let fields: [(&'static str, bool); 5] = [
        ("base_offset", header.base_offset == info.base_offset),
        (
            "last_offset_delta",
            header.last_offset_delta == info.last_offset_delta,
        ),
        ("record_count", header.record_count == info.record_count),
        ("max_timestamp", header.max_timestamp == info.max_timestamp),
        ("producer_id", header.producer_id == info.producer_id),
    ];
    for (field, ok) in fields {
        if !ok {
            return Err(EnvelopeError::Mismatch { field });
        }
    }
    Ok(())
}

/// A batch as the log hands it out: its header and the Kafka payload (a zero-copy slice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    /// The envelope header.
    pub header: EnvelopeHeader,
    /// The Kafka RecordBatch v2 bytes, as stored (offset and leader epoch patched).
    pub payload: Bytes,
}

impl StoredBatch {
    /// Encodes the whole frame (header and payload) into a new buffer.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header.frame_bytes());
        out.extend_from_slice(&encode_header(&self.header, &self.payload));
        out.extend_from_slice(&self.payload);
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn kafka_batch(records: i32, body_len: usize, timestamp: i64) -> Vec<u8> {
        crate::testing::kafka_batch(records, body_len, timestamp)
    }

    fn sample_frame() -> (EnvelopeHeader, Vec<u8>) {
        let mut payload = kafka_batch(3, 40, 1_700_000_000_000);
        patch_kafka_batch(&mut payload, 42, 7);
        let info = parse_kafka_batch(&payload, true).unwrap();
        let header = header_for(&info, payload.len(), 7, 9);
        let mut frame = encode_header(&header, &payload).to_vec();
        frame.extend_from_slice(&payload);
        (header, frame)
    }

    #[test]
    fn layout_is_pinned() {
        let h = EnvelopeHeader {
            magic: FRAME_MAGIC,
            crc: 0,
            format_version: 1,
            attributes: 0x0102,
            length: 0x0304_0506,
            base_offset: 0x0708,
            last_offset_delta: 9,
            record_count: 10,
            first_timestamp: 11,
            max_timestamp: 12,
            producer_id: 13,
            producer_epoch: 14,
            reserved: 0,
            base_sequence: 15,
            term: 16,
            consensus_index: 17,
            write_epoch: 18,
            epoch_start: 19,
        };
        let bytes = rkyv::to_bytes::<rancor::Error>(&h).unwrap();
        assert_eq!(bytes.len(), HEADER_BYTES);
        assert_eq!(std::mem::size_of::<ArchivedEnvelopeHeader>(), HEADER_BYTES);
        assert_eq!(std::mem::align_of::<ArchivedEnvelopeHeader>(), 1);
        // Field positions: the on-disk format of version 1.
        assert_eq!(&bytes[0..4], b"RILB");
        assert_eq!(&bytes[8..10], &1u16.to_le_bytes());
        assert_eq!(&bytes[10..12], &0x0102u16.to_le_bytes());
        assert_eq!(&bytes[12..16], &0x0304_0506u32.to_le_bytes());
        assert_eq!(&bytes[16..24], &0x0708i64.to_le_bytes());
        assert_eq!(&bytes[24..28], &9i32.to_le_bytes());
        assert_eq!(&bytes[28..32], &10i32.to_le_bytes());
        assert_eq!(&bytes[32..40], &11i64.to_le_bytes());
        assert_eq!(&bytes[40..48], &12i64.to_le_bytes());
        assert_eq!(&bytes[48..56], &13i64.to_le_bytes());
        assert_eq!(&bytes[56..58], &14i16.to_le_bytes());
        assert_eq!(&bytes[60..64], &15i32.to_le_bytes());
        assert_eq!(&bytes[64..72], &16u64.to_le_bytes());
        assert_eq!(&bytes[72..80], &17u64.to_le_bytes());
        assert_eq!(&bytes[80..88], &18u64.to_le_bytes());
        assert_eq!(&bytes[88..96], &19u64.to_le_bytes());
    }

    #[test]
    fn frame_round_trips_byte_identical() {
        let (header, frame) = sample_frame();
        let got = validate_frame(&frame).unwrap();
        assert_eq!(
            got,
            EnvelopeHeader {
                crc: got.crc,
                ..header
            }
        );
        let batch = StoredBatch {
            header: got,
            payload: Bytes::copy_from_slice(&frame[HEADER_BYTES..]),
        };
        assert_eq!(batch.to_frame(), frame);
        assert_eq!(got.base_offset, 42);
        assert_eq!(got.next_offset(), 45);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let (_, frame) = sample_frame();
        for bit in 0..frame.len() * 8 {
            let mut bad = frame.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                validate_frame(&bad).is_err(),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn truncated_frames_are_refused() {
        let (_, frame) = sample_frame();
        for len in 0..frame.len() {
            assert!(validate_frame(&frame[..len]).is_err());
        }
    }

    #[test]
    fn kafka_batch_errors() {
        assert_eq!(
            parse_kafka_batch(&[0; 10], true),
            Err(KafkaBatchError::TooShort(10))
        );
        let mut b = kafka_batch(1, 10, 0);
        b[16] = 1;
        assert_eq!(
            parse_kafka_batch(&b, false),
            Err(KafkaBatchError::UnsupportedMagic(1))
        );
        let mut b = kafka_batch(1, 10, 0);
        let last = b.len() - 1;
        b[last] ^= 0xff;
        assert!(matches!(
            parse_kafka_batch(&b, true),
            Err(KafkaBatchError::Crc { .. })
        ));
        let b = kafka_batch(1, 10, 0);
        assert!(matches!(
            parse_kafka_batch(&b[..b.len() - 1], true),
            Err(KafkaBatchError::LengthMismatch { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn decode_header_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = validate_frame(&bytes);
        }
    }
}
