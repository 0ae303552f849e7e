//! [`Matrix`]: a heatmap's values, row-major, with a version (the GPU texture is re-uploaded
//! only when it changes); [`CellRange`]: an inclusive rectangle of cells.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_range_spans_corners() {
        let r = CellRange::spanning((2, 5), (0, 3));
        assert_eq!(r.rows, (0, 2));
        assert_eq!(r.cols, (3, 5));
        assert_eq!(r.cells().count(), 9);
    }
}
