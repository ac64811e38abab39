//! A direct convolution for x86-64 CPUs with AVX2 and FMA: no column matrix. It runs
//! stride-1 3x3 convolutions up to 256 channels that [`super::winograd`] does not take
//! (forward, and input gradient as the convolution of the output gradient with the flipped
//! kernel; ResNet's own 3x3 layers go to Winograd unless it is turned off), the weight
//! gradients of ResNet's 3x3 layers, its 7x7 stride-2 stem, and with AVX-512 its 3x3 stride-2
//! layers of up to 128 channels on maps of 28 px and more ([`usable`]).
//!
//! Stride 1: every image is copied once into a zero-padded buffer whose rows are `w + p` wide
//! (one row's right padding is the next row's left padding). Output pixels are numbered along
//! those rows (`q = y * (w + p) + x`; the last `k - 1 - p` of each row are computed and
//! discarded), so that for every tap `(ky, kx)` the inputs of 16 consecutive outputs are 16
//! consecutive floats of the padded plane, at `q + ky * (w + p) + kx`.
//!
//! Stride 2: the padded input is split into its four stride phases
//! (`xp[2u + a][2v + b]` for `a, b` in `{0, 1}`), planes of equal size side by side per
//! channel; output `(y, x)` reads tap `(ky, kx)` from phase `(ky % 2, kx % 2)` at
//! `(y + ky / 2, x + kx / 2)`, so once again 16 consecutive outputs read 16 consecutive
//! floats, and all taps are real ones (the stem's 49; a phase kernel padded to 4x4 squares
//! has 64).
//!
//! Either way the kernel sees a list of tap offsets: a register tile of 16 outputs x 6 output
//! channels (12 AVX registers) runs over all `c * taps` products with two loads of inputs and
//! six broadcast weights each, the ratio of loads to multiply-adds of `gemm`'s own
//! micro-kernel, without the `k * k` times larger column matrix that im2col writes and `gemm`
//! packs again. Weights are packed per 6 output channels (`[c][taps][6]`); a task is one image
//! and a group of output channels, and runs every block of its group over a strip of tiles
//! before the next strip. [`weight_grad3x3`] computes stride-1 3x3 weight gradients along the
//! same padded rows.
//!
//! On ResNet-18's 3x3 layers (batch 16, 2 threads, this project's development VM) the im2col
//! path reached 110 / 131 / 151 GFLOP/s at 56 / 28 / 14 px with 64 / 128 / 256 channels, this
//! kernel 155 / 166 / 158 (PyTorch's oneDNN: 174 / 176 / 176); at 512 channels (7 px) the
//! im2col path stays ahead (weights of one block no longer fit in L1), so it keeps that case.
//! The stem at 224 px: 144 GFLOP/s against 60 for im2col.
//!
//! Each output is one chain of fused multiply-adds in a fixed order (channel, then taps), so
//! results do not depend on the number of threads.
//!
//! On a CPU with AVX-512F (unless [`super::set_avx512`] turned it off), the forward tile
//! holds 32 outputs per channel in two AVX-512 registers instead of 16 in two AVX ones, with
//! the same sums in the same order per output (identical results). Its first AVX-512 tile
//! held 16 outputs in one register: six chains of multiply-adds and seven loads per six of
//! them, about a quarter of the two cores' peak on the stem. With 32, `layer_timings` in one
//! process, the two tiles alternating (batch 16, 2 threads, best of 20, three times): the
//! stem's forward 2.73-2.94 → 2.14-2.28 ms at 64 px; at 224 px (best of 8, twice) 36.4 →
//! 30.2 and 34.3 → 28.9 ms. The weight gradient keeps its AVX2 tile
//! there: an AVX-512 tile of 16 positions (every input load then straddles two cache lines)
//! measured slower, layer by layer (`layer_timings`, batch 16, 2 threads, best of 20
//! interleaved runs): 2.96 against 2.40 ms at 64 channels, 16 px, and 33.45 against 32.60 ms
//! at 56 px.

