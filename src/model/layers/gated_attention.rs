//! Gated softmax attention of Qwen3.5 / Qwen3-Next (`self_attn`, `Qwen3_5MoeAttention` in
//! transformers): `q_proj` is twice as wide and gives each head its query and an output gate,
//! q and k are RMS-normalised per head, rotary positions turn only the first
//! `rotary_dim` channels of each head (rotate-half), and the attention output is multiplied by
//! `sigmoid(gate)` before `o_proj`. Keys and values are cached for decoding.
//!
//! Shapes are annotated as `[b, t, h]` = batch, tokens, hidden.

use std::sync::Arc;

use candle_core::{D, Tensor};

use super::attention::{AttentionLayer, append_kv, scaled_attention};
use super::linear::Linear;
use super::norm::RmsNorm;
use super::rotary::Rotary;
use crate::model::error::{ModelError, Result};
use crate::model::weights::WeightSource;

/// Settings of [`GatedAttention`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatedAttentionConfig {
    pub hidden_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Channels of each head that rotary positions turn (the first ones; even, ≤ `head_dim`).
    pub rotary_dim: usize,
    /// Biases on all four projections (`attention_bias`).
    pub bias: bool,
}

/// Grouped-query attention with a per-head output gate, per-head q/k norms and partial rotary
/// positions (`self_attn.{q,k,v,o}_proj`, `self_attn.{q,k}_norm`).
#[derive(Debug)]
pub struct GatedAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    cfg: GatedAttentionConfig,
    rotary: Arc<Rotary>,
    cache: Option<(Tensor, Tensor)>,
}

impl GatedAttention {
    /// Loads `self_attn` (`vb` points at it) with the given q / k norms (each `[head_dim]`)
    /// and the rotary table of `rotary_dim` channels.
    pub fn load(
        vb: &WeightSource,
        cfg: GatedAttentionConfig,
        q_norm: RmsNorm,
        k_norm: RmsNorm,
        rotary: Arc<Rotary>,
    ) -> Result<Self> {
        let (h, nh, nkv, d) = (
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
        );
        if nkv == 0
            || !nh.is_multiple_of(nkv)
            || !cfg.rotary_dim.is_multiple_of(2)
            || cfg.rotary_dim > d
        {
            return Err(ModelError::msg(format!(
                "attention with {nh} heads over {nkv} key/value heads and {} rotary channels of \
                 {d}: heads must be a multiple of the key/value heads and the rotary channels \
                 an even number at most the head size",
                cfg.rotary_dim
            )));
        }
        Ok(Self {
            q: Linear::load(&vb.pp("q_proj"), h, 2 * nh * d, cfg.bias)?,
            k: Linear::load(&vb.pp("k_proj"), h, nkv * d, cfg.bias)?,
            v: Linear::load(&vb.pp("v_proj"), h, nkv * d, cfg.bias)?,
            o: Linear::load(&vb.pp("o_proj"), nh * d, h, cfg.bias)?,
            q_norm,
            k_norm,
            cfg,
            rotary,
            cache: None,
        })
    }

    /// Rotates the first `rotary_dim` channels of `x` `[b, heads, t, d]` for positions
    /// `offset..`; the rest pass through.
    fn rotate(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (r, d) = (self.cfg.rotary_dim, self.cfg.head_dim);
        if r == 0 {
            return Ok(x.contiguous()?);
        }
        let turned = self.rotary.apply(&x.narrow(D::Minus1, 0, r)?, offset)?;
        if r == d {
            return Ok(turned);
        }
        Ok(Tensor::cat(&[&turned, &x.narrow(D::Minus1, r, d - r)?], D::Minus1)?.contiguous()?)
    }

    pub fn forward(
        &mut self,
        x: &Tensor,
        mask: Option<&Tensor>,
        offset: usize,
        use_cache: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, d) = (self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim);
        // Each head's q_proj rows: its query, then its gate.
        let qg = self.q.forward(x)?.reshape((b, t, nh, 2 * d))?;
        let q = self.q_norm.forward(&qg.narrow(3, 0, d)?.contiguous()?)?;
        let gate = qg.narrow(3, d, d)?.contiguous()?.reshape((b, t, nh * d))?;
        let k = self
            .k_norm
            .forward(&self.k.forward(x)?.reshape((b, t, nkv, d))?)?;
        let v = self.v.forward(x)?.reshape((b, t, nkv, d))?;
        let q = self.rotate(&q.transpose(1, 2)?, offset)?;
        let k = self.rotate(&k.transpose(1, 2)?, offset)?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let (k, v) = if use_cache {
            append_kv(&mut self.cache, k, v)?
        } else {
            (k, v)
        };
        let y = scaled_attention(&q, &k, &v, mask, 1.0 / (d as f64).sqrt())?;
        let y = y.transpose(1, 2)?.reshape((b, t, nh * d))?;
        let y = (y * candle_nn::ops::sigmoid(&gate)?)?;
        self.o.forward(&y)
    }
}

impl AttentionLayer for GatedAttention {
    fn forward(
        &mut self,
        x: &Tensor,
        mask: Option<&Tensor>,
        offset: usize,
        use_cache: bool,
    ) -> Result<Tensor> {
        GatedAttention::forward(self, x, mask, offset, use_cache)
    }

    fn clear_cache(&mut self) {
        self.cache = None;
    }

    fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        vec![
            ("self_attn.q_proj", &mut self.q),
            ("self_attn.k_proj", &mut self.k),
            ("self_attn.v_proj", &mut self.v),
            ("self_attn.o_proj", &mut self.o),
        ]
    }
}
