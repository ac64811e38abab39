//! `demo`: the whole pipeline on the built-in synthetic set: standard, robust and fine-tuned
//! models (finished runs in the folder are kept, interrupted ones resumed), then the report.

use super::report::ReportOptions;
use crate::config::{eps_from_224, AdvConfig, Init, Preset, Recipe, Schedule, TrainConfig};
use crate::device::DeviceSpec;
use crate::fsutil::ensure_output_dir;
use crate::interrupt::Interrupt;
use crate::model::GroupSet;
use crate::train::{train, Stop};
use crate::{Error, Result};
use std::path::PathBuf;

/// Options of `demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub out: PathBuf,
    pub image_size: usize,
    /// Robust models to train, as paper eps values at 224 px (scaled to the working size).
    pub eps_at_224: Vec<f32>,
    pub seed: u64,
    pub device: DeviceSpec,
    /// Epochs of the whole-network phase of the robust models.
    pub robust_epochs: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            out: PathBuf::from("models/demo"),
            image_size: 64,
            eps_at_224: vec![4.0],
            seed: 0,
            device: DeviceSpec::Cpu,
            robust_epochs: 6,
        }
    }
}

/// Trains the demo's models (reusing finished runs in `out`) and writes the report.
pub fn run(opts: &DemoOptions, interrupt: &Interrupt) -> Result<serde_json::Value> {
    super::check_image_size(opts.image_size)?;
    let device = opts.device.open()?;
    let base = |recipe| TrainConfig {
        device: opts.device,
        seed: opts.seed,
        image_size: opts.image_size,
        ..Preset::Quick.base(recipe)
    };
    ensure_output_dir(&opts.out)?;
    let run = |name: &str, cfg: &TrainConfig| -> Result<PathBuf> {
        let dir = opts.out.join(name);
        if dir.join("summary.json").exists() {
            eprintln!(
                "demo: {name} already trained in {} (delete it to retrain)",
                dir.display()
            );
            return Ok(dir);
        }
        let resume = dir.join("resume.safetensors").exists();
        eprintln!("demo: training {name} -> {}", dir.display());
        match train(cfg, &dir, resume, interrupt)? {
            Stop::Finished(s) => {
                if let Some(t) = &s.test {
                    eprintln!(
                        "demo: {name}: test accuracy {:.1}% ({:.0} s)",
                        100.0 * t.accuracy,
                        s.seconds
                    );
                }
                Ok(dir)
            }
            Stop::Interrupted => Err(Error::Interrupted { resume: None }),
        }
    };
    let mut runs = Vec::new();
    let std_dir = run("standard", &base(Recipe::TrainStandard))?;
    runs.push(("standard".to_string(), std_dir.clone()));
    let mut first_robust = None;
    for &e in &opts.eps_at_224 {
        let eps = eps_from_224(e, opts.image_size);
        let mut cfg = base(Recipe::TrainRobust);
        cfg.main.epochs = opts.robust_epochs;
        cfg.main.schedule = Schedule::Step {
            epoch: opts.robust_epochs.saturating_sub(1).max(1),
            factor: 0.1,
        };
        cfg.adversarial = Some(AdvConfig::preset(eps, 7));
        let name = format!("robust-eps{e}");
        let dir = run(&name, &cfg)?;
        if first_robust.is_none() {
            first_robust = Some(dir.clone());
        }
        runs.push((name, dir));
    }
    if let Some(rdir) = first_robust {
        let mut cfg = base(Recipe::Finetune);
        cfg.main.epochs = 2;
        cfg.main.lr = 1e-4;
        cfg.groups = GroupSet::parse("3-5")?;
        cfg.init = Init::From(rdir.clone());
        cfg.data.split = Some(rdir.join("split.csv"));
        let dir = run("robust-finetuned-3-5", &cfg)?;
        runs.push(("robust+ft 3-5".to_string(), dir));
    }
    eprintln!("demo: evaluating and explaining {} models", runs.len());
    let ropts = ReportOptions {
        out: opts.out.clone(),
        seed: opts.seed,
        ..Default::default()
    };
    super::report::run(&runs, &ropts, &device)
}
