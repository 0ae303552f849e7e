//! Metrics that need individual tokens, computed from per-sequence routing traces
//! (`moescope-traces`, see [`crate::profile::traces`]):
//!
//! - counts and masses summed over any subset of sequences ([`count_traces`]);
//! - subsample stability of hot sets (MoE-Sieve §3.3: random 10 % of sequences, 50 seeded
//!   trials, mean Jaccard to the full-data hot sets);
//! - domain specialisation (share of a domain's tokens whose chosen set contains the expert) and
//!   vocabulary specialisation (share of a token id's occurrences routed to the expert), after the
//!   OLMoE analysis summarised in seed 004 and defined in DESIGN.md;
//! - top tokens per expert (decoded strings from the traces);
//! - co-activation P(e2 ∈ S | e1 ∈ S) within a layer.
//!
//! Functions index layers by their *row* in `moe_layers` (the order of `SequenceTrace::layers`)
//! and report decoder layer indices. Out-of-range experts are skipped rather than panicking;
//! [`check_traces`] reports them as an error up front.

use std::collections::{BTreeMap, BTreeSet};

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::hot::{HotSignal, hot_set, mean_layer_jaccard};
use super::{AnalysisError, to_f64};
use crate::profile::SequenceTrace;

/// Checks that every trace has `moe_layers.len()` layers with those decoder indices, one routing
/// row per token, and experts below `num_experts`.
pub fn check_traces(
    traces: &[SequenceTrace],
    moe_layers: &[usize],
    num_experts: usize,
) -> Result<(), AnalysisError> {
    for (i, t) in traces.iter().enumerate() {
        let bad = |msg: String| AnalysisError::TraceMismatch(format!("sequence {i}: {msg}"));
        if t.layers.len() != moe_layers.len() {
            return Err(bad(format!(
                "{} layers, the model has {} MoE layers",
                t.layers.len(),
                moe_layers.len()
            )));
        }
        for (layer, &expected) in t.layers.iter().zip(moe_layers) {
            if layer.layer != expected {
                return Err(bad(format!(
                    "layer {} where MoE layer {expected} was expected",
                    layer.layer
                )));
            }
            if layer.indices.len() != t.token_ids.len() {
                return Err(bad(format!(
                    "layer {}: {} routing rows for {} tokens",
                    layer.layer,
                    layer.indices.len(),
                    t.token_ids.len()
                )));
            }
            if let Some(&e) = layer
                .indices
                .iter()
                .flatten()
                .find(|&&e| e as usize >= num_experts)
            {
                return Err(bad(format!(
                    "layer {}: expert {e} but the model has {num_experts} experts",
                    layer.layer
                )));
            }
        }
    }
    Ok(())
}

/// Count and mass matrices summed over some sequences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceCounts {
    pub sequences: u64,
    pub tokens: u64,
    /// `[moe layer row][expert]` times chosen.
    pub count: Vec<Vec<u64>>,
    /// `[moe layer row][expert]` sum of routing weights.
    pub mass: Vec<Vec<f64>>,
}

impl TraceCounts {
    /// The signal matrix as `f64`.
    pub fn signal(&self, signal: HotSignal) -> Vec<Vec<f64>> {
        match signal {
            HotSignal::Count => self.count.iter().map(|r| to_f64(r)).collect(),
            HotSignal::Mass => self.mass.clone(),
        }
    }
}

/// Sums count[l][e] and mass[l][e] over `traces` (the same sums a profile holds).
pub fn count_traces<'a>(
    traces: impl IntoIterator<Item = &'a SequenceTrace>,
    num_layers: usize,
    num_experts: usize,
) -> TraceCounts {
    let mut out = TraceCounts {
        sequences: 0,
        tokens: 0,
        count: vec![vec![0; num_experts]; num_layers],
        mass: vec![vec![0.0; num_experts]; num_layers],
    };
    for t in traces {
        out.sequences += 1;
        out.tokens += t.token_ids.len() as u64;
        for (row, layer) in t.layers.iter().enumerate().take(num_layers) {
            for (indices, weights) in layer.indices.iter().zip(&layer.weights) {
                for (&e, &w) in indices.iter().zip(weights) {
                    if let (Some(c), Some(m)) = (
                        out.count[row].get_mut(e as usize),
                        out.mass[row].get_mut(e as usize),
                    ) {
                        *c += 1;
                        *m += f64::from(w);
                    }
                }
            }
        }
    }
    out
}

