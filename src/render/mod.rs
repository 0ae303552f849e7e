//! Heatmap renderer: draws a matrix of values with a colour map, a hover cell and a selection
//! overlay, through an `egui_wgpu` paint callback running `shaders/heatmap.wgsl` (values in an
//! R32Float texture, read with `textureLoad`; no storage buffers, so it also runs on GL).
//! Without a wgpu render state it falls back to the egui painter.
//!
//! Knows nothing about models: rows, columns and values only. Must not import `model`,
//! `worker` or `gui`.
//!
//! - [`colormap`]: colour maps and scales (CPU mirrors of the shader);
//! - [`gpu_data`]: the `#[repr(C)]` uniforms mirrored in WGSL;
//! - [`heatmap`]: the widget (layout, hit testing, zoom / pan, input) and the wgpu resources.

pub mod colormap;
pub mod gpu_data;
pub mod heatmap;

pub use colormap::{ColorMap, ColorScale, HeatmapStyle};
pub use heatmap::{
    CellRange, Heatmap, HeatmapLayout, HeatmapRenderer, HeatmapResponse, HeatmapView, Matrix,
};

/// The heatmap shader's source.
pub const HEATMAP_WGSL: &str = include_str!("../../shaders/heatmap.wgsl");
