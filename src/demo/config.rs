//! The demo model's shape and its HF `config.json` (an `OlmoeForCausalLM` config with HF's
//! field names, so the normal loader — and HF transformers — read it).

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{DemoError, Result};

/// The shape of the demo model (the OLMoE fields that matter to it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Each expert's SwiGLU intermediate size.
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    /// Training context; also the model's `max_position_embeddings`.
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            vocab_size: 4096,
            hidden_size: 128,
            intermediate_size: 64,
            num_hidden_layers: 8,
            num_attention_heads: 2,
            num_experts: 32,
            num_experts_per_tok: 4,
            max_position_embeddings: 256,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-5,
            tie_word_embeddings: true,
        }
    }
}

impl DemoConfig {
    /// Checks that the shape is buildable.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(DemoError::msg(format!("demo config: {m}")));
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return bad("hidden_size must be a multiple of num_attention_heads");
        }
        if !(self.hidden_size / self.num_attention_heads).is_multiple_of(2) {
            return bad("the head dimension must be even (rotary embeddings)");
        }
        if self.num_experts_per_tok == 0 || self.num_experts_per_tok > self.num_experts {
            return bad("num_experts_per_tok must be in 1..=num_experts");
        }
        if self.num_hidden_layers == 0 || self.intermediate_size == 0 || self.vocab_size < 258 {
            return bad("layers and intermediate size must be positive and the vocabulary > 257");
        }
        if self.max_position_embeddings < 8 {
            return bad("the context must be at least 8 tokens");
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Number of parameters (what the safetensors file holds).
    pub fn num_params(&self) -> u64 {
        let (h, i, v, l, e) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.vocab_size as u64,
            self.num_hidden_layers as u64,
            self.num_experts as u64,
        );
        let attn = 4 * h * h + 2 * h; // q, k, v, o + q_norm, k_norm
        let moe = e * h + e * 3 * h * i; // router + experts
        let norms = 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + l * (attn + moe + norms) + h + head
    }

    /// Parameters a token uses (the inactive experts left out).
    pub fn active_params(&self) -> u64 {
        let per_expert = 3 * (self.hidden_size * self.intermediate_size) as u64;
        let inactive = (self.num_hidden_layers * (self.num_experts - self.num_experts_per_tok))
            as u64
            * per_expert;
        self.num_params() - inactive
    }

    /// The HF `config.json` of an `OlmoeForCausalLM` with this shape (`torch_dtype` is how the
    /// shipped weights are stored).
    pub fn to_hf_json(&self, eot_id: u32, pad_id: u32, torch_dtype: &str) -> serde_json::Value {
        json!({
            "architectures": ["OlmoeForCausalLM"],
            "model_type": "olmoe",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_attention_heads,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "initializer_range": 0.02,
            "rms_norm_eps": self.rms_norm_eps,
            "use_cache": true,
            "pad_token_id": pad_id,
            "bos_token_id": null,
            "eos_token_id": eot_id,
            "tie_word_embeddings": self.tie_word_embeddings,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "attention_bias": false,
            "attention_dropout": 0.0,
            "clip_qkv": null,
            "num_experts_per_tok": self.num_experts_per_tok,
            "num_experts": self.num_experts,
            "output_router_logits": false,
            "router_aux_loss_coef": 0.01,
            "norm_topk_prob": false,
            "torch_dtype": torch_dtype,
        })
    }

    /// Reads the shape back from an HF OLMoE `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| DemoError::msg(format!("config.json is not valid JSON: {e}")))?;
        let get = |k: &str| -> Result<usize> {
            v.get(k)
                .and_then(serde_json::Value::as_u64)
                .map(|n| n as usize)
                .ok_or_else(|| DemoError::msg(format!("config.json: missing or non-integer '{k}'")))
        };
        let getf = |k: &str, d: f64| v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(d);
        let c = Self {
            vocab_size: get("vocab_size")?,
            hidden_size: get("hidden_size")?,
            intermediate_size: get("intermediate_size")?,
            num_hidden_layers: get("num_hidden_layers")?,
            num_attention_heads: get("num_attention_heads")?,
            num_experts: get("num_experts")?,
            num_experts_per_tok: get("num_experts_per_tok")?,
            max_position_embeddings: get("max_position_embeddings")?,
            rope_theta: getf("rope_theta", 10000.0),
            rms_norm_eps: getf("rms_norm_eps", 1e-5),
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
        };
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_json_round_trips_and_counts_params() {
        let c = DemoConfig::default();
        let j = c.to_hf_json(0, 1, "float16").to_string();
        assert_eq!(DemoConfig::from_hf_json(&j).unwrap(), c);
        // embed 4096·128 + 8 · (attn 4·128² + 256 + router 32·128 + experts 32·3·128·64 + 256) + 128
        let expected =
            4096 * 128 + 8 * (4 * 128 * 128 + 256 + 32 * 128 + 32 * 3 * 128 * 64 + 256) + 128;
        assert_eq!(c.num_params(), expected as u64);
        assert!(c.active_params() < c.num_params());
    }
}
