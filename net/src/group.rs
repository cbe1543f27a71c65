//! Classic consumer-group coordinator: a sans-I/O state machine fed by requests and a clock.
//!
//! States follow Kafka's `GroupMetadata`: `Empty` → `PreparingRebalance` (members (re)join) →
//! `CompletingRebalance` (leader computes the assignment, members wait in SyncGroup) → `Stable`.
//! JoinGroup and SyncGroup may not be answerable at once; the caller passes a [`ReplyToken`] and
//! gets `(token, reply)` pairs back whenever answers become ready, from the same call or from a
//! later one (another member's request, or [`GroupCoordinator::tick`] when a timeout expires).
//! Nothing here does I/O or reads a clock: `now` is always a parameter, so tests drive time.
//!
//! Committed offsets live here in memory; the controller makes them durable first by appending
//! them to the internal `__consumer_offsets` topic (see [`crate::offsets_topic`]): it validates a
//! commit with [`GroupCoordinator::commit`] and an empty offset list, appends, and only then applies
//! the offsets with [`GroupCoordinator::restore_offset`], which start-up replay uses too.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::backend::TopicPartition;
use crate::errors::KafkaCode;

/// Smallest session timeout a member may ask for (Kafka `group.min.session.timeout.ms`).
pub const SESSION_TIMEOUT_MS_MIN: i32 = 1_000;
/// Largest session timeout (Kafka `group.max.session.timeout.ms`).
pub const SESSION_TIMEOUT_MS_MAX: i32 = 1_800_000;
/// Most members one group may have.
pub const GROUP_MEMBERS_MAX: usize = 1_000;
/// Most groups one coordinator holds.
pub const GROUPS_MAX: usize = 100_000;

/// Identifies a pending JoinGroup or SyncGroup request to its caller.
pub type ReplyToken = u64;

/// Group states, named as DescribeGroups reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members.
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Waiting for the leader's assignment.
    CompletingRebalance,
    /// Assignment distributed.
    Stable,
}

impl GroupState {
    /// Kafka's name of the state.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// A JoinGroup request.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Group id.
    pub group: String,
    /// Member id, empty on first join.
    pub member_id: String,
    /// Client id (prefix of the generated member id).
    pub client_id: String,
    /// Client host for DescribeGroups.
    pub client_host: String,
    /// Session timeout.
    pub session_timeout_ms: i32,
    /// Rebalance timeout.
    pub rebalance_timeout_ms: i32,
    /// Protocol type, "consumer" for consumers.
    pub protocol_type: String,
    /// (assignor name, subscription metadata), in the member's preference order.
    pub protocols: Vec<(String, Bytes)>,
}

/// A JoinGroup answer.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinReply {
    /// Error code.
    pub error: KafkaCode,
    /// Generation formed.
    pub generation: i32,
    /// Protocol type of the group.
    pub protocol_type: String,
    /// Chosen assignor.
    pub protocol: String,
    /// Leader's member id.
    pub leader: String,
    /// This member's id.
    pub member_id: String,
    /// (member id, metadata) of all members, for the leader only.
    pub members: Vec<(String, Bytes)>,
}

/// A SyncGroup answer.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncReply {
    /// Error code.
    pub error: KafkaCode,
    /// Protocol type of the group.
    pub protocol_type: String,
    /// Chosen assignor.
    pub protocol: String,
    /// This member's assignment.
    pub assignment: Bytes,
}

/// An answer to a request that may have waited.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupReply {
    /// For a JoinGroup.
    Join(JoinReply),
    /// For a SyncGroup.
    Sync(SyncReply),
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// Next offset to consume.
    pub offset: i64,
    /// Client metadata.
    pub metadata: String,
}

/// Member description for DescribeGroups.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberDescription {
    /// Member id.
    pub member_id: String,
    /// Client id.
    pub client_id: String,
    /// Client host.
    pub client_host: String,
    /// Metadata of the chosen protocol.
    pub metadata: Bytes,
    /// Assignment.
    pub assignment: Bytes,
}

