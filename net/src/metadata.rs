//! Durable cluster metadata of a single node: topics (name, id, owner cores, config overrides)
//! and the producer-id high-water mark, in one checksummed file under `<data_dir>/metadata/`.
//!
//! # Format (`metadata.bin`, version 1)
//! | bytes | field |
//! |---|---|
//! | 4 | magic `RILM` |
//! | 2 | format version (LE) |
//! | 2 | reserved, 0 |
//! | 4 | payload length in bytes (LE) |
//! | 4 | crc32c of the payload (LE) |
//! | n | payload: an rkyv-archived [`MetadataSnapshot`] (little-endian, unaligned) |
//!
//! # Writes
//! Every change rewrites the whole file (it is small: topics are bounded by the admin API):
//! write the new version into a staging file, fdatasync it, rename it over `metadata.bin`, fsync
//! the directory. A crash leaves either the old or the new file, never a mix. Writes run on a
//! blocking thread (`spawn_blocking`): fsync must not stall the core's executor.
//!
//! The staging file is `metadata.spare` when it exists: a file of [`METADATA_SPARE_BYTES`] zeros
//! written in advance, so overwriting it needs no new blocks. A full disk therefore cannot refuse
//! a metadata change, in particular the topic deletion that frees space. After each write (and
//! at start-up) a new spare is made; if the disk is full then, the next write stages in
//! `metadata.tmp` instead.
//!
//! # Reads (start-up only)
//! | on disk | what we do | why |
//! |---|---|---|
//! | no `metadata.bin`, no partition data | start empty | a fresh node |
//! | no `metadata.bin`, partition data present | refuse to start | we would forget topics silently |
//! | bad magic, version, length or checksum | refuse to start | never run on silently empty metadata |
//! | valid file | use it; remove partition directories it does not name | those are creations never acknowledged or deletions not finished |
//!
//! A local file is enough for one node; DESIGN.md section 4 replaces it with the replicated
//! controller log later.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::backend::TopicConfig;
use crate::table::{config_from_overrides, PartitionTable, TopicMeta, TOPIC_PARTITIONS_MAX};

/// File name of the current metadata.
pub const METADATA_FILE: &str = "metadata.bin";
/// File name used while writing a new version when no spare is available.
const METADATA_TEMP_FILE: &str = "metadata.tmp";
/// Space reserved in advance for the next metadata write.
const METADATA_SPARE_FILE: &str = "metadata.spare";
/// Size of the reserved spare, in bytes (metadata of thousands of topics fits).
pub const METADATA_SPARE_BYTES: usize = 1024 * 1024;
const METADATA_MAGIC: u32 = u32::from_le_bytes(*b"RILM");
const METADATA_FORMAT_VERSION: u16 = 1;
const HEADER_BYTES: usize = 16;
/// Largest metadata file we read, in bytes (10,000 topics of long names fit easily).
pub const METADATA_FILE_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// One topic as stored.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord {
    /// Topic name.
    pub name: String,
    /// Topic id (UUID bytes).
    pub id: [u8; 16],
    /// Owner core of each partition.
    pub owners: Vec<u32>,
    /// Config keys set explicitly, as (key, value).
    pub overrides: Vec<ConfigOverride>,
}

/// One explicitly set config key.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ConfigOverride {
    /// Kafka config key.
    pub key: String,
    /// Its value.
    pub value: String,
}

/// Everything the controller persists.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataSnapshot {
    /// Version of the partition table this was written from.
    pub table_version: u64,
    /// No producer id at or above this was ever handed out.
    pub producer_id_limit: i64,
    /// Topics, sorted by name.
    pub topics: Vec<TopicRecord>,
}

/// Why metadata could not be read or written.
#[derive(Debug, Error)]
pub enum MetadataError {
    /// An I/O operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is damaged or not ours.
    #[error("metadata file {path} is damaged: {reason}; refusing to start with empty metadata (restore it from a backup or move the data dir away)")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Partition data exists without metadata naming it.
    #[error("{partitions_dir} holds partition data but {path} does not exist; refusing to start and forget those topics")]
    Missing {
        /// The expected metadata file.
        path: PathBuf,
        /// The partition data directory.
        partitions_dir: PathBuf,
    },
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MetadataError + 'a {
    move |source| MetadataError::Io { op, path: path.to_path_buf(), source }
}

