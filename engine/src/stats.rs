//! Latency counters of storage calls (fdatasync, fallocate): a count, a sum and fixed buckets,
//! cheap to record on the hot path and to sum over partitions for Prometheus.

use std::time::Duration;

/// Upper bounds of the latency buckets, in microseconds (one overflow bucket follows).
pub const IO_LATENCY_BUCKETS_US: [u64; 13] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 1_000_000,
];

/// Latencies of one kind of storage call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoLatency {
    /// Calls recorded.
    pub count: u64,
    /// Sum of their latencies, in nanoseconds.
    pub nanos_sum: u64,
    /// The slowest, in nanoseconds.
    pub nanos_max: u64,
    /// Calls per bucket of [`IO_LATENCY_BUCKETS_US`] (not cumulative), then the overflow bucket.
    pub buckets: [u64; IO_LATENCY_BUCKETS_US.len() + 1],
}

impl IoLatency {
    /// Counts one call that took `latency`.
    pub fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.count += 1;
        self.nanos_sum = self.nanos_sum.saturating_add(nanos);
        self.nanos_max = self.nanos_max.max(nanos);
        let micros = nanos / 1_000;
        let bucket = IO_LATENCY_BUCKETS_US
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(IO_LATENCY_BUCKETS_US.len());
        self.buckets[bucket] += 1;
    }

    /// Adds `other`'s calls to these.
    pub fn merge(&mut self, other: &IoLatency) {
        self.count += other.count;
        self.nanos_sum = self.nanos_sum.saturating_add(other.nanos_sum);
        self.nanos_max = self.nanos_max.max(other.nanos_max);
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_into_buckets_and_merges() {
        let mut a = IoLatency::default();
        a.record(Duration::from_micros(30));
        a.record(Duration::from_micros(30_000));
        a.record(Duration::from_secs(3));
        assert_eq!(a.count, 3);
        assert_eq!(a.buckets[1], 1, "30 µs is at most 50 µs");
        assert_eq!(a.buckets[10], 1, "30 ms is at most 50 ms");
        assert_eq!(a.buckets[IO_LATENCY_BUCKETS_US.len()], 1, "3 s overflows");
        let mut b = IoLatency::default();
        b.record(Duration::from_micros(10));
        b.merge(&a);
        assert_eq!(b.count, 4);
        assert_eq!(b.buckets[0], 1);
        assert_eq!(b.nanos_max, 3_000_000_000);
    }
}
