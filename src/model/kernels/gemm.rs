//! The machinery every direct kernel is built from: read locks on f32 CPU tensor data, tasks
//! on candle's CPU worker threads, per-thread scratch space, strided matrix operands and
//! single-threaded `gemm` products (plus blocked multi-threaded ones), and the plain linear
//! layer `x·Wᵀ`.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{CpuStorage, DType, Storage, StorageRef, Tensor};

use super::weights::{TILE_FLOATS, WeightData, WeightSlice, gather_rows, gemv_rows, with_tiles};
use crate::model::error::Result;
use crate::model::weight::Weight;

/// A read lock on an f32 CPU tensor's contiguous data.
pub(crate) struct F32Data<'a> {
    storage: StorageRef<'a>,
    range: Range<usize>,
}

impl<'a> F32Data<'a> {
    /// `None` unless `t` is an f32 tensor on the CPU, contiguous, and tracks no gradient.
    pub(crate) fn of(t: &'a Tensor) -> Option<Self> {
        if t.dtype() != DType::F32 || t.track_op() || !t.device().is_cpu() {
            return None;
        }
        let (storage, layout) = t.storage_and_layout();
        let (start, end) = layout.contiguous_offsets()?;
        matches!(&*storage, Storage::Cpu(CpuStorage::F32(_))).then_some(Self {
            storage,
            range: start..end,
        })
    }

    pub(crate) fn slice(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.range.clone()],
            _ => unreachable!("checked in F32Data::of"),
        }
    }
}

/// Runs `f` on every item, spread over candle's CPU worker threads (the pool its elementwise
/// ops run on, so that no second set of threads competes for the cores). The threads take
/// one item at a time, so a thread that is held up delays the others by one item at most.
pub(super) fn par_each<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync) {
    let cells: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    let next = AtomicUsize::new(0);
    let pool = candle_core::utils::barrier_pool();
    // One unit per thread (run inline when called from inside the pool); each unit takes
    // items until none are left.
    pool.execute_chunked(pool.n_workers() + 1, |_| {
        while let Some(cell) = cells.get(next.fetch_add(1, Ordering::Relaxed)) {
            let item = cell.lock().ok().and_then(|mut c| c.take());
            if let Some(item) = item {
                f(item);
            }
        }
    });
}

thread_local! {
    /// Per-thread scratch space, reused across calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with `len` floats of scratch space (contents unspecified): this thread's
/// reusable buffer, or a temporary one for more than `KEEP` floats (16 MiB), so that the
/// threads don't keep large buffers.
pub(super) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    const KEEP: usize = 1 << 22;
    if len > KEEP {
        return f(&mut vec![0.0; len]);
    }
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

/// A destination that tasks write disjoint parts of.
#[derive(Clone, Copy)]
pub(super) struct SharedMut(pub(super) *mut f32);

// SAFETY: only used to hand disjoint parts of one buffer to tasks (see its uses).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    pub(super) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// A matrix operand: its data and its (row, column) strides.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a> {
    pub(super) data: &'a [f32],
    pub(super) rs: usize,
    pub(super) cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major `[rows, cols]`.
    pub(super) fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// Column-major `[rows, cols]`.
    pub(super) fn cols(data: &'a [f32], rows: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: rows,
        }
    }

    /// The transpose of a row-major `[cols, rows]` matrix (an `[out, in]` weight as `Wᵀ`).
    pub(super) fn t(data: &'a [f32], rows: usize) -> Self {
        Self::cols(data, rows)
    }

    fn reaches(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || self.data.len() > (rows - 1) * self.rs + (cols - 1) * self.cs
    }
}

/// `dst[m, n] = a[m, k] · b[k, n]` on the calling thread, `dst` with strides `(dst_rs,
/// dst_cs)`. For a column-major `dst` the `gemm` kernels read `a` best column-major and `b`
/// with unit row stride (as `Wᵀ` for a row-major `W`); a row-major `dst` is computed as
/// `dstᵀ = bᵀ·aᵀ`, where `a` is best row-major and `b` is repacked unless row-major.
pub(super) fn matmul(
    dst: &mut [f32],
    dst_strides: (usize, usize),
    a: Mat<'_>,
    b: Mat<'_>,
    mnk: (usize, usize, usize),
) {
    let (m, n, _) = mnk;
    let (rs, cs) = dst_strides;
    assert!(m == 0 || n == 0 || dst.len() > (m - 1) * rs + (n - 1) * cs);
    // SAFETY: `dst` holds every element the strides reach.
    unsafe { matmul_to(dst.as_mut_ptr(), dst_strides, a, b, mnk) }
}

