//! `--scheduler slurm` on the grid commands, and `status`.

use crate::args::{GridArgs, StatusArgs};
use anyhow::{bail, Context, Result};
use robustlens::commands::GridCells;
use robustlens::scheduler::{slurm, status_table, SchedulerKind};
use std::path::PathBuf;

/// With `--scheduler slurm`: submits the grid's cells (from `grid`: the grid's folder and its
/// cells) as job arrays, or writes them with `--dry-run`, and says what to do next;
/// `Ok(false)` with `--scheduler local`.
pub fn submit(
    job: &str,
    grid: impl FnOnce() -> robustlens::Result<(PathBuf, GridCells)>,
    a: &GridArgs,
) -> Result<bool> {
    if a.scheduler == SchedulerKind::Local {
        return Ok(false);
    }
    if a.cell.is_some() || a.gather {
        bail!("--cell and --gather run here: give them without --scheduler slurm");
    }
    let (out, cells) = grid()?;
    let out = out.as_path();
    let program = std::env::current_exe().context("the path of this program")?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let m = slurm::submit_grid(
        out,
        job,
        &cells,
        &program.to_string_lossy(),
        &args,
        &a.slurm()?,
    )?;
    for arr in &m.arrays {
        let state = match &arr.job_id {
            Some(id) => format!("submitted as job {id}"),
            None => "not submitted (--dry-run)".into(),
        };
        println!(
            "{}: {} cells, {}, {state}",
            arr.name,
            arr.cells.len(),
            arr.script.display()
        );
    }
    println!("watch it:  robustlens status {}", out.display());
    println!("then:      the same command with --gather instead of --scheduler slurm compares the finished cells");
    Ok(true)
}

/// `status DIR [--resubmit]`.
pub fn status(a: &StatusArgs) -> Result<()> {
    if a.resubmit {
        for line in slurm::resubmit(&a.dir)? {
            println!("resubmitted {line}");
        }
    }
    let (m, rows) = slurm::status(&a.dir)?;
    print!("{}", status_table(&rows, &m));
    let cmds = slurm::resubmit_commands(&m, &rows);
    if !cmds.is_empty() && !a.resubmit {
        println!("resubmit the failed and missing cells:");
        for c in cmds {
            println!("  {c}");
        }
        println!("or: robustlens status {} --resubmit", a.dir.display());
    }
    Ok(())
}
