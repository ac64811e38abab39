//! The `robustlens` command line. Thin: parses arguments into typed options and calls the
//! library.

use anyhow::{bail, Context, Result};
use candle_core::{Tensor, D};
use clap::{Args, Parser, Subcommand};
use robustlens::data::preprocess;
use robustlens::device::parse_device;
use robustlens::model::{load_model_spec, read_tensors, Mode};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "robustlens", version, about = "Train image classifiers whose explanations can be trusted", long_about = None)]
struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    /// The whole pipeline on the built-in synthetic set: standard, robust and fine-tuned
    /// models, evaluation, saliency maps and metrics, report.html.
    Demo(DemoArgs),
    /// An HTML report (accuracy, robust accuracy, saliency grids, metrics) for any runs.
    Report(ReportArgs),
    /// Compare models by their saliency maps: metrics with 95% bootstrap intervals, paired
    /// Wilcoxon tests against the first run, seed brittleness and best eps per image.
    Compare(Box<CompareArgs>),
    /// Train one model per eps (0 = standard) into one folder (resumable), then compare them.
    SweepEps(Box<SweepArgs>),
    /// Images per second of eval, train, input-grad, pgd7 and IG (compare with
    /// bench/torch_reference.py).
    Bench(BenchArgs),
    /// The cascading model-randomisation sanity check (Adebayo et al. 2018) for a run.
    Sanity(Box<SanityArgs>),
    /// PGD adversarial examples of images: PNG files and (with --raw-out) float32 NPY.
    Attack(Box<AttackArgs>),
    /// Data sets: write the synthetic set, make lesion-grouped splits, inspect, benchmark.
    #[command(subcommand)]
    Data(DataCommand),
}

#[derive(Args, Clone, Default)]
struct TrainArgs {
    /// A config file (a run's config.json reproduces it); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// paper (the paper's settings at 224) or quick (CPU-friendly, synthetic data).
    #[arg(long)]
    preset: Option<String>,
    /// Run folder (default models/<command>-<timestamp>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the interrupted run in this folder.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// `synthetic`, a HAM10000 folder or an ImageFolder.
    #[arg(long, env = "ROBUSTLENS_DATA")]
    data: Option<String>,
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<String>>,
    #[arg(long)]
    skip_bad_images: bool,
    /// A split CSV (image_id,lesion_id,label,split,fold); otherwise made from the counts.
    #[arg(long)]
    split: Option<PathBuf>,
    #[arg(long)]
    image_size: Option<usize>,
    #[arg(long)]
    train_per_class: Option<usize>,
    #[arg(long)]
    val_per_class: Option<usize>,
    #[arg(long)]
    test_per_class: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// ImageNet start: hf:timm/resnet18.tv_in1k, a file, or none.
    #[arg(long)]
    weights: Option<String>,
    #[arg(long)]
    device: Option<String>,
    #[arg(long)]
    head_epochs: Option<usize>,
    #[arg(long)]
    head_batch_size: Option<usize>,
    #[arg(long)]
    head_lr: Option<f64>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    /// step:EPOCH:FACTOR, plateau:PATIENCE:FACTOR or none.
    #[arg(long)]
    schedule: Option<String>,
    /// Stop when validation loss has not improved for this many epochs.
    #[arg(long)]
    early_stop: Option<usize>,
    /// adam (L2 decay, the paper) or adamw.
    #[arg(long)]
    optimizer: Option<String>,
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Turn training augmentation off.
    #[arg(long)]
    no_augment: bool,
}

#[derive(Args, Clone)]
struct RobustArgs {
    #[command(flatten)]
    train: TrainArgs,
    /// L2 radius in [0,1] pixel units at the working resolution.
    #[arg(long)]
    eps: Option<f32>,
    /// A paper eps at 224 px, converted to the working size by equal per-pixel RMS.
    #[arg(long, conflicts_with = "eps")]
    eps_at_224: Option<f32>,
    #[arg(long, default_value = "l2")]
    norm: String,
    #[arg(long, default_value_t = 7)]
    attack_steps: usize,
    /// Default eps/5.
    #[arg(long)]
    attack_step_size: Option<f32>,
    #[arg(long)]
    no_random_start: bool,
}

#[derive(Args, Clone)]
struct CvArgs {
    #[command(flatten)]
    train: TrainArgs,
    #[arg(long, value_delimiter = ',', default_value = "1e-3,3e-4,1e-4")]
    lrs: Vec<f64>,
    #[arg(long, value_delimiter = ',', default_value = "8,16,32")]
    batch_sizes: Vec<usize>,
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Then train on all training data with the best cell (into OUT/final).
    #[arg(long = "final")]
    final_train: bool,
}

#[derive(Args, Clone)]
struct FinetuneArgs {
    #[command(flatten)]
    train: TrainArgs,
    /// The run to start from (normally a robust one).
    #[arg(long)]
    from: Option<PathBuf>,
    /// Layer groups to train (1 = conv1+bn1+layer1, 2..4 = layer2..4, 5 = fc), e.g. 3-5.
    #[arg(long, default_value = "3-5")]
    groups: String,
    /// Also freeze BatchNorm running statistics of frozen groups.
    #[arg(long)]
    freeze_bn_stats: bool,
}

#[derive(Args, Clone)]
struct EvaluateArgs {
    /// The run folder.
    #[arg(long)]
    run: PathBuf,
    /// Other data (default: the run's own data and test split).
    #[arg(long)]
    data: Option<String>,
    /// Which part of the split: test, val or train.
    #[arg(long, default_value = "test")]
    split: String,
    /// `pgd` adds robust accuracy.
    #[arg(long)]
    attack: Option<String>,
    #[arg(long, default_value_t = 3.0)]
    eps: f32,
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// Default 2.5 * eps / steps.
    #[arg(long)]
    step_size: Option<f32>,
    #[arg(long, default_value = "l2")]
    norm: String,
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args, Clone)]
struct DemoArgs {
    #[arg(long, default_value = "models/demo")]
    out: PathBuf,
    /// Working resolution (64: about 4 minutes on two CPU cores; 32: under 2).
    #[arg(long, default_value_t = 64)]
    image_size: usize,
    /// Robust models to train, as paper eps values at 224 px, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4")]
    eps_at_224: Vec<f32>,
    /// Whole-network epochs of each robust model (the quick preset's 6).
    #[arg(long, default_value_t = 6)]
    robust_epochs: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args, Clone)]
struct CompareOpts {
    /// Comma-separated saliency methods.
    #[arg(long, default_value = "gradient")]
    method: String,
    /// Comma-separated metrics (rma, rra, pointing, auc, gini, entropy, deletion, insertion,
    /// faithfulness) or all.
    #[arg(long, default_value = "all")]
    metrics: String,
    /// Images compared (the first N of the part).
    #[arg(long, default_value_t = 50)]
    count: usize,
    /// Also robust accuracy: L2 PGD with this eps at the working size, on the compared images.
    #[arg(long)]
    attack_eps: Option<f32>,
    #[arg(long, default_value_t = 10)]
    attack_steps: usize,
    /// The metric that picks each image's best eps.
    #[arg(long, default_value = "rma")]
    best_by: String,
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
}

