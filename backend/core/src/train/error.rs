//! What can go wrong while loading training data, training or checkpointing.

use std::path::PathBuf;

use crate::model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Unusable data: a missing column, an unknown format, no usable rows.
    #[error("{0}")]
    Data(String),
    /// A setting that makes no sense (zero batch size, top-k of 0, ...).
    #[error("{0}")]
    Config(String),
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    /// A base model that would not load (a missing or unusable folder).
    #[error("cannot load the {what} {}: {message}", path.display())]
    Load { what: String, path: PathBuf, message: String },
    /// The loss or gradient norm of a step is NaN or infinite: the run stops before the update,
    /// so its last checkpoint holds the last good weights.
    #[error(
        "step {step}: the {what} is {value} (not a finite number); the run stopped before updating the weights, \
         its last checkpoint is intact: lower the learning rate or scale and resume"
    )]
    NonFinite { step: usize, what: &'static str, value: f64 },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;
