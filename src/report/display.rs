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

/// A colour map. The named ones are matplotlib's, from the `colorous` crate (d3's 256-entry
/// tables of the same data).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Colormap {
    /// Black to the given colour (the paper's single-colour look; white gives grey levels).
    Single([u8; 3]),
    /// viridis (perceptually uniform; `[0, 1]`).
    Viridis,
    /// magma (`[0, 1]`).
    Magma,
    /// inferno (`[0, 1]`).
    Inferno,
    /// Blues (captum's default for absolute values; `[0, 1]`).
    Blues,
    /// Greens (captum's default for positive attributions; `[0, 1]`).
    Greens,
    /// RdBu for signed maps on [-1, 1]: blue for -1, near-white for 0, red for +1 (matplotlib's
    /// `RdBu_r`).
    RdBu,
}

impl Colormap {
    /// The names [`Colormap::parse`] takes.
    pub const NAMES: &'static str =
        "gray, red, green, viridis, magma, inferno, blues, greens or rdbu";

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "gray" | "grey" => Colormap::Single([255, 255, 255]),
            "red" | "reds" => Colormap::Single([255, 40, 40]),
            "green" => Colormap::Single([40, 255, 60]),
            "viridis" => Colormap::Viridis,
            "magma" => Colormap::Magma,
            "inferno" => Colormap::Inferno,
            "blues" => Colormap::Blues,
            "greens" => Colormap::Greens,
            "rdbu" | "rdbu_r" | "diverging" | "bwr" => Colormap::RdBu,
            other => return Err(Error::config("cmap", other, format!("use {}", Self::NAMES))),
        })
    }

    /// Whether it is meant for signed values on [-1, 1].
    pub fn signed(&self) -> bool {
        matches!(self, Colormap::RdBu)
    }

    /// Colour of value `v` (in `[0, 1]`, or [-1, 1] for a signed map).
    pub fn color(&self, v: f32) -> [u8; 3] {
        let v = if v.is_finite() { v } else { 0.0 };
        let named = |g: colorous::Gradient, t: f32| {
            let c = g.eval_continuous(t.clamp(0.0, 1.0) as f64);
            [c.r, c.g, c.b]
        };
        match self {
            Colormap::Single(c) => {
                let t = v.clamp(0.0, 1.0);
                c.map(|k| (k as f32 * t).round() as u8)
            }
            Colormap::Viridis => named(colorous::VIRIDIS, v),
            Colormap::Magma => named(colorous::MAGMA, v),
            Colormap::Inferno => named(colorous::INFERNO, v),
            Colormap::Blues => named(colorous::BLUES, v),
            Colormap::Greens => named(colorous::GREENS, v),
            // colorous's RED_BLUE runs red (0) to blue (1).
            Colormap::RdBu => named(colorous::RED_BLUE, (1.0 - v.clamp(-1.0, 1.0)) / 2.0),
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
    /// Whether a figure's maps of one method share one scale (the cap of all of them
    /// together, so that maps compare across images and models) instead of each its own (the
    /// paper's per-image scale). The figure code resolves it into `shared_cap`.
    pub shared: bool,
    /// `None`: each map is divided by its own cap; `Some(t)`: every map by `t` (see
    /// [`DisplayOptions::sharing`]).
    pub shared_cap: Option<f32>,
}

/// Named display settings, as `saliency --display` offers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DisplayPreset {
    /// The paper's: per pixel sum of |a| over RGB, capped at the 99th percentile, grey levels.
    Paper,
    /// captum's `visualize_image_attr(sign="absolute_value")` defaults: sum of |a|, capped
    /// where the sorted values reach 98% of their sum (`outlier_perc=2`), Blues.
    Captum,
    /// Signed maps: per pixel sum of a over RGB, captum's 98% cumulative-sum cap on |values|,
    /// RdBu (blue negative, red positive).
    Signed,
}

