//! Memory-mapped safetensors checkpoints ([`MmapWeights`]) and the [`WeightSource`] the
//! family builders read them through.
//!
//! Every file is validated up front (complete, offsets in bounds, float tensors only) and
//! indexed by tensor name; only the headers are read. A builder then either takes a weight
//! matrix as a zero-copy [`MappedTensor`] view (the CPU default: no copy, pages shared with
//! the OS cache) or copies a tensor out of the map in the dtype it asks for, releasing the
//! pages it came from (`MADV_DONTNEED`) so that loading never holds the checkpoint twice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use memmap2::Mmap;

use super::weight::{MappedTensor, Weight, release_pages};
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
    maps: Vec<Arc<Mmap>>,
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
                ModelError::msg(format!("{}: {}", path.display(), explain_invalid(&mmap, e)))
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
            maps.push(Arc::new(mmap));
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

    /// Number of parameters in the tensors whose names start with none of `prefixes`.
    pub fn params_excluding(&self, prefixes: &[&str]) -> u64 {
        if prefixes.is_empty() {
            return self.total_params;
        }
        self.index
            .iter()
            .filter(|(name, _)| !prefixes.iter().any(|p| name.starts_with(p)))
            .map(|(_, e)| e.shape.iter().product::<usize>() as u64)
            .sum()
    }

    /// Checks a `model.safetensors.index.json` against the shards: every tensor its
    /// `weight_map` names must be in the shard it names.
    pub fn check_index(&self, index: &Path) -> Result<()> {
        let text = std::fs::read_to_string(index)
            .map_err(|e| ModelError::msg(format!("{}: cannot read: {e}", index.display())))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::msg(format!("{}: not valid JSON: {e}", index.display())))?;
        let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) else {
            return Err(ModelError::msg(format!(
                "{}: no \"weight_map\" object",
                index.display()
            )));
        };
        let mut names: Vec<&String> = map.keys().collect();
        names.sort();
        for name in names {
            let shard = map[name].as_str().unwrap_or_default();
            let held_by = self.index.get(name.as_str()).map(|e| &self.paths[e.file]);
            match held_by {
                Some(p) if file_name(p) == shard => {}
                Some(p) => {
                    return Err(ModelError::msg(format!(
                        "{}: names {shard} for tensor {name}, but {} holds it",
                        index.display(),
                        file_name(p)
                    )));
                }
                None => {
                    return Err(ModelError::msg(format!(
                        "{}: names tensor {name} in {shard}, but no shard holds it",
                        index.display()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The dtype most of the checkpoint's bytes are stored in.
    pub fn checkpoint_dtype(&self) -> DType {
        let mut bytes: HashMap<DType, usize> = HashMap::new();
        for e in self.index.values() {
            if let Some(d) = candle_dtype(e.dtype) {
                *bytes.entry(d).or_default() += e.end - e.start;
            }
        }
        bytes
            .into_iter()
            .max_by_key(|&(d, n)| (n, d.size_in_bytes()))
            .map_or(DType::F32, |(d, _)| d)
    }

    /// A zero-copy view of tensor `name`, if it is stored as f32 / f16 / bf16 and aligned.
    pub fn mapped(&self, name: &str) -> Option<MappedTensor> {
        let e = self.index.get(name)?;
        MappedTensor::new(
            self.maps[e.file].clone(),
            e.start,
            e.end,
            candle_dtype(e.dtype)?,
            e.shape.clone(),
        )
    }

    /// Refuses tensor `name` when the checkpoint holds it in another shape than `dims`, the
    /// shape the config implies.
    fn check_shape(&self, name: &str, dims: &[usize]) -> std::result::Result<(), String> {
        match self.index.get(name) {
            Some(e) if e.shape.as_slice() != dims => Err(format!(
                "tensor {name} in {} has shape {:?}, the config implies {dims:?}",
                file_name(&self.paths[e.file]),
                e.shape,
            )),
            _ => Ok(()),
        }
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

/// Why `bytes` is not a valid safetensors file, in terms of the file: which tensor's shape and
/// dtype disagree with its byte range, or how much data the header promises against what the
/// file holds (only then is a truncated or unfinished download the likely cause).
fn explain_invalid(bytes: &[u8], error: &dyn std::fmt::Display) -> String {
    let unfinished = "it may be truncated or still downloading";
    let Some(len_bytes) = bytes.get(..8) else {
        return format!(
            "{} bytes, too short for a safetensors header; {unfinished}",
            bytes.len()
        );
    };
    let header_len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
    let Some(header) = bytes.get(8..8usize.saturating_add(header_len)) else {
        return format!(
            "the header claims {header_len} bytes but the file has {}; {unfinished}",
            bytes.len()
        );
    };
    let Ok(serde_json::Value::Object(entries)) = serde_json::from_slice(header) else {
        return format!("not a safetensors file: its header is not a JSON object ({error})");
    };
    let mut data_end = 0usize;
    for (name, entry) in entries.iter().filter(|(n, _)| *n != "__metadata__") {
        let dtype = entry["dtype"].as_str().unwrap_or("?");
        let shape: Vec<usize> = entry["shape"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_u64().map(|d| d as usize))
                    .collect()
            })
            .unwrap_or_default();
        let offsets: Vec<usize> = entry["data_offsets"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_u64().map(|d| d as usize))
                    .collect()
            })
            .unwrap_or_default();
        let size = match dtype {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            _ => 1,
        };
        let &[start, end] = offsets.as_slice() else {
            return format!("tensor {name} has no valid data_offsets ({error})");
        };
        let needs = shape.iter().product::<usize>() * size;
        if end < start || end - start != needs {
            return format!(
                "tensor {name} has shape {shape:?} of {dtype}, which takes {needs} bytes, but its \
                 data_offsets [{start}, {end}] span {} bytes",
                end.saturating_sub(start)
            );
        }
        data_end = data_end.max(end);
    }
    let holds = bytes.len() - 8 - header_len;
    if data_end > holds {
        return format!(
            "the header describes {data_end} bytes of tensor data but the file holds {holds}; {unfinished}"
        );
    }
    format!("not a valid safetensors file ({error})")
}

/// The safetensors dtypes MoEScope computes with, as Candle dtypes.
fn candle_dtype(d: safetensors::Dtype) -> Option<DType> {
    use safetensors::Dtype as D;
    match d {
        D::F32 => Some(DType::F32),
        D::F16 => Some(DType::F16),
        D::BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// [`MmapWeights`] shared between the [`WeightSource`] and its `VarBuilder` backend.
struct SharedWeights(Arc<MmapWeights>);

impl candle_nn::var_builder::SimpleBackend for SharedWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        init: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.get(s, name, init, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.get_unchecked(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_tensor(name)
    }
}

/// Where a family builder takes its tensors from: small tensors (norms, biases) come as Candle
/// tensors in the compute dtype; weight matrices ([`WeightSource::weight`]) as zero-copy views
/// of the mapped checkpoint when mapping is on, else as tensors too.
#[derive(Clone)]
pub struct WeightSource {
    vb: VarBuilder<'static>,
    mapped: Option<Arc<MmapWeights>>,
}

impl From<VarBuilder<'static>> for WeightSource {
    /// A source of tensors only (tests, and weights that are not in a mapped checkpoint).
    fn from(vb: VarBuilder<'static>) -> Self {
        Self { vb, mapped: None }
    }
}

impl WeightSource {
    /// Tensors of `weights` in `dtype` on `device`; with `map`, weight matrices stay views of
    /// the mapped files (CPU only).
    pub fn new(weights: Arc<MmapWeights>, dtype: DType, device: &Device, map: bool) -> Self {
        let backend: Box<dyn candle_nn::var_builder::SimpleBackend> =
            Box::new(SharedWeights(weights.clone()));
        Self {
            vb: VarBuilder::from_backend(backend, dtype, device.clone()),
            mapped: (map && device.is_cpu()).then_some(weights),
        }
    }

    /// The source under `prefix` (`vb.pp("model")`).
    pub fn pp<S: ToString>(&self, prefix: S) -> Self {
        Self {
            vb: self.vb.pp(prefix),
            mapped: self.mapped.clone(),
        }
    }

    /// Tensor `name` of `shape`, copied in the compute dtype.
    pub fn get<S: Into<Shape>>(&self, shape: S, name: &str) -> candle_core::Result<Tensor> {
        self.vb.get(shape, name)
    }

    pub fn contains_tensor(&self, name: &str) -> bool {
        self.vb.contains_tensor(name)
    }

    /// Weight matrix `name` of `shape`: a mapped view when mapping is on and the tensor is
    /// stored in a float dtype, else a tensor in the compute dtype.
    pub fn weight<S: Into<Shape>>(&self, shape: S, name: &str) -> Result<Weight> {
        let shape: Shape = shape.into();
        if let Some(w) = &self.mapped {
            let prefix = self.vb.prefix();
            let full = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}.{name}")
            };
            w.check_shape(&full, shape.dims())
                .map_err(ModelError::msg)?;
            if let Some(m) = w.mapped(&full) {
                return Ok(Weight::Mapped(Box::new(m)));
            }
        }
        Ok(Weight::Tensor(self.vb.get(shape, name)?))
    }
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
        self.check_shape(name, s.dims())
            .map_err(candle_core::Error::Msg)?;
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
