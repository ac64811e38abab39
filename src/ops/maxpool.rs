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

/// What [`pool_forward`] returns: the pooled values, the winners' in-plane indices (when
/// asked for), and the output height and width.
pub(super) type Pooled = (Vec<f32>, Option<Vec<u32>>, usize, usize);

/// Whether `v` beats `best` in PyTorch's scan: strictly greater, or the first NaN.
#[inline(always)]
fn beats(v: f32, best: f32) -> bool {
    (v > best) | (v.is_nan() & !best.is_nan())
}

/// Max pooling of `src` (`[n, c, h, w]`, contiguous): the output, with `argmax` the flat
/// in-plane index of each output's winner (the first maximum in scan order; the first NaN),
/// and the output size.
///
/// Separable: per output row, the window's rows are reduced column by column into one row
/// (value and, for the argmax, the winner's in-plane index; a loop the compiler vectorises),
/// then each output reduces its window's columns of that row. Among equal values the smaller
/// index wins: the smaller row, then the smaller column, the first in scan order.
pub(super) fn pool_forward(
    src: &[f32],
    (n, c, h, w): (usize, usize, usize, usize),
    k: usize,
    s: usize,
    p: usize,
    argmax: bool,
) -> Result<Pooled> {
    let pool = PlanePool::new((h, w), k, s, p)?;
    let (plane_in, plane_out) = (h * w, pool.ho * pool.wo);
    debug_assert_eq!(src.len(), n * c * plane_in);
    let mut out = vec![0f32; n * c * plane_out];
    let mut idx = argmax.then(|| vec![0u32; n * c * plane_out]);
    let x = |plane: usize| &src[plane * plane_in..(plane + 1) * plane_in];
    match idx.as_mut() {
        Some(idx) => out
            .par_chunks_mut(plane_out)
            .zip(idx.par_chunks_mut(plane_out))
            .enumerate()
            .for_each(|(plane, (o, ix))| pool.run(x(plane), o, Some(ix))),
        None => out
            .par_chunks_mut(plane_out)
            .enumerate()
            .for_each(|(plane, o)| pool.run(x(plane), o, None)),
    }
    Ok((out, idx, pool.ho, pool.wo))
}

/// Max pooling of one `h x w` plane ([`pool_forward`]'s per-plane step), so that a producer
/// can pool each plane while it is still in the cache.
pub(super) struct PlanePool {
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
    /// Output height and width.
    pub(super) ho: usize,
    pub(super) wo: usize,
    /// Per output column, its window's input columns.
    cols: Vec<(usize, usize)>,
}

impl PlanePool {
    /// The pooling of `h x w` planes with a `k x k` window, stride `s`, padding `p` (as
    /// PyTorch: at most half the window).
    pub(super) fn new((h, w): (usize, usize), k: usize, s: usize, p: usize) -> Result<Self> {
        if h + 2 * p < k || w + 2 * p < k {
            candle_core::bail!("max_pool2d: input {h}x{w} is smaller than the {k}x{k} window");
        }
        if 2 * p > k {
            candle_core::bail!(
                "max_pool2d: padding {p} must be at most half the {k}x{k} window (as in PyTorch)"
            );
        }
        if s == 0 {
            candle_core::bail!("max_pool2d: stride must be at least 1");
        }
        let (ho, wo) = (pooled_size(h, k, s, p), pooled_size(w, k, s, p));
        let cols = (0..wo).map(|ox| window(ox, s, p, k, w)).collect();
        Ok(Self {
            h,
            w,
            k,
            s,
            p,
            ho,
            wo,
            cols,
        })
    }

    /// Pools plane `x` (`h * w` values) into `o` (`ho * wo`), with the winners' in-plane
    /// indices into `ix` when given.
    pub(super) fn run(&self, x: &[f32], o: &mut [f32], ix: Option<&mut [u32]>) {
        #[cfg(target_arch = "x86_64")]
        if (self.k, self.s, self.p) == (3, 2, 1) && super::layout::use_avx512() {
            // SAFETY: the CPU has AVX-512F
            return unsafe { self.run_avx512_3x3s2(x, o, ix) };
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { self.run_avx2(x, o, ix) };
        }
        self.run_plain(x, o, ix)
    }

