//! Building blocks shared by the MoE families: linear layers, RMSNorm, rotary embeddings,
//! grouped-query attention with a KV cache, SwiGLU experts, the sparse expert dispatch, and the
//! pre-norm decoder stack that most families are made of.
//!
//! Shapes are annotated as `[b, t, h]` = batch, tokens, hidden.

use std::sync::Arc;

use candle_core::{D, DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;

use super::lora::{LoraDelta, push_named};
use super::router::{RouteCtx, RouterConfig, route};
use super::{Batch, ModelError, ModelInfo, MoeModel, Output, Result};

/// `y = x·Wᵀ (+ b)`, weights as stored in the checkpoint (`[out, in]`), plus an unmerged LoRA
/// update while one is being trained.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<Box<LoraDelta>>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            lora: None,
        }
    }

    pub fn load(vb: &VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self::new(weight, bias))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = cpu::linear(self, x)? {
            return Ok(y);
        }
        let dims = x.dims().to_vec();
        let in_dim = *dims
            .last()
            .ok_or_else(|| ModelError::msg("linear on a scalar"))?;
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, in_dim))?;
        let mut y = if x2.track_op() && x2.device().is_cpu() && !self.weight.track_op() {
            x2.apply_op1(FrozenMatmul {
                weight: self.weight.clone(),
            })?
        } else {
            x2.matmul(&self.weight.t()?)?
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some(lora) = &self.lora {
            y = (y + lora.forward(&x2)?)?;
        }
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-empty") = self.weight.dim(0)?;
        Ok(y.reshape(out_dims)?)
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    /// The weight when [`Linear::forward`] is exactly `x·Wᵀ` (no bias, no LoRA update), for
    /// kernels that read the weight directly. `self` is destructured without `..` so that a new
    /// field is a compile error here until this says whether it keeps the layer plain.
    pub fn plain_weight(&self) -> Option<&Tensor> {
        let Linear { weight, bias, lora } = self;
        (bias.is_none() && lora.is_none()).then_some(weight)
    }
}

/// `x·Wᵀ` for a frozen `W` while `x` carries gradients (training adapters elsewhere in the
/// model). Candle's matmul backward also computes `∂L/∂W`, a full-size product for a weight
/// nobody trains; this op passes back `∂L/∂x = g·W` only. CPU, contiguous `[rows, in]` input;
/// f32 runs on the direct CPU kernels.
struct FrozenMatmul {
    /// `[out, in]`.
    weight: Tensor,
}

impl candle_core::CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage as S;
        let (rows, inp) = layout.shape().dims2()?;
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("frozen-matmul: the input must be contiguous")
        };
        let out = self.weight.dim(0)?;
        if let (S::F32(v), Some(w)) = (storage, cpu::F32Data::of(&self.weight)) {
            let y = cpu::matmul_wt(&v[a..b], w.slice(), (rows, inp, out));
            return Ok((S::F32(y), (rows, out).into()));
        }
        let cpu = Device::Cpu;
        let x = match storage {
            S::F32(v) => Tensor::from_slice(&v[a..b], (rows, inp), &cpu)?,
            S::F16(v) => Tensor::from_slice(&v[a..b], (rows, inp), &cpu)?,
            S::BF16(v) => Tensor::from_slice(&v[a..b], (rows, inp), &cpu)?,
            _ => candle_core::bail!("frozen-matmul: f32, f16 or bf16 only"),
        };
        let y = x.matmul(&self.weight.t()?)?.flatten_all()?;
        let storage = match y.dtype() {
            DType::F32 => S::F32(y.to_vec1()?),
            DType::F16 => S::F16(y.to_vec1()?),
            DType::BF16 => S::BF16(y.to_vec1()?),
            other => candle_core::bail!("frozen-matmul: unexpected {other:?}"),
        };
        Ok((storage, (rows, out).into()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let gc = grad.detach().contiguous()?;
        if let (Some(g), Some(w), Ok((rows, out))) = (
            cpu::F32Data::of(&gc),
            cpu::F32Data::of(&self.weight),
            gc.dims2(),
        ) {
            let inp = self.weight.dim(1)?;
            let dx = cpu::matmul_w(g.slice(), w.slice(), (rows, out, inp));
            return Ok(Some(Tensor::from_vec(dx, (rows, inp), grad.device())?));
        }
        Ok(Some(grad.matmul(&self.weight)?))
    }
}

/// RMSNorm as in HF: `w · (x / sqrt(mean(x²) + eps))`, computed in f32.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn load(vb: &VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = cpu::rms_norm(self, x)? {
            return Ok(y);
        }
        // While training on the CPU with a frozen weight: one fused op.
        let f32_cpu = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu();
        let h = x.dims().last().copied().unwrap_or(0);
        let frozen = f32_cpu(&self.weight) && !self.weight.track_op();
        if x.track_op() && f32_cpu(x) && frozen && h > 0 && self.weight.dims() == [h] {
            return Ok(x.contiguous()?.apply_op1(FrozenRmsNorm(self.clone()))?);
        }
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = xf.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(normed.to_dtype(dtype)?.broadcast_mul(&self.weight)?)
    }
}

/// [`RmsNorm::forward`] with a frozen weight while training on the CPU (f32): one pass over
/// the rows forward, one back for `∂L/∂x` (the weight gets none), where the composite ops
/// take about twenty elementwise passes.
struct FrozenRmsNorm(RmsNorm);

impl candle_core::CustomOp1 for FrozenRmsNorm {
    fn name(&self) -> &'static str {
        "frozen-rms-norm"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let xs = f32_slice(storage, layout)?;
        let Some(w) = cpu::F32Data::of(&self.0.weight) else {
            candle_core::bail!("frozen-rms-norm: the weight must be f32 on the CPU")
        };
        let out = cpu::rms_norm_rows(xs, w.slice(), self.0.eps as f32, false, &[]);
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (xc, gc) = (x.detach().contiguous()?, grad.detach().contiguous()?);
        let (Some(xd), Some(gd), Some(w)) = (
            cpu::F32Data::of(&xc),
            cpu::F32Data::of(&gc),
            cpu::F32Data::of(&self.0.weight),
        ) else {
            candle_core::bail!("frozen-rms-norm: backward takes f32 CPU tensors")
        };
        let dx = cpu::rms_norm_rows(xd.slice(), w.slice(), self.0.eps as f32, true, gd.slice());
        drop((xd, gd, w));
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Precomputed rotary tables for positions `0..max_pos`.
#[derive(Debug)]
pub struct Rotary {
    /// `[max_pos, rot_dim/2]`
    cos: Tensor,
    sin: Tensor,
    /// Pairs adjacent channels (2i, 2i+1) instead of halves (i, i + d/2).
    pub interleaved: bool,
}

impl Rotary {
    /// Standard RoPE with `inv_freq[i] = theta^(-2i/dim)`.
    pub fn new(
        dim: usize,
        max_pos: usize,
        theta: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let inv_freq: Vec<f32> = (0..dim / 2)
            .map(|i| 1.0 / theta.powf(2.0 * i as f64 / dim as f64) as f32)
            .collect();
        Self::from_inv_freq(&inv_freq, 1.0, max_pos, false, dtype, device)
    }

    /// RoPE from explicit inverse frequencies, with `cos`/`sin` multiplied by `scale`
    /// (YaRN's attention factor).
    pub fn from_inv_freq(
        inv_freq: &[f32],
        scale: f32,
        max_pos: usize,
        interleaved: bool,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let half = inv_freq.len();
        let inv = Tensor::from_slice(inv_freq, (1, half), device)?;
        let pos = Tensor::arange(0u32, max_pos as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_pos, 1))?;
        let freqs = pos.broadcast_mul(&inv)?;
        Ok(Self {
            cos: (freqs.cos()? * f64::from(scale))?.to_dtype(dtype)?,
            sin: (freqs.sin()? * f64::from(scale))?.to_dtype(dtype)?,
            interleaved,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Rotates `x` `[b, heads, t, rot_dim]` for positions `offset..offset + t`.
    pub fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let t = x.dim(2)?;
        if offset + t > self.max_positions() {
            return Err(ModelError::msg(format!(
                "position {} is beyond the model's {} positions",
                offset + t,
                self.max_positions()
            )));
        }
        let cos = self.cos.narrow(0, offset, t)?;
        let sin = self.sin.narrow(0, offset, t)?;
        let x = x.contiguous()?;
        // Candle's fused rope kernels have no backward pass; while training (the input carries
        // gradients) the composite versions compute the same rotation differentiably.
        Ok(match (self.interleaved, x.track_op()) {
            (true, false) => candle_nn::rotary_emb::rope_i(&x, &cos, &sin)?,
            (false, false) => candle_nn::rotary_emb::rope(&x, &cos, &sin)?,
            (true, true) => candle_nn::rotary_emb::rope_i_slow(&x, &cos, &sin)?,
            (false, true) => candle_nn::rotary_emb::rope_slow(&x, &cos, &sin)?,
        })
    }
}

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
    if let Some(y) = cpu::attention(q, k, v, mask, scale)? {
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
}

impl Attention {
    pub fn load(
        vb: &VarBuilder,
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
        })
    }

