//! SWIM gossip membership (foca) on its own glommio UDP port.
//!
//! Gossip tells a node who is in the cluster, where to reach them (replication base address,
//! number of cores) and who leads which partition as far as anyone has said. It **decides
//! nothing**: a member marked down may be alive behind a partition (an isolated node declares
//! everyone else down), and a leader-map entry is a hint; only consensus elects.
//!
//! - *Identity*: the gossip address plus node id, metadata and an incarnation (start time in ms,
//!   so a restarted node supersedes its previous self; foca renews it after a false death).
//! - *Join*: announce to seed addresses (the seed's identity is not known yet; foca accepts an
//!   announce addressed to any identity with the seed's address).
//! - *Failure detection*: direct probe, indirect probes, suspicion, then down after
//!   [`GossipConfig::suspect_to_down_ms`].
//! - *Leader map*: entries `(partition, term, leader)` travel as foca custom broadcasts; a
//!   higher term replaces a lower one. A node republishes the entries it published itself every
//!   [`GossipConfig::leader_republish_ms`] so that members who joined later learn them too.
//! - *Events*: [`MembershipEvent`]s go to every subscriber's bounded queue.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foca::{AccumulatingRuntime, BroadcastHandler, Foca, Identity, Invalidates, OwnedNotification, PostcardCodec};
use glommio::net::UdpSocket;
use rand_foca::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::transport::Signal;
use crate::types::NodeId;

/// Largest gossip datagram (fits an Ethernet MTU with room for IP/UDP headers).
pub const GOSSIP_PACKET_BYTES_MAX: usize = 1400;
/// Bytes of one encoded leader-map entry.
const LEADER_ENTRY_BYTES: usize = 20;
/// Datagrams queued for sending before new ones are dropped (gossip tolerates loss).
const OUTBOX_DATAGRAMS_MAX: usize = 1024;

/// Errors of the gossip layer.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// Socket setup failed.
    #[error("{operation} on {address}: {source}")]
    Io {
        /// What we were doing.
        operation: &'static str,
        /// The address involved.
        address: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// foca refused an operation.
    #[error("gossip protocol: {reason}")]
    Protocol {
        /// foca's error.
        reason: String,
    },
    /// A leader-map broadcast was malformed.
    #[error("malformed leader-map entry of {bytes} bytes")]
    MalformedLeaderEntry {
        /// Its length.
        bytes: usize,
    },
}

/// What a node tells the cluster about itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeMetadata {
    /// Replication UDP address of core 0 (core *c* listens on its port + *c*).
    pub replication_addr: SocketAddr,
    /// Kafka listener, for Metadata answers.
    pub kafka_addr: SocketAddr,
    /// Number of cores (shards) the node runs.
    pub cores: u16,
}

/// A member as gossip knows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The gossip UDP address: the member's address for foca.
    pub gossip_addr: SocketAddr,
    /// The node id (`u32::MAX` only in the placeholder used to announce to a seed).
    pub node: u32,
    /// Start time in ms since the epoch, bumped on renewal; the larger one wins a conflict.
    pub incarnation: u64,
    /// Addresses and cores.
    pub metadata: NodeMetadata,
}

impl NodeIdentity {
    /// The node id.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.node)
    }
}

impl Identity for NodeIdentity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self { incarnation: self.incarnation + 1, ..self.clone() })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

/// One leader-map entry: who leads `partition` in `term`, as published by consensus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaderEntry {
    /// A global partition id (the controller assigns them).
    pub partition: u64,
    /// The consensus term (Kafka leader epoch) of this leadership.
    pub term: u64,
    /// The leading node.
    pub leader: NodeId,
}

