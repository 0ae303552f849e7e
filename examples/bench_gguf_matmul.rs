//! One Qwen3-30B-A3B expert projection (`[768, 2048]`) stored as Q4_K / Q8_0, multiplied by
//! `n` token rows three ways: MoEScope's kernels over the blocks in place (dequantised a tile
//! at a time into f32, then a matrix product), candle's `QMatMul` (activations quantised to
//! Q8_K, integer dot products: llama.cpp's method), and candle's dequantise-then-matmul.
//!
//! ```text
//! cargo run --release --example bench_gguf_matmul -- [repeats]
//! ```
//!
//! Prints the median time per product for each token count, and the largest difference from
//! the f32 product of the dequantised weight.

use std::time::Instant;

use anyhow::Result;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use moescope::model::gguf::{GgmlTensor, GgmlType};
use moescope::model::layers::linear::Linear;
use moescope::model::mxfp4::ByteView;
use moescope::model::weight::Weight;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(repeats: usize, mut f: impl FnMut() -> Result<Tensor>) -> Result<(f64, Tensor)> {
    let mut out = f()?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t = Instant::now();
        out = f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok((median(times), out))
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn main() -> Result<()> {
    let repeats: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(5);
    let dev = Device::Cpu;
    let (rows, cols) = (768usize, 2048usize);
    let dense = (Tensor::randn(0f32, 0.02, (rows, cols), &dev)?).contiguous()?;
    println!("[{rows}, {cols}] weight, median of {repeats}; ms per product");
    println!(
        "{:>6} {:>6} {:>12} {:>12} {:>14} {:>10} {:>10}",
        "type", "tokens", "moescope", "QMatMul", "dequant+mm", "err ours", "err qmm"
    );
    for (dtype, ours) in [
        (GgmlDType::Q4K, GgmlType::Q4K),
        (GgmlDType::Q8_0, GgmlType::Q8_0),
    ] {
        let q = QTensor::quantize(&dense, dtype)?;
        let exact = q.dequantize(&dev)?;
        let bytes = q.data()?.to_vec();
        let weight = GgmlTensor::new(ByteView::owned(bytes), ours, vec![rows, cols], "w")?;
        let linear = Linear::new(Weight::Ggml(Box::new(weight)), None);
        let qmm = QMatMul::from_qtensor(q)?;
        let for_dequant = QTensor::quantize(&dense, dtype)?;
        for n in [1usize, 8, 32, 128, 512] {
            let x = Tensor::randn(0f32, 1.0, (n, cols), &dev)?;
            let want = x.matmul(&exact.t()?)?;
            let (t_ours, y_ours) = time(repeats, || Ok(linear.forward(&x)?))?;
            let (t_qmm, y_qmm) = time(repeats, || Ok(qmm.forward(&x)?))?;
            let (t_deq, _) = time(repeats, || {
                let w = for_dequant.dequantize(&dev)?;
                Ok(x.matmul(&w.t()?)?)
            })?;
            println!(
                "{:>6} {n:>6} {:>12.3} {:>12.3} {:>14.3} {:>10.2e} {:>10.2e}",
                ours.name(),
                t_ours * 1e3,
                t_qmm * 1e3,
                t_deq * 1e3,
                max_diff(&y_ours, &want)?,
                max_diff(&y_qmm, &want)?,
            );
        }
    }
    Ok(())
}
