//! Building a DeepSeek-V2 model from its config and weights: dense and MoE layers, the
//! group-limited router, shared experts, the module layout.

use std::sync::Arc;

use crate::model::weights::WeightSource;

use super::config::{Config, bad, rope_parameters, softmax_mscale, topk_method, validate};
use super::mla::{MlaAttention, attention_projections};
use crate::model::error::Result;
use crate::model::families::{
    BuildCtx, HeadSpec, InfoParts, load_embed_norm_head, parse_config, swiglu_projections,
};
use crate::model::info::{AttentionKind, Family, ModuleLayout};
use crate::model::layers::{
    DecoderLayer, DecoderStack, FeedForward, GluActivation, Linear, MoeBlock, NormKind, RmsNorm,
    Rotary, SharedExpert, SwiGlu,
};
use crate::model::moe_model::MoeModel;
use crate::model::router::{GroupScore, RouterConfig, ScoreFn, TopkMethod};

/// A SwiGLU MLP `mlp.{gate,up,down}_proj` with optional biases (`mlp_bias`).
fn load_mlp(vb: &WeightSource, hidden: usize, inter: usize, bias: bool) -> Result<SwiGlu> {
    Ok(SwiGlu {
        gate: Linear::load(&vb.pp("gate_proj"), hidden, inter, bias)?,
        up: Linear::load(&vb.pp("up_proj"), hidden, inter, bias)?,
        down: Linear::load(&vb.pp("down_proj"), inter, hidden, bias)?,
        names: ["gate_proj", "up_proj", "down_proj"],
        act: GluActivation::Silu,
    })
}

/// Choices where the reference implementations of DeepSeek-V2 disagree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Multiply the attention softmax scale by `get_mscale(factor, mscale_all_dim)²` when
    /// `rope_scaling` sets `mscale_all_dim`, as DeepSeek's original `modeling_deepseek.py` (and
    /// transformers after 4.57) does; [`load`] turns it on. transformers 4.57.6 does not.
    pub yarn_mscale_softmax: bool,
}

/// Builds the model as transformers 4.57.6 computes it.
///
/// The YaRN softmax-scale correction is applied: the released checkpoints were trained with it
/// (DeepSeek's own code, and transformers after 4.57); transformers 4.57.6 leaves it out, which
/// [`load_with`] with `yarn_mscale_softmax: false` reproduces.
pub fn load(json: &str, vb: WeightSource, ctx: &BuildCtx) -> Result<Box<dyn MoeModel>> {
    load_with(
        json,
        vb,
        ctx,
        Options {
            yarn_mscale_softmax: true,
        },
    )
}

/// Builds a DeepSeek-V3 / R1 or Kimi-K2 model (`DeepseekV3ForCausalLM`) as transformers 5
/// computes it: the V2 decoder with V3's router (module docs).
pub fn load_v3(json: &str, vb: WeightSource, ctx: &BuildCtx) -> Result<Box<dyn MoeModel>> {
    build(
        json,
        vb,
        ctx,
        Options {
            yarn_mscale_softmax: true,
        },
        Family::DeepseekV3,
    )
}

/// Builds a DeepSeek-V2 model with explicit [`Options`].
pub fn load_with(
    json: &str,
    vb: WeightSource,
    ctx: &BuildCtx,
    opts: Options,
) -> Result<Box<dyn MoeModel>> {
    build(json, vb, ctx, opts, Family::DeepseekV2)
}

/// The router of a V3 MoE block: sigmoid (or softmax) scores, `mlp.gate.e_score_correction_bias`
/// for choosing, groups scored by their two best biased scores, renormalised if
/// `norm_topk_prob`, scaled by `routed_scaling_factor`.
fn v3_router(cfg: &Config, top_k: usize) -> Result<RouterConfig> {
    let score_fn = match cfg.scoring_func.as_deref().unwrap_or("sigmoid") {
        "sigmoid" => ScoreFn::Sigmoid,
        "softmax" => ScoreFn::Softmax,
        other => {
            return Err(bad(format!(
                "unsupported scoring_func '{other}' (supported: sigmoid, softmax)"
            )));
        }
    };
    let n_group = cfg.n_group.unwrap_or(1);
    let topk_group = cfg.topk_group.unwrap_or(1);
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
    Ok(RouterConfig {
        num_experts: cfg.n_routed_experts,
        top_k,
        score_fn,
        method: if n_group > 1 {
            TopkMethod::GroupLimited {
                n_group,
                topk_group,
                group_score: GroupScore::Top2Sum,
            }
        } else {
            TopkMethod::Greedy
        },
        norm_topk_prob: cfg.norm_topk_prob,
        routed_scaling_factor: cfg.routed_scaling_factor,
        correction_bias: None,
        expert_scale: None,
    })
}

