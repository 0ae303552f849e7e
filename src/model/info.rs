//! What a model is, without its weights: the [`Family`], the [`ModuleLayout`] of its linear
//! layers (for LoRA accounting and adapter export), and the [`ModelInfo`] that `moescope info`
//! shows and profiles record.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::router::ScoreFn;

/// The supported model families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Olmoe,
    Qwen2Moe,
    Qwen3Moe,
    Mixtral,
    DeepseekV2,
    /// DeepSeek-V3 / R1 and Kimi-K2 (which uses the same architecture).
    DeepseekV3,
    Glm4Moe,
    #[serde(rename = "minimax_m2")]
    MiniMaxM2,
    Gemma4,
    PhiMoe,
    GptOss,
    Qwen3_5Moe,
}

impl Family {
    pub const ALL: [Family; 12] = [
        Family::Olmoe,
        Family::Qwen2Moe,
        Family::Qwen3Moe,
        Family::Mixtral,
        Family::DeepseekV2,
        Family::DeepseekV3,
        Family::Glm4Moe,
        Family::MiniMaxM2,
        Family::Gemma4,
        Family::PhiMoe,
        Family::GptOss,
        Family::Qwen3_5Moe,
    ];

    /// The HF `architectures[0]` name of the family's causal LM.
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Olmoe => "OlmoeForCausalLM",
            Family::Qwen2Moe => "Qwen2MoeForCausalLM",
            Family::Qwen3Moe => "Qwen3MoeForCausalLM",
            Family::Mixtral => "MixtralForCausalLM",
            Family::DeepseekV2 => "DeepseekV2ForCausalLM",
            Family::DeepseekV3 => "DeepseekV3ForCausalLM",
            Family::Glm4Moe => "Glm4MoeForCausalLM",
            Family::MiniMaxM2 => "MiniMaxM2ForCausalLM",
            Family::Gemma4 => "Gemma4ForConditionalGeneration",
            Family::PhiMoe => "PhiMoEForCausalLM",
            Family::GptOss => "GptOssForCausalLM",
            Family::Qwen3_5Moe => "Qwen3_5MoeForConditionalGeneration",
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
            Family::DeepseekV3 => "deepseek_v3",
            Family::Glm4Moe => "glm4_moe",
            Family::MiniMaxM2 => "minimax_m2",
            Family::Gemma4 => "gemma4",
            Family::PhiMoe => "phimoe",
            Family::GptOss => "gpt_oss",
            Family::Qwen3_5Moe => "qwen3_5_moe",
        }
    }

    pub fn from_architecture(name: &str) -> Option<Self> {
        match name {
            "Qwen3_5MoeForCausalLM" => Some(Family::Qwen3_5Moe),
            _ => Self::ALL.into_iter().find(|f| f.architecture() == name),
        }
    }

    pub fn from_model_type(name: &str) -> Option<Self> {
        match name {
            // Kimi-K2's config names its own model_type over DeepSeek-V3's architecture.
            "kimi_k2" => Some(Family::DeepseekV3),
            "qwen3_5_moe_text" => Some(Family::Qwen3_5Moe),
            _ => Self::ALL.into_iter().find(|f| f.model_type() == name),
        }
    }

    /// Checkpoint tensors outside the language model that the family never loads (a vision
    /// tower, a multi-token-prediction head), by name prefix: not counted in its parameters.
    pub fn unused_weight_prefixes(self) -> &'static [&'static str] {
        match self {
            Family::Qwen3_5Moe => &["model.visual.", "mtp."],
            _ => &[],
        }
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
    /// Every decoder layer's attention projections, unless [`Self::attention_overrides`]
    /// gives a layer its own.
    pub attention_projections: Vec<Projection>,
    /// Layers whose attention projections differ from the others': Gemma 4's full-attention
    /// layers (larger heads, no `v_proj` with `attention_k_eq_v`), Qwen3.5's gated-attention
    /// layers among its DeltaNet ones.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attention_overrides: BTreeMap<usize, Vec<Projection>>,
    /// Full name of the router linear, e.g. `model.layers.{layer}.mlp.gate`.
    pub router: String,
    pub router_in: usize,
}

impl ModuleLayout {
    /// Decoder layer `layer`'s attention projections.
    pub fn attention_projections_of(&self, layer: usize) -> &[Projection] {
        self.attention_overrides
            .get(&layer)
            .unwrap_or(&self.attention_projections)
    }

    pub fn expert_module(&self, layer: usize, expert: usize, proj: &str) -> String {
        format!(
            "{}.{proj}",
            self.expert_prefix
                .replace("{layer}", &layer.to_string())
                .replace("{expert}", &expert.to_string())
        )
    }
}

/// How a decoder layer mixes tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKind {
    /// Causal softmax attention over the whole context.
    Full,
    /// Causal softmax attention over the last `window` tokens.
    Sliding { window: usize },
    /// A linear-attention recurrence (gated DeltaNet) instead of softmax attention.
    Linear,
}

impl AttentionKind {
    /// A short name for tables: `full`, `sliding 4096`, `linear`.
    pub fn label(self) -> String {
        match self {
            AttentionKind::Full => "full".into(),
            AttentionKind::Sliding { window } => format!("sliding {window}"),
            AttentionKind::Linear => "linear".into(),
        }
    }
}

