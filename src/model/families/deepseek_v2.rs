//! DeepSeek-V2 and V2-Lite (`DeepseekV2ForCausalLM`, e.g. deepseek-ai/DeepSeek-V2-Lite), as
//! transformers 4.57's native `models/deepseek_v2/modeling_deepseek_v2.py` computes them.
//!
//! - Pre-norm decoder. Layers `0..first_k_dense_replace` have a dense SwiGLU MLP
//!   (`intermediate_size`), every later layer an MoE block (transformers ignores the remote
//!   code's `moe_layer_freq`; a value other than 1 is refused).
//! - Multi-head latent attention (MLA): `q = q_proj(x)` or
//!   `q_b_proj(q_a_layernorm(q_a_proj(x)))`, split per head into a `qk_nope_head_dim` part and a
//!   `qk_rope_head_dim` part; `kv_a_proj_with_mqa(x)` gives the compressed kv (`kv_lora_rank`)
//!   and one rope key shared by all heads; `kv_b_proj(kv_a_layernorm(c))` gives each head's
//!   no-rope key and value (`v_head_dim`). The two low-rank norms use eps 1e-6 whatever
//!   `rms_norm_eps` says (transformers constructs them with the default).
//! - RoPE is the complex (interleaved) form: channel pairs `(2i, 2i+1)` are rotated, on the rope
//!   parts of q and k only. With YaRN (`rope_scaling.type == "yarn"`) the inverse frequencies are
//!   blended between interpolation and extrapolation, and cos/sin are multiplied by the
//!   attention factor `get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)` (or
//!   `get_mscale(factor)` when either is missing). The softmax scale is `qk_head_dim^-0.5` with no
//!   further mscale² factor: that is what transformers 4.57 does (the original remote code also
//!   multiplied it by `get_mscale(factor, mscale_all_dim)²`; [`Options::yarn_mscale_softmax`]
//!   selects that behaviour, see [`load_with`]).
//! - Router: `mlp.gate.weight` (no bias), softmax over all experts in fp32, then greedy top-k or
//!   group-limited top-k (groups scored by their max score, `topk_group` groups kept, others
//!   zeroed), weights = chosen scores × `routed_scaling_factor`. transformers 4.57 never
//!   renormalises (`norm_topk_prob` is read but unused), so neither do we.
//! - Shared experts: one ungated SwiGLU `mlp.shared_experts` of width
//!   `moe_intermediate_size × n_shared_experts`, added to the routed output.

use std::sync::Arc;

