//! BatchNorm as two fused CPU kernels (one pass over the data each way instead of candle's
//! chain of broadcast ops, each allocating a full-size tensor):
//!
//! - [`channel_affine`]: `y = x * scale[c] + shift[c]` with only the input gradient
//!   (`g * scale[c]`), for eval mode with detached parameters (attacks, saliency, evaluation),
//!   where BatchNorm folds into one affine map per channel.
//! - [`batch_norm_train`]: training-mode BatchNorm over (N, H, W) per channel with the full
//!   backward: dbeta = sum g, dgamma = sum g * xhat, dx = gamma * inv / M * (M g - dbeta -
//!   xhat dgamma). It also returns the batch mean and biased variance for the running
//!   statistics.
//!
//! Both are parallel over channels and fall back to candle ops off the CPU. On CUDA with the
//! `cudnn` feature, [`batch_norm_train_cudnn`] runs training mode through cuDNN (the
//! residual and ReLU then as separate ops).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use super::SendPtr;

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

/// `y = x * scale[c] + shift[c]` for `x` `[N, C, H, W]`; differentiable in `x` only (scale and
/// shift are constants).
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    let c = x.dim(1)?;
    if super::on_cpu_f32(&[x]) {
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
    relu: bool,
    stats: Arc<Mutex<Option<BatchStats>>>,
    /// The forward's per-channel `(scale, shift)` in f32, as it applied them: without a
    /// residual, the backward recomputes the ReLU's gate `x scale + shift > 0` from the input
    /// (the same operations, so the same bits) instead of reading the output.
    affine: Arc<Mutex<Option<ScaleShift>>>,
}

/// Per channel, the `(scale, shift)` the forward applied.
type ScaleShift = Vec<(f32, f32)>;

/// How the gradient reaching the BatchNorm output is gated by the fused ReLU: not at all
/// (no ReLU), by the output (`y <= 0`: the ReLU after a residual), or by the input (`x a + b
/// <= 0`, the forward's own operations, recomputed: one tensor less to read in both passes).
const OPEN: u8 = 0;
const BY_OUTPUT: u8 = 1;
const BY_INPUT: u8 = 2;

/// The sum of `f(v)` over `xs` in f64, in four independent partial sums (so that the additions
/// pipeline and vectorise instead of waiting on one another).
#[inline(always)]
fn lanes_sum(xs: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0f64; 4];
    let mut chunks = xs.chunks_exact(4);
    for c in &mut chunks {
        for l in 0..4 {
            acc[l] += f(c[l]);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v)).sum();
    acc.iter().sum::<f64>() + tail
}

/// The gradient that reaches the BatchNorm output: `g`, or 0 where the fused ReLU was off
/// ([`BY_OUTPUT`]: `y <= 0`; [`BY_INPUT`]: `x a + b` not positive, `(a, b)` the forward's
/// scale and shift; `y = max(x a + b, 0)` is then 0, a NaN included).
#[inline(always)]
fn gate<const GATE: u8>(g: f32, y: f32, x: f32, (a, b): (f32, f32)) -> f32 {
    let off = match GATE {
        BY_OUTPUT => y <= 0.0,
        BY_INPUT => {
            let v = x * a + b;
            v <= 0.0 || v.is_nan()
        }
        _ => false,
    };
    if off {
        0.0
    } else {
        g
    }
}

/// `(sum gz, sum gz (x - mu))` over one plane, `gz = gate(g, y)`: eight f32 lanes over blocks
/// of at most 512 values, each block's total added in f64 (with AVX2 the lanes are one
/// vector: `avx2::grad_sums`).
#[inline(always)]
fn grad_sums<const GATE: u8>(
    g: &[f32],
    y: &[f32],
    x: &[f32],
    (mu, ab): (f32, (f32, f32)),
) -> (f64, f64) {
    let (mut t1, mut t2) = (0f64, 0f64);
    let n = g.len().min(y.len()).min(x.len());
    for b in (0..n).step_by(512) {
        let e = (b + 512).min(n);
        let (g, y, x) = (&g[b..e], &y[b..e], &x[b..e]);
        let (mut a1, mut a2) = ([0f32; 8], [0f32; 8]);
        let mut gc = g.chunks_exact(8);
        let mut yc = y.chunks_exact(8);
        let mut xc = x.chunks_exact(8);
        for ((g, y), x) in (&mut gc).zip(&mut yc).zip(&mut xc) {
            for l in 0..8 {
                let v = gate::<GATE>(g[l], y[l], x[l], ab);
                a1[l] += v;
                a2[l] += v * (x[l] - mu);
            }
        }
        for ((&g, &y), &x) in gc
            .remainder()
            .iter()
            .zip(yc.remainder())
            .zip(xc.remainder())
        {
            let v = gate::<GATE>(g, y, x, ab);
            a1[0] += v;
            a2[0] += v * (x - mu);
        }
        t1 += a1.iter().map(|&v| v as f64).sum::<f64>();
        t2 += a2.iter().map(|&v| v as f64).sum::<f64>();
    }
    (t1, t2)
}

