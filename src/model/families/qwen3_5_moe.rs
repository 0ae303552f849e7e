//! Qwen3.5-MoE (`Qwen3_5MoeForConditionalGeneration`, e.g. Qwen/Qwen3.5-35B-A3B; also a
//! text-only `Qwen3_5MoeForCausalLM` / `qwen3_5_moe_text` config).
//!
//! - Config: the hub's `config.json` nests the language model in `text_config` (a flat
//!   text-only config reads the same fields at the top level). Rotary settings come from
//!   `rope_parameters` (`rope_theta`, `partial_rotary_factor`; only the `default` rope type),
//!   else from the top-level fields older configs have.
//! - Weights: the language model under `model.language_model.*` (or `model.*` in a text-only
//!   checkpoint), `lm_head.weight`; the vision tower (`model.visual.*`) and the multi-token
//!   prediction head (`mtp.*`) are not loaded and not counted in the parameters.
//! - Layers by `layer_types` (default: every `full_attention_interval`-th layer full): gated
//!   DeltaNet linear attention (`linear_attn.*`, [`GatedDeltaNet`]) or gated softmax attention
//!   (`self_attn.*`, [`GatedAttention`]: q_proj gives each head a query and an output gate,
//!   per-head q/k norms, rotary on the first `head_dim · partial_rotary_factor` channels).
//!   Text positions are the same on the three multimodal rotary axes, so the interleaved
//!   multimodal rotary equals plain rotate-half RoPE.
//! - Every RMSNorm (input, post-attention, q/k, final) is zero-centred: `x̂ · (1 + w)`; the
//!   DeltaNet's gated norm alone applies its weight as is.
//! - Every layer is MoE. Router `mlp.gate`: softmax in fp32, top-k, always renormalised.
//!   Experts are fused: `mlp.experts.gate_up_proj` `[E, 2·I, H]` (each expert's gate rows, then
//!   its up rows) and `mlp.experts.down_proj` `[E, H, I]`, cut into per-expert views (a
//!   checkpoint with per-expert `mlp.experts.E.{gate,up,down}_proj` loads too). Shared expert
//!   `mlp.shared_expert` scaled by `sigmoid(mlp.shared_expert_gate · x)`.

use std::sync::Arc;

use serde::Deserialize;

use super::{BuildCtx, InfoParts, parse_config, swiglu_projections};
use crate::model::error::ModelError;
use crate::model::info::{AttentionKind, Projection};
use crate::model::layers::{
    AttentionLayer, DecoderLayer, DecoderStack, FeedForward, GatedAttention, GatedAttentionConfig,
    GatedDeltaNet, GatedDeltaNetConfig, Linear, MoeBlock, RmsNorm, Rotary, SharedExpert, SwiGlu,
};
use crate::model::router::RouterConfig;
use crate::model::weight::Weight;
use crate::model::weights::WeightSource;
use crate::model::{Family, ModuleLayout, MoeModel, Result};

/// `rope_parameters` of the text config.
#[derive(Debug, Clone, Deserialize)]
pub struct RopeParameters {
    #[serde(default = "default_rope_type")]
    pub rope_type: String,
    pub rope_theta: Option<f64>,
    pub partial_rotary_factor: Option<f64>,
}

fn default_rope_type() -> String {
    "default".into()
}

/// The language model's config (`text_config`, or the whole `config.json` when flat).
#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default = "default_head_dim")]
    pub head_dim: usize,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "super::common::default_rms_eps")]
    pub rms_norm_eps: f64,
    pub rope_parameters: Option<RopeParameters>,
    pub rope_theta: Option<f64>,
    pub partial_rotary_factor: Option<f64>,
    #[serde(default)]
    pub attention_bias: bool,
    pub layer_types: Option<Vec<String>>,
    #[serde(default = "default_full_attention_interval")]
    pub full_attention_interval: usize,
    #[serde(default = "default_conv_kernel")]
    pub linear_conv_kernel_dim: usize,
    #[serde(default = "default_linear_head_dim")]
    pub linear_key_head_dim: usize,
    #[serde(default = "default_linear_head_dim")]
    pub linear_value_head_dim: usize,
    #[serde(default = "default_linear_key_heads")]
    pub linear_num_key_heads: usize,
    #[serde(default = "default_linear_value_heads")]
    pub linear_num_value_heads: usize,
    pub moe_intermediate_size: usize,
    pub shared_expert_intermediate_size: usize,
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    pub tie_word_embeddings: Option<bool>,
}

