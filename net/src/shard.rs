//! One core's share of the broker: its partitions, their producer state, its copy of the
//! partition→core table, and the mesh RPC that carries work to other cores.
//!
//! Any core may receive any request (SO_REUSEPORT). The receiving core splits the request by
//! owner core using its [`PartitionTable`], sends one [`CoreRequest`] per owner (batched: all of
//! that owner's partitions in one message) and merges the [`CoreReply`]s. Work for the local
//! core skips the mesh. Core 0 also hosts the controller (topics, configs, groups, producer ids).
//!
//! Messages cross cores by value (`Send`), never as shared mutable state.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use glommio::channels::channel_mesh::Senders;
use kafka_protocol::messages::{RequestKind, ResponseKind};

use rill_engine::sync::LocalMutex;

use crate::backend::{
    AppendBatches, AppendOutcome, Durable, PartitionOffsets, PartitionStore, ReadOutcome, StorageError,
    TopicConfig, TopicPartition,
};
use crate::controller::ControllerState;
use crate::errors::KafkaCode;
use crate::frame::FrameLimits;
use crate::metrics::CoreMetrics;
use crate::producer_state::{ProducerStates, RememberedBatch, SequenceVerdict, PRODUCER_STATE_SCAN_RECORDS};
use crate::table::PartitionTable;

/// Broker settings every core shares (copied to each core at start).
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// This node's broker id.
    pub node_id: i32,
    /// Host advertised in Metadata.
    pub advertised_host: String,
    /// Port advertised in Metadata.
    pub advertised_port: i32,
    /// Create unknown topics on Metadata/Produce requests that allow it.
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics and of CreateTopics with -1.
    pub default_partitions: i32,
    /// Topic config defaults.
    pub topic_defaults: TopicConfig,
    /// Request frame limits.
    pub frame_limits: FrameLimits,
    /// Memory budget of each core's in-memory store, in bytes.
    pub store_bytes_max_per_core: u64,
    /// Cluster id returned in Metadata and DescribeCluster.
    pub cluster_id: String,
    /// Longest long-poll a Fetch may ask for, in milliseconds.
    pub fetch_wait_ms_max: u64,
    /// Open client connections per core before new ones are refused.
    pub connections_per_core_max: usize,
    /// Idle limit between requests and deadline for completing one.
    pub frame_timeouts: crate::frame::FrameTimeouts,
    /// Bytes of requests each core reads and holds before it stops reading more (Kafka's
    /// `queued.max.request.bytes`): bounds the memory that many clients can pin at once.
    pub request_bytes_queued_max_per_core: u64,
    /// Requests of one connection processed at once (responses still leave in request order).
    pub requests_in_flight_per_connection_max: usize,
    /// Open connections one client IP may hold on the node (Kafka's `max.connections.per.ip`).
    pub connections_per_ip_max: usize,
    /// The node's count of open connections per client IP, shared by every core's clone.
    pub connections_per_ip: std::sync::Arc<ConnectionsPerIp>,
}

/// Open Kafka connections per client IP across the node's cores (touched once per accept and
/// close, so a mutex is fine).
#[derive(Debug, Default)]
pub struct ConnectionsPerIp {
    counts: std::sync::Mutex<HashMap<std::net::IpAddr, usize>>,
}

impl ConnectionsPerIp {
    /// Counts a new connection from `ip` unless it already holds `max`; false when refused.
    pub fn try_acquire(&self, ip: std::net::IpAddr, max: usize) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            return false;
        }
        *count += 1;
        true
    }

    /// A connection from `ip` closed.
    pub fn release(&self, ip: std::net::IpAddr) {
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&ip);
            }
        }
    }
}

