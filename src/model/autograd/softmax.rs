//! Softmaxes with gradients for training: [`causal_softmax`] over attention scores (one fused
//! op) and [`softmax_detached_max`] over router logits.

use candle_core::{CpuStorage, CustomOp1, D, Layout, Shape, Tensor, bail};

use super::storage::{f32s, host_f32};

struct CausalSoftmax;

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, self.name())?;
        let dims = l.dims();
        let t = dims.last().copied().unwrap_or(0);
        if dims.len() < 2 || dims[dims.len() - 2] != t || t == 0 {
            bail!("{}: expected [.., t, t] scores, got {dims:?}", self.name());
        }
        let mut out = vec![0f32; x.len()];
        for (r, (row, o)) in x.chunks_exact(t).zip(out.chunks_exact_mut(t)).enumerate() {
            let q = r % t;
            let live = &row[..=q];
            let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for (oj, &xj) in o[..=q].iter_mut().zip(live) {
                *oj = (xj - max).exp();
                sum += *oj;
            }
            o[..=q].iter_mut().for_each(|v| *v /= sum);
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let y = host_f32(res)?;
        let g = host_f32(grad)?;
        let t = res.dims().last().copied().unwrap_or(1);
        let mut dx = vec![0f32; y.len()];
        for (r, ((yr, gr), o)) in y
            .chunks_exact(t)
            .zip(g.chunks_exact(t))
            .zip(dx.chunks_exact_mut(t))
            .enumerate()
        {
            let q = r % t;
            let dot: f32 = yr[..=q].iter().zip(&gr[..=q]).map(|(a, b)| a * b).sum();
            for j in 0..=q {
                o[j] = yr[j] * (gr[j] - dot);
            }
        }
        Ok(Some(Tensor::from_vec(dx, res.shape(), res.device())?))
    }
}

/// Causal softmax of attention scores `[.., t, t]` (query rows, key columns): keys after the
/// query get 0, the rest a softmax.
pub fn causal_softmax(scores: &Tensor) -> candle_core::Result<Tensor> {
    scores.contiguous()?.apply_op1(CausalSoftmax)
}

/// Softmax over the last axis with the row maximum held constant (same value, cheaper gradient).
pub fn softmax_detached_max(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}
