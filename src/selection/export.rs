//! Exports of a selection for other tools:
//!
//! - a PEFT `adapter_config.json` (LoRA, `target_modules` as a sorted list of full module names
//!   built from the family's [`ModuleLayout`] templates, e.g.
//!   `model.layers.3.mlp.experts.5.gate_proj` for OLMoE/Qwen or
//!   `model.layers.3.block_sparse_moe.experts.5.w1` for Mixtral), written into an adapter folder;
//! - an initial adapter for PEFT to train in the padded or fused form, where the unselected
//!   experts are present and must stay exactly zero ([`write_peft_adapter`]);
//! - the ESFT-style expert config `{"experts": {"<layer>": [ids]}, "shared_experts": bool,
//!   "non_expert_modules": bool}` (every MoE layer listed, possibly with no experts).
//!
//! DESIGN.md "PEFT adapter": per-expert `target_modules` load in transformers 4.x + PEFT (not in
//! transformers 5.x, which fuses experts; there the fused form's `target_parameters` do).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::accounting::AdapterScope;
use super::{Selection, SelectionError};
use crate::model::adapter::AdapterTarget;
use crate::model::adapter::config::{
    AdapterForm, AdapterFormChoice, AdapterSettings, PeftTargets, peft_config,
};
use crate::model::adapter::init::{FreshModule, write_initial_adapter};
use crate::model::{Family, ModuleLayout, Projection};

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
    fn settings(&self) -> AdapterSettings {
        AdapterSettings {
            rank: self.rank,
            alpha: self.alpha,
            dropout: self.dropout,
            use_rslora: false,
            base_model: self.base_model.clone(),
        }
    }

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

/// One module an adapter on the selection trains: its full name and `in → out` dimensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetModule {
    pub name: String,
    pub in_features: usize,
    pub out_features: usize,
}

/// Every projection the adapter targets, sorted by name: the selected experts' projections plus
/// the attention / router / shared-expert modules in `scope`.
pub fn target_projections(
    selection: &Selection,
    layout: &ModuleLayout,
    scope: &AdapterScope,
) -> Vec<TargetModule> {
    let moe_layers = &selection.model.moe_layers;
    let module = |name: String, p: &Projection| TargetModule {
        name,
        in_features: p.in_features,
        out_features: p.out_features,
    };
    let mut modules: Vec<TargetModule> = selection
        .cells()
        .flat_map(|(layer, expert)| {
            layout
                .expert_projections
                .iter()
                .map(move |p| module(layout.expert_module(layer, expert, &p.name), p))
        })
        .collect();
    if scope.attention {
        for layer in 0..scope.decoder_layers(moe_layers) {
            for p in layout.attention_projections_of(layer) {
                let prefix = fill(&layout.attention_prefix, layer);
                modules.push(module(format!("{prefix}.{}", p.name), p));
            }
        }
    }
    if scope.router {
        modules.extend(moe_layers.iter().map(|&l| TargetModule {
            name: fill(&layout.router, l),
            in_features: layout.router_in,
            out_features: selection.model.num_experts,
        }));
    }
    if scope.shared_experts
        && let Some(prefix) = &layout.shared_expert_prefix
    {
        for &layer in moe_layers {
            for p in &layout.shared_expert_projections {
                modules.push(module(format!("{}.{}", fill(prefix, layer), p.name), p));
            }
        }
    }
    modules.sort_by(|a, b| a.name.cmp(&b.name));
    modules.dedup_by(|a, b| a.name == b.name);
    modules
}

/// Full module names of every projection the adapter targets, sorted (see
/// [`target_projections`]).
pub fn target_modules(
    selection: &Selection,
    layout: &ModuleLayout,
    scope: &AdapterScope,
) -> Vec<String> {
    target_projections(selection, layout, scope)
        .into_iter()
        .map(|m| m.name)
        .collect()
}

/// The PEFT `adapter_config.json` of a LoRA adapter on the selection.
pub fn peft_adapter_config(
    selection: &Selection,
    layout: &ModuleLayout,
    options: &PeftOptions,
) -> Value {
    peft_config(
        &options.settings(),
        &PeftTargets::modules(&target_modules(selection, layout, &options.scope)),
    )
}

fn check_exportable(selection: &Selection, options: &PeftOptions) -> Result<(), SelectionError> {
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
    Ok(())
}

