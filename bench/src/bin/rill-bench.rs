//! `rill-bench`: the harness as a standalone binary, the same as `rill bench` (handy while the
//! broker binary is being rebuilt, and for measuring peers without building a broker).

use clap::Parser;

/// Load-test a Kafka-protocol broker.
#[derive(Parser)]
#[command(version, about)]
struct Standalone {
    #[command(flatten)]
    bench: rill_bench::cli::BenchArgs,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    rill_bench::cli::run(Standalone::parse().bench)
}
