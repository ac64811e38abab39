//! ImageFolder: `PATH/<class>/*.jpg|png`, classes in sorted order (as torchvision), optional
//! masks in `PATH/masks/<class>/<name>.png`. Each image is its own lesion.

use crate::data::dataset::{DataKind, DataOptions, Dataset, Item, ItemSource};
use crate::{Error, Result};
use std::path::Path;

/// Opens an ImageFolder.
pub fn open(root: &Path, opts: &DataOptions) -> Result<Dataset> {
    let mut classes: Vec<String> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(|s| s.to_string()))
        .filter(|n| n != "masks" && !n.starts_with('.'))
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(Error::data_setting(
            "data",
            root.display(),
            "no class folders; an ImageFolder is PATH/<class>/*.jpg, a HAM10000 folder holds HAM10000_metadata.csv",
        ));
    }
    if !opts.classes.is_empty() {
        for c in &opts.classes {
            if !classes.contains(c) {
                return Err(Error::data_setting(
                    "classes",
                    c,
                    format!(
                        "no such folder in {} (found: {})",
                        root.display(),
                        classes.join(", ")
                    ),
                ));
            }
        }
        classes = opts.classes.clone();
    }
    let mut items = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let dir = root.join(class);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && matches!(
                        p.extension()
                            .and_then(|e| e.to_str())
                            .map(|e| e.to_ascii_lowercase())
                            .as_deref(),
                        Some("jpg" | "jpeg" | "png")
                    )
            })
            .collect();
        files.sort();
        for p in files {
            let stem = p
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            let id = format!("{class}/{stem}");
            let mask = root.join("masks").join(class).join(format!("{stem}.png"));
            items.push(Item {
                image_id: id.clone(),
                lesion_id: id,
                label,
                source: ItemSource::File(p),
                mask: mask.exists().then_some(mask),
            });
        }
    }
    if items.is_empty() {
        return Err(Error::data_setting(
            "data",
            root.display(),
            "the class folders hold no .jpg or .png images",
        ));
    }
    Ok(Dataset {
        kind: DataKind::ImageFolder(root.to_path_buf()),
        class_names: classes,
        items,
        warnings: Vec::new(),
    })
}
