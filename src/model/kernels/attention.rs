//! Attention: the inference kernel for `softmax(q·kᵀ·scale + mask)·v` (one task per sequence
//! and head), and the forward and backward passes of a whole frozen attention block (q / k / v
//! projections, q / k norms, rotary positions, attention, output projection) for training.

use candle_core::Tensor;
use candle_core::cpu::kernels::VecOps;

use super::gemm::{
    F32Data, Mat, SharedMut, gemm_to, matmul, matmul_to, par_each, par_matmul, with_scratch,
};
use super::norm::{rms_rows, rms_rows_backward};
use crate::model::error::Result;

/// Shapes and constants of a frozen attention block (see
/// [`FrozenAttention`](crate::model::autograd::FrozenAttention)).
pub(crate) struct AttnShape {
    pub b: usize,
    pub t: usize,
    pub hidden: usize,
    pub nh: usize,
    pub nkv: usize,
    pub d: usize,
    pub scale: f32,
    pub interleaved: bool,
}

/// The data of a frozen attention block: projection weights (`[out, in]`), the q / k
/// RMSNorm weights and epsilons, the rotary tables `[t, d/2]` and the mask `[b, 1, t, t]`.
pub(crate) struct AttnData<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub o: &'a [f32],
    pub q_norm: Option<(&'a [f32], f32)>,
    pub k_norm: Option<(&'a [f32], f32)>,
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    pub mask: Option<&'a [f32]>,
}

/// The forward pass's intermediate results, `[b·t, width]` row-major each.
struct AttnParts {
    /// Projections before the norm.
    qp: Vec<f32>,
    kp: Vec<f32>,
    v: Vec<f32>,
    /// Normalised and rotated.
    qr: Vec<f32>,
    kr: Vec<f32>,
    /// Attention output per head, `[b·t, nh·d]`.
    y: Vec<f32>,
}

/// Rotates (or with `inverse`, rotates back: the backward pass) every head of every row of
/// `x` `[b·t, heads·d]` in place, for positions `0..t` in each sequence.
fn rope_rows(x: &mut [f32], sh: &AttnShape, heads: usize, cos: &[f32], sin: &[f32], inverse: bool) {
    let (d, half) = (sh.d, sh.d / 2);
    for (r, row) in x.chunks_exact_mut(heads * d).enumerate() {
        let pos = r % sh.t;
        let (c, s) = (
            &cos[pos * half..(pos + 1) * half],
            &sin[pos * half..(pos + 1) * half],
        );
        for head in row.chunks_exact_mut(d) {
            for j in 0..half {
                let (i1, i2) = if sh.interleaved {
                    (2 * j, 2 * j + 1)
                } else {
                    (j, j + half)
                };
                let (x1, x2, c, s) = (head[i1], head[i2], c[j], if inverse { -s[j] } else { s[j] });
                head[i1] = x1 * c - x2 * s;
                head[i2] = x2 * c + x1 * s;
            }
        }
    }
}

/// Operand views of one sequence's head in a `[b·t, heads·d]` buffer: as rows `[t, d]`
/// and transposed `[d, t]`.
fn head_rows<'a>(buf: &'a [f32], sh: &AttnShape, heads: usize, bi: usize, h: usize) -> Mat<'a> {
    Mat {
        data: &buf[bi * sh.t * heads * sh.d + h * sh.d..],
        rs: heads * sh.d,
        cs: 1,
    }
}

fn head_cols<'a>(buf: &'a [f32], sh: &AttnShape, heads: usize, bi: usize, h: usize) -> Mat<'a> {
    Mat {
        data: &buf[bi * sh.t * heads * sh.d + h * sh.d..],
        rs: 1,
        cs: heads * sh.d,
    }
}

