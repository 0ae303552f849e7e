//! Training ops with hand-written backward passes (candle custom ops, CPU and f32).
//!
//! - The frozen-part ops: while adapters are trained, most of the model is frozen, and candle's
//!   composite ops would compute gradients nobody needs (for frozen weights) through dozens of
//!   small ops. [`FrozenMatmul`], [`FrozenRmsNorm`], [`FrozenAttention`] and [`FrozenExperts`]
//!   each run one frozen part as one op whose backward pass gives only the gradients that flow
//!   on (to the input, and to the routing weights for the experts). The building blocks of
//!   [`crate::model::layers`] choose them while training on the CPU.
//! - The fused ops for training the demo model from scratch: [`cross_entropy_rows`] (and its
//!   mean, [`cross_entropy`]), [`rms_norm`] with a trainable weight, [`causal_softmax`] over
//!   attention scores, and [`softmax_detached_max`].
//!
//! Every forward pass runs on [`crate::model::kernels`] or computes exactly what the layers'
//! tensor path computes (tests compare values and gradients with the composite versions).

pub mod attention;
pub mod experts;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod softmax;
pub mod storage;

pub use attention::FrozenAttention;
pub use experts::FrozenExperts;
pub use loss::{cross_entropy, cross_entropy_rows};
pub use matmul::FrozenMatmul;
pub use norm::{FrozenRmsNorm, rms_norm};
pub use softmax::{causal_softmax, softmax_detached_max};

#[cfg(test)]
mod tests;
