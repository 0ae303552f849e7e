//! `moescope merge`: a PEFT LoRA adapter folded into the base model's weights, written as a
//! safetensors checkpoint in the model's own layout ([`crate::model::merge`]), with a progress
//! bar, Ctrl-C cancellation and a summary.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;

use crate::model::memory::human_bytes;
use crate::model::merge::{MergeProgress, MergeRequest, merge_adapter};

#[derive(Debug, Clone, clap::Args)]
pub struct MergeArgs {
    /// The base model: a folder or a hub id (safetensors; a GGUF file is refused).
    #[arg(long, short = 'm', value_name = "MODEL")]
    pub model: String,
    /// Hub revision of --model.
    #[arg(long)]
    pub revision: Option<String>,
    /// The PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors).
    #[arg(long, short = 'a', value_name = "DIR")]
    pub adapter: PathBuf,
    /// The merged model folder to write. It must not exist yet (or be empty) and must not be
    /// inside the model folder.
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: PathBuf,
    /// Replace --out if it exists, once the merge has succeeded.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: MergeArgs) -> Result<()> {
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let c = cancel.clone();
        // A second handler registration fails only if one exists already; ignore that.
        let _ = ctrlc::set_handler(move || c.store(true, Ordering::Relaxed));
    }
    let stdout = std::io::stdout();
    run_with(args, &cancel, true, &mut stdout.lock())
}

/// Runs the merge; `bar` shows a progress bar on stderr; the summary goes to `out`.
pub fn run_with(
    args: MergeArgs,
    cancel: &AtomicBool,
    bar: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let request = MergeRequest {
        model: args.model,
        revision: args.revision,
        adapter: args.adapter,
        out: args.out,
        force: args.force,
    };
    let progress = bar.then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "merging [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template"),
        );
        b
    });
    let mut on_progress = |p: MergeProgress| {
        if let Some(b) = &progress {
            b.set_length(p.bytes_total);
            b.set_position(p.bytes_done);
        }
    };
    let result = merge_adapter(&request, cancel, &mut on_progress);
    if let Some(b) = &progress {
        b.finish_and_clear();
    }
    let summary = result?;
    writeln!(
        out,
        "merged {} adapter modules into {} of {} tensors in {:.1} s",
        summary.modules, summary.tensors_changed, summary.tensors_total, summary.seconds
    )?;
    writeln!(
        out,
        "wrote {} to {}{}: {} shard file(s), {} other file(s) copied",
        human_bytes(summary.bytes_written),
        summary.out.display(),
        if summary.replaced { " (replaced)" } else { "" },
        summary.shards.len(),
        summary.files_copied.len()
    )?;
    if !summary.files_skipped.is_empty() {
        writeln!(
            out,
            "left out (other weight formats, sub-folders): {}",
            summary.files_skipped.join(", ")
        )?;
    }
    Ok(())
}
