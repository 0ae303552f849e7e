//! Per-subject routing specificity (the blog post "MoE gate routing across 14 MMLU-Pro
//! subjects", DESIGN.md "KL vs pooled"): KL(q_s,l ‖ q_pooled,l) per layer, each subject's top-k
//! layers by KL, and how much those top-layer sets overlap across subjects (mean pairwise Jaccard
//! and per-layer appearance counts).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{jaccard, top_k_indices};
use crate::profile::{RoutingProfile, SubjectProfile};

/// Activation distribution q_l = count[l] / Σ_e count[l][e] (DESIGN.md "Metrics").
/// A layer with no activations gives all zeros.
pub fn activation_distribution(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return vec![0.0; counts.len()];
    }
    counts.iter().map(|&c| c as f64 / total as f64).collect()
}

/// KL(p ‖ q) = Σ_e p_e ln(p_e / q_e) in nats, with 0 · ln 0 = 0.
///
/// Returns +∞ if some `p_e > 0` where `q_e = 0` (cannot happen for a subject against a pool
/// that contains it, which is why the blog needs no smoothing).
pub fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    p.iter()
        .zip(q)
        .filter(|(pe, _)| **pe > 0.0)
        .map(|(&pe, &qe)| {
            if qe > 0.0 {
                pe * (pe / qe).ln()
            } else {
                f64::INFINITY
            }
        })
        .sum()
}

/// KL(q_s,l ‖ q_pooled,l) for every MoE layer row: how distinctive the subject's routing is at
/// that layer. A layer where the subject has no activations gives 0.
pub fn kl_vs_pooled(subject: &SubjectProfile, pooled: &SubjectProfile) -> Vec<f64> {
    subject
        .count
        .iter()
        .zip(&pooled.count)
        .map(|(s, p)| {
            if s.iter().all(|&c| c == 0) {
                return 0.0;
            }
            kl_divergence(&activation_distribution(s), &activation_distribution(p))
        })
        .collect()
}

/// One subject's KL vs pooled per MoE layer and its top layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectDivergence {
    pub name: String,
    /// KL vs pooled per MoE layer (rows of `moe_layers`).
    pub kl: Vec<f64>,
    /// Decoder layer indices of the top layers by KL, highest first.
    pub top_layers: Vec<usize>,
}

/// The decoder layer indices of the `k` MoE layers with the highest KL, highest first; ties go to
/// the lower layer (DESIGN.md: "Top-3 layers per subject by KL (ties: lower layer first)").
pub fn top_k_layers(kl: &[f64], moe_layers: &[usize], k: usize) -> Vec<usize> {
    top_k_indices(kl, k)
        .into_iter()
        .filter_map(|row| moe_layers.get(row).copied())
        .collect()
}

/// KL vs pooled and top-`k` layers for every subject of the profile (pooled = all subjects).
pub fn subject_divergences(profile: &RoutingProfile, k: usize) -> Vec<SubjectDivergence> {
    let pooled = profile.pooled();
    profile
        .subjects
        .iter()
        .map(|s| {
            let kl = kl_vs_pooled(s, &pooled);
            SubjectDivergence {
                name: s.name.clone(),
                top_layers: top_k_layers(&kl, &profile.model.moe_layers, k),
                kl,
            }
        })
        .collect()
}

/// How much the subjects' top-layer sets overlap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLayerOverlap {
    /// Mean Jaccard over all unordered subject pairs; `None` with fewer than two subjects.
    pub mean_pairwise: Option<f64>,
    /// Decoder layer → number of subjects whose top set contains it.
    pub layer_appearances: BTreeMap<usize, usize>,
    /// Number of subject pairs averaged.
    pub pairs: usize,
}