impl MetadataSnapshot {
    /// The persisted form of `table`.
    pub fn from_table(table: &PartitionTable, producer_id_limit: i64) -> Self {
        let topics = table
            .topics
            .values()
            .map(|topic| TopicRecord {
                name: topic.name.clone(),
                id: *topic.id.as_bytes(),
                owners: topic.owners.iter().map(|owner| u32::try_from(*owner).expect("cores fit u32")).collect(),
                overrides: topic
                    .overrides
                    .iter()
                    .map(|(key, value)| ConfigOverride { key: key.clone(), value: value.clone() })
                    .collect(),
            })
            .collect();
        Self { table_version: table.version, producer_id_limit, topics }
    }

    /// The partition table for `cores` cores. Owners beyond `cores` (the node restarted with
    /// fewer cores) are reassigned: a partition's data does not depend on its core.
    pub fn to_table(&self, cores: usize, defaults: &TopicConfig) -> Result<PartitionTable, String> {
        let mut table = PartitionTable::new(cores);
        table.version = self.table_version;
        for record in &self.topics {
            let overrides: BTreeMap<String, String> =
                record.overrides.iter().map(|entry| (entry.key.clone(), entry.value.clone())).collect();
            let config = config_from_overrides(defaults, &overrides)
                .map_err(|code| format!("topic {}: config {overrides:?} refused ({code:?})", record.name))?;
            let count = i32::try_from(record.owners.len()).unwrap_or(i32::MAX);
            if !(1..=TOPIC_PARTITIONS_MAX).contains(&count) {
                return Err(format!("topic {} has {count} partitions", record.name));
            }
            let owners = record
                .owners
                .iter()
                .enumerate()
                .map(|(index, owner)| match usize::try_from(*owner) {
                    Ok(owner) if owner < cores => owner,
                    _ => table.assign_owner(&record.name, i32::try_from(index).expect("bounded above")),
                })
                .collect();
            let meta = TopicMeta {
                name: record.name.clone(),
                id: uuid::Uuid::from_bytes(record.id),
                owners,
                config,
                overrides,
            };
            table.topics.insert(record.name.clone(), meta);
        }
        Ok(table)
    }

    /// The file bytes: header plus archived payload.
    pub fn encode(&self) -> Vec<u8> {
        let payload = rkyv::to_bytes::<rkyv::rancor::Error>(self).expect("serializing owned metadata cannot fail");
        let length = u32::try_from(payload.len()).expect("metadata below 4 GiB");
        let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
        out.extend_from_slice(&METADATA_MAGIC.to_le_bytes());
        out.extend_from_slice(&METADATA_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// Parse file bytes, checking every header field and the checksum.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < HEADER_BYTES {
            return Err(format!("{} bytes, shorter than the {HEADER_BYTES}-byte header", bytes.len()));
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u16_at = |at: usize| u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2 bytes"));
        if u32_at(0) != METADATA_MAGIC {
            return Err(format!("bad magic {:#010x}", u32_at(0)));
        }
        if u16_at(4) != METADATA_FORMAT_VERSION {
            return Err(format!("unsupported format version {}", u16_at(4)));
        }
        if u16_at(6) != 0 {
            return Err(format!("reserved field is {}", u16_at(6)));
        }
        let length = usize::try_from(u32_at(8)).expect("u32 fits usize");
        let payload = &bytes[HEADER_BYTES..];
        if payload.len() != length {
            return Err(format!("payload is {} bytes, header says {length}", payload.len()));
        }
        let crc = crc32c::crc32c(payload);
        if crc != u32_at(12) {
            return Err(format!("checksum {crc:#010x} does not match {:#010x}", u32_at(12)));
        }
        rkyv::from_bytes::<Self, rkyv::rancor::Error>(payload).map_err(|error| format!("payload: {error}"))
    }
}

/// The metadata file of one node.
#[derive(Debug, Clone)]
pub struct MetadataStore {
    dir: PathBuf,
}

impl MetadataStore {
    /// Metadata kept in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Path of the metadata file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(METADATA_FILE)
    }

