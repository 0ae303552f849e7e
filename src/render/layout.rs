//! Where a heatmap's cells go: [`HeatmapView`] (zoom and pan, persisted), [`HeatmapLayout`]
//! (cells snapped to whole device pixels, hit-testing), the room the axes take, and the layout
//! and pan clamping the widget computes each frame.

use egui::{Pos2, Rect, Vec2, pos2, vec2};
use serde::{Deserialize, Serialize};

use crate::render::matrix::Matrix;

/// Room for the row axis (indices), points.
pub(super) const LEFT_AXIS_PT: f32 = 34.0;
/// Row labels (and named column labels, drawn upright) longer than this are clipped.
pub(super) const MAX_LEFT_AXIS_PT: f32 = 110.0;
/// Axis label size.
pub(super) const AXIS_FONT_PT: f32 = 10.0;
/// Room for the column axis (indices), points.
pub(super) const TOP_AXIS_PT: f32 = 14.0;

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

/// Cell size and visible window for `outer` (axes excluded), snapped to device pixels.
pub(super) fn layout(
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

pub(super) fn clamp_pan(view: &mut HeatmapView, l: &HeatmapLayout) {
    let max_col = l.dims.0.saturating_sub(l.visible.0) as f32;
    let max_row = l.dims.1.saturating_sub(l.visible.1) as f32;
    view.pan[0] = view.pan[0].clamp(0.0, max_col);
    view.pan[1] = view.pan[1].clamp(0.0, max_row);
}

#[cfg(test)]
mod tests {
    use egui::{Pos2, Rect, pos2, vec2};

    use super::*;
    use crate::render::matrix::Matrix;

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
}
