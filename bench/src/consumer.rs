//! End-to-end accounting of consumed records, independent of any client.
//!
//! A consumer hands every record value it reads to [`ConsumeStats::on_record`] with the time it
//! was read; the record's header says which run wrote it and when it was meant to be sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::latency::LatencyHistogram;
use crate::payload::Header;
use crate::producer::Window;

/// End-to-end statistics of one consumer.
#[derive(Debug)]
pub struct ConsumeStats {
    run_id: u64,
    window: Window,
    inner: Mutex<ConsumeCounts>,
    /// Records of this run read so far, warm-up included (drain check and progress bar).
    pub consumed_run: AtomicU64,
}

/// What [`ConsumeStats`] accumulated.
#[derive(Debug, Clone, Default)]
pub struct ConsumeCounts {
    /// End-to-end latency of measured records: read time minus intended send time.
    pub latency: LatencyHistogram,
    /// Measured records read.
    pub consumed_measured: u64,
    /// Read time of the last measured record, ns on the run's clock.
    pub last_measured_ns: u64,
    /// Records that were not this run's (other runs or other writers on the topic).
    pub foreign: u64,
}

impl ConsumeStats {
    /// Empty statistics for records of `run_id`.
    pub fn new(run_id: u64, window: Window) -> Self {
        ConsumeStats { run_id, window, inner: Mutex::default(), consumed_run: AtomicU64::new(0) }
    }

    /// Accounts one record value read at `read_ns`.
    pub fn on_record(&self, value: &[u8], read_ns: u64) {
        let mut counts = self.inner.lock().expect("consume stats lock poisoned");
        let Some(header) = Header::read(value).filter(|h| h.run_id == self.run_id) else {
            counts.foreign += 1;
            return;
        };
        self.consumed_run.fetch_add(1, Ordering::Relaxed);
        if self.window.measures(header.intended_ns) {
            counts.latency.record_ns(read_ns.saturating_sub(header.intended_ns));
            counts.consumed_measured += 1;
            counts.last_measured_ns = counts.last_measured_ns.max(read_ns);
        }
    }

    /// A copy of the counts so far.
    pub fn snapshot(&self) -> ConsumeCounts {
        self.inner.lock().expect("consume stats lock poisoned").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_runs_measured_records_count() {
        let window = Window { start_ns: 1_000, end_ns: Some(2_000), records_max: None, deadline_ns: 10_000 };
        let stats = ConsumeStats::new(7, window);
        let value = |run_id, intended_ns| {
            let mut v = vec![0u8; 64];
            Header { run_id, intended_ns, producer: 0 }.write(&mut v);
            v
        };
        stats.on_record(&value(7, 500), 900); // warm-up
        stats.on_record(&value(7, 1_500), 1_800); // measured, 300 ns
        stats.on_record(&value(8, 1_500), 1_800); // another run
        stats.on_record(b"foreign", 1_800);
        stats.on_record(&value(7, 2_000), 2_100); // after the window
        let counts = stats.snapshot();
        assert_eq!(stats.consumed_run.load(Ordering::Relaxed), 3);
        assert_eq!(counts.consumed_measured, 1);
        assert_eq!(counts.foreign, 2);
        assert_eq!(counts.last_measured_ns, 1_800);
        assert_eq!(counts.latency.count(), 1);
        assert!((counts.latency.summary().max_us - 0.3).abs() < 0.001);
    }
}
