//! The heatmap widget and its wgpu resources.
//!
//! - [`Matrix`]: row-major values with a version (the GPU texture is re-uploaded only when it
//!   changes).
//! - [`Heatmap`]: the widget. Cells are whole device pixels; [`HeatmapView`] holds zoom and pan.
//!   Primary click → [`HeatmapResponse::clicked`], primary drag → [`HeatmapResponse::dragged`]
//!   (a rectangle of cells), secondary / middle drag or scroll → pan, Ctrl + scroll → zoom.
//! - [`HeatmapRenderer`]: pipeline and per-widget textures in `egui_wgpu`'s callback resources,
//!   registered once with [`HeatmapRenderer::register`].

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use egui::{Color32, Pos2, Rect, Sense, Stroke, Vec2, pos2, vec2};
use egui_wgpu::wgpu;
use serde::{Deserialize, Serialize};

use super::HEATMAP_WGSL;
use super::colormap::HeatmapStyle;
use super::gpu_data::HeatmapUniforms;

static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

/// A `rows × cols` matrix of values, row-major.
#[derive(Debug, Clone)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub values: Arc<Vec<f32>>,
    /// Unique per constructed matrix: tells the renderer when to re-upload.
    pub version: u64,
}

impl Matrix {
    /// Panics in debug builds if `values.len() != rows * cols`; pads or truncates otherwise.
    pub fn new(rows: usize, cols: usize, mut values: Vec<f32>) -> Self {
        debug_assert_eq!(values.len(), rows * cols);
        values.resize(rows * cols, f32::NAN);
        Self {
            rows,
            cols,
            values: Arc::new(values),
            version: NEXT_VERSION.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// From rows of `f64` (ragged rows are padded with NaN).
    pub fn from_rows(rows: &[Vec<f64>]) -> Self {
        let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut values = Vec::with_capacity(rows.len() * cols);
        for r in rows {
            values.extend(r.iter().map(|&v| v as f32));
            values.extend(std::iter::repeat_n(f32::NAN, cols - r.len()));
        }
        Self::new(rows.len(), cols, values)
    }

    pub fn get(&self, row: usize, col: usize) -> Option<f32> {
        (row < self.rows && col < self.cols).then(|| self.values[row * self.cols + col])
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0 || self.cols == 0
    }
}

/// An inclusive rectangle of cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellRange {
    pub rows: (usize, usize),
    pub cols: (usize, usize),
}

impl CellRange {
    /// The rectangle spanned by two corner cells `(row, col)`.
    pub fn spanning(a: (usize, usize), b: (usize, usize)) -> Self {
        Self {
            rows: (a.0.min(b.0), a.0.max(b.0)),
            cols: (a.1.min(b.1), a.1.max(b.1)),
        }
    }

    /// Every `(row, col)` inside.
    pub fn cells(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (self.rows.0..=self.rows.1)
            .flat_map(move |r| (self.cols.0..=self.cols.1).map(move |c| (r, c)))
    }
}

/// Zoom and pan of one heatmap (persisted with the UI state).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeatmapView {
    /// 1 = the whole matrix fits; larger values magnify (cells stay whole pixels).
    pub zoom: f32,
    /// Top-left visible cell as (col, row), fractional while panning.
    pub pan: [f32; 2],
}

impl Default for HeatmapView {
    fn default() -> Self {
        Self {
            zoom: 1.0,
            pan: [0.0, 0.0],
        }
    }
}

impl HeatmapView {
    pub const MAX_ZOOM: f32 = 32.0;

    pub fn zoom_by(&mut self, factor: f32) {
        self.zoom = (self.zoom * factor).clamp(1.0, Self::MAX_ZOOM);
    }

    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// Where the cells of a heatmap were drawn (points), for hit testing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeatmapLayout {
    /// The drawn cells (whole device pixels).
    pub rect: Rect,
    /// One cell, points.
    pub cell: Vec2,
    /// (col, row) of the top-left visible cell.
    pub first: (usize, usize),
    /// Visible (cols, rows).
    pub visible: (usize, usize),
    /// Matrix (cols, rows).
    pub dims: (usize, usize),
    pub pixels_per_point: f32,
}

impl HeatmapLayout {
    /// The `(row, col)` under `pos`, if it is on a cell.
    pub fn cell_at(&self, pos: Pos2) -> Option<(usize, usize)> {
        if !self.rect.contains(pos) || self.cell.x <= 0.0 || self.cell.y <= 0.0 {
            return None;
        }
        let local = pos - self.rect.min;
        let col = (local.x / self.cell.x).floor() as usize;
        let row = (local.y / self.cell.y).floor() as usize;
        (col < self.visible.0 && row < self.visible.1)
            .then_some((row + self.first.1, col + self.first.0))
    }

