//! The [`MoeModel`] trait every family implements.

use candle_core::{Device, Tensor};

use super::batch::{Batch, Output};
use super::error::Result;
use super::info::ModelInfo;
use super::layers::Linear;
use super::router::RouteCtx;

/// A Mixture-of-Experts causal language model.
pub trait MoeModel: Send {
    fn info(&self) -> &ModelInfo;

    /// The device the weights live on (inputs go there).
    fn device(&self) -> &Device;

    /// Runs `batch` through the model, reporting every MoE layer's routing to `route`.
    /// Returns `None` for [`Output::RoutingOnly`], logits otherwise (f32).
    fn forward(
        &mut self,
        batch: &Batch,
        output: Output,
        route: &mut RouteCtx<'_>,
    ) -> Result<Option<Tensor>>;

    /// Enables or disables the KV cache (off by default; generation turns it on).
    fn set_use_kv_cache(&mut self, on: bool);

    /// Forgets cached keys and values.
    fn clear_kv_cache(&mut self);

    /// Mutable access to the info, for the loader to fill in counts read from the checkpoint.
    fn info_mut(&mut self) -> &mut ModelInfo;

    /// Every linear layer of the decoder with its full HF module name (e.g.
    /// `model.layers.3.mlp.experts.5.gate_proj`), for attaching and merging LoRA adapters.
    /// Experts skipped by a routing-only load are absent.
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)>;

    /// Records the checkpoint's parameter count and derives the active count per token.
    fn set_param_counts(&mut self, total_params: u64) {
        let inactive = self.info().inactive_params();
        let info = self.info_mut();
        info.total_params = total_params;
        info.active_params = total_params.saturating_sub(inactive);
    }
}