impl LeaderEntry {
    fn encode(&self) -> [u8; LEADER_ENTRY_BYTES] {
        let mut bytes = [0u8; LEADER_ENTRY_BYTES];
        bytes[..8].copy_from_slice(&self.partition.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.term.to_le_bytes());
        bytes[16..].copy_from_slice(&self.leader.0.to_le_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<Self, GossipError> {
        let bytes: &[u8; LEADER_ENTRY_BYTES] =
            bytes.try_into().map_err(|_| GossipError::MalformedLeaderEntry { bytes: bytes.len() })?;
        let word = |range: std::ops::Range<usize>| u64::from_le_bytes(bytes[range].try_into().expect("8 bytes"));
        Ok(Self {
            partition: word(0..8),
            term: word(8..16),
            leader: NodeId(u32::from_le_bytes(bytes[16..].try_into().expect("4 bytes"))),
        })
    }
}

/// foca's key for a leader broadcast: a higher (or equal) term of a partition replaces older.
#[derive(Debug)]
pub struct LeaderKey {
    partition: u64,
    term: u64,
}

impl Invalidates for LeaderKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.partition == other.partition && self.term >= other.term
    }
}

/// Membership changes delivered to subscribers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A member became active (joined, or came back).
    Up(NodeIdentity),
    /// A member was declared down (it may only be unreachable from here).
    Down(NodeIdentity),
    /// A member restarted or renewed: same address, newer incarnation.
    Renamed {
        /// The previous identity.
        before: NodeIdentity,
        /// The current identity.
        after: NodeIdentity,
    },
    /// A leader-map entry newer than what this node knew.
    Leader(LeaderEntry),
    /// This node is known by at least one member.
    Active,
    /// This node knows no active member.
    Idle,
    /// This node was declared down by the cluster and rejoined under a renewed identity.
    Rejoined,
}

/// Timings of the failure detector and the dissemination.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// This node.
    pub node: NodeId,
    /// The gossip UDP address to bind (and announce).
    pub bind: SocketAddr,
    /// Gossip addresses of seed nodes to announce to at start.
    pub seeds: Vec<SocketAddr>,
    /// What this node tells the cluster.
    pub metadata: NodeMetadata,
    /// How often each member probes a random other member.
    pub probe_period_ms: u64,
    /// How long a direct probe waits before asking others to probe indirectly.
    pub probe_rtt_ms: u64,
    /// How long a suspect stays suspect before it is declared down.
    pub suspect_to_down_ms: u64,
    /// How often updates are pushed to random members besides probes.
    pub gossip_period_ms: u64,
    /// How often seeds are re-announced to while this node knows no member (a seed that
    /// started later is then still found).
    pub announce_retry_ms: u64,
    /// How often a node republishes the leader entries it published.
    pub leader_republish_ms: u64,
    /// Events held per subscriber; older ones are dropped past this.
    pub events_per_subscriber_max: usize,
    /// Expected cluster size, which sizes dissemination fan-out.
    pub cluster_size_hint: u32,
}

impl GossipConfig {
    /// LAN defaults for `node` on `bind`.
    pub fn new(node: NodeId, bind: SocketAddr, metadata: NodeMetadata) -> Self {
        Self {
            node,
            bind,
            seeds: Vec::new(),
            metadata,
            probe_period_ms: 500,
            probe_rtt_ms: 150,
            suspect_to_down_ms: 1_500,
            gossip_period_ms: 100,
            announce_retry_ms: 500,
            leader_republish_ms: 5_000,
            events_per_subscriber_max: 4096,
            cluster_size_hint: 5,
        }
    }

    fn foca_config(&self) -> foca::Config {
        let mut config = foca::Config::new_lan(
            std::num::NonZeroU32::new(self.cluster_size_hint.max(1)).expect("nonzero"),
        );
        config.probe_period = Duration::from_millis(self.probe_period_ms);
        config.probe_rtt = Duration::from_millis(self.probe_rtt_ms);
        config.suspect_to_down_after = Duration::from_millis(self.suspect_to_down_ms);
        config.max_packet_size = NonZeroUsize::new(GOSSIP_PACKET_BYTES_MAX).expect("nonzero");
        config.max_transmissions = config.max_transmissions.max(NonZeroU8::new(6).expect("nonzero"));
        config.periodic_gossip = Some(foca::PeriodicParams {
            frequency: Duration::from_millis(self.gossip_period_ms),
            num_members: NonZeroUsize::new(3).expect("nonzero"),
        });
        config
    }
}

