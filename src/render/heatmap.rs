//! The heatmap widget: `Heatmap::new(id_salt, &matrix).style(..).show(ui, &mut view)`. Cells
//! are whole device pixels; [`HeatmapView`] holds zoom and pan. Primary click →
//! [`HeatmapResponse::clicked`], primary drag → [`HeatmapResponse::dragged`] (a rectangle of
//! cells), secondary / middle drag or scroll → pan, Ctrl + scroll → zoom. The cells are drawn
//! by the wgpu paint callback ([`crate::render::wgpu_callback`]) or the painter fallback
//! ([`crate::render::painter`]); the axes by the painter.

use egui::{Color32, Sense, Stroke, Vec2, pos2, vec2};

use crate::render::colormap::HeatmapStyle;
use crate::render::layout::{
    AXIS_FONT_PT, HeatmapLayout, HeatmapView, LEFT_AXIS_PT, MAX_LEFT_AXIS_PT, TOP_AXIS_PT,
    clamp_pan, layout,
};
use crate::render::matrix::{CellRange, Matrix};
use crate::render::painter::paint_cells;
use crate::render::wgpu_callback::{HeatmapCallback, uniforms, visible_mask};

/// What happened to a heatmap this frame.
#[derive(Debug)]
pub struct HeatmapResponse {
    pub response: egui::Response,
    pub layout: HeatmapLayout,
    /// `(row, col)` under the pointer.
    pub hovered: Option<(usize, usize)>,
    /// `(row, col)` clicked with the primary button.
    pub clicked: Option<(usize, usize)>,
    /// A primary-button drag that ended this frame.
    pub dragged: Option<CellRange>,
}

/// The heatmap widget: `Heatmap::new(id_salt, &matrix).style(..).show(ui, &mut view)`.
pub struct Heatmap<'a> {
    id_salt: egui::Id,
    matrix: &'a Matrix,
    style: HeatmapStyle,
    selected: Option<&'a [bool]>,
    row_labels: Option<&'a [String]>,
    col_labels: Option<&'a [String]>,
    label: String,
    gpu: bool,
    max_cell_pt: f32,
    size: Option<Vec2>,
}

impl<'a> Heatmap<'a> {
    pub fn new(id_salt: impl std::hash::Hash + std::fmt::Debug, matrix: &'a Matrix) -> Self {
        Self {
            id_salt: egui::Id::unique(id_salt),
            matrix,
            style: HeatmapStyle::default(),
            selected: None,
            row_labels: None,
            col_labels: None,
            label: "Heatmap".into(),
            gpu: false,
            max_cell_pt: 48.0,
            size: None,
        }
    }

    pub fn style(mut self, style: HeatmapStyle) -> Self {
        self.style = style;
        self
    }

    /// Row-major selection mask (`rows × cols`), drawn as an overlay.
    pub fn selected(mut self, mask: &'a [bool]) -> Self {
        self.selected = Some(mask);
        self
    }

    pub fn row_labels(mut self, labels: &'a [String]) -> Self {
        self.row_labels = Some(labels);
        self
    }

    pub fn col_labels(mut self, labels: &'a [String]) -> Self {
        self.col_labels = Some(labels);
        self
    }

    /// The accessibility label (also what tests find it by).
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Draw with the wgpu callback (the [`HeatmapRenderer`] must be registered).
    pub fn gpu(mut self, gpu: bool) -> Self {
        self.gpu = gpu;
        self
    }

    /// Largest cell size at zoom 1, points.
    pub fn max_cell(mut self, pt: f32) -> Self {
        self.max_cell_pt = pt;
        self
    }

    /// Size of the whole widget (axes included); the available size by default.
    pub fn size(mut self, size: Vec2) -> Self {
        self.size = Some(size);
        self
    }

