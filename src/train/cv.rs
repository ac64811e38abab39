//! k-fold cross-validation over a grid of learning rates and batch sizes (the paper chose its
//! hyper-parameters this way): for each cell and fold, train on the other folds and validate
//! on this one; report mean ± std accuracy per cell and name the best; optionally train the
//! final model on all training data with the best cell.

use crate::config::TrainConfig;
use crate::data::split::Part;
use crate::fsutil::{write_atomic, write_json_atomic};
use crate::interrupt::Interrupt;
use crate::run::open_data_with_folds;
use crate::train::trainer::{train, Stop};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One grid cell's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CvCell {
    pub lr: f64,
    pub batch_size: usize,
    pub fold_accuracy: Vec<f64>,
    pub mean: f64,
    pub std: f64,
}

/// The whole cross-validation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CvResult {
    pub folds: usize,
    pub cells: Vec<CvCell>,
    pub best: usize,
    pub final_run: Option<PathBuf>,
}

fn best_val_acc(dir: &Path) -> Result<f64> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .map_err(|e| Error::io(dir.join("metrics.jsonl"), e))?;
    let mut best: Option<(f64, f64)> = None;
    for l in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(l).map_err(|e| Error::training(format!("metrics.jsonl: {e}")))?;
        if let (Some(loss), Some(acc)) = (v["val_loss"].as_f64(), v["val_acc"].as_f64()) {
            if best.is_none_or(|b| loss < b.0) {
                best = Some((loss, acc));
            }
        }
    }
    best.map(|b| b.1)
        .ok_or_else(|| Error::training(format!("{}: no validation epochs", dir.display())))
}

/// The grid's cells for a scheduler, in order: (name, run folder, the cell it needs first).
/// A fold is `lr<LR>-bs<B>/fold<K>`; the final training (`final`) needs every fold.
pub fn cells(
    lrs: &[f64],
    batch_sizes: &[usize],
    folds: usize,
    out: &Path,
    final_train: bool,
) -> Vec<(String, std::path::PathBuf, Option<String>)> {
    let mut v = Vec::new();
    for &lr in lrs {
        for &bs in batch_sizes {
            for k in 1..=folds {
                let name = format!("lr{lr}-bs{bs}/fold{k}");
                v.push((name.clone(), out.join(&name), None));
            }
        }
    }
    if final_train {
        let last = v.last().map(|c| c.0.clone());
        v.push(("final".into(), out.join("final"), last));
    }
    v
}

/// Which part of the grid [`cross_validate`] does.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum CvPart {
    /// Every fold, then the table (and the final training).
    #[default]
    All,
    /// One cell of [`cells`] only (a fold: no table, `None` back; `final`: the table from the
    /// finished folds, then the final training).
    Cell(String),
    /// Train nothing: the table of the grid cells whose folds have all finished (the others
    /// named and left out).
    Gather,
}

