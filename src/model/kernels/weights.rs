//! Weight data the kernels read in place: an f32 / f16 / bf16 CPU tensor, a mapped
//! checkpoint view, an MXFP4 weight or ggml quantised blocks ([`WeightData`]), and the
//! conversion of half-precision and quantised rows to f32 tiles (the kernels accumulate in f32 whatever the weights are stored
//! in).

use std::cell::RefCell;
use std::ops::Range;

use candle_core::{CpuStorage, DType, Storage, StorageRef};
use half::{bf16, f16, slice::HalfFloatSliceExt};

use crate::model::gguf::GgmlRows;
use crate::model::mxfp4::Mxfp4Rows;
use crate::model::weight::Weight;

/// A weight's elements in their stored dtype.
#[derive(Clone, Copy)]
pub(crate) enum WeightSlice<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
    /// MXFP4 blocks and scales, dequantised as they are read.
    Mxfp4(Mxfp4Rows<'a>),
    /// ggml quantised blocks, dequantised as they are read.
    Ggml(GgmlRows<'a>),
}

impl WeightSlice<'_> {
    /// Elements `range` as f32, into `dst` (`range.len()` long).
    pub(crate) fn read_f32(self, range: Range<usize>, dst: &mut [f32]) {
        match self {
            WeightSlice::F32(s) => dst.copy_from_slice(&s[range]),
            WeightSlice::F16(s) => s[range].convert_to_f32_slice(dst),
            WeightSlice::BF16(s) => bf16_to_f32(&s[range], dst),
            WeightSlice::Mxfp4(m) => m.read_f32(range, dst),
            WeightSlice::Ggml(q) => q.read_f32(range, dst),
        }
    }

    /// Columns `cols` of every row of a row-major `[rows, width]` matrix, as a row-major
    /// `[rows, cols.len()]` f32 matrix in `dst`.
    pub(crate) fn read_columns_f32(self, width: usize, cols: Range<usize>, dst: &mut [f32]) {
        let w = cols.len();
        for (r, out) in dst.chunks_exact_mut(w).enumerate() {
            self.read_f32(r * width + cols.start..r * width + cols.end, out);
        }
    }
}

enum Source<'a> {
    Storage(StorageRef<'a>, Range<usize>),
    Mapped(WeightSlice<'a>),
}

/// A read lock on a weight's data on the CPU, in its stored dtype.
pub(crate) struct WeightData<'a> {
    source: Source<'a>,
}

impl<'a> WeightData<'a> {
    /// `None` unless `w` is a mapped view, an MXFP4 weight, or an f32 / f16 / bf16 CPU tensor
    /// that is contiguous and tracks no gradient.
    pub(crate) fn of(w: &'a Weight) -> Option<Self> {
        match w {
            Weight::Mxfp4(m) => Some(Self {
                source: Source::Mapped(WeightSlice::Mxfp4(m.rows())),
            }),
            Weight::Ggml(q) => Some(Self {
                source: Source::Mapped(WeightSlice::Ggml(q.rows())),
            }),
            Weight::Mapped(m) => {
                let bytes = m.bytes();
                // SAFETY: `MappedTensor::new` checked that the range holds whole, aligned
                // elements of its dtype; f16 / bf16 / f32 accept every bit pattern.
                let slice = unsafe {
                    match m.dtype() {
                        DType::F32 => WeightSlice::F32(cast(bytes)),
                        DType::F16 => WeightSlice::F16(cast(bytes)),
                        DType::BF16 => WeightSlice::BF16(cast(bytes)),
                        _ => return None,
                    }
                };
                Some(Self {
                    source: Source::Mapped(slice),
                })
            }
            Weight::Tensor(t) => {
                if t.track_op() || !t.device().is_cpu() {
                    return None;
                }
                let (storage, layout) = t.storage_and_layout();
                let (start, end) = layout.contiguous_offsets()?;
                matches!(
                    &*storage,
                    Storage::Cpu(CpuStorage::F32(_) | CpuStorage::F16(_) | CpuStorage::BF16(_))
                )
                .then_some(Self {
                    source: Source::Storage(storage, start..end),
                })
            }
        }
    }

