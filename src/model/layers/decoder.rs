//! The pre-norm decoder most families are made of: [`DecoderLayer`]s (attention, then a dense
//! or MoE feed-forward part) in a [`DecoderStack`] with embedding, final norm and LM head, which
//! implements [`MoeModel`].
//!
//! Shapes are annotated as `[b, t, h]` = batch, tokens, hidden.

use candle_core::{DType, Device, IndexOp, Tensor};

use super::attention::{AttentionLayer, attention_mask};
use super::linear::Linear;
use super::mlp::SwiGlu;
use super::moe::MoeBlock;
use super::norm::Norm;
use crate::model::batch::{Batch, Output};
use crate::model::error::{ModelError, Result};
use crate::model::info::ModelInfo;
use crate::model::kernels;
use crate::model::module_names::push_named;
use crate::model::moe_model::{BatchRoutingHook, LayerwiseModel, MoeModel};
use crate::model::router::RouteCtx;
use crate::model::weight::Weight;

/// A decoder layer's feed-forward part.
#[derive(Debug, Clone)]
pub enum FeedForward {
    Dense(SwiGlu),
    Moe(MoeBlock),
}

/// A pre-norm decoder layer: `x + attn(norm₁(x))`, then `x + ff(norm₂(x))`.
#[derive(Debug)]
pub struct DecoderLayer {
    pub input_norm: Norm,
    pub attn: Box<dyn AttentionLayer>,
    pub post_attention_norm: Norm,
    pub ff: FeedForward,
}

/// Embedding, decoder layers, final norm and LM head: the whole causal LM.
#[derive(Debug)]
pub struct DecoderStack {
    pub info: ModelInfo,
    /// `[vocab, hidden]`.
    pub embed: Weight,
    pub layers: Vec<DecoderLayer>,
    pub norm: Norm,
    /// `None` when loaded for routing only.
    pub lm_head: Option<Linear>,
    pub sliding_window: Option<usize>,
    pub use_kv_cache: bool,
    /// Where activations are computed.
    pub device: Device,
    /// The dtype activations are computed in.
    pub dtype: DType,
}

/// What every layer needs to know about a batch: its attention mask and, when padded, the
/// rows of real tokens in the flattened `[b*t]` layout.
struct BatchLayout {
    b: usize,
    t: usize,
    offset: usize,
    seq_lens: Vec<usize>,
    mask: Option<Tensor>,
    real_rows: Option<Tensor>,
}

impl BatchLayout {
    /// The rows of `h` `[b, t, h]` that hold real (non-padding) tokens, `[tokens, h]`: what a
    /// MoE block routes.
    fn real_tokens(&self, h: &Tensor) -> Result<Tensor> {
        let flat = h.reshape((self.b * self.t, ()))?;
        Ok(match &self.real_rows {
            Some(rows) => flat.index_select(rows, 0)?,
            None => flat,
        })
    }

    /// `y` `[tokens, h]` of the real tokens back in the batch's `[b, t, h]` shape, zeros at
    /// the padding.
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

impl DecoderStack {
    /// Checks `batch` against the model.
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
        let mask = attention_mask(
            &batch.seq_lens,
            t,
            offset,
            self.sliding_window,
            self.dtype,
            &self.device,
        )?;
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
            seq_lens: batch.seq_lens.clone(),
            mask,
            real_rows,
        })
    }

    /// The token embeddings of `batch`, `[b, t, h]`.
    fn embed_batch(&self, batch: &Batch) -> Result<Tensor> {
        let (b, t) = self.check_batch(batch)?;
        let ids = batch.input_ids.flatten_all()?;
        if self.embed.is_mapped() {
            let host: Vec<u32> = ids.to_vec1()?;
            if let Some(x) = kernels::gemm::embedding_rows(&self.embed, &host)? {
                return Ok(x
                    .to_dtype(self.dtype)?
                    .to_device(&self.device)?
                    .reshape((b, t, ()))?);
            }
        }
        let table = self.embed.to_tensor()?;
        Ok(table.index_select(&ids, 0)?.reshape((b, t, ()))?)
    }

    /// Decoder layer `li` on `x` `[b, t, h]`; `None` when `stop_after_routing` and the layer
    /// is MoE (its routing reported, its experts not run).
    fn layer_forward(
        &mut self,
        li: usize,
        x: Tensor,
        lay: &BatchLayout,
        ctx: &mut RouteCtx<'_>,
        stop_after_routing: bool,
    ) -> Result<Option<Tensor>> {
        let (x, h) = self.attention_part(li, x, lay)?;
        let h = match &self.layers[li].ff {
            FeedForward::Dense(mlp) => mlp.forward(&h)?,
            FeedForward::Moe(moe) => {
                let decoding = lay.offset > 0;
                match moe.forward(&lay.real_tokens(&h)?, ctx, stop_after_routing, decoding)? {
                    None => return Ok(None),
                    Some(y) => lay.scatter(&y)?,
                }
            }
        };
        Ok(Some((x + h)?))
    }

    /// The first half of decoder layer `li`: `x + attn(norm₁(x))`, and that through the
    /// second norm (the feed-forward part's input).
    fn attention_part(
        &mut self,
        li: usize,
        x: Tensor,
        lay: &BatchLayout,
    ) -> Result<(Tensor, Tensor)> {
        let use_cache = self.use_kv_cache;
        let layer = &mut self.layers[li];
        let h = layer.input_norm.forward(&x)?;
        let h = layer.attn.forward_padded(
            &h,
            lay.mask.as_ref(),
            lay.offset,
            use_cache,
            &lay.seq_lens,
        )?;
        let x = (x + h)?;
        let h = layer.post_attention_norm.forward(&x)?;
        Ok((x, h))
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
        match &layer.ff {
            FeedForward::Dense(mlp) => {
                out.extend([&mlp.gate, &mlp.up, &mlp.down].map(|l| (None, &l.weight)));
            }
            FeedForward::Moe(moe) => {
                out.push((None, &moe.router.weight));
                for (e, ex) in moe.experts.iter().enumerate() {
                    out.extend([&ex.gate, &ex.up, &ex.down].map(|l| (Some(e), &l.weight)));
                }
                if let Some(sh) = &moe.shared {
                    let m = &sh.mlp;
                    out.extend([&m.gate, &m.up, &m.down].map(|l| (None, &l.weight)));
                    if let Some(g) = &sh.gate {
                        out.push((None, &g.weight));
                    }
                }
            }
        }
        out
    }
}

