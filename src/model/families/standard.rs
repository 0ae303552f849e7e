//! The decoder shape OLMoE, Qwen2-MoE, Qwen3-MoE, Mixtral, GLM-4.5 and MiniMax-M2 share: GQA
//! attention with (possibly partial) RoPE, SwiGLU experts behind a linear router (softmax, or
//! sigmoid with a selection bias), optional shared expert and dense layers. Each family file's
//! `spec` maps its HF config onto a [`StandardSpec`], which gives the module layout without any
//! weights; [`build_standard`] loads the weights.

use std::sync::Arc;

use crate::model::weights::WeightSource;

use super::{
    BuildCtx, HeadSpec, InfoParts, load_embed_norm_head, standard_attention_projections,
    swiglu_projections,
};
use crate::model::info::AttentionKind;
use crate::model::layers::{
    Attention, AttentionConfig, DecoderLayer, DecoderStack, FeedForward, Linear, MoeBlock,
    NormKind, QkNorm, RmsNorm, Rotary, SharedExpert, SwiGlu,
};
use crate::model::router::{GroupScore, RouterConfig, ScoreFn, TopkMethod};
use crate::model::{Family, ModuleLayout, MoeModel, Result};
use candle_core::DType;

/// Where q/k normalisation sits in the attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNormKind {
    None,
    /// `self_attn.{q,k}_norm` over the whole projection (OLMoE).
    Full,
    /// `self_attn.{q,k}_norm` over each head (Qwen3).
    PerHead,
}

/// A shared expert that runs on every token (`mlp.shared_expert`).
#[derive(Debug, Clone, Copy)]
pub struct SharedSpec {
    /// Module name under the MoE block: `shared_expert` (Qwen2-MoE) or `shared_experts`.
    pub name: &'static str,
    pub intermediate_size: usize,
    /// Scaled by `sigmoid(mlp.shared_expert_gate · x)` (Qwen2-MoE).
    pub gated: bool,
}

/// Phi-3.5's `longrope` RoPE scaling as transformers 5 applies it (the short factors).
#[derive(Debug, Clone, PartialEq)]
pub struct LongRope {
    pub factors: Vec<f64>,
    pub mscale: f64,
}

/// How a family's router turns logits into chosen experts and weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RouterRule {
    /// Softmax over all experts, greedy top-k, renormalised if `norm_topk_prob`.
    Softmax,
    /// DeepSeek-V3's rule (GLM-4.5, MiniMax-M2): router logits in fp32, sigmoid scores, the
    /// tensor `correction_bias` (relative to the MoE block) added for choosing only,
    /// group-limited top-k (groups scored by their two best biased scores), weights = the
    /// unbiased scores, renormalised if `norm_topk_prob`, times `routed_scaling_factor`.
    SigmoidBiased {
        correction_bias: &'static str,
        n_group: usize,
        topk_group: usize,
        routed_scaling_factor: f64,
    },
    /// PhiMoE's sparsemixer: top-2 by logit, each chosen expert weighted by its softmax over
    /// the experts within `2·jitter_eps` (relatively) of its own logit ([`TopkMethod::SparseMixer`]).
    SparseMixer { jitter_eps: f64 },
}

/// Everything [`build_standard`] needs to know about a family and a config.
pub struct StandardSpec {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Channels of each head that RoPE turns (the first ones); the rest pass through.
    pub rotary_dim: usize,
    /// Phi's `longrope` scaling: the inverse frequencies divided by these factors (one per
    /// rotated channel pair) and cos / sin multiplied by `mscale`.
    pub longrope: Option<LongRope>,
    /// RMSNorm everywhere, or LayerNorm with bias (PhiMoE).
    pub norm: NormKind,
    pub lm_head_bias: bool,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub clip_qkv: Option<f64>,
    pub qk_norm: QkNormKind,
    /// `mlp` or `block_sparse_moe`.
    pub moe_prefix: &'static str,
    /// Expert projection names for gate, up, down.
    pub expert_names: [&'static str; 3],
    pub num_experts: usize,
    pub top_k: usize,
    pub norm_topk_prob: bool,
    pub router: RouterRule,
    pub expert_intermediate_size: usize,
    /// Decoder layer indices with a routed MoE block; the rest are dense.
    pub moe_layers: Vec<usize>,
    pub dense_intermediate_size: usize,
    pub shared: Option<SharedSpec>,
    pub sliding_window: Option<usize>,
    pub tie_word_embeddings: bool,
}

impl StandardSpec {
    /// The module layout of the model this spec describes (config only, no weights).
    pub fn layout(&self) -> ModuleLayout {
        let h = self.hidden_size;
        let moe = self.moe_prefix;
        ModuleLayout {
            expert_prefix: format!("model.layers.{{layer}}.{moe}.experts.{{expert}}"),
            expert_projections: swiglu_projections(
                h,
                self.expert_intermediate_size,
                self.expert_names,
            ),
            shared_expert_prefix: self
                .shared
                .map(|sh| format!("model.layers.{{layer}}.{moe}.{}", sh.name)),
            shared_expert_projections: self
                .shared
                .map(|sh| {
                    swiglu_projections(
                        h,
                        sh.intermediate_size,
                        ["gate_proj", "up_proj", "down_proj"],
                    )
                })
                .unwrap_or_default(),
            attention_prefix: "model.layers.{layer}.self_attn".into(),
            attention_projections: standard_attention_projections(
                h,
                self.num_heads,
                self.num_kv_heads,
                self.head_dim,
            ),
            attention_overrides: Default::default(),
            router: format!("model.layers.{{layer}}.{moe}.gate"),
            router_in: h,
        }
    }

