//! 2-D convolution (no bias, square kernels, groups 1, dilation 1) as a candle custom op whose
//! forward and backward are matrix products (im2col / col2im with the `gemm` crate), and whose
//! backward computes only the gradients that are needed: the input gradient when the input
//! takes part in autograd (not for the image fed to the first layer), the weight gradient
//! when the weight does (not when the model runs with detached weights for attacks and
//! saliency).
//!
//! candle 0.11 computes a convolution's input gradient with `conv_transpose2d` (a plain
//! dot-product loop on the CPU) and its weight gradient as a convolution whose kernel is the
//! whole output map, and always both. Here the images of a batch share one column matrix
//! (up to 64 MB; larger batches go in chunks), so every layer is one large matrix product
//! even where the feature maps are 2x2; the products are parallel inside `gemm`, which
//! splits rows and columns, never the summed dimension, so results do not depend on
//! scheduling.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// Output size of a convolution.
pub fn conv_out(input: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (input + 2 * padding).saturating_sub(kernel) / stride + 1
}

#[derive(Clone, Copy, Debug)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn ckk(&self) -> usize {
        self.c * self.k * self.k
    }
    fn hw_out(&self) -> usize {
        self.ho * self.wo
    }
    fn plane_in(&self) -> usize {
        self.c * self.h * self.w
    }
}

/// Images per matrix product: as many as keep the column buffer under 16 M floats (64 MB).
fn images_per_chunk(g: &Geometry) -> usize {
    let per = (g.ckk() * g.hw_out()).max(1);
    ((16usize << 20) / per).clamp(1, g.n.max(1))
}

/// Column matrix of images `i0..i0+m`: `[ckk, m * hw]`, row `(c*k + ky)*k + kx`, image `i`
/// in columns `(i - i0) * hw ..`, entry `x[i][c][oy*s - p + ky][ox*s - p + kx]` (0 outside);
/// rows filled in parallel.
fn im2col_chunk(x: &[f32], g: &Geometry, i0: usize, m: usize, col: &mut [f32]) {
    let (k, s, p) = (g.k, g.stride, g.pad as isize);
    let hw = g.hw_out();
    col[..g.ckk() * m * hw]
        .par_chunks_mut(m * hw)
        .enumerate()
        .for_each(|(r, row)| {
            let c = r / (k * k);
            let ky = (r / k) % k;
            let kx = r % k;
            for (j, i) in (i0..i0 + m).enumerate() {
                let xc = &x[i * g.plane_in() + c * g.h * g.w..][..g.h * g.w];
                let blk = &mut row[j * hw..(j + 1) * hw];
                for oy in 0..g.ho {
                    let iy = (oy * s) as isize - p + ky as isize;
                    let dst = &mut blk[oy * g.wo..(oy + 1) * g.wo];
                    if iy < 0 || iy >= g.h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                    for (ox, d) in dst.iter_mut().enumerate() {
                        let ix = (ox * s) as isize - p + kx as isize;
                        *d = if ix < 0 || ix >= g.w as isize {
                            0.0
                        } else {
                            src[ix as usize]
                        };
                    }
                }
            }
        });
}

/// The output gradient of images `i0..i0+m` (`[m, o, hw]`) as one `[o, m*hw]` matrix.
fn gather_grad(gr: &[f32], g: &Geometry, i0: usize, m: usize, gt: &mut [f32]) {
    let hw = g.hw_out();
    gt[..g.o * m * hw]
        .par_chunks_mut(m * hw)
        .enumerate()
        .for_each(|(o, row)| {
            for j in 0..m {
                row[j * hw..(j + 1) * hw].copy_from_slice(&gr[((i0 + j) * g.o + o) * hw..][..hw]);
            }
        });
}

