//! A routed MoE block ([`MoeBlock`]: router, experts, optional shared expert) and the sparse
//! expert dispatch that runs each token through its chosen experts.

use candle_core::{DType, Tensor};

use super::linear::Linear;
use super::mlp::{SharedExpert, SwiGlu};
use super::path::Path;
use crate::model::autograd::experts::frozen_experts;
use crate::model::error::{ModelError, Result};
use crate::model::kernels;
use crate::model::kernels::experts::KernelExpert;
use crate::model::router::{RouteCtx, RouterConfig, RoutingDecision, route};
use crate::model::weight::Weight;

/// A routed MoE block: router, experts, optional shared expert.
#[derive(Debug, Clone)]
pub struct MoeBlock {
    pub layer: usize,
    pub router: Linear,
    pub router_cfg: RouterConfig,
    pub experts: Vec<SwiGlu>,
    pub shared: Option<SharedExpert>,
    /// Compute router logits in fp32 whatever the model dtype (DeepSeek's gate does); the
    /// router weight is then kept in fp32.
    pub router_fp32: bool,
}

impl MoeBlock {
    /// `x` `[tokens, h]` of real (non-padding) tokens. With `route_only`, stops after reporting
    /// the routing and returns `None`; `decoding` marks a KV-cached step of a few tokens, on
    /// which half-precision experts run as matrix-vector products.
    pub fn forward(
        &self,
        x: &Tensor,
        ctx: &mut RouteCtx<'_>,
        route_only: bool,
        decoding: bool,
    ) -> Result<Option<Tensor>> {
        let decision = self.route_tokens(x, ctx)?;
        if route_only {
            return Ok(None);
        }
        let out =
            self.run_routed_experts(x, &decision.indices_host, &decision.weights, decoding)?;
        match self.run_shared_expert(x)? {
            Some(s) => Ok(Some((out + s)?)),
            None => Ok(Some(out)),
        }
    }

    /// The router on `x` `[tokens, h]`: the experts chosen for each token and their weights,
    /// reported to `ctx`.
    pub fn route_tokens(&self, x: &Tensor, ctx: &mut RouteCtx<'_>) -> Result<RoutingDecision> {
        let logits = if self.router_fp32 {
            self.router.forward(&x.to_dtype(DType::F32)?)?
        } else {
            self.router.forward(x)?
        };
        // ^ [tokens, n_experts]
        route(self.layer, &logits, &self.router_cfg, ctx)
    }

    /// The routed experts on `x` `[tokens, h]`, given each token's chosen experts `indices`
    /// (row-major `[tokens, k]`) and their `weights` `[tokens, k]`. A token's output does not
    /// depend on the other tokens run with it (unless `decoding`), so the tokens of several
    /// batches can run together.
    pub fn run_routed_experts(
        &self,
        x: &Tensor,
        indices: &[u32],
        weights: &Tensor,
        decoding: bool,
    ) -> Result<Tensor> {
        if self.experts.is_empty() {
            return Err(ModelError::msg(format!(
                "layer {}: experts were not loaded (model loaded for routing capture only)",
                self.layer
            )));
        }
        dispatch_experts_with(x, indices, weights, &self.experts, decoding)
    }

    /// The shared expert on `x` (scaled by its sigmoid gate), if the block has one.
    pub fn run_shared_expert(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let Some(shared) = &self.shared else {
            return Ok(None);
        };
        let mut s = shared.mlp.forward(x)?;
        if let Some(g) = &shared.gate {
            s = s.broadcast_mul(&candle_nn::ops::sigmoid(&g.forward(x)?)?)?;
        }
        Ok(Some(s))
    }
}

/// Runs each token through its chosen experts and sums the weighted outputs.
///
/// `x` `[tokens, h]`; `indices` row-major `[tokens, k]`; `weights` `[tokens, k]` tensor.
/// Only experts that received tokens run, each on just its tokens.
pub fn dispatch_experts(
    x: &Tensor,
    indices: &[u32],
    weights: &Tensor,
    experts: &[SwiGlu],
) -> Result<Tensor> {
    dispatch_experts_with(x, indices, weights, experts, false)
}

