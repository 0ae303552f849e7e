//! The LoRA variables a run trains: one record per adapted module, PEFT's initialisation of
//! `A`, the per-module seed (for `A` and for dropout), and the dropout round that means "none".

use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};

use super::error::Result;
use crate::model::lora::mix_seed;

/// An adapted module: its LoRA pair and whether it is still being trained.
pub(super) struct AdaptedModule {
    pub(super) name: String,
    pub(super) a: Var,
    pub(super) b: Var,
    pub(super) trainable: bool,
}

/// Kaiming-uniform init of `A` as PEFT does it (`kaiming_uniform_(a=√5)`: bound `1/√in`).
pub(super) fn kaiming_a(rank: usize, in_dim: usize, seed: u64, device: &Device) -> Result<Tensor> {
    let bound = 1.0 / (in_dim as f32).sqrt();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let v: Vec<f32> = (0..rank * in_dim)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    Ok(Tensor::from_vec(v, (rank, in_dim), device)?)
}

pub(super) fn name_seed(seed: u64, name: &str) -> u64 {
    name.bytes()
        .fold(mix_seed(seed, 0x5EED), |h, b| mix_seed(h, u64::from(b)))
}

/// Dropout round meaning "no dropout" (evaluation passes).
pub(super) const NO_DROPOUT: u64 = u64::MAX;
