//! The library in one page: build a ResNet-18, train a few steps on the synthetic lesion set,
//! compute one saliency map and save it as a PNG.
//!
//! `cargo run --release --example quickstart -- [OUT_DIR]`

use candle_core::Device;
use robustlens::attribution::{Attribution, Gradient};
use robustlens::data::cache::ImageCache;
use robustlens::data::loader::make_batch;
use robustlens::data::{DataOptions, Dataset};
use robustlens::model::{save_checkpoint, GroupSet, Mode, ModelConfig, ResNet18};
use robustlens::report::display::{overlay, tensor_to_image, DisplayOptions};
use robustlens::train::optim::{Adam, OptimKind};

fn main() -> robustlens::Result<()> {
    let out = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "models/quickstart".into()),
    );
    robustlens::fsutil::ensure_output_dir(&out)?;
    let device = Device::Cpu;
    let size = 32;
    // 8 synthetic images per class, decoded once at the working size.
    let ds = Dataset::open(
        "synthetic",
        &DataOptions {
            synthetic_per_class: 8,
            ..Default::default()
        },
    )?;
    let cache = ImageCache::build(&ds, size, None, false)?;
    let labels: Vec<usize> = ds.items.iter().map(|i| i.label).collect();
    let model = ResNet18::new_random(ds.num_classes(), 0, &device)?;
    let mut opt = Adam::new(
        OptimKind::Adam,
        model.trainable_vars(GroupSet::all()),
        1e-3,
        5e-4,
    )?;
    let all: Vec<usize> = (0..ds.items.len()).collect();
    for step in 0..3 {
        let b = make_batch(&cache, &labels, &all, None, &vec![0; all.len()]);
        let logits = model.forward(&b.images(&device)?, Mode::Train)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &b.label_tensor(&device)?)?;
        opt.step(&loss.backward()?)?;
        println!("step {step}: loss {:.4}", loss.to_scalar::<f32>()?);
    }
    // Explain the first image's true class and save the map over the image.
    let b = make_batch(&cache, &labels, &[0], None, &[0]);
    let x = b.images(&device)?;
    let a = Gradient { batch: 1 }.attribute(&model, &x, &b.labels)?;
    let img = tensor_to_image(&x.get(0)?.flatten_all()?.to_vec1()?, size, size);
    let over = overlay(
        &img,
        &a.get(0)?.flatten_all()?.to_vec1()?,
        3,
        &DisplayOptions::default(),
    );
    let path = out.join("saliency.png");
    robustlens::report::png::save_png(&robustlens::report::png::upscale(&over, 4), &path)?;
    println!("wrote {}", path.display());
    // A checkpoint and an image for examples/explain_image.rs.
    let cfg = ModelConfig {
        num_classes: 3,
        class_names: ds.class_names.clone(),
        image_size: size,
        ..Default::default()
    };
    save_checkpoint(&model, &cfg, &out, "model.safetensors")?;
    robustlens::report::png::save_png(&img, &out.join("image.png"))?;
    Ok(())
}
