//! Winograd's minimal filtering F(2x2, 3x3) for stride-1 3x3 convolutions with padding 1
//! (ResNet's 3x3 layers, forward, and their input gradients, which are such convolutions
//! of the output gradient with the flipped kernel), on x86-64 CPUs with AVX2 and FMA.
//!
//! Each 2x2 block of outputs (a *tile*) is computed from the 4x4 block of inputs around it:
//! `Y = Aᵀ [Σ_c (G g_c Gᵀ) ⊙ (Bᵀ d_c B)] A`, 16 multiplications per tile and channel pair
//! instead of 36 (2.25 times fewer). The products are 16 independent matrix products (one per
//! position `ξ` of the 4x4 transformed tile) of the transformed inputs `V[ξ]` (tiles x
//! channels) with the transformed weights `U[ξ]` (channels x output channels).
//!
//! A task is one image and a band of tile rows (about 64 tiles), or several whole images
//! where they are that small ([`images_per_task`]). It transforms the band's inputs into
//! `V[ξ][c][tile]` (in the cache: at most ~256 KB, 512 KB with AVX-512), then for every 6
//! output channels runs a register tile of 16 tiles x 6 output channels (12 AVX registers, the
//! shape of [`super::direct`]'s) over the channels for each `ξ`, and transforms the 16 x 6
//! sums back into 2x2 outputs with the epilogue applied. Every output is computed in a
//! fixed order whatever the number of threads.
//!
//! On ResNet-18's 3x3 shapes (batch 16, 2 threads, best of 7 on the development VM, whose
//! timings move by 15-40%), in direct-convolution GFLOP/s: 189-210 / 199-236 / 194-229 at
//! 56 / 28 / 14 px with 64 / 128 / 256 channels against 131-155 / 135-171 / 138-160 for the
//! direct kernel, and 144 against 109 for im2col at 512 channels, 7 px. The element loops
//! (transforms, interleaving) must vectorise: compiled for the crate's SSE2 baseline with
//! indexing across several slices of one buffer they ran scalar and took as long as the
//! products.
//!
//! On a CPU with AVX-512F (unless [`super::set_avx512`] turned it off, `ROBUSTLENS_AVX512=0`)
//! the products run 32 tiles x 6 output channels in 12 AVX-512 registers. Each lane adds the
//! same products in the same order, so the results are identical bit for bit. Measured
//! interleaved with the AVX2 tile in one process (batch 16, 2 threads, best of 30 runs at
//! 64 px and of 6 at 224 px): 1.20-1.34 against 1.68-1.85 ms at 64 channels, 16 px; 20.9
//! against 25.0 ms at 56 px; 15.6 against 21.1 ms at 128 channels, 28 px. With AVX-512 the
//! layers of 512 channels go to im2col and `gemm` instead ([`usable`]).
//!
//! The weight gradients of these layers run the same transforms transposed, F(3x3, 2x2)
//! ([`weight_grad`], on AVX-512 CPUs where [`usable_for_weights`] routes them).
//!
//! With AVX-512 the transforms of the inputs and of the output gradients run in registers,
//! a row of 16 tiles at a time ([`transform_plane_avx512`], [`grad_tiles_avx512`]): the same
//! additions as the portable loops, the same bits, where those paid for slices and bounds on
//! every row of a few tiles. In `perf` of a weight gradient of layer 1 at 64 px the two
//! transforms had taken half the time, and the products the other half.
//!
//! Numerics: the transforms only add, subtract and halve, so the results differ from a
//! direct sum by rounding (a few units in the last place of the inputs' scale), like any
//! other summation order; [`set_winograd`] turns it off.

