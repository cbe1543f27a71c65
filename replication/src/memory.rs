//! The in-memory transport for the simulation: the same [`Transport`] contract as QUIC over a
//! seeded, virtual-time packet network that delays, loses, duplicates and reorders packets and
//! partitions nodes.
//!
//! Faults are injected *below* the contract, as they are below QUIC: each link runs a small
//! reliable protocol (per-lane sequence numbers, cumulative acks, retransmission, keep-alive
//! pings, a handshake per link epoch), so frames still arrive in order and exactly once per lane
//! while the link is up. A link that hears nothing from its peer for `link_timeout_ms` goes down,
//! drops its queue, and redials with backoff, exactly like a QUIC link after its idle timeout.
//!
//! Determinism: one ChaCha8 generator seeded from [`SimConfig::seed`] draws every fault; maps are
//! ordered; simultaneous events are ordered by a sequence number; time is virtual and advances
//! only in [`SimNetwork::step`]. The same seed and the same calls give the same run, which
//! [`SimNetwork::trace_digest`] summarises.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::frame::Frame;
use crate::transport::{Inbox, SendWaiters};
use crate::types::{CoreAddr, LaneId, NodeId};
use crate::{Incoming, LinkEvent, Transport, TransportError, TransportLimits, TransportMetrics};

/// Faults and timings of a simulated network. Probabilities are per packet, in 0.0..=1.0.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Shortest one-way packet delay.
    pub delay_ms_min: u64,
    /// Longest one-way packet delay (delays are uniform in between, which reorders packets).
    pub delay_ms_max: u64,
    /// Probability that a packet is lost.
    pub loss_probability: f64,
    /// Probability that a packet is delivered twice.
    pub duplicate_probability: f64,
    /// A link that hears nothing from its peer this long goes down.
    pub link_timeout_ms: u64,
    /// Retransmission timeout of unacknowledged packets.
    pub retransmit_ms: u64,
    /// Unacknowledged frames in flight per lane.
    pub window_frames: usize,
    /// Granularity of timers (retransmits, pings, timeouts).
    pub tick_ms: u64,
    /// Queue limits of each transport.
    pub limits: TransportLimits,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            delay_ms_min: 1,
            delay_ms_max: 5,
            loss_probability: 0.0,
            duplicate_probability: 0.0,
            link_timeout_ms: 1_000,
            retransmit_ms: 40,
            window_frames: 64,
            tick_ms: 5,
            limits: TransportLimits::default(),
        }
    }
}

/// A simulated network shared by the [`SimTransport`]s of a simulation (one thread).
#[derive(Clone)]
pub struct SimNetwork {
    net: Rc<RefCell<Net>>,
}

/// One core's transport on a [`SimNetwork`].
pub struct SimTransport {
    local: CoreAddr,
    net: Rc<RefCell<Net>>,
}

#[derive(Clone, Debug, Hash)]
enum Payload {
    Hello,
    HelloAck,
    Ping,
    Pong,
    Data { lane: LaneId, seq: u64, frame: Frame },
    Ack { lane: LaneId, next_seq: u64 },
}

#[derive(Clone, Debug)]
struct Packet {
    from: CoreAddr,
    to: CoreAddr,
    /// The sender-side link epoch this packet belongs to (a new epoch per connection).
    epoch: u64,
    /// Whether the packet travels on the sender's outbound link (Data, Hello, Ping) or answers
    /// on the receiver's inbound side (Ack, HelloAck, Pong).
    payload: Payload,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Connecting { hello_sent_ms: u64 },
    Up,
    Backoff { until_ms: u64 },
}

struct SimLink {
    epoch: u64,
    phase: Phase,
    last_heard_ms: u64,
    last_sent_ms: u64,
    failures: u32,
    down_announced: bool,
    lanes: BTreeMap<LaneId, SimLane>,
    /// Frames queued or unacknowledged.
    queued_frames: usize,
    queued_bytes: usize,
}

#[derive(Default)]
struct SimLane {
    next_seq: u64,
    queue: VecDeque<Frame>,
    /// seq → (frame, virtual ms last sent).
    unacked: BTreeMap<u64, (Frame, u64)>,
}

