//! Rill's replication crate: per-core QUIC transport, in-memory transport, SWIM gossip, and (later)
//! per-partition consensus over the engine's log.