/// Default of [`BrokerConfig::request_bytes_queued_max_per_core`]: 512 MiB.
pub const REQUEST_BYTES_QUEUED_MAX_PER_CORE_DEFAULT: u64 = 512 * 1024 * 1024;

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            node_id: 0,
            advertised_host: "127.0.0.1".to_string(),
            advertised_port: 9092,
            auto_create_topics: false,
            default_partitions: 1,
            topic_defaults: TopicConfig::default(),
            frame_limits: FrameLimits::default(),
            store_bytes_max_per_core: 1 << 30,
            cluster_id: "rill-cluster".to_string(),
            fetch_wait_ms_max: 30_000,
            connections_per_core_max: 10_000,
            frame_timeouts: crate::frame::FrameTimeouts::default(),
            request_bytes_queued_max_per_core: REQUEST_BYTES_QUEUED_MAX_PER_CORE_DEFAULT,
            requests_in_flight_per_connection_max: crate::server::CONNECTION_REQUESTS_IN_FLIGHT_DEFAULT,
            connections_per_ip_max: usize::MAX,
            connections_per_ip: std::sync::Arc::default(),
        }
    }
}

/// Batches for one partition, validated by the receiving core.
#[derive(Debug, Clone)]
pub struct ProduceItem {
    /// The partition.
    pub partition: TopicPartition,
    /// Its batches.
    pub batches: AppendBatches,
}

/// A read of one partition.
#[derive(Debug, Clone)]
pub struct ReadItem {
    /// The partition.
    pub partition: TopicPartition,
    /// First offset wanted.
    pub offset: i64,
    /// Partition byte budget.
    pub max_bytes: usize,
}

/// A failed read, with the offsets a client needs to recover (OFFSET_OUT_OF_RANGE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadFailure {
    /// Error code.
    pub code: KafkaCode,
    /// Offsets, when the partition exists.
    pub offsets: Option<PartitionOffsets>,
}

/// Work sent to a partition's owner core (or the controller on core 0).
#[derive(Debug)]
pub enum CoreRequest {
    /// Append to owned partitions.
    Produce(Vec<ProduceItem>),
    /// Read owned partitions.
    Read(Vec<ReadItem>),
    /// Resolve when any partition's high watermark rises above the given one, or after `timeout`.
    WaitForData {
        /// (partition, high watermark seen).
        partitions: Vec<(TopicPartition, i64)>,
        /// Longest wait.
        timeout: Duration,
    },
    /// ListOffsets: -1 latest, -2 earliest, else a timestamp.
    ListOffsets(Vec<(TopicPartition, i64)>),
    /// Create owned partitions.
    CreatePartitions {
        /// Partitions to create.
        partitions: Vec<TopicPartition>,
        /// Their config.
        config: TopicConfig,
    },
    /// Delete owned partitions.
    DeletePartitions(Vec<TopicPartition>),
    /// Change the config of owned partitions.
    UpdateConfig {
        /// Partitions.
        partitions: Vec<TopicPartition>,
        /// New config.
        config: TopicConfig,
    },
    /// Install a newer partition table.
    InstallTable(Arc<PartitionTable>),
    /// A Kafka request only the controller (core 0) serves.
    Controller {
        /// The request (boxed: it is much larger than the other variants, and every mesh slot is
        /// as large as the largest variant).
        request: Box<RequestKind>,
        /// Its version.
        version: i16,
        /// Client id, for group members.
        client_id: String,
        /// Client address, for group members.
        client_host: String,
    },
    /// Create these topics with defaults if missing (auto creation), on core 0.
    AutoCreateTopics(Vec<String>),
    /// Report this core's counters.
    Metrics,
    /// Report partitions that failed or refused to open.
    Health,
}

/// Answer to a [`CoreRequest`], in the same partition order.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // Kafka responses are the common case on the controller path.
pub enum CoreReply {
    /// Per partition append outcome.
    Produce(Vec<Result<AppendOutcome, KafkaCode>>),
    /// Per partition read outcome.
    Read(Vec<Result<ReadOutcome, ReadFailure>>),
    /// Per partition (offset, timestamp).
    ListOffsets(Vec<Result<(i64, i64), KafkaCode>>),
    /// Per partition code.
    Codes(Vec<KafkaCode>),
    /// Controller answer.
    Kafka(ResponseKind),
    /// Done, nothing to report.
    Done,
    /// Counters of the core.
    Metrics(crate::metrics::MetricsSnapshot),
    /// Failed partitions of the core, with the reason.
    Health(Vec<(TopicPartition, String)>),
}

