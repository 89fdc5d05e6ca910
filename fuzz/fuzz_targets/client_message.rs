//! cargo fuzz target: `attune_core::fuzz_targets::client_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| attune_core::fuzz_targets::client_message(data));
