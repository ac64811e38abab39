//! robustlens's ops on CUDA through cuDNN (the `cudnn` cargo feature): the convolutions
//! ([`conv`]) and the layers around them ([`layers`]: max pooling, ReLU, the residual
//! add-and-ReLU, training-mode BatchNorm). The ops in [`crate::ops`] call these from their
//! `cuda_fwd`; their CPU kernels are unchanged.
//!
//! cuDNN handles are not thread-safe: each thread keeps its own, per device, on candle's
//! stream for that device, so the ops are ordered with candle's own kernels.

mod conv;
mod layers;

pub(in crate::ops) use conv::{forward, input_grad, weight_grad};
pub(in crate::ops) use layers::{
    add_relu, batch_norm_train, batch_norm_train_grad, max_pool, max_pool_grad, relu, relu_grad,
};

use candle_core::cuda_backend::cudarc::cudnn::{result, sys};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
use candle_core::cuda_backend::{CudaDevice, DeviceId};
use candle_core::{CudaStorage, Layout, Result};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// A cuDNN handle on one device's stream.
struct Handle(sys::cudnnHandle_t);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by `create_handle`, destroyed once.
        let _ = unsafe { result::destroy_handle(self.0) };
    }
}

thread_local! {
    static HANDLES: RefCell<HashMap<DeviceId, Rc<Handle>>> = RefCell::new(HashMap::new());
}

fn handle(dev: &CudaDevice) -> Result<Rc<Handle>> {
    HANDLES.with(|hs| {
        if let Some(h) = hs.borrow().get(&dev.id()) {
            return Ok(h.clone());
        }
        let stream = dev.cuda_stream();
        stream.context().bind_to_thread().map_err(wrap)?;
        let h = Handle(result::create_handle().map_err(wrap)?);
        // SAFETY: a live handle and candle's live stream for this device.
        unsafe { result::set_stream(h.0, stream.cu_stream() as sys::cudaStream_t) }
            .map_err(wrap)?;
        let h = Rc::new(h);
        hs.borrow_mut().insert(dev.id(), h.clone());
        Ok(h)
    })
}

fn wrap(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("cuDNN: {e}"))
}

/// The f32 values of a contiguous CUDA tensor; `op` and `what` name it in errors.
fn view<'a>(s: &'a CudaStorage, l: &Layout, op: &str, what: &str) -> Result<CudaView<'a, f32>> {
    let slice: &CudaSlice<f32> = s.as_cuda_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(slice.slice(a..b)),
        None => candle_core::bail!("{op} (cuDNN): {what} must be contiguous"),
    }
}
