//! Kernels that candle lacks or gets wrong, as candle custom ops with their own backward.

pub mod act;
pub mod batchnorm;
pub mod block;
pub mod conv;
#[cfg(feature = "cudnn")]
mod cudnn;
mod denormals;
pub mod depthwise;
mod direct;
mod frozen;
pub mod grad_sink;
pub mod layernorm;
mod layout;
mod matmul;
pub mod maxpool;
#[cfg(test)]
mod testing;
mod winograd;

pub use act::{add_relu, relu};
pub use conv::{conv2d, conv2d_fused, set_cudnn};
pub use denormals::flush_denormals;
pub use depthwise::depthwise_conv2d;
pub use direct::set_direct_conv;
pub use frozen::{set_weight_reuse, with_frozen_weights};
pub use layout::set_avx512;
pub use maxpool::max_pool2d;
pub use winograd::set_winograd;

/// A raw pointer that may cross to rayon's threads, for kernels whose parallel tasks each
/// write their own disjoint part of one output buffer.
pub(crate) struct SendPtr<T = f32>(pub(crate) *mut T);
// SAFETY: only used to hand disjoint parts of one buffer to parallel tasks.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the whole `SendPtr`, not its field).
    pub(crate) fn get(self) -> *mut T {
        self.0
    }

    /// The `len` elements from element `start`, as a mutable slice.
    ///
    /// # Safety
    /// `start + len` lies inside the buffer, which outlives the slice, and no other live
    /// reference covers those elements.
    pub(crate) unsafe fn slice<'a>(self, start: usize, len: usize) -> &'a mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

/// Whether every tensor is an f32 tensor on the CPU, where the custom ops run.
pub(crate) fn on_cpu_f32(ts: &[&candle_core::Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32)
}

/// Runs `f` on a CPU tensor's f32 values, read in place (no copy); `op` and `what` name it
/// in errors.
pub(crate) fn with_cpu_f32<R>(
    t: &candle_core::Tensor,
    op: &str,
    what: &str,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (st, l) = t.storage_and_layout();
    match &*st {
        candle_core::Storage::Cpu(cs) => f(cpu_f32(cs, l, op, what)?),
        _ => candle_core::bail!("{op}: {what} must be on the CPU"),
    }
}

/// What a custom op's forward kept for its backward (argmax, statistics, activations).
pub(crate) fn kept<T: Clone>(
    slot: &std::sync::Mutex<Option<T>>,
    what: &str,
) -> candle_core::Result<T> {
    slot.lock()
        .ok()
        .and_then(|g| g.clone())
        .ok_or_else(|| candle_core::Error::Msg(format!("{what} not recorded by the forward pass")))
}

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
