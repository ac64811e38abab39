//! Kernels that candle lacks or gets wrong, as candle custom ops with their own backward.

pub mod act;
pub mod batchnorm;
pub mod block;
pub mod conv;
pub mod maxpool;

pub use act::{add_relu, relu};
pub use conv::{conv2d, conv2d_fused};
pub use maxpool::max_pool2d;

/// The f32 values of a contiguous CPU tensor, for the custom ops; `op` and `what` name it in
/// errors.
pub(crate) fn cpu_f32<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    op: &str,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let v = match s {
        candle_core::CpuStorage::F32(v) => v,
        _ => candle_core::bail!("{op}: {what} must be f32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: {what} must be contiguous"),
    }
}
