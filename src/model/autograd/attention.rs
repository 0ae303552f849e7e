//! [`FrozenAttention`]: a whole attention block with frozen projections as one training op.

use candle_core::Tensor;

use super::norm::NormWeight;
use super::storage::f32_slice;
use crate::model::kernels::attention::{AttnData, AttnShape, attn_backward, attn_forward};
use crate::model::kernels::gemm::F32Data;

/// [`Attention::forward`](crate::model::layers::Attention::forward) as one op while training on the CPU (f32) with all four projections
/// frozen: the forward pass runs the direct CPU kernels, and the backward pass gives `∂L/∂x`
/// only (recomputing the activations), where the composite tensor ops would cost some sixty
/// small ops and their backward passes per layer. Covers no KV cache, positions from 0, no
/// clamping, and q / k norms over the whole projection or none.
pub struct FrozenAttention {
    /// `[out, in]` each.
    pub(crate) q: Tensor,
    pub(crate) k: Tensor,
    pub(crate) v: Tensor,
    pub(crate) o: Tensor,
    pub(crate) q_norm: Option<NormWeight>,
    pub(crate) k_norm: Option<NormWeight>,
    /// Rotary tables for positions `0..t`, `[t, head_dim / 2]`.
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
    pub(crate) interleaved: bool,
    /// `[b, 1, t, t]`.
    pub(crate) mask: Option<Tensor>,
    pub(crate) nh: usize,
    pub(crate) nkv: usize,
    pub(crate) d: usize,
}

impl FrozenAttention {
    /// Runs `f` on the op's data for an input of shape `[b, t, hidden]`.
    fn with_data<R>(
        &self,
        dims: &[usize],
        f: impl FnOnce(&AttnData<'_>, &AttnShape) -> R,
    ) -> candle_core::Result<R> {
        let &[b, t, hidden] = dims else {
            candle_core::bail!("frozen-attention: expected [b, t, hidden], got {dims:?}")
        };
        fn lock(t: &Tensor) -> candle_core::Result<F32Data<'_>> {
            F32Data::of(t)
                .ok_or_else(|| candle_core::Error::Msg("frozen-attention: f32 CPU data".into()))
        }
        let (q, k, v, o) = (
            lock(&self.q)?,
            lock(&self.k)?,
            lock(&self.v)?,
            lock(&self.o)?,
        );
        let (cos, sin) = (lock(&self.cos)?, lock(&self.sin)?);
        let qn = self.q_norm.as_ref().map(|n| lock(&n.weight)).transpose()?;
        let kn = self.k_norm.as_ref().map(|n| lock(&n.weight)).transpose()?;
        let mask = self.mask.as_ref().map(lock).transpose()?;
        let eps = |n: &Option<NormWeight>| n.as_ref().map_or(0.0, |n| n.eps as f32);
        let data = AttnData {
            q: q.slice(),
            k: k.slice(),
            v: v.slice(),
            o: o.slice(),
            q_norm: qn.as_ref().map(|w| (w.slice(), eps(&self.q_norm))),
            k_norm: kn.as_ref().map(|w| (w.slice(), eps(&self.k_norm))),
            cos: cos.slice(),
            sin: sin.slice(),
            mask: mask.as_ref().map(|m| m.slice()),
        };
        let shape = AttnShape {
            b,
            t,
            hidden,
            nh: self.nh,
            nkv: self.nkv,
            d: self.d,
            scale: (1.0 / (self.d as f64).sqrt()) as f32,
            interleaved: self.interleaved,
        };
        Ok(f(&data, &shape))
    }
}

impl candle_core::CustomOp1 for FrozenAttention {
    fn name(&self) -> &'static str {
        "frozen-attention"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let xs = f32_slice(storage, layout)?;
        let out = self.with_data(layout.dims(), |w, sh| attn_forward(xs, w, sh))?;
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (xc, gc) = (x.detach().contiguous()?, grad.detach().contiguous()?);
        let (Some(xd), Some(gd)) = (F32Data::of(&xc), F32Data::of(&gc)) else {
            candle_core::bail!("frozen-attention: backward takes f32 CPU tensors")
        };
        let dx = self.with_data(x.dims(), |w, sh| {
            attn_backward(xd.slice(), gd.slice(), w, sh)
        })?;
        drop((xd, gd));
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}