use super::frozen::Derivation;
#[cfg(target_arch = "x86_64")]
use super::layout::{first_lanes, lane_indices};
use super::layout::{has_fma, padded_stride, use_avx512, with_scratch, Epilogue, Geometry};
use super::matmul::matmul_blocks;
use super::SendPtr;
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// Tiles per register tile (two AVX registers).
const TB: usize = 16;
/// Output channels per register tile.
const OC: usize = 6;
/// Most floats of transformed inputs per task (`16 * c * tiles`): 64 K floats, 256 KB (for
/// several small images per task: [`images_per_task`]).
const V_FLOATS: usize = 64 << 10;
/// The same for a band of tile rows with AVX-512: 128 K floats, 512 KB. Measured against
/// 64 K (batch 16, 2 threads, best of 12, alternating, twice on the AVX-512 VM): 9.4-10.0
/// against 16.9-17.6 ms at 256 channels, 14 px (im2col: 13.6-14.5); 10.5-10.9 against
/// 13.6-14.3 ms at 64 channels, 56 px; level at 128 channels, 28 px.
const V_FLOATS_WIDE: usize = 128 << 10;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns Winograd's F(2x2, 3x3) convolution on or off for the whole process (on by
/// default); off, ResNet's 3x3 layers run the direct kernel or im2col. Both are correct;
/// they round differently (last bits).
pub fn set_winograd(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether geometry `g` runs here: 3x3, stride 1, padding 1, on a CPU with AVX2 and FMA,
/// outputs at least 7 wide (layer 4 at 224 px) and at least 16 input channels, fewer than
/// [`WIDE_GEMM_CHANNELS`] with AVX-512.
pub(super) fn usable(g: &Geometry) -> bool {
    supports(g) && (g.c < WIDE_GEMM_CHANNELS || !use_avx512()) && ENABLED.load(Ordering::Relaxed)
}

/// Whether the kernel can run geometry `g` on this CPU (whether it is chosen: [`usable`]).
fn supports(g: &Geometry) -> bool {
    g.k == 3 && g.stride == 1 && g.pad == 1 && g.wo >= 7 && g.ho >= 2 && g.c >= 16 && has_fma()
}

/// Whether [`weight_grad`] can run geometry `g`: 3x3, stride 1, padding 1, on a CPU with
/// AVX2 and FMA (any map size: the tiles past the map read zeros).
fn supports_weights(g: &Geometry) -> bool {
    g.k == 3 && g.stride == 1 && g.pad == 1 && has_fma()
}

/// Whether the weight gradient of geometry `g` runs [`weight_grad`]: with AVX-512 (its
/// products are `gemm`'s, which run twice as wide there), on maps at least 8 wide. Measured
/// against the routing before it (the direct kernel up to 64 channels, im2col and `gemm`
/// above), batch 16, 2 threads, best of 5 interleaved runs on the AVX-512 VM, in ms: 23.1 →
/// 13.8 / 16.5 → 9.2 / 12.4 → 8.7 at 64 / 128 / 256 channels and 56 / 28 / 14 px; 2.3 → 1.7 /
/// 1.4 → 1.2 at 64 / 128 channels, 16 / 8 px; slower on smaller maps (10.8 → 12.1 at 512
/// channels, 7 px; 1.2 → 1.6 at 256, 4 px). Without AVX-512 the routing stays as it was.
/// With the rows of [`padded_stride`] and the AVX-512 transforms (batch 16, 2 threads, best
/// of 20, twice, alternating): 1.95-1.98 → 1.03-1.06 ms at 64 channels, 16 px; 1.54-1.60 →
/// 1.03-1.21 at 128, 8 px; 256 channels at 4 px stayed slower than batch-last im2col (1.4
/// against 1.1-1.2 ms).
pub(super) fn usable_for_weights(g: &Geometry) -> bool {
    supports_weights(g) && use_avx512() && g.wo >= 8 && ENABLED.load(Ordering::Relaxed)
}

/// Input channels from which, with AVX-512, im2col and `gemm`'s AVX-512 products beat this
/// kernel's AVX-512 tile (batch 16, 2 threads, best of 12 interleaved runs on the AVX-512
/// VM: 24.9-25.3 against 15.0-15.5 ms at 512 channels, 7 px). At 256 channels, 14 px,
/// im2col was ahead (29.9 against 25.4 ms) until bands of [`V_FLOATS_WIDE`]. With AVX2
/// only, Winograd keeps them all (it measured ahead of im2col there: 144 against 109
/// GFLOP/s at 512 channels, 7 px).
pub(super) const WIDE_GEMM_CHANNELS: usize = 512;

/// The weights `[o, c, 3, 3]` transformed (`G g Gᵀ`) and packed as `U[ob][ξ][c][6]`
/// (output channels past `o` zero): one block of 6 output channels per parallel task.
fn transform_weights(w: &[f32], o: usize, c: usize) -> Vec<f32> {
    let nob = o.div_ceil(OC);
    let mut u = vec![0f32; nob * 16 * c * OC];
    u.par_chunks_mut(16 * c * OC)
        .enumerate()
        .for_each(|(ob, dst)| {
            // channel by channel, so that the block's 6 output channels, side by side in
            // `dst`, are written together (output channel by output channel, the 16 rows
            // were walked six times: 0.97 → 0.75 ms at 256 x 256 channels, 0.22 → 0.18 at
            // 128, level at 64; 2 threads, best of 40, alternating; the same bits)
            for ci in 0..c {
                for j in 0..OC.min(o - ob * OC) {
                    let g = &w[((ob * OC + j) * c + ci) * 9..][..9];
                    // t = G g (4x3)
                    let mut t = [[0f32; 3]; 4];
                    for col in 0..3 {
                        let (g0, g1, g2) = (g[col], g[3 + col], g[6 + col]);
                        t[0][col] = g0;
                        t[1][col] = 0.5 * (g0 + g1 + g2);
                        t[2][col] = 0.5 * (g0 - g1 + g2);
                        t[3][col] = g2;
                    }
                    for (r, tr) in t.iter().enumerate() {
                        let v = [
                            tr[0],
                            0.5 * (tr[0] + tr[1] + tr[2]),
                            0.5 * (tr[0] - tr[1] + tr[2]),
                            tr[2],
                        ];
                        for (col, &val) in v.iter().enumerate() {
                            dst[((r * 4 + col) * c + ci) * OC + j] = val;
                        }
                    }
                }
            }
        });
    u
}

/// The scratch of a band of `band_rows` tile rows `tw` tiles wide with `c` channels, in each
/// of `imgs` images: tiles rounded up to register tiles (`nb`), the strides of V per ξ and of
/// M per output channel, and the lengths of V `[16][c][nb]`, M `[6][16][nb]`, E/O
/// `[2][tw+1]`, R `[rows][4][tw]` (one image's) and Y `[4][nb]`. The strides are 16 floats
/// (a cache line) past a multiple of the page, so that the 16 (6) streams written together
/// do not all map to the same L1 cache set.
fn band_scratch(
    c: usize,
    tw: usize,
    band_rows: usize,
    imgs: usize,
) -> (usize, (usize, usize), [usize; 5]) {
    let nb = (imgs * band_rows * tw).div_ceil(TB) * TB;
    let rows = 2 * band_rows + 2;
    let (vs, ms) = (c * nb + 16, 16 * nb + 16);
    (
        nb,
        (vs, ms),
        [16 * vs, OC * ms, 2 * (tw + 1), rows * 4 * tw, 4 * nb],
    )
}

/// Writes the convolution of `x` with `w` (geometry `g`, which [`usable`] accepted), passed
/// through `epi` with `res` added, into `out` (`[n, o, ho, wo]`).
pub(super) fn conv_winograd(
    x: &[f32],
    w: &[f32],
    g: &Geometry,
    epi: &Epilogue,
    res: Option<&[f32]>,
    out: &mut [f32],
) {
    assert!(
        supports(g),
        "winograd convolution: unsupported geometry {g:?}"
    );
    let (th, tw) = (g.ho.div_ceil(2), g.wo.div_ceil(2));
    let params = || vec![g.o as u32, g.c as u32];
    let u = super::frozen::derive(Derivation::Winograd, w, params, || {
        transform_weights(w, g.o, g.c)
    });
    let wide = use_avx512();
    // band height: the most tile rows whose transformed inputs fit the budget, at least one
    let budget = if wide { V_FLOATS_WIDE } else { V_FLOATS };
    let br = ((budget / (16 * g.c)).max(TB) / tw).clamp(1, th);
    let bands = th.div_ceil(br);
    let imgs = images_per_task(g.n, g.c, th * tw, bands);
    let need: usize = band_scratch(g.c, tw, br, imgs).2.iter().sum();
    let outp = SendPtr(out.as_mut_ptr());
    assert!(out.len() >= g.n * g.o * g.hw_out());
    let groups = g.n.div_ceil(imgs);
    (0..groups * bands).into_par_iter().for_each(|task| {
        let (group, band) = (task / bands, task % bands);
        let img0 = group * imgs;
        let images = (img0, imgs.min(g.n - img0));
        let ty0 = band * br;
        let ty1 = (ty0 + br).min(th);
        with_scratch(need, 0, |buf, _| {
            // SAFETY: AVX2/FMA checked by `usable`, AVX-512F by the caller when `wide`; tasks
            // write disjoint images, or disjoint rows of one image
            unsafe { run_band(x, &u, g, images, (ty0, ty1), epi, res, outp, buf, wide) };
        });
    });
}

/// Images per task: where one image is a single band with fewer tiles than a task may hold
/// (maps of 8 px and less: ResNet's layer 2 at 64 px), whole images side by side, so that the
/// register tiles are full and the AVX-512 tile (32 tiles) runs; as many as [`V_FLOATS`]
/// holds with `c` channels, at most as many as leave a task for every thread. The sums of a
/// tile do not depend on its neighbours, so the grouping changes no bit.
fn images_per_task(n: usize, c: usize, tiles_per_image: usize, bands: usize) -> usize {
    if bands > 1 {
        return 1;
    }
    let max_tiles = (V_FLOATS / (16 * c)).max(TB);
    let fit = (max_tiles / tiles_per_image).max(1);
    fit.min((n / rayon::current_num_threads()).max(1))
}

/// One task: images `img0 .. img0 + imgs` (`images`), tile rows `ty0..ty1` of each (all rows
/// when there are several images). Compiled for AVX2 (the crate's baseline
/// is SSE2), its element loops in small functions whose slices LLVM knows to be disjoint,
/// so that they vectorise.
///
/// # Safety
/// The CPU has AVX2 and FMA, and AVX-512F when `wide`; `outp` is `g`'s output, whose rows of
/// this band no other task writes.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn run_band(
    x: &[f32],
    u: &[f32],
    g: &Geometry,
    (img0, imgs): (usize, usize),
    (ty0, ty1): (usize, usize),
    epi: &Epilogue,
    res: Option<&[f32]>,
    outp: SendPtr,
    buf: &mut [f32],
    wide: bool,
) {
    let (c, h, w, o) = (g.c, g.h, g.w, g.o);
    let (ho, wo) = (g.ho, g.wo);
    let tw = wo.div_ceil(2);
    // tiles of one image's band, and of the task (tile b of image k is k * per_img + b)
    let per_img = (ty1 - ty0) * tw;
    let tiles = imgs * per_img;
    let nob = o.div_ceil(OC);
    let (nb, (vs, ms), [lv, lm, le, lr, ly]) = band_scratch(c, tw, ty1 - ty0, imgs);
    let (v, rest) = buf.split_at_mut(lv);
    let (m, rest) = rest.split_at_mut(lm);
    let (eo, rest) = rest.split_at_mut(le);
    let (rr, rest) = rest.split_at_mut(lr);
    let yv = &mut rest[..ly];

    // 1. inputs: V[ξ][ci][b] = (Bᵀ d B)[ξ] of tile b
    for (k, img) in (img0..img0 + imgs).enumerate() {
        let xi = &x[img * c * h * w..(img + 1) * c * h * w];
        for ci in 0..c {
            let plane = &xi[ci * h * w..(ci + 1) * h * w];
            let base = ci * nb + k * per_img;
            if wide {
                // AVX-512F: the caller's `wide`; v holds the band's tiles at vs (as below)
                transform_plane_avx512(plane, (h, w), (ty0, ty1), v, (vs, base));
            } else {
                transform_plane(plane, (h, w), (ty0, ty1), (eo, rr), v, (vs, base));
            }
        }
    }
    // lanes past the task's tiles: zeros (their sums are never stored)
    for ci in 0..c {
        for xi_ in 0..16 {
            v[xi_ * vs + ci * nb + tiles..xi_ * vs + (ci + 1) * nb].fill(0.0);
        }
    }

    // 2. per 6 output channels: M[j][ξ][b] = Σ_ci V[ξ][ci][b] U[ξ][ob][ci][j], then outputs
    for ob in 0..nob {
        for xi_ in 0..16 {
            let ub = &u[(ob * 16 + xi_) * c * OC..][..c * OC];
            let vb = &v[xi_ * vs..xi_ * vs + c * nb];
            let mut b = 0;
            // SAFETY (both kernels): AVX2/FMA checked by `usable`, AVX-512F by the caller
            // when `wide`; vb holds c rows of nb >= b + 2 TB (b + TB) floats, ub c * 6, m 6
            // rows of 16 * nb floats from ξ * nb + b.
            if wide {
                while b + 2 * TB <= nb {
                    unsafe {
                        gemm_tile_avx512(
                            vb.as_ptr().add(b),
                            nb,
                            ub.as_ptr(),
                            c,
                            m.as_mut_ptr().add(xi_ * nb + b),
                            ms,
                        );
                    }
                    b += 2 * TB;
                }
            }
            while b < nb {
                unsafe {
                    gemm_tile(
                        vb.as_ptr().add(b),
                        nb,
                        ub.as_ptr(),
                        c,
                        m.as_mut_ptr().add(xi_ * nb + b),
                        ms,
                    );
                }
                b += TB;
            }
        }
        for j in 0..OC.min(o - ob * OC) {
            let oo = ob * OC + j;
            let mj = &m[j * ms..j * ms + 16 * nb];
            let (y0, rest) = yv.split_at_mut(nb);
            let (y1, rest) = rest.split_at_mut(nb);
            let (y2, y3) = rest.split_at_mut(nb);
            output_transform(mj, nb, tiles, [y0, y1, y2, y3]);
            for (k, img) in (img0..img0 + imgs).enumerate() {
                let pbase = (img * o + oo) * ho * wo;
                let rp = res.map(|r| &r[pbase..pbase + ho * wo]);
                for ty in ty0..ty1 {
                    let b0 = k * per_img + (ty - ty0) * tw;
                    for dy in 0..2 {
                        let oy = 2 * ty + dy;
                        if oy >= ho {
                            break;
                        }
                        // SAFETY: row oy of plane (img, oo) belongs to this task's band only
                        let dst = unsafe { outp.slice(pbase + oy * wo, wo) };
                        let (ya, yb) = (
                            &yv[2 * dy * nb + b0..][..tw],
                            &yv[(2 * dy + 1) * nb + b0..][..tw],
                        );
                        let rrow = rp.map(|r| &r[oy * wo..(oy + 1) * wo]);
                        interleave(ya, yb, dst);
                        if wo % 2 == 1 {
                            dst[wo - 1] = ya[tw - 1];
                        }
                        epi.apply_in_place(oo, rrow, dst);
                    }
                }
            }
        }
    }
}

