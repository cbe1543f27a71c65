//! Cluster metadata of a single node: topics, their configs, and the versioned partition→core
//! table.
//!
//! Core 0 holds the authoritative copy (see [`crate::controller`]); every change produces a new
//! immutable [`PartitionTable`] with a higher version that is broadcast to every core over the
//! mesh. A core routes requests with whatever version it holds; the controller finishes a change
//! (partitions created on their owners, table delivered everywhere) before answering the client.

use std::collections::BTreeMap;

use crate::backend::{TopicConfig, TopicPartition};
use crate::errors::KafkaCode;

/// Longest topic name Kafka allows.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Most partitions one topic may have.
pub const TOPIC_PARTITIONS_MAX: i32 = 10_000;

/// Config keys we support, in the order DescribeConfigs lists them.
pub const TOPIC_CONFIG_KEYS: &[&str] =
    &["retention.ms", "retention.bytes", "segment.bytes", "max.message.bytes", "cleanup.policy", "preallocate"];

/// One topic.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicMeta {
    /// Topic name.
    pub name: String,
    /// Topic id (Metadata v10+).
    pub id: uuid::Uuid,
    /// Owner core of each partition, indexed by partition.
    pub owners: Vec<usize>,
    /// Effective config.
    pub config: TopicConfig,
    /// Keys set explicitly (the rest are defaults).
    pub overrides: BTreeMap<String, String>,
}

/// The versioned topic and partition→core table.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionTable {
    /// Increases with every change.
    pub version: u64,
    /// Number of cores partitions are spread over.
    pub cores: usize,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicMeta>,
}

impl PartitionTable {
    /// An empty table at version 0.
    pub fn new(cores: usize) -> Self {
        assert!(cores > 0);
        Self { version: 0, cores, topics: BTreeMap::new() }
    }

    /// Owner core of a partition, if it exists.
    pub fn owner(&self, partition: &TopicPartition) -> Option<usize> {
        let topic = self.topics.get(&partition.topic)?;
        let index = usize::try_from(partition.partition).ok()?;
        topic.owners.get(index).copied()
    }

    /// Owner for a new partition: spread round-robin, starting at a per-topic offset so that
    /// many single-partition topics do not all land on core 0.
    pub fn assign_owner(&self, topic: &str, partition: i32) -> usize {
        let start = topic.bytes().fold(0usize, |hash, byte| hash.wrapping_mul(31).wrapping_add(usize::from(byte)));
        let index = usize::try_from(partition).expect("partition indexes are non-negative");
        start.wrapping_add(index) % self.cores
    }
}

/// Check a topic name against Kafka's rules.
pub fn validate_topic_name(name: &str) -> Result<(), KafkaCode> {
    let legal = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'_' || byte == b'-';
    if name.is_empty() || name == "." || name == ".." || name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(KafkaCode::InvalidTopic);
    }
    if !name.bytes().all(legal) {
        return Err(KafkaCode::InvalidTopic);
    }
    Ok(())
}

/// Set one config key on `config`.
pub fn set_config(config: &mut TopicConfig, key: &str, value: &str) -> Result<(), KafkaCode> {
    let number = || value.trim().parse::<i64>().map_err(|_| KafkaCode::InvalidConfig);
    match key {
        "retention.ms" => config.retention_ms = number()?.max(-1),
        "retention.bytes" => config.retention_bytes = number()?.max(-1),
        "segment.bytes" => {
            let bytes = number()?;
            if bytes < 14 {
                return Err(KafkaCode::InvalidConfig);
            }
            config.segment_bytes = bytes;
        }
        "max.message.bytes" => {
            let bytes = i32::try_from(number()?).map_err(|_| KafkaCode::InvalidConfig)?;
            if bytes < 0 {
                return Err(KafkaCode::InvalidConfig);
            }
            config.max_message_bytes = bytes;
        }
        "cleanup.policy" if value == "delete" => config.cleanup_policy = value.to_string(),
        // Kafka parses booleans case-insensitively and refuses anything else.
        "preallocate" => {
            config.preallocate = match value.trim().to_ascii_lowercase().as_str() {
                "true" => true,
                "false" => false,
                _ => return Err(KafkaCode::InvalidConfig),
            }
        }
        _ => return Err(KafkaCode::InvalidConfig),
    }
    Ok(())
}

/// The value of a key as DescribeConfigs shows it.
pub fn config_value(config: &TopicConfig, key: &str) -> Option<String> {
    Some(match key {
        "retention.ms" => config.retention_ms.to_string(),
        "retention.bytes" => config.retention_bytes.to_string(),
        "segment.bytes" => config.segment_bytes.to_string(),
        "max.message.bytes" => config.max_message_bytes.to_string(),
        "cleanup.policy" => config.cleanup_policy.clone(),
        "preallocate" => config.preallocate.to_string(),
        _ => return None,
    })
}

/// Build a config from defaults plus overrides.
pub fn config_from_overrides(
    defaults: &TopicConfig,
    overrides: &BTreeMap<String, String>,
) -> Result<TopicConfig, KafkaCode> {
    let mut config = defaults.clone();
    for (key, value) in overrides {
        set_config(&mut config, key, value)?;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_configs() {
        assert!(validate_topic_name("orders.v1_x-2").is_ok());
        assert_eq!(validate_topic_name("bad name"), Err(KafkaCode::InvalidTopic));
        assert_eq!(validate_topic_name(&"a".repeat(250)), Err(KafkaCode::InvalidTopic));
        let mut overrides = BTreeMap::new();
        overrides.insert("retention.ms".to_string(), "1000".to_string());
        let config = config_from_overrides(&TopicConfig::default(), &overrides).unwrap();
        assert_eq!(config.retention_ms, 1000);
        overrides.insert("cleanup.policy".to_string(), "compact".to_string());
        assert_eq!(config_from_overrides(&TopicConfig::default(), &overrides), Err(KafkaCode::InvalidConfig));
    }

    #[test]
    fn preallocate_is_a_boolean() {
        let mut config = TopicConfig::default();
        assert_eq!(config_value(&config, "preallocate").as_deref(), Some("false"));
        set_config(&mut config, "preallocate", "TRUE").unwrap();
        assert!(config.preallocate);
        assert_eq!(config_value(&config, "preallocate").as_deref(), Some("true"));
        assert_eq!(set_config(&mut config, "preallocate", "yes"), Err(KafkaCode::InvalidConfig));
        assert!(config.preallocate, "a refused value changes nothing");
        set_config(&mut config, "preallocate", "false").unwrap();
        assert!(!config.preallocate);
    }

    #[test]
    fn owners_spread_over_cores() {
        let table = PartitionTable::new(2);
        let first = table.assign_owner("t", 0);
        assert_ne!(first, table.assign_owner("t", 1));
        assert_eq!(first, table.assign_owner("t", 2));
    }
}