#[derive(Args, Clone)]
struct CompareArgs {
    /// Run folders (repeatable; the first is the reference of the tests); NAME=DIR names one.
    #[arg(long = "run", required = true)]
    runs: Vec<String>,
    /// Where comparison.json, comparison.csv and comparison.md go.
    #[arg(long, default_value = "models/compare")]
    out: PathBuf,
    /// `run` (the first run's data and split), `synthetic`, a HAM10000 folder or an ImageFolder.
    #[arg(long, default_value = "run")]
    data: String,
    /// Which part of the split: test, val or train.
    #[arg(long, default_value = "test")]
    split: String,
    /// Seeds the bootstrap, SmoothGrad noise and faithfulness subsets.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    opts: CompareOpts,
}

#[derive(Args, Clone)]
struct SweepArgs {
    #[command(flatten)]
    train: TrainArgs,
    /// L2 radii at the working size, comma-separated (0 = a standard model).
    #[arg(long, value_delimiter = ',')]
    eps: Option<Vec<f32>>,
    /// Paper eps values at 224 px, converted to the working size.
    #[arg(long, value_delimiter = ',', conflicts_with = "eps")]
    eps_at_224: Option<Vec<f32>>,
    /// PGD steps of the training attack (step size eps/5, random start).
    #[arg(long, default_value_t = 7)]
    train_attack_steps: usize,
    #[command(flatten)]
    compare: CompareOpts,
}

#[derive(Args, Clone)]
struct BenchArgs {
    /// Workloads, comma-separated: eval, train, input-grad, pgd7, ig.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "eval,train,input-grad,pgd7,ig"
    )]
    what: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "64,224")]
    sizes: Vec<usize>,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Timed iterations (the median counts).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// One JSON object per line: {"what", "size", "batch", "img_per_s"}.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args, Clone)]
struct SanityArgs {
    #[arg(long)]
    run: PathBuf,
    #[arg(long, default_value = "gradient")]
    method: String,
    #[arg(long, default_value = "test")]
    split: String,
    #[arg(long, default_value_t = 8)]
    count: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args, Clone)]
struct ReportArgs {
    /// Run folders (repeatable); NAME=DIR names a column.
    #[arg(long = "run", required = true)]
    runs: Vec<String>,
    #[arg(long, default_value = "models/report")]
    out: PathBuf,
    /// Test images attacked for robust accuracy (0 = none).
    #[arg(long, default_value_t = 60)]
    robust_images: usize,
    /// Comma-separated saliency methods.
    #[arg(long, default_value = "gradient,ig,smoothgrad,occlusion,gradcam")]
    method: String,
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args, Clone)]
struct AttackArgs {
    /// A weights file (.safetensors or .pth) or hf:owner/repo.
    #[arg(long, conflicts_with = "run")]
    weights: Option<String>,
    /// A run folder.
    #[arg(long)]
    run: Option<PathBuf>,
    /// Images to attack.
    #[arg(long = "image", num_args = 1.., required = true)]
    images: Vec<PathBuf>,
    #[arg(long, default_value_t = 224)]
    image_size: usize,
    #[arg(long)]
    eps: f32,
    #[arg(long, default_value_t = 7)]
    steps: usize,
    #[arg(long)]
    step_size: f32,
    #[arg(long, default_value = "l2")]
    norm: String,
    #[arg(long)]
    no_random_start: bool,
    #[arg(long)]
    no_use_best: bool,
    #[arg(long, default_value_t = 0)]
    restarts: usize,
    /// Targeted attack towards this class (default: untargeted against --label).
    #[arg(long)]
    target_class: Option<usize>,
    /// True labels, one per image (default: the model's clean prediction).
    #[arg(long, value_delimiter = ',')]
    label: Vec<usize>,
    /// Adversarial images as float32 NPY [N,3,H,W] in [0,1].
    #[arg(long)]
    raw_out: Option<PathBuf>,
    /// Folder for the adversarial PNG images.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    device: DeviceArg,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Write the synthetic lesion set as an ImageFolder with masks (DIR/<class>/*.png,
    /// DIR/masks/<class>/*.png).
    Synth {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 50)]
        per_class: usize,
        #[arg(long, default_value_t = 224)]
        size: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Make a class-balanced, lesion-grouped split: image_id,lesion_id,label,split,fold.
    Split {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long)]
        train_per_class: usize,
        #[arg(long)]
        test_per_class: usize,
        #[arg(long, default_value_t = 0)]
        val_per_class: usize,
        /// Folds of the training part for cross-validation.
        #[arg(long, default_value_t = 1)]
        folds: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
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
        #[arg(long, default_value_t = 224)]
        image_size: usize,
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
        /// With the synthetic set: images per class.
        #[arg(long, default_value_t = 100)]
        per_class: usize,
        #[arg(long, default_value_t = 3)]
        epochs: u64,
    },
}

#[derive(Args, Clone)]
struct DataArgs {
    /// `synthetic` (built in), a HAM10000 folder, or an ImageFolder (PATH/<class>/*.jpg).
    #[arg(long, default_value = "synthetic", env = "ROBUSTLENS_DATA")]
    data: String,
    /// Classes to use, comma-separated (HAM10000 default: nv,mel,bkl).
    #[arg(long, value_delimiter = ',')]
    classes: Vec<String>,
    /// Skip unreadable images (reported) instead of stopping.
    #[arg(long)]
    skip_bad_images: bool,
}

impl DataArgs {
    fn open(&self, synthetic_per_class: usize, seed: u64) -> Result<robustlens::data::Dataset> {
        let opts = robustlens::data::DataOptions {
            classes: self
                .classes
                .iter()
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect(),
            skip_bad_images: self.skip_bad_images,
            synthetic_per_class,
            seed,
        };
        let ds = robustlens::data::Dataset::open(&self.data, &opts)?;
        for w in &ds.warnings {
            tracing::warn!("{w}");
        }
        Ok(ds)
    }
}

