//! 2-D max pooling with a correct backward.
//!
//! candle 0.11's `max_pool2d` has no backward when kernel != stride and scales gradients by
//! 1/k² when kernel == stride. This op records, per output element, the flat index of the
//! input element that won (the first maximum in scan order, as PyTorch does) and routes the
//! whole output gradient to it, summing where windows overlap.
//!
//! Padding counts as -infinity (never chosen), as in `torch.nn.MaxPool2d`.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Output size of a pooling window sweep (floor mode, as PyTorch's default).
pub fn pooled_size(input: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (input + 2 * padding).saturating_sub(kernel) / stride + 1
}

/// The input rows (or columns) `lo..hi` inside the image under output position `o`'s window;
/// never empty when `p <= k / 2` and `o` is a valid output position (both checked).
#[inline]
fn window(o: usize, s: usize, p: usize, k: usize, len: usize) -> (usize, usize) {
    let start = o * s;
    ((start).saturating_sub(p), (start + k - p).min(len))
}

/// Max pooling of `src` (`[n, c, h, w]`, contiguous): the output, the flat in-plane index of
/// each output's winner, and the output size.
pub(super) fn pool_forward(
    src: &[f32],
    (n, c, h, w): (usize, usize, usize, usize),
    k: usize,
    s: usize,
    p: usize,
) -> Result<(Vec<f32>, Vec<u32>, usize, usize)> {
    if h + 2 * p < k || w + 2 * p < k {
        candle_core::bail!("max_pool2d: input {h}x{w} is smaller than the {k}x{k} window");
    }
    if 2 * p > k {
        candle_core::bail!(
            "max_pool2d: padding {p} must be at most half the {k}x{k} window (as in PyTorch)"
        );
    }
    let ho = pooled_size(h, k, s, p);
    let wo = pooled_size(w, k, s, p);
    let plane_in = h * w;
    let plane_out = ho * wo;
    let mut out = vec![0f32; n * c * plane_out];
    debug_assert_eq!(src.len(), n * c * plane_in);
    let mut idx = vec![0u32; n * c * plane_out];
    out.par_chunks_mut(plane_out)
        .zip(idx.par_chunks_mut(plane_out))
        .enumerate()
        .for_each(|(plane, (o, ix))| {
            let x = &src[plane * plane_in..(plane + 1) * plane_in];
            for (oy, (orow, irow)) in o
                .chunks_exact_mut(wo)
                .zip(ix.chunks_exact_mut(wo))
                .enumerate()
            {
                let (ylo, yhi) = window(oy, s, p, k, h);
                for (ox, (ov, iv)) in orow.iter_mut().zip(irow.iter_mut()).enumerate() {
                    let (xlo, xhi) = window(ox, s, p, k, w);
                    // the first maximum in scan order; the first NaN wins, as in PyTorch
                    let mut bi = ylo * w + xlo;
                    let mut best = x[bi];
                    for yy in ylo..yhi {
                        let row = &x[yy * w..yy * w + xhi];
                        for (xx, &v) in row.iter().enumerate().skip(xlo) {
                            if v > best || (v.is_nan() && !best.is_nan()) {
                                best = v;
                                bi = yy * w + xx;
                            }
                        }
                    }
                    *ov = best;
                    *iv = bi as u32;
                }
            }
        });
    Ok((out, idx, ho, wo))
}

/// The input gradient of max pooling: each output gradient `g` routed to its winner
/// (`argmax`), summed; only outputs whose value `out` is positive when `only_positive`
/// is given (a ReLU before the pooling: its gradient is zero where the winner was not
/// positive, and the winner is positive exactly when the pooled value is).
pub(super) fn pool_backward(
    g: &[f32],
    argmax: &[u32],
    plane_in: usize,
    plane_out: usize,
    only_positive: Option<&[f32]>,
) -> Vec<f32> {
    let planes = g.len() / plane_out.max(1);
    let mut out = vec![0f32; planes * plane_in];
    out.par_chunks_mut(plane_in)
        .enumerate()
        .for_each(|(plane, o)| {
            let r = plane * plane_out..(plane + 1) * plane_out;
            let (gi, ix) = (&g[r.clone()], &argmax[r.clone()]);
            match only_positive {
                None => {
                    for (gv, &i) in gi.iter().zip(ix) {
                        o[i as usize] += gv;
                    }
                }
                Some(y) => {
                    for ((gv, &i), yv) in gi.iter().zip(ix).zip(&y[r]) {
                        if *yv > 0.0 {
                            o[i as usize] += gv;
                        }
                    }
                }
            }
        });
    out
}

