//! `rill bench`: command-line arguments and the entry point the `rill` binary calls.
//!
//! This is the crate's only `anyhow` edge: it turns arguments into a [`Workload`], runs it (or an
//! A/B comparison), prints the report and writes `<out>/<name>.json` and `<name>.png`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::ArgGroup;

use crate::compare::{self, CompareResult};
use crate::client::{ClientKind, Connection};
use crate::plot::{self, Series};
use crate::report::RunResult;
use crate::runner::{self, RunOptions};
use crate::workload::{Acks, Compression, Length, Mode, Workload};

/// Load-test a Kafka-protocol broker (open or closed loop) and report latency percentiles.
#[derive(Debug, Clone, clap::Args)]
#[command(group(ArgGroup::new("pace").args(["rate", "max"])))]
#[command(group(ArgGroup::new("length").args(["duration", "records"])))]
pub struct BenchArgs {
    /// Broker bootstrap address(es), HOST:PORT[,HOST:PORT].
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Client: librdkafka for Kafka-protocol brokers; redis-streams and nats-jetstream measure
    /// those peers with the same pacing and accounting; kafka-wire is rill-bench's own small
    /// Kafka client of the same shape as those two (single-node brokers).
    #[arg(long, value_enum, default_value = "librdkafka")]
    pub client: ClientKind,
    /// Open loop: records per second over all producers; latency counts from each record's
    /// intended send time (coordinated omission corrected).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Open loop: wake the generator at most once per this many µs and send every record due
    /// (0: once per record). Latency still counts from each record's intended time.
    #[arg(long, default_value_t = 0)]
    pub tick_us: u64,
    /// Closed loop: as fast as acknowledgements allow.
    #[arg(long)]
    pub max: bool,
    /// Closed loop: records outstanding per producer.
    #[arg(long, default_value_t = 10_000)]
    pub in_flight: u64,
    /// Measured duration after warm-up (e.g. 30s, 500ms, 2m) [default: 10s].
    #[arg(long, value_parser = parse_duration_ms)]
    pub duration: Option<u64>,
    /// Measured record count after warm-up (instead of --duration).
    #[arg(long)]
    pub records: Option<u64>,
    /// Warm-up: sent, not measured.
    #[arg(long, value_parser = parse_duration_ms, default_value = "2s")]
    pub warmup: u64,
    /// Bytes per record value (at least 24: the timestamp header).
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// librdkafka batch.size, bytes.
    #[arg(long, default_value_t = 16_384)]
    pub batch_size: usize,
    /// librdkafka linger.ms.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Acknowledgements: 0, 1 or all.
    #[arg(long, value_enum, default_value = "all")]
    pub acks: Acks,
    /// Compression codec (payloads are random: this measures cost, not savings).
    #[arg(long, value_enum, default_value = "none")]
    pub compression: Compression,
    /// Idempotent producers.
    #[arg(long)]
    pub idempotence: bool,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Producer count.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Consumer count (0: produce only, no end-to-end latency).
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// How long consumers may take to catch up after the last send.
    #[arg(long, value_parser = parse_duration_ms, default_value = "10s")]
    pub drain_timeout: u64,
    /// Topic (created if missing) [default: a fresh rill-bench-<run id> per run].
    #[arg(long)]
    pub topic: Option<String>,
    /// Extra librdkafka producer setting KEY=VALUE (repeatable).
    #[arg(short = 'X', long = "producer-config", value_parser = parse_key_value)]
    pub producer_config: Vec<(String, String)>,
    /// Extra librdkafka consumer setting KEY=VALUE (repeatable).
    #[arg(short = 'C', long = "consumer-config", value_parser = parse_key_value)]
    pub consumer_config: Vec<(String, String)>,
    /// Label naming the broker and its durability settings, written beside every figure.
    #[arg(long, default_value = "broker")]
    pub label: String,
    /// Compare with a second broker at this address, alternating A B A B ...
    #[arg(long, value_name = "BROKERS_B")]
    pub compare: Option<String>,
    /// Label of the second broker.
    #[arg(long, default_value = "B")]
    pub compare_label: String,
    /// A/B pairs in compare mode.
    #[arg(long, default_value_t = 3)]
    pub pairs: usize,
    /// Directory for the JSON result and the PNG plot.
    #[arg(long, default_value = "target/bench/runs")]
    pub out: PathBuf,
    /// Base name of the output files [default: label and start time].
    #[arg(long)]
    pub name: Option<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Leave glibc malloc's trim threshold at its default. By default the harness raises it, so
    /// the client keeps the memory it frees instead of faulting it in again per produce request
    /// (crate::alloc); the result's `client` field says which was used.
    #[arg(long)]
    pub malloc_defaults: bool,
    /// Instead of running: draw one plot of the latency of these JSON results (written by earlier
    /// runs) into `<out>/<name>.png`; `--plot-latency` picks produce or end-to-end latency.
    #[arg(long, value_name = "RESULT.json", num_args = 1.., conflicts_with = "pace")]
    pub plot_from: Vec<PathBuf>,
    /// Which latency `--plot-from` draws.
    #[arg(long, value_enum, default_value = "end-to-end")]
    pub plot_latency: PlotLatency,
}

