//! Request decoding and response encoding on top of the `kafka-protocol` crate, plus the version
//! negotiation rules of DESIGN.md section 5.
//!
//! - [`SUPPORTED_APIS`] is what ApiVersions advertises. Produce is advertised from v0 but v0-2 are
//!   answered with UNSUPPORTED_VERSION (librdkafka disables compression when v0 is missing).
//! - An ApiVersions request newer than we know is answered, as Kafka does (KIP-511), with a v0
//!   response carrying UNSUPPORTED_VERSION and our ranges, so the client retries with a version
//!   both sides speak.
//! - Any other version outside our range, an unknown API key or an undecodable body is a
//!   [`CodecError`]: the connection is closed, as Kafka does.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use thiserror::Error;

use crate::errors::KafkaCode;
use crate::frame::frame_bytes;

/// Lowest Produce version we accept (v3 brings RecordBatch v2).
pub const PRODUCE_VERSION_ACCEPTED_MIN: i16 = 3;

/// API keys we serve and the version ranges we advertise (inclusive).
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
];

/// The advertised range of `api_key`, if served.
pub fn supported_range(api_key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED_APIS.iter().find(|(key, _, _)| *key == api_key).map(|(_, min, max)| (*min, *max))
}

/// Why a request frame cannot be served (the connection is closed).
#[derive(Debug, Error)]
pub enum CodecError {
    /// The API key is not one Kafka defines or one we serve.
    #[error("unknown or unsupported api key {api_key} (correlation id {correlation_id})")]
    UnknownApiKey {
        /// The key.
        api_key: i16,
        /// Correlation id of the request.
        correlation_id: i32,
    },
    /// A version outside our advertised range.
    #[error("unsupported version {version} of {api_key:?} (we serve {min}..={max})")]
    UnsupportedVersion {
        /// The API.
        api_key: ApiKey,
        /// Version sent.
        version: i16,
        /// Our minimum.
        min: i16,
        /// Our maximum.
        max: i16,
    },
    /// Header or body does not decode.
    #[error("malformed {api_key:?} v{version} request: {reason}")]
    Malformed {
        /// The API.
        api_key: ApiKey,
        /// Version sent.
        version: i16,
        /// Decoder's message.
        reason: String,
    },
    /// Frame shorter than the fixed header fields.
    #[error("frame of {0} bytes too short for a request header")]
    TooShort(usize),
}

/// A Produce v0-2 partition, kept only to answer it with UNSUPPORTED_VERSION.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyProducePartitions {
    /// Topic name (raw bytes, echoed back unchanged) and its partition indexes, in request order.
    pub topics: Vec<(Bytes, Vec<i32>)>,
}

/// A request ready for dispatch.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // Transient, one per request; boxing would add an allocation.
pub enum DecodedRequest {
    /// A request we serve.
    Request {
        /// The decoded header.
        header: RequestHeader,
        /// The API.
        api_key: ApiKey,
        /// The decoded body.
        body: RequestKind,
    },
    /// ApiVersions newer than ours: answer v0 with UNSUPPORTED_VERSION (KIP-511).
    ApiVersionsTooNew {
        /// Correlation id to echo.
        correlation_id: i32,
    },
    /// Produce v0-2: answer with UNSUPPORTED_VERSION per partition.
    LegacyProduce {
        /// The decoded header.
        header: RequestHeader,
        /// Partitions named in the request.
        partitions: LegacyProducePartitions,
        /// acks (0 means the client expects no response).
        acks: i16,
    },
}

