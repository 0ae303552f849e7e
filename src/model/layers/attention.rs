//! Attention: the additive mask for padded, causal, windowed batches; scaled dot-product
//! attention, also with attention sinks; the KV cache; grouped-query [`Attention`] with rotary
//! positions, q / k norms, optional per-head sinks and a per-layer sliding window; and the
//! [`AttentionLayer`] trait the decoder stack holds (DeepSeek's MLA implements it too).
//!
//! Shapes are annotated as `[b, t, h]` = batch, tokens, hidden.

use std::sync::Arc;

use crate::model::weights::WeightSource;
use candle_core::{D, DType, Device, Tensor};

use super::linear::Linear;
use super::norm::RmsNorm;
use super::path::Path;
use super::rotary::Rotary;
use crate::model::autograd::FrozenAttention;
use crate::model::error::Result;
use crate::model::kernels;

/// Additive attention mask `[b, 1, t, offset + t]` (0 or -inf) for right-padded sequences:
/// causal, padding keys hidden, optional sliding window (a query at position i sees keys
/// j with i - j < window). `None` when nothing needs masking.
pub fn attention_mask(
    seq_lens: &[usize],
    t: usize,
    offset: usize,
    sliding_window: Option<usize>,
    dtype: DType,
    device: &Device,
) -> Result<Option<Tensor>> {
    let total = offset + t;
    let window_bites = sliding_window.is_some_and(|w| total > w);
    let padded = seq_lens.iter().any(|&l| l != t);
    if t == 1 && !window_bites && !padded {
        return Ok(None);
    }
    let b = seq_lens.len();
    let mut m = vec![0f32; b * t * total];
    for (bi, &len) in seq_lens.iter().enumerate() {
        for i in 0..t {
            let qpos = offset + i;
            let row = &mut m[(bi * t + i) * total..(bi * t + i + 1) * total];
            if i >= len {
                // A padding query: its output is never used, but a fully masked row would turn
                // into NaN and leak through later layers' values, so it sees the first key only.
                row.iter_mut().skip(1).for_each(|v| *v = f32::NEG_INFINITY);
                continue;
            }
            for (j, v) in row.iter_mut().enumerate() {
                let future = j > qpos;
                let pad = j >= offset + len;
                let outside = sliding_window.is_some_and(|w| qpos >= j + w);
                if future || pad || outside {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
    }
    Ok(Some(
        Tensor::from_vec(m, (b, 1, t, total), device)?.to_dtype(dtype)?,
    ))
}

/// `softmax(q·kᵀ·scale + mask)·v` with fp32 softmax; `q` `[b, h, t, d]`, `k`/`v`
/// `[b, kv_h, s, d]` (grouped heads are repeated).
pub fn scaled_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    if let Some(y) = kernels::attention::attention(q, k, v, mask, scale)? {
        return Ok(y);
    }
    let n_rep = q.dim(1)? / k.dim(1)?;
    let k = repeat_kv(k, n_rep)?;
    let v = repeat_kv(v, n_rep)?;
    let mut att = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
    if let Some(m) = mask {
        att = att.broadcast_add(m)?;
    }
    let dtype = att.dtype();
    let att = softmax_last_dim(&att.to_dtype(DType::F32)?)?.to_dtype(dtype)?;
    Ok(att.matmul(&v.contiguous()?)?)
}

/// Softmax over the last axis: Candle's fused kernel, or (when `x` carries gradients, which
/// the fused kernel cannot pass back) the composite max-shifted form.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Ok(if x.track_op() {
        candle_nn::ops::softmax(x, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(x)?
    })
}

/// [`scaled_attention`] with attention sinks (gpt-oss): each head's learned logit `sinks[h]`
/// joins every query's row as one more column of the softmax and is dropped after it, so the
/// weights of the real keys sum to less than one. Computed as transformers'
/// `eager_attention_forward` does: the row's maximum (sink included) subtracted first, the
/// softmax in fp32.
pub fn scaled_attention_with_sinks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    sinks: &Tensor,
) -> Result<Tensor> {
    let (b, h, t, _) = q.dims4()?;
    let n_rep = h / k.dim(1)?;
    let k = repeat_kv(k, n_rep)?;
    let v = repeat_kv(v, n_rep)?;
    let mut att = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
    if let Some(m) = mask {
        att = att.broadcast_add(m)?;
    }
    let dtype = att.dtype();
    let s = att.dim(3)?;
    let sink_col = sinks
        .to_dtype(DType::F32)?
        .reshape((1, h, 1, 1))?
        .broadcast_as((b, h, t, 1))?;
    let combined = Tensor::cat(&[&att.to_dtype(DType::F32)?, &sink_col], 3)?;
    let combined = combined.broadcast_sub(&combined.max_keepdim(3)?)?;
    let probs = softmax_last_dim(&combined)?.narrow(3, 0, s)?;
    Ok(probs.to_dtype(dtype)?.matmul(&v.contiguous()?)?)
}

