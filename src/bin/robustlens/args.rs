//! The command line: clap definitions, and their conversion into the library's typed options.
//! Nothing here does any work.

use clap::builder::{PossibleValue, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum};
use robustlens::adversarial::{Norm, Pgd};
use robustlens::attribution::{Baseline, IgRule, MethodOptions, SmoothKind, Target};
use robustlens::commands::bench::{BenchOptions, Workload};
use robustlens::commands::compare::CompareSettings;
use robustlens::commands::train::{FinetuneOptions, RobustOptions, TrainOptions};
use robustlens::config::{OptimKind, Overrides, Preset, Recipe, Schedule};
use robustlens::data::split::Part;
use robustlens::device::DeviceSpec;
use robustlens::error::{ConfigError, Setting};
use robustlens::model::{Arch, GroupSet, WeightsSource};
use robustlens::report::{Cap, Colormap, DisplayOptions, DisplayPreset, Reduce};
use std::ffi::OsStr;
use std::marker::PhantomData;
use std::path::PathBuf;

/// A value parser for a fixed set of words: lists them in `--help`, and on a bad value says
/// `--FLAG VALUE: use a, b or c`.
#[derive(Clone)]
pub struct Words<E>(PhantomData<E>);

pub fn words<E>() -> Words<E> {
    Words(PhantomData)
}

fn flag_of(arg: Option<&clap::Arg>) -> String {
    arg.and_then(|a| a.get_long())
        .map(|l| format!("--{l}"))
        .unwrap_or_else(|| "value".into())
}

impl<E: ValueEnum + Clone + Send + Sync + 'static> TypedValueParser for Words<E> {
    type Value = E;
    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<E, clap::Error> {
        let s = value.to_string_lossy();
        // `riemann_left` and `riemann-left` alike, as the words were read before.
        let words = s.trim();
        E::from_str(words, true)
            .or_else(|_| E::from_str(&words.replace('_', "-"), true))
            .map_err(|_| {
                let names: Vec<String> = E::value_variants()
                    .iter()
                    .filter_map(|v| v.to_possible_value())
                    .map(|p| p.get_name().to_string())
                    .collect();
                let flag = flag_of(arg);
                let mut cmd = cmd.clone();
                cmd.error(
                    clap::error::ErrorKind::InvalidValue,
                    format!(
                        "{flag} {s}: unknown {} `{s}`; use {}",
                        flag.trim_start_matches('-'),
                        names.join(", ")
                    ),
                )
            })
    }
    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            E::value_variants()
                .iter()
                .filter_map(|v| v.to_possible_value()),
        ))
    }
}

/// A value parser from a library `parse` function; its error is shown with the flag.
#[derive(Clone)]
pub struct Parsed<T>(fn(&str) -> robustlens::Result<T>);

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Parsed<T> {
    type Value = T;
    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let s = value.to_string_lossy();
        (self.0)(&s).map_err(|e| {
            let msg = match e.setting() {
                Some(set) => set.render("--"),
                None => format!("{} {s}: {e}", flag_of(arg)),
            };
            cmd.clone().error(clap::error::ErrorKind::InvalidValue, msg)
        })
    }
}

fn device_parser() -> Parsed<DeviceSpec> {
    Parsed(DeviceSpec::parse)
}
fn arch_parser() -> impl TypedValueParser<Value = Arch> {
    clap::builder::PossibleValuesParser::new(Arch::ALL.map(|a| a.name()))
        .map(|s| Arch::parse(&s).expect("a listed architecture"))
}
fn groups_parser() -> Parsed<GroupSet> {
    Parsed(GroupSet::parse)
}
fn schedule_parser() -> Parsed<Schedule> {
    Parsed(Schedule::parse)
}
fn weights_parser() -> Parsed<WeightsSource> {
    Parsed(WeightsSource::parse)
}
fn target_parser() -> Parsed<Target> {
    Parsed(Target::parse)
}
fn baseline_parser() -> Parsed<Baseline> {
    Parsed(Baseline::parse)
}
fn cap_parser() -> Parsed<Cap> {
    Parsed(Cap::parse)
}

