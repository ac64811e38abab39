//! Statistics for comparing saliency maps and models: Pearson and Spearman correlation, SSIM,
//! the paired Wilcoxon signed-rank test and percentile-bootstrap intervals.

/// Pearson correlation of two equally long samples; NaN when either is constant or the
/// lengths differ.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    if x.len() != y.len() || x.len() < 2 {
        return f64::NAN;
    }
    let n = x.len() as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx <= 0.0 || syy <= 0.0 {
        return f64::NAN;
    }
    sxy / (sxx * syy).sqrt()
}

/// Spearman rank correlation (`scipy.stats.spearmanr`): the Pearson correlation of the
/// mid-ranks.
pub fn spearman(x: &[f32], y: &[f32]) -> f64 {
    pearson(&mid_ranks(x), &mid_ranks(y))
}

/// Structural similarity of two `h x w` maps (Wang et al. 2004), as scikit-image's
/// `structural_similarity` with its defaults: a 7x7 uniform window, K1 = 0.01, K2 = 0.03,
/// sample covariances (N/(N-1)), `data_range` as given, the mean over the windows that lie
/// wholly inside the image. Maps smaller than 7 pixels a side use the largest odd window
/// that fits.
pub fn ssim(x: &[f32], y: &[f32], h: usize, w: usize, data_range: f64) -> f64 {
    if x.len() != h * w || y.len() != h * w || h == 0 || w == 0 {
        return f64::NAN;
    }
    let mut win = 7.min(h).min(w);
    if win.is_multiple_of(2) {
        win -= 1;
    }
    let np = (win * win) as f64;
    let cov_norm = if np > 1.0 { np / (np - 1.0) } else { 1.0 };
    let c1 = (0.01 * data_range).powi(2);
    let c2 = (0.03 * data_range).powi(2);
    let (mut total, mut count) = (0.0, 0usize);
    for r in 0..=(h - win) {
        for c in 0..=(w - win) {
            let (mut sx, mut sy, mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for i in r..r + win {
                for j in c..c + win {
                    let a = x[i * w + j] as f64;
                    let b = y[i * w + j] as f64;
                    sx += a;
                    sy += b;
                    sxx += a * a;
                    syy += b * b;
                    sxy += a * b;
                }
            }
            let (ux, uy) = (sx / np, sy / np);
            let vx = cov_norm * (sxx / np - ux * ux);
            let vy = cov_norm * (syy / np - uy * uy);
            let vxy = cov_norm * (sxy / np - ux * uy);
            let s = ((2.0 * ux * uy + c1) * (2.0 * vxy + c2))
                / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
            total += s;
            count += 1;
        }
    }
    total / count as f64
}

/// Result of a paired Wilcoxon signed-rank test.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Wilcoxon {
    /// min(W+, W-), as scipy reports it.
    pub statistic: f64,
    /// Two-sided p-value.
    pub p_value: f64,
    /// Pairs with a non-zero difference (zeros are dropped, scipy's `zero_method="wilcox"`).
    pub n: usize,
    /// Whether the exact null distribution was used (n <= 50 without ties) rather than the
    /// normal approximation with tie correction.
    pub exact: bool,
}

/// Paired two-sided Wilcoxon signed-rank test of `x - y`, as `scipy.stats.wilcoxon(x, y)`
/// (zero differences dropped; exact distribution for n <= 50 without ties, otherwise the
/// normal approximation with tie correction and no continuity correction). Pairs where
/// either value is NaN are left out. `None` when no non-zero difference remains.
pub fn wilcoxon(x: &[f64], y: &[f64]) -> Option<Wilcoxon> {
    let d: Vec<f64> = x
        .iter()
        .zip(y)
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .map(|(a, b)| a - b)
        .filter(|v| *v != 0.0)
        .collect();
    let n = d.len();
    if n == 0 {
        return None;
    }
    let abs: Vec<f64> = d.iter().map(|v| v.abs()).collect();
    let ranks = mid_ranks_f64(&abs);
    let w_plus: f64 = ranks
        .iter()
        .zip(&d)
        .filter(|(_, &v)| v > 0.0)
        .map(|(r, _)| r)
        .sum();
    let total = n as f64 * (n as f64 + 1.0) / 2.0;
    let w_minus = total - w_plus;
    let stat = w_plus.min(w_minus);
    let mut sorted = abs.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let has_ties = sorted.windows(2).any(|w| w[0] == w[1]);
    if n <= 50 && !has_ties {
        // Number of subsets of {1..n} with each rank sum: the exact null distribution.
        let max = n * (n + 1) / 2;
        let mut counts = vec![0f64; max + 1];
        counts[0] = 1.0;
        for k in 1..=n {
            for s in (k..=max).rev() {
                counts[s] += counts[s - k];
            }
        }
        let all: f64 = counts.iter().sum();
        let t = stat.round() as usize;
        let lower: f64 = counts[..=t].iter().sum::<f64>() / all;
        return Some(Wilcoxon {
            statistic: stat,
            p_value: (2.0 * lower).min(1.0),
            n,
            exact: true,
        });
    }
    // Normal approximation with the tie correction.
    let mean = total / 2.0;
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[i] {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        tie_term += t * t * t - t;
        i = j + 1;
    }
    let var = n as f64 * (n as f64 + 1.0) * (2.0 * n as f64 + 1.0) / 24.0 - tie_term / 48.0;
    let z = if var > 0.0 {
        (stat - mean) / var.sqrt()
    } else {
        0.0
    };
    Some(Wilcoxon {
        statistic: stat,
        p_value: (2.0 * normal_cdf(-z.abs())).min(1.0),
        n,
        exact: false,
    })
}

