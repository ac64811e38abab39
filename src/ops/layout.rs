//! What the convolution kernels share (im2col in `conv`, the direct kernel, Winograd): the
//! geometry of a convolution, the fused epilogue, zero-padded planes and scratch buffers
//! kept per thread, and the CPU feature check. Its own file, so that `conv` (which routes
//! between the kernels) and the kernels (which use these pieces) do not import each other.

use candle_core::Shape;
use rayon::prelude::*;
use std::sync::Arc;

/// Whether this CPU has AVX2 and FMA (the direct and Winograd kernels need both).
#[cfg(target_arch = "x86_64")]
pub(super) fn has_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) fn has_fma() -> bool {
    false
}

static AVX512: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Lets robustlens's own kernels (Winograd's products, the direct tile, the 3x3 weight
/// gradient) use their AVX-512 code and AVX-512 routing where the CPU has it (the default),
/// or keeps them on their AVX2 code and routing for the whole process (`false`, as on a CPU
/// without AVX-512F: the same kernels, the same sums, bit for bit).
///
/// With AVX-512 the `gemm` crate's matrix products (which choose their instructions
/// themselves and are not affected by this switch) overtake Winograd's tile from 256
/// channels and the direct weight gradient at 128, so those layers go to im2col and `gemm`
/// on AVX-512 and stay where they were on AVX2; stride-1 input gradients of small maps run as
/// the flipped convolution. Per layer and in `bench`: see the README's performance section.
pub fn set_avx512(enabled: bool) {
    AVX512.store(enabled, std::sync::atomic::Ordering::Relaxed);
}

/// The instruction sets the convolution kernels run on this CPU: robustlens's own
/// ([`set_avx512`]) and `gemm`'s (AVX-512 where the CPU has it and the `gemm-avx512` feature,
/// on by default, compiled its kernels in), e.g. `"kernels AVX-512, gemm AVX-512"` (other
/// CPUs than x86-64: `"kernels portable, gemm aarch64"`, `gemm`'s own choice there).
pub fn instruction_sets() -> String {
    if !cfg!(target_arch = "x86_64") {
        return format!("kernels portable, gemm {}", std::env::consts::ARCH);
    }
    let ours = if use_avx512() {
        "AVX-512"
    } else if has_fma() {
        "AVX2"
    } else {
        "portable"
    };
    let gemm = if cfg!(feature = "gemm-avx512") && has_avx512() {
        "AVX-512"
    } else if has_fma() {
        "AVX2"
    } else {
        "portable"
    };
    format!("kernels {ours}, gemm {gemm}")
}

/// Whether the kernels run their AVX-512 code and routing: the CPU has AVX-512F (and AVX2
/// and FMA) and [`set_avx512`] left it on.
#[cfg(target_arch = "x86_64")]
pub(super) fn use_avx512() -> bool {
    #[cfg(test)]
    if let Some(wide) = tests_isa::FORCED.get() {
        return wide && has_avx512();
    }
    AVX512.load(std::sync::atomic::Ordering::Relaxed) && has_avx512()
}

/// The mask of the first `k` of 16 lanes (all 16 from `k >= 16`, none for `k <= 0`): the
/// lanes of a strip of 16 that lie inside a row, for AVX-512's masked loads and stores.
#[cfg(target_arch = "x86_64")]
pub(super) fn first_lanes(k: isize) -> u16 {
    ((1u32 << k.clamp(0, 16)) - 1) as u16
}

/// The AVX-512 register of lane indices `f(0), ..., f(15)` (for permutations and index
/// arithmetic).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn lane_indices(f: impl Fn(i32) -> i32) -> std::arch::x86_64::__m512i {
    let i: [i32; 16] = std::array::from_fn(|t| f(t as i32));
    std::arch::x86_64::_mm512_loadu_si512(i.as_ptr().cast())
}

/// Whether this CPU has AVX-512F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
pub(super) fn has_avx512() -> bool {
    has_fma() && std::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) fn has_avx512() -> bool {
    false
}

/// For tests: the kernels' instruction sets on this thread, without touching the
/// process-wide switch that other tests run under.
#[cfg(test)]
pub(super) mod tests_isa {
    thread_local! {
        pub(super) static FORCED: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
    }

