//! Qwen3-MoE (`Qwen3MoeForCausalLM`, e.g. Qwen/Qwen3-30B-A3B).
//!
//! - Attention: explicit `head_dim` (not necessarily hidden / heads), bias only if
//!   `attention_bias`, RMSNorm on each head of q and k (`q_norm`/`k_norm` of width `head_dim`)
//!   before RoPE.
//! - MoE / dense layers by Qwen's `mlp_only_layers` / `decoder_sparse_step` rule.
//! - Router: `mlp.gate`, softmax in fp32, top-k, renormalised if `norm_topk_prob` (true in the
//!   released models). No shared expert.

use crate::model::weights::WeightSource;
use serde::Deserialize;

use super::qwen2_moe::qwen_moe_layers;
use super::standard::{QkNormKind, RouterRule, StandardSpec, build_standard};
use super::{BuildCtx, parse_config};
use crate::model::layers::NormKind;
use crate::model::{Family, MoeModel, Result};

/// `config.json` of a Qwen3-MoE checkpoint (HF field names).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub moe_intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    #[serde(default = "super::common::default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "super::common::default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "super::common::default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub attention_bias: bool,
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    #[serde(default = "yes")]
    pub norm_topk_prob: bool,
    #[serde(default = "one")]
    pub decoder_sparse_step: usize,
    #[serde(default)]
    pub mlp_only_layers: Option<Vec<usize>>,
    #[serde(default)]
    pub use_sliding_window: bool,
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn yes() -> bool {
    true
}

fn one() -> usize {
    1
}

/// The [`StandardSpec`] of a `config.json`.
pub fn spec(json: &str) -> Result<StandardSpec> {
    let c: Config = parse_config(Family::Qwen3Moe, json)?;
    let head_dim = c
        .head_dim
        .unwrap_or(c.hidden_size / c.num_attention_heads.max(1));
    Ok(StandardSpec {
        family: Family::Qwen3Moe,
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
        clip_qkv: None,
        qk_norm: QkNormKind::PerHead,
        moe_prefix: "mlp",
        expert_names: ["gate_proj", "up_proj", "down_proj"],
        num_experts: c.num_experts,
        top_k: c.num_experts_per_tok,
        norm_topk_prob: c.norm_topk_prob,
        router: RouterRule::Softmax,
        expert_intermediate_size: c.moe_intermediate_size,
        moe_layers: qwen_moe_layers(
            c.num_hidden_layers,
            c.num_experts,
            c.decoder_sparse_step,
            c.mlp_only_layers.as_deref().unwrap_or_default(),
        ),
        dense_intermediate_size: c.intermediate_size,
        shared: None,
        sliding_window: if c.use_sliding_window {
            c.sliding_window
        } else {
            None
        },
        tie_word_embeddings: c.tie_word_embeddings,
    })
}

pub fn load(json: &str, vb: WeightSource, ctx: &BuildCtx) -> Result<Box<dyn MoeModel>> {
    build_standard(spec(json)?, vb, ctx)
}
