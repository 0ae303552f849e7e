//! Profiling: runs a subject-labelled prompt set through a model in padded batches, stopping
//! after the last MoE layer, and accumulates a [`RoutingProfile`] (plus optional traces).
//!
//! Sequences are tokenised up front (so bad prompts fail before any compute), sorted by length
//! to keep padding low, and batched; padded positions are masked in attention and never routed,
//! so the result equals running each sequence alone.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use tokenizers::Tokenizer;

use crate::data::PromptSet;
use crate::model::router::RouteCtx;
use crate::model::{Batch, ModelError, ModelInfo, MoeModel, Output, loader};
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
}

impl Default for ProfileOptions {
    fn default() -> Self {
        Self {
            batch_size: 8,
            max_tokens: None,
            traces: None,
        }
    }
}

/// Progress of a profiling run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileProgress {
    pub sequences_done: usize,
    pub sequences_total: usize,
    pub tokens_done: usize,
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
        let mut ids = loader::encode(tokenizer, &p.text)
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
    mut on_traces: Option<TraceObserver<'_>>,
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
        &info,
        opts.max_tokens,
        keep_traces,
    )?;
    let pmodel = profile_model(&info);
    let mut recorder = ProfileRecorder::new(pmodel.clone(), &subjects, keep_traces);
    let mut writer = match &opts.traces {
        Some(path) => Some(TraceWriter::create(path, &pmodel)?),
        None => None,
    };

    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| seqs[i].ids.len());
    let device = model.device().clone();
    let mut progress = ProfileProgress {
        sequences_done: 0,
        sequences_total: seqs.len(),
        tokens_done: 0,
    };
    for chunk in order.chunks(opts.batch_size.max(1)) {
        if cancel.load(Ordering::Relaxed) {
            return Err(ProfileError::Cancelled);
        }
        let ids: Vec<Vec<u32>> = chunk.iter().map(|&i| seqs[i].ids.clone()).collect();
        let toks: Vec<Vec<String>> = chunk.iter().map(|&i| seqs[i].tokens.clone()).collect();
        let subj: Vec<usize> = chunk.iter().map(|&i| seqs[i].subject).collect();
        recorder.begin_batch(&subj, &ids, &toks);
        let batch = Batch::from_sequences(&ids, &device)?;
        {
            let mut ctx = RouteCtx::new(&mut recorder);
            model.forward(&batch, Output::RoutingOnly, &mut ctx)?;
        }
        if keep_traces {
            let traces = recorder.take_batch_traces();
            if let Some(w) = writer.as_mut() {
                for t in &traces {
                    w.write(t)?;
                }
            }
            if let Some(f) = on_traces.as_mut() {
                f(&traces);
            }
        }
        progress.sequences_done += chunk.len();
        progress.tokens_done += ids.iter().map(Vec::len).sum::<usize>();
        on_progress(progress);
    }
    if let Some(w) = writer {
        w.finish()?;
    }
    Ok(recorder.finish())
}