/// Group description for DescribeGroups.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupDescription {
    /// State.
    pub state: GroupState,
    /// Protocol type.
    pub protocol_type: String,
    /// Chosen assignor.
    pub protocol: String,
    /// Members.
    pub members: Vec<MemberDescription>,
}

#[derive(Debug)]
struct Member {
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_heard: Instant,
    pending_join: Option<ReplyToken>,
    pending_sync: Option<ReplyToken>,
}

#[derive(Debug)]
struct Group {
    state: GroupState,
    generation: i32,
    protocol_type: String,
    protocol: String,
    leader: String,
    members: BTreeMap<String, Member>,
    rebalance_deadline: Option<Instant>,
    offsets: HashMap<TopicPartition, CommittedOffset>,
}

impl Group {
    fn new() -> Self {
        Self {
            state: GroupState::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol: String::new(),
            leader: String::new(),
            members: BTreeMap::new(),
            rebalance_deadline: None,
            offsets: HashMap::new(),
        }
    }
}

/// All groups of the coordinator.
#[derive(Debug, Default)]
pub struct GroupCoordinator {
    groups: HashMap<String, Group>,
    members_created: u64,
}

type Replies = Vec<(ReplyToken, GroupReply)>;

fn sync_error(error: KafkaCode) -> GroupReply {
    GroupReply::Sync(SyncReply {
        error,
        protocol_type: String::new(),
        protocol: String::new(),
        assignment: Bytes::new(),
    })
}

fn join_error(error: KafkaCode, member_id: &str) -> GroupReply {
    GroupReply::Join(JoinReply {
        error,
        generation: -1,
        protocol_type: String::new(),
        protocol: String::new(),
        leader: String::new(),
        member_id: member_id.to_string(),
        members: Vec::new(),
    })
}

impl GroupCoordinator {
    /// An empty coordinator.
    pub fn new() -> Self {
        Self::default()
    }

    /// JoinGroup. The reply for `token` comes back now or from a later call.
    pub fn join(&mut self, now: Instant, token: ReplyToken, request: JoinRequest) -> Replies {
        let timeout_valid = (SESSION_TIMEOUT_MS_MIN..=SESSION_TIMEOUT_MS_MAX).contains(&request.session_timeout_ms);
        if request.group.is_empty() {
            return vec![(token, join_error(KafkaCode::InvalidGroupId, &request.member_id))];
        }
        if !timeout_valid {
            return vec![(token, join_error(KafkaCode::InvalidSessionTimeout, &request.member_id))];
        }
        if !self.groups.contains_key(&request.group) && self.groups.len() >= GROUPS_MAX {
            return vec![(token, join_error(KafkaCode::CoordinatorNotAvailable, &request.member_id))];
        }
        self.members_created += 1;
        let fresh_id = format!("{}-{}", request.client_id, self.members_created);
        let group = self.groups.entry(request.group.clone()).or_insert_with(Group::new);
        let mut replies = Vec::new();
        // A member must share a protocol type and at least one assignor with the group.
        let compatible = group.members.is_empty()
            || (request.protocol_type == group.protocol_type
                && group.members.values().all(|member| {
                    member.protocols.iter().any(|(name, _)| request.protocols.iter().any(|(other, _)| other == name))
                }));
        if !compatible || request.protocols.is_empty() {
            return vec![(token, join_error(KafkaCode::InconsistentGroupProtocol, &request.member_id))];
        }
        let member_id = if request.member_id.is_empty() {
            if group.members.len() >= GROUP_MEMBERS_MAX {
                return vec![(token, join_error(KafkaCode::RebalanceInProgress, ""))];
            }
            fresh_id
        } else if group.members.contains_key(&request.member_id) {
            request.member_id.clone()
        } else {
            return vec![(token, join_error(KafkaCode::UnknownMemberId, &request.member_id))];
        };
        if group.members.is_empty() {
            group.protocol_type = request.protocol_type.clone();
        }
        let member = group.members.entry(member_id.clone()).or_insert_with(|| Member {
            client_id: request.client_id.clone(),
            client_host: request.client_host.clone(),
            session_timeout: Duration::ZERO,
            rebalance_timeout: Duration::ZERO,
            protocols: Vec::new(),
            assignment: Bytes::new(),
            last_heard: now,
            pending_join: None,
            pending_sync: None,
        });
        member.session_timeout = Duration::from_millis(u64::try_from(request.session_timeout_ms).unwrap_or(0));
        member.rebalance_timeout =
            Duration::from_millis(u64::try_from(request.rebalance_timeout_ms.max(request.session_timeout_ms)).unwrap_or(0));
        member.protocols = request.protocols;
        member.last_heard = now;
        if let Some(replaced) = member.pending_join.replace(token) {
            replies.push((replaced, join_error(KafkaCode::UnknownMemberId, &member_id)));
        }
        if group.state != GroupState::PreparingRebalance {
            Self::prepare_rebalance(group, now, &mut replies);
        }
        Self::maybe_complete_join(group, &mut replies);
        replies
    }

