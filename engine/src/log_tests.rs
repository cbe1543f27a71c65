//! Tests of the partition log on the in-memory store (deterministic, fault-injecting) and on
//! glommio DMA files.

#![allow(clippy::cast_possible_truncation)] // test data sizes are small

use super::*;
use crate::cache::BatchCache;
use crate::clock::ManualClock;
use crate::envelope::tests::kafka_batch;
use crate::storage::memory::{FaultConfig, MemStorage};
use futures_lite::future::block_on;

const T0: i64 = 1_700_000_000_000;

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        chunk_bytes: 16 * 1024,
        preallocate_bytes: 32 * 1024,
        index_interval_bytes: 1024,
        retention_ms: None,
        ..LogConfig::default()
    }
}

fn batch(records: i32, body: usize, ts: i64) -> BytesMut {
    BytesMut::from(&kafka_batch(records, body, ts)[..])
}

async fn open_mem(
    store: &MemStorage,
    config: LogConfig,
    clock: &ManualClock,
) -> Result<PartitionLog<MemStorage>, LogError> {
    PartitionLog::open(
        store.clone(),
        "/data/t-0",
        config,
        BatchCache::shared(1 << 20),
        Rc::new(clock.clone()),
    )
    .await
}

/// Reads the whole log from its start, checking offsets are contiguous.
async fn read_all<S: Storage>(log: &PartitionLog<S>) -> Vec<StoredBatch> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    let end = log.log_end_offset();
    while offset < end {
        let batches = log.read(offset, 100_000, end).await.unwrap();
        assert!(
            !batches.is_empty(),
            "no progress at offset {offset} of {end}"
        );
        for b in batches {
            assert!(b.header.base_offset <= offset && offset < b.header.next_offset());
            offset = b.header.next_offset();
            out.push(b);
        }
    }
    out
}

#[test]
fn reads_from_disk_return_frames_larger_than_the_read_window_whole() {
    block_on(async {
        let store = MemStorage::new(FaultConfig::default());
        let clock = ManualClock::new(T0);
        let config = LogConfig {
            segment_bytes: 1 << 20,
            ..small_config()
        };
        let log = PartitionLog::open(
            store.clone(),
            "/data/t-0",
            config,
            BatchCache::shared(0),
            Rc::new(clock.clone()),
        )
        .await
        .unwrap();
        // The disk read window is at least 64 KiB: a 200 KiB batch between two small ones.
        let sizes = [100, 200 * 1024, 300];
        for &body in &sizes {
            log.append(batch(1, body, T0), 1, Durability::Write)
                .await
                .unwrap();
        }
        let end = log.log_end_offset();
        // A byte limit of 1 still returns the first batch whole, and only it.
        let first = log.read(1, 1, end).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].header.base_offset, 1);
        assert!(first[0].payload.len() > 200 * 1024);
        // Reading everything crosses the big frame and keeps going.
        let all = read_all(&log).await;
        assert_eq!(all.len(), sizes.len());
        for (stored, &body) in all.iter().zip(&sizes) {
            assert!(
                stored.payload.len() > body,
                "{} > {body}",
                stored.payload.len()
            );
        }
    });
}

#[test]
fn append_assigns_offsets_and_reads_back_byte_identical() {
    let store = MemStorage::reliable();
    let clock = ManualClock::new(T0);
    block_on(async {
        let log = open_mem(&store, small_config(), &clock).await.unwrap();
        let mut sent = Vec::new();
        for i in 0..50 {
            let b = batch(1 + i % 5, 100 + 371 * i as usize, T0 + i as i64);
            let r = log.append(b.clone(), 3, Durability::Fsync).await.unwrap();
            let mut expected = b.to_vec();
            envelope::patch_kafka_batch(&mut expected, r.base_offset, 3);
            sent.push((r, expected));
        }
        assert!(log.segment_count() > 1, "small segments roll");
        let got = read_all(&log).await;
        assert_eq!(got.len(), sent.len());
        for (b, (r, expected)) in got.iter().zip(&sent) {
            assert_eq!(b.header.base_offset, r.base_offset);
            assert_eq!(b.header.last_offset(), r.last_offset);
            assert_eq!(b.header.term, 3);
            assert_eq!(&b.payload[..], &expected[..]);
        }
        // The same from disk, after the cache is gone.
        log.close().await.unwrap();
        let log = open_mem(&store, small_config(), &clock).await.unwrap();
        let got = read_all(&log).await;
        assert_eq!(got.len(), sent.len());
        for (b, (_, expected)) in got.iter().zip(&sent) {
            assert_eq!(&b.payload[..], &expected[..]);
        }
        assert_eq!(log.log_end_offset(), sent.last().unwrap().0.last_offset + 1);
    });
}

#[test]
fn bad_batches_are_refused_and_change_nothing() {
    let store = MemStorage::reliable();
    let clock = ManualClock::new(T0);
    block_on(async {
        let log = open_mem(&store, small_config(), &clock).await.unwrap();
        let mut corrupt = kafka_batch(1, 50, T0);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert!(matches!(
            log.append(BytesMut::from(&corrupt[..]), 1, Durability::Fsync)
                .await,
            Err(LogError::InvalidBatch(KafkaBatchError::Crc { .. }))
        ));
        let huge = batch(1, 2 * 1024 * 1024, T0);
        assert!(matches!(
            log.append(huge, 1, Durability::Fsync).await,
            Err(LogError::BatchTooLarge { .. })
        ));
        assert_eq!(log.log_end_offset(), 0);
        log.append(batch(1, 10, T0), 1, Durability::Fsync)
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), 1);
    });
}

