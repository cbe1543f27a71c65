//! The QUIC transport: `quinn-proto` driven from one glommio UDP socket per core.
//!
//! Layout (see docs/decisions.md): core *c* of a node binds UDP `replication_base_port + c` and
//! runs one QUIC endpoint on it, both dialing and accepting. A core sends to a peer core over the
//! connection *it* dialed (at most one per peer core); frames from the peer arrive over the
//! connection the peer dialed. Each lane is one unidirectional QUIC stream, opened lazily, that
//! starts with a [`PREAMBLE_BYTES`]-byte preamble naming the sending core and the lane; so loss or
//! a backlog on one lane never holds another lane's frames back (no head-of-line blocking
//! between lanes), and the acceptor learns who is talking without a handshake of its own.
//!
//! Two tasks per core share the state in a `RefCell` (one thread, no locks):
//! - the *receiver* awaits datagrams and feeds them to the endpoint and its connections;
//! - the *driver* dials, writes lanes into streams, reads streams into the inbox, fires QUIC
//!   timers and sends datagrams. Anyone who creates work raises its [`Signal`].
//!
//! The configured `max_udp_payload_bytes` is taken as the path MTU (1452 for Ethernet; loopback
//! takes up to 65,507): glommio sockets cannot set `IP_PMTUDISC_DO`, so discovery could not
//! tell a real path MTU from IP fragmentation. Above 16 KiB (the most a handshake packet can
//! carry) QUIC's MTU probing climbs from 16 KiB to the configured size after the handshake.
//!
//! The stateless-reset key is derived from the node's private key and the core, so a restarted
//! peer recognises packets of connections its previous incarnation held and resets them at
//! once: a restart is noticed in one round trip instead of an idle timeout.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use glommio::net::UdpSocket;
use quinn_proto::{
    ConnectionHandle, DatagramEvent, Dir, EndpointConfig, Event, ReadError, StreamEvent, StreamId,
    TransportConfig, VarInt, WriteError,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::certs::{certificate_names_node, TlsIdentity};
use crate::frame::{Frame, FrameDecoder};
use crate::transport::{Inbox, Signal, SendWaiters};
use crate::types::{node_server_name, CoreAddr, CoreId, LaneId, NodeId};
use crate::{Incoming, LinkEvent, Transport, TransportError, TransportLimits, TransportMetrics};

/// Bytes at the start of every lane stream: magic, sender node, sender core, lane.
pub const PREAMBLE_BYTES: usize = 16;
const PREAMBLE_MAGIC: u32 = u32::from_le_bytes(*b"RIL1");
/// Bytes read from a stream at a time; bounds how far one read overshoots the inbox limit.
const READ_CHUNK_BYTES_MAX: usize = 64 * 1024;
/// Datagrams the receiver handles before yielding, so the driver can send ACKs under load.
const RECV_BURST_DATAGRAMS_MAX: usize = 32;
/// Endpoint-level replies (stateless resets, refusals) held for sending; more are dropped.
const ENDPOINT_TRANSMITS_MAX: usize = 64;
/// Largest datagram during the handshake: a long-header packet's length field is a 2-byte
/// varint (< 16,384), and the packet header sits outside it.
const HANDSHAKE_UDP_PAYLOAD_BYTES_MAX: u16 = 16 * 1024;
/// Initial congestion window in datagrams (RFC 9002 recommends 10).
const INITIAL_WINDOW_DATAGRAMS: u16 = 10;
/// Floor of the initial congestion window: quinn-proto's default.
const INITIAL_WINDOW_BYTES_MIN: u64 = 14_720;
/// Application close code: orderly shutdown.
const CLOSE_SHUTDOWN: u32 = 0;
/// Application close code: the peer broke the stream protocol (bad preamble, oversized frame).
const CLOSE_PROTOCOL: u32 = 1;

/// The UDP port of `core` given the node's replication base port.
pub fn core_port(base_port: u16, core: CoreId) -> u16 {
    base_port.checked_add(core.0).expect("replication port range overflows u16")
}

/// Configuration of one core's QUIC transport.
#[derive(Clone, Debug)]
pub struct QuicConfig {
    /// This core.
    pub local: CoreAddr,
    /// The UDP address this core binds (`ip:core_port(base, core)`).
    pub bind: SocketAddr,
    /// Queue limits.
    pub limits: TransportLimits,
    /// Largest UDP payload sent; taken as the path MTU (no discovery, see module doc).
    pub max_udp_payload_bytes: u16,
    /// A connection silent this long is lost (keep-alives are sent at a third of it).
    pub idle_timeout_ms: u32,
    /// RTT assumed before the first sample; a LAN value makes handshake retransmits quick.
    pub initial_rtt_ms: u32,
    /// First redial delay after a failure; doubles per failure.
    pub reconnect_backoff_min_ms: u32,
    /// Largest redial delay.
    pub reconnect_backoff_max_ms: u32,
    /// Per-stream (per-lane) receive window.
    pub stream_receive_window_bytes: u32,
    /// Per-connection receive window and send buffer.
    pub connection_window_bytes: u32,
    /// Kernel receive and send buffer of the UDP socket (capped by `net.core.rmem_max`).
    pub socket_buffer_bytes: usize,
}

impl QuicConfig {
    /// Defaults for `local` bound at `bind`.
    pub fn new(local: CoreAddr, bind: SocketAddr) -> Self {
        Self {
            local,
            bind,
            limits: TransportLimits::default(),
            max_udp_payload_bytes: 1452,
            idle_timeout_ms: 3_000,
            initial_rtt_ms: 10,
            reconnect_backoff_min_ms: 20,
            reconnect_backoff_max_ms: 2_000,
            stream_receive_window_bytes: 4 * 1024 * 1024,
            connection_window_bytes: 32 * 1024 * 1024,
            socket_buffer_bytes: 4 * 1024 * 1024,
        }
    }

    fn transport_config(&self) -> Result<TransportConfig, TransportError> {
        let config_error = |what: &str| TransportError::Config { reason: what.to_string() };
        if self.max_udp_payload_bytes < 1200 {
            return Err(config_error("max_udp_payload_bytes below QUIC's 1200"));
        }
        if self.reconnect_backoff_min_ms == 0
            || self.reconnect_backoff_min_ms > self.reconnect_backoff_max_ms
        {
            return Err(config_error("reconnect backoff min must be in 1..=max"));
        }
        let idle = Duration::from_millis(u64::from(self.idle_timeout_ms));
        // The congestion window must hold at least one datagram or nothing is ever sent: Cubic's
        // default initial window (14,720 B) is smaller than a 16 KiB datagram, and a connection
        // with nothing in flight gets no ACK and no loss probe to open it. That was the
        // "16 KiB datagrams hang the handshake" bug. Scale it with the datagram size instead.
        let initial_window =
            u64::from(self.max_udp_payload_bytes) * u64::from(INITIAL_WINDOW_DATAGRAMS);
        let mut congestion = quinn_proto::congestion::CubicConfig::default();
        congestion.initial_window(initial_window.max(INITIAL_WINDOW_BYTES_MIN));
        // Handshake packets have a 2-byte length field (quinn-proto asserts < 16 KiB), so larger
        // datagrams are reached after the handshake by probing up to the configured size, which
        // on loopback-class links succeeds in a few round trips. `min_mtu` is the handshake size:
        // black-hole detection may fall back to it, never below.
        let handshake_mtu = self.max_udp_payload_bytes.min(HANDSHAKE_UDP_PAYLOAD_BYTES_MAX);
        let mtu_discovery = (self.max_udp_payload_bytes > handshake_mtu).then(|| {
            let mut discovery = quinn_proto::MtuDiscoveryConfig::default();
            discovery.upper_bound(self.max_udp_payload_bytes);
            discovery
        });
        let mut transport = TransportConfig::default();
        transport
            .max_concurrent_uni_streams(VarInt::from_u32(self.limits.lanes_per_link_max))
            .max_concurrent_bidi_streams(VarInt::from_u32(0))
            .max_idle_timeout(Some(
                idle.try_into().map_err(|_| config_error("idle timeout out of range"))?,
            ))
            .keep_alive_interval(Some(idle / 3))
            .initial_rtt(Duration::from_millis(u64::from(self.initial_rtt_ms)))
            .stream_receive_window(VarInt::from_u32(self.stream_receive_window_bytes))
            .receive_window(VarInt::from_u32(self.connection_window_bytes))
            .send_window(u64::from(self.connection_window_bytes))
            .initial_mtu(handshake_mtu)
            .min_mtu(handshake_mtu)
            .mtu_discovery_config(mtu_discovery)
            .congestion_controller_factory(Arc::new(congestion))
            .send_fairness(true);
        Ok(transport)
    }
}

/// The QUIC implementation of [`Transport`] for one core. Create it inside the core's glommio
/// executor; it spawns its two tasks there and stops them on [`QuicTransport::shutdown`] or drop.
pub struct QuicTransport {
    shared: Rc<RefCell<Shared>>,
    signal: Rc<Signal>,
    local_socket: SocketAddr,
    tasks: Vec<glommio::Task<()>>,
}

struct Shared {
    local: CoreAddr,
    config: QuicConfig,
    endpoint: quinn_proto::Endpoint,
    client_config: quinn_proto::ClientConfig,
    peers: HashMap<NodeId, SocketAddr>,
    connections: HashMap<ConnectionHandle, Connection>,
    links: BTreeMap<CoreAddr, OutLink>,
    endpoint_transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    inbox: Inbox,
    send_waiters: SendWaiters,
    metrics: TransportMetrics,
    rng: ChaCha8Rng,
    shutting_down: bool,
    /// Round-robin cursor over connections for sending datagrams.
    transmit_cursor: usize,
}

struct Connection {
    quic: quinn_proto::Connection,
    /// The peer core, for connections this core dialed; `None` for accepted ones.
    dialed_peer: Option<CoreAddr>,
    /// Which node the peer proved to be (see [`PeerNode`]).
    peer_node: PeerNode,
    incoming_streams: HashMap<StreamId, IncomingStream>,
    readable: BTreeSet<StreamId>,
}

/// The node behind a connection. A dialer proves it by the server name; an acceptor learns the
/// client's certificate at the handshake but not (without an x509 parser) the node it names, so
/// it checks the node the first preamble claims against the certificate's DNS name
/// (`node-<id>.rill`) and holds every later preamble to that node. A cluster member therefore
/// cannot speak for another node.
#[derive(Debug)]
enum PeerNode {
    /// Accepted, handshake not complete.
    Handshaking,
    /// Accepted and complete: the client's end-entity certificate (chain checked by the CA).
    Certified(rustls::pki_types::CertificateDer<'static>),
    /// The certificate names this node.
    Verified(NodeId),
}

impl PeerNode {
    /// Whether the peer may send as `node`; the first successful check pins the node.
    fn may_claim(&mut self, node: NodeId) -> bool {
        match self {
            PeerNode::Handshaking => false,
            PeerNode::Verified(verified) => *verified == node,
            PeerNode::Certified(certificate) => {
                let names_node = certificate_names_node(certificate, node);
                if names_node {
                    *self = PeerNode::Verified(node);
                }
                names_node
            }
        }
    }
}

#[derive(Default)]
struct IncomingStream {
    decoder: FrameDecoder,
    origin: Option<(CoreAddr, LaneId)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Connecting(ConnectionHandle),
    Up(ConnectionHandle),
    Backoff { until: Instant },
}

struct OutLink {
    wanted: bool,
    phase: Phase,
    failures: u32,
    down_announced: bool,
    lanes: BTreeMap<LaneId, OutLane>,
    queued_frames: usize,
    queued_bytes: usize,
}

#[derive(Default)]
struct OutLane {
    queue: VecDeque<Frame>,
    /// Chunks of the frame being written (and the preamble, first on a new stream).
    writing: Vec<Bytes>,
    stream: Option<StreamId>,
}

impl OutLink {
    fn new() -> Self {
        Self {
            wanted: true,
            phase: Phase::Idle,
            failures: 0,
            down_announced: false,
            lanes: BTreeMap::new(),
            queued_frames: 0,
            queued_bytes: 0,
        }
    }
}

fn preamble(from: CoreAddr, lane: LaneId) -> Bytes {
    let mut bytes = BytesMut::with_capacity(PREAMBLE_BYTES);
    bytes.put_u32_le(PREAMBLE_MAGIC);
    bytes.put_u32_le(from.node.0);
    bytes.put_u16_le(from.core.0);
    bytes.put_u16_le(0);
    bytes.put_u32_le(lane.0);
    assert_eq!(bytes.len(), PREAMBLE_BYTES);
    bytes.freeze()
}

fn parse_preamble(mut bytes: Bytes) -> Option<(CoreAddr, LaneId)> {
    assert_eq!(bytes.len(), PREAMBLE_BYTES);
    if bytes.get_u32_le() != PREAMBLE_MAGIC {
        return None;
    }
    let node = bytes.get_u32_le();
    let core = bytes.get_u16_le();
    let _reserved = bytes.get_u16_le();
    let lane = bytes.get_u32_le();
    Some((CoreAddr::new(node, core), LaneId(lane)))
}

/// Stateless-reset key from the node's private key and the core (see module doc).
fn reset_key(identity: &TlsIdentity, core: CoreId) -> ring::hmac::Key {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"rill stateless reset key v1");
    context.update(identity.key.secret_der());
    context.update(&core.0.to_le_bytes());
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, context.finish().as_ref())
}