/// Hot sets of every layer from summed counts or masses.
fn hot_sets_of(counts: &TraceCounts, signal: HotSignal, k: usize) -> Vec<Vec<usize>> {
    counts
        .signal(signal)
        .iter()
        .map(|row| hot_set(row, k))
        .collect()
}

/// How subsample stability is measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StabilityOptions {
    /// Share of sequences per subsample (MoE-Sieve: 0.1).
    pub fraction: f64,
    /// Number of subsamples (MoE-Sieve: 50).
    pub trials: usize,
    pub seed: u64,
    pub signal: HotSignal,
    /// Hot-set size per layer.
    pub k: usize,
}

impl StabilityOptions {
    /// MoE-Sieve's protocol: 10 % subsamples, 50 trials, count signal.
    pub fn moe_sieve(k: usize, seed: u64) -> Self {
        Self {
            fraction: 0.1,
            trials: 50,
            seed,
            signal: HotSignal::Count,
            k,
        }
    }
}

/// Result of [`subsample_stability`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubsampleStability {
    pub options: StabilityOptions,
    pub total_sequences: usize,
    /// Sequences per subsample: round(fraction · total), at least 1.
    pub sample_sequences: usize,
    /// Mean over trials of the mean-over-layers Jaccard to the full-data hot sets.
    pub mean_jaccard: f64,
    pub trial_jaccards: Vec<f64>,
}

/// Subsample stability (MoE-Sieve §3.3): draw `trials` random subsets of `fraction` of the
/// sequences (without replacement, `StdRng::seed_from_u64(seed)`), compute each subset's hot
/// sets, and average their mean-over-layers Jaccard with the hot sets of all sequences.
pub fn subsample_stability(
    traces: &[&SequenceTrace],
    num_layers: usize,
    num_experts: usize,
    options: &StabilityOptions,
) -> Result<SubsampleStability, AnalysisError> {
    if traces.is_empty() {
        return Err(AnalysisError::Invalid(
            "subsample stability needs at least one sequence".into(),
        ));
    }
    if !(options.fraction > 0.0 && options.fraction <= 1.0) {
        return Err(AnalysisError::Invalid(format!(
            "subsample fraction {} is outside (0, 1]",
            options.fraction
        )));
    }
    if options.trials == 0 {
        return Err(AnalysisError::Invalid(
            "subsample stability needs at least one trial".into(),
        ));
    }
    super::hot::check_k(options.k, num_experts)?;
    let full = hot_sets_of(
        &count_traces(traces.iter().copied(), num_layers, num_experts),
        options.signal,
        options.k,
    );
    let n = traces.len();
    let m = ((options.fraction * n as f64).round() as usize).clamp(1, n);
    let mut rng = StdRng::seed_from_u64(options.seed);
    let trial_jaccards: Vec<f64> = (0..options.trials)
        .map(|_| {
            let sample = rand::seq::index::sample(&mut rng, n, m);
            let counts = count_traces(sample.iter().map(|i| traces[i]), num_layers, num_experts);
            mean_layer_jaccard(&hot_sets_of(&counts, options.signal, options.k), &full)
        })
        .collect();
    Ok(SubsampleStability {
        options: options.clone(),
        total_sequences: n,
        sample_sequences: m,
        mean_jaccard: trial_jaccards.iter().sum::<f64>() / trial_jaccards.len() as f64,
        trial_jaccards,
    })
}

/// Domain specialisation of every expert for one domain: `count[l][e] / tokens`, the share of
/// the domain's tokens whose chosen set at layer l contains e (DESIGN.md "Domain
/// specialisation"). All zeros when the domain has no tokens.
pub fn domain_specialisation(count: &[Vec<u64>], tokens: u64) -> Vec<Vec<f64>> {
    count
        .iter()
        .map(|row| {
            row.iter()
                .map(|&c| {
                    if tokens == 0 {
                        0.0
                    } else {
                        c as f64 / tokens as f64
                    }
                })
                .collect()
        })
        .collect()
}

