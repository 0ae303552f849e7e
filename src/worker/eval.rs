//! The eval job: multiple-choice scoring of a dataset on the loaded model (reloaded in full
//! once), without and with a steering spec.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::outbox::PROGRESS_INTERVAL;
use super::protocol::JobId;
use super::state::{JobError, WorkerState, naming};
use crate::inference::eval::{EvalOptions, EvalReport, load_items, run_eval};
use crate::steering::{SteerError, SteeringSpec};

impl WorkerState {
    pub(super) fn eval(
        &mut self,
        job: JobId,
        data: &std::path::Path,
        spec: Option<&SteeringSpec>,
        limit: Option<usize>,
    ) -> Result<EvalReport, JobError> {
        let file = data.display().to_string();
        if limit == Some(0) {
            return Err("at most 0 questions per subject: nothing to score"
                .to_string()
                .into());
        }
        if self.model.is_none() {
            return Err("no model loaded: load a model to evaluate"
                .to_string()
                .into());
        }
        self.outbox.progress(job, 0, 0, format!("reading {file}"));
        let items = load_items(data, &[], limit).map_err(|e| naming(&file, e))?;
        if self.cancel.load(Ordering::Relaxed) {
            return Err(JobError::Cancelled);
        }
        self.full_model(job, "evaluate")?;
        let (outbox, cancel) = (&self.outbox, &self.cancel);
        let Some(loaded) = self.model.as_mut() else {
            return Err("no model loaded".to_string().into());
        };
        let info = loaded.model.info().clone();
        let active = spec
            .map(|s| s.resolve(&info))
            .transpose()
            .map_err(|e| format!("the steering spec does not fit {}: {e}", info.id))?;
        let total = items.len() as u64;
        outbox.progress(job, 0, total, format!("0 / {total} questions"));
        let mut last = Instant::now();
        let result = run_eval(
            loaded.model.as_mut(),
            &loaded.tokenizer,
            &items,
            active.as_ref(),
            &EvalOptions::default(),
            cancel,
            &mut |done, total| {
                if done == total || last.elapsed() >= PROGRESS_INTERVAL {
                    last = Instant::now();
                    outbox.progress(
                        job,
                        done as u64,
                        total as u64,
                        format!("{done} / {total} questions"),
                    );
                }
            },
        );
        match result {
            Ok(r) => Ok(r),
            Err(SteerError::Cancelled) => Err(JobError::Cancelled),
            Err(e) => Err(naming(&file, e).into()),
        }
    }
}
