//! Profiling: runs a subject-labelled prompt set through a model in padded batches, stopping
//! after the last MoE layer, and accumulates a [`RoutingProfile`] (plus optional traces).
//!
//! Sequences are tokenised up front (so bad prompts fail before any compute; a conversation is
//! rendered with [`ProfileOptions::chat_template`] first, so its routing is recorded on the
//! text the model sees), sorted by length to keep padding low, and batched; padded positions are masked in attention and never routed,
//! so the result equals running each sequence alone.
//!
//! Two schedules give the same profile, bit for bit ([`Schedule`]): batch-major runs each
//! batch through the whole model; layer-major runs every batch through layer 0, then every
//! batch through layer 1, and so on, keeping the hidden states between layers
//! ([`super::hidden_store`], spilled to disk when they don't fit). Layer-major reads each
//! weight once per profile and hands each layer's mapped pages back before the next layer's are
//! read, so a model larger than memory profiles at disk speed instead of thrashing; experts no
//! token chose are never read at all.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Device;
use tokenizers::Tokenizer;

use super::hidden_store::HiddenStore;
use crate::data::PromptSet;
use crate::model::moe_model::BatchRoutingHook;
use crate::model::router::{RouteCtx, RouteEvent, RoutingHook};
use crate::model::{Batch, ChatTemplate, LayerwiseModel, ModelError, ModelInfo, MoeModel, Output};
use crate::profile::traces::TraceWriter;
use crate::profile::{ProfileModel, ProfileRecorder, RoutingProfile, SequenceTrace};

/// Settings of a profiling run.
#[derive(Debug, Clone)]
pub struct ProfileOptions {
    /// Sequences per forward pass.
    pub batch_size: usize,
    /// Truncate each prompt to this many tokens; without it a prompt longer than the model's
    /// context is an error.
    pub max_tokens: Option<usize>,
    /// Write per-sequence traces here (JSON Lines).
    pub traces: Option<PathBuf>,
    pub schedule: Schedule,
    /// Bytes of hidden states a layer-major run keeps in memory before spilling them to a
    /// temporary file; a quarter of the memory left when `None`.
    pub hidden_memory: Option<u64>,
    /// Where spill files go; the system's temporary folder when `None`.
    pub spill_dir: Option<PathBuf>,
    /// A layer-major run's experts take the tokens of consecutive batches of up to this many
    /// (padded) tokens at once, so that each expert's weights are read once per group.
    pub group_tokens: usize,
    /// How conversations among the prompts become text: the model's chat template
    /// ([`crate::model::LoadedModel::chat_template`]); the plain layout by default.
    pub chat_template: ChatTemplate,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        Self {
            batch_size: 8,
            max_tokens: None,
            traces: None,
            schedule: Schedule::Auto,
            hidden_memory: None,
            spill_dir: None,
            group_tokens: 8192,
            chat_template: ChatTemplate::none(),
        }
    }
}

/// The order a profile visits batches and layers in; both give the same profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Schedule {
    /// Layer-major when the weights are memory-mapped (each weight read once, one layer's
    /// pages resident at a time), batch-major when they are in memory or on a GPU.
    #[default]
    Auto,
    /// Each batch through the whole model.
    BatchMajor,
    /// Every batch through one layer before the next layer.
    LayerMajor,
}

impl std::str::FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "batch" | "batch-major" => Ok(Self::BatchMajor),
            "layer" | "layer-major" => Ok(Self::LayerMajor),
            _ => Err(format!(
                "unknown schedule '{s}' (expected auto, batch or layer)"
            )),
        }
    }
}

/// Progress of a profiling run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProfileProgress {
    pub sequences_done: usize,
    pub sequences_total: usize,
    pub tokens_done: usize,
    /// Layer-major runs: `(layers done, layers to run)`.
    pub layers: Option<(usize, usize)>,
    /// Layer-major runs: bytes of weights read so far.
    pub weight_bytes_read: u64,
    /// Layer-major runs: bytes of hidden states spilled to disk so far.
    pub spilled_bytes: u64,
}

