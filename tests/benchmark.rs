//! `benchmark`: a tiny grid through the binary (`--budget quick` with tiny sizes), and
//! resume: a benchmark stopped in its first cell and run again ends with the same
//! `benchmark.json` as one never stopped.

mod common;
use common::run_cli as run;
use robustlens::commands::benchmark::{run as benchmark, BenchmarkOptions};
use robustlens::commands::compare::CompareSettings;
use robustlens::commands::train::TrainOptions;
use robustlens::config::{Overrides, Recipe};
use robustlens::interrupt::Interrupt;
use robustlens::model::GroupSet;

const TINY: &[&str] = &[
    "--image-size",
    "32",
    "--train-per-class",
    "6",
    "--val-per-class",
    "2",
    "--test-per-class",
    "3",
    "--batch-size",
    "6",
    "--head-batch-size",
    "6",
    "--head-epochs",
    "1",
    "--epochs",
    "1",
    "--finetune-epochs",
    "1",
];

fn json(p: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn a_quick_benchmark_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bm");
    let mut args = vec![
        "benchmark",
        "--budget",
        "quick",
        "--out",
        out.to_str().unwrap(),
        "--seeds",
        "0",
        "--count",
        "6",
        "--bootstrap",
        "100",
    ];
    args.extend_from_slice(TINY);
    let (code, stdout, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    for f in [
        "benchmark.json",
        "benchmark.csv",
        "benchmark.md",
        "report.html",
        "figures/frontier-accuracy.svg",
        "figures/frontier-accuracy.png",
        "figures/frontier-gradient.svg",
        "figures/frontier-gradient.png",
        "figures/best-eps.svg",
        "figures/best-eps.png",
        "comparison.json",
        "seed-0/standard/model.safetensors",
        "seed-0/robust-eps4/model.safetensors",
        "seed-0/finetune-3-5/model.safetensors",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let b = json(&out.join("benchmark.json"));
    let cells: Vec<&str> = b["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cells, ["standard", "robust-eps4", "finetune-3-5"]);
    // The lesion set: the six mask and sparseness metrics and the five artifact masses, for
    // every cell.
    assert_eq!(b["metrics"].as_array().unwrap().len(), 3 * 11);
    let ft = &b["cells"][2];
    assert_eq!(
        (ft["groups"].as_str(), ft["eps_at_224"].as_f64()),
        (Some("3-5"), Some(4.0))
    );
    for m in b["metrics"].as_array().unwrap() {
        assert_eq!(m["per_seed"].as_array().unwrap().len(), 1, "{m}");
        if m["cell"] == "standard" {
            assert_eq!(m["diff_vs_standard"].as_f64().unwrap_or(0.0), 0.0);
        }
    }
    assert!(
        stdout.contains("| cell | metric | mean | across seeds |"),
        "{stdout}"
    );
    // Best eps per image among standard and robust: shares over eps 0 and 4 that sum to 1.
    let best = &b["best_eps"][0];
    let eps: Vec<f64> = best["eps_at_224"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_f64().unwrap())
        .collect();
    assert_eq!(eps, [0.0, 4.0]);
    let shares: f64 = best["per_seed"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!((shares - 1.0).abs() < 1e-9, "{best}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for needle in [
        "Findings",
        "Does robust training put the gradient maps on the mask?",
        "<svg",
        "Best eps per image",
    ] {
        assert!(html.contains(needle), "{needle} missing from report.html");
    }
    assert!(
        !html.contains("http"),
        "the page must not reach the network"
    );
    assert!(common::check_figure_files(&out, &html) >= 6);
    let svg = std::fs::read_to_string(out.join("figures/frontier-gradient.svg")).unwrap();
    let png = image::open(out.join("figures/frontier-gradient.png")).unwrap();
    assert!(
        png.width() > 300 && png.height() > 200,
        "{:?}",
        (png.width(), png.height())
    );
    assert!(svg.contains("xmlns=\"http://www.w3.org/2000/svg\"") && svg.contains("RMA"));
    // Run again: every cell is kept and the tables are byte-identical.
    let before = std::fs::read(out.join("benchmark.json")).unwrap();
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.matches("finished earlier, kept").count(), 3, "{err}");
    assert_eq!(before, std::fs::read(out.join("benchmark.json")).unwrap());
}

fn tiny_options(out: &std::path::Path) -> BenchmarkOptions {
    let mut train = TrainOptions::new(Recipe::TrainStandard);
    train.out = Some(out.to_path_buf());
    train.overrides = Overrides {
        image_size: Some(32),
        train_per_class: Some(6),
        val_per_class: Some(2),
        test_per_class: Some(3),
        batch_size: Some(6),
        head_batch_size: Some(6),
        head_epochs: Some(1),
        epochs: Some(2),
        ..Default::default()
    };
    BenchmarkOptions {
        train,
        archs: Vec::new(),
        seeds: vec![3],
        eps_at_224: vec![4.0],
        groups: vec![GroupSet::parse("5").unwrap()],
        finetune_epochs: 1,
        finetune_lr: 1e-4,
        train_attack_steps: 2,
        compare: CompareSettings {
            methods: vec!["gradient".into()],
            metrics: "rma,gini".into(),
            count: 6,
            attack_eps: Some(0.4),
            attack_steps: 3,
            best_by: "rma".into(),
            bootstrap: 100,
        },
        cell: None,
        gather: false,
    }
}

#[test]
fn a_stopped_benchmark_resumes_to_the_same_tables() {
    std::env::set_var(
        "ROBUSTLENS_CACHE",
        std::env::temp_dir().join("rl-test-cache"),
    );
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    benchmark(&tiny_options(&whole), &Interrupt::new()).unwrap();
    // Stopped after the first step of its first cell (as Ctrl-C or SIGTERM stops it).
    let parts = dir.path().join("parts");
    let stop = Interrupt::new();
    stop.trigger();
    let e = benchmark(&tiny_options(&parts), &stop).unwrap_err();
    assert!(matches!(e, robustlens::Error::Interrupted { .. }), "{e}");
    assert!(parts.join("seed-3/standard/resume.safetensors").exists());
    assert!(!parts.join("seed-3/standard/summary.json").exists());
    benchmark(&tiny_options(&parts), &Interrupt::new()).unwrap();
    assert_eq!(
        std::fs::read(whole.join("benchmark.json")).unwrap(),
        std::fs::read(parts.join("benchmark.json")).unwrap(),
        "the resumed benchmark differs from the uninterrupted one"
    );
    let b = json(&parts.join("benchmark.json"));
    assert!(b["accuracy"][1]["robust"].is_array(), "{b}");
}

/// `benchmark --arch resnet18,convnext_atto`: one complete benchmark per architecture in its
/// own folder, and the page across them; each cell trained the architecture of its folder.
#[test]
fn one_benchmark_per_architecture() {
    use robustlens::model::Arch;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("archs");
    let mut o = tiny_options(&out);
    o.archs = vec![Arch::Resnet18, Arch::ConvnextAtto];
    let done = robustlens::commands::benchmark_archs::run(&o, &Interrupt::new()).unwrap();
    assert_eq!(done.len(), 2);
    for (arch, b) in &done {
        let folder = out.join(arch.name());
        assert!(folder.join("benchmark.json").exists() && folder.join("report.html").exists());
        let cfg = json(&folder.join("seed-3/robust-eps4/config.json"));
        assert_eq!(cfg["arch"], arch.name(), "{cfg}");
        assert_eq!(b.seeds, vec![3]);
    }
    let md = std::fs::read_to_string(out.join("architectures.md")).unwrap();
    assert!(
        md.contains("| resnet18 | ")
            && md.contains(" | gradient | ")
            && md.contains("| convnext_atto | "),
        "{md}"
    );
    assert!(md.contains("## convnext_atto (timm layout)"), "{md}");
    let html = std::fs::read_to_string(out.join("architectures.html")).unwrap();
    assert!(html.contains("convnext_atto/report.html"), "{html}");
    // The scheduler's cells carry the architecture; an unknown one is named.
    let (_, cells) = robustlens::commands::benchmark_archs::grid(&o).unwrap();
    assert!(cells
        .iter()
        .any(|(n, _, after)| n == "convnext_atto/seed-3/finetune-5"
            && after.as_deref() == Some("convnext_atto/seed-3/robust-eps4")));
    o.cell = Some("vit_small_patch16_224/seed-3/standard".into());
    let e = robustlens::commands::benchmark_archs::run(&o, &Interrupt::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("resnet18, convnext_atto"), "{e}");
}
