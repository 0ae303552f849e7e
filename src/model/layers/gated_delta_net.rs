//! The gated DeltaNet token mixer of Qwen3.5 / Qwen3-Next (`linear_attn`,
//! `Qwen3_5MoeGatedDeltaNet` in transformers): projections, causal depthwise convolution,
//! the gated delta-rule recurrence per value head, the gated RMSNorm and the output
//! projection, with its decoding cache (the convolution window and the recurrent state).
//!
//! For each token `t` and value head `h` (key head `h / (value heads / key heads)`):
//!
//! ```text
//! q, k, v  = silu(conv1d(in_proj_qkv · x))            (causal, depthwise, no bias)
//! q, k     = l2norm(q), l2norm(k);  q = q / sqrt(d_k)
//! β        = sigmoid(in_proj_b · x)
//! g        = -exp(A_log) · softplus(in_proj_a · x + dt_bias)
//! S        = exp(g) · S                                (S: [d_k, d_v], zero at the start)
//! S        = S + k ⊗ β·(v − Sᵀk)
//! o        = Sᵀq
//! y        = out_proj(w · rmsnorm(o) · silu(in_proj_z · x))   (per head, plain weight w)
//! ```
//!
//! The projections run through [`Linear`] (mapped half-precision weights read in place); the
//! convolution and recurrence run on the host in f32, one tight loop over a sequence's tokens
//! per head, whatever device the model is on. A right-padded batch runs each sequence over its
//! real tokens only, so padding never enters a state and every sequence gets exactly what it
//! gets alone; padding positions come out as zeros. Inputs that carry gradients are refused:
//! the host loop is not differentiable.
//!
//! Shapes are annotated as `[b, t, h]` = batch, tokens, hidden.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::attention::AttentionLayer;
use super::linear::Linear;
use crate::model::error::{ModelError, Result};
use crate::model::weights::WeightSource;

/// The shape of a gated DeltaNet (HF `linear_*` config fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatedDeltaNetConfig {
    pub hidden_size: usize,
    /// `linear_num_key_heads`: query/key heads.
    pub num_key_heads: usize,
    /// `linear_num_value_heads`: value heads (a multiple of the key heads).
    pub num_value_heads: usize,
    /// `linear_key_head_dim`.
    pub key_head_dim: usize,
    /// `linear_value_head_dim`.
    pub value_head_dim: usize,
    /// `linear_conv_kernel_dim`.
    pub conv_kernel: usize,
}

impl GatedDeltaNetConfig {
    pub fn key_dim(&self) -> usize {
        self.num_key_heads * self.key_head_dim
    }

    pub fn value_dim(&self) -> usize {
        self.num_value_heads * self.value_head_dim
    }

    /// Channels of the convolution: q, k and v side by side.
    pub fn conv_channels(&self) -> usize {
        2 * self.key_dim() + self.value_dim()
    }
}

/// One sequence's decoding cache: the last `conv_kernel - 1` convolution inputs and the
/// recurrent state of every value head.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaNetState {
    /// `[conv_kernel - 1, channels]`, oldest first (zeros before the sequence starts).
    pub conv_window: Vec<f32>,
    /// `[value heads, d_k, d_v]`.
    pub recurrent: Vec<f32>,
}

impl DeltaNetState {
    fn zeros(cfg: &GatedDeltaNetConfig) -> Self {
        Self {
            conv_window: vec![0.0; (cfg.conv_kernel - 1) * cfg.conv_channels()],
            recurrent: vec![0.0; cfg.num_value_heads * cfg.key_head_dim * cfg.value_head_dim],
        }
    }
}

/// The per-token inputs of a DeltaNet mixer, after the projections, on the host in f32.
pub struct DeltaNetInputs<'a> {
    /// `[tokens, channels]`: `in_proj_qkv · x` before the convolution.
    pub qkv: &'a [f32],
    /// `[tokens, value heads]`: `in_proj_b · x`.
    pub b: &'a [f32],
    /// `[tokens, value heads]`: `in_proj_a · x`.
    pub a: &'a [f32],
    /// `[tokens, value dim]`: `in_proj_z · x`.
    pub z: &'a [f32],
}

