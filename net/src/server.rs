//! The thread-per-core runtime: one pinned glommio executor per core, each with its own
//! SO_REUSEPORT Kafka listener, its [`Shard`], and the channel mesh to the other cores. Core 0 also
//! runs the controller's group clock and the admin HTTP endpoint (`/metrics`, `/health`).
//!
//! Shutdown (SIGTERM/SIGINT set the flag passed to [`run`]): every core stops accepting,
//! connections finish the request in flight and close, then the mesh is closed and the executors
//! return.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use thiserror::Error;

use crate::backend::PartitionStore;
use crate::codec::decode_request;
use crate::controller::RestoredMetadata;
use crate::metadata::{remove_orphan_partitions, MetadataStore};
use crate::frame::{read_frame_timed, FrameError};
use crate::disk::DiskStore;
use crate::memory::MemoryStore;
use crate::notify::ChangeSignal;
use crate::shard::{BrokerConfig, CoreReply, CoreRequest, Envelope, Shard, MESH_CHANNEL_MESSAGES_MAX};

/// How often each core checks the process-wide shutdown flag, in milliseconds.
pub const SHUTDOWN_CHECK_MS: u64 = 50;
/// How often core 0 advances the group coordinator's clock, in milliseconds.
pub const GROUP_TICK_MS: u64 = 100;
/// Longest time connections get to finish their request after shutdown starts, in milliseconds.
pub const SHUTDOWN_DRAIN_MS_MAX: u64 = 10_000;
/// Longest wait for the other cores to drain before closing the mesh anyway, in milliseconds.
pub const MESH_CLOSE_WAIT_MS_MAX: u64 = 15_000;
/// Largest admin HTTP request head, in bytes.
pub const ADMIN_REQUEST_BYTES_MAX: usize = 8 * 1024;
/// Longest time an admin client gets to send its request head, in milliseconds.
pub const ADMIN_REQUEST_MS_MAX: u64 = 5_000;
/// Admin connections served at once; more are closed at accept.
pub const ADMIN_CONNECTIONS_MAX: usize = 64;

/// Everything `rill serve` decides.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Broker settings shared by the cores.
    pub broker: BrokerConfig,
    /// Kafka listener address.
    pub kafka_listen: SocketAddr,
    /// Admin HTTP address.
    pub admin_listen: SocketAddr,
    /// One executor (core) per entry, pinned to that CPU: core `i` runs on `cpus[i]`.
    pub cpus: Vec<usize>,
    /// Busy-spin before parking an idle executor, in microseconds (0: park at once).
    pub spin_before_park_us: u64,
    /// Where partitions live.
    pub storage: StorageChoice,
}

impl ServerConfig {
    /// Executors (cores) to run.
    pub fn cores(&self) -> usize {
        self.cpus.len()
    }
}

/// Where a core keeps its partitions.
#[derive(Debug, Clone)]
pub enum StorageChoice {
    /// The engine's direct-I/O logs under `data_dir` (the default), topics and producer-id
    /// blocks in a metadata file under `metadata_dir`, committed offsets in `__consumer_offsets`.
    Disk {
        /// Root of the partition directories.
        data_dir: std::path::PathBuf,
        /// Directory of the metadata file.
        metadata_dir: std::path::PathBuf,
        /// When an append is acknowledged (and what the high watermark means).
        durability: rill_engine::Durability,
        /// Batch cache per core, in bytes.
        cache_bytes_per_core: usize,
        /// With durability `write` or `memory`: how often each core fdatasyncs its logs (Kafka's
        /// `log.flush.interval.ms`), bounding what a power cut can take. `None`: never on a
        /// timer (only on roll and close).
        flush_interval: Option<Duration>,
        /// How often each core writes zeros ahead of its logs' ends
        /// ([`DiskStore::zero_ahead_periodically`]). `None`: never.
        zero_ahead_interval: Option<Duration>,
        /// How the logs' files are opened: direct I/O (the default) or through the page cache.
        file_io: rill_engine::storage::glommio_fs::FileIo,
    },
    /// Bounded memory, nothing survives a restart: no metadata file, no offsets topic (tests,
    /// benchmarks of the front-end).
    Memory {
        /// Budget per core, in bytes.
        bytes_max_per_core: u64,
    },
}

