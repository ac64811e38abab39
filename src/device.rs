//! Devices: `auto`, `cpu`, `cuda[:N]` or `metal[:N]`, parsed once into a [`DeviceSpec`] and
//! opened into a candle device, with an error that names the cargo feature a build lacks.

use crate::{Error, Result};
use candle_core::Device;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

/// A device as the user names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// CUDA if this build has it and a GPU is present, else Metal, else the CPU.
    Auto,
    #[default]
    Cpu,
    Cuda(usize),
    Metal(usize),
}

impl DeviceSpec {
    /// Parses `auto`, `cpu`, `cuda[:N]` (`gpu` too) or `metal[:N]`.
    pub fn parse(spec: &str) -> Result<DeviceSpec> {
        let spec = spec.trim().to_ascii_lowercase();
        let (kind, ordinal) = match spec.split_once(':') {
            Some((k, n)) => {
                let n: usize = n.parse().map_err(|_| {
                    Error::Device(format!(
                        "device `{spec}`: `{n}` is not a device number (use e.g. cuda:0)"
                    ))
                })?;
                (k.to_string(), n)
            }
            None => (spec.clone(), 0),
        };
        Ok(match kind.as_str() {
            "auto" => DeviceSpec::Auto,
            "cpu" => DeviceSpec::Cpu,
            "cuda" | "gpu" => DeviceSpec::Cuda(ordinal),
            "metal" => DeviceSpec::Metal(ordinal),
            other => {
                return Err(Error::Device(format!(
                    "unknown device `{other}`: use auto, cpu, cuda[:N] or metal[:N]"
                )))
            }
        })
    }

    /// Opens the device.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Auto => {
                if candle_core::utils::cuda_is_available() {
                    if let Ok(d) = Device::new_cuda(0) {
                        return Ok(d);
                    }
                }
                if candle_core::utils::metal_is_available() {
                    if let Ok(d) = Device::new_metal(0) {
                        return Ok(d);
                    }
                }
                Ok(Device::Cpu)
            }
            DeviceSpec::Cuda(ordinal) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(Error::Device(
                        "device `cuda`: this build has no CUDA support; rebuild with \
                         `cargo build --release --features cuda` (or `cudnn`), or use the cpu device"
                            .into(),
                    ));
                }
                Device::new_cuda(ordinal).map_err(|e| {
                    Error::Device(format!("device `cuda:{ordinal}` cannot be opened: {e}"))
                })
            }
            DeviceSpec::Metal(ordinal) => {
                if !candle_core::utils::metal_is_available() {
                    return Err(Error::Device(
                        "device `metal`: this build has no Metal support; rebuild with \
                         `cargo build --release --features metal`, or use the cpu device"
                            .into(),
                    ));
                }
                Device::new_metal(ordinal).map_err(|e| {
                    Error::Device(format!("device `metal:{ordinal}` cannot be opened: {e}"))
                })
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Metal(n) => write!(f, "metal:{n}"),
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        DeviceSpec::parse(s)
    }
}

static TF32: AtomicBool = AtomicBool::new(false);
static DETERMINISTIC: AtomicBool = AtomicBool::new(false);

/// Allows TF32 (10-bit mantissa products, f32 sums) in the f32 convolutions and matrix
/// products on CUDA: cuDNN's default math and cuBLAS's `CUBLAS_COMPUTE_32F_FAST_TF32`. Off by
/// default, so GPU arithmetic is plain f32 as the CPU's (PyTorch's
/// `torch.backends.cudnn.allow_tf32 = False` and `torch.backends.cuda.matmul.allow_tf32 =
/// False`). No effect on the CPU.
pub fn set_tf32(on: bool) {
    TF32.store(on, Ordering::Relaxed);
    #[cfg(feature = "cuda")]
    candle_core::cuda_backend::set_gemm_reduced_precision_f32(on);
}

/// Whether TF32 is allowed (see [`set_tf32`]).
pub fn tf32() -> bool {
    TF32.load(Ordering::Relaxed)
}

/// Restricts cuDNN to deterministic algorithms (its fastest weight- and input-gradient
/// algorithms may add in an order that changes from run to run). CPU results are always
/// deterministic and independent of the thread count.
pub fn set_deterministic(on: bool) {
    DETERMINISTIC.store(on, Ordering::Relaxed);
}

/// Whether only deterministic GPU algorithms are used (see [`set_deterministic`]).
pub fn deterministic() -> bool {
    DETERMINISTIC.load(Ordering::Relaxed)
}

/// Opens the device named by `spec` (see [`DeviceSpec::parse`]).
pub fn parse_device(spec: &str) -> Result<Device> {
    DeviceSpec::parse(spec)?.open()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn cpu_and_errors() {
        assert!(matches!(parse_device("cpu").unwrap(), Device::Cpu));
        let e = parse_device("tpu").unwrap_err().to_string();
        assert!(e.contains("unknown device"), "{e}");
        assert_eq!(DeviceSpec::parse("CUDA:1").unwrap(), DeviceSpec::Cuda(1));
        assert_eq!(DeviceSpec::parse("auto").unwrap().to_string(), "auto");
        // auto falls back to the CPU on a machine (or build) without a GPU
        #[cfg(not(any(feature = "cuda", feature = "metal")))]
        assert!(matches!(DeviceSpec::Auto.open().unwrap(), Device::Cpu));
        #[cfg(not(feature = "cuda"))]
        {
            let e = parse_device("cuda:0").unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
        #[cfg(not(feature = "metal"))]
        {
            let e = parse_device("metal").unwrap_err().to_string();
            assert!(e.contains("--features metal"), "{e}");
        }
    }
}
