//! Training configuration as typed, nested data: what a run is made of, saved in its
//! folder's `config.json` (under `train`) so that `--config RUN/config.json` reproduces it.
//!
//! ```text
//! TrainConfig { recipe, preset, image_size, seed, device,
//!               data: DataConfig { source, classes, split, per-class counts, augment, .. },
//!               init: Init::Weights(WeightsSource) | Init::From(run folder),
//!               head: PhaseConfig, main: PhaseConfig { epochs, batch_size, lr, schedule, early_stop },
//!               optim: OptimConfig { kind, weight_decay },
//!               adversarial: Option<AdvConfig>, groups: GroupSet, freeze_bn_stats, eval_batch_size }
//! ```
//!
//! Every value is parsed once, into its type, when the configuration is built; the trainer
//! never sees a string it has to interpret.
//!
//! **Precedence** ([`layered`]): the preset is the base, a config file overrides it field by
//! field (a partial file changes only what it names), and explicit [`Overrides`] (the
//! command-line flags) override both. The presets themselves are data in [`Preset::base`].
//! Files written by earlier versions (a flat `train` object with `command`, `lr`, ...) still
//! load ([`legacy`]).
//!
//! ```
//! use robustlens::config::{layered, Overrides, Preset, Recipe};
//! # fn main() -> robustlens::Result<()> {
//! let o = Overrides { epochs: Some(3), ..Default::default() };
//! let cfg = layered(Recipe::TrainStandard, Some(Preset::Quick), None, &o)?;
//! assert_eq!((cfg.image_size, cfg.main.epochs), (32, 3)); // preset, then the flag
//! # Ok(()) }
//! ```

pub mod legacy;

use crate::adversarial::{Norm, Pgd};
use crate::device::DeviceSpec;
use crate::model::{Arch, GroupSet, WeightsSource};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// What a training run does.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum, Default,
)]
#[serde(rename_all = "kebab-case")]
pub enum Recipe {
    /// Two-phase transfer learning: the head, then everything.
    #[default]
    TrainStandard,
    /// Standard training with every batch replaced by its PGD version.
    TrainRobust,
    /// Chosen layer groups of a trained model, the rest frozen.
    Finetune,
}

impl Recipe {
    /// The command's name (`train-standard`, ...), as in run folders and resume states.
    pub fn as_str(self) -> &'static str {
        match self {
            Recipe::TrainStandard => "train-standard",
            Recipe::TrainRobust => "train-robust",
            Recipe::Finetune => "finetune",
        }
    }
}

impl fmt::Display for Recipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named set of settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The paper's settings at 224 px (HAM10000, ImageNet start, 10 + 25 epochs).
    Paper,
    /// CPU-friendly: 32 px, the synthetic set, random start, 1 + 6 epochs (minutes).
    Quick,
}

