//! [`RmsNorm`] as HF computes it, and the decoder's [`Norm`]: RMSNorm or LayerNorm (PhiMoE).

use crate::model::weights::WeightSource;
use candle_core::{D, DType, Tensor};

use super::path::Path;
use crate::model::autograd::FrozenRmsNorm;
use crate::model::autograd::norm::NormWeight;
use crate::model::error::Result;
use crate::model::kernels;

/// RMSNorm as in HF: `w · (x / sqrt(mean(x²) + eps))`, computed in f32.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn load(vb: &WeightSource, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.path(x)? {
            Path::Kernel(y) => Ok(y),
            Path::Frozen(op) => Ok(x.contiguous()?.apply_op1(op)?),
            Path::TensorOps => self.forward_tensor_ops(x),
        }
    }

    /// Where [`RmsNorm::forward`] runs: the direct kernel on an untracked f32 CPU input, one
    /// fused op while training on the CPU with a frozen weight, tensor ops otherwise.
    fn path(&self, x: &Tensor) -> Result<Path<FrozenRmsNorm>> {
        if let Some(y) = kernels::norm::rms_norm(&self.weight, self.eps, x)? {
            return Ok(Path::Kernel(y));
        }
        let f32_cpu = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu();
        let h = x.dims().last().copied().unwrap_or(0);
        let frozen = f32_cpu(&self.weight) && !self.weight.track_op();
        if x.track_op() && f32_cpu(x) && frozen && h > 0 && self.weight.dims() == [h] {
            return Ok(Path::Frozen(FrozenRmsNorm(self.frozen_weight())));
        }
        Ok(Path::TensorOps)
    }

    /// The weight and epsilon, for the frozen-part training ops.
    pub(crate) fn frozen_weight(&self) -> NormWeight {
        NormWeight {
            weight: self.weight.clone(),
            eps: self.eps,
        }
    }

    fn forward_tensor_ops(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = xf.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(normed.to_dtype(dtype)?.broadcast_mul(&self.weight)?)
    }
}

/// LayerNorm with weight and bias as `torch.nn.LayerNorm` computes it (in f32).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(vb: &WeightSource, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let centred = xf.broadcast_sub(&xf.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(normed
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?)
    }
}

/// Which norm a family's decoder uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    Rms,
    Layer,
}

impl NormKind {
    /// The norm of this kind at `vb` (`weight`, and `bias` for LayerNorm).
    pub fn load(self, vb: &WeightSource, dim: usize, eps: f64) -> Result<Norm> {
        Ok(match self {
            NormKind::Rms => RmsNorm::load(vb, dim, eps)?.into(),
            NormKind::Layer => LayerNorm::load(vb, dim, eps)?.into(),
        })
    }
}

/// A decoder norm: RMSNorm (most families) or LayerNorm with bias (PhiMoE).
#[derive(Debug, Clone)]
pub enum Norm {
    Rms(RmsNorm),
    Layer(LayerNorm),
}

impl From<RmsNorm> for Norm {
    fn from(n: RmsNorm) -> Self {
        Norm::Rms(n)
    }
}

impl From<LayerNorm> for Norm {
    fn from(n: LayerNorm) -> Self {
        Norm::Layer(n)
    }
}

impl Norm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Norm::Rms(n) => n.forward(x),
            Norm::Layer(n) => n.forward(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn layer_norm_centres_scales_and_shifts() -> Result<()> {
        // x = [1, 2, 3]: mean 2, variance 2/3; eps 0.
        let dev = Device::Cpu;
        let norm = LayerNorm {
            weight: Tensor::new(&[1.0f32, 2.0, 3.0], &dev)?,
            bias: Tensor::new(&[0.5f32, 0.0, -0.5], &dev)?,
            eps: 0.0,
        };
        let y: Vec<f32> = norm
            .forward(&Tensor::new(&[[1.0f32, 2.0, 3.0]], &dev)?)?
            .flatten_all()?
            .to_vec1()?;
        let s = (1.5f32).sqrt(); // 1 / sqrt(2/3)
        let want = [0.5 - s, 0.0, 3.0 * s - 0.5];
        for (g, w) in y.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{y:?} vs {want:?}");
        }
        Ok(())
    }
}
