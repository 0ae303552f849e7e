//! DeepSeek-V2 against the transformers reference fixtures, and the config rules.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::*;
use crate::model::families::{self, BuildCtx};
use crate::model::router::{RecordedRoute, RecordingHook, RouteCtx};
use crate::model::{Batch, Output};
use crate::model::{Family, MoeModel, Projection};

#[derive(Debug, Deserialize)]
struct RefLayer {
    layer: usize,
    router_logits: Vec<Vec<f32>>,
    routing_scores: Vec<Vec<f32>>,
    topk_indices: Vec<Vec<u32>>,
    topk_weights: Vec<Vec<f32>>,
}

#[derive(Debug, Deserialize)]
struct Reference {
    input_ids: Vec<u32>,
    moe_layers: Vec<usize>,
    layers: Vec<RefLayer>,
    logits: Vec<Vec<f32>>,
    last_token_logits: Vec<f32>,
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn ctx() -> BuildCtx {
    BuildCtx {
        id: "test".into(),
        dtype: DType::F32,
        weight_dtype: DType::F32,
        mapped: false,
        device: Device::Cpu,
        routing_only: false,
    }
}

fn load_fixture(name: &str, opts: Options) -> Box<dyn MoeModel> {
    let dir = fixture(name);
    let config = std::fs::read_to_string(dir.join("config.json")).expect("config.json");
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .expect("model.safetensors")
    };
    if opts
        == (Options {
            yarn_mscale_softmax: true,
        })
    {
        // The path the loader takes.
        families::build(Family::DeepseekV2, &config, vb.into(), &ctx()).expect("build")
    } else {
        load_with(&config, vb.into(), &ctx(), opts).expect("build")
    }
}

fn reference(name: &str, file: &str) -> Reference {
    let text = std::fs::read_to_string(fixture(name).join(file)).expect("reference json");
    serde_json::from_str(&text).expect("reference schema")
}

