//! ggml's tensor types ([`GgmlType`]) and [`GgmlTensor`], a weight kept in its quantised
//! blocks — a view of the mapped GGUF file that the CPU kernels dequantise a run of elements at
//! a time, so that a 17 GB Q4_K model is never expanded in memory.
//!
//! The block formats are candle's (`candle_core::quantized::k_quants`, which follows ggml's
//! `ggml-quants.c` bit for bit), except MXFP4 (ggml type 39, gpt-oss), which candle does not
//! know: a block is one e8m0 scale byte then 16 bytes of e2m1 nibbles, element `j` in the low
//! nibble of byte `j` and element `j + 16` in its high nibble, each worth
//! `FP4_VALUES[nibble] · 2^(scale − 127)`.

use std::ops::Range;

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K,
    BlockQ8_0, BlockQ8K, GgmlType as CandleBlock,
};
use candle_core::{Device, Tensor};
use half::{bf16, f16};

use crate::model::error::{ModelError, Result};
use crate::model::mxfp4::{ByteView, scaled_values};

/// The ggml tensor types MoEScope reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Mxfp4,
}

/// ggml type ids MoEScope knows by name but cannot decode.
const UNSUPPORTED: &[(u32, &str)] = &[
    (9, "Q8_1"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
];

impl GgmlType {
    pub const ALL: [GgmlType; 14] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Mxfp4,
    ];

    /// ggml's id of the type (`enum ggml_type`).
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
            GgmlType::Mxfp4 => 39,
        }
    }

    /// The type of ggml id `id`; the error says what the id is, if ggml defines it.
    pub fn from_id(id: u32) -> std::result::Result<Self, String> {
        if let Some(t) = Self::ALL.into_iter().find(|t| t.id() == id) {
            return Ok(t);
        }
        let supported = Self::ALL.map(|t| t.name()).join(", ");
        Err(match UNSUPPORTED.iter().find(|(i, _)| *i == id) {
            Some((_, name)) => format!(
                "{name} (ggml type {id}), which MoEScope cannot decode (it reads {supported})"
            ),
            None => format!(
                "ggml type {id}, which MoEScope does not know (it reads {supported}); the file \
                 may come from a newer llama.cpp"
            ),
        })
    }

    /// The name llama.cpp uses (`Q4_K`, `MXFP4`).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::Mxfp4 => "MXFP4",
        }
    }

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Mxfp4 => 32,
            GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q2K => 84,
            GgmlType::Q3K => 110,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
            GgmlType::Mxfp4 => 17,
        }
    }

    /// Whether the type is a plain float (read as a mapped f32 / f16 / bf16 tensor).
    pub fn is_float(self) -> bool {
        matches!(self, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
    }

    /// Bits per weight, scales included.
    pub fn bits_per_weight(self) -> f64 {
        (self.block_bytes() * 8) as f64 / self.block_elems() as f64
    }

    /// Bytes of `elems` elements in rows of `row` elements; `None` unless rows are whole blocks.
    pub fn bytes_for(self, elems: u64, row: u64) -> Option<u64> {
        let block = self.block_elems() as u64;
        (row.is_multiple_of(block)).then(|| elems / block * self.block_bytes() as u64)
    }

    /// Decodes whole blocks `bytes` into `out` (`block_elems` values per block).
    pub(crate) fn decode(self, bytes: &[u8], out: &mut [f32]) {
        debug_assert_eq!(
            bytes.len() / self.block_bytes() * self.block_elems(),
            out.len()
        );
        match self {
            GgmlType::F32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes(b.try_into().expect("4 bytes"));
                }
            }
            GgmlType::F16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            GgmlType::BF16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            GgmlType::Q4_0 => decode_blocks::<BlockQ4_0>(bytes, out),
            GgmlType::Q4_1 => decode_blocks::<BlockQ4_1>(bytes, out),
            GgmlType::Q5_0 => decode_blocks::<BlockQ5_0>(bytes, out),
            GgmlType::Q5_1 => decode_blocks::<BlockQ5_1>(bytes, out),
            GgmlType::Q8_0 => decode_blocks::<BlockQ8_0>(bytes, out),
            GgmlType::Q2K => decode_blocks::<BlockQ2K>(bytes, out),
            GgmlType::Q3K => decode_blocks::<BlockQ3K>(bytes, out),
            GgmlType::Q4K => decode_blocks::<BlockQ4K>(bytes, out),
            GgmlType::Q5K => decode_blocks::<BlockQ5K>(bytes, out),
            GgmlType::Q6K => decode_blocks::<BlockQ6K>(bytes, out),
            GgmlType::Mxfp4 => decode_mxfp4(bytes, out),
        }
    }
}

