//! Attribution (saliency) methods behind one trait, each in its own file, matching captum.
//!
//! Every method attributes a target class with respect to the `[0, 1]` input and returns raw
//! attributions `[N, 3, H, W]` (Grad-CAM: `[N, 1, H, W]` after upsampling). Display steps
//! (channel reduction, percentile caps, colour maps) live in [`crate::report::display`] and
//! never touch the model. Every method sees the model only through the
//! [`Classifier`] trait (logits and input gradients in eval mode, weights constant; Grad-CAM
//! also through [`crate::model::LayeredClassifier`]), so any architecture that implements it
//! can be explained. The many forward passes of IG steps, SmoothGrad samples and occlusion
//! windows go through the model in batches.

pub mod gradcam;
pub mod gradient;
pub mod input_x_gradient;
pub mod integrated_gradients;
pub mod occlusion;
pub mod smoothgrad;

pub use gradcam::GradCam;
pub use gradient::Gradient;
pub use input_x_gradient::InputXGradient;
pub use integrated_gradients::{Baseline, Convergence, IgRule, IntegratedGradients};
pub use occlusion::Occlusion;
pub use smoothgrad::{NoiseTunnel, SmoothKind};

pub use crate::model::classifier::select_targets;
pub use crate::model::Classifier;
use crate::{Error, Result};
use candle_core::{Tensor, D};

/// Which class to explain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The image's true label (needs labels).
    Label,
    /// The model's predicted class.
    Predicted,
    /// A fixed class index.
    Class(usize),
}

impl Target {
    /// Parses `label`, `predicted` or a class index.
    pub fn parse(s: &str) -> Result<Target> {
        match s.trim().to_ascii_lowercase().as_str() {
            "label" | "true" => Ok(Target::Label),
            "predicted" | "pred" => Ok(Target::Predicted),
            other => other.parse::<usize>().map(Target::Class).map_err(|_| {
                Error::config(
                    "target",
                    s,
                    "use label, predicted or a class index such as 1",
                )
            }),
        }
    }

    /// The class index per image.
    pub fn resolve(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        labels: Option<&[usize]>,
    ) -> Result<Vec<usize>> {
        let n = x.dim(0)?;
        let k = model.num_classes();
        let t = match self {
            Target::Class(c) => {
                if *c >= k {
                    return Err(Error::config(
                        "target",
                        c,
                        format!("the model has {k} classes (0..{})", k - 1),
                    ));
                }
                vec![*c; n]
            }
            Target::Label => labels
                .ok_or_else(|| {
                    Error::config(
                        "target",
                        "label",
                        "needs labelled images (explain images of a data set, or use the target `predicted`)",
                    )
                })?
                .to_vec(),
            Target::Predicted => predict_classes(model, x, 32)?,
        };
        if t.len() != n {
            return Err(Error::internal(format!(
                "{} targets for {n} images",
                t.len()
            )));
        }
        Ok(t)
    }
}

/// An attribution method.
pub trait Attribution {
    /// A short name (`gradient`, `ig`, ...).
    fn name(&self) -> String;
    /// The method's full name with the settings that shape its maps, for figure labels
    /// (`Integrated Gradients, 50 steps, black baseline`).
    fn describe(&self) -> String {
        self.name()
    }
    /// Raw attributions for `x` (`[N, 3, H, W]` in `[0, 1]`) towards `targets[i]` per image.
    fn attribute(&self, model: &dyn Classifier, x: &Tensor, targets: &[usize]) -> Result<Tensor>;
    /// [`Attribution::attribute`] and, for a method with a completeness check (Integrated
    /// Gradients), how far each image's attributions are from adding up to its logit change.
    fn attribute_checked(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        targets: &[usize],
    ) -> Result<(Tensor, Option<Vec<Convergence>>)> {
        Ok((self.attribute(model, x, targets)?, None))
    }
}

/// Argmax classes, computed in batches.
pub fn predict_classes(model: &dyn Classifier, x: &Tensor, batch: usize) -> Result<Vec<usize>> {
    let n = x.dim(0)?;
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let m = batch.max(1).min(n - i);
        let logits = model.logits(&x.narrow(0, i, m)?)?;
        let am: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
        out.extend(am.into_iter().map(|v| v as usize));
        i += m;
    }
    Ok(out)
}

