//! Child process of the engine's SIGKILL crash test (engine/tests/crash.rs).
//!
//! `rill-engine-crash-child DIR FIRST_SEED APPENDERS` opens the log in DIR and runs APPENDERS
//! concurrent tasks appending fsync-durable batches forever. After each acknowledgement it prints
//! `ack <base_offset> <seed>` on stdout, so the parent knows exactly what was acknowledged
//! before it killed us.

use bytes::BytesMut;
use rill_engine::storage::glommio_fs::GlommioStorage;
use rill_engine::{BatchCache, Durability, PartitionLog, SystemClock};
use std::io::Write;
use std::rc::Rc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert_eq!(
        args.len(),
        4,
        "usage: rill-engine-crash-child DIR FIRST_SEED APPENDERS"
    );
    let dir = args[1].clone();
    let first_seed: u64 = args[2].parse().expect("seed");
    let appenders: u64 = args[3].parse().expect("appenders");
    glommio::LocalExecutor::default().run(async move {
        let config = rill_engine::testing::crash_test_log_config();
        let log = PartitionLog::open(
            GlommioStorage::DIRECT,
            dir,
            config,
            BatchCache::shared(1 << 20),
            Rc::new(SystemClock),
        )
        .await
        .expect("open log");
        println!("ready {}", log.log_end_offset());
        let log = Rc::new(log);
        let tasks: Vec<_> = (0..appenders)
            .map(|task| {
                let log = log.clone();
                glommio::spawn_local(async move {
                    let mut seed = first_seed + task;
                    loop {
                        let body =
                            64 + usize::try_from(seed.wrapping_mul(7919) % 20_000).expect("small");
                        let batch = rill_engine::testing::kafka_batch_filled(
                            1 + (seed % 5) as i32,
                            body,
                            0,
                            seed,
                        );
                        let r = log
                            .append(BytesMut::from(&batch[..]), 1, Durability::Fsync)
                            .await
                            .expect("append");
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ack {} {seed}", r.base_offset).expect("stdout");
                        out.flush().expect("stdout");
                        seed += appenders;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
    });
}