#[derive(Default)]
struct InLane {
    epoch: u64,
    next_seq: u64,
    buffer: BTreeMap<u64, Frame>,
}

#[derive(Default)]
struct Endpoint {
    links: BTreeMap<CoreAddr, SimLink>,
    in_lanes: BTreeMap<(CoreAddr, LaneId), InLane>,
    inbox: Inbox,
    send_waiters: SendWaiters,
    metrics: TransportMetrics,
}

struct Net {
    config: SimConfig,
    now_ms: u64,
    next_tick_ms: u64,
    rng: ChaCha8Rng,
    event_seq: u64,
    epochs: u64,
    in_flight: BinaryHeap<Reverse<(u64, u64)>>,
    packets: BTreeMap<u64, Packet>,
    endpoints: BTreeMap<CoreAddr, Endpoint>,
    partitions: BTreeSet<(NodeId, NodeId)>,
    trace: DefaultHasher,
    packets_lost: u64,
    packets_duplicated: u64,
}

fn pair(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    if a <= b { (a, b) } else { (b, a) }
}

impl SimNetwork {
    /// A network with the given faults.
    pub fn new(config: SimConfig) -> Self {
        assert!(config.delay_ms_min <= config.delay_ms_max);
        assert!(config.tick_ms > 0);
        assert!(config.window_frames > 0);
        assert!((0.0..=1.0).contains(&config.loss_probability));
        assert!((0.0..=1.0).contains(&config.duplicate_probability));
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        Self {
            net: Rc::new(RefCell::new(Net {
                next_tick_ms: config.tick_ms,
                config,
                now_ms: 0,
                rng,
                event_seq: 0,
                epochs: 0,
                in_flight: BinaryHeap::new(),
                packets: BTreeMap::new(),
                endpoints: BTreeMap::new(),
                partitions: BTreeSet::new(),
                trace: DefaultHasher::new(),
                packets_lost: 0,
                packets_duplicated: 0,
            })),
        }
    }

    /// Attaches a core; a core attached again (a restart) starts from empty state.
    pub fn transport(&self, local: CoreAddr) -> SimTransport {
        self.net.borrow_mut().endpoints.insert(local, Endpoint::default());
        SimTransport { local, net: self.net.clone() }
    }

    /// Detaches a core (a crash): packets to it are lost from now on.
    pub fn crash(&self, core: CoreAddr) {
        self.net.borrow_mut().endpoints.remove(&core);
    }

    /// Cuts every packet between nodes `a` and `b`, both ways.
    pub fn partition(&self, a: NodeId, b: NodeId) {
        self.net.borrow_mut().partitions.insert(pair(a, b));
    }

    /// Restores the path between `a` and `b`.
    pub fn heal(&self, a: NodeId, b: NodeId) {
        self.net.borrow_mut().partitions.remove(&pair(a, b));
    }

    /// Virtual time since the network was created.
    pub fn now(&self) -> Duration {
        Duration::from_millis(self.net.borrow().now_ms)
    }

    /// Advances to the next event (a packet delivery or a timer tick) and handles it.
    pub fn step(&self) {
        self.net.borrow_mut().step();
    }

    /// Steps until `done` holds or `max_steps` steps ran; returns whether `done` held.
    pub fn run_until(&self, max_steps: usize, mut done: impl FnMut() -> bool) -> bool {
        for _ in 0..max_steps {
            if done() {
                return true;
            }
            self.step();
        }
        done()
    }

    /// Steps until virtual time passes `duration` from now.
    pub fn run_for(&self, duration: Duration) {
        let end = self.net.borrow().now_ms + u64::try_from(duration.as_millis()).expect("ms fit u64");
        while self.net.borrow().now_ms < end {
            self.step();
        }
    }

    /// A digest of every delivery so far (time, endpoints, payload): equal runs, equal digests.
    pub fn trace_digest(&self) -> u64 {
        self.net.borrow().trace.finish()
    }

    /// Packets lost and duplicated so far by fault injection.
    pub fn fault_counts(&self) -> (u64, u64) {
        let net = self.net.borrow();
        (net.packets_lost, net.packets_duplicated)
    }
}

