//! Comparing models by their saliency maps: every metric per image, the mean with a 95%
//! bootstrap interval per model and method, a paired Wilcoxon signed-rank test of each model
//! against the first, seed brittleness between runs that differ only in their seed, and the
//! best eps per image among robust runs (paper Appendix C.2 and C.3).

use super::faithfulness::{
    deletion_insertion, faithfulness_correlation, CorrelationOptions, CurveOptions,
};
use super::saliency::{
    artifact_mass, entropy, gini, pointing_game, relevance_mass_accuracy, relevance_rank_accuracy,
    roc_auc,
};
use super::sanity::map_similarity;
use super::stats::{bootstrap_ci, wilcoxon, Wilcoxon};
use crate::adversarial::Pgd;
use crate::attribution::{by_name, MethodOptions};
use crate::config::Recipe;
use crate::data::split::Part;
use crate::data::synthetic::Artifact;
use crate::eval::classification::evaluate_model;
use crate::fsutil::{ensure_output_dir, write_atomic, write_json_atomic};
use crate::report::display::{reduce_channels, Reduce};
use crate::run::{EvalImages, RunModel};
use crate::{Error, Result};
use candle_core::Device;
use serde::Serialize;
use std::path::Path;

/// A metric of `compare`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    RelevanceMassAccuracy,
    RelevanceRankAccuracy,
    PointingGame,
    RocAuc,
    Gini,
    Entropy,
    Deletion,
    Insertion,
    FaithfulnessCorrelation,
    /// Share of the map on every artifact (hairs, ruler, ink, dark corners) together.
    ArtifactMass,
    #[serde(rename = "artifact_mass_hair")]
    HairMass,
    #[serde(rename = "artifact_mass_ruler")]
    RulerMass,
    #[serde(rename = "artifact_mass_ink")]
    InkMass,
    #[serde(rename = "artifact_mass_corners")]
    CornerMass,
}

impl Metric {
    /// The artifact-mass metrics (`--metrics artifacts`): every kind together, then each.
    pub const ARTIFACTS: [Metric; 5] = [
        Metric::ArtifactMass,
        Metric::HairMass,
        Metric::RulerMass,
        Metric::InkMass,
        Metric::CornerMass,
    ];

    /// The artifact kind a per-kind artifact metric measures (`None` for all together or a
    /// metric that is not an artifact mass).
    pub fn artifact(&self) -> Option<Artifact> {
        match self {
            Metric::HairMass => Some(Artifact::Hair),
            Metric::RulerMass => Some(Artifact::Ruler),
            Metric::InkMass => Some(Artifact::Ink),
            Metric::CornerMass => Some(Artifact::Corners),
            _ => None,
        }
    }

    /// Whether it needs the artifact masks (the built-in lesion set has them).
    pub fn needs_artifacts(&self) -> bool {
        Self::ARTIFACTS.contains(self)
    }

    /// Whether it runs the model again on perturbed images (deletion, insertion and
    /// faithfulness correlation: about a hundred forward passes per image and method each).
    pub fn perturbs(&self) -> bool {
        matches!(
            self,
            Metric::Deletion | Metric::Insertion | Metric::FaithfulnessCorrelation
        )
    }

