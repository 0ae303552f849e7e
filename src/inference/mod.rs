//! Running a loaded model for the user's questions: the library functions the CLI, the GUI's
//! worker, training and the demo all call.
//!
//! - [`generate`]: KV-cached generation, greedy or temperature + top-p (seeded), steering on the
//!   prompt and / or the generated tokens, tokens streamed through a callback;
//! - [`trace`]: one text's routing through every MoE layer (the CLI's `trace`, the GUI's token
//!   panel);
//! - [`eval`]: multiple-choice scoring by option-letter log-probability, with and without
//!   steering, bootstrap CIs;
//! - [`profiling`]: a prompt set in padded batches (routing only) into a routing profile,
//!   batch-major or layer-major;
//! - [`hidden_store`]: a layer-major run's hidden states between layers, spilled to disk when
//!   they don't fit in memory;
//! - [`nll`]: next-token negative log-likelihood, the measure behind held-out perplexity.

pub mod eval;
pub mod generate;
pub mod hidden_store;
pub mod nll;
pub mod profiling;
pub mod trace;
