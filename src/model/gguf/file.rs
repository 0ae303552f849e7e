//! The GGUF container (llama.cpp's file format, versions 2 and 3): the header, the metadata
//! key/value pairs and the tensor directory of one file, read from a memory map without copying
//! tensor data; and a model split over `-00001-of-0000N.gguf` parts ([`GgufModel`]).
//!
//! Every offset and length is checked against the file's size before it is used, so a truncated
//! or corrupt file is an error naming the file and what is wrong, never a panic or an
//! out-of-bounds read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use super::quant::GgmlType;
use crate::model::error::{ModelError, Result};

/// `GGUF` read as a little-endian u32.
const MAGIC: u32 = 0x4655_4747;
/// Where tensor data is aligned when `general.alignment` does not say otherwise.
const DEFAULT_ALIGNMENT: u64 = 32;
/// Bounds on header counts, far above any real model, so that a corrupt count cannot make
/// the reader allocate without limit.
const MAX_ENTRIES: u64 = 1 << 24;
const MAX_DIMS: u32 = 4;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer (any integer type that holds a non-negative value).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            Value::Bool(v) => Some(v.into()),
            _ => None,
        }
    }

    /// The value as a signed integer.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float (floats and integers).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) => Some(v),
            _ => None,
        }
    }

    /// A short rendering for people (long arrays abbreviated).
    pub fn describe(&self) -> String {
        match self {
            Value::String(s) => format!("{s:?}"),
            Value::Array(v) if v.len() > 8 => format!(
                "[{}, … {} items]",
                v[..4]
                    .iter()
                    .map(Value::describe)
                    .collect::<Vec<_>>()
                    .join(", "),
                v.len()
            ),
            Value::Array(v) => format!(
                "[{}]",
                v.iter().map(Value::describe).collect::<Vec<_>>().join(", ")
            ),
            Value::Bool(b) => b.to_string(),
            Value::F32(f) => f.to_string(),
            Value::F64(f) => f.to_string(),
            other => other.as_i64().map_or_else(String::new, |v| v.to_string()),
        }
    }
}

/// One tensor of the directory: its type, its shape in row-major order (the reverse of GGUF's
/// `ne`, so a `[ne0 = in, ne1 = out]` matrix is `[out, in]`, as in safetensors) and where its
/// bytes are in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub ggml_type: GgmlType,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

/// One GGUF file, mapped, with its metadata and tensor directory.
pub struct GgufFile {
    pub path: PathBuf,
    pub map: Arc<Mmap>,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
}

/// A cursor over the mapped header that names the file and the field in every error.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, what: &str) -> ModelError {
        ModelError::msg(format!(
            "{}: truncated or corrupt GGUF file: {what} at byte {} runs past the end of the file \
             ({} bytes); it may be incomplete or still downloading",
            self.path.display(),
            self.pos,
            self.bytes.len()
        ))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.err(what));
        };
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let len = usize::try_from(len).map_err(|_| self.err(what))?;
        let bytes = self.take(len, what)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, value_type: u32, key: &str, depth: usize) -> Result<Value> {
        let what = || format!("the value of {key}");
        let v = match value_type {
            0 => Value::U8(self.array::<1>(&what())?[0]),
            1 => Value::I8(self.array::<1>(&what())?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(&what())?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what())?)),
            4 => Value::U32(self.u32(&what())?),
            5 => Value::I32(i32::from_le_bytes(self.array(&what())?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what())?)),
            7 => Value::Bool(self.array::<1>(&what())?[0] != 0),
            8 => Value::String(self.string(&what())?),
            9 if depth == 0 => {
                let item_type = self.u32(&what())?;
                let len = self.u64(&what())?;
                // Every item takes at least a byte: a longer array cannot fit in the file.
                if len > (self.bytes.len() - self.pos) as u64 {
                    return Err(self.err(&format!("the {len}-item array {key}")));
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(item_type, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(&what())?),
            11 => Value::I64(i64::from_le_bytes(self.array(&what())?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what())?)),
            other => {
                return Err(ModelError::msg(format!(
                    "{}: corrupt GGUF metadata: {key} has value type {other}, which GGUF does not \
                     define",
                    self.path.display()
                )));
            }
        };
        Ok(v)
    }
}