/// The newest leader entry per partition, shared by the foca broadcast handler and [`Gossip`]
/// (foca owns its handler and offers no access to it).
#[derive(Default)]
struct LeaderTable {
    entries: BTreeMap<u64, LeaderEntry>,
    /// Entries this node published itself (republished periodically).
    own: BTreeMap<u64, LeaderEntry>,
    newly_learned: Vec<LeaderEntry>,
}

/// foca's handler for leader-map broadcasts.
#[derive(Default)]
struct LeaderMap {
    table: Rc<RefCell<LeaderTable>>,
}

impl BroadcastHandler<NodeIdentity> for LeaderMap {
    type Key = LeaderKey;
    type Error = GossipError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&NodeIdentity>,
    ) -> Result<Option<LeaderKey>, GossipError> {
        let entry = LeaderEntry::decode(data)?;
        let mut table = self.table.borrow_mut();
        let known = table.entries.get(&entry.partition);
        let local = sender.is_none();
        // A remote entry is news only with a higher term; a local (re)publish of the current
        // term is disseminated again so late joiners learn it.
        let news = match known {
            None => true,
            Some(known) if entry.term > known.term => true,
            Some(known) => local && entry.term == known.term,
        };
        if !news {
            return Ok(None);
        }
        if known.is_none_or(|known| entry.term > known.term) {
            table.newly_learned.push(entry);
        }
        table.entries.insert(entry.partition, entry);
        Ok(Some(LeaderKey { partition: entry.partition, term: entry.term }))
    }
}

type FocaInstance = Foca<NodeIdentity, PostcardCodec, rand_foca::rngs::StdRng, LeaderMap>;

struct State {
    foca: FocaInstance,
    leaders: Rc<RefCell<LeaderTable>>,
    runtime: AccumulatingRuntime<NodeIdentity>,
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    subscribers: Vec<Rc<RefCell<Subscriber>>>,
    events_per_subscriber_max: usize,
    datagrams_dropped: u64,
    events_dropped: u64,
    stopped: bool,
}

#[derive(Default)]
struct Subscriber {
    events: VecDeque<MembershipEvent>,
    waker: Option<Waker>,
}

/// A receiver of membership events.
pub struct Subscription {
    inner: Rc<RefCell<Subscriber>>,
}

