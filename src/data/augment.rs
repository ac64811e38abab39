//! Training-time augmentation (the paper's): random horizontal and vertical flips, rotation up
//! to 50 degrees plus a random affine rotation up to 10 degrees, and colour jitter
//! (brightness, contrast, saturation each up to 0.2). Masks follow the geometric transforms.
//! Seeded: the same seed gives the same images.

use crate::rng::SeededRng;

/// Augmentation settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AugmentConfig {
    pub hflip: bool,
    pub vflip: bool,
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    /// Maximum rotation in degrees (RandomRotation).
    pub rotation: f32,
    /// Maximum affine rotation in degrees (RandomAffine).
    pub affine: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            hflip: true,
            vflip: true,
            brightness: 0.2,
            contrast: 0.2,
            saturation: 0.2,
            rotation: 50.0,
            affine: 10.0,
        }
    }
}

/// Augments a `[3, s, s]` image in [0,1] (and its `[s, s]` mask) in place.
pub fn augment(
    img: &mut [f32],
    mask: Option<&mut [u8]>,
    s: usize,
    cfg: &AugmentConfig,
    rng: &mut SeededRng,
) {
    let plane = s * s;
    let hf = cfg.hflip && rng.uniform(0.0, 1.0) < 0.5;
    let vf = cfg.vflip && rng.uniform(0.0, 1.0) < 0.5;
    let angle = rng.uniform(-cfg.rotation, cfg.rotation.max(0.0) + f32::EPSILON)
        + rng.uniform(-cfg.affine, cfg.affine.max(0.0) + f32::EPSILON);
    let b = 1.0 + rng.uniform(-cfg.brightness, cfg.brightness + f32::EPSILON);
    let c = 1.0 + rng.uniform(-cfg.contrast, cfg.contrast + f32::EPSILON);
    let sat = 1.0 + rng.uniform(-cfg.saturation, cfg.saturation + f32::EPSILON);
    // Geometry: output pixel -> source pixel (inverse rotation about the centre, then flips).
    let (sin, cos) = (angle.to_radians()).sin_cos();
    let ctr = (s as f32 - 1.0) / 2.0;
    let src = img.to_vec();
    let src_mask = mask.as_ref().map(|m| m.to_vec());
    let mut out_mask = src_mask.as_ref().map(|_| vec![0u8; plane]);
    for y in 0..s {
        for x in 0..s {
            let (dx, dy) = (x as f32 - ctr, y as f32 - ctr);
            let mut sx = cos * dx + sin * dy + ctr;
            let mut sy = -sin * dx + cos * dy + ctr;
            if hf {
                sx = s as f32 - 1.0 - sx;
            }
            if vf {
                sy = s as f32 - 1.0 - sy;
            }
            let o = y * s + x;
            // Bilinear for the image, zero outside.
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            for ch in 0..3 {
                let p = &src[ch * plane..(ch + 1) * plane];
                let at = |xx: f32, yy: f32| -> f32 {
                    if xx < 0.0 || yy < 0.0 || xx > s as f32 - 1.0 || yy > s as f32 - 1.0 {
                        0.0
                    } else {
                        p[yy as usize * s + xx as usize]
                    }
                };
                img[ch * plane + o] = (1.0 - fy)
                    * ((1.0 - fx) * at(x0, y0) + fx * at(x0 + 1.0, y0))
                    + fy * ((1.0 - fx) * at(x0, y0 + 1.0) + fx * at(x0 + 1.0, y0 + 1.0));
            }
            if let (Some(sm), Some(om)) = (&src_mask, &mut out_mask) {
                let (nx, ny) = (sx.round(), sy.round());
                om[o] = if nx < 0.0 || ny < 0.0 || nx > s as f32 - 1.0 || ny > s as f32 - 1.0 {
                    0
                } else {
                    sm[ny as usize * s + nx as usize]
                };
            }
        }
    }
    if let (Some(m), Some(om)) = (mask, out_mask) {
        m.copy_from_slice(&om);
    }
    // Colour jitter: brightness, contrast (towards the mean grey), saturation (towards grey).
    for v in img.iter_mut() {
        *v = (*v * b).clamp(0.0, 1.0);
    }
    let gray = |img: &[f32], i: usize| {
        0.299 * img[i] + 0.587 * img[plane + i] + 0.114 * img[2 * plane + i]
    };
    let mean = (0..plane).map(|i| gray(img, i)).sum::<f32>() / plane as f32;
    for v in img.iter_mut() {
        *v = (c * *v + (1.0 - c) * mean).clamp(0.0, 1.0);
    }
    for i in 0..plane {
        let g = gray(img, i);
        for ch in 0..3 {
            let v = &mut img[ch * plane + i];
            *v = (sat * *v + (1.0 - sat) * g).clamp(0.0, 1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_in_range_and_mask_follows_image() {
        let s = 32;
        // A bright square lesion on black with the matching mask.
        let mut img = vec![0f32; 3 * s * s];
        let mut mask = vec![0u8; s * s];
        for y in 8..20 {
            for x in 6..14 {
                mask[y * s + x] = 255;
                for c in 0..3 {
                    img[c * s * s + y * s + x] = 1.0;
                }
            }
        }
        for seed in 0..20 {
            let mut a = img.clone();
            let mut m = mask.clone();
            let cfg = AugmentConfig {
                brightness: 0.0,
                contrast: 0.0,
                saturation: 0.0,
                ..Default::default()
            };
            augment(&mut a, Some(&mut m), s, &cfg, &mut SeededRng::new(seed));
            assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
            // Where the mask says lesion the image is bright, and vice versa (allowing edges).
            let mut agree = 0;
            for i in 0..s * s {
                if (m[i] == 255) == (a[i] > 0.5) {
                    agree += 1;
                }
            }
            assert!(agree as f32 / (s * s) as f32 > 0.97, "seed {seed}: {agree}");
            assert!(m.iter().filter(|&&v| v == 255).count() > 60);
        }
        let mut a = img.clone();
        augment(
            &mut a,
            None,
            s,
            &AugmentConfig::default(),
            &mut SeededRng::new(3),
        );
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
        let mut b = img.clone();
        augment(
            &mut b,
            None,
            s,
            &AugmentConfig::default(),
            &mut SeededRng::new(3),
        );
        assert_eq!(a, b);
    }
}
