//! A whole eval-mode residual block (ResNet's BasicBlock with its BatchNorms folded) as one
//! candle custom op, for the passes that run the model with constant parameters (inference,
//! attacks, saliency).
//!
//! As one node, the block's backward is four convolution input gradients, two ReLU masks and
//! one residual sum on plain buffers, with one gradient handed back to candle (as separate
//! nodes, each of the block's tensors would get a gradient tensor of its own in candle's
//! store).

use super::conv::{
    conv_forward, conv_forward_each, conv_input_grad, geometry, Epilogue, Geometry, PlaneFn,
};
use super::maxpool::PlanePool;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// A convolution followed by a folded BatchNorm: `conv(x, weight) * scale[o] + shift[o]`,
/// all constants.
#[derive(Clone)]
pub struct FoldedConv {
    /// `[O, C, K, K]`, square kernel.
    pub weight: Tensor,
    pub stride: usize,
    pub padding: usize,
    /// `[O]`, f32, on the weight's device (folded there: no copy to the host on a GPU).
    pub scale: Tensor,
    /// `[O]`, f32, on the weight's device.
    pub shift: Tensor,
}

/// A [`FoldedConv`] with its scale and shift read on the host, for the CPU ops.
#[derive(Clone)]
struct HostConv {
    weight: Tensor,
    stride: usize,
    padding: usize,
    scale: Arc<Vec<f32>>,
    shift: Arc<Vec<f32>>,
}

impl HostConv {
    fn new(f: &FoldedConv) -> Result<HostConv> {
        // constant for the pass: inside a frozen-weights scope, derived once per scope
        super::frozen::pin(&f.weight);
        Ok(HostConv {
            weight: f.weight.clone(),
            stride: f.stride,
            padding: f.padding,
            scale: Arc::new(f.scale.to_vec1::<f32>()?),
            shift: Arc::new(f.shift.to_vec1::<f32>()?),
        })
    }

    fn epilogue(&self, relu: bool) -> Epilogue {
        Epilogue {
            scale: Some(self.scale.clone()),
            shift: Some(self.shift.clone()),
            relu,
        }
    }

    /// `act(conv(x) * scale + shift + res)` in geometry `g` (weights read in place).
    fn run(&self, x: &[f32], g: &Geometry, relu: bool, res: Option<&[f32]>) -> Result<Vec<f32>> {
        let epi = self.epilogue(relu);
        super::with_cpu_f32(&self.weight, "residual block", "weight", |w| {
            Ok(conv_forward(x, w, g, &epi, res))
        })
    }

    /// `relu(conv(x) * scale + shift)`, each output plane handed to `post` as it is finished
    /// (see [`conv_forward_each`]); the full output is not kept.
    fn run_each(&self, x: &[f32], g: &Geometry, post: &PlaneFn) -> Result<()> {
        let epi = self.epilogue(true);
        super::with_cpu_f32(&self.weight, "residual block", "weight", |w| {
            conv_forward_each(x, w, g, &epi, None, Some(post));
            Ok(())
        })
    }

    /// The input gradient from the gradient `gz` of `conv(x) * scale` (before shift and
    /// activation) in geometry `g`.
    fn input_grad(&self, gz: &[f32], g: &Geometry) -> Result<Vec<f32>> {
        super::with_cpu_f32(&self.weight, "residual block", "weight", |w| {
            Ok(conv_input_grad(gz, w, g, Some(self.scale.as_slice())))
        })
    }

    fn geometry(&self, input: &Shape) -> Result<Geometry> {
        geometry(input, self.weight.shape(), self.stride, self.padding)
    }

    /// Output shape for `input`.
    fn out_shape(&self, input: &Shape) -> Result<Shape> {
        Ok(self.geometry(input)?.out_shape())
    }
}

