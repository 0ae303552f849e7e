//! [`FrozenExperts`]: the routed experts without a trainable update as one training op.

use candle_core::{DType, Tensor};

use super::storage::f32_slice;
use crate::model::error::Result;
use crate::model::kernels::experts::{ExpertData, expert_data, experts_backward, experts_forward};
use crate::model::kernels::gemm::F32Data;
use crate::model::weight::Weight;

/// The weighted sum of the outputs of the experts that are plain (no bias, no LoRA update)
/// f32 SwiGLUs on the CPU, as one [`FrozenExperts`] op, and which experts it covers; `None`
/// when there are none or the inputs don't qualify. `experts[e]` holds expert `e`'s gate, up
/// and down weights when it is plain.
pub(crate) fn frozen_experts(
    x: &Tensor,
    k: usize,
    slots: &[Vec<u32>],
    weights: &Tensor,
    experts: &[Option<[&Weight; 3]>],
) -> Result<Option<(Tensor, Vec<bool>)>> {
    let (tokens, hidden) = x.dims2()?;
    let qualifies = x.device().is_cpu()
        && x.dtype() == DType::F32
        && weights.dtype() == DType::F32
        && weights.elem_count() == tokens * k
        && tokens > 0
        && hidden > 0;
    if !qualifies {
        return Ok(None);
    }
    let frozen: Vec<bool> = experts
        .iter()
        .zip(slots)
        .map(|(e, s)| !s.is_empty() && e.and_then(|w| ExpertData::of_f32(w, hidden)).is_some())
        .collect();
    if !frozen.contains(&true) {
        return Ok(None);
    }
    let op = FrozenExperts {
        k,
        slots: slots
            .iter()
            .zip(&frozen)
            .map(|(s, &f)| if f { s.clone() } else { Vec::new() })
            .collect(),
        experts: experts
            .iter()
            .zip(&frozen)
            .map(|(e, &f)| e.filter(|_| f).map(|w| w.map(Weight::clone)))
            .collect(),
    };
    let y = x.contiguous()?.apply_op2(&weights.contiguous()?, op)?;
    Ok(Some((y, frozen)))
}

/// `Σ w·expert(x)` per token over a set of frozen SwiGLU experts, for the training path
/// (CPU, f32): the forward pass is the direct CPU kernel's, and the backward pass gives
/// `∂L/∂x` and `∂L/∂w` (the routing weights depend on `x` through the router) but nothing
/// for the experts' weights. Composed from tensor ops, every expert would cost a dozen small
/// ops and their backward passes.
pub struct FrozenExperts {
    /// Experts per token.
    k: usize,
    /// `slots[e]`: the positions in the row-major `[tokens, k]` choice routed to expert `e`
    /// and computed here (empty for the experts left to the caller).
    slots: Vec<Vec<u32>>,
    /// The gate, up and down weights of the experts computed here.
    experts: Vec<Option<[Weight; 3]>>,
}

impl FrozenExperts {
    fn expert_data(&self, hidden: usize) -> candle_core::Result<Vec<Option<ExpertData<'_>>>> {
        let weights: Vec<Option<[&Weight; 3]>> = self
            .experts
            .iter()
            .map(|e| e.as_ref().map(|w| w.each_ref()))
            .collect();
        expert_data(&weights, &self.slots, hidden).ok_or_else(|| {
            candle_core::Error::Msg("frozen-experts: an expert is not a plain f32 SwiGLU".into())
        })
    }
}

impl candle_core::CustomOp2 for FrozenExperts {
    fn name(&self) -> &'static str {
        "frozen-experts"
    }

    fn cpu_fwd(
        &self,
        xs: &candle_core::CpuStorage,
        xl: &candle_core::Layout,
        ws: &candle_core::CpuStorage,
        wl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (tokens, hidden) = xl.shape().dims2()?;
        let (xs, ws) = (f32_slice(xs, xl)?, f32_slice(ws, wl)?);
        if ws.len() != tokens * self.k {
            candle_core::bail!("frozen-experts: {} weights for {tokens} tokens", ws.len());
        }
        let data = self.expert_data(hidden)?;
        let out = experts_forward(xs, ws, hidden, self.k, &self.slots, &data, false);
        Ok((candle_core::CpuStorage::F32(out), (tokens, hidden).into()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, hidden) = x.dims2()?;
        let (xc, wc, gc) = (
            x.detach().contiguous()?,
            w.detach().contiguous()?,
            grad.detach().contiguous()?,
        );
        let (Some(xd), Some(wd), Some(gd)) = (F32Data::of(&xc), F32Data::of(&wc), F32Data::of(&gc))
        else {
            candle_core::bail!("frozen-experts: backward takes f32 CPU tensors")
        };
        let data = self.expert_data(hidden)?;
        let (dx, dw) = experts_backward(
            xd.slice(),
            wd.slice(),
            gd.slice(),
            hidden,
            self.k,
            &self.slots,
            &data,
        );
        drop((xd, wd, gd, data));
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
        ))
    }
}
