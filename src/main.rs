//! The `rill` binary: CLI and node assembly. Thin: wiring only.
//!
//! `rill serve` resolves its settings (see `config.rs`), installs SIGTERM/SIGINT handlers that set
//! a shutdown flag, and hands over to `rill_net::server::run`, which runs one pinned executor per
//! core until the flag is set. The client subcommands live in `commands.rs`.

mod commands;
mod config;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use rill_net::backend::TopicConfig;
use rill_net::frame::FrameLimits;
use rill_net::server::{run, ServerConfig, StorageChoice};
use rill_net::shard::BrokerConfig;

/// Rill: a Kafka-compatible streaming platform.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker.
    Serve(ServeArgs),
    /// Create, list, describe, alter and delete topics.
    Topic {
        #[command(flatten)]
        connection: commands::Connection,
        #[command(subcommand)]
        command: commands::TopicCommand,
    },
    /// Produce lines from stdin or a file.
    Produce {
        #[command(flatten)]
        connection: commands::Connection,
        #[command(flatten)]
        args: commands::ProduceArgs,
    },
    /// Consume records and print them.
    Consume {
        #[command(flatten)]
        connection: commands::Connection,
        #[command(flatten)]
        args: commands::ConsumeArgs,
    },
    /// List and describe consumer groups, reset their offsets.
    Group {
        #[command(flatten)]
        connection: commands::Connection,
        #[command(subcommand)]
        command: commands::GroupCommand,
    },
    /// Load-test a Kafka-protocol broker (or a peer) and report latency percentiles.
    Bench(rill_bench::cli::BenchArgs),
    /// Cluster administration.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Create the cluster CA and one certificate per node for the mutual-TLS replication links.
    InitCerts {
        /// Directory to write ca.pem, ca.key.pem and node-<id>.pem / node-<id>.key.pem into.
        #[arg(long)]
        out: PathBuf,
        /// Node ids, comma separated (e.g. 0,1,2).
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<u32>,
        /// Replace an existing CA in the directory (every node then needs new certificates).
        #[arg(long)]
        force: bool,
    },
}

fn cluster(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::InitCerts { out, nodes, force } => {
            let ca = out.join("ca.pem");
            if ca.exists() && !force {
                anyhow::bail!(
                    "{} already exists: refusing to replace the cluster CA (certificates it issued would stop working); pass --force to do it anyway",
                    ca.display()
                );
            }
            let mut ids: Vec<u32> = nodes.clone();
            ids.sort_unstable();
            ids.dedup();
            if ids.len() != nodes.len() {
                anyhow::bail!("node ids repeat: {nodes:?}");
            }
            let ids: Vec<_> = ids.into_iter().map(rill_replication::types::NodeId).collect();
            let files = rill_replication::certs::init_certs(&out, &ids).context("creating certificates")?;
            println!("CA certificate {} (give to every node)", files.ca_cert.display());
            println!("CA key         {} (keep it off the nodes)", files.ca_key.display());
            for (node, cert, key) in &files.nodes {
                println!("node {:<9} {} {}", node.0, cert.display(), key.display());
            }
            Ok(())
        }
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file (keys: data_dir, kafka_listen, admin_listen, cores, auto_create_topics, ...).
    #[arg(long, env = "RILL_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory [default: ./rill-data].
    #[arg(long, env = "RILL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Kafka listener HOST:PORT [default: 127.0.0.1:9092].
    #[arg(long, env = "RILL_KAFKA_LISTEN")]
    kafka_listen: Option<String>,
    /// Admin HTTP listener HOST:PORT [default: 127.0.0.1:9644].
    #[arg(long, env = "RILL_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    /// Cores to run on, pinned to the first N CPUs this process may run on [default: all].
    #[arg(long, env = "RILL_CORES")]
    cores: Option<usize>,
    /// CPUs to pin the cores to, one core each, as `taskset -c` takes them (`1`, `0,2-3`).
    #[arg(long, env = "RILL_CPUS")]
    cpus: Option<String>,
    /// Create unknown topics when clients ask for them.
    #[arg(long, env = "RILL_AUTO_CREATE_TOPICS", num_args = 0..=1, default_missing_value = "true")]
    auto_create_topics: Option<bool>,
    /// Partition storage: `disk` (direct-I/O logs in the data dir) or `memory` [default: disk].
    #[arg(long, env = "RILL_STORAGE")]
    storage: Option<String>,
    /// When appends are acknowledged: `fsync`, `write` or `memory` [default: fsync].
    #[arg(long, env = "RILL_DURABILITY")]
    durability: Option<String>,
    /// How segment files are written: `direct` (O_DIRECT) or `buffered` (page cache) [default: direct].
    #[arg(long, env = "RILL_SEGMENT_IO")]
    segment_io: Option<String>,
    /// Open Kafka connections accepted by the node; more are closed at accept [default: 20000].
    #[arg(long, env = "RILL_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
}