#[derive(Parser)]
#[command(
    name = "robustlens",
    version,
    about = "Train image classifiers whose explanations can be trusted",
    long_about = "Train image classifiers whose explanations can be trusted: ResNet-18 transfer learning, \
PGD adversarial training, six saliency methods that match captum, saliency metrics with statistics, \
and an HTML report.\n\nStart with `robustlens demo` (about 6 minutes on two CPU cores); \
`robustlens COMMAND --help` explains each command."
)]
pub struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// CUDA: allow TF32 in f32 convolutions and matrix products (faster on Ampere and
    /// newer, about 1e-3 relative error). Off by default; no effect on the CPU.
    #[arg(long, global = true, env = "ROBUSTLENS_TF32")]
    pub tf32: bool,
    /// CUDA: only deterministic cuDNN algorithms, so that a run repeats bit for bit on one
    /// GPU (may be slower). CPU runs are always deterministic.
    #[arg(long, global = true, env = "ROBUSTLENS_DETERMINISTIC")]
    pub deterministic: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Classify images with a model: centre crop, resize to --image-size, scale to [0,1].
    Predict(PredictArgs),
    /// List the tensors of a weights file, their shapes and the parameter count.
    Info(InfoArgs),
    /// Saliency maps (gradient, input-x-gradient, ig, smoothgrad, occlusion, gradcam) as PNG
    /// heat maps, overlays, one grid, and raw NPY.
    Saliency(Box<SaliencyArgs>),
    /// Two-phase transfer learning (head, then everything), the paper's standard training.
    TrainStandard(Box<TrainArgs>),
    /// train-standard with every training batch replaced by its PGD (L2) version.
    TrainRobust(Box<RobustArgs>),
    /// Fine-tune chosen layer groups of a trained (robust) model, the rest frozen.
    Finetune(Box<FinetuneArgs>),
    /// k-fold cross-validation over learning rates x batch sizes; mean ± std per cell, the
    /// best cell named, optionally the final training with it.
    Cv(Box<CvArgs>),
    /// Accuracy, balanced accuracy, per-class precision/recall, confusion matrix (and robust
    /// accuracy with --attack pgd) of a run on its test split.
    Evaluate(Box<EvaluateArgs>),
    /// The whole pipeline on the built-in sets: the blocks control (standard vs robust), then
    /// the lesion set (standard, robust, fine-tuned); evaluation, maps, metrics, report.html.
    Demo(DemoArgs),
    /// An HTML report for any runs: accuracy, robust accuracy and confusion matrices,
    /// training curves, saliency grids, IG convergence, metrics and deletion/insertion curves.
    Report(ReportArgs),
    /// Compare models by their saliency maps: metrics with 95% bootstrap intervals, paired
    /// Wilcoxon tests against the first run, seed brittleness and best eps per image.
    Compare(Box<CompareArgs>),
    /// Train one model per eps (0 = standard) into one folder (resumable), then compare them.
    SweepEps(Box<SweepArgs>),
    /// The paper's questions as one resumable grid: standard, robust and fine-tuned models
    /// for several seeds, compared, with intervals across seeds (benchmark.md/.json/.csv).
    Benchmark(Box<BenchmarkArgs>),
    /// The cells of a grid submitted with --scheduler slurm: finished, pending, running,
    /// failed (with their log's last lines) or missing, and how to resubmit the unfinished.
    Status(StatusArgs),
    /// Images per second of eval, train, input-grad, pgd7 and IG (compare with
    /// bench/torch_reference.py).
    Bench(BenchArgs),
    /// The same model on a device (GPU) and on the CPU: logits, input gradients, a PGD-7
    /// attack, one training step's gradients and statistics, as JSON lines; fails when a
    /// relative difference exceeds --tolerance.
    DeviceCheck(DeviceCheckArgs),
    /// The cascading model-randomisation sanity check (Adebayo et al. 2018) for a run.
    Sanity(Box<SanityArgs>),
    /// PGD adversarial examples of images: PNG files and (with --raw-out) float32 NPY.
    Attack(Box<AttackArgs>),
    /// Data sets: write the synthetic set, make lesion-grouped splits, inspect, benchmark.
    #[command(subcommand)]
    Data(DataCommand),
    /// Print a shell completion script (e.g. `robustlens completions bash > ~/.local/share/bash-completion/completions/robustlens`).
    Completions {
        /// The shell.
        #[arg(value_parser = words::<clap_complete::Shell>())]
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Clone, Default)]
pub struct TrainArgs {
    /// A config file (a run's config.json reproduces it); it overrides the preset, flags
    /// override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Named settings [default: quick with a built-in synthetic set, otherwise paper].
    #[arg(long, value_parser = words::<Preset>())]
    pub preset: Option<Preset>,
    /// Run folder [default: models/<command>-<unix time>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the interrupted run in this folder (its own config is used).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// `synthetic` (the built-in lesions), `synthetic:blocks` (the built-in control), a
    /// HAM10000 folder or an ImageFolder (PATH/<class>/*.jpg) [default: synthetic].
    #[arg(long, env = "ROBUSTLENS_DATA")]
    pub data: Option<String>,
    /// Classes to use, comma-separated [default: all; HAM10000: nv,mel,bkl].
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<String>>,
    /// Skip unreadable images (reported) instead of stopping.
    #[arg(long)]
    pub skip_bad_images: bool,
    /// A split CSV (image_id,lesion_id,label,split,fold) [default: made from the counts].
    #[arg(long)]
    pub split: Option<PathBuf>,
    /// Working resolution, N x N pixels [default: 32 (quick), 224 (paper)].
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Training images per class [default: 100 (quick), 800 (paper)].
    #[arg(long)]
    pub train_per_class: Option<usize>,
    /// Validation images per class [default: 20 (quick), 0 (paper)].
    #[arg(long)]
    pub val_per_class: Option<usize>,
    /// Test images per class [default: 50 (quick), 299 (paper)].
    #[arg(long)]
    pub test_per_class: Option<usize>,
    /// Seed of the split, initialisation, shuffling, augmentation and attacks [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Architecture: resnet18, convnext_atto, convnext_tiny, efficientnet_b0,
    /// vit_tiny_patch16_224 or vit_small_patch16_224 [default: resnet18; fine-tuning: the
    /// parent run's]. The default --weights follow it. benchmark takes several,
    /// comma-separated: one benchmark per architecture.
    #[arg(long, value_delimiter = ',', value_parser = arch_parser())]
    pub arch: Vec<Arch>,
    /// ImageNet start: hf:owner/repo[/file], a .safetensors or .pth file, or none
    /// [default: none (quick), the arch's ImageNet weights on the hub (paper):
    /// hf:timm/resnet18.tv_in1k for resnet18].
    #[arg(long, value_parser = weights_parser())]
    pub weights: Option<WeightsSource>,
    /// auto, cpu, cuda[:N] or metal[:N] (GPUs need a build with --features cuda/metal)
    /// [default: cpu].
    #[arg(long, value_parser = device_parser())]
    pub device: Option<DeviceSpec>,
    /// Epochs of the head-only phase (0 skips it) [default: 1 (quick), 10 (paper)].
    #[arg(long)]
    pub head_epochs: Option<usize>,
    /// Batch size of the head phase [default: 32].
    #[arg(long)]
    pub head_batch_size: Option<usize>,
    /// Learning rate of the head phase [default: 1e-3].
    #[arg(long)]
    pub head_lr: Option<f64>,
    /// Epochs of the whole-network phase [default: 6 (quick), 25 (paper); finetune: 3
    /// (quick), 50 (paper)].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Batch size of the whole-network phase [default: 16].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate of the whole-network phase [default: 1e-3 (quick), 3e-4 (paper);
    /// finetune: 1e-4 (quick), 1e-5 (paper)].
    #[arg(long)]
    pub lr: Option<f64>,
    /// step:EPOCH:FACTOR, plateau:PATIENCE:FACTOR or none [default: step:4:0.1 (quick),
    /// step:15:0.1 (paper), plateau:5:0.1 (finetune)].
    #[arg(long, value_parser = schedule_parser())]
    pub schedule: Option<Schedule>,
    /// Stop when validation loss has not improved for this many epochs [default: off;
    /// finetune: 10].
    #[arg(long)]
    pub early_stop: Option<usize>,
    /// adam (L2 decay, the paper) or adamw (decoupled decay) [default: adam].
    #[arg(long, value_parser = words::<OptimKind>())]
    pub optimizer: Option<OptimKind>,
    /// Weight decay [default: 5e-4].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Turn training augmentation off.
    #[arg(long)]
    pub no_augment: bool,
}

impl TrainArgs {
    /// The options of a command that trains one architecture.
    pub fn options(&self, recipe: Recipe) -> robustlens::Result<TrainOptions> {
        if self.arch.len() > 1 {
            let given: Vec<&str> = self.arch.iter().map(|a| a.name()).collect();
            return Err(robustlens::Error::Config(ConfigError::Invalid(
                Setting::new(
                    "arch",
                    given.join(","),
                    format!(
                        "{recipe} trains one architecture; `benchmark --arch A,B` compares several"
                    ),
                ),
            )));
        }
        Ok(self.options_any(recipe))
    }