    /// [`Self::run`] compiled for AVX2 (8 lanes instead of SSE2's 4).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(&self, x: &[f32], o: &mut [f32], ix: Option<&mut [u32]>) {
        self.run_plain(x, o, ix)
    }

    /// [`Self::run`] of ResNet's 3x3 window, stride 2, padding 1, with AVX-512: per output
    /// row, strips of 16 outputs, their 33 input columns reduced down the window's rows in
    /// registers (the 32 loaded, masked past the plane, and the strip's left neighbour), then
    /// the even columns and the odd ones on either side gathered by permutations. Every
    /// output makes the comparisons of [`Self::run_plain`] in its order (a missing column
    /// stands in as a copy of the middle one, which changes no winner), hence the same values
    /// and indices. `run_plain` spends its time on six buffers allocated per plane and loops
    /// a few lanes long: the stem's pooling at 64 px (16 x 64 planes of 32 x 32) went 0.98
    /// → 0.25 ms, with the indices 2.07 → 0.36 ms; at 224 px 4.8 → 3.5 and 10.4 → 5.9 ms
    /// (2 threads, best of 30, alternating).
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512_3x3s2(&self, x: &[f32], o: &mut [f32], mut ix: Option<&mut [u32]>) {
        use std::arch::x86_64::*;
        let Self { h, w, ho, wo, .. } = *self;
        debug_assert_eq!((self.k, self.s, self.p), (3, 2, 1));
        assert!(x.len() >= h * w && o.len() >= ho * wo);
        assert!(ix.as_ref().is_none_or(|ix| ix.len() >= ho * wo));
        use super::layout::{first_lanes, lane_indices};
        let unord = |v: __m512| _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        // `beats` and `pick`, lane by lane
        let wins =
            |v: __m512, m: __m512| _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, m) | (unord(v) & !unord(m));
        let pick = |(m, mi): (__m512, __m512i), (v, vi): (__m512, __m512i)| {
            let tie = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(v, m) | (unord(v) & unord(m));
            let take = wins(v, m) | (tie & _mm512_cmplt_epu32_mask(vi, mi));
            (
                _mm512_mask_mov_ps(m, take, v),
                _mm512_mask_mov_epi32(mi, take, vi),
            )
        };
        let (even, odd) = (lane_indices(|t| 2 * t), lane_indices(|t| 2 * t + 1));
        // lane t of the odd columns' shift: odd column t - 1 (lane 0 is set apart)
        let back = lane_indices(|t| (t - 1).max(0));
        let (step0, step1) = (lane_indices(|t| t), lane_indices(|t| t + 16));
        let with_ix = ix.is_some();
        for oy in 0..ho {
            let (ylo, yhi) = window(oy, 2, 1, 3, h);
            for s in (0..wo).step_by(16) {
                let c0 = 2 * s;
                let rest = w as isize - c0 as isize;
                let (lo_m, hi_m) = (first_lanes(rest), first_lanes(rest - 16));
                let at = |y: usize| y * w + c0;
                let load = |y: usize| {
                    let p = x.as_ptr().add(at(y));
                    (
                        _mm512_maskz_loadu_ps(lo_m, p),
                        _mm512_maskz_loadu_ps(hi_m, p.wrapping_add(16)),
                    )
                };
                let index = |y: usize| {
                    let b = _mm512_set1_epi32(at(y) as i32);
                    (_mm512_add_epi32(b, step0), _mm512_add_epi32(b, step1))
                };
                // down the window's rows: a later row wins a column only when it beats
                let (mut ml, mut mh) = load(ylo);
                let (mut il, mut ih) = index(ylo);
                let mut left = (s > 0).then(|| (x[at(ylo) - 1], (at(ylo) - 1) as u32));
                for y in ylo + 1..yhi {
                    let (vl, vh) = load(y);
                    let (tl, th) = (wins(vl, ml), wins(vh, mh));
                    ml = _mm512_mask_mov_ps(ml, tl, vl);
                    mh = _mm512_mask_mov_ps(mh, th, vh);
                    if with_ix {
                        let (jl, jh) = index(y);
                        il = _mm512_mask_mov_epi32(il, tl, jl);
                        ih = _mm512_mask_mov_epi32(ih, th, jh);
                    }
                    if let Some((m, mi)) = left.as_mut() {
                        let v = x[at(y) - 1];
                        if beats(v, *m) {
                            (*m, *mi) = (v, (at(y) - 1) as u32);
                        }
                    }
                }
                // output t of the strip: columns 2(s+t) - 1, 2(s+t), 2(s+t) + 1
                let b = _mm512_permutex2var_ps(ml, even, mh);
                let c = _mm512_permutex2var_ps(ml, odd, mh);
                let bi = _mm512_permutex2var_epi32(il, even, ih);
                let ci = _mm512_permutex2var_epi32(il, odd, ih);
                let (l, li) = match left {
                    Some((m, mi)) => (_mm512_set1_ps(m), _mm512_set1_epi32(mi as i32)),
                    None => (b, bi),
                };
                let a = _mm512_mask_mov_ps(_mm512_permutexvar_ps(back, c), 1, l);
                let ai = _mm512_mask_mov_epi32(_mm512_permutexvar_epi32(back, ci), 1, li);
                // the right column exists for t < (w - 2s) / 2; elsewhere the middle one
                let right = first_lanes(rest / 2);
                let c = _mm512_mask_mov_ps(b, right, c);
                let ci = _mm512_mask_mov_epi32(bi, right, ci);
                let keep = first_lanes((wo - s) as isize);
                let out = o.as_mut_ptr().add(oy * wo + s);
                match ix.as_deref_mut() {
                    None => {
                        let best = _mm512_mask_mov_ps(a, wins(b, a), b);
                        let best = _mm512_mask_mov_ps(best, wins(c, best), c);
                        _mm512_mask_storeu_ps(out, keep, best);
                    }
                    Some(ix) => {
                        let best = pick(pick((a, ai), (b, bi)), (c, ci));
                        _mm512_mask_storeu_ps(out, keep, best.0);
                        let dst = ix.as_mut_ptr().add(oy * wo + s);
                        _mm512_mask_storeu_epi32(dst.cast(), keep, best.1);
                    }
                }
            }
        }
    }

    #[inline(always)]
    fn run_plain(&self, x: &[f32], o: &mut [f32], mut ix: Option<&mut [u32]>) {
        let Self {
            h,
            w,
            k,
            s,
            p,
            ho,
            wo,
            ..
        } = *self;
        let mut vmax = vec![0f32; w];
        // per column, the in-plane index of the window rows' winner: comparing indices orders
        // by row, then column, which is scan order
        let mut vidx = vec![0u32; if ix.is_some() { w } else { 0 }];
        // ResNet's 3x3 stride-2 window: the row's even and odd columns apart, so that output
        // ox compares odd column ox - 1, even column ox and odd column ox as three slices
        let halves = (k, s, p) == (3, 2, 1) && w >= 4;
        let mut even = vec![0f32; if halves { w.div_ceil(2) } else { 0 }];
        let mut odd = vec![0f32; if halves { w / 2 } else { 0 }];
        let mut even_i = vec![
            0u32;
            if halves && ix.is_some() {
                even.len()
            } else {
                0
            }
        ];
        let mut odd_i = vec![0u32; if halves && ix.is_some() { odd.len() } else { 0 }];
        // outputs 1..fast have all three columns inside the row
        let fast = if halves { (w - 1) / 2 } else { 0 };
        for oy in 0..ho {
            let (ylo, yhi) = window(oy, s, p, k, h);
            vmax.copy_from_slice(&x[ylo * w..(ylo + 1) * w]);
            if ix.is_some() {
                for (xx, r) in vidx.iter_mut().enumerate() {
                    *r = (ylo * w + xx) as u32;
                }
            }
            // a later row wins a column only when strictly greater (or the first NaN)
            for yy in ylo + 1..yhi {
                let row = &x[yy * w..(yy + 1) * w];
                if ix.is_some() {
                    let base = (yy * w) as u32;
                    for (xx, ((m, r), &v)) in
                        vmax.iter_mut().zip(vidx.iter_mut()).zip(row).enumerate()
                    {
                        let take = beats(v, *m);
                        *m = if take { v } else { *m };
                        *r = if take { base + xx as u32 } else { *r };
                    }
                } else {
                    for (m, &v) in vmax.iter_mut().zip(row) {
                        *m = if beats(v, *m) { v } else { *m };
                    }
                }
            }
            let orow = &mut o[oy * wo..(oy + 1) * wo];
            let mut irow = ix.as_deref_mut().map(|ix| &mut ix[oy * wo..(oy + 1) * wo]);
            if halves {
                split_halves(&vmax, &mut even, &mut odd);
                if irow.is_some() {
                    split_halves(&vidx, &mut even_i, &mut odd_i);
                }
                let (left, mid, right) = (&odd[..fast - 1], &even[1..fast], &odd[1..fast]);
                match irow.as_deref_mut() {
                    None => {
                        for (((ov, &a), &b), &c) in
                            orow[1..fast].iter_mut().zip(left).zip(mid).zip(right)
                        {
                            let best = if beats(b, a) { b } else { a };
                            *ov = if beats(c, best) { c } else { best };
                        }
                    }
                    Some(irow) => {
                        let (li, mi, ri) = (&odd_i[..fast - 1], &even_i[1..fast], &odd_i[1..fast]);
                        let outs = orow[1..fast].iter_mut().zip(irow[1..fast].iter_mut());
                        for ((((ov, iv), (&a, &ai)), (&b, &bi)), (&c, &ci)) in outs
                            .zip(left.iter().zip(li))
                            .zip(mid.iter().zip(mi))
                            .zip(right.iter().zip(ri))
                        {
                            let (best, besti) = pick(a, ai, b, bi);
                            (*ov, *iv) = pick(best, besti, c, ci);
                        }
                    }
                }
            }
            // every output without the fast path (the first and the last ones with it)
            let done = 1..fast.max(1);
            for ox in (0..done.start).chain(done.end..wo) {
                let (xlo, xhi) = self.cols[ox];
                match irow.as_deref_mut() {
                    None => {
                        let mut best = vmax[xlo];
                        for &v in &vmax[xlo + 1..xhi] {
                            best = if beats(v, best) { v } else { best };
                        }
                        orow[ox] = best;
                    }
                    Some(irow) => {
                        let (mut best, mut bi) = (vmax[xlo], vidx[xlo]);
                        for (&v, &i) in vmax[xlo + 1..xhi].iter().zip(&vidx[xlo + 1..xhi]) {
                            (best, bi) = pick(best, bi, v, i);
                        }
                        orow[ox] = best;
                        irow[ox] = bi;
                    }
                }
            }
        }
    }
}

