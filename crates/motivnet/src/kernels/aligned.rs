//! Buffers that start on a cache line, for the operands the AMX tiles and the int8 kernel read.
//!
//! A tile load reads 16 rows of 64 bytes; where a row does not start on a 64-byte line it
//! spans two, and the load costs about twice as much. A `Vec<u16>` starts where the allocator
//! puts it (16 bytes in from a line, here): a 32 x 32 block of a bf16 product at k = 384 with
//! both operands in the first-level cache took 20.4 ns a `tdpbf16ps` from such buffers and
//! 7.4 ns from buffers on a line (docs/BENCHMARKS.md, "Operands on cache lines").

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

/// The alignment the buffers keep: a cache line, and a tile row.
pub const LINE_BYTES: usize = 64;

/// One cache line of storage.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; LINE_BYTES]);

/// Element types whose all-zero bytes are a value, with no padding and no drop: what a line of
/// zeroed bytes may be read as.
///
/// # Safety
/// Implement only for such types, whose alignment divides 64.
pub unsafe trait Plain: Copy + Default {}
// SAFETY: integers and floats: no padding, every bit pattern a value, alignment at most 8.
unsafe impl Plain for u8 {}
unsafe impl Plain for i8 {}
unsafe impl Plain for u16 {}
unsafe impl Plain for i16 {}
unsafe impl Plain for i32 {}
unsafe impl Plain for f32 {}

/// A growable buffer of `T` whose first element starts on a 64-byte line (and so does each
/// 64-byte run from it). Dereferences to `[T]`; new elements are zero, as `vec![0; len]` and
/// `Vec::resize(len, 0)` make them.
pub struct AlignedVec<T: Plain> {
    lines: Vec<Line>,
    len: usize,
    _element: PhantomData<T>,
}

impl<T: Plain> AlignedVec<T> {
    /// An empty buffer (no allocation).
    pub const fn new() -> Self {
        Self { lines: Vec::new(), len: 0, _element: PhantomData }
    }

    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        let mut buffer = Self::new();
        buffer.resize(len);
        buffer
    }

    /// Grows or shrinks to `len` elements, keeping the allocation and the first
    /// `min(len, self.len())` values; elements past the old length are zero.
    pub fn resize(&mut self, len: usize) {
        let (old, old_lines) = (self.len, self.lines.len());
        self.lines.resize(lines_for::<T>(len), Line([0; LINE_BYTES]));
        self.len = len;
        // Lines kept from a longer length earlier may hold old values past `old`: zero those as
        // new (the lines added just now are zero already).
        let kept = len.min(old_lines * LINE_BYTES / std::mem::size_of::<T>());
        if kept > old {
            self[old..kept].fill(T::default());
        }
    }
}

fn lines_for<T>(len: usize) -> usize {
    (len * std::mem::size_of::<T>()).div_ceil(LINE_BYTES)
}

impl<T: Plain> Default for AlignedVec<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Plain> Deref for AlignedVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the lines hold at least len * size_of::<T>() initialised bytes, every pattern
        // of which is a T (`Plain`), and 64-byte alignment satisfies T's.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }
}

impl<T: Plain> DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }
}

impl<T: Plain> Clone for AlignedVec<T> {
    fn clone(&self) -> Self {
        Self { lines: self.lines.clone(), len: self.len, _element: PhantomData }
    }
}

impl<T: Plain + std::fmt::Debug> std::fmt::Debug for AlignedVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: Plain + PartialEq> PartialEq for AlignedVec<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_line_and_reads_as_zeros() {
        for len in [0, 1, 31, 32, 33, 1000] {
            let buffer = AlignedVec::<u16>::zeroed(len);
            assert_eq!(buffer.len(), len);
            assert_eq!(buffer.as_ptr() as usize % LINE_BYTES, 0, "len {len}");
            assert!(buffer.iter().all(|&v| v == 0));
        }
    }

    #[test]
    fn resizing_keeps_values_and_zeroes_new_ones() {
        let mut buffer = AlignedVec::<f32>::zeroed(40);
        buffer.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32 + 1.0);
        buffer.resize(10);
        assert_eq!(&buffer[..], &(1..=10).map(|i| i as f32).collect::<Vec<_>>()[..]);
        // The values once at 10..40 lie in lines the shrink kept: growing again shows zeros.
        buffer.resize(50);
        assert_eq!(&buffer[..10], &(1..=10).map(|i| i as f32).collect::<Vec<_>>()[..]);
        assert!(buffer[10..].iter().all(|&v| v == 0.0));
        assert_eq!(buffer.as_ptr() as usize % LINE_BYTES, 0);
    }
}
