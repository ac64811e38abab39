//! `cv`: k-fold cross-validation over learning rates x batch sizes ([`crate::train::cv`]).

use super::train::TrainOptions;
use crate::interrupt::Interrupt;
use crate::run::default_out;
use crate::train::cv::{cross_validate, table, CvResult};
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
}

/// Runs the grid into the output folder (resumable) and prints the table.
pub fn run(opts: &CvOptions, interrupt: &Interrupt) -> Result<CvResult> {
    let cfg = super::train::config(&opts.train)?;
    let out: PathBuf = opts.train.out.clone().unwrap_or_else(|| default_out("cv"));
    let r = cross_validate(
        &cfg,
        &opts.lrs,
        &opts.batch_sizes,
        opts.folds,
        &out,
        opts.final_train,
        interrupt,
    )?;
    print!("{}", table(&r));
    println!(
        "wrote {} and {}",
        out.join("cv.md").display(),
        out.join("cv.json").display()
    );
    Ok(r)
}
