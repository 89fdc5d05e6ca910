//! The child side of sandboxed document parsing (`attune __parse-document NAME MEMORY_BYTES`,
//! hidden): limits its own memory and CPU time, parses the file on standard input and answers on
//! standard output (JSON) or standard error (exit code 2). The server kills it past its deadline.

use std::io::{Read, Write};
use std::process::ExitCode;

use attune::engine::ingest::parse_for_parent;

/// Runs the child when the first argument is the hidden subcommand; `None` otherwise.
pub fn run_if_asked() -> Option<ExitCode> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some(attune::engine::ingest::PARSE_SUBCOMMAND) {
        return None;
    }
    let (Some(name), Some(memory)) = (args.next(), args.next().and_then(|m| m.parse::<u64>().ok())) else {
        eprintln!("usage: attune __parse-document NAME MEMORY_BYTES < FILE");
        return Some(ExitCode::from(64));
    };
    limit(libc::RLIMIT_AS, memory);
    // A backstop beside the parent's wall-clock deadline.
    limit(libc::RLIMIT_CPU, 600);
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("cannot read the file: {e}");
        return Some(ExitCode::from(64));
    }
    Some(match parse_for_parent(&name, &bytes) {
        Ok(json) => match std::io::stdout().write_all(json.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(74),
        },
        Err(json) => {
            eprint!("{json}");
            ExitCode::from(2)
        }
    })
}

/// Sets a resource limit of this process (soft and hard).
#[allow(unsafe_code)]
fn limit(resource: libc::__rlimit_resource_t, value: u64) {
    let limit = libc::rlimit { rlim_cur: value as libc::rlim_t, rlim_max: value as libc::rlim_t };
    // SAFETY: setrlimit reads the struct we pass and changes only this process's limits.
    let result = unsafe { libc::setrlimit(resource, &limit) };
    if result != 0 {
        eprintln!("warning: cannot set resource limit {resource}: {}", std::io::Error::last_os_error());
    }
}