    pub const ALL: [Metric; 9] = [
        Metric::RelevanceMassAccuracy,
        Metric::RelevanceRankAccuracy,
        Metric::PointingGame,
        Metric::RocAuc,
        Metric::Gini,
        Metric::Entropy,
        Metric::Deletion,
        Metric::Insertion,
        Metric::FaithfulnessCorrelation,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Metric::RelevanceMassAccuracy => "relevance_mass_accuracy",
            Metric::RelevanceRankAccuracy => "relevance_rank_accuracy",
            Metric::PointingGame => "pointing_game",
            Metric::RocAuc => "roc_auc",
            Metric::Gini => "gini",
            Metric::Entropy => "entropy",
            Metric::Deletion => "deletion_auc",
            Metric::Insertion => "insertion_auc",
            Metric::FaithfulnessCorrelation => "faithfulness_correlation",
            Metric::ArtifactMass => "artifact_mass",
            Metric::HairMass => "artifact_mass_hair",
            Metric::RulerMass => "artifact_mass_ruler",
            Metric::InkMass => "artifact_mass_ink",
            Metric::CornerMass => "artifact_mass_corners",
        }
    }

    /// A short column heading.
    pub fn short(&self) -> &'static str {
        match self {
            Metric::RelevanceMassAccuracy => "RMA",
            Metric::RelevanceRankAccuracy => "RRA",
            Metric::PointingGame => "pointing",
            Metric::RocAuc => "ROC-AUC",
            Metric::Gini => "Gini",
            Metric::Entropy => "entropy",
            Metric::Deletion => "deletion",
            Metric::Insertion => "insertion",
            Metric::FaithfulnessCorrelation => "faithfulness",
            Metric::ArtifactMass => "artifacts",
            Metric::HairMass => "hair",
            Metric::RulerMass => "ruler",
            Metric::InkMass => "ink",
            Metric::CornerMass => "corners",
        }
    }

    /// Whether larger is better (entropy, deletion AUC and artifact mass: smaller is better).
    pub fn higher_is_better(&self) -> bool {
        !matches!(self, Metric::Entropy | Metric::Deletion) && !self.needs_artifacts()
    }

    /// Whether it needs a lesion mask.
    pub fn needs_mask(&self) -> bool {
        matches!(
            self,
            Metric::RelevanceMassAccuracy
                | Metric::RelevanceRankAccuracy
                | Metric::PointingGame
                | Metric::RocAuc
        )
    }

    /// Whether it runs the model (deletion, insertion, faithfulness correlation).
    pub fn needs_model(&self) -> bool {
        matches!(
            self,
            Metric::Deletion | Metric::Insertion | Metric::FaithfulnessCorrelation
        )
    }

    /// Parses a name (`rma`, `gini`, `deletion`, ... or the full names); `all` for the nine
    /// lesion and faithfulness metrics, `artifacts` for the five artifact masses.
    pub fn parse_list(s: &str) -> Result<Vec<Metric>> {
        let mut out: Vec<Metric> = Vec::new();
        for part in s.split(',').map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let group: &[Metric] = match part {
                "all" => &Metric::ALL,
                "artifacts" => &Metric::ARTIFACTS,
                _ => &[],
            };
            if !group.is_empty() {
                for m in group {
                    if !out.contains(m) {
                        out.push(*m);
                    }
                }
                continue;
            }
            let m = match part.to_ascii_lowercase().as_str() {
                "rma" | "relevance_mass_accuracy" | "mass" => Metric::RelevanceMassAccuracy,
                "rra" | "relevance_rank_accuracy" | "rank" => Metric::RelevanceRankAccuracy,
                "pointing" | "pointing_game" => Metric::PointingGame,
                "auc" | "roc_auc" | "roc-auc" => Metric::RocAuc,
                "gini" | "sparseness" => Metric::Gini,
                "entropy" | "complexity" => Metric::Entropy,
                "deletion" | "deletion_auc" => Metric::Deletion,
                "insertion" | "insertion_auc" => Metric::Insertion,
                "faithfulness" | "faithfulness_correlation" => Metric::FaithfulnessCorrelation,
                "artifact" | "artifact_mass" => Metric::ArtifactMass,
                "hair" | "artifact_mass_hair" => Metric::HairMass,
                "ruler" | "artifact_mass_ruler" => Metric::RulerMass,
                "ink" | "artifact_mass_ink" => Metric::InkMass,
                "corners" | "artifact_mass_corners" => Metric::CornerMass,
                other => {
                    return Err(Error::config(
                        "metrics",
                        other,
                        format!("unknown metric `{other}`; use rma, rra, pointing, auc, gini, entropy, deletion, insertion, faithfulness, all, or artifact, hair, ruler, ink, corners, artifacts"),
                    ))
                }
            };
            if !out.contains(&m) {
                out.push(m);
            }
        }
        if out.is_empty() {
            return Err(Error::config("metrics", "", "name at least one metric"));
        }
        Ok(out)
    }
}

