//! The layers × experts heatmap: metric and subject pickers, colour scale and legend, hover
//! tooltip, click to toggle an expert, drag to select a rectangle, zoom and pan.
//!
//! A count-only profile (imported routing) offers the count-based metrics only: routing mass
//! and routing score are listed disabled, saying why, and DAS is labelled "DAS on counts".

use crate::analysis::das::{GeneralSet, default_das_signal, domain_advantage};
use crate::analysis::divergence::activation_distribution;
use crate::gui::state::{AppState, HeatmapMetric};
use crate::profile::{RoutingProfile, RoutingSignal, SubjectProfile};
use crate::render::legend_ui;
use crate::render::{ColorMap, ColorScale, Heatmap, HeatmapLayout, HeatmapStyle, Matrix};

/// The heatmap panel with its cached matrix.
#[derive(Default)]
pub struct HeatmapPanel {
    cache: Option<(CacheKey, Result<Matrix, String>)>,
    /// Where the cells were drawn last frame (tests click through it).
    pub last_layout: Option<HeatmapLayout>,
    row_labels: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct CacheKey {
    generation: u64,
    metric: HeatmapMetric,
    subject: Option<String>,
}

/// The `metric` matrix (moe layer rows × experts) of `subject` (`None`: pooled).
pub fn metric_matrix(
    profile: &RoutingProfile,
    metric: HeatmapMetric,
    subject: Option<&str>,
) -> Result<Matrix, String> {
    let pooled = profile.pooled();
    let data: &SubjectProfile = match subject {
        Some(name) => profile
            .subject(name)
            .ok_or_else(|| format!("the profile has no subject '{name}'"))?,
        None => &pooled,
    };
    let per_token = |rows: &[Vec<f64>]| -> Vec<Vec<f64>> {
        let n = data.tokens.max(1) as f64;
        rows.iter()
            .map(|r| r.iter().map(|v| v / n).collect())
            .collect()
    };
    let rows: Vec<Vec<f64>> = match metric {
        HeatmapMetric::CountShare => data
            .count
            .iter()
            .map(|r| activation_distribution(r))
            .collect(),
        HeatmapMetric::RoutingMass => per_token(data.mass().map_err(|e| e.to_string())?),
        HeatmapMetric::RoutingScore => per_token(data.score().map_err(|e| e.to_string())?),
        HeatmapMetric::DasVsGeneral => {
            let Some(name) = subject else {
                return Err("DAS needs a subject: choose one instead of pooled".into());
            };
            domain_advantage(
                profile,
                name,
                &GeneralSet::OtherSubjects,
                default_das_signal(profile),
            )
            .map_err(|e| e.to_string())?
            .das
        }
        HeatmapMetric::SubjectMinusPooled => {
            if subject.is_none() {
                return Err(
                    "subject − pooled needs a subject: choose one instead of pooled".into(),
                );
            }
            data.count
                .iter()
                .zip(&pooled.count)
                .map(|(s, p)| {
                    let s = activation_distribution(s);
                    let p = activation_distribution(p);
                    s.iter().zip(&p).map(|(a, b)| a - b).collect()
                })
                .collect()
        }
    };
    Ok(Matrix::from_rows(&rows))
}

/// Rank of `col` within `row` (1 = largest value).
pub fn rank_in_row(m: &Matrix, row: usize, col: usize) -> Option<usize> {
    let v = m.get(row, col)?;
    let row_vals = &m.values[row * m.cols..(row + 1) * m.cols];
    Some(
        1 + row_vals
            .iter()
            .enumerate()
            .filter(|&(c, &x)| x > v || (x == v && c < col))
            .count(),
    )
}

/// What the DAS heatmap shows, naming the signal it is computed on.
fn das_caption(profile: &RoutingProfile) -> String {
    match default_das_signal(profile) {
        RoutingSignal::Count => format!(
            "DAS on counts: share of the subject's tokens choosing each expert minus the other \
             subjects' (the profile has no routing scores: {})",
            profile.signals_caption()
        ),
        _ => "DAS on routing scores: mean score per token of the subject minus the other subjects'"
            .to_string(),
    }
}

fn format_value(metric: HeatmapMetric, v: f32) -> String {
    match metric {
        HeatmapMetric::CountShare => format!("{:.2}%", v * 100.0),
        HeatmapMetric::SubjectMinusPooled => format!("{:+.2} pp", v * 100.0),
        HeatmapMetric::DasVsGeneral => format!("{v:+.4}"),
        _ => format!("{v:.4}"),
    }
}

impl HeatmapPanel {
    fn matrix(&mut self, state: &AppState, profile: &RoutingProfile) -> &Result<Matrix, String> {
        let key = CacheKey {
            generation: state.profile_generation,
            metric: state.ui.metric,
            subject: state.ui.heatmap_subject.clone(),
        };
        if self.cache.as_ref().is_none_or(|(k, _)| *k != key) {
            let m = metric_matrix(profile, key.metric, key.subject.as_deref());
            self.row_labels = profile
                .model
                .moe_layers
                .iter()
                .map(|&l| profile.model.row_label(l))
                .collect();
            self.cache = Some((key, m));
        }
        match &self.cache {
            Some((_, m)) => m,
            None => unreachable!("cache filled above"),
        }
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, state: &mut AppState, gpu: bool) {
        let Some(profile) = state.profile.clone() else {
            ui.centered_and_justified(|ui| {
                ui.label("No profile yet: load a model and run profiling (left panel), or open a profile file.");
            });
            return;
        };
        state.fit_metric_to_profile();
        controls_ui(ui, state, &profile);
        let metric = state.ui.metric;
        let metric_label = metric.label(&profile);
        let scale = state.ui.scale;
        let matrix = match self.matrix(state, &profile) {
            Ok(m) => m.clone(),
            Err(e) => {
                ui.colored_label(ui.visuals().warn_fg_color, e.as_str());
                return;
            }
        };
        let colormap = if metric.is_signed() {
            ColorMap::Diverging
        } else {
            ColorMap::Viridis
        };
        let style = HeatmapStyle::fit(&matrix.values, colormap, scale);
        ui.horizontal(|ui| {
            legend_ui(ui, &style, 260.0, &|v| format_value(metric, v));
            ui.label(format!(
                "{} selected · click toggles · drag selects a rectangle · Ctrl+scroll zooms · scroll / right-drag pans",
                state.selected.len()
            ));
        });
        if metric == HeatmapMetric::DasVsGeneral {
            ui.weak(das_caption(&profile));
        }
        let caption = profile.model.layer_kinds_caption();
        if !caption.is_empty() {
            ui.weak(format!("Rows are the MoE layers. {caption}"));
        }
        if profile.signals.len() < RoutingSignal::ALL.len() {
            ui.weak(format!("Signals: {}", profile.signals_caption()));
        }
        let mask = state.selection_mask();
        let mut view = state.ui.heatmap_view;
        let resp = Heatmap::new("main_heatmap", &matrix)
            .style(style)
            .selected(&mask)
            .row_labels(&self.row_labels)
            .label("Routing heatmap")
            .gpu(gpu)
            .show(ui, &mut view);
        state.ui.heatmap_view = view;
        self.last_layout = Some(resp.layout);
        if let Some((row, col)) = resp.hovered {
            let layer = profile.model.moe_layers.get(row).copied().unwrap_or(row);
            let v = matrix.get(row, col).unwrap_or(f32::NAN);
            let rank = rank_in_row(&matrix, row, col).unwrap_or(0);
            let selected = state.selected.contains(&(layer, col));
            resp.response.clone().on_hover_ui_at_pointer(|ui| {
                ui.label(format!("layer {layer}, expert {col}"));
                ui.label(format!("{metric_label}: {}", format_value(metric, v)));
                ui.label(format!("rank in layer: {rank} of {}", matrix.cols));
                if let Some(top) = state
                    .top_tokens
                    .as_ref()
                    .and_then(|t| t.get(row))
                    .and_then(|r| r.get(col))
                    .filter(|t| !t.is_empty())
                {
                    let shown: Vec<String> = top
                        .iter()
                        .map(|t| format!("{:?} {}/{}", t.token, t.routed, t.occurrences))
                        .collect();
                    ui.label(format!("top tokens: {}", shown.join(", ")));
                }
                if selected {
                    ui.label("selected");
                }
            });
        }
        if let Some((row, col)) = resp.clicked
            && let Some(layer) = state.layer_of_row(row)
        {
            state.toggle(layer, col);
        }
        if let Some(range) = resp.dragged {
            let cells: Vec<(usize, usize)> = range
                .cells()
                .filter_map(|(r, c)| state.layer_of_row(r).map(|l| (l, c)))
                .collect();
            state.add_cells(cells);
        }
    }
}

fn controls_ui(ui: &mut egui::Ui, state: &mut AppState, profile: &RoutingProfile) {
    ui.horizontal_wrapped(|ui| {
        let heatmap_metric_label = ui.label("Metric");
        egui::ComboBox::from_id_salt("heatmap_metric")
            .selected_text(state.ui.metric.label(profile))
            .show_ui(ui, |ui| {
                for m in HeatmapMetric::ALL {
                    match m.unavailable_reason(profile) {
                        None => {
                            ui.selectable_value(&mut state.ui.metric, m, m.label(profile));
                        }
                        Some(reason) => {
                            ui.add_enabled(
                                false,
                                egui::Button::selectable(false, m.label(profile)),
                            )
                            .on_disabled_hover_text(reason);
                        }
                    }
                }
            })
            .response
            .labelled_by(heatmap_metric_label.id);
        let heatmap_subject_label = ui.label("Data");
        let current = state
            .ui
            .heatmap_subject
            .clone()
            .unwrap_or_else(|| "pooled".into());
        egui::ComboBox::from_id_salt("heatmap_subject")
            .selected_text(current)
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut state.ui.heatmap_subject, None, "pooled");
                for s in &profile.subjects {
                    ui.selectable_value(
                        &mut state.ui.heatmap_subject,
                        Some(s.name.clone()),
                        &s.name,
                    );
                }
            })
            .response
            .labelled_by(heatmap_subject_label.id);
        if state.ui.metric.needs_subject()
            && state.ui.heatmap_subject.is_none()
            && let Some(first) = profile.subjects.first()
        {
            state.ui.heatmap_subject = Some(first.name.clone());
        }
        ui.separator();
        ui.selectable_value(&mut state.ui.scale, ColorScale::Linear, "linear");
        ui.selectable_value(&mut state.ui.scale, ColorScale::Log, "log");
        ui.separator();
        if ui.button("−").on_hover_text("zoom out").clicked() {
            state.ui.heatmap_view.zoom_by(0.5);
        }
        if ui.button("+").on_hover_text("zoom in").clicked() {
            state.ui.heatmap_view.zoom_by(2.0);
        }
        if ui.button("fit").clicked() {
            state.ui.heatmap_view.reset();
        }
        ui.label(format!("{:.0}×", state.ui.heatmap_view.zoom));
        ui.separator();
        if ui.button("clear selection").clicked() {
            state.clear_selection();
        }
    });
}