    /// Each decoder layer's attention: all sliding-window with `sliding_window`, else all full.
    pub fn attention_kinds(&self) -> Vec<AttentionKind> {
        let kind = match self.sliding_window {
            Some(window) => AttentionKind::Sliding { window },
            None => AttentionKind::Full,
        };
        vec![kind; self.num_layers]
    }
}

/// Builds the model `spec` describes from its weights.
pub fn build_standard(
    spec: StandardSpec,
    vb: WeightSource,
    ctx: &BuildCtx,
) -> Result<Box<dyn MoeModel>> {
    let s = &spec;
    let (h, nh, nkv, hd) = (s.hidden_size, s.num_heads, s.num_kv_heads, s.head_dim);
    if s.rotary_dim == 0 || !s.rotary_dim.is_multiple_of(2) || s.rotary_dim > hd {
        return Err(crate::model::error::ModelError::msg(format!(
            "{} config.json: {} rotary channels per head (partial_rotary_factor / rotary_dim) \
             must be even, positive and at most head_dim {hd}",
            s.family.architecture(),
            s.rotary_dim
        )));
    }
    let rotary = Arc::new(match &s.longrope {
        None => Rotary::new(
            s.rotary_dim,
            s.max_position_embeddings,
            s.rope_theta,
            ctx.dtype,
            &ctx.device,
        )?,
        Some(long) => {
            let dim = s.rotary_dim;
            let inv: Vec<f32> = (0..dim / 2)
                .map(|i| {
                    let exponent = f64::from((2 * i) as f32 / dim as f32);
                    (1.0 / (long.factors[i] * s.rope_theta.powf(exponent))) as f32
                })
                .collect();
            Rotary::from_inv_freq(
                &inv,
                long.mscale as f32,
                s.max_position_embeddings,
                false,
                ctx.dtype,
                &ctx.device,
            )?
        }
    });
    let attn_cfg = AttentionConfig {
        hidden_size: h,
        num_heads: nh,
        num_kv_heads: nkv,
        head_dim: hd,
        qkv_bias: s.qkv_bias,
        o_bias: s.o_bias,
        clip_qkv: s.clip_qkv,
    };
    let mut layers = Vec::with_capacity(s.num_layers);
    for li in 0..s.num_layers {
        let lvb = vb.pp(format!("model.layers.{li}"));
        let avb = lvb.pp("self_attn");
        let qk_norm = match s.qk_norm {
            QkNormKind::None => QkNorm::None,
            QkNormKind::Full => QkNorm::Full {
                q: RmsNorm::load(&avb.pp("q_norm"), nh * hd, s.rms_norm_eps)?,
                k: RmsNorm::load(&avb.pp("k_norm"), nkv * hd, s.rms_norm_eps)?,
            },
            QkNormKind::PerHead => QkNorm::PerHead {
                q: RmsNorm::load(&avb.pp("q_norm"), hd, s.rms_norm_eps)?,
                k: RmsNorm::load(&avb.pp("k_norm"), hd, s.rms_norm_eps)?,
            },
        };
        let attn = Attention::load(&avb, attn_cfg.clone(), qk_norm, rotary.clone())?;
        let ff = if s.moe_layers.contains(&li) {
            let mvb = lvb.pp(s.moe_prefix);
            // Routing capture stops at the last MoE layer's router.
            let skip_experts = ctx.routing_only && s.moe_layers.last() == Some(&li);
            let n_loaded = if skip_experts { 0 } else { s.num_experts };
            let experts = (0..n_loaded)
                .map(|e| {
                    SwiGlu::load_named(
                        &mvb.pp(format!("experts.{e}")),
                        h,
                        s.expert_intermediate_size,
                        s.expert_names,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let shared = match s.shared.filter(|_| !skip_experts) {
                Some(sh) => Some(SharedExpert {
                    mlp: SwiGlu::load(&mvb.pp(sh.name), h, sh.intermediate_size)?,
                    gate: if sh.gated {
                        Some(Linear::load(&mvb.pp("shared_expert_gate"), h, 1, false)?)
                    } else {
                        None
                    },
                }),
                None => None,
            };
            let router = Linear::load(&mvb.pp("gate"), h, s.num_experts, false)?;
            let (router, router_cfg, router_fp32) = match s.router {
                RouterRule::Softmax => (
                    router,
                    RouterConfig::softmax_topk(s.num_experts, s.top_k, s.norm_topk_prob),
                    false,
                ),
                RouterRule::SparseMixer { jitter_eps } => (
                    router,
                    RouterConfig {
                        method: TopkMethod::SparseMixer { jitter_eps },
                        ..RouterConfig::softmax_topk(s.num_experts, s.top_k, false)
                    },
                    false,
                ),
                RouterRule::SigmoidBiased {
                    correction_bias,
                    n_group,
                    topk_group,
                    routed_scaling_factor,
                } => {
                    let bias = mvb
                        .get(s.num_experts, correction_bias)?
                        .to_dtype(DType::F32)?
                        .to_vec1::<f32>()?;
                    let method = if n_group > 1 {
                        TopkMethod::GroupLimited {
                            n_group,
                            topk_group,
                            group_score: GroupScore::Top2Sum,
                        }
                    } else {
                        TopkMethod::Greedy
                    };
                    let cfg = RouterConfig {
                        num_experts: s.num_experts,
                        top_k: s.top_k,
                        score_fn: ScoreFn::Sigmoid,
                        method,
                        norm_topk_prob: s.norm_topk_prob,
                        routed_scaling_factor,
                        correction_bias: Some(bias),
                        expert_scale: None,
                    };
                    // The router runs in fp32 whatever the model dtype.
                    let fp32 = Linear::new(router.weight.tensor_as(DType::F32)?, None);
                    (fp32, cfg, true)
                }
            };
            FeedForward::Moe(MoeBlock {
                layer: li,
                router,
                router_cfg,
                experts,
                shared,
                router_fp32,
            })
        } else {
            FeedForward::Dense(SwiGlu::load(&lvb.pp("mlp"), h, s.dense_intermediate_size)?)
        };
        layers.push(DecoderLayer {
            input_norm: s.norm.load(&lvb.pp("input_layernorm"), h, s.rms_norm_eps)?,
            attn: Box::new(attn),
            post_attention_norm: s.norm.load(
                &lvb.pp("post_attention_layernorm"),
                h,
                s.rms_norm_eps,
            )?,
            ff,
        });
    }
    let head = HeadSpec {
        vocab: s.vocab_size,
        hidden: h,
        eps: s.rms_norm_eps,
        norm: s.norm,
        tie_word_embeddings: s.tie_word_embeddings,
        lm_head_bias: s.lm_head_bias,
    };
    let (embed, norm, lm_head) = load_embed_norm_head(&vb, &head, ctx.routing_only)?;
    let info = InfoParts {
        family: s.family,
        num_layers: s.num_layers,
        moe_layers: s.moe_layers.clone(),
        attention_kinds: s.attention_kinds(),
        num_experts: s.num_experts,
        top_k: s.top_k,
        num_shared_experts: usize::from(s.shared.is_some()),
        score_fn: match s.router {
            RouterRule::Softmax => ScoreFn::Softmax,
            RouterRule::SigmoidBiased { .. } => ScoreFn::Sigmoid,
            RouterRule::SparseMixer { .. } => ScoreFn::Softmax,
        },
        hidden_size: h,
        vocab_size: s.vocab_size,
        max_position_embeddings: s.max_position_embeddings,
        layout: s.layout(),
    }
    .into_info(ctx);
    Ok(Box::new(DecoderStack {
        info,
        embed,
        layers,
        norm,
        lm_head,
        sliding_window: s.sliding_window,
        use_kv_cache: false,
        device: ctx.device.clone(),
        dtype: ctx.dtype,
    }))
}