    pub fn forward(
        &mut self,
        x: &Tensor,
        mask: Option<&Tensor>,
        offset: usize,
        use_cache: bool,
    ) -> Result<Tensor> {
        if let Some(op) = FrozenAttention::of(self, x, mask, offset, use_cache)? {
            return Ok(x.apply_op1(op)?);
        }
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
        let y = scaled_attention(&q, &k, &v, mask, 1.0 / (d as f64).sqrt())?;
        let y = y.transpose(1, 2)?.reshape((b, t, nh * d))?;
        self.o.forward(&y)
    }

    pub fn clear_cache(&mut self) {
        self.cache = None;
    }
}

/// [`Attention::forward`] as one op while training on the CPU (f32) with all four projections
/// frozen: the forward pass runs the direct CPU kernels, and the backward pass gives `∂L/∂x`
/// only (recomputing the activations), where the composite tensor ops would cost some sixty
/// small ops and their backward passes per layer. Covers no KV cache, positions from 0, no
/// clamping, and q / k norms over the whole projection or none.
struct FrozenAttention {
    /// `[out, in]` each.
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    /// Rotary tables for positions `0..t`, `[t, head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
    interleaved: bool,
    /// `[b, 1, t, t]`.
    mask: Option<Tensor>,
    nh: usize,
    nkv: usize,
    d: usize,
}

