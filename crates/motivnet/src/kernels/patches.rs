//! The rows of the patch-embedding matmul: each output token of a stride-k, kernel-k conv
//! with padding p is one row of 3 x k x k pixels, zeros where the window falls outside the
//! image. One parallel pass writes them.

use rayon::prelude::*;

/// Images (B, C, H, W), row-major, -> patch rows (B, gh * gw, C k k), in (channel, row,
/// column) order within a row, as the conv weight flattens.
pub fn patch_rows(
    pixels: &[f32],
    (b, c, h, w): (usize, usize, usize, usize),
    k: usize,
    p: usize,
    (gh, gw): (usize, usize),
) -> Vec<f32> {
    assert_eq!(pixels.len(), b * c * h * w, "patch_rows: the pixels do not fit the shape");
    let width = c * k * k;
    let mut rows = vec![0f32; b * gh * gw * width];
    rows.par_chunks_mut(width).enumerate().for_each(|(token, row)| {
        let (img, gi, gj) = (token / (gh * gw), token / gw % gh, token % gw);
        for ch in 0..c {
            let plane = &pixels[(img * c + ch) * h * w..][..h * w];
            for di in 0..k {
                // Image row read by this kernel row; rows in the padding stay zero.
                let Some(y) = (gi * k + di).checked_sub(p).filter(|&y| y < h) else { continue };
                // The kernel columns dj whose image column gj k + dj - p lies in 0..w, copied as
                // one run (columns in the padding stay zero). Value by value, with a range check
                // each, this pass took a fourteenth of tiny's bf16 forward.
                let first = p.saturating_sub(gj * k).min(k);
                let end = (w + p).saturating_sub(gj * k).clamp(first, k);
                if first < end {
                    let x0 = gj * k + first - p;
                    let to = &mut row[(ch * k + di) * k..][first..end];
                    let from = &plane[y * w + x0..][..end - first];
                    // A whole run of every preset's 16-pixel patches is one fixed-size copy (a
                    // vector load and store) rather than a call to memcpy, which for 64 bytes
                    // cost as much as the copy: 1 ms of tiny's 22 ms bf16 forward went there.
                    match (<&mut [f32; 16]>::try_from(&mut *to), <&[f32; 16]>::try_from(from)) {
                        (Ok(to), Ok(from)) => *to = *from,
                        _ => to.copy_from_slice(from),
                    }
                }
            }
        }
    });
    rows
}