impl DisplayPreset {
    pub fn options(self) -> DisplayOptions {
        let (reduce, cap, cmap) = match self {
            DisplayPreset::Paper => (
                Reduce::AbsSum,
                Cap::Percentile(99.0),
                Colormap::Single([255, 255, 255]),
            ),
            DisplayPreset::Captum => (Reduce::AbsSum, Cap::CumSum(98.0), Colormap::Blues),
            DisplayPreset::Signed => (Reduce::Sum, Cap::CumSum(98.0), Colormap::RdBu),
        };
        DisplayOptions {
            reduce,
            cap,
            cmap,
            ..DisplayOptions::default()
        }
    }
}

impl DisplayOptions {
    /// A `[C, H, W]` attribution as the `H*W` map these options draw: channels reduced, then
    /// capped and rescaled ([`normalize`]).
    pub fn normalized(&self, a: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
        let m = reduce_channels(a, c, h, w, self.reduce);
        match self.shared_cap {
            None => normalize(&m, self.cap),
            Some(t) => scale_by(&m, t),
        }
    }

    /// The cap of `maps` (`[C, H, W]` attributions) together: these options' cap of all their
    /// reduced values pooled, for a shared scale (`shared_cap`).
    pub fn shared_cap(&self, maps: &[&[f32]], c: usize, h: usize, w: usize) -> f32 {
        let pooled: Vec<f32> = maps
            .iter()
            .flat_map(|a| reduce_channels(a, c, h, w, self.reduce))
            .collect();
        cap_value(&pooled, self.cap)
    }

    /// These options for a figure of `maps`: with their shared cap when `shared` is set, as
    /// they are otherwise.
    pub fn sharing(self, maps: &[&[f32]], c: usize, h: usize, w: usize) -> Self {
        if !self.shared {
            return self;
        }
        DisplayOptions {
            shared_cap: Some(self.shared_cap(maps, c, h, w)),
            ..self
        }
    }

    /// What a map's values mean after normalisation, for a colour bar's title:
    /// `Σ|a| ÷ p99` and the like.
    pub fn scale_label(&self) -> String {
        let sum = match self.reduce {
            Reduce::AbsSum => "Σ|a|",
            Reduce::Sum => "Σa",
        };
        let cap = match self.cap {
            Cap::Percentile(q) => format!("p{q}"),
            Cap::CumSum(q) => format!("{q}%-sum cap"),
            Cap::Max => "max".to_string(),
        };
        match self.shared_cap {
            None => format!("{sum} ÷ {cap}\nper-image scale"),
            Some(t) => format!("{sum} ÷ {}\nshared scale ({cap})", sig3(t)),
        }
    }

    /// A colour bar for maps drawn with these options, `height` pixels tall: [0, 1], or
    /// [-1, 1] for a signed colour map.
    pub fn colorbar(&self, height: u32) -> RgbImage {
        self.colorbar_titled(height, &self.scale_label())
    }

    /// [`DisplayOptions::colorbar`] under another title (lines split at `\n`).
    pub fn colorbar_titled(&self, height: u32, title: &str) -> RgbImage {
        let (lo, ticks): (f32, Vec<(f32, String)>) = if self.cmap.signed() {
            (
                -1.0,
                vec![
                    (-1.0, "≤ -1".into()),
                    (-0.5, "-0.5".into()),
                    (0.0, "0".into()),
                    (0.5, "0.5".into()),
                    (1.0, "≥ 1".into()),
                ],
            )
        } else {
            (
                0.0,
                vec![
                    (0.0, "0".into()),
                    (0.25, "0.25".into()),
                    (0.5, "0.5".into()),
                    (0.75, "0.75".into()),
                    (1.0, "≥ 1".into()),
                ],
            )
        };
        colorbar(self.cmap, lo, 1.0, &ticks, title, height)
    }
}

impl Default for DisplayOptions {
    fn default() -> Self {
        DisplayOptions {
            reduce: Reduce::AbsSum,
            cap: Cap::Percentile(99.0),
            cmap: Colormap::Single([255, 255, 255]),
            alpha: 0.7,
            shared: false,
            shared_cap: None,
        }
    }
}