fn default_head_dim() -> usize {
    256
}

fn default_max_pos() -> usize {
    32768
}

fn default_full_attention_interval() -> usize {
    4
}

fn default_conv_kernel() -> usize {
    4
}

fn default_linear_head_dim() -> usize {
    128
}

fn default_linear_key_heads() -> usize {
    16
}

fn default_linear_value_heads() -> usize {
    32
}

/// A decoder layer's token mixer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mixer {
    /// `linear_attention`: gated DeltaNet.
    Linear,
    /// `full_attention`: gated softmax attention.
    Full,
}

impl TextConfig {
    /// Each layer's mixer: `layer_types`, else every `full_attention_interval`-th layer full.
    pub fn mixers(&self) -> Result<Vec<Mixer>> {
        let Some(types) = &self.layer_types else {
            let every = self.full_attention_interval.max(1);
            return Ok((0..self.num_hidden_layers)
                .map(|i| match (i + 1) % every {
                    0 => Mixer::Full,
                    _ => Mixer::Linear,
                })
                .collect());
        };
        if types.len() != self.num_hidden_layers {
            return Err(ModelError::msg(format!(
                "layer_types names {} layers, num_hidden_layers is {}",
                types.len(),
                self.num_hidden_layers
            )));
        }
        types
            .iter()
            .map(|t| match t.as_str() {
                "linear_attention" => Ok(Mixer::Linear),
                "full_attention" => Ok(Mixer::Full),
                other => Err(ModelError::msg(format!(
                    "layer type {other:?} is not linear_attention or full_attention"
                ))),
            })
            .collect()
    }

    /// `rope_theta` and the rotary channels of each attention head.
    pub fn rotary(&self) -> Result<(f64, usize)> {
        let params = self.rope_parameters.as_ref();
        if let Some(p) = params.filter(|p| p.rope_type != "default") {
            return Err(ModelError::msg(format!(
                "rope_type {:?} is not supported for {} (only \"default\")",
                p.rope_type,
                Family::Qwen3_5Moe.architecture()
            )));
        }
        let theta = params
            .and_then(|p| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10_000_000.0);
        let factor = params
            .and_then(|p| p.partial_rotary_factor)
            .or(self.partial_rotary_factor)
            .unwrap_or(0.25);
        // HF: int(head_dim * partial_rotary_factor).
        Ok((theta, (self.head_dim as f64 * factor) as usize))
    }

    fn delta_net(&self) -> GatedDeltaNetConfig {
        GatedDeltaNetConfig {
            hidden_size: self.hidden_size,
            num_key_heads: self.linear_num_key_heads,
            num_value_heads: self.linear_num_value_heads,
            key_head_dim: self.linear_key_head_dim,
            value_head_dim: self.linear_value_head_dim,
            conv_kernel: self.linear_conv_kernel_dim,
        }
    }
}

/// What [`text_config`] reads from a `config.json`.
#[derive(Debug, Clone)]
pub struct ParsedConfig {
    pub text: TextConfig,
    /// Whether the LM head is tied to the embedding (the top-level field wins over the text
    /// config's).
    pub tie_word_embeddings: bool,
    /// The language model is nested in `text_config` (a multimodal config), not flat.
    pub nested: bool,
}

/// Prefix of the language model's tensors in the hub's multimodal checkpoints.
const NESTED_TEXT_PREFIX: &str = "model.language_model";
/// Prefix of the language model's tensors in a text-only checkpoint.
const FLAT_TEXT_PREFIX: &str = "model";

