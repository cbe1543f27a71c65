//! What the load generator's malloc does with freed memory.
//!
//! librdkafka builds each produce request in memory its broker thread takes from glibc malloc,
//! and frees it when the broker acknowledges the request. With glibc's default trim threshold
//! (128 KiB, and it stays there while no block is large enough to be mmapped), that thread's arena
//! hands the free top of its heap back to the kernel whenever it grows past 128 KiB, and the next
//! requests fault the same pages in again, zeroed. How much is trimmed depends on how many
//! requests are outstanding when they are freed, so a broker's acknowledgement latency is charged
//! to the client a second time, as client CPU. In a closed loop on one client core that is a
//! large share of the throughput (docs/BENCHMARKS.md, session 12: the client took 49–103 thousand
//! page faults per 4 s against Rill `fsync`, 9–48 thousand against tansu's memory engine).
//!
//! So the harness raises the threshold before any client thread starts, and freed memory stays
//! in the process: the figure then measures the broker, not glibc's trimming. `--malloc-defaults`
//! leaves glibc as it is, and the result's `client` field says which was used.

// The one call into libc below; see its `# Safety` note.
#![allow(unsafe_code)]

use std::sync::OnceLock;

/// The trim threshold the harness sets unless told not to: freed memory up to this much stays in
/// the process.
pub const TRIM_THRESHOLD_BYTES: usize = 256 << 20;

static SETTING: OnceLock<String> = OnceLock::new();

/// Sets glibc malloc's trim threshold to `bytes` for this process (once; later calls keep the
/// first setting). Returns what the process's malloc now does, for reports.
pub fn keep_freed_memory(bytes: usize) -> &'static str {
    SETTING.get_or_init(|| match set_trim_threshold(bytes) {
        true => format!("malloc trim threshold {} MiB", bytes >> 20),
        false => "malloc defaults (trim threshold not settable here)".to_string(),
    })
}

/// Records that the process's malloc was left at its defaults (`--malloc-defaults`).
pub fn leave_defaults() -> &'static str {
    SETTING.get_or_init(|| "malloc defaults".to_string())
}

/// What [`keep_freed_memory`] or [`leave_defaults`] chose; `None` before either ran.
pub fn setting() -> Option<&'static str> {
    SETTING.get().map(String::as_str)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_trim_threshold(bytes: usize) -> bool {
    let Ok(value) = libc::c_int::try_from(bytes) else {
        return false;
    };
    // # Safety
    // `mallopt` reads two integers and updates malloc's parameters under malloc's own lock; it
    // touches no memory of ours and is safe to call from any thread at any time.
    unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, value) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_trim_threshold(_bytes: usize) -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;
    use nix::sys::resource::{getrusage, UsageWho};

    /// Minor page faults this thread took while `work` ran.
    fn faults(work: impl FnOnce()) -> i64 {
        let before = getrusage(UsageWho::RUSAGE_THREAD)
            .unwrap()
            .minor_page_faults();
        work();
        getrusage(UsageWho::RUSAGE_THREAD)
            .unwrap()
            .minor_page_faults()
            - before
    }

    /// What librdkafka's broker thread does: 2 MiB of request buffers (below the mmap threshold,
    /// so from the thread's heap), written, then all freed.
    fn requests() {
        let buffers: Vec<Vec<u8>> = (1..=128u8).map(|i| vec![i; 16 << 10]).collect();
        std::hint::black_box(&buffers);
    }

    #[test]
    fn freed_request_memory_is_faulted_in_again_only_under_the_default_threshold() {
        // Its own thread, so its own arena and its own fault count.
        std::thread::spawn(|| {
            // glibc's default threshold: every round gives the pages back and faults them in.
            assert!(set_trim_threshold(128 << 10));
            requests();
            let trimmed = faults(requests);
            assert_eq!(
                keep_freed_memory(TRIM_THRESHOLD_BYTES),
                "malloc trim threshold 256 MiB"
            );
            requests();
            let kept = faults(requests);
            // 2 MiB is 512 pages; with the memory kept, a round reuses the pages it freed.
            assert!(
                trimmed >= 256,
                "default threshold: {trimmed} faults per round"
            );
            assert!(
                kept < 64,
                "raised threshold: {kept} faults per round (default {trimmed})"
            );
        })
        .join()
        .unwrap();
    }
}
