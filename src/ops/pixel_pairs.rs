//! Stride-1 3x3 convolutions (padding 1) on 2x2, 4x4 and 7x7 maps (ResNet-18's layers 4 and
//! 3 at 64 px, layer 4 at 224 px) as sums over pixel pairs, on x86-64 CPUs with AVX-512F,
//! forward and input gradient.
//!
//! Output pixel `p` reads input pixel `q` through exactly one tap, `(qy - py + 1, qx - px +
//! 1)`, where `q` is within one pixel of `p` both ways. On a 2x2 map every pixel is within
//! one of every other: each output sums 4 taps of the 9 (16 pixel pairs in all), where
//! im2col multiplies all 9, 5 of them by the zero padding. On a 4x4 map the outputs sum 6.25
//! taps on average, on a 7x7 map 7.37. The sum over taps ([`super::conv`]) skips the padding
//! too, but its products are as narrow as the images of an output row.
//!
//! Here the images are the lanes of the registers (16 per AVX-512 register, the inputs copied
//! batch-last once per call). A register tile holds 6 output channels x the 4 pixels of a 2x2
//! map, 4 output channels x one row of 4 pixels of a 4x4 map, or 3 x one row of 7 of a 7x7
//! map, for 16 images (24, 16 or 21 registers). It runs over the input channels. For each it
//! loads the input pixels the tile reads (4, the 12 of three rows, or the three rows of 7 one
//! after the other), broadcasts the weights of the taps from the kernel in place, and adds
//! the pairs. On a 2x2 map that is 96 multiply-adds for 4 loads and 54 broadcasts. There is
//! no column matrix and no packed or derived weight.
//!
//! The input gradient is the same sum with the roles turned. Input channel by input channel,
//! it runs over the output channels, with output pixel `p` reaching input pixel `q` through
//! the same tap, and reads the kernel in place, transposed.
//!
//! Each output is one chain of fused multiply-adds in a fixed order (channel, then the pixels
//! it reads, row by row), whatever the tile or the number of threads.

