//! Committed consumer-group offsets as records of the internal topic `__consumer_offsets`.
//!
//! Records use Kafka's own layout so Kafka tools could read them: the key is an
//! `OffsetCommitKey` v1 (group, topic, partition), the value an `OffsetCommitValue` v3 (offset,
//! leader epoch, metadata, commit timestamp); a null value is a tombstone (the group was
//! deleted). Strings are an i16 length plus UTF-8 bytes, integers big-endian. One OffsetCommit
//! becomes one append of uncompressed record batches (Kafka's record encoder), acknowledged once
//! durable; at start-up the controller replays the partition in order, later records winning.
//!
//! Size: nothing compacts the topic yet (retention is off for it, or it would drop live
//! offsets), so it grows by about 80 bytes per committed partition per commit; a consumer
//! committing 10 partitions every 5 s adds about 14 MB a day. Compaction is a later issue.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::records::{Record, RecordBatchDecoder};

use crate::backend::TopicPartition;
use crate::batch::encode_plain_batch;
use crate::group::CommittedOffset;

/// Kafka's name of the offsets topic.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// The one partition of the offsets topic (one coordinator per node).
pub const OFFSETS_TOPIC_PARTITION: i32 = 0;
/// Records per batch when encoding one commit (keeps each batch well below 1 MiB).
pub const OFFSET_RECORDS_PER_BATCH_MAX: usize = 1_000;
/// Key version of an offset commit (Kafka's `OffsetCommitKey`).
const OFFSET_COMMIT_KEY_VERSION: i16 = 1;
/// Value version we write (Kafka's `OffsetCommitValue` v3).
const OFFSET_COMMIT_VALUE_VERSION: i16 = 3;

/// Whether clients see `name` only when they ask for it by name, and may not write to it.
pub fn is_internal_topic(name: &str) -> bool {
    name == OFFSETS_TOPIC
}

/// One decoded record: the offset (or tombstone) of a partition committed by a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetRecord {
    /// Offset of the record in the offsets topic.
    pub log_offset: i64,
    /// Group id.
    pub group: String,
    /// The committed partition.
    pub partition: TopicPartition,
    /// The commit, or `None` for a tombstone.
    pub committed: Option<CommittedOffset>,
}

fn put_string(buffer: &mut BytesMut, value: &str) {
    let length = i16::try_from(value.len()).unwrap_or(i16::MAX);
    buffer.put_i16(length);
    buffer.put_slice(&value.as_bytes()[..usize::try_from(length).expect("non-negative")]);
}

fn get_string(buffer: &mut Bytes) -> Result<String, String> {
    if buffer.remaining() < 2 {
        return Err("truncated string length".into());
    }
    let length = usize::try_from(buffer.get_i16()).map_err(|_| "negative string length".to_string())?;
    if buffer.remaining() < length {
        return Err("truncated string".into());
    }
    String::from_utf8(buffer.split_to(length).to_vec()).map_err(|_| "string is not UTF-8".into())
}

fn encode_key(group: &str, partition: &TopicPartition) -> Bytes {
    let mut key = BytesMut::new();
    key.put_i16(OFFSET_COMMIT_KEY_VERSION);
    put_string(&mut key, group);
    put_string(&mut key, &partition.topic);
    key.put_i32(partition.partition);
    key.freeze()
}

fn encode_value(committed: &CommittedOffset, now_ms: i64) -> Bytes {
    let mut value = BytesMut::new();
    value.put_i16(OFFSET_COMMIT_VALUE_VERSION);
    value.put_i64(committed.offset);
    value.put_i32(-1);
    put_string(&mut value, &committed.metadata);
    value.put_i64(now_ms);
    value.freeze()
}

/// Record batches for `entries` of `group` (`None`: tombstone), back to back.
pub fn encode_commits(group: &str, entries: &[(TopicPartition, Option<CommittedOffset>)], now_ms: i64) -> Bytes {
    assert!(!entries.is_empty());
    let mut out = BytesMut::new();
    for chunk in entries.chunks(OFFSET_RECORDS_PER_BATCH_MAX) {
        let records = chunk.iter().map(|(partition, committed)| {
            (Some(encode_key(group, partition)), committed.as_ref().map(|committed| encode_value(committed, now_ms)), Default::default())
        });
        encode_plain_batch(&mut out, records, now_ms).expect("encoding into memory cannot fail");
    }
    out.freeze()
}

fn decode_record(record: &Record) -> Result<Option<OffsetRecord>, String> {
    let mut key = record.key.clone().ok_or("record without key")?;
    if key.remaining() < 2 {
        return Err("truncated key".into());
    }
    let version = key.get_i16();
    if !matches!(version, 0 | 1) {
        // Group metadata (v2) and later kinds: nothing we restore.
        return Ok(None);
    }
    let group = get_string(&mut key)?;
    let topic = get_string(&mut key)?;
    if key.remaining() < 4 {
        return Err("truncated key partition".into());
    }
    let partition = TopicPartition::new(topic, key.get_i32());
    let committed = match record.value.clone() {
        None => None,
        Some(mut value) => {
            if value.remaining() < 2 + 8 + 4 {
                return Err("truncated value".into());
            }
            let version = value.get_i16();
            if version != OFFSET_COMMIT_VALUE_VERSION {
                return Err(format!("unsupported offset commit value version {version}"));
            }
            let offset = value.get_i64();
            let _leader_epoch = value.get_i32();
            let metadata = get_string(&mut value)?;
            Some(CommittedOffset { offset, metadata })
        }
    };
    Ok(Some(OffsetRecord { log_offset: record.offset, group, partition, committed }))
}

/// Decode the records of whole batches read from the offsets topic.
pub fn decode_commits(mut batches: Bytes) -> Result<Vec<OffsetRecord>, String> {
    let sets = RecordBatchDecoder::decode_all(&mut batches).map_err(|error| format!("record batch: {error}"))?;
    let mut out = Vec::new();
    for record in sets.iter().flat_map(|set| set.records.iter()) {
        if let Some(decoded) = decode_record(record)? {
            out.push(decoded);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{parse_batches, patch_base_offset};

    #[test]
    fn commits_and_tombstones_round_trip_through_batches() {
        let committed = CommittedOffset { offset: 42, metadata: "m".into() };
        let entries: Vec<_> = (0..2_500)
            .map(|index| (TopicPartition::new("orders", index), (index % 2 == 0).then(|| committed.clone())))
            .collect();
        let encoded = encode_commits("readers", &entries, 1_000);
        let headers = parse_batches(&encoded).unwrap();
        assert_eq!(headers.len(), 3, "split in batches of {OFFSET_RECORDS_PER_BATCH_MAX}");
        // As stored: each batch gets its base offset patched.
        let mut stored = BytesMut::from(&encoded[..]);
        let mut next = 100;
        for header in &headers {
            patch_base_offset(&mut stored, header.position, next);
            next += i64::from(header.last_offset_delta) + 1;
        }
        let decoded = decode_commits(stored.freeze()).unwrap();
        assert_eq!(decoded.len(), 2_500);
        assert_eq!(decoded[0].log_offset, 100);
        assert_eq!(decoded[2_499].log_offset, 2_599);
        assert_eq!(decoded[0].committed, Some(committed));
        assert_eq!(decoded[1].committed, None);
        assert_eq!(decoded[1].partition, TopicPartition::new("orders", 1));
        assert!(decoded.iter().all(|record| record.group == "readers"));
        assert!(is_internal_topic(OFFSETS_TOPIC));
        assert!(!is_internal_topic("orders"));
    }
}
