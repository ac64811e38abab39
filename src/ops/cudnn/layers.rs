//! The layers around the convolutions on CUDA through cuDNN, each one call each way where
//! candle's CUDA backend runs a chain of element-wise kernels (each allocating):
//!
//! - **max pooling** (`CUDNN_POOLING_MAX_DETERMINISTIC`, padding never chosen, NaN
//!   propagated, as `torch.nn.MaxPool2d`), its backward from the input, output and output
//!   gradient;
//! - **ReLU** and the residual **add-and-ReLU** (an `OpTensor` add, then the activation in
//!   place), their backward from the output (`g` where `y > 0`, as PyTorch's
//!   `threshold_backward`);
//! - **training-mode BatchNorm** (`CUDNN_BATCHNORM_SPATIAL`: statistics over N, H and W per
//!   channel), which also updates the running statistics as torch does (momentum 0.1, the
//!   variance unbiased), and its backward: the input gradient and the gradients of the scale
//!   and shift in one call, from the mean and inverse standard deviation the forward saved.
//!
//! All in f32, NCHW, contiguous; the scaling factors `alpha = 1`, `beta = 0` (the outputs are
//! fresh buffers, which cuDNN does not read when `beta` is 0).

use super::{handle, view, wrap, Handle};
use candle_core::cuda_backend::cudarc::cudnn::{result, sys};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use candle_core::cuda_backend::CudaDevice;
use candle_core::{CudaStorage, Layout, Result};
use std::ffi::{c_int, c_void};
use std::rc::Rc;
use std::sync::Arc;

static ONE: f32 = 1.0;
static ZERO: f32 = 0.0;

fn one() -> *const c_void {
    &ONE as *const f32 as *const c_void
}

fn zero() -> *const c_void {
    &ZERO as *const f32 as *const c_void
}

/// An f32 NCHW tensor descriptor, destroyed on drop.
struct TensorDesc(sys::cudnnTensorDescriptor_t);

impl TensorDesc {
    fn new([n, c, h, w]: [usize; 4]) -> Result<TensorDesc> {
        let d = TensorDesc(result::create_tensor_descriptor().map_err(wrap)?);
        let dims = [n, c, h, w].map(|v| v as c_int);
        // SAFETY: a freshly created descriptor.
        unsafe {
            result::set_tensor4d_descriptor(
                d.0,
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                dims,
            )
        }
        .map_err(wrap)?;
        Ok(d)
    }

    /// The descriptor of an element-wise op's operands: the layout's four dimensions, or
    /// `[1, 1, 1, len]` for other ranks.
    fn elementwise(l: &Layout) -> Result<TensorDesc> {
        match l.shape().dims4() {
            Ok((n, c, h, w)) => TensorDesc::new([n, c, h, w]),
            Err(_) => TensorDesc::new([1, 1, 1, l.shape().elem_count()]),
        }
    }
}

impl Drop for TensorDesc {
    fn drop(&mut self) {
        // SAFETY: created once above, destroyed once.
        let _ = unsafe { result::destroy_tensor_descriptor(self.0) };
    }
}

/// A cuDNN descriptor of another kind, destroyed on drop by its `destroy` function.
struct Desc<T: Copy> {
    raw: T,
    destroy: unsafe fn(T) -> sys::cudnnStatus_t,
}

impl<T: Copy> Drop for Desc<T> {
    fn drop(&mut self) {
        // SAFETY: created once by `Desc::new`, destroyed once.
        let _ = unsafe { (self.destroy)(self.raw) };
    }
}

impl<T: Copy> Desc<T> {
    /// Creates a descriptor with `create`, to be set up by `set`.
    fn new(
        create: unsafe fn(*mut T) -> sys::cudnnStatus_t,
        destroy: unsafe fn(T) -> sys::cudnnStatus_t,
        set: impl FnOnce(T) -> sys::cudnnStatus_t,
    ) -> Result<Desc<T>> {
        let mut raw = std::mem::MaybeUninit::<T>::uninit();
        // SAFETY: `create` writes the new descriptor on success.
        unsafe { create(raw.as_mut_ptr()) }.result().map_err(wrap)?;
        // SAFETY: written by the successful `create`.
        let d = Desc {
            raw: unsafe { raw.assume_init() },
            destroy,
        };
        set(d.raw).result().map_err(wrap)?;
        Ok(d)
    }
}