fn run(
    model: &mut dyn MoeModel,
    seqs: &[Vec<u32>],
    output: Output,
) -> (Option<Tensor>, Vec<RecordedRoute>) {
    let batch = Batch::from_sequences(seqs, &Device::Cpu).expect("batch");
    let mut hook = RecordingHook::default();
    let out = {
        let mut rctx = RouteCtx::new(&mut hook);
        model.forward(&batch, output, &mut rctx).expect("forward")
    };
    (out, hook.layers)
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Chosen experts of a token mapped to their weights (the reference's order is unsorted).
fn choice(indices: &[u32], weights: &[f32]) -> BTreeMap<u32, f32> {
    indices
        .iter()
        .copied()
        .zip(weights.iter().copied())
        .collect()
}

/// Compares one forward pass with a reference file; returns (router, weight, logit) max errors.
fn check_reference(name: &str, file: &str, opts: Options) -> (f32, f32, f32) {
    let r = reference(name, file);
    let mut model = load_fixture(name, opts);
    assert_eq!(model.info().moe_layers, r.moe_layers);
    let (logits, routes) = run(
        model.as_mut(),
        std::slice::from_ref(&r.input_ids),
        Output::AllLogits,
    );
    assert_eq!(routes.len(), r.layers.len());
    let (mut e_router, mut e_weight) = (0f32, 0f32);
    for (got, want) in routes.iter().zip(&r.layers) {
        assert_eq!(got.layer, want.layer);
        let n = got.num_experts;
        let k = got.top_k;
        let want_logits: Vec<f32> = want.router_logits.concat();
        e_router = e_router.max(max_abs(&got.logits, &want_logits));
        e_router = e_router.max(max_abs(&got.scores, &want.routing_scores.concat()));
        assert_eq!(got.logits.len(), r.input_ids.len() * n);
        for (t, (wi, ww)) in want.topk_indices.iter().zip(&want.topk_weights).enumerate() {
            let g = choice(
                &got.topk_indices[t * k..(t + 1) * k],
                &got.topk_weights[t * k..(t + 1) * k],
            );
            let w = choice(wi, ww);
            assert_eq!(
                g.keys().collect::<Vec<_>>(),
                w.keys().collect::<Vec<_>>(),
                "{name} layer {} token {t}: expert sets differ",
                got.layer
            );
            for (e, gw) in &g {
                e_weight = e_weight.max((gw - w[e]).abs());
            }
        }
    }
    let logits = logits
        .expect("logits")
        .squeeze(0)
        .expect("squeeze")
        .to_vec2::<f32>()
        .expect("to_vec2");
    let e_logit = max_abs(&logits.concat(), &r.logits.concat());
    let last = logits.last().expect("tokens");
    let e_logit = e_logit.max(max_abs(last, &r.last_token_logits));
    println!(
        "{name}/{file}: router logits/scores {e_router:.2e}, weights {e_weight:.2e}, logits {e_logit:.2e}"
    );
    assert!(e_router < 1e-5, "{name}: router logits off by {e_router}");
    assert!(e_weight < 1e-5, "{name}: routing weights off by {e_weight}");
    assert!(e_logit < 1e-4, "{name}: logits off by {e_logit}");
    (e_router, e_weight, e_logit)
}

#[test]
fn deepseek_v2_lite_greedy_yarn_matches_transformers_4_57_without_the_mscale_correction() {
    check_reference("deepseek_v2_lite", "reference.json", Options::default());
}

#[test]
fn deepseek_v2_lite_mscale_softmax_variant_matches_its_reference() {
    let opts = Options {
        yarn_mscale_softmax: true,
    };
    check_reference("deepseek_v2_lite", "reference_mscale_softmax.json", opts);
}

#[test]
fn deepseek_v2_group_limited_matches_reference() {
    check_reference("deepseek_v2_group", "reference.json", Options::default());
}

/// Right-padded batches route and predict exactly as each sequence alone.
fn check_padded_batch(name: &str) {
    let r = reference(name, "reference.json");
    let mut model = load_fixture(name, Options::default());
    let a = r.input_ids.clone();
    let mut b: Vec<u32> = r.input_ids[..a.len() - 4].to_vec();
    b.reverse();
    let seqs = vec![a.clone(), b.clone()];
    let (batched, broutes) = run(model.as_mut(), &seqs, Output::LastLogits);
    let batched = batched.expect("logits").to_vec2::<f32>().expect("to_vec2");
    let mut offset = 0;
    for (si, s) in seqs.iter().enumerate() {
        let (alone, aroutes) = run(model.as_mut(), std::slice::from_ref(s), Output::LastLogits);
        let alone = alone.expect("logits").to_vec2::<f32>().expect("to_vec2");
        let e = max_abs(&alone[0], &batched[si]);
        assert!(e < 1e-4, "{name} seq {si}: last-token logits differ by {e}");
        for (ar, br) in aroutes.iter().zip(&broutes) {
            let (n, k) = (ar.num_experts, ar.top_k);
            let rows = offset..offset + s.len();
            assert_eq!(
                ar.topk_indices,
                br.topk_indices[rows.start * k..rows.end * k],
                "{name} seq {si}"
            );
            let e = max_abs(
                &ar.topk_weights,
                &br.topk_weights[rows.start * k..rows.end * k],
            );
            assert!(e < 1e-5, "{name} seq {si}: weights differ by {e}");
            let e = max_abs(&ar.logits, &br.logits[rows.start * n..rows.end * n]);
            assert!(e < 1e-5, "{name} seq {si}: router logits differ by {e}");
        }
        offset += s.len();
    }
    assert_eq!(broutes[0].topk_indices.len(), offset * broutes[0].top_k);
}

#[test]
fn deepseek_v2_padded_batch_equals_one_at_a_time() {
    check_padded_batch("deepseek_v2_lite");
    check_padded_batch("deepseek_v2_group");
}

#[test]
fn deepseek_v2_kv_cache_continues_the_sequence() {
    for name in ["deepseek_v2_lite", "deepseek_v2_group"] {
        let r = reference(name, "reference.json");
        let mut model = load_fixture(name, Options::default());
        model.set_use_kv_cache(true);
        let split = r.input_ids.len() / 2;
        let mut first =
            Batch::from_sequences(&[r.input_ids[..split].to_vec()], &Device::Cpu).expect("batch");
        let mut hook = RecordingHook::default();
        model
            .forward(&first, Output::AllLogits, &mut RouteCtx::new(&mut hook))
            .expect("prefix");
        let mut rest =
            Batch::from_sequences(&[r.input_ids[split..].to_vec()], &Device::Cpu).expect("batch");
        rest.seqlen_offset = split;
        let logits = model
            .forward(&rest, Output::AllLogits, &mut RouteCtx::new(&mut hook))
            .expect("rest")
            .expect("logits")
            .squeeze(0)
            .expect("squeeze")
            .to_vec2::<f32>()
            .expect("to_vec2");
        let e = max_abs(&logits.concat(), &r.logits[split..].concat());
        assert!(e < 1e-4, "{name}: cached decoding logits off by {e}");
        // The second call's routing (events after the first call's) matches the reference.
        let n_moe = r.layers.len();
        for (got, want) in hook.layers[n_moe..].iter().zip(&r.layers) {
            let e = max_abs(&got.logits, &want.router_logits[split..].concat());
            assert!(e < 1e-5, "{name}: cached router logits off by {e}");
        }
        model.clear_kv_cache();
        first.seqlen_offset = 0;
        let (again, _) = run(
            model.as_mut(),
            std::slice::from_ref(&r.input_ids),
            Output::LastLogits,
        );
        let e = max_abs(
            &again.expect("logits").to_vec2::<f32>().expect("v")[0],
            &r.last_token_logits,
        );
        assert!(e < 1e-4, "{name}: after clear_kv_cache logits off by {e}");
    }
}

#[test]
fn deepseek_v2_routing_only_build_reports_the_same_routing() {
    let r = reference("deepseek_v2_group", "reference.json");
    let dir = fixture("deepseek_v2_group");
    let config = std::fs::read_to_string(dir.join("config.json")).expect("config.json");
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .expect("model.safetensors")
    };
    let rctx = BuildCtx {
        routing_only: true,
        ..ctx()
    };
    let mut model = families::build(Family::DeepseekV2, &config, vb.into(), &rctx).expect("build");
    let (out, routes) = run(
        model.as_mut(),
        std::slice::from_ref(&r.input_ids),
        Output::RoutingOnly,
    );
    assert!(out.is_none());
    assert_eq!(
        routes.iter().map(|l| l.layer).collect::<Vec<_>>(),
        r.moe_layers
    );
    for (got, want) in routes.iter().zip(&r.layers) {
        assert!(max_abs(&got.logits, &want.router_logits.concat()) < 1e-5);
    }
}

#[test]
fn deepseek_v2_info_and_layout() {
    let m = load_fixture("deepseek_v2_group", Options::default());
    let info = m.info();
    assert_eq!(info.family, Family::DeepseekV2);
    assert_eq!(info.architecture, "DeepseekV2ForCausalLM");
    assert_eq!(info.moe_layers, vec![1, 2]);
    assert_eq!(
        (info.num_experts, info.top_k, info.num_shared_experts),
        (16, 4, 2)
    );
    let l = &info.layout;
    assert_eq!(
        l.expert_module(2, 5, "up_proj"),
        "model.layers.2.mlp.experts.5.up_proj"
    );
    assert_eq!(
        l.shared_expert_prefix.as_deref(),
        Some("model.layers.{layer}.mlp.shared_experts")
    );
    assert_eq!(
        l.shared_expert_projections[0],
        Projection::new("gate_proj", 64, 64)
    );
    assert_eq!(l.router, "model.layers.{layer}.mlp.gate");
    let names: Vec<&str> = l
        .attention_projections
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "q_a_proj",
            "q_b_proj",
            "kv_a_proj_with_mqa",
            "kv_b_proj",
            "o_proj"
        ]
    );
    assert_eq!(
        l.attention_projections[1],
        Projection::new("q_b_proj", 24, 4 * 24)
    );
    assert_eq!(
        l.attention_projections[2],
        Projection::new("kv_a_proj_with_mqa", 64, 16 + 8)
    );
    assert_eq!(
        l.attention_projections[3],
        Projection::new("kv_b_proj", 16, 4 * 32)
    );
    assert_eq!(
        l.attention_projections[4],
        Projection::new("o_proj", 64, 64)
    );
    let lite = load_fixture("deepseek_v2_lite", Options::default());
    let names: Vec<&str> = lite
        .info()
        .layout
        .attention_projections
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]
    );
    assert_eq!(lite.info().moe_layers, vec![1, 2]);
}

