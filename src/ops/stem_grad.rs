//! The input gradient of ResNet's stem (a 7x7 stride-2 convolution, padding 3, from 3
//! channels) by stride phases, on x86-64 CPUs with AVX-512F: what PGD and every saliency
//! method need from the first layer.
//!
//! Input pixel `(2u + a, 2v + b)` (phase `(a, b)`) is reached only by the taps `ky ≡ a + 1`
//! and `kx ≡ b + 1` (mod 2): 3 or 4 of them each way, from output pixel `(u + (a + 3 - ky) / 2,
//! v + (b + 3 - kx) / 2)`. So each phase is a small stride-1 correlation of the output
//! gradient (64 channels) into 3 channels. A register tile holds both column phases of 3
//! channels for 32 columns `v` of a phase row (12 AVX-512 registers). It runs over the
//! output channels and the row taps; for each column tap it loads the output gradient's
//! row segments (masked past the map's edges, so no padded copy) and multiplies them by the 3
//! channels' weights, broadcast. The two column phases are then interleaved into 32
//! consecutive pixels of an input row. Before, the gradient ran as one matrix product
//! `Wᵀ G` (147 x 64 by 64 x n·ho·wo) into a column matrix, added back by phases (col2im).
//!
//! Each input pixel is one chain of fused multiply-adds in a fixed order (output channel,
//! row tap, column tap), whatever the number of threads.

use super::layout::{first_lanes, lane_indices, use_avx512, Geometry};
use super::SendPtr;
use rayon::prelude::*;

/// Columns `v` per register tile (two AVX-512 registers).
const COLS: usize = 32;

/// Whether the input gradient of `g` runs here: the stem's geometry (3 input channels, 7x7,
/// stride 2, padding 3), an even input twice the output's size both ways, on a CPU with
/// AVX-512F (unless [`super::set_avx512`] turned it off), with the direct kernels on
/// ([`super::set_direct_conv`], which also switches the stem's forward).
pub(super) fn usable(g: &Geometry) -> bool {
    (g.c, g.k, g.stride, g.pad) == (3, 7, 2, 3)
        && (g.h, g.w) == (2 * g.ho, 2 * g.wo)
        && g.n > 0
        && use_avx512()
        && super::direct::enabled()
}

/// The input gradient `[n, 3, h, w]` of the convolution `g` ([`usable`]) with weight `w`
/// (`[o, 3, 7, 7]`) from the output gradient `gr` (`[n, o, ho, wo]`), each output channel
/// scaled by `scale[o]` when given (a folded BatchNorm: the weights are scaled instead).
pub(super) fn input_grad(gr: &[f32], w: &[f32], g: &Geometry, scale: Option<&[f32]>) -> Vec<f32> {
    assert!(usable(g), "stem input gradient: unsupported geometry {g:?}");
    let (n, o, ho, wo) = (g.n, g.o, g.ho, g.wo);
    assert!(gr.len() >= n * o * ho * wo && w.len() >= o * 3 * 49);
    let ws: Vec<f32> = match scale {
        Some(s) => w[..o * 147]
            .chunks_exact(147)
            .zip(s)
            .flat_map(|(wk, s)| wk.iter().map(move |v| v * s))
            .collect(),
        None => w[..o * 147].to_vec(),
    };
    let (h, wd) = (g.h, g.w);
    let mut dx = vec![0f32; n * 3 * h * wd];
    let dst = SendPtr(dx.as_mut_ptr());
    // a task: one image, one row phase
    (0..n * 2).into_par_iter().for_each(|task| {
        let (i, a) = (task / 2, task % 2);
        let gi = &gr[i * o * ho * wo..(i + 1) * o * ho * wo];
        for u in 0..ho {
            for v0 in (0..wo).step_by(COLS) {
                // SAFETY: AVX-512F (`usable`); the task writes rows 2u + a of image i only;
                // the reads stay inside gi (masked past the map) and ws
                unsafe {
                    tile(
                        gi,
                        &ws,
                        (o, ho, wo),
                        (a, u, v0),
                        dst.get().add(i * 3 * h * wd),
                        wd,
                    )
                };
            }
        }
    });
    dx
}

