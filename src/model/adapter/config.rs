//! PEFT's `adapter_config.json` for a LoRA adapter: the one builder, used by adapter writing
//! and by selection exports. Plain serde, no tensors.

use serde_json::{Value, json};

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
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
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

/// PEFT's `adapter_config.json` for a LoRA adapter on exactly `target_modules`.
pub fn peft_config(settings: &AdapterSettings, target_modules: &[String]) -> Value {
    let mut modules = target_modules.to_vec();
    modules.sort();
    modules.dedup();
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": settings.base_model,
        "r": settings.rank,
        "lora_alpha": number(settings.alpha),
        "lora_dropout": settings.dropout,
        "bias": "none",
        "target_modules": modules,
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "use_rslora": settings.use_rslora,
        "use_dora": false,
    })
}