/// One plane's input gradient `a gz + b (x - mu) + c0` (`[a, b, c0, mu]`) and/or the gated
/// gradient `gz` itself (the residual's gradient), every element written.
#[inline(always)]
fn plane_grads<const GATE: u8>(
    (g, y, x): (&[f32], &[f32], &[f32]),
    ([a, b, c0, mu], ab): ([f32; 4], (f32, f32)),
    dx: Option<&mut [MaybeUninit<f32>]>,
    gz: Option<&mut [MaybeUninit<f32>]>,
) {
    if let Some(dx) = dx {
        for (((d, &g), &y), &x) in dx.iter_mut().zip(g).zip(y).zip(x) {
            d.write(a * gate::<GATE>(g, y, x, ab) + b * (x - mu) + c0);
        }
    }
    if let Some(gz) = gz {
        for (((d, &g), &y), &x) in gz.iter_mut().zip(g).zip(y).zip(x) {
            d.write(gate::<GATE>(g, y, x, ab));
        }
    }
}

/// Runs `f` on a CPU tensor's f32 values, read in place.
fn with_values<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    super::with_cpu_f32(t, "batch norm", what, f)
}

/// Mean and biased variance of channel `ch` of `x` (`[n, c, hw]`), in f64, two passes.
#[inline(always)]
fn channel_stats(x: &[f32], (n, c, hw): (usize, usize, usize), ch: usize) -> (f64, f64) {
    // plain loops, no iterator adapters: those would stay outside the AVX2 copy
    let m = (n * hw) as f64;
    let plane = |i: usize| &x[(i * c + ch) * hw..][..hw];
    let mut s = 0f64;
    for i in 0..n {
        s += lanes_sum(plane(i), |v| v as f64);
    }
    let mean = s / m;
    let mut q = 0f64;
    for i in 0..n {
        q += lanes_sum(plane(i), |v| {
            let d = v as f64 - mean;
            d * d
        });
    }
    (mean, q / m)
}

/// One output plane of the forward, every element written: `act(x * a + b + r)`.
#[inline(always)]
fn normalize_plane(
    o: &mut [MaybeUninit<f32>],
    xs: &[f32],
    r: Option<&[f32]>,
    (a, b): (f32, f32),
    relu: bool,
) {
    match r {
        Some(rs) => {
            for ((o, x), r) in o.iter_mut().zip(xs).zip(rs) {
                let v = x * a + b + r;
                o.write(if relu { v.max(0.0) } else { v });
            }
        }
        None => {
            for (o, x) in o.iter_mut().zip(xs) {
                // `gate::<BY_INPUT>` recomputes this `v`
                let v = x * a + b;
                o.write(if relu { v.max(0.0) } else { v });
            }
        }
    }
}

/// `(S1, S2)` of channel `ch` over the images: `plane` (`(g, y, x, mu)` to the plane's sums,
/// [`grad_sums`] or its AVX2 form) per plane, added in image order.
#[inline(always)]
fn channel_grad_sums(
    (gs, ys, xs): (&[f32], &[f32], &[f32]),
    (n, c, hw): (usize, usize, usize),
    ch: usize,
    coef: (f32, (f32, f32)),
    plane: impl Fn(&[f32], &[f32], &[f32], (f32, (f32, f32))) -> (f64, f64),
) -> (f64, f64) {
    let (mut a, mut b) = (0f64, 0f64);
    for i in 0..n {
        let r = (i * c + ch) * hw..(i * c + ch + 1) * hw;
        let (s1, s2) = plane(&gs[r.clone()], &ys[r.clone()], &xs[r], coef);
        a += s1;
        b += s2;
    }
    (a, b)
}

/// The element loops of the training-mode kernels compiled for AVX2 where the CPU has it
/// (eight f32 or four f64 lanes instead of SSE2's four or two): the same operations in the
/// same order, so the same bits (tested), in about half the instructions.
mod avx2 {
    use super::*;

    fn has() -> bool {
        super::super::layout::has_fma()
    }

