//! The error type of merging an adapter into a checkpoint, shared by the files of `merge/`.

use crate::model::error::ModelError;

/// Why a merge did not happen. Every variant leaves the output folder untouched.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// The request cannot be carried out as given (the message names the file, module or
    /// tensor at fault and what would fit).
    #[error("{0}")]
    Refused(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("merge cancelled; nothing was written")]
    Cancelled,
}

impl MergeError {
    pub fn refused(message: impl Into<String>) -> Self {
        Self::Refused(message.into())
    }

    /// An I/O error on `path`.
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

impl From<candle_core::Error> for MergeError {
    fn from(e: candle_core::Error) -> Self {
        Self::Model(ModelError::Candle(e))
    }
}

pub type Result<T> = std::result::Result<T, MergeError>;