/// A broker keeps every segment of every partition open: lift the soft open-files limit to
/// the hard one (as Kafka's docs ask operators to), and say so when that is still low.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-files limit"),
            Err(error) => tracing::warn!(soft, hard, %error, "could not raise the open-files limit"),
        },
        Ok((soft, _)) if soft < 65_536 => tracing::warn!(limit = soft, "open-files limit is low for a broker"),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "could not read the open-files limit"),
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    raise_open_files_limit();
    let file = match &args.config {
        Some(path) => config::FileConfig::load(path)?,
        None => config::FileConfig::default(),
    };
    let overrides = config::Overrides {
        data_dir: args.data_dir,
        kafka_listen: args.kafka_listen,
        admin_listen: args.admin_listen,
        cores: args.cores,
        cpus: args.cpus,
        auto_create_topics: args.auto_create_topics,
        storage: args.storage,
        durability: args.durability,
        segment_io: args.segment_io,
        max_connections: args.max_connections,
    };
    let settings = config::resolve(file, overrides)?;
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;
    tracing::info!(?settings, "starting rill");
    let broker = BrokerConfig {
        node_id: 0,
        advertised_host: settings.advertised_host.clone(),
        advertised_port: i32::from(settings.kafka_listen.port()),
        auto_create_topics: settings.auto_create_topics,
        default_partitions: settings.default_partitions,
        topic_defaults: TopicConfig { preallocate: settings.log_preallocate, ..TopicConfig::default() },
        frame_limits: FrameLimits { frame_bytes_max: settings.max_request_bytes },
        store_bytes_max_per_core: settings.memory_store_mib_per_core * 1024 * 1024,
        connections_per_core_max: settings.connections_per_core_max,
        frame_timeouts: settings.frame_timeouts,
        request_bytes_queued_max_per_core: settings.queued_request_bytes_per_core,
        requests_in_flight_per_connection_max: settings.requests_in_flight_per_connection_max,
        connections_per_ip_max: settings.connections_per_ip_max,
        ..BrokerConfig::default()
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, shutdown.clone()).context("installing signal handler")?;
    }
    let server = ServerConfig {
        broker,
        kafka_listen: settings.kafka_listen,
        admin_listen: settings.admin_listen,
        cpus: settings.cpus.clone(),
        spin_before_park_us: settings.spin_before_park_us,
        storage: if settings.storage_disk {
            StorageChoice::Disk {
                data_dir: settings.data_dir.join("partitions"),
                metadata_dir: settings.data_dir.join("metadata"),
                durability: settings.durability,
                cache_bytes_per_core: usize::try_from(settings.batch_cache_mib_per_core * 1024 * 1024)
                    .context("batch cache size")?,
                flush_interval: settings.flush_interval,
                zero_ahead_interval: settings.zero_ahead_interval,
                file_io: settings.segment_io,
            }
        } else {
            StorageChoice::Memory { bytes_max_per_core: settings.memory_store_mib_per_core * 1024 * 1024 }
        },
    };
    run(server, shutdown)?;
    tracing::info!("rill stopped");
    Ok(())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args),
        Command::Topic { connection, command } => commands::topic(&connection, command),
        Command::Produce { connection, args } => commands::produce(&connection, args),
        Command::Consume { connection, args } => commands::consume(&connection, args),
        Command::Group { connection, command } => commands::group(&connection, command),
        Command::Bench(args) => rill_bench::cli::run(args),
        Command::Cluster { command } => cluster(command),
    }
}
