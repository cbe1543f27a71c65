//! A/B comparison: the same workload against two brokers, alternately (A B A B ...).
//!
//! On a noisy machine two back-to-back runs of the same broker differ by more than many real
//! differences between brokers. Alternating and taking the ratio pair by pair cancels slow drifts
//! (another build starting, the page cache filling) that a run of all-A-then-all-B would charge to
//! one side. Every ratio is A / B: above 1 means A is faster for throughput, and slower for
//! latency. The median over pairs is the headline; the spread across pairs says how much to
//! trust it.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::error::BenchError;
use crate::client::Connection;
use crate::report::{RunResult, RESULT_FORMAT};
use crate::runner::{self, RunOptions};
use crate::workload::Workload;

/// Most A/B pairs one comparison runs.
pub const PAIRS_MAX: usize = 50;

/// Ratios A / B of one pair of runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Ratios {
    /// Produce throughput (records/s).
    pub throughput: f64,
    /// Produce-acknowledge p50.
    pub produce_p50: f64,
    /// Produce-acknowledge p99.
    pub produce_p99: f64,
    /// Produce-acknowledge p99.9.
    pub produce_p999: f64,
    /// End-to-end p50, when both runs had consumers.
    pub end_to_end_p50: Option<f64>,
    /// End-to-end p99.
    pub end_to_end_p99: Option<f64>,
    /// End-to-end p99.9.
    pub end_to_end_p999: Option<f64>,
}

/// The outcome of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareResult {
    /// [`RESULT_FORMAT`].
    pub format: u32,
    /// Label of A.
    pub label_a: String,
    /// Label of B.
    pub label_b: String,
    /// Runs in the order they happened: A, B, A, B, ...
    pub runs: Vec<RunResult>,
    /// A / B per pair.
    pub pairs: Vec<Ratios>,
    /// Median of each ratio over the pairs.
    pub median: Ratios,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

/// A / B for one pair.
pub fn ratios(a: &RunResult, b: &RunResult) -> Ratios {
    let (pa, pb) = (&a.produce, &b.produce);
    let e2e = a.end_to_end.as_ref().zip(b.end_to_end.as_ref());
    Ratios {
        throughput: ratio(pa.records_per_s, pb.records_per_s),
        produce_p50: ratio(pa.latency.p50_us, pb.latency.p50_us),
        produce_p99: ratio(pa.latency.p99_us, pb.latency.p99_us),
        produce_p999: ratio(pa.latency.p999_us, pb.latency.p999_us),
        end_to_end_p50: e2e.map(|(x, y)| ratio(x.latency.p50_us, y.latency.p50_us)),
        end_to_end_p99: e2e.map(|(x, y)| ratio(x.latency.p99_us, y.latency.p99_us)),
        end_to_end_p999: e2e.map(|(x, y)| ratio(x.latency.p999_us, y.latency.p999_us)),
    }
}

/// Median of `values` (NaN-free input; the mean of the middle two for an even count).
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// Median of every ratio over `pairs`.
pub fn median_ratios(pairs: &[Ratios]) -> Ratios {
    let of = |field: fn(&Ratios) -> f64| median(&mut pairs.iter().map(field).collect::<Vec<_>>());
    let of_opt = |field: fn(&Ratios) -> Option<f64>| {
        let mut values: Vec<f64> = pairs.iter().filter_map(field).collect();
        (!values.is_empty()).then(|| median(&mut values))
    };
    Ratios {
        throughput: of(|r| r.throughput),
        produce_p50: of(|r| r.produce_p50),
        produce_p99: of(|r| r.produce_p99),
        produce_p999: of(|r| r.produce_p999),
        end_to_end_p50: of_opt(|r| r.end_to_end_p50),
        end_to_end_p99: of_opt(|r| r.end_to_end_p99),
        end_to_end_p999: of_opt(|r| r.end_to_end_p999),
    }
}

/// Runs `pairs` pairs, A first in each, calling `on_run` after every run.
pub fn run_pairs(
    workload: &Workload,
    a: (&Connection, &RunOptions),
    b: (&Connection, &RunOptions),
    pairs: usize,
    mut on_run: impl FnMut(&RunResult),
) -> Result<CompareResult, BenchError> {
    if pairs == 0 || pairs > PAIRS_MAX {
        return Err(BenchError::InvalidWorkload(format!("pairs {pairs} outside 1..={PAIRS_MAX}")));
    }
    let mut runs = Vec::with_capacity(2 * pairs);
    let mut ratio_list = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let run_a = runner::run(workload, a.0, a.1)?;
        on_run(&run_a);
        let run_b = runner::run(workload, b.0, b.1)?;
        on_run(&run_b);
        ratio_list.push(ratios(&run_a, &run_b));
        runs.push(run_a);
        runs.push(run_b);
    }
    Ok(CompareResult {
        format: RESULT_FORMAT,
        label_a: a.1.label.clone(),
        label_b: b.1.label.clone(),
        median: median_ratios(&ratio_list),
        pairs: ratio_list,
        runs,
    })
}

impl CompareResult {
    /// The ratio table, one row per pair and the median last.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "A = {}, B = {}; every figure is A / B", self.label_a, self.label_b);
        let _ = writeln!(
            out,
            "{:<8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "pair", "rec/s", "ack p50", "ack p99", "ack p99.9", "e2e p50", "e2e p99", "e2e p99.9"
        );
        let row = |out: &mut String, name: &str, r: &Ratios| {
            let opt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
            let _ = writeln!(
                out,
                "{:<8} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10} {:>10} {:>10}",
                name,
                r.throughput,
                r.produce_p50,
                r.produce_p99,
                r.produce_p999,
                opt(r.end_to_end_p50),
                opt(r.end_to_end_p99),
                opt(r.end_to_end_p999)
            );
        };
        for (index, pair) in self.pairs.iter().enumerate() {
            row(&mut out, &format!("{}", index + 1), pair);
        }
        row(&mut out, "median", &self.median);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ClientKind;
    use crate::report::tests::sample_result;

    #[test]
    fn ratios_are_a_over_b_and_medians_resist_one_outlier() {
        let a = sample_result();
        let mut b = sample_result();
        b.produce.records_per_s = a.produce.records_per_s / 2.0;
        b.produce.latency.p99_us = a.produce.latency.p99_us * 4.0;
        let r = ratios(&a, &b);
        assert!((r.throughput - 2.0).abs() < 1e-9);
        assert!((r.produce_p99 - 0.25).abs() < 1e-9);
        assert_eq!(r.produce_p50, 1.0);
        assert_eq!(r.end_to_end_p999, Some(1.0));
        b.end_to_end = None;
        assert_eq!(ratios(&a, &b).end_to_end_p50, None);

        let pairs: Vec<Ratios> = [1.9, 2.1, 2.0, 40.0]
            .into_iter()
            .map(|throughput| Ratios { throughput, ..Ratios::default() })
            .collect();
        assert!((median_ratios(&pairs).throughput - 2.05).abs() < 1e-9);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn zero_pairs_are_refused() {
        let workload = crate::workload::tests::sample();
        let connection =
            Connection { client: ClientKind::Librdkafka, brokers: "127.0.0.1:1".into(), producer_config: vec![], consumer_config: vec![] };
        let options = RunOptions { label: "x".into(), topic: None, progress: false };
        let error = run_pairs(&workload, (&connection, &options), (&connection, &options), 0, |_| {});
        assert!(matches!(error, Err(BenchError::InvalidWorkload(_))));
    }
}
