//! A run's result: the JSON document it writes and the text it prints.
//!
//! Throughput is counted over measured records only (intended send time after warm-up): their
//! number divided by the time from the window's start to the acknowledgement (or read) of the last
//! of them. MB/s counts record values in decimal megabytes (10^6 bytes), without Kafka framing.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::BenchError;
use crate::latency::{LatencySummary, SpectrumPoint};
use crate::workload::Workload;

/// Version of the JSON layout; bump when a field changes meaning.
pub const RESULT_FORMAT: u32 = 1;

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// [`RESULT_FORMAT`].
    pub format: u32,
    /// Free-text label naming the broker and its durability settings, e.g. `rill fsync`.
    pub label: String,
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Client library and version.
    pub client: String,
    /// Topic written and read.
    pub topic: String,
    /// Start of the run, ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// Logical CPUs of the machine running the harness.
    pub host_cpus: usize,
    /// The load.
    pub workload: Workload,
    /// Produce side.
    pub produce: ProduceResult,
    /// Consume side; absent when the run had no consumers.
    pub end_to_end: Option<EndToEndResult>,
}

/// What producers measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProduceResult {
    /// Records handed to the client, warm-up included.
    pub sent: u64,
    /// Measured records acknowledged.
    pub acked_measured: u64,
    /// Records that failed delivery.
    pub errors: u64,
    /// Records sent but neither acknowledged nor failed when the producers' flush timed out.
    /// They are missing from the latency histogram, so a non-zero count flags an optimistic tail.
    pub unacknowledged: u64,
    /// Seconds from window start to the last measured acknowledgement.
    pub window_s: f64,
    /// Measured records acknowledged per second.
    pub records_per_s: f64,
    /// Measured record-value megabytes (10^6 B) acknowledged per second.
    pub mb_per_s: f64,
    /// Produce-acknowledge latency (open loop: from the intended send time).
    pub latency: LatencySummary,
    /// Its percentile spectrum.
    pub spectrum: Vec<SpectrumPoint>,
    /// Open loop only: how late the generator handed records to the client.
    pub generator_lag: Option<LatencySummary>,
}

/// What consumers measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndToEndResult {
    /// Records of this run read, warm-up included.
    pub consumed: u64,
    /// Measured records read.
    pub consumed_measured: u64,
    /// Measured records acknowledged but not read before the drain timeout.
    pub missing_measured: u64,
    /// Measured records read per second.
    pub records_per_s: f64,
    /// Measured record-value megabytes read per second.
    pub mb_per_s: f64,
    /// End-to-end latency: read time minus intended send time.
    pub latency: LatencySummary,
    /// Its percentile spectrum.
    pub spectrum: Vec<SpectrumPoint>,
}

/// Records and megabytes per second of `records` of `record_bytes` over `window_s`.
pub fn rates(records: u64, record_bytes: usize, window_s: f64) -> (f64, f64) {
    if window_s <= 0.0 || records == 0 {
        return (0.0, 0.0);
    }
    let per_s = records as f64 / window_s;
    (per_s, per_s * record_bytes as f64 / 1e6)
}

impl RunResult {
    /// Writes the result as pretty JSON.
    pub fn write_json(&self, path: &Path) -> Result<(), BenchError> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n")
            .map_err(|source| BenchError::Io { operation: "writing", path: path.into(), source })
    }

    /// Reads a result written by [`RunResult::write_json`].
    pub fn read_json(path: &Path) -> Result<Self, BenchError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| BenchError::Io { operation: "reading", path: path.into(), source })?;
        Ok(serde_json::from_str(&text)?)
    }

    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let p = &self.produce;
        let _ = writeln!(out, "{} @ {} ({}), topic {}", self.label, self.brokers, self.client, self.topic);
        let _ = writeln!(out, "workload: {}", self.workload.describe());
        let _ = writeln!(
            out,
            "produce     {:>12.0} rec/s {:>9.2} MB/s   acked {} in {:.2} s, sent {}, errors {}, unacknowledged {}",
            p.records_per_s, p.mb_per_s, p.acked_measured, p.window_s, p.sent, p.errors, p.unacknowledged
        );
        let _ = writeln!(out, "{}", latency_header());
        let _ = writeln!(out, "{}", latency_row("produce ack", &p.latency));
        if let Some(e) = &self.end_to_end {
            let _ = writeln!(out, "{}", latency_row("end-to-end", &e.latency));
        }
        if let Some(lag) = &p.generator_lag {
            let _ = writeln!(out, "{}", latency_row("generator lag", lag));
        }
        if let Some(e) = &self.end_to_end {
            let _ = writeln!(
                out,
                "consume     {:>12.0} rec/s {:>9.2} MB/s   read {} measured ({} in all), missing {}",
                e.records_per_s, e.mb_per_s, e.consumed_measured, e.consumed, e.missing_measured
            );
        }
        out
    }
}

