//! Depthwise convolution (`groups = C`, weight `[C, 1, k, k]`, square stride and padding) as
//! a custom op: one pass per (image, channel) plane forward, and a backward that computes
//! the input gradient and the weight gradient only when autograd needs each.
//!
//! candle 0.11 runs a grouped convolution as `C` separate convolutions (a chunk per group),
//! and its backward adds a full-size zero tensor per group: quadratic in `C`. ConvNeXt
//! (7x7) and EfficientNet (3x3, 5x5, stride 1 and 2) spend most of their time here.

use super::{on_cpu_f32, SendPtr};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    fn new(x: &[usize], wt: &[usize], stride: usize, pad: usize) -> Result<Geom> {
        let (&[n, c, h, w], &[cw, 1, k, k2]) = (x, wt) else {
            candle_core::bail!(
                "depthwise: input {x:?} and weight {wt:?} must be [N,C,H,W] and [C,1,k,k]"
            )
        };
        if cw != c || k != k2 || h + 2 * pad < k || w + 2 * pad < k || stride == 0 {
            candle_core::bail!(
                "depthwise: input {x:?}, weight {wt:?}, stride {stride}, padding {pad}"
            )
        }
        Ok(Geom {
            n,
            c,
            h,
            w,
            k,
            stride,
            pad,
            ho: (h + 2 * pad - k) / stride + 1,
            wo: (w + 2 * pad - k) / stride + 1,
        })
    }

    /// The input positions `(oy, iy)` of tap `ky` along one axis: `iy = oy * s - p + ky`
    /// inside `0..len`.
    fn range(&self, ky: usize, out: usize, len: usize) -> (usize, usize) {
        // oy * s + ky >= p  and  oy * s + ky - p < len
        let lo = (self.pad.saturating_sub(ky)).div_ceil(self.stride);
        let hi = (len + self.pad)
            .saturating_sub(ky)
            .div_ceil(self.stride)
            .min(out);
        (lo, hi.max(lo))
    }
}

fn f32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    super::cpu_f32(s, l, "depthwise", what)
}

/// The forward: `y[n,c] = sum_taps w[c,tap] * shifted x[n,c]`.
fn forward(x: &[f32], wt: &[f32], g: Geom) -> Vec<f32> {
    let (plane_in, plane_out, kk) = (g.h * g.w, g.ho * g.wo, g.k * g.k);
    let mut y = vec![0f32; g.n * g.c * plane_out];
    y.par_chunks_mut(plane_out)
        .enumerate()
        .for_each(|(nc, yp)| {
            let c = nc % g.c;
            let xp = &x[nc * plane_in..(nc + 1) * plane_in];
            let wk = &wt[c * kk..(c + 1) * kk];
            for ky in 0..g.k {
                let (oy0, oy1) = g.range(ky, g.ho, g.h);
                for kx in 0..g.k {
                    let (ox0, ox1) = g.range(kx, g.wo, g.w);
                    let wv = wk[ky * g.k + kx];
                    for oy in oy0..oy1 {
                        let iy = oy * g.stride + ky - g.pad;
                        let xr = &xp[iy * g.w..(iy + 1) * g.w];
                        let yr = &mut yp[oy * g.wo..(oy + 1) * g.wo];
                        if g.stride == 1 {
                            if ox0 >= ox1 {
                                continue;
                            }
                            let ix0 = ox0 + kx - g.pad;
                            for (yv, xv) in yr[ox0..ox1].iter_mut().zip(&xr[ix0..]) {
                                *yv += wv * xv;
                            }
                        } else {
                            for (ox, yv) in yr.iter_mut().enumerate().take(ox1).skip(ox0) {
                                *yv += wv * xr[ox * g.stride + kx - g.pad];
                            }
                        }
                    }
                }
            }
        });
    y
}

