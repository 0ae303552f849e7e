//! `moescope convert-adapter`: rewrites a PEFT LoRA adapter in another form (per-expert,
//! padded, or transformers 5's fused `target_parameters`) for the stack that will load it. Only
//! the model's config.json is read (module names, shapes, experts), never its weights.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::import::RoutingShape;
use crate::model::ModuleLayout;
use crate::model::adapter::{Adapter, AdapterForm, AdapterTarget, CONFIG_FILE, WEIGHTS_FILE};
use crate::model::hub::resolve_config;

#[derive(Debug, Clone, clap::Args)]
pub struct ConvertAdapterArgs {
    /// The base model: a folder, its config.json, or a hub id (only config.json is read).
    #[arg(long, value_name = "MODEL")]
    pub model: String,
    /// Hub revision of --model.
    #[arg(long)]
    pub revision: Option<String>,
    /// The adapter folder to read (any form MoEScope or PEFT writes).
    #[arg(long, value_name = "DIR")]
    pub adapter: PathBuf,
    /// The form to write: per-expert (PEFT with transformers 4.x, mistral.rs), padded (also
    /// vLLM, SGLang, transformers 5 through PEFT's conversion) or fused (transformers 5's
    /// target_parameters; vLLM's fused-expert models).
    #[arg(long, value_enum)]
    pub form: AdapterForm,
    /// The folder to write (created; its two files are written atomically).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn run(args: ConvertAdapterArgs) -> Result<()> {
    if args.out.canonicalize().ok() == args.adapter.canonicalize().ok() && args.out.exists() {
        bail!(
            "{}: --out is the adapter being read; write the converted adapter to another folder",
            args.out.display()
        );
    }
    let config = resolve_config(&args.model, args.revision.as_deref())?;
    let shape = RoutingShape::from_config_file(&config, &args.model).map_err(anyhow::Error::msg)?;
    let Some(layout) = &shape.layout else {
        bail!(
            "{}: {}",
            config.display(),
            shape
                .layout_missing
                .as_deref()
                .unwrap_or("the config does not give the model's module layout")
        );
    };
    let layout = &layout_named_as(layout, &args.adapter)?;
    let target = AdapterTarget {
        family: shape.family,
        layout,
    };
    let adapter = Adapter::load(&args.adapter, target)?;
    let bytes = adapter
        .save_as(&args.out, args.form, target, shape.num_experts)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "{} modules -> {} ({} form, {bytes} bytes; loads in {})",
        adapter.modules.len(),
        args.out.display(),
        args.form.label(),
        args.form.loads_in()
    );
    Ok(())
}

/// The layout under the decoder prefix a per-expert adapter's keys use. From config.json alone
/// a multimodal Qwen3.5 / Gemma 4 layout sits under `model.language_model`, while a text-only
/// checkpoint (and per-expert adapters made on it) name the same modules under `model`. (A fused
/// adapter is read in either naming.)
fn layout_named_as(layout: &ModuleLayout, adapter: &Path) -> Result<ModuleLayout> {
    const NESTED: &str = "model.language_model.";
    if !layout.expert_prefix.starts_with(NESTED) {
        return Ok(layout.clone());
    }
    let dir = if adapter.is_file() {
        adapter.parent().unwrap_or(Path::new("."))
    } else {
        adapter
    };
    let config = dir.join(CONFIG_FILE);
    let fused = std::fs::read_to_string(&config)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|cfg| cfg.get("target_parameters").cloned())
        .and_then(|p| p.as_array().map(|a| !a.is_empty()))
        .unwrap_or(false);
    if fused {
        return Ok(layout.clone());
    }
    let weights = dir.join(WEIGHTS_FILE);
    let bytes =
        std::fs::read(&weights).with_context(|| format!("reading {}", weights.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{}: not a valid safetensors file", weights.display()))?;
    if header
        .tensors()
        .keys()
        .any(|k| k.contains(".language_model."))
    {
        return Ok(layout.clone());
    }
    let flat = |t: &str| t.replace(NESTED, "model.");
    let mut flat_layout = layout.clone();
    flat_layout.expert_prefix = flat(&layout.expert_prefix);
    flat_layout.shared_expert_prefix = layout.shared_expert_prefix.as_deref().map(flat);
    flat_layout.attention_prefix = flat(&layout.attention_prefix);
    flat_layout.router = flat(&layout.router);
    Ok(flat_layout)
}