use super::frozen::Derivation;
use super::layout::{has_fma, use_avx512, with_padded, Epilogue, Geometry, PlaneFn};
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// Output pixels per register tile (two AVX registers).
const TILE: usize = 16;
/// Output pixels per AVX-512 register tile (two AVX-512 registers).
const WIDE_TILE: usize = 32;
/// Output channels per register tile.
const OC: usize = 6;
/// Tiles per strip: every block of a task runs over a strip of tiles before the next strip,
/// so that the strip's inputs are reused from the cache.
const STRIP: usize = 16;
/// Blocks per task (108 output channels): the blocks that reuse one strip of inputs. Measured
/// best on ResNet-18's shapes among 4 to 18 blocks (fewer, smaller tasks read the inputs more
/// often).
const GROUP: usize = 18;
/// Most (channel, tap) products per output that the kernel takes: 256 channels x 9 taps.
/// Past it the packed weights of one block of output channels (`products * 6` floats) no
/// longer stay in L1 and L2 between tiles, and im2col with `gemm` was faster (512 channels).
const MAX_PRODUCTS: usize = 256 * 9;

/// Whether the direct kernel runs the forward convolution in geometry `g` on this CPU: 3x3
/// stride 1 (ResNet's layers), 7x7 stride 2 (its stem), and 3x3 stride 2 where
/// [`strided_pays`], as far as the kernel [`supports`] them.
///
/// Input gradients of stride-2 layers stay on im2col and col2im: their phase kernels have 1
/// to 4 taps per channel (or, padded to a square, 44% zero taps), and measured 52-101 against
/// 79-130 GFLOP/s.
pub(super) fn usable(g: &Geometry) -> bool {
    supports(g) && (g.stride == 1 || g.k == 7 || strided_pays(g))
}

/// Whether the kernel can run the forward convolution in geometry `g` on this CPU (whether
/// it is chosen: [`usable`]): 3x3 stride 1 or 2, or 7x7 stride 2, padding below the kernel
/// size, outputs at least 7 wide, and 72 to [`MAX_PRODUCTS`] products per output.
fn supports(g: &Geometry) -> bool {
    matches!((g.k, g.stride), (3, 1) | (3, 2) | (7, 2))
        && g.pad < g.k
        && g.wo >= 7
        && (72..=MAX_PRODUCTS).contains(&(g.c * g.k * g.k))
        && has_fma()
        && ENABLED.load(Ordering::Relaxed)
}

/// Whether a 3x3 stride-2 convolution runs here rather than through im2col: with AVX-512
/// (its tile of 32 outputs), up to 128 input channels, outputs at least 14 wide. Measured in
/// `layer_timings` (batch 16, 2 threads, twice), im2col against this kernel through the
/// stride phases, ms: at 224 px (best of 6) 7.7-8.1 against 6.0 at 64 channels, 56 px in;
/// 5.7-5.9 against 5.2-5.4 at 128, 28 px; but 4.7-4.9 against 5.6-5.8 at 256, 14 px (the
/// packed weights of a block of output channels, 55 KB, no longer stay in L1). Smaller maps
/// (best of 20 or 30): level at 64 channels, 32 px in (1.77-2.33 against 1.90-1.93), slower
/// at 16 px in (0.47-0.54 against 0.61-0.73). With AVX2 alone it measured level with im2col
/// (118 / 131 / 110 against 113 / 132 / 146 GFLOP/s at 56 / 28 / 14 px): each tile reads
/// seven row segments per channel instead of three.
fn strided_pays(g: &Geometry) -> bool {
    g.k == 3 && g.stride == 2 && use_avx512() && g.c <= 128 && g.wo >= 14
}

/// Whether [`weight_grad3x3`] runs geometry `g`: 3x3, stride 1, as [`usable`], up to 128
/// channels with AVX2 (with 256 and more the maps are 14 px or less, too short a sum per
/// register tile; im2col and `gemm` were faster there: 158 against 114 GFLOP/s at 256
/// channels, 14 px), up to 64 with AVX-512, where `gemm`'s AVX-512 products overtake it at
/// 128 channels (batch 16, 2 threads, best of 15 interleaved runs on the AVX-512 VM: 44.0
/// against 33.6 ms at 28 px, 12.1 against 3.1 ms at 8 px) and it stays ahead at 64 (38.3
/// against 47.5 ms at 56 px, level at 16 px).
pub(super) fn usable_for_weights(g: &Geometry) -> bool {
    supports_weights(g) && (g.c <= 64 || !use_avx512())
}

