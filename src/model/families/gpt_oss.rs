//! gpt-oss (`GptOssForCausalLM`, e.g. openai/gpt-oss-20b and -120b), as transformers'
//! `modeling_gpt_oss.py` computes it.
//!
//! - Attention: q/k/v/o with biases (`attention_bias`), grouped KV heads, rotary positions on
//!   halves with YaRN scaling (`rope_scaling` / `rope_parameters`, `truncate` honoured, cos/sin
//!   times the attention factor), per-head attention sinks (`self_attn.sinks`: one more logit
//!   column in each softmax row, dropped after it), and per `layer_types` either a sliding
//!   window of `sliding_window` keys or full causal attention.
//! - Every layer is MoE: `mlp.router` (weight and bias) scores the experts; top-k of the raw
//!   logits with a softmax over the k — the same as a softmax over all experts, top-k and
//!   renormalised, which is how it goes through [`RouterConfig`] (the recorded scores are the
//!   softmax over all experts).
//! - Experts are fused: `mlp.experts.gate_up_proj` with gate and up INTERLEAVED (gate = even
//!   output features, up = odd), `gate_up_proj_bias`, `down_proj`, `down_proj_bias`; gating
//!   [`GluActivation::ClampedSwish`] (`swiglu_alpha`, `swiglu_limit`). Released checkpoints store
//!   the matrices as MXFP4 (`*_blocks` `[E, out, in/32, 16]` and `*_scales` `[E, out, in/32]`,
//!   out × in as we hold them); they stay packed and are dequantised as the kernels read them.
//!   Dequantised checkpoints hold `gate_up_proj` `[E, hidden, 2·inter]` and `down_proj`
//!   `[E, inter, hidden]` (`x·W`), which are transposed on loading.

use std::sync::Arc;

use candle_core::Tensor;
use serde::Deserialize;

use super::{
    BuildCtx, HeadSpec, InfoParts, load_embed_norm_head, parse_config,
    standard_attention_projections,
};
use crate::model::error::ModelError;
use crate::model::info::{AttentionKind, Projection};
use crate::model::layers::{
    Attention, AttentionConfig, DecoderLayer, DecoderStack, FeedForward, GluActivation, Linear,
    MoeBlock, QkNorm, RmsNorm, Rotary, SwiGlu,
};
use crate::model::router::RouterConfig;
use crate::model::weight::Weight;
use crate::model::weights::WeightSource;
use crate::model::{Family, ModuleLayout, MoeModel, Result};

type JsonMap = serde_json::Map<String, serde_json::Value>;

/// `config.json` of a gpt-oss checkpoint (HF field names, HF defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    #[serde(default = "default_hidden")]
    pub hidden_size: usize,
    #[serde(default = "default_hidden")]
    pub intermediate_size: usize,
    #[serde(default = "default_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_kv_heads")]
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "default_head_dim")]
    pub head_dim: Option<usize>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    pub rope_theta: Option<f64>,
    /// transformers 4 name of the rope settings.
    pub rope_scaling: Option<JsonMap>,
    /// transformers 5 name (with `rope_theta` inside).
    pub rope_parameters: Option<JsonMap>,
    #[serde(default = "default_experts")]
    pub num_local_experts: usize,
    #[serde(default = "default_top_k")]
    pub num_experts_per_tok: usize,
    #[serde(default = "default_window")]
    pub sliding_window: Option<usize>,
    pub layer_types: Option<Vec<String>>,
    #[serde(default = "default_alpha")]
    pub swiglu_alpha: f32,
    #[serde(default = "default_limit")]
    pub swiglu_limit: f32,
    #[serde(default = "default_true")]
    pub attention_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_vocab() -> usize {
    201088
}
fn default_hidden() -> usize {
    2880
}
fn default_layers() -> usize {
    36
}
fn default_heads() -> usize {
    64
}
fn default_kv_heads() -> Option<usize> {
    Some(8)
}
fn default_head_dim() -> Option<usize> {
    Some(64)
}
fn default_max_pos() -> usize {
    131072
}
fn default_eps() -> f64 {
    1e-5
}
fn default_experts() -> usize {
    128
}
fn default_top_k() -> usize {
    4
}
fn default_window() -> Option<usize> {
    Some(128)
}
fn default_alpha() -> f32 {
    1.702
}
fn default_limit() -> f32 {
    7.0
}
fn default_true() -> bool {
    true
}

