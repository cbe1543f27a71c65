//! Rill's Kafka protocol crate: framing, codecs, request handlers, coordinators and the Rust client.
//!
//! Owns everything that speaks Kafka on the wire. It must never touch segment files directly; it
//! reaches storage only through the engine's partition log API.