/// [`dispatch_experts`]; with `decoding` (a KV-cached step of a few tokens) half-precision
/// experts run as matrix-vector products.
pub fn dispatch_experts_with(
    x: &Tensor,
    indices: &[u32],
    weights: &Tensor,
    experts: &[SwiGlu],
    decoding: bool,
) -> Result<Tensor> {
    let (tokens, hidden) = x.dims2()?;
    let k = indices.len() / tokens.max(1);
    let mut rows: Vec<Vec<u32>> = vec![Vec::new(); experts.len()];
    let mut slots: Vec<Vec<u32>> = vec![Vec::new(); experts.len()];
    for (pos, &e) in indices.iter().enumerate() {
        let e = e as usize;
        if e >= experts.len() {
            return Err(ModelError::msg(format!("expert index {e} out of range")));
        }
        rows[e].push((pos / k) as u32);
        slots[e].push(pos as u32);
    }
    let plain: Vec<Option<[&Weight; 3]>> = experts.iter().map(SwiGlu::plain_weights).collect();
    let kernel: Vec<_> = experts.iter().map(SwiGlu::kernel_expert).collect();
    let frozen = match dispatch_path(x, k, &slots, weights, &plain, &kernel, decoding)? {
        Path::Kernel(y) => return Ok(y),
        Path::Frozen(covered) => Some(covered),
        Path::TensorOps => None,
    };
    let weights = weights.to_dtype(x.dtype())?.flatten_all()?;
    let device = x.device();
    let used: Vec<usize> = (0..experts.len())
        .filter(|&e| !rows[e].is_empty())
        .filter(|&e| frozen.as_ref().is_none_or(|(_, f)| !f[e]))
        .collect();
    let run = |e: usize| -> Result<Tensor> {
        let row_idx = Tensor::from_slice(&rows[e], rows[e].len(), device)?;
        let slot_idx = Tensor::from_slice(&slots[e], slots[e].len(), device)?;
        let xs = x.index_select(&row_idx, 0)?;
        let w = weights.index_select(&slot_idx, 0)?.unsqueeze(1)?;
        Ok(experts[e].forward(&xs)?.broadcast_mul(&w)?)
    };
    // On the CPU each expert's matrices are small: running experts side by side on the thread
    // pool keeps the cores busier than parallelising inside every small matmul.
    let outputs: Vec<Tensor> = if device.is_cpu() {
        use rayon::prelude::*;
        used.par_iter().map(|&e| run(e)).collect::<Result<_>>()?
    } else {
        used.iter().map(|&e| run(e)).collect::<Result<_>>()?
    };
    let mut all_rows = Vec::with_capacity(indices.len());
    for &e in &used {
        all_rows.extend_from_slice(&rows[e]);
    }
    let base = match frozen {
        Some((y, _)) => y,
        None => Tensor::zeros((tokens, hidden), x.dtype(), device)?,
    };
    if outputs.is_empty() {
        return Ok(base);
    }
    let ys = Tensor::cat(&outputs, 0)?;
    let all_rows = Tensor::from_vec(all_rows, ys.dim(0)?, device)?;
    Ok(base.index_add(&all_rows, &ys, 0)?)
}

/// Where [`dispatch_experts`] runs the experts: all on the direct kernel (untracked f32 CPU
/// inputs, every expert with tokens without LoRA update, its biases f32 on the CPU), or — while training on the CPU — the plain experts
/// as one frozen op, whose output and covered experts this returns, with the others on tensor
/// ops beside it; or all on tensor ops.
fn dispatch_path(
    x: &Tensor,
    k: usize,
    slots: &[Vec<u32>],
    weights: &Tensor,
    plain: &[Option<[&Weight; 3]>],
    kernel: &[Option<KernelExpert<'_>>],
    decoding: bool,
) -> Result<Path<(Tensor, Vec<bool>)>> {
    if let Some(y) = kernels::experts::dispatch_experts(x, k, slots, weights, kernel, decoding)? {
        return Ok(Path::Kernel(y));
    }
    Ok(match frozen_experts(x, k, slots, weights, plain)? {
        Some(covered) => Path::Frozen(covered),
        None => Path::TensorOps,
    })
}