/// Why the server could not run.
#[derive(Debug, Error)]
pub enum ServerError {
    /// An executor failed to start (pinning, io_uring, memlock).
    #[error("starting executor for core {core}: {message}")]
    Executor {
        /// Core index.
        core: usize,
        /// glommio's error.
        message: String,
    },
    /// The metadata file could not be read, or names something we cannot serve.
    #[error("metadata: {0}")]
    Metadata(String),
    /// A listener failed to bind.
    #[error("binding {address} on core {core}: {message}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Core index.
        core: usize,
        /// The OS error.
        message: String,
    },
}

/// Read the metadata file and remove partition directories it does not name (blocking, before
/// any executor starts). `None` with memory storage.
fn load_metadata(config: &ServerConfig) -> Result<Option<RestoredMetadata>, ServerError> {
    let StorageChoice::Disk { data_dir, metadata_dir, .. } = &config.storage else { return Ok(None) };
    let store = MetadataStore::new(metadata_dir);
    let snapshot = store.load(data_dir).map_err(|error| ServerError::Metadata(error.to_string()))?.unwrap_or_default();
    let table = snapshot
        .to_table(config.cores(), &config.broker.topic_defaults)
        .map_err(|reason| ServerError::Metadata(format!("{}: {reason}", store.path().display())))?;
    let removed = remove_orphan_partitions(data_dir, &table).map_err(|error| ServerError::Metadata(error.to_string()))?;
    if let Err(error) = store.ensure_spare() {
        tracing::warn!(%error, "no spare for metadata writes (disk full?)");
    }
    for path in removed {
        tracing::warn!(path = %path.display(), "removed partition data no topic names (unacknowledged creation or interrupted deletion)");
    }
    Ok(Some(RestoredMetadata { store, table, producer_id_limit: snapshot.producer_id_limit }))
}