/// The additive sliding-window mask `[1, 1, t, offset + t]` for queries at positions
/// `offset..offset + t` (a query at i sees keys j with i − j < window; causality and padding
/// are the stack's mask's), or `None` when the window hides nothing.
pub fn window_mask(
    t: usize,
    offset: usize,
    window: usize,
    dtype: DType,
    device: &Device,
) -> Result<Option<Tensor>> {
    let total = offset + t;
    if total <= window {
        return Ok(None);
    }
    let m: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if offset + i >= j + window {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Some(
        Tensor::from_vec(m, (1, 1, t, total), device)?.to_dtype(dtype)?,
    ))
}

fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, kv, s, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .expand((b, kv, n_rep, s, d))?
        .reshape((b, kv * n_rep, s, d))?)
}

/// Appends new keys/values to a cache along the sequence axis.
pub fn append_kv(
    cache: &mut Option<(Tensor, Tensor)>,
    k: Tensor,
    v: Tensor,
) -> Result<(Tensor, Tensor)> {
    let (k, v) = match cache.take() {
        Some((ck, cv)) => (Tensor::cat(&[&ck, &k], 2)?, Tensor::cat(&[&cv, &v], 2)?),
        None => (k, v),
    };
    *cache = Some((k.clone(), v.clone()));
    Ok((k, v))
}

/// How q/k normalisation is applied, if at all.
#[derive(Debug, Clone)]
pub enum QkNorm {
    None,
    /// RMSNorm over the whole q / k projection output (OLMoE).
    Full {
        q: RmsNorm,
        k: RmsNorm,
    },
    /// RMSNorm over each head's `head_dim` (Qwen3).
    PerHead {
        q: RmsNorm,
        k: RmsNorm,
    },
}

/// Settings of [`Attention`].
#[derive(Debug, Clone)]
pub struct AttentionConfig {
    pub hidden_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub qkv_bias: bool,
    pub o_bias: bool,
    /// Clamp q, k (after their norm) and v to ±clip (OLMoE `clip_qkv`).
    pub clip_qkv: Option<f64>,
}

/// Multi-head attention with grouped KV heads, rotary positions and a KV cache
/// (`self_attn.{q,k,v,o}_proj`).
#[derive(Debug)]
pub struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    qk_norm: QkNorm,
    cfg: AttentionConfig,
    rotary: Arc<Rotary>,
    cache: Option<(Tensor, Tensor)>,
    /// Per-head attention-sink logits `[heads]` (gpt-oss `self_attn.sinks`).
    sinks: Option<Tensor>,
    /// This layer's own sliding window, on top of the stack's mask (for models whose layers
    /// alternate between windowed and full attention).
    window: Option<usize>,
}

impl Attention {
    pub fn load(
        vb: &WeightSource,
        cfg: AttentionConfig,
        qk_norm: QkNorm,
        rotary: Arc<Rotary>,
    ) -> Result<Self> {
        let (h, nh, nkv, d) = (
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
        );
        Ok(Self {
            q: Linear::load(&vb.pp("q_proj"), h, nh * d, cfg.qkv_bias)?,
            k: Linear::load(&vb.pp("k_proj"), h, nkv * d, cfg.qkv_bias)?,
            v: Linear::load(&vb.pp("v_proj"), h, nkv * d, cfg.qkv_bias)?,
            o: Linear::load(&vb.pp("o_proj"), nh * d, h, cfg.o_bias)?,
            qk_norm,
            cfg,
            rotary,
            cache: None,
            sinks: None,
            window: None,
        })
    }

    /// The attention with per-head sink logits `sinks` `[heads]` in its softmax.
    pub fn with_sinks(mut self, sinks: Tensor) -> Self {
        self.sinks = Some(sinks);
        self
    }

    /// The attention limited to the last `window` positions, whatever the stack's mask.
    pub fn with_sliding_window(mut self, window: Option<usize>) -> Self {
        self.window = window;
        self
    }

    pub fn forward(
        &mut self,
        x: &Tensor,
        mask: Option<&Tensor>,
        offset: usize,
        use_cache: bool,
    ) -> Result<Tensor> {
        match self.path(x, mask, offset, use_cache)? {
            Path::Kernel(y) => Ok(y),
            Path::Frozen(op) => Ok(x.apply_op1(op)?),
            Path::TensorOps => self.forward_tensor_ops(x, mask, offset, use_cache),
        }
    }

