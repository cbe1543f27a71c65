//! Restarts of a real `rill serve` on the same data dir, after SIGTERM and after SIGKILL: topics,
//! configs and records, committed group offsets, idempotent producer state and producer ids all
//! survive; a confluent-kafka idempotent acks=all stream across two restarts loses no
//! acknowledged record and duplicates none.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rill_net::batch::encode_test_batch;
use rill_net::client::{Client, OutgoingRecord};
use rill_net::kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use rill_net::kafka_protocol::messages::*;
use rill_net::kafka_protocol::protocol::StrBytes;
use support::{python, Broker};

const CORES: usize = 2;
/// Longest a test waits for records to become readable, or for a client script.
const WAIT_MAX: Duration = Duration::from_secs(60);

fn connect(broker: &Broker) -> Client {
    Client::connect(&broker.bootstrap()).unwrap_or_else(|error| panic!("connect: {error}\n{}", broker.log()))
}

fn values(partition: i32, range: std::ops::Range<i32>) -> Vec<OutgoingRecord> {
    range
        .map(|i| OutgoingRecord { key: None, value: Some(Bytes::from(format!("{partition}-{i}"))), headers: Vec::new() })
        .collect()
}

/// Every record of `partition` from offset 0 up to `count`, as (offset, value).
fn read_partition(client: &mut Client, topic: &str, partition: i32, count: i64) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut next = BTreeMap::from([(partition, 0i64)]);
    let deadline = Instant::now() + WAIT_MAX;
    while next[&partition] < count && Instant::now() < deadline {
        let (records, _) = client.fetch(topic, &next, 500).expect("fetch");
        for record in records {
            if record.offset < next[&partition] {
                continue;
            }
            next.insert(partition, record.offset + 1);
            out.push((record.offset, String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned()));
        }
    }
    out
}

fn check_topic(broker: &Broker, per_partition: i32) {
    let mut client = connect(broker);
    let topics = client.topics(None).expect("metadata");
    assert_eq!(topics.iter().map(|t| (t.name.as_str(), t.partitions)).collect::<Vec<_>>(), vec![("kept", 3)], "{}", broker.log());
    let configs = client.describe_topic_configs("kept").expect("configs");
    assert!(configs.contains(&("retention.ms".to_string(), "3600000".to_string(), false)), "{configs:?}");
    for partition in 0..3 {
        let expected: Vec<(i64, String)> = (0..per_partition).map(|i| (i64::from(i), format!("{partition}-{i}"))).collect();
        assert_eq!(read_partition(&mut client, "kept", partition, i64::from(per_partition)), expected, "partition {partition}");
    }
}

#[test]
fn topics_configs_and_records_survive_sigterm_and_sigkill_restarts() {
    let mut broker = Broker::start(CORES, &[]);
    let mut client = connect(&broker);
    client.create_topic("kept", 3, &[("retention.ms".into(), "3600000".into())]).unwrap();
    client.create_topic("dropped", 2, &[]).unwrap();
    client.delete_topic("dropped").unwrap();
    for partition in 0..3 {
        client.produce("kept", partition, &values(partition, 0..10), -1).unwrap();
    }
    drop(client);
    assert!(broker.stop(), "SIGTERM did not stop the broker cleanly:\n{}", broker.log());
    broker.restart();
    check_topic(&broker, 10);
    let mut client = connect(&broker);
    for partition in 0..3 {
        assert_eq!(client.produce("kept", partition, &values(partition, 10..20), -1).unwrap(), 10);
    }
    drop(client);
    broker.kill();
    broker.restart();
    check_topic(&broker, 20);
    // A deleted topic stays deleted, and its name is free again (with no old records).
    let mut client = connect(&broker);
    client.create_topic("dropped", 1, &[]).unwrap();
    assert_eq!(client.list_offset("dropped", 0, -1).unwrap(), 0);
    assert_eq!(client.produce("dropped", 0, &values(0, 0..3), -1).unwrap(), 0);
    assert!(broker.admin_get("/health").ends_with("\r\n\r\nok\n"), "{}", broker.admin_get("/health"));
    let metrics = broker.admin_get("/metrics");
    for name in ["rill_log_bytes{core=", "rill_fdatasyncs_total{core=", "rill_batch_cache_hits_total{core=", "rill_batch_cache_misses_total{core="] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    let syncs = support::metric_total(&metrics, "rill_fdatasyncs_total");
    assert!(syncs > 0, "appends with durability=fsync issued no fdatasync:\n{metrics}");
}

