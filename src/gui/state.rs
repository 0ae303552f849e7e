//! The app's data: what persists between launches ([`UiState`], with [`Tab`] and
//! [`HeatmapMetric`]) and what is rebuilt each run ([`AppState`]: model info, prompts, profile,
//! selection, running jobs, job outputs, messages, worker).
//!
//! What changes it lives next door: job starters in `jobs`, the worker-event reducer in
//! `events`, prompt and profile files in `file_io`, selection editing in `selection_edit`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::data::PromptSet;
use crate::inference::eval::EvalReport;
use crate::model::ModelInfo;
use crate::profile::{RoutingProfile, RoutingSignal};
use crate::render::{ColorScale, HeatmapView};
use crate::selection::SelectionRule;
use crate::train::{StepMetrics, TrainSummary};
use crate::worker::{JobId, Side, SteerResult, TokenTrace, TopTokenTable, Worker};

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
    /// Mean routing weight per token (mass / tokens); not offered for count-only profiles.
    RoutingMass,
    /// Mean routing score per token (score / tokens); not offered for count-only profiles.
    RoutingScore,
    /// DAS of the subject against the other subjects pooled, on routing scores (on counts for
    /// profiles without them).
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

    /// The routing signal beyond counts the metric is made of, if any.
    pub fn required_signal(self) -> Option<RoutingSignal> {
        match self {
            HeatmapMetric::RoutingMass => Some(RoutingSignal::Mass),
            HeatmapMetric::RoutingScore => Some(RoutingSignal::Score),
            _ => None,
        }
    }

    /// Whether `profile` carries what the metric is made of.
    pub fn is_available(self, profile: &RoutingProfile) -> bool {
        self.required_signal().is_none_or(|s| profile.has(s))
    }

    /// Why the metric cannot be shown for `profile` (`None` when it can).
    pub fn unavailable_reason(self, profile: &RoutingProfile) -> Option<String> {
        let signal = self.required_signal().filter(|&s| !profile.has(s))?;
        let why = if profile.source.is_some() {
            " — imported routing records which experts were chosen, not their weights or scores"
        } else {
            ""
        };
        Some(format!(
            "Not available: this profile carries {}, without {}{why}. Use count share instead.",
            profile.signals_caption(),
            signal.describe()
        ))
    }

    /// The metric's name for `profile`: DAS names the signal it is computed on when that is
    /// not the routing score (`DAS on counts vs general`).
    pub fn label(self, profile: &RoutingProfile) -> &'static str {
        match self {
            HeatmapMetric::DasVsGeneral
                if crate::analysis::das::default_das_signal(profile) == RoutingSignal::Count =>
            {
                "DAS on counts vs general"
            }
            m => m.name(),
        }
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
    /// The worker thread has reported [`crate::worker::Event::Ready`].
    pub worker_ready: bool,
    /// The adapter of the load job in flight.
    pub(super) pending_adapter: Option<PathBuf>,
    pub(super) next_job: JobId,
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
        self.fit_metric_to_profile();
    }

    /// Switches the heatmap to count share when the profile lacks what its metric is made of
    /// (routing mass or scores of a count-only profile), saying so.
    pub fn fit_metric_to_profile(&mut self) {
        let Some(profile) = &self.profile else {
            return;
        };
        let metric = self.ui.metric;
        if metric.is_available(profile) {
            return;
        }
        let caption = profile.signals_caption();
        self.ui.metric = HeatmapMetric::CountShare;
        self.info(format!(
            "the heatmap shows count share: the profile has no {} ({caption})",
            metric.name()
        ));
    }

    /// Row `row` of the profile's matrices as a decoder layer index.
    pub fn layer_of_row(&self, row: usize) -> Option<usize> {
        self.profile.as_ref()?.model.moe_layers.get(row).copied()
    }
}
