//! Fuzz the RecordBatch v2 header parser and CRC check that guard every produced batch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rill_net::batch::parse_batches;

fuzz_target!(|data: &[u8]| {
    if let Ok(headers) = parse_batches(data) {
        // Accepted batches tile the input exactly.
        let total: usize = headers.iter().map(|header| header.size_bytes).sum();
        assert_eq!(total, data.len());
        assert!(headers.iter().all(|header| header.records_count >= 1));
    }
});
