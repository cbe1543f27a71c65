//! The 1 MiB append stream against fio, in alternating pairs.
//!
//! Each round runs fio's O_DIRECT sequential write (1 MiB blocks, queue depth 8, a fresh file,
//! `--end_fsync=1`, as `scripts/bench/limits.sh`) and the log's 1 MiB `write` stream (as the
//! `append` bench's `append/write/1024KiB`: 8 appenders, a fresh log, input built before the
//! clock starts, a final fdatasync), the same bytes each, one right after the other, the order
//! alternating per round. This disk's bandwidth moves by up to 2x from one minute to the next,
//! so a ratio means something only between neighbours: the figure is the median of the rounds'
//! ratios.
//!
//! `cargo bench -p rill-engine --bench append_vs_fio`. `RILL_PAIRED_ROUNDS` (default 12)
//! rounds after one unreported warm-up round; `RILL_PAIRED_MIB` (default 2048, fio's 2 GiB of
//! `scripts/bench/limits.sh`) MiB per run; `RILL_PAIRED_PREALLOC_MIB=default,segment,256` runs
//! one log per listed preallocation step (`default`: the log's own; `segment`: the segment's
//! size, as the broker's topic config `preallocate=true`; a number: that many MiB);
//! `RILL_PAIRED_SEAM=8,b4,8s,8p` adds runs that write 1 MiB buffers straight through the
//! storage seam (glommio `DmaFile`), 8 always in flight (`8`) or in bursts of 4 awaited together
//! (`b4`, as a log flush issues its chunks): what the runtime reaches without the log. Their
//! file is preallocated before the clock starts, as fio lays out its file, unless the entry
//! ends in `s` (reserved while writing in the log's default steps, 32 MiB doubling to 256 MiB)
//! or `p` (32 MiB, then all the rest at once). The `append` bench's `RILL_BENCH_*` overrides
//! apply; `RILL_PAIRED_PREALLOC_MIB=none` runs no log.

#![allow(missing_docs)]

mod common;

use common::{append_run, bench_dir, config};
use rill_engine::log::PREALLOCATE_STEP_BYTES_MAX;
use rill_engine::storage::glommio_fs::GlommioStorage;
use rill_engine::storage::{OpenMode, Storage, StorageFile};
use rill_engine::{Durability, LogConfig};
use std::cell::Cell;
use std::path::Path;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// What a paired run measures besides fio.
#[derive(Clone)]
enum Run {
    /// The log's 1 MiB `write` stream with this configuration.
    Log(LogConfig),
    /// 1 MiB writes through the storage seam, `depth` in flight: continuously, or in bursts
    /// awaited together when `burst`.
    Seam {
        depth: u64,
        burst: bool,
        reserve: Reserve,
    },
}

/// How a seam run reserves its file.
#[derive(Clone, Copy, PartialEq)]
enum Reserve {
    /// All of it before the clock starts, as fio lays out its file.
    Ahead,
    /// While writing, in the log's default steps: its base step (32 MiB) doubling up to
    /// `PREALLOCATE_STEP_BYTES_MAX` (256 MiB).
    Doubling,
    /// While writing: 32 MiB, then all the rest at once.
    ThenAll,
}

/// A seam run's file reservation, shared by its writers: extends the file as `reserve` says,
/// one writer at a time, the others waiting for it.
struct Reserver<F> {
    file: Rc<F>,
    reserve: Reserve,
    /// The run's whole file.
    total: u64,
    reserved: Cell<u64>,
    reserving: Cell<bool>,
    /// The next `Doubling` step.
    step: Cell<u64>,
    /// `RILL_BENCH_STATS=1`: print each fallocate's time.
    stats: bool,
}

impl<F: StorageFile> Reserver<F> {
    /// Returns once the file is reserved up to `end`.
    async fn up_to(&self, end: u64) {
        while self.reserved.get() < end {
            if self.reserving.get() {
                glommio::timer::sleep(Duration::from_micros(20)).await;
                continue;
            }
            self.reserving.set(true);
            let reserved = self.reserved.get();
            let target = match self.reserve {
                Reserve::Ahead => self.total,
                Reserve::ThenAll if reserved > 0 => self.total,
                _ => (reserved + self.step.get()).min(self.total),
            };
            let started = Instant::now();
            self.file.preallocate(target).await.unwrap();
            if self.stats {
                eprintln!(
                    "seam: fallocate to {} MiB took {:.1} ms",
                    target >> 20,
                    started.elapsed().as_secs_f64() * 1e3
                );
            }
            self.reserved.set(target);
            self.step
                .set((self.step.get() * 2).min(PREALLOCATE_STEP_BYTES_MAX));
            self.reserving.set(false);
        }
    }
}