/// The softmax-ed, masked and scaled scores `[t, t]` of query head `h` of sequence `bi`.
fn head_probs(
    att: &mut [f32],
    qr: &[f32],
    kr: &[f32],
    mask: Option<&[f32]>,
    sh: &AttnShape,
    bi: usize,
    h: usize,
) {
    let t = sh.t;
    let g = h / (sh.nh / sh.nkv);
    let q = head_rows(qr, sh, sh.nh, bi, h);
    let k = head_cols(kr, sh, sh.nkv, bi, g);
    matmul(att, (t, 1), q, k, (t, t, sh.d));
    let m = mask.map(|m| &m[bi * t * t..(bi + 1) * t * t]);
    for (i, row) in att.chunks_exact_mut(t).enumerate() {
        row.iter_mut().for_each(|a| *a *= sh.scale);
        if let Some(m) = m {
            row.iter_mut()
                .zip(&m[i * t..(i + 1) * t])
                .for_each(|(a, &m)| *a += m);
        }
        softmax_in_place(row);
    }
}

/// The forward pass up to the attention output (`y` left empty without `with_y`).
fn attn_parts(xs: &[f32], w: &AttnData<'_>, sh: &AttnShape, with_y: bool) -> AttnParts {
    let (n, h, d) = (sh.b * sh.t, sh.hidden, sh.d);
    let (qw, kw) = (sh.nh * d, sh.nkv * d);
    let x = Mat::rows(xs, h);
    let mut qp = vec![0f32; n * qw];
    let mut kp = vec![0f32; n * kw];
    let mut v = vec![0f32; n * kw];
    par_matmul(&mut qp, false, x, Mat::t(w.q, h), (n, qw, h));
    par_matmul(&mut kp, false, x, Mat::t(w.k, h), (n, kw, h));
    par_matmul(&mut v, false, x, Mat::t(w.v, h), (n, kw, h));
    let (mut qr, mut kr) = (qp.clone(), kp.clone());
    if let Some((nw, eps)) = w.q_norm {
        rms_rows(&qp, &mut qr, nw, eps);
    }
    if let Some((nw, eps)) = w.k_norm {
        rms_rows(&kp, &mut kr, nw, eps);
    }
    rope_rows(&mut qr, sh, sh.nh, w.cos, w.sin, false);
    rope_rows(&mut kr, sh, sh.nkv, w.cos, w.sin, false);
    if !with_y {
        let y = Vec::new();
        return AttnParts {
            qp,
            kp,
            v,
            qr,
            kr,
            y,
        };
    }
    let mut y = vec![0f32; n * qw];
    let out = SharedMut(y.as_mut_ptr());
    let heads: Vec<usize> = (0..sh.b * sh.nh).collect();
    par_each(heads, |bh| {
        let (bi, hi) = (bh / sh.nh, bh % sh.nh);
        let g = hi / (sh.nh / sh.nkv);
        with_scratch(sh.t * sh.t, |att| {
            head_probs(att, &qr, &kr, w.mask, sh, bi, hi);
            let vm = head_rows(&v, sh, sh.nkv, bi, g);
            let at = bi * sh.t * qw + hi * d;
            // SAFETY: each task writes only its own head's columns of its sequence's rows.
            unsafe {
                matmul_to(
                    out.at(at),
                    (qw, 1),
                    Mat::rows(att, sh.t),
                    vm,
                    (sh.t, d, sh.t),
                )
            };
        });
    });
    AttnParts {
        qp,
        kp,
        v,
        qr,
        kr,
        y,
    }
}

/// The attention block `o(attention(rope(norm(q(x))), rope(norm(k(x))), v(x)))` for `xs`
/// `[b·t, hidden]`.
pub(crate) fn attn_forward(xs: &[f32], w: &AttnData<'_>, sh: &AttnShape) -> Vec<f32> {
    let parts = attn_parts(xs, w, sh, true);
    let (n, qw) = (sh.b * sh.t, sh.nh * sh.d);
    let mut out = vec![0f32; n * sh.hidden];
    par_matmul(
        &mut out,
        false,
        Mat::rows(&parts.y, qw),
        Mat::t(w.o, qw),
        (n, sh.hidden, qw),
    );
    out
}