/// What travels on the mesh.
#[derive(Debug)]
pub enum Envelope {
    /// Work for the receiver.
    Request {
        /// Caller-chosen id echoed in the reply.
        id: u64,
        /// Sending core.
        from: usize,
        /// The work.
        request: CoreRequest,
    },
    /// Answer to a request the receiver sent.
    Reply {
        /// The request's id.
        id: u64,
        /// The answer.
        reply: CoreReply,
    },
}

/// Capacity of each mesh channel, in messages (bounded; senders wait when full).
pub const MESH_CHANNEL_MESSAGES_MAX: usize = 1024;

/// A future that borrows the shard.
pub type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// One core's broker state.
pub struct Shard<S: PartitionStore> {
    /// This core's index.
    pub core: usize,
    /// Number of cores.
    pub cores: usize,
    /// This core's partitions.
    pub store: S,
    /// Shared settings.
    pub config: BrokerConfig,
    /// Counters.
    pub metrics: CoreMetrics,
    table: RefCell<Arc<PartitionTable>>,
    producers: RefCell<HashMap<TopicPartition, ProducerStates>>,
    /// Serialises check-append-record of idempotent batches per partition.
    idempotence_locks: RefCell<HashMap<TopicPartition, Rc<LocalMutex>>>,
    mesh: Option<Senders<Envelope>>,
    pending: RefCell<HashMap<u64, oneshot::Sender<CoreReply>>>,
    next_request_id: Cell<u64>,
    pub(crate) controller: Option<RefCell<ControllerState>>,
}