/// Options of [`compare`].
#[derive(Debug, Clone)]
pub struct CompareOptions {
    pub methods: Vec<String>,
    pub metrics: Vec<Metric>,
    /// `None`: the first run's data and split.
    pub data: Option<String>,
    pub part: Part,
    /// Images (the first `count` of the part, classes interleaved; all when `None`).
    pub count: Option<usize>,
    /// Robust accuracy under L2 PGD with this eps (at the working size) on the compared
    /// images, when given.
    pub attack_eps: Option<f32>,
    pub attack_steps: usize,
    /// The metric that picks each image's best eps.
    pub best_by: Metric,
    pub bootstrap: usize,
    pub seed: u64,
    /// Method settings; `None`: sized to the image (see [`method_options_for`]).
    pub method_options: Option<MethodOptions>,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            methods: vec!["gradient".into()],
            metrics: Metric::ALL.to_vec(),
            data: None,
            part: Part::Test,
            count: Some(50),
            attack_eps: None,
            attack_steps: 10,
            best_by: Metric::RelevanceMassAccuracy,
            bootstrap: 1000,
            seed: 0,
            method_options: None,
        }
    }
}

/// Method settings for comparisons at `size` px: the paper's defaults with fewer IG steps
/// and SmoothGrad samples (16 each) and occlusion windows of a quarter of the image.
pub fn method_options_for(size: usize, seed: u64) -> MethodOptions {
    MethodOptions {
        ig_steps: 16,
        samples: 16,
        window: (size / 4).max(2),
        stride: (size / 8).max(1),
        internal_batch_size: 32,
        seed,
        ..Default::default()
    }
}

/// Mean, interval and test of one metric for one model and method.
#[derive(Debug, Clone, Serialize)]
pub struct MetricSummary {
    pub metric: Metric,
    /// Images with a defined value.
    pub n: usize,
    pub mean: f64,
    pub ci95: [f64; 2],
    /// Paired test against the first run (absent for the first run itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wilcoxon_vs_first: Option<Wilcoxon>,
}

/// One model's results for one method.
#[derive(Debug, Clone, Serialize)]
pub struct MethodResult {
    pub method: String,
    pub metrics: Vec<MetricSummary>,
    /// Per image values, in the order of `Comparison::images` (NaN: undefined).
    pub per_image: std::collections::BTreeMap<String, Vec<f64>>,
    /// The mean deletion and insertion curves, when those metrics ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub curves: Option<MeanCurves>,
    /// Integrated Gradients only: how far the attributions are from adding up to the logit
    /// change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ig_convergence: Option<IgConvergence>,
}

/// IG's completeness over the compared images: |sum(attr) - (f(x) - f(x'))| as a share of
/// |f(x) - f(x')|.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IgConvergence {
    pub steps: usize,
    pub median_relative_delta: f64,
    pub largest_relative_delta: f64,
    /// Images whose relative delta exceeds 5%.
    pub images_over_5pct: usize,
    pub images: usize,
}

impl IgConvergence {
    pub fn of(c: &[crate::attribution::Convergence], steps: usize) -> Self {
        let mut rel: Vec<f64> = c.iter().map(|c| c.relative() as f64).collect();
        rel.sort_by(f64::total_cmp);
        IgConvergence {
            steps,
            median_relative_delta: rel.get(rel.len() / 2).copied().unwrap_or(0.0),
            largest_relative_delta: rel.last().copied().unwrap_or(0.0),
            images_over_5pct: rel.iter().filter(|&&r| r > 0.05).count(),
            images: rel.len(),
        }
    }
}

/// A curve's mean over images with its 95% interval (mean ± 1.96 standard errors) per point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Band {
    pub mean: Vec<f64>,
    pub low: Vec<f64>,
    pub high: Vec<f64>,
}

impl Band {
    /// From curves of equal length (one per image).
    pub fn of(curves: &[Vec<f64>]) -> Band {
        let len = curves.first().map_or(0, |c| c.len());
        let n = curves.len() as f64;
        let mut b = Band {
            mean: Vec::with_capacity(len),
            low: Vec::with_capacity(len),
            high: Vec::with_capacity(len),
        };
        for j in 0..len {
            let m = curves.iter().map(|c| c[j]).sum::<f64>() / n;
            let var = if n > 1.0 {
                curves.iter().map(|c| (c[j] - m).powi(2)).sum::<f64>() / (n - 1.0)
            } else {
                0.0
            };
            let half = 1.96 * (var / n).sqrt();
            b.mean.push(m);
            b.low.push(m - half);
            b.high.push(m + half);
        }
        b
    }
}

/// Mean deletion and insertion curves of one model and method over the compared images.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeanCurves {
    /// Share of pixels removed (inserted) at each point.
    pub fractions: Vec<f64>,
    /// Softmax probability of the target class.
    pub deletion: Band,
    pub insertion: Band,
    pub images: usize,
}

