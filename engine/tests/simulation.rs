//! Seeded fault simulation of the partition log on the in-memory storage seam.
//!
//! Every seed runs several rounds. In a round, concurrent appenders (a FIFO single-threaded
//! executor, so a seed replays exactly) append batches with mixed durability while the store
//! injects EIO on writes and fdatasyncs, torn writes and ENOSPC, and yields inside I/O so group
//! commits interleave; after a random number of executor steps the "machine" loses power
//! (`MemStorage::crash`). The log is reopened and checked against every acknowledgement:
//! each batch acknowledged with `Fsync` is present exactly once, at the offset it was
//! acknowledged with, byte for byte; no batch appears twice; and no append was ever acknowledged
//! after its log reported a failure.
//!
//! `RILL_SIM_SEEDS` sets the number of seeds (default 300; `RILL_TEST_LONG=1`: 3000). The run
//! prints "seeds S, faults F, acknowledged A, lost 0, duplicated 0".

#![allow(clippy::cast_possible_truncation)] // test data sizes are small

use bytes::BytesMut;
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use rand::{Rng, SeedableRng};
use rill_engine::storage::memory::{FaultConfig, MemStorage};
use rill_engine::{BatchCache, Durability, LogConfig, LogError, ManualClock, PartitionLog};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;

const T0: i64 = 1_700_000_000_000;

fn config(pipelined_sync_bytes: u64) -> LogConfig {
    LogConfig {
        // Even seeds: every group commit fdatasyncs outside the flush lock; odd seeds: those of
        // 8 KiB or more (batches here are 10 B to 9 KB, so both kinds interleave).
        pipelined_sync_bytes,
        segment_bytes: 96 * 1024,
        chunk_bytes: 16 * 1024,
        preallocate_bytes: 32 * 1024,
        index_interval_bytes: 2048,
        retention_ms: None,
        // Batches here are 10 B to 9 KB: flushes take both hand-over paths.
        streaming_batch_bytes: 4096,
        // Small, so the zeroing task below tops up often, racing the appenders' flushes.
        zero_ahead_bytes: 16 * 1024,
        ..LogConfig::default()
    }
}

#[derive(Default)]
struct Totals {
    faults: u64,
    acknowledged: u64,
    lost: u64,
    duplicated: u64,
    crashes: u64,
    runs_without_ack: u64,
    zeroed: u64,
    /// `Write`/`Memory` batches made durable by a sync behind the appends, then checked.
    synced_behind: u64,
}

#[derive(Default)]
struct RoundLog {
    /// base offset → seed of every batch acknowledged with Fsync, or acknowledged with `Write`
    /// or `Memory` and then covered by a `sync_behind_appends` (the durable end it left).
    acked: BTreeMap<i64, u64>,
    /// `Write`/`Memory` acknowledgements not yet covered by a sync: (last offset, base, seed).
    pending: Vec<(i64, i64, u64)>,
    /// Of `acked`, those a sync behind the appends covered.
    synced_behind: u64,
    /// Set when any append of this log reported `Failed`.
    failed_seen: bool,
    /// Appends acknowledged after a failure was reported (must stay 0).
    acked_after_failure: u64,
}

async fn open(
    store: &MemStorage,
    clock: &ManualClock,
    seed: u64,
) -> Result<PartitionLog<MemStorage>, LogError> {
    PartitionLog::open(
        store.clone(),
        "/data/t-0",
        config(if seed % 2 == 0 { 0 } else { 8 * 1024 }),
        BatchCache::shared(256 * 1024),
        Rc::new(clock.clone()),
    )
    .await
}

/// Reads back everything; returns base offset → seed, counting duplicated seeds.
fn read_back(
    pool: &mut LocalPool,
    log: &PartitionLog<MemStorage>,
    duplicated: &mut u64,
) -> BTreeMap<i64, u64> {
    pool.run_until(async {
        let mut found = BTreeMap::new();
        let mut seen = HashSet::new();
        let mut offset = log.log_start_offset();
        let end = log.log_end_offset();
        while offset < end {
            let batches = log
                .read(offset, 1 << 20, end)
                .await
                .expect("reading a recovered log");
            assert!(!batches.is_empty());
            for b in batches {
                assert!(
                    rill_engine::testing::body_matches_seed(&b.payload),
                    "damaged batch at {}",
                    b.header.base_offset
                );
                let seed = rill_engine::testing::batch_seed(&b.payload).expect("seeded");
                if !seen.insert(seed) {
                    *duplicated += 1;
                }
                found.insert(b.header.base_offset, seed);
                offset = b.header.next_offset();
            }
        }
        found
    })
}

