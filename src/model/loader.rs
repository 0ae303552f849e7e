//! Turns a model folder or hub id into a running [`MoeModel`] plus its tokenizer.
//!
//! Steps: resolve the files ([`super::hub`]), pick the family from `config.json`
//! (`architectures[0]`, else `model_type`), memory-map and check every safetensors file
//! ([`super::weights`]), and build the family. Every failure names the file
//! and the problem.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use tokenizers::Tokenizer;

use super::device::{DeviceChoice, default_dtype};
use super::error::{ModelError, Result};
use super::families::{self, BuildCtx};
use super::hub::{self, DownloadProgress, ModelFiles};
use super::info::Family;
use super::moe_model::MoeModel;
use super::weights::MmapWeights;

/// What to load and how.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A model folder or an HF hub id.
    pub model: String,
    /// Hub revision (branch, tag or commit); `main` by default.
    pub revision: Option<String>,
    /// Weight and activation dtype; f32 on the CPU, bf16 on a GPU by default.
    pub dtype: Option<DType>,
    pub device: DeviceChoice,
    /// Load only what routing capture needs: no LM head, no experts in the last MoE layer.
    /// Such a model answers only [`super::Output::RoutingOnly`].
    pub routing_only: bool,
    /// A PEFT LoRA adapter folder merged into the weights after loading.
    pub adapter: Option<std::path::PathBuf>,
}

/// A model ready to run, with its tokenizer and where it came from.
pub struct LoadedModel {
    pub model: Box<dyn MoeModel>,
    pub tokenizer: Tokenizer,
    pub files: ModelFiles,
    pub device: Device,
}

/// The supported families, for error messages.
pub fn supported_list() -> String {
    Family::ALL
        .iter()
        .map(|f| format!("{} ({})", f.architecture(), f.model_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Picks the family from a `config.json`'s `architectures` / `model_type`.
pub fn detect_family(config_path: &Path, json: &serde_json::Value) -> Result<Family> {
    let archs: Vec<&str> = json
        .get("architectures")
        .and_then(|a| a.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    if let Some(f) = archs.iter().find_map(|a| Family::from_architecture(a)) {
        return Ok(f);
    }
    let model_type = json.get("model_type").and_then(|v| v.as_str());
    if let Some(f) = model_type.and_then(Family::from_model_type) {
        return Ok(f);
    }
    let found = if archs.is_empty() {
        format!("model_type {:?}", model_type.unwrap_or("(none)"))
    } else {
        format!("architectures {archs:?}")
    };
    Err(ModelError::msg(format!(
        "{}: unsupported model ({found}); supported: {}",
        config_path.display(),
        supported_list()
    )))
}

/// Loads a model folder or hub id.
pub fn load_model(
    opts: &LoadOptions,
    progress: Option<&mut dyn DownloadProgress>,
) -> Result<LoadedModel> {
    let files = hub::resolve(&opts.model, opts.revision.as_deref(), progress)?;
    load_files(files, opts)
}

/// Loads a model from already-resolved files.
pub fn load_files(files: ModelFiles, opts: &LoadOptions) -> Result<LoadedModel> {
    let cfg_path = &files.config;
    let text = std::fs::read_to_string(cfg_path)
        .map_err(|e| ModelError::msg(format!("{}: cannot read: {e}", cfg_path.display())))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::msg(format!("{}: not valid JSON: {e}", cfg_path.display())))?;
    let family = detect_family(cfg_path, &json)?;
    let tokenizer = Tokenizer::from_file(&files.tokenizer).map_err(|e| {
        ModelError::msg(format!(
            "{}: cannot load tokenizer: {e}",
            files.tokenizer.display()
        ))
    })?;
    let weights = MmapWeights::open(&files.weights)?;
    let total_params = weights.total_params();

    let device = super::device::open(opts.device)?;
    let dtype = opts.dtype.unwrap_or_else(|| default_dtype(&device));
    let vb = VarBuilder::from_backend(Box::new(weights), dtype, device.clone());
    let ctx = BuildCtx {
        id: files.id.clone(),
        dtype,
        device: device.clone(),
        routing_only: opts.routing_only,
    };
    let mut model = families::build(family, &text, vb, &ctx).map_err(|e| {
        ModelError::msg(format!(
            "{}: cannot build {} from its weights: {e}",
            files.id,
            family.architecture()
        ))
    })?;
    model.set_param_counts(total_params);
    if let Some(dir) = &opts.adapter {
        let adapter = super::adapter::Adapter::load(dir)?;
        adapter.merge_into(dir, model.as_mut(), opts.routing_only)?;
    }
    Ok(LoadedModel {
        model,
        tokenizer,
        files,
        device,
    })
}

/// Tokenises `text` as the model's tokenizer is configured to (special tokens included).
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let enc = tokenizer
        .encode(text, true)
        .map_err(|e| ModelError::msg(format!("cannot tokenise: {e}")))?;
    Ok(enc.get_ids().to_vec())
}
