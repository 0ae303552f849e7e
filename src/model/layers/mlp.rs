//! [`SwiGlu`] MLPs: the routed experts, dense feed-forward layers and shared experts.

use crate::model::weights::WeightSource;
use candle_core::Tensor;

use super::linear::Linear;
use crate::model::error::Result;
use crate::model::weight::Weight;

/// A SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct SwiGlu {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    /// Module names of gate, up and down in the checkpoint (`gate_proj`… or Mixtral's `w1`…).
    pub names: [&'static str; 3],
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
        })
    }

    /// The three projections with their module names.
    pub fn linears_mut(&mut self) -> [(&'static str, &mut Linear); 3] {
        let [g, u, d] = self.names;
        [(g, &mut self.gate), (u, &mut self.up), (d, &mut self.down)]
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = candle_nn::ops::silu(&self.gate.forward(x)?)?;
        self.down.forward(&(g * self.up.forward(x)?)?)
    }

    /// The gate, up and down weights when the expert is exactly `down(silu(gate·x) * up·x)`
    /// with plain projections (no bias, no LoRA update), for the kernels that read them directly.
    pub fn plain_weights(&self) -> Option<[&Weight; 3]> {
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
