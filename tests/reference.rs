//! Every family against HF transformers: the fixture folders under `tests/fixtures/models/`
//! (made by `tests/fixtures/make_reference.py`) load through the normal loader and reproduce
//! the reference router logits, routing scores, chosen experts, weights and final logits.
//! Also: batched (padded) runs equal one-at-a-time runs, and steering masks / forces experts.

mod common;

use common::load;
use common::reference::{check_family, max_abs_diff, reference, run_recorded};

use moescope::model::info::AttentionKind;
use moescope::model::router::{
    ExpertForce, LayerSteering, RecordedRoute, RecordingHook, RouteCtx, Steering,
};
use moescope::model::{Batch, LoadedModel, Output};

#[test]
fn olmoe_matches_reference() {
    check_family("olmoe");
}

#[test]
fn olmoe_sharded_with_clip_qkv_matches_reference() {
    check_family("olmoe_sharded");
}

#[test]
fn qwen2_moe_matches_reference() {
    check_family("qwen2_moe");
}

#[test]
fn qwen3_moe_matches_reference() {
    check_family("qwen3_moe");
}

#[test]
fn qwen3_moe_every_layer_moe_matches_reference() {
    check_family("qwen3_moe_all");
}

#[test]
fn qwen2_moe_every_layer_moe_matches_reference() {
    check_family("qwen2_moe_all");
}

#[test]
fn qwen3_5_moe() {
    check_family("qwen3_5_moe");
}

/// Qwen3.5-MoE decodes with the cache (DeltaNet convolution window and recurrent state,
/// attention keys and values) as it runs the whole sequence, from any split point, and
/// `clear_kv_cache` starts afresh.
#[test]
fn qwen3_5_moe_cached_decoding_continues_the_sequence() {
    let mut m = load("qwen3_5_moe");
    let r = reference("qwen3_5_moe");
    let n = r.input_ids.len();
    m.model.set_use_kv_cache(true);
    for split in [1, 2, n / 2, n - 1] {
        m.model.clear_kv_cache();
        let mut logits = Vec::new();
        let mut pos = 0;
        // The prefix in one call, then one token at a time.
        for end in std::iter::once(split).chain(split + 1..=n) {
            let mut batch =
                Batch::from_sequences(&[r.input_ids[pos..end].to_vec()], &m.device).unwrap();
            batch.seqlen_offset = pos;
            let mut hook = RecordingHook::default();
            let out = m
                .model
                .forward(&batch, Output::AllLogits, &mut RouteCtx::new(&mut hook))
                .unwrap()
                .unwrap();
            logits.extend(
                out.squeeze(0)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            );
            pos = end;
        }
        let d = max_abs_diff(&logits, &r.logits.concat());
        assert!(d < 1e-4, "split {split}: cached logits differ by {d}");
    }
    m.model.set_use_kv_cache(false);
    let (_, last) = run_alone(&mut m, &r.input_ids);
    let d = max_abs_diff(&last, &r.last_token_logits);
    assert!(d < 1e-4, "after cached decoding: logits differ by {d}");
}

/// Qwen3.5-MoE's parameters are the language model's: the vision tower and the multi-token
/// prediction head in the checkpoint are not counted; its layers alternate DeltaNet and full
/// attention as `layer_types` says.
#[test]
fn qwen3_5_moe_counts_only_the_language_model() {
    use moescope::model::AttentionKind;
    let m = load("qwen3_5_moe");
    let info = m.model.info();
    let (h, v, e, i, s) = (64u64, 512u64, 16u64, 32u64, 48u64);
    let moe = h * e + e * 3 * h * i + 3 * h * s + h;
    let norms = 2 * h;
    let linear = h * 128 + h * 64 + 2 * h * 4 + 128 * 4 + 2 * 4 + 16 + 64 * h;
    let full = h * 256 + 2 * h * 64 + 128 * h + 2 * 32;
    let text = 2 * v * h + h + 3 * (linear + moe + norms) + full + moe + norms;
    assert_eq!(info.total_params, text);
    assert_eq!(info.active_params, text - 4 * (e - 4) * 3 * h * i);
    use AttentionKind::{Full, Linear};
    assert_eq!(info.attention_kinds, [Linear, Linear, Linear, Full]);
}

