//! The routing difference of a steered-vs-unsteered run as a widget: a layers × experts heatmap
//! of the change in the share of tokens choosing each expert (steered cells outlined, row labels
//! with each layer's share of tokens whose chosen set changed), a hover tooltip with both shares,
//! and a per-layer table of changed sets and steered mass.

use std::sync::Arc;

use egui::vec2;

use crate::render::legend_ui;
use crate::render::{
    ColorMap, ColorScale, Heatmap, HeatmapLayout, HeatmapStyle, HeatmapView, Matrix,
};
use crate::worker::SteerResult;

/// The routing-difference heatmap of one finished job.
struct DiffHeatmap {
    result: Arc<SteerResult>,
    matrix: Matrix,
    style: HeatmapStyle,
    row_labels: Vec<String>,
    /// Steered cells, drawn with the selection outline.
    mask: Vec<bool>,
}

impl DiffHeatmap {
    fn new(result: Arc<SteerResult>) -> Self {
        let d = &result.routing;
        let matrix = Matrix::from_rows(&d.delta());
        let style = HeatmapStyle::fit(&matrix.values, ColorMap::Diverging, ColorScale::Linear);
        let row_labels = d
            .layers
            .iter()
            .zip(&d.changes)
            .map(|(l, c)| format!("L{l} {:.0}%", 100.0 * c.changed_share))
            .collect();
        let mut mask = vec![false; matrix.rows * matrix.cols];
        for &(l, e) in &result.steered_cells {
            if let Some(row) = d.layers.iter().position(|&x| x == l)
                && e < matrix.cols
            {
                mask[row * matrix.cols + e] = true;
            }
        }
        Self {
            result,
            matrix,
            style,
            row_labels,
            mask,
        }
    }
}

/// The routing-difference view: keeps the heatmap of the last result shown and its zoom / pan.
#[derive(Default)]
pub struct RoutingDiffView {
    view: HeatmapView,
    diff: Option<DiffHeatmap>,
}

impl RoutingDiffView {
    /// Draws the routing difference of `result`; returns where the heatmap's cells were drawn.
    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        result: &Arc<SteerResult>,
        gpu: bool,
    ) -> Option<HeatmapLayout> {
        if self
            .diff
            .as_ref()
            .is_none_or(|d| !Arc::ptr_eq(&d.result, result))
        {
            self.diff = Some(DiffHeatmap::new(result.clone()));
            self.view.reset();
        }
        let diff = self.diff.as_ref()?;
        let d = &result.routing;
        ui.strong("Routing difference");
        ui.label(format!(
            "Share of the {} tokens (prompt + unsteered continuation) choosing each expert, \
             steered minus unsteered; steered experts outlined; row labels: share of tokens \
             whose chosen set changed.",
            d.tokens
        ));
        legend_ui(ui, &diff.style, 240.0, &|v| format!("{:+.0} pp", 100.0 * v));
        let rows = diff.matrix.rows.max(1) as f32;
        let height = (rows * 22.0 + 24.0).clamp(120.0, 360.0);
        let resp = Heatmap::new("steer_diff_heatmap", &diff.matrix)
            .style(diff.style)
            .selected(&diff.mask)
            .row_labels(&diff.row_labels)
            .label("Routing difference heatmap")
            .gpu(gpu)
            .max_cell(28.0)
            .size(vec2(ui.available_width(), height))
            .show(ui, &mut self.view);
        if let Some((row, col)) = resp.hovered {
            let layer = d.layers.get(row).copied().unwrap_or(row);
            let before = d.before.get(row).and_then(|r| r.get(col)).copied();
            let after = d.after.get(row).and_then(|r| r.get(col)).copied();
            let steered = result.steered_cells.contains(&(layer, col));
            resp.response.clone().on_hover_ui_at_pointer(|ui| {
                ui.label(format!("layer {layer}, expert {col}"));
                if let (Some(b), Some(a)) = (before, after) {
                    ui.label(format!(
                        "tokens choosing it: {:.1}% unsteered, {:.1}% steered ({:+.1} pp)",
                        100.0 * b,
                        100.0 * a,
                        100.0 * (a - b)
                    ));
                }
                if steered {
                    ui.label("steered");
                }
            });
        }
        ui.separator();
        egui::Grid::new("steer_layer_changes")
            .striped(true)
            .num_columns(5)
            .show(ui, |ui| {
                ui.strong("layer");
                ui.strong("changed sets");
                ui.strong("steered mass");
                ui.strong("onto");
                ui.strong("off");
                ui.end_row();
                for c in &d.changes {
                    ui.label(c.layer.to_string());
                    ui.label(format!("{:.1}%", 100.0 * c.changed_share));
                    ui.label(format!(
                        "{:.3} to {:.3}",
                        c.steered_mass_before, c.steered_mass_after
                    ));
                    ui.label(format!("{:.3}", c.mass_onto));
                    ui.label(format!("{:.3}", c.mass_off));
                    ui.end_row();
                }
            });
        Some(resp.layout)
    }
}