    /// [`channel_stats`].
    pub(super) fn stats(x: &[f32], dims: (usize, usize, usize), ch: usize) -> (f64, f64) {
        #[cfg(target_arch = "x86_64")]
        if has() {
            #[target_feature(enable = "avx2")]
            unsafe fn go(x: &[f32], dims: (usize, usize, usize), ch: usize) -> (f64, f64) {
                channel_stats(x, dims, ch)
            }
            // SAFETY: AVX2 checked
            return unsafe { go(x, dims, ch) };
        }
        channel_stats(x, dims, ch)
    }

    /// [`normalize_plane`].
    pub(super) fn normalize(
        o: &mut [MaybeUninit<f32>],
        xs: &[f32],
        r: Option<&[f32]>,
        ab: (f32, f32),
        relu: bool,
    ) {
        #[cfg(target_arch = "x86_64")]
        if has() {
            #[target_feature(enable = "avx2")]
            unsafe fn go(
                o: &mut [MaybeUninit<f32>],
                xs: &[f32],
                r: Option<&[f32]>,
                ab: (f32, f32),
                relu: bool,
            ) {
                normalize_plane(o, xs, r, ab, relu)
            }
            // SAFETY: AVX2 checked
            return unsafe { go(o, xs, r, ab, relu) };
        }
        normalize_plane(o, xs, r, ab, relu)
    }

    /// [`channel_grad_sums`]; its eight lanes written out as AVX2 vectors (LLVM leaves the
    /// gated sums scalar), each lane's additions in the same order.
    pub(super) fn grad_sums<const GATE: u8>(
        v: (&[f32], &[f32], &[f32]),
        dims: (usize, usize, usize),
        ch: usize,
        coef: (f32, (f32, f32)),
    ) -> (f64, f64) {
        #[cfg(target_arch = "x86_64")]
        if has() {
            // SAFETY: AVX2 checked
            let plane = |g: &[f32], y: &[f32], x: &[f32], coef| unsafe {
                plane_sums::<GATE>(g, y, x, coef)
            };
            return channel_grad_sums(v, dims, ch, coef, plane);
        }
        channel_grad_sums(v, dims, ch, coef, super::grad_sums::<GATE>)
    }

    /// [`super::grad_sums`] over one plane with the lanes as AVX2 vectors: multiply, then add
    /// (no fused multiply-add), as the plain loop.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn plane_sums<const GATE: u8>(
        g: &[f32],
        y: &[f32],
        x: &[f32],
        (mu, ab): (f32, (f32, f32)),
    ) -> (f64, f64) {
        use std::arch::x86_64::*;
        let (mut t1, mut t2) = (0f64, 0f64);
        let n = g.len().min(y.len()).min(x.len());
        let (m, z) = (_mm256_set1_ps(mu), _mm256_setzero_ps());
        let (sa, sb) = (_mm256_set1_ps(ab.0), _mm256_set1_ps(ab.1));
        for b0 in (0..n).step_by(512) {
            let e = (b0 + 512).min(n);
            let full = b0 + (e - b0) / 8 * 8;
            let (mut a1, mut a2) = (z, z);
            for i in (b0..full).step_by(8) {
                // SAFETY: i + 8 <= full <= n, the length of all three
                let gv = _mm256_loadu_ps(g.as_ptr().add(i));
                let xv = _mm256_loadu_ps(x.as_ptr().add(i));
                let v = match GATE {
                    BY_OUTPUT => {
                        let yv = _mm256_loadu_ps(y.as_ptr().add(i));
                        _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(yv, z), gv)
                    }
                    BY_INPUT => {
                        // on where x a + b > 0 (mul, then add: the forward's operations)
                        let pre = _mm256_add_ps(_mm256_mul_ps(xv, sa), sb);
                        _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(pre, z), gv)
                    }
                    _ => gv,
                };
                let d = _mm256_sub_ps(xv, m);
                a1 = _mm256_add_ps(a1, v);
                a2 = _mm256_add_ps(a2, _mm256_mul_ps(v, d));
            }
            let (mut l1, mut l2) = ([0f32; 8], [0f32; 8]);
            _mm256_storeu_ps(l1.as_mut_ptr(), a1);
            _mm256_storeu_ps(l2.as_mut_ptr(), a2);
            for i in full..e {
                let v = gate::<GATE>(g[i], y[i], x[i], ab);
                l1[0] += v;
                l2[0] += v * (x[i] - mu);
            }
            t1 += l1.iter().map(|&v| v as f64).sum::<f64>();
            t2 += l2.iter().map(|&v| v as f64).sum::<f64>();
        }
        (t1, t2)
    }

    /// [`plane_grads`].
    pub(super) fn plane<const GATE: u8>(
        v: (&[f32], &[f32], &[f32]),
        coef: ([f32; 4], (f32, f32)),
        dx: Option<&mut [MaybeUninit<f32>]>,
        gz: Option<&mut [MaybeUninit<f32>]>,
    ) {
        #[cfg(target_arch = "x86_64")]
        if has() {
            #[target_feature(enable = "avx2")]
            unsafe fn go<const GATE: u8>(
                v: (&[f32], &[f32], &[f32]),
                coef: ([f32; 4], (f32, f32)),
                dx: Option<&mut [MaybeUninit<f32>]>,
                gz: Option<&mut [MaybeUninit<f32>]>,
            ) {
                plane_grads::<GATE>(v, coef, dx, gz)
            }
            // SAFETY: AVX2 checked
            return unsafe { go::<GATE>(v, coef, dx, gz) };
        }
        plane_grads::<GATE>(v, coef, dx, gz)
    }
}

