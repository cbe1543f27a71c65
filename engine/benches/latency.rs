//! Durable append latency percentiles and group-commit efficiency, on glommio DMA files.
//!
//! For 1, 8 and 64 concurrent appenders of 4 KiB batches with durability `fsync`, records every
//! append's latency (from the call to the acknowledgement) in an HdrHistogram and prints
//! p50/p90/p99/p99.9/max, appends per second and fdatasyncs per append; then measures how many
//! fdatasyncs 64 appends issued at once cost.
//!
//! `RILL_BENCH_ZERO_AHEAD_MS=N` runs a task that zeroes ahead of the log every N ms, as the
//! broker does (`PartitionLog::zero_ahead`, broker default 100); by default none runs, so the
//! rows measure the log alone. `RILL_BENCH_STATS=1` adds the log's I/O counters.
//!
//! `cargo bench -p rill-engine --bench latency` (`-- --json` prints JSON lines instead).

use bytes::BytesMut;
use hdrhistogram::Histogram;
use rill_engine::storage::glommio_fs::GlommioStorage;
use rill_engine::{BatchCache, Durability, LogConfig, PartitionLog, SystemClock};
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

const BATCH_BYTES: usize = 4096;
const RUN_TIME: Duration = Duration::from_secs(5);
const WARM_UP: Duration = Duration::from_secs(1);

fn dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("engine-latency")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn open(dir: PathBuf) -> Rc<PartitionLog<GlommioStorage>> {
    let config = LogConfig {
        retention_ms: None,
        ..LogConfig::default()
    };
    Rc::new(
        PartitionLog::open(
            GlommioStorage::DIRECT,
            dir,
            config,
            BatchCache::shared(64 << 20),
            Rc::new(SystemClock),
        )
        .await
        .unwrap(),
    )
}

struct Report {
    appenders: usize,
    histogram: Histogram<u64>,
    appends: u64,
    fdatasyncs: u64,
    seconds: f64,
}

async fn closed_loop(appenders: usize) -> Report {
    let path = dir(&format!("a{appenders}"));
    let log = open(path.clone()).await;
    let batch = rill_engine::testing::kafka_batch(1, BATCH_BYTES - 61, 0);
    let histogram = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap(),
    ));
    let start = Instant::now();
    let measure_from = start + WARM_UP;
    let stop_at = measure_from + RUN_TIME;
    let counters = Rc::new(RefCell::new(0u64));
    let zero_ahead_ms: u64 = std::env::var("RILL_BENCH_ZERO_AHEAD_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let zeroing = (zero_ahead_ms > 0).then(|| {
        let log = log.clone();
        glommio::spawn_local(async move {
            while Instant::now() < stop_at {
                log.zero_ahead().await.unwrap();
                glommio::timer::sleep(Duration::from_millis(zero_ahead_ms)).await;
            }
        })
    });
    let tasks: Vec<_> = (0..appenders)
        .map(|_| {
            let (log, batch, histogram, counters) = (
                log.clone(),
                batch.clone(),
                histogram.clone(),
                counters.clone(),
            );
            glommio::spawn_local(async move {
                loop {
                    let t0 = Instant::now();
                    if t0 >= stop_at {
                        break;
                    }
                    log.append(BytesMut::from(&batch[..]), 1, Durability::Fsync)
                        .await
                        .unwrap();
                    let nanos = u64::try_from(t0.elapsed().as_nanos()).unwrap();
                    if t0 >= measure_from {
                        histogram.borrow_mut().record(nanos).unwrap();
                        *counters.borrow_mut() += 1;
                    }
                }
            })
        })
        .collect();
    let syncs_at_measure = {
        glommio::timer::sleep(WARM_UP).await;
        log.stats().fdatasyncs()
    };
    for t in tasks {
        t.await;
    }
    if let Some(zeroing) = zeroing {
        zeroing.await;
    }
    let fdatasyncs = log.stats().fdatasyncs() - syncs_at_measure;
    if std::env::var("RILL_BENCH_STATS").is_ok_and(|v| v == "1") {
        let s = log.stats();
        eprintln!(
            "appenders {appenders}: zeroed {} MiB, written {} MiB, fallocate {} calls, fdatasync mean {:.0} µs max {} µs, write mean {:.0} µs",
            s.bytes_zeroed >> 20,
            s.bytes_written >> 20,
            s.preallocate_latency.count,
            s.fdatasync_latency.nanos_sum as f64 / s.fdatasync_latency.count.max(1) as f64 / 1e3,
            s.fdatasync_latency.nanos_max / 1000,
            s.write_latency.nanos_sum as f64 / s.write_latency.count.max(1) as f64 / 1e3,
        );
    }
    log.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&path);
    let appends = *counters.borrow();
    let histogram = histogram.borrow().clone();
    Report {
        appenders,
        histogram,
        appends,
        fdatasyncs,
        seconds: RUN_TIME.as_secs_f64(),
    }
}

