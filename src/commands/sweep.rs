//! `sweep-eps`: one model per eps (0 = standard) into one folder, resumable cell by cell,
//! then the comparison of all of them and its eps frontier (`figures/`).

use super::compare::CompareSettings;
use super::train::TrainOptions;
use super::{grid_out, GridCells};
use crate::config::{eps_from_224, layered, AdvConfig, Recipe, TrainConfig};
use crate::data::split::Part;
use crate::eval::compare::Comparison;
use crate::interrupt::Interrupt;
use crate::run::RunConfig;
use crate::train::{train, Stop};
use crate::{Error, Result};
use std::path::PathBuf;

/// The radii of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub enum EpsList {
    /// L2 radii at the working size.
    Working(Vec<f32>),
    /// Paper eps values at 224 px, converted to the working size.
    At224(Vec<f32>),
}

/// Options of `sweep-eps`.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// The training settings of every cell (its recipe is chosen per eps).
    pub train: TrainOptions,
    pub eps: EpsList,
    /// PGD steps of the training attack (the training preset: step eps/5, random start).
    pub train_attack_steps: usize,
    pub compare: CompareSettings,
    /// Train only this cell (its folder name, e.g. `eps-0.5`) and compare nothing: one task
    /// of a job array.
    pub cell: Option<String>,
    /// Train nothing: compare the cells that have finished and name the ones that have not.
    pub gather: bool,
}

/// The sweep's folder and its cells for a scheduler, their configurations checked (a sweep's
/// cells need no other cell first).
pub fn grid(opts: &SweepOptions) -> Result<(PathBuf, GridCells)> {
    let out = grid_out(opts.train.out.as_deref(), "sweep-eps", false)?;
    let cells = cells(opts)?;
    configs(opts, &cells)?;
    let grid = cells
        .into_iter()
        .map(|(n, _, _)| {
            let d = out.join(&n);
            (n, d, None)
        })
        .collect();
    Ok((out, grid))
}

/// The sweep's cells: (folder name, recipe, L2 eps at the working size).
pub fn cells(opts: &SweepOptions) -> Result<Vec<(String, Recipe, f32)>> {
    let size = || -> Result<usize> {
        Ok(layered(
            Recipe::TrainRobust,
            opts.train.preset,
            opts.train.config.as_deref(),
            &opts.train.overrides,
        )?
        .image_size)
    };
    let list: Vec<(String, f32)> = match &opts.eps {
        EpsList::Working(v) => v.iter().map(|&e| (format!("eps-{e}"), e)).collect(),
        EpsList::At224(v) => {
            let s = size()?;
            v.iter()
                .map(|&e| (format!("eps224-{e}"), eps_from_224(e, s)))
                .collect()
        }
    };
    if list.is_empty() {
        return Err(Error::config("eps", "", "give at least one value"));
    }
    list.into_iter()
        .map(|(name, e)| {
            if !(e.is_finite() && e >= 0.0) {
                return Err(Error::config(
                    "eps",
                    e,
                    "each eps must be a number >= 0 (0 = a standard model)",
                ));
            }
            let recipe = if e > 0.0 {
                Recipe::TrainRobust
            } else {
                Recipe::TrainStandard
            };
            Ok((name, recipe, e))
        })
        .collect()
}

/// Every cell's training configuration, checked.
fn configs(opts: &SweepOptions, cells: &[(String, Recipe, f32)]) -> Result<Vec<TrainConfig>> {
    let mut configs = Vec::new();
    for (_, recipe, eps) in cells {
        let mut cfg = layered(
            *recipe,
            opts.train.preset,
            opts.train.config.as_deref(),
            &opts.train.overrides,
        )?;
        if *eps > 0.0 {
            cfg.adversarial = Some(AdvConfig::preset(*eps, opts.train_attack_steps));
        }
        cfg.validate()?;
        configs.push(cfg);
    }
    Ok(configs)
}

/// Trains the missing cells (finished ones are kept, interrupted ones resumed), then compares
/// them all into the sweep folder. With [`SweepOptions::cell`] it trains that cell only and
/// returns `None`; with [`SweepOptions::gather`] it trains nothing and compares the finished
/// cells.
pub fn run(opts: &SweepOptions, interrupt: &Interrupt) -> Result<Option<Comparison>> {
    let cells = cells(opts)?;
    if let Some(only) = &opts.cell {
        if !cells.iter().any(|c| &c.0 == only) {
            let names: Vec<&str> = cells.iter().map(|c| c.0.as_str()).collect();
            return Err(Error::config(
                "cell",
                only,
                format!("this sweep's cells are {}", names.join(", ")),
            ));
        }
    }
    // Check every cell's configuration and the comparison's settings before any training.
    let configs = configs(opts, &cells)?;
    let copts = opts
        .compare
        .options(Some("run".into()), Part::Test, configs[0].seed)?;
    let device = configs[0].device;
    let whole = opts.cell.is_none() && !opts.gather;
    let out = grid_out(opts.train.out.as_deref(), "sweep-eps", whole)?;
    crate::fsutil::check_output_dir(&out)?;
    let mut runs = Vec::new();
    let mut missing = Vec::new();
    for ((name, _, eps), fresh) in cells.iter().zip(configs) {
        if opts.cell.as_ref().is_some_and(|c| c != name) {
            continue;
        }
        let dir = out.join(name);
        if opts.gather {
            if dir.join("summary.json").exists() {
                runs.push((name.clone(), dir));
            } else {
                missing.push(name.as_str());
            }
            continue;
        }
        runs.push((name.clone(), dir.clone()));
        if dir.join("summary.json").exists() {
            eprintln!("{name}: finished earlier, kept");
            continue;
        }
        let resume = dir.join("resume.safetensors").exists();
        let cfg = if resume {
            RunConfig::read(&dir)?.train
        } else {
            fresh
        };
        eprintln!(
            "{name}: {} (eps {eps} at {} px){}",
            cfg.recipe,
            cfg.image_size,
            if resume { ", resuming" } else { "" }
        );
        match train(&cfg, &dir, resume, interrupt)? {
            Stop::Interrupted => return Err(Error::Interrupted { resume: None }),
            Stop::Finished(s) => eprintln!("{name}: done in {:.0} s", s.seconds),
        }
    }
    if opts.cell.is_some() {
        return Ok(None);
    }
    if !missing.is_empty() {
        eprintln!(
            "gather: {} of {} cells have not finished and are left out: {}",
            missing.len(),
            cells.len(),
            missing.join(", ")
        );
    }
    if runs.is_empty() {
        return Err(Error::conflict(format!(
            "no cell of {} has finished: nothing to compare",
            out.display()
        )));
    }
    let cmp = super::compare::run(&runs, &copts, device, &out)?;
    let figures = out.join("figures");
    crate::fsutil::ensure_output_dir(&figures)?;
    for (stem, svg) in super::frontier::frontier_charts(&cmp) {
        crate::report::raster::write_chart(&figures, &stem, &svg)?;
    }
    eprintln!("eps frontier figures: {}", figures.display());
    Ok(Some(cmp))
}
