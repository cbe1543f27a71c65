//! A small Kafka-protocol client of rill-bench's own, built the way the Redis and NATS clients are
//! ([`crate::redis`], [`crate::nats`]): one connection per producer; what the generator hands over
//! in one wake-up leaves in one write (here one Produce request, one batch, per partition; there
//! one pipelined command per record), with no linger; replies are matched in order by a reader
//! thread; consumers long-poll with Fetch.
//!
//! It exists so that Kafka-protocol brokers can be set beside the non-Kafka peers with a client of
//! the same shape: librdkafka ([`crate::kafka`]) stays the neutral client between Kafka-protocol
//! brokers, but its many threads and internal queues cost more than these small clients on a
//! machine where the load generator shares its CPUs with the broker.
//!
//! It sends every request to the bootstrap address, so it is meant for single-node brokers (or
//! the leader of every partition); it does not follow leadership.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rill_net::client::{produce_request, produce_result, read_response, request_frame, Client, ClientError, OutgoingRecord, PRODUCE_VERSION};
use rill_net::kafka_protocol::messages::{ApiKey, ProduceResponse};

use crate::client::{filler, partition_of, wait_for_topic, LoadClient, ProducerHandle, Reader, ReplyThread};
use crate::consumer::ConsumeStats;
use crate::error::BenchError;
use crate::payload::Header;
use crate::producer::{Clock, MonotonicClock, RecordSink};
use crate::workload::{Acks, Workload};

/// Longest a consumer's Fetch waits server-side: bounds how late it notices `stop`.
const FETCH_WAIT_MS: i32 = 100;
/// Kafka's error code for a topic that already exists.
const TOPIC_ALREADY_EXISTS: i16 = 36;
/// The client id this client sends.
const CLIENT_ID: &str = "rill-bench";

fn client_error(operation: &'static str, address: &str, error: ClientError) -> BenchError {
    match error {
        ClientError::Io { source, .. } => BenchError::Io { operation, path: address.into(), source },
        other => BenchError::InvalidWorkload(format!("{operation} at {address}: {other}")),
    }
}

/// A Kafka-protocol broker driven by rill-bench's own client, as a [`LoadClient`].
#[derive(Debug, Clone)]
pub struct KafkaWireClient {
    address: String,
}

impl KafkaWireClient {
    /// A client of the broker at `brokers` (its first address, `HOST:PORT`).
    pub fn new(brokers: &str) -> Self {
        let address = brokers.split(',').next().unwrap_or(brokers).trim();
        KafkaWireClient { address: address.into() }
    }

    fn connect(&self) -> Result<Client, BenchError> {
        Client::connect(&self.address).map_err(|e| client_error("connecting", &self.address, e))
    }
}

impl LoadClient for KafkaWireClient {
    type Sink = KafkaWireSink;
    type Reader = KafkaWireReader;

    fn describe(&self) -> String {
        "rill-bench Kafka client (Produce v8: one batch per partition per generator wake-up, pipelined; Fetch v11 long poll)".into()
    }

    fn prepare(&self, topic: &str, partitions: i32) -> Result<(), BenchError> {
        let mut client = self.connect()?;
        match client.create_topic(topic, partitions, &[]) {
            Ok(()) | Err(ClientError::Kafka { code: TOPIC_ALREADY_EXISTS, .. }) => {}
            Err(error) => return Err(BenchError::CreateTopic { topic: topic.into(), reason: error.to_string() }),
        }
        wait_for_topic(topic, || match client.partition_count(topic) {
            Ok(count) if count == partitions => Ok(()),
            Ok(count) => Err(format!("{count} partitions")),
            Err(error) => Err(error.to_string()),
        })
    }

    fn reader(&self, topic: &str, partitions: &[i32]) -> Result<KafkaWireReader, BenchError> {
        let mut client = self.connect()?;
        let mut offsets = BTreeMap::new();
        for &partition in partitions {
            // Start at the high watermark, so only this run's records are read.
            let latest = client.list_offset(topic, partition, -1).map_err(|e| client_error("listing offsets", &self.address, e))?;
            offsets.insert(partition, latest);
        }
        Ok(KafkaWireReader { address: self.address.clone(), topic: topic.into(), state: Mutex::new((client, offsets)) })
    }

