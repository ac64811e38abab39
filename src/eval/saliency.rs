//! Saliency metrics on one map (an `[H*W]` map after channel reduction, and a lesion mask).
//!
//! Localisation metrics (with a mask): [`relevance_mass_accuracy`],
//! [`relevance_rank_accuracy`], [`pointing_game`], [`roc_auc`]. Mask-free: [`gini`],
//! [`entropy`]. Model-based faithfulness metrics live in [`super::faithfulness`], the
//! randomisation sanity check in [`super::sanity`], statistics in [`super::stats`].

use crate::{Error, Result};

/// Relevance mass accuracy (Quantus): sum of positive attribution inside the mask divided by
/// the sum of positive attribution, sum_{i in M} a_i+ / sum_i a_i+. Zero when nothing is
/// positive.
pub fn relevance_mass_accuracy(map: &[f32], mask: &[bool]) -> Result<f64> {
    check(map, mask)?;
    let total: f64 = map.iter().map(|&a| a.max(0.0) as f64).sum();
    if total <= 0.0 {
        return Ok(0.0);
    }
    let inside: f64 = map
        .iter()
        .zip(mask)
        .filter(|(_, &m)| m)
        .map(|(&a, _)| a.max(0.0) as f64)
        .sum();
    Ok(inside / total)
}

/// Artifact mass: the share of the map's (non-negative) total on the pixels of an artifact,
/// the relevance mass of a distractor instead of the lesion; lower is better. `None` when the
/// mask is empty (the image has no such artifact).
pub fn artifact_mass(map: &[f32], mask: &[bool]) -> Result<Option<f64>> {
    if map.len() == mask.len() && !mask.iter().any(|&m| m) {
        return Ok(None);
    }
    relevance_mass_accuracy(map, mask).map(Some)
}

/// Gini index of |a| (Quantus `Sparseness`, Chalasani et al.): with |a| sorted ascending,
/// G = sum_i (2i - n - 1) a_(i) / (n sum_i a_(i)), i = 1..n. 0 for a uniform map, near 1 when
/// one pixel holds everything.
pub fn gini(map: &[f32]) -> f64 {
    let mut a: Vec<f64> = map.iter().map(|v| v.abs() as f64).collect();
    a.sort_by(|x, y| x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal));
    let n = a.len() as f64;
    let s: f64 = a.iter().sum();
    if s <= 0.0 || a.is_empty() {
        return 0.0;
    }
    a.iter()
        .enumerate()
        .map(|(i, v)| (2.0 * (i as f64 + 1.0) - n - 1.0) * v)
        .sum::<f64>()
        / (n * s)
}

