//! The seam between the harness and a broker's client: what a load client must provide.
//!
//! A [`LoadClient`] prepares the destination (topic, stream), makes one [`RecordSink`] per
//! producer and one [`Reader`] per consumer. Pacing, timing and accounting stay in
//! [`crate::producer`] and [`crate::consumer`], so every client is measured by the same code.
//!
//! Kafka-protocol brokers (Rill, tansu) are driven by librdkafka ([`crate::kafka`]). The peers
//! that do not speak Kafka are driven by small clients written against their wire protocols
//! ([`crate::redis`], [`crate::nats`]): pipelined, one connection per producer or consumer, no
//! linger: what one wake-up of the generator hands over leaves in one write, so their figures
//! show the server, not a slow client. [`crate::kafka_wire`] is a Kafka-protocol client of the
//! same shape, to set Kafka-protocol brokers beside those peers.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::consumer::ConsumeStats;
use crate::error::BenchError;
use crate::producer::{AckStats, InFlight, MonotonicClock, RecordSink};
use crate::workload::Workload;

/// Which client generates the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientKind {
    /// librdkafka through the `rdkafka` crate: the neutral Kafka-protocol client.
    Librdkafka,
    /// Redis Streams (XADD / XREAD BLOCK) over RESP2, pipelined.
    RedisStreams,
    /// NATS JetStream (publish with ack, push consumer) over the NATS text protocol.
    NatsJetstream,
    /// rill-bench's own Kafka-protocol client, shaped like the Redis and NATS ones: what one
    /// wake-up of the generator hands over leaves in one write (one batch per partition), no
    /// linger, pipelined; Fetch long poll. Single-node brokers only.
    KafkaWire,
}

/// Where and how to connect: the part of a run that is not the workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    /// Which client.
    pub client: ClientKind,
    /// Server address(es): `bootstrap.servers` for Kafka, `HOST:PORT` for Redis and NATS.
    pub brokers: String,
    /// Extra librdkafka producer settings (`-X key=value`), applied last.
    pub producer_config: Vec<(String, String)>,
    /// Extra librdkafka consumer settings (`-C key=value`), applied last.
    pub consumer_config: Vec<(String, String)>,
}

/// What a producer's sink needs from the run.
#[derive(Debug, Clone)]
pub struct ProducerHandle {
    /// Run id written into every record.
    pub run_id: u64,
    /// This producer's index.
    pub producer_index: u32,
    /// The run's clock, to timestamp acknowledgements.
    pub clock: MonotonicClock,
    /// Where acknowledgements are counted.
    pub stats: Arc<AckStats>,
    /// Outstanding records.
    pub in_flight: Arc<InFlight>,
}

/// A consumer: reads until told to stop, handing every record to `stats`.
pub trait Reader {
    /// Reads until `stop` is set; returns within a bounded time after it is.
    fn run(&self, clock: &MonotonicClock, stats: &ConsumeStats, stop: &AtomicBool);
}

/// A client library able to load one kind of broker.
pub trait LoadClient: Sync {
    /// One producer.
    type Sink: RecordSink + Send;
    /// One consumer.
    type Reader: Reader + Sync + Send;

    /// Client name and version, for results.
    fn describe(&self) -> String;
    /// Creates the topic/stream with `partitions` partitions (an existing one is fine).
    fn prepare(&self, topic: &str, partitions: i32) -> Result<(), BenchError>;
    /// A consumer of `partitions`, positioned to read only records written after this call.
    fn reader(&self, topic: &str, partitions: &[i32]) -> Result<Self::Reader, BenchError>;
    /// A producer.
    fn sink(&self, workload: &Workload, topic: &str, handle: ProducerHandle) -> Result<Self::Sink, BenchError>;
}

/// How long to wait for a new topic to show in metadata with all its partitions.
pub const TOPIC_READY_WAIT: std::time::Duration = std::time::Duration::from_secs(15);
/// Pause between metadata checks while waiting for a topic.
const TOPIC_READY_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Polls `check` until it says the topic is ready (`Ok`), at most [`TOPIC_READY_WAIT`]; its
/// last `Err` text goes into the error.
pub fn wait_for_topic(topic: &str, mut check: impl FnMut() -> Result<(), String>) -> Result<(), BenchError> {
    let started = std::time::Instant::now();
    let mut detail = String::from("no metadata yet");
    while started.elapsed() < TOPIC_READY_WAIT {
        match check() {
            Ok(()) => return Ok(()),
            Err(why) => detail = why,
        }
        std::thread::sleep(TOPIC_READY_POLL);
    }
    Err(BenchError::TopicNotReady {
        topic: topic.into(),
        waited_ms: u64::try_from(TOPIC_READY_WAIT.as_millis()).unwrap_or(u64::MAX),
        detail,
    })
}

/// The thread reading one producer connection's replies, stopped when the sink is dropped.
pub struct ReplyThread {
    closing: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReplyThread {
    /// Spawns `read(closing)`; `closing` is set before the socket is shut down, so the reader
    /// can tell a requested stop from a broken connection.
    pub fn spawn(name: &str, read: impl FnOnce(&AtomicBool) + Send + 'static) -> std::io::Result<Self> {
        let closing = Arc::new(AtomicBool::new(false));
        let flag = closing.clone();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || read(&flag))?;
        Ok(ReplyThread { closing, thread: Some(thread) })
    }

    /// Marks the stop as requested, runs `shutdown` (which must end the reader's blocking read)
    /// and joins the thread.
    pub fn stop(&mut self, shutdown: impl FnOnce()) {
        self.closing.store(true, std::sync::atomic::Ordering::Release);
        shutdown();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The partition of a producer's `index`-th record: round-robin, producers offset so they do not
/// all start on partition 0.
pub fn partition_of(index: u64, producer: u32, partitions: i32) -> i32 {
    let partitions = u64::try_from(partitions).expect("validated positive");
    i32::try_from((index + u64::from(producer)) % partitions).expect("below the partition count")
}

/// `n` bytes of seeded random filler: incompressible, so compression measures cost, not savings.
pub fn filler(bytes: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut value = vec![0u8; bytes];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut value);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_rotate_per_record_and_per_producer() {
        let first: Vec<i32> = (0..4).map(|i| partition_of(i, 0, 3)).collect();
        assert_eq!(first, vec![0, 1, 2, 0]);
        assert_eq!(partition_of(0, 1, 3), 1);
        assert_eq!(partition_of(5, 7, 1), 0);
        assert_eq!(filler(32, 1), filler(32, 1));
        assert_ne!(filler(32, 1), filler(32, 2));
    }
}
