//! `report`: evaluate any runs, explain test images with every method, measure the maps
//! against lesion masks, and write `report.html`, PNG figures and `summary.json`.

mod galleries;

use crate::adversarial::Pgd;
use crate::attribution::{by_name, Convergence, MethodOptions};
use crate::data::loader::make_batch;
use crate::data::split::Part;
use crate::eval::classification::evaluate_model;
use crate::eval::compare::{
    compare, method_options_for, CompareOptions, Comparison, IgConvergence, Metric,
};
use crate::fsutil::{ensure_output_dir, file_stem, write_atomic, write_json_atomic};

use crate::config::eps_from_224;
use crate::report::display::{
    beside, draw_contour, heatmap, tensor_to_image, Colormap, DisplayOptions,
};
use crate::report::grid::Grid;
use crate::report::html::{esc, figure, figure_index, page};
use crate::report::plot::{
    band_chart, bar_chart, confusion_chart, interval_chart, IntervalSeries, UNIT,
};
use crate::report::png::{save_png, upscale};
use crate::report::raster::write_chart;
use crate::run::{load_runs, EvalImages};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use image::{Rgb, RgbImage};
use std::path::{Path, PathBuf};

/// Options of `report`.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub out: PathBuf,
    /// Test images shown per method.
    pub show: usize,
    /// Test images for the saliency metrics.
    pub metric_images: usize,
    /// Test images attacked for robust accuracy (0 = none).
    pub robust_images: usize,
    /// L2 eps of the robust evaluation at the working size (None: each run's training eps,
    /// else 3 at 224 scaled).
    pub robust_eps: Option<f32>,
    pub robust_steps: usize,
    pub methods: Vec<String>,
    /// The methods whose maps are measured (empty: every shown method); Gradient, when among
    /// them, comes first, and the findings and the deletion curves are of the first.
    pub metric_methods: Vec<String>,
    /// The saliency metrics of those maps (deletion, insertion and faithfulness run about a
    /// hundred forward passes per image each).
    pub metrics: Vec<Metric>,
    /// Test images of the adversarial-example gallery (0: none).
    pub adversarial_images: usize,
    /// Misclassified test images shown per model (0: no failure gallery).
    pub failures: usize,
    /// Saliency grids on one scale per method instead of each map's own.
    pub shared_scale: bool,
    /// Steps of Integrated Gradients in the saliency grids (captum's default, 50).
    pub ig_steps: usize,
    pub seed: u64,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            out: PathBuf::from("models/report"),
            show: 6,
            metric_images: 30,
            robust_images: 60,
            robust_eps: None,
            robust_steps: 10,
            methods: ["gradient", "ig", "smoothgrad", "occlusion", "gradcam"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            metric_methods: Vec::new(),
            metrics: Metric::ALL.to_vec(),
            adversarial_images: 3,
            failures: 6,
            shared_scale: false,
            ig_steps: 50,
            seed: 0,
        }
    }
}

/// The share of the logit change that IG may miss before the report warns.
const IG_TOLERANCE: f64 = 0.05;

/// IG's completeness check per model: a table (median and largest |delta| / |f(x) - f(x')| over
/// the shown images, and how many exceed 5%) and a warning for each model whose median
/// exceeds 5%.
fn ig_convergence(
    per_model: &[(String, Vec<Convergence>)],
    steps: usize,
) -> (String, serde_json::Value) {
    let mut rows = String::new();
    let mut warn = Vec::new();
    let mut json = serde_json::json!({ "steps": steps, "tolerance": IG_TOLERANCE, "models": [] });
    for (name, c) in per_model {
        let s = IgConvergence::of(c, steps);
        let largest_delta = c.iter().fold(0f32, |a, c| a.max(c.delta.abs()));
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{:.1}%</td><td>{:.1}%</td><td>{} of {}</td><td>{largest_delta:.3}</td></tr>",
            esc(name),
            100.0 * s.median_relative_delta,
            100.0 * s.largest_relative_delta,
            s.images_over_5pct,
            s.images
        ));
        if s.median_relative_delta > IG_TOLERANCE {
            warn.push(format!(
                "{} ({:.0}%)",
                esc(name),
                100.0 * s.median_relative_delta
            ));
        }
        json["models"]
            .as_array_mut()
            .expect("array")
            .push(serde_json::json!({
                "name": name, "summary": s, "largest_abs_delta": largest_delta, "per_image": c,
            }));
    }
    let mut html = format!("<table><tr><th>model</th><th>median |δ| / |Δf|</th><th>largest</th><th>images over 5%</th><th>largest |δ| (logits)</th></tr>{rows}</table>\n<p>Integrated Gradients, {steps} steps: δ is captum's convergence delta, the sum of the attributions minus the change of the target logit from the baseline (Δf). It is zero for an exact integral.</p>\n");
    if !warn.is_empty() {
        html.push_str(&format!("<p class=\"warn\"><strong>Warning:</strong> IG has not converged for {}: the median image misses more than 5% of its logit change, so its maps are not yet the integral they stand for. Raise the steps (<code>report --ig-steps</code>, <code>saliency --steps</code>).</p>\n", warn.join(", ")));
    }
    json["warning"] = serde_json::json!(!warn.is_empty());
    (html, json)
}

