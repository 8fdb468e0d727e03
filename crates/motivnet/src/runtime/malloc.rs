//! glibc malloc settings for a model's temporaries.
//!
//! Every op allocates its output, and a train step frees most of them again: the same few
//! megabyte-sized buffers, step after step. glibc serves a request above its mmap threshold
//! with a fresh mapping and unmaps it on free, so each step pages its temporaries in again,
//! zero-filled by the kernel. The threshold normally adapts upwards as large blocks are freed,
//! but that depends on the order of allocations: an unrelated change to the optimizer once
//! turned the `tiny` train step from 102 into 140 ms through page faults alone
//! (docs/BENCHMARKS.md). Fixing the threshold at glibc's ceiling (32 MiB) and keeping up to
//! as much freed memory at the top of each arena makes the reuse deterministic; the price is
//! a resident size that stays near its peak instead of shrinking between steps. (Keeping
//! 128 MiB per arena was no faster for `tiny` or `small`, and every thread's arena, sharp's
//! included, would hold that much.)
//!
//! Each arena keeps its own freed memory, and glibc gives threads up to eight arenas per core.
//! A Node host that trains runs the compute threads, a decoding worker per core with its
//! libvips threads, and V8's own: at 32 MiB kept per arena, the end-to-end benchmark's peak
//! above its baseline was 340 MB in most runs and 460-470 MB in a third of them, with the
//! arenas glibc happened to make. With at most two arenas per core it was 310-340 MB in 30 runs
//! of 33, at the same batch time, and 430-450 MB in the other three (docs/BENCHMARKS.md).
//! So the arenas are capped at two per core: one for each compute thread, one for each
//! decoding worker.
//!
//! The settings are process-wide, so the core never applies them on its own: a program that
//! owns its process opts in (the `motivnet` command line and the benchmark binary do; a Node
//! host calls `tuneProcess()`). A process whose environment sets its own malloc tuning
//! (`GLIBC_TUNABLES` naming malloc, or `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` /
//! `MALLOC_ARENA_MAX`) keeps it even then.

use std::sync::OnceLock;

/// Blocks up to this size come from the heap (glibc refuses higher values for thread arenas).
pub const MMAP_THRESHOLD: usize = 32 << 20;
/// Freed memory an arena keeps before returning it to the system.
pub const TRIM_THRESHOLD: usize = 32 << 20;
/// Arenas per core (see the module's notes).
pub const ARENAS_PER_CORE: usize = 2;
/// glibc's `arena_test` (8 on 64-bit targets, 2 on 32-bit ones): the first time a thread wants
/// a new arena while the process has more than this many, glibc fixes its arena limit for good
/// (see [`MallocTuning::arena_cap`]).
const GLIBC_ARENA_TEST: usize = if cfg!(target_pointer_width = "64") { 8 } else { 2 };

/// The arena cap for this machine.
fn arena_max() -> usize {
    ARENAS_PER_CORE * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What [`tune_for_model_temporaries`] put in effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MallocTuning {
    /// Whether the mmap and trim thresholds are ours: false where the environment chose its
    /// own malloc settings or the C library is not glibc.
    pub thresholds: bool,
    /// The arenas threads share from now on, where the cap took effect. glibc reads its
    /// arena limit once, the first time a thread wants a new arena while the process has more
    /// than eight (its `arena_test`); from then on it keeps eight per core, whatever is set
    /// later. A host with many threads already running when it tunes gets `None` here: it
    /// should tune before it starts its worker pools (the command line does, first thing).
    pub arena_cap: Option<usize>,
}

static TUNING: OnceLock<MallocTuning> = OnceLock::new();

/// Whether the environment already chose malloc settings.
fn user_tuned() -> bool {
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    tunables.contains("glibc.malloc.")
        || std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
        || std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_some()
        || std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var_os("MALLOC_ARENA_TEST").is_some()
}

/// Applies the settings above once per process (glibc on Linux; elsewhere nothing) and says
/// which are in effect; later calls return the first call's answer.
pub fn tune_for_model_temporaries() -> MallocTuning {
    *TUNING.get_or_init(|| {
        let untouched = MallocTuning { thresholds: false, arena_cap: None };
        if user_tuned() {
            return untouched;
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let cap = arena_max();
            // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
                libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
                libc::mallopt(libc::M_ARENA_MAX, cap as libc::c_int);
            }
            // Counted after the cap is set, as threads may make arenas meanwhile: arenas made
            // so far stay, and with more than `GLIBC_ARENA_TEST` of them glibc may have fixed its
            // own limit before the cap. The count never falls, so at most that many now means
            // glibc read the cap.
            let arenas_so_far = arenas();
            let arena_cap = (arenas_so_far <= GLIBC_ARENA_TEST).then_some(cap.max(arenas_so_far));
            MallocTuning { thresholds: true, arena_cap }
        }
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        untouched
    })
}

