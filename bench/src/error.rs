//! The harness's one error type. `anyhow` appears only at the CLI edge ([`crate::cli::run`]).

use std::path::PathBuf;

/// Everything that can stop a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The workload's settings contradict each other or exceed a limit.
    #[error("invalid workload: {0}")]
    InvalidWorkload(String),
    /// The Kafka client refused a configuration or an operation.
    #[error("kafka client: {operation}: {source}")]
    Kafka {
        /// What the harness was doing.
        operation: &'static str,
        /// librdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Creating the benchmark topic failed (other than "it already exists").
    #[error("creating topic {topic}: {reason}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's or client's reason.
        reason: String,
    },
    /// The topic did not show up with the expected partitions in the broker's metadata.
    #[error("topic {topic} not ready after {waited_ms} ms: {detail}")]
    TopicNotReady {
        /// The topic.
        topic: String,
        /// How long we waited.
        waited_ms: u64,
        /// What metadata said last.
        detail: String,
    },
    /// The run acknowledged no record in its measurement window: there is nothing to report.
    #[error("run acknowledged no record in its measurement window ({errors} delivery errors)")]
    NothingMeasured {
        /// Delivery errors seen by producers.
        errors: u64,
    },
    /// A worker thread panicked.
    #[error("{0} thread panicked")]
    ThreadPanicked(&'static str),
    /// Reading or writing a result file.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What the harness was doing.
        operation: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Encoding a JSON result.
    #[error("encoding JSON result: {0}")]
    Json(#[from] serde_json::Error),
    /// Drawing the percentile plot.
    #[error("drawing plot {path}: {reason}")]
    Plot {
        /// The PNG being drawn.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl BenchError {
    /// Wraps a librdkafka error with what we were doing.
    pub fn kafka(operation: &'static str, source: rdkafka::error::KafkaError) -> Self {
        BenchError::Kafka { operation, source }
    }
}