impl<S: PartitionStore + 'static> Shard<S> {
    /// A shard for `core` of `cores`. Core 0 hosts the controller.
    pub fn new(core: usize, cores: usize, store: S, config: BrokerConfig, mesh: Option<Senders<Envelope>>) -> Self {
        assert!(core < cores);
        assert_eq!(mesh.is_some(), cores > 1);
        Self {
            core,
            cores,
            store,
            metrics: CoreMetrics::default(),
            table: RefCell::new(Arc::new(PartitionTable::new(cores))),
            producers: RefCell::default(),
            idempotence_locks: RefCell::default(),
            mesh,
            pending: RefCell::default(),
            next_request_id: Cell::new(0),
            controller: (core == 0).then(|| RefCell::new(ControllerState::new(cores))),
            config,
        }
    }

    /// This core's current partition table.
    pub fn table(&self) -> Arc<PartitionTable> {
        self.table.borrow().clone()
    }

    /// Run `request` on `core`: directly if local, else over the mesh.
    pub fn call(&self, core: usize, request: CoreRequest) -> LocalFuture<'_, CoreReply> {
        assert!(core < self.cores);
        if core == self.core {
            return Box::pin(self.handle_core_request(request));
        }
        Box::pin(async move {
            let mesh = self.mesh.as_ref().expect("more than one core has a mesh");
            let id = self.next_request_id.get();
            self.next_request_id.set(id + 1);
            let (sender, receiver) = oneshot::channel();
            self.pending.borrow_mut().insert(id, sender);
            self.metrics.mesh_messages_sent.set(self.metrics.mesh_messages_sent.get() + 1);
            let envelope = Envelope::Request { id, from: self.core, request };
            if mesh.send_to(core, envelope).await.is_err() {
                self.pending.borrow_mut().remove(&id);
                tracing::error!(core, "mesh send failed (peer core stopped)");
                return CoreReply::Done;
            }
            receiver.await.unwrap_or(CoreReply::Done)
        })
    }

    /// Handle one message arriving from another core.
    pub async fn handle_envelope(self: Rc<Self>, envelope: Envelope) {
        match envelope {
            Envelope::Reply { id, reply } => {
                if let Some(sender) = self.pending.borrow_mut().remove(&id) {
                    // The caller may have given up (fetch long-poll raced a timer); that is fine.
                    let _ = sender.send(reply);
                }
            }
            Envelope::Request { id, from, request } => {
                let shard = self.clone();
                glommio::spawn_local(async move {
                    let reply = shard.handle_core_request(request).await;
                    let mesh = shard.mesh.as_ref().expect("mesh exists when messages arrive");
                    if mesh.send_to(from, Envelope::Reply { id, reply }).await.is_err() {
                        tracing::warn!(core = from, "mesh reply dropped: peer core stopped");
                    }
                })
                .detach();
            }
        }
    }

    /// Close the mesh senders (shutdown).
    pub fn close_mesh(&self) {
        if let Some(mesh) = &self.mesh {
            mesh.close();
        }
    }

    /// Execute work that this core owns.
    pub async fn handle_core_request(&self, request: CoreRequest) -> CoreReply {
        match request {
            CoreRequest::Produce(items) => {
                let appends = items.into_iter().map(|item| self.produce_one(item));
                CoreReply::Produce(futures::future::join_all(appends).await)
            }
            CoreRequest::Read(items) => {
                let reads = items.into_iter().map(|item| self.read_one(item));
                CoreReply::Read(futures::future::join_all(reads).await)
            }
            CoreRequest::WaitForData { partitions, timeout } => {
                self.wait_for_data(partitions, timeout).await;
                CoreReply::Done
            }
            CoreRequest::ListOffsets(items) => {
                let lookups = items.into_iter().map(|(partition, timestamp)| self.list_offset(partition, timestamp));
                CoreReply::ListOffsets(futures::future::join_all(lookups).await)
            }
            CoreRequest::CreatePartitions { partitions, config } => {
                let mut codes = Vec::with_capacity(partitions.len());
                for partition in partitions {
                    let mut result = self.store.create_partition(&partition, &config).await;
                    if result.is_ok() {
                        result = self.rebuild_producer_state(&partition).await;
                    }
                    codes.push(self.storage_code(&partition, result.err()));
                }
                CoreReply::Codes(codes)
            }
            CoreRequest::DeletePartitions(partitions) => {
                let mut codes = Vec::with_capacity(partitions.len());
                for partition in partitions {
                    let result = self.store.delete_partition(&partition).await;
                    self.producers.borrow_mut().remove(&partition);
                    self.idempotence_locks.borrow_mut().remove(&partition);
                    codes.push(self.storage_code(&partition, result.err()));
                }
                CoreReply::Codes(codes)
            }
            CoreRequest::UpdateConfig { partitions, config } => {
                let mut codes = Vec::with_capacity(partitions.len());
                for partition in partitions {
                    let result = self.store.update_config(&partition, &config).await;
                    codes.push(self.storage_code(&partition, result.err()));
                }
                CoreReply::Codes(codes)
            }
            CoreRequest::InstallTable(table) => {
                let mut current = self.table.borrow_mut();
                // Tables only move forward; a late, older broadcast is ignored.
                if table.version > current.version {
                    *current = table;
                }
                CoreReply::Done
            }
            CoreRequest::Controller { request, version, client_id, client_host } => {
                CoreReply::Kafka(self.controller_handle(*request, version, client_id, client_host).await)
            }
            CoreRequest::AutoCreateTopics(names) => {
                self.controller_auto_create(names).await;
                CoreReply::Done
            }
            CoreRequest::Metrics => {
                let mut snapshot = self.metrics.snapshot(self.core);
                snapshot.storage = self.store.storage_stats();
                snapshot.failed_partitions = self.store.failed_partitions().len() as u64;
                CoreReply::Metrics(snapshot)
            }
            CoreRequest::Health => CoreReply::Health(self.store.failed_partitions()),
        }
    }

    /// Rebuild the idempotence window of every producer of a (re)opened partition from the tail
    /// of its log, so a producer retrying a batch after a restart gets its original offsets.
    async fn rebuild_producer_state(&self, partition: &TopicPartition) -> Result<(), StorageError> {
        let batches = self.store.recent_batches(partition, PRODUCER_STATE_SCAN_RECORDS).await?;
        if batches.is_empty() {
            return Ok(());
        }
        let mut states = ProducerStates::default();
        for batch in &batches {
            assert!(batch.producer_id >= 0);
            let last_offset = batch.base_offset + i64::from(batch.last_offset_delta);
            let remembered = RememberedBatch {
                first_sequence: batch.base_sequence,
                last_sequence: crate::producer_state::last_sequence(batch.base_sequence, batch.last_offset_delta),
                base_offset: batch.base_offset,
                last_offset,
            };
            states.record(batch.producer_id, batch.producer_epoch, remembered);
        }
        tracing::info!(core = self.core, %partition, batches = batches.len(), "rebuilt producer state from the log");
        self.producers.borrow_mut().insert(partition.clone(), states);
        Ok(())
    }

    fn storage_code(&self, partition: &TopicPartition, error: Option<StorageError>) -> KafkaCode {
        match error {
            None => KafkaCode::None,
            Some(error) => {
                tracing::warn!(core = self.core, %partition, %error, "partition operation failed");
                KafkaCode::from(&error)
            }
        }
    }

    async fn produce_one(&self, item: ProduceItem) -> Result<AppendOutcome, KafkaCode> {
        let first = item.batches.headers[0];
        if !first.is_idempotent() {
            let (outcome, durable) = self.append_logged(&item.partition, item.batches).await?;
            return Self::when_durable(&item.partition, outcome, durable).await;
        }
        let lock = self
            .idempotence_locks
            .borrow_mut()
            .entry(item.partition.clone())
            .or_insert_with(|| Rc::new(LocalMutex::default()))
            .clone();
        // FIFO: pipelined requests of one producer reach the log in the order they arrived.
        let serialised = lock.lock().await;
        let last = *item.batches.headers.last().expect("at least one batch");
        let verdict = self
            .producers
            .borrow()
            .get(&item.partition)
            .map_or(SequenceVerdict::Append, |states| {
                states.check(first.producer_id, first.producer_epoch, first.base_sequence, last.last_sequence())
            });
        match verdict {
            SequenceVerdict::Append => {}
            SequenceVerdict::Duplicate(batch) => {
                tracing::info!(partition = %item.partition, producer_id = first.producer_id,
                    sequence = first.base_sequence, "duplicate idempotent batch: returning original offsets");
                let offsets = self.store.offsets(&item.partition).map_err(|error| KafkaCode::from(&error))?;
                return Ok(AppendOutcome {
                    base_offset: batch.base_offset,
                    last_offset: batch.last_offset,
                    log_append_time_ms: -1,
                    log_start_offset: offsets.log_start_offset,
                });
            }
            SequenceVerdict::OutOfOrder { expected } => {
                tracing::warn!(partition = %item.partition, producer_id = first.producer_id,
                    sequence = first.base_sequence, expected, "out of order sequence");
                return Err(KafkaCode::OutOfOrderSequenceNumber);
            }
            SequenceVerdict::FencedEpoch { current } => {
                tracing::warn!(partition = %item.partition, producer_id = first.producer_id,
                    epoch = first.producer_epoch, current, "fenced producer epoch");
                return Err(KafkaCode::InvalidProducerEpoch);
            }
        }
        let (outcome, durable) = self.append_logged(&item.partition, item.batches).await?;
        let remembered = RememberedBatch {
            first_sequence: first.base_sequence,
            last_sequence: last.last_sequence(),
            base_offset: outcome.base_offset,
            last_offset: outcome.last_offset,
        };
        self.producers
            .borrow_mut()
            .entry(item.partition.clone())
            .or_default()
            .record(first.producer_id, first.producer_epoch, remembered);
        // The sequence is accepted once staged (a retry is a duplicate from here on); the
        // answer waits for durability outside the lock, so one group commit covers the
        // producer's pipelined requests. If durability fails the log fails, and the producer
        // state is rebuilt from the durable log after a restart.
        drop(serialised);
        Self::when_durable(&item.partition, outcome, durable).await
    }

    /// Stages an append; returns the outcome and the durability future.
    async fn append_logged(&self, partition: &TopicPartition, batches: AppendBatches) -> Result<(AppendOutcome, Durable), KafkaCode> {
        let bytes = batches.bytes.len() as u64;
        match self.store.append_staged(partition, batches).await {
            Ok(staged) => {
                self.metrics.bytes_in.set(self.metrics.bytes_in.get() + bytes);
                Ok(staged)
            }
            Err(error) => {
                tracing::warn!(core = self.core, %partition, %error, "append failed");
                Err(KafkaCode::from(&error))
            }
        }
    }

    async fn when_durable(partition: &TopicPartition, outcome: AppendOutcome, durable: Durable) -> Result<AppendOutcome, KafkaCode> {
        match durable.await {
            Ok(()) => Ok(outcome),
            Err(error) => {
                tracing::warn!(%partition, %error, "append not made durable");
                Err(KafkaCode::from(&error))
            }
        }
    }

    async fn read_one(&self, item: ReadItem) -> Result<ReadOutcome, ReadFailure> {
        match self.store.read(&item.partition, item.offset, item.max_bytes).await {
            Ok(outcome) => {
                self.metrics.bytes_out.set(self.metrics.bytes_out.get() + outcome.records.len() as u64);
                Ok(outcome)
            }
            Err(error) => {
                let code = KafkaCode::from(&error);
                if code != KafkaCode::OffsetOutOfRange {
                    tracing::warn!(core = self.core, partition = %item.partition, %error, "read failed");
                }
                Err(ReadFailure { code, offsets: self.store.offsets(&item.partition).ok() })
            }
        }
    }

    async fn list_offset(&self, partition: TopicPartition, timestamp: i64) -> Result<(i64, i64), KafkaCode> {
        let offsets = self.store.offsets(&partition).map_err(|error| KafkaCode::from(&error))?;
        match timestamp {
            -1 => Ok((offsets.high_watermark, -1)),
            -2 => Ok((offsets.log_start_offset, -1)),
            _ if timestamp < 0 => Err(KafkaCode::InvalidRequest),
            _ => match self.store.offset_for_timestamp(&partition, timestamp).await {
                Ok(Some(found)) => Ok((found.offset, found.timestamp)),
                Ok(None) => Ok((-1, -1)),
                Err(error) => Err(KafkaCode::from(&error)),
            },
        }
    }

    /// Wait until any partition has data beyond what the fetcher saw, or the timeout. Woken by
    /// appends through [`PartitionStore::wait_for_data`], never by polling.
    async fn wait_for_data(&self, partitions: Vec<(TopicPartition, i64)>, timeout: Duration) {
        let mut waits: Vec<LocalFuture<'static, ()>> = Vec::with_capacity(partitions.len() + 1);
        for (partition, high_watermark) in &partitions {
            match self.store.wait_for_data(partition, *high_watermark) {
                Ok(wait) => waits.push(Box::pin(wait)),
                // Deleted meanwhile: return so the fetcher reports the error.
                Err(_) => return,
            }
        }
        waits.push(Box::pin(glommio::timer::sleep(timeout)));
        futures::future::select_all(waits).await;
    }
}

#[cfg(test)]
mod connections_per_ip_tests {
    use super::ConnectionsPerIp;

    #[test]
    fn counts_per_address_and_releases() {
        let counts = ConnectionsPerIp::default();
        let (a, b): (std::net::IpAddr, std::net::IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        assert!(counts.try_acquire(a, 2));
        assert!(counts.try_acquire(a, 2));
        assert!(!counts.try_acquire(a, 2), "a third from one address");
        assert!(counts.try_acquire(b, 2), "another address has its own count");
        counts.release(a);
        assert!(counts.try_acquire(a, 2));
    }
}
