//! Two profiles (or two traces files) of the same model, e.g. before/after fine-tuning or two
//! checkpoints:
//!
//! - routing consistency RC = 1/(L·N) Σ_l Σ_e (ḡ²_le − ḡ¹_le)², ḡ = mean routing score per token
//!   (DAS paper, appendix eqs. 4–5);
//! - per-layer Jaccard of the two profiles' hot sets;
//! - per-subject KL shift: the change of each subject's KL vs pooled, and KL(q² ‖ q¹) between the
//!   subject's two activation distributions;
//! - router saturation from two traces files: the share of the later checkpoint's chosen experts
//!   the earlier checkpoint also chose, token by token (OLMoE's definition, seed 004).

use serde::{Deserialize, Serialize};

use super::AnalysisError;
use super::das::per_token_means;
use super::divergence::{activation_distribution, kl_divergence, kl_vs_pooled};
use super::hot::{HotSignal, hot_sets, per_layer_jaccard};
use crate::profile::{ProfileModel, RoutingProfile, RoutingSignal, SequenceTrace, SubjectProfile};

/// Errors unless both models have the same architecture, MoE layers and expert count.
pub fn check_same_model(a: &ProfileModel, b: &ProfileModel) -> Result<(), AnalysisError> {
    let differ = |what: &str, x: String, y: String| {
        Err(AnalysisError::DifferentModels(format!(
            "{what} differ: {x} vs {y}"
        )))
    };
    if a.architecture != b.architecture {
        return differ(
            "architectures",
            a.architecture.clone(),
            b.architecture.clone(),
        );
    }
    if a.moe_layers != b.moe_layers {
        return differ(
            "MoE layers",
            format!("{:?}", a.moe_layers),
            format!("{:?}", b.moe_layers),
        );
    }
    if a.num_experts != b.num_experts {
        return differ(
            "expert counts",
            a.num_experts.to_string(),
            b.num_experts.to_string(),
        );
    }
    Ok(())
}

/// RC = 1/(L·N) Σ (ḡ²_le − ḡ¹_le)² of two mean-score matrices `[layer][expert]` of equal shape.
/// 0 for empty matrices.
pub fn routing_consistency(mean_before: &[Vec<f64>], mean_after: &[Vec<f64>]) -> f64 {
    let mut sum = 0.0;
    let mut cells = 0usize;
    for (a, b) in mean_before.iter().zip(mean_after) {
        for (x, y) in a.iter().zip(b) {
            sum += (y - x).powi(2);
            cells += 1;
        }
    }
    if cells == 0 { 0.0 } else { sum / cells as f64 }
}

/// RC between two subjects' (or pooled profiles') per-token means of `signal`: routing scores
/// (the definition), or counts for count-only profiles (RC on how often each expert is chosen).
pub fn routing_consistency_between(
    before: &SubjectProfile,
    after: &SubjectProfile,
    signal: RoutingSignal,
) -> Result<f64, AnalysisError> {
    Ok(routing_consistency(
        &per_token_means(before, signal)?,
        &per_token_means(after, signal)?,
    ))
}

/// The signal RC is computed on for two profiles: routing scores when both carry them, else
/// counts.
pub fn rc_signal(before: &RoutingProfile, after: &RoutingProfile) -> RoutingSignal {
    if before.has(RoutingSignal::Score) && after.has(RoutingSignal::Score) {
        RoutingSignal::Score
    } else {
        RoutingSignal::Count
    }
}

/// One subject's routing shift between the two profiles, per MoE layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectKlShift {
    pub name: String,
    /// KL vs pooled in the first profile.
    pub kl_before: Vec<f64>,
    /// KL vs pooled in the second profile.
    pub kl_after: Vec<f64>,
    /// `kl_after − kl_before`.
    pub kl_change: Vec<f64>,
    /// KL(q_after ‖ q_before) of the subject's own activation distributions; `None` where it is
    /// infinite (an expert chosen after but never before) or the layer has no activations.
    pub divergence: Vec<Option<f64>>,
    /// RC of this subject's per-token means of the comparison's `rc_signal` (`None` if either
    /// side has no tokens).
    pub routing_consistency: Option<f64>,
}

