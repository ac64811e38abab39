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

use super::frozen::Derivation;
use super::matmul::{matmul, matmul_blocks, matmul_new};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub(super) use super::layout::{
    with_padded, with_padded_batch_last, with_scratch, Epilogue, Geometry, PlaneFn,
};

/// Output size of a convolution.
pub fn conv_out(input: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (input + 2 * padding).saturating_sub(kernel) / stride + 1
}

/// Images per matrix product: as many as keep the column buffer under 16 M floats (64 MB).
fn images_per_chunk(g: &Geometry) -> usize {
    let per = (g.ckk() * g.hw_out()).max(1);
    ((16usize << 20) / per).clamp(1, g.n.max(1))
}

/// The output columns `ox` whose input column `ox * s - p + kx` lies inside `0..w`.
fn valid_cols(wo: usize, w: usize, s: usize, p: usize, kx: usize) -> (usize, usize) {
    // ix >= 0  <=>  ox * s >= p - kx
    let lo = if kx >= p { 0 } else { (p - kx).div_ceil(s) };
    // ix < w  <=>  ox * s < w + p - kx
    let hi = if w + p > kx {
        (w + p - kx).div_ceil(s).min(wo)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// Copies every second float from the start of `src` to `dst` (`dst[j] = src[2 j]`): the
/// rows of a stride-2 column matrix, sixteen at a time.
#[inline(always)]
fn copy_even(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    let src = &src[..2 * n - 1];
    let mut d = dst.chunks_exact_mut(16);
    let mut j = 0;
    for blk in &mut d {
        let s = &src[2 * j..2 * j + 31];
        for (t, v) in blk.iter_mut().enumerate() {
            *v = s[2 * t];
        }
        j += 16;
    }
    for (t, v) in d.into_remainder().iter_mut().enumerate() {
        *v = src[2 * (j + t)];
    }
}

/// Copies `dst.len()` floats from the start of `src`, eight at a time (the rows of a column
/// matrix are short: 2 to 32 floats here, where a `memcpy` call costs more than the copy).
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    let src = &src[..n];
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d, s) in (&mut d).zip(&mut s) {
        let v: [f32; 8] = s.try_into().expect("chunk of 8");
        d.copy_from_slice(&v);
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s;
    }
}

/// Column matrix of images `i0..i0+m`: `[ckk, m * hw]`, row `(c*k + ky)*k + kx`, image `i`
/// in columns `(i - i0) * hw ..`, entry `x[i][c][oy*s - p + ky][ox*s - p + kx]` (0 outside).
/// The images are first copied into a zero-padded buffer, so that every output row is one
/// unchecked copy (stride 1) or gather (stride 2); rows are filled in parallel.
fn im2col_chunk(x: &[f32], g: &Geometry, i0: usize, m: usize, col: &mut [f32]) {
    im2col_rows(x, g, (i0, m), m * g.hw_out(), col)
}

/// [`im2col_chunk`] with its rows `rs >= m * hw` floats apart.
fn im2col_rows(x: &[f32], g: &Geometry, (i0, m): (usize, usize), rs: usize, col: &mut [f32]) {
    let (k, s, p) = (g.k, g.stride, g.pad);
    let (hp, wp) = (g.h + 2 * p, g.w + 2 * p);
    let fill = |src: &[f32], col: &mut [f32]| {
        let hw = g.hw_out();
        col[..g.ckk() * rs]
            .par_chunks_mut(rs)
            .enumerate()
            .for_each(|(r, row)| {
                let c = r / (k * k);
                let ky = (r / k) % k;
                let kx = r % k;
                for j in 0..m {
                    let plane = &src[(j * g.c + c) * hp * wp..][..hp * wp];
                    let blk = &mut row[j * hw..(j + 1) * hw];
                    for (oy, dst) in blk.chunks_exact_mut(g.wo).enumerate() {
                        let line = &plane[(oy * s + ky) * wp + kx..];
                        if s == 1 {
                            copy_short(dst, line);
                        } else if s == 2 {
                            copy_even(dst, line);
                        } else {
                            for (d, v) in dst.iter_mut().zip(line.iter().step_by(s)) {
                                *d = *v;
                            }
                        }
                    }
                }
            });
    };
    let images = &x[i0 * g.plane_in()..(i0 + m) * g.plane_in()];
    if p == 0 {
        return fill(images, col);
    }
    with_padded(images, (g.h, g.w), p, wp, hp * wp, |padded| {
        fill(padded, col)
    })
}

/// How a column matrix orders the columns of a chunk of `m` images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Columns {
    /// Image by image: column `j * hw + t` ([`im2col_chunk`]).
    ByImage,
    /// The image index last: column `t * m + j` ([`im2col_batch_last`]).
    BatchLast,
}

/// Output width up to which the im2col paths build their column matrices batch-last
/// ([`Columns::BatchLast`]). `layer_timings`, by image and batch-last alternating in one
/// process (batch 16, 2 threads, best of 20, twice), in ms, forward / input gradient / weight
/// gradient: at 64 px, layer 4's 3x3 (2 wide) 1.31 → 0.98 / 1.75 → 1.45 / 1.32 → 0.98 and
/// 1.21 → 0.90 / 1.62 → 1.33 / 1.24 → 0.94, layer 3's 3x3 (4 wide) 1.36 → 1.14 / 1.54 → 1.35 /
/// 1.29 → 1.08, the 3x3/2 layers 7-25% faster (8, 4 and 2 wide). At 224 px (one run of
/// 6): 7 wide level, 14 and 28 wide slower (11.9 → 12.9 and 15.0 → 20.4 ms forward).
const BATCH_LAST_MAX_WO: usize = 8;

impl Columns {
    /// The order for geometry `g`: batch-last on maps at most [`BATCH_LAST_MAX_WO`] wide.
    fn for_geometry(g: &Geometry) -> Columns {
        if g.wo <= BATCH_LAST_MAX_WO {
            Columns::BatchLast
        } else {
            Columns::ByImage
        }
    }
}

/// The column matrix of images `i0..i0+m` with the image index last: `[ckk, hw * m]`, row
/// `(c*k + ky)*k + kx`, column `(oy*wo + ox) * m + j` (the entries of [`im2col_chunk`],
/// columns permuted). The images are first copied, zero-padded, into one `[c, hp, wp, m]`
/// buffer, so that each output row of a row of the column matrix is one contiguous copy of
/// `wo * m` floats (stride 1) or `wo` copies of `m` (larger strides): on small maps (4 or 2
/// wide at 64 px) the copies of [`im2col_chunk`] are 4 or 2 floats long.
fn im2col_batch_last(x: &[f32], g: &Geometry, i0: usize, m: usize, col: &mut [f32]) {
    let (k, s, p) = (g.k, g.stride, g.pad);
    let (hp, wp) = (g.h + 2 * p, g.w + 2 * p);
    let hw = g.hw_out();
    let images = &x[i0 * g.plane_in()..(i0 + m) * g.plane_in()];
    with_padded_batch_last(images, (g.c, g.h, g.w), p, m, None, |xt| {
        col[..g.ckk() * hw * m]
            .par_chunks_mut(hw * m)
            .enumerate()
            .for_each(|(r, row)| {
                let c = r / (k * k);
                let ky = (r / k) % k;
                let kx = r % k;
                for (oy, dst) in row.chunks_exact_mut(g.wo * m).enumerate() {
                    let line = ((c * hp + oy * s + ky) * wp + kx) * m;
                    if s == 1 {
                        dst.copy_from_slice(&xt[line..][..g.wo * m]);
                    } else {
                        for (ox, d) in dst.chunks_exact_mut(m).enumerate() {
                            d.copy_from_slice(&xt[line + ox * s * m..][..m]);
                        }
                    }
                }
            })
    })
}

/// The column matrix of images `i0..i0+m` with columns in order `cols`.
fn im2col_in(x: &[f32], g: &Geometry, (i0, m): (usize, usize), cols: Columns, col: &mut [f32]) {
    match cols {
        Columns::ByImage => im2col_chunk(x, g, i0, m, col),
        Columns::BatchLast => im2col_batch_last(x, g, i0, m, col),
    }
}

/// The adjoint of [`im2col_batch_last`] for a chunk of `m` images: adds every entry of the
/// batch-last column matrix `col` back to its input pixel of `dx` (the chunk's `[m, c, h,
/// w]`, written, not added to). The sums go into a zero-padded `[c, hp, wp, m]` buffer, as
/// contiguous runs of `wo * m` (stride 1) or `m` floats, which is then copied out without
/// its padding.
/// Every pixel receives the same additions in the same order as in [`col2im_strided`]
/// (channel, tap, output row, starting from zero): the same bits.
fn col2im_batch_last(col: &[f32], g: &Geometry, m: usize, dx: &mut [f32]) {
    let (k, s, p) = (g.k, g.stride, g.pad);
    let (hp, wp) = (g.h + 2 * p, g.w + 2 * p);
    let hw = g.hw_out();
    let mut xt = vec![0f32; g.c * hp * wp * m];
    xt.par_chunks_mut(hp * wp * m)
        .enumerate()
        .for_each(|(c, dst)| {
            for ky in 0..k {
                for kx in 0..k {
                    let r = (c * k + ky) * k + kx;
                    let row = &col[r * hw * m..][..hw * m];
                    for (oy, src) in row.chunks_exact(g.wo * m).enumerate() {
                        let line = ((oy * s + ky) * wp + kx) * m;
                        if s == 1 {
                            for (d, v) in dst[line..][..g.wo * m].iter_mut().zip(src) {
                                *d += v;
                            }
                        } else {
                            for (ox, v) in src.chunks_exact(m).enumerate() {
                                let d = &mut dst[line + ox * s * m..][..m];
                                for (d, v) in d.iter_mut().zip(v) {
                                    *d += v;
                                }
                            }
                        }
                    }
                }
            }
        });
    let xt = &xt;
    dx[..m * g.plane_in()]
        .par_chunks_mut(g.h * g.w)
        .enumerate()
        .for_each(|(q, plane)| {
            let (j, c) = (q / g.c, q % g.c);
            for (iy, line) in plane.chunks_exact_mut(g.w).enumerate() {
                let src = &xt[((c * hp + iy + p) * wp + p) * m..][..g.w * m];
                for (d, v) in line.iter_mut().zip(src.iter().skip(j).step_by(m)) {
                    *d = *v;
                }
            }
        });
}

/// The output gradient of images `i0..i0+m` (`[m, o, hw]`) as one `[o, m*hw]` matrix with
/// columns in order `cols`, each output channel `o` multiplied by `scale[o]` when given (the
/// folded BatchNorm scale of a fused convolution).
fn gather_grad(
    gr: &[f32],
    g: &Geometry,
    (i0, m): (usize, usize),
    scale: Option<&[f32]>,
    cols: Columns,
    gt: &mut [f32],
) {
    let hw = g.hw_out();
    gt[..g.o * m * hw]
        .par_chunks_mut(m * hw)
        .enumerate()
        .for_each(|(o, row)| {
            let a = scale.map(|sc| sc[o]);
            for j in 0..m {
                let src = &gr[((i0 + j) * g.o + o) * hw..][..hw];
                match (cols, a) {
                    (Columns::ByImage, None) => row[j * hw..][..hw].copy_from_slice(src),
                    (Columns::ByImage, Some(a)) => {
                        for (d, v) in row[j * hw..][..hw].iter_mut().zip(src) {
                            *d = v * a;
                        }
                    }
                    (Columns::BatchLast, None) => {
                        for (d, v) in row.iter_mut().skip(j).step_by(m).zip(src) {
                            *d = *v;
                        }
                    }
                    (Columns::BatchLast, Some(a)) => {
                        for (d, v) in row.iter_mut().skip(j).step_by(m).zip(src) {
                            *d = v * a;
                        }
                    }
                }
            }
        });
}

