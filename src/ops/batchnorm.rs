//! BatchNorm as two fused CPU kernels (one pass over the data each way instead of candle's
//! chain of broadcast ops, each allocating a full-size tensor):
//!
//! - [`channel_affine`]: y = x * scale[c] + shift[c] with only the input gradient
//!   (g * scale[c]), for eval mode with detached parameters (attacks, saliency, evaluation),
//!   where BatchNorm folds into one affine map per channel.
//! - [`batch_norm_train`]: training-mode BatchNorm over (N, H, W) per channel with the full
//!   backward: dbeta = sum g, dgamma = sum g * xhat, dx = gamma * inv / M * (M g - dbeta -
//!   xhat dgamma). It also returns the batch mean and biased variance for the running
//!   statistics.
//!
//! Both are parallel over channels and fall back to candle ops off the CPU.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    super::cpu_f32(s, l, "batch norm", what)
}

/// Applies `f(channel, plane_in, plane_out)` to every (image, channel) plane in parallel.
fn per_plane(
    src: &[f32],
    out: &mut [f32],
    c: usize,
    hw: usize,
    f: impl Fn(usize, &[f32], &mut [f32]) + Sync,
) {
    out.par_chunks_mut(hw)
        .zip(src.par_chunks(hw))
        .enumerate()
        .for_each(|(p, (o, s))| f(p % c, s, o));
}

struct ChannelAffine {
    scale: Arc<Vec<f32>>,
    shift: Arc<Vec<f32>>,
}

impl CustomOp1 for ChannelAffine {
    fn name(&self) -> &'static str {
        "robustlens-channel-affine"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = l.shape().dims4()?;
        let x = contiguous(s, l, "input")?;
        let mut out = vec![0f32; x.len()];
        per_plane(x, &mut out, c, h * w, |ch, xs, o| {
            let (a, b) = (self.scale[ch], self.shift[ch]);
            for (o, x) in o.iter_mut().zip(xs) {
                *o = x * a + b;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if !arg.track_op() {
            return Ok(None);
        }
        let zero = Arc::new(vec![0f32; self.scale.len()]);
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(
            &ChannelAffine {
                scale: self.scale.clone(),
                shift: zero,
            },
        )?))
    }
}

/// y = x * scale[c] + shift[c] for `x` `[N, C, H, W]`; differentiable in `x` only (scale and
/// shift are constants).
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    let c = x.dim(1)?;
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        let scale: Vec<f32> = scale
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?;
        let shift: Vec<f32> = shift
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?;
        if scale.len() != c || shift.len() != c {
            candle_core::bail!(
                "channel_affine: {c} channels, {} scales, {} shifts",
                scale.len(),
                shift.len()
            );
        }
        x.contiguous()?.apply_op1(ChannelAffine {
            scale: Arc::new(scale),
            shift: Arc::new(shift),
        })
    } else {
        let s = scale.detach().reshape((1, c, 1, 1))?;
        let b = shift.detach().reshape((1, c, 1, 1))?;
        x.broadcast_mul(&s)?.broadcast_add(&b)
    }
}

/// Per-channel statistics saved by the training-mode forward.
#[derive(Debug, Clone)]
pub struct BatchStats {
    pub mean: Vec<f32>,
    /// Biased variance (divided by N*H*W).
    pub var: Vec<f32>,
}

