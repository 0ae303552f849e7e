//! MoE model families behind one trait, plus what they share: weight loading, tokenizer,
//! devices, and the routing layer through which every family's router reports and is steered.
//!
//! - [`MoeModel`] is the trait every family implements; [`loader::load_model`] picks the family
//!   from `config.json` and builds it from memory-mapped safetensors.
//! - [`router`] owns router scoring, expert choice, steering and the [`router::RoutingHook`].
//! - [`layers`] holds the building blocks (norms, rotary embeddings, attention, SwiGLU experts,
//!   the sparse expert dispatch) the family files are made of.

pub mod device;
pub mod families;
pub mod hub;
pub mod layers;
pub mod loader;
pub mod lora;
pub mod router;
pub mod weights;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

pub use loader::{LoadOptions, LoadedModel, load_model};
pub use router::{RecordingHook, RouteCtx, RoutingHook, Steering};

/// Errors from building or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Msg(String),
}

impl ModelError {
    pub fn msg(s: impl Into<String>) -> Self {
        Self::Msg(s.into())
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;

/// The supported model families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Olmoe,
    Qwen2Moe,
    Qwen3Moe,
    Mixtral,
    DeepseekV2,
}

impl Family {
    pub const ALL: [Family; 5] = [
        Family::Olmoe,
        Family::Qwen2Moe,
        Family::Qwen3Moe,
        Family::Mixtral,
        Family::DeepseekV2,
    ];

    /// The HF `architectures[0]` name of the family's causal LM.
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Olmoe => "OlmoeForCausalLM",
            Family::Qwen2Moe => "Qwen2MoeForCausalLM",
            Family::Qwen3Moe => "Qwen3MoeForCausalLM",
            Family::Mixtral => "MixtralForCausalLM",
            Family::DeepseekV2 => "DeepseekV2ForCausalLM",
        }
    }

    /// The HF `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Olmoe => "olmoe",
            Family::Qwen2Moe => "qwen2_moe",
            Family::Qwen3Moe => "qwen3_moe",
            Family::Mixtral => "mixtral",
            Family::DeepseekV2 => "deepseek_v2",
        }
    }

    pub fn from_architecture(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.architecture() == name)
    }

    pub fn from_model_type(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.model_type() == name)
    }
}

/// One linear projection's name and shape, for parameter accounting and adapter export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Projection {
    /// Module name relative to its parent, e.g. `gate_proj` or `w1` or `self_attn.q_proj`.
    pub name: String,
    pub in_features: usize,
    pub out_features: usize,
}

impl Projection {
    pub fn new(name: &str, in_features: usize, out_features: usize) -> Self {
        Self {
            name: name.to_string(),
            in_features,
            out_features,
        }
    }
}

/// Where a family keeps its modules, with the real projection shapes: enough to count LoRA
/// parameters and write PEFT `target_modules` without loading weights.
///
/// Templates use `{layer}` and `{expert}` placeholders, e.g.
/// `model.layers.{layer}.mlp.experts.{expert}` for OLMoE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleLayout {
    pub expert_prefix: String,
    pub expert_projections: Vec<Projection>,
    /// Prefix of the (first) shared expert, if any, e.g. `model.layers.{layer}.mlp.shared_expert`.
    pub shared_expert_prefix: Option<String>,
    /// All shared experts' projections (DeepSeek's `n_shared_experts` fused into one MLP).
    pub shared_expert_projections: Vec<Projection>,
    /// `model.layers.{layer}.self_attn`.
    pub attention_prefix: String,
    pub attention_projections: Vec<Projection>,
    /// Full name of the router linear, e.g. `model.layers.{layer}.mlp.gate`.
    pub router: String,
    pub router_in: usize,
}

impl ModuleLayout {
    pub fn expert_module(&self, layer: usize, expert: usize, proj: &str) -> String {
        format!(
            "{}.{proj}",
            self.expert_prefix
                .replace("{layer}", &layer.to_string())
                .replace("{expert}", &expert.to_string())
        )
    }
}

