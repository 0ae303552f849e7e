//! The worker thread's state (the loaded model, the cancel flag, the outbox) and its command
//! loop, which hands each command to its job (`load.rs`, `profile.rs`, `trace.rs`,
//! `generate.rs`, `eval.rs`, `train.rs`). Also the full reload a generate or eval job needs.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::Receiver;

use super::outbox::Outbox;
use super::protocol::{Command, Event, JobId};
use crate::model::{LoadOptions, LoadedModel, loader};

pub(super) struct WorkerState {
    pub(super) model: Option<LoadedModel>,
    /// The model was loaded with its LM head (generation and scoring work).
    pub(super) full: bool,
    /// The adapter merged into the loaded model, kept for the full reload.
    pub(super) adapter: Option<PathBuf>,
    pub(super) cancel: Arc<AtomicBool>,
    pub(super) outbox: Outbox,
}

impl WorkerState {
    pub(super) fn run(&mut self, commands: &Receiver<Command>) {
        while let Ok(command) = commands.recv() {
            let job = command.job();
            // A cancel sent before this job started does not apply to it.
            if job.is_some() {
                self.cancel.store(false, Ordering::Relaxed);
            }
            match command {
                Command::Shutdown => break,
                Command::Cancel => {}
                Command::LoadModel {
                    job,
                    model,
                    adapter,
                } => self.load(job, &model, adapter),
                Command::Train { job, options } => self.train(job, *options),
                Command::Profile {
                    job,
                    prompts,
                    batch_size,
                    max_tokens,
                } => self.profile(job, &prompts, batch_size, max_tokens),
                Command::Trace { job, text } => match self.trace(&text) {
                    Ok(trace) => self.outbox.send(Event::TraceReady { job, trace }),
                    Err(error) => self.fail(Some(job), error),
                },
                Command::Generate {
                    job,
                    prompt,
                    spec,
                    options,
                } => match self.generate(job, &prompt, &spec, options) {
                    Ok(result) => self.outbox.send(Event::SteerReady {
                        job,
                        result: Arc::new(result),
                    }),
                    Err(JobError::Cancelled) => self.outbox.send(Event::Cancelled { job }),
                    Err(JobError::Failed(error)) => self.fail(Some(job), error),
                },
                Command::Eval {
                    job,
                    data,
                    spec,
                    limit,
                } => match self.eval(job, &data, spec.as_deref(), limit) {
                    Ok(report) => self.outbox.send(Event::EvalReady {
                        job,
                        report: Arc::new(report),
                    }),
                    Err(JobError::Cancelled) => self.outbox.send(Event::Cancelled { job }),
                    Err(JobError::Failed(error)) => self.fail(Some(job), error),
                },
            }
        }
    }

    pub(super) fn fail(&self, job: Option<JobId>, error: String) {
        self.outbox.send(Event::Failed { job, error });
    }
}

/// Why a generate or eval job ended without a result.
pub(super) enum JobError {
    Cancelled,
    Failed(String),
}

impl From<String> for JobError {
    fn from(e: String) -> Self {
        JobError::Failed(e)
    }
}

/// `error` with `file` in front unless it already names it.
pub(super) fn naming(file: &str, error: impl std::fmt::Display) -> String {
    let error = format!("{error:#}");
    if error.contains(file) {
        error
    } else {
        format!("{file}: {error}")
    }
}

impl WorkerState {
    /// The loaded model with its LM head, reloading the same files in full the first time
    /// (a routing-only model cannot generate or score). `what` names the job in errors.
    pub(super) fn full_model(
        &mut self,
        job: JobId,
        what: &str,
    ) -> Result<&mut LoadedModel, String> {
        let Some(loaded) = self.model.as_ref() else {
            return Err(format!("no model loaded: load a model to {what}"));
        };
        if !self.full {
            let files = loaded.files.clone();
            let id = files.id.clone();
            self.outbox.progress(
                job,
                0,
                0,
                format!("loading {id} with its LM head for {what}"),
            );
            let opts = |routing_only| LoadOptions {
                model: id.clone(),
                routing_only,
                adapter: self.adapter.clone(),
                ..LoadOptions::default()
            };
            // Free the routing-only copy first: two copies of a large model may not fit.
            self.model = None;
            match loader::load_files(files.clone(), &opts(false)) {
                Ok(full) => {
                    self.model = Some(full);
                    self.full = true;
                }
                Err(e) => {
                    let restored = loader::load_files(files, &opts(true));
                    let kept = restored.is_ok();
                    self.model = restored.ok();
                    return Err(format!(
                        "cannot load {id} for {what}: {e:#}{}",
                        if kept {
                            ""
                        } else {
                            " (the model is no longer loaded: load it again)"
                        }
                    ));
                }
            }
        }
        self.model
            .as_mut()
            .ok_or_else(|| "no model loaded".to_string())
    }
}
