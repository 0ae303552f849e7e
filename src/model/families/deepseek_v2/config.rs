//! The DeepSeek-V2 `config.json` and what is derived from it alone: the expert choice rule, the
//! rotary inverse frequencies (default, linear, dynamic, YaRN) and the softmax-scale factor.

use serde::Deserialize;

use crate::model::error::{ModelError, Result};
use crate::model::router::{GroupScore, TopkMethod};

/// `config.json` of a DeepSeek-V2 checkpoint (HF field names; defaults as transformers').
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    #[serde(default = "default_hidden")]
    pub hidden_size: usize,
    #[serde(default = "default_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "default_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_heads")]
    pub num_attention_heads: usize,
    /// Unused by the computation: MLA produces one key/value per attention head.
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "crate::model::families::common::default_rope_theta")]
    pub rope_theta: f64,
    pub rope_scaling: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub first_k_dense_replace: usize,
    /// Remote-code field; transformers 4.57 ignores it (every layer from
    /// `first_k_dense_replace` on is MoE).
    pub moe_layer_freq: Option<usize>,
    #[serde(default = "default_kv_lora_rank")]
    pub kv_lora_rank: usize,
    /// `null` = plain `q_proj` (V2-Lite).
    #[serde(default = "default_q_lora_rank")]
    pub q_lora_rank: Option<usize>,
    pub n_group: Option<usize>,
    #[serde(default = "default_routed_experts")]
    pub n_routed_experts: usize,
    #[serde(default = "default_shared_experts")]
    pub n_shared_experts: Option<usize>,
    #[serde(default = "default_nope_dim")]
    pub qk_nope_head_dim: usize,
    #[serde(default = "default_rope_dim")]
    pub qk_rope_head_dim: usize,
    #[serde(default = "default_scaling")]
    pub routed_scaling_factor: f64,
    pub topk_group: Option<usize>,
    #[serde(default = "default_topk_method")]
    pub topk_method: String,
    #[serde(default = "default_v_dim")]
    pub v_head_dim: usize,
    pub num_experts_per_tok: Option<usize>,
    /// Read but unused by transformers 4.57's DeepSeek-V2 router (weights are never renormalised).
    #[serde(default)]
    pub norm_topk_prob: bool,
    #[serde(default = "default_moe_intermediate")]
    pub moe_intermediate_size: usize,
    /// V3: how router logits become scores (`sigmoid`).
    pub scoring_func: Option<String>,
    /// V3: rotate interleaved channel pairs (the default) rather than halves.
    pub rope_interleave: Option<bool>,
}

fn default_vocab() -> usize {
    32000
}
fn default_hidden() -> usize {
    4096
}
fn default_intermediate() -> usize {
    11008
}
fn default_layers() -> usize {
    32
}
fn default_heads() -> usize {
    32
}
fn default_act() -> String {
    "silu".into()
}
fn default_max_pos() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-6
}
fn default_kv_lora_rank() -> usize {
    512
}
fn default_q_lora_rank() -> Option<usize> {
    Some(1536)
}
fn default_routed_experts() -> usize {
    64
}
fn default_shared_experts() -> Option<usize> {
    Some(2)
}
fn default_nope_dim() -> usize {
    128
}
fn default_rope_dim() -> usize {
    64
}
fn default_scaling() -> f64 {
    1.0
}
fn default_topk_method() -> String {
    "greedy".into()
}
fn default_v_dim() -> usize {
    128
}
fn default_moe_intermediate() -> usize {
    1407
}

pub(super) fn bad(msg: impl std::fmt::Display) -> ModelError {
    ModelError::msg(format!("DeepSeek config.json: {msg}"))
}

/// The expert choice rule named by `topk_method`.
pub(super) fn topk_method(cfg: &Config) -> Result<TopkMethod> {
    match cfg.topk_method.as_str() {
        "greedy" => Ok(TopkMethod::Greedy),
        "group_limited_greedy" => {
            let n_group = cfg
                .n_group
                .ok_or_else(|| bad("topk_method 'group_limited_greedy' needs n_group"))?;
            let topk_group = cfg
                .topk_group
                .ok_or_else(|| bad("topk_method 'group_limited_greedy' needs topk_group"))?;
            if n_group == 0 || !cfg.n_routed_experts.is_multiple_of(n_group) {
                return Err(bad(format!(
                    "n_routed_experts = {} cannot be split into n_group = {n_group} equal groups",
                    cfg.n_routed_experts
                )));
            }
            if topk_group == 0 || topk_group > n_group {
                return Err(bad(format!(
                    "topk_group = {topk_group} must be between 1 and n_group = {n_group}"
                )));
            }
            Ok(TopkMethod::GroupLimited {
                n_group,
                topk_group,
                group_score: GroupScore::Max,
            })
        }
        other => Err(bad(format!(
            "unsupported topk_method '{other}' (supported: greedy, group_limited_greedy)"
        ))),
    }
}

fn get_f64(map: &serde_json::Map<String, serde_json::Value>, key: &str) -> Result<Option<f64>> {
    match map.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| bad(format!("rope_scaling.{key} must be a number, got {v}"))),
    }
}

