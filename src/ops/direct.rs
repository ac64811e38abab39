//! A direct stride-1 convolution (3x3, and 4x4 for the stem's stride phases) for x86-64
//! CPUs with AVX2 and FMA: no column matrix.
//!
//! Every image is copied once into a zero-padded buffer whose rows are `w + p` wide (one
//! row's right padding is the next row's left padding). Output pixels are numbered along
//! those rows (`q = y * (w + p) + x`; the last `k - 1 - p` of each row are computed and
//! discarded), so that for every tap `(ky, kx)` the inputs of 16 consecutive outputs are 16
//! consecutive floats of the padded plane, at `q + ky * (w + p) + kx`. A register tile of 16
//! outputs x 6 output channels (12 AVX registers) runs over all `c * k * k` products with two
//! loads of inputs and six broadcast weights each, the ratio of loads to multiply-adds of
//! `gemm`'s own micro-kernel, without the k*k times larger column matrix that im2col writes
//! and `gemm` packs again. Weights are packed per 6 output channels (`[c][k * k][6]`); a task
//! is one image and a group of output channels, and runs every block of its group over a
//! strip of tiles before the next strip. [`weight_grad3x3`] computes 3x3 weight gradients
//! along the same padded rows.
//!
//! On ResNet-18's 3x3 layers (batch 16, 2 threads, this project's development VM) the im2col
//! path reached 110 / 131 / 151 GFLOP/s at 56 / 28 / 14 px with 64 / 128 / 256 channels, this
//! kernel 155 / 166 / 158 (PyTorch's oneDNN: 174 / 176 / 176); at 512 channels (7 px) the
//! im2col path stays ahead (weights of one block no longer fit in L1), so it keeps that case.
//!
//! Each output is one chain of fused multiply-adds in a fixed order (channel, kernel row,
//! kernel column), so results do not depend on the number of threads.

use super::conv::{with_padded, Epilogue, Geometry};
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// Output pixels per register tile (three AVX registers).
const TILE: usize = 16;
/// Output channels per register tile.
const OC: usize = 6;
/// Tiles per strip: every block of a task runs over a strip of tiles before the next strip,
/// so that the strip's inputs are reused from the cache.
const STRIP: usize = 16;
/// Blocks per task (108 output channels): the blocks that reuse one strip of inputs. Measured
/// best on ResNet-18's shapes among 4 to 18 blocks (fewer, smaller tasks read the inputs more
/// often).
const GROUP: usize = 18;

/// Whether the direct kernel runs geometry `g` on this CPU: 3x3 kernels (ResNet's layers) or
/// 4x4 ones (its 7x7 stride-2 stem split into its four stride phases, [`super::phase`]),
/// stride 1, padding below the kernel size.
pub(super) fn usable(g: &Geometry) -> bool {
    (g.k == 3 || g.k == 4)
        && g.stride == 1
        && g.pad < g.k
        && g.wo >= 7
        && (8..=256).contains(&g.c)
        && has_fma()
        && ENABLED.load(Ordering::Relaxed)
}

