//! `rill-repl-node`: a small process around the replication crate, for multi-process tests and
//! the QUIC/TCP benchmark. Not the broker (that is `rill`).
//!
//! ```text
//! rill-repl-node init-certs DIR NODE...                      write a CA and node certificates
//! rill-repl-node gossip NODE BIND [SEED...]                  run a gossip member, print events
//! rill-repl-node gossip-cluster N BASE_PORT TIMEOUT_S        start N members on 127.0.0.1..N,
//!                                                            measure convergence, kill the last,
//!                                                            measure detection
//! rill-repl-node echo quic|tcp BIND CERT_DIR                 echo frames back (benchmark peer)
//! rill-repl-node bench quic|tcp PEER CERT_DIR BIND           RTT 64 B / 16 KiB and 64 KiB
//!                                                            throughput against an echo peer
//! rill-repl-node lossy-link BIND PEER CERT_DIR FRAMES ROLE   send/receive FRAMES over QUIC and
//!                                                            check order (netem test)
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
        Some("echo") => echo(&arg(1)?, arg(2)?.parse()?, PathBuf::from(arg(3)?)),
        Some("bench") => bench(&arg(1)?, arg(2)?.parse()?, PathBuf::from(arg(3)?), arg(4)?.parse()?),
        Some("lossy-link") => lossy_link(arg(1)?.parse()?, arg(2)?.parse()?, PathBuf::from(arg(3)?), arg(4)?.parse()?, &arg(5)?),
        _ => bail!("usage: see the module doc of replication/src/bin/rill-repl-node.rs"),
    }
}

fn glommio_error(error: glommio::GlommioError<()>) -> anyhow::Error {
    anyhow::anyhow!("{error}")
}

