//! Parsing `--device cpu|cuda[:N]|metal[:N]` into a candle device, with an error that names the
//! cargo feature a build lacks.

use crate::{Error, Result};
use candle_core::Device;

/// Opens the device named by `spec`.
pub fn parse_device(spec: &str) -> Result<Device> {
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
    match kind.as_str() {
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => {
            if !candle_core::utils::cuda_is_available() {
                return Err(Error::Device(
                    "device `cuda`: this build has no CUDA support; rebuild with \
                     `cargo build --release --features cuda` (or `cudnn`), or use --device cpu"
                        .into(),
                ));
            }
            Device::new_cuda(ordinal).map_err(|e| {
                Error::Device(format!("device `cuda:{ordinal}` cannot be opened: {e}"))
            })
        }
        "metal" => {
            if !candle_core::utils::metal_is_available() {
                return Err(Error::Device(
                    "device `metal`: this build has no Metal support; rebuild with \
                     `cargo build --release --features metal`, or use --device cpu"
                        .into(),
                ));
            }
            Device::new_metal(ordinal).map_err(|e| {
                Error::Device(format!("device `metal:{ordinal}` cannot be opened: {e}"))
            })
        }
        other => Err(Error::Device(format!(
            "unknown device `{other}`: use cpu, cuda[:N] or metal[:N]"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn cpu_and_errors() {
        assert!(matches!(parse_device("cpu").unwrap(), Device::Cpu));
        let e = parse_device("tpu").unwrap_err().to_string();
        assert!(e.contains("unknown device"), "{e}");
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
