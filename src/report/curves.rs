//! A run's training curves from its `metrics.jsonl`: loss and accuracy per epoch, clean and
//! adversarial, numbered across phases with the phase boundary marked. The trainer writes
//! them into the run folder after every epoch (`training_curves.svg` and `.png`).

use super::plot::{side_by_side, Chart, IntervalSeries, UNIT};
use super::raster::write_chart;
use crate::Result;
use std::path::Path;

/// The two charts (loss, accuracy) of the epochs in `metrics` (one JSON object per line, as
/// the trainer writes them), side by side in one SVG; `None` before the first epoch.
pub fn training_curves(metrics: &str, title: &str) -> Option<String> {
    let rows: Vec<serde_json::Value> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if rows.is_empty() {
        return None;
    }
    let robust = rows.iter().any(|r| r.get("train_adv_acc").is_some());
    let series = |name: &str, key: &str| -> IntervalSeries {
        let pts = rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let y = r.get(key)?.as_f64()?;
                Some(((i + 1) as f64, y, f64::NAN, f64::NAN))
            })
            .collect();
        (name.to_string(), pts)
    };
    let keep = |v: Vec<IntervalSeries>| -> Vec<IntervalSeries> {
        v.into_iter().filter(|(_, p)| !p.is_empty()).collect()
    };
    let loss = keep(vec![
        series(
            if robust {
                "training (adversarial)"
            } else {
                "training"
            },
            "train_loss",
        ),
        series("validation", "val_loss"),
    ]);
    let acc = keep(if robust {
        vec![
            series("training (clean)", "train_clean_acc"),
            series("training (adversarial)", "train_adv_acc"),
            series("validation", "val_acc"),
        ]
    } else {
        vec![
            series("training", "train_acc"),
            series("validation", "val_acc"),
        ]
    });
    // a dashed line where the phase changes (head only, then the whole network)
    let marks: Vec<(f64, String)> = rows
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0].get("phase") != w[1].get("phase"))
        .map(|(i, w)| {
            let next = w[1].get("phase").and_then(|p| p.as_str()).unwrap_or("");
            ((i + 1) as f64 + 0.5, format!("{next} phase"))
        })
        .collect();
    let xlabel = "epoch (across phases)";
    Some(side_by_side(&[
        Chart::points(&format!("{title}: loss"), &loss, xlabel, "loss").marked(&marks),
        Chart::points(&format!("{title}: accuracy"), &acc, xlabel, "accuracy")
            .marked(&marks)
            .bounded(UNIT),
    ]))
}

/// Writes `dir/training_curves.svg` and `.png` from `dir/metrics.jsonl` (nothing before the
/// first epoch); `title` names the run.
pub fn write_run_curves(dir: &Path, title: &str) -> Result<()> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    match training_curves(&text, title) {
        Some(svg) => write_chart(dir, "training_curves", &svg),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn robust_runs_get_clean_and_adversarial_curves_and_the_phase_boundary() {
        let lines = [
            r#"{"phase":"head","epoch":1,"train_loss":1.2,"train_acc":0.5,"train_clean_acc":0.6,"train_adv_acc":0.5,"val_loss":1.0,"val_acc":0.55}"#,
            r#"{"phase":"full","epoch":1,"train_loss":0.9,"train_acc":0.6,"train_clean_acc":0.7,"train_adv_acc":0.6,"val_loss":0.8,"val_acc":0.65}"#,
            r#"{"phase":"full","epoch":2,"train_loss":0.7,"train_acc":0.7,"train_clean_acc":0.8,"train_adv_acc":0.7,"val_loss":0.7,"val_acc":0.7}"#,
        ];
        let svg = training_curves(&lines.join("\n"), "robust").unwrap();
        for needle in [
            "robust: loss",
            "robust: accuracy",
            "training (clean)",
            "training (adversarial)",
            "validation",
            ">full phase</text>",
        ] {
            assert!(svg.contains(needle), "{needle} missing");
        }
        // the boundary sits between the head epoch (x = 1) and the first full one (x = 2)
        assert_eq!(svg.matches("full phase").count(), 2, "one mark per chart");
        // a standard run has one training curve per chart, and nothing before an epoch
        let std =
            training_curves(&lines[1..].join("\n").replace("train_adv_acc", "x"), "s").unwrap();
        assert!(!std.contains("adversarial") && !std.contains("phase</text>"));
        assert!(training_curves("", "s").is_none());
        let png =
            crate::report::raster::svg_to_png(&crate::report::html::svg_file(&svg), 1.0).unwrap();
        let img = image::load_from_memory(&png).unwrap();
        assert!(
            img.width() >= 900,
            "two charts side by side: {}",
            img.width()
        );
    }
}
