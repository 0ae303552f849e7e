//! The training job: LoRA training on a model of its own (the loaded one stays as it is),
//! every training event forwarded to the UI.

use super::protocol::{Event, JobId};
use super::state::WorkerState;
use crate::train::{TrainError, TrainOptions, run_training};

impl WorkerState {
    pub(super) fn train(&mut self, job: JobId, options: TrainOptions) {
        let outbox = &self.outbox;
        let result = run_training(options, &self.cancel, &mut |event| {
            outbox.send(Event::Training {
                job,
                event: Box::new(event),
            })
        });
        match result {
            Ok(summary) => self.outbox.send(Event::TrainingDone {
                job,
                summary: Box::new(summary),
            }),
            Err(TrainError::Cancelled { .. }) => self.outbox.send(Event::Cancelled { job }),
            Err(e) => self.fail(Some(job), format!("training failed: {e:#}")),
        }
    }
}