/// Decodes candle blocks of type `B` stored in `bytes`.
fn decode_blocks<B: CandleBlock>(bytes: &[u8], out: &mut [f32]) {
    let size = std::mem::size_of::<B>();
    let n = bytes.len() / size;
    if (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<B>()) {
        // SAFETY: candle's block types are `repr(C)` structs of `f16` and byte arrays with
        // ggml's exact layout (sizes checked in the tests), so every bit pattern is a valid
        // value; `bytes` is aligned for `B` and holds `n` of them.
        let blocks = unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), n) };
        B::to_float(blocks, out);
    } else {
        for (chunk, o) in bytes
            .chunks_exact(size)
            .zip(out.chunks_exact_mut(B::BLCK_SIZE))
        {
            let mut block = B::zeros();
            // SAFETY: as above; the copy writes exactly one block's bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    chunk.as_ptr(),
                    (&mut block as *mut B).cast::<u8>(),
                    size,
                );
            }
            B::to_float(std::slice::from_ref(&block), o);
        }
    }
}

/// Rows of activations quantised to Q8_K, the dot-product partner of every k-quant: what
/// [`GgmlRows::matmul_integer`] multiplies. Quantised once, used with every weight that reads
/// the same input (an expert's gate and up projections).
pub(crate) struct Q8kRows {
    blocks: Vec<BlockQ8K>,
    rows: usize,
    cols: usize,
}

impl Q8kRows {
    /// The `xs.len() / cols` rows of `xs` (row-major, `cols` wide) quantised, each on its own
    /// scale; `None` unless `cols` is a positive multiple of 256 (whole Q8_K blocks).
    pub(crate) fn quantize(xs: &[f32], cols: usize) -> Option<Self> {
        let block = <BlockQ8K as CandleBlock>::BLCK_SIZE;
        if cols == 0 || !cols.is_multiple_of(block) || !xs.len().is_multiple_of(cols) {
            return None;
        }
        let per_row = cols / block;
        let rows = xs.len() / cols;
        let mut blocks = vec![<BlockQ8K as CandleBlock>::zeros(); rows * per_row];
        for (x, q) in xs.chunks_exact(cols).zip(blocks.chunks_exact_mut(per_row)) {
            <BlockQ8K as CandleBlock>::from_float(x, q);
        }
        Some(Self { blocks, rows, cols })
    }
}

/// [`GgmlRows::matmul_integer`] for block type `B` (a k-quant, whose dot-product partner is
/// Q8_K).
fn integer_dots<B: CandleBlock<VecDotType = BlockQ8K>>(
    bytes: &[u8],
    xq: &Q8kRows,
    ys: &mut [f32],
) -> bool {
    let (size, per_row) = (std::mem::size_of::<B>(), xq.cols / B::BLCK_SIZE);
    if !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<B>())
        || <BlockQ8K as CandleBlock>::BLCK_SIZE != B::BLCK_SIZE
        || !bytes.len().is_multiple_of(size * per_row)
    {
        return false;
    }
    let rows = bytes.len() / (size * per_row);
    debug_assert_eq!(ys.len(), xq.rows * rows);
    // SAFETY: as in `decode_blocks`: plain-data blocks, alignment checked above, `rows ·
    // per_row` of them in `bytes`.
    let blocks = unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), rows * per_row) };
    for (w, out) in blocks
        .chunks_exact(per_row)
        .zip(ys.chunks_exact_mut(xq.rows))
    {
        for (y, q) in out.iter_mut().zip(xq.blocks.chunks_exact(per_row)) {
            *y = B::vec_dot(xq.cols, w, q);
        }
    }
    true
}

