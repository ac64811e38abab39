//! Matrix products for the convolutions: `gemm` in column (or row) blocks, one
//! single-threaded call per block, sums cut into slices, so that every output has the same
//! bits whatever the number of threads.

use gemm::Parallelism;
use rayon::prelude::*;

/// The longest sum one `gemm` call does (`gemm` never cuts sums of up to 512 terms).
const K_SLICE: usize = 512;

/// dst (m x n, row-major) = a (m x k) * b (k x n), given as (slice, row stride, column
/// stride); `accumulate` adds to dst.
///
/// Parallel over blocks of columns, each block one single-threaded `gemm` call: `gemm`'s own
/// threading splits the rows and columns of one call and reaches about half the speed on
/// the shapes of convolutions with 64 channels (64 x 4096 x 576: 65 against 138 GFLOP/s on
/// two cores).
pub(super) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    a: (&[f32], isize, isize),
    b: (&[f32], isize, isize),
) {
    matmul_blocks(m, n, k, dst, accumulate, a, b, default_parts(n));
}

/// A few column blocks per thread for balance, each at least 32 columns wide where possible.
fn default_parts(n: usize) -> usize {
    let t = threads();
    if t <= 1 {
        1
    } else {
        (n / 32).min(4 * t).max(t).min(n).max(1)
    }
}

/// [`matmul`] into a new buffer: `a (m x k) * b (k x n)`, written without being zero-filled
/// first.
pub(super) fn matmul_new(
    m: usize,
    n: usize,
    k: usize,
    a: (&[f32], isize, isize),
    b: (&[f32], isize, isize),
) -> Vec<f32> {
    if k == 0 {
        return vec![0.0; m * n];
    }
    let mut dst = Vec::with_capacity(m * n);
    // SAFETY: the buffer has room for m * n values, and is only written (`accumulate` off);
    // every one of them is written, since each block's `gemm` call writes its whole block of
    // dst for a sum of k > 0 terms (the first slice of the sum overwrites).
    unsafe {
        matmul_to(m, n, k, dst.as_mut_ptr(), false, a, b, default_parts(n));
        dst.set_len(m * n);
    }
    dst
}

/// [`matmul`] in `parts` column blocks (row blocks for products at least four times taller
/// than wide, unless both operands run along the sum), the summed dimension in slices of at
/// most [`K_SLICE`] added one after the other. `gemm` cuts a longer sum into pieces itself, but how
/// depends on the whole problem's size, so the same column came out with different last bits
/// when computed in blocks of different widths; with slices it never cuts, and every output
/// has the same bits whatever the number of blocks (tested), hence whatever the number of
/// threads.
///
/// When both operands run along the summed dimension (`a`'s columns and `b`'s rows
/// contiguous: the weight gradients) and a block is at most 16 x 16 outputs or one column
/// wide, `gemm` switches to dot products with horizontal sums (or to its matrix-vector
/// product), another order: such products get fewer, wider blocks (balanced, each more than
/// 256 outputs and two columns), or one.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_blocks(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    a: (&[f32], isize, isize),
    b: (&[f32], isize, isize),
    parts: usize,
) {
    assert!(dst.len() >= m * n, "matmul: output buffer too small");
    // SAFETY: dst holds m * n initialised values.
    unsafe { matmul_to(m, n, k, dst.as_mut_ptr(), accumulate, a, b, parts) }
}

/// [`matmul_blocks`] into `dst`.
///
/// # Safety
/// `dst` is valid for writes of `m * n` values, and for reads of them with `accumulate`; it
/// does not alias `a` or `b`.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_to(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    accumulate: bool,
    a: (&[f32], isize, isize),
    b: (&[f32], isize, isize),
    parts: usize,
) {
    let along_k = a.2 == 1 && b.1 == 1;
    let parts = match parts.clamp(1, n.max(1)) {
        _ if along_k && (m <= 1 || m * n <= 256) => 1,
        p if along_k => p.min(n / (256 / m + 1).max(2)).max(1),
        p => p,
    };
    let dst_ptr = super::SendPtr(dst);
    // Tall and narrow products (layer 4 at 64 px: 512 x 64) in blocks of rows (from multiples
    // of 16), so that each part of `a` is packed by one call only, where column blocks would
    // each pack all of it. Measured in `layer_timings` (2 threads, best of 20, twice): layer
    // 4's convolutions at 64 px 1.45-1.51 → 1.38-1.41 ms forward, 2.03-2.11 → 1.91 ms input
    // gradient; its strided one 0.85-0.89 → 0.75-0.82 and 1.11-1.16 → 0.92 ms. The same bits
    // (tested). Otherwise columns j0 .. j1 of block p: p * n / parts onwards (widths differ
    // by one at most).
    let rows = !along_k && parts > 1 && m >= 4 * n;
    let block = |p: usize| {
        let ((i0, i1), (j0, j1)) = if rows {
            (row_block(p, parts, m), (0, n))
        } else {
            ((0, m), (p * n / parts, (p + 1) * n / parts))
        };
        // SAFETY: the slices hold the m x k, k x n and m x n matrices at the given strides
        // (checked by the callers' geometry); rows i0..i1 and columns j0..j1 of dst are
        // written by this call only, and dst does not alias a or b.
        unsafe {
            gemm_into(
                i1 - i0,
                j1 - j0,
                k,
                (dst_ptr.get().add(i0 * n + j0), n as isize, 1),
                accumulate,
                (a.0.as_ptr().offset(i0 as isize * a.1), a.1, a.2),
                (b.0.as_ptr().offset(j0 as isize * b.2), b.1, b.2),
            )
        }
    };
    if parts == 1 {
        block(0);
    } else {
        (0..parts).into_par_iter().for_each(block);
    }
}

