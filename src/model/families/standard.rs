//! The decoder shape OLMoE, Qwen2-MoE, Qwen3-MoE and Mixtral share: GQA attention with RoPE,
//! SwiGLU experts behind a linear router, optional shared expert and dense layers. Each family
//! file maps its HF config onto a [`StandardSpec`]; [`build_standard`] loads the weights.

use std::sync::Arc;

use crate::model::weights::WeightSource;

use super::{
    BuildCtx, InfoParts, load_embed_norm_head, standard_attention_projections, swiglu_projections,
};
use crate::model::layers::{
    Attention, AttentionConfig, DecoderLayer, DecoderStack, FeedForward, Linear, MoeBlock, QkNorm,
    RmsNorm, Rotary, SharedExpert, SwiGlu,
};
use crate::model::info::AttentionKind;
use crate::model::router::RouterConfig;
use crate::model::{Family, ModuleLayout, MoeModel, Result};

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
    pub intermediate_size: usize,
    /// Scaled by `sigmoid(mlp.shared_expert_gate · x)` (Qwen2-MoE).
    pub gated: bool,
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
    pub expert_intermediate_size: usize,
    /// Decoder layer indices with a routed MoE block; the rest are dense.
    pub moe_layers: Vec<usize>,
    pub dense_intermediate_size: usize,
    pub shared: Option<SharedSpec>,
    pub sliding_window: Option<usize>,
    pub tie_word_embeddings: bool,
}

pub fn build_standard(
    spec: StandardSpec,
    vb: WeightSource,
    ctx: &BuildCtx,
) -> Result<Box<dyn MoeModel>> {
    let s = &spec;
    let (h, nh, nkv, hd) = (s.hidden_size, s.num_heads, s.num_kv_heads, s.head_dim);
    let rotary = Arc::new(Rotary::new(
        hd,
        s.max_position_embeddings,
        s.rope_theta,
        ctx.dtype,
        &ctx.device,
    )?);
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
                    mlp: SwiGlu::load(&mvb.pp("shared_expert"), h, sh.intermediate_size)?,
                    gate: if sh.gated {
                        Some(Linear::load(&mvb.pp("shared_expert_gate"), h, 1, false)?)
                    } else {
                        None
                    },
                }),
                None => None,
            };
            FeedForward::Moe(MoeBlock {
                layer: li,
                router: Linear::load(&mvb.pp("gate"), h, s.num_experts, false)?,
                router_cfg: RouterConfig::softmax_topk(s.num_experts, s.top_k, s.norm_topk_prob),
                experts,
                shared,
                router_fp32: false,
            })
        } else {
            FeedForward::Dense(SwiGlu::load(&lvb.pp("mlp"), h, s.dense_intermediate_size)?)
        };
        layers.push(DecoderLayer {
            input_norm: RmsNorm::load(&lvb.pp("input_layernorm"), h, s.rms_norm_eps)?,
            attn: Box::new(attn),
            post_attention_norm: RmsNorm::load(
                &lvb.pp("post_attention_layernorm"),
                h,
                s.rms_norm_eps,
            )?,
            ff,
        });
    }
    let (embed, norm, lm_head) = load_embed_norm_head(
        &vb,
        s.vocab_size,
        h,
        s.rms_norm_eps,
        s.tie_word_embeddings,
        ctx.routing_only,
    )?;
    let attention_projections = standard_attention_projections(h, nh, nkv, hd);
    let layout = ModuleLayout {
        expert_prefix: format!("model.layers.{{layer}}.{}.experts.{{expert}}", s.moe_prefix),
        expert_projections: swiglu_projections(h, s.expert_intermediate_size, s.expert_names),
        shared_expert_prefix: s
            .shared
            .map(|_| format!("model.layers.{{layer}}.{}.shared_expert", s.moe_prefix)),
        shared_expert_projections: s
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
        attention_projections,
        router: format!("model.layers.{{layer}}.{}.gate", s.moe_prefix),
        router_in: h,
    };
    let info = InfoParts {
        family: s.family,
        num_layers: s.num_layers,
        moe_layers: s.moe_layers.clone(),
        attention_kinds: vec![
            match s.sliding_window {
                Some(window) => AttentionKind::Sliding { window },
                None => AttentionKind::Full,
            };
            s.num_layers
        ],
        num_experts: s.num_experts,
        top_k: s.top_k,
        num_shared_experts: usize::from(s.shared.is_some()),
        hidden_size: h,
        vocab_size: s.vocab_size,
        max_position_embeddings: s.max_position_embeddings,
        layout,
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
