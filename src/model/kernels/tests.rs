//! The direct kernels against the tensor-op path they replace, through the layers that run them.

use candle_core::{DType, Device, Tensor};

use crate::model::layers::{
    GluActivation, Linear, RmsNorm, SwiGlu, attention_mask, dispatch_experts, scaled_attention,
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
        act: GluActivation::Silu,
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

/// A bf16 copy of `t` (f32), and `t` rounded to bf16 and back: the weights a bf16 checkpoint
/// holds, and the f32 copy `--dtype f32` makes of them.
fn bf16_pair(t: &Tensor) -> (Tensor, Tensor) {
    let half = t.to_dtype(DType::BF16).unwrap();
    let back = half.to_dtype(DType::F32).unwrap();
    (half, back)
}

#[test]
fn half_precision_weights_compute_in_f32() {
    // Linear over bf16 and f16 tensors, any row count (one row too), with a bias: the tiles are
    // converted exactly, so the result is the f32 kernel's on the converted weights.
    let w = randn(&[40, 24], 2);
    let bias = randn(&[40], 3);
    for rows in [1, 5, 41] {
        let x = randn(&[rows, 24], 1);
        for dtype in [DType::BF16, DType::F16] {
            let half = w.to_dtype(dtype).unwrap();
            let back = half.to_dtype(DType::F32).unwrap();
            let fast = Linear::new(half, Some(bias.clone())).forward(&x).unwrap();
            let plain = Linear::new(tracked(&back), Some(bias.clone()))
                .forward(&x)
                .unwrap();
            assert_eq!(fast.dtype(), DType::F32);
            assert!(max_diff(&fast, &plain) < 1e-5, "{dtype:?}, {rows} rows");
        }
    }

    // Experts over bf16 weights, converted whole: exactly the f32 experts' output.
    let (tokens, hidden, inter, n_exp, k) = (37, 24, 16, 6, 2);
    let pairs: Vec<[(Tensor, Tensor); 3]> = (0..n_exp as u64)
        .map(|i| {
            [
                bf16_pair(&randn(&[inter, hidden], 10 + i)),
                bf16_pair(&randn(&[inter, hidden], 20 + i)),
                bf16_pair(&randn(&[hidden, inter], 30 + i)),
            ]
        })
        .collect();
    let experts = |pick: &dyn Fn(&(Tensor, Tensor)) -> Tensor| -> Vec<SwiGlu> {
        pairs
            .iter()
            .map(|[g, u, d]| SwiGlu {
                gate: Linear::new(pick(g), None),
                up: Linear::new(pick(u), None),
                down: Linear::new(pick(d), None),
                names: ["gate_proj", "up_proj", "down_proj"],
                act: GluActivation::Silu,
            })
            .collect()
    };
    let half = experts(&|p| p.0.clone());
    let full = experts(&|p| p.1.clone());
    // Expert 5 gets exactly one token (run as two, see `experts_forward`), expert 4 none.
    let mut indices: Vec<u32> = (0..tokens * k).map(|p| (p % 4) as u32).collect();
    indices[3] = 5;
    let x = randn(&[tokens, hidden], 3);
    let weights = randn(&[tokens, k], 4);
    let a = dispatch_experts(&x, &indices, &weights, &half).unwrap();
    let b = dispatch_experts(&x, &indices, &weights, &full).unwrap();
    assert_eq!(max_diff(&a, &b), 0.0);
    // A lone token's output is the one it gets among others.
    let lone = dispatch_experts(
        &x.narrow(0, 1, 1).unwrap(),
        &indices[2..4],
        &weights.narrow(0, 1, 1).unwrap(),
        &full,
    )
    .unwrap();
    assert_eq!(max_diff(&lone, &b.narrow(0, 1, 1).unwrap()), 0.0);

    // A decoding step (a few tokens): matrix-vector products straight from the bf16 weights.
    use crate::model::layers::moe::dispatch_experts_with;
    let few = x.narrow(0, 0, 3).unwrap();
    let few_w = weights.narrow(0, 0, 3).unwrap();
    let decoded = dispatch_experts_with(&few, &indices[..3 * k], &few_w, &half, true).unwrap();
    let tiled = dispatch_experts_with(&few, &indices[..3 * k], &few_w, &half, false).unwrap();
    assert!(max_diff(&decoded, &tiled) < 1e-5);
}

#[test]
fn large_half_precision_experts_run_in_chunks() {
    use super::experts::{ExpertData, expert_forward_tiled};
    use crate::model::weight::Weight;
    let (hidden, inter, n, k) = (24, 40, 5, 1);
    let [g, u, d] = [
        bf16_pair(&randn(&[inter, hidden], 1)),
        bf16_pair(&randn(&[inter, hidden], 2)),
        bf16_pair(&randn(&[hidden, inter], 3)),
    ];
    let xs: Vec<f32> = randn(&[n, hidden], 4)
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let ws = vec![1.0f32; n];
    let slots: Vec<u32> = (0..n as u32).collect();
    let (gw, uw, dw) = (
        Weight::Tensor(g.0),
        Weight::Tensor(u.0),
        Weight::Tensor(d.0),
    );
    let data = ExpertData::of([&gw, &uw, &dw], hidden).unwrap();
    let run = |tile_floats: usize| {
        let mut out = vec![0f32; n * hidden];
        expert_forward_tiled(&xs, &ws, hidden, k, &slots, &data, &mut out, tile_floats);
        out
    };
    // Whole (one tile), and in chunks of 16 intermediate rows (16, 16, 8).
    let (whole, chunked) = (run(1 << 20), run(3 * 16 * hidden));
    let expected = SwiGlu {
        gate: Linear::new(tracked(&g.1), None),
        up: Linear::new(tracked(&u.1), None),
        down: Linear::new(tracked(&d.1), None),
        names: ["gate_proj", "up_proj", "down_proj"],
        act: GluActivation::Silu,
    }
    .forward(&randn(&[n, hidden], 4))
    .unwrap();
    let expected: Vec<f32> = expected.flatten_all().unwrap().to_vec1().unwrap();
    for (name, got) in [("whole", &whole), ("chunked", &chunked)] {
        let diff = got
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "{name}: {diff}");
    }
}

