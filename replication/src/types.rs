//! Addresses of the things the transport connects: nodes, cores on a node, and lanes (ordered
//! message streams) between two cores.

use std::fmt;

/// A node of the cluster. Assigned at `rill cluster init-certs` time; stable across restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// A core (shard thread) on a node, counted from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CoreId(pub u16);

/// One end of a link: a core on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CoreAddr {
    /// The node.
    pub node: NodeId,
    /// The core on that node.
    pub core: CoreId,
}

impl CoreAddr {
    /// Shorthand constructor.
    pub const fn new(node: u32, core: u16) -> Self {
        Self { node: NodeId(node), core: CoreId(core) }
    }
}

impl fmt::Display for CoreAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}/c{}", self.node.0, self.core.0)
    }
}

/// An ordered stream of frames inside one link, e.g. one partition group or one message class.
/// Frames on one lane arrive in the order they were sent; lanes never wait for each other (each
/// is its own QUIC stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LaneId(pub u32);

/// The TLS server name a node's certificate carries; dialers verify it, which binds a QUIC
/// connection to the node id it was meant for.
pub fn node_server_name(node: NodeId) -> String {
    format!("node-{}.rill", node.0)
}
