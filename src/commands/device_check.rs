//! `robustlens device-check`: one model on a device against the same model on the CPU, on the
//! computations training and saliency rest on: eval-mode logits, input gradients (eval mode,
//! detached weights, folded BatchNorms), one training step's weight gradients and updated
//! BatchNorm statistics, and a PGD-7 attack. Prints one JSON object per check
//! (`bench/gpu-check.sh` runs it on a GPU machine).
//!
//! The difference is measured as `max |device - cpu| / max |cpu|` per tensor (the largest
//! over a model's parameters for the weight gradients). The attack starts at the images
//! themselves (no random start: the device draws its own random numbers), so both sides
//! take the same seven steps.

use crate::adversarial::Pgd;
use crate::attribution::input_gradients;
use crate::model::{Arch, GroupSet, Mode, Network};
use crate::rng::SeededRng;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

/// Options of `device-check`.
#[derive(Debug, Clone)]
pub struct DeviceCheckOptions {
    pub arch: Arch,
    pub device: crate::device::DeviceSpec,
    pub image_size: usize,
    pub batch_size: usize,
    /// The largest relative difference that passes.
    pub tolerance: f64,
    pub seed: u64,
}

/// One comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub check: String,
    pub device: String,
    pub arch: Arch,
    pub size: usize,
    pub batch: usize,
    /// `max |device - cpu|`.
    pub max_abs: f64,
    /// `max |device - cpu| / max |cpu|`.
    pub rel: f64,
    pub tolerance: f64,
    pub pass: bool,
    pub tf32: bool,
}

/// `(max |a - b|, max |a - b| / max |b|)`, both on the CPU in f64.
fn difference(a: &Tensor, b: &Tensor) -> Result<(f64, f64)> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    if a.dims() != b.dims() {
        return Err(Error::internal(format!(
            "device check: shapes {:?} and {:?} differ",
            a.dims(),
            b.dims()
        )));
    }
    let diff = (&a - &b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()?;
    let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    Ok((diff, if scale > 0.0 { diff / scale } else { diff }))
}

/// The same model on `device`: the CPU model's tensors copied over.
fn copy_to(model: &dyn Network, device: &Device) -> Result<Box<dyn Network>> {
    let other = crate::model::build(model.kind(), model.num_classes(), 0, device)?;
    let tensors = model
        .state_dict()?
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_device(device)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    other.load_tensors(&tensors, std::path::Path::new("the CPU model"))?;
    Ok(other)
}

/// The weight gradients of one training step (cross-entropy, batch statistics), by name,
/// and the BatchNorm running statistics it leaves.
fn train_step(model: &dyn Network, x: &Tensor, y: &Tensor) -> Result<Vec<(String, Tensor)>> {
    let logits = model.forward_mode(x, Mode::Train)?;
    let loss = candle_nn::loss::cross_entropy(&logits, y)?;
    let grads = loss.backward()?;
    let mut out = Vec::new();
    for (name, v) in model.trainable_vars(GroupSet::all()) {
        let g = grads
            .get(v.as_tensor())
            .ok_or_else(|| Error::internal(format!("device check: no gradient for {name}")))?;
        out.push((format!("grad {name}"), g.clone()));
    }
    for (name, t) in model.state_dict()? {
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            out.push((name, t));
        }
    }
    Ok(out)
}