/// Run the broker until `shutdown` becomes true.
pub fn run(config: ServerConfig, shutdown: Arc<AtomicBool>) -> Result<(), ServerError> {
    assert!(config.cores() >= 1);
    let restored = load_metadata(&config)?;
    // Start-up bookkeeping only: set by core 0 once partitions are reopened and the table is
    // published, so no core accepts clients that would find their topics missing.
    let ready = Arc::new(AtomicBool::new(false));
    let mesh = (config.cores() > 1).then(|| MeshBuilder::<Envelope, _>::full(config.cores(), MESH_CHANNEL_MESSAGES_MAX));
    // Shutdown bookkeeping only (never touched on the data path): cores whose connections drained.
    let drained_cores = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::with_capacity(config.cores());
    for core in 0..config.cores() {
        let config = config.clone();
        let shutdown = shutdown.clone();
        let mesh = mesh.clone();
        let drained_cores = drained_cores.clone();
        let start = Startup { ready: ready.clone(), restored: if core == 0 { restored.clone() } else { None } };
        let mut builder = LocalExecutorBuilder::new(Placement::Fixed(config.cpus[core])).name(&format!("rill-core-{core}"));
        if config.spin_before_park_us > 0 {
            builder = builder.spin_before_park(Duration::from_micros(config.spin_before_park_us));
        }
        let handle = builder
            .spawn(move || async move {
                match config.storage.clone() {
                    StorageChoice::Disk { data_dir, durability, cache_bytes_per_core, flush_interval, zero_ahead_interval, file_io, .. } => {
                        let store = DiskStore::new(data_dir, durability, cache_bytes_per_core).with_file_io(file_io);
                        if let Some(interval) = flush_interval.filter(|_| durability != rill_engine::Durability::Fsync) {
                            glommio::spawn_local(store.flush_periodically(interval)).detach();
                        }
                        if let Some(interval) = zero_ahead_interval {
                            glommio::spawn_local(store.zero_ahead_periodically(interval)).detach();
                        }
                        run_core(core, config, shutdown, mesh, drained_cores, start, store).await
                    }
                    StorageChoice::Memory { bytes_max_per_core } => {
                        let store = MemoryStore::new(bytes_max_per_core);
                        run_core(core, config, shutdown, mesh, drained_cores, start, store).await
                    }
                }
            })
            .map_err(|error| ServerError::Executor { core, message: error.to_string() })?;
        handles.push(handle);
    }
    let mut first_error = None;
    for (core, handle) in handles.into_iter().enumerate() {
        let outcome = handle.join().map_err(|error| ServerError::Executor { core, message: error.to_string() });
        if let Err(error) | Ok(Err(error)) = outcome {
            tracing::error!(core, %error, "core stopped with an error");
            // Make the other cores stop too.
            shutdown.store(true, Ordering::SeqCst);
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// What a core needs to know about start-up.
struct Startup {
    /// Set by core 0 when metadata is restored.
    ready: Arc<AtomicBool>,
    /// For core 0: what to restore.
    restored: Option<RestoredMetadata>,
}

#[allow(clippy::too_many_arguments)] // Wiring of one core; each argument is a distinct piece.
async fn run_core<S: PartitionStore + 'static>(
    core: usize,
    config: ServerConfig,
    shutdown: Arc<AtomicBool>,
    mesh: Option<MeshBuilder<Envelope, glommio::channels::channel_mesh::Full>>,
    drained_cores: Arc<AtomicUsize>,
    startup: Startup,
    store: S,
) -> Result<(), ServerError> {
    let (senders, receivers) = match mesh {
        Some(mesh) => {
            let (senders, receivers) = mesh.join().await.map_err(|error| ServerError::Executor {
                core,
                message: format!("joining the channel mesh: {error}"),
            })?;
            (Some(senders), Some(receivers))
        }
        None => (None, None),
    };
    let shard = Rc::new(Shard::new(core, config.cores(), store, config.broker.clone(), senders));
    if let Some(mut receivers) = receivers {
        for (peer, stream) in receivers.streams() {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                while let Some(envelope) = stream.recv().await {
                    shard.clone().handle_envelope(envelope).await;
                }
                tracing::debug!(core, peer, "mesh stream closed");
            })
            .detach();
        }
    }
    if core == 0 {
        if let Some(restored) = startup.restored {
            shard.controller_restore(restored).await;
        }
        startup.ready.store(true, Ordering::SeqCst);
    } else {
        // Core 0 reopens partitions on every core through the mesh, which this core serves.
        while !startup.ready.load(Ordering::SeqCst) && !shutdown.load(Ordering::SeqCst) {
            glommio::timer::sleep(Duration::from_millis(SHUTDOWN_CHECK_MS)).await;
        }
    }
    let stopping = ChangeSignal::new();
    let stop_generation = stopping.generation();
    {
        let stopping = stopping.clone();
        glommio::spawn_local(async move {
            while !shutdown.load(Ordering::SeqCst) {
                glommio::timer::sleep(Duration::from_millis(SHUTDOWN_CHECK_MS)).await;
            }
            stopping.notify();
        })
        .detach();
    }
    let listener = TcpListener::bind(config.kafka_listen).map_err(|error| ServerError::Bind {
        address: config.kafka_listen,
        core,
        message: error.to_string(),
    })?;
    if core == 0 {
        let admin = TcpListener::bind(config.admin_listen).map_err(|error| ServerError::Bind {
            address: config.admin_listen,
            core,
            message: error.to_string(),
        })?;
        glommio::spawn_local(serve_admin(shard.clone(), admin)).detach();
        let ticking = shard.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(Duration::from_millis(GROUP_TICK_MS)).await;
                ticking.controller_tick();
            }
        })
        .detach();
        tracing::info!(kafka = %config.kafka_listen, admin = %config.admin_listen, cores = config.cores(), cpus = ?config.cpus, "rill broker listening");
    }
    // Every request read holds its size in units of this budget until it has been answered.
    let request_budget = Rc::new(glommio::sync::Semaphore::new(config.broker.request_bytes_queued_max_per_core));
    accept_loop(&shard, &listener, &request_budget, &stopping, stop_generation).await;
    drop(listener);
    // Connections see the signal and close after their current request.
    let drained = async {
        while shard.metrics.connections_open.get() > 0 {
            glommio::timer::sleep(Duration::from_millis(SHUTDOWN_CHECK_MS)).await;
        }
    };
    futures_lite::future::or(drained, glommio::timer::sleep(Duration::from_millis(SHUTDOWN_DRAIN_MS_MAX))).await;
    // Other cores may still forward in-flight requests here: keep serving the mesh until every
    // core has drained its connections.
    drained_cores.fetch_add(1, Ordering::SeqCst);
    let all_drained = async {
        while drained_cores.load(Ordering::SeqCst) < config.cores() {
            glommio::timer::sleep(Duration::from_millis(SHUTDOWN_CHECK_MS)).await;
        }
    };
    futures_lite::future::or(all_drained, glommio::timer::sleep(Duration::from_millis(MESH_CLOSE_WAIT_MS_MAX))).await;
    shard.close_mesh();
    // Everything appended becomes durable and files are cut to their logical size.
    shard.store.close().await;
    tracing::info!(core, "core stopped");
    Ok(())
}