/// Per-subject domain specialisation computed from traces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainSpecialisation {
    pub subject: String,
    pub tokens: u64,
    /// `[moe layer row][expert]` share of the subject's tokens routed to the expert.
    pub share: Vec<Vec<f64>>,
}

/// Domain specialisation of every subject present in the traces (subjects in first-seen order).
pub fn domain_specialisation_by_subject(
    traces: &[SequenceTrace],
    num_layers: usize,
    num_experts: usize,
) -> Vec<DomainSpecialisation> {
    subjects_in_order(traces)
        .into_iter()
        .map(|subject| {
            let counts = count_traces(
                traces.iter().filter(|t| t.subject == subject),
                num_layers,
                num_experts,
            );
            DomainSpecialisation {
                share: domain_specialisation(&counts.count, counts.tokens),
                tokens: counts.tokens,
                subject,
            }
        })
        .collect()
}

/// Subject names of the traces in first-seen order.
pub fn subjects_in_order(traces: &[SequenceTrace]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    traces
        .iter()
        .filter(|t| seen.insert(t.subject.as_str()))
        .map(|t| t.subject.clone())
        .collect()
}

/// How one token id was routed at one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRouting {
    /// The token decoded on its own (from the first occurrence's `tokens` entry).
    pub token: String,
    pub occurrences: u64,
    /// Per expert: occurrences whose chosen set contains the expert.
    pub routed: Vec<u64>,
}

/// Token id → routing of that token at one MoE layer row (counted by [`TokenCounter`]).
pub fn token_routing_table(
    traces: &[SequenceTrace],
    row: usize,
    num_experts: usize,
) -> BTreeMap<u32, TokenRouting> {
    let mut counter = TokenCounter::new(1, num_experts);
    for t in traces {
        counter.add_layer(0, t, row);
    }
    counter.routing_table(0)
}

/// Vocabulary specialisation of one token id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VocabularySpecialisation {
    pub token_id: u32,
    pub token: String,
    pub occurrences: u64,
    /// `[moe layer row][expert]` share of the token's occurrences routed to the expert.
    pub share: Vec<Vec<f64>>,
}

/// Vocabulary specialisation for token id `token_id` (DESIGN.md: share of x's occurrences routed
/// to e), every layer and expert. `None` if the token never occurs.
pub fn vocabulary_specialisation(
    traces: &[SequenceTrace],
    token_id: u32,
    num_layers: usize,
    num_experts: usize,
) -> Option<VocabularySpecialisation> {
    let mut token = None;
    let mut occurrences = 0u64;
    let mut routed = vec![vec![0u64; num_experts]; num_layers];
    for t in traces {
        for (pos, _) in t
            .token_ids
            .iter()
            .enumerate()
            .filter(|(_, id)| **id == token_id)
        {
            occurrences += 1;
            if token.is_none() {
                token = Some(t.tokens.get(pos).cloned().unwrap_or_default());
            }
            for (row, layer) in t.layers.iter().enumerate().take(num_layers) {
                let unique: BTreeSet<u32> = layer
                    .indices
                    .get(pos)
                    .map(|c| c.iter().copied().collect())
                    .unwrap_or_default();
                for e in unique {
                    if let Some(r) = routed[row].get_mut(e as usize) {
                        *r += 1;
                    }
                }
            }
        }
    }
    let token = token?;
    Some(VocabularySpecialisation {
        token_id,
        token,
        occurrences,
        share: routed
            .iter()
            .map(|row| row.iter().map(|&r| r as f64 / occurrences as f64).collect())
            .collect(),
    })
}

/// How the tokens of an expert are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopTokenOrder {
    /// Most occurrences routed to the expert first.
    RoutedCount,
    /// Highest vocabulary specialisation first, among tokens seen at least this often.
    Specialisation { min_occurrences: u64 },
}

/// One of an expert's top tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopToken {
    pub token_id: u32,
    pub token: String,
    /// Occurrences routed to the expert.
    pub routed: u64,
    pub occurrences: u64,
    /// Vocabulary specialisation `routed / occurrences`.
    pub share: f64,
}

