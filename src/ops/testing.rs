//! Helpers for the kernels' unit tests: seeded inputs, differences, candle-op references.

use candle_core::{Device, Tensor};

/// Normal values (standard deviation `std`) of `shape`, from `seed`.
pub fn normal(shape: &[usize], seed: u64, std: f32) -> Tensor {
    let mut r = crate::rng::SeededRng::new(seed);
    let n: usize = shape.iter().product();
    Tensor::from_vec(r.normal_vec(n, std), shape, &Device::Cpu).unwrap()
}

/// `len` standard normal values from `seed`, for the kernels that work on slices.
pub fn values(len: usize, seed: u64) -> Vec<f32> {
    crate::rng::SeededRng::new(seed).normal_vec(len, 1.0)
}

/// Uniform values in `[lo, hi)` of `shape`, from `seed`.
pub fn uniform(shape: &[usize], seed: u64, lo: f32, hi: f32) -> Tensor {
    let mut r = crate::rng::SeededRng::new(seed);
    let n: usize = shape.iter().product();
    Tensor::from_vec(r.uniform_vec(n, lo, hi), shape, &Device::Cpu).unwrap()
}

/// Whether `a` and `b` hold the same values bit for bit (the same length, and every pair of
/// floats with equal bits: -0 differs from 0, a NaN equals only the same NaN).
pub fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits())
}

/// `f()` on a rayon pool of its own with `threads` threads.
pub fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// Asserts that `got` and `want` have the same length and differ nowhere by more than `tol`
/// times the largest magnitude in `want`.
pub fn assert_near(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let top = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (a, b) in got.iter().zip(want) {
        assert!((a - b).abs() <= tol * top, "{what}: {a} vs {b}");
    }
}

fn max_of_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// max |a - b|.
pub fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    max_of_abs(&(a - b).unwrap())
}

/// max |a - b| / max |b|.
pub fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(a, b) / max_of_abs(b).max(1e-6)
}

/// `conv2d(x, w) * scale[o] + shift[o]` from candle's own ops.
pub fn conv_bn_reference(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    scale: &[f32],
    shift: &[f32],
) -> Tensor {
    let o = scale.len();
    let s = Tensor::from_slice(scale, (1, o, 1, 1), &Device::Cpu).unwrap();
    let b = Tensor::from_slice(shift, (1, o, 1, 1), &Device::Cpu).unwrap();
    x.conv2d(w, padding, stride, 1, 1)
        .unwrap()
        .broadcast_mul(&s)
        .unwrap()
        .broadcast_add(&b)
        .unwrap()
}

/// The gradients of `sum(y * probe)`: every input's gradient against one random direction
/// of the output.
pub fn probe_grads(y: Tensor, probe: &Tensor) -> candle_core::backprop::GradStore {
    (y * probe).unwrap().sum_all().unwrap().backward().unwrap()
}