#[test]
fn roll_by_age_and_retention_by_time_and_size() {
    let store = MemStorage::reliable();
    let clock = ManualClock::new(T0);
    let config = LogConfig {
        segment_ms: 1000,
        retention_ms: Some(10_000),
        ..small_config()
    };
    block_on(async {
        let log = open_mem(&store, config, &clock).await.unwrap();
        for i in 0..6 {
            log.append(batch(2, 100, clock.now_ms()), 1, Durability::Fsync)
                .await
                .unwrap();
            clock.advance(1500);
            let _ = i;
        }
        assert_eq!(log.segment_count(), 6, "every append after 1.5 s rolls");
        // Now T0 + 9000: batches stamped before now - 10 s are none yet.
        assert_eq!(log.apply_retention().await.unwrap().segments_deleted, 0);
        clock.advance(4000); // batch 0 at T0, batch 1 at T0+1500 are now older than 10 s.
        let out = log.apply_retention().await.unwrap();
        assert_eq!(out.segments_deleted, 2);
        assert_eq!(log.log_start_offset(), 4);
        assert!(matches!(
            log.read(0, 1000, 100).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        assert_eq!(read_all(&log).await.len(), 4);
        // Size retention keeps at most ~2 segments' worth.
        let per_segment = log.size_bytes() / 4;
        drop(log);
        let sized = LogConfig {
            retention_ms: None,
            retention_bytes: Some(2 * per_segment),
            ..config
        };
        let log = open_mem(&store, sized, &clock).await.unwrap();
        assert_eq!(log.log_start_offset(), 4, "start offset persisted");
        let out = log.apply_retention().await.unwrap();
        assert_eq!(out.segments_deleted, 2);
        assert_eq!(log.log_start_offset(), 8);
        assert_eq!(log.segment_count(), 2);
    });
}

#[test]
fn truncate_suffix_and_prefix() {
    let store = MemStorage::reliable();
    let clock = ManualClock::new(T0);
    block_on(async {
        let log = open_mem(&store, small_config(), &clock).await.unwrap();
        let mut bases = Vec::new();
        for i in 0..40 {
            bases.push(
                log.append(
                    batch(3, 5000, T0 + i),
                    (i / 10) as u64 + 1,
                    Durability::Fsync,
                )
                .await
                .unwrap()
                .base_offset,
            );
        }
        let segments_before = log.segment_count();
        assert!(matches!(
            log.truncate_suffix(bases[20] + 1).await,
            Err(LogError::NotBatchBoundary(_))
        ));
        log.truncate_suffix(bases[20]).await.unwrap();
        assert_eq!(log.log_end_offset(), bases[20]);
        assert!(log.segment_count() <= segments_before);
        assert_eq!(
            log.last_term(),
            2,
            "batch 19 was appended in term 2, batch 20 removed"
        );
        let r = log
            .append(batch(1, 10, T0), 9, Durability::Fsync)
            .await
            .unwrap();
        assert_eq!(r.base_offset, bases[20]);
        let all = read_all(&log).await;
        assert_eq!(all.len(), 21);
        assert_eq!(all.last().unwrap().header.term, 9);
        // Survives a reopen.
        drop(log);
        let log = open_mem(&store, small_config(), &clock).await.unwrap();
        assert_eq!(read_all(&log).await.len(), 21);
        // A cut exactly at a segment boundary.
        let names = log.segment_names();
        let second_base = segment::parse_segment_file_name(&names[1]).unwrap().0;
        log.truncate_suffix(second_base).await.unwrap();
        assert_eq!(log.segment_count(), 1);
        assert_eq!(log.log_end_offset(), second_base);
        log.append(batch(1, 10, T0), 9, Durability::Fsync)
            .await
            .unwrap();
        // Prefix.
        log.truncate_prefix(bases[2]).await.unwrap();
        assert_eq!(log.log_start_offset(), bases[2]);
        assert_eq!(read_all(&log).await[0].header.base_offset, bases[2]);
        // Everything.
        log.truncate_suffix(bases[2]).await.unwrap();
        assert_eq!(log.log_end_offset(), bases[2]);
        assert!(read_all(&log).await.is_empty());
    });
}

#[test]
fn offset_for_timestamp_finds_the_first_batch_reaching_it() {
    let store = MemStorage::reliable();
    let clock = ManualClock::new(T0);
    block_on(async {
        let log = open_mem(&store, small_config(), &clock).await.unwrap();
        for i in 0..100 {
            log.append(batch(2, 500, T0 + 10 * i), 1, Durability::Fsync)
                .await
                .unwrap();
        }
        assert_eq!(log.offset_for_timestamp(T0 - 5).await.unwrap(), Some(0));
        assert_eq!(
            log.offset_for_timestamp(T0 + 10 * 37).await.unwrap(),
            Some(74)
        );
        assert_eq!(
            log.offset_for_timestamp(T0 + 10 * 37 + 1).await.unwrap(),
            Some(76)
        );
        assert_eq!(log.offset_for_timestamp(T0 + 100_000).await.unwrap(), None);
        drop(log);
        let log = open_mem(&store, small_config(), &clock).await.unwrap();
        assert_eq!(
            log.offset_for_timestamp(T0 + 10 * 37).await.unwrap(),
            Some(74)
        );
    });
}

/// Crash at random moments of a seeded run: every batch acknowledged with `Fsync` is there,
/// nothing partial is ever read, and offsets stay contiguous.
#[test]
fn crash_keeps_every_acknowledged_batch() {
    let mut acknowledged_total = 0;
    for seed in 0..60 {
        let store = MemStorage::new(FaultConfig {
            seed,
            ..Default::default()
        });
        let clock = ManualClock::new(T0);
        block_on(async {
            let mut acked: Vec<(i64, Vec<u8>)> = Vec::new();
            for round in 0..4 {
                let log = open_mem(&store, small_config(), &clock).await.unwrap();
                let recovered = read_all(&log).await;
                for (base, payload) in &acked {
                    let b = recovered.iter().find(|b| b.header.base_offset == *base);
                    let b = b.unwrap_or_else(|| {
                        panic!("seed {seed} round {round}: acknowledged batch {base} lost")
                    });
                    assert_eq!(&b.payload[..], &payload[..]);
                }
                let n = 5 + (usize::try_from(seed).unwrap() * 7 + round) % 20;
                for i in 0..n {
                    let durability = if i % 3 == 0 {
                        Durability::Memory
                    } else {
                        Durability::Fsync
                    };
                    let b = batch(
                        1 + i32::try_from(i % 4).unwrap(),
                        200 + (i * 911) % 9000,
                        T0,
                    );
                    let r = log.append(b, 1, durability).await.unwrap();
                    if durability == Durability::Fsync {
                        // Everything below is covered too.
                        let all = log
                            .read(0.max(log.log_start_offset()), usize::MAX, r.last_offset + 1)
                            .await
                            .unwrap();
                        acked = all
                            .iter()
                            .map(|b| (b.header.base_offset, b.payload.to_vec()))
                            .collect();
                        acknowledged_total += 1;
                    }
                }
                store.crash();
            }
        });
    }
    assert!(
        acknowledged_total > 500,
        "the run acknowledged too little to mean anything"
    );
}

#[test]
fn zero_ahead_never_touches_batches_and_reserves_for_appends() {
    block_on(async {
        let store = MemStorage::reliable();
        let clock = ManualClock::new(T0);
        let config = LogConfig {
            segment_bytes: 1 << 20,
            zero_ahead_bytes: 64 * 1024,
            ..small_config()
        };
        let log = open_mem(&store, config, &clock).await.unwrap();
        // A written batch ending mid-page: the zeros start on the next page. Reopened from the
        // file (no crash: every write stays), the batch must be intact.
        log.append(batch(3, 300, T0), 1, Durability::Write)
            .await
            .unwrap();
        let zeroed = log.zero_ahead().await.unwrap();
        assert_eq!(zeroed, 64 * 1024, "the whole lead beyond the batch");
        drop(log);
        let log = open_mem(&store, config, &clock).await.unwrap();
        assert_eq!(
            read_all(&log).await.len(),
            1,
            "the zeros spared the batch's last page"
        );
        // Again with a batch staged but not written: the zeros go beyond it as well.
        log.append(batch(2, 5000, T0), 1, Durability::Memory)
            .await
            .unwrap();
        let zeroed = log.zero_ahead().await.unwrap();
        assert_eq!(
            zeroed,
            64 * 1024,
            "a recovered segment: the whole lead, from the staged end"
        );
        assert_eq!(log.stats().bytes_zeroed, zeroed);
        assert_eq!(log.zero_ahead().await.unwrap(), 0, "lead still full");
        // Appends within the lead overwrite zeros and reserve nothing themselves.
        let reserved = log.stats().preallocate_latency.count;
        for _ in 0..12 {
            log.append(batch(1, 3000, T0), 1, Durability::Fsync)
                .await
                .unwrap();
        }
        assert_eq!(log.stats().preallocate_latency.count, reserved);
        assert!(
            log.zero_ahead().await.unwrap() > 0,
            "more than half the lead used: top up"
        );
        let before: Vec<_> = read_all(&log)
            .await
            .into_iter()
            .map(|b| b.payload)
            .collect();
        assert_eq!(before.len(), 14);
        drop(log);
        store.crash();
        let log = open_mem(&store, config, &clock).await.unwrap();
        let after: Vec<_> = read_all(&log)
            .await
            .into_iter()
            .map(|b| b.payload)
            .collect();
        assert_eq!(
            after, before,
            "every synced batch survives the zeros and a power cut"
        );
    });
}

#[test]
fn memory_appends_come_due_for_a_background_write_out_at_half_the_stage_limit() {
    block_on(async {
        let store = MemStorage::reliable();
        let clock = ManualClock::new(T0);
        let config = LogConfig {
            staged_bytes_max: 40 * 1024,
            ..small_config()
        };
        let log = open_mem(&store, config, &clock).await.unwrap();
        let mut appended = 0;
        while !log.write_out_due() {
            log.append(batch(1, 3000, T0), 1, Durability::Memory)
                .await
                .unwrap();
            appended += 1;
            assert!(appended < 20, "never came due");
        }
        assert!(
            appended * 3000 > 20 * 1024,
            "due only past half the limit ({appended} appends)"
        );
        assert_eq!(
            log.written_end_offset(),
            0,
            "nothing written before the write-out"
        );
        log.write_out().await.unwrap();
        assert_eq!(log.written_end_offset(), log.log_end_offset());
        assert!(!log.write_out_due());
    });
}

/// A log on a fresh in-memory store after `count` appends of 8 KB batches (durability
/// `Write`), the clock advanced by `gap_ms` before each.
async fn log_after_8kb_batches(
    config: LogConfig,
    count: usize,
    gap_ms: i64,
) -> PartitionLog<MemStorage> {
    let store = MemStorage::reliable();
    let clock = ManualClock::new(T0);
    let log = open_mem(&store, config, &clock).await.unwrap();
    for _ in 0..count {
        clock.advance(gap_ms);
        log.append(batch(1, 8000, T0), 1, Durability::Write)
            .await
            .unwrap();
    }
    log
}

#[test]
fn fast_streams_reserve_in_growing_steps_slow_logs_in_the_base_step() {
    block_on(async {
        let config = LogConfig {
            segment_bytes: 16 << 20,
            ..small_config()
        };
        let fallocates = |gap_ms: i64| async move {
            let log = log_after_8kb_batches(config, 60, gap_ms).await;
            log.stats().preallocate_latency.count
        };
        // 60 batches of 8 KB (about 480 KiB): each base step covers the batch and 32 KiB more,
        // 12 steps; doubling, 32 + 64 + 128 + 256 KiB suffice.
        let (fast, slow) = (fallocates(0).await, fallocates(2000).await);
        assert!(fast <= 5, "fast stream: {fast} fallocates");
        assert_eq!(slow, 12, "slow log: the base step every time");
    });
}

#[test]
fn a_step_of_a_whole_segment_reserves_each_segment_once_at_its_start() {
    block_on(async {
        // The broker's `preallocate=true`: the step is the segment size.
        let config = LogConfig {
            segment_bytes: 256 * 1024,
            preallocate_bytes: 256 * 1024,
            ..small_config()
        };
        // 100 batches of 8 KB: about 800 KB, so four segments.
        let log = log_after_8kb_batches(config, 100, 0).await;
        let segments = log.segment_count() as u64;
        assert!(segments >= 4, "{segments} segments");
        assert_eq!(log.stats().preallocate_latency.count, segments);
    });
}

#[test]
fn torn_tails_are_truncated() {
    type Damage = fn(&mut Vec<u8>, usize);
    let cases: [(&str, Damage); 3] = [
        ("truncate mid-batch", |f, end| f.truncate(end - 100)),
        ("zero the last page", |f, end| {
            let page = (end - 1) / 4096 * 4096;
            f.truncate(end);
            f[page..end].fill(0);
        }),
        ("append garbage", |f, end| {
            f.truncate(end);
            f.extend((0..5000u32).map(|i| u8::try_from(i * 31 % 256).unwrap()));
        }),
    ];
    for (name, damage) in cases {
        let store = MemStorage::reliable();
        let clock = ManualClock::new(T0);
        block_on(async {
            let config = LogConfig {
                segment_bytes: 1 << 20,
                ..small_config()
            };
            let log = open_mem(&store, config, &clock).await.unwrap();
            for _ in 0..10 {
                log.append(batch(1, 3000, T0), 1, Durability::Fsync)
                    .await
                    .unwrap();
            }
            let end = log.size_bytes() as usize;
            drop(log);
            let path = store
                .file_paths()
                .into_iter()
                .find(|p| p.extension().is_some_and(|e| e == "log"))
                .unwrap();
            store.corrupt(&path, |f| damage(f, end));
            let log = open_mem(&store, config, &clock)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let got = read_all(&log).await;
            assert!(
                got.len() >= 8 && got.len() <= 10,
                "{name}: {} batches survive",
                got.len()
            );
            // Appends continue after the cut.
            log.append(batch(1, 10, T0), 1, Durability::Fsync)
                .await
                .unwrap();
            assert_eq!(read_all(&log).await.len(), got.len() + 1, "{name}");
        });
    }
}

/// Appends staged while a sync behind the appends fdatasyncs carry the window of the epoch being
/// synced, so a tear in that epoch followed by their frames is a torn tail (truncated), not
/// interior damage (a fenced log).
#[test]
fn a_tear_under_a_sync_behind_the_appends_is_a_torn_tail() {
    use futures::executor::LocalPool;
    use futures::task::LocalSpawnExt;
    // Every store operation yields once, so the appender below runs while the sync is inside
    // its write and its fdatasync.
    let store = MemStorage::new(FaultConfig {
        yield_ppm: 1_000_000,
        ..FaultConfig::default()
    });
    let clock = ManualClock::new(T0);
    let mut pool = LocalPool::new();
    let log = Rc::new(
        pool.run_until(open_mem(&store, small_config(), &clock))
            .unwrap(),
    );
    pool.run_until(log.append(batch(1, 3000, T0), 1, Durability::Fsync))
        .unwrap();
    for _ in 0..3 {
        pool.run_until(log.append(batch(1, 3000, T0), 1, Durability::Write))
            .unwrap();
    }
    let syncing = log.clone();
    let sync = pool
        .spawner()
        .spawn_local_with_handle(async move { syncing.sync_behind_appends().await })
        .unwrap();
    let appending = log.clone();
    pool.spawner()
        .spawn_local(async move {
            appending
                .append(batch(1, 3000, T0), 1, Durability::Write)
                .await
                .unwrap();
        })
        .unwrap();
    pool.run_until(sync).unwrap();
    pool.run();
    assert_eq!(
        log.durable_end_offset(),
        4,
        "the sync covered what was written before it"
    );
    let frames: Vec<Vec<u8>> = block_on(read_all(&log))
        .iter()
        .map(|b| b.to_frame())
        .collect();
    let headers: Vec<crate::envelope::EnvelopeHeader> =
        block_on(read_all(&log)).iter().map(|b| b.header).collect();
    assert_eq!(headers.len(), 5);
    let (epoch, window) = (headers[1].write_epoch, headers[1].epoch_start);
    assert_eq!(
        window,
        frames[0].len() as u64,
        "the Write epoch began after the first batch"
    );
    assert!(headers[1..4]
        .iter()
        .all(|h| (h.write_epoch, h.epoch_start) == (epoch, window)));
    assert_eq!(
        (headers[4].write_epoch, headers[4].epoch_start),
        (epoch + 1, window),
        "staged during the sync: the next epoch, the window of the one being synced"
    );
    drop(log);
    // A power cut tore the third batch (a zero sector in it) while the fifth had landed.
    let third = (frames[0].len() + frames[1].len()) as u64;
    let path = store
        .file_paths()
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    store.corrupt(&path, |f| {
        let sector = (third as usize + 1024) / 512 * 512;
        f[sector..sector + 512].fill(0);
    });
    let log = block_on(open_mem(&store, small_config(), &clock))
        .unwrap_or_else(|e| panic!("a tear inside the unsynced window must not fence: {e}"));
    assert_eq!(block_on(read_all(&log)).len(), 2, "cut at the tear");
}

/// An `Fsync` group commit of `pipelined_sync_bytes` or more fdatasyncs outside the flush lock:
/// the next group's write goes out while the last one's fdatasync runs, its frames carry the
/// window of the epoch being synced, and no appender is acknowledged before an fdatasync
/// covering it returned.
#[test]
fn the_next_group_commit_writes_while_the_last_one_fdatasyncs() {
    use futures::executor::LocalPool;
    use futures::task::LocalSpawnExt;
    let store = MemStorage::reliable();
    let clock = ManualClock::new(T0);
    let mut pool = LocalPool::new();
    let config = LogConfig {
        pipelined_sync_bytes: 0,
        ..small_config()
    };
    let log = Rc::new(pool.run_until(open_mem(&store, config, &clock)).unwrap());
    store.hold_fdatasyncs(true);
    // Runs the tasks (the held fdatasync yielding among them) until `done`.
    let step_until = |pool: &mut LocalPool, what: &str, done: &dyn Fn() -> bool| {
        pool.run_until(async {
            for _ in 0..10_000 {
                if done() {
                    return;
                }
                futures_lite::future::yield_now().await;
            }
            panic!("never reached: {what}");
        });
    };
    let spawn_append = |pool: &LocalPool| {
        let log = log.clone();
        pool.spawner()
            .spawn_local_with_handle(async move {
                log.append(batch(1, 3000, T0), 1, Durability::Fsync).await
            })
            .unwrap()
    };
    let first = spawn_append(&pool);
    step_until(&mut pool, "the first group commit's fdatasync", &|| {
        log.syncs_issued.get() == 1
    });
    let second = spawn_append(&pool);
    step_until(
        &mut pool,
        "the second group commit's write, with the first fdatasync held",
        &|| log.syncs_issued.get() == 2,
    );
    assert_eq!(log.written_end_offset(), 2, "both groups written");
    assert_eq!(log.durable_end_offset(), 0, "nothing durable yet");
    assert_eq!(log.syncs_published.get(), 0);
    store.hold_fdatasyncs(false);
    let (first, second) = pool.run_until(async { (first.await, second.await) });
    assert_eq!(first.unwrap().base_offset, 0);
    assert_eq!(second.unwrap().base_offset, 1);
    assert_eq!(log.durable_end_offset(), 2);
    assert_eq!(store.stats().fsyncs, 2, "one fdatasync per group commit");
    let headers: Vec<crate::envelope::EnvelopeHeader> =
        block_on(read_all(&log)).iter().map(|b| b.header).collect();
    assert_eq!(
        (headers[1].write_epoch, headers[1].epoch_start),
        (headers[0].write_epoch + 1, headers[0].epoch_start),
        "staged during the first fdatasync: the next epoch, the window of the one being synced"
    );
}

#[test]
fn interior_bit_flip_fences_the_log() {
    let store = MemStorage::reliable();
    let clock = ManualClock::new(T0);
    block_on(async {
        let log = open_mem(&store, small_config(), &clock).await.unwrap();
        for _ in 0..10 {
            log.append(batch(1, 3000, T0), 1, Durability::Fsync)
                .await
                .unwrap();
        }
        drop(log);
        let path = store
            .file_paths()
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "log"))
            .unwrap();
        store.corrupt(&path, |f| f[5000] ^= 0x10);
        let err = open_mem(&store, small_config(), &clock).await.unwrap_err();
        match err {
            LogError::Fenced {
                position,
                next_valid_position,
                ..
            } => {
                assert!(position < 5000 && next_valid_position > 5000);
            }
            other => panic!("expected a fence, got {other}"),
        }
    });
}

