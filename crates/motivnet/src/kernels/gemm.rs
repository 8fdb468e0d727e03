//! Matrix products on strided views of f32 buffers, for the fused CPU kernels.
//!
//! The `gemm` crate (candle's own CPU matmul) reads any row and column stride, so a kernel can
//! multiply a head's slice of a packed qkv tensor, or a transposed view, without copying it
//! first. These wrappers name the strides and keep the unsafe pointer arithmetic in one place.

use std::mem::MaybeUninit;

use gemm::Parallelism;

/// A read-only m x n view: element (i, j) at `ptr + i * row_stride + j * col_stride`.
#[derive(Clone, Copy)]
pub struct View {
    pub ptr: *const f32,
    pub row_stride: isize,
    pub col_stride: isize,
}

impl View {
    /// A row-major view of `data` starting at `offset` with rows `row_stride` apart.
    pub fn rows(data: &[f32], offset: usize, row_stride: usize) -> Self {
        Self { ptr: data[offset..].as_ptr(), row_stride: row_stride as isize, col_stride: 1 }
    }

    /// The transpose of this view: no copy, only the strides swap.
    pub fn t(self) -> Self {
        Self { ptr: self.ptr, row_stride: self.col_stride, col_stride: self.row_stride }
    }
}

/// A writable view with the same addressing as [`View`].
#[derive(Clone, Copy)]
pub struct ViewMut {
    pub ptr: *mut f32,
    pub row_stride: isize,
    pub col_stride: isize,
}

impl ViewMut {
    /// A row-major view of `data` starting at `offset` with rows `row_stride` apart.
    pub fn rows(data: &mut [f32], offset: usize, row_stride: usize) -> Self {
        Self { ptr: data[offset..].as_mut_ptr(), row_stride: row_stride as isize, col_stride: 1 }
    }

    /// The same over memory not yet written: only a [`Write::Overwrite`] product may target
    /// it (that one never reads the destination).
    pub fn uninit_rows(data: &mut [MaybeUninit<f32>], offset: usize, row_stride: usize) -> Self {
        Self { ptr: data[offset..].as_mut_ptr().cast(), row_stride: row_stride as isize, col_stride: 1 }
    }
}

/// A vector of `len` floats whose every element `fill` writes; `fill` gets the spare capacity.
/// Skips the zero-fill of `vec![0.0; len]` for outputs that a product or a copy overwrites
/// whole (a pass over memory, a tenth of a small Linear's time).
///
/// # Safety
/// `fill` must initialise all `len` elements.
pub unsafe fn filled_vec(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    fill(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: the caller guarantees `fill` wrote all `len` elements.
    unsafe { out.set_len(len) };
    out
}

/// How a product lands in its destination.
#[derive(Clone, Copy)]
pub enum Write {
    /// dst = scale * lhs rhs
    Overwrite,
    /// dst = dst + scale * lhs rhs
    Accumulate,
}

/// dst (m x n) = [dst +] scale * lhs (m x k) * rhs (k x n).
///
/// # Safety
/// Every element the three views address for these m, n, k must lie inside live allocations,
/// and no other thread may touch the destination's elements while this runs.
pub unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: ViewMut,
    lhs: View,
    rhs: View,
    scale: f32,
    write: Write,
    parallelism: Parallelism,
) {
    let accumulate = matches!(write, Write::Accumulate);
    gemm::gemm(
        m,
        n,
        k,
        dst.ptr,
        dst.col_stride,
        dst.row_stride,
        accumulate,
        lhs.ptr,
        lhs.col_stride,
        lhs.row_stride,
        rhs.ptr,
        rhs.col_stride,
        rhs.row_stride,
        1.0,
        scale,
        false,
        false,
        false,
        parallelism,
    );
}

/// Rayon's threads for one large product, or none when the caller already runs in parallel.
pub fn threads_for_one_product() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}
