//! Redis Streams as a peer: `XADD` to produce, `XREAD BLOCK` to consume, over RESP2.
//!
//! Mapping: partition `p` of topic `t` is the stream key `t:p`; each record is one entry with one
//! field `v` holding the record value. Producers pipeline: a send writes one `XADD` and returns;
//! a reply thread per connection matches replies to sends in order (Redis answers each
//! connection in order) and reports the acknowledgement. What an acknowledgement means depends on
//! the server's `appendfsync` setting, which the caller states in the run's label.

use std::collections::VecDeque;
use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::client::{filler, partition_of, LoadClient, ProducerHandle, Reader, ReplyThread};
use crate::consumer::ConsumeStats;
use crate::error::BenchError;
use crate::payload::Header;
use crate::producer::{Clock, MonotonicClock, RecordSink};
use crate::resp::{encode_command, read_value, Value};
use crate::workload::Workload;

/// Longest a consumer's `XREAD` blocks server-side: bounds how late it notices `stop`.
const XREAD_BLOCK_MS: &str = "100";
/// Most entries one `XREAD` returns.
const XREAD_COUNT: &str = "10000";
/// Socket read timeout: a server silent for this long has failed the run.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

fn io_error(operation: &'static str, address: &str, source: std::io::Error) -> BenchError {
    BenchError::Io { operation, path: address.into(), source }
}

/// A Redis server as a [`LoadClient`].
#[derive(Debug, Clone)]
pub struct RedisClient {
    address: String,
}

impl RedisClient {
    /// A client of the server at `HOST:PORT`.
    pub fn new(address: &str) -> Self {
        RedisClient { address: address.into() }
    }

    fn connect(&self) -> Result<TcpStream, BenchError> {
        let stream = TcpStream::connect(&self.address).map_err(|e| io_error("connecting to redis", &self.address, e))?;
        stream.set_nodelay(true).map_err(|e| io_error("setting TCP_NODELAY", &self.address, e))?;
        stream.set_read_timeout(Some(READ_TIMEOUT)).map_err(|e| io_error("setting timeout", &self.address, e))?;
        Ok(stream)
    }

    fn call(&self, stream: &TcpStream, args: &[&[u8]]) -> Result<Value, BenchError> {
        let mut out = Vec::new();
        encode_command(&mut out, args);
        (&*stream).write_all(&out).map_err(|e| io_error("writing to redis", &self.address, e))?;
        let value = read_value(&mut BufReader::new(stream)).map_err(|e| io_error("reading from redis", &self.address, e))?;
        match value {
            Value::Error(message) => Err(BenchError::InvalidWorkload(format!("redis refused a command: {message}"))),
            value => Ok(value),
        }
    }
}

fn stream_key(topic: &str, partition: i32) -> String {
    format!("{topic}:{partition}")
}

impl LoadClient for RedisClient {
    type Sink = RedisSink;
    type Reader = RedisReader;

    fn describe(&self) -> String {
        "rill-bench RESP2 client (pipelined XADD, XREAD BLOCK)".into()
    }

    fn prepare(&self, _topic: &str, _partitions: i32) -> Result<(), BenchError> {
        // Streams are created by their first XADD; only check that the server answers.
        let stream = self.connect()?;
        self.call(&stream, &[b"PING"]).map(|_| ())
    }

    fn reader(&self, topic: &str, partitions: &[i32]) -> Result<RedisReader, BenchError> {
        let stream = self.connect()?;
        let mut keys = Vec::with_capacity(partitions.len());
        let mut last_ids = Vec::with_capacity(partitions.len());
        for &partition in partitions {
            let key = stream_key(topic, partition);
            // Start after the newest existing entry, so only this run's records are read.
            let newest = self.call(&stream, &[b"XREVRANGE", key.as_bytes(), b"+", b"-", b"COUNT", b"1"])?;
            last_ids.push(first_entry_id(&newest).unwrap_or_else(|| "0-0".into()));
            keys.push(key);
        }
        Ok(RedisReader { address: self.address.clone(), stream, keys, last_ids: Mutex::new(last_ids) })
    }