/// `v` with three significant digits (`0.0123`, `4.56`, `1.23e-5`).
pub fn sig3(v: f32) -> String {
    let a = v.abs();
    if a == 0.0 || !a.is_finite() {
        return format!("{v}");
    }
    let e = a.log10().floor() as i32;
    if (-3..4).contains(&e) {
        format!("{v:.*}", (2 - e).max(0) as usize)
    } else {
        format!("{v:.2e}")
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
    scale_by(map, cap_value(map, cap))
}

/// The cap of a map's |values|: its percentile, its cumulative-sum threshold, or its maximum.
pub fn cap_value(map: &[f32], cap: Cap) -> f32 {
    let abs: Vec<f32> = map.iter().map(|v| v.abs()).collect();
    match cap {
        Cap::Percentile(q) => percentile(&abs, q),
        Cap::CumSum(q) => cumsum_threshold(&abs, q),
        Cap::Max => abs.iter().fold(0f32, |a, &b| a.max(b)),
    }
}

/// A map divided by `t` and clipped: to `[0, 1]`, or to `[-1, 1]` when it has negative values;
/// all zero when `t` is not a positive number.
pub fn scale_by(map: &[f32], t: f32) -> Vec<f32> {
    let signed = map.iter().any(|&v| v < 0.0);
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
    let m = opts.normalized(a, c, h, w);
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        Rgb(opts.cmap.color(m[y as usize * w + x as usize]))
    })
}

/// The heat map blended over the image: out = (1 - a v) img + a v colour(v).
pub fn overlay(img: &RgbImage, a: &[f32], c: usize, opts: &DisplayOptions) -> RgbImage {
    let (w, h) = img.dimensions();
    let (w, h) = (w as usize, h as usize);
    let m = opts.normalized(a, c, h, w);
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

/// captum's `masked_image`: the image scaled by the normalised |map| (dark where the map is
/// zero).
pub fn masked_image(img: &RgbImage, a: &[f32], c: usize, opts: &DisplayOptions) -> RgbImage {
    let (w, h) = img.dimensions();
    let (w, h) = (w as usize, h as usize);
    let m = opts.normalized(a, c, h, w);
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let k = m[y as usize * w + x as usize].abs().clamp(0.0, 1.0);
        Rgb(img.get_pixel(x, y).0.map(|p| (k * p as f32).round() as u8))
    })
}

/// The outline of a `w x h` boolean mask: the pixels inside it with a 4-neighbour outside it
/// (or on the image border).
pub fn contour(mask: &[bool], w: usize, h: usize) -> Vec<bool> {
    let at = |x: isize, y: isize| {
        x >= 0
            && y >= 0
            && (x as usize) < w
            && (y as usize) < h
            && mask[y as usize * w + x as usize]
    };
    (0..w * h)
        .map(|p| {
            let (x, y) = ((p % w) as isize, (p / w) as isize);
            at(x, y) && !(at(x - 1, y) && at(x + 1, y) && at(x, y - 1) && at(x, y + 1))
        })
        .collect()
}

/// Draws the outline of `mask` (`mw x mh`, scaled to the image's size, nearest neighbour)
/// over `img` in `color`, one image pixel wide.
pub fn draw_contour(img: &mut RgbImage, mask: &[bool], mw: usize, mh: usize, color: [u8; 3]) {
    let (w, h) = img.dimensions();
    let (w, h) = (w as usize, h as usize);
    let scaled: Vec<bool> = (0..w * h)
        .map(|p| mask[(p / w) * mh / h * mw + (p % w) * mw / w])
        .collect();
    for (p, on) in contour(&scaled, w, h).into_iter().enumerate() {
        if on {
            img.put_pixel((p % w) as u32, (p / w) as u32, Rgb(color));
        }
    }
}