/// ReLU, NaN not propagated (`max(x, 0)` as the CPU's kernel).
fn relu_desc() -> Result<Desc<sys::cudnnActivationDescriptor_t>> {
    Desc::new(
        sys::cudnnCreateActivationDescriptor,
        sys::cudnnDestroyActivationDescriptor,
        |d| {
            // SAFETY: a freshly created descriptor.
            unsafe {
                sys::cudnnSetActivationDescriptor(
                    d,
                    sys::cudnnActivationMode_t::CUDNN_ACTIVATION_RELU,
                    sys::cudnnNanPropagation_t::CUDNN_NOT_PROPAGATE_NAN,
                    0.0,
                )
            }
        },
    )
}

/// Square max pooling.
fn pool_desc(k: usize, s: usize, p: usize) -> Result<Desc<sys::cudnnPoolingDescriptor_t>> {
    let (k, s, p) = (k as c_int, s as c_int, p as c_int);
    Desc::new(
        sys::cudnnCreatePoolingDescriptor,
        sys::cudnnDestroyPoolingDescriptor,
        |d| {
            // SAFETY: a freshly created descriptor.
            unsafe {
                sys::cudnnSetPooling2dDescriptor(
                    d,
                    sys::cudnnPoolingMode_t::CUDNN_POOLING_MAX_DETERMINISTIC,
                    sys::cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN,
                    k,
                    k,
                    p,
                    p,
                    s,
                    s,
                )
            }
        },
    )
}

/// One cuDNN call's device, this thread's handle on it, and candle's stream.
struct Call {
    dev: CudaDevice,
    h: Rc<Handle>,
    stream: Arc<CudaStream>,
}

impl Call {
    /// On the device of `x`.
    fn on(x: &CudaStorage) -> Result<Call> {
        let dev = x.device.clone();
        Ok(Call {
            h: handle(&dev)?,
            stream: dev.cuda_stream(),
            dev,
        })
    }

    /// A fresh output buffer of `len` values (cuDNN writes all of it).
    fn output(&self, len: usize) -> Result<CudaSlice<f32>> {
        // SAFETY: every caller has cuDNN write all `len` values before anything reads them.
        unsafe { self.stream.alloc::<f32>(len) }.map_err(wrap)
    }

    /// A result buffer as candle's storage.
    fn storage(&self, s: CudaSlice<f32>) -> CudaStorage {
        CudaStorage::wrap_cuda_slice(s, self.dev.clone())
    }
}

/// An error unless the layouts `a` and `b` (named `what`) have one shape.
fn same_shape(op: &str, what: [&str; 2], a: &Layout, b: &Layout) -> Result<()> {
    if a.shape() != b.shape() {
        candle_core::bail!(
            "{op} (cuDNN): {} {:?} vs {} {:?}",
            what[0],
            a.shape(),
            what[1],
            b.shape()
        );
    }
    Ok(())
}

/// Max pooling of `x` `[n, c, h, w]` into `[n, c, ho, wo]` (the caller's floor-mode size,
/// which is cuDNN's).
pub(in crate::ops) fn max_pool(
    (sx, lx): (&CudaStorage, &Layout),
    (k, s, p): (usize, usize, usize),
    (ho, wo): (usize, usize),
) -> Result<CudaStorage> {
    let (n, c, h, w) = lx.shape().dims4()?;
    let call = Call::on(sx)?;
    let (hd, stream) = (&call.h, &call.stream);
    let pd = pool_desc(k, s, p)?;
    let (xd, yd) = (
        TensorDesc::new([n, c, h, w])?,
        TensorDesc::new([n, c, ho, wo])?,
    );
    let x = view(sx, lx, "max_pool2d", "input")?;
    let mut y = call.output(n * c * ho * wo)?;
    {
        let (px, _gx) = x.device_ptr(stream);
        let (py, _gy) = y.device_ptr_mut(stream);
        // SAFETY: the descriptors match the buffers' shapes and type.
        unsafe {
            sys::cudnnPoolingForward(
                hd.0,
                pd.raw,
                one(),
                xd.0,
                px as *const c_void,
                zero(),
                yd.0,
                py as *mut c_void,
            )
        }
        .result()
        .map_err(wrap)?;
    }
    Ok(call.storage(y))
}

