//! NATS JetStream as a peer, over the NATS text protocol.
//!
//! Mapping: topic `t` is the JetStream stream `t` (file storage) with subjects `t.>`; partition
//! `p` is subject `t.p`. A producer publishes each record with a reply subject
//! `<inbox>.<intended_ns>`; JetStream answers there with its publish acknowledgement once the
//! record is stored, so the intended time comes back with the ack and no lookup table is needed.
//! A consumer creates one ephemeral push consumer per partition (deliver policy `new`, no acks)
//! and timestamps each delivered message. The sink's and reader's subscription ids are fixed
//! (1 for acks, 100 + partition for deliveries, 99 for API requests).
//!
//! Frames are parsed from a growing buffer ([`Inbound`]), so a read timeout never leaves the
//! parser in the middle of a message: the reader can check its stop flag between reads.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::{filler, partition_of, LoadClient, ProducerHandle, Reader, ReplyThread};
use crate::consumer::ConsumeStats;
use crate::error::BenchError;
use crate::payload::Header;
use crate::producer::{Clock, MonotonicClock, RecordSink};
use crate::workload::Workload;

/// Read timeout of every socket: how often a reader re-checks its stop flag.
const READ_SLICE: Duration = Duration::from_millis(100);
/// How long a JetStream API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest frame accepted (NATS's default max_payload is 1 MiB).
const FRAME_BYTES_MAX: usize = 8 << 20;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 256 << 10;

fn io_error(operation: &'static str, address: &str, source: std::io::Error) -> BenchError {
    BenchError::Io { operation, path: address.into(), source }
}

/// A frame from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// `MSG subject sid [reply] len` and its payload.
    Msg {
        /// Subject delivered on.
        subject: &'a str,
        /// Payload.
        payload: &'a [u8],
    },
    /// `PING`: must be answered with `PONG`.
    Ping,
    /// `-ERR ...`.
    Error(&'a str),
    /// `INFO`, `+OK`, `PONG`: nothing to do.
    Other,
}

/// Bytes received and not yet parsed.
#[derive(Debug, Default)]
pub struct Inbound {
    buffer: Vec<u8>,
}

impl Inbound {
    /// Appends bytes read from the socket.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Hands every complete frame to `on_frame`, keeping any partial one for later.
    pub fn drain(&mut self, mut on_frame: impl FnMut(Frame<'_>)) -> Result<(), String> {
        let mut start = 0;
        loop {
            let rest = &self.buffer[start..];
            let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else { break };
            let line = std::str::from_utf8(&rest[..end]).map_err(|_| "control line is not UTF-8".to_string())?;
            let mut words = line.split_ascii_whitespace();
            match words.next() {
                Some("MSG") => {
                    let fields: Vec<&str> = words.collect();
                    let (Some(subject), Some(length)) = (fields.first(), fields.last()) else {
                        return Err(format!("bad MSG line {line:?}"));
                    };
                    let length: usize = length.parse().map_err(|_| format!("bad MSG length in {line:?}"))?;
                    if length > FRAME_BYTES_MAX {
                        return Err(format!("MSG of {length} bytes above {FRAME_BYTES_MAX}"));
                    }
                    let body = end + 2;
                    if rest.len() < body + length + 2 {
                        break;
                    }
                    on_frame(Frame::Msg { subject, payload: &rest[body..body + length] });
                    start += body + length + 2;
                    continue;
                }
                Some("PING") => on_frame(Frame::Ping),
                Some("-ERR") => on_frame(Frame::Error(line)),
                _ => on_frame(Frame::Other),
            }
            start += end + 2;
        }
        if self.buffer.len() - start > FRAME_BYTES_MAX {
            return Err("unterminated frame above the size limit".into());
        }
        self.buffer.drain(..start);
        Ok(())
    }
}

/// One NATS connection: a locked writer and a reader half.
struct Connection {
    address: String,
    writer: Arc<Mutex<TcpStream>>,
    reader: TcpStream,
    inbound: Inbound,
}

impl Connection {
    fn open(address: &str) -> Result<Connection, BenchError> {
        let stream = TcpStream::connect(address).map_err(|e| io_error("connecting to nats", address, e))?;
        stream.set_nodelay(true).map_err(|e| io_error("setting TCP_NODELAY", address, e))?;
        stream.set_read_timeout(Some(READ_SLICE)).map_err(|e| io_error("setting timeout", address, e))?;
        let reader = stream.try_clone().map_err(|e| io_error("cloning socket", address, e))?;
        let mut connection =
            Connection { address: address.into(), writer: Arc::new(Mutex::new(stream)), reader, inbound: Inbound::default() };
        let connect = r#"CONNECT {"verbose":false,"pedantic":false,"name":"rill-bench","lang":"rust","version":"0.1.0","protocol":1,"headers":false}"#;
        connection.write(format!("{connect}\r\nPING\r\n").as_bytes())?;
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let mut ponged = false;
        while !ponged {
            connection.pump(deadline, |frame| ponged |= matches!(frame, Frame::Other))?;
        }
        Ok(connection)
    }