impl ParsedConfig {
    /// Where the language model's tensors sit in a checkpoint of this config:
    /// `model.language_model` for the hub's multimodal layout (nested config), `model` for a
    /// text-only one (flat config). [`load`] goes by the tensors it finds instead, which agree
    /// with this in checkpoints saved by transformers.
    pub fn text_prefix(&self) -> &'static str {
        match self.nested {
            true => NESTED_TEXT_PREFIX,
            false => FLAT_TEXT_PREFIX,
        }
    }
}

/// The text config of a `config.json` (nested `text_config` or flat).
pub fn text_config(json: &str) -> Result<ParsedConfig> {
    let family = Family::Qwen3_5Moe;
    let value: serde_json::Value = parse_config(family, json)?;
    let top_tie = value.get("tie_word_embeddings").and_then(|v| v.as_bool());
    let (text, nested): (TextConfig, bool) = match value.get("text_config") {
        Some(t) if t.is_object() => (parse_config(family, &t.to_string())?, true),
        _ => (parse_config(family, json)?, false),
    };
    let tie_word_embeddings = top_tie.or(text.tie_word_embeddings).unwrap_or(false);
    Ok(ParsedConfig {
        text,
        tie_word_embeddings,
        nested,
    })
}

/// Each layer's token mixing.
fn attention_kinds(mixers: &[Mixer]) -> Vec<AttentionKind> {
    mixers
        .iter()
        .map(|m| match m {
            Mixer::Linear => AttentionKind::Linear,
            Mixer::Full => AttentionKind::Full,
        })
        .collect()
}

/// The module layout of the language model whose tensors sit under `text`.
fn layout(c: &TextConfig, text: &str, mixers: &[Mixer]) -> ModuleLayout {
    let (h, nh, nkv, hd) = (
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
    );
    let shared_size = c.shared_expert_intermediate_size;
    let dn = c.delta_net();
    let gate_up_down = ["gate_proj", "up_proj", "down_proj"];
    // Attention projections relative to the layer: a layer has either the DeltaNet's
    // (`linear_attn.*`, most layers) or the gated attention's (`self_attn.*`, the overrides).
    let attention_projections = vec![
        Projection::new("linear_attn.in_proj_qkv", h, dn.conv_channels()),
        Projection::new("linear_attn.in_proj_z", h, dn.value_dim()),
        Projection::new("linear_attn.in_proj_b", h, dn.num_value_heads),
        Projection::new("linear_attn.in_proj_a", h, dn.num_value_heads),
        Projection::new("linear_attn.out_proj", dn.value_dim(), h),
    ];
    let gated_attention = vec![
        Projection::new("self_attn.q_proj", h, 2 * nh * hd),
        Projection::new("self_attn.k_proj", h, nkv * hd),
        Projection::new("self_attn.v_proj", h, nkv * hd),
        Projection::new("self_attn.o_proj", nh * hd, h),
    ];
    let attention_overrides = mixers
        .iter()
        .enumerate()
        .filter(|(_, m)| **m == Mixer::Full)
        .map(|(li, _)| (li, gated_attention.clone()))
        .collect();
    ModuleLayout {
        // The checkpoint fuses each layer's experts into `experts.gate_up_proj` and
        // `experts.down_proj`; expert modules are named as in the unfused layout transformers
        // converts from (`experts.{expert}.gate_proj` …), one module per expert projection.
        expert_prefix: format!("{text}.layers.{{layer}}.mlp.experts.{{expert}}"),
        expert_projections: swiglu_projections(h, c.moe_intermediate_size, gate_up_down),
        shared_expert_prefix: (shared_size > 0)
            .then(|| format!("{text}.layers.{{layer}}.mlp.shared_expert")),
        shared_expert_projections: match shared_size {
            0 => Vec::new(),
            s => swiglu_projections(h, s, gate_up_down),
        },
        attention_prefix: format!("{text}.layers.{{layer}}"),
        attention_projections,
        attention_overrides,
        router: format!("{text}.layers.{{layer}}.mlp.gate"),
        router_in: h,
    }
}

/// The module layout and per-layer token mixing [`load`] reports, from the `config.json` text
/// alone, with module names under [`ParsedConfig::text_prefix`].
pub fn config_layout(json: &str) -> Result<(ModuleLayout, Vec<AttentionKind>)> {
    let parsed = text_config(json)?;
    let mixers = parsed.text.mixers()?;
    Ok((
        layout(&parsed.text, parsed.text_prefix(), &mixers),
        attention_kinds(&mixers),
    ))
}

