//! From llama.cpp's description of a model to MoEScope's: the family, an HF `config.json`
//! written from the `{arch}.*` metadata keys, and every llama.cpp tensor name
//! (`blk.N.ffn_gate_exps.weight`, …) mapped to the HF name the family builder reads
//! (`model.layers.N.mlp.experts.E.gate_proj.weight`, one expert of the 3-D tensor).
//!
//! Which layers are MoE comes from the tensors themselves (a block with `ffn_gate_inp` routes),
//! so files whose first blocks are dense need no extra key. Where llama.cpp's converter changed
//! a tensor (the q/k row permutation of llama-style rotary, DeepSeek's `kv_b_proj` split per
//! head, gpt-oss's fused gate/up split in two), [`Transform`] undoes it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::{Value as Json, json};

use super::file::{GgufModel, Value};
use super::weights::{Mapping, TensorRef, Transform};
use crate::model::error::{ModelError, Result};
use crate::model::info::Family;

/// A GGUF model as MoEScope sees it.
pub struct Converted {
    pub family: Family,
    /// `config.json` as the family's HF checkpoint would have it.
    pub config: Json,
    pub names: HashMap<String, Mapping>,
}

/// llama.cpp architectures MoEScope reads, with the family each becomes.
pub const ARCHITECTURES: &[(&str, &str)] = &[
    ("qwen3moe", "Qwen3-MoE"),
    ("qwen2moe", "Qwen2-MoE / Qwen1.5-MoE"),
    ("olmoe", "OLMoE"),
    ("llama", "Mixtral (llama with experts)"),
    ("deepseek2", "DeepSeek-V2 / V3 / R1, Kimi-K2"),
    ("gpt-oss", "gpt-oss"),
    ("glm4moe", "GLM-4.5 / 4.6 / 4.7"),
    ("minimax-m2", "MiniMax-M2"),
];

/// The metadata, read as the `{arch}.*` keys llama.cpp writes.
struct Meta<'a> {
    arch: &'a str,
    md: &'a BTreeMap<String, Value>,
    file: &'a Path,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.md.get(&format!("{}.{key}", self.arch))
    }

    fn missing(&self, key: &str) -> ModelError {
        ModelError::msg(format!(
            "{}: the GGUF metadata has no {}.{key}, which a {} model needs",
            self.file.display(),
            self.arch,
            self.arch
        ))
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key).ok_or_else(|| self.missing(key))
    }

    fn opt_usize(&self, key: &str) -> Option<usize> {
        self.get(key).and_then(Value::as_u64).map(|v| v as usize)
    }

    fn f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    fn bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Value::as_bool)
    }
}

