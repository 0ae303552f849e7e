//! The messages between the GUI and the worker thread: typed [`Command`]s in, typed
//! [`Event`]s out. Only plain data crosses (never a tensor or a device).

use std::path::PathBuf;
use std::sync::Arc;

use crate::analysis::traces::TopToken;
use crate::data::PromptSet;
use crate::inference::eval::EvalReport;
use crate::inference::generate::GenerateOptions;
use crate::inference::trace::TokenTrace;
use crate::model::ModelInfo;
use crate::profile::RoutingProfile;
use crate::steering::SteeringSpec;
use crate::steering::compare::{Side, SteerResult};
use crate::train::{TrainEvent, TrainOptions, TrainSummary};

/// Identifies one job (a load, a profile run, a trace) in progress and result events.
pub type JobId = u64;

/// How many top tokens per expert a profile job reports.
pub const TOP_TOKENS_PER_EXPERT: usize = 5;

/// `[moe layer row][expert]` an expert's top tokens over a profiled prompt set.
pub type TopTokenTable = Vec<Vec<Vec<TopToken>>>;

/// What the UI asks the worker to do.
#[derive(Debug, Clone)]
pub enum Command {
    /// Load a model folder or hub id (replacing the current model), with a PEFT LoRA adapter
    /// merged into its weights if given.
    LoadModel {
        job: JobId,
        model: String,
        adapter: Option<PathBuf>,
    },
    /// Train LoRA adapters (`crate::train`) on a model of its own (the loaded one stays as it
    /// is), streaming [`Event::Training`]; ends with [`Event::TrainingDone`], or
    /// [`Event::Cancelled`] after writing a checkpoint.
    Train {
        job: JobId,
        options: Box<TrainOptions>,
    },
    /// Profile a prompt set on the loaded model.
    Profile {
        job: JobId,
        prompts: Arc<PromptSet>,
        batch_size: usize,
        max_tokens: Option<usize>,
    },
    /// Route one prompt and report every token's experts in every layer.
    Trace { job: JobId, text: String },
    /// Generate after `prompt` without and then with `spec` (resolved against the loaded
    /// model), streaming [`Event::GeneratedText`] for each side, then compare the routing of
    /// the prompt + unsteered continuation under both ([`Event::SteerReady`]). The tokenizer's
    /// end-of-text ids are added to `options.stop_ids`.
    Generate {
        job: JobId,
        prompt: String,
        spec: Box<SteeringSpec>,
        options: GenerateOptions,
    },
    /// Score the multiple-choice questions of `data` (MMLU / MMLU-Pro layout) without and, if
    /// `spec` is given, with steering; at most `limit` questions per subject.
    Eval {
        job: JobId,
        data: PathBuf,
        spec: Option<Box<SteeringSpec>>,
        limit: Option<usize>,
    },
    /// Cancel the running job (same as [`Worker::cancel`], which does not wait for the queue).
    Cancel,
    /// Stop the thread.
    Shutdown,
}

impl Command {
    /// The job this command starts, if any.
    pub fn job(&self) -> Option<JobId> {
        match self {
            Command::LoadModel { job, .. }
            | Command::Profile { job, .. }
            | Command::Trace { job, .. }
            | Command::Generate { job, .. }
            | Command::Eval { job, .. }
            | Command::Train { job, .. } => Some(*job),
            Command::Cancel | Command::Shutdown => None,
        }
    }
}

/// What the worker reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// The thread is running and takes commands.
    Ready,
    /// A job advanced; `total == 0` means the total is unknown.
    Progress {
        job: JobId,
        done: u64,
        total: u64,
        label: String,
    },
    ModelLoaded {
        job: JobId,
        info: Box<ModelInfo>,
    },
    ProfileReady {
        job: JobId,
        profile: Arc<RoutingProfile>,
        /// `[moe layer row][expert]` the tokens most often routed to each expert (decoded).
        top_tokens: Arc<TopTokenTable>,
    },
    TraceReady {
        job: JobId,
        trace: TokenTrace,
    },
    /// New text of one side of a generate job, as soon as its tokens decode.
    GeneratedText {
        job: JobId,
        side: Side,
        text: String,
    },
    /// A generate job finished: both continuations and the routing difference.
    SteerReady {
        job: JobId,
        result: Arc<SteerResult>,
    },
    /// An eval job finished.
    EvalReady {
        job: JobId,
        report: Arc<EvalReport>,
    },
    /// A training job advanced (stage, step, checkpoint, status).
    Training {
        job: JobId,
        event: Box<TrainEvent>,
    },
    /// A training job finished and wrote its adapter.
    TrainingDone {
        job: JobId,
        summary: Box<TrainSummary>,
    },
    /// The job stopped because it was cancelled; nothing it made is kept (a training job keeps
    /// its checkpoint, to resume from).
    Cancelled {
        job: JobId,
    },
    /// A job (or a command without a job) failed; `error` is the whole error chain.
    Failed {
        job: Option<JobId>,
        error: String,
    },
}
