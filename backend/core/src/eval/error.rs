//! What can go wrong while evaluating.

use crate::model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{0}")]
    Data(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;
