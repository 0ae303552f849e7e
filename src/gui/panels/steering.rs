//! Steering panel: a prompt, a steering table (from the selection, from a domain's DAS top-N,
//! or by hand; bias / force on / force off per expert), a global strength, which tokens it
//! applies to, save / load of the spec file; Generate runs the unsteered and the steered
//! continuation on the worker, streams both side by side, then shows the routing difference
//! ([`RoutingDiffView`]).

use std::path::{Path, PathBuf};

use crate::analysis::das::GeneralSet;
use crate::gui::dialogs::{DialogPurpose, Dialogs};
use crate::gui::state::{AppState, JobKind};
use crate::gui::widgets::routing_diff::RoutingDiffView;
use crate::gui::widgets::text::displayable;
use crate::inference::generate::GenerateOptions;
use crate::model::router::ExpertForce;
use crate::render::HeatmapLayout;
use crate::selection::SelectionModel;
use crate::steering::{ApplyTo, ExpertSteer, SteerAction, SteeringSpec};
use crate::worker::Side;

/// What a row of the steering table does to its expert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteerMode {
    /// Add a bias (× strength) to the router logit (DSMoE).
    Bias,
    /// Above the token's largest logit (SteerMoE).
    ForceOn,
    /// Below the token's smallest logit (SteerMoE).
    ForceOff,
}

impl SteerMode {
    pub const ALL: [SteerMode; 3] = [SteerMode::Bias, SteerMode::ForceOn, SteerMode::ForceOff];

    pub fn name(self) -> &'static str {
        match self {
            SteerMode::Bias => "bias",
            SteerMode::ForceOn => "force on",
            SteerMode::ForceOff => "force off",
        }
    }

    fn action(self, bias: f32) -> SteerAction {
        match self {
            SteerMode::Bias => SteerAction::Bias(bias),
            SteerMode::ForceOn => SteerAction::Force(ExpertForce::On),
            SteerMode::ForceOff => SteerAction::Force(ExpertForce::Off),
        }
    }
}

/// One row of the steering table.
#[derive(Debug, Clone, PartialEq)]
pub struct SteerRow {
    /// Decoder layer index.
    pub layer: usize,
    pub expert: usize,
    pub mode: SteerMode,
    /// Used in [`SteerMode::Bias`], and with a force when `force_bias` is set (kept when the
    /// mode changes, so switching back restores it).
    pub bias: f32,
    /// A forced expert also gets the bias: it orders the forced experts among themselves and
    /// shifts their routing weights.
    pub force_bias: bool,
}

impl SteerRow {
    fn entry(&self) -> ExpertSteer {
        let (bias, force) = match self.mode {
            SteerMode::Bias => (Some(self.bias), None),
            SteerMode::ForceOn => (self.force_bias.then_some(self.bias), Some(ExpertForce::On)),
            SteerMode::ForceOff => (self.force_bias.then_some(self.bias), Some(ExpertForce::Off)),
        };
        ExpertSteer {
            layer: self.layer,
            expert: self.expert,
            bias,
            force,
        }
    }

    /// A spec entry as a row (an entry with both a force and a bias keeps both).
    fn from_entry(e: &ExpertSteer, default_bias: f32) -> Self {
        let mode = match e.force {
            Some(ExpertForce::On) => SteerMode::ForceOn,
            Some(ExpertForce::Off) => SteerMode::ForceOff,
            None => SteerMode::Bias,
        };
        Self {
            layer: e.layer,
            expert: e.expert,
            mode,
            bias: e.bias.unwrap_or(default_bias),
            force_bias: e.force.is_some() && e.bias.is_some(),
        }
    }
}

pub struct SteeringPanel {
    pub prompt: String,
    pub rows: Vec<SteerRow>,
    /// Multiplies every bias; 0 turns the spec off.
    pub strength: f32,
    pub apply_to: ApplyTo,
    /// Mode and bias of cells added from the selection, a DAS ranking or by hand.
    pub new_mode: SteerMode,
    pub new_bias: f32,
    /// DAS domain (`None`: the profile's first subject) and how many experts to take.
    pub das_domain: Option<String>,
    pub das_top_n: usize,
    pub add_layer: usize,
    pub add_expert: usize,
    /// How the table was made (saved in the spec).
    pub source: Option<String>,
    pub path_field: String,
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    diff: RoutingDiffView,
    /// Where the difference heatmap's cells were drawn last frame (tests).
    pub last_layout: Option<HeatmapLayout>,
}

