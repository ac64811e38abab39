//! A grid as Slurm job arrays: one sbatch script per array (one task per cell, each task the
//! cell's exact command line), submitted with `sbatch`, recorded in `DIR/slurm/jobs.json`.
//! Cells that need another cell (fine-tuning needs its robust parent) go into a second array
//! that starts `afterok` the first. Every task is an ordinary resumable run: SIGTERM (from
//! `scancel`, preemption, or `--signal` before the time limit) checkpoints and stops it, and a
//! resubmitted task continues from the checkpoint.

use super::{Cell, CellState};
use crate::fsutil::{ensure_output_dir, write_atomic, write_json_atomic};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Resources and switches of the generated scripts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    /// `--time` (e.g. `2:00:00`).
    pub time: Option<String>,
    /// GPUs per task (`--gpus`); a CUDA build picks them with `--device auto`.
    pub gpus: Option<u32>,
    /// CPUs per task (`--cpus-per-task`); the task's thread pools use as many.
    pub cpus: Option<u32>,
    /// Memory per task (`--mem`, e.g. `8G`).
    pub mem: Option<String>,
    /// Extra `#SBATCH` lines, as read by [`extra_lines`].
    pub extra: Vec<String>,
    /// Write the scripts and the manifest, submit nothing.
    pub dry_run: bool,
}

/// The `#SBATCH` lines of `path` (blank lines and `#` comments skipped); any other line is an
/// error that names the file and the line.
pub fn extra_lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || (l.starts_with('#') && !l.starts_with("#SBATCH")) {
            continue;
        }
        if !l.starts_with("#SBATCH ") {
            return Err(Error::config(
                format!("{}: line {}", path.display(), i + 1),
                l,
                "each line must be an `#SBATCH --option` line (or a comment)",
            ));
        }
        out.push(l.to_string());
    }
    Ok(out)
}

/// `s` as one shell word: as it is when it has only safe characters, else in single quotes.
pub fn quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=,+@%".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// One job array: its cells in task order and the array it waits for.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Array {
    /// `train`, or `after-train` for the cells that need a cell of it.
    pub name: String,
    pub script: PathBuf,
    /// The Slurm job id, once submitted.
    #[serde(default)]
    pub job_id: Option<String>,
    /// The jobs of earlier submissions of this array's tasks (before a resubmission): their
    /// tasks may still be queued or running.
    #[serde(default)]
    pub earlier_jobs: Vec<String>,
    /// The index of the array this one starts after (`afterok`).
    #[serde(default)]
    pub after: Option<usize>,
    pub cells: Vec<Cell>,
}

/// What was submitted: `DIR/slurm/jobs.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// The command that made the grid (`sweep-eps`, `benchmark`).
    pub job: String,
    /// The folder the tasks run in (`--chdir`): relative paths in the commands are from it.
    pub workdir: PathBuf,
    pub arrays: Vec<Array>,
}

/// `DIR/slurm`.
pub fn slurm_dir(out: &Path) -> PathBuf {
    out.join("slurm")
}

fn manifest_path(out: &Path) -> PathBuf {
    slurm_dir(out).join("jobs.json")
}

/// The cells split into arrays: those that need no other cell first, then those that do.
pub fn plan(out: &Path, job: &str, cells: &[Cell], workdir: &Path) -> Manifest {
    let dir = slurm_dir(out);
    let (first, second): (Vec<Cell>, Vec<Cell>) =
        cells.iter().cloned().partition(|c| c.after.is_none());
    let mut arrays = vec![Array {
        name: "train".into(),
        script: dir.join("train.sbatch"),
        job_id: None,
        earlier_jobs: Vec::new(),
        after: None,
        cells: first,
    }];
    if !second.is_empty() {
        arrays.push(Array {
            name: "after-train".into(),
            script: dir.join("after-train.sbatch"),
            job_id: None,
            earlier_jobs: Vec::new(),
            after: Some(0),
            cells: second,
        });
    }
    arrays.retain(|a| !a.cells.is_empty());
    Manifest {
        job: job.to_string(),
        workdir: workdir.to_path_buf(),
        arrays,
    }
}

