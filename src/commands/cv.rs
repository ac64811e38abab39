//! `cv`: k-fold cross-validation over learning rates x batch sizes ([`crate::train::cv`]).

use super::train::TrainOptions;
use super::{grid_out, GridCells};
use crate::interrupt::Interrupt;
use crate::train::cv::{cross_validate, table, CvPart, CvResult};
use crate::Result;
use std::path::PathBuf;

/// Options of `cv`.
#[derive(Debug, Clone)]
pub struct CvOptions {
    /// Everything but the learning rate and batch size (standard training).
    pub train: TrainOptions,
    pub lrs: Vec<f64>,
    pub batch_sizes: Vec<usize>,
    pub folds: usize,
    /// Then train on all training data with the best cell (into OUT/final).
    pub final_train: bool,
    /// All of the grid, one cell of it (a task of a job array), or a gather of what finished.
    pub part: CvPart,
}

/// The grid's folder and its cells for a scheduler (the final training after the folds).
pub fn grid(opts: &CvOptions) -> Result<(PathBuf, GridCells)> {
    super::train::config(&opts.train)?;
    let out = grid_out(opts.train.out.as_deref(), "cv", false)?;
    let cells = crate::train::cv::cells(
        &opts.lrs,
        &opts.batch_sizes,
        opts.folds,
        &out,
        opts.final_train,
    );
    Ok((out, cells))
}

/// Runs the grid into the output folder (resumable) and prints the table.
pub fn run(opts: &CvOptions, interrupt: &Interrupt) -> Result<Option<CvResult>> {
    let cfg = super::train::config(&opts.train)?;
    let out = grid_out(opts.train.out.as_deref(), "cv", opts.part == CvPart::All)?;
    let Some(r) = cross_validate(
        &cfg,
        &opts.lrs,
        &opts.batch_sizes,
        opts.folds,
        &out,
        opts.final_train,
        &opts.part,
        interrupt,
    )?
    else {
        return Ok(None);
    };
    print!("{}", table(&r));
    println!(
        "wrote {} and {}",
        out.join("cv.md").display(),
        out.join("cv.json").display()
    );
    Ok(Some(r))
}