use candle_core::{D, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::{BuildCtx, InfoParts, load_embed_norm_head, parse_config, swiglu_projections};
use crate::model::layers::{
    AttentionLayer, DecoderLayer, DecoderStack, FeedForward, Linear, MoeBlock, RmsNorm, Rotary,
    SharedExpert, SwiGlu, append_kv, scaled_attention,
};
use crate::model::router::{GroupScore, RouterConfig, ScoreFn, TopkMethod};
use crate::model::{Family, ModelError, ModuleLayout, MoeModel, Projection, Result};

/// `eps` of `q_a_layernorm` / `kv_a_layernorm` (transformers builds them with its default).
const LORA_NORM_EPS: f64 = 1e-6;

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
    #[serde(default = "super::default_rope_theta")]
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

fn bad(msg: impl std::fmt::Display) -> ModelError {
    ModelError::msg(format!("DeepseekV2ForCausalLM config.json: {msg}"))
}

/// The expert choice rule named by `topk_method`.
fn topk_method(cfg: &Config) -> Result<TopkMethod> {
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

/// The query projection: full-rank (`q_proj`) or low-rank (`q_a_proj` → norm → `q_b_proj`).
#[derive(Debug)]
enum QProj {
    Full(Linear),
    LowRank { a: Linear, norm: RmsNorm, b: Linear },
}

/// Multi-head latent attention (`self_attn` of a DeepSeek-V2 layer).
#[derive(Debug)]
pub struct MlaAttention {
    q: QProj,
    kv_a: Linear,
    kv_a_norm: RmsNorm,
    kv_b: Linear,
    o: Linear,
    num_heads: usize,
    nope_dim: usize,
    rope_dim: usize,
    v_dim: usize,
    kv_lora_rank: usize,
    scale: f64,
    rotary: Arc<Rotary>,
    /// Per-head keys `[b, heads, s, nope + rope]` and values `[b, heads, s, v]`.
    cache: Option<(Tensor, Tensor)>,
}

impl MlaAttention {
    fn load(vb: &VarBuilder, cfg: &Config, rotary: Arc<Rotary>) -> Result<Self> {
        let (h, nh) = (cfg.hidden_size, cfg.num_attention_heads);
        let qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim;
        let q = match cfg.q_lora_rank {
            None => QProj::Full(Linear::load(&vb.pp("q_proj"), h, nh * qk, false)?),
            Some(r) => QProj::LowRank {
                a: Linear::load(&vb.pp("q_a_proj"), h, r, cfg.attention_bias)?,
                norm: RmsNorm::load(&vb.pp("q_a_layernorm"), r, LORA_NORM_EPS)?,
                b: Linear::load(&vb.pp("q_b_proj"), r, nh * qk, false)?,
            },
        };
        Ok(Self {
            q,
            kv_a: Linear::load(
                &vb.pp("kv_a_proj_with_mqa"),
                h,
                cfg.kv_lora_rank + cfg.qk_rope_head_dim,
                cfg.attention_bias,
            )?,
            kv_a_norm: RmsNorm::load(&vb.pp("kv_a_layernorm"), cfg.kv_lora_rank, LORA_NORM_EPS)?,
            kv_b: Linear::load(
                &vb.pp("kv_b_proj"),
                cfg.kv_lora_rank,
                nh * (cfg.qk_nope_head_dim + cfg.v_head_dim),
                false,
            )?,
            o: Linear::load(&vb.pp("o_proj"), nh * cfg.v_head_dim, h, cfg.attention_bias)?,
            num_heads: nh,
            nope_dim: cfg.qk_nope_head_dim,
            rope_dim: cfg.qk_rope_head_dim,
            v_dim: cfg.v_head_dim,
            kv_lora_rank: cfg.kv_lora_rank,
            scale: 1.0 / (qk as f64).sqrt(),
            rotary,
            cache: None,
        })
    }
}

impl AttentionLayer for MlaAttention {
    fn forward(
        &mut self,
        x: &Tensor,
        mask: Option<&Tensor>,
        offset: usize,
        use_cache: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, nope, rope, vd) = (self.num_heads, self.nope_dim, self.rope_dim, self.v_dim);
        let q = match &self.q {
            QProj::Full(p) => p.forward(x)?,
            QProj::LowRank { a, norm, b } => b.forward(&norm.forward(&a.forward(x)?)?)?,
        };
        let q = q.reshape((b, t, nh, nope + rope))?.transpose(1, 2)?;
        // ^ [b, nh, t, nope + rope]
        let q_nope = q.narrow(D::Minus1, 0, nope)?;
        let q_pe = self
            .rotary
            .apply(&q.narrow(D::Minus1, nope, rope)?, offset)?;

        let ckv = self.kv_a.forward(x)?;
        // ^ [b, t, kv_lora_rank + rope]
        let c = ckv.narrow(D::Minus1, 0, self.kv_lora_rank)?;
        let k_pe = ckv
            .narrow(D::Minus1, self.kv_lora_rank, rope)?
            .reshape((b, 1, t, rope))?;
        let k_pe = self
            .rotary
            .apply(&k_pe, offset)?
            .broadcast_as((b, nh, t, rope))?;
        let kv = self
            .kv_b
            .forward(&self.kv_a_norm.forward(&c)?)?
            .reshape((b, t, nh, nope + vd))?
            .transpose(1, 2)?;
        // ^ [b, nh, t, nope + v]
        let k_nope = kv.narrow(D::Minus1, 0, nope)?;
        let v = kv.narrow(D::Minus1, nope, vd)?.contiguous()?;

        let q = Tensor::cat(&[&q_nope.contiguous()?, &q_pe], D::Minus1)?;
        let k = Tensor::cat(&[&k_nope.contiguous()?, &k_pe.contiguous()?], D::Minus1)?;
        let (k, v) = if use_cache {
            append_kv(&mut self.cache, k, v)?
        } else {
            (k, v)
        };
        let y = scaled_attention(&q, &k, &v, mask, self.scale)?;
        // ^ [b, nh, t, v]
        let y = y.transpose(1, 2)?.reshape((b, t, nh * vd))?;
        self.o.forward(&y)
    }

    fn clear_cache(&mut self) {
        self.cache = None;
    }

    fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        let mut out: Vec<(&'static str, &mut Linear)> = match &mut self.q {
            QProj::Full(p) => vec![("q_proj", p)],
            QProj::LowRank { a, b, .. } => vec![("q_a_proj", a), ("q_b_proj", b)],
        };
        out.push(("kv_a_proj_with_mqa", &mut self.kv_a));
        out.push(("kv_b_proj", &mut self.kv_b));
        out.push(("o_proj", &mut self.o));
        out
    }
}

