//! A small blocking Kafka client (std sockets): admin, producer and consumer operations used by
//! the `rill` CLI. It speaks to any Kafka-compatible broker at the fixed versions below, which
//! every Kafka since 2.4 and Rill serve.
//!
//! Groups: the consumer reads committed offsets and commits as a standalone member (generation
//! -1), which Kafka and Rill accept only while the group has no active members; joining a group
//! with rebalancing is left to full clients.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;
use thiserror::Error;

/// Longest wait for any single response.
pub const CLIENT_IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response frame accepted, in bytes.
pub const CLIENT_FRAME_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Bytes asked for per partition per fetch.
pub const CLIENT_FETCH_PARTITION_BYTES_MAX: i32 = 4 * 1024 * 1024;

/// Client failures.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Socket error.
    #[error("connection to {address}: {source}")]
    Io {
        /// Broker address.
        address: String,
        /// The error.
        source: std::io::Error,
    },
    /// Bytes that do not decode or encode.
    #[error("protocol error in {api}: {message}")]
    Protocol {
        /// API name.
        api: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The broker answered with a Kafka error code.
    #[error("{context}: Kafka error {code}{}", message.as_ref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Kafka {
        /// What was being done.
        context: String,
        /// The code.
        code: i16,
        /// The broker's message.
        message: Option<String>,
    },
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

fn check(code: i16, context: impl FnOnce() -> String, message: Option<&StrBytes>) -> Result<(), ClientError> {
    if code == 0 {
        return Ok(());
    }
    Err(ClientError::Kafka { context: context(), code, message: message.map(|m| m.to_string()) })
}

/// One connection to one broker.
pub struct Client {
    stream: TcpStream,
    address: String,
    correlation_id: i32,
    client_id: String,
}

/// A record to produce.
#[derive(Debug, Clone, Default)]
pub struct OutgoingRecord {
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<(String, Bytes)>,
}

/// A consumed record.
#[derive(Debug, Clone)]
pub struct ConsumedRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Timestamp, ms.
    pub timestamp: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// A topic as listed by Metadata.
#[derive(Debug, Clone)]
pub struct TopicInfo {
    /// Name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
}

impl Client {
    /// Connect to `address` (HOST:PORT).
    pub fn connect(address: &str) -> Result<Client, ClientError> {
        let io = |source| ClientError::Io { address: address.to_string(), source };
        let stream = TcpStream::connect(address).map_err(io)?;
        stream.set_read_timeout(Some(CLIENT_IO_TIMEOUT)).map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        Ok(Client { stream, address: address.to_string(), correlation_id: 0, client_id: "rill-cli".to_string() })
    }

    fn io(&self, source: std::io::Error) -> ClientError {
        ClientError::Io { address: self.address.clone(), source }
    }

    /// Send one request and read its response.
    pub fn call<Q: Encodable, R: Decodable>(&mut self, api_key: ApiKey, version: i16, request: &Q) -> Result<R, ClientError> {
        self.correlation_id += 1;
        let wire = request_frame(api_key, version, self.correlation_id, &self.client_id, request)?;
        self.stream.write_all(&wire).map_err(|error| self.io(error))?;
        let (correlation_id, response) =
            read_response(&mut self.stream, api_key, version).map_err(|error| error.at(&self.address))?;
        if correlation_id != self.correlation_id {
            let message = format!("correlation id {correlation_id} for request {}", self.correlation_id);
            return Err(ClientError::Protocol { api: crate::broker::api_name(api_key), message });
        }
        Ok(response)
    }

