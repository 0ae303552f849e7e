//! Gemma 4 attention (`Gemma4TextAttention`): q / k / v each RMS-normalised per head (`q_norm`,
//! `k_norm` with a scale, the value norm without one), rotary positions on q and k, no softmax
//! scaling (the norms take its place: scale 1), and on full-attention layers with
//! `attention_k_eq_v` no `v_proj` (the values are the key projection before `k_norm`).
//!
//! Shapes are annotated as `[b, t, h]` = batch, tokens, hidden.

use std::sync::Arc;

use candle_core::Tensor;

use super::super::BuildCtx;
use super::config::{LayerAttention, TextConfig};
use crate::model::error::Result;
use crate::model::layers::{AttentionLayer, Linear, RmsNorm, Rotary, append_kv, scaled_attention};
use crate::model::weights::WeightSource;

/// One layer's attention with its KV cache.
#[derive(Debug)]
pub struct Gemma4Attention {
    q: Linear,
    k: Linear,
    /// `None` when the key projection is the value (`attention_k_eq_v` full layers).
    v: Option<Linear>,
    o: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    /// RMS norm without a learned scale (a weight of ones).
    v_norm: RmsNorm,
    num_heads: usize,
    shape: LayerAttention,
    rotary: Arc<Rotary>,
    cache: Option<(Tensor, Tensor)>,
}

impl Gemma4Attention {
    /// Loads `self_attn` of a layer of attention `shape`.
    pub fn load(
        vb: &WeightSource,
        cfg: &TextConfig,
        shape: LayerAttention,
        rotary: Arc<Rotary>,
        ctx: &BuildCtx,
    ) -> Result<Self> {
        let (hidden, num_heads) = (cfg.hidden_size, cfg.num_attention_heads);
        let (bias, eps) = (cfg.attention_bias, cfg.rms_norm_eps);
        let (d, nkv) = (shape.head_dim, shape.num_kv_heads);
        let v = match shape.k_eq_v {
            true => None,
            false => Some(Linear::load(&vb.pp("v_proj"), hidden, nkv * d, bias)?),
        };
        Ok(Self {
            q: Linear::load(&vb.pp("q_proj"), hidden, num_heads * d, bias)?,
            k: Linear::load(&vb.pp("k_proj"), hidden, nkv * d, bias)?,
            v,
            o: Linear::load(&vb.pp("o_proj"), num_heads * d, hidden, bias)?,
            q_norm: RmsNorm::load(&vb.pp("q_norm"), d, eps)?,
            k_norm: RmsNorm::load(&vb.pp("k_norm"), d, eps)?,
            v_norm: unit_norm(d, eps, ctx)?,
            num_heads,
            shape,
            rotary,
            cache: None,
        })
    }
}

/// An RMS norm without a learned scale (`Gemma4RMSNorm(with_scale=False)`).
pub fn unit_norm(dim: usize, eps: f64, ctx: &BuildCtx) -> Result<RmsNorm> {
    Ok(RmsNorm {
        weight: Tensor::ones(dim, ctx.dtype, &ctx.device)?,
        eps,
    })
}

impl AttentionLayer for Gemma4Attention {
    fn forward(
        &mut self,
        x: &Tensor,
        mask: Option<&Tensor>,
        offset: usize,
        use_cache: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, d) = (self.num_heads, self.shape.num_kv_heads, self.shape.head_dim);
        let q = self.q.forward(x)?.reshape((b, t, nh, d))?;
        let q = self.q_norm.forward(&q)?;
        let q = self.rotary.apply(&q.transpose(1, 2)?, offset)?;
        let k = self.k.forward(x)?.reshape((b, t, nkv, d))?;
        let v = match &self.v {
            Some(v) => v.forward(x)?.reshape((b, t, nkv, d))?,
            None => k.clone(),
        };
        let k = self.k_norm.forward(&k)?;
        let k = self.rotary.apply(&k.transpose(1, 2)?, offset)?;
        let v = self.v_norm.forward(&v)?.transpose(1, 2)?.contiguous()?;
        // ^ q [b, nh, t, d], k / v [b, nkv, t, d]
        let (k, v) = if use_cache {
            append_kv(&mut self.cache, k, v)?
        } else {
            (k, v)
        };
        let y = scaled_attention(&q, &k, &v, mask, 1.0)?;
        let y = y.transpose(1, 2)?.reshape((b, t, nh * d))?;
        self.o.forward(&y)
    }

    fn clear_cache(&mut self) {
        self.cache = None;
    }

    fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        let mut out = vec![("q_proj", &mut self.q), ("k_proj", &mut self.k)];
        if let Some(v) = &mut self.v {
            out.push(("v_proj", v));
        }
        out.push(("o_proj", &mut self.o));
        out
    }
}