/// A zero-centred RMSNorm (`x̂ · (1 + w)`) as an [`RmsNorm`] whose weight is `1 + w`, added in f32.
fn zero_centred_norm(vb: &WeightSource, dim: usize, eps: f64, ctx: &BuildCtx) -> Result<RmsNorm> {
    let w = vb.get(dim, "weight")?.to_dtype(candle_core::DType::F32)?;
    Ok(RmsNorm {
        weight: (w + 1.0)?.to_dtype(ctx.dtype)?,
        eps,
    })
}

/// Expert `e`'s gate, up and down projections: views into the fused
/// `experts.gate_up_proj` / `experts.down_proj`, else the per-expert tensors.
fn load_expert(
    experts: &WeightSource,
    fused: Option<&(Weight, Weight)>,
    e: usize,
    (h, inter): (usize, usize),
) -> Result<SwiGlu> {
    let names = ["gate_proj", "up_proj", "down_proj"];
    let Some((gate_up, down)) = fused else {
        return SwiGlu::load_named(&experts.pp(e), h, inter, names);
    };
    let linear = |w: Weight| Linear::new(w, None);
    Ok(SwiGlu {
        gate: linear(gate_up.slice(e, 0..inter)?),
        up: linear(gate_up.slice(e, inter..2 * inter)?),
        down: linear(down.slice(e, 0..h)?),
        names,
        act: crate::model::layers::GluActivation::Silu,
    })
}

