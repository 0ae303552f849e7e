//! [`Gemma4Model`]: the Gemma 4 language model (`Gemma4TextModel` plus the tied, soft-capped LM
//! head of `Gemma4ForConditionalGeneration`) as a [`MoeModel`] and a [`LayerwiseModel`].
//!
//! Shapes are annotated as `[b, t, h]` = batch, tokens, hidden.

use candle_core::{DType, Device, IndexOp, Tensor};

use super::layer::{Gemma4Layer, soft_cap};
use crate::model::batch::{Batch, Output};
use crate::model::error::{ModelError, Result};
use crate::model::info::ModelInfo;
use crate::model::kernels;
use crate::model::layers::{AttentionLayer, Linear, RmsNorm, attention_mask};
use crate::model::module_names::push_named;
use crate::model::moe_model::{BatchRoutingHook, LayerwiseModel, MoeModel};
use crate::model::router::RouteCtx;
use crate::model::weight::Weight;

/// Where the language model's tensors sit in a `Gemma4ForConditionalGeneration` checkpoint.
pub const TEXT_PREFIX: &str = "model.language_model";

/// The Gemma 4 language model.
#[derive(Debug)]
pub struct Gemma4Model {
    pub info: ModelInfo,
    /// `[vocab, hidden]`, also the LM head when tied.
    pub embed: Weight,
    /// `sqrt(hidden)` as the compute dtype holds it (HF multiplies the embeddings by it).
    pub embed_scale: f64,
    pub layers: Vec<Gemma4Layer>,
    pub norm: RmsNorm,
    /// `None` when loaded for routing only.
    pub lm_head: Option<Linear>,
    pub final_logit_softcapping: Option<f64>,
    pub sliding_window: usize,
    /// Parameters of the language model alone (the checkpoint also holds the vision and audio
    /// towers), when known.
    pub text_params: Option<u64>,
    pub use_kv_cache: bool,
    pub device: Device,
    pub dtype: DType,
}

/// What every layer needs to know about a batch: the full and sliding-window attention masks
/// and, when padded, the rows of real tokens in the flattened `[b*t]` layout.
struct BatchLayout {
    b: usize,
    t: usize,
    offset: usize,
    full_mask: Option<Tensor>,
    sliding_mask: Option<Tensor>,
    real_rows: Option<Tensor>,
}

impl BatchLayout {
    fn mask(&self, sliding: bool) -> Option<&Tensor> {
        match sliding {
            true => self.sliding_mask.as_ref(),
            false => self.full_mask.as_ref(),
        }
    }

    /// The rows of `h` `[b, t, h]` that hold real tokens, `[tokens, h]`.
    fn real_tokens(&self, h: &Tensor) -> Result<Tensor> {
        let flat = h.reshape((self.b * self.t, ()))?;
        Ok(match &self.real_rows {
            Some(rows) => flat.index_select(rows, 0)?,
            None => flat,
        })
    }

    /// `y` `[tokens, h]` of the real tokens in the batch's `[b, t, h]` shape, zeros at padding.
    fn scatter(&self, y: &Tensor) -> Result<Tensor> {
        let (b, t) = (self.b, self.t);
        Ok(match &self.real_rows {
            Some(rows) => Tensor::zeros((b * t, y.dim(1)?), y.dtype(), y.device())?
                .index_add(rows, y, 0)?
                .reshape((b, t, ()))?,
            None => y.reshape((b, t, ()))?,
        })
    }
}

impl Gemma4Model {
    fn check_batch(&self, batch: &Batch) -> Result<(usize, usize)> {
        let (b, t) = batch.input_ids.dims2()?;
        if batch.seq_lens.len() != b || batch.seq_lens.iter().any(|&l| l == 0 || l > t) {
            return Err(ModelError::msg(
                "batch sequence lengths do not match the token tensor",
            ));
        }
        let offset = batch.seqlen_offset;
        if offset + t > self.info.max_position_embeddings {
            return Err(ModelError::msg(format!(
                "sequence of {} tokens is longer than the model's context of {} positions",
                offset + t,
                self.info.max_position_embeddings
            )));
        }
        if offset > 0 && batch.seq_lens.len() > 1 && batch.is_padded() {
            return Err(ModelError::msg("KV-cached decoding takes unpadded batches"));
        }
        Ok((b, t))
    }