/// A vertical colour bar, `height` pixels tall, with tick labels at `ticks` (value, text) and
/// a title above; values run from `lo` (bottom) to `hi` (top).
pub fn colorbar(
    cmap: Colormap,
    lo: f32,
    hi: f32,
    ticks: &[(f32, String)],
    title: &str,
    height: u32,
) -> RgbImage {
    use super::font::{draw_text, line_height, text_width};
    let height = height.max(16);
    let px = 14.0;
    let bar_w = 18;
    let pad = 6;
    let lines: Vec<&str> = title.lines().filter(|l| !l.is_empty()).collect();
    let title_h = if lines.is_empty() {
        0
    } else {
        lines.len() as u32 * (line_height(px) + 2) + pad
    };
    let label_w = ticks
        .iter()
        .map(|(_, t)| text_width(t, px))
        .max()
        .unwrap_or(0);
    let title_w = lines.iter().map(|l| text_width(l, px)).max().unwrap_or(0);
    let width = (pad + bar_w + 4 + 4 + label_w + pad).max(title_w + 2 * pad);
    let top = title_h + line_height(px) / 2;
    let total = top + height + line_height(px) / 2 + pad;
    let mut img = RgbImage::from_pixel(width, total, Rgb([255, 255, 255]));
    for (i, l) in lines.iter().enumerate() {
        let y = i as u32 * (line_height(px) + 2);
        draw_text(&mut img, pad, y, l, px, [20, 20, 20]);
    }
    let span = if hi == lo { 1.0 } else { hi - lo };
    for y in 0..height {
        let v = hi - span * y as f32 / (height - 1).max(1) as f32;
        let c = cmap.color(v);
        for x in 1..bar_w - 1 {
            img.put_pixel(pad + x, top + y, Rgb(c));
        }
    }
    // A frame around the bar, outside its colours.
    let ink = Rgb([20, 20, 20]);
    for y in top - 1..=top + height {
        img.put_pixel(pad, y, ink);
        img.put_pixel(pad + bar_w - 1, y, ink);
    }
    for x in 0..bar_w {
        img.put_pixel(pad + x, top - 1, ink);
        img.put_pixel(pad + x, top + height, ink);
    }
    for (v, t) in ticks {
        let f = ((hi - v) / span).clamp(0.0, 1.0);
        let y = top + (f * (height - 1) as f32).round() as u32;
        for x in 0..4 {
            img.put_pixel(pad + bar_w + x, y, ink);
        }
        let ty = y.saturating_sub(line_height(px) / 2);
        draw_text(&mut img, pad + bar_w + 8, ty, t, px, [20, 20, 20]);
    }
    img
}