pub fn load(json: &str, vb: WeightSource, ctx: &BuildCtx) -> Result<Box<dyn MoeModel>> {
    let parsed = text_config(json)?;
    let (c, tie) = (&parsed.text, parsed.tie_word_embeddings);
    let mixers = c.mixers()?;
    let (theta, rotary_dim) = c.rotary()?;
    let (h, nh, nkv, hd) = (
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
    );
    let (n_exp, inter) = (c.num_experts, c.moe_intermediate_size);
    // The hub layout nests the language model; a text-only checkpoint keeps it at `model`.
    let text = if vb.contains_tensor(&format!("{NESTED_TEXT_PREFIX}.embed_tokens.weight")) {
        NESTED_TEXT_PREFIX
    } else {
        FLAT_TEXT_PREFIX
    };
    let tvb = vb.pp(text);
    let rotary = Arc::new(Rotary::new(
        rotary_dim,
        c.max_position_embeddings,
        theta,
        ctx.dtype,
        &ctx.device,
    )?);
    let attn_cfg = GatedAttentionConfig {
        hidden_size: h,
        num_heads: nh,
        num_kv_heads: nkv,
        head_dim: hd,
        rotary_dim,
        bias: c.attention_bias,
    };
    let eps = c.rms_norm_eps;
    let moe_layers: Vec<usize> = (0..c.num_hidden_layers).collect();
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for (li, &mixer) in mixers.iter().enumerate() {
        let lvb = tvb.pp(format!("layers.{li}"));
        let attn: Box<dyn AttentionLayer> = match mixer {
            Mixer::Linear => Box::new(GatedDeltaNet::load(
                &lvb.pp("linear_attn"),
                c.delta_net(),
                eps,
            )?),
            Mixer::Full => {
                let avb = lvb.pp("self_attn");
                Box::new(GatedAttention::load(
                    &avb,
                    attn_cfg,
                    zero_centred_norm(&avb.pp("q_norm"), hd, eps, ctx)?,
                    zero_centred_norm(&avb.pp("k_norm"), hd, eps, ctx)?,
                    rotary.clone(),
                )?)
            }
        };
        let mvb = lvb.pp("mlp");
        // Routing capture stops at the last MoE layer's router.
        let skip_experts = ctx.routing_only && moe_layers.last() == Some(&li);
        let evb = mvb.pp("experts");
        let fused = if evb.contains_tensor("gate_up_proj") {
            Some((
                evb.weight((n_exp, 2 * inter, h), "gate_up_proj")?,
                evb.weight((n_exp, h, inter), "down_proj")?,
            ))
        } else {
            None
        };
        let experts = match skip_experts {
            true => Vec::new(),
            false => (0..n_exp)
                .map(|e| load_expert(&evb, fused.as_ref(), e, (h, inter)))
                .collect::<Result<_>>()?,
        };
        let shared = match skip_experts || c.shared_expert_intermediate_size == 0 {
            true => None,
            false => Some(SharedExpert {
                mlp: SwiGlu::load(
                    &mvb.pp("shared_expert"),
                    h,
                    c.shared_expert_intermediate_size,
                )?,
                gate: Some(Linear::load(&mvb.pp("shared_expert_gate"), h, 1, false)?),
            }),
        };
        layers.push(DecoderLayer {
            input_norm: zero_centred_norm(&lvb.pp("input_layernorm"), h, eps, ctx)?.into(),
            attn,
            post_attention_norm: zero_centred_norm(
                &lvb.pp("post_attention_layernorm"),
                h,
                eps,
                ctx,
            )?
            .into(),
            ff: FeedForward::Moe(MoeBlock {
                layer: li,
                router: Linear::load(&mvb.pp("gate"), h, n_exp, false)?,
                router_cfg: RouterConfig::softmax_topk(n_exp, c.num_experts_per_tok, true),
                experts,
                shared,
                router_fp32: false,
            }),
        });
    }
    let embed = tvb.pp("embed_tokens").weight((c.vocab_size, h), "weight")?;
    let norm = zero_centred_norm(&tvb.pp("norm"), h, eps, ctx)?;
    let lm_head = if ctx.routing_only {
        None
    } else if !tie || vb.contains_tensor("lm_head.weight") {
        Some(Linear::load(&vb.pp("lm_head"), h, c.vocab_size, false)?)
    } else {
        Some(Linear::new(embed.clone(), None))
    };
    let info = InfoParts {
        score_fn: crate::model::router::ScoreFn::Softmax,
        family: Family::Qwen3_5Moe,
        num_layers: c.num_hidden_layers,
        moe_layers,
        attention_kinds: attention_kinds(&mixers),
        num_experts: n_exp,
        top_k: c.num_experts_per_tok,
        num_shared_experts: usize::from(c.shared_expert_intermediate_size > 0),
        hidden_size: h,
        vocab_size: c.vocab_size,
        max_position_embeddings: c.max_position_embeddings,
        layout: layout(c, text, &mixers),
    }
    .into_info(ctx);
    Ok(Box::new(DecoderStack {
        info,
        embed,
        layers,
        norm: norm.into(),
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

    #[test]
    fn nested_and_flat_configs_read_the_same_text_model() {
        let text = r#"{"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 4,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
            "moe_intermediate_size": 4, "shared_expert_intermediate_size": 4,
            "num_experts": 4, "num_experts_per_tok": 2,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000.0,
                                "partial_rotary_factor": 0.25, "mrope_section": [1, 1, 2]}}"#;
        let nested = format!(r#"{{"tie_word_embeddings": true, "text_config": {text}}}"#);
        let flat = text_config(text).unwrap();
        let inner = text_config(&nested).unwrap();
        assert!(!flat.tie_word_embeddings && inner.tie_word_embeddings);
        assert_eq!(
            (flat.text_prefix(), inner.text_prefix()),
            ("model", "model.language_model")
        );
        for c in [flat.text, inner.text] {
            assert_eq!(c.rotary().unwrap(), (1000.0, 8));
            // No layer_types: every 4th layer is full attention.
            assert_eq!(
                c.mixers().unwrap(),
                [Mixer::Linear, Mixer::Linear, Mixer::Linear, Mixer::Full]
            );
            assert_eq!(c.delta_net().conv_channels(), 2 * 16 * 128 + 32 * 128);
        }
        let yarn = text.replace(r#""rope_type": "default""#, r#""rope_type": "yarn""#);
        let err = text_config(&yarn).unwrap().text.rotary().unwrap_err();
        assert!(err.to_string().contains("yarn"), "{err}");
    }
}
