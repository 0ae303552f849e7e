//! Helpers for the unit tests of the layers, kernels and training ops.

use candle_core::{Device, Tensor};

/// `t` as a variable, so that ops on it take the plain tensor path (the fast CPU kernels
/// only run on tensors that track no gradient).
pub(crate) fn tracked(t: &Tensor) -> Tensor {
    candle_core::Var::from_tensor(t)
        .unwrap()
        .as_tensor()
        .clone()
}

pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
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

pub(crate) fn randn(shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// `∂(Σ y·c)/∂v` for every `v` in `vars`, with `c` a fixed random tensor shaped as `y`.
pub(crate) fn input_grads(y: &Tensor, vars: &[&candle_core::Var], seed: u64) -> Vec<Tensor> {
    let c = randn(y.dims(), seed);
    let grads = (y * c).unwrap().sum_all().unwrap().backward().unwrap();
    vars.iter()
        .map(|v| grads.get(v.as_tensor()).unwrap().clone())
        .collect()
}

/// Largest difference relative to the largest magnitude of `b`.
pub(crate) fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let scale = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    max_diff(a, b) / scale.max(1e-12)
}
