//! The [`MoeModel`] trait every family implements.

use candle_core::{Device, Tensor};

use super::batch::{Batch, Output};
use super::error::Result;
use super::info::ModelInfo;
use super::layers::Linear;
use super::router::{RouteCtx, RoutingHook};

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

    /// The model as a stack of layers that can run one layer at a time over many batches
    /// (layer-major profiling), if it is one.
    fn layerwise(&mut self) -> Option<&mut dyn LayerwiseModel> {
        None
    }

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

/// A model run one decoder layer at a time: every batch through layer 0, then every batch
/// through layer 1, and so on, so that each layer's weights are read once for a whole prompt
/// set and can be released before the next layer's are read.
pub trait LayerwiseModel {
    /// The hidden states `[b, t, h]` of `batch` entering layer 0.
    fn embed(&mut self, batch: &Batch) -> Result<Tensor>;

    /// Decoder layer `layer` on a group of batches: `xs[i]` the hidden states of `batches[i]`
    /// entering it (no KV cache). Each batch's routing is reported to `hook` after
    /// `hook.select_batch(i)`; the experts then run once on the tokens of the whole group. With
    /// `stop_after_routing` a MoE layer stops after reporting its routing and returns `None`.
    fn run_layer(
        &mut self,
        layer: usize,
        xs: Vec<Tensor>,
        batches: &[&Batch],
        hook: &mut dyn BatchRoutingHook,
        stop_after_routing: bool,
    ) -> Result<Option<Vec<Tensor>>>;

    /// Bytes of layer `layer`'s weights a pass reads: its dense parts, plus the routed
    /// experts flagged in `experts_run` (none when the experts did not run).
    fn layer_bytes(&mut self, layer: usize, experts_run: Option<&[bool]>) -> u64;

    /// Hands layer `layer`'s memory-mapped pages back to the OS.
    fn release_layer(&mut self, layer: usize);
}

/// A routing hook that records several batches: told which batch the next events are for.
pub trait BatchRoutingHook: RoutingHook {
    fn select_batch(&mut self, batch: usize);
}