fn bad(msg: impl std::fmt::Display) -> ModelError {
    ModelError::msg(format!("gpt-oss config: {msg}"))
}

impl Config {
    fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Each layer's attention: HF's `layer_types`, by default sliding on even layers and full
    /// on odd ones.
    pub fn attention_kinds(&self) -> Result<Vec<AttentionKind>> {
        let n = self.num_hidden_layers;
        let types: Vec<String> = match &self.layer_types {
            Some(t) => t.clone(),
            None => (0..n)
                .map(|i| match i % 2 {
                    0 => "sliding_attention".to_string(),
                    _ => "full_attention".to_string(),
                })
                .collect(),
        };
        if types.len() != n {
            return Err(bad(format!(
                "layer_types has {} entries for {n} layers",
                types.len()
            )));
        }
        types
            .iter()
            .map(|t| match (t.as_str(), self.sliding_window) {
                ("full_attention", _) | ("sliding_attention", None) => Ok(AttentionKind::Full),
                ("sliding_attention", Some(window)) => Ok(AttentionKind::Sliding { window }),
                (other, _) => Err(bad(format!(
                    "unknown layer type '{other}' (expected sliding_attention or full_attention)"
                ))),
            })
            .collect()
    }

    /// The rope settings as transformers 5 standardises them: `rope_parameters`, else the
    /// legacy `rope_scaling`, else gpt-oss's default YaRN; `rope_theta` inside or beside them.
    fn rope_settings(&self) -> (JsonMap, f64) {
        let params = self
            .rope_parameters
            .clone()
            .or_else(|| self.rope_scaling.clone())
            .unwrap_or_else(|| {
                serde_json::json!({
                    "rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                    "truncate": false, "original_max_position_embeddings": 4096
                })
                .as_object()
                .cloned()
                .expect("an object")
            });
        let theta = params
            .get("rope_theta")
            .and_then(|v| v.as_f64())
            .or(self.rope_theta)
            .unwrap_or(150000.0);
        (params, theta)
    }
}

fn get_f64(map: &JsonMap, key: &str) -> Result<Option<f64>> {
    match map.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| bad(format!("rope parameter {key} must be a number, got {v}"))),
    }
}

/// The inverse frequencies of a head of `dim` channels and the factor cos/sin are multiplied
/// by, as transformers' `_compute_yarn_parameters` (or the default rope) computes them in
/// float32.
pub fn rope_parameters(cfg: &Config) -> Result<(Vec<f32>, f32)> {
    let (params, base) = cfg.rope_settings();
    let dim = cfg.head_dim();
    // torch: base ** (arange(0, dim, 2).float() / dim), all in float32.
    let pos_freqs: Vec<f32> = (0..dim / 2)
        .map(|i| (base as f32).powf((2 * i) as f32 / dim as f32))
        .collect();
    let rope_type = params
        .get("rope_type")
        .or_else(|| params.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    match rope_type {
        "default" => Ok((pos_freqs.iter().map(|p| 1.0 / p).collect(), 1.0)),
        "yarn" => {
            let factor = match get_f64(&params, "factor")? {
                Some(f) => f,
                None => {
                    let orig =
                        get_f64(&params, "original_max_position_embeddings")?.ok_or_else(|| {
                            bad("yarn needs factor or original_max_position_embeddings")
                        })?;
                    cfg.max_position_embeddings as f64 / orig
                }
            };
            let get_mscale = |scale: f64, m: f64| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * m * scale.ln() + 1.0
                }
            };
            let attention_factor = match get_f64(&params, "attention_factor")? {
                Some(a) => a,
                None => match (
                    get_f64(&params, "mscale")?,
                    get_f64(&params, "mscale_all_dim")?,
                ) {
                    (Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => {
                        get_mscale(factor, m) / get_mscale(factor, ma)
                    }
                    _ => get_mscale(factor, 1.0),
                },
            };
            // `x or default`: zero counts as unset, as in Python.
            let or = |v: Option<f64>, d: f64| v.filter(|x| *x != 0.0).unwrap_or(d);
            let beta_fast = or(get_f64(&params, "beta_fast")?, 32.0);
            let beta_slow = or(get_f64(&params, "beta_slow")?, 1.0);
            let orig_max = get_f64(&params, "original_max_position_embeddings")?
                .ok_or_else(|| bad("yarn needs original_max_position_embeddings"))?;
            let truncate = params
                .get("truncate")
                .and_then(|v| v.as_bool())
                .unwrap_or(true);
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
            let (low, span, factor) = (low as f32, (high - low) as f32, factor as f32);
            let inv = pos_freqs
                .iter()
                .enumerate()
                .map(|(i, &p)| {
                    let extrapolation = 1.0 / p;
                    let interpolation = 1.0 / (factor * p);
                    let ramp = ((i as f32 - low) / span).clamp(0.0, 1.0);
                    let extrapolation_factor = 1.0 - ramp;
                    interpolation * (1.0 - extrapolation_factor)
                        + extrapolation * extrapolation_factor
                })
                .collect();
            Ok((inv, attention_factor as f32))
        }
        other => Err(bad(format!(
            "unsupported rope type '{other}' (supported: default, yarn)"
        ))),
    }
}

