//! Every integration test of the `attune` binary and library, as modules of one test binary: one
//! link instead of ten on each edit (the edit-test loop's largest cost), the same tests.

// The helpers here are test code: a panic is the test failing, at its line.
#![allow(clippy::unwrap_used)]

mod adapt_cli;
mod architecture;
mod common;
mod corpus_api;
mod corpus_cli;
mod device_tools;
mod export;
mod families_reference;
mod faults;
mod fuzz_corpus;
mod generator_reference;
mod http_api;
mod jobs_api;
mod openai_api;
mod retriever_reference;
mod security;
mod train_before_after;
mod train_cli;
mod websocket;