impl BatchNormTrain {
    fn forward(
        &self,
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        res: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let x = contiguous(s1, l1, "input")?;
        let gb = contiguous(s2, l2, "weight and bias")?;
        if gb.len() != 2 * c {
            candle_core::bail!(
                "batch norm: {c} channels but {} weights and biases",
                gb.len()
            );
        }
        let (gamma, beta) = gb.split_at(c);
        let r = match res {
            Some((s, l)) => {
                if l.shape() != l1.shape() {
                    candle_core::bail!(
                        "batch norm: residual {:?} does not match the input {:?}",
                        l.shape(),
                        l1.shape()
                    );
                }
                Some(contiguous(s, l, "residual")?)
            }
            None => None,
        };
        let hw = h * w;
        // statistics per channel, in f64
        let stats: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| avx2::stats(x, (n, c, hw), ch))
            .collect();
        // per channel (scale, shift), kept for the backward's gate
        let affine: ScaleShift = (0..c)
            .map(|ch| {
                let a = (gamma[ch] as f64 / (stats[ch].1 + self.eps).sqrt()) as f32;
                (a, (beta[ch] as f64 - stats[ch].0 * a as f64) as f32)
            })
            .collect();
        // written without being zero-filled first (51 MB a step for the stem at 224 px)
        let mut out: Vec<f32> = Vec::with_capacity(x.len());
        let relu = self.relu;
        out.spare_capacity_mut()[..x.len()]
            .par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(p, (o, xs))| {
                let rs = r.map(|r| &r[p * hw..(p + 1) * hw]);
                avx2::normalize(o, xs, rs, affine[p % c], relu);
            });
        // SAFETY: `normalize` wrote every value of every plane of the x.len() values
        unsafe { out.set_len(x.len()) };
        if let Ok(mut a) = self.affine.lock() {
            *a = Some(affine);
        }
        if let Ok(mut g) = self.stats.lock() {
            *g = Some(BatchStats {
                mean: stats.iter().map(|s| s.0 as f32).collect(),
                var: stats.iter().map(|s| s.1 as f32).collect(),
            });
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// Gradients of the input, of `[gamma; beta]` (`[2, C]`) and of the residual, from the
    /// output `y` and its gradient. With `gz` the gradient before the ReLU, per channel
    /// `S1 = sum gz`, `S2 = sum gz (x - mean)`: dbeta = S1, dgamma = S2 inv,
    /// dx = gamma inv gz - gamma inv^3 S2 / M (x - mean) - gamma inv S1 / M, dres = gz.
    /// `residual`: the forward added one (the ReLU's gate then reads `y`; without, it is
    /// recomputed from `x`).
    fn backward(
        &self,
        (x, gb, y): (&Tensor, &Tensor, &Tensor),
        grad: &Tensor,
        residual: bool,
        want_res: bool,
    ) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)> {
        let st = super::kept(&self.stats, "batch norm: statistics")?;
        let (n, c, h, w) = x.dims4()?;
        let hw = h * w;
        let m = (n * hw) as f64;
        let gamma: Vec<f32> = gb.get(0)?.to_vec1()?;
        let inv: Vec<f64> = st
            .var
            .iter()
            .map(|&v| 1.0 / (v as f64 + self.eps).sqrt())
            .collect();
        let grad = grad.contiguous()?;
        // the ReLU's gate: from x with the forward's scale and shift where it kept them and
        // added no residual, from y otherwise
        let affine = match (self.relu, residual) {
            (true, false) => self.affine.lock().ok().and_then(|a| a.clone()),
            _ => None,
        };
        let gate = match (self.relu, &affine) {
            (false, _) => OPEN,
            (true, None) => BY_OUTPUT,
            (true, Some(_)) => BY_INPUT,
        };
        let ab = |ch: usize| affine.as_ref().map_or((0.0, 0.0), |a| a[ch]);
        let want_dx = x.track_op();
        let (dx, gz, sums) = with_values(x, "input", |xs| {
            with_values(&grad, "gradient", |gs| {
                with_values(y, "output", |ys| {
                    if xs.len() != gs.len() || ys.len() != gs.len() {
                        candle_core::bail!("batch norm backward: shapes do not match");
                    }
                    // S1, S2 per channel
                    let sums: Vec<(f64, f64)> = (0..c)
                        .into_par_iter()
                        .map(|ch| {
                            let (v, dims, coef) = ((gs, ys, xs), (n, c, hw), (st.mean[ch], ab(ch)));
                            match gate {
                                OPEN => avx2::grad_sums::<OPEN>(v, dims, ch, coef),
                                BY_OUTPUT => avx2::grad_sums::<BY_OUTPUT>(v, dims, ch, coef),
                                _ => avx2::grad_sums::<BY_INPUT>(v, dims, ch, coef),
                            }
                        })
                        .collect();
                    // written below without being zero-filled first
                    let mut dx: Option<Vec<f32>> = want_dx.then(|| Vec::with_capacity(xs.len()));
                    let mut gz: Option<Vec<f32>> = want_res.then(|| Vec::with_capacity(gs.len()));
                    let coef: Vec<[f32; 4]> = (0..c)
                        .map(|ch| {
                            let (s1, s2) = sums[ch];
                            let gi = gamma[ch] as f64 * inv[ch];
                            [
                                gi as f32,
                                (-gi * inv[ch] * inv[ch] * s2 / m) as f32,
                                (-gi * s1 / m) as f32,
                                st.mean[ch],
                            ]
                        })
                        .collect();
                    let planes = n * c;
                    let uninit = |d: &mut Vec<f32>| SendPtr(d.spare_capacity_mut().as_mut_ptr());
                    let dxp = dx.as_mut().map(uninit);
                    let gzp = gz.as_mut().map(uninit);
                    (0..planes).into_par_iter().for_each(|p| {
                        let r = p * hw..(p + 1) * hw;
                        let v = (&gs[r.clone()], &ys[r.clone()], &xs[r]);
                        // SAFETY: plane p of dx and gz (both with room for gs.len() values)
                        // is written by this iteration only.
                        let dxs = dxp.map(|d| unsafe { d.slice(p * hw, hw) });
                        let gzs = gzp.map(|d| unsafe { d.slice(p * hw, hw) });
                        let coef = (coef[p % c], ab(p % c));
                        match gate {
                            OPEN => avx2::plane::<OPEN>(v, coef, dxs, gzs),
                            BY_OUTPUT => avx2::plane::<BY_OUTPUT>(v, coef, dxs, gzs),
                            _ => avx2::plane::<BY_INPUT>(v, coef, dxs, gzs),
                        }
                    });
                    for d in dx.iter_mut().chain(gz.iter_mut()) {
                        // SAFETY: `plane` wrote every plane of both in full
                        unsafe { d.set_len(xs.len()) };
                    }
                    Ok((dx, gz, sums))
                })
            })
        })?;
        let dev = x.device();
        let mut dgb: Vec<f32> = sums
            .iter()
            .zip(&inv)
            .map(|(s, i)| (s.1 * i) as f32)
            .collect();
        dgb.extend(sums.iter().map(|s| s.0 as f32));
        Ok((
            dx.map(|d| Tensor::from_vec(d, (n, c, h, w), dev))
                .transpose()?,
            Tensor::from_vec(dgb, (2, c), dev)?,
            gz.map(|g| Tensor::from_vec(g, (n, c, h, w), dev))
                .transpose()?,
        ))
    }
}

