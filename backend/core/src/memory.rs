//! The process's memory: how the allocator keeps freed tensor buffers, giving them back to the OS
//! when a job ends, and reading resident and peak resident size (for the benches and logs).
//!
//! [`reexec_with_allocator_settings`] (or, failing it, [`tune_allocator`]) makes glibc keep freed
//! tensor buffers for reuse instead of handing them back to the OS and faulting them in again;
//! [`release_freed`], called when a job ends, returns what is free to the OS, so an idle server
//! holds what it uses, not what its last job peaked at.

/// glibc's settings, as its tunables: one arena for all threads, no `mmap` per large buffer, no
/// trim of the heap at free (1 TiB), and the heap grown 64 MiB at a time.
const TUNABLES: &str = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:\
                        glibc.malloc.trim_threshold=1099511627776:glibc.malloc.top_pad=67108864";
/// Set beside `GLIBC_TUNABLES` when [`reexec_with_allocator_settings`] set it (not a person).
const TUNED_MARK: &str = "ATTUNE_ALLOCATOR_TUNED";

/// Runs this program again, in place (`exec`, same arguments and process id), with
/// [`TUNABLES`] in the environment, so that glibc keeps freed buffers for reuse. Call it first
/// thing in `main`: it returns at once when glibc is tuned already (by this or by a person's
/// `GLIBC_TUNABLES`) or is not the allocator, and when the `exec` fails (then [`tune_allocator`]
/// does what `mallopt` can).
///
/// Why: tensors are large buffers, allocated and freed many times per training step. glibc by
/// default serves each buffer over 128 KiB with its own `mmap` and unmaps it on free, and it
/// shrinks its heap whenever more than 128 KiB is free at its top: every step pays again, in page
/// faults and page zeroing, for memory it just had. Measured on a generator-mode step (batch 8,
/// ~240 tokens, 2 cores): 25 s with `mallopt`'s settings, of which 55% zeroing pages, 7.9 s with
/// these. `mallopt` cannot say it: its trim threshold is an `int` (at most 2 GiB, which a
/// generator's step frees several times over) and it refuses an `mmap` threshold above 32 MiB.
pub fn reexec_with_allocator_settings() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os("GLIBC_TUNABLES").is_some() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else { return };
        let mut args = std::env::args_os();
        let mut command = std::process::Command::new(exe);
        if let Some(arg0) = args.next() {
            command.arg0(arg0);
        }
        // Returns only when it failed; the program then goes on as it is.
        let error = command.args(args).env("GLIBC_TUNABLES", TUNABLES).env(TUNED_MARK, "1").exec();
        drop(error);
    }
}

/// Whether this process runs with [`TUNABLES`].
pub fn has_allocator_settings() -> bool {
    std::env::var_os(TUNED_MARK).is_some() && std::env::var_os("GLIBC_TUNABLES").is_some_and(|t| t == TUNABLES)
}

/// Keeps [`TUNABLES`] from a child process that is not this program (a reference script's Python
/// must run with its own allocator's defaults).
pub fn without_allocator_settings(command: &mut std::process::Command) -> &mut std::process::Command {
    if has_allocator_settings() {
        command.env_remove("GLIBC_TUNABLES").env_remove(TUNED_MARK);
    }
    command
}

/// What `mallopt` can do of [`TUNABLES`] (one arena, no `mmap` per buffer, no trim below 2 GiB
/// free), for a process that could not be run again with them. Call it first thing in `main`,
/// before any other thread exists. Returns true when the allocator keeps freed buffers: with
/// [`TUNABLES`], or with these settings; false when a person's `GLIBC_TUNABLES` decide (or this
/// is not glibc, or glibc refused a setting).
///
/// One arena: a thread other than the first gets its own arena of 64 MiB heaps, and glibc maps
/// any buffer larger than that directly, whatever the `mmap` settings. The job worker and the chat
/// thread are such threads. Tensor buffers are allocated by the thread that runs the op, not by the
/// math pool's workers, so the one arena's lock is rarely contended.
#[allow(unsafe_code)]
pub fn tune_allocator() -> bool {
    if has_allocator_settings() {
        return true;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("GLIBC_TUNABLES").is_some() {
            return false;
        }
        // SAFETY: mallopt only changes glibc's allocation policy; it is called before other threads
        // exist (the caller's contract), and every setting is a documented value.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1) == 1
                && libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
                && libc::mallopt(libc::M_TOP_PAD, 64 << 20) == 1
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
