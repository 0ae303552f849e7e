//! The routing shape of a model from its `config.json` alone: decoder layers, which of them are
//! MoE, routed experts and top-k. Imported routing needs nothing else, so nothing else is read
//! (no tokenizer, no weights: the models whose routing is imported are the ones too big to
//! load).
//!
//! Each family's rule is the one its loader builds (and the tests check the two agree on every
//! fixture): all layers MoE (OLMoE, Mixtral, MiniMax-M2, PhiMoE, gpt-oss, Qwen3.5-MoE, Gemma 4
//! with `enable_moe_block`), Qwen's `mlp_only_layers` / `decoder_sparse_step`, and DeepSeek's and
//! GLM's `first_k_dense_replace`.

use std::path::Path;

use serde_json::Value;

use crate::model::info::{AttentionKind, Family, ModuleLayout};
use crate::model::loader::detect_family;
use crate::model::router::ScoreFn;
use crate::profile::ProfileModel;

/// What an importer needs to know about the model whose routing it reads.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingShape {
    pub id: String,
    pub family: Family,
    /// Decoder layers (`num_hidden_layers`).
    pub num_layers: usize,
    /// Decoder layers with routed experts, ascending.
    pub moe_layers: Vec<usize>,
    pub num_experts: usize,
    pub top_k: usize,
    pub score_fn: ScoreFn,
    /// Module names and projection shapes (for parameter accounting and PEFT export), when the
    /// config has everything the family's loader needs.
    pub layout: Option<ModuleLayout>,
    /// Each decoder layer's token mixing (empty without a layout).
    pub attention_kinds: Vec<AttentionKind>,
    /// Why there is no layout, if there is none.
    pub layout_missing: Option<String>,
}