impl Preset {
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Paper => "paper",
            Preset::Quick => "quick",
        }
    }

    /// The preset used when none is named: `quick` on a built-in set (`synthetic`,
    /// `synthetic:blocks`), else `paper`.
    pub fn default_for(data: &str) -> Preset {
        if data.trim().to_ascii_lowercase().starts_with("synthetic") {
            Preset::Quick
        } else {
            Preset::Paper
        }
    }

    /// Every preset's settings for a recipe, in one place.
    pub fn base(self, recipe: Recipe) -> TrainConfig {
        let paper = TrainConfig {
            recipe,
            preset: Some(self),
            ..TrainConfig::default()
        };
        let mut c = match self {
            Preset::Paper => paper,
            Preset::Quick => TrainConfig {
                image_size: 32,
                data: DataConfig {
                    train_per_class: 100,
                    val_per_class: 20,
                    test_per_class: 50,
                    ..paper.data.clone()
                },
                init: Init::Weights(WeightsSource::Random),
                head: PhaseConfig {
                    epochs: 1,
                    batch_size: 32,
                    lr: 1e-3,
                    schedule: Schedule::None,
                    early_stop: None,
                },
                main: PhaseConfig {
                    epochs: 6,
                    batch_size: 16,
                    lr: 1e-3,
                    schedule: Schedule::Step {
                        epoch: 4,
                        factor: 0.1,
                    },
                    early_stop: None,
                },
                ..paper
            },
        };
        if recipe == Recipe::Finetune {
            c.head.epochs = 0;
            c.main = PhaseConfig::finetune();
            if self == Preset::Quick {
                c.main.epochs = 3;
                c.main.lr = 1e-4;
            } else {
                c.data.val_per_class = 50;
                c.data.test_per_class = 249;
            }
        }
        c
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A learning-rate schedule: `step:E:F` (x F after epoch E, as StepLR), `plateau:P:F` (x F when
/// the monitored loss has not improved for P epochs, as ReduceLROnPlateau) or `none`.
/// Written as that text in `config.json`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    None,
    Step { epoch: usize, factor: f64 },
    Plateau { patience: usize, factor: f64 },
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Schedule> {
        let t = s.trim().to_ascii_lowercase();
        if t == "none" || t.is_empty() {
            return Ok(Schedule::None);
        }
        let parts: Vec<&str> = t.split(':').collect();
        let bad = || {
            Error::config(
                "schedule",
                s,
                "use step:EPOCH:FACTOR (e.g. step:15:0.1), plateau:PATIENCE:FACTOR (e.g. plateau:5:0.1) or none",
            )
        };
        if parts.len() != 3 {
            return Err(bad());
        }
        let n: usize = parts[1].parse().map_err(|_| bad())?;
        let f: f64 = parts[2].parse().map_err(|_| bad())?;
        if !(f > 0.0 && f <= 1.0) {
            return Err(Error::config("schedule", s, "the factor must be in (0, 1]"));
        }
        match parts[0] {
            "step" => Ok(Schedule::Step {
                epoch: n,
                factor: f,
            }),
            "plateau" => Ok(Schedule::Plateau {
                patience: n,
                factor: f,
            }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::None => write!(f, "none"),
            Schedule::Step { epoch, factor } => write!(f, "step:{epoch}:{factor}"),
            Schedule::Plateau { patience, factor } => write!(f, "plateau:{patience}:{factor}"),
        }
    }
}

/// Serde as the text form (`Display` / `parse`), for the types that are written so in
/// `config.json`.
macro_rules! serde_as_text {
    ($t:ty, $parse:path) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_as_text!(Schedule, Schedule::parse);
serde_as_text!(GroupSet, GroupSet::parse);
serde_as_text!(WeightsSource, WeightsSource::parse);
serde_as_text!(DeviceSpec, DeviceSpec::parse);

/// The optimiser's variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptimKind {
    /// L2 weight decay added to the gradient (`torch.optim.Adam`), as the paper.
    #[default]
    Adam,
    /// Decoupled weight decay (`torch.optim.AdamW`).
    #[value(name = "adamw")]
    AdamW,
}

/// The optimiser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    pub kind: OptimKind,
    pub weight_decay: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            kind: OptimKind::Adam,
            weight_decay: 5e-4,
        }
    }
}

/// One phase of training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhaseConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub schedule: Schedule,
    /// Stop the phase when the validation loss has not improved for this many epochs.
    pub early_stop: Option<usize>,
}

impl Default for PhaseConfig {
    /// The paper's whole-network phase: 25 epochs, batch 16, lr 3e-4, x0.1 after epoch 15.
    fn default() -> Self {
        PhaseConfig {
            epochs: 25,
            batch_size: 16,
            lr: 3e-4,
            schedule: Schedule::Step {
                epoch: 15,
                factor: 0.1,
            },
            early_stop: None,
        }
    }
}

impl PhaseConfig {
    /// The paper's head phase: 10 epochs, batch 32, lr 1e-3, constant.
    pub fn paper_head() -> Self {
        PhaseConfig {
            epochs: 10,
            batch_size: 32,
            lr: 1e-3,
            schedule: Schedule::None,
            early_stop: None,
        }
    }
    /// The paper's fine-tuning recipe: up to 50 epochs at lr 1e-5, plateau schedule, early
    /// stopping after 10 epochs without improvement.
    pub fn finetune() -> Self {
        PhaseConfig {
            epochs: 50,
            batch_size: 16,
            lr: 1e-5,
            schedule: Schedule::Plateau {
                patience: 5,
                factor: 0.1,
            },
            early_stop: Some(10),
        }
    }
}

/// The data of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// `synthetic`, a HAM10000 folder or an ImageFolder.
    pub source: String,
    /// Classes to use (empty: the data set's default).
    pub classes: Vec<String>,
    pub skip_bad_images: bool,
    /// A split CSV; otherwise one is made from the counts below.
    pub split: Option<PathBuf>,
    pub train_per_class: usize,
    pub val_per_class: usize,
    pub test_per_class: usize,
    /// Training augmentation.
    pub augment: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            source: "synthetic".into(),
            classes: Vec::new(),
            skip_bad_images: false,
            split: None,
            train_per_class: 800,
            val_per_class: 0,
            test_per_class: 299,
            augment: true,
        }
    }
}

