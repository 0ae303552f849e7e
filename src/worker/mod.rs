//! The thread that owns the model. The GUI sends typed [`Command`]s and drains typed [`Event`]s
//! over bounded crossbeam channels; it never waits on the model.
//!
//! - [`Worker::spawn`] starts a named thread (`moescope-worker`); the first event is
//!   [`Event::Ready`].
//! - Commands go with [`Worker::send`] (`try_send`: a full queue is reported as "worker busy",
//!   never a blocked frame); events come back through [`Worker::try_events`].
//! - Every event sent calls the `wake` callback (the GUI passes `ctx.request_repaint()`), so an
//!   idle window wakes up when a job progresses.
//! - Cancel: [`Worker::cancel`] sets a shared flag the running job checks between batches; the
//!   job then ends with [`Event::Cancelled`].
//! - Only plain data crosses: [`ModelInfo`], `Arc<RoutingProfile>`, [`TokenTrace`],
//!   [`SteerResult`], `Arc<EvalReport>`; never a tensor or a device. Errors cross as
//!   `format!("{err:#}")` text, handled once by the UI.
//! - Models load for routing only (no LM head, no experts in the last MoE layer: less memory
//!   for profiling). The first [`Command::Generate`] or [`Command::Eval`] reloads the same files
//!   in full, once.
//!
//! Must not import `gui` or `render`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use crate::analysis::traces::{TokenCounter, TopToken};
use crate::data::PromptSet;
use crate::model::hub::DownloadProgress;
use crate::model::router::{RecordingHook, RouteCtx};
use crate::model::{Batch, LoadOptions, LoadedModel, ModelInfo, Output, load_model, loader};
use crate::profile::RoutingProfile;
use crate::profiling::{ProfileError, ProfileOptions, run_profile_observed};
use crate::steering::diff::{RoutingDiff, sequence_routing};
use crate::steering::eval::{EvalOptions, EvalReport, load_items, run_eval};
use crate::steering::generate::{GenerateOptions, TextStream, decode, generate, stop_ids};
use crate::steering::{ActiveSteering, SteerError, SteeringSpec};
use crate::train::{TrainError, TrainEvent, TrainOptions, TrainSummary, run_training};

/// Identifies one job (a load, a profile run, a trace) in progress and result events.
pub type JobId = u64;

/// Commands queued per worker; more than this and [`Worker::send`] reports the worker busy.
const COMMAND_CAPACITY: usize = 16;
/// Events queued for the UI; progress events are dropped (not waited for) when it is full.
const EVENT_CAPACITY: usize = 256;
/// Minimum time between two progress events of one job.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

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

/// One token of a traced prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct TracedToken {
    pub id: u32,
    /// The token decoded on its own.
    pub text: String,
    /// Per MoE layer (rows of [`TokenTrace::layers`]): chosen experts and their weights, in the
    /// order the model uses them.
    pub experts: Vec<Vec<(usize, f32)>>,
}

/// Every token of one prompt and where each MoE layer routed it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenTrace {
    pub text: String,
    /// Decoder layer index of each MoE layer, ascending.
    pub layers: Vec<usize>,
    pub num_experts: usize,
    pub tokens: Vec<TracedToken>,
}

/// Which of the two generations of a [`Command::Generate`] job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Unsteered,
    Steered,
}

/// The outcome of a [`Command::Generate`] job.
#[derive(Debug, Clone, PartialEq)]
pub struct SteerResult {
    pub prompt_tokens: usize,
    /// Generated ids (the prompt excluded).
    pub unsteered_ids: Vec<u32>,
    pub steered_ids: Vec<u32>,
    /// The generated ids decoded as a whole.
    pub unsteered_text: String,
    pub steered_text: String,
    /// Routing of the prompt + unsteered continuation, unsteered vs steered.
    pub routing: RoutingDiff,
    /// Steered cells (biased or forced) after resolving the spec, `(layer, expert)`.
    pub steered_cells: Vec<(usize, usize)>,
}

