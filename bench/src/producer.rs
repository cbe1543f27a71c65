//! The producer loop and its acknowledgement accounting, independent of any client.
//!
//! [`drive`] decides *when* each record is sent and *from when* its latency counts; a
//! [`RecordSink`] hands records to a real client (see [`crate::kafka`]) and an [`AckStats`] is told
//! about each acknowledgement. The clock is a [`Clock`] so that tests can run the loop against a
//! simulated broker that stalls, and check that the stall is charged to every record scheduled
//! during it (coordinated-omission correction), not only to the one record that was in flight.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::error::BenchError;
use crate::latency::LatencyHistogram;
use crate::schedule::OpenLoopSchedule;

/// How long a closed-loop producer sleeps at most before re-checking the in-flight count (a
/// missed wake-up then costs at most this).
const IN_FLIGHT_WAIT_SLICE: Duration = Duration::from_millis(1);

/// The run's monotonic clock: nanoseconds since an anchor.
pub trait Clock {
    /// Now, ns since the anchor.
    fn now_ns(&self) -> u64;
    /// Returns at or after `deadline_ns` (immediately if it has passed).
    fn sleep_until_ns(&self, deadline_ns: u64);
}

/// The real clock, anchored at the start of a run and shared by all its threads.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    anchor: Instant,
}

impl MonotonicClock {
    /// A clock whose zero is now.
    pub fn start() -> Self {
        MonotonicClock { anchor: Instant::now() }
    }
}

/// Below this much remaining wait, spin instead of sleeping. Small on purpose: at 50,000 records/s
/// a record is due every 20 µs, and a generator that spins through every gap takes a whole CPU
/// from the client's own threads and the broker on a small machine (it once put milliseconds
/// into every percentile). The generator thread sleeps with a 1 ns timer slack instead (see
/// [`precise_sleeps`]), so a sleep overshoots by the wake-up latency only, and that lateness is
/// measured (generator lag) and charged to the record, from its intended time.
const SPIN_BELOW_NS: u64 = 5_000;

