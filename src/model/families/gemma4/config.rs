//! Gemma 4's `config.json` (the `text_config` of a `Gemma4ForConditionalGeneration`, HF field
//! names and defaults as `configuration_gemma4.py` has them) and what follows from it per
//! decoder layer: attention kind, head size, KV heads, keys-as-values, rotary frequencies.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::model::error::{ModelError, Result};
use crate::model::info::Family;

use super::super::parse_config;

/// The outer `config.json`: the language model's settings sit in `text_config`; the vision and
/// audio towers' are not read.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub text_config: TextConfig,
}

/// One layer type's `rope_parameters` entry.
#[derive(Debug, Clone, Deserialize)]
pub struct RopeParameters {
    #[serde(default = "default_rope_type")]
    pub rope_type: String,
    pub rope_theta: f64,
    /// Fraction of the head's rotary frequencies that rotate (`proportional` only).
    pub partial_rotary_factor: Option<f64>,
    /// Divides every frequency (`proportional` only).
    pub factor: Option<f64>,
}

/// `text_config` of a Gemma 4 checkpoint (`Gemma4TextConfig`).
#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Head size of the sliding-window layers.
    #[serde(default = "default_head_dim")]
    pub head_dim: usize,
    /// Head size of the full-attention layers.
    #[serde(default = "default_global_head_dim")]
    pub global_head_dim: usize,
    /// KV heads of the full-attention layers when `attention_k_eq_v` (else
    /// `num_key_value_heads`).
    pub num_global_key_value_heads: Option<usize>,
    /// Full-attention layers have no `v_proj`: the key projection (before `k_norm`) is the value.
    #[serde(default)]
    pub attention_k_eq_v: bool,
    #[serde(default = "default_activation")]
    pub hidden_activation: String,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "super::super::common::default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    pub rope_parameters: Option<BTreeMap<String, RopeParameters>>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "default_sliding_window")]
    pub sliding_window: usize,
    pub layer_types: Option<Vec<String>>,
    pub final_logit_softcapping: Option<f64>,
    pub use_bidirectional_attention: Option<String>,
    /// Per-layer input embeddings (Gemma 4 E2B / E4B); not supported.
    #[serde(default = "default_hidden_size_per_layer_input")]
    pub hidden_size_per_layer_input: usize,
    /// Layers reusing an earlier layer's keys and values (Gemma 4 E2B / E4B); not supported.
    #[serde(default)]
    pub num_kv_shared_layers: usize,
    #[serde(default)]
    pub enable_moe_block: bool,
    pub num_experts: Option<usize>,
    pub top_k_experts: Option<usize>,
    pub moe_intermediate_size: Option<usize>,
}

fn default_rope_type() -> String {
    "default".into()
}

fn default_head_dim() -> usize {
    256
}

fn default_global_head_dim() -> usize {
    512
}

fn default_activation() -> String {
    "gelu_pytorch_tanh".into()
}

fn default_max_position_embeddings() -> usize {
    131_072
}

fn default_sliding_window() -> usize {
    512
}

fn default_hidden_size_per_layer_input() -> usize {
    256
}

fn yes() -> bool {
    true
}

/// What one decoder layer's attention looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerAttention {
    /// Sliding-window attention (else full).
    pub sliding: bool,
    pub head_dim: usize,
    pub num_kv_heads: usize,
    /// Values are the keys' projection (no `v_proj`).
    pub k_eq_v: bool,
}

/// The MoE settings of a config with `enable_moe_block`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeSettings {
    pub num_experts: usize,
    pub top_k: usize,
    pub intermediate_size: usize,
}

impl Config {
    /// Parses and checks a `Gemma4ForConditionalGeneration` `config.json`.
    pub fn parse(json: &str) -> Result<Self> {
        let c: Config = parse_config(Family::Gemma4, json)?;
        c.text_config.check()?;
        Ok(c)
    }
}