/// Binds the core's UDP socket with kernel buffers of `buffer_bytes` each way (the kernel caps
/// them at `net.core.rmem_max` / `wmem_max`). UDP on one host drops what does not fit in the
/// receive buffer, and QUIC reads a drop as congestion: the default 208 KiB holds only three
/// 64 KiB datagrams, which cost a measured ~15% loss at full speed on loopback.
/// `SO_REUSEPORT` is set as glommio's own `UdpSocket::bind` does, so a restarted core rebinds
/// its port at once.
fn bind_socket(bind: SocketAddr, buffer_bytes: usize) -> std::io::Result<UdpSocket> {
    use socket2_glommio::{Domain, Protocol, Socket, Type};
    let domain = if bind.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_recv_buffer_size(buffer_bytes)?;
    socket.set_send_buffer_size(buffer_bytes)?;
    let granted = socket.recv_buffer_size()?;
    if granted < buffer_bytes {
        tracing::warn!(
            requested = buffer_bytes,
            granted,
            "replication socket receive buffer capped by net.core.rmem_max; expect drops at speed"
        );
    }
    socket.bind(&bind.into())?;
    Ok(UdpSocket::from(socket))
}

impl QuicTransport {
    /// Binds this core's socket and starts its tasks. Must run inside a glommio executor.
    pub fn bind(config: QuicConfig, identity: &TlsIdentity) -> Result<Self, TransportError> {
        let transport_config = Arc::new(config.transport_config()?);
        let mut endpoint_config =
            EndpointConfig::new(Arc::new(reset_key(identity, config.local.core)));
        endpoint_config
            .max_udp_payload_size(config.max_udp_payload_bytes)
            .map_err(|e| TransportError::Config { reason: format!("max_udp_payload_bytes: {e}") })?;
        let mut server_config = identity.quic_server_config()?;
        server_config.transport_config(transport_config.clone());
        let mut client_config = identity.quic_client_config()?;
        client_config.transport_config(transport_config);

        let mut socket = bind_socket(config.bind, config.socket_buffer_bytes).map_err(|e| {
            TransportError::Io {
                operation: "bind replication UDP socket",
                address: config.bind.to_string(),
                source: e,
            }
        })?;
        // glommio's receive path otherwise truncates datagrams at its 8 KiB default buffer.
        socket.set_buffer_size(usize::from(config.max_udp_payload_bytes) + 64);
        let local_socket = socket.local_addr().map_err(|e| TransportError::Io {
            operation: "read local address",
            address: config.bind.to_string(),
            source: e.into(),
        })?;
        let endpoint = quinn_proto::Endpoint::new(
            Arc::new(endpoint_config),
            Some(Arc::new(server_config)),
            // MTU probing runs only where the transport config asks for it (see module doc).
            true,
            None,
        );
        let seed = (u64::from(config.local.node.0) << 16) | u64::from(config.local.core.0);
        let shared = Rc::new(RefCell::new(Shared {
            local: config.local,
            config,
            endpoint,
            client_config,
            peers: HashMap::new(),
            connections: HashMap::new(),
            links: BTreeMap::new(),
            endpoint_transmits: VecDeque::new(),
            inbox: Inbox::default(),
            send_waiters: SendWaiters::default(),
            metrics: TransportMetrics::default(),
            rng: ChaCha8Rng::seed_from_u64(seed ^ u64::from(std::process::id())),
            shutting_down: false,
            transmit_cursor: 0,
        }));
        let socket = Rc::new(socket);
        let signal = Rc::new(Signal::default());
        let receiver = glommio::spawn_local(receive_loop(shared.clone(), signal.clone(), socket.clone()));
        let driver = glommio::spawn_local(drive_loop(shared.clone(), signal.clone(), socket));
        Ok(Self { shared, signal, local_socket, tasks: vec![receiver, driver] })
    }