    fn sink(&self, workload: &Workload, topic: &str, handle: ProducerHandle) -> Result<KafkaWireSink, BenchError> {
        let io = |operation, source| BenchError::Io { operation, path: self.address.clone().into(), source };
        let stream = TcpStream::connect(&self.address).map_err(|e| io("connecting", e))?;
        stream.set_nodelay(true).map_err(|e| io("setting TCP_NODELAY", e))?;
        let replies = stream.try_clone().map_err(|e| io("cloning socket", e))?;
        let pending: Arc<Mutex<Pending>> = Arc::default();
        let acks = match workload.acks {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        };
        let reply_thread = if acks == 0 {
            None // Kafka sends no response to acks=0.
        } else {
            let (pending, handle, topic) = (pending.clone(), handle.clone(), topic.to_string());
            let read = move |closing: &AtomicBool| read_replies(replies, &topic, &pending, closing, &handle);
            Some(ReplyThread::spawn("kafka-replies", read).map_err(|e| io("spawning reply thread", e))?)
        };
        Ok(KafkaWireSink {
            address: self.address.clone(),
            stream,
            pending,
            reply_thread,
            topic: topic.into(),
            partitions: workload.partitions,
            acks,
            batch_bytes: workload.batch_bytes.max(1),
            correlation_id: 0,
            value: filler(workload.record_bytes, handle.run_id ^ (u64::from(handle.producer_index) << 32)),
            buffered: BTreeMap::new(),
            buffered_bytes: 0,
            handle,
        })
    }
}

/// Produce requests written and not yet answered: correlation id, partition, and the intended
/// send time of each record of its batch.
type Pending = VecDeque<(i32, i32, Vec<u64>)>;

fn read_replies(stream: TcpStream, topic: &str, pending: &Mutex<Pending>, closing: &AtomicBool, handle: &ProducerHandle) {
    let mut input = BufReader::new(stream);
    let mut error_logged = false;
    loop {
        let (correlation_id, response) = match read_response::<ProduceResponse>(&mut input, ApiKey::Produce, PRODUCE_VERSION) {
            Ok(answer) => answer,
            Err(error) => {
                if !closing.load(Ordering::Acquire) {
                    tracing::warn!(%error, "kafka reply stream ended");
                }
                return;
            }
        };
        let ack_ns = handle.clock.now_ns();
        let Some((expected, partition, intended)) = pending.lock().expect("pending lock poisoned").pop_front() else {
            tracing::warn!(correlation_id, "produce response without a pending request");
            return;
        };
        if expected != correlation_id {
            // Kafka answers a connection in order; anything else is a broken broker.
            tracing::warn!(expected, correlation_id, "produce response out of order; reply reader stops");
            return;
        }
        let outcome = produce_result(&response, topic, partition);
        if let Err(error) = &outcome {
            if !std::mem::replace(&mut error_logged, true) {
                tracing::warn!(%error, "produce failed (further failures are only counted)");
            }
        }
        for intended_ns in intended {
            handle.in_flight.remove();
            handle.stats.on_ack(intended_ns, ack_ns, outcome.is_ok());
        }
    }
}

/// One pipelined producer connection. Records handed over in one wake-up of the generator go
/// out together: one Produce request (one batch) per partition, all in one write, as soon as
/// the generator waits; no linger.
pub struct KafkaWireSink {
    address: String,
    stream: TcpStream,
    pending: Arc<Mutex<Pending>>,
    reply_thread: Option<ReplyThread>,
    topic: String,
    partitions: i32,
    acks: i16,
    batch_bytes: usize,
    correlation_id: i32,
    value: Vec<u8>,
    /// Records handed over and not yet written, by partition: (intended send time, value).
    buffered: BTreeMap<i32, Vec<(u64, Bytes)>>,
    buffered_bytes: usize,
    handle: ProducerHandle,
}

