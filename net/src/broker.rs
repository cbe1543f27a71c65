//! Kafka request handlers, run on the core that received the request.
//!
//! Partition work is split by owner core and sent as one [`CoreRequest`] per owner; cluster-wide
//! work (topics, configs, groups, producer ids) goes to the controller on core 0. Responses are
//! built here and encoded for the connection, which writes them in request order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::backend::{AppendBatches, PartitionStore, ReadOutcome, TopicPartition};
use crate::batch::parse_batches;
use crate::codec::{
    api_version_entries, client_id, encode_api_versions_too_new, encode_legacy_produce_response,
    encode_response, CodecError, DecodedRequest,
};
use crate::errors::KafkaCode;
use crate::shard::{CoreReply, CoreRequest, ProduceItem, ReadFailure, ReadItem, Shard};
use crate::table::PartitionTable;

/// Largest Fetch response we build, in bytes, whatever the client asks (Kafka's broker caps it
/// with `fetch.max.bytes`, default 55 MiB). Also caps each partition's share.
pub const FETCH_RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

/// Where a partition's answer goes in the response: (topic index, partition index).
type Slot = (usize, usize);
/// A ListOffsets lookup: the partition and the timestamp (-1 latest, -2 earliest).
type OffsetLookup = (TopicPartition, i64);