struct BatchNormTrain {
    eps: f64,
    stats: Arc<Mutex<Option<BatchStats>>>,
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "robustlens-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let x = contiguous(s1, l1, "input")?;
        let gamma = contiguous(s2, l2, "weight")?;
        let beta = contiguous(s3, l3, "bias")?;
        let hw = h * w;
        let m = (n * hw) as f64;
        // statistics per channel, in f64
        let stats: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let mut s = 0f64;
                for i in 0..n {
                    s += x[(i * c + ch) * hw..][..hw]
                        .iter()
                        .map(|&v| v as f64)
                        .sum::<f64>();
                }
                let mean = s / m;
                let mut q = 0f64;
                for i in 0..n {
                    q += x[(i * c + ch) * hw..][..hw]
                        .iter()
                        .map(|&v| (v as f64 - mean) * (v as f64 - mean))
                        .sum::<f64>();
                }
                (mean, q / m)
            })
            .collect();
        let scale: Vec<f32> = (0..c)
            .map(|ch| (gamma[ch] as f64 / (stats[ch].1 + self.eps).sqrt()) as f32)
            .collect();
        let shift: Vec<f32> = (0..c)
            .map(|ch| (beta[ch] as f64 - stats[ch].0 * scale[ch] as f64) as f32)
            .collect();
        let mut out = vec![0f32; x.len()];
        per_plane(x, &mut out, c, hw, |ch, xs, o| {
            let (a, b) = (scale[ch], shift[ch]);
            for (o, x) in o.iter_mut().zip(xs) {
                *o = x * a + b;
            }
        });
        if let Ok(mut g) = self.stats.lock() {
            *g = Some(BatchStats {
                mean: stats.iter().map(|s| s.0 as f32).collect(),
                var: stats.iter().map(|s| s.1 as f32).collect(),
            });
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let st = self
            .stats
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .ok_or_else(|| {
                candle_core::Error::Msg("batch norm: statistics were not recorded".into())
            })?;
        let (n, c, h, w) = x.dims4()?;
        let hw = h * w;
        let m = (n * hw) as f64;
        let xs: Vec<f32> = x.contiguous()?.flatten_all()?.to_vec1()?;
        let gs: Vec<f32> = grad.contiguous()?.flatten_all()?.to_vec1()?;
        let gam: Vec<f32> = gamma.to_vec1()?;
        let inv: Vec<f64> = st
            .var
            .iter()
            .map(|&v| 1.0 / (v as f64 + self.eps).sqrt())
            .collect();
        // dbeta = sum g, dgamma = sum g * xhat
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mut sb, mut sg) = (0f64, 0f64);
                let mu = st.mean[ch] as f64;
                for i in 0..n {
                    let o = (i * c + ch) * hw;
                    for (&xv, &gv) in xs[o..o + hw].iter().zip(&gs[o..o + hw]) {
                        sb += gv as f64;
                        sg += gv as f64 * (xv as f64 - mu) * inv[ch];
                    }
                }
                (sb, sg)
            })
            .collect();
        let gx = if x.track_op() {
            let mut dx = vec![0f32; xs.len()];
            dx.par_chunks_mut(hw).enumerate().for_each(|(p, d)| {
                let ch = p % c;
                let mu = st.mean[ch] as f64;
                let k = gam[ch] as f64 * inv[ch] / m;
                let (db, dg) = sums[ch];
                let o = p * hw;
                for (j, dv) in d.iter_mut().enumerate() {
                    let xhat = (xs[o + j] as f64 - mu) * inv[ch];
                    *dv = (k * (m * gs[o + j] as f64 - db - xhat * dg)) as f32;
                }
            });
            Some(Tensor::from_vec(dx, (n, c, h, w), x.device())?)
        } else {
            None
        };
        let dgamma = Tensor::from_vec(
            sums.iter().map(|s| s.1 as f32).collect::<Vec<_>>(),
            c,
            x.device(),
        )?;
        let dbeta = Tensor::from_vec(
            sums.iter().map(|s| s.0 as f32).collect::<Vec<_>>(),
            c,
            x.device(),
        )?;
        Ok((gx, Some(dgamma), Some(dbeta)))
    }
}