/// Column titles of [`latency_row`].
pub fn latency_header() -> String {
    format!(
        "{:<14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}   (µs)",
        "latency", "p50", "p90", "p99", "p99.9", "p99.99", "max"
    )
}

/// One line of percentiles in microseconds.
pub fn latency_row(name: &str, s: &LatencySummary) -> String {
    format!(
        "{:<14} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
        name, s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.p9999_us, s.max_us
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::latency::LatencyHistogram;

    pub(crate) fn sample_result() -> RunResult {
        let mut h = LatencyHistogram::new();
        for ns in [100_000u64, 200_000, 300_000, 5_000_000] {
            h.record_ns(ns);
        }
        let (records_per_s, mb_per_s) = rates(4, 100, 2.0);
        RunResult {
            format: RESULT_FORMAT,
            label: "rill fsync".into(),
            brokers: "127.0.0.1:9092".into(),
            client: "librdkafka 2.12.1".into(),
            topic: "t".into(),
            started_unix_ms: 1,
            host_cpus: 2,
            workload: crate::workload::tests::sample(),
            produce: ProduceResult {
                sent: 5,
                acked_measured: 4,
                errors: 0,
                unacknowledged: 0,
                window_s: 2.0,
                records_per_s,
                mb_per_s,
                latency: h.summary(),
                spectrum: h.spectrum(),
                generator_lag: Some(h.summary()),
            },
            end_to_end: Some(EndToEndResult {
                consumed: 5,
                consumed_measured: 4,
                missing_measured: 0,
                records_per_s,
                mb_per_s,
                latency: h.summary(),
                spectrum: h.spectrum(),
            }),
        }
    }

    #[test]
    fn rates_count_decimal_megabytes_and_refuse_empty_windows() {
        assert_eq!(rates(50_000, 100, 1.0), (50_000.0, 5.0));
        assert_eq!(rates(10, 100, 0.0), (0.0, 0.0));
        assert_eq!(rates(0, 100, 1.0), (0.0, 0.0));
    }

    #[test]
    fn json_has_the_documented_shape_and_round_trips() {
        let result = sample_result();
        let value = serde_json::to_value(&result).unwrap();
        // The keys scripts (peers.sh, jq) read: renaming one is a format change.
        for pointer in [
            "/format",
            "/label",
            "/workload/mode/kind",
            "/workload/mode/rate",
            "/workload/length/kind",
            "/workload/acks",
            "/produce/records_per_s",
            "/produce/unacknowledged",
            "/produce/mb_per_s",
            "/produce/latency/p50_us",
            "/produce/latency/p99_us",
            "/produce/latency/p999_us",
            "/produce/latency/p9999_us",
            "/produce/latency/max_us",
            "/produce/spectrum/0/quantile",
            "/produce/generator_lag/p99_us",
            "/end_to_end/latency/p999_us",
            "/end_to_end/missing_measured",
        ] {
            assert!(value.pointer(pointer).is_some(), "missing {pointer} in {value:#}");
        }
        assert_eq!(value.pointer("/workload/mode/kind").unwrap(), "open_loop");
        assert_eq!(value.pointer("/workload/acks").unwrap(), "all");
        assert_eq!(value.pointer("/produce/records_per_s").unwrap().as_f64(), Some(2.0));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        result.write_json(&path).unwrap();
        assert_eq!(RunResult::read_json(&path).unwrap(), result);
    }

    #[test]
    fn text_report_shows_every_percentile_row() {
        let result = sample_result();
        let text = result.to_text();
        for needle in ["p99.99", "produce ack", "end-to-end", "generator lag", "rec/s", "MB/s"] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
        // The 5 ms sample, in µs (HdrHistogram reports its bucket's upper bound, within 0.1 %).
        let max = result.produce.latency.max_us;
        assert!((max - 5_000.0).abs() < 5.0);
        assert!(text.contains(&format!("{max:.1}")), "max {max} missing from\n{text}");
    }
}
