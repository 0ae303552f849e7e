//! Folding a PEFT LoRA adapter into a checkpoint on disk (`moescope merge`): the base model's
//! safetensors with `W + scale · B · A` written into the adapted tensors, in the model's own hub
//! layout (same shard files, tensor names, order, dtypes and index; the other files of the
//! model folder copied), streamed tensor by tensor into a folder that appears only once
//! complete.
//!
//! - [`plan`]: the checkpoint's headers and, for every adapter module, the tensor and slice its
//!   update goes to (plain weights and fused expert tensors); what cannot be merged is refused
//!   here, before anything is written.
//! - [`placement`]: one update added into a tensor's bytes in f32, rounded back to its dtype.
//! - [`folder`]: which files are carried over, where the output may go, the partial folder and
//!   the final rename.
//! - [`write`]: [`merge_adapter`], the streaming merge with progress and cancellation.

pub mod error;
pub mod folder;
pub mod placement;
pub mod plan;
pub mod write;

pub use error::MergeError;
pub use write::{MergeProgress, MergeRequest, MergeSummary, merge_adapter};