impl CustomOp2 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "robustlens-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        gb: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dgb, _) = self.backward((x, gb, res), grad, false, false)?;
        Ok((dx, Some(dgb)))
    }
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "robustlens-batch-norm-train-residual"
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
        self.forward((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gb: &Tensor,
        r: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dgb, dr) = self.backward((x, gb, res), grad, true, r.track_op())?;
        Ok((dx, Some(dgb), dr))
    }
}

/// Training-mode BatchNorm of `x` `[N, C, H, W]` with `gamma`, `beta` `[C]` on the CPU,
/// followed by `+ residual` and a ReLU when asked, in one pass each way: the output
/// (differentiable in all its inputs) and the batch statistics. `None` off the CPU or for
/// other dtypes (the caller then uses candle ops).
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Option<(Tensor, BatchStats)>> {
    let mut all = vec![x, gamma, beta];
    all.extend(residual);
    if !super::on_cpu_f32(&all) {
        return Ok(None);
    }
    let stats = Arc::new(Mutex::new(None));
    let op = BatchNormTrain {
        eps,
        relu,
        stats: stats.clone(),
        affine: Arc::new(Mutex::new(None)),
    };
    let gb = Tensor::stack(&[gamma, beta], 0)?;
    let x = x.contiguous()?;
    let y = match residual {
        None => x.apply_op2(&gb, op)?,
        Some(r) => x.apply_op3(&gb, &r.contiguous()?, op)?,
    };
    let st = super::kept(&stats, "batch norm: statistics")?;
    Ok(Some((y, st)))
}

