//! Routing profiles and traces: what profiling a dataset records, and their file formats.
//!
//! - [`routing_profile`]: [`RoutingProfile`], per-subject count / mass / score matrices
//!   (MoE layer × expert), saved as versioned JSON (`moescope-profile` v1).
//! - [`traces`]: per-sequence token ids and per-layer chosen experts and weights, saved as JSON
//!   Lines (`moescope-traces` v1), for metrics that need individual tokens.
//! - [`recorder`]: the [`crate::model::RoutingHook`] that fills both while a model runs.
//!
//! Nothing here touches tensors: these are plain data types shared by the engine, the analysis
//! code and the GUI.

pub mod recorder;
pub mod routing_profile;
pub mod traces;

pub use recorder::ProfileRecorder;
pub use routing_profile::{
    MissingSignal, ProfileModel, ProfileSource, RoutingProfile, RoutingSignal, SubjectProfile,
};
pub use traces::{SequenceTrace, TraceHeader, TraceLayer};

/// Errors reading or validating profile and traces files.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON for a {what}: {source}")]
    Json {
        path: String,
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("{path}: {msg}")]
    Invalid { path: String, msg: String },
}
