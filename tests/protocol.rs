//! Wire-level tests against a real `rill serve`: version negotiation, bad input, long-poll fetch,
//! idempotent duplicates and ListOffsets, with requests built by the kafka-protocol crate.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rill_net::kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use rill_net::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use rill_net::kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use rill_net::kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use rill_net::kafka_protocol::messages::*;
use rill_net::kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rill_net::batch::encode_test_batch;
use support::Broker;

const IO_TIMEOUT: Duration = Duration::from_secs(60);

struct Client {
    stream: TcpStream,
    correlation_id: i32,
}

impl Client {
    fn connect(broker: &Broker) -> Client {
        let stream = TcpStream::connect(broker.kafka).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        Client { stream, correlation_id: 0 }
    }

    fn send_raw(&mut self, api_key: ApiKey, version: i16, body: &[u8]) -> i32 {
        let (correlation_id, wire) = self.frame(api_key, version, body);
        self.stream.write_all(&wire).unwrap();
        correlation_id
    }

    /// The next request as it goes on the wire, and its correlation id.
    fn frame(&mut self, api_key: ApiKey, version: i16, body: &[u8]) -> (i32, Vec<u8>) {
        self.correlation_id += 1;
        let mut frame = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("protocol-test")))
            .encode(&mut frame, api_key.request_header_version(version))
            .unwrap();
        frame.put_slice(body);
        let mut wire = Vec::new();
        wire.extend_from_slice(&i32::try_from(frame.len()).unwrap().to_be_bytes());
        wire.extend_from_slice(&frame);
        (self.correlation_id, wire)
    }

    fn read_frame(&mut self) -> Option<Bytes> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).ok()?;
        let mut body = vec![0u8; usize::try_from(i32::from_be_bytes(size)).unwrap()];
        self.stream.read_exact(&mut body).ok()?;
        Some(Bytes::from(body))
    }

    fn call<Q: Encodable, R: Decodable>(&mut self, api_key: ApiKey, version: i16, request: &Q) -> R {
        let mut body = BytesMut::new();
        request.encode(&mut body, version).unwrap();
        let correlation_id = self.send_raw(api_key, version, &body);
        let mut frame = self.read_frame().expect("response");
        let header = ResponseHeader::decode(&mut frame, api_key.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, correlation_id);
        R::decode(&mut frame, version).unwrap()
    }

    fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }
}

fn create_topic(client: &mut Client, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let topic = CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_string(name.to_string())))
        .with_num_partitions(partitions)
        .with_replication_factor(1)
        .with_configs(
            configs
                .iter()
                .map(|(key, value)| {
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string(key.to_string()))
                        .with_value(Some(StrBytes::from_string(value.to_string())))
                })
                .collect(),
        );
    let response: CreateTopicsResponse =
        client.call(ApiKey::CreateTopics, 5, &CreateTopicsRequest::default().with_topics(vec![topic]).with_timeout_ms(30_000));
    assert_eq!(response.topics[0].error_code, 0, "{response:?}");
}

fn produce(client: &mut Client, topic: &str, partition: i32, records: Bytes) -> (i16, i64) {
    let request = ProduceRequest::default().with_acks(-1).with_timeout_ms(30_000).with_topic_data(vec![
        TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default().with_index(partition).with_records(Some(records))]),
    ]);
    let response: ProduceResponse = client.call(ApiKey::Produce, 8, &request);
    let partition = &response.responses[0].partition_responses[0];
    (partition.error_code, partition.base_offset)
}

fn fetch(client: &mut Client, topic: &str, offset: i64, max_wait_ms: i32) -> (i16, Bytes, i64) {
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default().with_partition(0).with_fetch_offset(offset).with_partition_max_bytes(1 << 20)])]);
    let response: FetchResponse = client.call(ApiKey::Fetch, 11, &request);
    let data = &response.responses[0].partitions[0];
    (data.error_code, data.records.clone().unwrap_or_default(), data.high_watermark)
}

