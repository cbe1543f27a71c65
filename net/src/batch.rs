//! Kafka RecordBatch v2 headers: parsing, CRC-32C verification and base-offset patching.
//!
//! A produce request carries one or more record batches back to back. The broker never decodes or
//! re-encodes records (DESIGN.md principle 2); it reads only the 61-byte batch header, verifies the
//! CRC that covers everything from `attributes` to the end of the batch, and later patches the base
//! offset, which lies outside the CRC.
//!
//! Header layout (big-endian), offsets in bytes:
//!
//! | offset | field                  | type |
//! |-------:|------------------------|------|
//! | 0      | base_offset            | i64  |
//! | 8      | batch_length           | i32  |
//! | 12     | partition_leader_epoch | i32  |
//! | 16     | magic (= 2)            | i8   |
//! | 17     | crc (CRC-32C)          | u32  |
//! | 21     | attributes             | i16  |
//! | 23     | last_offset_delta      | i32  |
//! | 27     | first_timestamp        | i64  |
//! | 35     | max_timestamp          | i64  |
//! | 43     | producer_id            | i64  |
//! | 51     | producer_epoch         | i16  |
//! | 53     | base_sequence          | i32  |
//! | 57     | records_count          | i32  |

use thiserror::Error;

/// Size of the fixed RecordBatch v2 header in bytes (the engine's, which reads its fields).
pub const BATCH_HEADER_BYTES: usize = rill_engine::envelope::KAFKA_BATCH_HEADER_BYTES;
/// Bytes before `batch_length`'s coverage starts: base offset (8) and the length itself (4).
pub const BATCH_LENGTH_PREFIX_BYTES: usize = 12;
/// Offset of the first byte covered by the CRC (`attributes`).
const CRC_COVERAGE_START: usize = 21;

const _: () = assert!(CRC_COVERAGE_START < BATCH_HEADER_BYTES);
const _: () = assert!(BATCH_LENGTH_PREFIX_BYTES < CRC_COVERAGE_START);

/// Why a byte range is not a sequence of valid RecordBatch v2 batches.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes than a header, or than the header's `batch_length` announces.
    #[error("batch at byte {position} truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Byte position of the batch within the records field.
        position: usize,
        /// Bytes the batch needs.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// `batch_length` is negative or smaller than the header.
    #[error("batch at byte {position} has invalid length {length}")]
    InvalidLength {
        /// Byte position of the batch.
        position: usize,
        /// The announced length.
        length: i32,
    },
    /// Magic byte other than 2 (message sets v0/v1 are not supported).
    #[error("batch at byte {position} has unsupported magic {magic}")]
    UnsupportedMagic {
        /// Byte position of the batch.
        position: usize,
        /// The magic byte found.
        magic: i8,
    },
    /// CRC-32C stored in the header does not match the bytes.
    #[error("batch at byte {position} fails CRC: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// Byte position of the batch.
        position: usize,
        /// CRC found in the header.
        stored: u32,
        /// CRC computed over the batch.
        computed: u32,
    },
    /// Record count negative or inconsistent with `last_offset_delta`.
    #[error("batch at byte {position} has record count {count} and last offset delta {delta}")]
    InvalidCount {
        /// Byte position of the batch.
        position: usize,
        /// Records count from the header.
        count: i32,
        /// Last offset delta from the header.
        delta: i32,
    },
    /// The records field held no batch at all.
    #[error("records field is empty")]
    Empty,
}

/// The header fields of one batch the broker needs, plus where the batch lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Byte position of the batch's first byte within the buffer that was parsed.
    pub position: usize,
    /// Total size of the batch in bytes (12 + `batch_length`).
    pub size_bytes: usize,
    /// Base offset as sent (the broker overwrites it).
    pub base_offset: i64,
    /// Attributes (compression in bits 0-2, timestamp type bit 3, transactional bit 4, control 5).
    pub attributes: i16,
    /// Offset of the last record relative to the base offset.
    pub last_offset_delta: i32,
    /// Timestamp of the first record.
    pub first_timestamp: i64,
    /// Largest timestamp in the batch.
    pub max_timestamp: i64,
    /// Producer id, -1 when not idempotent.
    pub producer_id: i64,
    /// Producer epoch, -1 when not idempotent.
    pub producer_epoch: i16,
    /// Sequence of the first record, -1 when not idempotent.
    pub base_sequence: i32,
    /// Number of records in the batch.
    pub records_count: i32,
}

