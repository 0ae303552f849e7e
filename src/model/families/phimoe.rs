//! PhiMoE (`PhiMoEForCausalLM`, e.g. microsoft/Phi-3.5-MoE-instruct).
//!
//! - LayerNorm with bias (not RMSNorm) before attention, before the MoE block and at the end;
//!   `lm_head` has a bias when `lm_head_bias`.
//! - Attention: GQA, q/k/v/o biases when `attention_bias`, sliding-window mask (`sliding_window`),
//!   RoPE with `longrope` scaling as transformers 5 applies it: inverse frequencies divided by
//!   `short_factor`, cos / sin multiplied by `short_mscale` (transformers switches to
//!   `long_mscale` once a sequence passes `original_max_position_embeddings`; the released
//!   models use the same value for both, and a config where they differ is refused).
//! - Every layer is MoE: router `block_sparse_moe.gate` (no bias), sparsemixer routing
//!   ([`crate::model::router::TopkMethod::SparseMixer`], `router_jitter_noise` as its epsilon),
//!   SwiGLU experts `block_sparse_moe.experts.E.{w1 (gate), w3 (up), w2 (down)}`.

use serde::Deserialize;

use super::standard::{LongRope, QkNormKind, RouterRule, StandardSpec, build_standard};
use super::{BuildCtx, parse_config};
use crate::model::error::ModelError;
use crate::model::layers::NormKind;
use crate::model::weights::WeightSource;
use crate::model::{Family, MoeModel, Result};

/// `config.json` of a PhiMoE checkpoint (HF field names).
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
    /// PhiMoE's LayerNorm epsilon (HF reuses the RMSNorm field name).
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "super::common::default_rope_theta")]
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub lm_head_bias: bool,
    pub sliding_window: Option<usize>,
    pub num_local_experts: usize,
    pub num_experts_per_tok: usize,
    #[serde(default = "default_jitter")]
    pub router_jitter_noise: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

/// `rope_scaling` of type `longrope`.
#[derive(Debug, Clone, Deserialize)]
pub struct RopeScaling {
    #[serde(alias = "rope_type")]
    pub r#type: String,
    pub short_factor: Option<Vec<f64>>,
    pub short_mscale: Option<f64>,
    pub long_mscale: Option<f64>,
}

fn default_eps() -> f64 {
    1e-5
}

fn default_jitter() -> f64 {
    0.01
}

fn bad(msg: impl std::fmt::Display) -> ModelError {
    ModelError::msg(format!("PhiMoEForCausalLM config.json: {msg}"))
}

/// The [`StandardSpec`] of a `config.json`.
pub fn spec(json: &str) -> Result<StandardSpec> {
    let c: Config = parse_config(Family::PhiMoe, json)?;
    let head_dim = c
        .head_dim
        .unwrap_or(c.hidden_size / c.num_attention_heads.max(1));
    if c.num_experts_per_tok != 2 {
        return Err(bad(format!(
            "num_experts_per_tok = {}: sparsemixer routing chooses exactly 2 experts",
            c.num_experts_per_tok
        )));
    }
    let longrope = match &c.rope_scaling {
        None => None,
        Some(rs) if rs.r#type == "longrope" => {
            let factors = rs
                .short_factor
                .clone()
                .ok_or_else(|| bad("rope_scaling longrope needs short_factor"))?;
            if factors.len() != head_dim / 2 {
                return Err(bad(format!(
                    "rope_scaling.short_factor has {} factors, head_dim {head_dim} needs {}",
                    factors.len(),
                    head_dim / 2
                )));
            }
            let mscale = rs.short_mscale.unwrap_or(1.0);
            if rs.long_mscale.is_some_and(|l| l != mscale) {
                return Err(bad(
                    "rope_scaling long_mscale differs from short_mscale; transformers then \
                     scales by sequence length, which MoEScope does not reproduce",
                ));
            }
            Some(LongRope { factors, mscale })
        }
        Some(rs) => {
            return Err(bad(format!(
                "unsupported rope_scaling type '{}' (supported: longrope)",
                rs.r#type
            )));
        }
    };
    Ok(StandardSpec {
        family: Family::PhiMoe,
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
        longrope,
        norm: NormKind::Layer,
        lm_head_bias: c.lm_head_bias,
        qkv_bias: c.attention_bias,
        o_bias: c.attention_bias,
        clip_qkv: None,
        qk_norm: QkNormKind::None,
        moe_prefix: "block_sparse_moe",
        expert_names: ["w1", "w3", "w2"],
        num_experts: c.num_local_experts,
        top_k: c.num_experts_per_tok,
        norm_topk_prob: false,
        router: RouterRule::SparseMixer {
            jitter_eps: c.router_jitter_noise,
        },
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
