//! Hostile clients against a live broker: while a well-behaved client keeps producing (acks=all),
//! mutation threads send malformed frames (random bodies, bad sizes, unknown API keys and
//! versions, truncated frames, corrupted record batches) on fresh connections, and thousands of
//! idle connections stay open. The broker must survive, keep its memory bounded, and keep serving
//! the good client without errors. The good client's latency quiet and under attack is printed
//! as a figure (speed is a benchmark matter, not an assertion).

mod support;

use rand::{Rng, SeedableRng};
use rill_net::client::{Client, OutgoingRecord};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::Broker;

const ATTACKERS: usize = 3;
const IDLE_CONNECTIONS: usize = 5000;
const PHASE: Duration = Duration::from_secs(4);
/// Resident memory the broker may reach under attack.
const RSS_BYTES_MAX: u64 = 1 << 30;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// One malformed frame of a random kind.
fn malformed(rng: &mut impl Rng) -> Vec<u8> {
    let body_len = rng.gen_range(0..300usize);
    let mut body: Vec<u8> = (0..body_len).map(|_| rng.gen()).collect();
    match rng.gen_range(0..7) {
        // Random body with a correct size prefix.
        0 => {}
        // Plausible header: a real API key with a version far out of range.
        1 if body.len() >= 8 => {
            body[0..2].copy_from_slice(&rng.gen_range(0i16..75).to_be_bytes());
            body[2..4].copy_from_slice(&rng.gen_range(100i16..i16::MAX).to_be_bytes());
        }
        // Unknown API key.
        2 if body.len() >= 8 => body[0..2].copy_from_slice(&rng.gen_range(1000i16..i16::MAX).to_be_bytes()),
        // Huge announced size, little data.
        3 => return [i32::MAX.to_be_bytes().to_vec(), body].concat(),
        // Negative size.
        4 => return [(-rng.gen_range(1..i32::MAX)).to_be_bytes().to_vec(), body].concat(),
        // Truncated: announces more than is sent, then the connection closes.
        5 => {
            let announced = i32::try_from(body.len() + rng.gen_range(1..1000)).unwrap();
            return [announced.to_be_bytes().to_vec(), body].concat();
        }
        // Produce v9 header with garbage after it (records, CRCs, lengths all wrong).
        _ if body.len() >= 8 => {
            body[0..2].copy_from_slice(&0i16.to_be_bytes());
            body[2..4].copy_from_slice(&9i16.to_be_bytes());
        }
        _ => {}
    }
    let len = i32::try_from(body.len()).unwrap();
    [len.to_be_bytes().to_vec(), body].concat()
}

fn attack(address: String, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = TcpStream::connect(&address) else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
        for _ in 0..rng.gen_range(1..4) {
            if stream.write_all(&malformed(&mut rng)).is_err() {
                break;
            }
            sent.fetch_add(1, Ordering::Relaxed);
        }
        let mut sink = [0u8; 4096];
        let _ = stream.read(&mut sink);
    }
}

