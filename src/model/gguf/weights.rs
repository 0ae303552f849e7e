//! [`GgufWeights`]: a GGUF model's tensors under the HF names the family builders ask for.
//!
//! Each HF name points at a GGUF tensor, or at one expert's matrix of a 3-D `*_exps` tensor (a
//! block-aligned byte range of it), and says how the stored values become HF's: as they are
//! (read in place by the kernels, quantised or not), rows put back in HF's rotary order where
//! llama.cpp's converter permuted them, a constant the converter added taken off again, or
//! rows re-assembled from tensors the converter split.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use super::file::{GgufModel, TensorInfo};
use super::quant::{GgmlTensor, GgmlType};
use crate::model::info::TensorStorage;
use crate::model::memory::release_pages;
use crate::model::mxfp4::ByteView;
use crate::model::weight::{MappedTensor, Weight};
use crate::model::weights::{TensorStore, file_name};

/// A GGUF tensor: `(part, index in that part's directory)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TensorRef {
    pub part: usize,
    pub index: usize,
}

/// How the stored values become the HF tensor's.
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    /// As stored.
    None,
    /// llama.cpp's converter reordered each head's rows of a llama-style q/k projection from
    /// HF's rotate-half order to interleaved pairs (`permute` in `convert_hf_to_gguf.py`):
    /// row `h·d + 2i + j` holds HF row `h·d + j·d/2 + i`. Undone for `heads` heads.
    Unpermute { heads: usize },
    /// The converter stored `w + shift` (Gemma-style `(1 + w)` norms written as `1 + w`).
    Subtract(f32),
    /// DeepSeek-V2/V3's `kv_b_proj`, which the converter split per head into `attn_k_b`
    /// (`[heads, kv_lora_rank, qk_nope]`, i.e. transposed) and `attn_v_b`
    /// (`[heads, v_head, kv_lora_rank]`): re-interleaved as `[heads · (qk_nope + v_head),
    /// kv_lora_rank]`, each head's k rows before its v rows. `self` is `attn_k_b`.
    KvB { v_b: TensorRef, heads: usize },
}

/// Where an HF tensor comes from.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub tensor: TensorRef,
    /// One expert's matrix of a 3-D tensor.
    pub expert: Option<usize>,
    /// The HF shape (the stored one, or one expert's, or a reshape of the same elements).
    pub shape: Vec<usize>,
    pub transform: Transform,
}

/// A GGUF model's tensors by HF name.
pub struct GgufWeights {
    model: GgufModel,
    names: HashMap<String, Mapping>,
    total_params: u64,
}

impl GgufWeights {
    pub fn new(model: GgufModel, names: HashMap<String, Mapping>) -> Self {
        let total_params = model
            .tensors()
            .map(|(_, t)| t.shape.iter().product::<usize>() as u64)
            .sum();
        Self {
            model,
            names,
            total_params,
        }
    }

    pub fn model(&self) -> &GgufModel {
        &self.model
    }

    pub fn total_params(&self) -> u64 {
        self.total_params
    }

    /// Number of parameters in the tensors whose HF names start with none of `prefixes`.
    pub fn params_excluding(&self, prefixes: &[&str]) -> u64 {
        if prefixes.is_empty() {
            return self.total_params;
        }
        self.names
            .iter()
            .filter(|(n, _)| !prefixes.iter().any(|p| n.starts_with(p)))
            .map(|(_, m)| m.shape.iter().product::<usize>() as u64)
            .sum()
    }

