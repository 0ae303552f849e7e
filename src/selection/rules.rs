//! Selection rules (DESIGN.md "Selection rules"):
//!
//! - uniform hot top-k per layer by count or by mass (MoE-Sieve §4, default k = 25 % of N);
//! - coverage threshold: per layer, the fewest experts reaching a target share (MoE-Sieve §6.2);
//! - greedy budget: B = k·L slots, one per layer first, then each slot to the layer whose next
//!   expert adds the most coverage (MoE-Sieve appendix C);
//! - DAS top-k per layer for a domain against general data (DAS paper §3.2);
//! - random at a matched budget, seeded (the baseline of MoE-Sieve §6.1);
//! - explicit lists (the GUI's clicked cells; see [`super::Selection::explicit`]).
//!
//! Each rule is a pure function returning [`LayerExperts`]; [`select`] runs a [`SelectionRule`]
//! on a profile and records it in a [`Selection`].

use std::collections::{BTreeMap, BTreeSet};

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::{LayerExperts, Selection, SelectionError, SelectionModel};
use crate::analysis::das::{GeneralSet, domain_advantage};
use crate::analysis::hot::{HotSignal, check_k, signal_matrix};
use crate::analysis::{AnalysisError, find_subject, top_k_indices};
use crate::profile::{RoutingProfile, RoutingSignal, SubjectProfile};

/// A rule and its parameters, as recorded in a selection file (`"rule": {"name": "hot", ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum SelectionRule {
    /// The `k` most-routed experts of every layer by `signal`.
    Hot { signal: HotSignal, k: usize },
    /// Per layer, the fewest experts whose share of the layer's `signal` reaches `threshold`.
    Coverage { signal: HotSignal, threshold: f64 },
    /// `k · L` slots: one per layer, then by marginal coverage of `signal`.
    Greedy { signal: HotSignal, k: usize },
    /// The `k` highest-DAS experts of every layer for `domain` against `general` (empty: the
    /// other subjects pooled), DAS computed on `signal` (routing scores, or counts for
    /// count-only profiles).
    Das {
        domain: String,
        general: Vec<String>,
        k: usize,
        #[serde(default = "score_signal")]
        signal: RoutingSignal,
    },
    /// `k` experts per layer uniformly at random.
    Random { k: usize, seed: u64 },
    /// As many random experts per layer as another selection has.
    RandomMatched {
        seed: u64,
        /// Decoder layer → experts drawn there; stored as `[{"layer": l, "experts": n}, ...]`.
        #[serde(with = "layer_counts")]
        per_layer: BTreeMap<usize, usize>,
        /// The rule of the selection whose budget is matched.
        matched: Box<SelectionRule>,
    },
    /// Cells listed by hand (GUI clicks or `--experts`).
    Explicit,
}

fn score_signal() -> RoutingSignal {
    RoutingSignal::Score
}

/// Serialises a layer → count map as a list of `{"layer", "experts"}` objects: integer map keys
/// do not survive serde's buffering inside an internally tagged enum.
mod layer_counts {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct LayerCount {
        layer: usize,
        experts: usize,
    }