/// Where the model's weights start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// ImageNet (or any) weights, or `none` for a random start; the head is replaced.
    Weights(WeightsSource),
    /// A trained run folder (fine-tuning).
    From(PathBuf),
}

impl Default for Init {
    fn default() -> Self {
        Init::Weights(WeightsSource::Hub {
            repo: "timm/resnet18.tv_in1k".into(),
            file: "model.safetensors".into(),
        })
    }
}

/// Adversarial training: PGD replaces every training batch.
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
    /// The paper's training attack of radius `eps`: L2, `steps` steps of eps/5, random start.
    pub fn preset(eps: f32, steps: usize) -> Self {
        let p = Pgd::training(eps, steps);
        AdvConfig {
            norm: p.norm,
            eps: p.eps,
            steps: p.steps,
            step_size: p.step_size,
            random_start: p.random_start,
        }
    }
    /// The training attack of radius `eps` in `steps` steps that keeps the paper's reach (7
    /// steps of eps/5 = 1.4 eps): steps of 1.4 eps / `steps`, random start. Equal to
    /// [`AdvConfig::preset`] at 7 steps; fewer steps make robust training cheaper.
    pub fn same_reach(eps: f32, steps: usize) -> Self {
        let steps = steps.max(1);
        AdvConfig {
            step_size: 1.4 * eps / steps as f32,
            ..AdvConfig::preset(eps, steps)
        }
    }

    /// The training attack: these settings with use_best and no restarts, as robustness trains.
    pub fn pgd(&self) -> Pgd {
        Pgd {
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
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub recipe: Recipe,
    /// The preset this configuration started from (informational).
    pub preset: Option<Preset>,
    /// The architecture (fine-tuning: the parent run's).
    pub arch: Arch,
    /// Working resolution: images are N x N.
    pub image_size: usize,
    pub seed: u64,
    pub device: DeviceSpec,
    pub data: DataConfig,
    pub init: Init,
    /// The head-only phase (skipped when its epochs are 0; never run by fine-tuning).
    pub head: PhaseConfig,
    /// The main phase: every group in `groups` trains.
    pub main: PhaseConfig,
    pub optim: OptimConfig,
    pub adversarial: Option<AdvConfig>,
    /// Trainable groups of the main phase (fine-tuning: the unfrozen groups).
    pub groups: GroupSet,
    /// Also freeze the BatchNorm running statistics of frozen groups.
    pub freeze_bn_stats: bool,
    pub eval_batch_size: usize,
}

impl Default for TrainConfig {
    /// The paper's settings (the `paper` preset) for standard training.
    fn default() -> Self {
        TrainConfig {
            recipe: Recipe::TrainStandard,
            preset: None,
            arch: Arch::Resnet18,
            image_size: 224,
            seed: 0,
            device: DeviceSpec::Cpu,
            data: DataConfig::default(),
            init: Init::default(),
            head: PhaseConfig::paper_head(),
            main: PhaseConfig::default(),
            optim: OptimConfig::default(),
            adversarial: None,
            groups: GroupSet::all(),
            freeze_bn_stats: false,
            eval_batch_size: 32,
        }
    }
}

impl TrainConfig {
    /// Reads a training configuration from JSON: a run's `config.json` (its `train` part) or
    /// a configuration file, in today's nested form or the flat form of earlier versions.
    pub fn from_json(v: serde_json::Value, origin: &Path) -> Result<TrainConfig> {
        let v = train_object(v);
        if legacy::is_legacy(&v) {
            return legacy::parse(v, origin);
        }
        nested(v, origin)
    }

    /// The phases this configuration runs, in order: `(name, phase, groups)`.
    pub fn phases(&self) -> Vec<(&'static str, PhaseConfig, GroupSet)> {
        let mut v = Vec::new();
        if self.recipe != Recipe::Finetune && self.head.epochs > 0 {
            v.push((
                "head",
                PhaseConfig {
                    schedule: Schedule::None,
                    early_stop: None,
                    ..self.head.clone()
                },
                GroupSet::single(5).expect("group 5 exists"),
            ));
        }
        let name = if self.recipe == Recipe::Finetune {
            "finetune"
        } else {
            "full"
        };
        v.push((name, self.main.clone(), self.groups));
        v
    }

    /// The run folder to start from, when fine-tuning.
    pub fn from_run(&self) -> Option<&Path> {
        match &self.init {
            Init::From(p) => Some(p),
            Init::Weights(_) => None,
        }
    }

    /// Checks values before any work, naming the bad setting.
    pub fn validate(&self) -> Result<()> {
        if self.image_size < 32 || self.image_size > 4096 {
            return Err(Error::config(
                "image-size",
                self.image_size,
                "use 32..4096 (a ResNet-18 needs at least 32 x 32)",
            ));
        }
        self.arch.check_image_size(self.image_size)?;
        for (name, v) in [("lr", self.main.lr), ("head-lr", self.head.lr)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::config(name, v, "the learning rate must be > 0"));
            }
        }
        if !(self.optim.weight_decay.is_finite() && self.optim.weight_decay >= 0.0) {
            return Err(Error::config(
                "weight-decay",
                self.optim.weight_decay,
                "must be >= 0",
            ));
        }
        for (name, v) in [
            ("batch-size", self.main.batch_size),
            ("head-batch-size", self.head.batch_size),
            ("eval-batch-size", self.eval_batch_size),
        ] {
            if v == 0 {
                return Err(Error::config(name, 0, "must be at least 1"));
            }
        }
        if self.main.batch_size == 1 || (self.head.epochs > 0 && self.head.batch_size == 1) {
            return Err(Error::config(
                "batch-size",
                1,
                "BatchNorm in train mode needs at least 2 images per batch",
            ));
        }
        if self.data.train_per_class == 0 && self.data.split.is_none() {
            return Err(Error::config("train-per-class", 0, "need training images"));
        }
        match (self.recipe, &self.init) {
            (Recipe::Finetune, Init::Weights(_)) => {
                return Err(Error::conflict(
                    "fine-tuning starts from a trained run: set `from` to its folder",
                ))
            }
            (r, Init::From(p)) if r != Recipe::Finetune => {
                return Err(Error::conflict(format!(
                    "{r} starts from weights, not from a run ({}); use finetune to continue a trained model",
                    p.display()
                )))
            }
            _ => {}
        }
        match (self.recipe, &self.adversarial) {
            (Recipe::TrainRobust, None) => {
                return Err(Error::config(
                    "eps",
                    "",
                    "train-robust needs an L2 radius at the working size (eps) or a paper eps at 224 px (eps-at-224)",
                ))
            }
            (_, Some(a)) => a.pgd().validate()?,
            _ => {}
        }
        Ok(())
    }
}