impl Net {
    fn new_epoch(&mut self) -> u64 {
        self.epochs += 1;
        self.epochs
    }

    /// Puts a packet on the wire, applying loss, duplication and delay.
    fn transmit(&mut self, packet: Packet) {
        if self.partitions.contains(&pair(packet.from.node, packet.to.node)) {
            return;
        }
        if self.rng.gen_bool(self.config.loss_probability) {
            self.packets_lost += 1;
            return;
        }
        let copies = if self.rng.gen_bool(self.config.duplicate_probability) {
            self.packets_duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.rng.gen_range(self.config.delay_ms_min..=self.config.delay_ms_max);
            self.event_seq += 1;
            self.in_flight.push(Reverse((self.now_ms + delay, self.event_seq)));
            self.packets.insert(self.event_seq, packet.clone());
        }
    }

    fn step(&mut self) {
        let next_packet = self.in_flight.peek().map(|Reverse((at, _))| *at);
        match next_packet {
            Some(at) if at < self.next_tick_ms => {
                let Reverse((at, seq)) = self.in_flight.pop().expect("peeked");
                assert!(at >= self.now_ms, "time went backwards");
                self.now_ms = at;
                let packet = self.packets.remove(&seq).expect("packet of event");
                self.deliver(packet);
            }
            _ => {
                self.now_ms = self.next_tick_ms;
                self.next_tick_ms += self.config.tick_ms;
                self.tick();
            }
        }
    }

    fn deliver(&mut self, packet: Packet) {
        if self.partitions.contains(&pair(packet.from.node, packet.to.node)) {
            return;
        }
        if !self.endpoints.contains_key(&packet.to) {
            return;
        }
        (self.now_ms, packet.from, packet.to, packet.epoch, &packet.payload).hash(&mut self.trace);
        let Packet { from, to, epoch, payload } = packet;
        match payload {
            Payload::Hello => self.reply(to, from, epoch, Payload::HelloAck),
            Payload::Ping => self.reply(to, from, epoch, Payload::Pong),
            Payload::Data { lane, seq, frame } => self.receive_data(to, from, epoch, lane, seq, frame),
            Payload::HelloAck => {
                let now = self.now_ms;
                let Some(link) = self.link(to, from, epoch) else { return };
                link.last_heard_ms = now;
                if matches!(link.phase, Phase::Connecting { .. }) {
                    link.phase = Phase::Up;
                    link.failures = 0;
                    link.down_announced = false;
                    self.event(to, LinkEvent::Up { peer: from });
                    self.pump(to, from);
                }
            }
            Payload::Pong => {
                let now = self.now_ms;
                if let Some(link) = self.link(to, from, epoch) {
                    link.last_heard_ms = now;
                }
            }
            Payload::Ack { lane, next_seq } => self.receive_ack(to, from, epoch, lane, next_seq),
        }
    }

    fn link(&mut self, local: CoreAddr, peer: CoreAddr, epoch: u64) -> Option<&mut SimLink> {
        let link = self.endpoints.get_mut(&local)?.links.get_mut(&peer)?;
        (link.epoch == epoch).then_some(link)
    }

    fn reply(&mut self, from: CoreAddr, to: CoreAddr, epoch: u64, payload: Payload) {
        self.transmit(Packet { from, to, epoch, payload });
    }

    fn event(&mut self, local: CoreAddr, event: LinkEvent) {
        let limits = self.config.limits.clone();
        let endpoint = self.endpoints.get_mut(&local).expect("endpoint");
        endpoint.inbox.push_event(event, &limits, &mut endpoint.metrics);
    }

    fn receive_data(&mut self, local: CoreAddr, from: CoreAddr, epoch: u64, lane: LaneId, seq: u64, frame: Frame) {
        let endpoint = self.endpoints.get_mut(&local).expect("endpoint");
        let in_lane = endpoint.in_lanes.entry((from, lane)).or_default();
        if epoch < in_lane.epoch {
            return; // A packet of a connection that has since been replaced.
        }
        if epoch > in_lane.epoch {
            *in_lane = InLane { epoch, ..InLane::default() };
        }
        if seq >= in_lane.next_seq {
            // The sender keeps at most `window_frames` unacknowledged, which bounds this buffer.
            in_lane.buffer.insert(seq, frame);
            assert!(in_lane.buffer.len() <= self.config.window_frames);
        }
        let next_seq = self.drain_lane(local, from, lane);
        self.reply(local, from, epoch, Payload::Ack { lane, next_seq });
    }

