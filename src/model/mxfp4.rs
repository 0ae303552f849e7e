//! MXFP4 weights (OCP microscaling FP4, as gpt-oss checkpoints store their experts): the
//! decoding of the packed values, and [`Mxfp4Tensor`], a weight held in that format — a view
//! of the checkpoint's `*_blocks` and `*_scales` bytes that the CPU kernels dequantise a row
//! at a time, so that a 12 GB MXFP4 checkpoint is never expanded in memory.
//!
//! The format, as transformers' `integrations/mxfp4.py` (`convert_moe_packed_tensors`) reads it:
//! a weight `[.., rows, cols]` is stored as blocks `[.., rows, cols/32, 16]` (u8) and scales
//! `[.., rows, cols/32]` (u8). Each byte holds two e2m1 values, element `2j` in its low nibble
//! and `2j + 1` in its high nibble, each nibble an index into [`FP4_VALUES`]; the 32 elements
//! of a block share the scale `2^(s − 127)`. The logical matrix is `[out, in]` (rows are output
//! features), the orientation of every other weight here; transformers transposes it after
//! dequantising because its experts compute `x·W`.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use candle_core::{Device, Tensor};
use memmap2::Mmap;

use super::error::{ModelError, Result};
use super::memory::release_pages;

/// The sixteen e2m1 values a nibble indexes (transformers' `FP4_VALUES`).
pub const FP4_VALUES: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// Elements that share one scale.
pub const BLOCK: usize = 32;

/// `FP4_VALUES[n] · 2^(s − 127)` at `[s · 16 + n]`, for every scale byte `s`, computed as
/// `torch.ldexp` does: the power of two as an f32 (infinite for `s` = 255, subnormal for
/// `s` = 0), times the value.
pub(crate) fn scaled_values() -> &'static [f32] {
    static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..256i32)
            .flat_map(|s| {
                let scale = 2f64.powi(s - 127) as f32;
                FP4_VALUES.map(|v| v * scale)
            })
            .collect()
    })
}

/// Bytes of one tensor: a range of a memory-mapped checkpoint file, or an owned buffer.
#[derive(Clone)]
pub enum ByteView {
    Mapped {
        map: Arc<Mmap>,
        start: usize,
        end: usize,
    },
    Owned(Arc<[u8]>, Range<usize>),
}

impl ByteView {
    pub fn owned(bytes: Vec<u8>) -> Self {
        let n = bytes.len();
        ByteView::Owned(bytes.into(), 0..n)
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            ByteView::Mapped { map, start, end } => &map[*start..*end],
            ByteView::Owned(data, range) => &data[range.clone()],
        }
    }

    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes `range` of this view (relative to its start).
    pub(crate) fn narrow(&self, range: Range<usize>) -> Self {
        match self {
            ByteView::Mapped { map, start, .. } => ByteView::Mapped {
                map: map.clone(),
                start: start + range.start,
                end: start + range.end,
            },
            ByteView::Owned(data, r) => {
                ByteView::Owned(data.clone(), r.start + range.start..r.start + range.end)
            }
        }
    }

    pub(crate) fn release(&self) {
        if let ByteView::Mapped { map, start, end } = self {
            release_pages(map, *start, *end);
        }
    }

    pub(crate) fn is_mapped(&self) -> bool {
        matches!(self, ByteView::Mapped { .. })
    }
}

/// A weight stored as MXFP4: logically a row-major tensor of `shape` (last axis a multiple of
/// [`BLOCK`]), whose row `r` (over all axes but the last) is row `first_row + r · row_step` of
/// the stored blocks and scales. A step of 2 selects every other row without copying: gpt-oss
/// interleaves its experts' gate and up rows.
#[derive(Clone)]
pub struct Mxfp4Tensor {
    blocks: ByteView,
    scales: ByteView,
    shape: Vec<usize>,
    first_row: usize,
    row_step: usize,
}

impl std::fmt::Debug for Mxfp4Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mxfp4Tensor({:?})", self.shape)
    }
}

/// One MXFP4 matrix's bytes as the kernels read them (see [`Mxfp4Tensor`]).
#[derive(Clone, Copy)]
pub(crate) struct Mxfp4Rows<'a> {
    blocks: &'a [u8],
    scales: &'a [u8],
    cols: usize,
    first_row: usize,
    row_step: usize,
}

