//! Writing the shipped demo folder and the training checkpoints.
//!
//! The folder (`assets/demo/`): `config.json` (HF OLMoE config), `model.safetensors` (weights in
//! f16; the loader converts to f32), `tokenizer.json`, `prompts/<domain>.txt` (the corpus's
//! held-out prompts, copied byte for byte), `NOTICE` (sources and licences, from the corpus's
//! `SOURCES.tsv` and [`NOTICE_TEMPLATE`]) and `training.json` (how it was trained and what it
//! measured). Every file is written to a temporary file and renamed into place.
//!
//! A checkpoint is one safetensors file of f32 weights whose metadata records the step, seed and
//! config; resuming restores the weights and continues at the next step (the optimiser's moment
//! estimates are not saved and restart from zero).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

use super::config::DemoConfig;
use super::corpus::CorpusDir;
use super::{DemoError, Result};
use crate::io::write_atomic;

/// The licence texts and per-source notes of the NOTICE; `{{SOURCES}}` is replaced by the
/// corpus's `SOURCES.tsv` rows.
pub const NOTICE_TEMPLATE: &str = include_str!("notice_template.txt");

/// The checkpoint file's format tag (safetensors metadata `format`).
pub const CHECKPOINT_FORMAT: &str = "moescope-demo-checkpoint";

/// The weights of `varmap` by name, sorted, converted to `dtype`; errors on a non-finite value.
fn named_tensors(varmap: &VarMap, dtype: DType) -> Result<Vec<(String, Tensor)>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| DemoError::msg("weight map lock poisoned"))?;
    let mut out = Vec::with_capacity(data.len());
    for (name, var) in data.iter() {
        let t = var.as_tensor().to_dtype(dtype)?;
        let finite = t
            .to_dtype(DType::F32)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?
            .is_finite();
        if !finite {
            return Err(DemoError::msg(format!(
                "weight {name} is not finite in {dtype:?}"
            )));
        }
        out.push((name.clone(), t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Serialises named tensors (with optional metadata) as safetensors bytes.
fn serialize(
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let views: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    safetensors::serialize(views, metadata)
        .map_err(|e| DemoError::msg(format!("cannot serialise weights: {e}")))
}

/// Writes the weights as `path` in `dtype` (f16 for the shipped model), atomically.
pub fn save_weights(varmap: &VarMap, path: &Path, dtype: DType) -> Result<u64> {
    let tensors = named_tensors(varmap, dtype)?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let bytes = serialize(&tensors, Some(meta))?;
    write_atomic(path, &bytes).map_err(|e| DemoError::io(path, e))?;
    Ok(bytes.len() as u64)
}

/// What a checkpoint records besides the weights.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointMeta {
    /// Steps completed.
    pub step: u64,
    pub seed: u64,
    pub config: DemoConfig,
}

/// Writes a checkpoint (f32 weights + metadata) atomically.
pub fn save_checkpoint(varmap: &VarMap, path: &Path, meta: &CheckpointMeta) -> Result<()> {
    let tensors = named_tensors(varmap, DType::F32)?;
    let mut m = HashMap::new();
    m.insert("format".to_string(), CHECKPOINT_FORMAT.to_string());
    m.insert("step".to_string(), meta.step.to_string());
    m.insert("seed".to_string(), meta.seed.to_string());
    m.insert(
        "config".to_string(),
        serde_json::to_string(&meta.config).map_err(|e| DemoError::msg(e.to_string()))?,
    );
    let bytes = serialize(&tensors, Some(m))?;
    write_atomic(path, &bytes).map_err(|e| DemoError::io(path, e))
}

/// Reads a checkpoint's metadata and sets every weight of `varmap` from it (names and shapes
/// must match exactly).
pub fn load_checkpoint(varmap: &VarMap, path: &Path, device: &Device) -> Result<CheckpointMeta> {
    let bytes = std::fs::read(path).map_err(|e| DemoError::io(path, e))?;
    let bad = |m: String| DemoError::msg(format!("{}: {m}", path.display()));
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a complete safetensors file ({e})")))?;
    let md = header.metadata().clone().unwrap_or_default();
    if md.get("format").map(String::as_str) != Some(CHECKPOINT_FORMAT) {
        return Err(bad("not a train-demo checkpoint".into()));
    }
    let num = |k: &str| -> Result<u64> {
        md.get(k)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("checkpoint metadata lacks '{k}'")))
    };
    let config: DemoConfig = md
        .get("config")
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| bad("checkpoint metadata lacks 'config'".into()))?;
    let meta = CheckpointMeta {
        step: num("step")?,
        seed: num("seed")?,
        config,
    };
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)?;
    let data = varmap
        .data()
        .lock()
        .map_err(|_| DemoError::msg("weight map lock poisoned"))?;
    if tensors.len() != data.len() {
        return Err(bad(format!(
            "has {} weights, the model {}",
            tensors.len(),
            data.len()
        )));
    }
    for (name, var) in data.iter() {
        let t = tensors
            .get(name)
            .ok_or_else(|| bad(format!("weight {name} is missing")))?;
        if t.shape() != var.shape() {
            return Err(bad(format!(
                "weight {name} has shape {:?}, expected {:?}",
                t.shape(),
                var.shape()
            )));
        }
        var.set(&t.to_dtype(DType::F32)?)?;
    }
    Ok(meta)
}

