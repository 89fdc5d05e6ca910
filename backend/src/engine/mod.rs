//! Jobs that join the domain modules to the store: ingesting a file (parse and chunk off the async
//! threads, then one transaction), running a synthesis run passage by passage (resumable,
//! cancellable, reporting progress), and moving triples in and out as CSV or JSONL. Used by both
//! the HTTP server and the command line.

pub mod chat;
pub mod eval_job;
pub mod ingest;
pub mod jobs;
pub mod synth;
pub mod train_job;
pub mod triples_io;

use crate::ingest::IngestError;
use crate::store::StoreError;
use crate::synth::SynthError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Synth(#[from] SynthError),
    #[error("{name} is {size} bytes, over the upload limit of {limit} bytes")]
    TooLarge { name: String, size: u64, limit: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error("a background task failed: {0}")]
    Task(String),
}
