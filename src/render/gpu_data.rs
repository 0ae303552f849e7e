//! Data the heatmap shader reads, laid out as WGSL expects.

/// Uniforms of `shaders/heatmap.wgsl`. Keep in sync with `struct Uniforms` there
/// (64 bytes: eight 8-byte pairs; `tests/shader_validation.rs` checks the size).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct HeatmapUniforms {
    /// Top-left corner of the drawn rect, physical pixels.
    pub origin_px: [f32; 2],
    /// One cell, physical pixels (whole numbers).
    pub cell_px: [f32; 2],
    /// (col, row) of the top-left visible cell.
    pub first_cell: [i32; 2],
    /// (cols, rows) of the matrix.
    pub dims: [i32; 2],
    /// (col, row) of the hovered cell, or (-1, -1).
    pub hover: [i32; 2],
    /// Values at the ends of the colour map.
    pub range: [f32; 2],
    /// [`super::ColorScale::as_u32`].
    pub scale: u32,
    /// [`super::ColorMap::as_u32`].
    pub colormap: u32,
    /// 1 draws 1 px grid lines.
    pub grid: u32,
    pub _pad: u32,
}

/// Size the shader's `Uniforms` struct has.
pub const UNIFORMS_SIZE: usize = 64;

const _: () = assert!(std::mem::size_of::<HeatmapUniforms>() == UNIFORMS_SIZE);
