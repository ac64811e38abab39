//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use robustlens::model::ResNet18;
use std::path::PathBuf;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

fn name_seed(name: &str) -> u64 {
    name.bytes()
        .enumerate()
        .map(|(i, c)| c as u64 * (i as u64 + 1))
        .sum::<u64>()
        % 1000
}

/// SplitMix64 of (j + s * golden) as a float in [0, 1), as in make_fixtures.py.
pub fn splitmix(j: u64, s: u64) -> f64 {
    let mut z = j.wrapping_add(s.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The closed-form weights of `tests/fixtures/make_fixtures.py` (same formula, same names).
pub fn formula_model(num_classes: usize) -> ResNet18 {
    let m = ResNet18::new_random(num_classes, 0, &Device::Cpu).unwrap();
    for (name, _) in m.tensor_names().to_vec() {
        let var = m.var(&name).unwrap();
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let s = name_seed(&name);
        let f: Vec<f64> = (0..n as u64)
            .map(|j| (2.0 * splitmix(j, s) - 1.0) * 3f64.sqrt())
            .collect();
        let v: Vec<f32> = f
            .iter()
            .map(|&f| {
                let v = if name.ends_with("running_var") {
                    1.0 + 0.5 * f.abs()
                } else if name.ends_with("running_mean") {
                    0.1 * f
                } else if dims.len() == 4 {
                    let fan_in = (dims[1] * dims[2] * dims[3]) as f64;
                    f * (2.0 / fan_in).sqrt()
                } else if name == "fc.weight" {
                    f * (1.0 / dims[1] as f64).sqrt()
                } else if name.ends_with("bias") {
                    0.1 * f
                } else {
                    1.0 + 0.2 * f
                };
                v as f32
            })
            .collect();
        var.set(&Tensor::from_vec(v, dims, &Device::Cpu).unwrap())
            .unwrap();
    }
    m
}

/// max |a - b|.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// max |a - b| / max |b|.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let d = max_abs_diff(a, b);
    let m = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    d / m.max(1e-12)
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_robustlens"))
}

/// Reads a float32 `.npy` file written by robustlens: (shape, values). Checks magic and dtype.
pub fn read_npy(path: &std::path::Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hl]).unwrap();
    assert!(header.contains("'descr': '<f4'"));
    let shape_s = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_s
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let data = b[10 + hl..]
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (shape, data)
}

/// The binary with a clean environment: no `ROBUSTLENS_DATA`, no fault injection, offline hub,
/// a shared image cache under the temp folder.
pub fn cli() -> std::process::Command {
    let mut c = std::process::Command::new(bin());
    c.env_remove("ROBUSTLENS_DATA")
        .env_remove("ROBUSTLENS_FAULT_INJECT")
        .env_remove("RUST_LOG")
        .env("HF_HUB_OFFLINE", "1")
        .env(
            "ROBUSTLENS_CACHE",
            std::env::temp_dir().join("rl-test-cache"),
        );
    c
}

/// Runs a prepared command: (exit code, stdout, stderr); fails the test on any panic message.
pub fn output(mut c: std::process::Command) -> (i32, String, String) {
    let o = c.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !err.contains("panicked") && !out.contains("panicked"),
        "the binary panicked: {err}"
    );
    (o.status.code().unwrap_or(-1), out, err)
}

/// Runs the binary with `args` (see [`cli`] and [`output`]).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let mut c = cli();
    c.args(args);
    output(c)
}

/// Every file in `dir/figures/` parses (SVG: a standalone document; PNG: an image of some
/// size) and `page` names it as `figures/<file>`; returns how many there are.
#[allow(dead_code)]
pub fn check_figure_files(dir: &std::path::Path, page: &str) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir.join("figures")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            page.contains(&format!("figures/{name}")),
            "the page does not name figures/{name}"
        );
        match p.extension().and_then(|x| x.to_str()) {
            Some("svg") => {
                let s = std::fs::read_to_string(&p).unwrap();
                assert!(
                    s.starts_with("<?xml") && s.trim_end().ends_with("</svg>"),
                    "{name} is not a standalone SVG"
                );
            }
            Some("png") => {
                let img = image::open(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(img.width() > 16 && img.height() > 16, "{name}");
            }
            _ => panic!("unexpected figure file {name}"),
        }
        n += 1;
    }
    n
}

/// The closed-form weights of `tests/fixtures/make_arch_fixtures.py` for any architecture.
pub fn formula_network(
    arch: robustlens::model::Arch,
    num_classes: usize,
) -> Box<dyn robustlens::model::Network> {
    let m = robustlens::model::build(arch, num_classes, 0, &Device::Cpu).unwrap();
    for (name, _) in m.tensor_names() {
        let var = m.var(&name).unwrap();
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let s = name_seed(&name);
        let v: Vec<f32> = (0..n as u64)
            .map(|j| {
                let f = (2.0 * splitmix(j, s) - 1.0) * 3f64.sqrt();
                let v = if name.ends_with("running_var") {
                    1.0 + 0.5 * f.abs()
                } else if name.ends_with("running_mean") {
                    0.1 * f
                } else if name == "pos_embed" || name == "cls_token" {
                    0.2 * f
                } else if name.ends_with("weight") && dims.len() >= 2 {
                    f / (dims[1..].iter().product::<usize>() as f64).sqrt()
                } else if name.ends_with("bias") {
                    0.1 * f
                } else {
                    1.0 + 0.2 * f
                };
                v as f32
            })
            .collect();
        var.set(&Tensor::from_vec(v, dims, &Device::Cpu).unwrap())
            .unwrap();
    }
    m
}