impl RecordSink for KafkaWireSink {
    fn send(&mut self, index: u64, intended_ns: u64) -> Result<(), BenchError> {
        let h = &self.handle;
        Header { run_id: h.run_id, intended_ns, producer: h.producer_index }.write(&mut self.value);
        let partition = partition_of(index, h.producer_index, self.partitions);
        self.buffered.entry(partition).or_default().push((intended_ns, Bytes::copy_from_slice(&self.value)));
        self.buffered_bytes += self.value.len();
        if self.buffered_bytes >= self.batch_bytes {
            self.write_buffered()?;
        }
        Ok(())
    }

    fn write_buffered(&mut self) -> Result<(), BenchError> {
        if self.buffered.is_empty() {
            return Ok(());
        }
        let mut wire = Vec::new();
        let mut written = Vec::new();
        for (partition, records) in std::mem::take(&mut self.buffered) {
            let (intended, values): (Vec<u64>, Vec<Bytes>) = records.into_iter().unzip();
            let records: Vec<OutgoingRecord> =
                values.into_iter().map(|value| OutgoingRecord { key: None, value: Some(value), headers: Vec::new() }).collect();
            let request = produce_request(&self.topic, partition, &records, self.acks)
                .map_err(|e| client_error("encoding produce", &self.address, e))?;
            self.correlation_id = self.correlation_id.wrapping_add(1);
            let frame = request_frame(ApiKey::Produce, PRODUCE_VERSION, self.correlation_id, CLIENT_ID, &request)
                .map_err(|e| client_error("encoding produce", &self.address, e))?;
            wire.extend_from_slice(&frame);
            written.push((self.correlation_id, partition, intended));
        }
        self.buffered_bytes = 0;
        let h = &self.handle;
        if self.acks != 0 {
            // Queue before writing: a reply may arrive before write_all returns.
            self.pending.lock().expect("pending lock poisoned").extend(written.iter().cloned());
        }
        (&self.stream)
            .write_all(&wire)
            .map_err(|source| BenchError::Io { operation: "writing produce", path: self.address.clone().into(), source })?;
        if self.acks == 0 {
            // Nothing comes back for acks=0: delivered once written, as librdkafka reports it.
            let now_ns = h.clock.now_ns();
            for intended_ns in written.into_iter().flat_map(|(_, _, intended)| intended) {
                h.in_flight.remove();
                h.stats.on_ack(intended_ns, now_ns, true);
            }
        }
        Ok(())
    }

    fn flush(&mut self, timeout: Duration) -> Result<(), BenchError> {
        self.write_buffered()?;
        self.handle.in_flight.wait_empty(timeout);
        Ok(())
    }
}

impl Drop for KafkaWireSink {
    fn drop(&mut self) {
        let stream = &self.stream;
        match &mut self.reply_thread {
            Some(reply_thread) => reply_thread.stop(|| drop(stream.shutdown(Shutdown::Both))),
            None => drop(stream.shutdown(Shutdown::Both)),
        }
    }
}

/// One consumer connection long-polling its partitions.
pub struct KafkaWireReader {
    address: String,
    topic: String,
    state: Mutex<(Client, BTreeMap<i32, i64>)>,
}

impl Reader for KafkaWireReader {
    fn run(&self, clock: &MonotonicClock, stats: &ConsumeStats, stop: &AtomicBool) {
        let mut state = self.state.lock().expect("reader lock poisoned");
        let (client, offsets) = &mut *state;
        while !stop.load(Ordering::Relaxed) {
            let (records, _) = match client.fetch(&self.topic, offsets, FETCH_WAIT_MS) {
                Ok(answer) => answer,
                Err(error) => {
                    tracing::warn!(%error, address = self.address, "fetch failed; consumer stops");
                    return;
                }
            };
            let read_ns = clock.now_ns();
            for record in records {
                stats.on_record(record.value.as_deref().unwrap_or_default(), read_ns);
                offsets.insert(record.partition, record.offset + 1);
            }
        }
    }
}
