//! Test fixtures shared by the analysis subcommands' unit tests: a small profile and traces
//! that match it.

use std::path::Path;

use crate::model::{ModuleLayout, Projection};
use crate::profile::traces::TraceWriter;
use crate::profile::{ProfileModel, RoutingProfile, SequenceTrace, SubjectProfile, TraceLayer};

/// A two-layer, four-expert OLMoE-layout profile with two subjects.
pub(crate) fn fixture_profile() -> RoutingProfile {
    let layout = ModuleLayout {
        expert_prefix: "model.layers.{layer}.mlp.experts.{expert}".into(),
        expert_projections: vec![
            Projection::new("gate_proj", 16, 8),
            Projection::new("up_proj", 16, 8),
            Projection::new("down_proj", 8, 16),
        ],
        shared_expert_prefix: None,
        shared_expert_projections: vec![],
        attention_prefix: "model.layers.{layer}.self_attn".into(),
        attention_projections: ["q_proj", "k_proj", "v_proj", "o_proj"]
            .iter()
            .map(|n| Projection::new(n, 16, 16))
            .collect(),
        router: "model.layers.{layer}.mlp.gate".into(),
        router_in: 16,
    };
    let model: ProfileModel = serde_json::from_value(serde_json::json!({
        "id": "tiny-olmoe", "architecture": "OlmoeForCausalLM", "moe_layers": [0, 1],
        "num_experts": 4, "top_k": 2, "score_fn": "softmax"
    }))
    .unwrap();
    let model = ProfileModel {
        layout: Some(layout),
        ..model
    };
    let mut a = SubjectProfile::empty("math", 2, 4);
    a.sequences = 2;
    a.tokens = 3;
    a.count = vec![vec![3, 2, 1, 0], vec![3, 3, 0, 0]];
    a.mass = vec![vec![1.5, 1.0, 0.5, 0.0], vec![1.5, 1.5, 0.0, 0.0]];
    a.score = vec![vec![1.2, 0.9, 0.6, 0.3], vec![1.5, 1.2, 0.2, 0.1]];
    let mut b = SubjectProfile::empty("law", 2, 4);
    b.sequences = 1;
    b.tokens = 2;
    b.count = vec![vec![1, 1, 1, 1], vec![0, 0, 2, 2]];
    b.mass = vec![vec![0.5, 0.5, 0.5, 0.5], vec![0.0, 0.0, 1.0, 1.0]];
    b.score = vec![vec![0.5, 0.5, 0.5, 0.5], vec![0.2, 0.2, 0.8, 0.8]];
    RoutingProfile::new(model, vec![a, b])
}

/// Traces matching [`fixture_profile`]'s counts.
pub(crate) fn fixture_traces() -> Vec<SequenceTrace> {
    let t = |subject: &str, ids: &[u32], l0: Vec<Vec<u32>>, l1: Vec<Vec<u32>>| SequenceTrace {
        subject: subject.into(),
        token_ids: ids.to_vec(),
        tokens: ids.iter().map(|i| format!("tok{i}")).collect(),
        layers: [l0, l1]
            .into_iter()
            .enumerate()
            .map(|(layer, indices)| TraceLayer {
                layer,
                weights: indices.iter().map(|s| vec![0.5; s.len()]).collect(),
                indices,
            })
            .collect(),
    };
    vec![
        t(
            "math",
            &[7, 8],
            vec![vec![0, 1], vec![0, 2]],
            vec![vec![0, 1], vec![0, 1]],
        ),
        t("math", &[7], vec![vec![0, 1]], vec![vec![0, 1]]),
        t(
            "law",
            &[9, 7],
            vec![vec![2, 3], vec![1, 0]],
            vec![vec![2, 3], vec![2, 3]],
        ),
    ]
}

pub(crate) fn write_traces(path: &Path, model: &ProfileModel, traces: &[SequenceTrace]) {
    let mut w = TraceWriter::create(path, model).unwrap();
    for t in traces {
        w.write(t).unwrap();
    }
    w.finish().unwrap();
}