    fn forward_tensor_ops(
        &mut self,
        x: &Tensor,
        mask: Option<&Tensor>,
        offset: usize,
        use_cache: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, d) = (self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim);
        let mut q = self.q.forward(x)?;
        let mut k = self.k.forward(x)?;
        let mut v = self.v.forward(x)?;
        // OLMoE normalises first, then clamps (modeling_olmoe.py).
        if let QkNorm::Full { q: qn, k: kn } = &self.qk_norm {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        if let Some(c) = self.cfg.clip_qkv {
            q = q.clamp(-c, c)?;
            k = k.clamp(-c, c)?;
            v = v.clamp(-c, c)?;
        }
        let mut q = q.reshape((b, t, nh, d))?;
        let mut k = k.reshape((b, t, nkv, d))?;
        if let QkNorm::PerHead { q: qn, k: kn } = &self.qk_norm {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let q = self.rotary.apply(&q.transpose(1, 2)?, offset)?;
        let k = self.rotary.apply(&k.transpose(1, 2)?, offset)?;
        let v = v.reshape((b, t, nkv, d))?.transpose(1, 2)?.contiguous()?;
        let (k, v) = if use_cache {
            append_kv(&mut self.cache, k, v)?
        } else {
            (k, v)
        };
        let window = match self.window {
            Some(w) => window_mask(t, offset, w, q.dtype(), q.device())?,
            None => None,
        };
        let mask = match (mask, &window) {
            (Some(m), Some(w)) => Some(m.broadcast_add(w)?),
            (m, w) => m.or(w.as_ref()).cloned(),
        };
        let scale = 1.0 / (d as f64).sqrt();
        let y = match &self.sinks {
            Some(sinks) => scaled_attention_with_sinks(&q, &k, &v, mask.as_ref(), scale, sinks)?,
            None => scaled_attention(&q, &k, &v, mask.as_ref(), scale)?,
        };
        let y = y.transpose(1, 2)?.reshape((b, t, nh * d))?;
        self.o.forward(&y)
    }

    pub fn clear_cache(&mut self) {
        self.cache = None;
    }

    /// Where [`Attention::forward`] runs on `x` `[b, t, hidden]`: the block as one
    /// [`FrozenAttention`] op while training on the CPU (f32) with all four projections frozen,
    /// tensor ops (whose parts choose their own paths) when `x` tracks no gradient, a projection
    /// is adapted or has a bias, on another device or dtype, with a KV cache, per-head norms,
    /// clamping, sinks or a layer's own window.
    fn path(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        offset: usize,
        use_cache: bool,
    ) -> Result<Path<FrozenAttention>> {
        let attn = self;
        let f32_cpu = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu();
        let plain = |l: &Linear| {
            l.plain_weight()
                .and_then(|w| w.as_tensor())
                .filter(|w| f32_cpu(w) && !w.track_op())
                .cloned()
        };
        let plain_softmax = attn.sinks.is_none() && attn.window.is_none();
        if !x.track_op()
            || !f32_cpu(x)
            || use_cache
            || offset != 0
            || attn.cfg.clip_qkv.is_some()
            || !plain_softmax
        {
            return Ok(Path::TensorOps);
        }
        let Ok((b, t, hidden)) = x.dims3() else {
            return Ok(Path::TensorOps);
        };
        let (nh, nkv, d) = (attn.cfg.num_heads, attn.cfg.num_kv_heads, attn.cfg.head_dim);
        let shapes = nh > 0 && nkv > 0 && nh % nkv == 0 && d % 2 == 0 && t > 0 && b > 0;
        let rot = &attn.rotary;
        if !shapes || rot.cos.dims() != [rot.max_positions(), d / 2] || t > rot.max_positions() {
            return Ok(Path::TensorOps);
        }
        let (Some(q), Some(k), Some(v), Some(o)) = (
            plain(&attn.q),
            plain(&attn.k),
            plain(&attn.v),
            plain(&attn.o),
        ) else {
            return Ok(Path::TensorOps);
        };
        let dims_ok = q.dims() == [nh * d, hidden]
            && k.dims() == [nkv * d, hidden]
            && v.dims() == [nkv * d, hidden]
            && o.dims() == [hidden, nh * d];
        let norm_ok = |n: &RmsNorm, width: usize| {
            f32_cpu(&n.weight) && !n.weight.track_op() && n.weight.dims() == [width]
        };
        let (q_norm, k_norm) = match &attn.qk_norm {
            QkNorm::None => (None, None),
            QkNorm::Full { q: qn, k: kn } if norm_ok(qn, nh * d) && norm_ok(kn, nkv * d) => {
                (Some(qn.frozen_weight()), Some(kn.frozen_weight()))
            }
            _ => return Ok(Path::TensorOps),
        };
        let mask = match mask {
            Some(m) if m.dims() != [b, 1, t, t] || !f32_cpu(m) || m.track_op() => {
                return Ok(Path::TensorOps);
            }
            m => m.map(|m| m.contiguous()).transpose()?,
        };
        if !dims_ok || !f32_cpu(&rot.cos) {
            return Ok(Path::TensorOps);
        }
        Ok(Path::Frozen(FrozenAttention {
            q,
            k,
            v,
            o,
            q_norm,
            k_norm,
            cos: rot.cos.narrow(0, 0, t)?.contiguous()?,
            sin: rot.sin.narrow(0, 0, t)?.contiguous()?,
            interleaved: rot.interleaved,
            mask,
            nh,
            nkv,
            d,
        }))
    }
}

/// An attention implementation usable in [`DecoderStack`](super::DecoderStack).
pub trait AttentionLayer: Send + std::fmt::Debug {
    fn forward(
        &mut self,
        x: &Tensor,
        mask: Option<&Tensor>,
        offset: usize,
        use_cache: bool,
    ) -> Result<Tensor>;
    /// [`AttentionLayer::forward`] on a right-padded batch whose sequences hold `seq_lens` real
    /// tokens. Softmax attention ignores the lengths (the mask hides the padding); a layer that
    /// carries a state along the sequence (linear attention) stops each sequence at its length
    /// so that the padding never enters the state.
    fn forward_padded(
        &mut self,
        x: &Tensor,
        mask: Option<&Tensor>,
        offset: usize,
        use_cache: bool,
        seq_lens: &[usize],
    ) -> Result<Tensor> {
        let _ = seq_lens;
        self.forward(x, mask, offset, use_cache)
    }
    fn clear_cache(&mut self);
    /// Every projection with its module name relative to the layout's `attention_prefix`
    /// (`self_attn` for most families).
    fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)>;
}

