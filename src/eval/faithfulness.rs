//! Model-based faithfulness metrics: deletion and insertion curves (RISE, Petsiuk et al.
//! 2018) and faithfulness correlation (Bhatt et al. 2020, as Quantus computes it).
//!
//! They ask the model itself whether the pixels a map calls important matter to it. Each
//! takes one image `[3, H, W]` (or `[1, 3, H, W]`) in [0, 1], a target class and a per-pixel
//! map `[H*W]`, and runs the model in eval mode in batches without gradients.

use crate::attribution::integrated_gradients::gaussian_blur;
use crate::model::Classifier;
use crate::rng::SeededRng;
use crate::{Error, Result};
use candle_core::{Device, Tensor, D};

/// Options of the deletion and insertion curves.
#[derive(Debug, Clone, PartialEq)]
pub struct CurveOptions {
    /// Curve segments: the pixels are removed (inserted) in this many equal steps, so the
    /// curve has `steps + 1` points. RISE uses one image row per step (224 at 224 px).
    pub steps: usize,
    /// Images per forward pass.
    pub batch: usize,
    /// Insertion starts from the image blurred with this odd Gaussian kernel size ...
    pub blur_kernel: usize,
    /// ... and standard deviation (RISE: 11 and 5 at 224 px).
    pub blur_sigma: f32,
}

impl CurveOptions {
    /// RISE's settings scaled to an `size`-pixel image: one row per step, the 11-pixel,
    /// sigma-5 blur scaled by size/224 (at least a 3-pixel kernel with sigma 1).
    pub fn for_size(size: usize) -> Self {
        let scale = size as f32 / 224.0;
        let mut k = ((11.0 * scale).round() as usize).max(3);
        if k.is_multiple_of(2) {
            k += 1;
        }
        CurveOptions {
            steps: size.max(1),
            batch: 64,
            blur_kernel: k,
            blur_sigma: (5.0 * scale).max(1.0),
        }
    }
}

/// One deletion or insertion curve.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Curve {
    /// Share of pixels removed (inserted) at each point, 0 ..= 1.
    pub fractions: Vec<f64>,
    /// Softmax probability of the target class at each point.
    pub probs: Vec<f64>,
    /// Area under the curve by the trapezoid rule over equally spaced points, as RISE's
    /// `auc`: (sum p - p_0/2 - p_last/2) / (points - 1).
    pub auc: f64,
}

/// RISE's area under a curve of equally spaced points.
pub fn trapezoid_auc(p: &[f64]) -> f64 {
    if p.len() < 2 {
        return p.first().copied().unwrap_or(f64::NAN);
    }
    (p.iter().sum::<f64>() - p[0] / 2.0 - p[p.len() - 1] / 2.0) / (p.len() - 1) as f64
}

fn image_pixels(x: &Tensor) -> Result<(Vec<f32>, usize, usize)> {
    let x = if x.rank() == 4 {
        x.squeeze(0)?
    } else {
        x.clone()
    };
    let (c, h, w) = x.dims3()?;
    if c != 3 {
        return Err(Error::data(format!(
            "faithfulness metric: expected 3 channels, got {c}"
        )));
    }
    Ok((x.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?, h, w))
}