/// The mean deletion and insertion curves of the first method, one chart each, with 95%
/// bands across images; also written to `figdir` (empty when the metrics did not run).
fn curve_charts(c: &Comparison, method: &str, figdir: &Path) -> Result<String> {
    let mut out = String::new();
    for (kind, what) in [
        ("deletion", "removed, most salient first"),
        ("insertion", "revealed, most salient first"),
    ] {
        let series: Vec<IntervalSeries> = c
            .models
            .iter()
            .filter_map(|m| {
                let mc = m.methods.first()?.curves.as_ref()?;
                let b = if kind == "deletion" {
                    &mc.deletion
                } else {
                    &mc.insertion
                };
                let pts = (0..mc.fractions.len())
                    .map(|j| (mc.fractions[j], b.mean[j], b.low[j], b.high[j]))
                    .collect();
                Some((m.name.clone(), pts))
            })
            .collect();
        if series.is_empty() {
            return Ok(String::new());
        }
        let svg = band_chart(
            &format!("{kind} curve"),
            &series,
            &format!("share of pixels {what}"),
            "probability of the true class",
            UNIT,
        );
        write_chart(figdir, &format!("{kind}_curve"), &svg)?;
        out.push_str(&svg);
    }
    Ok(format!("<figure>{out}<figcaption>Deletion and insertion curves of the {} maps (RISE): the mean over the compared images of the true class's probability, with its 95% band across images. A faithful map makes the deletion curve fall early (small area) and the insertion curve rise early (large area). Files: <code>figures/deletion_curve.svg</code>, <code>figures/insertion_curve.svg</code>.</figcaption></figure>\n", esc(method)))
}

fn metrics_series(dir: &Path, key: &str) -> Vec<(f64, f64)> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .enumerate()
        .filter_map(|(i, v)| {
            v.get(key)
                .and_then(|x| x.as_f64())
                .map(|y| ((i + 1) as f64, y))
        })
        .collect()
}

/// Evaluates and explains `runs` and writes the report (`report.html`, `summary.json`,
/// `figures/`, `comparison.*`) into `opts.out`.
pub fn run(
    runs: &[(String, PathBuf)],
    opts: &ReportOptions,
    device: &Device,
) -> Result<serde_json::Value> {
    let (body, summary) = section(runs, opts, device)?;
    write_page(&opts.out, "robustlens report", &body, &summary)?;
    Ok(summary)
}

/// Writes `out/report.html` (a page titled `title` around `body`) and `out/summary.json`.
pub fn write_page(out: &Path, title: &str, body: &str, summary: &serde_json::Value) -> Result<()> {
    let body = format!("{body}{}", figure_index(out));
    write_atomic(&out.join("report.html"), page(title, &body).as_bytes())?;
    write_json_atomic(&out.join("summary.json"), summary)
}

