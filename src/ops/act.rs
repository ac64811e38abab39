//! ReLU and residual-add-then-ReLU as custom ops whose backward is one pass.
//!
//! candle 0.11 differentiates `relu` as `grad * (x >= 0)` through four tensor ops (a zero
//! tensor, a comparison, a cast and a product, each allocating); here the mask is read from
//! the output (`y > 0`, as PyTorch's `threshold_backward`) in the same pass that applies it.
//! On CUDA with the `cudnn` feature the same ops run cuDNN's activation (one kernel each way;
//! the add-and-ReLU one more for the add).

use super::{on_cpu_f32, on_cudnn_f32};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

fn f32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    super::cpu_f32(s, l, "relu", what)
}

/// `g` where `y > 0`, else 0, in one parallel pass (into a buffer that is not zero-filled
/// first).
pub(super) fn masked(g: &[f32], y: &[f32]) -> Vec<f32> {
    assert_eq!(
        g.len(),
        y.len(),
        "relu backward: gradient and output lengths differ"
    );
    let mut d: Vec<f32> = Vec::with_capacity(g.len());
    d.spare_capacity_mut()[..g.len()]
        .par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
        .for_each(|(d, (g, y))| {
            #[cfg(target_arch = "x86_64")]
            if super::layout::has_fma() {
                // SAFETY: the CPU has AVX2
                return unsafe { mask_into_avx2(d, g, y) };
            }
            mask_into(d, g, y)
        });
    // SAFETY: the chunks cover all g.len() entries, and mask_into wrote each one
    unsafe { d.set_len(g.len()) };
    d
}

/// `d = g` where `y > 0`, else 0. A select that LLVM turns into blends where it may use
/// AVX2 ([`mask_into_avx2`]); compiled for the crate's SSE2 baseline it stays a branch per
/// value, mispredicted on mixed signs: 690 against 35 µs for 262,144 values of random sign
/// (2 threads, best of 200), the zero fill of the old output buffer another 50 µs.
#[inline(always)]
fn mask_into(d: &mut [MaybeUninit<f32>], g: &[f32], y: &[f32]) {
    for ((d, g), y) in d.iter_mut().zip(g).zip(y) {
        d.write(if *y > 0.0 { *g } else { 0.0 });
    }
}

/// [`mask_into`] compiled for AVX2.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn mask_into_avx2(d: &mut [MaybeUninit<f32>], g: &[f32], y: &[f32]) {
    mask_into(d, g, y)
}

/// `g = 0` where `y <= 0` (a NaN in `y` keeps `g`, as PyTorch's `threshold_backward`), in
/// place, in parallel; compiled for AVX2 where the CPU has it (see [`mask_into`]).
pub(super) fn zero_where_not_positive(g: &mut [f32], y: &[f32]) {
    assert_eq!(
        g.len(),
        y.len(),
        "relu backward: gradient and output lengths differ"
    );
    #[inline(always)]
    fn go(g: &mut [f32], y: &[f32]) {
        for (g, y) in g.iter_mut().zip(y) {
            *g = if *y <= 0.0 { 0.0 } else { *g };
        }
    }
    /// # Safety
    /// The CPU has AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn go_avx2(g: &mut [f32], y: &[f32]) {
        go(g, y)
    }
    g.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK))
        .for_each(|(g, y)| {
            #[cfg(target_arch = "x86_64")]
            if super::layout::has_fma() {
                // SAFETY: the CPU has AVX2
                return unsafe { go_avx2(g, y) };
            }
            go(g, y)
        });
}

/// `grad` where `out > 0`, else 0 (no backward of its own).
struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "robustlens-relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = f32s(s1, l1, "gradient")?;
        let y = f32s(s2, l2, "output")?;
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "relu backward: gradient {:?} vs output {:?}",
                l1.shape(),
                l2.shape()
            );
        }
        Ok((CpuStorage::F32(masked(g, y)), l1.shape().clone()))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((
            super::cudnn::relu_grad((s1, l1), (s2, l2))?,
            l1.shape().clone(),
        ))
    }
}

