//! Opening a data source by its `--data` spec: `synthetic` (the built-in generator), a
//! HAM10000 folder or an ImageFolder. The one place that knows every source; the sources
//! themselves only build [`Dataset`]s.

use crate::data::dataset::{DataKind, DataOptions, Dataset, Item, ItemSource};
use crate::data::synthetic::{SyntheticConfig, CLASS_NAMES};
use crate::{Error, Result};
use std::path::Path;

impl Dataset {
    /// Opens `spec`: `synthetic` or a folder (HAM10000 when it holds `HAM10000_metadata.csv`,
    /// ImageFolder otherwise).
    pub fn open(spec: &str, opts: &DataOptions) -> Result<Dataset> {
        let s = spec.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("synthetic") {
            return Ok(synthetic(
                &SyntheticConfig::default(),
                opts.synthetic_per_class,
                opts.seed,
            ));
        }
        let path = Path::new(s);
        if !path.exists() {
            return Err(Error::data_setting(
                "data",
                s,
                "folder not found; give `synthetic`, a HAM10000 folder (with HAM10000_metadata.csv) or an ImageFolder (PATH/<class>/*.jpg)",
            ));
        }
        if !path.is_dir() {
            return Err(Error::data_setting(
                "data",
                s,
                "is a file; give the folder that holds it",
            ));
        }
        if path.join("HAM10000_metadata.csv").exists() || path.join("HAM10000_metadata").exists() {
            crate::data::ham10000::open(path, opts)
        } else if crate::data::ham10000::looks_like_ham(path) {
            Err(Error::data_setting(
                "data",
                s,
                format!("looks like HAM10000 (HAM10000 image folders or ISIC_*.jpg) but HAM10000_metadata.csv is missing; put the metadata file from the download in {s}"),
            ))
        } else {
            crate::data::imagefolder::open(path, opts)
        }
    }
}

/// The synthetic data set with `per_class` images per class (image ids `syn-<class>-<k>`;
/// each image is its own lesion).
pub fn synthetic(cfg: &SyntheticConfig, per_class: usize, seed: u64) -> Dataset {
    let cfg = SyntheticConfig {
        seed,
        ..cfg.clone()
    };
    let mut items = Vec::with_capacity(3 * per_class);
    for k in 0..per_class {
        for (label, name) in CLASS_NAMES.iter().enumerate() {
            let idx = (k * 3 + label) as u64;
            let id = format!("syn-{name}-{k:05}");
            items.push(Item {
                image_id: id.clone(),
                lesion_id: id,
                label,
                source: ItemSource::Synthetic(idx),
                mask: None,
            });
        }
    }
    Dataset {
        kind: DataKind::Synthetic(cfg),
        class_names: CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        items,
        warnings: Vec::new(),
    }
}