/// The `n` top tokens of `expert` in a [`token_routing_table`] (ties: lower token id first).
/// Tokens never routed to the expert are left out.
pub fn top_tokens_for_expert(
    table: &BTreeMap<u32, TokenRouting>,
    expert: usize,
    n: usize,
    order: TopTokenOrder,
) -> Vec<TopToken> {
    let mut tokens: Vec<TopToken> = table
        .iter()
        .filter_map(|(&token_id, r)| {
            let routed = r.routed.get(expert).copied().unwrap_or(0);
            let eligible = match order {
                TopTokenOrder::RoutedCount => true,
                TopTokenOrder::Specialisation { min_occurrences } => {
                    r.occurrences >= min_occurrences
                }
            };
            (routed > 0 && eligible).then(|| TopToken {
                token_id,
                token: r.token.clone(),
                routed,
                occurrences: r.occurrences,
                share: routed as f64 / r.occurrences as f64,
            })
        })
        .collect();
    // BTreeMap iteration is by ascending token id and the sort is stable, so ties keep it.
    match order {
        TopTokenOrder::RoutedCount => return most_routed(tokens, n),
        TopTokenOrder::Specialisation { .. } => tokens.sort_by(|a, b| {
            b.share
                .total_cmp(&a.share)
                .then_with(|| b.routed.cmp(&a.routed))
        }),
    }
    tokens.truncate(n);
    tokens
}

/// The `n` tokens routed most often, from tokens in ascending token-id order (the stable sort
/// keeps that order among ties).
fn most_routed(mut tokens: Vec<TopToken>, n: usize) -> Vec<TopToken> {
    tokens.sort_by_key(|t| std::cmp::Reverse(t.routed));
    tokens.truncate(n);
    tokens
}

/// Per-token routing counts accumulated batch by batch (sparse, so memory follows the
/// (layer, expert, token) triples actually seen, not layers × vocabulary × experts): what the
/// explorer's heatmap tooltip shows as an expert's top tokens without keeping every trace.
#[derive(Debug, Clone, Default)]
pub struct TokenCounter {
    /// Per MoE layer row: token id → (decoded token, occurrences).
    occurrences: Vec<BTreeMap<u32, (String, u64)>>,
    /// Per MoE layer row and expert: token id → occurrences routed to the expert.
    routed: Vec<Vec<BTreeMap<u32, u64>>>,
}

impl TokenCounter {
    pub fn new(num_layers: usize, num_experts: usize) -> Self {
        Self {
            occurrences: vec![BTreeMap::new(); num_layers],
            routed: vec![vec![BTreeMap::new(); num_experts]; num_layers],
        }
    }

    /// Adds one sequence (layers beyond the counter's, or experts out of range, are skipped).
    pub fn add(&mut self, trace: &SequenceTrace) {
        for row in 0..trace.layers.len() {
            self.add_layer(row, trace, row);
        }
    }

    /// Counts the sequence's MoE layer row `trace_row` into the counter's row `row`; an
    /// expert chosen twice for one token counts once.
    fn add_layer(&mut self, row: usize, trace: &SequenceTrace, trace_row: usize) {
        let (Some(occ), Some(routed), Some(layer)) = (
            self.occurrences.get_mut(row),
            self.routed.get_mut(row),
            trace.layers.get(trace_row),
        ) else {
            return;
        };
        for (pos, (&id, chosen)) in trace.token_ids.iter().zip(&layer.indices).enumerate() {
            occ.entry(id)
                .or_insert_with(|| (trace.tokens.get(pos).cloned().unwrap_or_default(), 0))
                .1 += 1;
            let unique: BTreeSet<u32> = chosen.iter().copied().collect();
            for e in unique {
                if let Some(m) = routed.get_mut(e as usize) {
                    *m.entry(id).or_insert(0) += 1;
                }
            }
        }
    }

    /// Row `row` as a dense table: every token seen with its per-expert counts.
    pub fn routing_table(&self, row: usize) -> BTreeMap<u32, TokenRouting> {
        let (Some(occ), Some(routed)) = (self.occurrences.get(row), self.routed.get(row)) else {
            return BTreeMap::new();
        };
        occ.iter()
            .map(|(&id, (token, occurrences))| {
                let per_expert = routed
                    .iter()
                    .map(|m| m.get(&id).copied().unwrap_or(0))
                    .collect();
                let entry = TokenRouting {
                    token: token.clone(),
                    occurrences: *occurrences,
                    routed: per_expert,
                };
                (id, entry)
            })
            .collect()
    }

