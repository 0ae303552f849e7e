//! The app's state: what persists between launches ([`UiState`]) and what is rebuilt each run
//! ([`AppState`]: model info, prompts, profile, selection, running job, messages, worker).
//!
//! Worker events are applied here ([`AppState::handle_event`]), so tests can feed events
//! without a model.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::data::{DataOptions, PromptSet};
use crate::inference::eval::EvalReport;
use crate::inference::generate::GenerateOptions;
use crate::model::ModelInfo;
use crate::profile::RoutingProfile;
use crate::render::{ColorScale, HeatmapView};
use crate::selection::{Selection, SelectionModel, SelectionRule};
use crate::steering::SteeringSpec;
use crate::train::{StepMetrics, TrainEvent, TrainOptions, TrainSummary};
use crate::worker::{Command, Event, JobId, Side, SteerResult, TokenTrace, TopTokenTable, Worker};

/// How many recent models are remembered.
const MAX_RECENT: usize = 8;

/// The central tabs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Tab {
    #[default]
    Heatmap,
    Subjects,
    Load,
    Das,
    Tokens,
    Selection,
    Steering,
    Eval,
    Training,
}

impl Tab {
    pub const ALL: [Tab; 9] = [
        Tab::Heatmap,
        Tab::Subjects,
        Tab::Load,
        Tab::Das,
        Tab::Tokens,
        Tab::Selection,
        Tab::Steering,
        Tab::Eval,
        Tab::Training,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tab::Heatmap => "Heatmap",
            Tab::Subjects => "Subjects",
            Tab::Load => "Load",
            Tab::Das => "DAS",
            Tab::Tokens => "Tokens",
            Tab::Selection => "Selection",
            Tab::Steering => "Steering",
            Tab::Eval => "Eval",
            Tab::Training => "Training",
        }
    }
}

/// What the heatmap shows per (layer, expert).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum HeatmapMetric {
    /// count / Σ_e count of the layer.
    #[default]
    CountShare,
    /// Mean routing weight per token (mass / tokens).
    RoutingMass,
    /// Mean routing score per token (score / tokens).
    RoutingScore,
    /// DAS of the subject against the other subjects pooled.
    DasVsGeneral,
    /// Count share of the subject minus the pooled count share.
    SubjectMinusPooled,
}

impl HeatmapMetric {
    pub const ALL: [HeatmapMetric; 5] = [
        HeatmapMetric::CountShare,
        HeatmapMetric::RoutingMass,
        HeatmapMetric::RoutingScore,
        HeatmapMetric::DasVsGeneral,
        HeatmapMetric::SubjectMinusPooled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            HeatmapMetric::CountShare => "count share",
            HeatmapMetric::RoutingMass => "routing mass",
            HeatmapMetric::RoutingScore => "routing score",
            HeatmapMetric::DasVsGeneral => "DAS vs general",
            HeatmapMetric::SubjectMinusPooled => "subject − pooled",
        }
    }

    /// Signed metrics use the diverging colour map.
    pub fn is_signed(self) -> bool {
        matches!(
            self,
            HeatmapMetric::DasVsGeneral | HeatmapMetric::SubjectMinusPooled
        )
    }

    /// Metrics comparing one subject with others need a subject (not pooled).
    pub fn needs_subject(self) -> bool {
        self.is_signed()
    }
}

/// UI state persisted between launches (eframe storage, JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UiState {
    pub last_model: String,
    pub recent_models: Vec<String>,
    pub last_dataset: Option<String>,
    pub subject_column: String,
    pub text_column: String,
    pub tab: Tab,
    pub show_side_panel: bool,
    pub metric: HeatmapMetric,
    /// `None` = pooled.
    pub heatmap_subject: Option<String>,
    pub scale: ColorScale,
    pub heatmap_view: HeatmapView,
    pub batch_size: usize,
    pub max_tokens: usize,
    pub lora_rank: usize,
}

impl Default for UiState {
    fn default() -> Self {
        Self {
            last_model: String::new(),
            recent_models: Vec::new(),
            last_dataset: None,
            subject_column: String::new(),
            text_column: String::new(),
            tab: Tab::Heatmap,
            show_side_panel: true,
            metric: HeatmapMetric::CountShare,
            heatmap_subject: None,
            scale: ColorScale::Linear,
            heatmap_view: HeatmapView::default(),
            batch_size: 8,
            max_tokens: 256,
            lora_rank: 32,
        }
    }
}

impl UiState {
    pub fn remember_model(&mut self, model: &str) {
        self.last_model = model.to_string();
        self.recent_models.retain(|m| m != model);
        self.recent_models.insert(0, model.to_string());
        self.recent_models.truncate(MAX_RECENT);
    }
}

/// The kind of a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Load,
    Profile,
    Trace,
    Generate,
    Eval,
    Train,
}

impl JobKind {
    /// Jobs the status bar offers to cancel (the worker checks between steps).
    pub fn cancellable(self) -> bool {
        matches!(
            self,
            JobKind::Profile | JobKind::Generate | JobKind::Eval | JobKind::Train
        )
    }
}