/// The input gradient of [`max_pool`] from its input `x`, output `y` and output gradient
/// `dy`: each output's gradient goes to the element its window chose.
pub(in crate::ops) fn max_pool_grad(
    (sx, lx): (&CudaStorage, &Layout),
    (sy, ly): (&CudaStorage, &Layout),
    (sg, lg): (&CudaStorage, &Layout),
    (k, s, p): (usize, usize, usize),
) -> Result<CudaStorage> {
    let (n, c, h, w) = lx.shape().dims4()?;
    let (_, _, ho, wo) = ly.shape().dims4()?;
    same_shape("max_pool2d backward", ["gradient", "output"], lg, ly)?;
    let call = Call::on(sx)?;
    let (hd, stream) = (&call.h, &call.stream);
    let pd = pool_desc(k, s, p)?;
    let (xd, yd) = (
        TensorDesc::new([n, c, h, w])?,
        TensorDesc::new([n, c, ho, wo])?,
    );
    let x = view(sx, lx, "max_pool2d backward", "input")?;
    let y = view(sy, ly, "max_pool2d backward", "output")?;
    let g = view(sg, lg, "max_pool2d backward", "gradient")?;
    let mut dx = call.output(n * c * h * w)?;
    {
        let (px, _gx) = x.device_ptr(stream);
        let (py, _gy) = y.device_ptr(stream);
        let (pg, _gg) = g.device_ptr(stream);
        let (pdx, _gdx) = dx.device_ptr_mut(stream);
        // SAFETY: the descriptors match the buffers' shapes and type (y and dy share one).
        unsafe {
            sys::cudnnPoolingBackward(
                hd.0,
                pd.raw,
                one(),
                yd.0,
                py as *const c_void,
                yd.0,
                pg as *const c_void,
                xd.0,
                px as *const c_void,
                zero(),
                xd.0,
                pdx as *mut c_void,
            )
        }
        .result()
        .map_err(wrap)?;
    }
    Ok(call.storage(dx))
}

/// `max(x, 0)`.
pub(in crate::ops) fn relu((sx, lx): (&CudaStorage, &Layout)) -> Result<CudaStorage> {
    let call = Call::on(sx)?;
    let (hd, stream) = (&call.h, &call.stream);
    let ad = relu_desc()?;
    let d = TensorDesc::elementwise(lx)?;
    let x = view(sx, lx, "relu", "input")?;
    let mut y = call.output(lx.shape().elem_count())?;
    {
        let (px, _gx) = x.device_ptr(stream);
        let (py, _gy) = y.device_ptr_mut(stream);
        // SAFETY: one descriptor for two buffers of the same shape.
        unsafe {
            sys::cudnnActivationForward(
                hd.0,
                ad.raw,
                one(),
                d.0,
                px as *const c_void,
                zero(),
                d.0,
                py as *mut c_void,
            )
        }
        .result()
        .map_err(wrap)?;
    }
    Ok(call.storage(y))
}

/// `max(a + b, 0)` for `a`, `b` of one shape: an `OpTensor` add, then the ReLU in place.
pub(in crate::ops) fn add_relu(
    (sa, la): (&CudaStorage, &Layout),
    (sb, lb): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    same_shape("add_relu", ["left", "right"], la, lb)?;
    let call = Call::on(sa)?;
    let (hd, stream) = (&call.h, &call.stream);
    let ad = relu_desc()?;
    let od = Desc::new(
        sys::cudnnCreateOpTensorDescriptor,
        sys::cudnnDestroyOpTensorDescriptor,
        |d| {
            // SAFETY: a freshly created descriptor.
            unsafe {
                sys::cudnnSetOpTensorDescriptor(
                    d,
                    sys::cudnnOpTensorOp_t::CUDNN_OP_TENSOR_ADD,
                    sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                    sys::cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN,
                )
            }
        },
    )?;
    let d = TensorDesc::elementwise(la)?;
    let a = view(sa, la, "add_relu", "left")?;
    let b = view(sb, lb, "add_relu", "right")?;
    let mut y = call.output(la.shape().elem_count())?;
    {
        let (pa, _ga) = a.device_ptr(stream);
        let (pb, _gb) = b.device_ptr(stream);
        let (py, _gy) = y.device_ptr_mut(stream);
        let py = py as *mut c_void;
        // SAFETY: one descriptor for three buffers of the same shape; the activation runs
        // in place, which cuDNN allows.
        unsafe {
            sys::cudnnOpTensor(
                hd.0,
                od.raw,
                one(),
                d.0,
                pa as *const c_void,
                one(),
                d.0,
                pb as *const c_void,
                zero(),
                d.0,
                py,
            )
            .result()
            .map_err(wrap)?;
            sys::cudnnActivationForward(hd.0, ad.raw, one(), d.0, py, zero(), d.0, py)
                .result()
                .map_err(wrap)?;
        }
    }
    Ok(call.storage(y))
}