    /// Read the metadata at start-up (blocking; call before the executors start). `None` for a
    /// fresh node. `partitions_dir` is checked for data the metadata would not know.
    pub fn load(&self, partitions_dir: &Path) -> Result<Option<MetadataSnapshot>, MetadataError> {
        let path = self.path();
        let bytes = match std::fs::metadata(&path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if has_entries(partitions_dir)? {
                    return Err(MetadataError::Missing { path, partitions_dir: partitions_dir.to_path_buf() });
                }
                return Ok(None);
            }
            Err(error) => return Err(io_error("stat", &path)(error)),
            Ok(stat) if stat.len() > METADATA_FILE_BYTES_MAX => {
                return Err(MetadataError::Damaged {
                    path,
                    reason: format!("{} bytes, above the {METADATA_FILE_BYTES_MAX}-byte limit", stat.len()),
                });
            }
            Ok(_) => std::fs::read(&path).map_err(io_error("read", &path))?,
        };
        MetadataSnapshot::decode(&bytes).map(Some).map_err(|reason| MetadataError::Damaged { path, reason })
    }

    /// Replace the file with `snapshot` atomically and durably (blocking).
    pub fn write_blocking(&self, snapshot: &MetadataSnapshot) -> Result<(), MetadataError> {
        std::fs::create_dir_all(&self.dir).map_err(io_error("create dir", &self.dir))?;
        let bytes = snapshot.encode();
        let spare = self.dir.join(METADATA_SPARE_FILE);
        let spare_fits = std::fs::metadata(&spare).is_ok_and(|stat| stat.len() >= bytes.len() as u64);
        let staged = if spare_fits { spare } else { self.dir.join(METADATA_TEMP_FILE) };
        let mut file = if spare_fits {
            // Overwrite in place: the spare's blocks are allocated, a full disk cannot refuse.
            std::fs::OpenOptions::new().write(true).open(&staged).map_err(io_error("open", &staged))?
        } else {
            std::fs::File::create(&staged).map_err(io_error("create", &staged))?
        };
        file.write_all(&bytes).map_err(io_error("write", &staged))?;
        file.set_len(bytes.len() as u64).map_err(io_error("truncate", &staged))?;
        file.sync_data().map_err(io_error("fdatasync", &staged))?;
        drop(file);
        let path = self.path();
        std::fs::rename(&staged, &path).map_err(io_error("rename", &path))?;
        // The rename is durable only once the directory entry is.
        let dir = std::fs::File::open(&self.dir).map_err(io_error("open dir", &self.dir))?;
        dir.sync_all().map_err(io_error("fsync dir", &self.dir))?;
        if let Err(error) = self.ensure_spare() {
            tracing::warn!(%error, "no spare for the next metadata write (disk full?); it will need new space");
        }
        Ok(())
    }

    /// Make sure a spare of [`METADATA_SPARE_BYTES`] exists (blocking). Only a reservation: a
    /// crash while making it leaves at most a stray `metadata.spare.tmp`.
    pub fn ensure_spare(&self) -> Result<(), MetadataError> {
        let spare = self.dir.join(METADATA_SPARE_FILE);
        if std::fs::metadata(&spare).is_ok_and(|stat| stat.len() >= METADATA_SPARE_BYTES as u64) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(io_error("create dir", &self.dir))?;
        let temp = self.dir.join(format!("{METADATA_SPARE_FILE}.tmp"));
        let made = (|| {
            let mut file = std::fs::File::create(&temp)?;
            // Written zeros, not a sparse length: the blocks must really be allocated.
            file.write_all(&vec![0u8; METADATA_SPARE_BYTES])?;
            file.sync_data()?;
            std::fs::rename(&temp, &spare)
        })();
        made.map_err(|source| {
            let _ = std::fs::remove_file(&temp);
            MetadataError::Io { op: "make spare", path: spare, source }
        })
    }

    /// [`MetadataStore::write_blocking`] on a blocking thread, so the core keeps serving.
    /// Callers serialise writes (the controller's admin lock).
    pub async fn write(&self, snapshot: MetadataSnapshot) -> Result<(), MetadataError> {
        let store = self.clone();
        glommio::executor().spawn_blocking(move || store.write_blocking(&snapshot)).await
    }
}

fn has_entries(dir: &Path) -> Result<bool, MetadataError> {
    match std::fs::read_dir(dir) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(io_error("list", dir)(error)),
        Ok(mut entries) => Ok(entries.next().is_some()),
    }
}

