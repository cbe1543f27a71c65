//! `rill serve` settings: embedded defaults, then the TOML file, then environment, then flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// Embedded defaults (single node, local only).
pub const DEFAULT_DATA_DIR: &str = "./rill-data";
/// Default Kafka listener.
pub const DEFAULT_KAFKA_LISTEN: &str = "127.0.0.1:9092";
/// Default admin HTTP listener.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9644";

/// Keys accepted in the TOML file; every one is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Kafka listener, HOST:PORT.
    pub kafka_listen: Option<String>,
    /// Admin HTTP listener, HOST:PORT.
    pub admin_listen: Option<String>,
    /// Cores to run on (default: all).
    pub cores: Option<usize>,
    /// CPUs the cores are pinned to, one core per CPU, as `taskset -c` takes them (`"1"`,
    /// `"0,2-3"`); default: the first `cores` CPUs this process may run on.
    pub cpus: Option<String>,
    /// Create unknown topics on first use.
    pub auto_create_topics: Option<bool>,
    /// Partitions of auto-created topics.
    pub default_partitions: Option<i32>,
    /// Kafka's `log.preallocate`: topics that do not set `preallocate` reserve each segment's
    /// whole file when it starts (default false).
    pub log_preallocate: Option<bool>,
    /// Host advertised to clients (default: the Kafka listener's host).
    pub advertised_host: Option<String>,
    /// In-memory storage budget per core, in MiB.
    pub memory_store_mib_per_core: Option<u64>,
    /// Busy-spin before parking, in microseconds.
    pub spin_before_park_us: Option<u64>,
    /// `disk` (default: the direct-I/O engine under data_dir) or `memory` (nothing survives).
    pub storage: Option<String>,
    /// `fsync` (default: acknowledged means fdatasync'd), `write` (written, not synced) or
    /// `memory` (acknowledged when staged).
    pub durability: Option<String>,
    /// Batch cache per core, in MiB.
    pub batch_cache_mib_per_core: Option<u64>,
    /// How segment files are written: `direct` (default: O_DIRECT, a write completes once the
    /// device took it) or `buffered` (through the page cache: a write completes once the kernel
    /// holds it, and the kernel writes it back later).
    pub segment_io: Option<String>,
    /// With durability `write` or `memory`: fdatasync every log this often, in milliseconds
    /// (Kafka's `log.flush.interval.ms`); 0: only on segment roll and close.
    pub flush_interval_ms: Option<u64>,
    /// Write zeros ahead of each log's end this often, in milliseconds, so appends overwrite
    /// written blocks and group commits stay plain device flushes; 0: never.
    pub zero_ahead_interval_ms: Option<u64>,
    /// Open Kafka connections the node accepts (split evenly over the cores).
    pub max_connections: Option<usize>,
    /// Close connections silent this long between requests (Kafka's `connections.max.idle.ms`).
    pub connections_max_idle_ms: Option<u64>,
    /// Close connections that take longer than this to send one request, in milliseconds.
    pub request_read_timeout_ms: Option<u64>,
    /// Largest request frame, in bytes (Kafka's `socket.request.max.bytes`).
    pub max_request_bytes: Option<usize>,
    /// Request bytes each core holds before it stops reading (Kafka's `queued.max.request.bytes`).
    pub queued_request_mib_per_core: Option<u64>,
    /// Open Kafka connections one client IP may hold (Kafka's `max.connections.per.ip`).
    pub max_connections_per_ip: Option<usize>,
    /// Requests of one connection processed at once; at the limit the connection is not read
    /// until its oldest request is answered.
    pub max_in_flight_requests_per_connection: Option<usize>,
}