impl SteerResult {
    /// Index of the first generated token where the two continuations differ.
    pub fn first_difference(&self) -> Option<usize> {
        if self.unsteered_ids == self.steered_ids {
            return None;
        }
        Some(
            self.unsteered_ids
                .iter()
                .zip(&self.steered_ids)
                .take_while(|(a, b)| a == b)
                .count(),
        )
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

/// The UI's handle on the worker thread. Dropping it shuts the thread down.
pub struct Worker {
    commands: Sender<Command>,
    events: Receiver<Event>,
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Sends events and wakes the UI after each.
struct Outbox {
    events: Sender<Event>,
    wake: Box<dyn Fn() + Send>,
}

impl Outbox {
    /// Sends an event the UI must see (waits if the queue is full; the UI drains every frame).
    fn send(&self, event: Event) {
        // An error means the UI is gone; the command loop then ends on its own.
        let _ = self.events.send(event);
        (self.wake)();
    }

    /// Sends a progress event unless the queue is full.
    fn progress(&self, job: JobId, done: u64, total: u64, label: String) {
        if self
            .events
            .try_send(Event::Progress {
                job,
                done,
                total,
                label,
            })
            .is_ok()
        {
            (self.wake)();
        }
    }
}

impl Worker {
    /// Starts the worker thread. `wake` is called after every event (pass a closure that
    /// requests a repaint).
    pub fn spawn(wake: impl Fn() + Send + 'static) -> std::io::Result<Self> {
        let (cmd_tx, cmd_rx) = bounded(COMMAND_CAPACITY);
        let (ev_tx, ev_rx) = bounded(EVENT_CAPACITY);
        let cancel = Arc::new(AtomicBool::new(false));
        let outbox = Outbox {
            events: ev_tx,
            wake: Box::new(wake),
        };
        let flag = cancel.clone();
        let thread = std::thread::Builder::new()
            .name("moescope-worker".into())
            .spawn(move || {
                let mut state = WorkerState {
                    model: None,
                    full: false,
                    adapter: None,
                    cancel: flag,
                    outbox,
                };
                state.outbox.send(Event::Ready);
                state.run(&cmd_rx);
            })?;
        Ok(Self {
            commands: cmd_tx,
            events: ev_rx,
            cancel,
            thread: Some(thread),
        })
    }

    /// Queues a command without waiting; errors if the worker is busy with a full queue or gone.
    pub fn send(&self, command: Command) -> Result<(), String> {
        if matches!(command, Command::Cancel) {
            self.cancel();
        }
        self.commands.try_send(command).map_err(|e| match e {
            TrySendError::Full(_) => {
                "the worker is busy: too many queued jobs; try again".to_string()
            }
            TrySendError::Disconnected(_) => "the worker thread has stopped".to_string(),
        })
    }

    /// Asks the running job to stop at its next check (between batches).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Events received so far, without waiting.
    pub fn try_events(&self) -> impl Iterator<Item = Event> + '_ {
        self.events.try_iter()
    }

    /// Waits up to `timeout` for the next event (tests and headless use; the GUI never waits).
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.events.recv_timeout(timeout).ok()
    }
}

impl Worker {
    /// Stops the thread and waits for it (tests; the GUI just drops the handle).
    pub fn shutdown(mut self) {
        self.cancel();
        let _ = self
            .commands
            .send_timeout(Command::Shutdown, Duration::from_secs(5));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    /// Cancels the running job and asks the thread to stop, without waiting for it: a long
    /// forward pass must not freeze the closing window. The thread also stops when its
    /// command channel disconnects.
    fn drop(&mut self) {
        self.cancel();
        let _ = self.commands.try_send(Command::Shutdown);
    }
}

struct WorkerState {
    model: Option<LoadedModel>,
    /// The model was loaded with its LM head (generation and scoring work).
    full: bool,
    /// The adapter merged into the loaded model, kept for the full reload.
    adapter: Option<PathBuf>,
    cancel: Arc<AtomicBool>,
    outbox: Outbox,
}

impl WorkerState {
    fn run(&mut self, commands: &Receiver<Command>) {
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

    fn fail(&self, job: Option<JobId>, error: String) {
        self.outbox.send(Event::Failed { job, error });
    }

    fn train(&mut self, job: JobId, options: TrainOptions) {
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

    fn load(&mut self, job: JobId, model: &str, adapter: Option<PathBuf>) {
        let model = model.trim();
        if model.is_empty() {
            return self.fail(
                Some(job),
                "no model given: enter a hub id or choose a folder".into(),
            );
        }
        self.outbox
            .progress(job, 0, 0, format!("resolving {model}"));
        let opts = LoadOptions {
            model: model.to_string(),
            routing_only: true,
            adapter: adapter.clone(),
            ..LoadOptions::default()
        };
        let mut progress = DownloadEvents {
            outbox: &self.outbox,
            job,
            file: String::new(),
            done: 0,
            total: 0,
            last: Instant::now(),
        };
        match load_model(&opts, Some(&mut progress)) {
            Ok(loaded) => {
                let info = loaded.model.info().clone();
                // Drop the old model first so two never sit in memory at once.
                self.model = None;
                self.model = Some(loaded);
                self.full = false;
                self.adapter = adapter;
                self.outbox.send(Event::ModelLoaded {
                    job,
                    info: Box::new(info),
                });
            }
            Err(e) => self.fail(Some(job), format!("cannot load {model}: {e:#}")),
        }
    }

    fn profile(
        &mut self,
        job: JobId,
        prompts: &PromptSet,
        batch_size: usize,
        max_tokens: Option<usize>,
    ) {
        let Some(loaded) = self.model.as_mut() else {
            return self.fail(
                Some(job),
                "no model loaded: load a model before profiling".into(),
            );
        };
        let opts = ProfileOptions {
            batch_size: batch_size.max(1),
            max_tokens,
            traces: None,
        };
        let total = prompts.len() as u64;
        self.outbox.progress(job, 0, total, "profiling".into());
        let mut tokens = {
            let info = loaded.model.info();
            TokenCounter::new(info.moe_layers.len(), info.num_experts)
        };
        let mut last = Instant::now();
        let outbox = &self.outbox;
        let result = run_profile_observed(
            loaded.model.as_mut(),
            &loaded.tokenizer,
            prompts,
            &opts,
            &self.cancel,
            &mut |p| {
                let finished = p.sequences_done == p.sequences_total;
                if finished || last.elapsed() >= PROGRESS_INTERVAL {
                    last = Instant::now();
                    outbox.progress(
                        job,
                        p.sequences_done as u64,
                        p.sequences_total as u64,
                        format!(
                            "{} / {} prompts, {} tokens",
                            p.sequences_done, p.sequences_total, p.tokens_done
                        ),
                    );
                }
            },
            Some(&mut |traces| traces.iter().for_each(|t| tokens.add(t))),
        );
        match result {
            Ok(profile) => self.outbox.send(Event::ProfileReady {
                job,
                profile: Arc::new(profile),
                top_tokens: Arc::new(tokens.all_top_tokens(TOP_TOKENS_PER_EXPERT)),
            }),
            Err(ProfileError::Cancelled) => self.outbox.send(Event::Cancelled { job }),
            Err(e) => self.fail(
                Some(job),
                format!("profiling {} failed: {e:#}", prompts.source),
            ),
        }
    }

    fn trace(&mut self, text: &str) -> Result<TokenTrace, String> {
        let Some(loaded) = self.model.as_mut() else {
            return Err("no model loaded: load a model to trace a prompt".into());
        };
        if text.trim().is_empty() {
            return Err("the prompt is empty".into());
        }
        let ids = loader::encode(&loaded.tokenizer, text).map_err(|e| format!("{e:#}"))?;
        if ids.is_empty() {
            return Err("the prompt has no tokens".into());
        }
        let info = loaded.model.info().clone();
        let ids: Vec<u32> = ids
            .into_iter()
            .take(info.max_position_embeddings.max(1))
            .collect();
        let batch = Batch::from_sequences(std::slice::from_ref(&ids), &loaded.device)
            .map_err(|e| format!("{e:#}"))?;
        let mut hook = RecordingHook::default();
        {
            let mut ctx = RouteCtx::new(&mut hook);
            loaded
                .model
                .forward(&batch, Output::RoutingOnly, &mut ctx)
                .map_err(|e| format!("routing the prompt failed: {e:#}"))?;
        }
        let layers = info.moe_layers.clone();
        let mut tokens: Vec<TracedToken> = ids
            .iter()
            .map(|&id| TracedToken {
                id,
                text: loaded.tokenizer.decode(&[id], false).unwrap_or_default(),
                experts: vec![Vec::new(); layers.len()],
            })
            .collect();
        for route in &hook.layers {
            let Some(row) = layers.iter().position(|&l| l == route.layer) else {
                continue;
            };
            let k = route.top_k.max(1);
            for (t, token) in tokens.iter_mut().enumerate() {
                let range = t * k..(t + 1) * k;
                if let (Some(idx), Some(w)) = (
                    route.topk_indices.get(range.clone()),
                    route.topk_weights.get(range),
                ) {
                    token.experts[row] =
                        idx.iter().zip(w).map(|(&e, &w)| (e as usize, w)).collect();
                }
            }
        }
        Ok(TokenTrace {
            text: text.to_string(),
            layers,
            num_experts: info.num_experts,
            tokens,
        })
    }
}

/// Why a generate or eval job ended without a result.
enum JobError {
    Cancelled,
    Failed(String),
}

impl From<String> for JobError {
    fn from(e: String) -> Self {
        JobError::Failed(e)
    }
}

/// `error` with `file` in front unless it already names it.
fn naming(file: &str, error: impl std::fmt::Display) -> String {
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
    fn full_model(&mut self, job: JobId, what: &str) -> Result<&mut LoadedModel, String> {
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

    fn generate(
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
        let ids = loader::encode(&loaded.tokenizer, prompt).map_err(|e| format!("{e:#}"))?;
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
        let tokenizer = loaded.tokenizer.clone();
        let mut outputs = Vec::with_capacity(2);
        for (i, side) in [Side::Unsteered, Side::Steered].into_iter().enumerate() {
            let steering: Option<&ActiveSteering> = (side == Side::Steered).then_some(&active);
            let name = match side {
                Side::Unsteered => "unsteered",
                Side::Steered => "steered",
            };
            let mut stream = TextStream::default();
            let mut done = 0u64;
            let mut last = Instant::now();
            let out = generate(
                loaded.model.as_mut(),
                &ids,
                steering,
                &opts,
                None,
                cancel,
                &mut |t| {
                    done += 1;
                    if let Some(text) = stream.push(&tokenizer, t) {
                        outbox.send(Event::GeneratedText { job, side, text });
                    }
                    if last.elapsed() >= PROGRESS_INTERVAL {
                        last = Instant::now();
                        outbox.progress(
                            job,
                            i as u64 * max_new + done,
                            total,
                            format!("generating {name}: {done} / {max_new} tokens"),
                        );
                    }
                },
            );
            match out {
                Ok(o) => outputs.push(o),
                Err(SteerError::Cancelled) => return Err(JobError::Cancelled),
                Err(e) => return Err(format!("{name} generation failed: {e}").into()),
            }
        }
        let steered_ids = outputs.pop().unwrap_or_default();
        let unsteered_ids = outputs.pop().unwrap_or_default();
        if cancel.load(Ordering::Relaxed) {
            return Err(JobError::Cancelled);
        }
        outbox.progress(job, 2 * max_new, total, "comparing routing".into());
        // The routing change on the same tokens: the prompt plus the unsteered continuation.
        let mut seq = ids.clone();
        seq.extend_from_slice(&unsteered_ids);
        let routing = (|| -> crate::steering::Result<RoutingDiff> {
            let before = sequence_routing(loaded.model.as_mut(), &seq, ids.len(), None)?;
            let after = sequence_routing(loaded.model.as_mut(), &seq, ids.len(), Some(&active))?;
            RoutingDiff::new(&before, &after, &active.steered_experts())
        })()
        .map_err(|e| format!("comparing the routing failed: {e}"))?;
        outbox.progress(job, total, total, "done".into());
        let steered_cells = active
            .steered_experts()
            .into_iter()
            .flat_map(|(l, es)| es.into_iter().map(move |e| (l, e)))
            .collect();
        Ok(SteerResult {
            prompt_tokens: ids.len(),
            unsteered_text: decode(&tokenizer, &unsteered_ids),
            steered_text: decode(&tokenizer, &steered_ids),
            unsteered_ids,
            steered_ids,
            routing,
            steered_cells,
        })
    }

    fn eval(
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

/// Turns download progress into progress events (throttled).
struct DownloadEvents<'a> {
    outbox: &'a Outbox,
    job: JobId,
    file: String,
    done: u64,
    total: u64,
    last: Instant,
}

impl DownloadProgress for DownloadEvents<'_> {
    fn on_file(&mut self, file: &str, total_bytes: usize) {
        self.file = file.to_string();
        self.done = 0;
        self.total = total_bytes as u64;
        self.outbox
            .progress(self.job, 0, self.total, format!("downloading {file}"));
    }

    fn on_bytes(&mut self, bytes: usize) {
        self.done += bytes as u64;
        if self.last.elapsed() >= PROGRESS_INTERVAL || self.done >= self.total {
            self.last = Instant::now();
            self.outbox.progress(
                self.job,
                self.done,
                self.total,
                format!(
                    "downloading {} ({:.1} / {:.1} MB)",
                    self.file,
                    mb(self.done),
                    mb(self.total)
                ),
            );
        }
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

#[cfg(test)]
mod tests;