    /// Bytes stored per ggml type, most first.
    pub fn bytes_by_type(&self) -> Vec<(GgmlType, u64)> {
        let mut bytes: HashMap<GgmlType, u64> = HashMap::new();
        for (_, t) in self.model.tensors() {
            *bytes.entry(t.ggml_type).or_default() += (t.end - t.start) as u64;
        }
        let mut v: Vec<_> = bytes.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    /// `Q4_K 84%, Q6_K 12%, F32 4%` (types under 1% of the bytes left out).
    pub fn type_summary(&self) -> String {
        let by_type = self.bytes_by_type();
        let total: u64 = by_type.iter().map(|(_, b)| b).sum::<u64>().max(1);
        let parts: Vec<String> = by_type
            .iter()
            .filter(|(_, b)| b * 100 >= total)
            .map(|(t, b)| format!("{} {}%", t.name(), (b * 100 + total / 2) / total))
            .collect();
        parts.join(", ")
    }

    /// How each class of tensors is stored (`routed experts`: `Q4_K ×40, Q6_K ×8`), in the
    /// order a model is read.
    pub fn storage_classes(&self) -> Vec<TensorStorage> {
        let mut classes: Vec<(&'static str, HashMap<GgmlType, usize>)> = Vec::new();
        for (_, t) in self.model.tensors() {
            let class = tensor_class(&t.name);
            let i = match classes.iter().position(|(c, _)| *c == class) {
                Some(i) => i,
                None => {
                    classes.push((class, HashMap::new()));
                    classes.len() - 1
                }
            };
            *classes[i].1.entry(t.ggml_type).or_default() += 1;
        }
        classes.sort_by_key(|(c, _)| CLASSES.iter().position(|k| k == c));
        classes
            .into_iter()
            .map(|(class, counts)| {
                let mut counts: Vec<_> = counts.into_iter().collect();
                counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                let format = if counts.len() == 1 {
                    counts[0].0.name().to_string()
                } else {
                    counts
                        .iter()
                        .map(|(t, n)| format!("{} ×{n}", t.name()))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                TensorStorage {
                    class: class.to_string(),
                    format,
                }
            })
            .collect()
    }

    fn info(&self, t: TensorRef) -> &TensorInfo {
        &self.model.parts[t.part].tensors[t.index]
    }

    fn file_name(&self, t: TensorRef) -> String {
        file_name(&self.model.parts[t.part].path)
    }

    /// The byte range of `m`'s stored values (the whole tensor, or one expert's matrix).
    fn byte_range(&self, m: &Mapping) -> (usize, usize) {
        let info = self.info(m.tensor);
        match m.expert {
            None => (info.start, info.end),
            Some(e) => {
                let per_expert = (info.end - info.start) / info.shape[0];
                (
                    info.start + e * per_expert,
                    info.start + (e + 1) * per_expert,
                )
            }
        }
    }

    /// The stored values of `m` as f32, transform not applied.
    fn decode(&self, m: &Mapping) -> Vec<f32> {
        let info = self.info(m.tensor);
        let (start, end) = self.byte_range(m);
        let map = &self.model.parts[m.tensor.part].map;
        let t = info.ggml_type;
        let n = (end - start) / t.block_bytes() * t.block_elems();
        let mut out = vec![0f32; n];
        t.decode(&map[start..end], &mut out);
        release_pages(map, start, end);
        out
    }

    /// `m`'s HF values as f32.
    fn values(&self, m: &Mapping) -> candle_core::Result<Vec<f32>> {
        let stored = self.decode(m);
        Ok(match &m.transform {
            Transform::None => stored,
            Transform::Subtract(c) => stored.into_iter().map(|v| v - c).collect(),
            Transform::Unpermute { heads } => {
                let rows = m.shape[0];
                let cols = stored.len() / rows.max(1);
                unpermute_rows(&stored, *heads, rows, cols)
            }
            Transform::KvB { v_b, heads } => {
                let v = self.decode(&Mapping {
                    tensor: *v_b,
                    expert: None,
                    shape: self.info(*v_b).shape.clone(),
                    transform: Transform::None,
                });
                let k_shape = &self.info(m.tensor).shape;
                let v_shape = &self.info(*v_b).shape;
                let (&[_, rank, nope], &[_, v_head, _]) = (k_shape.as_slice(), v_shape.as_slice())
                else {
                    return Err(candle_core::Error::Msg(format!(
                        "attn_k_b {k_shape:?} / attn_v_b {v_shape:?} are not per-head matrices"
                    )));
                };
                assemble_kv_b(&stored, &v, *heads, rank, nope, v_head)
            }
        })
    }
}

/// Tensor classes, in the order a model is read.
const CLASSES: [&str; 9] = [
    "embeddings",
    "attention",
    "norms",
    "router",
    "routed experts",
    "shared experts",
    "dense feed-forward",
    "output head",
    "other",
];

/// The class of llama.cpp tensor `name`.
fn tensor_class(name: &str) -> &'static str {
    let base = name
        .strip_prefix("blk.")
        .and_then(|r| r.split_once('.'))
        .map_or(name, |(_, r)| r);
    let base = base.rsplit_once('.').map_or(base, |(b, _)| b);
    match base {
        "token_embd" => "embeddings",
        "output" => "output head",
        b if b.contains("norm") => "norms",
        b if b.ends_with("_shexp") => "shared experts",
        "ffn_gate_inp" | "exp_probs_b" => "router",
        b if b.ends_with("_exps") => "routed experts",
        b if b.starts_with("attn_") => "attention",
        "ffn_gate" | "ffn_up" | "ffn_down" => "dense feed-forward",
        b if b.starts_with("ffn_") && b.contains('.') => "routed experts",
        _ => "other",
    }
}

/// Puts each head's rows of a llama.cpp-permuted q/k weight (`rows × cols`) back in HF order.
pub(crate) fn unpermute_rows(stored: &[f32], heads: usize, rows: usize, cols: usize) -> Vec<f32> {
    let d = rows / heads;
    let mut out = vec![0f32; stored.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                let src = h * d + 2 * i + j;
                let dst = h * d + j * (d / 2) + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&stored[src * cols..][..cols]);
            }
        }
    }
    out
}

