//! [`SwiGlu`] MLPs (gated, with a SiLU or tanh-GELU gate [`Activation`]): the routed experts,
//! dense feed-forward layers and shared experts.

use crate::model::weights::WeightSource;
use candle_core::Tensor;

use super::linear::Linear;
use crate::model::error::Result;
use crate::model::weight::Weight;

/// The nonlinearity on a gated MLP's gate projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// `x·σ(x)` (SwiGLU; HF `silu`).
    #[default]
    Silu,
    /// GELU with the tanh approximation (GeGLU; HF `gelu_pytorch_tanh`, Gemma).
    GeluTanh,
}

impl Activation {
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Silu => candle_nn::ops::silu(x)?,
            Activation::GeluTanh => x.gelu()?,
        })
    }
}

/// A gated MLP: `down(act(gate(x)) * up(x))`, SwiGLU when `act` is SiLU.
#[derive(Debug, Clone)]
pub struct SwiGlu {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    /// Module names of gate, up and down in the checkpoint (`gate_proj`… or Mixtral's `w1`…).
    pub names: [&'static str; 3],
    pub act: Activation,
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
            act: Activation::Silu,
        })
    }

    /// The three projections with their module names.
    pub fn linears_mut(&mut self) -> [(&'static str, &mut Linear); 3] {
        let [g, u, d] = self.names;
        [(g, &mut self.gate), (u, &mut self.up), (d, &mut self.down)]
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.act.apply(&self.gate.forward(x)?)?;
        self.down.forward(&(g * self.up.forward(x)?)?)
    }

    /// The gate, up and down weights when the expert is exactly `down(silu(gate·x) * up·x)`
    /// with plain projections (no bias, no LoRA update), for the kernels that read them directly
    /// (which compute SiLU only: other activations run on tensor ops).
    pub fn plain_weights(&self) -> Option<[&Weight; 3]> {
        if self.act != Activation::Silu {
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