    /// The bound UDP address (useful with port 0).
    pub fn local_socket_addr(&self) -> SocketAddr {
        self.local_socket
    }

    /// The datagram size in use on the link to `peer`, once it is up (grows by MTU probing
    /// after the handshake when `max_udp_payload_bytes` is above 16 KiB).
    pub fn path_mtu(&self, peer: CoreAddr) -> Option<u16> {
        let shared = self.shared.borrow();
        let Phase::Up(handle) = shared.links.get(&peer)?.phase else { return None };
        Some(shared.connections.get(&handle)?.quic.stats().path.current_mtu)
    }

    /// Records where `node`'s core 0 listens; core *c* is at that port + *c*.
    pub fn set_peer_address(&self, node: NodeId, core0: SocketAddr) {
        self.shared.borrow_mut().peers.insert(node, core0);
    }

    /// Closes every connection, sends the close frames, and stops the tasks.
    pub async fn shutdown(mut self) {
        self.shared.borrow_mut().shutting_down = true;
        self.signal.raise();
        // The driver exits once it has closed every connection and flushed the close frames.
        let driver = self.tasks.pop().expect("driver task");
        let _ = glommio::timer::timeout(Duration::from_secs(2), async {
            driver.await;
            Ok(())
        })
        .await;
        let mut shared = self.shared.borrow_mut();
        shared.inbox.wake_all();
        shared.send_waiters.wake_all();
        // Dropping the receiver task cancels it, which closes the socket.
    }
}

impl Shared {
    fn peer_socket(&self, peer: CoreAddr) -> Result<SocketAddr, TransportError> {
        let base = self.peers.get(&peer.node).ok_or(TransportError::UnknownPeer { node: peer.node })?;
        Ok(SocketAddr::new(base.ip(), core_port(base.port(), peer.core)))
    }

    fn backoff(&mut self, failures: u32) -> Duration {
        let min = u64::from(self.config.reconnect_backoff_min_ms);
        let max = u64::from(self.config.reconnect_backoff_max_ms);
        let exponent = failures.saturating_sub(1).min(16);
        let base = min.saturating_mul(1 << exponent).min(max);
        // Jitter of up to a quarter keeps a cluster's redials from synchronising.
        let jitter = self.rng.gen_range(0..=base / 4);
        Duration::from_millis(base - base / 8 + jitter)
    }

    fn dial(&mut self, peer: CoreAddr, now: Instant) {
        let link = self.links.get(&peer).expect("dial of unknown link");
        assert!(matches!(link.phase, Phase::Idle | Phase::Backoff { .. }));
        self.metrics.connects += 1;
        let result = self.peer_socket(peer).and_then(|address| {
            self.endpoint
                .connect(now, self.client_config.clone(), address, &node_server_name(peer.node))
                .map_err(|e| TransportError::Config { reason: format!("connect: {e}") })
        });
        match result {
            Ok((handle, quic)) => {
                self.connections.insert(
                    handle,
                    Connection {
                        quic,
                        dialed_peer: Some(peer),
                        // The handshake checks the server's name against the node we dial.
                        peer_node: PeerNode::Verified(peer.node),
                        incoming_streams: HashMap::new(),
                        readable: BTreeSet::new(),
                    },
                );
                self.links.get_mut(&peer).expect("link").phase = Phase::Connecting(handle);
            }
            Err(error) => self.link_down(peer, error.to_string(), now),
        }
    }

