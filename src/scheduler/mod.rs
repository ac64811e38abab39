//! Running a grid of runs (a sweep's eps, a benchmark's seeds and cells) on a cluster: each
//! cell an ordinary resumable run folder trained by its own command line, the grid submitted
//! as Slurm job arrays ([`slurm`]), and the state of every cell read back from its folder and
//! the scheduler ([`status`]).

pub mod slurm;

use std::path::PathBuf;

/// Where a grid's cells run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SchedulerKind {
    /// One cell after another in this process.
    #[default]
    Local,
    /// One Slurm job array task per cell, submitted with sbatch.
    Slurm,
}

/// One cell of a grid: its name (unique in the grid, e.g. `eps-0.5` or `seed-1/robust-eps2`),
/// its run folder, the cell it needs finished first (a fine-tuned cell's robust parent), and
/// the exact command line that trains it (program first).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cell {
    pub name: String,
    pub dir: PathBuf,
    #[serde(default)]
    pub after: Option<String>,
    pub command: Vec<String>,
}

/// Where a cell stands, from its folder and (when it was submitted) the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CellState {
    /// `summary.json` is there.
    Finished,
    /// Queued, not started.
    Pending,
    /// The scheduler runs it now.
    Running,
    /// It ran and stopped without finishing (killed, cancelled, out of time, an error); `resumable`
    /// when it left a checkpoint; `log`: the last lines of its log.
    Failed { resumable: bool, log: String },
    /// Never started.
    Missing,
}

impl CellState {
    /// A short word for tables.
    pub fn word(&self) -> &'static str {
        match self {
            CellState::Finished => "finished",
            CellState::Pending => "pending",
            CellState::Running => "running",
            CellState::Failed { .. } => "failed",
            CellState::Missing => "missing",
        }
    }
}

/// The flags that choose and shape the scheduler: the cells' own command lines leave them
/// out. (`--dry-run` takes no value; the others take one.)
const SCHEDULER_FLAGS: [&str; 7] = [
    "--scheduler",
    "--slurm-partition",
    "--slurm-time",
    "--slurm-gpus",
    "--slurm-cpus",
    "--slurm-mem",
    "--slurm-extra",
];

/// The command line that trains `cell`: `program` and the grid command's own arguments
/// `args` (without the program name), less the scheduler's flags, plus `--cell CELL`.
pub fn cell_command(program: &str, args: &[String], cell: &str) -> Vec<String> {
    let mut out = vec![program.to_string()];
    let mut skip = false;
    for a in args {
        if std::mem::take(&mut skip) {
            continue;
        }
        if a == "--dry-run" {
            continue;
        }
        if let Some(flag) = SCHEDULER_FLAGS.iter().find(|f| a.starts_with(*f)) {
            // `--flag value` or `--flag=value`
            skip = a.len() == flag.len();
            if a.len() == flag.len() || a.as_bytes().get(flag.len()) == Some(&b'=') {
                continue;
            }
        }
        out.push(a.clone());
    }
    out.push("--cell".into());
    out.push(cell.into());
    out
}

/// A status report as a table: cell, state, detail (the log's last lines of a failed cell,
/// indented), and a count per state.
pub fn status_table(rows: &[slurm::CellStatus], m: &slurm::Manifest) -> String {
    let w = rows
        .iter()
        .map(|r| r.2.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut s = format!("{:w$}  {:9}  detail\n", "cell", "state");
    for (ai, ti, c, st) in rows {
        let job = m.arrays[*ai]
            .job_id
            .as_ref()
            .map(|j| format!("job {j}_{ti}"))
            .unwrap_or_else(|| "not submitted".into());
        let detail = match st {
            CellState::Finished => c.dir.display().to_string(),
            CellState::Pending | CellState::Running => job,
            CellState::Failed { resumable, log } => {
                let mut d = if *resumable {
                    format!("{job}: stopped with a checkpoint, resumes when resubmitted")
                } else {
                    format!("{job}: stopped before its first checkpoint")
                };
                for l in log.lines() {
                    d.push_str(&format!("\n{:w$}  {:9}  | {l}", "", ""));
                }
                d
            }
            CellState::Missing => format!("{job}: never started"),
        };
        s.push_str(&format!("{:w$}  {:9}  {detail}\n", c.name, st.word()));
    }
    let count = |word: &str| rows.iter().filter(|r| r.3.word() == word).count();
    s.push_str(&format!(
        "{} cells: {} finished, {} pending, {} running, {} failed, {} missing\n",
        rows.len(),
        count("finished"),
        count("pending"),
        count("running"),
        count("failed"),
        count("missing")
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cells_command_is_the_grids_less_the_scheduler() {
        let args: Vec<String> = [
            "sweep-eps",
            "--scheduler",
            "slurm",
            "--out",
            "my sweep",
            "--slurm-time=1:00:00",
            "--eps",
            "0,0.5",
            "--dry-run",
            "--slurm-cpus",
            "4",
            "--slurm-extrafoo",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            cell_command("/bin/robustlens", &args, "eps-0.5"),
            [
                "/bin/robustlens",
                "sweep-eps",
                "--out",
                "my sweep",
                "--eps",
                "0,0.5",
                "--slurm-extrafoo",
                "--cell",
                "eps-0.5"
            ]
        );
    }
}