#[test]
fn api_versions_negotiation_follows_kip_511_and_produce_v0_2_is_refused() {
    let broker = Broker::start(2, &[]);
    let mut client = Client::connect(&broker);
    let response: ApiVersionsResponse = client.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert_eq!(response.error_code, 0);
    let produce = response.api_keys.iter().find(|key| key.api_key == ApiKey::Produce as i16).unwrap();
    assert_eq!(produce.min_version, 0, "Produce must be advertised from v0 (librdkafka compression)");
    // A version newer than ours: v0 response, UNSUPPORTED_VERSION, our ranges.
    let correlation_id = client.send_raw(ApiKey::ApiVersions, 99, &[0, 0, 0]);
    let mut frame = client.read_frame().unwrap();
    assert_eq!(frame.get_i32(), correlation_id);
    let response = ApiVersionsResponse::decode(&mut frame, 0).unwrap();
    assert_eq!(response.error_code, 35);
    let versions = response.api_keys.iter().find(|key| key.api_key == ApiKey::ApiVersions as i16).unwrap();
    assert_eq!(versions.max_version, 3);
    // Produce v2 gets UNSUPPORTED_VERSION per partition (hand-encoded: the crate starts at v3).
    let mut body = BytesMut::new();
    body.put_i16(1);
    body.put_i32(1000);
    body.put_i32(1);
    body.put_i16(1);
    body.put_slice(b"t");
    body.put_i32(1);
    body.put_i32(0);
    body.put_i32(-1);
    let correlation_id = client.send_raw(ApiKey::Produce, 2, &body);
    let mut frame = client.read_frame().unwrap();
    assert_eq!(frame.get_i32(), correlation_id);
    assert_eq!(frame.get_i32(), 1);
    frame.advance(2 + 1);
    assert_eq!(frame.get_i32(), 1);
    assert_eq!(frame.get_i32(), 0);
    assert_eq!(frame.get_i16(), 35);
}

#[test]
fn garbage_and_oversize_frames_close_only_their_connection() {
    let broker = Broker::start(2, &[]);
    let mut healthy = Client::connect(&broker);
    let mut garbage = Client::connect(&broker);
    garbage.stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(garbage.is_closed(), "HTTP on the Kafka port must close the connection");
    let mut oversize = Client::connect(&broker);
    oversize.stream.write_all(&(200 * 1024 * 1024i32).to_be_bytes()).unwrap();
    assert!(oversize.is_closed(), "a 200 MiB frame must be refused before allocation");
    let mut unknown = Client::connect(&broker);
    unknown.send_raw(ApiKey::Produce, 0, &[]);
    let mut negative = Client::connect(&broker);
    negative.stream.write_all(&(-5i32).to_be_bytes()).unwrap();
    assert!(negative.is_closed());
    // Truncated body then EOF.
    let mut truncated = Client::connect(&broker);
    truncated.stream.write_all(&[0, 0, 0, 50, 0, 18, 0]).unwrap();
    truncated.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(truncated.is_closed());
    let response: ApiVersionsResponse = healthy.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert_eq!(response.error_code, 0);
    let log = broker.log();
    assert!(log.contains("closing connection: bad framing"), "{log}");
}