/// One layer's experts from gate and up kept apart, as GGUF files hold them: `gate_proj` and
/// `up_proj` `[E, inter, hidden]`, `down_proj` `[E, hidden, inter]` (rows are output
/// features), each with its `*_bias` `[E, out]`.
fn load_split_experts(
    vb: &WeightSource,
    (e, h, inter): (usize, usize, usize),
    act: GluActivation,
) -> Result<Vec<SwiGlu>> {
    let gate = vb.weight((e, inter, h), "gate_proj")?;
    let up = vb.weight((e, inter, h), "up_proj")?;
    let down = vb.weight((e, h, inter), "down_proj")?;
    let gate_bias = vb.get((e, inter), "gate_proj_bias")?;
    let up_bias = vb.get((e, inter), "up_proj_bias")?;
    let down_bias = vb.get((e, h), "down_proj_bias")?;
    (0..e)
        .map(|i| {
            Ok(SwiGlu {
                gate: Linear::new(
                    gate.slice(i, 0..inter)?,
                    Some(gate_bias.get(i)?.contiguous()?),
                ),
                up: Linear::new(up.slice(i, 0..inter)?, Some(up_bias.get(i)?.contiguous()?)),
                down: Linear::new(down.slice(i, 0..h)?, Some(down_bias.get(i)?.contiguous()?)),
                names: EXPERT_NAMES,
                act,
            })
        })
        .collect()
}

/// One layer's experts, each a [`SwiGlu`] over views of the fused tensors: gate = the even
/// rows of `gate_up_proj` (as `[2·inter, hidden]`), up = the odd rows, with the matching
/// halves of `gate_up_proj_bias`; down = the expert's `down_proj` `[hidden, inter]` and bias.
fn load_experts(vb: &WeightSource, cfg: &Config) -> Result<Vec<SwiGlu>> {
    let (e, h, inter) = (
        cfg.num_local_experts,
        cfg.hidden_size,
        cfg.intermediate_size,
    );
    let act = GluActivation::ClampedSwish {
        alpha: cfg.swiglu_alpha,
        limit: cfg.swiglu_limit,
    };
    if vb.contains_tensor("gate_proj") {
        return load_split_experts(vb, (e, h, inter), act);
    }
    let (gate_up, down) = if vb.contains_mxfp4("gate_up_proj") || vb.contains_mxfp4("down_proj") {
        (
            vb.mxfp4(&[e, 2 * inter, h], "gate_up_proj")?,
            vb.mxfp4(&[e, h, inter], "down_proj")?,
        )
    } else {
        // `x·W` layout: transposed once into `[out, in]`.
        let gu = vb.get((e, h, 2 * inter), "gate_up_proj")?;
        let d = vb.get((e, inter, h), "down_proj")?;
        (
            Weight::Tensor(gu.transpose(1, 2)?.contiguous()?),
            Weight::Tensor(d.transpose(1, 2)?.contiguous()?),
        )
    };
    let gate_up_bias = vb.get((e, 2 * inter), "gate_up_proj_bias")?;
    let down_bias = vb.get((e, h), "down_proj_bias")?;
    (0..e)
        .map(|i| {
            let pair_bias = gate_up_bias.get(i)?.reshape((inter, 2))?;
            let half_bias = |j: usize| -> Result<Tensor> {
                Ok(pair_bias.narrow(1, j, 1)?.squeeze(1)?.contiguous()?)
            };
            Ok(SwiGlu {
                gate: Linear::new(gate_up.every_other_row(i, 0, inter)?, Some(half_bias(0)?)),
                up: Linear::new(gate_up.every_other_row(i, 1, inter)?, Some(half_bias(1)?)),
                down: Linear::new(down.slice(i, 0..h)?, Some(down_bias.get(i)?.contiguous()?)),
                names: EXPERT_NAMES,
                act,
            })
        })
        .collect()
}