    /// All topics (or the named ones) with their partition counts.
    pub fn topics(&mut self, names: Option<&[String]>) -> Result<Vec<TopicInfo>, ClientError> {
        let topics = names.map(|names| {
            names.iter().map(|name| metadata_request::MetadataRequestTopic::default().with_name(Some(TopicName(text(name))))).collect()
        });
        let response: MetadataResponse = self.call(ApiKey::Metadata, 9, &MetadataRequest::default().with_topics(topics))?;
        let mut result = Vec::new();
        for topic in response.topics {
            let name = topic.name.map(|name| name.0.to_string()).unwrap_or_default();
            check(topic.error_code, || format!("metadata of topic {name}"), None)?;
            result.push(TopicInfo { name, partitions: i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX) });
        }
        result.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(result)
    }

    /// Partition count of one topic.
    pub fn partition_count(&mut self, topic: &str) -> Result<i32, ClientError> {
        Ok(self.topics(Some(&[topic.to_string()]))?[0].partitions)
    }

    /// CreateTopics for one topic.
    pub fn create_topic(&mut self, name: &str, partitions: i32, configs: &[(String, String)]) -> Result<(), ClientError> {
        let topic = CreatableTopic::default()
            .with_name(TopicName(text(name)))
            .with_num_partitions(partitions)
            .with_replication_factor(-1)
            .with_configs(configs.iter().map(|(k, v)| CreatableTopicConfig::default().with_name(text(k)).with_value(Some(text(v)))).collect());
        let request = CreateTopicsRequest::default().with_topics(vec![topic]).with_timeout_ms(30_000);
        let response: CreateTopicsResponse = self.call(ApiKey::CreateTopics, 5, &request)?;
        let result = &response.topics[0];
        check(result.error_code, || format!("create topic {name}"), result.error_message.as_ref())
    }

    /// DeleteTopics for one topic.
    pub fn delete_topic(&mut self, name: &str) -> Result<(), ClientError> {
        let request = DeleteTopicsRequest::default().with_topic_names(vec![TopicName(text(name))]).with_timeout_ms(30_000);
        let response: DeleteTopicsResponse = self.call(ApiKey::DeleteTopics, 4, &request)?;
        check(response.responses[0].error_code, || format!("delete topic {name}"), response.responses[0].error_message.as_ref())
    }

    /// Grow a topic to `count` partitions.
    pub fn create_partitions(&mut self, name: &str, count: i32) -> Result<(), ClientError> {
        let request = CreatePartitionsRequest::default()
            .with_topics(vec![CreatePartitionsTopic::default().with_name(TopicName(text(name))).with_count(count)])
            .with_timeout_ms(30_000);
        let response: CreatePartitionsResponse = self.call(ApiKey::CreatePartitions, 1, &request)?;
        check(response.results[0].error_code, || format!("create partitions of {name}"), response.results[0].error_message.as_ref())
    }

    /// Topic configs as (key, value, is-default).
    pub fn describe_topic_configs(&mut self, name: &str) -> Result<Vec<(String, String, bool)>, ClientError> {
        let resource = DescribeConfigsResource::default().with_resource_type(2).with_resource_name(text(name)).with_configuration_keys(None);
        let response: DescribeConfigsResponse = self.call(ApiKey::DescribeConfigs, 2, &DescribeConfigsRequest::default().with_resources(vec![resource]))?;
        let result = &response.results[0];
        check(result.error_code, || format!("describe configs of {name}"), result.error_message.as_ref())?;
        Ok(result
            .configs
            .iter()
            .map(|config| (config.name.to_string(), config.value.as_ref().map(|v| v.to_string()).unwrap_or_default(), config.config_source == 5))
            .collect())
    }

    /// Set topic configs (IncrementalAlterConfigs SET).
    pub fn set_topic_configs(&mut self, name: &str, configs: &[(String, String)]) -> Result<(), ClientError> {
        let resource = AlterConfigsResource::default().with_resource_type(2).with_resource_name(text(name)).with_configs(
            configs.iter().map(|(k, v)| AlterableConfig::default().with_name(text(k)).with_config_operation(0).with_value(Some(text(v)))).collect(),
        );
        let response: IncrementalAlterConfigsResponse =
            self.call(ApiKey::IncrementalAlterConfigs, 0, &IncrementalAlterConfigsRequest::default().with_resources(vec![resource]))?;
        let result = &response.responses[0];
        check(result.error_code, || format!("alter configs of {name}"), result.error_message.as_ref())
    }

    /// ListOffsets: -1 latest, -2 earliest, else the first offset at or after a timestamp.
    pub fn list_offset(&mut self, topic: &str, partition: i32, timestamp: i64) -> Result<i64, ClientError> {
        let request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(text(topic)))
            .with_partitions(vec![ListOffsetsPartition::default().with_partition_index(partition).with_timestamp(timestamp)])]);
        let response: ListOffsetsResponse = self.call(ApiKey::ListOffsets, 5, &request)?;
        let result = &response.topics[0].partitions[0];
        check(result.error_code, || format!("list offsets of {topic}-{partition}"), None)?;
        Ok(result.offset)
    }

    /// Produce records to one partition as one uncompressed batch; returns the base offset.
    pub fn produce(&mut self, topic: &str, partition: i32, records: &[OutgoingRecord], acks: i16) -> Result<i64, ClientError> {
        if acks == 0 {
            return Err(ClientError::Protocol { api: "Produce", message: "acks=0 is not supported by this client".into() });
        }
        let request = produce_request(topic, partition, records, acks)?;
        let response: ProduceResponse = self.call(ApiKey::Produce, PRODUCE_VERSION, &request)?;
        produce_result(&response, topic, partition)
    }

    /// Fetch from several partitions of a topic; returns records at or after each offset, and the
    /// high watermark of each partition.
    pub fn fetch(&mut self, topic: &str, offsets: &BTreeMap<i32, i64>, max_wait_ms: i32) -> Result<(Vec<ConsumedRecord>, BTreeMap<i32, i64>), ClientError> {
        let partitions = offsets
            .iter()
            .map(|(partition, offset)| {
                FetchPartition::default().with_partition(*partition).with_fetch_offset(*offset).with_partition_max_bytes(CLIENT_FETCH_PARTITION_BYTES_MAX)
            })
            .collect();
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(64 * 1024 * 1024)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default().with_topic(TopicName(text(topic))).with_partitions(partitions)]);
        let response: FetchResponse = self.call(ApiKey::Fetch, 11, &request)?;
        check(response.error_code, || format!("fetch {topic}"), None)?;
        let mut records = Vec::new();
        let mut high_watermarks = BTreeMap::new();
        for topic_response in response.responses {
            for data in topic_response.partitions {
                check(data.error_code, || format!("fetch {topic}-{}", data.partition_index), None)?;
                high_watermarks.insert(data.partition_index, data.high_watermark);
                let wanted_from = offsets.get(&data.partition_index).copied().unwrap_or(0);
                let mut bytes = data.records.unwrap_or_default();
                while !bytes.is_empty() {
                    let set = RecordBatchDecoder::decode(&mut bytes)
                        .map_err(|error| ClientError::Protocol { api: "Fetch", message: error.to_string() })?;
                    for record in set.records {
                        if record.offset < wanted_from || record.control {
                            continue;
                        }
                        records.push(ConsumedRecord {
                            partition: data.partition_index,
                            offset: record.offset,
                            timestamp: record.timestamp,
                            key: record.key,
                            value: record.value,
                            headers: record.headers.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                        });
                    }
                }
            }
        }
        Ok((records, high_watermarks))
    }

    /// Committed offsets of a group for a topic's partitions (-1: none).
    pub fn committed(&mut self, group: &str, topic: &str, partitions: &[i32]) -> Result<BTreeMap<i32, i64>, ClientError> {
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(text(group)))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default().with_name(TopicName(text(topic))).with_partition_indexes(partitions.to_vec())]));
        let response: OffsetFetchResponse = self.call(ApiKey::OffsetFetch, 6, &request)?;
        check(response.error_code, || format!("offsets of group {group}"), None)?;
        let mut offsets = BTreeMap::new();
        for topic in response.topics {
            for partition in topic.partitions {
                offsets.insert(partition.partition_index, partition.committed_offset);
            }
        }
        Ok(offsets)
    }

    /// Commit offsets as a standalone member (only while the group has no active members).
    pub fn commit(&mut self, group: &str, topic: &str, offsets: &BTreeMap<i32, i64>) -> Result<(), ClientError> {
        let partitions = offsets
            .iter()
            .map(|(partition, offset)| OffsetCommitRequestPartition::default().with_partition_index(*partition).with_committed_offset(*offset))
            .collect();
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(text(group)))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default().with_name(TopicName(text(topic))).with_partitions(partitions)]);
        let response: OffsetCommitResponse = self.call(ApiKey::OffsetCommit, 7, &request)?;
        for topic in &response.topics {
            for partition in &topic.partitions {
                check(partition.error_code, || format!("commit {group} {topic}-{}", partition.partition_index, topic = topic.name.0), None)?;
            }
        }
        Ok(())
    }

    /// (group id, protocol type, state) of every group.
    pub fn list_groups(&mut self) -> Result<Vec<(String, String, String)>, ClientError> {
        let response: ListGroupsResponse = self.call(ApiKey::ListGroups, 4, &ListGroupsRequest::default())?;
        check(response.error_code, || "list groups".to_string(), None)?;
        Ok(response.groups.into_iter().map(|g| (g.group_id.0.to_string(), g.protocol_type.to_string(), g.group_state.to_string())).collect())
    }

    /// DescribeGroups for one group.
    pub fn describe_group(&mut self, group: &str) -> Result<describe_groups_response::DescribedGroup, ClientError> {
        let response: DescribeGroupsResponse =
            self.call(ApiKey::DescribeGroups, 4, &DescribeGroupsRequest::default().with_groups(vec![GroupId(text(group))]))?;
        let described = response.groups.into_iter().next().ok_or(ClientError::Protocol { api: "DescribeGroups", message: "empty answer".into() })?;
        check(described.error_code, || format!("describe group {group}"), described.error_message.as_ref())?;
        Ok(described)
    }
}

