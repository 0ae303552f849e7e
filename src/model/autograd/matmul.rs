//! `x·Wᵀ` for a frozen weight while the input carries gradients.

use candle_core::{DType, Device, Tensor};

use crate::model::kernels::gemm::{F32Data, matmul_w, matmul_wt};

/// `x·Wᵀ` for a frozen `W` while `x` carries gradients (training adapters elsewhere in the
/// model). Candle's matmul backward also computes `∂L/∂W`, a full-size product for a weight
/// nobody trains; this op passes back `∂L/∂x = g·W` only. CPU, contiguous `[rows, in]` input;
/// f32 runs on the direct CPU kernels.
pub struct FrozenMatmul {
    /// `[out, in]`.
    pub(crate) weight: Tensor,
}

impl candle_core::CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage as S;
        let (rows, inp) = layout.shape().dims2()?;
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("frozen-matmul: the input must be contiguous")
        };
        let out = self.weight.dim(0)?;
        if let (S::F32(v), Some(w)) = (storage, F32Data::of(&self.weight)) {
            let y = matmul_wt(&v[a..b], w.slice(), (rows, inp, out));
            return Ok((S::F32(y), (rows, out).into()));
        }
        let cpu = Device::Cpu;
        let x = match storage {
            S::F32(v) => Tensor::from_slice(&v[a..b], (rows, inp), &cpu)?,
            S::F16(v) => Tensor::from_slice(&v[a..b], (rows, inp), &cpu)?,
            S::BF16(v) => Tensor::from_slice(&v[a..b], (rows, inp), &cpu)?,
            _ => candle_core::bail!("frozen-matmul: f32, f16 or bf16 only"),
        };
        let y = x.matmul(&self.weight.t()?)?.flatten_all()?;
        let storage = match y.dtype() {
            DType::F32 => S::F32(y.to_vec1()?),
            DType::F16 => S::F16(y.to_vec1()?),
            DType::BF16 => S::BF16(y.to_vec1()?),
            other => candle_core::bail!("frozen-matmul: unexpected {other:?}"),
        };
        Ok((storage, (rows, out).into()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let gc = grad.detach().contiguous()?;
        if let (Some(g), Some(w), Ok((rows, out))) =
            (F32Data::of(&gc), F32Data::of(&self.weight), gc.dims2())
        {
            let inp = self.weight.dim(1)?;
            let dx = matmul_w(g.slice(), w.slice(), (rows, out, inp));
            return Ok(Some(Tensor::from_vec(dx, (rows, inp), grad.device())?));
        }
        Ok(Some(grad.matmul(&self.weight)?))
    }
}
