//! CPU mirrors of the shader's colour maps and scales (`shaders/heatmap.wgsl`): used by the
//! legend, the painter fallback, tooltips and tests. Keep them in sync with the WGSL.

use egui::Color32;
use serde::{Deserialize, Serialize};

/// How values map onto the colour map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ColorScale {
    #[default]
    Linear,
    /// `log(1 + 999·x) / log(1000)` of the normalised value (symmetric for diverging maps), so
    /// zeros stay finite and small values get more of the map.
    Log,
}

impl ColorScale {
    pub fn as_u32(self) -> u32 {
        match self {
            ColorScale::Linear => 0,
            ColorScale::Log => 1,
        }
    }
}

/// Which colour map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ColorMap {
    /// Sequential (non-negative values).
    #[default]
    Viridis,
    /// Blue – grey – red around the middle of the range (signed values).
    Diverging,
}

impl ColorMap {
    pub fn as_u32(self) -> u32 {
        match self {
            ColorMap::Viridis => 0,
            ColorMap::Diverging => 1,
        }
    }
}

/// Colour map, scale and value range of a heatmap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeatmapStyle {
    pub colormap: ColorMap,
    pub scale: ColorScale,
    /// Values mapped to the two ends of the colour map.
    pub range: (f32, f32),
}

impl Default for HeatmapStyle {
    fn default() -> Self {
        Self {
            colormap: ColorMap::Viridis,
            scale: ColorScale::Linear,
            range: (0.0, 1.0),
        }
    }
}

/// Magenta for values the shader cannot show (NaN).
pub const ERROR_COLOR: Color32 = Color32::from_rgb(255, 0, 255);

const LOG_SPAN: f32 = 999.0;

impl HeatmapStyle {
    /// A style covering `values`: `[0, max]` for viridis, `[-m, m]` (m = max |v|) for diverging.
    pub fn fit(values: &[f32], colormap: ColorMap, scale: ColorScale) -> Self {
        let finite = values.iter().copied().filter(|v| v.is_finite());
        let range = match colormap {
            ColorMap::Viridis => {
                let (lo, hi) = finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
                    (a.min(v), b.max(v))
                });
                if !lo.is_finite() {
                    (0.0, 1.0)
                } else {
                    let lo = lo.min(0.0);
                    (lo, if hi > lo { hi } else { lo + 1.0 })
                }
            }
            ColorMap::Diverging => {
                let m = finite.fold(0.0f32, |a, v| a.max(v.abs()));
                let m = if m > 0.0 { m } else { 1.0 };
                (-m, m)
            }
        };
        Self {
            colormap,
            scale,
            range,
        }
    }

    /// Position of `v` on the colour map, in `[0, 1]` (mirror of `normalise` in the shader).
    pub fn normalise(&self, v: f32) -> f32 {
        let span = (self.range.1 - self.range.0).max(1e-30);
        let x = ((v - self.range.0) / span).clamp(0.0, 1.0);
        match (self.scale, self.colormap) {
            (ColorScale::Linear, _) => x,
            (ColorScale::Log, ColorMap::Diverging) => {
                let m = x * 2.0 - 1.0;
                let l = (1.0 + LOG_SPAN * m.abs()).ln() / (1.0 + LOG_SPAN).ln();
                0.5 + 0.5 * m.signum() * l
            }
            (ColorScale::Log, ColorMap::Viridis) => {
                (1.0 + LOG_SPAN * x).ln() / (1.0 + LOG_SPAN).ln()
            }
        }
    }

    /// The colour the shader gives `v` (before overlays).
    pub fn color(&self, v: f32) -> Color32 {
        if v.is_nan() {
            return ERROR_COLOR;
        }
        let t = self.normalise(v);
        let rgb = match self.colormap {
            ColorMap::Viridis => viridis(t),
            ColorMap::Diverging => diverging(t),
        };
        to_color(rgb)
    }

    /// The value at position `t ∈ [0, 1]` of the colour map (inverse of [`Self::normalise`]),
    /// for legend ticks.
    pub fn value_at(&self, t: f32) -> f32 {
        let t = t.clamp(0.0, 1.0);
        let x = match (self.scale, self.colormap) {
            (ColorScale::Linear, _) => t,
            (ColorScale::Log, ColorMap::Diverging) => {
                let m = t * 2.0 - 1.0;
                let a = ((1.0 + LOG_SPAN).powf(m.abs()) - 1.0) / LOG_SPAN;
                0.5 + 0.5 * m.signum() * a
            }
            (ColorScale::Log, ColorMap::Viridis) => ((1.0 + LOG_SPAN).powf(t) - 1.0) / LOG_SPAN,
        };
        self.range.0 + x * (self.range.1 - self.range.0)
    }
}