    fn prepare_rebalance(group: &mut Group, now: Instant, replies: &mut Replies) {
        // Members waiting in SyncGroup must rejoin.
        for member in group.members.values_mut() {
            if let Some(token) = member.pending_sync.take() {
                replies.push((token, sync_error(KafkaCode::RebalanceInProgress)));
            }
        }
        let timeout = group.members.values().map(|member| member.rebalance_timeout).max().unwrap_or_default();
        group.rebalance_deadline = Some(now + timeout);
        group.state = GroupState::PreparingRebalance;
    }

    /// Finish the join phase when every member has rejoined.
    fn maybe_complete_join(group: &mut Group, replies: &mut Replies) {
        assert_eq!(group.state, GroupState::PreparingRebalance);
        if group.members.values().any(|member| member.pending_join.is_none()) {
            return;
        }
        Self::complete_join(group, replies);
    }

    fn complete_join(group: &mut Group, replies: &mut Replies) {
        group.generation += 1;
        group.rebalance_deadline = None;
        if group.members.is_empty() {
            group.state = GroupState::Empty;
            group.protocol.clear();
            group.leader.clear();
            return;
        }
        if !group.members.contains_key(&group.leader) {
            group.leader = group.members.keys().next().expect("not empty").clone();
        }
        // The leader's most preferred assignor that every member supports.
        let leader = &group.members[&group.leader];
        group.protocol = leader
            .protocols
            .iter()
            .map(|(name, _)| name)
            .find(|name| group.members.values().all(|member| member.protocols.iter().any(|(other, _)| other == *name)))
            .cloned()
            .unwrap_or_default();
        let metadata_of = |member: &Member, protocol: &str| {
            member.protocols.iter().find(|(name, _)| name == protocol).map(|(_, metadata)| metadata.clone()).unwrap_or_default()
        };
        let all: Vec<(String, Bytes)> =
            group.members.iter().map(|(id, member)| (id.clone(), metadata_of(member, &group.protocol))).collect();
        for (id, member) in group.members.iter_mut() {
            member.assignment = Bytes::new();
            let token = member.pending_join.take().expect("all members rejoined");
            let reply = JoinReply {
                error: KafkaCode::None,
                generation: group.generation,
                protocol_type: group.protocol_type.clone(),
                protocol: group.protocol.clone(),
                leader: group.leader.clone(),
                member_id: id.clone(),
                members: if *id == group.leader { all.clone() } else { Vec::new() },
            };
            replies.push((token, GroupReply::Join(reply)));
        }
        group.state = GroupState::CompletingRebalance;
    }

