//! Turns a model folder or hub id into a running [`MoeModel`] plus its tokenizer.
//!
//! Steps: resolve the files ([`super::hub`]), pick the family from `config.json`
//! (`architectures[0]`, else `model_type`), memory-map and check every safetensors file
//! ([`super::weights`]), plan how the weights are held ([`LoadPlan`]), and build the family.
//! Every failure names the file and the problem.
//!
//! Weights stay in the checkpoint's dtype unless `--dtype` asks otherwise. On the CPU they
//! then stay where they are, as views of the mapped files that the kernels read in place
//! (activations in f32): loading is near-instant and a model larger than memory is a normal
//! case. A dtype conversion, training or another device copies them, after checking that the
//! copy fits in memory.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};
use tokenizers::Tokenizer;

use super::chat_template::ChatTemplate;
use super::device::{DeviceChoice, dtype_name};
use super::error::{ModelError, Result};
use super::families::{self, BuildCtx};
use super::gguf;
use super::hub::{self, DownloadProgress, FileLayout, ModelFiles};
use super::info::{Family, TensorStorage};
use super::memory::{self, human_bytes};
use super::moe_model::MoeModel;
use super::weights::{MmapWeights, WeightSource};

/// What to load and how.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A model folder or an HF hub id.
    pub model: String,
    /// Hub revision (branch, tag or commit); `main` by default.
    pub revision: Option<String>,
    /// Weight dtype; the checkpoint's own by default.
    pub dtype: Option<DType>,
    /// Copy the weights into memory even where they could stay mapped (training needs
    /// tensors it can differentiate through).
    pub in_memory: bool,
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
    /// How conversations become the model's text (its chat template, or the plain layout).
    pub chat_template: ChatTemplate,
    pub files: ModelFiles,
    pub device: Device,
    pub plan: LoadPlan,
}

/// How a checkpoint's weights are held once loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadPlan {
    /// The dtype most of the checkpoint is stored in.
    pub checkpoint_dtype: DType,
    /// The weights' dtype once loaded.
    pub dtype: DType,
    /// The dtype activations are computed in (f32 over mapped weights on the CPU).
    pub compute_dtype: DType,
    /// Weight matrices are views of the mapped files, not copies.
    pub mapped: bool,
    /// Bytes of all the checkpoint's tensors as they will be held: as stored when mapped
    /// (quantised formats included), else in `dtype`.
    pub weight_bytes: u64,
    /// Parameters in all the checkpoint's tensors.
    pub params: u64,
    /// Bytes the checkpoint's tensors take when read in place ([`StoredWeights::bytes`]).
    pub in_place_bytes: u64,
    /// How the checkpoint stores its weights, when not in one plain dtype (`GGUF Q4_K 84%,
    /// Q6_K 12%, F32 4%`).
    pub storage: Option<String>,
    /// Memory the process may still use when the plan was made.
    pub budget: Option<memory::MemoryBudget>,
}

impl LoadPlan {
    /// Plans a load of `stored` on `device`.
    pub fn new(stored: &StoredWeights, device: &Device, opts: &LoadOptions) -> Self {
        Self::for_checkpoint(stored, device, opts, memory::budget())
    }

    /// The plan the same checkpoint would get with `opts` on `device` (what `info` shows for
    /// the options given, having opened the weights mapped on the CPU).
    pub fn replan(&self, device: &Device, opts: &LoadOptions) -> Self {
        let stored = StoredWeights {
            dtype: self.checkpoint_dtype,
            params: self.params,
            bytes: self.in_place_bytes,
            storage: self.storage.clone(),
        };
        Self::for_checkpoint(&stored, device, opts, self.budget.clone())
    }

    fn for_checkpoint(
        stored: &StoredWeights,
        device: &Device,
        opts: &LoadOptions,
        budget: Option<memory::MemoryBudget>,
    ) -> Self {
        let dtype = opts.dtype.unwrap_or(stored.dtype);
        let mapped = device.is_cpu() && dtype == stored.dtype && !opts.in_memory;
        Self {
            checkpoint_dtype: stored.dtype,
            dtype,
            compute_dtype: if mapped { DType::F32 } else { dtype },
            mapped,
            weight_bytes: if mapped {
                stored.bytes
            } else {
                stored.params * dtype.size_in_bytes() as u64
            },
            params: stored.params,
            in_place_bytes: stored.bytes,
            storage: stored.storage.clone(),
            budget,
        }
    }

    /// Whether the weights, once loaded, would not fit in the memory left (mapped weights
    /// then stream from disk; copies cannot be made).
    pub fn exceeds_memory(&self) -> bool {
        self.budget
            .as_ref()
            .is_some_and(|b| self.weight_bytes > b.available)
    }