fn to_color(rgb: [f32; 3]) -> Color32 {
    let c = |x: f32| (x.clamp(0.0, 1.0) * 255.0).round() as u8;
    Color32::from_rgb(c(rgb[0]), c(rgb[1]), c(rgb[2]))
}

/// Viridis polynomial, gamma space (mirror of `viridis` in the shader).
pub fn viridis(t: f32) -> [f32; 3] {
    const C: [[f32; 3]; 7] = [
        [0.277_727_33, 0.005_407_344_5, 0.334_099_8],
        [0.105_093_04, 1.404_613_5, 1.384_590_2],
        [-0.330_861_83, 0.214_847_56, 0.095_095_16],
        [-4.634_230_6, -5.799_101, -19.332_441],
        [6.228_27, 14.179_933, 56.690_55],
        [4.776_385, -13.745_146, -65.353_03],
        [-5.435_456, 4.645_852_6, 26.312_435],
    ];
    let t = t.clamp(0.0, 1.0);
    let mut out = [0.0; 3];
    for (i, o) in out.iter_mut().enumerate() {
        let mut acc = C[6][i];
        for k in (0..6).rev() {
            acc = C[k][i] + t * acc;
        }
        *o = acc.clamp(0.0, 1.0);
    }
    out
}

/// Blue – grey – red (mirror of `diverging` in the shader).
pub fn diverging(t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0);
    let lo = [0.23, 0.30, 0.75];
    let mid = [0.87, 0.87, 0.87];
    let hi = [0.71, 0.02, 0.15];
    let mix = |a: [f32; 3], b: [f32; 3], s: f32| [0, 1, 2].map(|i| a[i] + (b[i] - a[i]) * s);
    if t < 0.5 {
        mix(lo, mid, t * 2.0)
    } else {
        mix(mid, hi, t * 2.0 - 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viridis_ends_match_matplotlib() {
        // matplotlib viridis(0) = #440154, viridis(1) = #fde725 (the fit is within a few units).
        let close = |a: Color32, b: Color32| {
            (a.r() as i32 - b.r() as i32).abs() <= 6
                && (a.g() as i32 - b.g() as i32).abs() <= 6
                && (a.b() as i32 - b.b() as i32).abs() <= 6
        };
        let s = HeatmapStyle::default();
        assert!(
            close(s.color(0.0), Color32::from_rgb(0x44, 0x01, 0x54)),
            "{:?}",
            s.color(0.0)
        );
        assert!(
            close(s.color(1.0), Color32::from_rgb(0xfd, 0xe7, 0x25)),
            "{:?}",
            s.color(1.0)
        );
    }

    #[test]
    fn log_scale_round_trips() {
        for colormap in [ColorMap::Viridis, ColorMap::Diverging] {
            let s = HeatmapStyle {
                colormap,
                scale: ColorScale::Log,
                range: (-2.0, 6.0),
            };
            for v in [-2.0, -1.0, 0.0, 0.5, 3.0, 6.0] {
                let back = s.value_at(s.normalise(v));
                assert!((back - v).abs() < 1e-3, "{colormap:?} {v} -> {back}");
            }
        }
    }

    #[test]
    fn fit_ranges() {
        let v = [0.5, 2.0, f32::NAN];
        assert_eq!(
            HeatmapStyle::fit(&v, ColorMap::Viridis, ColorScale::Linear).range,
            (0.0, 2.0)
        );
        let d = [-0.5, 0.25];
        assert_eq!(
            HeatmapStyle::fit(&d, ColorMap::Diverging, ColorScale::Linear).range,
            (-0.5, 0.5)
        );
        assert_eq!(
            HeatmapStyle::fit(&[], ColorMap::Viridis, ColorScale::Linear).range,
            (0.0, 1.0)
        );
    }

    #[test]
    fn nan_is_magenta() {
        assert_eq!(HeatmapStyle::default().color(f32::NAN), ERROR_COLOR);
    }
}