#[derive(Args)]
struct SaliencyArgs {
    /// Run folders to explain (repeatable); each gives one column per method.
    #[arg(long = "run")]
    runs: Vec<PathBuf>,
    /// A weights file (.safetensors or .pth) or hf:owner/repo, instead of --run.
    #[arg(long)]
    weights: Option<String>,
    /// With --weights: replace the head by one with this many classes.
    #[arg(long)]
    num_classes: Option<usize>,
    /// Images to explain (JPEG or PNG).
    #[arg(long = "image", num_args = 1..)]
    images: Vec<PathBuf>,
    /// Explain images of a data set instead (with --split and --count); `--data run` uses the
    /// first run's own data and split.
    #[arg(long)]
    data: Option<String>,
    /// Which part of the split: test, val or train.
    #[arg(long, default_value = "test")]
    split: String,
    /// How many data-set images.
    #[arg(long, default_value_t = 8)]
    count: usize,
    /// Also choose images some model misclassifies (default: only correctly classified ones,
    /// as the paper shows).
    #[arg(long)]
    include_misclassified: bool,
    /// Working resolution (pre-processing as in predict; with --data, the run's size).
    #[arg(long, default_value_t = 224)]
    image_size: usize,
    /// Class to explain: label, predicted, or a class index.
    #[arg(long, default_value = "predicted")]
    target: String,
    /// Comma-separated methods: gradient, input-x-gradient, ig, smoothgrad, occlusion, gradcam.
    #[arg(long, default_value = "gradient")]
    method: String,
    /// Folder for PNG maps, overlays and grid.png.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Raw attributions as float32 NPY [N,3,H,W] (Grad-CAM [N,1,H,W]); with several models or
    /// methods the file stem gets _<model>_<method>.
    #[arg(long)]
    raw_out: Option<PathBuf>,
    /// Integrated Gradients steps.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// gausslegendre, riemann-left, riemann-right, riemann-middle or riemann-trapezoid.
    #[arg(long, default_value = "gausslegendre")]
    ig_rule: String,
    /// IG baseline: black, white, uniform, gaussian[:SIGMA], blur or an image file.
    #[arg(long, default_value = "black")]
    baseline: String,
    /// Inputs per forward/backward pass for IG steps, SmoothGrad samples and gradients.
    #[arg(long, default_value_t = 16)]
    internal_batch_size: usize,
    /// SmoothGrad variant: smoothgrad, smoothgrad-sq or vargrad.
    #[arg(long, default_value = "smoothgrad")]
    smooth: String,
    /// The method SmoothGrad wraps.
    #[arg(long, default_value = "gradient")]
    smooth_base: String,
    /// SmoothGrad samples.
    #[arg(long, default_value_t = 50)]
    samples: usize,
    /// SmoothGrad noise std as a fraction of the input's max - min.
    #[arg(long, default_value_t = 0.2)]
    noise: f32,
    /// Occlusion window (square, all channels).
    #[arg(long, default_value_t = 50)]
    window: usize,
    /// Occlusion stride.
    #[arg(long, default_value_t = 25)]
    stride: usize,
    /// Value written into occluded windows.
    #[arg(long, default_value_t = 0.0)]
    occlusion_baseline: f32,
    /// Occluded images per forward pass.
    #[arg(long, default_value_t = 16)]
    perturbations_per_eval: usize,
    /// Grad-CAM stage: stem, layer1, layer2, layer3 or layer4.
    #[arg(long, default_value = "layer4")]
    layer: String,
    /// Seed for random baselines and SmoothGrad noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Channel reduction for display: abs-sum (the paper) or sum.
    #[arg(long, default_value = "abs-sum")]
    reduce: String,
    /// Display cap: p99 (the paper's 99th percentile), pNN, cumsumNN (captum) or max.
    #[arg(long, default_value = "p99")]
    cap: String,
    /// Colour map: gray, red, green, viridis or diverging.
    #[arg(long, default_value = "gray")]
    cmap: String,
    #[command(flatten)]
    device: DeviceArg,
}

#[derive(Args, Clone)]
struct DeviceArg {
    /// cpu, cuda[:N] or metal[:N] (GPU devices need a build with --features cuda/metal).
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
struct PredictArgs {
    /// A weights file (.safetensors or .pth), a run folder, or hf:owner/repo.
    #[arg(long)]
    weights: String,
    /// Replace the head with a new one of this many classes (otherwise read from the weights).
    #[arg(long)]
    num_classes: Option<usize>,
    /// Working resolution: images are centre-cropped and resized to N x N.
    #[arg(long, default_value_t = 224)]
    image_size: usize,
    /// Print one JSON object per image and line.
    #[arg(long)]
    json: bool,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[command(flatten)]
    device: DeviceArg,
    /// Image files (JPEG or PNG).
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

#[derive(Args)]
struct InfoArgs {
    /// A weights file (.safetensors or .pth), a run folder, or hf:owner/repo.
    #[arg(long)]
    weights: String,
}

fn check_image_size(n: usize) -> Result<()> {
    if n < 32 {
        bail!("--image-size {n}: a ResNet-18 needs at least 32 x 32 pixels (its five stride-2 stages reduce 32 to 1); use e.g. 64 or 224");
    }
    if n > 4096 {
        bail!("--image-size {n}: larger than 4096 is not supported");
    }
    Ok(())
}

fn predict(a: PredictArgs) -> Result<()> {
    check_image_size(a.image_size)?;
    if a.batch_size == 0 {
        bail!("--batch-size 0: must be at least 1");
    }
    let device = parse_device(&a.device.device)?;
    let (model, class_names) = load_model_spec(&a.weights, a.num_classes, 0, &device)?;
    for chunk in a.images.chunks(a.batch_size) {
        let xs = chunk
            .iter()
            .map(|p| preprocess(p, a.image_size, &device))
            .collect::<robustlens::Result<Vec<_>>>()?;
        let x = Tensor::stack(&xs, 0)?;
        let logits = model.forward(&x, Mode::InputGrad)?;
        let probs = candle_nn::ops::softmax(&logits, D::Minus1)?;
        let logits: Vec<Vec<f32>> = logits.to_vec2()?;
        let probs: Vec<Vec<f32>> = probs.to_vec2()?;
        for ((path, l), p) in chunk.iter().zip(logits).zip(probs) {
            let class = l
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                )
                .0;
            if a.json {
                let obj = serde_json::json!({
                    "image": path.display().to_string(),
                    "logits": l,
                    "probs": p,
                    "class": class,
                });
                println!("{obj}");
            } else {
                let name = class_names.get(class).map(String::as_str).unwrap_or("?");
                println!("{}\t{class}\t{name}\t{:.4}", path.display(), p[class]);
            }
        }
    }
    Ok(())
}

fn info(a: InfoArgs) -> Result<()> {
    let path = {
        let p = PathBuf::from(&a.weights);
        if p.is_dir() {
            p.join("model.safetensors")
        } else {
            let src = robustlens::model::WeightsSource::parse(&a.weights)?;
            robustlens::model::resolve_weights(
                &src,
                &robustlens::model::weights::default_cache_dir(),
            )?
            .context("--weights none has no file to describe")?
        }
    };
    let tensors = read_tensors(&path)?;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort_by_key(|n| tensor_order(n));
    let mut params = 0usize;
    println!("{}", path.display());
    for n in &names {
        let t = &tensors[*n];
        println!(
            "  {:<40} {:<6} {:?}",
            n,
            format!("{:?}", t.dtype()).to_lowercase(),
            t.dims()
        );
        if !n.contains("running_") && !n.ends_with("num_batches_tracked") {
            params += t.elem_count();
        }
    }
    println!(
        "{} tensors, {} parameters ({:.2} M)",
        names.len(),
        params,
        params as f64 / 1e6
    );
    match robustlens::model::load_weights(&path, None, 0, &candle_core::Device::Cpu) {
        Ok((m, _)) => println!("fits a ResNet-18 with {} classes", m.num_classes()),
        Err(e) => println!("does not load as a ResNet-18: {e}"),
    }
    Ok(())
}

/// Sort key giving torchvision's order (conv1, bn1, layer1.., fc) with natural numbering.
fn tensor_order(name: &str) -> (u8, String) {
    let g = match name.split('.').next().unwrap_or("") {
        "conv1" => 0,
        "bn1" => 1,
        "layer1" => 2,
        "layer2" => 3,
        "layer3" => 4,
        "layer4" => 5,
        "fc" => 7,
        _ => 6,
    };
    (g, name.to_string())
}

fn parse_cap(s: &str) -> Result<robustlens::report::Cap> {
    use robustlens::report::Cap;
    let t = s.trim().to_ascii_lowercase();
    let num = |x: &str| -> Result<f32> {
        let v: f32 = x
            .parse()
            .with_context(|| format!("--cap {s}: use p99, cumsum98 or max"))?;
        if !(v > 0.0 && v <= 100.0) {
            bail!("--cap {s}: the percentage must be in (0, 100]");
        }
        Ok(v)
    };
    Ok(if t == "max" {
        Cap::Max
    } else if let Some(v) = t.strip_prefix("cumsum") {
        Cap::CumSum(num(v)?)
    } else if let Some(v) = t.strip_prefix('p') {
        Cap::Percentile(num(v)?)
    } else {
        bail!("--cap {s}: use p99, cumsum98 or max")
    })
}

fn saliency(a: SaliencyArgs) -> Result<()> {
    use robustlens::attribution::{Baseline, IgRule, MethodOptions, SmoothKind, Target};
    use robustlens::explain::{run, ExplainJob, NamedModel};
    use robustlens::report::{Colormap, DisplayOptions, Reduce};
    check_image_size(a.image_size)?;
    let device = parse_device(&a.device.device)?;
    if a.images.is_empty() && a.data.is_none() {
        bail!("saliency: give images with --image IMG... or a data set with --data SPEC --split test --count N");
    }
    if a.internal_batch_size == 0 || a.perturbations_per_eval == 0 {
        bail!("--internal-batch-size and --perturbations-per-eval must be at least 1");
    }
    let options = MethodOptions {
        ig_steps: a.steps,
        ig_rule: IgRule::parse(&a.ig_rule)?,
        baseline: Baseline::parse(&a.baseline)?,
        internal_batch_size: a.internal_batch_size,
        smooth: SmoothKind::parse(&a.smooth)?,
        smooth_base: a.smooth_base.clone(),
        samples: a.samples,
        noise: a.noise,
        window: a.window,
        stride: a.stride,
        occlusion_baseline: a.occlusion_baseline,
        perturbations_per_eval: a.perturbations_per_eval,
        layer: robustlens::model::Stage::parse(&a.layer)?,
        seed: a.seed,
    };
    let display = DisplayOptions {
        reduce: match a.reduce.as_str() {
            "abs-sum" | "abs" => Reduce::AbsSum,
            "sum" | "signed" => Reduce::Sum,
            other => bail!("--reduce {other}: use abs-sum or sum"),
        },
        cap: parse_cap(&a.cap)?,
        cmap: Colormap::parse(&a.cmap)?,
        ..Default::default()
    };
    let mut models = Vec::new();
    for r in &a.runs {
        if !r.is_dir() {
            bail!("--run {}: not a folder; give a run folder (with model.safetensors) or use --weights FILE", r.display());
        }
        let (m, _) = load_model_spec(&r.to_string_lossy(), None, 0, &device)?;
        let name = r
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "run".into());
        models.push(NamedModel { name, model: m });
    }
    if let Some(w) = &a.weights {
        let (m, _) = load_model_spec(w, a.num_classes, 0, &device)?;
        let name = std::path::Path::new(w)
            .file_stem()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "model".into());
        models.push(NamedModel { name, model: m });
    }
    if models.is_empty() {
        bail!("saliency: give a model with --run DIR or --weights FILE");
    }
    let (images, image_names, labels) = if let Some(spec) = &a.data {
        data_images(&a, spec, &models, &device)?
    } else {
        let xs = a
            .images
            .iter()
            .map(|p| preprocess(p, a.image_size, &device))
            .collect::<robustlens::Result<Vec<_>>>()?;
        let names = a
            .images
            .iter()
            .map(|p| {
                p.file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default()
            })
            .collect();
        (Tensor::stack(&xs, 0)?, names, None)
    };
    let methods: Vec<String> = a
        .method
        .split(',')
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect();
    if a.out.is_none() && a.raw_out.is_none() {
        bail!("saliency: nothing to write; give --out DIR and/or --raw-out FILE.npy");
    }
    let job = ExplainJob {
        models: &models,
        image_names,
        images,
        labels,
        target: Target::parse(&a.target)?,
        methods,
        options,
        display,
        out_dir: a.out.clone(),
        raw_out: a.raw_out.clone(),
    };
    let results = run(&job)?;
    for r in &results {
        eprintln!("{} {}: targets {:?}", r.model, r.method, r.targets);
    }
    if let Some(o) = &a.out {
        eprintln!("wrote maps, overlays and grid.png to {}", o.display());
    }
    Ok(())
}