    /// The options, with the first architecture given.
    pub fn options_any(&self, recipe: Recipe) -> TrainOptions {
        TrainOptions {
            recipe,
            config: self.config.clone(),
            preset: self.preset,
            out: self.out.clone(),
            resume: self.resume.clone(),
            overrides: Overrides {
                data: self.data.clone(),
                classes: self.classes.clone(),
                skip_bad_images: self.skip_bad_images,
                split: self.split.clone(),
                image_size: self.image_size,
                train_per_class: self.train_per_class,
                val_per_class: self.val_per_class,
                test_per_class: self.test_per_class,
                seed: self.seed,
                arch: self.arch.first().copied(),
                weights: self.weights.clone(),
                device: self.device,
                head_epochs: self.head_epochs,
                head_batch_size: self.head_batch_size,
                head_lr: self.head_lr,
                epochs: self.epochs,
                batch_size: self.batch_size,
                lr: self.lr,
                schedule: self.schedule,
                early_stop: self.early_stop,
                optimizer: self.optimizer,
                weight_decay: self.weight_decay,
                no_augment: self.no_augment,
                groups: None,
                freeze_bn_stats: false,
            },
            robust: None,
            finetune: None,
        }
    }
}

#[derive(Args, Clone)]
pub struct RobustArgs {
    #[command(flatten)]
    pub train: TrainArgs,
    /// L2 radius in [0,1] pixel units at the working resolution.
    #[arg(long)]
    pub eps: Option<f32>,
    /// A paper eps at 224 px, converted to the working size by equal per-pixel RMS.
    #[arg(long, conflicts_with = "eps")]
    pub eps_at_224: Option<f32>,
    /// The threat model's norm.
    #[arg(long, default_value = "l2", value_parser = words::<Norm>())]
    pub norm: Norm,
    /// PGD steps of the training attack.
    #[arg(long, default_value_t = 7)]
    pub attack_steps: usize,
    /// PGD step size [default: eps/5].
    #[arg(long)]
    pub attack_step_size: Option<f32>,
    /// Start at the clean image instead of a random point in the ball.
    #[arg(long)]
    pub no_random_start: bool,
}

impl RobustArgs {
    pub fn options(&self) -> robustlens::Result<TrainOptions> {
        let mut o = self.train.options(Recipe::TrainRobust)?;
        o.robust = Some(RobustOptions {
            eps: self.eps,
            eps_at_224: self.eps_at_224,
            norm: self.norm,
            steps: self.attack_steps,
            step_size: self.attack_step_size,
            random_start: !self.no_random_start,
        });
        Ok(o)
    }
}

#[derive(Args, Clone)]
pub struct CvArgs {
    #[command(flatten)]
    pub train: TrainArgs,
    /// Learning rates of the grid, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1e-3,3e-4,1e-4")]
    pub lrs: Vec<f64>,
    /// Batch sizes of the grid, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32")]
    pub batch_sizes: Vec<usize>,
    /// Folds of the training part.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Then train on all training data with the best cell (into OUT/final).
    #[arg(long = "final")]
    pub final_train: bool,
    #[command(flatten)]
    pub grid: GridArgs,
}

#[derive(Args, Clone)]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub train: TrainArgs,
    /// The run to start from (normally a robust one); its data, split and size are kept.
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// Layer groups to train, e.g. 3-5, 5, 1,3, all. resnet18: 1 = conv1+bn1+layer1, 2..4 =
    /// layer2..4, 5 = fc; convnext: 1 = stem+stages.0, 2..4 = stages.1..3, 5 = head; vit: 1 =
    /// embeddings+blocks.0-2, 2..4 = blocks.3-5, 6-8, 9-11, 5 = norm+head; efficientnet_b0:
    /// 1 = features.0-2, 2 = features.3, 3 = features.4-5, 4 = features.6-8, 5 = classifier.
    #[arg(long, default_value = "3-5", value_parser = groups_parser())]
    pub groups: GroupSet,
    /// Also freeze BatchNorm running statistics of frozen groups.
    #[arg(long)]
    pub freeze_bn_stats: bool,
}

impl FinetuneArgs {
    pub fn options(&self) -> robustlens::Result<TrainOptions> {
        let mut o = self.train.options(Recipe::Finetune)?;
        o.finetune = Some(FinetuneOptions {
            from: self.from.clone(),
            groups: self.groups,
            freeze_bn_stats: self.freeze_bn_stats,
        });
        Ok(o)
    }
}

/// Attacks `evaluate` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttackKind {
    /// PGD (robust accuracy).
    Pgd,
}

#[derive(Args, Clone)]
pub struct EvaluateArgs {
    /// The run folder.
    #[arg(long)]
    pub run: PathBuf,
    /// Only runs of this architecture (a check: the runs' config.json names theirs).
    #[arg(long, value_parser = arch_parser())]
    pub arch: Option<Arch>,
    /// Other data [default: the run's own data and split].
    #[arg(long)]
    pub data: Option<String>,
    /// Which part of the split.
    #[arg(long, default_value = "test", value_parser = words::<Part>())]
    pub split: Part,
    /// Also robust accuracy under this attack.
    #[arg(long, value_parser = words::<AttackKind>())]
    pub attack: Option<AttackKind>,
    /// L2 radius of the attack at the working size.
    #[arg(long, default_value_t = 3.0)]
    pub eps: f32,
    /// PGD steps.
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// PGD step size [default: 2.5 * eps / steps].
    #[arg(long)]
    pub step_size: Option<f32>,
    /// The threat model's norm.
    #[arg(long, default_value = "l2", value_parser = words::<Norm>())]
    pub norm: Norm,
    #[command(flatten)]
    pub device: DeviceArg,
}

impl EvaluateArgs {
    pub fn pgd(&self) -> Option<Pgd> {
        self.attack.map(|_| {
            let mut p = Pgd::evaluation(self.eps, self.steps);
            p.norm = self.norm;
            if let Some(s) = self.step_size {
                p.step_size = s;
            }
            p
        })
    }
}