impl MoeModel for DecoderStack {
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
            match self.layer_forward(li, x, &lay, ctx, stop)? {
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
        let x = self.norm.forward(&x)?;
        Ok(Some(lm_head.forward(&x)?.to_dtype(DType::F32)?))
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

    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let layout = &self.info.layout;
        let fill = |template: &str, layer: usize| template.replace("{layer}", &layer.to_string());
        let mut out = Vec::new();
        for (li, layer) in self.layers.iter_mut().enumerate() {
            push_named(
                &mut out,
                &fill(&layout.attention_prefix, li),
                layer.attn.linears_mut(),
            );
            match &mut layer.ff {
                FeedForward::Dense(mlp) => {
                    push_named(
                        &mut out,
                        &format!("model.layers.{li}.mlp"),
                        mlp.linears_mut(),
                    );
                }
                FeedForward::Moe(moe) => {
                    let router = fill(&layout.router, li);
                    let block = router.strip_suffix(".gate").unwrap_or(&router).to_string();
                    out.push((router, &mut moe.router));
                    for (e, expert) in moe.experts.iter_mut().enumerate() {
                        let prefix =
                            fill(&layout.expert_prefix, li).replace("{expert}", &e.to_string());
                        push_named(&mut out, &prefix, expert.linears_mut());
                    }
                    if let Some(shared) = &mut moe.shared {
                        let prefix = layout
                            .shared_expert_prefix
                            .as_deref()
                            .map(|p| fill(p, li))
                            .unwrap_or_else(|| format!("{block}.shared_expert"));
                        push_named(&mut out, &prefix, shared.mlp.linears_mut());
                        if let Some(gate) = &mut shared.gate {
                            out.push((format!("{block}.shared_expert_gate"), gate));
                        }
                    }
                }
            }
        }
        out
    }
}

impl LayerwiseModel for DecoderStack {
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
        for (x, batch) in xs.into_iter().zip(batches) {
            let lay = self.layout(batch)?;
            let (x, h) = self.attention_part(layer, x, &lay)?;
            parts.push((x, h, lay));
        }
        let moe = match &self.layers[layer].ff {
            FeedForward::Dense(mlp) => {
                let out = parts
                    .into_iter()
                    .map(|(x, h, _)| Ok((x + mlp.forward(&h)?)?))
                    .collect::<Result<_>>()?;
                return Ok(Some(out));
            }
            FeedForward::Moe(moe) => moe,
        };
        // Each batch's real tokens and routing, then the experts once on all of them.
        let mut real = Vec::with_capacity(parts.len());
        let mut indices = Vec::new();
        let mut weights = Vec::with_capacity(parts.len());
        for (i, (_, h, lay)) in parts.iter().enumerate() {
            let r = lay.real_tokens(h)?;
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
        let y = moe.run_routed_experts(&all, &indices, &Tensor::cat(&weights, 0)?, false)?;
        let mut out = Vec::with_capacity(parts.len());
        let mut start = 0;
        for ((x, _, lay), r) in parts.into_iter().zip(&real) {
            let n = r.dim(0)?;
            let mut yb = y.narrow(0, start, n)?;
            start += n;
            // The shared expert per batch, as the batch-major pass runs it.
            if let Some(shared) = moe.run_shared_expert(r)? {
                yb = (yb + shared)?;
            }
            out.push((x + lay.scatter(&yb)?)?);
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
