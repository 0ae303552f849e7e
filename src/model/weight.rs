//! [`Weight`]: a layer's weight matrix, either a Candle tensor (on any device, in any dtype),
//! a zero-copy [`MappedTensor`], a view of a memory-mapped checkpoint in the checkpoint's own
//! dtype (f32, f16 or bf16) that the CPU kernels read directly, or an MXFP4 weight
//! ([`Mxfp4Tensor`]) that they dequantise as they read it.
//!
//! A mapped weight costs no memory of its own: its pages belong to the OS page cache, are read
//! the first time a kernel touches them, and can be given back ([`Weight::release`]) once a
//! layer is done with them. Code that needs a Candle tensor (training ops, tensor-op
//! fallbacks, LoRA merging) gets a copy with [`Weight::to_tensor`].

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;

use super::error::Result;
use super::gguf::GgmlTensor;
use super::memory::release_pages;
use super::mxfp4::Mxfp4Tensor;

/// A byte range of a memory-mapped file holding one tensor, with its dtype and shape.
#[derive(Clone)]
pub struct MappedTensor {
    map: Arc<Mmap>,
    start: usize,
    end: usize,
    dtype: DType,
    shape: Vec<usize>,
}

impl std::fmt::Debug for MappedTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedTensor({:?}, {:?})", self.dtype, self.shape)
    }
}

impl MappedTensor {
    /// A view of `map[start..end]` as a row-major tensor; `None` unless the dtype is f32, f16 or
    /// bf16, the range holds exactly `shape`'s elements, and the data is aligned for the dtype
    /// (safetensors writers align it; a file that does not is read into memory instead).
    pub fn new(
        map: Arc<Mmap>,
        start: usize,
        end: usize,
        dtype: DType,
        shape: Vec<usize>,
    ) -> Option<Self> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return None;
        }
        let elems: usize = shape.iter().product();
        let size = dtype.size_in_bytes();
        let fits = end <= map.len() && start <= end && end - start == elems * size;
        let aligned = (map.as_ptr() as usize + start).is_multiple_of(size);
        (fits && aligned).then_some(Self {
            map,
            start,
            end,
            dtype,
            shape,
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The tensor's bytes (row-major, little-endian).
    pub fn bytes(&self) -> &[u8] {
        &self.map[self.start..self.end]
    }

    /// A copy of the data as a Candle tensor on `device`, in the mapped dtype.
    fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_raw_buffer(
            self.bytes(),
            self.dtype,
            &self.shape,
            device,
        )?)
    }

    /// The sub-tensor `[index, rows.start..rows.end, ...]` of a tensor of rank ≥ 2 (e.g. one
    /// expert's gate rows of a fused `[experts, 2·inter, hidden]` tensor): a contiguous view of
    /// the same mapped bytes.
    pub fn slice(&self, index: usize, rows: std::ops::Range<usize>) -> Option<Self> {
        let [outer, inner, rest @ ..] = self.shape.as_slice() else {
            return None;
        };
        if index >= *outer || rows.end > *inner || rows.start > rows.end {
            return None;
        }
        let row_bytes = rest.iter().product::<usize>() * self.dtype.size_in_bytes();
        let start = self.start + (index * inner + rows.start) * row_bytes;
        let mut shape = vec![rows.len()];
        shape.extend_from_slice(rest);
        Self::new(
            self.map.clone(),
            start,
            start + rows.len() * row_bytes,
            self.dtype,
            shape,
        )
    }

    /// Drops this tensor's whole pages from the process's resident set; the OS reads them
    /// from the file again if they are touched later.
    pub fn release(&self) {
        release_pages(&self.map, self.start, self.end);
    }
}

/// A weight matrix: a Candle tensor, or a view of the memory-mapped checkpoint.
#[derive(Debug, Clone)]
pub enum Weight {
    Tensor(Tensor),
    Mapped(Box<MappedTensor>),
    /// Packed FP4 values with block scales, kept in that format.
    Mxfp4(Box<Mxfp4Tensor>),
    /// ggml quantised blocks of a GGUF file (Q8_0, Q4_K, …), kept in that format.
    Ggml(Box<GgmlTensor>),
}

impl From<Tensor> for Weight {
    fn from(t: Tensor) -> Self {
        Weight::Tensor(t)
    }
}

impl Weight {
    pub fn dims(&self) -> &[usize] {
        match self {
            Weight::Tensor(t) => t.dims(),
            Weight::Mapped(m) => m.shape(),
            Weight::Mxfp4(m) => m.shape(),
            Weight::Ggml(q) => q.shape(),
        }
    }

    /// The stored dtype; `U8` for MXFP4 and ggml blocks (packed bytes).
    pub fn dtype(&self) -> DType {
        match self {
            Weight::Tensor(t) => t.dtype(),
            Weight::Mapped(m) => m.dtype(),
            Weight::Mxfp4(_) | Weight::Ggml(_) => DType::U8,
        }
    }

    /// The dtype of [`Weight::to_tensor`]'s copy: the stored one, f32 for packed formats.
    pub fn dense_dtype(&self) -> DType {
        match self {
            Weight::Mxfp4(_) | Weight::Ggml(_) => DType::F32,
            w => w.dtype(),
        }
    }

    /// The device the weight lives on (mapped and MXFP4 weights are in host memory).
    pub fn device(&self) -> Device {
        match self {
            Weight::Tensor(t) => t.device().clone(),
            Weight::Mapped(_) | Weight::Mxfp4(_) | Weight::Ggml(_) => Device::Cpu,
        }
    }

