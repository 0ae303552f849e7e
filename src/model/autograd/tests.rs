//! The training ops against candle's composite versions: values and gradients.

use candle_core::{D, Device, Tensor, Var};

use super::{causal_softmax, cross_entropy_rows, rms_norm, softmax_detached_max};
use crate::model::layers::{GluActivation, Linear, RmsNorm, SwiGlu, dispatch_experts};
use crate::model::test_support::{input_grads, randn, rel_diff, tracked};

#[test]
fn frozen_experts_op_matches_the_tensor_path() {
    // Uneven loads, expert 5 unused, a token count that isn't a tile multiple.
    let (tokens, hidden, inter, n_exp, k) = (37, 24, 16, 6, 2);
    let expert = |i: u64, w: &dyn Fn(&Tensor) -> Tensor| SwiGlu {
        gate: Linear::new(w(&randn(&[inter, hidden], 10 + i)), None),
        up: Linear::new(w(&randn(&[inter, hidden], 20 + i)), None),
        down: Linear::new(w(&randn(&[hidden, inter], 30 + i)), None),
        names: ["gate_proj", "up_proj", "down_proj"],
        act: GluActivation::Silu,
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
        grads
            .get(lin.weight.as_tensor().expect("a tensor"))
            .is_none(),
        "no gradient for the frozen weight"
    );
}

fn close(a: &Tensor, b: &Tensor, tol: f32) {
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < tol, "max difference {d}");
}

#[test]
fn cross_entropy_matches_composite_with_gradients() {
    let dev = Device::Cpu;
    let x = Var::randn(0f32, 2.0, (5, 7), &dev).unwrap();
    let t = Tensor::new(&[0u32, 6, 3, 3, 1], &dev).unwrap();
    let w = Tensor::new(&[1f32, 2., 3., 4., 5.], &dev).unwrap();
    let fused = (cross_entropy_rows(x.as_tensor(), &t).unwrap() * &w)
        .unwrap()
        .sum_all()
        .unwrap();
    let ls = candle_nn::ops::log_softmax(x.as_tensor(), D::Minus1).unwrap();
    let composite = (ls
        .gather(&t.unsqueeze(1).unwrap(), 1)
        .unwrap()
        .squeeze(1)
        .unwrap()
        .neg()
        .unwrap()
        * &w)
        .unwrap()
        .sum_all()
        .unwrap();
    close(&fused, &composite, 1e-5);
    let (g1, g2) = (fused.backward().unwrap(), composite.backward().unwrap());
    close(
        g1.get(x.as_tensor()).unwrap(),
        g2.get(x.as_tensor()).unwrap(),
        1e-5,
    );
}

#[test]
fn rms_norm_matches_the_engine_with_gradients() {
    let dev = Device::Cpu;
    let x = Var::randn(0f32, 1.0, (2, 3, 8), &dev).unwrap();
    let w = Var::randn(1f32, 0.3, 8, &dev).unwrap();
    let up = Tensor::randn(0f32, 1.0, (2, 3, 8), &dev).unwrap();
    let fused = (rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap() * &up)
        .unwrap()
        .sum_all()
        .unwrap();
    let engine = crate::model::layers::RmsNorm {
        weight: w.as_tensor().clone(),
        eps: 1e-5,
    };
    let composite = (engine.forward(x.as_tensor()).unwrap() * &up)
        .unwrap()
        .sum_all()
        .unwrap();
    close(&fused, &composite, 1e-5);
    let (g1, g2) = (fused.backward().unwrap(), composite.backward().unwrap());
    close(
        g1.get(x.as_tensor()).unwrap(),
        g2.get(x.as_tensor()).unwrap(),
        1e-5,
    );
    close(
        g1.get(w.as_tensor()).unwrap(),
        g2.get(w.as_tensor()).unwrap(),
        1e-5,
    );
}

#[test]
fn causal_softmax_matches_masked_softmax_with_gradients() {
    let dev = Device::Cpu;
    let t = 5;
    let x = Var::randn(0f32, 1.0, (2, 3, t, t), &dev).unwrap();
    let up = Tensor::randn(0f32, 1.0, (2, 3, t, t), &dev).unwrap();
    let fused = causal_softmax(x.as_tensor()).unwrap();
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    let mask = Tensor::from_vec(mask, (t, t), &dev).unwrap();
    let composite = softmax_detached_max(&x.as_tensor().broadcast_add(&mask).unwrap()).unwrap();
    close(&fused, &composite, 1e-6);
    let f = (fused * &up).unwrap().sum_all().unwrap();
    let c = (composite * &up).unwrap().sum_all().unwrap();
    let (g1, g2) = (f.backward().unwrap(), c.backward().unwrap());
    close(
        g1.get(x.as_tensor()).unwrap(),
        g2.get(x.as_tensor()).unwrap(),
        1e-5,
    );
}