/// Whether [`weight_grad3x3`] can run geometry `g` (up to 128 channels); whether it is
/// chosen: [`usable_for_weights`].
fn supports_weights(g: &Geometry) -> bool {
    usable(g) && g.k == 3 && g.stride == 1 && g.c <= 128
}

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the direct convolution kernel on or off for the whole process (on by default); off,
/// every convolution that [`super::set_winograd`] leaves runs im2col and `gemm`, and the
/// stem's input gradient runs `Wᵀ G` and col2im instead of its stride phases (turn both off,
/// and [`super::set_tap_conv`] and [`super::set_pixel_pairs`], for im2col everywhere). All
/// are correct; they sum in different orders, so results differ in the last bits (like
/// `torch.backends.mkldnn.enabled` in PyTorch).
pub fn set_direct_conv(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether [`set_direct_conv`] left the direct kernels on.
pub(super) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// What the kernel reads: per image `c` channel blocks of `cs` floats; output `q` (numbered
/// along rows `wrow` wide) reads tap `t` of a channel at `q + offs[t]` of its block.
struct Taps<'a> {
    x: &'a [f32],
    c: usize,
    cs: usize,
    wrow: usize,
    offs: &'a [usize],
}

/// The size of one plane (or phase plane): `rows` rows `wrow` wide, and at least what the
/// tiles covering `outputs` positions read, with taps reaching `reach` floats past them.
fn plane_len(rows: usize, wrow: usize, outputs: usize, reach: usize) -> usize {
    (rows * wrow).max(outputs.div_ceil(WIDE_TILE) * WIDE_TILE + reach)
}

/// Writes the convolution of `x` with `w` (geometry `g`, which [`usable`] accepted),
/// passed through `epi` with `res` added, into `out` (`[n, o, ho, wo]`); `post`, when given,
/// is called with each finished output plane (index `image * o + channel`) while it is still
/// in the cache.
pub(super) fn conv_direct(
    x: &[f32],
    w: &[f32],
    g: &Geometry,
    epi: &Epilogue,
    res: Option<&[f32]>,
    out: &mut [f32],
    post: Option<&PlaneFn>,
) {
    assert!(
        supports(g),
        "direct convolution: unsupported geometry {g:?}"
    );
    let (k, p) = (g.k, g.pad);
    let x = &x[..g.n * g.c * g.h * g.w];
    let params = || vec![g.o as u32, g.c as u32, (k * k) as u32];
    let wpk = super::frozen::derive(Derivation::DirectPack, w, params, || {
        pack(w, g.o, g.c, k * k)
    });
    if g.stride == 1 {
        // rows of the padded plane are `w + p` wide: one row's right padding is the next
        // row's left padding (both zero), so only `k - 1 - p` discarded outputs per row
        let wp = g.w + p;
        let plane = plane_len(g.h + 2 * p, wp, g.ho * wp, (k - 1) * (wp + 1));
        let offs: Vec<usize> = (0..k * k).map(|t| (t / k) * wp + t % k).collect();
        with_padded(x, (g.h, g.w), p, wp, plane, |xp| {
            let taps = Taps {
                x: xp,
                c: g.c,
                cs: plane,
                wrow: wp,
                offs: &offs,
            };
            run(&taps, &wpk, g.n, g.o, (g.ho, g.wo), (epi, res, post), out)
        });
    } else {
        let (hp2, wp2) = ((g.h + 2 * p).div_ceil(2), (g.w + 2 * p).div_ceil(2));
        let kh = k.div_ceil(2);
        let plane = plane_len(hp2, wp2, g.ho * wp2, (kh - 1) * (wp2 + 1));
        let offs: Vec<usize> = (0..k * k)
            .map(|t| {
                let (ky, kx) = (t / k, t % k);
                (2 * (ky % 2) + kx % 2) * plane + (ky / 2) * wp2 + kx / 2
            })
            .collect();
        let xs = split_phases(x, g, (hp2, wp2), plane);
        let taps = Taps {
            x: &xs,
            c: g.c,
            cs: 4 * plane,
            wrow: wp2,
            offs: &offs,
        };
        run(&taps, &wpk, g.n, g.o, (g.ho, g.wo), (epi, res, post), out);
    }
}

/// `x` (`[n, c, h, w]`) zero-padded by `g.pad` and split into its four stride phases: per
/// channel four planes of `plane` floats (phase `2a + b` holds `xp[2u + a][2v + b]` at
/// `u * wp2 + v`), zeros past the image.
fn split_phases(x: &[f32], g: &Geometry, (hp2, wp2): (usize, usize), plane: usize) -> Vec<f32> {
    let (h, w, p) = (g.h, g.w, g.pad);
    let mut out = vec![0f32; g.n * g.c * 4 * plane];
    out.par_chunks_mut(4 * plane)
        .zip(x.par_chunks(h * w))
        .for_each(|(dst, src)| {
            for (ph, dst) in dst.chunks_exact_mut(plane).enumerate() {
                let (a, b) = (ph / 2, ph % 2);
                for u in 0..hp2 {
                    let Some(y) = (2 * u + a).checked_sub(p).filter(|&y| y < h) else {
                        continue;
                    };
                    let line = &src[y * w..(y + 1) * w];
                    // first column v whose 2v + b - p lands inside the row
                    let v0 = (p + 1 - b) / 2;
                    let row = &mut dst[u * wp2..(u + 1) * wp2];
                    for (v, d) in row.iter_mut().enumerate().skip(v0) {
                        match line.get(2 * v + b - p) {
                            Some(val) => *d = *val,
                            None => break,
                        }
                    }
                }
            }
        });
    out
}

