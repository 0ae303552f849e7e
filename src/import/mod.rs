//! Routing recorded by serving and training engines, imported as count-only profiles: the same
//! heatmaps, metrics, selection and exports for models too big for one machine.
//!
//! - [`vllm`]: vLLM responses (`prompt_routed_experts` / `routed_experts`), HTTP or offline.
//! - [`sglang`]: SGLang `/generate` and OpenAI responses (`routed_experts` as base64), and the
//!   expert-distribution recorder's `torch.save` dumps (`stat` and `per_token` modes), read
//!   by [`torch_file`] without running pickle code.
//! - [`megatron`]: Megatron-LM `router_trace_rank{r}.jsonl`, ranks merged.
//! - [`llama_cpp`]: llama.cpp's moe-trace CSV (`layer,expert` rows).
//! - [`tally`]: the counts, the map from engine layer numbers to the model's MoE layers.
//! - [`model_shape`]: the model's MoE layers, experts and top-k from `config.json` alone.
//! - [`reading`]: options, errors, progress and line reading every importer shares.
//!
//! Every importer streams: a file is read a line (or a record) at a time, and memory holds the
//! counts, not the routing. Errors name the file and, for line formats, the line.

pub mod llama_cpp;
pub mod megatron;
pub mod model_shape;
pub mod nested_ints;
pub mod reading;
pub mod sglang;
pub mod tally;
pub mod torch_file;
pub mod vllm;

use std::sync::atomic::AtomicBool;

pub use model_shape::RoutingShape;
pub use reading::{
    ImportError, ImportFormat, ImportOptions, ImportProgress, Monitor, Positions, Result,
};
pub use tally::{LayerMap, Tally};

use reading::display;

use crate::profile::RoutingProfile;

/// Imports `options.files` as a count-only profile of the model `shape` describes.
pub fn import(
    shape: &RoutingShape,
    options: &ImportOptions,
    cancel: &AtomicBool,
    on_progress: &mut dyn FnMut(ImportProgress),
) -> Result<RoutingProfile> {
    if options.files.is_empty() {
        return Err(ImportError::Invalid("no files to import".into()));
    }
    let mut monitor = Monitor::new(cancel, on_progress);
    for f in &options.files {
        let meta = std::fs::metadata(f).map_err(|source| ImportError::Io {
            path: display(f),
            source,
        })?;
        if !meta.is_file() {
            return Err(ImportError::File {
                path: display(f),
                msg: "not a file".into(),
            });
        }
        monitor.total += meta.len();
    }
    let mut tally = Tally::new(shape.clone());
    let map = match options.format {
        ImportFormat::Vllm => vllm::read(&mut tally, options, &mut monitor)?,
        ImportFormat::Sglang => sglang::read(&mut tally, options, &mut monitor)?,
        ImportFormat::Megatron => {
            megatron::read(&mut tally, options, &mut monitor)?;
            None
        }
        ImportFormat::LlamaCpp => {
            llama_cpp::read(&mut tally, options, &mut monitor)?;
            None
        }
    };
    let files = options.files.iter().map(|f| display(f)).collect();
    let first = display(&options.files[0]);
    tally
        .finish(options.format.name(), files, map.as_ref())
        .map_err(|msg| {
            if options.files.len() == 1 {
                ImportError::File { path: first, msg }
            } else {
                ImportError::Invalid(msg)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::info::Family;
    use crate::model::router::ScoreFn;

    fn shape() -> RoutingShape {
        RoutingShape {
            id: "m".into(),
            family: Family::Olmoe,
            num_layers: 2,
            moe_layers: vec![0, 1],
            num_experts: 4,
            top_k: 1,
            score_fn: ScoreFn::Softmax,
            layout: None,
            attention_kinds: Vec::new(),
            layout_missing: None,
        }
    }

    fn options(file: &std::path::Path) -> ImportOptions {
        ImportOptions {
            format: ImportFormat::LlamaCpp,
            files: vec![file.to_path_buf()],
            subject: Some("s".into()),
            positions: Positions::All,
        }
    }

    #[test]
    fn a_cancelled_import_stops_with_nothing_and_progress_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.csv");
        // 5 MB of `layer,expert` rows: one progress report at 4 MB.
        let rows = "0,1\n1,2\n".repeat(5 << 20 >> 3);
        std::fs::write(&file, &rows).unwrap();
        let mut reports = Vec::new();
        let cancel = AtomicBool::new(false);
        let p = import(&shape(), &options(&file), &cancel, &mut |r| reports.push(r)).unwrap();
        assert_eq!(p.subjects[0].tokens, (5 << 20 >> 3) as u64);
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].bytes_total, rows.len() as u64);
        assert!(reports[0].bytes_done >= 4 << 20);

        cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        let err = import(&shape(), &options(&file), &cancel, &mut |_| {}).unwrap_err();
        assert!(matches!(err, ImportError::Cancelled), "{err}");
        assert!(err.to_string().contains("nothing was written"));
    }
}
