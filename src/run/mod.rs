//! The run folder and what it holds: `config.json` (the model description and the
//! [`TrainConfig`]), `model.safetensors`, `split.csv`, the metrics, the resume checkpoint.
//! Training writes run folders; evaluation, comparison, reports and sanity checks read them
//! through this module, so neither side imports the other.
//!
//! - [`RunConfig`]: a run's `config.json` (old flat configurations load too);
//! - [`open_data`]: the data set and split a configuration names (writing nothing);
//! - [`RunModel`] / [`load_runs`]: trained runs, loaded, named;
//! - [`EvalImages`]: the evaluation images of a run (its own split, or other data);
//! - [`default_out`], [`check_new_run`]: where a new run goes, checked before anything is
//!   created.

use crate::config::{Recipe, TrainConfig};
use crate::data::cache::ImageCache;
use crate::data::loader::{make_batch, HostBatch};
use crate::data::split::{make_split, Part, Split, SplitSpec};
use crate::data::{DataOptions, Dataset};
use crate::model::{load_checkpoint, ModelConfig, Network};
use crate::{Error, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `config.json` of a run: the model description plus the training configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(flatten)]
    pub model: ModelConfig,
    #[serde(deserialize_with = "train_any")]
    pub train: TrainConfig,
}

fn train_any<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<TrainConfig, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    TrainConfig::from_json(v, Path::new("config.json")).map_err(serde::de::Error::custom)
}

impl RunConfig {
    /// Reads `dir/config.json`, with an error that says the folder is not a run folder.
    pub fn read(dir: &Path) -> Result<RunConfig> {
        crate::fsutil::read_json(&dir.join("config.json")).map_err(|e| {
            Error::config(
                "run",
                dir.display(),
                format!("not a run folder (no readable config.json: {e})"),
            )
        })
    }
}

