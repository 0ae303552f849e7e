//! What every family builder uses: the [`BuildCtx`], config parsing, the [`ModelInfo`] parts,
//! the layout's projection lists, and loading the embedding, final norm and LM head.

use crate::model::weights::WeightSource;
use candle_core::{DType, Device};

use crate::model::error::{ModelError, Result};
use crate::model::info::{AttentionKind, Family, ModelInfo, ModuleLayout};

/// What every family builder needs besides its config and weights.
#[derive(Debug, Clone)]
pub struct BuildCtx {
    /// Hub id or folder, as the user gave it.
    pub id: String,
    /// The dtype activations (and small tensors such as norms) are computed in.
    pub dtype: DType,
    /// The dtype the weight matrices are held in.
    pub weight_dtype: DType,
    /// Weight matrices are views of the mapped checkpoint.
    pub mapped: bool,
    pub device: Device,
    /// Skip what routing capture never uses (LM head, last MoE layer's experts).
    pub routing_only: bool,
}

/// Parses a family's config, naming the family in the error.
pub fn parse_config<T: serde::de::DeserializeOwned>(family: Family, json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| {
        ModelError::msg(format!(
            "config.json is not a valid {} config: {e}",
            family.architecture()
        ))
    })
}

/// Fields every family's [`ModelInfo`] has; `total_params` is filled in by the loader from the
/// checkpoint itself, `active_params` from it and the layout.
pub struct InfoParts {
    pub family: Family,
    pub num_layers: usize,
    pub moe_layers: Vec<usize>,
    /// Each decoder layer's token mixing.
    pub attention_kinds: Vec<AttentionKind>,
    pub num_experts: usize,
    pub top_k: usize,
    pub num_shared_experts: usize,
    /// How router logits become scores (softmax or sigmoid).
    pub score_fn: crate::model::router::ScoreFn,
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub layout: ModuleLayout,
}

impl InfoParts {
    pub fn into_info(self, ctx: &BuildCtx) -> ModelInfo {
        ModelInfo {
            id: ctx.id.clone(),
            architecture: self.family.architecture().to_string(),
            family: self.family,
            num_layers: self.num_layers,
            moe_layers: self.moe_layers,
            attention_kinds: self.attention_kinds,
            num_experts: self.num_experts,
            top_k: self.top_k,
            num_shared_experts: self.num_shared_experts,
            hidden_size: self.hidden_size,
            vocab_size: self.vocab_size,
            max_position_embeddings: self.max_position_embeddings,
            total_params: 0,
            active_params: 0,
            dtype: crate::model::device::dtype_name(ctx.weight_dtype),
            mapped: ctx.mapped,
            device: crate::model::device::describe(&ctx.device),
            score_fn: self.score_fn,
            layout: self.layout,
            storage: Vec::new(),
        }
    }
}

pub(super) fn default_rope_theta() -> f64 {
    10000.0
}

pub(super) fn default_rms_eps() -> f64 {
    1e-6
}

pub(super) fn default_max_pos() -> usize {
    4096
}

/// The standard q/k/v/o attention projections, for the layout.
pub fn standard_attention_projections(
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
) -> Vec<crate::model::info::Projection> {
    use crate::model::info::Projection;
    vec![
        Projection::new("q_proj", hidden, heads * head_dim),
        Projection::new("k_proj", hidden, kv_heads * head_dim),
        Projection::new("v_proj", hidden, kv_heads * head_dim),
        Projection::new("o_proj", heads * head_dim, hidden),
    ]
}

/// SwiGLU projections with the given names for gate, up, down.
pub fn swiglu_projections(
    hidden: usize,
    inter: usize,
    names: [&str; 3],
) -> Vec<crate::model::info::Projection> {
    use crate::model::info::Projection;
    vec![
        Projection::new(names[0], hidden, inter),
        Projection::new(names[1], hidden, inter),
        Projection::new(names[2], inter, hidden),
    ]
}

/// The device and dtype tensors are built on (for rotary tables and masks).
pub fn rotary_dtype(ctx: &BuildCtx) -> (DType, &Device) {
    (ctx.dtype, &ctx.device)
}

/// What [`load_embed_norm_head`] loads: the vocabulary and hidden sizes, the final norm, and
/// how the LM head is stored.
pub struct HeadSpec {
    pub vocab: usize,
    pub hidden: usize,
    pub eps: f64,
    pub norm: crate::model::layers::NormKind,
    pub tie_word_embeddings: bool,
    /// `lm_head.bias` exists (PhiMoE's `lm_head_bias`).
    pub lm_head_bias: bool,
}

/// The token embedding, final norm and LM head (`model.embed_tokens`, `model.norm`, `lm_head`);
/// the head falls back to the embedding when the checkpoint ties them.
pub fn load_embed_norm_head(
    vb: &WeightSource,
    spec: &HeadSpec,
    routing_only: bool,
) -> Result<(
    crate::model::weight::Weight,
    crate::model::layers::Norm,
    Option<crate::model::layers::Linear>,
)> {
    use crate::model::layers::Linear;
    let (vocab, hidden) = (spec.vocab, spec.hidden);
    let embed = vb
        .pp("model.embed_tokens")
        .weight((vocab, hidden), "weight")?;
    let norm = spec.norm.load(&vb.pp("model.norm"), hidden, spec.eps)?;
    let lm_head = if routing_only {
        None
    } else if !spec.tie_word_embeddings || vb.contains_tensor("lm_head.weight") {
        Some(Linear::load(
            &vb.pp("lm_head"),
            hidden,
            vocab,
            spec.lm_head_bias,
        )?)
    } else {
        Some(Linear::new(embed.clone(), None))
    };
    Ok((embed, norm, lm_head))
}
