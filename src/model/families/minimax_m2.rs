//! MiniMax-M2 (`MiniMaxM2ForCausalLM`, e.g. MiniMaxAI/MiniMax-M2).
//!
//! - Attention: GQA with explicit `head_dim`, no biases; with `use_qk_norm` RMSNorm over the
//!   whole q and k projections (`q_norm` of width heads × head_dim, `k_norm` kv_heads × head_dim)
//!   before the split into heads; partial rotary: the first `rotary_dim` channels of each head
//!   turn (rotate-half).
//! - Every layer is MoE, with no shared expert. Router `block_sparse_moe.gate` → sigmoid
//!   scores; `block_sparse_moe.e_score_correction_bias` (on the block, not the router) is added
//!   for choosing only; plain top-k; weights = the unbiased scores, renormalised. Experts are
//!   SwiGLU `block_sparse_moe.experts.E.{w1 (gate), w3 (up), w2 (down)}`.

use serde::Deserialize;

use super::standard::{QkNormKind, RouterRule, StandardSpec, build_standard};
use super::{BuildCtx, parse_config};
use crate::model::layers::NormKind;
use crate::model::weights::WeightSource;
use crate::model::{Family, MoeModel, Result};

/// `config.json` of a MiniMax-M2 checkpoint (HF field names).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rotary_dim: Option<usize>,
    #[serde(default = "super::common::default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "super::common::default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "super::common::default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "yes")]
    pub use_qk_norm: bool,
    pub num_local_experts: usize,
    pub num_experts_per_tok: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn yes() -> bool {
    true
}

/// The [`StandardSpec`] of a `config.json`.
pub fn spec(json: &str) -> Result<StandardSpec> {
    let c: Config = parse_config(Family::MiniMaxM2, json)?;
    let head_dim = c
        .head_dim
        .unwrap_or(c.hidden_size / c.num_attention_heads.max(1));
    let rotary_dim = c.rotary_dim.unwrap_or(head_dim);
    Ok(StandardSpec {
        family: Family::MiniMaxM2,
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        num_layers: c.num_hidden_layers,
        num_heads: c.num_attention_heads,
        num_kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
        head_dim,
        max_position_embeddings: c.max_position_embeddings,
        rms_norm_eps: c.rms_norm_eps,
        rope_theta: c.rope_theta,
        rotary_dim,
        longrope: None,
        norm: NormKind::Rms,
        lm_head_bias: false,
        qkv_bias: false,
        o_bias: false,
        clip_qkv: None,
        qk_norm: if c.use_qk_norm {
            QkNormKind::Full
        } else {
            QkNormKind::None
        },
        moe_prefix: "block_sparse_moe",
        expert_names: ["w1", "w3", "w2"],
        num_experts: c.num_local_experts,
        top_k: c.num_experts_per_tok,
        norm_topk_prob: true,
        router: RouterRule::SigmoidBiased {
            correction_bias: "e_score_correction_bias",
            n_group: 1,
            topk_group: 1,
            routed_scaling_factor: 1.0,
        },
        expert_intermediate_size: c.intermediate_size,
        moe_layers: (0..c.num_hidden_layers).collect(),
        dense_intermediate_size: c.intermediate_size,
        shared: None,
        sliding_window: None,
        tie_word_embeddings: c.tie_word_embeddings,
    })
}

pub fn load(json: &str, vb: WeightSource, ctx: &BuildCtx) -> Result<Box<dyn MoeModel>> {
    build_standard(spec(json)?, vb, ctx)
}