impl GgufFile {
    /// Maps and parses `path`, checking that every tensor's bytes lie inside the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)
            .map_err(|e| ModelError::msg(format!("{}: cannot open: {e}", path.display())))?;
        // SAFETY: read-only map; the file must not be modified while the model is open (the
        // same contract as every memory-mapped checkpoint reader).
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| ModelError::msg(format!("{}: cannot map: {e}", path.display())))?;
        let mut r = Reader {
            bytes: &map,
            pos: 0,
            path,
        };
        let magic = r.u32("the GGUF magic")?;
        if magic != MAGIC {
            return Err(ModelError::msg(format!(
                "{}: not a GGUF file (it does not start with the bytes \"GGUF\")",
                path.display()
            )));
        }
        let version = r.u32("the GGUF version")?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::msg(format!(
                "{}: GGUF version {version}; MoEScope reads versions 2 and 3 (convert older files \
                 with a current llama.cpp)",
                path.display()
            )));
        }
        let tensor_count = r.u64("the tensor count")?;
        let kv_count = r.u64("the metadata count")?;
        if tensor_count > MAX_ENTRIES || kv_count > MAX_ENTRIES {
            return Err(ModelError::msg(format!(
                "{}: corrupt GGUF header: {tensor_count} tensors and {kv_count} metadata entries",
                path.display()
            )));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = r.string("a metadata key")?;
            let value_type = r.u32(&format!("the value type of {key}"))?;
            let value = r.value(value_type, &key, 0)?;
            metadata.insert(key, value);
        }
        struct Raw {
            name: String,
            ne: Vec<u64>,
            type_id: u32,
            offset: u64,
        }
        let mut raws = Vec::with_capacity(tensor_count as usize);
        for _ in 0..tensor_count {
            let name = r.string("a tensor name")?;
            let n_dims = r.u32(&format!("the rank of tensor {name}"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(ModelError::msg(format!(
                    "{}: corrupt GGUF tensor directory: tensor {name} has {n_dims} dimensions",
                    path.display()
                )));
            }
            let mut ne = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                ne.push(r.u64(&format!("the shape of tensor {name}"))?);
            }
            let type_id = r.u32(&format!("the type of tensor {name}"))?;
            let offset = r.u64(&format!("the offset of tensor {name}"))?;
            raws.push(Raw {
                name,
                ne,
                type_id,
                offset,
            });
        }
        let alignment = match metadata.get("general.alignment").and_then(Value::as_u64) {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            Some(a) => {
                return Err(ModelError::msg(format!(
                    "{}: general.alignment {a} is not a power of two",
                    path.display()
                )));
            }
            None => DEFAULT_ALIGNMENT,
        };
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let file_len = map.len() as u64;
        let mut tensors = Vec::with_capacity(raws.len());
        for raw in raws {
            let ggml_type = GgmlType::from_id(raw.type_id).map_err(|e| {
                ModelError::msg(format!(
                    "{}: tensor {} is stored as {e}",
                    path.display(),
                    raw.name
                ))
            })?;
            let elems = raw
                .ne
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n < 1 << 48);
            let row = raw.ne[0];
            let bytes = elems.and_then(|n| ggml_type.bytes_for(n, row));
            let Some(bytes) = bytes else {
                return Err(ModelError::msg(format!(
                    "{}: tensor {} of shape {:?} cannot be stored as {} (rows of {} elements are \
                     not whole blocks of {})",
                    path.display(),
                    raw.name,
                    raw.ne,
                    ggml_type.name(),
                    row,
                    ggml_type.block_elems()
                )));
            };
            let start = data_start + raw.offset;
            let end = start + bytes;
            if end > file_len {
                return Err(ModelError::msg(format!(
                    "{}: truncated GGUF file: tensor {} needs bytes {start}..{end} but the file \
                     has {file_len}; it may be incomplete or still downloading",
                    path.display(),
                    raw.name
                )));
            }
            let shape = raw.ne.iter().rev().map(|&d| d as usize).collect();
            tensors.push(TensorInfo {
                name: raw.name,
                ggml_type,
                shape,
                start: start as usize,
                end: end as usize,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            map: Arc::new(map),
            version,
            metadata,
            tensors,
        })
    }

    /// `(this part's number from 1, the number of parts)` of a split model; `(1, 1)` alone.
    pub fn split(&self) -> (u64, u64) {
        let no = self.metadata.get("split.no").and_then(Value::as_u64);
        let count = self.metadata.get("split.count").and_then(Value::as_u64);
        match (no, count) {
            (Some(no), Some(count)) if count > 1 => (no + 1, count),
            _ => (1, 1),
        }
    }
}