/// A SwiGLU MLP `mlp.{gate,up,down}_proj` with optional biases (`mlp_bias`).
fn load_mlp(vb: &VarBuilder, hidden: usize, inter: usize, bias: bool) -> Result<SwiGlu> {
    Ok(SwiGlu {
        gate: Linear::load(&vb.pp("gate_proj"), hidden, inter, bias)?,
        up: Linear::load(&vb.pp("up_proj"), hidden, inter, bias)?,
        down: Linear::load(&vb.pp("down_proj"), inter, hidden, bias)?,
        names: ["gate_proj", "up_proj", "down_proj"],
    })
}

/// The MLA projections of one layer with their real shapes (names relative to `self_attn`).
fn attention_projections(cfg: &Config) -> Vec<Projection> {
    let (h, nh) = (cfg.hidden_size, cfg.num_attention_heads);
    let qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim;
    let mut p = match cfg.q_lora_rank {
        None => vec![Projection::new("q_proj", h, nh * qk)],
        Some(r) => vec![
            Projection::new("q_a_proj", h, r),
            Projection::new("q_b_proj", r, nh * qk),
        ],
    };
    p.push(Projection::new(
        "kv_a_proj_with_mqa",
        h,
        cfg.kv_lora_rank + cfg.qk_rope_head_dim,
    ));
    p.push(Projection::new(
        "kv_b_proj",
        cfg.kv_lora_rank,
        nh * (cfg.qk_nope_head_dim + cfg.v_head_dim),
    ));
    p.push(Projection::new("o_proj", nh * cfg.v_head_dim, h));
    p
}