/// Standard normal CDF (via erfc, |error| < 1.2e-7).
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    // Numerical Recipes' erfcc (Chebyshev fit), fractional error < 1.2e-7.
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.26551223
            + t * (1.00002368
                + t * (0.37409196
                    + t * (0.09678418
                        + t * (-0.18628806
                            + t * (0.27886807
                                + t * (-1.13520398
                                    + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// Student's t quantile t(0.975, df) for df = 1..30 (scipy.stats.t.ppf); beyond, the normal 1.96.
fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
        2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
        2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
        2.048407, 2.045230, 2.042272,
    ];
    T.get(df.wrapping_sub(1)).copied().unwrap_or(1.959964)
}

/// Mean and 95% Student-t confidence interval of a few values (each seed's mean, across
/// seeds): mean ± t(0.975, n-1) s / sqrt(n), s the sample standard deviation. NaN values are
/// left out; with one value the interval is that value's own (NaN bounds), with none all NaN.
pub fn t_interval(values: &[f64]) -> (f64, f64, f64) {
    let v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    let n = v.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return (mean, f64::NAN, f64::NAN);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = t975(n - 1) * (var / n as f64).sqrt();
    (mean, mean - half, mean + half)
}

/// Mean and 95% percentile-bootstrap confidence interval (`resamples` draws, seeded). NaN
/// values are left out; all-NaN gives NaNs.
pub fn bootstrap_ci(values: &[f64], resamples: usize, seed: u64) -> (f64, f64, f64) {
    let values: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
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

/// Ranks 1..n of the values, tied values sharing their mean rank (NaN ranks lowest).
pub fn mid_ranks(v: &[f32]) -> Vec<f64> {
    mid_ranks_f64(&v.iter().map(|&x| x as f64).collect::<Vec<_>>())
}

/// [`mid_ranks`] of `f64` values.
pub fn mid_ranks_f64(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    let key = |x: f64| if x.is_nan() { f64::NEG_INFINITY } else { x };
    order.sort_by(|&i, &j| {
        key(v[i])
            .partial_cmp(&key(v[j]))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut ranks = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && key(v[order[j + 1]]) == key(v[order[i]]) {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &o in &order[i..=j] {
            ranks[o] = r;
        }
        i = j + 1;
    }
    ranks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_interval_on_known_values() {
        // scipy: stats.t.interval(0.95, 2, loc=2, scale=stats.sem([1, 2, 3]))
        let (m, lo, hi) = t_interval(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12);
        assert!(
            (lo - (-0.484138)).abs() < 1e-5 && (hi - 4.484138).abs() < 1e-5,
            "{lo} {hi}"
        );
        // ten values: df 9, t 2.262157
        let v: Vec<f64> = (0..10).map(|i| i as f64).collect();
        let (m, lo, hi) = t_interval(&v);
        let half = 2.262157 * (55.0f64 / 6.0).sqrt() / 10f64.sqrt();
        assert!((m - 4.5).abs() < 1e-12 && (hi - lo - 2.0 * half).abs() < 1e-5);
        assert!(t_interval(&[0.5]).1.is_nan() && t_interval(&[0.5]).0 == 0.5);
        assert!(t_interval(&[f64::NAN]).0.is_nan());
        assert_eq!(t_interval(&[1.0, f64::NAN, 3.0]).0, 2.0);
    }

    #[test]
    fn by_hand() {
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert!(pearson(&[1.0, 1.0], &[1.0, 2.0]).is_nan());
        // monotone but not linear
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 8.0, 27.0, 64.0]) - 1.0).abs() < 1e-12);
        let a: Vec<f32> = (0..64).map(|i| (i % 7) as f32 / 7.0).collect();
        assert!((ssim(&a, &a, 8, 8, 1.0) - 1.0).abs() < 1e-12);
        let b: Vec<f32> = a.iter().map(|v| 1.0 - v).collect();
        assert!(ssim(&a, &b, 8, 8, 1.0) < 0.0);
        // n = 3, all positive: W- = 0; exact P(T <= 0) = 1/8, two-sided 1/4
        let w = wilcoxon(&[2.0, 3.0, 4.0], &[1.0, 1.0, 1.0]).unwrap();
        assert_eq!(w.statistic, 0.0);
        assert!((w.p_value - 0.25).abs() < 1e-12 && w.exact);
        assert!(wilcoxon(&[1.0], &[1.0]).is_none());
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.959964) - 0.975).abs() < 1e-6);
    }
}