/// The input gradient of a ReLU from the output gradient `g` and the output `y`: `g` where
/// `y > 0`, else 0 (`y` stands in for the input, which has the same sign pattern).
pub(in crate::ops) fn relu_grad(
    (sg, lg): (&CudaStorage, &Layout),
    (sy, ly): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    same_shape("relu backward", ["gradient", "output"], lg, ly)?;
    let call = Call::on(sg)?;
    let (hd, stream) = (&call.h, &call.stream);
    let ad = relu_desc()?;
    let d = TensorDesc::elementwise(lg)?;
    let g = view(sg, lg, "relu backward", "gradient")?;
    let y = view(sy, ly, "relu backward", "output")?;
    let mut dx = call.output(lg.shape().elem_count())?;
    {
        let (pg, _gg) = g.device_ptr(stream);
        let (py, _gy) = y.device_ptr(stream);
        let (pdx, _gdx) = dx.device_ptr_mut(stream);
        // SAFETY: one descriptor for four buffers of the same shape.
        unsafe {
            sys::cudnnActivationBackward(
                hd.0,
                ad.raw,
                one(),
                d.0,
                py as *const c_void,
                d.0,
                pg as *const c_void,
                d.0,
                py as *const c_void,
                zero(),
                d.0,
                pdx as *mut c_void,
            )
        }
        .result()
        .map_err(wrap)?;
    }
    Ok(call.storage(dx))
}

/// What a training-mode BatchNorm's forward leaves besides its output.
pub(in crate::ops) struct BatchNormSaved {
    /// `[mean; 1 / sqrt(var + eps)]` per channel (`[2, C]`), for the backward.
    pub(in crate::ops) saved: CudaSlice<f32>,
    /// The updated `[running_mean; running_var]` (`[2, C]`).
    pub(in crate::ops) running: CudaSlice<f32>,
}

const BN_SPATIAL: sys::cudnnBatchNormMode_t = sys::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL;

/// Bytes from the start of a `[2, C]` f32 buffer to its second row.
fn row2(c: usize) -> u64 {
    (c * std::mem::size_of::<f32>()) as u64
}