/// The NOTICE text for a corpus's `SOURCES.tsv`.
pub fn notice_text(sources_tsv: &str) -> String {
    let mut rows = String::new();
    for (i, line) in sources_tsv.lines().enumerate() {
        if i == 0 || line.trim().is_empty() {
            continue; // header
        }
        let cols: Vec<&str> = line.split('\t').collect();
        rows.push_str(&format!("- {}\n", cols.join(" | ")));
    }
    NOTICE_TEMPLATE.replace("{{SOURCES}}", rows.trim_end())
}

/// Everything the shipped folder is made of.
pub struct DemoFolder<'a> {
    pub config: &'a DemoConfig,
    pub varmap: &'a VarMap,
    pub tokenizer: &'a tokenizers::Tokenizer,
    pub corpus: &'a CorpusDir,
    /// `training.json` contents.
    pub training: serde_json::Value,
}

/// Writes the demo folder into `out` (created if needed). Returns the weight file's size.
pub fn write_folder(out: &Path, f: &DemoFolder<'_>) -> Result<u64> {
    let prompts_out = out.join("prompts");
    std::fs::create_dir_all(&prompts_out).map_err(|e| DemoError::io(&prompts_out, e))?;
    let cfg_json = f.config.to_hf_json(0, 1, "float16");
    let text =
        serde_json::to_string_pretty(&cfg_json).map_err(|e| DemoError::msg(e.to_string()))? + "\n";
    let p = out.join("config.json");
    write_atomic(&p, text.as_bytes()).map_err(|e| DemoError::io(&p, e))?;
    let size = save_weights(f.varmap, &out.join("model.safetensors"), DType::F16)?;
    super::tokenizer::save(f.tokenizer, &out.join("tokenizer.json"))?;
    for d in f.corpus.domain_names()? {
        let src = f.corpus.prompts_dir().join(format!("{d}.txt"));
        let bytes = std::fs::read(&src).map_err(|e| DemoError::io(&src, e))?;
        let dst = prompts_out.join(format!("{d}.txt"));
        write_atomic(&dst, &bytes).map_err(|e| DemoError::io(&dst, e))?;
    }
    let src = f.corpus.sources();
    let tsv = std::fs::read_to_string(&src).map_err(|e| DemoError::io(&src, e))?;
    let p = out.join("NOTICE");
    write_atomic(&p, notice_text(&tsv).as_bytes()).map_err(|e| DemoError::io(&p, e))?;
    write_training_json(out, &f.training)?;
    Ok(size)
}

/// Writes (or rewrites) `training.json`.
pub fn write_training_json(out: &Path, training: &serde_json::Value) -> Result<()> {
    let p = out.join("training.json");
    let text =
        serde_json::to_string_pretty(training).map_err(|e| DemoError::msg(e.to_string()))? + "\n";
    write_atomic(&p, text.as_bytes()).map_err(|e| DemoError::io(&p, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_lists_every_source_and_the_licences() {
        let tsv = "domain\ttrain_chars\tprompts\tsource\tlicense\nlaw\t10\t100\tMMLU\tMIT\ncode_python\t5\t100\tCPython\tPSF-2.0\n";
        let n = notice_text(tsv);
        assert!(n.contains("- law | 10 | 100 | MMLU | MIT"));
        assert!(n.contains("- code_python | 5 | 100 | CPython | PSF-2.0"));
        assert!(n.contains("Copyright (c) 2020 Dan Hendrycks"));
        assert!(n.contains("PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2"));
        assert!(n.contains("Apache License"));
        assert!(!n.contains("{{SOURCES}}"));
    }
}