/// One model's row.
#[derive(Debug, Clone, Serialize)]
pub struct ModelResult {
    pub name: String,
    pub dir: String,
    pub train_eps: f32,
    pub seed: u64,
    pub clean_accuracy: f64,
    pub clean_images: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub robust_accuracy: Option<f64>,
    pub methods: Vec<MethodResult>,
}

/// Mean pairwise similarity between the maps of runs that differ only in their seed.
#[derive(Debug, Clone, Serialize)]
pub struct Brittleness {
    pub runs: Vec<String>,
    pub method: String,
    pub pairs: usize,
    pub spearman: f64,
    pub ssim: f64,
}

/// Which eps gives each image its best map.
#[derive(Debug, Clone, Serialize)]
pub struct BestEps {
    pub method: String,
    pub metric: Metric,
    /// Per image, the chosen run's training eps (working size).
    pub per_image: Vec<f32>,
    /// (eps, images) for every eps among the runs, ascending.
    pub histogram: Vec<(f32, usize)>,
}

/// Everything `compare` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub image_size: usize,
    pub split: String,
    pub images: Vec<String>,
    pub images_with_mask: usize,
    /// Mean share of the image covered by the lesion, over the images with a mask.
    pub mean_lesion_area: Option<f64>,
    pub seed: u64,
    pub bootstrap_resamples: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attack: Option<serde_json::Value>,
    pub models: Vec<ModelResult>,
    pub brittleness: Vec<Brittleness>,
    pub best_eps: Vec<BestEps>,
}

/// One image's artifact masks: (kind, pixels).
type ArtifactPixels = Vec<(Artifact, Vec<bool>)>;