    /// Moves in-order frames of one inbound lane into the inbox while it has room.
    fn drain_lane(&mut self, local: CoreAddr, from: CoreAddr, lane: LaneId) -> u64 {
        let limits = &self.config.limits;
        let endpoint = self.endpoints.get_mut(&local).expect("endpoint");
        let in_lane = endpoint.in_lanes.get_mut(&(from, lane)).expect("lane");
        while endpoint.inbox.has_room(limits) {
            let Some(frame) = in_lane.buffer.remove(&in_lane.next_seq) else { break };
            in_lane.next_seq += 1;
            endpoint.inbox.push_frame(Incoming { from, lane, frame }, &mut endpoint.metrics);
        }
        if !endpoint.inbox.has_room(limits) && !in_lane.buffer.is_empty() {
            endpoint.metrics.recv_queue_full += 1;
        }
        in_lane.next_seq
    }

    fn drain_all_lanes(&mut self, local: CoreAddr) {
        let Some(endpoint) = self.endpoints.get(&local) else { return };
        let waiting: Vec<(CoreAddr, LaneId, u64)> = endpoint
            .in_lanes
            .iter()
            .filter(|(_, lane)| !lane.buffer.is_empty())
            .map(|((from, lane), in_lane)| (*from, *lane, in_lane.epoch))
            .collect();
        for (from, lane, epoch) in waiting {
            let next_seq = self.drain_lane(local, from, lane);
            self.reply(local, from, epoch, Payload::Ack { lane, next_seq });
        }
    }

    fn receive_ack(&mut self, local: CoreAddr, peer: CoreAddr, epoch: u64, lane: LaneId, next_seq: u64) {
        let now = self.now_ms;
        let endpoint = self.endpoints.get_mut(&local).expect("endpoint");
        let Some(link) = endpoint.links.get_mut(&peer).filter(|link| link.epoch == epoch) else {
            return;
        };
        link.last_heard_ms = now;
        let Some(out_lane) = link.lanes.get_mut(&lane) else { return };
        let acked: Vec<u64> = out_lane.unacked.range(..next_seq).map(|(seq, _)| *seq).collect();
        for seq in &acked {
            let (frame, _) = out_lane.unacked.remove(seq).expect("acked frame");
            link.queued_frames -= 1;
            link.queued_bytes -= frame.wire_bytes();
            endpoint.metrics.send_queue_frames -= 1;
        }
        if !acked.is_empty() {
            endpoint.send_waiters.wake_all();
        }
        self.pump(local, peer);
    }

    /// Sends queued frames of every lane of a link up to the window.
    fn pump(&mut self, local: CoreAddr, peer: CoreAddr) {
        let now = self.now_ms;
        let window = self.config.window_frames;
        let Some(endpoint) = self.endpoints.get_mut(&local) else { return };
        let Some(link) = endpoint.links.get_mut(&peer) else { return };
        if link.phase != Phase::Up {
            return;
        }
        let epoch = link.epoch;
        let mut packets = Vec::new();
        for (lane_id, lane) in link.lanes.iter_mut() {
            while lane.unacked.len() < window {
                let Some(frame) = lane.queue.pop_front() else { break };
                let seq = lane.next_seq;
                lane.next_seq += 1;
                endpoint.metrics.frames_sent += 1;
                endpoint.metrics.bytes_sent += frame.wire_bytes() as u64;
                lane.unacked.insert(seq, (frame.clone(), now));
                packets.push(Payload::Data { lane: *lane_id, seq, frame });
            }
        }
        if !packets.is_empty() {
            link.last_sent_ms = now;
        }
        for payload in packets {
            self.transmit(Packet { from: local, to: peer, epoch, payload });
        }
    }