    /// `(row, col)` under `pos`, clamped to the visible cells (for drags leaving the grid).
    pub fn cell_at_clamped(&self, pos: Pos2) -> Option<(usize, usize)> {
        if self.visible.0 == 0 || self.visible.1 == 0 {
            return None;
        }
        let p = pos.clamp(self.rect.min, self.rect.max - vec2(0.01, 0.01));
        self.cell_at(p)
    }

    /// The rect of a visible cell.
    pub fn cell_rect(&self, row: usize, col: usize) -> Option<Rect> {
        let c = col.checked_sub(self.first.0)?;
        let r = row.checked_sub(self.first.1)?;
        (c < self.visible.0 && r < self.visible.1).then(|| {
            Rect::from_min_size(
                self.rect.min + vec2(c as f32 * self.cell.x, r as f32 * self.cell.y),
                self.cell,
            )
        })
    }

    pub fn cell_center(&self, row: usize, col: usize) -> Option<Pos2> {
        self.cell_rect(row, col).map(|r| r.center())
    }
}

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

const LEFT_AXIS_PT: f32 = 34.0;
/// Row labels (and named column labels, drawn upright) longer than this are clipped.
const MAX_LEFT_AXIS_PT: f32 = 110.0;
/// Axis label size.
const AXIS_FONT_PT: f32 = 10.0;
const TOP_AXIS_PT: f32 = 14.0;

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

/// Cell size and visible window for `outer` (axes excluded), snapped to device pixels.
fn layout(
    outer: Rect,
    m: &Matrix,
    view: &HeatmapView,
    ppp: f32,
    max_cell_pt: f32,
    axes_pt: Vec2,
) -> HeatmapLayout {
    let snap = |v: f32| (v * ppp).round() / ppp;
    let area = Rect::from_min_max(
        pos2(snap(outer.min.x + axes_pt.x), snap(outer.min.y + axes_pt.y)),
        outer.max,
    );
    let avail_px = (area.size() * ppp).max(Vec2::ZERO);
    let cols = m.cols.max(1) as f32;
    let rows = m.rows.max(1) as f32;
    let max_px = (max_cell_pt * ppp).floor().max(1.0);
    let fit_w = (avail_px.x / cols).floor().clamp(1.0, max_px);
    let fit_h = (avail_px.y / rows)
        .floor()
        .clamp(1.0, max_px)
        .min((fit_w * 3.0).max(12.0 * ppp));
    let cell_w = (fit_w * view.zoom).floor().max(1.0);
    let cell_h = (fit_h * view.zoom).floor().max(1.0);
    let cap_cols = ((avail_px.x / cell_w).floor() as usize).max(1);
    let cap_rows = ((avail_px.y / cell_h).floor() as usize).max(1);
    let first_col = (view.pan[0].max(0.0) as usize).min(m.cols.saturating_sub(cap_cols));
    let first_row = (view.pan[1].max(0.0) as usize).min(m.rows.saturating_sub(cap_rows));
    let visible = (
        cap_cols.min(m.cols - first_col.min(m.cols)),
        cap_rows.min(m.rows - first_row.min(m.rows)),
    );
    let cell = vec2(cell_w, cell_h) / ppp;
    HeatmapLayout {
        rect: Rect::from_min_size(
            area.min,
            vec2(visible.0 as f32 * cell.x, visible.1 as f32 * cell.y),
        ),
        cell,
        first: (first_col, first_row),
        visible,
        dims: (m.cols, m.rows),
        pixels_per_point: ppp,
    }
}

fn clamp_pan(view: &mut HeatmapView, l: &HeatmapLayout) {
    let max_col = l.dims.0.saturating_sub(l.visible.0) as f32;
    let max_row = l.dims.1.saturating_sub(l.visible.1) as f32;
    view.pan[0] = view.pan[0].clamp(0.0, max_col);
    view.pan[1] = view.pan[1].clamp(0.0, max_row);
}

fn uniforms(
    l: &HeatmapLayout,
    style: &HeatmapStyle,
    hovered: Option<(usize, usize)>,
) -> HeatmapUniforms {
    let ppp = l.pixels_per_point;
    HeatmapUniforms {
        origin_px: [(l.rect.min.x * ppp).round(), (l.rect.min.y * ppp).round()],
        cell_px: [(l.cell.x * ppp).round(), (l.cell.y * ppp).round()],
        first_cell: [l.first.0 as i32, l.first.1 as i32],
        dims: [l.dims.0 as i32, l.dims.1 as i32],
        hover: hovered.map_or([-1, -1], |(r, c)| [c as i32, r as i32]),
        range: [style.range.0, style.range.1],
        scale: style.scale.as_u32(),
        colormap: style.colormap.as_u32(),
        grid: u32::from(l.cell.x * ppp >= 6.0 && l.cell.y * ppp >= 6.0),
        _pad: 0,
    }
}