#[derive(Args, Clone)]
pub struct DemoArgs {
    /// Folder for the runs and report.html (finished runs in it are kept).
    #[arg(long, default_value = "models/demo")]
    pub out: PathBuf,
    /// Working resolution of the lesion part (the control runs at 64 px).
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    /// Skip the control part (synthetic:blocks, standard vs robust) and run the lesion set only.
    #[arg(long)]
    pub no_control: bool,
    /// Robust models of the lesion part, as paper eps values at 224 px, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4")]
    pub eps_at_224: Vec<f32>,
    /// Whole-network epochs of each robust model of the lesion part (the quick preset's 6).
    #[arg(long, default_value_t = 6)]
    pub robust_epochs: usize,
    /// Seed of every run.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: DeviceArg,
}

#[derive(Args, Clone)]
pub struct CompareOpts {
    /// Comma-separated saliency methods: gradient, input-x-gradient, ig, smoothgrad,
    /// occlusion, gradcam.
    #[arg(long, default_value = "gradient")]
    pub method: String,
    /// Comma-separated metrics (rma, rra, pointing, auc, gini, entropy, deletion, insertion,
    /// faithfulness) or all (those nine); artifact masses of the built-in lesion set: artifact
    /// (all kinds together), hair, ruler, ink, corners, or artifacts (those five).
    #[arg(long, default_value = "all")]
    pub metrics: String,
    /// Images compared (the first N of the part, classes interleaved).
    #[arg(long, default_value_t = 50)]
    pub count: usize,
    /// Also robust accuracy: L2 PGD with this eps at the working size, on the compared images.
    #[arg(long)]
    pub attack_eps: Option<f32>,
    /// PGD steps of that attack (step size 2.5 * eps / steps).
    #[arg(long, default_value_t = 10)]
    pub attack_steps: usize,
    /// The metric that picks each image's best eps: rma, rra, pointing, auc, gini, entropy,
    /// deletion, insertion or faithfulness.
    #[arg(long, default_value = "rma")]
    pub best_by: String,
    /// Bootstrap resamples of the 95% intervals.
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
}

impl CompareOpts {
    pub fn settings(&self) -> CompareSettings {
        CompareSettings {
            methods: robustlens::commands::list(&self.method),
            metrics: self.metrics.clone(),
            count: self.count,
            attack_eps: self.attack_eps,
            attack_steps: self.attack_steps,
            best_by: self.best_by.clone(),
            bootstrap: self.bootstrap,
        }
    }
}

#[derive(Args, Clone)]
pub struct CompareArgs {
    /// Run folders (repeatable; the first is the reference of the tests); NAME=DIR names one.
    #[arg(long = "run", required = true)]
    pub runs: Vec<String>,
    /// Only runs of this architecture (a check: the runs' config.json names theirs).
    #[arg(long, value_parser = arch_parser())]
    pub arch: Option<Arch>,
    /// Where comparison.json, comparison.csv and comparison.md go.
    #[arg(long, default_value = "models/compare")]
    pub out: PathBuf,
    /// `run` (the first run's data and split), `synthetic`, a HAM10000 folder or an ImageFolder.
    #[arg(long, default_value = "run")]
    pub data: String,
    /// Which part of the split.
    #[arg(long, default_value = "test", value_parser = words::<Part>())]
    pub split: Part,
    /// Seeds the bootstrap, SmoothGrad noise and faithfulness subsets.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: DeviceArg,
    #[command(flatten)]
    pub opts: CompareOpts,
}

/// Where a grid runs: here, or as Slurm job arrays.
#[derive(Args, Clone, Default)]
pub struct GridArgs {
    /// local (one cell after another here) or slurm (one job array task per cell; needs --out).
    #[arg(long, default_value = "local", value_parser = words::<robustlens::scheduler::SchedulerKind>())]
    pub scheduler: robustlens::scheduler::SchedulerKind,
    /// Slurm partition of the array tasks [default: the cluster's].
    #[arg(long)]
    pub slurm_partition: Option<String>,
    /// Time limit of each task (sbatch --time, e.g. 2:00:00); SIGTERM comes 2 minutes before
    /// it, and the run checkpoints.
    #[arg(long)]
    pub slurm_time: Option<String>,
    /// GPUs per task (sbatch --gpus; a build with --features cuda and --device auto uses them).
    #[arg(long)]
    pub slurm_gpus: Option<u32>,
    /// CPUs per task (sbatch --cpus-per-task; the task's thread pools use as many).
    #[arg(long)]
    pub slurm_cpus: Option<u32>,
    /// Memory per task (sbatch --mem, e.g. 8G).
    #[arg(long)]
    pub slurm_mem: Option<String>,
    /// A file of extra `#SBATCH` lines for the scripts (account, qos, constraint, ...).
    #[arg(long)]
    pub slurm_extra: Option<PathBuf>,
    /// With --scheduler slurm: write the scripts and OUT/slurm/jobs.json, submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Train only this cell and compare nothing (what each array task runs); `robustlens
    /// status OUT` lists the names.
    #[arg(long, conflicts_with = "gather")]
    pub cell: Option<String>,
    /// Train nothing: compare the cells that have finished and name the ones that have not.
    #[arg(long)]
    pub gather: bool,
}

#[derive(Args, Clone)]
pub struct StatusArgs {
    /// The folder of a grid submitted with --scheduler slurm (its --out).
    pub dir: PathBuf,
    /// Submit the failed and missing cells again (a killed cell continues from its
    /// checkpoint).
    #[arg(long)]
    pub resubmit: bool,
}

#[derive(Args, Clone)]
pub struct SweepArgs {
    #[command(flatten)]
    pub train: TrainArgs,
    /// L2 radii at the working size, comma-separated (0 = a standard model).
    #[arg(long, value_delimiter = ',')]
    pub eps: Option<Vec<f32>>,
    /// Paper eps values at 224 px, converted to the working size.
    #[arg(long, value_delimiter = ',', conflicts_with = "eps")]
    pub eps_at_224: Option<Vec<f32>>,
    /// PGD steps of the training attack (step size eps/5, random start).
    #[arg(long, default_value_t = 7)]
    pub train_attack_steps: usize,
    #[command(flatten)]
    pub compare: CompareOpts,
    #[command(flatten)]
    pub grid: GridArgs,
}