    /// Refuses a copy of the weights into host memory that would not fit, in numbers. (A GPU
    /// load copies one tensor at a time to the device, whose memory the OS does not report.)
    fn check_fits(&self, id: &str, device: &Device) -> Result<()> {
        if self.mapped || !device.is_cpu() || !self.exceeds_memory() {
            return Ok(());
        }
        let b = self
            .budget
            .as_ref()
            .expect("exceeds_memory implies a budget");
        let mut fix = if self.dtype != self.checkpoint_dtype {
            format!(
                "use --dtype {} (the checkpoint's dtype: its weights are then read in place from the mapped files, and a model larger than memory streams layer by layer)",
                dtype_name(self.checkpoint_dtype)
            )
        } else {
            "training needs the weights in memory: use a machine with more memory or a smaller model".to_string()
        };
        if self.dtype == self.checkpoint_dtype && b.source != "available memory" {
            fix = format!("raise the {} or {fix}", b.source);
        }
        Err(ModelError::msg(format!(
            "{id}: needs {} as {}, {} available ({}): {fix}",
            human_bytes(self.weight_bytes),
            dtype_name(self.dtype),
            human_bytes(b.available),
            b.source,
        )))
    }

    /// One line for people: `bf16, memory-mapped (13.8 GB)`.
    pub fn describe(&self) -> String {
        let how = if self.mapped {
            "memory-mapped, read in place"
        } else {
            "in memory"
        };
        let what = match (&self.storage, self.mapped) {
            (Some(storage), true) => storage.clone(),
            _ => dtype_name(self.dtype).to_string(),
        };
        format!("{what}, {how} ({})", human_bytes(self.weight_bytes))
    }
}

/// What a checkpoint's tensors are, as stored: what [`LoadPlan`] plans from.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredWeights {
    /// The dtype most of the weights are stored in, or that quantised weights dequantise to.
    pub dtype: DType,
    pub params: u64,
    /// Bytes of tensor data as held when read in place (quantised formats stay packed).
    pub bytes: u64,
    /// A description of mixed or quantised storage.
    pub storage: Option<String>,
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

/// A checkpoint opened and indexed, before its family is built.
struct OpenedCheckpoint {
    family: Family,
    /// `config.json`'s text (written from the metadata for a GGUF file).
    config: String,
    /// The file errors about the configuration name.
    config_path: std::path::PathBuf,
    tokenizer: Tokenizer,
    chat_template: ChatTemplate,
    store: Arc<dyn super::weights::TensorStore>,
    stored: StoredWeights,
    /// The language model's parameters (not a vision tower or prediction head beside it).
    total_params: u64,
    /// How each class of tensors is stored (quantised files only).
    storage: Vec<TensorStorage>,
}

/// Opens an HF folder's config, tokenizer and safetensors.
fn open_safetensors(
    config_path: &Path,
    tokenizer: &Path,
    weights: &[std::path::PathBuf],
    index: Option<&Path>,
) -> Result<OpenedCheckpoint> {
    let text = std::fs::read_to_string(config_path)
        .map_err(|e| ModelError::msg(format!("{}: cannot read: {e}", config_path.display())))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::msg(format!("{}: not valid JSON: {e}", config_path.display())))?;
    let family = detect_family(config_path, &json)?;
    let chat_template = ChatTemplate::beside_tokenizer(tokenizer);
    let tokenizer = load_tokenizer_json(tokenizer)?;
    let mut mmap = MmapWeights::open(weights)?;
    apply_quantization_config(config_path, &json, &mut mmap)?;
    if let Some(index) = index {
        mmap.check_index(index)?;
    }
    let stored = StoredWeights {
        dtype: mmap.checkpoint_dtype(),
        params: mmap.total_params(),
        bytes: mmap.mapped_bytes(),
        storage: None,
    };
    let total_params = mmap.params_excluding(family.unused_weight_prefixes());
    Ok(OpenedCheckpoint {
        family,
        config: text,
        config_path: config_path.to_path_buf(),
        tokenizer,
        chat_template,
        store: Arc::new(mmap),
        stored,
        total_params,
        storage: Vec::new(),
    })
}

fn load_tokenizer_json(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path)
        .map_err(|e| ModelError::msg(format!("{}: cannot load tokenizer: {e}", path.display())))
}

/// Opens a GGUF file (and the other parts of a split one): the family and config from its
/// metadata, the tokenizer from `tokenizer.json` beside it or else from the metadata, the chat
/// template from the metadata or else from the HF files beside it.
fn open_gguf(file: &Path, tokenizer: Option<&Path>) -> Result<OpenedCheckpoint> {
    let model = gguf::GgufModel::open(file)?;
    let converted = gguf::arch::convert(&model, file)?;
    let chat_template = ChatTemplate::from_gguf_metadata(model.metadata(), file)
        .or_else(|| tokenizer.map(ChatTemplate::beside_tokenizer))
        .unwrap_or_default();
    let tokenizer = match tokenizer {
        Some(p) => load_tokenizer_json(p)?,
        None => gguf::tokenizer::tokenizer_from_metadata(model.metadata(), file)?,
    };
    let weights = gguf::GgufWeights::new(model, converted.names);
    let stored = StoredWeights {
        dtype: DType::F32,
        params: weights.total_params(),
        bytes: weights.model().tensor_bytes(),
        storage: Some(format!("GGUF {}", weights.type_summary())),
    };
    let total_params = weights.params_excluding(converted.family.unused_weight_prefixes());
    let storage = weights.storage_classes();
    Ok(OpenedCheckpoint {
        family: converted.family,
        config: converted.config.to_string(),
        config_path: file.to_path_buf(),
        tokenizer,
        chat_template,
        store: Arc::new(weights),
        stored,
        total_params,
        storage,
    })
}