/// The arenas glibc has made so far, counted in `malloc_info`'s report (one `<heap nr=`
/// element each; the main arena is one).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn arenas() -> usize {
    let (mut buf, mut len) = (std::ptr::null_mut::<libc::c_char>(), 0usize);
    // SAFETY: open_memstream writes the buffer's address and length as the stream is written
    // and closed; the buffer is freed after it has been read.
    unsafe {
        let stream = libc::open_memstream(&mut buf, &mut len);
        if stream.is_null() {
            return 0;
        }
        libc::malloc_info(0, stream);
        libc::fclose(stream);
        let report = std::slice::from_raw_parts(buf.cast::<u8>(), len).to_vec();
        libc::free(buf.cast());
        String::from_utf8_lossy(&report).matches("<heap nr=").count()
    }
}

/// Hands freed memory back to the system now (glibc's `malloc_trim`; elsewhere nothing), after
/// a one-off release of much more than a step's temporaries: a file's bytes after a load, the
/// f32 weights a bf16 model no longer needs. glibc keeps blocks below its mmap threshold in
/// its arenas, and returns only the free memory at an arena's top, so without this a host that
/// loads a bf16 model keeps the freed f32 weights resident. It changes no setting: only pages
/// no block uses are returned.
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused pages of glibc's own arenas to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::{arena_max, arenas, tune_for_model_temporaries};

    #[test]
    fn a_model_sized_temporary_comes_from_the_heap_not_a_fresh_mapping() {
        if !tune_for_model_temporaries().thresholds {
            return; // this environment chose its own settings
        }
        // SAFETY: mallinfo only reads the allocator's counters (the older call, in every glibc).
        #[allow(deprecated)]
        let mapped = || unsafe { libc::mallinfo().hblks };
        // Tests running beside this one may map blocks of their own meanwhile: one clean
        // attempt out of a few shows the setting. Each attempt is larger than the last, as
        // glibc's adaptive threshold (the one replaced) rises to the size of a freed block.
        let clean = (0..5).any(|i| {
            let before = mapped();
            let buffer = std::hint::black_box(vec![1f32; (24 + i) << 18]); // 24 MiB and up
            let during = mapped();
            drop(buffer);
            during == before
        });
        assert!(clean, "blocks of 24 to 28 MiB were mapped on their own every time");
    }

    /// Starts `count` threads alive at once, each allocating, so that each wants an arena.
    fn threads_allocating_at_once(count: usize) {
        let barrier = std::sync::Barrier::new(count);
        std::thread::scope(|scope| {
            for _ in 0..count {
                scope.spawn(|| {
                    let held = std::hint::black_box(vec![1u8; 64 << 10]);
                    barrier.wait();
                    drop(held);
                });
            }
        });
    }

    /// Runs the named test of this module alone in a fresh process of this test binary, where
    /// no other test's threads have made arenas yet, and asserts that it passed there; true
    /// once it has. Inside that process (`MOTIVNET_MALLOC_TEST_ALONE` set) it returns false:
    /// the caller runs the test's body.
    fn ran_in_a_fresh_process(test: &str) -> bool {
        if std::env::var_os("MOTIVNET_MALLOC_TEST_ALONE").is_some() {
            return false;
        }
        let module = module_path!().split_once("::").map_or(module_path!(), |(_, rest)| rest);
        let name = format!("{module}::{test}");
        let out = std::process::Command::new(std::env::current_exe().expect("the test binary's path"))
            .args([name.as_str(), "--exact", "--test-threads=1", "--nocapture"])
            .env("MOTIVNET_MALLOC_TEST_ALONE", "1")
            .output()
            .expect("starting the test binary again");
        let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{name} failed in a process of its own:\n{printed}");
        assert!(printed.contains("1 passed"), "{name} did not run in the process of its own:\n{printed}");
        true
    }

    #[test]
    fn threads_beyond_the_cap_share_arenas() {
        if ran_in_a_fresh_process("threads_beyond_the_cap_share_arenas") {
            return;
        }
        let tuning = tune_for_model_temporaries();
        if !tuning.thresholds {
            return; // this environment chose its own settings
        }
        let cap = tuning.arena_cap.expect("a fresh process tunes before glibc fixes its arena limit");
        threads_allocating_at_once(3 * cap + 2);
        let after = arenas();
        assert!(after <= cap, "{after} arenas after {} threads at once (cap {cap})", 3 * cap + 2);
    }

    #[test]
    fn a_cap_set_after_glibc_fixed_its_limit_is_not_reported() {
        if ran_in_a_fresh_process("a_cap_set_after_glibc_fixed_its_limit_is_not_reported") {
            return;
        }
        if super::user_tuned() {
            return; // this environment chose its own settings
        }
        // Eleven threads at once want eleven arenas: glibc makes nine at least, and fixes its
        // limit (eight per core) when one more is wanted.
        threads_allocating_at_once(11);
        let made = arenas();
        assert!(made > super::GLIBC_ARENA_TEST, "11 threads at once made only {made} arenas");
        let tuning = tune_for_model_temporaries();
        assert!(tuning.thresholds);
        assert_eq!(tuning.arena_cap, None, "a cap reported where glibc may ignore it ({made} arenas made before)");
        // And glibc does ignore it: below its own limit, threads beyond the arenas made so far
        // get arenas of their own.
        let glibc_limit = 8 * std::thread::available_parallelism().map_or(1, |n| n.get());
        if glibc_limit > made + 1 {
            threads_allocating_at_once(made + 3);
            assert!(arenas() > made.max(arena_max()), "glibc kept to a cap set after its limit was fixed");
        }
    }
}