impl FrozenAttention {
    /// The op for `attn` on `x` `[b, t, hidden]`, or `None` when the tensor path must run
    /// (`x` tracks no gradient, a projection is adapted or has a bias, another device or dtype,
    /// a KV cache, per-head norms, clamping).
    fn of(
        attn: &Attention,
        x: &Tensor,
        mask: Option<&Tensor>,
        offset: usize,
        use_cache: bool,
    ) -> Result<Option<Self>> {
        let f32_cpu = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu();
        let plain = |l: &Linear| {
            l.plain_weight()
                .filter(|w| f32_cpu(w) && !w.track_op())
                .cloned()
        };
        if !x.track_op() || !f32_cpu(x) || use_cache || offset != 0 || attn.cfg.clip_qkv.is_some() {
            return Ok(None);
        }
        let Ok((b, t, hidden)) = x.dims3() else {
            return Ok(None);
        };
        let (nh, nkv, d) = (attn.cfg.num_heads, attn.cfg.num_kv_heads, attn.cfg.head_dim);
        let shapes = nh > 0 && nkv > 0 && nh % nkv == 0 && d % 2 == 0 && t > 0 && b > 0;
        let rot = &attn.rotary;
        if !shapes || rot.cos.dims() != [rot.max_positions(), d / 2] || t > rot.max_positions() {
            return Ok(None);
        }
        let (Some(q), Some(k), Some(v), Some(o)) = (
            plain(&attn.q),
            plain(&attn.k),
            plain(&attn.v),
            plain(&attn.o),
        ) else {
            return Ok(None);
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
                (Some(qn.clone()), Some(kn.clone()))
            }
            _ => return Ok(None),
        };
        let mask = match mask {
            Some(m) if m.dims() != [b, 1, t, t] || !f32_cpu(m) || m.track_op() => return Ok(None),
            m => m.map(|m| m.contiguous()).transpose()?,
        };
        if !dims_ok || !f32_cpu(&rot.cos) {
            return Ok(None);
        }
        Ok(Some(Self {
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

    /// Runs `f` on the op's data for an input of shape `[b, t, hidden]`.
    fn with_data<R>(
        &self,
        dims: &[usize],
        f: impl FnOnce(&cpu::AttnData<'_>, &cpu::AttnShape) -> R,
    ) -> candle_core::Result<R> {
        let &[b, t, hidden] = dims else {
            candle_core::bail!("frozen-attention: expected [b, t, hidden], got {dims:?}")
        };
        fn lock(t: &Tensor) -> candle_core::Result<cpu::F32Data<'_>> {
            cpu::F32Data::of(t)
                .ok_or_else(|| candle_core::Error::Msg("frozen-attention: f32 CPU data".into()))
        }
        let (q, k, v, o) = (
            lock(&self.q)?,
            lock(&self.k)?,
            lock(&self.v)?,
            lock(&self.o)?,
        );
        let (cos, sin) = (lock(&self.cos)?, lock(&self.sin)?);
        let qn = self.q_norm.as_ref().map(|n| lock(&n.weight)).transpose()?;
        let kn = self.k_norm.as_ref().map(|n| lock(&n.weight)).transpose()?;
        let mask = self.mask.as_ref().map(lock).transpose()?;
        let eps = |n: &Option<RmsNorm>| n.as_ref().map_or(0.0, |n| n.eps as f32);
        let data = cpu::AttnData {
            q: q.slice(),
            k: k.slice(),
            v: v.slice(),
            o: o.slice(),
            q_norm: qn.as_ref().map(|w| (w.slice(), eps(&self.q_norm))),
            k_norm: kn.as_ref().map(|w| (w.slice(), eps(&self.k_norm))),
            cos: cos.slice(),
            sin: sin.slice(),
            mask: mask.as_ref().map(|m| m.slice()),
        };
        let shape = cpu::AttnShape {
            b,
            t,
            hidden,
            nh: self.nh,
            nkv: self.nkv,
            d: self.d,
            scale: (1.0 / (self.d as f64).sqrt()) as f32,
            interleaved: self.interleaved,
        };
        Ok(f(&data, &shape))
    }
}

impl candle_core::CustomOp1 for FrozenAttention {
    fn name(&self) -> &'static str {
        "frozen-attention"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let xs = f32_slice(storage, layout)?;
        let out = self.with_data(layout.dims(), |w, sh| cpu::attn_forward(xs, w, sh))?;
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (xc, gc) = (x.detach().contiguous()?, grad.detach().contiguous()?);
        let (Some(xd), Some(gd)) = (cpu::F32Data::of(&xc), cpu::F32Data::of(&gc)) else {
            candle_core::bail!("frozen-attention: backward takes f32 CPU tensors")
        };
        let dx = self.with_data(x.dims(), |w, sh| {
            cpu::attn_backward(xd.slice(), gd.slice(), w, sh)
        })?;
        drop((xd, gd));
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// A SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct SwiGlu {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    /// Module names of gate, up and down in the checkpoint (`gate_proj`… or Mixtral's `w1`…).
    pub names: [&'static str; 3],
}

impl SwiGlu {
    /// Loads with HF's usual names `gate_proj` / `up_proj` / `down_proj`.
    pub fn load(vb: &VarBuilder, hidden: usize, inter: usize) -> Result<Self> {
        Self::load_named(vb, hidden, inter, ["gate_proj", "up_proj", "down_proj"])
    }

    /// Loads with explicit names for gate, up and down (Mixtral: `w1`, `w3`, `w2`).
    pub fn load_named(
        vb: &VarBuilder,
        hidden: usize,
        inter: usize,
        names: [&'static str; 3],
    ) -> Result<Self> {
        Ok(Self {
            gate: Linear::load(&vb.pp(names[0]), hidden, inter, false)?,
            up: Linear::load(&vb.pp(names[1]), hidden, inter, false)?,
            down: Linear::load(&vb.pp(names[2]), inter, hidden, false)?,
            names,
        })
    }

    /// The three projections with their module names.
    pub fn linears_mut(&mut self) -> [(&'static str, &mut Linear); 3] {
        let [g, u, d] = self.names;
        [(g, &mut self.gate), (u, &mut self.up), (d, &mut self.down)]
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = candle_nn::ops::silu(&self.gate.forward(x)?)?;
        self.down.forward(&(g * self.up.forward(x)?)?)
    }
}

/// A shared expert that runs on every token, optionally scaled by `sigmoid(gate·x)` (Qwen2-MoE).
#[derive(Debug, Clone)]
pub struct SharedExpert {
    pub mlp: SwiGlu,
    pub gate: Option<Linear>,
}

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
    /// the routing and returns `None`.
    pub fn forward(
        &self,
        x: &Tensor,
        ctx: &mut RouteCtx<'_>,
        route_only: bool,
    ) -> Result<Option<Tensor>> {
        let logits = if self.router_fp32 {
            self.router.forward(&x.to_dtype(DType::F32)?)?
        } else {
            self.router.forward(x)?
        };
        // ^ [tokens, n_experts]
        let decision = route(self.layer, &logits, &self.router_cfg, ctx)?;
        if route_only {
            return Ok(None);
        }
        if self.experts.is_empty() {
            return Err(ModelError::msg(format!(
                "layer {}: experts were not loaded (model loaded for routing capture only)",
                self.layer
            )));
        }
        let mut out =
            dispatch_experts(x, &decision.indices_host, &decision.weights, &self.experts)?;
        if let Some(shared) = &self.shared {
            let mut s = shared.mlp.forward(x)?;
            if let Some(g) = &shared.gate {
                s = s.broadcast_mul(&candle_nn::ops::sigmoid(&g.forward(x)?)?)?;
            }
            out = (out + s)?;
        }
        Ok(Some(out))
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
    if let Some(y) = cpu::dispatch_experts(x, k, &slots, weights, experts)? {
        return Ok(y);
    }
    // While training on the CPU, the experts without a trainable update run as one op; the
    // others (below) add their outputs to its result.
    let frozen = frozen_experts(x, k, &slots, weights, experts)?;
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

/// The weighted sum of the outputs of the experts that are plain (no bias, no LoRA update)
/// f32 SwiGLUs on the CPU, as one [`FrozenExperts`] op, and which experts it covers; `None`
/// when there are none or the inputs don't qualify.
fn frozen_experts(
    x: &Tensor,
    k: usize,
    slots: &[Vec<u32>],
    weights: &Tensor,
    experts: &[SwiGlu],
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
        .map(|(e, s)| !s.is_empty() && cpu::ExpertData::of(e, hidden).is_some())
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
        experts: experts.to_vec(),
    };
    let y = x.contiguous()?.apply_op2(&weights.contiguous()?, op)?;
    Ok(Some((y, frozen)))
}

/// `Σ w·expert(x)` per token over a set of frozen SwiGLU experts, for the training path
/// (CPU, f32): the forward pass is the direct CPU kernel's, and the backward pass gives
/// `∂L/∂x` and `∂L/∂w` (the routing weights depend on `x` through the router) but nothing
/// for the experts' weights. Composed from tensor ops, every expert would cost a dozen small
/// ops and their backward passes.
struct FrozenExperts {
    /// Experts per token.
    k: usize,
    /// `slots[e]`: the positions in the row-major `[tokens, k]` choice routed to expert `e`
    /// and computed here (empty for the experts left to the caller).
    slots: Vec<Vec<u32>>,
    experts: Vec<SwiGlu>,
}

impl FrozenExperts {
    fn expert_data(&self, hidden: usize) -> candle_core::Result<Vec<Option<cpu::ExpertData<'_>>>> {
        cpu::expert_data(&self.experts, &self.slots, hidden).ok_or_else(|| {
            candle_core::Error::Msg("frozen-experts: an expert is not a plain f32 SwiGLU".into())
        })
    }
}

/// The contiguous f32 data of a CPU storage.
fn f32_slice<'a>(
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (candle_core::CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("expected contiguous f32 data"),
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
        let out = cpu::experts_forward(xs, ws, hidden, self.k, &self.slots, &data);
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
        let (Some(xd), Some(wd), Some(gd)) = (
            cpu::F32Data::of(&xc),
            cpu::F32Data::of(&wc),
            cpu::F32Data::of(&gc),
        ) else {
            candle_core::bail!("frozen-experts: backward takes f32 CPU tensors")
        };
        let data = self.expert_data(hidden)?;
        let (dx, dw) = cpu::experts_backward(
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

/// A decoder layer's feed-forward part.
#[derive(Debug, Clone)]
pub enum FeedForward {
    Dense(SwiGlu),
    Moe(MoeBlock),
}

/// An attention implementation usable in [`DecoderStack`].
pub trait AttentionLayer: Send + std::fmt::Debug {
    fn forward(
        &mut self,
        x: &Tensor,
        mask: Option<&Tensor>,
        offset: usize,
        use_cache: bool,
    ) -> Result<Tensor>;
    fn clear_cache(&mut self);
    /// Every projection with its module name relative to `self_attn`.
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

/// Direct CPU kernels for the inference hot path (f32 tensors on the CPU that track no
/// gradient), and the forward and backward kernels of the training ops for frozen parts
/// ([`FrozenExperts`], [`FrozenAttention`], [`FrozenRmsNorm`], [`FrozenMatmul`]).
///
/// Each inference function returns `Ok(None)` when its inputs don't qualify, and the caller then
/// takes the plain tensor-op path, which stays the reference (and the path for other devices,
/// dtypes and trainable weights). The kernels compute the same operations in the same order as
/// that path, with the `gemm` crate's kernels that candle's CPU matmul uses, but with each small
/// matmul running on one thread inside a task of the thread pool instead of split across all
/// threads.
mod cpu {
    use std::cell::RefCell;
    use std::ops::Range;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use candle_core::cpu::kernels::VecOps;
    use candle_core::{CpuStorage, DType, Storage, StorageRef, Tensor};

    use super::{Linear, Result, RmsNorm, SwiGlu};

    /// A read lock on an f32 CPU tensor's contiguous data.
    pub(super) struct F32Data<'a> {
        storage: StorageRef<'a>,
        range: Range<usize>,
    }

    impl<'a> F32Data<'a> {
        /// `None` unless `t` is an f32 tensor on the CPU, contiguous, and tracks no gradient.
        pub(super) fn of(t: &'a Tensor) -> Option<Self> {
            if t.dtype() != DType::F32 || t.track_op() || !t.device().is_cpu() {
                return None;
            }
            let (storage, layout) = t.storage_and_layout();
            let (start, end) = layout.contiguous_offsets()?;
            matches!(&*storage, Storage::Cpu(CpuStorage::F32(_))).then_some(Self {
                storage,
                range: start..end,
            })
        }

        pub(super) fn slice(&self) -> &[f32] {
            match &*self.storage {
                Storage::Cpu(CpuStorage::F32(v)) => &v[self.range.clone()],
                _ => unreachable!("checked in F32Data::of"),
            }
        }
    }

    /// Runs `f` on every item, spread over candle's CPU worker threads (the pool its elementwise
    /// ops run on, so that no second set of threads competes for the cores). The threads take
    /// one item at a time, so a thread that is held up delays the others by one item at most.
    fn par_each<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync) {
        let cells: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
        let next = AtomicUsize::new(0);
        let pool = candle_core::utils::barrier_pool();
        // One unit per thread (run inline when called from inside the pool); each unit takes
        // items until none are left.
        pool.execute_chunked(pool.n_workers() + 1, |_| {
            while let Some(cell) = cells.get(next.fetch_add(1, Ordering::Relaxed)) {
                let item = cell.lock().ok().and_then(|mut c| c.take());
                if let Some(item) = item {
                    f(item);
                }
            }
        });
    }

    thread_local! {
        /// Per-thread scratch space, reused across calls.
        static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }

    /// Runs `f` with `len` floats of scratch space (contents unspecified): this thread's
    /// reusable buffer, or a temporary one for more than `KEEP` floats (16 MiB), so that the
    /// threads don't keep large buffers.
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
        const KEEP: usize = 1 << 22;
        if len > KEEP {
            return f(&mut vec![0.0; len]);
        }
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < len {
                s.resize(len, 0.0);
            }
            f(&mut s[..len])
        })
    }

    /// A destination that tasks write disjoint parts of.
    #[derive(Clone, Copy)]
    struct SharedMut(*mut f32);

    // SAFETY: only used to hand disjoint parts of one buffer to tasks (see its uses).
    unsafe impl Send for SharedMut {}
    unsafe impl Sync for SharedMut {}

    impl SharedMut {
        fn at(self, offset: usize) -> *mut f32 {
            self.0.wrapping_add(offset)
        }
    }

    /// A matrix operand: its data and its (row, column) strides.
    #[derive(Clone, Copy)]
    struct Mat<'a> {
        data: &'a [f32],
        rs: usize,
        cs: usize,
    }

    impl<'a> Mat<'a> {
        /// Row-major `[rows, cols]`.
        fn rows(data: &'a [f32], cols: usize) -> Self {
            Self {
                data,
                rs: cols,
                cs: 1,
            }
        }

        /// Column-major `[rows, cols]`.
        fn cols(data: &'a [f32], rows: usize) -> Self {
            Self {
                data,
                rs: 1,
                cs: rows,
            }
        }

        /// The transpose of a row-major `[cols, rows]` matrix (an `[out, in]` weight as `Wᵀ`).
        fn t(data: &'a [f32], rows: usize) -> Self {
            Self::cols(data, rows)
        }

        fn reaches(&self, rows: usize, cols: usize) -> bool {
            rows == 0 || cols == 0 || self.data.len() > (rows - 1) * self.rs + (cols - 1) * self.cs
        }
    }

    /// `dst[m, n] = a[m, k] · b[k, n]` on the calling thread, `dst` with strides `(dst_rs,
    /// dst_cs)`. For a column-major `dst` the `gemm` kernels read `a` best column-major and `b`
    /// with unit row stride (as `Wᵀ` for a row-major `W`); a row-major `dst` is computed as
    /// `dstᵀ = bᵀ·aᵀ`, where `a` is best row-major and `b` is repacked unless row-major.
    fn matmul(
        dst: &mut [f32],
        dst_strides: (usize, usize),
        a: Mat<'_>,
        b: Mat<'_>,
        mnk: (usize, usize, usize),
    ) {
        let (m, n, _) = mnk;
        let (rs, cs) = dst_strides;
        assert!(m == 0 || n == 0 || dst.len() > (m - 1) * rs + (n - 1) * cs);
        // SAFETY: `dst` holds every element the strides reach.
        unsafe { matmul_to(dst.as_mut_ptr(), dst_strides, a, b, mnk) }
    }

    /// [`matmul`] into a raw destination.
    ///
    /// # Safety
    /// `dst` must be valid for writes at every `i·dst_rs + j·dst_cs`, `i < m`, `j < n`, and no
    /// other thread may access those elements during the call.
    unsafe fn matmul_to(
        dst: *mut f32,
        (dst_rs, dst_cs): (usize, usize),
        a: Mat<'_>,
        b: Mat<'_>,
        mnk: (usize, usize, usize),
    ) {
        // SAFETY: passed on from the caller.
        unsafe { gemm_to(dst, (dst_rs, dst_cs), a, b, mnk, false) }
    }

    /// [`matmul_to`], adding the product to `dst`'s contents when `acc` is set.
    ///
    /// # Safety
    /// As for [`matmul_to`].
    unsafe fn gemm_to(
        dst: *mut f32,
        (dst_rs, dst_cs): (usize, usize),
        a: Mat<'_>,
        b: Mat<'_>,
        (m, n, k): (usize, usize, usize),
        acc: bool,
    ) {
        assert!(a.reaches(m, k) && b.reaches(k, n));
        // SAFETY: the assert keeps the operands' reads in bounds, the caller `dst`'s writes.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst,
                dst_cs as isize,
                dst_rs as isize,
                acc,
                a.data.as_ptr(),
                a.cs as isize,
                a.rs as isize,
                b.data.as_ptr(),
                b.cs as isize,
                b.rs as isize,
                if acc { 1.0 } else { 0.0 },
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    }

    /// An expert's three weights, `[inter, hidden]`, `[inter, hidden]`, `[hidden, inter]`.
    pub(super) struct ExpertData<'a> {
        gate: F32Data<'a>,
        up: F32Data<'a>,
        down: F32Data<'a>,
        inter: usize,
    }

    impl<'a> ExpertData<'a> {
        pub(super) fn of(e: &'a SwiGlu, hidden: usize) -> Option<Self> {
            let (g, u, d) = (
                e.gate.plain_weight()?,
                e.up.plain_weight()?,
                e.down.plain_weight()?,
            );
            let inter = g.dims().first().copied()?;
            let shapes_ok = g.dims() == [inter, hidden]
                && u.dims() == [inter, hidden]
                && d.dims() == [hidden, inter];
            shapes_ok.then_some(())?;
            Some(Self {
                gate: F32Data::of(g)?,
                up: F32Data::of(u)?,
                down: F32Data::of(d)?,
                inter,
            })
        }
    }

    /// [`Linear::forward`] of a plain layer on at least `MIN_ROWS` rows, split into blocks of
    /// rows across the worker threads.
    pub fn linear(layer: &Linear, x: &Tensor) -> Result<Option<Tensor>> {
        const MIN_ROWS: usize = 32;
        let Some(w) = layer.plain_weight() else {
            return Ok(None);
        };
        let (Ok((n, k)), Some(&in_dim)) = (w.dims2(), x.dims().last()) else {
            return Ok(None);
        };
        let m = x.elem_count() / k.max(1);
        if in_dim != k || m < MIN_ROWS || n == 0 || k == 0 {
            return Ok(None);
        }
        let (Some(xd), Some(wd)) = (F32Data::of(x), F32Data::of(w)) else {
            return Ok(None);
        };
        let (xs, ws) = (xd.slice(), wd.slice());
        let mut out = vec![0f32; m * n];
        // Blocks of output columns, about four per thread: each block's rows of `W` are
        // repacked once (see `matmul`) and `x` is read in place.
        let threads = candle_core::utils::get_num_threads().max(1);
        let block = n.div_ceil(4 * threads).next_multiple_of(16);
        let dst = SharedMut(out.as_mut_ptr());
        let starts: Vec<usize> = (0..n).step_by(block).collect();
        par_each(starts, |c0| {
            let cols = block.min(n - c0);
            let w = Mat::t(&ws[c0 * k..(c0 + cols) * k], k);
            // SAFETY: `out` is `[m, n]` row-major and each task writes only its own columns
            // `c0..c0 + cols` of it.
            unsafe { matmul_to(dst.at(c0), (n, 1), Mat::rows(xs, k), w, (m, cols, k)) };
        });
        drop((xd, wd));
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("checked above") = n;
        Ok(Some(Tensor::from_vec(out, dims, x.device())?))
    }

    /// [`RmsNorm::forward`] with the same f32 operations, one pass per row, blocks of rows
    /// across the worker threads.
    pub fn rms_norm(norm: &RmsNorm, x: &Tensor) -> Result<Option<Tensor>> {
        let (Some(&h), [wh]) = (x.dims().last(), norm.weight.dims()) else {
            return Ok(None);
        };
        if h == 0 || *wh != h {
            return Ok(None);
        }
        let (Some(xd), Some(wd)) = (F32Data::of(x), F32Data::of(&norm.weight)) else {
            return Ok(None);
        };
        let (xs, ws) = (xd.slice(), wd.slice());
        // `mean_keepdim`, `+ eps`, `sqrt`, `broadcast_div` and `broadcast_mul` as candle does
        // them in f32: the sum by `vec_reduce_sum`, the affine ops as `v * mul + add`.
        let (inv_h, eps) = ((1.0 / h as f64) as f32, norm.eps as f32);
        let row = |src: &[f32], dst: &mut [f32]| {
            dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v * v);
            let mut sum = 0f32;
            // SAFETY: `dst` holds `h` elements.
            unsafe { f32::vec_reduce_sum(dst.as_ptr(), &mut sum, h) };
            let den = ((sum * inv_h + 0.0) * 1.0 + eps).sqrt();
            for ((d, &v), &w) in dst.iter_mut().zip(src).zip(ws) {
                *d = v / den * w;
            }
        };
        let mut out = vec![0f32; xs.len()];
        let rows = xs.len() / h;
        let threads = candle_core::utils::get_num_threads().max(1);
        let block = rows.div_ceil(4 * threads).max(64 * 1024 / h).max(1);
        let blocks: Vec<_> = out.chunks_mut(block * h).enumerate().collect();
        par_each(blocks, |(i, dst)| {
            let src = &xs[i * block * h..i * block * h + dst.len()];
            for (s, d) in src.chunks_exact(h).zip(dst.chunks_exact_mut(h)) {
                row(s, d);
            }
        });
        drop((xd, wd));
        Ok(Some(Tensor::from_vec(out, x.dims(), x.device())?))
    }