/// `w` (`[o, c, taps]`) packed for the kernel: `[block][c][taps][OC]`, zero for the channels
/// past `o` in the last block.
fn pack(w: &[f32], o: usize, c: usize, taps: usize) -> Vec<f32> {
    let blocks = o.div_ceil(OC);
    let mut wpk = vec![0f32; blocks * c * taps * OC];
    wpk.par_chunks_mut(c * taps * OC)
        .enumerate()
        .for_each(|(b, dst)| {
            for j in 0..OC.min(o - b * OC) {
                let src = &w[(b * OC + j) * c * taps..][..c * taps];
                for (i, v) in src.iter().enumerate() {
                    dst[i * OC + j] = *v;
                }
            }
        });
    wpk
}

/// The kernel's parallel loop: `out` (`[n, o, ho, wo]`) from the laid-out input `taps` and
/// the packed weights `wpk`, through `epi` with `res` added, each plane then handed to
/// `post` (see [`conv_direct`]).
fn run(
    taps: &Taps,
    wpk: &[f32],
    n: usize,
    o: usize,
    (ho, wo): (usize, usize),
    (epi, res, post): (&Epilogue, Option<&[f32]>, Option<&PlaneFn>),
    out: &mut [f32],
) {
    let (c, cs, wrow, nt) = (taps.c, taps.cs, taps.wrow, taps.offs.len());
    assert!(wo <= wrow, "direct convolution: rows too short");
    let wide = use_avx512();
    let tw = if wide { WIDE_TILE } else { TILE };
    let tiles = (ho * wrow).div_ceil(tw);
    let reach = taps.offs.iter().max().copied().unwrap_or(0);
    // the last tile of the last channel stays inside the input
    assert!(
        taps.x.len() >= n * c * cs && (c - 1) * cs + tiles * tw + reach <= c * cs,
        "direct convolution: input buffer too small"
    );
    let blocks = o.div_ceil(OC);
    assert_eq!(
        wpk.len(),
        blocks * c * nt * OC,
        "direct convolution: packed weights"
    );
    assert!(
        out.len() >= n * o * ho * wo,
        "direct convolution: output too small"
    );
    let group = GROUP.min(blocks);
    let groups = blocks.div_ceil(group);
    let out_ptr = super::SendPtr(out.as_mut_ptr());
    (0..n * groups).into_par_iter().for_each(|task| {
        let (i, gi) = (task / groups, task % groups);
        let b_range = gi * group..((gi + 1) * group).min(blocks);
        let img = &taps.x[i * c * cs..(i + 1) * c * cs];
        let o_range = b_range.start * OC..(b_range.end * OC).min(o);
        // SAFETY: task (i, gi) writes only the planes of image i, channels o_range.
        let dst =
            unsafe { out_ptr.slice((i * o + o_range.start) * ho * wo, o_range.len() * ho * wo) };
        let mut acc = [[0f32; WIDE_TILE]; OC];
        for strip in (0..tiles).step_by(STRIP) {
            for b in b_range.clone() {
                let wb = &wpk[b * c * nt * OC..(b + 1) * c * nt * OC];
                for t in strip..(strip + STRIP).min(tiles) {
                    let q0 = t * tw;
                    // SAFETY: the kernel reads img[ci * cs + q0 + offs[t] + l] for ci < c,
                    // l < tw: inside img (asserted above); and wb[..c * nt * OC]. AVX2 and
                    // FMA are present (`usable`), AVX-512F when `wide`.
                    unsafe {
                        let args = (img.as_ptr().add(q0), wb.as_ptr(), c, cs, taps.offs);
                        run_tile(o - b * OC, args, &mut acc, wide)
                    }
                    for (j, row) in acc.iter().enumerate().take(o.saturating_sub(b * OC)) {
                        let oc = b * OC + j - o_range.start;
                        let plane = &mut dst[oc * ho * wo..][..ho * wo];
                        scatter(&row[..tw], q0, wrow, wo, ho, plane);
                    }
                }
            }
        }
        for (j, plane_out) in dst.chunks_exact_mut(ho * wo).enumerate() {
            let oc = o_range.start + j;
            let r = res.map(|r| &r[(i * o + oc) * ho * wo..][..ho * wo]);
            epi.apply_in_place(oc, r, plane_out);
            if let Some(post) = post {
                post(i * o + oc, plane_out);
            }
        }
    });
}

