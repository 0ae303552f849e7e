//! [`ProfileRecorder`]: the routing hook that accumulates a [`RoutingProfile`] (and optionally
//! per-sequence traces) while batches of subject-labelled sequences run through a model.

use super::routing_profile::{ProfileModel, RoutingProfile, SubjectProfile};
use super::traces::{SequenceTrace, TraceLayer};
use crate::model::router::{RouteEvent, RoutingHook};

/// Accumulates per-subject count / mass / score matrices from routing events.
///
/// Call [`ProfileRecorder::begin_batch`] before each forward pass with the subject of every
/// sequence and its tokens; events then arrive with tokens in batch order. A layer-major run
/// announces every batch first and then switches between them with
/// [`ProfileRecorder::resume_batch`].
pub struct ProfileRecorder {
    model: ProfileModel,
    layer_row: std::collections::HashMap<usize, usize>,
    subjects: Vec<SubjectProfile>,
    keep_traces: bool,
    batches: Vec<BatchRecord>,
    current: usize,
}

/// What the recorder knows about one announced batch.
#[derive(Default)]
struct BatchRecord {
    subjects: Vec<usize>,
    lens: Vec<usize>,
    traces: Vec<SequenceTrace>,
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
            batches: Vec::new(),
            current: 0,
        }
    }

    /// Announces the next batch: subject index, token ids and decoded tokens of every sequence.
    /// Returns the batch's number for [`ProfileRecorder::resume_batch`]; events now go to it.
    pub fn begin_batch(
        &mut self,
        subjects: &[usize],
        token_ids: &[Vec<u32>],
        tokens: &[Vec<String>],
    ) -> usize {
        for (&s, ids) in subjects.iter().zip(token_ids) {
            let p = &mut self.subjects[s];
            p.sequences += 1;
            p.tokens += ids.len() as u64;
        }
        let mut batch = BatchRecord {
            subjects: subjects.to_vec(),
            lens: token_ids.iter().map(Vec::len).collect(),
            traces: Vec::new(),
        };
        if self.keep_traces {
            for ((&s, ids), toks) in subjects.iter().zip(token_ids).zip(tokens) {
                batch.traces.push(SequenceTrace {
                    subject: self.subjects[s].name.clone(),
                    token_ids: ids.clone(),
                    tokens: toks.clone(),
                    layers: Vec::with_capacity(self.model.moe_layers.len()),
                });
            }
        }
        self.batches.push(batch);
        self.current = self.batches.len() - 1;
        self.current
    }

    /// Sends the next events to batch `batch` (a number [`ProfileRecorder::begin_batch`]
    /// returned).
    pub fn resume_batch(&mut self, batch: usize) {
        assert!(batch < self.batches.len(), "batch {batch} was never begun");
        self.current = batch;
    }

    /// Traces of the current batch (empty unless traces are kept); the batch keeps no copy.
    pub fn take_batch_traces(&mut self) -> Vec<SequenceTrace> {
        self.batches
            .get_mut(self.current)
            .map(|b| std::mem::take(&mut b.traces))
            .unwrap_or_default()
    }

    /// The decoder layers with a routed MoE block, ascending.
    pub fn moe_layers(&self) -> &[usize] {
        &self.model.moe_layers
    }

    /// Which experts of decoder layer `layer` were chosen for at least one token so far.
    pub fn experts_chosen(&self, layer: usize) -> Vec<bool> {
        let mut used = vec![false; self.model.num_experts];
        if let Some(&row) = self.layer_row.get(&layer) {
            for p in &self.subjects {
                for (u, &c) in used.iter_mut().zip(&p.count[row]) {
                    *u |= c > 0;
                }
            }
        }
        used
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
        let Some(batch) = self.batches.get_mut(self.current) else {
            return;
        };
        let mut token = 0usize;
        for (seq, (&subject, &len)) in batch.subjects.iter().zip(&batch.lens).enumerate() {
            let p = &mut self.subjects[subject];
            let count = &mut p.count[row];
            let mass = &mut p.mass.as_mut().expect("recorded profiles carry mass")[row];
            let score = &mut p.score.as_mut().expect("recorded profiles carry scores")[row];
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
            if let Some(trace) = batch.traces.get_mut(seq) {
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
