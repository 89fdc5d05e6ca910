//! Attune's server side: the SQLite store (`store`), the jobs that join `attune-core`'s domain work
//! to it (`engine`: ingestion, synthesis, the job worker, chat), the HTTP and WebSocket server
//! (`serve`) and the OpenAI-compatible LLM client (`openai`).
//!
//! `attune-core`'s modules are re-exported at the root, so `crate::model`, `crate::train`, ...
//! name the same modules here as in the core.

pub mod engine;
pub mod openai;
pub mod serve;
pub mod store;

pub use attune_core::{eval, ingest, memory, model, rag, synth, train};

/// Version of this build, reported by `/api/v1/health` and the WebSocket hello.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
