//! The convolution ops on CUDA through cuDNN (the `cudnn` cargo feature): forward,
//! backward-data (the input gradient) and backward-filter (the weight gradient), each run
//! only when autograd asks for it (see [`crate::ops::conv`]'s op, whose `bwd` skips the gradients
//! of inputs that are not tracked).
//!
//! - **Algorithms** are chosen once per shape by cuDNN's `Find` (it times every algorithm, as
//!   PyTorch's `torch.backends.cudnn.benchmark = True`) and cached for the process.
//! - **TF32** is off unless [`crate::device::set_tf32`] turns it on (`--tf32`): the
//!   convolutions then run in `CUDNN_FMA_MATH` (plain f32), as PyTorch does with
//!   `torch.backends.cudnn.allow_tf32 = False`.
//! - **Determinism:** cuDNN's fastest algorithms may sum in an order that changes from run to
//!   run (`CUDNN_NON_DETERMINISTIC` in its results: in practice some backward-filter and
//!   backward-data algorithms). [`crate::device::set_deterministic`] (`--deterministic`)
//!   restricts the choice to deterministic ones.

use super::{handle, view, wrap, Handle};
use crate::ops::layout::Geometry;
use candle_core::cuda_backend::cudarc::cudnn::{result, sys};
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut};
use candle_core::cuda_backend::{CudaDevice, DeviceId};
use candle_core::{CudaStorage, Layout, Result};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

/// The descriptors of one convolution: input, filter, output, convolution (f32, NCHW).
struct Descriptors {
    x: sys::cudnnTensorDescriptor_t,
    w: sys::cudnnFilterDescriptor_t,
    y: sys::cudnnTensorDescriptor_t,
    conv: sys::cudnnConvolutionDescriptor_t,
}

impl Drop for Descriptors {
    fn drop(&mut self) {
        // SAFETY: each created once below (null when its creation failed).
        unsafe {
            if !self.x.is_null() {
                let _ = result::destroy_tensor_descriptor(self.x);
            }
            if !self.y.is_null() {
                let _ = result::destroy_tensor_descriptor(self.y);
            }
            if !self.w.is_null() {
                let _ = result::destroy_filter_descriptor(self.w);
            }
            if !self.conv.is_null() {
                let _ = result::destroy_convolution_descriptor(self.conv);
            }
        }
    }
}

fn dims(v: [usize; 4]) -> [std::ffi::c_int; 4] {
    v.map(|d| d as std::ffi::c_int)
}

impl Descriptors {
    fn new(g: &Geometry, math: sys::cudnnMathType_t) -> Result<Descriptors> {
        use sys::cudnnDataType_t::CUDNN_DATA_FLOAT as F32;
        use sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW as NCHW;
        let mut d = Descriptors {
            x: std::ptr::null_mut(),
            w: std::ptr::null_mut(),
            y: std::ptr::null_mut(),
            conv: std::ptr::null_mut(),
        };
        d.x = result::create_tensor_descriptor().map_err(wrap)?;
        d.y = result::create_tensor_descriptor().map_err(wrap)?;
        d.w = result::create_filter_descriptor().map_err(wrap)?;
        d.conv = result::create_convolution_descriptor().map_err(wrap)?;
        let (p, s) = (g.pad as std::ffi::c_int, g.stride as std::ffi::c_int);
        // SAFETY: freshly created descriptors.
        unsafe {
            result::set_tensor4d_descriptor(d.x, NCHW, F32, dims([g.n, g.c, g.h, g.w]))
                .map_err(wrap)?;
            result::set_tensor4d_descriptor(d.y, NCHW, F32, dims([g.n, g.o, g.ho, g.wo]))
                .map_err(wrap)?;
            result::set_filter4d_descriptor(d.w, F32, NCHW, dims([g.o, g.c, g.k, g.k]))
                .map_err(wrap)?;
            result::set_convolution2d_descriptor(
                d.conv,
                p,
                p,
                s,
                s,
                1,
                1,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                F32,
            )
            .map_err(wrap)?;
            result::set_convolution_math_type(d.conv, math).map_err(wrap)?;
        }
        Ok(d)
    }
}

/// Which of the three passes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Pass {
    Forward,
    Data,
    Filter,
}

