//! Selective LoRA training: LoRA on the chosen experts' projections (and optionally attention,
//! router and shared experts) of any supported family, AdamW through Candle autograd, PEFT
//! adapters out; DAS's two-stage recipe; checkpoints, resume and cancel.
//!
//! The model is the engine's own (`crate::model`), loaded whole and frozen; LoRA pairs are
//! Candle variables attached to the target [`Linear`](crate::model::layers::Linear)s, so the
//! forward pass is exactly the one used for routing capture, and only the experts each token is
//! routed to run. Layers below the lowest adapted module carry no gradients at all.
//!
//! Files in the output folder:
//! - `adapter_config.json`, `adapter_model.safetensors`: the PEFT adapter (end of the run);
//! - `checkpoint.safetensors`: LoRA pairs, AdamW moments and the run's state in the metadata,
//!   written atomically every `checkpoint_every` steps, on cancel and at the end;
//! - `metrics.jsonl`: one line per step (loss, lr, grad norm, tokens/s);
//! - `training.json`: the run's summary; `selection.json`: the experts trained (for DAS's
//!   two-stage recipe, the ones stage 2 picked).

//!
//! Files: `options.rs` (what a run is asked to do), `trainer.rs` (the run's state and one
//! step), `run.rs` (a whole run), `lora_vars.rs`, `optim.rs` (AdamW), `data.rs` (texts and
//! their seeded order), `checkpoint.rs`, `metrics.rs` (steps, events, summary), `error.rs`.

mod checkpoint;
pub mod data;
mod error;
mod lora_vars;
mod metrics;
pub mod optim;
mod options;
mod run;
mod trainer;

pub use error::{Result, TrainError};
pub use metrics::{StepMetrics, SubjectPerplexity, TrainEvent, TrainSummary, read_metrics};
pub use options::{ExpertChoice, LoraOptions, TrainOptions};
pub use run::run_training;
pub use trainer::Trainer;