async fn accept_loop<S: PartitionStore + 'static>(
    shard: &Rc<Shard<S>>,
    listener: &TcpListener,
    request_budget: &Rc<glommio::sync::Semaphore>,
    stopping: &ChangeSignal,
    stop_generation: u64,
) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            stopping.changed_since(stop_generation).await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(stream)) => stream,
            Some(Err(error)) => {
                tracing::warn!(core = shard.core, %error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let peer_address = stream.peer_addr().ok();
        let peer = peer_address.map_or_else(|| "unknown".to_string(), |address| address.to_string());
        if shard.metrics.connections_open.get() >= shard.config.connections_per_core_max as u64 {
            // Dropping the stream closes it: the client sees a reset and retries later.
            shard.metrics.connections_refused.set(shard.metrics.connections_refused.get() + 1);
            tracing::warn!(core = shard.core, %peer, limit = shard.config.connections_per_core_max, "connection refused: too many connections");
            continue;
        }
        // Counted only under a limit: unlimited (the default), no core touches the shared map.
        let limited = shard.config.connections_per_ip_max != usize::MAX;
        let ip = peer_address.map(|address| address.ip()).filter(|_| limited);
        let per_ip = shard.config.connections_per_ip.clone();
        if let Some(ip) = ip {
            if !per_ip.try_acquire(ip, shard.config.connections_per_ip_max) {
                shard.metrics.connections_refused.set(shard.metrics.connections_refused.get() + 1);
                tracing::warn!(core = shard.core, %ip, limit = shard.config.connections_per_ip_max, "connection refused: too many connections from this address");
                continue;
            }
        }
        let shard = shard.clone();
        let stopping = stopping.clone();
        let request_budget = request_budget.clone();
        glommio::spawn_local(async move {
            // Released however the connection ends.
            let _per_ip = ip.map(|ip| ReleaseOnDrop { per_ip, ip });
            shard.metrics.connections_open.set(shard.metrics.connections_open.get() + 1);
            serve_connection(&shard, stream, peer, &request_budget, &stopping, stop_generation).await;
            shard.metrics.connections_open.set(shard.metrics.connections_open.get() - 1);
        })
        .detach();
    }
}