/// `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`, shortcut `bn(conv(x))` or `x`.
struct Block {
    conv1: HostConv,
    conv2: HostConv,
    down: Option<HostConv>,
    /// The inner activation `relu(bn1(conv1(x)))`, kept for the backward.
    inner: Mutex<Option<Arc<Vec<f32>>>>,
}

impl CustomOp1 for Block {
    fn name(&self) -> &'static str {
        "robustlens-basic-block"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32(s, l, "residual block", "input")?;
        let g1 = self.conv1.geometry(l.shape())?;
        let h_shape = self.conv1.out_shape(l.shape())?;
        let g2 = self.conv2.geometry(&h_shape)?;
        let out_shape = self.conv2.out_shape(&h_shape)?;
        let h = self.conv1.run(x, &g1, true, None)?;
        let shortcut = match &self.down {
            Some(d) => {
                let gd = d.geometry(l.shape())?;
                if d.out_shape(l.shape())? != out_shape {
                    candle_core::bail!("residual block: shortcut shape does not match");
                }
                Some(d.run(x, &gd, false, None)?)
            }
            None => {
                if l.shape() != &out_shape {
                    candle_core::bail!(
                        "residual block: identity shortcut needs the output shape {out_shape:?}, \
                         input is {:?}",
                        l.shape()
                    );
                }
                None
            }
        };
        let res = shortcut.as_deref().unwrap_or(x);
        let y = self.conv2.run(&h, &g2, true, Some(res))?;
        if let Ok(mut guard) = self.inner.lock() {
            *guard = Some(Arc::new(h));
        }
        Ok((CpuStorage::F32(y), out_shape))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if !arg.track_op() {
            return Ok(None);
        }
        let op = BlockGrad {
            conv1: self.conv1.clone(),
            conv2: self.conv2.clone(),
            down: self.down.clone(),
            inner: super::kept(&self.inner, "residual block: the inner activation")?,
            x_shape: arg.shape().clone(),
        };
        Ok(Some(
            grad.contiguous()?
                .apply_op2_no_bwd(&res.contiguous()?, &op)?,
        ))
    }
}

/// The block's input gradient from its output gradient and its output.
struct BlockGrad {
    conv1: HostConv,
    conv2: HostConv,
    down: Option<HostConv>,
    /// The forward's inner activation.
    inner: Arc<Vec<f32>>,
    x_shape: Shape,
}

impl CustomOp2 for BlockGrad {
    fn name(&self) -> &'static str {
        "robustlens-basic-block-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let grad = super::cpu_f32(s1, l1, "residual block backward", "gradient")?;
        let y = super::cpu_f32(s2, l2, "residual block backward", "output")?;
        let g1 = self.conv1.geometry(&self.x_shape)?;
        let h_shape = self.conv1.out_shape(&self.x_shape)?;
        let g2 = self.conv2.geometry(&h_shape)?;
        if grad.len() != y.len() || self.inner.len() != h_shape.elem_count() {
            candle_core::bail!("residual block backward: shapes do not match the forward");
        }
        let gz2 = super::act::masked(grad, y);
        let mut dh = self.conv2.input_grad(&gz2, &g2)?;
        super::act::zero_where_not_positive(&mut dh, &self.inner);
        let mut dx = self.conv1.input_grad(&dh, &g1)?;
        let short = match &self.down {
            Some(d) => d.input_grad(&gz2, &d.geometry(&self.x_shape)?)?,
            None => gz2,
        };
        dx.par_chunks_mut(1 << 14)
            .zip(short.par_chunks(1 << 14))
            .for_each(|(d, s)| {
                for (d, s) in d.iter_mut().zip(s) {
                    *d += s;
                }
            });
        Ok((CpuStorage::F32(dx), self.x_shape.clone()))
    }
}

