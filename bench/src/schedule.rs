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
    tick_ns: u64,
}

impl OpenLoopSchedule {
    /// The schedule of `producer` (0-based) among `producers`, sharing `rate_total` records/s,
    /// starting at `start_ns` on the run's clock.
    pub fn new(start_ns: u64, rate_total: u64, producers: u64, producer: u64) -> Self {
        assert!(rate_total > 0, "open loop needs a positive rate");
        assert!(producers > 0);
        assert!(producer < producers);
        OpenLoopSchedule { start_ns, rate_total, producers, producer, tick_ns: 0 }
    }

    /// Wakes the generator at most once per `tick_ns` (0: once per record). Records intended within
    /// a tick are sent together at its end: fewer wake-ups for the generator and the client's
    /// threads, and each record's latency still counts from its own intended time, so the wait
    /// for the tick is charged to it.
    pub fn with_tick_ns(self, tick_ns: u64) -> Self {
        OpenLoopSchedule { tick_ns, ..self }
    }

    /// When the generator should hand over a record intended at `intended_ns`: that time, or the
    /// end of its tick.
    pub fn send_at_ns(&self, intended_ns: u64) -> u64 {
        if self.tick_ns == 0 {
            return intended_ns;
        }
        intended_ns.div_ceil(self.tick_ns).saturating_mul(self.tick_ns)
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
    fn a_tick_sends_the_records_intended_within_it_at_its_end() {
        // 100,000 records/s: one every 10 µs; a 50 µs tick sends five at a time.
        let schedule = OpenLoopSchedule::new(0, 100_000, 1, 0).with_tick_ns(50_000);
        let sends: Vec<u64> = (0..11).map(|i| schedule.send_at_ns(schedule.intended_ns(i))).collect();
        let tick = 50_000;
        assert_eq!(sends, [0, tick, tick, tick, tick, tick, 2 * tick, 2 * tick, 2 * tick, 2 * tick, 2 * tick]);
        for i in 0..1000 {
            let intended = schedule.intended_ns(i);
            assert!(schedule.send_at_ns(intended) >= intended, "never early");
            assert!(schedule.send_at_ns(intended) < intended + tick, "at most one tick late");
        }
        let untimed = OpenLoopSchedule::new(0, 100_000, 1, 0);
        assert_eq!(untimed.send_at_ns(12_345), 12_345, "no tick: on time");
    }

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
