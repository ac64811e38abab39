//! Flush-to-zero for subnormal floats.
//!
//! A confident model's cross-entropy gradient is `softmax - onehot`, of order `e^-margin`:
//! for a standard model at 99.9% confidence, PGD's backward pass carries values below
//! `f32::MIN_POSITIVE` (1.2e-38) through every layer. x86 cores handle such subnormal
//! operands in microcode, tens of times slower than normal ones. Measured on the control's
//! standard model (64 px, 90 images, 10-step evaluation PGD, 2 cores): 28 s with subnormals,
//! 9 s with them flushed, and a byte-identical comparison. Values this small are far below
//! float32's rounding of any quantity the tools report; PyTorch offers the same switch as
//! `torch.set_flush_denormal(True)`.

/// MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6) flags.
#[cfg(target_arch = "x86_64")]
const FTZ_DAZ: u32 = 0x8040;

/// Sets flush-to-zero and denormals-are-zero on the calling thread (x86-64; a no-op on
/// other targets).
fn on_this_thread() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: only the two flush flags change; rounding and exception masks are kept.
    #[allow(deprecated)]
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | FTZ_DAZ);
    }
}

/// Flushes subnormal floats to zero on the calling thread and on every thread of rayon's
/// global pool (which the convolutions and `gemm` run on), for the life of the process.
/// The `robustlens` binary calls it at start; a library user may call it once, from the
/// thread that runs the models.
pub fn flush_denormals() {
    on_this_thread();
    rayon::broadcast(|_| on_this_thread());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hint::black_box;

    fn subnormal_survives() -> bool {
        black_box(1e-40f32) * black_box(1.0f32) != 0.0
    }

    #[test]
    fn subnormals_flush_on_the_thread_and_its_pool() {
        // A pool of its own, so that no other test's threads change.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let before: Vec<bool> = pool.broadcast(|_| subnormal_survives());
        assert_eq!(before, [true, true], "a fresh thread keeps subnormals");
        pool.install(flush_denormals);
        let after: Vec<bool> = pool.broadcast(|_| subnormal_survives());
        if cfg!(target_arch = "x86_64") {
            assert_eq!(after, [false, false]);
        }
        // Normal numbers are untouched.
        let normal: Vec<f32> = pool.broadcast(|_| black_box(1e-30f32) * black_box(2.0f32));
        assert_eq!(normal, [2e-30, 2e-30]);
    }
}
