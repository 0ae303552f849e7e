//! Reading `torch.save` files without running any of their pickle code.
//!
//! A `torch.save` file is a zip archive holding `*/data.pkl` (a pickle of the saved object) and
//! `*/data/<key>` (each tensor storage's raw bytes). candle's pickle reader decodes the opcodes
//! into an [`Object`] tree — it only builds data, it never imports or calls anything — and this
//! module turns that tree into plain [`Value`]s, tensors included. Unlike candle's own tensor
//! loader it keeps integer tensors (`IntStorage`, `ShortStorage`, ...), lists and nested dicts,
//! which is what SGLang's expert-distribution dumps are made of.

use std::io::Read;
use std::path::Path;

use candle_core::pickle::{Object, Stack};

/// A decoded pickle value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Tensor(TensorRef),
    /// Anything else (a class, an object this reader does not rebuild), described.
    Other(String),
}

impl Value {
    /// The value under string key `key` of a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The keys of a dict that are strings.
    pub fn keys(&self) -> Vec<&str> {
        match self {
            Value::Dict(items) => items
                .iter()
                .filter_map(|(k, _)| match k {
                    Value::Str(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Integer and float element types of tensor storages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageType {
    U8,
    I8,
    I16,
    I32,
    I64,
    F32,
    F64,
}

impl StorageType {
    fn from_class(name: &str) -> Option<Self> {
        Some(match name {
            "ByteStorage" => StorageType::U8,
            "CharStorage" => StorageType::I8,
            "ShortStorage" => StorageType::I16,
            "IntStorage" => StorageType::I32,
            "LongStorage" => StorageType::I64,
            "FloatStorage" => StorageType::F32,
            "DoubleStorage" => StorageType::F64,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            StorageType::U8 | StorageType::I8 => 1,
            StorageType::I16 => 2,
            StorageType::I32 | StorageType::F32 => 4,
            StorageType::I64 | StorageType::F64 => 8,
        }
    }
}

/// A tensor in the file: where its storage is and how it is viewed.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: String,
    pub dtype: StorageType,
    /// Offset into the storage, in elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

impl TensorRef {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An opened `torch.save` archive.
pub struct TorchFile {
    archive: zip::ZipArchive<std::io::BufReader<std::fs::File>>,
    /// The archive's top folder (`archive/`, or the file's stem for older saves).
    prefix: String,
    pub root: Value,
}

impl TorchFile {
    /// Opens `path` and decodes its pickle. Errors are plain messages (the caller names the file).
    pub fn open(path: &Path) -> Result<Self, String> {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
            .map_err(|e| format!("not a torch.save file (a zip archive with data.pkl): {e}"))?;
        let pkl = archive
            .file_names()
            .filter_map(|n| n.ok())
            .find(|n| n.ends_with("data.pkl"))
            .map(|n| n.into_owned())
            .ok_or("a zip archive without data.pkl: not a torch.save file")?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        let object = {
            let entry = archive.by_name(&pkl).map_err(|e| e.to_string())?;
            let mut reader = std::io::BufReader::new(entry);
            let mut stack = Stack::empty();
            stack
                .read_loop(&mut reader)
                .map_err(|e| format!("{pkl}: cannot decode the pickle: {e}"))?;
            stack
                .finalize()
                .map_err(|e| format!("{pkl}: cannot decode the pickle: {e}"))?
        };
        Ok(Self {
            archive,
            prefix,
            root: convert(object),
        })
    }

    /// The tensor's elements as `i64` (integer or float storages; floats are truncated).
    pub fn read_i64(&mut self, t: &TensorRef) -> Result<Vec<i64>, String> {
        let name = format!("{}data/{}", self.prefix, t.storage);
        let mut entry = self
            .archive
            .by_name(&name)
            .map_err(|e| format!("{name}: {e}"))?;
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{name}: {e}"))?;
        let size = t.dtype.size();
        let elements = bytes.len() / size;
        let value = |i: usize| -> i64 {
            let b = &bytes[i * size..(i + 1) * size];
            match t.dtype {
                StorageType::U8 => i64::from(b[0]),
                StorageType::I8 => i64::from(b[0] as i8),
                StorageType::I16 => i64::from(i16::from_le_bytes([b[0], b[1]])),
                StorageType::I32 => i64::from(i32::from_le_bytes(b.try_into().expect("4 bytes"))),
                StorageType::I64 => i64::from_le_bytes(b.try_into().expect("8 bytes")),
                StorageType::F32 => f32::from_le_bytes(b.try_into().expect("4 bytes")) as i64,
                StorageType::F64 => f64::from_le_bytes(b.try_into().expect("8 bytes")) as i64,
            }
        };
        // Walk the view in row-major order through its strides.
        let numel = t.numel();
        let mut out = Vec::with_capacity(numel);
        let mut index = vec![0usize; t.shape.len()];
        for _ in 0..numel {
            let at = t.offset
                + index
                    .iter()
                    .zip(&t.stride)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            if at >= elements {
                return Err(format!(
                    "{name}: the tensor {:?} reaches element {at}, the storage has {elements}",
                    t.shape
                ));
            }
            out.push(value(at));
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < t.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        Ok(out)
    }
}

/// Turns candle's pickle objects into [`Value`]s, rebuilding tensors from
/// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`.
fn convert(object: Object) -> Value {
    match object {
        Object::None => Value::None,
        Object::Bool(b) => Value::Bool(b),
        Object::Int(i) => Value::Int(i64::from(i)),
        Object::Long(i) => Value::Int(i),
        Object::Float(f) => Value::Float(f),
        Object::Unicode(s) => Value::Str(s),
        Object::List(items) | Object::Tuple(items) => {
            Value::List(items.into_iter().map(convert).collect())
        }
        Object::Dict(items) => Value::Dict(
            items
                .into_iter()
                .map(|(k, v)| (convert(k), convert(v)))
                .collect(),
        ),
        Object::Reduce { callable, args } => match *callable {
            Object::Class {
                module_name,
                class_name,
            } if module_name == "torch._utils" && class_name == "_rebuild_tensor_v2" => {
                rebuild_tensor(*args).unwrap_or_else(Value::Other)
            }
            other => Value::Other(format!("{other:?}")),
        },
        // `OrderedDict()` followed by SETITEMS builds through BUILD; keep its items.
        Object::Build { callable, args } => match (convert(*callable), convert(*args)) {
            (Value::Dict(mut a), Value::Dict(b)) => {
                a.extend(b);
                Value::Dict(a)
            }
            (base, _) => base,
        },
        other => Value::Other(format!("{other:?}")),
    }
}

fn rebuild_tensor(args: Object) -> Result<Value, String> {
    let Object::Tuple(args) = args else {
        return Err("tensor arguments are not a tuple".into());
    };
    let usizes = |o: &Object| -> Option<Vec<usize>> {
        match o {
            Object::Tuple(v) | Object::List(v) => v
                .iter()
                .map(|x| match x {
                    Object::Int(i) => usize::try_from(*i).ok(),
                    Object::Long(i) => usize::try_from(*i).ok(),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    };
    let int = |o: &Object| match o {
        Object::Int(i) => usize::try_from(*i).ok(),
        Object::Long(i) => usize::try_from(*i).ok(),
        _ => None,
    };
    let [storage, offset, size, stride, ..] = &args[..] else {
        return Err("too few tensor arguments".into());
    };
    let Object::PersistentLoad(id) = storage else {
        return Err("tensor storage is not a persistent id".into());
    };
    let Object::Tuple(id) = id.as_ref() else {
        return Err("tensor storage id is not a tuple".into());
    };
    let (Some(Object::Class { class_name, .. }), Some(Object::Unicode(key))) =
        (id.get(1), id.get(2))
    else {
        return Err("tensor storage id has no class and key".into());
    };
    let dtype = StorageType::from_class(class_name)
        .ok_or_else(|| format!("tensor storage type {class_name} is not read"))?;
    Ok(Value::Tensor(TensorRef {
        storage: key.clone(),
        dtype,
        offset: int(offset).ok_or("tensor offset is not an integer")?,
        shape: usizes(size).ok_or("tensor size is not a tuple of integers")?,
        stride: usizes(stride).ok_or("tensor stride is not a tuple of integers")?,
    }))
}