impl<S: PartitionStore + 'static> Shard<S> {
    /// Serve one decoded request. `Ok(None)` means no response is sent (Produce with acks=0).
    pub async fn serve(&self, request: DecodedRequest, peer: &str) -> Result<Option<Bytes>, CodecError> {
        let (header, api_key, body) = match request {
            DecodedRequest::ApiVersionsTooNew { correlation_id } => {
                return Ok(Some(encode_api_versions_too_new(correlation_id)));
            }
            DecodedRequest::LegacyProduce { header, partitions, acks } => {
                tracing::warn!(peer, client = client_id(&header), version = header.request_api_version,
                    "Produce v0-2 refused with UNSUPPORTED_VERSION");
                if acks == 0 {
                    return Ok(None);
                }
                let response = encode_legacy_produce_response(header.correlation_id, header.request_api_version, &partitions);
                return Ok(Some(response));
            }
            DecodedRequest::Request { header, api_key, body } => (header, api_key, body),
        };
        let version = header.request_api_version;
        let started = Instant::now();
        let client = client_id(&header).to_string();
        let response = match body {
            RequestKind::ApiVersions(_) => Some(ResponseKind::ApiVersions(self.api_versions())),
            RequestKind::Metadata(request) => Some(ResponseKind::Metadata(self.metadata(request, version).await)),
            RequestKind::Produce(request) => self.produce(request, &client, peer).await.map(ResponseKind::Produce),
            RequestKind::Fetch(request) => Some(ResponseKind::Fetch(self.fetch(request).await)),
            RequestKind::ListOffsets(request) => Some(ResponseKind::ListOffsets(self.list_offsets(request).await)),
            RequestKind::FindCoordinator(request) => Some(ResponseKind::FindCoordinator(self.find_coordinator(request, version))),
            RequestKind::DescribeCluster(_) => Some(ResponseKind::DescribeCluster(self.describe_cluster())),
            forwarded => {
                let request = CoreRequest::Controller { request: Box::new(forwarded), version, client_id: client.clone(), client_host: format!("/{peer}") };
                match self.call(0, request).await {
                    CoreReply::Kafka(response) => Some(response),
                    other => {
                        tracing::error!(?api_key, ?other, "controller did not answer");
                        return Err(CodecError::Malformed { api_key, version, reason: "controller unavailable".into() });
                    }
                }
            }
        };
        self.metrics.record_request(api_name(api_key), started.elapsed(), false);
        match response {
            None => Ok(None),
            Some(response) => encode_response(header.correlation_id, api_key, version, &response).map(Some),
        }
    }

    fn api_versions(&self) -> ApiVersionsResponse {
        let keys: Vec<ApiVersion> = api_version_entries();
        ApiVersionsResponse::default().with_api_keys(keys).with_finalized_features_epoch(-1)
    }

    fn broker_entry(&self) -> MetadataResponseBroker {
        MetadataResponseBroker::default()
            .with_node_id(BrokerId(self.config.node_id))
            .with_host(text(&self.config.advertised_host))
            .with_port(self.config.advertised_port)
    }

    async fn metadata(&self, request: MetadataRequest, version: i16) -> MetadataResponse {
        let mut table = self.table();
        // v0: an empty list means all topics; v1+: null means all, empty means none.
        let all = request.topics.is_none() || (version == 0 && request.topics.as_ref().is_some_and(Vec::is_empty));
        let mut wanted: Vec<(Option<String>, uuid::Uuid)> = request
            .topics
            .unwrap_or_default()
            .into_iter()
            .map(|topic| (topic.name.map(|name| name.0.to_string()), topic.topic_id))
            .collect();
        if all {
            // Internal topics are listed only when asked for by name (Kafka's admin clients hide
            // them by default too).
            wanted = table
                .topics
                .keys()
                .filter(|name| !crate::offsets_topic::is_internal_topic(name))
                .map(|name| (Some(name.clone()), uuid::Uuid::nil()))
                .collect();
        }
        let allow_auto = self.config.auto_create_topics && (version < 4 || request.allow_auto_topic_creation);
        let missing: Vec<String> = wanted
            .iter()
            .filter_map(|(name, _)| name.clone())
            .filter(|name| !table.topics.contains_key(name) && crate::table::validate_topic_name(name).is_ok())
            .collect();
        if allow_auto && !missing.is_empty() {
            self.call(0, CoreRequest::AutoCreateTopics(missing)).await;
            table = self.table();
        }
        let topics = wanted.into_iter().map(|(name, id)| self.metadata_topic(&table, name, id)).collect();
        MetadataResponse::default()
            .with_brokers(vec![self.broker_entry()])
            .with_cluster_id(Some(text(&self.config.cluster_id)))
            .with_controller_id(BrokerId(self.config.node_id))
            .with_topics(topics)
    }

    fn metadata_topic(&self, table: &PartitionTable, name: Option<String>, id: uuid::Uuid) -> MetadataResponseTopic {
        let found = match &name {
            Some(name) => table.topics.get(name),
            None => table.topics.values().find(|topic| topic.id == id),
        };
        let Some(topic) = found else {
            let code = if name.as_deref().is_some_and(|name| crate::table::validate_topic_name(name).is_err()) {
                KafkaCode::InvalidTopic
            } else {
                KafkaCode::UnknownTopicOrPartition
            };
            return MetadataResponseTopic::default()
                .with_error_code(code.code())
                .with_name(name.map(|name| TopicName(text(&name))))
                .with_topic_id(id);
        };
        let node = BrokerId(self.config.node_id);
        let partitions = (0..topic.owners.len())
            .map(|index| {
                MetadataResponsePartition::default()
                    .with_partition_index(i32::try_from(index).expect("partitions bounded"))
                    .with_leader_id(node)
                    .with_leader_epoch(0)
                    .with_replica_nodes(vec![node])
                    .with_isr_nodes(vec![node])
            })
            .collect();
        MetadataResponseTopic::default()
            .with_name(Some(TopicName(text(&topic.name))))
            .with_topic_id(topic.id)
            .with_is_internal(crate::offsets_topic::is_internal_topic(&topic.name))
            .with_partitions(partitions)
    }

    async fn produce(&self, request: ProduceRequest, client: &str, peer: &str) -> Option<ProduceResponse> {
        let table = self.table();
        let mut responses: Vec<TopicProduceResponse> = Vec::with_capacity(request.topic_data.len());
        let mut by_core: BTreeMap<usize, (Vec<ProduceItem>, Vec<Slot>)> = BTreeMap::new();
        let acks_valid = matches!(request.acks, -1..=1);
        for (topic_index, topic) in request.topic_data.into_iter().enumerate() {
            let name = topic.name.0.to_string();
            let max_message_bytes = table.topics.get(&name).map(|meta| meta.config.max_message_bytes);
            let mut partition_responses = Vec::with_capacity(topic.partition_data.len());
            for (partition_index, data) in topic.partition_data.into_iter().enumerate() {
                let tp = TopicPartition::new(name.clone(), data.index);
                partition_responses.push(
                    PartitionProduceResponse::default().with_index(data.index).with_base_offset(-1).with_log_append_time_ms(-1).with_log_start_offset(-1),
                );
                let verdict = self.validate_produce(&table, &tp, data.records, max_message_bytes, acks_valid, request.transactional_id.is_some());
                match verdict {
                    Ok(batches) => {
                        let owner = table.owner(&tp).expect("validated");
                        let entry = by_core.entry(owner).or_default();
                        entry.0.push(ProduceItem { partition: tp, batches });
                        entry.1.push((topic_index, partition_index));
                    }
                    Err((code, reason)) => {
                        tracing::warn!(peer, client, partition = %tp, ?code, %reason, "produce refused");
                        partition_responses[partition_index].error_code = code.code();
                    }
                }
            }
            responses.push(TopicProduceResponse::default().with_name(topic.name).with_partition_responses(partition_responses));
        }
        let calls = by_core.into_iter().map(|(core, (items, slots))| async move { (self.call(core, CoreRequest::Produce(items)).await, slots) });
        for (reply, slots) in futures::future::join_all(calls).await {
            let outcomes = match reply {
                CoreReply::Produce(outcomes) => outcomes,
                _ => vec![Err(KafkaCode::UnknownServerError); slots.len()],
            };
            assert_eq!(outcomes.len(), slots.len());
            for (outcome, (topic_index, partition_index)) in outcomes.into_iter().zip(slots) {
                let response = &mut responses[topic_index].partition_responses[partition_index];
                match outcome {
                    Ok(appended) => {
                        response.base_offset = appended.base_offset;
                        response.log_append_time_ms = appended.log_append_time_ms;
                        response.log_start_offset = appended.log_start_offset;
                    }
                    Err(code) => response.error_code = code.code(),
                }
            }
        }
        if request.acks == 0 {
            return None;
        }
        Some(ProduceResponse::default().with_responses(responses))
    }

    /// Check one partition's records before they leave this core.
    fn validate_produce(
        &self,
        table: &PartitionTable,
        partition: &TopicPartition,
        records: Option<Bytes>,
        max_message_bytes: Option<i32>,
        acks_valid: bool,
        transactional: bool,
    ) -> Result<AppendBatches, (KafkaCode, String)> {
        if !acks_valid {
            return Err((KafkaCode::InvalidRequiredAcks, "acks must be 0, 1 or -1".into()));
        }
        if transactional {
            return Err((KafkaCode::TransactionalIdAuthorizationFailed, "transactions are not supported".into()));
        }
        if table.owner(partition).is_none() {
            return Err((KafkaCode::UnknownTopicOrPartition, "no such topic or partition".into()));
        }
        if crate::offsets_topic::is_internal_topic(&partition.topic) {
            return Err((KafkaCode::InvalidTopic, "internal topics are written by the broker only".into()));
        }
        let bytes = records.unwrap_or_default();
        let headers = parse_batches(&bytes).map_err(|error| (KafkaCode::from(&error), error.to_string()))?;
        let limit = usize::try_from(max_message_bytes.unwrap_or(i32::MAX)).unwrap_or(0);
        if let Some(header) = headers.iter().find(|header| header.size_bytes > limit) {
            return Err((KafkaCode::MessageTooLarge, format!("batch of {} bytes above max.message.bytes {limit}", header.size_bytes)));
        }
        if headers.iter().any(|header| header.is_transactional()) {
            return Err((KafkaCode::TransactionalIdAuthorizationFailed, "transactional batches are not supported".into()));
        }
        let first = headers[0];
        let mixed = headers.iter().any(|header| header.producer_id != first.producer_id || header.producer_epoch != first.producer_epoch);
        if mixed {
            return Err((KafkaCode::InvalidRecord, "batches of one request mix producers".into()));
        }
        Ok(AppendBatches { bytes, headers })
    }

    async fn fetch(&self, request: FetchRequest) -> FetchResponse {
        let wait_ms = u64::try_from(request.max_wait_ms).unwrap_or(0).min(self.config.fetch_wait_ms_max);
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
        let max_bytes = usize::try_from(request.max_bytes)
            .ok()
            .filter(|bytes| *bytes > 0)
            .map_or(FETCH_RESPONSE_BYTES_MAX, |bytes| bytes.min(FETCH_RESPONSE_BYTES_MAX));
        let mut wanted: Vec<ReadItem> = Vec::new();
        let mut shape: Vec<(TopicName, Vec<i32>)> = Vec::new();
        for topic in &request.topics {
            shape.push((topic.topic.clone(), topic.partitions.iter().map(|p| p.partition).collect()));
            for partition in &topic.partitions {
                wanted.push(ReadItem {
                    partition: TopicPartition::new(topic.topic.0.to_string(), partition.partition),
                    offset: partition.fetch_offset,
                    max_bytes: usize::try_from(partition.partition_max_bytes).unwrap_or(0).min(max_bytes),
                });
            }
        }
        loop {
            let table = self.table();
            let results = self.read_all(&table, &wanted).await;
            let total: usize = results.iter().map(|result| result.as_ref().map_or(0, |read| read.records.len())).sum();
            let failed = results.iter().any(Result::is_err);
            let now = Instant::now();
            if total >= min_bytes || failed || now >= deadline || wanted.is_empty() {
                return Self::fetch_response(shape, results, max_bytes);
            }
            // Long poll: park on the owners until an append moves a high watermark or time is up.
            let remaining = deadline - now;
            let mut by_core: BTreeMap<usize, Vec<(TopicPartition, i64)>> = BTreeMap::new();
            for (item, result) in wanted.iter().zip(&results) {
                let high_watermark = result.as_ref().map_or(0, |read| read.high_watermark);
                if let Some(owner) = table.owner(&item.partition) {
                    by_core.entry(owner).or_default().push((item.partition.clone(), high_watermark));
                }
            }
            let mut waits: Vec<crate::shard::LocalFuture<'_, CoreReply>> = by_core
                .into_iter()
                .map(|(core, partitions)| self.call(core, CoreRequest::WaitForData { partitions, timeout: remaining }))
                .collect();
            waits.push(Box::pin(async move {
                glommio::timer::sleep(remaining).await;
                CoreReply::Done
            }));
            futures::future::select_all(waits).await;
        }
    }

    async fn read_all(&self, table: &PartitionTable, wanted: &[ReadItem]) -> Vec<Result<ReadOutcome, ReadFailure>> {
        let unknown = ReadFailure { code: KafkaCode::UnknownTopicOrPartition, offsets: None };
        let mut results: Vec<Result<ReadOutcome, ReadFailure>> = vec![Err(unknown); wanted.len()];
        let mut by_core: BTreeMap<usize, (Vec<ReadItem>, Vec<usize>)> = BTreeMap::new();
        for (index, item) in wanted.iter().enumerate() {
            if let Some(owner) = table.owner(&item.partition) {
                let entry = by_core.entry(owner).or_default();
                entry.0.push(item.clone());
                entry.1.push(index);
            }
        }
        let calls = by_core.into_iter().map(|(core, (items, indexes))| async move { (self.call(core, CoreRequest::Read(items)).await, indexes) });
        for (reply, indexes) in futures::future::join_all(calls).await {
            let CoreReply::Read(outcomes) = reply else { continue };
            for (outcome, index) in outcomes.into_iter().zip(indexes) {
                results[index] = outcome;
            }
        }
        results
    }

    fn fetch_response(shape: Vec<(TopicName, Vec<i32>)>, results: Vec<Result<ReadOutcome, ReadFailure>>, max_bytes: usize) -> FetchResponse {
        let mut results = results.into_iter();
        let mut total = 0usize;
        let mut topics = Vec::with_capacity(shape.len());
        for (name, indexes) in shape {
            let mut partitions = Vec::with_capacity(indexes.len());
            for index in indexes {
                let result = results.next().expect("one result per partition");
                let mut data = PartitionData::default()
                    .with_partition_index(index)
                    .with_aborted_transactions(Some(Vec::new()))
                    .with_preferred_read_replica(BrokerId(-1));
                match result {
                    Ok(read) => {
                        // The response-wide max_bytes: always keep the first non-empty partition
                        // (so a consumer can make progress), drop later ones that would overflow.
                        let records = if total > 0 && total + read.records.len() > max_bytes { Bytes::new() } else { read.records };
                        total += records.len();
                        data = data
                            .with_high_watermark(read.high_watermark)
                            .with_last_stable_offset(read.high_watermark)
                            .with_log_start_offset(read.log_start_offset)
                            .with_records(Some(records));
                    }
                    Err(failure) => {
                        let offsets = failure.offsets;
                        data = data
                            .with_error_code(failure.code.code())
                            .with_high_watermark(offsets.map_or(-1, |o| o.high_watermark))
                            .with_last_stable_offset(offsets.map_or(-1, |o| o.high_watermark))
                            .with_log_start_offset(offsets.map_or(-1, |o| o.log_start_offset))
                            .with_records(Some(Bytes::new()));
                    }
                }
                partitions.push(data);
            }
            topics.push(FetchableTopicResponse::default().with_topic(name).with_partitions(partitions));
        }
        FetchResponse::default().with_responses(topics)
    }

    async fn list_offsets(&self, request: ListOffsetsRequest) -> ListOffsetsResponse {
        let table = self.table();
        let mut responses: Vec<ListOffsetsTopicResponse> = Vec::new();
        let mut by_core: BTreeMap<usize, (Vec<OffsetLookup>, Vec<Slot>)> = BTreeMap::new();
        for (topic_index, topic) in request.topics.iter().enumerate() {
            let mut partitions = Vec::new();
            for (partition_index, partition) in topic.partitions.iter().enumerate() {
                let tp = TopicPartition::new(topic.name.0.to_string(), partition.partition_index);
                let mut response = ListOffsetsPartitionResponse::default()
                    .with_partition_index(partition.partition_index)
                    .with_timestamp(-1)
                    .with_offset(-1);
                match table.owner(&tp) {
                    Some(owner) => {
                        let entry = by_core.entry(owner).or_default();
                        entry.0.push((tp, partition.timestamp));
                        entry.1.push((topic_index, partition_index));
                    }
                    None => response.error_code = KafkaCode::UnknownTopicOrPartition.code(),
                }
                partitions.push(response);
            }
            responses.push(ListOffsetsTopicResponse::default().with_name(topic.name.clone()).with_partitions(partitions));
        }
        let calls = by_core.into_iter().map(|(core, (items, slots))| async move { (self.call(core, CoreRequest::ListOffsets(items)).await, slots) });
        for (reply, slots) in futures::future::join_all(calls).await {
            let CoreReply::ListOffsets(outcomes) = reply else { continue };
            for (outcome, (topic_index, partition_index)) in outcomes.into_iter().zip(slots) {
                let response = &mut responses[topic_index].partitions[partition_index];
                match outcome {
                    Ok((offset, timestamp)) => {
                        response.offset = offset;
                        response.timestamp = timestamp;
                    }
                    Err(code) => response.error_code = code.code(),
                }
            }
        }
        ListOffsetsResponse::default().with_topics(responses)
    }

    fn find_coordinator(&self, request: FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
        // A single node coordinates every group (key type 0); transactions (1) are not supported.
        let code = if request.key_type == 0 { KafkaCode::None } else { KafkaCode::CoordinatorNotAvailable };
        let node = BrokerId(if code == KafkaCode::None { self.config.node_id } else { -1 });
        let host = text(&self.config.advertised_host);
        let port = self.config.advertised_port;
        if version >= 4 {
            let coordinators = request
                .coordinator_keys
                .iter()
                .map(|key| {
                    Coordinator::default().with_key(key.clone()).with_node_id(node).with_host(host.clone()).with_port(port).with_error_code(code.code())
                })
                .collect();
            return FindCoordinatorResponse::default().with_coordinators(coordinators);
        }
        FindCoordinatorResponse::default().with_error_code(code.code()).with_node_id(node).with_host(host).with_port(port)
    }

    fn describe_cluster(&self) -> DescribeClusterResponse {
        let broker = DescribeClusterBroker::default()
            .with_broker_id(BrokerId(self.config.node_id))
            .with_host(text(&self.config.advertised_host))
            .with_port(self.config.advertised_port);
        DescribeClusterResponse::default()
            .with_cluster_id(text(&self.config.cluster_id))
            .with_controller_id(BrokerId(self.config.node_id))
            .with_brokers(vec![broker])
    }
}

/// Static name of an API for metrics and logs.
pub fn api_name(api_key: ApiKey) -> &'static str {
    match api_key {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::AlterConfigs => "AlterConfigs",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::DeleteGroups => "DeleteGroups",
        ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
        ApiKey::DescribeCluster => "DescribeCluster",
        _ => "Other",
    }
}
