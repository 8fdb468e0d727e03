//! One rule for which path a computation takes: the fused CPU kernels (f32 tensors on the CPU),
//! or candle's composed, device-generic ops, which are what a GPU runs.
//!
//! The composed path can be chosen on the CPU too: for a whole process with
//! `MOTIVNET_KERNELS=composed` (read once), or for one thread's calls inside [`composed`]. The
//! parity tests run the model both ways, so the GPU's graph is checked against PyTorch on a
//! machine without a GPU.

use std::cell::Cell;
use std::sync::OnceLock;

use candle_core::{DType, Tensor};

thread_local! {
    static FORCED_HERE: Cell<bool> = const { Cell::new(false) };
    static BF16_MATMULS_HERE: Cell<bool> = const { Cell::new(false) };
    static INT8_MATMULS_HERE: Cell<bool> = const { Cell::new(false) };
}

/// Whether the process runs on the composed path everywhere (`MOTIVNET_KERNELS=composed`).
fn forced_by_env() -> bool {
    static FORCED: OnceLock<bool> = OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("MOTIVNET_KERNELS").is_ok_and(|v| v.trim() == "composed"))
}

/// Whether the composed path is chosen for this thread's calls, whatever the device.
pub fn composed_forced() -> bool {
    forced_by_env() || FORCED_HERE.with(Cell::get)
}

/// Whether the fused CPU kernels take these tensors: all f32 on the CPU, and the composed
/// path not forced. (A kernel that needs contiguous memory makes it so itself.)
pub fn fused(tensors: &[&Tensor]) -> bool {
    !composed_forced() && tensors.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// Runs `f` with the Linear layers' products in bf16 (AMX tiles, f32 sums) for the calls this
/// thread makes: what `precision: 'bf16'` means on the CPU. For inference only: those products
/// record no graph, so nothing inside may be backpropagated.
pub fn bf16_matmuls<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&BF16_MATMULS_HERE, f)
}

/// Whether this thread's Linear products run in bf16 (inside [`bf16_matmuls`], on a CPU with
/// AMX, on the fused path).
pub fn bf16_matmuls_on() -> bool {
    BF16_MATMULS_HERE.with(Cell::get) && !composed_forced() && crate::kernels::amx::available()
}

/// Runs `f` with the Linear layers' products, and the self-attention's, in int8 (VNNI, exact i32
/// sums) for the calls this thread makes: what `precision: 'int8'` means on the CPU. For inference only, as
/// [`bf16_matmuls`].
pub fn int8_matmuls<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&INT8_MATMULS_HERE, f)
}

/// Whether this thread's Linear and attention products run in int8 (inside [`int8_matmuls`], on a CPU with
/// AVX512-VNNI, on the fused path).
pub fn int8_matmuls_on() -> bool {
    INT8_MATMULS_HERE.with(Cell::get) && !composed_forced() && crate::kernels::int8::available()
}

/// Runs `f` with the composed path forced for the calls this thread makes.
pub fn composed<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&FORCED_HERE, f)
}

/// This thread's choices of path ([`composed`], [`bf16_matmuls`], [`int8_matmuls`]), to carry onto another
/// thread with [`with_choices`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathChoices {
    composed: bool,
    bf16_matmuls: bool,
    int8_matmuls: bool,
}

/// The path choices in effect on this thread.
pub fn choices_here() -> PathChoices {
    PathChoices {
        composed: FORCED_HERE.with(Cell::get),
        bf16_matmuls: BF16_MATMULS_HERE.with(Cell::get),
        int8_matmuls: INT8_MATMULS_HERE.with(Cell::get),
    }
}

/// Runs `f` with `choices` in effect on this thread (work handed to another thread, which
/// would otherwise run with that thread's own), restoring what was there after.
pub fn with_choices<R>(choices: PathChoices, f: impl FnOnce() -> R) -> R {
    set_flag_for(&FORCED_HERE, choices.composed, || {
        set_flag_for(&BF16_MATMULS_HERE, choices.bf16_matmuls, || {
            set_flag_for(&INT8_MATMULS_HERE, choices.int8_matmuls, f)
        })
    })
}

/// Runs `f` with a thread-local flag set, restoring what it was after (also on a panic).
fn with_flag<R>(flag: &'static std::thread::LocalKey<Cell<bool>>, f: impl FnOnce() -> R) -> R {
    set_flag_for(flag, true, f)
}

/// Runs `f` with a thread-local flag at `value`, restoring what it was after (also on a panic).
fn set_flag_for<R>(flag: &'static std::thread::LocalKey<Cell<bool>>, value: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(&'static std::thread::LocalKey<Cell<bool>>, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            self.0.with(|c| c.set(self.1));
        }
    }
    let _restore = Restore(flag, flag.with(|c| c.replace(value)));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_composed_path_is_chosen_inside_composed_only() {
        let x = Tensor::zeros(3, DType::F32, &candle_core::Device::Cpu).unwrap();
        let half = x.to_dtype(DType::BF16).unwrap();
        if forced_by_env() {
            assert!(!fused(&[&x]));
            return;
        }
        assert!(fused(&[&x]));
        assert!(!fused(&[&x, &half]), "a bf16 tensor takes the composed path");
        composed(|| {
            assert!(!fused(&[&x]));
            composed(|| assert!(!fused(&[&x])));
            assert!(!fused(&[&x]), "a nested call restores the outer choice");
        });
        assert!(fused(&[&x]));
    }
}