/// The parameters of the mixer other than its projections, on the host in f32.
#[derive(Debug, Clone)]
pub struct DeltaNetParams {
    pub cfg: GatedDeltaNetConfig,
    /// `[channels, conv_kernel]` (`conv1d.weight` without its middle axis).
    pub conv: Vec<f32>,
    /// `-exp(A_log)` per value head.
    pub neg_a: Vec<f32>,
    /// `dt_bias` per value head.
    pub dt_bias: Vec<f32>,
    /// The gated RMSNorm's weight `[d_v]`, applied as is.
    pub norm: Vec<f32>,
    pub norm_eps: f64,
}

/// `log(1 + exp(x))` as torch's `softplus` computes it (the identity above 20).
fn softplus(x: f32) -> f32 {
    if x > 20.0 { x } else { x.exp().ln_1p() }
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Scales `x` to unit L2 norm as HF's `l2norm` does: `x · rsqrt(Σx² + 1e-6)`, then by `scale`.
fn l2_normalise(x: &mut [f32], scale: f32) {
    let ss: f32 = x.iter().map(|v| v * v).sum();
    let inv = 1.0 / (ss + 1e-6).sqrt();
    x.iter_mut().for_each(|v| *v = *v * inv * scale);
}

/// One head's delta-rule recurrence over `n` tokens: `state` `[d_k, d_v]` is updated in place
/// and the outputs `Sᵀq` are written to `out` `[n, d_v]`. `q`, `k` `[n, d_k]` (normalised),
/// `v` `[n, d_v]`, `decay` (`exp(g)`) and `beta` `[n]`.
#[allow(clippy::too_many_arguments)]
pub fn delta_rule_head(
    state: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    decay: &[f32],
    beta: &[f32],
    (d_k, d_v): (usize, usize),
    out: &mut [f32],
) {
    let mut mem = vec![0f32; d_v];
    for t in 0..decay.len() {
        let (qt, kt) = (&q[t * d_k..(t + 1) * d_k], &k[t * d_k..(t + 1) * d_k]);
        let vt = &v[t * d_v..(t + 1) * d_v];
        let (d, b) = (decay[t], beta[t]);
        // Decay the state and read what it holds for k: mem = Sᵀk.
        mem.iter_mut().for_each(|m| *m = 0.0);
        for (row, &ki) in state.chunks_exact_mut(d_v).zip(kt) {
            for (s, m) in row.iter_mut().zip(mem.iter_mut()) {
                *s *= d;
                *m += ki * *s;
            }
        }
        // delta = β(v − Sᵀk); S += k ⊗ delta; o = Sᵀq.
        for (m, &vj) in mem.iter_mut().zip(vt) {
            *m = (vj - *m) * b;
        }
        let o = &mut out[t * d_v..(t + 1) * d_v];
        o.iter_mut().for_each(|x| *x = 0.0);
        for ((row, &ki), &qi) in state.chunks_exact_mut(d_v).zip(kt).zip(qt) {
            for ((s, &dj), oj) in row.iter_mut().zip(mem.iter()).zip(o.iter_mut()) {
                *s += ki * dj;
                *oj += qi * *s;
            }
        }
    }
}

impl DeltaNetParams {
    /// The mixer on one sequence's `n` tokens from `state` (updated to the state after the
    /// last token): the gated-norm output `[n, value dim]` that `out_proj` takes.
    pub fn run_sequence(&self, inp: &DeltaNetInputs<'_>, state: &mut DeltaNetState) -> Vec<f32> {
        let c = &self.cfg;
        let (ch, kern, nv, nk) = (
            c.conv_channels(),
            c.conv_kernel,
            c.num_value_heads,
            c.num_key_heads,
        );
        let (dk, dv, kd, vd) = (c.key_head_dim, c.value_head_dim, c.key_dim(), c.value_dim());
        let n = inp.b.len() / nv;
        // Causal depthwise convolution over [window; inputs], then SiLU.
        let hist = kern - 1;
        let mut full = Vec::with_capacity((hist + n) * ch);
        full.extend_from_slice(&state.conv_window);
        full.extend_from_slice(&inp.qkv[..n * ch]);
        let mut conv = vec![0f32; n * ch];
        for (t, row) in conv.chunks_exact_mut(ch).enumerate() {
            for (ci, y) in row.iter_mut().enumerate() {
                let w = &self.conv[ci * kern..(ci + 1) * kern];
                let mut acc = 0f32;
                for (j, wj) in w.iter().enumerate() {
                    acc += wj * full[(t + j) * ch + ci];
                }
                *y = silu(acc);
            }
        }
        state
            .conv_window
            .copy_from_slice(&full[n * ch..(n + hist) * ch]);
        // Per head, token-major: q, k normalised (q also by 1/sqrt(d_k)), v, decay, β.
        let q_scale = 1.0 / (dk as f32).sqrt();
        let mut qs = vec![0f32; nk * n * dk];
        let mut ks = vec![0f32; nk * n * dk];
        let mut vs = vec![0f32; nv * n * dv];
        for (t, row) in conv.chunks_exact(ch).enumerate() {
            for h in 0..nk {
                let q = &mut qs[(h * n + t) * dk..(h * n + t + 1) * dk];
                q.copy_from_slice(&row[h * dk..(h + 1) * dk]);
                l2_normalise(q, q_scale);
                let k = &mut ks[(h * n + t) * dk..(h * n + t + 1) * dk];
                k.copy_from_slice(&row[kd + h * dk..kd + (h + 1) * dk]);
                l2_normalise(k, 1.0);
            }
            for h in 0..nv {
                vs[(h * n + t) * dv..(h * n + t + 1) * dv]
                    .copy_from_slice(&row[2 * kd + h * dv..2 * kd + (h + 1) * dv]);
            }
        }
        let mut decay = vec![0f32; nv * n];
        let mut beta = vec![0f32; nv * n];
        for t in 0..n {
            for h in 0..nv {
                let g = self.neg_a[h] * softplus(inp.a[t * nv + h] + self.dt_bias[h]);
                decay[h * n + t] = g.exp();
                beta[h * n + t] = sigmoid(inp.b[t * nv + h]);
            }
        }
        let group = nv / nk;
        let mut heads = vec![0f32; nv * n * dv];
        heads
            .par_chunks_mut(n * dv)
            .zip(state.recurrent.par_chunks_mut(dk * dv))
            .enumerate()
            .for_each(|(h, (out, s))| {
                let kh = h / group;
                delta_rule_head(
                    s,
                    &qs[kh * n * dk..(kh + 1) * n * dk],
                    &ks[kh * n * dk..(kh + 1) * n * dk],
                    &vs[h * n * dv..(h + 1) * n * dv],
                    &decay[h * n..(h + 1) * n],
                    &beta[h * n..(h + 1) * n],
                    (dk, dv),
                    out,
                );
            });
        // Gated RMSNorm per head: w · o · rsqrt(mean(o²) + eps) · silu(z).
        let mut y = vec![0f32; n * vd];
        for t in 0..n {
            for h in 0..nv {
                let o = &heads[(h * n + t) * dv..(h * n + t + 1) * dv];
                let var = o.iter().map(|v| v * v).sum::<f32>() / dv as f32;
                let inv = 1.0 / (var + self.norm_eps as f32).sqrt();
                let z = &inp.z[t * vd + h * dv..t * vd + (h + 1) * dv];
                let dst = &mut y[t * vd + h * dv..t * vd + (h + 1) * dv];
                for j in 0..dv {
                    dst[j] = self.norm[j] * (o[j] * inv) * silu(z[j]);
                }
            }
        }
        y
    }
}

/// The gated DeltaNet mixer (`linear_attn.*`), usable as a [`DecoderStack`]
/// (super::DecoderStack) layer's token mixer.
#[derive(Debug)]
pub struct GatedDeltaNet {
    in_proj_qkv: Linear,
    in_proj_z: Linear,
    in_proj_b: Linear,
    in_proj_a: Linear,
    out_proj: Linear,
    params: DeltaNetParams,
    /// One state per sequence of the batch being decoded.
    cache: Option<Vec<DeltaNetState>>,
}

impl GatedDeltaNet {
    /// Loads `linear_attn` (`vb` points at it); `eps` is the gated norm's epsilon
    /// (`rms_norm_eps`).
    pub fn load(vb: &WeightSource, cfg: GatedDeltaNetConfig, eps: f64) -> Result<Self> {
        let (h, nv) = (cfg.hidden_size, cfg.num_value_heads);
        if nv == 0
            || cfg.num_key_heads == 0
            || !nv.is_multiple_of(cfg.num_key_heads)
            || cfg.conv_kernel == 0
        {
            return Err(ModelError::msg(format!(
                "linear attention with {nv} value heads over {} key heads and a kernel of {}: \
                 the value heads must be a multiple of the key heads",
                cfg.num_key_heads, cfg.conv_kernel
            )));
        }
        let host = |t: Tensor| -> Result<Vec<f32>> {
            Ok(t.to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .flatten_all()?
                .to_vec1()?)
        };
        let ch = cfg.conv_channels();
        let a_log = host(vb.get(nv, "A_log")?)?;
        Ok(Self {
            in_proj_qkv: Linear::load(&vb.pp("in_proj_qkv"), h, ch, false)?,
            in_proj_z: Linear::load(&vb.pp("in_proj_z"), h, cfg.value_dim(), false)?,
            in_proj_b: Linear::load(&vb.pp("in_proj_b"), h, nv, false)?,
            in_proj_a: Linear::load(&vb.pp("in_proj_a"), h, nv, false)?,
            out_proj: Linear::load(&vb.pp("out_proj"), cfg.value_dim(), h, false)?,
            params: DeltaNetParams {
                cfg,
                conv: host(vb.pp("conv1d").get((ch, 1, cfg.conv_kernel), "weight")?)?,
                neg_a: a_log.iter().map(|v| -v.exp()).collect(),
                dt_bias: host(vb.get(nv, "dt_bias")?)?,
                norm: host(vb.pp("norm").get(cfg.value_head_dim, "weight")?)?,
                norm_eps: eps,
            },
            cache: None,
        })
    }

    pub fn config(&self) -> &GatedDeltaNetConfig {
        &self.params.cfg
    }

    /// The mixer on `x` `[b, t, h]` whose sequences hold `seq_lens` real tokens (right
    /// padding after them). `offset > 0` continues the cached sequences (`use_cache`).
    pub fn forward_sequences(
        &mut self,
        x: &Tensor,
        offset: usize,
        use_cache: bool,
        seq_lens: &[usize],
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        if x.track_op() {
            // The recurrence runs on the host, outside candle's graph: gradients would stop here.
            return Err(ModelError::msg(
                "training through linear-attention (gated DeltaNet) layers is not supported",
            ));
        }
        if seq_lens.len() != b || seq_lens.iter().any(|&l| l > t) {
            return Err(ModelError::msg(
                "linear attention: sequence lengths do not match the batch",
            ));
        }
        let host = |l: &Linear| -> Result<Vec<f32>> {
            Ok(l.forward(x)?
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .flatten_all()?
                .to_vec1()?)
        };
        let (qkv, z, bb, a) = (
            host(&self.in_proj_qkv)?,
            host(&self.in_proj_z)?,
            host(&self.in_proj_b)?,
            host(&self.in_proj_a)?,
        );
        let cfg = self.params.cfg;
        let (ch, nv, vd) = (cfg.conv_channels(), cfg.num_value_heads, cfg.value_dim());
        let mut states = match (offset, self.cache.take()) {
            (0, _) => vec![DeltaNetState::zeros(&cfg); b],
            (_, Some(c)) if use_cache && c.len() == b => c,
            _ => {
                return Err(ModelError::msg(format!(
                    "linear attention: continuing at position {offset} needs the cached state \
                     of the same {b} sequence(s) (decode with the KV cache on)"
                )));
            }
        };
        let mut y = vec![0f32; b * t * vd];
        for (bi, (&len, state)) in seq_lens.iter().zip(states.iter_mut()).enumerate() {
            let r = bi * t..bi * t + len;
            let inputs = DeltaNetInputs {
                qkv: &qkv[r.start * ch..r.end * ch],
                b: &bb[r.start * nv..r.end * nv],
                a: &a[r.start * nv..r.end * nv],
                z: &z[r.start * vd..r.end * vd],
            };
            let out = self.params.run_sequence(&inputs, state);
            y[r.start * vd..r.end * vd].copy_from_slice(&out);
        }
        if use_cache {
            self.cache = Some(states);
        }
        let y = Tensor::from_vec(y, (b, t, vd), &Device::Cpu)?
            .to_dtype(x.dtype())?
            .to_device(x.device())?;
        self.out_proj.forward(&y)
    }
}

impl AttentionLayer for GatedDeltaNet {
    fn forward(
        &mut self,
        x: &Tensor,
        _mask: Option<&Tensor>,
        offset: usize,
        use_cache: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        self.forward_sequences(x, offset, use_cache, &vec![t; b])
    }

    fn forward_padded(
        &mut self,
        x: &Tensor,
        _mask: Option<&Tensor>,
        offset: usize,
        use_cache: bool,
        seq_lens: &[usize],
    ) -> Result<Tensor> {
        self.forward_sequences(x, offset, use_cache, seq_lens)
    }

    fn clear_cache(&mut self) {
        self.cache = None;
    }

    fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        vec![
            ("linear_attn.in_proj_qkv", &mut self.in_proj_qkv),
            ("linear_attn.in_proj_z", &mut self.in_proj_z),
            ("linear_attn.in_proj_b", &mut self.in_proj_b),
            ("linear_attn.in_proj_a", &mut self.in_proj_a),
            ("linear_attn.out_proj", &mut self.out_proj),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two tokens of one head with d_k = d_v = 2, worked by hand:
    /// t0: S = 0·0.5 = 0; mem = 0; delta = 0.5·(1, 2) = (0.5, 1); S = k0 ⊗ delta with
    ///     k0 = (1, 0): S = [[0.5, 1], [0, 0]]; o0 = Sᵀq0, q0 = (1, 1): (0.5, 1).
    /// t1: S = 0.5·S = [[0.25, 0.5], [0, 0]]; k1 = (0.6, 0.8): mem = Sᵀk1 = (0.15, 0.3);
    ///     delta = 1·((3, −1) − mem) = (2.85, −1.3);
    ///     S += k1 ⊗ delta = [[0.25 + 1.71, 0.5 − 0.78], [2.28, −1.04]] = [[1.96, −0.28], [2.28, −1.04]];
    ///     q1 = (0, 2): o1 = Sᵀq1 = (4.56, −2.08).
    #[test]
    fn delta_rule_two_tokens_by_hand() {
        let mut s = vec![0f32; 4];
        let mut out = vec![0f32; 4];
        delta_rule_head(
            &mut s,
            &[1.0, 1.0, 0.0, 2.0],
            &[1.0, 0.0, 0.6, 0.8],
            &[1.0, 2.0, 3.0, -1.0],
            &[0.5, 0.5],
            &[0.5, 1.0],
            (2, 2),
            &mut out,
        );
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close(&out, &[0.5, 1.0, 4.56, -2.08]), "{out:?}");
        assert!(close(&s, &[1.96, -0.28, 2.28, -1.04]), "{s:?}");
    }

    fn params(seed: u64) -> DeltaNetParams {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let cfg = GatedDeltaNetConfig {
            hidden_size: 8,
            num_key_heads: 1,
            num_value_heads: 2,
            key_head_dim: 4,
            value_head_dim: 3,
            conv_kernel: 3,
        };
        let mut r =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
        DeltaNetParams {
            conv: r(cfg.conv_channels() * cfg.conv_kernel),
            neg_a: r(2).iter().map(|v| -v.exp()).collect(),
            dt_bias: r(2),
            norm: r(3),
            norm_eps: 1e-6,
            cfg,
        }
    }

    /// Running a sequence in two calls (the cache carried over) gives what one call gives,
    /// including a first call shorter than the convolution window.
    #[test]
    fn split_sequence_continues_from_the_cached_state() {
        use rand::{Rng, SeedableRng};
        let p = params(3);
        let (ch, nv, vd) = (p.cfg.conv_channels(), 2, p.cfg.value_dim());
        let n = 7;
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let mut r =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let (qkv, b, a, z) = (r(n * ch), r(n * nv), r(n * nv), r(n * vd));
        let whole = |s: std::ops::Range<usize>, st: &mut DeltaNetState| {
            p.run_sequence(
                &DeltaNetInputs {
                    qkv: &qkv[s.start * ch..s.end * ch],
                    b: &b[s.start * nv..s.end * nv],
                    a: &a[s.start * nv..s.end * nv],
                    z: &z[s.start * vd..s.end * vd],
                },
                st,
            )
        };
        let mut one = DeltaNetState::zeros(&p.cfg);
        let all = whole(0..n, &mut one);
        for split in [1, 4] {
            let mut two = DeltaNetState::zeros(&p.cfg);
            let mut got = whole(0..split, &mut two);
            got.extend(whole(split..n, &mut two));
            let d = got
                .iter()
                .zip(&all)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(d < 1e-6, "split at {split}: {d}");
            let d = two
                .recurrent
                .iter()
                .zip(&one.recurrent)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(d < 1e-6, "state after split at {split}: {d}");
            assert_eq!(two.conv_window, one.conv_window);
        }
    }
}