    pub fn show(self, ui: &mut egui::Ui, view: &mut HeatmapView) -> HeatmapResponse {
        let total = self
            .size
            .unwrap_or_else(|| ui.available_size())
            .max(vec2(80.0, 40.0));
        let (outer, response) = ui.allocate_exact_size(total, Sense::click_and_drag());
        let label = self.label.clone();
        response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Canvas, true, &label));
        let ppp = ui.ctx().pixels_per_point();
        let m = self.matrix;
        // Room for the longest row label (monospace, about 0.6 em per character).
        let label_room = |labels: &[String], min: f32| {
            let chars = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
            (chars as f32 * AXIS_FONT_PT * 0.6 + 6.0).clamp(min, MAX_LEFT_AXIS_PT)
        };
        // Named columns are drawn upright (reading upwards), so they need height, not width.
        let axes_pt = vec2(
            self.row_labels
                .map_or(LEFT_AXIS_PT, |l| label_room(l, LEFT_AXIS_PT)),
            self.col_labels
                .map_or(TOP_AXIS_PT, |l| label_room(l, TOP_AXIS_PT)),
        );

        // Input that changes the view first, so this frame already shows it.
        if response.hovered() {
            let (zoom, scroll) = ui.input(|i| (i.zoom_delta(), i.smooth_scroll_delta));
            if zoom != 1.0 {
                view.zoom_by(zoom);
            } else if scroll != Vec2::ZERO {
                let l = layout(outer, m, view, ppp, self.max_cell_pt, axes_pt);
                view.pan[0] -= scroll.x / l.cell.x.max(1.0);
                view.pan[1] -= scroll.y / l.cell.y.max(1.0);
            }
        }
        if response.dragged_by(egui::PointerButton::Secondary)
            || response.dragged_by(egui::PointerButton::Middle)
        {
            let l = layout(outer, m, view, ppp, self.max_cell_pt, axes_pt);
            let d = response.drag_delta();
            view.pan[0] -= d.x / l.cell.x.max(1.0);
            view.pan[1] -= d.y / l.cell.y.max(1.0);
        }
        let l = layout(outer, m, view, ppp, self.max_cell_pt, axes_pt);
        clamp_pan(view, &l);
        let l = layout(outer, m, view, ppp, self.max_cell_pt, axes_pt);

        let hovered = response.hover_pos().and_then(|p| l.cell_at(p));
        let clicked = if response.clicked_by(egui::PointerButton::Primary) {
            response.interact_pointer_pos().and_then(|p| l.cell_at(p))
        } else {
            None
        };
        let drag_id = self.id_salt.with("drag_start");
        let mut dragged = None;
        let mut pending = None;
        if response.drag_started_by(egui::PointerButton::Primary) {
            let start = ui
                .input(|i| i.pointer.press_origin())
                .or(response.interact_pointer_pos())
                .and_then(|p| l.cell_at(p));
            ui.data_mut(|d| d.insert_temp(drag_id, start));
        }
        let start: Option<(usize, usize)> = ui
            .data(|d| d.get_temp::<Option<(usize, usize)>>(drag_id))
            .flatten();
        if let Some(start) = start {
            let current = response
                .interact_pointer_pos()
                .and_then(|p| l.cell_at_clamped(p));
            if let Some(cur) = current {
                pending = Some(CellRange::spanning(start, cur));
            }
            if response.drag_stopped() {
                dragged = pending;
                ui.data_mut(|d| d.remove::<Option<(usize, usize)>>(drag_id));
            } else if !response.dragged() {
                ui.data_mut(|d| d.remove::<Option<(usize, usize)>>(drag_id));
            }
        }

        if ui.is_rect_visible(outer) && !m.is_empty() {
            let painter = ui.painter_at(outer);
            if self.gpu {
                let mask = visible_mask(m, self.selected);
                painter.add(egui_wgpu::Callback::new_paint_callback(
                    l.rect,
                    HeatmapCallback {
                        id: self.id_salt,
                        values: m.values.clone(),
                        version: m.version,
                        mask,
                        dims: (m.cols as u32, m.rows as u32),
                        rect: l.rect,
                        uniforms: uniforms(&l, &self.style, hovered),
                    },
                ));
            } else {
                paint_cells(&painter, m, &l, &self.style, self.selected, hovered);
            }
            if let Some(p) = pending {
                let a = l.cell_rect(p.rows.0.max(l.first.1), p.cols.0.max(l.first.0));
                let b = l.cell_rect(
                    p.rows.1.min(l.first.1 + l.visible.1.saturating_sub(1)),
                    p.cols.1.min(l.first.0 + l.visible.0.saturating_sub(1)),
                );
                if let (Some(a), Some(b)) = (a, b) {
                    painter.rect_stroke(
                        a.union(b),
                        0.0,
                        Stroke::new(2.0, Color32::WHITE),
                        egui::StrokeKind::Inside,
                    );
                }
            }
            axes(ui, &painter, &l, self.row_labels, self.col_labels);
        }
        HeatmapResponse {
            response,
            layout: l,
            hovered,
            clicked,
            dragged,
        }
    }
}

fn axes(
    ui: &egui::Ui,
    painter: &egui::Painter,
    l: &HeatmapLayout,
    rows: Option<&[String]>,
    cols: Option<&[String]>,
) {
    let font = egui::FontId::monospace(AXIS_FONT_PT);
    let color = ui.visuals().weak_text_color();
    let row_step = ((12.0 / l.cell.y).ceil() as usize).max(1);
    for r in (l.first.1..l.first.1 + l.visible.1).filter(|r| r % row_step == 0) {
        let Some(rect) = l.cell_rect(r, l.first.0) else {
            continue;
        };
        let text = rows
            .and_then(|x| x.get(r))
            .cloned()
            .unwrap_or_else(|| r.to_string());
        painter.text(
            pos2(l.rect.min.x - 3.0, rect.center().y),
            egui::Align2::RIGHT_CENTER,
            text,
            font.clone(),
            color,
        );
    }
    // Indices side by side; names upright, one line of text per column.
    let col_step = match cols {
        None => ((22.0 / l.cell.x).ceil() as usize).max(1),
        Some(_) => ((12.0 / l.cell.x).ceil() as usize).max(1),
    };
    for c in (l.first.0..l.first.0 + l.visible.0).filter(|c| c % col_step == 0) {
        let Some(rect) = l.cell_rect(l.first.1, c) else {
            continue;
        };
        match cols.and_then(|x| x.get(c)) {
            None => {
                painter.text(
                    pos2(rect.center().x, l.rect.min.y - 2.0),
                    egui::Align2::CENTER_BOTTOM,
                    c.to_string(),
                    font.clone(),
                    color,
                );
            }
            Some(name) => {
                let galley = painter.layout_no_wrap(name.clone(), font.clone(), color);
                let h = galley.size().y;
                // Rotated a quarter turn about its top-left corner: the text runs upwards from
                // just above the grid, centred on the column.
                let pos = pos2(rect.center().x - h / 2.0, l.rect.min.y - 3.0);
                painter.add(
                    egui::epaint::TextShape::new(pos, galley, color)
                        .with_angle(-std::f32::consts::FRAC_PI_2),
                );
            }
        }
    }
}
