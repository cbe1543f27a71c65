//! One benchmark run against one broker: set up, drive, drain, report.
//!
//! Timeline on the run's clock (ns since [`MonotonicClock::start`]):
//!
//! | phase | what happens |
//! |---|---|
//! | `0 .. start` | consumers already assigned at the high watermarks; producers created |
//! | `start .. start + warm-up` | records sent and acknowledged but not measured |
//! | measured window | records whose intended send time falls here are measured |
//! | after the last send | producers flush; consumers drain until they read every acknowledged record or the drain timeout passes |

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::consumer::{ConsumeCounts, ConsumeStats};
use crate::error::BenchError;
use crate::client::{ClientKind, Connection, LoadClient, ProducerHandle, Reader};
use crate::kafka::KafkaClient;
use crate::latency::LatencyHistogram;
use crate::producer::{self, AckCounts, AckStats, Clock, DriveOutcome, InFlight, MonotonicClock, Pace, RecordSink, Window};
use crate::report::{rates, EndToEndResult, ProduceResult, RunResult, RESULT_FORMAT};
use crate::schedule::OpenLoopSchedule;
use crate::workload::{Length, Mode, Workload, DURATION_MS_MAX};

/// Time between creating the clock and the first intended send: producers are created in it.
const START_DELAY_NS: u64 = 100_000_000;
/// A duration-mode producer stops this long after its window's end at the latest, even if its
/// client blocks.
const DEADLINE_SLACK_NS: u64 = 1_000_000_000;
/// How long producers may take to get every outstanding record acknowledged after the last send.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(35);
/// Progress bar and drain-check period.
const TICK: Duration = Duration::from_millis(200);
const NANOS_PER_MS: u64 = 1_000_000;

/// Run settings that are not the workload.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Label naming the broker and its durability settings.
    pub label: String,
    /// Topic to use; a fresh `rill-bench-<run id>` when `None`.
    pub topic: Option<String>,
    /// Draw a progress bar on stderr (hidden anyway when stderr is not a terminal).
    pub progress: bool,
}

/// The window of producer `producer` when the first send is intended at `start_ns`.
pub fn window_for(workload: &Workload, start_ns: u64, producer: usize) -> Window {
    let measure_start = start_ns + workload.warmup_ms * NANOS_PER_MS;
    match workload.length {
        Length::Duration { ms } => {
            let end = measure_start + ms * NANOS_PER_MS;
            Window { start_ns: measure_start, end_ns: Some(end), records_max: None, deadline_ns: end + DEADLINE_SLACK_NS }
        }
        Length::Records { count } => {
            let producers = workload.producers as u64;
            let share = count / producers + u64::from((producer as u64) < count % producers);
            Window {
                start_ns: measure_start,
                end_ns: None,
                records_max: Some(share),
                deadline_ns: measure_start + DURATION_MS_MAX * NANOS_PER_MS,
            }
        }
    }
}

/// Partitions read by consumer `consumer`: round-robin, so together they read all of them.
pub fn partitions_of(workload: &Workload, consumer: usize) -> Vec<i32> {
    (0..workload.partitions).filter(|p| *p as usize % workload.consumers == consumer).collect()
}

/// Runs `workload` against the broker behind `connection`.
pub fn run(workload: &Workload, connection: &Connection, options: &RunOptions) -> Result<RunResult, BenchError> {
    workload.validate()?;
    let brokers = connection.brokers.as_str();
    match connection.client {
        ClientKind::Librdkafka => {
            let client = KafkaClient {
                brokers: brokers.into(),
                producer_config: connection.producer_config.clone(),
                consumer_config: connection.consumer_config.clone(),
            };
            run_with(&client, brokers, workload, options)
        }
        ClientKind::RedisStreams => run_with(&crate::redis::RedisClient::new(brokers), brokers, workload, options),
        ClientKind::NatsJetstream => run_with(&crate::nats::NatsClient::new(brokers), brokers, workload, options),
        ClientKind::KafkaWire => run_with(&crate::kafka_wire::KafkaWireClient::new(brokers), brokers, workload, options),
    }
}