#[test]
fn mixtral_matches_reference() {
    check_family("mixtral");
}

#[test]
fn deepseek_v2_lite_matches_reference() {
    check_family("deepseek_v2_lite");
}

#[test]
fn deepseek_v2_group_limited_matches_reference() {
    check_family("deepseek_v2_group");
}

#[test]
fn deepseek_v3_matches_reference() {
    check_family("deepseek_v3");
}

#[test]
fn kimi_k2_single_group_matches_reference() {
    check_family("kimi_k2");
}

/// DeepSeek-V3's FP8 layout (float8 e4m3 weights with `weight_scale_inv` block scales, blocks
/// of 16 with short last blocks) dequantises to the weights the reference ran with.
#[test]
fn deepseek_v3_fp8_matches_reference() {
    check_family("deepseek_v3_fp8");
}

/// Sparsemixer routing, LayerNorm with bias, attention and LM-head biases, longrope.
#[test]
fn phimoe_matches_reference() {
    check_family("phimoe");
}

#[test]
fn glm4_moe_matches_reference() {
    check_family("glm4_moe");
}

#[test]
fn minimax_m2_matches_reference() {
    check_family("minimax_m2");
}

#[test]
fn gemma4() {
    check_family("gemma4");
    // The parameter counts are the language model's (the fixture also holds a vision tower of
    // 18,080 parameters): 524,580 with the four `layer_scalar`s; 12 of 16 experts idle in each
    // of the 4 MoE layers, 3·32·64 parameters each.
    let m = load("gemma4");
    let info = m.model.info();
    assert_eq!(info.total_params, 524_580);
    assert_eq!(info.active_params, 524_580 - 4 * 12 * 3 * 32 * 64);
    let sliding = AttentionKind::Sliding { window: 4 };
    assert_eq!(
        info.attention_kinds,
        [sliding, sliding, sliding, AttentionKind::Full]
    );
}

/// gpt-oss with MXFP4 experts (kept packed, dequantised as the kernels read them), YaRN,
/// attention sinks and alternating sliding / full attention.
#[test]
fn gpt_oss() {
    check_family("gpt_oss");
}

/// The same model with dequantised (`x·W` layout, f32) expert tensors.
#[test]
fn gpt_oss_dequantised_matches_reference() {
    check_family("gpt_oss_bf16");
}

/// `ids` alone: its routing and last-token logits.
fn run_alone(m: &mut LoadedModel, ids: &[u32]) -> (Vec<RecordedRoute>, Vec<f32>) {
    run_recorded(m, ids, Output::LastLogits)
}

/// A padded batch gives each sequence the routing and logits it gets alone.
#[test]
fn batched_equals_one_at_a_time_in_every_family() {
    for name in [
        "olmoe",
        "qwen2_moe",
        "qwen3_moe",
        "mixtral",
        "deepseek_v2_lite",
        "deepseek_v2_group",
        "deepseek_v3",
        "kimi_k2",
        "glm4_moe",
        "minimax_m2",
        "gemma4",
        "phimoe",
        "gpt_oss",
        "qwen3_5_moe",
    ] {
        let mut m = load(name);
        let ids = reference(name).input_ids;
        let seqs = vec![ids[..5].to_vec(), ids.clone(), ids[3..].to_vec()];
        let batch = Batch::from_sequences(&seqs, &m.device).unwrap();
        let mut hook = RecordingHook::default();
        let logits = m
            .model
            .forward(&batch, Output::LastLogits, &mut RouteCtx::new(&mut hook))
            .unwrap()
            .unwrap();
        let v = logits.dim(1).unwrap();
        let all: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        let mut offset = 0;
        for (si, s) in seqs.iter().enumerate() {
            let (alone, alone_logits) = run_alone(&mut m, s);
            for (b, a) in hook.layers.iter().zip(&alone) {
                let k = a.top_k;
                let got = &b.topk_indices[offset * k..(offset + s.len()) * k];
                assert_eq!(
                    got,
                    &a.topk_indices[..],
                    "{name} seq {si} layer {}: experts",
                    a.layer
                );
                let d = max_abs_diff(
                    &b.topk_weights[offset * k..(offset + s.len()) * k],
                    &a.topk_weights,
                );
                assert!(
                    d < 1e-5,
                    "{name} seq {si} layer {}: weights differ by {d}",
                    a.layer
                );
            }
            let d = max_abs_diff(&all[si * v..(si + 1) * v], &alone_logits);
            assert!(d < 1e-4, "{name} seq {si}: logits differ by {d}");
            offset += s.len();
        }
    }
}