#[test]
fn bad_crc_unknown_topic_and_oversize_batches_get_kafka_errors() {
    let broker = Broker::start(2, &[]);
    let mut client = Client::connect(&broker);
    create_topic(&mut client, "strict", 1, &[("max.message.bytes", "200")]);
    let good = encode_test_batch(-1, -1, 2, 1_000);
    let mut corrupt = good.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert_eq!(produce(&mut client, "strict", 0, Bytes::from(corrupt)).0, 2, "CORRUPT_MESSAGE");
    assert_eq!(produce(&mut client, "missing", 0, Bytes::from(good.clone())).0, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    assert_eq!(produce(&mut client, "strict", 7, Bytes::from(good.clone())).0, 3, "unknown partition");
    let big = encode_test_batch(-1, -1, 40, 1_000);
    assert!(big.len() > 200);
    assert_eq!(produce(&mut client, "strict", 0, Bytes::from(big)).0, 10, "MESSAGE_TOO_LARGE");
    assert_eq!(produce(&mut client, "strict", 0, Bytes::from(good)), (0, 0), "the connection still works");
    let (code, _, high_watermark) = fetch(&mut client, "strict", 5, 0);
    assert_eq!(code, 1, "OFFSET_OUT_OF_RANGE");
    assert_eq!(high_watermark, 2);
}

#[test]
fn long_poll_fetch_is_woken_by_an_append() {
    let broker = Broker::start(2, &[]);
    let mut admin = Client::connect(&broker);
    create_topic(&mut admin, "waiting", 1, &[]);
    // Nothing to read: the fetch waits its full max_wait.
    let started = Instant::now();
    let (code, records, _) = fetch(&mut admin, "waiting", 0, 300);
    assert_eq!(code, 0);
    assert!(records.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250), "returned after {:?}", started.elapsed());
    // A fetch waiting up to 20 s returns soon after another connection appends.
    let mut fetcher = Client::connect(&broker);
    let waiting = std::thread::spawn(move || {
        let started = Instant::now();
        let (code, records, high_watermark) = fetch(&mut fetcher, "waiting", 0, 20_000);
        (code, records, high_watermark, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(produce(&mut admin, "waiting", 0, Bytes::from(encode_test_batch(-1, -1, 3, 5))).0, 0);
    let (code, records, high_watermark, elapsed) = waiting.join().unwrap();
    assert_eq!(code, 0);
    assert_eq!(high_watermark, 3);
    assert!(!records.is_empty());
    assert!(elapsed < Duration::from_secs(10), "fetch was not woken by the append: {elapsed:?}");
}

#[test]
fn idempotent_duplicates_get_original_offsets_and_gaps_are_refused() {
    let broker = Broker::start(2, &[]);
    let mut client = Client::connect(&broker);
    create_topic(&mut client, "idem", 1, &[]);
    let init: InitProducerIdResponse =
        client.call(ApiKey::InitProducerId, 1, &InitProducerIdRequest::default().with_transactional_id(None).with_transaction_timeout_ms(60_000).with_producer_id(ProducerId(-1)).with_producer_epoch(-1));
    assert_eq!(init.error_code, 0);
    let producer_id = init.producer_id.0;
    assert_eq!(produce(&mut client, "idem", 0, Bytes::from(encode_test_batch(-1, -1, 4, 5))), (0, 0));
    let first = Bytes::from(encode_test_batch(0, producer_id, 3, 5));
    assert_eq!(produce(&mut client, "idem", 0, first.clone()), (0, 4));
    assert_eq!(produce(&mut client, "idem", 0, Bytes::from(encode_test_batch(3, producer_id, 2, 5))), (0, 7));
    // The retry of the first batch gets its original offset and appends nothing.
    assert_eq!(produce(&mut client, "idem", 0, first), (0, 4));
    assert_eq!(produce(&mut client, "idem", 0, Bytes::from(encode_test_batch(9, producer_id, 1, 5))).0, 45, "OUT_OF_ORDER_SEQUENCE_NUMBER");
    assert_eq!(fetch(&mut client, "idem", 0, 0).2, 9, "high watermark counts no duplicate");
}

#[test]
fn list_offsets_earliest_latest_and_by_timestamp() {
    let broker = Broker::start(2, &[]);
    let mut client = Client::connect(&broker);
    create_topic(&mut client, "timed", 1, &[]);
    for (index, timestamp) in [1_000i64, 2_000, 3_000].into_iter().enumerate() {
        let expected = i64::try_from(index).unwrap() * 2;
        assert_eq!(produce(&mut client, "timed", 0, Bytes::from(encode_test_batch(-1, -1, 2, timestamp))), (0, expected));
    }
    let lookup = |client: &mut Client, timestamp: i64| {
        let request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("timed")))
            .with_partitions(vec![ListOffsetsPartition::default().with_partition_index(0).with_timestamp(timestamp)])]);
        let response: ListOffsetsResponse = client.call(ApiKey::ListOffsets, 5, &request);
        let partition = &response.topics[0].partitions[0];
        assert_eq!(partition.error_code, 0);
        partition.offset
    };
    assert_eq!(lookup(&mut client, -2), 0);
    assert_eq!(lookup(&mut client, -1), 6);
    assert_eq!(lookup(&mut client, 1_500), 2);
    assert_eq!(lookup(&mut client, 3_000), 4);
    assert_eq!(lookup(&mut client, 9_000), -1);
}

