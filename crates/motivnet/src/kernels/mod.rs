//! Slice math under the fused ops: plain f32 buffers in, f32 buffers out, no candle types.
//! The ops (`crate::ops`) wrap these as candle custom ops with their own backward; the
//! hand-written training passes (`crate::model::encoder_train`, `crate::model::head_train`)
//! call them directly.
//!
//! Loops are written so they vectorise (lanes of partial sums, branch-free exp and erf) and
//! run as wide as the CPU allows ([`simd`]); products go through `gemm` on strided views
//! ([`gemm`]); work is split over rayon's threads in chunks of [`CHUNK`] elements.

pub mod aligned;
pub mod amx;
pub mod attention;
pub mod bf16_dot;
pub mod cross_attention;
pub mod flash_attention;
pub mod flash_attention_bf16;
pub mod flash_attention_int8;
pub mod gelu;
pub mod gemm;
pub mod int8;
pub mod layer_norm;
pub mod linear;
pub mod linear_bf16;
pub mod math;
pub mod patches;
pub mod resize;
pub mod separable;
pub mod simd;
pub mod softmax;

/// Elements per rayon task: large enough to amortise scheduling, small enough to balance.
pub const CHUNK: usize = 16 * 1024;

/// A pointer to an output that rayon's tasks share, each writing its own part (its rows, or its
/// blocks of rows and columns): what the products on AMX tiles and on VNNI write through.
#[derive(Clone, Copy)]
pub(crate) struct Shared<T>(pub(crate) *mut T);
// SAFETY: the kernels that share one give each task a part of its own to write; see theirs.
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// The element `offset` elements on.
    ///
    /// # Safety
    /// `offset` lies inside the buffer the pointer was taken from.
    pub(crate) unsafe fn at(self, offset: usize) -> *mut T {
        // SAFETY: the caller's promise.
        unsafe { self.0.add(offset) }
    }
}

/// What a kernel reports when its inputs do not fit together (the ops turn it into their
/// error type).
pub type KernelResult<T> = std::result::Result<T, String>;