/// Pixel order by decreasing saliency (ties keep pixel order).
fn order_desc(map: &[f32]) -> Vec<usize> {
    let mut o: Vec<usize> = (0..map.len()).collect();
    o.sort_by(|&i, &j| {
        map[j]
            .partial_cmp(&map[i])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    o
}

/// Target-class softmax probabilities (or logits) of many images, in batches.
fn scores<C: Classifier + ?Sized>(
    model: &C,
    images: &[f32],
    dims: (usize, usize),
    target: usize,
    batch: usize,
    softmax: bool,
    device: &Device,
) -> Result<Vec<f64>> {
    let (h, w) = dims;
    let per = 3 * h * w;
    let n = images.len() / per;
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let m = batch.max(1).min(n - i);
        let x = Tensor::from_slice(&images[i * per..(i + m) * per], (m, 3, h, w), device)?;
        let logits = model.logits(&x)?;
        let k = logits.dim(1)?;
        if target >= k {
            return Err(Error::data(format!(
                "faithfulness metric: target class {target}, but the model has {k} classes"
            )));
        }
        let s = if softmax {
            candle_nn::ops::softmax(&logits, D::Minus1)?
        } else {
            logits
        };
        let v: Vec<f32> = s.narrow(1, target, 1)?.flatten_all()?.to_vec1()?;
        out.extend(v.into_iter().map(|p| p as f64));
        i += m;
    }
    Ok(out)
}

/// Deletion and insertion curves of one map (RISE). Pixels are taken in order of decreasing
/// saliency, `ceil(H*W / steps)` per step. Deletion starts from the image and sets the pixels
/// (all three channels) to 0; insertion starts from the blurred image and puts the original
/// pixels back. Each point is the target class's softmax probability. A faithful map makes
/// the deletion curve fall fast (low AUC) and the insertion curve rise fast (high AUC).
pub fn deletion_insertion<C: Classifier + ?Sized>(
    model: &C,
    x: &Tensor,
    target: usize,
    map: &[f32],
    opts: &CurveOptions,
) -> Result<(Curve, Curve)> {
    // constant weights for the whole call: their derived forms computed once
    crate::ops::with_frozen_weights(|| {
        let (px, h, w) = image_pixels(x)?;
        let hw = h * w;
        if map.len() != hw {
            return Err(Error::data(format!(
                "deletion/insertion: the map has {} values for a {h}x{w} image",
                map.len()
            )));
        }
        if opts.steps == 0 {
            return Err(Error::data("deletion/insertion: steps must be at least 1"));
        }
        let blurred: Vec<f32> = gaussian_blur(
            &Tensor::from_slice(&px, (1, 3, h, w), &Device::Cpu)?,
            opts.blur_kernel,
            opts.blur_sigma,
        )?
        .flatten_all()?
        .to_vec1()?;
        let order = order_desc(map);
        let per_step = hw.div_ceil(opts.steps);
        let points = hw.div_ceil(per_step) + 1;
        let mut del = Vec::with_capacity(points * 3 * hw);
        let mut ins = Vec::with_capacity(points * 3 * hw);
        let mut cur_del = px.clone();
        let mut cur_ins = blurred;
        let mut fractions = Vec::with_capacity(points);
        for k in 0..points {
            if k > 0 {
                for &p in order.iter().skip((k - 1) * per_step).take(per_step) {
                    for c in 0..3 {
                        cur_del[c * hw + p] = 0.0;
                        cur_ins[c * hw + p] = px[c * hw + p];
                    }
                }
            }
            fractions.push(((k * per_step).min(hw)) as f64 / hw as f64);
            del.extend_from_slice(&cur_del);
            ins.extend_from_slice(&cur_ins);
        }
        let device = x.device();
        let pd = scores(model, &del, (h, w), target, opts.batch, true, device)?;
        let pi = scores(model, &ins, (h, w), target, opts.batch, true, device)?;
        Ok((
            Curve {
                fractions: fractions.clone(),
                auc: trapezoid_auc(&pd),
                probs: pd,
            },
            Curve {
                fractions,
                auc: trapezoid_auc(&pi),
                probs: pi,
            },
        ))
    })
}

/// Options of the faithfulness correlation (Quantus's defaults: 100 runs of 224 features).
#[derive(Debug, Clone, PartialEq)]
pub struct CorrelationOptions {
    pub runs: usize,
    /// Features (single channel values of the `3*H*W` input) replaced per run.
    pub subset: usize,
    pub batch: usize,
    pub seed: u64,
}

impl CorrelationOptions {
    /// Quantus's 100 runs, with its 224-of-150,528 subset scaled to the image's feature count.
    pub fn for_size(size: usize, seed: u64) -> Self {
        let features = 3 * size * size;
        CorrelationOptions {
            runs: 100,
            subset: ((features as f64 * 224.0 / 150_528.0).round() as usize).max(1),
            batch: 64,
            seed,
        }
    }
}

/// Faithfulness correlation (Bhatt et al. 2020; Quantus `FaithfulnessCorrelation` with its
/// defaults): in each run a random subset S of the input's features (channel values) is set
/// to the image's minimum ("black"); the Pearson correlation, over the runs, between
/// sum_{i in S} a_i and the drop of the target logit f(x) - f(x with S replaced). `map` is
/// either per feature (`3*H*W`) or per pixel (`H*W`, broadcast over the channels as Quantus
/// does). Pass a signed map: the sign is what the correlation tests.
pub fn faithfulness_correlation<C: Classifier + ?Sized>(
    model: &C,
    x: &Tensor,
    target: usize,
    map: &[f32],
    opts: &CorrelationOptions,
) -> Result<f64> {
    let n = x.elem_count();
    let mut rng = SeededRng::new(opts.seed);
    let subsets: Vec<Vec<usize>> = (0..opts.runs)
        .map(|_| {
            // A partial Fisher-Yates shuffle: `subset` distinct features.
            let mut idx: Vec<usize> = (0..n).collect();
            let k = opts.subset.min(n);
            for i in 0..k {
                let j = i + rng.below(n - i);
                idx.swap(i, j);
            }
            idx.truncate(k);
            idx
        })
        .collect();
    faithfulness_correlation_with(model, x, target, map, &subsets, opts.batch)
}

/// [`faithfulness_correlation`] with the feature subsets given (indices into `3*H*W`).
pub fn faithfulness_correlation_with<C: Classifier + ?Sized>(
    model: &C,
    x: &Tensor,
    target: usize,
    map: &[f32],
    subsets: &[Vec<usize>],
    batch: usize,
) -> Result<f64> {
    // constant weights for the whole call: their derived forms computed once
    crate::ops::with_frozen_weights(|| {
        let (px, h, w) = image_pixels(x)?;
        let hw = h * w;
        let n = px.len();
        let attr = |i: usize| -> f64 {
            if map.len() == n {
                map[i] as f64
            } else {
                map[i % hw] as f64
            }
        };
        if map.len() != n && map.len() != hw {
            return Err(Error::data(format!(
                "faithfulness correlation: the map has {} values for a 3x{h}x{w} image",
                map.len()
            )));
        }
        let black = px.iter().copied().fold(f32::INFINITY, f32::min);
        let mut images = Vec::with_capacity((subsets.len() + 1) * n);
        images.extend_from_slice(&px);
        let mut sums = Vec::with_capacity(subsets.len());
        for s in subsets {
            let mut p = px.clone();
            let mut sum = 0.0;
            for &i in s {
                if i >= n {
                    return Err(Error::data(format!(
                        "faithfulness correlation: feature {i} outside the image"
                    )));
                }
                p[i] = black;
                sum += attr(i);
            }
            sums.push(sum);
            images.extend_from_slice(&p);
        }
        let y = scores(model, &images, (h, w), target, batch, false, x.device())?;
        let deltas: Vec<f64> = y[1..].iter().map(|v| y[0] - v).collect();
        Ok(super::stats::pearson(&sums, &deltas))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two classes; logit 1 = sum of the red channel, logit 0 = 0.
    struct RedSum;
    impl Classifier for RedSum {
        fn logits(&self, x: &Tensor) -> Result<Tensor> {
            let r = x.narrow(1, 0, 1)?.flatten_from(1)?.sum_keepdim(1)?;
            Ok(Tensor::cat(&[&r.zeros_like()?, &r], 1)?)
        }
        fn num_classes(&self) -> usize {
            2
        }
        fn device(&self) -> &Device {
            &Device::Cpu
        }
        fn arch(&self) -> &str {
            "red-sum"
        }
    }

    #[test]
    fn curves_by_hand() {
        // 2x2 image, red channel 1,2,3,4 (pixel order), other channels 0.
        let mut px = vec![0f32; 12];
        px[..4].copy_from_slice(&[1.0, 2.0, 3.0, 4.0]);
        let x = Tensor::from_slice(&px, (3, 2, 2), &Device::Cpu).unwrap();
        let map = [0.1, 0.2, 0.3, 0.4];
        let opts = CurveOptions {
            steps: 2,
            batch: 2,
            blur_kernel: 3,
            blur_sigma: 1.0,
        };
        let (del, ins) = deletion_insertion(&RedSum, &x, 1, &map, &opts).unwrap();
        // deletion: red sums 10, 3 (pixels 3,2 removed), 0
        let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
        let want = [sig(10.0), sig(3.0), sig(0.0)];
        for (a, b) in del.probs.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} {b}");
        }
        assert_eq!(del.fractions, vec![0.0, 0.5, 1.0]);
        assert!((del.auc - (want[0] / 2.0 + want[1] + want[2] / 2.0) / 2.0).abs() < 1e-6);
        // insertion ends at the image itself
        assert!((ins.probs[2] - sig(10.0)).abs() < 1e-6);
        // a map ranking the wrong way deletes slower
        let (del2, _) = deletion_insertion(&RedSum, &x, 1, &[0.4, 0.3, 0.2, 0.1], &opts).unwrap();
        assert!(del2.auc > del.auc);
        assert!(deletion_insertion(&RedSum, &x, 1, &[0.0; 3], &opts).is_err());
    }

    #[test]
    fn correlation_by_hand() {
        let mut px = vec![0f32; 12];
        px[..4].copy_from_slice(&[1.0, 2.0, 3.0, 4.0]);
        let x = Tensor::from_slice(&px, (3, 2, 2), &Device::Cpu).unwrap();
        // the true attribution of the red-sum logit with a black (0) baseline: x on red, 0 else
        let exact: Vec<f32> = px.clone();
        let subsets: Vec<Vec<usize>> = vec![vec![0, 5], vec![1, 2], vec![3, 4], vec![2, 8]];
        let c = faithfulness_correlation_with(&RedSum, &x, 1, &exact, &subsets, 3).unwrap();
        assert!((c - 1.0).abs() < 1e-9, "{c}");
        let anti: Vec<f32> = exact.iter().map(|v| -v).collect();
        let c = faithfulness_correlation_with(&RedSum, &x, 1, &anti, &subsets, 3).unwrap();
        assert!((c + 1.0).abs() < 1e-9);
        let opts = CorrelationOptions {
            runs: 20,
            subset: 2,
            batch: 8,
            seed: 3,
        };
        let c = faithfulness_correlation(&RedSum, &x, 1, &exact, &opts).unwrap();
        assert!((c - 1.0).abs() < 1e-9);
        let c2 = faithfulness_correlation(&RedSum, &x, 1, &exact, &opts).unwrap();
        assert_eq!(c, c2);
    }
}