    pub(crate) fn slice(&self) -> WeightSlice<'_> {
        match &self.source {
            Source::Mapped(s) => *s,
            Source::Storage(storage, range) => match &**storage {
                Storage::Cpu(CpuStorage::F32(v)) => WeightSlice::F32(&v[range.clone()]),
                Storage::Cpu(CpuStorage::F16(v)) => WeightSlice::F16(&v[range.clone()]),
                Storage::Cpu(CpuStorage::BF16(v)) => WeightSlice::BF16(&v[range.clone()]),
                _ => unreachable!("checked in WeightData::of"),
            },
        }
    }

    /// The data when it is stored as f32.
    pub(crate) fn f32(&self) -> Option<&[f32]> {
        match self.slice() {
            WeightSlice::F32(s) => Some(s),
            _ => None,
        }
    }
}

/// bf16 to f32 is a 16-bit shift: written as one so that it compiles to vector code (the
/// `half` crate's loop checks every element for NaN, which keeps it scalar). NaNs stay NaNs.
fn bf16_to_f32(src: &[bf16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits(u32::from(s.to_bits()) << 16);
    }
}

/// # Safety
/// `bytes` must start at an address aligned for `T` and every bit pattern must be a valid `T`.
unsafe fn cast<T>(bytes: &[u8]) -> &[T] {
    let n = bytes.len() / std::mem::size_of::<T>();
    debug_assert!((bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()));
    // SAFETY: passed on from the caller; `n` elements fit in `bytes`.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), n) }
}

thread_local! {
    /// Per-thread space for weight tiles converted to f32, reused across calls.
    static TILES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with `len` floats of this thread's tile space (contents unspecified). Separate
/// from the activation scratch space, so that a kernel can hold both.
pub(crate) fn with_tiles<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    TILES.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

/// Floats of converted weight a kernel keeps in one tile (4 MiB): large enough that the
/// matrix products stay efficient, small enough to stay in cache next to the activations.
pub(crate) const TILE_FLOATS: usize = 1 << 20;

/// `ys[r][j] = Σ_i w[j, i] · xs[r][i]` for the rows `j` of a row-major `[n, width]` weight in
/// `rows`, every `xs[r]` `width` long, `ys[r]` `rows.len()` long: a matrix-vector product per
/// input row that reads each half-precision weight once (converted a short run at a time into
/// a buffer that stays in L1) instead of writing an f32 tile. For decoding, where each step
/// multiplies the weights by one or a few rows.
pub(crate) fn gemv_rows(
    w: WeightSlice<'_>,
    width: usize,
    rows: Range<usize>,
    xs: &[&[f32]],
    ys: &mut [&mut [f32]],
) {
    const RUN: usize = 256;
    let mut buf = [0f32; RUN];
    let mut acc = vec![[0f32; 8]; xs.len()];
    for (jj, j) in rows.enumerate() {
        acc.iter_mut().for_each(|a| *a = [0.0; 8]);
        for c0 in (0..width).step_by(RUN) {
            let c1 = (c0 + RUN).min(width);
            let run = &mut buf[..c1 - c0];
            w.read_f32(j * width + c0..j * width + c1, run);
            for (a, x) in acc.iter_mut().zip(xs) {
                dot_into(run, &x[c0..c1], a);
            }
        }
        for (y, a) in ys.iter_mut().zip(&acc) {
            y[jj] = a.iter().sum();
        }
    }
}

/// `acc[l] += Σ a[8i + l] · b[8i + l]`, the tail into lane 0: eight independent sums, which
/// the compiler turns into vector code.
fn dot_into(a: &[f32], b: &[f32], acc: &mut [f32; 8]) {
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc[0] += tail;
}

/// Rows of a `[rows, width]` embedding gathered as f32 (`ids` index rows; the caller checks
/// them).
pub(crate) fn gather_rows(w: WeightSlice<'_>, width: usize, ids: &[u32]) -> Vec<f32> {
    let mut out = vec![0f32; ids.len() * width];
    for (dst, &id) in out.chunks_exact_mut(width.max(1)).zip(ids) {
        let r = id as usize;
        w.read_f32(r * width..(r + 1) * width, dst);
    }
    out
}
