//! Gated experts: each expert on just the tokens routed to it, the experts side by side on the
//! thread pool, forward (inference and training) and backward (`∂L/∂x` and `∂L/∂w` for the
//! routing weights; none for the experts' frozen weights). Inference also runs experts with
//! biases and another gating than SwiGLU (gpt-oss's clamped one, see [`GluActivation`]).

use candle_core::Tensor;

use super::activation::GluActivation;
use super::gemm::{F32Data, Mat, gemm_into, matmul, par_each, with_scratch};
use super::weights::{WeightData, WeightSlice, gemv_rows, with_tiles};
use crate::model::error::Result;
use crate::model::gguf::Q8kRows;
use crate::model::weight::Weight;

/// What the inference kernel needs of one expert: its gate, up and down weights, their biases
/// (if any) and its gating.
#[derive(Clone, Copy)]
pub(crate) struct KernelExpert<'a> {
    pub(crate) weights: [&'a Weight; 3],
    pub(crate) biases: [Option<&'a Tensor>; 3],
    pub(crate) act: GluActivation,
}

/// An expert's biases (read locks on f32 CPU tensors) and gating.
struct Extras<'a> {
    biases: [Option<F32Data<'a>>; 3],
    act: GluActivation,
}

/// Borrowed [`Extras`]: the bias values of gate, up and down, and the gating.
#[derive(Clone, Copy)]
struct ExtraSlices<'a> {
    biases: [Option<&'a [f32]>; 3],
    act: GluActivation,
}

/// Adds `bias[j0 + j]` to every value of feature `j` of a column-major `[n, features]` block
/// (`features` runs of `n` values).
fn add_feature_bias(y: &mut [f32], n: usize, bias: Option<&[f32]>, j0: usize) {
    let Some(bias) = bias else {
        return;
    };
    for (run, &b) in y.chunks_exact_mut(n.max(1)).zip(&bias[j0..]) {
        run.iter_mut().for_each(|v| *v += b);
    }
}

/// Floats of f32 tiles one thread converts a half-precision expert into (64 MiB): a whole
/// expert of the common MoE shapes (OLMoE, Qwen3-MoE, DeepSeek-V2-Lite), a chunk of a larger
/// one (Mixtral).
const EXPERT_TILE_FLOATS: usize = 1 << 24;

/// An expert's three weights, `[inter, hidden]`, `[inter, hidden]`, `[hidden, inter]`.
pub(crate) struct ExpertData<'a> {
    gate: WeightData<'a>,
    up: WeightData<'a>,
    down: WeightData<'a>,
    inter: usize,
    extras: Extras<'a>,
}

impl<'a> ExpertData<'a> {
    /// The data of a plain expert's gate, up and down weights, `None` unless they are on the
    /// CPU (f32 / f16 / bf16 tensors that are contiguous and untracked, or mapped views) and
    /// of matching shapes.
    pub(crate) fn of([g, u, d]: [&'a Weight; 3], hidden: usize) -> Option<Self> {
        let inter = g.dims().first().copied()?;
        let shapes_ok = g.dims() == [inter, hidden]
            && u.dims() == [inter, hidden]
            && d.dims() == [hidden, inter];
        shapes_ok.then_some(())?;
        Some(Self {
            gate: WeightData::of(g)?,
            up: WeightData::of(u)?,
            down: WeightData::of(d)?,
            inter,
            extras: Extras {
                biases: [None, None, None],
                act: GluActivation::Silu,
            },
        })
    }

    /// [`ExpertData::of`] for an expert with biases (f32 CPU tensors of the projections' output
    /// widths) and any gating; `None` when something does not qualify.
    pub(crate) fn of_kernel(e: &KernelExpert<'a>, hidden: usize) -> Option<Self> {
        let mut data = Self::of(e.weights, hidden)?;
        let widths = [data.inter, data.inter, hidden];
        let mut biases = [None, None, None];
        for ((dst, b), width) in biases.iter_mut().zip(e.biases).zip(widths) {
            if let Some(b) = b {
                let d = F32Data::of(b).filter(|d| d.slice().len() == width)?;
                *dst = Some(d);
            }
        }
        data.extras = Extras { biases, act: e.act };
        Some(data)
    }

    fn extras(&self) -> ExtraSlices<'_> {
        let [g, u, d] = &self.extras.biases;
        ExtraSlices {
            biases: [g, u, d].map(|b| b.as_ref().map(F32Data::slice)),
            act: self.extras.act,
        }
    }