/// Output channels per weight-gradient register tile.
const WG_O: usize = 2;
/// (input channel, tap) pairs per weight-gradient register tile.
const WG_T: usize = 6;

/// The weight gradient of the 3x3 stride-1 convolution of `x` in geometry `g` (which
/// [`usable_for_weights`] accepted), from the output gradient `gr` (`[n, o, ho, wo]`), each channel `o`
/// multiplied by `scale[o]` when given: `[o, c, 3, 3]`.
///
/// The gradient is laid out along the same padded rows as the input (zeros where the row's
/// outputs are discarded), so that `dW[o][c][ky][kx] = sum over images and positions q of
/// dy[o][q] * x[c][q + ky * wp + kx]`: a register tile of 2 output channels x 6 (channel,
/// tap) pairs runs over 8 positions at a time (two gradient loads and six input loads per
/// twelve multiply-adds). Tasks are pairs of output channels; the sum over positions and
/// images is in a fixed order, so the result does not depend on the number of threads.
pub(super) fn weight_grad3x3(
    x: &[f32],
    gr: &[f32],
    g: &Geometry,
    scale: Option<&[f32]>,
) -> Vec<f32> {
    assert!(
        supports_weights(g),
        "direct 3x3 weight gradient: unsupported geometry {g:?}"
    );
    let (n, c, o) = (g.n, g.c, g.o);
    let (p, wp) = (g.pad, g.w + g.pad);
    let (ho, wo) = (g.ho, g.wo);
    let q_len = (ho * wp).next_multiple_of(8);
    let plane = ((g.h + 2 * p) * wp).max(q_len + 2 * wp + 2);
    let ct = c * 9;
    // the gradient along padded rows, scaled, zero at the discarded positions
    let mut dy = vec![0f32; n * o * q_len];
    dy.par_chunks_mut(q_len).enumerate().for_each(|(r, dst)| {
        let a = scale.map_or(1.0, |s| s[r % o]);
        let src = &gr[r * ho * wo..(r + 1) * ho * wo];
        for (y, line) in src.chunks_exact(wo).enumerate() {
            for (d, v) in dst[y * wp..y * wp + wo].iter_mut().zip(line) {
                *d = v * a;
            }
        }
    });
    let offsets: Vec<usize> = (0..ct)
        .map(|i| (i / 9) * plane + (i % 9 / 3) * wp + i % 3)
        .collect();
    let mut dw = vec![0f32; o * ct];
    with_padded(&x[..n * c * g.h * g.w], (g.h, g.w), p, wp, plane, |xp| {
        dw.par_chunks_mut(WG_O * ct)
            .enumerate()
            .for_each(|(ob, dst)| {
                let o0 = ob * WG_O;
                let no = WG_O.min(o - o0);
                let mut acc = [[0f32; WG_T]; WG_O];
                for i in 0..n {
                    let img = &xp[i * c * plane..(i + 1) * c * plane];
                    let rows: [&[f32]; WG_O] = std::array::from_fn(|j| {
                        let r = (i * o + o0 + j.min(no - 1)) * q_len;
                        &dy[r..r + q_len]
                    });
                    for t0 in (0..ct).step_by(WG_T) {
                        let nt = WG_T.min(ct - t0);
                        let xs: [*const f32; WG_T] = std::array::from_fn(|k| {
                            // SAFETY (of the pointer arithmetic and of the kernel's reads):
                            // offsets[..] + q_len + 2 * wp + 2 <= c * plane by the size of
                            // `plane`; unused lanes repeat the last pair.
                            unsafe { img.as_ptr().add(offsets[t0 + k.min(nt - 1)]) }
                        });
                        // SAFETY: rows hold `q_len` floats (a multiple of 8), each xs[k] is
                        // readable for `q_len` floats, AVX2 and FMA are present (`usable`).
                        unsafe { wg_tile(&rows, &xs, q_len, &mut acc) };
                        for (j, a) in acc.iter().enumerate().take(no) {
                            for (k, v) in a.iter().enumerate().take(nt) {
                                dst[j * ct + t0 + k] += v;
                            }
                        }
                    }
                }
            });
    });
    dw
}

