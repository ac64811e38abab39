//! Parity with torchvision's ResNet-18 (fixtures from tests/fixtures/make_fixtures.py):
//! eval and train logits, input gradients, running statistics, and Pillow's resize.

mod common;
use candle_core::{Device, Tensor, Var};
use common::{fixture, formula_model, rel_err};
use robustlens::model::Mode;
use std::collections::HashMap;

fn fixtures() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("resnet18_parity.safetensors"), &Device::Cpu).unwrap()
}

const TOL: f32 = 1e-4;

#[test]
fn eval_logits_and_input_gradient_match_torchvision() {
    let fx = fixtures();
    let m = formula_model(3);
    for size in [32, 64] {
        let x = &fx[&format!("input_{size}")];
        let logits = m.forward(x, Mode::Eval).unwrap();
        let e = rel_err(&logits, &fx[&format!("logits_eval_{size}")]);
        assert!(e < TOL, "eval logits @{size}: rel err {e}");

        for mode in [Mode::Eval, Mode::InputGrad] {
            let xv = Var::from_tensor(x).unwrap();
            let logits = m.forward(xv.as_tensor(), mode).unwrap();
            let target = Tensor::new(&[0u32, 2], &Device::Cpu)
                .unwrap()
                .unsqueeze(1)
                .unwrap();
            let sel = logits.gather(&target, 1).unwrap().sum_all().unwrap();
            let g = sel.backward().unwrap();
            let grad = g.get(xv.as_tensor()).unwrap();
            let e = rel_err(grad, &fx[&format!("grad_eval_{size}")]);
            assert!(e < TOL, "input gradient @{size} ({mode:?}): rel err {e}");
        }
    }
}

#[test]
fn train_mode_logits_gradient_and_running_stats_match_torchvision() {
    let fx = fixtures();
    let m = formula_model(3);
    let xv = Var::from_tensor(&fx["input_train_64"]).unwrap();
    let logits = m.forward(xv.as_tensor(), Mode::Train).unwrap();
    let e = rel_err(&logits, &fx["logits_train_64"]);
    assert!(e < TOL, "train logits: rel err {e}");
    let g = logits
        .narrow(1, 1, 1)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let e = rel_err(g.get(xv.as_tensor()).unwrap(), &fx["grad_train_64"]);
    assert!(e < TOL, "train-mode input gradient: rel err {e}");
    // weight gradients of the same backward (the convolution and BatchNorm kernels)
    for name in [
        "conv1.weight",
        "bn1.weight",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer3.1.bn2.weight",
        "layer4.0.conv1.weight",
        "layer4.1.bn2.bias",
        "fc.weight",
    ] {
        let v = m.var(name).unwrap();
        let ours = g
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let want = &fx[&format!("wgrad_train_64.{name}")];
        let ours = ours.narrow(0, 0, want.dim(0).unwrap()).unwrap();
        let e = rel_err(&ours, want);
        assert!(e < TOL, "train-mode gradient of {name}: rel err {e}");
    }
    for name in ["bn1", "layer2.0.downsample.1", "layer4.1.bn2"] {
        for stat in ["running_mean", "running_var"] {
            let ours = m.var(&format!("{name}.{stat}")).unwrap();
            let e = rel_err(ours.as_tensor(), &fx[&format!("{stat}_after_train.{name}")]);
            assert!(e < TOL, "{name}.{stat} after one train step: rel err {e}");
        }
    }
    let sd: HashMap<String, Tensor> = m.state_dict().unwrap().into_iter().collect();
    assert_eq!(sd["bn1.num_batches_tracked"].to_scalar::<i64>().unwrap(), 1);
}