fn run_with<C: LoadClient>(
    client: &C,
    brokers: &str,
    workload: &Workload,
    options: &RunOptions,
) -> Result<RunResult, BenchError> {
    let run_id: u64 = rand::random();
    let topic = options.topic.clone().unwrap_or_else(|| format!("rill-bench-{run_id:016x}"));
    client.prepare(&topic, workload.partitions)?;
    let started_unix_ms =
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or_default();
    let readers = (0..workload.consumers)
        .map(|c| client.reader(&topic, &partitions_of(workload, c)))
        .collect::<Result<Vec<_>, _>>()?;

    let clock = MonotonicClock::start();
    let start_ns = clock.now_ns() + START_DELAY_NS;
    let measure_start = window_for(workload, start_ns, 0).start_ns;
    let mut producers = Vec::with_capacity(workload.producers);
    for index in 0..workload.producers {
        let window = window_for(workload, start_ns, index);
        let stats = Arc::new(AckStats::new(window, workload.record_bytes as u64));
        let in_flight = Arc::new(InFlight::default());
        let producer_index = u32::try_from(index).expect("validated at most CLIENTS_MAX");
        let handle =
            ProducerHandle { run_id, producer_index, clock, stats: stats.clone(), in_flight: in_flight.clone() };
        let sink = client.sink(workload, &topic, handle)?;
        producers.push((sink, window, stats, in_flight));
    }
    let consume_stats: Vec<ConsumeStats> =
        (0..workload.consumers).map(|_| ConsumeStats::new(run_id, window_for(workload, start_ns, 0))).collect();

    let bar = progress_bar(workload, options.progress);
    let cancel = AtomicBool::new(false);
    let stop_consumers = AtomicBool::new(false);
    let producers_running = AtomicUsize::new(workload.producers);
    let ack_stats: Vec<Arc<AckStats>> = producers.iter().map(|p| p.2.clone()).collect();

    let outcomes = std::thread::scope(|scope| -> Result<Vec<DriveOutcome>, BenchError> {
        let consumer_threads: Vec<_> = readers
            .iter()
            .zip(&consume_stats)
            .map(|(reader, stats)| {
                let stop = &stop_consumers;
                scope.spawn(move || reader.run(&clock, stats, stop))
            })
            .collect();
        let producer_threads: Vec<_> = producers
            .into_iter()
            .enumerate()
            .map(|(index, (mut sink, window, _, in_flight))| {
                let (cancel, running) = (&cancel, &producers_running);
                scope.spawn(move || {
                    let pace = pace_of(workload, start_ns, index);
                    producer::precise_sleeps();
                    let outcome = producer::drive(pace, &window, &clock, &mut sink, &in_flight, cancel);
                    if outcome.is_err() {
                        cancel.store(true, Ordering::Relaxed);
                    }
                    let flushed = outcome.and_then(|o| sink.flush(FLUSH_TIMEOUT).map(|()| o));
                    running.fetch_sub(1, Ordering::AcqRel);
                    flushed
                })
            })
            .collect();

        watch(&bar, &clock, workload, start_ns, &ack_stats, &consume_stats, &producers_running);
        stop_consumers.store(true, Ordering::Relaxed);
        for thread in consumer_threads {
            thread.join().map_err(|_| BenchError::ThreadPanicked("consumer"))?;
        }
        let mut outcomes = Vec::with_capacity(producer_threads.len());
        for thread in producer_threads {
            outcomes.push(thread.join().map_err(|_| BenchError::ThreadPanicked("producer"))??);
        }
        Ok(outcomes)
    })?;
    bar.finish_and_clear();

    let acks: Vec<AckCounts> = ack_stats.iter().map(|s| s.snapshot()).collect();
    let reads: Vec<ConsumeCounts> = consume_stats.iter().map(|s| s.snapshot()).collect();
    let consumed_run = consume_stats.iter().map(|s| s.consumed_run.load(Ordering::Relaxed)).sum();
    let acked_total: u64 = ack_stats.iter().map(|s| s.acked_total.load(Ordering::Relaxed)).sum();
    let produce = produce_result(workload, measure_start, &outcomes, &acks, acked_total)?;
    let end_to_end = (workload.consumers > 0)
        .then(|| end_to_end_result(workload, measure_start, produce.acked_measured, consumed_run, &reads));
    Ok(RunResult {
        format: RESULT_FORMAT,
        label: options.label.clone(),
        brokers: brokers.into(),
        client: match crate::alloc::setting() {
            Some(malloc) => format!("{} ({malloc})", client.describe()),
            None => client.describe(),
        },
        topic,
        started_unix_ms,
        host_cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        workload: workload.clone(),
        produce,
        end_to_end,
    })
}

fn pace_of(workload: &Workload, start_ns: u64, producer: usize) -> Pace {
    match workload.mode {
        Mode::OpenLoop { rate, tick_us } => Pace::Open(
            OpenLoopSchedule::new(start_ns, rate, workload.producers as u64, producer as u64)
                .with_tick_ns(tick_us.saturating_mul(1_000)),
        ),
        Mode::ClosedLoop { in_flight_max } => Pace::Closed { in_flight_max },
    }
}

fn progress_bar(workload: &Workload, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let (length, unit) = match workload.length {
        Length::Duration { ms } => (workload.warmup_ms + ms, "ms"),
        Length::Records { count } => (count, "records"),
    };
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    let template = format!("{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}}");
    bar.set_style(ProgressStyle::with_template(&template).expect("constant template").progress_chars("=> "));
    bar
}

