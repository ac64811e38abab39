//! Parity of the architectures beside ResNet-18 with timm (ConvNeXt, ViT) and torchvision
//! (EfficientNet-B0), against `tests/fixtures/arch_parity.safetensors` (written by
//! `tests/fixtures/make_arch_fixtures.py`, float64 reference): eval logits, input gradients
//! and Grad-CAM at the default layer within 1e-4 relative, train-mode BatchNorm, and
//! state-dict names and shapes equal to the reference model's.

mod common;

use candle_core::{Device, Tensor};
use common::{fixture, formula_network, rel_err};
use robustlens::attribution::GradCam;
use robustlens::model::{Arch, Classifier, Mode};
use std::collections::HashMap;

fn fixtures() -> (HashMap<String, Tensor>, HashMap<String, String>) {
    let path = fixture("arch_parity.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap_or_default();
    let t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    (t, meta)
}

const CASES: [(&str, Arch); 6] = [
    ("convnext_atto_64", Arch::ConvnextAtto),
    ("convnext_tiny_64", Arch::ConvnextTiny),
    ("efficientnet_b0_64", Arch::EfficientnetB0),
    ("vit_tiny_patch16_224_224", Arch::VitTiny),
    ("vit_tiny_patch16_224_64", Arch::VitTiny),
    ("vit_small_patch16_224_64", Arch::VitSmall),
];

#[test]
fn logits_gradients_and_gradcam_match_timm_and_torchvision() {
    let (f, _) = fixtures();
    for (case, arch) in CASES {
        let m = formula_network(arch, 3);
        let x = &f[&format!("{case}.input")];
        let logits = m.logits(x).unwrap();
        let e = rel_err(&logits, &f[&format!("{case}.logits")]);
        assert!(e < 1e-4, "{case}: logits rel err {e}");
        let g = m.input_gradient(x, &[0, 2]).unwrap();
        let e = rel_err(&g, &f[&format!("{case}.grad")]);
        assert!(e < 1e-4, "{case}: input gradient rel err {e}");
        let cam = GradCam::default().layer_map(&m, x, &[0, 2]).unwrap();
        let want = &f[&format!("{case}.gradcam")];
        let e = rel_err(&cam, want);
        assert!(e < 1e-4, "{case}: Grad-CAM rel err {e} ({:?})", cam.dims());
        // Eval mode with tracked parameters gives the same logits (train = eval without BN).
        let l2 = m.forward_mode(x, Mode::Eval).unwrap();
        assert!(
            rel_err(&l2, &logits) < 1e-6,
            "{case}: Eval differs from InputGrad"
        );
    }
}

#[test]
fn state_dicts_have_the_reference_names_and_shapes() {
    let (_, meta) = fixtures();
    for arch in [
        Arch::ConvnextAtto,
        Arch::ConvnextTiny,
        Arch::EfficientnetB0,
        Arch::VitTiny,
        Arch::VitSmall,
    ] {
        let want: HashMap<String, Vec<usize>> =
            serde_json::from_str(&meta[&format!("keys.{arch}")]).unwrap();
        let m = robustlens::model::build(arch, 3, 0, &Device::Cpu).unwrap();
        let got: HashMap<String, Vec<usize>> = m
            .state_dict()
            .unwrap()
            .into_iter()
            .map(|(n, t)| (n, t.dims().to_vec()))
            .collect();
        let mut missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
        let mut extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
        missing.sort();
        extra.sort();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{arch}: missing {missing:?}, extra {extra:?}"
        );
        for (k, d) in &want {
            assert_eq!(&got[k], d, "{arch}: {k}");
        }
    }
}

#[test]
fn efficientnet_train_mode_batch_norm_matches_torch() {
    let (f, _) = fixtures();
    let m = formula_network(Arch::EfficientnetB0, 3);
    let x = &f["efficientnet_b0_train.input"];
    let logits = m.forward_mode(x, Mode::Train).unwrap();
    let e = rel_err(&logits, &f["efficientnet_b0_train.logits"]);
    assert!(e < 1e-4, "train logits rel err {e}");
    for bn in ["features.0.1", "features.4.1.block.1.1", "features.8.1"] {
        for stat in ["running_mean", "running_var"] {
            let got = m.var(&format!("{bn}.{stat}")).unwrap();
            let e = rel_err(
                got.as_tensor(),
                &f[&format!("efficientnet_b0_train.{stat}.{bn}")],
            );
            assert!(e < 1e-4, "{bn}.{stat} rel err {e}");
        }
    }
    let sd: HashMap<String, Tensor> = m.state_dict().unwrap().into_iter().collect();
    let n: i64 = sd["features.8.1.num_batches_tracked"].to_scalar().unwrap();
    assert_eq!(n, 1);
}

#[test]
fn position_embedding_resampling_is_torchs_antialiased_bicubic() {
    let (f, _) = fixtures();
    for n in [4usize, 20] {
        let want: Vec<Vec<f32>> = f[&format!("aa_bicubic_14_{n}")].to_vec2().unwrap();
        let got = robustlens::model::vit::aa_bicubic_weights(14, n);
        for (gr, wr) in got.iter().zip(&want) {
            for (g, w) in gr.iter().zip(wr) {
                assert!((*g as f32 - w).abs() < 1e-6, "14 -> {n}: {g} vs {w}");
            }
        }
    }
}
