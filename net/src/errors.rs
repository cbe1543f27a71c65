//! Kafka error codes we return, and the mapping from our internal errors to them.
//!
//! Every error that reaches a client is one of these codes; see
//! <https://kafka.apache.org/protocol#protocol_error_codes>.

use crate::backend::StorageError;
use crate::batch::BatchError;

/// Kafka protocol error codes used by the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum KafkaCode {
    UnknownServerError,
    None,
    OffsetOutOfRange,
    CorruptMessage,
    UnknownTopicOrPartition,
    NotLeaderOrFollower,
    RequestTimedOut,
    MessageTooLarge,
    CoordinatorNotAvailable,
    NotCoordinator,
    InvalidTopic,
    RecordListTooLarge,
    InvalidRequiredAcks,
    IllegalGeneration,
    InconsistentGroupProtocol,
    InvalidGroupId,
    UnknownMemberId,
    InvalidSessionTimeout,
    RebalanceInProgress,
    UnsupportedVersion,
    TopicAlreadyExists,
    InvalidPartitions,
    InvalidReplicationFactor,
    InvalidConfig,
    InvalidRequest,
    OutOfOrderSequenceNumber,
    InvalidProducerEpoch,
    TransactionalIdAuthorizationFailed,
    KafkaStorageError,
    NonEmptyGroup,
    GroupIdNotFound,
    InvalidRecord,
}

impl KafkaCode {
    /// The wire value.
    pub fn code(self) -> i16 {
        match self {
            KafkaCode::UnknownServerError => -1,
            KafkaCode::None => 0,
            KafkaCode::OffsetOutOfRange => 1,
            KafkaCode::CorruptMessage => 2,
            KafkaCode::UnknownTopicOrPartition => 3,
            KafkaCode::NotLeaderOrFollower => 6,
            KafkaCode::RequestTimedOut => 7,
            KafkaCode::MessageTooLarge => 10,
            KafkaCode::CoordinatorNotAvailable => 15,
            KafkaCode::NotCoordinator => 16,
            KafkaCode::InvalidTopic => 17,
            KafkaCode::RecordListTooLarge => 18,
            KafkaCode::InvalidRequiredAcks => 21,
            KafkaCode::IllegalGeneration => 22,
            KafkaCode::InconsistentGroupProtocol => 23,
            KafkaCode::InvalidGroupId => 24,
            KafkaCode::UnknownMemberId => 25,
            KafkaCode::InvalidSessionTimeout => 26,
            KafkaCode::RebalanceInProgress => 27,
            KafkaCode::UnsupportedVersion => 35,
            KafkaCode::TopicAlreadyExists => 36,
            KafkaCode::InvalidPartitions => 37,
            KafkaCode::InvalidReplicationFactor => 38,
            KafkaCode::InvalidConfig => 40,
            KafkaCode::InvalidRequest => 42,
            KafkaCode::OutOfOrderSequenceNumber => 45,
            KafkaCode::InvalidProducerEpoch => 47,
            KafkaCode::TransactionalIdAuthorizationFailed => 53,
            KafkaCode::KafkaStorageError => 56,
            KafkaCode::NonEmptyGroup => 68,
            KafkaCode::GroupIdNotFound => 69,
            KafkaCode::InvalidRecord => 87,
        }
    }
}

impl From<&StorageError> for KafkaCode {
    fn from(error: &StorageError) -> Self {
        match error {
            StorageError::UnknownPartition(_) => KafkaCode::UnknownTopicOrPartition,
            StorageError::PartitionExists(_) => KafkaCode::TopicAlreadyExists,
            StorageError::OffsetOutOfRange { .. } => KafkaCode::OffsetOutOfRange,
            StorageError::Full { .. } | StorageError::Io { .. } => KafkaCode::KafkaStorageError,
        }
    }
}

impl From<&BatchError> for KafkaCode {
    fn from(error: &BatchError) -> Self {
        match error {
            BatchError::CrcMismatch { .. } | BatchError::Truncated { .. } => KafkaCode::CorruptMessage,
            BatchError::UnsupportedMagic { .. }
            | BatchError::InvalidLength { .. }
            | BatchError::InvalidCount { .. }
            | BatchError::Empty => KafkaCode::InvalidRecord,
        }
    }
}
