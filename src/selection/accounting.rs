//! What a selection costs and what it captures (DESIGN.md "Always report the selection's
//! trainable parameters"; MoE-Sieve Table 4):
//!
//! - LoRA trainable parameters at rank r: r·(in + out) per adapted projection, from the real
//!   projection shapes in the profile's [`ModuleLayout`] (selected experts, plus optionally
//!   attention, router and shared experts), against LoRA on all routed experts with the same
//!   extras;
//! - adapter size in bytes (fp32 by default; tensor data only, no file header);
//! - the routing coverage the selection captures per subject: its share of all activations
//!   (count) and of all routing weight (mass).

use serde::{Deserialize, Serialize};

use super::{Selection, SelectionError};
use crate::model::{ModuleLayout, Projection};
use crate::profile::{ProfileModel, RoutingProfile, SubjectProfile};

/// Which non-expert modules an adapter also covers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AdapterScope {
    /// Attention projections of every decoder layer.
    pub attention: bool,
    /// The router linear of every MoE layer.
    pub router: bool,
    /// The shared experts of every MoE layer (families that have them).
    pub shared_experts: bool,
    /// Decoder layers that have attention. The profile does not record it, so by default it is
    /// taken as `max(moe_layers) + 1` (right for every supported family unless the last layers
    /// are dense).
    pub num_decoder_layers: Option<usize>,
}

impl AdapterScope {
    /// Decoder layers with attention: the given number, or `max(moe_layers) + 1`.
    pub fn decoder_layers(&self, moe_layers: &[usize]) -> usize {
        self.num_decoder_layers
            .unwrap_or_else(|| moe_layers.iter().max().map_or(0, |&l| l + 1))
    }
}

/// How to count parameters and bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountingOptions {
    pub rank: usize,
    pub scope: AdapterScope,
    /// Bytes per stored adapter parameter (4 for fp32, 2 for bf16/fp16).
    pub bytes_per_param: u64,
}

impl AccountingOptions {
    /// Rank `rank`, experts only, fp32.
    pub fn new(rank: usize) -> Self {
        Self {
            rank,
            scope: AdapterScope::default(),
            bytes_per_param: 4,
        }
    }
}

/// LoRA trainable parameters of one projection at `rank`: A is [r, in], B is [out, r].
pub fn lora_params(projection: &Projection, rank: usize) -> u64 {
    rank as u64 * (projection.in_features + projection.out_features) as u64
}

/// LoRA parameters of a set of projections (e.g. one expert's).
pub fn lora_params_of(projections: &[Projection], rank: usize) -> u64 {
    projections.iter().map(|p| lora_params(p, rank)).sum()
}

/// Trainable LoRA parameters by module kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ParamBreakdown {
    pub experts: u64,
    pub attention: u64,
    pub router: u64,
    pub shared_experts: u64,
    pub total: u64,
}

/// The parameters of the non-expert modules in `scope` (same for any expert selection).
fn extras(
    layout: &ModuleLayout,
    moe_layers: &[usize],
    num_experts: usize,
    rank: usize,
    scope: &AdapterScope,
) -> ParamBreakdown {
    let moe = moe_layers.len() as u64;
    let attention = if scope.attention {
        (0..scope.decoder_layers(moe_layers))
            .map(|layer| lora_params_of(layout.attention_projections_of(layer), rank))
            .sum()
    } else {
        0
    };
    let router = if scope.router {
        moe * lora_params(
            &Projection::new("gate", layout.router_in, num_experts),
            rank,
        )
    } else {
        0
    };
    let shared_experts = if scope.shared_experts && layout.shared_expert_prefix.is_some() {
        moe * lora_params_of(&layout.shared_expert_projections, rank)
    } else {
        0
    };
    ParamBreakdown {
        experts: 0,
        attention,
        router,
        shared_experts,
        total: attention + router + shared_experts,
    }
}

/// Routing coverage a selection captures for one subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectCoverage {
    pub subject: String,
    /// Σ_{(l,e)∈sel} count[l][e] / Σ_{l,e} count[l][e].
    pub count_share: f64,
    /// Σ_{(l,e)∈sel} mass[l][e] / Σ_{l,e} mass[l][e]; `None` for count-only profiles.
    pub mass_share: Option<f64>,
}

/// Share of a subject's activations (count) and routing weight (mass, when the profile carries
/// it) that falls on the selected cells, over all MoE layers. 0 for a subject without
/// activations.
pub fn routing_coverage(
    selection: &Selection,
    moe_layers: &[usize],
    subject: &SubjectProfile,
) -> SubjectCoverage {
    let share = |rows: &[Vec<f64>]| {
        let (mut inside, mut all) = (0.0, 0.0);
        for (row, &layer) in rows.iter().zip(moe_layers) {
            for (e, &v) in row.iter().enumerate() {
                all += v;
                if selection.contains(layer, e) {
                    inside += v;
                }
            }
        }
        if all > 0.0 { inside / all } else { 0.0 }
    };
    let counts: Vec<Vec<f64>> = subject
        .count
        .iter()
        .map(|r| r.iter().map(|&c| c as f64).collect())
        .collect();
    SubjectCoverage {
        subject: subject.name.clone(),
        count_share: share(&counts),
        mass_share: subject.mass().ok().map(share),
    }
}

