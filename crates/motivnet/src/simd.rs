//! Running hot loops with AVX2 and FMA where the CPU has them.
//!
//! The crate is compiled for baseline x86-64 (SSE2), so the addon runs on any x86-64 machine;
//! its fused loops then vectorise four floats wide at most, and `exp`/`erf` polynomials run
//! without fused multiply-adds. [`avx2_dispatch!`] defines a function twice, as written and
//! compiled with AVX2 + FMA, and picks the second at run time when the CPU supports it (the
//! check is a cached load). Elsewhere, and on other architectures, the portable copy runs.

/// `avx2_dispatch! { pub fn name(args) { body } }`: see the module documentation.
#[macro_export]
macro_rules! avx2_dispatch {
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
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            portable($($arg),*)
        }
    };
}

#[cfg(test)]
mod tests {
    crate::avx2_dispatch! {
        fn scaled_sum(xs: &[f32], k: f32) -> f32 {
            xs.iter().map(|x| x * k).sum()
        }
    }

    #[test]
    fn dispatched_function_computes_the_same_either_way() {
        let xs: Vec<f32> = (0..100).map(|i| i as f32).collect();
        assert_eq!(scaled_sum(&xs, 2.0), 9900.0);
    }
}
