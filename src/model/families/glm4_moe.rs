//! GLM-4.5 / 4.6 / 4.7 and GLM-4.5-Air (`Glm4MoeForCausalLM`, e.g. zai-org/GLM-4.5-Air).
//!
//! - Attention: GQA with explicit `head_dim`; q/k/v biases if `attention_bias` (o_proj never
//!   has one); with `use_qk_norm` (GLM-4.5, not Air) RMSNorm on each head of q and k before
//!   RoPE; partial rotary: the first `head_dim × partial_rotary_factor` channels of each head
//!   turn (rotate-half), the rest pass through.
//! - Layers `0..first_k_dense_replace` have a dense SwiGLU MLP (`intermediate_size`), the others
//!   an MoE block: DeepSeek-V3's router (`mlp.gate.weight` in fp32, sigmoid scores,
//!   `mlp.gate.e_score_correction_bias` added for choosing, group-limited top-k, weights
//!   renormalised if `norm_topk_prob` and scaled by `routed_scaling_factor`), per-expert
//!   SwiGLU `mlp.experts.E.{gate,up,down}_proj`, and an ungated shared expert
//!   `mlp.shared_experts` of width `moe_intermediate_size × n_shared_experts`.
//! - Hub checkpoints also hold the multi-token-prediction layers (`model.layers.N` for
//!   `N ≥ num_hidden_layers`); they are not part of the causal LM and are not read.

use serde::Deserialize;

use super::standard::{QkNormKind, RouterRule, SharedSpec, StandardSpec, build_standard};
use super::{BuildCtx, parse_config};
use crate::model::layers::NormKind;
use crate::model::weights::WeightSource;
use crate::model::{Family, MoeModel, Result};

/// `config.json` of a GLM-4.5 checkpoint (HF field names).
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
    #[serde(default = "half")]
    pub partial_rotary_factor: f64,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub use_qk_norm: bool,
    pub n_routed_experts: usize,
    pub num_experts_per_tok: usize,
    #[serde(default)]
    pub n_shared_experts: usize,
    #[serde(default = "one")]
    pub n_group: usize,
    #[serde(default = "one")]
    pub topk_group: usize,
    #[serde(default = "one_f")]
    pub routed_scaling_factor: f64,
    #[serde(default = "yes")]
    pub norm_topk_prob: bool,
    #[serde(default)]
    pub first_k_dense_replace: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn half() -> f64 {
    0.5
}
fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}

/// The [`StandardSpec`] of a `config.json`.
pub fn spec(json: &str) -> Result<StandardSpec> {
    let c: Config = parse_config(Family::Glm4Moe, json)?;
    let head_dim = c
        .head_dim
        .unwrap_or(c.hidden_size / c.num_attention_heads.max(1));
    let rotary_dim = (head_dim as f64 * c.partial_rotary_factor) as usize;
    Ok(StandardSpec {
        family: Family::Glm4Moe,
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
        qkv_bias: c.attention_bias,
        o_bias: false,
        clip_qkv: None,
        qk_norm: if c.use_qk_norm {
            QkNormKind::PerHead
        } else {
            QkNormKind::None
        },
        moe_prefix: "mlp",
        expert_names: ["gate_proj", "up_proj", "down_proj"],
        num_experts: c.n_routed_experts,
        top_k: c.num_experts_per_tok,
        norm_topk_prob: c.norm_topk_prob,
        router: RouterRule::SigmoidBiased {
            correction_bias: "gate.e_score_correction_bias",
            n_group: c.n_group,
            topk_group: c.topk_group,
            routed_scaling_factor: c.routed_scaling_factor,
        },
        expert_intermediate_size: c.moe_intermediate_size,
        moe_layers: (c.first_k_dense_replace..c.num_hidden_layers).collect(),
        dense_intermediate_size: c.intermediate_size,
        shared: (c.n_shared_experts > 0).then_some(SharedSpec {
            name: "shared_experts",
            intermediate_size: c.moe_intermediate_size * c.n_shared_experts,
            gated: false,
        }),
        sliding_window: None,
        tie_word_embeddings: c.tie_word_embeddings,
    })
}

pub fn load(json: &str, vb: WeightSource, ctx: &BuildCtx) -> Result<Box<dyn MoeModel>> {
    build_standard(spec(json)?, vb, ctx)
}
