//! PEFT's `adapter_config.json` for a LoRA adapter: the one builder, used by adapter writing
//! and by selection exports, and the choice among the forms an adapter is written in.
//! Plain serde, no tensors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::info::Family;

/// The three ways a selective adapter is laid out for PEFT.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AdapterForm {
    /// One module per adapted expert projection (`target_modules` such as
    /// `model.layers.3.mlp.experts.5.gate_proj`), nothing for the other experts: PEFT with
    /// transformers 4.x, mistral.rs (which zero-fills the missing experts).
    #[default]
    PerExpert,
    /// The per-expert form with every expert of each adapted layer present, zero where not
    /// selected: what vLLM and SGLang need for models whose experts they keep per expert, and
    /// what PEFT's transformers-5 conversion turns into the fused form on load.
    Padded,
    /// transformers 5's fused experts (`target_parameters` on `mlp.experts.gate_up_proj` /
    /// `down_proj`, unselected experts exactly zero): PEFT ≥ 0.19 (its `ParamWrapper` layout) with transformers 5.
    Fused,
}

/// `--adapter-form`: a form, or `auto` to pick one from the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AdapterFormChoice {
    /// Fused for models only transformers 5 runs (Qwen3.5-MoE, Gemma 4, MiniMax-M2) and for
    /// checkpoints transformers 5 saved (`transformers_version` ≥ 5 in config.json); per-expert
    /// otherwise (and always for gpt-oss).
    #[default]
    Auto,
    PerExpert,
    Padded,
    Fused,
}

impl AdapterFormChoice {
    pub const ALL: [AdapterFormChoice; 4] = [
        AdapterFormChoice::Auto,
        AdapterFormChoice::PerExpert,
        AdapterFormChoice::Padded,
        AdapterFormChoice::Fused,
    ];

    /// `auto` / `per-expert` / `padded` / `fused`, as the CLI spells it.
    pub fn label(self) -> &'static str {
        match self {
            AdapterFormChoice::Auto => "auto",
            AdapterFormChoice::PerExpert => AdapterForm::PerExpert.label(),
            AdapterFormChoice::Padded => AdapterForm::Padded.label(),
            AdapterFormChoice::Fused => AdapterForm::Fused.label(),
        }
    }

    /// The form to write for `family` whose config.json is `config`.
    pub fn resolve(self, family: Family, config: &Value) -> AdapterForm {
        match self {
            AdapterFormChoice::PerExpert => AdapterForm::PerExpert,
            AdapterFormChoice::Padded => AdapterForm::Padded,
            AdapterFormChoice::Fused => AdapterForm::Fused,
            AdapterFormChoice::Auto => detect_form(family, config),
        }
    }
}

/// The form the stack that runs this checkpoint loads (see [`AdapterFormChoice::Auto`]).
pub fn detect_form(family: Family, config: &Value) -> AdapterForm {
    if family == Family::GptOss {
        return AdapterForm::PerExpert;
    }
    let transformers5_only = matches!(
        family,
        Family::Qwen3_5Moe | Family::Gemma4 | Family::MiniMaxM2
    );
    let saved_by_transformers5 = config
        .get("transformers_version")
        .and_then(Value::as_str)
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.parse::<u32>().ok())
        .is_some_and(|major| major >= 5);
    if transformers5_only || saved_by_transformers5 {
        AdapterForm::Fused
    } else {
        AdapterForm::PerExpert
    }
}

impl AdapterForm {
    /// `per-expert` / `padded` / `fused`, as the CLI spells it.
    pub fn label(self) -> &'static str {
        match self {
            AdapterForm::PerExpert => "per-expert",
            AdapterForm::Padded => "padded",
            AdapterForm::Fused => "fused",
        }
    }

    /// Which stacks load it, for messages.
    pub fn loads_in(self) -> &'static str {
        match self {
            AdapterForm::PerExpert => "PEFT with transformers 4.x, mistral.rs",
            AdapterForm::Padded => {
                "PEFT with transformers 4.x and 5.x, vLLM (per-expert MoE models), SGLang, mistral.rs"
            }
            AdapterForm::Fused => {
                "PEFT with transformers 5.x (target_parameters), vLLM (fused-expert MoE models)"
            }
        }
    }
}

/// What an adapter adapts, as PEFT names it: modules (`target_modules`), parameters
/// (`target_parameters`), and per-key ranks and alphas where they differ from `r` / `lora_alpha`
/// (PEFT matches a key against a module or parameter name as the regex `(.*\.)?(key)$`; the keys
/// written here are full names).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeftTargets {
    pub modules: Vec<String>,
    pub parameters: Vec<String>,
    pub rank_pattern: BTreeMap<String, usize>,
    pub alpha_pattern: BTreeMap<String, f64>,
}

impl PeftTargets {
    /// Plain `target_modules`, one rank and alpha.
    pub fn modules(modules: &[String]) -> Self {
        Self {
            modules: modules.to_vec(),
            ..Self::default()
        }
    }
}

/// The hyper-parameters an adapter records.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSettings {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub use_rslora: bool,
    /// `base_model_name_or_path`.
    pub base_model: String,
}

impl AdapterSettings {
    /// The factor the update `B·A` is multiplied by.
    pub fn scale(&self) -> f64 {
        self.scale_for(self.rank, self.alpha)
    }

    /// The factor of a module with its own rank and alpha (`rank_pattern` / `alpha_pattern`).
    pub fn scale_for(&self, rank: usize, alpha: f64) -> f64 {
        if self.use_rslora {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        }
    }

    /// The alpha that gives a module of `rank` this adapter's scale.
    pub fn alpha_for(&self, rank: usize) -> f64 {
        if self.use_rslora {
            self.scale() * (rank as f64).sqrt()
        } else {
            self.scale() * rank as f64
        }
    }
}

/// A JSON number: an integer when `x` is whole (PEFT writes `lora_alpha` as an int).
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// PEFT's `adapter_config.json` for a LoRA adapter on exactly `targets`. With
/// `target_parameters`, `lora_dropout` is written as 0: PEFT's parameter wrapper refuses any
/// other (dropout cannot be applied to a weight update).
pub fn peft_config(settings: &AdapterSettings, targets: &PeftTargets) -> Value {
    let sorted = |names: &[String]| {
        let mut names = names.to_vec();
        names.sort();
        names.dedup();
        names
    };
    let dropout = if targets.parameters.is_empty() {
        settings.dropout
    } else {
        0.0
    };
    let mut cfg = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": settings.base_model,
        "r": settings.rank,
        "lora_alpha": number(settings.alpha),
        "lora_dropout": dropout,
        "bias": "none",
        "target_modules": sorted(&targets.modules),
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "use_rslora": settings.use_rslora,
        "use_dora": false,
        "rank_pattern": targets.rank_pattern,
        "alpha_pattern": targets
            .alpha_pattern
            .iter()
            .map(|(k, &v)| (k.clone(), number(v)))
            .collect::<serde_json::Map<String, Value>>(),
    });
    if !targets.parameters.is_empty() {
        cfg["target_parameters"] = json!(sorted(&targets.parameters));
    }
    cfg
}
