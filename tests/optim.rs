//! Adam and AdamW against torch.optim (fixture from tests/fixtures/make_adam_fixtures.py).

mod common;
use candle_core::{Device, Var};
use common::{fixture, rel_err};
use robustlens::train::optim::{Adam, OptimKind};

#[test]
fn adam_and_adamw_match_torch_over_six_steps() {
    let f =
        candle_core::safetensors::load(fixture("adam_parity.safetensors"), &Device::Cpu).unwrap();
    for (name, kind, wd) in [
        ("adam", OptimKind::Adam, 5e-4),
        ("adamw", OptimKind::AdamW, 5e-2),
    ] {
        let w = Var::from_tensor(&f["w0"]).unwrap();
        let b = Var::from_tensor(&f["b0"]).unwrap();
        let mut opt = Adam::new(
            kind,
            vec![("w".into(), w.clone()), ("b".into(), b.clone())],
            1e-2,
            wd,
        )
        .unwrap();
        for _ in 0..6 {
            let pred = f["x"]
                .matmul(&w.as_tensor().t().unwrap())
                .unwrap()
                .broadcast_add(b.as_tensor())
                .unwrap();
            let loss = (pred - &f["y"]).unwrap().sqr().unwrap().mean_all().unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
        }
        let ew = rel_err(w.as_tensor(), &f[&format!("{name}_w")]);
        let eb = rel_err(b.as_tensor(), &f[&format!("{name}_b")]);
        assert!(ew < 1e-5 && eb < 1e-5, "{name}: rel err w {ew} b {eb}");
    }
}
