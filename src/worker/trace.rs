//! The trace job: one prompt's routing through every MoE layer, token by token
//! ([`crate::inference::trace::trace_tokens`]).

use super::state::WorkerState;
use crate::inference::trace::{TokenTrace, trace_tokens};
use crate::model::tokenize;

impl WorkerState {
    pub(super) fn trace(&mut self, text: &str) -> Result<TokenTrace, String> {
        let Some(loaded) = self.model.as_mut() else {
            return Err("no model loaded: load a model to trace a prompt".into());
        };
        if text.trim().is_empty() {
            return Err("the prompt is empty".into());
        }
        let ids = tokenize::encode(&loaded.tokenizer, text).map_err(|e| format!("{e:#}"))?;
        if ids.is_empty() {
            return Err("the prompt has no tokens".into());
        }
        let info = loaded.model.info().clone();
        let ids: Vec<u32> = ids
            .into_iter()
            .take(info.max_position_embeddings.max(1))
            .collect();
        // The worker's model is loaded for routing only: no logits.
        let trace = trace_tokens(loaded.model.as_mut(), ids, false)
            .map_err(|e| format!("routing the prompt failed: {e:#}"))?;
        Ok(trace.per_token(text, &loaded.tokenizer, &info))
    }
}