/// A BasicBlock with folded BatchNorms, differentiable in `x` only. On the CPU in f32 one
/// custom op; elsewhere the same arithmetic from [`super::conv2d_fused`].
pub fn basic_block_folded(
    x: &Tensor,
    conv1: &FoldedConv,
    conv2: &FoldedConv,
    down: Option<&FoldedConv>,
) -> Result<Tensor> {
    let mut ws = vec![&conv1.weight, &conv2.weight];
    ws.extend(down.map(|d| &d.weight));
    if super::on_cpu_f32(&[x]) && super::on_cpu_f32(&ws) && ws.iter().all(|w| w.is_contiguous()) {
        return x.contiguous()?.apply_op1(Block {
            conv1: HostConv::new(conv1)?,
            conv2: HostConv::new(conv2)?,
            down: down.map(HostConv::new).transpose()?,
            inner: Mutex::new(None),
        });
    }
    let h = super::conv2d_fused(
        x,
        &conv1.weight.detach(),
        conv1.stride,
        conv1.padding,
        Some((&conv1.scale, &conv1.shift)),
        None,
        true,
    )?;
    let shortcut = match down {
        Some(d) => super::conv2d_fused(
            x,
            &d.weight.detach(),
            d.stride,
            d.padding,
            Some((&d.scale, &d.shift)),
            None,
            false,
        )?,
        None => x.clone(),
    };
    super::conv2d_fused(
        &h,
        &conv2.weight.detach(),
        conv2.stride,
        conv2.padding,
        Some((&conv2.scale, &conv2.shift)),
        Some(&shortcut),
        true,
    )
}

/// `max_pool(relu(bn(conv(x))))`: ResNet's stem with its BatchNorm folded.
struct Stem {
    conv: HostConv,
    pool: (usize, usize, usize),
    /// Whether the input takes part in autograd (else no argmax is recorded).
    need_grad: bool,
    /// Per pooled output, the winner's index in its plane of the convolution output.
    argmax: Mutex<Option<Arc<Vec<u32>>>>,
}

impl CustomOp1 for Stem {
    fn name(&self) -> &'static str {
        "robustlens-stem"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32(s, l, "stem", "input")?;
        let g = self.conv.geometry(l.shape())?;
        let (k, st, p) = self.pool;
        // each convolution plane is pooled as soon as it is finished, while in the cache
        let pool = PlanePool::new((g.ho, g.wo), k, st, p)?;
        let plane = pool.ho * pool.wo;
        let mut out = vec![0f32; g.n * g.o * plane];
        let mut idx = self.need_grad.then(|| vec![0u32; out.len()]);
        let (out_ptr, idx_ptr) = (
            super::SendPtr(out.as_mut_ptr()),
            idx.as_mut().map(|v| super::SendPtr(v.as_mut_ptr())),
        );
        self.conv.run_each(x, &g, &|i, y| {
            // SAFETY: plane i of the output (and of the argmax) is written by this call only;
            // both buffers hold n * o planes and outlive the convolution.
            let (o, ix) = unsafe {
                (
                    out_ptr.slice(i * plane, plane),
                    idx_ptr.map(|q| q.slice(i * plane, plane)),
                )
            };
            pool.run(y, o, ix)
        })?;
        if let (Some(idx), Ok(mut guard)) = (idx, self.argmax.lock()) {
            *guard = Some(Arc::new(idx));
        }
        Ok((
            CpuStorage::F32(out),
            Shape::from((g.n, g.o, pool.ho, pool.wo)),
        ))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if !arg.track_op() {
            return Ok(None);
        }
        let op = StemGrad {
            conv: self.conv.clone(),
            argmax: super::kept(&self.argmax, "stem: argmax")?,
            x_shape: arg.shape().clone(),
        };
        Ok(Some(
            grad.contiguous()?
                .apply_op2_no_bwd(&res.contiguous()?, &op)?,
        ))
    }
}

/// The stem's input gradient from the gradient and value of its pooled output.
struct StemGrad {
    conv: HostConv,
    argmax: Arc<Vec<u32>>,
    x_shape: Shape,
}