/// The gradient of a ReLU's input from its output `out` and the output gradient `grad`.
pub fn relu_grad(grad: &Tensor, out: &Tensor) -> Result<Tensor> {
    if on_cpu_f32(&[grad, out]) || on_cudnn_f32(&[grad, out]) {
        grad.contiguous()?
            .apply_op2_no_bwd(&out.contiguous()?, &ReluGrad)
    } else {
        grad * out.gt(0.0)?.to_dtype(grad.dtype())?
    }
}

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "robustlens-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, "input")?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| {
                for (y, x) in y.iter_mut().zip(x) {
                    *y = x.max(0.0);
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((super::cudnn::relu((s, l))?, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if !arg.track_op() {
            return Ok(None);
        }
        relu_grad(grad, res).map(Some)
    }
}

/// `max(x, 0)`, differentiable, with a one-pass backward on the CPU (and cuDNN's on CUDA).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if on_cpu_f32(&[x]) || on_cudnn_f32(&[x]) {
        x.contiguous()?.apply_op1(Relu)
    } else {
        x.relu()
    }
}

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "robustlens-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = f32s(s1, l1, "left")?;
        let b = f32s(s2, l2, "right")?;
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "add_relu: shapes {:?} and {:?} differ",
                l1.shape(),
                l2.shape()
            );
        }
        let mut y = vec![0f32; a.len()];
        y.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(y, (a, b))| {
                for ((y, a), b) in y.iter_mut().zip(a).zip(b) {
                    *y = (a + b).max(0.0);
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((
            super::cudnn::add_relu((s1, l1), (s2, l2))?,
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !a.track_op() && !b.track_op() {
            return Ok((None, None));
        }
        let g = relu_grad(grad, res)?;
        Ok((a.track_op().then(|| g.clone()), b.track_op().then_some(g)))
    }
}

/// `max(a + b, 0)` (a residual connection), differentiable in both, one pass each way on
/// the CPU.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if (on_cpu_f32(&[a, b]) || on_cudnn_f32(&[a, b])) && a.shape() == b.shape() {
        a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
    } else {
        (a + b)?.relu()
    }
}

/// `y + residual` when there is one, through a ReLU when `relu`: [`add_relu`], [`relu`], the
/// plain sum or `y` itself.
pub fn add_act(y: Tensor, residual: Option<&Tensor>, relu: bool) -> Result<Tensor> {
    match (residual, relu) {
        (Some(r), true) => add_relu(&y, r),
        (Some(r), false) => y + r,
        (None, true) => self::relu(&y),
        (None, false) => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::normal;
    use candle_core::Var;

    fn rand(n: usize, seed: u64) -> Tensor {
        normal(&[n / 6, 2, 3], seed, 1.0)
    }

    #[test]
    fn relu_and_add_relu_match_candle_both_ways() {
        let n = 6 * 7000; // several parallel chunks
        let a = Var::from_tensor(&rand(n, 1)).unwrap();
        let b = Var::from_tensor(&rand(n, 2)).unwrap();
        let probe = rand(n, 3);
        let run = |f: &dyn Fn(&Tensor, &Tensor) -> Tensor| {
            let y = f(a.as_tensor(), b.as_tensor());
            let g = (&y * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let get = |v: &Var| -> Vec<f32> {
                g.get(v.as_tensor())
                    .map(|t| t.flatten_all().unwrap().to_vec1().unwrap())
                    .unwrap_or_default()
            };
            (
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                get(&a),
                get(&b),
            )
        };
        let ours = run(&|a, b| add_relu(a, b).unwrap());
        let theirs = run(&|a, b| (a + b).unwrap().relu().unwrap());
        assert_eq!(ours, theirs);
        let ours = run(&|a, b| (relu(a).unwrap() * b).unwrap());
        let theirs = run(&|a, b| (a.relu().unwrap() * b).unwrap());
        assert_eq!(ours, theirs);
        // no gradient for an untracked input
        let y = add_relu(a.as_tensor(), &b.as_tensor().detach()).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(a.as_tensor()).is_some() && g.get(b.as_tensor()).is_none());
    }

    #[test]
    fn masks_keep_the_gradient_where_the_output_is_positive() {
        // past two parallel chunks; signs, zeros of both signs, NaNs and infinities in the
        // outputs, NaNs in the gradients
        let n = 2 * CHUNK + 37;
        let specials = [
            0.0,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e-30,
            -1e-30,
        ];
        let mut r = crate::rng::SeededRng::new(5);
        let y: Vec<f32> = (0..n)
            .map(|i| {
                if i % 5 == 0 {
                    specials[i / 5 % specials.len()]
                } else {
                    r.normal()
                }
            })
            .collect();
        let g: Vec<f32> = (0..n)
            .map(|i| if i % 11 == 0 { f32::NAN } else { r.normal() })
            .collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        // masked: g where y > 0 (a NaN output gives 0)
        let want: Vec<f32> = g
            .iter()
            .zip(&y)
            .map(|(g, y)| if *y > 0.0 { *g } else { 0.0 })
            .collect();
        assert_eq!(bits(&masked(&g, &y)), bits(&want));
        let mut plain = vec![MaybeUninit::new(f32::NAN); n];
        mask_into(&mut plain, &g, &y);
        // SAFETY: every entry was initialised above
        let plain: Vec<f32> = plain
            .into_iter()
            .map(|v| unsafe { v.assume_init() })
            .collect();
        assert_eq!(bits(&plain), bits(&want));
        // in place: 0 where y <= 0 (a NaN output keeps g)
        let want: Vec<f32> = g
            .iter()
            .zip(&y)
            .map(|(g, y)| if *y <= 0.0 { 0.0 } else { *g })
            .collect();
        let mut got = g.clone();
        zero_where_not_positive(&mut got, &y);
        assert_eq!(bits(&got), bits(&want));
    }
}