/// The Produce version this client speaks.
pub const PRODUCE_VERSION: i16 = 8;

/// A Produce request of `records` to one partition as one uncompressed batch, timestamped now.
pub fn produce_request(topic: &str, partition: i32, records: &[OutgoingRecord], acks: i16) -> Result<ProduceRequest, ClientError> {
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0));
    let encoded = records
        .iter()
        .map(|record| (record.key.clone(), record.value.clone(), record.headers.iter().map(|(k, v)| (text(k), Some(v.clone()))).collect()));
    let mut batch = BytesMut::new();
    crate::batch::encode_plain_batch(&mut batch, encoded, now_ms)
        .map_err(|error| ClientError::Protocol { api: "Produce", message: error.to_string() })?;
    Ok(ProduceRequest::default().with_transactional_id(None).with_acks(acks).with_timeout_ms(30_000).with_topic_data(vec![
        TopicProduceData::default()
            .with_name(TopicName(text(topic)))
            .with_partition_data(vec![PartitionProduceData::default().with_index(partition).with_records(Some(batch.freeze()))]),
    ]))
}

/// The base offset a Produce response of one partition assigned, or its Kafka error.
pub fn produce_result(response: &ProduceResponse, topic: &str, partition: i32) -> Result<i64, ClientError> {
    let result = response
        .responses
        .first()
        .and_then(|topic_response| topic_response.partition_responses.first())
        .ok_or(ClientError::Protocol { api: "Produce", message: "response names no partition".into() })?;
    check(result.error_code, || format!("produce to {topic}-{partition}"), result.error_message.as_ref())?;
    Ok(result.base_offset)
}