/// Which latency a combined plot shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlotLatency {
    /// Produce-acknowledge latency.
    Produce,
    /// End-to-end latency (falls back to produce latency for runs without consumers).
    EndToEnd,
}

/// Parses `30s`, `500ms`, `2m`, `1h` or bare seconds into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{text:?}: expected a number then ms, s, m or h"))?;
    let per_unit = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    number.checked_mul(per_unit).ok_or_else(|| format!("{text:?} is too long"))
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("{text:?}: expected KEY=VALUE"))?;
    Ok((key.trim().to_string(), value.to_string()))
}

impl BenchArgs {
    /// The workload these arguments describe.
    pub fn workload(&self) -> Workload {
        let mode = match self.rate {
            Some(rate) => Mode::OpenLoop { rate, tick_us: self.tick_us },
            None => Mode::ClosedLoop { in_flight_max: self.in_flight },
        };
        let length = match (self.records, self.duration) {
            (Some(count), _) => Length::Records { count },
            (None, Some(ms)) => Length::Duration { ms },
            (None, None) => Length::Duration { ms: 10_000 },
        };
        Workload {
            mode,
            length,
            warmup_ms: self.warmup,
            record_bytes: self.record_size,
            batch_bytes: self.batch_size,
            linger_ms: self.linger_ms,
            acks: self.acks,
            compression: self.compression,
            idempotence: self.idempotence,
            partitions: self.partitions,
            producers: self.producers,
            consumers: self.consumers,
            drain_timeout_ms: self.drain_timeout,
        }
    }

    fn connection(&self, brokers: &str) -> Connection {
        Connection {
            client: self.client,
            brokers: brokers.to_string(),
            producer_config: self.producer_config.clone(),
            consumer_config: self.consumer_config.clone(),
        }
    }

    fn options(&self, label: &str) -> RunOptions {
        RunOptions { label: label.to_string(), topic: self.topic.clone(), progress: !self.quiet }
    }
}