/// [`matmul`], adding the product to `dst`'s contents when `acc` is set.
pub(super) fn gemm_into(
    dst: &mut [f32],
    dst_strides: (usize, usize),
    a: Mat<'_>,
    b: Mat<'_>,
    mnk: (usize, usize, usize),
    acc: bool,
) {
    let (m, n, _) = mnk;
    let (rs, cs) = dst_strides;
    assert!(m == 0 || n == 0 || dst.len() > (m - 1) * rs + (n - 1) * cs);
    // SAFETY: `dst` holds every element the strides reach.
    unsafe { gemm_to(dst.as_mut_ptr(), dst_strides, a, b, mnk, acc) }
}

/// [`matmul`] into a raw destination.
///
/// # Safety
/// `dst` must be valid for writes at every `i·dst_rs + j·dst_cs`, `i < m`, `j < n`, and no
/// other thread may access those elements during the call.
pub(super) unsafe fn matmul_to(
    dst: *mut f32,
    (dst_rs, dst_cs): (usize, usize),
    a: Mat<'_>,
    b: Mat<'_>,
    mnk: (usize, usize, usize),
) {
    // SAFETY: passed on from the caller.
    unsafe { gemm_to(dst, (dst_rs, dst_cs), a, b, mnk, false) }
}

/// [`matmul_to`], adding the product to `dst`'s contents when `acc` is set.
///
/// # Safety
/// As for [`matmul_to`].
pub(super) unsafe fn gemm_to(
    dst: *mut f32,
    (dst_rs, dst_cs): (usize, usize),
    a: Mat<'_>,
    b: Mat<'_>,
    (m, n, k): (usize, usize, usize),
    acc: bool,
) {
    assert!(a.reaches(m, k) && b.reaches(k, n));
    // SAFETY: the assert keeps the operands' reads in bounds, the caller `dst`'s writes.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            acc,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            if acc { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// At most this many rows make a product with half-precision weights run as matrix-vector
/// products ([`gemv_rows`]) rather than on converted tiles.
pub(crate) const DECODE_ROWS: usize = 4;

/// `x·Wᵀ` for a plain layer's weight `w` `[out, in]` (the forward of a
/// [`Linear`](crate::model::layers::Linear) without LoRA update), split into blocks of
/// output columns across the worker threads. An f32 tensor weight needs at least `MIN_ROWS`
/// rows (fewer go to candle's matmul); half-precision and mapped weights run here on any
/// number of rows, their rows converted to f32 a tile at a time.
pub(crate) fn linear(w: &Weight, x: &Tensor) -> Result<Option<Tensor>> {
    const MIN_ROWS: usize = 32;
    let (&[n, k], Some(&in_dim)) = (w.dims(), x.dims().last()) else {
        return Ok(None);
    };
    let m = x.elem_count() / k.max(1);
    let min_rows = if w.is_mapped() || w.dtype() != DType::F32 {
        1
    } else {
        MIN_ROWS
    };
    if in_dim != k || m < min_rows || n == 0 || k == 0 {
        return Ok(None);
    }
    let (Some(xd), Some(wd)) = (F32Data::of(x), WeightData::of(w)) else {
        return Ok(None);
    };
    let xs = xd.slice();
    let mut out = vec![0f32; m * n];
    let dst = SharedMut(out.as_mut_ptr());
    let threads = candle_core::utils::get_num_threads().max(1);
    match wd.slice() {
        WeightSlice::F32(ws) => {
            // Blocks of output columns, about four per thread: each block's rows of `W` are
            // repacked once (see `matmul`) and `x` is read in place.
            let block = n.div_ceil(4 * threads).next_multiple_of(16);
            let starts: Vec<usize> = (0..n).step_by(block).collect();
            par_each(starts, |c0| {
                let cols = block.min(n - c0);
                let w = Mat::t(&ws[c0 * k..(c0 + cols) * k], k);
                // SAFETY: `out` is `[m, n]` row-major and each task writes only its own
                // columns `c0..c0 + cols` of it.
                unsafe { matmul_to(dst.at(c0), (n, 1), Mat::rows(xs, k), w, (m, cols, k)) };
            });
        }
        ws if m <= DECODE_ROWS => {
            // A few rows (a decoding step): matrix-vector products straight from the
            // half-precision weights, in blocks of output columns.
            let block = n.div_ceil(4 * threads).clamp(16, 256);
            let starts: Vec<usize> = (0..n).step_by(block).collect();
            par_each(starts, |c0| {
                let cols = block.min(n - c0);
                let xr: Vec<&[f32]> = xs.chunks_exact(k).collect();
                let mut ys = vec![0f32; m * cols];
                let mut yr: Vec<&mut [f32]> = ys.chunks_exact_mut(cols).collect();
                gemv_rows(ws, k, c0..c0 + cols, &xr, &mut yr);
                for (r, y) in ys.chunks_exact(cols).enumerate() {
                    // SAFETY: `out` is `[m, n]` row-major and each task writes only its own
                    // columns `c0..c0 + cols` of it.
                    unsafe { std::ptr::copy_nonoverlapping(y.as_ptr(), dst.at(r * n + c0), cols) };
                }
            });
        }
        ws => {
            // Blocks of at most one tile of converted rows, and at least four per thread.
            let block = n
                .div_ceil(4 * threads)
                .min(TILE_FLOATS / k)
                .max(1)
                .next_multiple_of(16);
            let starts: Vec<usize> = (0..n).step_by(block).collect();
            par_each(starts, |c0| {
                let cols = block.min(n - c0);
                with_tiles(cols * k, |tile| {
                    ws.read_f32(c0 * k..(c0 + cols) * k, tile);
                    let w = Mat::t(tile, k);
                    // SAFETY: as above.
                    unsafe { matmul_to(dst.at(c0), (n, 1), Mat::rows(xs, k), w, (m, cols, k)) };
                });
            });
        }
    }
    drop((xd, wd));
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("checked above") = n;
    Ok(Some(Tensor::from_vec(out, dims, x.device())?))
}

/// Rows `ids` of an embedding `w` `[vocab, hidden]` as an f32 `[ids, hidden]` tensor on the
/// CPU, read in place (`None` when the weight's data is not on the CPU).
pub(crate) fn embedding_rows(w: &Weight, ids: &[u32]) -> Result<Option<Tensor>> {
    let &[vocab, hidden] = w.dims() else {
        return Ok(None);
    };
    let Some(wd) = WeightData::of(w) else {
        return Ok(None);
    };
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(crate::model::error::ModelError::msg(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let rows = gather_rows(wd.slice(), hidden, ids);
    Ok(Some(Tensor::from_vec(
        rows,
        (ids.len(), hidden),
        &candle_core::Device::Cpu,
    )?))
}

/// `dst[m, n] (+)= a[m, k] · b[k, n]`, `dst` row-major, in blocks of rows across the
/// worker threads (each block one single-threaded product); adds to `dst` when `acc`.
pub(super) fn par_matmul(
    dst: &mut [f32],
    acc: bool,
    a: Mat<'_>,
    b: Mat<'_>,
    (m, n, k): (usize, usize, usize),
) {
    assert!(dst.len() >= m * n && a.reaches(m, k));
    if m == 0 || n == 0 {
        return;
    }
    let threads = candle_core::utils::get_num_threads().max(1);
    let block = m.div_ceil(4 * threads).max(16);
    let out = SharedMut(dst.as_mut_ptr());
    let starts: Vec<usize> = (0..m).step_by(block).collect();
    par_each(starts, |r0| {
        let rows = block.min(m - r0);
        let a = Mat {
            data: &a.data[r0 * a.rs..],
            ..a
        };
        // SAFETY: each task writes only its own rows `r0..r0 + rows` of `dst`.
        unsafe { gemm_to(out.at(r0 * n), (n, 1), a, b, (rows, n, k), acc) };
    });
}

/// `x·Wᵀ` for `xs` `[m, k]` and an `[n, k]` weight, in blocks of rows across the threads.
pub(crate) fn matmul_wt(xs: &[f32], ws: &[f32], (m, k, n): (usize, usize, usize)) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    par_matmul(&mut y, false, Mat::rows(xs, k), Mat::t(ws, k), (m, n, k));
    y
}

/// `g·W` for `gs` `[m, n]` and an `[n, k]` weight, in blocks of rows across the threads.
pub(crate) fn matmul_w(gs: &[f32], ws: &[f32], (m, n, k): (usize, usize, usize)) -> Vec<f32> {
    let mut y = vec![0f32; m * k];
    par_matmul(&mut y, false, Mat::rows(gs, n), Mat::rows(ws, k), (m, k, n));
    y
}
