//! The process's memory: how the allocator keeps freed tensor buffers, giving them back to the OS
//! when a job ends, and reading resident and peak resident size (for the benches and logs).
//!
//! Tensors are large buffers, allocated and freed many times per training step. glibc by default
//! serves each buffer over 128 KiB with its own `mmap` and unmaps it on free, so every step pays
//! again in page faults and page zeroing for memory it just had (measured: 2.3 million faults in
//! 5 s of retriever steps, half the CPU time in the kernel). [`tune_allocator`] makes glibc serve
//! them from its heaps and keep freed memory; [`release_freed`], called when a job ends, returns
//! what is free to the OS, so an idle server holds what it uses, not what its last job peaked at.

/// Makes the allocator keep freed buffers for reuse: no `mmap` per large buffer, no automatic trim
/// of the heap, one heap for all threads. Call it first thing in `main`, before any other thread
/// exists. Returns false when glibc refused a setting (or this is not glibc).
///
/// - `M_MMAP_THRESHOLD` cannot do this: glibc refuses any value above 32 MiB, and buffers larger
///   than that, common in a generator's step, would still be mapped and unmapped each time.
/// - One arena (`M_ARENA_MAX` 1): a thread other than the first gets its own arena of 64 MiB
///   heaps, and glibc maps any buffer larger than that directly, `M_MMAP_MAX` notwithstanding. The
///   job worker and the chat thread are such threads. Tensor buffers are allocated by the thread
///   that runs the op, not by the math pool's workers, so the one arena's lock is rarely contended.
/// - The trim threshold and top pad are `int`s: at most 2 GiB. glibc shrinks the heap only when
///   more than that is free at its top, and then keeps 2 GiB of it. (A generator's training step
///   frees more than that at its end; the rest is paid again by the next step.)
#[allow(unsafe_code)]
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc's allocation policy; it is called before other threads
        // exist (the caller's contract), and both settings are documented values.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1) == 1
                && libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
                && libc::mallopt(libc::M_TOP_PAD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Returns the allocator's free memory to the OS (the pages stay mapped and refault as zero on next
/// use). Costs milliseconds to a second for a heap of several GB: call it between jobs, not steps.
#[allow(unsafe_code)]
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe (it takes each arena's lock) and only releases free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Resident and peak resident size of this process, in bytes, from `/proc/self/status`. Read the
/// peak before [`release_freed`]: the kernel may lower it when the allocator hands pages back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resident {
    pub now_bytes: u64,
    pub peak_bytes: u64,
}

/// This process's resident size now and at its peak; `None` where `/proc` does not say.
pub fn resident() -> Option<Resident> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    };
    Some(Resident { now_bytes: field("VmRSS:")?, peak_bytes: field("VmHWM:")? })
}