/// `acc[j][k] = sum over l < len of dy[j][l] * x[k][l]`, eight positions at a time, the
/// eight lanes added in a fixed order at the end.
///
/// # Safety
/// The CPU has AVX2 and FMA; `len` is a multiple of 8; every `x[k]` is readable for `len`
/// floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn wg_tile(
    dy: &[&[f32]; WG_O],
    x: &[*const f32; WG_T],
    len: usize,
    acc: &mut [[f32; WG_T]; WG_O],
) {
    use std::arch::x86_64::*;
    let z = _mm256_setzero_ps();
    let mut a = [[z; WG_T]; WG_O];
    let (d0, d1) = (dy[0].as_ptr(), dy[1].as_ptr());
    for l in (0..len).step_by(8) {
        let g0 = _mm256_loadu_ps(d0.add(l));
        let g1 = _mm256_loadu_ps(d1.add(l));
        for k in 0..WG_T {
            let v = _mm256_loadu_ps(x[k].add(l));
            a[0][k] = _mm256_fmadd_ps(g0, v, a[0][k]);
            a[1][k] = _mm256_fmadd_ps(g1, v, a[1][k]);
        }
    }
    for (dst, src) in acc.iter_mut().zip(a) {
        for (d, v) in dst.iter_mut().zip(src) {
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), v);
            *d = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
                + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn wg_tile(
    _: &[&[f32]; WG_O],
    _: &[*const f32; WG_T],
    _: usize,
    _: &mut [[f32; WG_T]; WG_O],
) {
    unreachable!("the direct convolution runs only on x86-64 with AVX2 and FMA")
}

/// Copies the outputs of one tile (padded-row positions `q0..q0 + acc.len()`) that lie
/// inside the image into `plane` (`[ho, wo]`).
#[inline]
fn scatter(acc: &[f32], q0: usize, wp: usize, wo: usize, ho: usize, plane: &mut [f32]) {
    let mut q = q0;
    let end = q0 + acc.len();
    while q < end {
        let (y, x) = (q / wp, q % wp);
        if y >= ho {
            break;
        }
        if x >= wo {
            q += wp - x;
            continue;
        }
        let run = (wo - x).min(end - q);
        plane[y * wo + x..][..run].copy_from_slice(&acc[q - q0..][..run]);
        q += run;
    }
}

/// [`tile`] for the first `nc` (at most [`OC`]) channels of a block; 9 taps (3x3 stride 1)
/// unrolled.
///
/// In AVX-512 when `wide` (the same sums in the same order: the results are identical).
///
/// # Safety
/// As [`tile`], and the CPU has AVX-512F when `wide`.
unsafe fn run_tile(nc: usize, args: TileArgs, acc: &mut [[f32; WIDE_TILE]; OC], wide: bool) {
    macro_rules! by_taps {
        ($nc:literal) => {
            match (wide, args.4.len() == 9) {
                (false, true) => tile::<$nc, 9>(args, acc),
                (false, false) => tile::<$nc, 0>(args, acc),
                (true, true) => tile_avx512::<$nc, 9>(args, acc),
                (true, false) => tile_avx512::<$nc, 0>(args, acc),
            }
        };
    }
    match nc {
        1 => by_taps!(1),
        2 => by_taps!(2),
        3 => by_taps!(3),
        4 => by_taps!(4),
        5 => by_taps!(5),
        _ => by_taps!(6),
    }
}

/// A tile's input, packed weights, channels, channel stride and tap offsets.
type TileArgs<'a> = (*const f32, *const f32, usize, usize, &'a [usize]);