/// Checks that the run in `dir` holds a model of `arch` (when one is asked for), naming both
/// when it does not.
pub fn check_arch(arch: Option<crate::model::Arch>, dir: &Path) -> Result<()> {
    let Some(a) = arch else { return Ok(()) };
    let held = RunConfig::read(dir)?.model.arch;
    if held != a {
        return Err(Error::config(
            "arch",
            a,
            format!(
                "the run {} holds a {held} model; drop --arch or give --arch {held}",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Opens the data and split of a configuration (writing nothing).
pub fn open_data(cfg: &TrainConfig) -> Result<(Dataset, Split)> {
    open_data_with_folds(cfg, 1)
}

/// [`open_data`] with the training part divided into `folds` lesion-grouped folds when the
/// split is made here (a split file keeps its own folds).
pub fn open_data_with_folds(cfg: &TrainConfig, folds: usize) -> Result<(Dataset, Split)> {
    let d = &cfg.data;
    let per_class = d.train_per_class + d.val_per_class + d.test_per_class;
    let opts = DataOptions {
        classes: d.classes.clone(),
        skip_bad_images: d.skip_bad_images,
        synthetic_per_class: per_class.max(1),
        seed: cfg.seed,
    };
    let ds = Dataset::open(&d.source, &opts)?;
    let split = match &d.split {
        Some(p) => Split::read(p, &ds)?,
        None => make_split(
            &ds,
            &SplitSpec {
                train_per_class: d.train_per_class,
                test_per_class: d.test_per_class,
                val_per_class: d.val_per_class,
                folds,
                seed: cfg.seed,
            },
        )?,
    };
    Ok((ds, split))
}

/// A new run's default folder: `models/<recipe>-<unix time>`.
pub fn default_out(name: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from("models").join(format!("{name}-{secs}"))
}

/// Checks that `out` can take a new run (it holds none yet), creating nothing.
pub fn check_new_run(out: &Path) -> Result<()> {
    crate::fsutil::refuse_file(out)?;
    if out.join("resume.safetensors").exists() {
        return Err(Error::config(
            "out",
            out.display(),
            format!(
                "holds a run already; continue it with resume {} or choose another folder",
                out.display()
            ),
        ));
    }
    Ok(())
}

/// Checks that `from` is a trained run folder (it holds `model.safetensors`), as `from` names
/// one for fine-tuning.
pub fn check_trained(from: &Path) -> Result<()> {
    if !from.join("model.safetensors").exists() {
        return Err(Error::config(
            "from",
            from.display(),
            "no model.safetensors there; give a run folder of train-standard or train-robust",
        ));
    }
    Ok(())
}

/// Reads the configuration of the run in `dir` to resume it, checking that `recipe` made it.
pub fn resume_config(dir: &Path, recipe: Recipe) -> Result<TrainConfig> {
    let rc: RunConfig = crate::fsutil::read_json(&dir.join("config.json")).map_err(|e| {
        Error::config(
            "resume",
            dir.display(),
            format!("not a run folder (no readable config.json: {e})"),
        )
    })?;
    if rc.train.recipe != recipe {
        return Err(Error::config(
            "resume",
            dir.display(),
            format!("the run was made by `{}`, not `{recipe}`", rc.train.recipe),
        ));
    }
    Ok(rc.train)
}

/// A trained run, loaded.
pub struct RunModel {
    pub name: String,
    pub dir: PathBuf,
    pub model: Box<dyn Network>,
    pub cfg: RunConfig,
}

impl RunModel {
    /// The L2 eps the run was trained with at its working size (0 for a standard run).
    pub fn train_eps(&self) -> f32 {
        self.cfg
            .train
            .adversarial
            .as_ref()
            .map(|a| a.eps)
            .unwrap_or(0.0)
    }
}

/// Loads run folders (`name`, `dir`), checking that each is one and that they share an image
/// size.
pub fn load_runs(runs: &[(String, PathBuf)], device: &Device) -> Result<Vec<RunModel>> {
    if runs.is_empty() {
        return Err(Error::config("run", "", "give at least one run folder"));
    }
    let mut out: Vec<RunModel> = Vec::new();
    for (name, dir) in runs {
        let cfg = RunConfig::read(dir)?;
        let (model, _) = load_checkpoint(dir, device)?;
        if let Some(first) = out.first() {
            if first.cfg.model.image_size != cfg.model.image_size {
                return Err(Error::conflict(format!(
                    "run {}: trained at {} px, but {} at {} px; compare runs of one image size",
                    dir.display(),
                    cfg.model.image_size,
                    first.dir.display(),
                    first.cfg.model.image_size
                )));
            }
        }
        out.push(RunModel {
            name: name.clone(),
            dir: dir.clone(),
            model,
            cfg,
        });
    }
    Ok(out)
}

/// Names runs `NAME=DIR` or by their folder name, made unique.
pub fn name_runs(specs: &[String]) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for s in specs {
        let (name, dir) = match s.split_once('=') {
            Some((n, d)) if !n.is_empty() && !n.contains('/') => (n.to_string(), PathBuf::from(d)),
            _ => {
                let p = PathBuf::from(s);
                let n = p
                    .file_name()
                    .map(|f| f.to_string_lossy().to_string())
                    .unwrap_or_else(|| s.clone());
                (n, p)
            }
        };
        let mut unique = name.clone();
        let mut k = 2;
        while out.iter().any(|(n, _)| *n == unique) {
            unique = format!("{name}-{k}");
            k += 1;
        }
        out.push((unique, dir));
    }
    out
}

/// Images to evaluate on: a data set, its cache at the runs' size, and a part of its split.
pub struct EvalImages {
    pub ds: Dataset,
    pub labels: Vec<usize>,
    pub cache: ImageCache,
    /// Dataset indices of the chosen part, round-robin over classes (see
    /// [`interleave_classes`]).
    pub indices: Vec<usize>,
    pub size: usize,
}

impl EvalImages {
    /// The first run's data and split (`data = None` or `"run"`), or other data (`SPEC`: a
    /// split is made for it with the run's counts and seed).
    pub fn open(first: &RunModel, data: Option<&str>, part: Part) -> Result<Self> {
        let mut tc = first.cfg.train.clone();
        match data {
            None | Some("run") => tc.data.split = Some(first.dir.join("split.csv")),
            Some(spec) if spec == tc.data.source => {
                tc.data.split = Some(first.dir.join("split.csv"))
            }
            Some(spec) => {
                tc.data.source = spec.to_string();
                tc.data.split = None;
            }
        }
        Self::of(&tc, first.cfg.model.image_size, part)
    }

    /// The images of `part` of the data and split that `tc` names, at `size` px, classes
    /// interleaved.
    pub fn of(tc: &TrainConfig, size: usize, part: Part) -> Result<Self> {
        let (ds, split) = open_data(tc)?;
        let indices = split.indices(&ds, part, None);
        if indices.is_empty() {
            return Err(Error::data_setting(
                "split",
                part.as_str(),
                "no images in that part of the split",
            ));
        }
        let cache = ImageCache::build(
            &ds,
            size,
            Some(&crate::data::cache::default_cache_dir()),
            tc.data.skip_bad_images,
        )?;
        let labels: Vec<usize> = ds.items.iter().map(|i| i.label).collect();
        let indices = interleave_classes(&indices, &labels);
        Ok(EvalImages {
            ds,
            labels,
            cache,
            indices,
            size,
        })
    }

    /// The images at `idx` (dataset indices), unaugmented.
    pub fn batch(&self, idx: &[usize]) -> HostBatch {
        make_batch(&self.cache, &self.labels, idx, None, &vec![0; idx.len()])
    }
}

/// Reorders `indices` round-robin over their classes (each class keeping its order), so that
/// the first N of a split that lists class after class are balanced rather than one class.
pub fn interleave_classes(indices: &[usize], labels: &[usize]) -> Vec<usize> {
    let k = indices.iter().map(|&i| labels[i] + 1).max().unwrap_or(0);
    let mut per: Vec<std::collections::VecDeque<usize>> = vec![Default::default(); k];
    for &i in indices {
        per[labels[i]].push_back(i);
    }
    let mut out = Vec::with_capacity(indices.len());
    while out.len() < indices.len() {
        for q in per.iter_mut() {
            if let Some(i) = q.pop_front() {
                out.push(i);
            }
        }
    }
    out
}
