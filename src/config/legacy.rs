//! The flat training configuration of robustlens 0.1 (`train` in the `config.json` of run
//! folders made before the typed configuration), read and converted, so that old run folders
//! resume and old config files still load.

use super::{AdvConfig, DataConfig, Init, OptimConfig, OptimKind, PhaseConfig, Preset, Recipe};
use super::{Schedule, TrainConfig};
use crate::device::DeviceSpec;
use crate::model::{GroupSet, WeightsSource};
use crate::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Keys that only the flat form has.
const FLAT_ONLY: &[&str] = &[
    "command",
    "weights",
    "head_epochs",
    "head_batch_size",
    "head_lr",
    "epochs",
    "batch_size",
    "lr",
    "schedule",
    "early_stop",
    "optimizer",
    "weight_decay",
    "augment",
    "train_per_class",
    "val_per_class",
    "test_per_class",
    "classes",
    "skip_bad_images",
    "split",
    "from",
];

/// Whether a `train` object is in the flat form.
pub fn is_legacy(v: &serde_json::Value) -> bool {
    v.as_object().is_some_and(|o| {
        o.get("data").is_some_and(|d| d.is_string()) || FLAT_ONLY.iter().any(|k| o.contains_key(*k))
    })
}

/// The flat form, field for field, with its defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct Flat {
    command: String,
    preset: Option<String>,
    data: String,
    classes: Vec<String>,
    skip_bad_images: bool,
    split: Option<PathBuf>,
    image_size: usize,
    train_per_class: usize,
    val_per_class: usize,
    test_per_class: usize,
    seed: u64,
    weights: String,
    device: String,
    head_epochs: usize,
    head_batch_size: usize,
    head_lr: f64,
    epochs: usize,
    batch_size: usize,
    lr: f64,
    schedule: String,
    early_stop: Option<usize>,
    optimizer: OptimKind,
    weight_decay: f64,
    augment: bool,
    adversarial: Option<AdvConfig>,
    groups: String,
    freeze_bn_stats: bool,
    from: Option<PathBuf>,
    eval_batch_size: usize,
}

impl Default for Flat {
    fn default() -> Self {
        Flat {
            command: "train-standard".into(),
            preset: None,
            data: "synthetic".into(),
            classes: Vec::new(),
            skip_bad_images: false,
            split: None,
            image_size: 224,
            train_per_class: 800,
            val_per_class: 0,
            test_per_class: 299,
            seed: 0,
            weights: "hf:timm/resnet18.tv_in1k".into(),
            device: "cpu".into(),
            head_epochs: 10,
            head_batch_size: 32,
            head_lr: 1e-3,
            epochs: 25,
            batch_size: 16,
            lr: 3e-4,
            schedule: "step:15:0.1".into(),
            early_stop: None,
            optimizer: OptimKind::Adam,
            weight_decay: 5e-4,
            augment: true,
            adversarial: None,
            groups: "all".into(),
            freeze_bn_stats: false,
            from: None,
            eval_batch_size: 32,
        }
    }
}

/// Reads a flat `train` object (`origin` names the file in errors).
pub fn parse(v: serde_json::Value, origin: &Path) -> Result<TrainConfig> {
    let json = |msg: String| Error::Json {
        path: origin.to_path_buf(),
        msg,
    };
    let f: Flat = serde_json::from_value(v)
        .map_err(|e| json(format!("not a training configuration: {e}")))?;
    let in_file = |e: Error| json(format!("(flat configuration of an earlier version) {e}"));
    let recipe = match f.command.as_str() {
        "train-standard" => Recipe::TrainStandard,
        "train-robust" => Recipe::TrainRobust,
        "finetune" => Recipe::Finetune,
        other => {
            return Err(json(format!(
                "command `{other}`: use train-standard, train-robust or finetune"
            )))
        }
    };
    let preset = match f.preset.as_deref() {
        None => None,
        Some("paper") => Some(Preset::Paper),
        Some("quick") => Some(Preset::Quick),
        Some(other) => return Err(json(format!("preset `{other}`: use paper or quick"))),
    };
    let init = match (recipe, f.from) {
        (Recipe::Finetune, Some(from)) => Init::From(from),
        _ => Init::Weights(WeightsSource::parse(&f.weights).map_err(in_file)?),
    };
    Ok(TrainConfig {
        recipe,
        preset,
        arch: crate::model::Arch::Resnet18,
        image_size: f.image_size,
        seed: f.seed,
        device: DeviceSpec::parse(&f.device).map_err(in_file)?,
        data: DataConfig {
            source: f.data,
            classes: f.classes,
            skip_bad_images: f.skip_bad_images,
            split: f.split,
            train_per_class: f.train_per_class,
            val_per_class: f.val_per_class,
            test_per_class: f.test_per_class,
            augment: f.augment,
        },
        init,
        head: PhaseConfig {
            epochs: f.head_epochs,
            batch_size: f.head_batch_size,
            lr: f.head_lr,
            schedule: Schedule::None,
            early_stop: None,
        },
        main: PhaseConfig {
            epochs: f.epochs,
            batch_size: f.batch_size,
            lr: f.lr,
            schedule: Schedule::parse(&f.schedule).map_err(in_file)?,
            early_stop: f.early_stop,
        },
        optim: OptimConfig {
            kind: f.optimizer,
            weight_decay: f.weight_decay,
        },
        adversarial: f.adversarial,
        groups: GroupSet::parse(&f.groups).map_err(in_file)?,
        freeze_bn_stats: f.freeze_bn_stats,
        eval_batch_size: f.eval_batch_size,
    })
}
