//! Direct CPU kernels, computing in f32 over f32, f16 or bf16 weights (tensors or mapped
//! checkpoint views, [`weights`]): the inference hot path (f32 tensors on the CPU that track no
//! gradient), and the forward and backward kernels of the training ops for frozen parts
//! ([`crate::model::autograd`]). All the crate's `unsafe` arithmetic lives here; mapping
//! checkpoint files and releasing their pages is in `model/weights.rs` and `model/weight.rs`.
//!
//! Each inference function returns `Ok(None)` when its inputs don't qualify, and the caller then
//! takes the plain tensor-op path, which stays the reference (and the path for other devices,
//! dtypes and trainable weights). The kernels compute the same operations in the same order as
//! that path, with the `gemm` crate's kernels that candle's CPU matmul uses, but with each small
//! matmul running on one thread inside a task of the thread pool instead of split across all
//! threads.
//!
//! - [`activation`]: the gated MLPs' activations;
//! - [`gemm`]: tensor data locks, thread-pool tasks, scratch space, matrix products, `x·Wᵀ`;
//! - [`norm`]: RMSNorm rows forward and backward;
//! - [`attention`]: scaled dot-product attention, and a frozen attention block's passes;
//! - [`experts`]: SwiGLU experts on their routed tokens, forward and backward;
//! - [`weights`]: weight data read in place, half-precision tiles converted to f32.

pub mod activation;
pub mod attention;
pub mod experts;
pub mod gemm;
pub mod norm;
pub mod weights;

#[cfg(test)]
mod tests;
