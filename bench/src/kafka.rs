//! The Kafka-protocol client side: librdkafka through the `rdkafka` crate.
//!
//! librdkafka is the neutral client: it is not Rill's, so a Rill figure and a peer's figure come
//! from the same client code. It batches on its own (`linger.ms`, `batch.size`) and runs its own
//! threads; the harness only decides when each record is handed to it ([`crate::producer`]) and
//! timestamps delivery reports and reads.
//!
//! Producers write to explicit partitions (round-robin by record index) so load spreads evenly
//! whatever the client's partitioner does with null keys. Consumers are assigned partitions
//! directly (no consumer group) at each partition's high watermark taken before the first send,
//! so they read exactly this run's records and group coordination is not part of the measurement.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::client::{filler, partition_of, LoadClient, ProducerHandle, Reader};
use crate::consumer::ConsumeStats;
use crate::error::BenchError;
use crate::payload::Header;
use crate::producer::{AckStats, Clock, InFlight, MonotonicClock, RecordSink};
use rill_engine::Clock as _;
use crate::workload::Workload;

/// Timeout of one metadata, watermark or admin request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a send may wait for room in librdkafka's queue before the run is failed.
const QUEUE_FULL_WAIT_MAX: Duration = Duration::from_secs(30);
/// Pause between retries while librdkafka's queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_micros(100);
/// librdkafka's delivery timeout: a record not acknowledged by then counts as an error.
const MESSAGE_TIMEOUT_MS: u64 = 30_000;
/// librdkafka's producer queue bound in records, high enough that closed-loop in-flight limits
/// and open-loop bursts are the harness's decision, not the queue's.
const QUEUE_RECORDS_MAX: u64 = 2_000_000;
/// How long one consumer poll blocks; bounds how late a consumer notices it should stop.
pub const CONSUMER_POLL: Duration = Duration::from_millis(100);

/// librdkafka as a [`LoadClient`]: where and how to connect.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaClient {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Extra librdkafka producer settings (`-X key=value`), applied last.
    pub producer_config: Vec<(String, String)>,
    /// Extra librdkafka consumer settings (`-C key=value`), applied last.
    pub consumer_config: Vec<(String, String)>,
}

impl LoadClient for KafkaClient {
    type Sink = KafkaSink;
    type Reader = KafkaReader;

    fn describe(&self) -> String {
        format!("librdkafka {}", rdkafka::util::get_rdkafka_version().1)
    }

    fn prepare(&self, topic: &str, partitions: i32) -> Result<(), BenchError> {
        ensure_topic(self, topic, partitions)
    }

    fn reader(&self, topic: &str, partitions: &[i32]) -> Result<KafkaReader, BenchError> {
        KafkaReader::new(self, topic, partitions)
    }

    fn sink(&self, workload: &Workload, topic: &str, handle: ProducerHandle) -> Result<KafkaSink, BenchError> {
        KafkaSink::new(self, workload, topic, handle)
    }
}

/// Forwards librdkafka's log lines to `tracing` (the `log` crate it uses is not wired up here).
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingLog;

fn forward_log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "{facility} {message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{facility} {message}"),
        _ => tracing::debug!(target: "librdkafka", "{facility} {message}"),
    }
}

impl ClientContext for TracingLog {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        forward_log(level, facility, message);
    }
}

impl ConsumerContext for TracingLog {}

/// Creates the benchmark topic (an existing one is fine) and waits until metadata shows all of
/// its partitions.
pub fn ensure_topic(connection: &KafkaClient, topic: &str, partitions: i32) -> Result<(), BenchError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &connection.brokers)
        .create()
        .map_err(|e| BenchError::kafka("creating admin client", e))?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    let created = block_on(admin.create_topics([&new_topic], &options));
    match created {
        Ok(results) => {
            for result in results {
                match result {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) => {
                        return Err(BenchError::CreateTopic { topic: name, reason: code.to_string() })
                    }
                }
            }
        }
        // A broker without CreateTopics may still auto-create on metadata; the wait decides.
        Err(error) => tracing::warn!(%error, topic, "CreateTopics failed; relying on auto-creation"),
    }
    wait_for_topic(connection, topic, partitions)
}

fn wait_for_topic(connection: &KafkaClient, topic: &str, partitions: i32) -> Result<(), BenchError> {
    let consumer: BaseConsumer<TracingLog> = ClientConfig::new()
        .set("bootstrap.servers", &connection.brokers)
        .set("allow.auto.create.topics", "true")
        .create_with_context(TracingLog)
        .map_err(|e| BenchError::kafka("creating metadata client", e))?;
    crate::client::wait_for_topic(topic, || match consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT) {
        Ok(metadata) => match metadata.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && t.partitions().len() == partitions as usize => Ok(()),
            Some(t) => Err(format!("{} partitions, error {:?}", t.partitions().len(), t.error())),
            None => Err("topic absent from metadata".into()),
        },
        Err(error) => Err(error.to_string()),
    })
}

/// Runs a future to completion on this thread (the admin client's futures are driven by its
/// own background thread; they only need polling).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    futures::executor::block_on(future)
}

/// Delivery-report context of one producer: timestamps each acknowledgement on the run's clock.
pub struct DeliveryContext {
    clock: MonotonicClock,
    stats: Arc<AckStats>,
    in_flight: Arc<InFlight>,
    error_logged: AtomicBool,
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        forward_log(level, facility, message);
    }
}

