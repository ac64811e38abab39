//! Opening a data source by its `--data` spec: `synthetic` (the built-in lesion generator,
//! also `synthetic:lesions`), `synthetic:blocks` (the known-positive control of
//! [`crate::data::blocks`]), a HAM10000 folder or an ImageFolder. The one place that knows every source; the sources
//! themselves only build [`Dataset`]s.

use crate::data::dataset::{DataKind, DataOptions, Dataset, Item, ItemSource};
use crate::data::synthetic::{SyntheticConfig, CLASS_NAMES};
use crate::{Error, Result};
use std::path::Path;

impl Dataset {
    /// Opens `spec`: `synthetic[:lesions]`, `synthetic:blocks` or a folder (HAM10000 when it
    /// holds `HAM10000_metadata.csv`, ImageFolder otherwise).
    pub fn open(spec: &str, opts: &DataOptions) -> Result<Dataset> {
        let s = spec.trim();
        let lower = s.to_ascii_lowercase();
        if s.is_empty() || lower == "synthetic" || lower == "synthetic:lesions" {
            return Ok(synthetic(
                &SyntheticConfig::default(),
                opts.synthetic_per_class,
                opts.seed,
            ));
        }
        if lower == "synthetic:blocks" {
            return Ok(blocks(opts.synthetic_per_class, opts.seed));
        }
        if let Some(other) = lower.strip_prefix("synthetic:") {
            return Err(Error::data_setting(
                "data",
                s,
                format!("no built-in set `{other}`; use synthetic (lesions) or synthetic:blocks (the control)"),
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

/// Items `syn-<class>-<k>` (`prefix-<class>-<k>`), `per_class` per class interleaved, each
/// its own lesion, rendered by the generator of `kind`.
fn generated(kind: DataKind, prefix: &str, per_class: usize) -> Dataset {
    let mut items = Vec::with_capacity(3 * per_class);
    for k in 0..per_class {
        for (label, name) in CLASS_NAMES.iter().enumerate() {
            let idx = (k * 3 + label) as u64;
            let id = format!("{prefix}-{name}-{k:05}");
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
        kind,
        class_names: CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        items,
        warnings: Vec::new(),
    }
}

/// The synthetic lesion set with `per_class` images per class (image ids `syn-<class>-<k>`;
/// each image is its own lesion).
pub fn synthetic(cfg: &SyntheticConfig, per_class: usize, seed: u64) -> Dataset {
    let cfg = SyntheticConfig {
        seed,
        ..cfg.clone()
    };
    generated(DataKind::Synthetic(cfg), "syn", per_class)
}

/// The `synthetic:blocks` control with `per_class` images per class (ids `blk-<class>-<k>`).
pub fn blocks(per_class: usize, seed: u64) -> Dataset {
    generated(
        DataKind::Blocks(crate::data::blocks::BlocksConfig { seed }),
        "blk",
        per_class,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_specs() {
        let opts = DataOptions {
            synthetic_per_class: 4,
            ..Default::default()
        };
        let b = Dataset::open("synthetic:blocks", &opts).unwrap();
        assert!(matches!(b.kind, DataKind::Blocks(_)));
        assert_eq!((b.items.len(), b.masks_found()), (12, 12));
        let (img, mask) = b.load(0, 32).unwrap();
        assert_eq!(
            (img.dimensions(), mask.unwrap().dimensions()),
            ((32, 32), (32, 32))
        );
        let l = Dataset::open("synthetic:lesions", &opts).unwrap();
        assert!(matches!(l.kind, DataKind::Synthetic(_)));
        let e = Dataset::open("synthetic:mnist", &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("synthetic:blocks"), "{e}");
    }
}
