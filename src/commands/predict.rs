//! `predict` (classify images) and `info` (describe a weights file).

use super::argmax;
use crate::data::preprocess;
use crate::device::DeviceSpec;
use crate::model::{load_model_spec, read_tensors, Classifier};
use crate::{Error, Result};
use candle_core::{Tensor, D};
use std::path::{Path, PathBuf};

/// Options of `predict`.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// A weights file, a run folder, or `hf:owner/repo`.
    pub weights: String,
    /// The architecture (`None`: the run's or the file's).
    pub arch: Option<crate::model::Arch>,
    /// Replace the head by one with this many classes.
    pub num_classes: Option<usize>,
    pub image_size: usize,
    /// One JSON object per image and line.
    pub json: bool,
    pub batch_size: usize,
    pub device: DeviceSpec,
    pub images: Vec<PathBuf>,
}

/// Classifies the images and prints one line (or JSON object) per image.
pub fn predict(o: &PredictOptions) -> Result<()> {
    super::check_image_size(o.image_size)?;
    if o.batch_size == 0 {
        return Err(Error::config("batch-size", 0, "must be at least 1"));
    }
    let device = o.device.open()?;
    let (model, class_names) = load_model_spec(o.arch, &o.weights, o.num_classes, 0, &device)?;
    model.kind().check_image_size(o.image_size)?;
    for chunk in o.images.chunks(o.batch_size) {
        let xs = chunk
            .iter()
            .map(|p| preprocess(p, o.image_size, &device))
            .collect::<Result<Vec<_>>>()?;
        let logits = model.logits(&Tensor::stack(&xs, 0)?)?;
        let probs: Vec<Vec<f32>> = candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec2()?;
        let logits: Vec<Vec<f32>> = logits.to_vec2()?;
        for ((path, l), p) in chunk.iter().zip(logits).zip(probs) {
            let class = argmax(&l);
            if o.json {
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

/// Sort key giving torchvision's order (conv1, bn1, layer1.., fc) with natural numbering
/// (`blocks.2` before `blocks.10`).
fn tensor_order(name: &str) -> (u8, Vec<(u64, String)>) {
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
    let parts = name
        .split('.')
        .map(|p| (p.parse::<u64>().unwrap_or(u64::MAX), p.to_string()))
        .collect();
    (g, parts)
}

/// Lists the tensors of a weights file (or a run folder's model), their shapes and the
/// parameter count, and says which architecture they fit.
pub fn info(weights: &str, arch: Option<crate::model::Arch>) -> Result<()> {
    let p = Path::new(weights);
    let path = if p.is_dir() {
        p.join("model.safetensors")
    } else {
        let src = crate::model::WeightsSource::parse(weights)?;
        crate::model::resolve_weights(&src, &crate::model::weights::default_cache_dir())?
            .ok_or_else(|| {
                Error::config(
                    "weights",
                    "none",
                    "has no file to describe; give a file, a run folder or hf:owner/repo",
                )
            })?
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
    match crate::model::load_weights(arch, &path, None, 0, &candle_core::Device::Cpu) {
        Ok((m, _)) => println!(
            "fits a {} {} with {} classes; layer groups {}",
            m.kind().ecosystem(),
            m.kind(),
            m.num_classes(),
            m.kind().groups_text()
        ),
        Err(e) => println!(
            "does not load as a {}: {e}",
            arch.map(|a| a.to_string())
                .unwrap_or_else(|| "model robustlens knows".into())
        ),
    }
    Ok(())
}