    /// SyncGroup. `assignments` is non-empty only from the leader.
    pub fn sync(
        &mut self,
        now: Instant,
        token: ReplyToken,
        group_id: &str,
        generation: i32,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
    ) -> Replies {
        let Some(group) = self.groups.get_mut(group_id) else {
            return vec![(token, sync_error(KafkaCode::UnknownMemberId))];
        };
        let Some(member) = group.members.get_mut(member_id) else {
            return vec![(token, sync_error(KafkaCode::UnknownMemberId))];
        };
        if generation != group.generation {
            return vec![(token, sync_error(KafkaCode::IllegalGeneration))];
        }
        member.last_heard = now;
        let mut replies = Vec::new();
        match group.state {
            GroupState::Empty | GroupState::PreparingRebalance => {
                replies.push((token, sync_error(KafkaCode::RebalanceInProgress)));
            }
            GroupState::Stable => {
                replies.push((token, Self::sync_reply(group, member_id)));
            }
            GroupState::CompletingRebalance => {
                if let Some(replaced) = group.members.get_mut(member_id).expect("checked").pending_sync.replace(token) {
                    replies.push((replaced, sync_error(KafkaCode::RebalanceInProgress)));
                }
                if member_id == group.leader {
                    for (id, assignment) in assignments {
                        if let Some(member) = group.members.get_mut(&id) {
                            member.assignment = assignment;
                        }
                    }
                    group.state = GroupState::Stable;
                    let waiting: Vec<(String, ReplyToken)> = group
                        .members
                        .iter_mut()
                        .filter_map(|(id, member)| member.pending_sync.take().map(|token| (id.clone(), token)))
                        .collect();
                    for (id, token) in waiting {
                        replies.push((token, Self::sync_reply(group, &id)));
                    }
                }
            }
        }
        replies
    }

    fn sync_reply(group: &Group, member_id: &str) -> GroupReply {
        GroupReply::Sync(SyncReply {
            error: KafkaCode::None,
            protocol_type: group.protocol_type.clone(),
            protocol: group.protocol.clone(),
            assignment: group.members[member_id].assignment.clone(),
        })
    }

    /// Heartbeat: keeps the session alive and tells the member when to rejoin.
    pub fn heartbeat(&mut self, now: Instant, group_id: &str, generation: i32, member_id: &str) -> KafkaCode {
        let Some(group) = self.groups.get_mut(group_id) else {
            return KafkaCode::UnknownMemberId;
        };
        let Some(member) = group.members.get_mut(member_id) else {
            return KafkaCode::UnknownMemberId;
        };
        member.last_heard = now;
        if group.state == GroupState::PreparingRebalance {
            return KafkaCode::RebalanceInProgress;
        }
        if generation != group.generation {
            return KafkaCode::IllegalGeneration;
        }
        KafkaCode::None
    }

    /// LeaveGroup for each member id; returns a code per member plus any replies it unblocked.
    pub fn leave(&mut self, now: Instant, group_id: &str, member_ids: &[String]) -> (Vec<KafkaCode>, Replies) {
        let mut replies = Vec::new();
        let Some(group) = self.groups.get_mut(group_id) else {
            return (vec![KafkaCode::UnknownMemberId; member_ids.len()], replies);
        };
        let mut codes = Vec::new();
        let mut removed_any = false;
        for member_id in member_ids {
            match group.members.remove(member_id) {
                Some(member) => {
                    Self::fail_pending(member, &mut replies);
                    removed_any = true;
                    codes.push(KafkaCode::None);
                }
                None => codes.push(KafkaCode::UnknownMemberId),
            }
        }
        if removed_any {
            Self::after_removal(group, now, &mut replies);
        }
        (codes, replies)
    }

    fn fail_pending(member: Member, replies: &mut Replies) {
        if let Some(token) = member.pending_join {
            replies.push((token, join_error(KafkaCode::UnknownMemberId, "")));
        }
        if let Some(token) = member.pending_sync {
            replies.push((token, sync_error(KafkaCode::UnknownMemberId)));
        }
    }

    fn after_removal(group: &mut Group, now: Instant, replies: &mut Replies) {
        if group.state != GroupState::PreparingRebalance {
            Self::prepare_rebalance(group, now, replies);
        }
        Self::maybe_complete_join(group, replies);
    }