    /// The link lost its connection (or never got one): drop its queue, announce, back off.
    fn link_down(&mut self, peer: CoreAddr, reason: String, now: Instant) {
        let Some(link) = self.links.get_mut(&peer) else { return };
        let was_up = matches!(link.phase, Phase::Up(_));
        let dropped = link.queued_frames;
        for lane in link.lanes.values_mut() {
            let in_progress = u64::from(!lane.writing.is_empty());
            lane.queue.clear();
            lane.writing.clear();
            lane.stream = None;
            self.metrics.frames_dropped_link_down += in_progress;
        }
        self.metrics.frames_dropped_link_down += dropped as u64;
        self.metrics.send_queue_frames -= dropped;
        link.queued_frames = 0;
        link.queued_bytes = 0;
        link.failures += 1;
        let failures = link.failures;
        let announce = was_up || !link.down_announced;
        link.down_announced = true;
        let wanted = link.wanted && !self.shutting_down;
        let until = now + self.backoff(failures);
        let link = self.links.get_mut(&peer).expect("link");
        link.phase = if wanted { Phase::Backoff { until } } else { Phase::Idle };
        self.metrics.links_down += 1;
        if announce {
            tracing::debug!(%peer, %reason, "replication link down");
            let limits = self.config.limits.clone();
            self.inbox.push_event(LinkEvent::Down { peer, reason }, &limits, &mut self.metrics);
        }
        self.send_waiters.wake_all();
    }