/// Updates the progress bar until producers finish, then waits for consumers to read every
/// acknowledged record (or the drain timeout).
fn watch(
    bar: &ProgressBar,
    clock: &MonotonicClock,
    workload: &Workload,
    start_ns: u64,
    acks: &[Arc<AckStats>],
    reads: &[ConsumeStats],
    producers_running: &AtomicUsize,
) {
    let acked = || acks.iter().map(|s| s.acked_total.load(Ordering::Relaxed)).sum::<u64>();
    let read = || reads.iter().map(|s| s.consumed_run.load(Ordering::Relaxed)).sum::<u64>();
    let measure_start = start_ns + workload.warmup_ms * NANOS_PER_MS;
    let (mut last_acked, mut last_tick) = (0u64, Instant::now());
    while producers_running.load(Ordering::Acquire) > 0 {
        std::thread::sleep(TICK);
        let now = clock.now_ns();
        let position = match workload.length {
            Length::Duration { .. } => now.saturating_sub(start_ns) / NANOS_PER_MS,
            Length::Records { .. } => acks.iter().map(|s| s.snapshot().acked_measured).sum(),
        };
        let acked_now = acked();
        let rate = (acked_now - last_acked) as f64 / last_tick.elapsed().as_secs_f64();
        (last_acked, last_tick) = (acked_now, Instant::now());
        let phase = if now < measure_start { "warm-up" } else { "measuring" };
        bar.set_position(position);
        bar.set_message(format!("{phase}: acked {acked_now} ({rate:.0}/s), read {}", read()));
    }
    if reads.is_empty() {
        return;
    }
    let drain_started = Instant::now();
    let drain_timeout = Duration::from_millis(workload.drain_timeout_ms);
    while read() < acked() && drain_started.elapsed() < drain_timeout {
        bar.set_message(format!("draining: read {} of {}", read(), acked()));
        std::thread::sleep(TICK);
    }
}

fn produce_result(
    workload: &Workload,
    measure_start: u64,
    outcomes: &[DriveOutcome],
    acks: &[AckCounts],
    acked_total: u64,
) -> Result<ProduceResult, BenchError> {
    let mut latency = LatencyHistogram::new();
    let mut lag = LatencyHistogram::new();
    acks.iter().for_each(|a| latency.merge(&a.latency));
    outcomes.iter().for_each(|o| lag.merge(&o.lag));
    let acked_measured: u64 = acks.iter().map(|a| a.acked_measured).sum();
    let errors: u64 = acks.iter().map(|a| a.errors).sum();
    if acked_measured == 0 {
        return Err(BenchError::NothingMeasured { errors });
    }
    let last_ack = acks.iter().map(|a| a.last_measured_ack_ns).max().unwrap_or(measure_start);
    let window_s = last_ack.saturating_sub(measure_start) as f64 / 1e9;
    let (records_per_s, mb_per_s) = rates(acked_measured, workload.record_bytes, window_s);
    let open_loop = matches!(workload.mode, Mode::OpenLoop { .. });
    let sent: u64 = outcomes.iter().map(|o| o.sent).sum();
    Ok(ProduceResult {
        sent,
        acked_measured,
        errors,
        unacknowledged: sent.saturating_sub(acked_total + errors),
        window_s,
        records_per_s,
        mb_per_s,
        latency: latency.summary(),
        spectrum: latency.spectrum(),
        generator_lag: open_loop.then(|| lag.summary()),
    })
}

fn end_to_end_result(
    workload: &Workload,
    measure_start: u64,
    acked_measured: u64,
    consumed: u64,
    reads: &[ConsumeCounts],
) -> EndToEndResult {
    let mut latency = LatencyHistogram::new();
    reads.iter().for_each(|r| latency.merge(&r.latency));
    let consumed_measured: u64 = reads.iter().map(|r| r.consumed_measured).sum();
    let last_read = reads.iter().map(|r| r.last_measured_ns).max().unwrap_or(measure_start);
    let window_s = last_read.saturating_sub(measure_start) as f64 / 1e9;
    let (records_per_s, mb_per_s) = rates(consumed_measured, workload.record_bytes, window_s);
    EndToEndResult {
        consumed,
        consumed_measured,
        missing_measured: acked_measured.saturating_sub(consumed_measured),
        records_per_s,
        mb_per_s,
        latency: latency.summary(),
        spectrum: latency.spectrum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::tests::sample;

    #[test]
    fn record_count_is_shared_exactly_among_producers() {
        let mut workload = sample();
        workload.producers = 3;
        workload.length = Length::Records { count: 10 };
        let shares: Vec<u64> = (0..3).map(|p| window_for(&workload, 0, p).records_max.unwrap()).collect();
        assert_eq!(shares, vec![4, 3, 3]);
        let window = window_for(&workload, 5, 0);
        assert_eq!(window.start_ns, 5 + 100 * NANOS_PER_MS);
        assert_eq!(window.end_ns, None);
    }

    #[test]
    fn duration_window_follows_warm_up_and_has_a_deadline() {
        let window = window_for(&sample(), 0, 0);
        assert_eq!(window.start_ns, 100 * NANOS_PER_MS);
        assert_eq!(window.end_ns, Some(1_100 * NANOS_PER_MS));
        assert_eq!(window.deadline_ns, 1_100 * NANOS_PER_MS + DEADLINE_SLACK_NS);
    }

    #[test]
    fn consumers_cover_every_partition_once() {
        let mut workload = sample();
        workload.partitions = 5;
        workload.consumers = 2;
        let mut all: Vec<i32> = (0..2).flat_map(|c| partitions_of(&workload, c)).collect();
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
    }
}
