//! Integrated Gradients (captum `IntegratedGradients`).
//!
//! attr = (x - x') * sum_k w_k * grad f(x' + a_k (x - x')), with the nodes a_k and weights w_k
//! of captum's rules: Gauss-Legendre (its default) or the Riemann rules. The scaled inputs of
//! all steps go through the model `internal_batch_size` at a time, so memory is bounded by the
//! batch, not by steps x images. The convergence delta sum(attr) - (f(x) - f(x')) is returned by
//! [`IntegratedGradients::attribute_with_delta`].

use super::{input_gradients, target_logits, Attribution};
use crate::model::Classifier;
use crate::rng::SeededRng;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::path::PathBuf;

/// The integration rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IgRule {
    /// Gauss-Legendre nodes and weights (captum's default).
    #[value(name = "gausslegendre", alias = "gauss-legendre")]
    GaussLegendre,
    RiemannLeft,
    RiemannRight,
    RiemannMiddle,
    RiemannTrapezoid,
}

impl IgRule {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "gausslegendre" | "gauss-legendre" => IgRule::GaussLegendre,
            "riemann-left" => IgRule::RiemannLeft,
            "riemann-right" => IgRule::RiemannRight,
            "riemann-middle" => IgRule::RiemannMiddle,
            "riemann-trapezoid" => IgRule::RiemannTrapezoid,
            other => {
                return Err(Error::config(
                    "ig-rule",
                    other,
                    "use gausslegendre, riemann-left, riemann-right, riemann-middle or riemann-trapezoid",
                ))
            }
        })
    }

    /// (step sizes, alphas) exactly as captum's `approximation_parameters`.
    pub fn nodes(&self, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        if n == 0 || (n < 2 && *self != IgRule::GaussLegendre) {
            return Err(Error::config(
                "steps",
                n,
                "Integrated Gradients needs at least 2 steps",
            ));
        }
        // torch.linspace in float32, as captum uses it.
        let linspace = |a: f64, b: f64| -> Vec<f64> {
            (0..n)
                .map(|i| {
                    let step = (b - a) / (n - 1) as f64;
                    let v = if i < n / 2 {
                        a + step * i as f64
                    } else {
                        b - step * (n - 1 - i) as f64
                    };
                    v as f32 as f64
                })
                .collect()
        };
        let nf = n as f64;
        Ok(match self {
            IgRule::GaussLegendre => {
                let (x, w) = gauss_legendre(n);
                (
                    w.iter().map(|w| 0.5 * w).collect(),
                    x.iter().map(|x| 0.5 * (1.0 + x)).collect(),
                )
            }
            IgRule::RiemannLeft => (vec![1.0 / nf; n], linspace(0.0, 1.0 - 1.0 / nf)),
            IgRule::RiemannRight => (vec![1.0 / nf; n], linspace(1.0 / nf, 1.0)),
            IgRule::RiemannMiddle => (
                vec![1.0 / nf; n],
                linspace(1.0 / (2.0 * nf), 1.0 - 1.0 / (2.0 * nf)),
            ),
            IgRule::RiemannTrapezoid => {
                let mut d = vec![1.0 / nf; n];
                d[0] /= 2.0;
                d[n - 1] /= 2.0;
                (d, linspace(0.0, 1.0))
            }
        })
    }
}

/// Gauss-Legendre nodes (ascending, in [-1, 1]) and weights, by Newton's method on the
/// Legendre polynomial (agrees with `numpy.polynomial.legendre.leggauss` to ~1e-15).
pub fn gauss_legendre(n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut x = vec![0.0; n];
    let mut w = vec![0.0; n];
    let m = n.div_ceil(2);
    for i in 0..m {
        let mut z = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
        let mut pp = 0.0;
        for _ in 0..100 {
            let (mut p1, mut p2) = (1.0, 0.0);
            for j in 1..=n {
                let p3 = p2;
                p2 = p1;
                p1 = ((2.0 * j as f64 - 1.0) * z * p2 - (j as f64 - 1.0) * p3) / j as f64;
            }
            pp = n as f64 * (z * p1 - p2) / (z * z - 1.0);
            let z1 = z;
            z = z1 - p1 / pp;
            if (z - z1).abs() < 1e-16 {
                break;
            }
        }
        x[i] = -z;
        x[n - 1 - i] = z;
        let wi = 2.0 / ((1.0 - z * z) * pp * pp);
        w[i] = wi;
        w[n - 1 - i] = wi;
    }
    if n % 2 == 1 {
        x[n / 2] = 0.0;
    }
    (x, w)
}