/// Output width from which [`col2im_strided`] adds a strided convolution's columns into the
/// input's stride phases. `layer_timings`, in one process, old and new alternating (batch
/// 16, 2 threads, best of 8, twice), input gradient in ms: the stem 3.54 → 2.68 and 2.63 →
/// 2.01 at 64 px (32 outputs wide), 37.2 → 29.9 and 35.6 → 28.2 at 224 px; the 3x3/2 layers
/// at 224 px 15.0 → 13.4 and 11.5 → 10.4 (28 wide), 11.0 → 10.4 and 9.6 → 9.2 (14 wide),
/// level at 7 wide; at 64 px (8, 4 and 2 wide) 5-11% slower, where the runs are too short to
/// pay for the phase buffer.
const PHASES_MIN_WO: usize = 14;

/// The adjoint of [`im2col_chunk`] for image `j` of a chunk of `m` images: adds every column
/// entry back to its input pixel.
///
/// With a stride `s > 1` (and outputs at least [`PHASES_MIN_WO`] wide) the entries of one
/// column row land on every `s`-th pixel of an input row, so they are added into the
/// input's `s x s` stride phases instead (phase `(a, b)` holds pixel `(s u + a, s v + b)` at
/// `(u, v)`), where they are contiguous and the additions vectorise; the phases are then
/// interleaved back. Every pixel receives the same additions in the same order (channel,
/// tap, output row) either way: the same bits (tested).
fn col2im_strided(col: &[f32], g: &Geometry, j: usize, m: usize, dx: &mut [f32]) {
    let (k, s, p) = (g.k, g.stride, g.pad);
    let hw = g.hw_out();
    let phased = s > 1 && g.wo >= PHASES_MIN_WO;
    // phase planes `ph x pw`, `s * s` per channel; without them the sums go straight to dx
    let (ph, pw) = (g.h.div_ceil(s), g.w.div_ceil(s));
    let mut phases = vec![0f32; if phased { g.c * s * s * ph * pw } else { 0 }];
    if !phased {
        dx.fill(0.0);
    }
    for c in 0..g.c {
        for ky in 0..k {
            for kx in 0..k {
                let (lo, hi) = valid_cols(g.wo, g.w, s, p, kx);
                if lo >= hi {
                    continue;
                }
                let first = lo * s + kx - p;
                let r = (c * k + ky) * k + kx;
                let row = &col[r * m * hw + j * hw..][..hw];
                for oy in 0..g.ho {
                    let iy = (oy * s + ky) as isize - p as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let iy = iy as usize;
                    let src = &row[oy * g.wo + lo..oy * g.wo + hi];
                    let dst = if phased {
                        // pixel (iy, first + s t) is (iy / s, first / s + t) of phase
                        // (iy % s, first % s)
                        let plane = (c * s + iy % s) * s + first % s;
                        &mut phases[(plane * ph + iy / s) * pw + first / s..][..hi - lo]
                    } else if s == 1 {
                        &mut dx[(c * g.h + iy) * g.w + first..][..hi - lo]
                    } else {
                        let line = &mut dx[(c * g.h + iy) * g.w..][..g.w];
                        for (d, v) in line[first..].iter_mut().step_by(s).zip(src) {
                            *d += v;
                        }
                        continue;
                    };
                    for (d, v) in dst.iter_mut().zip(src) {
                        *d += v;
                    }
                }
            }
        }
    }
    if phased {
        for (c, dc) in dx.chunks_exact_mut(g.h * g.w).take(g.c).enumerate() {
            for (iy, line) in dc.chunks_exact_mut(g.w).enumerate() {
                let (a, u) = (iy % s, iy / s);
                for b in 0..s {
                    let prow = &phases[(((c * s + a) * s + b) * ph + u) * pw..][..pw];
                    for (d, v) in line.iter_mut().skip(b).step_by(s).zip(prow) {
                        *d = *v;
                    }
                }
            }
        }
    }
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    super::cpu_f32(s, l, "conv2d", what)
}

struct Conv2d {
    stride: usize,
    pad: usize,
    epi: Epilogue,
}

