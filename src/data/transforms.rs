//! Pre-processing exactly as torchvision's PIL pipeline
//! `CenterCrop(min(w, h))` → `Resize(N)` (PIL bilinear, antialiased) → `ToTensor()`:
//! the resize reproduces Pillow's fixed-point two-pass resampler bit for bit, so pixels match
//! `PIL.Image.resize(..., BILINEAR)`. An image already N×N passes unchanged.

use crate::{Error, Result};
use candle_core::{Device, Tensor};
use image::RgbImage;
use std::path::Path;

/// Decodes an image file as 8-bit RGB (grayscale is replicated, alpha dropped, 16-bit scaled).
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::Image {
            path: path.into(),
            msg: "is a folder, not an image".into(),
        });
    }
    if meta.len() == 0 {
        return Err(Error::Image {
            path: path.into(),
            msg: "is empty (0 bytes)".into(),
        });
    }
    let reader = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    let img = reader.decode().map_err(|e| Error::Image {
        path: path.into(),
        msg: format!("cannot be decoded ({e}); is it a valid JPEG or PNG?"),
    })?;
    Ok(img.to_rgb8())
}

/// Python's `round()` on `n / 2` (half to even), as torchvision's `center_crop` uses.
fn round_half_even_div2(n: u32) -> u32 {
    let q = n / 2;
    if n % 2 == 1 && q % 2 == 1 {
        q + 1
    } else {
        q
    }
}

/// Centre crop to the shorter side.
pub fn center_crop_square(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let s = w.min(h);
    let left = round_half_even_div2(w - s);
    let top = round_half_even_div2(h - s);
    image::imageops::crop_imm(img, left, top, s, s).to_image()
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's `precompute_coeffs` for the bilinear (triangle) filter, normalised to 8-bpc
/// fixed point. Returns (xmin, taps) per output index.
fn coeffs(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 1.0 * filterscale;
    let ss = 1.0 / filterscale;
    let mut out = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C casts truncate toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut w: Vec<f64> = (0..n)
            .map(|x| {
                let t = ((x + xmin) as f64 - center + 0.5) * ss;
                let t = t.abs();
                if t < 1.0 {
                    1.0 - t
                } else {
                    0.0
                }
            })
            .collect();
        let total: f64 = w.iter().sum();
        if total != 0.0 {
            for v in &mut w {
                *v /= total;
            }
        }
        let k: Vec<i32> = w
            .iter()
            .map(|&v| {
                let s = v * (1u32 << PRECISION_BITS) as f64;
                if v < 0.0 {
                    (-0.5 + s) as i32
                } else {
                    (0.5 + s) as i32
                }
            })
            .collect();
        out.push((xmin, k));
    }
    out
}

fn clip8(v: i64) -> u8 {
    let v = v >> PRECISION_BITS;
    v.clamp(0, 255) as u8
}

/// Antialiased bilinear resize, bit-identical to Pillow's `Image.resize((w, h), BILINEAR)`
/// on RGB images (horizontal pass, then vertical, each rounded to 8 bits).
pub fn resize_bilinear_aa(img: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if (w, h) == (out_w, out_h) {
        return img.clone();
    }
    let src = img.as_raw();
    // Horizontal pass.
    let (hw, horiz): (usize, Vec<u8>) = if out_w != w {
        let cx = coeffs(w as usize, out_w as usize);
        let mut buf = vec![0u8; out_w as usize * h as usize * 3];
        for y in 0..h as usize {
            let row = &src[y * w as usize * 3..(y + 1) * w as usize * 3];
            for (xx, (xmin, k)) in cx.iter().enumerate() {
                for c in 0..3 {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (i, &kv) in k.iter().enumerate() {
                        ss += row[(xmin + i) * 3 + c] as i64 * kv as i64;
                    }
                    buf[(y * out_w as usize + xx) * 3 + c] = clip8(ss);
                }
            }
        }
        (out_w as usize, buf)
    } else {
        (w as usize, src.to_vec())
    };
    // Vertical pass.
    let out = if out_h != h {
        let cy = coeffs(h as usize, out_h as usize);
        let mut buf = vec![0u8; hw * out_h as usize * 3];
        for (yy, (ymin, k)) in cy.iter().enumerate() {
            for x in 0..hw {
                for c in 0..3 {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (i, &kv) in k.iter().enumerate() {
                        ss += horiz[((ymin + i) * hw + x) * 3 + c] as i64 * kv as i64;
                    }
                    buf[(yy * hw + x) * 3 + c] = clip8(ss);
                }
            }
        }
        buf
    } else {
        horiz
    };
    RgbImage::from_raw(out_w, out_h, out).expect("buffer size matches")
}

/// `ToTensor`: HWC u8 → CHW f32 in `[0, 1]`.
pub fn to_tensor(img: &RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = img.dimensions();
    let (w, h) = (w as usize, h as usize);
    let raw = img.as_raw();
    let mut v = vec![0f32; 3 * h * w];
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                v[c * h * w + y * w + x] = raw[(y * w + x) * 3 + c] as f32 / 255.0;
            }
        }
    }
    Ok(Tensor::from_vec(v, (3, h, w), device)?)
}

/// Centre crop to the shorter side and resize to `size`×`size` (Pillow bilinear).
pub fn crop_resize(img: &RgbImage, size: usize) -> Result<RgbImage> {
    if size == 0 {
        return Err(Error::data_setting(
            "image-size",
            0,
            "the image size must be positive (e.g. 224)",
        ));
    }
    let sq = center_crop_square(img);
    Ok(resize_bilinear_aa(&sq, size as u32, size as u32))
}

/// Loads `path` and returns the model input `[3, size, size]` in `[0, 1]`.
pub fn preprocess(path: &Path, size: usize, device: &Device) -> Result<Tensor> {
    let img = load_image(path)?;
    to_tensor(&crop_resize(&img, size)?, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_offsets_round_half_even() {
        assert_eq!(round_half_even_div2(150), 75);
        assert_eq!(round_half_even_div2(151), 76); // round(75.5) = 76
        assert_eq!(round_half_even_div2(149), 74); // round(74.5) = 74
        let img = RgbImage::from_fn(601, 450, |x, _| image::Rgb([(x % 256) as u8, 0, 0]));
        let c = center_crop_square(&img);
        assert_eq!(c.dimensions(), (450, 450));
        assert_eq!(c.get_pixel(0, 0)[0], 76);
    }

    #[test]
    fn same_size_is_identity_and_constant_stays_constant() {
        let img = RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8, y as u8, 7]));
        assert_eq!(resize_bilinear_aa(&img, 32, 32), img);
        let flat = RgbImage::from_pixel(600, 450, image::Rgb([200, 100, 50]));
        let r = crop_resize(&flat, 224).unwrap();
        assert!(r.pixels().all(|p| p.0 == [200, 100, 50]));
    }

    #[test]
    fn coefficients_sum_to_one() {
        for (i, o) in [(450, 224), (64, 32), (10, 33)] {
            for (_, k) in coeffs(i, o) {
                let s: i64 = k.iter().map(|&v| v as i64).sum();
                assert!((s - (1 << PRECISION_BITS)).abs() <= k.len() as i64, "{s}");
            }
        }
    }
}