#[derive(Args, Clone)]
pub struct BenchmarkArgs {
    #[command(flatten)]
    pub train: TrainArgs,
    /// The grid's size; each part is also a flag of its own, which wins.
    #[arg(long, default_value = "default", value_parser = words::<robustlens::commands::benchmark::Budget>())]
    pub budget: robustlens::commands::benchmark::Budget,
    /// Seeds, comma-separated [default: 0,1 (quick), 0,1,2 (default)]. The budget also sets
    /// the training (size, images, epochs; see `--budget`); flags and `--config` win.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
    /// Robust cells as paper eps values at 224 px, comma-separated [default: 4 (quick),
    /// 2,8 (default)].
    #[arg(long, value_delimiter = ',')]
    pub eps_at_224: Option<Vec<f32>>,
    /// Fine-tuned cells: layer groups trained from the robust model of the largest eps,
    /// separated by `;` [default: 3-5 (quick), "5;4-5;3-5;2-5" (default)].
    #[arg(long, value_delimiter = ';', value_parser = groups_parser())]
    pub groups: Option<Vec<GroupSet>>,
    /// Epochs of each fine-tuning.
    #[arg(long, default_value_t = 3)]
    pub finetune_epochs: usize,
    /// Learning rate of each fine-tuning.
    #[arg(long, default_value_t = 1e-4)]
    pub finetune_lr: f64,
    /// PGD steps of the training attack, random start; the step size is 1.4 eps / steps (the
    /// paper's reach: 7 steps of eps/5) [default: 3].
    #[arg(long)]
    pub train_attack_steps: Option<usize>,
    /// Comma-separated saliency methods [default: gradient (quick), gradient,smoothgrad,ig
    /// (default)].
    #[arg(long)]
    pub method: Option<String>,
    /// Comma-separated metrics (see compare --help) [default: the mask and sparseness ones,
    /// rma,rra,pointing,auc,gini,entropy, and artifacts on the built-in lesion set; `all`
    /// adds deletion, insertion and faithfulness, about 3 minutes per model at 64 px].
    #[arg(long)]
    pub metrics: Option<String>,
    /// Test images compared [default: 60 (quick), 90 (default)].
    #[arg(long)]
    pub count: Option<usize>,
    /// Robust accuracy under L2 PGD with this paper eps at 224 px, scaled to the working size.
    #[arg(long, default_value_t = 3.0)]
    pub attack_eps_at_224: f32,
    /// Bootstrap resamples of the per-image intervals.
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    #[command(flatten)]
    pub grid: GridArgs,
}

impl BenchmarkArgs {
    pub fn options(&self) -> robustlens::commands::benchmark::BenchmarkOptions {
        let data = self
            .train
            .data
            .clone()
            .unwrap_or_else(|| "synthetic".into());
        let plan = self.budget.plan(&data);
        let mut train = self.train.options_any(Recipe::TrainStandard);
        if self.train.config.is_none() {
            train.overrides = train.overrides.or(&plan.training);
        }
        let size = train
            .overrides
            .image_size
            .or(plan.training.image_size)
            .unwrap_or(64);
        let lesions = matches!(data.trim(), "synthetic" | "synthetic:lesions");
        let metrics = self.metrics.clone().unwrap_or_else(|| {
            let m = "rma,rra,pointing,auc,gini,entropy";
            if lesions {
                format!("{m},artifacts")
            } else {
                m.to_string()
            }
        });
        robustlens::commands::benchmark::BenchmarkOptions {
            train,
            archs: self.train.arch.clone(),
            seeds: self.seeds.clone().unwrap_or(plan.seeds),
            eps_at_224: self.eps_at_224.clone().unwrap_or(plan.eps_at_224),
            groups: self.groups.clone().unwrap_or(plan.groups),
            finetune_epochs: self.finetune_epochs,
            finetune_lr: self.finetune_lr,
            train_attack_steps: self.train_attack_steps.unwrap_or(plan.train_attack_steps),
            compare: CompareSettings {
                methods: self
                    .method
                    .as_deref()
                    .map(robustlens::commands::list)
                    .unwrap_or(plan.methods),
                metrics,
                count: self.count.unwrap_or(plan.count),
                attack_eps: Some(robustlens::config::eps_from_224(
                    self.attack_eps_at_224,
                    size,
                )),
                attack_steps: 10,
                best_by: "rma".into(),
                bootstrap: self.bootstrap,
            },
            cell: self.grid.cell.clone(),
            gather: self.grid.gather,
        }
    }
}

impl GridArgs {
    pub fn slurm(&self) -> Result<robustlens::scheduler::slurm::SlurmOptions, robustlens::Error> {
        Ok(robustlens::scheduler::slurm::SlurmOptions {
            partition: self.slurm_partition.clone(),
            time: self.slurm_time.clone(),
            gpus: self.slurm_gpus,
            cpus: self.slurm_cpus,
            mem: self.slurm_mem.clone(),
            extra: match &self.slurm_extra {
                Some(p) => robustlens::scheduler::slurm::extra_lines(p)?,
                None => Vec::new(),
            },
            dry_run: self.dry_run,
        })
    }
}

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Architecture: resnet18, convnext_atto, convnext_tiny, efficientnet_b0,
    /// vit_tiny_patch16_224 or vit_small_patch16_224 (random weights).
    #[arg(long, default_value = "resnet18", value_parser = arch_parser())]
    pub arch: Arch,
    /// Workloads, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "eval,train,input-grad,pgd7,ig",
        value_parser = words::<Workload>()
    )]
    pub what: Vec<Workload>,
    /// Image sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64,224")]
    pub sizes: Vec<usize>,
    /// Images per batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Timed iterations (the median counts).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// One JSON object per line: {"arch", "what", "size", "batch", "img_per_s", "peak_rss_mb",
    /// "isa"} ("isa": the instruction sets the CPU kernels ran).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: DeviceArg,
}

#[derive(Args)]
pub struct DeviceCheckArgs {
    /// Architecture (random weights, the same on both sides).
    #[arg(long, default_value = "resnet18", value_parser = arch_parser())]
    pub arch: Arch,
    /// Image size, N x N.
    #[arg(long, default_value_t = 64)]
    pub image_size: usize,
    /// Images per batch (at least 2).
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// The largest relative difference (max |device - cpu| / max |cpu|) that passes.
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f64,
    /// Seed of the weights and images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The device compared with the CPU: auto (CUDA if built and present, else Metal, else
    /// the CPU itself), cuda[:N], metal[:N] or cpu.
    #[arg(long, default_value = "auto", value_parser = device_parser())]
    pub device: DeviceSpec,
}

impl DeviceCheckArgs {
    pub fn options(&self) -> robustlens::commands::device_check::DeviceCheckOptions {
        robustlens::commands::device_check::DeviceCheckOptions {
            arch: self.arch,
            image_size: self.image_size,
            batch_size: self.batch_size,
            tolerance: self.tolerance,
            seed: self.seed,
            device: self.device,
        }
    }
}

