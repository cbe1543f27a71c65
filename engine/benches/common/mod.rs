//! What the append benchmarks share: the bench directory on the data disk, the log's
//! configuration (with the `RILL_BENCH_*` overrides) and one timed run of concurrent appenders.

use bytes::BytesMut;
use rill_engine::envelope;
use rill_engine::storage::glommio_fs::GlommioStorage;
use rill_engine::{BatchCache, Durability, LogConfig, PartitionLog, SystemClock};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Appenders in flight at once (a broker has many producers; the disk wants queue depth).
pub const APPENDERS: usize = 8;

pub fn bench_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("engine-bench")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    settle(dir.parent().expect("bench dir has a parent"));
    dir
}

/// Commits the file system holding `dir` (syncfs), so work left by the previous sample (the
/// journal commit of its deleted files and, on a file system mounted with `discard`, the discards
/// that commit issues) is done before the next sample's clock starts, as it is before fio's.
/// `RILL_BENCH_SETTLE=0` skips it.
pub fn settle(dir: &std::path::Path) {
    if std::env::var("RILL_BENCH_SETTLE").is_ok_and(|v| v == "0") {
        return;
    }
    std::fs::create_dir_all(dir).expect("create bench dir");
    // coreutils' `sync -f` is syncfs(2) on the file system holding its argument.
    let status = std::process::Command::new("sync")
        .arg("-f")
        .arg(dir)
        .status()
        .expect("run sync -f");
    assert!(status.success(), "sync -f {}: {status}", dir.display());
}

/// Whether the environment variable `name` is `1`.
pub fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

/// The environment variable `name` parsed, if it is set and parses.
pub fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

pub fn config() -> LogConfig {
    let defaults = LogConfig::default();
    // RILL_BENCH_CHUNK_KIB: the staging chunk size (default the log's).
    let chunk_bytes =
        env::<usize>("RILL_BENCH_CHUNK_KIB").map_or(defaults.chunk_bytes, |kib| kib << 10);
    // RILL_BENCH_POOL: staging chunks each log keeps for reuse (default the log's).
    let chunk_pool_max = env("RILL_BENCH_POOL").unwrap_or(defaults.chunk_pool_max);
    // RILL_BENCH_PREALLOC_MIB: the preallocation step (default the log's).
    let preallocate_bytes =
        env::<u64>("RILL_BENCH_PREALLOC_MIB").map_or(defaults.preallocate_bytes, |mib| mib << 20);
    // RILL_BENCH_SEGMENT_MIB: the segment size (default the log's, 1 GiB).
    let segment_bytes =
        env::<u64>("RILL_BENCH_SEGMENT_MIB").map_or(defaults.segment_bytes, |mib| mib << 20);
    LogConfig {
        chunk_bytes,
        chunk_pool_max,
        preallocate_bytes,
        segment_bytes,
        retention_ms: None,
        batch_bytes_max: 2 << 20,
        ..defaults
    }
}

/// Appends `iters` batches of `size` bytes with `APPENDERS` concurrent appenders; returns the
/// time from the first append to the last acknowledgement (plus a final fdatasync for `Write`,
/// as fio's `--end_fsync=1`).
pub fn append_run(size: usize, durability: Durability, iters: u64, config: LogConfig) -> Duration {
    let dir = bench_dir("append");
    let elapsed = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let log = PartitionLog::open(
                GlommioStorage::DIRECT,
                dir.clone(),
                config,
                BatchCache::shared(64 << 20),
                Rc::new(SystemClock),
            )
            .await
            .unwrap();
            let log = Rc::new(log);
            // RILL_BENCH_FRAME_EXACT=1: each stored frame (envelope header and Kafka batch) is
            // exactly `size` bytes, so with `size` a multiple of the chunk every write is whole
            // aligned chunks; otherwise the Kafka batch is `size` bytes.
            let envelope = if flag("RILL_BENCH_FRAME_EXACT") {
                envelope::HEADER_BYTES
            } else {
                0
            };
            let body = size - envelope::KAFKA_BATCH_HEADER_BYTES - envelope;
            let batch = rill_engine::testing::kafka_batch(10, body, 0);
            // RILL_BENCH_APPENDERS: concurrent appenders (default APPENDERS).
            let appenders: u64 = env("RILL_BENCH_APPENDERS").unwrap_or(APPENDERS as u64);
            // RILL_BENCH_PREBUILT=1: every appender's input batches are allocated and filled
            // before the clock starts (as fio's buffers are), so the timed loop holds only the
            // log's own work; otherwise each append first copies the batch into a new buffer.
            let prebuilt = flag("RILL_BENCH_PREBUILT");
            let stride = usize::try_from(appenders).expect("appenders fit in usize");
            let mut inputs: Vec<Vec<BytesMut>> = (0..appenders)
                .map(|t| {
                    let count = if prebuilt {
                        (t..iters).step_by(stride).count()
                    } else {
                        0
                    };
                    (0..count).map(|_| BytesMut::from(&batch[..])).collect()
                })
                .collect();
            let started = Instant::now();
            let tasks: Vec<_> = (0..appenders)
                .zip(inputs.iter_mut())
                .map(|(t, input)| {
                    let (log, batch) = (log.clone(), batch.clone());
                    let mut input = std::mem::take(input).into_iter();
                    glommio::spawn_local(async move {
                        let mut i = t;
                        while i < iters {
                            let next = input.next().unwrap_or_else(|| BytesMut::from(&batch[..]));
                            log.append(next, 1, durability).await.unwrap();
                            i += appenders;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
            log.flush().await.unwrap();
            let elapsed = started.elapsed();
            if flag("RILL_BENCH_STATS") {
                // Where a sample's time went: the flushes' writes in flight, fallocate, fdatasync.
                let s = log.stats();
                let ms = |nanos: u64| nanos as f64 / 1e6;
                eprintln!(
                    "sample: {iters} appends in {:.1} ms; {} flushes, writes in flight {:.1} ms, \
                     fallocate {} calls {:.1} ms, fdatasync {} calls {:.1} ms, {:.1} MiB written",
                    elapsed.as_secs_f64() * 1e3,
                    s.flushes,
                    ms(s.write_latency.nanos_sum),
                    s.preallocate_latency.count,
                    ms(s.preallocate_latency.nanos_sum),
                    s.fdatasync_latency.count,
                    ms(s.fdatasync_latency.nanos_sum),
                    s.bytes_written as f64 / (1 << 20) as f64,
                );
            }
            log.close().await.unwrap();
            let _ = std::fs::remove_dir_all(&dir);
            elapsed
        })
        .unwrap()
        .join()
        .unwrap();
    elapsed
}
