//! A model's module layout and per-layer token mixing follow from its `config.json` alone:
//! [`layout_from_config`] equals what the loaded model reports, for every fixture model.

mod common;

use std::collections::BTreeSet;

use moescope::model::families::layout_from_config;
use moescope::model::loader::detect_family;
use moescope::model::{AttentionKind, Family, Projection};

/// The fixture model folders, by name.
fn fixture_names() -> Vec<String> {
    let dir = common::fixture("");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().join("config.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn every_fixture_layout_follows_from_its_config() {
    let names = fixture_names();
    assert!(names.len() >= 19, "fixtures: {names:?}");
    let mut families = BTreeSet::new();
    for name in &names {
        let path = common::fixture(name).join("config.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let family = detect_family(&path, &json).unwrap();
        let (layout, kinds) =
            layout_from_config(family, &text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let loaded = common::load(name);
        let info = loaded.model.info();
        assert_eq!(info.family, family, "{name}");
        assert_eq!(layout, info.layout, "{name}: module layout");
        assert_eq!(kinds, info.attention_kinds, "{name}: attention kinds");
        assert_eq!(kinds.len(), info.num_layers, "{name}");
        families.insert(format!("{family:?}"));
    }
    let all: BTreeSet<String> = Family::ALL.iter().map(|f| format!("{f:?}")).collect();
    assert_eq!(families, all, "every family has a fixture");
}

/// Every attention, router and shared-expert module a fixture's layout names is a linear layer
/// of the loaded model with the layout's shape, layer by layer (Gemma 4's full-attention layers
/// and Qwen3.5's gated-attention layers have projections of their own).
#[test]
fn every_layout_module_is_a_linear_layer_of_its_shape() {
    for name in fixture_names() {
        let mut loaded = common::load(&name);
        let info = loaded.model.info().clone();
        let linears: std::collections::BTreeMap<String, (usize, usize)> = loaded
            .model
            .linears_mut()
            .into_iter()
            .map(|(n, l)| (n, (l.in_dim(), l.out_dim())))
            .collect();
        let layout = &info.layout;
        let fill = |template: &str, layer: usize| template.replace("{layer}", &layer.to_string());
        let mut expected: Vec<(String, &Projection)> = Vec::new();
        for layer in 0..info.num_layers {
            for p in layout.attention_projections_of(layer) {
                let prefix = fill(&layout.attention_prefix, layer);
                expected.push((format!("{prefix}.{}", p.name), p));
            }
        }
        if let Some(prefix) = &layout.shared_expert_prefix {
            for &layer in &info.moe_layers {
                for p in &layout.shared_expert_projections {
                    expected.push((format!("{}.{}", fill(prefix, layer), p.name), p));
                }
            }
        }
        for (module, p) in expected {
            let Some(&(inp, out)) = linears.get(&module) else {
                panic!("{name}: the layout names {module}, which the model does not have");
            };
            assert_eq!(
                (inp, out),
                (p.in_features, p.out_features),
                "{name}: {module} [in, out]"
            );
        }
    }
}

/// DeepSeek-V3's own config (671B parameters, never loaded here): MLA projections with
/// low-rank queries, 256 routed experts of width 2048 and one shared expert.
#[test]
fn deepseek_v3_full_size_layout_from_config_alone() {
    let json = r#"{
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
        "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432,
        "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_attention_heads": 128,
        "num_key_value_heads": 128, "n_shared_experts": 1, "n_routed_experts": 256,
        "routed_scaling_factor": 2.5, "kv_lora_rank": 512, "q_lora_rank": 1536,
        "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
        "topk_method": "noaux_tc", "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8,
        "first_k_dense_replace": 3, "norm_topk_prob": true, "scoring_func": "sigmoid",
        "hidden_act": "silu", "max_position_embeddings": 163840, "rms_norm_eps": 1e-06,
        "rope_theta": 10000,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                         "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                         "type": "yarn"},
        "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
                                "quant_method": "fp8", "weight_block_size": [128, 128]}
    }"#;
    let path = std::path::Path::new("config.json");
    let family = detect_family(path, &serde_json::from_str(json).unwrap()).unwrap();
    assert_eq!(family, Family::DeepseekV3);
    let (layout, kinds) = layout_from_config(family, json).unwrap();
    assert_eq!(kinds, vec![AttentionKind::Full; 61]);
    let p = |name: &str, i, o| Projection::new(name, i, o);
    assert_eq!(
        layout.attention_projections,
        vec![
            p("q_a_proj", 7168, 1536),
            p("q_b_proj", 1536, 128 * 192),
            p("kv_a_proj_with_mqa", 7168, 512 + 64),
            p("kv_b_proj", 512, 128 * 256),
            p("o_proj", 128 * 128, 7168),
        ]
    );
    assert_eq!(
        layout.expert_projections,
        vec![
            p("gate_proj", 7168, 2048),
            p("up_proj", 7168, 2048),
            p("down_proj", 2048, 7168),
        ]
    );
    assert_eq!(
        layout.shared_expert_prefix.as_deref(),
        Some("model.layers.{layer}.mlp.shared_experts")
    );
    assert_eq!(layout.router, "model.layers.{layer}.mlp.gate");
    assert_eq!(layout.router_in, 7168);
    assert_eq!(
        layout.expert_module(60, 255, "down_proj"),
        "model.layers.60.mlp.experts.255.down_proj"
    );
}

/// A config the loader refuses is refused here too, naming what is wrong.
#[test]
fn configs_the_loader_refuses_are_refused() {
    let err = layout_from_config(Family::Olmoe, r#"{"hidden_size": 8}"#).unwrap_err();
    assert!(err.to_string().contains("OlmoeForCausalLM"), "{err}");
    let gpt_oss = r#"{"num_hidden_layers": 2, "layer_types": ["full_attention"]}"#;
    let err = layout_from_config(Family::GptOss, gpt_oss).unwrap_err();
    assert!(err.to_string().contains("layer_types"), "{err}");
}
