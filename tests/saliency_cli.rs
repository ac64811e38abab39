//! The `saliency` command: raw NPY output equals the library's attributions on the same
//! pre-processed images, and PNG maps, overlays, masked images and the grid are written.

mod common;
use candle_core::{Device, Tensor};
use common::{bin, formula_model};
use robustlens::attribution::{Attribution, GradCam, Gradient, Occlusion};
use robustlens::model::{save_checkpoint, ModelConfig};
use std::process::Command;

/// A three-class formula model saved as `dir/model.safetensors`, and two images `im0.png`,
/// `im1.png` of size `(w, h)` whose pixel (x, y) of image k is `px(k, x, y)`.
fn model_and_images(
    dir: &std::path::Path,
    (w, h): (u32, u32),
    px: impl Fn(u32, u32, u32) -> [u8; 3],
) -> (robustlens::model::ResNet18, Vec<std::path::PathBuf>) {
    let m = formula_model(3);
    save_checkpoint(&m, &ModelConfig::default(), dir, "model.safetensors").unwrap();
    let imgs = (0..2)
        .map(|k| {
            let p = dir.join(format!("im{k}.png"));
            image::RgbImage::from_fn(w, h, |x, y| image::Rgb(px(k, x, y)))
                .save(&p)
                .unwrap();
            p
        })
        .collect();
    (m, imgs)
}

