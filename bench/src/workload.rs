//! What a run does: the workload, independent of where it runs. It is written verbatim into every
//! JSON result, so two results can be compared only when their workloads match.

use serde::{Deserialize, Serialize};

use crate::error::BenchError;
use crate::payload::HEADER_BYTES;

/// Largest record the harness generates (librdkafka's default `message.max.bytes` is 1 MB).
pub const RECORD_BYTES_MAX: usize = 1_000_000;
/// At most this many producer or consumer threads: each is a real OS thread plus librdkafka's own.
pub const CLIENTS_MAX: usize = 64;
/// At most this many partitions in the benchmark topic.
pub const PARTITIONS_MAX: i32 = 4096;
/// Longest measured duration: runs are bounded in time.
pub const DURATION_MS_MAX: u64 = 3_600_000;
/// Highest open-loop rate, records per second over all producers.
pub const RATE_MAX: u64 = 50_000_000;
/// Longest open-loop generator tick, µs (a tick's wait is charged to its records' latency).
pub const TICK_US_MAX: u64 = 10_000;
/// Most records a closed-loop producer keeps outstanding.
pub const IN_FLIGHT_MAX: u64 = 1_000_000;

/// How producers pace their sends.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Mode {
    /// Every send has an intended time; `rate` records per second over all producers.
    OpenLoop {
        /// Records per second, all producers together.
        rate: u64,
        /// The generator wakes at most once per this many µs and sends every record intended
        /// since (0: wakes for each record). Latency still counts from each intended time.
        #[serde(default)]
        tick_us: u64,
    },
    /// As fast as acknowledgements allow, with at most `in_flight_max` records outstanding per
    /// producer.
    ClosedLoop {
        /// Outstanding records per producer.
        in_flight_max: u64,
    },
}

/// When a run stops measuring.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Length {
    /// Measure for this long after warm-up.
    Duration {
        /// Milliseconds.
        ms: u64,
    },
    /// Measure this many records (all producers together) after warm-up.
    Records {
        /// Record count.
        count: u64,
    },
}

/// Produce acknowledgement level (`acks` / `request.required.acks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Acks {
    /// No acknowledgement: the client reports delivery as soon as the request is written.
    #[value(name = "0")]
    None,
    /// The leader acknowledges.
    #[value(name = "1")]
    Leader,
    /// All in-sync replicas acknowledge.
    #[value(name = "all")]
    All,
}

impl Acks {
    /// The value librdkafka expects.
    pub fn as_kafka(self) -> &'static str {
        match self {
            Acks::None => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        }
    }
}

/// Batch compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// No compression.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// The value librdkafka expects.
    pub fn as_kafka(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Everything that defines a run's load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// Open or closed loop.
    pub mode: Mode,
    /// Duration or record count of the measured part.
    pub length: Length,
    /// Warm-up before measuring, milliseconds; its records are sent but not measured.
    pub warmup_ms: u64,
    /// Bytes of each record's value (the payload header included).
    pub record_bytes: usize,
    /// librdkafka `batch.size`, bytes.
    pub batch_bytes: usize,
    /// librdkafka `linger.ms`.
    pub linger_ms: u64,
    /// Acknowledgement level.
    pub acks: Acks,
    /// Compression codec. Payloads are random bytes, so they do not compress: this measures the
    /// codec's cost, not its savings.
    pub compression: Compression,
    /// Idempotent producers (`enable.idempotence`).
    pub idempotence: bool,
    /// Partitions of the topic; producers spread records over them round-robin.
    pub partitions: i32,
    /// Producer threads (one librdkafka producer each).
    pub producers: usize,
    /// Consumer threads (one librdkafka consumer each, partitions assigned round-robin).
    pub consumers: usize,
    /// After producers stop, how long consumers may take to catch up, milliseconds.
    pub drain_timeout_ms: u64,
}

