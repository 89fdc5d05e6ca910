//! Evaluation: retrieval metrics over an exact search of the whole corpus, and answer quality
//! (exact match, token F1) of the generator with retrieved passages.
//!
//! Nothing in here depends on tokio, axum or sqlx.

pub mod error;
pub mod locate;
pub mod metrics;
pub mod run;

pub use error::EvalError;