    /// Marks the link up if `handle` is still its current attempt; returns false if the
    /// connection is stale (link closed or replaced meanwhile), which the caller then closes.
    fn link_up(&mut self, peer: CoreAddr, handle: ConnectionHandle) -> bool {
        let Some(link) = self.links.get_mut(&peer) else { return false };
        if link.phase != Phase::Connecting(handle) {
            return false;
        }
        link.phase = Phase::Up(handle);
        link.failures = 0;
        link.down_announced = false;
        let limits = self.config.limits.clone();
        self.inbox.push_event(LinkEvent::Up { peer }, &limits, &mut self.metrics);
        true
    }

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let mut reply = Vec::new();
        let event = self.endpoint.handle(now, from, None, None, BytesMut::from(data), &mut reply);
        match event {
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                if let Some(connection) = self.connections.get_mut(&handle) {
                    connection.quic.handle_event(event);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                if self.shutting_down {
                    let transmit = self.endpoint.refuse(incoming, &mut reply);
                    self.queue_endpoint_transmit(transmit.destination, reply, transmit.size);
                    return;
                }
                match self.endpoint.accept(incoming, now, &mut reply, None) {
                    Ok((handle, quic)) => {
                        self.connections.insert(
                            handle,
                            Connection {
                                quic,
                                dialed_peer: None,
                                peer_node: PeerNode::Handshaking,
                                incoming_streams: HashMap::new(),
                                readable: BTreeSet::new(),
                            },
                        );
                    }
                    Err(error) => {
                        tracing::debug!(%from, cause = %error.cause, "refused replication connection");
                        if let Some(transmit) = error.response {
                            self.queue_endpoint_transmit(transmit.destination, reply, transmit.size);
                        }
                    }
                }
            }
            Some(DatagramEvent::Response(transmit)) => {
                self.queue_endpoint_transmit(transmit.destination, reply, transmit.size);
            }
            None => {}
        }
    }

    fn queue_endpoint_transmit(&mut self, to: SocketAddr, mut bytes: Vec<u8>, size: usize) {
        if self.endpoint_transmits.len() < ENDPOINT_TRANSMITS_MAX {
            bytes.truncate(size);
            self.endpoint_transmits.push_back((to, bytes));
        }
    }

    /// One pass of protocol work: timers, dials, connection events, stream writes and reads.
    fn process(&mut self, now: Instant) {
        if self.shutting_down {
            for connection in self.connections.values_mut() {
                connection.quic.close(now, VarInt::from_u32(CLOSE_SHUTDOWN), Bytes::new());
            }
        }
        let due: Vec<CoreAddr> = self
            .links
            .iter()
            .filter(|(_, link)| match link.phase {
                Phase::Idle => link.wanted,
                Phase::Backoff { until } => until <= now,
                _ => false,
            })
            .map(|(peer, _)| *peer)
            .collect();
        if !self.shutting_down {
            for peer in due {
                self.dial(peer, now);
            }
        }
        let handles: Vec<ConnectionHandle> = self.connections.keys().copied().collect();
        for handle in handles {
            self.process_connection(handle, now);
        }
    }

    fn process_connection(&mut self, handle: ConnectionHandle, now: Instant) {
        let connection = self.connections.get_mut(&handle).expect("connection");
        if connection.quic.poll_timeout().is_some_and(|deadline| deadline <= now) {
            connection.quic.handle_timeout(now);
        }
        while let Some(event) = connection.quic.poll_endpoint_events() {
            if let Some(reply) = self.endpoint.handle_event(handle, event) {
                connection.quic.handle_event(reply);
            }
        }
        let dialed_peer = connection.dialed_peer;
        let mut events = Vec::new();
        while let Some(event) = connection.quic.poll() {
            events.push(event);
        }
        let mut lost = None;
        for event in events {
            let connection = self.connections.get_mut(&handle).expect("connection");
            match event {
                Event::Connected => {
                    if let Some(peer) = dialed_peer {
                        if !self.link_up(peer, handle) {
                            let connection = self.connections.get_mut(&handle).expect("connection");
                            connection.quic.close(now, VarInt::from_u32(CLOSE_SHUTDOWN), Bytes::new());
                        }
                    }
                }
                Event::ConnectionLost { reason } => {
                    lost = Some(reason.to_string());
                    break;
                }
                Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                    while let Some(id) = connection.quic.streams().accept(Dir::Uni) {
                        connection.incoming_streams.insert(id, IncomingStream::default());
                        connection.readable.insert(id);
                    }
                }
                Event::Stream(StreamEvent::Readable { id }) => {
                    connection.readable.insert(id);
                }
                Event::Stream(StreamEvent::Stopped { id, error_code }) => {
                    tracing::warn!(?id, %error_code, "peer stopped a replication lane");
                    connection.quic.close(now, VarInt::from_u32(CLOSE_PROTOCOL), Bytes::new());
                }
                _ => {}
            }
        }
        if let Some(reason) = lost {
            self.connection_lost(handle, reason, now);
        } else {
            self.read_streams(handle, now);
            self.write_lanes(handle);
        }
        let connection = self.connections.get_mut(&handle).expect("connection");
        while let Some(event) = connection.quic.poll_endpoint_events() {
            if let Some(reply) = self.endpoint.handle_event(handle, event) {
                connection.quic.handle_event(reply);
            }
        }
        if connection.quic.is_drained() {
            self.connections.remove(&handle);
        }
    }

    fn connection_lost(&mut self, handle: ConnectionHandle, reason: String, now: Instant) {
        let connection = self.connections.get_mut(&handle).expect("connection");
        connection.incoming_streams.clear();
        connection.readable.clear();
        if let Some(peer) = connection.dialed_peer {
            let current = self.links.get(&peer).map(|link| link.phase);
            if matches!(current, Some(Phase::Up(h) | Phase::Connecting(h)) if h == handle) {
                self.link_down(peer, reason, now);
            }
        }
    }

    /// Moves complete frames from readable streams into the inbox while it has room.
    fn read_streams(&mut self, handle: ConnectionHandle, now: Instant) {
        let Shared { connections, inbox, metrics, config, .. } = self;
        let connection = connections.get_mut(&handle).expect("connection");
        if matches!(connection.peer_node, PeerNode::Handshaking) {
            if let Some(certificate) = peer_certificate(&connection.quic) {
                connection.peer_node = PeerNode::Certified(certificate);
            }
        }
        let mut protocol_error = false;
        let readable: Vec<StreamId> = connection.readable.iter().copied().collect();
        for id in readable {
            if !inbox.has_room(&config.limits) {
                metrics.recv_queue_full += 1;
                break;
            }
            let Some(stream) = connection.incoming_streams.get_mut(&id) else {
                connection.readable.remove(&id);
                continue;
            };
            let mut recv = connection.quic.recv_stream(id);
            let Ok(mut chunks) = recv.read(true) else {
                connection.readable.remove(&id);
                connection.incoming_streams.remove(&id);
                continue;
            };
            let mut finished = false;
            loop {
                if !inbox.has_room(&config.limits) {
                    metrics.recv_queue_full += 1;
                    break;
                }
                match chunks.next(READ_CHUNK_BYTES_MAX) {
                    Ok(Some(chunk)) => {
                        stream.decoder.push(&chunk.bytes);
                        if !deliver_frames(stream, &mut connection.peer_node, inbox, metrics) {
                            protocol_error = true;
                            break;
                        }
                    }
                    Ok(None) | Err(ReadError::Reset(_)) => {
                        finished = true;
                        break;
                    }
                    Err(ReadError::Blocked) => {
                        connection.readable.remove(&id);
                        break;
                    }
                }
            }
            let _ = chunks.finalize();
            if finished {
                connection.readable.remove(&id);
                connection.incoming_streams.remove(&id);
            }
            if protocol_error {
                break;
            }
        }
        if protocol_error {
            tracing::warn!("replication peer broke the lane protocol; closing its connection");
            connection.quic.close(now, VarInt::from_u32(CLOSE_PROTOCOL), Bytes::new());
        }
    }

    /// Writes queued frames into lane streams, one frame per lane per round, until the
    /// connection's send buffer is full. Hot path for replication traffic.
    fn write_lanes(&mut self, handle: ConnectionHandle) {
        let Shared { connections, links, metrics, send_waiters, local, .. } = self;
        let connection = connections.get_mut(&handle).expect("connection");
        let Some(peer) = connection.dialed_peer else { return };
        let Some(link) = links.get_mut(&peer) else { return };
        if link.phase != Phase::Up(handle) {
            return;
        }
        let mut freed = false;
        'rounds: loop {
            let mut progress = false;
            for (lane_id, lane) in link.lanes.iter_mut() {
                if lane.writing.is_empty() {
                    let Some(frame) = lane.queue.pop_front() else { continue };
                    let bytes = frame.wire_bytes();
                    link.queued_frames -= 1;
                    link.queued_bytes -= bytes;
                    metrics.send_queue_frames -= 1;
                    metrics.frames_sent += 1;
                    metrics.bytes_sent += bytes as u64;
                    freed = true;
                    lane.writing = frame.wire_chunks();
                }
                let stream = match lane.stream {
                    Some(stream) => stream,
                    None => match connection.quic.streams().open(Dir::Uni) {
                        Some(stream) => {
                            lane.stream = Some(stream);
                            lane.writing.insert(0, preamble(*local, *lane_id));
                            stream
                        }
                        // Stream limit reached: the lane waits for `Available`.
                        None => continue,
                    },
                };
                lane.writing.retain(|chunk| !chunk.is_empty());
                match connection.quic.send_stream(stream).write_chunks(&mut lane.writing) {
                    Ok(written) => {
                        lane.writing.drain(..written.chunks);
                        lane.writing.retain(|chunk| !chunk.is_empty());
                        progress |= written.bytes > 0;
                    }
                    Err(WriteError::Blocked) => break 'rounds,
                    Err(error) => {
                        tracing::warn!(%peer, %error, "replication lane write failed");
                        lane.writing.clear();
                        lane.stream = None;
                    }
                }
            }
            if !progress {
                break;
            }
        }
        if freed {
            send_waiters.wake_all();
        }
    }

    /// Next datagram to send, written into `buffer`: endpoint replies first, then connections
    /// round-robin so one busy connection cannot starve the others.
    fn next_transmit(&mut self, now: Instant, buffer: &mut Vec<u8>) -> Option<SocketAddr> {
        if let Some((to, bytes)) = self.endpoint_transmits.pop_front() {
            buffer.clear();
            buffer.extend_from_slice(&bytes);
            return Some(to);
        }
        let mut handles: Vec<ConnectionHandle> = self.connections.keys().copied().collect();
        handles.sort_unstable_by_key(|handle| handle.0);
        let count = handles.len();
        for offset in 0..count {
            let handle = handles[(self.transmit_cursor + offset) % count];
            let connection = self.connections.get_mut(&handle).expect("connection");
            buffer.clear();
            if let Some(transmit) = connection.quic.poll_transmit(now, 1, buffer) {
                assert!(transmit.size <= buffer.len());
                buffer.truncate(transmit.size);
                self.transmit_cursor = (self.transmit_cursor + offset + 1) % count;
                return Some(transmit.destination);
            }
        }
        None
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        let connections = self.connections.values_mut().filter_map(|c| c.quic.poll_timeout());
        let backoffs = self.links.values().filter_map(|link| match link.phase {
            Phase::Backoff { until } => Some(until),
            _ => None,
        });
        connections.chain(backoffs).min()
    }

    /// Checks that `peer` is addressable and its queue has room for `bytes` more on `lane`.
    fn check_room(&mut self, peer: CoreAddr, lane: LaneId, bytes: usize) -> Result<(), TransportError> {
        if self.shutting_down {
            return Err(TransportError::Shutdown);
        }
        self.peer_socket(peer)?;
        let limits = &self.config.limits;
        let link = self.links.entry(peer).or_insert_with(OutLink::new);
        link.wanted = true;
        if link.queued_frames >= limits.send_queue_frames_max
            || link.queued_bytes + bytes > limits.send_queue_bytes_max
        {
            return Err(TransportError::QueueFull {
                peer,
                queued_frames: link.queued_frames,
                queued_bytes: link.queued_bytes,
            });
        }
        if !link.lanes.contains_key(&lane) && link.lanes.len() >= limits.lanes_per_link_max as usize {
            return Err(TransportError::Config {
                reason: format!("more than {} lanes to {peer}", limits.lanes_per_link_max),
            });
        }
        Ok(())
    }

    /// Queues a frame after `check_room` passed.
    fn push(&mut self, peer: CoreAddr, lane: LaneId, frame: Frame) {
        let link = self.links.get_mut(&peer).expect("check_room created the link");
        let bytes = frame.wire_bytes();
        link.lanes.entry(lane).or_default().queue.push_back(frame);
        link.queued_frames += 1;
        link.queued_bytes += bytes;
        self.metrics.send_queue_frames += 1;
    }
}