    /// Timers of every link: handshake and data retransmits, pings, timeouts, redials.
    fn tick(&mut self) {
        let now = self.now_ms;
        let cores: Vec<CoreAddr> = self.endpoints.keys().copied().collect();
        for local in cores {
            let peers: Vec<CoreAddr> = self.endpoints[&local].links.keys().copied().collect();
            for peer in peers {
                self.tick_link(local, peer, now);
            }
        }
    }

    fn tick_link(&mut self, local: CoreAddr, peer: CoreAddr, now: u64) {
        let config = self.config.clone();
        let link = self.endpoints.get_mut(&local).expect("endpoint").links.get_mut(&peer).expect("link");
        let epoch = link.epoch;
        match link.phase {
            Phase::Backoff { until_ms } if until_ms <= now => {
                link.epoch = self.epochs + 1;
                self.epochs += 1;
                link.phase = Phase::Connecting { hello_sent_ms: now };
                link.last_heard_ms = now;
                let epoch = link.epoch;
                self.endpoints.get_mut(&local).expect("endpoint").metrics.connects += 1;
                self.transmit(Packet { from: local, to: peer, epoch, payload: Payload::Hello });
            }
            Phase::Backoff { .. } => {}
            _ if now.saturating_sub(link.last_heard_ms) > config.link_timeout_ms => {
                self.link_down(local, peer, "peer silent past the link timeout");
            }
            Phase::Connecting { hello_sent_ms } => {
                if now - hello_sent_ms >= config.retransmit_ms {
                    link.phase = Phase::Connecting { hello_sent_ms: now };
                    self.transmit(Packet { from: local, to: peer, epoch, payload: Payload::Hello });
                }
            }
            Phase::Up => {
                let mut resend = Vec::new();
                for (lane_id, lane) in link.lanes.iter_mut() {
                    for (seq, (frame, sent_ms)) in lane.unacked.iter_mut() {
                        if now - *sent_ms >= config.retransmit_ms {
                            *sent_ms = now;
                            resend.push(Payload::Data { lane: *lane_id, seq: *seq, frame: frame.clone() });
                        }
                    }
                }
                let ping = resend.is_empty() && now - link.last_sent_ms >= config.link_timeout_ms / 4;
                if ping || !resend.is_empty() {
                    link.last_sent_ms = now;
                }
                if ping {
                    resend.push(Payload::Ping);
                }
                for payload in resend {
                    self.transmit(Packet { from: local, to: peer, epoch, payload });
                }
            }
        }
    }

    fn link_down(&mut self, local: CoreAddr, peer: CoreAddr, reason: &str) {
        let now = self.now_ms;
        let backoff_ms = self.config.retransmit_ms;
        let endpoint = self.endpoints.get_mut(&local).expect("endpoint");
        let link = endpoint.links.get_mut(&peer).expect("link");
        let was_up = link.phase == Phase::Up;
        endpoint.metrics.frames_dropped_link_down += link.queued_frames as u64;
        endpoint.metrics.send_queue_frames -= link.queued_frames;
        endpoint.metrics.links_down += 1;
        link.lanes.clear();
        link.queued_frames = 0;
        link.queued_bytes = 0;
        link.failures += 1;
        let exponent = link.failures.min(6);
        link.phase = Phase::Backoff { until_ms: now + backoff_ms * (1 << exponent) };
        let announce = was_up || !link.down_announced;
        link.down_announced = true;
        endpoint.send_waiters.wake_all();
        if announce {
            self.event(local, LinkEvent::Down { peer, reason: reason.to_string() });
        }
    }

    fn open(&mut self, local: CoreAddr, peer: CoreAddr) {
        let now = self.now_ms;
        let epoch = self.new_epoch();
        let endpoint = self.endpoints.get_mut(&local).expect("transport of a crashed core");
        if endpoint.links.contains_key(&peer) {
            return;
        }
        endpoint.metrics.connects += 1;
        endpoint.links.insert(
            peer,
            SimLink {
                epoch,
                phase: Phase::Connecting { hello_sent_ms: now },
                last_heard_ms: now,
                last_sent_ms: now,
                failures: 0,
                down_announced: false,
                lanes: BTreeMap::new(),
                queued_frames: 0,
                queued_bytes: 0,
            },
        );
        self.transmit(Packet { from: local, to: peer, epoch, payload: Payload::Hello });
    }