fn data_command(c: DataCommand) -> Result<()> {
    use robustlens::data::split::{make_split, SplitSpec};
    match c {
        DataCommand::Synth {
            out,
            per_class,
            size,
            seed,
        } => {
            check_image_size(size)?;
            if per_class == 0 {
                bail!("--per-class 0: ask for at least one image per class");
            }
            robustlens::fsutil::ensure_output_dir(&out)?;
            let cfg = robustlens::data::synthetic::SyntheticConfig::default();
            let ds = robustlens::data::synthetic::dataset(&cfg, per_class, seed);
            let pb = robustlens::progress::bar(ds.items.len() as u64, "rendering");
            for (i, it) in ds.items.iter().enumerate() {
                let (img, mask) = ds.load(i, size)?;
                let class = &ds.class_names[it.label];
                let name = format!("{}.png", it.image_id);
                let d = out.join(class);
                let md = out.join("masks").join(class);
                std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
                std::fs::create_dir_all(&md)
                    .with_context(|| format!("creating {}", md.display()))?;
                robustlens::report::png::save_png(&img, &d.join(&name))?;
                let mask = mask.context("synthetic items have masks")?;
                let mut buf = Vec::new();
                mask.write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Png)?;
                robustlens::fsutil::write_atomic(&md.join(&name), &buf)?;
                pb.inc(1);
            }
            pb.finish_and_clear();
            println!(
                "wrote {} images ({} per class, {size} px, seed {seed}) with masks to {}",
                ds.items.len(),
                per_class,
                out.display()
            );
        }
        DataCommand::Split {
            data,
            train_per_class,
            test_per_class,
            val_per_class,
            folds,
            seed,
            out,
        } => {
            let ds = data.open(train_per_class + test_per_class + val_per_class, seed)?;
            let spec = SplitSpec {
                train_per_class,
                test_per_class,
                val_per_class,
                folds,
                seed,
            };
            let split = make_split(&ds, &spec)?;
            split.write(&out)?;
            println!("wrote {} ({} images: {train_per_class} train + {val_per_class} val + {test_per_class} test per class, {folds} folds)", out.display(), split.rows.len());
        }
        DataCommand::Inspect { data, check_images } => {
            let ds = data.open(100, 0)?;
            println!("{:?}", ds.kind);
            println!(
                "{:<12} {:>8} {:>8} {:>8}",
                "class", "images", "lesions", "masks"
            );
            for (l, c) in ds.class_names.iter().enumerate() {
                let items: Vec<_> = ds.items.iter().filter(|i| i.label == l).collect();
                let lesions: std::collections::HashSet<&str> =
                    items.iter().map(|i| i.lesion_id.as_str()).collect();
                let masks = items
                    .iter()
                    .filter(|i| {
                        i.mask.is_some()
                            || matches!(
                                i.source,
                                robustlens::data::dataset::ItemSource::Synthetic(_)
                            )
                    })
                    .count();
                println!(
                    "{:<12} {:>8} {:>8} {:>8}",
                    c,
                    items.len(),
                    lesions.len(),
                    masks
                );
            }
            let mut problems = ds.warnings.clone();
            if check_images {
                for it in &ds.items {
                    if let robustlens::data::dataset::ItemSource::File(p) = &it.source {
                        if let Err(e) = robustlens::data::load_image(p) {
                            problems.push(e.to_string());
                        }
                    }
                }
            }
            if problems.is_empty() {
                println!("no problems found");
            } else {
                println!("{} problems:", problems.len());
                for p in &problems {
                    println!("  {p}");
                }
            }
        }
        DataCommand::Bench {
            data,
            image_size,
            batch_size,
            per_class,
            epochs,
        } => {
            use robustlens::data::{augment::AugmentConfig, cache::ImageCache, loader};
            check_image_size(image_size)?;
            let ds = data.open(per_class, 0)?;
            let t0 = std::time::Instant::now();
            let cache = ImageCache::build(
                &ds,
                image_size,
                Some(&robustlens::data::cache::default_cache_dir()),
                data.skip_bad_images,
            )?;
            let build = t0.elapsed().as_secs_f64();
            let labels: Vec<usize> = ds.items.iter().map(|i| i.label).collect();
            let idx: Vec<usize> = (0..ds.items.len())
                .filter(|i| !cache.bad.contains(i))
                .collect();
            let cache = std::sync::Arc::new(cache);
            let labels = std::sync::Arc::new(labels);
            let t1 = std::time::Instant::now();
            let mut n = 0usize;
            for epoch in 0..epochs {
                let cfg = loader::LoaderConfig {
                    batch_size,
                    shuffle: true,
                    augment: Some(AugmentConfig::default()),
                    seed: 0,
                    epoch,
                    min_batch: 1,
                    skip: 0,
                };
                for b in loader::batches(cache.clone(), labels.clone(), &idx, cfg) {
                    n += b.len();
                }
            }
            let secs = t1.elapsed().as_secs_f64();
            println!(
                "cache: {} images at {image_size} px in {build:.2} s",
                idx.len()
            );
            println!(
                "loader: {n} images in {secs:.2} s = {:.0} images/s (augmentation on, {} threads)",
                n as f64 / secs,
                rayon::current_num_threads()
            );
        }
    }
    Ok(())
}