/// What each model after the first found against the first: per measured method one
/// sentence with its numbers (RMA and pointing with the paired test), the first also with
/// accuracy, clean and under attack.
pub fn findings(c: &crate::eval::compare::Comparison) -> Vec<String> {
    let Some(first) = c.models.first() else {
        return Vec::new();
    };
    let label = |m: &str| match m {
        "gradient" => "Gradient".to_string(),
        "smoothgrad" => "SmoothGrad".to_string(),
        "ig" => "Integrated Gradients".to_string(),
        "gradcam" => "Grad-CAM".to_string(),
        "occlusion" => "Occlusion".to_string(),
        "input-x-gradient" => "Input × Gradient".to_string(),
        other => other.to_string(),
    };
    fn metric(
        m: &crate::eval::compare::ModelResult,
        mi: usize,
        k: Metric,
    ) -> Option<&crate::eval::compare::MetricSummary> {
        m.methods
            .get(mi)
            .and_then(|r| r.metrics.iter().find(|x| x.metric == k))
    }
    let acc = |a: &crate::eval::compare::ModelResult, b: &crate::eval::compare::ModelResult| {
        let mut s = format!(
            "; test accuracy {:.1}% → {:.1}%",
            100.0 * a.clean_accuracy,
            100.0 * b.clean_accuracy
        );
        if let (Some(x), Some(y)) = (a.robust_accuracy, b.robust_accuracy) {
            s.push_str(&format!(
                ", under attack {:.1}% → {:.1}%",
                100.0 * x,
                100.0 * y
            ));
        }
        s
    };
    let mut out = Vec::new();
    for m in c.models.iter().skip(1) {
        for (mi, r) in first.methods.iter().enumerate() {
            let (Some(x), Some(x0)) = (
                metric(m, mi, Metric::RelevanceMassAccuracy),
                metric(first, mi, Metric::RelevanceMassAccuracy),
            ) else {
                continue;
            };
            let p = x.wilcoxon_vs_first.map(|w| w.p_value).unwrap_or(f64::NAN);
            let verdict = if p.is_nan() || p >= 0.05 {
                "no significant difference"
            } else if x.mean > x0.mean {
                "more on the mask"
            } else {
                "less on the mask"
            };
            let pointing = match (
                metric(m, mi, Metric::PointingGame),
                metric(first, mi, Metric::PointingGame),
            ) {
                (Some(a), Some(b)) => format!("; pointing {:.2} → {:.2}", b.mean, a.mean),
                _ => String::new(),
            };
            out.push(format!(
                "Are the {} model's {} maps more on the mask than the {} model's? {verdict}: \
                 RMA {:.3} [{:.3}, {:.3}] → {:.3} [{:.3}, {:.3}] (paired Wilcoxon p = {:.2e}, {} \
                 images){pointing}{}.",
                m.name,
                label(&r.method),
                first.name,
                x0.mean,
                x0.ci95[0],
                x0.ci95[1],
                x.mean,
                x.ci95[0],
                x.ci95[1],
                p,
                x.n,
                if mi == 0 {
                    acc(first, m)
                } else {
                    String::new()
                }
            ));
        }
    }
    out
}

/// The methods whose maps the report measures: `opts.metric_methods`, or every shown method,
/// Gradient first when it is among them.
fn metric_methods(opts: &ReportOptions) -> Vec<String> {
    let mut m = if opts.metric_methods.is_empty() {
        opts.methods.clone()
    } else {
        opts.metric_methods.clone()
    };
    if let Some(k) = m.iter().position(|x| x == "gradient") {
        let g = m.remove(k);
        m.insert(0, g);
    }
    m
}