/// The client certificate of a completed handshake (rustls hands quinn the chain, leaf first).
fn peer_certificate(quic: &quinn_proto::Connection) -> Option<rustls::pki_types::CertificateDer<'static>> {
    let identity = quic.crypto_session().peer_identity()?;
    let chain = identity.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    chain.into_iter().next()
}

/// Parses the preamble (once; its node must be one the peer's certificate names) and moves every
/// complete frame into the inbox. Returns false on a protocol violation.
fn deliver_frames(
    stream: &mut IncomingStream,
    peer_node: &mut PeerNode,
    inbox: &mut Inbox,
    metrics: &mut TransportMetrics,
) -> bool {
    if stream.origin.is_none() {
        let Some(raw) = stream.decoder.take_raw(PREAMBLE_BYTES) else { return true };
        match parse_preamble(raw) {
            Some(origin) if peer_node.may_claim(origin.0.node) => stream.origin = Some(origin),
            Some((claimed, _)) => {
                tracing::warn!(%claimed, ?peer_node, "replication peer claims a node its certificate does not name");
                return false;
            }
            None => return false,
        }
    }
    let (from, lane) = stream.origin.expect("preamble parsed");
    loop {
        match stream.decoder.next_frame() {
            Ok(Some(frame)) => inbox.push_frame(Incoming { from, lane, frame }, metrics),
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

async fn receive_loop(shared: Rc<RefCell<Shared>>, signal: Rc<Signal>, socket: Rc<UdpSocket>) {
    let buffer_bytes = usize::from(shared.borrow().config.max_udp_payload_bytes) + 64;
    let mut buffer = vec![0u8; buffer_bytes];
    let mut burst = 0;
    loop {
        match socket.recv_from(&mut buffer).await {
            Ok((size, from)) => {
                shared.borrow_mut().handle_datagram(Instant::now(), from, &buffer[..size]);
                signal.raise();
            }
            Err(error) => {
                // ICMP errors surface here on Linux (e.g. port unreachable); QUIC's timers
                // handle the lost peer, so keep receiving.
                tracing::trace!(%error, "replication socket receive error");
            }
        }
        burst += 1;
        if burst >= RECV_BURST_DATAGRAMS_MAX {
            burst = 0;
            futures_lite::future::yield_now().await;
        }
    }
}

async fn drive_loop(shared: Rc<RefCell<Shared>>, signal: Rc<Signal>, socket: Rc<UdpSocket>) {
    let mut buffer = Vec::with_capacity(usize::from(shared.borrow().config.max_udp_payload_bytes));
    loop {
        let now = Instant::now();
        shared.borrow_mut().process(now);
        loop {
            let destination = shared.borrow_mut().next_transmit(now, &mut buffer);
            let Some(destination) = destination else { break };
            if let Err(error) = socket.send_to(&buffer, destination).await {
                tracing::trace!(%error, %destination, "replication datagram send failed");
            }
        }
        let (deadline, done) = {
            let mut state = shared.borrow_mut();
            let done = state.shutting_down
                && state.connections.values().all(|c| c.quic.is_closed() || c.quic.is_drained());
            (state.next_deadline(), done)
        };
        if done {
            return;
        }
        let sleep = deadline.map_or(Duration::from_secs(1), |d| d.saturating_duration_since(Instant::now()));
        if sleep.is_zero() {
            // A timer is already due: run the next pass at once, but let other tasks in.
            futures_lite::future::yield_now().await;
            continue;
        }
        futures_lite::future::or(signal.wait(), glommio::timer::sleep(sleep)).await;
    }
}

impl Transport for QuicTransport {
    fn local(&self) -> CoreAddr {
        self.shared.borrow().local
    }

    fn open(&self, peer: CoreAddr) -> Result<(), TransportError> {
        let mut shared = self.shared.borrow_mut();
        shared.peer_socket(peer)?;
        shared.links.entry(peer).or_insert_with(OutLink::new).wanted = true;
        drop(shared);
        self.signal.raise();
        Ok(())
    }

    fn close_link(&self, peer: CoreAddr) {
        let mut shared = self.shared.borrow_mut();
        let Some(link) = shared.links.get_mut(&peer) else { return };
        link.wanted = false;
        let phase = link.phase;
        if let Phase::Up(handle) | Phase::Connecting(handle) = phase {
            if let Some(connection) = shared.connections.get_mut(&handle) {
                connection.quic.close(Instant::now(), VarInt::from_u32(CLOSE_SHUTDOWN), Bytes::new());
            }
        }
        shared.link_down(peer, "closed locally".into(), Instant::now());
        shared.links.remove(&peer);
        drop(shared);
        self.signal.raise();
    }

    fn is_up(&self, peer: CoreAddr) -> bool {
        matches!(self.shared.borrow().links.get(&peer).map(|l| l.phase), Some(Phase::Up(_)))
    }

    fn try_send(&self, peer: CoreAddr, lane: LaneId, frame: Frame) -> Result<(), TransportError> {
        let mut shared = self.shared.borrow_mut();
        if let Err(error) = shared.check_room(peer, lane, frame.wire_bytes()) {
            if matches!(error, TransportError::QueueFull { .. }) {
                shared.metrics.send_queue_full += 1;
            }
            return Err(error);
        }
        shared.push(peer, lane, frame);
        drop(shared);
        self.signal.raise();
        Ok(())
    }

    async fn send(&self, peer: CoreAddr, lane: LaneId, frame: Frame) -> Result<(), TransportError> {
        let bytes = frame.wire_bytes();
        std::future::poll_fn(|cx| {
            let mut shared = self.shared.borrow_mut();
            match shared.check_room(peer, lane, bytes) {
                Err(TransportError::QueueFull { .. }) => {
                    shared.send_waiters.register(cx);
                    Poll::Pending
                }
                other => Poll::Ready(other),
            }
        })
        .await?;
        self.shared.borrow_mut().push(peer, lane, frame);
        self.signal.raise();
        Ok(())
    }

    fn try_recv(&self) -> Option<Incoming> {
        let incoming = self.shared.borrow_mut().inbox.pop_frame();
        if incoming.is_some() {
            // Room freed: the driver may resume reading streams.
            self.signal.raise();
        }
        incoming
    }

    async fn recv(&self) -> Result<Incoming, TransportError> {
        let incoming = std::future::poll_fn(|cx| {
            let mut shared = self.shared.borrow_mut();
            if shared.shutting_down && shared.inbox.frames.is_empty() {
                return Poll::Ready(Err(TransportError::Shutdown));
            }
            shared.inbox.poll_frame(cx).map(Ok)
        })
        .await?;
        self.signal.raise();
        Ok(incoming)
    }

    fn try_next_event(&self) -> Option<LinkEvent> {
        self.shared.borrow_mut().inbox.events.pop_front()
    }

    async fn next_event(&self) -> Result<LinkEvent, TransportError> {
        std::future::poll_fn(|cx| {
            let mut shared = self.shared.borrow_mut();
            if shared.shutting_down && shared.inbox.events.is_empty() {
                return Poll::Ready(Err(TransportError::Shutdown));
            }
            shared.inbox.poll_event(cx).map(Ok)
        })
        .await
    }

    fn metrics(&self) -> TransportMetrics {
        let shared = self.shared.borrow();
        let mut metrics = shared.metrics.clone();
        metrics.recv_queue_frames = shared.inbox.frames.len();
        metrics.recv_queue_bytes = shared.inbox.frame_bytes;
        metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{generate_ca, generate_node};

    const TEST_TIMEOUT: Duration = Duration::from_secs(30);

    struct Cluster {
        ca: (rcgen::Certificate, rcgen::KeyPair),
    }

    impl Cluster {
        fn new() -> Self {
            Self { ca: generate_ca("test CA").unwrap() }
        }

        fn identity(&self, node: u32) -> TlsIdentity {
            let (cert, key) = generate_node(NodeId(node), &self.ca.0, &self.ca.1).unwrap();
            TlsIdentity::from_generated(&self.ca.0, &cert, &key)
        }

        fn transport(&self, node: u32, bind: SocketAddr, tune: impl FnOnce(&mut QuicConfig)) -> QuicTransport {
            let mut config = QuicConfig::new(CoreAddr::new(node, 0), bind);
            config.idle_timeout_ms = 1_000;
            tune(&mut config);
            QuicTransport::bind(config, &self.identity(node)).unwrap()
        }
    }

    fn any_port() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    fn introduce(a: &QuicTransport, b: &QuicTransport) {
        a.set_peer_address(b.local().node, b.local_socket_addr());
        b.set_peer_address(a.local().node, a.local_socket_addr());
    }

    fn numbered(lane: u32, seq: u32, body_bytes: usize) -> Frame {
        let header = Bytes::from([lane.to_le_bytes(), seq.to_le_bytes()].concat());
        Frame::new(header, Bytes::from(vec![(seq % 251) as u8; body_bytes])).unwrap()
    }

    fn parse(frame: &Frame) -> (u32, u32) {
        let mut header = frame.header.clone();
        (header.get_u32_le(), header.get_u32_le())
    }

    fn run(test: impl std::future::Future<Output = ()> + 'static) {
        glommio::LocalExecutor::default().run(async move {
            glommio::timer::timeout(TEST_TIMEOUT, async {
                test.await;
                Ok(())
            })
            .await
            .expect("test timed out");
        });
    }

    async fn expect_up(transport: &QuicTransport, peer: CoreAddr) {
        loop {
            match transport.next_event().await.unwrap() {
                LinkEvent::Up { peer: up } if up == peer => return,
                _ => continue,
            }
        }
    }

    #[test]
    fn round_trip_and_per_lane_order() {
        run(async {
            let cluster = Cluster::new();
            let a = cluster.transport(1, any_port(), |_| {});
            let b = cluster.transport(2, any_port(), |_| {});
            introduce(&a, &b);
            let lanes = 4u32;
            let per_lane = 100u32;
            for seq in 0..per_lane {
                for lane in 0..lanes {
                    a.send(b.local(), LaneId(lane), numbered(lane, seq, 100 * lane as usize)).await.unwrap();
                }
            }
            expect_up(&a, b.local()).await;
            let mut next = vec![0u32; lanes as usize];
            for _ in 0..lanes * per_lane {
                let incoming = b.recv().await.unwrap();
                assert_eq!(incoming.from, a.local());
                let (lane, seq) = parse(&incoming.frame);
                assert_eq!(incoming.lane, LaneId(lane));
                assert_eq!(seq, next[lane as usize], "lane {lane} out of order");
                assert_eq!(incoming.frame.body.len(), 100 * lane as usize);
                next[lane as usize] += 1;
            }
            // The reply travels over the connection b dials.
            b.send(a.local(), LaneId(9), numbered(9, 0, 16)).await.unwrap();
            let reply = a.recv().await.unwrap();
            assert_eq!((reply.from, reply.lane), (b.local(), LaneId(9)));
            let metrics = a.metrics();
            assert_eq!(metrics.frames_sent, u64::from(lanes * per_lane));
            assert_eq!(metrics.frames_dropped_link_down, 0);
            a.shutdown().await;
            b.shutdown().await;
        });
    }

    #[test]
    fn a_backlogged_lane_does_not_hold_back_another() {
        run(async {
            let cluster = Cluster::new();
            let a = cluster.transport(1, any_port(), |_| {});
            let b = cluster.transport(2, any_port(), |_| {});
            introduce(&a, &b);
            a.open(b.local()).unwrap();
            expect_up(&a, b.local()).await;
            let bulk_frames = 64u32;
            for seq in 0..bulk_frames {
                a.send(b.local(), LaneId(1), numbered(1, seq, 256 * 1024)).await.unwrap();
            }
            a.send(b.local(), LaneId(2), numbered(2, 0, 8)).await.unwrap();
            let mut bulk_seen = 0;
            let mut small_after_bulk = None;
            for _ in 0..=bulk_frames {
                let incoming = b.recv().await.unwrap();
                match parse(&incoming.frame) {
                    (1, seq) => {
                        assert_eq!(seq, bulk_seen);
                        bulk_seen += 1;
                    }
                    (2, 0) => small_after_bulk = Some(bulk_seen),
                    other => panic!("unexpected frame {other:?}"),
                }
            }
            let small_after_bulk = small_after_bulk.expect("small frame arrived");
            assert!(
                small_after_bulk < bulk_frames / 2,
                "lane 2 waited for {small_after_bulk} of {bulk_frames} bulk frames on lane 1"
            );
            a.shutdown().await;
            b.shutdown().await;
        });
    }

    #[test]
    fn bounded_queues_push_back_and_then_drain_in_order() {
        run(async {
            let cluster = Cluster::new();
            let limits = |config: &mut QuicConfig| {
                config.limits.send_queue_frames_max = 8;
                config.limits.recv_queue_frames_max = 16;
            };
            let a = cluster.transport(1, any_port(), limits);
            let b = cluster.transport(2, any_port(), limits);
            introduce(&a, &b);
            let total = 400u32;
            let mut sent = 0;
            let mut refused = 0;
            // b does not read yet: a's queue must fill and refuse.
            while sent < total && refused == 0 {
                match a.try_send(b.local(), LaneId(0), numbered(0, sent, 64 * 1024)) {
                    Ok(()) => sent += 1,
                    Err(TransportError::QueueFull { .. }) => refused += 1,
                    Err(other) => panic!("{other}"),
                }
            }
            assert_eq!(refused, 1, "queue never filled");
            // `send` waits for room while b is not reading; b's receive queue fills, then QUIC
            // flow control stalls a, then a's queue; b then drains everything in order.
            let a = Rc::new(a);
            let sender = glommio::spawn_local({
                let a = a.clone();
                let b_core = b.local();
                async move {
                    for seq in sent..total {
                        a.send(b_core, LaneId(0), numbered(0, seq, 64 * 1024)).await.unwrap();
                    }
                }
            });
            glommio::timer::sleep(Duration::from_millis(500)).await;
            // A read of one 64 KiB chunk completes at most two frames past the limit check.
            assert!(b.metrics().recv_queue_frames <= 16 + 2, "{:?}", b.metrics());
            assert!(b.metrics().recv_queue_full >= 1, "receive queue never filled");
            for expected in 0..total {
                let incoming = b.recv().await.unwrap();
                assert_eq!(parse(&incoming.frame), (0, expected));
            }
            sender.await;
            let a = Rc::try_unwrap(a).ok().expect("sender finished");
            assert!(a.metrics().send_queue_full >= 1);
            a.shutdown().await;
            b.shutdown().await;
        });
    }

    #[test]
    fn reconnects_after_the_peer_restarts() {
        run(async {
            let cluster = Cluster::new();
            let a = cluster.transport(1, any_port(), |_| {});
            let b = cluster.transport(2, any_port(), |_| {});
            let b_address = b.local_socket_addr();
            introduce(&a, &b);
            a.send(b.local(), LaneId(0), numbered(0, 0, 10)).await.unwrap();
            expect_up(&a, b.local()).await;
            assert_eq!(parse(&b.recv().await.unwrap().frame), (0, 0));
            let b_core = b.local();
            b.shutdown().await;
            loop {
                if let LinkEvent::Down { peer, .. } = a.next_event().await.unwrap() {
                    assert_eq!(peer, b_core);
                    break;
                }
            }
            // Let the old socket close before the new incarnation binds the same port.
            glommio::timer::sleep(Duration::from_millis(100)).await;
            let b = cluster.transport(2, b_address, |_| {});
            expect_up(&a, b.local()).await;
            for seq in 1..=50 {
                a.send(b.local(), LaneId(0), numbered(0, seq, 1000)).await.unwrap();
            }
            for seq in 1..=50 {
                assert_eq!(parse(&b.recv().await.unwrap().frame), (0, seq));
            }
            assert!(a.metrics().connects >= 2);
            a.shutdown().await;
            b.shutdown().await;
        });
    }

    #[test]
    fn a_peer_certified_by_another_ca_is_refused() {
        run(async {
            let cluster = Cluster::new();
            let intruders = Cluster::new();
            let b = cluster.transport(2, any_port(), |_| {});
            let intruder = intruders.transport(3, any_port(), |_| {});
            introduce(&intruder, &b);
            // The intruder dials b: b's certificate is not trusted by it and b does not trust
            // the intruder's certificate either; the handshake fails.
            intruder.try_send(b.local(), LaneId(0), numbered(0, 0, 10)).unwrap();
            match intruder.next_event().await.unwrap() {
                LinkEvent::Down { peer, reason } => {
                    assert_eq!(peer, b.local());
                    assert!(!reason.is_empty());
                }
                LinkEvent::Up { .. } => panic!("handshake with a foreign CA succeeded"),
            }
            // And b dialing the intruder fails the same way.
            b.open(intruder.local()).unwrap();
            assert!(matches!(b.next_event().await.unwrap(), LinkEvent::Down { .. }));
            assert!(b.try_recv().is_none());
            assert!(intruder.try_recv().is_none());
            assert!(!intruder.is_up(b.local()));
            b.shutdown().await;
            intruder.shutdown().await;
        });
    }

    #[test]
    /// Datagrams above Cubic's initial window (14,720 B) once hung the handshake; above 16 KiB
    /// they must start at the handshake size and grow by probing.
    fn large_datagrams_handshake_grow_and_carry_frames() {
        run(async {
            let cluster = Cluster::new();
            let big = |config: &mut QuicConfig| config.max_udp_payload_bytes = 65_000;
            let a = cluster.transport(1, any_port(), big);
            let b = cluster.transport(2, any_port(), big);
            introduce(&a, &b);
            for seq in 0..20 {
                a.send(b.local(), LaneId(0), numbered(0, seq, 100_000)).await.unwrap();
            }
            expect_up(&a, b.local()).await;
            for seq in 0..20 {
                assert_eq!(parse(&b.recv().await.unwrap().frame), (0, seq));
            }
            // MTU probing climbs from the 16 KiB handshake size toward the configured 65,000 B
            // (binary search; it stops within quinn's `minimum_change` of the bound).
            let deadline = Instant::now() + Duration::from_secs(10);
            while a.path_mtu(b.local()).unwrap_or(0) < 60_000 && Instant::now() < deadline {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            assert!(a.path_mtu(b.local()).unwrap() >= 60_000, "{:?}", a.path_mtu(b.local()));
            for seq in 20..40 {
                a.send(b.local(), LaneId(0), numbered(0, seq, 100_000)).await.unwrap();
            }
            for seq in 20..40 {
                assert_eq!(parse(&b.recv().await.unwrap().frame), (0, seq));
            }
            a.shutdown().await;
            b.shutdown().await;
        });
    }

    #[test]
    fn a_member_claiming_another_node_is_refused() {
        run(async {
            let cluster = Cluster::new();
            let b = cluster.transport(2, any_port(), |_| {});
            // Node 3's certificate, but its preambles claim node 1.
            let config = QuicConfig::new(CoreAddr::new(1, 0), any_port());
            let impostor = QuicTransport::bind(config, &cluster.identity(3)).unwrap();
            introduce(&impostor, &b);
            impostor.send(b.local(), LaneId(0), numbered(0, 0, 10)).await.unwrap();
            expect_up(&impostor, b.local()).await;
            // b closes the connection on the first preamble instead of delivering the frame.
            match impostor.next_event().await.unwrap() {
                LinkEvent::Down { peer, .. } => assert_eq!(peer, b.local()),
                LinkEvent::Up { .. } => panic!("link came up twice"),
            }
            assert!(b.try_recv().is_none());
            // An honest member still gets through.
            let honest = cluster.transport(1, any_port(), |_| {});
            introduce(&honest, &b);
            honest.send(b.local(), LaneId(0), numbered(0, 7, 10)).await.unwrap();
            let incoming = b.recv().await.unwrap();
            assert_eq!((incoming.from, parse(&incoming.frame)), (honest.local(), (0, 7)));
            honest.shutdown().await;
            impostor.shutdown().await;
            b.shutdown().await;
        });
    }

    #[test]
    fn preamble_round_trips() {
        let from = CoreAddr::new(7, 3);
        assert_eq!(parse_preamble(preamble(from, LaneId(42))), Some((from, LaneId(42))));
        let mut bad = BytesMut::from(&preamble(from, LaneId(1))[..]);
        bad[0] ^= 1;
        assert_eq!(parse_preamble(bad.freeze()), None);
    }
}