impl Subscription {
    /// The next event; waits for one.
    pub async fn next(&self) -> MembershipEvent {
        std::future::poll_fn(|cx| {
            let mut inner = self.inner.borrow_mut();
            match inner.events.pop_front() {
                Some(event) => Poll::Ready(event),
                None => {
                    inner.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// The next event, if one is waiting.
    pub fn try_next(&self) -> Option<MembershipEvent> {
        self.inner.borrow_mut().events.pop_front()
    }
}

/// A running gossip member on one core (normally core 0).
pub struct Gossip {
    state: Rc<RefCell<State>>,
    signal: Rc<Signal>,
    identity: NodeIdentity,
    local_addr: SocketAddr,
    tasks: Vec<glommio::Task<()>>,
}

impl State {
    /// Moves what foca produced into the outbox, timers and subscribers.
    fn flush(&mut self, state_rc: &Rc<RefCell<State>>, signal: &Rc<Signal>) {
        while let Some((to, data)) = self.runtime.to_send() {
            if self.outbox.len() >= OUTBOX_DATAGRAMS_MAX {
                self.datagrams_dropped += 1;
                continue;
            }
            self.outbox.push_back((to.gossip_addr, data.to_vec()));
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            let state = Rc::downgrade(state_rc);
            let signal = signal.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(after).await;
                let Some(state_rc) = state.upgrade() else { return };
                let mut state = state_rc.borrow_mut();
                if state.stopped {
                    return;
                }
                let State { foca, runtime, .. } = &mut *state;
                if let Err(error) = foca.handle_timer(timer, &mut *runtime) {
                    tracing::debug!(%error, "gossip timer");
                }
                state.flush(&state_rc, &signal);
            })
            .detach();
        }
        while let Some(notification) = self.runtime.to_notify() {
            let event = match notification {
                OwnedNotification::MemberUp(id) => MembershipEvent::Up(id),
                OwnedNotification::MemberDown(id) => MembershipEvent::Down(id),
                OwnedNotification::Rename(before, after) => MembershipEvent::Renamed { before, after },
                OwnedNotification::Active => MembershipEvent::Active,
                OwnedNotification::Idle => MembershipEvent::Idle,
                OwnedNotification::Rejoin(_) => MembershipEvent::Rejoined,
                OwnedNotification::Defunct => MembershipEvent::Idle,
            };
            self.publish(event);
        }
        let learned = std::mem::take(&mut self.foca_leaders().newly_learned);
        for entry in learned {
            self.publish(MembershipEvent::Leader(entry));
        }
        if !self.outbox.is_empty() {
            signal.raise();
        }
    }

    fn foca_leaders(&self) -> std::cell::RefMut<'_, LeaderTable> {
        self.leaders.borrow_mut()
    }

    fn publish(&mut self, event: MembershipEvent) {
        for subscriber in &self.subscribers {
            let mut subscriber = subscriber.borrow_mut();
            if subscriber.events.len() >= self.events_per_subscriber_max {
                subscriber.events.pop_front();
                self.events_dropped += 1;
            }
            subscriber.events.push_back(event.clone());
            if let Some(waker) = subscriber.waker.take() {
                waker.wake();
            }
        }
    }
}

impl Gossip {
    /// Binds the gossip socket, starts the member and announces to the seeds. Must run inside
    /// a glommio executor.
    pub fn start(config: GossipConfig) -> Result<Self, GossipError> {
        let socket = UdpSocket::bind(config.bind).map_err(|e| GossipError::Io {
            operation: "bind gossip socket",
            address: config.bind,
            source: e.into(),
        })?;
        let local_addr = socket.local_addr().map_err(|e| GossipError::Io {
            operation: "read gossip address",
            address: config.bind,
            source: e.into(),
        })?;
        let incarnation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
        let identity = NodeIdentity {
            gossip_addr: local_addr,
            node: config.node.0,
            incarnation,
            metadata: config.metadata.clone(),
        };
        let rng = rand_foca::rngs::StdRng::seed_from_u64(incarnation ^ u64::from(config.node.0));
        let leaders = Rc::new(RefCell::new(LeaderTable::default()));
        let foca = Foca::with_custom_broadcast(
            identity.clone(),
            config.foca_config(),
            rng,
            PostcardCodec,
            LeaderMap { table: leaders.clone() },
        );
        let state = Rc::new(RefCell::new(State {
            foca,
            leaders,
            runtime: AccumulatingRuntime::new(),
            outbox: VecDeque::new(),
            subscribers: Vec::new(),
            events_per_subscriber_max: config.events_per_subscriber_max,
            datagrams_dropped: 0,
            events_dropped: 0,
            stopped: false,
        }));
        let socket = Rc::new(socket);
        let signal = Rc::new(Signal::default());
        let tasks = vec![
            glommio::spawn_local(receive_loop(state.clone(), signal.clone(), socket.clone())),
            glommio::spawn_local(send_loop(state.clone(), signal.clone(), socket)),
            glommio::spawn_local(announce_loop(state.clone(), signal.clone(), config.clone())),
            glommio::spawn_local(republish_loop(state.clone(), signal.clone(), config.leader_republish_ms)),
        ];
        Ok(Self { state, signal, identity, local_addr, tasks })
    }

    /// This member's identity.
    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// The bound gossip address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A new subscriber; it sees events from now on.
    pub fn subscribe(&self) -> Subscription {
        let inner = Rc::new(RefCell::new(Subscriber::default()));
        self.state.borrow_mut().subscribers.push(inner.clone());
        Subscription { inner }
    }

    /// Active members other than this node.
    pub fn members(&self) -> Vec<NodeIdentity> {
        self.state.borrow().foca.iter_members().map(|member| member.id().clone()).collect()
    }

    /// The newest leader entry known for `partition`.
    pub fn leader_of(&self, partition: u64) -> Option<LeaderEntry> {
        self.state.borrow().foca_leaders().entries.get(&partition).copied()
    }

    /// Publishes a leader entry (consensus calls this when this node becomes leader). Returns
    /// false if a newer or equal term is already known from someone else.
    pub fn publish_leader(&self, entry: LeaderEntry) -> Result<bool, GossipError> {
        let mut state = self.state.borrow_mut();
        let added = state
            .foca
            .add_broadcast(&entry.encode())
            .map_err(|e| GossipError::Protocol { reason: e.to_string() })?;
        if added {
            state.foca_leaders().own.insert(entry.partition, entry);
        }
        state.flush(&self.state, &self.signal);
        Ok(added)
    }

    /// (datagrams dropped at a full outbox, events dropped at full subscriber queues)
    pub fn drop_counts(&self) -> (u64, u64) {
        let state = self.state.borrow();
        (state.datagrams_dropped, state.events_dropped)
    }

    /// Tells the cluster this node leaves, sends it, and stops.
    pub async fn leave(self) {
        {
            let mut state = self.state.borrow_mut();
            let State { foca, runtime, .. } = &mut *state;
            if let Err(error) = foca.leave_cluster(&mut *runtime) {
                tracing::debug!(%error, "gossip leave");
            }
            state.flush(&self.state, &self.signal);
        }
        // Give the sender a bounded moment to put the leave announcements on the wire.
        for _ in 0..50 {
            if self.state.borrow().outbox.is_empty() {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        self.state.borrow_mut().stopped = true;
    }
}

impl Drop for Gossip {
    fn drop(&mut self) {
        self.state.borrow_mut().stopped = true;
        self.tasks.clear();
    }
}

async fn receive_loop(state: Rc<RefCell<State>>, signal: Rc<Signal>, socket: Rc<UdpSocket>) {
    let mut buffer = vec![0u8; GOSSIP_PACKET_BYTES_MAX + 64];
    loop {
        let Ok((size, _from)) = socket.recv_from(&mut buffer).await else { continue };
        let mut guard = state.borrow_mut();
        if guard.stopped {
            return;
        }
        let State { foca, runtime, .. } = &mut *guard;
        if let Err(error) = foca.handle_data(&buffer[..size], &mut *runtime) {
            tracing::debug!(%error, "gossip datagram rejected");
        }
        guard.flush(&state, &signal);
    }
}

async fn send_loop(state: Rc<RefCell<State>>, signal: Rc<Signal>, socket: Rc<UdpSocket>) {
    loop {
        let next = state.borrow_mut().outbox.pop_front();
        match next {
            Some((to, data)) => {
                if let Err(error) = socket.send_to(&data, to).await {
                    tracing::trace!(%error, %to, "gossip send failed");
                }
            }
            None => signal.wait().await,
        }
    }
}

async fn announce_loop(state: Rc<RefCell<State>>, signal: Rc<Signal>, config: GossipConfig) {
    loop {
        {
            let mut guard = state.borrow_mut();
            if guard.foca.num_members() > 0 {
                return;
            }
            let me = guard.foca.identity().clone();
            for seed in config.seeds.iter().filter(|seed| **seed != me.gossip_addr) {
                // foca accepts an announce addressed to any identity with the seed's address.
                let placeholder = NodeIdentity { gossip_addr: *seed, node: u32::MAX, incarnation: 0, ..me.clone() };
                let State { foca, runtime, .. } = &mut *guard;
                if let Err(error) = foca.announce(placeholder, &mut *runtime) {
                    tracing::debug!(%error, "gossip announce");
                }
            }
            guard.flush(&state, &signal);
        }
        glommio::timer::sleep(Duration::from_millis(config.announce_retry_ms)).await;
    }
}

async fn republish_loop(state: Rc<RefCell<State>>, signal: Rc<Signal>, period_ms: u64) {
    loop {
        glommio::timer::sleep(Duration::from_millis(period_ms)).await;
        let mut guard = state.borrow_mut();
        let own: Vec<LeaderEntry> = guard.foca_leaders().own.values().copied().collect();
        for entry in own {
            let current = guard.foca_leaders().entries.get(&entry.partition).copied();
            if current.is_some_and(|current| current.term > entry.term) {
                guard.foca_leaders().own.remove(&entry.partition); // Superseded: stop saying it.
                continue;
            }
            let _ = guard.foca.add_broadcast(&entry.encode());
        }
        guard.flush(&state, &signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(port: u16) -> NodeMetadata {
        NodeMetadata {
            replication_addr: format!("127.0.0.1:{port}").parse().unwrap(),
            kafka_addr: "127.0.0.1:9092".parse().unwrap(),
            cores: 2,
        }
    }

    #[test]
    fn leader_entry_round_trips_and_rejects_bad_lengths() {
        let entry = LeaderEntry { partition: 1 << 40, term: 77, leader: NodeId(3) };
        assert_eq!(LeaderEntry::decode(&entry.encode()).unwrap(), entry);
        assert!(LeaderEntry::decode(&[0; 19]).is_err());
    }

    #[test]
    fn higher_term_wins_in_the_leader_map() {
        let mut map = LeaderMap::default();
        let sender = NodeIdentity {
            gossip_addr: "127.0.0.1:1".parse().unwrap(),
            node: 1,
            incarnation: 1,
            metadata: metadata(1),
        };
        let at = |term, leader| LeaderEntry { partition: 5, term, leader: NodeId(leader) }.encode();
        assert!(map.receive_item(&at(2, 1), Some(&sender)).unwrap().is_some());
        assert!(map.receive_item(&at(1, 2), Some(&sender)).unwrap().is_none(), "lower term");
        assert!(map.receive_item(&at(2, 1), Some(&sender)).unwrap().is_none(), "already known");
        assert!(map.receive_item(&at(2, 1), None).unwrap().is_some(), "own republish");
        assert!(map.receive_item(&at(3, 2), Some(&sender)).unwrap().is_some());
        assert_eq!(map.table.borrow().entries[&5].leader, NodeId(2));
        assert_eq!(map.table.borrow().newly_learned.len(), 2);
    }

    #[test]
    fn three_members_join_through_one_seed_share_leaders_and_see_a_leave() {
        glommio::LocalExecutor::default().run(async {
            let start = |node: u32, seeds: Vec<SocketAddr>| {
                let mut config = GossipConfig::new(NodeId(node), "127.0.0.1:0".parse().unwrap(), metadata(7000));
                config.seeds = seeds;
                config.probe_period_ms = 200;
                config.probe_rtt_ms = 80;
                config.gossip_period_ms = 50;
                Gossip::start(config).unwrap()
            };
            let seed = start(1, vec![]);
            let b = start(2, vec![seed.local_addr()]);
            let c = start(3, vec![seed.local_addr()]);
            let events = c.subscribe();
            let converged = glommio::timer::timeout(Duration::from_secs(20), async {
                while [&seed, &b, &c].iter().any(|member| member.members().len() < 2) {
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                }
                Ok(())
            })
            .await;
            assert!(converged.is_ok(), "members: {:?}", [seed.members(), b.members(), c.members()]);
            let b_node = c.members().iter().find(|m| m.node == 2).cloned().expect("b known to c");
            assert_eq!(b_node.metadata, metadata(7000));

            let entry = LeaderEntry { partition: 42, term: 3, leader: NodeId(2) };
            assert!(b.publish_leader(entry).unwrap());
            let learned = glommio::timer::timeout(Duration::from_secs(20), async {
                loop {
                    if let MembershipEvent::Leader(got) = events.next().await {
                        return Ok(got);
                    }
                }
            })
            .await
            .expect("leader entry disseminated");
            assert_eq!(learned, entry);
            assert_eq!(seed.leader_of(42), Some(entry));

            b.leave().await;
            let gone = glommio::timer::timeout(Duration::from_secs(20), async {
                while c.members().iter().any(|m| m.node == 2) {
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                }
                Ok(())
            })
            .await;
            assert!(gone.is_ok(), "c still lists b after it left");
        });
    }
}
