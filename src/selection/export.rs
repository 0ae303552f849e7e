//! Exports of a selection for other tools:
//!
//! - a PEFT `adapter_config.json` (LoRA, `target_modules` as a sorted list of full module names
//!   built from the family's [`ModuleLayout`] templates, e.g.
//!   `model.layers.3.mlp.experts.5.gate_proj` for OLMoE/Qwen or
//!   `model.layers.3.block_sparse_moe.experts.5.w1` for Mixtral), written into an adapter folder;
//! - the ESFT-style expert config `{"experts": {"<layer>": [ids]}, "shared_experts": bool,
//!   "non_expert_modules": bool}` (every MoE layer listed, possibly with no experts).
//!
//! DESIGN.md "PEFT adapter": per-expert `target_modules` load in transformers 4.x + PEFT (not in
//! transformers 5.x, which fuses experts).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::accounting::AdapterScope;
use super::{Selection, SelectionError};
use crate::model::ModuleLayout;
use crate::model::adapter::config::{AdapterSettings, PeftTargets, peft_config};

/// LoRA hyper-parameters and scope written into `adapter_config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftOptions {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// `base_model_name_or_path`: the hub id or folder of the base model.
    pub base_model: String,
    pub scope: AdapterScope,
}

impl PeftOptions {
    /// MoE-Sieve's defaults: rank 32, α 64, dropout 0.05, experts only.
    pub fn moe_sieve(base_model: &str) -> Self {
        Self {
            rank: 32,
            alpha: 64.0,
            dropout: 0.05,
            base_model: base_model.to_string(),
            scope: AdapterScope::default(),
        }
    }
}

fn fill(template: &str, layer: usize) -> String {
    template.replace("{layer}", &layer.to_string())
}

/// Full module names of every projection the adapter targets, sorted: the selected experts'
/// projections plus the attention / router / shared-expert modules in `scope`.
pub fn target_modules(
    selection: &Selection,
    layout: &ModuleLayout,
    scope: &AdapterScope,
) -> Vec<String> {
    let moe_layers = &selection.model.moe_layers;
    let mut modules: Vec<String> = selection
        .cells()
        .flat_map(|(layer, expert)| {
            layout
                .expert_projections
                .iter()
                .map(move |p| layout.expert_module(layer, expert, &p.name))
        })
        .collect();
    if scope.attention {
        for layer in 0..scope.decoder_layers(moe_layers) {
            for p in &layout.attention_projections {
                modules.push(format!(
                    "{}.{}",
                    fill(&layout.attention_prefix, layer),
                    p.name
                ));
            }
        }
    }
    if scope.router {
        modules.extend(moe_layers.iter().map(|&l| fill(&layout.router, l)));
    }
    if scope.shared_experts
        && let Some(prefix) = &layout.shared_expert_prefix
    {
        for &layer in moe_layers {
            for p in &layout.shared_expert_projections {
                modules.push(format!("{}.{}", fill(prefix, layer), p.name));
            }
        }
    }
    modules.sort();
    modules.dedup();
    modules
}

/// The PEFT `adapter_config.json` of a LoRA adapter on the selection.
pub fn peft_adapter_config(
    selection: &Selection,
    layout: &ModuleLayout,
    options: &PeftOptions,
) -> Value {
    let settings = AdapterSettings {
        rank: options.rank,
        alpha: options.alpha,
        dropout: options.dropout,
        use_rslora: false,
        base_model: options.base_model.clone(),
    };
    peft_config(
        &settings,
        &PeftTargets::modules(&target_modules(selection, layout, &options.scope)),
    )
}

