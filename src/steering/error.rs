//! What goes wrong reading, building or validating a steering spec, and running a steered
//! generation or evaluation.

/// Errors reading, building or validating steering specs, and running steered jobs.
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON for a moescope steering spec: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: {msg}")]
    Format { path: String, msg: String },
    #[error("{0}")]
    Invalid(String),
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Analysis(#[from] crate::analysis::AnalysisError),
    #[error(transparent)]
    Selection(#[from] crate::selection::SelectionError),
}

pub type Result<T> = std::result::Result<T, SteerError>;