/// The rows of method `mi`'s metric table (a header, then per model each metric's mean, 95%
/// bootstrap interval and paired test against the first model); the numbers also go into
/// `summary["runs"][k]["metrics"][method]`.
fn metric_table(c: &Comparison, mi: usize, summary: &mut serde_json::Value) -> String {
    let mut out = String::from("<tr><th>model</th>");
    for ms in &c.models[0].methods[mi].metrics {
        let k = ms.metric;
        out.push_str(&format!(
            "<th>{} {}</th>",
            esc(k.short()),
            if k.higher_is_better() {
                "&uarr;"
            } else {
                "&darr;"
            }
        ));
    }
    out.push_str("</tr>");
    for (k, m) in c.models.iter().enumerate() {
        let r = &m.methods[mi];
        out.push_str(&format!("<tr><td>{}</td>", esc(&m.name)));
        for ms in &r.metrics {
            let p = ms
                .wilcoxon_vs_first
                .map(|w| {
                    let p = if w.p_value < 1e-4 {
                        "p &lt; 1e-4".to_string()
                    } else if w.p_value < 1e-3 {
                        "p &lt; 0.001".to_string()
                    } else {
                        format!("p = {:.3}", w.p_value)
                    };
                    format!("<br><small>{p}</small>")
                })
                .unwrap_or_default();
            out.push_str(&format!(
                "<td>{:.3}<br><small>[{:.3}, {:.3}]</small>{p}</td>",
                ms.mean, ms.ci95[0], ms.ci95[1]
            ));
            summary["runs"][k]["metrics"][&r.method][ms.metric.name()] = serde_json::json!({"mean": ms.mean, "ci95": ms.ci95, "n": ms.n, "wilcoxon_vs_first": ms.wilcoxon_vs_first});
        }
        out.push_str("</tr>");
    }
    out
}