/// Training-mode BatchNorm of `x` `[N, C, H, W]` through cuDNN (CUDA f32 tensors, the
/// `cudnn` feature, [`super::set_cudnn`] on): the output (differentiable in `x`, `gamma` and
/// `beta`, one cuDNN call each way) and the updated running statistics `(mean, var)`, as
/// torch updates them (`momentum` the batch's weight, the variance unbiased), for the caller
/// to store. The running statistics passed in are read, not written. `None` where it does
/// not apply (the caller then uses candle ops).
pub fn batch_norm_train_cudnn(
    x: &Tensor,
    (gamma, beta): (&Tensor, &Tensor),
    (running_mean, running_var): (&Tensor, &Tensor),
    eps: f64,
    momentum: f64,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    if !super::on_cudnn_f32(&[x, gamma, beta, running_mean, running_var]) {
        return Ok(None);
    }
    #[cfg(feature = "cudnn")]
    {
        let c = x.dim(1)?;
        let gb = Tensor::stack(&[gamma, beta], 0)?;
        let running = Tensor::stack(&[running_mean.detach(), running_var.detach()], 0)?;
        let (op, updated) = cudnn_train::Forward::new(eps, momentum);
        let y = x.contiguous()?.apply_op3(&gb, &running, op)?;
        let running = cudnn_train::updated_running(&updated, (2, c))?;
        Ok(Some((y, running.get(0)?, running.get(1)?)))
    }
    #[cfg(not(feature = "cudnn"))]
    {
        let _ = (eps, momentum);
        Ok(None)
    }
}

/// The cuDNN training-mode BatchNorm as candle ops: the forward (input, `[gamma; beta]`,
/// `[running_mean; running_var]`) and its backward, which hands the gradient of
/// `[gamma; beta]` back beside the input gradient.
#[cfg(feature = "cudnn")]
mod cudnn_train {
    use super::super::cudnn;
    use candle_core::cuda_backend::cudarc::driver::CudaSlice;
    use candle_core::op::BackpropOp;
    use candle_core::{CpuStorage, CudaStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
    use std::sync::{Arc, Mutex};

    /// A tensor of `shape` made from a CUDA buffer (no autograd history).
    fn tensor(s: CudaStorage, shape: impl Into<Shape>) -> Tensor {
        Tensor::from_storage(Storage::Cuda(s), shape, BackpropOp::none(), false)
    }

    fn take<T>(slot: &Mutex<Option<T>>, what: &str) -> Result<T> {
        slot.lock()
            .ok()
            .and_then(|mut g| g.take())
            .ok_or_else(|| candle_core::Error::Msg(format!("{what} not recorded")))
    }

    pub(super) struct Forward {
        eps: f64,
        momentum: f64,
        /// `[mean; 1 / sqrt(var + eps)]` of the batch, for the backward.
        saved: Mutex<Option<Arc<CudaSlice<f32>>>>,
        /// The updated running statistics, for the caller.
        running: Updated,
    }

    /// Where the forward leaves the updated running statistics.
    pub(super) type Updated = Arc<Mutex<Option<CudaStorage>>>;

    impl Forward {
        /// The op, and where its forward leaves the updated running statistics.
        pub(super) fn new(eps: f64, momentum: f64) -> (Forward, Updated) {
            let running = Updated::default();
            let op = Forward {
                eps,
                momentum,
                saved: Mutex::new(None),
                running: running.clone(),
            };
            (op, running)
        }
    }

    /// The running statistics a forward computed, `[2, C]`.
    pub(super) fn updated_running(slot: &Updated, shape: (usize, usize)) -> Result<Tensor> {
        Ok(tensor(
            take(slot, "batch norm (cuDNN): running statistics")?,
            shape,
        ))
    }

    impl CustomOp3 for Forward {
        fn name(&self) -> &'static str {
            "robustlens-batch-norm-train-cudnn"
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            candle_core::bail!("batch norm: the cuDNN op runs on CUDA tensors only")
        }

        fn cuda_fwd(
            &self,
            sx: &CudaStorage,
            lx: &Layout,
            sgb: &CudaStorage,
            lgb: &Layout,
            sr: &CudaStorage,
            lr: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let (y, st) =
                cudnn::batch_norm_train((sx, lx), (sgb, lgb), (sr, lr), self.eps, self.momentum)?;
            if let (Ok(mut saved), Ok(mut running)) = (self.saved.lock(), self.running.lock()) {
                *saved = Some(Arc::new(st.saved));
                *running = Some(CudaStorage::wrap_cuda_slice(st.running, sx.device.clone()));
            }
            Ok((y, lx.shape().clone()))
        }

        fn bwd(
            &self,
            x: &Tensor,
            gb: &Tensor,
            _running: &Tensor,
            _res: &Tensor,
            grad: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            if !x.track_op() && !gb.track_op() {
                return Ok((None, None, None));
            }
            let op = Backward {
                eps: self.eps,
                saved: super::super::kept(&self.saved, "batch norm (cuDNN): statistics")?,
                dgb: Mutex::new(None),
            };
            let dx = x.apply_op3_no_bwd(&grad.contiguous()?, gb, &op)?;
            let dgb = tensor(
                take(&op.dgb, "batch norm (cuDNN): weight gradient")?,
                gb.shape(),
            );
            Ok((
                x.track_op().then_some(dx),
                gb.track_op().then_some(dgb),
                None,
            ))
        }
    }