    /// Expire sessions and rebalance deadlines. Call it periodically.
    pub fn tick(&mut self, now: Instant) -> Replies {
        let mut replies = Vec::new();
        for group in self.groups.values_mut() {
            if let Some(deadline) = group.rebalance_deadline {
                if now >= deadline && group.state == GroupState::PreparingRebalance {
                    // Members that did not rejoin in time are dropped.
                    let late: Vec<String> = group
                        .members
                        .iter()
                        .filter(|(_, member)| member.pending_join.is_none())
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in late {
                        let member = group.members.remove(&id).expect("listed");
                        Self::fail_pending(member, &mut replies);
                    }
                    Self::complete_join(group, &mut replies);
                    continue;
                }
            }
            // Members waiting in JoinGroup are covered by the rebalance deadline instead.
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, member)| member.pending_join.is_none() && now.duration_since(member.last_heard) > member.session_timeout)
                .map(|(id, _)| id.clone())
                .collect();
            if expired.is_empty() {
                continue;
            }
            for id in expired {
                tracing::info!(member = %id, "group member session expired");
                let member = group.members.remove(&id).expect("listed");
                Self::fail_pending(member, &mut replies);
            }
            Self::after_removal(group, now, &mut replies);
        }
        replies
    }

    /// OffsetCommit. A generation of -1 with an empty member id is a standalone commit, allowed
    /// only while the group has no members.
    pub fn commit(
        &mut self,
        now: Instant,
        group_id: &str,
        generation: i32,
        member_id: &str,
        offsets: Vec<(TopicPartition, CommittedOffset)>,
    ) -> KafkaCode {
        if group_id.is_empty() {
            return KafkaCode::InvalidGroupId;
        }
        if !self.groups.contains_key(group_id) && self.groups.len() >= GROUPS_MAX {
            return KafkaCode::CoordinatorNotAvailable;
        }
        let group = self.groups.entry(group_id.to_string()).or_insert_with(Group::new);
        let standalone = generation < 0 && member_id.is_empty();
        if standalone {
            if !group.members.is_empty() {
                return KafkaCode::IllegalGeneration;
            }
        } else {
            let Some(member) = group.members.get_mut(member_id) else {
                return KafkaCode::UnknownMemberId;
            };
            member.last_heard = now;
            if generation != group.generation {
                return KafkaCode::IllegalGeneration;
            }
            // As Kafka: members keep their partitions until they rejoin, so commits are accepted
            // while preparing a rebalance, but not while the new assignment is being computed.
            if group.state == GroupState::CompletingRebalance {
                return KafkaCode::RebalanceInProgress;
            }
        }
        group.offsets.extend(offsets);
        KafkaCode::None
    }

    /// Committed offset of a partition.
    pub fn committed(&self, group_id: &str, partition: &TopicPartition) -> Option<&CommittedOffset> {
        self.groups.get(group_id)?.offsets.get(partition)
    }

    /// All committed offsets of a group, sorted.
    pub fn committed_all(&self, group_id: &str) -> Vec<(TopicPartition, CommittedOffset)> {
        let mut all: Vec<_> = self
            .groups
            .get(group_id)
            .map(|group| group.offsets.iter().map(|(tp, offset)| (tp.clone(), offset.clone())).collect())
            .unwrap_or_default();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// (group id, protocol type, state) of every group.
    pub fn list(&self) -> Vec<(String, String, GroupState)> {
        let mut groups: Vec<_> = self
            .groups
            .iter()
            .map(|(id, group)| (id.clone(), group.protocol_type.clone(), group.state))
            .collect();
        groups.sort();
        groups
    }

    /// Describe a group (`None` if unknown).
    pub fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let group = self.groups.get(group_id)?;
        let members = group
            .members
            .iter()
            .map(|(id, member)| MemberDescription {
                member_id: id.clone(),
                client_id: member.client_id.clone(),
                client_host: member.client_host.clone(),
                metadata: member
                    .protocols
                    .iter()
                    .find(|(name, _)| *name == group.protocol)
                    .map(|(_, metadata)| metadata.clone())
                    .unwrap_or_default(),
                assignment: member.assignment.clone(),
            })
            .collect();
        Some(GroupDescription {
            state: group.state,
            protocol_type: group.protocol_type.clone(),
            protocol: group.protocol.clone(),
            members,
        })
    }

    /// DeleteGroups for one group: only an empty group can go.
    pub fn delete(&mut self, group_id: &str) -> KafkaCode {
        let code = self.deletable(group_id);
        if code == KafkaCode::None {
            self.groups.remove(group_id);
        }
        code
    }

    /// What [`GroupCoordinator::delete`] would answer, without deleting.
    pub fn deletable(&self, group_id: &str) -> KafkaCode {
        match self.groups.get(group_id) {
            None => KafkaCode::GroupIdNotFound,
            Some(group) if !group.members.is_empty() => KafkaCode::NonEmptyGroup,
            Some(_) => KafkaCode::None,
        }
    }

    /// Set (or with `None`, forget) a committed offset without any membership check: applies a
    /// commit that [`GroupCoordinator::commit`] accepted and that is now durable, or replays the
    /// offsets topic at start-up. A group left with no offsets and no members is forgotten.
    pub fn restore_offset(&mut self, group_id: &str, partition: TopicPartition, committed: Option<CommittedOffset>) {
        match committed {
            Some(committed) => {
                if !self.groups.contains_key(group_id) && self.groups.len() >= GROUPS_MAX {
                    tracing::warn!(group = group_id, limit = GROUPS_MAX, "too many groups: committed offset not restored");
                    return;
                }
                self.groups.entry(group_id.to_string()).or_insert_with(Group::new).offsets.insert(partition, committed);
            }
            None => {
                let Some(group) = self.groups.get_mut(group_id) else { return };
                group.offsets.remove(&partition);
                if group.offsets.is_empty() && group.members.is_empty() && group.state == GroupState::Empty {
                    self.groups.remove(group_id);
                }
            }
        }
    }
}