/// A job sent to the worker and not finished yet.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningJob {
    pub id: JobId,
    pub kind: JobKind,
    pub done: u64,
    pub total: u64,
    pub label: String,
}

impl RunningJob {
    /// Fraction done, `None` if the total is unknown.
    pub fn fraction(&self) -> Option<f32> {
        (self.total > 0).then(|| (self.done as f32 / self.total as f32).clamp(0.0, 1.0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Error,
}

/// A message shown in the status area.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub level: Level,
    pub text: String,
}

/// The unsteered and steered continuations of the last generate job, as they stream in.
#[derive(Debug, Clone, PartialEq)]
pub struct SteerOutput {
    pub job: JobId,
    pub prompt: String,
    pub unsteered: String,
    pub steered: String,
    /// Set when the job finished.
    pub result: Option<Arc<SteerResult>>,
}

impl SteerOutput {
    pub fn text(&self, side: Side) -> &str {
        match side {
            Side::Unsteered => &self.unsteered,
            Side::Steered => &self.steered,
        }
    }
}

/// The last eval job and its report.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOutput {
    pub job: JobId,
    /// The dataset file.
    pub data: String,
    /// What the steered column used (e.g. "3 cells, strength 1, both").
    pub steering: String,
    pub report: Option<Arc<EvalReport>>,
}

/// The last training job (Training tab): its loss curve as it comes in, and the result.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingOutput {
    pub job: JobId,
    /// The base model trained on.
    pub model: String,
    /// The output folder (adapter, checkpoint, metrics).
    pub out: PathBuf,
    /// What the current stage trains.
    pub stage: String,
    /// Steps of the current stage: `first..=last` (global step numbers).
    pub stage_steps: (u64, u64),
    pub status: String,
    pub steps: Vec<StepMetrics>,
    pub summary: Option<TrainSummary>,
    /// The job ended without an adapter (cancelled: a checkpoint to resume from; or failed).
    pub stopped: Option<String>,
}

/// Everything the panels read and change, apart from the persisted [`UiState`].
pub struct AppState {
    pub ui: UiState,
    pub worker: Option<Worker>,
    pub model: Option<ModelInfo>,
    /// The model the last load job named (shown while it loads).
    pub loading_model: Option<String>,
    pub prompts: Option<Arc<PromptSet>>,
    pub profile: Option<Arc<RoutingProfile>>,
    /// Bumped whenever `profile` changes (panels cache by it).
    pub profile_generation: u64,
    /// Top tokens per (layer row, expert) of the profile, when it was made in this session
    /// (a profile opened from a file has no per-token data).
    pub top_tokens: Option<Arc<TopTokenTable>>,
    /// Where the profile came from or was saved.
    pub profile_path: Option<PathBuf>,
    /// Selected cells as (decoder layer, expert).
    pub selected: BTreeSet<(usize, usize)>,
    /// How the selection was made ([`SelectionRule::Explicit`] once edited by hand).
    pub selection_rule: SelectionRule,
    pub selection_data: Option<String>,
    pub trace: Option<TokenTrace>,
    /// The last generate job (Steering tab).
    pub steer_output: Option<SteerOutput>,
    /// The last eval job (Eval tab).
    pub eval_output: Option<EvalOutput>,
    /// The last training job (Training tab).
    pub training: Option<TrainingOutput>,
    /// The adapter merged into the loaded model, if any.
    pub adapter: Option<PathBuf>,
    pub jobs: Vec<RunningJob>,
    pub messages: Vec<Message>,
    /// Profile the prompts as soon as a model loads (the demo start-up).
    pub auto_profile: bool,
    /// The worker thread has reported [`Event::Ready`].
    pub worker_ready: bool,
    /// The adapter of the load job in flight.
    pending_adapter: Option<PathBuf>,
    next_job: JobId,
}

impl AppState {
    pub fn new(ui: UiState, worker: Option<Worker>) -> Self {
        Self {
            ui,
            worker,
            model: None,
            loading_model: None,
            prompts: None,
            profile: None,
            profile_generation: 0,
            top_tokens: None,
            profile_path: None,
            selected: BTreeSet::new(),
            selection_rule: SelectionRule::Explicit,
            selection_data: None,
            trace: None,
            steer_output: None,
            eval_output: None,
            training: None,
            adapter: None,
            jobs: Vec::new(),
            messages: Vec::new(),
            auto_profile: false,
            worker_ready: false,
            pending_adapter: None,
            next_job: 1,
        }
    }

    pub fn info(&mut self, text: impl Into<String>) {
        self.push(Level::Info, text.into());
    }

    pub fn error(&mut self, text: impl Into<String>) {
        self.push(Level::Error, text.into());
    }

    fn push(&mut self, level: Level, text: String) {
        self.messages.push(Message { level, text });
        if self.messages.len() > 50 {
            self.messages.remove(0);
        }
    }

