//! The report's galleries and its sanity chart: adversarial examples with their
//! perturbations, each model's misclassified test images with their maps, and the cascading
//! model-randomisation check (Adebayo et al. 2018) as a plot.

use crate::adversarial::Pgd;
use crate::attribution::{by_name, Attribution, MethodOptions};
use crate::commands::argmax;
use crate::eval::sanity::cascading_randomisation;
use crate::eval::stats::t_interval;
use crate::fsutil::file_stem;
use crate::model::Classifier;
use crate::report::display::{draw_contour, heatmap, tensor_to_image, DisplayOptions};
use crate::report::grid::{captioned, Grid};
use crate::report::html::{esc, figure};
use crate::report::plot::{interval_chart, IntervalSeries, SIGNED_UNIT};
use crate::report::png::{save_png, upscale};
use crate::report::raster::write_chart;
use crate::rng::SeededRng;
use crate::run::RunModel;
use crate::Result;
use candle_core::Tensor;
use image::RgbImage;
use std::path::Path;

/// Display size of a gallery tile, in pixels.
const TILE: u32 = 128;

/// The softmax probabilities `[n][classes]` of `x` under `model`.
fn probabilities(model: &dyn Classifier, x: &Tensor) -> Result<Vec<Vec<f32>>> {
    let logits = model.logits(x)?.detach();
    Ok(candle_nn::ops::softmax_last_dim(&logits)?.to_vec2()?)
}

/// The images `idx` (in that order) of a batch.
pub(super) fn rows(x: &Tensor, idx: &[usize]) -> Result<Tensor> {
    let idx: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
    Ok(x.index_select(&Tensor::new(idx.as_slice(), x.device())?, 0)?)
}

/// Image `i` of a `[n, 3, h, w]` batch as a picture at display size.
fn picture(x: &Tensor, i: usize) -> Result<RgbImage> {
    let (_, _, h, w) = x.dims4()?;
    let v: Vec<f32> = x.get(i)?.flatten_all()?.to_vec1()?;
    Ok(upscale(&tensor_to_image(&v, h, w), TILE.div_ceil(w as u32)))
}

/// A perturbation `[3, h, w]` magnified for display: 0.5 + gain * δ with gain = 0.5 / max |δ|
/// (the largest component reaches black or white). Returns the picture and the gain.
fn perturbation_picture(d: &[f32], h: usize, w: usize) -> (RgbImage, f32) {
    let amax = d.iter().fold(0f32, |a, v| a.max(v.abs()));
    let gain = if amax > 0.0 { 0.5 / amax } else { 0.0 };
    let shown: Vec<f32> = d.iter().map(|v| 0.5 + gain * v).collect();
    let img = upscale(&tensor_to_image(&shown, h, w), TILE.div_ceil(w as u32));
    (img, gain)
}