fn run_seed(seed: u64, totals: &mut Totals) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let faults = FaultConfig {
        seed,
        write_eio_ppm: rng.gen_range(0..3_000),
        write_torn_ppm: rng.gen_range(0..3_000),
        fsync_eio_ppm: rng.gen_range(0..5_000),
        yield_ppm: 300_000,
        capacity_bytes: rng.gen_bool(0.3).then(|| rng.gen_range(200_000..600_000)),
    };
    let store = MemStorage::new(faults.clone());
    let clock = ManualClock::new(T0);
    let mut acknowledged: BTreeMap<i64, u64> = BTreeMap::new();
    let mut next_batch_seed = seed << 32;
    let zeroed = Rc::new(std::cell::Cell::new(0u64));
    for round in 0..6 {
        let mut pool = LocalPool::new();
        // Recovery itself runs on the faulty store; a failed open is another crash, then retry.
        let mut attempts = 0;
        let log = loop {
            match pool.run_until(open(&store, &clock, seed)) {
                Ok(log) => break Rc::new(log),
                Err(e) => {
                    assert!(
                        !matches!(e, LogError::Fenced { .. }),
                        "seed {seed}: recovery fenced the log: {e}"
                    );
                    attempts += 1;
                    assert!(attempts < 50, "seed {seed}: the log never reopened: {e}");
                    store.crash();
                    totals.crashes += 1;
                }
            }
        };
        let found = read_back(&mut pool, &log, &mut totals.duplicated);
        for (base, batch_seed) in &acknowledged {
            if found.get(base) != Some(batch_seed) {
                totals.lost += 1;
                eprintln!("seed {seed} round {round}: acknowledged batch at {base} lost");
            }
        }
        // Space freed between rounds (as retention or an operator would) for ENOSPC seeds.
        if round == 3 {
            store.set_faults(FaultConfig {
                capacity_bytes: None,
                ..faults.clone()
            });
        }
        let round_log = Rc::new(RefCell::new(RoundLog::default()));
        let appenders = rng.gen_range(1..6);
        for task in 0..appenders {
            let (log, round_log) = (log.clone(), round_log.clone());
            let first = next_batch_seed + task * 1000;
            let count = rng.gen_range(5..40);
            // Durability per append: 0 fsync (tracked as acknowledged), 1 write (overlapping
            // write-only flushes), 2 memory.
            let sizes: Vec<(usize, u8)> = (0..count)
                .map(|_| {
                    (
                        rng.gen_range(10..9000),
                        [0u8, 0, 0, 0, 0, 0, 1, 1, 2, 2][rng.gen_range(0..10)],
                    )
                })
                .collect();
            pool.spawner()
                .spawn_local(async move {
                    for (i, (size, mode)) in sizes.into_iter().enumerate() {
                        let fsync = mode == 0;
                        let batch_seed = first + i as u64;
                        let batch = rill_engine::testing::kafka_batch_filled(
                            1 + (size % 4) as i32,
                            size,
                            T0,
                            batch_seed,
                        );
                        let durability = match mode {
                            0 => Durability::Fsync,
                            1 => Durability::Write,
                            _ => Durability::Memory,
                        };
                        match log.append(BytesMut::from(&batch[..]), 1, durability).await {
                            Ok(r) => {
                                let mut rl = round_log.borrow_mut();
                                if rl.failed_seen {
                                    rl.acked_after_failure += 1;
                                }
                                if fsync {
                                    rl.acked.insert(r.base_offset, batch_seed);
                                } else {
                                    rl.pending.push((r.last_offset, r.base_offset, batch_seed));
                                }
                            }
                            Err(LogError::Failed { .. }) => {
                                round_log.borrow_mut().failed_seen = true;
                                return;
                            }
                            Err(LogError::NoSpace { .. }) => continue,
                            Err(e) => panic!("unexpected append error: {e}"),
                        }
                    }
                })
                .unwrap();
        }
        // Zeroing ahead runs beside the appenders, as the broker's timer does: its zeros must
        // never land over a batch.
        {
            let (log, round_log) = (log.clone(), round_log.clone());
            let zeroed = zeroed.clone();
            pool.spawner()
                .spawn_local(async move {
                    for _ in 0..40 {
                        match log.zero_ahead().await {
                            Ok(n) => zeroed.set(zeroed.get() + n),
                            Err(LogError::Failed { .. }) => {
                                round_log.borrow_mut().failed_seen = true;
                                return;
                            }
                            Err(e) => panic!("unexpected zero_ahead error: {e}"),
                        }
                        futures_lite::future::yield_now().await;
                    }
                })
                .unwrap();
        }
        // The periodic sync of `Write`/`Memory` durability runs beside them too, its fdatasync
        // racing their writes; what it leaves durable must survive every later crash.
        {
            let (log, round_log) = (log.clone(), round_log.clone());
            pool.spawner()
                .spawn_local(async move {
                    for _ in 0..30 {
                        match log.sync_behind_appends().await {
                            Ok(()) => {
                                let durable = log.durable_end_offset();
                                let mut rl = round_log.borrow_mut();
                                let (covered, pending): (Vec<_>, Vec<_>) =
                                    rl.pending.drain(..).partition(|(last, _, _)| *last < durable);
                                rl.pending = pending;
                                rl.synced_behind += covered.len() as u64;
                                for (_, base, batch_seed) in covered {
                                    rl.acked.insert(base, batch_seed);
                                }
                            }
                            Err(LogError::Failed { .. }) => {
                                round_log.borrow_mut().failed_seen = true;
                                return;
                            }
                            Err(LogError::NoSpace { .. }) => {}
                            Err(e) => panic!("unexpected sync_behind_appends error: {e}"),
                        }
                        futures_lite::future::yield_now().await;
                    }
                })
                .unwrap();
        }
        next_batch_seed += 1_000_000;
        // Power cut after a random number of executor steps (or after everything finished).
        let steps = rng.gen_range(1..400);
        for _ in 0..steps {
            if !pool.try_run_one() {
                break;
            }
        }
        let rl = round_log.borrow();
        assert_eq!(
            rl.acked_after_failure, 0,
            "seed {seed}: an append was acknowledged after a failure"
        );
        for (base, batch_seed) in &rl.acked {
            acknowledged.insert(*base, *batch_seed);
        }
        totals.synced_behind += rl.synced_behind;
        drop(rl);
        drop(pool);
        drop(log);
        store.crash();
        totals.crashes += 1;
    }
    // Final check after the last crash.
    let mut pool = LocalPool::new();
    store.set_faults(FaultConfig {
        seed,
        ..FaultConfig::default()
    });
    let log = pool
        .run_until(open(&store, &clock, seed))
        .unwrap_or_else(|error| panic!("seed {seed}: final reopen: {error}"));
    let found = read_back(&mut pool, &log, &mut totals.duplicated);
    for (base, batch_seed) in &acknowledged {
        if found.get(base) != Some(batch_seed) {
            totals.lost += 1;
            eprintln!("seed {seed} final: acknowledged batch at {base} lost");
        }
    }
    totals.zeroed += zeroed.get();
    totals.faults += store.stats().faults_injected;
    totals.acknowledged += acknowledged.len() as u64;
    if acknowledged.is_empty() {
        totals.runs_without_ack += 1;
    }
}

