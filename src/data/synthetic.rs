//! The built-in synthetic lesion set: dermoscopy-like images with a ground-truth lesion mask,
//! deterministic from a seed at any size (the idea of BlockMNIST, for skin lesions).
//!
//! The class evidence lies only inside the lesion, echoing dermoscopic cues:
//! - 0 `nevus`: symmetric, even brown, smooth soft border;
//! - 1 `melanoma`: asymmetric, irregular border, several colours (dark brown, black,
//!   blue-grey, red) varying inside;
//! - 2 `keratosis`: lighter, waxy, textured surface, sharp edge.
//!
//! Class-independent distractors sit outside or across the lesion, as in the paper's failure
//! cases: hairs, dark vignetted corners, ink marks and ruler ticks, varied skin tone and
//! lighting. The outline and the colouring each come from another class with probability
//! `confusion` (0.12), so 1 - 0.88² ≈ 22.6% of the lesions borrow at least one of them
//! ([`borrowed_cues`]); a classifier cannot be perfect and differences between models show.

use crate::rng::SeededRng;
use image::{GrayImage, Luma, Rgb, RgbImage};
use std::f32::consts::PI;

/// Class names of the synthetic set, in label order.
pub const CLASS_NAMES: [&str; 3] = ["nevus", "melanoma", "keratosis"];

/// Parameters of the generator.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticConfig {
    pub seed: u64,
    /// Probability that a lesion takes its shape or colouring from another class.
    pub confusion: f32,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            seed: 0,
            confusion: 0.12,
        }
    }
}