/// Adversarial examples: per model (rows), each of the images of `x` (true classes
/// `labels`) clean, attacked by `pgd`, and the perturbation magnified, with the model's
/// prediction and the perturbation's L2 norm. Writes `figures/adversarial.png`; returns the
/// HTML and the numbers.
#[allow(clippy::too_many_arguments)]
pub(super) fn adversarial(
    models: &[RunModel],
    x: &Tensor,
    labels: &[usize],
    class_names: &[String],
    pgd: &Pgd,
    seed: u64,
    figdir: &Path,
) -> Result<(String, serde_json::Value)> {
    let (n, _, h, w) = x.dims4()?;
    let mut grid = Grid {
        title: String::new(),
        col_labels: (0..n)
            .flat_map(|i| {
                [
                    format!("image {}: {}", i + 1, class_names[labels[i]]),
                    "attacked".to_string(),
                    "perturbation".to_string(),
                ]
            })
            .collect(),
        row_labels: models.iter().map(|m| m.name.clone()).collect(),
        cells: Vec::new(),
    };
    let mut json = Vec::new();
    for m in models {
        // every model is attacked from the same random state, as in the accuracy table
        let mut rng = SeededRng::new(seed);
        let adv = pgd.attack(&m.model, x, labels, None, &mut rng)?.images;
        let (p0, p1) = (probabilities(&m.model, x)?, probabilities(&m.model, &adv)?);
        let delta = adv.sub(x)?;
        let mut row = Vec::new();
        let mut per_image = Vec::new();
        for i in 0..n {
            let d: Vec<f32> = delta.get(i)?.flatten_all()?.to_vec1()?;
            let norm = d.iter().map(|v| v * v).sum::<f32>().sqrt();
            let (c0, c1) = (argmax(&p0[i]), argmax(&p1[i]));
            let (pert, gain) = perturbation_picture(&d, h, w);
            row.push(captioned(
                &picture(x, i)?,
                &format!("{} {:.2}", class_names[c0], p0[i][c0]),
            ));
            row.push(captioned(
                &picture(&adv, i)?,
                &format!("{} {:.2}", class_names[c1], p1[i][c1]),
            ));
            // PGD keeps the clean image when no step raised its loss (use_best): a saturated
            // softmax (p = 1 in float32) has a loss gradient of exactly 0, and a model whose
            // output barely depends on the input (an untrained one) may gain nothing either
            let label = if norm > 0.0 {
                format!("L2 {norm:.3}, x{gain:.0}")
            } else {
                "L2 0: no step raised the loss".to_string()
            };
            row.push(captioned(&pert, &label));
            per_image.push(serde_json::json!({
                "label": class_names[labels[i]], "clean": class_names[c0], "clean_p": p0[i][c0],
                "attacked": class_names[c1], "attacked_p": p1[i][c1], "l2": norm, "gain": gain,
            }));
        }
        grid.cells.push(row);
        json.push(serde_json::json!({ "name": m.name, "images": per_image }));
    }
    let img = grid.render(TILE)?;
    save_png(&img, &figdir.join("adversarial.png"))?;
    let html = figure(
        &img,
        "adversarial examples",
        &format!(
            "Adversarial examples (L2 PGD, eps {:.3}, {} steps, the accuracy table's attack): per \
             model, each image clean and attacked with the model's prediction and its \
             probability, then the perturbation magnified (mid-grey is zero; xN is the \
             magnification, L2 its norm). A robust model keeps its prediction, and its \
             perturbation tends to look like the features it uses. File: \
             figures/adversarial.png.",
            pgd.eps, pgd.steps
        ),
    )?;
    Ok((html, serde_json::json!(json)))
}

/// Each model's misclassified test images among `x` (up to `max`), with the Gradient map of
/// the class it predicted and the mask outline. Writes `figures/failures_<model>.png`.
#[allow(clippy::too_many_arguments)]
pub(super) fn failures(
    models: &[RunModel],
    preds: &[Vec<usize>],
    x: &Tensor,
    labels: &[usize],
    masks: &[Option<Vec<bool>>],
    class_names: &[String],
    mopts: &MethodOptions,
    max: usize,
    figdir: &Path,
) -> Result<String> {
    let (_, _, h, w) = x.dims4()?;
    let gradient = by_name("gradient", mopts)?;
    let display = DisplayOptions {
        cmap: crate::report::display::Colormap::Viridis,
        ..DisplayOptions::default()
    };
    let mut html = String::new();
    let mut none = Vec::new();
    for (m, pred) in models.iter().zip(preds) {
        let wrong: Vec<usize> = (0..labels.len())
            .filter(|&i| pred[i] != labels[i])
            .collect();
        if wrong.is_empty() {
            none.push(esc(&m.name));
            continue;
        }
        let shown: Vec<usize> = wrong.iter().copied().take(max).collect();
        let xs = rows(x, &shown)?;
        let targets: Vec<usize> = shown.iter().map(|&i| pred[i]).collect();
        let maps = gradient.attribute(&m.model, &xs, &targets)?;
        let probs = probabilities(&m.model, &xs)?;
        let c = maps.dim(1)?;
        let mut images = Vec::new();
        let mut heat = Vec::new();
        for (r, &i) in shown.iter().enumerate() {
            images.push(captioned(
                &picture(&xs, r)?,
                &format!("p = {:.2}", probs[r][pred[i]]),
            ));
            let v: Vec<f32> = maps.get(r)?.flatten_all()?.to_vec1()?;
            let k = TILE.div_ceil(w as u32);
            let mut tile = upscale(&heatmap(&v, c, h, w, &display), k);
            if let Some(mask) = &masks[i] {
                draw_contour(&mut tile, mask, w, h, [255, 40, 40]);
            }
            // the same height as the captioned image tiles
            heat.push(captioned(&tile, ""));
        }
        let grid = Grid {
            title: String::new(),
            col_labels: shown
                .iter()
                .map(|&i| format!("{} → {}", class_names[labels[i]], class_names[pred[i]]))
                .collect(),
            row_labels: vec!["image".into(), "Gradient".into()],
            cells: vec![images, heat],
        };
        let file = format!("failures_{}.png", file_stem(&m.name));
        let img = grid.render(TILE)?;
        save_png(&img, &figdir.join(&file))?;
        html.push_str(&format!("<h3>{}</h3>\n", esc(&m.name)));
        html.push_str(&figure(
            &img,
            &format!("failures of {}", m.name),
            &format!(
                "{} of the {} test images that {} gets wrong ({} shown): above each, the true \
                 class → the prediction; below the image, the predicted class's probability; \
                 below it, the Gradient map of the predicted class (what drove the wrong call), \
                 with the mask outline in red. File: figures/{file}.",
                wrong.len(),
                labels.len(),
                esc(&m.name),
                shown.len()
            ),
        )?);
    }
    if !none.is_empty() {
        html.push_str(&format!(
            "<p>No misclassified test image for {}.</p>\n",
            none.join(", ")
        ));
    }
    Ok(html)
}

