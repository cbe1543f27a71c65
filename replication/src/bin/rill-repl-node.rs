//! `rill-repl-node`: a small process around the replication crate, for multi-process tests and
//! the QUIC/TCP benchmark. Not the broker (that is `rill`).
//!
//! ```text
//! rill-repl-node init-certs DIR NODE...                      write a CA and node certificates
//! rill-repl-node gossip NODE BIND [SEED...]                  run a gossip member, print events
//! rill-repl-node gossip-cluster N BASE_PORT TIMEOUT_S        start N members on 127.0.0.1..N,
//!                                                            measure convergence, kill the last,
//!                                                            measure detection
//! rill-repl-node echo QUIC_BIND TCP_BIND CERT_DIR            echo peer for both links
//! rill-repl-node bench QUIC_PEER TCP_PEER CERT_DIR BIND ROUNDS
//!                                                            RTT 64 B / 16 KiB and 64 KiB
//!                                                            throughput, QUIC and TCP
//!                                                            alternating, medians of rounds
//! rill-repl-node compare ROUNDS BASE_PORT                    the same with certificates and a
//!                                                            pinned echo peer set up for you
//!
//! `RILL_CPU=N` pins the process's executor to CPU N.
//! rill-repl-node lossy-link BIND PEER CERT_DIR FRAMES ROLE   send/receive FRAMES over QUIC and
//!                                                            check order (5% loss test)
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{Buf, Bytes};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use rill_replication::certs::{init_certs, TlsIdentity};
use rill_replication::gossip::{Gossip, GossipConfig, MembershipEvent, NodeMetadata};
use rill_replication::quic::{QuicConfig, QuicTransport};
use rill_replication::{CoreAddr, Frame, LaneId, NodeId, Transport};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().with_context(|| format!("missing argument {i}"));
    match args.first().map(String::as_str) {
        Some("init-certs") => {
            let nodes: Vec<NodeId> = args[2..].iter().map(|n| n.parse().map(NodeId)).collect::<Result<_, _>>()?;
            init_certs(&PathBuf::from(arg(1)?), &nodes)?;
            Ok(())
        }
        Some("gossip") => {
            let node: u32 = arg(1)?.parse()?;
            let bind: SocketAddr = arg(2)?.parse()?;
            let seeds = args[3..].iter().map(|s| s.parse()).collect::<Result<Vec<SocketAddr>, _>>()?;
            run_gossip_member(node, bind, seeds)
        }
        Some("gossip-cluster") => gossip_cluster(arg(1)?.parse()?, arg(2)?.parse()?, arg(3)?.parse()?),
        Some("echo") => echo(arg(1)?.parse()?, arg(2)?.parse()?, PathBuf::from(arg(3)?)),
        Some("bench") => bench(arg(1)?.parse()?, arg(2)?.parse()?, PathBuf::from(arg(3)?), arg(4)?.parse()?, arg(5)?.parse()?),
        Some("compare") => compare(arg(1)?.parse()?, arg(2)?.parse()?),
        Some("lossy-link") => lossy_link(arg(1)?.parse()?, arg(2)?.parse()?, PathBuf::from(arg(3)?), arg(4)?.parse()?, &arg(5)?),
        _ => bail!("usage: see the module doc of replication/src/bin/rill-repl-node.rs"),
    }
}

fn glommio_error(error: glommio::GlommioError<()>) -> anyhow::Error {
    anyhow::anyhow!("{error}")
}

/// A glommio executor, pinned to CPU `RILL_CPU` when that is set (and not `none`).
fn executor() -> glommio::LocalExecutor {
    executor_on(std::env::var("RILL_CPU").ok().and_then(|cpu| cpu.parse().ok()))
}

fn executor_on(cpu: Option<usize>) -> glommio::LocalExecutor {
    let placement = cpu.map_or(glommio::Placement::Unbound, glommio::Placement::Fixed);
    glommio::LocalExecutorBuilder::new(placement).make().expect("glommio executor")
}