/// Training-mode BatchNorm of `x` `[N, C, H, W]` with `gb` `[gamma; beta]` (`[2, C]`): the
/// output, and the saved statistics and updated running statistics of `running`
/// (`[running_mean; running_var]`, `[2, C]`, read, not written). `momentum` as torch's
/// (the new batch's weight).
pub(in crate::ops) fn batch_norm_train(
    (sx, lx): (&CudaStorage, &Layout),
    (sgb, lgb): (&CudaStorage, &Layout),
    (sr, lr): (&CudaStorage, &Layout),
    eps: f64,
    momentum: f64,
) -> Result<(CudaStorage, BatchNormSaved)> {
    let (n, c, h, w) = lx.shape().dims4()?;
    for (what, l) in [("weight and bias", lgb), ("running statistics", lr)] {
        if l.shape().elem_count() != 2 * c {
            candle_core::bail!(
                "batch norm (cuDNN): {c} channels but {what} {:?}",
                l.shape()
            );
        }
    }
    let call = Call::on(sx)?;
    let (hd, stream) = (&call.h, &call.stream);
    let (xd, bd) = (
        TensorDesc::new([n, c, h, w])?,
        TensorDesc::new([1, c, 1, 1])?,
    );
    let x = view(sx, lx, "batch norm", "input")?;
    let gb = view(sgb, lgb, "batch norm", "weight and bias")?;
    let mut running = stream
        .clone_dtod(&view(sr, lr, "batch norm", "running statistics")?)
        .map_err(wrap)?;
    let mut saved = call.output(2 * c)?;
    let mut y = call.output(n * c * h * w)?;
    {
        let (px, _gx) = x.device_ptr(stream);
        let (pgb, _ggb) = gb.device_ptr(stream);
        let (pr, _gr) = running.device_ptr_mut(stream);
        let (ps, _gs) = saved.device_ptr_mut(stream);
        let (py, _gy) = y.device_ptr_mut(stream);
        // SAFETY: the descriptors match the buffers; each `[2, C]` buffer holds two rows of
        // C values, the second `row2(c)` bytes after the first.
        unsafe {
            sys::cudnnBatchNormalizationForwardTraining(
                hd.0,
                BN_SPATIAL,
                one(),
                zero(),
                xd.0,
                px as *const c_void,
                xd.0,
                py as *mut c_void,
                bd.0,
                pgb as *const c_void,
                (pgb + row2(c)) as *const c_void,
                momentum,
                pr as *mut c_void,
                (pr + row2(c)) as *mut c_void,
                eps,
                ps as *mut c_void,
                (ps + row2(c)) as *mut c_void,
            )
        }
        .result()
        .map_err(wrap)?;
    }
    Ok((call.storage(y), BatchNormSaved { saved, running }))
}

/// The backward of [`batch_norm_train`] from its input `x`, the output gradient `dy`, `gb`
/// and what the forward saved (with the same `eps`): the input gradient `[N, C, H, W]` and
/// `[dgamma; dbeta]` (`[2, C]`).
pub(in crate::ops) fn batch_norm_train_grad(
    (sx, lx): (&CudaStorage, &Layout),
    (sg, lg): (&CudaStorage, &Layout),
    (sgb, lgb): (&CudaStorage, &Layout),
    saved: &CudaSlice<f32>,
    eps: f64,
) -> Result<(CudaStorage, CudaStorage)> {
    let (n, c, h, w) = lx.shape().dims4()?;
    if lg.shape() != lx.shape() || lgb.shape().elem_count() != 2 * c || saved.len() != 2 * c {
        candle_core::bail!(
            "batch norm backward (cuDNN): input {:?}, gradient {:?}, weight and bias {:?}, \
             {} saved statistics",
            lx.shape(),
            lg.shape(),
            lgb.shape(),
            saved.len()
        );
    }
    let call = Call::on(sx)?;
    let (hd, stream) = (&call.h, &call.stream);
    let (xd, bd) = (
        TensorDesc::new([n, c, h, w])?,
        TensorDesc::new([1, c, 1, 1])?,
    );
    let x = view(sx, lx, "batch norm backward", "input")?;
    let g = view(sg, lg, "batch norm backward", "gradient")?;
    let gb = view(sgb, lgb, "batch norm backward", "weight and bias")?;
    let mut dx = call.output(n * c * h * w)?;
    let mut dgb = call.output(2 * c)?;
    {
        let (px, _gx) = x.device_ptr(stream);
        let (pg, _gg) = g.device_ptr(stream);
        let (pgb, _ggb) = gb.device_ptr(stream);
        let (ps, _gs) = saved.device_ptr(stream);
        let (pdx, _gdx) = dx.device_ptr_mut(stream);
        let (pdgb, _gdgb) = dgb.device_ptr_mut(stream);
        // SAFETY: as in `batch_norm_train`; gamma is the first row of `gb`.
        unsafe {
            sys::cudnnBatchNormalizationBackward(
                hd.0,
                BN_SPATIAL,
                one(),
                zero(),
                one(),
                zero(),
                xd.0,
                px as *const c_void,
                xd.0,
                pg as *const c_void,
                xd.0,
                pdx as *mut c_void,
                bd.0,
                pgb as *const c_void,
                pdgb as *mut c_void,
                (pdgb + row2(c)) as *mut c_void,
                eps,
                ps as *const c_void,
                (ps + row2(c)) as *const c_void,
            )
        }
        .result()
        .map_err(wrap)?;
    }
    Ok((call.storage(dx), call.storage(dgb)))
}
