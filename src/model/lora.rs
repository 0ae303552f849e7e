//! LoRA deltas on the engine's linear layers.
//!
//! A [`LoraDelta`] turns `y = x·Wᵀ` into `y = x·Wᵀ + (α/r)·(drop(x)·Aᵀ)·Bᵀ` with `A` `[r, in]`
//! and `B` `[out, r]` as PEFT stores them. While training, `A` and `B` are Candle variables and
//! gradients flow through the rest of the (frozen) model to them; for inference an adapter is
//! merged into the weight instead ([`Linear::merge_lora`](crate::model::layers::Linear::merge_lora)), so an adapted model runs at the base
//! model's speed.
//!
//! Dropout masks are drawn on the host by hashing (seed, module, round, element):
//! the same run gives the same masks whatever order the experts run in on the thread pool, and
//! a resumed run continues with the masks an uninterrupted run would have drawn.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Tensor};

use super::error::Result;

/// Shared dropout state: which micro-batch the model is on. The trainer bumps it once per
/// forward pass; `None` in the delta means no dropout (inference, or `p = 0`).
#[derive(Debug, Clone)]
pub struct LoraDropout {
    pub p: f32,
    /// Seed of this module's masks (the run's seed mixed with the module's index).
    pub seed: u64,
    pub round: Arc<AtomicU64>,
}

/// A trainable low-rank update of one linear layer.
#[derive(Debug, Clone)]
pub struct LoraDelta {
    /// `[r, in]`, f32.
    pub a: Tensor,
    /// `[out, r]`, f32.
    pub b: Tensor,
    /// `α / r`.
    pub scale: f64,
    pub dropout: Option<LoraDropout>,
}

/// SplitMix64: decorrelates the (seed, module, round) triple into a generator seed.
pub fn mix_seed(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl LoraDelta {
    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// The update for input rows `x` `[rows, in]`: `[rows, out]` in `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let mut xf = x.to_dtype(DType::F32)?;
        if let Some(d) = &self.dropout
            && d.p > 0.0
        {
            // A counter-based generator: element i's draw is a hash of (key, i), so masks are
            // cheap, need no sequential state and do not depend on thread scheduling.
            let key = mix_seed(d.seed, d.round.load(Ordering::Relaxed));
            let keep = 1.0 / (1.0 - d.p);
            let threshold = (f64::from(d.p) * (1u64 << 32) as f64) as u64;
            let mask: Vec<f32> = (0..xf.elem_count() as u64)
                .map(|i| {
                    if mix_seed(key, i) >> 32 < threshold {
                        0.0
                    } else {
                        keep
                    }
                })
                .collect();
            xf = (xf * Tensor::from_vec(mask, x.shape(), x.device())?)?;
        }
        let y = xf.matmul(&self.a.t()?)?.matmul(&self.b.t()?)?;
        Ok((y * self.scale)?.to_dtype(dtype)?)
    }

    /// `(α/r)·B·A`, `[out, in]`, f32.
    pub fn delta_weight(&self) -> Result<Tensor> {
        Ok((self.b.matmul(&self.a)? * self.scale)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::Linear;
    use candle_core::Device;

    fn t(v: &[f32], shape: (usize, usize)) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn delta_is_scaled_b_times_a_and_merging_gives_the_same_output() {
        // W = I₂, A = [[1, 2]] (r = 1), B = [[1], [-1]], α/r = 0.5
        // → ΔW = 0.5·[[1, 2], [-1, -2]]; x = [1, 1] → x·(W + ΔW)ᵀ = [1 + 1.5, 1 - 1.5].
        let delta = LoraDelta {
            a: t(&[1.0, 2.0], (1, 2)),
            b: t(&[1.0, -1.0], (2, 1)),
            scale: 0.5,
            dropout: None,
        };
        let mut lin = Linear::new(t(&[1.0, 0.0, 0.0, 1.0], (2, 2)), None);
        lin.lora = Some(Box::new(delta.clone()));
        let x = t(&[1.0, 1.0], (1, 2));
        let unmerged: Vec<f32> = lin
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(unmerged, vec![2.5, -0.5]);
        lin.merge_lora(&delta).unwrap();
        assert!(lin.lora.is_none());
        let merged: Vec<f32> = lin
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(merged, vec![2.5, -0.5]);
    }

    #[test]
    fn dropout_masks_depend_on_round_not_on_call_order() {
        let round = Arc::new(AtomicU64::new(3));
        let delta = LoraDelta {
            a: t(&[1.0; 8], (1, 8)),
            b: t(&[1.0], (1, 1)),
            scale: 1.0,
            dropout: Some(LoraDropout {
                p: 0.5,
                seed: 7,
                round: round.clone(),
            }),
        };
        let x = t(&[1.0; 64], (8, 8));
        let first: Vec<f32> = delta
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let again: Vec<f32> = delta
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(first, again);
        // Kept inputs are scaled by 1/(1-p) = 2, so each row sum is an even number ≤ 16,
        // and some (not all) inputs are dropped.
        assert!(
            first
                .iter()
                .all(|v| v.fract() == 0.0 && (*v as i32) % 2 == 0)
        );
        let total: f32 = first.iter().sum();
        assert!(total > 0.0 && total < 128.0, "{total}");
        round.store(4, Ordering::Relaxed);
        let next: Vec<f32> = delta
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_ne!(first, next);
    }
}