impl FileConfig {
    /// Read a TOML file.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
    }
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Kafka listener.
    pub kafka_listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// The CPU each core is pinned to (core `i` on `cpus[i]`); one entry per core.
    pub cpus: Vec<usize>,
    /// Auto topic creation.
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics.
    pub default_partitions: i32,
    /// The `preallocate` of topics that do not set it.
    pub log_preallocate: bool,
    /// Advertised host.
    pub advertised_host: String,
    /// In-memory budget per core, in MiB.
    pub memory_store_mib_per_core: u64,
    /// Busy-spin before parking, in microseconds.
    pub spin_before_park_us: u64,
    /// Disk (true) or memory storage.
    pub storage_disk: bool,
    /// When appends are acknowledged.
    pub durability: rill_engine::Durability,
    /// How segment files are written.
    pub segment_io: rill_engine::storage::glommio_fs::FileIo,
    /// Batch cache per core, in MiB.
    pub batch_cache_mib_per_core: u64,
    /// Periodic fdatasync for durability `write` and `memory` (`None`: none).
    pub flush_interval: Option<std::time::Duration>,
    /// How often each core zeroes ahead of its logs' ends (`None`: never).
    pub zero_ahead_interval: Option<std::time::Duration>,
    /// Open Kafka connections per core.
    pub connections_per_core_max: usize,
    /// Idle limit and request deadline.
    pub frame_timeouts: rill_net::frame::FrameTimeouts,
    /// Largest request frame, in bytes.
    pub max_request_bytes: usize,
    /// Request bytes held per core.
    pub queued_request_bytes_per_core: u64,
    /// Open connections per client IP.
    pub connections_per_ip_max: usize,
    /// Requests of one connection processed at once.
    pub requests_in_flight_per_connection_max: usize,
}

/// Default of `flush_interval_ms`: what a power cut can take with durability `write` or `memory`
/// is bounded by about a second, as with Redis's `appendfsync everysec`.
pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 1000;

/// Default of `zero_ahead_interval_ms`: with each log zeroed 8 MiB ahead, a log must take more
/// than 80 MB/s before its appends catch up with the zeros.
pub const DEFAULT_ZERO_AHEAD_INTERVAL_MS: u64 = 100;

/// Default of `max_connections` (per node).
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;

/// Values given on the command line or in the environment (they win over the file).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// --data-dir / RILL_DATA_DIR.
    pub data_dir: Option<PathBuf>,
    /// --kafka-listen / RILL_KAFKA_LISTEN.
    pub kafka_listen: Option<String>,
    /// --admin-listen / RILL_ADMIN_LISTEN.
    pub admin_listen: Option<String>,
    /// --cores / RILL_CORES.
    pub cores: Option<usize>,
    /// --cpus / RILL_CPUS.
    pub cpus: Option<String>,
    /// --auto-create-topics / RILL_AUTO_CREATE_TOPICS.
    pub auto_create_topics: Option<bool>,
    /// --storage / RILL_STORAGE.
    pub storage: Option<String>,
    /// --durability / RILL_DURABILITY.
    pub durability: Option<String>,
    /// --segment-io / RILL_SEGMENT_IO.
    pub segment_io: Option<String>,
    /// --max-connections / RILL_MAX_CONNECTIONS.
    pub max_connections: Option<usize>,
}

fn parse_address(text: &str, what: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    text.to_socket_addrs()
        .with_context(|| format!("{what} {text:?} is not HOST:PORT"))?
        .next()
        .with_context(|| format!("{what} {text:?} resolves to no address"))
}

/// Parses a CPU list as `taskset -c` takes it: comma-separated CPUs and inclusive ranges
/// (`"1"`, `"0,2-3"`), in the order given.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim) {
        let number = |n: &str| n.trim().parse::<usize>().with_context(|| format!("cpus {text:?}: {part:?} is not a CPU or a range"));
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (number(first)?, number(last)?);
                if first > last {
                    bail!("cpus {text:?}: range {part:?} runs backwards");
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(number(part)?),
        }
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(repeated) = cpus.iter().find(|cpu| !seen.insert(**cpu)) {
        bail!("cpus {text:?}: CPU {repeated} is listed twice (one core per CPU)");
    }
    Ok(cpus)
}