/// `legend` to the right of `img`, vertically centred, on white.
pub fn beside(img: &RgbImage, legend: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let (lw, lh) = legend.dimensions();
    let mut out = RgbImage::from_pixel(w + lw, h.max(lh), Rgb([255, 255, 255]));
    image::imageops::replace(&mut out, img, 0, 0);
    image::imageops::replace(
        &mut out,
        legend,
        w as i64,
        (h.saturating_sub(lh) / 2) as i64,
    );
    out
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
    fn a_shared_scale_divides_every_map_by_the_pooled_cap() {
        // two one-channel 1x4 maps; pooled |values| 1..8, their max 8
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [5.0, 6.0, 7.0, 8.0];
        let o = DisplayOptions {
            cap: Cap::Max,
            shared: true,
            ..DisplayOptions::default()
        };
        assert_eq!(o.shared_cap(&[&a, &b], 1, 1, 4), 8.0);
        let s = o.sharing(&[&a, &b], 1, 1, 4);
        assert_eq!(s.normalized(&a, 1, 1, 4), vec![0.125, 0.25, 0.375, 0.5]);
        assert!(s.scale_label().contains("shared scale") && s.scale_label().contains('8'));
        // per image: each map by its own maximum
        let p = DisplayOptions { shared: false, ..o }.sharing(&[&a, &b], 1, 1, 4);
        assert_eq!(p.shared_cap, None);
        assert_eq!(p.normalized(&a, 1, 1, 4), vec![0.25, 0.5, 0.75, 1.0]);
        assert!(p.scale_label().contains("per-image scale"));
        assert_eq!(
            [sig3(0.012345), sig3(4.5678), sig3(123.4), sig3(1.234e-5)],
            ["0.0123", "4.57", "123", "1.23e-5"]
        );
    }

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
            ..DisplayOptions::default()
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
    fn contours_masked_images_and_colour_bars() {
        // A 2x2 block in a 4x4 mask: all four of its pixels are on the outline; a 3x3 block's
        // centre is not.
        let mut m = vec![false; 16];
        for p in [5, 6, 9, 10] {
            m[p] = true;
        }
        assert_eq!(contour(&m, 4, 4), m);
        let mut m3 = vec![false; 25];
        for y in 1..4 {
            for x in 1..4 {
                m3[y * 5 + x] = true;
            }
        }
        let c = contour(&m3, 5, 5);
        assert_eq!(c.iter().filter(|&&v| v).count(), 8);
        assert!(!c[12]);
        // Drawn on an image twice the mask's size: the outline of the 4x4 block in 8x8.
        let mut img = RgbImage::new(8, 8);
        draw_contour(&mut img, &m, 4, 4, [255, 0, 0]);
        let red = img.pixels().filter(|p| p.0 == [255, 0, 0]).count();
        assert_eq!(red, 12);
        // masked_image keeps the pixel where the map is at its cap and darkens it at zero.
        let img = RgbImage::from_pixel(2, 1, Rgb([200, 100, 50]));
        let mi = masked_image(&img, &[0.0, 1.0], 1, &DisplayOptions::default());
        assert_eq!(mi.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(mi.get_pixel(1, 0).0, [200, 100, 50]);
        // A colour bar: the top row of the bar is the colour of `hi`, the bottom that of `lo`.
        let ticks = [(0.0, "0".to_string()), (1.0, "≥ 1".to_string())];
        let bar = colorbar(Colormap::Viridis, 0.0, 1.0, &ticks, "scale", 100);
        let column: Vec<[u8; 3]> = (0..bar.height()).map(|y| bar.get_pixel(12, y).0).collect();
        assert!(column.contains(&Colormap::Viridis.color(1.0)));
        assert!(column.contains(&Colormap::Viridis.color(0.0)));
        let top = column
            .iter()
            .position(|c| *c == Colormap::Viridis.color(1.0));
        let bottom = column
            .iter()
            .position(|c| *c == Colormap::Viridis.color(0.0));
        assert!(top < bottom, "hi at the top");
    }

    #[test]
    fn colormaps_match_matplotlibs_tables() {
        // matplotlib's _cm_listed._viridis_data at entries 0, 128 and 255 (of 256), x 255:
        // (0.267004, 0.004874, 0.329415), (0.127568, 0.566949, 0.550556),
        // (0.993248, 0.906157, 0.143936).
        let want = [
            (0.0, [68.09, 1.24, 84.0]),
            (128.0 / 255.0, [32.53, 144.57, 140.39]),
            (1.0, [253.28, 231.07, 36.70]),
        ];
        for (t, rgb) in want {
            let got = Colormap::Viridis.color(t);
            for k in 0..3 {
                assert!(
                    (got[k] as f32 - rgb[k]).abs() <= 1.0,
                    "viridis({t}) = {got:?}, matplotlib {rgb:?}"
                );
            }
        }
        // magma and inferno start black-ish and end light; RdBu: -1 blue, 0 near-white, +1 red.
        assert!(Colormap::Magma.color(0.0).iter().all(|&c| c < 10));
        assert!(Colormap::Inferno.color(1.0)[0] > 240);
        let (b, w, r) = (
            Colormap::RdBu.color(-1.0),
            Colormap::RdBu.color(0.0),
            Colormap::RdBu.color(1.0),
        );
        assert!(b[2] > b[0] && r[0] > r[2], "{b:?} {r:?}");
        assert!(w.iter().all(|&c| c > 230), "{w:?}");
        assert_eq!(Colormap::Single([255, 0, 0]).color(0.5), [128, 0, 0]);
        assert!(Colormap::parse("jet").is_err());
        assert_eq!(Colormap::parse("diverging").unwrap(), Colormap::RdBu);
    }
}