fn tiny_config(extra: &str) -> String {
    format!(
        r#"{{"vocab_size": 16, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "q_lora_rank": null, "kv_lora_rank": 4,
            "qk_nope_head_dim": 4, "qk_rope_head_dim": 2, "v_head_dim": 4,
            "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 4 {extra}}}"#
    )
}

fn load_err(json: &str) -> String {
    let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
    match load(json, vb.into(), &ctx()) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn deepseek_v2_bad_configs_are_named() {
    assert!(
        load_err(&tiny_config("")).is_empty(),
        "the tiny config itself loads"
    );
    let e = load_err(&tiny_config(r#", "topk_method": "noaux_tc""#));
    assert!(
        e.contains("'noaux_tc'") && e.contains("greedy, group_limited_greedy"),
        "{e}"
    );
    let e = load_err(&tiny_config(
        r#", "topk_method": "group_limited_greedy", "n_group": 3, "topk_group": 1"#,
    ));
    assert!(e.contains("n_group = 3"), "{e}");
    let e = load_err(&tiny_config(r#", "topk_method": "group_limited_greedy""#));
    assert!(e.contains("needs n_group"), "{e}");
    let e = load_err(&tiny_config(r#", "moe_layer_freq": 2"#));
    assert!(e.contains("moe_layer_freq = 2"), "{e}");
    let e = load_err(&tiny_config(
        r#", "rope_scaling": {"type": "longrope", "factor": 2.0}"#,
    ));
    assert!(e.contains("'longrope'"), "{e}");
    let e = load_err(
        &tiny_config(r#", "num_experts_per_tok": null"#)
            .replace(r#""num_experts_per_tok": 2,"#, ""),
    );
    assert!(e.contains("num_experts_per_tok"), "{e}");
}

/// Values printed by transformers 4.57.6's `ROPE_INIT_FUNCTIONS["yarn"]` for
/// `qk_rope_head_dim = 16`, `rope_theta = 1e4`, `max_position_embeddings = 256`.
#[test]
fn deepseek_v2_yarn_parameters_match_transformers() {
    let cases: [(&str, f64, [f64; 8]); 3] = [
        (
            r#"{"type": "yarn", "factor": 40.0, "mscale": 0.707, "mscale_all_dim": 0.707,
                "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1}"#,
            1.0,
            [
                1.0,
                0.316_227_76,
                0.1,
                0.023_914_725,
                0.005_125,
                0.000_849_862_2,
                2.5e-05,
                7.905_694_5e-06,
            ],
        ),
        (
            r#"{"type": "yarn", "factor": 8.0, "mscale": 1.0, "mscale_all_dim": 0.5,
                "original_max_position_embeddings": 64}"#,
            1.094_18,
            [
                1.0,
                0.223_994_66,
                0.041_666_664,
                0.003_952_847,
                0.00125,
                0.000_395_284_7,
                0.000_125,
                3.952_847e-05,
            ],
        ),
        (
            r#"{"rope_type": "yarn", "factor": 4.0}"#,
            1.138_629_4,
            [
                1.0,
                0.256_935_06,
                0.0625,
                0.013_834_965,
                0.0025,
                0.000_790_569_5,
                0.00025,
                7.905_694_6e-05,
            ],
        ),
    ];
    for (rs, af, inv) in cases {
        let json = format!(
            r#"{{"hidden_size": 64, "num_attention_heads": 4, "qk_rope_head_dim": 16,
                "max_position_embeddings": 256, "rope_scaling": {rs}}}"#
        );
        let cfg: Config = serde_json::from_str(&json).expect("config");
        let (got_inv, got_af) = rope_parameters(&cfg).expect("rope");
        assert!(
            (f64::from(got_af) - af).abs() < 1e-6,
            "{rs}: attention factor {got_af} vs {af}"
        );
        for (g, w) in got_inv.iter().zip(inv) {
            assert!(
                (f64::from(*g) - w).abs() <= 1e-6 * w,
                "{rs}: inv_freq {got_inv:?} vs {inv:?}"
            );
        }
    }
}