    fn check_room(&mut self, local: CoreAddr, peer: CoreAddr, bytes: usize) -> Result<(), TransportError> {
        let limits = self.config.limits.clone();
        self.open(local, peer);
        let link = &self.endpoints[&local].links[&peer];
        if link.queued_frames >= limits.send_queue_frames_max
            || link.queued_bytes + bytes > limits.send_queue_bytes_max
        {
            return Err(TransportError::QueueFull {
                peer,
                queued_frames: link.queued_frames,
                queued_bytes: link.queued_bytes,
            });
        }
        Ok(())
    }

    fn push(&mut self, local: CoreAddr, peer: CoreAddr, lane: LaneId, frame: Frame) {
        let endpoint = self.endpoints.get_mut(&local).expect("endpoint");
        let link = endpoint.links.get_mut(&peer).expect("check_room opened the link");
        link.queued_frames += 1;
        link.queued_bytes += frame.wire_bytes();
        endpoint.metrics.send_queue_frames += 1;
        link.lanes.entry(lane).or_default().queue.push_back(frame);
        self.pump(local, peer);
    }
}

impl Transport for SimTransport {
    fn local(&self) -> CoreAddr {
        self.local
    }

    fn open(&self, peer: CoreAddr) -> Result<(), TransportError> {
        self.net.borrow_mut().open(self.local, peer);
        Ok(())
    }

    fn close_link(&self, peer: CoreAddr) {
        let mut net = self.net.borrow_mut();
        if net.endpoints[&self.local].links.contains_key(&peer) {
            net.link_down(self.local, peer, "closed locally");
            net.endpoints.get_mut(&self.local).expect("endpoint").links.remove(&peer);
        }
    }

    fn is_up(&self, peer: CoreAddr) -> bool {
        let net = self.net.borrow();
        net.endpoints[&self.local].links.get(&peer).is_some_and(|link| link.phase == Phase::Up)
    }

    fn try_send(&self, peer: CoreAddr, lane: LaneId, frame: Frame) -> Result<(), TransportError> {
        let mut net = self.net.borrow_mut();
        if let Err(error) = net.check_room(self.local, peer, frame.wire_bytes()) {
            net.endpoints.get_mut(&self.local).expect("endpoint").metrics.send_queue_full += 1;
            return Err(error);
        }
        net.push(self.local, peer, lane, frame);
        Ok(())
    }

    async fn send(&self, peer: CoreAddr, lane: LaneId, frame: Frame) -> Result<(), TransportError> {
        let bytes = frame.wire_bytes();
        std::future::poll_fn(|cx| {
            let mut net = self.net.borrow_mut();
            match net.check_room(self.local, peer, bytes) {
                Err(TransportError::QueueFull { .. }) => {
                    net.endpoints.get_mut(&self.local).expect("endpoint").send_waiters.register(cx);
                    Poll::Pending
                }
                other => Poll::Ready(other),
            }
        })
        .await?;
        self.net.borrow_mut().push(self.local, peer, lane, frame);
        Ok(())
    }

    fn try_recv(&self) -> Option<Incoming> {
        let mut net = self.net.borrow_mut();
        let incoming = net.endpoints.get_mut(&self.local)?.inbox.pop_frame();
        if incoming.is_some() {
            net.drain_all_lanes(self.local);
        }
        incoming
    }

    async fn recv(&self) -> Result<Incoming, TransportError> {
        let incoming = std::future::poll_fn(|cx| {
            let mut net = self.net.borrow_mut();
            match net.endpoints.get_mut(&self.local) {
                Some(endpoint) => endpoint.inbox.poll_frame(cx).map(Ok),
                None => Poll::Ready(Err(TransportError::Shutdown)),
            }
        })
        .await?;
        self.net.borrow_mut().drain_all_lanes(self.local);
        Ok(incoming)
    }

