//! `saliency`: attribute images with several methods for several models, and write heat
//! maps, overlays, one labelled grid and (optionally) raw attributions as NPY.

use super::per_image;
use crate::attribution::{by_name, Attribution, MethodOptions, Target};
use crate::fsutil::file_stem;
use crate::model::Classifier;
use crate::report::display::{
    beside, heatmap, masked_image, overlay, sig3, tensor_to_image, DisplayOptions,
};
use crate::report::grid::Grid;
use crate::report::npy::write_npy;
use crate::report::png::save_png;
use crate::{Error, Result};
use candle_core::Tensor;
use std::path::{Path, PathBuf};

/// A model with a display name.
pub struct NamedModel {
    pub name: String,
    pub model: Box<dyn Classifier>,
}

/// What the job writes and how.
pub struct ExplainJob<'a> {
    pub models: &'a [NamedModel],
    /// Image names (file stems) and the batch `[N, 3, H, W]` in `[0, 1]`.
    pub image_names: Vec<String>,
    pub images: Tensor,
    pub labels: Option<Vec<usize>>,
    pub target: Target,
    pub methods: Vec<String>,
    pub options: MethodOptions,
    pub display: DisplayOptions,
    pub out_dir: Option<PathBuf>,
    pub raw_out: Option<PathBuf>,
}

/// One attribution result.
pub struct Explained {
    pub model: String,
    pub method: String,
    pub targets: Vec<usize>,
    /// `[N, C, H, W]` raw attributions.
    pub attributions: Tensor,
}

/// Path for one raw array: the given path when there is one model and one method, otherwise
/// the stem extended by `_<model>_<method>`.
pub fn raw_path(
    base: &Path,
    model: &str,
    method: &str,
    many_models: bool,
    many_methods: bool,
) -> PathBuf {
    if !many_models && !many_methods {
        return base.to_path_buf();
    }
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "raw".into());
    let mut name = stem;
    if many_models {
        name.push('_');
        name.push_str(&file_stem(model));
    }
    if many_methods {
        name.push('_');
        name.push_str(&file_stem(method));
    }
    name.push_str(".npy");
    base.with_file_name(name)
}

