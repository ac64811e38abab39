//! # robustlens
//!
//! Train image classifiers whose explanations can be trusted: a trainable ResNet-18 that
//! matches torchvision, ImageNet weight loading (safetensors, `.pth`, Hugging Face hub),
//! atomic checkpoints and the building blocks for adversarial training and saliency.
//!
//! ```no_run
//! use robustlens::model::{ResNet18, Mode};
//! use candle_core::{Device, Tensor};
//!
//! # fn main() -> robustlens::Result<()> {
//! let device = Device::Cpu;
//! let model = ResNet18::new_random(3, 0, &device)?;
//! let images = Tensor::zeros((2, 3, 64, 64), candle_core::DType::F32, &device)?; // in [0,1]
//! // inference: eval mode with constant parameters (the fast path; `Mode::Eval` keeps
//! // the parameters in autograd for eval-mode weight gradients)
//! let logits = model.forward(&images, Mode::InputGrad)?;
//! assert_eq!(logits.dims(), &[2, 3]);
//! # Ok(()) }
//! ```

pub mod adversarial;
pub mod attribution;
pub mod commands;
pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod interrupt;
pub mod model;
pub mod ops;
pub mod progress;
pub mod report;
pub mod rng;
pub mod run;
pub mod scheduler;
pub mod train;

pub use error::{Error, Result};

/// The README's code blocks, compiled and checked by `cargo test`.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