/// Inverse frequencies of the `dim` rope channels and the factor cos/sin are multiplied by, as
/// transformers' `ROPE_INIT_FUNCTIONS[rope_type]` computes them (rope `head_dim` =
/// `qk_rope_head_dim`).
pub fn rope_parameters(cfg: &Config) -> Result<(Vec<f32>, f32)> {
    let dim = cfg.qk_rope_head_dim;
    let base = cfg.rope_theta;
    // Exponents in f32 as torch computes `arange(0, dim, 2).float() / dim`.
    let exps: Vec<f64> = (0..dim / 2)
        .map(|i| f64::from((2 * i) as f32 / dim as f32))
        .collect();
    let default_inv: Vec<f64> = exps.iter().map(|e| 1.0 / base.powf(*e)).collect();
    let Some(rs) = &cfg.rope_scaling else {
        return Ok((default_inv.iter().map(|&x| x as f32).collect(), 1.0));
    };
    let rope_type = rs
        .get("rope_type")
        .or_else(|| rs.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let factor = || -> Result<f64> {
        get_f64(rs, "factor")?
            .ok_or_else(|| bad(format!("rope_scaling of type '{rope_type}' needs a factor")))
    };
    match rope_type {
        // "dynamic" equals the default within max_position_embeddings, beyond which we refuse.
        "default" | "dynamic" => Ok((default_inv.iter().map(|&x| x as f32).collect(), 1.0)),
        "linear" => {
            let f = factor()?;
            Ok((default_inv.iter().map(|&x| (x / f) as f32).collect(), 1.0))
        }
        "yarn" => {
            let factor = factor()?;
            let mscale = get_f64(rs, "mscale")?;
            let mscale_all_dim = get_f64(rs, "mscale_all_dim")?;
            let get_mscale = |scale: f64, m: f64| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * m * scale.ln() + 1.0
                }
            };
            let attention_factor = match get_f64(rs, "attention_factor")? {
                Some(a) => a,
                None => match (mscale, mscale_all_dim) {
                    (Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => {
                        get_mscale(factor, m) / get_mscale(factor, ma)
                    }
                    _ => get_mscale(factor, 1.0),
                },
            };
            // `x or default`: a zero counts as unset, as in Python.
            let or = |v: Option<f64>, d: f64| v.filter(|x| *x != 0.0).unwrap_or(d);
            let beta_fast = or(get_f64(rs, "beta_fast")?, 32.0);
            let beta_slow = or(get_f64(rs, "beta_slow")?, 1.0);
            let orig_max = or(
                get_f64(rs, "original_max_position_embeddings")?,
                cfg.max_position_embeddings as f64,
            );
            let truncate = rs.get("truncate").and_then(|v| v.as_bool()).unwrap_or(true);
            let d = dim as f64;
            let correction_dim = |rot: f64| {
                (d * (orig_max / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln())
            };
            let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
            if truncate {
                low = low.floor();
                high = high.ceil();
            }
            let low = low.max(0.0);
            let mut high = high.min(d - 1.0);
            if low == high {
                high += 0.001;
            }
            let inv = default_inv
                .iter()
                .enumerate()
                .map(|(i, &extrapolation)| {
                    let interpolation = extrapolation / factor;
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolation_factor = 1.0 - ramp;
                    (interpolation * (1.0 - extrapolation_factor)
                        + extrapolation * extrapolation_factor) as f32
                })
                .collect();
            Ok((inv, attention_factor as f32))
        }
        other => Err(bad(format!(
            "unsupported rope_scaling type '{other}' (supported: default, linear, dynamic, yarn)"
        ))),
    }
}

/// Refuses configs this implementation does not cover (`v3`: DeepSeek-V3's rules, whose
/// router ignores `topk_method`).
pub(super) fn validate(cfg: &Config, v3: bool) -> Result<()> {
    if !matches!(cfg.hidden_act.as_str(), "silu" | "swish") {
        return Err(bad(format!(
            "unsupported hidden_act '{}' (supported: silu)",
            cfg.hidden_act
        )));
    }
    if !v3 {
        topk_method(cfg)?;
    }
    if let Some(f) = cfg.moe_layer_freq
        && f != 1
    {
        return Err(bad(format!(
            "moe_layer_freq = {f} is not supported (transformers' DeepseekV2 makes every layer from \
             first_k_dense_replace on an MoE layer, i.e. moe_layer_freq = 1)"
        )));
    }
    if cfg.hidden_size == 0
        || cfg.num_attention_heads == 0
        || !cfg.qk_rope_head_dim.is_multiple_of(2)
    {
        return Err(bad(format!(
            "hidden_size ({}) and num_attention_heads ({}) must be positive and qk_rope_head_dim ({}) even",
            cfg.hidden_size, cfg.num_attention_heads, cfg.qk_rope_head_dim
        )));
    }
    Ok(())
}

/// The factor the softmax scale is multiplied by under [`Options::yarn_mscale_softmax`](super::Options::yarn_mscale_softmax).
pub(super) fn softmax_mscale(cfg: &Config) -> Result<f64> {
    let Some(rs) = &cfg.rope_scaling else {
        return Ok(1.0);
    };
    match get_f64(rs, "mscale_all_dim")? {
        Some(m) if m != 0.0 => {
            let factor = get_f64(rs, "factor")?
                .ok_or_else(|| bad("rope_scaling with mscale_all_dim needs a factor"))?;
            let ms = if factor <= 1.0 {
                1.0
            } else {
                0.1 * m * factor.ln() + 1.0
            };
            Ok(ms * ms)
        }
        _ => Ok(1.0),
    }
}
