//! The model-randomisation sanity check (Adebayo et al. 2018, "Sanity checks for saliency
//! maps"), cascading: the layer groups are re-initialised one after another from the head
//! down (fc, layer4, layer3, layer2, conv1+layer1), and after each step the maps are compared
//! with the trained model's. A method whose maps depend on what the model learned loses
//! similarity as more of the model is randomised; one that stays similar is an edge detector,
//! not an explanation.

use super::stats::{spearman, ssim};
use crate::attribution::Attribution;
use crate::model::Network;
use crate::report::display::{reduce_channels, Reduce};
use crate::Result;
use candle_core::Tensor;
use std::collections::HashMap;

/// Similarity after one randomisation step.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SanityStep {
    /// The groups randomised so far (5 = fc first, then 4, 3, 2, 1).
    pub randomised: Vec<u8>,
    /// Mean over the images of the Spearman rank correlation of the per-pixel |attribution|
    /// maps (sum of |a| over RGB), trained versus randomised.
    pub spearman: f64,
    /// Mean SSIM of the same maps, each divided by its maximum (data range 1).
    pub ssim: f64,
    pub per_image_spearman: Vec<f64>,
    pub per_image_ssim: Vec<f64>,
}

/// A copy of `model` whose groups `groups` are re-initialised as a fresh model:
/// Kaiming-normal convolutions, BatchNorm weight 1, bias 0, running statistics reset. The
/// seed is mixed so that the new weights never coincide with the initialisation a training
/// run with the same seed started from.
pub fn randomise_groups(model: &dyn Network, groups: &[u8], seed: u64) -> Result<Box<dyn Network>> {
    let seed = seed ^ 0x5EED_5A17_C0DE_0001;
    let arch = model.kind();
    let fresh = crate::model::build(arch, model.num_classes(), seed, model.device())?;
    let keep: HashMap<String, Tensor> = model
        .state_dict()?
        .into_iter()
        .filter(|(name, _)| !groups.contains(&arch.group_of(name)))
        .collect();
    let mut all: HashMap<String, Tensor> = fresh.state_dict()?.into_iter().collect();
    all.extend(keep);
    fresh.load_tensors(&all, std::path::Path::new("<randomised model>"))?;
    Ok(fresh)
}

/// Per-pixel |attribution| maps `[N][H*W]` of `a` (`[N, C, H, W]`).
pub fn abs_maps(a: &Tensor) -> Result<Vec<Vec<f32>>> {
    let (n, c, h, w) = a.dims4()?;
    (0..n)
        .map(|i| {
            let v: Vec<f32> = a.get(i)?.flatten_all()?.to_vec1()?;
            Ok(reduce_channels(&v, c, h, w, Reduce::AbsSum))
        })
        .collect()
}

/// Spearman correlation and SSIM (max-normalised maps) of two per-pixel maps.
pub fn map_similarity(a: &[f32], b: &[f32], h: usize, w: usize) -> (f64, f64) {
    let norm = |m: &[f32]| -> Vec<f32> {
        let mx = m.iter().copied().fold(0f32, f32::max);
        if mx > 0.0 {
            m.iter().map(|v| v / mx).collect()
        } else {
            m.to_vec()
        }
    };
    (spearman(a, b), ssim(&norm(a), &norm(b), h, w, 1.0))
}

/// Runs the cascading randomisation on images `x` (`[N, 3, H, W]`) with their targets.
pub fn cascading_randomisation(
    model: &dyn Network,
    method: &dyn Attribution,
    x: &Tensor,
    targets: &[usize],
    seed: u64,
) -> Result<Vec<SanityStep>> {
    let (_, _, h, w) = x.dims4()?;
    let reference = abs_maps(&method.attribute(model, x, targets)?)?;
    let mut steps = Vec::new();
    let mut groups = Vec::new();
    for g in [5u8, 4, 3, 2, 1] {
        groups.push(g);
        let m = randomise_groups(model, &groups, seed)?;
        let m = m.as_ref();
        let maps = abs_maps(&method.attribute(m, x, targets)?)?;
        let (sp, ss): (Vec<f64>, Vec<f64>) = reference
            .iter()
            .zip(&maps)
            .map(|(a, b)| map_similarity(a, b, h, w))
            .unzip();
        let mean = |v: &[f64]| {
            let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
            if f.is_empty() {
                f64::NAN
            } else {
                f.iter().sum::<f64>() / f.len() as f64
            }
        };
        steps.push(SanityStep {
            randomised: groups.clone(),
            spearman: mean(&sp),
            ssim: mean(&ss),
            per_image_spearman: sp,
            per_image_ssim: ss,
        });
    }
    Ok(steps)
}
