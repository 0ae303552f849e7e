// Heatmap: a matrix of values drawn as whole-pixel cells with a colour map, a hover outline and a
// selection overlay. Values come from an R32Float texture read with textureLoad (no sampler, no
// storage buffers: WebGL2 / GL downlevel limits). The selection is an R8Unorm mask texture.
//
// Keep `Uniforms` in sync with `HeatmapUniforms` in src/render/gpu_data.rs, and the colour maps
// and scales with their CPU mirrors in src/render/colormap.rs.

struct Uniforms {
    // Top-left corner of the drawn rect, physical pixels.
    origin_px: vec2<f32>,
    // Size of one cell, physical pixels (whole numbers).
    cell_px: vec2<f32>,
    // (col, row) of the cell at the top-left corner (pan).
    first_cell: vec2<i32>,
    // (cols, rows) of the matrix.
    dims: vec2<i32>,
    // (col, row) of the hovered cell, or (-1, -1).
    hover: vec2<i32>,
    // Values mapped to the ends of the colour map.
    range: vec2<f32>,
    // 0 = linear, 1 = log.
    scale: u32,
    // 0 = viridis, 1 = diverging (blue - grey - red).
    colormap: u32,
    // 1 = draw 1 px grid lines between cells.
    grid: u32,
    _pad: u32,
};

@group(0) @binding(0) var<uniform> u: Uniforms;
@group(0) @binding(1) var values: texture_2d<f32>;
@group(0) @binding(2) var selected: texture_2d<f32>;

const ERROR_RGBA: vec4<f32> = vec4<f32>(1.0, 0.0, 1.0, 1.0);
const BACKGROUND: vec4<f32> = vec4<f32>(0.11, 0.11, 0.11, 1.0);
const LOG_SPAN: f32 = 999.0;

struct VertexOut {
    @builtin(position) position: vec4<f32>,
};

@vertex
fn vs_main(@builtin(vertex_index) vi: u32) -> VertexOut {
    // Triangle strip over the whole viewport (egui_wgpu sets it to the callback rect).
    let x = f32(vi & 1u) * 2.0 - 1.0;
    let y = f32((vi >> 1u) & 1u) * 2.0 - 1.0;
    var out: VertexOut;
    out.position = vec4<f32>(x, y, 0.0, 1.0);
    return out;
}

// Polynomial fit of matplotlib's viridis (Mattias Kronqvist / shadertoy WlfXRN), gamma space.
fn viridis(t_in: f32) -> vec3<f32> {
    let t = clamp(t_in, 0.0, 1.0);
    let c0 = vec3<f32>(0.2777273272234177, 0.005407344544966578, 0.3340998053353061);
    let c1 = vec3<f32>(0.1050930431085774, 1.404613529898575, 1.384590162594685);
    let c2 = vec3<f32>(-0.3308618287255563, 0.214847559468213, 0.09509516302823659);
    let c3 = vec3<f32>(-4.634230498983486, -5.799100973351585, -19.33244095627987);
    let c4 = vec3<f32>(6.228269936347081, 14.17993336680509, 56.69055260068105);
    let c5 = vec3<f32>(4.776384997670288, -13.74514537774601, -65.35303263337234);
    let c6 = vec3<f32>(-5.435455855934631, 4.645852612178535, 26.3124352495832);
    return clamp(c0 + t * (c1 + t * (c2 + t * (c3 + t * (c4 + t * (c5 + t * c6))))), vec3<f32>(0.0), vec3<f32>(1.0));
}

// Blue (low) - light grey (middle) - red (high), for signed values around 0.
fn diverging(t_in: f32) -> vec3<f32> {
    let t = clamp(t_in, 0.0, 1.0);
    let lo = vec3<f32>(0.23, 0.30, 0.75);
    let mid = vec3<f32>(0.87, 0.87, 0.87);
    let hi = vec3<f32>(0.71, 0.02, 0.15);
    if (t < 0.5) {
        return mix(lo, mid, t * 2.0);
    }
    return mix(mid, hi, t * 2.0 - 1.0);
}

// Value -> position on the colour map in [0, 1].
fn normalise(v: f32) -> f32 {
    let span = max(u.range.y - u.range.x, 1e-30);
    let x = clamp((v - u.range.x) / span, 0.0, 1.0);
    if (u.scale == 0u) {
        return x;
    }
    if (u.colormap == 1u) {
        // Symmetric log around the middle.
        let m = x * 2.0 - 1.0;
        let l = log(1.0 + LOG_SPAN * abs(m)) / log(1.0 + LOG_SPAN);
        return 0.5 + 0.5 * sign(m) * l;
    }
    return log(1.0 + LOG_SPAN * x) / log(1.0 + LOG_SPAN);
}

@fragment
fn fs_main(in: VertexOut) -> @location(0) vec4<f32> {
    let local = in.position.xy - u.origin_px;
    let cell_f = floor(local / u.cell_px);
    let cell = vec2<i32>(cell_f) + u.first_cell;
    if (cell.x < 0 || cell.y < 0 || cell.x >= u.dims.x || cell.y >= u.dims.y) {
        return BACKGROUND;
    }
    let v = textureLoad(values, cell, 0).r;
    if (v != v) {
        return ERROR_RGBA;
    }
    let t = normalise(v);
    var rgb: vec3<f32>;
    if (u.colormap == 1u) {
        rgb = diverging(t);
    } else {
        rgb = viridis(t);
    }
    // Pixel position inside the cell, from the top-left corner.
    let inside = local - cell_f * u.cell_px;
    let from_far = u.cell_px - inside;
    if (u.grid == 1u && (inside.x < 1.0 || inside.y < 1.0)) {
        rgb = rgb * 0.55;
    }
    let edge = min(min(inside.x, inside.y), min(from_far.x, from_far.y));
    let sel = textureLoad(selected, cell, 0).r;
    let border = max(1.0, floor(min(u.cell_px.x, u.cell_px.y) / 5.0));
    if (sel > 0.5) {
        if (edge < border) {
            rgb = vec3<f32>(1.0, 0.25, 0.2);
        } else {
            rgb = mix(rgb, vec3<f32>(1.0, 1.0, 1.0), 0.15);
        }
    }
    if (cell.x == u.hover.x && cell.y == u.hover.y && edge < border) {
        rgb = vec3<f32>(1.0, 1.0, 1.0);
    }
    return vec4<f32>(rgb, 1.0);
}