/// Gives a connection's slot back to its IP's count when dropped.
struct ReleaseOnDrop {
    per_ip: Arc<crate::shard::ConnectionsPerIp>,
    ip: std::net::IpAddr,
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.per_ip.release(self.ip);
    }
}

/// Default of [`crate::shard::BrokerConfig::requests_in_flight_per_connection_max`]: requests of
/// one connection processed at once. Responses still leave in request order (Kafka requires
/// it); processing several at once lets one group commit cover a producer's pipelined produce
/// requests instead of one fdatasync each.
/// 128 rather than 16: after a disk stall, a pipelining producer's backlog drains at this many
/// requests per group commit (docs/decisions.md).
pub const CONNECTION_REQUESTS_IN_FLIGHT_DEFAULT: usize = 128;
/// Receive buffer of one Kafka connection, in bytes (touched only as far as it is filled).
pub const CONNECTION_READ_BUFFER_BYTES: usize = 16 * 1024;
/// Most response bytes gathered into one write; a response this large is written on its own.
const RESPONSE_COALESCE_BYTES_MAX: usize = 64 * 1024;
/// Highest setting of the per-connection in-flight limit.
pub const CONNECTION_REQUESTS_IN_FLIGHT_LIMIT: usize = 4096;

type PendingResponse = glommio::task::JoinHandle<Result<Option<bytes::Bytes>, crate::codec::CodecError>>;

async fn serve_connection<S: PartitionStore + 'static>(
    shard: &Rc<Shard<S>>,
    stream: TcpStream,
    peer: String,
    request_budget: &Rc<glommio::sync::Semaphore>,
    stopping: &ChangeSignal,
    stop_generation: u64,
) {
    let _ = stream.set_nodelay(true);
    // Small requests arrive many to a packet: read them through a receive buffer, one recv for
    // all of them instead of two per frame. Reads of a large body bypass it (glommio reads a
    // slice at least the buffer's size straight into it).
    let stream = stream.buffered_with(glommio::net::Preallocated::new(CONNECTION_READ_BUFFER_BYTES));
    let limits = shard.config.frame_limits;
    let timeouts = shard.config.frame_timeouts;
    let budget_max = shard.config.request_bytes_queued_max_per_core;
    let (mut reader, writer) = futures_lite::io::split(stream);
    let (queue, responses) = glommio::channels::local_channel::new_bounded::<PendingResponse>(shard.config.requests_in_flight_per_connection_max);
    // The writer stops at the first failed request or write; the reader then stops too.
    let writer_done = ChangeSignal::new();
    let writer_generation = writer_done.generation();
    // Requests read and not yet answered.
    let unanswered = Rc::new(std::cell::Cell::new(0usize));
    let writing = glommio::spawn_local(write_responses(
        shard.clone(),
        writer,
        responses,
        peer.clone(),
        writer_done.clone(),
        unanswered.clone(),
    ));
    loop {
        let next = futures_lite::future::or(
            async {
                let admit = |size: usize| async move {
                    // A frame larger than the whole budget waits for all of it.
                    let units = u64::try_from(size).unwrap_or(u64::MAX).min(budget_max);
                    request_budget.acquire_static_permit(units).await.ok()
                };
                Some(read_frame_timed(&mut reader, limits, timeouts, glommio::timer::sleep, admit).await)
            },
            futures_lite::future::or(
                async {
                    stopping.changed_since(stop_generation).await;
                    None
                },
                async {
                    writer_done.changed_since(writer_generation).await;
                    None
                },
            ),
        )
        .await;
        let (frame, permit) = match next {
            None | Some(Ok(None)) => break,
            Some(Ok(Some(admitted))) => admitted,
            // A long-polling Fetch (or any slow answer) is not the client idling.
            Some(Err(FrameError::Idle(_))) if unanswered.get() > 0 => continue,
            Some(Err(error @ (FrameError::Idle(_) | FrameError::TooSlow { .. }))) => {
                shard.metrics.connections_timed_out.set(shard.metrics.connections_timed_out.get() + 1);
                tracing::info!(core = shard.core, %peer, %error, "closing connection: timed out");
                break;
            }
            Some(Err(error)) => {
                shard.metrics.connections_rejected.set(shard.metrics.connections_rejected.get() + 1);
                tracing::warn!(core = shard.core, %peer, %error, "closing connection: bad framing");
                break;
            }
        };
        let request = match decode_request(frame) {
            Ok(request) => request,
            Err(error) => {
                shard.metrics.connections_rejected.set(shard.metrics.connections_rejected.get() + 1);
                tracing::warn!(core = shard.core, %peer, %error, "closing connection: undecodable request");
                break;
            }
        };
        // Spawned in arrival order: each request reaches its partitions' logs in that order
        // (the paths to the logs' FIFO stage locks have no await before them).
        let (handler_shard, handler_peer) = (shard.clone(), peer.clone());
        let pending = glommio::spawn_local(async move {
            let answer = handler_shard.serve(request, &handler_peer).await;
            // The request's bytes are released once it has been served.
            drop(permit);
            answer
        })
        .detach();
        unanswered.set(unanswered.get() + 1);
        // At the in-flight limit the connection stops reading until the oldest request is
        // answered: count it, since the requests then queued in the socket are not yet timed.
        let paused = queue.is_full().then(std::time::Instant::now);
        if queue.send(pending).await.is_err() {
            break;
        }
        if let Some(paused) = paused {
            let metrics = &shard.metrics;
            metrics.reads_paused.set(metrics.reads_paused.get() + 1);
            let waited = u64::try_from(paused.elapsed().as_micros()).unwrap_or(u64::MAX);
            metrics.reads_paused_us.set(metrics.reads_paused_us.get().saturating_add(waited));
        }
        if stopping.generation() != stop_generation {
            break;
        }
    }
    // Requests already read finish and are answered; then the connection closes.
    drop(queue);
    writing.await;
}

