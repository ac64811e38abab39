//! Projected gradient descent (PGD) in L2 and L-infinity balls, as `robustness`'s
//! `AttackerModel` does it:
//!
//! - L2 step: x <- x + a * g / (||g||_2 + 1e-10) per example; L-inf step: x <- x + a * sign(g);
//! - projection: delta <- renorm(delta, p=2, maxnorm=eps) per example (L-inf: clamp to
//!   [-eps, eps]), then x <- clamp(x0 + delta, 0, 1);
//! - random start: L2 delta0 = renorm(U(-0.5, 0.5), maxnorm=eps), L-inf delta0 = U(-eps, eps),
//!   then clamp to [0, 1];
//! - `use_best`: per example, keep the iterate with the highest loss (lowest when targeted),
//!   checked before every step and once after the last;
//! - random restarts: each restart's result replaces the kept one for examples it
//!   misclassifies (targeted: classifies as the target).
//!
//! The model runs in eval mode with its weights detached: only input gradients are computed.

pub use crate::model::Classifier;
use crate::rng::SeededRng;
use crate::{Error, Result};
use candle_core::{Tensor, Var, D};

/// The threat model's norm.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// The L2 ball (the paper's).
    #[value(alias = "2")]
    L2,
    /// The L-infinity ball.
    #[value(alias = "inf", alias = "l-inf")]
    Linf,
}

impl Norm {
    pub fn parse(s: &str) -> Result<Norm> {
        match s.trim().to_ascii_lowercase().as_str() {
            "l2" | "2" => Ok(Norm::L2),
            "linf" | "inf" | "l-inf" => Ok(Norm::Linf),
            other => Err(Error::attack_setting("norm", other, "use l2 or linf")),
        }
    }
}

/// A PGD attack.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Pgd {
    pub norm: Norm,
    /// Radius of the ball in `[0, 1]` pixel units.
    pub eps: f32,
    pub steps: usize,
    pub step_size: f32,
    pub random_start: bool,
    pub use_best: bool,
    /// Number of random restarts (0 = a single run).
    pub restarts: usize,
}

/// The attack's output.
pub struct PgdResult {
    /// Adversarial images, `[N, 3, H, W]` in `[0, 1]`.
    pub images: Tensor,
    /// Per-example cross-entropy of the returned images (towards `labels`).
    pub losses: Vec<f32>,
}

impl Pgd {
    /// The paper's training attack: L2, 7 steps, step eps/5, random start.
    pub fn paper_train(eps: f32) -> Pgd {
        Pgd::training(eps, 7)
    }

    /// The training attack preset (robustness's `train` settings): L2, `steps` steps of
    /// eps/5, random start, use_best, no restarts. Every command that trains robust models
    /// (train-robust, sweep-eps, demo) takes its attack from here.
    pub fn training(eps: f32, steps: usize) -> Pgd {
        Pgd {
            norm: Norm::L2,
            eps,
            steps,
            step_size: eps / 5.0,
            random_start: true,
            use_best: true,
            restarts: 0,
        }
    }

    /// The evaluation attack preset (robust accuracy in evaluate, compare and the report):
    /// L2, `steps` steps of 2.5 eps / steps, no random start, use_best, no restarts.
    pub fn evaluation(eps: f32, steps: usize) -> Pgd {
        Pgd {
            norm: Norm::L2,
            eps,
            steps,
            step_size: 2.5 * eps / steps.max(1) as f32,
            random_start: false,
            use_best: true,
            restarts: 0,
        }
    }

