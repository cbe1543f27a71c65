//! The record header that carries the intended send time from producer to consumer.
//!
//! Layout (little endian, at the start of each record value; the rest is random filler):
//!
//! | bytes | field | why |
//! |---|---|---|
//! | 0..4 | magic `RLB1` | skip records written by anything else |
//! | 4..12 | run id | skip records of earlier runs on a reused topic |
//! | 12..20 | intended send time, ns since the run's clock anchor | end-to-end latency |
//! | 20..24 | producer index | diagnostics |

/// Bytes of the header; records are at least this long.
pub const HEADER_BYTES: usize = 24;
const MAGIC: [u8; 4] = *b"RLB1";

/// What a consumer learns from a record's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The run that wrote the record.
    pub run_id: u64,
    /// Intended send time, ns since the run's anchor.
    pub intended_ns: u64,
    /// Which producer sent it.
    pub producer: u32,
}

impl Header {
    /// Writes the header over the first [`HEADER_BYTES`] of `value`.
    pub fn write(&self, value: &mut [u8]) {
        assert!(value.len() >= HEADER_BYTES, "record shorter than its header");
        value[0..4].copy_from_slice(&MAGIC);
        value[4..12].copy_from_slice(&self.run_id.to_le_bytes());
        value[12..20].copy_from_slice(&self.intended_ns.to_le_bytes());
        value[20..24].copy_from_slice(&self.producer.to_le_bytes());
    }

    /// Reads a header, or `None` if `value` was not written by the harness.
    pub fn read(value: &[u8]) -> Option<Header> {
        let header = value.get(..HEADER_BYTES)?;
        if header[0..4] != MAGIC {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
        Some(Header {
            run_id: u64_at(4),
            intended_ns: u64_at(12),
            producer: u32::from_le_bytes(header[20..24].try_into().expect("4 bytes")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_foreign_values_are_skipped() {
        let header = Header { run_id: 0xdead_beef_0102, intended_ns: 123_456_789_012, producer: 7 };
        let mut value = vec![0xaa; 100];
        header.write(&mut value);
        assert_eq!(Header::read(&value), Some(header));
        assert_eq!(value[HEADER_BYTES], 0xaa, "filler after the header is untouched");
        assert_eq!(Header::read(&value[..HEADER_BYTES - 1]), None);
        assert_eq!(Header::read(b"not a bench record at all"), None);
    }
}