    fn try_next_event(&self) -> Option<LinkEvent> {
        self.net.borrow_mut().endpoints.get_mut(&self.local)?.inbox.events.pop_front()
    }

    async fn next_event(&self) -> Result<LinkEvent, TransportError> {
        std::future::poll_fn(|cx| {
            let mut net = self.net.borrow_mut();
            match net.endpoints.get_mut(&self.local) {
                Some(endpoint) => endpoint.inbox.poll_event(cx).map(Ok),
                None => Poll::Ready(Err(TransportError::Shutdown)),
            }
        })
        .await
    }

    fn metrics(&self) -> TransportMetrics {
        let net = self.net.borrow();
        let endpoint = &net.endpoints[&self.local];
        let mut metrics = endpoint.metrics.clone();
        metrics.recv_queue_frames = endpoint.inbox.frames.len();
        metrics.recv_queue_bytes = endpoint.inbox.frame_bytes;
        metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Buf, Bytes};

    const STEPS_MAX: usize = 2_000_000;

    fn numbered(lane: u32, seq: u32) -> Frame {
        let header = Bytes::from([lane.to_le_bytes(), seq.to_le_bytes()].concat());
        Frame::new(header, Bytes::from(vec![7u8; (seq % 97) as usize])).unwrap()
    }

    fn parse(frame: &Frame) -> (u32, u32) {
        let mut header = frame.header.clone();
        (header.get_u32_le(), header.get_u32_le())
    }

