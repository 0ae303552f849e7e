//! [`Path`]: which of its three implementations a building block's forward runs.

use candle_core::Tensor;

/// How a building block's forward runs on a given input. Each block decides it in one place
/// (its `path` function) and then runs it.
pub(crate) enum Path<Frozen> {
    /// The direct f32 CPU kernel of [`crate::model::kernels`] ran (an f32 CPU input that tracks
    /// no gradient, frozen f32 weights): its output.
    Kernel(Tensor),
    /// The frozen-part training op of [`crate::model::autograd`] (the input tracks gradients,
    /// the weights are frozen f32 on the CPU).
    Frozen(Frozen),
    /// Candle tensor ops: the reference, and the path for other devices, dtypes and trainable
    /// weights.
    TensorOps,
}
