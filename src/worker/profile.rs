//! The profile job: a prompt set through the loaded model, with throttled progress and each
//! expert's top tokens.

use std::sync::Arc;
use std::time::Instant;

use super::outbox::PROGRESS_INTERVAL;
use super::protocol::{Event, JobId, TOP_TOKENS_PER_EXPERT};
use super::state::WorkerState;
use crate::analysis::traces::TokenCounter;
use crate::data::PromptSet;
use crate::inference::profiling::{ProfileError, ProfileOptions, run_profile_observed};

impl WorkerState {
    pub(super) fn profile(
        &mut self,
        job: JobId,
        prompts: &PromptSet,
        batch_size: usize,
        max_tokens: Option<usize>,
    ) {
        let Some(loaded) = self.model.as_mut() else {
            return self.fail(
                Some(job),
                "no model loaded: load a model before profiling".into(),
            );
        };
        let opts = ProfileOptions {
            batch_size: batch_size.max(1),
            max_tokens,
            chat_template: loaded.chat_template.clone(),
            ..ProfileOptions::default()
        };
        let total = prompts.len() as u64;
        let label = if prompts.has_conversations() {
            format!("profiling ({})", loaded.chat_template.conversation_note())
        } else {
            "profiling".to_string()
        };
        self.outbox.progress(job, 0, total, label);
        let mut tokens = {
            let info = loaded.model.info();
            TokenCounter::new(info.moe_layers.len(), info.num_experts)
        };
        let mut last = Instant::now();
        let outbox = &self.outbox;
        let result = run_profile_observed(
            loaded.model.as_mut(),
            &loaded.tokenizer,
            prompts,
            &opts,
            &self.cancel,
            &mut |p| {
                let finished = p.sequences_done == p.sequences_total;
                if finished || last.elapsed() >= PROGRESS_INTERVAL || p.layers.is_some() {
                    last = Instant::now();
                    let (done, total, text) = progress_text(&p);
                    outbox.progress(job, done, total, text);
                }
            },
            Some(&mut |traces| traces.iter().for_each(|t| tokens.add(t))),
        );
        match result {
            Ok(profile) => self.outbox.send(Event::ProfileReady {
                job,
                profile: Arc::new(profile),
                top_tokens: Arc::new(tokens.all_top_tokens(TOP_TOKENS_PER_EXPERT)),
            }),
            Err(ProfileError::Cancelled) => self.outbox.send(Event::Cancelled { job }),
            Err(e) => self.fail(
                Some(job),
                format!("profiling {} failed: {e:#}", prompts.source),
            ),
        }
    }
}

/// A profiling run's progress as (done, total, text): prompts for a batch-major run, layers
/// (with the bytes of weights read) for a layer-major one.
fn progress_text(p: &crate::inference::profiling::ProfileProgress) -> (u64, u64, String) {
    use crate::model::memory::human_bytes;
    match p.layers {
        Some((done, total)) => {
            let mut text = format!(
                "layer-major: layer {done} of {total}, {} of weights read, {} prompts",
                human_bytes(p.weight_bytes_read),
                p.sequences_total
            );
            if p.spilled_bytes > 0 {
                text += &format!(
                    ", {} of hidden states on disk",
                    human_bytes(p.spilled_bytes)
                );
            }
            (done as u64, total as u64, text)
        }
        None => (
            p.sequences_done as u64,
            p.sequences_total as u64,
            format!(
                "{} / {} prompts, {} tokens",
                p.sequences_done, p.sequences_total, p.tokens_done
            ),
        ),
    }
}