/// Decode one request frame (without the size prefix).
pub fn decode_request(frame: Bytes) -> Result<DecodedRequest, CodecError> {
    if frame.len() < crate::frame::REQUEST_FRAME_BYTES_MIN {
        return Err(CodecError::TooShort(frame.len()));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(raw_key)
        .map_err(|_| CodecError::UnknownApiKey { api_key: raw_key, correlation_id })?;
    let (min, max) = supported_range(api_key)
        .ok_or(CodecError::UnknownApiKey { api_key: raw_key, correlation_id })?;
    if api_key == ApiKey::ApiVersions && version > max {
        return Ok(DecodedRequest::ApiVersionsTooNew { correlation_id });
    }
    if version < min || version > max {
        return Err(CodecError::UnsupportedVersion { api_key, version, min, max });
    }
    let malformed = |reason: String| CodecError::Malformed { api_key, version, reason };
    let mut buffer = frame;
    let header_version = api_key.request_header_version(version);
    let header = RequestHeader::decode(&mut buffer, header_version)
        .map_err(|error| malformed(error.to_string()))?;
    if api_key == ApiKey::Produce && version < PRODUCE_VERSION_ACCEPTED_MIN {
        let (acks, partitions) = decode_legacy_produce(&mut buffer)
            .ok_or_else(|| malformed("truncated legacy produce".to_string()))?;
        return Ok(DecodedRequest::LegacyProduce { header, partitions, acks });
    }
    let body = RequestKind::decode(api_key, &mut buffer, version)
        .map_err(|error| malformed(error.to_string()))?;
    Ok(DecodedRequest::Request { header, api_key, body })
}

fn get_string(buffer: &mut Bytes) -> Option<Bytes> {
    if buffer.remaining() < 2 {
        return None;
    }
    let length = usize::try_from(buffer.get_i16()).ok()?;
    if buffer.remaining() < length {
        return None;
    }
    Some(buffer.split_to(length))
}

fn get_count(buffer: &mut Bytes) -> Option<usize> {
    if buffer.remaining() < 4 {
        return None;
    }
    // A count can never exceed the bytes left; this bounds the loops on hostile input.
    usize::try_from(buffer.get_i32()).ok().filter(|count| *count <= buffer.remaining())
}

/// Produce v0-2 body: acks, timeout, [topic name, [partition, records bytes]].
fn decode_legacy_produce(buffer: &mut Bytes) -> Option<(i16, LegacyProducePartitions)> {
    if buffer.remaining() < 6 {
        return None;
    }
    let acks = buffer.get_i16();
    let _timeout_ms = buffer.get_i32();
    let mut topics = Vec::new();
    for _ in 0..get_count(buffer)? {
        let name = get_string(buffer)?;
        let mut partitions = Vec::new();
        for _ in 0..get_count(buffer)? {
            if buffer.remaining() < 8 {
                return None;
            }
            partitions.push(buffer.get_i32());
            let size = buffer.get_i32();
            if size > 0 {
                let size = usize::try_from(size).ok()?;
                if buffer.remaining() < size {
                    return None;
                }
                buffer.advance(size);
            }
        }
        topics.push((name, partitions));
    }
    Some((acks, LegacyProducePartitions { topics }))
}

/// Our ApiVersions ranges as response entries.
pub fn api_version_entries() -> Vec<ApiVersion> {
    SUPPORTED_APIS
        .iter()
        .map(|(key, min, max)| {
            ApiVersion::default().with_api_key(*key as i16).with_min_version(*min).with_max_version(*max)
        })
        .collect()
}

/// Encode a response frame (size prefix, header, body).
pub fn encode_response(
    correlation_id: i32,
    api_key: ApiKey,
    version: i16,
    body: &ResponseKind,
) -> Result<Bytes, CodecError> {
    let mut buffer = BytesMut::new();
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let malformed = |reason: String| CodecError::Malformed { api_key, version, reason };
    header
        .encode(&mut buffer, api_key.response_header_version(version))
        .map_err(|error| malformed(error.to_string()))?;
    body.encode(&mut buffer, version).map_err(|error| malformed(error.to_string()))?;
    Ok(frame_bytes(&buffer))
}

/// KIP-511 answer: ApiVersions v0 with UNSUPPORTED_VERSION and our ranges.
pub fn encode_api_versions_too_new(correlation_id: i32) -> Bytes {
    let response = ApiVersionsResponse::default()
        .with_error_code(KafkaCode::UnsupportedVersion.code())
        .with_api_keys(api_version_entries());
    encode_response(correlation_id, ApiKey::ApiVersions, 0, &ResponseKind::ApiVersions(response))
        .expect("ApiVersions v0 always encodes")
}

/// Produce v0-2 answer: every partition gets UNSUPPORTED_VERSION.
pub fn encode_legacy_produce_response(
    correlation_id: i32,
    version: i16,
    partitions: &LegacyProducePartitions,
) -> Bytes {
    assert!(version < PRODUCE_VERSION_ACCEPTED_MIN);
    let mut body = BytesMut::new();
    body.put_i32(correlation_id);
    body.put_i32(i32::try_from(partitions.topics.len()).expect("bounded by frame size"));
    for (name, indexes) in &partitions.topics {
        body.put_i16(i16::try_from(name.len()).expect("decoded from an i16 length"));
        body.put_slice(name);
        body.put_i32(i32::try_from(indexes.len()).expect("bounded by frame size"));
        for index in indexes {
            body.put_i32(*index);
            body.put_i16(KafkaCode::UnsupportedVersion.code());
            body.put_i64(-1);
            if version >= 2 {
                body.put_i64(-1);
            }
        }
    }
    if version >= 1 {
        body.put_i32(0);
    }
    frame_bytes(&body)
}

/// Client id of a header as text, for log lines.
pub fn client_id(header: &RequestHeader) -> &str {
    header.client_id.as_ref().map(StrBytes::as_str).unwrap_or("-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};

    fn request_frame<R: Encodable>(api_key: ApiKey, version: i16, body: &R) -> Bytes {
        let mut buffer = BytesMut::new();
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("test")));
        header.encode(&mut buffer, api_key.request_header_version(version)).unwrap();
        body.encode(&mut buffer, version).unwrap();
        buffer.freeze()
    }

    #[test]
    fn decodes_metadata_and_api_versions() {
        let frame = request_frame(ApiKey::Metadata, 9, &MetadataRequest::default());
        assert!(matches!(decode_request(frame), Ok(DecodedRequest::Request { api_key: ApiKey::Metadata, .. })));
        let frame = request_frame(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
        assert!(matches!(decode_request(frame), Ok(DecodedRequest::Request { .. })));
    }

    #[test]
    fn api_versions_too_new_answers_v0() {
        let frame = request_frame(ApiKey::ApiVersions, 4, &ApiVersionsRequest::default());
        let Ok(DecodedRequest::ApiVersionsTooNew { correlation_id }) = decode_request(frame) else {
            panic!("expected KIP-511 path");
        };
        let mut response = encode_api_versions_too_new(correlation_id);
        response.advance(4);
        assert_eq!(response.get_i32(), 7);
        let decoded = ApiVersionsResponse::decode(&mut response, 0).unwrap();
        assert_eq!(decoded.error_code, KafkaCode::UnsupportedVersion.code());
        assert_eq!(decoded.api_keys.len(), SUPPORTED_APIS.len());
    }

    #[test]
    fn legacy_produce_is_answered_unsupported() {
        let mut body = BytesMut::new();
        body.put_i16(1);
        body.put_i32(1000);
        body.put_i32(1);
        body.put_i16(1);
        body.put_slice(b"t");
        body.put_i32(1);
        body.put_i32(3);
        body.put_i32(2);
        body.put_slice(&[0, 0]);
        let mut frame = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(0)
            .with_request_api_version(2)
            .with_correlation_id(9)
            .encode(&mut frame, 1)
            .unwrap();
        frame.put_slice(&body);
        let Ok(DecodedRequest::LegacyProduce { partitions, acks, .. }) = decode_request(frame.freeze()) else {
            panic!("expected legacy produce");
        };
        assert_eq!(acks, 1);
        assert_eq!(partitions.topics, vec![(Bytes::from_static(b"t"), vec![3])]);
        let response = encode_legacy_produce_response(9, 2, &partitions);
        // prefix 4 + correlation 4 + count 4 + name 3 + count 4 + (4 + 2 + 8 + 8) + throttle 4
        assert_eq!(response.len(), 4 + 4 + 4 + 3 + 4 + 22 + 4);
    }

    #[test]
    fn rejects_unknown_key_and_old_versions() {
        let mut frame = BytesMut::new();
        frame.put_i16(999);
        frame.put_i16(0);
        frame.put_i32(1);
        assert!(matches!(decode_request(frame.freeze()), Err(CodecError::UnknownApiKey { .. })));
        let frame = request_frame(ApiKey::Fetch, 12, &kafka_protocol::messages::FetchRequest::default());
        assert!(decode_request(frame).is_ok());
        let mut frame = BytesMut::new();
        frame.put_i16(ApiKey::Fetch as i16);
        frame.put_i16(3);
        frame.put_i32(1);
        assert!(matches!(decode_request(frame.freeze()), Err(CodecError::UnsupportedVersion { .. })));
    }

    #[test]
    fn huge_array_count_in_a_tiny_frame_does_not_allocate() {
        // Found by the request_frame fuzz target: Metadata v1 announcing 201,326,592 topics made
        // the upstream decoder reserve 14 GB. The vendored crate caps the reservation.
        let mut frame = BytesMut::new();
        frame.put_i16(ApiKey::Metadata as i16);
        frame.put_i16(1);
        frame.put_i32(4);
        frame.put_i16(4);
        frame.put_slice(b"seed");
        frame.put_i32(0x0c00_0000);
        frame.put_slice(&[0; 8]);
        assert!(matches!(decode_request(frame.freeze()), Err(CodecError::Malformed { .. })));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = decode_request(Bytes::from(bytes));
        }
    }
}
