//! A whole training run: setting it up (model, data, adapters or the checkpoint to resume),
//! the step loop with checkpoints and cancel, DAS's second stage (re-profiling between the
//! stages), and the end (adapter, summary, held-out perplexity after training).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use super::data::{self, BatchPlan};
use super::error::{Result, TrainError};
use super::lora_vars::NO_DROPOUT;
use super::metrics::{StepMetrics, SubjectPerplexity, TrainEvent, TrainSummary};
use super::optim::{AdamW, AdamWSettings};
use super::options::{ExpertChoice, TrainOptions};
use super::trainer::Trainer;
use crate::data::PromptSet;
use crate::model::adapter::AdapterTarget;
use crate::selection::accounting::AdapterScope;
use crate::selection::export::target_modules;
use crate::selection::{Selection, SelectionRule};

impl Trainer {
    /// Loads the model and the data, attaches the adapters (or restores them from the
    /// checkpoint with `resume`).
    pub fn new(opts: TrainOptions, on_event: &mut dyn FnMut(TrainEvent)) -> Result<Self> {
        opts.validate()?;
        if crate::model::hub::is_gguf_path(std::path::Path::new(&opts.load.model)) {
            return Err(TrainError::Invalid(format!(
                "{}: LoRA training on a GGUF file's quantised weights is not supported; train \
                 on the HF checkpoint (safetensors folder or hub id) the file was made from. \
                 GGUF files can be profiled, reported on, selected from, steered and evaluated.",
                opts.load.model
            )));
        }
        prepare_out_dir(&opts)?;
        on_event(TrainEvent::Status(format!("loading {}", opts.load.model)));
        let mut load = opts.load.clone();
        load.routing_only = false;
        // Training differentiates through tensors in memory: f32 unless asked otherwise.
        load.in_memory = true;
        load.dtype.get_or_insert(candle_core::DType::F32);
        let loaded = crate::model::load_model(&load, None)?;
        let info = loaded.model.info().clone();
        let device = loaded.device.clone();
        let adapter_form = opts
            .adapter_form
            .resolve(info.family, &model_config(&loaded.files));

        on_event(TrainEvent::Status(format!(
            "reading {}",
            opts.data.display()
        )));
        let texts = data::load_texts(&opts.data, &opts.data_options)?;
        if texts.has_conversations() {
            on_event(TrainEvent::Status(loaded.chat_template.conversation_note()));
        }
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
        let sequences = data::tokenise(
            &loaded.tokenizer,
            &loaded.chat_template,
            &train_texts,
            max_tokens,
        )?;
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
            chat_template: loaded.chat_template,
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
            adapter_form,
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

    /// DAS stage 2: freeze stage 1, re-profile the data, adapt the top-DAS experts.
    pub(super) fn begin_stage_two(&mut self, on_event: &mut dyn FnMut(TrainEvent)) -> Result<()> {
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
        let popts = crate::inference::profiling::ProfileOptions {
            batch_size: self.opts.batch_size,
            max_tokens: Some(self.opts.max_tokens),
            chat_template: self.chat_template.clone(),
            ..Default::default()
        };
        let never = AtomicBool::new(false);
        let profile = crate::inference::profiling::run_profile(
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
        let signal = crate::profile::RoutingSignal::Score;
        let das = domain_advantage(&profile, &domain, &GeneralSet::OtherSubjects, signal)
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
                signal,
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

    pub(super) fn announce_stage(&self, on_event: &mut dyn FnMut(TrainEvent)) {
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

    pub(super) fn finish(
        &mut self,
        train_seconds: f64,
        first_step: u64,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<TrainSummary> {
        let adapter = self.adapter();
        let target = AdapterTarget {
            family: self.info.family,
            layout: &self.info.layout,
        };
        let adapter_bytes = adapter.save_as(
            &self.opts.out,
            self.adapter_form,
            target,
            self.info.num_experts,
        )?;
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
            adapter_form: self.adapter_form,
        };
        let path = self.opts.out.join("training.json");
        let bytes = serde_json::to_vec_pretty(&summary)
            .map_err(|e| TrainError::Io(format!("{}: {e}", path.display())))?;
        crate::io::write_atomic(&path, &bytes)
            .map_err(|e| TrainError::Io(format!("{}: cannot write: {e}", path.display())))?;
        Ok(summary)
    }
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

/// Trains with `opts` from start to end.
pub fn run_training(
    opts: TrainOptions,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<TrainSummary> {
    let mut trainer = Trainer::new(opts, on_event)?;
    trainer.run(cancel, on_event)
}

/// The model's config.json (for the adapter form's detection); `null` when it cannot be read,
/// which leaves the choice to the family alone.
fn model_config(files: &crate::model::hub::ModelFiles) -> serde_json::Value {
    match &files.layout {
        crate::model::hub::FileLayout::Hf { config, .. } => std::fs::read_to_string(config)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or(serde_json::Value::Null),
        _ => serde_json::Value::Null,
    }
}