impl BenchArgs {
    pub fn options(&self) -> BenchOptions {
        BenchOptions {
            arch: self.arch,
            what: self.what.clone(),
            sizes: self.sizes.clone(),
            batch_size: self.batch_size,
            iters: self.iters,
            warmup: self.warmup,
            json: self.json,
            device: self.device.device,
        }
    }
}

#[derive(Args, Clone)]
pub struct SanityArgs {
    /// The run folder.
    #[arg(long)]
    pub run: PathBuf,
    /// The saliency method checked: gradient, input-x-gradient, ig, smoothgrad, occlusion or
    /// gradcam.
    #[arg(long, default_value = "gradient")]
    pub method: String,
    /// Which part of the split.
    #[arg(long, default_value = "test", value_parser = words::<Part>())]
    pub split: Part,
    /// Images checked.
    #[arg(long, default_value_t = 8)]
    pub count: usize,
    /// Seed of the randomised weights and the method's noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the result as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArg,
}

#[derive(Args, Clone)]
pub struct ReportArgs {
    /// Run folders (repeatable); NAME=DIR names a column.
    #[arg(long = "run", required = true)]
    pub runs: Vec<String>,
    /// Folder for report.html, figures/ and summary.json.
    #[arg(long, default_value = "models/report")]
    pub out: PathBuf,
    /// Test images attacked for robust accuracy (0 = none).
    #[arg(long, default_value_t = 60)]
    pub robust_images: usize,
    /// Comma-separated saliency methods: gradient, input-x-gradient, ig, smoothgrad, occlusion,
    /// gradcam.
    #[arg(long, default_value = "gradient,ig,smoothgrad,occlusion,gradcam")]
    pub method: String,
    /// Comma-separated methods whose maps are measured [default: every --method]
    #[arg(long)]
    pub metric_method: Option<String>,
    /// Comma-separated metrics of those maps (rma, rra, pointing, auc, gini, entropy,
    /// deletion, insertion, faithfulness) or all; the last three cost about a hundred forward
    /// passes per image and method each.
    #[arg(long, default_value = "all")]
    pub metrics: String,
    /// Test images in the adversarial-example gallery (0 = none).
    #[arg(long, default_value_t = 3)]
    pub adversarial_images: usize,
    /// Misclassified test images shown per model (0 = no failure gallery).
    #[arg(long, default_value_t = 6)]
    pub failures: usize,
    /// Saliency grids on one scale per method (the cap of all its maps together) instead of
    /// each map's own.
    #[arg(long)]
    pub shared_scale: bool,
    /// Steps of Integrated Gradients in the saliency grids (the report checks that they
    /// converge).
    #[arg(long, default_value_t = 50)]
    pub ig_steps: usize,
    #[command(flatten)]
    pub device: DeviceArg,
}

#[derive(Args, Clone)]
pub struct AttackArgs {
    /// A weights file (.safetensors or .pth) or hf:owner/repo.
    #[arg(long, conflicts_with = "run")]
    pub weights: Option<String>,
    /// Architecture: resnet18, convnext_atto, convnext_tiny, efficientnet_b0,
    /// vit_tiny_patch16_224 or vit_small_patch16_224 [default: the run's or the weights
    /// file's, else resnet18].
    #[arg(long, value_parser = arch_parser())]
    pub arch: Option<Arch>,

    /// A run folder.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Images to attack.
    #[arg(long = "image", num_args = 1.., required = true)]
    pub images: Vec<PathBuf>,
    /// Working resolution: images are centre-cropped and resized to N x N.
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    /// Radius of the ball in [0,1] pixel units.
    #[arg(long)]
    pub eps: f32,
    /// PGD steps.
    #[arg(long, default_value_t = 7)]
    pub steps: usize,
    /// PGD step size.
    #[arg(long)]
    pub step_size: f32,
    /// The threat model's norm.
    #[arg(long, default_value = "l2", value_parser = words::<Norm>())]
    pub norm: Norm,
    /// Start at the clean image instead of a random point in the ball.
    #[arg(long)]
    pub no_random_start: bool,
    /// Return the last iterate instead of the one with the highest loss.
    #[arg(long)]
    pub no_use_best: bool,
    /// Random restarts (0 = a single run).
    #[arg(long, default_value_t = 0)]
    pub restarts: usize,
    /// Targeted attack towards this class [default: untargeted against --label].
    #[arg(long)]
    pub target_class: Option<usize>,
    /// True labels, one per image, comma-separated [default: the model's clean prediction].
    #[arg(long, value_delimiter = ',')]
    pub label: Vec<usize>,
    /// Adversarial images as float32 NPY [N,3,H,W] in [0,1].
    #[arg(long)]
    pub raw_out: Option<PathBuf>,
    /// Folder for the adversarial PNG images.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed of the random start.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: DeviceArg,
}

impl AttackArgs {
    pub fn pgd(&self) -> Pgd {
        Pgd {
            norm: self.norm,
            eps: self.eps,
            steps: self.steps,
            step_size: self.step_size,
            random_start: !self.no_random_start,
            use_best: !self.no_use_best,
            restarts: self.restarts,
        }
    }
}

#[derive(Subcommand)]
pub enum DataCommand {
    /// Write a built-in set as an ImageFolder with masks (DIR/<class>/*.png,
    /// DIR/masks/<class>/*.png).
    Synth {
        /// Which set: the lesions, or the blocks control (signal block + null block).
        #[arg(long, default_value = "lesions", value_parser = words::<robustlens::commands::data::BuiltIn>())]
        set: robustlens::commands::data::BuiltIn,
        /// The folder to write.
        #[arg(long)]
        out: PathBuf,
        /// Images per class.
        #[arg(long, default_value_t = 50)]
        per_class: usize,
        /// Image size in pixels.
        #[arg(long, default_value_t = 224)]
        size: usize,
        /// Seed of the generator.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Make a class-balanced, lesion-grouped split: image_id,lesion_id,label,split,fold.
    Split(SplitArgs),
    /// Images and lesions per class, masks found, and problems.
    Inspect {
        #[command(flatten)]
        data: DataArgs,
        /// Decode every image header to find unreadable files.
        #[arg(long)]
        check_images: bool,
    },
    /// Loader throughput: images/s from the cache with augmentation on.
    Bench {
        #[command(flatten)]
        data: DataArgs,
        /// Working resolution.
        #[arg(long, default_value_t = 224)]
        image_size: usize,
        /// Images per batch.
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
        /// With the synthetic set: images per class.
        #[arg(long, default_value_t = 100)]
        per_class: usize,
        /// Passes over the data.
        #[arg(long, default_value_t = 3)]
        epochs: u64,
    },
}

#[derive(Args, Clone)]
pub struct SplitArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Training images per class.
    #[arg(long)]
    pub train_per_class: usize,
    /// Test images per class.
    #[arg(long)]
    pub test_per_class: usize,
    /// Validation images per class.
    #[arg(long, default_value_t = 0)]
    pub val_per_class: usize,
    /// Folds of the training part for cross-validation.
    #[arg(long, default_value_t = 1)]
    pub folds: usize,
    /// Seed of the split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The CSV file to write.
    #[arg(long)]
    pub out: PathBuf,
}