/// Mean pairwise Jaccard of the top-layer sets over all subject pairs, and how many subjects each
/// layer appears in (the blog's "shared backbone" numbers).
pub fn top_layer_overlap(top_layer_sets: &[Vec<usize>]) -> TopLayerOverlap {
    let mut layer_appearances = BTreeMap::new();
    for set in top_layer_sets {
        let mut unique = set.clone();
        unique.sort_unstable();
        unique.dedup();
        for layer in unique {
            *layer_appearances.entry(layer).or_insert(0) += 1;
        }
    }
    let mut sum = 0.0;
    let mut pairs = 0;
    for (i, a) in top_layer_sets.iter().enumerate() {
        for b in &top_layer_sets[i + 1..] {
            sum += jaccard(a, b);
            pairs += 1;
        }
    }
    TopLayerOverlap {
        mean_pairwise: (pairs > 0).then(|| sum / pairs as f64),
        layer_appearances,
        pairs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileModel;

    #[test]
    fn kl_hand_computed() {
        // KL([0.5, 0.5] ‖ [0.25, 0.75]) = 0.5 ln 2 + 0.5 ln(2/3)
        let expected = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
        assert!((kl_divergence(&[0.5, 0.5], &[0.25, 0.75]) - expected).abs() < 1e-12);
        assert_eq!(kl_divergence(&[0.0, 1.0], &[0.5, 0.5]), 2f64.ln());
        assert_eq!(kl_divergence(&[1.0, 0.0], &[0.0, 1.0]), f64::INFINITY);
        assert_eq!(kl_divergence(&[0.3, 0.7], &[0.3, 0.7]), 0.0);
    }

    #[test]
    fn activation_distribution_normalises_counts() {
        assert_eq!(activation_distribution(&[1, 3]), vec![0.25, 0.75]);
        assert_eq!(activation_distribution(&[0, 0]), vec![0.0, 0.0]);
    }

    fn profile() -> RoutingProfile {
        let model = ProfileModel {
            attention_kinds: Vec::new(),
            id: "t".into(),
            architecture: "OlmoeForCausalLM".into(),
            moe_layers: vec![1, 3, 5],
            num_experts: 2,
            top_k: 1,
            score_fn: crate::model::router::ScoreFn::Softmax,
            layout: None,
        };
        let mut a = SubjectProfile::empty("a", 3, 2);
        a.count = vec![vec![2, 2], vec![4, 0], vec![1, 3]];
        let mut b = SubjectProfile::empty("b", 3, 2);
        b.count = vec![vec![2, 2], vec![0, 4], vec![3, 1]];
        RoutingProfile::new(model, vec![a, b])
    }

    #[test]
    fn kl_vs_pooled_and_top_layers() {
        let p = profile();
        let d = subject_divergences(&p, 2);
        // Layer row 0: both [0.5, 0.5], pooled [0.5, 0.5] → 0.
        // Row 1: a = [1, 0] vs pooled [0.5, 0.5] → ln 2.
        // Row 2: a = [0.25, 0.75] vs pooled [0.5, 0.5] → 0.25 ln 0.5 + 0.75 ln 1.5.
        let row2 = 0.25 * 0.5f64.ln() + 0.75 * 1.5f64.ln();
        assert_eq!(d[0].kl[0], 0.0);
        assert!((d[0].kl[1] - 2f64.ln()).abs() < 1e-12);
        assert!((d[0].kl[2] - row2).abs() < 1e-12);
        // Decoder layer indices, highest KL first.
        assert_eq!(d[0].top_layers, vec![3, 5]);
        assert_eq!(d[1].top_layers, vec![3, 5]);
    }

    #[test]
    fn top_layers_ties_go_to_lower_layer() {
        assert_eq!(
            top_k_layers(&[0.1, 0.2, 0.2, 0.2], &[4, 8, 12, 16], 2),
            vec![8, 12]
        );
        assert_eq!(top_k_layers(&[0.0, 0.0], &[4, 8], 1), vec![4]);
    }

    #[test]
    fn subject_without_tokens_has_zero_kl() {
        let mut p = profile();
        p.subjects.push(SubjectProfile::empty("empty", 3, 2));
        let d = subject_divergences(&p, 3);
        assert_eq!(d[2].kl, vec![0.0, 0.0, 0.0]);
    }

    /// The blog post's table: top-3 KL layers of 14 MMLU-Pro subjects on Qwen3.5-35B-A3B.
    /// It reports mean pairwise Jaccard 0.496 and layers 8, 14, 20 each in 11 of 14 subjects.
    #[test]
    fn blog_table_of_14_mmlu_pro_subjects() {
        let table: [(&str, [usize; 3]); 14] = [
            ("Chemistry", [20, 8, 14]),
            ("Math", [14, 20, 18]),
            ("Business", [14, 19, 8]),
            ("Engineering", [8, 9, 14]),
            ("Physics", [8, 20, 14]),
            ("Law", [14, 19, 15]),
            ("Other", [20, 8, 14]),
            ("Computer Science", [20, 8, 15]),
            ("Health", [20, 8, 14]),
            ("History", [14, 20, 9]),
            ("Philosophy", [8, 20, 14]),
            ("Economics", [8, 20, 14]),
            ("Psychology", [20, 8, 9]),
            ("Biology", [20, 8, 13]),
        ];
        let sets: Vec<Vec<usize>> = table.iter().map(|(_, s)| s.to_vec()).collect();
        let overlap = top_layer_overlap(&sets);
        assert_eq!(overlap.pairs, 91);
        let mean = overlap.mean_pairwise.unwrap();
        assert_eq!(format!("{mean:.3}"), "0.496");
        for layer in [8, 14, 20] {
            assert_eq!(overlap.layer_appearances[&layer], 11, "layer {layer}");
        }
        assert_eq!(overlap.layer_appearances[&9], 3);
        assert_eq!(overlap.layer_appearances[&19], 2);
        assert_eq!(overlap.layer_appearances[&15], 2);
        assert_eq!(overlap.layer_appearances[&18], 1);
        assert_eq!(overlap.layer_appearances[&13], 1);
        let exact_backbone = sets
            .iter()
            .filter(|s| jaccard(s, &[8, 14, 20]) == 1.0)
            .count();
        assert_eq!(exact_backbone, 6);
    }

    #[test]
    fn overlap_with_one_subject_has_no_mean() {
        let o = top_layer_overlap(&[vec![1, 2]]);
        assert_eq!(o.mean_pairwise, None);
        assert_eq!(o.layer_appearances.len(), 2);
    }
}
