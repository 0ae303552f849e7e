//! The painter fallback, used without a wgpu render state: the visible cells as one mesh of
//! quads, plus selection and hover outlines (mirrors `shaders/heatmap.wgsl`).

use egui::{Color32, Stroke};

use crate::render::colormap::HeatmapStyle;
use crate::render::layout::HeatmapLayout;
use crate::render::matrix::Matrix;

/// The painter fallback: one mesh of quads, plus outlines (mirrors the shader).
pub(super) fn paint_cells(
    painter: &egui::Painter,
    m: &Matrix,
    l: &HeatmapLayout,
    style: &HeatmapStyle,
    selected: Option<&[bool]>,
    hovered: Option<(usize, usize)>,
) {
    let mut mesh = egui::Mesh::default();
    let mut outlines = Vec::new();
    for r in l.first.1..l.first.1 + l.visible.1 {
        for c in l.first.0..l.first.0 + l.visible.0 {
            let Some(rect) = l.cell_rect(r, c) else {
                continue;
            };
            let v = m.values[r * m.cols + c];
            mesh.add_colored_rect(rect, style.color(v));
            if selected
                .and_then(|s| s.get(r * m.cols + c))
                .copied()
                .unwrap_or(false)
            {
                outlines.push(rect);
            }
        }
    }
    painter.add(egui::Shape::mesh(mesh));
    for rect in outlines {
        painter.rect_stroke(
            rect,
            0.0,
            Stroke::new(1.0, Color32::from_rgb(255, 64, 51)),
            egui::StrokeKind::Inside,
        );
    }
    if let Some(rect) = hovered.and_then(|(r, c)| l.cell_rect(r, c)) {
        painter.rect_stroke(
            rect,
            0.0,
            Stroke::new(1.0, Color32::WHITE),
            egui::StrokeKind::Inside,
        );
    }
}
