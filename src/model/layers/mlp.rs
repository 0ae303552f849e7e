//! [`SwiGlu`] MLPs: the routed experts, dense feed-forward layers and shared experts, with
//! the gating they apply ([`GluActivation`]: plain SwiGLU, or gpt-oss's clamped variant).

use crate::model::weights::WeightSource;
use candle_core::Tensor;

use super::linear::Linear;
use crate::model::error::Result;
use crate::model::kernels::experts::KernelExpert;
use crate::model::weight::Weight;

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

/// A gated MLP: `down(act(gate(x), up(x)))`, by default SwiGLU `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct SwiGlu {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    /// Module names of gate, up and down in the checkpoint (`gate_proj`… or Mixtral's `w1`…).
    pub names: [&'static str; 3],
    pub act: GluActivation,
}

impl SwiGlu {
    /// Loads with HF's usual names `gate_proj` / `up_proj` / `down_proj`.
    pub fn load(vb: &WeightSource, hidden: usize, inter: usize) -> Result<Self> {
        Self::load_named(vb, hidden, inter, ["gate_proj", "up_proj", "down_proj"])
    }

    /// Loads with explicit names for gate, up and down (Mixtral: `w1`, `w3`, `w2`).
    pub fn load_named(
        vb: &WeightSource,
        hidden: usize,
        inter: usize,
        names: [&'static str; 3],
    ) -> Result<Self> {
        Ok(Self {
            gate: Linear::load(&vb.pp(names[0]), hidden, inter, false)?,
            up: Linear::load(&vb.pp(names[1]), hidden, inter, false)?,
            down: Linear::load(&vb.pp(names[2]), inter, hidden, false)?,
            names,
            act: GluActivation::Silu,
        })
    }

    /// The three projections with their module names.
    pub fn linears_mut(&mut self) -> [(&'static str, &mut Linear); 3] {
        let [g, u, d] = self.names;
        [(g, &mut self.gate), (u, &mut self.up), (d, &mut self.down)]
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self
            .act
            .forward(&self.gate.forward(x)?, &self.up.forward(x)?)?;
        self.down.forward(&h)
    }

    /// What the inference kernel reads of this MLP — weights, biases, gating — when no
    /// projection has a LoRA update.
    pub(crate) fn kernel_expert(&self) -> Option<KernelExpert<'_>> {
        let parts = [&self.gate, &self.up, &self.down];
        if parts.iter().any(|l| l.lora.is_some()) {
            return None;
        }
        Some(KernelExpert {
            weights: parts.map(|l| &l.weight),
            biases: parts.map(|l| l.bias.as_ref()),
            act: self.act,
        })
    }

    /// The gate, up and down weights when the expert is exactly `down(silu(gate·x) * up·x)`
    /// with plain projections (no bias, no LoRA update), for the kernels that read them directly
    /// (which compute SiLU only: other activations run on tensor ops).
    pub fn plain_weights(&self) -> Option<[&Weight; 3]> {
        if self.act != GluActivation::Silu {
            return None;
        }
        Some([
            self.gate.plain_weight()?,
            self.up.plain_weight()?,
            self.down.plain_weight()?,
        ])
    }
}

/// A shared expert that runs on every token, optionally scaled by `sigmoid(gate·x)` (Qwen2-MoE).
#[derive(Debug, Clone)]
pub struct SharedExpert {
    pub mlp: SwiGlu,
    pub gate: Option<Linear>,
}
