//! Power-cut simulation on a stopped broker's data dir: damage segment files the way a power
//! cut (or a bad disk) does, restart, and check what the broker serves.
//!
//! | partition | damage | expected |
//! |---|---|---|
//! | 0 | truncated mid-batch | torn tail cut: every batch but the last, intact |
//! | 1 | last page zeroed | torn tail cut: the batches before that page, intact |
//! | 2 | garbage appended | cut back to exactly what was there |
//! | 3 | one bit flipped in the middle | fenced: refused, `/health` answers 503 naming it; the broker serves the others |

mod support;

use rill_net::client::{Client, OutgoingRecord};
use std::collections::BTreeMap;
use std::path::PathBuf;
use support::Broker;

const TOPIC: &str = "power";
const BATCHES: usize = 40;
const RECORDS_PER_BATCH: usize = 10;

fn segment_file(broker: &Broker, partition: i32) -> PathBuf {
    let dir = broker.data_dir.join("partitions").join(TOPIC).join(partition.to_string());
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().expect("a segment file")
}

/// Every record of a partition, or the Kafka error the broker answered.
fn read_partition(client: &mut Client, partition: i32) -> Result<BTreeMap<i64, String>, String> {
    let mut offsets = BTreeMap::from([(partition, 0i64)]);
    let mut records = BTreeMap::new();
    for _ in 0..1000 {
        let (batch, high_watermarks) = client.fetch(TOPIC, &offsets, 50).map_err(|e| e.to_string())?;
        for record in batch {
            records.insert(record.offset, String::from_utf8(record.value.unwrap().to_vec()).unwrap());
        }
        let next = records.keys().next_back().map_or(0, |o| o + 1);
        offsets.insert(partition, next);
        if next >= high_watermarks[&partition] {
            break;
        }
    }
    Ok(records)
}

fn expect_prefix(records: &BTreeMap<i64, String>, partition: i32, whole_batches: std::ops::RangeInclusive<usize>) {
    assert_eq!(records.len() % RECORDS_PER_BATCH, 0, "partition {partition}: a partial batch is served");
    let batches = records.len() / RECORDS_PER_BATCH;
    assert!(whole_batches.contains(&batches), "partition {partition}: {batches} batches survive");
    for (offset, value) in records {
        assert_eq!(value, &format!("p{partition}-{offset}"), "partition {partition}: damaged record served");
    }
}

#[test]
fn torn_tails_are_cut_and_interior_damage_fences_only_its_partition() {
    let mut broker = Broker::start(2, &[]);
    let mut client = Client::connect(&broker.bootstrap()).unwrap();
    client.create_topic(TOPIC, 4, &[]).unwrap();
    for partition in 0..4 {
        for batch in 0..BATCHES {
            let records: Vec<OutgoingRecord> = (0..RECORDS_PER_BATCH)
                .map(|i| OutgoingRecord {
                    key: None,
                    value: Some(format!("p{partition}-{}", batch * RECORDS_PER_BATCH + i).into_bytes().into()),
                    headers: Vec::new(),
                })
                .collect();
            client.produce(TOPIC, partition, &records, -1).unwrap();
        }
    }
    drop(client);
    assert!(broker.stop(), "clean shutdown");

    let damage = |partition: i32, edit: &dyn Fn(&mut Vec<u8>)| {
        let path = segment_file(&broker, partition);
        let mut bytes = std::fs::read(&path).unwrap();
        edit(&mut bytes);
        std::fs::write(&path, bytes).unwrap();
    };
    damage(0, &|f| f.truncate(f.len() - 30));
    damage(1, &|f| {
        let end = f.len();
        let page = (end - 1) / 4096 * 4096;
        f[page..end].fill(0);
    });
    damage(2, &|f| f.extend((0..5000u32).map(|i| u8::try_from(i * 37 % 251).unwrap())));
    damage(3, &|f| {
        let middle = f.len() / 2;
        f[middle] ^= 0x04;
    });

    broker.restart();
    let health = broker.admin_get("/health");
    assert!(health.starts_with("HTTP/1.0 503") || health.starts_with("HTTP/1.1 503"), "health:\n{health}");
    assert!(health.contains(&format!("{TOPIC}-3")), "health names the fenced partition:\n{health}");
    assert!(health.to_lowercase().contains("fenced"), "health says why:\n{health}");

    let mut client = Client::connect(&broker.bootstrap()).unwrap();
    expect_prefix(&read_partition(&mut client, 0).unwrap(), 0, BATCHES - 1..=BATCHES - 1);
    expect_prefix(&read_partition(&mut client, 1).unwrap(), 1, 1..=BATCHES - 1);
    expect_prefix(&read_partition(&mut client, 2).unwrap(), 2, BATCHES..=BATCHES);
    match read_partition(&mut client, 3) {
        Err(_) => {}
        Ok(records) => assert!(records.is_empty(), "the fenced partition served {} records", records.len()),
    }
    // The healthy partitions still take writes.
    let record = OutgoingRecord { key: None, value: Some("after".as_bytes().to_vec().into()), headers: Vec::new() };
    client.produce(TOPIC, 0, &[record], -1).unwrap();
    eprintln!("power cut: torn tails cut on 3 partitions, interior bit flip fenced (503 on /health), no damaged record served");
}
