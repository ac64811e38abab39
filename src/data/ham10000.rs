//! HAM10000: `HAM10000_metadata.csv` (columns lesion_id, image_id, dx, ...) and images in
//! `HAM10000_images_part_1/`, `HAM10000_images_part_2/` (or the Dataverse spelling `part1`,
//! `part2`, or a flat folder of `ISIC_*.jpg`), optional masks in
//! `HAM10000_segmentations_lesion_tschandl/ISIC_XXXXXXX_segmentation.png`.
//! Classes default to nv, mel, bkl (labels 0, 1, 2: the paper's order).

use crate::data::csv::read_csv;
use crate::data::dataset::{DataKind, DataOptions, Dataset, Item, ItemSource};
use crate::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The seven HAM10000 diagnosis codes.
pub const DX_CODES: [&str; 7] = ["nv", "mel", "bkl", "bcc", "akiec", "vasc", "df"];
/// The paper's three classes, in label order.
pub const DEFAULT_CLASSES: [&str; 3] = ["nv", "mel", "bkl"];

const IMAGE_DIRS: [&str; 5] = [
    "HAM10000_images_part_1",
    "HAM10000_images_part_2",
    "HAM10000_images_part1",
    "HAM10000_images_part2",
    "HAM10000_images",
];

fn index_images(root: &Path) -> Result<HashMap<String, PathBuf>> {
    let mut map = HashMap::new();
    let mut dirs: Vec<PathBuf> = IMAGE_DIRS
        .iter()
        .map(|d| root.join(d))
        .filter(|d| d.is_dir())
        .collect();
    dirs.push(root.to_path_buf());
    for d in dirs {
        let rd = std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))?;
        for e in rd.flatten() {
            let p = e.path();
            let ext = p
                .extension()
                .and_then(|e| e.to_str())
                .map(|e| e.to_ascii_lowercase());
            if matches!(ext.as_deref(), Some("jpg") | Some("jpeg") | Some("png")) && p.is_file() {
                if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                    map.entry(stem.to_string()).or_insert(p);
                }
            }
        }
    }
    Ok(map)
}

/// Whether a folder without metadata looks like a HAM10000 download.
pub fn looks_like_ham(root: &Path) -> bool {
    IMAGE_DIRS.iter().any(|d| root.join(d).is_dir())
        || std::fs::read_dir(root)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("ISIC_"))
            })
            .unwrap_or(false)
}

/// Opens a HAM10000 folder.
pub fn open(root: &Path, opts: &DataOptions) -> Result<Dataset> {
    let csv_path = root.join("HAM10000_metadata.csv");
    let csv_path = if csv_path.exists() {
        csv_path
    } else {
        root.join("HAM10000_metadata")
    };
    let csv = read_csv(&csv_path)?;
    let c_lesion = csv.column("lesion_id", &csv_path)?;
    let c_image = csv.column("image_id", &csv_path)?;
    let c_dx = csv.column("dx", &csv_path)?;
    let classes: Vec<String> = if opts.classes.is_empty() {
        DEFAULT_CLASSES.iter().map(|s| s.to_string()).collect()
    } else {
        opts.classes.clone()
    };
    for c in &classes {
        if !DX_CODES.contains(&c.as_str()) {
            return Err(Error::data_setting(
                "classes",
                c,
                format!(
                    "unknown HAM10000 class `{c}`; the dx codes are {}",
                    DX_CODES.join(", ")
                ),
            ));
        }
    }
    let mut seen = HashSet::new();
    if classes.iter().any(|c| !seen.insert(c.clone())) {
        return Err(Error::data_setting(
            "classes",
            classes.join(","),
            "a class is listed twice",
        ));
    }
    let images = index_images(root)?;
    let mask_dir = root.join("HAM10000_segmentations_lesion_tschandl");
    let mut items = Vec::new();
    let mut warnings = Vec::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut lesion_dx: HashMap<String, String> = HashMap::new();
    for (line, row) in &csv.rows {
        let get = |c: usize, name: &str| -> Result<String> {
            row.get(c).map(|s| s.trim().to_string()).ok_or_else(|| {
                Error::data(format!(
                    "{}: line {line}: the row has {} fields, no `{name}`",
                    csv_path.display(),
                    row.len()
                ))
            })
        };
        let image_id = get(c_image, "image_id")?;
        let lesion_id = get(c_lesion, "lesion_id")?;
        let dx = get(c_dx, "dx")?;
        if image_id.is_empty() || lesion_id.is_empty() {
            return Err(Error::data(format!(
                "{}: line {line}: empty image_id or lesion_id",
                csv_path.display()
            )));
        }
        if !DX_CODES.contains(&dx.as_str()) {
            return Err(Error::data(format!(
                "{}: line {line}: unknown dx code `{dx}` for {image_id}; expected one of {}",
                csv_path.display(),
                DX_CODES.join(", ")
            )));
        }
        if let Some(prev) = ids.insert(image_id.clone(), *line) {
            return Err(Error::data(format!(
                "{}: line {line}: image_id {image_id} appears twice (first on line {prev})",
                csv_path.display()
            )));
        }
        if let Some(d) = lesion_dx.insert(lesion_id.clone(), dx.clone()) {
            if d != dx {
                warnings.push(format!(
                    "lesion {lesion_id} has images with dx {d} and {dx}"
                ));
            }
        }
        let Some(label) = classes.iter().position(|c| *c == dx) else {
            continue;
        };
        let Some(path) = images.get(&image_id) else {
            let msg = format!(
                "{}: line {line}: image {image_id}.jpg not found in {}",
                csv_path.display(),
                IMAGE_DIRS[..2].join(" or ")
            );
            if opts.skip_bad_images {
                warnings.push(msg);
                continue;
            }
            return Err(Error::data(format!(
                "{msg} (use --skip-bad-images to skip missing images)"
            )));
        };
        let mask = mask_dir.join(format!("{image_id}_segmentation.png"));
        items.push(Item {
            image_id,
            lesion_id,
            label,
            source: ItemSource::File(path.clone()),
            mask: mask.exists().then_some(mask),
        });
    }
    if items.is_empty() {
        return Err(Error::data(format!(
            "{}: no images of the classes {} were found",
            root.display(),
            classes.join(", ")
        )));
    }
    Ok(Dataset {
        kind: DataKind::Ham10000(root.to_path_buf()),
        class_names: classes,
        items,
        warnings,
    })
}