/// Stopping after the last MoE layer reports exactly the routing of a full pass.
#[test]
fn routing_only_reports_the_same_routing() {
    let mut m = load("qwen2_moe");
    let ids = reference("qwen2_moe").input_ids;
    let (full, _) = run_alone(&mut m, &ids);
    let batch = Batch::from_sequences(&[ids], &m.device).unwrap();
    let mut hook = RecordingHook::default();
    let out = m
        .model
        .forward(&batch, Output::RoutingOnly, &mut RouteCtx::new(&mut hook))
        .unwrap();
    assert!(out.is_none());
    assert_eq!(hook.layers.len(), full.len());
    for (a, b) in hook.layers.iter().zip(&full) {
        assert_eq!(a.topk_indices, b.topk_indices);
        assert_eq!(a.logits, b.logits);
    }
}

/// Through a real model: a masked expert is never chosen, a forced one always is, in every
/// family; empty steering changes nothing.
#[test]
fn steering_masks_and_forces_experts_in_every_family() {
    for name in [
        "olmoe",
        "qwen2_moe",
        "qwen3_moe",
        "mixtral",
        "deepseek_v2_lite",
        "deepseek_v2_group",
        "deepseek_v3",
        "kimi_k2",
        "glm4_moe",
        "minimax_m2",
        "gemma4",
        "phimoe",
        "gpt_oss",
        "qwen3_5_moe",
    ] {
        let mut m = load(name);
        let ids = reference(name).input_ids;
        let (plain, _) = run_alone(&mut m, &ids);
        // Mask each layer's most used expert and force its least used one.
        let mut steering = Steering::default();
        let mut expect = Vec::new();
        for l in &plain {
            let mut counts = vec![0usize; l.num_experts];
            l.topk_indices.iter().for_each(|&e| counts[e as usize] += 1);
            let hot = (0..l.num_experts)
                .max_by_key(|&e| (counts[e], std::cmp::Reverse(e)))
                .unwrap();
            let cold = (0..l.num_experts).min_by_key(|&e| (counts[e], e)).unwrap();
            steering.layers.insert(
                l.layer,
                LayerSteering {
                    bias: vec![],
                    force: vec![(hot, ExpertForce::Off), (cold, ExpertForce::On)],
                },
            );
            expect.push((l.layer, hot as u32, cold as u32));
        }
        let batch = Batch::from_sequences(std::slice::from_ref(&ids), &m.device).unwrap();
        let mut hook = RecordingHook::default();
        m.model
            .forward(
                &batch,
                Output::LastLogits,
                &mut RouteCtx::new(&mut hook).with_steering(Some(&steering)),
            )
            .unwrap();
        for (l, (layer, hot, cold)) in hook.layers.iter().zip(expect) {
            assert_eq!(l.layer, layer);
            for row in l.topk_indices.chunks(l.top_k) {
                assert!(
                    !row.contains(&hot),
                    "{name} layer {layer}: masked expert {hot} chosen"
                );
                assert!(
                    row.contains(&cold),
                    "{name} layer {layer}: forced expert {cold} missing"
                );
            }
        }
        let empty = Steering::default();
        let mut hook = RecordingHook::default();
        m.model
            .forward(
                &batch,
                Output::LastLogits,
                &mut RouteCtx::new(&mut hook).with_steering(Some(&empty)),
            )
            .unwrap();
        for (a, b) in hook.layers.iter().zip(&plain) {
            assert_eq!(a.topk_indices, b.topk_indices);
            assert_eq!(a.topk_weights, b.topk_weights);
        }
    }
}