impl TextConfig {
    /// Refuses the switches this implementation does not compute.
    fn check(&self) -> Result<()> {
        let refuse = |what: String| Err(ModelError::msg(format!("text_config: {what}")));
        if self.hidden_size_per_layer_input != 0 {
            return refuse(format!(
                "hidden_size_per_layer_input {} (per-layer input embeddings of Gemma 4 E2B / E4B) is not supported",
                self.hidden_size_per_layer_input
            ));
        }
        if self.num_kv_shared_layers != 0 {
            return refuse(format!(
                "num_kv_shared_layers {} (KV sharing of Gemma 4 E2B / E4B) is not supported",
                self.num_kv_shared_layers
            ));
        }
        if self.use_bidirectional_attention.as_deref() == Some("all") {
            return refuse(
                "use_bidirectional_attention \"all\" is not a causal language model".into(),
            );
        }
        if self.hidden_activation != "gelu_pytorch_tanh" {
            return refuse(format!(
                "unsupported hidden_activation '{}' (supported: gelu_pytorch_tanh)",
                self.hidden_activation
            ));
        }
        if self.num_attention_heads == 0 || self.num_key_value_heads == 0 {
            return refuse("needs attention heads".into());
        }
        for li in 0..self.num_hidden_layers {
            let a = self.layer_attention(li);
            if a.num_kv_heads == 0 || !self.num_attention_heads.is_multiple_of(a.num_kv_heads) {
                return refuse(format!(
                    "layer {li}: {} attention heads do not group over {} KV heads",
                    self.num_attention_heads, a.num_kv_heads
                ));
            }
            self.rope_inv_freq(li)?;
        }
        if let Some(types) = &self.layer_types {
            if types.len() != self.num_hidden_layers {
                return refuse(format!(
                    "layer_types has {} entries for {} layers",
                    types.len(),
                    self.num_hidden_layers
                ));
            }
            if let Some(bad) = types
                .iter()
                .find(|t| !matches!(t.as_str(), "sliding_attention" | "full_attention"))
            {
                return refuse(format!("unknown layer type '{bad}'"));
            }
        }
        self.moe()?;
        Ok(())
    }

    /// Whether layer `li` uses sliding-window attention: `layer_types`, or HF's default of
    /// five sliding layers to one full; the last layer is always full (HF forces it).
    pub fn is_sliding(&self, li: usize) -> bool {
        if li + 1 == self.num_hidden_layers {
            return false;
        }
        match &self.layer_types {
            Some(types) => types.get(li).is_some_and(|t| t == "sliding_attention"),
            None => !(li + 1).is_multiple_of(6),
        }
    }

    /// Layer `li`'s attention shape: sliding layers use `head_dim` and `num_key_value_heads`;
    /// full layers `global_head_dim`, and `num_global_key_value_heads` when keys are values.
    pub fn layer_attention(&self, li: usize) -> LayerAttention {
        if self.is_sliding(li) {
            return LayerAttention {
                sliding: true,
                head_dim: self.head_dim,
                num_kv_heads: self.num_key_value_heads,
                k_eq_v: false,
            };
        }
        let global_kv = self
            .num_global_key_value_heads
            .filter(|_| self.attention_k_eq_v);
        LayerAttention {
            sliding: false,
            head_dim: self.global_head_dim,
            num_kv_heads: global_kv.unwrap_or(self.num_key_value_heads),
            k_eq_v: self.attention_k_eq_v,
        }
    }

    /// The MoE settings, `None` without `enable_moe_block`.
    pub fn moe(&self) -> Result<Option<MoeSettings>> {
        if !self.enable_moe_block {
            return Ok(None);
        }
        let (Some(num_experts), Some(top_k), Some(intermediate_size)) = (
            self.num_experts,
            self.top_k_experts,
            self.moe_intermediate_size,
        ) else {
            return Err(ModelError::msg(
                "text_config: enable_moe_block needs num_experts, top_k_experts and moe_intermediate_size",
            ));
        };
        if top_k == 0 || top_k > num_experts {
            return Err(ModelError::msg(format!(
                "text_config: top_k_experts {top_k} with {num_experts} experts"
            )));
        }
        Ok(Some(MoeSettings {
            num_experts,
            top_k,
            intermediate_size,
        }))
    }

    /// The rotary parameters of layer `li`'s type (HF's defaults when the config has none).
    fn rope_parameters(&self, sliding: bool) -> Result<RopeParameters> {
        let key = if sliding {
            "sliding_attention"
        } else {
            "full_attention"
        };
        if let Some(p) = &self.rope_parameters {
            return p.get(key).cloned().ok_or_else(|| {
                ModelError::msg(format!("text_config: rope_parameters has no '{key}' entry"))
            });
        }
        Ok(match sliding {
            true => RopeParameters {
                rope_type: "default".into(),
                rope_theta: 10_000.0,
                partial_rotary_factor: None,
                factor: None,
            },
            false => RopeParameters {
                rope_type: "proportional".into(),
                rope_theta: 1_000_000.0,
                partial_rotary_factor: Some(0.25),
                factor: None,
            },
        })
    }