/// The CPUs this process may run on (its affinity mask, as `taskset` set it), ascending.
fn allowed_cpus() -> Result<Vec<usize>> {
    let mask = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).context("reading this process's CPU affinity")?;
    Ok((0..nix::sched::CpuSet::count()).filter(|&cpu| mask.is_set(cpu).unwrap_or(false)).collect())
}

/// Which CPU each core is pinned to: `cpus` when given (checked against the affinity mask and
/// against `cores`), else the first `cores` allowed CPUs (all of them by default).
fn resolve_cpus(cores: Option<usize>, cpus: Option<String>, allowed: &[usize]) -> Result<Vec<usize>> {
    let shown = || allowed.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    match cpus {
        Some(text) => {
            let cpus = parse_cpu_list(&text)?;
            if let Some(cpu) = cpus.iter().find(|cpu| !allowed.contains(cpu)) {
                bail!("cpus {text:?}: CPU {cpu} is not one this process may run on ({})", shown());
            }
            match cores {
                Some(cores) if cores != cpus.len() => {
                    bail!("--cores {cores} and --cpus {text:?} ({} CPUs) disagree; give one of them", cpus.len())
                }
                _ => Ok(cpus),
            }
        }
        None => {
            let cores = cores.unwrap_or(allowed.len());
            if cores == 0 || cores > allowed.len() {
                bail!("--cores must be between 1 and {} (the CPUs this process may run on: {}), got {cores}", allowed.len(), shown());
            }
            Ok(allowed[..cores].to_vec())
        }
    }
}

