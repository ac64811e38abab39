//! Entry points of the fuzz targets (`fuzz/`, run with `cargo fuzz`), shared with the
//! regression test that replays the committed corpus (`tests/fuzz_corpus.rs`). Each takes
//! arbitrary bytes and must return (with a value or an error), never panic.

use crate::data::csv::parse_csv_bytes;
use crate::data::dataset::{DataKind, ItemSource};
use crate::data::split::{Part, Split};
use crate::data::{Dataset, Item};
use crate::model::weights::{parse_safetensors, sniff, WeightsFormat};
use std::path::Path;

/// The CSV reader behind HAM10000's metadata file, and the column lookups made on it.
pub fn metadata_csv(data: &[u8]) {
    let path = Path::new("HAM10000_metadata.csv");
    if let Ok(csv) = parse_csv_bytes(data.to_vec(), path) {
        for col in ["lesion_id", "image_id", "dx"] {
            if let Ok(c) = csv.column(col, path) {
                for (_, row) in &csv.rows {
                    let _ = row.get(c).map(|s| s.trim().len());
                }
            }
        }
    }
}

/// A split file checked against a small data set, then used.
pub fn split_csv(data: &[u8]) {
    let ds = Dataset {
        kind: DataKind::ImageFolder("data".into()),
        class_names: vec!["a".into(), "b".into()],
        items: (0..6)
            .map(|i| Item {
                image_id: format!("img{i}"),
                lesion_id: format!("les{}", i / 2),
                label: i % 2,
                source: ItemSource::Synthetic(i as u64),
                mask: None,
            })
            .collect(),
        warnings: Vec::new(),
    };
    let path = Path::new("split.csv");
    if let Ok(csv) = parse_csv_bytes(data.to_vec(), path) {
        if let Ok(split) = Split::from_csv(&csv, path, &ds) {
            for part in [Part::Train, Part::Val, Part::Test] {
                let _ = split.indices(&ds, part, None);
                let _ = split.indices(&ds, part, Some(0));
            }
            let _ = split.to_csv();
        }
    }
}

/// A run's `config.json` (what `--config` reads), parsed and validated.
pub fn config_json(data: &[u8]) {
    if let Ok(cfg) = serde_json::from_slice::<crate::run::RunConfig>(data) {
        let _ = cfg.train.validate();
    }
    if let Ok(tc) = serde_json::from_slice::<crate::train::TrainConfig>(data) {
        let _ = tc.validate();
    }
}

/// Layer-group specifications (`--groups 3-5`).
pub fn group_spec(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(g) = crate::model::GroupSet::parse(s) {
            let _ = g.groups();
            let _ = g.to_string();
        }
    }
}

/// A weights file's first bytes and safetensors header.
pub fn weights_header(data: &[u8]) {
    let path = Path::new("weights.safetensors");
    if let Ok(WeightsFormat::Safetensors) = sniff(path, data) {
        if let Ok(tensors) = parse_safetensors(data, path) {
            for (_, t) in tensors {
                let _ = t.dims().len();
            }
        }
    }
}