    fn sink(&self, workload: &Workload, topic: &str, handle: ProducerHandle) -> Result<RedisSink, BenchError> {
        let stream = self.connect()?;
        let replies = stream.try_clone().map_err(|e| io_error("cloning socket", &self.address, e))?;
        let pending: Arc<Mutex<VecDeque<u64>>> = Arc::default();
        let reply_thread = {
            let (pending, handle) = (pending.clone(), handle.clone());
            ReplyThread::spawn("redis-replies", move |closing| read_replies(replies, &pending, closing, &handle))
                .map_err(|e| io_error("spawning reply thread", "redis", e))?
        };
        Ok(RedisSink {
            address: self.address.clone(),
            stream,
            pending,
            reply_thread,
            keys: (0..workload.partitions).map(|p| stream_key(topic, p)).collect(),
            value: filler(workload.record_bytes, handle.run_id ^ (u64::from(handle.producer_index) << 32)),
            buffer: Vec::with_capacity(workload.record_bytes + 128),
            handle,
        })
    }
}

/// The id of the first entry of an XRANGE-style reply.
fn first_entry_id(value: &Value) -> Option<String> {
    let Value::Array(Some(entries)) = value else { return None };
    let Value::Array(Some(entry)) = entries.first()? else { return None };
    let Value::Bulk(Some(id)) = entry.first()? else { return None };
    String::from_utf8(id.clone()).ok()
}

fn read_replies(stream: TcpStream, pending: &Mutex<VecDeque<u64>>, closing: &AtomicBool, handle: &ProducerHandle) {
    let mut input = BufReader::new(stream);
    loop {
        let value = match read_value(&mut input) {
            Ok(value) => value,
            Err(error) => {
                if !closing.load(Ordering::Acquire) {
                    tracing::warn!(%error, "redis reply stream ended");
                }
                return;
            }
        };
        let ack_ns = handle.clock.now_ns();
        let Some(intended_ns) = pending.lock().expect("pending lock poisoned").pop_front() else {
            tracing::warn!(?value, "redis reply without a pending command");
            return;
        };
        handle.in_flight.remove();
        handle.stats.on_ack(intended_ns, ack_ns, !matches!(value, Value::Error(_)));
    }
}

/// One pipelined producer connection: the XADDs handed over in one wake-up of the generator
/// leave in one write.
pub struct RedisSink {
    address: String,
    stream: TcpStream,
    pending: Arc<Mutex<VecDeque<u64>>>,
    reply_thread: ReplyThread,
    keys: Vec<String>,
    value: Vec<u8>,
    buffer: Vec<u8>,
    handle: ProducerHandle,
}

impl RecordSink for RedisSink {
    fn send(&mut self, index: u64, intended_ns: u64) -> Result<(), BenchError> {
        let h = &self.handle;
        Header { run_id: h.run_id, intended_ns, producer: h.producer_index }.write(&mut self.value);
        let partitions = i32::try_from(self.keys.len()).expect("validated partition count");
        let key = &self.keys[partition_of(index, h.producer_index, partitions) as usize];
        encode_command(&mut self.buffer, &[b"XADD", key.as_bytes(), b"*", b"v", &self.value]);
        // Queue before writing: the reply may arrive before write_all returns.
        self.pending.lock().expect("pending lock poisoned").push_back(intended_ns);
        Ok(())
    }

    fn write_buffered(&mut self) -> Result<(), BenchError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let written = (&self.stream).write_all(&self.buffer);
        self.buffer.clear();
        written.map_err(|e| io_error("writing XADD", &self.address, e))
    }

    fn flush(&mut self, timeout: Duration) -> Result<(), BenchError> {
        self.write_buffered()?;
        self.handle.in_flight.wait_empty(timeout);
        Ok(())
    }
}

