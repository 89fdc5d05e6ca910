//! cargo fuzz target: `attune_core::fuzz_targets::synthesis_output`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| attune_core::fuzz_targets::synthesis_output(data));