/// The algorithm chosen for one pass of one shape, with its math type.
#[derive(Clone, Copy)]
enum Algo {
    Forward(sys::cudnnConvolutionFwdAlgo_t),
    Data(sys::cudnnConvolutionBwdDataAlgo_t),
    Filter(sys::cudnnConvolutionBwdFilterAlgo_t),
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    device: DeviceId,
    pass: Pass,
    g: Geometry,
    tf32: bool,
    deterministic: bool,
}

static ALGOS: Mutex<Option<HashMap<Key, (Algo, sys::cudnnMathType_t)>>> = Mutex::new(None);

/// The math type the settings allow: plain f32 FMA without TF32 (PyTorch's
/// `allow_tf32 = False`), cuDNN's default (tensor cores, TF32 for f32) with it.
fn settings() -> (bool, bool, sys::cudnnMathType_t) {
    let tf32 = crate::device::tf32();
    let math = if tf32 {
        sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
    } else {
        sys::cudnnMathType_t::CUDNN_FMA_MATH
    };
    (tf32, crate::device::deterministic(), math)
}

/// The first (fastest) of cuDNN's timed results that succeeded and, when asked, is
/// deterministic; its math type (plain FMA without TF32, as PyTorch forces it).
fn choose<T: Copy>(
    results: &[(
        T,
        sys::cudnnStatus_t,
        sys::cudnnDeterminism_t,
        sys::cudnnMathType_t,
    )],
    deterministic: bool,
    tf32: bool,
    pass: Pass,
    g: &Geometry,
) -> Result<(T, sys::cudnnMathType_t)> {
    results
        .iter()
        .find(|r| {
            r.1 == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS
                && (!deterministic || r.2 == sys::cudnnDeterminism_t::CUDNN_DETERMINISTIC)
        })
        .map(|r| {
            let math = if tf32 {
                r.3
            } else {
                sys::cudnnMathType_t::CUDNN_FMA_MATH
            };
            (r.0, math)
        })
        .ok_or_else(|| {
            wrap(format!(
                "no {}algorithm for the {pass:?} pass of {g:?}",
                if deterministic { "deterministic " } else { "" }
            ))
        })
}

/// The cached algorithm of `pass` for `g`, found (timed) on first use.
fn algorithm(
    dev: &CudaDevice,
    h: &Handle,
    pass: Pass,
    g: &Geometry,
) -> Result<(Algo, sys::cudnnMathType_t)> {
    let (tf32, deterministic, math) = settings();
    let key = Key {
        device: dev.id(),
        pass,
        g: *g,
        tf32,
        deterministic,
    };
    if let Some(hit) = ALGOS
        .lock()
        .map_err(|_| wrap("algorithm cache poisoned"))?
        .get_or_insert_with(HashMap::new)
        .get(&key)
    {
        return Ok(*hit);
    }
    let d = Descriptors::new(g, math)?;
    const MAX: usize = 16;
    let mut n: std::ffi::c_int = 0;
    // cuDNN's Find for one pass: times every algorithm (allocating its own buffers), then the
    // choice among the results (the three passes' result structs share these fields).
    macro_rules! find {
        ($find:ident, $perf:ty, $variant:ident, $($desc:expr),+) => {{
            let mut r: [$perf; MAX] = std::mem::zeroed();
            sys::$find(h.0, $($desc),+, MAX as _, &mut n, r.as_mut_ptr())
                .result()
                .map_err(wrap)?;
            let v: Vec<_> = r[..n as usize]
                .iter()
                .map(|p| (p.algo, p.status, p.determinism, p.mathType))
                .collect();
            let (a, m) = choose(&v, deterministic, tf32, pass, g)?;
            (Algo::$variant(a), m)
        }};
    }
    // SAFETY: a live handle and descriptors; the result arrays hold MAX entries.
    let found = unsafe {
        match pass {
            Pass::Forward => find!(
                cudnnFindConvolutionForwardAlgorithm,
                sys::cudnnConvolutionFwdAlgoPerf_t,
                Forward,
                d.x,
                d.w,
                d.conv,
                d.y
            ),
            Pass::Data => find!(
                cudnnFindConvolutionBackwardDataAlgorithm,
                sys::cudnnConvolutionBwdDataAlgoPerf_t,
                Data,
                d.w,
                d.y,
                d.conv,
                d.x
            ),
            Pass::Filter => find!(
                cudnnFindConvolutionBackwardFilterAlgorithm,
                sys::cudnnConvolutionBwdFilterAlgoPerf_t,
                Filter,
                d.x,
                d.y,
                d.conv,
                d.w
            ),
        }
    };
    tracing::debug!(?pass, ?g, tf32, deterministic, "cuDNN algorithm chosen");
    ALGOS
        .lock()
        .map_err(|_| wrap("algorithm cache poisoned"))?
        .get_or_insert_with(HashMap::new)
        .insert(key, found);
    Ok(found)
}

