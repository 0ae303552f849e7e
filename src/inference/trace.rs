//! Tracing one token sequence: a single forward pass that records, for every MoE layer, each
//! token's router logits, routing scores, chosen experts and their weights (and, with the LM
//! head, the next-token logits at the last position); and the per-token view of that record
//! the GUI's token panel shows. The CLI's `trace` and the worker's trace job both run
//! [`trace_tokens`].

use tokenizers::Tokenizer;

use crate::model::router::{RecordedRoute, RecordingHook, RouteCtx};
use crate::model::{Batch, ModelError, ModelInfo, MoeModel, Output};

/// The routing of one token sequence through every MoE layer.
#[derive(Debug, Clone)]
pub struct RoutingTrace {
    pub ids: Vec<u32>,
    /// One record per MoE layer, in the order the model routed them.
    pub layers: Vec<RecordedRoute>,
    /// Next-token logits at the last position, when asked for.
    pub last_logits: Option<Vec<f32>>,
}

/// Runs `ids` through the model once, recording every MoE layer's routing. With `logits`, the
/// pass goes through the LM head and keeps the last position's logits (the model must be
/// loaded with its head); without, it stops after the last MoE layer.
pub fn trace_tokens(
    model: &mut dyn MoeModel,
    ids: Vec<u32>,
    logits: bool,
) -> Result<RoutingTrace, ModelError> {
    if ids.is_empty() {
        return Err(ModelError::msg("no tokens to trace"));
    }
    let vocab = model.info().vocab_size;
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(ModelError::msg(format!(
            "token id {bad} is outside the vocabulary of {vocab} tokens"
        )));
    }
    let batch = Batch::from_sequences(std::slice::from_ref(&ids), model.device())?;
    let mut hook = RecordingHook::default();
    let output = if logits {
        Output::LastLogits
    } else {
        Output::RoutingOnly
    };
    let out = {
        let mut ctx = RouteCtx::new(&mut hook);
        model.forward(&batch, output, &mut ctx)?
    };
    let last_logits = if logits {
        let out = out.ok_or_else(|| ModelError::msg("the model returned no logits"))?;
        Some(out.squeeze(0)?.to_vec1()?)
    } else {
        None
    };
    Ok(RoutingTrace {
        ids,
        layers: hook.layers,
        last_logits,
    })
}

/// One token of a traced prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct TracedToken {
    pub id: u32,
    /// The token decoded on its own.
    pub text: String,
    /// Per MoE layer (rows of [`TokenTrace::layers`]): chosen experts and their weights, in the
    /// order the model uses them.
    pub experts: Vec<Vec<(usize, f32)>>,
}

/// Every token of one prompt and where each MoE layer routed it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenTrace {
    pub text: String,
    /// Decoder layer index of each MoE layer, ascending.
    pub layers: Vec<usize>,
    pub num_experts: usize,
    pub tokens: Vec<TracedToken>,
}

impl RoutingTrace {
    /// Each token decoded on its own.
    pub fn token_texts(&self, tokenizer: &Tokenizer) -> Vec<String> {
        self.ids
            .iter()
            .map(|&id| tokenizer.decode(&[id], false).unwrap_or_default())
            .collect()
    }

    /// The per-token view: for every token, its chosen experts and weights in each MoE layer
    /// of `info` (rows in `info.moe_layers` order). `text` is the prompt as typed.
    pub fn per_token(&self, text: &str, tokenizer: &Tokenizer, info: &ModelInfo) -> TokenTrace {
        let layers = info.moe_layers.clone();
        let mut tokens: Vec<TracedToken> = self
            .ids
            .iter()
            .zip(self.token_texts(tokenizer))
            .map(|(&id, text)| TracedToken {
                id,
                text,
                experts: vec![Vec::new(); layers.len()],
            })
            .collect();
        for route in &self.layers {
            let Some(row) = layers.iter().position(|&l| l == route.layer) else {
                continue;
            };
            let k = route.top_k.max(1);
            for (t, token) in tokens.iter_mut().enumerate() {
                let range = t * k..(t + 1) * k;
                if let (Some(idx), Some(w)) = (
                    route.topk_indices.get(range.clone()),
                    route.topk_weights.get(range),
                ) {
                    token.experts[row] =
                        idx.iter().zip(w).map(|(&e, &w)| (e as usize, w)).collect();
                }
            }
        }
        TokenTrace {
            text: text.to_string(),
            layers,
            num_experts: info.num_experts,
            tokens,
        }
    }
}
