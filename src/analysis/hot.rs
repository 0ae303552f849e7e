//! Hot sets: the top-k experts of each layer by routing count or routing mass (MoE-Sieve §4
//! "Select", DESIGN.md "Hot set"), the budget → k rule (default 25 % of routed experts), and the
//! overlaps built on them: cross-subject hot-set Jaccard (MoE-Sieve §3.2 "Task-dependence") and
//! count-vs-mass agreement (MoE-Sieve §6.3).

use serde::{Deserialize, Serialize};

use super::{AnalysisError, jaccard, to_f64, top_k_indices};
use crate::profile::{RoutingProfile, SubjectProfile};

/// Which routing statistic ranks experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HotSignal {
    /// Number of tokens whose chosen set contains the expert (MoE-Sieve's default).
    Count,
    /// Sum of the routing weights the expert received.
    Mass,
}

impl std::fmt::Display for HotSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HotSignal::Count => "count",
            HotSignal::Mass => "mass",
        })
    }
}

/// The MoE-Sieve default budget: 25 % of the routed experts of each layer.
pub const DEFAULT_BUDGET: f64 = 0.25;

/// Experts per layer for a budget given as a share of the `num_experts` routed experts:
/// `round(budget · N)`, at least 1 (25 % of 64 → 16, of 60 → 15).
///
/// Errors unless `budget` is in (0, 1].
pub fn experts_for_budget(num_experts: usize, budget: f64) -> Result<usize, AnalysisError> {
    if !(budget.is_finite() && budget > 0.0 && budget <= 1.0) {
        return Err(AnalysisError::InvalidBudget(budget));
    }
    Ok(((budget * num_experts as f64).round() as usize).clamp(1, num_experts.max(1)))
}

/// Checks an explicit experts-per-layer `k` against `num_experts`.
pub fn check_k(k: usize, num_experts: usize) -> Result<usize, AnalysisError> {
    if k == 0 || k > num_experts {
        return Err(AnalysisError::InvalidK {
            k,
            max: num_experts,
        });
    }
    Ok(k)
}

/// The signal matrix `[moe layer row][expert]` of a subject as `f64`; an error for mass in a
/// count-only profile.
pub fn signal_matrix(
    subject: &SubjectProfile,
    signal: HotSignal,
) -> Result<Vec<Vec<f64>>, AnalysisError> {
    match signal {
        HotSignal::Count => Ok(subject.count.iter().map(|r| to_f64(r)).collect()),
        HotSignal::Mass => subject
            .mass()
            .map(<[_]>::to_vec)
            .map_err(|missing| AnalysisError::missing(missing, "rank experts by count instead")),
    }
}

/// Hot set of one layer: the `k` experts with the largest values, ascending expert ids
/// (ties: lower expert first).
pub fn hot_set(values: &[f64], k: usize) -> Vec<usize> {
    let mut set = top_k_indices(values, k);
    set.sort_unstable();
    set
}

/// Hot sets H_l(k) of every MoE layer row of a subject by `signal`.
pub fn hot_sets(
    subject: &SubjectProfile,
    signal: HotSignal,
    k: usize,
) -> Result<Vec<Vec<usize>>, AnalysisError> {
    Ok(signal_matrix(subject, signal)?
        .iter()
        .map(|row| hot_set(row, k))
        .collect())
}

/// Per-layer Jaccard of two lists of hot sets (same layers, same order).
pub fn per_layer_jaccard(a: &[Vec<usize>], b: &[Vec<usize>]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| jaccard(x, y)).collect()
}

/// Mean over layers of the Jaccard of two lists of hot sets (DESIGN.md "Cross-dataset Jaccard");
/// 1 when there are no layers.
pub fn mean_layer_jaccard(a: &[Vec<usize>], b: &[Vec<usize>]) -> f64 {
    let per_layer = per_layer_jaccard(a, b);
    if per_layer.is_empty() {
        return 1.0;
    }
    per_layer.iter().sum::<f64>() / per_layer.len() as f64
}

/// Cross-subject hot-set Jaccard matrix: `values[i][j]` = mean over layers of
/// J(H_l^(i)(k), H_l^(j)(k)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HotSetJaccardMatrix {
    pub signal: HotSignal,
    pub k: usize,
    pub subjects: Vec<String>,
    pub values: Vec<Vec<f64>>,
}

/// Hot-set Jaccard between every pair of the profile's subjects.
pub fn hot_set_jaccard_matrix(
    profile: &RoutingProfile,
    signal: HotSignal,
    k: usize,
) -> Result<HotSetJaccardMatrix, AnalysisError> {
    let sets = profile
        .subjects
        .iter()
        .map(|s| hot_sets(s, signal, k))
        .collect::<Result<Vec<_>, _>>()?;
    let values = sets
        .iter()
        .map(|a| sets.iter().map(|b| mean_layer_jaccard(a, b)).collect())
        .collect();
    Ok(HotSetJaccardMatrix {
        signal,
        k,
        subjects: profile.subjects.iter().map(|s| s.name.clone()).collect(),
        values,
    })
}

/// Agreement of the count-ranked and mass-ranked hot sets of one subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountMassAgreement {
    pub name: String,
    /// Mean over layers (MoE-Sieve reports 0.981 for OLMoE at 25 %).
    pub mean_jaccard: f64,
    pub per_layer: Vec<f64>,
}