/// Why a profiling run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Prompt(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Format(#[from] crate::profile::FormatError),
}

/// The profile-file description of a model.
pub fn profile_model(info: &ModelInfo) -> ProfileModel {
    ProfileModel {
        attention_kinds: info.attention_kinds.clone(),
        id: info.id.clone(),
        architecture: info.architecture.clone(),
        moe_layers: info.moe_layers.clone(),
        num_experts: info.num_experts,
        top_k: info.top_k,
        score_fn: info.score_fn,
        layout: Some(info.layout.clone()),
    }
}

/// A prompt turned into tokens.
struct Tokenised {
    subject: usize,
    ids: Vec<u32>,
    tokens: Vec<String>,
}

fn tokenise(
    prompts: &PromptSet,
    subjects: &[String],
    tokenizer: &Tokenizer,
    chat_template: &ChatTemplate,
    info: &ModelInfo,
    max_tokens: Option<usize>,
    want_strings: bool,
) -> Result<Vec<Tokenised>, ProfileError> {
    let mut out = Vec::with_capacity(prompts.prompts.len());
    for (i, p) in prompts.prompts.iter().enumerate() {
        let at = || {
            format!(
                "{}: prompt {} (subject '{}')",
                prompts.source,
                i + 1,
                p.subject
            )
        };
        if p.text.trim().is_empty() {
            return Err(ProfileError::Prompt(format!("{} is empty", at())));
        }
        let mut ids = chat_template
            .encode_prompt(tokenizer, p)
            .map_err(|e| ProfileError::Prompt(format!("{}: {e}", at())))?;
        if ids.is_empty() {
            return Err(ProfileError::Prompt(format!("{} has no tokens", at())));
        }
        if let Some(m) = max_tokens {
            ids.truncate(m.max(1));
        }
        if ids.len() > info.max_position_embeddings {
            return Err(ProfileError::Prompt(format!(
                "{} has {} tokens, longer than the model's context of {}; pass --max-tokens to truncate",
                at(),
                ids.len(),
                info.max_position_embeddings
            )));
        }
        let tokens = if want_strings {
            ids.iter()
                .map(|&id| tokenizer.decode(&[id], false).unwrap_or_default())
                .collect()
        } else {
            Vec::new()
        };
        let subject = subjects.iter().position(|s| *s == p.subject).unwrap_or(0);
        out.push(Tokenised {
            subject,
            ids,
            tokens,
        });
    }
    Ok(out)
}

/// Receives each batch's per-sequence traces (see [`run_profile_observed`]).
pub type TraceObserver<'a> = &'a mut dyn FnMut(&[SequenceTrace]);

/// Profiles `prompts` on `model`; `on_progress` is called after every batch; `cancel` is
/// checked between batches. Nothing is written unless the whole run succeeds.
pub fn run_profile(
    model: &mut dyn MoeModel,
    tokenizer: &Tokenizer,
    prompts: &PromptSet,
    opts: &ProfileOptions,
    cancel: &AtomicBool,
    on_progress: &mut dyn FnMut(ProfileProgress),
) -> Result<RoutingProfile, ProfileError> {
    run_profile_observed(model, tokenizer, prompts, opts, cancel, on_progress, None)
}