/// Merge defaults, file and overrides.
pub fn resolve(file: FileConfig, overrides: Overrides) -> Result<ServeSettings> {
    let cpus = resolve_cpus(overrides.cores.or(file.cores), overrides.cpus.or(file.cpus), &allowed_cpus()?)?;
    let cores = cpus.len();
    let kafka_text = overrides.kafka_listen.or(file.kafka_listen).unwrap_or_else(|| DEFAULT_KAFKA_LISTEN.to_string());
    let kafka_listen = parse_address(&kafka_text, "kafka listen address")?;
    let admin_text = overrides.admin_listen.or(file.admin_listen).unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.to_string());
    let admin_listen = parse_address(&admin_text, "admin listen address")?;
    if kafka_listen.port() == 0 {
        // Each core binds its own listener; port 0 would give every core a different port.
        bail!("kafka listen port must be explicit (not 0): every core binds it with SO_REUSEPORT");
    }
    let advertised_host = file.advertised_host.unwrap_or_else(|| {
        let host = kafka_listen.ip();
        if host.is_unspecified() { "127.0.0.1".to_string() } else { host.to_string() }
    });
    let storage_disk = match overrides.storage.or(file.storage).as_deref().unwrap_or("disk") {
        "disk" => true,
        "memory" => false,
        other => bail!("storage must be `disk` or `memory`, got {other:?}"),
    };
    let durability = match overrides.durability.or(file.durability).as_deref().unwrap_or("fsync") {
        "fsync" => rill_engine::Durability::Fsync,
        "write" => rill_engine::Durability::Write,
        "memory" => rill_engine::Durability::Memory,
        other => bail!("durability must be `fsync`, `write` or `memory`, got {other:?}"),
    };
    let segment_io = match overrides.segment_io.or(file.segment_io).as_deref().unwrap_or("direct") {
        "direct" => rill_engine::storage::glommio_fs::FileIo::Direct,
        "buffered" => rill_engine::storage::glommio_fs::FileIo::Buffered,
        other => bail!("segment_io must be `direct` or `buffered`, got {other:?}"),
    };
    let max_connections = overrides.max_connections.or(file.max_connections).unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections < cores {
        bail!("max_connections must allow at least one connection per core ({cores}), got {max_connections}");
    }
    let idle_ms = file.connections_max_idle_ms.unwrap_or(rill_net::frame::IDLE_MS_DEFAULT);
    let complete_ms = file.request_read_timeout_ms.unwrap_or(rill_net::frame::FRAME_COMPLETE_MS_DEFAULT);
    if idle_ms == 0 || complete_ms == 0 {
        bail!("connections_max_idle_ms and request_read_timeout_ms must be positive");
    }
    let max_request_bytes = file.max_request_bytes.unwrap_or(rill_net::frame::FRAME_BYTES_MAX_DEFAULT);
    if max_request_bytes < 1024 || max_request_bytes > i32::MAX as usize {
        bail!("max_request_bytes must be between 1024 and {}, got {max_request_bytes}", i32::MAX);
    }
    let queued_request_bytes_per_core = match file.queued_request_mib_per_core {
        Some(mib) => mib.saturating_mul(1024 * 1024),
        None => rill_net::shard::REQUEST_BYTES_QUEUED_MAX_PER_CORE_DEFAULT,
    };
    if queued_request_bytes_per_core < max_request_bytes as u64 {
        bail!("queued_request_mib_per_core must hold at least one largest request ({max_request_bytes} bytes)");
    }
    let default_partitions = file.default_partitions.unwrap_or(1);
    if default_partitions < 1 {
        bail!("default_partitions must be at least 1");
    }
    Ok(ServeSettings {
        data_dir: overrides.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        kafka_listen,
        admin_listen,
        cpus,
        auto_create_topics: overrides.auto_create_topics.or(file.auto_create_topics).unwrap_or(false),
        default_partitions,
        log_preallocate: file.log_preallocate.unwrap_or(false),
        advertised_host,
        memory_store_mib_per_core: file.memory_store_mib_per_core.unwrap_or(1024),
        spin_before_park_us: file.spin_before_park_us.unwrap_or(0),
        storage_disk,
        durability,
        segment_io,
        batch_cache_mib_per_core: file.batch_cache_mib_per_core.unwrap_or(256),
        flush_interval: match file.flush_interval_ms.unwrap_or(DEFAULT_FLUSH_INTERVAL_MS) {
            0 => None,
            ms => Some(std::time::Duration::from_millis(ms)),
        },
        zero_ahead_interval: match file.zero_ahead_interval_ms.unwrap_or(DEFAULT_ZERO_AHEAD_INTERVAL_MS) {
            0 => None,
            ms => Some(std::time::Duration::from_millis(ms)),
        },
        connections_per_core_max: max_connections.div_ceil(cores),
        frame_timeouts: rill_net::frame::FrameTimeouts {
            idle: std::time::Duration::from_millis(idle_ms),
            complete: std::time::Duration::from_millis(complete_ms),
        },
        max_request_bytes,
        queued_request_bytes_per_core,
        connections_per_ip_max: match file.max_connections_per_ip {
            Some(0) => bail!("max_connections_per_ip must be at least 1"),
            Some(max) => max,
            None => usize::MAX,
        },
        requests_in_flight_per_connection_max: match file.max_in_flight_requests_per_connection {
            Some(max) if !(1..=rill_net::server::CONNECTION_REQUESTS_IN_FLIGHT_LIMIT).contains(&max) => bail!(
                "max_in_flight_requests_per_connection must be between 1 and {}, got {max}",
                rill_net::server::CONNECTION_REQUESTS_IN_FLIGHT_LIMIT
            ),
            Some(max) => max,
            None => rill_net::server::CONNECTION_REQUESTS_IN_FLIGHT_DEFAULT,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_defaults_fill_in() {
        let file: FileConfig = toml::from_str("kafka_listen = \"127.0.0.1:9100\"\nauto_create_topics = true\ncores = 1").unwrap();
        let overrides = Overrides { kafka_listen: Some("127.0.0.1:9200".into()), ..Overrides::default() };
        let settings = resolve(file, overrides).unwrap();
        assert_eq!(settings.kafka_listen.port(), 9200);
        assert!(settings.auto_create_topics);
        assert_eq!(settings.admin_listen.port(), 9644);
        assert_eq!(settings.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(!settings.log_preallocate);
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
        let preallocating: FileConfig = toml::from_str("cores = 1\nlog_preallocate = true").unwrap();
        assert!(resolve(preallocating, Overrides::default()).unwrap().log_preallocate);
        let limits: FileConfig = toml::from_str("cores = 1\nmax_connections = 10\nconnections_max_idle_ms = 2000\nrequest_read_timeout_ms = 500").unwrap();
        let settings = resolve(limits, Overrides::default()).unwrap();
        assert_eq!(settings.connections_per_core_max, 10);
        assert_eq!(settings.frame_timeouts.idle.as_millis(), 2000);
        assert_eq!(settings.frame_timeouts.complete.as_millis(), 500);
        assert_eq!(settings.requests_in_flight_per_connection_max, rill_net::server::CONNECTION_REQUESTS_IN_FLIGHT_DEFAULT);
        assert_eq!(settings.flush_interval, Some(std::time::Duration::from_millis(DEFAULT_FLUSH_INTERVAL_MS)));
        let never: FileConfig = toml::from_str("cores = 1\nflush_interval_ms = 0").unwrap();
        assert_eq!(resolve(never, Overrides::default()).unwrap().flush_interval, None);
        let in_flight: FileConfig = toml::from_str("cores = 1\nmax_in_flight_requests_per_connection = 4").unwrap();
        assert_eq!(resolve(in_flight, Overrides::default()).unwrap().requests_in_flight_per_connection_max, 4);
        let no_in_flight: FileConfig = toml::from_str("cores = 1\nmax_in_flight_requests_per_connection = 0").unwrap();
        assert!(resolve(no_in_flight, Overrides::default()).is_err(), "a connection must serve at least one request");
        let buffered: FileConfig = toml::from_str("cores = 1\nsegment_io = \"buffered\"").unwrap();
        assert_eq!(resolve(buffered, Overrides::default()).unwrap().segment_io, rill_engine::storage::glommio_fs::FileIo::Buffered);
        assert_eq!(settings.segment_io, rill_engine::storage::glommio_fs::FileIo::Direct, "direct by default");
        let bad_io = Overrides { segment_io: Some("mmap".into()), cores: Some(1), ..Overrides::default() };
        assert!(resolve(FileConfig::default(), bad_io).unwrap_err().to_string().contains("segment_io must be"));
        let tiny_queue: FileConfig = toml::from_str("cores = 1\nqueued_request_mib_per_core = 1").unwrap();
        assert!(resolve(tiny_queue, Overrides::default()).is_err(), "a queue smaller than one request");
    }

    #[test]
    fn cpu_lists_parse_as_taskset_takes_them() {
        assert_eq!(parse_cpu_list("1").unwrap(), vec![1]);
        assert_eq!(parse_cpu_list("0,2-4, 7").unwrap(), vec![0, 2, 3, 4, 7]);
        assert_eq!(parse_cpu_list("3,1").unwrap(), vec![3, 1], "order given is the cores' order");
        for bad in ["", "a", "1-", "3-1", "1,1", "0-2,2", "-1"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn cores_are_pinned_to_the_given_cpus_or_the_first_allowed_ones() {
        let allowed = [1, 2, 5];
        assert_eq!(resolve_cpus(None, None, &allowed).unwrap(), vec![1, 2, 5], "default: every allowed CPU");
        assert_eq!(resolve_cpus(Some(2), None, &allowed).unwrap(), vec![1, 2], "not CPU 0: it is not allowed");
        assert_eq!(resolve_cpus(None, Some("5".into()), &allowed).unwrap(), vec![5]);
        assert_eq!(resolve_cpus(Some(2), Some("2,5".into()), &allowed).unwrap(), vec![2, 5]);
        let outside = resolve_cpus(None, Some("0".into()), &allowed).unwrap_err().to_string();
        assert!(outside.contains("CPU 0 is not one this process may run on (1,2,5)"), "{outside}");
        let disagree = resolve_cpus(Some(1), Some("1,2".into()), &allowed).unwrap_err().to_string();
        assert!(disagree.contains("disagree"), "{disagree}");
        assert!(resolve_cpus(Some(0), None, &allowed).is_err());
        assert!(resolve_cpus(Some(4), None, &allowed).is_err());
    }
}
