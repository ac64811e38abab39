//! `demo` end to end at tiny sizes ([`DemoOptions::tiny`]): every figure the demo writes is
//! there, parses as SVG or PNG, and the page of its part names it; the top page names them
//! all; each run folder has its training curves.

mod common;
use robustlens::commands::demo::{run, DemoOptions};
use robustlens::interrupt::Interrupt;

#[test]
fn the_demo_writes_every_figure_and_names_each_on_its_page() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let opts = DemoOptions {
        out: out.clone(),
        tiny: true,
        ..Default::default()
    };
    let summary = run(&opts, &Interrupt::new()).unwrap();
    assert!(summary.get("control").is_some() && summary.get("lesions").is_some());
    let top = std::fs::read_to_string(out.join("report.html")).unwrap();
    let charts = |models: &[&str], extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "training_loss",
            "validation_accuracy",
            "sanity_spearman",
            "sanity_ssim",
        ]
        .iter()
        .chain(extra)
        .flat_map(|s| [format!("{s}.svg"), format!("{s}.png")])
        .collect();
        for m in models {
            v.push(format!("confusion_{m}.svg"));
            v.push(format!("confusion_{m}.png"));
            v.push(format!("failures_{m}.png"));
        }
        v.extend(
            [
                "adversarial.png",
                "saliency_gradient.png",
                "data_sample.png",
            ]
            .map(String::from),
        );
        v
    };
    for (part, files, runs) in [
        (
            "control",
            charts(&["standard", "robust-eps2"], &[]),
            vec!["standard", "robust-eps2"],
        ),
        (
            "lesions",
            charts(
                &["standard", "robust-eps4"],
                &["deletion_curve", "insertion_curve"],
            ),
            vec!["standard", "robust-eps4", "robust-finetuned-3-5"],
        ),
    ] {
        let d = out.join(part);
        let page = std::fs::read_to_string(d.join("report.html")).unwrap();
        for f in &files {
            assert!(
                d.join("figures").join(f).exists(),
                "{part}: figures/{f} missing"
            );
            assert!(
                top.contains(&format!("{part}/figures/{f}")),
                "the top page does not name {part}/figures/{f}"
            );
        }
        let n = common::check_figure_files(&d, &page);
        assert!(n >= files.len(), "{part}: {n} figure files");
        for r in runs {
            for f in ["training_curves.svg", "training_curves.png"] {
                assert!(d.join(r).join(f).exists(), "{part}/{r}/{f} missing");
            }
        }
    }
}
