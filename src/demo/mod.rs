//! The embedded demo: a tiny OLMoE-layout MoE the project trains itself on twelve domains and
//! ships in `assets/demo/` with 100 held-out prompts per domain.
//!
//! This module owns everything about that model:
//! - [`locate`]: finding `assets/demo` wherever the binary runs ([`demo_dir`]), with a clear
//!   error that says how to get it; the small `config.json` is embedded in the binary.
//! - [`config`]: the demo's shape ([`DemoConfig`]) and the HF `config.json` it is written as.
//! - [`corpus`]: reading the twelve-domain corpus, tokenising it, and drawing domain-balanced
//!   batches of fixed-length chunks (seeded, reproducible, resumable by step).
//! - [`tokenizer`]: training the byte-level BPE tokenizer with the `tokenizers` crate.
//! - [`model`]: the differentiable training forward over the very weights the engine's
//!   `families::build(Family::Olmoe, ..)` reads, plus the load-balancing and router z-losses
//!   (made fast enough by the fused ops of [`crate::model::autograd`]).
//! - [`train`]: the training loop (AdamW, warmup + cosine, clipping, atomic checkpoints,
//!   resume) and [`export`]: writing the shipped folder (f16 weights, tokenizer, prompts,
//!   NOTICE).
//! - [`eval`]: held-out perplexity per domain against unigram baselines, and the routing
//!   specialisation summary the demo documentation quotes.

pub mod config;
pub mod corpus;
pub mod eval;
pub mod export;
pub mod locate;
pub mod model;
pub mod tokenizer;
pub mod train;

pub use config::DemoConfig;
pub use locate::{DEMO_CONFIG_JSON, DEMO_DIR_ENV, demo_dir};

/// The twelve domains of the demo corpus, in file-name order (the order of `prompts/`).
pub const DOMAINS: [&str; 12] = [
    "code_python",
    "code_rust",
    "computing",
    "economics",
    "history",
    "law",
    "literature",
    "math",
    "medicine",
    "politics",
    "religion",
    "science",
];

/// The end-of-text token that separates documents (id 0 of the demo tokenizer).
pub const EOT: &str = "<|endoftext|>";
/// The padding token (id 1); never trained on.
pub const PAD: &str = "<|pad|>";

/// Errors of the demo's training, export and evaluation.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error("{0}")]
    Msg(String),
}

impl DemoError {
    pub fn msg(s: impl Into<String>) -> Self {
        Self::Msg(s.into())
    }

    /// An I/O error naming its file.
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, DemoError>;