struct MaxPoolFwd {
    kernel: usize,
    stride: usize,
    padding: usize,
    /// Per output element, the flat index within its (n, c) plane of the winning input.
    argmax: Mutex<Option<Arc<Vec<u32>>>>,
}

impl CustomOp1 for MaxPoolFwd {
    fn name(&self) -> &'static str {
        "robustlens-max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let src = match storage {
            CpuStorage::F32(v) => v,
            _ => candle_core::bail!("max_pool2d: only f32 is supported"),
        };
        let src = match layout.contiguous_offsets() {
            Some((a, b)) => &src[a..b],
            None => candle_core::bail!("max_pool2d: input must be contiguous"),
        };
        let (out, idx, ho, wo) =
            pool_forward(src, (n, c, h, w), self.kernel, self.stride, self.padding)?;
        if let Ok(mut guard) = self.argmax.lock() {
            *guard = Some(Arc::new(idx));
        }
        Ok((CpuStorage::F32(out), Shape::from((n, c, ho, wo))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let argmax = super::kept(&self.argmax, "max_pool2d: argmax")?;
        let (_, _, h, w) = arg.dims4()?;
        let op = MaxPoolBwd { argmax, h, w };
        let grad = grad_res.contiguous()?.apply_op1_no_bwd(&op)?;
        Ok(Some(grad))
    }
}

struct MaxPoolBwd {
    argmax: Arc<Vec<u32>>,
    h: usize,
    w: usize,
}

impl CustomOp1 for MaxPoolBwd {
    fn name(&self) -> &'static str {
        "robustlens-max-pool2d-bwd"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, ho, wo) = layout.shape().dims4()?;
        let g = match storage {
            CpuStorage::F32(v) => v,
            _ => candle_core::bail!("max_pool2d backward: only f32 is supported"),
        };
        let g = match layout.contiguous_offsets() {
            Some((a, b)) => &g[a..b],
            None => candle_core::bail!("max_pool2d backward: gradient must be contiguous"),
        };
        let plane_out = ho * wo;
        let plane_in = self.h * self.w;
        if self.argmax.len() != n * c * plane_out {
            candle_core::bail!("max_pool2d backward: gradient shape does not match the forward");
        }
        let out = pool_backward(g, &self.argmax, plane_in, plane_out, None);
        Ok((CpuStorage::F32(out), Shape::from((n, c, self.h, self.w))))
    }
}

/// Max pooling over square windows (`kernel`, `stride`, `padding`), differentiable.
///
/// On the CPU this is a custom op that records the argmax; on other devices it is built from
/// candle ops (a `gather` of the per-window argmax), which autograd differentiates exactly.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    if kernel == 0 || stride == 0 {
        candle_core::bail!("max_pool2d: kernel and stride must be positive");
    }
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        let op = MaxPoolFwd {
            kernel,
            stride,
            padding,
            argmax: Mutex::new(None),
        };
        x.contiguous()?.apply_op1(op)
    } else {
        max_pool2d_generic(x, kernel, stride, padding)
    }
}