impl std::hash::Hash for GroupState {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name().hash(state);
    }
}
impl PartialOrd for GroupState {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for GroupState {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name().cmp(other.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(member_id: &str, client: &str) -> JoinRequest {
        JoinRequest {
            group: "g".into(),
            member_id: member_id.into(),
            client_id: client.into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"m"))],
        }
    }

    fn joined(replies: &Replies, token: ReplyToken) -> JoinReply {
        match replies.iter().find(|(t, _)| *t == token) {
            Some((_, GroupReply::Join(reply))) => reply.clone(),
            other => panic!("no join reply for {token}: {other:?}"),
        }
    }

    #[test]
    fn two_members_rebalance_and_one_leaves() {
        let mut coordinator = GroupCoordinator::new();
        let t0 = Instant::now();
        let replies = coordinator.join(t0, 1, join("", "a"));
        let a = joined(&replies, 1);
        assert_eq!(a.generation, 1);
        assert_eq!(a.leader, a.member_id);
        let replies = coordinator.sync(t0, 2, "g", 1, &a.member_id, vec![(a.member_id.clone(), Bytes::from_static(b"all"))]);
        assert!(matches!(&replies[0].1, GroupReply::Sync(SyncReply { error: KafkaCode::None, .. })));
        // b joins: the group prepares a rebalance and waits for a to rejoin.
        let replies = coordinator.join(t0, 3, join("", "b"));
        assert!(replies.is_empty());
        assert_eq!(coordinator.heartbeat(t0, "g", 1, &a.member_id), KafkaCode::RebalanceInProgress);
        let replies = coordinator.join(t0, 4, join(&a.member_id, "a"));
        assert_eq!(replies.len(), 2);
        let a2 = joined(&replies, 4);
        let b = joined(&replies, 3);
        assert_eq!(a2.generation, 2);
        assert_eq!(a2.members.len(), 2, "leader gets all members");
        assert!(b.members.is_empty());
        // b waits in sync until the leader sends assignments.
        assert!(coordinator.sync(t0, 5, "g", 2, &b.member_id, vec![]).is_empty());
        let replies = coordinator.sync(t0, 6, "g", 2, &a.member_id, vec![
            (a.member_id.clone(), Bytes::from_static(b"p0")),
            (b.member_id.clone(), Bytes::from_static(b"p1")),
        ]);
        assert_eq!(replies.len(), 2);
        assert_eq!(coordinator.describe("g").unwrap().state, GroupState::Stable);
        // a leaves: b must rejoin, then the group is stable with one member at generation 3.
        let (codes, replies) = coordinator.leave(t0, "g", std::slice::from_ref(&a.member_id));
        assert_eq!(codes, vec![KafkaCode::None]);
        assert!(replies.is_empty());
        assert_eq!(coordinator.heartbeat(t0, "g", 2, &b.member_id), KafkaCode::RebalanceInProgress);
        let replies = coordinator.join(t0, 7, join(&b.member_id, "b"));
        let b2 = joined(&replies, 7);
        assert_eq!(b2.generation, 3);
        assert_eq!(b2.leader, b.member_id);
    }

    #[test]
    fn session_expiry_removes_member() {
        let mut coordinator = GroupCoordinator::new();
        let t0 = Instant::now();
        let a = joined(&coordinator.join(t0, 1, join("", "a")), 1);
        coordinator.sync(t0, 2, "g", 1, &a.member_id, vec![]);
        assert!(coordinator.tick(t0 + Duration::from_secs(5)).is_empty());
        coordinator.tick(t0 + Duration::from_secs(11));
        let description = coordinator.describe("g").unwrap();
        assert_eq!(description.state, GroupState::Empty);
        assert!(description.members.is_empty());
        assert_eq!(coordinator.delete("g"), KafkaCode::None);
        assert_eq!(coordinator.delete("g"), KafkaCode::GroupIdNotFound);
    }

    #[test]
    fn rebalance_deadline_drops_members_that_do_not_rejoin() {
        let mut coordinator = GroupCoordinator::new();
        let t0 = Instant::now();
        let a = joined(&coordinator.join(t0, 1, join("", "a")), 1);
        coordinator.sync(t0, 2, "g", 1, &a.member_id, vec![]);
        assert!(coordinator.join(t0, 3, join("", "b")).is_empty());
        let replies = coordinator.tick(t0 + Duration::from_secs(31));
        let b = joined(&replies, 3);
        assert_eq!(b.generation, 2);
        assert_eq!(coordinator.describe("g").unwrap().members.len(), 1);
    }

    #[test]
    fn commits_check_generation() {
        let mut coordinator = GroupCoordinator::new();
        let t0 = Instant::now();
        let tp = TopicPartition::new("t", 0);
        let offset = CommittedOffset { offset: 5, metadata: String::new() };
        assert_eq!(coordinator.commit(t0, "s", -1, "", vec![(tp.clone(), offset.clone())]), KafkaCode::None);
        assert_eq!(coordinator.committed("s", &tp), Some(&offset));
        let a = joined(&coordinator.join(t0, 1, join("", "a")), 1);
        assert_eq!(coordinator.commit(t0, "g", 0, &a.member_id, vec![]), KafkaCode::IllegalGeneration);
        assert_eq!(coordinator.commit(t0, "g", 1, "nobody", vec![]), KafkaCode::UnknownMemberId);
        // The assignment is being computed: no commits until SyncGroup completes.
        assert_eq!(coordinator.commit(t0, "g", 1, &a.member_id, vec![]), KafkaCode::RebalanceInProgress);
        coordinator.sync(t0, 2, "g", 1, &a.member_id, vec![]);
        assert_eq!(coordinator.commit(t0, "g", 1, &a.member_id, vec![(tp.clone(), offset.clone())]), KafkaCode::None);
        // While preparing the next rebalance, members still own their partitions and may commit.
        assert!(coordinator.join(t0, 3, join("", "b")).is_empty());
        assert_eq!(coordinator.commit(t0, "g", 1, &a.member_id, vec![(tp.clone(), offset)]), KafkaCode::None);
    }
}