/// What the routing heatmap's rows (the MoE layers) leave out or differ in: the dense layers
/// and the linear-attention layers, e.g. `dense (no routing): 0-2 · linear attention: 3-5,
/// 7-9`; empty when every layer is an MoE layer with softmax attention. `kinds` is each
/// layer's token mixing (empty: unknown, all softmax attention).
pub fn layer_kinds_caption(
    num_layers: usize,
    moe_layers: &[usize],
    kinds: &[AttentionKind],
) -> String {
    let mut parts = Vec::new();
    let dense: Vec<usize> = (0..num_layers)
        .filter(|l| !moe_layers.contains(l))
        .collect();
    if !dense.is_empty() {
        parts.push(format!("dense (no routing): {}", layer_ranges(&dense)));
    }
    let linear: Vec<usize> = (0..kinds.len())
        .filter(|&l| kinds[l] == AttentionKind::Linear)
        .collect();
    if !linear.is_empty() {
        parts.push(format!("linear attention: {}", layer_ranges(&linear)));
    }
    parts.join(" · ")
}

/// A heatmap row label for MoE layer `layer`: `L12`, or `L12 lin` for a linear-attention layer.
pub fn row_label(layer: usize, kinds: &[AttentionKind]) -> String {
    match kinds.get(layer) {
        Some(AttentionKind::Linear) => format!("L{layer} lin"),
        _ => format!("L{layer}"),
    }
}

/// `0-2, 5, 7-9`: ascending layer indices as ranges.
pub fn layer_ranges(layers: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < layers.len() {
        let mut j = i;
        while j + 1 < layers.len() && layers[j + 1] == layers[j] + 1 {
            j += 1;
        }
        parts.push(if j == i {
            layers[i].to_string()
        } else {
            format!("{}-{}", layers[i], layers[j])
        });
        i = j + 1;
    }
    parts.join(", ")
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
    /// Each decoder layer's token mixing; empty (older profiles) means all full attention.
    #[serde(default)]
    pub attention_kinds: Vec<AttentionKind>,
    pub num_experts: usize,
    pub top_k: usize,
    pub num_shared_experts: usize,
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub total_params: u64,
    pub active_params: u64,
    /// The weights' dtype.
    pub dtype: String,
    /// Weight matrices are read in place from the mapped checkpoint files.
    #[serde(default)]
    pub mapped: bool,
    pub device: String,
    pub score_fn: ScoreFn,
    pub layout: ModuleLayout,
    /// How each class of tensors is stored, for quantised files (`routed experts`: `Q4_K`);
    /// empty for checkpoints in one plain dtype.
    #[serde(default)]
    pub storage: Vec<TensorStorage>,
}

/// How one class of a model's tensors is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorStorage {
    /// `embeddings`, `attention`, `router`, `routed experts`, …
    pub class: String,
    /// `Q4_K`, or a mix such as `Q4_K ×40, Q6_K ×8` (tensor counts).
    pub format: String,
}

impl ModelInfo {
    /// Layer `layer`'s token mixing.
    pub fn attention_kind(&self, layer: usize) -> AttentionKind {
        self.attention_kinds
            .get(layer)
            .copied()
            .unwrap_or(AttentionKind::Full)
    }

    /// One word per layer kind for tables: `full attention, MoE` etc.
    pub fn layer_description(&self, layer: usize) -> String {
        let ff = if self.moe_layers.contains(&layer) {
            "MoE"
        } else {
            "dense"
        };
        let attn = match self.attention_kind(layer) {
            AttentionKind::Linear => "linear attention".to_string(),
            other => format!("{} attention", other.label()),
        };
        format!("{attn}, {ff}")
    }

    /// Parameters of all experts in one MoE layer that a token does not use (for active counts).
    pub fn inactive_params(&self) -> u64 {
        let per_expert: u64 = self
            .layout
            .expert_projections
            .iter()
            .map(|p| (p.in_features * p.out_features) as u64)
            .sum();
        self.moe_layers.len() as u64 * (self.num_experts - self.top_k) as u64 * per_expert
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_ranges_join_consecutive_layers() {
        assert_eq!(layer_ranges(&[0, 1, 2, 5, 7, 8, 9]), "0-2, 5, 7-9");
        assert_eq!(layer_ranges(&[3]), "3");
        assert_eq!(layer_ranges(&[]), "");
    }

    #[test]
    fn heatmap_caption_names_dense_and_linear_attention_layers() {
        // Three layers, MoE at 1 and 2.
        assert_eq!(
            layer_kinds_caption(3, &[1, 2], &[]),
            "dense (no routing): 0"
        );
        assert_eq!(row_label(1, &[]), "L1");
        let kinds = [
            AttentionKind::Linear,
            AttentionKind::Linear,
            AttentionKind::Full,
        ];
        assert_eq!(
            layer_kinds_caption(3, &[1, 2], &kinds),
            "dense (no routing): 0 · linear attention: 0-1"
        );
        assert_eq!(row_label(1, &kinds), "L1 lin");
    }
}
