//! Mixtral (`MixtralForCausalLM`, e.g. mistralai/Mixtral-8x7B-v0.1).
//!
//! - Attention without biases, RoPE (rotate-half, `rope_theta` 1e6 by default), optional
//!   `sliding_window` (a query at position i sees keys j with i − j < window).
//! - Every layer is MoE: `block_sparse_moe.gate`, softmax in fp32, top-k, always renormalised.
//!   Experts `block_sparse_moe.experts.E.{w1,w3,w2}` (gate, up, down). No shared expert.

use crate::model::weights::WeightSource;
use serde::Deserialize;

use super::standard::{QkNormKind, RouterRule, StandardSpec, build_standard};
use super::{BuildCtx, parse_config};
use crate::model::layers::NormKind;
use crate::model::{Family, MoeModel, Result};

/// `config.json` of a Mixtral checkpoint (HF field names).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    #[serde(default = "super::common::default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    pub num_local_experts: usize,
    pub num_experts_per_tok: usize,
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_eps() -> f64 {
    1e-5
}

fn default_theta() -> f64 {
    1e6
}

/// The [`StandardSpec`] of a `config.json`.
pub fn spec(json: &str) -> Result<StandardSpec> {
    let c: Config = parse_config(Family::Mixtral, json)?;
    let head_dim = c
        .head_dim
        .unwrap_or(c.hidden_size / c.num_attention_heads.max(1));
    Ok(StandardSpec {
        family: Family::Mixtral,
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        num_layers: c.num_hidden_layers,
        num_heads: c.num_attention_heads,
        num_kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
        head_dim,
        max_position_embeddings: c.max_position_embeddings,
        rms_norm_eps: c.rms_norm_eps,
        rope_theta: c.rope_theta,
        rotary_dim: head_dim,
        longrope: None,
        norm: NormKind::Rms,
        lm_head_bias: false,
        qkv_bias: false,
        o_bias: false,
        clip_qkv: None,
        qk_norm: QkNormKind::None,
        moe_prefix: "block_sparse_moe",
        expert_names: ["w1", "w3", "w2"],
        num_experts: c.num_local_experts,
        top_k: c.num_experts_per_tok,
        norm_topk_prob: true,
        router: RouterRule::Softmax,
        expert_intermediate_size: c.intermediate_size,
        moe_layers: (0..c.num_hidden_layers).collect(),
        dense_intermediate_size: c.intermediate_size,
        shared: None,
        sliding_window: c.sliding_window,
        tie_word_embeddings: c.tie_word_embeddings,
    })
}

pub fn load(json: &str, vb: WeightSource, ctx: &BuildCtx) -> Result<Box<dyn MoeModel>> {
    build_standard(spec(json)?, vb, ctx)
}