impl SplitArgs {
    pub fn spec(&self) -> robustlens::data::split::SplitSpec {
        robustlens::data::split::SplitSpec {
            train_per_class: self.train_per_class,
            test_per_class: self.test_per_class,
            val_per_class: self.val_per_class,
            folds: self.folds,
            seed: self.seed,
        }
    }
}

#[derive(Args, Clone)]
pub struct DataArgs {
    /// `synthetic` (the built-in lesions), `synthetic:blocks` (the built-in control), a
    /// HAM10000 folder, or an ImageFolder (PATH/<class>/*.jpg).
    #[arg(long, default_value = "synthetic", env = "ROBUSTLENS_DATA")]
    pub data: String,
    /// Classes to use, comma-separated [default: all; HAM10000: nv,mel,bkl].
    #[arg(long, value_delimiter = ',')]
    pub classes: Vec<String>,
    /// Skip unreadable images (reported) instead of stopping.
    #[arg(long)]
    pub skip_bad_images: bool,
}

impl DataArgs {
    pub fn source(&self) -> robustlens::commands::data::DataSource {
        robustlens::commands::data::DataSource {
            data: self.data.clone(),
            classes: self.classes.clone(),
            skip_bad_images: self.skip_bad_images,
        }
    }
}

/// Colour maps of the PNG heat maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Cmap {
    /// Black to white.
    #[value(alias = "grey")]
    Gray,
    /// Black to red.
    #[value(alias = "reds")]
    Red,
    /// Black to green.
    Green,
    /// viridis (matplotlib's, perceptually uniform).
    Viridis,
    /// magma (matplotlib's).
    Magma,
    /// inferno (matplotlib's).
    Inferno,
    /// Blues (captum's default for absolute values).
    Blues,
    /// Greens (captum's default for positive attributions).
    Greens,
    /// RdBu for signed maps (use with --reduce sum): blue negative, white zero, red positive.
    #[value(alias = "bwr", alias = "diverging")]
    Rdbu,
}

/// Methods SmoothGrad can wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SmoothBase {
    Gradient,
    InputXGradient,
    Ig,
    Occlusion,
    Gradcam,
}

#[derive(Args)]
pub struct SaliencyArgs {
    /// Run folders to explain (repeatable); each gives one column per method.
    #[arg(long = "run")]
    pub runs: Vec<PathBuf>,
    /// Architecture: resnet18, convnext_atto, convnext_tiny, efficientnet_b0,
    /// vit_tiny_patch16_224 or vit_small_patch16_224 [default: the run's or the weights
    /// file's, else resnet18].
    #[arg(long, value_parser = arch_parser())]
    pub arch: Option<Arch>,

    /// A weights file (.safetensors or .pth) or hf:owner/repo, instead of --run.
    #[arg(long)]
    pub weights: Option<String>,
    /// With --weights: replace the head by one with this many classes.
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// Images to explain (JPEG or PNG).
    #[arg(long = "image", num_args = 1..)]
    pub images: Vec<PathBuf>,
    /// Explain images of a data set instead (with --split and --count); `--data run` uses the
    /// first run's own data and split.
    #[arg(long)]
    pub data: Option<String>,
    /// Which part of the split.
    #[arg(long, default_value = "test", value_parser = words::<Part>())]
    pub split: Part,
    /// How many data-set images.
    #[arg(long, default_value_t = 8)]
    pub count: usize,
    /// Also choose images some model misclassifies (default: only correctly classified ones,
    /// as the paper shows).
    #[arg(long)]
    pub include_misclassified: bool,
    /// Working resolution (pre-processing as in predict; with --data, the run's size).
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    /// Class to explain: label, predicted, or a class index.
    #[arg(long, default_value = "predicted", value_parser = target_parser())]
    pub target: Target,
    /// Comma-separated methods: gradient, input-x-gradient, ig, smoothgrad, occlusion, gradcam.
    #[arg(long, default_value = "gradient")]
    pub method: String,
    /// Folder for PNG maps, overlays and grid.png.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Raw attributions as float32 NPY [N,3,H,W] (Grad-CAM [N,1,H,W]); with several models or
    /// methods the file stem gets _<model>_<method>.
    #[arg(long)]
    pub raw_out: Option<PathBuf>,
    /// Integrated Gradients steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Integrated Gradients' integration rule.
    #[arg(long, default_value = "gausslegendre", value_parser = words::<IgRule>())]
    pub ig_rule: IgRule,
    /// IG baseline: black, white, uniform, gaussian[:SIGMA], blur or an image file.
    #[arg(long, default_value = "black", value_parser = baseline_parser())]
    pub baseline: Baseline,
    /// Inputs per forward/backward pass for IG steps, SmoothGrad samples and gradients.
    #[arg(long, default_value_t = 16)]
    pub internal_batch_size: usize,
    /// SmoothGrad variant.
    #[arg(long, default_value = "smoothgrad", value_parser = words::<SmoothKind>())]
    pub smooth: SmoothKind,
    /// The method SmoothGrad wraps.
    #[arg(long, default_value = "gradient", value_parser = words::<SmoothBase>())]
    pub smooth_base: SmoothBase,
    /// SmoothGrad samples.
    #[arg(long, default_value_t = 50)]
    pub samples: usize,
    /// SmoothGrad noise std as a fraction of the input's max - min.
    #[arg(long, default_value_t = 0.2)]
    pub noise: f32,
    /// Occlusion window (square, all channels).
    #[arg(long, default_value_t = 50)]
    pub window: usize,
    /// Occlusion stride.
    #[arg(long, default_value_t = 25)]
    pub stride: usize,
    /// Value written into occluded windows.
    #[arg(long, default_value_t = 0.0)]
    pub occlusion_baseline: f32,
    /// Occluded images per forward pass.
    #[arg(long, default_value_t = 16)]
    pub perturbations_per_eval: usize,
    /// Grad-CAM layer: resnet18 stem, layer1, layer2, layer3 or layer4; convnext stem or
    /// stages.0..stages.3; efficientnet_b0 features.0..features.8; vit blocks.<i> or
    /// blocks.<i>.norm1 (the patch tokens as a grid, class token dropped) [default: the last
    /// spatial one: layer4, stages.3, features.8, blocks.11.norm1].
    #[arg(long)]
    pub layer: Option<String>,
    /// Seed for random baselines and SmoothGrad noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How maps are drawn; --reduce, --cap and --cmap change one part of it.
    #[arg(long, default_value = "paper", value_parser = words::<DisplayPreset>())]
    pub display: DisplayPreset,
    /// Channel reduction for display: abs-sum (the paper) or sum (signed) [default: from
    /// --display].
    #[arg(long, value_parser = words::<Reduce>())]
    pub reduce: Option<Reduce>,
    /// Display cap: p99 (the paper's 99th percentile), pNN, cumsumNN (captum) or max
    /// [default: from --display].
    #[arg(long, value_parser = cap_parser())]
    pub cap: Option<Cap>,
    /// Colour map of the heat maps [default: from --display].
    #[arg(long, value_parser = words::<Cmap>())]
    pub cmap: Option<Cmap>,
    /// One scale for all maps of a method (their cap taken over all of them together), so
    /// that maps compare across images and models; stated on the colour bar [default: each
    /// map its own scale, as in the paper].
    #[arg(long)]
    pub shared_scale: bool,
    #[command(flatten)]
    pub device: DeviceArg,
}

