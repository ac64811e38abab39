//! `data synth`, `data split`, `data inspect` and `data bench`.

use crate::data::dataset::ItemSource;
use crate::data::split::{make_split, SplitSpec};
use crate::data::{DataOptions, Dataset};
use crate::{Error, Result};
use std::path::Path;

/// Which data set, as `--data`, `--classes` and `--skip-bad-images` give it.
#[derive(Debug, Clone)]
pub struct DataSource {
    pub data: String,
    pub classes: Vec<String>,
    pub skip_bad_images: bool,
}

impl DataSource {
    /// Opens it (the synthetic set with `synthetic_per_class` images per class), logging its
    /// warnings.
    pub fn open(&self, synthetic_per_class: usize, seed: u64) -> Result<Dataset> {
        let opts = DataOptions {
            classes: self
                .classes
                .iter()
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect(),
            skip_bad_images: self.skip_bad_images,
            synthetic_per_class,
            seed,
        };
        let ds = Dataset::open(&self.data, &opts)?;
        for w in &ds.warnings {
            tracing::warn!("{w}");
        }
        Ok(ds)
    }
}

/// A built-in data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BuiltIn {
    /// The synthetic lesion set (`--data synthetic`).
    Lesions,
    /// The known-positive control (`--data synthetic:blocks`): a signal block and a null block.
    Blocks,
}