/// The training configuration: preset, then config file, then explicit flags.
fn build_config(command: &str, a: &TrainArgs) -> Result<robustlens::train::TrainConfig> {
    use robustlens::train::TrainConfig;
    let mut cfg = match &a.config {
        Some(p) => {
            let v: serde_json::Value = robustlens::fsutil::read_json(p)?;
            let inner = v.get("train").cloned().unwrap_or(v);
            serde_json::from_value::<TrainConfig>(inner)
                .with_context(|| format!("{}: not a training configuration", p.display()))?
        }
        None => TrainConfig::default(),
    };
    cfg.command = command.to_string();
    if let Some(d) = &a.data {
        cfg.data = d.clone();
    }
    let preset = a.preset.clone().or_else(|| {
        if a.config.is_none() && cfg.data == "synthetic" {
            Some("quick".into())
        } else {
            None
        }
    });
    if let Some(p) = &preset {
        cfg.apply_preset(p)?;
    } else if command == "finetune" && a.config.is_none() {
        cfg.apply_finetune_defaults();
    }
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f.clone() { cfg.$f = v; } )* };
    }
    set!(
        image_size,
        train_per_class,
        val_per_class,
        test_per_class,
        seed,
        weights,
        device,
        head_epochs,
        head_batch_size,
        head_lr,
        epochs,
        batch_size,
        lr,
        schedule,
        weight_decay
    );
    if let Some(c) = &a.classes {
        cfg.classes = c.clone();
    }
    if a.split.is_some() {
        cfg.split = a.split.clone();
    }
    if a.early_stop.is_some() {
        cfg.early_stop = a.early_stop;
    }
    if a.skip_bad_images {
        cfg.skip_bad_images = true;
    }
    if a.no_augment {
        cfg.augment = false;
    }
    if let Some(o) = &a.optimizer {
        cfg.optimizer = match o.as_str() {
            "adam" => robustlens::train::optim::OptimKind::Adam,
            "adamw" => robustlens::train::optim::OptimKind::AdamW,
            other => bail!("--optimizer {other}: use adam or adamw"),
        };
    }
    Ok(cfg)
}

fn robust_config(a: &RobustArgs) -> Result<robustlens::train::AdvConfig> {
    let size = a.train.image_size.unwrap_or(
        if a.train.preset.as_deref() == Some("paper")
            || (a.train.data.is_some() && a.train.data.as_deref() != Some("synthetic"))
        {
            224
        } else {
            32
        },
    );
    let eps = match (a.eps, a.eps_at_224) {
        (Some(e), _) => e,
        (None, Some(e224)) => robustlens::train::trainer::eps_from_224(e224, size),
        (None, None) => {
            bail!("train-robust needs --eps E (L2 radius at the working size) or --eps-at-224 E")
        }
    };
    if !(eps.is_finite() && eps > 0.0) {
        bail!("--eps {eps}: must be a number > 0");
    }
    Ok(robustlens::train::AdvConfig {
        norm: robustlens::adversarial::Norm::parse(&a.norm)?,
        eps,
        steps: a.attack_steps,
        step_size: a.attack_step_size.unwrap_or(eps / 5.0),
        random_start: !a.no_random_start,
    })
}

fn default_out(command: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from("models").join(format!("{command}-{secs}"))
}

fn run_training(cfg: robustlens::train::TrainConfig, out: PathBuf, resume: bool) -> Result<()> {
    use robustlens::train::{train, Stop};
    let interrupt = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let flag = interrupt.clone();
        let _ = ctrlc::set_handler(move || {
            if flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
                eprintln!("second Ctrl-C: stopping now");
                std::process::exit(130);
            }
            eprintln!("Ctrl-C: finishing the current step, then writing a checkpoint");
        });
    }
    eprintln!(
        "{} -> {} (data {}, {} px, seed {})",
        cfg.command,
        out.display(),
        cfg.data,
        cfg.image_size,
        cfg.seed
    );
    if cfg.data == "synthetic" {
        eprintln!("data: the built-in synthetic lesion set; for HAM10000 pass --data PATH (or set ROBUSTLENS_DATA) with --preset paper");
    }
    match train(&cfg, &out, resume, interrupt)? {
        Stop::Interrupted => std::process::exit(130),
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
        }
    }
    Ok(())
}

fn train_command(
    command: &str,
    a: TrainArgs,
    adv: Option<robustlens::train::AdvConfig>,
) -> Result<()> {
    if let Some(dir) = &a.resume {
        let rc: robustlens::train::trainer::RunConfig =
            robustlens::fsutil::read_json(&dir.join("config.json")).with_context(|| {
                format!(
                    "--resume {}: not a run folder (no readable config.json)",
                    dir.display()
                )
            })?;
        if rc.train.command != command {
            bail!(
                "--resume {}: the run was made by `{}`, not `{command}`",
                dir.display(),
                rc.train.command
            );
        }
        return run_training(rc.train, dir.clone(), true);
    }
    let mut cfg = build_config(command, &a)?;
    if adv.is_some() {
        cfg.adversarial = adv;
    }
    let out = a.out.clone().unwrap_or_else(|| default_out(command));
    if out.join("resume.safetensors").exists() {
        bail!(
            "--out {}: holds a run already; continue it with --resume {} or choose another folder",
            out.display(),
            out.display()
        );
    }
    run_training(cfg, out, false)
}

