//! End to end: `rill bench` (through its CLI entry point) against a real `rill serve` process.
//!
//! The broker binary comes from `RILL_BIN` (scripts/test.sh sets it), else
//! `target/release/rill`; with neither the test says so and skips, because building the broker
//! is not this crate's job.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use rill_bench::cli::{self, BenchArgs};
use rill_bench::report::RunResult;

/// Longest wait for the broker to accept connections (a busy 2-core machine is slow).
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest the broker gets to exit after SIGTERM before SIGKILL.
const BROKER_STOP_TIMEOUT: Duration = Duration::from_secs(20);

fn rill_bin() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RILL_BIN").map(PathBuf::from) {
        return path.exists().then_some(path);
    }
    let fallback = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/rill");
    fallback.exists().then_some(fallback)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `rill serve` child process, stopped (by its PID) on drop.
struct Broker {
    child: Child,
    address: String,
    log: PathBuf,
}

impl Broker {
    fn start(bin: &Path, dir: &Path) -> Broker {
        let address = format!("127.0.0.1:{}", free_port());
        let log = dir.join("broker.log");
        let child = Command::new(bin)
            .args(["serve", "--cores", "1", "--auto-create-topics", "--kafka-listen", &address])
            .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn rill serve");
        let mut broker = Broker { child, address, log };
        let deadline = Instant::now() + BROKER_START_TIMEOUT;
        while TcpStream::connect(&broker.address).is_err() {
            if let Some(status) = broker.child.try_wait().unwrap() {
                panic!("rill serve exited with {status}:\n{}", broker.log_text());
            }
            assert!(Instant::now() < deadline, "rill serve did not listen:\n{}", broker.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + BROKER_STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Parser)]
struct Harness {
    #[command(flatten)]
    bench: BenchArgs,
}

fn bench(broker: &Broker, out: &Path, name: &str, extra: &[&str]) -> RunResult {
    let mut argv = vec!["bench", "--brokers", &broker.address, "--quiet", "--label", "rill e2e test"];
    let out_text = out.to_str().unwrap();
    argv.extend(["--out", out_text, "--name", name]);
    argv.extend(extra);
    let args = Harness::try_parse_from(argv).unwrap().bench;
    if let Err(error) = cli::run(args) {
        panic!("bench {name} failed: {error:#}\nbroker log:\n{}", broker.log_text());
    }
    RunResult::read_json(&out.join(format!("{name}.json"))).unwrap()
}

#[test]
fn open_and_closed_loop_runs_against_rill_serve() {
    let Some(bin) = rill_bin() else {
        eprintln!("SKIP: no rill binary (set RILL_BIN or run `cargo build --release --bin rill`)");
        return;
    };
    let dir = tempfile::Builder::new().prefix("rill-bench-e2e").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let broker = Broker::start(&bin, dir.path());
    let started = Instant::now();

    let open = bench(
        &broker,
        dir.path(),
        "open",
        &["--rate", "2000", "--warmup", "500ms", "--duration", "2s", "--partitions", "2", "--consumers", "2"],
    );
    let p = &open.produce;
    assert_eq!(p.errors, 0);
    assert_eq!(p.unacknowledged, 0);
    // 2 s at 2000 records/s: 4000 measured records, every one acknowledged.
    assert_eq!(p.acked_measured, 4000, "{}", open.to_text());
    assert!((p.records_per_s - 2000.0).abs() < 200.0, "open loop holds its rate: {}", p.records_per_s);
    assert!(p.latency.count == 4000 && p.latency.p50_us > 0.0);
    assert!(p.latency.p50_us <= p.latency.p99_us && p.latency.p99_us <= p.latency.max_us);
    let e2e = open.end_to_end.as_ref().expect("consumers ran");
    assert_eq!(e2e.missing_measured, 0, "every acknowledged record is read: {}", open.to_text());
    assert_eq!(e2e.consumed_measured, 4000);
    assert!(e2e.latency.p50_us > 0.0);
    assert!(p.generator_lag.is_some());
    let png = std::fs::read(dir.path().join("open.png")).expect("plot written");
    assert_eq!(&png[..4], b"\x89PNG");

    let closed = bench(
        &broker,
        dir.path(),
        "closed",
        &["--max", "--in-flight", "500", "--records", "20000", "--warmup", "200ms", "--consumers", "1"],
    );
    assert_eq!(closed.produce.acked_measured, 20_000, "{}", closed.to_text());
    assert_eq!(closed.produce.generator_lag, None, "closed loop has no schedule");
    assert_eq!(closed.end_to_end.as_ref().unwrap().missing_measured, 0);
    eprintln!("{}\n{}\nbench e2e took {:?}", open.to_text(), closed.to_text(), started.elapsed());
}

#[test]
fn kafka_wire_client_runs_against_rill_serve() {
    let Some(bin) = rill_bin() else {
        eprintln!("SKIP: no rill binary (set RILL_BIN or run `cargo build --release --bin rill`)");
        return;
    };
    let dir = tempfile::Builder::new().prefix("rill-bench-kw").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let broker = Broker::start(&bin, dir.path());
    let kafka_wire = ["--client", "kafka-wire"];

    // A 1 ms tick gathers several records per write: they go out as one batch per partition.
    let mut open_args = kafka_wire.to_vec();
    open_args.extend(["--rate", "4000", "--tick-us", "1000", "--warmup", "500ms", "--duration", "2s"]);
    open_args.extend(["--partitions", "3", "--consumers", "2"]);
    let open = bench(&broker, dir.path(), "kw-open", &open_args);
    assert!(open.client.contains("rill-bench Kafka client"), "{}", open.client);
    let p = &open.produce;
    assert_eq!((p.errors, p.unacknowledged), (0, 0), "{}", open.to_text());
    assert_eq!(p.acked_measured, 8000, "{}", open.to_text());
    let e2e = open.end_to_end.as_ref().expect("consumers ran");
    assert_eq!(e2e.missing_measured, 0, "every acknowledged record is read: {}", open.to_text());
    assert_eq!(e2e.consumed_measured, 8000);

    // Closed loop: whole in-flight windows leave at once, bounded by the batch size.
    let mut closed_args = kafka_wire.to_vec();
    closed_args.extend(["--max", "--in-flight", "2000", "--records", "30000", "--warmup", "200ms"]);
    closed_args.extend(["--batch-size", "65536", "--consumers", "1"]);
    let closed = bench(&broker, dir.path(), "kw-closed", &closed_args);
    assert_eq!(closed.produce.acked_measured, 30_000, "{}", closed.to_text());
    assert_eq!(closed.produce.errors, 0);
    assert_eq!(closed.end_to_end.as_ref().unwrap().missing_measured, 0, "{}", closed.to_text());
}
