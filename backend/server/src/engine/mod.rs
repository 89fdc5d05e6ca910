//! Jobs that join the domain modules to the store: ingesting a file (parse and chunk off the async
//! threads, then one transaction), a synthesis run passage by passage (resumable, cancellable,
//! reporting progress), triples in and out as CSV or JSONL, the job worker that runs training runs
//! and evaluations one at a time, and the chat thread. Used by the HTTP server and the command line.

pub mod chat;
pub mod eval_job;
pub mod health;
pub mod ingest;
pub mod job;
pub mod synth;
pub mod train_job;
pub mod triples_io;
pub mod worker;

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
    /// The request or its data is not acceptable (the caller can fix it).
    #[error("{0}")]
    Invalid(String),
    /// Too few approved triples to train on (the caller can review more).
    #[error("{0}")]
    NotEnoughTriples(String),
    /// Something failed on the server's side: a disk write, a model that would not load.
    #[error("{0}")]
    Failed(String),
    #[error("a background task failed: {0}")]
    Task(String),
}

impl From<crate::train::TrainError> for EngineError {
    /// Unusable data or settings are the caller's to fix; the rest failed on the server's side.
    fn from(error: crate::train::TrainError) -> Self {
        use crate::train::TrainError;
        match error {
            TrainError::Data(_) | TrainError::Config(_) => EngineError::Invalid(error.to_string()),
            other => EngineError::Failed(other.to_string()),
        }
    }
}
