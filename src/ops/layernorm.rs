//! LayerNorm over the last dimension as one custom op: one pass per row forward, one pass
//! backward for the input gradient and the weight and bias gradients (each only when
//! autograd needs it). candle differentiates a LayerNorm written in tensor ops through nine
//! nodes, each allocating a full-size tensor forward and backward.
//!
//! The weight and bias gradients sum over rows in fixed blocks, in order, so the result does
//! not depend on the thread count.

use super::on_cpu_f32;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows per block of the weight-gradient reduction.
const BLOCK: usize = 64;

fn f32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    super::cpu_f32(s, l, "layer_norm", what)
}

/// Mean and 1 / sqrt(var + eps) of a row (biased variance, as torch).
fn stats(row: &[f32], eps: f32) -> (f32, f32) {
    let d = row.len() as f32;
    let mean = row.iter().sum::<f32>() / d;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d;
    (mean, 1.0 / (var + eps).sqrt())
}

fn dims(l1: &Layout, l2: &Layout, l3: &Layout) -> Result<(usize, usize)> {
    let d = *l1.dims().last().unwrap_or(&0);
    if d == 0 || l2.dims() != [d] || l3.dims() != [d] {
        candle_core::bail!(
            "layer_norm: input {:?}, weight {:?}, bias {:?}",
            l1.dims(),
            l2.dims(),
            l3.dims()
        )
    }
    Ok((l1.shape().elem_count() / d, d))
}

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "robustlens-layer-norm"
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
        let (x, w, b) = (
            f32s(s1, l1, "input")?,
            f32s(s2, l2, "weight")?,
            f32s(s3, l3, "bias")?,
        );
        let (_, d) = dims(l1, l2, l3)?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
            let (mean, rstd) = stats(x, self.eps);
            for (((y, x), w), b) in y.iter_mut().zip(x).zip(w).zip(b) {
                *y = (x - mean) * rstd * w + b;
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (tx, tw, tb) = (x.track_op(), w.track_op(), b.track_op());
        if !tx && !tw && !tb {
            return Ok((None, None, None));
        }
        let d = w.dims()[0];
        let rows = x.elem_count() / d;
        let g = grad.contiguous()?;
        let all = g.apply_op3_no_bwd(x, w, &LayerNormGrad { eps: self.eps })?;
        let dx = all.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = all.narrow(0, rows, 1)?.reshape(d)?;
        let db = all.narrow(0, rows + 1, 1)?.reshape(d)?;
        Ok((tx.then_some(dx), tw.then_some(dw), tb.then_some(db)))
    }
}

/// (output gradient, input, weight) -> `[rows + 2, D]`: the input gradient's rows, then the
/// weight gradient, then the bias gradient.
struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "robustlens-layer-norm-grad"
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
        let (g, x, w) = (
            f32s(s1, l1, "gradient")?,
            f32s(s2, l2, "input")?,
            f32s(s3, l3, "weight")?,
        );
        if l1.dims() != l2.dims() {
            candle_core::bail!(
                "layer_norm backward: gradient {:?} vs input {:?}",
                l1.dims(),
                l2.dims()
            )
        }
        let (rows, d) = dims(l2, l3, l3)?;
        let mut out = vec![0f32; (rows + 2) * d];
        let (dx, rest) = out.split_at_mut(rows * d);
        // Input gradient, row by row; per block of rows the partial weight and bias sums.
        let partial: Vec<Vec<f32>> = dx
            .par_chunks_mut(BLOCK * d)
            .zip(x.par_chunks(BLOCK * d).zip(g.par_chunks(BLOCK * d)))
            .map(|(dxb, (xb, gb))| {
                let mut acc = vec![0f32; 2 * d];
                for ((dx, x), g) in dxb.chunks_mut(d).zip(xb.chunks(d)).zip(gb.chunks(d)) {
                    let (mean, rstd) = stats(x, self.eps);
                    let (mut m1, mut m2) = (0f32, 0f32);
                    for ((x, g), w) in x.iter().zip(g).zip(w) {
                        let xh = (x - mean) * rstd;
                        m1 += g * w;
                        m2 += g * w * xh;
                    }
                    let (m1, m2) = (m1 / d as f32, m2 / d as f32);
                    for (j, ((dx, x), g)) in dx.iter_mut().zip(x).zip(g).enumerate() {
                        let xh = (x - mean) * rstd;
                        *dx = rstd * (g * w[j] - m1 - xh * m2);
                        acc[j] += g * xh;
                        acc[d + j] += g;
                    }
                }
                acc
            })
            .collect();
        for p in &partial {
            for (r, v) in rest.iter_mut().zip(p) {
                *r += v;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, d))))
    }
}

/// LayerNorm of `x` over its last dimension with `weight` and `bias` (`[D]`), differentiable
/// in all three, when [`on_cpu_f32`]; `None` otherwise (the caller composes it from tensor
/// ops).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    if !on_cpu_f32(&[x, weight, bias]) {
        return Ok(None);
    }
    let y = x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNorm { eps: eps as f32 },
    )?;
    Ok(Some(y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn composed(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Tensor {
        let mean = x.mean_keepdim(D::Minus1).unwrap();
        let xc = x.broadcast_sub(&mean).unwrap();
        let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let xn = xc
            .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
            .unwrap();
        xn.broadcast_mul(w).unwrap().broadcast_add(b).unwrap()
    }

    /// Forward and the three gradients equal the composition of candle ops, over more rows
    /// than one block.
    #[test]
    fn matches_the_composed_layer_norm() {
        let dev = Device::Cpu;
        let var = |s: &[usize], m: f64| {
            Var::from_tensor(
                &(Tensor::randn(0f32, 1.0, s, &dev).unwrap() * m)
                    .unwrap()
                    .affine(1.0, 0.3)
                    .unwrap(),
            )
            .unwrap()
        };
        let (x, w, b) = (var(&[3, 50, 24], 2.0), var(&[24], 0.5), var(&[24], 0.5));
        let r = Tensor::randn(0f32, 1.0, (3, 50, 24), &dev).unwrap();
        let ours = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-6)
            .unwrap()
            .unwrap();
        let refr = composed(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-6);
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        assert!(diff(&ours, &refr) < 1e-5);
        let g1 = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&refr * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [x.as_tensor(), w.as_tensor(), b.as_tensor()] {
            let e = diff(g1.get(v).unwrap(), g2.get(v).unwrap());
            assert!(e < 1e-4, "gradient differs by {e}");
        }
        // Constant weights: no gradient for them.
        let y = layer_norm(
            x.as_tensor(),
            &w.as_tensor().detach(),
            &b.as_tensor().detach(),
            1e-6,
        )
        .unwrap()
        .unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(x.as_tensor()).is_some() && g.get(w.as_tensor()).is_none());
    }
}
