//! Devices: `auto`, `cpu`, `cuda[:N]` or `metal[:N]`, parsed once into a [`DeviceSpec`] and
//! opened into a candle device, with an error that names the cargo feature a build lacks.

use crate::{Error, Result};
use candle_core::Device;
use std::fmt;

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
