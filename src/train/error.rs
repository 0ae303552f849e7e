//! What goes wrong in a training run; each error names the file or module involved.

use crate::data::DataError;
use crate::model::ModelError;
use crate::selection::SelectionError;

/// Errors of a training run; each names the file or module involved.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Selection(#[from] SelectionError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Io(String),
    #[error(
        "cancelled at step {step}; checkpoint written to {checkpoint} (continue with --resume)"
    )]
    Cancelled { step: u64, checkpoint: String },
}

pub type Result<T> = std::result::Result<T, TrainError>;