/// Floats of transformed inputs and gradients per chunk of images in [`weight_grad`]
/// (`16 (c + o)` per tile): 4 M, 16 MB.
const WG_FLOATS: usize = 4 << 20;

/// The weight gradient `[o, c, 3, 3]` of the convolution of `x` in geometry `g` (which
/// [`supports_weights`]) from the output gradient `gr` (`[n, o, ho, wo]`, channel `o` times
/// `scale[o]` when given), by Winograd's F(3x3, 2x2), the forward F(2x2, 3x3) transposed:
/// `dW[o][c] = Gᵀ [Σ_tiles (A dY Aᵀ) ⊙ (Bᵀ d B)] G`, 16 multiplications per 2x2 tile of
/// outputs and channel pair instead of 36.
///
/// Per chunk of images: the inputs' tiles transformed into `V[c][ξ][t]` (as the forward
/// does), the output gradient's 2x2 tiles into `M[o][ξ][t]` (additions only), then for each
/// of the 16 positions `ξ` one matrix product `P[ξ] += M[ξ] V[ξ]ᵀ` summing over the tiles
/// (the crate's products, sums in fixed slices: the same bits whatever the number of threads),
/// and at the end `Gᵀ P G` per channel pair (halvings and additions).
pub(super) fn weight_grad(x: &[f32], gr: &[f32], g: &Geometry, scale: Option<&[f32]>) -> Vec<f32> {
    assert!(
        supports_weights(g),
        "winograd weight gradient: unsupported geometry {g:?}"
    );
    let (n, c, o, h, w) = (g.n, g.c, g.o, g.h, g.w);
    let (ho, wo) = (g.ho, g.wo);
    let (th, tw) = (ho.div_ceil(2), wo.div_ceil(2));
    let per_img = th * tw;
    let chunk = (WG_FLOATS / (16 * (c + o) * per_img)).clamp(1, n.max(1));
    let mut p = vec![0f32; 16 * o * c];
    let wide = use_avx512();
    let tmax = padded_stride(chunk * per_img);
    with_scratch(16 * c * tmax, 16 * o * tmax, |vbuf, mbuf| {
        let mut i0 = 0;
        while i0 < n {
            let k = chunk.min(n - i0);
            let t = k * per_img;
            let ts = padded_stride(t);
            let (v, m) = (&mut vbuf[..16 * c * ts], &mut mbuf[..16 * o * ts]);
            v.par_chunks_mut(16 * ts).enumerate().for_each(|(ci, vc)| {
                // scratch of the portable transform (none with AVX-512)
                let (ne, nr) = if wide {
                    (0, 0)
                } else {
                    (2 * (tw + 1), (2 * th + 2) * 4 * tw)
                };
                let (mut eo, mut rr) = (vec![0f32; ne], vec![0f32; nr]);
                for j in 0..k {
                    let plane = &x[((i0 + j) * c + ci) * h * w..][..h * w];
                    if wide {
                        // SAFETY: AVX-512F checked by `use_avx512`; vc holds the chunk's tiles
                        unsafe {
                            transform_plane_avx512(plane, (h, w), (0, th), vc, (ts, j * per_img))
                        }
                    } else {
                        // SAFETY: AVX2 and FMA checked by `supports_weights`
                        unsafe {
                            input_tiles(plane, (h, w), th, (&mut eo, &mut rr), vc, ts, j * per_img)
                        };
                    }
                }
            });
            m.par_chunks_mut(16 * ts).enumerate().for_each(|(oi, mo)| {
                let a = scale.map_or(1.0, |s| s[oi]);
                let mut rows = vec![0f32; if wide { 0 } else { 4 * tw }];
                for j in 0..k {
                    let plane = &gr[((i0 + j) * o + oi) * ho * wo..][..ho * wo];
                    if wide {
                        // SAFETY: AVX-512F checked by `use_avx512`; mo holds the chunk's tiles
                        unsafe { grad_tiles_avx512(plane, (ho, wo), a, mo, ts, j * per_img) }
                    } else {
                        // SAFETY: AVX2 and FMA checked by `supports_weights`
                        unsafe { grad_tiles(plane, (ho, wo), a, &mut rows, mo, ts, j * per_img) };
                    }
                }
            });
            let (v, m) = (&*v, &*m);
            // P[ξ] (o x c) += M[ξ] (o x t) V[ξ]ᵀ (t x c): 16 products side by side, each in
            // one block (the bits of any blocking)
            p.par_chunks_mut(o * c).enumerate().for_each(|(xi, pd)| {
                matmul_blocks(
                    o,
                    c,
                    t,
                    pd,
                    i0 > 0,
                    (&m[xi * ts..], (16 * ts) as isize, 1),
                    (&v[xi * ts..], 1, (16 * ts) as isize),
                    1,
                )
            });
            i0 += k;
        }
    });
    let mut dw = vec![0f32; o * c * 9];
    dw.par_chunks_mut(c * 9).enumerate().for_each(|(oi, d)| {
        for (ci, d) in d.chunks_exact_mut(9).enumerate() {
            let q: [f32; 16] = std::array::from_fn(|xi| p[(xi * o + oi) * c + ci]);
            // Gᵀ P (3x4), then (Gᵀ P) G (3x3); G's rows (1 0 0), ½(1 1 1), ½(1 -1 1), (0 0 1)
            let gt = |r: usize| -> [f32; 3] {
                let (a, b, cc, e) = (q[r], q[4 + r], q[8 + r], q[12 + r]);
                [a + 0.5 * (b + cc), 0.5 * (b - cc), 0.5 * (b + cc) + e]
            };
            let cols = [gt(0), gt(1), gt(2), gt(3)];
            for ky in 0..3 {
                let (a, b, cc, e) = (cols[0][ky], cols[1][ky], cols[2][ky], cols[3][ky]);
                d[ky * 3] = a + 0.5 * (b + cc);
                d[ky * 3 + 1] = 0.5 * (b - cc);
                d[ky * 3 + 2] = 0.5 * (b + cc) + e;
            }
        }
    });
    dw
}