impl Default for SteeringPanel {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            rows: Vec::new(),
            strength: 1.0,
            apply_to: ApplyTo::Both,
            new_mode: SteerMode::Bias,
            new_bias: 2.0,
            das_domain: None,
            das_top_n: 8,
            add_layer: 0,
            add_expert: 0,
            source: None,
            path_field: "steering.json".into(),
            max_new_tokens: 32,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            diff: RoutingDiffView::default(),
            last_layout: None,
        }
    }
}

/// A ragged (not justified) top-down layout.
fn left() -> egui::Layout {
    egui::Layout::top_down(egui::Align::LEFT)
}

/// Height of one steering-table row.
const ROW_HEIGHT: f32 = 24.0;
const TABLE_HEIGHT: f32 = 190.0;

impl SteeringPanel {
    /// The table, strength and scope as a steering spec.
    pub fn spec(&self, state: &AppState) -> SteeringSpec {
        let mut spec = SteeringSpec::new(self.rows.iter().map(SteerRow::entry).collect());
        spec.strength = self.strength;
        spec.apply_to = self.apply_to;
        spec.source = self.source.clone();
        spec.model = state
            .profile
            .as_ref()
            .map(|p| SelectionModel::from(&p.model));
        spec
    }

    /// Replaces the table, strength and scope with `spec`'s.
    pub fn set_spec(&mut self, spec: &SteeringSpec) {
        self.rows = spec
            .experts
            .iter()
            .map(|e| SteerRow::from_entry(e, self.new_bias))
            .collect();
        self.strength = spec.strength;
        self.apply_to = spec.apply_to;
        self.source = spec.source.clone();
    }

    /// One-line description (the Eval tab shows it).
    pub fn summary(&self) -> String {
        let mut counts = [0usize; 3];
        for r in &self.rows {
            counts[SteerMode::ALL
                .iter()
                .position(|&m| m == r.mode)
                .unwrap_or(0)] += 1;
        }
        let parts: Vec<String> = SteerMode::ALL
            .iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .map(|(m, n)| format!("{n} {}", m.name()))
            .collect();
        format!(
            "{} steered cells ({}), strength {}, applied to {} tokens{}",
            self.rows.len(),
            if parts.is_empty() {
                "none".to_string()
            } else {
                parts.join(", ")
            },
            self.strength,
            apply_name(self.apply_to),
            self.source
                .as_deref()
                .map(|s| format!(", from {s}"))
                .unwrap_or_default()
        )
    }

    fn set_cells(&mut self, cells: impl IntoIterator<Item = (usize, usize)>, source: String) {
        self.rows = cells
            .into_iter()
            .map(|(layer, expert)| SteerRow {
                layer,
                expert,
                mode: self.new_mode,
                bias: self.new_bias,
                force_bias: false,
            })
            .collect();
        self.source = Some(source);
    }

    /// Fills the table with the current selection's cells.
    pub fn from_selection(&mut self, state: &mut AppState) {
        if state.selected.is_empty() {
            state.error(
                "the selection is empty: select experts on the Heatmap, DAS or Selection tab first",
            );
            return;
        }
        let cells: Vec<(usize, usize)> = state.selected.iter().copied().collect();
        let n = cells.len();
        self.set_cells(cells, format!("selection ({n} cells)"));
        state.info(format!("steering the {n} selected experts"));
    }

    /// Fills the table with the top-N experts of the domain's DAS ranking.
    pub fn from_das(&mut self, state: &mut AppState) {
        let Some(profile) = state.profile.clone() else {
            state.error("no profile: a DAS ranking needs a profile (run profiling first)");
            return;
        };
        let Some(domain) = self
            .das_domain
            .clone()
            .or_else(|| profile.subjects.first().map(|s| s.name.clone()))
        else {
            state.error("the profile has no subjects");
            return;
        };
        let action = self.new_mode.action(self.new_bias);
        match SteeringSpec::from_das(
            &profile,
            &domain,
            &GeneralSet::OtherSubjects,
            self.das_top_n.max(1),
            action,
        ) {
            Ok(spec) => {
                let cells: Vec<(usize, usize)> =
                    spec.experts.iter().map(|e| (e.layer, e.expert)).collect();
                let n = cells.len();
                self.set_cells(
                    cells,
                    spec.source
                        .unwrap_or_else(|| format!("DAS top-{n} of '{domain}'")),
                );
                state.info(format!("steering the DAS top-{n} experts of '{domain}'"));
            }
            Err(e) => state.error(format!("cannot rank experts for '{domain}': {e}")),
        }
    }

