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
}

#[derive(Args)]
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
        let logits = model.forward(&x, Mode::Eval)?;
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
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}