fn visible_mask(m: &Matrix, selected: Option<&[bool]>) -> Vec<u8> {
    let n = m.rows * m.cols;
    match selected {
        Some(s) => (0..n)
            .map(|i| {
                if s.get(i).copied().unwrap_or(false) {
                    255
                } else {
                    0
                }
            })
            .collect(),
        None => vec![0; n],
    }
}

/// The painter fallback: one mesh of quads, plus outlines (mirrors the shader).
fn paint_cells(
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

/// Pipeline and per-widget GPU resources, kept in `egui_wgpu`'s callback resources.
pub struct HeatmapRenderer {
    pipeline: wgpu::RenderPipeline,
    bind_group_layout: wgpu::BindGroupLayout,
    instances: HashMap<egui::Id, Instance>,
}

struct Instance {
    dims: (u32, u32),
    version: u64,
    uniforms: wgpu::Buffer,
    values: wgpu::Texture,
    mask: wgpu::Texture,
    bind_group: wgpu::BindGroup,
}

impl HeatmapRenderer {
    /// Builds the pipeline and stores it in the render state's callback resources.
    pub fn register(rs: &egui_wgpu::RenderState) {
        let renderer = Self::new(&rs.device, rs.target_format);
        rs.renderer.write().callback_resources.insert(renderer);
    }

    pub fn new(device: &wgpu::Device, target_format: wgpu::TextureFormat) -> Self {
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("moescope heatmap"),
            source: wgpu::ShaderSource::Wgsl(HEATMAP_WGSL.into()),
        });
        let texture_entry = |binding| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::FRAGMENT,
            ty: wgpu::BindingType::Texture {
                sample_type: wgpu::TextureSampleType::Float { filterable: false },
                view_dimension: wgpu::TextureViewDimension::D2,
                multisampled: false,
            },
            count: None,
        };
        let bind_group_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("moescope heatmap"),
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: NonZeroU64::new(
                            std::mem::size_of::<HeatmapUniforms>() as u64
                        ),
                    },
                    count: None,
                },
                texture_entry(1),
                texture_entry(2),
            ],
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("moescope heatmap"),
            bind_group_layouts: &[Some(&bind_group_layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("moescope heatmap"),
            layout: Some(&layout),
            vertex: wgpu::VertexState {
                module: &shader,
                entry_point: Some("vs_main"),
                buffers: &[],
                compilation_options: wgpu::PipelineCompilationOptions::default(),
            },
            fragment: Some(wgpu::FragmentState {
                module: &shader,
                entry_point: Some("fs_main"),
                targets: &[Some(target_format.into())],
                compilation_options: wgpu::PipelineCompilationOptions::default(),
            }),
            primitive: wgpu::PrimitiveState {
                topology: wgpu::PrimitiveTopology::TriangleStrip,
                ..Default::default()
            },
            depth_stencil: None,
            multisample: wgpu::MultisampleState::default(),
            multiview_mask: None,
            cache: None,
        });
        Self {
            pipeline,
            bind_group_layout,
            instances: HashMap::new(),
        }
    }

    fn instance(
        &mut self,
        device: &wgpu::Device,
        id: egui::Id,
        dims: (u32, u32),
    ) -> Option<&mut Instance> {
        let stale = self.instances.get(&id).is_none_or(|i| i.dims != dims);
        if stale {
            let texture = |format, label| {
                device.create_texture(&wgpu::TextureDescriptor {
                    label: Some(label),
                    size: wgpu::Extent3d {
                        width: dims.0.max(1),
                        height: dims.1.max(1),
                        depth_or_array_layers: 1,
                    },
                    mip_level_count: 1,
                    sample_count: 1,
                    dimension: wgpu::TextureDimension::D2,
                    format,
                    usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
                    view_formats: &[],
                })
            };
            let values = texture(wgpu::TextureFormat::R32Float, "heatmap values");
            let mask = texture(wgpu::TextureFormat::R8Unorm, "heatmap selection");
            let uniforms = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("heatmap uniforms"),
                size: std::mem::size_of::<HeatmapUniforms>() as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("heatmap"),
                layout: &self.bind_group_layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: uniforms.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: wgpu::BindingResource::TextureView(
                            &values.create_view(&Default::default()),
                        ),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: wgpu::BindingResource::TextureView(
                            &mask.create_view(&Default::default()),
                        ),
                    },
                ],
            });
            self.instances.insert(
                id,
                Instance {
                    dims,
                    version: 0,
                    uniforms,
                    values,
                    mask,
                    bind_group,
                },
            );
        }
        self.instances.get_mut(&id)
    }
}

struct HeatmapCallback {
    id: egui::Id,
    values: Arc<Vec<f32>>,
    version: u64,
    mask: Vec<u8>,
    dims: (u32, u32),
    rect: Rect,
    uniforms: HeatmapUniforms,
}

