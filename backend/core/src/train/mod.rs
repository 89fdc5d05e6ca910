//! Training: data loading and splitting, the losses (in-batch contrastive for the retriever,
//! RAG marginalized NLL for the generator), the optimiser and schedule, and the trainer that runs
//! steps, checkpoints, resumes and reports through an observer.
//!
//! Nothing in here depends on tokio, axum or sqlx.

pub mod checkpoint;
pub mod cloze;
pub mod config;
pub mod data;
pub mod error;
pub mod loss;
pub mod negatives;
pub mod optim;
pub mod step;
#[cfg(any(test, feature = "testing"))]
#[allow(clippy::unwrap_used)] // test helpers: a failure is the test's failure
pub mod test_models;
pub mod trainer;

pub use error::TrainError;