#[test]
fn seeded_faults_never_lose_or_duplicate_acknowledged_batches() {
    let long = std::env::var("RILL_TEST_LONG").is_ok_and(|v| v == "1");
    let seeds: u64 = std::env::var("RILL_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if long { 3000 } else { 300 });
    let mut totals = Totals::default();
    let first: u64 = std::env::var("RILL_SIM_FIRST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for seed in first..first + seeds {
        run_seed(seed, &mut totals);
    }
    eprintln!(
        "simulation: seeds {seeds}, crashes {}, faults injected {}, acknowledged {}, lost {}, duplicated {}, runs without an acknowledgement {}, bytes zeroed ahead {}, write/memory batches synced behind the appends {}",
        totals.crashes, totals.faults, totals.acknowledged, totals.lost, totals.duplicated, totals.runs_without_ack, totals.zeroed, totals.synced_behind
    );
    assert_eq!(totals.lost, 0);
    assert_eq!(totals.duplicated, 0);
    assert!(
        totals.zeroed > 0,
        "zero_ahead never ran against the appenders"
    );
    assert!(
        totals.synced_behind > 0,
        "no sync behind the appends ever covered an acknowledged batch"
    );
    assert!(
        totals.faults > seeds,
        "too few faults injected ({}) to mean anything",
        totals.faults
    );
    // A run that acknowledged nothing proves nothing: nearly every seed must acknowledge.
    assert!(
        totals.runs_without_ack * 20 <= seeds,
        "{} of {seeds} runs acknowledged nothing",
        totals.runs_without_ack
    );
}
