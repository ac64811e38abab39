//! Build a ResNet-18, run it on images in [0,1], compute an input gradient and save a
//! checkpoint that torchvision can load.
//!
//! `cargo run --release --example quickstart -- OUT_DIR`

use candle_core::{DType, Device, Tensor, Var};
use robustlens::model::{save_checkpoint, Mode, ModelConfig, ResNet18};

fn main() -> robustlens::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "models/quickstart".into());
    let device = Device::Cpu;
    let model = ResNet18::new_random(3, 42, &device)?;
    let x = Var::from_tensor(&Tensor::rand(0f32, 1f32, (4, 3, 64, 64), &device)?)?;
    // One train-mode pass updates BatchNorm running statistics.
    model.forward(x.as_tensor(), Mode::Train)?;
    // Gradient of class 1's logit with respect to the input, no weight gradients.
    let logits = model.forward(x.as_tensor(), Mode::InputGrad)?;
    let grads = logits.narrow(1, 1, 1)?.sum_all()?.backward()?;
    let g = grads.get(x.as_tensor()).expect("input gradient");
    let norm = g
        .sqr()?
        .sum_all()?
        .sqrt()?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    println!(
        "logits {:?}, input-gradient L2 norm {norm:.4}",
        logits.to_vec2::<f32>()?
    );
    let path = save_checkpoint(
        &model,
        &ModelConfig {
            image_size: 64,
            ..Default::default()
        },
        std::path::Path::new(&out),
        "model.safetensors",
    )?;
    println!("saved {}", path.display());
    Ok(())
}