#[test]
fn committed_group_offsets_survive_restarts_and_deleted_groups_stay_deleted() {
    let mut broker = Broker::start(CORES, &[]);
    broker.rill(&["topic", "create", "orders", "-p", "3"], "");
    let lines: String = (0..300).map(|i| format!("value{i}\n")).collect();
    broker.rill(&["produce", "orders"], &lines);
    // A real group member (join, sync, commit) reads 100 records and commits.
    assert_eq!(broker.rill(&["consume", "orders", "-g", "readers", "-n", "100"], "").lines().count(), 100);
    let mut client = connect(&broker);
    client.commit("other", "orders", &BTreeMap::from([(0, 1), (1, 2)])).unwrap();
    client.commit("doomed", "orders", &BTreeMap::from([(2, 3)])).unwrap();
    let before = client.committed("readers", "orders", &[0, 1, 2]).unwrap();
    assert_eq!(before.values().filter(|offset| **offset >= 0).sum::<i64>(), 100, "{before:?}");
    let deleted: DeleteGroupsResponse = client
        .call(ApiKey::DeleteGroups, 2, &DeleteGroupsRequest::default().with_groups_names(vec![GroupId(StrBytes::from_static_str("doomed"))]))
        .unwrap();
    assert_eq!(deleted.results[0].error_code, 0);
    drop(client);
    broker.kill();
    broker.restart();
    let mut client = connect(&broker);
    let after = client.committed("readers", "orders", &[0, 1, 2]).unwrap_or_else(|error| {
        std::thread::sleep(Duration::from_secs(3));
        panic!("{error}\n{}", broker.log())
    });
    assert_eq!(after, before, "{}", broker.log());
    assert_eq!(client.committed("other", "orders", &[0, 1, 2]).unwrap(), BTreeMap::from([(0, 1), (1, 2), (2, -1)]));
    let mut groups: Vec<String> = client.list_groups().unwrap().into_iter().map(|(id, _, _)| id).collect();
    groups.sort();
    assert_eq!(groups, vec!["other".to_string(), "readers".to_string()], "deleted group came back");
    // The internal topic is hidden from listings and refuses client writes.
    assert_eq!(client.topics(None).unwrap().iter().map(|t| t.name.clone()).collect::<Vec<_>>(), vec!["orders".to_string()]);
    assert!(client.produce("__consumer_offsets", 0, &values(0, 0..1), -1).is_err());
    drop(client);
    // The group resumes where it committed, after a clean restart too.
    assert!(broker.stop(), "{}", broker.log());
    broker.restart();
    assert_eq!(broker.rill(&["consume", "orders", "-g", "readers", "-e"], "").lines().count(), 200, "{}", broker.log());
}

fn produce_raw(client: &mut Client, partition_records: Bytes) -> (i16, i64) {
    let request = ProduceRequest::default().with_acks(-1).with_timeout_ms(30_000).with_topic_data(vec![TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_static_str("idem")))
        .with_partition_data(vec![PartitionProduceData::default().with_index(0).with_records(Some(partition_records))])]);
    let response: ProduceResponse = client.call(ApiKey::Produce, 8, &request).unwrap();
    let partition = &response.responses[0].partition_responses[0];
    (partition.error_code, partition.base_offset)
}

fn init_producer_id(client: &mut Client) -> i64 {
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let response: InitProducerIdResponse = client.call(ApiKey::InitProducerId, 1, &request).unwrap();
    assert_eq!(response.error_code, 0);
    response.producer_id.0
}

#[test]
fn idempotent_retry_after_restart_gets_original_offsets_and_ids_never_repeat() {
    let mut broker = Broker::start(CORES, &[]);
    let mut client = connect(&broker);
    client.create_topic("idem", 1, &[]).unwrap();
    let producer_id = init_producer_id(&mut client);
    assert_eq!(produce_raw(&mut client, Bytes::from(encode_test_batch(-1, -1, 2, 5))), (0, 0));
    let batches: Vec<Bytes> = (0..6).map(|i| Bytes::from(encode_test_batch(i * 3, producer_id, 3, 5))).collect();
    for (index, batch) in batches.iter().enumerate() {
        let expected = 2 + 3 * i64::try_from(index).unwrap();
        assert_eq!(produce_raw(&mut client, batch.clone()), (0, expected));
    }
    drop(client);
    // A crash right after the acknowledgements: the producer retries what it had in flight.
    broker.kill();
    broker.restart();
    let mut client = connect(&broker);
    assert_eq!(produce_raw(&mut client, batches[5].clone()), (0, 17), "retry of the last batch: original offset\n{}", broker.log());
    assert_eq!(produce_raw(&mut client, batches[1].clone()), (0, 5), "retry of an older batch of the last 5");
    assert_eq!(produce_raw(&mut client, Bytes::from(encode_test_batch(30, producer_id, 1, 5))).0, 45, "gap: OUT_OF_ORDER_SEQUENCE_NUMBER");
    assert_eq!(produce_raw(&mut client, Bytes::from(encode_test_batch(18, producer_id, 1, 5))), (0, 20), "next sequence appends");
    assert_eq!(client.list_offset("idem", 0, -1).unwrap(), 21, "no duplicate was appended");
    let after_kill = init_producer_id(&mut client);
    assert!(after_kill > producer_id, "producer id {after_kill} handed out again after a restart (first was {producer_id})");
    drop(client);
    assert!(broker.stop());
    broker.restart();
    let mut client = connect(&broker);
    let after_stop = init_producer_id(&mut client);
    assert!(after_stop > after_kill, "producer id {after_stop} not above {after_kill}");
}

#[test]
fn confluent_idempotent_stream_across_sigterm_and_sigkill_loses_and_duplicates_nothing() {
    let mut broker = Broker::start(CORES, &[]);
    let markers = broker.data_dir.with_extension("markers");
    let _ = std::fs::remove_dir_all(&markers);
    std::fs::create_dir_all(&markers).unwrap();
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/restart_stream.py");
    let mut child = Command::new(python())
        .arg(&script)
        .arg(broker.bootstrap())
        .arg(&markers)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    for (marker, crash) in [("1", false), ("2", true)] {
        let deadline = Instant::now() + WAIT_MAX;
        while !markers.join(marker).exists() {
            assert!(Instant::now() < deadline, "producer never reached marker {marker}\n{}", broker.log());
            assert!(child.try_wait().unwrap().is_none(), "producer exited early");
            std::thread::sleep(Duration::from_millis(20));
        }
        if crash {
            broker.kill();
        } else {
            assert!(broker.stop(), "{}", broker.log());
        }
        broker.restart();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("producer script did not finish\n{}", broker.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}\nbroker log:\n{}", broker.log());
    assert!(stdout.contains("lost 0, duplicated 0"), "{stdout}");
    println!("{stdout}");
    let _ = std::fs::remove_dir_all(&markers);
}
