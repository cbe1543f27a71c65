//! Rill's storage engine.
//!
//! Owns everything on disk for one node: the batch envelope, direct-I/O segment files, their
//! sparse indexes, the partition log (append, read, retention, truncation), crash recovery and the
//! per-core batch cache.
//!
//! It must never know about Kafka requests or consensus messages: it stores Kafka RecordBatch v2
//! bytes verbatim inside an envelope, and patches only the base offset and leader epoch.
//!
//! Seams: [`storage::Storage`] (file operations; glommio DMA files in production, an in-memory
//! fault-injecting store in tests) and [`clock::Clock`] (time for roll-by-age and retention).

pub mod cache;
pub mod clock;
pub mod envelope;
pub mod log;
pub mod recovery;
pub mod segment;
pub mod stats;
pub mod storage;
pub mod sync;
pub mod testing;

pub use cache::{BatchCache, SharedBatchCache};
pub use clock::{Clock, ManualClock, SystemClock};
pub use envelope::{EnvelopeHeader, StoredBatch};
pub use log::{AppendResult, Durability, LogConfig, LogError, LogStats, PartitionLog};
pub use stats::{IoLatency, IO_LATENCY_BUCKETS_US};