fn validate(cfg: &Config) -> Result<()> {
    if !matches!(cfg.hidden_act.as_str(), "silu" | "swish") {
        return Err(bad(format!(
            "unsupported hidden_act '{}' (supported: silu)",
            cfg.hidden_act
        )));
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

/// Choices where the reference implementations of DeepSeek-V2 disagree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Multiply the attention softmax scale by `get_mscale(factor, mscale_all_dim)²` when
    /// `rope_scaling` sets `mscale_all_dim`, as DeepSeek's original `modeling_deepseek.py` (and
    /// transformers after 4.57) does; [`load`] turns it on. transformers 4.57.6 does not.
    pub yarn_mscale_softmax: bool,
}

/// The factor the softmax scale is multiplied by under [`Options::yarn_mscale_softmax`].
fn softmax_mscale(cfg: &Config) -> Result<f64> {
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

/// Builds the model as transformers 4.57.6 computes it.
///
/// The YaRN softmax-scale correction is applied: the released checkpoints were trained with it
/// (DeepSeek's own code, and transformers after 4.57); transformers 4.57.6 leaves it out, which
/// [`load_with`] with `yarn_mscale_softmax: false` reproduces.
pub fn load(json: &str, vb: VarBuilder, ctx: &BuildCtx) -> Result<Box<dyn MoeModel>> {
    load_with(
        json,
        vb,
        ctx,
        Options {
            yarn_mscale_softmax: true,
        },
    )
}

/// Builds the model with explicit [`Options`].
pub fn load_with(
    json: &str,
    vb: VarBuilder,
    ctx: &BuildCtx,
    opts: Options,
) -> Result<Box<dyn MoeModel>> {
    let cfg: Config = parse_config(Family::DeepseekV2, json)?;
    validate(&cfg)?;
    let h = cfg.hidden_size;
    let top_k = cfg
        .num_experts_per_tok
        .ok_or_else(|| bad("num_experts_per_tok is required"))?;
    if top_k == 0 || top_k > cfg.n_routed_experts {
        return Err(bad(format!(
            "num_experts_per_tok = {top_k} must be between 1 and n_routed_experts = {}",
            cfg.n_routed_experts
        )));
    }
    let router_cfg = RouterConfig {
        num_experts: cfg.n_routed_experts,
        top_k,
        score_fn: ScoreFn::Softmax,
        method: topk_method(&cfg)?,
        // transformers 4.57 scales the chosen softmax scores and never renormalises them.
        norm_topk_prob: false,
        routed_scaling_factor: cfg.routed_scaling_factor,
        correction_bias: None,
    };
    let (inv_freq, attention_factor) = rope_parameters(&cfg)?;
    let rotary = Arc::new(Rotary::from_inv_freq(
        &inv_freq,
        attention_factor,
        cfg.max_position_embeddings,
        true,
        ctx.dtype,
        &ctx.device,
    )?);
    let softmax_factor = if opts.yarn_mscale_softmax {
        softmax_mscale(&cfg)?
    } else {
        1.0
    };
    let shared_inter = cfg.n_shared_experts.map(|n| cfg.moe_intermediate_size * n);
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    let mut moe_layers = Vec::new();
    for li in 0..cfg.num_hidden_layers {
        let lvb = vb.pp(format!("model.layers.{li}"));
        let mut attn = MlaAttention::load(&lvb.pp("self_attn"), &cfg, rotary.clone())?;
        attn.scale *= softmax_factor;
        let mvb = lvb.pp("mlp");
        let ff = if li >= cfg.first_k_dense_replace {
            moe_layers.push(li);
            // Routing capture stops at the last MoE layer's router: its experts are never run.
            let skip_experts = ctx.routing_only && li + 1 == cfg.num_hidden_layers;
            let n_loaded = if skip_experts {
                0
            } else {
                cfg.n_routed_experts
            };
            let experts = (0..n_loaded)
                .map(|e| {
                    load_mlp(
                        &mvb.pp(format!("experts.{e}")),
                        h,
                        cfg.moe_intermediate_size,
                        cfg.mlp_bias,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let shared = match shared_inter.filter(|_| !skip_experts) {
                Some(inter) => Some(SharedExpert {
                    mlp: load_mlp(&mvb.pp("shared_experts"), h, inter, cfg.mlp_bias)?,
                    gate: None,
                }),
                None => None,
            };
            FeedForward::Moe(MoeBlock {
                layer: li,
                // HF's DeepseekV2Moe gate runs in fp32 whatever the model dtype.
                router: {
                    let r = Linear::load(&mvb.pp("gate"), h, cfg.n_routed_experts, false)?;
                    Linear::new(r.weight.to_dtype(candle_core::DType::F32)?, None)
                },
                router_cfg: router_cfg.clone(),
                experts,
                shared,
                router_fp32: true,
            })
        } else {
            FeedForward::Dense(load_mlp(&mvb, h, cfg.intermediate_size, cfg.mlp_bias)?)
        };
        layers.push(DecoderLayer {
            input_norm: RmsNorm::load(&lvb.pp("input_layernorm"), h, cfg.rms_norm_eps)?,
            attn: Box::new(attn),
            post_attention_norm: RmsNorm::load(
                &lvb.pp("post_attention_layernorm"),
                h,
                cfg.rms_norm_eps,
            )?,
            ff,
        });
    }
    let (embed, norm, lm_head) = load_embed_norm_head(
        &vb,
        cfg.vocab_size,
        h,
        cfg.rms_norm_eps,
        cfg.tie_word_embeddings,
        ctx.routing_only,
    )?;
    let names = ["gate_proj", "up_proj", "down_proj"];
    let layout = ModuleLayout {
        expert_prefix: "model.layers.{layer}.mlp.experts.{expert}".into(),
        expert_projections: swiglu_projections(h, cfg.moe_intermediate_size, names),
        shared_expert_prefix: shared_inter
            .map(|_| "model.layers.{layer}.mlp.shared_experts".into()),
        shared_expert_projections: shared_inter
            .map(|inter| swiglu_projections(h, inter, names))
            .unwrap_or_default(),
        attention_prefix: "model.layers.{layer}.self_attn".into(),
        attention_projections: attention_projections(&cfg),
        router: "model.layers.{layer}.mlp.gate".into(),
        router_in: h,
    };
    let info = InfoParts {
        family: Family::DeepseekV2,
        num_layers: cfg.num_hidden_layers,
        moe_layers,
        num_experts: cfg.n_routed_experts,
        top_k,
        num_shared_experts: cfg.n_shared_experts.unwrap_or(0),
        hidden_size: h,
        vocab_size: cfg.vocab_size,
        max_position_embeddings: cfg.max_position_embeddings,
        layout,
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
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use candle_core::{DType, Device};

    use super::*;
    use crate::model::families::{self, BuildCtx};
    use crate::model::router::{RecordedRoute, RecordingHook, RouteCtx};
    use crate::model::{Batch, Output};

    #[derive(Debug, Deserialize)]
    struct RefLayer {
        layer: usize,
        router_logits: Vec<Vec<f32>>,
        routing_scores: Vec<Vec<f32>>,
        topk_indices: Vec<Vec<u32>>,
        topk_weights: Vec<Vec<f32>>,
    }

    #[derive(Debug, Deserialize)]
    struct Reference {
        input_ids: Vec<u32>,
        moe_layers: Vec<usize>,
        layers: Vec<RefLayer>,
        logits: Vec<Vec<f32>>,
        last_token_logits: Vec<f32>,
    }

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(name)
    }

    fn ctx() -> BuildCtx {
        BuildCtx {
            id: "test".into(),
            dtype: DType::F32,
            device: Device::Cpu,
            routing_only: false,
        }
    }

    fn load_fixture(name: &str, opts: Options) -> Box<dyn MoeModel> {
        let dir = fixture(name);
        let config = std::fs::read_to_string(dir.join("config.json")).expect("config.json");
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.join("model.safetensors")],
                DType::F32,
                &Device::Cpu,
            )
            .expect("model.safetensors")
        };
        if opts
            == (Options {
                yarn_mscale_softmax: true,
            })
        {
            // The path the loader takes.
            families::build(Family::DeepseekV2, &config, vb, &ctx()).expect("build")
        } else {
            load_with(&config, vb, &ctx(), opts).expect("build")
        }
    }

    fn reference(name: &str, file: &str) -> Reference {
        let text = std::fs::read_to_string(fixture(name).join(file)).expect("reference json");
        serde_json::from_str(&text).expect("reference schema")
    }

    fn run(
        model: &mut dyn MoeModel,
        seqs: &[Vec<u32>],
        output: Output,
    ) -> (Option<Tensor>, Vec<RecordedRoute>) {
        let batch = Batch::from_sequences(seqs, &Device::Cpu).expect("batch");
        let mut hook = RecordingHook::default();
        let out = {
            let mut rctx = RouteCtx::new(&mut hook);
            model.forward(&batch, output, &mut rctx).expect("forward")
        };
        (out, hook.layers)
    }

    fn max_abs(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Chosen experts of a token mapped to their weights (the reference's order is unsorted).
    fn choice(indices: &[u32], weights: &[f32]) -> BTreeMap<u32, f32> {
        indices
            .iter()
            .copied()
            .zip(weights.iter().copied())
            .collect()
    }

    /// Compares one forward pass with a reference file; returns (router, weight, logit) max errors.
    fn check_reference(name: &str, file: &str, opts: Options) -> (f32, f32, f32) {
        let r = reference(name, file);
        let mut model = load_fixture(name, opts);
        assert_eq!(model.info().moe_layers, r.moe_layers);
        let (logits, routes) = run(
            model.as_mut(),
            std::slice::from_ref(&r.input_ids),
            Output::AllLogits,
        );
        assert_eq!(routes.len(), r.layers.len());
        let (mut e_router, mut e_weight) = (0f32, 0f32);
        for (got, want) in routes.iter().zip(&r.layers) {
            assert_eq!(got.layer, want.layer);
            let n = got.num_experts;
            let k = got.top_k;
            let want_logits: Vec<f32> = want.router_logits.concat();
            e_router = e_router.max(max_abs(&got.logits, &want_logits));
            e_router = e_router.max(max_abs(&got.scores, &want.routing_scores.concat()));
            assert_eq!(got.logits.len(), r.input_ids.len() * n);
            for (t, (wi, ww)) in want.topk_indices.iter().zip(&want.topk_weights).enumerate() {
                let g = choice(
                    &got.topk_indices[t * k..(t + 1) * k],
                    &got.topk_weights[t * k..(t + 1) * k],
                );
                let w = choice(wi, ww);
                assert_eq!(
                    g.keys().collect::<Vec<_>>(),
                    w.keys().collect::<Vec<_>>(),
                    "{name} layer {} token {t}: expert sets differ",
                    got.layer
                );
                for (e, gw) in &g {
                    e_weight = e_weight.max((gw - w[e]).abs());
                }
            }
        }
        let logits = logits
            .expect("logits")
            .squeeze(0)
            .expect("squeeze")
            .to_vec2::<f32>()
            .expect("to_vec2");
        let e_logit = max_abs(&logits.concat(), &r.logits.concat());
        let last = logits.last().expect("tokens");
        let e_logit = e_logit.max(max_abs(last, &r.last_token_logits));
        println!(
            "{name}/{file}: router logits/scores {e_router:.2e}, weights {e_weight:.2e}, logits {e_logit:.2e}"
        );
        assert!(e_router < 1e-5, "{name}: router logits off by {e_router}");
        assert!(e_weight < 1e-5, "{name}: routing weights off by {e_weight}");
        assert!(e_logit < 1e-4, "{name}: logits off by {e_logit}");
        (e_router, e_weight, e_logit)
    }

    #[test]
    fn deepseek_v2_lite_greedy_yarn_matches_transformers_4_57_without_the_mscale_correction() {
        check_reference("deepseek_v2_lite", "reference.json", Options::default());
    }

    #[test]
    fn deepseek_v2_lite_mscale_softmax_variant_matches_its_reference() {
        let opts = Options {
            yarn_mscale_softmax: true,
        };
        check_reference("deepseek_v2_lite", "reference_mscale_softmax.json", opts);
    }

    #[test]
    fn deepseek_v2_group_limited_matches_reference() {
        check_reference("deepseek_v2_group", "reference.json", Options::default());
    }

    /// Right-padded batches route and predict exactly as each sequence alone.
    fn check_padded_batch(name: &str) {
        let r = reference(name, "reference.json");
        let mut model = load_fixture(name, Options::default());
        let a = r.input_ids.clone();
        let mut b: Vec<u32> = r.input_ids[..a.len() - 4].to_vec();
        b.reverse();
        let seqs = vec![a.clone(), b.clone()];
        let (batched, broutes) = run(model.as_mut(), &seqs, Output::LastLogits);
        let batched = batched.expect("logits").to_vec2::<f32>().expect("to_vec2");
        let mut offset = 0;
        for (si, s) in seqs.iter().enumerate() {
            let (alone, aroutes) = run(model.as_mut(), std::slice::from_ref(s), Output::LastLogits);
            let alone = alone.expect("logits").to_vec2::<f32>().expect("to_vec2");
            let e = max_abs(&alone[0], &batched[si]);
            assert!(e < 1e-4, "{name} seq {si}: last-token logits differ by {e}");
            for (ar, br) in aroutes.iter().zip(&broutes) {
                let (n, k) = (ar.num_experts, ar.top_k);
                let rows = offset..offset + s.len();
                assert_eq!(
                    ar.topk_indices,
                    br.topk_indices[rows.start * k..rows.end * k],
                    "{name} seq {si}"
                );
                let e = max_abs(
                    &ar.topk_weights,
                    &br.topk_weights[rows.start * k..rows.end * k],
                );
                assert!(e < 1e-5, "{name} seq {si}: weights differ by {e}");
                let e = max_abs(&ar.logits, &br.logits[rows.start * n..rows.end * n]);
                assert!(e < 1e-5, "{name} seq {si}: router logits differ by {e}");
            }
            offset += s.len();
        }
        assert_eq!(broutes[0].topk_indices.len(), offset * broutes[0].top_k);
    }

    #[test]
    fn deepseek_v2_padded_batch_equals_one_at_a_time() {
        check_padded_batch("deepseek_v2_lite");
        check_padded_batch("deepseek_v2_group");
    }

    #[test]
    fn deepseek_v2_kv_cache_continues_the_sequence() {
        for name in ["deepseek_v2_lite", "deepseek_v2_group"] {
            let r = reference(name, "reference.json");
            let mut model = load_fixture(name, Options::default());
            model.set_use_kv_cache(true);
            let split = r.input_ids.len() / 2;
            let mut first = Batch::from_sequences(&[r.input_ids[..split].to_vec()], &Device::Cpu)
                .expect("batch");
            let mut hook = RecordingHook::default();
            model
                .forward(&first, Output::AllLogits, &mut RouteCtx::new(&mut hook))
                .expect("prefix");
            let mut rest = Batch::from_sequences(&[r.input_ids[split..].to_vec()], &Device::Cpu)
                .expect("batch");
            rest.seqlen_offset = split;
            let logits = model
                .forward(&rest, Output::AllLogits, &mut RouteCtx::new(&mut hook))
                .expect("rest")
                .expect("logits")
                .squeeze(0)
                .expect("squeeze")
                .to_vec2::<f32>()
                .expect("to_vec2");
            let e = max_abs(&logits.concat(), &r.logits[split..].concat());
            assert!(e < 1e-4, "{name}: cached decoding logits off by {e}");
            // The second call's routing (events after the first call's) matches the reference.
            let n_moe = r.layers.len();
            for (got, want) in hook.layers[n_moe..].iter().zip(&r.layers) {
                let e = max_abs(&got.logits, &want.router_logits[split..].concat());
                assert!(e < 1e-5, "{name}: cached router logits off by {e}");
            }
            model.clear_kv_cache();
            first.seqlen_offset = 0;
            let (again, _) = run(
                model.as_mut(),
                std::slice::from_ref(&r.input_ids),
                Output::LastLogits,
            );
            let e = max_abs(
                &again.expect("logits").to_vec2::<f32>().expect("v")[0],
                &r.last_token_logits,
            );
            assert!(e < 1e-4, "{name}: after clear_kv_cache logits off by {e}");
        }
    }

    #[test]
    fn deepseek_v2_routing_only_build_reports_the_same_routing() {
        let r = reference("deepseek_v2_group", "reference.json");
        let dir = fixture("deepseek_v2_group");
        let config = std::fs::read_to_string(dir.join("config.json")).expect("config.json");
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.join("model.safetensors")],
                DType::F32,
                &Device::Cpu,
            )
            .expect("model.safetensors")
        };
        let rctx = BuildCtx {
            routing_only: true,
            ..ctx()
        };
        let mut model = families::build(Family::DeepseekV2, &config, vb, &rctx).expect("build");
        let (out, routes) = run(
            model.as_mut(),
            std::slice::from_ref(&r.input_ids),
            Output::RoutingOnly,
        );
        assert!(out.is_none());
        assert_eq!(
            routes.iter().map(|l| l.layer).collect::<Vec<_>>(),
            r.moe_layers
        );
        for (got, want) in routes.iter().zip(&r.layers) {
            assert!(max_abs(&got.logits, &want.router_logits.concat()) < 1e-5);
        }
    }

    #[test]
    fn deepseek_v2_info_and_layout() {
        let m = load_fixture("deepseek_v2_group", Options::default());
        let info = m.info();
        assert_eq!(info.family, Family::DeepseekV2);
        assert_eq!(info.architecture, "DeepseekV2ForCausalLM");
        assert_eq!(info.moe_layers, vec![1, 2]);
        assert_eq!(
            (info.num_experts, info.top_k, info.num_shared_experts),
            (16, 4, 2)
        );
        let l = &info.layout;
        assert_eq!(
            l.expert_module(2, 5, "up_proj"),
            "model.layers.2.mlp.experts.5.up_proj"
        );
        assert_eq!(
            l.shared_expert_prefix.as_deref(),
            Some("model.layers.{layer}.mlp.shared_experts")
        );
        assert_eq!(
            l.shared_expert_projections[0],
            Projection::new("gate_proj", 64, 64)
        );
        assert_eq!(l.router, "model.layers.{layer}.mlp.gate");
        let names: Vec<&str> = l
            .attention_projections
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "q_a_proj",
                "q_b_proj",
                "kv_a_proj_with_mqa",
                "kv_b_proj",
                "o_proj"
            ]
        );
        assert_eq!(
            l.attention_projections[1],
            Projection::new("q_b_proj", 24, 4 * 24)
        );
        assert_eq!(
            l.attention_projections[2],
            Projection::new("kv_a_proj_with_mqa", 64, 16 + 8)
        );
        assert_eq!(
            l.attention_projections[3],
            Projection::new("kv_b_proj", 16, 4 * 32)
        );
        assert_eq!(
            l.attention_projections[4],
            Projection::new("o_proj", 64, 64)
        );
        let lite = load_fixture("deepseek_v2_lite", Options::default());
        let names: Vec<&str> = lite
            .info()
            .layout
            .attention_projections
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]
        );
        assert_eq!(lite.info().moe_layers, vec![1, 2]);
    }

    fn tiny_config(extra: &str) -> String {
        format!(
            r#"{{"vocab_size": 16, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
                "num_attention_heads": 2, "q_lora_rank": null, "kv_lora_rank": 4,
                "qk_nope_head_dim": 4, "qk_rope_head_dim": 2, "v_head_dim": 4,
                "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 4 {extra}}}"#
        )
    }

    fn load_err(json: &str) -> String {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        match load(json, vb, &ctx()) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn deepseek_v2_bad_configs_are_named() {
        assert!(
            load_err(&tiny_config("")).is_empty(),
            "the tiny config itself loads"
        );
        let e = load_err(&tiny_config(r#", "topk_method": "noaux_tc""#));
        assert!(
            e.contains("'noaux_tc'") && e.contains("greedy, group_limited_greedy"),
            "{e}"
        );
        let e = load_err(&tiny_config(
            r#", "topk_method": "group_limited_greedy", "n_group": 3, "topk_group": 1"#,
        ));
        assert!(e.contains("n_group = 3"), "{e}");
        let e = load_err(&tiny_config(r#", "topk_method": "group_limited_greedy""#));
        assert!(e.contains("needs n_group"), "{e}");
        let e = load_err(&tiny_config(r#", "moe_layer_freq": 2"#));
        assert!(e.contains("moe_layer_freq = 2"), "{e}");
        let e = load_err(&tiny_config(
            r#", "rope_scaling": {"type": "longrope", "factor": 2.0}"#,
        ));
        assert!(e.contains("'longrope'"), "{e}");
        let e = load_err(
            &tiny_config(r#", "num_experts_per_tok": null"#)
                .replace(r#""num_experts_per_tok": 2,"#, ""),
        );
        assert!(e.contains("num_experts_per_tok"), "{e}");
    }

    /// Values printed by transformers 4.57.6's `ROPE_INIT_FUNCTIONS["yarn"]` for
    /// `qk_rope_head_dim = 16`, `rope_theta = 1e4`, `max_position_embeddings = 256`.
    #[test]
    fn deepseek_v2_yarn_parameters_match_transformers() {
        let cases: [(&str, f64, [f64; 8]); 3] = [
            (
                r#"{"type": "yarn", "factor": 40.0, "mscale": 0.707, "mscale_all_dim": 0.707,
                    "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1}"#,
                1.0,
                [
                    1.0,
                    0.316_227_76,
                    0.1,
                    0.023_914_725,
                    0.005_125,
                    0.000_849_862_2,
                    2.5e-05,
                    7.905_694_5e-06,
                ],
            ),
            (
                r#"{"type": "yarn", "factor": 8.0, "mscale": 1.0, "mscale_all_dim": 0.5,
                    "original_max_position_embeddings": 64}"#,
                1.094_18,
                [
                    1.0,
                    0.223_994_66,
                    0.041_666_664,
                    0.003_952_847,
                    0.00125,
                    0.000_395_284_7,
                    0.000_125,
                    3.952_847e-05,
                ],
            ),
            (
                r#"{"rope_type": "yarn", "factor": 4.0}"#,
                1.138_629_4,
                [
                    1.0,
                    0.256_935_06,
                    0.0625,
                    0.013_834_965,
                    0.0025,
                    0.000_790_569_5,
                    0.00025,
                    7.905_694_6e-05,
                ],
            ),
        ];
        for (rs, af, inv) in cases {
            let json = format!(
                r#"{{"hidden_size": 64, "num_attention_heads": 4, "qk_rope_head_dim": 16,
                    "max_position_embeddings": 256, "rope_scaling": {rs}}}"#
            );
            let cfg: Config = serde_json::from_str(&json).expect("config");
            let (got_inv, got_af) = rope_parameters(&cfg).expect("rope");
            assert!(
                (f64::from(got_af) - af).abs() < 1e-6,
                "{rs}: attention factor {got_af} vs {af}"
            );
            for (g, w) in got_inv.iter().zip(inv) {
                assert!(
                    (f64::from(*g) - w).abs() <= 1e-6 * w,
                    "{rs}: inv_freq {got_inv:?} vs {inv:?}"
                );
            }
        }
    }
}