impl Drop for RedisSink {
    fn drop(&mut self) {
        let stream = &self.stream;
        self.reply_thread.stop(|| drop(stream.shutdown(Shutdown::Both)));
    }
}

/// One consumer connection reading its partitions' streams.
pub struct RedisReader {
    address: String,
    stream: TcpStream,
    keys: Vec<String>,
    last_ids: Mutex<Vec<String>>,
}

impl Reader for RedisReader {
    fn run(&self, clock: &MonotonicClock, stats: &ConsumeStats, stop: &AtomicBool) {
        let mut last_ids = self.last_ids.lock().expect("reader lock poisoned");
        let mut input = BufReader::new(&self.stream);
        let mut command = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let mut args: Vec<&[u8]> = vec![b"XREAD", b"COUNT", XREAD_COUNT.as_bytes(), b"BLOCK"];
            args.extend([XREAD_BLOCK_MS.as_bytes(), b"STREAMS"]);
            args.extend(self.keys.iter().map(|k| k.as_bytes()));
            args.extend(last_ids.iter().map(|id| id.as_bytes()));
            command.clear();
            encode_command(&mut command, &args);
            let reply = (&self.stream).write_all(&command).and_then(|()| read_value(&mut input));
            let read_ns = clock.now_ns();
            match reply {
                Ok(Value::Array(Some(streams))) => {
                    for (key, entries) in streams.iter().filter_map(stream_entries) {
                        let slot = self.keys.iter().position(|k| k.as_bytes() == key).expect("asked for this key");
                        for (id, value) in entries {
                            stats.on_record(value, read_ns);
                            last_ids[slot] = String::from_utf8_lossy(id).into_owned();
                        }
                    }
                }
                Ok(Value::Array(None)) => {}
                Ok(other) => {
                    tracing::warn!(?other, address = self.address, "unexpected XREAD reply; consumer stops");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, address = self.address, "XREAD failed; consumer stops");
                    return;
                }
            }
        }
    }
}

/// (entry id, record value) pairs of one stream.
type Entries<'a> = Vec<(&'a [u8], &'a [u8])>;

/// `[key, [[id, [field, value, ...]], ...]]` → key and (id, first field's value) pairs.
fn stream_entries(stream: &Value) -> Option<(&[u8], Entries<'_>)> {
    let Value::Array(Some(parts)) = stream else { return None };
    let (Some(Value::Bulk(Some(key))), Some(Value::Array(Some(entries)))) = (parts.first(), parts.get(1)) else {
        return None;
    };
    let pairs = entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(Some(entry)) = entry else { return None };
            let (Some(Value::Bulk(Some(id))), Some(Value::Array(Some(fields)))) = (entry.first(), entry.get(1)) else {
                return None;
            };
            let Some(Value::Bulk(Some(value))) = fields.get(1) else { return None };
            Some((id.as_slice(), value.as_slice()))
        })
        .collect();
    Some((key.as_slice(), pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xread_replies_yield_ids_and_values() {
        let bulk = |b: &[u8]| Value::Bulk(Some(b.to_vec()));
        let entry = Value::Array(Some(vec![bulk(b"5-0"), Value::Array(Some(vec![bulk(b"v"), bulk(b"payload")]))]));
        let stream = Value::Array(Some(vec![bulk(b"t:0"), Value::Array(Some(vec![entry.clone()]))]));
        let (key, pairs) = stream_entries(&stream).unwrap();
        assert_eq!(key, b"t:0");
        assert_eq!(pairs, vec![(&b"5-0"[..], &b"payload"[..])]);
        assert_eq!(first_entry_id(&Value::Array(Some(vec![entry]))), Some("5-0".into()));
        assert_eq!(first_entry_id(&Value::Array(Some(vec![]))), None);
        assert!(stream_entries(&bulk(b"x")).is_none());
    }
}