/// A DeepSeek `config.json` parsed and checked as [`load`] and [`load_v3`] read it, with the
/// router rule of its MoE layers (V3's correction bias, a weight, left out).
fn checked_config(json: &str, family: Family) -> Result<(Config, RouterConfig)> {
    let v3 = family == Family::DeepseekV3;
    let cfg: Config = parse_config(family, json)?;
    validate(&cfg, v3)?;
    let top_k = cfg
        .num_experts_per_tok
        .ok_or_else(|| bad("num_experts_per_tok is required"))?;
    if top_k == 0 || top_k > cfg.n_routed_experts {
        return Err(bad(format!(
            "num_experts_per_tok = {top_k} must be between 1 and n_routed_experts = {}",
            cfg.n_routed_experts
        )));
    }
    let router_cfg = if v3 {
        v3_router(&cfg, top_k)?
    } else {
        RouterConfig {
            num_experts: cfg.n_routed_experts,
            top_k,
            score_fn: ScoreFn::Softmax,
            method: topk_method(&cfg)?,
            // transformers 4.57 scales the chosen softmax scores and never renormalises them.
            norm_topk_prob: false,
            routed_scaling_factor: cfg.routed_scaling_factor,
            correction_bias: None,
            expert_scale: None,
        }
    };
    Ok((cfg, router_cfg))
}

/// The width of the fused shared experts, `None` without any.
fn shared_intermediate_size(cfg: &Config) -> Option<usize> {
    cfg.n_shared_experts.map(|n| cfg.moe_intermediate_size * n)
}

/// The module layout of a checked config.
fn layout(cfg: &Config) -> ModuleLayout {
    let h = cfg.hidden_size;
    let names = ["gate_proj", "up_proj", "down_proj"];
    let shared_inter = shared_intermediate_size(cfg);
    ModuleLayout {
        expert_prefix: "model.layers.{layer}.mlp.experts.{expert}".into(),
        expert_projections: swiglu_projections(h, cfg.moe_intermediate_size, names),
        shared_expert_prefix: shared_inter
            .map(|_| "model.layers.{layer}.mlp.shared_experts".into()),
        shared_expert_projections: shared_inter
            .map(|inter| swiglu_projections(h, inter, names))
            .unwrap_or_default(),
        attention_prefix: "model.layers.{layer}.self_attn".into(),
        attention_projections: attention_projections(cfg),
        attention_overrides: Default::default(),
        router: "model.layers.{layer}.mlp.gate".into(),
        router_in: h,
    }
}

/// Every layer's attention is full MLA.
fn attention_kinds(cfg: &Config) -> Vec<AttentionKind> {
    vec![AttentionKind::Full; cfg.num_hidden_layers]
}

/// The module layout and per-layer attention [`load`] (`DeepseekV2`) or [`load_v3`]
/// (`DeepseekV3`) reports, from the `config.json` text alone.
pub fn config_layout(json: &str, family: Family) -> Result<(ModuleLayout, Vec<AttentionKind>)> {
    let (cfg, _) = checked_config(json, family)?;
    Ok((layout(&cfg), attention_kinds(&cfg)))
}

fn build(
    json: &str,
    vb: WeightSource,
    ctx: &BuildCtx,
    opts: Options,
    family: Family,
) -> Result<Box<dyn MoeModel>> {
    let v3 = family == Family::DeepseekV3;
    let (cfg, router_cfg) = checked_config(json, family)?;
    let h = cfg.hidden_size;
    let (inv_freq, attention_factor) = rope_parameters(&cfg)?;
    let rotary = Arc::new(Rotary::from_inv_freq(
        &inv_freq,
        attention_factor,
        cfg.max_position_embeddings,
        // V2's rope is always the interleaved (complex) form; V3 configs can turn it off.
        !v3 || cfg.rope_interleave.unwrap_or(true),
        ctx.dtype,
        &ctx.device,
    )?);
    let softmax_factor = if opts.yarn_mscale_softmax {
        softmax_mscale(&cfg)?
    } else {
        1.0
    };
    let shared_inter = shared_intermediate_size(&cfg);
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
                    Linear::new(r.weight.tensor_as(candle_core::DType::F32)?, None)
                },
                router_cfg: if v3 {
                    let bias = mvb
                        .get(cfg.n_routed_experts, "gate.e_score_correction_bias")?
                        .to_dtype(candle_core::DType::F32)?
                        .to_vec1::<f32>()?;
                    RouterConfig {
                        correction_bias: Some(bias),
                        ..router_cfg.clone()
                    }
                } else {
                    router_cfg.clone()
                },
                experts,
                shared,
                router_fp32: true,
            })
        } else {
            FeedForward::Dense(load_mlp(&mvb, h, cfg.intermediate_size, cfg.mlp_bias)?)
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
            ff,
        });
    }
    let head = HeadSpec {
        vocab: cfg.vocab_size,
        hidden: h,
        eps: cfg.rms_norm_eps,
        norm: NormKind::Rms,
        tie_word_embeddings: cfg.tie_word_embeddings,
        lm_head_bias: false,
    };
    let (embed, norm, lm_head) = load_embed_norm_head(&vb, &head, ctx.routing_only)?;
    let info = InfoParts {
        family,
        num_layers: cfg.num_hidden_layers,
        moe_layers,
        attention_kinds: attention_kinds(&cfg),
        num_experts: cfg.n_routed_experts,
        top_k: router_cfg.top_k,
        num_shared_experts: cfg.n_shared_experts.unwrap_or(0),
        score_fn: router_cfg.score_fn,
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
