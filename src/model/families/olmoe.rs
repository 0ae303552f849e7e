//! OLMoE (`OlmoeForCausalLM`, e.g. allenai/OLMoE-1B-7B-0924).
//!
//! - Pre-norm decoder; every layer is MoE.
//! - Attention: q/k/v/o (bias if `attention_bias`), optional `clip_qkv` clamp, then RMSNorm over
//!   the whole q and k projection outputs (not per head), then RoPE (rotate-half).
//! - Router: `mlp.gate`, softmax over all experts in fp32, top-k, renormalised only if
//!   `norm_topk_prob` (false in the released models). Experts are SwiGLU
//!   `mlp.experts.E.{gate,up,down}_proj`; no shared expert.

use crate::model::weights::WeightSource;
use serde::Deserialize;

use super::standard::{QkNormKind, RouterRule, StandardSpec, build_standard};
use super::{BuildCtx, parse_config};
use crate::model::layers::NormKind;
use crate::model::{Family, MoeModel, Result};

/// `config.json` of an OLMoE checkpoint (HF field names).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "super::common::default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "super::common::default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub attention_bias: bool,
    pub clip_qkv: Option<f64>,
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    #[serde(default)]
    pub norm_topk_prob: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_eps() -> f64 {
    1e-5
}

/// The [`StandardSpec`] of a `config.json`.
pub fn spec(json: &str) -> Result<StandardSpec> {
    let c: Config = parse_config(Family::Olmoe, json)?;
    let head_dim = c.hidden_size / c.num_attention_heads.max(1);
    Ok(StandardSpec {
        family: Family::Olmoe,
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
        qkv_bias: c.attention_bias,
        o_bias: c.attention_bias,
        clip_qkv: c.clip_qkv,
        qk_norm: QkNormKind::Full,
        moe_prefix: "mlp",
        expert_names: ["gate_proj", "up_proj", "down_proj"],
        num_experts: c.num_experts,
        top_k: c.num_experts_per_tok,
        norm_topk_prob: c.norm_topk_prob,
        router: RouterRule::Softmax,
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