/// The winner of `(best, bi)` and a later candidate `(v, i)` in scan order: `v` when it beats
/// `best`, or equals it (both NaN included) with the smaller in-plane index (the earlier in
/// scan order). Selects, not branches (the winner is unpredictable).
#[inline(always)]
fn pick(best: f32, bi: u32, v: f32, i: u32) -> (f32, u32) {
    let tie = (v == best) | (v.is_nan() & best.is_nan());
    let take = beats(v, best) | (tie & (i < bi));
    (if take { v } else { best }, if take { i } else { bi })
}

/// `src`'s even-position values into `even`, odd-position ones into `odd`.
#[inline(always)]
fn split_halves<T: Copy>(src: &[T], even: &mut [T], odd: &mut [T]) {
    let half = src.len() / 2;
    for ((pair, e), o) in src
        .chunks_exact(2)
        .zip(&mut even[..half])
        .zip(&mut odd[..half])
    {
        *e = pair[0];
        *o = pair[1];
    }
    if src.len() % 2 == 1 {
        even[half] = src[src.len() - 1];
    }
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
    /// Whether the input takes part in autograd (else no argmax is recorded).
    need_grad: bool,
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
        let (out, idx, ho, wo) = pool_forward(
            src,
            (n, c, h, w),
            self.kernel,
            self.stride,
            self.padding,
            self.need_grad,
        )?;
        if let (Some(idx), Ok(mut guard)) = (idx, self.argmax.lock()) {
            *guard = Some(Arc::new(idx));
        }
        Ok((CpuStorage::F32(out), Shape::from((n, c, ho, wo))))
    }

    /// cuDNN's max pooling (the `cudnn` feature): the backward needs no argmax, it reads the
    /// input and output again.
    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let pool = PlanePool::new((h, w), self.kernel, self.stride, self.padding)?;
        let y = super::cudnn::max_pool(
            (s, l),
            (self.kernel, self.stride, self.padding),
            (pool.ho, pool.wo),
        )?;
        Ok((y, Shape::from((n, c, pool.ho, pool.wo))))
    }

    #[cfg_attr(not(feature = "cudnn"), allow(unused_variables))]
    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        #[cfg(feature = "cudnn")]
        if arg.device().is_cuda() {
            let op = MaxPoolGradCudnn {
                kernel: self.kernel,
                stride: self.stride,
                padding: self.padding,
            };
            let grad = grad_res.contiguous()?;
            return Ok(Some(arg.apply_op3_no_bwd(res, &grad, &op)?));
        }
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