/// Issues 64 appends at once, 50 times; returns fdatasyncs per round (min, median, max).
async fn group_commit_rounds() -> (u64, u64, u64) {
    let path = dir("group");
    let log = open(path.clone()).await;
    let batch = rill_engine::testing::kafka_batch(1, BATCH_BYTES - 61, 0);
    let mut per_round = Vec::new();
    for _ in 0..50 {
        let before = log.stats().fdatasyncs();
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (log, batch) = (log.clone(), batch.clone());
                glommio::spawn_local(async move {
                    log.append(BytesMut::from(&batch[..]), 1, Durability::Fsync)
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        per_round.push(log.stats().fdatasyncs() - before);
    }
    log.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&path);
    per_round.sort();
    (
        per_round[0],
        per_round[per_round.len() / 2],
        per_round[per_round.len() - 1],
    )
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn main() {
    // `cargo bench` passes `--bench`; anything else we ignore except --json.
    let json = std::env::args().any(|a| a == "--json");
    // RILL_BENCH_SPIN_US: let the executor spin this long before parking (glommio's
    // spin_before_park), as a broker core dedicated to its shard may.
    let spin_us: u64 = std::env::var("RILL_BENCH_SPIN_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut builder = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(0));
    if spin_us > 0 {
        builder = builder.spin_before_park(Duration::from_micros(spin_us));
    }
    let (reports, rounds) = builder
        .spawn(|| async {
            let mut reports = Vec::new();
            for appenders in [1, 8, 64] {
                reports.push(closed_loop(appenders).await);
            }
            (reports, group_commit_rounds().await)
        })
        .unwrap()
        .join()
        .unwrap();
    if !json {
        println!(
            "durable 4 KiB appends (durability=fsync), {}s per row after {}s warm-up",
            RUN_TIME.as_secs(),
            WARM_UP.as_secs()
        );
        println!("| appenders | appends/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | fdatasyncs/append |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    }
    for r in &reports {
        let h = &r.histogram;
        let rate = r.appends as f64 / r.seconds;
        let per = r.fdatasyncs as f64 / r.appends.max(1) as f64;
        if json {
            println!(
                "{{\"appenders\":{},\"appends_per_s\":{rate:.0},\"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"max_us\":{:.1},\"fdatasyncs_per_append\":{per:.3}}}",
                r.appenders, us(h, 0.5), us(h, 0.9), us(h, 0.99), us(h, 0.999), h.max() as f64 / 1000.0
            );
        } else {
            println!(
                "| {} | {rate:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {per:.3} |",
                r.appenders,
                us(h, 0.5),
                us(h, 0.9),
                us(h, 0.99),
                us(h, 0.999),
                h.max() as f64 / 1000.0
            );
        }
    }
    let (min, median, max) = rounds;
    if json {
        println!("{{\"group_commit_64_fdatasyncs_min\":{min},\"median\":{median},\"max\":{max}}}");
    } else {
        println!("\n64 concurrent 4 KiB appends, 50 rounds: fdatasyncs per round min {min}, median {median}, max {max}");
    }
}