#[test]
fn failed_fsync_is_never_acknowledged_and_fails_the_log() {
    let mut failures_seen = 0;
    let mut acked_total = 0;
    for seed in 0..40 {
        let store = MemStorage::new(FaultConfig {
            seed,
            ..Default::default()
        });
        let clock = ManualClock::new(T0);
        block_on(async {
            let log = open_mem(&store, small_config(), &clock).await.unwrap();
            store.set_faults(FaultConfig {
                seed,
                fsync_eio_ppm: 100_000,
                write_eio_ppm: 20_000,
                write_torn_ppm: 20_000,
                ..Default::default()
            });
            let mut acked = Vec::new();
            let mut failed = false;
            for i in 0..60 {
                match log
                    .append(batch(1, 700 + i * 13, T0), 1, Durability::Fsync)
                    .await
                {
                    Ok(r) => {
                        assert!(
                            !failed,
                            "seed {seed}: an append was acknowledged after a failure"
                        );
                        acked.push(r.base_offset);
                    }
                    Err(LogError::Failed { .. }) => failed = true,
                    Err(e) => panic!("seed {seed}: unexpected {e}"),
                }
            }
            if failed {
                failures_seen += 1;
            }
            acked_total += acked.len();
            // Restart: everything acknowledged is there.
            store.set_faults(FaultConfig {
                seed,
                ..Default::default()
            });
            store.crash();
            let log = open_mem(&store, small_config(), &clock).await.unwrap();
            let got: Vec<i64> = read_all(&log)
                .await
                .iter()
                .map(|b| b.header.base_offset)
                .collect();
            for base in &acked {
                assert!(got.contains(base), "seed {seed}: acknowledged {base} lost");
            }
        });
    }
    assert!(
        failures_seen > 20,
        "faults were injected in too few runs ({failures_seen})"
    );
    assert!(
        acked_total > 100,
        "too little was acknowledged ({acked_total})"
    );
}

