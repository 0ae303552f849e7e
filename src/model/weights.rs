//! Memory-mapped safetensors checkpoints ([`MmapWeights`]) and the [`WeightSource`] the
//! family builders read them through.
//!
//! Every file is validated up front (complete, offsets in bounds, float tensors only — plus
//! the u8 `*_blocks` / `*_scales` pairs of MXFP4 weights) and indexed by tensor name; only the
//! headers are read. A builder then either takes a weight
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

use super::memory::release_pages;
use super::mxfp4::{BLOCK, ByteView, Mxfp4Tensor};
use super::weight::{MappedTensor, Weight};
use super::{ModelError, Result};

struct Entry {
    file: usize,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: usize,
    end: usize,
}

/// The name suffix of a float8 weight's block scales: `w_fp8 × scale` is the weight, one scale
/// per `[block_rows, block_cols]` block (DeepSeek-V3's `weight_scale_inv`).
const FP8_SCALE_SUFFIX: &str = "_scale_inv";

/// The tensors of one or more safetensors files, memory-mapped.
pub struct MmapWeights {
    maps: Vec<Arc<Mmap>>,
    paths: Vec<PathBuf>,
    index: HashMap<String, Entry>,
    /// `[rows, cols]` of the blocks float8 weights are scaled by (`quantization_config.
    /// weight_block_size`).
    fp8_block: [usize; 2],
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
                let mxfp4_part = info.dtype == D::U8
                    && (name.ends_with(MXFP4_BLOCKS) || name.ends_with(MXFP4_SCALES));
                if !mxfp4_part
                    && !matches!(info.dtype, D::F32 | D::F16 | D::BF16 | D::F64 | D::F8_E4M3)
                {
                    return Err(ModelError::msg(format!(
                        "{}: tensor {name} has dtype {:?}; MoEScope reads float (f32/f16/bf16) \
                         weights, block-scaled float8 (e4m3) and MXFP4 (u8 \
                         *{MXFP4_BLOCKS} with *{MXFP4_SCALES})",
                        path.display(),
                        info.dtype
                    )));
                }
                total_params += tensor_params(&name, info.dtype, &info.shape);
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
        check_mxfp4_pairs(&index, files)?;
        Ok(Self {
            maps,
            paths: files.to_vec(),
            index,
            fp8_block: [128, 128],
            total_params,
        })
    }

    /// Sets the block size float8 weights are scaled by (DeepSeek-V3's is 128 × 128).
    pub fn set_fp8_block_size(&mut self, block: [usize; 2]) {
        self.fp8_block = block;
    }

    /// Whether any tensor is stored as float8.
    pub fn has_fp8(&self) -> bool {
        self.index
            .values()
            .any(|e| e.dtype == safetensors::Dtype::F8_E4M3)
    }

    /// Number of parameters in all files.
    pub fn total_params(&self) -> u64 {
        self.total_params
    }

    /// Bytes the tensors take once loaded over the mapped files: as stored, except float8
    /// weights, which are dequantised into f32 copies on load.
    pub fn mapped_bytes(&self) -> u64 {
        self.index
            .values()
            .map(|e| match e.dtype {
                safetensors::Dtype::F8_E4M3 => 4 * e.shape.iter().product::<usize>() as u64,
                _ => (e.end - e.start) as u64,
            })
            .sum()
    }

    /// Number of parameters in the tensors whose names start with `prefix`.
    pub fn params_under(&self, prefix: &str) -> u64 {
        self.params_where(|name| name.starts_with(prefix))
    }

    /// Number of parameters in the tensors whose names start with none of `prefixes`.
    pub fn params_excluding(&self, prefixes: &[&str]) -> u64 {
        self.params_where(|name| !prefixes.iter().any(|p| name.starts_with(p)))
    }

    /// Number of parameters in the tensors whose names pass `keep`.
    fn params_where(&self, keep: impl Fn(&str) -> bool) -> u64 {
        self.index
            .iter()
            .filter(|(name, _)| keep(name))
            .map(|(name, e)| tensor_params(name, e.dtype, &e.shape))
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

    /// The bytes and shape of tensor `name` as stored, if the checkpoint holds it as u8.
    fn stored_u8(&self, name: &str) -> Option<(ByteView, &[usize])> {
        let e = self.index.get(name)?;
        (e.dtype == safetensors::Dtype::U8).then(|| {
            let view = ByteView::Mapped {
                map: self.maps[e.file].clone(),
                start: e.start,
                end: e.end,
            };
            (view, e.shape.as_slice())
        })
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
        let tensor = if e.dtype == safetensors::Dtype::F8_E4M3 {
            self.dequantize_fp8(name, &view.load(&Device::Cpu)?)?
                .to_device(dev)?
        } else {
            view.load(dev)?
        };
        release_pages(map, e.start, e.end);
        Ok(tensor)
    }

    /// The f32 weight of float8 tensor `name` (`[rows, cols]`): each element times the scale of
    /// its block, from `{name}_scale_inv` (`[⌈rows/b_r⌉, ⌈cols/b_c⌉]`, the last blocks shorter).
    fn dequantize_fp8(&self, name: &str, fp8: &Tensor) -> candle_core::Result<Tensor> {
        let scale_name = format!("{name}{FP8_SCALE_SUFFIX}");
        let file = |e: &Entry| file_name(&self.paths[e.file]);
        let (rows, cols) = fp8.dims2().map_err(|_| {
            candle_core::Error::Msg(format!(
                "tensor {name} is float8 but has shape {:?}; only matrices are block-scaled",
                fp8.dims()
            ))
        })?;
        let Some(scale_entry) = self.index.get(&scale_name) else {
            return Err(candle_core::Error::Msg(format!(
                "tensor {name} in {} is float8 (e4m3) but the checkpoint has no {scale_name} \
                 holding its block scales",
                file(&self.index[name])
            )));
        };
        let [br, bc] = self.fp8_block;
        let want = [rows.div_ceil(br), cols.div_ceil(bc)];
        if scale_entry.shape != want {
            return Err(candle_core::Error::Msg(format!(
                "tensor {scale_name} in {} has shape {:?}; the {rows} × {cols} weight {name} \
                 in blocks of {br} × {bc} needs {want:?}",
                file(scale_entry),
                scale_entry.shape
            )));
        }
        let scales: Vec<f32> = self
            .load(&scale_name, &Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let mut values: Vec<f32> = fp8.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        dequantize_blocks(&mut values, cols, &scales, want[1], [br, bc]);
        Tensor::from_vec(values, (rows, cols), &Device::Cpu)
    }
}

/// Name suffixes of an MXFP4 weight's two tensors.
const MXFP4_BLOCKS: &str = "_blocks";
const MXFP4_SCALES: &str = "_scales";

/// Every u8 `X_blocks` tensor has its `X_scales` (and the other way round), wherever the
/// shards put them.
fn check_mxfp4_pairs(index: &HashMap<String, Entry>, files: &[PathBuf]) -> Result<()> {
    let is_u8 = |name: &str| {
        index
            .get(name)
            .is_some_and(|e| e.dtype == safetensors::Dtype::U8)
    };
    let mut names: Vec<&String> = index.keys().filter(|n| is_u8(n)).collect();
    names.sort();
    for name in names {
        let (other, what) = match name.strip_suffix(MXFP4_BLOCKS) {
            Some(base) => (format!("{base}{MXFP4_SCALES}"), "scales"),
            None => match name.strip_suffix(MXFP4_SCALES) {
                Some(base) => (format!("{base}{MXFP4_BLOCKS}"), "blocks"),
                None => continue,
            },
        };
        if !is_u8(&other) {
            let file = file_name(&files[index[name.as_str()].file]);
            return Err(ModelError::msg(format!(
                "{file}: MXFP4 tensor {name} has no {what} tensor {other} (u8) in the checkpoint"
            )));
        }
    }
    Ok(())
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

/// Parameters a stored tensor holds: its elements, two per MXFP4 block byte, none for MXFP4
/// or float8 scales.
fn tensor_params(name: &str, dtype: safetensors::Dtype, shape: &[usize]) -> u64 {
    let elems = shape.iter().product::<usize>() as u64;
    let u8_part = dtype == safetensors::Dtype::U8;
    if u8_part && name.ends_with(MXFP4_BLOCKS) {
        2 * elems
    } else if (u8_part && name.ends_with(MXFP4_SCALES)) || name.ends_with(FP8_SCALE_SUFFIX) {
        0
    } else {
        elems
    }
}

/// Multiplies row-major `values` (`cols` wide) by their block's scale from row-major `scales`
/// (`scale_cols` wide), blocks being `block` = `[rows, cols]`.
fn dequantize_blocks(
    values: &mut [f32],
    cols: usize,
    scales: &[f32],
    scale_cols: usize,
    block: [usize; 2],
) {
    for (r, row) in values.chunks_exact_mut(cols).enumerate() {
        let scale_row = &scales[r / block[0] * scale_cols..][..scale_cols];
        for (c, v) in row.iter_mut().enumerate() {
            *v *= scale_row[c / block[1]];
        }
    }
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

/// The tensors of a checkpoint by their HF names, whatever file holds them: safetensors
/// ([`MmapWeights`]) or GGUF ([`crate::model::gguf::GgufWeights`]).
pub trait TensorStore: Send + Sync {
    /// Whether the checkpoint holds tensor `name`.
    fn contains(&self, name: &str) -> bool;

    /// Refuses tensor `name` when the checkpoint holds it in another shape than `dims`, the
    /// shape the config implies.
    fn check_shape(&self, name: &str, dims: &[usize]) -> std::result::Result<(), String>;

    /// Tensor `name` copied onto `dev` (dequantised when stored quantised), in the stored
    /// dtype or f32; the pages it came from are given back to the OS.
    fn load(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor>;

    /// Weight `name` as a view of the mapped file that the CPU kernels read in place, when
    /// its storage allows that.
    fn weight_in_place(&self, name: &str) -> Option<Weight>;

    /// The bytes and shape of tensor `name` when it is stored as u8 (MXFP4 parts).
    fn u8_tensor(&self, _name: &str) -> Option<(ByteView, Vec<usize>)> {
        None
    }

    /// Number of parameters in the tensors whose names start with `prefix`.
    fn params_under(&self, prefix: &str) -> u64;
}

impl TensorStore for MmapWeights {
    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn check_shape(&self, name: &str, dims: &[usize]) -> std::result::Result<(), String> {
        MmapWeights::check_shape(self, name, dims)
    }

    fn load(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        MmapWeights::load(self, name, dev)
    }

    fn weight_in_place(&self, name: &str) -> Option<Weight> {
        self.mapped(name).map(|m| Weight::Mapped(Box::new(m)))
    }

    fn u8_tensor(&self, name: &str) -> Option<(ByteView, Vec<usize>)> {
        self.stored_u8(name).map(|(v, dims)| (v, dims.to_vec()))
    }

    fn params_under(&self, prefix: &str) -> u64 {
        MmapWeights::params_under(self, prefix)
    }
}

/// A [`TensorStore`] as the `VarBuilder` backend of a [`WeightSource`].
struct StoreBackend(Arc<dyn TensorStore>);

impl candle_nn::var_builder::SimpleBackend for StoreBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .check_shape(name, s.dims())
            .map_err(candle_core::Error::Msg)?;
        self.0.load(name, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.load(name, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

/// Where a family builder takes its tensors from: small tensors (norms, biases) come as Candle
/// tensors in the compute dtype; weight matrices ([`WeightSource::weight`]) as zero-copy views
/// of the mapped checkpoint when mapping is on, else as tensors too.
#[derive(Clone)]
pub struct WeightSource {
    vb: VarBuilder<'static>,
    /// The checkpoint the tensors come from (none for a plain `VarBuilder`).
    checkpoint: Option<Arc<dyn TensorStore>>,
    /// Weight matrices stay views of the mapped files.
    in_place: bool,
}

impl From<VarBuilder<'static>> for WeightSource {
    /// A source of tensors only (tests, and weights that are not in a mapped checkpoint).
    fn from(vb: VarBuilder<'static>) -> Self {
        Self {
            vb,
            checkpoint: None,
            in_place: false,
        }
    }
}

impl WeightSource {
    /// Tensors of `weights` in `dtype` on `device`; with `map`, weight matrices stay views of
    /// the mapped files (CPU only).
    pub fn new(weights: Arc<dyn TensorStore>, dtype: DType, device: &Device, map: bool) -> Self {
        let backend: Box<dyn candle_nn::var_builder::SimpleBackend> =
            Box::new(StoreBackend(weights.clone()));
        Self {
            vb: VarBuilder::from_backend(backend, dtype, device.clone()),
            checkpoint: Some(weights),
            in_place: map && device.is_cpu(),
        }
    }

    /// The source under `prefix` (`vb.pp("model")`).
    pub fn pp<S: ToString>(&self, prefix: S) -> Self {
        Self {
            vb: self.vb.pp(prefix),
            checkpoint: self.checkpoint.clone(),
            in_place: self.in_place,
        }
    }

    /// Number of checkpoint parameters under this source's prefix (a multimodal checkpoint's
    /// language model alone, say); `None` when the tensors do not come from a checkpoint.
    pub fn params_here(&self) -> Option<u64> {
        let prefix = self.vb.prefix();
        let prefix = if prefix.is_empty() {
            prefix
        } else {
            format!("{prefix}.")
        };
        Some(self.checkpoint.as_ref()?.params_under(&prefix))
    }

    /// Tensor `name` of `shape`, copied in the compute dtype.
    pub fn get<S: Into<Shape>>(&self, shape: S, name: &str) -> candle_core::Result<Tensor> {
        self.vb.get(shape, name)
    }

    pub fn contains_tensor(&self, name: &str) -> bool {
        self.vb.contains_tensor(name)
    }

    /// Weight matrix `name` of `shape`: a view of the mapped file when mapping is on and the
    /// storage allows it (float or quantised blocks), else a tensor in the compute dtype.
    pub fn weight<S: Into<Shape>>(&self, shape: S, name: &str) -> Result<Weight> {
        let shape: Shape = shape.into();
        if let (Some(w), true) = (&self.checkpoint, self.in_place) {
            let full = self.full_name(name);
            w.check_shape(&full, shape.dims())
                .map_err(ModelError::msg)?;
            if let Some(m) = w.weight_in_place(&full) {
                return Ok(m);
            }
        }
        Ok(Weight::Tensor(self.vb.get(shape, name)?))
    }
}

impl WeightSource {
    fn full_name(&self, name: &str) -> String {
        let prefix = self.vb.prefix();
        if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        }
    }

    /// The checkpoint holds `name` as an MXFP4 pair (`{name}_blocks`, `{name}_scales`).
    pub fn contains_mxfp4(&self, name: &str) -> bool {
        let blocks = format!("{}{MXFP4_BLOCKS}", self.full_name(name));
        self.checkpoint
            .as_ref()
            .is_some_and(|w| w.u8_tensor(&blocks).is_some())
    }

    /// The MXFP4 weight `name` (`{name}_blocks` `[.., cols/32, 16]` and `{name}_scales`
    /// `[.., cols/32]`, u8) of logical `shape` (`[.., cols]`): kept packed, read in place, when
    /// mapping is on; else dequantised into a tensor of the compute dtype.
    pub fn mxfp4(&self, shape: &[usize], name: &str) -> Result<Weight> {
        let full = self.full_name(name);
        let (blocks_name, scales_name) = (
            format!("{full}{MXFP4_BLOCKS}"),
            format!("{full}{MXFP4_SCALES}"),
        );
        let checkpoint = self.checkpoint.as_ref().ok_or_else(|| {
            ModelError::msg(format!(
                "{blocks_name}: MXFP4 weights are read from a safetensors checkpoint"
            ))
        })?;
        let (Some(&cols), true) = (shape.last(), shape.len() >= 2) else {
            return Err(ModelError::msg(format!(
                "{blocks_name}: an MXFP4 weight has at least two axes, not {shape:?}"
            )));
        };
        let lead = &shape[..shape.len() - 1];
        let blocks_shape = [lead, &[cols / BLOCK, BLOCK / 2]].concat();
        let scales_shape = [lead, &[cols / BLOCK]].concat();
        let get = |n: &str, want: &[usize]| -> Result<ByteView> {
            let (view, dims) = checkpoint.u8_tensor(n).ok_or_else(|| {
                ModelError::msg(format!(
                    "cannot find tensor {n} (u8, part of the MXFP4 weight {full}) in the checkpoint"
                ))
            })?;
            if dims.as_slice() != want {
                return Err(ModelError::msg(format!(
                    "tensor {n} has shape {dims:?}, the config implies {want:?}"
                )));
            }
            Ok(view)
        };
        let blocks = get(&blocks_name, &blocks_shape)?;
        let scales = get(&scales_name, &scales_shape)
            .map_err(|e| ModelError::msg(format!("{e} (the scales of {blocks_name})")))?;
        let packed = Mxfp4Tensor::new(blocks, scales, shape.to_vec(), &full)?;
        if self.in_place {
            return Ok(Weight::Mxfp4(Box::new(packed)));
        }
        let dense = packed
            .to_tensor(self.vb.device())?
            .to_dtype(self.vb.dtype())?;
        packed.release();
        Ok(Weight::Tensor(dense))
    }
}

/// The file name of `p` (the whole path when it has none), for errors.
pub(crate) fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file with `tensors` (name, dtype, shape, bytes).
    fn write(tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) -> tempfile::TempPath {
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| {
                let view = safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap();
                (n.to_string(), view)
            })
            .collect();
        let file = tempfile::NamedTempFile::new().unwrap();
        safetensors::serialize_to_file(views, None, file.path()).unwrap();
        file.into_temp_path()
    }

    #[test]
    fn mxfp4_blocks_without_scales_are_refused_naming_both() {
        use safetensors::Dtype::U8;
        let name = "model.layers.0.mlp.experts.down_proj";
        let path = write(&[(
            &format!("{name}_blocks"),
            U8,
            vec![1, 2, 1, 16],
            vec![0; 32],
        )]);
        let err = MmapWeights::open(&[path.to_path_buf()])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(&format!("{name}_blocks")), "{err}");
        assert!(err.contains(&format!("{name}_scales")), "{err}");
        // Other u8 tensors are still refused.
        let path = write(&[("model.norm.weight", U8, vec![4], vec![0; 4])]);
        let err = MmapWeights::open(&[path.to_path_buf()])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("model.norm.weight"), "{err}");
    }

    #[test]
    fn mxfp4_pair_is_read_packed_when_mapped_and_dequantised_otherwise() {
        use safetensors::Dtype::U8;
        let name = "w";
        // [1 expert, 2 rows, 32 cols]: all nibbles 2 (1.0); scales 128 and 126.
        let path = write(&[
            ("w_blocks", U8, vec![1, 2, 1, 16], vec![0x22; 32]),
            ("w_scales", U8, vec![1, 2, 1], vec![128, 126]),
        ]);
        let weights = Arc::new(MmapWeights::open(&[path.to_path_buf()]).unwrap());
        assert_eq!(weights.total_params(), 64);
        let want = [vec![2.0f32; 32], vec![0.5; 32]];
        for map in [true, false] {
            let vb = WeightSource::new(weights.clone(), DType::F32, &Device::Cpu, map);
            assert!(vb.contains_mxfp4(name));
            let w = vb.mxfp4(&[1, 2, 32], name).unwrap();
            assert_eq!(matches!(w, Weight::Mxfp4(_)), map);
            let got = w
                .to_tensor()
                .unwrap()
                .get(0)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_eq!(got, want);
            let err = vb.mxfp4(&[1, 2, 64], name).unwrap_err().to_string();
            assert!(err.contains("w_blocks"), "{err}");
        }
    }

    #[test]
    fn fp8_blocks_scale_their_own_elements_with_a_short_last_block() {
        // A 3 × 3 weight of ones in 2 × 2 blocks: scales [[1, 2], [3, 4]]; the last block row
        // and column are one element wide.
        let mut values = vec![1.0f32; 9];
        dequantize_blocks(&mut values, 3, &[1.0, 2.0, 3.0, 4.0], 2, [2, 2]);
        assert_eq!(values, [1.0, 1.0, 2.0, 1.0, 1.0, 2.0, 3.0, 3.0, 4.0]);
    }
}