impl Workload {
    /// Checks the settings against each other and the named limits.
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |message: String| Err(BenchError::InvalidWorkload(message));
        if self.record_bytes < HEADER_BYTES || self.record_bytes > RECORD_BYTES_MAX {
            return bad(format!(
                "record size {} outside {HEADER_BYTES}..={RECORD_BYTES_MAX} bytes (each record \
                 carries a {HEADER_BYTES}-byte timestamp header)",
                self.record_bytes
            ));
        }
        if self.producers == 0 || self.producers > CLIENTS_MAX {
            return bad(format!("producers {} outside 1..={CLIENTS_MAX}", self.producers));
        }
        if self.consumers > CLIENTS_MAX {
            return bad(format!("consumers {} above {CLIENTS_MAX}", self.consumers));
        }
        if self.partitions < 1 || self.partitions > PARTITIONS_MAX {
            return bad(format!("partitions {} outside 1..={PARTITIONS_MAX}", self.partitions));
        }
        if self.consumers > usize::try_from(self.partitions).unwrap_or(usize::MAX) {
            return bad(format!(
                "{} consumers but only {} partitions: some consumers would read nothing",
                self.consumers, self.partitions
            ));
        }
        match self.mode {
            Mode::OpenLoop { rate, .. } if rate == 0 || rate > RATE_MAX => {
                return bad(format!("rate {rate} outside 1..={RATE_MAX} records/s"));
            }
            Mode::OpenLoop { tick_us, .. } if tick_us > TICK_US_MAX => {
                return bad(format!("tick {tick_us} µs above {TICK_US_MAX} µs"));
            }
            Mode::ClosedLoop { in_flight_max } if in_flight_max == 0 || in_flight_max > IN_FLIGHT_MAX => {
                return bad(format!("in-flight {in_flight_max} outside 1..={IN_FLIGHT_MAX}"));
            }
            _ => {}
        }
        match self.length {
            Length::Duration { ms } if ms == 0 || ms > DURATION_MS_MAX => {
                return bad(format!("duration {ms} ms outside 1..={DURATION_MS_MAX}"));
            }
            Length::Records { count } if count < self.producers as u64 => {
                return bad(format!("{count} records is fewer than one per producer"));
            }
            _ => {}
        }
        if self.warmup_ms > DURATION_MS_MAX || self.drain_timeout_ms > DURATION_MS_MAX {
            return bad(format!("warm-up and drain timeout must be at most {DURATION_MS_MAX} ms"));
        }
        Ok(())
    }

    /// A one-line description for headers and plot titles.
    pub fn describe(&self) -> String {
        let mode = match self.mode {
            Mode::OpenLoop { rate, tick_us: 0 } => format!("open loop {rate} rec/s"),
            Mode::OpenLoop { rate, tick_us } => format!("open loop {rate} rec/s ({tick_us} µs ticks)"),
            Mode::ClosedLoop { in_flight_max } => format!("closed loop, {in_flight_max} in flight"),
        };
        format!(
            "{mode}, {} B, acks={}, {}p, {}P/{}C, linger {} ms, {}",
            self.record_bytes,
            self.acks.as_kafka(),
            self.partitions,
            self.producers,
            self.consumers,
            self.linger_ms,
            self.compression.as_kafka()
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Workload {
        Workload {
            mode: Mode::OpenLoop { rate: 1000, tick_us: 0 },
            length: Length::Duration { ms: 1000 },
            warmup_ms: 100,
            record_bytes: 100,
            batch_bytes: 16384,
            linger_ms: 5,
            acks: Acks::All,
            compression: Compression::None,
            idempotence: false,
            partitions: 2,
            producers: 1,
            consumers: 2,
            drain_timeout_ms: 1000,
        }
    }

    #[test]
    fn validate_accepts_sample_and_names_each_violation() {
        sample().validate().unwrap();
        type Case = (fn(&mut Workload), &'static str);
        let cases: Vec<Case> = vec![
            (|w| w.record_bytes = HEADER_BYTES - 1, "record size"),
            (|w| w.producers = 0, "producers"),
            (|w| w.consumers = 3, "consumers but only"),
            (|w| w.mode = Mode::OpenLoop { rate: 0, tick_us: 0 }, "rate"),
            (|w| w.mode = Mode::ClosedLoop { in_flight_max: 0 }, "in-flight"),
            (|w| w.length = Length::Duration { ms: 0 }, "duration"),
            (|w| w.partitions = 0, "partitions"),
        ];
        for (mutate, expected) in cases {
            let mut workload = sample();
            mutate(&mut workload);
            let message = workload.validate().unwrap_err().to_string();
            assert!(message.contains(expected), "{message:?} should mention {expected:?}");
        }
    }
}
