//! RMSNorm rows, forward and backward: the inference kernel for a whole tensor, and the row
//! functions the training ops share (the one RMSNorm backward pass of the crate).

use candle_core::Tensor;
use candle_core::cpu::kernels::VecOps;

use super::gemm::{F32Data, par_each};
use crate::model::error::Result;

/// [`RmsNorm::forward`](crate::model::layers::RmsNorm::forward) with the same f32 operations,
/// one pass per row, blocks of rows across the worker threads.
pub(crate) fn rms_norm(weight: &Tensor, eps: f64, x: &Tensor) -> Result<Option<Tensor>> {
    let (Some(&h), [wh]) = (x.dims().last(), weight.dims()) else {
        return Ok(None);
    };
    if h == 0 || *wh != h {
        return Ok(None);
    }
    let (Some(xd), Some(wd)) = (F32Data::of(x), F32Data::of(weight)) else {
        return Ok(None);
    };
    let (xs, ws) = (xd.slice(), wd.slice());
    // `mean_keepdim`, `+ eps`, `sqrt`, `broadcast_div` and `broadcast_mul` as candle does
    // them in f32: the sum by `vec_reduce_sum`, the affine ops as `v * mul + add`.
    let (inv_h, eps) = ((1.0 / h as f64) as f32, eps as f32);
    let row = |src: &[f32], dst: &mut [f32]| {
        dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v * v);
        let mut sum = 0f32;
        // SAFETY: `dst` holds `h` elements.
        unsafe { f32::vec_reduce_sum(dst.as_ptr(), &mut sum, h) };
        let den = ((sum * inv_h + 0.0) * 1.0 + eps).sqrt();
        for ((d, &v), &w) in dst.iter_mut().zip(src).zip(ws) {
            *d = v / den * w;
        }
    };
    let mut out = vec![0f32; xs.len()];
    let rows = xs.len() / h;
    let threads = candle_core::utils::get_num_threads().max(1);
    let block = rows.div_ceil(4 * threads).max(64 * 1024 / h).max(1);
    let blocks: Vec<_> = out.chunks_mut(block * h).enumerate().collect();
    par_each(blocks, |(i, dst)| {
        let src = &xs[i * block * h..i * block * h + dst.len()];
        for (s, d) in src.chunks_exact(h).zip(dst.chunks_exact_mut(h)) {
            row(s, d);
        }
    });
    drop((xd, wd));
    Ok(Some(Tensor::from_vec(out, x.dims(), x.device())?))
}

/// `x / sqrt(mean(x²) + eps) · w` per row of `width` (as `RmsNorm::forward` computes it).
pub(super) fn rms_rows(src: &[f32], dst: &mut [f32], w: &[f32], eps: f32) {
    let width = w.len();
    let inv = (1.0 / width as f64) as f32;
    for (s, d) in src.chunks_exact(width).zip(dst.chunks_exact_mut(width)) {
        d.iter_mut().zip(s).for_each(|(d, &v)| *d = v * v);
        let mut sum = 0f32;
        // SAFETY: `d` holds `width` elements.
        unsafe { f32::vec_reduce_sum(d.as_ptr(), &mut sum, width) };
        let den = (sum * inv + eps).sqrt();
        for ((d, &v), &w) in d.iter_mut().zip(s).zip(w) {
            *d = v / den * w;
        }
    }
}

/// Backward pass of [`rms_rows`]: `dy` (in place) becomes `∂L/∂x`; with `dw` (of `w.len()`),
/// `∂L/∂w` is added to it (for a trainable weight).
pub(crate) fn rms_rows_backward(
    x: &[f32],
    dy: &mut [f32],
    w: &[f32],
    eps: f32,
    mut dw: Option<&mut [f32]>,
) {
    let width = w.len();
    for (x, dy) in x.chunks_exact(width).zip(dy.chunks_exact_mut(width)) {
        let ms = x.iter().map(|v| v * v).sum::<f32>() / width as f32;
        let r = 1.0 / (ms + eps).sqrt();
        let dot: f32 = x
            .iter()
            .zip(dy.iter())
            .zip(w)
            .map(|((x, d), w)| x * d * w)
            .sum();
        let c = dot * r * r * r / width as f32;
        if let Some(dw) = dw.as_deref_mut() {
            for ((dw, &g), &x) in dw.iter_mut().zip(dy.iter()).zip(x) {
                *dw += g * x * r;
            }
        }
        for ((d, &x), &w) in dy.iter_mut().zip(x).zip(w) {
            *d = *d * w * r - x * c;
        }
    }
}

/// [`rms_rows`] over `xs` (rows of `w.len()`) in blocks of rows across the worker threads,
/// or with `backward` its backward pass for the output gradient `gs`: `∂L/∂x`.
pub(crate) fn rms_norm_rows(
    xs: &[f32],
    w: &[f32],
    eps: f32,
    backward: bool,
    gs: &[f32],
) -> Vec<f32> {
    let h = w.len();
    let mut out = match backward {
        true => gs.to_vec(),
        false => vec![0f32; xs.len()],
    };
    let rows = xs.len() / h.max(1);
    let threads = candle_core::utils::get_num_threads().max(1);
    let block = rows.div_ceil(4 * threads).max(16 * 1024 / h.max(1)).max(1);
    let blocks: Vec<_> = out.chunks_mut(block * h).enumerate().collect();
    par_each(blocks, |(i, dst)| {
        let src = &xs[i * block * h..i * block * h + dst.len()];
        match backward {
            true => rms_rows_backward(src, dst, w, eps, None),
            false => rms_rows(src, dst, w, eps),
        }
    });
    out
}
