//! `moescope convert-adapter`: rewrites a PEFT LoRA adapter in another form (per-expert,
//! padded, or transformers 5's fused `target_parameters`) for the stack that will load it. Only
//! the model's config.json is read (module names, shapes, experts), never its weights.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::import::RoutingShape;
use crate::model::adapter::{Adapter, AdapterForm, AdapterTarget};
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
