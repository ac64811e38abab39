//! The fault catalogue (README "Faults and what is kept"), each row a test driving the real
//! binary with tiny settings: kills during training, attacks and checkpoint writes, a full
//! disk, hostile weights files, awkward images, bad arguments, a diverging loss, and
//! determinism. No output may ever contain "panicked".

mod common;
use common::{bin, formula_model};
use robustlens::model::{save_checkpoint, ModelConfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TINY: &[&str] = &[
    "--image-size",
    "32",
    "--train-per-class",
    "12",
    "--val-per-class",
    "2",
    "--test-per-class",
    "2",
    "--batch-size",
    "6",
    "--head-batch-size",
    "6",
    "--head-epochs",
    "1",
    "--seed",
    "5",
    "--weights",
    "none",
];

use common::cli as cmd;

use common::output;

use common::run_cli as run;

fn train_args(command: &str, out: &Path, epochs: &str) -> Vec<String> {
    let mut v: Vec<String> = [command, "--out", out.to_str().unwrap(), "--epochs", epochs]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(TINY.iter().map(|s| s.to_string()));
    v
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn assert_whole(p: &Path) {
    safetensors::SafeTensors::deserialize(&bytes(p))
        .unwrap_or_else(|e| panic!("{} is not a whole safetensors file: {e}", p.display()));
}

fn stale_temps(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".tmp-"))
        .collect()
}