/// Writes `adapter_config.json` into `dir` (created if missing), atomically; returns its path.
pub fn write_peft_config(
    dir: &Path,
    selection: &Selection,
    layout: &ModuleLayout,
    options: &PeftOptions,
) -> Result<PathBuf, SelectionError> {
    if options.rank == 0 {
        return Err(SelectionError::Invalid(
            "LoRA rank must be at least 1".into(),
        ));
    }
    if selection.is_empty() && options.scope == AdapterScope::default() {
        return Err(SelectionError::Invalid(
            "the selection is empty: the adapter would target no module".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| SelectionError::io(dir, e))?;
    let path = dir.join("adapter_config.json");
    let bytes = serde_json::to_vec_pretty(&peft_adapter_config(selection, layout, options))
        .map_err(|source| SelectionError::Json {
            path: path.display().to_string(),
            source,
        })?;
    crate::io::write_atomic(&path, &bytes).map_err(|e| SelectionError::io(&path, e))?;
    Ok(path)
}

/// ESFT's two switches besides the expert list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EsftOptions {
    /// Also train the shared experts.
    pub shared_experts: bool,
    /// Also train non-expert modules (attention, norms, embeddings).
    pub non_expert_modules: bool,
}

/// The ESFT-style expert config: every MoE layer (decoder index as a string key) with its
/// selected expert ids, ascending.
pub fn esft_config(selection: &Selection, options: &EsftOptions) -> Value {
    let experts: serde_json::Map<String, Value> = selection
        .model
        .moe_layers
        .iter()
        .map(|&layer| {
            let ids: Vec<usize> = selection
                .experts
                .get(&layer)
                .map(|e| e.iter().copied().collect())
                .unwrap_or_default();
            (layer.to_string(), json!(ids))
        })
        .collect();
    json!({
        "experts": experts,
        "shared_experts": options.shared_experts,
        "non_expert_modules": options.non_expert_modules,
    })
}

/// Writes the ESFT expert config to `path` atomically.
pub fn write_esft_config(
    path: &Path,
    selection: &Selection,
    options: &EsftOptions,
) -> Result<(), SelectionError> {
    let bytes = serde_json::to_vec_pretty(&esft_config(selection, options)).map_err(|source| {
        SelectionError::Json {
            path: path.display().to_string(),
            source,
        }
    })?;
    crate::io::write_atomic(path, &bytes).map_err(|e| SelectionError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Projection;
    use crate::selection::SelectionModel;
    use crate::selection::accounting::tests::{olmoe_layout, profile_with_layout};

    fn selection() -> Selection {
        let p = profile_with_layout();
        Selection::explicit(SelectionModel::from(&p.model), [(1, 3), (0, 2)]).unwrap()
    }

    #[test]
    fn target_modules_list_exactly_the_selected_projections() {
        let modules = target_modules(&selection(), &olmoe_layout(), &AdapterScope::default());
        assert_eq!(
            modules,
            vec![
                "model.layers.0.mlp.experts.2.down_proj",
                "model.layers.0.mlp.experts.2.gate_proj",
                "model.layers.0.mlp.experts.2.up_proj",
                "model.layers.1.mlp.experts.3.down_proj",
                "model.layers.1.mlp.experts.3.gate_proj",
                "model.layers.1.mlp.experts.3.up_proj",
            ]
        );
    }

    #[test]
    fn mixtral_names_and_extra_modules() {
        let mut layout = olmoe_layout();
        layout.expert_prefix = "model.layers.{layer}.block_sparse_moe.experts.{expert}".into();
        layout.expert_projections = vec![
            Projection::new("w1", 16, 8),
            Projection::new("w2", 8, 16),
            Projection::new("w3", 16, 8),
        ];
        layout.router = "model.layers.{layer}.block_sparse_moe.gate".into();
        layout.shared_expert_prefix = Some("model.layers.{layer}.mlp.shared_experts".into());
        layout.shared_expert_projections = vec![Projection::new("down_proj", 8, 16)];
        let scope = AdapterScope {
            attention: true,
            router: true,
            shared_experts: true,
            num_decoder_layers: None,
        };
        let sel = Selection::explicit(selection().model, [(1, 0)]).unwrap();
        let modules = target_modules(&sel, &layout, &scope);
        assert!(modules.contains(&"model.layers.1.block_sparse_moe.experts.0.w1".to_string()));
        assert!(modules.contains(&"model.layers.1.block_sparse_moe.gate".to_string()));
        assert!(modules.contains(&"model.layers.0.self_attn.q_proj".to_string()));
        assert!(modules.contains(&"model.layers.1.mlp.shared_experts.down_proj".to_string()));
        // 3 expert + 2·4 attention + 2 router + 2 shared.
        assert_eq!(modules.len(), 15);
        let mut sorted = modules.clone();
        sorted.sort();
        assert_eq!(modules, sorted);
    }

    #[test]
    fn peft_config_written_into_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("adapter");
        let opts = PeftOptions::moe_sieve("allenai/OLMoE-1B-7B-0924");
        let path = write_peft_config(&out, &selection(), &olmoe_layout(), &opts).unwrap();
        assert_eq!(path, out.join("adapter_config.json"));
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["peft_type"], "LORA");
        assert_eq!(v["task_type"], "CAUSAL_LM");
        assert_eq!(v["r"], 32);
        assert_eq!(v["lora_alpha"], 64);
        assert!(v["lora_alpha"].is_u64());
        assert_eq!(v["lora_dropout"], 0.05);
        assert_eq!(v["bias"], "none");
        assert_eq!(v["base_model_name_or_path"], "allenai/OLMoE-1B-7B-0924");
        assert_eq!(v["target_modules"].as_array().unwrap().len(), 6);
        let empty = Selection::explicit(selection().model, []).unwrap();
        assert!(write_peft_config(&out, &empty, &olmoe_layout(), &opts).is_err());
    }

    #[test]
    fn esft_config_lists_every_moe_layer() {
        let s = Selection::explicit(selection().model, [(1, 3), (1, 0)]).unwrap();
        let v = esft_config(
            &s,
            &EsftOptions {
                shared_experts: true,
                non_expert_modules: false,
            },
        );
        assert_eq!(
            v,
            json!({"experts": {"0": [], "1": [0, 3]}, "shared_experts": true,
                   "non_expert_modules": false})
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("esft.json");
        write_esft_config(&path, &s, &EsftOptions::default()).unwrap();
        let back: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back["experts"]["1"], json!([0, 3]));
        assert_eq!(back["shared_experts"], false);
    }
}