/// The report's HTML body and summary (figures and comparison files written into
/// `opts.out`), for a page of its own or a section of a larger one.
pub fn section(
    runs: &[(String, PathBuf)],
    opts: &ReportOptions,
    device: &Device,
) -> Result<(String, serde_json::Value)> {
    if runs.is_empty() {
        return Err(Error::config(
            "run",
            "",
            "a report needs at least one run folder",
        ));
    }
    crate::fsutil::check_output_dir(&opts.out)?;
    let models = load_runs(runs, device)?;
    ensure_output_dir(&opts.out)?;
    let figdir = opts.out.join("figures");
    ensure_output_dir(&figdir)?;
    // The first run's data and test split are the common ground.
    let EvalImages {
        ds,
        labels,
        cache,
        indices: test,
        size,
    } = EvalImages::open(&models[0], None, Part::Test)?;
    let class_names = ds.class_names.clone();
    let mut summary = serde_json::json!({ "image_size": size, "runs": [] });
    let mut body = String::new();
    body.push_str("<p>Made by robustlens. Every number below is recomputed from the run folders; the same figures are in <code>figures/</code> (each chart as SVG with a PNG copy) and every number in <code>summary.json</code>.</p>\n");

    // 1. A sample of the data with masks.
    let lab = &labels;
    let sample: Vec<usize> = (0..class_names.len())
        .flat_map(|c| test.iter().copied().filter(move |&i| lab[i] == c).take(2))
        .collect();
    let hb = make_batch(&cache, &labels, &sample, None, &vec![0; sample.len()]);
    let plane = size * size;
    let mut data_grid = Grid {
        title: String::new(),
        col_labels: sample
            .iter()
            .map(|&i| class_names[labels[i]].clone())
            .collect(),
        row_labels: vec!["image".into(), "mask".into()],
        cells: vec![Vec::new(), Vec::new()],
    };
    for k in 0..sample.len() {
        let img = tensor_to_image(&hb.pixels[k * 3 * plane..(k + 1) * 3 * plane], size, size);
        let m = &hb.masks[k * plane..(k + 1) * plane];
        let has = hb.has_mask[k];
        let over = RgbImage::from_fn(size as u32, size as u32, |x, y| {
            let p = img.get_pixel(x, y).0;
            if has && m[y as usize * size + x as usize] > 127 {
                Rgb([((p[0] as u16 + 255) / 2) as u8, (p[1] / 2), (p[2] / 2)])
            } else {
                Rgb(p)
            }
        });
        data_grid.cells[0].push(img);
        data_grid.cells[1].push(over);
    }
    let data_img = data_grid.render(96)?;
    save_png(&data_img, &figdir.join("data_sample.png"))?;
    body.push_str("<h2>The data</h2>\n");
    let about = match &ds.kind {
        crate::data::dataset::DataKind::Synthetic(_) => " The class evidence lies only inside the lesion; hairs, ink, ruler ticks and dark corners are distractors that carry no class information.",
        crate::data::dataset::DataKind::Blocks(_) => " The class evidence lies only in the masked block; the other block is the same pattern in every image.",
        _ => "",
    };
    body.push_str(&figure(
        &data_img,
        "data sample",
        &format!("Two test images per class; below each, its ground-truth mask in red.{about}"),
    )?);

    // 2. Accuracy, clean and under attack.
    let mut bars = Vec::new();
    let mut rows = Vec::new();
    let mut confusions = String::new();
    let attack_idx: Vec<usize> = test.iter().copied().take(opts.robust_images).collect();
    for m in &models {
        // One attack for every model: the authors' evaluation eps (3 at 224 px), scaled.
        let eps = opts.robust_eps.unwrap_or_else(|| eps_from_224(3.0, size));
        let clean = evaluate_model(
            &m.model,
            &cache,
            &labels,
            &test,
            &class_names,
            32,
            None,
            device,
        )?;
        let robust = if attack_idx.is_empty() {
            None
        } else {
            let pgd = Pgd::evaluation(eps, opts.robust_steps);
            evaluate_model(
                &m.model,
                &cache,
                &labels,
                &attack_idx,
                &class_names,
                32,
                Some((&pgd, opts.seed)),
                device,
            )?
            .robust
            .map(|r| (*r, eps))
        };
        let cm = confusion_chart(
            &format!("{}: test split", m.name),
            &class_names,
            &clean.confusion,
        );
        write_chart(&figdir, &format!("confusion_{}", file_stem(&m.name)), &cm)?;
        confusions.push_str(&cm);
        bars.push((
            m.name.clone(),
            clean.balanced_accuracy,
            robust.as_ref().map(|r| r.0.accuracy),
        ));
        rows.push(format!(
            "<tr><td>{}</td><td>{:.1}%</td><td>{:.1}%</td><td>{}</td></tr>",
            esc(&m.name),
            100.0 * clean.accuracy,
            100.0 * clean.balanced_accuracy,
            robust
                .as_ref()
                .map(|(r, e)| format!("{:.1}% (eps {e:.3})", 100.0 * r.accuracy))
                .unwrap_or_else(|| "-".into())
        ));
        summary["runs"].as_array_mut().expect("array").push(serde_json::json!({
            "name": m.name, "dir": m.dir.display().to_string(), "command": m.cfg.train.recipe,
            "train_eps": m.cfg.train.adversarial.as_ref().map(|a| a.eps),
            "test": clean, "robust": robust.as_ref().map(|(r, e)| serde_json::json!({"eps": e, "steps": opts.robust_steps, "images": attack_idx.len(), "evaluation": r})),
        }));
    }
    body.push_str("<h2>Accuracy</h2>\n");
    body.push_str(&format!("<table><tr><th>model</th><th>accuracy</th><th>balanced accuracy</th><th>robust accuracy (L2 PGD, {} steps, {} test images, classes interleaved)</th></tr>{}</table>\n", opts.robust_steps, attack_idx.len(), rows.join("")));
    // The paper's reading of its Figure 13, said only of the kinds of runs on the page.
    let finetuned = models
        .iter()
        .any(|m| m.cfg.train.recipe == crate::config::Recipe::Finetune);
    let reading = if finetuned {
        "robust training trades clean accuracy for robustness; fine-tuning the last groups of a robust model recovers part of it"
    } else {
        "robust training trades clean accuracy for robustness"
    };
    body.push_str(&format!("<figure>{}<figcaption>Balanced accuracy on the test split (blue) and accuracy under an L2 PGD attack (red), as in the paper's Figure 13, where {reading}.</figcaption></figure>\n", bar_chart("Accuracy per model", ["balanced accuracy", "accuracy under PGD"], &bars)));
    body.push_str(&format!("<figure>{confusions}<figcaption>Confusion matrices on the test split: rows are the true classes, columns the predictions; each cell gives its count and its share of the row (files: <code>figures/confusion_*.svg</code>).</figcaption></figure>\n"));
    if opts.adversarial_images > 0 && !attack_idx.is_empty() {
        let shown: Vec<usize> = attack_idx
            .iter()
            .copied()
            .take(opts.adversarial_images)
            .collect();
        let b = make_batch(&cache, &labels, &shown, None, &vec![0; shown.len()]);
        let pgd = Pgd::evaluation(
            opts.robust_eps.unwrap_or_else(|| eps_from_224(3.0, size)),
            opts.robust_steps,
        );
        let (html, json) = galleries::adversarial(
            &models,
            &b.images(device)?,
            &b.labels,
            &class_names,
            &pgd,
            opts.seed,
            &figdir,
        )?;
        body.push_str("<h3>Adversarial examples</h3>\n");
        body.push_str(&html);
        summary["adversarial_examples"] = json;
    }

    // 3. Training curves.
    let curve = |key: &str| -> Vec<IntervalSeries> {
        models
            .iter()
            .map(|m| {
                let pts = metrics_series(&m.dir, key)
                    .into_iter()
                    .map(|(x, y)| (x, y, f64::NAN, f64::NAN))
                    .collect();
                (m.name.clone(), pts)
            })
            .collect()
    };
    let loss = interval_chart("training loss", &curve("train_loss"), "epoch", "loss", None);
    let val = interval_chart(
        "validation accuracy",
        &curve("val_acc"),
        "epoch",
        "accuracy",
        UNIT,
    );
    write_chart(&figdir, "training_loss", &loss)?;
    write_chart(&figdir, "validation_accuracy", &val)?;
    body.push_str("<h2>Training</h2>\n");
    body.push_str(&format!("<figure>{loss}{val}<figcaption>Training loss and validation accuracy per epoch, numbered across phases (head phase first, then the whole network; a fine-tuning run has its own epochs).</figcaption></figure>\n"));

    // 4. Saliency grids, images correctly classified by every model.
    let test_batch = make_batch(&cache, &labels, &test, None, &vec![0; test.len()]);
    let x_all = test_batch.images(device)?;
    let mut correct_all = vec![true; test.len()];
    let mut preds = Vec::new();
    for m in &models {
        let p = crate::attribution::predict_classes(&m.model, &x_all, 32)?;
        for (i, c) in correct_all.iter_mut().enumerate() {
            *c &= p[i] == labels[test[i]];
        }
        preds.push(p);
    }
    // Round-robin over classes, correctly classified images first.
    let mut chosen: Vec<usize> = Vec::new();
    for want_correct in [true, false] {
        let mut per_class: Vec<Vec<usize>> = vec![Vec::new(); class_names.len()];
        for i in 0..test.len() {
            if correct_all[i] == want_correct && !chosen.contains(&i) {
                per_class[labels[test[i]]].push(i);
            }
        }
        let mut k = 0;
        while chosen.len() < opts.show && per_class.iter().any(|v| k < v.len()) {
            for v in &per_class {
                if chosen.len() < opts.show && k < v.len() {
                    chosen.push(v[k]);
                }
            }
            k += 1;
        }
    }
    let xs = galleries::rows(&x_all, &chosen)?;
    let targets: Vec<usize> = chosen.iter().map(|&i| labels[test[i]]).collect();
    let mopts = MethodOptions {
        ig_steps: opts.ig_steps,
        ..method_options_for(size, opts.seed)
    };
    let base_display = DisplayOptions {
        cmap: Colormap::Viridis,
        shared: opts.shared_scale,
        ..DisplayOptions::default()
    };
    // Tiles at display size, so that the mask outline is one screen pixel wide.
    let k = 128u32.div_ceil(size as u32).max(1);
    let scale = if opts.shared_scale {
        "on one scale per method: per pixel the sum of |attribution| over RGB, divided by the 99th percentile of all that method's maps in the grid (every model and image) and capped at 1, so that maps compare across models and images (the cap is on the colour bar)"
    } else {
        "as in the paper, on a per-image scale: per pixel the sum of |attribution| over RGB, divided by that map's own 99th percentile and capped at 1"
    };
    body.push_str(&format!("<h2>Saliency maps</h2>\n<p>Rows: test images that every model classifies correctly (when there are enough); columns: the image, its lesion mask, then each model. Maps explain the true class and are drawn {scale}, in matplotlib's viridis. The red line is the outline of the ground-truth mask.</p>\n"));
    for method in &opts.methods {
        let att = by_name(method, &mopts)?;
        let mut g = Grid {
            title: att.describe(),
            col_labels: std::iter::once("image".to_string())
                .chain(std::iter::once("mask".to_string()))
                .chain(models.iter().map(|m| m.name.clone()))
                .collect(),
            row_labels: targets.iter().map(|&t| class_names[t].clone()).collect(),
            cells: Vec::new(),
        };
        let mut convergence = Vec::new();
        let maps: Vec<Tensor> = models
            .iter()
            .map(|m| {
                let (a, checked) = att.attribute_checked(&m.model, &xs, &targets)?;
                if let Some(c) = checked {
                    convergence.push((m.name.clone(), c));
                }
                Ok(a)
            })
            .collect::<Result<_>>()?;
        // every map's values, once: for a shared scale and for the tiles
        let values: Vec<Vec<Vec<f32>>> = maps
            .iter()
            .map(|a| crate::commands::per_image(a, chosen.len()))
            .collect::<Result<_>>()?;
        let display = if opts.shared_scale {
            let c = maps.first().map_or(Ok(3), |a| a.dim(1))?;
            let refs: Vec<&[f32]> = values.iter().flatten().map(|v| v.as_slice()).collect();
            base_display.sharing(&refs, c, size, size)
        } else {
            base_display
        };
        let legend = display.colorbar((128 * targets.len().min(3)) as u32);
        for (r, &ci) in chosen.iter().enumerate() {
            let px: Vec<f32> = xs.get(r)?.flatten_all()?.to_vec1()?;
            let mask = &test_batch.masks[ci * plane..(ci + 1) * plane];
            let inside: Vec<bool> = mask.iter().map(|&v| v > 127).collect();
            let has_mask = test_batch.has_mask[ci];
            let mut row = vec![
                upscale(&tensor_to_image(&px, size, size), k),
                upscale(
                    &RgbImage::from_fn(size as u32, size as u32, |x, y| {
                        let v = mask[y as usize * size + x as usize];
                        Rgb([v, v, v])
                    }),
                    k,
                ),
            ];
            for (a, v) in maps.iter().zip(&values) {
                let c = a.dim(1)?;
                let mut tile = upscale(&heatmap(&v[r], c, size, size, &display), k);
                if has_mask {
                    draw_contour(&mut tile, &inside, size, size, [255, 40, 40]);
                }
                row.push(tile);
            }
            g.cells.push(row);
        }
        let img = beside(&g.render(128)?, &legend);
        save_png(&img, &figdir.join(format!("saliency_{method}.png")))?;
        body.push_str(&format!("<h3>{}</h3>\n", esc(&att.describe())));
        body.push_str(&figure(&img, &format!("saliency grid {method}"), &format!("{}: the paper's Figure 1 for this method. Sharper maps that stay inside the red outline are what robust training promises. File: figures/saliency_{method}.png.", att.describe()))?);
        if constant_maps(&maps)? {
            let why = if method == "gradcam" {
                let (s, v) = (size.div_ceil(32), size / 16);
                format!(" At {size} px the last stage's feature map is {s}x{s} (a ViT's patch grid {v}x{v}), so Grad-CAM can only paint one value per cell of it: give a larger --image-size (64 px: 2x2, 224 px: 7x7).")
            } else {
                String::new()
            };
            body.push_str(&format!("<p class=\"warn\"><strong>Warning:</strong> the {} maps are constant over every image: their pictures and mask metrics say nothing about where the models look.{why}</p>\n", esc(&att.describe())));
            summary["constant_maps"][method] = serde_json::json!(true);
        }
        if !convergence.is_empty() {
            let (html, json) = ig_convergence(&convergence, mopts.ig_steps);
            body.push_str(&html);
            summary["ig_convergence"] = json;
        }
    }

    // 5. The sanity check of the Gradient maps of the shown images, and each model's failures.
    let gradient = by_name("gradient", &mopts)?;
    let (html, json) = galleries::sanity(
        &models,
        gradient.as_ref(),
        &xs,
        &targets,
        opts.seed,
        &figdir,
    )?;
    body.push_str("<h3>Sanity check</h3>\n");
    body.push_str(&html);
    summary["sanity"] = json;
    if opts.failures > 0 {
        let test_labels: Vec<usize> = test.iter().map(|&i| labels[i]).collect();
        let masks: Vec<Option<Vec<bool>>> = (0..test.len())
            .map(|k| {
                test_batch.has_mask[k].then(|| {
                    test_batch.masks[k * plane..(k + 1) * plane]
                        .iter()
                        .map(|&v| v > 127)
                        .collect()
                })
            })
            .collect();
        body.push_str("<h2>Failures</h2>\n");
        body.push_str(&galleries::failures(
            &models,
            &preds,
            &x_all,
            &test_labels,
            &masks,
            &class_names,
            &mopts,
            opts.failures,
            &figdir,
        )?);
    }

    // 6. Saliency metrics of every measured method, with bootstrap intervals and paired tests.
    if opts.metric_images > 0 {
        let copts = CompareOptions {
            methods: metric_methods(opts),
            metrics: opts.metrics.clone(),
            count: Some(opts.metric_images),
            seed: opts.seed,
            method_options: Some(mopts.clone()),
            ..Default::default()
        };
        let c = compare(&models, &copts, device, &|m| tracing::info!("report: {m}"))?;
        c.write(&opts.out)?;
        let mut tables = String::new();
        for (mi, method) in copts.methods.iter().enumerate() {
            let title = by_name(method, &mopts)?.describe();
            tables.push_str(&format!(
                "<h3>{}</h3>\n<table>{}</table>\n",
                esc(&title),
                metric_table(&c, mi, &mut summary)
            ));
        }
        let lesion_share = c.mean_lesion_area.unwrap_or(0.0);
        summary["mean_lesion_area"] = serde_json::json!(lesion_share);
        summary["comparison"] =
            serde_json::to_value(&c).map_err(|e| Error::conflict(e.to_string()))?;
        let found = findings(&c);
        if !found.is_empty() {
            let items: String = found
                .iter()
                .map(|f| format!("<li>{}</li>", esc(f)))
                .collect();
            body = format!("<h2>What this run found</h2>\n<ul>{items}</ul>\n{body}");
            summary["findings"] = serde_json::json!(found);
        }
        body.push_str("<h2>Saliency metrics</h2>\n");
        let unmeasured: Vec<String> = opts
            .methods
            .iter()
            .filter(|m| !copts.methods.contains(m))
            .map(|m| by_name(m, &mopts).map(|a| a.describe()))
            .collect::<Result<_>>()?;
        if !unmeasured.is_empty() {
            body.push_str(&format!(
                "<p>Shown above but not measured here: {} (<code>report --metric-method</code> measures them).</p>\n",
                esc(&unmeasured.join("; "))
            ));
        }
        body.push_str(&tables);
        body.push_str(&format!("<p>The maps of {} test images (true class), of each method with the settings of the grids above. Against the lesion mask: RMA, the share of attribution inside the lesion (a map blind to the lesion scores about the lesion's share of the image, here {lesion_share:.3}); RRA, the share of the |lesion| most salient pixels inside it; pointing, whether the most salient pixel is inside; ROC-AUC of the map as a lesion detector. Without a mask: Gini (0 uniform, 1 one pixel) and entropy (lower is more concentrated); deletion and insertion areas (RISE: the class probability as the most salient pixels are removed, resp. revealed over a blurred image); faithfulness correlation (Bhatt et al.). Each cell: mean, 95% bootstrap interval, and the p-value of a paired Wilcoxon signed-rank test against the first model (of the same method). Also in <code>comparison.md</code>, <code>comparison.csv</code> and <code>comparison.json</code>.</p>\n", c.images.len()));
        let first = by_name(&copts.methods[0], &mopts)?.describe();
        body.push_str(&curve_charts(&c, &first, &figdir)?);
    }
    Ok((body, summary))
}

/// Whether every map of every model is constant over its image (Grad-CAM on a 1x1 stage).
fn constant_maps(maps: &[Tensor]) -> Result<bool> {
    for a in maps {
        let flat = a.flatten_from(1)?;
        let hi: Vec<f32> = flat.max(1)?.to_vec1()?;
        let lo: Vec<f32> = flat.min(1)?.to_vec1()?;
        let varies = hi
            .iter()
            .zip(&lo)
            .any(|(h, l)| h - l > 1e-6 * h.abs().max(l.abs()).max(f32::MIN_POSITIVE));
        if varies {
            return Ok(false);
        }
    }
    Ok(!maps.is_empty())
}