/// The sbatch script of `array` (one task per cell, in order).
pub fn script(m: &Manifest, array: &Array, opts: &SlurmOptions, logs: &Path) -> String {
    let mut s = String::from("#!/bin/bash\n");
    s.push_str(&format!(
        "# Written by robustlens ({}): one array task per cell, each an ordinary resumable\n\
         # run. Resubmit tasks with `sbatch --array=N,M THIS_FILE`: a task continues from its\n\
         # checkpoint; a finished cell exits at once. `robustlens status DIR` shows them all.\n",
        m.job
    ));
    let mut sb = |k: &str, v: &str| s.push_str(&format!("#SBATCH --{k}={}\n", quote(v)));
    sb("job-name", &format!("robustlens-{}-{}", m.job, array.name));
    sb(
        "array",
        &format!("0-{}", array.cells.len().saturating_sub(1)),
    );
    sb("chdir", &m.workdir.to_string_lossy());
    sb(
        "output",
        &logs
            .join(format!("{}-%A_%a.out", array.name))
            .to_string_lossy(),
    );
    sb("open-mode", "append");
    // SIGTERM two minutes before the time limit: the run checkpoints and stops
    sb("signal", "B:TERM@120");
    if let Some(v) = &opts.partition {
        sb("partition", v);
    }
    if let Some(v) = &opts.time {
        sb("time", v);
    }
    if let Some(v) = opts.gpus {
        sb("gpus", &v.to_string());
    }
    if let Some(v) = opts.cpus {
        sb("cpus-per-task", &v.to_string());
    }
    if let Some(v) = &opts.mem {
        sb("mem", v);
    }
    s.push_str("#SBATCH --requeue\n");
    for l in &opts.extra {
        s.push_str(l);
        s.push('\n');
    }
    s.push_str("set -euo pipefail\n");
    if opts.cpus.is_some() {
        s.push_str("export RAYON_NUM_THREADS=\"$SLURM_CPUS_PER_TASK\"\n");
    }
    s.push_str("case \"$SLURM_ARRAY_TASK_ID\" in\n");
    for (i, c) in array.cells.iter().enumerate() {
        let cmd: Vec<String> = c.command.iter().map(|w| quote(w)).collect();
        s.push_str(&format!(
            "  {i}) # {}\n    exec {} ;;\n",
            c.name.replace('\n', " "),
            cmd.join(" ")
        ));
    }
    s.push_str(
        "  *) echo \"robustlens: no cell for array task $SLURM_ARRAY_TASK_ID\" >&2; exit 2 ;;\nesac\n",
    );
    s
}

/// `sbatch --parsable ARGS`: the job id.
fn sbatch(args: &[String]) -> Result<String> {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .args(args)
        .output()
        .map_err(|e| {
            Error::scheduler(format!(
                "cannot run sbatch ({e}): is Slurm installed here? --dry-run writes the scripts \
                 without submitting them"
            ))
        })?;
    if !out.status.success() {
        return Err(Error::scheduler(format!(
            "sbatch {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(Error::scheduler(format!(
            "sbatch printed no job id: {text:?}"
        )));
    }
    Ok(id)
}

