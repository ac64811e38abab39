//! SmoothGrad as a wrapper over any method (captum `NoiseTunnel`): the wrapped method is
//! averaged over noisy copies x + N(0, sigma^2), sigma = noise * (max(x) - min(x)) per image.
//! `smoothgrad` averages attributions, `smoothgrad-sq` their squares, `vargrad` takes their
//! variance (`E[a^2] - E[a]^2`). Samples of all images go through the model together.

use super::Attribution;
use crate::model::Classifier;
use crate::rng::SeededRng;
use crate::{Error, Result};
use candle_core::{Shape, Tensor};

/// The aggregation of the noisy samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SmoothKind {
    /// Mean of the noisy attributions.
    #[value(name = "smoothgrad")]
    SmoothGrad,
    /// Mean of their squares.
    #[value(name = "smoothgrad-sq")]
    SmoothGradSq,
    /// Their variance.
    #[value(name = "vargrad")]
    VarGrad,
}

impl SmoothKind {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(
            match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
                "smoothgrad" => SmoothKind::SmoothGrad,
                "smoothgrad-sq" => SmoothKind::SmoothGradSq,
                "vargrad" => SmoothKind::VarGrad,
                other => {
                    return Err(Error::config(
                        "smooth",
                        other,
                        "use smoothgrad, smoothgrad-sq or vargrad",
                    ))
                }
            },
        )
    }
}

/// A noise tunnel around another method.
pub struct NoiseTunnel {
    pub base: Box<dyn Attribution>,
    pub kind: SmoothKind,
    pub samples: usize,
    /// Noise standard deviation as a fraction of each image's (max - min).
    pub noise: f32,
    pub seed: u64,
}

impl Attribution for NoiseTunnel {
    fn name(&self) -> String {
        let k = match self.kind {
            SmoothKind::SmoothGrad => "smoothgrad",
            SmoothKind::SmoothGradSq => "smoothgrad-sq",
            SmoothKind::VarGrad => "vargrad",
        };
        if self.base.name() == "gradient" {
            k.to_string()
        } else {
            format!("{k}({})", self.base.name())
        }
    }

    fn describe(&self) -> String {
        let k = match self.kind {
            SmoothKind::SmoothGrad => "SmoothGrad",
            SmoothKind::SmoothGradSq => "SmoothGrad²",
            SmoothKind::VarGrad => "VarGrad",
        };
        let base = if self.base.name() == "gradient" {
            String::new()
        } else {
            format!(" of {}", self.base.describe())
        };
        format!("{k}{base}, {} samples, noise {}", self.samples, self.noise)
    }

    fn attribute(&self, model: &dyn Classifier, x: &Tensor, targets: &[usize]) -> Result<Tensor> {
        // constant weights for the whole call: their derived forms computed once
        crate::ops::with_frozen_weights(|| {
            if self.samples == 0 {
                return Err(Error::config(
                    "samples",
                    0,
                    "SmoothGrad needs at least one sample",
                ));
            }
            if !(self.noise.is_finite() && self.noise >= 0.0) {
                return Err(Error::config("noise", self.noise, "must be a number >= 0"));
            }
            let (n, c, h, w) = x.dims4()?;
            let mut rng = SeededRng::new(self.seed ^ 0x5eed_5300);
            let flat = x.flatten_from(1)?;
            let range = (flat.max(1)? - flat.min(1)?)?;
            // On the CPU from the seeded host generator; elsewhere drawn on the device (one
            // standard normal per value, scaled per image), nothing copied to or from the host.
            enum Spread {
                /// The range of each image, on the host.
                Host(Vec<f32>),
                /// noise * range of each image, `[n, 1, 1, 1]` on the device.
                Device(Tensor),
            }
            let spread = if x.device().is_cpu() {
                Spread::Host(range.to_vec1()?)
            } else {
                Spread::Device((range * self.noise as f64)?.reshape((n, 1, 1, 1))?)
            };
            // Sample-major layout, as captum: [s0: img0..imgN-1, s1: ...].
            let mut noisy = Vec::with_capacity(self.samples);
            let mut tg = Vec::with_capacity(self.samples * n);
            for _ in 0..self.samples {
                let noise = match &spread {
                    Spread::Host(range) => {
                        let mut noise = Vec::with_capacity(n * c * h * w);
                        for r in range {
                            noise.extend(rng.normal_vec(c * h * w, self.noise * r));
                        }
                        Tensor::from_vec(noise, (n, c, h, w), x.device())?
                    }
                    Spread::Device(std) => rng
                        .normal_tensor(&Shape::from((n, c, h, w)), 1.0, x.device())?
                        .broadcast_mul(std)?,
                };
                noisy.push((x + noise)?);
                tg.extend_from_slice(targets);
            }
            let all = Tensor::cat(&noisy, 0)?;
            let a = self.base.attribute(model, &all, &tg)?;
            let dims = a.dims().to_vec();
            let a = a.reshape([vec![self.samples, n], dims[1..].to_vec()].concat())?;
            let mean = a.mean(0)?;
            Ok(match self.kind {
                SmoothKind::SmoothGrad => mean,
                SmoothKind::SmoothGradSq => a.sqr()?.mean(0)?,
                SmoothKind::VarGrad => (a.sqr()?.mean(0)? - mean.sqr()?)?,
            })
        })
    }
}
