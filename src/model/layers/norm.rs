//! [`RmsNorm`] as HF computes it.

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
