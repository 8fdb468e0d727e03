//! CPU floating-point mode for the threads that compute.
//!
//! A model close to convergence produces subnormal floats (tiny gradients, softmax tails,
//! Adam moments of quiet parameters). x86 handles those in microcode, up to a hundred times
//! slower: a training run slows to a crawl after a few epochs. Flushing subnormals to zero
//! (FTZ, and DAZ for inputs) removes that cliff; it changes only values below 1.2e-38.
//! The mode is per thread, so it is set on every thread that computes: the caller's (at each
//! entry point) and rayon's workers (when the pool starts).

use std::sync::Once;

/// Sets flush-to-zero and denormals-are-zero on the current thread.
pub fn flush_subnormals_on_this_thread() {
    #[cfg(target_arch = "x86_64")]
    #[allow(deprecated)]
    // SAFETY: reading and writing MXCSR has no memory effects; only the two mode bits change.
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        const FTZ: u32 = 1 << 15;
        const DAZ: u32 = 1 << 6;
        _mm_setcsr(_mm_getcsr() | FTZ | DAZ);
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: FPCR.FZ (bit 24) only changes how subnormals are computed.
    unsafe {
        let mut fpcr: u64;
        std::arch::asm!("mrs {}, fpcr", out(reg) fpcr);
        std::arch::asm!("msr fpcr, {}", in(reg) fpcr | (1 << 24));
    }
}

static INIT: Once = Once::new();

/// Starts rayon's global pool (used by the matmuls and the pixel pass) with subnormals
/// flushed on each worker, and sets the mode on the calling thread. Cheap after the first call.
pub fn prepare() {
    INIT.call_once(|| {
        // Fails only if something built the global pool first; its workers then keep their mode.
        let _ = rayon::ThreadPoolBuilder::new().start_handler(|_| flush_subnormals_on_this_thread()).build_global();
    });
    flush_subnormals_on_this_thread();
}

#[cfg(test)]
mod tests {
    #[test]
    fn subnormals_flush_to_zero_after_prepare() {
        super::prepare();
        let tiny = std::hint::black_box(f32::MIN_POSITIVE);
        assert_eq!(tiny / std::hint::black_box(4.0f32), 0.0);
        let on_worker =
            rayon::join(|| std::hint::black_box(f32::MIN_POSITIVE) / std::hint::black_box(4.0f32), || 0.0).0;
        assert_eq!(on_worker, 0.0);
    }
}