fn executor() -> glommio::LocalExecutor {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .expect("glommio executor")
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

/// RTT message sizes; `RILL_BENCH_PHASES=throughput` skips the RTT phase (for profiling).
fn rtt_sizes() -> Vec<usize> {
    match std::env::var("RILL_BENCH_PHASES").as_deref() {
        Ok("throughput") => Vec::new(),
        _ => vec![64, 16 * 1024],
    }
}

fn quic_config(local: CoreAddr, bind: SocketAddr) -> QuicConfig {
    let mut config = QuicConfig::new(local, bind);
    // Loopback takes large datagrams; without GSO they are what makes QUIC cheap per byte. 16 KiB
    // datagrams stalled the handshake here (not yet understood), 8 KiB works.
    config.max_udp_payload_bytes = std::env::var("RILL_BENCH_UDP_PAYLOAD").ok().and_then(|v| v.parse().ok()).unwrap_or(if bind.ip().is_loopback() { 8192 } else { 1452 });
    config
}

fn echo(kind: &str, bind: SocketAddr, certs: PathBuf) -> Result<()> {
    let kind = kind.to_string();
    executor().run(async move {
        match kind.as_str() {
            "quic" => {
                let identity = TlsIdentity::load(&certs, NodeId(ECHO_NODE))?;
                let transport = QuicTransport::bind(quic_config(CoreAddr::new(ECHO_NODE, 0), bind), &identity)?;
                println!("ready");
                loop {
                    let incoming = transport.recv().await?;
                    if incoming.lane == LaneId(0) {
                        // RTT lane: echo. Peer address comes with the first frame's preamble;
                        // its socket address is passed in the header as text.
                        let peer: SocketAddr = std::str::from_utf8(&incoming.frame.header)?.parse()?;
                        transport.set_peer_address(incoming.from.node, peer);
                        transport.send(incoming.from, LaneId(0), incoming.frame).await?;
                    } else if !incoming.frame.header.is_empty() {
                        // Throughput lane: the last frame carries the reply address; ack it.
                        let peer: SocketAddr = std::str::from_utf8(&incoming.frame.header)?.parse()?;
                        transport.set_peer_address(incoming.from.node, peer);
                        transport.send(incoming.from, LaneId(1), Frame::default()).await?;
                    }
                }
            }
            "tcp" => {
                let listener = glommio::net::TcpListener::bind(bind).map_err(glommio_error)?;
                println!("ready");
                loop {
                    let mut stream = listener.accept().await.map_err(glommio_error)?;
                    stream.set_nodelay(true).map_err(glommio_error)?;
                    glommio::spawn_local(async move {
                        let mut buffer = vec![0u8; THROUGHPUT_MESSAGE_BYTES + 8];
                        loop {
                            let mut prefix = [0u8; 8];
                            if stream.read_exact(&mut prefix).await.is_err() {
                                return;
                            }
                            let length = u32::from_le_bytes(prefix[..4].try_into().expect("4")) as usize;
                            let echo_back = prefix[4] == 1;
                            if stream.read_exact(&mut buffer[..length]).await.is_err() {
                                return;
                            }
                            if echo_back {
                                let _ = stream.write_all(&prefix).await;
                                let _ = stream.write_all(&buffer[..length]).await;
                            }
                        }
                    })
                    .detach();
                }
            }
            other => bail!("unknown transport {other}"),
        }
    })
}

fn bench(kind: &str, peer: SocketAddr, certs: PathBuf, bind: SocketAddr) -> Result<()> {
    let kind = kind.to_string();
    executor().run(async move {
        match kind.as_str() {
            "quic" => bench_quic(peer, certs, bind).await,
            "tcp" => bench_tcp(peer).await,
            other => bail!("unknown transport {other}"),
        }
    })
}

fn report(kind: &str, what: &str, histogram: &hdrhistogram::Histogram<u64>) {
    println!(
        "{kind} rtt {what}: p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us ({} samples)",
        histogram.value_at_quantile(0.5) as f64 / 1000.0,
        histogram.value_at_quantile(0.99) as f64 / 1000.0,
        histogram.value_at_quantile(0.999) as f64 / 1000.0,
        histogram.max() as f64 / 1000.0,
        histogram.len()
    );
}

async fn bench_quic(peer: SocketAddr, certs: PathBuf, bind: SocketAddr) -> Result<()> {
    let identity = TlsIdentity::load(&certs, NodeId(BENCH_NODE))?;
    let transport = QuicTransport::bind(quic_config(CoreAddr::new(BENCH_NODE, 0), bind), &identity)?;
    let me = transport.local_socket_addr().to_string();
    transport.set_peer_address(NodeId(ECHO_NODE), peer);
    let echo_core = CoreAddr::new(ECHO_NODE, 0);
    for size in rtt_sizes() {
        let body = Bytes::from(vec![0xab; size - me.len().min(size)]);
        let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
        for i in 0..RTT_WARMUP + RTT_SAMPLES {
            let frame = Frame::new(Bytes::from(me.clone()), body.clone())?;
            let sent = Instant::now();
            transport.send(echo_core, LaneId(0), frame).await?;
            let reply = transport.recv().await?;
            let elapsed = sent.elapsed();
            assert_eq!(reply.frame.body.len(), body.len());
            if i >= RTT_WARMUP {
                histogram.record(u64::try_from(elapsed.as_nanos())?)?;
            }
        }
        report("quic", &format!("{size} B"), &histogram);
    }
    let body = Bytes::from(vec![0xcd; THROUGHPUT_MESSAGE_BYTES]);
    let messages = THROUGHPUT_BYTES_TOTAL / THROUGHPUT_MESSAGE_BYTES;
    let start = Instant::now();
    for i in 0..messages {
        let header = if i + 1 == messages { Bytes::from(me.clone()) } else { Bytes::new() };
        transport.send(echo_core, LaneId(1), Frame::new(header, body.clone())?).await?;
    }
    let ack = transport.recv().await?;
    assert_eq!(ack.lane, LaneId(1));
    let elapsed = start.elapsed();
    println!(
        "quic throughput 64 KiB messages: {:.2} GB/s ({} MiB in {:.2} s)",
        THROUGHPUT_BYTES_TOTAL as f64 / elapsed.as_secs_f64() / 1e9,
        THROUGHPUT_BYTES_TOTAL >> 20,
        elapsed.as_secs_f64()
    );
    transport.shutdown().await;
    Ok(())
}

async fn bench_tcp(peer: SocketAddr) -> Result<()> {
    let mut stream = glommio::net::TcpStream::connect(peer).await.map_err(glommio_error)?;
    stream.set_nodelay(true).map_err(glommio_error)?;
    for size in rtt_sizes() {
        let mut message = vec![0xab; size + 8];
        message[..4].copy_from_slice(&u32::try_from(size)?.to_le_bytes());
        message[4] = 1;
        let mut reply = vec![0u8; size + 8];
        let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
        for i in 0..RTT_WARMUP + RTT_SAMPLES {
            let sent = Instant::now();
            stream.write_all(&message).await?;
            stream.read_exact(&mut reply).await?;
            if i >= RTT_WARMUP {
                histogram.record(u64::try_from(sent.elapsed().as_nanos())?)?;
            }
        }
        report("tcp", &format!("{size} B"), &histogram);
    }
    let mut message = vec![0xcd; THROUGHPUT_MESSAGE_BYTES + 8];
    message[..4].copy_from_slice(&u32::try_from(THROUGHPUT_MESSAGE_BYTES)?.to_le_bytes());
    let messages = THROUGHPUT_BYTES_TOTAL / THROUGHPUT_MESSAGE_BYTES;
    let start = Instant::now();
    for i in 0..messages {
        message[4] = u8::from(i + 1 == messages);
        stream.write_all(&message).await?;
    }
    let mut reply = vec![0u8; THROUGHPUT_MESSAGE_BYTES + 8];
    stream.read_exact(&mut reply).await?;
    let elapsed = start.elapsed();
    println!(
        "tcp throughput 64 KiB messages: {:.2} GB/s ({} MiB in {:.2} s)",
        THROUGHPUT_BYTES_TOTAL as f64 / elapsed.as_secs_f64() / 1e9,
        THROUGHPUT_BYTES_TOTAL >> 20,
        elapsed.as_secs_f64()
    );
    Ok(())
}

// ---- lossy link (netem) ------------------------------------------------------------------------

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
