//! The `saliency` job: attribute images with several methods for several models, and write
//! heat maps, overlays, one labelled grid and (optionally) raw attributions as NPY.

use crate::attribution::{by_name, Attribution, MethodOptions, Target};
use crate::model::ResNet18;
use crate::report::display::{heatmap, overlay, tensor_to_image, DisplayOptions};
use crate::report::grid::Grid;
use crate::report::npy::write_npy;
use crate::report::png::save_png;
use crate::{Error, Result};
use candle_core::Tensor;
use std::path::{Path, PathBuf};

/// A model with a display name.
pub struct NamedModel {
    pub name: String,
    pub model: ResNet18,
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

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
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
        name.push_str(&sanitize(model));
    }
    if many_methods {
        name.push('_');
        name.push_str(&sanitize(method));
    }
    name.push_str(".npy");
    base.with_file_name(name)
}

/// Runs the job; returns every attribution computed.
pub fn run(job: &ExplainJob) -> Result<Vec<Explained>> {
    let (n, _, h, w) = job.images.dims4()?;
    if job.methods.is_empty() {
        return Err(Error::arg("--method: give at least one method"));
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
            .resolve(&nm.model, &job.images, job.labels.as_deref())?;
        for (mname, method) in job.methods.iter().zip(&methods) {
            tracing::info!("{}: {} on {n} images", nm.name, method.name());
            let a = method.attribute(&nm.model, &job.images, &targets)?;
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
        let imgs: Vec<Vec<f32>> = (0..n)
            .map(|i| job.images.get(i)?.flatten_all()?.to_vec1())
            .collect::<candle_core::Result<_>>()?;
        let mut grid = Grid {
            title: String::new(),
            col_labels: vec!["image".into()],
            row_labels: job.image_names.clone(),
            cells: (0..n)
                .map(|i| vec![tensor_to_image(&imgs[i], h, w)])
                .collect(),
        };
        for r in &results {
            let ac = r.attributions.dim(1)?;
            grid.col_labels.push(if job.models.len() > 1 {
                format!("{} {}", r.model, r.method)
            } else {
                r.method.clone()
            });
            for (i, px) in imgs.iter().enumerate() {
                let a: Vec<f32> = r.attributions.get(i)?.flatten_all()?.to_vec1()?;
                let hm = heatmap(&a, ac, h, w, &job.display);
                let base = format!(
                    "{}_{}_{}",
                    sanitize(&job.image_names[i]),
                    sanitize(&r.model),
                    sanitize(&r.method)
                );
                save_png(&hm, &dir.join(format!("{base}.png")))?;
                let img = tensor_to_image(px, h, w);
                save_png(
                    &overlay(&img, &a, ac, &job.display),
                    &dir.join(format!("{base}_overlay.png")),
                )?;
                grid.cells[i].push(hm);
            }
        }
        save_png(&grid.render(112)?, &dir.join("grid.png"))?;
    }
    Ok(results)
}