/// Target logits for many inputs, in batches of `batch`, no gradients: `[M]`.
pub fn target_logits(
    model: &dyn Classifier,
    x: &Tensor,
    targets: &[usize],
    batch: usize,
) -> Result<Vec<f32>> {
    let n = x.dim(0)?;
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let m = batch.max(1).min(n - i);
        let logits = model.logits(&x.narrow(0, i, m)?)?;
        out.extend(select_targets(&logits, &targets[i..i + m])?.to_vec1::<f32>()?);
        i += m;
    }
    Ok(out)
}

/// Gradients of `logits[i, targets[i]]` with respect to each input row (rows are independent
/// in eval mode), computed in batches of `batch` with no weight gradients: `[M, 3, H, W]`.
pub fn input_gradients(
    model: &dyn Classifier,
    x: &Tensor,
    targets: &[usize],
    batch: usize,
) -> Result<Tensor> {
    let n = x.dim(0)?;
    if targets.len() != n {
        return Err(Error::internal(format!(
            "{} targets for {n} inputs",
            targets.len()
        )));
    }
    // the batches after the first reuse the weights' derived forms (flipped kernels, ...)
    crate::ops::with_frozen_weights(|| {
        let mut parts = Vec::new();
        let mut i = 0;
        while i < n {
            let m = batch.max(1).min(n - i);
            parts.push(model.input_gradient(&x.narrow(0, i, m)?, &targets[i..i + m])?);
            i += m;
        }
        Ok(Tensor::cat(&parts, 0)?)
    })
}

/// Builds a method by its command-line name.
pub fn by_name(name: &str, opts: &MethodOptions) -> Result<Box<dyn Attribution>> {
    Ok(match name.trim() {
        "gradient" | "saliency" => Box::new(Gradient { batch: opts.internal_batch_size }),
        "input-x-gradient" | "ixg" => Box::new(InputXGradient { batch: opts.internal_batch_size }),
        "ig" | "integrated-gradients" => Box::new(IntegratedGradients {
            steps: opts.ig_steps,
            rule: opts.ig_rule,
            baseline: opts.baseline.clone(),
            internal_batch_size: opts.internal_batch_size,
            seed: opts.seed,
        }),
        "smoothgrad" => {
            if matches!(opts.smooth_base.as_str(), "smoothgrad") {
                return Err(Error::config(
                    "smooth-base",
                    "smoothgrad",
                    "SmoothGrad cannot wrap itself",
                ));
            }
            let base = by_name(&opts.smooth_base, opts)?;
            Box::new(NoiseTunnel {
                base,
                kind: opts.smooth,
                samples: opts.samples,
                noise: opts.noise,
                seed: opts.seed,
            })
        }
        "occlusion" => Box::new(Occlusion {
            window: opts.window,
            stride: opts.stride,
            baseline: opts.occlusion_baseline,
            perturbations_per_eval: opts.perturbations_per_eval,
        }),
        "gradcam" | "grad-cam" => Box::new(GradCam {
            layer: opts.layer.clone(),
        }),
        other => {
            return Err(Error::config(
                "method",
                other,
                format!("unknown method `{other}`; use gradient, input-x-gradient, ig, smoothgrad, occlusion or gradcam"),
            ))
        }
    })
}

/// Options shared by the methods, with the paper's defaults.
#[derive(Debug, Clone)]
pub struct MethodOptions {
    pub ig_steps: usize,
    pub ig_rule: IgRule,
    pub baseline: Baseline,
    pub internal_batch_size: usize,
    pub smooth: SmoothKind,
    pub smooth_base: String,
    pub samples: usize,
    pub noise: f32,
    pub window: usize,
    pub stride: usize,
    pub occlusion_baseline: f32,
    pub perturbations_per_eval: usize,
    /// Grad-CAM's layer (`None`: the model's default, layer4 of a ResNet).
    pub layer: Option<String>,
    pub seed: u64,
}

impl Default for MethodOptions {
    fn default() -> Self {
        MethodOptions {
            ig_steps: 50,
            ig_rule: IgRule::GaussLegendre,
            baseline: Baseline::Black,
            internal_batch_size: 16,
            smooth: SmoothKind::SmoothGrad,
            smooth_base: "gradient".into(),
            samples: 50,
            noise: 0.2,
            window: 50,
            stride: 25,
            occlusion_baseline: 0.0,
            perturbations_per_eval: 16,
            layer: None,
            seed: 0,
        }
    }
}