/// The reference input x'.
#[derive(Debug, Clone)]
pub enum Baseline {
    /// All zeros.
    Black,
    /// All ones.
    White,
    /// Uniform on `[0, 1]` per pixel.
    Uniform,
    /// clamp(x + N(0, sigma), 0, 1).
    Gaussian { sigma: f32 },
    /// Gaussian blur of x, kernel 5, sigma 10 (torchvision `GaussianBlur(5, 10)`, reflect padding).
    Blur,
    /// An image file, pre-processed like the inputs.
    File(PathBuf),
    /// A given tensor, `[3, H, W]` or `[N, 3, H, W]`.
    Tensor(Tensor),
}

impl Baseline {
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim();
        Ok(match t.to_ascii_lowercase().as_str() {
            "black" | "zero" | "zeros" => Baseline::Black,
            "white" => Baseline::White,
            "uniform" => Baseline::Uniform,
            "gaussian" => Baseline::Gaussian { sigma: 1.0 },
            "blur" => Baseline::Blur,
            _ => {
                if let Some(sig) = t.strip_prefix("gaussian:") {
                    let sigma: f32 = sig
                        .parse()
                        .map_err(|_| Error::config("baseline", t, "sigma must be a number"))?;
                    if !(sigma.is_finite() && sigma > 0.0) {
                        return Err(Error::config("baseline", t, "sigma must be positive"));
                    }
                    Baseline::Gaussian { sigma }
                } else if std::path::Path::new(t).exists() {
                    Baseline::File(PathBuf::from(t))
                } else {
                    return Err(Error::config(
                        "baseline",
                        t,
                        format!("use black, white, uniform, gaussian[:SIGMA], blur or an image file (not found: {t})"),
                    ));
                }
            }
        })
    }

    /// The baseline for each image of `x` (`[N, 3, H, W]`).
    pub fn make(&self, x: &Tensor, seed: u64) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let dev = x.device();
        let mut rng = SeededRng::new(seed ^ 0xba5e_11e0);
        Ok(match self {
            Baseline::Black => x.zeros_like()?,
            Baseline::White => x.ones_like()?,
            Baseline::Uniform => {
                Tensor::from_vec(rng.uniform_vec(n * c * h * w, 0.0, 1.0), (n, c, h, w), dev)?
            }
            Baseline::Gaussian { sigma } => {
                let noise =
                    Tensor::from_vec(rng.normal_vec(n * c * h * w, *sigma), (n, c, h, w), dev)?;
                (x + noise)?.clamp(0f32, 1f32)?
            }
            Baseline::Blur => gaussian_blur(x, 5, 10.0)?,
            Baseline::File(p) => {
                let b = crate::data::preprocess(p, h, dev)?;
                if b.dims() != [c, h, w] {
                    return Err(Error::config(
                        "baseline",
                        p.display(),
                        "image is not square after pre-processing",
                    ));
                }
                b.unsqueeze(0)?.broadcast_as((n, c, h, w))?.contiguous()?
            }
            Baseline::Tensor(t) => {
                let t = if t.rank() == 3 {
                    t.unsqueeze(0)?
                } else {
                    t.clone()
                };
                t.broadcast_as((n, c, h, w))
                    .map_err(|_| {
                        Error::conflict(format!(
                            "baseline shape {:?} does not fit inputs {:?}",
                            t.dims(),
                            x.dims()
                        ))
                    })?
                    .contiguous()?
            }
        })
    }
}