/// HF's `kv_b_proj` (`[heads · (nope + v_head), rank]`) from llama.cpp's `attn_k_b`
/// (`[heads, rank, nope]`) and `attn_v_b` (`[heads, v_head, rank]`).
fn assemble_kv_b(
    k_b: &[f32],
    v_b: &[f32],
    heads: usize,
    rank: usize,
    nope: usize,
    v_head: usize,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(heads * (nope + v_head) * rank);
    for h in 0..heads {
        let k = &k_b[h * rank * nope..][..rank * nope];
        for n in 0..nope {
            out.extend((0..rank).map(|r| k[r * nope + n]));
        }
        out.extend_from_slice(&v_b[h * v_head * rank..][..v_head * rank]);
    }
    out
}

impl TensorStore for GgufWeights {
    fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    fn check_shape(&self, name: &str, dims: &[usize]) -> Result<(), String> {
        match self.names.get(name) {
            Some(m) if m.shape.as_slice() != dims => {
                let info = self.info(m.tensor);
                let which = match m.expert {
                    Some(e) => format!("expert {e} of tensor {}", info.name),
                    None => format!("tensor {}", info.name),
                };
                Err(format!(
                    "{which} in {} ({name}) has shape {:?}, the metadata implies {dims:?}",
                    self.file_name(m.tensor),
                    m.shape
                ))
            }
            _ => Ok(()),
        }
    }

    fn load(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        let m = self.names.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "cannot find tensor {name} (llama.cpp name unknown) in the GGUF file"
            ))
        })?;
        let values = self.values(m)?;
        Tensor::from_vec(values, m.shape.as_slice(), &Device::Cpu)?.to_device(dev)
    }

    fn weight_in_place(&self, name: &str) -> Option<Weight> {
        let m = self.names.get(name)?;
        if m.transform != Transform::None {
            return None;
        }
        let info = self.info(m.tensor);
        let (start, end) = self.byte_range(m);
        let map = self.model.parts[m.tensor.part].map.clone();
        let dtype = match info.ggml_type {
            GgmlType::F32 => Some(DType::F32),
            GgmlType::F16 => Some(DType::F16),
            GgmlType::BF16 => Some(DType::BF16),
            _ => None,
        };
        match dtype {
            Some(dtype) => MappedTensor::new(map, start, end, dtype, m.shape.clone())
                .map(|t| Weight::Mapped(Box::new(t))),
            None => GgmlTensor::new(
                ByteView::Mapped { map, start, end },
                info.ggml_type,
                m.shape.clone(),
                &info.name,
            )
            .ok()
            .map(|t| Weight::Ggml(Box::new(t))),
        }
    }

    fn params_under(&self, prefix: &str) -> u64 {
        self.names
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, m)| m.shape.iter().product::<usize>() as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_permutation_is_undone() {
        // One head of 4 rows (d = 4), one column. HF rows [a, b, c, d] = rotate-half halves
        // (a, b) and (c, d); llama.cpp interleaves them as [a, c, b, d].
        let stored = [10.0, 30.0, 20.0, 40.0];
        assert_eq!(
            unpermute_rows(&stored, 1, 4, 1),
            vec![10.0, 20.0, 30.0, 40.0]
        );
        // Two heads, two columns: each head is undone on its own rows.
        let stored = [
            1., 1., 3., 3., 2., 2., 4., 4., 5., 5., 7., 7., 6., 6., 8., 8.,
        ];
        let want = [
            1., 1., 2., 2., 3., 3., 4., 4., 5., 5., 6., 6., 7., 7., 8., 8.,
        ];
        assert_eq!(unpermute_rows(&stored, 2, 8, 2), want.to_vec());
    }

    #[test]
    fn kv_b_is_each_heads_k_rows_then_v_rows() {
        // 1 head, rank 2, nope 2, v_head 1. k_b stored [rank, nope] = [[1, 2], [3, 4]], so
        // HF's k rows are its transpose [[1, 3], [2, 4]]; v_b [[5, 6]].
        let got = assemble_kv_b(&[1., 2., 3., 4.], &[5., 6.], 1, 2, 2, 1);
        assert_eq!(got, vec![1., 3., 2., 4., 5., 6.]);
    }
}
