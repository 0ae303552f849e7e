//! Multi-head latent attention ([`MlaAttention`]), DeepSeek-V2's `self_attn`, and its
//! projections for the module layout.

use std::sync::Arc;

use crate::model::weights::WeightSource;
use candle_core::{D, Tensor};

use super::config::Config;
use crate::model::error::Result;
use crate::model::info::Projection;
use crate::model::layers::{AttentionLayer, Linear, RmsNorm, Rotary, append_kv, scaled_attention};

/// `eps` of `q_a_layernorm` / `kv_a_layernorm` (transformers builds them with its default).
const LORA_NORM_EPS: f64 = 1e-6;

/// The query projection: full-rank (`q_proj`) or low-rank (`q_a_proj` → norm → `q_b_proj`).
#[derive(Debug)]
enum QProj {
    Full(Linear),
    LowRank { a: Linear, norm: RmsNorm, b: Linear },
}

/// Multi-head latent attention (`self_attn` of a DeepSeek-V2 layer).
#[derive(Debug)]
pub struct MlaAttention {
    q: QProj,
    kv_a: Linear,
    kv_a_norm: RmsNorm,
    kv_b: Linear,
    o: Linear,
    num_heads: usize,
    nope_dim: usize,
    rope_dim: usize,
    v_dim: usize,
    kv_lora_rank: usize,
    pub(super) scale: f64,
    rotary: Arc<Rotary>,
    /// Per-head keys `[b, heads, s, nope + rope]` and values `[b, heads, s, v]`.
    cache: Option<(Tensor, Tensor)>,
}

impl MlaAttention {
    pub(super) fn load(vb: &WeightSource, cfg: &Config, rotary: Arc<Rotary>) -> Result<Self> {
        let (h, nh) = (cfg.hidden_size, cfg.num_attention_heads);
        let qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim;
        let q = match cfg.q_lora_rank {
            None => QProj::Full(Linear::load(&vb.pp("q_proj"), h, nh * qk, false)?),
            Some(r) => QProj::LowRank {
                a: Linear::load(&vb.pp("q_a_proj"), h, r, cfg.attention_bias)?,
                norm: RmsNorm::load(&vb.pp("q_a_layernorm"), r, LORA_NORM_EPS)?,
                b: Linear::load(&vb.pp("q_b_proj"), r, nh * qk, false)?,
            },
        };
        Ok(Self {
            q,
            kv_a: Linear::load(
                &vb.pp("kv_a_proj_with_mqa"),
                h,
                cfg.kv_lora_rank + cfg.qk_rope_head_dim,
                cfg.attention_bias,
            )?,
            kv_a_norm: RmsNorm::load(&vb.pp("kv_a_layernorm"), cfg.kv_lora_rank, LORA_NORM_EPS)?,
            kv_b: Linear::load(
                &vb.pp("kv_b_proj"),
                cfg.kv_lora_rank,
                nh * (cfg.qk_nope_head_dim + cfg.v_head_dim),
                false,
            )?,
            o: Linear::load(&vb.pp("o_proj"), nh * cfg.v_head_dim, h, cfg.attention_bias)?,
            num_heads: nh,
            nope_dim: cfg.qk_nope_head_dim,
            rope_dim: cfg.qk_rope_head_dim,
            v_dim: cfg.v_head_dim,
            kv_lora_rank: cfg.kv_lora_rank,
            scale: 1.0 / (qk as f64).sqrt(),
            rotary,
            cache: None,
        })
    }
}

impl AttentionLayer for MlaAttention {
    fn forward(
        &mut self,
        x: &Tensor,
        mask: Option<&Tensor>,
        offset: usize,
        use_cache: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, nope, rope, vd) = (self.num_heads, self.nope_dim, self.rope_dim, self.v_dim);
        let q = match &self.q {
            QProj::Full(p) => p.forward(x)?,
            QProj::LowRank { a, norm, b } => b.forward(&norm.forward(&a.forward(x)?)?)?,
        };
        let q = q.reshape((b, t, nh, nope + rope))?.transpose(1, 2)?;
        // ^ [b, nh, t, nope + rope]
        let q_nope = q.narrow(D::Minus1, 0, nope)?;
        let q_pe = self
            .rotary
            .apply(&q.narrow(D::Minus1, nope, rope)?, offset)?;

        let ckv = self.kv_a.forward(x)?;
        // ^ [b, t, kv_lora_rank + rope]
        let c = ckv.narrow(D::Minus1, 0, self.kv_lora_rank)?;
        let k_pe = ckv
            .narrow(D::Minus1, self.kv_lora_rank, rope)?
            .reshape((b, 1, t, rope))?;
        let k_pe = self
            .rotary
            .apply(&k_pe, offset)?
            .broadcast_as((b, nh, t, rope))?;
        let kv = self
            .kv_b
            .forward(&self.kv_a_norm.forward(&c)?)?
            .reshape((b, t, nh, nope + vd))?
            .transpose(1, 2)?;
        // ^ [b, nh, t, nope + v]
        let k_nope = kv.narrow(D::Minus1, 0, nope)?;
        let v = kv.narrow(D::Minus1, nope, vd)?.contiguous()?;

        let q = Tensor::cat(&[&q_nope.contiguous()?, &q_pe], D::Minus1)?;
        let k = Tensor::cat(&[&k_nope.contiguous()?, &k_pe.contiguous()?], D::Minus1)?;
        let (k, v) = if use_cache {
            append_kv(&mut self.cache, k, v)?
        } else {
            (k, v)
        };
        let y = scaled_attention(&q, &k, &v, mask, self.scale)?;
        // ^ [b, nh, t, v]
        let y = y.transpose(1, 2)?.reshape((b, t, nh * vd))?;
        self.o.forward(&y)
    }

    fn clear_cache(&mut self) {
        self.cache = None;
    }

    fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        let mut out: Vec<(&'static str, &mut Linear)> = match &mut self.q {
            QProj::Full(p) => vec![("q_proj", p)],
            QProj::LowRank { a, b, .. } => vec![("q_a_proj", a), ("q_b_proj", b)],
        };
        out.push(("kv_a_proj_with_mqa", &mut self.kv_a));
        out.push(("kv_b_proj", &mut self.kv_b));
        out.push(("o_proj", &mut self.o));
        out
    }
}

/// The MLA projections of one layer with their real shapes (names relative to `self_attn`).
pub(super) fn attention_projections(cfg: &Config) -> Vec<Projection> {
    let (h, nh) = (cfg.hidden_size, cfg.num_attention_heads);
    let qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim;
    let mut p = match cfg.q_lora_rank {
        None => vec![Projection::new("q_proj", h, nh * qk)],
        Some(r) => vec![
            Projection::new("q_a_proj", h, r),
            Projection::new("q_b_proj", r, nh * qk),
        ],
    };
    p.push(Projection::new(
        "kv_a_proj_with_mqa",
        h,
        cfg.kv_lora_rank + cfg.qk_rope_head_dim,
    ));
    p.push(Projection::new(
        "kv_b_proj",
        cfg.kv_lora_rank,
        nh * (cfg.qk_nope_head_dim + cfg.v_head_dim),
    ));
    p.push(Projection::new("o_proj", nh * cfg.v_head_dim, h));
    p
}
