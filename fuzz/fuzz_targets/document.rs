//! cargo fuzz target: `attune_core::fuzz_targets::document`.
//!
//! The PDF parser (pdf-extract) panics on some malformed files and `ingest::parse` catches that
//! (a bad file, not a crash). libFuzzer's panic hook would abort on the caught panic too, so this
//! target quiets the hook: a panic that escapes still aborts, through libfuzzer-sys' catch_unwind.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: { std::panic::set_hook(Box::new(|_| {})); },
    |data: &[u8]| attune_core::fuzz_targets::document(data)
);
