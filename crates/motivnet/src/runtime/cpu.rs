//! CPU floating-point mode for the threads that compute.
//!
//! A model close to convergence produces subnormal floats (tiny gradients, softmax tails,
//! Adam moments of quiet parameters). x86 handles those in microcode, up to a hundred times
//! slower: a training run slows to a crawl after a few epochs. Flushing subnormals to zero
//! (FTZ, and DAZ for inputs) removes that cliff; it changes only values below 1.2e-38.
//! The mode is per thread, so it is set on every thread that computes: the caller's (at each
//! entry point) and rayon's workers (when the pool starts).

use std::sync::{Once, OnceLock};

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
/// flushed on each worker, and sets the mode on the calling thread. Cheap after the first
/// call. (The malloc settings of [`crate::runtime::malloc`] are the process owner's choice:
/// nothing here applies them.)
pub fn prepare() {
    // On a pool's worker (the compute threads, see below) the work already runs where it
    // should, with the mode set: no second pool is needed.
    if rayon::current_thread_index().is_some() {
        flush_subnormals_on_this_thread();
        return;
    }
    INIT.call_once(|| {
        // Fails only if something built the global pool first; its workers then keep their mode.
        let _ = rayon::ThreadPoolBuilder::new().start_handler(|_| flush_subnormals_on_this_thread()).build_global();
    });
    flush_subnormals_on_this_thread();
}

static COMPUTE_POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();

/// Runs `work` on the compute threads, a rayon pool of its own (RAYON_NUM_THREADS threads,
/// subnormals flushed), and waits for it; rayon's parallel loops and the matmuls inside run on
/// the same pool.
///
/// Why not on the caller's thread: glibc's malloc gives each thread its own arena, and a
/// model's large temporaries are best reused from one arena step after step. A host that
/// calls from whichever thread is free (Node's libuv pool has four) spreads them over several
/// arenas, each growing to the peak and paging in fresh memory: a `tiny` train step took
/// 230 ms called from Node against 160 ms from one thread, at three times the memory
/// (docs/BENCHMARKS.md). Here the work always lands on the same few threads.
pub fn run_on_compute_threads<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    let pool = COMPUTE_POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("motivnet-compute-{i}"))
            .start_handler(|_| flush_subnormals_on_this_thread())
            .build()
            .expect("motivnet: cannot start the compute threads")
    });
    pool.install(work)
}

/// One single-thread pool per compute thread, for [`run_in_serial_parts`].
static PART_POOLS: OnceLock<Vec<rayon::ThreadPool>> = OnceLock::new();

/// The compute threads' count (the calling pool's where they have not started).
fn compute_threads() -> usize {
    COMPUTE_POOL.get().map_or_else(rayon::current_num_threads, |pool| pool.current_num_threads())
}

fn part_pools() -> &'static [rayon::ThreadPool] {
    PART_POOLS.get_or_init(|| {
        // Two at least, so that a one-core machine runs (and tests) parts as any other.
        (0..compute_threads().max(2))
            .map(|i| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(move |_| format!("motivnet-part-{i}"))
                    .start_handler(|_| flush_subnormals_on_this_thread())
                    .build()
                    .expect("motivnet: cannot start the compute threads")
            })
            .collect()
    })
}

/// How many parts are worth running at once: one per compute thread (and no more than the part
/// threads, which were counted when first needed).
pub fn serial_parts_available() -> usize {
    compute_threads().min(part_pools().len())
}

/// Runs `work` on each of `parts` at once, each on a thread of its own on which rayon's parallel
/// loops and the products run serially, and returns the results in order.
///
/// Why: a small model's ops are short (the `tiny` preset's products take a fraction of a
/// millisecond each), and threading each one costs a hand-off and a wait per op, with the
/// second core idle meanwhile; on the 2-core benchmark machine a `tiny` batch of 8 ran 1.5
/// times as fast on two threads as on one. Independent parts of the work, one per thread, keep
/// every core busy without a hand-off (docs/BENCHMARKS.md, "A batch in parts").
///
/// Panics when there are more parts than part threads (the compute threads, and two at least).
pub fn run_in_serial_parts<P: Send, T: Send>(parts: Vec<P>, work: impl Fn(P) -> T + Sync) -> Vec<T> {
    use rayon::prelude::*;
    let pools = part_pools();
    assert!(parts.len() <= pools.len(), "{} parts for {} part threads", parts.len(), pools.len());
    // Each part waits on its own pool; a thread of the calling pool that waits for one may
    // start the next meanwhile, so the parts run at once even where the caller's pool has one
    // free thread.
    parts.into_par_iter().zip(pools).map(|(part, pool)| pool.install(|| work(part))).collect()
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

    #[test]
    fn compute_threads_run_the_work_with_subnormals_flushed_and_parallel_loops() {
        use rayon::prelude::*;
        let (flushed, name, threads) = super::run_on_compute_threads(|| {
            let flushed = std::hint::black_box(f32::MIN_POSITIVE) / std::hint::black_box(4.0f32) == 0.0;
            (flushed, std::thread::current().name().map(String::from), rayon::current_num_threads())
        });
        assert!(flushed);
        assert!(name.unwrap_or_default().starts_with("motivnet-compute-"));
        assert_eq!(threads, rayon::ThreadPoolBuilder::new().build().unwrap().current_num_threads());
        let sum: u64 = super::run_on_compute_threads(|| (0..1000u64).into_par_iter().sum());
        assert_eq!(sum, 499_500);
    }

    #[test]
    fn serial_parts_run_at_once_on_threads_of_their_own_with_serial_loops() {
        use std::sync::{Condvar, Mutex};
        use std::time::Duration;
        let parts = super::run_on_compute_threads(super::serial_parts_available).max(2);
        // Every part waits (up to a minute) for all the others to start: all see each other
        // only if they run at once.
        let started = (Mutex::new(0usize), Condvar::new());
        let seen = super::run_on_compute_threads(|| {
            super::run_in_serial_parts((0..parts).collect(), |i| {
                let (count, changed) = &started;
                let mut count = count.lock().unwrap();
                *count += 1;
                changed.notify_all();
                let (count, _) = changed.wait_timeout_while(count, Duration::from_secs(60), |n| *n < parts).unwrap();
                assert_eq!(*count, parts, "part {i} ran while the others had not started");
                drop(count);
                let flushed = std::hint::black_box(f32::MIN_POSITIVE) / std::hint::black_box(4.0f32) == 0.0;
                (i, std::thread::current().name().map(String::from), rayon::current_num_threads(), flushed)
            })
        });
        for (i, (part, name, threads, flushed)) in seen.into_iter().enumerate() {
            assert_eq!(part, i, "results come back in order");
            assert_eq!(name.as_deref(), Some(format!("motivnet-part-{i}").as_str()));
            assert_eq!(threads, 1, "a part's parallel loops run serially");
            assert!(flushed);
        }
    }
}