    /// The `n` tokens most often routed to `expert` at `row` (ties: lower token id first), as
    /// [`top_tokens_for_expert`] with [`TopTokenOrder::RoutedCount`] would give them.
    pub fn top_tokens(&self, row: usize, expert: usize, n: usize) -> Vec<TopToken> {
        let (Some(occ), Some(routed)) = (
            self.occurrences.get(row),
            self.routed.get(row).and_then(|r| r.get(expert)),
        ) else {
            return Vec::new();
        };
        let tokens: Vec<TopToken> = routed
            .iter()
            .map(|(&token_id, &routed)| {
                let (token, occurrences) = occ.get(&token_id).cloned().unwrap_or_default();
                TopToken {
                    token_id,
                    token,
                    routed,
                    occurrences,
                    share: routed as f64 / occurrences.max(1) as f64,
                }
            })
            .collect();
        most_routed(tokens, n)
    }

    /// [`Self::top_tokens`] for every `[row][expert]`.
    pub fn all_top_tokens(&self, n: usize) -> Vec<Vec<Vec<TopToken>>> {
        (0..self.routed.len())
            .map(|row| {
                (0..self.routed[row].len())
                    .map(|e| self.top_tokens(row, e, n))
                    .collect()
            })
            .collect()
    }
}

/// Co-activation of experts within one MoE layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoActivation {
    /// Decoder layer index.
    pub layer: usize,
    /// Tokens whose chosen set contains each expert.
    pub count: Vec<u64>,
    /// `joint[e1][e2]` tokens whose chosen set contains both (diagonal = `count`).
    pub joint: Vec<Vec<u64>>,
    /// `probability[e1][e2]` = P(e2 ∈ S | e1 ∈ S) = joint / count[e1]; a row of zeros for an
    /// expert never chosen.
    pub probability: Vec<Vec<f64>>,
}

/// Co-activation P(e2 ∈ S | e1 ∈ S) at MoE layer `row` (decoder layer `layer`), over all tokens
/// of `traces` (DESIGN.md "Co-activation").
pub fn co_activation(
    traces: &[SequenceTrace],
    row: usize,
    layer: usize,
    num_experts: usize,
) -> CoActivation {
    let mut joint = vec![vec![0u64; num_experts]; num_experts];
    for t in traces {
        let Some(trace_layer) = t.layers.get(row) else {
            continue;
        };
        for chosen in &trace_layer.indices {
            let unique: Vec<usize> = chosen
                .iter()
                .map(|&e| e as usize)
                .filter(|&e| e < num_experts)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            for &a in &unique {
                for &b in &unique {
                    joint[a][b] += 1;
                }
            }
        }
    }
    let count: Vec<u64> = (0..num_experts).map(|e| joint[e][e]).collect();
    let probability = joint
        .iter()
        .zip(&count)
        .map(|(row, &c)| {
            row.iter()
                .map(|&j| if c == 0 { 0.0 } else { j as f64 / c as f64 })
                .collect()
        })
        .collect();
    CoActivation {
        layer,
        count,
        joint,
        probability,
    }
}

/// One pair of experts chosen together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoActivationPair {
    pub e1: usize,
    pub e2: usize,
    /// Tokens that chose both.
    pub joint: u64,
    pub p_e2_given_e1: f64,
    pub p_e1_given_e2: f64,
}