/// Writes the scripts and `jobs.json` into `OUT/slurm/` and submits the arrays in order (the
/// second `afterok` the first), unless `opts.dry_run`. The manifest is written before the
/// first submission and after each, so a failed `sbatch` leaves what was submitted on record.
pub fn submit(out: &Path, mut m: Manifest, opts: &SlurmOptions) -> Result<Manifest> {
    let dir = slurm_dir(out);
    let (had_out, had_dir) = (out.exists(), dir.exists());
    let logs = dir.join("logs");
    ensure_output_dir(&logs)?;
    for a in &m.arrays {
        write_atomic(&a.script, script(&m, a, opts, &logs).as_bytes())?;
    }
    write_json_atomic(&manifest_path(out), &m)?;
    if opts.dry_run {
        return Ok(m);
    }
    for i in 0..m.arrays.len() {
        let mut args = Vec::new();
        if let Some(j) = m.arrays[i].after {
            let id = m.arrays[j]
                .job_id
                .clone()
                .ok_or_else(|| Error::internal("the array waited for has no job id"))?;
            args.push(format!("--dependency=afterok:{id}"));
        }
        args.push(m.arrays[i].script.to_string_lossy().into_owned());
        match sbatch(&args) {
            Ok(id) => m.arrays[i].job_id = Some(id),
            Err(e) => {
                if i == 0 {
                    // nothing was submitted: leave nothing behind
                    if !had_dir {
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                    if !had_out {
                        let _ = std::fs::remove_dir(out);
                    }
                }
                return Err(e);
            }
        }
        write_json_atomic(&manifest_path(out), &m)?;
    }
    Ok(m)
}

/// Submits the grid command `args` (its arguments, without the program) as arrays: one task
/// per `(name, dir, after)` cell, running `program args... --cell NAME` less the scheduler's
/// flags, in the current folder.
pub fn submit_grid(
    out: &Path,
    job: &str,
    grid: &[(String, PathBuf, Option<String>)],
    program: &str,
    args: &[String],
    opts: &SlurmOptions,
) -> Result<Manifest> {
    let workdir = std::env::current_dir().map_err(|e| Error::io(".", e))?;
    let cells: Vec<Cell> = grid
        .iter()
        .map(|(name, dir, after)| Cell {
            name: name.clone(),
            dir: dir.clone(),
            after: after.clone(),
            command: super::cell_command(program, args, name),
        })
        .collect();
    // the scripts, logs and manifest by absolute paths: `status` and a resubmission work
    // from any folder (the cells' own commands keep the paths as given, from `--chdir`)
    let out = workdir.join(out);
    submit(&out, plan(&out, job, &cells, &workdir), opts)
}

/// The manifest of `out` (an error that says what to do when there is none).
pub fn read_manifest(out: &Path) -> Result<Manifest> {
    let p = manifest_path(out);
    let text = std::fs::read_to_string(&p).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::scheduler(format!(
                "{}: no slurm/jobs.json here: give the folder of a grid submitted with \
                 --scheduler slurm (its --out)",
                out.display()
            ))
        } else {
            Error::io(&p, e)
        }
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Json {
        path: p,
        msg: e.to_string(),
    })
}

/// The queue's view of the manifest's jobs: `"<job>_<task>"` → Slurm's short state (`PD`,
/// `R`, `CG`, ...). Empty when `squeue` is missing or knows none of them.
fn queue(m: &Manifest) -> BTreeMap<String, String> {
    let ids: Vec<&str> = m
        .arrays
        .iter()
        .flat_map(|a| a.job_id.iter().chain(&a.earlier_jobs))
        .map(|s| s.as_str())
        .collect();
    if ids.is_empty() {
        return BTreeMap::new();
    }
    let out = Command::new("squeue")
        .args(["-h", "-r", "-o", "%i %t", "-j", &ids.join(",")])
        .output();
    let Ok(out) = out else {
        return BTreeMap::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (id, st) = l.trim().split_once(' ')?;
            Some((id.to_string(), st.trim().to_string()))
        })
        .collect()
}

/// The newest log of task `task` of `array` (any submission), if one exists.
fn newest_log(logs: &Path, array: &str, task: usize) -> Option<PathBuf> {
    let suffix = format!("_{task}.out");
    let prefix = format!("{array}-");
    std::fs::read_dir(logs)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&prefix) && n.ends_with(&suffix)
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One cell's state in a [`status`] report: array index, task index, the cell, its state.
pub type CellStatus = (usize, usize, Cell, CellState);

