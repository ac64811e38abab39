//! Turning raw attributions into pictures. Arrays in, pixels out; the model is never seen.
//!
//! The paper's recipe: per pixel, the sum of absolute values over RGB; cap at the 99th
//! percentile; rescale to `[0, 1]`. captum's alternative cap divides by the value at which the
//! sorted |values| reach a percentage of their cumulative sum.

use crate::{Error, Result};
use image::{Rgb, RgbImage};

/// How the channels of an attribution are combined per pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Reduce {
    /// sum_c |a_c| (the paper).
    #[value(alias = "abs")]
    AbsSum,
    /// sum_c a_c (signed, as captum's display before taking signs).
    #[value(alias = "signed")]
    Sum,
}

/// How the map is capped before rescaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cap {
    /// Cap at this percentile of the values (numpy's default linear interpolation); the paper
    /// uses 99.
    Percentile(f32),
    /// captum's `_cumulative_sum_threshold`: the value at which the sorted |values| reach
    /// this percentage of their total.
    CumSum(f32),
    /// Scale by the maximum |value|.
    Max,
}

impl Cap {
    /// Parses `p99` (a percentile), `cumsum98` (captum's cumulative-sum cap) or `max`.
    pub fn parse(s: &str) -> Result<Cap> {
        let t = s.trim().to_ascii_lowercase();
        let bad = || Error::config("cap", s, "use p99, cumsum98 or max");
        let num = |x: &str| -> Result<f32> {
            let v: f32 = x.parse().map_err(|_| bad())?;
            if !(v > 0.0 && v <= 100.0) {
                return Err(Error::config(
                    "cap",
                    s,
                    "the percentage must be in (0, 100]",
                ));
            }
            Ok(v)
        };
        Ok(if t == "max" {
            Cap::Max
        } else if let Some(v) = t.strip_prefix("cumsum") {
            Cap::CumSum(num(v)?)
        } else if let Some(v) = t.strip_prefix('p') {
            Cap::Percentile(num(v)?)
        } else {
            return Err(bad());
        })
    }
}

/// A colour map.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Colormap {
    /// Black to the given colour (the paper's single-colour look; white gives grey levels).
    Single([u8; 3]),
    /// viridis (perceptually uniform).
    Viridis,
    /// Blue (-1), white (0), red (+1), for signed maps.
    Diverging,
}

impl Colormap {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "gray" | "grey" => Colormap::Single([255, 255, 255]),
            "red" | "reds" => Colormap::Single([255, 40, 40]),
            "green" => Colormap::Single([40, 255, 60]),
            "viridis" => Colormap::Viridis,
            "diverging" | "bwr" => Colormap::Diverging,
            other => {
                return Err(Error::config(
                    "cmap",
                    other,
                    "use gray, red, green, viridis or diverging",
                ))
            }
        })
    }

    /// Colour of value `v` (in `[0, 1]`, or [-1,1] for `Diverging`).
    pub fn color(&self, v: f32) -> [u8; 3] {
        let v = if v.is_finite() { v } else { 0.0 };
        match self {
            Colormap::Single(c) => {
                let t = v.clamp(0.0, 1.0);
                [
                    (c[0] as f32 * t).round() as u8,
                    (c[1] as f32 * t).round() as u8,
                    (c[2] as f32 * t).round() as u8,
                ]
            }
            Colormap::Viridis => {
                const STOPS: [[f32; 3]; 9] = [
                    [68.0, 1.0, 84.0],
                    [71.0, 44.0, 122.0],
                    [59.0, 81.0, 139.0],
                    [44.0, 113.0, 142.0],
                    [33.0, 144.0, 141.0],
                    [39.0, 173.0, 129.0],
                    [92.0, 200.0, 99.0],
                    [170.0, 220.0, 50.0],
                    [253.0, 231.0, 37.0],
                ];
                let t = v.clamp(0.0, 1.0) * (STOPS.len() - 1) as f32;
                let i = (t.floor() as usize).min(STOPS.len() - 2);
                let f = t - i as f32;
                let mut out = [0u8; 3];
                for (k, o) in out.iter_mut().enumerate() {
                    *o = (STOPS[i][k] * (1.0 - f) + STOPS[i + 1][k] * f).round() as u8;
                }
                out
            }
            Colormap::Diverging => {
                let t = v.clamp(-1.0, 1.0);
                let a = (255.0 * (1.0 - t.abs())).round() as u8;
                if t >= 0.0 {
                    [255, a, a]
                } else {
                    [a, a, 255]
                }
            }
        }
    }
}

