//! Training configuration: one serde struct with defaults, presets, saved in the run folder's
//! `config.json` (under `train`) so `--config RUN/config.json` reproduces the run.

use crate::adversarial::Norm;
use crate::train::optim::OptimKind;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Adversarial training settings (PGD replaces every training batch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdvConfig {
    pub norm: Norm,
    /// Radius in `[0, 1]` pixel units at the working resolution.
    pub eps: f32,
    pub steps: usize,
    pub step_size: f32,
    pub random_start: bool,
}

impl AdvConfig {
    /// The training attack: these settings with use_best and no restarts, as robustness trains.
    pub fn pgd(&self) -> crate::adversarial::Pgd {
        crate::adversarial::Pgd {
            norm: self.norm,
            eps: self.eps,
            steps: self.steps,
            step_size: self.step_size,
            random_start: self.random_start,
            use_best: true,
            restarts: 0,
        }
    }
}

/// Everything a training run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// `train-standard`, `train-robust` or `finetune`.
    pub command: String,
    pub preset: Option<String>,
    pub data: String,
    pub classes: Vec<String>,
    pub skip_bad_images: bool,
    pub split: Option<PathBuf>,
    pub image_size: usize,
    pub train_per_class: usize,
    pub val_per_class: usize,
    pub test_per_class: usize,
    pub seed: u64,
    /// ImageNet start (`hf:...`, a file) or `none`.
    pub weights: String,
    pub device: String,
    pub head_epochs: usize,
    pub head_batch_size: usize,
    pub head_lr: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub schedule: String,
    pub early_stop: Option<usize>,
    pub optimizer: OptimKind,
    pub weight_decay: f64,
    pub augment: bool,
    pub adversarial: Option<AdvConfig>,
    /// Trainable groups of the main phase (finetune: the unfrozen groups).
    pub groups: String,
    pub freeze_bn_stats: bool,
    /// finetune: the run to start from.
    pub from: Option<PathBuf>,
    pub eval_batch_size: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
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

impl TrainConfig {
    /// Applies a preset: `paper` (the paper's settings at 224) or `quick` (CPU-friendly, on
    /// the synthetic set, a few minutes here).
    pub fn apply_preset(&mut self, name: &str) -> Result<()> {
        match name {
            "paper" => {
                let keep = (
                    self.command.clone(),
                    self.data.clone(),
                    self.adversarial.clone(),
                    self.from.clone(),
                );
                *self = TrainConfig {
                    command: keep.0,
                    data: keep.1,
                    adversarial: keep.2,
                    from: keep.3,
                    ..TrainConfig::default()
                };
                if self.command == "finetune" {
                    self.apply_finetune_defaults();
                    self.val_per_class = 50;
                    self.test_per_class = 249;
                }
            }
            "quick" => {
                self.image_size = 32;
                self.train_per_class = 100;
                self.val_per_class = 20;
                self.test_per_class = 50;
                self.weights = "none".into();
                self.head_epochs = 1;
                self.head_batch_size = 32;
                self.head_lr = 1e-3;
                self.epochs = 6;
                self.batch_size = 16;
                self.lr = 1e-3;
                self.schedule = "step:4:0.1".into();
                if self.command == "finetune" {
                    self.apply_finetune_defaults();
                    self.epochs = 3;
                    self.lr = 1e-4;
                }
            }
            other => return Err(Error::arg(format!("--preset {other}: use paper or quick"))),
        }
        self.preset = Some(name.to_string());
        Ok(())
    }

    /// The paper's fine-tuning recipe: lr 1e-5, plateau schedule, early stopping patience 10,
    /// no head phase.
    pub fn apply_finetune_defaults(&mut self) {
        self.head_epochs = 0;
        self.lr = 1e-5;
        self.schedule = "plateau:5:0.1".into();
        self.early_stop = Some(10);
        self.epochs = 50;
        self.adversarial = None;
    }

    /// Checks values before any work, naming the bad one.
    pub fn validate(&self) -> Result<()> {
        if self.image_size < 32 || self.image_size > 4096 {
            return Err(Error::arg(format!(
                "--image-size {}: use 32..4096 (a ResNet-18 needs at least 32 x 32)",
                self.image_size
            )));
        }
        for (name, v) in [("--lr", self.lr), ("--head-lr", self.head_lr)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::arg(format!(
                    "{name} {v}: the learning rate must be > 0"
                )));
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::arg(format!(
                "--weight-decay {}: must be >= 0",
                self.weight_decay
            )));
        }
        for (name, v) in [
            ("--batch-size", self.batch_size),
            ("--head-batch-size", self.head_batch_size),
            ("--eval-batch-size", self.eval_batch_size),
        ] {
            if v == 0 {
                return Err(Error::arg(format!("{name} 0: must be at least 1")));
            }
        }
        if self.batch_size == 1 || (self.head_epochs > 0 && self.head_batch_size == 1) {
            return Err(Error::arg(
                "batch size 1: BatchNorm in train mode needs at least 2 images per batch",
            ));
        }
        if self.train_per_class == 0 && self.split.is_none() {
            return Err(Error::arg("--train-per-class 0: need training images"));
        }
        crate::train::schedule::Schedule::parse(&self.schedule)?;
        crate::model::GroupSet::parse(&self.groups)?;
        if let Some(a) = &self.adversarial {
            a.pgd().validate()?;
        }
        Ok(())
    }
}
