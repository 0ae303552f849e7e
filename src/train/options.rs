//! What a training run is asked to do: the LoRA settings, which experts get adapters, the
//! data, the optimiser's schedule, checkpointing; checked before any slow work starts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{Result, TrainError};
use crate::data::DataOptions;
use crate::model::LoadOptions;
use crate::model::adapter::AdapterFormChoice;
use crate::selection::Selection;
use crate::selection::accounting::AdapterScope;

/// LoRA hyper-parameters and which non-expert modules also get adapters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraOptions {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub scope: AdapterScope,
}

impl Default for LoraOptions {
    /// MoE-Sieve's rank 32, α 64, dropout 0.05; experts only.
    fn default() -> Self {
        Self {
            rank: 32,
            alpha: 64.0,
            dropout: 0.05,
            scope: AdapterScope::default(),
        }
    }
}

/// Which experts get adapters.
#[derive(Debug, Clone, PartialEq)]
pub enum ExpertChoice {
    /// The cells of a selection file.
    Selection(PathBuf),
    /// A selection in memory (the GUI's current selection).
    Given(Box<Selection>),
    /// Every routed expert of every MoE layer (the all-expert LoRA baseline).
    All,
    /// DAS's two-stage recipe: stage 1 trains attention + router for `stage1_steps`, then the
    /// model is re-profiled on the data and the `experts_per_layer` highest-DAS experts of the
    /// domain (`TrainOptions::domain`, against the other subjects) get adapters for the rest.
    TwoStageDas {
        stage1_steps: Option<u64>,
        experts_per_layer: Option<usize>,
    },
}

/// Everything a training run needs.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub load: LoadOptions,
    pub experts: ExpertChoice,
    pub data: PathBuf,
    pub data_options: DataOptions,
    /// Train on this subject's rows only (required for the two-stage recipe, where the other
    /// subjects are DAS's general set).
    pub domain: Option<String>,
    pub out: PathBuf,
    pub lora: LoraOptions,
    pub lr: f64,
    pub weight_decay: f64,
    /// Share of the steps with a linear warm-up; the rest decays linearly to zero.
    pub warmup_ratio: f64,
    pub max_grad_norm: f64,
    pub epochs: usize,
    /// Overrides `epochs` when set.
    pub max_steps: Option<u64>,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub max_tokens: usize,
    pub seed: u64,
    pub checkpoint_every: u64,
    pub resume: bool,
    /// Held-out data: per-subject perplexity before and after training goes into the summary.
    pub eval_data: Option<PathBuf>,
    /// The form the finished adapter is written in (the checkpoint is MoEScope's own).
    pub adapter_form: AdapterFormChoice,
}

impl TrainOptions {
    pub fn new(model: &str, experts: ExpertChoice, data: &Path, out: &Path) -> Self {
        Self {
            load: LoadOptions {
                model: model.to_string(),
                ..Default::default()
            },
            experts,
            data: data.to_path_buf(),
            data_options: DataOptions::default(),
            domain: None,
            out: out.to_path_buf(),
            lora: LoraOptions::default(),
            lr: 2e-4,
            weight_decay: 0.0,
            warmup_ratio: 0.03,
            max_grad_norm: 1.0,
            epochs: 1,
            max_steps: None,
            batch_size: 8,
            grad_accum: 1,
            max_tokens: 256,
            seed: 0,
            checkpoint_every: 100,
            resume: false,
            eval_data: None,
            adapter_form: AdapterFormChoice::Auto,
        }
    }

    pub(super) fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(TrainError::Invalid(m.to_string()));
        if self.lora.rank == 0 {
            return bad("LoRA rank must be at least 1");
        }
        if !(0.0..1.0).contains(&self.lora.dropout) {
            return bad("LoRA dropout must be in [0, 1)");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("the learning rate must be a positive number");
        }
        if self.batch_size == 0 || self.grad_accum == 0 {
            return bad("batch size and gradient accumulation must be at least 1");
        }
        if self.max_tokens < 2 {
            return bad("max tokens must be at least 2 (one token predicts the next)");
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return bad("epochs must be at least 1");
        }
        if self.max_steps == Some(0) {
            return bad("max steps must be at least 1");
        }
        if self.checkpoint_every == 0 {
            return bad("checkpoint interval must be at least 1 step");
        }
        if matches!(self.experts, ExpertChoice::TwoStageDas { .. }) && self.domain.is_none() {
            return bad("the two-stage DAS recipe needs --domain (the subject to specialise on)");
        }
        Ok(())
    }

    /// The run's identity: a checkpoint only resumes a run with the same identity.
    pub(super) fn identity(&self) -> serde_json::Value {
        serde_json::json!({
            "model": self.load.model,
            "experts": format!("{:?}", self.experts),
            "data": self.data.display().to_string(),
            "domain": self.domain,
            "rank": self.lora.rank,
            "alpha": self.lora.alpha,
            "dropout": self.lora.dropout,
            "scope": self.lora.scope,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        })
    }

    pub fn checkpoint_path(&self) -> PathBuf {
        self.out.join("checkpoint.safetensors")
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.out.join("metrics.jsonl")
    }
}