/// [`transform_plane`] of a whole plane (tile rows `0..th`), compiled for AVX2.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn input_tiles(
    plane: &[f32],
    hw: (usize, usize),
    th: usize,
    scratch: (&mut [f32], &mut [f32]),
    v: &mut [f32],
    vs: usize,
    base: usize,
) {
    transform_plane(plane, hw, (0, th), scratch, v, (vs, base));
}

/// The 2x2 tiles of one output-gradient plane (`ho x wo`, times `a`) transformed, `A dY Aᵀ`:
/// `m[ξ * vs + base + ty * tw + tx]`, zeros standing in for the positions past the plane.
/// `rows`: `4 tw` floats of scratch. Compiled for AVX2, where its element loops vectorise.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn grad_tiles(
    plane: &[f32],
    (ho, wo): (usize, usize),
    a: f32,
    rows: &mut [f32],
    m: &mut [f32],
    vs: usize,
    base: usize,
) {
    let tw = wo.div_ceil(2);
    for ty in 0..ho.div_ceil(2) {
        // even and odd columns of rows 2ty and 2ty + 1: (a, b) and (c, d) of every tile
        let (e0, rest) = rows.split_at_mut(tw);
        let (o0, rest) = rest.split_at_mut(tw);
        let (e1, o1) = rest.split_at_mut(tw);
        let o1 = &mut o1[..tw];
        for (dy, (e, od)) in [(0, (&mut *e0, &mut *o0)), (1, (&mut *e1, &mut *o1))] {
            let y = 2 * ty + dy;
            e.fill(0.0);
            od.fill(0.0);
            if y < ho {
                let line = &plane[y * wo..(y + 1) * wo];
                for ((pair, e), od) in line.chunks(2).zip(e.iter_mut()).zip(od.iter_mut()) {
                    *e = pair[0] * a;
                    if let Some(v) = pair.get(1) {
                        *od = v * a;
                    }
                }
            }
        }
        let b0 = base + ty * tw;
        let (e0, o0, e1, o1) = (&*e0, &*o0, &*e1, &*o1);
        // rows of A dY: (a, b), (a + c, b + d), (a - c, b - d), (-c, -d); each row (p, q)
        // times Aᵀ: (p, p + q, p - q, -q)
        for i in 0..4 {
            let row = |j: usize| (i * 4 + j) * vs + b0;
            let (d0, rest) = m[row(0)..].split_at_mut(row(1) - row(0));
            let (d1, rest) = rest.split_at_mut(row(2) - row(1));
            let (d2, d3) = rest.split_at_mut(row(3) - row(2));
            let (d0, d1, d2, d3) = (&mut d0[..tw], &mut d1[..tw], &mut d2[..tw], &mut d3[..tw]);
            for t in 0..tw {
                let (p, q) = match i {
                    0 => (e0[t], o0[t]),
                    1 => (e0[t] + e1[t], o0[t] + o1[t]),
                    2 => (e0[t] - e1[t], o0[t] - o1[t]),
                    _ => (-e1[t], -o1[t]),
                };
                d0[t] = p;
                d1[t] = p + q;
                d2[t] = p - q;
                d3[t] = -q;
            }
        }
    }
}