/// How an architecture's tensors are named in HF's layout.
struct Naming {
    /// The MoE block's module (`mlp`, `block_sparse_moe`).
    moe: &'static str,
    /// The router under it (`gate`, `router`).
    router: &'static str,
    /// Gate, up and down projection names of one expert.
    experts: [&'static str; 3],
    /// Shared expert module (`shared_expert`, `shared_experts`).
    shared: &'static str,
    /// The experts' selection bias (`exp_probs_b`) under the MoE block.
    selection_bias: &'static str,
    /// q/k rows were permuted by the converter (llama-style rotary) for this many heads.
    permute_qk: Option<(usize, usize)>,
    /// Keep 3-D expert tensors whole under `{moe}.experts.{name}` (families with fused
    /// experts), instead of one HF tensor per expert.
    fused_experts: bool,
}

/// Reads what model `gguf` holds.
pub fn convert(gguf: &GgufModel, file: &Path) -> Result<Converted> {
    let md = gguf.metadata();
    let arch = md
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ModelError::msg(format!(
                "{}: the GGUF metadata has no general.architecture",
                file.display()
            ))
        })?;
    if !ARCHITECTURES.iter().any(|(a, _)| *a == arch) {
        return Err(unknown_architecture(file, arch));
    }
    let meta = Meta { arch, md, file };
    let tensors: HashMap<&str, TensorRef> = gguf
        .parts
        .iter()
        .enumerate()
        .flat_map(|(part, p)| {
            p.tensors
                .iter()
                .enumerate()
                .map(move |(index, t)| (t.name.as_str(), TensorRef { part, index }))
        })
        .collect();
    let shape = |name: &str| -> Option<&[usize]> {
        let t = tensors.get(name)?;
        Some(&gguf.parts[t.part].tensors[t.index].shape)
    };
    let has = |name: &str| tensors.contains_key(name);

    let experts = meta.opt_usize("expert_count").unwrap_or(0);
    let blocks = meta.usize("block_count")?;
    let moe_blocks: Vec<usize> = (0..blocks)
        .filter(|b| has(&format!("blk.{b}.ffn_gate_inp.weight")))
        .collect();
    if experts == 0 || moe_blocks.is_empty() {
        return Err(ModelError::msg(format!(
            "{}: this {arch} model has no routed experts ({arch}.expert_count {}, {} of {blocks} \
             blocks with an ffn_gate_inp router); MoEScope explores expert routing in \
             Mixture-of-Experts models",
            file.display(),
            meta.opt_usize("expert_count")
                .map_or("absent".to_string(), |e| e.to_string()),
            moe_blocks.len()
        )));
    }
    let dense_blocks: Vec<usize> = (0..blocks).filter(|b| !moe_blocks.contains(b)).collect();
    let vocab = shape("token_embd.weight").map(|s| s[0]).ok_or_else(|| {
        ModelError::msg(format!(
            "{}: the GGUF file has no token_embd.weight",
            file.display()
        ))
    })?;
    let tied = !has("output.weight");
    let hidden = meta.usize("embedding_length")?;
    let heads = meta.usize("attention.head_count")?;
    let kv_heads = meta.opt_usize("attention.head_count_kv").unwrap_or(heads);
    let head_dim = meta.opt_usize("attention.key_length");
    let eps = meta.f64("attention.layer_norm_rms_epsilon").unwrap_or(1e-6);
    let rope_theta = meta.f64("rope.freq_base").unwrap_or(10_000.0);
    let context = meta.opt_usize("context_length").unwrap_or(4096);
    let top_k = meta.usize("expert_used_count")?;
    let expert_ff = meta.opt_usize("expert_feed_forward_length");
    let ff = meta.opt_usize("feed_forward_length");
    let attn_bias = has("blk.0.attn_q.bias");
    let norm_default = |d: bool| meta.bool("expert_weights_norm").unwrap_or(d);

    let standard = Naming {
        moe: "mlp",
        router: "gate",
        experts: ["gate_proj", "up_proj", "down_proj"],
        shared: "shared_expert",
        selection_bias: "gate.e_score_correction_bias",
        permute_qk: None,
        fused_experts: false,
    };
    let (family, config, naming) = match arch {
        "qwen3moe" => (
            Family::Qwen3Moe,
            json!({
                "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
                "vocab_size": vocab, "hidden_size": hidden,
                "intermediate_size": ff.or(expert_ff).unwrap_or(0),
                "moe_intermediate_size": expert_ff.ok_or_else(|| meta.missing("expert_feed_forward_length"))?,
                "num_hidden_layers": blocks, "num_attention_heads": heads,
                "num_key_value_heads": kv_heads, "head_dim": head_dim,
                "max_position_embeddings": context, "rms_norm_eps": eps, "rope_theta": rope_theta,
                "attention_bias": attn_bias, "num_experts": experts, "num_experts_per_tok": top_k,
                "norm_topk_prob": norm_default(true), "mlp_only_layers": dense_blocks,
                "tie_word_embeddings": tied,
            }),
            standard,
        ),
        "qwen2moe" => (
            Family::Qwen2Moe,
            json!({
                "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe",
                "vocab_size": vocab, "hidden_size": hidden,
                "intermediate_size": ff.or(expert_ff).unwrap_or(0),
                "moe_intermediate_size": expert_ff.ok_or_else(|| meta.missing("expert_feed_forward_length"))?,
                "shared_expert_intermediate_size": meta.usize("expert_shared_feed_forward_length")?,
                "num_hidden_layers": blocks, "num_attention_heads": heads,
                "num_key_value_heads": kv_heads, "head_dim": head_dim,
                "max_position_embeddings": context, "rms_norm_eps": eps, "rope_theta": rope_theta,
                "qkv_bias": attn_bias, "num_experts": experts, "num_experts_per_tok": top_k,
                "norm_topk_prob": norm_default(false), "mlp_only_layers": dense_blocks,
                "tie_word_embeddings": tied,
            }),
            standard,
        ),
        "olmoe" => (
            Family::Olmoe,
            json!({
                "architectures": ["OlmoeForCausalLM"], "model_type": "olmoe",
                "vocab_size": vocab, "hidden_size": hidden,
                "intermediate_size": expert_ff.or(ff).ok_or_else(|| meta.missing("expert_feed_forward_length"))?,
                "num_hidden_layers": blocks, "num_attention_heads": heads,
                "num_key_value_heads": kv_heads, "max_position_embeddings": context,
                "rms_norm_eps": eps, "rope_theta": rope_theta, "attention_bias": attn_bias,
                "clip_qkv": meta.f64("attention.clamp_kqv"),
                "num_experts": experts, "num_experts_per_tok": top_k,
                "norm_topk_prob": norm_default(false), "tie_word_embeddings": tied,
            }),
            standard,
        ),
        "llama" => (
            Family::Mixtral,
            json!({
                "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
                "vocab_size": vocab, "hidden_size": hidden,
                "intermediate_size": expert_ff.or(ff).ok_or_else(|| meta.missing("feed_forward_length"))?,
                "num_hidden_layers": blocks, "num_attention_heads": heads,
                "num_key_value_heads": kv_heads, "head_dim": head_dim,
                "max_position_embeddings": context, "rms_norm_eps": eps, "rope_theta": rope_theta,
                "num_local_experts": experts, "num_experts_per_tok": top_k,
                "tie_word_embeddings": tied,
            }),
            Naming {
                moe: "block_sparse_moe",
                experts: ["w1", "w3", "w2"],
                permute_qk: Some((heads, kv_heads)),
                ..standard
            },
        ),
        "deepseek2" => deepseek2(&meta, &has, vocab, blocks, &dense_blocks, tied, standard)?,
        "gpt-oss" => (
            Family::GptOss,
            gpt_oss_config(&meta, vocab, blocks, tied, expert_ff, top_k, experts)?,
            Naming {
                router: "router",
                fused_experts: true,
                ..standard
            },
        ),
        "glm4moe" => {
            let head_dim = head_dim.ok_or_else(|| meta.missing("attention.key_length"))?;
            let rotary = meta
                .opt_usize("rope.dimension_count")
                .unwrap_or(head_dim / 2);
            (
                Family::Glm4Moe,
                json!({
                    "architectures": ["Glm4MoeForCausalLM"], "model_type": "glm4_moe",
                    "vocab_size": vocab, "hidden_size": hidden,
                    "intermediate_size": ff.unwrap_or(0),
                    "moe_intermediate_size": expert_ff.ok_or_else(|| meta.missing("expert_feed_forward_length"))?,
                    "num_hidden_layers": blocks, "num_attention_heads": heads,
                    "num_key_value_heads": kv_heads, "head_dim": head_dim,
                    "partial_rotary_factor": rotary as f64 / head_dim as f64,
                    "max_position_embeddings": context, "rms_norm_eps": eps,
                    "rope_theta": rope_theta, "attention_bias": attn_bias,
                    "use_qk_norm": has("blk.0.attn_q_norm.weight"),
                    "n_routed_experts": experts, "num_experts_per_tok": top_k,
                    "n_shared_experts": meta.opt_usize("expert_shared_count").unwrap_or(0),
                    "n_group": meta.opt_usize("expert_group_count").unwrap_or(1),
                    "topk_group": meta.opt_usize("expert_group_used_count").unwrap_or(1),
                    "routed_scaling_factor": meta.f64("expert_weights_scale").unwrap_or(1.0),
                    "norm_topk_prob": norm_default(true),
                    "first_k_dense_replace": dense_leading(&dense_blocks, &meta)?,
                    "tie_word_embeddings": tied,
                }),
                Naming {
                    shared: "shared_experts",
                    ..standard
                },
            )
        }
        "minimax-m2" => (
            Family::MiniMaxM2,
            json!({
                "architectures": ["MiniMaxM2ForCausalLM"], "model_type": "minimax_m2",
                "vocab_size": vocab, "hidden_size": hidden,
                "intermediate_size": expert_ff.or(ff).ok_or_else(|| meta.missing("expert_feed_forward_length"))?,
                "num_hidden_layers": blocks, "num_attention_heads": heads,
                "num_key_value_heads": kv_heads, "head_dim": head_dim,
                "rotary_dim": meta.opt_usize("rope.dimension_count"),
                "max_position_embeddings": context, "rms_norm_eps": eps, "rope_theta": rope_theta,
                "use_qk_norm": has("blk.0.attn_q_norm.weight"),
                "num_local_experts": experts, "num_experts_per_tok": top_k,
                "tie_word_embeddings": tied,
            }),
            Naming {
                moe: "block_sparse_moe",
                experts: ["w1", "w3", "w2"],
                selection_bias: "e_score_correction_bias",
                ..standard
            },
        ),
        other => return Err(unknown_architecture(file, other)),
    };
    let names = map_names(gguf, &tensors, &naming)?;
    Ok(Converted {
        family,
        config,
        names,
    })
}