/// The adjoint of [`im2col_chunk`] for image `j` of a chunk of `m` images: adds every column
/// entry back to its input pixel.
fn col2im_strided(col: &[f32], g: &Geometry, j: usize, m: usize, dx: &mut [f32]) {
    let (k, s, p) = (g.k, g.stride, g.pad as isize);
    let hw = g.hw_out();
    dx.fill(0.0);
    for c in 0..g.c {
        let dc = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..k {
            for kx in 0..k {
                let r = (c * k + ky) * k + kx;
                let row = &col[r * m * hw + j * hw..][..hw];
                for oy in 0..g.ho {
                    let iy = (oy * s) as isize - p + ky as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let dst = &mut dc[iy as usize * g.w..(iy as usize + 1) * g.w];
                    for (ox, v) in row[oy * g.wo..(oy + 1) * g.wo].iter().enumerate() {
                        let ix = (ox * s) as isize - p + kx as isize;
                        if ix >= 0 && ix < g.w as isize {
                            dst[ix as usize] += v;
                        }
                    }
                }
            }
        }
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` with two scratch buffers of at least `a` and `b` floats, reused across calls on
/// this thread (no allocation, zeroing or page faults per convolution). Their contents are
/// arbitrary: every user overwrites what it reads. A re-entrant call gets fresh buffers.
fn with_scratch<R>(a: usize, b: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            let (x, y) = &mut *bufs;
            if x.len() < a {
                x.resize(a, 0.0);
            }
            if y.len() < b {
                y.resize(b, 0.0);
            }
            f(&mut x[..a], &mut y[..b])
        }
        Err(_) => f(&mut vec![0f32; a], &mut vec![0f32; b]),
    })
}

fn par_all() -> Parallelism {
    let t = threads();
    if t > 1 {
        Parallelism::Rayon(t)
    } else {
        Parallelism::None
    }
}

/// dst (m x n, row-major) = a (m x k) * b (k x n), given as (pointer, row stride, column
/// stride); `accumulate` adds to dst.
#[allow(clippy::too_many_arguments)]
fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    a: (&[f32], isize, isize),
    b: (&[f32], isize, isize),
    par: Parallelism,
) {
    debug_assert!(dst.len() >= m * n);
    // SAFETY: the slices hold the m x k, k x n and m x n matrices at the given strides
    // (checked by the callers' geometry), and dst does not alias a or b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.0.as_ptr(),
            a.2,
            a.1,
            b.0.as_ptr(),
            b.2,
            b.1,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        )
    }
}

fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    super::cpu_f32(s, l, "conv2d", what)
}

struct Conv2d {
    stride: usize,
    pad: usize,
}

/// The shapes of a convolution of `x` with `w` (a square kernel), checked.
fn geometry(x: &Shape, w: &Shape, stride: usize, pad: usize) -> Result<Geometry> {
    let (n, c, h, wd) = x.dims4()?;
    let (o, c2, k, k2) = w.dims4()?;
    if c != c2 || k != k2 {
        candle_core::bail!("conv2d: input {x:?} and square weight {w:?} do not fit");
    }
    if h + 2 * pad < k || wd + 2 * pad < k {
        candle_core::bail!("conv2d: input {h}x{wd} is smaller than the {k}x{k} kernel");
    }
    Ok(Geometry {
        n,
        c,
        h,
        w: wd,
        o,
        k,
        stride,
        pad,
        ho: conv_out(h, k, stride, pad),
        wo: conv_out(wd, k, stride, pad),
    })
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "robustlens-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = geometry(l1.shape(), l2.shape(), self.stride, self.pad)?;
        let x = f32_slice(s1, l1, "input")?;
        let w = f32_slice(s2, l2, "weight")?;
        let (ckk, hw) = (g.ckk(), g.hw_out());
        let mut out = vec![0f32; g.n * g.o * hw];
        let chunk = images_per_chunk(&g);
        with_scratch(ckk * chunk * hw, g.o * chunk * hw, |col, prod| {
            let mut i0 = 0;
            while i0 < g.n {
                let m = chunk.min(g.n - i0);
                im2col_chunk(x, &g, i0, m, col);
                // [o, m*hw] = W [o, ckk] x col [ckk, m*hw], then to [m, o, hw]
                matmul(
                    g.o,
                    m * hw,
                    ckk,
                    prod,
                    false,
                    (w, ckk as isize, 1),
                    (col, (m * hw) as isize, 1),
                    par_all(),
                );
                out[i0 * g.o * hw..(i0 + m) * g.o * hw]
                    .par_chunks_mut(hw)
                    .enumerate()
                    .for_each(|(q, dst)| {
                        let (j, o) = (q / g.o, q % g.o);
                        dst.copy_from_slice(&prod[o * m * hw + j * hw..][..hw]);
                    });
                i0 += m;
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.o, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(
                w,
                &ConvInputGrad {
                    stride: self.stride,
                    pad: self.pad,
                    x_shape: x.shape().clone(),
                },
            )?)
        } else {
            None
        };
        let gw = if w.track_op() {
            Some(x.apply_op2_no_bwd(
                &grad,
                &ConvWeightGrad {
                    stride: self.stride,
                    pad: self.pad,
                    w_shape: w.shape().clone(),
                },
            )?)
        } else {
            None
        };
        Ok((gx, gw))
    }
}

/// dL/dx from dL/dy and the weight: per image, col2im(W^T g).
struct ConvInputGrad {
    stride: usize,
    pad: usize,
    x_shape: Shape,
}

impl CustomOp2 for ConvInputGrad {
    fn name(&self) -> &'static str {
        "robustlens-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = geometry(&self.x_shape, l2.shape(), self.stride, self.pad)?;
        let gr = f32_slice(s1, l1, "gradient")?;
        let w = f32_slice(s2, l2, "weight")?;
        let (ckk, hw) = (g.ckk(), g.hw_out());
        if gr.len() != g.n * g.o * hw {
            candle_core::bail!("conv2d backward: gradient shape does not match the forward");
        }
        let mut dx = vec![0f32; g.n * g.plane_in()];
        let chunk = images_per_chunk(&g);
        with_scratch(g.o * chunk * hw, ckk * chunk * hw, |gt, dcol| {
            let mut i0 = 0;
            while i0 < g.n {
                let m = chunk.min(g.n - i0);
                // gradient [m, o, hw] -> [o, m*hw]
                gather_grad(gr, &g, i0, m, gt);
                // dcol [ckk, m*hw] = W^T [ckk, o] x G [o, m*hw]
                matmul(
                    ckk,
                    m * hw,
                    g.o,
                    dcol,
                    false,
                    (w, 1, ckk as isize),
                    (gt, (m * hw) as isize, 1),
                    par_all(),
                );
                let dcol = &*dcol;
                dx[i0 * g.plane_in()..(i0 + m) * g.plane_in()]
                    .par_chunks_mut(g.plane_in())
                    .enumerate()
                    .for_each(|(j, d)| col2im_strided(dcol, &g, j, m, d));
                i0 += m;
            }
        });
        Ok((CpuStorage::F32(dx), self.x_shape.clone()))
    }
}

/// dL/dW from the input and dL/dy: sum over images of g im2col(x)^T.
struct ConvWeightGrad {
    stride: usize,
    pad: usize,
    w_shape: Shape,
}

impl CustomOp2 for ConvWeightGrad {
    fn name(&self) -> &'static str {
        "robustlens-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = geometry(l1.shape(), &self.w_shape, self.stride, self.pad)?;
        let x = f32_slice(s1, l1, "input")?;
        let gr = f32_slice(s2, l2, "gradient")?;
        let (ckk, hw) = (g.ckk(), g.hw_out());
        if gr.len() != g.n * g.o * hw {
            candle_core::bail!("conv2d backward: gradient shape does not match the forward");
        }
        let mut dw = vec![0f32; g.o * ckk];
        let chunk = images_per_chunk(&g);
        with_scratch(ckk * chunk * hw, g.o * chunk * hw, |col, gt| {
            let mut i0 = 0;
            while i0 < g.n {
                let m = chunk.min(g.n - i0);
                im2col_chunk(x, &g, i0, m, col);
                gather_grad(gr, &g, i0, m, gt);
                // dW [o, ckk] += G [o, m*hw] x col^T [m*hw, ckk]
                matmul(
                    g.o,
                    ckk,
                    m * hw,
                    &mut dw,
                    i0 > 0,
                    (gt, (m * hw) as isize, 1),
                    (col, 1, (m * hw) as isize),
                    par_all(),
                );
                i0 += m;
            }
        });
        Ok((CpuStorage::F32(dw), self.w_shape.clone()))
    }
}

/// A differentiable convolution of `x` `[N, C, H, W]` with a square `weight` `[O, C, K, K]`
/// (no bias). On the CPU in f32 the custom op above; elsewhere candle's `conv2d`.
pub fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if stride == 0 {
        candle_core::bail!("conv2d: stride must be positive");
    }
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && weight.dtype() == x.dtype() {
        x.contiguous()?.apply_op2(
            &weight.contiguous()?,
            Conv2d {
                stride,
                pad: padding,
            },
        )
    } else {
        x.conv2d(weight, padding, stride, 1, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let mut r = crate::rng::SeededRng::new(seed);
        let n: usize = shape.iter().product();
        Tensor::from_vec(r.normal_vec(n, 1.0), shape, &Device::Cpu).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let s = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        d / s.max(1e-6)
    }

    #[test]
    fn matches_candle_forward_and_backward() {
        // the ResNet-18 shapes: 7x7/2 pad 3, 3x3/1 pad 1, 3x3/2 pad 1, 1x1/2 pad 0; batches
        // of 1 (parallel matrix products) and 5 (parallel images). Sizes where the strided
        // window ends on the last row: candle's own backward fails on the others (its
        // transposed convolution comes out one pixel short), which the finite-difference test
        // below covers.
        for (n, c, h, o, k, s, p) in [
            (1, 3, 21, 8, 7, 2, 3),
            (5, 4, 9, 6, 3, 1, 1),
            (3, 5, 11, 7, 3, 2, 1),
            (5, 6, 9, 4, 1, 2, 0),
            (2, 3, 7, 2, 3, 1, 0),
        ] {
            let x = Var::from_tensor(&rand(&[n, c, h, h], 1)).unwrap();
            let w = Var::from_tensor(&rand(&[o, c, k, k], 2)).unwrap();
            let ours = conv2d(x.as_tensor(), w.as_tensor(), s, p).unwrap();
            let theirs = x.as_tensor().conv2d(w.as_tensor(), p, s, 1, 1).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            assert!(
                max_rel(&ours, &theirs) < 1e-5,
                "forward {n} {c} {h} {o} {k} {s} {p}"
            );
            let probe = rand(ours.dims(), 3);
            let g1 = (ours * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = (theirs * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [&x, &w] {
                let a = g1.get(v.as_tensor()).unwrap();
                let b = g2.get(v.as_tensor()).unwrap();
                assert!(max_rel(a, b) < 1e-5, "backward {n} {c} {h} {o} {k} {s} {p}");
            }
        }
    }

    #[test]
    fn only_needed_gradients_and_finite_differences() {
        let x = rand(&[2, 3, 6, 6], 4);
        let w = Var::from_tensor(&rand(&[4, 3, 3, 3], 5)).unwrap();
        // input not tracked: only the weight gradient exists
        let y = conv2d(&x, w.as_tensor(), 2, 1).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&x).is_none() && g.get(w.as_tensor()).is_some());
        // weight detached: only the input gradient
        let xv = Var::from_tensor(&x).unwrap();
        let y = conv2d(xv.as_tensor(), &w.as_tensor().detach(), 2, 1).unwrap();
        let probe = rand(y.dims(), 6);
        let loss = (y * &probe).unwrap().sum_all().unwrap();
        let gx = loss
            .backward()
            .unwrap()
            .get(xv.as_tensor())
            .unwrap()
            .clone();
        // central differences in f64 on a few coordinates
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let gxs: Vec<f32> = gx.flatten_all().unwrap().to_vec1().unwrap();
        let f = |v: &[f32]| -> f64 {
            let t = Tensor::from_slice(v, (2, 3, 6, 6), &Device::Cpu).unwrap();
            let y = conv2d(&t, &w.as_tensor().detach(), 2, 1).unwrap();
            (y * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        for i in [0usize, 7, 35, 100, 215] {
            let e = 1e-2f32;
            let mut a = xs.clone();
            a[i] += e;
            let mut b = xs.clone();
            b[i] -= e;
            let fd = (f(&a) - f(&b)) / (2.0 * e as f64);
            assert!(
                (fd - gxs[i] as f64).abs() < 1e-2 * (1.0 + fd.abs()),
                "{i}: {fd} vs {}",
                gxs[i]
            );
        }
    }
}