    fn lossy(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            delay_ms_min: 1,
            delay_ms_max: 20,
            loss_probability: 0.05,
            duplicate_probability: 0.05,
            ..SimConfig::default()
        }
    }

    /// Sends `per_lane` frames on each of `lanes` lanes from a to b through `config`'s faults
    /// and checks each lane arrives complete, in order, once. Returns the run's trace digest.
    fn transfer(config: SimConfig, lanes: u32, per_lane: u32) -> (u64, Vec<(u32, u32)>) {
        let net = SimNetwork::new(config);
        let a = net.transport(CoreAddr::new(1, 0));
        let b = net.transport(CoreAddr::new(2, 3));
        let mut to_send: VecDeque<(u32, u32)> =
            (0..per_lane).flat_map(|seq| (0..lanes).map(move |lane| (lane, seq))).collect();
        let mut next = vec![0u32; lanes as usize];
        let mut order = Vec::new();
        let delivered = net.run_until(STEPS_MAX, || {
            while let Some(&(lane, seq)) = to_send.front() {
                match a.try_send(b.local(), LaneId(lane), numbered(lane, seq)) {
                    Ok(()) => {
                        to_send.pop_front();
                    }
                    Err(TransportError::QueueFull { .. }) => break,
                    Err(other) => panic!("{other}"),
                }
            }
            while let Some(incoming) = b.try_recv() {
                let (lane, seq) = parse(&incoming.frame);
                assert_eq!(incoming.from, a.local());
                assert_eq!(incoming.lane, LaneId(lane));
                assert_eq!(seq, next[lane as usize], "lane {lane}: gap, duplicate or reorder");
                next[lane as usize] += 1;
                order.push((lane, seq));
            }
            order.len() == (lanes * per_lane) as usize
        });
        assert!(delivered, "only {} of {} frames arrived", order.len(), lanes * per_lane);
        assert_eq!(a.metrics().frames_dropped_link_down, 0);
        (net.trace_digest(), order)
    }

    #[test]
    fn five_percent_loss_and_duplication_still_deliver_every_frame_in_order() {
        for seed in 1..=5 {
            transfer(lossy(seed), 4, 500);
        }
    }

    #[test]
    fn faults_are_actually_injected() {
        let net = SimNetwork::new(lossy(9));
        let a = net.transport(CoreAddr::new(1, 0));
        let b = net.transport(CoreAddr::new(2, 0));
        for seq in 0..1000 {
            a.send_now(b.local(), numbered(0, seq));
            net.run_for(Duration::from_millis(1));
            while b.try_recv().is_some() {}
        }
        let (lost, duplicated) = net.fault_counts();
        assert!(lost > 20, "lost {lost}");
        assert!(duplicated > 20, "duplicated {duplicated}");
    }

    #[test]
    fn same_seed_same_run_other_seed_other_run() {
        let (first, first_order) = transfer(lossy(42), 3, 200);
        let (again, again_order) = transfer(lossy(42), 3, 200);
        let (other, _) = transfer(lossy(43), 3, 200);
        assert_eq!(first, again);
        assert_eq!(first_order, again_order);
        assert_ne!(first, other);
    }

    #[test]
    fn partition_takes_the_link_down_and_healing_brings_it_back() {
        let net = SimNetwork::new(SimConfig { seed: 5, ..SimConfig::default() });
        let a = net.transport(CoreAddr::new(1, 0));
        let b = net.transport(CoreAddr::new(2, 0));
        a.open(b.local()).unwrap();
        assert!(net.run_until(10_000, || a.is_up(b.local())));
        assert_eq!(a.try_next_event(), Some(LinkEvent::Up { peer: b.local() }));
        net.partition(NodeId(1), NodeId(2));
        a.try_send(b.local(), LaneId(0), numbered(0, 0)).unwrap();
        let went_down = net.run_until(100_000, || !a.is_up(b.local()));
        assert!(went_down);
        assert!(net.now() >= Duration::from_millis(1_000), "down before the link timeout");
        assert!(matches!(a.try_next_event(), Some(LinkEvent::Down { .. })));
        assert_eq!(a.metrics().frames_dropped_link_down, 1);
        net.heal(NodeId(1), NodeId(2));
        assert!(net.run_until(100_000, || a.is_up(b.local())));
        for seq in 1..=20 {
            a.try_send(b.local(), LaneId(0), numbered(0, seq)).unwrap();
        }
        let mut got = Vec::new();
        assert!(net.run_until(100_000, || {
            while let Some(incoming) = b.try_recv() {
                got.push(parse(&incoming.frame).1);
            }
            got.len() == 20
        }));
        assert_eq!(got, (1..=20).collect::<Vec<_>>(), "frame 0 was dropped with the link; 1.. in order");
    }

    #[test]
    fn full_receive_queue_holds_frames_back_without_losing_them() {
        let mut config = SimConfig { seed: 3, ..SimConfig::default() };
        config.limits.recv_queue_frames_max = 4;
        let net = SimNetwork::new(config);
        let a = net.transport(CoreAddr::new(1, 0));
        let b = net.transport(CoreAddr::new(2, 0));
        for seq in 0..50 {
            a.try_send(b.local(), LaneId(0), numbered(0, seq)).unwrap();
        }
        net.run_for(Duration::from_millis(500));
        assert_eq!(b.metrics().recv_queue_frames, 4);
        assert!(b.metrics().recv_queue_full > 0);
        let mut got = Vec::new();
        assert!(net.run_until(100_000, || {
            while let Some(incoming) = b.try_recv() {
                got.push(parse(&incoming.frame).1);
            }
            got.len() == 50
        }));
        assert_eq!(got, (0..50).collect::<Vec<_>>());
        assert!(a.is_up(b.local()), "a slow reader must not take the link down");
    }

    #[test]
    fn async_send_and_recv_follow_the_same_contract() {
        let net = SimNetwork::new(SimConfig::default());
        let a = net.transport(CoreAddr::new(1, 0));
        let b = net.transport(CoreAddr::new(2, 0));
        futures_lite::future::block_on(a.send(b.local(), LaneId(1), numbered(1, 0))).unwrap();
        net.run_for(Duration::from_millis(50));
        let incoming = futures_lite::future::block_on(b.recv()).unwrap();
        assert_eq!(parse(&incoming.frame), (1, 0));
        let event = futures_lite::future::block_on(a.next_event()).unwrap();
        assert_eq!(event, LinkEvent::Up { peer: b.local() });
    }

    impl SimTransport {
        fn send_now(&self, peer: CoreAddr, frame: Frame) {
            match self.try_send(peer, LaneId(0), frame) {
                Ok(()) | Err(TransportError::QueueFull { .. }) => {}
                Err(other) => panic!("{other}"),
            }
        }
    }
}
