//! The controller of a single node, hosted on core 0: topics and their configs, the
//! authoritative partition table, the group coordinator, and producer id allocation.
//!
//! Topic changes are serialised by one admin lock and follow the same order every time:
//! creations make the partitions on their owner cores first, then broadcast the new table, then
//! answer; deletions broadcast the table without the topic first (no new requests are routed to
//! it), then delete the partitions. Group requests drive the sans-I/O
//! [`GroupCoordinator`]; answers that must wait (JoinGroup, SyncGroup) park on a oneshot until a
//! later request or [`Shard::controller_tick`] releases them.
//!
//! # Durability (disk storage only)
//! Every topic change is written to the metadata file ([`crate::metadata`]) before it is
//! published or answered; producer ids are handed out from blocks whose end is persisted first,
//! so no id repeats after a restart; committed offsets are appended to `__consumer_offsets`
//! ([`crate::offsets_topic`]) before they are applied or acknowledged. At start-up,
//! [`Shard::controller_restore`] reopens every partition on its owner core and replays the
//! offsets topic before any listener accepts a client. With memory storage nothing is persisted.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures::channel::oneshot;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{OffsetFetchResponsePartition, OffsetFetchResponseTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::backend::{AppendBatches, PartitionStore, TopicConfig, TopicPartition};
use crate::batch::parse_batches;
use crate::errors::KafkaCode;
use crate::group::{CommittedOffset, GroupCoordinator, GroupReply, JoinRequest, ReplyToken};
use crate::metadata::{MetadataSnapshot, MetadataStore};
use crate::offsets_topic::{decode_commits, encode_commits, is_internal_topic, OFFSETS_TOPIC, OFFSETS_TOPIC_PARTITION};
use crate::shard::{CoreReply, CoreRequest, ProduceItem, ReadItem, Shard};
use crate::table::{
    config_from_overrides, config_value, validate_topic_name, PartitionTable, TopicMeta,
    TOPIC_CONFIG_KEYS, TOPIC_PARTITIONS_MAX,
};

/// Kafka's resource type for topics in config APIs.
const RESOURCE_TYPE_TOPIC: i8 = 2;
/// Kafka's resource type for brokers in config APIs.
const RESOURCE_TYPE_BROKER: i8 = 4;
/// DescribeConfigs source: set on the topic.
const CONFIG_SOURCE_TOPIC: i8 = 1;
/// DescribeConfigs source: default.
const CONFIG_SOURCE_DEFAULT: i8 = 5;
/// Producer ids reserved per metadata write: the file records the end of the block before any
/// id of it is handed out.
pub const PRODUCER_ID_BLOCK: i64 = 1_000;
/// Bytes read per step when replaying the offsets topic at start-up.
const OFFSETS_REPLAY_READ_BYTES: usize = 1024 * 1024;

/// What the controller starts from on a node with disk storage (loaded before the executors
/// start, see [`crate::server::run`]).
#[derive(Debug, Clone)]
pub struct RestoredMetadata {
    /// Where changes are written.
    pub store: MetadataStore,
    /// Topics as of the last run (empty on a fresh node).
    pub table: PartitionTable,
    /// No producer id at or above this was handed out before.
    pub producer_id_limit: i64,
}

/// Controller state, only on core 0.
pub struct ControllerState {
    table: PartitionTable,
    groups: GroupCoordinator,
    group_waiters: HashMap<ReplyToken, oneshot::Sender<GroupReply>>,
    next_token: ReplyToken,
    next_producer_id: i64,
    /// End of the persisted producer-id block (disk storage only).
    producer_id_limit: i64,
    /// The metadata file; `None` with memory storage (nothing persisted).
    metadata: Option<MetadataStore>,
    admin_lock: Rc<futures::lock::Mutex<()>>,
}

