//! [`Linear`]: `y = x·Wᵀ (+ b)` with an optional unmerged LoRA update.
//!
//! Shapes are annotated as `[b, t, h]` = batch, tokens, hidden.

use candle_core::{DType, Tensor};

use super::path::Path;
use crate::model::autograd::FrozenMatmul;
use crate::model::error::{ModelError, Result};
use crate::model::kernels;
use crate::model::lora::LoraDelta;
use crate::model::weight::Weight;
use crate::model::weights::WeightSource;

/// `y = x·Wᵀ (+ b)`, weights as stored in the checkpoint (`[out, in]`; a tensor or a view of
/// the mapped checkpoint), plus an unmerged LoRA update while one is being trained.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<Tensor>,
    pub lora: Option<Box<LoraDelta>>,
}

impl Linear {
    pub fn new(weight: impl Into<Weight>, bias: Option<Tensor>) -> Self {
        Self {
            weight: weight.into(),
            bias,
            lora: None,
        }
    }

    pub fn load(vb: &WeightSource, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = vb.weight((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self::new(weight, bias))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.path(x)? {
            Path::Kernel(y) => Ok(y),
            Path::Frozen(op) => self.forward_rows(x, |x2| Ok(x2.apply_op1(op)?)),
            Path::TensorOps => self.forward_rows(x, |x2| {
                Ok(x2.matmul(&self.weight.tensor_as(x2.dtype())?.t()?)?)
            }),
        }
    }

    /// Where [`Linear::forward`] runs: the direct kernel for a plain layer (no bias, no LoRA
    /// update) on enough untracked f32 CPU rows — any number of rows, plus the bias, for
    /// half-precision or mapped weights, which have no other fast path — the frozen matmul
    /// while training on the CPU with a frozen weight, tensor ops otherwise.
    fn path(&self, x: &Tensor) -> Result<Path<FrozenMatmul>> {
        if let Some(w) = self.plain_weight()
            && let Some(y) = kernels::gemm::linear(w, x)?
        {
            return Ok(Path::Kernel(y));
        }
        let read_in_place = self.weight.is_mapped() || self.weight.dtype() != DType::F32;
        if self.lora.is_none()
            && read_in_place
            && let Some(y) = kernels::gemm::linear(&self.weight, x)?
        {
            let y = match &self.bias {
                Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?)?,
                None => y,
            };
            return Ok(Path::Kernel(y));
        }
        if x.track_op()
            && x.device().is_cpu()
            && let Some(w) = self.weight.as_tensor().filter(|w| !w.track_op())
        {
            return Ok(Path::Frozen(FrozenMatmul { weight: w.clone() }));
        }
        Ok(Path::TensorOps)
    }

    /// `x` as rows `[rows, in]` through `matmul` (`x·Wᵀ`), plus bias and LoRA update, in `x`'s
    /// shape.
    fn forward_rows(
        &self,
        x: &Tensor,
        matmul: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = *dims
            .last()
            .ok_or_else(|| ModelError::msg("linear on a scalar"))?;
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, in_dim))?;
        let mut y = matmul(&x2)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some(lora) = &self.lora {
            y = (y + lora.forward(&x2)?)?;
        }
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-empty") = self.out_dim();
        Ok(y.reshape(out_dims)?)
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Folds `delta` into the weight (`W + (α/r)·B·A`, computed in f32, stored in the weight's
    /// dtype, f32 for an MXFP4 one) and removes any unmerged delta.
    pub fn merge_lora(&mut self, delta: &LoraDelta) -> Result<()> {
        let dtype = self.weight.dense_dtype();
        let merged = (self.weight.tensor_as(DType::F32)? + delta.delta_weight()?)?;
        self.weight = Weight::Tensor(merged.to_dtype(dtype)?);
        self.lora = None;
        Ok(())
    }

    /// The weight when [`Linear::forward`] is exactly `x·Wᵀ` (no bias, no LoRA update), for
    /// kernels that read the weight directly. `self` is destructured without `..` so that a new
    /// field is a compile error here until this says whether it keeps the layer plain.
    pub fn plain_weight(&self) -> Option<&Weight> {
        let Linear { weight, bias, lora } = self;
        (bias.is_none() && lora.is_none()).then_some(weight)
    }
}