    /// The backward: `(x, dy, [gamma; beta])` to the input gradient, with `[dgamma; dbeta]`
    /// kept for [`Forward::bwd`].
    struct Backward {
        eps: f64,
        saved: Arc<CudaSlice<f32>>,
        dgb: Mutex<Option<CudaStorage>>,
    }

    impl CustomOp3 for Backward {
        fn name(&self) -> &'static str {
            "robustlens-batch-norm-train-cudnn-bwd"
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            candle_core::bail!("batch norm backward: the cuDNN op runs on CUDA tensors only")
        }

        fn cuda_fwd(
            &self,
            sx: &CudaStorage,
            lx: &Layout,
            sg: &CudaStorage,
            lg: &Layout,
            sgb: &CudaStorage,
            lgb: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let (dx, dgb) = cudnn::batch_norm_train_grad(
                (sx, lx),
                (sg, lg),
                (sgb, lgb),
                &self.saved,
                self.eps,
            )?;
            if let Ok(mut slot) = self.dgb.lock() {
                *slot = Some(dgb);
            }
            Ok((dx, lx.shape().clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{max_abs, probe_grads, uniform as rand};
    use candle_core::{Device, Var};

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
    fn avx2_loops_give_the_plain_bits() {
        use crate::ops::testing::values;
        // odd sizes: the vector loops' tails
        let dims @ (n, c, hw) = (3, 5, 37);
        let (x, g, y, r) = (
            values(n * c * hw, 1),
            values(n * c * hw, 2),
            values(n * c * hw, 3),
            values(hw, 4),
        );
        let ab = (0.7, -0.2);
        for ch in 0..c {
            let same = |a: (f64, f64), b: (f64, f64)| {
                a.0.to_bits() == b.0.to_bits() && a.1.to_bits() == b.1.to_bits()
            };
            assert!(same(avx2::stats(&x, dims, ch), channel_stats(&x, dims, ch)));
            let (v, coef) = ((&g[..], &y[..], &x[..]), (0.3, ab));
            let plain = |gate| match gate {
                OPEN => channel_grad_sums(v, dims, ch, coef, grad_sums::<OPEN>),
                BY_OUTPUT => channel_grad_sums(v, dims, ch, coef, grad_sums::<BY_OUTPUT>),
                _ => channel_grad_sums(v, dims, ch, coef, grad_sums::<BY_INPUT>),
            };
            assert!(same(
                avx2::grad_sums::<OPEN>(v, dims, ch, coef),
                plain(OPEN)
            ));
            assert!(same(
                avx2::grad_sums::<BY_OUTPUT>(v, dims, ch, coef),
                plain(BY_OUTPUT)
            ));
            assert!(same(
                avx2::grad_sums::<BY_INPUT>(v, dims, ch, coef),
                plain(BY_INPUT)
            ));
        }
        let (xs, gs, ys) = (&x[..hw], &g[..hw], &y[..hw]);
        let written = |f: &dyn Fn(&mut [MaybeUninit<f32>])| {
            let mut o = vec![MaybeUninit::new(f32::NAN); hw];
            f(&mut o);
            // SAFETY: initialised above (and overwritten)
            o.iter()
                .map(|v| unsafe { v.assume_init() }.to_bits())
                .collect::<Vec<_>>()
        };
        for relu in [false, true] {
            for res in [None, Some(&r[..])] {
                let a = written(&|o| avx2::normalize(o, xs, res, ab, relu));
                let b = written(&|o| normalize_plane(o, xs, res, ab, relu));
                assert_eq!(a, b);
                assert!(
                    a.iter().all(|v| !f32::from_bits(*v).is_nan()),
                    "every value written"
                );
            }
        }
        let coef = ([0.9, -0.1, 0.05, 0.2], ab);
        macro_rules! check {
            ($gate:expr) => {
                let d1 = written(&|o| avx2::plane::<{ $gate }>((gs, ys, xs), coef, Some(o), None));
                let z1 = written(&|o| avx2::plane::<{ $gate }>((gs, ys, xs), coef, None, Some(o)));
                let d2 = written(&|o| plane_grads::<{ $gate }>((gs, ys, xs), coef, Some(o), None));
                let z2 = written(&|o| plane_grads::<{ $gate }>((gs, ys, xs), coef, None, Some(o)));
                assert_eq!((&d1, &z1), (&d2, &z2));
                assert!(d1.iter().chain(&z1).all(|v| !f32::from_bits(*v).is_nan()));
            };
        }
        check!(OPEN);
        check!(BY_OUTPUT);
        check!(BY_INPUT);
        // the gate recomputed from x is the forward's own: where y = relu(x a + b), gating by
        // x and by y give the same bits (a zero's sign included)
        let yr = written(&|o| normalize_plane(o, xs, None, ab, true));
        let yr: Vec<f32> = yr.into_iter().map(f32::from_bits).collect();
        let by_y = written(&|o| plane_grads::<BY_OUTPUT>((gs, &yr, xs), coef, Some(o), None));
        let by_x = written(&|o| plane_grads::<BY_INPUT>((gs, &yr, xs), coef, Some(o), None));
        assert_eq!(by_y, by_x);
        assert_ne!(
            by_x,
            written(&|o| plane_grads::<OPEN>((gs, &yr, xs), coef, Some(o), None)),
            "some of the outputs are gated"
        );
    }

    #[test]
    fn train_mode_matches_candle_ops_forward_and_backward() {
        let x = Var::from_tensor(&rand(&[3, 4, 5, 6], 1, -2.0, 3.0)).unwrap();
        let g = Var::from_tensor(&rand(&[4], 2, 0.5, 1.5)).unwrap();
        let b = Var::from_tensor(&rand(&[4], 3, -1.0, 1.0)).unwrap();
        let (ours, st) = batch_norm_train(
            x.as_tensor(),
            g.as_tensor(),
            b.as_tensor(),
            1e-5,
            None,
            false,
        )
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
        let g1 = probe_grads(ours, &probe);
        let g2 = probe_grads(theirs, &probe);
        for v in [&x, &g, &b] {
            let d = max_abs(
                g1.get(v.as_tensor()).unwrap(),
                g2.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-4, "{d}");
        }
    }

    #[test]
    fn train_mode_with_residual_and_relu_matches_candle_ops() {
        // larger planes than above: the four-lane sums have tails (hw = 7*9 = 63)
        let shape = [2, 3, 7, 9];
        let x = Var::from_tensor(&rand(&shape, 11, -2.0, 3.0)).unwrap();
        let g = Var::from_tensor(&rand(&[3], 12, 0.5, 1.5)).unwrap();
        let b = Var::from_tensor(&rand(&[3], 13, -1.0, 1.0)).unwrap();
        let r = Var::from_tensor(&rand(&shape, 14, -1.0, 1.0)).unwrap();
        let probe = rand(&shape, 15, -1.0, 1.0);
        for (res, relu) in [(true, true), (false, true), (true, false)] {
            let rr = res.then_some(r.as_tensor());
            let (ours, _) =
                batch_norm_train(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5, rr, relu)
                    .unwrap()
                    .unwrap();
            let mut theirs = reference(x.as_tensor(), g.as_tensor(), b.as_tensor());
            if let Some(r) = rr {
                theirs = (theirs + r).unwrap();
            }
            if relu {
                theirs = theirs.relu().unwrap();
            }
            assert!(max_abs(&ours, &theirs) < 1e-5, "forward {res} {relu}");
            let g1 = probe_grads(ours, &probe);
            let g2 = probe_grads(theirs, &probe);
            for v in [&x, &g, &b, &r] {
                match (g1.get(v.as_tensor()), g2.get(v.as_tensor())) {
                    (Some(a), Some(c)) => {
                        let d = max_abs(a, c);
                        assert!(d < 1e-4, "backward {res} {relu}: {d}");
                    }
                    (None, None) => assert!(!res && std::ptr::eq(v, &r)),
                    (a, c) => panic!(
                        "gradient presence differs: {} vs {}",
                        a.is_some(),
                        c.is_some()
                    ),
                }
            }
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
