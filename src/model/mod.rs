//! MoE model families behind one trait, plus what they share: weight loading, tokenizer,
//! devices, and the routing layer through which every family's router reports and is steered.
//!
//! - [`MoeModel`] is the trait every family implements; [`loader::load_model`] picks the family
//!   from `config.json` and builds it from memory-mapped safetensors.
//! - [`router`] owns router scoring, expert choice, steering and the [`router::RoutingHook`].
//! - [`layers`] holds the building blocks (norms, rotary embeddings, attention, SwiGLU experts,
//!   the sparse expert dispatch, the decoder stack) the family files are made of; each block's
//!   forward runs on the direct f32 CPU kernels of [`kernels`], as one of the frozen-part
//!   training ops of [`autograd`], or as plain candle tensor ops.
//! - [`lora`] and [`adapter`]: LoRA deltas on the linear layers, and PEFT adapters on disk;
//!   [`merge`] folds an adapter into a checkpoint on disk.
//! - [`chat_template`]: the model's chat template, which turns a conversation into the text
//!   the model sees; [`tokenize`] turns text into token ids.

pub mod adapter;
pub mod autograd;
pub mod batch;
pub mod chat_template;
pub mod device;
pub mod error;
pub mod families;
pub mod gguf;
pub mod hub;
pub mod info;
pub mod kernels;
pub mod layers;
pub mod loader;
pub mod lora;
pub mod memory;
pub mod merge;
pub mod module_names;
pub mod moe_model;
pub mod mxfp4;
pub mod router;
pub mod tokenize;
pub mod weight;
pub mod weights;

pub use batch::{Batch, Output};
pub use chat_template::ChatTemplate;
pub use device::parse_dtype;
pub use error::{ModelError, Result};
pub use info::{AttentionKind, Family, ModelInfo, ModuleLayout, Projection};
pub use loader::{LoadOptions, LoadPlan, LoadedModel, load_model};
pub use moe_model::{LayerwiseModel, MoeModel};
pub use router::{RecordingHook, RouteCtx, RoutingHook, Steering};

#[cfg(test)]
mod test_support;