/// Writes a built-in set as an ImageFolder with masks (`DIR/<class>/*.png`,
/// `DIR/masks/<class>/*.png`: the lesion, or for the control the signal block; for the
/// lesions also `DIR/masks/artifacts/<hair|ruler|ink|corners>/<class>/*.png`).
pub fn synth(set: BuiltIn, out: &Path, per_class: usize, size: usize, seed: u64) -> Result<()> {
    super::check_image_size(size)?;
    if per_class == 0 {
        return Err(Error::config(
            "per-class",
            0,
            "ask for at least one image per class",
        ));
    }
    crate::fsutil::ensure_output_dir(out)?;
    let ds = match set {
        BuiltIn::Lesions => crate::data::open::synthetic(
            &crate::data::synthetic::SyntheticConfig::default(),
            per_class,
            seed,
        ),
        BuiltIn::Blocks => crate::data::open::blocks(per_class, seed),
    };
    let pb = crate::progress::bar(ds.items.len() as u64, "rendering");
    for (i, it) in ds.items.iter().enumerate() {
        let (img, mask) = ds.load(i, size)?;
        let class = &ds.class_names[it.label];
        let name = format!("{}.png", it.image_id);
        let d = out.join(class);
        let md = out.join("masks").join(class);
        for dir in [&d, &md] {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        crate::report::png::save_png(&img, &d.join(&name))?;
        let mask = mask.ok_or_else(|| Error::internal("a built-in item has no mask"))?;
        save_mask(&mask, &md.join(&name))?;
        // The lesion set's distractors, one mask per kind (empty when the image has none).
        for (a, m) in ds.artifact_masks(i, size)?.unwrap_or_default() {
            let ad = out
                .join("masks")
                .join("artifacts")
                .join(a.name())
                .join(class);
            std::fs::create_dir_all(&ad).map_err(|e| Error::io(&ad, e))?;
            save_mask(&m, &ad.join(&name))?;
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    println!(
        "wrote {} images ({per_class} per class, {size} px, seed {seed}) with masks to {}",
        ds.items.len(),
        out.display()
    );
    Ok(())
}

fn save_mask(mask: &image::GrayImage, path: &Path) -> Result<()> {
    let mut buf = Vec::new();
    mask.write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Png)
        .map_err(|e| Error::internal(format!("PNG encoding failed: {e}")))?;
    crate::fsutil::write_atomic(path, &buf)
}

/// Writes a class-balanced, lesion-grouped split: `image_id,lesion_id,label,split,fold`.
pub fn split(src: &DataSource, spec: &SplitSpec, out: &Path) -> Result<()> {
    let ds = src.open(
        spec.train_per_class + spec.test_per_class + spec.val_per_class,
        spec.seed,
    )?;
    let split = make_split(&ds, spec)?;
    split.write(out)?;
    println!(
        "wrote {} ({} images: {} train + {} val + {} test per class, {} folds)",
        out.display(),
        split.rows.len(),
        spec.train_per_class,
        spec.val_per_class,
        spec.test_per_class,
        spec.folds
    );
    Ok(())
}

/// Prints images, lesions and masks per class, and the problems found.
pub fn inspect(src: &DataSource, check_images: bool) -> Result<()> {
    let ds = src.open(100, 0)?;
    println!("{:?}", ds.kind);
    println!(
        "{:<12} {:>8} {:>8} {:>8}",
        "class", "images", "lesions", "masks"
    );
    for (l, c) in ds.class_names.iter().enumerate() {
        let items: Vec<_> = ds.items.iter().filter(|i| i.label == l).collect();
        let lesions: std::collections::HashSet<&str> =
            items.iter().map(|i| i.lesion_id.as_str()).collect();
        let masks = items
            .iter()
            .filter(|i| i.mask.is_some() || matches!(i.source, ItemSource::Synthetic(_)))
            .count();
        println!(
            "{:<12} {:>8} {:>8} {:>8}",
            c,
            items.len(),
            lesions.len(),
            masks
        );
    }
    if let crate::data::dataset::DataKind::Synthetic(cfg) = &ds.kind {
        let borrowed = ds
            .items
            .iter()
            .filter(|it| match it.source {
                ItemSource::Synthetic(idx) => {
                    crate::data::synthetic::borrowed_cues(cfg, idx, it.label)
                        != (it.label, it.label)
                }
                _ => false,
            })
            .count();
        println!(
            "confusable: {borrowed} of {} images ({:.1}%) borrow another class's outline or \
             colouring (the accuracy ceiling's cause)",
            ds.items.len(),
            100.0 * borrowed as f64 / ds.items.len().max(1) as f64
        );
    }
    let mut problems = ds.warnings.clone();
    if check_images {
        for it in &ds.items {
            if let ItemSource::File(p) = &it.source {
                if let Err(e) = crate::data::load_image(p) {
                    problems.push(e.to_string());
                }
            }
        }
    }
    if problems.is_empty() {
        println!("no problems found");
    } else {
        println!("{} problems:", problems.len());
        for p in &problems {
            println!("  {p}");
        }
    }
    Ok(())
}

/// Loader throughput: images/s from the cache with augmentation on.
pub fn bench(
    src: &DataSource,
    image_size: usize,
    batch_size: usize,
    per_class: usize,
    epochs: u64,
) -> Result<()> {
    use crate::data::{augment::AugmentConfig, cache::ImageCache, loader};
    super::check_image_size(image_size)?;
    let ds = src.open(per_class, 0)?;
    let t0 = std::time::Instant::now();
    let cache = ImageCache::build(
        &ds,
        image_size,
        Some(&crate::data::cache::default_cache_dir()),
        src.skip_bad_images,
    )?;
    let build = t0.elapsed().as_secs_f64();
    let labels: Vec<usize> = ds.items.iter().map(|i| i.label).collect();
    let idx: Vec<usize> = (0..ds.items.len())
        .filter(|i| !cache.bad.contains(i))
        .collect();
    let cache = std::sync::Arc::new(cache);
    let labels = std::sync::Arc::new(labels);
    let t1 = std::time::Instant::now();
    let mut n = 0usize;
    for epoch in 0..epochs {
        let cfg = loader::LoaderConfig {
            batch_size,
            shuffle: true,
            augment: Some(AugmentConfig::default()),
            seed: 0,
            epoch,
            min_batch: 1,
            skip: 0,
        };
        for b in loader::batches(cache.clone(), labels.clone(), &idx, cfg) {
            n += b.len();
        }
    }
    let secs = t1.elapsed().as_secs_f64();
    println!(
        "cache: {} images at {image_size} px in {build:.2} s",
        idx.len()
    );
    println!(
        "loader: {n} images in {secs:.2} s = {:.0} images/s (augmentation on, {} threads)",
        n as f64 / secs,
        rayon::current_num_threads()
    );
    Ok(())
}
