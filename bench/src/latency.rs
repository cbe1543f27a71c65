//! Latency histograms (HdrHistogram, nanoseconds) and their summaries.
//!
//! Every latency sample lands in a histogram with 3 significant digits (0.1 % resolution) over
//! 1 ns ..= [`LATENCY_NS_MAX`]; a sample above the range is clamped to it rather than dropped, so a
//! stall can only make the tail look worse, never better.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Longest latency the histograms resolve: 10 minutes. Longer samples are clamped to it.
pub const LATENCY_NS_MAX: u64 = 600 * 1_000_000_000;
/// HdrHistogram precision: 3 significant digits.
const SIGNIFICANT_DIGITS: u8 = 3;
/// Points per halving of the remaining tail in the percentile spectrum (JSON and plot).
const SPECTRUM_TICKS_PER_HALF: u32 = 5;

/// One latency histogram, in nanoseconds.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    histogram: Histogram<u64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        let histogram = Histogram::new_with_bounds(1, LATENCY_NS_MAX, SIGNIFICANT_DIGITS)
            .expect("constant histogram bounds are valid");
        LatencyHistogram { histogram }
    }

    /// Records one sample, clamped to 1 ..= [`LATENCY_NS_MAX`].
    pub fn record_ns(&mut self, latency_ns: u64) {
        self.histogram.saturating_record(latency_ns.clamp(1, LATENCY_NS_MAX));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        self.histogram.add(&other.histogram).expect("histograms share their bounds");
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The summary printed and written to JSON.
    pub fn summary(&self) -> LatencySummary {
        let h = &self.histogram;
        let us = |ns: u64| ns as f64 / 1_000.0;
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            min_us: us(h.min()),
            mean_us: h.mean() / 1_000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            p9999_us: us(h.value_at_quantile(0.9999)),
            max_us: us(h.max()),
        }
    }

    /// The percentile spectrum: (quantile, latency µs) points from 0 up to the maximum, denser
    /// towards the tail, for plotting on a `1/(1-q)` axis.
    pub fn spectrum(&self) -> Vec<SpectrumPoint> {
        if self.histogram.is_empty() {
            return Vec::new();
        }
        let mut points: Vec<SpectrumPoint> = self
            .histogram
            .iter_quantiles(SPECTRUM_TICKS_PER_HALF)
            .map(|v| SpectrumPoint {
                quantile: v.quantile_iterated_to(),
                latency_us: v.value_iterated_to() as f64 / 1_000.0,
            })
            .collect();
        points.dedup_by(|a, b| a.quantile == b.quantile);
        points
    }
}

/// A histogram's headline figures, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Smallest sample.
    pub min_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// 99.99th percentile.
    pub p9999_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

/// One point of a percentile spectrum.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpectrumPoint {
    /// Quantile in 0..=1.
    pub quantile: f64,
    /// Latency at that quantile, µs.
    pub latency_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_uniform_samples_hits_known_percentiles() {
        let mut h = LatencyHistogram::new();
        // 1..=10_000 µs, one sample each.
        for us in 1..=10_000u64 {
            h.record_ns(us * 1_000);
        }
        let s = h.summary();
        assert_eq!(s.count, 10_000);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 1.0;
        assert!(close(s.p50_us, 5_000.0), "p50 {}", s.p50_us);
        assert!(close(s.p90_us, 9_000.0), "p90 {}", s.p90_us);
        assert!(close(s.p99_us, 9_900.0), "p99 {}", s.p99_us);
        assert!(close(s.p999_us, 9_990.0), "p99.9 {}", s.p999_us);
        assert!(close(s.p9999_us, 9_999.0), "p99.99 {}", s.p9999_us);
        assert!(close(s.max_us, 10_000.0), "max {}", s.max_us);
        assert!(close(s.mean_us, 5_000.5), "mean {}", s.mean_us);
    }

    #[test]
    fn out_of_range_samples_are_clamped_not_dropped_and_merge_adds() {
        let mut a = LatencyHistogram::new();
        a.record_ns(0);
        a.record_ns(LATENCY_NS_MAX * 2);
        let mut b = LatencyHistogram::new();
        b.record_ns(1_000);
        b.merge(&a);
        assert_eq!(b.count(), 3);
        let s = b.summary();
        assert!(s.max_us >= LATENCY_NS_MAX as f64 / 1_000.0 * 0.999);
        assert!(s.min_us <= 0.001 + f64::EPSILON);
    }

    #[test]
    fn spectrum_is_monotonic_and_reaches_the_maximum() {
        let mut h = LatencyHistogram::new();
        for i in 0..100_000u64 {
            h.record_ns(50_000 + (i % 1000) * 100);
        }
        h.record_ns(20_000_000);
        let points = h.spectrum();
        assert!(points.len() > 10);
        for pair in points.windows(2) {
            assert!(pair[0].quantile < pair[1].quantile);
            assert!(pair[0].latency_us <= pair[1].latency_us);
        }
        let last = points.last().unwrap();
        assert_eq!(last.quantile, 1.0);
        assert!((last.latency_us - 20_000.0).abs() < 20.0);
        assert!(LatencyHistogram::new().spectrum().is_empty());
        assert_eq!(LatencyHistogram::new().summary(), LatencySummary::default());
    }
}