/// Runs the job; returns every attribution computed.
pub fn run(job: &ExplainJob) -> Result<Vec<Explained>> {
    let (n, _, h, w) = job.images.dims4()?;
    if job.methods.is_empty() {
        return Err(Error::config("method", "", "give at least one method"));
    }
    let methods: Vec<Box<dyn Attribution>> = job
        .methods
        .iter()
        .map(|m| by_name(m, &job.options))
        .collect::<Result<_>>()?;
    if let Some(dir) = &job.out_dir {
        crate::fsutil::ensure_output_dir(dir)?;
    }
    let pb = crate::progress::bar((job.models.len() * methods.len()) as u64, "saliency");
    let mut results = Vec::new();
    for nm in job.models {
        let targets = job
            .target
            .resolve(nm.model.as_ref(), &job.images, job.labels.as_deref())?;
        for (mname, method) in job.methods.iter().zip(&methods) {
            tracing::info!("{}: {} on {n} images", nm.name, method.name());
            let a = method.attribute(nm.model.as_ref(), &job.images, &targets)?;
            if let Some(base) = &job.raw_out {
                let p = raw_path(
                    base,
                    &nm.name,
                    mname,
                    job.models.len() > 1,
                    job.methods.len() > 1,
                );
                write_npy(&p, &a)?;
            }
            results.push(Explained {
                model: nm.name.clone(),
                method: mname.clone(),
                targets: targets.clone(),
                attributions: a,
            });
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    if let Some(dir) = &job.out_dir {
        let imgs = per_image(&job.images, n)?;
        // every map's values, once: for a shared scale and for the pictures
        let values: Vec<Vec<Vec<f32>>> = results
            .iter()
            .map(|r| per_image(&r.attributions, n))
            .collect::<Result<_>>()?;
        let mut grid = Grid {
            title: String::new(),
            col_labels: vec!["image".into()],
            row_labels: job.image_names.clone(),
            cells: (0..n)
                .map(|i| vec![tensor_to_image(&imgs[i], h, w)])
                .collect(),
        };
        // with a shared scale, one per method: the cap of all its maps (every model, image)
        let mut by_method: Vec<(String, DisplayOptions)> = Vec::new();
        for m in &job.methods {
            if !job.display.shared {
                by_method.push((m.clone(), job.display));
                continue;
            }
            let refs: Vec<&[f32]> = results
                .iter()
                .zip(&values)
                .filter(|(r, _)| &r.method == m)
                .flat_map(|(_, v)| v.iter().map(|a| a.as_slice()))
                .collect();
            let ac = results
                .iter()
                .find(|r| &r.method == m)
                .map_or(Ok(3), |r| r.attributions.dim(1))?;
            by_method.push((m.clone(), job.display.sharing(&refs, ac, h, w)));
        }
        for (r, maps) in results.iter().zip(&values) {
            let ac = r.attributions.dim(1)?;
            let display = by_method
                .iter()
                .find(|(m, _)| m == &r.method)
                .map_or(job.display, |(_, d)| *d);
            grid.col_labels.push(if job.models.len() > 1 {
                format!("{} {}", r.model, r.method)
            } else {
                r.method.clone()
            });
            for (i, (px, a)) in imgs.iter().zip(maps).enumerate() {
                let hm = heatmap(a, ac, h, w, &display);
                let base = format!(
                    "{}_{}_{}",
                    file_stem(&job.image_names[i]),
                    file_stem(&r.model),
                    file_stem(&r.method)
                );
                save_png(&hm, &dir.join(format!("{base}.png")))?;
                let img = tensor_to_image(px, h, w);
                save_png(
                    &overlay(&img, a, ac, &display),
                    &dir.join(format!("{base}_overlay.png")),
                )?;
                save_png(
                    &masked_image(&img, a, ac, &display),
                    &dir.join(format!("{base}_masked.png")),
                )?;
                grid.cells[i].push(hm);
            }
        }
        // one method: its scale on the colour bar; several with a shared scale each: every
        // method's cap in the colour bar's title
        let legend_opts = match &by_method[..] {
            [(_, d)] => *d,
            _ => job.display,
        };
        let legend = if job.display.shared && by_method.len() > 1 {
            let t = legend_opts.scale_label();
            let first = t.lines().next().unwrap_or_default();
            let sum = first.split(" ÷").next().unwrap_or(first);
            let caps: String = by_method
                .iter()
                .map(|(m, d)| format!("\n{m}: {}", d.shared_cap.map_or("-".into(), sig3)))
                .collect();
            legend_opts.colorbar_titled(
                112 * n.clamp(1, 3) as u32,
                &format!("{sum} ÷ its method's cap\nshared scale per method{caps}"),
            )
        } else {
            legend_opts.colorbar(112 * n.clamp(1, 3) as u32)
        };
        save_png(&beside(&grid.render(112)?, &legend), &dir.join("grid.png"))?;
    }
    Ok(results)
}

/// Options of the `saliency` command.
pub struct SaliencyOptions {
    /// Run folders to explain.
    pub runs: Vec<PathBuf>,
    /// The architecture (`None`: the run's or the file's).
    pub arch: Option<crate::model::Arch>,
    /// A weights file, a run folder or `hf:owner/repo`, instead of (or beside) runs.
    pub weights: Option<String>,
    /// With `weights`: replace the head by one with this many classes.
    pub num_classes: Option<usize>,
    /// Image files to explain.
    pub images: Vec<PathBuf>,
    /// Or images of a data set (`run`: the first run's own data and split).
    pub data: Option<String>,
    pub part: crate::data::split::Part,
    pub count: usize,
    pub include_misclassified: bool,
    /// Working resolution of image files (data-set images use the run's).
    pub image_size: usize,
    pub target: Target,
    pub methods: Vec<String>,
    pub options: MethodOptions,
    pub display: DisplayOptions,
    pub out: Option<PathBuf>,
    pub raw_out: Option<PathBuf>,
    pub device: crate::device::DeviceSpec,
}

/// Loads the models and images, explains them and writes the files.
pub fn command(o: &SaliencyOptions) -> Result<Vec<Explained>> {
    super::check_image_size(o.image_size)?;
    if o.images.is_empty() && o.data.is_none() {
        return Err(Error::conflict(
            "saliency: give images (image IMG...) or a data set (data SPEC, split test, count N)",
        ));
    }
    if o.options.internal_batch_size == 0 {
        return Err(Error::config(
            "internal-batch-size",
            0,
            "must be at least 1",
        ));
    }
    if o.options.perturbations_per_eval == 0 {
        return Err(Error::config(
            "perturbations-per-eval",
            0,
            "must be at least 1",
        ));
    }
    if o.out.is_none() && o.raw_out.is_none() {
        return Err(Error::conflict(
            "saliency: nothing to write; give an output folder (out DIR) and/or an NPY file (raw-out FILE.npy)",
        ));
    }
    for m in &o.methods {
        by_name(m, &o.options)?;
    }
    let device = o.device.open()?;
    let mut models = Vec::new();
    for r in &o.runs {
        if !r.is_dir() {
            return Err(Error::config(
                "run",
                r.display(),
                "not a folder; give a run folder (with model.safetensors) or a weights file",
            ));
        }
        let (m, _) = crate::model::load_model_spec(o.arch, &r.to_string_lossy(), None, 0, &device)?;
        let name = r
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "run".into());
        models.push(NamedModel {
            name,
            model: Box::new(m),
        });
    }
    if let Some(w) = &o.weights {
        let (m, _) = crate::model::load_model_spec(o.arch, w, o.num_classes, 0, &device)?;
        models.push(NamedModel {
            name: super::stem(Path::new(w), "model"),
            model: Box::new(m),
        });
    }
    if models.is_empty() {
        return Err(Error::conflict(
            "saliency: give a model (a run folder or a weights file)",
        ));
    }
    let (images, image_names, labels) = match &o.data {
        Some(spec) => dataset_images(o, spec, &models, &device)?,
        None => {
            let xs = o
                .images
                .iter()
                .map(|p| crate::data::preprocess(p, o.image_size, &device))
                .collect::<Result<Vec<_>>>()?;
            let names = o.images.iter().map(|p| super::stem(p, "")).collect();
            (Tensor::stack(&xs, 0)?, names, None)
        }
    };
    let job = ExplainJob {
        models: &models,
        image_names,
        images,
        labels,
        target: o.target,
        methods: o.methods.clone(),
        options: o.options.clone(),
        display: o.display,
        out_dir: o.out.clone(),
        raw_out: o.raw_out.clone(),
    };
    let results = run(&job)?;
    for r in &results {
        eprintln!("{} {}: targets {:?}", r.model, r.method, r.targets);
    }
    if let Some(out) = &o.out {
        eprintln!("wrote maps, overlays and grid.png to {}", out.display());
    }
    Ok(results)
}

/// Images of a data set: the part of the first run's split (or a fresh split of `spec`),
/// classes interleaved, correctly classified by every model unless asked otherwise.
fn dataset_images(
    o: &SaliencyOptions,
    spec: &str,
    models: &[NamedModel],
    device: &candle_core::Device,
) -> Result<(Tensor, Vec<String>, Option<Vec<usize>>)> {
    let run_cfg: Option<crate::run::RunConfig> = o
        .runs
        .first()
        .and_then(|r| crate::run::RunConfig::read(r).ok());
    let mut tc = run_cfg
        .as_ref()
        .map(|c| c.train.clone())
        .unwrap_or_default();
    let size = run_cfg
        .as_ref()
        .map(|c| c.model.image_size)
        .unwrap_or(o.image_size);
    if spec != "run" {
        if spec != tc.data.source {
            tc.data.split = None;
        }
        tc.data.source = spec.to_string();
    }
    if let Some(r) = o.runs.first() {
        if spec == "run"
            || run_cfg
                .as_ref()
                .is_some_and(|c| c.train.data.source == spec)
        {
            tc.data.split = Some(r.join("split.csv"));
        }
    }
    let data = crate::run::EvalImages::of(&tc, size, o.part)?;
    let mut chosen = Vec::new();
    for chunk in data.indices.chunks(64) {
        let b = data.batch(chunk);
        let x = b.images(device)?;
        let mut ok = vec![true; chunk.len()];
        if !o.include_misclassified {
            for m in models {
                let p = crate::attribution::predict_classes(m.model.as_ref(), &x, 32)?;
                for (k, keep) in ok.iter_mut().enumerate() {
                    *keep &= p[k] == b.labels[k];
                }
            }
        }
        chosen.extend(chunk.iter().zip(ok).filter(|(_, k)| *k).map(|(i, _)| *i));
        if chosen.len() >= o.count {
            break;
        }
    }
    chosen.truncate(o.count);
    if chosen.is_empty() {
        return Err(Error::data(format!(
            "no correctly classified images in the {} split; include misclassified images (include-misclassified)",
            o.part.as_str()
        )));
    }
    let b = data.batch(&chosen);
    let names = chosen
        .iter()
        .map(|&i| data.ds.items[i].image_id.replace('/', "_"))
        .collect();
    Ok((b.images(device)?, names, Some(b.labels.clone())))
}
