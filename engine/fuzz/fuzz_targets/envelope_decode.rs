//! Bytes from disk or a peer through the envelope decoder: never panic; whatever validates must
//! re-encode to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rill_engine::envelope::{validate_frame, StoredBatch, HEADER_BYTES};

fuzz_target!(|data: &[u8]| {
    let _ = rill_engine::envelope::parse_kafka_batch(data, true);
    if let Ok(header) = validate_frame(data) {
        let frame = &data[..header.frame_bytes()];
        let batch = StoredBatch { header, payload: bytes::Bytes::copy_from_slice(&frame[HEADER_BYTES..]) };
        assert_eq!(batch.to_frame(), frame);
    }
});