/// The shapes of a convolution of `x` with `w` (a square kernel), checked.
pub(super) fn geometry(x: &Shape, w: &Shape, stride: usize, pad: usize) -> Result<Geometry> {
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

/// The convolution of `x` with `w` in geometry `g`, its output passed through `epi` (with
/// `res` added): `[n, o, ho, wo]`. The stride-1 3x3 layers up to 256 channels and the 7x7
/// stride-2 stem run the direct kernel ([`super::direct`]) where the CPU has it, stride-1
/// layers on maps of 1, 3 or 4 px a sum over taps ([`conv_forward_taps`]), the rest im2col
/// and `gemm`.
pub(super) fn conv_forward(
    x: &[f32],
    w: &[f32],
    g: &Geometry,
    epi: &Epilogue,
    res: Option<&[f32]>,
) -> Vec<f32> {
    conv_forward_each(x, w, g, epi, res, None)
}

/// [`conv_forward`], each finished output plane also handed to `post` (from the direct
/// kernel while the plane is still in the cache; after the whole output otherwise).
pub(super) fn conv_forward_each(
    x: &[f32],
    w: &[f32],
    g: &Geometry,
    epi: &Epilogue,
    res: Option<&[f32]>,
    post: Option<&PlaneFn>,
) -> Vec<f32> {
    if post.is_none() && super::winograd::usable(g) {
        let mut out = vec![0f32; g.n * g.o * g.hw_out()];
        super::winograd::conv_winograd(x, w, g, epi, res, &mut out);
        return out;
    }
    if super::direct::usable(g) {
        let mut out = vec![0f32; g.n * g.o * g.hw_out()];
        super::direct::conv_direct(x, w, g, epi, res, &mut out, post);
        return out;
    }
    let out = if super::pixel_pairs::usable(g) {
        // [o, c, 3, 3]: row o at o * c * 9, channel c at c * 9
        conv_pixel_pairs(x, g.c, w, (g.c * 9, 9, false), None, g, epi, res)
    } else if taps_usable(g) {
        conv_forward_taps(x, (TapWeights::Kernel(w), None), g, epi, res)
    } else {
        conv_forward_im2col(x, w, g, epi, res)
    };
    if let Some(post) = post {
        out.par_chunks(g.hw_out())
            .enumerate()
            .for_each(|(i, plane)| post(i, plane));
    }
    out
}

/// [`conv_forward`] as im2col and one matrix product per chunk of images (every geometry).
pub(super) fn conv_forward_im2col(
    x: &[f32],
    w: &[f32],
    g: &Geometry,
    epi: &Epilogue,
    res: Option<&[f32]>,
) -> Vec<f32> {
    conv_forward_im2col_in(x, w, g, epi, res, Columns::for_geometry(g))
}

/// [`conv_forward_im2col`] with columns in order `cols` (either gives the same bits).
fn conv_forward_im2col_in(
    x: &[f32],
    w: &[f32],
    g: &Geometry,
    epi: &Epilogue,
    res: Option<&[f32]>,
    cols: Columns,
) -> Vec<f32> {
    let g = *g;
    let (ckk, hw) = (g.ckk(), g.hw_out());
    let mut out = vec![0f32; g.n * g.o * hw];
    let chunk = images_per_chunk(&g);
    let batch_last = cols == Columns::BatchLast;
    with_scratch(ckk * chunk * hw, g.o * chunk * hw, |col, prod| {
        let mut i0 = 0;
        while i0 < g.n {
            let m = chunk.min(g.n - i0);
            im2col_in(x, &g, (i0, m), cols, col);
            // [o, m*hw] = W [o, ckk] x col [ckk, m*hw], then to [m, o, hw]
            matmul(
                g.o,
                m * hw,
                ckk,
                prod,
                false,
                (w, ckk as isize, 1),
                (col, (m * hw) as isize, 1),
            );
            write_output(prod, &g, (i0, m), batch_last, epi, res, &mut out);
            i0 += m;
        }
    });
    out
}

/// Writes the product `prod` (`[o, m*hw]`, columns image by image or batch-last) of images
/// `i0..i0+m` to their planes of `out` (`[n, o, hw]`), through the epilogue.
fn write_output(
    prod: &[f32],
    g: &Geometry,
    (i0, m): (usize, usize),
    batch_last: bool,
    epi: &Epilogue,
    res: Option<&[f32]>,
    out: &mut [f32],
) {
    let (o_n, hw) = (g.o, g.hw_out());
    out[i0 * o_n * hw..(i0 + m) * o_n * hw]
        .par_chunks_mut(hw)
        .enumerate()
        .for_each(|(q, dst)| {
            let (j, o) = (q / o_n, q % o_n);
            let r = res.map(|r| &r[(i0 * o_n + q) * hw..][..hw]);
            if batch_last {
                let src = &prod[o * m * hw..][..m * hw];
                for (d, v) in dst.iter_mut().zip(src.iter().skip(j).step_by(m)) {
                    *d = *v;
                }
            } else {
                dst.copy_from_slice(&prod[o * m * hw + j * hw..][..hw]);
            }
            epi.apply_in_place(o, r, dst);
        });
}

/// A convolution of `src` (`[n, kn, s, s]`, `s` 2, 4 or 7 px, channel `k` multiplied by
/// `in_scale[k]` where given) as sums over pixel pairs ([`super::pixel_pairs`]) with the
/// weights at strides `(rs, ks)` (`flip` for an input gradient), written as `out_g`'s output
/// (`[n, out_g.o, s, s]`) through `epi`, with `res` added.
#[allow(clippy::too_many_arguments)]
fn conv_pixel_pairs(
    src: &[f32],
    kn: usize,
    w: &[f32],
    (rs, ks, flip): (usize, usize, bool),
    in_scale: Option<&[f32]>,
    out_g: &Geometry,
    epi: &Epilogue,
    res: Option<&[f32]>,
) -> Vec<f32> {
    let (n, rows, side) = (out_g.n, out_g.o, out_g.wo);
    let plane = side * side;
    let mut out = vec![0f32; n * rows * plane];
    super::layout::with_padded_batch_last(src, (kn, side, side), 0, n, in_scale, |sb| {
        with_scratch(0, rows * plane * n, |_, prod| {
            super::pixel_pairs::sums(sb, (kn, n, side), w, (rows, rs, ks), flip, prod);
            write_output(prod, out_g, (0, n), true, epi, res, &mut out);
        })
    });
    out
}

/// Output width up to which a stride-1 "same" convolution (odd kernel larger than 1x1,
/// padding k/2) runs as [`conv_forward_taps`], except 2 px wide ([`taps_usable`]; the
/// measurements are there).
const TAPS_MAX_WO: usize = 4;

/// The fewest columns (`n * wo`) an output row of the batch must have for the sum over taps
/// on maps wider than 1 px ([`taps_usable`]).
const TAPS_MIN_COLUMNS: usize = 64;

static TAPS: AtomicBool = AtomicBool::new(true);

/// Turns the sum over taps on small maps (stride-1 convolutions on maps of 1, 3 or 4 px,
/// skipping the taps that read only padding) on or off for the whole
/// process (on by default); off, those convolutions run im2col and `gemm` as before. Both
/// are correct; they sum in different orders, so results differ in the last bits.
pub fn set_tap_conv(enabled: bool) {
    TAPS.store(enabled, Ordering::Relaxed);
}

/// Whether [`conv_forward_taps`] runs geometry `g`: maps 1, 3 or 4 px wide. `layer_timings`
/// (batch 16, 2 threads, best of 30, three alternating runs with and without, the AVX-512
/// VM), ResNet-18's 3x3 convolutions, im2col → taps, in ms:
/// - 4 px (layer 3 at 64 px): forward 0.83-0.96 → 0.71, input gradient (the flipped
///   convolution) 0.89-1.03 → 0.77-0.82;
/// - 1 px (layer 4 at 32 px: only the centre tap reaches the map): forward 0.45-0.57 →
///   0.17-0.25, input gradient 1.03-1.46 → 0.59-0.88;
/// - 2 px (layer 4 at 64 px): forward level (0.73-0.77 against 0.72-0.79), input gradient
///   slower (1.15-1.19 → 1.23-1.31). Of the 9 taps, 4 reach each output, but the side taps
///   run one product per output row of 16 columns (one per image), too narrow for `gemm`
///   to gain from them what the skipped taps save. 2 px maps stay with im2col.
///
/// Those figures are for batches of 16. With fewer images the taps' products are narrower
/// still (their columns are the images of an output row), and whole passes ran faster
/// without them (`bench`, 64 px unless said, images/s, two runs each, taps / im2col):
/// input gradients 92-95 / 121-124 at batch 1, 156-174 / 204-232 at 2, 214-231 / 274-289
/// at 3, 302-317 / 325-388 at 4, 450-453 / 535-549 at 8; eval 207-223 / 306-312 at 1,
/// 539-562 / 682-739 at 3, 758-779 / 935-1041 at 4, 1070-1087 / 1230-1260 at 8; at 48 px
/// (3 px maps) eval 677-796 / 1176-1191 at batch 4. At batch 16 the two were level (input
/// gradients 602-610 / 609-629, eval 1307-1327 / 1286-1327; at 48 and 96 px too). So the
/// taps run where an output row of the batch has at least [`TAPS_MIN_COLUMNS`] columns
/// (`n * wo`: batches of 16 on 4 px maps), and on 1x1 maps, where only the centre tap
/// reaches the map and im2col would multiply eight taps of zeros.
///
/// With AVX-512, 3x3 convolutions on 4 px maps of 12 to 16 images go to
/// [`super::pixel_pairs`] first (checked before this), which measured faster still.
fn taps_usable(g: &Geometry) -> bool {
    TAPS.load(Ordering::Relaxed)
        && g.stride == 1
        && g.k > 1
        && g.k % 2 == 1
        && g.pad == g.k / 2
        && g.wo <= TAPS_MAX_WO
        && g.wo != 2
        && (g.ho, g.wo) == (g.h, g.w)
        && (g.n * g.wo >= TAPS_MIN_COLUMNS || g.ho * g.wo == 1)
}

/// The weights of [`conv_forward_taps`] in geometry `g`.
#[derive(Clone, Copy)]
enum TapWeights<'a> {
    /// The kernel `[g.o, g.c, k, k]`.
    Kernel(&'a [f32]),
    /// The flipped, transposed kernel of an input gradient read in place from the forward
    /// convolution's weight `w` (`[g.c, g.o, k, k]`, `g`'s channels transposed): entry
    /// `(a, b, t)` = `w[b][a][kk - 1 - t]`. The sums are those of [`TapWeights::Kernel`]
    /// with the flipped copy ([`flip_kernel`] without a scale), bit for bit (tested); the
    /// strided reads cost about 10% on layer 3 at 64 px.
    FlippedInPlace(&'a [f32]),
}

impl TapWeights<'_> {
    /// Tap `t`'s weights `[a, b]` from output channel `a0` on: where they start, the
    /// distance between output channels and between input channels.
    fn tap(self, g: &Geometry, a0: usize, t: usize) -> (*const f32, isize, isize) {
        let kk = g.k * g.k;
        match self {
            TapWeights::Kernel(w) => (
                w[a0 * g.c * kk + t..].as_ptr(),
                (g.c * kk) as isize,
                kk as isize,
            ),
            TapWeights::FlippedInPlace(w) => (
                w[a0 * kk + kk - 1 - t..].as_ptr(),
                kk as isize,
                (g.o * kk) as isize,
            ),
        }
    }
}

/// [`conv_forward`] of a stride-1 "same" convolution on small maps ([`taps_usable`]) as a sum
/// over the kernel's taps: for tap `(ky, kx)`, the product of `W[:, :, ky, kx]` (`[o, c]`)
/// with the input pixels it reaches, added into the outputs it reaches. Taps that would read
/// the zero padding are skipped, which im2col computes: on layer 3's 4x4 maps at 64 px a
/// 3x3 kernel reaches 6.25 of its 9 taps per output on average, on a 1x1 map (layer 4 at
/// 32 px) only the centre one. The images are copied
/// batch-last (`[c, h, w, n]`), so each tap's product reads whole rows (or, for the middle
/// column of taps, whole maps) as one block, and its output rows are one block too.
///
/// The centre tap reaches every output and runs first, writing them; the others add in a
/// fixed order. Each thread takes whole blocks of output channels (from multiples of 16,
/// the sum over channels in [`super::matmul::gemm_into`]'s fixed slices), so the bits do not
/// depend on the thread count (tested).
///
/// The weights are a kernel `[o, c, k, k]`, or, for an input gradient, the forward
/// convolution's weight read as its flipped, transposed kernel
/// ([`TapWeights::FlippedInPlace`]). Each input channel `b` is multiplied by `in_scale[b]`
/// where given (an input gradient's folded BatchNorm scale) as the images are copied.
/// Each tap's weights are read in place, strided (`gemm` packs them as it goes): copied
/// tap by tap into a layout of their own once per pass they were 10% faster again on layers
/// 3 and 4 at 64 px in an experiment, but a copy per pass costs as much in training, and per
/// attack it would be one more derived weight to keep.
fn conv_forward_taps(
    x: &[f32],
    (w, in_scale): (TapWeights, Option<&[f32]>),
    g: &Geometry,
    epi: &Epilogue,
    res: Option<&[f32]>,
) -> Vec<f32> {
    let g = *g;
    let (k, p, kk, m, hw) = (g.k, g.pad, g.k * g.k, g.n, g.hw_out());
    let mut out = vec![0f32; g.n * g.o * hw];
    super::layout::with_padded_batch_last(x, (g.c, g.h, g.w), 0, m, in_scale, |xb| {
        with_scratch(0, g.o * hw * m, |_, prod| {
            let parts = threads_for_rows(g.o);
            let dst = super::SendPtr(prod.as_mut_ptr());
            let centre = p * k + p;
            (0..parts).into_par_iter().for_each(|b| {
                let (o0, o1) = super::matmul::row_block(b, parts, g.o);
                if o0 >= o1 {
                    return;
                }
                for t in std::iter::once(centre).chain((0..kk).filter(|&t| t != centre)) {
                    let (ky, kx) = (t / k, t % k);
                    let (ox0, ox1) = valid_cols(g.wo, g.w, 1, p, kx);
                    let (oy0, oy1) = valid_cols(g.ho, g.h, 1, p, ky);
                    if ox0 >= ox1 || oy0 >= oy1 {
                        continue;
                    }
                    // the middle column of taps reads whole rows: one block of rows
                    let whole_rows = (ox0, ox1) == (0, g.wo);
                    let (runs, per_run) = if whole_rows {
                        (1, (oy1 - oy0) * g.wo * m)
                    } else {
                        (oy1 - oy0, (ox1 - ox0) * m)
                    };
                    for r in 0..runs {
                        let oy = oy0 + r;
                        let (iy, ix) = (oy + ky - p, ox0 + kx - p);
                        // SAFETY: rows o0..o1 of prod are this task's; the offsets lie inside
                        // the [o, ho, wo, m] product, the [o, c, kk] weight and the
                        // [c, h, w, m] images (valid_cols keeps the tap inside the maps).
                        unsafe {
                            super::matmul::gemm_into(
                                o1 - o0,
                                per_run,
                                g.c,
                                (
                                    dst.get().add(o0 * hw * m + (oy * g.wo + ox0) * m),
                                    (hw * m) as isize,
                                    1,
                                ),
                                t != centre,
                                w.tap(&g, o0, t),
                                (
                                    xb[(iy * g.w + ix) * m..].as_ptr(),
                                    (g.h * g.w * m) as isize,
                                    1,
                                ),
                            );
                        }
                    }
                }
            });
            write_output(prod, &g, (0, m), true, epi, res, &mut out);
        })
    });
    out
}

/// How many blocks of rows to split `rows` output channels into: one per thread, each at
/// least 16 rows.
fn threads_for_rows(rows: usize) -> usize {
    rayon::current_num_threads().clamp(1, (rows / 16).max(1))
}

impl Conv2d {
    fn cpu_forward(
        &self,
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        res: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let g = geometry(l1.shape(), l2.shape(), self.stride, self.pad)?;
        let x = f32_slice(s1, l1, "input")?;
        let w = f32_slice(s2, l2, "weight")?;
        let res = match res {
            Some((s, l)) => {
                let r = f32_slice(s, l, "residual")?;
                if l.shape().dims() != [g.n, g.o, g.ho, g.wo] {
                    candle_core::bail!(
                        "conv2d: residual {:?} does not match the output [{}, {}, {}, {}]",
                        l.shape(),
                        g.n,
                        g.o,
                        g.ho,
                        g.wo
                    );
                }
                Some(r)
            }
            None => None,
        };
        for (what, v) in [("scale", &self.epi.scale), ("shift", &self.epi.shift)] {
            if v.as_ref().is_some_and(|v| v.len() != g.o) {
                candle_core::bail!("conv2d: {what} must have one value per output channel");
            }
        }
        let out = conv_forward(x, w, &g, &self.epi, res);
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.o, g.ho, g.wo))))
    }

    /// Gradients of the input and weight from the gradient `gz` of the pre-activation
    /// output (the ReLU mask already applied).
    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        gz: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let scale = self.epi.scale.clone();
        let gx = if x.track_op() {
            Some(gz.apply_op2_no_bwd(
                w,
                &ConvInputGrad {
                    stride: self.stride,
                    pad: self.pad,
                    x_shape: x.shape().clone(),
                    scale: scale.clone(),
                },
            )?)
        } else {
            None
        };
        let gw = if w.track_op() {
            let gw = x.apply_op2_no_bwd(
                gz,
                &ConvWeightGrad {
                    stride: self.stride,
                    pad: self.pad,
                    w_shape: w.shape().clone(),
                    scale,
                },
            )?;
            Some(gw)
        } else {
            None
        };
        Ok((gx, gw))
    }

    /// The gradient before the activation: `grad` where the output is positive (ReLU), else
    /// `grad` itself.
    fn pre_activation_grad(&self, out: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let grad = grad.contiguous()?;
        if self.epi.relu {
            super::act::relu_grad(&grad, out)
        } else {
            Ok(grad)
        }
    }
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
        self.cpu_forward((s1, l1), (s2, l2), None)
    }

    /// cuDNN's forward; the epilogue (folded BatchNorm, residual, ReLU) runs as candle ops
    /// after it (see [`conv2d_fused`]), so this op carries none on CUDA.
    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if self.epi.scale.is_some() || self.epi.shift.is_some() || self.epi.relu {
            candle_core::bail!("conv2d: the fused epilogue runs on the CPU only");
        }
        let g = geometry(l1.shape(), l2.shape(), self.stride, self.pad)?;
        let y = super::cudnn::forward(&g, (s1, l1), (s2, l2))?;
        Ok((y, Shape::from((g.n, g.o, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gz = self.pre_activation_grad(out, grad)?;
        self.grads(x, w, &gz)
    }
}

impl CustomOp3 for Conv2d {
    fn name(&self) -> &'static str {
        "robustlens-conv2d-residual"
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
        self.cpu_forward((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        r: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gz = self.pre_activation_grad(out, grad)?;
        let (gx, gw) = self.grads(x, w, &gz)?;
        Ok((gx, gw, r.track_op().then_some(gz)))
    }
}

/// A cuDNN backward pass takes no folded scale (the CUDA path applies BatchNorm as candle
/// ops) and an output gradient `grad` of the forward's output shape.
#[cfg(feature = "cudnn")]
fn cudnn_backward_fits(scale: Option<&Arc<Vec<f32>>>, grad: &Layout, g: &Geometry) -> Result<()> {
    if scale.is_some() {
        candle_core::bail!("conv2d backward: the folded scale runs on the CPU only");
    }
    if grad.shape().dims() != [g.n, g.o, g.ho, g.wo] {
        candle_core::bail!("conv2d backward: gradient shape does not match the forward");
    }
    Ok(())
}

/// dL/dx from dL/dy and the weight: per image, col2im(W^T g).
struct ConvInputGrad {
    stride: usize,
    pad: usize,
    x_shape: Shape,
    scale: Option<Arc<Vec<f32>>>,
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
        if gr.len() != g.n * g.o * g.hw_out() {
            candle_core::bail!("conv2d backward: gradient shape does not match the forward");
        }
        let dx = conv_input_grad(gr, w, &g, self.scale.as_deref().map(|v| v.as_slice()));
        Ok((CpuStorage::F32(dx), self.x_shape.clone()))
    }

    /// cuDNN's backward-data.
    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = geometry(&self.x_shape, l2.shape(), self.stride, self.pad)?;
        cudnn_backward_fits(self.scale.as_ref(), l1, &g)?;
        let dx = super::cudnn::input_grad(&g, (s1, l1), (s2, l2))?;
        Ok((dx, self.x_shape.clone()))
    }
}

/// The input gradient of the convolution in geometry `g` with weight `w`, from the output
/// gradient `gr` (`[n, o, ho, wo]`), each output channel scaled by `scale[o]` when given:
/// `[n, c, h, w]`.
pub(super) fn conv_input_grad(
    gr: &[f32],
    w: &[f32],
    g: &Geometry,
    scale: Option<&[f32]>,
) -> Vec<f32> {
    let g = *g;
    if super::stem_grad::usable(&g) {
        return super::stem_grad::input_grad(gr, w, &g, scale);
    }
    if super::pixel_pairs::usable(&g) {
        // 3x3 on 2x2, 4x4 and 7x7 maps with AVX-512: the sum over pixel pairs, the kernel
        // [o, c, 3, 3] read transposed in place (row c at c * 9, channel o at o * c * 9)
        let dx_g = Geometry { o: g.c, ..g };
        let epi = Epilogue::default();
        return conv_pixel_pairs(gr, g.o, w, (9, g.c * 9, true), scale, &dx_g, &epi, None);
    }
    // a stride-1 convolution's input gradient as a convolution (padding k-1-p)
    let flipped = (g.stride == 1 && g.pad < g.k).then(|| Geometry {
        n: g.n,
        c: g.o,
        h: g.ho,
        w: g.wo,
        o: g.c,
        k: g.k,
        stride: 1,
        pad: g.k - 1 - g.pad,
        ho: g.h,
        wo: g.w,
    });
    // the flipped convolution as a sum over taps ([`conv_forward_taps`]), which reads the
    // kernel in place: no flipped copy per pass
    let taps =
        |f: &Geometry| taps_usable(f) && !super::winograd::usable(f) && !super::direct::usable(f);
    if let Some(flipped) = flipped.filter(|f| {
        4 * g.o <= g.n * g.hw_out()
            || super::winograd::usable(f)
            || (g.k > 1 && super::layout::use_avx512() && (g.o <= g.n * g.hw_out() || taps(f)))
    }) {
        // A stride-1 convolution's input gradient is the convolution of the output
        // gradient with the flipped, transposed kernel (padding k-1-p): one matrix product
        // summing over o*k*k (instead of one summing over o into a k*k times larger
        // column matrix, then scattered back). Not where the maps are small beside the
        // weight, whose flipped copy would then cost more than the scatter it saves, unless
        // the flipped convolution runs Winograd's kernel (layer 4 at 224 px: 7x7 maps), or
        // the sum over taps, or `gemm`'s AVX-512 products where the weight is no larger
        // than the column matrix (o <= n*ho*wo): with AVX-512 the 3x3 scatter is then the
        // slower part. Measured per layer with the weights out of the cache, as they are
        // in a network's backward pass (the README's "AVX-512 routing" and its tenth step;
        // 1x1 kernels, whose scatter is a plain copy, keep the first rule).
        let kk = g.k * g.k;
        let params = |scale: Option<&[f32]>| {
            let mut p = vec![g.o as u32, g.c as u32, kk as u32];
            p.extend(super::frozen::scale_params(scale));
            p
        };
        if taps(&flipped) {
            // the kernel read in place, or from the second pass of a frozen-weights scope on
            // its flipped copy, made once and read faster; unscaled, the same sums either way
            let kept = super::frozen::derive_if_kept(
                Derivation::Flipped,
                w,
                || params(None),
                || flip_kernel(w, g.o, g.c, kk, None),
            );
            let tw = kept
                .as_deref()
                .map_or(TapWeights::FlippedInPlace(w), TapWeights::Kernel);
            return conv_forward_taps(gr, (tw, scale), &flipped, &Epilogue::default(), None);
        }
        let wt = super::frozen::derive(
            Derivation::Flipped,
            w,
            || params(scale),
            || flip_kernel(w, g.o, g.c, kk, scale),
        );
        return conv_forward(gr, &wt, &flipped, &Epilogue::default(), None);
    }
    input_grad_col2im(gr, w, &g, scale, Columns::for_geometry(&g))
}

/// [`input_grad_col2im`] in the order of columns its route takes, for other kernels' tests.
#[cfg(test)]
pub(super) fn input_grad_col2im_for_tests(
    gr: &[f32],
    w: &[f32],
    g: &Geometry,
    scale: Option<&[f32]>,
) -> Vec<f32> {
    input_grad_col2im(gr, w, g, scale, Columns::for_geometry(g))
}

/// [`conv_input_grad`] as one matrix product `Wᵀ G` per chunk of images, its columns added
/// back to the input's pixels (col2im), columns in order `cols` (either gives the same
/// bits).
fn input_grad_col2im(
    gr: &[f32],
    w: &[f32],
    g: &Geometry,
    scale: Option<&[f32]>,
    cols: Columns,
) -> Vec<f32> {
    let g = *g;
    let (ckk, hw) = (g.ckk(), g.hw_out());
    let mut dx = vec![0f32; g.n * g.plane_in()];
    let chunk = images_per_chunk(&g);
    let batch_last = cols == Columns::BatchLast;
    with_scratch(g.o * chunk * hw, ckk * chunk * hw, |gt, dcol| {
        let mut i0 = 0;
        while i0 < g.n {
            let m = chunk.min(g.n - i0);
            // gradient [m, o, hw] -> [o, m*hw]
            gather_grad(gr, &g, (i0, m), scale, cols, gt);
            // dcol [ckk, m*hw] = W^T [ckk, o] x G [o, m*hw]
            matmul(
                ckk,
                m * hw,
                g.o,
                dcol,
                false,
                (w, 1, ckk as isize),
                (gt, (m * hw) as isize, 1),
            );
            let dcol = &*dcol;
            let dxm = &mut dx[i0 * g.plane_in()..(i0 + m) * g.plane_in()];
            if batch_last {
                col2im_batch_last(dcol, &g, m, dxm);
            } else {
                dxm.par_chunks_mut(g.plane_in())
                    .enumerate()
                    .for_each(|(j, d)| col2im_strided(dcol, &g, j, m, d));
            }
            i0 += m;
        }
    });
    dx
}

/// The flipped, transposed kernel of `w` `[o, c, kk]`: `[c, o, kk]`, entry `(c, o, q)` =
/// `w[o][c][kk - 1 - q] * scale[o]` (1 without `scale`). Copied in blocks of 16 x 16
/// kernels, so that both the reads and the writes run along rows that stay in the cache,
/// with the 3x3 reversal unrolled (element by element along `o`, every read was a cache miss
/// on the wide layers: 4% of a training step at 64 px in `perf`).
fn flip_kernel(w: &[f32], o: usize, c: usize, kk: usize, scale: Option<&[f32]>) -> Vec<f32> {
    const B: usize = 16;
    // every entry is written below: no zero fill first (it showed up in `perf`)
    let mut wt: Vec<f32> = Vec::with_capacity(o * c * kk);
    wt.spare_capacity_mut()[..o * c * kk]
        .par_chunks_mut(B * o * kk)
        .enumerate()
        .for_each(|(cb, dst)| {
            let c0 = cb * B;
            let cn = B.min(c - c0);
            for o0 in (0..o).step_by(B) {
                for oi in o0..(o0 + B).min(o) {
                    let a = scale.map_or(1.0, |s| s[oi]);
                    let src = &w[(oi * c + c0) * kk..][..cn * kk];
                    for (ci, s) in src.chunks_exact(kk).enumerate() {
                        let d = &mut dst[(ci * o + oi) * kk..][..kk];
                        if let (Ok(d), Ok(s)) = (
                            <&mut [MaybeUninit<f32>; 9]>::try_from(&mut *d),
                            <&[f32; 9]>::try_from(s),
                        ) {
                            // 3x3 (nearly all of them): a fixed-size reversal, no loop
                            *d = [s[8], s[7], s[6], s[5], s[4], s[3], s[2], s[1], s[0]]
                                .map(|v| MaybeUninit::new(v * a));
                        } else {
                            for (d, s) in d.iter_mut().zip(s.iter().rev()) {
                                d.write(*s * a);
                            }
                        }
                    }
                }
            }
        });
    // SAFETY: the chunks cover all o * c * kk entries (c blocks of B x o x kk, the last
    // shorter), and every (ci, oi, q) of each was written above
    unsafe { wt.set_len(o * c * kk) };
    wt
}

/// dL/dW from the input and dL/dy: sum over images of g im2col(x)^T.
struct ConvWeightGrad {
    stride: usize,
    pad: usize,
    w_shape: Shape,
    scale: Option<Arc<Vec<f32>>>,
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
        let hw = g.hw_out();
        if gr.len() != g.n * g.o * hw {
            candle_core::bail!("conv2d backward: gradient shape does not match the forward");
        }
        let scale = self.scale.as_deref().map(|v| v.as_slice());
        let dw = conv_weight_grad(x, gr, &g, scale);
        Ok((CpuStorage::F32(dw), self.w_shape.clone()))
    }

    /// cuDNN's backward-filter.
    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = geometry(l1.shape(), &self.w_shape, self.stride, self.pad)?;
        cudnn_backward_fits(self.scale.as_ref(), l2, &g)?;
        let dw = super::cudnn::weight_grad(&g, (s1, l1), (s2, l2))?;
        Ok((dw, self.w_shape.clone()))
    }
}