/// Per-expert projection names. The checkpoint has no per-expert modules: all experts of a
/// layer are fused in `mlp.experts.gate_up_proj` (gate and up interleaved) and
/// `mlp.experts.down_proj`; `mlp.experts.{expert}.{gate_proj,up_proj,down_proj}` name one
/// expert's slices of them.
const EXPERT_NAMES: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

/// A gpt-oss `config.json` parsed and checked as [`load`] reads it, with each layer's attention.
fn checked_config(json: &str) -> Result<(Config, Vec<AttentionKind>)> {
    let cfg: Config = parse_config(Family::GptOss, json)?;
    let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim());
    let (e, k) = (cfg.num_local_experts, cfg.num_experts_per_tok);
    if nh == 0 || nkv == 0 || nh % nkv != 0 || hd % 2 != 0 {
        return Err(bad(format!(
            "{nh} attention heads, {nkv} key/value heads of {hd} channels do not fit"
        )));
    }
    if k == 0 || k > e {
        return Err(bad(format!(
            "num_experts_per_tok = {k} must be between 1 and num_local_experts = {e}"
        )));
    }
    let attention_kinds = cfg.attention_kinds()?;
    Ok((cfg, attention_kinds))
}

/// The module layout: the per-expert slices of the fused (or split) expert tensors, as named by
/// [`EXPERT_NAMES`], whichever way the checkpoint stores them.
fn layout(cfg: &Config) -> ModuleLayout {
    let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
    ModuleLayout {
        expert_prefix: "model.layers.{layer}.mlp.experts.{expert}".into(),
        expert_projections: vec![
            Projection::new(EXPERT_NAMES[0], h, inter),
            Projection::new(EXPERT_NAMES[1], h, inter),
            Projection::new(EXPERT_NAMES[2], inter, h),
        ],
        shared_expert_prefix: None,
        shared_expert_projections: Vec::new(),
        attention_prefix: "model.layers.{layer}.self_attn".into(),
        attention_projections: standard_attention_projections(
            h,
            cfg.num_attention_heads,
            cfg.num_kv_heads(),
            cfg.head_dim(),
        ),
        attention_overrides: Default::default(),
        router: "model.layers.{layer}.mlp.router".into(),
        router_in: h,
    }
}

/// The module layout and per-layer attention [`load`] reports, from the `config.json` text
/// alone.
pub fn config_layout(json: &str) -> Result<(ModuleLayout, Vec<AttentionKind>)> {
    let (cfg, attention_kinds) = checked_config(json)?;
    Ok((layout(&cfg), attention_kinds))
}