/// The input transform of tile rows `ty0..ty1` of one `h x w` plane (tiles `tw = w / 2`
/// rounded up wide): `v[ξ * vs + base + (ty - ty0) * tw + tx] = (Bᵀ d B)[ξ]` of tile
/// `(ty, tx)`, `d` its 4x4 inputs (padding 1). Padded rows `2ty0 .. 2ty1 + 2` are
/// row-transformed once each into `rr` (neighbouring tile rows share two), then the columns;
/// `eo` (`2 (tw + 1)` floats) and `rr` (`(2 (ty1 - ty0) + 2) * 4 * tw`) are scratch. Inlined
/// into callers compiled for AVX2, where its element loops vectorise.
#[inline(always)]
fn transform_plane(
    plane: &[f32],
    (h, w): (usize, usize),
    (ty0, ty1): (usize, usize),
    (eo, rr): (&mut [f32], &mut [f32]),
    v: &mut [f32],
    (vs, base): (usize, usize),
) {
    let tw = w.div_ceil(2);
    let rows = 2 * (ty1 - ty0) + 2;
    let (e, od) = eo.split_at_mut(tw + 1);
    let od = &mut od[..tw + 1];
    for r in 0..rows {
        let rrow = &mut rr[r * 4 * tw..(r + 1) * 4 * tw];
        let y = (2 * ty0 + r) as isize - 1;
        if y < 0 || y >= h as isize {
            rrow.fill(0.0);
            continue;
        }
        deinterleave(&plane[y as usize * w..(y as usize + 1) * w], e, od);
        // row transform: R[r][j][tx] from d = (E[tx], O[tx], E[tx+1], O[tx+1])
        let (r0, rest) = rrow.split_at_mut(tw);
        let (r1, rest) = rest.split_at_mut(tw);
        let (r2, r3) = rest.split_at_mut(tw);
        row_transform(
            (&e[..tw], &e[1..tw + 1], &od[..tw], &od[1..tw + 1]),
            r0,
            r1,
            r2,
            r3,
        );
    }
    for ty in ty0..ty1 {
        let b0 = base + (ty - ty0) * tw;
        let r0 = 2 * (ty - ty0);
        // column transform: V[(i, j)] from R[r0 .. r0 + 4][j]
        for j in 0..4 {
            let row = |r: usize| &rr[((r0 + r) * 4 + j) * tw..((r0 + r) * 4 + j + 1) * tw];
            let (a0, a1, a2, a3) = (row(0), row(1), row(2), row(3));
            let at = |i: usize| (i * 4 + j) * vs + b0;
            // the four destinations are vs >= tw floats apart: split them off
            let (d0, rest) = v[at(0)..].split_at_mut(at(1) - at(0));
            let (d1, rest) = rest.split_at_mut(at(2) - at(1));
            let (d2, d3) = rest.split_at_mut(at(3) - at(2));
            let (d0, d1, d2, d3) = (&mut d0[..tw], &mut d1[..tw], &mut d2[..tw], &mut d3[..tw]);
            row_transform((a0, a2, a1, a3), d0, d1, d2, d3);
        }
    }
}

/// [`transform_plane`] with AVX-512: strips of 16 tiles, a row of a strip in one register.
/// Each padded row of a strip is loaded once (masked: zeros past the plane), its four
/// columns per tile gathered by permutations (the strip's neighbour columns set into the
/// first and last lane) and row-transformed in registers, then the column transform from
/// the four rows of a tile row. The same additions in the same order as
/// [`transform_plane`], hence the same bits, where that one's short loops pay for slices
/// and bounds on every row.
///
/// # Safety
/// The CPU has AVX-512F; `v` holds `v[ξ * vs + base + (ty - ty0) * tw + tx]` for every
/// tile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_plane_avx512(
    plane: &[f32],
    (h, w): (usize, usize),
    (ty0, ty1): (usize, usize),
    v: &mut [f32],
    (vs, base): (usize, usize),
) {
    use std::arch::x86_64::*;
    assert!(plane.len() >= h * w);
    let tw = w.div_ceil(2);
    assert!(ty1 == ty0 || v.len() >= 15 * vs + base + (ty1 - ty0) * tw);
    // tile tx of a strip from tile s reads line[2 (s + tx) - 1 .. 2 (s + tx) + 2]; the
    // first tile's left and the 16th tile's right column come from outside the 32 floats
    // (set apart below: their lanes' indices are clamped into the register pair)
    let index = |k: i32| lane_indices(|t| (2 * t + k).clamp(0, 31));
    let (i0, i1, i2, i3) = (index(-1), index(0), index(1), index(2));
    let z = _mm512_setzero_ps();
    let vp = v.as_mut_ptr();
    for s in (0..tw).step_by(16) {
        let keep = first_lanes((tw - s) as isize);
        let rest = (w - 2 * s) as isize;
        let (lo_m, hi_m) = (first_lanes(rest), first_lanes(rest - 16));
        // the row transform of padded row r (plane row r - 1) in this strip
        let row = |r: usize| -> [__m512; 4] {
            let Some(y) = r.checked_sub(1).filter(|&y| y < h) else {
                return [z; 4];
            };
            let line = &plane[y * w..(y + 1) * w];
            let p = line.as_ptr().add(2 * s);
            let lo = _mm512_maskz_loadu_ps(lo_m, p);
            let hi = _mm512_maskz_loadu_ps(hi_m, p.wrapping_add(16));
            let left = if s > 0 { line[2 * s - 1] } else { 0.0 };
            let right = line.get(2 * s + 32).copied().unwrap_or(0.0);
            let d0 = _mm512_mask_mov_ps(
                _mm512_permutex2var_ps(lo, i0, hi),
                0x0001,
                _mm512_set1_ps(left),
            );
            let d1 = _mm512_permutex2var_ps(lo, i1, hi);
            let d2 = _mm512_permutex2var_ps(lo, i2, hi);
            let d3 = _mm512_mask_mov_ps(
                _mm512_permutex2var_ps(lo, i3, hi),
                0x8000,
                _mm512_set1_ps(right),
            );
            [
                _mm512_sub_ps(d0, d2),
                _mm512_add_ps(d1, d2),
                _mm512_sub_ps(d2, d1),
                _mm512_sub_ps(d1, d3),
            ]
        };
        let (mut a0, mut a1) = (row(2 * ty0), row(2 * ty0 + 1));
        for ty in ty0..ty1 {
            let (a2, a3) = (row(2 * ty + 2), row(2 * ty + 3));
            let b0 = base + (ty - ty0) * tw + s;
            for j in 0..4 {
                let at = |i: usize| vp.add((i * 4 + j) * vs + b0);
                _mm512_mask_storeu_ps(at(0), keep, _mm512_sub_ps(a0[j], a2[j]));
                _mm512_mask_storeu_ps(at(1), keep, _mm512_add_ps(a1[j], a2[j]));
                _mm512_mask_storeu_ps(at(2), keep, _mm512_sub_ps(a2[j], a1[j]));
                _mm512_mask_storeu_ps(at(3), keep, _mm512_sub_ps(a1[j], a3[j]));
            }
            (a0, a1) = (a2, a3);
        }
    }
}

