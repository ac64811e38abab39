//! Configurations and run folders written by robustlens 0.1 (the flat `train` object of
//! `tests/fixtures/v0.1_run_config.json`, copied from a run folder that version made) still
//! work: `--config` of the old file trains the same run, and an interrupted run folder whose
//! `config.json` is in the old form resumes and ends with the weights of an uninterrupted run.
//! Also: a command that fails on its arguments or data leaves no folder behind.

mod common;
use common::{cli, fixture, output, run_cli as run};
use robustlens::config::{Init, Recipe, Schedule, TrainConfig};
use robustlens::interrupt::Interrupt;
use robustlens::model::WeightsSource;
use robustlens::run::RunConfig;
use robustlens::train::{train, Stop};

fn old() -> std::path::PathBuf {
    fixture("v0.1_run_config.json")
}

#[test]
fn an_old_config_json_loads_with_every_value() {
    let rc: RunConfig = robustlens::fsutil::read_json(&old()).unwrap();
    let t: TrainConfig = rc.train;
    assert_eq!(t.recipe, Recipe::TrainStandard);
    assert_eq!((t.image_size, t.seed), (32, 3));
    assert_eq!(
        (
            t.data.train_per_class,
            t.data.val_per_class,
            t.data.test_per_class
        ),
        (8, 2, 2)
    );
    assert_eq!((t.head.epochs, t.head.batch_size, t.head.lr), (1, 32, 1e-3));
    assert_eq!((t.main.epochs, t.main.batch_size, t.main.lr), (2, 4, 1e-3));
    assert_eq!(
        t.main.schedule,
        Schedule::Step {
            epoch: 1,
            factor: 0.5
        }
    );
    assert_eq!(t.init, Init::Weights(WeightsSource::Random));
    assert_eq!(t.optim.weight_decay, 5e-4);
    assert!(t.data.augment && t.adversarial.is_none());
    assert_eq!(rc.model.class_names[1], "melanoma");
}

#[test]
fn config_of_an_old_run_and_resume_of_an_old_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    // 1. --config old.json: the same run, written in today's form.
    let a = dir.path().join("a");
    let (code, _, err) = run(&[
        "train-standard",
        "--config",
        old().to_str().unwrap(),
        "--out",
        a.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let new: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("config.json")).unwrap()).unwrap();
    assert_eq!(new["train"]["main"]["schedule"], "step:1:0.5");
    assert_eq!(new["train"]["data"]["train_per_class"], 8);
    assert_eq!(new["train"]["init"]["weights"], "none");

    // 2. An interrupted run (stopped after its first step) whose config.json is the old one.
    let b = dir.path().join("b");
    let cfg: RunConfig = robustlens::fsutil::read_json(&old()).unwrap();
    let stop = Interrupt::new();
    stop.trigger();
    std::env::set_var(
        "ROBUSTLENS_CACHE",
        std::env::temp_dir().join("rl-test-cache"),
    );
    let s = train(&cfg.train, &b, false, &stop).unwrap();
    assert!(matches!(s, Stop::Interrupted));
    assert!(b.join("resume.safetensors").exists());
    std::fs::copy(old(), b.join("config.json")).unwrap();
    let mut c = cli();
    c.args(["train-standard", "--resume", b.to_str().unwrap()]);
    let (code, _, err) = output(c);
    assert_eq!(code, 0, "{err}");
    assert!(b.join("summary.json").exists());
    // Kill and resume end where the uninterrupted run ends (CPU, fixed order of every sum).
    assert_eq!(
        std::fs::read(a.join("last.safetensors")).unwrap(),
        std::fs::read(b.join("last.safetensors")).unwrap(),
        "the resumed old run differs from the uninterrupted one"
    );
    // Resuming with the wrong command names both.
    let (code, _, err) = run(&["train-robust", "--resume", b.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("made by `train-standard`, not `train-robust`"),
        "{err}"
    );
}

#[test]
fn a_failing_command_leaves_no_folder() {
    let cases: &[&[&str]] = &[
        &["train-standard", "--data", "/nonexistent/ham"],
        &["train-standard", "--lr", "0"],
        &["train-standard", "--config", "/nonexistent/config.json"],
        &["train-robust"],
        &["train-robust", "--eps", "0"],
        &["finetune", "--from", "/nonexistent/run"],
        &["cv", "--folds", "1"],
        &["compare", "--run", "/nonexistent/run"],
        &["report", "--run", "/nonexistent/run"],
        &["sweep-eps", "--eps=-1"],
        &["sweep-eps", "--eps", "0", "--metrics", "sharpness"],
        &["evaluate", "--run", "/nonexistent/run"],
        &["data", "synth", "--out", "synth", "--per-class", "0"],
        &[
            "saliency",
            "--weights",
            "none",
            "--num-classes",
            "3",
            "--image",
            "x.png",
            "--out",
            "maps",
            "--method",
            "lime",
        ],
        &[
            "attack",
            "--weights",
            "/nonexistent.safetensors",
            "--image",
            "x.png",
            "--eps",
            "1",
            "--step-size",
            "0.1",
            "--out",
            "adv",
        ],
    ];
    for args in cases {
        let cwd = tempfile::tempdir().unwrap();
        let mut c = cli();
        c.current_dir(cwd.path()).args(*args);
        let (code, _, err) = output(c);
        assert_eq!(code, 1, "{args:?}: {err}");
        let left: Vec<_> = std::fs::read_dir(cwd.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{args:?} left {left:?} behind ({err})");
    }
}
