//! Rill's Kafka front-end: framing, codecs, request handlers, the group coordinator, producer
//! state, and the per-core shard runtime that serves them.
//!
//! # What it owns
//! Everything that speaks Kafka on the wire, and the thread-per-core runtime around it: one glommio
//! executor per core, SO_REUSEPORT listeners, the versioned partition→core table and the channel
//! mesh that carries work to a partition's owner core.
//!
//! # What it must never do
//! Touch partition files directly: partitions are reached only through the
//! [`backend::PartitionStore`] seam ([`disk::DiskStore`] on the engine's logs, or the in-memory
//! [`memory::MemoryStore`]). The one file the front-end owns is the node's metadata file
//! ([`metadata`]). Share mutable state between cores: cross-core work travels as
//! [`shard::CoreRequest`] messages.
//!
//! # Seams
//! - [`backend::PartitionStore`]: storage of one core's partitions.
//! - [`group::GroupCoordinator`], [`producer_state::ProducerStates`]: sans-I/O state machines.
//! - [`codec::decode_request`], [`frame::frame_size`]: pure decoders, fuzzed under `fuzz/`.

pub mod backend;
pub mod batch;
pub mod broker;
pub mod client;
pub mod codec;
pub mod controller;
pub mod disk;
pub mod errors;
pub mod frame;
pub mod group;
pub mod memory;
pub mod metadata;
pub mod metrics;
pub mod notify;
pub mod offsets_topic;
pub mod producer_state;
pub mod server;
pub mod shard;
pub mod table;

/// The vendored Kafka protocol crate (see `net/vendor/kafka-protocol/RILL-PATCH.md`), re-exported so
/// that users of `rill-net` share its types instead of linking a second copy.
pub use kafka_protocol;
