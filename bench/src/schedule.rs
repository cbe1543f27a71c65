//! Open-loop send schedules: when each record *should* be sent.
//!
//! `P` producers share one global rate `R`. Global send slot `g` is intended at `g / R` seconds
//! after the schedule's start, and producer `k` owns slots `k, k + P, k + 2P, ...`, so the
//! producers interleave evenly instead of bursting together. Times are computed from the slot
//! index (never by adding an interval repeatedly), so rounding does not accumulate: after a
//! million sends the schedule is still exact to the nanosecond.

/// Nanoseconds per second.
pub const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// The intended send times of one producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenLoopSchedule {
    start_ns: u64,
    rate_total: u64,
    producers: u64,
    producer: u64,
}

impl OpenLoopSchedule {
    /// The schedule of `producer` (0-based) among `producers`, sharing `rate_total` records/s,
    /// starting at `start_ns` on the run's clock.
    pub fn new(start_ns: u64, rate_total: u64, producers: u64, producer: u64) -> Self {
        assert!(rate_total > 0, "open loop needs a positive rate");
        assert!(producers > 0);
        assert!(producer < producers);
        OpenLoopSchedule { start_ns, rate_total, producers, producer }
    }

    /// When this producer's `index`-th send is intended, ns on the run's clock.
    pub fn intended_ns(&self, index: u64) -> u64 {
        let slot = u128::from(index) * u128::from(self.producers) + u128::from(self.producer);
        let offset = slot * u128::from(NANOS_PER_SECOND) / u128::from(self.rate_total);
        self.start_ns.saturating_add(u64::try_from(offset).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_producer_sends_at_exact_intervals_without_drift() {
        let schedule = OpenLoopSchedule::new(1_000, 3, 1, 0);
        // 1/3 s does not divide evenly in ns; slot times must not drift.
        assert_eq!(schedule.intended_ns(0), 1_000);
        assert_eq!(schedule.intended_ns(1), 1_000 + 333_333_333);
        assert_eq!(schedule.intended_ns(3), 1_000 + NANOS_PER_SECOND);
        assert_eq!(schedule.intended_ns(3_000_000), 1_000 + 1_000_000 * NANOS_PER_SECOND);
    }

    #[test]
    fn producers_interleave_and_together_hold_the_total_rate() {
        let rate = 1_000;
        let schedules: Vec<_> = (0..4).map(|k| OpenLoopSchedule::new(0, rate, 4, k)).collect();
        let mut times: Vec<u64> =
            schedules.iter().flat_map(|s| (0..250).map(|i| s.intended_ns(i))).collect();
        times.sort_unstable();
        assert_eq!(times.len(), 1000);
        // 1000 sends at 1000/s: one every millisecond, none doubled up.
        for (slot, time) in times.iter().enumerate() {
            assert_eq!(*time, slot as u64 * 1_000_000);
        }
        assert_eq!(schedules[1].intended_ns(0), 1_000_000);
        assert_eq!(schedules[1].intended_ns(1), 5_000_000);
    }
}