/// KL shift of one subject, given both profiles' pooled subjects.
pub fn subject_kl_shift(
    before: &SubjectProfile,
    pooled_before: &SubjectProfile,
    after: &SubjectProfile,
    pooled_after: &SubjectProfile,
    rc_signal: RoutingSignal,
) -> SubjectKlShift {
    let kl_before = kl_vs_pooled(before, pooled_before);
    let kl_after = kl_vs_pooled(after, pooled_after);
    let divergence = after
        .count
        .iter()
        .zip(&before.count)
        .map(|(a, b)| {
            if a.iter().all(|&c| c == 0) || b.iter().all(|&c| c == 0) {
                return None;
            }
            let kl = kl_divergence(&activation_distribution(a), &activation_distribution(b));
            kl.is_finite().then_some(kl)
        })
        .collect();
    SubjectKlShift {
        name: before.name.clone(),
        kl_change: kl_after
            .iter()
            .zip(&kl_before)
            .map(|(a, b)| a - b)
            .collect(),
        kl_before,
        kl_after,
        divergence,
        routing_consistency: routing_consistency_between(before, after, rc_signal).ok(),
    }
}

fn score_signal() -> RoutingSignal {
    RoutingSignal::Score
}

/// Per-layer hot-set agreement of the two profiles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerHotJaccard {
    /// Decoder layer index.
    pub layer: usize,
    pub jaccard: f64,
}

/// Everything `moescope compare` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileComparison {
    pub model: String,
    pub signal: HotSignal,
    pub k: usize,
    /// RC over all subjects pooled (`None` if a profile has no tokens).
    pub routing_consistency: Option<f64>,
    /// What RC compares: mean routing scores, or selection frequencies when a profile carries
    /// counts only.
    #[serde(default = "score_signal")]
    pub rc_signal: RoutingSignal,
    pub hot_set_jaccard: Vec<LayerHotJaccard>,
    pub mean_hot_set_jaccard: f64,
    /// Subjects present in both profiles, in the first profile's order.
    pub subjects: Vec<SubjectKlShift>,
    pub only_in_before: Vec<String>,
    pub only_in_after: Vec<String>,
    /// Present when two traces files were given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router_saturation: Option<RouterSaturation>,
}

/// Compares two profiles of the same model: pooled RC, pooled hot-set Jaccard per layer at `k`
/// experts by `signal`, and the KL shift of every subject present in both.
pub fn compare_profiles(
    before: &RoutingProfile,
    after: &RoutingProfile,
    signal: HotSignal,
    k: usize,
) -> Result<ProfileComparison, AnalysisError> {
    check_same_model(&before.model, &after.model)?;
    super::hot::check_k(k, before.model.num_experts)?;
    let (pooled_before, pooled_after) = (before.pooled(), after.pooled());
    let rc = rc_signal(before, after);
    let per_layer = per_layer_jaccard(
        &hot_sets(&pooled_before, signal, k)?,
        &hot_sets(&pooled_after, signal, k)?,
    );
    let mean_hot_set_jaccard = if per_layer.is_empty() {
        1.0
    } else {
        per_layer.iter().sum::<f64>() / per_layer.len() as f64
    };
    let subjects = before
        .subjects
        .iter()
        .filter_map(|b| {
            after
                .subject(&b.name)
                .map(|a| subject_kl_shift(b, &pooled_before, a, &pooled_after, rc))
        })
        .collect();
    let missing = |x: &RoutingProfile, y: &RoutingProfile| {
        x.subjects
            .iter()
            .filter(|s| y.subject(&s.name).is_none())
            .map(|s| s.name.clone())
            .collect()
    };
    Ok(ProfileComparison {
        model: before.model.id.clone(),
        signal,
        k,
        routing_consistency: routing_consistency_between(&pooled_before, &pooled_after, rc).ok(),
        rc_signal: rc,
        hot_set_jaccard: before
            .model
            .moe_layers
            .iter()
            .zip(&per_layer)
            .map(|(&layer, &jaccard)| LayerHotJaccard { layer, jaccard })
            .collect(),
        mean_hot_set_jaccard,
        subjects,
        only_in_before: missing(before, after),
        only_in_after: missing(after, before),
        router_saturation: None,
    })
}