/// Decodes ggml MXFP4 blocks (see the module docs).
fn decode_mxfp4(bytes: &[u8], out: &mut [f32]) {
    let table = scaled_values();
    for (block, o) in bytes.chunks_exact(17).zip(out.chunks_exact_mut(32)) {
        let values = &table[usize::from(block[0]) * 16..][..16];
        let (lo, hi) = o.split_at_mut(16);
        for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&block[1..]) {
            *l = values[usize::from(q & 0x0f)];
            *h = values[usize::from(q >> 4)];
        }
    }
}

/// A weight stored in a ggml block type: logically a row-major tensor of `shape` whose rows
/// (the last axis) are whole blocks.
#[derive(Clone)]
pub struct GgmlTensor {
    data: ByteView,
    ggml_type: GgmlType,
    shape: Vec<usize>,
}

impl std::fmt::Debug for GgmlTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GgmlTensor({}, {:?})", self.ggml_type.name(), self.shape)
    }
}

/// One quantised matrix's bytes as the kernels read them.
#[derive(Clone, Copy)]
pub(crate) struct GgmlRows<'a> {
    bytes: &'a [u8],
    ggml_type: GgmlType,
}

impl GgmlTensor {
    /// The tensor of `shape` stored in `data`; `name` is for errors.
    pub fn new(data: ByteView, ggml_type: GgmlType, shape: Vec<usize>, name: &str) -> Result<Self> {
        let cols = shape.last().copied().unwrap_or(0) as u64;
        let elems = shape.iter().product::<usize>() as u64;
        let want = ggml_type.bytes_for(elems, cols);
        if want != Some(data.len() as u64) {
            return Err(ModelError::msg(format!(
                "{name}: {} bytes do not hold a {} tensor of shape {shape:?}",
                data.len(),
                ggml_type.name()
            )));
        }
        Ok(Self {
            data,
            ggml_type,
            shape,
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    pub fn byte_len(&self) -> u64 {
        self.data.len() as u64
    }

    pub fn is_mapped(&self) -> bool {
        self.data.is_mapped()
    }

    pub fn release(&self) {
        self.data.release();
    }

    fn cols(&self) -> usize {
        *self.shape.last().expect("checked in new")
    }

    fn row_bytes(&self) -> usize {
        self.cols() / self.ggml_type.block_elems() * self.ggml_type.block_bytes()
    }

    pub(crate) fn rows(&self) -> GgmlRows<'_> {
        GgmlRows {
            bytes: self.data.bytes(),
            ggml_type: self.ggml_type,
        }
    }

    /// Rows `rows` of matrix `index` of a tensor of rank 3 (one expert's rows of a
    /// `[experts, rows, cols]` tensor): a view of the same bytes.
    pub fn slice(&self, index: usize, rows: Range<usize>) -> Option<Self> {
        let &[outer, inner, cols] = self.shape.as_slice() else {
            return None;
        };
        if index >= outer || rows.end > inner || rows.start > rows.end {
            return None;
        }
        let rb = self.row_bytes();
        let first = index * inner + rows.start;
        Some(Self {
            data: self.data.narrow(first * rb..(first + rows.len()) * rb),
            ggml_type: self.ggml_type,
            shape: vec![rows.len(), cols],
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

impl GgmlRows<'_> {
    /// Whether products with rows of `cols` elements of this weight run on integer dot
    /// products ([`GgmlRows::matmul_integer`]): the k-quants (Q2_K to Q6_K), whose rows are
    /// whole 256-element blocks.
    pub(crate) fn has_integer_dots(self, cols: usize) -> bool {
        matches!(
            self.ggml_type,
            GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K
        ) && cols.is_multiple_of(256)
            && cols > 0
    }

    /// `ys[j·n + t] = Σ_i w[j, i] · x_t[i]` for every row `j` of this `[rows, cols]` weight and
    /// each of the `n` rows `x_t` of `xq` (the activations quantised to Q8_K, as llama.cpp
    /// computes it): integer dot products with the weight's blocks (candle's `vec_dot`, SIMD
    /// where the CPU has it). A token's result does not depend on the others. Returns `false`
    /// (and writes nothing) unless [`GgmlRows::has_integer_dots`] holds for `xq`'s width and
    /// the bytes are aligned for the block type.
    pub(crate) fn matmul_integer(self, xq: &Q8kRows, ys: &mut [f32]) -> bool {
        if !self.has_integer_dots(xq.cols) {
            return false;
        }
        match self.ggml_type {
            GgmlType::Q2K => integer_dots::<BlockQ2K>(self.bytes, xq, ys),
            GgmlType::Q3K => integer_dots::<BlockQ3K>(self.bytes, xq, ys),
            GgmlType::Q4K => integer_dots::<BlockQ4K>(self.bytes, xq, ys),
            GgmlType::Q5K => integer_dots::<BlockQ5K>(self.bytes, xq, ys),
            GgmlType::Q6K => integer_dots::<BlockQ6K>(self.bytes, xq, ys),
            _ => false,
        }
    }

    /// Elements `range` of the logical row-major matrix as f32, into `dst`: whole blocks are
    /// decoded in place, partial ones through a block-sized buffer.
    pub(crate) fn read_f32(self, range: Range<usize>, dst: &mut [f32]) {
        assert_eq!(range.len(), dst.len());
        let t = self.ggml_type;
        let (be, bb) = (t.block_elems(), t.block_bytes());
        let mut i = range.start;
        let mut out = 0;
        let mut buf = [0f32; 256];
        while i < range.end {
            let (block, within) = (i / be, i % be);
            let take = (be - within).min(range.end - i);
            let bytes = &self.bytes[block * bb..];
            if within == 0 && take == be {
                // As many whole blocks as the range holds, straight into `dst`.
                let blocks = (range.end - i) / be;
                t.decode(&bytes[..blocks * bb], &mut dst[out..out + blocks * be]);
                i += blocks * be;
                out += blocks * be;
            } else {
                t.decode(&bytes[..bb], &mut buf[..be]);
                dst[out..out + take].copy_from_slice(&buf[within..within + take]);
                i += take;
                out += take;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Integer dot products with Q8_K-quantised activations stay within the activations'
    /// quantisation error of the f32 product of the dequantised weight, for every k-quant.
    #[test]
    fn integer_dots_match_the_f32_product_of_the_decoded_blocks() {
        use candle_core::quantized::{GgmlDType, QTensor};
        let dev = Device::Cpu;
        let (rows, cols, n) = (8usize, 512usize, 3usize);
        let w = Tensor::randn(0f32, 0.05, (rows, cols), &dev).unwrap();
        let xs: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        for (candle_type, ours) in [
            (GgmlDType::Q2K, GgmlType::Q2K),
            (GgmlDType::Q3K, GgmlType::Q3K),
            (GgmlDType::Q4K, GgmlType::Q4K),
            (GgmlDType::Q5K, GgmlType::Q5K),
            (GgmlDType::Q6K, GgmlType::Q6K),
        ] {
            let q = QTensor::quantize(&w, candle_type).unwrap();
            let t = GgmlTensor::new(
                ByteView::owned(q.data().unwrap().to_vec()),
                ours,
                vec![rows, cols],
                "w",
            )
            .unwrap();
            let dense = t.to_tensor(&dev).unwrap().to_vec2::<f32>().unwrap();
            let xq = Q8kRows::quantize(&xs, cols).unwrap();
            let mut ys = vec![0f32; rows * n];
            assert!(t.rows().matmul_integer(&xq, &mut ys), "{}", ours.name());
            for (j, row) in dense.iter().enumerate() {
                for tok in 0..n {
                    let x = &xs[tok * cols..(tok + 1) * cols];
                    let want: f32 = row.iter().zip(x).map(|(a, b)| a * b).sum();
                    let scale: f32 = row.iter().zip(x).map(|(a, b)| (a * b).abs()).sum();
                    let got = ys[j * n + tok];
                    assert!(
                        (got - want).abs() <= 0.01 * scale,
                        "{} row {j} token {tok}: {got} vs {want}",
                        ours.name()
                    );
                }
            }
            // A token alone gets exactly what it gets among others (layer-major runs group
            // tokens differently from batch-major ones).
            let alone = Q8kRows::quantize(&xs[cols..2 * cols], cols).unwrap();
            let mut one = vec![0f32; rows];
            assert!(t.rows().matmul_integer(&alone, &mut one));
            let among: Vec<f32> = (0..rows).map(|j| ys[j * n + 1]).collect();
            assert_eq!(one, among, "{}", ours.name());
        }
        // Q8_0 and rows that are not whole 256-blocks keep the decoded-tile path.
        let q8 = GgmlTensor::new(
            ByteView::owned(vec![0; 34 * 2]),
            GgmlType::Q8_0,
            vec![2, 32],
            "w",
        )
        .unwrap();
        assert!(!q8.rows().has_integer_dots(32));
        assert!(Q8kRows::quantize(&[0.0; 64], 32).is_none());
    }

    #[test]
    fn candle_blocks_have_ggmls_sizes() {
        use std::mem::size_of;
        let sizes = [
            (size_of::<BlockQ4_0>(), GgmlType::Q4_0),
            (size_of::<BlockQ4_1>(), GgmlType::Q4_1),
            (size_of::<BlockQ5_0>(), GgmlType::Q5_0),
            (size_of::<BlockQ5_1>(), GgmlType::Q5_1),
            (size_of::<BlockQ8_0>(), GgmlType::Q8_0),
            (size_of::<BlockQ2K>(), GgmlType::Q2K),
            (size_of::<BlockQ3K>(), GgmlType::Q3K),
            (size_of::<BlockQ4K>(), GgmlType::Q4K),
            (size_of::<BlockQ5K>(), GgmlType::Q5K),
            (size_of::<BlockQ6K>(), GgmlType::Q6K),
        ];
        for (size, t) in sizes {
            assert_eq!(size, t.block_bytes(), "{}", t.name());
        }
    }

    #[test]
    fn q8_0_is_scale_times_int8() {
        // d = 0.5 (f16 0x3800), then 32 int8 values -16..16.
        let mut block = vec![0x00, 0x38];
        block.extend((-16i8..16).map(|v| v as u8));
        let mut out = [0f32; 32];
        GgmlType::Q8_0.decode(&block, &mut out);
        let want: Vec<f32> = (-16..16).map(|v| v as f32 * 0.5).collect();
        assert_eq!(out.to_vec(), want);
        // Misaligned bytes decode the same.
        let mut shifted = vec![0u8];
        shifted.extend(&block);
        let mut again = [0f32; 32];
        GgmlType::Q8_0.decode(&shifted[1..], &mut again);
        assert_eq!(again, out);
    }

    #[test]
    fn mxfp4_low_nibbles_are_the_first_half_of_the_block() {
        // Scale byte 128 (×2); byte 0 = 0x72: element 0 ← nibble 2 (1.0), element 16 ← nibble
        // 7 (6.0); byte 1 = 0x9A: element 1 ← 0xA (−1.0), element 17 ← 0x9 (−0.5).
        let mut block = vec![128, 0x72, 0x9A];
        block.extend([0u8; 14]);
        let mut out = [0f32; 32];
        GgmlType::Mxfp4.decode(&block, &mut out);
        assert_eq!((out[0], out[16]), (2.0, 12.0));
        assert_eq!((out[1], out[17]), (-2.0, -1.0));
        assert!(out[2..16].iter().chain(&out[18..]).all(|&v| v == 0.0));
    }

    #[test]
    fn ranges_that_cut_blocks_read_the_right_elements() {
        // Two rows of 64 Q8_0 elements (two blocks each): element i = i − 64 with d = 1.
        let mut bytes = Vec::new();
        for b in 0..4 {
            bytes.extend([0x00, 0x3c]); // f16 1.0
            bytes.extend((0..32).map(|j| (b * 32 + j - 64) as i8 as u8));
        }
        let t = GgmlTensor::new(ByteView::owned(bytes), GgmlType::Q8_0, vec![2, 64], "w").unwrap();
        let mut dst = vec![0f32; 70];
        t.rows().read_f32(30..100, &mut dst);
        let want: Vec<f32> = (30..100).map(|i| (i - 64) as f32).collect();
        assert_eq!(dst, want);
        // One row of a [experts, rows, cols] tensor.
        let stacked = GgmlTensor::new(t.data.clone(), GgmlType::Q8_0, vec![2, 1, 64], "w")
            .unwrap()
            .slice(1, 0..1)
            .unwrap();
        let row = stacked
            .to_tensor(&Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(
            row[0],
            (64..128).map(|i| (i - 64) as f32).collect::<Vec<_>>()
        );
        assert!(
            GgmlTensor::new(
                ByteView::owned(vec![0; 10]),
                GgmlType::Q8_0,
                vec![1, 32],
                "w"
            )
            .is_err()
        );
    }
}
