//! The app shell: side panel (model, data), central tabs (heatmap, subjects, load, DAS,
//! tokens, selection, steering, eval, training), status bar (jobs, messages). `logic` drains
//! the worker and the file dialogs and steps the screenshot script; `ui` draws; `save` persists
//! [`UiState`]. [`run`] opens the window.

use std::path::PathBuf;

use crate::gui::args::GuiArgs;
use crate::gui::dialogs::{DialogPurpose, Dialogs};
use crate::gui::panels::{
    BalancePanel, DasPanel, DataPanel, EvalPanel, HeatmapPanel, ModelPanel, SelectionPanel,
    SteeredColumn, SteeringPanel, SubjectsPanel, TokensPanel, TrainingPanel,
};
use crate::gui::screenshot::ScreenshotHook;
use crate::gui::state::{AppState, Level, Tab, UiState};
use crate::render::HeatmapRenderer;
use crate::worker::Worker;

/// Opens the explorer window and runs until it is closed.
pub fn run(args: GuiArgs) -> anyhow::Result<()> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("MoEScope")
            .with_app_id("moescope")
            .with_inner_size([1280.0, 800.0])
            .with_min_inner_size([640.0, 400.0]),
        ..Default::default()
    };
    eframe::run_native(
        "MoEScope",
        options,
        Box::new(move |cc| Ok(Box::new(MoeScopeApp::new(cc, args)))),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the MoEScope window: {e}"))
}

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
    pub balance: BalancePanel,
    pub das: DasPanel,
    pub tokens: TokensPanel,
    pub selection: SelectionPanel,
    pub steering: SteeringPanel,
    pub eval: EvalPanel,
    pub training: TrainingPanel,
    screenshot: Option<ScreenshotHook>,
}

impl MoeScopeApp {
    /// The app as `moescope gui` starts it: persisted UI state, a worker, and the jobs `args`
    /// ask for (the demo when neither a model nor a profile is given).
    pub fn new(cc: &eframe::CreationContext<'_>, args: GuiArgs) -> Self {
        let ui: UiState = cc
            .storage
            .and_then(|s| s.get_string(STORAGE_KEY))
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        let mut app = Self::bare(cc, ui);
        app.screenshot = ScreenshotHook::from_env();
        if let Some(hook) = &app.screenshot {
            hook.prepare(&mut app.state.ui);
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
            balance: BalancePanel::default(),
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
            // A profile on its own (often imported routing of a model too big to load here)
            // is explored without a model: the demo's would not be the profile's.
            None if args.profile.is_some() => {
                if let Ok(dir) = crate::demo::demo_dir() {
                    self.demo_prompts = Some(dir.join("prompts"));
                }
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
        hook.step(
            ctx,
            &mut self.state,
            &mut self.selection,
            &mut self.tokens,
            &mut self.steering,
            &mut self.training,
        );
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
            Tab::Load => self.balance.ui(ui, &mut self.state),
            Tab::Das => self.das.ui(ui, &mut self.state),
            Tab::Tokens => self.tokens.ui(ui, &mut self.state),
            Tab::Selection => self.selection.ui(ui, &mut self.state),
            Tab::Steering => self
                .steering
                .ui(ui, &mut self.state, &mut self.dialogs, self.gpu),
            Tab::Eval => {
                let steering = SteeredColumn {
                    spec: self.steering.spec(&self.state),
                    summary: self.steering.summary(),
                };
                self.eval
                    .ui(ui, &mut self.state, &mut self.dialogs, &steering)
            }
            Tab::Training => self.training.ui(ui, &mut self.state, &mut self.dialogs),
        });
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        if let Ok(s) = serde_json::to_string(&self.state.ui) {
            storage.set_string(STORAGE_KEY, s);
        }
    }
}