/// Compares `models` on the same images.
pub fn compare(
    models: &[RunModel],
    opts: &CompareOptions,
    device: &Device,
    progress: &dyn Fn(&str),
) -> Result<Comparison> {
    if models.is_empty() {
        return Err(Error::config(
            "run",
            "",
            "compare needs at least one run folder",
        ));
    }
    if opts.methods.is_empty() {
        return Err(Error::config("method", "", "name at least one method"));
    }
    let data = EvalImages::open(&models[0], opts.data.as_deref(), opts.part)?;
    let size = data.size;
    let mut chosen = data.indices.clone();
    if let Some(c) = opts.count {
        if c == 0 {
            return Err(Error::config("count", 0, "compare at least one image"));
        }
        chosen.truncate(c);
    }
    let hb = data.batch(&chosen);
    let x = hb.images(device)?;
    let targets: Vec<usize> = hb.labels.clone();
    let plane = size * size;
    let masks: Vec<Option<Vec<bool>>> = (0..chosen.len())
        .map(|i| {
            hb.has_mask[i].then(|| {
                hb.masks[i * plane..(i + 1) * plane]
                    .iter()
                    .map(|&v| v > 127)
                    .collect()
            })
        })
        .collect();
    // Artifact masks per image (kind, pixels), when the data set has them.
    let needs_artifacts = opts.metrics.iter().any(|k| k.needs_artifacts());
    let artifacts: Vec<Option<ArtifactPixels>> = chosen
        .iter()
        .map(|&i| {
            if !needs_artifacts {
                return Ok(None);
            }
            Ok(data.ds.artifact_masks(i, size)?.map(|ms| {
                ms.into_iter()
                    .map(|(a, m)| (a, m.as_raw().iter().map(|&v| v > 127).collect()))
                    .collect()
            }))
        })
        .collect::<Result<_>>()?;
    let mopts = opts
        .method_options
        .clone()
        .unwrap_or_else(|| method_options_for(size, opts.seed));
    let curve = CurveOptions::for_size(size);
    let corr = CorrelationOptions::for_size(size, opts.seed);
    let pgd = opts
        .attack_eps
        .map(|eps| Pgd::evaluation(eps, opts.attack_steps));
    if let Some(e) = opts.attack_eps {
        if !(e.is_finite() && e > 0.0) {
            return Err(Error::config("attack-eps", e, "must be a number > 0"));
        }
    }
    let needs_curve = opts
        .metrics
        .iter()
        .any(|k| matches!(k, Metric::Deletion | Metric::Insertion));
    let with_mask: Vec<&Vec<bool>> = masks.iter().flatten().collect();
    let mean_lesion_area = (!with_mask.is_empty()).then(|| {
        with_mask
            .iter()
            .map(|m| m.iter().filter(|&&v| v).count() as f64 / plane as f64)
            .sum::<f64>()
            / with_mask.len() as f64
    });
    // abs maps per (model, method), for brittleness
    let mut maps: Vec<Vec<Vec<Vec<f32>>>> = Vec::new();
    let mut results = Vec::new();
    for m in models {
        progress(&format!("{}: accuracy", m.name));
        let clean = evaluate_model(
            &m.model,
            &data.cache,
            &data.labels,
            &data.indices,
            &data.ds.class_names,
            32,
            None,
            device,
        )?;
        let robust = match &pgd {
            Some(p) => evaluate_model(
                &m.model,
                &data.cache,
                &data.labels,
                &chosen,
                &data.ds.class_names,
                32,
                Some((p, opts.seed)),
                device,
            )?
            .robust
            .map(|r| r.accuracy),
            None => None,
        };
        let mut mres = Vec::new();
        let mut mmaps = Vec::new();
        for method in &opts.methods {
            progress(&format!("{}: {method} maps", m.name));
            let (a, checked) =
                by_name(method, &mopts)?.attribute_checked(&m.model, &x, &targets)?;
            let ig_convergence = checked.map(|c| IgConvergence::of(&c, mopts.ig_steps));
            let c = a.dim(1)?;
            let mut per: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
            let mut abs_all = Vec::new();
            let mut del_curves = Vec::new();
            let mut ins_curves = Vec::new();
            let mut fractions = Vec::new();
            for (i, mask) in masks.iter().enumerate() {
                let v: Vec<f32> = a.get(i)?.flatten_all()?.to_vec1()?;
                let abs = reduce_channels(&v, c, size, size, Reduce::AbsSum);
                let curves = if needs_curve {
                    Some(deletion_insertion(
                        &m.model,
                        &x.get(i)?,
                        targets[i],
                        &abs,
                        &curve,
                    )?)
                } else {
                    None
                };
                if let Some((d, ins)) = &curves {
                    fractions.clone_from(&d.fractions);
                    del_curves.push(d.probs.clone());
                    ins_curves.push(ins.probs.clone());
                }
                for k in &opts.metrics {
                    let val = match (k, mask) {
                        (k, None) if k.needs_mask() => f64::NAN,
                        (Metric::RelevanceMassAccuracy, Some(mk)) => {
                            relevance_mass_accuracy(&abs, mk).unwrap_or(f64::NAN)
                        }
                        (Metric::RelevanceRankAccuracy, Some(mk)) => {
                            relevance_rank_accuracy(&abs, mk).unwrap_or(f64::NAN)
                        }
                        (Metric::PointingGame, Some(mk)) => {
                            pointing_game(&abs, mk).unwrap_or(f64::NAN)
                        }
                        (Metric::RocAuc, Some(mk)) => roc_auc(&abs, mk).unwrap_or(f64::NAN),
                        (Metric::Gini, _) => gini(&abs),
                        (Metric::Entropy, _) => entropy(&abs),
                        (Metric::Deletion, _) => {
                            curves.as_ref().map(|c| c.0.auc).unwrap_or(f64::NAN)
                        }
                        (Metric::Insertion, _) => {
                            curves.as_ref().map(|c| c.1.auc).unwrap_or(f64::NAN)
                        }
                        (k, _) if k.needs_artifacts() => match &artifacts[i] {
                            None => f64::NAN,
                            Some(ms) => {
                                let mask: Vec<bool> = match k.artifact() {
                                    Some(a) => ms
                                        .iter()
                                        .find(|(b, _)| *b == a)
                                        .map(|(_, m)| m.clone())
                                        .unwrap_or_default(),
                                    None => {
                                        (0..plane).map(|p| ms.iter().any(|(_, m)| m[p])).collect()
                                    }
                                };
                                artifact_mass(&abs, &mask)?.unwrap_or(f64::NAN)
                            }
                        },
                        (Metric::FaithfulnessCorrelation, _) => {
                            let signed = reduce_channels(&v, c, size, size, Reduce::Sum);
                            faithfulness_correlation(
                                &m.model,
                                &x.get(i)?,
                                targets[i],
                                &signed,
                                &CorrelationOptions {
                                    seed: corr.seed.wrapping_add(i as u64),
                                    ..corr.clone()
                                },
                            )?
                        }
                        _ => f64::NAN,
                    };
                    per.entry(k.name().to_string()).or_default().push(val);
                }
                abs_all.push(abs);
            }
            mres.push(MethodResult {
                method: method.clone(),
                metrics: Vec::new(),
                per_image: per,
                curves: (!del_curves.is_empty()).then(|| MeanCurves {
                    fractions,
                    deletion: Band::of(&del_curves),
                    insertion: Band::of(&ins_curves),
                    images: del_curves.len(),
                }),
                ig_convergence,
            });
            mmaps.push(abs_all);
        }
        maps.push(mmaps);
        results.push(ModelResult {
            name: m.name.clone(),
            dir: m.dir.display().to_string(),
            train_eps: m.train_eps(),
            seed: m.cfg.train.seed,
            clean_accuracy: clean.accuracy,
            clean_images: clean.images,
            robust_accuracy: robust,
            methods: mres,
        });
    }
    // Summaries and tests against the first run.
    let first = results[0].methods.clone();
    for (mi, r) in results.iter_mut().enumerate() {
        for (ki, mr) in r.methods.iter_mut().enumerate() {
            for (ti, k) in opts.metrics.iter().enumerate() {
                let v = &mr.per_image[k.name()];
                let (mean, lo, hi) = bootstrap_ci(
                    v,
                    opts.bootstrap,
                    opts.seed ^ ((mi as u64) << 32 | (ki as u64) << 16 | ti as u64),
                );
                let n = v.iter().filter(|x| !x.is_nan()).count();
                let w = if mi == 0 {
                    None
                } else {
                    wilcoxon(v, &first[ki].per_image[k.name()])
                };
                mr.metrics.push(MetricSummary {
                    metric: *k,
                    n,
                    mean,
                    ci95: [lo, hi],
                    wilcoxon_vs_first: w,
                });
            }
        }
    }
    let brittleness = seed_brittleness(models, &opts.methods, &maps, size);
    let mut best_eps = Vec::new();
    // Only runs trained from scratch at an eps (train-standard = 0, train-robust) take part;
    // a fine-tuned run has no eps of its own.
    let from_scratch: Vec<bool> = models
        .iter()
        .map(|m| {
            matches!(
                m.cfg.train.recipe,
                Recipe::TrainStandard | Recipe::TrainRobust
            )
        })
        .collect();
    let mut eps_values: Vec<f32> = models
        .iter()
        .zip(&from_scratch)
        .filter(|(_, &f)| f)
        .map(|(m, _)| m.train_eps())
        .collect();
    eps_values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    eps_values.dedup();
    if eps_values.len() >= 2 && opts.metrics.contains(&opts.best_by) {
        for (ki, method) in opts.methods.iter().enumerate() {
            let per_image: Vec<f32> = (0..chosen.len())
                .map(|i| {
                    let mut best: Option<(f64, f32)> = None;
                    for (mi, m) in models.iter().enumerate() {
                        if !from_scratch[mi] {
                            continue;
                        }
                        let v = results[mi].methods[ki].per_image[opts.best_by.name()][i];
                        if v.is_nan() {
                            continue;
                        }
                        let s = if opts.best_by.higher_is_better() {
                            v
                        } else {
                            -v
                        };
                        let e = m.train_eps();
                        best = match best {
                            Some((bs, be)) if bs > s || (bs == s && be <= e) => Some((bs, be)),
                            _ => Some((s, e)),
                        };
                    }
                    best.map(|b| b.1).unwrap_or(f32::NAN)
                })
                .collect();
            let histogram = eps_values
                .iter()
                .map(|&e| (e, per_image.iter().filter(|&&p| p == e).count()))
                .collect();
            best_eps.push(BestEps {
                method: method.clone(),
                metric: opts.best_by,
                per_image,
                histogram,
            });
        }
    }
    Ok(Comparison {
        image_size: size,
        split: opts.part.as_str().to_string(),
        images: chosen
            .iter()
            .map(|&i| data.ds.items[i].image_id.clone())
            .collect(),
        images_with_mask: with_mask.len(),
        mean_lesion_area,
        seed: opts.seed,
        bootstrap_resamples: opts.bootstrap,
        attack: pgd.map(|p| serde_json::json!({"norm": "l2", "eps": p.eps, "steps": p.steps, "step_size": p.step_size, "images": chosen.len()})),
        models: results,
        brittleness,
        best_eps,
    })
}