/// The state of every cell of the grid in `out`: its folder first (`summary.json`: finished),
/// then the queue (pending, running), then its log (it ran and did not finish: failed) .
pub fn status(out: &Path) -> Result<(Manifest, Vec<CellStatus>)> {
    let m = read_manifest(out)?;
    let q = queue(&m);
    let logs = slurm_dir(out).join("logs");
    let mut rows = Vec::new();
    for (ai, a) in m.arrays.iter().enumerate() {
        for (ti, c) in a.cells.iter().enumerate() {
            let dir = m.workdir.join(&c.dir);
            let queued = a
                .job_id
                .iter()
                .chain(&a.earlier_jobs)
                .find_map(|id| q.get(&format!("{id}_{ti}")));
            let state = if dir.join("summary.json").exists() {
                CellState::Finished
            } else if let Some(st) = queued {
                match st.as_str() {
                    "PD" | "CF" | "RQ" | "RF" | "RS" | "RH" | "S" => CellState::Pending,
                    _ => CellState::Running,
                }
            } else if let Some(log) = newest_log(&logs, &a.name, ti) {
                CellState::Failed {
                    resumable: dir.join("resume.safetensors").exists(),
                    log: tail(&log, 5),
                }
            } else if dir.join("resume.safetensors").exists() {
                CellState::Failed {
                    resumable: true,
                    log: String::new(),
                }
            } else {
                CellState::Missing
            };
            rows.push((ai, ti, c.clone(), state));
        }
    }
    Ok((m, rows))
}

/// The tasks of array `ai` that have failed or never started: the ones to submit again.
fn to_redo(rows: &[CellStatus], ai: usize) -> Vec<usize> {
    rows.iter()
        .filter(|r| r.0 == ai)
        .filter(|r| matches!(r.3, CellState::Failed { .. } | CellState::Missing))
        .map(|r| r.1)
        .collect()
}

