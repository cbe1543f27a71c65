//! Rill's benchmark harness: the load generator behind `rill bench`, and its reports.
//!
//! What this crate owns: generating load over the Kafka protocol (producers and consumers),
//! measuring it honestly, and reporting it (text, JSON, a PNG percentile plot, and A/B
//! comparisons). It is a client of a broker, never part of one: nothing here may be linked into
//! the broker's data path, and it must never report a figure for a run that acknowledged nothing.
//!
//! How it measures (the rules a reader needs to trust a figure):
//! - **Open loop** (`--rate N`): every send has an *intended* time fixed in advance by
//!   [`schedule::OpenLoopSchedule`]. Produce-acknowledge and end-to-end latency are measured from
//!   that intended time, not from the moment the send happened, so a broker stall is charged to
//!   every record that should have been sent during it (coordinated omission is corrected). How
//!   late the generator itself was is reported separately as `generator_lag`.
//! - **Closed loop** (`--max`): each producer keeps at most `in_flight_max` records outstanding and
//!   sends the next one as soon as one is acknowledged; latency is then measured from the actual
//!   send, and the figure of merit is throughput.
//! - End-to-end latency uses the intended send time written into each record's payload
//!   ([`payload`]); producers and consumers share one process and one monotonic clock anchor.
//! - Only records whose intended send time falls in the measurement window (after warm-up) count.
//!
//! Seams: the producer loop ([`producer::drive`]) takes its clock and its record sink as traits, so
//! the open-loop correction is tested against a simulated stalling broker. The Kafka client is
//! librdkafka through the `rdkafka` crate ([`kafka`]), the neutral client for every
//! Kafka-protocol broker.

pub mod alloc;
pub mod cli;
pub mod client;
pub mod compare;
pub mod consumer;
pub mod error;
pub mod kafka;
pub mod kafka_wire;
pub mod latency;
pub mod nats;
pub mod payload;
pub mod plot;
pub mod producer;
pub mod redis;
pub mod resp;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod workload;

pub use error::BenchError;
