//! SIGKILL crash test: a child process appends fsync-acknowledged batches with concurrent
//! appenders; we kill it at random moments, reopen the log, and check that every acknowledged
//! batch is there, intact, at the offset it was acknowledged with, and that nothing partial is
//! ever read. Cycles: 60 by default, `RILL_TEST_LONG=1` for 300; bounded in time either way.

use rand::{Rng, SeedableRng};
use rill_engine::storage::glommio_fs::GlommioStorage;
use rill_engine::{BatchCache, PartitionLog, SystemClock};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Opens the log as a fresh process would and returns base offset → seed of every batch,
/// checking each body against its seed.
fn read_back(dir: &std::path::Path) -> BTreeMap<i64, u64> {
    let dir = dir.to_path_buf();
    glommio::LocalExecutor::default().run(async move {
        let config = rill_engine::testing::crash_test_log_config();
        let log = PartitionLog::open(
            GlommioStorage::DIRECT,
            dir,
            config,
            BatchCache::shared(0),
            Rc::new(SystemClock),
        )
        .await
        .expect("the log must reopen after a crash");
        let mut found = BTreeMap::new();
        let mut offset = log.log_start_offset();
        let end = log.log_end_offset();
        while offset < end {
            let batches = log.read(offset, 1 << 20, end).await.expect("read back");
            assert!(!batches.is_empty());
            for b in batches {
                assert_eq!(b.header.base_offset, offset, "offsets are contiguous");
                assert!(
                    rill_engine::testing::body_matches_seed(&b.payload),
                    "batch {offset} is damaged"
                );
                let seed = rill_engine::testing::batch_seed(&b.payload).expect("seeded");
                found.insert(offset, seed);
                offset = b.header.next_offset();
            }
        }
        log.close().await.expect("close");
        found
    })
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let long = std::env::var("RILL_TEST_LONG").is_ok_and(|v| v == "1");
    let cycles = if long { 300 } else { 60 };
    let budget = Duration::from_secs(if long { 600 } else { 120 });
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let dir = root.join("topic-0");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut acknowledged: BTreeMap<i64, u64> = BTreeMap::new();
    let started = Instant::now();
    let mut next_seed = 1u64;
    let mut done = 0;
    while done < cycles && started.elapsed() < budget {
        let appenders = [1u64, 4, 16][done % 3];
        let mut child = Command::new(env!("CARGO_BIN_EXE_rill-engine-crash-child"))
            .arg(&dir)
            .arg(next_seed.to_string())
            .arg(appenders.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let parts: Vec<&str> = line.split(' ').collect();
                if parts[0] == "ack" {
                    acks.push((
                        parts[1].parse::<i64>().unwrap(),
                        parts[2].parse::<u64>().unwrap(),
                    ));
                }
            }
            acks
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(30..250)));
        child.kill().expect("SIGKILL the child");
        child.wait().unwrap();
        let acks = reader.join().unwrap();
        next_seed += 1_000_000;
        for (base, seed) in acks {
            acknowledged.insert(base, seed);
        }
        let found = read_back(&dir);
        for (base, seed) in &acknowledged {
            assert_eq!(
                found.get(base),
                Some(seed),
                "cycle {done}: acknowledged batch at {base} lost or moved"
            );
        }
        done += 1;
    }
    eprintln!(
        "crash test: {done} SIGKILL cycles, acknowledged {}, lost 0",
        acknowledged.len()
    );
    assert!(done >= 50, "only {done} cycles fit in the time budget");
    assert!(
        acknowledged.len() > 500,
        "the children acknowledged too little ({}) for the test to mean anything",
        acknowledged.len()
    );
    let _ = std::fs::remove_dir_all(&root);
}
