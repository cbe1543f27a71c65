//! Helpers for tests and benchmarks: valid Kafka RecordBatch v2 bytes without a Kafka client.
//!
//! The engine never parses records, so the record area is opaque filler; the batch header and
//! Kafka CRC are real, so every validation path runs as in production.

use crate::envelope::KAFKA_BATCH_HEADER_BYTES;
use crate::LogConfig;

/// The log settings of the SIGKILL crash test, shared by its child (which appends) and the test
/// (which reopens): small segments so the test crosses rolls.
pub fn crash_test_log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 4 * 1024 * 1024,
        preallocate_bytes: 1024 * 1024,
        ..LogConfig::default()
    }
}

/// A valid Kafka RecordBatch v2 with `records` records and `body_len` bytes of record area,
/// filled with a pattern derived from `seed` (so a reader can check the content).
pub fn kafka_batch_filled(records: i32, body_len: usize, timestamp: i64, seed: u64) -> Vec<u8> {
    assert!(records >= 1);
    let mut b = vec![0u8; KAFKA_BATCH_HEADER_BYTES + body_len];
    let len = i32::try_from(b.len() - 12).expect("batch below 2 GiB");
    b[8..12].copy_from_slice(&len.to_be_bytes());
    b[16] = 2;
    b[23..27].copy_from_slice(&(records - 1).to_be_bytes());
    b[27..35].copy_from_slice(&timestamp.to_be_bytes());
    b[35..43].copy_from_slice(&timestamp.to_be_bytes());
    b[43..51].copy_from_slice(&(-1i64).to_be_bytes());
    b[51..53].copy_from_slice(&(-1i16).to_be_bytes());
    b[53..57].copy_from_slice(&(-1i32).to_be_bytes());
    b[57..61].copy_from_slice(&records.to_be_bytes());
    fill_body(&mut b[KAFKA_BATCH_HEADER_BYTES..], seed);
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// [`kafka_batch_filled`] with seed 0.
pub fn kafka_batch(records: i32, body_len: usize, timestamp: i64) -> Vec<u8> {
    kafka_batch_filled(records, body_len, timestamp, 0)
}

/// The seed a batch made by [`kafka_batch_filled`] carries (first 8 body bytes), if long enough.
pub fn batch_seed(batch: &[u8]) -> Option<u64> {
    let body = batch.get(KAFKA_BATCH_HEADER_BYTES..KAFKA_BATCH_HEADER_BYTES + 8)?;
    Some(u64::from_le_bytes(body.try_into().expect("8 bytes")))
}

/// Whether the body of `batch` is exactly what [`kafka_batch_filled`] wrote for its seed.
pub fn body_matches_seed(batch: &[u8]) -> bool {
    let Some(seed) = batch_seed(batch) else {
        return batch.len() <= KAFKA_BATCH_HEADER_BYTES + 8;
    };
    let mut expected = vec![0u8; batch.len() - KAFKA_BATCH_HEADER_BYTES];
    fill_body(&mut expected, seed);
    expected == batch[KAFKA_BATCH_HEADER_BYTES..]
}

fn fill_body(body: &mut [u8], seed: u64) {
    let seed_bytes = seed.to_le_bytes();
    let n = body.len().min(8);
    body[..n].copy_from_slice(&seed_bytes[..n]);
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    for chunk in body[n..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}