/// A model's GGUF files: one, or every part of a split model in order. The metadata is the
/// first part's.
pub struct GgufModel {
    pub parts: Vec<GgufFile>,
}

impl GgufModel {
    /// Opens `path` and, when it is one part of a split model, every other part beside it.
    pub fn open(path: &Path) -> Result<Self> {
        let first = GgufFile::open(path)?;
        let (no, count) = first.split();
        if count == 1 {
            return Ok(Self { parts: vec![first] });
        }
        let paths = split_paths(path, no, count)?;
        let mut parts = Vec::with_capacity(paths.len());
        let mut first = Some(first);
        for (i, p) in paths.iter().enumerate() {
            let part = if i + 1 == no as usize {
                first.take().expect("opened once")
            } else {
                if !p.is_file() {
                    return Err(ModelError::msg(format!(
                        "{}: part {} of {count} of this split GGUF model is missing: expected {} \
                         beside it",
                        path.display(),
                        i + 1,
                        p.display()
                    )));
                }
                GgufFile::open(p)?
            };
            let (part_no, part_count) = part.split();
            if (part_no, part_count) != (i as u64 + 1, count) {
                return Err(ModelError::msg(format!(
                    "{}: says it is part {part_no} of {part_count}, expected part {} of {count}",
                    p.display(),
                    i + 1
                )));
            }
            parts.push(part);
        }
        Ok(Self { parts })
    }

    /// The model's metadata (the first part's).
    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.parts[0].metadata
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        self.parts.iter().map(|p| p.path.clone()).collect()
    }

    /// Every tensor with the index of the part that holds it.
    pub fn tensors(&self) -> impl Iterator<Item = (usize, &TensorInfo)> {
        self.parts
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.tensors.iter().map(move |t| (i, t)))
    }

    /// Bytes of tensor data in all parts.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors().map(|(_, t)| (t.end - t.start) as u64).sum()
    }
}

/// The paths of all `count` parts of the split model `path` is part `no` of, named as
/// llama.cpp names them (`{prefix}-00001-of-00003.gguf`).
fn split_paths(path: &Path, no: u64, count: u64) -> Result<Vec<PathBuf>> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let suffix = format!("-{no:05}-of-{count:05}.gguf");
    let Some(prefix) = name.strip_suffix(&suffix) else {
        return Err(ModelError::msg(format!(
            "{}: part {no} of a split GGUF model, but not named like one (…{suffix}), so the \
             other parts cannot be found",
            path.display()
        )));
    };
    Ok((1..=count)
        .map(|i| path.with_file_name(format!("{prefix}-{i:05}-of-{count:05}.gguf")))
        .collect())
}