/// [`run_profile`], also handing every batch's per-sequence traces to `on_traces` (tokens
/// decoded), e.g. to accumulate per-token statistics without keeping or writing the traces.
pub fn run_profile_observed(
    model: &mut dyn MoeModel,
    tokenizer: &Tokenizer,
    prompts: &PromptSet,
    opts: &ProfileOptions,
    cancel: &AtomicBool,
    on_progress: &mut dyn FnMut(ProfileProgress),
    on_traces: Option<TraceObserver<'_>>,
) -> Result<RoutingProfile, ProfileError> {
    if prompts.prompts.is_empty() {
        return Err(ProfileError::Prompt(format!(
            "{}: no prompts",
            prompts.source
        )));
    }
    let info = model.info().clone();
    let subjects = prompts.subjects();
    let keep_traces = opts.traces.is_some() || on_traces.is_some();
    let seqs = tokenise(
        prompts,
        &subjects,
        tokenizer,
        &opts.chat_template,
        &info,
        opts.max_tokens,
        keep_traces,
    )?;
    let pmodel = profile_model(&info);
    let mut recorder = ProfileRecorder::new(pmodel.clone(), &subjects, keep_traces);
    let writer = match &opts.traces {
        Some(path) => Some(TraceWriter::create(path, &pmodel)?),
        None => None,
    };

    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| seqs[i].ids.len());
    let batches: Vec<&[usize]> = order.chunks(opts.batch_size.max(1)).collect();
    let layer_major = match opts.schedule {
        Schedule::BatchMajor => false,
        Schedule::LayerMajor => true,
        Schedule::Auto => info.mapped,
    };
    let device = model.device().clone();
    let mut run = Run {
        seqs: &seqs,
        recorder: &mut recorder,
        cancel,
        on_progress,
        traces: TraceSink {
            writer,
            observer: on_traces,
        },
        progress: ProfileProgress {
            sequences_total: seqs.len(),
            ..ProfileProgress::default()
        },
    };
    match model.layerwise().filter(|_| layer_major) {
        Some(lw) => run.layer_major(lw, &device, &batches, opts)?,
        None => run.batch_major(model, &batches)?,
    }
    if let Some(w) = run.traces.writer {
        w.finish()?;
    }
    Ok(recorder.finish())
}

/// One profiling run's shared state.
struct Run<'a, 't> {
    seqs: &'a [Tokenised],
    recorder: &'a mut ProfileRecorder,
    cancel: &'a AtomicBool,
    on_progress: &'a mut dyn FnMut(ProfileProgress),
    traces: TraceSink<'t>,
    progress: ProfileProgress,
}

/// Where a run's per-sequence traces go: the traces file and / or the caller's observer.
struct TraceSink<'a> {
    writer: Option<TraceWriter>,
    observer: Option<TraceObserver<'a>>,
}

impl TraceSink<'_> {
    /// Whether anyone wants traces (the recorder keeps them only then).
    fn wanted(&self) -> bool {
        self.writer.is_some() || self.observer.is_some()
    }

    fn emit(&mut self, traces: &[SequenceTrace]) -> Result<(), ProfileError> {
        if let Some(w) = self.writer.as_mut() {
            for t in traces {
                w.write(t)?;
            }
        }
        if let Some(f) = self.observer.as_mut() {
            f(traces);
        }
        Ok(())
    }
}

impl Run<'_, '_> {
    fn ids(&self, batch: &[usize]) -> Vec<Vec<u32>> {
        batch.iter().map(|&i| self.seqs[i].ids.clone()).collect()
    }

    /// Announces `batch` to the recorder; returns its number there.
    fn begin(&mut self, batch: &[usize]) -> usize {
        let ids = self.ids(batch);
        let toks: Vec<Vec<String>> = batch.iter().map(|&i| self.seqs[i].tokens.clone()).collect();
        let subj: Vec<usize> = batch.iter().map(|&i| self.seqs[i].subject).collect();
        self.recorder.begin_batch(&subj, &ids, &toks)
    }