/// The `n` expert pairs (e1 < e2) chosen together most often (ties: lower e1, then lower e2).
pub fn top_co_activation_pairs(co: &CoActivation, n: usize) -> Vec<CoActivationPair> {
    let mut pairs: Vec<CoActivationPair> = Vec::new();
    for e1 in 0..co.count.len() {
        for e2 in e1 + 1..co.count.len() {
            let joint = co.joint[e1][e2];
            if joint > 0 {
                pairs.push(CoActivationPair {
                    e1,
                    e2,
                    joint,
                    p_e2_given_e1: co.probability[e1][e2],
                    p_e1_given_e2: co.probability[e2][e1],
                });
            }
        }
    }
    pairs.sort_by_key(|p| std::cmp::Reverse(p.joint));
    pairs.truncate(n);
    pairs
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::profile::TraceLayer;

    /// A trace with one MoE layer per entry of `layers` (decoder indices 0, 1, ...), each a list
    /// of per-token chosen sets with weight 0.5 each.
    pub(crate) fn trace(subject: &str, ids: &[u32], layers: &[Vec<Vec<u32>>]) -> SequenceTrace {
        SequenceTrace {
            subject: subject.into(),
            token_ids: ids.to_vec(),
            tokens: ids.iter().map(|i| format!("t{i}")).collect(),
            layers: layers
                .iter()
                .enumerate()
                .map(|(layer, sets)| TraceLayer {
                    layer,
                    indices: sets.clone(),
                    weights: sets.iter().map(|s| vec![0.5; s.len()]).collect(),
                })
                .collect(),
        }
    }

    fn sample() -> Vec<SequenceTrace> {
        vec![
            trace("math", &[7, 8], &[vec![vec![0, 1], vec![0, 2]]]),
            trace("math", &[7], &[vec![vec![0, 1]]]),
            trace("law", &[9, 7], &[vec![vec![2, 3], vec![1, 0]]]),
        ]
    }

    #[test]
    fn counts_from_traces() {
        let t = sample();
        let c = count_traces(&t, 1, 4);
        assert_eq!(c.sequences, 3);
        assert_eq!(c.tokens, 5);
        assert_eq!(c.count, vec![vec![4, 3, 2, 1]]);
        assert_eq!(c.mass, vec![vec![2.0, 1.5, 1.0, 0.5]]);
        assert!(check_traces(&t, &[0], 4).is_ok());
        assert!(check_traces(&t, &[0], 3).is_err());
        assert!(check_traces(&t, &[5], 4).is_err());
        assert!(check_traces(&t, &[0, 1], 4).is_err());
    }

    #[test]
    fn domain_specialisation_is_share_of_domain_tokens() {
        let d = domain_specialisation_by_subject(&sample(), 1, 4);
        assert_eq!(d[0].subject, "math");
        assert_eq!(d[0].tokens, 3);
        // math: expert 0 in all 3 tokens, 1 in 2, 2 in 1, 3 in none.
        assert_eq!(d[0].share[0], vec![1.0, 2.0 / 3.0, 1.0 / 3.0, 0.0]);
        assert_eq!(d[1].subject, "law");
        assert_eq!(d[1].share[0], vec![0.5, 0.5, 0.5, 0.5]);
        assert_eq!(
            domain_specialisation(&[vec![1, 2]], 0),
            vec![vec![0.0, 0.0]]
        );
    }

    #[test]
    fn vocabulary_specialisation_share_of_occurrences() {
        // Token 7 occurs 3 times: sets {0,1}, {0,1}, {1,0} → experts 0 and 1 always.
        let v = vocabulary_specialisation(&sample(), 7, 1, 4).unwrap();
        assert_eq!(v.token, "t7");
        assert_eq!(v.occurrences, 3);
        assert_eq!(v.share[0], vec![1.0, 1.0, 0.0, 0.0]);
        assert!(vocabulary_specialisation(&sample(), 42, 1, 4).is_none());
    }

    #[test]
    fn top_tokens_per_expert() {
        let table = token_routing_table(&sample(), 0, 4);
        assert_eq!(table[&7].occurrences, 3);
        assert_eq!(table[&7].routed, vec![3, 3, 0, 0]);
        let top = top_tokens_for_expert(&table, 0, 5, TopTokenOrder::RoutedCount);
        // Expert 0: token 7 (3 of 3), token 8 (1 of 1).
        assert_eq!(top.len(), 2);
        assert_eq!((top[0].token_id, top[0].routed, top[0].share), (7, 3, 1.0));
        assert_eq!((top[1].token.as_str(), top[1].routed), ("t8", 1));
        let top2 = top_tokens_for_expert(&table, 2, 5, TopTokenOrder::RoutedCount);
        // Expert 2: token 8 once, token 9 once → tie, lower id first.
        assert_eq!(
            top2.iter().map(|t| t.token_id).collect::<Vec<_>>(),
            vec![8, 9]
        );
        let spec = top_tokens_for_expert(
            &table,
            2,
            5,
            TopTokenOrder::Specialisation { min_occurrences: 2 },
        );
        assert!(spec.is_empty());
    }

    #[test]
    fn token_counter_matches_the_trace_table() {
        let mut counter = TokenCounter::new(1, 4);
        for t in sample() {
            counter.add(&t);
        }
        let table = token_routing_table(&sample(), 0, 4);
        for e in 0..4 {
            assert_eq!(
                counter.top_tokens(0, e, 5),
                top_tokens_for_expert(&table, e, 5, TopTokenOrder::RoutedCount),
                "expert {e}"
            );
        }
        // Expert 1: token 7 routed 3 of 3 times.
        let top = counter.top_tokens(0, 1, 1);
        assert_eq!(
            (top[0].token.as_str(), top[0].routed, top[0].occurrences),
            ("t7", 3, 3)
        );
        assert!(counter.top_tokens(1, 0, 5).is_empty());
        assert_eq!(counter.all_top_tokens(2)[0][2].len(), 2);
    }

    #[test]
    fn co_activation_conditional_probabilities() {
        let co = co_activation(&sample(), 0, 0, 4);
        // Sets: {0,1}, {0,2}, {0,1}, {2,3}, {0,1}.
        assert_eq!(co.count, vec![4, 3, 2, 1]);
        assert_eq!(co.joint[0][1], 3);
        assert_eq!(co.probability[0][1], 0.75);
        assert_eq!(co.probability[1][0], 1.0);
        assert_eq!(co.probability[2][3], 0.5);
        assert_eq!(co.probability[3][2], 1.0);
        assert_eq!(co.probability[0][0], 1.0);
        let pairs = top_co_activation_pairs(&co, 2);
        assert_eq!((pairs[0].e1, pairs[0].e2, pairs[0].joint), (0, 1, 3));
        assert_eq!((pairs[1].e1, pairs[1].e2), (0, 2));
    }

    #[test]
    fn subsample_stability_is_seeded_and_exact_when_all_agree() {
        // Every sequence routes to {0, 1}: any subsample has the same hot set → Jaccard 1.
        let same: Vec<SequenceTrace> = (0..20)
            .map(|i| trace("a", &[i], &[vec![vec![0, 1]]]))
            .collect();
        let refs: Vec<&SequenceTrace> = same.iter().collect();
        let s = subsample_stability(&refs, 1, 4, &StabilityOptions::moe_sieve(2, 7)).unwrap();
        assert_eq!(s.sample_sequences, 2);
        assert_eq!(s.trial_jaccards.len(), 50);
        assert_eq!(s.mean_jaccard, 1.0);

        // Half the sequences choose {0}, half {1}; k = 1. Full counts tie → hot set {0}.
        // A 1-sequence subsample (10 % of 10) recovers {0} exactly when it draws a '0' sequence.
        let split: Vec<SequenceTrace> = (0..10)
            .map(|i| trace("a", &[i], &[vec![vec![i % 2]]]))
            .collect();
        let refs: Vec<&SequenceTrace> = split.iter().collect();
        let opts = StabilityOptions::moe_sieve(1, 3);
        let a = subsample_stability(&refs, 1, 2, &opts).unwrap();
        assert_eq!(a.sample_sequences, 1);
        assert!(a.trial_jaccards.iter().all(|&j| j == 0.0 || j == 1.0));
        let hits = a.trial_jaccards.iter().filter(|&&j| j == 1.0).count();
        assert_eq!(a.mean_jaccard, hits as f64 / 50.0);
        assert!(hits > 10 && hits < 40, "{hits}");
        // Same seed → same result; it is a pure function of its inputs.
        assert_eq!(subsample_stability(&refs, 1, 2, &opts).unwrap(), a);

        assert!(subsample_stability(&[], 1, 2, &opts).is_err());
        let bad = StabilityOptions {
            fraction: 0.0,
            ..opts
        };
        assert!(subsample_stability(&refs, 1, 2, &bad).is_err());
    }
}
