//! Starting the explorer: the `moescope gui` options ([`GuiArgs`]) and [`run`], which opens the
//! window.

use std::path::PathBuf;

use crate::gui::app::MoeScopeApp;

/// `moescope gui` options (all optional: with none, the embedded demo opens).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct GuiArgs {
    /// Model folder or HF hub id to load (default: the embedded demo).
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

/// Opens the explorer window and runs until it is closed.
pub fn run(args: GuiArgs) -> anyhow::Result<()> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("MoEScope")
            .with_app_id("moescope")
            .with_inner_size([1280.0, 800.0])
            .with_min_inner_size([640.0, 400.0]),
        ..Default::default()
    };
    eframe::run_native(
        "MoEScope",
        options,
        Box::new(move |cc| Ok(Box::new(MoeScopeApp::new(cc, args)))),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the MoEScope window: {e}"))
}
