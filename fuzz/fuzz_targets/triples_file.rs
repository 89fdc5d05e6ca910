//! cargo fuzz target: `attune_core::fuzz_targets::triples_file` (a scratch folder per process).
#![no_main]

use std::sync::OnceLock;

static SCRATCH: OnceLock<tempfile::TempDir> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let scratch = SCRATCH.get_or_init(|| tempfile::tempdir().expect("a scratch folder"));
    attune_core::fuzz_targets::triples_file(data, scratch.path());
});
