//! The routing change a steering spec causes on one token sequence: per MoE layer, the share of
//! tokens whose chosen expert set changed and the routing mass moved onto / off the steered
//! experts.
//!
//! Both passes read the same tokens (teacher forcing): the prompt as one chunk (steered if the
//! spec applies to the prompt), then the continuation as a second chunk through the KV cache
//! (steered if it applies to generated tokens).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ActiveSteering, Result, SteerError};
use crate::model::router::{RecordedRoute, RecordingHook};
use crate::model::{Batch, MoeModel, Output, RouteCtx};

/// One layer's routing for a whole sequence (chunks concatenated).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LayerRouting {
    pub num_experts: usize,
    pub top_k: usize,
    /// `[tokens * top_k]`.
    pub indices: Vec<u32>,
    /// `[tokens * top_k]`.
    pub weights: Vec<f32>,
}

impl LayerRouting {
    pub fn num_tokens(&self) -> usize {
        self.indices.len() / self.top_k.max(1)
    }

    /// Per-token weight on each expert (0 when not chosen), `[tokens][experts]`.
    fn dense(&self) -> Vec<Vec<f32>> {
        let k = self.top_k.max(1);
        self.indices
            .chunks(k)
            .zip(self.weights.chunks(k))
            .map(|(idx, w)| {
                let mut row = vec![0f32; self.num_experts];
                for (&e, &w) in idx.iter().zip(w) {
                    row[e as usize] += w;
                }
                row
            })
            .collect()
    }
}

/// Concatenates recorded events per decoder layer, in call order.
pub fn merge_by_layer(records: &[RecordedRoute]) -> BTreeMap<usize, LayerRouting> {
    let mut out: BTreeMap<usize, LayerRouting> = BTreeMap::new();
    for r in records {
        let l = out.entry(r.layer).or_default();
        l.num_experts = r.num_experts;
        l.top_k = r.top_k;
        l.indices.extend_from_slice(&r.topk_indices);
        l.weights.extend_from_slice(&r.topk_weights);
    }
    out
}

/// Runs `ids` (the first `prompt_len` of them the prompt) through the model and returns each
/// MoE layer's routing. Steering follows the spec's scope.
pub fn sequence_routing(
    model: &mut dyn MoeModel,
    ids: &[u32],
    prompt_len: usize,
    steering: Option<&ActiveSteering>,
) -> Result<BTreeMap<usize, LayerRouting>> {
    if prompt_len == 0 || prompt_len > ids.len() {
        return Err(SteerError::Invalid(format!(
            "prompt length {prompt_len} does not fit a sequence of {} tokens",
            ids.len()
        )));
    }
    let device = model.device().clone();
    let mut hook = RecordingHook::default();
    model.set_use_kv_cache(true);
    model.clear_kv_cache();
    let run = (|| -> Result<()> {
        let batch = Batch::from_sequences(&[ids[..prompt_len].to_vec()], &device)?;
        let mut ctx = RouteCtx::new(&mut hook).with_steering(steering.and_then(|s| s.for_prompt()));
        model.forward(&batch, Output::LastLogits, &mut ctx)?;
        if prompt_len < ids.len() {
            let mut batch = Batch::from_sequences(&[ids[prompt_len..].to_vec()], &device)?;
            batch.seqlen_offset = prompt_len;
            let mut ctx =
                RouteCtx::new(&mut hook).with_steering(steering.and_then(|s| s.for_generated()));
            model.forward(&batch, Output::LastLogits, &mut ctx)?;
        }
        Ok(())
    })();
    model.set_use_kv_cache(false);
    run?;
    Ok(merge_by_layer(&hook.layers))
}

/// How one layer's routing changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerChange {
    pub layer: usize,
    pub tokens: usize,
    /// Share of tokens whose chosen expert set differs.
    pub changed_share: f64,
    /// The experts the spec steers in this layer.
    pub steered_experts: Vec<usize>,
    /// Mean routing weight per token on the steered experts, before and after.
    pub steered_mass_before: f64,
    pub steered_mass_after: f64,
    /// Σ over steered experts of their mean weight gain (experts that gained).
    pub mass_onto: f64,
    /// Σ over steered experts of their mean weight loss (experts that lost).
    pub mass_off: f64,
}

