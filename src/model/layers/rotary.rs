//! [`Rotary`] position embeddings (RoPE), halves or interleaved pairs.

use candle_core::{DType, Device, Tensor};

use crate::model::error::{ModelError, Result};

/// Precomputed rotary tables for positions `0..max_pos`.
#[derive(Debug)]
pub struct Rotary {
    /// `[max_pos, rot_dim/2]`
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
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

    /// Channels rotated per head (`2 × inv_freq.len()`).
    pub fn rotary_dim(&self) -> usize {
        2 * self.cos.dims()[1]
    }

    /// Rotates `x` `[b, heads, t, head_dim]` for positions `offset..offset + t`. With partial
    /// rotary (`head_dim` > [`Self::rotary_dim`]) only the first `rotary_dim` channels of each
    /// head turn; the rest pass through (GLM-4.5, MiniMax-M2, Qwen3.5).
    pub fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (head_dim, rot) = (x.dim(3)?, self.rotary_dim());
        if head_dim > rot {
            let turned = self.apply_full(&x.narrow(3, 0, rot)?, offset)?;
            let kept = x.narrow(3, rot, head_dim - rot)?;
            return Ok(Tensor::cat(&[&turned, &kept], 3)?);
        }
        self.apply_full(x, offset)
    }

    /// Rotates every channel of `x` `[b, heads, t, rotary_dim]`.
    fn apply_full(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_rotary_turns_only_the_first_channels() -> Result<()> {
        // One frequency (1 rad per position) over 2 of 4 channels; position 1.
        let rotary = Rotary::from_inv_freq(&[1.0], 1.0, 4, false, DType::F32, &Device::Cpu)?;
        assert_eq!(rotary.rotary_dim(), 2);
        let x = Tensor::new(&[[[[1.0f32, 2.0, 3.0, 4.0]]]], &Device::Cpu)?;
        let y: Vec<f32> = rotary.apply(&x, 1)?.flatten_all()?.to_vec1()?;
        let (c, s) = (1f32.cos(), 1f32.sin());
        let want = [c - 2.0 * s, 2.0 * c + s, 3.0, 4.0];
        for (g, w) in y.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{y:?} vs {want:?}");
        }
        Ok(())
    }
}