/// The input gradient: the transpose of [`forward`].
fn grad_input(gy: &[f32], wt: &[f32], g: Geom) -> Vec<f32> {
    let (plane_in, plane_out, kk) = (g.h * g.w, g.ho * g.wo, g.k * g.k);
    let mut gx = vec![0f32; g.n * g.c * plane_in];
    gx.par_chunks_mut(plane_in)
        .enumerate()
        .for_each(|(nc, gxp)| {
            let c = nc % g.c;
            let gp = &gy[nc * plane_out..(nc + 1) * plane_out];
            let wk = &wt[c * kk..(c + 1) * kk];
            for ky in 0..g.k {
                let (oy0, oy1) = g.range(ky, g.ho, g.h);
                for kx in 0..g.k {
                    let (ox0, ox1) = g.range(kx, g.wo, g.w);
                    let wv = wk[ky * g.k + kx];
                    for oy in oy0..oy1 {
                        let iy = oy * g.stride + ky - g.pad;
                        let gr = &gp[oy * g.wo..(oy + 1) * g.wo];
                        let xr = &mut gxp[iy * g.w..(iy + 1) * g.w];
                        for (ox, gv) in gr.iter().enumerate().take(ox1).skip(ox0) {
                            xr[ox * g.stride + kx - g.pad] += wv * gv;
                        }
                    }
                }
            }
        });
    gx
}

/// The weight gradient: per channel, the correlation of the output gradient with the
/// shifted input, summed over the batch (channels in parallel, the batch in order, so the
/// result does not depend on the thread count).
fn grad_weight(gy: &[f32], x: &[f32], g: Geom) -> Vec<f32> {
    let (plane_in, plane_out, kk) = (g.h * g.w, g.ho * g.wo, g.k * g.k);
    let mut gw = vec![0f32; g.c * kk];
    let ptr = SendPtr(gw.as_mut_ptr());
    (0..g.c).into_par_iter().for_each(|c| {
        let mut acc = vec![0f64; kk];
        for n in 0..g.n {
            let nc = n * g.c + c;
            let xp = &x[nc * plane_in..(nc + 1) * plane_in];
            let gp = &gy[nc * plane_out..(nc + 1) * plane_out];
            for ky in 0..g.k {
                let (oy0, oy1) = g.range(ky, g.ho, g.h);
                for kx in 0..g.k {
                    let (ox0, ox1) = g.range(kx, g.wo, g.w);
                    let mut s = 0f32;
                    for oy in oy0..oy1 {
                        let iy = oy * g.stride + ky - g.pad;
                        let xr = &xp[iy * g.w..(iy + 1) * g.w];
                        let gr = &gp[oy * g.wo..(oy + 1) * g.wo];
                        for (ox, gv) in gr.iter().enumerate().take(ox1).skip(ox0) {
                            s += gv * xr[ox * g.stride + kx - g.pad];
                        }
                    }
                    acc[ky * g.k + kx] += s as f64;
                }
            }
        }
        for (t, a) in acc.iter().enumerate() {
            // SAFETY: each task writes only its own channel's kk entries.
            unsafe { *ptr.get().add(c * kk + t) = *a as f32 };
        }
    });
    gw
}

#[derive(Clone, Copy)]
enum Pass {
    Forward,
    /// (output gradient, weight) -> input gradient of an input of `h` x `w`.
    GradInput {
        h: usize,
        w: usize,
    },
    /// (output gradient, input) -> weight gradient with kernel `k`.
    GradWeight {
        k: usize,
    },
}

struct Depthwise {
    stride: usize,
    pad: usize,
    pass: Pass,
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "robustlens-depthwise"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = f32s(s1, l1, "first argument")?;
        let b = f32s(s2, l2, "second argument")?;
        let (d1, d2) = (l1.dims(), l2.dims());
        Ok(match self.pass {
            Pass::Forward => {
                let g = Geom::new(d1, d2, self.stride, self.pad)?;
                let y = forward(a, b, g);
                (CpuStorage::F32(y), Shape::from((g.n, g.c, g.ho, g.wo)))
            }
            Pass::GradInput { h, w } => {
                let g = Geom::new(&[d1[0], d1[1], h, w], d2, self.stride, self.pad)?;
                (
                    CpuStorage::F32(grad_input(a, b, g)),
                    Shape::from((g.n, g.c, h, w)),
                )
            }
            Pass::GradWeight { k } => {
                let g = Geom::new(d2, &[d2[1], 1, k, k], self.stride, self.pad)?;
                (
                    CpuStorage::F32(grad_weight(a, b, g)),
                    Shape::from((g.c, 1, k, k)),
                )
            }
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        wt: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (_, _, h, w) = x.dims4()?;
        let k = wt.dims()[2];
        let op = |pass| Depthwise {
            stride: self.stride,
            pad: self.pad,
            pass,
        };
        let gx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(wt, &op(Pass::GradInput { h, w }))?)
        } else {
            None
        };
        let gw = if wt.track_op() {
            Some(grad.apply_op2_no_bwd(x, &op(Pass::GradWeight { k }))?)
        } else {
            None
        };
        Ok((gx, gw))
    }
}