/// [`grad_tiles`] with AVX-512, in strips of 16 tiles (a row of a strip in one register, as
/// [`transform_plane_avx512`]): the same operations, the same bits.
///
/// # Safety
/// The CPU has AVX-512F; `m` holds `m[ξ * vs + base + ty * tw + tx]` for every tile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn grad_tiles_avx512(
    plane: &[f32],
    (ho, wo): (usize, usize),
    a: f32,
    m: &mut [f32],
    vs: usize,
    base: usize,
) {
    use std::arch::x86_64::*;
    assert!(plane.len() >= ho * wo);
    let (tw, th) = (wo.div_ceil(2), ho.div_ceil(2));
    assert!(th == 0 || m.len() >= 15 * vs + base + th * tw);
    let (ie, io) = (lane_indices(|t| 2 * t), lane_indices(|t| 2 * t + 1));
    let av = _mm512_set1_ps(a);
    let z = _mm512_setzero_ps();
    let sign = _mm512_set1_epi32(i32::MIN);
    let neg = |x: __m512| _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(x), sign));
    let mp = m.as_mut_ptr();
    for s in (0..tw).step_by(16) {
        let keep = first_lanes((tw - s) as isize);
        let rest = (wo - 2 * s) as isize;
        let (lo_m, hi_m) = (first_lanes(rest), first_lanes(rest - 16));
        // even columns of every tile, odd ones where the plane has them (else zeros, as
        // `grad_tiles` leaves them: not 0 * a, whose sign follows a)
        let (even_m, odd_m) = (keep, first_lanes((wo / 2) as isize - s as isize));
        let line = |y: usize| -> (__m512, __m512) {
            if y >= ho {
                return (z, z);
            }
            let p = plane.as_ptr().add(y * wo + 2 * s);
            let lo = _mm512_maskz_loadu_ps(lo_m, p);
            let hi = _mm512_maskz_loadu_ps(hi_m, p.wrapping_add(16));
            (
                _mm512_maskz_mul_ps(even_m, _mm512_permutex2var_ps(lo, ie, hi), av),
                _mm512_maskz_mul_ps(odd_m, _mm512_permutex2var_ps(lo, io, hi), av),
            )
        };
        for ty in 0..th {
            let ((e0, o0), (e1, o1)) = (line(2 * ty), line(2 * ty + 1));
            let b0 = base + ty * tw + s;
            // rows of A dY: (a, b), (a + c, b + d), (a - c, b - d), (-c, -d); each row
            // (p, q) times Aᵀ: (p, p + q, p - q, -q)
            let rows = [
                (e0, o0),
                (_mm512_add_ps(e0, e1), _mm512_add_ps(o0, o1)),
                (_mm512_sub_ps(e0, e1), _mm512_sub_ps(o0, o1)),
                (neg(e1), neg(o1)),
            ];
            for (i, (p, q)) in rows.into_iter().enumerate() {
                let at = |j: usize| mp.add((i * 4 + j) * vs + b0);
                _mm512_mask_storeu_ps(at(0), keep, p);
                _mm512_mask_storeu_ps(at(1), keep, _mm512_add_ps(p, q));
                _mm512_mask_storeu_ps(at(2), keep, _mm512_sub_ps(p, q));
                _mm512_mask_storeu_ps(at(3), keep, neg(q));
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transform_plane_avx512(
    _: &[f32],
    _: (usize, usize),
    _: (usize, usize),
    _: &mut [f32],
    _: (usize, usize),
) {
    unreachable!("AVX-512 kernels run only on x86-64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn grad_tiles_avx512(
    _: &[f32],
    _: (usize, usize),
    _: f32,
    _: &mut [f32],
    _: usize,
    _: usize,
) {
    unreachable!("AVX-512 kernels run only on x86-64")
}

/// `Bᵀ` applied along one axis: from `(d0, d2, d1, d3)` (this order, so that the column
/// transform passes rows 0, 2, 1, 3), `r = (d0 - d2, d1 + d2, d2 - d1, d1 - d3)`.
#[inline]
fn row_transform(
    (d0, d2, d1, d3): (&[f32], &[f32], &[f32], &[f32]),
    r0: &mut [f32],
    r1: &mut [f32],
    r2: &mut [f32],
    r3: &mut [f32],
) {
    let n = r0.len();
    let (d0, d1, d2, d3) = (&d0[..n], &d1[..n], &d2[..n], &d3[..n]);
    let (r1, r2, r3) = (&mut r1[..n], &mut r2[..n], &mut r3[..n]);
    for t in 0..n {
        r0[t] = d0[t] - d2[t];
        r1[t] = d1[t] + d2[t];
        r2[t] = d2[t] - d1[t];
        r3[t] = d1[t] - d3[t];
    }
}

/// `dst[2t] = a[t]`, `dst[2t + 1] = b[t]` for the pairs inside `dst`.
#[inline]
fn interleave(a: &[f32], b: &[f32], dst: &mut [f32]) {
    for ((d, a), b) in dst.chunks_exact_mut(2).zip(a).zip(b) {
        d[0] = *a;
        d[1] = *b;
    }
}

/// `e[m] = line[2m - 1]`, `od[m] = line[2m]`, zero outside the line (`e`, `od`: `tw + 1`
/// with `2 * tw >= line.len()`).
#[inline]
fn deinterleave(line: &[f32], e: &mut [f32], od: &mut [f32]) {
    let w = line.len();
    e.fill(0.0);
    od.fill(0.0);
    for ((pair, o), e) in line
        .chunks_exact(2)
        .zip(od.iter_mut())
        .zip(e[1..].iter_mut())
    {
        *o = pair[0];
        *e = pair[1];
    }
    if w % 2 == 1 {
        od[w / 2] = line[w - 1];
    }
}

/// `Aᵀ M A` for every tile: `mj` holds `M[ξ][b]` (16 rows of `nb`), `y` gets the outputs
/// `[y00, y01, y10, y11][b]` (4 rows of `nb`) for the first `tiles` tiles.
#[inline]
fn output_transform(mj: &[f32], nb: usize, tiles: usize, [y0, y1, y2, y3]: [&mut [f32]; 4]) {
    let r = |xi: usize| &mj[xi * nb..xi * nb + tiles];
    let (m0, m1, m2, m3) = (r(0), r(1), r(2), r(3));
    let (m4, m5, m6, m7) = (r(4), r(5), r(6), r(7));
    let (m8, m9, m10, m11) = (r(8), r(9), r(10), r(11));
    let (m12, m13, m14, m15) = (r(12), r(13), r(14), r(15));
    let (y0, y1, y2, y3) = (
        &mut y0[..tiles],
        &mut y1[..tiles],
        &mut y2[..tiles],
        &mut y3[..tiles],
    );
    for b in 0..tiles {
        // rows: s0 = m_row0 + m_row1 + m_row2, s1 = m_row1 - m_row2 - m_row3 (per column)
        let s00 = m0[b] + m4[b] + m8[b];
        let s01 = m1[b] + m5[b] + m9[b];
        let s02 = m2[b] + m6[b] + m10[b];
        let s03 = m3[b] + m7[b] + m11[b];
        let s10 = m4[b] - m8[b] - m12[b];
        let s11 = m5[b] - m9[b] - m13[b];
        let s12 = m6[b] - m10[b] - m14[b];
        let s13 = m7[b] - m11[b] - m15[b];
        y0[b] = s00 + s01 + s02;
        y1[b] = s01 - s02 - s03;
        y2[b] = s10 + s11 + s12;
        y3[b] = s11 - s12 - s13;
    }
}

/// `m[j * ms + 0..16] = Σ_ci v[ci * vs + 0..16] * u[ci * 6 + j]` for `j` in `0..6`.
///
/// # Safety
/// The CPU has AVX2 and FMA; `v` is readable for `(c - 1) * vs + 16` floats, `u` for
/// `6 * c`, `m` writable for `5 * ms + 16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_tile(v: *const f32, vs: usize, u: *const f32, c: usize, m: *mut f32, ms: usize) {
    use std::arch::x86_64::*;
    let z = _mm256_setzero_ps();
    let mut a = [[z; 2]; OC];
    for ci in 0..c {
        let pv = v.add(ci * vs);
        let x0 = _mm256_loadu_ps(pv);
        let x1 = _mm256_loadu_ps(pv.add(8));
        let pu = u.add(ci * OC);
        for (j, aj) in a.iter_mut().enumerate() {
            let b = _mm256_broadcast_ss(&*pu.add(j));
            aj[0] = _mm256_fmadd_ps(x0, b, aj[0]);
            aj[1] = _mm256_fmadd_ps(x1, b, aj[1]);
        }
    }
    for (j, [r0, r1]) in a.into_iter().enumerate() {
        _mm256_storeu_ps(m.add(j * ms), r0);
        _mm256_storeu_ps(m.add(j * ms + 8), r1);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn gemm_tile(_: *const f32, _: usize, _: *const f32, _: usize, _: *mut f32, _: usize) {
    unreachable!("the Winograd convolution runs only on x86-64 with AVX2 and FMA")
}

/// [`gemm_tile`] for 32 tiles (`m[j * ms + 0..32]`), in two AVX-512 registers per output
/// channel: the same sums in the same order per lane.
///
/// # Safety
/// The CPU has AVX-512F; `v` is readable for `(c - 1) * vs + 32` floats, `u` for `6 * c`,
/// `m` writable for `5 * ms + 32`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gemm_tile_avx512(
    v: *const f32,
    vs: usize,
    u: *const f32,
    c: usize,
    m: *mut f32,
    ms: usize,
) {
    use std::arch::x86_64::*;
    let z = _mm512_setzero_ps();
    let mut a = [[z; 2]; OC];
    for ci in 0..c {
        let pv = v.add(ci * vs);
        let x0 = _mm512_loadu_ps(pv);
        let x1 = _mm512_loadu_ps(pv.add(16));
        let pu = u.add(ci * OC);
        for (j, aj) in a.iter_mut().enumerate() {
            let b = _mm512_set1_ps(*pu.add(j));
            aj[0] = _mm512_fmadd_ps(x0, b, aj[0]);
            aj[1] = _mm512_fmadd_ps(x1, b, aj[1]);
        }
    }
    for (j, [r0, r1]) in a.into_iter().enumerate() {
        _mm512_storeu_ps(m.add(j * ms), r0);
        _mm512_storeu_ps(m.add(j * ms + 16), r1);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn gemm_tile_avx512(
    _: *const f32,
    _: usize,
    _: *const f32,
    _: usize,
    _: *mut f32,
    _: usize,
) {
    unreachable!("the Winograd convolution runs only on x86-64 with AVX2 and FMA")
}

#[cfg(test)]
mod tests {
    use super::super::conv::{conv_forward_im2col, geometry, Epilogue};
    use super::super::layout::tests_isa::each_isa;
    use super::super::testing::{on_threads, values};
    use super::*;
    use candle_core::Shape;
    use std::sync::Arc;

    #[test]
    fn matches_the_im2col_path() {
        if !super::has_fma() {
            eprintln!("skipped: this CPU has no AVX2/FMA, the Winograd kernel never runs");
            return;
        }
        // (n, c, o, h, w): odd and even sizes, bands of one and several tile rows, output
        // channels not a multiple of 6, channel counts past one band's budget
        let shapes = [
            (1, 16, 1, 8, 8),
            (2, 16, 7, 9, 13),
            (3, 24, 13, 17, 8),
            (2, 64, 64, 56, 56),
            (1, 300, 11, 14, 15),
            (2, 32, 6, 2, 40),
            (2, 40, 9, 7, 7),
        ];
        for (si, &(n, c, o, h, w)) in shapes.iter().enumerate() {
            let g = geometry(&Shape::from((n, c, h, w)), &Shape::from((o, c, 3, 3)), 1, 1).unwrap();
            assert!(supports(&g), "{g:?}");
            let x = values(n * c * h * w, si as u64);
            let wt = values(o * c * 9, 100 + si as u64);
            let res = values(n * o * h * w, 200 + si as u64);
            let scale = Arc::new(values(o, 300 + si as u64));
            let shift = Arc::new(values(o, 400 + si as u64));
            for (epi, r) in [
                (Epilogue::default(), None),
                (
                    Epilogue {
                        scale: Some(scale.clone()),
                        shift: Some(shift.clone()),
                        relu: true,
                    },
                    Some(&res[..]),
                ),
            ] {
                let want = conv_forward_im2col(&x, &wt, &g, &epi, r);
                let mut runs = Vec::new();
                each_isa(|wide| {
                    let mut got = vec![f32::NAN; want.len()];
                    conv_winograd(&x, &wt, &g, &epi, r, &mut got);
                    // sums of c * 9 products of unit normals: scale sqrt(9c)
                    let tol = 2e-5 * (9.0 * c as f32).sqrt() * 4.0;
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() <= tol,
                            "{g:?} output {i} (AVX-512: {wide}): winograd {a} vs im2col {b} \
                             (tol {tol})"
                        );
                    }
                    runs.push(got);
                });
                // the two kernels add the same products in the same order per lane
                if let [a, b] = &runs[..] {
                    assert!(
                        crate::ops::testing::same_bits(a, b),
                        "{g:?}: AVX2 and AVX-512 products differ"
                    );
                }
            }
        }
    }

    #[test]
    fn weight_gradient_matches_the_im2col_path_whatever_the_threads() {
        if !super::has_fma() {
            eprintln!("skipped: this CPU has no AVX2/FMA, the Winograd kernel never runs");
            return;
        }
        // (n, c, o, h, w): odd and even sizes, maps of 1 to 3 tiles, several chunks of
        // images (56 px, 64 + 64 channels: two images per chunk)
        let shapes = [
            (2, 16, 6, 8, 8),
            (3, 24, 13, 9, 7),
            (2, 32, 20, 2, 2),
            (4, 16, 16, 3, 5),
            (1, 17, 5, 1, 1),
            (3, 64, 64, 56, 56),
        ];
        for (si, &(n, c, o, h, w)) in shapes.iter().enumerate() {
            let g = geometry(&Shape::from((n, c, h, w)), &Shape::from((o, c, 3, 3)), 1, 1).unwrap();
            let x = values(n * c * h * w, 500 + si as u64);
            let gr = values(n * o * h * w, 600 + si as u64);
            let scale = values(o, 700 + si as u64);
            for s in [None, Some(&scale[..])] {
                let want = super::super::conv::weight_grad_im2col(&x, &gr, &g, s);
                let mut runs = Vec::new();
                for threads in [1, 3] {
                    runs.push(on_threads(threads, || weight_grad(&x, &gr, &g, s)));
                }
                let got = &runs[0];
                let top = want.iter().fold(1f32, |m, v| m.max(v.abs()));
                let worst = got
                    .iter()
                    .zip(&want)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(worst <= 2e-5 * top, "{g:?}: off by {worst} (largest {top})");
                assert!(
                    crate::ops::testing::same_bits(&runs[1], got),
                    "{g:?}: 1 and 3 threads differ"
                );
            }
        }
    }

    #[test]
    fn avx512_transforms_give_the_bits_of_the_general_ones() {
        if !crate::ops::layout::has_avx512() {
            eprintln!("skipped: this CPU has no AVX-512F, the AVX-512 transforms never run");
            return;
        }
        // (h, w): odd and even, one tile, strips of 16 tiles (32 wide) whole, and cut after
        // one column, one tile and 15 and a half
        for (si, (h, w)) in [
            (16, 16),
            (8, 8),
            (7, 7),
            (2, 2),
            (1, 1),
            (5, 32),
            (32, 31),
            (3, 9),
            (6, 33),
            (9, 34),
            (4, 63),
            (56, 56),
            (3, 96),
        ]
        .into_iter()
        .enumerate()
        {
            let plane = values(h * w, 900 + si as u64);
            let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
            let (vs, base) = (th * tw + 37, 5);
            let len = 16 * vs + base;
            let mut eo = vec![0f32; 2 * (tw + 1)];
            let mut rr = vec![0f32; (2 * th + 2) * 4 * tw];
            // whole planes and bands of tile rows (the forward's)
            for (ty0, ty1) in [(0, th), (th / 2, th), (0, th.div_ceil(2)), (th - 1, th)] {
                let (mut want, mut got) = (vec![f32::NAN; len], vec![f32::NAN; len]);
                let band = (ty0, ty1);
                // SAFETY: AVX2, FMA and AVX-512F checked above; the buffers hold
                // 16 rows of vs floats from base
                unsafe {
                    transform_plane(
                        &plane,
                        (h, w),
                        band,
                        (&mut eo, &mut rr),
                        &mut want,
                        (vs, base),
                    );
                    transform_plane_avx512(&plane, (h, w), band, &mut got, (vs, base));
                }
                let what = format!("{h}x{w} tile rows {ty0}..{ty1}");
                assert!(crate::ops::testing::same_bits(&got, &want), "inputs {what}");
            }
            // output gradients, times a negative, a positive and no scale
            for a in [-0.75, 1.5, 1.0] {
                let (mut want, mut got) = (vec![f32::NAN; len], vec![f32::NAN; len]);
                let mut rows = vec![0f32; 4 * tw];
                // SAFETY: as above
                unsafe {
                    grad_tiles(&plane, (h, w), a, &mut rows, &mut want, vs, base);
                    grad_tiles_avx512(&plane, (h, w), a, &mut got, vs, base);
                }
                assert!(
                    crate::ops::testing::same_bits(&got, &want),
                    "output gradient {h}x{w} times {a}"
                );
            }
        }
    }

    #[test]
    fn images_side_by_side_change_no_bit() {
        if !super::has_fma() {
            eprintln!("skipped: this CPU has no AVX2/FMA, the Winograd kernel never runs");
            return;
        }
        // (n, c, o, h): small maps, one band per image; a last task with fewer images
        for (n, c, o, h) in [(7, 16, 13, 8), (5, 40, 6, 7), (3, 128, 7, 8)] {
            let g = geometry(&Shape::from((n, c, h, h)), &Shape::from((o, c, 3, 3)), 1, 1).unwrap();
            let x = values(n * c * h * h, n as u64);
            let wt = values(o * c * 9, 10 + n as u64);
            let res = values(n * o * h * h, 20 + n as u64);
            let epi = Epilogue {
                scale: Some(Arc::new(values(o, 30))),
                shift: Some(Arc::new(values(o, 40))),
                relu: true,
            };
            let plane = o * h * h;
            let g1 = Geometry { n: 1, ..g };
            each_isa(|wide| {
                // one thread: as many images per task as fit
                let together = on_threads(1, || {
                    let t = h.div_ceil(2);
                    assert!(images_per_task(n, c, t * t, 1) > 1, "{g:?}");
                    let mut out = vec![f32::NAN; n * plane];
                    conv_winograd(&x, &wt, &g, &epi, Some(&res), &mut out);
                    out
                });
                for i in 0..n {
                    let mut alone = vec![f32::NAN; plane];
                    let xi = &x[i * c * h * h..(i + 1) * c * h * h];
                    let ri = &res[i * plane..(i + 1) * plane];
                    conv_winograd(xi, &wt, &g1, &epi, Some(ri), &mut alone);
                    let got = &together[i * plane..(i + 1) * plane];
                    assert!(
                        crate::ops::testing::same_bits(got, &alone),
                        "{g:?} image {i} (AVX-512: {wide}): grouped and alone differ"
                    );
                }
            });
        }
    }
}