/// One register tile: row `2u + a`, columns `2v + b` for `v` in `v0..v0 + 32` (those inside
/// the map) and both `b`, of the 3 channels of `dx` (the image's `[3, 2 ho, 2 wo]`, rows `wd`
/// wide): 3 x 2 x 2 registers of sums.
///
/// # Safety
/// The CPU has AVX-512F; `gr` holds `o` planes of `ho x wo`, `ws` `o * 147` weights; `dx` is
/// writable for the image's 3 planes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile(
    gr: &[f32],
    ws: &[f32],
    (o, ho, wo): (usize, usize, usize),
    (a, u, v0): (usize, usize, usize),
    dx: *mut f32,
    wd: usize,
) {
    use std::arch::x86_64::*;
    let z = _mm512_setzero_ps();
    // acc[c][b][half]
    let mut acc = [[[z; 2]; 2]; 3];
    // the lanes whose column v0 + l + d lies inside the map, for d = -1..=2 and each half
    let lanes = |d: isize, half: usize| -> u16 {
        let lo = -(v0 as isize + 16 * half as isize + d);
        let hi = wo as isize - (v0 as isize + 16 * half as isize + d);
        first_lanes(hi) & !first_lanes(lo)
    };
    let masks: [[u16; 2]; 4] =
        std::array::from_fn(|d| std::array::from_fn(|h| lanes(d as isize - 1, h)));
    // row taps of phase a: ky = (a + 1) % 2 + 2 j, from output row u + (a + 3 - ky) / 2
    let ky0 = (a + 1) % 2;
    // the first tile of a row fetches the output gradient's row that the next phase row
    // reads first (its rows advance one by one; on maps larger than the L2 cache, 3.2 MB
    // an image at 224 px, each new row was a wait on memory in every channel's plane)
    let next = (a + 3 - ky0) / 2 + u + 1;
    let fetch = v0 == 0 && next < ho;
    for oc in 0..o {
        let plane = gr.as_ptr().add(oc * ho * wo);
        let wo_c = ws.as_ptr().add(oc * 147);
        if fetch {
            for x in (0..wo).step_by(16) {
                _mm_prefetch::<_MM_HINT_T0>(plane.add(next * wo + x).cast());
            }
        }
        for ky in (ky0..7).step_by(2) {
            let dy = (a as isize + 3 - ky as isize) / 2;
            // the output row this row tap reads, if inside the map
            let oy = u as isize + dy;
            if !(0..ho as isize).contains(&oy) {
                continue;
            }
            let row = plane.add(oy as usize * wo);
            // column taps of phase b: kx = (b + 1) % 2 + 2 j, reading column v + d, d = (b + 3 -
            // kx) / 2 (written out: loops here kept the sums in memory)
            macro_rules! column_tap {
                ($b:literal, $kx:literal, $d:literal) => {
                    let m = masks[($d as isize + 1) as usize];
                    let wk: [__m512; 3] =
                        std::array::from_fn(|c| _mm512_set1_ps(*wo_c.add(c * 49 + ky * 7 + $kx)));
                    // masked: the lanes past the map's edges read nothing
                    let at = row.wrapping_offset(v0 as isize + $d as isize);
                    let g0 = _mm512_maskz_loadu_ps(m[0], at);
                    let g1 = _mm512_maskz_loadu_ps(m[1], at.wrapping_add(16));
                    for (c, wc) in wk.iter().enumerate() {
                        let acc = &mut acc[c][$b];
                        acc[0] = _mm512_fmadd_ps(*wc, g0, acc[0]);
                        acc[1] = _mm512_fmadd_ps(*wc, g1, acc[1]);
                    }
                };
            }
            column_tap!(0, 1, 1);
            column_tap!(0, 3, 0);
            column_tap!(0, 5, -1);
            column_tap!(1, 0, 2);
            column_tap!(1, 2, 1);
            column_tap!(1, 4, 0);
            column_tap!(1, 6, -1);
        }
    }
    // interleave the column phases: pixel 2v + b; 16 v of b = 0 and of b = 1 give 32 pixels
    let lo = lane_indices(|t| t / 2 + 16 * (t % 2));
    let hi = lane_indices(|t| 8 + t / 2 + 16 * (t % 2));
    let h = 2 * ho;
    for (c, acc) in acc.iter().enumerate() {
        let line = dx.add((c * h + 2 * u + a) * wd);
        for (half, (&e, &od)) in acc[0].iter().zip(&acc[1]).enumerate() {
            let v = v0 + 16 * half;
            if v >= wo {
                break;
            }
            let px = 2 * v;
            let keep = |from: usize| first_lanes(wd as isize - from as isize);
            _mm512_mask_storeu_ps(line.add(px), keep(px), _mm512_permutex2var_ps(e, lo, od));
            _mm512_mask_storeu_ps(
                line.add(px + 16),
                keep(px + 16),
                _mm512_permutex2var_ps(e, hi, od),
            );
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile(
    _: &[f32],
    _: &[f32],
    _: (usize, usize, usize),
    _: (usize, usize, usize),
    _: *mut f32,
    _: usize,
) {
    unreachable!("the stem's input gradient by phases runs only on x86-64 with AVX-512F")
}

#[cfg(test)]
mod tests {
    use super::super::conv::{geometry, input_grad_col2im_for_tests};
    use super::super::layout::tests_isa::each_isa;
    use super::super::testing::{assert_near, on_threads, same_bits, values};
    use super::*;
    use candle_core::Shape;

    #[test]
    fn matches_col2im_with_the_bits_of_any_thread_count() {
        if !super::super::layout::has_avx512() {
            return;
        }
        // (n, o, h): the stem at 64 px (batch 16) and at 224 px (one image), maps whose
        // phase rows are not a multiple of the 32-column tile (36, 20, 34 px: 17 odd), few
        // output channels
        for (n, o, h) in [
            (16, 64, 64),
            (1, 64, 224),
            (3, 5, 36),
            (2, 7, 20),
            (1, 6, 34),
        ] {
            let g = geometry(&Shape::from((n, 3, h, h)), &Shape::from((o, 3, 7, 7)), 2, 3).unwrap();
            let v = |len: usize, i: u64| values(len, (n * 1000 + o + h) as u64 * 8 + i);
            let (w, gr, scale) = (v(o * 147, 1), v(n * o * g.hw_out(), 2), v(o, 3));
            let what = format!("{n} images, {o} channels, {h} px");
            each_isa(|wide| assert_eq!(usable(&g), wide, "{what}"));
            for sc in [None, Some(scale.as_slice())] {
                let want = input_grad_col2im_for_tests(&gr, &w, &g, sc);
                let on = |threads| on_threads(threads, || input_grad(&gr, &w, &g, sc));
                let got = on(1);
                assert_near(&got, &want, 1e-5, &what);
                assert!(same_bits(&got, &on(3)), "{what}: thread count");
                each_isa(|wide| {
                    let routed = super::super::conv::conv_input_grad(&gr, &w, &g, sc);
                    let expected = if wide { &got } else { &want };
                    assert!(
                        same_bits(&routed, expected),
                        "{what}: route, AVX-512 {wide}"
                    );
                });
            }
        }
        // not for other strides, kernels, channel counts, odd or unequal maps
        let stem = |c, h: usize, w: usize, k, s, p| {
            geometry(&Shape::from((2, c, h, w)), &Shape::from((8, c, k, k)), s, p).unwrap()
        };
        each_isa(|wide| {
            assert_eq!(usable(&stem(3, 64, 64, 7, 2, 3)), wide);
            assert_eq!(usable(&stem(3, 64, 48, 7, 2, 3)), wide);
            assert!(!usable(&stem(3, 64, 64, 7, 1, 3)));
            assert!(!usable(&stem(4, 64, 64, 7, 2, 3)));
            assert!(!usable(&stem(3, 64, 64, 5, 2, 2)));
            assert!(!usable(&stem(3, 63, 64, 7, 2, 3)));
            assert!(!usable(&stem(3, 34, 35, 7, 2, 3)));
        });
    }
}