/// Whether [`depthwise_conv2d`] runs the custom op (a contiguous float32 CPU input).
pub fn depthwise_supported(x: &Tensor, w: &Tensor) -> bool {
    on_cpu_f32(&[x, w])
}

/// A depthwise convolution of `x` `[N, C, H, W]` with `w` `[C, 1, k, k]`, differentiable in
/// both; CPU float32 only (see [`depthwise_supported`]).
pub fn depthwise_conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op2(
        &w.contiguous()?,
        Depthwise {
            stride,
            pad,
            pass: Pass::Forward,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The definition, loop by loop: forward, input gradient and weight gradient of
    /// `sum(y * r)`, in f64.
    fn naive(x: &[f32], w: &[f32], r: &[f32], g: Geom) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let mut y = vec![0f64; g.n * g.c * g.ho * g.wo];
        let mut gx = vec![0f64; x.len()];
        let mut gw = vec![0f64; w.len()];
        for n in 0..g.n {
            for c in 0..g.c {
                for oy in 0..g.ho {
                    for ox in 0..g.wo {
                        let o = ((n * g.c + c) * g.ho + oy) * g.wo + ox;
                        for ky in 0..g.k {
                            for kx in 0..g.k {
                                let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let i = ((n * g.c + c) * g.h + iy as usize) * g.w + ix as usize;
                                let t = (c * g.k + ky) * g.k + kx;
                                y[o] += w[t] as f64 * x[i] as f64;
                                gx[i] += w[t] as f64 * r[o] as f64;
                                gw[t] += x[i] as f64 * r[o] as f64;
                            }
                        }
                    }
                }
            }
        }
        (y, gx, gw)
    }

    /// Every stride, padding and kernel ConvNeXt and EfficientNet use, on odd and non-square
    /// sizes, against the definition.
    #[test]
    fn matches_the_definition() {
        let d = Device::Cpu;
        for &(k, stride, pad, h, w) in &[
            (7, 1, 3, 9, 7),
            (3, 1, 1, 8, 8),
            (3, 2, 1, 9, 8),
            (5, 2, 2, 11, 10),
            (5, 1, 2, 6, 5),
            (3, 2, 1, 2, 2),
            (7, 1, 3, 2, 2),
            (7, 1, 3, 1, 1),
        ] {
            let (n, c) = (2, 3);
            let g = Geom::new(&[n, c, h, w], &[c, 1, k, k], stride, pad).unwrap();
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c, h, w), &d).unwrap()).unwrap();
            let wt =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (c, 1, k, k), &d).unwrap()).unwrap();
            let r = Tensor::randn(0f32, 1.0, (n, c, g.ho, g.wo), &d).unwrap();
            let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
            let (y0, gx0, gw0) = naive(&flat(x.as_tensor()), &flat(wt.as_tensor()), &flat(&r), g);
            let y = depthwise_conv2d(x.as_tensor(), wt.as_tensor(), stride, pad).unwrap();
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let close = |a: &[f32], b: &[f64], what: &str| {
                assert_eq!(a.len(), b.len(), "{what}");
                for (p, q) in a.iter().zip(b) {
                    assert!(
                        (*p as f64 - q).abs() < 1e-4 * (1.0 + q.abs()),
                        "{what} k{k} s{stride} {h}x{w}: {p} vs {q}"
                    );
                }
            };
            close(&flat(&y), &y0, "forward");
            close(
                &flat(grads.get(x.as_tensor()).unwrap()),
                &gx0,
                "input gradient",
            );
            close(
                &flat(grads.get(wt.as_tensor()).unwrap()),
                &gw0,
                "weight gradient",
            );
        }
    }

    #[test]
    fn detached_weights_get_no_gradient() {
        let d = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 2, 5, 5), &d).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (2, 1, 3, 3), &d).unwrap();
        let y = depthwise_conv2d(x.as_tensor(), &w, 1, 1).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(x.as_tensor()).is_some() && g.get(&w).is_none());
    }
}