/// A minimal GGUF writer for tests: `metadata` and `tensors` (name, type id, `ne`, bytes).
#[cfg(test)]
pub(crate) fn write_for_tests(
    metadata: &[(&str, Value)],
    tensors: &[(&str, u32, Vec<u64>, Vec<u8>)],
) -> Vec<u8> {
    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }
    fn put_value(out: &mut Vec<u8>, v: &Value, with_type: bool) {
        let (id, body): (u32, Vec<u8>) = match v {
            Value::U8(x) => (0, vec![*x]),
            Value::I8(x) => (1, vec![*x as u8]),
            Value::U16(x) => (2, x.to_le_bytes().to_vec()),
            Value::I16(x) => (3, x.to_le_bytes().to_vec()),
            Value::U32(x) => (4, x.to_le_bytes().to_vec()),
            Value::I32(x) => (5, x.to_le_bytes().to_vec()),
            Value::F32(x) => (6, x.to_le_bytes().to_vec()),
            Value::Bool(x) => (7, vec![u8::from(*x)]),
            Value::String(s) => {
                let mut b = Vec::new();
                put_str(&mut b, s);
                (8, b)
            }
            Value::Array(items) => {
                let mut b = Vec::new();
                let item_id = items.first().map_or(4, |i| {
                    let mut t = Vec::new();
                    put_value(&mut t, i, true);
                    u32::from_le_bytes(t[..4].try_into().unwrap())
                });
                b.extend(item_id.to_le_bytes());
                b.extend((items.len() as u64).to_le_bytes());
                for i in items {
                    put_value(&mut b, i, false);
                }
                (9, b)
            }
            Value::U64(x) => (10, x.to_le_bytes().to_vec()),
            Value::I64(x) => (11, x.to_le_bytes().to_vec()),
            Value::F64(x) => (12, x.to_le_bytes().to_vec()),
        };
        if with_type {
            out.extend(id.to_le_bytes());
        }
        out.extend(body);
    }
    let mut out = Vec::new();
    out.extend(MAGIC.to_le_bytes());
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut out, k);
        put_value(&mut out, v, true);
    }
    let mut offset = 0u64;
    let mut offsets = Vec::new();
    for (name, type_id, ne, bytes) in tensors {
        put_str(&mut out, name);
        out.extend((ne.len() as u32).to_le_bytes());
        for d in ne {
            out.extend(d.to_le_bytes());
        }
        out.extend(type_id.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offsets.push(offset);
        offset = (offset + bytes.len() as u64).div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
    }
    let data_start = (out.len() as u64).div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
    out.resize(data_start as usize, 0);
    for ((_, _, _, bytes), off) in tensors.iter().zip(offsets) {
        out.resize((data_start + off) as usize, 0);
        out.extend(bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn one_tensor_file(extra: &[(&str, Value)]) -> Vec<u8> {
        let mut meta = vec![("general.architecture", Value::String("qwen3moe".into()))];
        meta.extend(extra.iter().cloned());
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        write_for_tests(&meta, &[("w", 0, vec![3, 2], data)])
    }

    #[test]
    fn reads_metadata_and_a_tensor_in_row_major_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "m.gguf", &one_tensor_file(&[]));
        let f = GgufFile::open(&p).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(
            f.metadata["general.architecture"].as_str(),
            Some("qwen3moe")
        );
        let t = &f.tensors[0];
        assert_eq!(
            (t.name.as_str(), t.shape.as_slice()),
            ("w", &[2usize, 3][..])
        );
        assert_eq!(t.end - t.start, 24);
        assert_eq!(&f.map[t.start..t.start + 4], &1.0f32.to_le_bytes());
    }

    #[test]
    fn truncated_and_foreign_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = one_tensor_file(&[]);
        // Cut inside the tensor data, and inside the header.
        for cut in [bytes.len() - 4, 30] {
            let p = write(dir.path(), "cut.gguf", &bytes[..cut]);
            let err = GgufFile::open(&p).err().unwrap().to_string();
            assert!(
                err.contains("cut.gguf") && err.contains("truncated"),
                "{err}"
            );
        }
        let p = write(dir.path(), "x.gguf", b"PK\x03\x04 not a gguf at all");
        let err = GgufFile::open(&p).err().unwrap().to_string();
        assert!(err.contains("not a GGUF file"), "{err}");
    }

    #[test]
    fn unknown_quant_types_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = write_for_tests(
            &[],
            &[("blk.0.attn_q.weight", 23, vec![256, 1], vec![0; 136])],
        );
        let p = write(dir.path(), "iq.gguf", &bytes);
        let err = GgufFile::open(&p).err().unwrap().to_string();
        assert!(
            err.contains("iq.gguf")
                && err.contains("blk.0.attn_q.weight")
                && err.contains("IQ4_XS"),
            "{err}"
        );
        let bytes = write_for_tests(&[], &[("w", 77, vec![32, 1], vec![0; 64])]);
        let p = write(dir.path(), "t77.gguf", &bytes);
        let err = GgufFile::open(&p).err().unwrap().to_string();
        assert!(err.contains("type 77"), "{err}");
    }

    #[test]
    fn split_parts_are_found_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let part = |no: u16| {
            one_tensor_file(&[("split.no", Value::U16(no)), ("split.count", Value::U16(2))])
        };
        let first = write(dir.path(), "m-00001-of-00002.gguf", &part(0));
        let err = GgufModel::open(&first).err().unwrap().to_string();
        assert!(
            err.contains("part 2 of 2") && err.contains("m-00002-of-00002.gguf"),
            "{err}"
        );
        write(dir.path(), "m-00002-of-00002.gguf", &part(1));
        let model = GgufModel::open(&first).unwrap();
        assert_eq!(model.parts.len(), 2);
        // Opening the second part finds the first.
        let model = GgufModel::open(&dir.path().join("m-00002-of-00002.gguf")).unwrap();
        assert_eq!(model.parts[0].path, first);
    }
}
