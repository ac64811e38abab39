//! PNG encoding and atomic writing.

use crate::fsutil::write_atomic;
use crate::{Error, Result};
use image::RgbImage;
use std::path::Path;

/// PNG bytes of an RGB image.
pub fn png_bytes(img: &RgbImage) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Png)
        .map_err(|e| Error::internal(format!("PNG encoding failed: {e}")))?;
    Ok(buf)
}

/// Writes `img` as PNG to `path` atomically.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    write_atomic(path, &png_bytes(img)?)
}

/// Nearest-neighbour upscaling by an integer factor (keeps pixels crisp in figures).
pub fn upscale(img: &RgbImage, k: u32) -> RgbImage {
    if k <= 1 {
        return img.clone();
    }
    let (w, h) = img.dimensions();
    RgbImage::from_fn(w * k, h * k, |x, y| *img.get_pixel(x / k, y / k))
}