async fn write_responses<S: PartitionStore + 'static>(
    shard: Rc<Shard<S>>,
    mut writer: futures_lite::io::WriteHalf<TcpStream<glommio::net::Preallocated>>,
    responses: glommio::channels::local_channel::LocalReceiver<PendingResponse>,
    peer: String,
    done: ChangeSignal,
    unanswered: Rc<std::cell::Cell<usize>>,
) {
    // Responses that are ready together leave in one write (one wake-up of the client instead
    // of one per response): after the oldest is answered, every later one already answered is
    // appended, in order, until one is still pending.
    let mut out: Vec<u8> = Vec::new();
    let mut next: Option<PendingResponse> = None;
    'connection: loop {
        let pending = match next.take() {
            Some(pending) => pending,
            None => match responses.recv().await {
                Some(pending) => pending,
                None => break,
            },
        };
        let mut answered = pending.await;
        let mut failed = false;
        loop {
            unanswered.set(unanswered.get().saturating_sub(1));
            match answered {
                Some(Ok(Some(bytes))) if bytes.len() >= RESPONSE_COALESCE_BYTES_MAX => {
                    // A large response (a fetch) goes out as it is, after what was gathered.
                    let written = async {
                        if !out.is_empty() {
                            writer.write_all(&out).await?;
                            out.clear();
                        }
                        writer.write_all(&bytes).await
                    };
                    if let Err(error) = written.await {
                        tracing::debug!(core = shard.core, %peer, %error, "client went away");
                        break 'connection;
                    }
                }
                Some(Ok(Some(bytes))) => out.extend_from_slice(&bytes),
                Some(Ok(None)) => {}
                Some(Err(error)) => {
                    tracing::warn!(core = shard.core, %peer, %error, "closing connection: request failed");
                    failed = true;
                    break;
                }
                None => {
                    failed = true;
                    break;
                }
            }
            if out.len() >= RESPONSE_COALESCE_BYTES_MAX {
                break;
            }
            let Some(Some(mut later)) = futures_lite::future::poll_once(responses.recv()).await else { break };
            match futures_lite::future::poll_once(&mut later).await {
                Some(result) => answered = result,
                None => {
                    next = Some(later);
                    break;
                }
            }
        }
        // Responses before a failed request are still delivered.
        if !out.is_empty() {
            if let Err(error) = writer.write_all(&out).await {
                tracing::debug!(core = shard.core, %peer, %error, "client went away");
                break 'connection;
            }
            out.clear();
        }
        if failed {
            break;
        }
    }
    let _ = writer.close().await;
    done.notify();
}