/// Kills `args` once `metrics.jsonl` has `lines` full-phase lines, plus `delay_ms`.
fn kill_after(args: &[String], dir: &Path, lines: usize, delay_ms: u64) {
    let mut c = cmd();
    let mut child = c
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
        if text.lines().filter(|l| l.contains("\"full\"")).count() >= lines {
            break;
        }
        if let Ok(Some(_)) = child.try_wait() {
            panic!("the run finished before it could be killed");
        }
        assert!(t0.elapsed().as_secs() < 600, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(delay_ms));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn sigkill_during_an_attack_step_then_resume_equals_uninterrupted() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let robust = |out: &Path| {
        let mut v = train_args("train-robust", out, "2");
        v.extend(["--eps", "0.3", "--attack-steps", "3"].map(String::from));
        v
    };
    let (code, _, err) = run(&robust(&a).iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    // Seven of every eight passes of a PGD-3 step... most of the time is attack: kill a little
    // after the first full epoch ended, in the middle of the second epoch's attacks.
    kill_after(&robust(&b), &b, 1, 150);
    assert_whole(&b.join("resume.safetensors"));
    let (code, _, err) = run(&["train-robust", "--resume", b.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for f in ["model.safetensors", "last.safetensors"] {
        assert!(
            bytes(&a.join(f)) == bytes(&b.join(f)),
            "{f} differs after resume"
        );
    }
}

#[test]
fn sigkill_during_a_checkpoint_write_and_a_full_disk_keep_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let (code, _, err) = run(&train_args("train-standard", &a, "3")
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    // Die halfway through the second write of resume.safetensors.
    let mut c = cmd();
    c.args(train_args("train-standard", &b, "3")).env(
        "ROBUSTLENS_FAULT_INJECT",
        "abort-in-write:resume.safetensors:2",
    );
    let o = c.output().unwrap();
    assert!(!o.status.success());
    assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"));
    assert_whole(&b.join("resume.safetensors"));
    assert_eq!(
        stale_temps(&b).len(),
        1,
        "the half-written temp file is left"
    );
    let kept = bytes(&b.join("resume.safetensors"));

    // Disk full (a file-size limit between the model's and the resume file's size): the
    // resumed run stops with a clear error naming the file, and the checkpoint is untouched.
    let model_size = std::fs::metadata(a.join("model.safetensors"))
        .unwrap()
        .len();
    // a full-phase resume file: weights and two Adam moments
    let resume_size = std::fs::metadata(a.join("resume.safetensors"))
        .unwrap()
        .len();
    assert!(resume_size > model_size * 2, "{model_size} {resume_size}");
    let blocks = (model_size + resume_size) / 2 / 1024;
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(format!("ulimit -f {blocks}; exec \"$0\" \"$@\""))
        .arg(bin())
        .args(["train-standard", "--resume", b.to_str().unwrap()])
        .env_remove("ROBUSTLENS_FAULT_INJECT")
        .env(
            "ROBUSTLENS_CACHE",
            std::env::temp_dir().join("rl-test-cache"),
        );
    let (code, _, err) = output(c);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("resume.safetensors") && err.contains("File too large"),
        "{err}"
    );
    // The last good checkpoint is whole (the run may have written a newer, smaller one at the
    // phase change before the write that hit the limit).
    assert_whole(&b.join("resume.safetensors"));
    let _ = kept;
    assert!(stale_temps(&b).is_empty(), "{:?}", stale_temps(&b));

    // With room again, the run finishes with the weights of the uninterrupted one.
    let (code, _, err) = run(&["train-standard", "--resume", b.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for f in ["model.safetensors", "last.safetensors"] {
        assert!(
            bytes(&a.join(f)) == bytes(&b.join(f)),
            "{f} differs after resume"
        );
    }
    assert!(stale_temps(&b).is_empty());

    // Disk full while writing a report: a clear error, the previous report kept.
    let cmp = dir.path().join("cmp");
    let compare = |limit: Option<u64>| {
        let mut c = Command::new("bash");
        let prefix = limit
            .map(|l| format!("ulimit -f {l}; "))
            .unwrap_or_default();
        c.arg("-c")
            .arg(format!("{prefix}exec \"$0\" \"$@\""))
            .arg(bin())
            .args([
                "compare",
                "--run",
                a.to_str().unwrap(),
                "--out",
                cmp.to_str().unwrap(),
            ])
            .args(["--count", "2", "--metrics", "rma,gini", "--bootstrap", "50"])
            .env(
                "ROBUSTLENS_CACHE",
                std::env::temp_dir().join("rl-test-cache"),
            );
        output(c)
    };
    let (code, _, err) = compare(None);
    assert_eq!(code, 0, "{err}");
    let report = bytes(&cmp.join("comparison.json"));
    let (code, _, err) = compare(Some(1));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("comparison.json") && err.contains("File too large"),
        "{err}"
    );
    assert!(bytes(&cmp.join("comparison.json")) == report);
}

#[test]
fn non_finite_loss_stops_with_epoch_and_step_and_keeps_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nan");
    let mut args = train_args("train-standard", &out, "3");
    args.extend(["--lr", "1e30"].map(String::from));
    let (code, _, err) = run(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("the loss became") && err.contains("epoch") && err.contains("step"),
        "{err}"
    );
    // The head phase's checkpoints are whole.
    assert_whole(&out.join("model.safetensors"));
    assert_whole(&out.join("resume.safetensors"));
}

fn write_safetensors_raw(path: &Path, header: &str, data_len: usize) {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend(std::iter::repeat_n(0u8, data_len));
    std::fs::write(path, b).unwrap();
}

#[test]
fn hostile_weights_files_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.png");
    image::RgbImage::from_pixel(32, 32, image::Rgb([90, 60, 40]))
        .save(&img)
        .unwrap();
    type Make = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Make, &str)> = vec![
        (
            "offsets.safetensors",
            Box::new(|p| {
                write_safetensors_raw(
                    p,
                    r#"{"fc.weight":{"dtype":"F32","shape":[3,512],"data_offsets":[0,6144]}}"#,
                    16,
                )
            }),
            "not a valid safetensors file",
        ),
        (
            "huge_shape.safetensors",
            Box::new(|p| {
                write_safetensors_raw(
                    p,
                    r#"{"w":{"dtype":"F32","shape":[1000000000,1000000000],"data_offsets":[0,4]}}"#,
                    4,
                )
            }),
            "not a valid safetensors file",
        ),
        (
            "header_larger.safetensors",
            Box::new(|p| {
                let mut b = (1u64 << 40).to_le_bytes().to_vec();
                b.extend_from_slice(b"{}");
                std::fs::write(p, b).unwrap();
            }),
            "header claims",
        ),
        (
            "zero.safetensors",
            Box::new(|p| std::fs::write(p, b"").unwrap()),
            "zero.safetensors",
        ),
        (
            "not_a_dict.pth",
            // a pickled list of ints, zero-padded: not a state dict
            Box::new(|p| std::fs::write(p, b"\x80\x02]q\x00(K\x01K\x02e.").unwrap()),
            "not_a_dict.pth",
        ),
    ];
    for (name, make, want) in cases {
        let p = dir.path().join(name);
        make(&p);
        let (code, _, err) = run(&[
            "predict",
            "--weights",
            p.to_str().unwrap(),
            "--image-size",
            "32",
            img.to_str().unwrap(),
        ]);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(err.contains(want), "{name}: {err}");
    }
}