#[test]
fn pipelined_requests_are_answered_in_order_behind_a_waiting_fetch() {
    let broker = Broker::start(1, &[]);
    let mut client = Client::connect(&broker);
    create_topic(&mut client, "pipe", 1, &[]);
    // One write: a long-polling Fetch of the empty partition, then more produce requests than
    // the connection processes at once, then ApiVersions. The fetch is answered first (woken by
    // the first append), every produce in order behind it, answers that are ready together
    // coalesced into shared writes.
    let produces = 300;
    let fetch = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(5_000)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("pipe")))
            .with_partitions(vec![FetchPartition::default().with_partition(0).with_fetch_offset(0).with_partition_max_bytes(1 << 20)])]);
    let mut body = BytesMut::new();
    fetch.encode(&mut body, 11).unwrap();
    let (fetch_id, mut wire) = client.frame(ApiKey::Fetch, 11, &body);
    let mut produce_ids = Vec::new();
    for _ in 0..produces {
        let request = ProduceRequest::default().with_acks(-1).with_timeout_ms(30_000).with_topic_data(vec![
            TopicProduceData::default().with_name(TopicName(StrBytes::from_static_str("pipe"))).with_partition_data(vec![
                PartitionProduceData::default().with_index(0).with_records(Some(Bytes::from(encode_test_batch(-1, -1, 2, 100)))),
            ]),
        ]);
        let mut body = BytesMut::new();
        request.encode(&mut body, 8).unwrap();
        let (id, frame) = client.frame(ApiKey::Produce, 8, &body);
        produce_ids.push(id);
        wire.extend_from_slice(&frame);
    }
    let mut body = BytesMut::new();
    ApiVersionsRequest::default().encode(&mut body, 0).unwrap();
    let (versions_id, frame) = client.frame(ApiKey::ApiVersions, 0, &body);
    wire.extend_from_slice(&frame);
    let started = Instant::now();
    client.stream.write_all(&wire).unwrap();

    let mut frame = client.read_frame().expect("fetch response");
    assert_eq!(ResponseHeader::decode(&mut frame, ApiKey::Fetch.response_header_version(11)).unwrap().correlation_id, fetch_id);
    let fetched = FetchResponse::decode(&mut frame, 11).unwrap();
    assert_eq!(fetched.responses[0].partitions[0].error_code, 0);
    assert!(started.elapsed() < Duration::from_secs(4), "the fetch was woken by an append, not its timeout");
    for (i, id) in produce_ids.iter().enumerate() {
        let mut frame = client.read_frame().expect("produce response");
        let header = ResponseHeader::decode(&mut frame, ApiKey::Produce.response_header_version(8)).unwrap();
        assert_eq!(header.correlation_id, *id, "answer {i} out of order");
        let response = ProduceResponse::decode(&mut frame, 8).unwrap();
        let partition = &response.responses[0].partition_responses[0];
        assert_eq!((partition.error_code, partition.base_offset), (0, 2 * i64::try_from(i).unwrap()));
    }
    let mut frame = client.read_frame().expect("api versions response");
    assert_eq!(ResponseHeader::decode(&mut frame, ApiKey::ApiVersions.response_header_version(0)).unwrap().correlation_id, versions_id);
}