/// Loads a model from already-resolved files.
pub fn load_files(files: ModelFiles, opts: &LoadOptions) -> Result<LoadedModel> {
    let opened = match &files.layout {
        FileLayout::Hf {
            config,
            tokenizer,
            weights,
            index,
        } => open_safetensors(config, tokenizer, weights, index.as_deref())?,
        FileLayout::Gguf { file, tokenizer } => open_gguf(file, tokenizer.as_deref())?,
    };
    let OpenedCheckpoint {
        family,
        config,
        config_path,
        tokenizer,
        chat_template,
        store,
        stored,
        total_params,
        storage,
    } = opened;

    let device = super::device::open(opts.device)?;
    let plan = LoadPlan::new(&stored, &device, opts);
    plan.check_fits(&files.id, &device)?;
    let vb = WeightSource::new(store, plan.compute_dtype, &device, plan.mapped);
    let ctx = BuildCtx {
        id: files.id.clone(),
        dtype: plan.compute_dtype,
        weight_dtype: plan.dtype,
        mapped: plan.mapped,
        device: device.clone(),
        routing_only: opts.routing_only,
    };
    let mut model = families::build(family, &config, vb, &ctx).map_err(|e| {
        ModelError::msg(format!(
            "{}: cannot build {} from its weights: {e}",
            files.id,
            family.architecture()
        ))
    })?;
    let info = model.info();
    if info.moe_layers.is_empty() {
        return Err(ModelError::msg(format!(
            "{}: this {} has no MoE layers ({} decoder layers, none with routed experts); MoEScope explores expert routing",
            config_path.display(),
            family.architecture(),
            info.num_layers
        )));
    }
    model.set_param_counts(total_params);
    if plan.mapped
        && let Some(s) = &plan.storage
    {
        model.info_mut().dtype = s.clone();
    }
    model.info_mut().storage = storage;
    if let Some(dir) = &opts.adapter {
        let info = model.info();
        let target = super::adapter::AdapterTarget {
            family: info.family,
            layout: &info.layout,
        };
        let adapter = super::adapter::Adapter::load(dir, target)?;
        adapter.merge_into(dir, model.as_mut(), opts.routing_only)?;
    }
    Ok(LoadedModel {
        model,
        tokenizer,
        chat_template,
        files,
        device,
        plan,
    })
}

/// Reads `config.json`'s `quantization_config`: block-scaled float8 (`quant_method: fp8`,
/// DeepSeek-V3's layout) sets the weights' block size; MXFP4 (gpt-oss) needs nothing more;
/// other methods are refused by name.
fn apply_quantization_config(
    cfg_path: &Path,
    json: &serde_json::Value,
    weights: &mut MmapWeights,
) -> Result<()> {
    let Some(q) = json.get("quantization_config").filter(|q| !q.is_null()) else {
        if weights.has_fp8() {
            return Err(ModelError::msg(format!(
                "{}: the checkpoint holds float8 tensors but config.json has no \
                 quantization_config saying how they are scaled",
                cfg_path.display()
            )));
        }
        return Ok(());
    };
    let method = q.get("quant_method").and_then(|m| m.as_str()).unwrap_or("");
    match method {
        "fp8" => {
            let block = match q.get("weight_block_size") {
                None | Some(serde_json::Value::Null) => [128, 128],
                Some(b) => match b
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_u64()).collect::<Vec<_>>())
                {
                    Some(v) if v.len() == 2 && v.iter().all(|&x| x > 0) => {
                        [v[0] as usize, v[1] as usize]
                    }
                    _ => {
                        return Err(ModelError::msg(format!(
                            "{}: quantization_config.weight_block_size must be two positive \
                             integers, got {b}",
                            cfg_path.display()
                        )));
                    }
                },
            };
            weights.set_fp8_block_size(block);
            Ok(())
        }
        // gpt-oss: the MXFP4 tensors describe themselves (`*_blocks` with `*_scales`).
        "mxfp4" => Ok(()),
        other => Err(ModelError::msg(format!(
            "{}: quantization_config.quant_method {other:?} is not supported (supported: fp8, \
             mxfp4)",
            cfg_path.display()
        ))),
    }
}