#[test]
fn awkward_images_load_and_broken_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let m = formula_model(3);
    save_checkpoint(
        &m,
        &ModelConfig {
            image_size: 32,
            ..Default::default()
        },
        dir.path(),
        "model.safetensors",
    )
    .unwrap();
    let w = dir.path().join("model.safetensors");
    let p = |n: &str| dir.path().join(n);
    image::RgbaImage::from_fn(40, 40, |x, y| {
        image::Rgba([x as u8 * 6, y as u8 * 6, 50, (x * y) as u8])
    })
    .save(p("alpha.png"))
    .unwrap();
    image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_fn(40, 36, |x, y| {
        image::Rgb([x as u16 * 1500, y as u16 * 1700, 30000])
    })
    .save(p("deep16.png"))
    .unwrap();
    image::GrayImage::from_fn(48, 48, |x, y| image::Luma([(x + y) as u8 * 2]))
        .save(p("gray.png"))
        .unwrap();
    image::RgbImage::from_pixel(8, 6, image::Rgb([200, 100, 50]))
        .save(p("tiny.png"))
        .unwrap();
    let names = ["alpha.png", "deep16.png", "gray.png", "tiny.png"];
    let mut args = vec![
        "predict".to_string(),
        "--weights".into(),
        w.to_str().unwrap().into(),
        "--image-size".into(),
        "32".into(),
        "--json".into(),
    ];
    args.extend(names.iter().map(|n| p(n).to_str().unwrap().to_string()));
    let (code, out, err) = run(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    for n in names {
        assert!(out.contains(n), "{n}: {out}");
    }
    std::fs::write(p("zero.jpg"), b"").unwrap();
    std::fs::write(
        p("corrupt.jpg"),
        b"\xff\xd8\xff\xe0garbage that is not a jpeg",
    )
    .unwrap();
    for bad in ["zero.jpg", "corrupt.jpg"] {
        let (code, _, err) = run(&[
            "predict",
            "--weights",
            w.to_str().unwrap(),
            "--image-size",
            "32",
            p(bad).to_str().unwrap(),
        ]);
        assert_eq!(code, 1, "{bad}");
        assert!(err.contains(bad), "{bad}: {err}");
    }
}

#[test]
fn bad_arguments_are_named_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let f = file.to_str().unwrap();
    let o = dir.path().join("o");
    let o = o.to_str().unwrap();
    let below_file = format!("{f}/run");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["train-robust", "--out", o, "--eps", "0"], "--eps 0"),
        (
            vec!["train-robust", "--out", o, "--eps", "NaN"],
            "--eps NaN",
        ),
        (
            vec![
                "train-robust",
                "--out",
                o,
                "--eps",
                "0.5",
                "--attack-steps",
                "0",
            ],
            "steps",
        ),
        (
            vec!["finetune", "--out", o, "--from", o, "--groups", "0-7"],
            "groups are 1..5",
        ),
        (
            vec!["finetune", "--out", o, "--from", o, "--groups", "5-3"],
            "5-3",
        ),
        (
            vec!["train-standard", "--out", o, "--image-size", "0"],
            "--image-size 0",
        ),
        (
            vec!["train-standard", "--out", o, "--image-size", "16"],
            "at least 32",
        ),
        (vec!["train-standard", "--out", f], "a-file"),
        (vec!["train-standard", "--out", &below_file], "a-file"),
        (
            vec!["evaluate", "--run", o, "--attack", "pgd", "--steps", "0"],
            "steps",
        ),
        (
            vec![
                "data",
                "synth",
                "--out",
                f,
                "--per-class",
                "1",
                "--size",
                "32",
            ],
            "a-file",
        ),
    ];
    for (args, want) in cases {
        let t0 = std::time::Instant::now();
        let (code, _, err) = run(&args);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(
            t0.elapsed().as_secs() < 20,
            "{args:?} did work before failing"
        );
    }
}

fn files_in(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<(PathBuf, Vec<u8>)> = walk(dir)
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.ends_with(".safetensors")
                || n.ends_with(".png")
                || n.ends_with(".npy")
                || n == "split.csv"
        })
        .map(|p| (p.strip_prefix(dir).unwrap().to_path_buf(), bytes(&p)))
        .collect();
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn same_command_same_seed_gives_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut results = Vec::new();
    for k in 0..2 {
        let root = dir.path().join(format!("try{k}"));
        // robust training: PGD with a random start, augmentation, shuffling
        let run_dir = root.join("robust");
        let mut args = train_args("train-robust", &run_dir, "1");
        args.extend(["--eps", "0.3", "--attack-steps", "2"].map(String::from));
        let (code, _, err) = run(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        assert_eq!(code, 0, "{err}");
        // SmoothGrad with its noise, on the run's test images
        let maps = root.join("maps");
        let raw = root.join("raw.npy");
        let (code, _, err) = run(&[
            "saliency",
            "--run",
            run_dir.to_str().unwrap(),
            "--data",
            "run",
            "--count",
            "2",
            "--include-misclassified",
            "--method",
            "smoothgrad",
            "--samples",
            "4",
            "--out",
            maps.to_str().unwrap(),
            "--raw-out",
            raw.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        // the synthetic data set
        let (code, _, err) = run(&[
            "data",
            "synth",
            "--out",
            root.join("synth").to_str().unwrap(),
            "--per-class",
            "2",
            "--size",
            "32",
            "--seed",
            "9",
        ]);
        assert_eq!(code, 0, "{err}");
        results.push(files_in(&root));
    }
    assert!(
        results[0].len() >= 8,
        "{:?}",
        results[0].iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert_eq!(results[0].len(), results[1].len());
    for (x, y) in results[0].iter().zip(&results[1]) {
        assert_eq!(x.0, y.0);
        assert!(
            x.1 == y.1,
            "{} differs between two identical commands",
            x.0.display()
        );
    }
}