/// A selection's cost against LoRA on all experts, and what it covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accounting {
    pub rank: usize,
    pub scope: AdapterScope,
    pub selected_experts: usize,
    /// L · N routed experts.
    pub total_experts: usize,
    /// The selection's trainable parameters.
    pub selected: ParamBreakdown,
    /// LoRA on every routed expert with the same extras.
    pub all_experts: ParamBreakdown,
    /// 1 − selected expert params / all expert params.
    pub expert_reduction: f64,
    /// 1 − selected total / all-experts total (MoE-Sieve's "Red." column).
    pub total_reduction: f64,
    pub bytes_per_param: u64,
    pub adapter_bytes: u64,
    pub all_experts_adapter_bytes: u64,
    /// All subjects pooled.
    pub pooled_coverage: SubjectCoverage,
    pub coverage: Vec<SubjectCoverage>,
}

/// Trainable parameters of `selection` and of LoRA on all experts, from `layout`'s shapes.
pub fn parameter_breakdown(
    selection: &Selection,
    layout: &ModuleLayout,
    moe_layers: &[usize],
    num_experts: usize,
    rank: usize,
    scope: &AdapterScope,
) -> (ParamBreakdown, ParamBreakdown) {
    let per_expert = lora_params_of(&layout.expert_projections, rank);
    let extra = extras(layout, moe_layers, num_experts, rank, scope);
    let with_experts = |n: u64| ParamBreakdown {
        experts: n * per_expert,
        total: extra.total + n * per_expert,
        ..extra
    };
    (
        with_experts(selection.len() as u64),
        with_experts((moe_layers.len() * num_experts) as u64),
    )
}

/// Errors unless the model records a module layout (needed for shapes and module names).
pub fn require_layout(model: &ProfileModel) -> Result<&ModuleLayout, SelectionError> {
    model.layout.as_ref().ok_or_else(|| {
        SelectionError::Invalid(format!(
            "the profile of {} has no module layout (projection names and shapes); re-profile \
             the model with this version of moescope to count parameters or export adapters",
            model.id
        ))
    })
}

