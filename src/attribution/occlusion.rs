//! Occlusion (captum `Occlusion` with `sliding_window_shapes=(3, w, w)`, `strides=(3, s, s)`):
//! square windows over all channels are replaced by a baseline value; each pixel gets the mean
//! drop of the target logit over the windows that cover it. As captum, the number of window
//! positions per axis is ceil((size - window) / stride) + 1, so the last window is clipped at
//! the border and every pixel is covered. Windows are evaluated in batches.

use super::{target_logits, Attribution};
use crate::model::Classifier;
use crate::{Error, Result};
use candle_core::Tensor;

/// Occlusion with square windows.
#[derive(Debug, Clone)]
pub struct Occlusion {
    pub window: usize,
    pub stride: usize,
    /// Value written into occluded windows.
    pub baseline: f32,
    /// Occluded images per forward pass.
    pub perturbations_per_eval: usize,
}

/// Window start offsets along an axis of `size`, as captum.
pub fn window_starts(size: usize, window: usize, stride: usize) -> Vec<usize> {
    let count = (size - window).div_ceil(stride) + 1;
    (0..count).map(|i| i * stride).collect()
}

impl Attribution for Occlusion {
    fn name(&self) -> String {
        "occlusion".into()
    }
    fn describe(&self) -> String {
        format!(
            "Occlusion, {w}x{w} window, stride {}, baseline {}",
            self.stride,
            self.baseline,
            w = self.window
        )
    }

    fn attribute(&self, model: &dyn Classifier, x: &Tensor, targets: &[usize]) -> Result<Tensor> {
        // constant weights for the whole call: their derived forms computed once
        crate::ops::with_frozen_weights(|| {
            let (n, c, h, w) = x.dims4()?;
            if self.window == 0 || self.stride == 0 {
                return Err(Error::config(
                    "window",
                    format!("{} (stride {})", self.window, self.stride),
                    "occlusion's window and stride must be positive",
                ));
            }
            if self.window > h || self.window > w {
                return Err(Error::Config(crate::error::ConfigError::Invalid(
                    crate::error::Setting::sentence(
                        "window",
                        self.window,
                        format!(
                            "is larger than the {h}x{w} image; use an occlusion window <= {}",
                            h.min(w)
                        ),
                    ),
                )));
            }
            let ys = window_starts(h, self.window, self.stride);
            let xs = window_starts(w, self.window, self.stride);
            // captum enumerates with the last spatial axis slowest: feature k -> (k % ny, k / ny).
            let windows: Vec<(usize, usize)> = xs
                .iter()
                .flat_map(|&x0| ys.iter().map(move |&y0| (y0, x0)))
                .collect();
            let base_logits = target_logits(model, x, targets, self.perturbations_per_eval)?;
            let plane = h * w;
            let mut total = vec![0f32; n * plane];
            let mut count = vec![0f32; plane];
            for &(y0, x0) in &windows {
                for y in y0..(y0 + self.window).min(h) {
                    for xx in x0..(x0 + self.window).min(w) {
                        count[y * w + xx] += 1.0;
                    }
                }
            }
            // The occluded images are made where the images are (no copy to the host and back on
            // a GPU): per chunk of windows one mask `[k, 1, h, w]` (1 inside the window), shared by
            // every image, selecting the baseline value or the image's own, bit for bit.
            let fill = Tensor::new(self.baseline, x.device())?.to_dtype(x.dtype())?;
            for chunk in windows.chunks(self.perturbations_per_eval.max(1)) {
                let mut mask = vec![0u8; chunk.len() * plane];
                for (j, &(y0, x0)) in chunk.iter().enumerate() {
                    for y in y0..(y0 + self.window).min(h) {
                        let row = j * plane + y * w;
                        mask[row + x0..row + (x0 + self.window).min(w)].fill(1);
                    }
                }
                let shape = (chunk.len(), c, h, w);
                let mask = Tensor::from_vec(mask, (chunk.len(), 1, h, w), x.device())?
                    .broadcast_as(shape)?;
                let fill = fill.broadcast_as(shape)?;
                for i in 0..n {
                    let img = x.narrow(0, i, 1)?.broadcast_as(shape)?;
                    let bt = mask.where_cond(&fill, &img)?;
                    let tg = vec![targets[i]; chunk.len()];
                    let out = target_logits(model, &bt, &tg, chunk.len())?;
                    for (&(y0, x0), o) in chunk.iter().zip(out) {
                        let drop = base_logits[i] - o;
                        for y in y0..(y0 + self.window).min(h) {
                            for xx in x0..(x0 + self.window).min(w) {
                                total[i * plane + y * w + xx] += drop;
                            }
                        }
                    }
                }
            }
            let mut out = Vec::with_capacity(n * c * plane);
            for i in 0..n {
                let m: Vec<f32> = (0..plane)
                    .map(|p| total[i * plane + p] / count[p])
                    .collect();
                for _ in 0..c {
                    out.extend_from_slice(&m);
                }
            }
            Ok(Tensor::from_vec(out, (n, c, h, w), x.device())?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn starts_cover_the_image() {
        assert_eq!(window_starts(64, 50, 25), vec![0, 25]);
        assert_eq!(
            window_starts(224, 50, 25),
            vec![0, 25, 50, 75, 100, 125, 150, 175]
        );
        assert_eq!(window_starts(32, 12, 8), vec![0, 8, 16, 24]);
        assert_eq!(window_starts(32, 32, 8), vec![0]);
    }
}
