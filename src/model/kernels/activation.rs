//! [`GluActivation`]: how a gated MLP combines its gate and up projections (SwiGLU, tanh-GELU
//! GeGLU, gpt-oss's clamped swish), on host slices for the kernels and on tensors for the
//! tensor-op path.

use candle_core::Tensor;

use crate::model::error::Result;

/// How a gated MLP combines its gate and up projections before the down projection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GluActivation {
    /// `silu(g) · u`.
    Silu,
    /// `gelu_tanh(g) · u` (GeGLU; HF `gelu_pytorch_tanh`, Gemma).
    GeluTanh,
    /// gpt-oss (`GptOssExperts._apply_gate`): `g` clamped to at most `limit`, `u` to
    /// `[−limit, limit]`, then `(u + 1) · (g · σ(alpha · g))`.
    ClampedSwish { alpha: f32, limit: f32 },
}

impl GluActivation {
    /// `g[i] = act(g[i], u[i])` elementwise.
    pub fn apply_in_place(self, g: &mut [f32], u: &[f32]) {
        match self {
            GluActivation::Silu => {
                for (g, &u) in g.iter_mut().zip(u) {
                    *g = *g / (1.0 + (-*g).exp()) * u;
                }
            }
            GluActivation::GeluTanh => {
                for (g, &u) in g.iter_mut().zip(u) {
                    *g = gelu_tanh(*g) * u;
                }
            }
            GluActivation::ClampedSwish { alpha, limit } => {
                for (g, &u) in g.iter_mut().zip(u) {
                    *g = clamped_swish(*g, u, alpha, limit);
                }
            }
        }
    }

    /// The activation on tensors `g`, `u` (same shape).
    pub fn forward(self, g: &Tensor, u: &Tensor) -> Result<Tensor> {
        Ok(match self {
            GluActivation::Silu => (candle_nn::ops::silu(g)? * u)?,
            GluActivation::GeluTanh => (g.gelu()? * u)?,
            GluActivation::ClampedSwish { alpha, limit } => {
                let limit = f64::from(limit);
                let g = g.minimum(limit)?;
                let u = u.clamp(-limit, limit)?;
                let glu = (&g * candle_nn::ops::sigmoid(&(&g * f64::from(alpha))?)?)?;
                ((u + 1.0)? * glu)?
            }
        })
    }
}

/// GELU with the tanh approximation, as candle's `gelu` (and torch's `approximate="tanh"`).
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
}

/// gpt-oss's gating of one gate / up pair (see [`GluActivation::ClampedSwish`]).
fn clamped_swish(g: f32, u: f32, alpha: f32, limit: f32) -> f32 {
    let g = if g > limit { limit } else { g };
    let u = u.clamp(-limit, limit);
    let glu = g * (1.0 / (1.0 + (-(g * alpha)).exp()));
    (u + 1.0) * glu
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamped_swish_matches_hand_computed_values() {
        let act = GluActivation::ClampedSwish {
            alpha: 1.702,
            limit: 7.0,
        };
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        // Inside the limits: (u + 1) · g · σ(1.702 g).
        let (g, u) = (0.5f32, -0.25f32);
        let inside = 0.75 * (0.5 * sig(0.5 * 1.702));
        // g = 9 clamps to 7; u = 8 clamps to 7 and u = −9 to −7; g below −7 is not clamped.
        let hi = 8.0 * (7.0 * sig(7.0 * 1.702));
        let lo = -6.0 * (-9.0 * sig(-9.0 * 1.702));
        let mut gs = vec![g, 9.0, -9.0];
        act.apply_in_place(&mut gs, &[u, 8.0, -9.0]);
        assert_eq!(gs, vec![inside, hi, lo]);
        let t = |v: &[f32]| Tensor::new(v, &candle_core::Device::Cpu).unwrap();
        let y = act
            .forward(&t(&[g, 9.0, -9.0]), &t(&[u, 8.0, -9.0]))
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (a, b) in y.iter().zip([inside, hi, lo]) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