/// Writes `mib` MiB sequentially through the storage seam to a fresh file, reserved as
/// `reserve` says, then fdatasyncs; the time from the first write (after the reservation for
/// `Reserve::Ahead`) to the fdatasync's return.
fn seam_run(mib: u64, depth: u64, burst: bool, reserve: Reserve) -> Duration {
    let dir = bench_dir("seam");
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let storage = GlommioStorage::DIRECT;
            storage.create_dir_all(&dir).await.unwrap();
            let file = Rc::new(
                storage
                    .open(&dir.join("seam.dat"), OpenMode::CreateNew)
                    .await
                    .unwrap(),
            );
            let reserver = Rc::new(Reserver {
                file: file.clone(),
                reserve,
                total: mib << 20,
                reserved: Cell::new(0),
                reserving: Cell::new(false),
                // The log's default steps: its base step, doubling up to its largest.
                step: Cell::new(LogConfig::default().preallocate_bytes),
                stats: common::flag("RILL_BENCH_STATS"),
            });
            if reserve == Reserve::Ahead {
                reserver.up_to(mib << 20).await;
            }
            let buffers: Vec<_> = (0..depth)
                .map(|_| {
                    let mut buf = file.alloc_buffer(1 << 20);
                    buf.as_bytes_mut().fill(0xa5);
                    Rc::new(buf)
                })
                .collect();
            let started = Instant::now();
            if burst {
                let mut next = 0;
                while next < mib {
                    let n = depth.min(mib - next);
                    reserver.up_to((next + n) << 20).await;
                    let writes = buffers
                        .iter()
                        .zip(next..next + n)
                        .map(|(buf, at)| file.write_at(buf.clone(), at << 20));
                    for written in futures::future::join_all(writes).await {
                        assert_eq!(written.unwrap(), 1 << 20);
                    }
                    next += n;
                }
            } else {
                let next = Rc::new(Cell::new(0u64));
                let writers: Vec<_> = buffers
                    .into_iter()
                    .map(|buf| {
                        let (file, next, reserver) = (file.clone(), next.clone(), reserver.clone());
                        glommio::spawn_local(async move {
                            while next.get() < mib {
                                let at = next.replace(next.get() + 1);
                                reserver.up_to((at + 1) << 20).await;
                                assert_eq!(
                                    file.write_at(buf.clone(), at << 20).await.unwrap(),
                                    1 << 20
                                );
                            }
                        })
                    })
                    .collect();
                for writer in writers {
                    writer.await;
                }
            }
            file.fdatasync().await.unwrap();
            let elapsed = started.elapsed();
            drop((reserver, file));
            storage.remove_dir_all(&dir).await.unwrap();
            elapsed
        })
        .unwrap()
        .join()
        .unwrap()
}

