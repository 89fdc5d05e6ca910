//! The allocator settings of `attune_core::memory`, checked as `main` uses them: in a process of
//! their own (`harness = false`), set on the main thread before any other thread exists (glibc
//! fixes the number of arenas when the second thread first allocates), with no other test
//! allocating beside them.

#![allow(clippy::unwrap_used)] // a test binary without the test harness (clippy's test allowances do not reach it)

use attune_core::memory::{release_freed, resident, tune_allocator};

fn main() {
    assert!(tune_allocator(), "glibc refused the allocator settings");
    freed_buffers_are_kept_for_reuse_until_released();
    // A thread started after the tuning shares the heap: its freed buffers are kept too.
    std::thread::spawn(freed_buffers_are_kept_for_reuse_until_released).join().expect("on another thread");
    println!("memory: ok");
}

fn freed_buffers_are_kept_for_reuse_until_released() {
    let before = resident().expect("/proc/self/status");
    let size = 512usize << 20;
    let buffer = vec![1u8; size];
    assert_eq!(buffer[size - 1], 1);
    let held = resident().unwrap();
    assert!(held.now_bytes >= before.now_bytes + size as u64 / 2, "{before:?} -> {held:?}");
    assert!(held.peak_bytes >= held.now_bytes);
    drop(buffer);
    // Kept: not unmapped at free (glibc's default for a buffer this size), not trimmed.
    let kept = resident().unwrap();
    assert!(kept.now_bytes >= before.now_bytes + size as u64 / 2, "freed memory went back at once: {kept:?}");
    // A second buffer of the same size reuses it: no new pages.
    let again = vec![2u8; size];
    assert_eq!(again[0], 2);
    let reused = resident().unwrap();
    assert!(reused.now_bytes < kept.now_bytes + size as u64 / 4, "{kept:?} -> {reused:?}");
    drop(again);
    release_freed();
    let released = resident().unwrap();
    assert!(released.now_bytes < before.now_bytes + size as u64 / 4, "{before:?} -> {released:?}");
}