fn finetune_command(a: FinetuneArgs) -> Result<()> {
    if a.train.resume.is_some() {
        return train_command("finetune", a.train, None);
    }
    robustlens::model::GroupSet::parse(&a.groups)?;
    let from = a
        .from
        .clone()
        .context("finetune needs --from RUN_DIR (a trained run, normally robust)")?;
    if !from.join("model.safetensors").exists() {
        bail!("--from {}: no model.safetensors there; give a run folder of train-standard or train-robust", from.display());
    }
    let src: robustlens::train::trainer::RunConfig =
        robustlens::fsutil::read_json(&from.join("config.json"))?;
    // Start from the source run's data, split and size; then the finetune recipe; then flags.
    let mut base = src.train.clone();
    base.command = "finetune".into();
    base.adversarial = None;
    base.from = Some(from.clone());
    base.split = Some(from.join("split.csv"));
    base.apply_finetune_defaults();
    if base.preset.as_deref() == Some("quick") {
        base.epochs = 3;
        base.lr = 1e-4;
    }
    base.groups = a.groups.clone();
    base.freeze_bn_stats = a.freeze_bn_stats;
    let tmp = std::env::temp_dir().join(format!("robustlens-finetune-{}.json", std::process::id()));
    robustlens::fsutil::write_json_atomic(&tmp, &base)?;
    let mut targs = a.train.clone();
    if targs.config.is_none() {
        targs.config = Some(tmp.clone());
    }
    let cfg = build_config("finetune", &targs);
    let _ = std::fs::remove_file(&tmp);
    let mut cfg = cfg?;
    cfg.from = Some(from);
    cfg.groups = a.groups;
    cfg.freeze_bn_stats = a.freeze_bn_stats;
    let out = a
        .train
        .out
        .clone()
        .unwrap_or_else(|| default_out("finetune"));
    run_training(cfg, out, false)
}

fn evaluate_command(a: EvaluateArgs) -> Result<()> {
    use robustlens::data::cache::ImageCache;
    let pgd = match a.attack.as_deref() {
        None => None,
        Some("pgd") => Some(robustlens::adversarial::Pgd {
            norm: robustlens::adversarial::Norm::parse(&a.norm)?,
            eps: a.eps,
            steps: a.steps,
            step_size: a.step_size.unwrap_or(2.5 * a.eps / a.steps.max(1) as f32),
            random_start: false,
            use_best: true,
            restarts: 0,
        }),
        Some(other) => bail!("--attack {other}: only pgd is supported"),
    };
    if let Some(p) = &pgd {
        p.validate()?;
    }
    let device = parse_device(&a.device)?;
    let rc: robustlens::train::trainer::RunConfig =
        robustlens::fsutil::read_json(&a.run.join("config.json"))
            .with_context(|| format!("--run {}: not a run folder", a.run.display()))?;
    let (model, mc) = robustlens::model::load_checkpoint(&a.run, &device)?;
    let mut tc = rc.train.clone();
    if let Some(d) = &a.data {
        tc.data = d.clone();
    } else {
        tc.split = Some(a.run.join("split.csv"));
    }
    let (ds, split) = robustlens::train::trainer::open_data(&tc)?;
    let part = robustlens::data::split::Part::parse(&a.split)?;
    let idx = split.indices(&ds, part, None);
    if idx.is_empty() {
        bail!("the {} split of {} is empty", a.split, a.run.display());
    }
    let cache = ImageCache::build(
        &ds,
        mc.image_size,
        Some(&robustlens::data::cache::default_cache_dir()),
        tc.skip_bad_images,
    )?;
    let labels: Vec<usize> = ds.items.iter().map(|i| i.label).collect();
    let e = robustlens::eval::evaluate_model(
        &model,
        &cache,
        &labels,
        &idx,
        &ds.class_names,
        32,
        pgd.as_ref().map(|p| (p, tc.seed)),
        &device,
    )?;
    print!("{}", e.table());
    let mut v = serde_json::to_value(&e)?;
    if let Some(p) = &pgd {
        v["attack"] = serde_json::to_value(p)?;
    }
    robustlens::fsutil::write_json_atomic(&a.run.join("evaluation.json"), &v)?;
    println!("wrote {}", a.run.join("evaluation.json").display());
    Ok(())
}

fn attack_command(a: AttackArgs) -> Result<()> {
    use robustlens::adversarial::{Norm, Pgd};
    check_image_size(a.image_size)?;
    let device = parse_device(&a.device.device)?;
    let spec = match (&a.weights, &a.run) {
        (Some(w), None) => w.clone(),
        (None, Some(r)) => r.to_string_lossy().to_string(),
        _ => bail!("attack: give --weights FILE or --run DIR"),
    };
    let (model, _) = load_model_spec(&spec, None, 0, &device)?;
    let pgd = Pgd {
        norm: Norm::parse(&a.norm)?,
        eps: a.eps,
        steps: a.steps,
        step_size: a.step_size,
        random_start: !a.no_random_start,
        use_best: !a.no_use_best,
        restarts: a.restarts,
    };
    pgd.validate()?;
    let xs = a
        .images
        .iter()
        .map(|p| preprocess(p, a.image_size, &device))
        .collect::<robustlens::Result<Vec<_>>>()?;
    let x = Tensor::stack(&xs, 0)?;
    let clean = robustlens::attribution::predict_classes(&model, &x, 16)?;
    let k = model.num_classes();
    let labels = if a.label.is_empty() {
        clean.clone()
    } else {
        if a.label.len() != a.images.len() {
            bail!(
                "--label: {} labels for {} images",
                a.label.len(),
                a.images.len()
            );
        }
        if let Some(l) = a.label.iter().find(|l| **l >= k) {
            bail!("--label {l}: the model has {k} classes");
        }
        a.label.clone()
    };
    let targets = match a.target_class {
        Some(t) if t >= k => bail!(
            "--target-class {t}: the model has {k} classes (0..{})",
            k - 1
        ),
        Some(t) => Some(vec![t; a.images.len()]),
        None => None,
    };
    let mut rng = robustlens::rng::SeededRng::new(a.seed);
    let r = pgd.attack(&model, &x, &labels, targets.as_deref(), &mut rng)?;
    let adv_pred = robustlens::attribution::predict_classes(&model, &r.images, 16)?;
    let dist: Vec<f32> = match pgd.norm {
        Norm::L2 => (&r.images - &x)?
            .flatten_from(1)?
            .sqr()?
            .sum(1)?
            .sqrt()?
            .to_vec1()?,
        Norm::Linf => (&r.images - &x)?
            .flatten_from(1)?
            .abs()?
            .max(1)?
            .to_vec1()?,
    };
    if let Some(dir) = &a.out {
        robustlens::fsutil::ensure_output_dir(dir)?;
    }
    let s = a.image_size;
    for (i, p) in a.images.iter().enumerate() {
        println!(
            "{}\tclean {}\tadversarial {}\tdistance {:.4}\tloss {:.4}",
            p.display(),
            clean[i],
            adv_pred[i],
            dist[i],
            r.losses[i]
        );
        if let Some(dir) = &a.out {
            let v: Vec<f32> = r.images.get(i)?.flatten_all()?.to_vec1()?;
            let img = robustlens::report::display::tensor_to_image(&v, s, s);
            let stem = p
                .file_stem()
                .map(|x| x.to_string_lossy().to_string())
                .unwrap_or_else(|| format!("image{i}"));
            robustlens::report::png::save_png(&img, &dir.join(format!("{stem}_adv.png")))?;
        }
    }
    if let Some(f) = &a.raw_out {
        robustlens::report::npy::write_npy(f, &r.images)?;
    }
    Ok(())
}