    /// Runs `f` once per instruction set this CPU has (AVX2, then AVX-512 where present),
    /// the kernels called from this thread on that set; `f` gets `true` for AVX-512.
    pub(crate) fn each_isa(mut f: impl FnMut(bool)) {
        let mut isas = vec![false];
        if super::has_avx512() {
            isas.push(true);
        } else {
            eprintln!("this CPU has no AVX-512F: only the AVX2 kernels are tested here");
        }
        for wide in isas {
            FORCED.set(Some(wide));
            f(wide);
        }
        FORCED.set(None);
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) fn use_avx512() -> bool {
    false
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Geometry {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) o: usize,
    pub(super) k: usize,
    pub(super) stride: usize,
    pub(super) pad: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
}

impl Geometry {
    /// `[n, o, ho, wo]`.
    pub(super) fn out_shape(&self) -> Shape {
        Shape::from((self.n, self.o, self.ho, self.wo))
    }
    pub(super) fn ckk(&self) -> usize {
        self.c * self.k * self.k
    }
    pub(super) fn hw_out(&self) -> usize {
        self.ho * self.wo
    }
    pub(super) fn plane_in(&self) -> usize {
        self.c * self.h * self.w
    }
}

thread_local! {
    static PADDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on `x`'s `h x w` planes copied into zero-padded planes of `plane` floats: rows
/// `wp` wide (at least `w + p`), `p` zero rows above, each row's values from column `p`,
/// zeros elsewhere. The buffer is this thread's, reused across calls (a re-entrant call
/// gets a fresh one).
pub(super) fn with_padded<R>(
    x: &[f32],
    (h, w): (usize, usize),
    p: usize,
    wp: usize,
    plane: usize,
    f: impl FnOnce(&[f32]) -> R,
) -> R {
    assert!(
        wp >= w + p && plane >= (h + p) * wp,
        "with_padded: planes too small"
    );
    let planes = x.len() / (h * w).max(1);
    with_padded_buffer(planes * plane, |buf| {
        buf.par_chunks_mut(plane)
            .zip(x.par_chunks(h * w))
            .for_each(|(dst, src)| {
                dst[..p * wp].fill(0.0);
                dst[(p + h) * wp..].fill(0.0);
                for (y, line) in src.chunks_exact(w).enumerate() {
                    let d = &mut dst[(p + y) * wp..(p + y + 1) * wp];
                    d[..p].fill(0.0);
                    d[p + w..].fill(0.0);
                    d[p..p + w].copy_from_slice(line);
                }
            });
        f(buf)
    })
}

/// Runs `f` on `need` floats of this thread's padded-image buffer (arbitrary contents: the
/// caller writes all of it), kept across calls; a re-entrant call gets a fresh one.
fn with_padded_buffer<R>(need: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    PADDED.with(|cell| {
        let mut guard = cell.try_borrow_mut();
        let mut fresh = Vec::new();
        let buf: &mut Vec<f32> = match guard.as_mut() {
            Ok(b) => b,
            Err(_) => &mut fresh,
        };
        if buf.len() < need {
            buf.resize(need, 0.0);
        }
        f(&mut buf[..need])
    })
}

/// Runs `f` on the `m` images `x` (`[m, c, h, w]`) copied, zero-padded by `p` on every side,
/// into one batch-last buffer `[c, h + 2p, w + 2p, m]`: pixel `(iy, ix)` of image `j` at
/// `((c * hp + iy + p) * wp + ix + p) * m + j`, times `scale[c]` where a scale is given.
/// The buffer is this thread's, shared with [`with_padded`] and reused across calls (a
/// re-entrant call gets a fresh one).
pub(super) fn with_padded_batch_last<R>(
    x: &[f32],
    (c, h, w): (usize, usize, usize),
    p: usize,
    m: usize,
    scale: Option<&[f32]>,
    f: impl FnOnce(&[f32]) -> R,
) -> R {
    assert_eq!(x.len(), m * c * h * w, "with_padded_batch_last: input size");
    let (hp, wp) = (h + 2 * p, w + 2 * p);
    let block = hp * wp * m;
    with_padded_buffer(c * block, |buf| {
        buf.par_chunks_mut(block).enumerate().for_each(|(ci, dst)| {
            // the padding: p rows above and below, p columns left and right
            dst[..p * wp * m].fill(0.0);
            dst[(p + h) * wp * m..].fill(0.0);
            for iy in 0..h {
                let row = &mut dst[(p + iy) * wp * m..][..wp * m];
                row[..p * m].fill(0.0);
                row[(p + w) * m..].fill(0.0);
            }
            for j in 0..m {
                let plane = &x[(j * c + ci) * h * w..][..h * w];
                for (iy, line) in plane.chunks_exact(w).enumerate() {
                    let row = &mut dst[((iy + p) * wp + p) * m..][..w * m];
                    let cells = row.iter_mut().skip(j).step_by(m).zip(line);
                    match scale {
                        None => cells.for_each(|(d, v)| *d = *v),
                        Some(s) => cells.for_each(|(d, v)| *d = *v * s[ci]),
                    }
                }
            }
        });
        f(buf)
    })
}

/// The distance, in floats, to give rows of `len` floats that a kernel reads or writes
/// together: `len` rounded up to a cache line, plus one line. Rows a multiple of 4 KB apart
/// (1,024 floats: Winograd's 1,024 tiles of layer 1 at 64 px, the stem's 32 x 32 outputs)
/// all fall into one set of the L1 cache, which holds 12 lines of a set; 16 such streams
/// evict each other on every access. Measured per layer (batch 16, 2 threads, best of 20,
/// the AVX-512 VM): Winograd's weight gradient of layer 1 at 64 px 2.2 → 1.2 ms, the stem's
/// weight gradient 2.5-2.6 → 1.8-1.9 ms.
pub(super) fn padded_stride(len: usize) -> usize {
    len.div_ceil(16) * 16 + 16
}

thread_local! {
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` with two scratch buffers of at least `a` and `b` floats, reused across calls on
/// this thread (no allocation, zeroing or page faults per convolution). Their contents are
/// arbitrary: every user overwrites what it reads. A re-entrant call gets fresh buffers.
pub(super) fn with_scratch<R>(
    a: usize,
    b: usize,
    f: impl FnOnce(&mut [f32], &mut [f32]) -> R,
) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            let (x, y) = &mut *bufs;
            if x.len() < a {
                x.resize(a, 0.0);
            }
            if y.len() < b {
                y.resize(b, 0.0);
            }
            f(&mut x[..a], &mut y[..b])
        }
        Err(_) => f(&mut vec![0f32; a], &mut vec![0f32; b]),
    })
}

/// What a fused convolution does to each output value `v` of channel `o` before writing it:
/// `act(v * scale[o] + shift[o] + residual)`. The scale and shift are constants (a folded
/// eval-mode BatchNorm); the residual is a tensor of the output's shape that takes part in
/// autograd; `act` is ReLU or the identity.
#[derive(Clone, Default)]
pub(super) struct Epilogue {
    pub(super) scale: Option<Arc<Vec<f32>>>,
    pub(super) shift: Option<Arc<Vec<f32>>>,
    pub(super) relu: bool,
}

impl Epilogue {
    /// The epilogue in place: `dst` holds channel `o`'s products (`[hw]`) and gets
    /// `relu?(dst * scale[o] + shift[o] + res)`.
    #[inline]
    pub(super) fn apply_in_place(&self, o: usize, res: Option<&[f32]>, dst: &mut [f32]) {
        let a = self.scale.as_ref().map_or(1.0, |s| s[o]);
        let b = self.shift.as_ref().map_or(0.0, |s| s[o]);
        match (res, self.relu) {
            (None, false) if self.scale.is_none() && self.shift.is_none() => {}
            (None, false) => dst.iter_mut().for_each(|d| *d = *d * a + b),
            (None, true) => dst.iter_mut().for_each(|d| *d = (*d * a + b).max(0.0)),
            (Some(r), false) => {
                for (d, r) in dst.iter_mut().zip(r) {
                    *d = *d * a + b + r;
                }
            }
            (Some(r), true) => {
                for (d, r) in dst.iter_mut().zip(r) {
                    *d = (*d * a + b + r).max(0.0);
                }
            }
        }
    }
}

/// A consumer of finished output planes: `(image * o + channel, plane)`.
pub(super) type PlaneFn<'a> = dyn Fn(usize, &[f32]) + Sync + 'a;