fn mix(seed: u64, idx: u64) -> u64 {
    let mut z = seed ^ idx.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

fn lerp3(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

struct Blob {
    x: f32,
    y: f32,
    r: f32,
    color: [f32; 3],
}

struct Hair {
    pts: Vec<(f32, f32)>,
    width: f32,
    color: [f32; 3],
}

struct Scene {
    skin: [f32; 3],
    light_dir: (f32, f32),
    light: f32,
    waves: Vec<(f32, f32, f32, f32)>,
    cx: f32,
    cy: f32,
    r0: f32,
    harmonics: Vec<(f32, f32, f32)>,
    edge: f32,
    /// The classes whose outline and whose colouring the lesion has (its own label unless
    /// borrowed).
    shape: usize,
    style: usize,
    base: [f32; 3],
    blobs: Vec<Blob>,
    texture: (f32, f32, f32, f32),
    hairs: Vec<Hair>,
    vignette: f32,
    ruler: Option<(usize, f32)>,
    ink: Option<(f32, f32, f32)>,
}

fn scene(cfg: &SyntheticConfig, idx: u64, label: usize) -> Scene {
    let mut rng = SeededRng::new(mix(cfg.seed, idx));
    let tone = rng.uniform(0.0, 1.0);
    let skin = lerp3([236.0, 198.0, 172.0], [160.0, 110.0, 78.0], tone);
    let skin = [
        skin[0] * rng.uniform(0.95, 1.05),
        skin[1] * rng.uniform(0.95, 1.05),
        skin[2] * rng.uniform(0.95, 1.05),
    ];
    let a = rng.uniform(0.0, 2.0 * PI);
    let light = rng.uniform(0.0, 0.35);
    let waves = (0..3)
        .map(|_| {
            (
                rng.uniform(1.0, 5.0),
                rng.uniform(0.0, 2.0 * PI),
                rng.uniform(0.0, 2.0 * PI),
                rng.uniform(0.01, 0.04),
            )
        })
        .collect();
    // Shape and colour may come from another class (the confusable cases).
    let pick = |rng: &mut SeededRng| -> usize {
        if rng.uniform(0.0, 1.0) < cfg.confusion {
            (label + 1 + rng.below(2)) % 3
        } else {
            label
        }
    };
    let shape = pick(&mut rng);
    let style = pick(&mut rng);
    let cx = 0.5 + rng.uniform(-0.12, 0.12);
    let cy = 0.5 + rng.uniform(-0.12, 0.12);
    let r0 = rng.uniform(0.16, 0.29);
    let harmonics = (2..=7)
        .map(|k| {
            let amp = match (shape, k) {
                (0, 2) => rng.uniform(0.0, 0.12),
                (0, _) => rng.uniform(0.0, 0.015),
                (1, _) => rng.uniform(0.04, 0.13),
                (_, 2) => rng.uniform(0.0, 0.12),
                (_, _) => rng.uniform(0.0, 0.035),
            };
            (k as f32, amp, rng.uniform(0.0, 2.0 * PI))
        })
        .collect();
    let edge = match style {
        0 => rng.uniform(0.08, 0.16),
        1 => rng.uniform(0.03, 0.1),
        _ => rng.uniform(0.005, 0.02),
    };
    let base = match style {
        0 => {
            let k = rng.uniform(0.75, 1.1);
            [125.0 * k, 78.0 * k, 48.0 * k]
        }
        1 => {
            let k = rng.uniform(0.75, 1.05);
            [95.0 * k, 58.0 * k, 38.0 * k]
        }
        _ => {
            let k = rng.uniform(0.85, 1.1);
            [180.0 * k, 140.0 * k, 98.0 * k]
        }
    };
    let blobs = if style == 1 {
        let palette = [
            [30.0, 24.0, 24.0],
            [98.0, 108.0, 130.0],
            [165.0, 62.0, 60.0],
            [68.0, 40.0, 26.0],
        ];
        let n = 2 + rng.below(3);
        (0..n)
            .map(|_| {
                let ang = rng.uniform(0.0, 2.0 * PI);
                let dist = rng.uniform(0.0, 0.7) * r0;
                Blob {
                    x: cx + dist * ang.cos(),
                    y: cy + dist * ang.sin(),
                    r: rng.uniform(0.25, 0.55) * r0,
                    color: palette[rng.below(4)],
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    let texture = (
        rng.uniform(14.0, 26.0),
        rng.uniform(0.0, PI),
        rng.uniform(10.0, 20.0),
        rng.uniform(0.0, 2.0 * PI),
    );
    let n_hairs = [0usize, 0, 1, 2, 3, 5][rng.below(6)];
    let hairs = (0..n_hairs)
        .map(|_| {
            let (x0, y0) = (rng.uniform(-0.1, 1.1), rng.uniform(-0.1, 1.1));
            let ang = rng.uniform(0.0, 2.0 * PI);
            let len = rng.uniform(0.4, 1.2);
            let bend = rng.uniform(-0.3, 0.3);
            let pts = (0..=16)
                .map(|i| {
                    let t = i as f32 / 16.0;
                    let a = ang + bend * t * 2.0;
                    (x0 + len * t * a.cos(), y0 + len * t * a.sin())
                })
                .collect();
            let d = rng.uniform(20.0, 60.0);
            Hair {
                pts,
                width: rng.uniform(0.003, 0.008),
                color: [d, d * 0.8, d * 0.7],
            }
        })
        .collect();
    let vignette = if rng.uniform(0.0, 1.0) < 0.35 {
        rng.uniform(0.5, 1.0)
    } else {
        0.0
    };
    let ruler = (rng.uniform(0.0, 1.0) < 0.2).then(|| (rng.below(4), rng.uniform(0.03, 0.05)));
    let ink = (rng.uniform(0.0, 1.0) < 0.2).then(|| {
        let ang = rng.uniform(0.0, 2.0 * PI);
        (
            0.5 + 0.42 * ang.cos(),
            0.5 + 0.42 * ang.sin(),
            rng.uniform(0.03, 0.07),
        )
    });
    Scene {
        skin,
        light_dir: (a.cos(), a.sin()),
        light,
        waves,
        cx,
        cy,
        r0,
        harmonics,
        edge,
        shape,
        style,
        base,
        blobs,
        texture,
        hairs,
        vignette,
        ruler,
        ink,
    }
}

impl Scene {
    /// Normalised radius d (< 1 inside the lesion).
    fn lesion_d(&self, u: f32, v: f32) -> f32 {
        let (dx, dy) = (u - self.cx, v - self.cy);
        let rho = (dx * dx + dy * dy).sqrt();
        let th = dy.atan2(dx);
        let r = self.r0
            * (1.0
                + self
                    .harmonics
                    .iter()
                    .map(|(k, a, p)| a * (k * th + p).cos())
                    .sum::<f32>());
        rho / r.max(1e-3)
    }

    fn color(&self, u: f32, v: f32) -> [f32; 3] {
        let wave: f32 = self
            .waves
            .iter()
            .map(|(f, p1, p2, a)| a * (f * u * 2.0 * PI + p1).sin() * (f * v * 2.0 * PI + p2).cos())
            .sum();
        let light =
            1.0 + self.light * ((u - 0.5) * self.light_dir.0 + (v - 0.5) * self.light_dir.1) * 2.0;
        let mut c = self.skin.map(|s| s * (1.0 + wave));
        let d = self.lesion_d(u, v);
        let alpha = 1.0 - smoothstep(1.0 - self.edge, 1.0 + self.edge, d);
        if alpha > 0.0 {
            let mut l = self.base;
            match self.style {
                0 => {
                    // Even brown, slightly darker centre.
                    let k = 1.0 - 0.12 * (1.0 - d.min(1.0));
                    l = l.map(|x| x * k);
                }
                1 => {
                    for b in &self.blobs {
                        let dd = ((u - b.x).powi(2) + (v - b.y).powi(2)).sqrt() / b.r;
                        let w = 1.0 - smoothstep(0.5, 1.0, dd);
                        l = lerp3(l, b.color, 0.85 * w);
                    }
                    let mottle = 0.08 * ((u * 37.0).sin() * (v * 41.0).cos());
                    l = l.map(|x| x * (1.0 + mottle));
                }
                _ => {
                    let (f1, a1, f2, p2) = self.texture;
                    let s = (f1 * (u * a1.cos() + v * a1.sin()) * 2.0 * PI).sin();
                    let t = (f2 * (u * a1.sin() - v * a1.cos()) * 2.0 * PI + p2).sin();
                    let k = 1.0 + 0.13 * s * t + 0.06 * s;
                    l = l.map(|x| x * k);
                }
            }
            c = lerp3(c, l, alpha);
        }
        for h in &self.hairs {
            c = lerp3(c, h.color, 0.9 * h.weight(u, v));
        }
        if self.ruler_at(u, v) {
            c = [35.0, 35.0, 40.0];
        }
        if self.ink_at(u, v) {
            c = lerp3(c, [90.0, 55.0, 140.0], 0.85);
        }
        c = c.map(|x| x * light);
        let k = 1.0 - self.corner_darkening(u, v);
        c.map(|x| x * k)
    }

    /// Whether a ruler tick covers `(u, v)`.
    fn ruler_at(&self, u: f32, v: f32) -> bool {
        let Some((side, step)) = self.ruler else {
            return false;
        };
        let (along, across) = match side {
            0 => (u, v),
            1 => (u, 1.0 - v),
            2 => (v, u),
            _ => (v, 1.0 - u),
        };
        across < 0.06 && (along / step).fract() < 0.12
    }

    /// Whether the ink ring covers `(u, v)`.
    fn ink_at(&self, u: f32, v: f32) -> bool {
        self.ink.is_some_and(|(ix, iy, r)| {
            let dd = ((u - ix).powi(2) + (v - iy).powi(2)).sqrt();
            (dd - r).abs() < 0.008
        })
    }

    /// How much the dark corners darken `(u, v)` (0: not at all).
    fn corner_darkening(&self, u: f32, v: f32) -> f32 {
        if self.vignette <= 0.0 {
            return 0.0;
        }
        let r = ((u - 0.5).powi(2) + (v - 0.5).powi(2)).sqrt() / std::f32::consts::FRAC_1_SQRT_2;
        self.vignette * smoothstep(0.75, 1.0, r)
    }

    /// Whether artifact `a` changes the colour at `(u, v)`.
    fn artifact_at(&self, a: Artifact, u: f32, v: f32) -> bool {
        match a {
            Artifact::Hair => self.hairs.iter().any(|h| h.weight(u, v) > 0.0),
            Artifact::Ruler => self.ruler_at(u, v),
            Artifact::Ink => self.ink_at(u, v),
            Artifact::Corners => self.corner_darkening(u, v) > 0.0,
        }
    }
}

impl Hair {
    /// The hair's opacity at `(u, v)` (before the 0.9 blend; 0 away from it).
    fn weight(&self, u: f32, v: f32) -> f32 {
        let mut best = f32::INFINITY;
        for w in self.pts.windows(2) {
            let (ax, ay) = w[0];
            let (bx, by) = w[1];
            let (vx, vy) = (bx - ax, by - ay);
            let t =
                (((u - ax) * vx + (v - ay) * vy) / (vx * vx + vy * vy).max(1e-9)).clamp(0.0, 1.0);
            let (px, py) = (ax + t * vx - u, ay + t * vy - v);
            best = best.min((px * px + py * py).sqrt());
        }
        1.0 - smoothstep(self.width * 0.5, self.width, best)
    }
}

/// The class-independent distractors the lesion generator draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Artifact {
    Hair,
    Ruler,
    Ink,
    /// Dark vignetted corners.
    Corners,
}

impl Artifact {
    pub const ALL: [Artifact; 4] = [
        Artifact::Hair,
        Artifact::Ruler,
        Artifact::Ink,
        Artifact::Corners,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Artifact::Hair => "hair",
            Artifact::Ruler => "ruler",
            Artifact::Ink => "ink",
            Artifact::Corners => "corners",
        }
    }
}

/// The mask of each artifact kind of image `idx` at `size x size`, in [`Artifact::ALL`]
/// order: 255 where the artifact changes the colour of any of the pixel's 2x2 samples (what
/// [`render`] draws), 0 elsewhere; all 0 when the image has none of that kind.
pub fn artifact_masks(
    cfg: &SyntheticConfig,
    idx: u64,
    label: usize,
    size: usize,
) -> Vec<(Artifact, GrayImage)> {
    let sc = scene(cfg, idx, label);
    let s = size as f32;
    let ss = 2usize;
    Artifact::ALL
        .iter()
        .map(|&a| {
            let m = GrayImage::from_fn(size as u32, size as u32, |x, y| {
                let hit = (0..ss * ss).any(|k| {
                    let u = (x as f32 + ((k % ss) as f32 + 0.5) / ss as f32) / s;
                    let v = (y as f32 + ((k / ss) as f32 + 0.5) / ss as f32) / s;
                    sc.artifact_at(a, u, v)
                });
                Luma([if hit { 255 } else { 0 }])
            });
            (a, m)
        })
        .collect()
}

/// The classes image `idx` of class `label` takes its outline and its colouring from (both
/// `label` unless borrowed; see the module's description).
pub fn borrowed_cues(cfg: &SyntheticConfig, idx: u64, label: usize) -> (usize, usize) {
    let s = scene(cfg, idx, label);
    (s.shape, s.style)
}

/// The lesion of image `idx` of class `label` with its class cues only: no confusable
/// shape or colouring and no distractors (hairs, ruler, ink, dark corners). Its colour at
/// `(u, v)` (the lesion lies near the centre of the unit square; outside it, skin).
pub(crate) fn clean_lesion(seed: u64, idx: u64, label: usize) -> impl Fn(f32, f32) -> [f32; 3] {
    let cfg = SyntheticConfig {
        seed,
        confusion: 0.0,
    };
    let mut sc = scene(&cfg, idx, label);
    sc.hairs.clear();
    sc.ruler = None;
    sc.ink = None;
    sc.vignette = 0.0;
    move |u, v| sc.color(u, v)
}

/// Renders image `idx` of class `label` at `size`×`size`, with its lesion mask (255 inside).
pub fn render(cfg: &SyntheticConfig, idx: u64, label: usize, size: usize) -> (RgbImage, GrayImage) {
    render_scene(&scene(cfg, idx, label), size)
}

fn render_scene(sc: &Scene, size: usize) -> (RgbImage, GrayImage) {
    let s = size as f32;
    let ss = 2usize; // 2x2 supersampling
    let img = RgbImage::from_fn(size as u32, size as u32, |x, y| {
        let mut acc = [0f32; 3];
        for sy in 0..ss {
            for sx in 0..ss {
                let u = (x as f32 + (sx as f32 + 0.5) / ss as f32) / s;
                let v = (y as f32 + (sy as f32 + 0.5) / ss as f32) / s;
                let c = sc.color(u, v);
                for k in 0..3 {
                    acc[k] += c[k];
                }
            }
        }
        Rgb(acc.map(|a| (a / (ss * ss) as f32).round().clamp(0.0, 255.0) as u8))
    });
    let mask = GrayImage::from_fn(size as u32, size as u32, |x, y| {
        let (u, v) = ((x as f32 + 0.5) / s, (y as f32 + 0.5) / s);
        Luma([if sc.lesion_d(u, v) < 1.0 { 255 } else { 0 }])
    });
    (img, mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// About 22.6% of the lesions borrow a cue (1 - 0.88²), a borrowed cue is another class's,
    /// and with `confusion` 0 none is borrowed.
    #[test]
    fn borrowed_cues_come_at_the_configured_rate() {
        let cfg = SyntheticConfig::default();
        let n = 3000u64;
        let mut borrowed = 0;
        for idx in 0..n {
            let label = (idx % 3) as usize;
            let (shape, style) = borrowed_cues(&cfg, idx, label);
            assert!(shape < 3 && style < 3);
            borrowed += (shape != label || style != label) as usize;
            let none = SyntheticConfig {
                confusion: 0.0,
                ..cfg.clone()
            };
            assert_eq!(borrowed_cues(&none, idx, label), (label, label));
        }
        let share = borrowed as f64 / n as f64;
        assert!((share - 0.2256).abs() < 0.025, "{share}");
    }

    /// Each artifact mask covers exactly what is drawn: outside it the image is bit-identical
    /// to the same scene rendered without that artifact, inside it some pixels differ, and an
    /// image without the artifact has an empty mask.
    #[test]
    fn artifact_masks_cover_exactly_what_is_drawn() {
        let cfg = SyntheticConfig::default();
        let size = 96;
        let mut seen = [0usize; 4];
        for idx in 0..60u64 {
            let label = (idx % 3) as usize;
            let full = scene(&cfg, idx, label);
            let (img, _) = render_scene(&full, size);
            let masks = artifact_masks(&cfg, idx, label, size);
            for (k, (a, mask)) in masks.iter().enumerate() {
                let mut without = scene(&cfg, idx, label);
                let present = match a {
                    Artifact::Hair => !std::mem::take(&mut without.hairs).is_empty(),
                    Artifact::Ruler => without.ruler.take().is_some(),
                    Artifact::Ink => without.ink.take().is_some(),
                    Artifact::Corners => std::mem::replace(&mut without.vignette, 0.0) > 0.0,
                };
                let (plain, _) = render_scene(&without, size);
                let mut inside_diff = 0;
                let mut covered = 0;
                for (x, y, px) in mask.enumerate_pixels() {
                    let differs = img.get_pixel(x, y) != plain.get_pixel(x, y);
                    if px.0[0] == 255 {
                        covered += 1;
                        inside_diff += differs as usize;
                    } else {
                        assert!(
                            !differs,
                            "{a:?} of image {idx} drawn outside its mask at ({x}, {y})"
                        );
                    }
                }
                // (A hair may lie wholly outside the image: present, but nothing drawn.)
                assert!(
                    present || covered == 0,
                    "{a:?} of image {idx}: a mask without it"
                );
                if covered > 0 {
                    assert!(
                        inside_diff > 0,
                        "{a:?} of image {idx}: nothing drawn in its mask"
                    );
                    seen[k] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&n| n > 0), "every kind occurs: {seen:?}");
    }

    #[test]
    fn deterministic_and_masks_cover_lesions() {
        let cfg = SyntheticConfig {
            seed: 7,
            ..Default::default()
        };
        let (a, ma) = render(&cfg, 5, 2, 48);
        let (b, mb) = render(&cfg, 5, 2, 48);
        assert_eq!(a.as_raw(), b.as_raw());
        assert_eq!(ma.as_raw(), mb.as_raw());
        let (c, _) = render(
            &SyntheticConfig {
                seed: 8,
                ..Default::default()
            },
            5,
            2,
            48,
        );
        assert_ne!(a.as_raw(), c.as_raw());
        for label in 0..3 {
            for idx in 0..12u64 {
                let (_, m) = render(&cfg, idx * 3 + label as u64, label, 64);
                let frac = m.pixels().filter(|p| p[0] == 255).count() as f32 / (64.0 * 64.0);
                assert!(
                    frac > 0.04 && frac < 0.45,
                    "lesion covers {frac} of the image"
                );
            }
        }
    }

    #[test]
    fn balanced_items() {
        let d = crate::data::open::synthetic(&SyntheticConfig::default(), 10, 1);
        assert_eq!(d.items.len(), 30);
        for c in 0..3 {
            assert_eq!(d.items.iter().filter(|i| i.label == c).count(), 10);
        }
    }
}
