//! [`ProfileRecorder`]: the routing hook that accumulates a [`RoutingProfile`] (and optionally
//! per-sequence traces) while batches of subject-labelled sequences run through a model.

use super::routing_profile::{ProfileModel, RoutingProfile, SubjectProfile};
use super::traces::{SequenceTrace, TraceLayer};
use crate::model::router::{RouteEvent, RoutingHook};

/// Accumulates per-subject count / mass / score matrices from routing events.
///
/// Call [`ProfileRecorder::begin_batch`] before each forward pass with the subject of every
/// sequence and its tokens; events then arrive with tokens in batch order.
pub struct ProfileRecorder {
    model: ProfileModel,
    layer_row: std::collections::HashMap<usize, usize>,
    subjects: Vec<SubjectProfile>,
    keep_traces: bool,
    batch_subjects: Vec<usize>,
    batch_lens: Vec<usize>,
    batch_traces: Vec<SequenceTrace>,
}

impl ProfileRecorder {
    pub fn new(model: ProfileModel, subject_names: &[String], keep_traces: bool) -> Self {
        let (l, n) = (model.moe_layers.len(), model.num_experts);
        Self {
            layer_row: model
                .moe_layers
                .iter()
                .enumerate()
                .map(|(row, &layer)| (layer, row))
                .collect(),
            subjects: subject_names
                .iter()
                .map(|s| SubjectProfile::empty(s, l, n))
                .collect(),
            model,
            keep_traces,
            batch_subjects: Vec::new(),
            batch_lens: Vec::new(),
            batch_traces: Vec::new(),
        }
    }

    /// Announces the next batch: subject index, token ids and decoded tokens of every sequence.
    pub fn begin_batch(
        &mut self,
        subjects: &[usize],
        token_ids: &[Vec<u32>],
        tokens: &[Vec<String>],
    ) {
        self.batch_subjects = subjects.to_vec();
        self.batch_lens = token_ids.iter().map(Vec::len).collect();
        for (&s, ids) in subjects.iter().zip(token_ids) {
            let p = &mut self.subjects[s];
            p.sequences += 1;
            p.tokens += ids.len() as u64;
        }
        self.batch_traces.clear();
        if self.keep_traces {
            for ((&s, ids), toks) in subjects.iter().zip(token_ids).zip(tokens) {
                self.batch_traces.push(SequenceTrace {
                    subject: self.subjects[s].name.clone(),
                    token_ids: ids.clone(),
                    tokens: toks.clone(),
                    layers: Vec::with_capacity(self.model.moe_layers.len()),
                });
            }
        }
    }

    /// Traces of the batch just run (empty unless traces are kept).
    pub fn take_batch_traces(&mut self) -> Vec<SequenceTrace> {
        std::mem::take(&mut self.batch_traces)
    }

    pub fn finish(self) -> RoutingProfile {
        RoutingProfile::new(self.model, self.subjects)
    }
}

impl RoutingHook for ProfileRecorder {
    fn on_route(&mut self, e: &RouteEvent<'_>) {
        let Some(&row) = self.layer_row.get(&e.layer) else {
            return;
        };
        let (n, k) = (e.num_experts, e.top_k);
        let mut token = 0usize;
        for (seq, (&subject, &len)) in self.batch_subjects.iter().zip(&self.batch_lens).enumerate()
        {
            let p = &mut self.subjects[subject];
            let (count, mass, score) = (&mut p.count[row], &mut p.mass[row], &mut p.score[row]);
            for t in token..token + len {
                for j in 0..k {
                    let ex = e.topk_indices[t * k + j] as usize;
                    count[ex] += 1;
                    mass[ex] += f64::from(e.topk_weights[t * k + j]);
                }
                for (acc, &s) in score.iter_mut().zip(&e.scores[t * n..(t + 1) * n]) {
                    *acc += f64::from(s);
                }
            }
            if let Some(trace) = self.batch_traces.get_mut(seq) {
                trace.layers.push(TraceLayer {
                    layer: e.layer,
                    indices: (token..token + len)
                        .map(|t| e.topk_indices[t * k..(t + 1) * k].to_vec())
                        .collect(),
                    weights: (token..token + len)
                        .map(|t| e.topk_weights[t * k..(t + 1) * k].to_vec())
                        .collect(),
                });
            }
            token += len;
        }
    }
}