/// Rows `start..end` of block `p` of `parts` over `m` rows: each block starts at a multiple
/// of 16 (`gemm`'s products keep the same bits whatever the block, tested), the last one
/// ends at `m`.
pub(super) fn row_block(p: usize, parts: usize, m: usize) -> (usize, usize) {
    let start = |p: usize| if p >= parts { m } else { (p * m / parts) & !15 };
    (start(p), start(p + 1))
}

/// One single-threaded product `dst (m x n) (+)= a (m x k) * b (k x n)`, every matrix given
/// as (pointer, row stride, column stride), the sum in slices of at most [`K_SLICE`] (so
/// that the bits do not depend on how the caller cuts the columns into blocks).
///
/// # Safety
/// The pointers address the m x k, k x n and m x n matrices at their strides; `dst` is valid
/// for writes of its entries, and for reads with `accumulate`; it aliases neither operand.
pub(super) unsafe fn gemm_into(
    m: usize,
    n: usize,
    k: usize,
    dst: (*mut f32, isize, isize),
    accumulate: bool,
    a: (*const f32, isize, isize),
    b: (*const f32, isize, isize),
) {
    let slices = k.div_ceil(K_SLICE).max(1);
    let kw = k.div_ceil(slices).max(1);
    for s in 0..slices {
        let k0 = s * kw;
        let kn = kw.min(k.saturating_sub(k0));
        gemm::gemm(
            m,
            n,
            kn,
            dst.0,
            dst.2,
            dst.1,
            accumulate || s > 0,
            a.0.offset(k0 as isize * a.2),
            a.2,
            a.1,
            b.0.offset(k0 as isize * b.1),
            b.2,
            b.1,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_and_column_blocks_give_the_bits_of_one_call() {
        let mut r = crate::rng::SeededRng::new(7);
        for (m, n, k) in [
            (64, 1000, 147),
            (512, 64, 300),
            (7, 97, 33),
            (130, 2305, 64),
            (128, 112, 1152),
            (128, 20, 256),
            (1152, 20, 256),
            (64, 640, 576),
            (64, 2560, 147),
            (64, 4096, 576),
            (128, 1024, 1152),
            (13, 24, 60),
            (6, 40, 33),
            (16, 17, 9),
        ] {
            let a = r.normal_vec(m * k, 1.0);
            let b = r.normal_vec(k * n, 1.0);
            let mut one = vec![0f32; m * n];
            matmul_blocks(
                m,
                n,
                k,
                &mut one,
                false,
                (&a, k as isize, 1),
                (&b, n as isize, 1),
                1,
            );
            for parts in [2, 3, 8, 64] {
                let mut split = vec![0f32; m * n];
                let (aa, bb) = ((&a[..], k as isize, 1), (&b[..], n as isize, 1));
                matmul_blocks(m, n, k, &mut split, false, aa, bb, parts);
                assert!(one == split, "{m}x{n}x{k} in {parts} blocks");
                // accumulating, and the transposed left operand of the weight gradients
                let (at, bt) = ((&a[..], 1, m as isize), (&b[..], n as isize, 1));
                let (mut x, mut y) = (split.clone(), split.clone());
                matmul_blocks(k.min(m), n, m.min(k), &mut x, true, at, bt, 1);
                matmul_blocks(k.min(m), n, m.min(k), &mut y, true, at, bt, parts);
                assert!(x == y, "{m}x{n}x{k} accumulated in {parts} blocks");
                // both operands along the sum (the weight gradients' layout)
                let (ak, bk) = ((&a[..], k as isize, 1), (&b[..], 1, k as isize));
                let (mut x, mut y) = (vec![0f32; m * n], vec![0f32; m * n]);
                matmul_blocks(m, n, k, &mut x, false, ak, bk, 1);
                matmul_blocks(m, n, k, &mut y, false, ak, bk, parts);
                assert!(x == y, "{m}x{n}x{k} along k in {parts} blocks");
            }
        }
    }
}
