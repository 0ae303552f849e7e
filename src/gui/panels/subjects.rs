//! Subjects panel: KL vs pooled per layer (one toggleable line per subject), the top-3 layers
//! table, the subject × subject Jaccard matrix of top-3 layer sets (drawn with the heatmap
//! shader) and how many subjects each layer appears in — the blog's analysis, live.

use std::collections::BTreeSet;

use egui_plot::{Line, Plot, PlotPoints};

use crate::analysis::divergence::{
    SubjectDivergence, TopLayerOverlap, subject_divergences, top_layer_overlap,
};
use crate::analysis::jaccard;
use crate::gui::state::AppState;
use crate::render::{ColorMap, ColorScale, Heatmap, HeatmapStyle, HeatmapView, Matrix};

const TOP_K: usize = 3;

#[derive(Default)]
pub struct SubjectsPanel {
    cache: Option<(u64, Computed)>,
    hidden: BTreeSet<String>,
    jaccard_view: HeatmapView,
}

struct Computed {
    divergences: Vec<SubjectDivergence>,
    overlap: TopLayerOverlap,
    jaccard: Matrix,
    names: Vec<String>,
    moe_layers: Vec<usize>,
}

/// A fixed colour per subject (by its position in the profile), so a line keeps its colour
/// when others are hidden: golden-angle hues, bright enough on the dark theme.
fn subject_color(i: usize) -> egui::Color32 {
    let hue = (0.04 + i as f32 * 0.618_034).fract();
    egui::ecolor::Hsva::new(hue, 0.6, 0.95, 1.0).into()
}

impl SubjectsPanel {
    pub fn ui(&mut self, ui: &mut egui::Ui, state: &mut AppState, gpu: bool) {
        let Some(profile) = state.profile.clone() else {
            ui.label("No profile yet.");
            return;
        };
        if self
            .cache
            .as_ref()
            .is_none_or(|(g, _)| *g != state.profile_generation)
        {
            let divergences = subject_divergences(&profile, TOP_K);
            let sets: Vec<Vec<usize>> = divergences.iter().map(|d| d.top_layers.clone()).collect();
            let n = sets.len();
            let mut values = Vec::with_capacity(n * n);
            for a in &sets {
                for b in &sets {
                    values.push(jaccard(a, b) as f32);
                }
            }
            self.cache = Some((
                state.profile_generation,
                Computed {
                    overlap: top_layer_overlap(&sets),
                    jaccard: Matrix::new(n, n, values),
                    names: divergences.iter().map(|d| d.name.clone()).collect(),
                    divergences,
                    moe_layers: profile.model.moe_layers.clone(),
                },
            ));
        }
        let Some((_, c)) = &self.cache else { return };
        if c.divergences.len() < 2 {
            ui.label("KL vs pooled needs at least two subjects.");
        }
        egui::ScrollArea::vertical().show(ui, |ui| {
            ui.heading("KL divergence vs pooled, per layer");
            ui.horizontal_wrapped(|ui| {
                for (i, d) in c.divergences.iter().enumerate() {
                    let mut shown = !self.hidden.contains(&d.name);
                    let name = egui::RichText::new(&d.name).color(subject_color(i));
                    if ui.checkbox(&mut shown, name).changed() {
                        if shown {
                            self.hidden.remove(&d.name);
                        } else {
                            self.hidden.insert(d.name.clone());
                        }
                    }
                }
            });
            // The checkboxes above, in the lines' colours, are the legend.
            Plot::new("kl_plot")
                .height(220.0)
                .x_axis_label("layer")
                .y_axis_label("KL (nats)")
                .show(ui, |plot| {
                    for (i, d) in c
                        .divergences
                        .iter()
                        .enumerate()
                        .filter(|(_, d)| !self.hidden.contains(&d.name))
                    {
                        let pts: PlotPoints = c
                            .moe_layers
                            .iter()
                            .zip(&d.kl)
                            .map(|(&l, &kl)| [l as f64, kl])
                            .collect();
                        plot.line(Line::new(d.name.clone(), pts).color(subject_color(i)));
                    }
                });
            ui.columns(2, |cols| {
                let ui = &mut cols[0];
                ui.heading(format!("Top-{TOP_K} layers by KL"));
                egui::Grid::new("top_layers").striped(true).show(ui, |ui| {
                    ui.strong("subject");
                    ui.strong("top layers");
                    ui.end_row();
                    for d in &c.divergences {
                        ui.label(&d.name);
                        ui.label(
                            d.top_layers
                                .iter()
                                .map(|l| l.to_string())
                                .collect::<Vec<_>>()
                                .join(", "),
                        );
                        ui.end_row();
                    }
                });
                ui.add_space(8.0);
                match c.overlap.mean_pairwise {
                    Some(j) => ui.label(format!(
                        "mean pairwise Jaccard: {j:.3} over {} pairs",
                        c.overlap.pairs
                    )),
                    None => ui.label("mean pairwise Jaccard: needs two subjects"),
                };
                ui.heading("Layer appearances");
                let mut by_count: Vec<(usize, usize)> = c
                    .overlap
                    .layer_appearances
                    .iter()
                    .map(|(&l, &n)| (l, n))
                    .collect();
                by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                egui::Grid::new("appearances").striped(true).show(ui, |ui| {
                    for (l, n) in by_count {
                        ui.label(format!("layer {l}"));
                        ui.label(format!("{n} of {}", c.divergences.len()));
                        ui.end_row();
                    }
                });
                let ui = &mut cols[1];
                ui.heading("Jaccard of top-layer sets");
                let style = HeatmapStyle {
                    colormap: ColorMap::Viridis,
                    scale: ColorScale::Linear,
                    range: (0.0, 1.0),
                };
                crate::render::legend_ui(ui, &style, 200.0, &|v| format!("{v:.2}"));
                // Square, within the space left (the names above the columns included).
                let side = ui
                    .available_width()
                    .min(ui.available_height() - 8.0)
                    .clamp(120.0, 420.0);
                let resp = Heatmap::new("jaccard_heatmap", &c.jaccard)
                    .style(style)
                    .row_labels(&c.names)
                    .col_labels(&c.names)
                    .label("Subject Jaccard")
                    .gpu(gpu)
                    .size(egui::vec2(side, side))
                    .show(ui, &mut self.jaccard_view);
                if let Some((r, col)) = resp.hovered {
                    let v = c.jaccard.get(r, col).unwrap_or(f32::NAN);
                    resp.response.on_hover_text_at_pointer(format!(
                        "{} vs {}: {v:.3}",
                        c.names.get(r).map_or("", String::as_str),
                        c.names.get(col).map_or("", String::as_str)
                    ));
                }
            });
        });
    }
}