/// Parameter accounting and per-subject coverage of `selection` on `profile`'s model.
///
/// Errors if the selection does not fit the model, the rank is 0, or the profile has no layout.
pub fn account(
    selection: &Selection,
    profile: &RoutingProfile,
    options: &AccountingOptions,
) -> Result<Accounting, SelectionError> {
    let model = &profile.model;
    selection.validate_for(model)?;
    if options.rank == 0 {
        return Err(SelectionError::Invalid(
            "LoRA rank must be at least 1".into(),
        ));
    }
    let layout = require_layout(model)?;
    let (selected, all_experts) = parameter_breakdown(
        selection,
        layout,
        &model.moe_layers,
        model.num_experts,
        options.rank,
        &options.scope,
    );
    let reduction = |a: u64, b: u64| {
        if b == 0 {
            0.0
        } else {
            1.0 - a as f64 / b as f64
        }
    };
    Ok(Accounting {
        rank: options.rank,
        scope: options.scope.clone(),
        selected_experts: selection.len(),
        total_experts: model.moe_layers.len() * model.num_experts,
        expert_reduction: reduction(selected.experts, all_experts.experts),
        total_reduction: reduction(selected.total, all_experts.total),
        bytes_per_param: options.bytes_per_param,
        adapter_bytes: selected.total * options.bytes_per_param,
        all_experts_adapter_bytes: all_experts.total * options.bytes_per_param,
        selected,
        all_experts,
        pooled_coverage: routing_coverage(selection, &model.moe_layers, &profile.pooled()),
        coverage: profile
            .subjects
            .iter()
            .map(|s| routing_coverage(selection, &model.moe_layers, s))
            .collect(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::selection::SelectionModel;

    /// OLMoE-like layout: H = 16, I = 8, 4 attention projections of 16×16.
    pub(crate) fn olmoe_layout() -> ModuleLayout {
        ModuleLayout {
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
            attention_overrides: Default::default(),
            router: "model.layers.{layer}.mlp.gate".into(),
            router_in: 16,
        }
    }

    pub(crate) fn profile_with_layout() -> RoutingProfile {
        let model = ProfileModel {
            attention_kinds: Vec::new(),
            id: "tiny-olmoe".into(),
            architecture: "OlmoeForCausalLM".into(),
            moe_layers: vec![0, 1],
            num_experts: 4,
            top_k: 2,
            score_fn: crate::model::router::ScoreFn::Softmax,
            layout: Some(olmoe_layout()),
        };
        let mut a = SubjectProfile::empty("math", 2, 4);
        a.tokens = 5;
        a.count = vec![vec![4, 3, 2, 1], vec![5, 5, 0, 0]];
        a.mass = Some(vec![vec![2.0, 1.0, 1.0, 1.0], vec![1.0, 4.0, 0.0, 0.0]]);
        let mut b = SubjectProfile::empty("law", 2, 4);
        b.tokens = 5;
        b.count = vec![vec![0, 0, 5, 5], vec![0, 0, 5, 5]];
        b.mass = Some(vec![vec![0.0, 0.0, 2.5, 2.5], vec![0.0, 0.0, 2.5, 2.5]]);
        RoutingProfile::new(model, vec![a, b])
    }

    #[test]
    fn lora_params_from_shapes() {
        // SwiGLU expert: 3·r·(H + I) = 3 · 2 · 24 = 144 at rank 2.
        assert_eq!(lora_params(&Projection::new("gate_proj", 16, 8), 2), 48);
        assert_eq!(lora_params_of(&olmoe_layout().expert_projections, 2), 144);
    }

    #[test]
    fn accounting_hand_computed() {
        let p = profile_with_layout();
        let sel =
            Selection::explicit(SelectionModel::from(&p.model), [(0, 0), (0, 1), (1, 1)]).unwrap();
        let a = account(&sel, &p, &AccountingOptions::new(2)).unwrap();
        assert_eq!(a.selected_experts, 3);
        assert_eq!(a.total_experts, 8);
        assert_eq!(a.selected.experts, 3 * 144);
        assert_eq!(a.all_experts.experts, 8 * 144);
        assert_eq!(a.selected.total, 432);
        assert!((a.expert_reduction - 0.625).abs() < 1e-12);
        assert!((a.total_reduction - 0.625).abs() < 1e-12);
        assert_eq!(a.adapter_bytes, 432 * 4);
        assert_eq!(a.all_experts_adapter_bytes, 1152 * 4);
        // math counts in selection: 4 + 3 + 5 = 12 of 20; mass 2 + 1 + 4 = 7 of 10.
        assert_eq!(a.coverage[0].count_share, 0.6);
        assert!((a.coverage[0].mass_share.unwrap() - 0.7).abs() < 1e-12);
        assert_eq!(a.coverage[1].count_share, 0.0);
        // Pooled: 12 of 40.
        assert_eq!(a.pooled_coverage.count_share, 0.3);

        // With attention (2 decoder layers · 4 · 2·32 = 512), router (2 · 2·(16+4) = 80).
        let mut opts = AccountingOptions::new(2);
        opts.scope = AdapterScope {
            attention: true,
            router: true,
            shared_experts: true,
            num_decoder_layers: None,
        };
        opts.bytes_per_param = 2;
        let b = account(&sel, &p, &opts).unwrap();
        assert_eq!(b.selected.attention, 512);
        assert_eq!(b.selected.router, 80);
        assert_eq!(b.selected.shared_experts, 0, "OLMoE has no shared experts");
        assert_eq!(b.selected.total, 432 + 592);
        assert_eq!(b.all_experts.total, 1152 + 592);
        assert!((b.total_reduction - (1.0 - 1024.0 / 1744.0)).abs() < 1e-12);
        assert_eq!(b.adapter_bytes, 1024 * 2);
        opts.scope.num_decoder_layers = Some(3);
        assert_eq!(account(&sel, &p, &opts).unwrap().selected.attention, 768);
    }

    #[test]
    fn shared_experts_counted_when_the_layout_has_them() {
        let mut p = profile_with_layout();
        let layout = p.model.layout.as_mut().unwrap();
        layout.shared_expert_prefix = Some("model.layers.{layer}.mlp.shared_expert".into());
        layout.shared_expert_projections = vec![
            Projection::new("gate_proj", 16, 32),
            Projection::new("up_proj", 16, 32),
            Projection::new("down_proj", 32, 16),
        ];
        let sel = Selection::explicit(SelectionModel::from(&p.model), [(0, 0)]).unwrap();
        let mut opts = AccountingOptions::new(1);
        opts.scope.shared_experts = true;
        // 2 MoE layers · 3 · (16 + 32) = 288.
        assert_eq!(
            account(&sel, &p, &opts).unwrap().selected.shared_experts,
            288
        );
    }

    #[test]
    fn accounting_errors() {
        let mut p = profile_with_layout();
        let sel = Selection::explicit(SelectionModel::from(&p.model), [(1, 3)]).unwrap();
        assert!(account(&sel, &p, &AccountingOptions::new(0)).is_err());
        let mut smaller = p.clone();
        smaller.model.num_experts = 3;
        let err = account(&sel, &smaller, &AccountingOptions::new(2))
            .unwrap_err()
            .to_string();
        assert!(err.contains("expert 3 of layer 1"), "{err}");
        p.model.layout = None;
        let err = account(&sel, &p, &AccountingOptions::new(2))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no module layout"), "{err}");
    }
}