fn unknown_architecture(file: &Path, arch: &str) -> ModelError {
    let known = ARCHITECTURES
        .iter()
        .map(|(a, f)| format!("{a} ({f})"))
        .collect::<Vec<_>>()
        .join(", ");
    ModelError::msg(format!(
        "{}: GGUF architecture {arch:?} is not one MoEScope reads (it reads {known})",
        file.display()
    ))
}

/// The number of leading dense blocks, which must be all the dense blocks there are.
fn dense_leading(dense_blocks: &[usize], meta: &Meta<'_>) -> Result<usize> {
    let leading = meta
        .opt_usize("leading_dense_block_count")
        .unwrap_or(dense_blocks.len());
    if dense_blocks != (0..leading).collect::<Vec<_>>() {
        return Err(ModelError::msg(format!(
            "{}: blocks {dense_blocks:?} have no router, but {}.leading_dense_block_count is \
             {leading}",
            meta.file.display(),
            meta.arch
        )));
    }
    Ok(leading)
}

/// DeepSeek-V2 (softmax router) or V3 / R1 / Kimi-K2 (sigmoid router with a selection bias).
fn deepseek2(
    meta: &Meta<'_>,
    has: &dyn Fn(&str) -> bool,
    vocab: usize,
    blocks: usize,
    dense_blocks: &[usize],
    tied: bool,
    naming: Naming,
) -> Result<(Family, Json, Naming)> {
    let experts = meta.usize("expert_count")?;
    // llama.cpp's `LLAMA_EXPERT_GATING_FUNC_TYPE_SIGMOID`.
    let sigmoid = meta.opt_usize("expert_gating_func") == Some(2);
    let rope_dim = meta.usize("rope.dimension_count")?;
    let key_mla = meta
        .opt_usize("attention.key_length_mla")
        .or(meta.opt_usize("attention.key_length"))
        .ok_or_else(|| meta.missing("attention.key_length_mla"))?;
    let value_mla = meta
        .opt_usize("attention.value_length_mla")
        .or(meta.opt_usize("attention.value_length"))
        .ok_or_else(|| meta.missing("attention.value_length_mla"))?;
    let leading_dense = dense_leading(dense_blocks, meta)?;
    let groups = meta.opt_usize("expert_group_count").unwrap_or(1);
    let groups_used = meta.opt_usize("expert_group_used_count").unwrap_or(1);
    let rope_scaling = match meta
        .md
        .get(&format!("{}.rope.scaling.type", meta.arch))
        .and_then(Value::as_str)
    {
        Some("yarn") => {
            // llama.cpp stores `0.1 · mscale_all_dim` as the log multiplier.
            let mscale = meta.f64("rope.scaling.yarn_log_multiplier").unwrap_or(0.0) / 0.1;
            json!({
                "type": "yarn",
                "factor": meta.f64("rope.scaling.factor").unwrap_or(1.0),
                "original_max_position_embeddings": meta.opt_usize("rope.scaling.original_context_length"),
                "beta_fast": meta.f64("rope.scaling.yarn_beta_fast").unwrap_or(32.0),
                "beta_slow": meta.f64("rope.scaling.yarn_beta_slow").unwrap_or(1.0),
                "mscale": mscale, "mscale_all_dim": mscale,
            })
        }
        Some("none") | None => Json::Null,
        Some(other) => {
            return Err(ModelError::msg(format!(
                "{}: {}.rope.scaling.type {other:?} is not supported for deepseek2 (yarn or none)",
                meta.file.display(),
                meta.arch
            )));
        }
    };
    let q_lora = meta.opt_usize("attention.q_lora_rank").filter(|&r| r > 0);
    let config = json!({
        "architectures": [if sigmoid { "DeepseekV3ForCausalLM" } else { "DeepseekV2ForCausalLM" }],
        "model_type": if sigmoid { "deepseek_v3" } else { "deepseek_v2" },
        "vocab_size": vocab, "hidden_size": meta.usize("embedding_length")?,
        "intermediate_size": meta.opt_usize("feed_forward_length").unwrap_or(0),
        "moe_intermediate_size": meta.usize("expert_feed_forward_length")?,
        "num_hidden_layers": blocks, "num_attention_heads": meta.usize("attention.head_count")?,
        "max_position_embeddings": meta.opt_usize("context_length").unwrap_or(4096),
        "rms_norm_eps": meta.f64("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
        "rope_theta": meta.f64("rope.freq_base").unwrap_or(10_000.0),
        "rope_scaling": rope_scaling,
        "first_k_dense_replace": leading_dense,
        "kv_lora_rank": meta.usize("attention.kv_lora_rank")?,
        "q_lora_rank": q_lora,
        "qk_rope_head_dim": rope_dim,
        "qk_nope_head_dim": key_mla - rope_dim,
        "v_head_dim": value_mla,
        "n_routed_experts": experts,
        "n_shared_experts": meta.opt_usize("expert_shared_count").unwrap_or(0),
        "num_experts_per_tok": meta.usize("expert_used_count")?,
        "routed_scaling_factor": meta.f64("expert_weights_scale").unwrap_or(1.0),
        "norm_topk_prob": meta.bool("expert_weights_norm").unwrap_or(false),
        "n_group": groups, "topk_group": groups_used,
        "topk_method": if sigmoid { "noaux_tc" } else if groups > 1 { "group_limited_greedy" } else { "greedy" },
        "scoring_func": if sigmoid { "sigmoid" } else { "softmax" },
        "tie_word_embeddings": tied,
    });
    if sigmoid && !has(&format!("blk.{leading_dense}.exp_probs_b.bias")) {
        return Err(ModelError::msg(format!(
            "{}: a sigmoid-routed deepseek2 model without blk.{leading_dense}.exp_probs_b.bias \
             (the experts' selection bias)",
            meta.file.display()
        )));
    }
    let family = if sigmoid {
        Family::DeepseekV3
    } else {
        Family::DeepseekV2
    };
    Ok((
        family,
        config,
        Naming {
            shared: "shared_experts",
            ..naming
        },
    ))
}

fn gpt_oss_config(
    meta: &Meta<'_>,
    vocab: usize,
    blocks: usize,
    tied: bool,
    expert_ff: Option<usize>,
    top_k: usize,
    experts: usize,
) -> Result<Json> {
    let window = meta.opt_usize("attention.sliding_window");
    // llama.cpp alternates sliding-window and full attention, starting with a sliding layer.
    let layer_types: Vec<&str> = (0..blocks)
        .map(|b| {
            if b % 2 == 0 {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    let rope = match meta
        .md
        .get(&format!("{}.rope.scaling.type", meta.arch))
        .and_then(Value::as_str)
    {
        Some("yarn") => json!({
            "rope_type": "yarn",
            "rope_theta": meta.f64("rope.freq_base").unwrap_or(150_000.0),
            "factor": meta.f64("rope.scaling.factor").unwrap_or(1.0),
            "original_max_position_embeddings": meta.opt_usize("rope.scaling.original_context_length"),
            "beta_fast": meta.f64("rope.scaling.yarn_beta_fast").unwrap_or(32.0),
            "beta_slow": meta.f64("rope.scaling.yarn_beta_slow").unwrap_or(1.0),
            "truncate": false,
        }),
        _ => json!({
            "rope_type": "default",
            "rope_theta": meta.f64("rope.freq_base").unwrap_or(150_000.0),
        }),
    };
    Ok(json!({
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
        "vocab_size": vocab, "hidden_size": meta.usize("embedding_length")?,
        "intermediate_size": expert_ff.ok_or_else(|| meta.missing("expert_feed_forward_length"))?,
        "num_hidden_layers": blocks, "num_attention_heads": meta.usize("attention.head_count")?,
        "num_key_value_heads": meta.opt_usize("attention.head_count_kv"),
        "head_dim": meta.opt_usize("attention.key_length"),
        "max_position_embeddings": meta.opt_usize("context_length").unwrap_or(131_072),
        "rms_norm_eps": meta.f64("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        "rope_parameters": rope,
        "num_local_experts": experts, "num_experts_per_tok": top_k,
        "sliding_window": window, "layer_types": layer_types,
        "tie_word_embeddings": tied,
    }))
}

/// The HF name(s) of every GGUF tensor MoEScope uses.
fn map_names(
    gguf: &GgufModel,
    tensors: &HashMap<&str, TensorRef>,
    naming: &Naming,
) -> Result<HashMap<String, Mapping>> {
    let mut out = HashMap::new();
    let info = |t: TensorRef| &gguf.parts[t.part].tensors[t.index];
    let plain = |t: TensorRef| Mapping {
        tensor: t,
        expert: None,
        shape: info(t).shape.clone(),
        transform: Transform::None,
    };
    for (&name, &t) in tensors {
        let shape = &info(t).shape;
        let top = match name {
            "token_embd.weight" => Some("model.embed_tokens.weight"),
            "output_norm.weight" => Some("model.norm.weight"),
            "output.weight" => Some("lm_head.weight"),
            _ => None,
        };
        if let Some(hf) = top {
            out.insert(hf.to_string(), plain(t));
            continue;
        }
        let Some(rest) = name.strip_prefix("blk.") else {
            continue;
        };
        let Some((block, rest)) = rest.split_once('.') else {
            continue;
        };
        let Ok(block) = block.parse::<usize>() else {
            continue;
        };
        let Some((base, kind)) = rest.rsplit_once('.') else {
            continue;
        };
        let layer = format!("model.layers.{block}");
        let moe = format!("{layer}.{}", naming.moe);
        let [gate, up, down] = naming.experts;
        let mut put = |hf: String, m: Mapping| {
            out.insert(hf, m);
        };
        let attn = |p: &str| format!("{layer}.self_attn.{p}.{kind}");
        match base {
            "attn_norm" => put(format!("{layer}.input_layernorm.{kind}"), plain(t)),
            // `post_attention_norm` is gpt-oss's name for the norm before its experts.
            "ffn_norm" | "post_attention_norm" => {
                put(format!("{layer}.post_attention_layernorm.{kind}"), plain(t))
            }
            "attn_q" | "attn_k" => {
                let p = if base == "attn_q" { "q_proj" } else { "k_proj" };
                let mut m = plain(t);
                if let (Some((h, kv)), "weight") = (naming.permute_qk, kind) {
                    let heads = if base == "attn_q" { h } else { kv };
                    m.transform = Transform::Unpermute { heads };
                }
                put(attn(p), m);
            }
            "attn_v" => put(attn("v_proj"), plain(t)),
            "attn_output" => put(attn("o_proj"), plain(t)),
            "attn_q_norm" => put(attn("q_norm"), plain(t)),
            "attn_k_norm" => put(attn("k_norm"), plain(t)),
            "attn_sinks" => put(format!("{layer}.self_attn.sinks"), plain(t)),
            // DeepSeek's multi-head latent attention.
            "attn_q_a" => put(attn("q_a_proj"), plain(t)),
            "attn_q_a_norm" => put(attn("q_a_layernorm"), plain(t)),
            "attn_q_b" => put(attn("q_b_proj"), plain(t)),
            "attn_kv_a_mqa" => put(attn("kv_a_proj_with_mqa"), plain(t)),
            "attn_kv_a_norm" => put(attn("kv_a_layernorm"), plain(t)),
            "attn_kv_b" => put(attn("kv_b_proj"), plain(t)),
            "attn_k_b" => {
                let v_name = format!("blk.{block}.attn_v_b.weight");
                let Some(&v_b) = tensors.get(v_name.as_str()) else {
                    return Err(ModelError::msg(format!(
                        "{}: {name} without {v_name}",
                        gguf.parts[0].path.display()
                    )));
                };
                let (heads, rank, nope) = (shape[0], shape[1], shape[2]);
                let v_head = info(v_b).shape[1];
                put(
                    attn("kv_b_proj"),
                    Mapping {
                        tensor: t,
                        expert: None,
                        shape: vec![heads * (nope + v_head), rank],
                        transform: Transform::KvB { v_b, heads },
                    },
                );
            }
            "ffn_gate_inp" => put(format!("{moe}.{}.{kind}", naming.router), plain(t)),
            "exp_probs_b" => put(format!("{moe}.{}", naming.selection_bias), plain(t)),
            "ffn_gate_exps" | "ffn_up_exps" | "ffn_down_exps" => {
                let which = match base {
                    "ffn_gate_exps" => gate,
                    "ffn_up_exps" => up,
                    _ => down,
                };
                if naming.fused_experts || kind != "weight" {
                    let hf = match kind {
                        "weight" => format!("{moe}.experts.{which}"),
                        k => format!("{moe}.experts.{which}_{k}"),
                    };
                    put(hf, plain(t));
                } else {
                    for e in 0..shape[0] {
                        put(
                            format!("{moe}.experts.{e}.{which}.weight"),
                            Mapping {
                                tensor: t,
                                expert: Some(e),
                                shape: shape[1..].to_vec(),
                                transform: Transform::None,
                            },
                        );
                    }
                }
            }
            "ffn_gate_shexp" | "ffn_up_shexp" | "ffn_down_shexp" => {
                let p = &base[4..base.len() - 6];
                put(
                    format!("{layer}.mlp.{}.{p}_proj.{kind}", naming.shared),
                    plain(t),
                );
            }
            "ffn_gate_inp_shexp" => {
                let mut m = plain(t);
                m.shape = vec![1, shape.iter().product()];
                put(format!("{layer}.mlp.shared_expert_gate.{kind}"), m);
            }
            // Dense feed-forward blocks.
            "ffn_gate" | "ffn_up" | "ffn_down" => {
                put(format!("{layer}.mlp.{}_proj.{kind}", &base[4..]), plain(t))
            }
            _ => {
                // Older Mixtral files: one tensor per expert, `ffn_gate.E`.
                if let Some((kind_base, e)) = base.rsplit_once('.')
                    && let Ok(e) = e.parse::<usize>()
                {
                    let which = match kind_base {
                        "ffn_gate" => gate,
                        "ffn_up" => up,
                        "ffn_down" => down,
                        _ => continue,
                    };
                    put(format!("{moe}.experts.{e}.{which}.{kind}"), plain(t));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::file::write_for_tests;

    fn open(
        meta: &[(&str, Value)],
        tensors: &[(&str, u32, Vec<u64>, Vec<u8>)],
    ) -> Result<Converted> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        std::fs::write(&p, write_for_tests(meta, tensors)).unwrap();
        convert(&GgufModel::open(&p)?, &p)
    }

    fn f32_tensor(name: &'static str, ne: Vec<u64>) -> (&'static str, u32, Vec<u64>, Vec<u8>) {
        let n: u64 = ne.iter().product();
        (name, 0, ne, vec![0; 4 * n as usize])
    }

    #[test]
    fn a_model_without_experts_is_refused_by_name() {
        let meta = [
            ("general.architecture", Value::String("llama".into())),
            ("llama.block_count", Value::U32(1)),
            ("llama.embedding_length", Value::U32(8)),
        ];
        let tensors = [
            f32_tensor("token_embd.weight", vec![8, 16]),
            f32_tensor("blk.0.ffn_gate.weight", vec![8, 16]),
        ];
        let err = open(&meta, &tensors).err().unwrap().to_string();
        assert!(
            err.contains("m.gguf") && err.contains("no routed experts"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_architecture_is_named() {
        let meta = [("general.architecture", Value::String("rwkv7".into()))];
        let err = open(&meta, &[]).err().unwrap().to_string();
        assert!(
            err.contains("\"rwkv7\"") && err.contains("qwen3moe"),
            "{err}"
        );
    }

    #[test]
    fn experts_of_a_3d_tensor_become_one_hf_tensor_each() {
        let meta = [
            ("general.architecture", Value::String("qwen3moe".into())),
            ("qwen3moe.block_count", Value::U32(1)),
            ("qwen3moe.embedding_length", Value::U32(8)),
            ("qwen3moe.attention.head_count", Value::U32(2)),
            ("qwen3moe.expert_count", Value::U32(3)),
            ("qwen3moe.expert_used_count", Value::U32(2)),
            ("qwen3moe.expert_feed_forward_length", Value::U32(4)),
        ];
        let tensors = [
            f32_tensor("token_embd.weight", vec![8, 16]),
            f32_tensor("blk.0.ffn_gate_inp.weight", vec![8, 3]),
            f32_tensor("blk.0.ffn_down_exps.weight", vec![4, 8, 3]),
        ];
        let c = open(&meta, &tensors).unwrap();
        assert_eq!(c.family, Family::Qwen3Moe);
        assert_eq!(c.config["num_experts"], 3);
        assert_eq!(c.config["tie_word_embeddings"], true);
        let down = &c.names["model.layers.0.mlp.experts.2.down_proj.weight"];
        assert_eq!(
            (down.expert, down.shape.as_slice()),
            (Some(2), &[8usize, 4][..])
        );
        assert!(c.names.contains_key("model.layers.0.mlp.gate.weight"));
    }
}
