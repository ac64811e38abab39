//! `synthetic:blocks`, a built-in known-positive control after BlockMNIST (Shah, Jain &
//! Netrapalli, NeurIPS 2021, "Do input gradients highlight discriminative features?").
//!
//! The design, fixed before any model was trained on it:
//!
//! - An image of `S x S` pixels is two blocks: the top `floor(S/2)` rows and the bottom rows.
//! - One block, the **signal block**, carries all the class evidence: a lesion of the class
//!   drawn with the lesion generator's class cues only ([`super::synthetic`]: nevus
//!   symmetric and even brown, melanoma asymmetric and multi-coloured, keratosis light, waxy
//!   and sharp-edged), with no confusable shapes or colourings (so the classes can be told
//!   apart without error) and no distractors. The lesion is a square of the block's height,
//!   placed at a random horizontal offset; the rest of the block is the same scene's skin.
//! - The other block, the **null block**, is the same fixed, class-independent pattern in
//!   every image: a neutral grey field with a dark square outline.
//! - Which block is the signal is random: top or bottom with probability 1/2 per image.
//! - The ground-truth mask is the signal block, every pixel of it (255) and nothing else.
//! - Everything is deterministic from the seed and the image index, at any size.
//!
//! A classifier has to find the signal block to be right; it has no reason to use the null
//! block. Shah et al. report that standard models' input gradients still put much of their
//! mass on the null block, and that adversarially trained models' gradients stay on the
//! signal: relevance mass accuracy against this mask is the measurement.

use image::{GrayImage, Luma, Rgb, RgbImage};

/// Class names of the control, in label order (the lesion generator's classes).
pub const CLASS_NAMES: [&str; 3] = super::synthetic::CLASS_NAMES;

/// Parameters of the control set.
#[derive(Debug, Clone, PartialEq)]
pub struct BlocksConfig {
    pub seed: u64,
}

/// Which block holds the signal in image `idx`: `true` for the top one.
pub fn signal_on_top(seed: u64, idx: u64) -> bool {
    let mut r = crate::rng::SeededRng::new(seed ^ 0xb10c_5000 ^ idx.wrapping_mul(0x9E37_79B9));
    r.below(2) == 0
}

/// The null block's colour at `(x, y)` of a block `w x h` pixels: grey, with a dark square
/// outline centred in it (side 0.6 h, line 0.08 h).
fn null_pixel(x: usize, y: usize, w: usize, h: usize) -> [u8; 3] {
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let (px, py) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
    let half = 0.3 * h as f32;
    let line = (0.08 * h as f32).max(1.0);
    let d = px.abs().max(py.abs());
    if d <= half && d > half - line {
        [40, 40, 46]
    } else {
        [150, 150, 150]
    }
}

/// Renders image `idx` of class `label` at `size x size`, with its mask (255 on the signal
/// block, 0 on the null block).
pub fn render(cfg: &BlocksConfig, idx: u64, label: usize, size: usize) -> (RgbImage, GrayImage) {
    let top = size / 2;
    let on_top = signal_on_top(cfg.seed, idx);
    let (s0, s1) = if on_top { (0, top) } else { (top, size) };
    let bh = s1 - s0;
    let lesion = super::synthetic::clean_lesion(cfg.seed, idx, label);
    // Horizontal offset of the lesion's square in the signal block.
    let mut r = crate::rng::SeededRng::new(cfg.seed ^ 0x0ff5_e700 ^ idx.wrapping_mul(0x2545_F491));
    let off = r.uniform(0.0, (size - bh.min(size)) as f32);
    let side = bh.max(1) as f32;
    let ss = 2usize;
    let img = RgbImage::from_fn(size as u32, size as u32, |x, y| {
        let (x, y) = (x as usize, y as usize);
        if y < s0 || y >= s1 {
            let (n0, n1) = if on_top { (top, size) } else { (0, top) };
            return Rgb(null_pixel(x, y - n0, size, n1 - n0));
        }
        let mut acc = [0f32; 3];
        for sy in 0..ss {
            for sx in 0..ss {
                let u = (x as f32 + (sx as f32 + 0.5) / ss as f32 - off) / side;
                let v = ((y - s0) as f32 + (sy as f32 + 0.5) / ss as f32) / side;
                let c = lesion(u, v);
                for k in 0..3 {
                    acc[k] += c[k];
                }
            }
        }
        Rgb(acc.map(|a| (a / (ss * ss) as f32).round().clamp(0.0, 255.0) as u8))
    });
    let mask = GrayImage::from_fn(size as u32, size as u32, |_, y| {
        let y = y as usize;
        Luma([if y >= s0 && y < s1 { 255 } else { 0 }])
    });
    (img, mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_mask_is_exactly_the_signal_block_and_the_null_block_is_fixed() {
        let cfg = BlocksConfig { seed: 5 };
        let mut tops = 0;
        let mut null_blocks = Vec::new();
        for idx in 0..40u64 {
            let label = (idx % 3) as usize;
            for size in [32usize, 33, 64] {
                let (a, ma) = render(&cfg, idx, label, size);
                let (b, mb) = render(&cfg, idx, label, size);
                assert_eq!((a.as_raw(), ma.as_raw()), (b.as_raw(), mb.as_raw()));
                let top = signal_on_top(5, idx);
                let (s0, s1) = if top { (0, size / 2) } else { (size / 2, size) };
                for y in 0..size {
                    for x in 0..size {
                        let inside = (s0..s1).contains(&y);
                        assert_eq!(ma.get_pixel(x as u32, y as u32).0[0] == 255, inside);
                    }
                }
                if size == 64 {
                    let (n0, n1) = if top { (32, 64) } else { (0, 32) };
                    let rows: Vec<u8> = (n0..n1)
                        .flat_map(|y| (0..64).flat_map(move |x| [x, y]))
                        .collect::<Vec<_>>()
                        .chunks(2)
                        .flat_map(|p| a.get_pixel(p[0] as u32, p[1] as u32).0)
                        .collect();
                    null_blocks.push(rows);
                }
            }
            tops += signal_on_top(5, idx) as usize;
        }
        assert!((10..=30).contains(&tops), "signal on top in {tops} of 40");
        assert!(
            null_blocks.windows(2).all(|w| w[0] == w[1]),
            "the null block varies"
        );
        // Another seed gives other images.
        let (a, _) = render(&cfg, 3, 0, 32);
        let (b, _) = render(&BlocksConfig { seed: 6 }, 3, 0, 32);
        assert_ne!(a.as_raw(), b.as_raw());
    }
}