    fn layout(&self, batch: &Batch) -> Result<BatchLayout> {
        let (b, t) = self.check_batch(batch)?;
        let offset = batch.seqlen_offset;
        let mask =
            |window| attention_mask(&batch.seq_lens, t, offset, window, self.dtype, &self.device);
        let real_rows = if batch.is_padded() {
            let rows: Vec<u32> = batch
                .seq_lens
                .iter()
                .enumerate()
                .flat_map(|(bi, &len)| (0..len).map(move |i| (bi * t + i) as u32))
                .collect();
            Some(Tensor::from_vec(rows.clone(), rows.len(), &self.device)?)
        } else {
            None
        };
        Ok(BatchLayout {
            b,
            t,
            offset,
            full_mask: mask(None)?,
            sliding_mask: mask(Some(self.sliding_window))?,
            real_rows,
        })
    }

    /// The scaled token embeddings of `batch`, `[b, t, h]`.
    fn embed_batch(&self, batch: &Batch) -> Result<Tensor> {
        let (b, t) = self.check_batch(batch)?;
        let ids = batch.input_ids.flatten_all()?;
        let mut x = None;
        if self.embed.is_mapped() {
            let host: Vec<u32> = ids.to_vec1()?;
            if let Some(rows) = kernels::gemm::embedding_rows(&self.embed, &host)? {
                x = Some(rows.to_dtype(self.dtype)?.to_device(&self.device)?);
            }
        }
        let x = match x {
            Some(x) => x,
            None => self.embed.to_tensor()?.index_select(&ids, 0)?,
        };
        Ok((x * self.embed_scale)?.reshape((b, t, ()))?)
    }

    /// Decoder layer `li` on `x` `[b, t, h]`; `None` when `stop_after_routing` and the layer
    /// is MoE (its routing reported, its experts not run).
    fn layer_forward(
        &mut self,
        li: usize,
        x: &Tensor,
        lay: &BatchLayout,
        ctx: &mut RouteCtx<'_>,
        stop_after_routing: bool,
    ) -> Result<Option<Tensor>> {
        let use_cache = self.use_kv_cache;
        let layer = &mut self.layers[li];
        let x = layer.attention_part(x, lay.mask(layer.sliding), lay.offset, use_cache)?;
        let experts = match &layer.moe {
            None => None,
            Some(moe) => {
                let real = lay.real_tokens(&x)?;
                let d = moe.route_tokens(&real, ctx)?;
                if stop_after_routing {
                    return Ok(None);
                }
                let decoding = lay.offset > 0;
                let y = moe.run_experts(&real, &d.indices_host, &d.weights, decoding)?;
                Some(lay.scatter(&y)?)
            }
        };
        Ok(Some(layer.feed_forward_part(&x, experts.as_ref())?))
    }

    /// Every weight of decoder layer `li` with whether it belongs to routed expert `e`.
    fn layer_weights(&mut self, li: usize) -> Vec<(Option<usize>, &Weight)> {
        let layer = &mut self.layers[li];
        let mut out: Vec<(Option<usize>, &Weight)> = layer
            .attn
            .linears_mut()
            .into_iter()
            .map(|(_, l)| (None, &l.weight))
            .collect();
        let mlp = &layer.mlp;
        out.extend([&mlp.gate, &mlp.up, &mlp.down].map(|l| (None, &l.weight)));
        if let Some(moe) = &layer.moe {
            out.push((None, &moe.proj.weight));
            for (e, ex) in moe.experts.iter().enumerate() {
                out.extend([&ex.gate, &ex.up, &ex.down].map(|l| (Some(e), &l.weight)));
            }
        }
        out
    }
}

impl MoeModel for Gemma4Model {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn info_mut(&mut self) -> &mut ModelInfo {
        &mut self.info
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn forward(
        &mut self,
        batch: &Batch,
        output: Output,
        ctx: &mut RouteCtx<'_>,
    ) -> Result<Option<Tensor>> {
        let lay = self.layout(batch)?;
        let mut x = self.embed_batch(batch)?;
        // ^ [b, t, h]
        let last_moe = self.info.moe_layers.last().copied();
        for li in 0..self.layers.len() {
            let stop = output == Output::RoutingOnly && Some(li) == last_moe;
            match self.layer_forward(li, &x, &lay, ctx, stop)? {
                Some(y) => x = y,
                None => return Ok(None),
            }
        }
        if output == Output::RoutingOnly {
            return Ok(None);
        }
        let x = match output {
            Output::LastLogits => {
                let last: Vec<Tensor> = batch
                    .seq_lens
                    .iter()
                    .enumerate()
                    .map(|(bi, &len)| x.i((bi, len - 1)))
                    .collect::<candle_core::Result<_>>()?;
                Tensor::stack(&last, 0)?
            }
            _ => x,
        };
        let lm_head = self.lm_head.as_ref().ok_or_else(|| {
            ModelError::msg("this model was loaded for routing capture only and has no LM head")
        })?;
        let logits = lm_head.forward(&self.norm.forward(&x)?)?;
        let logits = match self.final_logit_softcapping {
            Some(cap) => soft_cap(&logits, cap)?,
            None => logits,
        };
        Ok(Some(logits.to_dtype(DType::F32)?))
    }