    /// The tensor, when the weight is one (not mapped).
    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            Weight::Tensor(t) => Some(t),
            Weight::Mapped(_) | Weight::Mxfp4(_) | Weight::Ggml(_) => None,
        }
    }

    /// The weight as a Candle tensor in its own dtype: the tensor itself, or a copy of the
    /// mapped data on the CPU (MXFP4 dequantised to f32).
    pub fn to_tensor(&self) -> Result<Tensor> {
        match self {
            Weight::Tensor(t) => Ok(t.clone()),
            Weight::Mapped(m) => m.to_tensor(&Device::Cpu),
            Weight::Mxfp4(m) => m.to_tensor(&Device::Cpu),
            Weight::Ggml(q) => q.to_tensor(&Device::Cpu),
        }
    }

    /// The weight as a Candle tensor of `dtype` (a copy unless it is a tensor of that dtype).
    pub fn tensor_as(&self, dtype: DType) -> Result<Tensor> {
        Ok(self.to_tensor()?.to_dtype(dtype)?)
    }

    /// Bytes of the weight's data.
    pub fn byte_len(&self) -> u64 {
        match self {
            Weight::Mxfp4(m) => m.byte_len(),
            Weight::Ggml(q) => q.byte_len(),
            w => (w.dims().iter().product::<usize>() * w.dtype().size_in_bytes()) as u64,
        }
    }

    /// Gives a mapped weight's pages back to the OS (a no-op for tensors).
    pub fn release(&self) {
        match self {
            Weight::Mapped(m) => m.release(),
            Weight::Mxfp4(m) => m.release(),
            Weight::Ggml(q) => q.release(),
            Weight::Tensor(_) => {}
        }
    }

    /// The weight is read in place from the mapped checkpoint.
    pub fn is_mapped(&self) -> bool {
        match self {
            Weight::Mapped(_) => true,
            Weight::Mxfp4(m) => m.is_mapped(),
            Weight::Ggml(q) => q.is_mapped(),
            Weight::Tensor(_) => false,
        }
    }

    /// The sub-matrix `[index, rows, ..]` of a stacked weight (one expert's rows of a fused
    /// `[experts, rows, cols]` tensor): a view of the same bytes when mapped, a narrowed tensor
    /// otherwise.
    pub fn slice(&self, index: usize, rows: std::ops::Range<usize>) -> Result<Weight> {
        match self {
            Weight::Mapped(m) => m
                .slice(index, rows.clone())
                .map(|v| Weight::Mapped(Box::new(v))),
            Weight::Mxfp4(m) => m
                .select_rows(index, rows.start, 1, rows.len())
                .map(|v| Weight::Mxfp4(Box::new(v))),
            Weight::Ggml(q) => q
                .slice(index, rows.clone())
                .map(|v| Weight::Ggml(Box::new(v))),
            Weight::Tensor(t) => Some(Weight::Tensor(
                t.get(index)?
                    .narrow(0, rows.start, rows.len())?
                    .contiguous()?,
            )),
        }
        .ok_or_else(|| {
            super::error::ModelError::msg(format!(
                "cannot take [{index}, {}..{}] of a weight of shape {:?}",
                rows.start,
                rows.end,
                self.dims()
            ))
        })
    }
}

impl Weight {
    /// Rows `first, first + 2, ..` (`count` of them) of matrix `index` of a stacked weight
    /// `[experts, rows, cols]`: one expert's gate (or up) rows when they are interleaved with
    /// the other's. A view of the same bytes for MXFP4; a copy otherwise.
    pub fn every_other_row(&self, index: usize, first: usize, count: usize) -> Result<Weight> {
        let bad = || {
            super::error::ModelError::msg(format!(
                "cannot take every other row from {first} ({count} rows) of [{index}] of a \
                 weight of shape {:?}",
                self.dims()
            ))
        };
        if let Weight::Mxfp4(m) = self {
            return m
                .select_rows(index, first, 2, count)
                .map(|v| Weight::Mxfp4(Box::new(v)))
                .ok_or_else(bad);
        }
        let &[outer, inner, cols] = self.dims() else {
            return Err(bad());
        };
        if index >= outer || first > 1 || 2 * count + first > inner + 1 || inner % 2 != 0 {
            return Err(bad());
        }
        let t = self.to_tensor()?.get(index)?;
        let pairs = t.reshape((inner / 2, 2, cols))?;
        let rows = pairs.narrow(1, first, 1)?.squeeze(1)?.narrow(0, 0, count)?;
        Ok(Weight::Tensor(rows.contiguous()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_of_a_fused_tensor_is_the_expert_rows() -> Result<()> {
        // [experts 3, rows 4, cols 2], element value = its flat index.
        let data: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, bytemuck::cast_slice(&data)).unwrap();
        let map = Arc::new(unsafe { Mmap::map(file.as_file()).unwrap() });
        let fused = MappedTensor::new(map, 0, 96, DType::F32, vec![3, 4, 2]).unwrap();
        let mapped = Weight::Mapped(Box::new(fused.clone())).slice(1, 2..4)?;
        assert!(mapped.is_mapped());
        assert_eq!(mapped.dims(), &[2, 2]);
        let want = vec![vec![12.0f32, 13.0], vec![14.0, 15.0]];
        assert_eq!(mapped.to_tensor()?.to_vec2::<f32>()?, want);
        let tensor = Weight::Tensor(fused.to_tensor(&Device::Cpu)?).slice(1, 2..4)?;
        assert_eq!(tensor.to_tensor()?.to_vec2::<f32>()?, want);
        assert!(Weight::Mapped(Box::new(fused)).slice(3, 0..1).is_err());
        Ok(())
    }
}