/// Groups of runs whose configurations are equal but for the seed, and the mean pairwise
/// Spearman and SSIM of their maps of the same images.
fn seed_brittleness(
    models: &[RunModel],
    methods: &[String],
    maps: &[Vec<Vec<Vec<f32>>>],
    size: usize,
) -> Vec<Brittleness> {
    let key = |m: &RunModel| {
        let mut t = m.cfg.train.clone();
        t.seed = 0;
        serde_json::to_string(&t).unwrap_or_default()
    };
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, m) in models.iter().enumerate() {
        match groups.iter_mut().find(|g| key(&models[g[0]]) == key(m)) {
            Some(g) => g.push(i),
            None => groups.push(vec![i]),
        }
    }
    let mut out = Vec::new();
    for g in groups.iter().filter(|g| g.len() >= 2) {
        for (ki, method) in methods.iter().enumerate() {
            let (mut sp, mut ss, mut pairs) = (Vec::new(), Vec::new(), 0);
            for a in 0..g.len() {
                for b in a + 1..g.len() {
                    pairs += 1;
                    for (ma, mb) in maps[g[a]][ki].iter().zip(&maps[g[b]][ki]) {
                        let (s, t) = map_similarity(ma, mb, size, size);
                        sp.push(s);
                        ss.push(t);
                    }
                }
            }
            let mean = |v: &[f64]| {
                let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
                f.iter().sum::<f64>() / f.len().max(1) as f64
            };
            out.push(Brittleness {
                runs: g.iter().map(|&i| models[i].name.clone()).collect(),
                method: method.clone(),
                pairs,
                spearman: mean(&sp),
                ssim: mean(&ss),
            });
        }
    }
    out
}

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.3}")
    }
}

