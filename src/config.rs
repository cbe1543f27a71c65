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
    /// Create unknown topics on first use.
    pub auto_create_topics: Option<bool>,
    /// Partitions of auto-created topics.
    pub default_partitions: Option<i32>,
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
    /// Cores.
    pub cores: usize,
    /// Auto topic creation.
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics.
    pub default_partitions: i32,
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
    /// --auto-create-topics / RILL_AUTO_CREATE_TOPICS.
    pub auto_create_topics: Option<bool>,
    /// --storage / RILL_STORAGE.
    pub storage: Option<String>,
    /// --durability / RILL_DURABILITY.
    pub durability: Option<String>,
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

/// Merge defaults, file and overrides.
pub fn resolve(file: FileConfig, overrides: Overrides) -> Result<ServeSettings> {
    let available = std::thread::available_parallelism().map_or(1, |count| count.get());
    let cores = overrides.cores.or(file.cores).unwrap_or(available);
    if cores == 0 || cores > available {
        bail!("--cores must be between 1 and {available} (this machine's CPUs), got {cores}");
    }
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
        cores,
        auto_create_topics: overrides.auto_create_topics.or(file.auto_create_topics).unwrap_or(false),
        default_partitions,
        advertised_host,
        memory_store_mib_per_core: file.memory_store_mib_per_core.unwrap_or(1024),
        spin_before_park_us: file.spin_before_park_us.unwrap_or(0),
        storage_disk,
        durability,
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
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
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
        let tiny_queue: FileConfig = toml::from_str("cores = 1\nqueued_request_mib_per_core = 1").unwrap();
        assert!(resolve(tiny_queue, Overrides::default()).is_err(), "a queue smaller than one request");
    }
}
