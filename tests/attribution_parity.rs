//! Parity of the attribution methods with captum (fixtures from
//! tests/fixtures/make_captum_fixtures.py), plus IG completeness and SmoothGrad properties.

mod common;
use candle_core::{Device, Tensor};
use common::{fixture, formula_model, rel_err};
use robustlens::attribution::*;
use std::collections::HashMap;

fn fx() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("captum_parity.safetensors"), &Device::Cpu).unwrap()
}

const TOL: f32 = 1e-4;
const T: [usize; 2] = [0, 2];

fn check(name: &str, got: &Tensor, want: &Tensor) {
    let e = rel_err(got, want);
    eprintln!("{name}: rel err {e:.2e}");
    assert!(e < TOL, "{name}: relative error {e}");
}

#[test]
fn gradient_and_input_x_gradient_match_captum() {
    let f = fx();
    let m = formula_model(3);
    let x = &f["input_32"];
    check(
        "saliency",
        &Gradient { batch: 1 }.attribute(&m, x, &T).unwrap(),
        &f["saliency"],
    );
    check(
        "input_x_gradient",
        &InputXGradient { batch: 2 }.attribute(&m, x, &T).unwrap(),
        &f["input_x_gradient"],
    );
}

#[test]
fn integrated_gradients_match_captum() {
    let f = fx();
    let m = formula_model(3);
    let x = &f["input_32"];
    let ig = |steps, rule, baseline, ibs| IntegratedGradients {
        steps,
        rule,
        baseline,
        internal_batch_size: ibs,
        seed: 0,
    };
    let (a, d) = ig(16, IgRule::GaussLegendre, Baseline::Black, 16)
        .attribute_with_delta(&m, x, &T)
        .unwrap();
    check("ig black gausslegendre 16", &a, &f["ig_black_gl16"]);
    let want_d: Vec<f32> = f["ig_black_gl16_delta"].to_vec1().unwrap();
    for (a, b) in d.iter().zip(&want_d) {
        assert!((a - b).abs() < 1e-3, "delta {a} vs captum {b}");
    }
    let (a, _) = ig(20, IgRule::RiemannTrapezoid, Baseline::Black, 7)
        .attribute_with_delta(&m, x, &T)
        .unwrap();
    check("ig black trapezoid 20", &a, &f["ig_black_trap20"]);
    let base = Baseline::Tensor(f["baseline_32"].clone());
    check(
        "ig baseline gl16",
        &ig(16, IgRule::GaussLegendre, base.clone(), 32)
            .attribute(&m, x, &T)
            .unwrap(),
        &f["ig_base_gl16"],
    );
    check(
        "ig baseline gl50",
        &ig(50, IgRule::GaussLegendre, base.clone(), 16)
            .attribute(&m, x, &T)
            .unwrap(),
        &f["ig_base_gl50"],
    );
    check(
        "ig baseline trap16",
        &ig(16, IgRule::RiemannTrapezoid, base.clone(), 5)
            .attribute(&m, x, &T)
            .unwrap(),
        &f["ig_base_trap16"],
    );
    check(
        "ig baseline left 10",
        &ig(10, IgRule::RiemannLeft, base, 8)
            .attribute(&m, x, &T)
            .unwrap(),
        &f["ig_base_left10"],
    );
    check(
        "ig middle 10",
        &ig(10, IgRule::RiemannMiddle, Baseline::Black, 8)
            .attribute(&m, x, &T)
            .unwrap(),
        &f["ig_black_middle10"],
    );
}

#[test]
fn ig_completeness_improves_with_steps() {
    let f = fx();
    let m = formula_model(3);
    let x = f["input_32"].narrow(0, 0, 1).unwrap();
    let mut deltas = Vec::new();
    for steps in [4usize, 16, 64, 256] {
        let ig = IntegratedGradients {
            steps,
            rule: IgRule::RiemannMiddle,
            baseline: Baseline::Black,
            internal_batch_size: 32,
            seed: 0,
        };
        let (_, d) = ig.attribute_with_delta(&m, &x, &[1]).unwrap();
        eprintln!("IG completeness: {steps} steps, |delta| {:.4}", d[0].abs());
        deltas.push(d[0].abs());
    }
    // A ReLU network's path integral has kinks, so the error is not monotone at few steps
    // (4 steps can land lucky); with many steps it falls and stays small.
    assert!(deltas[2] < deltas[1] && deltas[3] < deltas[1], "{deltas:?}");
    let last = deltas[3];
    let fx_minus_fb = {
        let l = robustlens::attribution::target_logits(&m, &x, &[1], 1).unwrap()[0];
        let b = robustlens::attribution::target_logits(&m, &x.zeros_like().unwrap(), &[1], 1)
            .unwrap()[0];
        (l - b).abs()
    };
    assert!(
        last < 0.05 * fx_minus_fb.max(1.0),
        "IG with 256 steps: |delta| {last} vs |f(x)-f(x')| {fx_minus_fb}"
    );
}

#[test]
fn occlusion_matches_captum() {
    let f = fx();
    let m = formula_model(3);
    let occ = Occlusion {
        window: 12,
        stride: 8,
        baseline: 0.0,
        perturbations_per_eval: 5,
    };
    check(
        "occlusion",
        &occ.attribute(&m, &f["input_32"], &T).unwrap(),
        &f["occlusion_w12_s8"],
    );
}