/// One request as it goes on the wire: size prefix, header, body.
pub fn request_frame<Q: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: &str,
    request: &Q,
) -> Result<Bytes, ClientError> {
    let protocol = |message: String| ClientError::Protocol { api: crate::broker::api_name(api_key), message };
    let mut frame = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(text(client_id)))
        .encode(&mut frame, api_key.request_header_version(version))
        .map_err(|error| protocol(error.to_string()))?;
    request.encode(&mut frame, version).map_err(|error| protocol(error.to_string()))?;
    Ok(crate::frame::frame_bytes(&frame))
}

/// Reads one response frame from `stream`: its correlation id and its body decoded as `R`.
/// Errors name no address; [`ClientError::at`] adds it.
pub fn read_response<R: Decodable>(stream: &mut impl Read, api_key: ApiKey, version: i16) -> Result<(i32, R), ClientError> {
    let api = crate::broker::api_name(api_key);
    let protocol = |message: String| ClientError::Protocol { api, message };
    let io = |source| ClientError::Io { address: String::new(), source };
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).map_err(io)?;
    let size = usize::try_from(i32::from_be_bytes(size)).map_err(|_| protocol("negative frame size".into()))?;
    if size > CLIENT_FRAME_BYTES_MAX {
        return Err(protocol(format!("response of {size} bytes above {CLIENT_FRAME_BYTES_MAX}")));
    }
    let mut body = vec![0u8; size];
    stream.read_exact(&mut body).map_err(io)?;
    let mut body = Bytes::from(body);
    let header = ResponseHeader::decode(&mut body, api_key.response_header_version(version))
        .map_err(|error| protocol(error.to_string()))?;
    let response = R::decode(&mut body, version).map_err(|error| protocol(error.to_string()))?;
    Ok((header.correlation_id, response))
}

impl ClientError {
    /// The same error, naming `address` if it is a socket error without one.
    pub fn at(self, address: &str) -> ClientError {
        match self {
            ClientError::Io { address: named, source } if named.is_empty() => ClientError::Io { address: address.to_string(), source },
            other => other,
        }
    }
}