    /// Layer `li`'s rotary inverse frequencies, `head_dim / 2` of them (rotating channel `i`
    /// with `i + head_dim / 2`).
    pub fn rope_inv_freq(&self, li: usize) -> Result<Vec<f32>> {
        let a = self.layer_attention(li);
        let p = self.rope_parameters(a.sliding)?;
        match p.rope_type.as_str() {
            "default" => Ok(default_inv_freq(a.head_dim, p.rope_theta)),
            "proportional" => Ok(proportional_inv_freq(
                a.head_dim,
                p.rope_theta,
                p.partial_rotary_factor.unwrap_or(1.0),
                p.factor.unwrap_or(1.0),
            )),
            other => Err(ModelError::msg(format!(
                "text_config: unsupported rope_type '{other}' (supported: default, proportional)"
            ))),
        }
    }
}

/// `1 / theta^(2i / dim)` for `i < dim / 2`, in f32 as HF computes it.
pub fn default_inv_freq(dim: usize, theta: f64) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / dim as f32))
        .collect()
}

/// Proportional RoPE (HF `_compute_proportional_rope_parameters`): the first
/// `⌊partial · head_dim⌋ / 2` frequencies as for the whole head (`1 / theta^(2i / head_dim)`),
/// the rest zero (those channels do not rotate), all divided by `factor`.
pub fn proportional_inv_freq(head_dim: usize, theta: f64, partial: f64, factor: f64) -> Vec<f32> {
    let rope_angles = ((partial * head_dim as f64) / 2.0).floor() as usize;
    (0..head_dim / 2)
        .map(|i| match i < rope_angles {
            true => 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32),
            false => 0.0,
        })
        .map(|f| f / factor as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> TextConfig {
        let json = format!(
            r#"{{"text_config": {{"vocab_size": 8, "hidden_size": 4, "intermediate_size": 4,
            "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 8, "global_head_dim": 16, "num_global_key_value_heads": 1,
            "hidden_size_per_layer_input": 0 {extra}}}}}"#
        );
        Config::parse(&json).unwrap().text_config
    }

    #[test]
    fn proportional_rope_rotates_a_quarter_of_the_head() {
        // head 16, partial 0.25: 2 rotating frequencies 1/100^(0/16), 1/100^(2/16), 6 zeros.
        let f = proportional_inv_freq(16, 100.0, 0.25, 1.0);
        assert_eq!(f.len(), 8);
        assert!((f[0] - 1.0).abs() < 1e-7);
        assert!((f[1] - 100f32.powf(-0.125)).abs() < 1e-7);
        assert!(f[2..].iter().all(|&x| x == 0.0));
        let f = proportional_inv_freq(16, 100.0, 0.25, 2.0);
        assert!((f[0] - 0.5).abs() < 1e-7);
        // default: 1/10000^(2i/4)
        assert_eq!(default_inv_freq(4, 10_000.0), vec![1.0, 0.01]);
    }

    #[test]
    fn layers_alternate_five_sliding_to_one_full() {
        let c = config(r#", "attention_k_eq_v": true"#);
        let sliding: Vec<bool> = (0..6).map(|l| c.is_sliding(l)).collect();
        assert_eq!(sliding, [true, true, true, true, true, false]);
        let full = c.layer_attention(5);
        assert_eq!(
            (full.head_dim, full.num_kv_heads, full.k_eq_v),
            (16, 1, true)
        );
        let local = c.layer_attention(0);
        assert_eq!(
            (local.head_dim, local.num_kv_heads, local.k_eq_v),
            (8, 2, false)
        );
        // Without keys-as-values the full layers keep num_key_value_heads.
        let c = config("");
        assert_eq!(c.layer_attention(5).num_kv_heads, 2);
        // The last layer is full whatever layer_types says.
        let types = r#", "layer_types": ["full_attention", "sliding_attention", "sliding_attention",
            "sliding_attention", "sliding_attention", "sliding_attention"]"#;
        let c = config(types);
        assert!(!c.is_sliding(0) && c.is_sliding(1) && !c.is_sliding(5));
    }

    #[test]
    fn per_layer_inputs_and_kv_sharing_are_refused() {
        let json = r#"{"text_config": {"vocab_size": 8, "hidden_size": 4, "intermediate_size": 4,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1}}"#;
        let e = Config::parse(json).unwrap_err().to_string();
        assert!(e.contains("hidden_size_per_layer_input"), "{e}");
    }
}
