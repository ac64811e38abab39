//! `sweep-eps`, `compare` and `sanity` through the binary with tiny settings.

mod common;
use std::path::Path;

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
    "--weights",
    "none",
];

use common::run_cli as run;

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn sweep_compare_brittleness_and_sanity() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("sweep");
    let ds = d.to_str().unwrap();
    let mut args = vec![
        "sweep-eps",
        "--out",
        ds,
        "--eps",
        "0,0.5",
        "--seed",
        "3",
        "--train-attack-steps",
        "2",
        "--count",
        "6",
        "--bootstrap",
        "200",
        "--method",
        "gradient,gradcam",
    ];
    args.extend_from_slice(TINY);
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for name in ["eps-0", "eps-0.5"] {
        assert!(d.join(name).join("model.safetensors").exists(), "{name}");
    }
    let c = json(&d.join("comparison.json"));
    let models = c["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0]["train_eps"].as_f64(), Some(0.0));
    assert_eq!(models[1]["train_eps"].as_f64(), Some(0.5));
    assert_eq!(c["images"].as_array().unwrap().len(), 6);
    assert_eq!(c["images_with_mask"].as_u64(), Some(6));
    // every metric is summarised for every method; the second model is tested against the first
    for m in models {
        for r in m["methods"].as_array().unwrap() {
            let metrics = r["metrics"].as_array().unwrap();
            assert_eq!(metrics.len(), 9, "{r}");
            for s in metrics {
                let mean = s["mean"].as_f64();
                let ci = s["ci95"].as_array().unwrap();
                if let (Some(mean), Some(lo), Some(hi)) = (mean, ci[0].as_f64(), ci[1].as_f64()) {
                    assert!(lo <= mean + 1e-12 && mean <= hi + 1e-12, "{s}");
                }
            }
        }
    }
    let rma = &models[1]["methods"][0]["metrics"][0];
    assert_eq!(rma["metric"], "relevance_mass_accuracy");
    assert!(rma.get("wilcoxon_vs_first").is_some() || rma["n"].as_u64() == Some(6));
    // best eps per image: one entry per method, the histogram counts every image
    let best = c["best_eps"].as_array().unwrap();
    assert_eq!(best.len(), 2);
    for b in best {
        let total: u64 = b["histogram"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h[1].as_u64().unwrap())
            .sum();
        assert_eq!(total, 6, "{b}");
    }
    assert!(out.contains("| model | eps | clean acc |"), "{out}");
    // the eps frontier as figures: SVG with PNG copies, the points in eps order
    for stem in [
        "frontier-accuracy",
        "frontier-gradient",
        "frontier-gradcam",
        "best-eps-gradient",
    ] {
        let svg = std::fs::read_to_string(d.join(format!("figures/{stem}.svg")))
            .unwrap_or_else(|e| panic!("{stem}: {e}"));
        assert!(
            svg.starts_with("<?xml") && svg.contains("against eps") || stem.starts_with("best")
        );
        let png = image::open(d.join(format!("figures/{stem}.png"))).unwrap();
        assert!(png.width() > 400, "{stem}");
    }
    let acc = std::fs::read_to_string(d.join("figures/frontier-accuracy.svg")).unwrap();
    assert!(
        acc.contains("<polyline") && acc.contains(">0.5</text>"),
        "eps ticks 0 and 0.5"
    );
    let md = std::fs::read_to_string(d.join("comparison.md")).unwrap();
    assert!(
        md.contains("## gradcam") && md.contains("Best eps per image"),
        "{md}"
    );
    let csv = std::fs::read_to_string(d.join("comparison.csv")).unwrap();
    assert!(
        csv.starts_with("model,train_eps,method,metric,n,mean,ci95_low"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 1 + 2 * (1 + 2 * 9), "{csv}");

    // Run again: both runs are kept, and the comparison is byte-identical (deterministic).
    let before = std::fs::read(d.join("comparison.json")).unwrap();
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(err.matches("finished earlier, kept").count() == 2, "{err}");
    assert_eq!(before, std::fs::read(d.join("comparison.json")).unwrap());

    // Seed brittleness: a run that differs from eps-0 only in its seed.
    let s4 = dir.path().join("seed4");
    let mut targs = vec![
        "train-standard",
        "--out",
        s4.to_str().unwrap(),
        "--seed",
        "4",
    ];
    targs.extend_from_slice(TINY);
    let (code, _, err) = run(&targs);
    assert_eq!(code, 0, "{err}");
    let e0 = d.join("eps-0");
    let cmp = dir.path().join("cmp");
    let (code, _, err) = run(&[
        "compare",
        "--run",
        e0.to_str().unwrap(),
        "--run",
        s4.to_str().unwrap(),
        "--out",
        cmp.to_str().unwrap(),
        "--count",
        "4",
        "--metrics",
        "rma,gini",
        "--bootstrap",
        "100",
    ]);
    assert_eq!(code, 0, "{err}");
    let c = json(&cmp.join("comparison.json"));
    let b = &c["brittleness"].as_array().unwrap()[0];
    assert_eq!(b["pairs"].as_u64(), Some(1));
    let sp = b["spearman"].as_f64().unwrap();
    assert!((-1.0..1.0).contains(&sp), "{b}");
    // no best-eps table among runs of one eps
    assert!(c["best_eps"].as_array().unwrap().is_empty());

    // Artifact mass on the lesion set's distractors: every kind and all together, each a
    // share in [0, 1] over the images that have that kind.
    let art = dir.path().join("art");
    let (code, out, err) = run(&[
        "compare",
        "--run",
        e0.to_str().unwrap(),
        "--out",
        art.to_str().unwrap(),
        "--count",
        "6",
        "--metrics",
        "artifacts",
        "--bootstrap",
        "100",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("artifacts ↓") && out.contains("hair ↓"),
        "{out}"
    );
    let c = json(&art.join("comparison.json"));
    let ms = c["models"][0]["methods"][0]["metrics"].as_array().unwrap();
    let names: Vec<&str> = ms.iter().map(|m| m["metric"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "artifact_mass",
            "artifact_mass_hair",
            "artifact_mass_ruler",
            "artifact_mass_ink",
            "artifact_mass_corners"
        ]
    );
    let n_all = ms[0]["n"].as_u64().unwrap();
    assert!(n_all > 0, "no image of six has an artifact: {ms:?}");
    for m in ms {
        assert!(m["n"].as_u64().unwrap() <= n_all, "{m}");
        if let Some(v) = m["mean"].as_f64() {
            assert!((0.0..=1.0).contains(&v), "{m}");
        }
    }

    // Sanity check: gradient maps of the trained model lose similarity as it is randomised.
    let sj = dir.path().join("sanity.json");
    let (code, out, err) = run(&[
        "sanity",
        "--run",
        e0.to_str().unwrap(),
        "--count",
        "3",
        "--json",
        sj.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("| randomised groups | Spearman | SSIM |"),
        "{out}"
    );
    let steps = json(&sj);
    let steps = steps.as_array().unwrap();
    assert_eq!(steps.len(), 5);
    assert_eq!(steps[4]["randomised"], serde_json::json!([5, 4, 3, 2, 1]));
    for s in steps {
        assert!(s["spearman"].as_f64().unwrap() < 0.95, "{s}");
    }
    assert!(steps[4]["ssim"].as_f64().unwrap() < 0.9, "{steps:?}");
}

#[test]
fn compare_argument_errors() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().to_str().unwrap();
    for (args, want) in [
        (
            vec!["compare", "--run", o, "--metrics", "sharpness"],
            "unknown metric `sharpness`",
        ),
        (
            vec!["compare", "--run", o, "--method", "lime"],
            "unknown method `lime`",
        ),
        (vec!["compare", "--run", o, "--count", "0"], "--count 0"),
        (
            vec!["compare", "--run", o, "--attack-eps=-1"],
            "--attack-eps -1",
        ),
        (vec!["compare", "--run", o], "not a run folder"),
        (
            vec!["sweep-eps", "--out", o, "--eps=-1"],
            "must be a number >= 0",
        ),
        (vec!["sweep-eps", "--out", o], "needs --eps"),
    ] {
        let (code, _, err) = run(&args);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