    /// Checks the settings, naming the bad value.
    pub fn validate(&self) -> Result<()> {
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(Error::attack_setting(
                "eps",
                self.eps,
                "must be a number > 0",
            ));
        }
        if self.steps == 0 {
            return Err(Error::attack_setting(
                "steps",
                0,
                "PGD needs at least one step",
            ));
        }
        if !(self.step_size.is_finite() && self.step_size > 0.0) {
            return Err(Error::attack_setting(
                "step-size",
                self.step_size,
                "must be a number > 0",
            ));
        }
        Ok(())
    }

    /// Untargeted attack (raise the loss of `labels`), or targeted when `targets` is given
    /// (lower the loss of `targets`).
    pub fn attack(
        &self,
        model: &dyn Classifier,
        x0: &Tensor,
        labels: &[usize],
        targets: Option<&[usize]>,
        rng: &mut SeededRng,
    ) -> Result<PgdResult> {
        self.attack_with(model, x0, labels, targets, rng, true)
    }

    /// The adversarial images only: the same images as [`Pgd::attack`] (same random draws),
    /// without the extra forward pass that measures the returned images' losses when
    /// neither `use_best` nor restarts need them (adversarial training).
    pub fn attack_images(
        &self,
        model: &dyn Classifier,
        x0: &Tensor,
        labels: &[usize],
        targets: Option<&[usize]>,
        rng: &mut SeededRng,
    ) -> Result<Tensor> {
        Ok(self
            .attack_with(model, x0, labels, targets, rng, false)?
            .images)
    }

    /// [`Pgd::attack`]; the returned losses are measured only when `final_losses` (empty
    /// otherwise, unless `use_best` or restarts have them anyway).
    fn attack_with(
        &self,
        model: &dyn Classifier,
        x0: &Tensor,
        labels: &[usize],
        targets: Option<&[usize]>,
        rng: &mut SeededRng,
        final_losses: bool,
    ) -> Result<PgdResult> {
        // constant weights for the whole call: their derived forms computed once
        crate::ops::with_frozen_weights(|| {
            self.validate()?;
            let n = x0.dim(0)?;
            let goal = targets.unwrap_or(labels);
            if goal.len() != n {
                return Err(Error::attack(format!(
                    "PGD: {} labels for {n} images",
                    goal.len()
                )));
            }
            let targeted = targets.is_some();
            let runs = self.restarts.max(1);
            // restarts keep, per image, the losses of the run they keep
            let want_losses = final_losses || runs > 1;
            let mut kept: Option<(Tensor, Vec<f32>)> = None;
            for _ in 0..runs {
                let (adv, losses) = self.run_once(model, x0, goal, targeted, rng, want_losses)?;
                kept = Some(match kept {
                    None => (adv, losses),
                    Some((prev, mut prev_loss)) => {
                        // Replace where this run succeeds.
                        let logits = model.logits(&adv)?.detach();
                        let pred: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
                        let replace: Vec<bool> = (0..n)
                            .map(|i| {
                                if targeted {
                                    pred[i] as usize == goal[i]
                                } else {
                                    pred[i] as usize != goal[i]
                                }
                            })
                            .collect();
                        for i in 0..n {
                            if replace[i] {
                                prev_loss[i] = losses[i];
                            }
                        }
                        let take: Vec<u8> = replace.iter().map(|&r| r as u8).collect();
                        let take = Tensor::from_vec(take, n, adv.device())?;
                        (select_rows(&take, &adv, &prev)?, prev_loss)
                    }
                });
            }
            let (images, losses) = kept.expect("at least one run");
            Ok(PgdResult { images, losses })
        })
    }

    /// One run; the losses of the returned images are measured when `final_losses` (empty
    /// otherwise, unless `use_best` has them).
    fn run_once(
        &self,
        model: &dyn Classifier,
        x0: &Tensor,
        goal: &[usize],
        targeted: bool,
        rng: &mut SeededRng,
        final_losses: bool,
    ) -> Result<(Tensor, Vec<f32>)> {
        let x0 = x0.detach().contiguous()?;
        let n = x0.dim(0)?;
        let sign: f32 = if targeted { -1.0 } else { 1.0 };
        let mut x = if self.random_start {
            let shape = x0.shape().clone();
            // drawn on the images' device (on the CPU, the same values as ever)
            let delta = match self.norm {
                Norm::L2 => renorm_l2(
                    &rng.uniform_tensor(&shape, -0.5, 0.5, x0.device())?,
                    self.eps,
                )?,
                Norm::Linf => rng.uniform_tensor(&shape, -self.eps, self.eps, x0.device())?,
            };
            (&x0 + delta)?.clamp(0f32, 1f32)?
        } else {
            x0.clone()
        };
        let mut best: Option<(Tensor, Tensor)> = None;
        for _ in 0..self.steps {
            let xv = Var::from_tensor(&x)?;
            let logits = model.logits(xv.as_tensor())?;
            let losses = cross_entropy_per_example(&logits, goal)?;
            let g = (losses.sum_all()? * sign as f64)?.backward()?;
            let grad = g
                .get(xv.as_tensor())
                .ok_or_else(|| Error::internal("no input gradient in PGD"))?
                .clone();
            if self.use_best {
                best = Some(replace_best(best, &x, &losses.detach(), sign)?);
            }
            let stepped = match self.norm {
                Norm::L2 => {
                    let norm = grad
                        .flatten_from(1)?
                        .sqr()?
                        .sum(1)?
                        .sqrt()?
                        .reshape((n, 1, 1, 1))?;
                    (&x + grad
                        .broadcast_div(&(norm + 1e-10)?)?
                        .affine(self.step_size as f64, 0.0)?)?
                }
                Norm::Linf => (&x + grad.sign()?.affine(self.step_size as f64, 0.0)?)?,
            };
            let diff = (stepped - &x0)?;
            let diff = match self.norm {
                Norm::L2 => renorm_l2(&diff, self.eps)?,
                Norm::Linf => diff.clamp(-self.eps, self.eps)?,
            };
            x = (&x0 + diff)?.clamp(0f32, 1f32)?.detach();
        }
        if !final_losses && !self.use_best {
            return Ok((x, Vec::new()));
        }
        let logits = model.logits(&x)?.detach();
        let lv = cross_entropy_per_example(&logits, goal)?;
        // the losses come to the host once per run, at the end
        if self.use_best {
            let (bx, bl) = replace_best(best, &x, &lv, sign)?;
            Ok((bx, bl.to_vec1()?))
        } else {
            Ok((x, lv.to_vec1()?))
        }
    }
}