#[test]
fn gradcam_matches_captum() {
    let f = fx();
    let m = formula_model(3);
    let x = &f["input_64"];
    for name in ["layer4", "layer3"] {
        let g = GradCam {
            layer: Some(name.to_string()),
        };
        check(
            &format!("gradcam {name} raw"),
            &g.layer_map(&m, x, &T).unwrap(),
            &f[&format!("gradcam_{name}_raw")],
        );
        let up = g.attribute(&m, x, &T).unwrap();
        assert_eq!(up.dims(), &[2, 1, 64, 64]);
        check(
            &format!("gradcam {name}"),
            &up,
            &f[&format!("gradcam_{name}")],
        );
    }
}

#[test]
fn smoothgrad_with_zero_noise_equals_base_and_variance_falls() {
    let f = fx();
    let m = formula_model(3);
    let x = f["input_32"].narrow(0, 0, 1).unwrap();
    let nt = |samples, noise, kind, seed| NoiseTunnel {
        base: Box::new(Gradient { batch: 8 }),
        kind,
        samples,
        noise,
        seed,
    };
    let plain = Gradient { batch: 8 }.attribute(&m, &x, &[0]).unwrap();
    let sg0 = nt(4, 0.0, SmoothKind::SmoothGrad, 0)
        .attribute(&m, &x, &[0])
        .unwrap();
    assert!(rel_err(&sg0, &plain) < 1e-5);
    let sq0 = nt(3, 0.0, SmoothKind::SmoothGradSq, 0)
        .attribute(&m, &x, &[0])
        .unwrap();
    assert!(rel_err(&sq0, &plain.sqr().unwrap()) < 1e-5);
    let vg0 = nt(3, 0.0, SmoothKind::VarGrad, 0)
        .attribute(&m, &x, &[0])
        .unwrap();
    assert!(
        vg0.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            < 1e-6
                * plain
                    .sqr()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    .max(1e-6)
    );
    // Spread between independent runs falls as samples grow.
    let spread = |samples: usize| -> f32 {
        let runs: Vec<Tensor> = (0..4)
            .map(|s| {
                nt(samples, 0.2, SmoothKind::SmoothGrad, s as u64 + 10)
                    .attribute(&m, &x, &[0])
                    .unwrap()
            })
            .collect();
        let mean = (Tensor::stack(&runs, 0).unwrap().mean(0)).unwrap();
        runs.iter()
            .map(|r| {
                (r - &mean)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .mean_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .sum::<f32>()
            / 4.0
    };
    let (v2, v16) = (spread(2), spread(16));
    assert!(
        v16 < v2,
        "variance across runs with 16 samples {v16} not below 2 samples {v2}"
    );
    // Deterministic for a seed.
    let a = nt(3, 0.2, SmoothKind::SmoothGrad, 5)
        .attribute(&m, &x, &[0])
        .unwrap();
    let b = nt(3, 0.2, SmoothKind::SmoothGrad, 5)
        .attribute(&m, &x, &[0])
        .unwrap();
    assert_eq!(rel_err(&a, &b), 0.0);
}

#[test]
fn gradient_at_black_and_dark_images() {
    let f = fx();
    let m = formula_model(3);
    let x = &f["input_32"];
    check(
        "saliency black",
        &Gradient { batch: 2 }
            .attribute(&m, &x.zeros_like().unwrap(), &T)
            .unwrap(),
        &f["saliency_black"],
    );
    check(
        "saliency tiny",
        &Gradient { batch: 2 }
            .attribute(&m, &(x * 0.01).unwrap(), &T)
            .unwrap(),
        &f["saliency_tiny"],
    );
}

/// Gradients over several batches, Integrated Gradients, the noise tunnel (SmoothGrad) and
/// Occlusion run many passes with one model; the weights' derived forms (flipped,
/// Winograd-transformed, packed) are made once per call. Made afresh for every pass instead,
/// the attributions are the same bits.
#[test]
fn reused_derived_weights_change_no_bit() {
    let m = robustlens::model::ResNet18::new_random(3, 8, &Device::Cpu).unwrap();
    let x = Tensor::from_vec(
        robustlens::rng::SeededRng::new(2).uniform_vec(2 * 3 * 64 * 64, 0.0, 1.0),
        (2, 3, 64, 64),
        &Device::Cpu,
    )
    .unwrap();
    let methods: Vec<Box<dyn Attribution>> = vec![
        // two batches of one image: the second reuses
        Box::new(Gradient { batch: 1 }),
        Box::new(IntegratedGradients {
            steps: 5,
            rule: IgRule::GaussLegendre,
            baseline: Baseline::Black,
            internal_batch_size: 4,
            seed: 0,
        }),
        Box::new(NoiseTunnel {
            base: Box::new(Gradient { batch: 2 }),
            kind: SmoothKind::SmoothGrad,
            samples: 3,
            noise: 0.1,
            seed: 1,
        }),
        Box::new(Occlusion {
            window: 32,
            stride: 32,
            baseline: 0.0,
            perturbations_per_eval: 4,
        }),
    ];
    for method in &methods {
        let run = |reuse: bool| {
            robustlens::ops::set_weight_reuse(reuse);
            let a = method.attribute(&m, &x, &[0, 1]).unwrap();
            robustlens::ops::set_weight_reuse(true);
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let (kept, fresh) = (run(true), run(false));
        assert!(
            kept.iter()
                .zip(&fresh)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{}",
            method.name()
        );
    }
}
