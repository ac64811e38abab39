//! Checkpoints: `model.safetensors` in torchvision names (loadable by
//! `torchvision.models.resnet18(num_classes=K).load_state_dict`) and `config.json` beside it.
//! Every write is atomic (temp file, fsync, rename): an interrupted write never leaves a
//! partial checkpoint under the final name.

use crate::fsutil::{read_json, write_atomic, write_json_atomic};
use crate::model::resnet::ResNet18;
use crate::model::weights::load_weights;
use crate::{Error, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Describes a saved model; written as `config.json` beside its weights.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ModelConfig {
    /// Always `resnet18`.
    pub arch: String,
    pub num_classes: usize,
    /// Class names in label order (e.g. `["nv", "mel", "bkl"]`).
    pub class_names: Vec<String>,
    /// The image size the model was trained at.
    pub image_size: usize,
    /// robustlens version that wrote it.
    pub version: String,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            arch: "resnet18".into(),
            num_classes: 3,
            class_names: vec!["nv".into(), "mel".into(), "bkl".into()],
            image_size: 224,
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// Serialises the model's state dict to safetensors bytes.
pub fn model_to_bytes(model: &ResNet18) -> Result<Vec<u8>> {
    let sd = model.state_dict()?;
    let sd: Vec<(String, candle_core::Tensor)> = sd
        .into_iter()
        .map(|(n, t)| t.to_device(&Device::Cpu).map(|t| (n, t)))
        .collect::<candle_core::Result<_>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::serialize(sd.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))
        .map_err(|e| Error::model(format!("internal: cannot serialise checkpoint: {e}")))
}

/// Writes `model` to `path` (a `.safetensors` file) atomically.
pub fn save_weights(model: &ResNet18, path: &Path) -> Result<()> {
    let bytes = model_to_bytes(model)?;
    write_atomic(path, &bytes)
}

/// Saves `dir/<name>` (e.g. `model.safetensors`) and `dir/config.json`, both atomically.
pub fn save_checkpoint(
    model: &ResNet18,
    config: &ModelConfig,
    dir: &Path,
    name: &str,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(name);
    save_weights(model, &path)?;
    let mut cfg = config.clone();
    cfg.num_classes = model.num_classes();
    write_json_atomic(&dir.join("config.json"), &cfg)?;
    Ok(path)
}

/// Loads a checkpoint: `path` is a run folder (its `model.safetensors` and `config.json`) or
/// a weights file (with `config.json` beside it when there is one).
pub fn load_checkpoint(path: &Path, device: &Device) -> Result<(ResNet18, ModelConfig)> {
    let (weights, cfg_path) = if path.is_dir() {
        let w = path.join("model.safetensors");
        if !w.exists() {
            return Err(Error::weights(
                path,
                "folder has no model.safetensors; is it a robustlens run folder?",
            ));
        }
        (w, path.join("config.json"))
    } else {
        let cfg = path
            .parent()
            .map(|p| p.join("config.json"))
            .unwrap_or_else(|| PathBuf::from("config.json"));
        (path.to_path_buf(), cfg)
    };
    let (model, _) = load_weights(&weights, None, 0, device)?;
    let mut config = if cfg_path.exists() {
        read_json::<ModelConfig>(&cfg_path)?
    } else {
        ModelConfig {
            class_names: (0..model.num_classes())
                .map(|i| format!("class{i}"))
                .collect(),
            ..Default::default()
        }
    };
    if config.num_classes != model.num_classes() || config.class_names.len() != model.num_classes()
    {
        config.num_classes = model.num_classes();
        if config.class_names.len() != model.num_classes() {
            config.class_names = (0..model.num_classes())
                .map(|i| format!("class{i}"))
                .collect();
        }
    }
    Ok((model, config))
}
