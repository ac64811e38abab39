//! PGD: parity with a PyTorch PGD written to robustness's semantics (fixtures from
//! tests/fixtures/make_pgd_fixtures.py), and properties over random inputs and models.

mod common;
use candle_core::{Device, Tensor};
use common::{fixture, formula_model, max_abs_diff, rel_err};
use robustlens::adversarial::pgd::cross_entropy_per_example;
use robustlens::adversarial::{Classifier, Norm, Pgd};
use robustlens::model::ResNet18;
use robustlens::rng::SeededRng;

fn pgd(norm: Norm, eps: f32, step_size: f32, steps: usize, use_best: bool) -> Pgd {
    Pgd {
        norm,
        eps,
        steps,
        step_size,
        random_start: false,
        use_best,
        restarts: 0,
    }
}

#[test]
fn matches_robustness_semantics() {
    let f =
        candle_core::safetensors::load(fixture("pgd_parity.safetensors"), &Device::Cpu).unwrap();
    let m = formula_model(3);
    let x = &f["input"];
    let mut rng = SeededRng::new(0);
    let eval_steps = f["l2_eval_attack_steps"].to_vec1::<f32>().unwrap()[0] as usize;
    let cases: [(&str, Pgd, Option<[usize; 2]>); 5] = [
        ("l2_best", pgd(Norm::L2, 0.5, 0.2, 5, true), None),
        ("l2_last", pgd(Norm::L2, 0.5, 0.2, 5, false), None),
        (
            "l2_targeted",
            pgd(Norm::L2, 1.0, 0.3, 6, true),
            Some([1, 1]),
        ),
        (
            "linf_best",
            pgd(Norm::Linf, 4.0 / 255.0, 1.0 / 255.0, 5, true),
            None,
        ),
        (
            "l2_eval_attack",
            pgd(
                Norm::L2,
                3.0,
                2.5 * 3.0 / eval_steps as f32,
                eval_steps,
                true,
            ),
            None,
        ),
    ];
    for (name, attack, target) in cases {
        let r = attack
            .attack(
                &m,
                x,
                &[0, 2],
                target.as_ref().map(|t| t.as_slice()),
                &mut rng,
            )
            .unwrap();
        let d = max_abs_diff(&r.images, &f[name]);
        eprintln!("{name}: max abs diff {d:.2e}");
        assert!(d < 1e-4, "{name}: adversarial images differ by {d}");
    }
}

fn random_model(seed: u64) -> ResNet18 {
    ResNet18::new_random(3, seed, &Device::Cpu).unwrap()
}

#[test]
fn stays_in_ball_and_box_and_use_best_never_lowers_loss() {
    for seed in 0..4u64 {
        let m = random_model(seed);
        let mut rng = SeededRng::new(seed);
        let x = Tensor::from_vec(
            rng.uniform_vec(3 * 3 * 32 * 32, 0.0, 1.0),
            (3, 3, 32, 32),
            &Device::Cpu,
        )
        .unwrap();
        let labels = [0usize, 1, 2];
        let clean: Vec<f32> = cross_entropy_per_example(&m.logits(&x).unwrap(), &labels)
            .unwrap()
            .to_vec1()
            .unwrap();
        for (norm, eps) in [
            (Norm::L2, 0.3 + seed as f32 * 0.5),
            (Norm::Linf, 2.0 / 255.0 * (seed + 1) as f32),
        ] {
            let attack = Pgd {
                norm,
                eps,
                steps: 4,
                step_size: eps / 3.0,
                random_start: true,
                use_best: true,
                restarts: 1 + (seed as usize % 2),
            };
            let r = attack.attack(&m, &x, &labels, None, &mut rng).unwrap();
            let lo = r.images.min_all().unwrap().to_scalar::<f32>().unwrap();
            let hi = r.images.max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(lo >= 0.0 && hi <= 1.0);
            let d = (&r.images - &x).unwrap().flatten_from(1).unwrap();
            let dist: Vec<f32> = match norm {
                Norm::L2 => d
                    .sqr()
                    .unwrap()
                    .sum(1)
                    .unwrap()
                    .sqrt()
                    .unwrap()
                    .to_vec1()
                    .unwrap(),
                Norm::Linf => d.abs().unwrap().max(1).unwrap().to_vec1().unwrap(),
            };
            for v in dist {
                assert!(
                    v <= eps * (1.0 + 1e-5),
                    "{norm:?}: distance {v} > eps {eps}"
                );
            }
            let adv: Vec<f32> = cross_entropy_per_example(&m.logits(&r.images).unwrap(), &labels)
                .unwrap()
                .to_vec1()
                .unwrap();
            if attack.restarts <= 1 {
                for i in 0..3 {
                    assert!(
                        adv[i] + 1e-5 >= clean[i],
                        "{norm:?}: adversarial loss {} < clean {}",
                        adv[i],
                        clean[i]
                    );
                }
            }
        }
    }
}

