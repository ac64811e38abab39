//! Adam and AdamW against torch.optim (fixture from tests/fixtures/make_adam_fixtures.py).

mod common;
use candle_core::{Device, Var};
use common::{fixture, rel_err};
use robustlens::train::optim::{Adam, OptimKind};

/// Six steps of `kind` on the fixture's regression, in `dtype` (f32 on the CPU runs the fused
/// step, f64 the tensor one), saving the moments after `save_after` steps (6 or more: never)
/// and continuing with a fresh optimiser that loads them; the final weight and bias in f32.
fn six_steps(
    f: &std::collections::HashMap<String, candle_core::Tensor>,
    kind: OptimKind,
    wd: f64,
    dtype: candle_core::DType,
    save_after: usize,
) -> (candle_core::Tensor, candle_core::Tensor) {
    let cast = |n: &str| f[n].to_dtype(dtype).unwrap();
    let (x, y) = (cast("x"), cast("y"));
    let w = Var::from_tensor(&cast("w0")).unwrap();
    let b = Var::from_tensor(&cast("b0")).unwrap();
    let params = || vec![("w".into(), w.clone()), ("b".into(), b.clone())];
    let mut opt = Adam::new(kind, params(), 1e-2, wd).unwrap();
    for step in 0..6 {
        if step == save_after {
            let saved: std::collections::HashMap<String, candle_core::Tensor> =
                opt.state_tensors().unwrap().into_iter().collect();
            assert_eq!(saved.len(), 4, "m and v of w and b");
            opt = Adam::new(kind, params(), 1e-2, wd).unwrap();
            opt.load_state(&saved, step as u64).unwrap();
        }
        let pred = x
            .matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        let loss = (pred - &y).unwrap().sqr().unwrap().mean_all().unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    let f32 = |v: &Var| v.as_tensor().to_dtype(candle_core::DType::F32).unwrap();
    (f32(&w), f32(&b))
}

#[test]
fn adam_and_adamw_match_torch_over_six_steps() {
    // f32 parameters on the CPU take the fused step; others take the tensor step (on a GPU,
    // or f64 here). Either step's moments, saved and loaded into a fresh optimiser halfway,
    // continue the run exactly.
    let f =
        candle_core::safetensors::load(fixture("adam_parity.safetensors"), &Device::Cpu).unwrap();
    for (name, kind, wd) in [
        ("adam", OptimKind::Adam, 5e-4),
        ("adamw", OptimKind::AdamW, 5e-2),
    ] {
        for dtype in [candle_core::DType::F32, candle_core::DType::F64] {
            let (w, b) = six_steps(&f, kind, wd, dtype, 6);
            let ew = rel_err(&w, &f[&format!("{name}_w")]);
            let eb = rel_err(&b, &f[&format!("{name}_b")]);
            assert!(
                ew < 1e-5 && eb < 1e-5,
                "{name} {dtype:?}: rel err w {ew} b {eb}"
            );
            let (rw, rb) = six_steps(&f, kind, wd, dtype, 3);
            let values = |t: &candle_core::Tensor| -> Vec<f32> {
                t.flatten_all().unwrap().to_vec1().unwrap()
            };
            let same = |a, b| values(a) == values(b);
            assert!(
                same(&w, &rw) && same(&b, &rb),
                "{name} {dtype:?}: resumed run differs"
            );
        }
    }
}
