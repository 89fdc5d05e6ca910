//! Attune's backend library: everything the `attune` binary does, as modules by job.
//!
//! See `ARCHITECTURE.md` at the repository root for the codemap and the invariants.

pub mod bench;
pub mod bench_gpu;
pub mod bench_train;
pub mod engine;
pub mod eval;
pub mod ingest;
pub mod model;
pub mod rag;
pub mod serve;
pub mod store;
pub mod synth;
pub mod train;

/// Version of this build, reported by `/api/v1/health` and the WebSocket hello.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
