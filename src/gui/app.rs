//! The app shell: side panel (model, data), central tabs (heatmap, subjects, load, DAS,
//! tokens, selection, steering, eval), status bar (jobs, messages). `logic` drains the worker and the file
//! dialogs; `ui` draws; `save` persists [`UiState`].

use std::path::PathBuf;

use super::GuiArgs;
use super::das_panel::DasPanel;
use super::data_panel::DataPanel;
use super::dialogs::{DialogPurpose, Dialogs};
use super::eval_panel::EvalPanel;
use super::heatmap_panel::HeatmapPanel;
use super::load_panel::LoadPanel;
use super::model_panel::ModelPanel;
use super::selection_panel::SelectionPanel;
use super::state::{AppState, HeatmapMetric, JobKind, Level, Tab, UiState};
use super::steering_panel::SteeringPanel;
use super::subjects_panel::SubjectsPanel;
use super::tokens_panel::TokensPanel;
use super::training_panel::TrainingPanel;
use crate::render::HeatmapRenderer;
use crate::worker::Worker;

/// eframe storage key of [`UiState`].
pub const STORAGE_KEY: &str = "moescope_ui_state";

pub struct MoeScopeApp {
    pub state: AppState,
    /// The wgpu heatmap renderer is registered (else the painter fallback draws).
    pub gpu: bool,
    demo_prompts: Option<PathBuf>,
    dialogs: Dialogs,
    pub heatmap: HeatmapPanel,
    pub model_panel: ModelPanel,
    pub data_panel: DataPanel,
    pub subjects: SubjectsPanel,
    pub load: LoadPanel,
    pub das: DasPanel,
    pub tokens: TokensPanel,
    pub selection: SelectionPanel,
    pub steering: SteeringPanel,
    pub eval: EvalPanel,
    pub training: TrainingPanel,
    screenshot: Option<ScreenshotHook>,
}

/// `scripts/screenshots.sh` support: `MOESCOPE_SCREENSHOT=<view>` opens that tab, makes a
/// selection (and a token trace) once the profile is ready, then touches the file named by
/// `MOESCOPE_SCREENSHOT_READY`.
struct ScreenshotHook {
    view: String,
    ready_file: Option<PathBuf>,
    stage: u32,
}

impl ScreenshotHook {
    fn from_env() -> Option<Self> {
        let view = std::env::var("MOESCOPE_SCREENSHOT")
            .ok()?
            .to_ascii_lowercase();
        Some(Self {
            view,
            ready_file: std::env::var_os("MOESCOPE_SCREENSHOT_READY").map(PathBuf::from),
            stage: 0,
        })
    }
}

impl MoeScopeApp {
    /// The app as `moescope gui` starts it: persisted UI state, a worker, and the jobs `args`
    /// ask for (the demo when no model is given).
    pub fn new(cc: &eframe::CreationContext<'_>, args: GuiArgs) -> Self {
        let ui: UiState = cc
            .storage
            .and_then(|s| s.get_string(STORAGE_KEY))
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        let mut app = Self::bare(cc, ui);
        app.screenshot = ScreenshotHook::from_env();
        if let Some(hook) = &app.screenshot {
            app.state.ui.show_side_panel = true;
            app.state.ui.heatmap_view.reset();
            if let Some(tab) = Tab::ALL
                .into_iter()
                .find(|t| t.name().to_ascii_lowercase() == hook.view)
            {
                app.state.ui.tab = tab;
            }
        }
        app.start(args);
        app
    }

    /// The app with default UI state and a running worker, nothing loaded (tests).
    pub fn bare(cc: &eframe::CreationContext<'_>, ui: UiState) -> Self {
        let gpu = match cc.wgpu_render_state.as_ref() {
            Some(rs) => {
                HeatmapRenderer::register(rs);
                true
            }
            None => false,
        };
        let ctx = cc.egui_ctx.clone();
        let worker = Worker::spawn(move || ctx.request_repaint());
        let mut state = AppState::new(ui, None);
        match worker {
            Ok(w) => state.worker = Some(w),
            Err(e) => state.error(format!("cannot start the model worker thread: {e}")),
        }
        Self {
            state,
            gpu,
            demo_prompts: None,
            dialogs: Dialogs::default(),
            heatmap: HeatmapPanel::default(),
            model_panel: ModelPanel::default(),
            data_panel: DataPanel::default(),
            subjects: SubjectsPanel::default(),
            load: LoadPanel::default(),
            das: DasPanel::default(),
            tokens: TokensPanel::default(),
            selection: SelectionPanel::default(),
            steering: SteeringPanel::default(),
            eval: EvalPanel::default(),
            training: TrainingPanel::default(),
            screenshot: None,
        }
    }