impl CustomOp2 for StemGrad {
    fn name(&self) -> &'static str {
        "robustlens-stem-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let grad = super::cpu_f32(s1, l1, "stem backward", "gradient")?;
        let out = super::cpu_f32(s2, l2, "stem backward", "output")?;
        let g = self.conv.geometry(&self.x_shape)?;
        let (_, _, ph, pw) = l1.shape().dims4()?;
        if grad.len() != out.len() || self.argmax.len() != grad.len() {
            candle_core::bail!("stem backward: shapes do not match the forward");
        }
        // through the pooling and the ReLU in one pass, then the convolution
        let dy = super::maxpool::pool_backward(grad, &self.argmax, g.hw_out(), ph * pw, Some(out));
        let dx = self.conv.input_grad(&dy, &g)?;
        Ok((CpuStorage::F32(dx), self.x_shape.clone()))
    }
}

/// ResNet's stem, `max_pool(relu(bn(conv(x))), kernel, stride, padding)` with the BatchNorm
/// folded, differentiable in `x` only: on the CPU in f32 one custom op that never keeps the
/// full-resolution activation; elsewhere candle ops.
pub fn stem_folded(x: &Tensor, conv: &FoldedConv, pool: (usize, usize, usize)) -> Result<Tensor> {
    if super::on_cpu_f32(&[x, &conv.weight]) && conv.weight.is_contiguous() {
        return x.contiguous()?.apply_op1(Stem {
            conv: HostConv::new(conv)?,
            pool,
            need_grad: x.track_op(),
            argmax: Mutex::new(None),
        });
    }
    let y = super::conv2d_fused(
        x,
        &conv.weight.detach(),
        conv.stride,
        conv.padding,
        Some((&conv.scale, &conv.shift)),
        None,
        true,
    )?;
    super::max_pool2d(&y, pool.0, pool.1, pool.2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{conv_bn_reference, max_rel, normal, probe_grads};
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        normal(shape, seed, 0.5)
    }

    fn folded(o: usize, c: usize, k: usize, stride: usize, seed: u64) -> FoldedConv {
        FoldedConv {
            weight: rand(&[o, c, k, k], seed),
            stride,
            padding: k / 2,
            scale: Tensor::from_iter((0..o).map(|i| 0.6 + 0.1 * i as f32), &Device::Cpu).unwrap(),
            shift: Tensor::from_iter((0..o).map(|i| 0.05 * i as f32 - 0.1), &Device::Cpu).unwrap(),
        }
    }

    /// The block from candle's own ops.
    fn reference(x: &Tensor, c1: &FoldedConv, c2: &FoldedConv, d: Option<&FoldedConv>) -> Tensor {
        let conv_bn = |x: &Tensor, f: &FoldedConv| {
            let host = |t: &Tensor| t.to_vec1::<f32>().unwrap();
            conv_bn_reference(
                x,
                &f.weight,
                f.stride,
                f.padding,
                &host(&f.scale),
                &host(&f.shift),
            )
        };
        let h = conv_bn(x, c1).relu().unwrap();
        let short = match d {
            Some(d) => conv_bn(x, d),
            None => x.clone(),
        };
        (conv_bn(&h, c2) + short).unwrap().relu().unwrap()
    }

    #[test]
    fn block_matches_candle_ops_forward_and_input_gradient() {
        // identity shortcut (stride 1) and downsampling shortcut (stride 2, 1x1 conv)
        // and 3x3 stride-1 layers wide enough for the direct kernel (both input-gradient paths)
        for (n, c, o, h, stride) in [
            (3, 4, 4, 8, 1),
            (2, 3, 6, 9, 2),
            (2, 16, 16, 8, 1),
            (4, 8, 8, 12, 1),
            (2, 64, 64, 8, 1),
        ] {
            let x = Var::from_tensor(&rand(&[n, c, h, h], 1)).unwrap();
            let c1 = folded(o, c, 3, stride, 2);
            let c2 = folded(o, o, 3, 1, 3);
            let d = (stride != 1 || c != o).then(|| folded(o, c, 1, stride, 4));
            let ours = basic_block_folded(x.as_tensor(), &c1, &c2, d.as_ref()).unwrap();
            let theirs = reference(x.as_tensor(), &c1, &c2, d.as_ref());
            // relative: the wider layers sum 144 products per output, in another order
            assert!(
                max_rel(&ours, &theirs) < 1e-6,
                "forward {n} {c} {o} {h} {stride}: {}",
                max_rel(&ours, &theirs)
            );
            let probe = rand(ours.dims(), 5);
            let g1 = probe_grads(ours, &probe);
            let g2 = probe_grads(theirs, &probe);
            let (a, b) = (
                g1.get(x.as_tensor()).unwrap(),
                g2.get(x.as_tensor()).unwrap(),
            );
            assert!(
                max_rel(a, b) < 1e-6,
                "input gradient {n} {c} {o} {h} {stride}: {}",
                max_rel(a, b)
            );
            // constant weights: no gradient anywhere else
            assert!(g1.get(&c1.weight).is_none());
        }
    }

    #[test]
    fn stem_matches_candle_ops_forward_and_input_gradient() {
        // 7x7 stride 2 padding 3, then 3x3 stride 2 padding 1 pooling, as ResNet; odd sizes.
        // the direct kernel forward on AVX2 machines (5 and 16 channels, outputs 10 and 12
        // wide) pooling each plane as it is finished; im2col, then pooling, below 7 wide (11
        // px); input gradient through im2col and col2im
        for (o, h) in [(5, 19), (16, 19), (16, 24), (6, 11)] {
            let x = Var::from_tensor(&rand(&[2, 3, h, h], 7)).unwrap();
            let conv = FoldedConv {
                padding: 3,
                ..folded(o, 3, 7, 2, 8)
            };
            let g = HostConv::new(&conv).unwrap().geometry(x.shape()).unwrap();
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("avx2") {
                assert_eq!(crate::ops::direct::usable(&g), h > 11, "{g:?}");
            }
            let ours = stem_folded(x.as_tensor(), &conv, (3, 2, 1)).unwrap();
            let s = conv.scale.reshape((1, o, 1, 1)).unwrap();
            let b = conv.shift.reshape((1, o, 1, 1)).unwrap();
            // our plain conv op (tested against candle's and finite differences elsewhere)
            let y = crate::ops::conv2d(x.as_tensor(), &conv.weight, 2, 3)
                .unwrap()
                .broadcast_mul(&s)
                .unwrap()
                .broadcast_add(&b)
                .unwrap()
                .relu()
                .unwrap();
            let theirs = crate::ops::maxpool::max_pool2d_generic(&y, 3, 2, 1).unwrap();
            let side = crate::ops::maxpool::pooled_size(g.ho, 3, 2, 1);
            assert_eq!(ours.dims(), &[2, o, side, side]);
            assert!(
                max_rel(&ours, &theirs) < 1e-6,
                "{}",
                max_rel(&ours, &theirs)
            );
            let probe = rand(ours.dims(), 9);
            let g1 = probe_grads(ours, &probe);
            let g2 = probe_grads(theirs, &probe);
            let d = max_rel(
                g1.get(x.as_tensor()).unwrap(),
                g2.get(x.as_tensor()).unwrap(),
            );
            assert!(d < 1e-6, "{o} {h}: {d}");
        }
    }

    #[test]
    fn mismatched_identity_shortcut_is_an_error() {
        let x = rand(&[1, 3, 6, 6], 1);
        let c1 = folded(5, 3, 3, 1, 2);
        let c2 = folded(5, 5, 3, 1, 3);
        let err = basic_block_folded(&x, &c1, &c2, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("identity shortcut"), "{err}");
    }
}