/// The input gradient of [`MaxPoolFwd`] on CUDA from its input, output and output gradient
/// (cuDNN's pooling backward).
#[cfg(feature = "cudnn")]
struct MaxPoolGradCudnn {
    kernel: usize,
    stride: usize,
    padding: usize,
}

#[cfg(feature = "cudnn")]
impl candle_core::CustomOp3 for MaxPoolGradCudnn {
    fn name(&self) -> &'static str {
        "robustlens-max-pool2d-bwd-cudnn"
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
        candle_core::bail!("max_pool2d backward: the cuDNN op runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        sx: &candle_core::CudaStorage,
        lx: &Layout,
        sy: &candle_core::CudaStorage,
        ly: &Layout,
        sg: &candle_core::CudaStorage,
        lg: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dx = super::cudnn::max_pool_grad(
            (sx, lx),
            (sy, ly),
            (sg, lg),
            (self.kernel, self.stride, self.padding),
        )?;
        Ok((dx, lx.shape().clone()))
    }
}

/// Max pooling over square windows (`kernel`, `stride`, `padding`), differentiable.
///
/// On the CPU this is a custom op that records the argmax; on CUDA with the `cudnn` feature
/// the same op runs cuDNN's pooling (see [`super::set_cudnn`]); elsewhere it is built from
/// candle ops (a `gather` of the per-window argmax), which autograd differentiates exactly.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    if kernel == 0 || stride == 0 {
        candle_core::bail!("max_pool2d: kernel and stride must be positive");
    }
    if super::on_cpu_f32(&[x]) || super::on_cudnn_f32(&[x]) {
        let op = MaxPoolFwd {
            kernel,
            stride,
            padding,
            need_grad: x.track_op(),
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

    /// PyTorch's scan, written out: per output, the window in row-major order, the first
    /// strictly greater value (or the first NaN) wins.
    fn naive(x: &[f32], h: usize, w: usize, k: usize, s: usize, p: usize) -> (Vec<f32>, Vec<u32>) {
        let (ho, wo) = (pooled_size(h, k, s, p), pooled_size(w, k, s, p));
        let (mut out, mut idx) = (vec![], vec![]);
        for oy in 0..ho {
            for ox in 0..wo {
                let mut best: Option<(f32, usize)> = None;
                for yy in (oy * s) as isize - p as isize..(oy * s + k) as isize - p as isize {
                    for xx in (ox * s) as isize - p as isize..(ox * s + k) as isize - p as isize {
                        if yy < 0 || xx < 0 || yy >= h as isize || xx >= w as isize {
                            continue;
                        }
                        let i = yy as usize * w + xx as usize;
                        match best {
                            Some((b, _)) if !beats(x[i], b) => {}
                            _ => best = Some((x[i], i)),
                        }
                    }
                }
                let (b, i) = best.unwrap();
                out.push(b);
                idx.push(i as u32);
            }
        }
        (out, idx)
    }

    #[test]
    fn separable_scan_matches_the_window_scan_with_ties_and_nans() {
        // few distinct values (many ties), some NaNs, both signs of zero
        for (h, w) in [(11, 9), (12, 10), (7, 4), (6, 17), (5, 3)] {
            scan_matches(h, w);
        }
    }

    fn scan_matches(h: usize, w: usize) {
        let x: Vec<f32> = (0..h * w)
            .map(|i| match (i * 7919) % 13 {
                0 => f32::NAN,
                1 => -0.0,
                r => (r % 4) as f32 - 1.0,
            })
            .collect();
        for (k, s, p) in [
            (3, 2, 1),
            (3, 1, 1),
            (2, 2, 0),
            (3, 3, 0),
            (4, 2, 2),
            (5, 2, 1),
        ] {
            let (out, idx, _, _) = pool_forward(&x, (1, 1, h, w), k, s, p, true).unwrap();
            let (want, want_idx) = naive(&x, h, w, k, s, p);
            assert_eq!(idx.unwrap(), want_idx, "argmax, {h}x{w} k {k} s {s} p {p}");
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&want), "values, {h}x{w} k {k} s {s} p {p}");
            let (plain, none, _, _) = pool_forward(&x, (1, 1, h, w), k, s, p, false).unwrap();
            assert!(none.is_none());
            assert_eq!(
                plain.iter().map(|v| v.is_nan()).collect::<Vec<_>>(),
                want.iter().map(|v| v.is_nan()).collect::<Vec<_>>()
            );
            for (a, b) in plain.iter().zip(&want) {
                assert!(a == b || (a.is_nan() && b.is_nan()), "k {k} s {s} p {p}");
            }
        }
    }

    #[test]
    fn avx512_pooling_gives_the_values_and_indices_of_the_plain_scan() {
        if !crate::ops::layout::has_avx512() {
            eprintln!("skipped: this CPU has no AVX-512F, the AVX-512 pooling never runs");
            return;
        }
        // one strip, strips cut anywhere (33, 34, 65 wide), tiny planes; ties, NaNs, zeros
        for (h, w) in [
            (11, 9),
            (12, 10),
            (7, 4),
            (6, 17),
            (5, 3),
            (32, 32),
            (1, 1),
            (2, 2),
            (3, 40),
            (9, 33),
            (4, 34),
            (3, 65),
            (1, 7),
        ] {
            let mixed: Vec<f32> = (0..h * w)
                .map(|i| match (i * 7919) % 13 {
                    0 => f32::NAN,
                    1 => -0.0,
                    2 => f32::NEG_INFINITY,
                    r => (r % 4) as f32 - 1.0,
                })
                .collect();
            // all below zero: a zero read past the plane's edge would win
            let negative: Vec<f32> = (0..h * w).map(|i| -1.0 - ((i * 31) % 7) as f32).collect();
            let pool = PlanePool::new((h, w), 3, 2, 1).unwrap();
            let n = pool.ho * pool.wo;
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            for (x, with_ix) in [
                (&mixed, false),
                (&mixed, true),
                (&negative, false),
                (&negative, true),
            ] {
                let (mut want, mut got) = (vec![7f32; n], vec![7f32; n]);
                let (mut want_i, mut got_i) = (vec![9u32; n], vec![9u32; n]);
                let (wi, gi) = if with_ix {
                    (Some(&mut want_i[..]), Some(&mut got_i[..]))
                } else {
                    (None, None)
                };
                pool.run_plain(x, &mut want, wi);
                // SAFETY: AVX-512F checked above
                unsafe { pool.run_avx512_3x3s2(x, &mut got, gi) };
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "values, {h}x{w}, indices {with_ix}"
                );
                assert_eq!(got_i, want_i, "indices, {h}x{w}");
            }
        }
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
