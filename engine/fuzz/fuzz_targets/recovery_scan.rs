//! Arbitrary segment file contents through recovery: never panic, and every frame it keeps
//! validates and lies within the file.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rill_engine::recovery::scan_segment;
use rill_engine::storage::memory::MemStorage;
use rill_engine::storage::{OpenMode, Storage};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let store = MemStorage::reliable();
    futures_lite::future::block_on(async {
        store.create_dir_all(Path::new("/d")).await.unwrap();
        let path = Path::new("/d/00000000000000000000-0-v1.log");
        store.open(path, OpenMode::CreateNew).await.unwrap();
        store.corrupt(path, |f| f.extend_from_slice(data));
        let file = store.open(path, OpenMode::Existing).await.unwrap();
        let scan = scan_segment(&file, 0).await.unwrap();
        assert!(scan.valid_end <= data.len() as u64);
        for f in &scan.frames {
            let end = f.end() as usize;
            assert!(end <= data.len());
            assert!(rill_engine::envelope::validate_frame(&data[f.position as usize..end]).is_ok());
        }
    });
});