#[test]
fn a_training_step_gives_every_parameter_torchvisions_gradient() {
    // A training step's plain `loss.backward()` (candle's backward pass; the vendored
    // candle-core stores the first gradient to reach a tensor as it is): every parameter gets
    // a finite gradient, and a convolution's weight gets torchvision's.
    let fx = fixtures();
    let m = formula_model(3);
    let x = &fx["input_train_64"];
    let y = Tensor::new(&[0u32, 2, 1, 2], &Device::Cpu).unwrap();
    let logits = m.forward(x, Mode::Train).unwrap();
    let grads = candle_nn::loss::cross_entropy(&logits, &y)
        .unwrap()
        .backward()
        .unwrap();
    let vars = m.trainable_vars(robustlens::model::GroupSet::all());
    assert_eq!(vars.len(), 62);
    for (name, v) in &vars {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(g.dims(), v.dims(), "gradient of {name}");
        let values: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "gradient of {name}");
        assert!(
            values.iter().any(|v| *v != 0.0),
            "gradient of {name} all zero"
        );
    }
    let v = m.var("layer4.0.conv1.weight").unwrap();
    let g = logits_class_1_backward(&m, x);
    let want = &fx["wgrad_train_64.layer4.0.conv1.weight"];
    let ours = g.get(v.as_tensor()).unwrap();
    let e = rel_err(&ours.narrow(0, 0, want.dim(0).unwrap()).unwrap(), want);
    assert!(e < TOL, "train-mode weight gradient: rel err {e}");
}

/// The gradients of the class-1 logits' sum in train mode (the fixtures' objective).
fn logits_class_1_backward(
    m: &robustlens::model::ResNet18,
    x: &Tensor,
) -> candle_core::backprop::GradStore {
    let logits = m.forward(x, Mode::Train).unwrap();
    let sel = logits.narrow(1, 1, 1).unwrap().sum_all().unwrap();
    sel.backward().unwrap()
}

#[test]
fn full_model_input_gradient_matches_finite_differences() {
    let fx = fixtures();
    let m = formula_model(3);
    let x = fx["input_32"]
        .narrow(0, 0, 1)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    let f = |x: &Tensor| -> f64 {
        let l = m.forward(x, Mode::Eval).unwrap();
        l.narrow(1, 1, 1)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    let xv = Var::from_tensor(&x).unwrap();
    let l = m.forward(xv.as_tensor(), Mode::InputGrad).unwrap();
    let g = l
        .narrow(1, 1, 1)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let grad: Vec<f32> = g
        .get(xv.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let base: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    // Check the 12 largest-gradient coordinates plus a spread of others.
    let mut idx: Vec<usize> = (0..grad.len()).collect();
    idx.sort_by(|a, b| grad[*b].abs().partial_cmp(&grad[*a].abs()).unwrap());
    let mut check: Vec<usize> = idx[..12].to_vec();
    check.extend((0..grad.len()).step_by(257));
    let gmax = grad.iter().fold(0f32, |a, b| a.max(b.abs())) as f64;
    let h = 1e-3f32;
    for &i in &check {
        let mut p = base.clone();
        p[i] += h;
        let mut q = base.clone();
        q[i] -= h;
        let tp = Tensor::from_vec(p, x.shape(), &Device::Cpu).unwrap();
        let tq = Tensor::from_vec(q, x.shape(), &Device::Cpu).unwrap();
        let fd = (f(&tp) - f(&tq)) / (2.0 * h as f64);
        assert!(
            (fd - grad[i] as f64).abs() < 2e-2 * gmax,
            "coordinate {i}: finite difference {fd}, backward {}",
            grad[i]
        );
    }
}

#[test]
fn resize_matches_pillow_bit_for_bit() {
    let img = robustlens::data::load_image(&fixture("resize_src.png")).unwrap();
    for size in [32usize, 48, 100] {
        let ours = robustlens::data::transforms::crop_resize(&img, size).unwrap();
        let want = std::fs::read(fixture(&format!("resize_{size}.bin"))).unwrap();
        assert_eq!(ours.as_raw().len(), want.len());
        let diff = ours
            .as_raw()
            .iter()
            .zip(&want)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(diff, 0, "size {size}: {diff} bytes differ from Pillow");
    }
}
