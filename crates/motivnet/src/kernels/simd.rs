//! Running hot loops with the widest vector instructions the CPU has.
//!
//! The crate is compiled for baseline x86-64 (SSE2), so the addon runs on any x86-64 machine;
//! its fused loops then vectorise four floats wide at most, and `exp`/`erf` polynomials run
//! without fused multiply-adds. [`simd_dispatch!`] defines a function three times: as written,
//! compiled with AVX2 + FMA (8 floats wide), and compiled with AVX-512 (16 floats wide), and
//! picks the widest the CPU supports at run time (the check is one cached load). On other
//! architectures the portable copy runs.

use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set tier of [`simd_dispatch!`], narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Portable = 1,
    Avx2 = 2,
    Avx512 = 3,
}

/// 0 until the first call detects the CPU's level.
static DETECTED: AtomicU8 = AtomicU8::new(0);

fn detect() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") {
            if has!("avx512f") && has!("avx512vl") && has!("avx512bw") && has!("avx512dq") {
                return Level::Avx512;
            }
            return Level::Avx2;
        }
    }
    Level::Portable
}

/// The widest tier this CPU supports.
pub fn detected() -> Level {
    match DETECTED.load(Ordering::Relaxed) {
        3 => Level::Avx512,
        2 => Level::Avx2,
        1 => Level::Portable,
        _ => {
            let level = detect();
            DETECTED.store(level as u8, Ordering::Relaxed);
            level
        }
    }
}

#[cfg(test)]
thread_local! {
    static CAP: std::cell::Cell<Option<Level>> = const { std::cell::Cell::new(None) };
}

/// The tier a dispatched function runs at on this thread: the detected one, or in tests a
/// lower one set by [`with_level`].
#[inline(always)]
pub fn level() -> Level {
    let level = detected();
    #[cfg(test)]
    if let Some(cap) = CAP.with(|c| c.get()) {
        return level.min(cap);
    }
    level
}

/// The mask of the first `n` of an AVX-512 register's 16 float lanes (all of them from 16 on):
/// for the loads and stores of a slice's last, partial vector.
#[cfg(target_arch = "x86_64")]
pub(crate) fn lanes_below(n: usize) -> std::arch::x86_64::__mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as std::arch::x86_64::__mmask16
    }
}

/// The tiers above the portable code that this CPU can run, for tests that compare each with
/// the portable code. A tier the CPU lacks is named on the test's output: its code was not
/// checked on this machine.
#[cfg(test)]
pub(crate) fn tiers_to_check(test: &str) -> Vec<Level> {
    let (run, skip): (Vec<Level>, Vec<Level>) =
        [Level::Avx2, Level::Avx512].into_iter().partition(|&tier| tier <= detected());
    for tier in skip {
        eprintln!("{test}: this CPU has no {tier:?}: that tier's code was not checked here");
    }
    run
}

/// Runs `f` with dispatched functions on this thread capped at `cap` (never above what the
/// CPU supports), so tests can compare every tier the machine has against the portable one.
#[cfg(test)]
pub fn with_level<R>(cap: Level, f: impl FnOnce() -> R) -> R {
    let previous = CAP.with(|c| c.replace(Some(cap)));
    let out = f();
    CAP.with(|c| c.set(previous));
    out
}

/// `simd_dispatch! { pub fn name(args) { body } }`: see the module documentation.
#[macro_export]
macro_rules! simd_dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn portable($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    portable($($arg),*)
                }
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    portable($($arg),*)
                }
                match $crate::kernels::simd::level() {
                    // SAFETY: `level` never reports a tier above what the CPU supports.
                    $crate::kernels::simd::Level::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::kernels::simd::Level::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::kernels::simd::Level::Portable => {}
                }
            }
            portable($($arg),*)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::simd_dispatch! {
        fn scaled_sum(xs: &[f32], k: f32) -> f32 {
            xs.iter().map(|x| x * k).sum()
        }
    }

    #[test]
    fn dispatched_function_computes_the_same_at_every_level() {
        let xs: Vec<f32> = (0..100).map(|i| i as f32).collect();
        assert_eq!(with_level(Level::Portable, || scaled_sum(&xs, 2.0)), 9900.0);
        for tier in tiers_to_check("dispatched_function_computes_the_same_at_every_level") {
            assert_eq!(with_level(tier, level), tier, "capped at {tier:?}, the code must run at {tier:?}");
            assert_eq!(with_level(tier, || scaled_sum(&xs, 2.0)), 9900.0);
        }
    }

    #[test]
    fn a_cap_never_raises_the_level_above_the_cpu() {
        assert_eq!(with_level(Level::Avx512, level), detected());
        assert_eq!(with_level(Level::Portable, level), Level::Portable);
        assert_eq!(level(), detected());
    }
}
