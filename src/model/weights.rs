//! Memory-mapped safetensors weights as a Candle `VarBuilder` backend.
//!
//! Every file is validated up front (complete, offsets in bounds, float tensors only) and
//! indexed by tensor name. A tensor is copied out of the map when a layer asks for it, and the
//! pages it came from are then released (`MADV_DONTNEED`), so loading never holds the checkpoint
//! twice in memory: peak RSS stays near the size of the weights actually used.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Shape, Tensor};
use memmap2::Mmap;

use super::{ModelError, Result};

struct Entry {
    file: usize,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: usize,
    end: usize,
}

/// The tensors of one or more safetensors files, memory-mapped.
pub struct MmapWeights {
    maps: Vec<Mmap>,
    paths: Vec<PathBuf>,
    index: HashMap<String, Entry>,
    total_params: u64,
}

impl MmapWeights {
    /// Maps and validates `files`.
    pub fn open(files: &[PathBuf]) -> Result<Self> {
        let mut maps = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        let mut total_params = 0u64;
        for (fi, path) in files.iter().enumerate() {
            let file = std::fs::File::open(path)
                .map_err(|e| ModelError::msg(format!("{}: cannot open: {e}", path.display())))?;
            // SAFETY: the map is read-only; the checkpoint must not be modified while the model
            // is being loaded (the same contract as candle's mmaped loader).
            let mmap = unsafe { Mmap::map(&file) }
                .map_err(|e| ModelError::msg(format!("{}: cannot map: {e}", path.display())))?;
            let incomplete = |e: &dyn std::fmt::Display| {
                ModelError::msg(format!(
                    "{}: not a complete safetensors file ({e}); it may be truncated or still downloading",
                    path.display()
                ))
            };
            // Full validation: header, offsets and buffer length.
            safetensors::SafeTensors::deserialize(&mmap).map_err(|e| incomplete(&e))?;
            let (header_len, meta) =
                safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| incomplete(&e))?;
            let data_start = 8 + header_len;
            for (name, info) in meta.tensors() {
                use safetensors::Dtype as D;
                if !matches!(info.dtype, D::F32 | D::F16 | D::BF16 | D::F64) {
                    return Err(ModelError::msg(format!(
                        "{}: tensor {name} has dtype {:?}; MoEScope reads float (f32/f16/bf16) weights",
                        path.display(),
                        info.dtype
                    )));
                }
                total_params += info.shape.iter().product::<usize>() as u64;
                let (a, b) = info.data_offsets;
                index.insert(
                    name,
                    Entry {
                        file: fi,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        start: data_start + a,
                        end: data_start + b,
                    },
                );
            }
            maps.push(mmap);
        }
        Ok(Self {
            maps,
            paths: files.to_vec(),
            index,
            total_params,
        })
    }

    /// Number of parameters in all files.
    pub fn total_params(&self) -> u64 {
        self.total_params
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    fn load(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        let e = self.index.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("cannot find tensor {name} in the checkpoint"))
        })?;
        let map = &self.maps[e.file];
        let view =
            safetensors::tensor::TensorView::new(e.dtype, e.shape.clone(), &map[e.start..e.end])
                .map_err(|err| candle_core::Error::Msg(format!("{name}: {err}")))?;
        let tensor = view.load(dev)?;
        release_pages(map, e.start, e.end);
        Ok(tensor)
    }
}

/// Drops the whole pages inside `[start, end)` from this process's resident set; they are read
/// from the file again if touched later.
fn release_pages(map: &Mmap, start: usize, end: usize) {
    const PAGE: usize = 4096;
    let first = start.div_ceil(PAGE) * PAGE;
    let last = end / PAGE * PAGE;
    if last > first {
        // SAFETY: the map is a private read-only file mapping; MADV_DONTNEED only drops clean
        // pages, which are re-read from the file on the next access. No reference into the range
        // outlives this call (the tensor was copied out).
        #[cfg(unix)]
        unsafe {
            let _ =
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, last - first);
        }
    }
    let _ = (map, first, last);
}

impl candle_nn::var_builder::SimpleBackend for MmapWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Some(e) = self.index.get(name)
            && e.shape.as_slice() != s.dims()
        {
            return Err(candle_core::Error::Msg(format!(
                "tensor {name} in {} has shape {:?}, the config implies {:?}",
                file_name(&self.paths[e.file]),
                e.shape,
                s.dims()
            )));
        }
        self.load(name, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    )
}
