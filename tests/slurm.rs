//! `--scheduler slurm` on a real Slurm: a one-node cluster on localhost that
//! `tools/slurm-local.sh start DIR` brings up (`.ci/run` does, and sets `SLURM_CONF` and
//! `ROBUSTLENS_REQUIRE_SLURM=1`). A 3-cell sweep goes out as a job array; one task is cancelled
//! mid-run with `scancel` (SIGTERM: it checkpoints), `status` names it failed and resumable,
//! `status --resubmit` submits it again, and the gathered comparison is byte-identical to the
//! same sweep run here with `--scheduler local`. Without a cluster the test says so and passes,
//! unless `ROBUSTLENS_REQUIRE_SLURM=1`.

mod common;
use common::run_cli as run;
use std::process::Command;
use std::time::{Duration, Instant};

const SWEEP: &[&str] = &[
    "sweep-eps",
    "--eps",
    "0,0.3,0.6",
    "--image-size",
    "32",
    "--train-per-class",
    "60",
    "--val-per-class",
    "2",
    "--test-per-class",
    "3",
    "--batch-size",
    "6",
    "--head-epochs",
    "0",
    "--epochs",
    "1",
    "--train-attack-steps",
    "2",
    "--count",
    "6",
    "--bootstrap",
    "100",
];

fn slurm_up() -> Result<(), String> {
    let o = Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .map_err(|e| format!("sinfo: {e}"))?;
    let text = String::from_utf8_lossy(&o.stdout);
    if o.status.success() && (text.contains("idle") || text.contains("mix")) {
        Ok(())
    } else {
        Err(format!(
            "sinfo: {} {}",
            text.trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// The queue's `<job>_<task> <state>` lines of `job`.
fn queue(job: &str) -> String {
    let o = Command::new("squeue")
        .args(["-h", "-r", "-o", "%i %t", "-j", job])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn job_id(dir: &std::path::Path) -> String {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("slurm/jobs.json")).unwrap())
            .unwrap();
    m["arrays"][0]["job_id"].as_str().unwrap().to_string()
}

#[test]
fn a_sweep_as_a_job_array_survives_a_cancelled_task_and_matches_the_local_sweep() {
    if let Err(why) = slurm_up() {
        assert!(
            std::env::var_os("ROBUSTLENS_REQUIRE_SLURM").is_none(),
            "ROBUSTLENS_REQUIRE_SLURM is set but no Slurm answers: {why}"
        );
        eprintln!("skipped: no Slurm here ({why}); tools/slurm-local.sh starts one");
        return;
    }
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let (local, cluster) = (tmp.path().join("local"), tmp.path().join("on slurm"));
    let with = |out: &std::path::Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = SWEEP.iter().map(|s| s.to_string()).collect();
        v.extend(["--out".to_string(), out.to_string_lossy().into_owned()]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let call = |args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let (code, out, err) = run(&a);
        assert_eq!(code, 0, "{a:?}: {err}");
        (out, err)
    };
    call(with(&local, &[]));
    let (out, _) = call(with(
        &cluster,
        &[
            "--scheduler",
            "slurm",
            "--slurm-cpus",
            "1",
            "--slurm-time",
            "20:00",
        ],
    ));
    assert!(out.contains("submitted as job"), "{out}");
    let job = job_id(&cluster);
    // cancel task 1 once it has been training for a moment: scancel sends SIGTERM
    let task = format!("{job}_1 R");
    wait_until("task 1 to run", Duration::from_secs(300), || {
        queue(&job).contains(&task)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let st = Command::new("scancel")
        .arg(format!("{job}_1"))
        .status()
        .unwrap();
    assert!(st.success());
    wait_until("the array to end", Duration::from_secs(600), || {
        queue(&job).trim().is_empty()
    });
    let (status, _) = call(vec![
        "status".into(),
        cluster.to_string_lossy().into_owned(),
    ]);
    assert!(
        status.contains("eps-0.3  failed") && status.contains("resumes when resubmitted"),
        "{status}"
    );
    assert!(
        status.contains("--array=1 "),
        "the resubmit command: {status}"
    );
    assert!(cluster.join("eps-0.3/resume.safetensors").exists());
    // resubmit only the cancelled task; it continues from its checkpoint
    let (out, _) = call(vec![
        "status".into(),
        cluster.to_string_lossy().into_owned(),
        "--resubmit".into(),
    ]);
    assert!(
        out.contains("resubmitted array train tasks 1 as job"),
        "{out}"
    );
    let job2 = job_id(&cluster);
    assert_ne!(job, job2);
    wait_until("the resubmitted task", Duration::from_secs(600), || {
        queue(&job2).trim().is_empty()
    });
    let (status, _) = call(vec![
        "status".into(),
        cluster.to_string_lossy().into_owned(),
    ]);
    assert!(status.contains("3 cells: 3 finished"), "{status}");
    let log = std::fs::read_dir(cluster.join("slurm/logs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with("_1.out"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect::<String>();
    assert!(
        log.contains("resuming"),
        "the resubmitted task resumed: {log}"
    );
    let (_, err) = call(with(&cluster, &["--gather"]));
    assert!(!err.contains("left out"), "{err}");
    // the same bytes as the local sweep (the run folders' paths aside)
    for f in ["comparison.json", "comparison.csv", "comparison.md"] {
        let a = std::fs::read_to_string(local.join(f)).unwrap();
        let b = std::fs::read_to_string(cluster.join(f)).unwrap();
        let a = a.replace(&*local.to_string_lossy(), &cluster.to_string_lossy());
        assert!(a == b, "{f} differs between the local and the Slurm sweep");
    }
    eprintln!("slurm sweep test: {:.0} s", t0.elapsed().as_secs_f64());
}

#[test]
fn without_sbatch_the_submission_fails_clearly_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sweep");
    let mut c = common::cli();
    c.env("PATH", tmp.path().join("no-bin"));
    c.args(SWEEP)
        .args(["--out", out.to_str().unwrap(), "--scheduler", "slurm"]);
    let (code, _, err) = common::output(c);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot run sbatch") && err.contains("--dry-run"),
        "{err}"
    );
    assert!(!out.exists(), "a failed submission left {}", out.display());
    // --dry-run needs no Slurm: it writes the script and the manifest
    let mut c = common::cli();
    c.env("PATH", tmp.path().join("no-bin"));
    c.args(SWEEP).args([
        "--out",
        out.to_str().unwrap(),
        "--scheduler",
        "slurm",
        "--dry-run",
    ]);
    let (code, stdout, err) = common::output(c);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("not submitted (--dry-run)"), "{stdout}");
    let script = std::fs::read_to_string(out.join("slurm/train.sbatch")).unwrap();
    assert_eq!(script.matches("    exec ").count(), 3, "{script}");
    assert!(script.contains("--cell eps-0.3 ;;") && !script.contains("--scheduler"));
    // --cell and --gather run here
    let (code, _, err) = run(&[
        "sweep-eps",
        "--eps",
        "0,1",
        "--out",
        out.to_str().unwrap(),
        "--cell",
        "eps-9",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("eps-0, eps-1"), "the cells are named: {err}");
}