pub fn load(json: &str, vb: WeightSource, ctx: &BuildCtx) -> Result<Box<dyn MoeModel>> {
    let (cfg, attention_kinds) = checked_config(json)?;
    let (h, nh, nkv, hd) = (
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_kv_heads(),
        cfg.head_dim(),
    );
    let (e, k) = (cfg.num_local_experts, cfg.num_experts_per_tok);
    let (inv_freq, attention_factor) = rope_parameters(&cfg)?;
    let rotary = Arc::new(Rotary::from_inv_freq(
        &inv_freq,
        attention_factor,
        cfg.max_position_embeddings,
        false,
        ctx.dtype,
        &ctx.device,
    )?);
    let attn_cfg = AttentionConfig {
        hidden_size: h,
        num_heads: nh,
        num_kv_heads: nkv,
        head_dim: hd,
        qkv_bias: cfg.attention_bias,
        o_bias: cfg.attention_bias,
        clip_qkv: None,
    };
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for (li, kind) in attention_kinds.iter().enumerate() {
        let lvb = vb.pp(format!("model.layers.{li}"));
        let avb = lvb.pp("self_attn");
        let window = match kind {
            AttentionKind::Sliding { window } => Some(*window),
            _ => None,
        };
        let attn = Attention::load(&avb, attn_cfg.clone(), QkNorm::None, rotary.clone())?
            .with_sinks(avb.get(nh, "sinks")?)
            .with_sliding_window(window);
        let mvb = lvb.pp("mlp");
        // Routing capture stops at the last layer's router: its experts are never run.
        let skip_experts = ctx.routing_only && li + 1 == cfg.num_hidden_layers;
        let experts = if skip_experts {
            Vec::new()
        } else {
            load_experts(&mvb.pp("experts"), &cfg)?
        };
        layers.push(DecoderLayer {
            input_norm: RmsNorm::load(&lvb.pp("input_layernorm"), h, cfg.rms_norm_eps)?.into(),
            attn: Box::new(attn),
            post_attention_norm: RmsNorm::load(
                &lvb.pp("post_attention_layernorm"),
                h,
                cfg.rms_norm_eps,
            )?
            .into(),
            ff: FeedForward::Moe(MoeBlock {
                layer: li,
                router: Linear::load(&mvb.pp("router"), h, e, true)?,
                router_cfg: RouterConfig::softmax_topk(e, k, true),
                experts,
                shared: None,
                router_fp32: false,
            }),
        });
    }
    let head = HeadSpec {
        vocab: cfg.vocab_size,
        hidden: h,
        eps: cfg.rms_norm_eps,
        norm: crate::model::layers::NormKind::Rms,
        tie_word_embeddings: cfg.tie_word_embeddings,
        lm_head_bias: false,
    };
    let (embed, norm, lm_head) = load_embed_norm_head(&vb, &head, ctx.routing_only)?;
    let info = InfoParts {
        family: Family::GptOss,
        num_layers: cfg.num_hidden_layers,
        moe_layers: (0..cfg.num_hidden_layers).collect(),
        attention_kinds,
        num_experts: e,
        top_k: k,
        num_shared_experts: 0,
        score_fn: crate::model::router::ScoreFn::Softmax,
        hidden_size: h,
        vocab_size: cfg.vocab_size,
        max_position_embeddings: cfg.max_position_embeddings,
        layout: layout(&cfg),
    }
    .into_info(ctx);
    Ok(Box::new(DecoderStack {
        info,
        embed,
        layers,
        norm,
        lm_head,
        sliding_window: None,
        use_kv_cache: false,
        device: ctx.device.clone(),
        dtype: ctx.dtype,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        serde_json::from_str(&format!("{{{extra}}}")).unwrap()
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(((g - w) / w).abs() < 1e-6, "inv_freq[{i}]: {g} vs {w}");
        }
    }

    /// Values printed by transformers 5.24's `ROPE_INIT_FUNCTIONS["yarn"]` for the default
    /// `GptOssConfig()` (gpt-oss-20b: head_dim 64, theta 150000, factor 32, original 4096,
    /// truncate false) and for a 16-channel head with `truncate: true`.
    #[test]
    fn yarn_parameters_match_transformers() {
        let (inv, att) = rope_parameters(&config("")).unwrap();
        assert_eq!(inv.len(), 32);
        assert!((att - 1.346_573_6).abs() < 1e-6);
        let picked: Vec<f32> = [0, 5, 10, 15, 20, 31].iter().map(|&i| inv[i]).collect();
        assert_close(
            &picked,
            &[
                1.0,
                0.155_322_98,
                0.019_335,
                0.001_052_602_2,
                1.818_833_7e-5,
                3.023_511_4e-7,
            ],
        );
        let cfg = config(
            r#""head_dim": 16, "hidden_size": 64, "num_attention_heads": 4,
               "rope_parameters": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
               "beta_slow": 1.0, "original_max_position_embeddings": 512, "truncate": true,
               "rope_theta": 150000.0}"#,
        );
        let (inv, _) = rope_parameters(&cfg).unwrap();
        assert_close(
            &inv,
            &[
                1.0,
                0.152_626_77,
                0.017_996_367,
                0.000_357_944_58,
                8.068_715_4e-5,
                1.818_833_7e-5,
                4.099_978_5e-6,
                9.242_089_6e-7,
            ],
        );
    }

    #[test]
    fn layer_types_give_each_layer_its_attention() {
        let kinds = config(r#""num_hidden_layers": 3, "sliding_window": 8"#)
            .attention_kinds()
            .unwrap();
        let sliding = AttentionKind::Sliding { window: 8 };
        assert_eq!(kinds, vec![sliding, AttentionKind::Full, sliding]);
        let kinds = config(
            r#""num_hidden_layers": 2, "layer_types": ["full_attention", "sliding_attention"]"#,
        )
        .attention_kinds()
        .unwrap();
        let default_window = AttentionKind::Sliding { window: 128 };
        assert_eq!(kinds, vec![AttentionKind::Full, default_window]);
        let e = config(r#""num_hidden_layers": 1, "layer_types": ["linear_attention"]"#)
            .attention_kinds()
            .unwrap_err();
        assert!(e.to_string().contains("linear_attention"), "{e}");
    }
}