    fn layerwise(&mut self) -> Option<&mut dyn LayerwiseModel> {
        Some(self)
    }

    fn set_use_kv_cache(&mut self, on: bool) {
        self.use_kv_cache = on;
        if !on {
            self.clear_kv_cache();
        }
    }

    fn clear_kv_cache(&mut self) {
        for l in &mut self.layers {
            l.attn.clear_cache();
        }
    }

    /// Module names as in the checkpoint, except the routed experts: their weights are fused
    /// (`experts.gate_up_proj` `[E, 2I, H]`, `experts.down_proj` `[E, H, I]`), and each expert's
    /// slices are named `experts.{e}.gate_proj` / `up_proj` / `down_proj` (see the layout).
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (li, layer) in self.layers.iter_mut().enumerate() {
            let prefix = format!("{TEXT_PREFIX}.layers.{li}");
            push_named(
                &mut out,
                &format!("{prefix}.self_attn"),
                layer.attn.linears_mut(),
            );
            push_named(&mut out, &format!("{prefix}.mlp"), layer.mlp.linears_mut());
            if let Some(moe) = &mut layer.moe {
                out.push((format!("{prefix}.router.proj"), &mut moe.proj));
                for (e, expert) in moe.experts.iter_mut().enumerate() {
                    push_named(
                        &mut out,
                        &format!("{prefix}.experts.{e}"),
                        expert.linears_mut(),
                    );
                }
            }
        }
        out
    }

    /// Counts the language model only: the checkpoint's vision and audio towers are not part
    /// of what runs.
    fn set_param_counts(&mut self, total_params: u64) {
        let total = self.text_params.unwrap_or(total_params);
        let inactive = self.info.inactive_params();
        self.info.total_params = total;
        self.info.active_params = total.saturating_sub(inactive);
    }
}

impl LayerwiseModel for Gemma4Model {
    fn embed(&mut self, batch: &Batch) -> Result<Tensor> {
        self.embed_batch(batch)
    }

    fn run_layer(
        &mut self,
        layer: usize,
        xs: Vec<Tensor>,
        batches: &[&Batch],
        hook: &mut dyn BatchRoutingHook,
        stop_after_routing: bool,
    ) -> Result<Option<Vec<Tensor>>> {
        if xs.len() != batches.len() {
            return Err(ModelError::msg("one hidden-state tensor per batch"));
        }
        let mut parts = Vec::with_capacity(xs.len());
        for (x, batch) in xs.iter().zip(batches) {
            let lay = self.layout(batch)?;
            let l = &mut self.layers[layer];
            let x = l.attention_part(x, lay.mask(l.sliding), lay.offset, false)?;
            parts.push((x, lay));
        }
        let l = &self.layers[layer];
        let Some(moe) = &l.moe else {
            let out = parts
                .iter()
                .map(|(x, _)| l.feed_forward_part(x, None))
                .collect::<Result<_>>()?;
            return Ok(Some(out));
        };
        // Each batch's real tokens and routing, then the experts once on all of them.
        let mut real = Vec::with_capacity(parts.len());
        let mut indices = Vec::new();
        let mut weights = Vec::with_capacity(parts.len());
        for (i, (x, lay)) in parts.iter().enumerate() {
            let r = lay.real_tokens(x)?;
            hook.select_batch(i);
            let d = moe.route_tokens(&r, &mut RouteCtx::new(&mut *hook))?;
            indices.extend_from_slice(&d.indices_host);
            weights.push(d.weights);
            real.push(r);
        }
        if stop_after_routing {
            return Ok(None);
        }
        let all = Tensor::cat(&real, 0)?;
        let y = moe.run_experts(&all, &indices, &Tensor::cat(&weights, 0)?, false)?;
        let mut out = Vec::with_capacity(parts.len());
        let mut start = 0;
        for ((x, lay), r) in parts.iter().zip(&real) {
            let n = r.dim(0)?;
            let yb = lay.scatter(&y.narrow(0, start, n)?)?;
            start += n;
            out.push(l.feed_forward_part(x, Some(&yb))?);
        }
        Ok(Some(out))
    }

    fn layer_bytes(&mut self, layer: usize, experts_run: Option<&[bool]>) -> u64 {
        self.layer_weights(layer)
            .into_iter()
            .filter(|(e, _)| match (e, experts_run) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(e), Some(used)) => used.get(*e).copied().unwrap_or(false),
            })
            .map(|(_, w)| w.byte_len())
            .sum()
    }

    fn release_layer(&mut self, layer: usize) {
        for (_, w) in self.layer_weights(layer) {
            w.release();
        }
    }
}