#[test]
fn raw_out_matches_library_and_pictures_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let (m, imgs) = model_and_images(dir.path(), (40, 36), |k, x, y| {
        [(x * 5 + k * 40) as u8, (y * 7) as u8, ((x * y) % 251) as u8]
    });
    let out = dir.path().join("maps");
    let raw = dir.path().join("raw.npy");
    let status = Command::new(bin())
        .args([
            "saliency",
            "--weights",
            dir.path().join("model.safetensors").to_str().unwrap(),
            "--image-size",
            "32",
            "--target",
            "1",
        ])
        .args([
            "--method",
            "gradient,occlusion,gradcam",
            "--window",
            "12",
            "--stride",
            "8",
            "--display",
            "signed",
        ])
        .arg("--image")
        .args(&imgs)
        .args([
            "--out",
            out.to_str().unwrap(),
            "--raw-out",
            raw.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let xs: Vec<Tensor> = imgs
        .iter()
        .map(|p| robustlens::data::preprocess(p, 32, &Device::Cpu).unwrap())
        .collect();
    let x = Tensor::stack(&xs, 0).unwrap();
    let t = [1usize, 1];
    let want: [(&str, Tensor); 3] = [
        (
            "gradient",
            Gradient { batch: 4 }.attribute(&m, &x, &t).unwrap(),
        ),
        (
            "occlusion",
            Occlusion {
                window: 12,
                stride: 8,
                baseline: 0.0,
                perturbations_per_eval: 16,
            }
            .attribute(&m, &x, &t)
            .unwrap(),
        ),
        (
            "gradcam",
            GradCam {
                layer: Some("layer4".into()),
            }
            .attribute(&m, &x, &t)
            .unwrap(),
        ),
    ];
    for (name, w) in want {
        let (shape, data) = common::read_npy(&dir.path().join(format!("raw_{name}.npy")));
        assert_eq!(shape, w.dims(), "{name}");
        let got = Tensor::from_vec(data, shape, &Device::Cpu).unwrap();
        assert!(common::rel_err(&got, &w) < 1e-5, "{name}");
    }
    for f in [
        "grid.png",
        "im0_model_gradient.png",
        "im0_model_gradient_masked.png",
        "im1_model_gradcam_overlay.png",
    ] {
        let img = image::open(out.join(f)).unwrap();
        assert!(img.width() >= 32, "{f}");
    }
    // --display signed: RdBu, so a signed gradient map has reddish and bluish pixels.
    let map = image::open(out.join("im0_model_gradient.png"))
        .unwrap()
        .to_rgb8();
    let (r, b) = (
        |p: &image::Rgb<u8>| p.0[0] as i32,
        |p: &image::Rgb<u8>| p.0[2] as i32,
    );
    let red = map.pixels().filter(|p| r(p) > b(p) + 40).count();
    let blue = map.pixels().filter(|p| b(p) > r(p) + 40).count();
    assert!(red > 0 && blue > 0, "red {red}, blue {blue}");
}

#[test]
fn bad_saliency_arguments_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let m = formula_model(3);
    save_checkpoint(&m, &ModelConfig::default(), dir.path(), "model.safetensors").unwrap();
    let img = dir.path().join("a.png");
    image::RgbImage::new(32, 32).save(&img).unwrap();
    let w = dir.path().join("model.safetensors");
    let run = |extra: &[&str]| {
        let o = Command::new(bin())
            .args([
                "saliency",
                "--weights",
                w.to_str().unwrap(),
                "--image-size",
                "32",
                "--image",
                img.to_str().unwrap(),
                "--raw-out",
                dir.path().join("r.npy").to_str().unwrap(),
            ])
            .args(extra)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    for (args, needle) in [
        (vec!["--method", "lime"], "unknown method `lime`"),
        (vec!["--target", "7"], "--target 7: the model has 3 classes"),
        (
            vec!["--method", "ig", "--ig-rule", "simpson"],
            "--ig-rule simpson",
        ),
        (
            vec!["--method", "ig", "--baseline", "purple"],
            "--baseline purple",
        ),
        (
            vec!["--method", "occlusion", "--window", "64"],
            "--window 64 is larger",
        ),
        (
            vec!["--method", "gradcam", "--layer", "layer9"],
            "unknown layer `layer9`",
        ),
        (
            vec!["--method", "smoothgrad", "--samples", "0"],
            "--samples 0",
        ),
    ] {
        let (code, err) = run(&args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let file_as_dir = dir.path().join("afile");
    std::fs::write(&file_as_dir, "x").unwrap();
    let (code, err) = run(&["--out", file_as_dir.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is a file, not a folder"), "{err}");
}

#[test]
fn a_shared_scale_puts_every_map_on_one_scale() {
    let dir = tempfile::tempdir().unwrap();
    let (_, imgs) = model_and_images(dir.path(), (32, 32), |k, x, y| {
        let v = if k == 0 { x * 7 } else { (x * y) % 97 };
        [v as u8, (y * 5) as u8, (k * 90) as u8]
    });
    // the brightest pixel of each image's map, on each scale
    let brightest = |shared: bool| -> Vec<u8> {
        let out = dir.path().join(if shared { "shared" } else { "own" });
        let mut c = Command::new(bin());
        c.args(["saliency", "--weights"])
            .arg(dir.path().join("model.safetensors"))
            .args([
                "--image-size",
                "32",
                "--target",
                "1",
                "--method",
                "gradient",
            ])
            .args(["--display", "paper", "--cap", "max", "--image"])
            .args(&imgs)
            .arg("--out")
            .arg(&out)
            .arg("--raw-out")
            .arg(out.join("raw.npy"));
        if shared {
            c.arg("--shared-scale");
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (0..2)
            .map(|k| {
                let img = image::open(out.join(format!("im{k}_model_gradient.png")))
                    .unwrap()
                    .to_rgb8();
                img.pixels().map(|p| p.0[0]).max().unwrap()
            })
            .collect()
    };
    // each map on its own scale reaches full intensity
    assert_eq!(brightest(false), vec![255, 255]);
    // on one scale only the map with the largest value does; the other in proportion
    let shared = brightest(true);
    let (shape, raw) = common::read_npy(&dir.path().join("shared/raw.npy"));
    let plane = shape[2] * shape[3];
    let peak = |k: usize| -> f32 {
        (0..plane)
            .map(|p| {
                (0..3)
                    .map(|c| raw[(k * 3 + c) * plane + p].abs())
                    .sum::<f32>()
            })
            .fold(0.0, f32::max)
    };
    let (p0, p1) = (peak(0), peak(1));
    let top = p0.max(p1);
    for (k, p) in [p0, p1].into_iter().enumerate() {
        let want = (255.0 * p / top).round() as i32;
        assert!(
            (shared[k] as i32 - want).abs() <= 1,
            "image {k}: {} vs {want} ({p0} and {p1})",
            shared[k]
        );
    }
    assert!(
        shared.contains(&255) && shared.iter().any(|&v| v < 250),
        "{shared:?}"
    );
}
