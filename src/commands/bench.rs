//! `robustlens bench`: images per second of the workloads that matter, measured the same way
//! as `bench/torch_reference.py` does for PyTorch (median of timed iterations after warm-up),
//! so the two can be run side by side and compared cell by cell.

use crate::adversarial::Pgd;
use crate::attribution::{input_gradients, Attribution, Baseline, IgRule, IntegratedGradients};
use crate::model::{Arch, GroupSet, Mode};
use crate::rng::SeededRng;
use crate::train::optim::{Adam, OptimKind};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::time::Instant;

/// One benchmark cell.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cell {
    pub arch: Arch,
    pub what: String,
    pub size: usize,
    pub batch: usize,
    pub img_per_s: f64,
    /// The process's peak resident memory after the cell (a high-water mark: run one
    /// architecture per process to read it per architecture).
    pub peak_rss_mb: f64,
    /// The instruction sets the CPU kernels ran ([`crate::ops::instruction_sets`]), or `GPU`.
    pub isa: String,
}

/// The workloads: `eval` (forward, eval mode), `train` (forward, backward, Adam step),
/// `input-grad` (gradient of the true-class logit with respect to the input, eval mode, no
/// weight gradients: one PGD or saliency step), `pgd7` (a PGD-7 training step: 7 input
/// gradients and one training step), `ig` (Integrated Gradients with 50 steps per image,
/// internal batch = the batch size).
pub const WORKLOADS: [&str; 5] = ["eval", "train", "input-grad", "pgd7", "ig"];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// Runs `f` `warmup` times untimed, then `iters` times timed; images/s of the median run.
/// Each run ends when `device` has finished its work (GPUs queue kernels asynchronously).
fn time_it(
    device: &Device,
    images: usize,
    warmup: usize,
    iters: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    device.synchronize()?;
    let mut secs = Vec::new();
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        f()?;
        device.synchronize()?;
        secs.push(t.elapsed().as_secs_f64());
    }
    Ok(images as f64 / median(secs))
}

/// Measures one workload at one size.
pub fn run_cell(
    arch: Arch,
    what: &str,
    size: usize,
    batch: usize,
    warmup: usize,
    iters: usize,
    device: &Device,
) -> Result<Cell> {
    if batch == 0 {
        return Err(Error::config("batch-size", 0, "must be at least 1"));
    }
    arch.check_image_size(size)?;
    let model = crate::model::build(arch, 3, 0, device)?;
    let mut rng = SeededRng::new(1);
    let x = Tensor::from_vec(
        rng.uniform_vec(batch * 3 * size * size, 0.0, 1.0),
        (batch, 3, size, size),
        device,
    )?;
    let labels: Vec<usize> = (0..batch).map(|i| i % 3).collect();
    let y = Tensor::new(
        labels
            .iter()
            .map(|&l| l as u32)
            .collect::<Vec<_>>()
            .as_slice(),
        device,
    )?;
    let train_step = |opt: &mut Adam, xb: &Tensor| -> Result<()> {
        let logits = model.forward_mode(xb, Mode::Train)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        let grads = loss.backward()?;
        opt.step(&grads)?;
        Ok(())
    };
    let new_adam = || {
        Adam::new(
            OptimKind::Adam,
            model.trainable_vars(GroupSet::all()),
            1e-4,
            5e-4,
        )
    };
    let img_per_s = match what {
        "eval" => time_it(device, batch, warmup, iters, || {
            model
                .forward_mode(&x, Mode::InputGrad)?
                .to_device(&Device::Cpu)?;
            Ok(())
        })?,
        "train" => {
            let mut opt = new_adam()?;
            time_it(device, batch, warmup, iters, || train_step(&mut opt, &x))?
        }
        "input-grad" => time_it(device, batch, warmup, iters, || {
            input_gradients(&model, &x, &labels, batch)?.to_device(&Device::Cpu)?;
            Ok(())
        })?,
        "pgd7" => {
            let mut opt = new_adam()?;
            let eps = 0.5 * size as f32 / 32.0;
            // The training attack without use_best, as bench/torch_reference.py runs it.
            let pgd = Pgd {
                use_best: false,
                ..Pgd::training(eps, 7)
            };
            let mut r = SeededRng::new(2);
            time_it(device, batch, warmup, iters, || {
                let adv = pgd.attack_images(&model, &x, &labels, None, &mut r)?;
                train_step(&mut opt, &adv)
            })?
        }
        "ig" => {
            let ig = IntegratedGradients {
                steps: 50,
                rule: IgRule::GaussLegendre,
                baseline: Baseline::Black,
                internal_batch_size: batch,
                seed: 0,
            };
            let xi = x.narrow(0, 0, 1)?;
            time_it(device, 1, warmup, iters, || {
                ig.attribute(&model, &xi, &labels[..1])?
                    .to_device(&Device::Cpu)?;
                Ok(())
            })?
        }
        other => {
            return Err(Error::config(
                "what",
                other,
                format!("unknown workload; use {}", WORKLOADS.join(", ")),
            ))
        }
    };
    Ok(Cell {
        arch,
        what: what.to_string(),
        size,
        batch: if what == "ig" { 1 } else { batch },
        img_per_s,
        peak_rss_mb: crate::fsutil::peak_rss_mb(),
        isa: match device {
            Device::Cpu => crate::ops::instruction_sets(),
            _ => "GPU".to_string(),
        },
    })
}