/// The weight gradient `[o, c, k, k]` of the convolution of `x` in geometry `g` from the
/// output gradient `gr`, each channel `o` times `scale[o]` when given: Winograd's where
/// [`super::winograd::usable_for_weights`] routes it, the direct 3x3 kernel where
/// [`super::direct::usable_for_weights`] does, im2col and `gemm` otherwise.
fn conv_weight_grad(x: &[f32], gr: &[f32], g: &Geometry, scale: Option<&[f32]>) -> Vec<f32> {
    if super::winograd::usable_for_weights(g) {
        super::winograd::weight_grad(x, gr, g, scale)
    } else if super::direct::usable_for_weights(g) {
        super::direct::weight_grad3x3(x, gr, g, scale)
    } else if by_image_pays(g) {
        weight_grad_by_image(x, gr, g, scale)
    } else {
        weight_grad_im2col(x, gr, g, scale)
    }
}

/// Whether [`weight_grad_by_image`] beats [`weight_grad_im2col`]: maps of at least 64
/// output positions (a long sum per image), and weights of at most 128 K values (each image's
/// partial sum is that size). Measured, batch 16, 2 threads, AVX-512, best of 10
/// interleaved: the stem 7x7/2 2.99 → 2.45 ms at 64 px, 36.5 → 23.4 ms at 224 px; the
/// downsampling 1x1/2 convolutions 0.16 → 0.13 ms (64 → 128 channels, 16 px), 1.45 → 0.93
/// ms (56 px), 1.10 → 0.89 ms (128 → 256, 28 px); where it lost: 0.13 → 0.21 ms at 128 →
/// 256, 8 px (16 positions), 0.89 → 1.20 ms at 256 → 512, 14 px (49 positions). The limit
/// was 64 K until layer 2's strided 3x3 convolution (64 → 128 channels, 74 K weights) was
/// measured (`layer_timings`, best of 5 to 30, twice): 1.01-1.03 → 0.74-0.78 ms at 64 px,
/// 3.93 → 2.0 at 128 px, 9.5-9.9 → 5.9-6.1 at 224 px; and 1x1 convolutions (best of 12):
/// 672 → 112 and 112 → 672 channels at 14 px 1.84 → 1.53 and 2.42 → 1.15 ms, 256 → 512 at
/// 28 px, stride 2 (128 K weights) 2.84 → 2.39 ms. Layer 3's strided one (295 K) was mixed
/// (6.0-6.6 against 5.7-7.0 ms at 224 px) and stays on im2col.
fn by_image_pays(g: &Geometry) -> bool {
    g.hw_out() >= 64 && g.o * g.ckk() <= 1 << 17
}