/// Produces one small batch at a time for `phase`; returns latencies in µs.
fn good_client(client: &mut Client, phase: Duration, tag: &str) -> Vec<u64> {
    let mut latencies = Vec::new();
    let end = Instant::now() + phase;
    let mut i = 0u64;
    while Instant::now() < end {
        let record = OutgoingRecord { key: None, value: Some(format!("{tag}-{i}").into_bytes().into()), headers: Vec::new() };
        let started = Instant::now();
        client.produce("good", 0, &[record], -1).expect("the good client must keep working");
        latencies.push(u64::try_from(started.elapsed().as_micros()).unwrap());
        i += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    latencies
}

fn p99(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values[(values.len() * 99 / 100).min(values.len() - 1)]
}

#[test]
fn malformed_frames_and_idle_connections_do_not_hurt_a_good_client() {
    // The test itself holds thousands of sockets.
    if let Ok((_, hard)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    let broker = Broker::start(2, &[]);
    let pid = broker.pid();
    let mut client = Client::connect(&broker.bootstrap()).unwrap();
    client.create_topic("good", 1, &[]).unwrap();
    let quiet = good_client(&mut client, PHASE, "quiet");
    let rss_before = rss_bytes(pid);

    let mut idle = Vec::new();
    for _ in 0..IDLE_CONNECTIONS {
        match TcpStream::connect(broker.bootstrap()) {
            Ok(stream) => idle.push(stream),
            Err(error) => panic!("idle connection {} refused: {error}", idle.len()),
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|i| {
            let (address, stop, sent) = (broker.bootstrap(), stop.clone(), sent.clone());
            std::thread::spawn(move || attack(address, stop, sent, i as u64))
        })
        .collect();
    let under_attack = good_client(&mut client, PHASE, "attack");
    let rss_peak = rss_bytes(pid);
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.join().unwrap();
    }
    // Idle connections are still served after all that.
    let mut probe = Client::connect(&broker.bootstrap()).unwrap();
    assert!(probe.partition_count("good").unwrap() == 1);
    drop(idle);
    let frames = sent.load(Ordering::Relaxed);
    let (quiet_p99, attack_p99) = (p99(quiet.clone()), p99(under_attack.clone()));
    eprintln!(
        "hostile clients: {frames} malformed frames from {ATTACKERS} threads, {IDLE_CONNECTIONS} idle connections; \
         good client p99 {quiet_p99} µs quiet, {attack_p99} µs under attack ({:.2}x), {} + {} produces, 0 errors; \
         broker RSS {} MiB before, {} MiB under attack",
        attack_p99 as f64 / quiet_p99.max(1) as f64,
        quiet.len(),
        under_attack.len(),
        rss_before >> 20,
        rss_peak >> 20
    );
    assert!(frames > 500, "too few malformed frames ({frames}) to mean anything");
    assert!(rss_peak < RSS_BYTES_MAX, "broker RSS {} MiB", rss_peak >> 20);
    assert!(broker.is_running(), "the broker died:\n{}", broker.log());
}

/// Whether the broker closed `stream` within `within` (EOF or reset), reading whatever it sent.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut sink = [0u8; 1024];
    while Instant::now() < deadline {
        stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Slow-loris connections (a frame started and trickled, or a size prefix cut short) are closed at
/// the request deadline; connections beyond the configured limit are closed at accept; idle ones
/// are closed after the idle limit. A well-behaved client produces throughout without an error,
/// and a fresh connection is served once the limit has room again.
#[test]
fn slow_loris_idle_and_over_limit_connections_are_closed_within_configured_limits() {
    const LIMIT: usize = 40;
    const LORIS: usize = 12;
    let config = support::test_tmp().join(format!("limits-{}.toml", std::process::id()));
    std::fs::write(&config, format!("max_connections = {LIMIT}\nconnections_max_idle_ms = 3000\nrequest_read_timeout_ms = 1000\n")).unwrap();
    let broker = Broker::start(1, &["--config", config.to_str().unwrap()]);
    let mut client = Client::connect(&broker.bootstrap()).unwrap();
    client.create_topic("good", 1, &[]).unwrap();
    drop(client);

    // The good client keeps producing on one connection all along (never idle for 3 s).
    let stop = Arc::new(AtomicBool::new(false));
    let good = {
        let (address, stop) = (broker.bootstrap(), stop.clone());
        std::thread::spawn(move || {
            let mut client = Client::connect(&address).unwrap();
            let mut produced = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let record = OutgoingRecord { key: None, value: Some(b"steady".to_vec().into()), headers: Vec::new() };
                client.produce("good", 0, &[record], -1).expect("the good client must keep working");
                produced += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            produced
        })
    };
    std::thread::sleep(Duration::from_millis(300));

    // Slow loris: half announce a 1,000-byte request and send a byte every 150 ms (it would take
    // 150 s); half send two bytes of a size prefix and stop.
    let started = Instant::now();
    let mut loris: Vec<TcpStream> = (0..LORIS)
        .map(|index| {
            let mut stream = TcpStream::connect(broker.bootstrap()).unwrap();
            let prefix = 1000i32.to_be_bytes();
            let sent = if index % 2 == 0 { &prefix[..] } else { &prefix[..2] };
            stream.write_all(sent).unwrap();
            stream
        })
        .collect();
    let trickle_deadline = Instant::now() + Duration::from_secs(4);
    let mut open = loris.len();
    let mut closed_after = Vec::new();
    while open > 0 && Instant::now() < trickle_deadline {
        open = 0;
        for (index, stream) in loris.iter_mut().enumerate() {
            let _ = stream.set_nonblocking(true);
            let mut byte = [0u8; 1];
            let gone = match stream.read(&mut byte) {
                Ok(0) => true,
                Ok(_) => false,
                Err(error) => error.kind() != std::io::ErrorKind::WouldBlock,
            };
            if gone {
                continue;
            }
            if index % 2 == 0 && stream.write_all(&[0]).is_err() {
                continue;
            }
            open += 1;
        }
        if open < LORIS && closed_after.is_empty() {
            closed_after.push(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    let loris_closed_in = started.elapsed();
    assert_eq!(open, 0, "{open} slow-loris connections still open after {loris_closed_in:?}");
    drop(loris);

    // Fill the node up to its limit (the good client holds one), then one more.
    let idle_opened = Instant::now();
    let mut idle: Vec<TcpStream> = (0..LIMIT - 1).map(|_| TcpStream::connect(broker.bootstrap()).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut over = TcpStream::connect(broker.bootstrap()).unwrap();
    assert!(closed_within(&mut over, Duration::from_secs(2)), "a connection over the limit was not closed");
    assert!(!closed_within(&mut idle[0], Duration::from_millis(200)), "a connection within the limit was closed");
    // Idle past 3 s: closed, and not much earlier.
    for stream in &mut idle {
        assert!(closed_within(stream, Duration::from_secs(6)), "an idle connection outlived the idle limit");
    }
    let idle_closed_in = idle_opened.elapsed();
    assert!(idle_closed_in > Duration::from_millis(2500), "idle connections closed early, after {idle_closed_in:?}");
    // Room again: a fresh client is served.
    let mut fresh = Client::connect(&broker.bootstrap()).unwrap();
    assert_eq!(fresh.partition_count("good").unwrap(), 1);
    drop(fresh);
    stop.store(true, Ordering::Relaxed);
    let produced = good.join().expect("the good client failed");
    let metrics = broker.admin_get("/metrics");
    let (refused, timed_out) = (
        support::metric_total(&metrics, "rill_connections_refused_total"),
        support::metric_total(&metrics, "rill_connections_timed_out_total"),
    );
    eprintln!(
        "connection limits: {LORIS} slow-loris connections (request deadline 1 s) all closed within {loris_closed_in:?}; \
         connection {} of limit {LIMIT} refused; {} idle connections all closed {idle_closed_in:?} after \
         they were opened (idle limit 3 s); broker counted {refused} refused, {timed_out} timed out; the good client produced {produced} \
         times without an error",
        LIMIT + 1,
        idle.len(),
    );
    assert!(refused >= 1, "refusal not counted:\n{metrics}");
    assert!(timed_out >= (LORIS + LIMIT - 1) as u64, "timeouts not counted ({timed_out}):\n{metrics}");
    assert!(produced > 50);
    assert!(broker.is_running(), "the broker died:\n{}", broker.log());
}

/// `max_connections_per_ip`: one address holding its share gets further connections closed at
/// accept, and a slot freed by a client that left is usable again.
#[test]
fn connections_beyond_the_per_ip_limit_are_closed() {
    const PER_IP: usize = 3;
    let config = support::test_tmp().join(format!("per-ip-{}.toml", std::process::id()));
    std::fs::write(&config, format!("max_connections_per_ip = {PER_IP}\n")).unwrap();
    let broker = Broker::start(2, &["--config", config.to_str().unwrap()]);
    // The harness's readiness probe connection must be gone before counting.
    std::thread::sleep(Duration::from_millis(300));
    let mut held: Vec<TcpStream> = (0..PER_IP).map(|_| TcpStream::connect(broker.bootstrap()).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut over = TcpStream::connect(broker.bootstrap()).unwrap();
    assert!(closed_within(&mut over, Duration::from_secs(2)), "connection {} from one address was not closed", PER_IP + 1);
    for stream in &mut held {
        assert!(!closed_within(stream, Duration::from_millis(100)), "a connection within the limit was closed");
    }
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(300));
    let mut client = Client::connect(&broker.bootstrap()).expect("a freed slot is usable again");
    client.create_topic("per-ip", 1, &[]).unwrap();
    let metrics = broker.admin_get("/metrics");
    let refused = support::metric_total(&metrics, "rill_connections_refused_total");
    eprintln!("per-IP limit {PER_IP}: connection {} closed at accept; after one left, a new client was served; broker counted {refused} refused", PER_IP + 1);
    assert!(refused >= 1, "{metrics}");
    assert!(broker.is_running());
}
