//! Heatmap renderer: draws a matrix of values with a colour map, a hover cell and a selection
//! overlay, through an `egui_wgpu` paint callback running `shaders/heatmap.wgsl` (values in an
//! R32Float texture, read with `textureLoad`; no storage buffers, so it also runs on GL).
//! Without a wgpu render state it falls back to the egui painter.
//!
//! Knows nothing about models: rows, columns and values only. Must not import `model`,
//! `worker` or `gui`.
//!
//! - [`matrix`]: the values ([`Matrix`]) and rectangles of cells ([`CellRange`]);
//! - [`layout`]: zoom / pan ([`HeatmapView`]), cells snapped to device pixels and hit-testing
//!   ([`HeatmapLayout`]);
//! - [`heatmap`]: the widget ([`Heatmap`]): input, axes, and which painter draws the cells;
//! - [`wgpu_callback`]: the wgpu pipeline and paint callback ([`HeatmapRenderer`]);
//! - [`painter`]: the egui-painter fallback;
//! - [`legend`]: the colour legend;
//! - [`colormap`]: colour maps and scales (CPU mirrors of the shader);
//! - [`gpu_data`]: the `#[repr(C)]` uniforms mirrored in WGSL.

pub mod colormap;
pub mod gpu_data;
pub mod heatmap;
pub mod layout;
pub mod legend;
pub mod matrix;
pub mod painter;
pub mod wgpu_callback;

pub use colormap::{ColorMap, ColorScale, HeatmapStyle};
pub use heatmap::{Heatmap, HeatmapResponse};
pub use layout::{HeatmapLayout, HeatmapView};
pub use legend::legend_ui;
pub use matrix::{CellRange, Matrix};
pub use wgpu_callback::{HEATMAP_WGSL, HeatmapRenderer};
