//! Gemma 4 with a MoE block (`Gemma4ForConditionalGeneration`, e.g. google/gemma-4-26b-a4b):
//! its language model, as transformers 5.24's `models/gemma4/modeling_gemma4.py`
//! (`Gemma4TextModel`) computes it. The vision and audio towers are not loaded, and the
//! parameter counts are the language model's.
//!
//! - Tensors under `model.language_model.*`; the token embedding is multiplied by
//!   `sqrt(hidden_size)` (in the compute dtype); the LM head is the embedding unless the
//!   checkpoint has `lm_head.weight`; logits are soft-capped, `tanh(z / cap) · cap`
//!   (`final_logit_softcapping`).
//! - Every RMS norm is `x / rms(x) · weight` (no `1 + weight`).
//! - Layers alternate sliding-window and full attention (`layer_types`). q, k and v are
//!   normalised per head (`q_norm`, `k_norm`, and a scale-free value norm) and the softmax
//!   scale is 1. Full layers have their own head size (`global_head_dim`), with
//!   `attention_k_eq_v` no `v_proj` (values = the key projection before `k_norm`) and
//!   `num_global_key_value_heads` KV heads, and proportional RoPE (only the first
//!   `partial_rotary_factor` of the head's frequencies rotate); sliding layers plain RoPE.
//! - Feed-forward: a dense GeGLU MLP (`mlp`, tanh-GELU) on `pre_feedforward_layernorm(x)`, and
//!   on MoE layers beside it the routed experts on `pre_feedforward_layernorm_2(x)`, each
//!   output normed (`post_feedforward_layernorm_1` / `_2`), summed, normed again
//!   (`post_feedforward_layernorm`) and added to `x`; the layer's output is multiplied by
//!   `layer_scalar`.
//! - Router (`router`): reads the residual stream `x`, not the experts' input:
//!   logits = `proj(rms(x) · scale · hidden^-0.5)`; softmax over all experts; top-k;
//!   renormalised; each chosen weight times its expert's `per_expert_scale` (the weights need
//!   not sum to 1), all through [`crate::model::router::route`].
//! - Experts fused as `experts.gate_up_proj` `[E, 2I, H]` (gate rows first, then up) and
//!   `experts.down_proj` `[E, H, I]`, cut per expert with [`Weight::slice`] into gated MLPs
//!   with a tanh-GELU gate. The expert kernels compute SiLU only, so these experts run on
//!   tensor ops (whose matrix products still read mapped weights in place).
//! - Not supported (refused by the config check): per-layer input embeddings and KV sharing
//!   (Gemma 4 E2B / E4B), bidirectional attention over all tokens.
//!
//! [`Weight::slice`]: crate::model::weight::Weight::slice

pub mod attention;
pub mod config;
pub mod layer;
pub mod model;

use std::sync::Arc;

use candle_core::{DType, Tensor};

pub use attention::Gemma4Attention;
pub use config::{Config, TextConfig};
pub use layer::{Gemma4Layer, Gemma4Moe};
pub use model::{Gemma4Model, TEXT_PREFIX};

use super::{BuildCtx, InfoParts};
use crate::model::error::Result;
use crate::model::info::{AttentionKind, Family, ModuleLayout, Projection};
use crate::model::layers::{GluActivation, Linear, RmsNorm, Rotary, SwiGlu};
use crate::model::moe_model::MoeModel;
use crate::model::router::RouterConfig;
use crate::model::weights::WeightSource;

use attention::unit_norm;
use config::MoeSettings;

