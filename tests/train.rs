//! Training through the real binary with tiny settings: what each phase may change, fine-tuning
//! freezes, kill-and-resume equals an uninterrupted run, Ctrl-C, and argument errors.

mod common;
use candle_core::{Device, Tensor};
use common::bin;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};

const TINY: &[&str] = &[
    "--image-size",
    "32",
    "--train-per-class",
    "6",
    "--val-per-class",
    "2",
    "--test-per-class",
    "2",
    "--batch-size",
    "4",
    "--head-batch-size",
    "6",
    "--seed",
    "3",
    "--weights",
    "none",
];

use common::run_cli as run;

/// `train-standard` into `out` with `head` head epochs and `epochs` full ones, at [`TINY`].
fn standard<'a>(out: &'a Path, head: &'a str, epochs: &'a str) -> Vec<&'a str> {
    let mut args = vec![
        "train-standard",
        "--out",
        out.to_str().unwrap(),
        "--head-epochs",
        head,
        "--epochs",
        epochs,
    ];
    args.extend_from_slice(TINY);
    args
}

fn tensors(p: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.dims() == b.dims()
        && a.flatten_all()
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
            == b.flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
}

#[test]
fn head_phase_changes_only_fc_and_run_folder_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("std");
    let args = standard(&out, "1", "0");
    let (code, stdout, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("accuracy"), "{stdout}");
    let init = robustlens::model::ResNet18::new_random(3, 3, &Device::Cpu).unwrap();
    let init: HashMap<String, Tensor> = init.state_dict().unwrap().into_iter().collect();
    let trained = tensors(&out.join("model.safetensors"));
    for (name, t) in &init {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        let changed = !same(t, &trained[name]);
        assert_eq!(
            changed,
            name.starts_with("fc."),
            "{name} changed: {changed}"
        );
    }
    for f in [
        "model.safetensors",
        "last.safetensors",
        "config.json",
        "split.csv",
        "metrics.jsonl",
        "summary.json",
        "resume.safetensors",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!(summary["test"]["accuracy"].as_f64().is_some());
    // The saved config reproduces the run.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["train"]["data"]["train_per_class"], 6);
    assert_eq!(cfg["class_names"][1], "melanoma");

    // saliency on the run's own test split, with true labels as targets.
    let raw = dir.path().join("sal.npy");
    let (code, _, err) = run(&[
        "saliency",
        "--run",
        out.to_str().unwrap(),
        "--data",
        "run",
        "--count",
        "3",
        "--include-misclassified",
        "--target",
        "label",
        "--method",
        "gradient",
        "--raw-out",
        raw.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (shape, _) = common::read_npy(&raw);
    assert_eq!(shape, vec![3, 3, 32, 32]);
}

#[test]
fn cross_validation_over_a_grid() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cv");
    let mut args = vec![
        "cv",
        "--out",
        out.to_str().unwrap(),
        "--lrs",
        "1e-3,1e-4",
        "--batch-sizes",
        "4",
        "--folds",
        "2",
        "--head-epochs",
        "0",
        "--epochs",
        "1",
    ];
    args.extend_from_slice(TINY);
    let (code, stdout, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("best: lr"), "{stdout}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("cv.json")).unwrap()).unwrap();
    assert_eq!(r["cells"].as_array().unwrap().len(), 2);
    assert_eq!(r["cells"][0]["fold_accuracy"].as_array().unwrap().len(), 2);
    // Folds never share a lesion (each image is its own lesion here, so: no image in two folds).
    let split = std::fs::read_to_string(out.join("split.csv")).unwrap();
    let folds: Vec<&str> = split
        .lines()
        .skip(1)
        .filter(|l| l.contains(",train,"))
        .map(|l| l.rsplit(',').next().unwrap())
        .collect();
    assert!(folds.iter().all(|f| *f == "1" || *f == "2"), "{split}");
}

#[test]
fn kill_and_resume_equals_uninterrupted_and_finetune_freezes() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let common_args = |out: &Path| -> Vec<String> {
        let mut v: Vec<String> = [
            "train-standard",
            "--out",
            out.to_str().unwrap(),
            "--head-epochs",
            "1",
            "--epochs",
            "3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let tiny: Vec<String> = TINY.iter().map(|s| s.to_string()).collect();
        for (i, a) in tiny.iter().enumerate() {
            // 12 training images per class: three steps per epoch.
            v.push(if i > 0 && tiny[i - 1] == "--train-per-class" {
                "12".to_string()
            } else {
                a.clone()
            });
        }
        v
    };
    let args_a = common_args(&a);
    let (code, _, err) = run(&args_a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    // B: SIGKILL once the first full-phase epoch has been checkpointed, then resume.
    let args_b = common_args(&b);
    let mut child = Command::new(bin())
        .args(&args_b)
        .env(
            "ROBUSTLENS_CACHE",
            std::env::temp_dir().join("rl-test-cache"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let lines = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap_or_default();
        if lines.lines().filter(|l| l.contains("\"full\"")).count() >= 1 {
            break;
        }
        if let Ok(Some(_)) = child.try_wait() {
            panic!("run B finished before it could be killed");
        }
        assert!(t0.elapsed().as_secs() < 300, "run B made no progress");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Whatever was on disk is whole: the resume checkpoint parses.
    assert!(safetensors::SafeTensors::deserialize(
        &std::fs::read(b.join("resume.safetensors")).unwrap()
    )
    .is_ok());
    let (code, _, err) = run(&["train-standard", "--resume", b.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let ta = tensors(&a.join("last.safetensors"));
    let tb = tensors(&b.join("last.safetensors"));
    for (n, t) in &ta {
        assert!(
            same(t, &tb[n]),
            "{n} differs between the uninterrupted and the resumed run"
        );
    }

    // Fine-tune groups 3-5 of run A with frozen BN statistics: groups 1-2 bit-identical.
    let ft = dir.path().join("ft");
    let (code, _, err) = run(&[
        "finetune",
        "--from",
        a.to_str().unwrap(),
        "--groups",
        "3-5",
        "--freeze-bn-stats",
        "--epochs",
        "1",
        "--lr",
        "1e-3",
        "--out",
        ft.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let src = tensors(&a.join("model.safetensors"));
    let dst = tensors(&ft.join("last.safetensors"));
    let mut changed_layer3 = false;
    for (n, t) in &src {
        let g = robustlens::model::group_of(n);
        if g <= 2 {
            assert!(
                same(t, &dst[n]),
                "{n} (group {g}) changed during finetune --groups 3-5"
            );
        } else if n.starts_with("layer3") && n.ends_with("weight") && !same(t, &dst[n]) {
            changed_layer3 = true;
        }
    }
    assert!(changed_layer3, "layer3 did not train");
    // Resuming a folder of another command is refused.
    let (code, _, err) = run(&["train-robust", "--resume", ft.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("was made by `finetune`"), "{err}");
}

#[test]
fn ctrl_c_writes_a_checkpoint_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let args = standard(&out, "0", "50");
    let child = Command::new(bin())
        .args(&args)
        .env(
            "ROBUSTLENS_CACHE",
            std::env::temp_dir().join("rl-test-cache"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !out.join("metrics.jsonl").exists() {
        assert!(t0.elapsed().as_secs() < 300);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("--resume"), "{err}");
    assert!(out.join("resume.safetensors").exists());
}

/// The binary trains on one of rayon's threads, and the loader's producer augments on the
/// same pool: with one thread in the pool, waiting for a batch must let the producer's work
/// run there (a blocking wait would hang). The model comes out the same as with two threads.
#[test]
fn one_pool_thread_trains_like_two() {
    let dir = tempfile::tempdir().unwrap();
    let mut models = Vec::new();
    for threads in ["1", "2"] {
        let out = dir.path().join(format!("t{threads}"));
        let args = standard(&out, "1", "1");
        let mut child = common::cli()
            .args(&args)
            .env("RAYON_NUM_THREADS", threads)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if t0.elapsed().as_secs() > 300 {
                child.kill().unwrap();
                panic!("training on {threads} pool thread(s) did not finish in 300 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        assert!(status.success(), "{threads} thread(s): {status}");
        models.push(tensors(&out.join("model.safetensors")));
    }
    assert_eq!(models[0].len(), models[1].len());
    for (name, t) in &models[0] {
        assert!(
            same(t, &models[1][name]),
            "{name} depends on the thread count"
        );
    }
}

#[test]
fn bad_training_arguments_fail_before_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    let o = out.to_str().unwrap();
    for (extra, needle) in [
        (vec!["--lr", "0"], "--lr 0"),
        (vec!["--lr=-1e-3"], "--lr -0.001"),
        (vec!["--batch-size", "0"], "--batch-size 0"),
        (vec!["--image-size", "0"], "--image-size 0"),
        (vec!["--schedule", "cosine"], "--schedule cosine"),
        (vec!["--preset", "fast"], "--preset fast"),
    ] {
        let mut args = vec!["train-standard", "--out", o];
        args.extend(extra.iter());
        let (code, _, err) = run(&args);
        assert_eq!(code, 1, "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
        assert!(!err.contains("panicked"));
    }
    let (code, _, err) = run(&[
        "finetune",
        "--from",
        dir.path().to_str().unwrap(),
        "--groups",
        "3-5",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no model.safetensors"), "{err}");
    let (code, _, err) = run(&[
        "finetune",
        "--from",
        dir.path().to_str().unwrap(),
        "--groups",
        "0-7",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no model.safetensors") || err.contains("groups 0-7: groups are 1..5"),
        "{err}"
    );
    let (code, _, err) = run(&["train-robust", "--out", o, "--eps", "0"]);
    assert_eq!(code, 1);
    assert!(err.contains("--eps 0"), "{err}");
    let (code, _, err) = run(&["train-robust", "--out", o, "--eps", "NaN"]);
    assert_eq!(code, 1);
    assert!(err.contains("--eps NaN"), "{err}");
}