    /// Starts what the command line asks for.
    pub fn start(&mut self, args: GuiArgs) {
        let s = &mut self.state;
        if let Some(profile) = &args.profile {
            s.open_profile(profile);
            self.data_panel.profile_field = profile.display().to_string();
        }
        if let Some(data) = &args.data {
            s.load_prompts(data);
            self.data_panel.dataset_field = data.display().to_string();
            self.data_panel.preview(&mut self.state, data);
        }
        let s = &mut self.state;
        match &args.model {
            Some(model) => {
                self.model_panel.model_field = model.clone();
                s.auto_profile = args.profile.is_none() && s.prompts.is_some();
                s.load_model_with_adapter(model, args.adapter.clone());
            }
            None => match crate::demo::demo_dir() {
                Ok(dir) => {
                    let prompts_dir = dir.join("prompts");
                    if s.prompts.is_none() {
                        match crate::data::load_prompt_dir(&prompts_dir) {
                            Ok(p) => s.set_prompts(p),
                            Err(e) => s.error(format!("{e:#}")),
                        }
                    }
                    self.demo_prompts = Some(prompts_dir);
                    let model = dir.display().to_string();
                    self.model_panel.model_field = model.clone();
                    s.auto_profile = args.profile.is_none() && s.prompts.is_some();
                    s.load_model_with_adapter(&model, args.adapter.clone());
                }
                Err(e) => s.error(format!("{e}")),
            },
        }
    }

    fn handle_dialogs(&mut self) {
        for (purpose, path) in self.dialogs.poll() {
            let shown = path.display().to_string();
            match purpose {
                DialogPurpose::ModelFolder => {
                    self.model_panel.model_field = shown;
                    self.state.load_model(&path.display().to_string());
                }
                DialogPurpose::Dataset => {
                    self.data_panel.dataset_field = shown;
                    self.data_panel.preview(&mut self.state, &path);
                    self.state.load_prompts(&path);
                }
                DialogPurpose::OpenProfile => {
                    self.data_panel.profile_field = shown;
                    self.state.open_profile(&path);
                }
                DialogPurpose::SaveProfile => {
                    self.data_panel.profile_field = shown;
                    self.state.save_profile(&path);
                }
                DialogPurpose::OpenSelection | DialogPurpose::SaveSelection => {
                    self.selection.path_field = shown;
                }
                DialogPurpose::PeftDir => self.selection.peft_dir = shown,
                DialogPurpose::EsftFile => self.selection.esft_file = shown,
                DialogPurpose::OpenSteering => {
                    self.steering.path_field = shown;
                    self.steering.load(&mut self.state, &path);
                }
                DialogPurpose::SaveSteering => {
                    self.steering.path_field = shown;
                    self.steering.save(&mut self.state, &path);
                }
                DialogPurpose::EvalData => self.eval.data_field = shown,
                DialogPurpose::TrainData => self.training.data_field = shown,
                DialogPurpose::TrainOut => self.training.out_field = shown,
            }
        }
    }

    fn screenshot_step(&mut self, ctx: &egui::Context) {
        let Some(hook) = self.screenshot.as_mut() else {
            return;
        };
        // Keep stepping, but leave the CPU to the worker while a job runs.
        ctx.request_repaint_after(std::time::Duration::from_millis(50));
        if self.state.profile.is_none() {
            return;
        }
        match hook.stage {
            0 => {
                // Show one subject against the pooled routing, with its hot experts selected.
                if let Some(profile) = self.state.profile.clone() {
                    let subject = ["law", "code_python"]
                        .into_iter()
                        .find(|s| profile.subject(s).is_some())
                        .or_else(|| profile.subjects.first().map(|s| s.name.as_str()))
                        .map(str::to_string);
                    if hook.view == "heatmap" {
                        self.state.ui.metric = HeatmapMetric::SubjectMinusPooled;
                        self.state.ui.heatmap_subject = subject.clone();
                    }
                    self.selection.data = subject;
                }
                self.selection.apply(&mut self.state);
                if hook.view == "tokens"
                    && let Some(p) = self.state.prompts.as_ref().and_then(|p| p.prompts.first())
                {
                    self.tokens.prompt = p.text.chars().take(160).collect();
                    let text = self.tokens.prompt.clone();
                    self.state.trace(&text);
                }
                if hook.view == "steering" {
                    screenshot_steering(&mut self.steering, &mut self.state);
                }
                if hook.view == "training" {
                    screenshot_training(&mut self.training, &mut self.state);
                }
                hook.stage = 1;
            }
            1 => {
                if hook.view == "steering" && self.state.job(JobKind::Generate).is_some() {
                    return;
                }
                if hook.view == "training" && self.state.job(JobKind::Train).is_some() {
                    return;
                }
                if hook.view == "tokens" {
                    let Some(trace) = &self.state.trace else {
                        return;
                    };
                    self.tokens.selected_token = Some(trace.tokens.len().min(4).saturating_sub(1));
                    self.tokens.colour_row = Some(trace.layers.len() / 2);
                }
                hook.stage = 2;
            }
            30 => {
                if let Some(f) = &hook.ready_file
                    && let Err(e) = std::fs::write(f, b"ready")
                {
                    self.state.error(format!("{}: {e}", f.display()));
                }
                hook.stage += 1;
            }
            n if n < 30 => hook.stage += 1,
            _ => {}
        }
    }

