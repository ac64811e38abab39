//! Checkpoints: `model.safetensors` in the architecture's own names (loadable by
//! `torchvision.models.resnet18(num_classes=K).load_state_dict`, or timm's
//! `create_model(arch, num_classes=K).load_state_dict`) and `config.json` beside it.
//! Every write is atomic (temp file, fsync, rename): an interrupted write never leaves a
//! partial checkpoint under the final name.

use crate::fsutil::{read_json, write_atomic, write_json_atomic};
use crate::model::arch::Arch;
use crate::model::network::Network;
use crate::model::weights::load_weights;
use crate::{Error, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Describes a saved model; written as `config.json` beside its weights.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ModelConfig {
    /// The architecture.
    pub arch: Arch,
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
            arch: Arch::Resnet18,
            num_classes: 3,
            class_names: vec!["nv".into(), "mel".into(), "bkl".into()],
            image_size: 224,
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// Serialises the model's state dict to safetensors bytes.
pub fn model_to_bytes(model: &dyn Network) -> Result<Vec<u8>> {
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
pub fn save_weights(model: &dyn Network, path: &Path) -> Result<()> {
    let bytes = model_to_bytes(model)?;
    write_atomic(path, &bytes)
}

/// Saves `dir/<name>` (e.g. `model.safetensors`) and `dir/config.json`, both atomically.
pub fn save_checkpoint(
    model: &dyn Network,
    config: &ModelConfig,
    dir: &Path,
    name: &str,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(name);
    save_weights(model, &path)?;
    let mut cfg = config.clone();
    cfg.num_classes = model.num_classes();
    cfg.arch = model.kind();
    write_json_atomic(&dir.join("config.json"), &cfg)?;
    Ok(path)
}

/// Loads a checkpoint: `path` is a run folder (its `model.safetensors` and `config.json`) or
/// a weights file (with `config.json` beside it when there is one).
pub fn load_checkpoint(path: &Path, device: &Device) -> Result<(Box<dyn Network>, ModelConfig)> {
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
    let saved = if cfg_path.exists() {
        Some(read_json::<ModelConfig>(&cfg_path)?)
    } else {
        None
    };
    let (model, _) = load_weights(saved.as_ref().map(|c| c.arch), &weights, None, 0, device)?;
    let mut config = if let Some(c) = saved {
        c
    } else {
        ModelConfig {
            arch: model.kind(),
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
