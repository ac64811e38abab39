//! `train-standard`, `train-robust` and `finetune`: a configuration built by the precedence
//! rule ([`crate::config::layered`]), checked before any folder is made, then the trainer.

use crate::adversarial::Norm;
use crate::config::{
    eps_from_224, layer, layered, AdvConfig, Init, Overrides, PhaseConfig, Preset, Recipe,
    TrainConfig,
};
use crate::interrupt::Interrupt;
use crate::model::GroupSet;
use crate::run::{check_new_run, default_out, resume_config, RunConfig};
use crate::train::{train, Stop, Summary};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The attack of `train-robust`.
#[derive(Debug, Clone, PartialEq)]
pub struct RobustOptions {
    /// L2 radius at the working size.
    pub eps: Option<f32>,
    /// Or a paper eps at 224 px, converted to the working size.
    pub eps_at_224: Option<f32>,
    pub norm: Norm,
    pub steps: usize,
    /// Default: eps / 5.
    pub step_size: Option<f32>,
    pub random_start: bool,
}

/// What `finetune` starts from and trains.
#[derive(Debug, Clone, PartialEq)]
pub struct FinetuneOptions {
    /// The trained run to start from.
    pub from: Option<PathBuf>,
    pub groups: GroupSet,
    pub freeze_bn_stats: bool,
}

/// Options of a training command.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    pub recipe: Recipe,
    /// A config file (a run's `config.json` reproduces it).
    pub config: Option<PathBuf>,
    pub preset: Option<Preset>,
    /// The run folder (default `models/<recipe>-<time>`).
    pub out: Option<PathBuf>,
    /// Continue the interrupted run in this folder (every other option is ignored).
    pub resume: Option<PathBuf>,
    pub overrides: Overrides,
    pub robust: Option<RobustOptions>,
    pub finetune: Option<FinetuneOptions>,
}

impl TrainOptions {
    pub fn new(recipe: Recipe) -> Self {
        TrainOptions {
            recipe,
            config: None,
            preset: None,
            out: None,
            resume: None,
            overrides: Overrides::default(),
            robust: None,
            finetune: None,
        }
    }
}

/// The starting point of `finetune --from DIR`: the source run's data, split and size, the
/// paper's fine-tuning recipe (lr 1e-5, plateau schedule, early stopping; the quick preset's
/// 3 epochs at 1e-4 for a quick run), no attack, no head phase.
pub fn finetune_base(from: &Path, preset: Option<Preset>) -> Result<TrainConfig> {
    crate::run::check_trained(from)?;
    let src = RunConfig::read(from)?.train;
    let mut base = match preset {
        // A named preset replaces the schedule and sizes, never the source run's data.
        Some(p) => TrainConfig {
            data: crate::config::DataConfig {
                source: src.data.source.clone(),
                classes: src.data.classes.clone(),
                skip_bad_images: src.data.skip_bad_images,
                ..p.base(Recipe::Finetune).data
            },
            ..p.base(Recipe::Finetune)
        },
        None => {
            let mut b = src.clone();
            b.recipe = Recipe::Finetune;
            b.head.epochs = 0;
            b.main = PhaseConfig {
                batch_size: src.main.batch_size,
                ..PhaseConfig::finetune()
            };
            if src.preset == Some(Preset::Quick) {
                b.main.epochs = 3;
                b.main.lr = 1e-4;
            }
            b
        }
    };
    base.adversarial = None;
    base.init = Init::From(from.to_path_buf());
    base.data.split = Some(from.join("split.csv"));
    Ok(base)
}

/// The attack of `train-robust` at the configuration's working size.
pub fn robust_attack(r: &RobustOptions, image_size: usize) -> Result<AdvConfig> {
    let eps = match (r.eps, r.eps_at_224) {
        (Some(e), _) => e,
        (None, Some(e224)) => eps_from_224(e224, image_size),
        (None, None) => {
            return Err(Error::config(
                "eps",
                "",
                "train-robust needs an L2 radius at the working size (eps E) or a paper eps at 224 px (eps-at-224 E)",
            ))
        }
    };
    let mut a = AdvConfig::preset(eps, r.steps);
    a.norm = r.norm;
    a.random_start = r.random_start;
    if let Some(s) = r.step_size {
        a.step_size = s;
    }
    a.pgd().validate()?;
    Ok(a)
}

/// The configuration a training command runs: preset, config file, flags, then the recipe's
/// own part (the attack, the run to fine-tune). Checked, nothing written.
pub fn config(opts: &TrainOptions) -> Result<TrainConfig> {
    let file = opts.config.as_deref();
    let mut cfg = match (&opts.finetune, opts.recipe) {
        (Some(f), Recipe::Finetune) => {
            let from = f.from.as_deref().ok_or_else(|| {
                Error::config(
                    "from",
                    "",
                    "finetune needs the run folder to start from (a trained run, normally robust)",
                )
            })?;
            let mut o = opts.overrides.clone();
            o.groups = Some(f.groups);
            o.freeze_bn_stats |= f.freeze_bn_stats;
            let mut c = layer(finetune_base(from, opts.preset)?, file, &o)?;
            c.init = Init::From(from.to_path_buf());
            c
        }
        _ => layered(opts.recipe, opts.preset, file, &opts.overrides)?,
    };
    if let Some(r) = &opts.robust {
        cfg.adversarial = Some(robust_attack(r, cfg.image_size)?);
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Runs a training command: a new run, or `resume`. Prints the test table and the run
/// folder; an interrupted run returns [`Error::Interrupted`] naming its folder.
pub fn run(opts: &TrainOptions, interrupt: &Interrupt) -> Result<Summary> {
    let (cfg, out, resume) = match &opts.resume {
        Some(dir) => (resume_config(dir, opts.recipe)?, dir.clone(), true),
        None => {
            let cfg = config(opts)?;
            let out = opts
                .out
                .clone()
                .unwrap_or_else(|| default_out(opts.recipe.as_str()));
            check_new_run(&out)?;
            (cfg, out, false)
        }
    };
    eprintln!(
        "{} -> {} (data {}, {} px, seed {})",
        cfg.recipe,
        out.display(),
        cfg.data.source,
        cfg.image_size,
        cfg.seed
    );
    if cfg.data.source.starts_with("synthetic") {
        eprintln!("data: a built-in synthetic set; for HAM10000 pass --data PATH (or set ROBUSTLENS_DATA) with --preset paper");
    }
    match train(&cfg, &out, resume, interrupt)? {
        Stop::Interrupted => Err(Error::Interrupted { resume: Some(out) }),
        Stop::Finished(s) => {
            if let Some(t) = &s.test {
                println!("{}", t.table());
            }
            println!(
                "run folder: {} (best: {}, {}); {:.0} s",
                out.display(),
                s.best_checkpoint,
                s.best_reason,
                s.seconds
            );
            Ok(s)
        }
    }
}
