//! Data sources behind one `--data` argument: `synthetic` (default), a HAM10000 folder, or an
//! ImageFolder. A dataset is a list of items (image id, lesion id, label, where the pixels and
//! the optional lesion mask come from); pixels are loaded on demand at a working size.

use crate::data::synthetic::SyntheticConfig;
use crate::data::transforms::{center_crop_square, load_image, resize_bilinear_aa};
use crate::{Error, Result};
use image::{GrayImage, RgbImage};
use std::path::{Path, PathBuf};

/// Where an item's pixels come from.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemSource {
    File(PathBuf),
    /// Index into the synthetic generator.
    Synthetic(u64),
}

/// One image of a data set.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub image_id: String,
    pub lesion_id: String,
    pub label: usize,
    pub source: ItemSource,
    pub mask: Option<PathBuf>,
}

/// The kind of a data source.
#[derive(Debug, Clone, PartialEq)]
pub enum DataKind {
    Synthetic(SyntheticConfig),
    /// The `synthetic:blocks` control ([`crate::data::blocks`]).
    Blocks(crate::data::blocks::BlocksConfig),
    Ham10000(PathBuf),
    ImageFolder(PathBuf),
}

/// A data set: items and class names (label order).
#[derive(Debug, Clone)]
pub struct Dataset {
    pub kind: DataKind,
    pub class_names: Vec<String>,
    pub items: Vec<Item>,
    /// Problems found while indexing that did not stop it (e.g. skipped images).
    pub warnings: Vec<String>,
}

/// How to open a data source.
#[derive(Debug, Clone)]
pub struct DataOptions {
    /// Class names to keep (HAM10000 dx codes; ImageFolder folder names). Empty = default.
    pub classes: Vec<String>,
    /// Skip unreadable images instead of failing (reported).
    pub skip_bad_images: bool,
    /// For the synthetic set: images per class to generate.
    pub synthetic_per_class: usize,
    pub seed: u64,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            classes: Vec::new(),
            skip_bad_images: false,
            synthetic_per_class: 200,
            seed: 0,
        }
    }
}

impl Dataset {
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Loads item `i` at `size`×`size` (centre crop + Pillow bilinear resize), with its mask
    /// (resized with nearest neighbour, 255 = lesion) when it has one.
    pub fn load(&self, i: usize, size: usize) -> Result<(RgbImage, Option<GrayImage>)> {
        let item = &self.items[i];
        match (&item.source, &self.kind) {
            (ItemSource::Synthetic(idx), DataKind::Synthetic(cfg)) => {
                let (img, mask) = crate::data::synthetic::render(cfg, *idx, item.label, size);
                Ok((img, Some(mask)))
            }
            (ItemSource::Synthetic(idx), DataKind::Blocks(cfg)) => {
                let (img, mask) = crate::data::blocks::render(cfg, *idx, item.label, size);
                Ok((img, Some(mask)))
            }
            (ItemSource::File(p), _) => {
                let img = load_image(p)?;
                let (w, h) = img.dimensions();
                let out = resize_bilinear_aa(&center_crop_square(&img), size as u32, size as u32);
                let mask = match &item.mask {
                    Some(mp) => Some(load_mask(mp, w, h, size)?),
                    None => None,
                };
                Ok((out, mask))
            }
            _ => Err(Error::data(
                "internal: synthetic item outside the synthetic set",
            )),
        }
    }

    /// The artifact masks of item `i` at `size` x `size` (255 where a hair, ruler tick, ink mark
    /// or dark corner was drawn), in [`crate::data::synthetic::Artifact::ALL`] order.
    ///
    /// The built-in lesion set renders them. An ImageFolder has them when it holds
    /// `masks/artifacts/` (what `data synth` writes): then every image needs one mask per kind
    /// in `masks/artifacts/<kind>/<class>/<name>.png` (empty when the image has none of that
    /// kind), cropped and resized like its image. Other sources have none.
    pub fn artifact_masks(
        &self,
        i: usize,
        size: usize,
    ) -> Result<Option<Vec<(crate::data::synthetic::Artifact, GrayImage)>>> {
        use crate::data::synthetic::Artifact;
        let item = &self.items[i];
        match (&item.source, &self.kind) {
            (ItemSource::Synthetic(idx), DataKind::Synthetic(cfg)) => Ok(Some(
                crate::data::synthetic::artifact_masks(cfg, *idx, item.label, size),
            )),
            (ItemSource::File(p), DataKind::ImageFolder(root)) => {
                let dir = root.join("masks").join("artifacts");
                if !dir.is_dir() {
                    return Ok(None);
                }
                let (w, h) = image::image_dimensions(p).map_err(|e| Error::Image {
                    path: p.clone(),
                    msg: format!("cannot be read ({e})"),
                })?;
                let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
                let class = &self.class_names[item.label];
                Artifact::ALL
                    .iter()
                    .map(|&a| {
                        let mp = dir.join(a.name()).join(class).join(format!("{stem}.png"));
                        if !mp.is_file() {
                            return Err(Error::data(format!(
                                "{} is missing: a folder with masks/artifacts needs one mask per \
                                 kind ({}) for every image, empty where it has none (as `data \
                                 synth` writes them); add it or remove masks/artifacts",
                                mp.display(),
                                Artifact::ALL.map(|a| a.name()).join(", ")
                            )));
                        }
                        Ok((a, load_mask(&mp, w, h, size)?))
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Number of items with a mask.
    pub fn masks_found(&self) -> usize {
        self.items
            .iter()
            .filter(|i| i.mask.is_some() || matches!(i.source, ItemSource::Synthetic(_)))
            .count()
    }
}

/// Loads a lesion mask (values > 127 are lesion), crops and resizes it like its image.
pub fn load_mask(path: &Path, img_w: u32, img_h: u32, size: usize) -> Result<GrayImage> {
    let m = image::open(path)
        .map_err(|e| Error::Image {
            path: path.into(),
            msg: format!("mask cannot be decoded ({e})"),
        })?
        .to_luma8();
    if m.dimensions() != (img_w, img_h) {
        return Err(Error::Image {
            path: path.into(),
            msg: format!(
                "mask is {:?} but its image is {:?}",
                m.dimensions(),
                (img_w, img_h)
            ),
        });
    }
    let (w, h) = m.dimensions();
    let s = w.min(h);
    let left = (w - s) / 2 + ((w - s) % 2 == 1 && ((w - s) / 2) % 2 == 1) as u32;
    let top = (h - s) / 2 + ((h - s) % 2 == 1 && ((h - s) / 2) % 2 == 1) as u32;
    let sq = image::imageops::crop_imm(&m, left, top, s, s).to_image();
    let r = image::imageops::resize(
        &sq,
        size as u32,
        size as u32,
        image::imageops::FilterType::Nearest,
    );
    Ok(GrayImage::from_fn(size as u32, size as u32, |x, y| {
        image::Luma([if r.get_pixel(x, y)[0] > 127 { 255 } else { 0 }])
    }))
}