/// Runs `pass` of the convolution in geometry `g`: `a` and `b` are the inputs (forward: x,
/// w; data: dy, w; filter: x, dy), the result has `out_len` values.
fn run(
    pass: Pass,
    g: &Geometry,
    (sa, la): (&CudaStorage, &Layout),
    (sb, lb): (&CudaStorage, &Layout),
    out_len: usize,
) -> Result<CudaStorage> {
    let dev = sa.device.clone();
    let h = handle(&dev)?;
    let (algo, math) = algorithm(&dev, &h, pass, g)?;
    let d = Descriptors::new(g, math)?;
    let stream = dev.cuda_stream();
    let (a, b) = (
        view(sa, la, "conv2d", "input")?,
        view(sb, lb, "conv2d", "input")?,
    );
    // SAFETY: every buffer is written by cuDNN below before it is read (beta = 0).
    let mut out = unsafe { stream.alloc::<f32>(out_len) }.map_err(wrap)?;
    let (alpha, beta) = (1f32, 0f32);
    let alpha = &alpha as *const f32 as *const c_void;
    let beta = &beta as *const f32 as *const c_void;
    // SAFETY: the descriptors match the buffers' shapes (checked by the callers against `g`)
    // and data type; the workspace is as large as cuDNN asks for this algorithm.
    unsafe {
        let ws_size = match algo {
            Algo::Forward(a) => {
                result::get_convolution_forward_workspace_size(h.0, d.x, d.w, d.conv, d.y, a)
            }
            Algo::Data(a) => {
                result::get_convolution_backward_data_workspace_size(h.0, d.w, d.y, d.conv, d.x, a)
            }
            Algo::Filter(a) => result::get_convolution_backward_filter_workspace_size(
                h.0, d.x, d.y, d.conv, d.w, a,
            ),
        }
        .map_err(wrap)?;
        let mut ws = stream.alloc::<u8>(ws_size.max(1)).map_err(wrap)?;
        let (pa, _ga) = a.device_ptr(&stream);
        let (pb, _gb) = b.device_ptr(&stream);
        let (po, _go) = out.device_ptr_mut(&stream);
        let (pw, _gw) = ws.device_ptr_mut(&stream);
        let (pa, pb) = (pa as *const c_void, pb as *const c_void);
        let (po, pw) = (po as *mut c_void, pw as *mut c_void);
        match algo {
            Algo::Forward(al) => result::convolution_forward(
                h.0, alpha, d.x, pa, d.w, pb, d.conv, al, pw, ws_size, beta, d.y, po,
            ),
            Algo::Data(al) => result::convolution_backward_data(
                h.0, alpha, d.w, pb, d.y, pa, d.conv, al, pw, ws_size, beta, d.x, po,
            ),
            Algo::Filter(al) => result::convolution_backward_filter(
                h.0, alpha, d.x, pa, d.y, pb, d.conv, al, pw, ws_size, beta, d.w, po,
            ),
        }
        .map_err(wrap)?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// `conv(x, w)`: `[n, o, ho, wo]`.
pub(in crate::ops) fn forward(
    g: &Geometry,
    x: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    run(Pass::Forward, g, x, w, g.n * g.o * g.ho * g.wo)
}

/// The input gradient from the output gradient `dy` and the weight: `[n, c, h, w]`.
pub(in crate::ops) fn input_grad(
    g: &Geometry,
    dy: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    run(Pass::Data, g, dy, w, g.n * g.c * g.h * g.w)
}

/// The weight gradient from the input and the output gradient `dy`: `[o, c, k, k]`.
pub(in crate::ops) fn weight_grad(
    g: &Geometry,
    x: (&CudaStorage, &Layout),
    dy: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    run(Pass::Filter, g, x, dy, g.o * g.c * g.k * g.k)
}