/// Images of a data set for `saliency --data`: the part `--split` of the first run's split
/// (or a fresh split of SPEC), correctly classified by every model unless asked otherwise.
fn data_images(
    a: &SaliencyArgs,
    spec: &str,
    models: &[robustlens::explain::NamedModel],
    device: &candle_core::Device,
) -> Result<(Tensor, Vec<String>, Option<Vec<usize>>)> {
    use robustlens::data::cache::ImageCache;
    use robustlens::data::loader::make_batch;
    let run_cfg: Option<robustlens::train::trainer::RunConfig> = a
        .runs
        .first()
        .and_then(|r| robustlens::fsutil::read_json(&r.join("config.json")).ok());
    let mut tc = run_cfg
        .as_ref()
        .map(|c| c.train.clone())
        .unwrap_or_default();
    let size = run_cfg
        .as_ref()
        .map(|c| c.model.image_size)
        .unwrap_or(a.image_size);
    if spec != "run" {
        if spec != tc.data {
            tc.split = None;
        }
        tc.data = spec.to_string();
    }
    if let Some(r) = a.runs.first() {
        if spec == "run" || run_cfg.as_ref().is_some_and(|c| c.train.data == spec) {
            tc.split = Some(r.join("split.csv"));
        }
    }
    let (ds, split) = robustlens::train::trainer::open_data(&tc)?;
    let part = robustlens::data::split::Part::parse(&a.split)?;
    let idx = split.indices(&ds, part, None);
    if idx.is_empty() {
        bail!("--split {}: no images in that part of the split", a.split);
    }
    let cache = ImageCache::build(
        &ds,
        size,
        Some(&robustlens::data::cache::default_cache_dir()),
        tc.skip_bad_images,
    )?;
    let labels: Vec<usize> = ds.items.iter().map(|i| i.label).collect();
    let mut chosen = Vec::new();
    for chunk in idx.chunks(64) {
        let b = make_batch(&cache, &labels, chunk, None, &vec![0; chunk.len()]);
        let x = b.images(device)?;
        let mut ok = vec![true; chunk.len()];
        if !a.include_misclassified {
            for m in models {
                let p = robustlens::attribution::predict_classes(&m.model, &x, 32)?;
                for (k, o) in ok.iter_mut().enumerate() {
                    *o &= p[k] == b.labels[k];
                }
            }
        }
        chosen.extend(chunk.iter().zip(ok).filter(|(_, o)| *o).map(|(i, _)| *i));
        if chosen.len() >= a.count {
            break;
        }
    }
    chosen.truncate(a.count);
    if chosen.is_empty() {
        bail!(
            "no correctly classified images in the {} split; add --include-misclassified",
            a.split
        );
    }
    let b = make_batch(&cache, &labels, &chosen, None, &vec![0; chosen.len()]);
    let names = chosen
        .iter()
        .map(|&i| ds.items[i].image_id.replace('/', "_"))
        .collect();
    Ok((b.images(device)?, names, Some(b.labels.clone())))
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn,robustlens=info",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match cli.command {
        Command::Predict(a) => predict(a),
        Command::Info(a) => info(a),
        Command::Saliency(a) => saliency(*a),
        Command::Data(c) => data_command(c),
        Command::TrainStandard(a) => train_command("train-standard", *a, None),
        Command::TrainRobust(a) => {
            let a = *a;
            if a.train.resume.is_some() {
                return train_command("train-robust", a.train, None);
            }
            let adv = robust_config(&a)?;
            train_command("train-robust", a.train, Some(adv))
        }
        Command::Finetune(a) => finetune_command(*a),
        Command::Cv(a) => {
            let a = *a;
            let cfg = build_config("train-standard", &a.train)?;
            for &lr in &a.lrs {
                robustlens::train::TrainConfig { lr, ..cfg.clone() }.validate()?;
            }
            for &bs in &a.batch_sizes {
                robustlens::train::TrainConfig {
                    batch_size: bs,
                    ..cfg.clone()
                }
                .validate()?;
            }
            let out = a.train.out.clone().unwrap_or_else(|| default_out("cv"));
            let interrupt = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = interrupt.clone();
            let _ = ctrlc::set_handler(move || {
                if flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    std::process::exit(130);
                }
            });
            let r = robustlens::train::cv::cross_validate(
                &cfg,
                &a.lrs,
                &a.batch_sizes,
                a.folds,
                &out,
                a.final_train,
                interrupt,
            )?;
            print!("{}", robustlens::train::cv::table(&r));
            println!(
                "wrote {} and {}",
                out.join("cv.md").display(),
                out.join("cv.json").display()
            );
            Ok(())
        }
        Command::Evaluate(a) => evaluate_command(*a),
        Command::Attack(a) => attack_command(*a),
        Command::Demo(a) => {
            check_image_size(a.image_size)?;
            let interrupt = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = interrupt.clone();
            let _ = ctrlc::set_handler(move || {
                if flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    std::process::exit(130);
                }
                eprintln!("Ctrl-C: finishing the current step, then writing a checkpoint");
            });
            let t0 = std::time::Instant::now();
            let opts = robustlens::pipeline::DemoOptions {
                out: a.out.clone(),
                image_size: a.image_size,
                eps_at_224: a.eps_at_224,
                seed: a.seed,
                device: a.device,
                robust_epochs: a.robust_epochs,
            };
            robustlens::pipeline::demo(&opts, interrupt)?;
            println!(
                "demo finished in {:.0} s: open {}",
                t0.elapsed().as_secs_f64(),
                a.out.join("report.html").display()
            );
            Ok(())
        }
        Command::Compare(a) => {
            let runs = robustlens::eval::compare::name_runs(&a.runs);
            let opts = compare_options(&a.opts, &a.data, &a.split, a.seed)?;
            run_compare(&runs, opts, &a.device, &a.out)
        }
        Command::SweepEps(a) => sweep_eps(*a),
        Command::Sanity(a) => sanity_command(*a),
        Command::Bench(a) => {
            let device = parse_device(&a.device)?;
            for w in &a.what {
                if !robustlens::bench::WORKLOADS.contains(&w.as_str()) {
                    bail!(
                        "--what {w}: use {}",
                        robustlens::bench::WORKLOADS.join(", ")
                    );
                }
            }
            for &s in &a.sizes {
                check_image_size(s)?;
            }
            if a.batch_size == 0 || a.iters == 0 {
                bail!("--batch-size and --iters must be at least 1");
            }
            if !a.json {
                println!(
                    "{:<12} {:>5} {:>6} {:>10}",
                    "what", "size", "batch", "images/s"
                );
            }
            for &size in &a.sizes {
                for w in &a.what {
                    let c = robustlens::bench::run_cell(
                        w,
                        size,
                        a.batch_size,
                        a.warmup,
                        a.iters,
                        &device,
                    )?;
                    if a.json {
                        println!("{}", serde_json::to_string(&c)?);
                    } else {
                        println!(
                            "{:<12} {:>5} {:>6} {:>10.2}",
                            c.what, c.size, c.batch, c.img_per_s
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Report(a) => {
            let runs = robustlens::eval::compare::name_runs(&a.runs);
            let opts = robustlens::pipeline::ReportOptions {
                out: a.out.clone(),
                robust_images: a.robust_images,
                methods: a
                    .method
                    .split(',')
                    .map(|m| m.trim().to_string())
                    .filter(|m| !m.is_empty())
                    .collect(),
                ..Default::default()
            };
            robustlens::pipeline::report(&runs, &opts, &parse_device(&a.device)?)?;
            println!("wrote {}", a.out.join("report.html").display());
            Ok(())
        }
    }
}

fn compare_options(
    o: &CompareOpts,
    data: &str,
    part: &str,
    seed: u64,
) -> Result<robustlens::eval::compare::CompareOptions> {
    use robustlens::eval::compare::{CompareOptions, Metric};
    let methods: Vec<String> = o
        .method
        .split(',')
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect();
    for m in &methods {
        robustlens::attribution::by_name(m, &Default::default())?;
    }
    let metrics = Metric::parse_list(&o.metrics)?;
    let best_by = Metric::parse_list(&o.best_by)?[0];
    if let Some(e) = o.attack_eps {
        if !(e.is_finite() && e > 0.0) {
            bail!("--attack-eps {e}: must be a number > 0");
        }
    }
    if o.count == 0 {
        bail!("--count 0: compare at least one image");
    }
    Ok(CompareOptions {
        methods,
        metrics,
        data: Some(data.to_string()),
        part: robustlens::data::split::Part::parse(part)?,
        count: Some(o.count),
        attack_eps: o.attack_eps,
        attack_steps: o.attack_steps,
        best_by,
        bootstrap: o.bootstrap.max(1),
        seed,
        method_options: None,
    })
}

fn run_compare(
    runs: &[(String, PathBuf)],
    opts: robustlens::eval::compare::CompareOptions,
    device: &str,
    out: &std::path::Path,
) -> Result<()> {
    robustlens::fsutil::ensure_output_dir(out)?;
    let device = parse_device(device)?;
    let models = robustlens::eval::compare::load_runs(runs, &device)?;
    let bar = robustlens::progress::spinner("compare");
    let c = robustlens::eval::compare::compare(&models, &opts, &device, &|m| {
        bar.set_message(m.to_string())
    })?;
    bar.finish_and_clear();
    c.write(out)?;
    print!("{}", c.markdown());
    println!(
        "wrote {}, comparison.csv and comparison.md",
        out.join("comparison.json").display()
    );
    Ok(())
}

fn sweep_eps(a: SweepArgs) -> Result<()> {
    use robustlens::train::{train, Stop};
    let eps_list: Vec<(String, f32)> = match (&a.eps, &a.eps_at_224) {
        (Some(v), _) => v.iter().map(|&e| (format!("eps-{e}"), e)).collect(),
        (None, Some(v)) => {
            let probe = build_config("train-robust", &a.train)?;
            v.iter()
                .map(|&e| {
                    (
                        format!("eps224-{e}"),
                        robustlens::train::trainer::eps_from_224(e, probe.image_size),
                    )
                })
                .collect()
        }
        (None, None) => {
            bail!("sweep-eps needs --eps 0,0.5,1 (working size) or --eps-at-224 0,1,2,3,4,5,7,9")
        }
    };
    if eps_list.is_empty() {
        bail!("--eps: give at least one value");
    }
    for (_, e) in &eps_list {
        if !(e.is_finite() && *e >= 0.0) {
            bail!("--eps {e}: each eps must be a number >= 0 (0 = a standard model)");
        }
    }
    // Check the comparison's flags before hours of training.
    let copts = compare_options(&a.compare, "run", "test", a.train.seed.unwrap_or(0))?;
    let out = a
        .train
        .out
        .clone()
        .unwrap_or_else(|| default_out("sweep-eps"));
    robustlens::fsutil::ensure_output_dir(&out)?;
    let interrupt = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let flag = interrupt.clone();
        let _ = ctrlc::set_handler(move || {
            if flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("Ctrl-C: finishing the current step, then writing a checkpoint; run the same command again to continue");
        });
    }
    let mut runs = Vec::new();
    for (name, eps) in &eps_list {
        let dir = out.join(name);
        runs.push((name.clone(), dir.clone()));
        if dir.join("summary.json").exists() {
            eprintln!("{name}: finished earlier, kept");
            continue;
        }
        let resume = dir.join("resume.safetensors").exists();
        let cfg = if resume {
            let rc: robustlens::train::trainer::RunConfig =
                robustlens::fsutil::read_json(&dir.join("config.json"))?;
            rc.train
        } else {
            let command = if *eps > 0.0 {
                "train-robust"
            } else {
                "train-standard"
            };
            let mut cfg = build_config(command, &a.train)?;
            if *eps > 0.0 {
                cfg.adversarial = Some(robustlens::train::AdvConfig {
                    norm: robustlens::adversarial::Norm::L2,
                    eps: *eps,
                    steps: a.train_attack_steps,
                    step_size: eps / 5.0,
                    random_start: true,
                });
            }
            cfg
        };
        eprintln!(
            "{name}: {} (eps {eps} at {} px){}",
            cfg.command,
            cfg.image_size,
            if resume { ", resuming" } else { "" }
        );
        match train(&cfg, &dir, resume, interrupt.clone())? {
            Stop::Interrupted => std::process::exit(130),
            Stop::Finished(s) => eprintln!("{name}: done in {:.0} s", s.seconds),
        }
    }
    let device = build_config("train-standard", &a.train)?.device;
    run_compare(&runs, copts, &device, &out)
}

fn sanity_command(a: SanityArgs) -> Result<()> {
    use robustlens::eval::compare::{load_runs, EvalImages};
    let device = parse_device(&a.device)?;
    if a.count == 0 {
        bail!("--count 0: check at least one image");
    }
    let models = load_runs(&[("run".to_string(), a.run.clone())], &device)?;
    let data = EvalImages::open(
        &models[0],
        None,
        robustlens::data::split::Part::parse(&a.split)?,
    )?;
    let idx: Vec<usize> = data.indices.iter().copied().take(a.count).collect();
    let hb = data.batch(&idx);
    let x = hb.images(&device)?;
    let method = robustlens::attribution::by_name(
        &a.method,
        &robustlens::eval::compare::method_options_for(data.size, a.seed),
    )?;
    let steps = robustlens::eval::sanity::cascading_randomisation(
        &models[0].model,
        method.as_ref(),
        &x,
        &hb.labels,
        a.seed,
    )?;
    println!("| randomised groups | Spearman | SSIM |\n|---|---|---|");
    for s in &steps {
        let g: Vec<String> = s.randomised.iter().map(|g| g.to_string()).collect();
        println!("| {} | {:.3} | {:.3} |", g.join(","), s.spearman, s.ssim);
    }
    println!(
        "{} maps of {} {} images; similarity to the trained model's maps, groups randomised from the head (5 = fc) down",
        a.method,
        idx.len(),
        a.split
    );
    if let Some(p) = &a.json {
        robustlens::fsutil::write_json_atomic(p, &steps)?;
    }
    Ok(())
}

/// glibc returns every large buffer to the kernel on free and page-faults a fresh one on the
/// next allocation; tensors of tens of MB are allocated and freed every step, so keep them in
/// the heap instead (measured: system time of a training step falls from more than the user
/// time to a few percent). Buffers above 32 MB (the stem's activations at 224 px) would still
/// be mapped fresh each time, so no buffer is: train step @224 9.8 → 10.3 images/s, page
/// faults per run 473k → 254k (the first touches of the working set).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// candle's CPU thread pool (used for its element-wise ops) busy-waits 25,000 spins after
/// each op before it sleeps; with the convolutions on rayon's threads, that spinning took
/// 7-10% of the CPU on a 2-core machine (train step @64: 67 → 75 images/s without it).
/// Set before any candle op starts the pool; a value the user set is kept.
fn tune_candle_threads() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
    }
}

fn main() {
    tune_allocator();
    tune_candle_threads();
    // A file-size limit (ulimit -f) must give a clear "File too large" error on the write that
    // crosses it, not kill the process with SIGXFSZ.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    if let Err(e) = run() {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