/// Runs the checks and prints them as JSON lines; an error names the checks that failed.
pub fn run(o: &DeviceCheckOptions) -> Result<Vec<Check>> {
    super::check_image_size(o.image_size)?;
    o.arch.check_image_size(o.image_size)?;
    if o.batch_size < 2 {
        return Err(Error::config(
            "batch-size",
            o.batch_size,
            "must be at least 2 (BatchNorm in train mode)",
        ));
    }
    let device = o.device.open()?;
    if device.is_cpu() {
        tracing::warn!(
            "device-check: the device is the CPU ({} in a build or on a machine without a GPU), \
             so the CPU is compared with itself",
            o.device
        );
    }
    let cpu = Device::Cpu;
    let (b, s) = (o.batch_size, o.image_size);
    let cpu_model = crate::model::build(o.arch, 3, o.seed, &cpu)?;
    let dev_model = copy_to(cpu_model.as_ref(), &device)?;
    let mut rng = SeededRng::new(o.seed ^ 0xdec0de);
    let x = Tensor::from_vec(rng.uniform_vec(b * 3 * s * s, 0.0, 1.0), (b, 3, s, s), &cpu)?;
    let labels: Vec<usize> = (0..b).map(|i| i % 3).collect();
    let y = Tensor::new(labels.iter().map(|&l| l as u32).collect::<Vec<_>>(), &cpu)?;
    let (xd, yd) = (x.to_device(&device)?, y.to_device(&device)?);

    // (check, max_abs, rel)
    let mut results: Vec<(&str, f64, f64)> = Vec::new();
    let eval = |m: &dyn Network, x: &Tensor| m.forward_mode(x, Mode::Eval);
    let (d, r) = difference(
        &eval(dev_model.as_ref(), &xd)?,
        &eval(cpu_model.as_ref(), &x)?,
    )?;
    results.push(("logits", d, r));
    let (d, r) = difference(
        &input_gradients(&dev_model, &xd, &labels, b)?,
        &input_gradients(&cpu_model, &x, &labels, b)?,
    )?;
    results.push(("input gradients", d, r));
    let pgd = Pgd {
        random_start: false,
        ..Pgd::training(0.5 * s as f32 / 32.0, 7)
    };
    let (d, r) = difference(
        &pgd.attack_images(&dev_model, &xd, &labels, None, &mut SeededRng::new(1))?,
        &pgd.attack_images(&cpu_model, &x, &labels, None, &mut SeededRng::new(1))?,
    )?;
    results.push(("pgd7 images", d, r));
    // the training step last: it changes the running statistics
    let on_dev = train_step(dev_model.as_ref(), &xd, &yd)?;
    let on_cpu = train_step(cpu_model.as_ref(), &x, &y)?;
    // all weight gradients as one check (the worst tensor), all running statistics another
    for (label, grads) in [
        ("train-step weight gradients", true),
        ("train-step running statistics", false),
    ] {
        let mut worst: Option<(f64, f64)> = None;
        for ((name, a), (_, c)) in on_dev.iter().zip(&on_cpu) {
            if name.starts_with("grad ") == grads {
                let (d, r) = difference(a, c)?;
                worst = Some(worst.map_or((d, r), |(wd, wr)| (wd.max(d), wr.max(r))));
            }
        }
        if let Some((d, r)) = worst {
            results.push((label, d, r));
        }
    }

    let mut checks = Vec::new();
    for (name, max_abs, rel) in results {
        let check = Check {
            check: name.to_string(),
            device: format!("{:?}", device.location()),
            arch: o.arch,
            size: s,
            batch: b,
            max_abs,
            rel,
            tolerance: o.tolerance,
            pass: rel <= o.tolerance,
            tf32: crate::device::tf32(),
        };
        println!(
            "{}",
            serde_json::to_string(&check).map_err(|e| Error::internal(e.to_string()))?
        );
        checks.push(check);
    }
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.pass)
        .map(|c| c.check.as_str())
        .collect();
    if !failed.is_empty() {
        return Err(Error::Device(format!(
            "{} differs from the CPU by more than {} (relative) in: {}",
            o.device,
            o.tolerance,
            failed.join(", ")
        )));
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceSpec;

    fn options(batch: usize) -> DeviceCheckOptions {
        DeviceCheckOptions {
            arch: Arch::Resnet18,
            device: DeviceSpec::Cpu,
            image_size: 32,
            batch_size: batch,
            tolerance: 1e-4,
            seed: 3,
        }
    }

    #[test]
    fn the_cpu_against_itself_is_exact() {
        // the copied model, the same inputs and seeds: every check at exactly 0 (CPU results
        // do not depend on scheduling), and all six present
        let checks = run(&options(2)).unwrap();
        let names: Vec<&str> = checks.iter().map(|c| c.check.as_str()).collect();
        assert_eq!(
            names,
            [
                "logits",
                "input gradients",
                "pgd7 images",
                "train-step weight gradients",
                "train-step running statistics"
            ]
        );
        for c in &checks {
            assert!(c.pass && c.max_abs == 0.0 && c.rel == 0.0, "{c:?}");
        }
    }

    #[test]
    fn differences_are_measured_and_bad_options_named() {
        let a = Tensor::new(&[1f32, -4.0, 2.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[1f32, -2.0, 2.0], &Device::Cpu).unwrap();
        assert_eq!(difference(&a, &b).unwrap(), (2.0, 1.0));
        let e = run(&options(1)).unwrap_err().to_string();
        assert!(e.contains("batch-size"), "{e}");
    }
}