/// File-name-safe version of a label.
fn slug(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// Runs `rill bench` with parsed arguments.
pub fn run(args: BenchArgs) -> Result<()> {
    if !args.plot_from.is_empty() {
        return plot_results(&args);
    }
    if args.rate.is_none() && !args.max {
        bail!("choose the pace: --rate N (open loop) or --max (closed loop)");
    }
    let workload = args.workload();
    workload.validate()?;
    // Before any client thread starts.
    if args.malloc_defaults {
        crate::alloc::leave_defaults();
    } else {
        crate::alloc::keep_freed_memory(crate::alloc::TRIM_THRESHOLD_BYTES);
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    match &args.compare {
        None => {
            let result = runner::run(&workload, &args.connection(&args.brokers), &args.options(&args.label))?;
            print!("{}", result.to_text());
            let name = args.name.clone().unwrap_or_else(|| format!("{}-{}", slug(&args.label), result.started_unix_ms));
            write_run(&args.out, &name, &result)?;
        }
        Some(brokers_b) => {
            if args.topic.is_some() {
                bail!("--topic cannot be shared by two brokers in compare mode: leave it out");
            }
            let (conn_a, conn_b) = (args.connection(&args.brokers), args.connection(brokers_b));
            let (opt_a, opt_b) = (args.options(&args.label), args.options(&args.compare_label));
            let base = args.name.clone().unwrap_or_else(|| {
                format!("compare-{}-{}", slug(&args.label), slug(&args.compare_label))
            });
            let mut index = 0usize;
            let compared = compare::run_pairs(&workload, (&conn_a, &opt_a), (&conn_b, &opt_b), args.pairs, |run| {
                index += 1;
                println!("--- run {index} ---\n{}", run.to_text());
            })?;
            print!("{}", compared.to_text());
            write_compare(&args.out, &base, &compared)?;
        }
    }
    Ok(())
}

fn write_run(out: &Path, name: &str, result: &RunResult) -> Result<()> {
    let json = out.join(format!("{name}.json"));
    result.write_json(&json)?;
    println!("wrote {}", json.display());
    let png = out.join(format!("{name}.png"));
    let mut series = vec![Series { name: "produce ack", summary: &result.produce.latency, spectrum: &result.produce.spectrum }];
    if let Some(e2e) = &result.end_to_end {
        series.push(Series { name: "end-to-end", summary: &e2e.latency, spectrum: &e2e.spectrum });
    }
    let title = format!("{}: {}", result.label, result.workload.describe());
    // A missing font must not lose the measurement: the JSON is already written.
    match plot::write_percentile_plot(&png, &title, &series) {
        Ok(()) => println!("wrote {}", png.display()),
        Err(error) => tracing::warn!(%error, "no plot"),
    }
    Ok(())
}

fn plot_results(args: &BenchArgs) -> Result<()> {
    let results = args
        .plot_from
        .iter()
        .map(|path| RunResult::read_json(path).with_context(|| format!("reading {}", path.display())))
        .collect::<Result<Vec<_>>>()?;
    let series: Vec<Series<'_>> = results
        .iter()
        .map(|r| {
            let (summary, spectrum) = match (&r.end_to_end, args.plot_latency) {
                (Some(e2e), PlotLatency::EndToEnd) => (&e2e.latency, &e2e.spectrum),
                _ => (&r.produce.latency, &r.produce.spectrum),
            };
            Series { name: &r.label, summary, spectrum }
        })
        .collect();
    let what = match args.plot_latency {
        PlotLatency::Produce => "produce-ack latency",
        PlotLatency::EndToEnd => "end-to-end latency",
    };
    let title = format!("{what}: {}", results[0].workload.describe());
    let png = args.out.join(format!("{}.png", args.name.as_deref().unwrap_or("latency")));
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    plot::write_percentile_plot(&png, &title, &series)?;
    println!("wrote {}", png.display());
    Ok(())
}

fn write_compare(out: &Path, name: &str, compared: &CompareResult) -> Result<()> {
    let json = out.join(format!("{name}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(compared)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    println!("wrote {}", json.display());
    let png = out.join(format!("{name}.png"));
    let names: Vec<String> = compared
        .runs
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{} #{} ack", r.label, i / 2 + 1))
        .collect();
    let series: Vec<Series<'_>> = compared
        .runs
        .iter()
        .zip(&names)
        .map(|(r, name)| Series { name, summary: &r.produce.latency, spectrum: &r.produce.spectrum })
        .collect();
    let title = format!("{} vs {}: produce ack latency", compared.label_a, compared.label_b);
    match plot::write_percentile_plot(&png, &title, &series) {
        Ok(()) => println!("wrote {}", png.display()),
        Err(error) => tracing::warn!(%error, "no plot"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Harness {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("30"), Ok(30_000));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert!(parse_duration_ms("2x").is_err());
        assert!(parse_duration_ms("s").is_err());
    }

    #[test]
    fn arguments_build_the_workload() {
        let args = Harness::try_parse_from([
            "x", "--rate", "50000", "--duration", "5s", "--acks", "1", "--compression", "zstd",
            "--partitions", "4", "--consumers", "2", "-X", "socket.nagle.disable=true",
        ])
        .unwrap()
        .bench;
        let workload = args.workload();
        assert_eq!(workload.mode, Mode::OpenLoop { rate: 50_000, tick_us: 0 });
        assert_eq!(workload.length, Length::Duration { ms: 5_000 });
        assert_eq!(workload.acks, Acks::Leader);
        assert_eq!(workload.compression, Compression::Zstd);
        assert_eq!(args.producer_config, vec![("socket.nagle.disable".into(), "true".into())]);
        workload.validate().unwrap();

        let closed = Harness::try_parse_from(["x", "--max", "--records", "1000"]).unwrap().bench.workload();
        assert_eq!(closed.mode, Mode::ClosedLoop { in_flight_max: 10_000 });
        assert_eq!(closed.length, Length::Records { count: 1000 });

        let neither = Harness::try_parse_from(["x"]).unwrap().bench;
        let error = run(neither).unwrap_err().to_string();
        assert!(error.contains("--rate N (open loop) or --max"), "{error}");
        assert!(Harness::try_parse_from(["x", "--rate", "1", "--max"]).is_err());
        assert!(Harness::try_parse_from(["x", "--rate", "1", "--plot-from", "a.json"]).is_err());
        assert!(Harness::try_parse_from(["x", "--max", "--records", "1", "--duration", "1s"]).is_err());
    }
}