    /// Reads a spec file into the table (checked against the loaded model, if any).
    pub fn load(&mut self, state: &mut AppState, path: &Path) {
        let loaded = SteeringSpec::load(path).and_then(|spec| {
            if let Some(info) = &state.model {
                spec.resolve_from_file(path, info)?;
            }
            Ok(spec)
        });
        match loaded {
            Ok(spec) => {
                self.set_spec(&spec);
                state.info(format!(
                    "loaded {} steered cells from {}",
                    spec.experts.len(),
                    path.display()
                ));
            }
            Err(e) => state.error(format!("cannot load the steering spec: {e}")),
        }
    }

    /// Writes the table as a spec file (temp file + rename).
    pub fn save(&self, state: &mut AppState, path: &Path) {
        match self.spec(state).save(path) {
            Ok(()) => state.info(format!(
                "saved {} steered cells to {}",
                self.rows.len(),
                path.display()
            )),
            Err(e) => state.error(format!("cannot save the steering spec: {e}")),
        }
    }

    /// Starts the unsteered + steered generation.
    pub fn generate(&mut self, state: &mut AppState) {
        let spec = self.spec(state);
        let options = GenerateOptions {
            max_new_tokens: self.max_new_tokens.max(1),
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop_ids: Vec::new(),
        };
        let prompt = self.prompt.clone();
        state.generate(&prompt, spec, options);
    }

