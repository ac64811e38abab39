//! Drives the real binary: predict, info, weight-loading errors, devices.

mod common;
use candle_core::{Device, Tensor};
use common::{bin, fixture, formula_model, max_abs_diff, rel_err};
use robustlens::model::{save_checkpoint, Mode, ModelConfig};
use std::path::Path;
use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env_remove("RUST_LOG")
        .env("HF_HUB_OFFLINE", "1")
        .env(
            "ROBUSTLENS_CACHE",
            std::env::temp_dir().join("robustlens-test-empty-cache"),
        )
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn write_png(path: &Path, w: u32, h: u32, seed: u32) {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let v = (x * 7 + y * 13 + seed * 31) % 256;
        image::Rgb([v as u8, ((x * y + seed) % 256) as u8, (255 - v) as u8])
    });
    img.save(path).unwrap();
}

fn saved_model(dir: &Path) -> std::path::PathBuf {
    let m = formula_model(3);
    save_checkpoint(
        &m,
        &ModelConfig {
            image_size: 32,
            ..Default::default()
        },
        dir,
        "model.safetensors",
    )
    .unwrap()
}

#[test]
fn predict_json_matches_library_forward() {
    let dir = tempfile::tempdir().unwrap();
    let weights = saved_model(dir.path());
    let a = dir.path().join("a.png");
    let b = dir.path().join("b.png");
    write_png(&a, 32, 32, 1);
    write_png(&b, 48, 40, 2); // centre-cropped to 40x40 then resized to 32
    let (code, out, err) = run(&[
        "predict",
        "--weights",
        weights.to_str().unwrap(),
        "--image-size",
        "32",
        "--json",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let m = formula_model(3);
    for (line, p) in lines.iter().zip([&a, &b]) {
        assert_eq!(line["image"].as_str().unwrap(), p.to_str().unwrap());
        let x = robustlens::data::preprocess(p, 32, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let want = m.forward(&x, Mode::Eval).unwrap().squeeze(0).unwrap();
        let got: Vec<f32> = line["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = Tensor::new(got.as_slice(), &Device::Cpu).unwrap();
        assert!(rel_err(&got, &want) < 1e-5);
        let probs: Vec<f64> = line["probs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-5);
        let class = line["class"].as_u64().unwrap() as usize;
        let best = probs
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.partial_cmp(y.1).unwrap())
            .unwrap()
            .0;
        assert_eq!(class, best);
    }
    // A run folder works too, and plain output names the class.
    let (code, out, _) = run(&[
        "predict",
        "--weights",
        dir.path().to_str().unwrap(),
        "--image-size",
        "32",
        a.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("nv") || out.contains("mel") || out.contains("bkl"),
        "{out}"
    );
}

#[test]
fn checkpoint_round_trip_gives_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    let m = formula_model(3);
    let x = Tensor::rand(0f32, 1f32, (2, 3, 32, 32), &Device::Cpu).unwrap();
    // A train step changes running stats and num_batches_tracked: both must survive.
    m.forward(&x, Mode::Train).unwrap();
    let before = m.forward(&x, Mode::Eval).unwrap();
    save_checkpoint(&m, &ModelConfig::default(), dir.path(), "model.safetensors").unwrap();
    let (m2, cfg) = robustlens::model::load_checkpoint(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(cfg.class_names, vec!["nv", "mel", "bkl"]);
    let after = m2.forward_mode(&x, Mode::Eval).unwrap();
    assert_eq!(max_abs_diff(&before, &after), 0.0);
    let sd: std::collections::HashMap<_, _> = m2.state_dict().unwrap().into_iter().collect();
    assert_eq!(
        sd["layer3.1.bn2.num_batches_tracked"]
            .to_scalar::<i64>()
            .unwrap(),
        1
    );
    // No temp files are left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
}

#[test]
fn new_head_keeps_backbone() {
    let dir = tempfile::tempdir().unwrap();
    let weights = saved_model(dir.path());
    let (m, report) =
        robustlens::model::load_weights(None, &weights, Some(5), 0, &Device::Cpu).unwrap();
    assert_eq!(report.head_replaced_from, Some(3));
    assert_eq!(m.num_classes(), 5);
    let orig = formula_model(3);
    let a = orig.var("layer4.1.conv2.weight").unwrap();
    let b = m.var("layer4.1.conv2.weight").unwrap();
    assert_eq!(rel_err(a.as_tensor(), b.as_tensor()), 0.0);
    assert_eq!(
        m.var("fc.bias").unwrap().to_vec1::<f32>().unwrap(),
        vec![0.0; 5]
    );
    // Kaiming normal, fan_out = 5: std sqrt(2/5) ~ 0.632.
    let w: Vec<f32> = m
        .var("fc.weight")
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let std = (w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32).sqrt();
    assert!((std - (2.0f32 / 5.0).sqrt()).abs() < 0.03, "{std}");
}

fn rewrite_safetensors(src: &Path, dst: &Path, edit: impl Fn(&mut Vec<(String, Tensor)>)) {
    let mut t: Vec<(String, Tensor)> = candle_core::safetensors::load(src, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    edit(&mut t);
    let map: std::collections::HashMap<String, Tensor> = t.into_iter().collect();
    candle_core::safetensors::save(&map, dst).unwrap();
}

#[test]
fn bad_weights_give_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = saved_model(dir.path());
    let img = dir.path().join("a.png");
    write_png(&img, 32, 32, 3);
    let predict = |w: &Path| {
        let r = run(&[
            "predict",
            "--weights",
            w.to_str().unwrap(),
            "--image-size",
            "32",
            img.to_str().unwrap(),
        ]);
        assert!(!r.2.contains("panicked"), "{}", r.2);
        r
    };

    let wrong_shape = dir.path().join("wrong_shape.safetensors");
    rewrite_safetensors(&good, &wrong_shape, |t| {
        for (n, v) in t.iter_mut() {
            if n == "layer2.0.conv1.weight" {
                *v = Tensor::zeros((128, 64, 5, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
            }
        }
    });
    let (code, _, err) = predict(&wrong_shape);
    assert_eq!(code, 1);
    assert!(
        err.contains("layer2.0.conv1.weight")
            && err.contains("[128, 64, 5, 5]")
            && err.contains("[128, 64, 3, 3]"),
        "{err}"
    );

    let missing = dir.path().join("missing.safetensors");
    rewrite_safetensors(&good, &missing, |t| {
        t.retain(|(n, _)| n != "layer3.1.bn1.running_var")
    });
    let (code, _, err) = predict(&missing);
    assert_eq!(code, 1);
    assert!(
        err.contains("`layer3.1.bn1.running_var` is missing"),
        "{err}"
    );

    let extra = dir.path().join("extra.safetensors");
    rewrite_safetensors(&good, &extra, |t| {
        t.push((
            "head.proj.weight".into(),
            Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap(),
        ))
    });
    let (_, _, err) = predict(&extra);
    assert!(
        err.contains("unexpected tensor `head.proj.weight`"),
        "{err}"
    );

    let wrong_dtype = dir.path().join("dtype.safetensors");
    rewrite_safetensors(&good, &wrong_dtype, |t| {
        for (n, v) in t.iter_mut() {
            if n == "conv1.weight" {
                *v = v.to_dtype(candle_core::DType::I64).unwrap();
            }
        }
    });
    let (_, _, err) = predict(&wrong_dtype);
    assert!(
        err.contains("conv1.weight") && err.contains("floating point"),
        "{err}"
    );

    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let (code, _, err) = predict(&truncated);
    assert_eq!(code, 1);
    assert!(
        err.contains("truncated.safetensors") && err.contains("not a valid safetensors file"),
        "{err}"
    );

    let huge_header = dir.path().join("huge_header.safetensors");
    let mut b = (u64::MAX / 2).to_le_bytes().to_vec();
    b.extend_from_slice(b"{\"a\":1}");
    std::fs::write(&huge_header, b).unwrap();
    let (_, _, err) = predict(&huge_header);
    assert!(err.contains("header claims"), "{err}");

    let text = dir.path().join("notes.safetensors");
    std::fs::write(&text, "this is not a weights file at all, just text").unwrap();
    let (code, _, err) = predict(&text);
    assert_eq!(code, 1);
    assert!(err.contains("notes.safetensors"), "{err}");

    let (code, _, err) = predict(&fixture("not_a_state_dict.pth"));
    assert_eq!(code, 1);
    assert!(
        err.contains("not a state dict") || err.contains("not a PyTorch state dict"),
        "{err}"
    );

    let (_, _, err) = predict(&fixture("partial_state_dict.pth"));
    assert!(
        err.contains("is missing") && err.contains("layer1.0.conv1.weight"),
        "{err}"
    );

    let (code, _, err) = predict(&dir.path().join("nope.safetensors"));
    assert_eq!(code, 1);
    assert!(err.contains("file not found"), "{err}");
}

#[test]
fn pth_state_dict_tensors_are_read() {
    let t = robustlens::model::read_tensors(&fixture("partial_state_dict.pth")).unwrap();
    assert_eq!(t["conv1.weight"].dims(), &[64, 3, 7, 7]);
    let m = formula_model(3);
    assert_eq!(
        rel_err(
            &t["conv1.weight"],
            m.var("conv1.weight").unwrap().as_tensor()
        ),
        0.0
    );
}

#[test]
fn hub_offline_and_devices_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.png");
    write_png(&img, 32, 32, 3);
    let (code, _, err) = run(&[
        "predict",
        "--weights",
        "hf:timm/resnet18.tv_in1k",
        img.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("--weights path/to/model.safetensors"), "{err}");
    let weights = saved_model(dir.path());
    #[cfg(not(feature = "cuda"))]
    {
        let (code, _, err) = run(&[
            "predict",
            "--weights",
            weights.to_str().unwrap(),
            "--device",
            "cuda",
            img.to_str().unwrap(),
        ]);
        assert_eq!(code, 1);
        assert!(err.contains("--features cuda"), "{err}");
    }
    let (code, _, err) = run(&[
        "predict",
        "--weights",
        weights.to_str().unwrap(),
        "--image-size",
        "0",
        img.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("--image-size 0"), "{err}");
    let (code, _, err) = run(&[
        "predict",
        "--weights",
        weights.to_str().unwrap(),
        "--image-size",
        "32",
        dir.path().join("missing.png").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("missing.png"), "{err}");
}

#[test]
fn info_lists_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let weights = saved_model(dir.path());
    let (code, out, err) = run(&["info", "--weights", weights.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("layer2.0.downsample.0.weight") && out.contains("[128, 64, 1, 1]"),
        "{out}"
    );
    assert!(out.contains("11178051 parameters"), "{out}");
    assert!(
        out.contains("fits a torchvision resnet18 with 3 classes"),
        "{out}"
    );
}

#[test]
fn bench_prints_one_json_object_per_cell() {
    let (code, out, err) = run(&[
        "bench",
        "--json",
        "--sizes",
        "32",
        "--batch-size",
        "2",
        "--iters",
        "1",
        "--warmup",
        "0",
    ]);
    assert_eq!(code, 0, "{err}");
    let cells: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let whats: Vec<&str> = cells.iter().map(|c| c["what"].as_str().unwrap()).collect();
    assert_eq!(whats, ["eval", "train", "input-grad", "pgd7", "ig"]);
    for c in &cells {
        assert_eq!(c["size"], 32);
        assert!(c["img_per_s"].as_f64().unwrap() > 0.0, "{c}");
        // the instruction sets the kernels ran, e.g. "kernels AVX-512, gemm AVX-512"
        let isa = c["isa"].as_str().unwrap();
        assert!(
            isa.starts_with("kernels ") && isa.contains(", gemm "),
            "{c}"
        );
    }
    let (code, _, err) = run(&["bench", "--what", "fly"]);
    assert_ne!(code, 0);
    assert!(err.contains("--what fly"), "{err}");
}
