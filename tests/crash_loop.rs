//! Broker crash loop: an idempotent acks=all producer (confluent-kafka, librdkafka 2.16) streams
//! into a 3-partition topic while the broker (durability fsync) is SIGKILLed at random moments and
//! restarted on the same data dir. A history checker then reads every partition and checks that
//! every acknowledged record is present exactly once at the offset it was acknowledged with,
//! that no value appears twice, and that each partition holds its values in production order.
//!
//! Cycles: 100 by default, `RILL_TEST_LONG=1` for 500; bounded in time either way. A second loop
//! runs durability `write` on buffered segment files (60 cycles).
//! Prints "crash loop: C cycles, acknowledged N, lost 0, duplicated 0".

mod support;

use rand::{Rng, SeedableRng};
use rill_net::client::Client;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::Broker;

const PARTITIONS: i32 = 3;
const TOPIC: &str = "crash-loop";

/// Reads every record of every partition: partition → offset → value.
fn read_history(bootstrap: &str) -> BTreeMap<i32, BTreeMap<i64, String>> {
    let mut client = Client::connect(bootstrap).expect("connect");
    let mut offsets: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    let mut history: BTreeMap<i32, BTreeMap<i64, String>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (records, high_watermarks) = client.fetch(TOPIC, &offsets, 100).expect("fetch");
        for record in records {
            let value = String::from_utf8(record.value.expect("value").to_vec()).expect("utf8");
            history.entry(record.partition).or_default().insert(record.offset, value);
            let next = offsets.get_mut(&record.partition).unwrap();
            *next = (*next).max(record.offset + 1);
        }
        if offsets.iter().all(|(p, o)| *o >= high_watermarks[p]) {
            return history;
        }
        assert!(Instant::now() < deadline, "reading the history took too long");
    }
}

#[test]
fn sigkill_loop_loses_and_duplicates_nothing_acknowledged() {
    let long = std::env::var("RILL_TEST_LONG").is_ok_and(|v| v == "1");
    let cycles = if long { 500 } else { 100 };
    crash_loop(&[], cycles, Duration::from_secs(if long { 900 } else { 240 }));
}

/// Durability `write` on buffered segment files acknowledges once the page cache holds the
/// bytes: a SIGKILLed process loses none of them (a power cut could; see the README).
#[test]
fn sigkill_loop_with_buffered_writes_loses_nothing_acknowledged() {
    crash_loop(&["--durability", "write", "--segment-io", "buffered"], 60, Duration::from_secs(180));
}

/// SIGKILLs and restarts a broker started with `extra` flags `cycles` times (within `budget`)
/// under a streaming producer, then checks the history against every acknowledgement.
fn crash_loop(extra: &[&str], cycles: usize, budget: Duration) {
    let mut broker = Broker::start(2, extra);
    Client::connect(&broker.bootstrap()).unwrap().create_topic(TOPIC, PARTITIONS, &[]).unwrap();
    // The producer runs until the loop is done (the loop stops it by closing its deadline).
    let seconds = budget.as_secs_f64();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/crash_producer.py");
    let mut producer = Command::new(support::python())
        .arg(&script)
        .args([broker.bootstrap(), TOPIC.to_string(), PARTITIONS.to_string(), format!("{seconds}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn producer");
    let stdout = producer.stdout.take().unwrap();
    let reader = std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<String>>());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xc4a5);
    let started = Instant::now();
    let mut done = 0;
    while done < cycles && started.elapsed() + Duration::from_secs(30) < budget {
        std::thread::sleep(Duration::from_millis(rng.gen_range(50..400)));
        broker.kill();
        broker.restart();
        done += 1;
    }
    // Let the producer catch up on a live broker, then stop it (SIGTERM ends its loop early via
    // the flush; it exits on its own at its deadline otherwise).
    std::thread::sleep(Duration::from_secs(3));
    let _ = Command::new("kill").args(["-INT", &producer.id().to_string()]).status();
    let exit_deadline = Instant::now() + Duration::from_secs(150);
    while producer.try_wait().unwrap().is_none() {
        assert!(Instant::now() < exit_deadline, "producer did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines = reader.join().unwrap();
    let mut acked: Vec<(i32, i64, String)> = Vec::new();
    let mut errors = 0;
    for line in &lines {
        let parts: Vec<&str> = line.splitn(4, ' ').collect();
        match parts[0] {
            "ack" => acked.push((parts[1].parse().unwrap(), parts[2].parse().unwrap(), parts[3].to_string())),
            "err" => errors += 1,
            _ => {}
        }
    }
    let history = read_history(&broker.bootstrap());
    let mut lost = 0;
    for (partition, offset, value) in &acked {
        if history.get(partition).and_then(|h| h.get(offset)) != Some(value) {
            lost += 1;
            if lost < 10 {
                eprintln!("acknowledged {partition}@{offset}={value} not found there");
            }
        }
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for records in history.values() {
        for value in records.values() {
            *seen.entry(value.as_str()).or_default() += 1;
        }
    }
    let duplicated = seen.values().filter(|&&n| n > 1).count();
    for (partition, records) in &history {
        let values: Vec<u64> = records.values().map(|v| v.parse().unwrap()).collect();
        assert!(values.windows(2).all(|w| w[0] < w[1]), "partition {partition} out of production order");
    }
    eprintln!(
        "crash loop: {done} SIGKILL cycles, acknowledged {}, lost {lost}, duplicated {duplicated}, delivery errors {errors}",
        acked.len()
    );
    assert!(done >= cycles / 2, "only {done} cycles fit in the budget");
    assert_eq!(lost, 0);
    assert_eq!(duplicated, 0);
    assert!(acked.len() > 1000, "too little acknowledged ({}) to mean anything", acked.len());
}