/// A benchmark workload (see [`WORKLOADS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Forward, eval mode.
    Eval,
    /// Forward, backward and an Adam step.
    Train,
    /// The input gradient of the true-class logit (one PGD or saliency step).
    InputGrad,
    /// A PGD-7 training step: 7 input gradients and one training step.
    Pgd7,
    /// Integrated Gradients, 50 steps per image.
    Ig,
}

impl Workload {
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Eval => "eval",
            Workload::Train => "train",
            Workload::InputGrad => "input-grad",
            Workload::Pgd7 => "pgd7",
            Workload::Ig => "ig",
        }
    }
}

/// Options of `bench`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub arch: Arch,
    pub what: Vec<Workload>,
    pub sizes: Vec<usize>,
    pub batch_size: usize,
    pub iters: usize,
    pub warmup: usize,
    /// One JSON object per line instead of a table.
    pub json: bool,
    pub device: crate::device::DeviceSpec,
}

/// Measures every workload at every size and prints a table (or JSON lines).
pub fn run(o: &BenchOptions) -> Result<Vec<Cell>> {
    for &s in &o.sizes {
        super::check_image_size(s)?;
        o.arch.check_image_size(s)?;
    }
    if o.batch_size == 0 {
        return Err(Error::config("batch-size", 0, "must be at least 1"));
    }
    if o.iters == 0 {
        return Err(Error::config("iters", 0, "must be at least 1"));
    }
    let device = o.device.open()?;
    if !o.json {
        let isa = match &device {
            Device::Cpu => format!(", {}", crate::ops::instruction_sets()),
            _ => String::new(),
        };
        println!(
            "{} ({} layout{isa})\n{:<12} {:>5} {:>6} {:>10} {:>13}",
            o.arch,
            o.arch.ecosystem(),
            "what",
            "size",
            "batch",
            "images/s",
            "peak RSS MB"
        );
    }
    let mut cells = Vec::new();
    for &size in &o.sizes {
        for w in &o.what {
            let c = run_cell(
                o.arch,
                w.as_str(),
                size,
                o.batch_size,
                o.warmup,
                o.iters,
                &device,
            )?;
            if o.json {
                println!(
                    "{}",
                    serde_json::to_string(&c).map_err(|e| Error::internal(e.to_string()))?
                );
            } else {
                println!(
                    "{:<12} {:>5} {:>6} {:>10.2} {:>13.0}",
                    c.what, c.size, c.batch, c.img_per_s, c.peak_rss_mb
                );
            }
            cells.push(c);
        }
    }
    Ok(cells)
}
