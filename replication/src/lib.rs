//! Rill's replication crate.
//!
//! **Owns:** how one core of a node talks to cores of other nodes: the [`Transport`] seam with
//! its QUIC implementation ([`quic`], `quinn-proto` driven per core from glommio UDP) and its
//! seeded in-memory implementation ([`memory`], for the simulation); the cluster certificates
//! ([`certs`]); and SWIM gossip membership ([`gossip`], foca). Per-partition consensus and the
//! controller will live here too (later issues).
//!
//! **Never does:** decide leadership from gossip (gossip disseminates; consensus decides); touch
//! another core's state (a transport belongs to one core's executor, its futures are `!Send`);
//! re-encode a batch envelope (frames carry it as opaque bytes); grow a queue without bound.
//!
//! **Seams:** [`Transport`] (QUIC or in-memory), [`gossip::Gossip`] events and metadata. The
//! engine is below us; the node assembly in `src/` wires cores, ports and certificates.

pub mod certs;
pub mod frame;
pub mod gossip;
pub mod memory;
pub mod quic;
pub mod transport;
pub mod types;

pub use frame::Frame;
pub use transport::{Incoming, LinkEvent, Transport, TransportError, TransportLimits, TransportMetrics};
pub use types::{CoreAddr, CoreId, LaneId, NodeId};
