//! A training run's state (the frozen model with its LoRA variables, the data, the optimiser,
//! the step) and what one step does: the causal-LM loss through Candle autograd, gradient
//! accumulation, clipping and the AdamW update. Held-out perplexity with the adapters as they
//! are. The run around the steps is in `run.rs`, checkpoints in `checkpoint.rs`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use candle_core::{D, Device, Tensor, Var};
use tokenizers::Tokenizer;

use super::data::{self, BatchPlan};
use super::error::{Result, TrainError};
use super::lora_vars::{AdaptedModule, NO_DROPOUT};
use super::metrics::{StepMetrics, append_metrics};
use super::optim::{AdamW, AdamWSettings, clip_grad_norm};
use super::options::{ExpertChoice, TrainOptions};
use crate::data::{DataOptions, PromptSet};
use crate::inference::nll::sequence_nll;
use crate::model::adapter::init::{kaiming_a, name_seed};
use crate::model::adapter::{Adapter, AdapterForm, AdapterSettings, LoraPair};
use crate::model::lora::{LoraDelta, LoraDropout};
use crate::model::router::NoHook;
use crate::model::{Batch, ChatTemplate, ModelInfo, MoeModel, Output, RouteCtx};
use crate::selection::accounting::AdapterScope;
use crate::selection::export::target_modules;
use crate::selection::{Selection, SelectionModel, SelectionRule};

/// A training run in progress.
pub struct Trainer {
    pub opts: TrainOptions,
    pub(super) model: Box<dyn MoeModel>,
    pub(super) tokenizer: Tokenizer,
    /// How conversations in the data become the model's text.
    pub(super) chat_template: ChatTemplate,
    pub(super) info: ModelInfo,
    pub(super) device: Device,
    pub(super) texts: PromptSet,
    pub(super) sequences: Vec<Vec<u32>>,
    pub(super) plan: BatchPlan,
    pub(super) modules: Vec<AdaptedModule>,
    pub(super) optimizer: AdamW,
    pub(super) round: Arc<AtomicU64>,
    /// Steps done.
    pub step: u64,
    pub total_steps: u64,
    /// Steps of DAS's stage 1 (0: a single-stage run).
    pub(super) stage1_steps: u64,
    /// The experts that have adapters (stage 2's pick in the two-stage recipe).
    pub(super) selection: Option<Selection>,
    pub(super) history: Vec<StepMetrics>,
    pub(super) heldout_before: Option<Vec<(String, usize, f64)>>,
    /// The form the finished adapter is written in.
    pub(super) adapter_form: AdapterForm,
}

impl Trainer {
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub(super) fn selection_model(&self) -> SelectionModel {
        SelectionModel {
            id: self.info.id.clone(),
            architecture: self.info.architecture.clone(),
            moe_layers: self.info.moe_layers.clone(),
            num_experts: self.info.num_experts,
        }
    }

    /// Checks that `s` was made for a model shaped like the loaded one; `origin` names it.
    pub(super) fn check_selection(&self, s: &Selection, origin: &str) -> Result<()> {
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
    pub(super) fn initial_selection(&self) -> Result<Option<Selection>> {
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

    pub(super) fn attach_initial(&mut self) -> Result<()> {
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
    pub(super) fn attach(
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
    pub(super) fn freeze_all(&mut self) -> Result<()> {
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

    pub(super) fn trainable_vars(&self) -> Vec<Var> {
        self.modules
            .iter()
            .filter(|m| m.trainable)
            .flat_map(|m| [m.a.clone(), m.b.clone()])
            .collect()
    }

    pub(super) fn reset_optimizer(&mut self) -> Result<()> {
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
    pub(super) fn nll(&mut self, seqs: &[Vec<u32>]) -> Result<(Tensor, usize)> {
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

    /// Per-subject perplexity of a held-out file with the adapters as they are now (no
    /// dropout): (subject, predicted tokens, perplexity).
    pub(super) fn heldout(&mut self, path: &Path) -> Result<Vec<(String, usize, f64)>> {
        let texts = data::load_texts(path, &DataOptions::default())?;
        let saved = self.round.swap(NO_DROPOUT, Ordering::Relaxed);
        let max_tokens = self.opts.max_tokens.min(self.info.max_position_embeddings);
        let mut out = Vec::new();
        for subject in texts.subjects() {
            let set = PromptSet {
                prompts: texts.prompts_for(&subject).cloned().collect(),
                source: texts.source.clone(),
            };
            let seqs = data::tokenise(&self.tokenizer, &self.chat_template, &set, max_tokens)?;
            let (nll, n) = sequence_nll(self.model.as_mut(), &seqs, self.opts.batch_size)
                .map_err(|e| TrainError::Invalid(format!("held-out evaluation: {e}")))?;
            out.push((subject, n, (nll / n.max(1) as f64).exp()));
        }
        self.round.store(saved, Ordering::Relaxed);
        Ok(out)
    }
}