/// All display choices together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DisplayOptions {
    pub reduce: Reduce,
    pub cap: Cap,
    pub cmap: Colormap,
    /// Overlay opacity of the heat map at full intensity.
    pub alpha: f32,
}

impl Default for DisplayOptions {
    fn default() -> Self {
        DisplayOptions {
            reduce: Reduce::AbsSum,
            cap: Cap::Percentile(99.0),
            cmap: Colormap::Single([255, 255, 255]),
            alpha: 0.7,
        }
    }
}

/// Combines channels of a `[C, H, W]` attribution (row-major) into an `H*W` map.
pub fn reduce_channels(a: &[f32], c: usize, h: usize, w: usize, how: Reduce) -> Vec<f32> {
    let plane = h * w;
    (0..plane)
        .map(|p| {
            (0..c)
                .map(|ch| {
                    let v = a[ch * plane + p];
                    match how {
                        Reduce::AbsSum => v.abs(),
                        Reduce::Sum => v,
                    }
                })
                .sum()
        })
        .collect()
}

/// `numpy.percentile(values, q)` with linear interpolation.
pub fn percentile(values: &[f32], q: f32) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    let mut s: Vec<f32> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if s.is_empty() {
        return 0.0;
    }
    s.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let pos = (q.clamp(0.0, 100.0) as f64 / 100.0) * (s.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let f = pos - lo as f64;
    (s[lo] as f64 + (s[hi] as f64 - s[lo] as f64) * f) as f32
}

/// captum's `_cumulative_sum_threshold(values, percentile)` on |values|.
pub fn cumsum_threshold(values: &[f32], pct: f32) -> f32 {
    let mut s: Vec<f32> = values
        .iter()
        .map(|v| v.abs())
        .filter(|v| !v.is_nan())
        .collect();
    if s.is_empty() {
        return 0.0;
    }
    s.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let total: f64 = s.iter().map(|&v| v as f64).sum();
    let target = total * 0.01 * pct as f64;
    let mut acc = 0f64;
    for &v in &s {
        acc += v as f64;
        if acc >= target {
            return v;
        }
    }
    *s.last().expect("non-empty")
}

/// Caps and rescales a map: non-negative maps go to `[0, 1]`; signed maps to [-1,1] (divided by
/// the cap of |values| and clipped). A map that is all zero stays zero.
pub fn normalize(map: &[f32], cap: Cap) -> Vec<f32> {
    let signed = map.iter().any(|&v| v < 0.0);
    let abs: Vec<f32> = map.iter().map(|v| v.abs()).collect();
    let t = match cap {
        Cap::Percentile(q) => percentile(&abs, q),
        Cap::CumSum(q) => cumsum_threshold(&abs, q),
        Cap::Max => abs.iter().fold(0f32, |a, &b| a.max(b)),
    };
    if t.is_nan() || t <= 0.0 || t.is_infinite() {
        return vec![0.0; map.len()];
    }
    map.iter()
        .map(|&v| {
            let r = v / t;
            if signed {
                r.clamp(-1.0, 1.0)
            } else {
                r.clamp(0.0, 1.0)
            }
        })
        .collect()
}

/// The heat map of a `[C, H, W]` attribution as an image.
pub fn heatmap(a: &[f32], c: usize, h: usize, w: usize, opts: &DisplayOptions) -> RgbImage {
    let m = normalize(&reduce_channels(a, c, h, w, opts.reduce), opts.cap);
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        Rgb(opts.cmap.color(m[y as usize * w + x as usize]))
    })
}