/// torchvision `F.gaussian_blur(x, [k, k], [sigma, sigma])`: separable kernel
/// exp(-t^2 / (2 sigma^2)) on t = -(k-1)/2..(k-1)/2, normalised, reflect padding.
pub fn gaussian_blur(x: &Tensor, k: usize, sigma: f32) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let half = (k as f32 - 1.0) * 0.5;
    let mut kern: Vec<f32> = (0..k)
        .map(|i| {
            let t = -half + i as f32;
            (-0.5 * (t / sigma).powi(2)).exp()
        })
        .collect();
    let s: f32 = kern.iter().sum();
    kern.iter_mut().for_each(|v| *v /= s);
    let r = k / 2;
    let reflect = |i: isize, n: usize| -> usize {
        let n = n as isize;
        let mut i = i;
        if i < 0 {
            i = -i;
        }
        if i >= n {
            i = 2 * (n - 1) - i;
        }
        i.clamp(0, n - 1) as usize
    };
    let src: Vec<f32> = x.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; src.len()];
    let mut tmp = vec![0f32; h * w];
    for p in 0..n * c {
        let plane = &src[p * h * w..(p + 1) * h * w];
        for y in 0..h {
            for xx in 0..w {
                let mut acc = 0f32;
                for (j, kv) in kern.iter().enumerate() {
                    acc += kv * plane[y * w + reflect(xx as isize + j as isize - r as isize, w)];
                }
                tmp[y * w + xx] = acc;
            }
        }
        for y in 0..h {
            for xx in 0..w {
                let mut acc = 0f32;
                for (j, kv) in kern.iter().enumerate() {
                    acc += kv * tmp[reflect(y as isize + j as isize - r as isize, h) * w + xx];
                }
                out[p * h * w + y * w + xx] = acc;
            }
        }
    }
    Ok(Tensor::from_vec(out, (n, c, h, w), x.device())?)
}

/// Integrated Gradients.
#[derive(Debug, Clone)]
pub struct IntegratedGradients {
    pub steps: usize,
    pub rule: IgRule,
    pub baseline: Baseline,
    /// Scaled inputs per forward/backward pass (bounds memory).
    pub internal_batch_size: usize,
    /// Seed for random baselines.
    pub seed: u64,
}

impl Default for IntegratedGradients {
    /// captum's defaults: 50 Gauss-Legendre steps from a black baseline, 16 inputs per pass.
    fn default() -> Self {
        IntegratedGradients {
            steps: 50,
            rule: IgRule::GaussLegendre,
            baseline: Baseline::Black,
            internal_batch_size: 16,
            seed: 0,
        }
    }
}

/// How closely one image's attributions add up to the change of its target logit from the
/// baseline (IG's completeness axiom).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Convergence {
    /// captum's convergence delta: sum(attr) - (f(x) - f(x')).
    pub delta: f32,
    /// f(x) - f(x').
    pub logit_change: f32,
}

impl Convergence {
    /// |delta| as a share of |f(x) - f(x')| (infinite when the logit does not change).
    pub fn relative(&self) -> f32 {
        if self.logit_change == 0.0 {
            if self.delta == 0.0 {
                0.0
            } else {
                f32::INFINITY
            }
        } else {
            self.delta.abs() / self.logit_change.abs()
        }
    }
}

impl IntegratedGradients {
    /// Attributions and the per-image convergence delta sum(attr) - (f(x) - f(x')).
    pub fn attribute_with_delta(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        targets: &[usize],
    ) -> Result<(Tensor, Vec<f32>)> {
        let (attr, c) = self.attribute_with_convergence(model, x, targets)?;
        Ok((attr, c.iter().map(|c| c.delta).collect()))
    }

