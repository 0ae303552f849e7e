//! Reading the f32 data of the CPU storages candle hands to custom ops.

use candle_core::{CpuStorage, Layout, Tensor, bail};

/// The contiguous f32 data of a CPU storage.
pub(crate) fn f32_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => bail!("expected contiguous f32 data"),
    }
}

/// The contiguous f32 data of a CPU storage, naming the op `what` in errors.
pub(crate) fn f32s<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{what}: f32 tensors only")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{what}: the input must be contiguous"),
    }
}

/// A tensor's values, flattened.
pub(crate) fn host_f32(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}