impl BatchHeader {
    /// Sequence number of the last record in this batch (wraps at `i32::MAX` as Kafka does).
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return -1;
        }
        let last = i64::from(self.base_sequence) + i64::from(self.last_offset_delta);
        let wrapped = last % (i64::from(i32::MAX) + 1);
        i32::try_from(wrapped).expect("value below i32::MAX + 1 fits i32")
    }

    /// Whether the batch was written by an idempotent producer.
    pub fn is_idempotent(&self) -> bool {
        self.producer_id >= 0
    }

    /// Whether the batch is part of a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & (1 << 4) != 0
    }
}

fn read_i32(bytes: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

/// Parse and verify one batch starting at `position` of `buffer`. Framing (truncation, length)
/// is checked here, where the position is known; the header fields and the CRC are read by the
/// engine's parser, the one definition of the v2 header layout.
pub fn parse_batch(buffer: &[u8], position: usize) -> Result<BatchHeader, BatchError> {
    use rill_engine::envelope::{parse_kafka_batch, KafkaBatchError};
    let rest = &buffer[position..];
    if rest.len() < BATCH_HEADER_BYTES {
        return Err(BatchError::Truncated { position, needed: BATCH_HEADER_BYTES, available: rest.len() });
    }
    let batch_length = read_i32(rest, 8);
    let minimum_length = BATCH_HEADER_BYTES - BATCH_LENGTH_PREFIX_BYTES;
    let Ok(length) = usize::try_from(batch_length) else {
        return Err(BatchError::InvalidLength { position, length: batch_length });
    };
    if length < minimum_length {
        return Err(BatchError::InvalidLength { position, length: batch_length });
    }
    let size_bytes = BATCH_LENGTH_PREFIX_BYTES + length;
    if rest.len() < size_bytes {
        return Err(BatchError::Truncated { position, needed: size_bytes, available: rest.len() });
    }
    let info = parse_kafka_batch(&rest[..size_bytes], true).map_err(|error| match error {
        KafkaBatchError::UnsupportedMagic(magic) => BatchError::UnsupportedMagic { position, magic },
        KafkaBatchError::Crc { stored, computed } => BatchError::CrcMismatch { position, stored, computed },
        KafkaBatchError::NegativeCounts => BatchError::InvalidCount {
            position,
            count: read_i32(rest, 57),
            delta: read_i32(rest, 23),
        },
        // Not expected: the framing above hands the parser exactly one whole batch of at least
        // a header. Still an error, never a panic, on bytes from outside.
        KafkaBatchError::TooShort(_) | KafkaBatchError::LengthMismatch { .. } => {
            BatchError::InvalidLength { position, length: batch_length }
        }
    })?;
    let header = BatchHeader {
        position,
        size_bytes,
        base_offset: info.base_offset,
        attributes: info.attributes,
        last_offset_delta: info.last_offset_delta,
        first_timestamp: info.first_timestamp,
        max_timestamp: info.max_timestamp,
        producer_id: info.producer_id,
        producer_epoch: info.producer_epoch,
        base_sequence: info.base_sequence,
        records_count: info.record_count,
    };
    // A batch holds at least one record and no more offsets than records (compaction can leave
    // gaps, so the count may be below delta + 1, never above).
    let count_valid = header.records_count >= 1
        && header.last_offset_delta >= 0
        && i64::from(header.records_count) <= i64::from(header.last_offset_delta) + 1;
    if !count_valid {
        return Err(BatchError::InvalidCount {
            position,
            count: header.records_count,
            delta: header.last_offset_delta,
        });
    }
    Ok(header)
}

/// Parse and verify every batch of a records field. The whole field must be whole batches.
pub fn parse_batches(buffer: &[u8]) -> Result<Vec<BatchHeader>, BatchError> {
    if buffer.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut headers = Vec::new();
    let mut position = 0;
    while position < buffer.len() {
        let header = parse_batch(buffer, position)?;
        position += header.size_bytes;
        headers.push(header);
    }
    assert_eq!(position, buffer.len());
    Ok(headers)
}

/// Overwrite the base offset of the batch at `position` (outside the CRC, so the CRC stays valid).
pub fn patch_base_offset(buffer: &mut [u8], position: usize, base_offset: i64) {
    assert!(base_offset >= 0);
    buffer[position..position + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Header map of a record, as kafka-protocol encodes it.
pub type RecordHeaders = kafka_protocol::indexmap::IndexMap<kafka_protocol::protocol::StrBytes, Option<bytes::Bytes>>;

/// Appends to `out` an uncompressed, non-idempotent batch v2 of `records` (key, value, headers),
/// all stamped `timestamp_ms` (the broker's internal writes and the Rust client's producer).
pub fn encode_plain_batch(
    out: &mut bytes::BytesMut,
    records: impl IntoIterator<Item = (Option<bytes::Bytes>, Option<bytes::Bytes>, RecordHeaders)>,
    timestamp_ms: i64,
) -> Result<(), BatchEncodeError> {
    use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
    let records: Vec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(index, (key, value, headers))| {
            let index = i32::try_from(index).expect("a batch holds fewer than 2^31 records");
            Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i64::from(index),
                // The encoder starts a new batch whenever offset minus sequence changes.
                sequence: index,
                timestamp: timestamp_ms,
                key,
                value,
                headers,
            }
        })
        .collect();
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    RecordBatchEncoder::encode(out, records.iter(), &options).map_err(|error| BatchEncodeError(error.to_string()))
}

/// kafka-protocol refused to encode a batch.
#[derive(Debug, Error)]
#[error("encoding a record batch: {0}")]
pub struct BatchEncodeError(String);

/// Build a valid uncompressed batch with `count` small records (tests, fuzz seeds and the client).
pub fn encode_test_batch(base_sequence: i32, producer_id: i64, count: i32, timestamp: i64) -> Vec<u8> {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch: if producer_id >= 0 { 0 } else { -1 },
            timestamp_type: TimestampType::Creation,
            offset: i64::from(i),
            // The encoder starts a new batch whenever offset minus sequence changes, so plain
            // (non-idempotent) records get sequence = offset here and -1 is patched in below.
            sequence: if base_sequence >= 0 { base_sequence + i } else { i },
            timestamp,
            key: None,
            value: Some(bytes::Bytes::from(format!("value-{i}"))),
            headers: Default::default(),
        })
        .collect();
    let mut buffer = bytes::BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    RecordBatchEncoder::encode(&mut buffer, records.iter(), &options).expect("encode batch");
    let mut batch = buffer.to_vec();
    if base_sequence < 0 {
        batch[53..57].copy_from_slice(&(-1i32).to_be_bytes());
        let crc = crc32c::crc32c(&batch[CRC_COVERAGE_START..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_encoder_output_and_patches_offset() {
        let mut batch = encode_test_batch(-1, -1, 3, 1_000);
        let headers = parse_batches(&batch).unwrap();
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[0].records_count, 3);
        assert_eq!(headers[0].last_offset_delta, 2);
        assert_eq!(headers[0].size_bytes, batch.len());
        assert_eq!(headers[0].max_timestamp, 1_000);
        patch_base_offset(&mut batch, 0, 42);
        let headers = parse_batches(&batch).unwrap();
        assert_eq!(headers[0].base_offset, 42);
    }

    #[test]
    fn rejects_flipped_bit() {
        let mut batch = encode_test_batch(-1, -1, 2, 5);
        let last = batch.len() - 1;
        batch[last] ^= 1;
        assert!(matches!(parse_batches(&batch), Err(BatchError::CrcMismatch { .. })));
    }

    #[test]
    fn rejects_truncation_and_empty() {
        let batch = encode_test_batch(-1, -1, 2, 5);
        assert!(matches!(parse_batches(&batch[..batch.len() - 1]), Err(BatchError::Truncated { .. })));
        assert!(matches!(parse_batches(&batch[..10]), Err(BatchError::Truncated { .. })));
        assert_eq!(parse_batches(&[]), Err(BatchError::Empty));
    }

    #[test]
    fn sequences_wrap() {
        let batch = encode_test_batch(i32::MAX - 1, 7, 1, 5);
        let mut header = parse_batches(&batch).unwrap()[0];
        assert_eq!(header.last_sequence(), i32::MAX - 1);
        header.last_offset_delta = 2;
        assert_eq!(header.last_sequence(), 0);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse_batches(&bytes);
        }
    }
}