/// fio's sequential O_DIRECT write of `mib` MiB to a fresh file in `dir`, in MiB/s. Settles
/// the file system first, as the log's runs do.
fn fio_mib_per_s(dir: &Path, mib: u64) -> f64 {
    // `settle` creates the directory only when it runs (not with `RILL_BENCH_SETTLE=0`).
    std::fs::create_dir_all(dir).expect("create the fio dir");
    common::settle(dir);
    let file = dir.join("fio.dat");
    let out = Command::new("fio")
        .args([
            "--name=paired",
            "--rw=write",
            "--bs=1M",
            "--direct=1",
            "--ioengine=io_uring",
            "--iodepth=8",
            "--end_fsync=1",
            "--output-format=json",
        ])
        .arg(format!("--size={mib}M"))
        .arg(format!("--filename={}", file.display()))
        .output()
        .expect("run fio (scripts/bench/limits.sh installs it)");
    assert!(
        out.status.success(),
        "fio: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("fio's JSON output");
    let kib_per_s = json["jobs"][0]["write"]["bw"]
        .as_f64()
        .expect("fio's write bandwidth");
    let _ = std::fs::remove_file(&file);
    kib_per_s / 1024.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    // `cargo bench` passes `--bench`; this harness has no options of its own.
    let rounds = common::env("RILL_PAIRED_ROUNDS").unwrap_or(12);
    let mib = common::env("RILL_PAIRED_MIB").unwrap_or(2048);
    std::env::set_var("RILL_BENCH_PREBUILT", "1");
    let base = config();
    let mut variants: Vec<(String, Run)> = std::env::var("RILL_PAIRED_PREALLOC_MIB")
        .unwrap_or_else(|_| "default".into())
        .split(',')
        .filter(|v| v.trim() != "none")
        .map(|v| match v.trim().parse::<u64>() {
            // The broker's topic config `preallocate=true`: a step of the whole segment.
            Err(_) if v.trim() == "segment" => (
                "log, preallocate=true".to_string(),
                Run::Log(LogConfig {
                    preallocate_bytes: base.segment_bytes,
                    ..base
                }),
            ),
            Ok(step) => (
                format!("prealloc {step} MiB"),
                Run::Log(LogConfig {
                    preallocate_bytes: step << 20,
                    ..base
                }),
            ),
            Err(_) => ("log".to_string(), Run::Log(base)),
        })
        .collect();
    for v in std::env::var("RILL_PAIRED_SEAM")
        .unwrap_or_default()
        .split(',')
    {
        let v = v.trim();
        let (v, reserve) = if let Some(v) = v.strip_suffix('s') {
            (v, Reserve::Doubling)
        } else if let Some(v) = v.strip_suffix('p') {
            (v, Reserve::ThenAll)
        } else {
            (v, Reserve::Ahead)
        };
        let (burst, depth) = match v.strip_prefix('b') {
            Some(n) => (true, n.parse::<u64>()),
            None => (false, v.parse::<u64>()),
        };
        if let Ok(depth) = depth {
            let name = if burst {
                format!("seam bursts of {depth}")
            } else {
                format!("seam qd{depth}")
            };
            let name = match reserve {
                Reserve::Ahead => name,
                Reserve::Doubling => format!("{name}, doubling reserve"),
                Reserve::ThenAll => format!("{name}, 32 MiB then all"),
            };
            variants.push((
                name,
                Run::Seam {
                    depth,
                    burst,
                    reserve,
                },
            ));
        }
    }
    println!(
        "{rounds} rounds of {mib} MiB each: fio 1 MiB qd8 O_DIRECT on a fresh file, then {} \
         (the log: 1 MiB batches, durability write); order alternates",
        variants
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let fio_dir = bench_dir("fio");
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..=rounds {
        let fio;
        let mut logs = vec![0.0; variants.len()];
        let run_logs = |logs: &mut Vec<f64>| {
            for (i, (_, run)) in variants.iter().enumerate() {
                let elapsed = match run {
                    Run::Log(config) => append_run(1 << 20, Durability::Write, mib, *config),
                    Run::Seam {
                        depth,
                        burst,
                        reserve,
                    } => seam_run(mib, *depth, *burst, *reserve),
                };
                logs[i] = mib as f64 / elapsed.as_secs_f64();
            }
        };
        if round % 2 == 0 {
            fio = fio_mib_per_s(&fio_dir, mib);
            run_logs(&mut logs);
        } else {
            run_logs(&mut logs);
            fio = fio_mib_per_s(&fio_dir, mib);
        }
        let line: Vec<String> = variants
            .iter()
            .zip(&logs)
            .map(|((name, _), mibs)| format!("{name} {mibs:.0} MiB/s ({:.0}%)", 100.0 * mibs / fio))
            .collect();
        if round == 0 {
            println!("warm-up: fio {fio:.0} MiB/s, {}", line.join(", "));
            continue;
        }
        println!("round {round}: fio {fio:.0} MiB/s, {}", line.join(", "));
        for (i, mibs) in logs.iter().enumerate() {
            ratios[i].push(mibs / fio);
        }
    }
    for ((name, _), r) in variants.iter().zip(ratios) {
        let at_85 = r.iter().filter(|x| **x >= 0.85).count();
        let n = r.len();
        println!(
            "{name}: median ratio to fio {:.1}%, min {:.1}%, max {:.1}%, at least 85% in {at_85} of {n} rounds",
            100.0 * median(r.clone()),
            100.0 * r.iter().copied().fold(f64::INFINITY, f64::min),
            100.0 * r.iter().copied().fold(0.0, f64::max),
        );
    }
    let _ = std::fs::remove_dir_all(&fio_dir);
}