/// Router saturation of one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSaturation {
    /// Decoder layer index.
    pub layer: usize,
    pub saturation: f64,
}

/// Share of the later checkpoint's chosen experts that the earlier checkpoint also chose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterSaturation {
    pub tokens: u64,
    /// Mean over layers and tokens.
    pub overall: f64,
    pub per_layer: Vec<LayerSaturation>,
}

/// Router saturation: for every token and MoE layer, |S_earlier ∩ S_later| / |S_later|, averaged
/// over tokens per layer and over everything overall.
///
/// The two traces must come from the same sequences in the same order (same token ids) and the
/// same MoE layers; anything else is an error naming the first mismatching sequence.
pub fn router_saturation(
    earlier: &[SequenceTrace],
    later: &[SequenceTrace],
) -> Result<RouterSaturation, AnalysisError> {
    if earlier.len() != later.len() {
        return Err(AnalysisError::TraceMismatch(format!(
            "{} sequences vs {}; router saturation needs the same sequences in both",
            earlier.len(),
            later.len()
        )));
    }
    let Some(first) = later.first() else {
        return Err(AnalysisError::TraceMismatch(
            "no sequences to compare".into(),
        ));
    };
    let layers: Vec<usize> = first.layers.iter().map(|l| l.layer).collect();
    let mut sums = vec![0.0; layers.len()];
    let mut tokens_per_layer = vec![0u64; layers.len()];
    for (i, (e, l)) in earlier.iter().zip(later).enumerate() {
        if e.token_ids != l.token_ids {
            return Err(AnalysisError::TraceMismatch(format!(
                "sequence {i} has different tokens in the two traces"
            )));
        }
        let e_layers: Vec<usize> = e.layers.iter().map(|x| x.layer).collect();
        let l_layers: Vec<usize> = l.layers.iter().map(|x| x.layer).collect();
        if e_layers != layers || l_layers != layers {
            return Err(AnalysisError::TraceMismatch(format!(
                "sequence {i} has MoE layers {e_layers:?} vs {l_layers:?}, expected {layers:?}"
            )));
        }
        for (row, (el, ll)) in e.layers.iter().zip(&l.layers).enumerate() {
            for (se, sl) in el.indices.iter().zip(&ll.indices) {
                if sl.is_empty() {
                    continue;
                }
                let later_set: std::collections::BTreeSet<u32> = sl.iter().copied().collect();
                let recovered = later_set.iter().filter(|x| se.contains(x)).count();
                sums[row] += recovered as f64 / later_set.len() as f64;
                tokens_per_layer[row] += 1;
            }
        }
    }
    let per_layer: Vec<LayerSaturation> = layers
        .iter()
        .zip(sums.iter().zip(&tokens_per_layer))
        .map(|(&layer, (&s, &t))| LayerSaturation {
            layer,
            saturation: if t == 0 { 0.0 } else { s / t as f64 },
        })
        .collect();
    let total_tokens: u64 = tokens_per_layer.iter().sum();
    Ok(RouterSaturation {
        tokens: tokens_per_layer.first().copied().unwrap_or(0),
        overall: if total_tokens == 0 {
            0.0
        } else {
            sums.iter().sum::<f64>() / total_tokens as f64
        },
        per_layer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::traces::tests::trace;

    fn model(num_experts: usize) -> ProfileModel {
        ProfileModel {
            attention_kinds: Vec::new(),
            id: "m".into(),
            architecture: "OlmoeForCausalLM".into(),
            moe_layers: vec![0, 1],
            num_experts,
            top_k: 1,
            score_fn: crate::model::router::ScoreFn::Softmax,
            layout: None,
        }
    }

    fn subject(
        name: &str,
        tokens: u64,
        count: Vec<Vec<u64>>,
        score: Vec<Vec<f64>>,
    ) -> SubjectProfile {
        let mut s = SubjectProfile::empty(name, 2, 2);
        s.tokens = tokens;
        s.count = count;
        s.score = Some(score);
        s
    }

    #[test]
    fn rc_on_counts_when_a_profile_has_no_scores() {
        // One subject of 2 tokens, 2 layers × 2 experts, top-1: selection frequencies
        // [1, 0] before and [0.5, 0.5] after in both layers → RC = 4 · 0.5² / 4 = 0.25.
        let mut before = SubjectProfile::empty("a", 2, 2);
        before.tokens = 2;
        before.count = vec![vec![2, 0], vec![2, 0]];
        let mut after = SubjectProfile::empty("a", 2, 2);
        after.tokens = 2;
        after.count = vec![vec![1, 1], vec![1, 1]];
        after.score = None;
        after.mass = None;
        let m = model(2);
        let (b, a) = (
            RoutingProfile::new(m.clone(), vec![before]),
            RoutingProfile::new(m, vec![after]),
        );
        assert_eq!(rc_signal(&b, &a), RoutingSignal::Count);
        let c = compare_profiles(&b, &a, HotSignal::Count, 1).unwrap();
        assert_eq!(c.rc_signal, RoutingSignal::Count);
        assert!((c.routing_consistency.unwrap() - 0.25).abs() < 1e-12);
        assert!((c.subjects[0].routing_consistency.unwrap() - 0.25).abs() < 1e-12);
    }

    #[test]
    fn rc_hand_computed() {
        // Differences 0.1, -0.1, 0.2, 0 → squares 0.01, 0.01, 0.04, 0 → sum 0.06 / 4 = 0.015.
        let a = vec![vec![0.5, 0.5], vec![0.4, 0.6]];
        let b = vec![vec![0.6, 0.4], vec![0.6, 0.6]];
        assert!((routing_consistency(&a, &b) - 0.015).abs() < 1e-12);
        assert_eq!(routing_consistency(&a, &a), 0.0);
    }

    #[test]
    fn different_models_are_rejected() {
        let a = model(2);
        let mut b = model(2);
        b.num_experts = 3;
        let err = check_same_model(&a, &b).unwrap_err().to_string();
        assert!(err.contains("expert counts differ: 2 vs 3"), "{err}");
        let mut c = model(2);
        c.moe_layers = vec![0, 2];
        assert!(
            check_same_model(&a, &c)
                .unwrap_err()
                .to_string()
                .contains("MoE layers")
        );
        let mut d = model(2);
        d.architecture = "MixtralForCausalLM".into();
        assert!(check_same_model(&a, &d).is_err());
        let mut e = model(2);
        e.id = "another checkpoint".into();
        assert!(check_same_model(&a, &e).is_ok());
    }

    #[test]
    fn compare_two_profiles() {
        let before = RoutingProfile::new(
            model(2),
            vec![
                subject(
                    "a",
                    2,
                    vec![vec![2, 0], vec![1, 1]],
                    vec![vec![1.0, 1.0], vec![1.0, 1.0]],
                ),
                subject(
                    "b",
                    2,
                    vec![vec![0, 2], vec![1, 1]],
                    vec![vec![1.0, 1.0], vec![1.0, 1.0]],
                ),
            ],
        );
        let after = RoutingProfile::new(
            model(2),
            vec![
                subject(
                    "a",
                    2,
                    vec![vec![2, 0], vec![2, 0]],
                    vec![vec![1.6, 0.4], vec![2.0, 0.0]],
                ),
                subject(
                    "c",
                    2,
                    vec![vec![2, 0], vec![0, 2]],
                    vec![vec![1.6, 0.4], vec![0.0, 2.0]],
                ),
            ],
        );
        let c = compare_profiles(&before, &after, HotSignal::Count, 1).unwrap();
        // Pooled mean scores: before all 0.5; after [[0.8, 0.2], [0.5, 0.5]].
        // RC = (0.09 + 0.09 + 0 + 0) / 4 = 0.045.
        assert!((c.routing_consistency.unwrap() - 0.045).abs() < 1e-12);
        // Pooled counts before [[2, 2], [2, 2]] → hot {0}, {0}; after [[4, 0], [2, 2]] → {0}, {0}.
        assert_eq!(
            c.hot_set_jaccard[0],
            LayerHotJaccard {
                layer: 0,
                jaccard: 1.0
            }
        );
        assert_eq!(c.mean_hot_set_jaccard, 1.0);
        assert_eq!(c.only_in_before, vec!["b"]);
        assert_eq!(c.only_in_after, vec!["c"]);
        assert_eq!(c.subjects.len(), 1);
        let a = &c.subjects[0];
        // Layer 0 before: a = [1, 0] vs pooled [0.5, 0.5] → ln 2; after pooled [1, 0] → 0.
        assert!((a.kl_before[0] - 2f64.ln()).abs() < 1e-12);
        assert_eq!(a.kl_after[0], 0.0);
        assert!((a.kl_change[0] + 2f64.ln()).abs() < 1e-12);
        // Layer 1: a before [0.5, 0.5], after [1, 0] → KL(after ‖ before) = ln 2.
        assert!((a.divergence[1].unwrap() - 2f64.ln()).abs() < 1e-12);
        assert_eq!(a.divergence[0], Some(0.0));
        // Subject RC: before all 0.5; after [[0.8, 0.2], [1, 0]] → (0.09·2 + 0.25·2) / 4 = 0.17.
        assert!((a.routing_consistency.unwrap() - 0.17).abs() < 1e-12);

        let mut other = after.clone();
        other.model.num_experts = 3;
        assert!(compare_profiles(&before, &other, HotSignal::Count, 1).is_err());
    }

    #[test]
    fn kl_divergence_is_none_when_infinite() {
        let before = subject("a", 1, vec![vec![1, 0], vec![1, 0]], vec![vec![0.0; 2]; 2]);
        let after = subject("a", 1, vec![vec![0, 1], vec![1, 0]], vec![vec![0.0; 2]; 2]);
        let s = subject_kl_shift(&before, &before, &after, &after, RoutingSignal::Score);
        assert_eq!(s.divergence, vec![None, Some(0.0)]);
    }

    #[test]
    fn router_saturation_token_by_token() {
        let earlier = vec![trace(
            "a",
            &[1, 2],
            &[vec![vec![0, 1], vec![2, 3]], vec![vec![0, 1], vec![0, 1]]],
        )];
        let later = vec![trace(
            "a",
            &[1, 2],
            &[vec![vec![1, 0], vec![2, 0]], vec![vec![2, 3], vec![1, 2]]],
        )];
        let s = router_saturation(&earlier, &later).unwrap();
        // Layer 0: token 1 recovers 2/2, token 2 recovers {2} of {2, 0} → 1/2. Mean 0.75.
        // Layer 1: 0/2 and 1/2 → 0.25. Overall (0.75 + 0.25) / 2 = 0.5.
        assert_eq!(s.tokens, 2);
        assert_eq!(
            s.per_layer[0],
            LayerSaturation {
                layer: 0,
                saturation: 0.75
            }
        );
        assert_eq!(s.per_layer[1].saturation, 0.25);
        assert_eq!(s.overall, 0.5);
        assert_eq!(router_saturation(&later, &later).unwrap().overall, 1.0);

        let shifted = vec![trace(
            "a",
            &[1, 3],
            &[vec![vec![0], vec![0]], vec![vec![0], vec![0]]],
        )];
        let err = router_saturation(&earlier, &shifted)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sequence 0 has different tokens"), "{err}");
        assert!(router_saturation(&earlier, &[]).is_err());
    }
}
