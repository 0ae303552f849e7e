//! The direct kernels against the tensor-op path they replace, through the layers that run them.

use candle_core::{DType, Device, Tensor};

use crate::model::layers::{
    Linear, RmsNorm, SwiGlu, attention_mask, dispatch_experts, scaled_attention,
};
use crate::model::test_support::{max_diff, randn, tracked};

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
