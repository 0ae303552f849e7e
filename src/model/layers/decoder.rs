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
use super::norm::RmsNorm;
use crate::model::batch::{Batch, Output};
use crate::model::error::{ModelError, Result};
use crate::model::info::ModelInfo;
use crate::model::module_names::push_named;
use crate::model::moe_model::MoeModel;
use crate::model::router::RouteCtx;

/// A decoder layer's feed-forward part.
#[derive(Debug, Clone)]
pub enum FeedForward {
    Dense(SwiGlu),
    Moe(MoeBlock),
}

/// A pre-norm decoder layer: `x + attn(norm₁(x))`, then `x + ff(norm₂(x))`.
#[derive(Debug)]
pub struct DecoderLayer {
    pub input_norm: RmsNorm,
    pub attn: Box<dyn AttentionLayer>,
    pub post_attention_norm: RmsNorm,
    pub ff: FeedForward,
}

/// Embedding, decoder layers, final norm and LM head: the whole causal LM.
#[derive(Debug)]
pub struct DecoderStack {
    pub info: ModelInfo,
    pub embed: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// `None` when loaded for routing only.
    pub lm_head: Option<Linear>,
    pub sliding_window: Option<usize>,
    pub use_kv_cache: bool,
}

impl MoeModel for DecoderStack {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn info_mut(&mut self) -> &mut ModelInfo {
        &mut self.info
    }

    fn device(&self) -> &Device {
        self.embed.device()
    }

    fn forward(
        &mut self,
        batch: &Batch,
        output: Output,
        ctx: &mut RouteCtx<'_>,
    ) -> Result<Option<Tensor>> {
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
        let ids = batch.input_ids.flatten_all()?;
        let mut x = self.embed.index_select(&ids, 0)?.reshape((b, t, ()))?;
        // ^ [b, t, h]
        let mask = attention_mask(
            &batch.seq_lens,
            t,
            offset,
            self.sliding_window,
            x.dtype(),
            x.device(),
        )?;
        // Rows of real tokens in the flattened [b*t] layout, in batch order.
        let real_rows: Option<Tensor> = if batch.is_padded() {
            let rows: Vec<u32> = batch
                .seq_lens
                .iter()
                .enumerate()
                .flat_map(|(bi, &len)| (0..len).map(move |i| (bi * t + i) as u32))
                .collect();
            Some(Tensor::from_vec(rows.clone(), rows.len(), x.device())?)
        } else {
            None
        };
        let last_moe = self.info.moe_layers.last().copied();
        let use_cache = self.use_kv_cache;
        for (li, layer) in self.layers.iter_mut().enumerate() {
            let h = layer.input_norm.forward(&x)?;
            let h = layer.attn.forward(&h, mask.as_ref(), offset, use_cache)?;
            x = (x + h)?;
            let h = layer.post_attention_norm.forward(&x)?;
            let routing_only_here = output == Output::RoutingOnly && Some(li) == last_moe;
            let h = match &layer.ff {
                FeedForward::Dense(mlp) => mlp.forward(&h)?,
                FeedForward::Moe(moe) => {
                    let flat = h.reshape((b * t, ()))?;
                    let real = match &real_rows {
                        Some(rows) => flat.index_select(rows, 0)?,
                        None => flat,
                    };
                    match moe.forward(&real, ctx, routing_only_here)? {
                        None => return Ok(None),
                        Some(y) => match &real_rows {
                            Some(rows) => Tensor::zeros((b * t, y.dim(1)?), y.dtype(), y.device())?
                                .index_add(rows, &y, 0)?
                                .reshape((b, t, ()))?,
                            None => y.reshape((b, t, ()))?,
                        },
                    }
                }
            };
            x = (x + h)?;
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