// ---- gossip ------------------------------------------------------------------------------------

/// Prints `up N`, `down N`, `members K` lines as membership changes; runs until killed.
fn run_gossip_member(node: u32, bind: SocketAddr, seeds: Vec<SocketAddr>) -> Result<()> {
    executor().run(async move {
        let metadata = NodeMetadata { replication_addr: bind, kafka_addr: bind, cores: 1 };
        let mut config = GossipConfig::new(NodeId(node), bind, metadata);
        config.seeds = seeds;
        let gossip = Gossip::start(config)?;
        let events = gossip.subscribe();
        let mut stdout = std::io::stdout();
        writeln!(stdout, "started {node}")?;
        loop {
            let line = match events.next().await {
                MembershipEvent::Up(member) => format!("up {}", member.node),
                MembershipEvent::Down(member) => format!("down {}", member.node),
                _ => continue,
            };
            writeln!(stdout, "{line}\nmembers {}", gossip.members().len())?;
            stdout.flush()?;
        }
    })
}

struct Member {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    members: usize,
    saw_down: bool,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `count` members on 127.0.0.1..=count, all seeded with the first; reports how long
/// until every member lists all others, then SIGKILLs the last and reports how long until every
/// survivor lists it down. Exits non-zero if either takes longer than `timeout_s`.
fn gossip_cluster(count: u8, base_port: u16, timeout_s: u64) -> Result<()> {
    assert!(count >= 2);
    let exe = std::env::current_exe()?;
    let address = |i: u8| -> SocketAddr { SocketAddr::from(([127, 0, 0, i + 1], base_port)) };
    let config = GossipConfig::new(NodeId(0), address(0), NodeMetadata {
        replication_addr: address(0),
        kafka_addr: address(0),
        cores: 1,
    });
    println!(
        "config: probe_period_ms={} probe_rtt_ms={} suspect_to_down_ms={}",
        config.probe_period_ms, config.probe_rtt_ms, config.suspect_to_down_ms
    );
    let start = Instant::now();
    let mut members: Vec<Member> = (0..count)
        .map(|i| {
            let mut command = Command::new(&exe);
            command.arg("gossip").arg(u32::from(i + 1).to_string()).arg(address(i).to_string());
            if i > 0 {
                command.arg(address(0).to_string());
            }
            let mut child = command.stdout(Stdio::piped()).spawn().expect("spawn member");
            let stdout = child.stdout.take().expect("piped");
            let (sender, lines) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if sender.send((Instant::now(), line)).is_err() {
                        break;
                    }
                }
            });
            Member { child, lines, members: 0, saw_down: false }
        })
        .collect();
    let deadline = start + Duration::from_secs(timeout_s);
    let wait = |members: &mut Vec<Member>, done: &dyn Fn(&Member) -> bool| -> Result<Instant> {
        loop {
            for member in members.iter_mut() {
                while let Ok((_, line)) = member.lines.try_recv() {
                    if let Some(k) = line.strip_prefix("members ") {
                        member.members = k.parse()?;
                    }
                    if line == format!("down {count}") {
                        member.saw_down = true;
                    }
                }
            }
            if members.iter().all(done) {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                bail!("timed out: members {:?}", members.iter().map(|m| m.members).collect::<Vec<_>>());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let converged = wait(&mut members, &|m| m.members == usize::from(count) - 1)?;
    println!("converged_ms {}", (converged - start).as_millis());
    let mut victim = members.pop().expect("member");
    let killed = Instant::now();
    victim.child.kill()?;
    victim.child.wait()?;
    let detected = wait(&mut members, &|m| m.saw_down)?;
    println!("detected_down_ms {}", (detected - killed).as_millis());
    Ok(())
}

// ---- QUIC / TCP echo and benchmark -------------------------------------------------------------

const ECHO_NODE: u32 = 1;
const BENCH_NODE: u32 = 2;
const THROUGHPUT_MESSAGE_BYTES: usize = 64 * 1024;
const THROUGHPUT_BYTES_TOTAL: usize = 2 << 30;
const RTT_SAMPLES: u32 = 20_000;
const RTT_WARMUP: u32 = 2_000;
const RTT_SIZES: [usize; 2] = [64, 16 * 1024];
/// Largest datagram on loopback (MTU 65,536; an IPv4 UDP payload is at most 65,507 B).
const LOOPBACK_UDP_PAYLOAD_BYTES: u16 = 65_000;
/// Largest number of benchmark rounds `compare` runs.
const COMPARE_ROUNDS_MAX: usize = 20;
/// How long `compare` waits for its echo peer to start.
const ECHO_START_TIMEOUT: Duration = Duration::from_secs(10);

fn quic_config(local: CoreAddr, bind: SocketAddr) -> QuicConfig {
    let mut config = QuicConfig::new(local, bind);
    let default = if bind.ip().is_loopback() { LOOPBACK_UDP_PAYLOAD_BYTES } else { 1452 };
    config.max_udp_payload_bytes = std::env::var("RILL_BENCH_UDP_PAYLOAD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    config
}

/// Echo peer for both links in one executor: QUIC frames on lane 0 and TCP messages flagged
/// `1` come back; the last throughput frame (QUIC: non-empty header on lane 1; TCP: flag `2`)
/// is acknowledged.
fn echo(quic_bind: SocketAddr, tcp_bind: SocketAddr, certs: PathBuf) -> Result<()> {
    executor().run(async move {
        let identity = TlsIdentity::load(&certs, NodeId(ECHO_NODE))?;
        let config = quic_config(CoreAddr::new(ECHO_NODE, 0), quic_bind);
        let transport = QuicTransport::bind(config, &identity)?;
        let listener = glommio::net::TcpListener::bind(tcp_bind).map_err(glommio_error)?;
        glommio::spawn_local(async move {
            while let Ok(stream) = listener.accept().await {
                glommio::spawn_local(echo_tcp_connection(stream)).detach();
            }
        })
        .detach();
        println!("ready");
        std::io::stdout().flush()?;
        loop {
            let incoming = transport.recv().await?;
            if incoming.lane == LaneId(0) {
                // RTT lane: echo. The sender's socket address rides in the header as text.
                let peer: SocketAddr = std::str::from_utf8(&incoming.frame.header)?.parse()?;
                transport.set_peer_address(incoming.from.node, peer);
                transport.send(incoming.from, LaneId(0), incoming.frame).await?;
            } else if !incoming.frame.header.is_empty() {
                let peer: SocketAddr = std::str::from_utf8(&incoming.frame.header)?.parse()?;
                transport.set_peer_address(incoming.from.node, peer);
                transport.send(incoming.from, LaneId(1), Frame::default()).await?;
            }
        }
    })
}

/// TCP message: 4-byte length, a flag byte (0 sink, 1 echo, 2 acknowledge), 3 spare bytes.
const TCP_PREFIX_BYTES: usize = 8;

async fn echo_tcp_connection(stream: glommio::net::TcpStream) {
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let mut stream = stream;
    let mut buffer = vec![0u8; THROUGHPUT_MESSAGE_BYTES];
    loop {
        let mut prefix = [0u8; TCP_PREFIX_BYTES];
        if stream.read_exact(&mut prefix).await.is_err() {
            return;
        }
        let length = u32::from_le_bytes(prefix[..4].try_into().expect("4 bytes")) as usize;
        if length > buffer.len() || stream.read_exact(&mut buffer[..length]).await.is_err() {
            return;
        }
        let reply: &[u8] = match prefix[4] {
            1 => &buffer[..length],
            2 => &[],
            _ => continue,
        };
        prefix[..4].copy_from_slice(&u32::try_from(reply.len()).expect("bounded").to_le_bytes());
        if stream.write_all(&prefix).await.is_err() || stream.write_all(reply).await.is_err() {
            return;
        }
    }
}

/// One round of figures: RTT percentiles in µs per size, then GB/s.
#[derive(Clone, Debug, Default)]
struct Round {
    rtt_us: Vec<[f64; 3]>,
    gbps: f64,
    /// During the throughput phase: seconds the sender's executor thread ran on a CPU, and
    /// seconds it waited runnable for one (other load); the same for the receiver if known.
    sender: (f64, f64),
    receiver: Option<(f64, f64)>,
}

/// Time on CPU and time waiting runnable for a CPU, in seconds, of `/proc/<task>/schedstat`
/// (`thread-self`, or a pid whose main thread is its executor).
fn schedstat(task: &str) -> (f64, f64) {
    let text = std::fs::read_to_string(format!("/proc/{task}/schedstat")).unwrap_or_default();
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().unwrap_or(0.0) / 1e9);
    (fields.next().unwrap_or(0.0), fields.next().unwrap_or(0.0))
}

fn percentiles_us(histogram: &hdrhistogram::Histogram<u64>) -> [f64; 3] {
    [0.5, 0.99, 0.999].map(|q| histogram.value_at_quantile(q) as f64 / 1000.0)
}

struct QuicClient {
    transport: QuicTransport,
    me: String,
    echo: CoreAddr,
}

impl QuicClient {
    fn new(peer: SocketAddr, certs: &std::path::Path, bind: SocketAddr) -> Result<Self> {
        let identity = TlsIdentity::load(certs, NodeId(BENCH_NODE))?;
        let config = quic_config(CoreAddr::new(BENCH_NODE, 0), bind);
        let transport = QuicTransport::bind(config, &identity)?;
        transport.set_peer_address(NodeId(ECHO_NODE), peer);
        let me = transport.local_socket_addr().to_string();
        Ok(Self { transport, me, echo: CoreAddr::new(ECHO_NODE, 0) })
    }

    async fn rtt(&self, size: usize, samples: u32) -> Result<hdrhistogram::Histogram<u64>> {
        let body = Bytes::from(vec![0xab; size.saturating_sub(self.me.len())]);
        let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
        for _ in 0..samples {
            let frame = Frame::new(Bytes::from(self.me.clone()), body.clone())?;
            let sent = Instant::now();
            self.transport.send(self.echo, LaneId(0), frame).await?;
            let reply = self.transport.recv().await?;
            let elapsed = sent.elapsed();
            assert_eq!(reply.frame.body.len(), body.len());
            histogram.record(u64::try_from(elapsed.as_nanos())?)?;
        }
        Ok(histogram)
    }

    async fn throughput(&self) -> Result<Duration> {
        let body = Bytes::from(vec![0xcd; THROUGHPUT_MESSAGE_BYTES]);
        let messages = THROUGHPUT_BYTES_TOTAL / THROUGHPUT_MESSAGE_BYTES;
        let start = Instant::now();
        for i in 0..messages {
            let header = if i + 1 == messages { Bytes::from(self.me.clone()) } else { Bytes::new() };
            self.transport.send(self.echo, LaneId(1), Frame::new(header, body.clone())?).await?;
        }
        let ack = self.transport.recv().await?;
        assert_eq!(ack.lane, LaneId(1));
        Ok(start.elapsed())
    }
}

struct TcpClient {
    stream: glommio::net::TcpStream,
}

impl TcpClient {
    async fn new(peer: SocketAddr) -> Result<Self> {
        let stream = glommio::net::TcpStream::connect(peer).await.map_err(glommio_error)?;
        stream.set_nodelay(true).map_err(glommio_error)?;
        Ok(Self { stream })
    }

    async fn rtt(&mut self, size: usize, samples: u32) -> Result<hdrhistogram::Histogram<u64>> {
        let mut message = vec![0xab; size + TCP_PREFIX_BYTES];
        message[..4].copy_from_slice(&u32::try_from(size)?.to_le_bytes());
        message[4] = 1;
        let mut reply = vec![0u8; size + TCP_PREFIX_BYTES];
        let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
        for _ in 0..samples {
            let sent = Instant::now();
            self.stream.write_all(&message).await?;
            self.stream.read_exact(&mut reply).await?;
            histogram.record(u64::try_from(sent.elapsed().as_nanos())?)?;
        }
        Ok(histogram)
    }

    async fn throughput(&mut self) -> Result<Duration> {
        let mut message = vec![0xcd; THROUGHPUT_MESSAGE_BYTES + TCP_PREFIX_BYTES];
        message[..4].copy_from_slice(&u32::try_from(THROUGHPUT_MESSAGE_BYTES)?.to_le_bytes());
        let messages = THROUGHPUT_BYTES_TOTAL / THROUGHPUT_MESSAGE_BYTES;
        let start = Instant::now();
        for i in 0..messages {
            message[4] = if i + 1 == messages { 2 } else { 0 };
            self.stream.write_all(&message).await?;
        }
        let mut ack = [0u8; TCP_PREFIX_BYTES];
        self.stream.read_exact(&mut ack).await?;
        Ok(start.elapsed())
    }
}

/// Which phases to run: `RILL_BENCH_PHASES=throughput` or `rtt` narrows it (for profiling).
fn phase_enabled(phase: &str) -> bool {
    std::env::var("RILL_BENCH_PHASES").map_or(true, |phases| phases.split(',').any(|p| p == phase))
}

/// `rounds` rounds; in each, QUIC and TCP alternate phase by phase over the same two cores.
async fn bench_rounds(
    quic_peer: SocketAddr,
    tcp_peer: SocketAddr,
    certs: PathBuf,
    bind: SocketAddr,
    rounds: usize,
    echo_pid: Option<u32>,
) -> Result<Vec<(Round, Round)>> {
    let quic = QuicClient::new(quic_peer, &certs, bind)?;
    let mut tcp = TcpClient::new(tcp_peer).await?;
    let mut results = Vec::new();
    for round in 0..rounds {
        let (mut q, mut t) = (Round::default(), Round::default());
        if phase_enabled("rtt") {
            for size in RTT_SIZES {
                let warmup = if round == 0 { RTT_WARMUP } else { RTT_WARMUP / 4 };
                quic.rtt(size, warmup).await?;
                q.rtt_us.push(percentiles_us(&quic.rtt(size, RTT_SAMPLES).await?));
                tcp.rtt(size, warmup).await?;
                t.rtt_us.push(percentiles_us(&tcp.rtt(size, RTT_SAMPLES).await?));
            }
        }
        if phase_enabled("throughput") {
            for (figures, is_quic) in [(&mut q, true), (&mut t, false)] {
                let before = (schedstat("thread-self"), echo_pid.map(|pid| schedstat(&pid.to_string())));
                let elapsed = if is_quic { quic.throughput().await? } else { tcp.throughput().await? };
                let after = (schedstat("thread-self"), echo_pid.map(|pid| schedstat(&pid.to_string())));
                figures.gbps = THROUGHPUT_BYTES_TOTAL as f64 / elapsed.as_secs_f64() / 1e9;
                figures.sender = (after.0 .0 - before.0 .0, after.0 .1 - before.0 .1);
                if let (Some(after), Some(before)) = (after.1, before.1) {
                    figures.receiver = Some((after.0 - before.0, after.1 - before.1));
                }
            }
        }
        for (name, figures) in [("quic", &q), ("tcp", &t)] {
            let rtts: Vec<String> = RTT_SIZES
                .iter()
                .zip(&figures.rtt_us)
                .map(|(size, [p50, p99, p999])| format!("rtt {size} B {p50:.0}/{p99:.0}/{p999:.0} us"))
                .collect();
            let receiver = figures.receiver.map_or(String::new(), |(cpu, wait)| {
                format!(", receiver cpu {cpu:.2} s, waited {wait:.2} s")
            });
            println!(
                "round {round} {name}: {}; 64 KiB msgs {:.2} GB/s (sender cpu {:.2} s, waited {:.2} s{receiver})",
                rtts.join(", "),
                figures.gbps,
                figures.sender.0,
                figures.sender.1,
            );
        }
        results.push((q, t));
    }
    quic.transport.shutdown().await;
    Ok(results)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Medians over rounds, as the markdown rows of docs/BENCHMARKS.md.
fn print_medians(results: &[(Round, Round)]) {
    println!("\nmedians of {} rounds (µs; GB/s):", results.len());
    println!("| Link, loopback | RTT 64 B p50 / p99 / p99.9 | RTT 16 KiB p50 / p99 / p99.9 | 64 KiB msgs, one way |");
    println!("|---|---|---|---|");
    for (name, pick) in [("QUIC", true), ("TCP", false)] {
        let figures: Vec<&Round> = results.iter().map(|(q, t)| if pick { q } else { t }).collect();
        let mut cells = Vec::new();
        for size_index in 0..RTT_SIZES.len() {
            let cell: Vec<String> = (0..3)
                .map(|p| {
                    let values = figures.iter().filter_map(|r| r.rtt_us.get(size_index).map(|v| v[p]));
                    format!("{:.0}", median(values.collect()))
                })
                .collect();
            cells.push(cell.join(" / "));
        }
        let gbps = median(figures.iter().map(|r| r.gbps).collect());
        println!("| {name} | {} | {gbps:.2} GB/s |", cells.join(" | "));
    }
    let ratio = |size_index: usize| {
        median(
            results
                .iter()
                .filter_map(|(q, t)| Some(q.rtt_us.get(size_index)?[1] / t.rtt_us.get(size_index)?[1]))
                .collect(),
        )
    };
    let gigabytes = THROUGHPUT_BYTES_TOTAL as f64 / 1e9;
    for (name, pick) in [("QUIC", true), ("TCP", false)] {
        let figures: Vec<&Round> = results.iter().map(|(q, t)| if pick { q } else { t }).collect();
        let sender = median(figures.iter().map(|r| r.sender.0 / gigabytes).collect());
        let waited = median(figures.iter().map(|r| r.sender.1 / gigabytes).collect());
        let receiver = median(figures.iter().filter_map(|r| Some(r.receiver?.0 / gigabytes)).collect());
        println!(
            "{name} CPU s per GB moved: sender {sender:.3}, receiver {receiver:.3}; sender waited for a CPU {waited:.3} s per GB"
        );
    }
    println!("QUIC/TCP p99 ratio (median of per-round ratios): 64 B {:.2}x, 16 KiB {:.2}x", ratio(0), ratio(1));
}

fn bench(quic_peer: SocketAddr, tcp_peer: SocketAddr, certs: PathBuf, bind: SocketAddr, rounds: usize) -> Result<()> {
    let rounds = rounds.clamp(1, COMPARE_ROUNDS_MAX);
    let results = executor().run(bench_rounds(quic_peer, tcp_peer, certs, bind, rounds, None))?;
    print_medians(&results);
    Ok(())
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the whole comparison: certificates in a temporary folder, the echo peer on CPU 1, the
/// benchmark on CPU 0 (override with `RILL_ECHO_CPU` / `RILL_CPU`), `rounds` rounds.
fn compare(rounds: usize, base_port: u16) -> Result<()> {
    let certs = std::env::temp_dir().join(format!("rill-repl-compare-{}", std::process::id()));
    let nodes = [NodeId(ECHO_NODE), NodeId(BENCH_NODE)];
    init_certs(&certs, &nodes)?;
    let quic_peer = SocketAddr::from(([127, 0, 0, 1], base_port));
    let tcp_peer = SocketAddr::from(([127, 0, 0, 1], base_port + 1));
    let bind = SocketAddr::from(([127, 0, 0, 1], base_port + 2));
    let echo_cpu = std::env::var("RILL_ECHO_CPU").unwrap_or_else(|_| "1".into());
    let mut child = Command::new(std::env::current_exe()?)
        .args(["echo", &quic_peer.to_string(), &tcp_peer.to_string()])
        .arg(&certs)
        .env("RILL_CPU", echo_cpu)
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("echo stdout")?;
    let echo = KillOnDrop(child);
    let (ready_sender, ready) = mpsc::channel();
    std::thread::spawn(move || {
        let first = BufReader::new(stdout).lines().next();
        let _ = ready_sender.send(first.and_then(Result::ok));
    });
    match ready.recv_timeout(ECHO_START_TIMEOUT) {
        Ok(Some(line)) if line == "ready" => {}
        other => bail!("echo peer did not start: {other:?}"),
    }
    let bench_cpu = std::env::var("RILL_CPU").unwrap_or_else(|_| "0".into()).parse().ok();
    let rounds = rounds.clamp(1, COMPARE_ROUNDS_MAX);
    let echo_pid = echo.0.id();
    let result = executor_on(bench_cpu)
        .run(bench_rounds(quic_peer, tcp_peer, certs.clone(), bind, rounds, Some(echo_pid)))
        .map(|results| print_medians(&results));
    drop(echo);
    let _ = std::fs::remove_dir_all(&certs);
    result
}

// ---- lossy link (5% loss test) -----------------------------------------------------------------

/// `send`: node 1 sends `frames` numbered frames on 4 lanes to node 2 at `peer`.
/// `receive`: node 2 checks every lane arrives complete and in order, prints `ok N`, exits.
fn lossy_link(bind: SocketAddr, peer: SocketAddr, certs: PathBuf, frames: u32, role: &str) -> Result<()> {
    let role = role.to_string();
    executor().run(async move {
        let (me, them) = if role == "send" { (1, 2) } else { (2, 1) };
        let identity = TlsIdentity::load(&certs, NodeId(me))?;
        let mut config = QuicConfig::new(CoreAddr::new(me, 0), bind);
        config.idle_timeout_ms = 10_000;
        let transport = QuicTransport::bind(config, &identity)?;
        transport.set_peer_address(NodeId(them), peer);
        let lanes = 4u32;
        if role == "send" {
            for seq in 0..frames {
                let lane = seq % lanes;
                let header = Bytes::from([lane.to_le_bytes(), (seq / lanes).to_le_bytes()].concat());
                transport.send(CoreAddr::new(them, 0), LaneId(lane), Frame::new(header, Bytes::from(vec![1u8; 1000]))?).await?;
            }
            // Wait for the receiver's verdict so the link stays up until everything arrived.
            let verdict = transport.recv().await?;
            println!("{}", String::from_utf8_lossy(&verdict.frame.header));
        } else {
            let mut next = vec![0u32; lanes as usize];
            for _ in 0..frames {
                let incoming = transport.recv().await?;
                let mut header = incoming.frame.header.clone();
                let (lane, seq) = (header.get_u32_le(), header.get_u32_le());
                if seq != next[lane as usize] {
                    bail!("lane {lane}: got {seq}, expected {}", next[lane as usize]);
                }
                next[lane as usize] += 1;
            }
            let verdict = format!("ok {frames}");
            transport.send(CoreAddr::new(them, 0), LaneId(0), Frame::new(Bytes::from(verdict.clone()), Bytes::new())?).await?;
            println!("{verdict}");
            glommio::timer::sleep(Duration::from_millis(500)).await;
        }
        let metrics = transport.metrics();
        eprintln!("{role}: {metrics:?}");
        transport.shutdown().await;
        Ok(())
    })
}