impl AttentionLayer for Attention {
    fn forward(
        &mut self,
        x: &Tensor,
        mask: Option<&Tensor>,
        offset: usize,
        use_cache: bool,
    ) -> Result<Tensor> {
        Attention::forward(self, x, mask, offset, use_cache)
    }

    fn clear_cache(&mut self) {
        Attention::clear_cache(self);
    }

    fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        vec![
            ("q_proj", &mut self.q),
            ("k_proj", &mut self.k),
            ("v_proj", &mut self.v),
            ("o_proj", &mut self.o),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_support::{input_grads, randn, rel_diff, tracked};

    #[test]
    fn frozen_attention_op_matches_the_tensor_path() {
        let (b, t, hidden, d) = (2, 9, 24, 8);
        let dev = Device::Cpu;
        // Grouped heads, q / k norms, halves rotation, a padding mask; then plain heads,
        // interleaved rotation, no mask.
        for (nh, nkv, norms, interleaved, masked) in
            [(4, 2, true, false, true), (2, 2, false, true, false)]
        {
            let attn = |w: &dyn Fn(&Tensor) -> Tensor| {
                let lin =
                    |o: usize, i: usize, seed: u64| Linear::new(w(&randn(&[o, i], seed)), None);
                let norm = |width: usize, seed: u64| RmsNorm {
                    weight: w(&randn(&[width], seed)),
                    eps: 1e-5,
                };
                let inv: Vec<f32> = (0..d / 2)
                    .map(|i| 1.0 / 100f32.powf(2.0 * i as f32 / d as f32))
                    .collect();
                Attention {
                    q: lin(nh * d, hidden, 1),
                    k: lin(nkv * d, hidden, 2),
                    v: lin(nkv * d, hidden, 3),
                    o: lin(hidden, nh * d, 4),
                    qk_norm: match norms {
                        true => QkNorm::Full {
                            q: norm(nh * d, 5),
                            k: norm(nkv * d, 6),
                        },
                        false => QkNorm::None,
                    },
                    cfg: AttentionConfig {
                        hidden_size: hidden,
                        num_heads: nh,
                        num_kv_heads: nkv,
                        head_dim: d,
                        qkv_bias: false,
                        o_bias: false,
                        clip_qkv: None,
                    },
                    rotary: Arc::new(
                        Rotary::from_inv_freq(&inv, 1.0, 16, interleaved, DType::F32, &dev)
                            .unwrap(),
                    ),
                    cache: None,
                    sinks: None,
                    window: None,
                }
            };
            let mask = match masked {
                true => attention_mask(&[9, 6], t, 0, None, DType::F32, &dev).unwrap(),
                false => None,
            };
            let run = |mut a: Attention| {
                let x = candle_core::Var::from_tensor(&randn(&[b, t, hidden], 7)).unwrap();
                let y = a.forward(x.as_tensor(), mask.as_ref(), 0, false).unwrap();
                let g = input_grads(&y, &[&x], 8);
                (y, g)
            };
            let frozen = attn(&|t| t.clone());
            let x = tracked(&randn(&[b, t, hidden], 7));
            assert!(matches!(
                frozen.path(&x, mask.as_ref(), 0, false).unwrap(),
                Path::Frozen(_)
            ));
            let (y, g) = run(frozen);
            let (y0, g0) = run(attn(&tracked));
            assert!(rel_diff(&y, &y0) < 1e-5, "output {}", rel_diff(&y, &y0));
            assert!(
                rel_diff(&g[0], &g0[0]) < 1e-5,
                "∂L/∂x {}",
                rel_diff(&g[0], &g0[0])
            );
        }
    }

    #[test]
    fn sinks_take_a_share_of_the_softmax_and_are_dropped() {
        let dev = Device::Cpu;
        // One head, one query, two keys with logits q·k·scale = 0 and ln 2 (scale 1), values
        // 1 and 3, sink logit ln 3: weights 1/6 and 2/6 (the sink takes 3/6), output 7/6.
        let q = Tensor::new(&[[[[1f32]]]], &dev).unwrap();
        let k = Tensor::new(&[[[[0f32], [2f32.ln()]]]], &dev).unwrap();
        let v = Tensor::new(&[[[[1f32], [3.0]]]], &dev).unwrap();
        let sinks = Tensor::new(&[3f32.ln()], &dev).unwrap();
        let y = scaled_attention_with_sinks(&q, &k, &v, None, 1.0, &sinks)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!((y[0] - 7.0 / 6.0).abs() < 1e-6, "{y:?}");
        // A masked key gets nothing; a fully masked row is all sink (zeros, no NaN).
        let ninf = f32::NEG_INFINITY;
        let mask = Tensor::new(&[[[[0f32, ninf]]]], &dev).unwrap();
        let y = scaled_attention_with_sinks(&q, &k, &v, Some(&mask), 1.0, &sinks).unwrap();
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!((y[0] - 0.25).abs() < 1e-6, "{y:?}");
        let mask = Tensor::new(&[[[[ninf, ninf]]]], &dev).unwrap();
        let y = scaled_attention_with_sinks(&q, &k, &v, Some(&mask), 1.0, &sinks).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [0.0]);
    }

