//! `scripts/screenshots.sh` support: with `MOESCOPE_SCREENSHOT=<view>` the app opens that tab
//! (`imported`: the heatmap of an imported profile, nothing selected), and once the profile is
//! ready makes a selection (a token trace, a steered generation or a
//! short training run, depending on the view), lets a few frames settle, then touches the file
//! named by `MOESCOPE_SCREENSHOT_READY`.

use std::path::PathBuf;

use crate::gui::panels::{SelectionPanel, SteeringPanel, TokensPanel, TrainingPanel};
use crate::gui::state::{AppState, HeatmapMetric, JobKind, Tab, UiState};

/// The screenshot script of one run: the view, the file to touch when it is ready, and how far
/// it got.
pub struct ScreenshotHook {
    view: String,
    ready_file: Option<PathBuf>,
    stage: u32,
}

impl ScreenshotHook {
    /// The hook `MOESCOPE_SCREENSHOT` asks for, if any.
    pub fn from_env() -> Option<Self> {
        let view = std::env::var("MOESCOPE_SCREENSHOT")
            .ok()?
            .to_ascii_lowercase();
        Some(Self {
            view,
            ready_file: std::env::var_os("MOESCOPE_SCREENSHOT_READY").map(PathBuf::from),
            stage: 0,
        })
    }

    /// Opens the view's tab with the side panel shown and the heatmap unzoomed.
    pub fn prepare(&self, ui: &mut UiState) {
        ui.show_side_panel = true;
        ui.heatmap_view.reset();
        if let Some(tab) = Tab::ALL
            .into_iter()
            .find(|t| t.name().to_ascii_lowercase() == self.view)
        {
            ui.tab = tab;
        }
    }

    /// One frame of the script (called from `App::logic`).
    pub fn step(
        &mut self,
        ctx: &egui::Context,
        state: &mut AppState,
        selection: &mut SelectionPanel,
        tokens: &mut TokensPanel,
        steering: &mut SteeringPanel,
        training: &mut TrainingPanel,
    ) {
        // Keep stepping, but leave the CPU to the worker while a job runs.
        ctx.request_repaint_after(std::time::Duration::from_millis(50));
        if state.profile.is_none() {
            return;
        }
        match self.stage {
            0 => {
                // Show one subject against the pooled routing, with its hot experts selected.
                if let Some(profile) = state.profile.clone() {
                    let subject = ["law", "code_python"]
                        .into_iter()
                        .find(|s| profile.subject(s).is_some())
                        .or_else(|| profile.subjects.first().map(|s| s.name.as_str()))
                        .map(str::to_string);
                    if self.view == "heatmap" || self.view == "imported" {
                        state.ui.metric = HeatmapMetric::SubjectMinusPooled;
                        state.ui.heatmap_subject = subject.clone();
                    }
                    selection.data = subject;
                }
                // The imported view shows the routing alone, without a selection drawn over it.
                if self.view != "imported" {
                    selection.apply(state);
                }
                if self.view == "tokens"
                    && let Some(p) = state.prompts.as_ref().and_then(|p| p.prompts.first())
                {
                    tokens.prompt = p.text.chars().take(160).collect();
                    let text = tokens.prompt.clone();
                    state.trace(&text);
                }
                if self.view == "steering" {
                    screenshot_steering(steering, state);
                }
                if self.view == "training" {
                    screenshot_training(training, state);
                }
                self.stage = 1;
            }
            1 => {
                if self.view == "steering" && state.job(JobKind::Generate).is_some() {
                    return;
                }
                if self.view == "training" && state.job(JobKind::Train).is_some() {
                    return;
                }
                if self.view == "tokens" {
                    let Some(trace) = &state.trace else {
                        return;
                    };
                    tokens.selected_token = Some(trace.tokens.len().min(4).saturating_sub(1));
                    tokens.colour_row = Some(trace.layers.len() / 2);
                }
                self.stage = 2;
            }
            30 => {
                if let Some(f) = &self.ready_file
                    && let Err(e) = std::fs::write(f, b"ready")
                {
                    state.error(format!("{}: {e}", f.display()));
                }
                self.stage += 1;
            }
            n if n < 30 => self.stage += 1,
            _ => {}
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