impl Mxfp4Tensor {
    /// The tensor of `shape` stored in `blocks` (`[.., rows, cols/32, 16]` flattened) and
    /// `scales` (`[.., rows, cols/32]`); `name` (the blocks tensor's name, without `_blocks`)
    /// is for errors.
    pub fn new(blocks: ByteView, scales: ByteView, shape: Vec<usize>, name: &str) -> Result<Self> {
        let cols = shape.last().copied().unwrap_or(0);
        let elems: usize = shape.iter().product();
        if shape.len() < 2 || !cols.is_multiple_of(BLOCK) {
            return Err(ModelError::msg(format!(
                "{name}: an MXFP4 weight needs at least two axes and rows of whole blocks of \
                 {BLOCK}, not shape {shape:?}"
            )));
        }
        if blocks.len() != elems / 2 || scales.len() != elems / BLOCK {
            return Err(ModelError::msg(format!(
                "{name}: {} bytes of blocks and {} of scales do not hold an MXFP4 tensor of \
                 shape {shape:?} ({} and {} expected)",
                blocks.len(),
                scales.len(),
                elems / 2,
                elems / BLOCK
            )));
        }
        Ok(Self {
            blocks,
            scales,
            shape,
            first_row: 0,
            row_step: 1,
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn cols(&self) -> usize {
        *self.shape.last().expect("checked in new")
    }

    /// Bytes of blocks and scales behind this view's rows.
    pub fn byte_len(&self) -> u64 {
        let elems: usize = self.shape.iter().product();
        (elems / 2 + elems / BLOCK) as u64
    }

    pub fn is_mapped(&self) -> bool {
        self.blocks.is_mapped()
    }

    /// Gives the pages of the stored rows back to the OS (when mapped).
    pub fn release(&self) {
        self.blocks.release();
        self.scales.release();
    }

    pub(crate) fn rows(&self) -> Mxfp4Rows<'_> {
        Mxfp4Rows {
            blocks: self.blocks.bytes(),
            scales: self.scales.bytes(),
            cols: self.cols(),
            first_row: self.first_row,
            row_step: self.row_step,
        }
    }

    /// Rows `first, first + step, ..` (`count` of them) of matrix `index` of a tensor of rank 3
    /// (`[index, .., ..]`): one expert's rows of a fused `[experts, rows, cols]` tensor, every
    /// `step`-th one. A view of the same bytes.
    pub fn select_rows(
        &self,
        index: usize,
        first: usize,
        step: usize,
        count: usize,
    ) -> Option<Self> {
        let &[outer, inner, cols] = self.shape.as_slice() else {
            return None;
        };
        let last = first + step.max(1) * count.saturating_sub(1);
        if self.row_step != 1 || index >= outer || step == 0 || (count > 0 && last >= inner) {
            return None;
        }
        let (row_blocks, row_scales) = (cols / 2, cols / BLOCK);
        let base = self.first_row + index * inner;
        Some(Self {
            blocks: self
                .blocks
                .narrow(base * row_blocks..(base + inner) * row_blocks),
            scales: self
                .scales
                .narrow(base * row_scales..(base + inner) * row_scales),
            shape: vec![count, cols],
            first_row: first,
            row_step: step,
        })
    }

    /// The dequantised values as an f32 tensor of the logical shape on `device`.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        let n: usize = self.shape.iter().product();
        let mut out = vec![0f32; n];
        self.rows().read_f32(0..n, &mut out);
        Ok(Tensor::from_vec(out, self.shape.as_slice(), device)?)
    }
}

impl Mxfp4Rows<'_> {
    /// Elements `range` of the logical row-major matrix as f32, into `dst`.
    pub(crate) fn read_f32(self, range: Range<usize>, dst: &mut [f32]) {
        assert_eq!(range.len(), dst.len());
        let cols = self.cols;
        let mut i = range.start;
        let mut dst = dst;
        while i < range.end {
            let (r, c0) = (i / cols, i % cols);
            let c1 = cols.min(c0 + (range.end - i));
            let (row, rest) = dst.split_at_mut(c1 - c0);
            self.read_row(self.first_row + r * self.row_step, c0..c1, row);
            dst = rest;
            i += c1 - c0;
        }
    }