impl RoutingShape {
    /// Reads `config.json` at `path`; `id` names the model in the profile.
    pub fn from_config_file(path: &Path, id: &str) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
        let mut shape = Self::from_config(path, &json, id)?;
        match crate::model::families::layout_from_config(shape.family, &text) {
            Ok((layout, kinds)) => {
                shape.layout = Some(layout);
                shape.attention_kinds = kinds;
            }
            Err(e) => shape.layout_missing = Some(e.to_string()),
        }
        Ok(shape)
    }

    /// The routing shape of a parsed `config.json` (`path` names it in errors); no layout
    /// ([`RoutingShape::from_config_file`] adds it).
    pub fn from_config(path: &Path, json: &Value, id: &str) -> Result<Self, String> {
        let family = detect_family(path, json).map_err(|e| e.to_string())?;
        // Multimodal repos (Qwen3.5, Gemma 4) nest the language model in `text_config`.
        let c = json.get("text_config").unwrap_or(json);
        let bad = |msg: String| format!("{}: {msg}", path.display());
        let int = |key: &str| c.get(key).and_then(Value::as_u64).map(|v| v as usize);
        let need = |keys: &[&str]| {
            keys.iter().find_map(|k| int(k)).ok_or_else(|| {
                bad(format!(
                    "{} config has no {}",
                    family.model_type(),
                    keys.join(" / ")
                ))
            })
        };
        let num_layers = need(&["num_hidden_layers", "n_layer", "num_layers"])?;
        let num_experts = need(&[
            "num_experts",
            "n_routed_experts",
            "num_local_experts",
            "moe_num_experts",
        ])?;
        let top_k = need(&["num_experts_per_tok", "top_k_experts", "experts_per_token"])?;
        let moe_layers: Vec<usize> = match family {
            Family::Qwen2Moe | Family::Qwen3Moe => {
                let mlp_only: Vec<usize> = c
                    .get("mlp_only_layers")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_u64)
                            .map(|v| v as usize)
                            .collect()
                    })
                    .unwrap_or_default();
                crate::model::families::qwen2_moe::qwen_moe_layers(
                    num_layers,
                    num_experts,
                    int("decoder_sparse_step").unwrap_or(1),
                    &mlp_only,
                )
            }
            Family::DeepseekV2 | Family::DeepseekV3 | Family::Glm4Moe => {
                let first_dense = int("first_k_dense_replace").unwrap_or(0);
                (first_dense..num_layers).collect()
            }
            Family::Gemma4 => {
                if c.get("enable_moe_block").and_then(Value::as_bool) == Some(false) {
                    Vec::new()
                } else {
                    (0..num_layers).collect()
                }
            }
            _ => (0..num_layers).collect(),
        };
        if moe_layers.is_empty() || num_experts == 0 {
            return Err(bad(format!(
                "the config has no MoE layers ({num_layers} decoder layers, {num_experts} \
                 routed experts): there is no routing to import"
            )));
        }
        if top_k == 0 || top_k > num_experts {
            return Err(bad(format!("top-k {top_k} is outside 1..={num_experts}")));
        }
        let sigmoid = c.get("scoring_func").and_then(Value::as_str) == Some("sigmoid")
            || matches!(family, Family::MiniMaxM2 | Family::Glm4Moe)
            || (family == Family::DeepseekV3 && c.get("scoring_func").is_none());
        Ok(Self {
            id: id.to_string(),
            family,
            num_layers,
            moe_layers,
            num_experts,
            top_k,
            score_fn: if sigmoid {
                ScoreFn::Sigmoid
            } else {
                ScoreFn::Softmax
            },
            layout: None,
            attention_kinds: Vec::new(),
            layout_missing: None,
        })
    }

    /// The profile's model record.
    pub fn profile_model(&self) -> ProfileModel {
        ProfileModel {
            id: self.id.clone(),
            architecture: self.family.architecture().to_string(),
            moe_layers: self.moe_layers.clone(),
            num_experts: self.num_experts,
            top_k: self.top_k,
            score_fn: self.score_fn,
            layout: self.layout.clone(),
            attention_kinds: self.attention_kinds.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(json: &str) -> Result<RoutingShape, String> {
        let v: Value = serde_json::from_str(json).unwrap();
        RoutingShape::from_config(Path::new("config.json"), &v, "m")
    }

    #[test]
    fn deepseek_v3_first_dense_layers() {
        let s = shape(
            r#"{"architectures": ["DeepseekV3ForCausalLM"], "num_hidden_layers": 61,
                "first_k_dense_replace": 3, "n_routed_experts": 256, "num_experts_per_tok": 8,
                "scoring_func": "sigmoid"}"#,
        )
        .unwrap();
        assert_eq!(s.moe_layers, (3..61).collect::<Vec<_>>());
        assert_eq!((s.num_experts, s.top_k, s.num_layers), (256, 8, 61));
        assert_eq!(s.score_fn, ScoreFn::Sigmoid);
    }

    #[test]
    fn qwen_sparse_step_and_nested_text_config() {
        let s = shape(
            r#"{"model_type": "qwen2_moe", "num_hidden_layers": 4, "num_experts": 8,
                "num_experts_per_tok": 2, "decoder_sparse_step": 2, "mlp_only_layers": [3]}"#,
        )
        .unwrap();
        assert_eq!(s.moe_layers, vec![1]);
        let s = shape(
            r#"{"architectures": ["Qwen3_5MoeForConditionalGeneration"],
                "text_config": {"num_hidden_layers": 40, "num_experts": 256,
                                "num_experts_per_tok": 8}}"#,
        )
        .unwrap();
        assert_eq!(s.moe_layers.len(), 40);
        assert_eq!(s.score_fn, ScoreFn::Softmax);
    }

    #[test]
    fn configs_without_moe_layers_or_fields_are_errors() {
        let err = shape(
            r#"{"model_type": "olmoe", "num_hidden_layers": 0, "num_experts": 8,
                "num_experts_per_tok": 2}"#,
        )
        .unwrap_err();
        assert!(err.contains("no MoE layers"), "{err}");
        let err = shape(r#"{"model_type": "olmoe", "num_hidden_layers": 2, "num_experts": 8}"#)
            .unwrap_err();
        assert!(
            err.contains("config.json") && err.contains("num_experts_per_tok"),
            "{err}"
        );
        let err = shape(r#"{"model_type": "llama", "num_hidden_layers": 2}"#).unwrap_err();
        assert!(err.contains("unsupported model"), "{err}");
    }
}
