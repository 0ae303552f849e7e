//! GGUF models (llama.cpp, LM Studio, Ollama files) as a model source like any HF folder.
//!
//! - [`file`] reads the container: metadata, tensor directory, split parts, all mapped.
//! - [`quant`] owns ggml's block types and [`GgmlTensor`], a weight the CPU kernels dequantise
//!   as they read it.
//! - [`weights`] exposes the tensors under HF names ([`GgufWeights`]).
//! - [`arch`] maps llama.cpp's architectures, metadata keys and tensor names to the families'
//!   HF configs and names.
//! - [`tokenizer`] rebuilds the tokenizer described by the `tokenizer.ggml.*` metadata.

pub mod arch;
pub mod file;
pub mod quant;
pub mod tokenizer;
pub mod weights;

pub use file::{GgufFile, GgufModel, Value};
pub(crate) use quant::{GgmlRows, Q8kRows};
pub use quant::{GgmlTensor, GgmlType};
pub use weights::GgufWeights;
