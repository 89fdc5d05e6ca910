//! cargo fuzz target: `attune_core::fuzz_targets::gguf_metadata`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| attune_core::fuzz_targets::gguf_metadata(data));