#[test]
fn enospc_refuses_the_batch_and_recovers_when_space_is_freed() {
    let store = MemStorage::new(FaultConfig {
        capacity_bytes: Some(256 * 1024),
        ..Default::default()
    });
    let clock = ManualClock::new(T0);
    block_on(async {
        let log = open_mem(&store, small_config(), &clock).await.unwrap();
        let mut acked = 0;
        let err = loop {
            match log.append(batch(1, 4000, T0), 1, Durability::Fsync).await {
                Ok(_) => acked += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(err, LogError::NoSpace { .. }), "{err}");
        assert!(acked > 10);
        assert_eq!(log.failure(), None, "a full disk is not a failed log");
        assert_eq!(read_all(&log).await.len(), acked);
        store.set_faults(FaultConfig {
            capacity_bytes: Some(1 << 30),
            ..Default::default()
        });
        log.append(batch(1, 4000, T0), 1, Durability::Fsync)
            .await
            .unwrap();
        assert_eq!(read_all(&log).await.len(), acked + 1);
    });
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    /// A random mix of appends, reopens, crashes, suffix and prefix truncation agrees with a
    /// simple model.
    #[test]
    fn log_agrees_with_a_model(ops in proptest::collection::vec((0u8..12, 1usize..20_000), 1..60), seed in 0u64..1000) {
        let store = MemStorage::new(FaultConfig { seed, ..Default::default() });
        let clock = ManualClock::new(T0);
        block_on(async {
            let mut log = open_mem(&store, small_config(), &clock).await.unwrap();
            let mut model: Vec<(i64, i64, Vec<u8>)> = Vec::new(); // (base, next, payload)
            let mut start = 0i64;
            for (op, size) in ops {
                match op {
                    0..=7 => {
                        let b = batch(1 + (size % 7) as i32, size, T0);
                        let r = log.append(b.clone(), 1, Durability::Fsync).await.unwrap();
                        let mut p = b.to_vec();
                        envelope::patch_kafka_batch(&mut p, r.base_offset, 1);
                        model.push((r.base_offset, r.last_offset + 1, p));
                    }
                    8 => {
                        log.close().await.unwrap();
                        log = open_mem(&store, small_config(), &clock).await.unwrap();
                    }
                    9 => {
                        store.crash();
                        log = open_mem(&store, small_config(), &clock).await.unwrap();
                    }
                    10 if !model.is_empty() => {
                        let i = size % model.len();
                        if model[i].0 >= start {
                            log.truncate_suffix(model[i].0).await.unwrap();
                            model.truncate(i);
                        }
                    }
                    _ if !model.is_empty() => {
                        let i = size % model.len();
                        log.truncate_prefix(model[i].0).await.unwrap();
                        start = start.max(model[i].0);
                    }
                    _ => {}
                }
            }
            let got = read_all(&log).await;
            let expected: Vec<_> = model.iter().filter(|m| m.1 > log.log_start_offset()).collect();
            assert_eq!(got.len(), expected.len());
            for (g, m) in got.iter().zip(expected) {
                assert_eq!(g.header.base_offset, m.0);
                assert_eq!(&g.payload[..], &m.2[..]);
            }
        });
    }
}

mod on_glommio {
    use super::*;
    use crate::storage::glommio_fs::GlommioStorage;

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        glommio::LocalExecutor::default().run(f)
    }

    /// Direct and buffered files alike.
    const BOTH: [GlommioStorage; 2] = [GlommioStorage::DIRECT, GlommioStorage::BUFFERED];

    /// Opens (or reopens) the log at `path` with no batch cache, so reads come from the files.
    async fn open_files(
        storage: GlommioStorage,
        path: &Path,
        config: LogConfig,
    ) -> PartitionLog<GlommioStorage> {
        let clock: Rc<dyn Clock> = Rc::new(ManualClock::new(T0));
        PartitionLog::open(storage, path, config, BatchCache::shared(0), clock)
            .await
            .unwrap()
    }

    /// Appends `b` and keeps its bytes as the log stores them (offsets assigned) in `sent`.
    async fn append_kept(
        log: &PartitionLog<GlommioStorage>,
        b: BytesMut,
        durability: Durability,
        sent: &mut Vec<Vec<u8>>,
    ) {
        let r = log.append(b.clone(), 1, durability).await.unwrap();
        let mut p = b.to_vec();
        envelope::patch_kafka_batch(&mut p, r.base_offset, 1);
        sent.push(p);
    }

    /// Every batch's bytes as read from the log's start.
    async fn payloads(log: &PartitionLog<GlommioStorage>) -> Vec<Vec<u8>> {
        read_all(log)
            .await
            .into_iter()
            .map(|b| b.payload.to_vec())
            .collect()
    }

    #[test]
    fn dma_files_round_trip_and_recover() {
        for storage in BOTH {
            files_round_trip_and_recover(storage);
        }
    }

    fn files_round_trip_and_recover(storage: GlommioStorage) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topic-0");
        run(async move {
            let log = open_files(storage, &path, small_config()).await;
            let mut sent = Vec::new();
            for i in 0..30 {
                let b = batch(2, 100 + i * 997, T0);
                append_kept(&log, b, Durability::Fsync, &mut sent).await;
            }
            assert_eq!(payloads(&log).await, sent);
            drop(log); // no close: files keep their preallocated tails, as after a crash
            let log = open_files(storage, &path, small_config()).await;
            assert_eq!(payloads(&log).await, sent);
            log.close().await.unwrap();
            for name in log.segment_names() {
                let len = std::fs::metadata(path.join(&name)).unwrap().len();
                assert!(
                    len > 0 && len < 64 * 1024 + 16 * 1024,
                    "{name} cut to its logical size ({len})"
                );
            }
        });
    }

    /// Buffered files write small ranges inline and large ones through io_uring; a log mixing
    /// both (each small write rewriting the tail page a large one left) reads back whole, before
    /// and after a reopen.
    #[test]
    fn large_and_small_writes_round_trip_on_both_kinds_of_file() {
        for storage in BOTH {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("topic-0");
            run(async move {
                let config = LogConfig {
                    segment_bytes: 8 << 20,
                    ..LogConfig::default()
                };
                let log = open_files(storage, &path, config).await;
                let mut sent = Vec::new();
                for i in 0..12 {
                    let body = if i % 3 == 0 {
                        600 * 1024 + i * 97
                    } else {
                        100 + i * 997
                    };
                    let durability = if i % 2 == 0 {
                        Durability::Write
                    } else {
                        Durability::Fsync
                    };
                    append_kept(&log, batch(1, body, T0), durability, &mut sent).await;
                }
                assert!(log.stats().bytes_written > 4 * 600 * 1024);
                assert_eq!(payloads(&log).await, sent);
                log.close().await.unwrap();
                let log = open_files(storage, &path, config).await;
                assert_eq!(payloads(&log).await, sent);
                log.close().await.unwrap();
            });
        }
    }

    #[test]
    fn zero_ahead_on_dma_files_keeps_every_batch() {
        for storage in BOTH {
            zero_ahead_keeps_every_batch(storage);
        }
    }

    fn zero_ahead_keeps_every_batch(storage: GlommioStorage) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topic-0");
        run(async move {
            let config = LogConfig {
                segment_bytes: 256 * 1024,
                zero_ahead_bytes: 64 * 1024,
                ..small_config()
            };
            let log = open_files(storage, &path, config).await;
            let mut sent = Vec::new();
            for i in 0..60 {
                if i % 5 == 0 {
                    log.zero_ahead().await.unwrap();
                }
                let b = batch(2, 100 + i * 397, T0);
                append_kept(&log, b, Durability::Fsync, &mut sent).await;
            }
            assert!(log.stats().bytes_zeroed >= 64 * 1024);
            assert!(log.segment_count() > 1, "rolled across zeroed segments");
            drop(log); // no close: the zeroed tail stays, as after a crash
            let log = open_files(storage, &path, config).await;
            assert_eq!(payloads(&log).await, sent);
            log.close().await.unwrap();
        });
    }

    #[test]
    fn group_commit_covers_64_concurrent_appends_with_few_fdatasyncs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topic-0");
        run(async move {
            let clock: Rc<dyn Clock> = Rc::new(ManualClock::new(T0));
            let config = LogConfig {
                segment_bytes: 1 << 30,
                ..LogConfig::default()
            };
            let log = Rc::new(
                PartitionLog::open(
                    GlommioStorage::DIRECT,
                    path,
                    config,
                    BatchCache::shared(1 << 20),
                    clock,
                )
                .await
                .unwrap(),
            );
            let before = log.stats().fdatasyncs();
            let tasks: Vec<_> = (0..64)
                .map(|_| {
                    let log = log.clone();
                    glommio::spawn_local(async move {
                        log.append(batch(1, 4000, T0), 1, Durability::Fsync)
                            .await
                            .unwrap()
                    })
                })
                .collect();
            let mut offsets = Vec::new();
            for t in tasks {
                offsets.push(t.await.base_offset);
            }
            offsets.sort();
            assert_eq!(offsets, (0..64).collect::<Vec<_>>());
            let syncs = log.stats().fdatasyncs() - before;
            assert!(syncs <= 4, "64 concurrent appends took {syncs} fdatasyncs");
            assert_eq!(log.durable_end_offset(), 64);
        });
    }

    /// Runs `appenders` concurrent `Write` appenders of `appends` batches of `body` bytes each
    /// on a fresh glommio log with `config`, checks every batch reads back, and returns the
    /// log's flush trace.
    fn write_stream_trace(
        config: LogConfig,
        appenders: usize,
        appends: usize,
        body: usize,
    ) -> Vec<FlushEvent> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topic-0");
        run(async move {
            let log = Rc::new(open_files(GlommioStorage::DIRECT, &path, config).await);
            let tasks: Vec<_> = (0..appenders)
                .map(|_| {
                    let log = log.clone();
                    glommio::spawn_local(async move {
                        for _ in 0..appends {
                            log.append(batch(1, body, T0), 1, Durability::Write)
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
            assert_eq!(read_all(&log).await.len(), appenders * appends);
            log.close().await.unwrap();
            log.flush_trace()
        })
    }

    /// With large `Write` batches, a flush that leaves appenders unserved hands over: the next
    /// flush starts before any appender it served returns (so the disk writes while they copy
    /// their next batches in); with small batches, served appenders return first.
    #[test]
    fn streaming_write_flushes_start_the_next_flush_before_served_appenders_return() {
        for (body, streams) in [(512 << 10, true), (4 << 10, false)] {
            let config = LogConfig {
                segment_bytes: 1 << 30,
                batch_bytes_max: 1 << 20,
                ..LogConfig::default()
            };
            check_hand_overs(&write_stream_trace(config, 4, 12, body), streams);
        }
    }

    /// A stream of large `Write` batches that settles into lopsided flushes (one batch, then
    /// all the others, as an fallocate between appends leaves it) evens them out: each
    /// streaming flush writes about half of what is outstanding.
    #[test]
    fn streaming_flushes_even_out() {
        let config = LogConfig {
            segment_bytes: 1 << 30,
            batch_bytes_max: 1 << 20,
            preallocate_bytes: 1 << 20,
            ..LogConfig::default()
        };
        let trace = write_stream_trace(config, 8, 40, 256 << 10);
        let mut sizes = Vec::new();
        let mut before = 0;
        for event in &trace {
            if let FlushEvent::End { written, .. } = *event {
                sizes.push(written - before);
                before = written;
            }
        }
        // Past the start and before the last appenders drain: lopsided flushes (without the
        // budget: 1, 7, 1, 7, ...) write a single batch every other time.
        let middle = &sizes[sizes.len() / 4..sizes.len() - 8];
        let single = middle.iter().filter(|&&n| n <= 1).count();
        assert!(
            single * 4 < middle.len(),
            "{single} of {} flushes wrote one batch: {sizes:?}",
            middle.len()
        );
    }

    /// Checks every flush end in `trace`: after one that handed over, the next flush starts
    /// before any appender it served returns; `streams` says whether hand-overs must happen.
    fn check_hand_overs(trace: &[FlushEvent], streams: bool) {
        let mut written_before = 0;
        let mut hand_overs = 0;
        for (i, event) in trace.iter().enumerate() {
            let FlushEvent::End {
                written,
                handed_over,
            } = *event
            else {
                continue;
            };
            let served = |e: &FlushEvent| match e {
                FlushEvent::Return { offset } => *offset > written_before && *offset <= written,
                _ => false,
            };
            let later = &trace[i + 1..];
            let first_served = later.iter().position(served);
            let next_start = later.iter().position(|e| *e == FlushEvent::Start);
            if handed_over {
                hand_overs += 1;
                let next_start = next_start.expect("a hand-over starts a next flush");
                // Appenders that arrived before the log knew it streams queued for the flush
                // lock itself rather than parking; at the first hand-over, those it served still
                // pass through the lock (and return) before the woken appender takes it.
                assert!(
                    hand_overs == 1 || first_served.is_none_or(|r| next_start < r),
                    "flush ending at {written} handed over, yet a served appender returned \
                     before the next flush started: {trace:?}"
                );
            }
            written_before = written;
        }
        if streams {
            assert!(hand_overs > 0, "no flush handed over: {trace:?}");
        } else {
            assert_eq!(hand_overs, 0, "small batches handed over: {trace:?}");
        }
    }
}

/// Writes the seed corpus of the engine's fuzz targets (run with `RILL_WRITE_FUZZ_CORPUS=1`).
#[test]
fn write_fuzz_seed_corpus() {
    if std::env::var("RILL_WRITE_FUZZ_CORPUS").is_err() {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let store = MemStorage::reliable();
    let clock = ManualClock::new(T0);
    block_on(async {
        let log = open_mem(&store, small_config(), &clock).await.unwrap();
        for i in 0..6 {
            log.append(batch(1 + i, 50 * i as usize + 10, T0), 1, Durability::Fsync)
                .await
                .unwrap();
        }
        let frames: Vec<Vec<u8>> = read_all(&log).await.iter().map(|b| b.to_frame()).collect();
        for (i, f) in frames.iter().enumerate() {
            std::fs::write(root.join(format!("envelope_decode/frame-{i}")), f).unwrap();
        }
        let segment: Vec<u8> = frames.concat();
        std::fs::write(root.join("recovery_scan/segment"), &segment).unwrap();
        let mut torn = segment.clone();
        torn.truncate(segment.len() - 7);
        std::fs::write(root.join("recovery_scan/torn"), &torn).unwrap();
    });
}