impl ProducerContext for DeliveryContext {
    /// The record's intended send time, ns on the run's clock.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, intended_ns: usize) {
        let ack_ns = self.clock.now_ns();
        if let Err((error, _)) = result {
            // Once per producer: a failing broker fails every record the same way.
            if !self.error_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(%error, "delivery failed (further failures are only counted)");
            }
        }
        self.in_flight.remove();
        self.stats.on_ack(intended_ns as u64, ack_ns, result.is_ok());
    }
}

/// One librdkafka producer as a [`RecordSink`].
pub struct KafkaSink {
    producer: ThreadedProducer<DeliveryContext>,
    topic: String,
    partitions: i32,
    producer_index: u32,
    run_id: u64,
    value: Vec<u8>,
    /// Unix time in ms at the run clock's zero: each record's CreateTime is its intended send
    /// time on that clock, so librdkafka does not read the wall clock per record.
    clock_zero_unix_ms: i64,
}

impl KafkaSink {
    /// Creates producer `producer_index` of a run.
    pub fn new(
        connection: &KafkaClient,
        workload: &Workload,
        topic: &str,
        handle: ProducerHandle,
    ) -> Result<Self, BenchError> {
        let ProducerHandle { run_id, producer_index, clock, stats, in_flight } = handle;
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &connection.brokers)
            .set("acks", workload.acks.as_kafka())
            .set("linger.ms", workload.linger_ms.to_string())
            .set("batch.size", workload.batch_bytes.to_string())
            .set("compression.type", workload.compression.as_kafka())
            .set("enable.idempotence", workload.idempotence.to_string())
            .set("message.timeout.ms", MESSAGE_TIMEOUT_MS.to_string())
            .set("queue.buffering.max.messages", QUEUE_RECORDS_MAX.to_string())
            .set("queue.buffering.max.kbytes", "2097151");
        for (key, value) in &connection.producer_config {
            config.set(key, value);
        }
        let context = DeliveryContext { clock, stats, in_flight, error_logged: AtomicBool::new(false) };
        let producer = config
            .create_with_context(context)
            .map_err(|e| BenchError::kafka("creating producer", e))?;
        let value = filler(workload.record_bytes, run_id ^ (u64::from(producer_index) << 32));
        let clock_zero_unix_ms = rill_engine::SystemClock.now_ms().saturating_sub(i64::try_from(clock.now_ns() / 1_000_000).unwrap_or(i64::MAX));
        Ok(KafkaSink {
            producer,
            topic: topic.into(),
            partitions: workload.partitions,
            producer_index,
            run_id,
            value,
            clock_zero_unix_ms,
        })
    }
}

impl RecordSink for KafkaSink {
    fn flush(&mut self, timeout: Duration) -> Result<(), BenchError> {
        self.producer.flush(timeout).map_err(|e| BenchError::kafka("flushing producer", e))
    }

    fn send(&mut self, index: u64, intended_ns: u64) -> Result<(), BenchError> {
        Header { run_id: self.run_id, intended_ns, producer: self.producer_index }.write(&mut self.value);
        let partition = partition_of(index, self.producer_index, self.partitions);
        let opaque = usize::try_from(intended_ns).expect("64-bit target");
        let create_time_ms = self.clock_zero_unix_ms.saturating_add(i64::try_from(intended_ns / 1_000_000).unwrap_or(i64::MAX));
        let mut record = BaseRecord::<(), [u8], usize>::with_opaque_to(&self.topic, opaque)
            .partition(partition)
            .payload(&self.value)
            .timestamp(create_time_ms);
        // Read the clock only once the queue is full: the closed loop runs out of client CPU.
        let mut started = None;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    if started.get_or_insert_with(Instant::now).elapsed() > QUEUE_FULL_WAIT_MAX {
                        return Err(BenchError::kafka(
                            "sending (queue full for too long)",
                            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                        ));
                    }
                    record = returned;
                    std::thread::sleep(QUEUE_FULL_PAUSE);
                }
                Err((error, _)) => return Err(BenchError::kafka("sending", error)),
            }
        }
    }
}

/// One librdkafka consumer assigned a fixed set of partitions.
pub struct KafkaReader {
    consumer: BaseConsumer<TracingLog>,
}

impl KafkaReader {
    /// Creates a consumer for `partitions` of `topic`, positioned at their current high
    /// watermarks (so it reads only records written after this call).
    pub fn new(connection: &KafkaClient, topic: &str, partitions: &[i32]) -> Result<Self, BenchError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &connection.brokers)
            .set("group.id", format!("{topic}-reader"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        for (key, value) in &connection.consumer_config {
            config.set(key, value);
        }
        let consumer: BaseConsumer<TracingLog> = config
            .create_with_context(TracingLog)
            .map_err(|e| BenchError::kafka("creating consumer", e))?;
        let mut assignment = TopicPartitionList::new();
        for &partition in partitions {
            let (_, high) = consumer
                .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
                .map_err(|e| BenchError::kafka("fetching watermarks", e))?;
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(high))
                .map_err(|e| BenchError::kafka("building assignment", e))?;
        }
        consumer.assign(&assignment).map_err(|e| BenchError::kafka("assigning partitions", e))?;
        Ok(KafkaReader { consumer })
    }

}

impl Reader for KafkaReader {
    fn run(&self, clock: &MonotonicClock, stats: &ConsumeStats, stop: &AtomicBool) {
        let mut error_logged = false;
        while !stop.load(Ordering::Relaxed) {
            match self.consumer.poll(CONSUMER_POLL) {
                None => {}
                Some(Ok(message)) => stats.on_record(message.payload().unwrap_or_default(), clock.now_ns()),
                Some(Err(error)) if !error_logged => {
                    error_logged = true;
                    tracing::warn!(%error, "consumer error (further errors are not logged)");
                }
                Some(Err(_)) => {}
            }
        }
    }
}