/// Writes `adapter_config.json` into `dir` (created if missing), atomically; returns its path.
pub fn write_peft_config(
    dir: &Path,
    selection: &Selection,
    layout: &ModuleLayout,
    options: &PeftOptions,
) -> Result<PathBuf, SelectionError> {
    check_exportable(selection, options)?;
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

/// The form `choice` means for a model of `architecture`; `auto` also reads `base_model`'s
/// config.json when it is a local folder (a checkpoint transformers 5 saved gets the fused
/// form). Architectures MoEScope does not know (imported profiles) get per-expert for `auto`.
pub fn resolve_adapter_form(
    choice: AdapterFormChoice,
    architecture: &str,
    base_model: &str,
) -> AdapterForm {
    let Some(family) = Family::from_architecture(architecture) else {
        return match choice {
            AdapterFormChoice::Padded => AdapterForm::Padded,
            AdapterFormChoice::Fused => AdapterForm::Fused,
            AdapterFormChoice::Auto | AdapterFormChoice::PerExpert => AdapterForm::PerExpert,
        };
    };
    let config = std::fs::read(Path::new(base_model).join("config.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null);
    choice.resolve(family, &config)
}

/// Writes the adapter folder a PEFT training run on the selection starts from, in `form`;
/// returns the paths written.
///
/// - `per-expert`: `adapter_config.json` alone ([`write_peft_config`]): its `target_modules` are
///   the selected experts' own modules, and PEFT initialises them.
/// - `padded` and `fused`: the config and an initial `adapter_model.safetensors`. Every expert of
///   an adapted layer (for `padded`, of every MoE layer) is in the adapter; the selected experts and the
///   `scope` modules start as PEFT starts a pair (`A` Kaiming-uniform, drawn from `seed` and the
///   module's name; `B` zero), every other expert with `A` and `B` both exactly zero. With both
///   factors zero an expert's gradients are zero, so it stays exactly zero under SGD and AdamW
///   alike (weight decay of zero is zero) when the folder is trained with
///   `PeftModel.from_pretrained(model, DIR, is_trainable=True)`.
pub fn write_peft_adapter(
    dir: &Path,
    selection: &Selection,
    layout: &ModuleLayout,
    options: &PeftOptions,
    form: AdapterForm,
    seed: u64,
) -> Result<Vec<PathBuf>, SelectionError> {
    if form == AdapterForm::PerExpert {
        return Ok(vec![write_peft_config(dir, selection, layout, options)?]);
    }
    check_exportable(selection, options)?;
    let architecture = &selection.model.architecture;
    let family = Family::from_architecture(architecture).ok_or_else(|| {
        SelectionError::Invalid(format!(
            "the {} form needs the model's family, and '{architecture}' is not one MoEScope \
             knows; write the per-expert form (--adapter-form per-expert)",
            form.label()
        ))
    })?;
    let fresh = |m: TargetModule, trained: bool| FreshModule {
        name: m.name,
        in_features: m.in_features,
        out_features: m.out_features,
        trained,
    };
    let mut modules: Vec<FreshModule> = target_projections(selection, layout, &options.scope)
        .into_iter()
        .map(|m| fresh(m, true))
        .collect();
    if form == AdapterForm::Padded {
        // PEFT's transformers-5 conversion of per-expert keys targets `gate_up_proj` /
        // `down_proj` in every layer once one layer has them, initialising the layers the
        // adapter lacks as trainable: so every MoE layer is padded, with zeros (the form pads
        // the other experts of a layer with one expert present).
        for &layer in &selection.model.moe_layers {
            for p in &layout.expert_projections {
                let name = layout.expert_module(layer, 0, &p.name);
                if !modules.iter().any(|m| m.name == name) {
                    let m = TargetModule {
                        name,
                        in_features: p.in_features,
                        out_features: p.out_features,
                    };
                    modules.push(fresh(m, false));
                }
            }
        }
    }
    let target = AdapterTarget { family, layout };
    write_initial_adapter(
        dir,
        &options.settings(),
        &modules,
        form,
        target,
        selection.model.num_experts,
        seed,
    )
    .map_err(|e| SelectionError::Invalid(e.to_string()))
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

    /// Rows (`axis` 0) or columns of `key`'s tensor in an adapter folder, as f32 vectors.
    fn lora_tensor(dir: &Path, key: &str) -> (Vec<usize>, Vec<f32>) {
        let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor(key).unwrap();
        let values = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (t.shape().to_vec(), values)
    }

    fn rows_nonzero(shape: &[usize], values: &[f32]) -> Vec<bool> {
        values
            .chunks_exact(shape[1])
            .map(|row| row.iter().any(|&v| v != 0.0))
            .collect()
    }

    #[test]
    fn fused_initial_adapter_holds_every_expert_with_zeros_outside_the_selection() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("fused");
        let mut opts = PeftOptions::moe_sieve("tiny-olmoe");
        opts.rank = 2;
        opts.alpha = 4.0;
        let written = write_peft_adapter(
            &out,
            &selection(),
            &olmoe_layout(),
            &opts,
            AdapterForm::Fused,
            7,
        )
        .unwrap();
        assert_eq!(written.len(), 2);
        let v: Value = serde_json::from_slice(&std::fs::read(&written[0]).unwrap()).unwrap();
        // PEFT's ParamWrapper refuses dropout; gate + up make one rank-2r pair at the same scale.
        assert_eq!(v["lora_dropout"], 0.0);
        let params: Vec<&str> = v["target_parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert!(
            params.contains(&"model.layers.0.mlp.experts.gate_up_proj"),
            "{params:?}"
        );
        assert!(
            params.contains(&"model.layers.1.mlp.experts.down_proj"),
            "{params:?}"
        );
        assert_eq!(
            v["rank_pattern"]["model.layers.0.mlp.experts.gate_up_proj"],
            4
        );
        assert_eq!(
            v["alpha_pattern"]["model.layers.0.mlp.experts.gate_up_proj"],
            8.0
        );

        // Layer 0 selects expert 2 of 4: gate_up A is [4 experts · rank 4, H 16].
        let key = "base_model.model.model.layers.0.mlp.experts.base_layer.lora_A.weight";
        let (shape, a) = lora_tensor(&out, key);
        assert_eq!(shape, vec![16, 16]);
        let expected: Vec<bool> = (0..16).map(|row| row / 4 == 2).collect();
        assert_eq!(rows_nonzero(&shape, &a), expected);
        // Layer 1 selects expert 3: down A is [4 · 2, I 8].
        let (shape, a) = lora_tensor(
            &out,
            "base_model.model.model.layers.1.mlp.experts.lora_A.weight",
        );
        assert_eq!(shape, vec![8, 8]);
        let expected: Vec<bool> = (0..8).map(|row| row / 2 == 3).collect();
        assert_eq!(rows_nonzero(&shape, &a), expected);
        // Every B starts at zero: the adapter changes nothing until trained.
        for key in [
            "base_model.model.model.layers.0.mlp.experts.base_layer.lora_B.weight",
            "base_model.model.model.layers.0.mlp.experts.lora_B.weight",
        ] {
            assert!(lora_tensor(&out, key).1.iter().all(|&v| v == 0.0), "{key}");
        }
        // PEFT's bound for A: 1/√in.
        assert!(a.iter().all(|v| v.abs() <= 1.0 / 8f32.sqrt()));
    }

    #[test]
    fn padded_initial_adapter_has_every_expert_and_per_expert_stays_config_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = PeftOptions::moe_sieve("tiny-olmoe");
        opts.rank = 2;
        let padded = dir.path().join("padded");
        // Only layer 1 is selected; layer 0 is padded too (zeros), so that PEFT's
        // transformers-5 conversion does not make it trainable.
        let layer1_only = Selection::explicit(selection().model, [(1, 3)]).unwrap();
        write_peft_adapter(
            &padded,
            &layer1_only,
            &olmoe_layout(),
            &opts,
            AdapterForm::Padded,
            7,
        )
        .unwrap();
        let v: Value =
            serde_json::from_slice(&std::fs::read(padded.join("adapter_config.json")).unwrap())
                .unwrap();
        // Every MoE layer (2) · 4 experts · 3 projections.
        assert_eq!(v["target_modules"].as_array().unwrap().len(), 24);
        let a_of = |layer: usize, expert: usize| {
            let key = format!(
                "base_model.model.model.layers.{layer}.mlp.experts.{expert}.gate_proj.lora_A.weight"
            );
            lora_tensor(&padded, &key).1
        };
        assert!(a_of(1, 3).iter().any(|&v| v != 0.0));
        assert!(a_of(1, 1).iter().all(|&v| v == 0.0));
        assert!(a_of(0, 3).iter().all(|&v| v == 0.0));

        let per_expert = dir.path().join("per_expert");
        let written = write_peft_adapter(
            &per_expert,
            &selection(),
            &olmoe_layout(),
            &opts,
            AdapterForm::PerExpert,
            7,
        )
        .unwrap();
        assert_eq!(written, vec![per_expert.join("adapter_config.json")]);
        assert!(!per_expert.join("adapter_model.safetensors").exists());
    }

    #[test]
    fn fused_form_needs_a_known_family() {
        let dir = tempfile::tempdir().unwrap();
        let mut sel = selection();
        sel.model.architecture = "SomethingElseForCausalLM".into();
        let opts = PeftOptions::moe_sieve("x");
        let err = write_peft_adapter(
            dir.path(),
            &sel,
            &olmoe_layout(),
            &opts,
            AdapterForm::Fused,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("SomethingElseForCausalLM") && err.contains("per-expert"),
            "{err}"
        );
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
