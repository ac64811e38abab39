//! `cv`: k-fold cross-validation over learning rates x batch sizes ([`crate::train::cv`]).

use super::train::TrainOptions;
use crate::interrupt::Interrupt;
use crate::run::default_out;
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

/// The grid's cells for a scheduler: (name, run folder, the cell it needs first).
pub fn grid(opts: &CvOptions) -> Result<Vec<(String, PathBuf, Option<String>)>> {
    super::train::config(&opts.train)?;
    let out =
        opts.train.out.clone().ok_or_else(|| {
            crate::Error::conflict("cv on a scheduler needs its folder: give --out")
        })?;
    Ok(crate::train::cv::cells(
        &opts.lrs,
        &opts.batch_sizes,
        opts.folds,
        &out,
        opts.final_train,
    ))
}

/// Runs the grid into the output folder (resumable) and prints the table.
pub fn run(opts: &CvOptions, interrupt: &Interrupt) -> Result<Option<CvResult>> {
    let cfg = super::train::config(&opts.train)?;
    let out: PathBuf = match (&opts.train.out, &opts.part) {
        (Some(o), _) => o.clone(),
        (None, CvPart::All) => default_out("cv"),
        (None, _) => {
            return Err(crate::Error::conflict(
                "--cell and --gather work on an existing grid: give its folder with --out",
            ))
        }
    };
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