    /// Attributions and, per image, the convergence delta with the logit change it is
    /// measured against.
    pub fn attribute_with_convergence(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        targets: &[usize],
    ) -> Result<(Tensor, Vec<Convergence>)> {
        // constant weights for the whole call: their derived forms computed once
        crate::ops::with_frozen_weights(|| {
            let (n, c, h, w) = x.dims4()?;
            let baseline = self.baseline.make(x, self.seed)?;
            let (step_sizes, alphas) = self.rule.nodes(self.steps)?;
            let diff = (x - &baseline)?;
            let mut acc: Vec<Tensor> = (0..n)
                .map(|_| Tensor::zeros((1, c, h, w), x.dtype(), x.device()))
                .collect::<candle_core::Result<_>>()?;
            // Group (alpha, image) pairs into chunks of internal_batch_size scaled inputs.
            let per_chunk = self.internal_batch_size.max(1);
            let pairs: Vec<(usize, usize)> = (0..alphas.len())
                .flat_map(|a| (0..n).map(move |i| (a, i)))
                .collect();
            for chunk in pairs.chunks(per_chunk) {
                let mut rows = Vec::with_capacity(chunk.len());
                let mut tg = Vec::with_capacity(chunk.len());
                for &(a, i) in chunk {
                    let b = baseline.narrow(0, i, 1)?;
                    let d = diff.narrow(0, i, 1)?;
                    rows.push((b + (d * alphas[a])?)?);
                    tg.push(targets[i]);
                }
                let scaled = Tensor::cat(&rows, 0)?;
                let g = input_gradients(model, &scaled, &tg, per_chunk)?;
                for (r, &(a, i)) in chunk.iter().enumerate() {
                    acc[i] = (&acc[i] + (g.narrow(0, r, 1)? * step_sizes[a])?)?;
                }
            }
            let attr = (Tensor::cat(&acc, 0)? * &diff)?;
            // f(x) and f(baseline) in one pass: rows 0..n are the images, n..2n the baselines
            let both = Tensor::cat(&[x, &baseline], 0)?;
            let both_targets: Vec<usize> = targets.iter().chain(targets).copied().collect();
            let f = target_logits(model, &both, &both_targets, per_chunk)?;
            let (fx, fb) = f.split_at(n);
            let sums: Vec<f32> = attr.flatten_from(1)?.sum(1)?.to_vec1()?;
            let conv = (0..n)
                .map(|i| Convergence {
                    delta: sums[i] - (fx[i] - fb[i]),
                    logit_change: fx[i] - fb[i],
                })
                .collect();
            Ok((attr, conv))
        })
    }
}

impl Attribution for IntegratedGradients {
    fn name(&self) -> String {
        "ig".into()
    }
    fn describe(&self) -> String {
        let baseline = match &self.baseline {
            Baseline::Black => "black baseline".to_string(),
            Baseline::White => "white baseline".to_string(),
            Baseline::Uniform => "uniform-noise baseline".to_string(),
            Baseline::Gaussian { sigma } => format!("Gaussian-noise baseline (σ {sigma})"),
            Baseline::Blur => "blurred baseline".to_string(),
            Baseline::Tensor(_) => "a given baseline".to_string(),
            Baseline::File(p) => format!(
                "baseline {}",
                p.file_name()
                    .map_or_else(String::new, |f| f.to_string_lossy().into_owned())
            ),
        };
        format!("Integrated Gradients, {} steps, {baseline}", self.steps)
    }
    fn attribute(&self, model: &dyn Classifier, x: &Tensor, targets: &[usize]) -> Result<Tensor> {
        let (attr, delta) = self.attribute_with_delta(model, x, targets)?;
        let worst = delta.iter().fold(0f32, |a, d| a.max(d.abs()));
        tracing::info!(
            "integrated gradients: largest |convergence delta| {worst:.3e} ({} steps)",
            self.steps
        );
        Ok(attr)
    }
    fn attribute_checked(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        targets: &[usize],
    ) -> Result<(Tensor, Option<Vec<Convergence>>)> {
        let (attr, c) = self.attribute_with_convergence(model, x, targets)?;
        Ok((attr, Some(c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauss_legendre_integrates_polynomials() {
        for n in [1usize, 2, 5, 50] {
            let (x, w) = gauss_legendre(n);
            let s: f64 = w.iter().sum();
            assert!((s - 2.0).abs() < 1e-13, "n={n} weights sum {s}");
            assert!(x.windows(2).all(|p| p[0] < p[1]));
            // exact for degree 2n-1: integral of x^2 over [-1,1] = 2/3 (n >= 2)
            if n >= 2 {
                let q: f64 = x.iter().zip(&w).map(|(x, w)| w * x * x).sum();
                assert!((q - 2.0 / 3.0).abs() < 1e-13);
            }
        }
        // numpy.polynomial.legendre.leggauss(3)
        let (x, w) = gauss_legendre(3);
        assert!((x[0] + 0.7745966692414834).abs() < 1e-15 && (w[1] - 8.0 / 9.0).abs() < 1e-15);
    }

    #[test]
    fn riemann_nodes() {
        let (s, a) = IgRule::RiemannTrapezoid.nodes(5).unwrap();
        assert_eq!(a, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(s, vec![0.1, 0.2, 0.2, 0.2, 0.1]);
        assert!(IgRule::RiemannLeft.nodes(1).is_err());
    }
}