    #[test]
    fn window_mask_hides_keys_a_window_or_more_behind() {
        let ninf = f32::NEG_INFINITY;
        // Queries at positions 2 and 3 (offset 2), window 2: position 3 sees keys 2 and 3.
        let m = window_mask(2, 2, 2, DType::F32, &Device::Cpu)
            .unwrap()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(&m[..4], &[ninf, 0.0, 0.0, 0.0]);
        assert_eq!(&m[4..], &[ninf, ninf, 0.0, 0.0]);
        assert!(
            window_mask(3, 0, 3, DType::F32, &Device::Cpu)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn mask_is_causal_padded_and_windowed() {
        let ninf = f32::NEG_INFINITY;
        let m = attention_mask(&[3, 2], 3, 0, None, DType::F32, &Device::Cpu)
            .unwrap()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // [b=2, 1, t=3, s=3]: row (b, i) starts at (b*3 + i)*3.
        assert_eq!(&m[3..6], &[0.0, 0.0, ninf]); // seq 0, query 1: causal
        assert_eq!(&m[12..15], &[0.0, 0.0, ninf]); // seq 1, query 1: sees its two real keys
        assert_eq!(&m[15..18], &[0.0, ninf, ninf]); // seq 1, query 2 is padding: key 0 only (no NaN)
        let w = attention_mask(&[4], 4, 0, Some(2), DType::F32, &Device::Cpu)
            .unwrap()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(&w[12..16], &[ninf, ninf, 0.0, 0.0]); // query 3 sees keys 2, 3
        assert!(
            attention_mask(&[1], 1, 5, None, DType::F32, &Device::Cpu)
                .unwrap()
                .is_none()
        );
    }
}
