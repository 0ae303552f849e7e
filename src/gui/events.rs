//! The reducer of worker events: [`AppState::handle_event`] applies one [`Event`] (progress,
//! results, cancellation, failure) to the state, so tests can feed events without a model;
//! [`AppState::drain_worker`] applies whatever the worker has sent.

use crate::gui::state::{AppState, JobKind};
use crate::train::TrainEvent;
use crate::worker::{Event, JobId, Side};

impl AppState {
    /// Applies one worker event.
    pub fn handle_event(&mut self, event: Event) {
        match event {
            Event::Ready => self.worker_ready = true,
            Event::Progress {
                job,
                done,
                total,
                label,
            } => {
                if let Some(j) = self.jobs.iter_mut().find(|j| j.id == job) {
                    j.done = done;
                    j.total = total;
                    j.label = label;
                }
            }
            Event::ModelLoaded { job, info } => {
                self.finish(job);
                self.ui.remember_model(&info.id);
                self.info(format!(
                    "loaded {} ({}, {} MoE layers × {} experts, top-{})",
                    info.id,
                    info.architecture,
                    info.moe_layers.len(),
                    info.num_experts,
                    info.top_k
                ));
                self.loading_model = None;
                self.adapter = self.pending_adapter.take();
                self.model = Some(*info);
                self.trace = None;
                if self.auto_profile && self.prompts.is_some() {
                    self.auto_profile = false;
                    self.run_profile();
                }
            }
            Event::ProfileReady {
                job,
                profile,
                top_tokens,
            } => {
                self.finish(job);
                let n: u64 = profile.subjects.iter().map(|s| s.tokens).sum();
                self.info(format!(
                    "profiled {n} tokens in {} subjects",
                    profile.subjects.len()
                ));
                self.set_profile(profile, None);
                self.top_tokens = Some(top_tokens);
            }
            Event::TraceReady { job, trace } => {
                self.finish(job);
                self.trace = Some(trace);
            }
            Event::GeneratedText { job, side, text } => {
                if let Some(out) = self.steer_output.as_mut().filter(|o| o.job == job) {
                    match side {
                        Side::Unsteered => out.unsteered.push_str(&text),
                        Side::Steered => out.steered.push_str(&text),
                    }
                }
            }
            Event::SteerReady { job, result } => {
                self.finish(job);
                if let Some(out) = self.steer_output.as_mut().filter(|o| o.job == job) {
                    out.unsteered = result.unsteered_text.clone();
                    out.steered = result.steered_text.clone();
                    let changed = result.routing.changes.iter().map(|c| c.changed_share);
                    let mean = changed.clone().sum::<f64>() / changed.len().max(1) as f64;
                    let first = match result.first_difference() {
                        Some(i) => format!("continuations differ from token {i}"),
                        None => "identical continuations".into(),
                    };
                    out.result = Some(result);
                    self.info(format!(
                        "generated: {first}; the chosen experts changed for {:.1}% of tokens \
                         (mean over layers)",
                        100.0 * mean
                    ));
                }
            }
            Event::EvalReady { job, report } => {
                self.finish(job);
                if let Some(out) = self.eval_output.as_mut().filter(|o| o.job == job) {
                    let o = &report.overall;
                    let text = match &o.steered {
                        Some(s) => format!(
                            "scored {} questions: {:.1}% unsteered, {:.1}% steered",
                            o.questions,
                            100.0 * o.unsteered.value,
                            100.0 * s.value
                        ),
                        None => format!(
                            "scored {} questions: {:.1}%",
                            o.questions,
                            100.0 * o.unsteered.value
                        ),
                    };
                    out.report = Some(report);
                    self.info(text);
                }
            }
            Event::Training { job, event } => self.training_event(job, *event),
            Event::TrainingDone { job, summary } => {
                self.finish(job);
                if let Some(t) = self.training.as_mut().filter(|t| t.job == job) {
                    t.status = "finished".into();
                    let text = format!(
                        "trained {} steps: loss {:.3} -> {:.3}; adapter in {}",
                        summary.steps, summary.first_loss, summary.final_loss, summary.adapter_dir
                    );
                    t.summary = Some(*summary);
                    self.info(text);
                }
            }
            Event::Cancelled { job } => {
                self.finish(job);
                if let Some(t) = self.training.as_mut().filter(|t| t.job == job) {
                    let text = format!(
                        "training cancelled at step {}; checkpoint in {} (tick Resume to continue)",
                        t.steps.last().map_or(0, |m| m.step),
                        t.out.display()
                    );
                    t.stopped = Some(text.clone());
                    t.status = "cancelled".into();
                    self.info(text);
                } else {
                    self.info("cancelled");
                }
            }
            Event::Failed { job, error } => {
                if let Some(job) = job {
                    if self
                        .jobs
                        .iter()
                        .any(|j| j.id == job && j.kind == JobKind::Load)
                    {
                        self.loading_model = None;
                        self.auto_profile = false;
                        self.pending_adapter = None;
                    }
                    if let Some(t) = self.training.as_mut().filter(|t| t.job == job) {
                        t.stopped = Some(error.clone());
                        t.status = "failed".into();
                    }
                    self.finish(job);
                }
                self.error(error);
            }
        }
    }

    fn training_event(&mut self, job: JobId, event: TrainEvent) {
        let Some(t) = self.training.as_mut().filter(|t| t.job == job) else {
            return;
        };
        let (done, total, label) = match event {
            TrainEvent::Status(s) => {
                t.status = s.clone();
                (0, 0, s)
            }
            TrainEvent::Stage {
                first_step,
                last_step,
                description,
                ..
            } => {
                t.stage = description;
                t.stage_steps = (first_step, last_step);
                t.status = "training".into();
                (0, last_step - first_step, "training".into())
            }
            TrainEvent::Profiling { done, total } => {
                t.status = format!("re-profiling for DAS: {done}/{total} sequences");
                (done as u64, total as u64, t.status.clone())
            }
            TrainEvent::Step(m) => {
                t.steps.push(m);
                let (first, last) = t.stage_steps;
                (
                    m.step - first,
                    last - first,
                    format!("step {} loss {:.3}", m.step, m.loss),
                )
            }
            TrainEvent::Checkpoint { step } => {
                t.status = format!("checkpoint at step {step}");
                return;
            }
            TrainEvent::Finished(_) => return,
        };
        if let Some(j) = self.jobs.iter_mut().find(|j| j.id == job) {
            j.done = done;
            j.total = total;
            j.label = label;
        }
    }

    fn finish(&mut self, job: JobId) {
        self.jobs.retain(|j| j.id != job);
    }

    /// Drains the worker's events (called from `App::logic`).
    pub fn drain_worker(&mut self) {
        let events: Vec<Event> = match self.worker.as_ref() {
            Some(w) => w.try_events().collect(),
            None => return,
        };
        for e in events {
            self.handle_event(e);
        }
    }
}