/// Compares two routings of the same tokens.
pub fn routing_change(
    before: &BTreeMap<usize, LayerRouting>,
    after: &BTreeMap<usize, LayerRouting>,
    steered: &BTreeMap<usize, Vec<usize>>,
) -> Result<Vec<LayerChange>> {
    let mut out = Vec::new();
    for (&layer, b) in before {
        let a = after.get(&layer).ok_or_else(|| {
            SteerError::Invalid(format!("layer {layer} is missing from the steered pass"))
        })?;
        let n = b.num_tokens();
        if a.num_tokens() != n || a.top_k != b.top_k || a.num_experts != b.num_experts {
            return Err(SteerError::Invalid(format!(
                "layer {layer}: the two passes routed different numbers of tokens"
            )));
        }
        let k = b.top_k.max(1);
        let changed = b
            .indices
            .chunks(k)
            .zip(a.indices.chunks(k))
            .filter(|(x, y)| {
                let mut x = x.to_vec();
                let mut y = y.to_vec();
                x.sort_unstable();
                y.sort_unstable();
                x != y
            })
            .count();
        let experts = steered.get(&layer).cloned().unwrap_or_default();
        let (db, da) = (b.dense(), a.dense());
        let denom = n.max(1) as f64;
        let mean_of =
            |rows: &[Vec<f32>], e: usize| rows.iter().map(|r| r[e] as f64).sum::<f64>() / denom;
        let (mut before_mass, mut after_mass, mut onto, mut off) = (0.0, 0.0, 0.0, 0.0);
        for &e in &experts {
            let (mb, ma) = (mean_of(&db, e), mean_of(&da, e));
            before_mass += mb;
            after_mass += ma;
            let d = ma - mb;
            if d > 0.0 {
                onto += d;
            } else {
                off -= d;
            }
        }
        out.push(LayerChange {
            layer,
            tokens: n,
            changed_share: changed as f64 / denom,
            steered_experts: experts,
            steered_mass_before: before_mass,
            steered_mass_after: after_mass,
            mass_onto: onto,
            mass_off: off,
        });
    }
    Ok(out)
}

/// Share of the sequence's tokens that chose each expert (`[experts]`, each in `[0, 1]`; they
/// sum to `top_k`).
pub fn token_share(r: &LayerRouting) -> Vec<f64> {
    let mut share = vec![0f64; r.num_experts];
    let k = r.top_k.max(1);
    for set in r.indices.chunks(k) {
        // A set never names an expert twice; count each once anyway.
        let mut seen: Vec<u32> = set.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for e in seen {
            if let Some(s) = share.get_mut(e as usize) {
                *s += 1.0;
            }
        }
    }
    let n = r.num_tokens().max(1) as f64;
    share.iter_mut().for_each(|s| *s /= n);
    share
}

/// The routing difference of one sequence, ready to draw: per MoE layer (ascending decoder
/// layer) the share of tokens choosing each expert before and after steering, and the
/// [`LayerChange`] summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingDiff {
    /// Decoder layer of each row.
    pub layers: Vec<usize>,
    pub num_experts: usize,
    /// Tokens compared (prompt + continuation).
    pub tokens: usize,
    /// `[row][expert]` share of tokens choosing the expert, unsteered.
    pub before: Vec<Vec<f64>>,
    /// The same, steered.
    pub after: Vec<Vec<f64>>,
    /// Per row: changed-set share and mass moved onto / off the steered experts.
    pub changes: Vec<LayerChange>,
}