/// gpt-oss experts: MXFP4 weights (gate and up interleaved in one fused tensor), biases and the
/// clamped gating, on the expert kernel (whole, in chunks, and as a decoding step) against the
/// tensor-op path over the dequantised weights.
#[test]
fn biased_clamped_mxfp4_experts_match_the_tensor_path() {
    use super::experts::{ExpertData, KernelExpert, expert_forward_tiled};
    use crate::model::layers::moe::dispatch_experts_with;
    use crate::model::mxfp4::{ByteView, Mxfp4Tensor};
    use crate::model::weight::Weight;
    use rand::{Rng, SeedableRng};
    let (tokens, hidden, inter, n_exp, k) = (21, 64, 32, 4, 2);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut packed = |shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        let blocks: Vec<u8> = (0..n / 2).map(|_| rng.random()).collect();
        let scales: Vec<u8> = (0..n / 32).map(|_| rng.random_range(122..128)).collect();
        let t = Mxfp4Tensor::new(ByteView::owned(blocks), ByteView::owned(scales), shape, "w");
        Weight::Mxfp4(Box::new(t.unwrap()))
    };
    let gate_up = packed(vec![n_exp, 2 * inter, hidden]);
    let down = packed(vec![n_exp, hidden, inter]);
    let act = GluActivation::ClampedSwish {
        alpha: 1.702,
        limit: 1.5,
    };
    let experts = |dense: bool| -> Vec<SwiGlu> {
        let w = |w: Weight| match dense {
            true => Weight::Tensor(tracked(&w.to_tensor().unwrap())),
            false => w,
        };
        (0..n_exp)
            .map(|e| {
                let b = |width: usize, seed: u64| Some(randn(&[width], 100 + 3 * e as u64 + seed));
                SwiGlu {
                    gate: Linear::new(
                        w(gate_up.every_other_row(e, 0, inter).unwrap()),
                        b(inter, 0),
                    ),
                    up: Linear::new(
                        w(gate_up.every_other_row(e, 1, inter).unwrap()),
                        b(inter, 1),
                    ),
                    down: Linear::new(w(down.slice(e, 0..hidden).unwrap()), b(hidden, 2)),
                    names: ["gate_proj", "up_proj", "down_proj"],
                    act,
                }
            })
            .collect()
    };
    let (packed_experts, dense_experts) = (experts(false), experts(true));
    let indices: Vec<u32> = (0..tokens * k).map(|p| ((p * 3) % n_exp) as u32).collect();
    let x = randn(&[tokens, hidden], 5);
    let weights = randn(&[tokens, k], 6);
    let fast = dispatch_experts(&x, &indices, &weights, &packed_experts).unwrap();
    let plain = dispatch_experts(&x, &indices, &weights, &dense_experts).unwrap();
    assert!(
        max_diff(&fast, &plain) < 1e-4,
        "{}",
        max_diff(&fast, &plain)
    );
    let (few, few_w) = (x.narrow(0, 0, 2).unwrap(), weights.narrow(0, 0, 2).unwrap());
    let decoded = dispatch_experts_with(&few, &indices[..2 * k], &few_w, &packed_experts, true);
    let decoded = decoded.unwrap();
    assert!(max_diff(&decoded, &plain.narrow(0, 0, 2).unwrap()) < 1e-4);

    // One expert in chunks of 16 intermediate rows against it whole.
    let e = &packed_experts[1];
    let kernel = KernelExpert {
        weights: [&e.gate.weight, &e.up.weight, &e.down.weight],
        biases: [
            e.gate.bias.as_ref(),
            e.up.bias.as_ref(),
            e.down.bias.as_ref(),
        ],
        act,
    };
    let data = ExpertData::of_kernel(&kernel, hidden).unwrap();
    let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let ws = vec![1.0f32; tokens];
    let slots: Vec<u32> = (0..tokens as u32).collect();
    let run = |tile_floats: usize| {
        let mut out = vec![0f32; tokens * hidden];
        expert_forward_tiled(&xs, &ws, hidden, 1, &slots, &data, &mut out, tile_floats);
        out
    };
    let (whole, chunked) = (run(1 << 20), run(3 * 16 * hidden));
    let diff = whole
        .iter()
        .zip(&chunked)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-4, "chunked: {diff}");
}
