//! `moescope import`: routing recorded by vLLM, SGLang, Megatron-LM or llama.cpp, written as a
//! count-only moescope-profile ([`crate::import`]).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

use crate::import::{ImportFormat, ImportOptions, Positions, RoutingShape, import};

#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// The engine that wrote the files.
    #[arg(long, value_enum)]
    pub format: ImportFormat,
    /// Files to read (JSONL responses or traces, `.pt` recorder dumps, CSV); all go into one
    /// profile.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The model the routing came from: a folder, its config.json, or a hub id. Only
    /// config.json is read (MoE layers, experts, top-k), never the weights.
    #[arg(long, value_name = "MODEL")]
    pub model: String,
    /// Hub revision of --model.
    #[arg(long)]
    pub revision: Option<String>,
    /// Subject of records without a `subject` field (and of formats that have none).
    #[arg(long, value_name = "NAME")]
    pub subject: Option<String>,
    /// Which token positions count: prompt and generated, or one of them.
    #[arg(long, value_enum, default_value = "all")]
    pub positions: Positions,
    /// The moescope-profile JSON to write (atomically).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

pub fn run(args: ImportArgs) -> Result<()> {
    let stderr = std::io::stderr();
    let mut err = stderr.lock();
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let c = cancel.clone();
        // A second handler registration fails only if one exists already; ignore that.
        let _ = ctrlc::set_handler(move || c.store(true, Ordering::Relaxed));
    }
    run_with(args, &cancel, true, &mut err)
}

/// Runs the import; `bar` shows a progress bar on stderr; the summary goes to `out`.
pub fn run_with(
    args: ImportArgs,
    cancel: &AtomicBool,
    bar: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let config = crate::model::hub::resolve_config(&args.model, args.revision.as_deref())?;
    let shape = RoutingShape::from_config_file(&config, &args.model).map_err(anyhow::Error::msg)?;
    let options = ImportOptions {
        format: args.format,
        files: args.files.clone(),
        subject: args.subject.clone(),
        positions: args.positions,
    };
    let progress = bar.then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "importing [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template"),
        );
        b
    });
    let started = std::time::Instant::now();
    let mut on_progress = |p: crate::import::ImportProgress| {
        if let Some(b) = &progress {
            b.set_length(p.bytes_total);
            b.set_position(p.bytes_done);
        }
    };
    let result = import(&shape, &options, cancel, &mut on_progress);
    if let Some(b) = &progress {
        b.finish_and_clear();
    }
    let profile = result?;
    profile
        .save(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let source = profile
        .source
        .as_ref()
        .expect("imported profiles name their source");
    writeln!(
        out,
        "imported {} records ({} tokens, {} subjects) from {} file(s) in {:.1} s",
        source.records,
        source.tokens,
        profile.subjects.len(),
        source.files.len(),
        started.elapsed().as_secs_f64()
    )?;
    writeln!(out, "layers: {}", source.layer_mapping)?;
    if let Some(why) = &shape.layout_missing {
        writeln!(
            out,
            "note: no module layout from the config ({why}); parameter accounting and PEFT \
             export of selections need one"
        )?;
    }
    if source.skipped_positions > 0 {
        writeln!(
            out,
            "skipped {} positions without routing (prefix-cache hits or padding)",
            source.skipped_positions
        )?;
    }
    for s in &profile.subjects {
        writeln!(out, "  {:<24} {:>10} tokens", s.name, s.tokens)?;
    }
    writeln!(
        out,
        "wrote {} (counts only: routing mass and scores are not recorded by the engine)",
        args.out.display()
    )?;
    Ok(())
}
