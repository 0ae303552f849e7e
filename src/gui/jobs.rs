//! Job starters: each checks what it can locally, sends one [`Command`] to the worker and
//! records the running job (and the output it will fill in). Loading a model, profiling,
//! tracing, generating, evaluating, training, and cancelling.

use std::path::{Path, PathBuf};

use crate::gui::state::{AppState, EvalOutput, JobKind, RunningJob, SteerOutput, TrainingOutput};
use crate::inference::generate::GenerateOptions;
use crate::steering::SteeringSpec;
use crate::train::TrainOptions;
use crate::worker::{Command, JobId};

impl AppState {
    fn start_job(
        &mut self,
        kind: JobKind,
        label: String,
        make: impl FnOnce(JobId) -> Command,
    ) -> Option<JobId> {
        let id = self.next_job;
        self.next_job += 1;
        let Some(worker) = self.worker.as_ref() else {
            self.error("the model worker is not running");
            return None;
        };
        match worker.send(make(id)) {
            Ok(()) => {
                self.jobs.push(RunningJob {
                    id,
                    kind,
                    done: 0,
                    total: 0,
                    label,
                });
                Some(id)
            }
            Err(e) => {
                self.error(e);
                None
            }
        }
    }

    /// Asks the worker to load `model` (folder or hub id).
    pub fn load_model(&mut self, model: &str) -> Option<JobId> {
        self.load_model_with_adapter(model, None)
    }

    /// Asks the worker to load `model` with a PEFT LoRA adapter merged into its weights.
    pub fn load_model_with_adapter(
        &mut self,
        model: &str,
        adapter: Option<PathBuf>,
    ) -> Option<JobId> {
        let model = model.trim().to_string();
        if model.is_empty() {
            self.error("enter a hub id or choose a model folder");
            return None;
        }
        self.loading_model = Some(model.clone());
        let m = model.clone();
        let label = match &adapter {
            Some(a) => format!("loading {model} with adapter {}", a.display()),
            None => format!("loading {model}"),
        };
        self.pending_adapter = adapter.clone();
        self.start_job(JobKind::Load, label, move |job| Command::LoadModel {
            job,
            model: m,
            adapter,
        })
    }

    /// Starts training with `options` (Training tab).
    pub fn start_training(&mut self, options: TrainOptions) -> Option<JobId> {
        let model = options.load.model.clone();
        let out = options.out.clone();
        let job = self.start_job(JobKind::Train, "training".into(), move |job| {
            Command::Train {
                job,
                options: Box::new(options),
            }
        })?;
        self.training = Some(TrainingOutput {
            job,
            model,
            out,
            stage: String::new(),
            stage_steps: (0, 0),
            status: "starting".into(),
            steps: Vec::new(),
            summary: None,
            stopped: None,
        });
        Some(job)
    }

    /// Profiles the current prompts on the loaded model.
    pub fn run_profile(&mut self) -> Option<JobId> {
        let Some(prompts) = self.prompts.clone() else {
            self.error("no prompts: choose a dataset (or the demo prompts) first");
            return None;
        };
        if self.model.is_none() {
            self.error("no model loaded: load a model before profiling");
            return None;
        }
        let batch_size = self.ui.batch_size.max(1);
        let max_tokens = (self.ui.max_tokens > 0).then_some(self.ui.max_tokens);
        self.start_job(JobKind::Profile, "profiling".into(), move |job| {
            Command::Profile {
                job,
                prompts,
                batch_size,
                max_tokens,
            }
        })
    }

    pub fn trace(&mut self, text: &str) -> Option<JobId> {
        let text = text.to_string();
        self.start_job(JobKind::Trace, "tracing".into(), move |job| {
            Command::Trace { job, text }
        })
    }

    /// Generates after `prompt` without and with `spec` (Steering tab). The spec is checked
    /// against the loaded model first, so a bad table is reported without a round trip.
    pub fn generate(
        &mut self,
        prompt: &str,
        spec: SteeringSpec,
        options: GenerateOptions,
    ) -> Option<JobId> {
        let Some(info) = self.model.as_ref() else {
            self.error("no model loaded: load a model to generate");
            return None;
        };
        if prompt.trim().is_empty() {
            self.error("the prompt is empty: type a prompt to generate from");
            return None;
        }
        if let Err(e) = spec.resolve(info) {
            self.error(format!("the steering table does not fit {}: {e}", info.id));
            return None;
        }
        if let Err(e) = options.validate() {
            self.error(e.to_string());
            return None;
        }
        let text = prompt.to_string();
        let label = format!("generating {} tokens twice", options.max_new_tokens);
        let id = self.start_job(JobKind::Generate, label, move |job| Command::Generate {
            job,
            prompt: text,
            spec: Box::new(spec),
            options,
        })?;
        self.steer_output = Some(SteerOutput {
            job: id,
            prompt: prompt.to_string(),
            unsteered: String::new(),
            steered: String::new(),
            result: None,
        });
        Some(id)
    }

    /// Scores the multiple-choice questions of `data` without and with `spec` (Eval tab).
    pub fn run_eval(
        &mut self,
        data: &Path,
        spec: SteeringSpec,
        limit: Option<usize>,
    ) -> Option<JobId> {
        if self.model.is_none() {
            self.error("no model loaded: load a model to evaluate");
            return None;
        }
        if data.as_os_str().is_empty() {
            self.error("choose a multiple-choice dataset (MMLU or MMLU-Pro layout) first");
            return None;
        }
        let steering = format!(
            "{} steered cells, strength {}, {:?}",
            spec.experts.len(),
            spec.strength,
            spec.apply_to
        )
        .to_lowercase();
        let path = data.to_path_buf();
        let id = self.start_job(JobKind::Eval, "evaluating".into(), move |job| {
            Command::Eval {
                job,
                data: path,
                spec: Some(Box::new(spec)),
                limit,
            }
        })?;
        self.eval_output = Some(EvalOutput {
            job: id,
            data: data.display().to_string(),
            steering,
            report: None,
        });
        Some(id)
    }

    pub fn cancel(&mut self) {
        if let Some(w) = self.worker.as_ref() {
            w.cancel();
        }
    }
}