fn fmt_p(p: Option<&Wilcoxon>) -> String {
    match p {
        None => String::new(),
        Some(w) if w.p_value < 1e-4 => " (p<1e-4)".into(),
        Some(w) if w.p_value < 1e-3 => " (p<0.001)".into(),
        Some(w) => format!(" (p={:.3})", w.p_value),
    }
}

impl Comparison {
    /// The Markdown tables: per method, rows models; accuracy and each metric's mean with its
    /// 95% interval and the Wilcoxon p-value against the first model.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Saliency comparison ({} {} images at {} px, {} with masks)\n\n",
            self.images.len(),
            self.split,
            self.image_size,
            self.images_with_mask
        );
        let methods: Vec<&str> = self
            .models
            .first()
            .map(|m| m.methods.iter().map(|r| r.method.as_str()).collect())
            .unwrap_or_default();
        for (ki, method) in methods.iter().enumerate() {
            s.push_str(&format!(
                "## {method}\n\n| model | eps | clean acc | robust acc |"
            ));
            let metrics: Vec<Metric> = self.models[0].methods[ki]
                .metrics
                .iter()
                .map(|m| m.metric)
                .collect();
            for k in &metrics {
                s.push_str(&format!(
                    " {} {} |",
                    k.short(),
                    if k.higher_is_better() { "↑" } else { "↓" }
                ));
            }
            s.push_str("\n|---|---|---|---|");
            s.push_str(&"---|".repeat(metrics.len()));
            s.push('\n');
            for m in &self.models {
                s.push_str(&format!(
                    "| {} | {:.3} | {:.1}% | {} |",
                    m.name,
                    m.train_eps,
                    100.0 * m.clean_accuracy,
                    m.robust_accuracy
                        .map(|r| format!("{:.1}%", 100.0 * r))
                        .unwrap_or_else(|| "-".into())
                ));
                for ms in &m.methods[ki].metrics {
                    s.push_str(&format!(
                        " {} [{}, {}]{} |",
                        fmt(ms.mean),
                        fmt(ms.ci95[0]),
                        fmt(ms.ci95[1]),
                        fmt_p(ms.wilcoxon_vs_first.as_ref())
                    ));
                }
                s.push('\n');
            }
            s.push('\n');
            let conv: Vec<String> = self
                .models
                .iter()
                .filter_map(|m| {
                    let c = m.methods[ki].ig_convergence.as_ref()?;
                    Some(format!(
                        "{} {:.1}% (largest {:.1}%, {} of {} images over 5%)",
                        m.name,
                        100.0 * c.median_relative_delta,
                        100.0 * c.largest_relative_delta,
                        c.images_over_5pct,
                        c.images
                    ))
                })
                .collect();
            if let Some(c) = self.models[0].methods[ki].ig_convergence.as_ref() {
                s.push_str(&format!(
                    "IG convergence ({} steps), the median |sum(attr) - Δlogit| / |Δlogit|: {}.\n\n",
                    c.steps,
                    conv.join("; ")
                ));
            }
        }
        s.push_str(&format!("Means over images with a 95% bootstrap interval ({} resamples); p: paired two-sided Wilcoxon signed-rank test against the first model.", self.bootstrap_resamples));
        if let Some(a) = &self.attack {
            s.push_str(&format!(
                " Robust accuracy: L2 PGD with eps {:.3}, {} steps of {:.4} (best of the path), on the {} compared images.",
                a["eps"].as_f64().unwrap_or(f64::NAN),
                a["steps"],
                a["step_size"].as_f64().unwrap_or(f64::NAN),
                a["images"]
            ));
        }
        s.push('\n');
        if !self.brittleness.is_empty() {
            s.push_str("\n## Seed brittleness\n\n| runs | method | pairs | Spearman | SSIM |\n|---|---|---|---|---|\n");
            for b in &self.brittleness {
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} |\n",
                    b.runs.join(", "),
                    b.method,
                    b.pairs,
                    fmt(b.spearman),
                    fmt(b.ssim)
                ));
            }
        }
        if !self.best_eps.is_empty() {
            s.push_str("\n## Best eps per image\n\n| method | by | histogram (eps: images) |\n|---|---|---|\n");
            for b in &self.best_eps {
                let h: Vec<String> = b
                    .histogram
                    .iter()
                    .map(|(e, n)| format!("{e:.3}: {n}"))
                    .collect();
                s.push_str(&format!(
                    "| {} | {} | {} |\n",
                    b.method,
                    b.metric.name(),
                    h.join(", ")
                ));
            }
        }
        s
    }

    /// One CSV row per model, method and metric (plus accuracy rows).
    pub fn csv(&self) -> String {
        let mut s = String::from("model,train_eps,method,metric,n,mean,ci95_low,ci95_high,wilcoxon_statistic,wilcoxon_p\n");
        for m in &self.models {
            s.push_str(&format!(
                "{},{},,clean_accuracy,{},{},,,,\n",
                crate::data::csv::quote(&m.name),
                m.train_eps,
                m.clean_images,
                m.clean_accuracy
            ));
            if let Some(r) = m.robust_accuracy {
                s.push_str(&format!(
                    "{},{},,robust_accuracy,{},{},,,,\n",
                    crate::data::csv::quote(&m.name),
                    m.train_eps,
                    self.images.len(),
                    r
                ));
            }
            for mr in &m.methods {
                for ms in &mr.metrics {
                    let (ws, wp) = ms
                        .wilcoxon_vs_first
                        .map(|w| (w.statistic.to_string(), w.p_value.to_string()))
                        .unwrap_or_default();
                    s.push_str(&format!(
                        "{},{},{},{},{},{},{},{},{},{}\n",
                        crate::data::csv::quote(&m.name),
                        m.train_eps,
                        crate::data::csv::quote(&mr.method),
                        ms.metric.name(),
                        ms.n,
                        ms.mean,
                        ms.ci95[0],
                        ms.ci95[1],
                        ws,
                        wp
                    ));
                }
            }
        }
        s
    }

    /// Writes `comparison.json`, `comparison.csv` and `comparison.md` into `out`.
    pub fn write(&self, out: &Path) -> Result<()> {
        ensure_output_dir(out)?;
        write_json_atomic(&out.join("comparison.json"), self)?;
        write_atomic(&out.join("comparison.csv"), self.csv().as_bytes())?;
        write_atomic(&out.join("comparison.md"), self.markdown().as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn interleaving_balances_the_first_images() {
        let labels = [0, 0, 0, 1, 1, 2, 2, 2];
        let idx: Vec<usize> = (0..8).collect();
        assert_eq!(
            crate::run::interleave_classes(&idx, &labels),
            vec![0, 3, 5, 1, 4, 6, 2, 7]
        );
    }
}
