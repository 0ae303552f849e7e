//! The HF transformers reference outputs of the fixture models (`reference.json`) and the
//! check that a loaded model reproduces them.

use std::collections::BTreeMap;

use moescope::model::router::{RecordedRoute, RecordingHook, RouteCtx};
use moescope::model::{Batch, LoadedModel, Output};
use serde::Deserialize;

use super::{fixture, load};

#[derive(Deserialize)]
pub struct RefLayer {
    pub layer: usize,
    pub router_logits: Vec<Vec<f32>>,
    pub routing_scores: Vec<Vec<f32>>,
    pub topk_indices: Vec<Vec<u32>>,
    pub topk_weights: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
pub struct Reference {
    pub input_ids: Vec<u32>,
    pub moe_layers: Vec<usize>,
    pub layers: Vec<RefLayer>,
    pub logits: Vec<Vec<f32>>,
    pub last_token_logits: Vec<f32>,
}

/// The reference each fixture is checked against. DeepSeek-V2-Lite's uses YaRN's softmax-scale
/// correction, as the released model (and transformers after 4.57) does; transformers 4.57.6
/// omits it (`reference.json`, checked in the family's unit tests).
fn reference_file(name: &str) -> &'static str {
    if name == "deepseek_v2_lite" {
        "reference_mscale_softmax.json"
    } else {
        "reference.json"
    }
}

pub fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(fixture(name).join(reference_file(name))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// How far router logits may be from the reference. Qwen3.5-MoE's DeltaNet layers amplify
/// fp32 summation-order noise about 30× (HF's own two expert implementations differ by 2.4e-5
/// there; see the fixture README), so its router logits are compared to 1e-4.
fn router_logit_tolerance(name: &str) -> f32 {
    if name == "qwen3_5_moe" { 1e-4 } else { 1e-5 }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs `ids` through `m` as one sequence: every MoE layer's recorded routing, and the
/// logits `output` asks for, flattened.
pub fn run_recorded(
    m: &mut LoadedModel,
    ids: &[u32],
    output: Output,
) -> (Vec<RecordedRoute>, Vec<f32>) {
    let batch = Batch::from_sequences(&[ids.to_vec()], &m.device).unwrap();
    let mut hook = RecordingHook::default();
    let logits = m
        .model
        .forward(&batch, output, &mut RouteCtx::new(&mut hook))
        .unwrap()
        .unwrap();
    (
        hook.layers,
        logits.flatten_all().unwrap().to_vec1().unwrap(),
    )
}

/// Checks fixture `name` loaded through the normal loader against its reference.
pub fn check_family(name: &str) {
    check_model(name, load(name));
}

/// Checks `m` against fixture `name`'s reference: the same router logits, routing scores,
/// chosen experts and weights in every MoE layer, and the same final logits.
pub fn check_model(name: &str, mut m: LoadedModel) {
    let r = reference(name);
    assert_eq!(
        m.model.info().moe_layers,
        r.moe_layers,
        "{name}: MoE layers"
    );
    let (routes, got) = run_recorded(&mut m, &r.input_ids, Output::AllLogits);
    assert_eq!(
        routes.len(),
        r.layers.len(),
        "{name}: one event per MoE layer"
    );
    for (got, want) in routes.iter().zip(&r.layers) {
        assert_eq!(got.layer, want.layer, "{name}: layer order");
        let n = got.num_experts;
        let k = got.top_k;
        let flat = |v: &Vec<Vec<f32>>| v.concat();
        let d = max_abs_diff(&got.logits, &flat(&want.router_logits));
        assert!(
            d < router_logit_tolerance(name),
            "{name} layer {}: router logits differ by {d}",
            got.layer
        );
        let d = max_abs_diff(&got.scores, &flat(&want.routing_scores));
        assert!(
            d < 1e-5,
            "{name} layer {}: routing scores differ by {d}",
            got.layer
        );
        for t in 0..r.input_ids.len() {
            let ours: BTreeMap<u32, f32> = (0..k)
                .map(|j| (got.topk_indices[t * k + j], got.topk_weights[t * k + j]))
                .collect();
            let theirs: BTreeMap<u32, f32> = want.topk_indices[t]
                .iter()
                .copied()
                .zip(want.topk_weights[t].iter().copied())
                .collect();
            assert_eq!(
                ours.keys().collect::<Vec<_>>(),
                theirs.keys().collect::<Vec<_>>(),
                "{name} layer {} token {t}: chosen experts",
                got.layer
            );
            for (e, w) in &ours {
                assert!(
                    (w - theirs[e]).abs() < 1e-5,
                    "{name} layer {} token {t} expert {e}: weight {w} vs {}",
                    got.layer,
                    theirs[e]
                );
            }
        }
        assert_eq!(got.scores.len(), r.input_ids.len() * n);
    }
    let d = max_abs_diff(&got, &r.logits.concat());
    assert!(d < 1e-4, "{name}: final logits differ by {d}");
    let v = r.last_token_logits.len();
    let d = max_abs_diff(&got[got.len() - v..], &r.last_token_logits);
    assert!(d < 1e-4, "{name}: last-token logits differ by {d}");
}