/// Runs the grid. `cfg` gives everything but lr and batch size.
#[allow(clippy::too_many_arguments)]
pub fn cross_validate(
    cfg: &TrainConfig,
    lrs: &[f64],
    batch_sizes: &[usize],
    folds: usize,
    out: &Path,
    final_train: bool,
    part: &CvPart,
    interrupt: &Interrupt,
) -> Result<Option<CvResult>> {
    if folds < 2 {
        return Err(Error::config(
            "folds",
            folds,
            "cross-validation needs at least 2 folds",
        ));
    }
    if lrs.is_empty() || batch_sizes.is_empty() {
        return Err(Error::conflict(
            "cross-validation needs at least one learning rate (lrs) and one batch size (batch-sizes)",
        ));
    }
    let mut base = cfg.clone();
    base.data.val_per_class = 0;
    // One grid cell's configuration (its split is set per fold).
    let cell = |lr: f64, batch_size: usize| {
        let mut c = base.clone();
        c.main.lr = lr;
        c.main.batch_size = batch_size;
        c
    };
    for &lr in lrs {
        for &bs in batch_sizes {
            cell(lr, bs).validate()?;
        }
    }
    if let CvPart::Cell(name) = part {
        let names = cells(lrs, batch_sizes, folds, out, final_train);
        if !names.iter().any(|c| &c.0 == name) {
            return Err(Error::config(
                "cell",
                name,
                format!(
                    "this grid's cells are lr<LR>-bs<B>/fold<K> for its lrs, batch sizes and \
                     folds{}, e.g. {}",
                    if final_train { ", and final" } else { "" },
                    names[0].0
                ),
            ));
        }
    }
    if *part == CvPart::Gather && !out.join("split.csv").exists() {
        return Err(Error::conflict(format!(
            "{}: no cross-validation grid here to gather (no split.csv)",
            out.display()
        )));
    }
    let (_, split) = open_data_with_folds(&base, folds)?;
    if split
        .rows
        .iter()
        .any(|r| r.part == Part::Train && r.fold.is_none())
    {
        return Err(Error::data(
            "cv: the split's training rows need a fold (make it with `data split --folds K`)",
        ));
    }
    crate::fsutil::ensure_output_dir(out)?;
    split.write(&out.join("split.csv"))?;
    let mut cells = Vec::new();
    let mut missing = Vec::new();
    for &lr in lrs {
        for &bs in batch_sizes {
            let mut accs = Vec::new();
            for k in 1..=folds {
                let name = format!("lr{lr}-bs{bs}/fold{k}");
                let wanted = match part {
                    CvPart::All => true,
                    CvPart::Cell(c) => c == &name,
                    CvPart::Gather => false,
                };
                let mut fs = split.clone();
                for r in fs.rows.iter_mut() {
                    if r.part == Part::Train && r.fold == Some(k) {
                        r.part = Part::Val;
                    }
                }
                let dir = out.join(format!("lr{lr}-bs{bs}")).join(format!("fold{k}"));
                crate::fsutil::ensure_output_dir(&dir)?;
                let split_path = dir.join("cv-split.csv");
                fs.write(&split_path)?;
                let mut c = cell(lr, bs);
                c.data.split = Some(split_path);
                let resume =
                    dir.join("resume.safetensors").exists() && !dir.join("summary.json").exists();
                if wanted && !dir.join("summary.json").exists() {
                    if let Stop::Interrupted = train(&c, &dir, resume, interrupt)? {
                        return Err(Error::Interrupted { resume: None });
                    }
                }
                if !dir.join("summary.json").exists() {
                    missing.push(name);
                    continue;
                }
                let acc = best_val_acc(&dir)?;
                eprintln!(
                    "cv: lr {lr} batch {bs} fold {k}: validation accuracy {:.2}%",
                    100.0 * acc
                );
                accs.push(acc);
            }
            if accs.len() < folds {
                continue;
            }
            let mean = accs.iter().sum::<f64>() / accs.len() as f64;
            let std = (accs.iter().map(|a| (a - mean).powi(2)).sum::<f64>()
                / (accs.len().max(2) - 1) as f64)
                .sqrt();
            cells.push(CvCell {
                lr,
                batch_size: bs,
                fold_accuracy: accs,
                mean,
                std,
            });
        }
    }
    if matches!(part, CvPart::Cell(c) if c != "final") {
        return Ok(None);
    }
    if matches!(part, CvPart::Cell(_)) && !missing.is_empty() {
        return Err(Error::conflict(format!(
            "the final training needs every fold finished; not yet: {}",
            missing.join(", ")
        )));
    }
    if !missing.is_empty() {
        eprintln!(
            "cv: {} folds have not finished; their grid cells are left out: {}",
            missing.len(),
            missing.join(", ")
        );
    }
    if cells.is_empty() {
        return Err(Error::conflict(format!(
            "no grid cell of {} has all its folds finished: nothing to tabulate",
            out.display()
        )));
    }
    let best = (0..cells.len())
        .max_by(|&a, &b| {
            cells[a]
                .mean
                .partial_cmp(&cells[b].mean)
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .expect("non-empty grid");
    let mut result = CvResult {
        folds,
        cells,
        best,
        final_run: None,
    };
    write_atomic(&out.join("cv.md"), table(&result).as_bytes())?;
    let train_final = match part {
        CvPart::Gather => false,
        CvPart::All => true,
        CvPart::Cell(c) => c == "final",
    };
    if final_train && missing.is_empty() {
        let dir = out.join("final");
        let mut c = cell(result.cells[best].lr, result.cells[best].batch_size);
        c.data.split = Some(out.join("split.csv"));
        if train_final && !dir.join("summary.json").exists() {
            if let Stop::Interrupted =
                train(&c, &dir, dir.join("resume.safetensors").exists(), interrupt)?
            {
                return Err(Error::Interrupted { resume: None });
            }
        }
        if dir.join("summary.json").exists() {
            result.final_run = Some(dir);
        }
    }
    write_json_atomic(&out.join("cv.json"), &result)?;
    Ok(Some(result))
}

/// A Markdown table of mean ± std accuracy per cell, rows lr, columns batch size.
pub fn table(r: &CvResult) -> String {
    let mut bss: Vec<usize> = r.cells.iter().map(|c| c.batch_size).collect();
    bss.dedup();
    bss.sort();
    bss.dedup();
    let mut lrs: Vec<f64> = Vec::new();
    for c in &r.cells {
        if !lrs.contains(&c.lr) {
            lrs.push(c.lr);
        }
    }
    let mut s = format!(
        "| lr \\ batch | {} |\n|---|{}\n",
        bss.iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(bss.len())
    );
    for lr in &lrs {
        s.push_str(&format!("| {lr} |"));
        for b in &bss {
            match r
                .cells
                .iter()
                .position(|c| c.lr == *lr && c.batch_size == *b)
            {
                Some(i) => {
                    let c = &r.cells[i];
                    let mark = if i == r.best { " **best**" } else { "" };
                    s.push_str(&format!(
                        " {:.2} ± {:.2}%{mark} |",
                        100.0 * c.mean,
                        100.0 * c.std
                    ));
                }
                None => s.push_str(" - |"),
            }
        }
        s.push('\n');
    }
    let b = &r.cells[r.best];
    s.push_str(&format!(
        "\nbest: lr {} batch {} ({:.2}% mean validation accuracy over {} folds)\n",
        b.lr,
        b.batch_size,
        100.0 * b.mean,
        r.folds
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_is_lr_by_batch_by_fold_and_the_final_training_needs_the_folds() {
        let c = cells(&[1e-3, 1e-4], &[8], 2, Path::new("cv"), true);
        let names: Vec<&str> = c.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "lr0.001-bs8/fold1",
                "lr0.001-bs8/fold2",
                "lr0.0001-bs8/fold1",
                "lr0.0001-bs8/fold2",
                "final"
            ]
        );
        assert_eq!(c[1].1, Path::new("cv/lr0.001-bs8/fold2"));
        assert!(c[..4].iter().all(|c| c.2.is_none()));
        assert!(c[4].2.is_some(), "final waits for the folds");
        assert_eq!(cells(&[1e-3], &[8], 2, Path::new("cv"), false).len(), 2);
    }
}