    fn status_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            let jobs = self.state.jobs.clone();
            for job in &jobs {
                let bar = match job.fraction() {
                    Some(f) => egui::ProgressBar::new(f).show_percentage(),
                    None => egui::ProgressBar::new(0.0).animate(true),
                };
                ui.add(bar.desired_width(160.0).text(job.label.clone()));
                if job.kind.cancellable() && ui.button("Cancel").clicked() {
                    self.state.cancel();
                }
            }
            if jobs.is_empty() {
                ui.weak("idle");
            }
            ui.separator();
            if let Some(m) = self.state.messages.last().cloned() {
                let color = match m.level {
                    Level::Error => ui.visuals().error_fg_color,
                    Level::Info => ui.visuals().text_color(),
                };
                let first_line = m.text.lines().next().unwrap_or_default().to_string();
                let resp = ui.colored_label(color, first_line);
                if m.text.contains('\n') {
                    resp.on_hover_text(&m.text);
                }
                if ui.small_button("dismiss").clicked() {
                    self.state.messages.clear();
                }
            }
        });
    }
}

impl eframe::App for MoeScopeApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.state.drain_worker();
        self.handle_dialogs();
        self.screenshot_step(ctx);
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        egui::Panel::top("top_bar").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.strong("MoEScope");
                ui.toggle_value(&mut self.state.ui.show_side_panel, "Model & data");
                ui.separator();
                for tab in Tab::ALL {
                    ui.selectable_value(&mut self.state.ui.tab, tab, tab.name());
                }
            });
        });
        egui::Panel::bottom("status_bar").show(ui, |ui| self.status_ui(ui));
        if self.state.ui.show_side_panel {
            egui::Panel::left("side_panel")
                .resizable(true)
                .default_size(320.0)
                .show(ui, |ui| {
                    egui::ScrollArea::vertical().show(ui, |ui| {
                        self.model_panel.ui(ui, &mut self.state, &mut self.dialogs);
                        ui.separator();
                        let demo = self.demo_prompts.clone();
                        self.data_panel
                            .ui(ui, &mut self.state, &mut self.dialogs, demo.as_deref());
                    });
                });
        }
        egui::CentralPanel::default_margins().show(ui, |ui| match self.state.ui.tab {
            Tab::Heatmap => self.heatmap.ui(ui, &mut self.state, self.gpu),
            Tab::Subjects => self.subjects.ui(ui, &mut self.state, self.gpu),
            Tab::Load => self.load.ui(ui, &mut self.state),
            Tab::Das => self.das.ui(ui, &mut self.state),
            Tab::Tokens => self.tokens.ui(ui, &mut self.state),
            Tab::Selection => self.selection.ui(ui, &mut self.state),
            Tab::Steering => self
                .steering
                .ui(ui, &mut self.state, &mut self.dialogs, self.gpu),
            Tab::Eval => self
                .eval
                .ui(ui, &mut self.state, &mut self.dialogs, &self.steering),
            Tab::Training => self.training.ui(ui, &mut self.state, &mut self.dialogs),
        });
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        if let Ok(s) = serde_json::to_string(&self.state.ui) {
            storage.set_string(STORAGE_KEY, s);
        }
    }
}

/// The training screenshot: LoRA on the law hot-25 % selection, trained on the demo's law
/// prompts for 60 steps (into a temporary folder).
fn screenshot_training(t: &mut TrainingPanel, state: &mut AppState) {
    let out = std::env::temp_dir().join(format!("moescope-screenshot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    t.out_field = out.display().to_string();
    t.domain = state
        .prompts
        .as_ref()
        .and_then(|p| p.subjects().into_iter().find(|s| s == "law"));
    t.max_steps = 60;
    t.batch_size = 8;
    t.max_tokens = 128;
    if let Ok(opts) = t.options(state) {
        state.start_training(opts);
    }
}

/// The steering screenshot: a neutral prompt steered toward the code_python DAS top-16 experts
/// (bias 2), which turns the demo's continuation toward code.
fn screenshot_steering(s: &mut SteeringPanel, state: &mut AppState) {
    let Some(profile) = state.profile.clone() else {
        return;
    };
    s.das_domain = ["code_python"]
        .into_iter()
        .find(|d| profile.subject(d).is_some())
        .or_else(|| profile.subjects.last().map(|d| d.name.as_str()))
        .map(str::to_string);
    s.das_top_n = 16;
    s.new_bias = 2.0;
    s.max_new_tokens = 40;
    s.prompt = "We can write the answer as".into();
    s.from_das(state);
    s.generate(state);
}