/// Explicit settings (the command-line flags): each one given replaces the preset's and the
/// config file's value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub data: Option<String>,
    pub classes: Option<Vec<String>>,
    pub skip_bad_images: bool,
    pub split: Option<PathBuf>,
    pub image_size: Option<usize>,
    pub train_per_class: Option<usize>,
    pub val_per_class: Option<usize>,
    pub test_per_class: Option<usize>,
    pub seed: Option<u64>,
    pub arch: Option<Arch>,
    pub weights: Option<WeightsSource>,
    pub device: Option<DeviceSpec>,
    pub head_epochs: Option<usize>,
    pub head_batch_size: Option<usize>,
    pub head_lr: Option<f64>,
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub lr: Option<f64>,
    pub schedule: Option<Schedule>,
    pub early_stop: Option<usize>,
    pub optimizer: Option<OptimKind>,
    pub weight_decay: Option<f64>,
    pub no_augment: bool,
    pub groups: Option<GroupSet>,
    pub freeze_bn_stats: bool,
}

impl Overrides {
    /// These settings, with every one not given here taken from `fallback` (a flag given
    /// in either is set).
    pub fn or(&self, fallback: &Overrides) -> Overrides {
        macro_rules! pick {
            ($($f:ident),*; $($b:ident),*) => {
                Overrides {
                    $( $f: self.$f.clone().or_else(|| fallback.$f.clone()), )*
                    $( $b: self.$b || fallback.$b, )*
                }
            };
        }
        pick!(data, classes, split, image_size, train_per_class, val_per_class, test_per_class,
              seed, arch, weights, device, head_epochs, head_batch_size, head_lr, epochs, batch_size,
              lr, schedule, early_stop, optimizer, weight_decay, groups;
              skip_bad_images, no_augment, freeze_bn_stats)
    }