/// Count-vs-mass agreement: per-layer Jaccard of H_l(k) by count and by mass, and its mean.
/// An error for a count-only subject (there is nothing to agree with).
pub fn count_mass_agreement(
    subject: &SubjectProfile,
    k: usize,
) -> Result<CountMassAgreement, AnalysisError> {
    let per_layer = per_layer_jaccard(
        &hot_sets(subject, HotSignal::Count, k)?,
        &hot_sets(subject, HotSignal::Mass, k)?,
    );
    let mean_jaccard = if per_layer.is_empty() {
        1.0
    } else {
        per_layer.iter().sum::<f64>() / per_layer.len() as f64
    };
    Ok(CountMassAgreement {
        name: subject.name.clone(),
        mean_jaccard,
        per_layer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileModel;

    #[test]
    fn budget_to_k() {
        assert_eq!(experts_for_budget(64, 0.25).unwrap(), 16);
        assert_eq!(experts_for_budget(60, 0.25).unwrap(), 15);
        assert_eq!(experts_for_budget(8, 0.25).unwrap(), 2);
        assert_eq!(experts_for_budget(8, 0.01).unwrap(), 1);
        assert_eq!(experts_for_budget(8, 1.0).unwrap(), 8);
        // 0.3 · 5 = 1.5 rounds half away from zero.
        assert_eq!(experts_for_budget(5, 0.3).unwrap(), 2);
        for bad in [0.0, -0.1, 1.01, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                experts_for_budget(8, bad),
                Err(AnalysisError::InvalidBudget(_))
            ));
        }
        assert!(check_k(0, 4).is_err());
        assert!(check_k(5, 4).is_err());
        assert_eq!(check_k(4, 4).unwrap(), 4);
    }

    fn subject(name: &str, count: Vec<Vec<u64>>, mass: Vec<Vec<f64>>) -> SubjectProfile {
        let mut s = SubjectProfile::empty(name, count.len(), count[0].len());
        s.count = count;
        s.mass = Some(mass);
        s
    }

    #[test]
    fn hot_sets_by_count_and_mass() {
        let s = subject(
            "a",
            vec![vec![5, 1, 5, 3], vec![0, 2, 9, 1]],
            vec![vec![0.5, 0.9, 0.4, 0.3], vec![0.0, 1.0, 2.0, 0.1]],
        );
        // Count row 0: 5, 1, 5, 3 → experts 0 and 2 (tie broken by lower index irrelevant here).
        assert_eq!(
            hot_sets(&s, HotSignal::Count, 2).unwrap(),
            vec![vec![0, 2], vec![1, 2]]
        );
        assert_eq!(
            hot_sets(&s, HotSignal::Mass, 2).unwrap(),
            vec![vec![0, 1], vec![1, 2]]
        );
        // Ties: [5, 5, 5] top-2 → the two lowest experts.
        assert_eq!(hot_set(&[5.0, 5.0, 5.0], 2), vec![0, 1]);
        let agreement = count_mass_agreement(&s, 2).unwrap();
        // Row 0: {0,2} vs {0,1} → 1/3; row 1: identical → 1.
        assert!((agreement.per_layer[0] - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(agreement.per_layer[1], 1.0);
        assert!((agreement.mean_jaccard - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn jaccard_matrix_across_subjects() {
        let model = ProfileModel {
            attention_kinds: Vec::new(),
            id: "t".into(),
            architecture: "X".into(),
            moe_layers: vec![0, 1],
            num_experts: 3,
            top_k: 1,
            score_fn: crate::model::router::ScoreFn::Softmax,
            layout: None,
        };
        let a = subject(
            "a",
            vec![vec![3, 2, 0], vec![1, 0, 0]],
            vec![vec![0.0; 3]; 2],
        );
        let b = subject(
            "b",
            vec![vec![0, 2, 3], vec![1, 0, 0]],
            vec![vec![0.0; 3]; 2],
        );
        let p = RoutingProfile::new(model, vec![a, b]);
        let m = hot_set_jaccard_matrix(&p, HotSignal::Count, 2).unwrap();
        // Layer 0: {0,1} vs {1,2} → 1/3. Layer 1: {0,1} vs {0,1} (ties) → 1. Mean 2/3.
        assert_eq!(m.subjects, vec!["a", "b"]);
        assert_eq!(m.values[0][0], 1.0);
        assert!((m.values[0][1] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.values[0][1], m.values[1][0]);

        let mut counts_only = p.clone();
        for s in &mut counts_only.subjects {
            s.mass = None;
            s.score = None;
        }
        let counts_only = RoutingProfile::new(counts_only.model, counts_only.subjects);
        assert_eq!(
            hot_set_jaccard_matrix(&counts_only, HotSignal::Count, 2).unwrap(),
            m
        );
        let err = hot_set_jaccard_matrix(&counts_only, HotSignal::Mass, 2).unwrap_err();
        assert!(
            err.to_string().contains("rank experts by count instead"),
            "{err}"
        );
        assert!(count_mass_agreement(&counts_only.subjects[0], 2).is_err());
    }
}