/// The weight gradient `[o, c, k, k]` of the convolution of `x` in geometry `g` from the
/// output gradient `gr` (each channel `o` times `scale[o]` when given): one matrix product
/// `G [o, m*hw] x col^T [m*hw, ckk]` per chunk of images (every geometry).
pub(super) fn weight_grad_im2col(
    x: &[f32],
    gr: &[f32],
    g: &Geometry,
    scale: Option<&[f32]>,
) -> Vec<f32> {
    weight_grad_im2col_in(x, gr, g, scale, Columns::for_geometry(g))
}

/// [`weight_grad_im2col`] with columns in order `cols`: the sums over images and output
/// positions run in that order, so the two orders round differently.
fn weight_grad_im2col_in(
    x: &[f32],
    gr: &[f32],
    g: &Geometry,
    scale: Option<&[f32]>,
    cols: Columns,
) -> Vec<f32> {
    let g = *g;
    let (ckk, hw) = (g.ckk(), g.hw_out());
    // written by the first chunk's product (45 MB of zeros a step for ResNet-18 otherwise)
    let mut dw: Option<Vec<f32>> = None;
    let chunk = images_per_chunk(&g);
    with_scratch(ckk * chunk * hw, g.o * chunk * hw, |col, gt| {
        let mut i0 = 0;
        while i0 < g.n {
            let m = chunk.min(g.n - i0);
            im2col_in(x, &g, (i0, m), cols, col);
            gather_grad(gr, &g, (i0, m), scale, cols, gt);
            // dW [o, ckk] (+)= G [o, m*hw] x col^T [m*hw, ckk]
            let (a, b) = (
                (&gt[..], (m * hw) as isize, 1),
                (&col[..], 1, (m * hw) as isize),
            );
            match dw.as_mut() {
                None => dw = Some(matmul_new(g.o, ckk, m * hw, a, b)),
                Some(dw) => matmul(g.o, ckk, m * hw, dw, true, a, b),
            }
            i0 += m;
        }
    });
    dw.unwrap_or_else(|| vec![0.0; g.o * ckk])
}

/// The weight gradient of [`weight_grad_im2col`] as one product per image, the images in
/// parallel and their sums added in image order (the same bits whatever the number of
/// threads): `G_i [o, hw] x col_i^T [hw, ckk]`, each one single-threaded `gemm` call over
/// the image's whole `[o, ckk]` block, where the column blocks of [`weight_grad_im2col`]
/// each repack `G` and cut the sum into slices of 512 (see [`by_image_pays`]).
pub(super) fn weight_grad_by_image(
    x: &[f32],
    gr: &[f32],
    g: &Geometry,
    scale: Option<&[f32]>,
) -> Vec<f32> {
    let g = *g;
    let (ckk, hw) = (g.ckk(), g.hw_out());
    let size = g.o * ckk;
    let parts: Vec<Vec<f32>> = (0..g.n)
        .into_par_iter()
        .map(|i| {
            // the column matrix's rows padded: the stem's at 64 px (32 x 32 outputs) would
            // otherwise lie 4 KB apart
            let rs = super::layout::padded_stride(hw);
            with_scratch(ckk * rs, 0, |col, _| {
                im2col_rows(x, &g, (i, 1), rs, col);
                let gi = &gr[i * g.o * hw..][..g.o * hw];
                let (a, b) = ((gi, hw as isize, 1), (&col[..], 1, rs as isize));
                let mut d = vec![0f32; size];
                matmul_blocks(g.o, ckk, hw, &mut d, false, a, b, 1);
                d
            })
        })
        .collect();
    let mut dw = vec![0f32; size];
    for p in &parts {
        for (d, v) in dw.iter_mut().zip(p) {
            *d += v;
        }
    }
    if let Some(sc) = scale {
        for (row, a) in dw.chunks_exact_mut(ckk).zip(sc) {
            row.iter_mut().for_each(|v| *v *= a);
        }
    }
    dw
}

/// A differentiable convolution of `x` `[N, C, H, W]` with a square `weight` `[O, C, K, K]`
/// (no bias). On the CPU in f32 the custom op above; elsewhere candle's `conv2d`.
pub fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    conv2d_fused(x, weight, stride, padding, None, None, false)
}