    /// Writes every given value into `cfg`.
    pub fn apply(&self, cfg: &mut TrainConfig) {
        macro_rules! set {
            ($($field:ident => $($target:ident).+),* $(,)?) => {
                $( if let Some(v) = &self.$field { cfg.$($target).+ = v.clone(); } )*
            };
        }
        set!(
            data => data.source,
            classes => data.classes,
            train_per_class => data.train_per_class,
            val_per_class => data.val_per_class,
            test_per_class => data.test_per_class,
            image_size => image_size,
            seed => seed,
            arch => arch,
            device => device,
            head_epochs => head.epochs,
            head_batch_size => head.batch_size,
            head_lr => head.lr,
            epochs => main.epochs,
            batch_size => main.batch_size,
            lr => main.lr,
            schedule => main.schedule,
            optimizer => optim.kind,
            weight_decay => optim.weight_decay,
            groups => groups,
        );
        if self.split.is_some() {
            cfg.data.split = self.split.clone();
        }
        if self.early_stop.is_some() {
            cfg.main.early_stop = self.early_stop;
        }
        if let Some(w) = &self.weights {
            if cfg.recipe != Recipe::Finetune {
                cfg.init = Init::Weights(w.clone());
            }
        }
        cfg.data.skip_bad_images |= self.skip_bad_images;
        cfg.freeze_bn_stats |= self.freeze_bn_stats;
        if self.no_augment {
            cfg.data.augment = false;
        }
    }
}