    /// Columns `cols` of stored row `row`, into `dst`.
    fn read_row(self, row: usize, cols: Range<usize>, dst: &mut [f32]) {
        let table = scaled_values();
        let start = row * self.cols;
        let mut c = cols.start;
        let mut out = 0;
        while c < cols.end {
            let q = start + c;
            let scale = &table[usize::from(self.scales[q / BLOCK]) * 16..][..16];
            if q.is_multiple_of(BLOCK) && c + BLOCK <= cols.end {
                // A whole block: its 16 bytes, two values each.
                let bytes = &self.blocks[q / 2..q / 2 + BLOCK / 2];
                for (pair, &b) in dst[out..out + BLOCK].chunks_exact_mut(2).zip(bytes) {
                    pair[0] = scale[usize::from(b & 0x0f)];
                    pair[1] = scale[usize::from(b >> 4)];
                }
                c += BLOCK;
                out += BLOCK;
            } else {
                let b = self.blocks[q / 2];
                let nibble = if q.is_multiple_of(2) {
                    b & 0x0f
                } else {
                    b >> 4
                };
                dst[out] = scale[usize::from(nibble)];
                c += 1;
                out += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row of 32 values: bytes 0x21 (low nibble 1 = 0.5, then high nibble 2 = 1.0), 0xF7
    /// (6.0, −6.0), 0x08 (−0.0, 0.0), then 0x9A (−1.0, −0.5) thirteen times.
    fn row_bytes() -> Vec<u8> {
        let mut b = vec![0x21, 0xF7, 0x08];
        b.extend([0x9A; 13]);
        b
    }

    #[test]
    fn values_are_nibbles_low_first_times_two_to_the_scale_minus_127() {
        // Two rows of one block each: scales 128 (×2) and 125 (×1/4).
        let mut blocks = row_bytes();
        blocks.extend(row_bytes());
        let t = Mxfp4Tensor::new(
            ByteView::owned(blocks),
            ByteView::owned(vec![128, 125]),
            vec![2, 32],
            "w",
        )
        .unwrap();
        let v = t.to_tensor(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        // transformers' convert_moe_packed_tensors gives the same values for these bytes.
        assert_eq!(&v[0][..6], &[1.0, 2.0, 12.0, -12.0, -0.0, 0.0]);
        assert!(v[0][4].is_sign_negative());
        assert_eq!(&v[0][6..8], &[-2.0, -1.0]);
        assert_eq!(&v[1][..4], &[0.125, 0.25, 1.5, -1.5]);
        assert_eq!(v[1][31], -0.125);
        // A range that starts and ends inside blocks reads the same values.
        let mut part = vec![0f32; 5];
        t.rows().read_f32(30..35, &mut part);
        assert_eq!(part, [v[0][30], v[0][31], v[1][0], v[1][1], v[1][2]]);
    }

    #[test]
    fn extreme_scales_follow_torch_ldexp() {
        let t = Mxfp4Tensor::new(
            ByteView::owned(row_bytes().into_iter().chain(row_bytes()).collect()),
            ByteView::owned(vec![255, 0]),
            vec![2, 32],
            "w",
        )
        .unwrap();
        let v = t.to_tensor(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        // torch.ldexp(0.5, 128) is inf (2^128 overflows f32 first); 0 · inf is NaN.
        assert_eq!(v[0][0], f32::INFINITY);
        assert!(v[0][5].is_nan());
        // 0.5 · 2^-127 = 2^-128, a subnormal f32.
        assert_eq!(f64::from(v[1][0]), 2f64.powi(-128));
    }

    #[test]
    fn select_rows_takes_one_matrix_and_every_other_row() {
        // [2 experts, 4 rows, 32 cols]; row i of the stored 8 has scale 127 + i, all nibbles 2
        // (1.0), so each value is 2^i.
        let t = Mxfp4Tensor::new(
            ByteView::owned(vec![0x22; 8 * 16]),
            ByteView::owned((127..135).collect()),
            vec![2, 4, 32],
            "w",
        )
        .unwrap();
        let odd = t.select_rows(1, 1, 2, 2).unwrap();
        assert_eq!(odd.shape(), &[2, 32]);
        let v = odd
            .to_tensor(&Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!((v[0][0], v[1][31]), (32.0, 128.0)); // stored rows 5 and 7
        assert_eq!(odd.byte_len(), 2 * (16 + 1));
        assert!(t.select_rows(1, 1, 2, 3).is_none());
        assert!(t.select_rows(2, 0, 1, 1).is_none());
    }

    #[test]
    fn wrong_byte_counts_are_refused_with_the_name() {
        let e = Mxfp4Tensor::new(
            ByteView::owned(vec![0; 15]),
            ByteView::owned(vec![127]),
            vec![1, 32],
            "model.layers.0.mlp.experts.down_proj",
        )
        .unwrap_err();
        assert!(e.to_string().contains("down_proj"), "{e}");
    }
}
