//! The colour legend drawn next to a heatmap.

use egui::{Rect, Sense, pos2, vec2};

use crate::render::colormap::HeatmapStyle;

/// Draws a horizontal colour legend for `style` into `rect`, with end and middle values.
pub fn legend_ui(
    ui: &mut egui::Ui,
    style: &HeatmapStyle,
    width: f32,
    format: &dyn Fn(f32) -> String,
) {
    let (rect, _) = ui.allocate_exact_size(vec2(width, 26.0), Sense::hover());
    let bar = Rect::from_min_size(rect.min, vec2(width, 12.0));
    let painter = ui.painter_at(rect);
    let steps = 64;
    let mut mesh = egui::Mesh::default();
    for i in 0..steps {
        let t0 = i as f32 / steps as f32;
        let t1 = (i + 1) as f32 / steps as f32;
        let r = Rect::from_min_max(
            pos2(bar.min.x + t0 * width, bar.min.y),
            pos2(bar.min.x + t1 * width, bar.max.y),
        );
        mesh.add_colored_rect(r, style.color(style.value_at((t0 + t1) / 2.0)));
    }
    painter.add(egui::Shape::mesh(mesh));
    let font = egui::FontId::proportional(10.0);
    let color = ui.visuals().text_color();
    for (t, align) in [
        (0.0, egui::Align2::LEFT_TOP),
        (0.5, egui::Align2::CENTER_TOP),
        (1.0, egui::Align2::RIGHT_TOP),
    ] {
        painter.text(
            pos2(bar.min.x + t * width, bar.max.y + 1.0),
            align,
            format(style.value_at(t)),
            font.clone(),
            color,
        );
    }
}