/// Relevance rank accuracy (Arras et al. 2022; Quantus `RelevanceRankAccuracy`): with
/// K = |M|, the share of the K highest-attributed pixels that lie inside the mask,
/// |top_K(a) ∩ M| / |M|. Pixels are ranked by the map's values as given (pass an |a| map for
/// magnitude); ties keep pixel order. An empty mask is an error.
pub fn relevance_rank_accuracy(map: &[f32], mask: &[bool]) -> Result<f64> {
    check(map, mask)?;
    let k = mask.iter().filter(|&&m| m).count();
    let mut order: Vec<usize> = (0..map.len()).collect();
    order.sort_by(|&i, &j| {
        map[j]
            .partial_cmp(&map[i])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let hits = order[..k].iter().filter(|&&i| mask[i]).count();
    Ok(hits as f64 / k as f64)
}

/// Pointing game (Zhang et al. 2018; Quantus `PointingGame`): 1 when a pixel holding the
/// map's maximum lies inside the mask, else 0 (with several maxima, any one inside counts,
/// as in Quantus).
///
/// Unlike Quantus, whose pointing game scores an image with an empty mask as a hit (there is
/// nothing to point at, so nothing can be missed), an empty mask is an error here: such an
/// image says nothing about localisation and must not inflate the score. A map without a
/// finite value is also an error.
pub fn pointing_game(map: &[f32], mask: &[bool]) -> Result<f64> {
    check(map, mask)?;
    let max = map
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return Err(Error::data("pointing game: the map has no finite value"));
    }
    let hit = map.iter().zip(mask).any(|(&a, &m)| m && a == max);
    Ok(if hit { 1.0 } else { 0.0 })
}

/// Area under the ROC curve of the map as a score for "inside the mask" (Quantus `AUC`, which
/// calls scikit-learn's `roc_curve` + `auc`): the probability that a random pixel inside the
/// mask outranks a random pixel outside, ties counting one half,
/// AUC = (sum of the ranks of the inside pixels - |M|(|M|+1)/2) / (|M| |not M|), with mid-ranks
/// for ties (Mann-Whitney U). 0.5 is chance. Errors when the mask is empty or covers the
/// whole image.
pub fn roc_auc(map: &[f32], mask: &[bool]) -> Result<f64> {
    check(map, mask)?;
    let pos = mask.iter().filter(|&&m| m).count();
    let neg = mask.len() - pos;
    if neg == 0 {
        return Err(Error::data(
            "saliency metric: the mask covers the whole image, so ROC-AUC is undefined",
        ));
    }
    let ranks = mid_ranks(map);
    let rank_sum: f64 = ranks
        .iter()
        .zip(mask)
        .filter(|(_, &m)| m)
        .map(|(r, _)| r)
        .sum();
    let u = rank_sum - (pos as f64) * (pos as f64 + 1.0) / 2.0;
    Ok(u / (pos as f64 * neg as f64))
}

pub use super::stats::{mid_ranks, mid_ranks_f64};

/// Entropy complexity (Bhatt et al. 2020; Quantus `Complexity`): the Shannon entropy (natural
/// logarithm, as `scipy.stats.entropy`) of the distribution p_i = |a_i| / sum_j |a_j|,
/// H = -sum_i p_i ln p_i. 0 when one pixel holds everything, ln(n) for a uniform map. An
/// all-zero map has no distribution: the result is NaN (left out of averages, and counted).
pub fn entropy(map: &[f32]) -> f64 {
    let s: f64 = map.iter().map(|v| v.abs() as f64).sum();
    if s.is_nan() || s <= 0.0 || !s.is_finite() {
        return f64::NAN;
    }
    -map.iter()
        .map(|v| v.abs() as f64 / s)
        .filter(|&p| p > 0.0)
        .map(|p| p * p.ln())
        .sum::<f64>()
}

fn check(map: &[f32], mask: &[bool]) -> Result<()> {
    if map.len() != mask.len() {
        return Err(Error::data(format!(
            "saliency metric: map has {} values, mask {}",
            map.len(),
            mask.len()
        )));
    }
    if !mask.iter().any(|&m| m) {
        return Err(Error::data("saliency metric: the mask is empty"));
    }
    Ok(())
}

pub use super::stats::bootstrap_ci;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_mass_by_hand() {
        // A 2x3 map; the artifact covers the two right-hand pixels of each row.
        let map = [1.0, 0.0, 3.0, 0.0, 2.0, 4.0];
        let hair = [false, true, true, false, true, true];
        assert_eq!(artifact_mass(&map, &hair).unwrap(), Some(9.0 / 10.0));
        let none = [false; 6];
        assert_eq!(artifact_mass(&map, &none).unwrap(), None);
        // Negative values count as zero, as in relevance mass accuracy.
        let signed = [-5.0, 1.0, 1.0, 0.0, 0.0, 2.0];
        assert_eq!(artifact_mass(&signed, &hair).unwrap(), Some(1.0));
        assert!(artifact_mass(&map, &[true; 5]).is_err());
    }
    #[test]
    fn by_hand() {
        let map = [1.0, -2.0, 3.0, 0.0];
        let mask = [true, true, false, false];
        assert!((relevance_mass_accuracy(&map, &mask).unwrap() - 0.25).abs() < 1e-12);
        assert!(relevance_mass_accuracy(&map, &[false; 4]).is_err());
        assert!(gini(&[1.0, 1.0, 1.0, 1.0]).abs() < 1e-12);
        // one of four holds everything: (2*4 - 5) * 1 / (4 * 1) = 0.75
        assert!((gini(&[0.0, 0.0, 0.0, 5.0]) - 0.75).abs() < 1e-12);
        // top-2 of [1,-2,3,0] are pixels 2 and 0: one of the two mask pixels
        assert!((relevance_rank_accuracy(&map, &mask).unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(pointing_game(&map, &mask).unwrap(), 0.0);
        assert_eq!(
            pointing_game(&map, &[false, false, true, false]).unwrap(),
            1.0
        );
        assert!(pointing_game(&map, &[false; 4]).is_err());
        // ties: both maxima count
        assert_eq!(pointing_game(&[2.0, 2.0], &[false, true]).unwrap(), 1.0);
        // inside {1,-2}, outside {3,0}: pairs (1>3 no, 1>0 yes, -2 no, -2 no) = 1/4
        assert!((roc_auc(&map, &mask).unwrap() - 0.25).abs() < 1e-12);
        assert!((roc_auc(&[1.0, 1.0, 1.0, 1.0], &mask).unwrap() - 0.5).abs() < 1e-12);
        assert!(roc_auc(&map, &[true; 4]).is_err());
        assert_eq!(mid_ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
        assert!((entropy(&[1.0, -1.0, 1.0, 1.0]) - 4f64.ln()).abs() < 1e-12);
        assert!(entropy(&[0.0, 5.0, 0.0]).abs() < 1e-12);
        // p = (0.25, 0.75): -(0.25 ln 0.25 + 0.75 ln 0.75)
        let want = -(0.25f64 * 0.25f64.ln() + 0.75 * 0.75f64.ln());
        assert!((entropy(&[1.0, 3.0]) - want).abs() < 1e-12);
        assert!(entropy(&[0.0, 0.0]).is_nan());
        let (m, lo, hi) = bootstrap_ci(&[1.0, 2.0, 3.0, 4.0], 500, 1);
        assert!((m - 2.5).abs() < 1e-12 && lo <= m && m <= hi && lo >= 1.0 && hi <= 4.0);
    }
}