/// `∂L/∂x` of [`attn_forward`] for the output gradient `gs` (the weights get none).
pub(crate) fn attn_backward(xs: &[f32], gs: &[f32], w: &AttnData<'_>, sh: &AttnShape) -> Vec<f32> {
    let AttnParts {
        qp, kp, v, qr, kr, ..
    } = attn_parts(xs, w, sh, false);
    let (n, h, d, t) = (sh.b * sh.t, sh.hidden, sh.d, sh.t);
    let (qw, kw) = (sh.nh * d, sh.nkv * d);
    let mut dy = vec![0f32; n * qw];
    par_matmul(
        &mut dy,
        false,
        Mat::rows(gs, h),
        Mat::rows(w.o, qw),
        (n, qw, h),
    );
    let mut dq = vec![0f32; n * qw];
    let mut dk = vec![0f32; n * kw];
    let mut dv = vec![0f32; n * kw];
    let (dq_p, dk_p, dv_p) = (
        SharedMut(dq.as_mut_ptr()),
        SharedMut(dk.as_mut_ptr()),
        SharedMut(dv.as_mut_ptr()),
    );
    let n_rep = sh.nh / sh.nkv;
    // One task per (sequence, kv head): its query heads add to the same dk / dv.
    let groups: Vec<usize> = (0..sh.b * sh.nkv).collect();
    par_each(groups, |bg| {
        let (bi, g) = (bg / sh.nkv, bg % sh.nkv);
        with_scratch(2 * t * t, |scratch| {
            let (p, dp) = scratch.split_at_mut(t * t);
            for hi in g * n_rep..(g + 1) * n_rep {
                head_probs(p, &qr, &kr, w.mask, sh, bi, hi);
                let dyh = head_rows(&dy, sh, sh.nh, bi, hi);
                let (kv_at, q_at) = (bi * t * kw + g * d, bi * t * qw + hi * d);
                // SAFETY (all three products): each task writes only its own kv head's
                // columns of dk / dv and its query heads' columns of dq, of its sequence.
                // dV += Pᵀ·dY.
                unsafe {
                    gemm_to(
                        dv_p.at(kv_at),
                        (kw, 1),
                        Mat::cols(p, t),
                        dyh,
                        (t, d, t),
                        true,
                    )
                };
                // dP = dY·Vᵀ; dS = P ∘ (dP - rowsum(dP ∘ P)), times the scale.
                matmul(dp, (t, 1), dyh, head_cols(&v, sh, sh.nkv, bi, g), (t, t, d));
                for (pr, dr) in p.chunks_exact(t).zip(dp.chunks_exact_mut(t)) {
                    let dot: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
                    dr.iter_mut()
                        .zip(pr)
                        .for_each(|(d, &p)| *d = p * (*d - dot) * sh.scale);
                }
                // dQ = dS·K, dK += dSᵀ·Q.
                let k = head_rows(&kr, sh, sh.nkv, bi, g);
                unsafe {
                    gemm_to(
                        dq_p.at(q_at),
                        (qw, 1),
                        Mat::rows(dp, t),
                        k,
                        (t, d, t),
                        false,
                    )
                };
                let q = head_rows(&qr, sh, sh.nh, bi, hi);
                unsafe {
                    gemm_to(
                        dk_p.at(kv_at),
                        (kw, 1),
                        Mat::cols(dp, t),
                        q,
                        (t, d, t),
                        true,
                    )
                };
            }
        });
    });
    rope_rows(&mut dq, sh, sh.nh, w.cos, w.sin, true);
    rope_rows(&mut dk, sh, sh.nkv, w.cos, w.sin, true);
    if let Some((nw, eps)) = w.q_norm {
        rms_rows_backward(&qp, &mut dq, nw, eps, None);
    }
    if let Some((nw, eps)) = w.k_norm {
        rms_rows_backward(&kp, &mut dk, nw, eps, None);
    }
    drop(v);
    let mut dx = vec![0f32; n * h];
    par_matmul(
        &mut dx,
        false,
        Mat::rows(&dq, qw),
        Mat::rows(w.q, h),
        (n, h, qw),
    );
    par_matmul(
        &mut dx,
        true,
        Mat::rows(&dk, kw),
        Mat::rows(w.k, h),
        (n, h, kw),
    );
    par_matmul(
        &mut dx,
        true,
        Mat::rows(&dv, kw),
        Mat::rows(w.v, h),
        (n, h, kw),
    );
    dx
}

