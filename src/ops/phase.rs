//! A stride-2 convolution as a stride-1 one over its four stride phases, so that ResNet's
//! 7x7 stride-2 stem (folded for inference and attacks, or training) runs the direct kernel (a 4x4 kernel over 12 channels) instead of a
//! column matrix of 147 rows (118 MB for 16 images at 224 px, written, packed and, for the
//! input gradient, scattered back).
//!
//! With `xp` the input zero-padded by `p`, phase `(a, b)` of channel `c` is
//! `xp[c][2i + a][2j + b]`, and `out[o][y][x] = sum over c, a, b, u, v of
//! w[o][c][2u + a][2v + b] * phase(c, a, b)[y + u][x + v]`: a stride-1 convolution without
//! padding, kernel `ceil(k / 2)`, taps past `k` zero. Its input gradient is the full
//! correlation of the output gradient with the flipped phase kernel, merged back.

use super::conv::{conv_forward, geometry, Epilogue, Geometry};
use super::direct::usable;
use candle_core::Shape;
use rayon::prelude::*;

/// The phase form of a stride-2 geometry `g`: the forward (`[n, 4c, hp2, wp2]` by a
/// `[o, 4c, kh, kh]` kernel, no padding) and the input-gradient (`[n, o, ho, wo]` by a
/// `[4c, o, kh, kh]` kernel, padding `kh - 1`) geometries, when the direct kernel runs both.
pub(super) fn plan(g: &Geometry) -> Option<(Geometry, Geometry)> {
    let kh = g.k.div_ceil(2);
    // the direct kernel has 3x3 and 4x4 tiles; only 7x7 and 8x8 kernels gain by the split
    if g.stride != 2 || kh != 4 {
        return None;
    }
    let (hp2, wp2) = ((g.h + 2 * g.pad).div_ceil(2), (g.w + 2 * g.pad).div_ceil(2));
    let fwd = geometry(
        &Shape::from((g.n, 4 * g.c, hp2, wp2)),
        &Shape::from((g.o, 4 * g.c, kh, kh)),
        1,
        0,
    )
    .ok()?;
    let bwd = geometry(
        &Shape::from((g.n, g.o, g.ho, g.wo)),
        &Shape::from((4 * g.c, g.o, kh, kh)),
        1,
        kh - 1,
    )
    .ok()?;
    let fits = (fwd.ho, fwd.wo) == (g.ho, g.wo) && (bwd.ho, bwd.wo) == (hp2, wp2);
    (fits && usable(&fwd) && usable(&bwd)).then_some((fwd, bwd))
}

/// `x` (`[n, c, h, w]`) as its four stride phases (`[n, 4c, hp2, wp2]`, channel
/// `4c + 2a + b`), padding included.
fn split(x: &[f32], g: &Geometry, f: &Geometry) -> Vec<f32> {
    let (h, w, p) = (g.h, g.w, g.pad);
    let (hp2, wp2) = (f.h, f.w);
    let mut out = vec![0f32; g.n * 4 * g.c * hp2 * wp2];
    out.par_chunks_mut(hp2 * wp2)
        .enumerate()
        .for_each(|(r, dst)| {
            let (img, ch) = (r / (4 * g.c), r % (4 * g.c));
            let (c, a, b) = (ch / 4, (ch / 2) % 2, ch % 2);
            let src = &x[(img * g.c + c) * h * w..][..h * w];
            for (i, row) in dst.chunks_exact_mut(wp2).enumerate() {
                let Some(y) = (2 * i + a).checked_sub(p).filter(|&y| y < h) else {
                    continue;
                };
                for (j, d) in row.iter_mut().enumerate() {
                    if let Some(xx) = (2 * j + b).checked_sub(p).filter(|&xx| xx < w) {
                        *d = src[y * w + xx];
                    }
                }
            }
        });
    out
}

/// The kernel `[o, c, k, k]` as the phase kernel `[o, 4c, kh, kh]`.
fn phase_kernel(w: &[f32], g: &Geometry, kh: usize) -> Vec<f32> {
    let k = g.k;
    let mut out = vec![0f32; g.o * 4 * g.c * kh * kh];
    for o in 0..g.o {
        for c in 0..g.c {
            for (ky, kx) in (0..k).flat_map(|ky| (0..k).map(move |kx| (ky, kx))) {
                let ch = 4 * c + 2 * (ky % 2) + kx % 2;
                out[((o * 4 * g.c + ch) * kh + ky / 2) * kh + kx / 2] =
                    w[((o * g.c + c) * k + ky) * k + kx];
            }
        }
    }
    out
}

/// The stride-2 convolution of `x` with `w` in geometry `g` through its phases (`plan(g)`
/// gave `f`), passed through `epi` with `res` added.
pub(super) fn forward(
    x: &[f32],
    w: &[f32],
    g: &Geometry,
    f: &Geometry,
    epi: &Epilogue,
    res: Option<&[f32]>,
) -> Vec<f32> {
    let xs = split(x, g, f);
    conv_forward(&xs, &phase_kernel(w, g, f.k), f, epi, res)
}

/// The input gradient (`[n, c, h, w]`) of the stride-2 convolution in geometry `g` from the
/// output gradient `gz`, each channel `o` times `scale[o]` when given (`plan(g)` gave `b`).
pub(super) fn input_grad(
    gz: &[f32],
    w: &[f32],
    g: &Geometry,
    b: &Geometry,
    scale: Option<&[f32]>,
) -> Vec<f32> {
    let kh = b.k;
    let c4 = 4 * g.c;
    let wk = phase_kernel(w, g, kh);
    // flipped and transposed: [4c, o, kh, kh], times the scale of channel o
    let mut wt = vec![0f32; c4 * g.o * kh * kh];
    for ch in 0..c4 {
        for o in 0..g.o {
            let a = scale.map_or(1.0, |s| s[o]);
            for q in 0..kh * kh {
                wt[(ch * g.o + o) * kh * kh + q] =
                    wk[(o * c4 + ch) * kh * kh + kh * kh - 1 - q] * a;
            }
        }
    }
    let dph = conv_forward(gz, &wt, b, &Epilogue::default(), None);
    // merge the phases back, dropping the padding
    let (h, w, p) = (g.h, g.w, g.pad);
    let (hp2, wp2) = (b.ho, b.wo);
    let mut dx = vec![0f32; g.n * g.c * h * w];
    dx.par_chunks_mut(h * w).enumerate().for_each(|(r, dst)| {
        let (img, c) = (r / g.c, r % g.c);
        for (y, row) in dst.chunks_exact_mut(w).enumerate() {
            let (i, a) = ((y + p) / 2, (y + p) % 2);
            for (xx, d) in row.iter_mut().enumerate() {
                let (j, bb) = ((xx + p) / 2, (xx + p) % 2);
                let ch = 4 * c + 2 * a + bb;
                *d = dph[((img * c4 + ch) * hp2 + i) * wp2 + j];
            }
        }
    });
    dx
}