/// The cascading model-randomisation check of `method`'s maps of `x` for every model: the
/// Spearman and SSIM similarity to the trained model's maps as layer groups are randomised
/// from the top, mean and 95% interval over the images, as two charts
/// (`figures/sanity_spearman.svg`, `figures/sanity_ssim.svg`).
pub(super) fn sanity(
    models: &[RunModel],
    method: &dyn Attribution,
    x: &Tensor,
    targets: &[usize],
    seed: u64,
    figdir: &Path,
) -> Result<(String, serde_json::Value)> {
    let mut spearman: Vec<IntervalSeries> = Vec::new();
    let mut ssim: Vec<IntervalSeries> = Vec::new();
    let mut json = Vec::new();
    for m in models {
        let steps = cascading_randomisation(m.model.as_ref(), method, x, targets, seed)?;
        let pts = |values: &dyn Fn(&crate::eval::sanity::SanityStep) -> &[f64]| {
            steps
                .iter()
                .enumerate()
                .map(|(k, s)| {
                    let (mean, lo, hi) = t_interval(values(s));
                    ((k + 1) as f64, mean, lo, hi)
                })
                .collect::<Vec<_>>()
        };
        spearman.push((m.name.clone(), pts(&|s| &s.per_image_spearman)));
        ssim.push((m.name.clone(), pts(&|s| &s.per_image_ssim)));
        json.push(serde_json::json!({ "name": m.name, "steps": steps }));
    }
    let xlabel = "layer groups randomised, top down (1: the head, 2: + group 4, … 5: all)";
    let a = interval_chart(
        "Spearman rank correlation",
        &spearman,
        xlabel,
        "Spearman",
        SIGNED_UNIT,
    );
    let b = interval_chart("structural similarity", &ssim, xlabel, "SSIM", SIGNED_UNIT);
    write_chart(figdir, "sanity_spearman", &a)?;
    write_chart(figdir, "sanity_ssim", &b)?;
    let html = format!(
        "<figure>{a}{b}<figcaption>The model-randomisation sanity check (Adebayo et al. 2018) of \
         the {} maps of the {} images above: the layer groups are replaced by random weights \
         from the classifier down, and each randomised model's maps (sum of |attribution| over \
         RGB) are compared with the trained model's. A method that explains the model falls \
         towards 0 as more of it is randomised; one that stays high shows the image, not the \
         model. Mean over the images with 95% t intervals. Files: \
         <code>figures/sanity_spearman.svg</code>, <code>figures/sanity_ssim.svg</code>.\
         </figcaption></figure>\n",
        esc(&method.describe()),
        targets.len()
    );
    Ok((html, serde_json::json!(json)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perturbations_are_magnified_to_the_full_range_around_grey() {
        // one pixel, three channels: +0.02, -0.04, 0
        let (img, gain) = perturbation_picture(&[0.02, -0.04, 0.0], 1, 1);
        assert!((gain - 12.5).abs() < 1e-4);
        let p = img.get_pixel(0, 0).0;
        // 0.5 + 12.5 * 0.02 = 0.75, 0.5 - 0.5 = 0, 0.5
        assert_eq!(p, [191, 0, 128]);
        let (flat, g) = perturbation_picture(&[0.0; 3], 1, 1);
        assert_eq!((flat.get_pixel(0, 0).0, g), ([128, 128, 128], 0.0));
        assert_eq!(argmax(&[0.1, 0.7, 0.2]), 1);
    }
}