/// Per-example cross-entropy `[N]`.
pub fn cross_entropy_per_example(logits: &Tensor, labels: &[usize]) -> Result<Tensor> {
    let lsm = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let idx: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    let idx = Tensor::new(idx.as_slice(), logits.device())?.unsqueeze(1)?;
    Ok(lsm.gather(&idx, 1)?.squeeze(1)?.neg()?)
}

/// `torch.renorm(t, p=2, dim=0, maxnorm)`: rows whose L2 norm exceeds `maxnorm` are scaled by
/// maxnorm / (norm + 1e-7).
pub fn renorm_l2(t: &Tensor, maxnorm: f32) -> Result<Tensor> {
    let n = t.dim(0)?;
    let norms = t.flatten_from(1)?.sqr()?.sum(1)?.sqrt()?;
    let f = if t.device().is_cpu() {
        let factors: Vec<f32> = norms
            .to_vec1::<f32>()?
            .iter()
            .map(|&nm| renorm_factor(nm, maxnorm))
            .collect();
        Tensor::from_vec(factors, n, t.device())?
    } else {
        renorm_factors(&norms, maxnorm)?
    };
    Ok(t.broadcast_mul(&f.reshape(row_shape(t)?)?)?)
}

/// [`renorm_l2`]'s factor for a row of L2 norm `norm`, on the host.
fn renorm_factor(norm: f32, maxnorm: f32) -> f32 {
    if norm > maxnorm {
        maxnorm / (norm + 1e-7)
    } else {
        1.0
    }
}

/// `[n, 1, ..., 1]` for `t` of shape `[n, ...]`: one value per row, broadcast along it.
fn row_shape(t: &Tensor) -> Result<Vec<usize>> {
    Ok(std::iter::once(t.dim(0)?)
        .chain(std::iter::repeat_n(1, t.rank() - 1))
        .collect())
}

/// [`renorm_l2`]'s factors from the row norms with tensor ops, where the rows are (on a GPU:
/// no synchronisation per attack step); to rounding, the CPU's.
fn renorm_factors(norms: &Tensor, maxnorm: f32) -> Result<Tensor> {
    let scaled = ((norms.clone() + 1e-7)?.recip()? * maxnorm as f64)?;
    Ok(norms
        .gt(maxnorm as f64)?
        .where_cond(&scaled, &norms.ones_like()?)?)
}

/// `use_best`'s step: per example, the iterate `x` with its `losses` `[n]` where it beats the
/// kept one (`sign * kept < sign * loss`, `sign` = -1 for targeted attacks), else the kept one.
/// Tensor ops where the images are (on a GPU, no synchronisation per step); the selection
/// copies values, so the result is the same on every device.
fn replace_best(
    best: Option<(Tensor, Tensor)>,
    x: &Tensor,
    losses: &Tensor,
    sign: f32,
) -> Result<(Tensor, Tensor)> {
    match best {
        None => Ok((x.clone(), losses.clone())),
        Some((bx, bl)) => {
            let take = (losses * sign as f64)?.gt(&(&bl * sign as f64)?)?;
            Ok((select_rows(&take, x, &bx)?, take.where_cond(losses, &bl)?))
        }
    }
}

/// Row i from `a` where `take[i]` (a `u8` tensor `[n]`) is not 0, else from `b`: values
/// copied, on the rows' device.
fn select_rows(take: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(take
        .reshape(row_shape(a)?)?
        .broadcast_as(a.shape())?
        .where_cond(a, b)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn device_renorm_factors_are_the_host_ones() {
        // below, at and above the bound; what a GPU computes, run here on the CPU
        let maxnorm = 1.5f32;
        let norms = [0.2f32, 1.5, 1.5000001, 2.0, 37.25, 0.0];
        let host: Vec<f32> = norms.iter().map(|&nm| renorm_factor(nm, maxnorm)).collect();
        let t = Tensor::new(&norms, &Device::Cpu).unwrap();
        let dev: Vec<f32> = renorm_factors(&t, maxnorm).unwrap().to_vec1().unwrap();
        for (a, b) in dev.iter().zip(&host) {
            assert!((a - b).abs() <= 2.0 * f32::EPSILON * b.abs(), "{a} vs {b}");
        }
        assert_eq!(dev[0], 1.0);
        assert_eq!(dev[1], 1.0);
    }
}