impl egui_wgpu::CallbackTrait for HeatmapCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        screen: &egui_wgpu::ScreenDescriptor,
        _encoder: &mut wgpu::CommandEncoder,
        resources: &mut egui_wgpu::CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        let Some(renderer) = resources.get_mut::<HeatmapRenderer>() else {
            return Vec::new();
        };
        if self.dims.0 == 0 || self.dims.1 == 0 {
            return Vec::new();
        }
        let Some(inst) = renderer.instance(device, self.id, self.dims) else {
            return Vec::new();
        };
        let (w, h) = self.dims;
        let extent = wgpu::Extent3d {
            width: w,
            height: h,
            depth_or_array_layers: 1,
        };
        if inst.version != self.version {
            queue.write_texture(
                inst.values.as_image_copy(),
                bytemuck::cast_slice(self.values.as_slice()),
                wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(w * 4),
                    rows_per_image: Some(h),
                },
                extent,
            );
            inst.version = self.version;
        }
        queue.write_texture(
            inst.mask.as_image_copy(),
            &self.mask,
            wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(w),
                rows_per_image: Some(h),
            },
            extent,
        );
        let ppp = screen.pixels_per_point;
        let mut u = self.uniforms;
        u.origin_px = [
            (self.rect.min.x * ppp).round(),
            (self.rect.min.y * ppp).round(),
        ];
        queue.write_buffer(&inst.uniforms, 0, bytemuck::bytes_of(&u));
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        pass: &mut wgpu::RenderPass<'static>,
        resources: &egui_wgpu::CallbackResources,
    ) {
        let Some(renderer) = resources.get::<HeatmapRenderer>() else {
            return;
        };
        let Some(inst) = renderer.instances.get(&self.id) else {
            return;
        };
        pass.set_pipeline(&renderer.pipeline);
        pass.set_bind_group(0, &inst.bind_group, &[]);
        pass.draw(0..4, 0..1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_layout() -> HeatmapLayout {
        let m = Matrix::new(3, 8, vec![0.0; 24]);
        layout(
            Rect::from_min_size(pos2(10.3, 20.0), vec2(400.0, 200.0)),
            &m,
            &HeatmapView::default(),
            1.5,
            48.0,
            vec2(LEFT_AXIS_PT, TOP_AXIS_PT),
        )
    }

    #[test]
    fn cells_are_whole_device_pixels() {
        let l = sample_layout();
        let px = l.cell * l.pixels_per_point;
        assert_eq!(px, vec2(px.x.round(), px.y.round()));
        let origin = l.rect.min.to_vec2() * l.pixels_per_point;
        assert!(
            (origin.x - origin.x.round()).abs() < 1e-3
                && (origin.y - origin.y.round()).abs() < 1e-3
        );
        assert_eq!(l.visible, (8, 3));
    }

    #[test]
    fn hit_testing_round_trips() {
        let l = sample_layout();
        for r in 0..3 {
            for c in 0..8 {
                assert_eq!(l.cell_at(l.cell_center(r, c).unwrap()), Some((r, c)));
            }
        }
        assert_eq!(l.cell_at(l.rect.max + vec2(1.0, 1.0)), None);
    }

    #[test]
    fn zoom_and_pan_show_a_window() {
        let m = Matrix::new(48, 128, vec![0.0; 48 * 128]);
        let outer = Rect::from_min_size(Pos2::ZERO, vec2(900.0, 500.0));
        let mut view = HeatmapView {
            zoom: 4.0,
            pan: [100.0, 40.0],
        };
        let l = layout(outer, &m, &view, 1.0, 48.0, vec2(LEFT_AXIS_PT, TOP_AXIS_PT));
        clamp_pan(&mut view, &l);
        let l = layout(outer, &m, &view, 1.0, 48.0, vec2(LEFT_AXIS_PT, TOP_AXIS_PT));
        assert!(l.visible.0 < 128 && l.visible.1 < 48);
        assert_eq!(l.first.0 + l.visible.0, 128, "panned to the right edge");
        assert_eq!(l.first.1 + l.visible.1, 48);
        // Fit: every cell of a 48 × 128 grid is visible and at least 6 px wide.
        let fit = layout(
            outer,
            &m,
            &HeatmapView::default(),
            1.0,
            48.0,
            vec2(LEFT_AXIS_PT, TOP_AXIS_PT),
        );
        assert_eq!(fit.visible, (128, 48));
        assert!(fit.cell.x >= 6.0 && fit.cell.y >= 6.0);
    }

    #[test]
    fn cell_range_spans_corners() {
        let r = CellRange::spanning((2, 5), (0, 3));
        assert_eq!(r.rows, (0, 2));
        assert_eq!(r.cols, (3, 5));
        assert_eq!(r.cells().count(), 9);
    }
}