/// [`scaled_attention`](crate::model::layers::scaled_attention) with one task per (sequence,
/// head) on the thread pool.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Option<Tensor>> {
    let (Ok((b, nh, t, d)), Ok((kb, nkv, s, kd)), Ok((vb, vkv, vs, dv))) =
        (q.dims4(), k.dims4(), v.dims4())
    else {
        return Ok(None);
    };
    let shapes_ok = kb == b && vb == b && kd == d && vkv == nkv && vs == s;
    let empty = [b, nh, t, d, s, dv].contains(&0);
    if !shapes_ok || empty || nkv == 0 || nh % nkv != 0 {
        return Ok(None);
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let (Some(qd), Some(kd_), Some(vd)) = (F32Data::of(&q), F32Data::of(&k), F32Data::of(&v))
    else {
        return Ok(None);
    };
    // The mask is `[b, 1, t, s]` (shared by the heads) or `[b, h, t, s]`.
    let mask = match mask {
        None => None,
        Some(m) => match m.dims() {
            [mb, mh, mt, ms] if *mb == b && (*mh == 1 || *mh == nh) && *mt == t && *ms == s => {
                match F32Data::of(m) {
                    Some(md) => Some((md, *mh)),
                    None => return Ok(None),
                }
            }
            _ => return Ok(None),
        },
    };
    let (qs, ks, vs_) = (qd.slice(), kd_.slice(), vd.slice());
    let ms = mask.as_ref().map(|(m, mh)| (m.slice(), *mh));
    let n_rep = nh / nkv;
    let scale = scale as f32;
    let mut out = vec![0f32; b * nh * t * dv];
    let heads: Vec<_> = out.chunks_mut(t * dv).enumerate().collect();
    par_each(heads, |(bh, o)| {
        let (bi, hi) = (bh / nh, bh % nh);
        let kv = bi * nkv + hi / n_rep;
        let qh = &qs[bh * t * d..(bh + 1) * t * d];
        let kh = &ks[kv * s * d..(kv + 1) * s * d];
        let vh = &vs_[kv * s * dv..(kv + 1) * s * dv];
        with_scratch(t * s, |att| {
            let row_major = (s, 1);
            matmul(att, row_major, Mat::rows(qh, d), Mat::t(kh, d), (t, s, d));
            let m = ms.map(|(m, mh)| {
                let i = if mh == 1 { bi } else { bh };
                &m[i * t * s..(i + 1) * t * s]
            });
            for (i, row) in att.chunks_exact_mut(s).enumerate() {
                row.iter_mut().for_each(|a| *a *= scale);
                if let Some(m) = m {
                    let mrow = &m[i * s..(i + 1) * s];
                    row.iter_mut().zip(mrow).for_each(|(a, &m)| *a += m);
                }
                softmax_in_place(row);
            }
            let (a, v) = (Mat::rows(att, s), Mat::rows(vh, dv));
            matmul(o, (dv, 1), a, v, (t, dv, s));
        });
    });
    drop((qd, kd_, vd, mask));
    Ok(Some(Tensor::from_vec(out, (b, nh, t, dv), q.device())?))
}

/// `candle_nn::ops::softmax_last_dim` on one row, with the same reductions.
fn softmax_in_place(row: &mut [f32]) {
    if row.is_empty() {
        return;
    }
    let mut max = f32::NEG_INFINITY;
    // SAFETY: `row` is non-empty and the reductions read `row.len()` elements.
    unsafe { f32::vec_reduce_max(row.as_ptr(), &mut max, row.len()) };
    row.iter_mut().for_each(|a| *a = (*a - max).exp());
    let mut sum = 0f32;
    unsafe { f32::vec_reduce_sum(row.as_ptr(), &mut sum, row.len()) };
    row.iter_mut().for_each(|a| *a /= sum);
}
