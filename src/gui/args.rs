//! The `moescope gui` command-line options.

use std::path::PathBuf;

/// `moescope gui` options (all optional: with none, the embedded demo opens).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct GuiArgs {
    /// Model folder, GGUF file or HF hub id to load (default: the embedded demo, unless a
    /// profile is opened on its own).
    #[arg(long)]
    pub model: Option<String>,
    /// Prompt dataset (JSONL / CSV / Parquet, or a prompt folder) to profile.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A saved profile to open.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// A PEFT LoRA adapter folder merged into the model's weights.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}