    fn check_cancel(&self) -> Result<(), ProfileError> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(ProfileError::Cancelled);
        }
        Ok(())
    }

    /// Each batch through the whole model; traces go out batch by batch.
    fn batch_major(
        &mut self,
        model: &mut dyn MoeModel,
        batches: &[&[usize]],
    ) -> Result<(), ProfileError> {
        let device = model.device().clone();
        for chunk in batches {
            self.check_cancel()?;
            self.begin(chunk);
            let ids = self.ids(chunk);
            let batch = Batch::from_sequences(&ids, &device)?;
            {
                let mut ctx = RouteCtx::new(&mut *self.recorder);
                model.forward(&batch, Output::RoutingOnly, &mut ctx)?;
            }
            if self.traces.wanted() {
                let traces = self.recorder.take_batch_traces();
                self.traces.emit(&traces)?;
            }
            self.progress.sequences_done += chunk.len();
            self.progress.tokens_done += ids.iter().map(Vec::len).sum::<usize>();
            (self.on_progress)(self.progress);
        }
        Ok(())
    }

    /// Every batch through one layer before the next; traces go out at the end, in batch
    /// order.
    fn layer_major(
        &mut self,
        model: &mut dyn LayerwiseModel,
        device: &Device,
        batches: &[&[usize]],
        opts: &ProfileOptions,
    ) -> Result<(), ProfileError> {
        let Some(&last_moe) = self.recorder.moe_layers().last() else {
            return Err(ProfileError::Prompt("the model has no MoE layers".into()));
        };
        let budget = opts.hidden_memory.unwrap_or_else(|| {
            crate::model::memory::budget().map_or(u64::MAX, |b| b.available / 4)
        });
        let mut store = HiddenStore::new(batches.len(), budget, opts.spill_dir.as_deref())?;
        let mut inputs = Vec::with_capacity(batches.len());
        let mut numbers = Vec::with_capacity(batches.len());
        for (bi, chunk) in batches.iter().enumerate() {
            self.check_cancel()?;
            numbers.push(self.begin(chunk));
            let batch = Batch::from_sequences(&self.ids(chunk), device)?;
            store.put(bi, model.embed(&batch)?)?;
            inputs.push(batch);
        }
        let layers = last_moe + 1;
        let groups = group_batches(&inputs, opts.group_tokens);
        self.progress.layers = Some((0, layers));
        (self.on_progress)(self.progress);
        for li in 0..layers {
            let stop = li == last_moe;
            for group in &groups {
                self.check_cancel()?;
                let xs = group
                    .clone()
                    .map(|bi| store.take(bi, device))
                    .collect::<Result<Vec<_>, _>>()?;
                let batches: Vec<&Batch> = inputs[group.clone()].iter().collect();
                let mut hook = GroupRecorder {
                    recorder: &mut *self.recorder,
                    numbers: &numbers[group.clone()],
                };
                if let Some(ys) = model.run_layer(li, xs, &batches, &mut hook, stop)? {
                    for (bi, y) in group.clone().zip(ys) {
                        store.put(bi, y)?;
                    }
                }
            }
            let chosen = self.recorder.experts_chosen(li);
            let experts_run = (!stop).then_some(chosen.as_slice());
            self.progress.weight_bytes_read += model.layer_bytes(li, experts_run);
            model.release_layer(li);
            self.progress.layers = Some((li + 1, layers));
            self.progress.spilled_bytes = store.spilled_bytes();
            if stop {
                self.progress.sequences_done = self.seqs.len();
                self.progress.tokens_done = self.seqs.iter().map(|s| s.ids.len()).sum();
            }
            (self.on_progress)(self.progress);
        }
        if self.traces.wanted() {
            for &n in &numbers {
                self.recorder.resume_batch(n);
                let traces = self.recorder.take_batch_traces();
                self.traces.emit(&traces)?;
            }
        }
        Ok(())
    }
}

/// Consecutive batches whose padded tokens add up to at most `max_tokens` (at least one batch
/// each): a layer-major run's experts see all of a group's tokens at once.
fn group_batches(batches: &[Batch], max_tokens: usize) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (i, b) in batches.iter().enumerate() {
        let n = b.input_ids.elem_count();
        if i > start && tokens + n > max_tokens {
            groups.push(start..i);
            (start, tokens) = (i, 0);
        }
        tokens += n;
    }
    if start < batches.len() {
        groups.push(start..batches.len());
    }
    groups
}

/// The profile recorder seen by a group of batches: batch `i` of the group is recorder batch
/// `numbers[i]`.
struct GroupRecorder<'a> {
    recorder: &'a mut ProfileRecorder,
    numbers: &'a [usize],
}

impl RoutingHook for GroupRecorder<'_> {
    fn on_route(&mut self, event: &RouteEvent<'_>) {
        self.recorder.on_route(event);
    }
}

impl BatchRoutingHook for GroupRecorder<'_> {
    fn select_batch(&mut self, batch: usize) {
        self.recorder.resume_batch(self.numbers[batch]);
    }
}
