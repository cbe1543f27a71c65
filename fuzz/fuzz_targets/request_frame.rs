//! Fuzz the bytes a client sends: the 4-byte size prefix, then request header and body decoding
//! (including the ApiVersions KIP-511 and Produce v0-2 paths). Nothing may panic or allocate
//! beyond the frame limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rill_net::codec::decode_request;
use rill_net::frame::{frame_size, FrameLimits, FRAME_PREFIX_BYTES};

/// A small limit so the fuzzer explores the refusal path as well.
const FUZZ_FRAME_BYTES_MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    if data.len() < FRAME_PREFIX_BYTES {
        return;
    }
    let prefix: [u8; 4] = data[..FRAME_PREFIX_BYTES].try_into().unwrap();
    let Ok(size) = frame_size(prefix, FrameLimits { frame_bytes_max: FUZZ_FRAME_BYTES_MAX }) else {
        return;
    };
    assert!(size <= FUZZ_FRAME_BYTES_MAX);
    let body = &data[FRAME_PREFIX_BYTES..];
    let body = &body[..size.min(body.len())];
    let _ = decode_request(bytes::Bytes::copy_from_slice(body));
});