/// Device-independent max pooling from candle ops: every window offset is a strided view of
/// the (-inf padded) input; the per-window argmax picks one element whose gradient is exact.
pub fn max_pool2d_generic(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let ho = pooled_size(h, kernel, stride, padding);
    let wo = pooled_size(w, kernel, stride, padding);
    let xp = if padding > 0 {
        let neg = f32::NEG_INFINITY;
        let pad_h = Tensor::full(neg, (n, c, padding, w), x.device())?.to_dtype(x.dtype())?;
        let xp = Tensor::cat(&[&pad_h, x, &pad_h], 2)?;
        let pad_w =
            Tensor::full(neg, (n, c, h + 2 * padding, padding), x.device())?.to_dtype(x.dtype())?;
        Tensor::cat(&[&pad_w, &xp, &pad_w], 3)?
    } else {
        x.clone()
    };
    let mut views = Vec::with_capacity(kernel * kernel);
    for dy in 0..kernel {
        for dx in 0..kernel {
            // rows dy, dy+s, ..., dy+(ho-1)s
            let v = xp.narrow(2, dy, (ho - 1) * stride + 1)?;
            let v = v.narrow(3, dx, (wo - 1) * stride + 1)?;
            let v = if stride > 1 {
                let rows: Vec<u32> = (0..ho).map(|i| (i * stride) as u32).collect();
                let cols: Vec<u32> = (0..wo).map(|i| (i * stride) as u32).collect();
                let rows = Tensor::new(rows.as_slice(), x.device())?;
                let cols = Tensor::new(cols.as_slice(), x.device())?;
                v.contiguous()?
                    .index_select(&rows, 2)?
                    .contiguous()?
                    .index_select(&cols, 3)?
            } else {
                v
            };
            views.push(v);
        }
    }
    let stacked = Tensor::stack(&views, 4)?; // n c ho wo k*k
    let am = stacked.detach().argmax_keepdim(4)?;
    stacked.gather(&am, 4)?.squeeze(4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn input(n: usize, c: usize, h: usize, w: usize) -> Tensor {
        // Distinct values, so no ties and finite differences are exact.
        let len = n * c * h * w;
        let v: Vec<f32> = (0..len)
            .map(|i| ((i as f32 * 0.7312).sin() * 3.0) + i as f32 * 1e-3)
            .collect();
        Tensor::from_vec(v, (n, c, h, w), &Device::Cpu).unwrap()
    }

    #[test]
    fn forward_matches_generic_and_shapes() {
        let x = input(2, 3, 9, 8);
        let a = max_pool2d(&x, 3, 2, 1).unwrap();
        let b = max_pool2d_generic(&x, 3, 2, 1).unwrap();
        assert_eq!(a.dims(), &[2, 3, 5, 4]);
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn ties_pick_the_first_maximum_and_nan_wins() {
        // one 3x3 window over a constant 3x3 plane (padding 1, stride 2: 2x2 outputs)
        let x = Var::from_tensor(&Tensor::ones((1, 1, 3, 3), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let y = max_pool2d(x.as_tensor(), 3, 2, 1).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let g: Vec<f32> = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // windows start at (-1,-1), (-1,1), (1,-1), (1,1): first in-image maxima 0, 1, 3, 4
        assert_eq!(g, [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        let mut v = vec![0f32; 9];
        v[4] = f32::NAN;
        v[8] = 5.0;
        let x = Tensor::from_vec(v, (1, 1, 3, 3), &Device::Cpu).unwrap();
        let y: Vec<f32> = max_pool2d(&x, 3, 2, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(y.iter().all(|v| v.is_nan()), "{y:?}");
        let err = max_pool2d(&x, 2, 1, 2).unwrap_err().to_string();
        assert!(err.contains("at most half"), "{err}");
    }

    #[test]
    fn backward_sums_to_number_of_outputs() {
        // The case candle gets wrong: 8x8 pooled 2x2 must route each of 16 unit gradients.
        let x = Var::from_tensor(&input(1, 1, 8, 8)).unwrap();
        let y = max_pool2d(x.as_tensor(), 2, 2, 0).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let gx = g.get(x.as_tensor()).unwrap();
        assert_eq!(gx.sum_all().unwrap().to_scalar::<f32>().unwrap(), 16.0);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let x0 = input(2, 2, 7, 6);
        let weights = input(2, 2, 4, 3).affine(0.5, 0.1).unwrap();
        let f = |x: &Tensor| -> f64 {
            let y = max_pool2d(x, 3, 2, 1).unwrap();
            (y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let xv = Var::from_tensor(&x0).unwrap();
        let y = max_pool2d(xv.as_tensor(), 3, 2, 1).unwrap();
        let loss = (y * &weights).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        let analytic: Vec<f32> = g
            .get(xv.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f32> = x0.flatten_all().unwrap().to_vec1().unwrap();
        let eps = 1e-2f32;
        for i in 0..base.len() {
            let mut p = base.clone();
            p[i] += eps;
            let mut m = base.clone();
            m[i] -= eps;
            let tp = Tensor::from_vec(p, x0.shape(), &Device::Cpu).unwrap();
            let tm = Tensor::from_vec(m, x0.shape(), &Device::Cpu).unwrap();
            let fd = (f(&tp) - f(&tm)) / (2.0 * eps as f64);
            assert!(
                (fd - analytic[i] as f64).abs() < 1e-3,
                "element {i}: fd {fd} analytic {}",
                analytic[i]
            );
        }
        // The generic version agrees with the custom op's gradient.
        let xv2 = Var::from_tensor(&x0).unwrap();
        let y2 = max_pool2d_generic(xv2.as_tensor(), 3, 2, 1).unwrap();
        let g2 = (y2 * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let generic: Vec<f32> = g2
            .get(xv2.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(generic, analytic);
    }
}