/// What `moescope info` shows and the profile file records about a model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Hub id or folder the model came from.
    pub id: String,
    pub architecture: String,
    pub family: Family,
    pub num_layers: usize,
    /// Decoder layer indices that have a routed MoE block, ascending.
    pub moe_layers: Vec<usize>,
    pub num_experts: usize,
    pub top_k: usize,
    pub num_shared_experts: usize,
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub total_params: u64,
    pub active_params: u64,
    pub dtype: String,
    pub device: String,
    pub score_fn: router::ScoreFn,
    pub layout: ModuleLayout,
}

/// Right-padded token ids of a batch of sequences.
#[derive(Debug)]
pub struct Batch {
    /// `[batch, max_len]` u32, right-padded.
    pub input_ids: Tensor,
    /// Real length of each sequence.
    pub seq_lens: Vec<usize>,
    /// Position of the first token (non-zero while decoding with a KV cache).
    pub seqlen_offset: usize,
}

impl Batch {
    /// Builds a right-padded batch (pad id 0; padded positions are masked and never routed).
    pub fn from_sequences(seqs: &[Vec<u32>], device: &Device) -> Result<Self> {
        let max_len = seqs.iter().map(Vec::len).max().unwrap_or(0);
        if max_len == 0 {
            return Err(ModelError::msg("empty batch: no tokens"));
        }
        let mut flat = Vec::with_capacity(seqs.len() * max_len);
        for s in seqs {
            flat.extend_from_slice(s);
            flat.extend(std::iter::repeat_n(0u32, max_len - s.len()));
        }
        Ok(Self {
            input_ids: Tensor::from_vec(flat, (seqs.len(), max_len), device)?,
            seq_lens: seqs.iter().map(Vec::len).collect(),
            seqlen_offset: 0,
        })
    }

    pub fn is_padded(&self) -> bool {
        let max = self.seq_lens.iter().copied().max().unwrap_or(0);
        self.seq_lens.iter().any(|&l| l != max)
    }
}

/// How far a forward pass goes and what it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Stop after the last MoE layer; return nothing (routing is reported to the hook).
    RoutingOnly,
    /// Logits `[batch, vocab]` at each sequence's last real token.
    LastLogits,
    /// Logits `[batch, seq, vocab]` at every position.
    AllLogits,
}

/// A Mixture-of-Experts causal language model.
pub trait MoeModel: Send {
    fn info(&self) -> &ModelInfo;

    /// The device the weights live on (inputs go there).
    fn device(&self) -> &Device;

    /// Runs `batch` through the model, reporting every MoE layer's routing to `route`.
    /// Returns `None` for [`Output::RoutingOnly`], logits otherwise (f32).
    fn forward(
        &mut self,
        batch: &Batch,
        output: Output,
        route: &mut RouteCtx<'_>,
    ) -> Result<Option<Tensor>>;

    /// Enables or disables the KV cache (off by default; generation turns it on).
    fn set_use_kv_cache(&mut self, on: bool);

    /// Forgets cached keys and values.
    fn clear_kv_cache(&mut self);

    /// Mutable access to the info, for the loader to fill in counts read from the checkpoint.
    fn info_mut(&mut self) -> &mut ModelInfo;

    /// Every linear layer of the decoder with its full HF module name (e.g.
    /// `model.layers.3.mlp.experts.5.gate_proj`), for attaching and merging LoRA adapters.
    /// Experts skipped by a routing-only load are absent.
    fn linears_mut(&mut self) -> Vec<(String, &mut layers::Linear)>;

    /// Records the checkpoint's parameter count and derives the active count per token.
    fn set_param_counts(&mut self, total_params: u64) {
        let inactive = families::inactive_params(self.info());
        let info = self.info_mut();
        info.total_params = total_params;
        info.active_params = total_params.saturating_sub(inactive);
    }
}

/// The dtype names accepted on the command line.
pub fn parse_dtype(s: &str) -> std::result::Result<DType, String> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => Err(format!(
            "unknown dtype '{other}' (expected f32, bf16 or f16)"
        )),
    }
}
