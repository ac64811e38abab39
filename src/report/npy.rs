//! NumPy `.npy` (format 1.0) float32 writer, for raw attributions and adversarial images.

use crate::fsutil::write_atomic;
use crate::{Error, Result};
use std::path::Path;

/// The bytes of a little-endian float32 `.npy` array of `shape`.
pub fn npy_bytes(data: &[f32], shape: &[usize]) -> Result<Vec<u8>> {
    let n: usize = shape.iter().product();
    if n != data.len() {
        return Err(Error::data(format!(
            "npy: shape {shape:?} holds {n} values, got {}",
            data.len()
        )));
    }
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_s}, }}");
    // magic (6) + version (2) + len (2) + header + '\n' must be a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Writes a tensor as float32 `.npy`, atomically.
pub fn write_npy(path: &Path, t: &candle_core::Tensor) -> Result<()> {
    let data: Vec<f32> = t
        .to_device(&candle_core::Device::Cpu)?
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    write_atomic(path, &npy_bytes(&data, t.dims())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn header_is_aligned_and_parsable() {
        let b = npy_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[1, 2, 3]).unwrap();
        let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hl) % 64, 0);
        let h = std::str::from_utf8(&b[10..10 + hl]).unwrap();
        assert!(h.contains("'shape': (1, 2, 3)") && h.ends_with('\n'));
        assert_eq!(&b[10 + hl..10 + hl + 4], &1f32.to_le_bytes());
        assert!(npy_bytes(&[1.0], &[2]).is_err());
    }
}
