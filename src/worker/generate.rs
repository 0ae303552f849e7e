//! The generate job: unsteered then steered generation streamed to the UI, then the routing
//! difference ([`crate::steering::compare::steer_and_compare`]).

use std::time::Instant;

use super::outbox::PROGRESS_INTERVAL;
use super::protocol::{Event, JobId};
use super::state::{JobError, WorkerState};
use crate::inference::generate::{GenerateOptions, TextStream, stop_ids};
use crate::model::tokenize;
use crate::steering::SteeringSpec;
use crate::steering::compare::{CompareError, CompareStep, Side, SteerResult, steer_and_compare};

impl WorkerState {
    pub(super) fn generate(
        &mut self,
        job: JobId,
        prompt: &str,
        spec: &SteeringSpec,
        mut opts: GenerateOptions,
    ) -> Result<SteerResult, JobError> {
        if prompt.trim().is_empty() {
            return Err("the prompt is empty: type a prompt to generate from"
                .to_string()
                .into());
        }
        self.full_model(job, "generate")?;
        let (outbox, cancel) = (&self.outbox, &self.cancel);
        let Some(loaded) = self.model.as_mut() else {
            return Err("no model loaded".to_string().into());
        };
        let info = loaded.model.info().clone();
        let active = spec
            .resolve(&info)
            .map_err(|e| format!("the steering spec does not fit {}: {e}", info.id))?;
        let ids = tokenize::encode(&loaded.tokenizer, prompt).map_err(|e| format!("{e:#}"))?;
        if ids.is_empty() {
            return Err("the prompt has no tokens".to_string().into());
        }
        for id in stop_ids(&loaded.tokenizer) {
            if !opts.stop_ids.contains(&id) {
                opts.stop_ids.push(id);
            }
        }
        opts.validate().map_err(|e| format!("{e}"))?;
        let max_new = opts.max_new_tokens as u64;
        // Two generations and two routing passes.
        let total = 2 * max_new + 2;
        let mut current = Side::Unsteered;
        let mut stream = TextStream::default();
        let mut done = 0u64;
        let mut last = Instant::now();
        let result = steer_and_compare(
            loaded.model.as_mut(),
            &loaded.tokenizer,
            &ids,
            &active,
            &opts,
            cancel,
            &mut |step| match step {
                CompareStep::Token { side, id } => {
                    if side != current {
                        current = side;
                        stream = TextStream::default();
                        done = 0;
                        last = Instant::now();
                    }
                    done += 1;
                    if let Some(text) = stream.push(&loaded.tokenizer, id) {
                        outbox.send(Event::GeneratedText { job, side, text });
                    }
                    if last.elapsed() >= PROGRESS_INTERVAL {
                        last = Instant::now();
                        let before = match side {
                            Side::Unsteered => 0,
                            Side::Steered => max_new,
                        };
                        outbox.progress(
                            job,
                            before + done,
                            total,
                            format!("generating {}: {done} / {max_new} tokens", side.name()),
                        );
                    }
                }
                CompareStep::ComparingRouting => {
                    outbox.progress(job, 2 * max_new, total, "comparing routing".into())
                }
            },
        );
        match result {
            Ok(result) => {
                outbox.progress(job, total, total, "done".into());
                Ok(result)
            }
            Err(CompareError::Cancelled) => Err(JobError::Cancelled),
            Err(e) => Err(e.to_string().into()),
        }
    }
}