/// One register tile: `acc[j][l] = sum over ci, t of x[ci * cs + offs[t] + l] *
/// w[(ci * taps + t) * OC + j]` for `j < NC` (rows `NC..` of `acc` are left as they are).
/// `T` is the number of taps when known at compile time (unrolled), 0 otherwise.
///
/// # Safety
/// The CPU has AVX2 and FMA; `T` is 0 or `offs.len()`; `x` is readable for
/// `(c - 1) * cs + max(offs) + TILE` floats and `w` for `c * offs.len() * OC`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const NC: usize, const T: usize>(
    (x, w, c, cs, offs): TileArgs,
    acc: &mut [[f32; WIDE_TILE]; OC],
) {
    use std::arch::x86_64::*;
    let nt = if T == 0 { offs.len() } else { T };
    let z = _mm256_setzero_ps();
    let mut a = [[z; 2]; NC];
    for ci in 0..c {
        let base = x.add(ci * cs);
        let wc = w.add(ci * nt * OC);
        for t in 0..nt {
            let px = base.add(*offs.get_unchecked(t));
            let x0 = _mm256_loadu_ps(px);
            let x1 = _mm256_loadu_ps(px.add(8));
            let wt = wc.add(t * OC);
            for (j, aj) in a.iter_mut().enumerate() {
                let b = _mm256_broadcast_ss(&*wt.add(j));
                aj[0] = _mm256_fmadd_ps(x0, b, aj[0]);
                aj[1] = _mm256_fmadd_ps(x1, b, aj[1]);
            }
        }
    }
    for (dst, [r0, r1]) in acc.iter_mut().zip(a) {
        _mm256_storeu_ps(dst.as_mut_ptr(), r0);
        _mm256_storeu_ps(dst.as_mut_ptr().add(8), r1);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile<const NC: usize, const T: usize>(_: TileArgs, _: &mut [[f32; WIDE_TILE]; OC]) {
    unreachable!("the direct convolution runs only on x86-64 with AVX2 and FMA")
}

/// [`tile`] for [`WIDE_TILE`] positions, two AVX-512 registers per output channel.
///
/// # Safety
/// As [`tile`] with `WIDE_TILE` in place of `TILE`, and the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const NC: usize, const T: usize>(
    (x, w, c, cs, offs): TileArgs,
    acc: &mut [[f32; WIDE_TILE]; OC],
) {
    use std::arch::x86_64::*;
    let nt = if T == 0 { offs.len() } else { T };
    let z = _mm512_setzero_ps();
    let mut a = [[z; 2]; NC];
    for ci in 0..c {
        let base = x.add(ci * cs);
        let wc = w.add(ci * nt * OC);
        for t in 0..nt {
            let px = base.add(*offs.get_unchecked(t));
            let x0 = _mm512_loadu_ps(px);
            let x1 = _mm512_loadu_ps(px.add(16));
            let wt = wc.add(t * OC);
            for (j, aj) in a.iter_mut().enumerate() {
                let b = _mm512_set1_ps(*wt.add(j));
                aj[0] = _mm512_fmadd_ps(x0, b, aj[0]);
                aj[1] = _mm512_fmadd_ps(x1, b, aj[1]);
            }
        }
    }
    for (dst, [r0, r1]) in acc.iter_mut().zip(a) {
        _mm512_storeu_ps(dst.as_mut_ptr(), r0);
        _mm512_storeu_ps(dst.as_mut_ptr().add(16), r1);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_avx512<const NC: usize, const T: usize>(
    _: TileArgs,
    _: &mut [[f32; WIDE_TILE]; OC],
) {
    unreachable!("the direct convolution runs only on x86-64 with AVX2 and FMA")
}

#[cfg(test)]
mod tests {
    use super::super::conv::{conv_forward_im2col, geometry, weight_grad_im2col, Epilogue};
    use super::super::layout::tests_isa::each_isa;
    use super::super::testing::values;
    use super::*;
    use candle_core::Shape;
    use std::sync::Arc;

    /// The `k x k` geometries of `shapes` (`(n, c, o, h, w)`) with stride `s` and padding 0
    /// to `k - 1` whose outputs are at least 7 wide, each with a seed; `None` (and a note) on
    /// a CPU without AVX2/FMA, where the direct kernel never runs.
    fn geometries(
        shapes: &[(usize, usize, usize, usize, usize)],
        k: usize,
        s: usize,
    ) -> Option<Vec<(Geometry, u64)>> {
        if !has_fma() {
            eprintln!("skipped: this CPU has no AVX2/FMA, the direct kernel never runs");
            return None;
        }
        let mut out = Vec::new();
        for &(n, c, o, h, w) in shapes {
            for pad in 0..k {
                let g = geometry(
                    &Shape::from((n, c, h, w)),
                    &Shape::from((o, c, k, k)),
                    s,
                    pad,
                )
                .unwrap();
                if g.wo >= 7 {
                    out.push((g, (n * 1000 + c * 10 + o + pad + k + s) as u64));
                }
            }
        }
        Some(out)
    }

    #[test]
    fn matches_the_im2col_path_on_every_edge_case() {
        let shapes = [
            (1, 8, 1, 7, 7),
            (3, 13, 5, 9, 13),
            (2, 16, 7, 20, 17),
            (1, 64, 12, 8, 8),
            (2, 24, 64, 14, 15),
            (1, 256, 6, 7, 9),
        ];
        // the 3-channel stem, odd and even sizes, every padding
        let stems = [(1, 3, 5, 20, 21), (2, 3, 16, 19, 24), (1, 3, 64, 15, 15)];
        // 3x3 stride 2 (ResNet's downsampling layers), routed here with AVX-512 up to 128
        // channels and from 14 outputs wide
        let strided = [
            (1, 8, 1, 15, 14),
            (3, 13, 5, 17, 19),
            (2, 64, 7, 16, 16),
            (1, 16, 6, 29, 30),
            (1, 128, 12, 28, 29),
            (1, 256, 6, 31, 28),
        ];
        let (Some(k3), Some(k7s2), Some(k3s2)) = (
            geometries(&shapes, 3, 1),
            geometries(&stems, 7, 2),
            geometries(&strided, 3, 2),
        ) else {
            return;
        };
        assert!(
            k3.len() >= 12 && k7s2.len() >= 10 && k3s2.len() >= 10,
            "{}, {} and {}",
            k3.len(),
            k7s2.len(),
            k3s2.len()
        );
        for (g, seed) in k3.into_iter().chain(k7s2).chain(k3s2) {
            assert!(supports(&g), "{g:?} should run the direct kernel");
            each_isa(|wide| {
                let routed = g.stride == 1 || g.k == 7 || (wide && g.c <= 128 && g.wo >= 14);
                assert_eq!(usable(&g), routed, "{g:?} (AVX-512: {wide})");
            });
            let kk = g.k * g.k;
            let (n, c, o) = (g.n, g.c, g.o);
            let x = values(n * c * g.h * g.w, seed);
            let wt = values(o * c * kk, seed + 1);
            let res = values(n * o * g.ho * g.wo, seed + 2);
            let epis = [
                Epilogue::default(),
                Epilogue {
                    scale: Some(Arc::new(values(o, seed + 3))),
                    shift: Some(Arc::new(values(o, seed + 4))),
                    relu: true,
                },
            ];
            for (e, epi) in epis.iter().enumerate() {
                let r = (e == 1).then_some(&res[..]);
                let want = conv_forward_im2col(&x, &wt, &g, epi, r);
                let mut runs = Vec::new();
                each_isa(|wide| {
                    let mut got = vec![f32::NAN; want.len()];
                    conv_direct(&x, &wt, &g, epi, r, &mut got, None);
                    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() <= 2e-5 * scale * (c as f32).sqrt(),
                            "{g:?} epilogue {e} (AVX-512: {wide}): output {i}: {a} vs {b}"
                        );
                    }
                    runs.push(got);
                });
                // the same bits on another number of threads
                let threads = crate::ops::testing::on_threads(3, || {
                    let mut got = vec![f32::NAN; want.len()];
                    conv_direct(&x, &wt, &g, epi, r, &mut got, None);
                    got
                });
                assert!(
                    crate::ops::testing::same_bits(&threads, &runs[0]),
                    "{g:?} epilogue {e}: 3 threads changed the bits"
                );
                // the same sums in the same order per lane
                if let [a, b] = &runs[..] {
                    assert!(
                        crate::ops::testing::same_bits(a, b),
                        "{g:?} epilogue {e}: AVX2 and AVX-512 outputs differ"
                    );
                }
            }
        }
    }

    #[test]
    fn weight_gradient_matches_the_im2col_path() {
        let Some(cases) = geometries(
            &[
                (1, 8, 1, 7, 7),
                (3, 13, 5, 9, 13),
                (2, 16, 7, 20, 17),
                (2, 64, 12, 8, 8),
                // past the AVX-512 routing's 64 channels (the AVX2 routing runs it)
                (1, 128, 6, 8, 8),
            ],
            3,
            1,
        ) else {
            return;
        };
        assert!(cases.len() >= 8, "only {} geometries", cases.len());
        for (g, seed) in cases {
            assert!(supports_weights(&g), "{g:?} should run the direct kernel");
            let x = values(g.n * g.c * g.h * g.w, seed);
            let gr = values(g.n * g.o * g.ho * g.wo, seed + 1);
            let scale = values(g.o, seed + 2);
            for s in [None, Some(&scale[..])] {
                let want = weight_grad_im2col(&x, &gr, &g, s);
                let tol = 2e-5 * want.iter().fold(1f32, |m, v| m.max(v.abs()));
                each_isa(|wide| {
                    let got = weight_grad3x3(&x, &gr, &g, s);
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() <= tol,
                            "{g:?} (AVX-512: {wide}): weight {i}: {a} vs {b}"
                        );
                    }
                });
            }
        }
    }
}