/// Minimal HTTP/1.0 endpoint: `GET /metrics` and `GET /health`, one request per connection.
async fn serve_admin<S: PartitionStore + 'static>(shard: Rc<Shard<S>>, listener: TcpListener) {
    let open = Rc::new(std::cell::Cell::new(0usize));
    loop {
        let Ok(mut stream) = listener.accept().await else { continue };
        if open.get() >= ADMIN_CONNECTIONS_MAX {
            tracing::warn!(limit = ADMIN_CONNECTIONS_MAX, "admin connection refused: too many connections");
            continue;
        }
        open.set(open.get() + 1);
        let (shard, open) = (shard.clone(), open.clone());
        glommio::spawn_local(async move {
            let mut head = Vec::new();
            let mut chunk = [0u8; 1024];
            let read_head = async {
                while !head.windows(4).any(|window| window == b"\r\n\r\n") && head.len() < ADMIN_REQUEST_BYTES_MAX {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(read) => head.extend_from_slice(&chunk[..read]),
                    }
                }
                true
            };
            let deadline = async {
                glommio::timer::sleep(Duration::from_millis(ADMIN_REQUEST_MS_MAX)).await;
                false
            };
            if !futures_lite::future::or(read_head, deadline).await {
                open.set(open.get() - 1);
                return;
            }
            let line = String::from_utf8_lossy(&head);
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/health" => health(&shard).await,
                "/metrics" => ("200 OK", metrics_text(&shard).await),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let response = format!(
                "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.close().await;
            open.set(open.get() - 1);
        })
        .detach();
    }
}

/// `200 ok` when every partition serves; `503` listing each failed partition and why.
async fn health<S: PartitionStore + 'static>(shard: &Shard<S>) -> (&'static str, String) {
    let calls = (0..shard.cores).map(|core| shard.call(core, CoreRequest::Health));
    let mut failed = Vec::new();
    for reply in futures::future::join_all(calls).await {
        match reply {
            CoreReply::Health(partitions) => failed.extend(partitions),
            other => return ("503 Service Unavailable", format!("a core did not answer: {other:?}\n")),
        }
    }
    if failed.is_empty() {
        return ("200 OK", "ok\n".to_string());
    }
    failed.sort();
    let mut body = format!("{} partition(s) unavailable\n", failed.len());
    for (partition, reason) in failed {
        body.push_str(&format!("{partition}: {reason}\n"));
    }
    ("503 Service Unavailable", body)
}

async fn metrics_text<S: PartitionStore + 'static>(shard: &Shard<S>) -> String {
    let calls = (0..shard.cores).map(|core| shard.call(core, CoreRequest::Metrics));
    let snapshots: Vec<_> = futures::future::join_all(calls)
        .await
        .into_iter()
        .filter_map(|reply| match reply {
            CoreReply::Metrics(snapshot) => Some(snapshot),
            _ => None,
        })
        .collect();
    let table = shard.table();
    let partitions: usize = table.topics.values().map(|topic| topic.owners.len()).sum();
    crate::metrics::render(&snapshots, partitions as u64, table.topics.len() as u64)
}
