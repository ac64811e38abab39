//! Saliency metrics on one map (an `[H*W]` map after channel reduction, and a lesion mask).

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

fn check(map: &[f32], mask: &[bool]) -> Result<()> {
    if map.len() != mask.len() {
        return Err(Error::arg(format!(
            "saliency metric: map has {} values, mask {}",
            map.len(),
            mask.len()
        )));
    }
    if !mask.iter().any(|&m| m) {
        return Err(Error::arg("saliency metric: the mask is empty"));
    }
    Ok(())
}

/// Mean and 95% percentile-bootstrap confidence interval (`resamples` draws, seeded).
pub fn bootstrap_ci(values: &[f64], resamples: usize, seed: u64) -> (f64, f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    let mut rng = crate::rng::SeededRng::new(seed);
    let mut means: Vec<f64> = (0..resamples.max(1))
        .map(|_| (0..n).map(|_| values[rng.below(n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let q = |p: f64| means[((p * (means.len() - 1) as f64).round() as usize).min(means.len() - 1)];
    (mean, q(0.025), q(0.975))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn by_hand() {
        let map = [1.0, -2.0, 3.0, 0.0];
        let mask = [true, true, false, false];
        assert!((relevance_mass_accuracy(&map, &mask).unwrap() - 0.25).abs() < 1e-12);
        assert!(relevance_mass_accuracy(&map, &[false; 4]).is_err());
        assert!(gini(&[1.0, 1.0, 1.0, 1.0]).abs() < 1e-12);
        // one of four holds everything: (2*4 - 5) * 1 / (4 * 1) = 0.75
        assert!((gini(&[0.0, 0.0, 0.0, 5.0]) - 0.75).abs() < 1e-12);
        let (m, lo, hi) = bootstrap_ci(&[1.0, 2.0, 3.0, 4.0], 500, 1);
        assert!((m - 2.5).abs() < 1e-12 && lo <= m && m <= hi && lo >= 1.0 && hi <= 4.0);
    }
}
