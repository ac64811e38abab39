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
pub mod layernorm;
mod layout;
mod matmul;
pub mod maxpool;
mod pixel_pairs;
mod stem_grad;
#[cfg(test)]
mod testing;
mod threads;
mod winograd;

pub use act::{add_relu, relu};
pub use conv::{conv2d, conv2d_fused, set_tap_conv};
pub use denormals::flush_denormals;
pub use depthwise::depthwise_conv2d;
pub use direct::set_direct_conv;
pub use frozen::{kept_pair, set_weight_reuse, with_frozen_weights};
pub use layout::{instruction_sets, set_avx512};
pub use maxpool::max_pool2d;
pub use pixel_pairs::set_pixel_pairs;
pub use threads::{on_pool_thread, recv_cooperatively};
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

static CUDNN_OPS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns robustlens's cuDNN ops on or off for the process (on by default in a `cudnn` build):
/// the convolutions, max pooling, ReLU and add-and-ReLU, and training-mode BatchNorm. Off,
/// CUDA tensors run candle's own ops (its `conv2d`, whose backward computes both gradients
/// always, and chains of element-wise kernels). A diagnostic switch: `ROBUSTLENS_CUDNN=0`.
pub fn set_cudnn(enabled: bool) {
    CUDNN_OPS.store(enabled, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the cuDNN ops run on these tensors: a build with the `cudnn` feature, the ops on
/// (see [`set_cudnn`]), and f32 tensors on a CUDA device.
pub(crate) fn on_cudnn_f32(ts: &[&candle_core::Tensor]) -> bool {
    cfg!(feature = "cudnn")
        && CUDNN_OPS.load(std::sync::atomic::Ordering::Relaxed)
        && ts
            .iter()
            .all(|t| t.device().is_cuda() && t.dtype() == candle_core::DType::F32)
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

#[cfg(test)]
mod backward_tests {
    use candle_core::{Device, Tensor, Var};

    fn var(v: &[f32]) -> Var {
        Var::from_slice(v, v.len(), &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_vec1().unwrap()
    }

    #[test]
    fn the_first_gradient_to_reach_a_tensor_is_stored_as_it_is() {
        // The vendored candle-core's change (vendor/candle-core/ROBUSTLENS-PATCH.md): a
        // gradient of -0 stays -0, where candle 0.11.1 added it to a zero tensor (+0).
        let x = var(&[1.0, 2.0]);
        let w = Tensor::new(&[-0.0f32, 3.0], &Device::Cpu).unwrap();
        let g = (x.as_tensor() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gx = values(g.get(x.as_tensor()).unwrap());
        assert_eq!(gx, [0.0, 3.0]);
        assert!(
            gx[0].is_sign_negative(),
            "candle-core without the patch: {gx:?}"
        );
    }

    #[test]
    fn gradients_from_several_uses_are_summed_with_their_signs() {
        let (x, y) = (var(&[1.5, -2.0]), var(&[0.5, 4.0]));
        let (xt, yt) = (x.as_tensor(), y.as_tensor());
        // x + x, x * y, y - x, -x, x / y: d/dx = 2 + y - 1 - 1 + 1/y; d/dy = x + 1 - x/y²
        let terms = [
            (xt + xt).unwrap(),
            (xt * yt).unwrap(),
            (yt - xt).unwrap(),
            xt.neg().unwrap(),
            (xt / yt).unwrap(),
        ];
        let loss = terms
            .iter()
            .fold(
                Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap(),
                |a, t| (a + t).unwrap(),
            )
            .sum_all()
            .unwrap();
        let g = loss.backward().unwrap();
        let (gx, gy) = (values(g.get(xt).unwrap()), values(g.get(yt).unwrap()));
        for i in 0..2 {
            let (xv, yv) = ([1.5f32, -2.0][i], [0.5f32, 4.0][i]);
            let want_x = 2.0 + yv - 1.0 - 1.0 + 1.0 / yv;
            let want_y = xv + 1.0 - xv / (yv * yv);
            assert!(
                (gx[i] - want_x).abs() <= 1e-6 * want_x.abs().max(1.0),
                "{gx:?}"
            );
            assert!(
                (gy[i] - want_y).abs() <= 1e-6 * want_y.abs().max(1.0),
                "{gy:?}"
            );
        }
        // a tensor reached once through a subtraction gets the negated gradient
        let g = (yt - xt).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(values(g.get(xt).unwrap()), [-1.0, -1.0]);
        assert_eq!(values(g.get(yt).unwrap()), [1.0, 1.0]);
    }
}