    /// [`ExpertData::of`] for weights stored as f32 (what the training kernels read).
    pub(crate) fn of_f32(w: [&'a Weight; 3], hidden: usize) -> Option<Self> {
        Self::of(w, hidden).filter(|d| d.f32().is_some())
    }

    /// Gate, up and down when all three are stored as f32.
    fn f32(&self) -> Option<[&[f32]; 3]> {
        Some([self.gate.f32()?, self.up.f32()?, self.down.f32()?])
    }
}

/// [`dispatch_experts`](crate::model::layers::dispatch_experts) with the experts side by side on
/// the thread pool; `slots[e]` lists the positions in the row-major `[tokens, k]` choice of the
/// tokens routed to `e`, `experts[e]` its weights, biases and gating when it has no LoRA update.
pub(crate) fn dispatch_experts(
    x: &Tensor,
    k: usize,
    slots: &[Vec<u32>],
    weights: &Tensor,
    experts: &[Option<KernelExpert<'_>>],
    decoding: bool,
) -> Result<Option<Tensor>> {
    let Ok((tokens, hidden)) = x.dims2() else {
        return Ok(None);
    };
    if tokens == 0 || hidden == 0 {
        return Ok(None);
    }
    let (Some(xd), Some(wd)) = (F32Data::of(x), F32Data::of(weights)) else {
        return Ok(None);
    };
    if weights.elem_count() != tokens * k {
        return Ok(None);
    }
    let data: Option<Vec<Option<ExpertData<'_>>>> = experts
        .iter()
        .zip(slots)
        .map(|(e, s)| match s.is_empty() {
            true => Some(None),
            false => e
                .as_ref()
                .and_then(|e| ExpertData::of_kernel(e, hidden))
                .map(Some),
        })
        .collect();
    let Some(data) = data else {
        return Ok(None);
    };
    let out = experts_forward(xd.slice(), wd.slice(), hidden, k, slots, &data, decoding);
    drop((xd, wd, data));
    Ok(Some(Tensor::from_vec(out, (tokens, hidden), x.device())?))
}

/// The weights of the experts that have tokens in `slots` (`None` for the others), or
/// `None` if one of those is not a plain f32 SwiGLU on the CPU (`experts[e]`: its gate, up and
/// down weights when it has no bias and no LoRA update).
pub(crate) fn expert_data<'a>(
    experts: &[Option<[&'a Weight; 3]>],
    slots: &[Vec<u32>],
    hidden: usize,
) -> Option<Vec<Option<ExpertData<'a>>>> {
    experts
        .iter()
        .zip(slots)
        .map(|(e, s)| match s.is_empty() {
            true => Some(None),
            false => e.and_then(|w| ExpertData::of(w, hidden)).map(Some),
        })
        .collect()
}

/// Rows of a `[slots, hidden]` buffer that hold each expert's slots one expert after the
/// other: `row_of_slot[pos]` for every position in `slots` (`u32::MAX` for positions in
/// none), the total row count, and each expert's first row.
fn slot_rows(slots: &[Vec<u32>], positions: usize) -> (Vec<u32>, usize, Vec<usize>) {
    let mut row_of_slot = vec![u32::MAX; positions];
    let mut first = Vec::with_capacity(slots.len());
    let mut row = 0usize;
    for s in slots {
        first.push(row);
        for (i, &pos) in s.iter().enumerate() {
            row_of_slot[pos as usize] = (row + i) as u32;
        }
        row += s.len();
    }
    (row_of_slot, row, first)
}

/// Each token's sum over the rows of `ys` of its slots, in increasing expert order (as
/// `index_add` adds the expert-ordered rows), starting from zero.
fn sum_rows_per_token(ys: &[f32], row_of_slot: &[u32], hidden: usize, k: usize) -> Vec<f32> {
    let tokens = row_of_slot.len() / k.max(1);
    let mut out = vec![0f32; tokens * hidden];
    let token_rows: Vec<_> = out.chunks_mut(hidden).enumerate().collect();
    par_each(token_rows, |(t, dst)| {
        let mut rows: Vec<u32> = row_of_slot[t * k..(t + 1) * k].to_vec();
        // Rows are numbered in expert order, so sorting rows sorts by expert.
        rows.sort_unstable();
        for r in rows.into_iter().take_while(|&r| r != u32::MAX) {
            let src = &ys[r as usize * hidden..(r as usize + 1) * hidden];
            dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
        }
    });
    out
}

/// `Σ_e w·expert_e(x)` per token over the experts in `slots` (`xs` `[tokens, hidden]`,
/// `ws` `[tokens, k]`, both row-major); positions in no expert's list add nothing. With
/// `decoding` (a KV-cached step of a few tokens) half-precision experts run as matrix-vector
/// products instead of on converted tiles.
pub(crate) fn experts_forward(
    xs: &[f32],
    ws: &[f32],
    hidden: usize,
    k: usize,
    slots: &[Vec<u32>],
    data: &[Option<ExpertData<'_>>],
    decoding: bool,
) -> Vec<f32> {
    // Each expert's weighted outputs go to its own block of rows of `ys`, in expert order.
    let (row_of_slot, rows, _) = slot_rows(slots, ws.len());
    let mut ys = vec![0f32; rows * hidden];
    let mut jobs = Vec::new();
    let mut rest = ys.as_mut_slice();
    for (d, s) in data.iter().zip(slots) {
        let (block, tail) = rest.split_at_mut(s.len() * hidden);
        rest = tail;
        if let Some(d) = d {
            jobs.push((d, s.as_slice(), block));
        }
    }
    // The busiest experts first, so that the pool's threads finish together.
    jobs.sort_by_key(|(_, s, _)| std::cmp::Reverse(s.len()));
    par_each(jobs, |(d, s, block)| {
        if expert_forward_integer(xs, ws, hidden, k, s, d, block) {
            return;
        }
        if decoding && d.f32().is_none() {
            return expert_forward_gemv(xs, ws, hidden, k, s, d, block);
        }
        let run = |s: &[u32], block: &mut [f32]| match d.f32() {
            Some(w) => expert_forward_f32(xs, ws, hidden, k, s, w, d.inter, d.extras(), block),
            None => expert_forward_tiled(xs, ws, hidden, k, s, d, block, EXPERT_TILE_FLOATS),
        };
        // A single token would take `gemm`'s matrix-vector path, which sums in another order
        // than its matrix-matrix kernels: run it twice instead, so that a token's output does
        // not depend on how many others share its expert (layer-major runs group batches).
        if let &[only] = s {
            let mut two = vec![0f32; 2 * hidden];
            run(&[only, only], &mut two);
            block.copy_from_slice(&two[..hidden]);
        } else {
            run(s, block);
        }
    });
    sum_rows_per_token(&ys, &row_of_slot, hidden, k)
}

/// Tokens per block of the transposes below: sixteen f32 values fill one 64-byte cache line,
/// so each block writes (or reads) whole lines of the column-major side.
const TRANSPOSE_BLOCK: usize = 16;

/// Gathers the tokens of `slots` from `xs` as the columns of a column-major `[hidden, n]`
/// matrix in `xe` (one column per token), which the kernels read without repacking.
fn gather_columns(xs: &[f32], hidden: usize, k: usize, s: &[u32], xe: &mut [f32]) {
    let n = s.len();
    for (b, block) in s.chunks(TRANSPOSE_BLOCK).enumerate() {
        let i0 = b * TRANSPOSE_BLOCK;
        let rows: Vec<&[f32]> = block
            .iter()
            .map(|&pos| {
                let t = pos as usize / k;
                &xs[t * hidden..(t + 1) * hidden]
            })
            .collect();
        for h in 0..hidden {
            let dst = &mut xe[h * n + i0..h * n + i0 + rows.len()];
            for (d, row) in dst.iter_mut().zip(&rows) {
                *d = row[h];
            }
        }
    }
}

/// Writes the column-major `[hidden, n]` expert output `y`, weighted by each slot's routing
/// weight, into `block`'s rows (one per slot).
fn write_weighted(y: &[f32], ws: &[f32], hidden: usize, s: &[u32], block: &mut [f32]) {
    let n = s.len();
    for (b, (rows, slots)) in block
        .chunks_mut(TRANSPOSE_BLOCK * hidden)
        .zip(s.chunks(TRANSPOSE_BLOCK))
        .enumerate()
    {
        let i0 = b * TRANSPOSE_BLOCK;
        let w: Vec<f32> = slots.iter().map(|&pos| ws[pos as usize]).collect();
        // 16 × 16 tiles: the 16 column segments read stay in L1 while each row segment is
        // written whole.
        for h0 in (0..hidden).step_by(TRANSPOSE_BLOCK) {
            let h1 = (h0 + TRANSPOSE_BLOCK).min(hidden);
            for (j, &w) in w.iter().enumerate() {
                let dst = &mut rows[j * hidden + h0..j * hidden + h1];
                for (h, d) in (h0..h1).zip(dst) {
                    *d = y[h * n + i0 + j] * w;
                }
            }
        }
    }
}

/// One expert whose three weights are k-quant blocks (a Q4_K_M GGUF file's experts), on its
/// slots `s`, with integer dot products as llama.cpp runs them (`GgmlRows::matmul_integer`:
/// the tokens' activations quantised to Q8_K); `false` when the weights are stored otherwise.
/// Measured faster than decoding the blocks into f32 tiles at every token count
/// (`examples/bench_gguf_matmul.rs`); each token's output is independent of the others.
fn expert_forward_integer(
    xs: &[f32],
    ws: &[f32],
    hidden: usize,
    k: usize,
    s: &[u32],
    d: &ExpertData<'_>,
    block: &mut [f32],
) -> bool {
    let (WeightSlice::Ggml(gate), WeightSlice::Ggml(up), WeightSlice::Ggml(down)) =
        (d.gate.slice(), d.up.slice(), d.down.slice())
    else {
        return false;
    };
    let (n, inter) = (s.len(), d.inter);
    let integer = gate.has_integer_dots(hidden)
        && up.has_integer_dots(hidden)
        && down.has_integer_dots(inter);
    if !integer {
        return false;
    }
    let ex = d.extras();
    let [bg, bu, bd] = ex.biases;
    let mut xe = vec![0f32; n * hidden];
    for (dst, &pos) in xe.chunks_exact_mut(hidden).zip(s) {
        let t = pos as usize / k;
        dst.copy_from_slice(&xs[t * hidden..(t + 1) * hidden]);
    }
    // Gate and up feature-major (`[inter, n]`), as the bias and activation helpers take them;
    // the tokens quantised once for both.
    let Some(xq) = Q8kRows::quantize(&xe, hidden) else {
        return false;
    };
    let (mut g, mut u) = (vec![0f32; inter * n], vec![0f32; inter * n]);
    if !(gate.matmul_integer(&xq, &mut g) && up.matmul_integer(&xq, &mut u)) {
        return false;
    }
    add_feature_bias(&mut g, n, bg, 0);
    add_feature_bias(&mut u, n, bu, 0);
    ex.act.apply_in_place(&mut g, &u);
    // Token-major again for the down projection's quantised inputs.
    let mut gt = vec![0f32; n * inter];
    for (j, row) in g.chunks_exact(n).enumerate() {
        for (t, &v) in row.iter().enumerate() {
            gt[t * inter + j] = v;
        }
    }
    let Some(gq) = Q8kRows::quantize(&gt, inter) else {
        return false;
    };
    let mut y = vec![0f32; hidden * n];
    if !down.matmul_integer(&gq, &mut y) {
        return false;
    }
    add_feature_bias(&mut y, n, bd, 0);
    write_weighted(&y, ws, hidden, s, block);
    true
}

/// One half-precision expert on the few tokens of a decoding step: matrix-vector products
/// straight from the stored weights (see [`gemv_rows`]), one token at a time.
fn expert_forward_gemv(
    xs: &[f32],
    ws: &[f32],
    hidden: usize,
    k: usize,
    s: &[u32],
    d: &ExpertData<'_>,
    block: &mut [f32],
) {
    let inter = d.inter;
    let ex = d.extras();
    let [bg, bu, bd] = ex.biases;
    let (mut g, mut u) = (vec![0f32; inter], vec![0f32; inter]);
    for (dst, &pos) in block.chunks_exact_mut(hidden).zip(s) {
        let t = pos as usize / k;
        let x = &xs[t * hidden..(t + 1) * hidden];
        gemv_rows(d.gate.slice(), hidden, 0..inter, &[x], &mut [&mut g]);
        gemv_rows(d.up.slice(), hidden, 0..inter, &[x], &mut [&mut u]);
        add_feature_bias(&mut g, 1, bg, 0);
        add_feature_bias(&mut u, 1, bu, 0);
        ex.act.apply_in_place(&mut g, &u);
        gemv_rows(d.down.slice(), inter, 0..hidden, &[&g], &mut [&mut *dst]);
        add_feature_bias(dst, 1, bd, 0);
        let w = ws[pos as usize];
        dst.iter_mut().for_each(|v| *v *= w);
    }
}

/// One f32 expert on its slots `s`, its weighted outputs into `block`.
#[allow(clippy::too_many_arguments)]
fn expert_forward_f32(
    xs: &[f32],
    ws: &[f32],
    hidden: usize,
    k: usize,
    s: &[u32],
    [gate, up, down]: [&[f32]; 3],
    inter: usize,
    ex: ExtraSlices<'_>,
    block: &mut [f32],
) {
    for piece in pieces(s.len(), EXPERT_PIECE_TOKENS) {
        let rows = &mut block[piece.start * hidden..piece.end * hidden];
        expert_piece_f32(
            xs,
            ws,
            hidden,
            k,
            &s[piece],
            [gate, up, down],
            inter,
            ex,
            rows,
        );
    }
}

/// At most this many of an expert's tokens go through it at once: the piece's activations stay
/// in cache, and an expert chosen by thousands of tokens of a layer-major group runs as fast per
/// token as one chosen by a few.
const EXPERT_PIECE_TOKENS: usize = 256;

/// `0..n` in consecutive ranges of at most `max` (`max` ≥ 2), none of length 1 unless `n` is 1:
/// a single row would take `gemm`'s matrix-vector path, which sums in another order.
fn pieces(n: usize, max: usize) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> =
        (0..n).step_by(max).map(|a| a..(a + max).min(n)).collect();
    if out.len() > 1 && out.last().is_some_and(|r| r.len() == 1) {
        let last = out.pop().expect("non-empty");
        let prev = out.last_mut().expect("two or more");
        prev.end -= 1;
        let start = prev.end;
        out.push(start..last.end);
    }
    out
}

/// [`expert_forward_f32`] on one piece of the expert's tokens.
#[allow(clippy::too_many_arguments)]
fn expert_piece_f32(
    xs: &[f32],
    ws: &[f32],
    hidden: usize,
    k: usize,
    s: &[u32],
    [gate, up, down]: [&[f32]; 3],
    inter: usize,
    ex: ExtraSlices<'_>,
    block: &mut [f32],
) {
    let n = s.len();
    let [bg, bu, bd] = ex.biases;
    with_scratch(n * (hidden + 2 * inter), |scratch| {
        let (xe, rest) = scratch.split_at_mut(n * hidden);
        let (g, u) = rest.split_at_mut(n * inter);
        gather_columns(xs, hidden, k, s, xe);
        let xm = Mat::cols(xe, n);
        let col_major = (1, n);
        let (gw, uw) = (Mat::t(gate, hidden), Mat::t(up, hidden));
        matmul(g, col_major, xm, gw, (n, inter, hidden));
        matmul(u, col_major, xm, uw, (n, inter, hidden));
        add_feature_bias(g, n, bg, 0);
        add_feature_bias(u, n, bu, 0);
        ex.act.apply_in_place(g, u);
        // The output column-major too (in `xe`'s space), then weighted into `block`'s
        // rows: a row-major destination would make the kernels repack the weight.
        let y = xe;
        let dw = Mat::t(down, inter);
        matmul(y, col_major, Mat::cols(g, n), dw, (n, hidden, inter));
        add_feature_bias(y, n, bd, 0);
        write_weighted(y, ws, hidden, s, block);
    });
}

/// One expert stored in half precision on its slots `s`. An expert of at most `tile_floats`
/// ([`EXPERT_TILE_FLOATS`]) is converted to f32 whole and then runs exactly as an f32 one (the
/// same products in the same order, so the outputs equal those of an f32 copy); a larger one
/// runs in chunks of its intermediate dimension, each chunk's gate and up rows and down
/// columns converted in turn, the down projection accumulated over the chunks.
#[allow(clippy::too_many_arguments)]
pub(super) fn expert_forward_tiled(
    xs: &[f32],
    ws: &[f32],
    hidden: usize,
    k: usize,
    s: &[u32],
    d: &ExpertData<'_>,
    block: &mut [f32],
    tile_floats: usize,
) {
    let (n, inter) = (s.len(), d.inter);
    let (gate, up, down) = (d.gate.slice(), d.up.slice(), d.down.slice());
    let ex = d.extras();
    let [bg, bu, bd] = ex.biases;
    let size = inter * hidden;
    if 3 * size <= tile_floats {
        return with_tiles(3 * size, |tiles| {
            let (gt, rest) = tiles.split_at_mut(size);
            let (ut, dt) = rest.split_at_mut(size);
            gate.read_f32(0..size, gt);
            up.read_f32(0..size, ut);
            down.read_f32(0..size, dt);
            expert_forward_f32(xs, ws, hidden, k, s, [gt, ut, dt], inter, ex, block);
        });
    }
    let chunk = (tile_floats / (3 * hidden).max(1)).clamp(16, inter.max(16));
    with_scratch(n * (2 * hidden + 2 * chunk), |scratch| {
        let (xe, rest) = scratch.split_at_mut(n * hidden);
        let (y, rest) = rest.split_at_mut(n * hidden);
        let (g, u) = rest.split_at_mut(n * chunk);
        gather_columns(xs, hidden, k, s, xe);
        let xm = Mat::cols(xe, n);
        let col_major = (1, n);
        with_tiles(3 * chunk * hidden, |tiles| {
            for i0 in (0..inter).step_by(chunk) {
                let c = chunk.min(inter - i0);
                let (gt, rest) = tiles.split_at_mut(c * hidden);
                let (ut, rest) = rest.split_at_mut(c * hidden);
                let dt = &mut rest[..hidden * c];
                gate.read_f32(i0 * hidden..(i0 + c) * hidden, gt);
                up.read_f32(i0 * hidden..(i0 + c) * hidden, ut);
                down.read_columns_f32(inter, i0..i0 + c, dt);
                let (g, u) = (&mut g[..n * c], &mut u[..n * c]);
                matmul(g, col_major, xm, Mat::t(gt, hidden), (n, c, hidden));
                matmul(u, col_major, xm, Mat::t(ut, hidden), (n, c, hidden));
                add_feature_bias(g, n, bg, i0);
                add_feature_bias(u, n, bu, i0);
                ex.act.apply_in_place(g, u);
                let acc = i0 > 0;
                gemm_into(
                    y,
                    col_major,
                    Mat::cols(g, n),
                    Mat::t(dt, c),
                    (n, hidden, c),
                    acc,
                );
            }
        });
        add_feature_bias(y, n, bd, 0);
        write_weighted(y, ws, hidden, s, block);
    });
}

/// The backward pass of [`experts_forward`] for the output gradient `gs` `[tokens,
/// hidden]`: `(∂L/∂x [tokens, hidden], ∂L/∂w [tokens, k])`, with zeros for positions in no
/// expert's list. The experts' weights get no gradient; their activations are recomputed.
pub(crate) fn experts_backward(
    xs: &[f32],
    ws: &[f32],
    gs: &[f32],
    hidden: usize,
    k: usize,
    slots: &[Vec<u32>],
    data: &[Option<ExpertData<'_>>],
) -> (Vec<f32>, Vec<f32>) {
    let (row_of_slot, rows, first) = slot_rows(slots, ws.len());
    // Per slot row: its ∂L/∂x contribution, and its ∂L/∂w.
    let mut dxs = vec![0f32; rows * hidden];
    let mut dws = vec![0f32; rows];
    let mut jobs = Vec::new();
    let (mut rest, mut rest_w) = (dxs.as_mut_slice(), dws.as_mut_slice());
    for (d, s) in data.iter().zip(slots) {
        let (block, tail) = rest.split_at_mut(s.len() * hidden);
        let (block_w, tail_w) = rest_w.split_at_mut(s.len());
        (rest, rest_w) = (tail, tail_w);
        if let Some(d) = d {
            jobs.push((d, s.as_slice(), block, block_w));
        }
    }
    jobs.sort_by_key(|(_, s, _, _)| std::cmp::Reverse(s.len()));
    par_each(jobs, |(d, s, block, block_w)| {
        let (n, inter) = (s.len(), d.inter);
        let [gate, up, down] = d
            .f32()
            .expect("the training kernels take f32 experts (of_f32)");
        with_scratch(n * (2 * hidden + 3 * inter), |scratch| {
            // All row-major, one row per slot.
            let (xe, rest) = scratch.split_at_mut(n * hidden);
            let (y, rest) = rest.split_at_mut(n * hidden);
            let (g, rest) = rest.split_at_mut(n * inter);
            let (u, h) = rest.split_at_mut(n * inter);
            for (dst, &pos) in xe.chunks_exact_mut(hidden).zip(s) {
                let t = pos as usize / k;
                dst.copy_from_slice(&xs[t * hidden..(t + 1) * hidden]);
            }
            let row_major = |cols: usize| (cols, 1);
            let xm = Mat::rows(xe, hidden);
            matmul(
                g,
                row_major(inter),
                xm,
                Mat::t(gate, hidden),
                (n, inter, hidden),
            );
            matmul(
                u,
                row_major(inter),
                xm,
                Mat::t(up, hidden),
                (n, inter, hidden),
            );
            for ((h, &g), &u) in h.iter_mut().zip(g.iter()).zip(u.iter()) {
                *h = g / (1.0 + (-g).exp()) * u;
            }
            let hm = Mat::rows(h, inter);
            matmul(
                y,
                row_major(hidden),
                hm,
                Mat::t(down, inter),
                (n, hidden, inter),
            );
            // ∂L/∂w = ⟨expert(x), g⟩; ∂L/∂(expert output) = w·g, in place of the output.
            for ((yr, dw), &pos) in y.chunks_exact_mut(hidden).zip(block_w).zip(s) {
                let t = pos as usize / k;
                let gr = &gs[t * hidden..(t + 1) * hidden];
                *dw = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                let w = ws[pos as usize];
                yr.iter_mut().zip(gr).for_each(|(d, &g)| *d = w * g);
            }
            // ∂L/∂h = dy·W_down.
            let dy = Mat::rows(y, hidden);
            matmul(
                h,
                row_major(inter),
                dy,
                Mat::rows(down, inter),
                (n, inter, hidden),
            );
            // h = silu(g)·u: ∂L/∂g = dh·u·silu'(g), ∂L/∂u = dh·silu(g), with
            // silu'(g) = σ(g) + silu(g)·(1 - σ(g)).
            for ((dh, g), u) in h.iter().zip(g.iter_mut()).zip(u.iter_mut()) {
                let sig = 1.0 / (1.0 + (-*g).exp());
                let silu = *g / (1.0 + (-*g).exp());
                let (dg, du) = (dh * *u * (sig + silu * (1.0 - sig)), dh * silu);
                (*g, *u) = (dg, du);
            }
            // ∂L/∂x = dg·W_gate + du·W_up.
            let (dg, du) = (Mat::rows(g, inter), Mat::rows(u, inter));
            matmul(
                block,
                row_major(hidden),
                dg,
                Mat::rows(gate, hidden),
                (n, hidden, inter),
            );
            matmul(
                xe,
                row_major(hidden),
                du,
                Mat::rows(up, hidden),
                (n, hidden, inter),
            );
            block.iter_mut().zip(xe.iter()).for_each(|(a, &b)| *a += b);
        });
    });
    let dx = sum_rows_per_token(&dxs, &row_of_slot, hidden, k);
    let mut dw = vec![0f32; ws.len()];
    for (e, s) in slots.iter().enumerate() {
        for (i, &pos) in s.iter().enumerate() {
            dw[pos as usize] = dws[first[e] + i];
        }
    }
    (dx, dw)
}

#[cfg(test)]
mod tests {
    use super::pieces;

    #[test]
    fn pieces_cover_the_tokens_and_are_never_single_rows() {
        assert!(pieces(0, 4).is_empty());
        assert_eq!(pieces(1, 4), vec![0..1]);
        assert_eq!(pieces(8, 4), vec![0..4, 4..8]);
        assert_eq!(pieces(9, 4), vec![0..4, 4..7, 7..9]);
        assert_eq!(pieces(10, 4), vec![0..4, 4..8, 8..10]);
    }
}