use super::layout::Geometry;
use super::SendPtr;
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// Rows (output channels, or input channels for an input gradient) per register tile on 2x2
/// maps: 6 x 4 pixels (24 registers), and the 4 input pixels.
const ROWS: usize = 6;
/// The same on 4x4 maps, one output row per tile: 4 x 4 pixels (16 registers), and the 12
/// input pixels of 3 rows.
const ROWS4: usize = 4;
/// The same on 7x7 maps, one output row per tile: 3 x 7 pixels (21 registers), and the 7
/// input pixels of one row.
const ROWS7: usize = 3;
/// Images per register (the lanes).
const LANES: usize = 16;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the sums over pixel pairs on or off for the whole process (on by default); off,
/// those convolutions run as before: im2col and `gemm` on 2x2 and 7x7 maps (forward; input
/// gradients: `Wᵀ G` with col2im, or the flipped copy), the sum over taps on 4x4 maps. All
/// are correct; they sum in different orders, so results differ in the last bits.
pub fn set_pixel_pairs(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether the convolution `g` (or its input gradient) runs here: 3x3, stride 1, padding 1,
/// on a CPU with AVX-512F (unless [`super::set_avx512`] turned it off), on 2x2 maps; on 4x4
/// maps, and on 7x7 maps of at least 512 channels both ways (layer 4 at 224 px, which
/// Winograd's kernel leaves to im2col with AVX-512), where at least three quarters of the
/// lanes of its registers hold images (12 to 16 images, 24 to 32, ...).
///
/// A tile costs the same whatever the number of its 16 lanes in use. Measured per
/// convolution (2 threads, the AVX-512 VM, four weights in turn so that they come from
/// memory as in a network, best of 40 (8 at 7 px), ms, forward and input gradient, pairs /
/// the route before):
/// - 2x2 maps, 512 channels: 0.35 / 0.70-0.72 and 0.39-0.42 / 0.76-0.77 with 16 images,
///   0.34 / 0.35 and 0.35 / 0.59 with 1, 0.33 / 0.48 and 0.43 / 0.72 with 8. Its weights
///   (9.4 MB) are read once, as im2col's are, so it is level from one image on.
/// - 4x4 maps, 256 channels: 0.47-0.52 / 0.65-0.66 and 0.48-0.49 / 0.72-0.76 with 16 images,
///   0.46-0.50 / 0.56 and 0.46-0.47 / 0.60-0.67 with 12, but 0.44 / 0.39 and 0.45 / 0.38 with
///   8 and 0.43 / 0.18 both ways with 1.
/// - 7x7 maps, 512 channels (the input gradient before: the flipped copy, made per call
///   here, and im2col): 7.3-7.4 / 10.2-10.4 and 7.6-7.8 / 11.1-11.2 with 16 images, 6.5 /
///   8.1 and 6.5 / 9.0 with 12, but 6.3 / 5.6 and 6.3 / 5.2 with 8 and 6.2 / 0.97 and 6.4 /
///   0.94 with 1.
pub(super) fn usable(g: &Geometry) -> bool {
    let lanes_used = |n: usize| 4 * n >= 3 * LANES * n.div_ceil(LANES);
    ENABLED.load(Ordering::Relaxed)
        && (g.k, g.stride, g.pad) == (3, 1, 1)
        && g.h == g.w
        && (g.ho, g.wo) == (g.h, g.w)
        && match g.w {
            2 => true,
            4 => lanes_used(g.n),
            // where Winograd's kernel leaves them (both ways) to im2col
            7 => lanes_used(g.n) && g.c.min(g.o) >= super::winograd::WIDE_GEMM_CHANNELS,
            _ => false,
        }
        && g.n > 0
        && super::layout::use_avx512()
}

/// The sums over pixel pairs on `s x s` maps (`s` 2, 4 or 7): `prod[r][a][i] = Σ_k Σ_b w(r, k,
/// tap(a, b)) src[k][b][i]` for `rows` rows `r`, `kn` summed channels `k`, pixels `a` and `b`
/// (numbered `y * s + x`, `b` within one pixel of `a` both ways), `n` images `i`; `src`
/// batch-last (`[kn][s][s][n]`), `prod` `[rows][s][s][n]`, the weight `w(r, k, t) = w[r * rs
/// + k * ks + t]` with `t = 3 (by - ay + 1) + (bx - ax + 1)` (forward, `[rows, kn, 3, 3]`:
/// `rs = kn * 9`, `ks = 9`), or `8 - t` with `flip` (an input gradient, which reads the
/// forward kernel `[kn, rows, 3, 3]` with `rs = 9`, `ks = rows * 9`).
pub(super) fn sums(
    src: &[f32],
    (kn, n, side): (usize, usize, usize),
    w: &[f32],
    (rows, rs, ks): (usize, usize, usize),
    flip: bool,
    prod: &mut [f32],
) {
    let plane = side * side * n;
    assert!(matches!(side, 2 | 4 | 7), "pixel pairs: {side} px maps");
    assert!(src.len() >= kn * plane && prod.len() >= rows * plane);
    assert!(rows > 0 && kn > 0 && w.len() > (rows - 1) * rs + (kn - 1) * ks + 8);
    assert!(
        super::layout::has_avx512(),
        "pixel pairs: the CPU lacks AVX-512F"
    );
    let tile_rows = match side {
        2 => ROWS,
        4 => ROWS4,
        _ => ROWS7,
    };
    let blocks = rows.div_ceil(tile_rows);
    let parts = rayon::current_num_threads().clamp(1, blocks);
    let dst = SendPtr(prod.as_mut_ptr());
    (0..parts).into_par_iter().for_each(|part| {
        for blk in part * blocks / parts..(part + 1) * blocks / parts {
            // a whole tile of rows, or the remainder one row at a time (the same sums)
            let (mut r0, end) = (blk * tile_rows, ((blk + 1) * tile_rows).min(rows));
            while r0 < end {
                let nr = if r0 + tile_rows <= rows { tile_rows } else { 1 };
                for i0 in (0..n).step_by(LANES) {
                    let mask = super::layout::first_lanes((n - i0) as isize);
                    let wp = w[r0 * rs..].as_ptr();
                    let sp = src[i0..].as_ptr();
                    for y in (0..side).step_by(if side == 2 { 2 } else { 1 }) {
                        // SAFETY: AVX-512F checked above; rows r0..r0+nr of prod are this
                        // task's; the reads stay inside w (asserted) and src (masked past n)
                        unsafe {
                            let out = dst.get().add(r0 * plane + y * side * n + i0);
                            let args = (wp, rs, ks, kn, sp, n, mask, out);
                            run_tile(args, side, y, nr == tile_rows, flip);
                        }
                    }
                }
                r0 += nr;
            }
        }
    });
}

/// The register tile for output row `y` of `side`: [`tile`] or [`tile_wide`] with their
/// constants.
///
/// # Safety
/// As [`tile`]'s.
#[cfg(target_arch = "x86_64")]
unsafe fn run_tile(args: TileArgs, side: usize, y: usize, full: bool, flip: bool) {
    macro_rules! pick {
        ($($flip:literal),*) => {
            match (side, y, full, flip) {
                $(
                    (7, 0, true, $flip) => tile_wide::<7, ROWS7, true, false, $flip>(args, y),
                    (7, 0, false, $flip) => tile_wide::<7, 1, true, false, $flip>(args, y),
                    (7, 6, true, $flip) => tile_wide::<7, ROWS7, false, true, $flip>(args, y),
                    (7, 6, false, $flip) => tile_wide::<7, 1, false, true, $flip>(args, y),
                    (7, _, true, $flip) => tile_wide::<7, ROWS7, false, false, $flip>(args, y),
                    (7, _, false, $flip) => tile_wide::<7, 1, false, false, $flip>(args, y),
                    (2, _, true, $flip) => tile::<2, 2, ROWS, true, true, $flip>(args, y),
                    (2, _, false, $flip) => tile::<2, 2, 1, true, true, $flip>(args, y),
                    (_, 0, true, $flip) => tile::<4, 1, ROWS4, true, false, $flip>(args, y),
                    (_, 0, false, $flip) => tile::<4, 1, 1, true, false, $flip>(args, y),
                    (_, 3, true, $flip) => tile::<4, 1, ROWS4, false, true, $flip>(args, y),
                    (_, 3, false, $flip) => tile::<4, 1, 1, false, true, $flip>(args, y),
                    (_, _, true, $flip) => tile::<4, 1, ROWS4, false, false, $flip>(args, y),
                    (_, _, false, $flip) => tile::<4, 1, 1, false, false, $flip>(args, y),
                )*
            }
        };
    }
    pick!(false, true)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn run_tile(_: TileArgs, _: usize, _: usize, _: bool, _: bool) {
    unreachable!("pixel pairs run only on x86-64 with AVX-512F")
}

/// The arguments of [`tile`]: weights of its first row, row and channel strides, channels,
/// the sources of its first image, images, the lanes in use, the products of its first row,
/// output row and image.
type TileArgs = (
    *const f32,
    usize,
    usize,
    usize,
    *const f32,
    usize,
    u16,
    *mut f32,
);

/// Adds one input row `sv` (its pixels' registers) into one output row `acc` of sums through
/// tap row `ty`: input pixel `b` reaches output pixel `a` through the tap `3 ty + (b - a +
/// 1)` where `|b - a| <= 1` (8 minus that with `flip`), the weights at `wr`. A macro, not a
/// function, so that it expands inside the callers' `target_feature` code with constant
/// indices (the loops unroll into registers).
#[cfg(target_arch = "x86_64")]
macro_rules! row_pairs {
    ($acc:expr, $sv:expr, $wr:expr, $ty:expr, $flip:expr) => {
        for (b, &v) in $sv.iter().enumerate() {
            for (a, acc) in $acc.iter_mut().enumerate() {
                let tx = b as isize - a as isize + 1;
                if !(0..=2).contains(&tx) {
                    continue;
                }
                let t = (3 * $ty + tx) as usize;
                let t = if $flip { 8 - t } else { t };
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(*$wr.add(t)), v, *acc);
            }
        }
    };
}

/// One register tile: `R` rows x `YT` output rows of `S` pixels (from row `y`) x 16 images,
/// over all `kn` channels, on `S x S` maps; `TOP` / `BOTTOM`: the tile's first / last row is
/// the map's (no input row above / below it).
///
/// # Safety
/// The CPU has AVX-512F; the pointers address what [`sums`] describes for rows `0..R`,
/// output rows `y..y + YT` and the lanes in `mask`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile<
    const S: usize,
    const YT: usize,
    const R: usize,
    const TOP: bool,
    const BOTTOM: bool,
    const FLIP: bool,
>(
    (w, rs, ks, kn, s, n, mask, out): TileArgs,
    y: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[[_mm512_setzero_ps(); S]; YT]; R];
    // input rows y - 1 ..= y + YT (those inside the map): row `y + ri - 1` reaches output
    // row `y + yy` through tap row `ri - yy` (0..=2)
    let rows_in = |ri: usize| !((ri == 0 && TOP) || (ri == YT + 1 && BOTTOM));
    for k in 0..kn {
        let wk = w.add(k * ks);
        let sk = s.add(k * S * S * n);
        // every input pixel of the tile's 16 images first (S * (YT + 2) registers at most),
        // then row by row of weights, so that each weight is broadcast once, where it is used
        let sv: [[__m512; S]; 4] = std::array::from_fn(|ri| {
            std::array::from_fn(|b| {
                if ri < YT + 2 && rows_in(ri) {
                    _mm512_maskz_loadu_ps(mask, sk.add(((y + ri - 1) * S + b) * n))
                } else {
                    _mm512_setzero_ps()
                }
            })
        });
        for (r, acc) in acc.iter_mut().enumerate() {
            let wr = wk.add(r * rs);
            for (ri, sv) in sv.iter().enumerate().take(YT + 2) {
                if !rows_in(ri) {
                    continue;
                }
                for (yy, acc) in acc.iter_mut().enumerate() {
                    let ty = ri as isize - yy as isize;
                    if !(0..=2).contains(&ty) {
                        continue;
                    }
                    row_pairs!(acc, sv, wr, ty, FLIP);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (yy, acc) in acc.iter().enumerate() {
            for (a, &v) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(out.add(((r * S + yy) * S + a) * n), mask, v);
            }
        }
    }
}

/// [`tile`] for one output row of a 7x7 map (`S` 7, `R` rows x 7 pixels): the input rows one
/// at a time (7 registers; all 21 of three rows and the 21 sums would not fit the 32
/// registers). Each input row meets its own row of taps, so no weight is broadcast twice.
/// The same sums in the same order as [`tile`]'s.
///
/// # Safety
/// As [`tile`]'s.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_wide<
    const S: usize,
    const R: usize,
    const TOP: bool,
    const BOTTOM: bool,
    const FLIP: bool,
>(
    (w, rs, ks, kn, s, n, mask, out): TileArgs,
    y: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); S]; R];
    for k in 0..kn {
        let wk = w.add(k * ks);
        let sk = s.add(k * S * S * n);
        // input row y + ty - 1 reaches output row y through tap row ty
        for ty in 0..3 {
            if (ty == 0 && TOP) || (ty == 2 && BOTTOM) {
                continue;
            }
            let row = sk.add((y + ty - 1) * S * n);
            let sv: [__m512; S] =
                std::array::from_fn(|b| _mm512_maskz_loadu_ps(mask, row.add(b * n)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let wr = wk.add(r * rs);
                row_pairs!(acc, sv, wr, ty as isize, FLIP);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (a, &v) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(out.add((r * S * S + a) * n), mask, v);
        }
    }
}
