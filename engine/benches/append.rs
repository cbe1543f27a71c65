//! Criterion benchmarks of the partition log's hot paths on glommio DMA files (the data disk):
//! append throughput by batch size, with durability `fsync` (group commit) and `write` (no
//! fdatasync), and sequential read throughput from disk (batch cache off).
//!
//! `cargo bench -p rill-engine --bench append`. Data lives under target/ (the data disk, where
//! O_DIRECT works); each measurement uses a fresh log that is deleted afterwards.

#![allow(missing_docs)] // criterion's macros generate undocumented items

mod common;

use bytes::BytesMut;
use common::{append_run, bench_dir, config};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rill_engine::storage::glommio_fs::GlommioStorage;
use rill_engine::{BatchCache, Durability, PartitionLog, SystemClock};
use std::rc::Rc;
use std::time::{Duration, Instant};

const BATCH_SIZES: [usize; 4] = [4 << 10, 64 << 10, 256 << 10, 1 << 20];

fn append_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for durability in [Durability::Write, Durability::Fsync] {
        for size in BATCH_SIZES {
            group.throughput(Throughput::Bytes(size as u64));
            let id = BenchmarkId::new(
                format!("{durability:?}").to_lowercase(),
                format!("{}KiB", size >> 10),
            );
            group.bench_function(id, |b| {
                b.iter_custom(|iters| append_run(size, durability, iters, config()))
            });
        }
    }
    group.finish();
}

/// Sequential reads of a 512 MiB log of 1 MiB batches from disk (batch cache off).
fn read_throughput(c: &mut Criterion) {
    let dir = bench_dir("read");
    let size = 1 << 20;
    let batches = 512u64;
    {
        let dir = dir.clone();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let log = PartitionLog::open(
                    GlommioStorage::DIRECT,
                    dir,
                    config(),
                    BatchCache::shared(0),
                    Rc::new(SystemClock),
                )
                .await
                .unwrap();
                let batch = rill_engine::testing::kafka_batch(10, size - 61, 0);
                for _ in 0..batches {
                    log.append(BytesMut::from(&batch[..]), 1, Durability::Memory)
                        .await
                        .unwrap();
                }
                log.close().await.unwrap();
            })
            .unwrap()
            .join()
            .unwrap();
    }
    let mut group = c.benchmark_group("read");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Bytes(size as u64 * batches));
    group.bench_function("sequential_512MiB", |b| {
        b.iter_custom(|iters| {
            let dir = dir.clone();
            glommio::LocalExecutorBuilder::default()
                .spawn(move || async move {
                    let log = PartitionLog::open(
                        GlommioStorage::DIRECT,
                        dir,
                        config(),
                        BatchCache::shared(0),
                        Rc::new(SystemClock),
                    )
                    .await
                    .unwrap();
                    let end = log.log_end_offset();
                    let started = Instant::now();
                    for _ in 0..iters {
                        let mut offset = 0;
                        while offset < end {
                            let got = log.read(offset, 4 << 20, end).await.unwrap();
                            offset = got.last().unwrap().header.next_offset();
                        }
                    }
                    started.elapsed()
                })
                .unwrap()
                .join()
                .unwrap()
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, append_throughput, read_throughput);
criterion_main!(benches);