fn value_name<E: ValueEnum>(v: E) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

impl SaliencyArgs {
    pub fn options(&self) -> robustlens::Result<robustlens::commands::saliency::SaliencyOptions> {
        let options = MethodOptions {
            ig_steps: self.steps,
            ig_rule: self.ig_rule,
            baseline: self.baseline.clone(),
            internal_batch_size: self.internal_batch_size,
            smooth: self.smooth,
            smooth_base: value_name(self.smooth_base),
            samples: self.samples,
            noise: self.noise,
            window: self.window,
            stride: self.stride,
            occlusion_baseline: self.occlusion_baseline,
            perturbations_per_eval: self.perturbations_per_eval,
            layer: self.layer.clone(),
            seed: self.seed,
        };
        let preset = self.display.options();
        let display = DisplayOptions {
            reduce: self.reduce.unwrap_or(preset.reduce),
            cap: self.cap.unwrap_or(preset.cap),
            cmap: match self.cmap {
                Some(c) => Colormap::parse(&value_name(c))?,
                None => preset.cmap,
            },
            shared: self.shared_scale,
            ..preset
        };
        Ok(robustlens::commands::saliency::SaliencyOptions {
            runs: self.runs.clone(),
            weights: self.weights.clone(),
            arch: self.arch,
            num_classes: self.num_classes,
            images: self.images.clone(),
            data: self.data.clone(),
            part: self.split,
            count: self.count,
            include_misclassified: self.include_misclassified,
            image_size: self.image_size,
            target: self.target,
            methods: robustlens::commands::list(&self.method),
            options,
            display,
            out: self.out.clone(),
            raw_out: self.raw_out.clone(),
            device: self.device.device,
        })
    }
}

#[derive(Args, Clone)]
pub struct DeviceArg {
    /// auto (CUDA if built and present, else Metal, else CPU), cpu, cuda[:N] or metal[:N]
    /// (GPU devices need a build with --features cuda/metal).
    #[arg(long, default_value = "cpu", value_parser = device_parser())]
    pub device: DeviceSpec,
}

#[derive(Args)]
pub struct PredictArgs {
    /// A weights file (.safetensors or .pth), a run folder, or hf:owner/repo.
    #[arg(long)]
    pub weights: String,
    /// Architecture: resnet18, convnext_atto, convnext_tiny, efficientnet_b0,
    /// vit_tiny_patch16_224 or vit_small_patch16_224 [default: the run's or the weights
    /// file's, else resnet18].
    #[arg(long, value_parser = arch_parser())]
    pub arch: Option<Arch>,

    /// Replace the head with a new one of this many classes [default: read from the weights].
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// Working resolution: images are centre-cropped and resized to N x N.
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    /// Print one JSON object per image and line.
    #[arg(long)]
    pub json: bool,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Image files (JPEG or PNG).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

#[derive(Args)]
pub struct InfoArgs {
    /// A weights file (.safetensors or .pth), a run folder, or hf:owner/repo.
    #[arg(long)]
    pub weights: String,
    /// Architecture: resnet18, convnext_atto, convnext_tiny, efficientnet_b0,
    /// vit_tiny_patch16_224 or vit_small_patch16_224 [default: the run's or the weights
    /// file's, else resnet18].
    #[arg(long, value_parser = arch_parser())]
    pub arch: Option<Arch>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every option and positional argument of every subcommand has a one-line description,
    /// and every subcommand says what it does.
    #[test]
    fn every_option_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (no description)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "robustlens", &mut missing);
        assert!(missing.is_empty(), "options without help: {missing:#?}");
    }

    #[test]
    fn completions_cover_every_command() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "robustlens", &mut buf);
            let s = String::from_utf8(buf).unwrap();
            for c in ["train-robust", "sweep-eps", "benchmark", "eps-at-224"] {
                assert!(s.contains(c), "{shell:?} completions lack {c}");
            }
        }
    }

    /// Fixed sets of words list their values in --help, and a bad one is named with its flag.
    #[test]
    fn word_flags_list_their_values() {
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("saliency")
            .unwrap()
            .render_long_help()
            .to_string();
        for w in [
            "gausslegendre",
            "riemann-trapezoid",
            "smoothgrad-sq",
            "layer3",
            "viridis",
        ] {
            assert!(help.contains(w), "{w} missing from saliency --help");
        }
        let e = Cli::try_parse_from(["robustlens", "evaluate", "--run", "r", "--split", "dev"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("--split dev: unknown split `dev`; use train, val, test"),
            "{e}"
        );
        let e = Cli::try_parse_from(["robustlens", "bench", "--device", "tpu"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown device `tpu`"), "{e}");
    }

    /// --tf32 and --deterministic go before or after the command, off unless given.
    #[test]
    fn gpu_flags_are_global_and_off_by_default() {
        let c = Cli::try_parse_from(["robustlens", "bench"]).unwrap();
        assert!(!c.tf32 && !c.deterministic);
        let c = Cli::try_parse_from(["robustlens", "--tf32", "device-check", "--deterministic"])
            .unwrap();
        assert!(c.tf32 && c.deterministic);
        assert!(matches!(c.command, Command::DeviceCheck(_)));
    }
}