    /// MoE layers and experts per layer of the loaded model (else of the profile).
    fn shape(state: &AppState) -> Option<(Vec<usize>, usize)> {
        if let Some(m) = &state.model {
            return Some((m.moe_layers.clone(), m.num_experts));
        }
        state
            .profile
            .as_ref()
            .map(|p| (p.model.moe_layers.clone(), p.model.num_experts))
    }

    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        state: &mut AppState,
        dialogs: &mut Dialogs,
        gpu: bool,
    ) {
        ui.columns(2, |cols| {
            egui::ScrollArea::vertical()
                .id_salt("steering_controls")
                .auto_shrink(false)
                .show(&mut cols[0], |ui| {
                    // Columns justify their text; wrapped labels read better ragged.
                    ui.with_layout(left(), |ui| self.controls_ui(ui, state, dialogs));
                });
            egui::ScrollArea::vertical()
                .id_salt("steering_results")
                .auto_shrink(false)
                .show(&mut cols[1], |ui| {
                    ui.with_layout(left(), |ui| self.results_ui(ui, state, gpu));
                });
        });
    }

    fn controls_ui(&mut self, ui: &mut egui::Ui, state: &mut AppState, dialogs: &mut Dialogs) {
        let label = ui.strong("Prompt");
        ui.add(
            egui::TextEdit::multiline(&mut self.prompt)
                .hint_text("type a prompt to continue")
                .desired_rows(3)
                .desired_width(f32::INFINITY),
        )
        .labelled_by(label.id);
        if let Some(prompts) = state.prompts.clone() {
            egui::ComboBox::from_id_salt("steer_prompt_pick")
                .selected_text("prompt from data")
                .width(200.0)
                .show_ui(ui, |ui| {
                    for subject in prompts.subjects() {
                        if let Some(p) = prompts.prompts_for(&subject).next() {
                            let short: String = p.text.chars().take(60).collect();
                            if ui
                                .selectable_label(false, format!("{subject}: {short}"))
                                .clicked()
                            {
                                self.prompt = p.text.chars().take(400).collect();
                            }
                        }
                    }
                })
                .response
                .on_hover_text("pick a prompt from the data");
        }
        ui.separator();
        self.table_ui(ui, state);
        ui.separator();
        ui.horizontal_wrapped(|ui| {
            ui.add(egui::Slider::new(&mut self.strength, 0.0..=4.0).text("strength"))
                .on_hover_text("global strength: multiplies every bias; 0 turns steering off");
            let label = ui.label("apply to");
            egui::ComboBox::from_id_salt("steer_apply_to")
                .selected_text(apply_name(self.apply_to))
                .show_ui(ui, |ui| {
                    for a in [ApplyTo::Both, ApplyTo::Prompt, ApplyTo::Generated] {
                        ui.selectable_value(&mut self.apply_to, a, apply_name(a));
                    }
                })
                .response
                .labelled_by(label.id);
        });
        ui.horizontal_wrapped(|ui| {
            let label = ui.label("Spec file");
            ui.add(egui::TextEdit::singleline(&mut self.path_field).desired_width(180.0))
                .labelled_by(label.id);
            if ui.button("Save spec").clicked() {
                let path = PathBuf::from(self.path_field.trim());
                self.save(state, &path);
            }
            if ui.button("Load spec").clicked() {
                let path = PathBuf::from(self.path_field.trim());
                self.load(state, &path);
            }
            if ui
                .button("Open…")
                .on_hover_text("choose a steering spec file to load")
                .clicked()
            {
                dialogs.pick_file(DialogPurpose::OpenSteering, &["json"]);
            }
            if ui
                .button("Save as…")
                .on_hover_text("choose where to save the steering spec")
                .clicked()
            {
                dialogs.save_file(DialogPurpose::SaveSteering, "steering.json");
            }
        });
        ui.separator();
        ui.horizontal_wrapped(|ui| {
            ui.add(
                egui::DragValue::new(&mut self.max_new_tokens)
                    .range(1..=1024)
                    .prefix("new tokens "),
            )
            .on_hover_text("new tokens to generate at most");
            ui.add(
                egui::DragValue::new(&mut self.temperature)
                    .range(0.0..=5.0)
                    .speed(0.01)
                    .prefix("temperature "),
            )
            .on_hover_text("sampling temperature; 0 = greedy");
            ui.add(
                egui::DragValue::new(&mut self.top_p)
                    .range(0.01..=1.0)
                    .speed(0.01)
                    .prefix("top-p "),
            )
            .on_hover_text("nucleus sampling threshold");
            ui.add(egui::DragValue::new(&mut self.seed).prefix("seed "))
                .on_hover_text("sampling seed");
        });
        let running = state.job(JobKind::Generate).cloned();
        ui.horizontal(|ui| {
            if ui
                .add_enabled(
                    state.model.is_some() && running.is_none(),
                    egui::Button::new("Generate"),
                )
                .clicked()
            {
                self.generate(state);
            }
            if let Some(job) = &running {
                if ui.button("Cancel generation").clicked() {
                    state.cancel();
                }
                let bar = match job.fraction() {
                    Some(f) => egui::ProgressBar::new(f),
                    None => egui::ProgressBar::new(0.0).animate(true),
                };
                ui.add(bar.text(job.label.clone()));
            } else if state.model.is_none() {
                ui.weak("load a model to generate");
            }
        });
    }

    fn table_ui(&mut self, ui: &mut egui::Ui, state: &mut AppState) {
        ui.strong("Steering table");
        ui.horizontal_wrapped(|ui| {
            let label = ui.label("new cells:");
            egui::ComboBox::from_id_salt("steer_new_mode")
                .selected_text(self.new_mode.name())
                .show_ui(ui, |ui| {
                    for m in SteerMode::ALL {
                        ui.selectable_value(&mut self.new_mode, m, m.name());
                    }
                })
                .response
                .labelled_by(label.id);
            if self.new_mode == SteerMode::Bias {
                ui.add(
                    egui::DragValue::new(&mut self.new_bias)
                        .speed(0.05)
                        .range(-50.0..=50.0)
                        .prefix("bias "),
                )
                .on_hover_text("router-logit bias of new cells");
            }
        });
        ui.horizontal_wrapped(|ui| {
            if ui
                .button(format!("From selection ({})", state.selected.len()))
                .on_hover_text("steer the experts selected on the Heatmap / Selection tabs")
                .clicked()
            {
                self.from_selection(state);
            }
            if let Some(profile) = state.profile.clone()
                && profile.subjects.len() >= 2
            {
                if self
                    .das_domain
                    .as_ref()
                    .is_none_or(|d| profile.subject(d).is_none())
                {
                    self.das_domain = profile.subjects.first().map(|s| s.name.clone());
                }
                let label = ui.label("DAS of");
                egui::ComboBox::from_id_salt("steer_das_domain")
                    .selected_text(self.das_domain.clone().unwrap_or_default())
                    .show_ui(ui, |ui| {
                        for s in &profile.subjects {
                            ui.selectable_value(
                                &mut self.das_domain,
                                Some(s.name.clone()),
                                &s.name,
                            );
                        }
                    })
                    .response
                    .labelled_by(label.id);
                let total = profile.model.moe_layers.len() * profile.model.num_experts;
                ui.add(
                    egui::DragValue::new(&mut self.das_top_n)
                        .range(1..=total.max(1))
                        .prefix("top "),
                )
                .on_hover_text("how many experts (across all layers) to take from the ranking");
                if ui.button("From DAS").clicked() {
                    self.from_das(state);
                }
            }
        });
        if let Some((layers, n)) = Self::shape(state) {
            ui.horizontal_wrapped(|ui| {
                if !layers.contains(&self.add_layer) {
                    self.add_layer = layers.first().copied().unwrap_or(0);
                }
                let label = ui.label("add layer");
                egui::ComboBox::from_id_salt("steer_add_layer")
                    .selected_text(self.add_layer.to_string())
                    .width(50.0)
                    .show_ui(ui, |ui| {
                        for &l in &layers {
                            ui.selectable_value(&mut self.add_layer, l, l.to_string());
                        }
                    })
                    .response
                    .labelled_by(label.id);
                ui.add(
                    egui::DragValue::new(&mut self.add_expert)
                        .range(0..=n.saturating_sub(1))
                        .prefix("expert "),
                )
                .on_hover_text("expert to add");
                if ui.button("Add").clicked() {
                    let cell = (self.add_layer, self.add_expert);
                    if self.rows.iter().any(|r| (r.layer, r.expert) == cell) {
                        state.error(format!(
                            "layer {} expert {} is already in the table",
                            cell.0, cell.1
                        ));
                    } else {
                        self.rows.push(SteerRow {
                            layer: cell.0,
                            expert: cell.1,
                            mode: self.new_mode,
                            bias: self.new_bias,
                            force_bias: false,
                        });
                        self.rows.sort_by_key(|r| (r.layer, r.expert));
                    }
                }
                if ui
                    .add_enabled(!self.rows.is_empty(), egui::Button::new("Clear table"))
                    .clicked()
                {
                    self.rows.clear();
                    self.source = None;
                }
            });
        }
        if self.rows.is_empty() {
            ui.weak("No steered experts: generation is then unsteered on both sides.");
            return;
        }
        ui.label(self.summary());
        let mut remove = None;
        egui::ScrollArea::vertical()
            .id_salt("steer_table")
            .max_height(TABLE_HEIGHT)
            .auto_shrink([false, true])
            .show_rows(ui, ROW_HEIGHT, self.rows.len(), |ui, range| {
                for i in range {
                    let row = &mut self.rows[i];
                    ui.horizontal(|ui| {
                        ui.set_min_height(ROW_HEIGHT - 4.0);
                        ui.monospace(format!("L{:<3} E{:<4}", row.layer, row.expert));
                        egui::ComboBox::from_id_salt(("steer_mode", i))
                            .selected_text(row.mode.name())
                            .width(80.0)
                            .show_ui(ui, |ui| {
                                for m in SteerMode::ALL {
                                    ui.selectable_value(&mut row.mode, m, m.name());
                                }
                            })
                            .response
                            .on_hover_text(format!(
                                "mode of layer {} expert {}",
                                row.layer, row.expert
                            ));
                        if row.mode != SteerMode::Bias {
                            ui.checkbox(&mut row.force_bias, "+").on_hover_text(format!(
                                "also add the bias to forced layer {} expert {}",
                                row.layer, row.expert
                            ));
                        }
                        ui.add_enabled(
                            row.mode == SteerMode::Bias || row.force_bias,
                            egui::DragValue::new(&mut row.bias)
                                .speed(0.05)
                                .range(-50.0..=50.0)
                                .prefix("bias "),
                        )
                        .on_hover_text(format!(
                            "router-logit bias of layer {} expert {}",
                            row.layer, row.expert
                        ));
                        if ui.small_button("Remove").clicked() {
                            remove = Some(i);
                        }
                    });
                }
            });
        if let Some(i) = remove {
            self.rows.remove(i);
        }
    }

    fn results_ui(&mut self, ui: &mut egui::Ui, state: &AppState, gpu: bool) {
        let Some(out) = state.steer_output.as_ref() else {
            ui.weak(
                "Press Generate: the unsteered and the steered continuations appear here side \
                 by side, then the routing difference.",
            );
            return;
        };
        let running = out.result.is_none() && state.job(JobKind::Generate).is_some();
        ui.columns(2, |cols| {
            for (col, side) in cols.iter_mut().zip([Side::Unsteered, Side::Steered]) {
                col.strong(match side {
                    Side::Unsteered => "Unsteered",
                    Side::Steered => "Steered",
                });
                let text = out.text(side);
                egui::Frame::group(col.style()).show(col, |ui| {
                    ui.set_width(ui.available_width());
                    ui.with_layout(left(), |ui| {
                        egui::ScrollArea::vertical()
                            .id_salt(("steer_text", side == Side::Steered))
                            .max_height(200.0)
                            .show(ui, |ui| {
                                if text.is_empty() {
                                    ui.weak(if running {
                                        "generating..."
                                    } else {
                                        "(no text)"
                                    });
                                } else {
                                    ui.label(displayable(ui, text));
                                }
                            });
                    });
                });
            }
        });
        let Some(result) = out.result.clone() else {
            if !running {
                ui.weak("(stopped before the end)");
            }
            return;
        };
        match result.first_difference() {
            Some(i) => ui.label(format!(
                "The continuations differ from generated token {i} on ({} unsteered and {} \
                 steered tokens).",
                result.unsteered_ids.len(),
                result.steered_ids.len()
            )),
            None => ui.label(format!(
                "Identical continuations ({} tokens).",
                result.unsteered_ids.len()
            )),
        };
        ui.separator();
        if let Some(layout) = self.diff.ui(ui, &result, gpu) {
            self.last_layout = Some(layout);
        }
    }
}