    /// The latest error, if any.
    pub fn last_error(&self) -> Option<&str> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.level == Level::Error)
            .map(|m| m.text.as_str())
    }

    pub fn job(&self, kind: JobKind) -> Option<&RunningJob> {
        self.jobs.iter().find(|j| j.kind == kind)
    }

    pub fn is_busy(&self) -> bool {
        self.jobs.iter().any(|j| j.kind != JobKind::Trace)
    }

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

    /// Loads prompts from a dataset file or prompt folder.
    pub fn load_prompts(&mut self, path: &Path) {
        let opts = DataOptions {
            subject_column: Some(self.ui.subject_column.clone()).filter(|s| !s.is_empty()),
            text_column: Some(self.ui.text_column.clone()).filter(|s| !s.is_empty()),
            max_per_subject: None,
        };
        match crate::data::load_prompts(path, &opts) {
            Ok(set) => {
                self.info(format!(
                    "{} prompts in {} subjects from {}",
                    set.len(),
                    set.subjects().len(),
                    path.display()
                ));
                self.ui.last_dataset = Some(path.display().to_string());
                self.prompts = Some(Arc::new(set));
            }
            Err(e) => self.error(format!("{e:#}")),
        }
    }

    pub fn set_prompts(&mut self, prompts: PromptSet) {
        self.prompts = Some(Arc::new(prompts));
    }

    /// Replaces the profile (and drops a selection that does not fit it).
    pub fn set_profile(&mut self, profile: Arc<RoutingProfile>, path: Option<PathBuf>) {
        let fits = self
            .selected
            .iter()
            .all(|&(l, e)| profile.model.moe_layers.contains(&l) && e < profile.model.num_experts);
        if !fits {
            self.selected.clear();
            self.info("the selection did not fit the new profile's model and was cleared");
        }
        if let Some(s) = &self.ui.heatmap_subject
            && profile.subject(s).is_none()
        {
            self.ui.heatmap_subject = None;
        }
        self.profile = Some(profile);
        self.top_tokens = None;
        self.profile_path = path;
        self.profile_generation += 1;
    }

    pub fn open_profile(&mut self, path: &Path) {
        match RoutingProfile::load(path) {
            Ok(p) => {
                self.info(format!("opened profile {}", path.display()));
                self.set_profile(Arc::new(p), Some(path.to_path_buf()));
            }
            Err(e) => self.error(format!("{e:#}")),
        }
    }

    pub fn save_profile(&mut self, path: &Path) {
        let Some(p) = self.profile.clone() else {
            self.error("no profile to save: run profiling first");
            return;
        };
        match p.save(path) {
            Ok(()) => {
                self.info(format!("saved profile to {}", path.display()));
                self.profile_path = Some(path.to_path_buf());
            }
            Err(e) => self.error(format!("{e:#}")),
        }
    }

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

    /// Row `row` of the profile's matrices as a decoder layer index.
    pub fn layer_of_row(&self, row: usize) -> Option<usize> {
        self.profile.as_ref()?.model.moe_layers.get(row).copied()
    }

    /// Toggles (decoder layer, expert) in the selection.
    pub fn toggle(&mut self, layer: usize, expert: usize) {
        if !self.selected.remove(&(layer, expert)) {
            self.selected.insert((layer, expert));
        }
        self.selection_rule = SelectionRule::Explicit;
    }

    /// Adds cells to the selection.
    pub fn add_cells(&mut self, cells: impl IntoIterator<Item = (usize, usize)>) {
        self.selected.extend(cells);
        self.selection_rule = SelectionRule::Explicit;
    }

    pub fn clear_selection(&mut self) {
        self.selected.clear();
        self.selection_rule = SelectionRule::Explicit;
    }

    /// Replaces the selection with one made by a rule.
    pub fn set_selection(&mut self, selection: &Selection) {
        self.selected = selection.cells().collect();
        self.selection_rule = selection.rule.clone();
        self.selection_data = selection.data.clone();
    }

    /// The selection as a [`Selection`] for the profile's model.
    pub fn selection(&self) -> Result<Selection, String> {
        let Some(p) = &self.profile else {
            return Err("no profile: profile a dataset or open a profile first".into());
        };
        let mut experts = crate::selection::LayerExperts::new();
        for &(l, e) in &self.selected {
            experts.entry(l).or_default().insert(e);
        }
        let mut s = Selection::new(
            SelectionModel::from(&p.model),
            self.selection_rule.clone(),
            experts,
        )
        .map_err(|e| format!("{e:#}"))?;
        s.data = self.selection_data.clone();
        s.source_profile = self.profile_path.as_ref().map(|p| p.display().to_string());
        Ok(s)
    }

    /// Row-major (moe layer row × expert) selection mask for the heatmap.
    pub fn selection_mask(&self) -> Vec<bool> {
        let Some(p) = &self.profile else {
            return Vec::new();
        };
        let n = p.model.num_experts;
        let mut mask = vec![false; p.model.moe_layers.len() * n];
        for (row, layer) in p.model.moe_layers.iter().enumerate() {
            for e in 0..n {
                mask[row * n + e] = self.selected.contains(&(*layer, e));
            }
        }
        mask
    }
}