impl RoutingDiff {
    /// Compares two routings of the same tokens (as [`routing_change`]).
    pub fn new(
        before: &BTreeMap<usize, LayerRouting>,
        after: &BTreeMap<usize, LayerRouting>,
        steered: &BTreeMap<usize, Vec<usize>>,
    ) -> Result<Self> {
        let changes = routing_change(before, after, steered)?;
        let layers: Vec<usize> = before.keys().copied().collect();
        let num_experts = before.values().map(|r| r.num_experts).max().unwrap_or(0);
        let tokens = before
            .values()
            .map(LayerRouting::num_tokens)
            .max()
            .unwrap_or(0);
        let before_share = before.values().map(token_share).collect();
        let after_share = layers.iter().map(|l| token_share(&after[l])).collect();
        Ok(Self {
            layers,
            num_experts,
            tokens,
            before: before_share,
            after: after_share,
            changes,
        })
    }

    /// `[row][expert]` steered minus unsteered token share.
    pub fn delta(&self) -> Vec<Vec<f64>> {
        self.before
            .iter()
            .zip(&self.after)
            .map(|(b, a)| a.iter().zip(b).map(|(a, b)| a - b).collect())
            .collect()
    }

    /// True when steering changed no token's chosen set.
    pub fn unchanged(&self) -> bool {
        self.changes.iter().all(|c| c.changed_share == 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lr(indices: Vec<u32>, weights: Vec<f32>) -> LayerRouting {
        LayerRouting {
            num_experts: 4,
            top_k: 2,
            indices,
            weights,
        }
    }

    #[test]
    fn change_counts_sets_and_mass() {
        // token 0: {0,1} -> {1,0} (same set); token 1: {2,3} -> {0,3} (changed)
        let before = BTreeMap::from([(5, lr(vec![0, 1, 2, 3], vec![0.6, 0.4, 0.7, 0.3]))]);
        let after = BTreeMap::from([(5, lr(vec![1, 0, 0, 3], vec![0.5, 0.5, 0.9, 0.1]))]);
        let steered = BTreeMap::from([(5, vec![0, 2])]);
        let c = &routing_change(&before, &after, &steered).unwrap()[0];
        assert_eq!(c.tokens, 2);
        assert!((c.changed_share - 0.5).abs() < 1e-12);
        // expert 0: before (0.6 + 0) / 2 = 0.3, after (0.5 + 0.9) / 2 = 0.7: +0.4
        // expert 2: before 0.35, after 0: -0.35
        assert!((c.steered_mass_before - 0.65).abs() < 1e-6);
        assert!((c.steered_mass_after - 0.7).abs() < 1e-6);
        assert!((c.mass_onto - 0.4).abs() < 1e-6);
        assert!((c.mass_off - 0.35).abs() < 1e-6);
    }

    #[test]
    fn token_share_and_diff() {
        // tokens: {0,1}, {2,3} -> {1,0}, {0,3}
        let before = BTreeMap::from([(5, lr(vec![0, 1, 2, 3], vec![0.6, 0.4, 0.7, 0.3]))]);
        let after = BTreeMap::from([(5, lr(vec![1, 0, 0, 3], vec![0.5, 0.5, 0.9, 0.1]))]);
        assert_eq!(token_share(&before[&5]), vec![0.5, 0.5, 0.5, 0.5]);
        assert_eq!(token_share(&after[&5]), vec![1.0, 0.5, 0.0, 0.5]);
        let steered = BTreeMap::from([(5, vec![0])]);
        let d = RoutingDiff::new(&before, &after, &steered).unwrap();
        assert_eq!(d.layers, vec![5]);
        assert_eq!((d.num_experts, d.tokens), (4, 2));
        assert_eq!(d.delta(), vec![vec![0.5, 0.0, -0.5, 0.0]]);
        assert!((d.changes[0].changed_share - 0.5).abs() < 1e-12);
        assert!(!d.unchanged());
        let same = RoutingDiff::new(&before, &before, &steered).unwrap();
        assert!(same.unchanged());
        assert!(same.delta()[0].iter().all(|&v| v == 0.0));
    }
}