/// `--array=`'s list of `tasks`.
fn array_list(tasks: &[usize]) -> String {
    tasks
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The shell commands that resubmit only the failed and missing cells (the second array after
/// the resubmitted part of the first, when both have some): empty when there are none.
pub fn resubmit_commands(m: &Manifest, rows: &[CellStatus]) -> Vec<String> {
    let mut cmds = Vec::new();
    let mut var_of = BTreeMap::new();
    for (ai, a) in m.arrays.iter().enumerate() {
        let tasks = to_redo(rows, ai);
        if tasks.is_empty() {
            continue;
        }
        let list = array_list(&tasks);
        let dep = a
            .after
            .and_then(|j| var_of.get(&j))
            .map(|v: &String| format!(" --dependency=afterok:${v}"))
            .unwrap_or_default();
        let script = quote(&a.script.to_string_lossy());
        let var = format!("JOB{ai}");
        cmds.push(format!(
            "{var}=$(sbatch --parsable --array={list}{dep} {script})"
        ));
        var_of.insert(ai, var);
    }
    cmds
}

/// Runs [`resubmit_commands`]' submissions and records the new job ids in the manifest.
pub fn resubmit(out: &Path) -> Result<Vec<String>> {
    let (mut m, rows) = status(out)?;
    let mut new_ids: BTreeMap<usize, String> = BTreeMap::new();
    let mut done = Vec::new();
    for ai in 0..m.arrays.len() {
        let tasks = to_redo(&rows, ai);
        if tasks.is_empty() {
            continue;
        }
        let list = array_list(&tasks);
        let mut args = vec![format!("--array={list}")];
        if let Some(id) = m.arrays[ai].after.and_then(|j| new_ids.get(&j)) {
            args.push(format!("--dependency=afterok:{id}"));
        }
        args.push(m.arrays[ai].script.to_string_lossy().into_owned());
        let id = sbatch(&args)?;
        done.push(format!(
            "array {} tasks {list} as job {id}",
            m.arrays[ai].name
        ));
        new_ids.insert(ai, id.clone());
        if let Some(old) = m.arrays[ai].job_id.replace(id) {
            m.arrays[ai].earlier_jobs.push(old);
        }
        write_json_atomic(&manifest_path(out), &m)?;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(name: &str, after: Option<&str>) -> Cell {
        Cell {
            name: name.into(),
            dir: PathBuf::from("my sweep").join(name),
            after: after.map(String::from),
            command: vec![
                "/opt/robust lens/robustlens".into(),
                "sweep-eps".into(),
                "--out".into(),
                "my sweep".into(),
                "--cell".into(),
                name.into(),
            ],
        }
    }

    #[test]
    fn words_are_quoted_only_when_needed() {
        assert_eq!(quote("--eps=0.5,1"), "--eps=0.5,1");
        assert_eq!(quote("my sweep"), "'my sweep'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("$HOME"), "'$HOME'");
    }

    #[test]
    fn the_script_runs_each_cell_by_its_exact_command() {
        let cells = [cell("eps-0", None), cell("eps-0.5", None)];
        let m = plan(
            Path::new("my sweep"),
            "sweep-eps",
            &cells,
            Path::new("/work dir"),
        );
        assert_eq!(m.arrays.len(), 1);
        let opts = SlurmOptions {
            partition: Some("gpu".into()),
            time: Some("2:00:00".into()),
            gpus: Some(1),
            cpus: Some(8),
            mem: Some("16G".into()),
            extra: vec!["#SBATCH --account=lab".into()],
            dry_run: true,
        };
        let s = script(&m, &m.arrays[0], &opts, Path::new("my sweep/slurm/logs"));
        let expected = "\
#SBATCH --job-name=robustlens-sweep-eps-train
#SBATCH --array=0-1
#SBATCH --chdir='/work dir'
#SBATCH --output='my sweep/slurm/logs/train-%A_%a.out'
#SBATCH --open-mode=append
#SBATCH --signal=B:TERM@120
#SBATCH --partition=gpu
#SBATCH --time=2:00:00
#SBATCH --gpus=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=16G
#SBATCH --requeue
#SBATCH --account=lab
set -euo pipefail
export RAYON_NUM_THREADS=\"$SLURM_CPUS_PER_TASK\"
case \"$SLURM_ARRAY_TASK_ID\" in
  0) # eps-0
    exec '/opt/robust lens/robustlens' sweep-eps --out 'my sweep' --cell eps-0 ;;
  1) # eps-0.5
    exec '/opt/robust lens/robustlens' sweep-eps --out 'my sweep' --cell eps-0.5 ;;
  *) echo \"robustlens: no cell for array task $SLURM_ARRAY_TASK_ID\" >&2; exit 2 ;;
esac
";
        assert!(s.starts_with("#!/bin/bash\n# Written by robustlens (sweep-eps)"));
        assert!(s.ends_with(expected), "{s}");
    }

    #[test]
    fn cells_that_need_another_go_into_a_second_array_after_the_first() {
        let cells = [
            cell("seed-0/robust-eps8", None),
            cell("seed-0/finetune-3-5", Some("seed-0/robust-eps8")),
            cell("seed-1/robust-eps8", None),
        ];
        let m = plan(Path::new("bm"), "benchmark", &cells, Path::new("/w"));
        assert_eq!(m.arrays.len(), 2);
        assert_eq!(m.arrays[0].cells.len(), 2);
        assert_eq!(m.arrays[1].after, Some(0));
        assert_eq!(m.arrays[1].cells[0].name, "seed-0/finetune-3-5");
        // resubmission: task 1 of the first array and the fine-tuning, chained
        let rows: Vec<CellStatus> = vec![
            (0, 0, cells[0].clone(), CellState::Finished),
            (
                0,
                1,
                cells[2].clone(),
                CellState::Failed {
                    resumable: true,
                    log: String::new(),
                },
            ),
            (1, 0, cells[1].clone(), CellState::Missing),
        ];
        assert_eq!(
            resubmit_commands(&m, &rows),
            [
                "JOB0=$(sbatch --parsable --array=1 bm/slurm/train.sbatch)",
                "JOB1=$(sbatch --parsable --array=0 --dependency=afterok:$JOB0 bm/slurm/after-train.sbatch)",
            ]
        );
        let done: Vec<CellStatus> = rows
            .iter()
            .cloned()
            .map(|mut r| {
                r.3 = CellState::Finished;
                r
            })
            .collect();
        assert!(resubmit_commands(&m, &done).is_empty());
    }

    #[test]
    fn extra_lines_must_be_sbatch_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("extra.sbatch");
        std::fs::write(&p, "# site settings\n#SBATCH --qos=long\n\n").unwrap();
        assert_eq!(extra_lines(&p).unwrap(), ["#SBATCH --qos=long"]);
        std::fs::write(&p, "#SBATCH --qos=long\nmodule load cuda\n").unwrap();
        let e = extra_lines(&p).unwrap_err().to_string();
        assert!(
            e.contains("line 2") && e.contains("module load cuda"),
            "{e}"
        );
    }
}