    fn write(&self, bytes: &[u8]) -> Result<(), BenchError> {
        let stream = self.writer.lock().expect("nats writer poisoned");
        (&*stream).write_all(bytes).map_err(|e| io_error("writing to nats", &self.address, e))
    }

    /// Reads once (up to one read slice) and hands complete frames to `on_frame`, answering
    /// PINGs. Fails after `deadline`.
    fn pump(&mut self, deadline: Instant, on_frame: impl FnMut(Frame<'_>)) -> Result<(), BenchError> {
        if Instant::now() > deadline {
            return Err(io_error("waiting for nats", &self.address, ErrorKind::TimedOut.into()));
        }
        read_and_dispatch(&self.address, &mut self.reader, &mut self.inbound, &self.writer, on_frame).map(|_| ())
    }

    /// A JetStream API request; returns the reply payload.
    fn request(&mut self, subject: &str, body: &str) -> Result<Vec<u8>, BenchError> {
        let inbox = format!("_INBOX.{:016x}", rand::random::<u64>());
        self.write(format!("SUB {inbox} 99\r\nPUB {subject} {inbox} {}\r\n{body}\r\n", body.len()).as_bytes())?;
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let mut reply = None;
        while reply.is_none() {
            self.pump(deadline, |frame| {
                if let Frame::Msg { subject, payload } = frame {
                    if subject == inbox {
                        reply = Some(payload.to_vec());
                    }
                }
            })?;
        }
        self.write(b"UNSUB 99\r\n")?;
        Ok(reply.expect("loop ends with a reply"))
    }
}

/// One socket read, then every complete frame to `on_frame`. `Ok(false)` when the read timed out.
fn read_and_dispatch(
    address: &str,
    reader: &mut TcpStream,
    inbound: &mut Inbound,
    writer: &Mutex<TcpStream>,
    mut on_frame: impl FnMut(Frame<'_>),
) -> Result<bool, BenchError> {
    let mut chunk = vec![0u8; READ_CHUNK];
    let read = match reader.read(&mut chunk) {
        Ok(0) => return Err(io_error("reading from nats", address, ErrorKind::UnexpectedEof.into())),
        Ok(n) => n,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Ok(false),
        Err(e) => return Err(io_error("reading from nats", address, e)),
    };
    inbound.extend(&chunk[..read]);
    let mut pings = 0;
    let mut server_error = None;
    inbound
        .drain(|frame| match frame {
            Frame::Ping => pings += 1,
            Frame::Error(line) => server_error = Some(line.to_string()),
            other => on_frame(other),
        })
        .map_err(|reason| io_error("parsing nats frames", address, std::io::Error::new(ErrorKind::InvalidData, reason)))?;
    if let Some(line) = server_error {
        tracing::warn!(address, line, "nats server error");
    }
    for _ in 0..pings {
        let stream = writer.lock().expect("nats writer poisoned");
        (&*stream).write_all(b"PONG\r\n").map_err(|e| io_error("answering PING", address, e))?;
    }
    Ok(true)
}

/// A NATS server with JetStream as a [`LoadClient`].
#[derive(Debug, Clone)]
pub struct NatsClient {
    address: String,
}

impl NatsClient {
    /// A client of the server at `HOST:PORT`.
    pub fn new(address: &str) -> Self {
        NatsClient { address: address.into() }
    }
}

/// Whether a JetStream API reply reports an error other than "already exists".
fn api_error(reply: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(reply).ok()?;
    let error = value.get("error")?;
    // 10058: stream name already in use (a reused topic).
    if error.get("err_code").and_then(|c| c.as_u64()) == Some(10058) {
        return None;
    }
    Some(error.to_string())
}

impl LoadClient for NatsClient {
    type Sink = NatsSink;
    type Reader = NatsReader;

    fn describe(&self) -> String {
        "rill-bench NATS protocol client (JetStream publish acks, push consumers)".into()
    }

    fn prepare(&self, topic: &str, _partitions: i32) -> Result<(), BenchError> {
        let mut connection = Connection::open(&self.address)?;
        let config = serde_json::json!({
            "name": topic, "subjects": [format!("{topic}.>")], "storage": "file",
            "retention": "limits", "discard": "old", "num_replicas": 1,
        });
        let reply = connection.request(&format!("$JS.API.STREAM.CREATE.{topic}"), &config.to_string())?;
        match api_error(&reply) {
            None => Ok(()),
            Some(reason) => Err(BenchError::CreateTopic { topic: topic.into(), reason }),
        }
    }

    fn reader(&self, topic: &str, partitions: &[i32]) -> Result<NatsReader, BenchError> {
        let mut connection = Connection::open(&self.address)?;
        let inbox = format!("_INBOX.{:016x}", rand::random::<u64>());
        for &partition in partitions {
            // An exact subscription per deliver subject: JetStream binds a push consumer to
            // interest on its deliver subject, and did not deliver to a wildcard one in testing.
            connection.write(format!("SUB {inbox}.{partition} {}\r\n", 100 + partition).as_bytes())?;
            let config = serde_json::json!({
                "stream_name": topic,
                "config": {
                    "deliver_subject": format!("{inbox}.{partition}"),
                    "filter_subject": format!("{topic}.{partition}"),
                    "deliver_policy": "new", "ack_policy": "none", "replay_policy": "instant",
                },
            });
            let reply = connection.request(&format!("$JS.API.CONSUMER.CREATE.{topic}"), &config.to_string())?;
            if let Some(reason) = api_error(&reply) {
                return Err(BenchError::CreateTopic { topic: topic.into(), reason: format!("consumer: {reason}") });
            }
        }
        Ok(NatsReader { connection: Mutex::new(connection) })
    }

    fn sink(&self, workload: &Workload, topic: &str, handle: ProducerHandle) -> Result<NatsSink, BenchError> {
        let connection = Connection::open(&self.address)?;
        let inbox = format!("_INBOX.{:016x}", rand::random::<u64>());
        connection.write(format!("SUB {inbox}.* 1\r\n").as_bytes())?;
        let writer = connection.writer.clone();
        let reply_thread = {
            let (handle, prefix) = (handle.clone(), format!("{inbox}."));
            ReplyThread::spawn("nats-acks", move |closing| read_acks(connection, &prefix, closing, &handle))
                .map_err(|e| io_error("spawning ack thread", "nats", e))?
        };
        Ok(NatsSink {
            address: self.address.clone(),
            writer,
            reply_thread,
            subjects: (0..workload.partitions).map(|p| format!("{topic}.{p}")).collect(),
            inbox,
            value: filler(workload.record_bytes, handle.run_id ^ (u64::from(handle.producer_index) << 32)),
            buffer: Vec::with_capacity(workload.record_bytes + 128),
            handle,
        })
    }
}

fn read_acks(mut connection: Connection, prefix: &str, closing: &AtomicBool, handle: &ProducerHandle) {
    while !closing.load(Ordering::Acquire) {
        let result = read_and_dispatch(
            &connection.address,
            &mut connection.reader,
            &mut connection.inbound,
            &connection.writer,
            |frame| {
                let Frame::Msg { subject, payload } = frame else { return };
                let Some(intended_ns) = subject.strip_prefix(prefix).and_then(|t| t.parse::<u64>().ok()) else {
                    return;
                };
                let ack_ns = handle.clock.now_ns();
                handle.in_flight.remove();
                // A PubAck is `{"stream":..,"seq":..}`; a failure carries an "error" object.
                let stored = !payload.windows(7).any(|w| w == b"\"error\"");
                handle.stats.on_ack(intended_ns, ack_ns, stored);
            },
        );
        if let Err(error) = result {
            if !closing.load(Ordering::Acquire) {
                tracing::warn!(%error, "nats ack stream ended");
            }
            return;
        }
    }
}

/// One producer connection.
pub struct NatsSink {
    address: String,
    writer: Arc<Mutex<TcpStream>>,
    reply_thread: ReplyThread,
    subjects: Vec<String>,
    inbox: String,
    value: Vec<u8>,
    buffer: Vec<u8>,
    handle: ProducerHandle,
}

impl RecordSink for NatsSink {
    fn send(&mut self, index: u64, intended_ns: u64) -> Result<(), BenchError> {
        let h = &self.handle;
        Header { run_id: h.run_id, intended_ns, producer: h.producer_index }.write(&mut self.value);
        let partitions = i32::try_from(self.subjects.len()).expect("validated partition count");
        let subject = &self.subjects[partition_of(index, h.producer_index, partitions) as usize];
        let line = format!("PUB {subject} {}.{intended_ns} {}\r\n", self.inbox, self.value.len());
        self.buffer.extend_from_slice(line.as_bytes());
        self.buffer.extend_from_slice(&self.value);
        self.buffer.extend_from_slice(b"\r\n");
        Ok(())
    }

    fn write_buffered(&mut self) -> Result<(), BenchError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let stream = self.writer.lock().expect("nats writer poisoned");
        let written = (&*stream).write_all(&self.buffer);
        self.buffer.clear();
        written.map_err(|e| io_error("publishing", &self.address, e))
    }

    fn flush(&mut self, timeout: Duration) -> Result<(), BenchError> {
        self.write_buffered()?;
        self.handle.in_flight.wait_empty(timeout);
        Ok(())
    }
}

impl Drop for NatsSink {
    fn drop(&mut self) {
        let writer = &self.writer;
        self.reply_thread.stop(|| drop(writer.lock().map(|s| s.shutdown(Shutdown::Both))));
    }
}

/// One consumer connection with a push consumer per assigned partition.
pub struct NatsReader {
    connection: Mutex<Connection>,
}

impl Reader for NatsReader {
    fn run(&self, clock: &MonotonicClock, stats: &ConsumeStats, stop: &AtomicBool) {
        let mut guard = self.connection.lock().expect("reader lock poisoned");
        let connection = &mut *guard;
        while !stop.load(Ordering::Relaxed) {
            let result = read_and_dispatch(
                &connection.address,
                &mut connection.reader,
                &mut connection.inbound,
                &connection.writer,
                |frame| {
                    // Deliveries carry the record's original subject, not the deliver subject;
                    // after set-up the deliver subscriptions are the only ones left, and
                    // ConsumeStats skips anything that is not this run's.
                    if let Frame::Msg { payload, .. } = frame {
                        stats.on_record(payload, clock.now_ns());
                    }
                },
            );
            if let Err(error) = result {
                tracing::warn!(%error, "nats consumer stops");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_across_partial_reads() {
        let wire = b"INFO {}\r\nMSG a.b 1 _INBOX.x 5\r\nhe\r\no\r\nPING\r\nMSG c 2 3\r\nxyz\r\n-ERR 'bad'\r\n";
        let mut inbound = Inbound::default();
        let mut seen: Vec<String> = Vec::new();
        // Feed one byte at a time: every split point must be handled.
        for byte in wire.iter() {
            inbound.extend(&[*byte]);
            inbound
                .drain(|frame| {
                    seen.push(match frame {
                        Frame::Msg { subject, payload } => format!("{subject}={}", String::from_utf8_lossy(payload)),
                        Frame::Ping => "PING".into(),
                        Frame::Error(line) => line.into(),
                        Frame::Other => "other".into(),
                    })
                })
                .unwrap();
        }
        assert_eq!(seen, vec!["other", "a.b=he\r\no", "PING", "c=xyz", "-ERR 'bad'"]);
        assert!(Inbound::default().drain(|_| {}).is_ok());
        let mut bad = Inbound::default();
        bad.extend(b"MSG a 1 99999999999\r\n");
        assert!(bad.drain(|_| {}).is_err());
    }

    #[test]
    fn api_errors_except_existing_streams_are_reported() {
        assert_eq!(api_error(br#"{"type":"x","config":{}}"#), None);
        assert_eq!(api_error(br#"{"error":{"code":400,"err_code":10058,"description":"in use"}}"#), None);
        assert!(api_error(br#"{"error":{"code":503,"err_code":10039,"description":"js off"}}"#).is_some());
    }
}