/// Whether [`weight_grad3x3`] runs geometry `g`: as [`usable`], up to 128 channels (with 256
/// and more the maps are 14 px or less, too short a sum per register tile; im2col and
/// `gemm` were faster there: 158 against 114 GFLOP/s at 256 channels, 14 px).
pub(super) fn usable_for_weights(g: &Geometry) -> bool {
    usable(g) && g.k == 3 && g.c <= 128
}

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the direct 3x3 kernel on or off for the whole process (on by default); off, every
/// convolution runs im2col and `gemm`. Both are correct; they sum in different orders, so
/// results differ in the last bits (like `torch.backends.mkldnn.enabled` in PyTorch).
pub fn set_direct_conv(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

#[cfg(target_arch = "x86_64")]
fn has_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

#[cfg(not(target_arch = "x86_64"))]
fn has_fma() -> bool {
    false
}

/// Writes the convolution of `x` with `w` (geometry `g`, which [`usable`] accepted),
/// passed through `epi` with `res` added, into `out` (`[n, o, ho, wo]`).
pub(super) fn conv_direct(
    x: &[f32],
    w: &[f32],
    g: &Geometry,
    epi: &Epilogue,
    res: Option<&[f32]>,
    out: &mut [f32],
) {
    assert!(usable(g), "direct convolution: unsupported geometry {g:?}");
    let k = g.k;
    let kk = k * k;
    let (n, c, o) = (g.n, g.c, g.o);
    // rows of the padded plane are `w + p` wide: one row's right padding is the next row's
    // left padding (both zero), so only `k - 1 - p` discarded outputs per row
    let (p, wp) = (g.pad, g.w + g.pad);
    let hp = g.h + 2 * p;
    let (ho, wo) = (g.ho, g.wo);
    let tiles = (ho * wp).div_ceil(TILE);
    // the last tile reads up to k - 1 rows and columns past its last output
    let plane = (hp * wp).max(tiles * TILE + (k - 1) * (wp + 1));
    let blocks = o.div_ceil(OC);
    // packed weights: [block][c][k * k][OC], zero for the channels past o
    let mut wpk = vec![0f32; blocks * c * kk * OC];
    wpk.par_chunks_mut(c * kk * OC)
        .enumerate()
        .for_each(|(b, dst)| {
            for j in 0..OC.min(o - b * OC) {
                let src = &w[(b * OC + j) * c * kk..][..c * kk];
                for (i, v) in src.iter().enumerate() {
                    dst[i * OC + j] = *v;
                }
            }
        });
    let group = GROUP.min(blocks);
    let groups = blocks.div_ceil(group);
    assert!(
        out.len() >= n * o * ho * wo,
        "direct convolution: output too small"
    );
    let out_ptr = super::SendPtr(out.as_mut_ptr());
    with_padded(&x[..n * c * g.h * g.w], (g.h, g.w), p, wp, plane, |xp| {
        (0..n * groups).into_par_iter().for_each(|task| {
            let (i, gi) = (task / groups, task % groups);
            let b_range = gi * group..((gi + 1) * group).min(blocks);
            let img = &xp[i * c * plane..(i + 1) * c * plane];
            let o_range = b_range.start * OC..(b_range.end * OC).min(o);
            // SAFETY: task (i, gi) writes only the planes of image i, channels o_range.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    out_ptr.get().add((i * o + o_range.start) * ho * wo),
                    o_range.len() * ho * wo,
                )
            };
            let mut acc = [[0f32; TILE]; OC];
            for strip in (0..tiles).step_by(STRIP) {
                for b in b_range.clone() {
                    let wb = &wpk[b * c * kk * OC..(b + 1) * c * kk * OC];
                    for t in strip..(strip + STRIP).min(tiles) {
                        let q0 = t * TILE;
                        // SAFETY: the kernel reads img[ci * plane + q0 + ky * wp + kx + l]
                        // for ci < c, ky, kx < k, l < TILE: below c * plane by the size of
                        // `plane`; and wb[..c * k * k * OC]. AVX2 and FMA are present
                        // (`usable`).
                        unsafe {
                            let args = (img.as_ptr().add(q0), wb.as_ptr(), c, plane, wp);
                            let nc = o - b * OC;
                            if k == 4 {
                                run_tile::<4>(nc, args, &mut acc)
                            } else {
                                run_tile::<3>(nc, args, &mut acc)
                            }
                        }
                        for (j, row) in acc.iter().enumerate().take(o.saturating_sub(b * OC)) {
                            let oc = b * OC + j - o_range.start;
                            scatter(row, q0, wp, wo, ho, &mut dst[oc * ho * wo..][..ho * wo]);
                        }
                    }
                }
            }
            for (j, plane_out) in dst.chunks_exact_mut(ho * wo).enumerate() {
                let oc = o_range.start + j;
                let r = res.map(|r| &r[(i * o + oc) * ho * wo..][..ho * wo]);
                epi.apply_in_place(oc, r, plane_out);
            }
        });
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
        usable_for_weights(g),
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

/// Copies the outputs of one tile (padded-row positions `q0..q0 + TILE`) that lie inside the
/// image into `plane` (`[ho, wo]`).
#[inline]
fn scatter(acc: &[f32; TILE], q0: usize, wp: usize, wo: usize, ho: usize, plane: &mut [f32]) {
    let mut q = q0;
    let end = q0 + TILE;
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

/// [`tile`] for the first `nc` (at most [`OC`]) channels of a block.
///
/// # Safety
/// As [`tile`].
unsafe fn run_tile<const K: usize>(
    nc: usize,
    args: (*const f32, *const f32, usize, usize, usize),
    acc: &mut [[f32; TILE]; OC],
) {
    match nc {
        1 => tile::<1, K>(args, acc),
        2 => tile::<2, K>(args, acc),
        3 => tile::<3, K>(args, acc),
        4 => tile::<4, K>(args, acc),
        5 => tile::<5, K>(args, acc),
        _ => tile::<6, K>(args, acc),
    }
}

/// One register tile: `acc[j][l] = sum over ci, ky, kx of x[ci * plane + ky * wp + kx + l] *
/// w[((ci * K * K) + ky * K + kx) * OC + j]` for `j < NC` (rows `NC..` of `acc` are left as
/// they are).
///
/// # Safety
/// The CPU has AVX2 and FMA; `x` is readable for `(c - 1) * plane + (K - 1) * (wp + 1) +
/// TILE` floats and `w` for `c * K * K * OC`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const NC: usize, const K: usize>(
    (x, w, c, plane, wp): (*const f32, *const f32, usize, usize, usize),
    acc: &mut [[f32; TILE]; OC],
) {
    use std::arch::x86_64::*;
    let z = _mm256_setzero_ps();
    let mut a = [[z; 2]; NC];
    for ci in 0..c {
        let base = x.add(ci * plane);
        let wc = w.add(ci * K * K * OC);
        for ky in 0..K {
            let row = base.add(ky * wp);
            for kx in 0..K {
                let px = row.add(kx);
                let x0 = _mm256_loadu_ps(px);
                let x1 = _mm256_loadu_ps(px.add(8));
                let wt = wc.add((ky * K + kx) * OC);
                for (j, aj) in a.iter_mut().enumerate() {
                    let b = _mm256_broadcast_ss(&*wt.add(j));
                    aj[0] = _mm256_fmadd_ps(x0, b, aj[0]);
                    aj[1] = _mm256_fmadd_ps(x1, b, aj[1]);
                }
            }
        }
    }
    for (dst, [r0, r1]) in acc.iter_mut().zip(a) {
        _mm256_storeu_ps(dst.as_mut_ptr(), r0);
        _mm256_storeu_ps(dst.as_mut_ptr().add(8), r1);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile<const NC: usize, const K: usize>(
    _: (*const f32, *const f32, usize, usize, usize),
    _: &mut [[f32; TILE]; OC],
) {
    unreachable!("the direct convolution runs only on x86-64 with AVX2 and FMA")
}

#[cfg(test)]
mod tests {
    use super::super::conv::{conv_forward_im2col, geometry, weight_grad_im2col, Epilogue};
    use super::*;
    use candle_core::Shape;
    use std::sync::Arc;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        crate::rng::SeededRng::new(seed).normal_vec(len, 1.0)
    }

    /// The `k x k` stride-1 geometries of `shapes` (`(n, c, o, h, w)`) with padding 0 to
    /// `k - 1` whose outputs are at least 7 wide, each with a seed; `None` (and a note) on a
    /// CPU without AVX2/FMA, where the direct kernel never runs.
    fn geometries(
        shapes: &[(usize, usize, usize, usize, usize)],
        k: usize,
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
                    1,
                    pad,
                )
                .unwrap();
                if g.wo >= 7 {
                    assert!(usable(&g), "{g:?} should run the direct kernel");
                    out.push((g, (n * 1000 + c * 10 + o + pad + k) as u64));
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
        let (Some(k3), Some(k4)) = (geometries(&shapes, 3), geometries(&shapes, 4)) else {
            return;
        };
        assert!(
            k3.len() >= 12 && k4.len() >= 12,
            "{} and {}",
            k3.len(),
            k4.len()
        );
        for (g, seed) in k3.into_iter().chain(k4) {
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
                let mut got = vec![f32::NAN; want.len()];
                conv_direct(&x, &wt, &g, epi, r, &mut got);
                let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 2e-5 * scale * (c as f32).sqrt(),
                        "{g:?} epilogue {e}: output {i}: {a} vs {b}"
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
            ],
            3,
        ) else {
            return;
        };
        assert!(cases.len() >= 8, "only {} geometries", cases.len());
        for (g, seed) in cases {
            assert!(usable_for_weights(&g), "{g:?} should run the direct kernel");
            let x = values(g.n * g.c * g.h * g.w, seed);
            let gr = values(g.n * g.o * g.ho * g.wo, seed + 1);
            let scale = values(g.o, seed + 2);
            for s in [None, Some(&scale[..])] {
                let want = weight_grad_im2col(&x, &gr, &g, s);
                let got = weight_grad3x3(&x, &gr, &g, s);
                let tol = 2e-5 * want.iter().fold(1f32, |m, v| m.max(v.abs()));
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!((a - b).abs() <= tol, "{g:?}: weight {i}: {a} vs {b}");
                }
            }
        }
    }
}
