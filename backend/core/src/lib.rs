//! Attune's model math and the domain work built on it, all synchronous: candle models
//! (`model`), training (`train`), evaluation (`eval`), the prompt and passage index (`rag`),
//! documents into passages (`ingest`) and synthetic triples (`synth`).
//!
//! This crate cannot depend on tokio, axum, sqlx or reqwest: it is plain Rust, testable and
//! reusable without a runtime, a database or an HTTP stack.

pub mod eval;
#[cfg(feature = "testing")]
pub mod fuzz_targets;
pub mod ingest;
pub mod memory;
pub mod model;
pub mod rag;
pub mod synth;
pub mod train;
