//! Selective LoRA training: LoRA on the chosen experts' projections (and optionally attention,
//! router and shared experts) of any supported family, AdamW through Candle autograd, PEFT
//! adapters out; DAS's two-stage recipe; checkpoints, resume and cancel.
//!
//! The model is the engine's own (`crate::model`), loaded whole and frozen; LoRA pairs are
//! Candle variables attached to the target [`Linear`](crate::model::layers::Linear)s, so the
//! forward pass is exactly the one used for routing capture, and only the experts each token is
//! routed to run. Layers below the lowest adapted module carry no gradients at all.
//!
//! Files in the output folder:
//! - `adapter_config.json`, `adapter_model.safetensors`: the PEFT adapter (end of the run);
//! - `checkpoint.safetensors`: LoRA pairs, AdamW moments and the run's state in the metadata,
//!   written atomically every `checkpoint_every` steps, on cancel and at the end;
//! - `metrics.jsonl`: one line per step (loss, lr, grad norm, tokens/s);
//! - `training.json`: the run's summary; `selection.json`: the experts trained (for DAS's
//!   two-stage recipe, the ones stage 2 picked).

mod checkpoint;
pub mod data;
pub mod optim;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use candle_core::{D, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::data::{DataError, DataOptions, PromptSet};
use crate::model::adapter::{Adapter, AdapterSettings, LoraPair};
use crate::model::lora::{LoraDelta, LoraDropout, mix_seed};
use crate::model::router::NoHook;
use crate::model::{Batch, LoadOptions, ModelError, ModelInfo, MoeModel, Output, RouteCtx};
use crate::selection::accounting::AdapterScope;
use crate::selection::export::target_modules;
use crate::selection::{Selection, SelectionError, SelectionModel, SelectionRule};
use data::BatchPlan;
use optim::{AdamW, AdamWSettings, clip_grad_norm};

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
    Adapter(String),
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
        }
    }

    fn validate(&self) -> Result<()> {
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
    fn identity(&self) -> serde_json::Value {
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

/// An adapted module: its LoRA pair and whether it is still being trained.
struct AdaptedModule {
    name: String,
    a: Var,
    b: Var,
    trainable: bool,
}

/// Kaiming-uniform init of `A` as PEFT does it (`kaiming_uniform_(a=√5)`: bound `1/√in`).
fn kaiming_a(rank: usize, in_dim: usize, seed: u64, device: &Device) -> Result<Tensor> {
    let bound = 1.0 / (in_dim as f32).sqrt();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let v: Vec<f32> = (0..rank * in_dim)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    Ok(Tensor::from_vec(v, (rank, in_dim), device)?)
}

fn name_seed(seed: u64, name: &str) -> u64 {
    name.bytes()
        .fold(mix_seed(seed, 0x5EED), |h, b| mix_seed(h, u64::from(b)))
}

/// Dropout round meaning "no dropout" (evaluation passes).
const NO_DROPOUT: u64 = u64::MAX;

/// A training run in progress.
pub struct Trainer {
    pub opts: TrainOptions,
    model: Box<dyn MoeModel>,
    tokenizer: Tokenizer,
    info: ModelInfo,
    device: Device,
    texts: PromptSet,
    sequences: Vec<Vec<u32>>,
    plan: BatchPlan,
    modules: Vec<AdaptedModule>,
    optimizer: AdamW,
    round: Arc<AtomicU64>,
    /// Steps done.
    pub step: u64,
    pub total_steps: u64,
    /// Steps of DAS's stage 1 (0: a single-stage run).
    stage1_steps: u64,
    /// The experts that have adapters (stage 2's pick in the two-stage recipe).
    selection: Option<Selection>,
    history: Vec<StepMetrics>,
    heldout_before: Option<Vec<(String, usize, f64)>>,
}

impl Trainer {
    /// Loads the model and the data, attaches the adapters (or restores them from the
    /// checkpoint with `resume`).
    pub fn new(opts: TrainOptions, on_event: &mut dyn FnMut(TrainEvent)) -> Result<Self> {
        opts.validate()?;
        prepare_out_dir(&opts)?;
        on_event(TrainEvent::Status(format!("loading {}", opts.load.model)));
        let mut load = opts.load.clone();
        load.routing_only = false;
        let loaded = crate::model::load_model(&load, None)?;
        let info = loaded.model.info().clone();
        let device = loaded.device.clone();

        on_event(TrainEvent::Status(format!(
            "reading {}",
            opts.data.display()
        )));
        let texts = data::load_texts(&opts.data, &opts.data_options)?;
        let train_texts = match &opts.domain {
            Some(d) => {
                let rows: Vec<_> = texts.prompts_for(d).cloned().collect();
                if rows.is_empty() {
                    return Err(TrainError::Invalid(format!(
                        "{}: no rows of subject '{d}' (subjects: {})",
                        opts.data.display(),
                        texts.subjects().join(", ")
                    )));
                }
                PromptSet {
                    prompts: rows,
                    source: texts.source.clone(),
                }
            }
            None => texts.clone(),
        };
        let max_tokens = opts.max_tokens.min(info.max_position_embeddings);
        let sequences = data::tokenise(&loaded.tokenizer, &train_texts, max_tokens)?;
        let plan = BatchPlan {
            num_sequences: sequences.len(),
            batch_size: opts.batch_size,
            seed: opts.seed,
        };
        let steps_per_epoch = plan.batches_per_epoch().div_ceil(opts.grad_accum) as u64;
        let total_steps = opts
            .max_steps
            .unwrap_or(steps_per_epoch * opts.epochs as u64);
        let stage1_steps = match &opts.experts {
            ExpertChoice::TwoStageDas { stage1_steps, .. } => {
                let s = stage1_steps.unwrap_or(total_steps / 2);
                if s == 0 || s >= total_steps {
                    return Err(TrainError::Invalid(format!(
                        "stage 1 must take between 1 and {} of the {total_steps} steps",
                        total_steps.saturating_sub(1)
                    )));
                }
                s
            }
            _ => 0,
        };
        let mut trainer = Self {
            model: loaded.model,
            tokenizer: loaded.tokenizer,
            info,
            device,
            texts,
            sequences,
            plan,
            modules: Vec::new(),
            optimizer: AdamW::new(&[], AdamWSettings::default())?,
            round: Arc::new(AtomicU64::new(0)),
            step: 0,
            total_steps,
            stage1_steps,
            selection: None,
            history: Vec::new(),
            heldout_before: None,
            opts,
        };
        // The base model's held-out perplexity: measured before any adapter is attached (a
        // resumed run's adapters are already partly trained).
        if let Some(path) = trainer.opts.eval_data.clone() {
            on_event(TrainEvent::Status(format!(
                "held-out perplexity of the base model ({})",
                path.display()
            )));
            trainer.heldout_before = Some(trainer.heldout(&path)?);
        }
        if trainer.opts.resume && trainer.opts.checkpoint_path().exists() {
            trainer.restore()?;
        } else {
            if trainer.opts.resume {
                on_event(TrainEvent::Status(format!(
                    "no checkpoint in {}: starting from step 0",
                    trainer.opts.out.display()
                )));
            }
            trainer.attach_initial()?;
            let _ = std::fs::remove_file(trainer.opts.metrics_path());
        }
        Ok(trainer)
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn selection_model(&self) -> SelectionModel {
        SelectionModel {
            id: self.info.id.clone(),
            architecture: self.info.architecture.clone(),
            moe_layers: self.info.moe_layers.clone(),
            num_experts: self.info.num_experts,
        }
    }

    /// Checks that `s` was made for a model shaped like the loaded one; `origin` names it.
    fn check_selection(&self, s: &Selection, origin: &str) -> Result<()> {
        let wrong = |what: String| {
            TrainError::Invalid(format!(
                "{origin}: the selection was made for another model ({what}); the model being trained is {} ({})",
                self.info.id, self.info.architecture
            ))
        };
        if s.model.architecture != self.info.architecture {
            return Err(wrong(format!("a {}", s.model.architecture)));
        }
        if s.model.num_experts != self.info.num_experts
            || s.model.moe_layers != self.info.moe_layers
        {
            return Err(wrong(format!(
                "{} experts in MoE layers {:?}, not {} in {:?}",
                s.model.num_experts,
                s.model.moe_layers,
                self.info.num_experts,
                self.info.moe_layers
            )));
        }
        s.validate(&self.info.moe_layers, self.info.num_experts)
            .map_err(|e| TrainError::Invalid(format!("{origin}: {e}")))
    }

    /// The selection the options name, checked against the loaded model.
    fn initial_selection(&self) -> Result<Option<Selection>> {
        match &self.opts.experts {
            ExpertChoice::Selection(path) => {
                let s = Selection::load(path)?;
                self.check_selection(&s, &path.display().to_string())?;
                Ok(Some(s))
            }
            ExpertChoice::Given(s) => {
                self.check_selection(s, "the selection")?;
                Ok(Some((**s).clone()))
            }
            ExpertChoice::All => {
                let experts = self
                    .info
                    .moe_layers
                    .iter()
                    .map(|&l| (l, (0..self.info.num_experts).collect()))
                    .collect();
                Ok(Some(Selection::new(
                    self.selection_model(),
                    SelectionRule::Explicit,
                    experts,
                )?))
            }
            ExpertChoice::TwoStageDas { .. } => Ok(None),
        }
    }

    fn attach_initial(&mut self) -> Result<()> {
        let selection = self.initial_selection()?;
        let names = match &selection {
            Some(s) => {
                let scope = AdapterScope {
                    num_decoder_layers: Some(self.info.num_layers),
                    ..self.opts.lora.scope.clone()
                };
                target_modules(s, &self.info.layout, &scope)
            }
            None => {
                // DAS stage 1: attention and router.
                let empty = Selection {
                    experts: BTreeMap::new(),
                    ..Selection::new(
                        self.selection_model(),
                        SelectionRule::Explicit,
                        BTreeMap::new(),
                    )?
                };
                let scope = AdapterScope {
                    attention: true,
                    router: true,
                    shared_experts: false,
                    num_decoder_layers: Some(self.info.num_layers),
                };
                target_modules(&empty, &self.info.layout, &scope)
            }
        };
        if names.is_empty() {
            return Err(TrainError::Invalid(
                "nothing to train: the selection is empty and no attention/router/shared modules were asked for".into(),
            ));
        }
        self.attach(&names, &BTreeMap::new(), true)?;
        self.selection = selection;
        self.reset_optimizer()?;
        Ok(())
    }

    /// Attaches LoRA pairs to `names` (fresh, or from `init`).
    fn attach(
        &mut self,
        names: &[String],
        init: &BTreeMap<String, LoraPair>,
        trainable: bool,
    ) -> Result<()> {
        let rank = self.opts.lora.rank;
        let scale = self.opts.lora.alpha / rank as f64;
        let wanted: BTreeMap<&str, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let mut found = vec![false; names.len()];
        let mut new_modules = Vec::new();
        let device = self.device.clone();
        let seed = self.opts.seed;
        let p = self.opts.lora.dropout as f32;
        let round = self.round.clone();
        for (name, linear) in self.model.linears_mut() {
            let Some(&i) = wanted.get(name.as_str()) else {
                continue;
            };
            found[i] = true;
            let (out, inp) = (linear.out_dim(), linear.in_dim());
            if rank > out.min(inp) {
                return Err(TrainError::Invalid(format!(
                    "LoRA rank {rank} is larger than {name} allows: its weight is [{out}, {inp}], so the rank can be at most {}",
                    out.min(inp)
                )));
            }
            let (a, b) = match init.get(&name) {
                Some(pair) => (pair.a.to_device(&device)?, pair.b.to_device(&device)?),
                None => (
                    kaiming_a(rank, inp, name_seed(seed, &name), &device)?,
                    Tensor::zeros((out, rank), candle_core::DType::F32, &device)?,
                ),
            };
            let (a, b) = (Var::from_tensor(&a)?, Var::from_tensor(&b)?);
            let (at, bt) = if trainable {
                (a.as_tensor().clone(), b.as_tensor().clone())
            } else {
                (a.as_tensor().detach(), b.as_tensor().detach())
            };
            linear.lora = Some(Box::new(LoraDelta {
                a: at,
                b: bt,
                scale,
                dropout: (trainable && p > 0.0).then(|| LoraDropout {
                    p,
                    seed: name_seed(seed, &name),
                    round: round.clone(),
                }),
            }));
            new_modules.push(AdaptedModule {
                name,
                a,
                b,
                trainable,
            });
        }
        if let Some(i) = found.iter().position(|f| !f) {
            return Err(TrainError::Invalid(format!(
                "{} has no linear layer named {}",
                self.info.id, names[i]
            )));
        }
        self.modules.extend(new_modules);
        Ok(())
    }

    /// Stops training the currently trainable modules (DAS stage 1 → 2): their pairs stay
    /// attached as constants.
    fn freeze_all(&mut self) -> Result<()> {
        let frozen: BTreeMap<String, (Tensor, Tensor)> = self
            .modules
            .iter_mut()
            .filter(|m| m.trainable)
            .map(|m| {
                m.trainable = false;
                (
                    m.name.clone(),
                    (m.a.as_tensor().detach(), m.b.as_tensor().detach()),
                )
            })
            .collect();
        for (name, linear) in self.model.linears_mut() {
            if let (Some((a, b)), Some(lora)) = (frozen.get(&name), linear.lora.as_mut()) {
                lora.a = a.clone();
                lora.b = b.clone();
                lora.dropout = None;
            }
        }
        Ok(())
    }

    fn trainable_vars(&self) -> Vec<Var> {
        self.modules
            .iter()
            .filter(|m| m.trainable)
            .flat_map(|m| [m.a.clone(), m.b.clone()])
            .collect()
    }

    fn reset_optimizer(&mut self) -> Result<()> {
        let settings = AdamWSettings {
            weight_decay: self.opts.weight_decay,
            ..Default::default()
        };
        self.optimizer = AdamW::new(&self.trainable_vars(), settings)?;
        Ok(())
    }

    /// Parameters being trained now.
    pub fn trainable_params(&self) -> u64 {
        self.modules
            .iter()
            .filter(|m| m.trainable)
            .map(|m| (m.a.elem_count() + m.b.elem_count()) as u64)
            .sum()
    }

    /// 1 or 2 for the two-stage recipe, 0 for a single-stage run.
    pub fn stage(&self) -> u8 {
        match self.stage1_steps {
            0 => 0,
            s if self.step < s => 1,
            _ => 2,
        }
    }

    /// Learning rate of step `step` (0-based) within its stage: linear warm-up, then linear
    /// decay to zero at the stage's end.
    pub fn lr_at(&self, step: u64) -> f64 {
        let (start, end) = match self.stage1_steps {
            0 => (0, self.total_steps),
            s if step < s => (0, s),
            s => (s, self.total_steps),
        };
        let len = (end - start).max(1);
        let i = step - start;
        let warm = ((len as f64 * self.opts.warmup_ratio).ceil() as u64).min(len);
        if i < warm {
            self.opts.lr * (i + 1) as f64 / warm as f64
        } else {
            self.opts.lr * (len - i) as f64 / (len - warm).max(1) as f64
        }
    }

    /// Sum of the next-token negative log-likelihood of `seqs` (as a tensor carrying
    /// gradients) and the number of predicted tokens.
    fn nll(&mut self, seqs: &[Vec<u32>]) -> Result<(Tensor, usize)> {
        let batch = Batch::from_sequences(seqs, &self.device)?;
        let mut hook = NoHook;
        let logits = self
            .model
            .forward(&batch, Output::AllLogits, &mut RouteCtx::new(&mut hook))?
            .ok_or_else(|| TrainError::Invalid("the model returned no logits".into()))?;
        let (b, t, v) = logits.dims3()?;
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (bi, s) in seqs.iter().enumerate() {
            for p in 0..s.len() - 1 {
                rows.push((bi * t + p) as u32);
                targets.push(s[p + 1]);
            }
        }
        let n = rows.len();
        let rows = Tensor::from_vec(rows, n, &self.device)?;
        let picked = logits.reshape((b * t, v))?.index_select(&rows, 0)?;
        // On the CPU, one fused pass (and one back) instead of log-softmax's composite ops.
        if picked.device().is_cpu() && picked.dtype() == candle_core::DType::F32 {
            let targets = Tensor::from_vec(targets, n, &self.device)?;
            let nll = crate::model::autograd::cross_entropy_rows(&picked, &targets)?.sum_all()?;
            return Ok((nll, n));
        }
        let targets = Tensor::from_vec(targets, (n, 1), &self.device)?;
        let logp = candle_nn::ops::log_softmax(&picked, D::Minus1)?;
        let nll = logp.gather(&targets, 1)?.sum_all()?.neg()?;
        Ok((nll, n))
    }

    /// One optimiser step over `grad_accum` micro-batches.
    pub fn train_step(&mut self) -> Result<StepMetrics> {
        let started = Instant::now();
        let ga = self.opts.grad_accum as u64;
        let micro: Vec<Vec<Vec<u32>>> = (0..ga)
            .map(|m| {
                self.plan
                    .micro_batch(self.step * ga + m)
                    .into_iter()
                    .map(|i| self.sequences[i].clone())
                    .collect()
            })
            .collect();
        let targets: usize = micro.iter().flatten().map(|s| s.len() - 1).sum();
        let vars = self.trainable_vars();
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        let mut loss = 0.0f64;
        for (m, seqs) in micro.iter().enumerate() {
            self.round
                .store(self.step * ga + m as u64, Ordering::Relaxed);
            let (nll, _) = self.nll(seqs)?;
            let part = (nll / targets as f64)?;
            loss += f64::from(part.to_scalar::<f32>()?);
            let store = part.backward()?;
            for (slot, var) in grads.iter_mut().zip(&vars) {
                if let Some(g) = store.get(var.as_tensor()) {
                    *slot = Some(match slot.take() {
                        Some(acc) => (acc + g)?,
                        None => g.clone(),
                    });
                }
            }
        }
        if !loss.is_finite() {
            return Err(TrainError::Invalid(format!(
                "the loss became {loss} at step {}; the last checkpoint is kept (try a lower --lr)",
                self.step + 1
            )));
        }
        let grad_norm = clip_grad_norm(&mut grads, self.opts.max_grad_norm)?;
        let lr = self.lr_at(self.step);
        self.optimizer.step(&vars, &grads, lr)?;
        let stage = self.stage();
        self.step += 1;
        let elapsed = started.elapsed().as_secs_f64();
        let metrics = StepMetrics {
            stage,
            step: self.step,
            loss,
            lr,
            grad_norm,
            tokens: targets,
            tokens_per_sec: targets as f64 / elapsed.max(1e-9),
            elapsed_sec: elapsed,
        };
        self.history.push(metrics);
        append_metrics(&self.opts.metrics_path(), &metrics)?;
        Ok(metrics)
    }

    /// Writes `checkpoint.safetensors` atomically.
    pub fn checkpoint(&self) -> Result<()> {
        checkpoint::save(self)
    }

    fn restore(&mut self) -> Result<()> {
        checkpoint::restore(self)
    }

    /// DAS stage 2: freeze stage 1, re-profile the data, adapt the top-DAS experts.
    fn begin_stage_two(&mut self, on_event: &mut dyn FnMut(TrainEvent)) -> Result<()> {
        use crate::analysis::das::{GeneralSet, domain_advantage};
        let ExpertChoice::TwoStageDas {
            experts_per_layer, ..
        } = self.opts.experts.clone()
        else {
            return Ok(());
        };
        let domain = self.opts.domain.clone().unwrap_or_default();
        self.freeze_all()?;
        self.round.store(NO_DROPOUT, Ordering::Relaxed);
        let mut prompts = self.texts.clone();
        prompts.limit_per_subject(200);
        if prompts.subjects().len() < 2 {
            return Err(TrainError::Invalid(format!(
                "{}: the two-stage DAS recipe needs other subjects besides '{domain}' as its general set",
                self.opts.data.display()
            )));
        }
        let popts = crate::profiling::ProfileOptions {
            batch_size: self.opts.batch_size,
            max_tokens: Some(self.opts.max_tokens),
            traces: None,
        };
        let never = AtomicBool::new(false);
        let profile = crate::profiling::run_profile(
            self.model.as_mut(),
            &self.tokenizer,
            &prompts,
            &popts,
            &never,
            &mut |p| {
                on_event(TrainEvent::Profiling {
                    done: p.sequences_done,
                    total: p.sequences_total,
                })
            },
        )
        .map_err(|e| TrainError::Invalid(format!("re-profiling for DAS: {e}")))?;
        let das = domain_advantage(&profile, &domain, &GeneralSet::OtherSubjects)
            .map_err(|e| TrainError::Invalid(format!("DAS: {e}")))?;
        let k = experts_per_layer
            .unwrap_or_else(|| (self.info.num_experts / 4).max(1))
            .min(self.info.num_experts);
        let experts = crate::selection::rules::das_top_k(&das.das, &self.info.moe_layers, k);
        let mut selection = Selection::new(
            self.selection_model(),
            SelectionRule::Das {
                domain: domain.clone(),
                general: Vec::new(),
                k,
            },
            experts,
        )?;
        selection.data = Some(self.opts.data.display().to_string());
        let scope = AdapterScope {
            num_decoder_layers: Some(self.info.num_layers),
            ..AdapterScope::default()
        };
        let names = target_modules(&selection, &self.info.layout, &scope);
        self.attach(&names, &BTreeMap::new(), true)?;
        self.reset_optimizer()?;
        selection.save(&self.opts.out.join("selection.json"))?;
        self.selection = Some(selection);
        self.checkpoint()?;
        Ok(())
    }

    fn announce_stage(&self, on_event: &mut dyn FnMut(TrainEvent)) {
        let (first, last, description) = match self.stage() {
            0 => (
                0,
                self.total_steps,
                format!(
                    "LoRA on {} modules ({} parameters)",
                    self.modules.len(),
                    self.trainable_params()
                ),
            ),
            1 => (
                0,
                self.stage1_steps,
                format!(
                    "DAS stage 1: attention + router ({} parameters)",
                    self.trainable_params()
                ),
            ),
            _ => (
                self.stage1_steps,
                self.total_steps,
                format!(
                    "DAS stage 2: {} experts picked by DAS ({} parameters)",
                    self.selection.as_ref().map_or(0, Selection::len),
                    self.trainable_params()
                ),
            ),
        };
        on_event(TrainEvent::Stage {
            stage: self.stage(),
            first_step: first,
            last_step: last,
            description,
        });
    }

    /// Trains to the end (or until `cancel`: then checkpoints and returns
    /// [`TrainError::Cancelled`]), writes the adapter and the summary.
    pub fn run(
        &mut self,
        cancel: &AtomicBool,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<TrainSummary> {
        let started = Instant::now();
        let first_step = self.step;
        self.announce_stage(on_event);
        while self.step < self.total_steps {
            if self.stage1_steps > 0 && self.step >= self.stage1_steps && self.selection.is_none() {
                on_event(TrainEvent::Status(
                    "re-profiling the data for DAS stage 2".into(),
                ));
                self.begin_stage_two(on_event)?;
                self.announce_stage(on_event);
            }
            if cancel.load(Ordering::Relaxed) {
                self.checkpoint()?;
                on_event(TrainEvent::Checkpoint { step: self.step });
                return Err(TrainError::Cancelled {
                    step: self.step,
                    checkpoint: self.opts.checkpoint_path().display().to_string(),
                });
            }
            let metrics = self.train_step()?;
            on_event(TrainEvent::Step(metrics));
            if self.step.is_multiple_of(self.opts.checkpoint_every) {
                self.checkpoint()?;
                on_event(TrainEvent::Checkpoint { step: self.step });
            }
        }
        self.checkpoint()?;
        let train_seconds = started.elapsed().as_secs_f64();
        let summary = self.finish(train_seconds, first_step, on_event)?;
        on_event(TrainEvent::Finished(summary.clone()));
        Ok(summary)
    }

    /// The adapter as it stands (every adapted module, trained or frozen).
    pub fn adapter(&self) -> Adapter {
        Adapter {
            settings: AdapterSettings {
                rank: self.opts.lora.rank,
                alpha: self.opts.lora.alpha,
                dropout: self.opts.lora.dropout,
                use_rslora: false,
                base_model: self.opts.load.model.clone(),
            },
            modules: self
                .modules
                .iter()
                .map(|m| {
                    (
                        m.name.clone(),
                        LoraPair {
                            a: m.a.as_tensor().detach(),
                            b: m.b.as_tensor().detach(),
                        },
                    )
                })
                .collect(),
        }
    }

    fn finish(
        &mut self,
        train_seconds: f64,
        first_step: u64,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<TrainSummary> {
        let adapter = self.adapter();
        let adapter_bytes = adapter.save(&self.opts.out)?;
        if let Some(s) = &self.selection {
            s.save(&self.opts.out.join("selection.json"))?;
        }
        let mut heldout = Vec::new();
        if let (Some(path), Some(before)) =
            (self.opts.eval_data.clone(), self.heldout_before.take())
        {
            on_event(TrainEvent::Status(
                "held-out perplexity after training".into(),
            ));
            let after = self.heldout(&path)?;
            for ((subject, tokens, b), (_, _, a)) in before.into_iter().zip(after) {
                heldout.push(SubjectPerplexity {
                    subject,
                    tokens,
                    before: b,
                    after: a,
                });
            }
        }
        let mean = |xs: &[StepMetrics]| {
            if xs.is_empty() {
                f64::NAN
            } else {
                xs.iter().map(|m| m.loss).sum::<f64>() / xs.len() as f64
            }
        };
        let n = self.history.len();
        let tokens: u64 = self.history.iter().map(|m| m.tokens as u64).sum();
        let summary = TrainSummary {
            model: self.info.id.clone(),
            architecture: self.info.architecture.clone(),
            steps: self.step,
            adapted_modules: self.modules.len(),
            adapted_experts: self.selection.as_ref().map_or(0, Selection::len),
            trainable_params: adapter.num_params(),
            adapter_bytes,
            first_loss: mean(&self.history[..n.min(10)]),
            final_loss: mean(&self.history[n.saturating_sub(10)..]),
            train_seconds,
            tokens,
            tokens_per_sec: if self.step > first_step {
                tokens as f64 / train_seconds.max(1e-9)
            } else {
                0.0
            },
            heldout,
            adapter_dir: self.opts.out.display().to_string(),
        };
        let path = self.opts.out.join("training.json");
        let bytes = serde_json::to_vec_pretty(&summary)
            .map_err(|e| TrainError::Io(format!("{}: {e}", path.display())))?;
        crate::io::write_atomic(&path, &bytes)
            .map_err(|e| TrainError::Io(format!("{}: cannot write: {e}", path.display())))?;
        Ok(summary)
    }

    /// Per-subject perplexity of a held-out file with the adapters as they are now (no
    /// dropout): (subject, predicted tokens, perplexity).
    fn heldout(&mut self, path: &Path) -> Result<Vec<(String, usize, f64)>> {
        let texts = data::load_texts(path, &DataOptions::default())?;
        let saved = self.round.swap(NO_DROPOUT, Ordering::Relaxed);
        let max_tokens = self.opts.max_tokens.min(self.info.max_position_embeddings);
        let mut out = Vec::new();
        for subject in texts.subjects() {
            let set = PromptSet {
                prompts: texts.prompts_for(&subject).cloned().collect(),
                source: texts.source.clone(),
            };
            let seqs = data::tokenise(&self.tokenizer, &set, max_tokens)?;
            let (nll, n) = sequence_nll(self.model.as_mut(), &seqs, self.opts.batch_size)?;
            out.push((subject, n, (nll / n.max(1) as f64).exp()));
        }
        self.round.store(saved, Ordering::Relaxed);
        Ok(out)
    }
}

/// Sum of next-token NLL over `seqs` and the number of predicted tokens (no gradients kept).
pub fn sequence_nll(
    model: &mut dyn MoeModel,
    seqs: &[Vec<u32>],
    batch_size: usize,
) -> Result<(f64, usize)> {
    crate::demo::eval::model_nll(model, seqs, batch_size)
        .map_err(|e| TrainError::Invalid(format!("held-out evaluation: {e}")))
}

/// Creates the output folder and makes sure it is writable and holds no other run's
/// checkpoint (unless resuming) before any slow work starts.
fn prepare_out_dir(opts: &TrainOptions) -> Result<()> {
    let out = &opts.out;
    std::fs::create_dir_all(out).map_err(|e| {
        TrainError::Io(format!(
            "{}: cannot create the output folder: {e}",
            out.display()
        ))
    })?;
    tempfile::NamedTempFile::new_in(out).map_err(|e| {
        TrainError::Io(format!(
            "{}: the output folder is not writable: {e}",
            out.display()
        ))
    })?;
    if !opts.resume && opts.checkpoint_path().exists() {
        return Err(TrainError::Invalid(format!(
            "{} holds a checkpoint of an earlier run: pass --resume to continue it, or choose another --out",
            out.display()
        )));
    }
    Ok(())
}

fn append_metrics(path: &Path, m: &StepMetrics) -> Result<()> {
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

/// Trains with `opts` from start to end.
pub fn run_training(
    opts: TrainOptions,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<TrainSummary> {
    let mut trainer = Trainer::new(opts, on_event)?;
    trainer.run(cancel, on_event)
}