/// Ask the kernel to wake this thread's sleeps on time (Linux's default timer slack for normal
/// threads lets a sleep overshoot by 50 µs so that wake-ups can be batched).
pub fn precise_sleeps() {
    if let Err(error) = nix::sys::prctl::set_timerslack(1) {
        tracing::debug!(%error, "could not lower the timer slack; sleeps may overshoot by ~50 µs");
    }
}

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.anchor.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn sleep_until_ns(&self, deadline_ns: u64) {
        loop {
            let now = self.now_ns();
            if now >= deadline_ns {
                return;
            }
            let remaining = deadline_ns - now;
            if remaining > SPIN_BELOW_NS {
                std::thread::sleep(Duration::from_nanos(remaining - SPIN_BELOW_NS));
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// Where the producer loop puts records: a client.
pub trait RecordSink {
    /// Hands over the `index`-th record with its intended send time (carried in the payload and
    /// returned with the acknowledgement). May block while the client's queue is full: in an open
    /// loop that time is charged to the record, as it would be to a real application.
    fn send(&mut self, index: u64, intended_ns: u64) -> Result<(), BenchError>;

    /// Writes what [`send`](Self::send) buffered. The producer loop calls it whenever it is
    /// about to wait (for the next record's send time, or for room under the in-flight limit)
    /// and when it stops, so the records handed over in one wake-up of the generator leave in
    /// one write. Clients that batch on their own (librdkafka) buffer nothing here.
    fn write_buffered(&mut self) -> Result<(), BenchError> {
        Ok(())
    }

    /// Waits until every record handed over has been acknowledged or has failed, at most
    /// `timeout`.
    fn flush(&mut self, timeout: Duration) -> Result<(), BenchError> {
        let _ = timeout;
        Ok(())
    }
}

/// Outstanding records of one closed-loop producer: incremented on send, decremented on ack.
///
/// A producer at its limit parks in [`InFlight::wait_below`]; only the acknowledgement that takes
/// the count below that limit wakes it. Acknowledgements arrive in bursts (a produce response
/// acknowledges every record of its batch), and std's `Condvar::notify_one` is a futex system call
/// even with nobody parked, so waking on every acknowledgement while the producer was still
/// marked waiting cost the client ~450,000 system calls per second at 1.2 million records/s
/// (docs/BENCHMARKS.md, session 12).
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicU64,
    /// The limit the parked producer waits to fall below; 0 when it is not waiting.
    wake_below: AtomicU64,
    /// Times an acknowledgement woke the producer.
    wakeups: AtomicU64,
    lock: Mutex<()>,
    wake: Condvar,
}

impl InFlight {
    /// One more record outstanding.
    pub fn add(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    /// One record acknowledged (or failed). Wakes the producer only when this takes the count
    /// below the limit it waits on, to keep the ack path free of a futex call per record.
    pub fn remove(&self) {
        // SeqCst with `wait_below`'s store and load: either this sees the limit, or the waiter
        // sees the lower count and does not park.
        let previous = self.count.fetch_sub(1, Ordering::SeqCst);
        assert!(previous > 0, "acknowledged more records than were sent");
        if previous == self.wake_below.load(Ordering::SeqCst) {
            let _guard = self.lock.lock().expect("in-flight lock poisoned");
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    /// Times an acknowledgement woke the producer so far.
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    /// Records outstanding now.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until no record is outstanding, at most `timeout` (polling: used once, at the end
    /// of a run).
    pub fn wait_empty(&self, timeout: Duration) {
        let started = Instant::now();
        while self.count() > 0 && started.elapsed() < timeout {
            std::thread::sleep(IN_FLIGHT_WAIT_SLICE);
        }
    }

    /// Blocks until fewer than `limit` records are outstanding or `cancel` is set. One producer
    /// waits on an `InFlight` at a time.
    pub fn wait_below(&self, limit: u64, cancel: &AtomicBool) {
        while self.count() >= limit && !cancel.load(Ordering::Relaxed) {
            let guard = self.lock.lock().expect("in-flight lock poisoned");
            self.wake_below.store(limit, Ordering::SeqCst);
            if self.count.load(Ordering::SeqCst) >= limit {
                // Bounded wait: a cancel is seen within one slice.
                drop(self.wake.wait_timeout(guard, IN_FLIGHT_WAIT_SLICE));
            } else {
                drop(guard);
            }
            self.wake_below.store(0, Ordering::SeqCst);
        }
    }
}

/// How a producer paces its sends.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// At the schedule's intended times; latency from those times.
    Open(OpenLoopSchedule),
    /// As soon as fewer than `in_flight_max` records are outstanding; latency from the send.
    Closed {
        /// Outstanding records allowed.
        in_flight_max: u64,
    },
}

/// Which sends are measured and when the loop stops, on the run's clock.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Sends intended before this are warm-up.
    pub start_ns: u64,
    /// Duration mode: stop before the first send intended at or after this.
    pub end_ns: Option<u64>,
    /// Record-count mode: stop after this many measured sends of this producer.
    pub records_max: Option<u64>,
    /// Hard stop whatever the mode, so every run is bounded in time.
    pub deadline_ns: u64,
}

impl Window {
    /// Whether a send intended at `intended_ns` is measured (not warm-up).
    pub fn measures(&self, intended_ns: u64) -> bool {
        intended_ns >= self.start_ns && self.end_ns.is_none_or(|end| intended_ns < end)
    }
}

/// What one producer loop did.
#[derive(Debug, Clone, Default)]
pub struct DriveOutcome {
    /// Records handed to the sink, warm-up included.
    pub sent: u64,
    /// Measured records handed to the sink.
    pub sent_measured: u64,
    /// How late the generator sent each measured record relative to its intended time (open loop
    /// only): if this is large, the load generator, not the broker, was the bottleneck.
    pub lag: LatencyHistogram,
}

/// Runs one producer until its window closes, the deadline passes or `cancel` is set.
pub fn drive(
    pace: Pace,
    window: &Window,
    clock: &impl Clock,
    sink: &mut impl RecordSink,
    in_flight: &InFlight,
    cancel: &AtomicBool,
) -> Result<DriveOutcome, BenchError> {
    let mut outcome = DriveOutcome::default();
    for index in 0u64.. {
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        // One clock read per record on the closed loop's path: the client's CPU is what a
        // closed loop runs out of, and a read costs ~25 ns here.
        let intended_ns = match pace {
            Pace::Open(schedule) => {
                if clock.now_ns() >= window.deadline_ns {
                    break;
                }
                schedule.intended_ns(index)
            }
            Pace::Closed { in_flight_max } => {
                if in_flight.count() >= in_flight_max {
                    sink.write_buffered()?;
                }
                in_flight.wait_below(in_flight_max, cancel);
                let now_ns = clock.now_ns();
                if now_ns >= window.deadline_ns {
                    break;
                }
                now_ns
            }
        };
        if window.end_ns.is_some_and(|end| intended_ns >= end)
            || window.records_max.is_some_and(|max| outcome.sent_measured >= max)
        {
            break;
        }
        let measured = intended_ns >= window.start_ns;
        if let Pace::Open(schedule) = pace {
            let send_at_ns = schedule.send_at_ns(intended_ns);
            if send_at_ns > clock.now_ns() {
                sink.write_buffered()?;
            }
            clock.sleep_until_ns(send_at_ns);
            if measured {
                outcome.lag.record_ns(clock.now_ns().saturating_sub(intended_ns));
            }
        }
        in_flight.add();
        sink.send(index, intended_ns)?;
        outcome.sent += 1;
        outcome.sent_measured += u64::from(measured);
    }
    sink.write_buffered()?;
    Ok(outcome)
}

/// Acknowledgement accounting of one producer, fed from the client's delivery callback.
#[derive(Debug)]
pub struct AckStats {
    window: Window,
    record_bytes: u64,
    inner: Mutex<AckCounts>,
    /// Acknowledged records, warm-up included, for the progress bar.
    pub acked_total: AtomicU64,
}

/// What [`AckStats`] accumulated.
#[derive(Debug, Clone, Default)]
pub struct AckCounts {
    /// Produce-acknowledge latency of measured records, from their intended send time.
    pub latency: LatencyHistogram,
    /// Measured records acknowledged.
    pub acked_measured: u64,
    /// Records (any) that failed delivery.
    pub errors: u64,
    /// Acknowledgement time of the last measured record, ns on the run's clock.
    pub last_measured_ack_ns: u64,
}

impl AckStats {
    /// Empty statistics for `window`.
    pub fn new(window: Window, record_bytes: u64) -> Self {
        AckStats { window, record_bytes, inner: Mutex::default(), acked_total: AtomicU64::new(0) }
    }

    /// Bytes per record.
    pub fn record_bytes(&self) -> u64 {
        self.record_bytes
    }

    /// Called once per record when the client reports its delivery.
    pub fn on_ack(&self, intended_ns: u64, ack_ns: u64, delivered: bool) {
        let mut counts = self.inner.lock().expect("ack stats lock poisoned");
        if !delivered {
            counts.errors += 1;
            return;
        }
        self.acked_total.fetch_add(1, Ordering::Relaxed);
        if self.window.measures(intended_ns) {
            counts.latency.record_ns(ack_ns.saturating_sub(intended_ns));
            counts.acked_measured += 1;
            counts.last_measured_ack_ns = counts.last_measured_ack_ns.max(ack_ns);
        }
    }

    /// A copy of the counts so far.
    pub fn snapshot(&self) -> AckCounts {
        self.inner.lock().expect("ack stats lock poisoned").clone()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use super::*;

    /// A simulated clock: time moves only when someone sleeps or the simulated broker blocks.
    #[derive(Default)]
    struct SimClock {
        now: Cell<u64>,
    }

    impl Clock for SimClock {
        fn now_ns(&self) -> u64 {
            self.now.get()
        }
        fn sleep_until_ns(&self, deadline_ns: u64) {
            self.now.set(self.now.get().max(deadline_ns));
        }
    }

    /// A synchronous client against a broker that serves one request at a time in `service_ns`,
    /// except during `stall` (start, end) when it serves nothing. Each send blocks until acked,
    /// which is the worst case for coordinated omission.
    struct StallingBroker<'a> {
        clock: &'a SimClock,
        stats: &'a AckStats,
        in_flight: &'a InFlight,
        service_ns: u64,
        stall: (u64, u64),
        acks: RefCell<Vec<u64>>,
    }

    impl RecordSink for StallingBroker<'_> {
        fn send(&mut self, _index: u64, intended_ns: u64) -> Result<(), BenchError> {
            let mut start = self.clock.now_ns();
            if start >= self.stall.0 && start < self.stall.1 {
                start = self.stall.1;
            }
            let done = start + self.service_ns;
            self.clock.sleep_until_ns(done);
            self.in_flight.remove();
            self.stats.on_ack(intended_ns, done, true);
            self.acks.borrow_mut().push(done);
            Ok(())
        }
    }

    const MS: u64 = 1_000_000;

    /// 1000 records/s for 3 s, the broker stalls for 1 s at t = 1 s, serves in 100 µs otherwise.
    fn run_through_stall(pace: Pace) -> (AckCounts, DriveOutcome) {
        let clock = SimClock::default();
        let window =
            Window { start_ns: 0, end_ns: Some(3_000 * MS), records_max: None, deadline_ns: 10_000 * MS };
        let stats = AckStats::new(window, 100);
        let in_flight = InFlight::default();
        let mut broker = StallingBroker {
            clock: &clock,
            stats: &stats,
            in_flight: &in_flight,
            service_ns: MS / 10,
            stall: (1_000 * MS, 2_000 * MS),
            acks: RefCell::default(),
        };
        let cancel = AtomicBool::new(false);
        let outcome = drive(pace, &window, &clock, &mut broker, &in_flight, &cancel).unwrap();
        (stats.snapshot(), outcome)
    }

    #[test]
    fn a_burst_of_acknowledgements_wakes_the_waiting_producer_once() {
        let in_flight = std::sync::Arc::new(InFlight::default());
        for _ in 0..100 {
            in_flight.add();
        }
        let waiter = {
            let in_flight = in_flight.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                in_flight.wait_below(100, &AtomicBool::new(false));
                started.elapsed()
            })
        };
        // Let the producer park, then acknowledge one produce response's worth of records.
        while in_flight.wake_below.load(Ordering::SeqCst) != 100 {
            std::thread::yield_now();
        }
        for _ in 0..50 {
            in_flight.remove();
        }
        let waited = waiter.join().unwrap();
        assert_eq!(in_flight.count(), 50);
        assert_eq!(in_flight.wakeups(), 1, "one wake-up for the burst, not one per record");
        // Woken, not timed out: a lost wake-up would cost the whole slice, and more.
        assert!(waited < Duration::from_secs(1), "waited {waited:?}");
    }

    #[test]
    fn open_loop_charges_a_stall_to_every_record_scheduled_during_it() {
        let (counts, outcome) = run_through_stall(Pace::Open(OpenLoopSchedule::new(0, 1000, 1, 0)));
        assert_eq!(outcome.sent, 3000, "every scheduled record is sent, late ones included");
        assert_eq!(counts.acked_measured, 3000);
        let latency = &counts.latency;
        let summary = latency.summary();
        // The 1000 records intended during the stall waited between ~1 s and ~0 s for it: about a
        // third of all samples exceed 100 ms, so p90 is far above the 100 µs service time.
        assert!(summary.p90_us > 300_000.0, "p90 {} µs must include the stall", summary.p90_us);
        assert!(summary.max_us >= 999_000.0, "max {} µs", summary.max_us);
        assert!(summary.p50_us < 1_000.0, "p50 {} µs: half the records never saw the stall", summary.p50_us);
        assert!(outcome.lag.summary().max_us >= 999_000.0, "the generator reports its own lag");
    }

    #[test]
    fn closed_loop_measures_from_the_send_and_sees_the_stall_once() {
        let (counts, outcome) = run_through_stall(Pace::Closed { in_flight_max: 1 });
        // Closed loop sends the next record only after an ack: the stall holds one record, and
        // the latency of every other record is the bare service time.
        let summary = counts.latency.summary();
        assert!(outcome.sent > 10_000, "closed loop runs as fast as the broker serves");
        assert!(summary.p999_us < 200.0, "p99.9 {} µs", summary.p999_us);
        assert!(summary.max_us >= 900_000.0, "the one stalled record, max {} µs", summary.max_us);
        assert_eq!(outcome.lag.count(), 0, "closed loop has no schedule to lag behind");
    }

    #[test]
    fn warm_up_and_record_count_bound_what_is_measured() {
        let clock = SimClock::default();
        let window =
            Window { start_ns: 100 * MS, end_ns: None, records_max: Some(50), deadline_ns: 10_000 * MS };
        let stats = AckStats::new(window, 100);
        let in_flight = InFlight::default();
        let mut broker = StallingBroker {
            clock: &clock,
            stats: &stats,
            in_flight: &in_flight,
            service_ns: 10_000,
            stall: (0, 0),
            acks: RefCell::default(),
        };
        let pace = Pace::Open(OpenLoopSchedule::new(0, 1000, 1, 0));
        let outcome = drive(pace, &window, &clock, &mut broker, &in_flight, &AtomicBool::new(false)).unwrap();
        assert_eq!(outcome.sent, 150, "100 warm-up records at 1/ms, then 50 measured");
        assert_eq!(outcome.sent_measured, 50);
        let counts = stats.snapshot();
        assert_eq!(counts.acked_measured, 50);
        assert_eq!(counts.latency.count(), 50);
        assert_eq!(stats.acked_total.load(Ordering::Relaxed), 150);
        assert_eq!(counts.last_measured_ack_ns, 149 * MS + 10_000);
    }

    #[test]
    fn deadline_and_cancel_stop_the_loop() {
        let clock = SimClock::default();
        let window = Window { start_ns: 0, end_ns: None, records_max: Some(u64::MAX), deadline_ns: 5 * MS };
        let stats = AckStats::new(window, 100);
        let in_flight = InFlight::default();
        let mut broker = StallingBroker {
            clock: &clock,
            stats: &stats,
            in_flight: &in_flight,
            service_ns: 1_000,
            stall: (0, 0),
            acks: RefCell::default(),
        };
        let pace = Pace::Open(OpenLoopSchedule::new(0, 1000, 1, 0));
        let outcome = drive(pace, &window, &clock, &mut broker, &in_flight, &AtomicBool::new(false)).unwrap();
        assert_eq!(outcome.sent, 6, "sends at 0..=5 ms; the deadline is checked before each send");
        let cancelled = drive(pace, &window, &clock, &mut broker, &in_flight, &AtomicBool::new(true)).unwrap();
        assert_eq!(cancelled.sent, 0);
    }

    /// Records what the loop hands over and when it asks for buffered records to be written.
    struct WriteRecorder<'a> {
        clock: &'a SimClock,
        buffered: Vec<u64>,
        writes: Vec<(u64, Vec<u64>)>,
    }

    impl RecordSink for WriteRecorder<'_> {
        fn send(&mut self, _index: u64, intended_ns: u64) -> Result<(), BenchError> {
            self.buffered.push(intended_ns);
            Ok(())
        }

        fn write_buffered(&mut self) -> Result<(), BenchError> {
            if !self.buffered.is_empty() {
                self.writes.push((self.clock.now_ns(), std::mem::take(&mut self.buffered)));
            }
            Ok(())
        }
    }

    #[test]
    fn records_of_one_tick_are_written_together_before_the_generator_waits() {
        let clock = SimClock::default();
        let window = Window { start_ns: 0, end_ns: Some(MS), records_max: None, deadline_ns: 10 * MS };
        let mut sink = WriteRecorder { clock: &clock, buffered: Vec::new(), writes: Vec::new() };
        // 10,000 records/s (one per 100 µs), the generator waking once per 250 µs.
        let schedule = OpenLoopSchedule::new(0, 10_000, 1, 0).with_tick_ns(250_000);
        let outcome =
            drive(Pace::Open(schedule), &window, &clock, &mut sink, &InFlight::default(), &AtomicBool::new(false)).unwrap();
        assert_eq!(outcome.sent, 10);
        let us = |ns: u64| ns / 1_000;
        let writes: Vec<(u64, Vec<u64>)> =
            sink.writes.iter().map(|(at, records)| (us(*at), records.iter().map(|r| us(*r)).collect())).collect();
        // Each write holds the records intended up to its tick and leaves at the tick (the last
        // two are handed over at 1 ms and written when the loop ends there).
        assert_eq!(
            writes,
            vec![
                (0, vec![0]),
                (250, vec![100, 200]),
                (500, vec![300, 400, 500]),
                (750, vec![600, 700]),
                (1000, vec![800, 900]),
            ]
        );
        assert!(sink.buffered.is_empty(), "nothing is left unwritten");
    }
}