fn apply_name(a: ApplyTo) -> &'static str {
    match a {
        ApplyTo::Both => "prompt and generated",
        ApplyTo::Prompt => "prompt",
        ApplyTo::Generated => "generated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_through_a_spec() {
        let panel = SteeringPanel {
            rows: vec![
                SteerRow {
                    layer: 1,
                    expert: 2,
                    mode: SteerMode::Bias,
                    bias: 1.5,
                    force_bias: false,
                },
                SteerRow {
                    layer: 2,
                    expert: 0,
                    mode: SteerMode::ForceOff,
                    bias: 2.0,
                    force_bias: false,
                },
                SteerRow {
                    layer: 2,
                    expert: 3,
                    mode: SteerMode::ForceOn,
                    bias: -0.5,
                    force_bias: true,
                },
            ],
            strength: 0.5,
            apply_to: ApplyTo::Generated,
            ..SteeringPanel::default()
        };
        let state = AppState::new(Default::default(), None);
        let spec = panel.spec(&state);
        assert_eq!(spec.experts[0].bias, Some(1.5));
        assert_eq!(spec.experts[1].force, Some(ExpertForce::Off));
        assert_eq!(spec.experts[1].bias, None);
        assert_eq!(spec.experts[2].force, Some(ExpertForce::On));
        assert_eq!(
            spec.experts[2].bias,
            Some(-0.5),
            "a forced expert keeps its bias"
        );
        let mut other = SteeringPanel::default();
        other.set_spec(&spec);
        assert_eq!(other.rows, panel.rows);
        assert_eq!(other.strength, 0.5);
        assert_eq!(other.apply_to, ApplyTo::Generated);
        assert!(
            panel
                .summary()
                .starts_with("3 steered cells (1 bias, 1 force on, 1 force off)")
        );
    }
}