/// Deep merge: every key of `top` replaces (objects: merges into) the one in `base`.
fn merge(base: &mut serde_json::Value, top: serde_json::Value) {
    match (base, top) {
        (serde_json::Value::Object(b), serde_json::Value::Object(t)) => {
            for (k, v) in t {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, t) => *b = t,
    }
}

/// The training configuration in a JSON value: a run's `config.json` holds it under `train`.
fn train_object(v: serde_json::Value) -> serde_json::Value {
    match v.get("train") {
        Some(t) if t.is_object() => t.clone(),
        _ => v,
    }
}

/// The nested form, from `origin` (named in the error).
fn nested(v: serde_json::Value, origin: &Path) -> Result<TrainConfig> {
    serde_json::from_value(v).map_err(|e| Error::Json {
        path: origin.to_path_buf(),
        msg: format!("not a training configuration: {e}"),
    })
}

/// Builds a configuration from `base` (a preset), then a config file, then `overrides`.
pub fn layer(base: TrainConfig, file: Option<&Path>, overrides: &Overrides) -> Result<TrainConfig> {
    let recipe = base.recipe;
    let mut cfg = match file {
        None => base,
        Some(path) => {
            let file = train_object(crate::fsutil::read_json(path)?);
            // Only the keys the file names replace the base (a legacy file is complete).
            let top = if legacy::is_legacy(&file) {
                serde_json::to_value(legacy::parse(file, path)?)
                    .map_err(|e| Error::internal(e.to_string()))?
            } else {
                file
            };
            let mut v = serde_json::to_value(&base).map_err(|e| Error::internal(e.to_string()))?;
            merge(&mut v, top);
            nested(v, path)?
        }
    };
    cfg.recipe = recipe;
    overrides.apply(&mut cfg);
    // The default weights follow the architecture.
    if cfg.arch != Arch::Resnet18 && cfg.init == Init::default() {
        cfg.init = match cfg.arch.default_hub_repo() {
            Some(repo) => Init::Weights(WeightsSource::Hub {
                repo: repo.into(),
                file: "model.safetensors".into(),
            }),
            None => {
                return Err(Error::config(
                    "weights",
                    "default",
                    format!(
                        "{} has no ImageNet weights on the Hugging Face hub; download \
                         torchvision's (https://download.pytorch.org/models/\
                         efficientnet_b0_rwightman-7f5810bc.pth) and give --weights FILE, or \
                         --weights none for a random start",
                        cfg.arch
                    ),
                ))
            }
        };
    }
    Ok(cfg)
}

/// The precedence rule: the preset (`preset`, or [`Preset::default_for`] the data when no
/// preset and no file are given), then the config file, then the overrides. The result is
/// not validated yet: a recipe may still add its part (the attack of `train-robust`).
pub fn layered(
    recipe: Recipe,
    preset: Option<Preset>,
    file: Option<&Path>,
    overrides: &Overrides,
) -> Result<TrainConfig> {
    let base = match (preset, file) {
        (Some(p), _) => p.base(recipe),
        (None, Some(_)) => TrainConfig {
            recipe,
            ..TrainConfig::default()
        },
        (None, None) => {
            Preset::default_for(overrides.data.as_deref().unwrap_or("synthetic")).base(recipe)
        }
    };
    layer(base, file, overrides)
}

/// Converts a paper eps at 224 px to the same per-pixel RMS at `size`.
pub fn eps_from_224(eps224: f32, size: usize) -> f32 {
    eps224 * size as f32 / 224.0
}

/// Per-pixel RMS of an L2 radius at a resolution: eps / sqrt(3 H W).
pub fn eps_rms(eps: f32, size: usize) -> f64 {
    eps as f64 / ((3 * size * size) as f64).sqrt()
}

#[cfg(test)]
mod tests {

    #[test]
    fn fewer_training_steps_keep_the_papers_reach() {
        assert_eq!(AdvConfig::same_reach(2.0, 7), AdvConfig::preset(2.0, 7));
        let a = AdvConfig::same_reach(2.0, 3);
        assert_eq!((a.steps, a.random_start), (3, true));
        assert!((a.step_size * 3.0 - 1.4 * 2.0).abs() < 1e-6);
        let o = Overrides {
            epochs: Some(3),
            no_augment: false,
            ..Default::default()
        };
        let plan = Overrides {
            epochs: Some(10),
            image_size: Some(64),
            no_augment: true,
            ..Default::default()
        };
        let m = o.or(&plan);
        assert_eq!(
            (m.epochs, m.image_size, m.no_augment),
            (Some(3), Some(64), true)
        );
    }
    use super::*;

    fn write(dir: &Path, name: &str, v: serde_json::Value) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p
    }

    #[test]
    fn precedence_is_preset_then_file_then_flags() {
        let d = tempfile::tempdir().unwrap();
        let f = write(
            d.path(),
            "c.json",
            serde_json::json!({"main": {"lr": 0.02, "epochs": 9}, "seed": 7}),
        );
        let o = Overrides {
            epochs: Some(2),
            ..Default::default()
        };
        let c = layered(Recipe::TrainStandard, Some(Preset::Quick), Some(&f), &o).unwrap();
        assert_eq!(c.image_size, 32, "from the preset");
        assert_eq!(c.main.lr, 0.02, "the file beats the preset");
        assert_eq!(c.seed, 7, "from the file");
        assert_eq!(c.main.epochs, 2, "the flag beats the file");
        assert_eq!(c.main.batch_size, 16, "untouched by the partial file");
        // No preset and no file: quick on the synthetic set, paper elsewhere.
        let c = layered(Recipe::TrainStandard, None, None, &Overrides::default()).unwrap();
        assert_eq!(c.preset, Some(Preset::Quick));
        let o = Overrides {
            data: Some("/data/ham".into()),
            ..Default::default()
        };
        let c = layered(Recipe::TrainStandard, None, None, &o).unwrap();
        assert_eq!((c.preset, c.image_size), (Some(Preset::Paper), 224));
        let o = Overrides {
            data: Some("synthetic:blocks".into()),
            ..Default::default()
        };
        let c = layered(Recipe::TrainStandard, None, None, &o).unwrap();
        assert_eq!(c.preset, Some(Preset::Quick));
    }

    #[test]
    fn config_round_trips_and_names_bad_fields() {
        let c = Preset::Quick.base(Recipe::Finetune);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["main"]["schedule"], "plateau:5:0.1");
        assert_eq!(v["recipe"], "finetune");
        let back = TrainConfig::from_json(v, Path::new("x.json")).unwrap();
        assert_eq!(back, c);
        let e =
            TrainConfig::from_json(serde_json::json!({"main": {"lrr": 1}}), Path::new("x.json"))
                .unwrap_err()
                .to_string();
        assert!(e.contains("x.json") && e.contains("lrr"), "{e}");
        let e = TrainConfig::from_json(
            serde_json::json!({"main": {"schedule": "cosine"}}),
            Path::new("x.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("schedule cosine"), "{e}");
    }

    #[test]
    fn validation_names_the_setting() {
        let mut c = Preset::Quick.base(Recipe::TrainStandard);
        c.main.lr = 0.0;
        let e = c.validate().unwrap_err();
        assert_eq!(
            e.setting().unwrap().render("--"),
            "--lr 0: the learning rate must be > 0"
        );
        let c = Preset::Quick.base(Recipe::TrainRobust);
        assert_eq!(c.validate().unwrap_err().setting().unwrap().name, "eps");
        let c = Preset::Quick.base(Recipe::Finetune);
        assert!(c.validate().unwrap_err().to_string().contains("from"));
    }
}
