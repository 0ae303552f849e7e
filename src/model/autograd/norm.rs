//! RMSNorm as training ops: [`FrozenRmsNorm`] for a frozen weight (gradient for the input only)
//! and [`rms_norm`] with a trainable weight. Both backward passes are the kernels'
//! [`rms_rows_backward`].

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, bail};

use super::storage::{f32_slice, f32s, host_f32};
use crate::model::kernels::gemm::F32Data;
use crate::model::kernels::norm::{rms_norm_rows, rms_rows_backward};

/// A frozen RMSNorm weight and its epsilon.
#[derive(Debug, Clone)]
pub(crate) struct NormWeight {
    pub(crate) weight: Tensor,
    pub(crate) eps: f64,
}

/// [`RmsNorm::forward`](crate::model::layers::RmsNorm::forward) with a frozen weight while training on the CPU (f32): one pass over
/// the rows forward, one back for `∂L/∂x` (the weight gets none), where the composite ops
/// take about twenty elementwise passes.
pub struct FrozenRmsNorm(pub(crate) NormWeight);

impl candle_core::CustomOp1 for FrozenRmsNorm {
    fn name(&self) -> &'static str {
        "frozen-rms-norm"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let xs = f32_slice(storage, layout)?;
        let Some(w) = F32Data::of(&self.0.weight) else {
            candle_core::bail!("frozen-rms-norm: the weight must be f32 on the CPU")
        };
        let out = rms_norm_rows(xs, w.slice(), self.0.eps as f32, false, &[]);
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (xc, gc) = (x.detach().contiguous()?, grad.detach().contiguous()?);
        let (Some(xd), Some(gd), Some(w)) = (
            F32Data::of(&xc),
            F32Data::of(&gc),
            F32Data::of(&self.0.weight),
        ) else {
            candle_core::bail!("frozen-rms-norm: backward takes f32 CPU tensors")
        };
        let dx = rms_norm_rows(xd.slice(), w.slice(), self.0.eps as f32, true, gd.slice());
        drop((xd, gd, w));
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

struct RmsNormOp {
    eps: f32,
}

impl RmsNormOp {
    fn inv_rms(&self, row: &[f32]) -> f32 {
        let ms = row.iter().map(|x| x * x).sum::<f32>() / row.len() as f32;
        1.0 / (ms + self.eps).sqrt()
    }
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, self.name())?;
        let w = f32s(s2, l2, self.name())?;
        let h = w.len();
        if h == 0 || x.len() % h != 0 || l1.dims().last() != Some(&h) {
            bail!(
                "{}: weight of {h} does not match the input {:?}",
                self.name(),
                l1.dims()
            );
        }
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks_exact(h) {
            let r = self.inv_rms(row);
            out.extend(row.iter().zip(w).map(|(&xi, &wi)| xi * r * wi));
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let xs = host_f32(x)?;
        let ws = host_f32(w)?;
        let gs = host_f32(grad)?;
        let h = ws.len();
        let mut dx = gs;
        let mut dw = vec![0f32; h];
        rms_rows_backward(&xs, &mut dx, &ws, self.eps, Some(&mut dw));
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
        ))
    }
}

/// HF RMSNorm over the last axis: `w · x / sqrt(mean(x²) + eps)` (f32), with gradients for both
/// `x` and a trainable `w` (the demo model trains its norms).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, RmsNormOp { eps: eps as f32 })
}