/// Remove partition directories under `partitions_dir` (`<topic>/<partition>/`) that `table`
/// does not name: topic creations that were never acknowledged, or deletions a crash
/// interrupted. Without this, re-creating such a topic would resurrect its old records.
/// Blocking; returns what was removed.
pub fn remove_orphan_partitions(partitions_dir: &Path, table: &PartitionTable) -> Result<Vec<PathBuf>, MetadataError> {
    let mut removed = Vec::new();
    let topics = match std::fs::read_dir(partitions_dir) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        other => other.map_err(io_error("list", partitions_dir))?,
    };
    for entry in topics {
        let entry = entry.map_err(io_error("list", partitions_dir))?;
        let topic_dir = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(topic) = table.topics.get(&name) else {
            std::fs::remove_dir_all(&topic_dir).map_err(io_error("remove", &topic_dir))?;
            removed.push(topic_dir);
            continue;
        };
        for partition in std::fs::read_dir(&topic_dir).map_err(io_error("list", &topic_dir))? {
            let partition = partition.map_err(io_error("list", &topic_dir))?;
            let index = partition.file_name().to_string_lossy().parse::<usize>().ok();
            if index.is_none_or(|index| index >= topic.owners.len()) {
                let path = partition.path();
                std::fs::remove_dir_all(&path).map_err(io_error("remove", &path))?;
                removed.push(path);
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> PartitionTable {
        let mut table = PartitionTable::new(2);
        table.version = 7;
        let mut overrides = BTreeMap::new();
        overrides.insert("retention.ms".to_string(), "1000".to_string());
        let config = config_from_overrides(&TopicConfig::default(), &overrides).unwrap();
        table.topics.insert(
            "orders".into(),
            TopicMeta { name: "orders".into(), id: uuid::Uuid::new_v4(), owners: vec![1, 0, 1], config, overrides },
        );
        table
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let table = table();
        let snapshot = MetadataSnapshot::from_table(&table, 5000);
        let bytes = snapshot.encode();
        let decoded = MetadataSnapshot::decode(&bytes).unwrap();
        assert_eq!(decoded, snapshot);
        assert_eq!(decoded.to_table(2, &TopicConfig::default()).unwrap(), table);
        // Fewer cores: owners are reassigned inside the range.
        let one_core = decoded.to_table(1, &TopicConfig::default()).unwrap();
        assert_eq!(one_core.topics["orders"].owners, vec![0, 0, 0]);
        for flip in [0, 5, 9, 13, HEADER_BYTES + 3, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[flip] ^= 0x40;
            assert!(MetadataSnapshot::decode(&damaged).is_err(), "flip at {flip} accepted");
        }
        assert!(MetadataSnapshot::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(MetadataSnapshot::decode(&[]).is_err());
    }

    #[test]
    fn load_write_and_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let partitions = dir.path().join("partitions");
        let store = MetadataStore::new(dir.path().join("metadata"));
        assert!(store.load(&partitions).unwrap().is_none());
        std::fs::create_dir_all(partitions.join("orders/0")).unwrap();
        std::fs::create_dir_all(partitions.join("orders/3")).unwrap();
        std::fs::create_dir_all(partitions.join("gone/0")).unwrap();
        assert!(matches!(store.load(&partitions), Err(MetadataError::Missing { .. })));
        let table = table();
        store.write_blocking(&MetadataSnapshot::from_table(&table, 10)).unwrap();
        let spare = dir.path().join("metadata").join(METADATA_SPARE_FILE);
        assert_eq!(std::fs::metadata(&spare).unwrap().len(), METADATA_SPARE_BYTES as u64);
        // The second write stages in the spare and makes a new one.
        store.write_blocking(&MetadataSnapshot::from_table(&table, 10)).unwrap();
        assert_eq!(std::fs::metadata(&spare).unwrap().len(), METADATA_SPARE_BYTES as u64);
        let loaded = store.load(&partitions).unwrap().unwrap();
        assert_eq!(loaded.producer_id_limit, 10);
        let mut removed = remove_orphan_partitions(&partitions, &table).unwrap();
        removed.sort();
        assert_eq!(removed, vec![partitions.join("gone"), partitions.join("orders/3")]);
        assert!(partitions.join("orders/0").exists());
        let mut bytes = std::fs::read(store.path()).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(store.path(), bytes).unwrap();
        assert!(matches!(store.load(&partitions), Err(MetadataError::Damaged { .. })));
    }
}
