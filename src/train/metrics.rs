//! What a run reports: each optimiser step (also appended to `metrics.jsonl`), the progress
//! events the CLI and the GUI show, and the final summary (`training.json`).

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{Result, TrainError};
use crate::model::adapter::AdapterForm;

/// One optimiser step, as written to `metrics.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub stage: u8,
    /// 1-based step number.
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Predicted tokens in the step.
    pub tokens: usize,
    pub tokens_per_sec: f64,
    pub elapsed_sec: f64,
}

/// Perplexity of one subject's held-out text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectPerplexity {
    pub subject: String,
    pub tokens: usize,
    pub before: f64,
    pub after: f64,
}

/// What a finished run reports (also written as `training.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    pub model: String,
    pub architecture: String,
    pub steps: u64,
    pub adapted_modules: usize,
    pub adapted_experts: usize,
    pub trainable_params: u64,
    pub adapter_bytes: u64,
    /// Mean loss of the first and of the last (up to) 10 steps.
    pub first_loss: f64,
    pub final_loss: f64,
    pub train_seconds: f64,
    pub tokens: u64,
    pub tokens_per_sec: f64,
    pub heldout: Vec<SubjectPerplexity>,
    pub adapter_dir: String,
    /// The form the adapter was written in (older summaries: per-expert).
    #[serde(default)]
    pub adapter_form: AdapterForm,
}

/// Progress of a run, for the CLI's bar and the GUI's panel.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// Something slow is starting (loading, tokenising, evaluating).
    Status(String),
    /// A stage begins; steps `first_step + 1 ..= last_step` belong to it.
    Stage {
        stage: u8,
        first_step: u64,
        last_step: u64,
        description: String,
    },
    /// Re-profiling between DAS's two stages.
    Profiling {
        done: usize,
        total: usize,
    },
    Step(StepMetrics),
    Checkpoint {
        step: u64,
    },
    Finished(TrainSummary),
}

pub(super) fn append_metrics(path: &Path, m: &StepMetrics) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrainError::Io(format!("{}: {e}", path.display())))?;
    let line = serde_json::to_string(m).map_err(|e| TrainError::Io(e.to_string()))?;
    writeln!(f, "{line}").map_err(|e| TrainError::Io(format!("{}: {e}", path.display())))?;
    Ok(())
}

/// Reads `metrics.jsonl`, keeping steps up to `upto`.
pub fn read_metrics(path: &Path, upto: u64) -> Vec<StepMetrics> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<StepMetrics>(l).ok())
        .filter(|m| m.step <= upto)
        .collect()
}