/// The heat map blended over the image: out = (1 - a v) img + a v colour(v).
pub fn overlay(img: &RgbImage, a: &[f32], c: usize, opts: &DisplayOptions) -> RgbImage {
    let (w, h) = img.dimensions();
    let (w, h) = (w as usize, h as usize);
    let m = normalize(&reduce_channels(a, c, h, w, opts.reduce), opts.cap);
    let cmap = match opts.cmap {
        Colormap::Single([255, 255, 255]) => Colormap::Single([255, 40, 40]),
        other => other,
    };
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let v = m[y as usize * w + x as usize];
        let k = (opts.alpha * v.abs()).clamp(0.0, 1.0);
        let col = cmap.color(v);
        let p = img.get_pixel(x, y).0;
        Rgb([0, 1, 2].map(|i| ((1.0 - k) * p[i] as f32 + k * col[i] as f32).round() as u8))
    })
}

/// A `[3, H, W]` tensor in `[0, 1]` as an image.
pub fn tensor_to_image(t: &[f32], h: usize, w: usize) -> RgbImage {
    let plane = h * w;
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let p = y as usize * w + x as usize;
        Rgb([0, 1, 2].map(|c| (t[c * plane + p].clamp(0.0, 1.0) * 255.0).round() as u8))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_numpy_linear() {
        let v: Vec<f32> = (0..101).map(|i| i as f32).collect();
        assert_eq!(percentile(&v, 99.0), 99.0);
        let v = [1.0, 2.0, 3.0, 4.0];
        // numpy.percentile([1,2,3,4], 99) = 3.97
        assert!((percentile(&v, 99.0) - 3.97).abs() < 1e-6);
        assert!((percentile(&v, 50.0) - 2.5).abs() < 1e-6);
    }

    #[test]
    fn cumsum_threshold_like_captum() {
        // sorted 1,2,3,4: cumsum 1,3,6,10; 50% of 10 = 5 -> first >= 5 is at value 3.
        assert_eq!(cumsum_threshold(&[4.0, -1.0, 3.0, 2.0], 50.0), 3.0);
        assert_eq!(cumsum_threshold(&[4.0, 1.0, 3.0, 2.0], 100.0), 4.0);
    }

    #[test]
    fn known_array_gives_known_pixels() {
        // Two channels, 1x4: |a| summed = [0, 1, 2, 100]; p99 of that = 97.06.
        let a = [0.0, -1.0, 1.0, 50.0, 0.0, 0.0, 1.0, -50.0];
        let opts = DisplayOptions {
            reduce: Reduce::AbsSum,
            cap: Cap::Percentile(99.0),
            cmap: Colormap::Single([255, 255, 255]),
            alpha: 1.0,
        };
        let img = heatmap(&a, 2, 1, 4, &opts);
        let px: Vec<u8> = img.pixels().map(|p| p.0[0]).collect();
        let t = 2.0 + (100.0 - 2.0) * 0.97; // numpy.percentile([0,1,2,100], 99)
        let want: Vec<u8> = [0.0, 1.0, 2.0, 100.0]
            .iter()
            .map(|v: &f32| ((v / t).min(1.0) * 255.0).round() as u8)
            .collect();
        assert_eq!(px, want);
        assert_eq!(px, vec![0, 3, 5, 255]);
        let signed = normalize(&[-2.0, 1.0, 4.0], Cap::Max);
        assert_eq!(signed, vec![-0.5, 0.25, 1.0]);
        assert_eq!(
            normalize(&[0.0, 0.0], Cap::Percentile(99.0)),
            vec![0.0, 0.0]
        );
    }

    #[test]
    fn colormaps_hit_their_ends() {
        assert_eq!(Colormap::Viridis.color(0.0), [68, 1, 84]);
        assert_eq!(Colormap::Viridis.color(1.0), [253, 231, 37]);
        assert_eq!(Colormap::Diverging.color(-1.0), [0, 0, 255]);
        assert_eq!(Colormap::Diverging.color(0.0), [255, 255, 255]);
        assert_eq!(Colormap::Single([255, 0, 0]).color(0.5), [128, 0, 0]);
    }
}
