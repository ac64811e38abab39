//! Training, fine-tuning, attacking and explaining the architectures beside ResNet-18 through
//! the command line: ConvNeXt-atto and ViT-tiny train standard and robust, fine-tuning keeps
//! the frozen groups bit-identical, EfficientNet-B0 trains its BatchNorm, and the bad-input
//! errors (weights of another architecture, an image size the architecture cannot take) come
//! before any work.

mod common;

use candle_core::{Device, Tensor};
use common::run_cli as run;
use robustlens::model::Arch;
use std::collections::HashMap;
use std::path::Path;

const TINY: [&str; 16] = [
    "--weights",
    "none",
    "--image-size",
    "32",
    "--train-per-class",
    "6",
    "--val-per-class",
    "2",
    "--test-per-class",
    "3",
    "--batch-size",
    "6",
    "--head-epochs",
    "0",
    "--epochs",
    "1",
];

fn tensors(p: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn train(cmd: &str, arch: &str, out: &Path, extra: &[&str]) {
    let mut args = vec![cmd, "--arch", arch, "--out", out.to_str().unwrap()];
    args.extend(TINY);
    args.extend(extra);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{cmd} {arch}: {err}");
}

/// Fine-tunes groups 4-5 of `parent` and checks which tensors moved.
fn finetune_keeps_frozen_groups(arch: Arch, parent: &Path, child: &Path) {
    let (code, _, err) = run(&[
        "finetune",
        "--from",
        parent.to_str().unwrap(),
        "--groups",
        "4-5",
        "--epochs",
        "1",
        "--lr",
        "1e-3",
        "--out",
        child.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "finetune {arch}: {err}");
    let a = tensors(&parent.join("model.safetensors"));
    let b = tensors(&child.join("model.safetensors"));
    assert_eq!(a.len(), b.len());
    let mut moved = [false; 5];
    for (name, t) in &a {
        let g = arch.group_of(name) as usize;
        if same(t, &b[name]) {
            continue;
        }
        assert!(g >= 4, "{arch}: `{name}` (group {g}) is frozen but changed");
        moved[g - 1] = true;
    }
    assert!(moved[3] && moved[4], "{arch}: groups 4 and 5 did not train");
    let cfg = std::fs::read_to_string(child.join("config.json")).unwrap();
    assert!(cfg.contains(&format!("\"arch\": \"{arch}\"")), "{cfg}");
}

#[test]
fn convnext_trains_finetunes_and_explains() {
    let d = tempfile::tempdir().unwrap();
    let (p, c) = (d.path().join("std"), d.path().join("ft"));
    train("train-standard", "convnext_atto", &p, &[]);
    finetune_keeps_frozen_groups(Arch::ConvnextAtto, &p, &c);
    // Saliency with every method through the trait, Grad-CAM on stages.3.
    let out = d.path().join("sal");
    let (code, _, err) = run(&[
        "saliency",
        "--run",
        c.to_str().unwrap(),
        "--data",
        "synthetic",
        "--count",
        "2",
        "--method",
        "gradient,input-x-gradient,ig,smoothgrad,occlusion,gradcam",
        "--window",
        "8",
        "--stride",
        "8",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    // The info command names the layout and the groups.
    let (code, stdout, err) = run(&["info", "--weights", c.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("fits a timm convnext_atto with 3 classes"),
        "{stdout}"
    );
    assert!(stdout.contains("2 = stages.1"), "{stdout}");
    // Weights of one architecture under another: both are named, nothing is written.
    let w = c.join("model.safetensors");
    let (code, _, err) = run(&[
        "predict",
        "--weights",
        w.to_str().unwrap(),
        "--arch",
        "vit_tiny_patch16_224",
        "--image-size",
        "32",
        common::fixture("resize_src.png").to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("holds convnext_atto weights")
            && err.contains("not vit_tiny_patch16_224")
            && err.contains("--arch convnext_atto"),
        "{err}"
    );
    // Without --arch the file's architecture is recognised.
    let (code, stdout, err) = run(&[
        "predict",
        "--weights",
        w.to_str().unwrap(),
        "--image-size",
        "32",
        "--json",
        common::fixture("resize_src.png").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("\"probs\""), "{stdout}");
}

#[test]
fn vit_trains_robustly_and_finetunes() {
    let d = tempfile::tempdir().unwrap();
    let (p, c) = (d.path().join("rob"), d.path().join("ft"));
    train(
        "train-robust",
        "vit_tiny_patch16_224",
        &p,
        &["--eps", "0.5", "--attack-steps", "2"],
    );
    finetune_keeps_frozen_groups(Arch::VitTiny, &p, &c);
    // PGD and robust accuracy on the ViT.
    let (code, stdout, err) = run(&[
        "evaluate",
        "--run",
        c.to_str().unwrap(),
        "--attack",
        "pgd",
        "--eps",
        "0.5",
        "--steps",
        "3",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.to_lowercase().contains("robust"), "{stdout}");
    // --arch on a run folder is a check that names both architectures.
    let (code, _, err) = run(&[
        "evaluate",
        "--run",
        c.to_str().unwrap(),
        "--arch",
        "convnext_atto",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("holds a vit_tiny_patch16_224 model") && err.contains("--arch convnext_atto"),
        "{err}"
    );
}

#[test]
fn efficientnet_trains_its_batch_norm() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("eff");
    train("train-standard", "efficientnet_b0", &p, &[]);
    let t = tensors(&p.join("model.safetensors"));
    let n: i64 = t["features.8.1.num_batches_tracked"].to_scalar().unwrap();
    assert!(n >= 1, "BatchNorm statistics did not update");
    let rv: Vec<f32> = t["features.8.1.running_var"].to_vec1().unwrap();
    assert!(rv.iter().any(|v| (v - 1.0).abs() > 1e-4));
}

#[test]
fn bad_sizes_and_missing_weights_fail_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("v40");
    let mut args = vec![
        "train-standard",
        "--arch",
        "vit_tiny_patch16_224",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(TINY);
    let i = args.iter().position(|a| *a == "32").unwrap();
    args[i] = "40";
    let (code, _, err) = run(&args);
    assert_ne!(code, 0);
    assert!(
        err.contains("vit_tiny_patch16_224 cannot take 40 px images")
            && err.contains("multiple of 16"),
        "{err}"
    );
    assert!(!out.exists(), "a failed command left {}", out.display());
    let (code, _, err) = run(&[
        "train-standard",
        "--arch",
        "efficientnet_b0",
        "--preset",
        "paper",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--weights FILE"), "{err}");
    assert!(!out.exists());
    let (code, _, err) = run(&[
        "bench",
        "--arch",
        "convnext_atto",
        "--sizes",
        "48",
        "--what",
        "eval",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("multiple of 32"), "{err}");
}