    pub fn serialize<S: Serializer>(map: &BTreeMap<usize, usize>, s: S) -> Result<S::Ok, S::Error> {
        let list: Vec<LayerCount> = map
            .iter()
            .map(|(&layer, &experts)| LayerCount { layer, experts })
            .collect();
        list.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<usize, usize>, D::Error> {
        let list = Vec::<LayerCount>::deserialize(d)?;
        Ok(list.into_iter().map(|c| (c.layer, c.experts)).collect())
    }
}

/// Uniform hot top-k: each layer's `k` experts with the largest `signal` (ties: lower expert).
pub fn hot_top_k(
    subject: &SubjectProfile,
    moe_layers: &[usize],
    signal: HotSignal,
    k: usize,
) -> Result<LayerExperts, AnalysisError> {
    Ok(signal_matrix(subject, signal)?
        .iter()
        .zip(moe_layers)
        .map(|(row, &layer)| (layer, top_k_indices(row, k).into_iter().collect()))
        .collect())
}

/// Coverage threshold: per layer, the fewest experts (by descending `signal`) whose share of the
/// layer's total reaches `threshold` ∈ (0, 1]. A layer without activations gets no expert.
pub fn coverage_threshold(
    subject: &SubjectProfile,
    moe_layers: &[usize],
    signal: HotSignal,
    threshold: f64,
) -> Result<LayerExperts, AnalysisError> {
    if !(threshold.is_finite() && threshold > 0.0 && threshold <= 1.0) {
        return Err(AnalysisError::Invalid(format!(
            "coverage threshold {threshold} is outside (0, 1]"
        )));
    }
    Ok(signal_matrix(subject, signal)?
        .iter()
        .zip(moe_layers)
        .map(|(row, &layer)| {
            let total: f64 = row.iter().sum();
            let mut chosen = BTreeSet::new();
            if total > 0.0 {
                let mut covered = 0.0;
                for e in top_k_indices(row, row.len()) {
                    chosen.insert(e);
                    covered += row[e];
                    // Relative tolerance so that e.g. 0.6 of 10 counts as reached at 6.
                    if covered / total >= threshold - 1e-12 {
                        break;
                    }
                }
            }
            (layer, chosen)
        })
        .collect())
}

/// Greedy budget (MoE-Sieve appendix C): B = k·L slots; every layer starts with its top expert,
/// then each further slot goes to the layer whose next-ranked expert adds the largest share of
/// that layer's `signal` (ties: lower layer). A full layer takes no more slots.
pub fn greedy_budget(
    subject: &SubjectProfile,
    moe_layers: &[usize],
    signal: HotSignal,
    k: usize,
) -> Result<LayerExperts, AnalysisError> {
    let matrix = signal_matrix(subject, signal)?;
    let ranked: Vec<Vec<usize>> = matrix
        .iter()
        .map(|row| top_k_indices(row, row.len()))
        .collect();
    let totals: Vec<f64> = matrix.iter().map(|row| row.iter().sum()).collect();
    let layers = matrix.len();
    let mut taken: Vec<usize> = ranked.iter().map(|r| r.len().min(1)).collect();
    let mut remaining = (k * layers).saturating_sub(taken.iter().sum());
    while remaining > 0 {
        let gain = |l: usize| -> Option<f64> {
            let next = *ranked[l].get(taken[l])?;
            Some(if totals[l] > 0.0 {
                matrix[l][next] / totals[l]
            } else {
                0.0
            })
        };
        let mut best: Option<(usize, f64)> = None;
        for l in 0..layers {
            if let Some(g) = gain(l)
                && best.is_none_or(|(_, bg)| g > bg)
            {
                best = Some((l, g));
            }
        }
        let Some((l, _)) = best else { break };
        taken[l] += 1;
        remaining -= 1;
    }
    Ok(ranked
        .iter()
        .zip(&taken)
        .zip(moe_layers)
        .map(|((r, &n), &layer)| (layer, r[..n].iter().copied().collect()))
        .collect())
}

/// DAS top-k: each layer's `k` experts with the highest DAS (ties: lower expert).
pub fn das_top_k(das: &[Vec<f64>], moe_layers: &[usize], k: usize) -> LayerExperts {
    das.iter()
        .zip(moe_layers)
        .map(|(row, &layer)| (layer, top_k_indices(row, k).into_iter().collect()))
        .collect()
}

/// Random baseline: `per_layer[l]` experts of layer `l` drawn uniformly without replacement, one
/// `StdRng::seed_from_u64(seed)` stream over the layers in ascending order.
pub fn random_per_layer(
    per_layer: &BTreeMap<usize, usize>,
    num_experts: usize,
    seed: u64,
) -> Result<LayerExperts, AnalysisError> {
    let mut rng = StdRng::seed_from_u64(seed);
    per_layer
        .iter()
        .map(|(&layer, &n)| {
            if n > num_experts {
                return Err(AnalysisError::InvalidK {
                    k: n,
                    max: num_experts,
                });
            }
            let chosen = rand::seq::index::sample(&mut rng, num_experts, n);
            Ok((layer, chosen.into_iter().collect()))
        })
        .collect()
}

/// Random `k` experts in every MoE layer.
pub fn random_uniform(
    moe_layers: &[usize],
    num_experts: usize,
    k: usize,
    seed: u64,
) -> Result<LayerExperts, AnalysisError> {
    check_k(k, num_experts)?;
    let per_layer = moe_layers.iter().map(|&l| (l, k)).collect();
    random_per_layer(&per_layer, num_experts, seed)
}

/// A random selection with the same number of experts per layer as `other` (seeded).
pub fn random_matched(other: &Selection, seed: u64) -> Result<Selection, SelectionError> {
    let per_layer = other.per_layer_counts();
    let experts = random_per_layer(&per_layer, other.model.num_experts, seed)?;
    let mut selection = Selection::new(
        other.model.clone(),
        SelectionRule::RandomMatched {
            seed,
            per_layer,
            matched: Box::new(other.rule.clone()),
        },
        experts,
    )?;
    selection.source_profile = other.source_profile.clone();
    selection.data = other.data.clone();
    Ok(selection)
}

/// Runs `rule` on `profile` and records the result. Count/mass rules rank the subject `data`
/// (`None`: all subjects pooled); DAS uses its own domain and general set.
pub fn select(
    profile: &RoutingProfile,
    rule: &SelectionRule,
    data: Option<&str>,
) -> Result<Selection, SelectionError> {
    let model = &profile.model;
    let layers = &model.moe_layers;
    let (data_profile, data_name) = match data {
        Some(name) => (find_subject(profile, name)?.clone(), name.to_string()),
        None => (profile.pooled(), "pooled".to_string()),
    };
    let (experts, data_name) = match rule {
        SelectionRule::Hot { signal, k } => {
            check_k(*k, model.num_experts)?;
            (hot_top_k(&data_profile, layers, *signal, *k)?, data_name)
        }
        SelectionRule::Coverage { signal, threshold } => (
            coverage_threshold(&data_profile, layers, *signal, *threshold)?,
            data_name,
        ),
        SelectionRule::Greedy { signal, k } => {
            check_k(*k, model.num_experts)?;
            (
                greedy_budget(&data_profile, layers, *signal, *k)?,
                data_name,
            )
        }
        SelectionRule::Das {
            domain,
            general,
            k,
            signal,
        } => {
            check_k(*k, model.num_experts)?;
            let das = domain_advantage(profile, domain, &GeneralSet::from_names(general), *signal)?;
            (das_top_k(&das.das, layers, *k), domain.clone())
        }
        SelectionRule::Random { k, seed } => (
            random_uniform(layers, model.num_experts, *k, *seed)?,
            "none".to_string(),
        ),
        SelectionRule::RandomMatched {
            seed, per_layer, ..
        } => (
            random_per_layer(per_layer, model.num_experts, *seed)?,
            "none".to_string(),
        ),
        SelectionRule::Explicit => {
            return Err(SelectionError::Invalid(
                "an explicit selection is made from a list of cells, not from a profile".into(),
            ));
        }
    };
    let mut selection = Selection::new(SelectionModel::from(model), rule.clone(), experts)?;
    selection.data = Some(data_name);
    Ok(selection)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileModel;

    fn set(experts: &[usize]) -> BTreeSet<usize> {
        experts.iter().copied().collect()
    }

    fn subject(count: Vec<Vec<u64>>) -> SubjectProfile {
        let mut s = SubjectProfile::empty("a", count.len(), count[0].len());
        s.mass = Some(
            count
                .iter()
                .map(|r| r.iter().map(|&c| c as f64 / 10.0).collect())
                .collect(),
        );
        s.count = count;
        s
    }

    fn profile() -> RoutingProfile {
        let model = ProfileModel {
            attention_kinds: Vec::new(),
            id: "tiny".into(),
            architecture: "OlmoeForCausalLM".into(),
            moe_layers: vec![1, 3],
            num_experts: 4,
            top_k: 2,
            score_fn: crate::model::router::ScoreFn::Softmax,
            layout: None,
        };
        let mut math = SubjectProfile::empty("math", 2, 4);
        math.tokens = 10;
        math.count = vec![vec![8, 6, 4, 2], vec![10, 5, 3, 2]];
        math.mass = Some(vec![vec![1.0, 4.0, 1.0, 0.5], vec![5.0, 1.0, 1.0, 1.0]]);
        math.score = Some(vec![vec![4.0, 3.0, 2.0, 1.0], vec![1.0, 1.0, 1.0, 7.0]]);
        let mut law = SubjectProfile::empty("law", 2, 4);
        law.tokens = 10;
        law.count = vec![vec![2, 4, 6, 8], vec![5, 5, 5, 5]];
        law.mass = Some(vec![vec![0.5, 1.0, 1.5, 2.0], vec![1.0, 1.0, 1.0, 1.0]]);
        law.score = Some(vec![vec![1.0, 2.0, 3.0, 4.0], vec![4.0, 2.0, 2.0, 2.0]]);
        RoutingProfile::new(model, vec![math, law])
    }

    #[test]
    fn hot_by_count_and_by_mass() {
        let p = profile();
        let count = select(
            &p,
            &SelectionRule::Hot {
                signal: HotSignal::Count,
                k: 2,
            },
            Some("math"),
        )
        .unwrap();
        assert_eq!(
            count.experts,
            BTreeMap::from([(1, set(&[0, 1])), (3, set(&[0, 1]))])
        );
        assert_eq!(count.data.as_deref(), Some("math"));
        let mass = select(
            &p,
            &SelectionRule::Hot {
                signal: HotSignal::Mass,
                k: 1,
            },
            Some("math"),
        )
        .unwrap();
        assert_eq!(
            mass.experts,
            BTreeMap::from([(1, set(&[1])), (3, set(&[0]))])
        );
        // Pooled layer 1 counts [10, 10, 10, 10] → ties → experts 0, 1.
        let pooled = select(
            &p,
            &SelectionRule::Hot {
                signal: HotSignal::Count,
                k: 2,
            },
            None,
        )
        .unwrap();
        assert_eq!(pooled.experts[&1], set(&[0, 1]));
        assert_eq!(pooled.experts[&3], set(&[0, 1]));
        assert_eq!(pooled.data.as_deref(), Some("pooled"));
    }

    #[test]
    fn coverage_threshold_fewest_experts() {
        let s = subject(vec![vec![6, 3, 1, 0], vec![1, 1, 1, 1], vec![0, 0, 0, 0]]);
        let sel = coverage_threshold(&s, &[0, 1, 2], HotSignal::Count, 0.6).unwrap();
        // Layer 0: 6/10 reaches 0.6 exactly with one expert. Layer 1: 3 experts (0.75).
        assert_eq!(sel[&0], set(&[0]));
        assert_eq!(sel[&1], set(&[0, 1, 2]));
        assert!(sel[&2].is_empty());
        let all = coverage_threshold(&s, &[0, 1, 2], HotSignal::Count, 1.0).unwrap();
        assert_eq!(all[&0], set(&[0, 1, 2]));
        assert!(coverage_threshold(&s, &[0, 1, 2], HotSignal::Count, 0.0).is_err());
        assert!(coverage_threshold(&s, &[0, 1, 2], HotSignal::Count, 1.2).is_err());
    }

    #[test]
    fn greedy_budget_by_marginal_coverage() {
        // k = 2, L = 2 → 4 slots. Start: layer 0 {0} (0.5), layer 1 {0} (0.4).
        // Gains: layer 0 next = 0.3, layer 1 next = 0.35 → layer 1 gets slot 3;
        // then layer 0 (0.3) vs layer 1 (0.15) → layer 0 gets slot 4.
        let s = subject(vec![vec![50, 30, 20, 0], vec![40, 35, 15, 10]]);
        let sel = greedy_budget(&s, &[4, 5], HotSignal::Count, 2).unwrap();
        assert_eq!(sel[&4], set(&[0, 1]));
        assert_eq!(sel[&5], set(&[0, 1]));
        // k = 3 → 6 slots: two more after the above. Layer 0 next 0.2, layer 1 next 0.15 →
        // layer 0; then layer 0 next 0.0 vs layer 1 0.15 → layer 1.
        let sel = greedy_budget(&s, &[4, 5], HotSignal::Count, 3).unwrap();
        assert_eq!(sel[&4], set(&[0, 1, 2]));
        assert_eq!(sel[&5], set(&[0, 1, 2]));
        // Skewed: layer 1 is flat, so it takes the extra slots.
        let s = subject(vec![vec![97, 1, 1, 1], vec![25, 25, 25, 25]]);
        let sel = greedy_budget(&s, &[0, 1], HotSignal::Count, 2).unwrap();
        assert_eq!(sel[&0], set(&[0]));
        assert_eq!(sel[&1], set(&[0, 1, 2]));
        // Budget above L·N fills every layer and stops.
        let sel = greedy_budget(&s, &[0, 1], HotSignal::Count, 9).unwrap();
        assert_eq!(sel[&0].len() + sel[&1].len(), 8);
    }

    #[test]
    fn das_rule_picks_domain_experts() {
        let p = profile();
        let rule = SelectionRule::Das {
            domain: "math".into(),
            general: vec![],
            k: 1,
            signal: RoutingSignal::Score,
        };
        let s = select(&p, &rule, None).unwrap();
        // math − law means: layer 1 [0.3, 0.1, -0.1, -0.3]; layer 3 [-0.3, -0.1, -0.1, 0.5].
        assert_eq!(s.experts, BTreeMap::from([(1, set(&[0])), (3, set(&[3]))]));
        assert_eq!(s.data.as_deref(), Some("math"));
        let unknown = SelectionRule::Das {
            domain: "poetry".into(),
            general: vec![],
            k: 1,
            signal: RoutingSignal::Score,
        };
        let err = select(&p, &unknown, None).unwrap_err().to_string();
        assert!(err.contains("unknown subject 'poetry'"), "{err}");
    }

    #[test]
    fn random_is_seeded_and_matches_budget() {
        let p = profile();
        let rule = SelectionRule::Random { k: 2, seed: 42 };
        let a = select(&p, &rule, None).unwrap();
        assert_eq!(a, select(&p, &rule, None).unwrap());
        assert!(
            a.experts
                .values()
                .all(|e| e.len() == 2 && e.iter().all(|&x| x < 4))
        );
        let other = select(&p, &SelectionRule::Random { k: 2, seed: 43 }, None).unwrap();
        let many_seeds_differ = (0..20u64).any(|seed| {
            select(&p, &SelectionRule::Random { k: 2, seed }, None)
                .unwrap()
                .experts
                != a.experts
        });
        assert!(many_seeds_differ, "{other:?}");

        let coverage = select(
            &p,
            &SelectionRule::Coverage {
                signal: HotSignal::Count,
                threshold: 0.5,
            },
            Some("math"),
        )
        .unwrap();
        // math layer 1: 8+6 = 14/20 ≥ 0.5 → 2; layer 3: 10/20 → 1.
        assert_eq!(
            coverage.per_layer_counts(),
            BTreeMap::from([(1, 2), (3, 1)])
        );
        let matched = random_matched(&coverage, 7).unwrap();
        assert_eq!(matched.per_layer_counts(), coverage.per_layer_counts());
        assert!(matches!(
            matched.rule,
            SelectionRule::RandomMatched { seed: 7, .. }
        ));
        // The rule record survives a save/load round trip.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        matched.save(&path).unwrap();
        assert_eq!(Selection::load(&path).unwrap(), matched);
    }

    #[test]
    fn bad_k_and_unknown_data_subject() {
        let p = profile();
        for k in [0, 5] {
            let err = select(
                &p,
                &SelectionRule::Hot {
                    signal: HotSignal::Count,
                    k,
                },
                None,
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("outside 1..=4"), "{err}");
        }
        let err = select(
            &p,
            &SelectionRule::Hot {
                signal: HotSignal::Count,
                k: 1,
            },
            Some("x"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown subject 'x'"), "{err}");
        assert!(select(&p, &SelectionRule::Explicit, None).is_err());
    }
}
