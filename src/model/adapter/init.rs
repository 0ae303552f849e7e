//! PEFT's initialisation of a LoRA pair: `A` Kaiming-uniform (`kaiming_uniform_(a=√5)`, so
//! uniform in `±1/√in`), `B` zero, so a fresh adapter changes nothing until it is trained. The
//! per-module seed is derived from the run's seed and the module's name, so a module's start
//! does not depend on which other modules are adapted.
//!
//! Also a whole fresh adapter on disk ([`write_initial_adapter`]), for PEFT to train: modules
//! to train start as above, the others with `A` and `B` both zero, which keeps them zero.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

use super::config::{AdapterForm, AdapterSettings};
use super::fused::{AdapterTarget, LoraPair};
use super::peft::{Adapter, files};
use crate::model::error::Result;
use crate::model::lora::mix_seed;

/// `A` `[rank, in_dim]`, Kaiming-uniform with bound `1/√in_dim`.
pub fn kaiming_a(rank: usize, in_dim: usize, seed: u64, device: &Device) -> Result<Tensor> {
    let bound = 1.0 / (in_dim as f32).sqrt();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let v: Vec<f32> = (0..rank * in_dim)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    Ok(Tensor::from_vec(v, (rank, in_dim), device)?)
}

/// The seed of module `name` in a run seeded with `seed`.
pub fn name_seed(seed: u64, name: &str) -> u64 {
    name.bytes()
        .fold(mix_seed(seed, 0x5EED), |h, b| mix_seed(h, u64::from(b)))
}

/// A fresh pair for module `name` (`in_dim` → `out_dim`): `A` as PEFT draws it, `B` zero; f32
/// on the CPU.
pub fn initial_pair(
    name: &str,
    rank: usize,
    in_dim: usize,
    out_dim: usize,
    seed: u64,
) -> Result<LoraPair> {
    Ok(LoraPair {
        a: kaiming_a(rank, in_dim, name_seed(seed, name), &Device::Cpu)?,
        b: Tensor::zeros((out_dim, rank), candle_core::DType::F32, &Device::Cpu)?,
    })
}

/// One module of a fresh adapter: its full name, `in → out` dimensions, and whether it is to be
/// trained (PEFT's start) or to stay zero (`A` and `B` both zero: zero gradients, so it stays
/// exactly zero under SGD and AdamW alike, weight decay included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreshModule {
    pub name: String,
    pub in_features: usize,
    pub out_features: usize,
    pub trained: bool,
}

/// Writes a fresh adapter of `modules` into `dir` in `form` for the model `target` names
/// (`num_experts` routed experts per MoE layer), config and weights; returns the paths written.
pub fn write_initial_adapter(
    dir: &Path,
    settings: &AdapterSettings,
    modules: &[FreshModule],
    form: AdapterForm,
    target: AdapterTarget<'_>,
    num_experts: usize,
    seed: u64,
) -> Result<Vec<PathBuf>> {
    let rank = settings.rank;
    let pairs = modules
        .iter()
        .map(|m| {
            let pair = if m.trained {
                initial_pair(&m.name, rank, m.in_features, m.out_features, seed)?
            } else {
                LoraPair::zeros(rank, m.in_features, m.out_features)?
            };
            Ok((m.name.clone(), pair))
        })
        .collect::<Result<BTreeMap<_, _>>>()?;
    let adapter = Adapter {
        settings: settings.clone(),
        modules: pairs,
    };
    adapter.save_as(dir, form, target, num_experts)?;
    Ok(files(dir).to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_is_within_the_kaiming_bound_and_b_is_zero() {
        let pair = initial_pair("model.layers.0.mlp.experts.1.up_proj", 4, 64, 8, 3).unwrap();
        let a: Vec<f32> = pair.a.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a.len(), 4 * 64);
        // Bound 1/√64 = 0.125; a uniform draw of 256 values spans most of it.
        assert!(a.iter().all(|v| v.abs() < 0.125));
        assert!(a.iter().any(|v| v.abs() > 0.1));
        let b: Vec<f32> = pair.b.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(b, vec![0.0; 8 * 4]);
    }

    #[test]
    fn seeds_depend_on_the_module_name_and_the_run_seed() {
        let a = |name: &str, seed| {
            kaiming_a(2, 4, name_seed(seed, name), &Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(a("x.gate_proj", 1), a("x.gate_proj", 1));
        assert_ne!(a("x.gate_proj", 1), a("x.up_proj", 1));
        assert_ne!(a("x.gate_proj", 1), a("x.gate_proj", 2));
    }
}