pub fn load(json: &str, vb: WeightSource, ctx: &BuildCtx) -> Result<Box<dyn MoeModel>> {
    let cfg = Config::parse(json)?.text_config;
    let c = &cfg;
    let tvb = vb.pp(TEXT_PREFIX);
    let (h, eps) = (c.hidden_size, c.rms_norm_eps);
    let moe_settings = c.moe()?;
    let moe_layers: Vec<usize> = match moe_settings {
        Some(_) => (0..c.num_hidden_layers).collect(),
        None => Vec::new(),
    };
    let mut rotary: Vec<(Vec<f32>, Arc<Rotary>)> = Vec::new();
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for li in 0..c.num_hidden_layers {
        let lvb = tvb.pp(format!("layers.{li}"));
        let shape = c.layer_attention(li);
        let inv_freq = c.rope_inv_freq(li)?;
        // Layers of a type share their tables.
        let rot = match rotary.iter().find(|(f, _)| *f == inv_freq) {
            Some((_, r)) => r.clone(),
            None => {
                let r = Arc::new(Rotary::from_inv_freq(
                    &inv_freq,
                    1.0,
                    c.max_position_embeddings,
                    false,
                    ctx.dtype,
                    &ctx.device,
                )?);
                rotary.push((inv_freq, r.clone()));
                r
            }
        };
        let attn = Gemma4Attention::load(&lvb.pp("self_attn"), c, shape, rot, ctx)?;
        let moe = match moe_settings {
            Some(m) => {
                let skip_experts = ctx.routing_only && moe_layers.last() == Some(&li);
                Some(load_moe(&lvb, c, m, li, skip_experts, ctx)?)
            }
            None => None,
        };
        let norm = |name: &str| RmsNorm::load(&lvb.pp(name), h, eps);
        layers.push(Gemma4Layer {
            input_norm: norm("input_layernorm")?,
            attn,
            post_attention_norm: norm("post_attention_layernorm")?,
            pre_feedforward_norm: norm("pre_feedforward_layernorm")?,
            mlp: gelu_mlp(SwiGlu::load(&lvb.pp("mlp"), h, c.intermediate_size)?),
            moe,
            post_feedforward_norm: norm("post_feedforward_layernorm")?,
            layer_scalar: lvb.get(1, "layer_scalar")?,
            sliding: shape.sliding,
        });
    }
    let embed = tvb.pp("embed_tokens").weight((c.vocab_size, h), "weight")?;
    let norm = RmsNorm::load(&tvb.pp("norm"), h, eps)?;
    let lm_head = if ctx.routing_only {
        None
    } else if !c.tie_word_embeddings || vb.contains_tensor("lm_head.weight") {
        Some(Linear::load(&vb.pp("lm_head"), h, c.vocab_size, false)?)
    } else {
        Some(Linear::new(embed.clone(), None))
    };
    let text_params = tvb.params_here().map(|p| {
        let head = match vb.contains_tensor("lm_head.weight") {
            true => (c.vocab_size * h) as u64,
            false => 0,
        };
        p + head
    });
    let info = InfoParts {
        family: Family::Gemma4,
        num_layers: c.num_hidden_layers,
        moe_layers: moe_layers.clone(),
        attention_kinds: attention_kinds(c),
        num_experts: moe_settings.map_or(0, |m| m.num_experts),
        top_k: moe_settings.map_or(0, |m| m.top_k),
        num_shared_experts: usize::from(moe_settings.is_some()),
        score_fn: crate::model::router::ScoreFn::Softmax,
        hidden_size: h,
        vocab_size: c.vocab_size,
        max_position_embeddings: c.max_position_embeddings,
        layout: layout(c, moe_settings),
    }
    .into_info(ctx);
    Ok(Box::new(Gemma4Model {
        info,
        embed,
        embed_scale: embed_scale(h, ctx.dtype)?,
        layers,
        norm,
        lm_head,
        final_logit_softcapping: c.final_logit_softcapping,
        sliding_window: c.sliding_window,
        text_params,
        use_kv_cache: false,
        device: ctx.device.clone(),
        dtype: ctx.dtype,
    }))
}

/// `sqrt(hidden)` rounded to `dtype`, as HF casts the embedding scale to the weights' dtype.
fn embed_scale(hidden: usize, dtype: DType) -> Result<f64> {
    let s = Tensor::new((hidden as f64).sqrt() as f32, &candle_core::Device::Cpu)?
        .to_dtype(dtype)?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    Ok(f64::from(s))
}

fn gelu_mlp(mut mlp: SwiGlu) -> SwiGlu {
    mlp.act = GluActivation::GeluTanh;
    mlp
}