    /// [`super::dispatch_experts`] with the experts side by side on the thread pool; `slots[e]`
    /// lists the positions in the row-major `[tokens, k]` choice of the tokens routed to `e`.
    pub fn dispatch_experts(
        x: &Tensor,
        k: usize,
        slots: &[Vec<u32>],
        weights: &Tensor,
        experts: &[SwiGlu],
    ) -> Result<Option<Tensor>> {
        let Ok((tokens, hidden)) = x.dims2() else {
            return Ok(None);
        };
        if tokens == 0 || hidden == 0 {
            return Ok(None);
        }
        let (Some(xd), Some(wd)) = (F32Data::of(x), F32Data::of(weights)) else {
            return Ok(None);
        };
        if weights.elem_count() != tokens * k {
            return Ok(None);
        }
        let Some(data) = expert_data(experts, slots, hidden) else {
            return Ok(None);
        };
        let out = experts_forward(xd.slice(), wd.slice(), hidden, k, slots, &data);
        drop((xd, wd, data));
        Ok(Some(Tensor::from_vec(out, (tokens, hidden), x.device())?))
    }

    /// The weights of the experts that have tokens in `slots` (`None` for the others), or
    /// `None` if one of those is not a plain f32 SwiGLU on the CPU.
    pub(super) fn expert_data<'a>(
        experts: &'a [SwiGlu],
        slots: &[Vec<u32>],
        hidden: usize,
    ) -> Option<Vec<Option<ExpertData<'a>>>> {
        experts
            .iter()
            .zip(slots)
            .map(|(e, s)| match s.is_empty() {
                true => Some(None),
                false => ExpertData::of(e, hidden).map(Some),
            })
            .collect()
    }

    /// Rows of a `[slots, hidden]` buffer that hold each expert's slots one expert after the
    /// other: `row_of_slot[pos]` for every position in `slots` (`u32::MAX` for positions in
    /// none), the total row count, and each expert's first row.
    fn slot_rows(slots: &[Vec<u32>], positions: usize) -> (Vec<u32>, usize, Vec<usize>) {
        let mut row_of_slot = vec![u32::MAX; positions];
        let mut first = Vec::with_capacity(slots.len());
        let mut row = 0usize;
        for s in slots {
            first.push(row);
            for (i, &pos) in s.iter().enumerate() {
                row_of_slot[pos as usize] = (row + i) as u32;
            }
            row += s.len();
        }
        (row_of_slot, row, first)
    }

    /// Each token's sum over the rows of `ys` of its slots, in increasing expert order (as
    /// `index_add` adds the expert-ordered rows), starting from zero.
    fn sum_rows_per_token(ys: &[f32], row_of_slot: &[u32], hidden: usize, k: usize) -> Vec<f32> {
        let tokens = row_of_slot.len() / k.max(1);
        let mut out = vec![0f32; tokens * hidden];
        let token_rows: Vec<_> = out.chunks_mut(hidden).enumerate().collect();
        par_each(token_rows, |(t, dst)| {
            let mut rows: Vec<u32> = row_of_slot[t * k..(t + 1) * k].to_vec();
            // Rows are numbered in expert order, so sorting rows sorts by expert.
            rows.sort_unstable();
            for r in rows.into_iter().take_while(|&r| r != u32::MAX) {
                let src = &ys[r as usize * hidden..(r as usize + 1) * hidden];
                dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
            }
        });
        out
    }

    /// `Σ_e w·expert_e(x)` per token over the experts in `slots` (`xs` `[tokens, hidden]`,
    /// `ws` `[tokens, k]`, both row-major); positions in no expert's list add nothing.
    pub(super) fn experts_forward(
        xs: &[f32],
        ws: &[f32],
        hidden: usize,
        k: usize,
        slots: &[Vec<u32>],
        data: &[Option<ExpertData<'_>>],
    ) -> Vec<f32> {
        // Each expert's weighted outputs go to its own block of rows of `ys`, in expert order.
        let (row_of_slot, rows, _) = slot_rows(slots, ws.len());
        let mut ys = vec![0f32; rows * hidden];
        let mut jobs = Vec::new();
        let mut rest = ys.as_mut_slice();
        for (d, s) in data.iter().zip(slots) {
            let (block, tail) = rest.split_at_mut(s.len() * hidden);
            rest = tail;
            if let Some(d) = d {
                jobs.push((d, s.as_slice(), block));
            }
        }
        // The busiest experts first, so that the pool's threads finish together.
        jobs.sort_by_key(|(_, s, _)| std::cmp::Reverse(s.len()));
        par_each(jobs, |(d, s, block)| {
            let (n, inter) = (s.len(), d.inter);
            with_scratch(n * (hidden + 2 * inter), |scratch| {
                // Column-major (one column per token) operands, which the kernels read
                // without repacking.
                let (xe, rest) = scratch.split_at_mut(n * hidden);
                let (g, u) = rest.split_at_mut(n * inter);
                for (i, &pos) in s.iter().enumerate() {
                    let t = pos as usize / k;
                    let src = &xs[t * hidden..(t + 1) * hidden];
                    xe[i..]
                        .iter_mut()
                        .step_by(n)
                        .zip(src)
                        .for_each(|(d, &v)| *d = v);
                }
                let xm = Mat::cols(xe, n);
                let col_major = (1, n);
                let (gw, uw) = (Mat::t(d.gate.slice(), hidden), Mat::t(d.up.slice(), hidden));
                matmul(g, col_major, xm, gw, (n, inter, hidden));
                matmul(u, col_major, xm, uw, (n, inter, hidden));
                for (g, &u) in g.iter_mut().zip(u.iter()) {
                    // candle's silu, then the product, as in `SwiGlu::forward`.
                    *g = *g / (1.0 + (-*g).exp()) * u;
                }
                // The output column-major too (in `xe`'s space), then weighted into `block`'s
                // rows: a row-major destination would make the kernels repack the weight.
                let y = xe;
                let dw = Mat::t(d.down.slice(), inter);
                matmul(y, col_major, Mat::cols(g, n), dw, (n, hidden, inter));
                for (i, (dst, &pos)) in block.chunks_exact_mut(hidden).zip(s).enumerate() {
                    let w = ws[pos as usize];
                    let src = y[i..].iter().step_by(n);
                    dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v * w);
                }
            });
        });
        sum_rows_per_token(&ys, &row_of_slot, hidden, k)
    }

    /// The backward pass of [`experts_forward`] for the output gradient `gs` `[tokens,
    /// hidden]`: `(∂L/∂x [tokens, hidden], ∂L/∂w [tokens, k])`, with zeros for positions in no
    /// expert's list. The experts' weights get no gradient; their activations are recomputed.
    pub(super) fn experts_backward(
        xs: &[f32],
        ws: &[f32],
        gs: &[f32],
        hidden: usize,
        k: usize,
        slots: &[Vec<u32>],
        data: &[Option<ExpertData<'_>>],
    ) -> (Vec<f32>, Vec<f32>) {
        let (row_of_slot, rows, first) = slot_rows(slots, ws.len());
        // Per slot row: its ∂L/∂x contribution, and its ∂L/∂w.
        let mut dxs = vec![0f32; rows * hidden];
        let mut dws = vec![0f32; rows];
        let mut jobs = Vec::new();
        let (mut rest, mut rest_w) = (dxs.as_mut_slice(), dws.as_mut_slice());
        for (d, s) in data.iter().zip(slots) {
            let (block, tail) = rest.split_at_mut(s.len() * hidden);
            let (block_w, tail_w) = rest_w.split_at_mut(s.len());
            (rest, rest_w) = (tail, tail_w);
            if let Some(d) = d {
                jobs.push((d, s.as_slice(), block, block_w));
            }
        }
        jobs.sort_by_key(|(_, s, _, _)| std::cmp::Reverse(s.len()));
        par_each(jobs, |(d, s, block, block_w)| {
            let (n, inter) = (s.len(), d.inter);
            let (gate, up, down) = (d.gate.slice(), d.up.slice(), d.down.slice());
            with_scratch(n * (2 * hidden + 3 * inter), |scratch| {
                // All row-major, one row per slot.
                let (xe, rest) = scratch.split_at_mut(n * hidden);
                let (y, rest) = rest.split_at_mut(n * hidden);
                let (g, rest) = rest.split_at_mut(n * inter);
                let (u, h) = rest.split_at_mut(n * inter);
                for (dst, &pos) in xe.chunks_exact_mut(hidden).zip(s) {
                    let t = pos as usize / k;
                    dst.copy_from_slice(&xs[t * hidden..(t + 1) * hidden]);
                }
                let row_major = |cols: usize| (cols, 1);
                let xm = Mat::rows(xe, hidden);
                matmul(
                    g,
                    row_major(inter),
                    xm,
                    Mat::t(gate, hidden),
                    (n, inter, hidden),
                );
                matmul(
                    u,
                    row_major(inter),
                    xm,
                    Mat::t(up, hidden),
                    (n, inter, hidden),
                );
                for ((h, &g), &u) in h.iter_mut().zip(g.iter()).zip(u.iter()) {
                    *h = g / (1.0 + (-g).exp()) * u;
                }
                let hm = Mat::rows(h, inter);
                matmul(
                    y,
                    row_major(hidden),
                    hm,
                    Mat::t(down, inter),
                    (n, hidden, inter),
                );
                // ∂L/∂w = ⟨expert(x), g⟩; ∂L/∂(expert output) = w·g, in place of the output.
                for ((yr, dw), &pos) in y.chunks_exact_mut(hidden).zip(block_w).zip(s) {
                    let t = pos as usize / k;
                    let gr = &gs[t * hidden..(t + 1) * hidden];
                    *dw = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                    let w = ws[pos as usize];
                    yr.iter_mut().zip(gr).for_each(|(d, &g)| *d = w * g);
                }
                // ∂L/∂h = dy·W_down.
                let dy = Mat::rows(y, hidden);
                matmul(
                    h,
                    row_major(inter),
                    dy,
                    Mat::rows(down, inter),
                    (n, inter, hidden),
                );
                // h = silu(g)·u: ∂L/∂g = dh·u·silu'(g), ∂L/∂u = dh·silu(g), with
                // silu'(g) = σ(g) + silu(g)·(1 - σ(g)).
                for ((dh, g), u) in h.iter().zip(g.iter_mut()).zip(u.iter_mut()) {
                    let sig = 1.0 / (1.0 + (-*g).exp());
                    let silu = *g / (1.0 + (-*g).exp());
                    let (dg, du) = (dh * *u * (sig + silu * (1.0 - sig)), dh * silu);
                    (*g, *u) = (dg, du);
                }
                // ∂L/∂x = dg·W_gate + du·W_up.
                let (dg, du) = (Mat::rows(g, inter), Mat::rows(u, inter));
                matmul(
                    block,
                    row_major(hidden),
                    dg,
                    Mat::rows(gate, hidden),
                    (n, hidden, inter),
                );
                matmul(
                    xe,
                    row_major(hidden),
                    du,
                    Mat::rows(up, hidden),
                    (n, hidden, inter),
                );
                block.iter_mut().zip(xe.iter()).for_each(|(a, &b)| *a += b);
            });
        });
        let dx = sum_rows_per_token(&dxs, &row_of_slot, hidden, k);
        let mut dw = vec![0f32; ws.len()];
        for (e, s) in slots.iter().enumerate() {
            for (i, &pos) in s.iter().enumerate() {
                dw[pos as usize] = dws[first[e] + i];
            }
        }
        (dx, dw)
    }

    /// `dst[m, n] (+)= a[m, k] · b[k, n]`, `dst` row-major, in blocks of rows across the
    /// worker threads (each block one single-threaded product); adds to `dst` when `acc`.
    fn par_matmul(
        dst: &mut [f32],
        acc: bool,
        a: Mat<'_>,
        b: Mat<'_>,
        (m, n, k): (usize, usize, usize),
    ) {
        assert!(dst.len() >= m * n && a.reaches(m, k));
        if m == 0 || n == 0 {
            return;
        }
        let threads = candle_core::utils::get_num_threads().max(1);
        let block = m.div_ceil(4 * threads).max(16);
        let out = SharedMut(dst.as_mut_ptr());
        let starts: Vec<usize> = (0..m).step_by(block).collect();
        par_each(starts, |r0| {
            let rows = block.min(m - r0);
            let a = Mat {
                data: &a.data[r0 * a.rs..],
                ..a
            };
            // SAFETY: each task writes only its own rows `r0..r0 + rows` of `dst`.
            unsafe { gemm_to(out.at(r0 * n), (n, 1), a, b, (rows, n, k), acc) };
        });
    }

    /// `x·Wᵀ` for `xs` `[m, k]` and an `[n, k]` weight, in blocks of rows across the threads.
    pub(super) fn matmul_wt(xs: &[f32], ws: &[f32], (m, k, n): (usize, usize, usize)) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        par_matmul(&mut y, false, Mat::rows(xs, k), Mat::t(ws, k), (m, n, k));
        y
    }

    /// `g·W` for `gs` `[m, n]` and an `[n, k]` weight, in blocks of rows across the threads.
    pub(super) fn matmul_w(gs: &[f32], ws: &[f32], (m, n, k): (usize, usize, usize)) -> Vec<f32> {
        let mut y = vec![0f32; m * k];
        par_matmul(&mut y, false, Mat::rows(gs, n), Mat::rows(ws, k), (m, k, n));
        y
    }

    /// Shapes and constants of a frozen attention block (see `super::FrozenAttention`).
    pub(super) struct AttnShape {
        pub b: usize,
        pub t: usize,
        pub hidden: usize,
        pub nh: usize,
        pub nkv: usize,
        pub d: usize,
        pub scale: f32,
        pub interleaved: bool,
    }

    /// The data of a frozen attention block: projection weights (`[out, in]`), the q / k
    /// RMSNorm weights and epsilons, the rotary tables `[t, d/2]` and the mask `[b, 1, t, t]`.
    pub(super) struct AttnData<'a> {
        pub q: &'a [f32],
        pub k: &'a [f32],
        pub v: &'a [f32],
        pub o: &'a [f32],
        pub q_norm: Option<(&'a [f32], f32)>,
        pub k_norm: Option<(&'a [f32], f32)>,
        pub cos: &'a [f32],
        pub sin: &'a [f32],
        pub mask: Option<&'a [f32]>,
    }

    /// The forward pass's intermediate results, `[b·t, width]` row-major each.
    struct AttnParts {
        /// Projections before the norm.
        qp: Vec<f32>,
        kp: Vec<f32>,
        v: Vec<f32>,
        /// Normalised and rotated.
        qr: Vec<f32>,
        kr: Vec<f32>,
        /// Attention output per head, `[b·t, nh·d]`.
        y: Vec<f32>,
    }

    /// `x / sqrt(mean(x²) + eps) · w` per row of `width` (as `RmsNorm::forward` computes it).
    fn rms_rows(src: &[f32], dst: &mut [f32], w: &[f32], eps: f32) {
        let width = w.len();
        let inv = (1.0 / width as f64) as f32;
        for (s, d) in src.chunks_exact(width).zip(dst.chunks_exact_mut(width)) {
            d.iter_mut().zip(s).for_each(|(d, &v)| *d = v * v);
            let mut sum = 0f32;
            // SAFETY: `d` holds `width` elements.
            unsafe { f32::vec_reduce_sum(d.as_ptr(), &mut sum, width) };
            let den = (sum * inv + eps).sqrt();
            for ((d, &v), &w) in d.iter_mut().zip(s).zip(w) {
                *d = v / den * w;
            }
        }
    }

    /// Backward pass of [`rms_rows`]: `dy` (in place) becomes `∂L/∂x`.
    fn rms_rows_backward(x: &[f32], dy: &mut [f32], w: &[f32], eps: f32) {
        let width = w.len();
        for (x, dy) in x.chunks_exact(width).zip(dy.chunks_exact_mut(width)) {
            let ms = x.iter().map(|v| v * v).sum::<f32>() / width as f32;
            let r = 1.0 / (ms + eps).sqrt();
            let dot: f32 = x
                .iter()
                .zip(dy.iter())
                .zip(w)
                .map(|((x, d), w)| x * d * w)
                .sum();
            let c = dot * r * r * r / width as f32;
            for ((d, &x), &w) in dy.iter_mut().zip(x).zip(w) {
                *d = *d * w * r - x * c;
            }
        }
    }

    /// [`rms_rows`] over `xs` (rows of `w.len()`) in blocks of rows across the worker threads,
    /// or with `backward` its backward pass for the output gradient `gs`: `∂L/∂x`.
    pub(super) fn rms_norm_rows(
        xs: &[f32],
        w: &[f32],
        eps: f32,
        backward: bool,
        gs: &[f32],
    ) -> Vec<f32> {
        let h = w.len();
        let mut out = match backward {
            true => gs.to_vec(),
            false => vec![0f32; xs.len()],
        };
        let rows = xs.len() / h.max(1);
        let threads = candle_core::utils::get_num_threads().max(1);
        let block = rows.div_ceil(4 * threads).max(16 * 1024 / h.max(1)).max(1);
        let blocks: Vec<_> = out.chunks_mut(block * h).enumerate().collect();
        par_each(blocks, |(i, dst)| {
            let src = &xs[i * block * h..i * block * h + dst.len()];
            match backward {
                true => rms_rows_backward(src, dst, w, eps),
                false => rms_rows(src, dst, w, eps),
            }
        });
        out
    }

    /// Rotates (or with `inverse`, rotates back: the backward pass) every head of every row of
    /// `x` `[b·t, heads·d]` in place, for positions `0..t` in each sequence.
    fn rope_rows(
        x: &mut [f32],
        sh: &AttnShape,
        heads: usize,
        cos: &[f32],
        sin: &[f32],
        inverse: bool,
    ) {
        let (d, half) = (sh.d, sh.d / 2);
        for (r, row) in x.chunks_exact_mut(heads * d).enumerate() {
            let pos = r % sh.t;
            let (c, s) = (
                &cos[pos * half..(pos + 1) * half],
                &sin[pos * half..(pos + 1) * half],
            );
            for head in row.chunks_exact_mut(d) {
                for j in 0..half {
                    let (i1, i2) = if sh.interleaved {
                        (2 * j, 2 * j + 1)
                    } else {
                        (j, j + half)
                    };
                    let (x1, x2, c, s) =
                        (head[i1], head[i2], c[j], if inverse { -s[j] } else { s[j] });
                    head[i1] = x1 * c - x2 * s;
                    head[i2] = x2 * c + x1 * s;
                }
            }
        }
    }

    /// Operand views of one sequence's head in a `[b·t, heads·d]` buffer: as rows `[t, d]`
    /// and transposed `[d, t]`.
    fn head_rows<'a>(buf: &'a [f32], sh: &AttnShape, heads: usize, bi: usize, h: usize) -> Mat<'a> {
        Mat {
            data: &buf[bi * sh.t * heads * sh.d + h * sh.d..],
            rs: heads * sh.d,
            cs: 1,
        }
    }

    fn head_cols<'a>(buf: &'a [f32], sh: &AttnShape, heads: usize, bi: usize, h: usize) -> Mat<'a> {
        Mat {
            data: &buf[bi * sh.t * heads * sh.d + h * sh.d..],
            rs: 1,
            cs: heads * sh.d,
        }
    }

    /// The softmax-ed, masked and scaled scores `[t, t]` of query head `h` of sequence `bi`.
    fn head_probs(
        att: &mut [f32],
        qr: &[f32],
        kr: &[f32],
        mask: Option<&[f32]>,
        sh: &AttnShape,
        bi: usize,
        h: usize,
    ) {
        let t = sh.t;
        let g = h / (sh.nh / sh.nkv);
        let q = head_rows(qr, sh, sh.nh, bi, h);
        let k = head_cols(kr, sh, sh.nkv, bi, g);
        matmul(att, (t, 1), q, k, (t, t, sh.d));
        let m = mask.map(|m| &m[bi * t * t..(bi + 1) * t * t]);
        for (i, row) in att.chunks_exact_mut(t).enumerate() {
            row.iter_mut().for_each(|a| *a *= sh.scale);
            if let Some(m) = m {
                row.iter_mut()
                    .zip(&m[i * t..(i + 1) * t])
                    .for_each(|(a, &m)| *a += m);
            }
            softmax_in_place(row);
        }
    }

    /// The forward pass up to the attention output (`y` left empty without `with_y`).
    fn attn_parts(xs: &[f32], w: &AttnData<'_>, sh: &AttnShape, with_y: bool) -> AttnParts {
        let (n, h, d) = (sh.b * sh.t, sh.hidden, sh.d);
        let (qw, kw) = (sh.nh * d, sh.nkv * d);
        let x = Mat::rows(xs, h);
        let mut qp = vec![0f32; n * qw];
        let mut kp = vec![0f32; n * kw];
        let mut v = vec![0f32; n * kw];
        par_matmul(&mut qp, false, x, Mat::t(w.q, h), (n, qw, h));
        par_matmul(&mut kp, false, x, Mat::t(w.k, h), (n, kw, h));
        par_matmul(&mut v, false, x, Mat::t(w.v, h), (n, kw, h));
        let (mut qr, mut kr) = (qp.clone(), kp.clone());
        if let Some((nw, eps)) = w.q_norm {
            rms_rows(&qp, &mut qr, nw, eps);
        }
        if let Some((nw, eps)) = w.k_norm {
            rms_rows(&kp, &mut kr, nw, eps);
        }
        rope_rows(&mut qr, sh, sh.nh, w.cos, w.sin, false);
        rope_rows(&mut kr, sh, sh.nkv, w.cos, w.sin, false);
        if !with_y {
            let y = Vec::new();
            return AttnParts {
                qp,
                kp,
                v,
                qr,
                kr,
                y,
            };
        }
        let mut y = vec![0f32; n * qw];
        let out = SharedMut(y.as_mut_ptr());
        let heads: Vec<usize> = (0..sh.b * sh.nh).collect();
        par_each(heads, |bh| {
            let (bi, hi) = (bh / sh.nh, bh % sh.nh);
            let g = hi / (sh.nh / sh.nkv);
            with_scratch(sh.t * sh.t, |att| {
                head_probs(att, &qr, &kr, w.mask, sh, bi, hi);
                let vm = head_rows(&v, sh, sh.nkv, bi, g);
                let at = bi * sh.t * qw + hi * d;
                // SAFETY: each task writes only its own head's columns of its sequence's rows.
                unsafe {
                    matmul_to(
                        out.at(at),
                        (qw, 1),
                        Mat::rows(att, sh.t),
                        vm,
                        (sh.t, d, sh.t),
                    )
                };
            });
        });
        AttnParts {
            qp,
            kp,
            v,
            qr,
            kr,
            y,
        }
    }

    /// The attention block `o(attention(rope(norm(q(x))), rope(norm(k(x))), v(x)))` for `xs`
    /// `[b·t, hidden]`.
    pub(super) fn attn_forward(xs: &[f32], w: &AttnData<'_>, sh: &AttnShape) -> Vec<f32> {
        let parts = attn_parts(xs, w, sh, true);
        let (n, qw) = (sh.b * sh.t, sh.nh * sh.d);
        let mut out = vec![0f32; n * sh.hidden];
        par_matmul(
            &mut out,
            false,
            Mat::rows(&parts.y, qw),
            Mat::t(w.o, qw),
            (n, sh.hidden, qw),
        );
        out
    }

    /// `∂L/∂x` of [`attn_forward`] for the output gradient `gs` (the weights get none).
    pub(super) fn attn_backward(
        xs: &[f32],
        gs: &[f32],
        w: &AttnData<'_>,
        sh: &AttnShape,
    ) -> Vec<f32> {
        let AttnParts {
            qp, kp, v, qr, kr, ..
        } = attn_parts(xs, w, sh, false);
        let (n, h, d, t) = (sh.b * sh.t, sh.hidden, sh.d, sh.t);
        let (qw, kw) = (sh.nh * d, sh.nkv * d);
        let mut dy = vec![0f32; n * qw];
        par_matmul(
            &mut dy,
            false,
            Mat::rows(gs, h),
            Mat::rows(w.o, qw),
            (n, qw, h),
        );
        let mut dq = vec![0f32; n * qw];
        let mut dk = vec![0f32; n * kw];
        let mut dv = vec![0f32; n * kw];
        let (dq_p, dk_p, dv_p) = (
            SharedMut(dq.as_mut_ptr()),
            SharedMut(dk.as_mut_ptr()),
            SharedMut(dv.as_mut_ptr()),
        );
        let n_rep = sh.nh / sh.nkv;
        // One task per (sequence, kv head): its query heads add to the same dk / dv.
        let groups: Vec<usize> = (0..sh.b * sh.nkv).collect();
        par_each(groups, |bg| {
            let (bi, g) = (bg / sh.nkv, bg % sh.nkv);
            with_scratch(2 * t * t, |scratch| {
                let (p, dp) = scratch.split_at_mut(t * t);
                for hi in g * n_rep..(g + 1) * n_rep {
                    head_probs(p, &qr, &kr, w.mask, sh, bi, hi);
                    let dyh = head_rows(&dy, sh, sh.nh, bi, hi);
                    let (kv_at, q_at) = (bi * t * kw + g * d, bi * t * qw + hi * d);
                    // SAFETY (all three products): each task writes only its own kv head's
                    // columns of dk / dv and its query heads' columns of dq, of its sequence.
                    // dV += Pᵀ·dY.
                    unsafe {
                        gemm_to(
                            dv_p.at(kv_at),
                            (kw, 1),
                            Mat::cols(p, t),
                            dyh,
                            (t, d, t),
                            true,
                        )
                    };
                    // dP = dY·Vᵀ; dS = P ∘ (dP - rowsum(dP ∘ P)), times the scale.
                    matmul(dp, (t, 1), dyh, head_cols(&v, sh, sh.nkv, bi, g), (t, t, d));
                    for (pr, dr) in p.chunks_exact(t).zip(dp.chunks_exact_mut(t)) {
                        let dot: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
                        dr.iter_mut()
                            .zip(pr)
                            .for_each(|(d, &p)| *d = p * (*d - dot) * sh.scale);
                    }
                    // dQ = dS·K, dK += dSᵀ·Q.
                    let k = head_rows(&kr, sh, sh.nkv, bi, g);
                    unsafe {
                        gemm_to(
                            dq_p.at(q_at),
                            (qw, 1),
                            Mat::rows(dp, t),
                            k,
                            (t, d, t),
                            false,
                        )
                    };
                    let q = head_rows(&qr, sh, sh.nh, bi, hi);
                    unsafe {
                        gemm_to(
                            dk_p.at(kv_at),
                            (kw, 1),
                            Mat::cols(dp, t),
                            q,
                            (t, d, t),
                            true,
                        )
                    };
                }
            });
        });
        rope_rows(&mut dq, sh, sh.nh, w.cos, w.sin, true);
        rope_rows(&mut dk, sh, sh.nkv, w.cos, w.sin, true);
        if let Some((nw, eps)) = w.q_norm {
            rms_rows_backward(&qp, &mut dq, nw, eps);
        }
        if let Some((nw, eps)) = w.k_norm {
            rms_rows_backward(&kp, &mut dk, nw, eps);
        }
        drop(v);
        let mut dx = vec![0f32; n * h];
        par_matmul(
            &mut dx,
            false,
            Mat::rows(&dq, qw),
            Mat::rows(w.q, h),
            (n, h, qw),
        );
        par_matmul(
            &mut dx,
            true,
            Mat::rows(&dk, kw),
            Mat::rows(w.k, h),
            (n, h, kw),
        );
        par_matmul(
            &mut dx,
            true,
            Mat::rows(&dv, kw),
            Mat::rows(w.v, h),
            (n, h, kw),
        );
        dx
    }

    /// [`super::scaled_attention`] with one task per (sequence, head) on the thread pool.
    pub fn attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        scale: f64,
    ) -> Result<Option<Tensor>> {
        let (Ok((b, nh, t, d)), Ok((kb, nkv, s, kd)), Ok((vb, vkv, vs, dv))) =
            (q.dims4(), k.dims4(), v.dims4())
        else {
            return Ok(None);
        };
        let shapes_ok = kb == b && vb == b && kd == d && vkv == nkv && vs == s;
        let empty = [b, nh, t, d, s, dv].contains(&0);
        if !shapes_ok || empty || nkv == 0 || nh % nkv != 0 {
            return Ok(None);
        }
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        let (Some(qd), Some(kd_), Some(vd)) = (F32Data::of(&q), F32Data::of(&k), F32Data::of(&v))
        else {
            return Ok(None);
        };
        // The mask is `[b, 1, t, s]` (shared by the heads) or `[b, h, t, s]`.
        let mask = match mask {
            None => None,
            Some(m) => match m.dims() {
                [mb, mh, mt, ms] if *mb == b && (*mh == 1 || *mh == nh) && *mt == t && *ms == s => {
                    match F32Data::of(m) {
                        Some(md) => Some((md, *mh)),
                        None => return Ok(None),
                    }
                }
                _ => return Ok(None),
            },
        };
        let (qs, ks, vs_) = (qd.slice(), kd_.slice(), vd.slice());
        let ms = mask.as_ref().map(|(m, mh)| (m.slice(), *mh));
        let n_rep = nh / nkv;
        let scale = scale as f32;
        let mut out = vec![0f32; b * nh * t * dv];
        let heads: Vec<_> = out.chunks_mut(t * dv).enumerate().collect();
        par_each(heads, |(bh, o)| {
            let (bi, hi) = (bh / nh, bh % nh);
            let kv = bi * nkv + hi / n_rep;
            let qh = &qs[bh * t * d..(bh + 1) * t * d];
            let kh = &ks[kv * s * d..(kv + 1) * s * d];
            let vh = &vs_[kv * s * dv..(kv + 1) * s * dv];
            with_scratch(t * s, |att| {
                let row_major = (s, 1);
                matmul(att, row_major, Mat::rows(qh, d), Mat::t(kh, d), (t, s, d));
                let m = ms.map(|(m, mh)| {
                    let i = if mh == 1 { bi } else { bh };
                    &m[i * t * s..(i + 1) * t * s]
                });
                for (i, row) in att.chunks_exact_mut(s).enumerate() {
                    row.iter_mut().for_each(|a| *a *= scale);
                    if let Some(m) = m {
                        let mrow = &m[i * s..(i + 1) * s];
                        row.iter_mut().zip(mrow).for_each(|(a, &m)| *a += m);
                    }
                    softmax_in_place(row);
                }
                let (a, v) = (Mat::rows(att, s), Mat::rows(vh, dv));
                matmul(o, (dv, 1), a, v, (t, dv, s));
            });
        });
        drop((qd, kd_, vd, mask));
        Ok(Some(Tensor::from_vec(out, (b, nh, t, dv), q.device())?))
    }

    /// `candle_nn::ops::softmax_last_dim` on one row, with the same reductions.
    fn softmax_in_place(row: &mut [f32]) {
        if row.is_empty() {
            return;
        }
        let mut max = f32::NEG_INFINITY;
        // SAFETY: `row` is non-empty and the reductions read `row.len()` elements.
        unsafe { f32::vec_reduce_max(row.as_ptr(), &mut max, row.len()) };
        row.iter_mut().for_each(|a| *a = (*a - max).exp());
        let mut sum = 0f32;
        unsafe { f32::vec_reduce_sum(row.as_ptr(), &mut sum, row.len()) };
        row.iter_mut().for_each(|a| *a /= sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `t` as a variable, so that ops on it take the plain tensor path (the fast CPU kernels
    /// only run on tensors that track no gradient).
    fn tracked(t: &Tensor) -> Tensor {
        candle_core::Var::from_tensor(t)
            .unwrap()
            .as_tensor()
            .clone()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b.detach())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn cpu_kernels_match_the_tensor_path() {
        // Linear: enough rows for the blocked kernel, a row count that isn't a block multiple.
        let x = randn(&[3, 41, 24], 1);
        let w = randn(&[40, 24], 2);
        let fast = Linear::new(w.clone(), None).forward(&x).unwrap();
        let plain = Linear::new(tracked(&w), None).forward(&x).unwrap();
        assert!(max_diff(&fast, &plain) < 1e-5);

        // RMSNorm over a 4-d tensor's last axis (as Qwen3's per-head q/k norm).
        let x = randn(&[2, 33, 3, 16], 8);
        let w = randn(&[16], 9);
        let fast = RmsNorm {
            weight: w.clone(),
            eps: 1e-6,
        }
        .forward(&x)
        .unwrap();
        let plain = RmsNorm {
            weight: tracked(&w),
            eps: 1e-6,
        }
        .forward(&x)
        .unwrap();
        assert!(max_diff(&fast, &plain) < 1e-6);

        // Experts: uneven loads, one expert unused, a token count that isn't a tile multiple.
        let (tokens, hidden, inter, n_exp, k) = (37, 24, 16, 6, 2);
        let expert = |i: u64, w: &dyn Fn(&Tensor) -> Tensor| SwiGlu {
            gate: Linear::new(w(&randn(&[inter, hidden], 10 + i)), None),
            up: Linear::new(w(&randn(&[inter, hidden], 20 + i)), None),
            down: Linear::new(w(&randn(&[hidden, inter], 30 + i)), None),
            names: ["gate_proj", "up_proj", "down_proj"],
        };
        let fast_experts: Vec<_> = (0..n_exp as u64)
            .map(|i| expert(i, &|t| t.clone()))
            .collect();
        let plain_experts: Vec<_> = (0..n_exp as u64).map(|i| expert(i, &tracked)).collect();
        let indices: Vec<u32> = (0..tokens * k)
            .map(|p| [0, 1, 1, 2, 4, 1, 3, 0][p % 8] + (p % k) as u32 * 5 / 4)
            .collect();
        assert!(indices.iter().all(|&e| e != 5 && (e as usize) < n_exp));
        let x = randn(&[tokens, hidden], 3);
        let weights = randn(&[tokens, k], 4);
        let fast = dispatch_experts(&x, &indices, &weights, &fast_experts).unwrap();
        let plain = dispatch_experts(&x, &indices, &weights, &plain_experts).unwrap();
        assert!(max_diff(&fast, &plain) < 1e-5);

        // Attention: grouped heads, a value width unlike the key width (DeepSeek's MLA), with
        // and without a padding mask.
        let (b, nh, nkv, t, d, dv) = (2, 4, 2, 9, 8, 6);
        let q = randn(&[b, nh, t, d], 5);
        let kk = randn(&[b, nkv, t, d], 6);
        let v = randn(&[b, nkv, t, dv], 7);
        let mask = attention_mask(&[9, 6], t, 0, None, DType::F32, &Device::Cpu).unwrap();
        for m in [mask.as_ref(), None] {
            let fast = scaled_attention(&q, &kk, &v, m, 0.3).unwrap();
            let plain = scaled_attention(&tracked(&q), &kk, &v, m, 0.3).unwrap();
            assert!(max_diff(&fast, &plain) < 1e-5);
        }
    }

    /// `∂(Σ y·c)/∂v` for every `v` in `vars`, with `c` a fixed random tensor shaped as `y`.
    fn input_grads(y: &Tensor, vars: &[&candle_core::Var], seed: u64) -> Vec<Tensor> {
        let c = randn(y.dims(), seed);
        let grads = (y * c).unwrap().sum_all().unwrap().backward().unwrap();
        vars.iter()
            .map(|v| grads.get(v.as_tensor()).unwrap().clone())
            .collect()
    }

    /// Largest difference relative to the largest magnitude of `b`.
    fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let scale = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        max_diff(a, b) / scale.max(1e-12)
    }

    #[test]
    fn frozen_experts_op_matches_the_tensor_path() {
        // Uneven loads, expert 5 unused, a token count that isn't a tile multiple.
        let (tokens, hidden, inter, n_exp, k) = (37, 24, 16, 6, 2);
        let expert = |i: u64, w: &dyn Fn(&Tensor) -> Tensor| SwiGlu {
            gate: Linear::new(w(&randn(&[inter, hidden], 10 + i)), None),
            up: Linear::new(w(&randn(&[inter, hidden], 20 + i)), None),
            down: Linear::new(w(&randn(&[hidden, inter], 30 + i)), None),
            names: ["gate_proj", "up_proj", "down_proj"],
        };
        let plain: Vec<_> = (0..n_exp as u64).map(|i| expert(i, &tracked)).collect();
        // All frozen (one op), and experts 1 and 3 on the tensor path beside the op.
        let frozen: Vec<_> = (0..n_exp as u64)
            .map(|i| expert(i, &|t| t.clone()))
            .collect();
        let mixed: Vec<_> = (0..n_exp as u64)
            .map(|i| match i {
                1 | 3 => expert(i, &tracked),
                _ => expert(i, &|t| t.clone()),
            })
            .collect();
        let indices: Vec<u32> = (0..tokens * k)
            .map(|p| [0, 1, 1, 2, 4, 1, 3, 0][p % 8] + (p % k) as u32 * 5 / 4)
            .collect();
        assert!(indices.iter().all(|&e| e != 5 && (e as usize) < n_exp));
        let run = |experts: &[SwiGlu]| {
            let x = candle_core::Var::from_tensor(&randn(&[tokens, hidden], 3)).unwrap();
            let w = candle_core::Var::from_tensor(&randn(&[tokens, k], 4)).unwrap();
            let y = dispatch_experts(x.as_tensor(), &indices, w.as_tensor(), experts).unwrap();
            let grads = input_grads(&y, &[&x, &w], 5);
            (y, grads)
        };
        let (y0, g0) = run(&plain);
        for experts in [&frozen, &mixed] {
            let (y, g) = run(experts);
            assert!(rel_diff(&y, &y0) < 1e-5);
            assert!(rel_diff(&g[0], &g0[0]) < 1e-5, "∂L/∂x");
            assert!(rel_diff(&g[1], &g0[1]) < 1e-5, "∂L/∂w");
        }
    }

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
            assert!(
                FrozenAttention::of(&frozen, &x, mask.as_ref(), 0, false)
                    .unwrap()
                    .is_some()
            );
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
    fn frozen_rms_norm_op_matches_the_tensor_path() {
        let w = randn(&[16], 9);
        let run = |weight: Tensor| {
            let x = candle_core::Var::from_tensor(&randn(&[2, 33, 16], 8)).unwrap();
            let y = RmsNorm { weight, eps: 1e-5 }
                .forward(x.as_tensor())
                .unwrap();
            let g = input_grads(&y, &[&x], 10);
            (y, g)
        };
        let (y, g) = run(w.clone());
        let (y0, g0) = run(tracked(&w));
        assert!(rel_diff(&y, &y0) < 1e-5);
        assert!(rel_diff(&g[0], &g0[0]) < 1e-5);
    }

    #[test]
    fn frozen_weights_pass_back_the_input_gradient_only() {
        // y = x·Wᵀ + b with W = [[1, 2], [3, 4], [5, 6]], loss = Σ y·c: ∂L/∂x = c·W.
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &dev).unwrap();
        let lin = Linear::new(w, Some(Tensor::new(&[0.5f32, -1., 2.], &dev).unwrap()));
        let x = candle_core::Var::new(&[[1f32, -1.], [2., 0.5]], &dev).unwrap();
        let c = Tensor::new(&[[1f32, 0., -1.], [2., 1., 0.]], &dev).unwrap();
        let y = lin.forward(x.as_tensor()).unwrap();
        assert_eq!(
            y.to_vec2::<f32>().unwrap(),
            vec![vec![-0.5, -2., 1.], vec![3.5, 7., 15.]]
        );
        let grads = (y * &c).unwrap().sum_all().unwrap().backward().unwrap();
        // c·W: row 0 = [1-5, 2-6] = [-4, -4]; row 1 = [2+3, 4+4] = [5, 8].
        let gx = grads.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(gx, vec![vec![-4., -4.], vec![5., 8.]]);
        assert!(
            grads.get(&lin.weight).is_none(),
            "no gradient for the frozen weight"
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
