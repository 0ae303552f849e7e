//! [`SwiGlu`] MLPs: the routed experts, dense feed-forward layers and shared experts, with
//! the gating they apply ([`GluActivation`]: plain SwiGLU, or gpt-oss's clamped variant).

use crate::model::weights::WeightSource;
use candle_core::Tensor;

use super::linear::Linear;
use crate::model::error::Result;
pub use crate::model::kernels::activation::GluActivation;
use crate::model::kernels::experts::KernelExpert;
use crate::model::weight::Weight;

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