/// Training-mode BatchNorm of `x` `[N, C, H, W]` with `gamma`, `beta` `[C]` on the CPU:
/// the output (differentiable in all three) and the batch statistics. `None` off the CPU or
/// for other dtypes (the caller then uses candle ops).
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<Option<(Tensor, BatchStats)>> {
    if !(x.device().is_cpu() && x.dtype() == candle_core::DType::F32) {
        return Ok(None);
    }
    let stats = Arc::new(Mutex::new(None));
    let y = x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        BatchNormTrain {
            eps,
            stats: stats.clone(),
        },
    )?;
    let st = stats.lock().ok().and_then(|g| g.clone()).ok_or_else(|| {
        candle_core::Error::Msg("batch norm: statistics were not recorded".into())
    })?;
    Ok(Some((y, st)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64, lo: f32, hi: f32) -> Tensor {
        let mut r = crate::rng::SeededRng::new(seed);
        let n: usize = shape.iter().product();
        Tensor::from_vec(r.uniform_vec(n, lo, hi), shape, &Device::Cpu).unwrap()
    }

    fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Training-mode BatchNorm from candle ops, as the model computed it before.
    fn reference(x: &Tensor, g: &Tensor, b: &Tensor) -> Tensor {
        let c = g.dim(0).unwrap();
        let mean = x
            .mean_keepdim(0)
            .unwrap()
            .mean_keepdim(2)
            .unwrap()
            .mean_keepdim(3)
            .unwrap();
        let cen = x.broadcast_sub(&mean).unwrap();
        let var = cen
            .sqr()
            .unwrap()
            .mean_keepdim(0)
            .unwrap()
            .mean_keepdim(2)
            .unwrap()
            .mean_keepdim(3)
            .unwrap();
        let inv = var
            .affine(1.0, 1e-5)
            .unwrap()
            .sqrt()
            .unwrap()
            .recip()
            .unwrap();
        cen.broadcast_mul(
            &inv.broadcast_mul(&g.reshape((1, c, 1, 1)).unwrap())
                .unwrap(),
        )
        .unwrap()
        .broadcast_add(&b.reshape((1, c, 1, 1)).unwrap())
        .unwrap()
    }

    #[test]
    fn train_mode_matches_candle_ops_forward_and_backward() {
        let x = Var::from_tensor(&rand(&[3, 4, 5, 6], 1, -2.0, 3.0)).unwrap();
        let g = Var::from_tensor(&rand(&[4], 2, 0.5, 1.5)).unwrap();
        let b = Var::from_tensor(&rand(&[4], 3, -1.0, 1.0)).unwrap();
        let (ours, st) = batch_norm_train(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5)
            .unwrap()
            .unwrap();
        let theirs = reference(x.as_tensor(), g.as_tensor(), b.as_tensor());
        assert!(max_abs(&ours, &theirs) < 1e-5);
        let mean: Vec<f32> = x
            .as_tensor()
            .mean_keepdim(0)
            .unwrap()
            .mean_keepdim(2)
            .unwrap()
            .mean_keepdim(3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in st.mean.iter().zip(&mean) {
            assert!((a - b).abs() < 1e-5);
        }
        let probe = rand(&[3, 4, 5, 6], 4, -1.0, 1.0);
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
        for v in [&x, &g, &b] {
            let d = max_abs(
                g1.get(v.as_tensor()).unwrap(),
                g2.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-4, "{d}");
        }
    }

    #[test]
    fn affine_forward_and_input_gradient() {
        let x = Var::from_tensor(&rand(&[2, 3, 4, 4], 5, -1.0, 1.0)).unwrap();
        let s = Tensor::new(&[0.5f32, -2.0, 3.0], &Device::Cpu).unwrap();
        let t = Tensor::new(&[1.0f32, 0.0, -1.0], &Device::Cpu).unwrap();
        let y = channel_affine(x.as_tensor(), &s, &t).unwrap();
        let want = x
            .as_tensor()
            .broadcast_mul(&s.reshape((1, 3, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&t.reshape((1, 3, 1, 1)).unwrap())
            .unwrap();
        assert!(max_abs(&y, &want) < 1e-6);
        let probe = rand(&[2, 3, 4, 4], 6, -1.0, 1.0);
        let gx = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let want = probe
            .broadcast_mul(&s.reshape((1, 3, 1, 1)).unwrap())
            .unwrap();
        assert!(max_abs(gx.get(x.as_tensor()).unwrap(), &want) < 1e-6);
    }
}