impl ControllerState {
    /// Empty state for `cores` cores.
    pub fn new(cores: usize) -> Self {
        // Producer ids start from the clock so that ids handed out before a restart are not
        // handed out again (the in-memory store forgets producer state on restart).
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        Self {
            table: PartitionTable::new(cores),
            groups: GroupCoordinator::new(),
            group_waiters: HashMap::new(),
            next_token: 0,
            next_producer_id: i64::try_from(now_ms).unwrap_or(0) * 1000,
            producer_id_limit: 0,
            metadata: None,
            admin_lock: Rc::new(futures::lock::Mutex::new(())),
        }
    }
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

/// Outcome of a topic admin step, for per-topic responses.
type TopicResult = Result<(), (KafkaCode, String)>;

impl<S: PartitionStore + 'static> Shard<S> {
    fn controller(&self) -> std::cell::RefMut<'_, ControllerState> {
        self.controller.as_ref().expect("controller requests are routed to core 0").borrow_mut()
    }

    /// Serve a request that only the controller can answer.
    pub async fn controller_handle(
        &self,
        request: RequestKind,
        version: i16,
        client_id: String,
        client_host: String,
    ) -> ResponseKind {
        match request {
            RequestKind::CreateTopics(request) => ResponseKind::CreateTopics(self.create_topics(request).await),
            RequestKind::DeleteTopics(request) => ResponseKind::DeleteTopics(self.delete_topics(request, version).await),
            RequestKind::CreatePartitions(request) => {
                ResponseKind::CreatePartitions(self.create_partitions(request).await)
            }
            RequestKind::DescribeConfigs(request) => ResponseKind::DescribeConfigs(self.describe_configs(request)),
            RequestKind::AlterConfigs(request) => ResponseKind::AlterConfigs(self.alter_configs(request).await),
            RequestKind::IncrementalAlterConfigs(request) => {
                ResponseKind::IncrementalAlterConfigs(self.incremental_alter_configs(request).await)
            }
            RequestKind::InitProducerId(request) => ResponseKind::InitProducerId(self.init_producer_id(request).await),
            RequestKind::JoinGroup(request) => {
                ResponseKind::JoinGroup(self.join_group(request, client_id, client_host).await)
            }
            RequestKind::SyncGroup(request) => ResponseKind::SyncGroup(self.sync_group(request).await),
            RequestKind::Heartbeat(request) => ResponseKind::Heartbeat(self.heartbeat(request)),
            RequestKind::LeaveGroup(request) => ResponseKind::LeaveGroup(self.leave_group(request, version)),
            RequestKind::OffsetCommit(request) => ResponseKind::OffsetCommit(self.offset_commit(request).await),
            RequestKind::OffsetFetch(request) => ResponseKind::OffsetFetch(self.offset_fetch(request)),
            RequestKind::ListGroups(request) => ResponseKind::ListGroups(self.list_groups(request)),
            RequestKind::DescribeGroups(request) => ResponseKind::DescribeGroups(self.describe_groups(request)),
            RequestKind::DeleteGroups(request) => ResponseKind::DeleteGroups(self.delete_groups(request).await),
            other => unreachable!("not a controller request: {other:?}"),
        }
    }

    /// Create missing topics with default settings (auto topic creation).
    pub async fn controller_auto_create(&self, names: Vec<String>) {
        for name in names {
            let partitions = self.config.default_partitions;
            let result = self.create_topic(&name, partitions, BTreeMap::new(), false).await;
            match result {
                Ok(()) => tracing::info!(topic = %name, partitions, "auto-created topic"),
                Err((KafkaCode::TopicAlreadyExists, _)) => {}
                Err((code, message)) => tracing::warn!(topic = %name, ?code, %message, "auto-create failed"),
            }
        }
    }

    /// Expire group sessions and rebalance deadlines; call periodically on core 0.
    pub fn controller_tick(&self) {
        let replies = self.controller().groups.tick(Instant::now());
        self.deliver_group_replies(replies);
    }

    /// Start-up on core 0, before any listener accepts: reopen every partition on its owner core
    /// (recovering its log and producer state), publish the table, replay committed offsets.
    /// A partition that refuses to open is logged and reported by `/health`; the rest serve.
    pub async fn controller_restore(&self, restored: RestoredMetadata) {
        let table = restored.table;
        {
            let mut controller = self.controller();
            controller.metadata = Some(restored.store);
            controller.next_producer_id = restored.producer_id_limit;
            controller.producer_id_limit = restored.producer_id_limit;
        }
        for topic in table.topics.values() {
            if let Err((code, message)) = self.create_on_owners(&topic.name, 0, &topic.owners, &topic.config).await {
                tracing::error!(topic = %topic.name, ?code, %message, "reopening topic: some partitions are unavailable");
            }
        }
        let topics = table.topics.len();
        self.controller().table = table.clone();
        if table.version > 0 {
            self.publish_table(table).await;
        }
        let groups = self.replay_committed_offsets().await;
        tracing::info!(topics, groups, producer_id_limit = restored.producer_id_limit, "restored metadata");
    }

    /// Rebuild committed offsets from the offsets topic; returns how many groups have offsets.
    async fn replay_committed_offsets(&self) -> usize {
        let partition = TopicPartition::new(OFFSETS_TOPIC, OFFSETS_TOPIC_PARTITION);
        let Some(owner) = self.controller().table.owner(&partition) else { return 0 };
        let mut offset = 0;
        let mut records = 0u64;
        loop {
            let read = ReadItem { partition: partition.clone(), offset, max_bytes: OFFSETS_REPLAY_READ_BYTES };
            let outcome = match self.call(owner, CoreRequest::Read(vec![read])).await {
                CoreReply::Read(mut results) if results.len() == 1 => results.pop().expect("one result"),
                other => {
                    tracing::error!(?other, "replaying committed offsets: owner core did not answer");
                    break;
                }
            };
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(failure) => match failure.offsets {
                    Some(offsets) if failure.code == KafkaCode::OffsetOutOfRange && offset < offsets.log_start_offset => {
                        offset = offsets.log_start_offset;
                        continue;
                    }
                    _ => {
                        tracing::error!(code = ?failure.code, offset, "replaying committed offsets failed: later offsets are not restored");
                        break;
                    }
                },
            };
            let decoded = match decode_commits(outcome.records) {
                Ok(decoded) => decoded,
                Err(reason) => {
                    tracing::error!(%reason, offset, "undecodable record in the offsets topic: later offsets are not restored");
                    break;
                }
            };
            let Some(last) = decoded.last().map(|record| record.log_offset) else { break };
            let mut controller = self.controller();
            for record in decoded.into_iter().filter(|record| record.log_offset >= offset) {
                records += 1;
                controller.groups.restore_offset(&record.group, record.partition, record.committed);
            }
            drop(controller);
            // Reads return whole batches and always progress; stop at the high watermark.
            assert!(last >= offset);
            offset = last + 1;
            if offset >= outcome.high_watermark {
                break;
            }
        }
        let groups = self.controller().groups.list().len();
        tracing::info!(records, groups, "replayed committed offsets");
        groups
    }

    /// Write `table` and the producer-id limit to the metadata file. Callers hold the admin lock,
    /// so writes never interleave and each one carries the latest state.
    async fn persist_metadata(&self, table: &PartitionTable, producer_id_limit: i64) -> TopicResult {
        let store = self.controller().metadata.clone();
        let Some(store) = store else { return Ok(()) };
        store.write(MetadataSnapshot::from_table(table, producer_id_limit)).await.map_err(|error| {
            tracing::error!(%error, "writing metadata failed: change refused");
            (KafkaCode::KafkaStorageError, format!("metadata not saved: {error}"))
        })
    }

    /// Add a topic whose partitions do not exist yet: create them on their owners, persist,
    /// publish. The caller holds the admin lock and has checked that `name` is free.
    async fn add_topic_locked(&self, mut table: PartitionTable, meta: TopicMeta) -> TopicResult {
        self.create_on_owners(&meta.name, 0, &meta.owners, &meta.config).await?;
        let name = meta.name.clone();
        let owners = meta.owners.clone();
        table.version += 1;
        table.topics.insert(name.clone(), meta);
        let limit = self.controller().producer_id_limit;
        if let Err(error) = self.persist_metadata(&table, limit).await {
            self.delete_on_owners(&name, &owners).await;
            return Err(error);
        }
        self.controller().table = table.clone();
        self.publish_table(table).await;
        Ok(())
    }

    /// Delete partitions `0..owners.len()` of `name` on their owner cores.
    async fn delete_on_owners(&self, name: &str, owners: &[usize]) {
        let mut by_core: BTreeMap<usize, Vec<TopicPartition>> = BTreeMap::new();
        for (index, owner) in owners.iter().enumerate() {
            let partition = i32::try_from(index).expect("partitions bounded");
            by_core.entry(*owner).or_default().push(TopicPartition::new(name, partition));
        }
        let deletes = by_core.into_iter().map(|(core, partitions)| self.call(core, CoreRequest::DeletePartitions(partitions)));
        futures::future::join_all(deletes).await;
    }

    /// Create `__consumer_offsets` (one partition on core 0, retention off) if missing.
    async fn ensure_offsets_topic(&self) -> TopicResult {
        if self.controller().table.topics.contains_key(OFFSETS_TOPIC) {
            return Ok(());
        }
        let lock = self.controller().admin_lock.clone();
        let _admin = lock.lock().await;
        let table = self.controller().table.clone();
        if table.topics.contains_key(OFFSETS_TOPIC) {
            return Ok(());
        }
        // Retention would drop live offsets: without compaction, keep everything.
        let mut overrides = BTreeMap::new();
        overrides.insert("retention.ms".to_string(), "-1".to_string());
        let config = config_from_overrides(&self.config.topic_defaults, &overrides).expect("valid internal config");
        let meta = TopicMeta { name: OFFSETS_TOPIC.to_string(), id: uuid::Uuid::new_v4(), owners: vec![0], config, overrides };
        self.add_topic_locked(table, meta).await?;
        tracing::info!(topic = OFFSETS_TOPIC, "created the internal offsets topic");
        Ok(())
    }

    /// Append `entries` of `group` (`None`: tombstone) to the offsets topic; resolves once durable.
    /// Nothing to do with memory storage.
    async fn persist_offsets(&self, group: &str, entries: &[(TopicPartition, Option<CommittedOffset>)]) -> Result<(), KafkaCode> {
        if entries.is_empty() || self.controller().metadata.is_none() {
            return Ok(());
        }
        // A client sees a retriable error (it commits again); the cause is logged once here.
        let unavailable = |reason: String| {
            tracing::error!(group, %reason, "committed offsets not stored");
            KafkaCode::CoordinatorNotAvailable
        };
        self.ensure_offsets_topic().await.map_err(|(_, message)| unavailable(message))?;
        let now_ms = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(0);
        let bytes = encode_commits(group, entries, now_ms);
        let headers = parse_batches(&bytes).map_err(|error| unavailable(format!("encoded batch refused: {error}")))?;
        let partition = TopicPartition::new(OFFSETS_TOPIC, OFFSETS_TOPIC_PARTITION);
        let owner = self.controller().table.owner(&partition).ok_or_else(|| unavailable("no offsets partition".into()))?;
        let item = ProduceItem { partition, batches: AppendBatches { bytes, headers } };
        match self.call(owner, CoreRequest::Produce(vec![item])).await {
            CoreReply::Produce(results) => match results.as_slice() {
                [Ok(_)] => Ok(()),
                [Err(code)] => Err(unavailable(format!("append failed with {code:?}"))),
                _ => Err(unavailable("wrong number of append results".into())),
            },
            other => Err(unavailable(format!("owner core answered {other:?}"))),
        }
    }

    async fn publish_table(&self, table: PartitionTable) {
        let table = Arc::new(table);
        let installs = (0..self.cores).map(|core| self.call(core, CoreRequest::InstallTable(table.clone())));
        futures::future::join_all(installs).await;
    }

    async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> TopicResult {
        validate_topic_name(name).map_err(|code| (code, format!("invalid topic name {name:?}")))?;
        if is_internal_topic(name) {
            return Err((KafkaCode::InvalidRequest, format!("{name} is an internal topic")));
        }
        if !(1..=TOPIC_PARTITIONS_MAX).contains(&partitions) {
            return Err((KafkaCode::InvalidPartitions, format!("partitions must be 1..={TOPIC_PARTITIONS_MAX}")));
        }
        let config = config_from_overrides(&self.config.topic_defaults, &overrides)
            .map_err(|code| (code, "unsupported or invalid config".to_string()))?;
        let lock = self.controller().admin_lock.clone();
        let _admin = lock.lock().await;
        let table = self.controller().table.clone();
        if table.topics.contains_key(name) {
            return Err((KafkaCode::TopicAlreadyExists, format!("topic {name} already exists")));
        }
        if validate_only {
            return Ok(());
        }
        let owners: Vec<usize> = (0..partitions).map(|partition| table.assign_owner(name, partition)).collect();
        let meta = TopicMeta { name: name.to_string(), id: uuid::Uuid::new_v4(), owners, config, overrides };
        self.add_topic_locked(table, meta).await
    }

    /// Create partitions `first..first+owners.len()` of `name` on their owner cores.
    async fn create_on_owners(&self, name: &str, first: i32, owners: &[usize], config: &TopicConfig) -> TopicResult {
        let mut by_core: BTreeMap<usize, Vec<TopicPartition>> = BTreeMap::new();
        for (index, owner) in owners.iter().enumerate() {
            let partition = first + i32::try_from(index).expect("partitions bounded");
            by_core.entry(*owner).or_default().push(TopicPartition::new(name, partition));
        }
        let calls = by_core.into_iter().map(|(core, partitions)| {
            self.call(core, CoreRequest::CreatePartitions { partitions, config: config.clone() })
        });
        for reply in futures::future::join_all(calls).await {
            let CoreReply::Codes(codes) = reply else {
                return Err((KafkaCode::UnknownServerError, "core did not answer".to_string()));
            };
            if let Some(code) = codes.into_iter().find(|code| *code != KafkaCode::None) {
                return Err((code, format!("creating partitions of {name} failed")));
            }
        }
        Ok(())
    }

    async fn create_topics(&self, request: CreateTopicsRequest) -> CreateTopicsResponse {
        let mut results = Vec::new();
        for topic in request.topics {
            let name = topic.name.0.to_string();
            let partitions = if topic.num_partitions == -1 { self.config.default_partitions } else { topic.num_partitions };
            let overrides: BTreeMap<String, String> = topic
                .configs
                .iter()
                .filter_map(|config| config.value.as_ref().map(|value| (config.name.to_string(), value.to_string())))
                .collect();
            let result = if !matches!(topic.replication_factor, -1 | 1) {
                Err((KafkaCode::InvalidReplicationFactor, "a single node holds one replica".to_string()))
            } else if !topic.assignments.is_empty() {
                Err((KafkaCode::InvalidRequest, "manual replica assignment is not supported".to_string()))
            } else {
                self.create_topic(&name, partitions, overrides, request.validate_only).await
            };
            let mut entry = CreatableTopicResult::default()
                .with_name(topic.name.clone())
                .with_num_partitions(partitions)
                .with_replication_factor(1);
            match result {
                Ok(()) => {
                    tracing::info!(topic = %name, partitions, "created topic");
                    if let Some(meta) = self.controller().table.topics.get(&name) {
                        entry.topic_id = meta.id;
                    }
                }
                Err((code, message)) => {
                    tracing::warn!(topic = %name, ?code, %message, "create topic refused");
                    entry = entry.with_error_code(code.code()).with_error_message(Some(text(&message)));
                }
            }
            results.push(entry);
        }
        CreateTopicsResponse::default().with_topics(results)
    }

    async fn delete_topics(&self, request: DeleteTopicsRequest, version: i16) -> DeleteTopicsResponse {
        let mut wanted: Vec<(Option<String>, uuid::Uuid)> =
            request.topic_names.iter().map(|name| (Some(name.0.to_string()), uuid::Uuid::nil())).collect();
        if version >= 6 {
            wanted = request.topics.iter().map(|topic| (topic.name.as_ref().map(|name| name.0.to_string()), topic.topic_id)).collect();
        }
        let mut responses = Vec::new();
        for (name, id) in wanted {
            let lock = self.controller().admin_lock.clone();
            let _admin = lock.lock().await;
            let mut table = self.controller().table.clone();
            let found = match &name {
                Some(name) => table.topics.get(name).cloned(),
                None => table.topics.values().find(|topic| topic.id == id).cloned(),
            };
            let mut result = DeletableTopicResult::default()
                .with_name(name.clone().map(|name| TopicName(text(&name))))
                .with_topic_id(id);
            let Some(topic) = found else {
                tracing::warn!(?name, %id, "delete of unknown topic");
                responses.push(result.with_error_code(KafkaCode::UnknownTopicOrPartition.code()));
                continue;
            };
            result.name = Some(TopicName(text(&topic.name)));
            result.topic_id = topic.id;
            if is_internal_topic(&topic.name) {
                tracing::warn!(topic = %topic.name, "delete of an internal topic refused");
                responses.push(result.with_error_code(KafkaCode::InvalidRequest.code()));
                continue;
            }
            table.topics.remove(&topic.name);
            table.version += 1;
            // Persisted before the partitions go: a crash in between leaves orphan directories,
            // which start-up removes, never a topic whose data is half gone.
            let limit = self.controller().producer_id_limit;
            if let Err((code, _)) = self.persist_metadata(&table, limit).await {
                responses.push(result.with_error_code(code.code()));
                continue;
            }
            self.controller().table = table.clone();
            self.publish_table(table).await;
            self.delete_on_owners(&topic.name, &topic.owners).await;
            tracing::info!(topic = %topic.name, "deleted topic");
            responses.push(result);
        }
        DeleteTopicsResponse::default().with_responses(responses)
    }

    async fn create_partitions(&self, request: CreatePartitionsRequest) -> CreatePartitionsResponse {
        let mut results = Vec::new();
        for topic in request.topics {
            let name = topic.name.0.to_string();
            let result = self.grow_topic(&name, topic.count, request.validate_only).await;
            let mut entry = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
            if let Err((code, message)) = result {
                tracing::warn!(topic = %name, ?code, %message, "create partitions refused");
                entry = entry.with_error_code(code.code()).with_error_message(Some(text(&message)));
            }
            results.push(entry);
        }
        CreatePartitionsResponse::default().with_results(results)
    }

    async fn grow_topic(&self, name: &str, count: i32, validate_only: bool) -> TopicResult {
        let lock = self.controller().admin_lock.clone();
        let _admin = lock.lock().await;
        let mut table = self.controller().table.clone();
        let Some(topic) = table.topics.get(name).cloned() else {
            return Err((KafkaCode::UnknownTopicOrPartition, format!("unknown topic {name}")));
        };
        let current = i32::try_from(topic.owners.len()).expect("partitions bounded");
        if count <= current || count > TOPIC_PARTITIONS_MAX {
            return Err((KafkaCode::InvalidPartitions, format!("topic has {current} partitions; asked for {count}")));
        }
        if validate_only {
            return Ok(());
        }
        let added: Vec<usize> = (current..count).map(|partition| table.assign_owner(name, partition)).collect();
        self.create_on_owners(name, current, &added, &topic.config).await?;
        let entry = table.topics.get_mut(name).expect("checked");
        entry.owners.extend(added);
        table.version += 1;
        let limit = self.controller().producer_id_limit;
        // On failure the new partitions stay on their cores unrouted; start-up removes them.
        self.persist_metadata(&table, limit).await?;
        self.controller().table = table.clone();
        self.publish_table(table).await;
        tracing::info!(topic = %name, from = current, to = count, "added partitions");
        Ok(())
    }

    fn describe_configs(&self, request: DescribeConfigsRequest) -> DescribeConfigsResponse {
        let table = self.controller().table.clone();
        let results = request
            .resources
            .into_iter()
            .map(|resource| {
                let name = resource.resource_name.to_string();
                let mut result = DescribeConfigsResult::default()
                    .with_resource_type(resource.resource_type)
                    .with_resource_name(resource.resource_name.clone());
                let wanted = |key: &str| {
                    // Null (and, leniently, an empty list) asks for every key.
                    resource.configuration_keys.as_ref().is_none_or(|keys| keys.is_empty() || keys.iter().any(|k| k.as_str() == key))
                };
                let (config, overrides) = match resource.resource_type {
                    RESOURCE_TYPE_TOPIC => match table.topics.get(&name) {
                        Some(topic) => (topic.config.clone(), topic.overrides.clone()),
                        None => {
                            return result
                                .with_error_code(KafkaCode::UnknownTopicOrPartition.code())
                                .with_error_message(Some(text(&format!("unknown topic {name}"))));
                        }
                    },
                    RESOURCE_TYPE_BROKER => (self.config.topic_defaults.clone(), BTreeMap::new()),
                    _ => {
                        return result
                            .with_error_code(KafkaCode::InvalidRequest.code())
                            .with_error_message(Some(text("only topic and broker resources are supported")));
                    }
                };
                result.configs = TOPIC_CONFIG_KEYS
                    .iter()
                    .filter(|key| wanted(key))
                    .map(|key| {
                        let source = if overrides.contains_key(*key) { CONFIG_SOURCE_TOPIC } else { CONFIG_SOURCE_DEFAULT };
                        DescribeConfigsResourceResult::default()
                            .with_name(text(key))
                            .with_value(config_value(&config, key).map(|value| text(&value)))
                            .with_config_source(source)
                            .with_read_only(resource.resource_type == RESOURCE_TYPE_BROKER)
                    })
                    .collect();
                result
            })
            .collect();
        DescribeConfigsResponse::default().with_results(results)
    }

    /// Replace a topic's overrides and push the new config to its partitions.
    async fn set_topic_overrides(
        &self,
        name: &str,
        change: impl FnOnce(&mut BTreeMap<String, String>) -> Result<(), KafkaCode>,
        validate_only: bool,
    ) -> TopicResult {
        let lock = self.controller().admin_lock.clone();
        let _admin = lock.lock().await;
        let mut table = self.controller().table.clone();
        let Some(topic) = table.topics.get_mut(name) else {
            return Err((KafkaCode::UnknownTopicOrPartition, format!("unknown topic {name}")));
        };
        let mut overrides = topic.overrides.clone();
        change(&mut overrides).map_err(|code| (code, "invalid config operation".to_string()))?;
        let config = config_from_overrides(&self.config.topic_defaults, &overrides)
            .map_err(|code| (code, "unsupported or invalid config".to_string()))?;
        if validate_only {
            return Ok(());
        }
        topic.overrides = overrides;
        topic.config = config.clone();
        let owners = topic.owners.clone();
        table.version += 1;
        let limit = self.controller().producer_id_limit;
        self.persist_metadata(&table, limit).await?;
        self.controller().table = table.clone();
        self.publish_table(table).await;
        let mut by_core: BTreeMap<usize, Vec<TopicPartition>> = BTreeMap::new();
        for (index, owner) in owners.iter().enumerate() {
            by_core.entry(*owner).or_default().push(TopicPartition::new(name, i32::try_from(index).expect("bounded")));
        }
        let updates = by_core
            .into_iter()
            .map(|(core, partitions)| self.call(core, CoreRequest::UpdateConfig { partitions, config: config.clone() }));
        futures::future::join_all(updates).await;
        tracing::info!(topic = %name, ?config, "altered topic config");
        Ok(())
    }

    fn config_result(resource_type: i8, name: &StrBytes, result: TopicResult) -> (i16, Option<StrBytes>, i8, StrBytes) {
        match result {
            Ok(()) => (0, None, resource_type, name.clone()),
            Err((code, message)) => {
                tracing::warn!(resource = %name, ?code, %message, "alter config refused");
                (code.code(), Some(text(&message)), resource_type, name.clone())
            }
        }
    }

    async fn alter_configs(&self, request: AlterConfigsRequest) -> AlterConfigsResponse {
        let mut responses = Vec::new();
        for resource in request.resources {
            let result = if resource.resource_type != RESOURCE_TYPE_TOPIC {
                Err((KafkaCode::InvalidRequest, "only topic configs can be altered".to_string()))
            } else {
                let wanted: BTreeMap<String, String> = resource
                    .configs
                    .iter()
                    .filter_map(|config| config.value.as_ref().map(|value| (config.name.to_string(), value.to_string())))
                    .collect();
                // AlterConfigs replaces the whole set of overrides.
                self.set_topic_overrides(&resource.resource_name, |overrides| {
                    *overrides = wanted;
                    Ok(())
                }, request.validate_only)
                .await
            };
            let (code, message, kind, name) = Self::config_result(resource.resource_type, &resource.resource_name, result);
            responses.push(
                alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_error_code(code)
                    .with_error_message(message)
                    .with_resource_type(kind)
                    .with_resource_name(name),
            );
        }
        AlterConfigsResponse::default().with_responses(responses)
    }

    async fn incremental_alter_configs(&self, request: IncrementalAlterConfigsRequest) -> IncrementalAlterConfigsResponse {
        let mut responses = Vec::new();
        for resource in request.resources {
            let result = if resource.resource_type != RESOURCE_TYPE_TOPIC {
                Err((KafkaCode::InvalidRequest, "only topic configs can be altered".to_string()))
            } else {
                let operations: Vec<(String, i8, Option<String>)> = resource
                    .configs
                    .iter()
                    .map(|config| (config.name.to_string(), config.config_operation, config.value.as_ref().map(|v| v.to_string())))
                    .collect();
                self.set_topic_overrides(&resource.resource_name, |overrides| {
                    for (key, operation, value) in operations {
                        match (operation, value) {
                            (0, Some(value)) => {
                                overrides.insert(key, value);
                            }
                            (1, _) => {
                                overrides.remove(&key);
                            }
                            // APPEND and SUBTRACT apply to list configs, which we do not have.
                            _ => return Err(KafkaCode::InvalidConfig),
                        }
                    }
                    Ok(())
                }, request.validate_only)
                .await
            };
            let (code, message, kind, name) = Self::config_result(resource.resource_type, &resource.resource_name, result);
            responses.push(
                incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_error_code(code)
                    .with_error_message(message)
                    .with_resource_type(kind)
                    .with_resource_name(name),
            );
        }
        IncrementalAlterConfigsResponse::default().with_responses(responses)
    }

    /// A producer id never handed out before, even across restarts (disk storage): ids come from
    /// blocks of [`PRODUCER_ID_BLOCK`] whose end is persisted before the first id is used.
    async fn allocate_producer_id(&self) -> Result<i64, KafkaCode> {
        let take = |controller: &mut ControllerState| {
            let fits = controller.metadata.is_none() || controller.next_producer_id < controller.producer_id_limit;
            fits.then(|| {
                controller.next_producer_id += 1;
                controller.next_producer_id - 1
            })
        };
        if let Some(id) = take(&mut self.controller()) {
            return Ok(id);
        }
        let lock = self.controller().admin_lock.clone();
        let _admin = lock.lock().await;
        // Another allocation may have persisted a block while we waited.
        if let Some(id) = take(&mut self.controller()) {
            return Ok(id);
        }
        let (table, limit) = {
            let controller = self.controller();
            (controller.table.clone(), controller.producer_id_limit.max(controller.next_producer_id) + PRODUCER_ID_BLOCK)
        };
        self.persist_metadata(&table, limit).await.map_err(|_| KafkaCode::CoordinatorNotAvailable)?;
        let mut controller = self.controller();
        controller.producer_id_limit = limit;
        Ok(take(&mut controller).expect("a fresh block has room"))
    }

    async fn init_producer_id(&self, request: InitProducerIdRequest) -> InitProducerIdResponse {
        if request.transactional_id.is_some() {
            tracing::warn!("InitProducerId with a transactional id: transactions are not supported");
            return InitProducerIdResponse::default()
                .with_error_code(KafkaCode::TransactionalIdAuthorizationFailed.code())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
        }
        // A known producer re-initialising (KIP-360) keeps its id and bumps its epoch.
        let (producer_id, epoch) = if request.producer_id.0 >= 0 && request.producer_epoch >= 0 && request.producer_epoch < i16::MAX {
            (request.producer_id.0, request.producer_epoch + 1)
        } else {
            match self.allocate_producer_id().await {
                Ok(id) => (id, 0),
                Err(code) => {
                    return InitProducerIdResponse::default()
                        .with_error_code(code.code())
                        .with_producer_id(ProducerId(-1))
                        .with_producer_epoch(-1);
                }
            }
        };
        InitProducerIdResponse::default().with_producer_id(ProducerId(producer_id)).with_producer_epoch(epoch)
    }

    fn deliver_group_replies(&self, replies: Vec<(ReplyToken, GroupReply)>) {
        let mut controller = self.controller();
        for (token, reply) in replies {
            if let Some(waiter) = controller.group_waiters.remove(&token) {
                // The client may have disconnected; its reply is dropped.
                let _ = waiter.send(reply);
            }
        }
    }

    /// Run a group operation that may answer later, and wait for its answer.
    async fn group_wait(&self, operation: impl FnOnce(&mut GroupCoordinator, ReplyToken) -> Vec<(ReplyToken, GroupReply)>) -> Option<GroupReply> {
        let (sender, receiver) = oneshot::channel();
        let replies = {
            let mut controller = self.controller();
            let token = controller.next_token;
            controller.next_token += 1;
            controller.group_waiters.insert(token, sender);
            operation(&mut controller.groups, token)
        };
        self.deliver_group_replies(replies);
        receiver.await.ok()
    }

    async fn join_group(&self, request: JoinGroupRequest, client_id: String, client_host: String) -> JoinGroupResponse {
        let join = JoinRequest {
            group: request.group_id.0.to_string(),
            member_id: request.member_id.to_string(),
            client_id,
            client_host,
            session_timeout_ms: request.session_timeout_ms,
            rebalance_timeout_ms: request.rebalance_timeout_ms,
            protocol_type: request.protocol_type.to_string(),
            protocols: request.protocols.iter().map(|protocol| (protocol.name.to_string(), protocol.metadata.clone())).collect(),
        };
        let reply = self.group_wait(|groups, token| groups.join(Instant::now(), token, join)).await;
        let Some(GroupReply::Join(reply)) = reply else {
            return JoinGroupResponse::default().with_error_code(KafkaCode::CoordinatorNotAvailable.code()).with_generation_id(-1);
        };
        if reply.error != KafkaCode::None {
            tracing::info!(group = %request.group_id.0, error = ?reply.error, "join group refused");
        }
        JoinGroupResponse::default()
            .with_error_code(reply.error.code())
            .with_generation_id(reply.generation)
            .with_protocol_type(Some(text(&reply.protocol_type)))
            .with_protocol_name(Some(text(&reply.protocol)))
            .with_leader(text(&reply.leader))
            .with_member_id(text(&reply.member_id))
            .with_members(
                reply
                    .members
                    .into_iter()
                    .map(|(id, metadata)| JoinGroupResponseMember::default().with_member_id(text(&id)).with_metadata(metadata))
                    .collect(),
            )
    }

    async fn sync_group(&self, request: SyncGroupRequest) -> SyncGroupResponse {
        let group = request.group_id.0.to_string();
        let member = request.member_id.to_string();
        let assignments =
            request.assignments.iter().map(|assignment| (assignment.member_id.to_string(), assignment.assignment.clone())).collect();
        let reply = self
            .group_wait(|groups, token| groups.sync(Instant::now(), token, &group, request.generation_id, &member, assignments))
            .await;
        let Some(GroupReply::Sync(reply)) = reply else {
            return SyncGroupResponse::default().with_error_code(KafkaCode::CoordinatorNotAvailable.code());
        };
        SyncGroupResponse::default()
            .with_error_code(reply.error.code())
            .with_protocol_type(Some(text(&reply.protocol_type)))
            .with_protocol_name(Some(text(&reply.protocol)))
            .with_assignment(reply.assignment)
    }

    fn heartbeat(&self, request: HeartbeatRequest) -> HeartbeatResponse {
        let code = self.controller().groups.heartbeat(
            Instant::now(),
            &request.group_id.0,
            request.generation_id,
            &request.member_id,
        );
        HeartbeatResponse::default().with_error_code(code.code())
    }

    fn leave_group(&self, request: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        let members: Vec<String> = if version >= 3 {
            request.members.iter().map(|member| member.member_id.to_string()).collect()
        } else {
            vec![request.member_id.to_string()]
        };
        let (codes, replies) = self.controller().groups.leave(Instant::now(), &request.group_id.0, &members);
        self.deliver_group_replies(replies);
        tracing::info!(group = %request.group_id.0, ?members, "members left group");
        let error = if version < 3 { codes.first().copied().unwrap_or(KafkaCode::None) } else { KafkaCode::None };
        let response = LeaveGroupResponse::default().with_error_code(error.code());
        if version < 3 {
            // The per-member list only exists from v3 on; encoding it earlier is an error.
            return response;
        }
        response.with_members(
            members
                .iter()
                .zip(codes)
                .map(|(id, code)| leave_group_response::MemberResponse::default().with_member_id(text(id)).with_error_code(code.code()))
                .collect(),
        )
    }

    async fn offset_commit(&self, request: OffsetCommitRequest) -> OffsetCommitResponse {
        let table = self.controller().table.clone();
        let mut offsets = Vec::new();
        let mut unknown = Vec::new();
        for topic in &request.topics {
            for partition in &topic.partitions {
                let tp = TopicPartition::new(topic.name.0.to_string(), partition.partition_index);
                if table.owner(&tp).is_none() {
                    unknown.push(tp);
                    continue;
                }
                let metadata = partition.committed_metadata.as_ref().map(|m| m.to_string()).unwrap_or_default();
                offsets.push((tp, CommittedOffset { offset: partition.committed_offset, metadata }));
            }
        }
        let group = request.group_id.0.to_string();
        // Check membership and generation first, make the offsets durable, then apply them.
        let mut code = self.controller().groups.commit(
            Instant::now(),
            &group,
            request.generation_id_or_member_epoch,
            &request.member_id,
            Vec::new(),
        );
        if code == KafkaCode::None {
            let entries: Vec<(TopicPartition, Option<CommittedOffset>)> =
                offsets.into_iter().map(|(tp, committed)| (tp, Some(committed))).collect();
            match self.persist_offsets(&group, &entries).await {
                Ok(()) => {
                    let mut controller = self.controller();
                    for (tp, committed) in entries {
                        controller.groups.restore_offset(&group, tp, committed);
                    }
                }
                Err(error) => code = error,
            }
        }
        if code != KafkaCode::None {
            tracing::info!(group = %request.group_id.0, ?code, "offset commit refused");
        }
        let topics = request
            .topics
            .iter()
            .map(|topic| {
                let partitions = topic
                    .partitions
                    .iter()
                    .map(|partition| {
                        let tp = TopicPartition::new(topic.name.0.to_string(), partition.partition_index);
                        let partition_code = if unknown.contains(&tp) { KafkaCode::UnknownTopicOrPartition } else { code };
                        OffsetCommitResponsePartition::default()
                            .with_partition_index(partition.partition_index)
                            .with_error_code(partition_code.code())
                    })
                    .collect();
                OffsetCommitResponseTopic::default().with_name(topic.name.clone()).with_partitions(partitions)
            })
            .collect();
        OffsetCommitResponse::default().with_topics(topics)
    }

    fn offset_fetch(&self, request: OffsetFetchRequest) -> OffsetFetchResponse {
        let controller = self.controller();
        let group = request.group_id.0.to_string();
        let wanted: Vec<(String, Vec<i32>)> = match &request.topics {
            Some(topics) => topics.iter().map(|topic| (topic.name.0.to_string(), topic.partition_indexes.clone())).collect(),
            None => {
                let mut all: BTreeMap<String, Vec<i32>> = BTreeMap::new();
                for (tp, _) in controller.groups.committed_all(&group) {
                    all.entry(tp.topic).or_default().push(tp.partition);
                }
                all.into_iter().collect()
            }
        };
        let topics = wanted
            .into_iter()
            .map(|(topic, partitions)| {
                let partitions = partitions
                    .into_iter()
                    .map(|index| {
                        let committed = controller.groups.committed(&group, &TopicPartition::new(topic.clone(), index));
                        OffsetFetchResponsePartition::default()
                            .with_partition_index(index)
                            .with_committed_offset(committed.map_or(-1, |c| c.offset))
                            .with_committed_leader_epoch(-1)
                            .with_metadata(Some(text(committed.map_or("", |c| c.metadata.as_str()))))
                    })
                    .collect();
                OffsetFetchResponseTopic::default().with_name(TopicName(text(&topic))).with_partitions(partitions)
            })
            .collect();
        OffsetFetchResponse::default().with_topics(topics)
    }

    fn list_groups(&self, request: ListGroupsRequest) -> ListGroupsResponse {
        let groups = self
            .controller()
            .groups
            .list()
            .into_iter()
            .filter(|(_, _, state)| {
                request.states_filter.is_empty() || request.states_filter.iter().any(|wanted| wanted.as_str() == state.name())
            })
            .map(|(id, protocol_type, state)| {
                ListedGroup::default()
                    .with_group_id(GroupId(text(&id)))
                    .with_protocol_type(text(&protocol_type))
                    .with_group_state(text(state.name()))
                    .with_group_type(text("classic"))
            })
            .collect();
        ListGroupsResponse::default().with_groups(groups)
    }

    fn describe_groups(&self, request: DescribeGroupsRequest) -> DescribeGroupsResponse {
        let controller = self.controller();
        let groups = request
            .groups
            .into_iter()
            .map(|id| {
                let described = DescribedGroup::default().with_group_id(id.clone());
                match controller.groups.describe(&id.0) {
                    // Kafka describes an unknown group as Dead with no members.
                    None => described.with_group_state(text("Dead")),
                    Some(description) => described
                        .with_group_state(text(description.state.name()))
                        .with_protocol_type(text(&description.protocol_type))
                        .with_protocol_data(text(&description.protocol))
                        .with_members(
                            description
                                .members
                                .into_iter()
                                .map(|member| {
                                    DescribedGroupMember::default()
                                        .with_member_id(text(&member.member_id))
                                        .with_client_id(text(&member.client_id))
                                        .with_client_host(text(&member.client_host))
                                        .with_member_metadata(member.metadata)
                                        .with_member_assignment(member.assignment)
                                })
                                .collect(),
                        ),
                }
            })
            .collect();
        DescribeGroupsResponse::default().with_groups(groups)
    }

    async fn delete_groups(&self, request: DeleteGroupsRequest) -> DeleteGroupsResponse {
        let mut results = Vec::with_capacity(request.groups_names.len());
        for id in request.groups_names {
            let mut code = self.controller().groups.deletable(&id.0);
            if code == KafkaCode::None {
                // Tombstones first: a restart must not bring the deleted offsets back.
                let tombstones: Vec<(TopicPartition, Option<CommittedOffset>)> =
                    self.controller().groups.committed_all(&id.0).into_iter().map(|(tp, _)| (tp, None)).collect();
                if let Err(error) = self.persist_offsets(&id.0, &tombstones).await {
                    code = error;
                } else {
                    code = self.controller().groups.delete(&id.0);
                }
            }
            tracing::info!(group = %id.0, ?code, "delete group");
            results.push(DeletableGroupResult::default().with_group_id(id).with_error_code(code.code()));
        }
        DeleteGroupsResponse::default().with_results(results)
    }
}