/// `act(conv2d(x, weight) * scale[o] + shift[o] + residual)`: a convolution followed by a
/// folded eval-mode BatchNorm (`scale`, `shift`: `[O]` constants on the input's device), an
/// optional residual (differentiable) and an optional ReLU, in one pass over the output and,
/// backward, one pass for the ReLU mask (the scale folds into the gradient gather). The
/// gradients of `x`, `weight` and `residual` are computed when they are tracked.
/// On CUDA with the `cudnn` feature, the convolution is cuDNN's (with the same rule for the
/// gradients), the scale and shift candle ops, the ReLU (with the residual) cuDNN's;
/// elsewhere candle ops.
pub fn conv2d_fused(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
    bn: Option<(&Tensor, &Tensor)>,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    if stride == 0 {
        candle_core::bail!("conv2d: stride must be positive");
    }
    let mut all = vec![x, weight];
    all.extend(residual);
    if super::on_cpu_f32(&all) {
        let host = |t: &Tensor| -> Result<Arc<Vec<f32>>> {
            Ok(Arc::new(
                t.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?,
            ))
        };
        let op = Conv2d {
            stride,
            pad: padding,
            epi: Epilogue {
                scale: bn.map(|b| host(b.0)).transpose()?,
                shift: bn.map(|b| host(b.1)).transpose()?,
                relu,
            },
        };
        let (x, w) = (x.contiguous()?, weight.contiguous()?);
        match residual {
            None => x.apply_op2(&w, op),
            Some(r) => x.apply_op3(&w, &r.contiguous()?, op),
        }
    } else {
        let mut y = if super::on_cudnn_f32(&[x, weight]) {
            let op = Conv2d {
                stride,
                pad: padding,
                epi: Epilogue::default(),
            };
            x.contiguous()?.apply_op2(&weight.contiguous()?, op)?
        } else {
            x.conv2d(weight, padding, stride, 1, 1)?
        };
        if let Some((scale, shift)) = bn {
            let o = scale.elem_count();
            let s = scale.reshape((1, o, 1, 1))?.to_dtype(y.dtype())?;
            let b = shift.reshape((1, o, 1, 1))?.to_dtype(y.dtype())?;
            y = y.broadcast_mul(&s)?.broadcast_add(&b)?;
        }
        super::act::add_act(y, residual, relu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{
        assert_near, conv_bn_reference, max_rel, normal, on_threads, probe_grads, same_bits,
    };
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        normal(shape, seed, 1.0)
    }

    #[test]
    fn routing_follows_the_instruction_set() {
        use crate::ops::layout::tests_isa::each_isa;
        if !crate::ops::layout::has_fma() {
            return;
        }
        let g = |c: usize, h: usize| {
            geometry(
                &Shape::from((16, c, h, h)),
                &Shape::from((c, c, 3, 3)),
                1,
                1,
            )
            .unwrap()
        };
        each_isa(|wide| {
            // Winograd below 512 channels on both, from 512 only with AVX2
            assert!(crate::ops::winograd::usable(&g(128, 28)));
            assert!(crate::ops::winograd::usable(&g(256, 14)));
            assert_eq!(crate::ops::winograd::usable(&g(512, 7)), !wide);
            // the direct weight gradient up to 64 channels on both, 128 only with AVX2
            assert!(crate::ops::direct::usable_for_weights(&g(64, 56)));
            assert_eq!(crate::ops::direct::usable_for_weights(&g(128, 28)), !wide);
            // Winograd's weight gradient only with AVX-512, on maps of 8 px and more
            for (c, h) in [(64, 56), (128, 8), (256, 14)] {
                assert_eq!(crate::ops::winograd::usable_for_weights(&g(c, h)), wide);
            }
            assert!(!crate::ops::winograd::usable_for_weights(&g(512, 7)));
        });
    }

    #[test]
    fn weight_gradient_by_image_is_im2cols_with_the_bits_of_any_thread_count() {
        // the rule: 64 output positions or more, weights up to 128 K values (layer 2's
        // strided convolution, 74 K, yes; layer 3's, 295 K, no)
        let rule = |c: usize, o: usize, h: usize| {
            let g = geometry(&Shape::from((2, c, h, h)), &Shape::from((o, c, 3, 3)), 2, 1);
            by_image_pays(&g.unwrap())
        };
        assert!(rule(64, 128, 16) && !rule(64, 128, 14) && !rule(128, 256, 16));
        for (c, o, h, k, s) in [(3, 8, 24, 7, 2), (6, 5, 17, 1, 2), (64, 128, 16, 3, 2)] {
            let g = geometry(
                &Shape::from((5, c, h, h)),
                &Shape::from((o, c, k, k)),
                s,
                k / 2,
            )
            .unwrap();
            assert!(by_image_pays(&g), "{c} {o} {h}");
            let x = crate::ops::testing::values(5 * c * h * h, 1);
            let gr = crate::ops::testing::values(5 * o * g.hw_out(), 2);
            let scale: Vec<f32> = (0..o).map(|i| 0.5 + i as f32 / 7.0).collect();
            for sc in [None, Some(&scale[..])] {
                let want = weight_grad_im2col(&x, &gr, &g, sc);
                let on = |threads| on_threads(threads, || conv_weight_grad(&x, &gr, &g, sc));
                let got = on(1);
                assert_near(&got, &want, 1e-5, &format!("{c} {o} {h}"));
                assert!(got == on(3), "thread count changed the bits");
            }
        }
    }

    #[test]
    fn candle_strided_backward_against_ours_square_and_not() {
        // What candle 0.11's own CPU conv2d backward does for ResNet's strided layers (the
        // fallback off the CPU custom ops): compared with this op at square sizes and at a
        // non-square size whose stride remainders differ per axis (32 x 33).
        let mut report = Vec::new();
        let cases = [
            (32, 32, 3, 2, 1),
            (9, 9, 3, 2, 1),
            (10, 10, 3, 2, 1),
            (9, 9, 1, 2, 0),
            (22, 22, 7, 2, 3),
            (64, 64, 7, 2, 3),
            (32, 33, 3, 2, 1),
            (33, 32, 3, 2, 1),
        ];
        for (h, w, k, s, p) in cases {
            let x = Var::from_tensor(&rand(&[1, 3, h, w], 31)).unwrap();
            let wt = Var::from_tensor(&rand(&[4, 3, k, k], 32)).unwrap();
            let theirs = x.as_tensor().conv2d(wt.as_tensor(), p, s, 1, 1).unwrap();
            let ours = conv2d(x.as_tensor(), wt.as_tensor(), s, p).unwrap();
            let probe = rand(ours.dims(), 33);
            let g1 = probe_grads(ours, &probe);
            let ok = x
                .as_tensor()
                .conv2d(wt.as_tensor(), p, s, 1, 1)
                .and_then(|t| (t * &probe)?.sum_all()?.backward())
                .ok()
                .and_then(|g2| g2.get(x.as_tensor()).cloned())
                .is_some_and(|gx| {
                    gx.dims() == x.dims() && max_rel(&gx, g1.get(x.as_tensor()).unwrap()) < 1e-5
                });
            assert_eq!(
                theirs.dims()[2..],
                [conv_out(h, k, s, p), conv_out(w, k, s, p)]
            );
            report.push(((h, w), ok));
        }
        // square, either remainder: correct (its out_padding is the stride remainder, the
        // same on both axes); remainders that differ per axis: wrong
        assert_eq!(
            report,
            cases.map(|(h, w, ..)| ((h, w), h == w)),
            "candle's strided conv2d backward"
        );
    }

    #[test]
    fn strided_col2im_through_phases_has_the_bits_of_pixel_by_pixel_additions() {
        // (h, w, k, s, p): the stem's geometry, odd and non-square sizes, stride 3, and widths
        // on both sides of PHASES_MIN_WO
        let cases = [
            (64, 64, 7, 2, 3),
            (33, 31, 7, 2, 3),
            (29, 40, 3, 2, 1),
            (30, 28, 3, 2, 0),
            (47, 50, 5, 3, 2),
            (16, 16, 3, 2, 1),
        ];
        let mut phased = 0;
        for (h, w, k, s, p) in cases {
            let (n, c, m) = (3, 2, 2);
            let g = geometry(&Shape::from((n, c, h, w)), &Shape::from((4, c, k, k)), s, p).unwrap();
            phased += usize::from(g.wo >= PHASES_MIN_WO);
            let hw = g.hw_out();
            let col = crate::ops::testing::values(c * k * k * m * hw, (h * w + k) as u64);
            for j in 0..m {
                let mut got = vec![f32::NAN; g.plane_in()];
                col2im_strided(&col, &g, j, m, &mut got);
                // every column entry added to its pixel in turn (channel, tap, output row,
                // output column)
                let mut want = vec![0f32; g.plane_in()];
                for ci in 0..c {
                    for (ky, kx) in (0..k).flat_map(|ky| (0..k).map(move |kx| (ky, kx))) {
                        let row = &col[((ci * k + ky) * k + kx) * m * hw + j * hw..][..hw];
                        for (q, v) in row.iter().enumerate() {
                            let iy = ((q / g.wo) * s + ky) as isize - p as isize;
                            let ix = ((q % g.wo) * s + kx) as isize - p as isize;
                            if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                                want[(ci * h + iy as usize) * w + ix as usize] += v;
                            }
                        }
                    }
                }
                assert!(
                    same_bits(&got, &want),
                    "{h}x{w}, k {k}, stride {s}, padding {p}, image {j}"
                );
            }
        }
        assert!(phased >= 4 && phased < cases.len(), "both paths covered");
    }

    #[test]
    fn batch_last_columns_give_the_bits_of_columns_by_image() {
        // (n, c, h, w, o, k, s, p): ResNet-18's small maps (3x3 at 4 and 2 px, 3x3/2, 1x1/2),
        // odd and non-square sizes, stride 3, padding 0 to 3, one image and several
        let cases = [
            (3, 8, 4, 4, 6, 3, 1, 1),
            (2, 5, 2, 2, 7, 3, 1, 1),
            (3, 4, 8, 8, 5, 3, 2, 1),
            (2, 6, 8, 8, 9, 1, 2, 0),
            (1, 3, 9, 7, 4, 3, 2, 1),
            (4, 2, 11, 10, 3, 5, 3, 2),
            (2, 3, 13, 12, 4, 7, 2, 3),
            (3, 4, 20, 18, 4, 3, 1, 1),
        ];
        for (n, c, h, w, o, k, s, p) in cases {
            let g = geometry(&Shape::from((n, c, h, w)), &Shape::from((o, c, k, k)), s, p).unwrap();
            let seed = (h * w + k * s + p) as u64;
            let v = |len: usize, i: u64| crate::ops::testing::values(len, seed * 8 + i);
            let (x, wt) = (v(n * g.plane_in(), 1), v(o * c * k * k, 2));
            let (res, gr) = (v(n * o * g.hw_out(), 3), v(n * o * g.hw_out(), 4));
            let scale = v(o, 5);
            let epi = Epilogue {
                scale: Some(Arc::new(scale.clone())),
                shift: Some(Arc::new(v(o, 6))),
                relu: true,
            };
            let what = format!("{n}x{c}x{h}x{w}, {o} outputs, k {k}, stride {s}, padding {p}");
            let [a, b] = [Columns::ByImage, Columns::BatchLast]
                .map(|cols| conv_forward_im2col_in(&x, &wt, &g, &epi, Some(&res), cols));
            assert!(same_bits(&a, &b), "forward, {what}");
            // the gradients with and without a folded scale
            for sc in [Some(scale.as_slice()), None] {
                let [a, b] = [Columns::ByImage, Columns::BatchLast]
                    .map(|cols| input_grad_col2im(&gr, &wt, &g, sc, cols));
                assert!(same_bits(&a, &b), "input gradient, {what}");
                // the weight gradient sums in another order: equal up to rounding
                let [a, b] = [Columns::ByImage, Columns::BatchLast]
                    .map(|cols| weight_grad_im2col_in(&x, &gr, &g, sc, cols));
                let top = a.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (a, b) in a.iter().zip(&b) {
                    assert!(
                        (a - b).abs() <= 1e-5 * top,
                        "weight gradient, {what}: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// A stride-1 "same" convolution (padding k/2) of `n` images `c` x `h` x `w` into `o`
    /// channels.
    fn same_conv(n: usize, c: usize, (h, w): (usize, usize), o: usize, k: usize) -> Geometry {
        geometry(
            &Shape::from((n, c, h, w)),
            &Shape::from((o, c, k, k)),
            1,
            k / 2,
        )
        .unwrap()
    }

    #[test]
    fn taps_match_im2col_with_the_bits_of_any_thread_count() {
        // (n, c, h, w, o, k): layer 3's maps at 64 px (4 px), layer 4's at 32 px (1 px),
        // non-square maps, a 5x5 kernel on 3x4, channel counts around the 16-row blocks; one
        // image and several
        let cases = [
            (3, 8, 4, 4, 40, 3),
            (2, 5, 3, 3, 33, 3),
            (1, 6, 1, 1, 7, 3),
            (4, 3, 3, 4, 17, 3),
            (2, 4, 3, 4, 48, 5),
            (5, 16, 4, 1, 64, 3),
            (16, 8, 4, 4, 24, 3),
        ];
        for (n, c, h, w, o, k) in cases {
            let g = same_conv(n, c, (h, w), o, k);
            // the kernel on every case; the route only with enough columns, or on 1x1 maps
            let routed = taps_usable(&g);
            assert_eq!(routed, n * w >= TAPS_MIN_COLUMNS || h * w == 1);
            let seed = (h * w + k + o) as u64;
            let v = |len: usize, i: u64| crate::ops::testing::values(len, seed * 8 + i);
            let (x, wt, res) = (
                v(n * g.plane_in(), 1),
                v(o * c * k * k, 2),
                v(n * o * h * w, 3),
            );
            let epi = Epilogue {
                scale: Some(Arc::new(v(o, 5))),
                shift: Some(Arc::new(v(o, 6))),
                relu: true,
            };
            let what = format!("{n}x{c}x{h}x{w}, {o} outputs, k {k}");
            for (e, r) in [(&Epilogue::default(), None), (&epi, Some(res.as_slice()))] {
                let want = conv_forward_im2col(&x, &wt, &g, e, r);
                let on = |threads| {
                    on_threads(threads, || {
                        conv_forward_taps(&x, (TapWeights::Kernel(&wt), None), &g, e, r)
                    })
                };
                let got = on(1);
                assert_near(&got, &want, 1e-5, &what);
                assert!(
                    same_bits(&got, &on(3)),
                    "{what}: thread count changed the bits"
                );
                // the same op as the forward pass routes it (with AVX-512, the pixel pairs
                // take 4x4 maps of 16 images)
                crate::ops::layout::tests_isa::each_isa(|wide| {
                    let pairs = super::super::pixel_pairs::usable(&g);
                    assert_eq!(pairs, wide && (h, w, k) == (4, 4, 3) && n == 16, "{what}");
                    if routed && !pairs {
                        assert!(same_bits(&got, &conv_forward(&x, &wt, &g, e, r)), "{what}");
                    }
                });
            }
        }
        // not for strides, 1x1 kernels, other paddings or wider maps
        let g = |c, h, k, s, p| {
            geometry(&Shape::from((2, c, h, h)), &Shape::from((c, c, k, k)), s, p).unwrap()
        };
        assert!(!taps_usable(&g(8, 4, 3, 2, 1)));
        assert!(!taps_usable(&g(8, 4, 1, 1, 0)));
        assert!(!taps_usable(&g(8, 4, 3, 1, 0)));
        assert!(!taps_usable(&g(8, TAPS_MAX_WO + 1, 3, 1, 1)));
        assert!(!taps_usable(&g(8, 2, 3, 1, 1)));
        // batches too small for the taps' products, except on 1x1 maps
        for (n, h, routed) in [(16, 4, true), (15, 4, false), (2, 4, false), (22, 3, true)] {
            assert_eq!(
                taps_usable(&same_conv(n, 8, (h, h), 8, 3)),
                routed,
                "{n} x {h} px"
            );
        }
        for n in [1, 2, 16] {
            assert!(taps_usable(&same_conv(n, 8, (1, 1), 8, 3)));
        }
    }

    #[test]
    fn pixel_pairs_match_im2col_and_col2im_with_the_bits_of_any_thread_count() {
        if !crate::ops::layout::has_avx512() {
            return;
        }
        let usable = super::super::pixel_pairs::usable;
        // (n, c, o, side): layer 4's batch of 16 on 2x2 maps and layer 3's on 4x4, layer 4's
        // at 224 px (7x7, 512 channels), one image, partial registers of images (2, 5, 12,
        // 17, 33) and partial tiles of rows (6 rows on 2x2 maps, 4 on 4x4, 3 on 7x7: 13, 7,
        // 9, 6, 11, 40, 4 channels)
        let cases = [
            (16, 24, 40, 2),
            (1, 8, 7, 2),
            (5, 13, 6, 2),
            (17, 20, 13, 2),
            (33, 6, 12, 2),
            (16, 24, 40, 4),
            (12, 9, 11, 4),
            (3, 16, 6, 4),
            (17, 5, 9, 4),
            (16, 24, 40, 7),
            (2, 9, 4, 7),
            (12, 512, 512, 7),
        ];
        for (n, c, o, side) in cases {
            let g = same_conv(n, c, (side, side), o, 3);
            let seed = (n * 64 + c + o + side) as u64;
            let v = |len: usize, i: u64| crate::ops::testing::values(len, seed * 8 + i);
            let hw = side * side;
            let (x, wt) = (v(n * c * hw, 1), v(o * c * 9, 2));
            let (res, gr) = (v(n * o * hw, 3), v(n * o * hw, 4));
            let epi = Epilogue {
                scale: Some(Arc::new(v(o, 5))),
                shift: Some(Arc::new(v(o, 6))),
                relu: true,
            };
            let what = format!("{n} images, {c} -> {o} channels, {side} px");
            // the route with AVX-512: every 2x2 map, 4x4 maps (and 7x7 maps of 512 channels,
            // which Winograd leaves to im2col) with 12-16 or 24-32 images
            let lanes = (12..=16).contains(&n) || (24..=32).contains(&n);
            let routed = side == 2 || (lanes && (side == 4 || c.min(o) >= 512));
            crate::ops::layout::tests_isa::each_isa(|wide| {
                assert_eq!(usable(&g), wide && routed, "{what}");
            });
            for (e, r) in [(&Epilogue::default(), None), (&epi, Some(res.as_slice()))] {
                let want = conv_forward_im2col(&x, &wt, &g, e, r);
                let on = |threads| {
                    on_threads(threads, || {
                        conv_pixel_pairs(&x, c, &wt, (c * 9, 9, false), None, &g, e, r)
                    })
                };
                let got = on(1);
                assert_near(&got, &want, 1e-5, &what);
                assert!(same_bits(&got, &on(3)), "{what}: thread count");
                crate::ops::layout::tests_isa::each_isa(|wide| {
                    if wide && routed {
                        assert!(same_bits(&conv_forward(&x, &wt, &g, e, r), &got), "{what}");
                    }
                });
            }
            // the input gradient, with and without a folded BatchNorm scale
            let scale = v(o, 7);
            let dx_g = Geometry { o: c, ..g };
            for sc in [None, Some(scale.as_slice())] {
                let want = input_grad_col2im(&gr, &wt, &g, sc, Columns::ByImage);
                let on = |threads| {
                    on_threads(threads, || {
                        let e = Epilogue::default();
                        conv_pixel_pairs(&gr, o, &wt, (9, c * 9, true), sc, &dx_g, &e, None)
                    })
                };
                let got = on(1);
                assert_near(&got, &want, 1e-5, &what);
                assert!(same_bits(&got, &on(3)), "{what}: thread count");
                crate::ops::layout::tests_isa::each_isa(|wide| {
                    if wide && routed {
                        let routed = conv_input_grad(&gr, &wt, &g, sc);
                        assert!(same_bits(&routed, &got), "{what}");
                    }
                });
            }
        }
        // only stride-1 3x3 convolutions with padding 1 on 2x2, 4x4 and 7x7 maps
        let conv = |n, h: usize, w: usize, k, s, p| {
            geometry(&Shape::from((n, 8, h, w)), &Shape::from((8, 8, k, k)), s, p).unwrap()
        };
        crate::ops::layout::tests_isa::each_isa(|wide| {
            assert_eq!(usable(&conv(16, 2, 2, 3, 1, 1)), wide);
            assert_eq!(usable(&conv(16, 4, 4, 3, 1, 1)), wide);
            // 7x7 maps only where Winograd's kernel leaves them (512 channels both ways)
            assert!(!usable(&conv(16, 7, 7, 3, 1, 1)));
            let wide7 = |c, o| {
                geometry(
                    &Shape::from((16, c, 7, 7)),
                    &Shape::from((o, c, 3, 3)),
                    1,
                    1,
                )
                .unwrap()
            };
            assert_eq!(usable(&wide7(512, 512)), wide);
            assert!(!usable(&wide7(512, 256)) && !usable(&wide7(256, 512)));
            assert!(!usable(&conv(16, 4, 4, 3, 2, 1)));
            assert!(!usable(&conv(16, 2, 2, 1, 1, 0)));
            assert!(!usable(&conv(16, 3, 3, 3, 1, 1)));
            assert!(!usable(&conv(16, 2, 1, 3, 1, 1)));
            assert!(!usable(&conv(16, 4, 2, 3, 1, 1)));
            assert!(!usable(&conv(16, 4, 4, 5, 1, 2)));
            assert!(!usable(&conv(16, 4, 4, 3, 1, 0)));
        });
    }

    #[test]
    fn taps_input_gradient_reads_the_flipped_kernel_in_place() {
        // (n, c, h, w, o, k): 1, 3 and 4 px maps, non-square, a 5x5 kernel, more and fewer
        // outputs than inputs, blocks of 16 channels and a remainder
        let cases = [
            (3, 20, 4, 4, 37, 3),
            (5, 33, 1, 1, 18, 3),
            (2, 7, 3, 4, 5, 3),
            (2, 4, 4, 3, 6, 5),
            (16, 64, 4, 4, 48, 3),
        ];
        for (n, c, h, w, o, k) in cases {
            // the convolution and its input gradient's (padding k - 1 - k/2 = k/2)
            let (g, f) = (same_conv(n, c, (h, w), o, k), same_conv(n, o, (h, w), c, k));
            // the kernel on every case; the route only with enough columns, or on 1x1 maps
            let routed = taps_usable(&f);
            let seed = (h * w + k + o) as u64;
            let v = |len: usize, i: u64| crate::ops::testing::values(len, seed * 8 + i);
            let (wt, gr, scale) = (v(o * c * k * k, 1), v(n * o * h * w, 2), v(o, 3));
            let what = format!("{n}x{c}x{h}x{w}, {o} outputs, k {k}");
            for sc in [None, Some(scale.as_slice())] {
                let on = |threads| {
                    on_threads(threads, || {
                        let w = (TapWeights::FlippedInPlace(&wt), sc);
                        conv_forward_taps(&gr, w, &f, &Epilogue::default(), None)
                    })
                };
                let got = on(1);
                assert!(
                    same_bits(&got, &on(3)),
                    "{what}: thread count changed the bits"
                );
                // the scatter of W^T G, summed in another order
                let want = input_grad_col2im(&gr, &wt, &g, sc, Columns::ByImage);
                assert_near(&got, &want, 1e-5, &what);
                // the same products in the same order as with the (unscaled) flipped copy,
                // which a frozen-weights scope keeps
                let flipped = flip_kernel(&wt, o, c, k * k, None);
                let copy = conv_forward_taps(
                    &gr,
                    (TapWeights::Kernel(&flipped), sc),
                    &f,
                    &Epilogue::default(),
                    None,
                );
                assert!(same_bits(&got, &copy), "{what}: against the flipped copy");
                // the route the input gradient takes: with AVX-512 unless the pixel pairs
                // take it (4x4 maps of 16 images), with AVX2 where the flipped convolution
                // runs (4 o <= n h w)
                crate::ops::layout::tests_isa::each_isa(|wide| {
                    let pairs = super::super::pixel_pairs::usable(&g);
                    assert_eq!(pairs, wide && (h, w, k) == (4, 4, 3) && n == 16, "{what}");
                    if routed && !pairs && (wide || 4 * o <= n * h * w) {
                        assert!(
                            same_bits(&got, &conv_input_grad(&gr, &wt, &g, sc)),
                            "{what}"
                        );
                    }
                });
            }
        }
        // 3 px maps of fewer than 22 images (no taps, no pixel pairs), with AVX-512's
        // routing: the scatter of W^T G where the weight is larger than the column matrix
        // (o > n*h*w), the flipped copy where it is not (48 channels: 4 o > n*h*w, so by
        // AVX-512's rule alone)
        crate::ops::layout::tests_isa::each_isa(|wide| {
            for (n, c, flip) in [(2, 40, false), (16, 48, true)] {
                if !wide {
                    continue;
                }
                let g =
                    geometry(&Shape::from((n, c, 3, 3)), &Shape::from((c, c, 3, 3)), 1, 1).unwrap();
                let (wt, gr) = (
                    crate::ops::testing::values(c * c * 9, 1),
                    crate::ops::testing::values(n * c * 9, 2),
                );
                let got = conv_input_grad(&gr, &wt, &g, None);
                let want = if flip {
                    let f = Geometry {
                        c: g.o,
                        o: g.c,
                        ..g
                    };
                    conv_forward(
                        &gr,
                        &flip_kernel(&wt, c, c, 9, None),
                        &f,
                        &Epilogue::default(),
                        None,
                    )
                } else {
                    input_grad_col2im(&gr, &wt, &g, None, Columns::for_geometry(&g))
                };
                assert!(
                    same_bits(&got, &want),
                    "{n} images of {c} channels on 3x3 maps"
                );
            }
        });
    }

    #[test]
    fn flipped_kernel_is_the_definition() {
        // block edges inside and past both dimensions (16), with and without a scale
        for (o, c, kk) in [(1, 1, 9), (20, 37, 9), (16, 16, 1), (33, 5, 49)] {
            let w = crate::ops::testing::values(o * c * kk, 3);
            let scale = crate::ops::testing::values(o, 4);
            for s in [None, Some(scale.as_slice())] {
                let wt = flip_kernel(&w, o, c, kk, s);
                for (oi, ci, q) in
                    (0..o).flat_map(|a| (0..c).flat_map(move |b| (0..kk).map(move |q| (a, b, q))))
                {
                    let want = w[(oi * c + ci) * kk + kk - 1 - q] * s.map_or(1.0, |s| s[oi]);
                    assert_eq!(wt[(ci * o + oi) * kk + q].to_bits(), want.to_bits());
                }
            }
        }
    }

    #[test]
    fn matches_candle_forward_and_backward() {
        // the ResNet-18 shapes: 7x7/2 pad 3, 3x3/1 pad 1, 3x3/2 pad 1, 1x1/2 pad 0; batches
        // of 1 (parallel matrix products) and 5 (parallel images). Square inputs: candle's own
        // backward is right for those and wrong where the stride remainders differ per axis
        // (`candle_strided_backward_against_ours_square_and_not`); the finite-difference test
        // below covers every shape. Once per instruction set: their routings differ.
        let shapes = [
            (1, 3, 21, 8, 7, 2, 3),
            (5, 4, 9, 6, 3, 1, 1),
            (3, 5, 11, 7, 3, 2, 1),
            (5, 6, 9, 4, 1, 2, 0),
            (2, 3, 7, 2, 3, 1, 0),
            // 3x3/1 pad 1 with 16+ channels: Winograd's kernel, forward and input gradient
            (2, 16, 9, 20, 3, 1, 1),
            // small maps beside wide weights: the input gradient scatters with AVX2 and runs
            // the flipped convolution with AVX-512
            (2, 24, 2, 40, 3, 1, 1),
            // maps of 64+ positions beside small weights: the weight gradient by image (rows
            // of 17 columns: the stride-2 copy's blocks of 16 and its remainder)
            (3, 3, 34, 8, 7, 2, 3),
            (5, 4, 17, 6, 1, 2, 0),
        ];
        crate::ops::layout::tests_isa::each_isa(|wide| {
            for &(n, c, h, o, k, s, p) in &shapes {
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
                let g1 = probe_grads(ours, &probe);
                let g2 = probe_grads(theirs, &probe);
                for v in [&x, &w] {
                    let a = g1.get(v.as_tensor()).unwrap();
                    let b = g2.get(v.as_tensor()).unwrap();
                    assert!(
                        max_rel(a, b) < 1e-5,
                        "backward {n} {c} {h} {o} {k} {s} {p} (AVX-512: {wide})"
                    );
                }
            }
        });
    }

    /// candle's own composition of what [`conv2d_fused`] does.
    fn composed(
        x: &Tensor,
        w: &Tensor,
        s: usize,
        p: usize,
        bn: (&[f32], &[f32]),
        r: Option<&Tensor>,
        relu: bool,
    ) -> Tensor {
        let mut y = conv_bn_reference(x, w, s, p, bn.0, bn.1);
        if let Some(r) = r {
            y = (y + r).unwrap();
        }
        if relu {
            y = y.relu().unwrap();
        }
        y
    }

    #[test]
    fn fused_scale_shift_residual_relu_match_candle_both_ways() {
        // stride 1 with large maps (input gradient as a convolution), stride 1 with a 2x2 map
        // and many channels (input gradient by scatter), stride 2, 1x1 stride 2
        for (n, c, h, o, k, s, p) in [
            (3, 4, 9, 6, 3, 1, 1),
            (2, 5, 2, 16, 3, 1, 1),
            (3, 5, 11, 7, 3, 2, 1),
            (5, 6, 9, 4, 1, 2, 0),
            // Winograd's kernel both ways, the epilogue on its tiles (odd size: partial tiles)
            (2, 17, 9, 18, 3, 1, 1),
        ] {
            let x = Var::from_tensor(&rand(&[n, c, h, h], 21)).unwrap();
            let w = Var::from_tensor(&rand(&[o, c, k, k], 22)).unwrap();
            let scale: Vec<f32> = (0..o).map(|i| 0.5 + 0.25 * i as f32).collect();
            let shift: Vec<f32> = (0..o).map(|i| 0.1 * i as f32 - 0.3).collect();
            let ho = conv_out(h, k, s, p);
            let r = Var::from_tensor(&rand(&[n, o, ho, ho], 23)).unwrap();
            let probe = rand(&[n, o, ho, ho], 24);
            for (res, relu, track_w) in [
                (true, true, false),
                (false, true, true),
                (true, false, true),
            ] {
                let rr = res.then_some(r.as_tensor());
                let wt = if track_w {
                    w.as_tensor().clone()
                } else {
                    w.as_tensor().detach()
                };
                let bn = (scale.as_slice(), shift.as_slice());
                let st = Tensor::new(bn.0, &Device::Cpu).unwrap();
                let sh = Tensor::new(bn.1, &Device::Cpu).unwrap();
                let ours =
                    conv2d_fused(x.as_tensor(), &wt, s, p, Some((&st, &sh)), rr, relu).unwrap();
                let theirs = composed(x.as_tensor(), &wt, s, p, bn, rr, relu);
                let case = format!("{n} {c} {h} {o} {k} {s} {p} res={res} relu={relu}");
                assert!(max_rel(&ours, &theirs) < 1e-5, "forward {case}");
                let g1 = probe_grads(ours, &probe);
                let g2 = probe_grads(theirs, &probe);
                for (name, v) in [("x", &x), ("w", &w), ("residual", &r)] {
                    match (g1.get(v.as_tensor()), g2.get(v.as_tensor())) {
                        (Some(a), Some(b)) => {
                            assert!(max_rel(a, b) < 1e-5, "gradient of {name}, {case}")
                        }
                        (None, None) => {}
                        (a, b) => panic!(
                            "gradient of {name} present {} vs {}, {case}",
                            a.is_some(),
                            b.is_some()
                        ),
                    }
                }
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

/// Per-layer timings of ResNet-18's convolutions with the AVX2 and the AVX-512 routing,
/// interleaved in one process (the development VM's timings move by up to 2x from minute to
/// minute; interleaving and the best of many runs see through most of it), which of the two
/// runs first swapped every other run (the second of a pair ran up to 15% faster on the
/// same code). A measurement, not a test: it prints and asserts nothing.
/// `bench/torch_layers.py` times the same convolutions in PyTorch.
///
/// `cargo test --release --lib layer_timings -- --ignored --nocapture`, with
/// `RAYON_NUM_THREADS=2` and optionally `TIMING_SIZE=224` (image size, default 64),
/// `TIMING_BATCH` (16), `TIMING_RUNS` (30).
#[cfg(test)]
mod layer_timings {
    use super::*;

    fn env(name: &str, default: usize) -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    #[test]
    #[ignore = "a measurement: run it with --ignored --nocapture"]
    fn layer_timings() {
        if !crate::ops::layout::has_avx512() {
            eprintln!("this CPU has no AVX-512F: both routings are the AVX2 one");
        }
        let (n, size, runs) = (
            env("TIMING_BATCH", 16),
            env("TIMING_SIZE", 64),
            env("TIMING_RUNS", 30),
        );
        let q = size / 4;
        // (name, c, o, h, stride, k, times per network)
        let layers = [
            ("stem 7x7/2", 3, 64, size, 2, 7, 1),
            ("layer1 3x3", 64, 64, q, 1, 3, 4),
            ("layer2 3x3/2", 64, 128, q, 2, 3, 1),
            ("layer2 3x3", 128, 128, q / 2, 1, 3, 3),
            ("layer3 3x3/2", 128, 256, q / 2, 2, 3, 1),
            ("layer3 3x3", 256, 256, q / 4, 1, 3, 3),
            ("layer4 3x3/2", 256, 512, q / 4, 2, 3, 1),
            ("layer4 3x3", 512, 512, q / 8, 1, 3, 3),
        ];
        // per pass (forward, input gradient, weight gradient) and routing (AVX2, AVX-512)
        let mut total = [[0f64; 2]; 3];
        for (name, c, o, h, s, k, times) in layers {
            let g = geometry(
                &Shape::from((n, c, h, h)),
                &Shape::from((o, c, k, k)),
                s,
                k / 2,
            )
            .unwrap();
            let x = crate::ops::testing::values(n * c * h * h, 1);
            let w = crate::ops::testing::values(o * c * k * k, 2);
            let gr = crate::ops::testing::values(n * o * g.hw_out(), 3);
            let passes: [Box<dyn Fn()>; 3] = [
                Box::new(|| {
                    std::hint::black_box(conv_forward(&x, &w, &g, &Epilogue::default(), None));
                }),
                Box::new(|| {
                    std::hint::black_box(conv_input_grad(&gr, &w, &g, None));
                }),
                Box::new(|| {
                    std::hint::black_box(conv_weight_grad(&x, &gr, &g, None));
                }),
            ];
            let mut best = [[f64::MAX; 2]; 3];
            for run in 0..runs {
                for (p, f) in passes.iter().enumerate() {
                    // alternate which routing runs first (the second of a pair runs faster)
                    let order = if run % 2 == 0 {
                        [false, true]
                    } else {
                        [true, false]
                    };
                    for wide in order {
                        crate::ops::set_avx512(wide);
                        let t = std::time::Instant::now();
                        f();
                        let e = t.elapsed().as_secs_f64();
                        best[p][wide as usize] = best[p][wide as usize].min(e);
                    }
                }
            }
            crate::ops::set_avx512(true);
            let mut line = format!("{name:14} {h:3} px x{times}");
            for (p, what) in ["forward", "input grad", "weight grad"].iter().enumerate() {
                line += &format!(
                    " | {what} {:6.2} / {:6.2} ms",
                    best[p][0] * 1e3,
                    best[p][1] * 1e3
                );
                for r in 0..2 {
                    total[p][r] += times as f64 * best[p][r];
                }
            }
            eprintln!("{line}");
        }
        eprintln!(
            "network (ms, AVX2 / AVX-512 routing): forward {:.1} / {:.1}, input gradients \
             {:.1} / {:.1}, weight gradients {:.1} / {:.1}",
            total[0][0] * 1e3,
            total[0][1] * 1e3,
            total[1][0] * 1e3,
            total[1][1] * 1e3,
            total[2][0] * 1e3,
            total[2][1] * 1e3
        );
    }
}