#[test]
fn bad_settings_are_named() {
    let m = random_model(0);
    let x = Tensor::zeros((1, 3, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    let mut rng = SeededRng::new(0);
    for (p, needle) in [
        (
            Pgd {
                eps: 0.0,
                ..Pgd::paper_train(1.0)
            },
            "eps 0",
        ),
        (
            Pgd {
                eps: f32::NAN,
                ..Pgd::paper_train(1.0)
            },
            "eps NaN",
        ),
        (
            Pgd {
                steps: 0,
                ..Pgd::paper_train(1.0)
            },
            "steps 0",
        ),
        (
            Pgd {
                step_size: -1.0,
                ..Pgd::paper_train(1.0)
            },
            "step-size -1",
        ),
    ] {
        let e = p
            .attack(&m, &x, &[0], None, &mut rng)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(needle), "{e}");
    }
    let p = Pgd::paper_train(2.0);
    assert_eq!((p.steps, p.step_size, p.random_start), (7, 0.4, true));
}

#[test]
fn attack_command_raw_out_equals_library() {
    use robustlens::model::{save_checkpoint, ModelConfig};
    let dir = tempfile::tempdir().unwrap();
    let m = formula_model(3);
    save_checkpoint(&m, &ModelConfig::default(), dir.path(), "model.safetensors").unwrap();
    let img = dir.path().join("a.png");
    image::RgbImage::from_fn(40, 40, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 6) as u8, ((x + y) * 3) as u8])
    })
    .save(&img)
    .unwrap();
    let raw = dir.path().join("adv.npy");
    let o = std::process::Command::new(common::bin())
        .args([
            "attack",
            "--run",
            dir.path().to_str().unwrap(),
            "--image",
            img.to_str().unwrap(),
            "--image-size",
            "32",
        ])
        .args([
            "--eps",
            "0.5",
            "--steps",
            "4",
            "--step-size",
            "0.2",
            "--no-random-start",
            "--label",
            "1",
            "--raw-out",
            raw.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (shape, got) = common::read_npy(&raw);
    assert_eq!(shape, vec![1, 3, 32, 32]);
    let x = robustlens::data::preprocess(&img, 32, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let want = pgd(Norm::L2, 0.5, 0.2, 4, true)
        .attack(&m, &x, &[1], None, &mut SeededRng::new(0))
        .unwrap()
        .images;
    let got = Tensor::from_vec(got, (1, 3, 32, 32), &Device::Cpu).unwrap();
    assert!(rel_err(&got, &want) < 1e-6);
}

#[test]
fn attack_images_equals_attack_without_the_final_forward() {
    let m = random_model(5);
    let mut rng = SeededRng::new(9);
    let x = Tensor::from_vec(
        rng.uniform_vec(2 * 3 * 32 * 32, 0.0, 1.0),
        (2, 3, 32, 32),
        &Device::Cpu,
    )
    .unwrap();
    for (use_best, restarts) in [(false, 1), (true, 1), (false, 2)] {
        let attack = Pgd {
            norm: Norm::L2,
            eps: 0.5,
            steps: 3,
            step_size: 0.2,
            random_start: true,
            use_best,
            restarts,
        };
        let full = attack
            .attack(&m, &x, &[0, 2], None, &mut SeededRng::new(4))
            .unwrap();
        assert_eq!(full.losses.len(), 2);
        let images = attack
            .attack_images(&m, &x, &[0, 2], None, &mut SeededRng::new(4))
            .unwrap();
        assert_eq!(
            max_abs_diff(&full.images, &images),
            0.0,
            "use_best {use_best}, restarts {restarts}"
        );
    }
    let err = pgd(Norm::L2, 0.5, 0.2, 3, false)
        .attack_images(&m, &x, &[0], None, &mut SeededRng::new(0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("1 labels for 2 images"), "{err}");
}

#[test]
fn reused_derived_weights_change_no_bit_and_never_outlive_the_attack() {
    // 64 px: the stem's direct kernel, Winograd's layers 1 and 2 and the flipped kernels of
    // every input gradient all derive weights
    let m = random_model(6);
    let mut rng = SeededRng::new(3);
    let x = Tensor::from_vec(
        rng.uniform_vec(2 * 3 * 64 * 64, 0.0, 1.0),
        (2, 3, 64, 64),
        &Device::Cpu,
    )
    .unwrap();
    let attack = Pgd {
        norm: Norm::Linf,
        eps: 8.0 / 255.0,
        steps: 3,
        step_size: 2.0 / 255.0,
        random_start: true,
        use_best: true,
        restarts: 1,
    };
    let run = |reuse: bool| {
        robustlens::ops::set_weight_reuse(reuse);
        let adv = attack
            .attack(&m, &x, &[0, 2], None, &mut SeededRng::new(4))
            .unwrap();
        robustlens::ops::set_weight_reuse(true);
        adv
    };
    let (kept, fresh) = (run(true), run(false));
    assert_eq!(max_abs_diff(&kept.images, &fresh.images), 0.0);
    assert_eq!(kept.losses, fresh.losses);
    // weights changed between two attacks (as a training step does): the second attack sees
    // them, nothing derived from the old ones is left over
    let (name, w) = m
        .trainable_vars(robustlens::model::GroupSet::all())
        .into_iter()
        .find(|(n, _)| n.contains("layer1") && n.contains("conv"))
        .unwrap();
    w.set(&(w.as_tensor() * 1.5).unwrap()).unwrap();
    let (kept2, fresh2) = (run(true), run(false));
    assert_eq!(max_abs_diff(&kept2.images, &fresh2.images), 0.0, "{name}");
    assert_ne!(kept2.losses, kept.losses, "{name}: the change must matter");
}