/// The router, experts and expert norms of layer `li` (`router.*`, `experts.*`,
/// `*_feedforward_layernorm_{1,2}`); no experts with `skip_experts`.
fn load_moe(
    lvb: &WeightSource,
    c: &TextConfig,
    m: MoeSettings,
    li: usize,
    skip_experts: bool,
    ctx: &BuildCtx,
) -> Result<Gemma4Moe> {
    let (h, eps, e, inter) = (
        c.hidden_size,
        c.rms_norm_eps,
        m.num_experts,
        m.intermediate_size,
    );
    let rvb = lvb.pp("router");
    let per_expert_scale: Vec<f32> = rvb
        .get(e, "per_expert_scale")?
        .to_dtype(DType::F32)?
        .to_vec1()?;
    let mut router_cfg = RouterConfig::softmax_topk(e, m.top_k, true);
    router_cfg.expert_scale = Some(Arc::new(per_expert_scale));
    let experts = match skip_experts {
        true => Vec::new(),
        false => {
            let evb = lvb.pp("experts");
            let gate_up = evb.weight((e, 2 * inter, h), "gate_up_proj")?;
            let down = evb.weight((e, h, inter), "down_proj")?;
            (0..e)
                .map(|x| {
                    Ok(SwiGlu {
                        gate: Linear::new(gate_up.slice(x, 0..inter)?, None),
                        up: Linear::new(gate_up.slice(x, inter..2 * inter)?, None),
                        down: Linear::new(down.slice(x, 0..h)?, None),
                        names: ["gate_proj", "up_proj", "down_proj"],
                        act: GluActivation::GeluTanh,
                    })
                })
                .collect::<Result<Vec<_>>>()?
        }
    };
    let norm = |name: &str| RmsNorm::load(&lvb.pp(name), h, eps);
    Ok(Gemma4Moe {
        layer: li,
        router_norm: unit_norm(h, eps, ctx)?,
        router_scale: rvb.get(h, "scale")?,
        router_input_scale: (h as f64).powf(-0.5),
        proj: Linear::load(&rvb.pp("proj"), h, e, false)?,
        router_cfg,
        experts,
        pre_experts_norm: norm("pre_feedforward_layernorm_2")?,
        post_experts_norm: norm("post_feedforward_layernorm_2")?,
        post_mlp_norm: norm("post_feedforward_layernorm_1")?,
    })
}

/// The module layout and per-layer attention [`load`] reports, from the `config.json` text
/// alone.
pub fn config_layout(json: &str) -> Result<(ModuleLayout, Vec<AttentionKind>)> {
    let c = Config::parse(json)?.text_config;
    Ok((layout(&c, c.moe()?), attention_kinds(&c)))
}

/// Each layer's attention: sliding-window or full, by `layer_types`.
fn attention_kinds(c: &TextConfig) -> Vec<AttentionKind> {
    (0..c.num_hidden_layers)
        .map(|li| match c.is_sliding(li) {
            true => AttentionKind::Sliding {
                window: c.sliding_window,
            },
            false => AttentionKind::Full,
        })
        .collect()
}

/// Module names for LoRA accounting and adapter export. The routed experts are fused in the
/// checkpoint (`experts.gate_up_proj`, `experts.down_proj`), which has no per-expert modules;
/// each expert is described as its three slices `experts.{expert}.gate_proj` / `up_proj`
/// (`[I, H]` each, the halves of `gate_up_proj[expert]`) and `down_proj` (`[H, I]`), which
/// count the same parameters. The dense MLP beside the experts is listed as the shared expert.
/// The attention projections are those of the sliding-window layers (most layers); the
/// full-attention layers, with larger heads and, with `attention_k_eq_v`, no `v_proj`, are
/// overrides.
fn layout(c: &TextConfig, moe: Option<MoeSettings>) -> ModuleLayout {
    let h = c.hidden_size;
    let gated = |inter: usize| {
        vec![
            Projection::new("gate_proj", h, inter),
            Projection::new("up_proj", h, inter),
            Projection::new("down_proj", inter, h),
        ]
    };
    let (nh, d, nkv) = (c.num_attention_heads, c.head_dim, c.num_key_value_heads);
    // Full-attention layers: their own head size and KV heads, and no `v_proj` when the keys
    // are the values.
    let attention_overrides = (0..c.num_hidden_layers)
        .filter(|&li| !c.is_sliding(li))
        .map(|li| {
            let a = c.layer_attention(li);
            let mut projections =
                super::standard_attention_projections(h, nh, a.num_kv_heads, a.head_dim);
            if a.k_eq_v {
                projections.retain(|p| p.name != "v_proj");
            }
            (li, projections)
        })
        .collect();
    ModuleLayout {
        expert_prefix: format!("{TEXT_PREFIX}.layers.{{layer}}.experts.{{expert}}"),
        expert_projections: moe.map_or_else(Vec::new, |m| gated(m.intermediate_size)),
        shared_expert_prefix: moe.map(|_| format!("{TEXT_PREFIX}.layers.{{layer}}.mlp")),
        shared_expert_projections: moe.map_or_else(Vec::new, |_| gated(c.intermediate_size)),
        attention_prefix: format!("{TEXT_PREFIX}.layers.{{layer}}.self_attn"),
        attention_projections: super::standard_attention_projections(h, nh, nkv, d),
        attention_overrides,
        router: format!("{TEXT_PREFIX}.layers.{{layer}}.router.proj"),
        router_in: h,
    }
}
