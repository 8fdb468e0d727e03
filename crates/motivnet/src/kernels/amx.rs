//! bf16 matrix products on Intel AMX tiles, for `precision: 'bf16'` on CPUs that have them, and
//! on AVX512_BF16's dot products from the same operands on CPUs that have only those
//! ([`super::bf16_dot`]).
//!
//! C (m x n, f32) = A (m x k, f32, rounded to bf16) times B (k x n, packed once as bf16): the
//! products run on `tdpbf16ps`, which multiplies 16 x 32 bf16 by 32 x 16 bf16 into 16 x 16
//! f32 sums in one instruction, about six times the f32 rate of AVX-512 on the same core. The
//! sums are f32; only the operands are rounded, as `torch.autocast(bfloat16)` rounds them.
//!
//! A block of 32 x 32 of C lives in four accumulator tiles over all of k, zeroed (or started
//! from a bias) at the start and stored once at the end; each step of 32 along k loads two tiles of A
//! (rows 0-15 and 16-31 of a 32-row panel converted to bf16 once) and two of B (columns 0-15 and
//! 16-31 of a column block, packed as the instruction wants: pairs of k interleaved per column,
//! each block of 32 columns contiguous), and asks the cache for the next step's B while the
//! products run. A task takes up to eight row panels (fewer where their bf16 would pass 1 MB,
//! half the second-level cache, or where that shares them evenly between the threads) and sweeps B's column blocks once for all of them, so each column block
//! comes from memory once per task and from the core's caches for the panels after the first;
//! tasks run on rayon's threads, each thread configuring its tiles once. Panels, packed B and
//! the block sums start on cache lines ([`super::aligned`]): a tile row that straddles two
//! lines costs about twice as much to load.
//! Written as inline assembly (AMX intrinsics are not in stable Rust); the tiles run only
//! where [`tiles`] says the CPU has AMX and the kernel lets this process use it, the dot
//! products where [`available`] holds without them.

use std::arch::asm;
use std::cell::{Cell, RefCell};
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::aligned::AlignedVec;
use super::gelu::{gelu_chunk, gelu_in_place};
use super::Shared;

/// Rows and columns of a block of C (two tiles each way).
pub(super) const BLOCK: usize = 32;
/// bf16 values along k per tile step (64 bytes of a tile row).
pub(super) const K_STEP: usize = 32;
/// Row panels one task converts and multiplies together (see the module's notes).
const PANELS_PER_TASK: usize = 8;
/// Bytes of bf16 row panels a task holds at most: half this CPU's second-level cache, so that
/// they stay there beside the column block of B they meet. At k = 4096 (sapiens-0.3b's fc2)
/// eight panels were 2 MB, the whole cache: a task of 4 ran that product 25-35% faster.
const TASK_PANEL_BYTES: usize = 1 << 20;
/// Bytes of B one k-step of a column block reads: 32 values of k for 32 columns, in bf16.
const B_STEP_BYTES: usize = K_STEP * BLOCK * 2;
/// Cache lines a k-step of B spans.
const B_STEP_LINES: usize = B_STEP_BYTES / 64;
/// A row of zeros for the transposes' padding rows.
#[cfg(target_arch = "x86_64")]
static ZEROS: [f32; BLOCK] = [0.0; BLOCK];

/// Whether bf16 products can run here: on AMX tiles ([`tiles`]), or else on AVX512_BF16's dot
/// products ([`super::bf16_dot`]), with AVX512DQ and AVX512BW beside it (the bf16 attention's
/// exponentials and the packing's interleaves use them). `MOTIVNET_BF16=off` says no, to
/// compare or to rule bf16 out on the CPU.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var("MOTIVNET_BF16").is_ok_and(|v| v.trim() == "off") {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            avx512_bf16_available() && is_x86_feature_detected!("avx512dq") && is_x86_feature_detected!("avx512bw")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// Whether the bf16 products run on AMX tiles: [`available`] holds, the CPU has AMX-TILE and
/// AMX-BF16 (CPUID leaf 7), and Linux grants this process the tile state
/// (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), asked once. `MOTIVNET_AMX=off` says no: the products
/// then run on the dot products, to compare the two.
pub fn tiles() -> bool {
    static TILES: OnceLock<bool> = OnceLock::new();
    *TILES.get_or_init(|| {
        if !available() || std::env::var("MOTIVNET_AMX").is_ok_and(|v| v.trim() == "off") {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
            let (amx_bf16, amx_tile) = (leaf7.edx >> 22 & 1 == 1, leaf7.edx >> 24 & 1 == 1);
            amx_bf16 && amx_tile && request_tile_permission()
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tile_permission() -> bool {
    false
}

/// f32 -> bf16 with round-to-nearest-even (NaN kept a NaN). Branch-free, so a loop of it
/// vectorises.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let nan = (bits & 0x7fff_ffff) > 0x7f80_0000;
    (if nan { (bits >> 16) | 0x40 } else { rounded }) as u16
}

/// bf16 -> f32 (exact).
#[cfg(test)]
pub fn from_bf16(v: u16) -> f32 {
    f32::from_bits((v as u32) << 16)
}

/// B (k x n) as `tdpbf16ps` reads it, zero-padded to multiples of 32: column block `jb` (32
/// columns) is contiguous, `kp / 2` pair-rows of 64 values, pair-row p holding for each of
/// its columns j the pair (B[2p][j], B[2p+1][j]).
pub struct PackedB {
    pub k: usize,
    pub n: usize,
    kp: usize,
    np: usize,
    data: AlignedVec<u16>,
}

impl PackedB {
    /// Zeros for k x n, padded.
    fn zeroed(k: usize, n: usize) -> Self {
        let (kp, np) = (k.div_ceil(K_STEP) * K_STEP, n.div_ceil(BLOCK) * BLOCK);
        Self { k, n, kp, np, data: AlignedVec::zeroed(np * kp) }
    }

    /// Fills each column block with `fill(jb, j0, cols, block)`, over rayon's threads or not.
    fn fill_blocks(mut self, parallel: bool, fill: impl Fn(usize, usize, &mut [u16]) + Sync) -> Self {
        let (n, block_len) = (self.n, (self.kp * BLOCK).max(1));
        let each = |(jb, block): (usize, &mut [u16])| fill(jb * BLOCK, BLOCK.min(n - jb * BLOCK), block);
        if parallel {
            self.data.par_chunks_mut(block_len).enumerate().for_each(each);
        } else {
            self.data.chunks_mut(block_len).enumerate().for_each(each);
        }
        self
    }

    /// B = W^T for a Linear weight W (n x k, row-major: out x in).
    pub fn from_weight(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "PackedB::from_weight: the weight is not n x k");
        Self::from_transposed_rows(w, 0, k, n, k, true)
    }

    /// B = the transpose of n rows of k values, `stride` apart from `offset` in `src` (a
    /// Linear's weight, one head's keys in a packed qkv buffer).
    pub fn from_transposed_rows(src: &[f32], offset: usize, stride: usize, n: usize, k: usize, parallel: bool) -> Self {
        assert!(n == 0 || offset + (n - 1) * stride + k <= src.len(), "PackedB: rows outside the buffer");
        Self::zeroed(k, n).fill_blocks(parallel, |j0, cols, block| {
            #[cfg(target_arch = "x86_64")]
            if avx512_bf16_available() {
                let rows: [&[f32]; BLOCK] =
                    std::array::from_fn(|c| if c < cols { &src[offset + (j0 + c) * stride..][..k] } else { &[] });
                for c0 in (0..cols).step_by(16) {
                    // SAFETY: the CPU has AVX-512F and AVX512_BF16 (checked above); the rows lie
                    // inside `src` (asserted above), 1 to 16 of them from c0 < 32, and the block
                    // holds kp / 2 pair-rows.
                    unsafe { pack_transposed_rows16_avx512(block, c0, &rows[c0..cols.min(c0 + 16)]) };
                }
                return;
            }
            for c in 0..cols {
                let row = &src[offset + (j0 + c) * stride..][..k];
                for (pair_row, pair) in block.chunks_exact_mut(2 * BLOCK).zip(row.chunks(2)) {
                    pair_row[2 * c] = to_bf16(pair[0]);
                    if let Some(&second) = pair.get(1) {
                        pair_row[2 * c + 1] = to_bf16(second);
                    }
                }
            }
        })
    }

    /// B = k rows of n values, `stride` apart from `offset` in `src` (one head's values, a
    /// Linear's input for its weight's gradient). Each task takes one k-step (32 rows of `src`,
    /// read in order) and writes its 16 pair-rows in every column block, as
    /// [`Bf16Rows::set_transposed`] reads its rows.
    pub fn from_rows(src: &[f32], offset: usize, stride: usize, k: usize, n: usize, parallel: bool) -> Self {
        assert!(k == 0 || offset + (k - 1) * stride + n <= src.len(), "PackedB: rows outside the buffer");
        let mut packed = Self::zeroed(k, n);
        let (kp, blocks) = (packed.kp, packed.np / BLOCK);
        let data = Shared(packed.data.as_mut_ptr());
        let fill_step = |s: usize| {
            for jb in 0..blocks {
                let (j0, cols) = (jb * BLOCK, BLOCK.min(n - jb * BLOCK));
                for p in s * K_STEP / 2..((s + 1) * K_STEP / 2).min(k.div_ceil(2)) {
                    // SAFETY: pair-row p of column block jb lies inside the data (np / 32 blocks
                    // of kp / 2 pair-rows of 64 values), and only the task of this k-step writes it.
                    let pair_row =
                        unsafe { std::slice::from_raw_parts_mut(data.at(jb * kp * BLOCK + p * 2 * BLOCK), 2 * cols) };
                    let first = &src[offset + 2 * p * stride + j0..][..cols];
                    if 2 * p + 1 == k {
                        for (c, &a) in first.iter().enumerate() {
                            pair_row[2 * c] = to_bf16(a);
                        }
                        continue;
                    }
                    let second = &src[offset + (2 * p + 1) * stride + j0..][..cols];
                    #[cfg(target_arch = "x86_64")]
                    if cols == BLOCK && avx512_bf16_available() {
                        // SAFETY: the CPU has AVX-512F and AVX512_BF16 (checked above); both rows
                        // and the pair-row are 32 columns long.
                        unsafe { interleave_pair_row_avx512(pair_row, first, second) };
                        continue;
                    }
                    for (c, (&a, &b)) in first.iter().zip(second).enumerate() {
                        pair_row[2 * c] = to_bf16(a);
                        pair_row[2 * c + 1] = to_bf16(b);
                    }
                }
            }
        };
        if parallel {
            (0..kp / K_STEP).into_par_iter().for_each(fill_step);
        } else {
            (0..kp / K_STEP).for_each(fill_step);
        }
        packed
    }

    /// B = the transpose of `tokens` rows of `src` from row `row0` (both multiples of 32), `steps`
    /// k-steps of each from k-step `step0`: one head's keys in a qkv product's bf16 panels, for
    /// the scores q k^T. A k-step of a panel (32 rows of 16 pairs) becomes 16 pair-rows of 32
    /// columns: the same 2 KB, transposed as pairs. The keys are read in bf16, where packing them
    /// from f32 read twice the bytes, scattered across the qkv rows, and rounded each value.
    pub fn from_bf16_key_steps(src: &Bf16Rows, row0: usize, tokens: usize, step0: usize, steps: usize) -> Self {
        check_panel_steps(src, row0, tokens, step0, steps, "PackedB::from_bf16_key_steps");
        let (layout, mut packed) = (src.layout(), Self::zeroed(steps * K_STEP, tokens));
        let kp = packed.kp;
        for jb in 0..tokens / BLOCK {
            for s in 0..steps {
                let from = &src.data[layout.step_offset(row0 + jb * BLOCK, step0 + s)..][..BLOCK * K_STEP];
                let to = &mut packed.data[jb * kp * BLOCK + s * K_STEP * BLOCK..][..BLOCK * K_STEP];
                transpose_pairs(to.try_into().expect("a k-step"), from.try_into().expect("a k-step"));
            }
        }
        packed
    }

    /// B = `tokens` rows of `src` from row `row0` (both multiples of 32), `steps` k-steps of
    /// each from k-step `step0`: one head's values in a qkv product's bf16 panels, for the
    /// product p v. Each pair of rows of a panel's k-step becomes one pair-row, their values
    /// interleaved.
    pub fn from_bf16_value_steps(src: &Bf16Rows, row0: usize, tokens: usize, step0: usize, steps: usize) -> Self {
        check_panel_steps(src, row0, tokens, step0, steps, "PackedB::from_bf16_value_steps");
        let (layout, mut packed) = (src.layout(), Self::zeroed(tokens, steps * K_STEP));
        let kp = packed.kp;
        for jb in 0..steps {
            for t0 in (0..tokens).step_by(BLOCK) {
                let from = &src.data[layout.step_offset(row0 + t0, step0 + jb)..][..BLOCK * K_STEP];
                let to = &mut packed.data[jb * kp * BLOCK + t0 * BLOCK..][..BLOCK * K_STEP];
                interleave_row_pairs(to.try_into().expect("a k-step"), from.try_into().expect("a k-step"));
            }
        }
        packed
    }

    /// Column block `jb`'s values.
    fn column_block(&self, jb: usize) -> &[u16] {
        &self.data[jb * self.kp * BLOCK..][..self.kp * BLOCK]
    }
}

/// Panics unless rows row0 .. row0 + tokens (both multiples of 32) and k-steps step0 .. step0 +
/// steps lie inside `src`.
fn check_panel_steps(src: &Bf16Rows, row0: usize, tokens: usize, step0: usize, steps: usize, what: &str) {
    assert!(
        row0.is_multiple_of(BLOCK)
            && tokens.is_multiple_of(BLOCK)
            && row0 + tokens <= src.rows
            && step0 + steps <= src.kp / K_STEP,
        "{what}: rows {row0}..+{tokens} and k-steps {step0}..+{steps} of {} x {} (rows and start must be multiples of 32)",
        src.rows,
        src.k
    );
}

/// A panel's k-step (32 rows of 16 pairs of values) as 16 pair-rows of 32 columns: pair p of
/// row t moves to column t of pair-row p.
fn transpose_pairs(to: &mut [u16; BLOCK * K_STEP], from: &[u16; BLOCK * K_STEP]) {
    #[cfg(target_arch = "x86_64")]
    if avx512_bf16_available() {
        // SAFETY: the CPU has AVX-512F (checked above).
        unsafe { transpose_pairs_avx512(to, from) };
        return;
    }
    for t in 0..BLOCK {
        for p in 0..K_STEP / 2 {
            to[p * 2 * BLOCK + 2 * t..][..2].copy_from_slice(&from[t * K_STEP + 2 * p..][..2]);
        }
    }
}

/// [`transpose_pairs`] as two 16 x 16 transposes of 32-bit words in registers.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_pairs_avx512(to: &mut [u16; BLOCK * K_STEP], from: &[u16; BLOCK * K_STEP]) {
    use std::arch::x86_64::*;
    for half in 0..2 {
        let rows: [__m512i; 16] =
            std::array::from_fn(|t| _mm512_loadu_si512(from.as_ptr().add((16 * half + t) * K_STEP).cast()));
        for (p, pairs) in transpose_words_16x16(rows).into_iter().enumerate() {
            _mm512_storeu_si512(to.as_mut_ptr().add(p * 2 * BLOCK + 32 * half).cast(), pairs);
        }
    }
}

/// A panel's k-step (32 rows of 32 values) as 16 pair-rows: value c of rows 2q and 2q + 1 side
/// by side at words 2c and 2c + 1 of pair-row q, as the tiles read B.
fn interleave_row_pairs(to: &mut [u16; BLOCK * K_STEP], from: &[u16; BLOCK * K_STEP]) {
    #[cfg(target_arch = "x86_64")]
    if avx512_bf16_available() && is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has AVX-512F and AVX512BW (checked above).
        unsafe { interleave_row_pairs_avx512(to, from) };
        return;
    }
    for q in 0..BLOCK / 2 {
        for c in 0..K_STEP {
            to[q * 2 * BLOCK + 2 * c] = from[2 * q * K_STEP + c];
            to[q * 2 * BLOCK + 2 * c + 1] = from[(2 * q + 1) * K_STEP + c];
        }
    }
}

/// [`interleave_row_pairs`] two rows at a time, each half of a pair-row one `vpermt2w`.
///
/// # Safety
/// The CPU has AVX-512F and AVX512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn interleave_row_pairs_avx512(to: &mut [u16; BLOCK * K_STEP], from: &[u16; BLOCK * K_STEP]) {
    use std::arch::x86_64::*;
    // Word 2c of a half takes value c of the first row (index c), word 2c + 1 value c of the
    // second (index 32 + c); the second half starts at c = 16.
    let low: [i16; 32] = std::array::from_fn(|w| ((w / 2) + 32 * (w % 2)) as i16);
    let high: [i16; 32] = std::array::from_fn(|w| (16 + (w / 2) + 32 * (w % 2)) as i16);
    let (low, high) = (_mm512_loadu_si512(low.as_ptr().cast()), _mm512_loadu_si512(high.as_ptr().cast()));
    for q in 0..BLOCK / 2 {
        let first = _mm512_loadu_si512(from.as_ptr().add(2 * q * K_STEP).cast());
        let second = _mm512_loadu_si512(from.as_ptr().add((2 * q + 1) * K_STEP).cast());
        let dst = to.as_mut_ptr().add(q * 2 * BLOCK);
        _mm512_storeu_si512(dst.cast(), _mm512_permutex2var_epi16(first, low, second));
        _mm512_storeu_si512(dst.add(K_STEP).cast(), _mm512_permutex2var_epi16(first, high, second));
    }
}

/// A (m x k): m rows of k f32 values, `stride` apart from `offset` in `data`.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub stride: usize,
    pub rows: usize,
}

impl Rows<'_> {
    /// A contiguous row-major m x k matrix.
    pub fn contiguous(data: &[f32], k: usize) -> Rows<'_> {
        Rows { data, offset: 0, stride: k, rows: data.len() / k.max(1) }
    }
}

/// A matrix already rounded to bf16 as the product reads it: panels of 32 rows in k-steps
/// ([`write_panel_row`]), k padded with zeros to a multiple of 32 and rows with zero rows to a
/// multiple of 32.
#[derive(Default)]
pub struct Bf16Rows {
    rows: usize,
    k: usize,
    kp: usize,
    data: AlignedVec<u16>,
}

impl Bf16Rows {
    /// Makes room for rows x k, keeping the allocation; the padding rows are zeroed, the rows
    /// themselves are left for [`Bf16Rows::set_row`] to write, every one of them.
    pub fn reset(&mut self, rows: usize, k: usize) {
        let (padded, kp) = (rows.div_ceil(BLOCK) * BLOCK, k.div_ceil(K_STEP) * K_STEP);
        (self.rows, self.k, self.kp) = (rows, k, kp);
        self.data.resize(padded * kp);
        if rows < padded {
            let last = &mut self.data[(padded - BLOCK) * kp..];
            for row in rows % BLOCK..BLOCK {
                write_panel_row(last, row, &[], 0.0);
            }
        }
    }

    /// The transpose of `src` (rows x cols, row-major) rounded to bf16: cols rows of `rows`
    /// values, row i being column i of `src`. The left operand of a weight's gradient
    /// dW = dy^T x, whose sums run over the batch's tokens, the rows of both dy and x. Each task
    /// takes 32 rows of `src` (one k-step of every panel), read in order, and writes each
    /// panel's 2 KB step from them. With a task per panel instead, each task read 128 bytes of
    /// every row of `src`: 1536 x 768 took 0.8 ms against 0.42 (1.1 ms when each value was
    /// also written on its own). Each 32 x 32 step is now transposed in registers
    /// ([`transpose_step_avx512`]), the rows past the last as zeros; a narrow last panel, or a
    /// CPU without AVX512_BF16, is filled value by value.
    /// `parallel`: the steps over rayon's threads, else on this one.
    pub fn set_transposed(&mut self, src: &[f32], rows: usize, cols: usize, parallel: bool) {
        assert_eq!(src.len(), rows * cols, "Bf16Rows::set_transposed: src is not rows x cols");
        self.reset(cols, rows);
        let (kp, panels) = (self.kp, cols.div_ceil(BLOCK));
        let data = Shared(self.data.as_mut_ptr());
        let fill_step = |s: usize| {
            let (t0, depth) = (s * K_STEP, K_STEP.min(rows - (s * K_STEP).min(rows)));
            for p in 0..panels {
                let (c0, width) = (p * BLOCK, BLOCK.min(cols - p * BLOCK));
                // SAFETY: step s of panel p lies inside the data (panels x 32 rows of kp) and
                // only this task, the one of step s, writes it.
                let step: &mut [u16; BLOCK * K_STEP] =
                    unsafe { &mut *data.at(p * BLOCK * kp + s * BLOCK * K_STEP).cast::<[u16; BLOCK * K_STEP]>() };
                #[cfg(target_arch = "x86_64")]
                if width == BLOCK && avx512_bf16_available() {
                    // Rows past the last are zeros: k's padding in the step the rows end in.
                    let row = |t: usize| if t < depth { &src[(t0 + t) * cols + c0..][..BLOCK] } else { &ZEROS[..] };
                    // SAFETY: the CPU has AVX-512F and AVX512_BF16 (checked above); every row
                    // holds 32 values.
                    unsafe { transpose_step_avx512(step, row) };
                    continue;
                }
                for t in 0..depth {
                    let row = &src[(t0 + t) * cols + c0..][..width];
                    for (r, &v) in row.iter().enumerate() {
                        step[r * K_STEP + t] = to_bf16(v);
                    }
                }
                // k's padding in the step the rows end in (padding rows were zeroed by reset).
                for r in 0..width {
                    step[r * K_STEP + depth..(r + 1) * K_STEP].fill(0);
                }
            }
        };
        if parallel {
            (0..kp / K_STEP).into_par_iter().for_each(fill_step);
        } else {
            (0..kp / K_STEP).for_each(fill_step);
        }
    }

    /// The rows held (padding rows aside).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The values a row holds (its padding aside).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Where the k-steps of each panel lie in [`Bf16Rows::values`].
    pub fn layout(&self) -> PanelLayout {
        PanelLayout { kp: self.kp }
    }

    /// The panels, padding included.
    pub fn values(&self) -> &[u16] {
        &self.data
    }

    /// The panels, to be written in place by callers that share their k-steps out between
    /// threads (the attention's heads write their own k-steps of each panel).
    pub fn values_mut_ptr(&mut self) -> *mut u16 {
        self.data.as_mut_ptr()
    }

    /// Row i = bf16(scale * src) (k values).
    #[cfg(test)]
    pub fn set_row(&mut self, i: usize, src: &[f32], scale: f32) {
        assert!(i < self.rows && src.len() == self.k, "Bf16Rows::set_row: row {i} of {} x {}", self.rows, self.k);
        let kp = self.kp;
        write_panel_row(&mut self.data[(i / BLOCK) * BLOCK * kp..][..BLOCK * kp], i % BLOCK, src, scale);
    }
}

/// Where a [`Bf16Rows`]'s k-steps lie: what a caller that writes them through a raw pointer
/// keeps of it.
#[derive(Clone, Copy)]
pub struct PanelLayout {
    kp: usize,
}

impl PanelLayout {
    /// Where k-step `step` of the panel that starts at row `row0` (a multiple of 32) begins: 32
    /// rows of 32 values, each row's values together, 64-byte aligned.
    pub fn step_offset(self, row0: usize, step: usize) -> usize {
        debug_assert!(row0.is_multiple_of(BLOCK) && step < self.kp / K_STEP, "a k-step outside the panels");
        row0 * self.kp + step * BLOCK * K_STEP
    }
}

/// Whether this CPU converts f32 to bf16 in one instruction (AVX512_BF16, which every CPU with
/// AMX has) beside AVX-512F.
#[cfg(target_arch = "x86_64")]
fn avx512_bf16_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16"))
}

/// A, the left operand, as the product reads it.
#[derive(Clone, Copy)]
pub enum Lhs<'a> {
    /// f32 rows, scaled and rounded to bf16 as each task reads them.
    F32 { rows: Rows<'a>, scale: f32 },
    /// LayerNorm of f32 rows (`weight`, `bias`: k values each), normalized and rounded to bf16
    /// as each task reads them ([`super::layer_norm::layer_norm_row`]: the values LayerNorm
    /// gives, so the same bits as normalizing first): a pre-norm block's Linear that reads its
    /// input once and writes no normalized copy of it.
    Normalized { rows: Rows<'a>, weight: &'a [f32], bias: &'a [f32], eps: f32 },
    /// Rows already in bf16.
    Bf16(&'a Bf16Rows),
}

impl Lhs<'_> {
    fn rows(&self) -> usize {
        match self {
            Lhs::F32 { rows, .. } | Lhs::Normalized { rows, .. } => rows.rows,
            Lhs::Bf16(b) => b.rows,
        }
    }
}

/// The tile configuration: palette 1, tiles 0-7 of 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

thread_local! {
    static CONFIGURED: Cell<bool> = const { Cell::new(false) };
    /// This thread's bf16 row panels, reused across calls.
    static PANELS: RefCell<AlignedVec<u16>> = const { RefCell::new(AlignedVec::new()) };
}

/// Loads the tile configuration on this thread, once.
pub(super) fn configure_tiles() {
    if !tiles() {
        return;
    }
    CONFIGURED.with(|done| {
        if done.get() {
            return;
        }
        let mut cfg = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
        for t in 0..8 {
            cfg.colsb[t] = 64;
            cfg.rows[t] = 16;
        }
        // SAFETY: `tiles()` holds; the configuration is valid for palette 1.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &cfg as *const TileConfig, options(nostack)) };
        done.set(true);
    });
}

crate::simd_dispatch! {
    /// Row `row` (0..32) of a 32-row panel as the tiles read it: the panel is kp / 32 k-steps, each
    /// the 32 rows' 32 values of that step back to back (2 KB), so a tile of 16 rows is 1 KB read
    /// in order. Rows of a plain row-major panel lie `kp` apart: each of a tile's 16 rows was then
    /// its own stream through memory, more than the prefetchers follow, and the product waited on
    /// them (780 against 830 GFLOP/s on this machine's 2048^3 roof, and more at the model's
    /// sizes). dst = bf16(scale * src), zeros past `src` to kp.
    fn write_panel_row_portable(panel: &mut [u16], row: usize, src: &[f32], scale: f32) {
        let steps = panel.len() / BLOCK / K_STEP;
        let whole = src.len() / K_STEP;
        // Whole steps as fixed-size arrays: no bounds checks inside, 32 values in two vectors.
        for step in 0..whole.min(steps) {
            let dst: &mut [u16; K_STEP] =
                (&mut panel[step * BLOCK * K_STEP + row * K_STEP..][..K_STEP]).try_into().expect("a k-step");
            let part: &[f32; K_STEP] = src[step * K_STEP..][..K_STEP].try_into().expect("a k-step");
            for (d, &v) in dst.iter_mut().zip(part) {
                *d = to_bf16(v * scale);
            }
        }
        // The step `src` ends in, and the padding steps after it.
        for step in whole..steps {
            let dst = &mut panel[step * BLOCK * K_STEP + row * K_STEP..][..K_STEP];
            round_into(dst, &src[(step * K_STEP).min(src.len())..], scale);
        }
    }
}

/// One pair-row of a packed column block from two rows of B, 32 columns each: word c holds
/// (first[c], second[c]) rounded to bf16 (`vcvtneps2bf16`, as [`to_bf16`] for every normal
/// value), the first in its low half as the tiles read it. Two stores of 64 bytes, where the
/// portable loop wrote one value at a time.
///
/// # Safety
/// The CPU has AVX-512F and AVX512_BF16; `pair_row` holds 64 values and each row 32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn interleave_pair_row_avx512(pair_row: &mut [u16], first: &[f32], second: &[f32]) {
    use std::arch::x86_64::*;
    assert!(pair_row.len() >= 2 * BLOCK && first.len() >= BLOCK && second.len() >= BLOCK);
    for half in 0..2 {
        let pairs = pair_words(first.as_ptr().add(16 * half), second.as_ptr().add(16 * half));
        _mm512_storeu_si512(pair_row.as_mut_ptr().add(32 * half).cast(), pairs);
    }
}

/// 16 32-bit words, word i holding (a[i], b[i]) rounded to bf16, a[i] in its low half as the
/// tiles read a pair: what both the packing of B from rows and the transposing fill of A write.
///
/// # Safety
/// The CPU has AVX-512F and AVX512_BF16; a and b each address 16 readable floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
#[inline]
unsafe fn pair_words(a: *const f32, b: *const f32) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let low = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(_mm512_loadu_ps(a))));
    let high = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(_mm512_loadu_ps(b))));
    _mm512_or_si512(low, _mm512_slli_epi32::<16>(high))
}

/// 16 rows of 16 32-bit words transposed in registers: word j of row i becomes word i of row j.
/// Four rounds of 16 shuffles (pairs of words, pairs of pairs, then the 128-bit lanes twice),
/// where scattering each row down a column costs a store per word.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn transpose_words_16x16(rows: [std::arch::x86_64::__m512i; 16]) -> [std::arch::x86_64::__m512i; 16] {
    use std::arch::x86_64::*;
    // Within each 128-bit lane: words of rows 2i and 2i + 1 interleaved, then pairs of rows 4g ..
    // 4g + 3, so that quads[4g + c] holds, in lane l, rows 4g .. 4g + 3 of column 4l + c.
    let pairs: [__m512i; 16] = std::array::from_fn(|i| {
        let (a, b) = (rows[i & !1], rows[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_epi32(a, b)
        } else {
            _mm512_unpackhi_epi32(a, b)
        }
    });
    let quads: [__m512i; 16] = std::array::from_fn(|i| {
        let (g, c) = (i / 4, i % 4);
        let (a, b) = (pairs[4 * g + c / 2], pairs[4 * g + c / 2 + 2]);
        if c % 2 == 0 {
            _mm512_unpacklo_epi64(a, b)
        } else {
            _mm512_unpackhi_epi64(a, b)
        }
    });
    // Then the 4 x 4 lanes of each column group c transposed: column 4l + c gathers lane l of
    // quads[c], quads[4 + c], quads[8 + c], quads[12 + c], in that order.
    let mut out = [_mm512_setzero_si512(); 16];
    for c in 0..4 {
        let even01 = _mm512_shuffle_i32x4::<0x88>(quads[c], quads[4 + c]);
        let odd01 = _mm512_shuffle_i32x4::<0xdd>(quads[c], quads[4 + c]);
        let even23 = _mm512_shuffle_i32x4::<0x88>(quads[8 + c], quads[12 + c]);
        let odd23 = _mm512_shuffle_i32x4::<0xdd>(quads[8 + c], quads[12 + c]);
        out[c] = _mm512_shuffle_i32x4::<0x88>(even01, even23);
        out[8 + c] = _mm512_shuffle_i32x4::<0xdd>(even01, even23);
        out[4 + c] = _mm512_shuffle_i32x4::<0x88>(odd01, odd23);
        out[12 + c] = _mm512_shuffle_i32x4::<0xdd>(odd01, odd23);
    }
    out
}

/// Columns `c0 ..` of a packed column block from up to 16 rows of `k` values (B's columns: a
/// Linear's weight rows, one head's keys): each 32 values of a row rounded at once into 16
/// pairs, the rows' pairs transposed in registers ([`transpose_words_16x16`]) so that each
/// pair-row's 16 words are one store (zeros in the columns past the rows, which are padding);
/// the tail as [`to_bf16`] does. Scattering each pair down its column instead cost a store per
/// word.
///
/// # Safety
/// The CPU has AVX-512F and AVX512_BF16; `block` holds at least k.div_ceil(2) pair-rows of 64
/// values, there are 1 to 16 rows, all k long, and c0 + 16 <= 32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn pack_transposed_rows16_avx512(block: &mut [u16], c0: usize, rows: &[&[f32]]) {
    use std::arch::x86_64::*;
    let k = rows[0].len();
    let whole = k / 32;
    assert!(
        block.len() >= k.div_ceil(2) * 2 * BLOCK
            && c0 + 16 <= BLOCK
            && rows.len() <= 16
            && rows.iter().all(|r| r.len() == k),
        "pack_transposed_rows16: the block is too small or the rows differ"
    );
    for chunk in 0..whole {
        let rounded: [__m512i; 16] = std::array::from_fn(|c| {
            let Some(row) = rows.get(c) else { return _mm512_setzero_si512() };
            let at = row.as_ptr().add(chunk * 32);
            // Little-endian: the pair's first value is the word's low half, as the tiles read it.
            std::mem::transmute(_mm512_cvtne2ps_pbh(_mm512_loadu_ps(at.add(16)), _mm512_loadu_ps(at)))
        });
        for (i, words) in transpose_words_16x16(rounded).into_iter().enumerate() {
            let pair_row = block.as_mut_ptr().add((chunk * 16 + i) * 2 * BLOCK + 2 * c0);
            _mm512_storeu_si512(pair_row.cast(), words);
        }
    }
    for (c, row) in rows.iter().enumerate() {
        for kk in whole * 32..k {
            block[(kk / 2) * 2 * BLOCK + 2 * (c0 + c) + kk % 2] = to_bf16(row[kk]);
        }
    }
}

/// A whole 32 x 32 k-step of a [`Bf16Rows`] panel from the 32 rows of the matrix it
/// transposes (`row(t)`, 32 values each): panel row r gets (row(t)[r], row(t + 1)[r]) as the
/// word at k t, t + 1. Pairs of rows are rounded into words ([`pair_words`]) and each half of
/// the panel's rows transposed in registers ([`transpose_words_16x16`]), so that each panel
/// row's 16 words are one store; scattering each word down the step instead cost a store per
/// word.
///
/// # Safety
/// The CPU has AVX-512F and AVX512_BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn transpose_step_avx512<'a>(step: &mut [u16; BLOCK * K_STEP], row: impl Fn(usize) -> &'a [f32]) {
    use std::arch::x86_64::*;
    let rows: [&[f32]; K_STEP] = std::array::from_fn(&row);
    assert!(rows.iter().all(|r| r.len() >= BLOCK), "transpose_step: a row is short");
    for half in 0..2 {
        let words: [__m512i; 16] = std::array::from_fn(|q| {
            let (first, second) = (rows[2 * q], rows[2 * q + 1]);
            pair_words(first.as_ptr().add(16 * half), second.as_ptr().add(16 * half))
        });
        for (r, panel_row) in transpose_words_16x16(words).into_iter().enumerate() {
            _mm512_storeu_si512(step.as_mut_ptr().add((16 * half + r) * K_STEP).cast(), panel_row);
        }
    }
}

/// [`write_panel_row_portable`]'s layout and values, with AVX512_BF16 where the CPU has it:
/// whole k-steps scaled and rounded 32 values at a time by `vcvtne2ps2bf16` (round to nearest
/// even, as [`to_bf16`]; values below f32's normal range become zero), the rest as before.
pub(super) fn write_panel_row(panel: &mut [u16], row: usize, src: &[f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if avx512_bf16_available() {
        let whole = (src.len() / K_STEP).min(panel.len() / (BLOCK * K_STEP));
        // SAFETY: the CPU has AVX-512F and AVX512_BF16 (checked above).
        unsafe { round_steps_avx512(panel, row, &src[..whole * K_STEP], scale) };
        let rest = &mut panel[whole * BLOCK * K_STEP..];
        write_panel_row_portable(rest, row, &src[whole * K_STEP..], scale);
        return;
    }
    write_panel_row_portable(panel, row, src, scale);
}

/// Whole k-steps of row `row` = bf16(scale * src), src.len() a multiple of 32.
///
/// # Safety
/// The CPU has AVX-512F and AVX512_BF16; the panel holds src.len() / 32 k-steps.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn round_steps_avx512(panel: &mut [u16], row: usize, src: &[f32], scale: f32) {
    use std::arch::x86_64::*;
    let scale = _mm512_set1_ps(scale);
    for (step, part) in src.chunks_exact(K_STEP).enumerate() {
        let low = _mm512_mul_ps(_mm512_loadu_ps(part.as_ptr()), scale);
        let high = _mm512_mul_ps(_mm512_loadu_ps(part.as_ptr().add(16)), scale);
        let rounded: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(high, low));
        let dst = &mut panel[step * BLOCK * K_STEP + row * K_STEP..][..K_STEP];
        _mm512_storeu_si512(dst.as_mut_ptr().cast(), rounded);
    }
}

/// dst = bf16(scale * src), then zeros to the end of dst; inlined into each dispatched copy.
#[inline(always)]
fn round_into(dst: &mut [u16], src: &[f32], scale: f32) {
    let (head, tail) = dst.split_at_mut(src.len());
    head.iter_mut().zip(src).for_each(|(d, &v)| *d = to_bf16(v * scale));
    tail.fill(0);
}

/// One 32 x 32 block of C at `c` (rows `c_stride` floats apart) = [bias +] a 32-row bf16 panel
/// (kp wide, in k-steps, see [`write_panel_row`]) times one column block of packed B.
///
/// The sums stay in the tiles over all of k: they start from zero or from a bias, and C is
/// written once, never read. Summing k in slices instead, with C stored and reloaded between
/// them, kept the slices in the first-level cache but moved C through memory once a slice; on
/// this machine's 2048^3 product the whole of k at once, eight panels a task and the prefetch
/// below went from 1000-1180 to 1450-1560 GFLOP/s.
///
/// Without tiles the block runs on the dot products ([`super::bf16_dot::block`]), from the same
/// operands.
///
/// # Safety
/// `available()`, this thread's tiles configured, `panel` 32 x kp bf16 in k-steps, `b_block` kp x 32 in
/// the packed layout, and 32 x 32 floats at `c` with that stride writable by this thread.
#[inline(never)]
unsafe fn block(panel: *const u16, kp: usize, b_block: *const u16, c: *mut f32, c_stride: usize, start: BlockStart) {
    if !tiles() {
        // SAFETY: `available()` holds (AVX-512F and AVX512_BF16); the caller's promises on the
        // operands, which are the dot products' too.
        return unsafe { super::bf16_dot::block(panel, kp, b_block, c, c_stride, start) };
    }
    // Every panel and column block starts on a cache line (see [`AlignedVec`]).
    debug_assert!(
        (panel as usize).is_multiple_of(64) && (b_block as usize).is_multiple_of(64),
        "amx::block: operands off their lines"
    );
    let (c_bytes, a_bytes, b_bytes) = (c_stride * 4, K_STEP * 2, 2 * BLOCK * 2);
    let (c00, c01, c10, c11) = (c, c.add(16), c.add(16 * c_stride), c.add(16 * c_stride + 16));
    // A bias starts the sums: each tile reads the same row of it 16 times (a row stride of
    // zero broadcasts it down the tile).
    match start {
        BlockStart::Bias(bias) => asm!(
            "tileloadd tmm0, [{left} + {zero}*1]",
            "tileloadd tmm1, [{right} + {zero}*1]",
            "tileloadd tmm2, [{left} + {zero}*1]",
            "tileloadd tmm3, [{right} + {zero}*1]",
            left = in(reg) bias, right = in(reg) bias.add(16), zero = in(reg) 0usize,
            options(nostack)
        ),
        BlockStart::Sums => asm!(
            "tileloadd tmm0, [{c00} + {s}*1]",
            "tileloadd tmm1, [{c01} + {s}*1]",
            "tileloadd tmm2, [{c10} + {s}*1]",
            "tileloadd tmm3, [{c11} + {s}*1]",
            c00 = in(reg) c00, c01 = in(reg) c01, c10 = in(reg) c10, c11 = in(reg) c11,
            s = in(reg) c_bytes,
            options(nostack)
        ),
        BlockStart::Zero => asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack)),
    }
    let mut kk = 0;
    while kk < kp {
        let a0 = panel.add(kk * BLOCK);
        let a1 = a0.add(16 * K_STEP);
        let b0 = b_block.add((kk / 2) * 2 * BLOCK);
        let b1 = b0.add(BLOCK);
        // The next step's B (after the last step, the next column block's first: the blocks
        // lie back to back). A tile load waits on each of its 16 lines; the hardware prefetchers
        // do not run ahead of tile loads far enough to hide the second-level cache. A prefetch
        // past the end of B is only a hint and cannot fault (its address is formed with
        // wrapping arithmetic, never dereferenced).
        let next = b0.cast::<u8>().wrapping_add(B_STEP_BYTES);
        for line in 0..B_STEP_LINES {
            prefetch(next.wrapping_add(line * 64));
        }
        asm!(
            "tileloadd tmm4, [{a0} + {sa}*1]",
            "tileloadd tmm6, [{b0} + {sb}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {sb}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {sa}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
            sa = in(reg) a_bytes, sb = in(reg) b_bytes,
            options(nostack)
        );
        kk += K_STEP;
    }
    asm!(
        "tilestored [{c00} + {s}*1], tmm0",
        "tilestored [{c01} + {s}*1], tmm1",
        "tilestored [{c10} + {s}*1], tmm2",
        "tilestored [{c11} + {s}*1], tmm3",
        c00 = in(reg) c00, c01 = in(reg) c01, c10 = in(reg) c10, c11 = in(reg) c11,
        s = in(reg) c_bytes,
        options(nostack)
    );
}

/// What [`finish_block_f32`] does to a block's sums on their way to C.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
enum BlockEnd {
    Copy,
    Gelu,
    /// Adds the block of a matrix laid out as C, starting here.
    Add(*const f32),
}

/// A block's sums, all 32 columns of them the product's, finished into its first `rows` rows of
/// C (`c`, rows `stride` apart): each row 32 values in two vectors, in one call a block, where
/// each row went through a dispatched call (the residual's add, GELU) of its own.
///
/// # Safety
/// The CPU has AVX-512F; `c` (and an addend) address `rows` rows of 32 floats `stride` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn finish_block_f32(c: *mut f32, stride: usize, sums: &[f32; BLOCK * BLOCK], rows: usize, end: BlockEnd) {
    use std::arch::x86_64::*;
    for r in 0..rows {
        for half in [0, 16] {
            let mut v = _mm512_loadu_ps(&sums[r * BLOCK + half]);
            v = match end {
                BlockEnd::Copy => v,
                BlockEnd::Gelu => super::gelu::gelu16(v),
                BlockEnd::Add(addend) => _mm512_add_ps(v, _mm512_loadu_ps(addend.add(r * stride + half))),
            };
            _mm512_storeu_ps(c.add(r * stride + half), v);
        }
    }
}

/// A block's sums, all 32 columns of them the product's, finished and rounded to bf16 into its
/// k-step of a panel: GELU first where asked, then 32 values to a row by `vcvtne2ps2bf16` (the
/// rounding of [`write_panel_row`]'s whole k-steps); rows past `rows` are zeros (the panel's
/// padding rows). One call a block, where each row went through two dispatched calls to be
/// rounded, and GELU a third.
///
/// # Safety
/// The CPU has AVX-512F and AVX512_BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn finish_block_bf16(step: &mut [u16; BLOCK * K_STEP], sums: &[f32; BLOCK * BLOCK], rows: usize, gelu: bool) {
    use std::arch::x86_64::*;
    for r in 0..BLOCK {
        let rounded: __m512i = if r < rows {
            let (mut low, mut high) = (_mm512_loadu_ps(&sums[r * BLOCK]), _mm512_loadu_ps(&sums[r * BLOCK + 16]));
            if gelu {
                (low, high) = (super::gelu::gelu16(low), super::gelu::gelu16(high));
            }
            std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(high, low))
        } else {
            _mm512_setzero_si512()
        };
        _mm512_storeu_si512(step.as_mut_ptr().add(r * K_STEP).cast(), rounded);
    }
}

/// A block's sums, on cache lines as the tiles store them (see [`AlignedVec`]).
#[repr(C, align(64))]
struct BlockSums([f32; BLOCK * BLOCK]);

/// Where a block's sums start.
#[derive(Clone, Copy)]
pub(super) enum BlockStart {
    Zero,
    /// 32 values of a bias (the block's columns), the same for each row.
    Bias(*const f32),
    /// The block of C as it is: the product is added to it.
    Sums,
}

/// One 32 x 32 block of C at `c` (rows `c_stride` floats apart) = [C +] the first `k` values
/// (a multiple of 32) of a 32-row bf16 panel in k-steps ([`write_panel_row`]'s layout) times
/// column block `jb` of B from B's k-step `step0` on: a piece of a product whose caller does
/// its own blocking (the bf16 attention, a block of keys at a time).
///
/// # Safety
/// [`available`] holds and [`configure_tiles`] ran on this thread; `panel` starts on a cache
/// line and holds k / 32 k-steps; step0 + k / 32 k-steps lie inside B's padded k; `c`
/// addresses 32 rows of 32 floats, `c_stride` apart, that this thread alone reads and writes.
pub(super) unsafe fn block_product(
    panel: &[u16],
    k: usize,
    b: &PackedB,
    (jb, step0): (usize, usize),
    c: *mut f32,
    c_stride: usize,
    accumulate: bool,
) {
    assert!(
        k.is_multiple_of(K_STEP) && panel.len() >= k * BLOCK && jb < b.np / BLOCK && (step0 * K_STEP + k) <= b.kp,
        "amx::block_product: the panel or B is too small for {k} values from k-step {step0}"
    );
    let b_block = b.column_block(jb)[step0 * K_STEP * BLOCK..].as_ptr();
    let start = if accumulate { BlockStart::Sums } else { BlockStart::Zero };
    // SAFETY: the caller's promises; the lengths asserted above.
    unsafe { block(panel.as_ptr(), k, b_block, c, c_stride, start) };
}

/// Where C's sums start (see [`gemm`]).
#[derive(Clone, Copy)]
pub enum Start<'a> {
    /// C is overwritten (it may be uninitialised).
    Zero,
    /// A bias of n values, the same for each row: C is overwritten.
    Bias(&'a [f32]),
}

/// What is done to each block of C once its sums are done, while it is in cache.
#[derive(Clone, Copy)]
pub enum Finish<'a> {
    None,
    /// GELU (exact, erf form) of each value: a Linear followed by GELU in one pass.
    Gelu,
    /// Adds a matrix laid out as C (rows `c_stride` apart): a Linear that ends a residual
    /// branch, with the residual added while the block is in cache instead of in a pass of
    /// its own.
    Add(&'a [f32]),
}

/// Where the products land.
#[derive(Clone, Copy)]
enum Dest {
    /// f32 rows `stride` floats apart.
    F32 { c: Shared<f32>, stride: usize },
    /// A [`Bf16Rows`]'s panels with `kp` = B's padded n: block (i, j) of C is k-step j of
    /// panel i, so a block is rounded and stored as one piece, ready to be the next
    /// product's left operand.
    Bf16 { panels: Shared<u16>, kp: usize },
}

impl Dest {
    /// Asks the cache for the lines of the block at rows r0.., columns j0.. (rows x cols), one
    /// block ahead of the tiles that will store into them. Without it, tile stores into a
    /// large output waited on memory: one 32 x 32 block at k = 384 took about 6.5 us against
    /// 0.7-1.8 us into a buffer in the first-level cache, and 2.7 us with this prefetch; a
    /// 1536 x 384 x 1536 product went from 7.2 to 2.4-2.7 ms.
    #[inline(always)]
    fn prefetch_block(self, r0: usize, j0: usize, rows: usize, cols: usize) {
        match self {
            Dest::F32 { c, stride } => {
                for r in 0..rows {
                    let row = c.0.wrapping_add((r0 + r) * stride + j0).cast::<u8>();
                    // 32 floats touch three lines where C's rows do not start on one.
                    for at in [0, 64, cols * 4 - 1] {
                        prefetch(row.wrapping_add(at));
                    }
                }
            }
            Dest::Bf16 { panels, kp } => {
                let step = panels.0.wrapping_add(r0 * kp + (j0 / BLOCK) * BLOCK * K_STEP).cast::<u8>();
                for line in 0..BLOCK * K_STEP * 2 / 64 {
                    prefetch(step.wrapping_add(line * 64));
                }
            }
        }
    }
}

/// C (m x b.n at `c`, rows `c_stride` floats apart) = finish(start + A B), with A's values
/// (after scaling) rounded to bf16 and the sums in f32. `parallel`: split the rows over rayon's
/// threads, else run on this one.
///
/// # Safety
/// `c` addresses m rows of b.n floats `c_stride` apart, which nothing else reads or writes
/// while this runs.
pub unsafe fn gemm(a: Lhs, b: &PackedB, c: *mut f32, c_stride: usize, start: Start, finish: Finish, parallel: bool) {
    assert!(c_stride >= b.n, "amx::gemm: C's rows overlap");
    if let Finish::Add(addend) = finish {
        let m = a.rows();
        assert!(m == 0 || (m - 1) * c_stride + b.n <= addend.len(), "amx::gemm: the addend does not cover C");
    }
    // SAFETY: the caller's promise on C.
    unsafe { gemm_into(a, b, Dest::F32 { c: Shared(c), stride: c_stride }, start, finish, parallel) }
}

/// Row panels a task of [`gemm_into`] takes for panels `kp` values wide: at most
/// [`PANELS_PER_TASK`] and [`TASK_PANEL_BYTES`] of them, in a number of tasks that `threads`
/// share evenly. A weight's gradient has as many rows as its layer is wide: 12 panels at
/// `small`'s width 384 made a task of 8 and one of 4, so one thread worked while the other
/// waited for a third of the product; now two tasks of 6.
fn panels_per_task(panels: usize, threads: usize, kp: usize) -> usize {
    let most = (TASK_PANEL_BYTES / (BLOCK * kp.max(1) * 2)).clamp(1, PANELS_PER_TASK);
    if threads <= 1 {
        return most;
    }
    let tasks = threads * panels.div_ceil(threads * most);
    panels.div_ceil(tasks.max(1)).max(1)
}

/// [`gemm`] into `dest`.
///
/// # Safety
/// As [`gemm`] for an f32 destination; a bf16 one holds A's rows rounded up to 32 in panels of
/// kp = b.np.
unsafe fn gemm_into(a: Lhs, b: &PackedB, dest: Dest, start: Start, finish: Finish, parallel: bool) {
    assert!(available(), "amx::gemm: this CPU offers no bf16 products (no AMX, no AVX512_BF16), or MOTIVNET_BF16=off");
    let (m, k, n, kp) = (a.rows(), b.k, b.n, b.kp);
    match a {
        Lhs::F32 { rows, .. } | Lhs::Normalized { rows, .. } => assert!(
            m == 0 || rows.offset + (m - 1) * rows.stride + k <= rows.data.len(),
            "amx::gemm: A's rows lie outside its buffer"
        ),
        Lhs::Bf16(rows) => assert!(rows.k == k, "amx::gemm: A is {} wide, B {k} deep", rows.k),
    }
    if let Lhs::Normalized { weight, bias, .. } = a {
        assert!(weight.len() == k && bias.len() == k, "amx::gemm: the LayerNorm's weight and bias are not {k} long");
    }
    if let Start::Bias(bias) = start {
        assert_eq!(bias.len(), n, "amx::gemm: the bias is not n long");
    }
    // The bias padded to whole column blocks, so a tile may read a block's 32 values.
    let mut padded_bias = AlignedVec::<f32>::new();
    if let Start::Bias(bias) = start {
        padded_bias.resize(b.np);
        padded_bias[..n].copy_from_slice(bias);
    }
    let padded_bias = &padded_bias[..];
    let threads = if parallel { rayon::current_num_threads() } else { 1 };
    let rows_per_task = BLOCK * panels_per_task(m.div_ceil(BLOCK), threads, kp);
    let (row_tasks, column_blocks) = (m.div_ceil(rows_per_task), b.np / BLOCK);
    // Where A has too few rows to give every thread a task (a weight's gradient: m is a layer's
    // width, k the batch's tokens), B's column blocks are shared out too, each task rounding
    // its rows of A for itself.
    let column_parts = threads.div_ceil(row_tasks.max(1)).clamp(1, column_blocks.max(1));
    let task = |t: usize| {
        configure_tiles();
        let (t, part) = (t / column_parts, t % column_parts);
        let blocks = column_blocks * part / column_parts..column_blocks * (part + 1) / column_parts;
        let (r_start, r_end) = (t * rows_per_task, ((t + 1) * rows_per_task).min(m));
        let panels = (r_end - r_start).div_ceil(BLOCK);
        let mut buf = PANELS.with(|cell| cell.take());
        // This task's panels: converted into the thread's buffer, or read where they are.
        let a_panels = match a {
            Lhs::Bf16(rows) => rows.data[r_start * kp..].as_ptr(),
            Lhs::F32 { rows, .. } | Lhs::Normalized { rows, .. } => {
                buf.resize(buf.len().max(rows_per_task * kp));
                // A normalized row is made in the first-level cache, then rounded.
                let mut normalized = if matches!(a, Lhs::Normalized { .. }) { vec![0f32; k] } else { Vec::new() };
                for r in 0..panels * BLOCK {
                    let panel = &mut buf[(r / BLOCK) * BLOCK * kp..][..BLOCK * kp];
                    if r_start + r >= r_end {
                        write_panel_row(panel, r % BLOCK, &[], 0.0);
                        continue;
                    }
                    let row = &rows.data[rows.offset + (r_start + r) * rows.stride..][..k];
                    match a {
                        Lhs::F32 { scale, .. } => write_panel_row(panel, r % BLOCK, row, scale),
                        Lhs::Normalized { weight, bias, eps, .. } => {
                            super::layer_norm::layer_norm_row(&mut normalized, row, weight, bias, eps);
                            write_panel_row(panel, r % BLOCK, &normalized, 1.0);
                        }
                        Lhs::Bf16(_) => unreachable!("bf16 rows are read where they are"),
                    }
                }
                buf.as_ptr()
            }
        };
        // A block's sums when they are not stored straight into C: they stay in the first-level
        // cache for the finish to read. Read back from C right after the tiles had stored them
        // there, GELU spent most of its time waiting on those loads (on small's shapes GELU's
        // share of a bf16 forward halved with this buffer).
        let mut sums = BlockSums([0f32; BLOCK * BLOCK]);
        let sums = &mut sums.0;
        // Column blocks outside, panels inside: a column block is read from memory by the
        // first panel and from the caches by the others.
        for jb in blocks.clone() {
            let (j0, b_block) = (jb * BLOCK, b.column_block(jb).as_ptr());
            let cols = BLOCK.min(n - j0);
            let block_start = match start {
                Start::Zero => BlockStart::Zero,
                // SAFETY: the padded bias holds np values, j0 + 32 of them.
                Start::Bias(_) => BlockStart::Bias(unsafe { padded_bias.as_ptr().add(j0) }),
            };
            for panel in 0..panels {
                let r0 = r_start + panel * BLOCK;
                let rows = BLOCK.min(r_end - r0);
                // The next block's destination, asked for now: see `Dest::prefetch_block`.
                let (next_r0, next_j0) = if panel + 1 < panels { (r0 + BLOCK, j0) } else { (r_start, j0 + BLOCK) };
                if next_j0 < n {
                    dest.prefetch_block(next_r0, next_j0, BLOCK.min(r_end - next_r0), BLOCK.min(n - next_j0));
                }
                // SAFETY: the panels hold `panels` x 32 rows of kp (a Bf16Rows is padded to 32
                // rows); the caller's promise on the destination, this task's rows r0..r0 + rows,
                // and the block's columns j0..j0 + cols inside n.
                unsafe {
                    let a_panel = a_panels.add(panel * BLOCK * kp);
                    match dest {
                        Dest::F32 { c, stride } => {
                            let c_block = c.at(r0 * stride + j0);
                            if rows == BLOCK && cols == BLOCK && matches!(finish, Finish::None) {
                                block(a_panel, kp, b_block, c_block, stride, block_start);
                                continue;
                            }
                            if let Finish::Add(addend) = finish {
                                // The addend's rows are far apart, a stream the prefetchers do
                                // not follow: asked for now, they arrive while the tiles work.
                                for r in 0..rows {
                                    let row = &addend[(r0 + r) * stride + j0..][..cols];
                                    prefetch(row.as_ptr());
                                    prefetch(row.as_ptr().wrapping_add(cols - 1));
                                }
                            }
                            block(a_panel, kp, b_block, sums.as_mut_ptr(), BLOCK, block_start);
                            #[cfg(target_arch = "x86_64")]
                            if cols == BLOCK && super::simd::level() == super::simd::Level::Avx512 {
                                let ending = match finish {
                                    Finish::None => BlockEnd::Copy,
                                    Finish::Gelu => BlockEnd::Gelu,
                                    Finish::Add(addend) => BlockEnd::Add(addend.as_ptr().add(r0 * stride + j0)),
                                };
                                finish_block_f32(c_block, stride, sums, rows, ending);
                                continue;
                            }
                            for r in 0..rows {
                                let dst = std::slice::from_raw_parts_mut(c_block.add(r * stride), cols);
                                let src = &sums[r * BLOCK..r * BLOCK + cols];
                                match finish {
                                    Finish::None => dst.copy_from_slice(src),
                                    Finish::Gelu => gelu_chunk(as_uninit(dst), src),
                                    Finish::Add(addend) => {
                                        add_into(dst, src, &addend[(r0 + r) * stride + j0..][..cols])
                                    }
                                }
                            }
                        }
                        Dest::Bf16 { panels: out, kp: out_kp } => {
                            block(a_panel, kp, b_block, sums.as_mut_ptr(), BLOCK, block_start);
                            let step = std::slice::from_raw_parts_mut(
                                out.at(r0 * out_kp + jb * BLOCK * K_STEP),
                                BLOCK * K_STEP,
                            );
                            #[cfg(target_arch = "x86_64")]
                            if cols == BLOCK && avx512_bf16_available() {
                                let gelu = match finish {
                                    Finish::None => false,
                                    Finish::Gelu => true,
                                    Finish::Add(_) => unreachable!("linear_rows_to_bf16 adds no matrix"),
                                };
                                finish_block_bf16(step.try_into().expect("a k-step"), sums, rows, gelu);
                                continue;
                            }
                            for r in 0..BLOCK {
                                let row = &mut sums[r * BLOCK..r * BLOCK + cols];
                                if r >= rows {
                                    write_panel_row(step, r, &[], 0.0);
                                    continue;
                                }
                                match finish {
                                    Finish::None => {}
                                    Finish::Gelu => gelu_in_place(row),
                                    Finish::Add(_) => {
                                        unreachable!("linear_rows_to_bf16 adds no matrix")
                                    }
                                }
                                write_panel_row(step, r, row, 1.0);
                            }
                        }
                    }
                }
            }
        }
        PANELS.with(|cell| {
            if cell.borrow().len() < buf.len() {
                cell.replace(buf);
            }
        });
    };
    let tasks = row_tasks * column_parts;
    if parallel {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

crate::simd_dispatch! {
    /// dst = src + addend, value by value.
    fn add_into(dst: &mut [f32], src: &[f32], addend: &[f32]) {
        dst.iter_mut().zip(src).zip(addend).for_each(|((d, v), a)| *d = v + a);
    }
}

/// Asks the cache for the line holding `at` (a hint: never faults, whatever the address).
#[inline(always)]
fn prefetch<T>(at: *const T) {
    // SAFETY: a prefetch only hints; it reads nothing the program sees and cannot fault.
    unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast()) };
}

/// The same floats, seen as memory that may be overwritten without being read.
fn as_uninit(values: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: f32 and MaybeUninit<f32> share their layout; every f32 is a valid MaybeUninit.
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast(), values.len()) }
}

/// A Linear layer on the tiles: A (m x k: f32 rows, or rows already in bf16) times B, plus the
/// bias, then `finish` (GELU, or a residual of m x n added), in parallel; m x n, row-major.
/// The output is written once, block by block: no pass fills it with the bias first, and the
/// finish runs on each block while it is in cache.
///
/// Panics where `available()` does not hold, or when the lengths do not fit.
pub fn linear_rows_bf16(a: Lhs, b: &PackedB, bias: &[f32], finish: Finish) -> Vec<f32> {
    let m = a.rows();
    assert_eq!(bias.len(), b.n, "amx::linear_rows_bf16: the bias is not n long");
    if let Finish::Add(addend) = finish {
        assert_eq!(addend.len(), m * b.n, "amx::linear_rows_bf16: the addend is not m x n");
    }
    let mut y: Vec<f32> = Vec::with_capacity(m * b.n);
    // SAFETY: y has room for m x n, row-major, and is this function's own.
    unsafe {
        gemm(a, b, y.as_mut_ptr(), b.n, Start::Bias(bias), finish, true);
        // Every block of the m x n output was written.
        y.set_len(m * b.n);
    }
    y
}

/// For the tests of code on the tiles: whether it can be checked here, saying on the test's
/// output what was not checked when the CPU offers no bf16 products (and on which engine it was).
#[cfg(test)]
pub(crate) fn checkable_here(what: &str) -> bool {
    if !available() {
        eprintln!("this CPU offers no bf16 products (no AMX, no AVX512_BF16): {what} was not checked here");
    } else if !tiles() {
        eprintln!("no AMX tiles here: {what} was checked on AVX512_BF16's dot products");
    }
    available()
}

/// A B (m x n, row-major), nothing added: the products of a Linear's backward.
///
/// Panics where `available()` does not hold, or when the lengths do not fit.
pub fn product_rows_bf16(a: Lhs, b: &PackedB) -> Vec<f32> {
    let m = a.rows();
    let mut c: Vec<f32> = Vec::with_capacity(m * b.n);
    // SAFETY: c has room for m x n, row-major, and is this function's own.
    unsafe {
        gemm(a, b, c.as_mut_ptr(), b.n, Start::Zero, Finish::None, true);
        // Every block of the m x n output was written.
        c.set_len(m * b.n);
    }
    c
}

/// A B + bias, then `finish` (none, or GELU), rounded to bf16 into `out`, laid out as the next
/// product's left operand: the MLP's hidden layer and the attention's q, k and v, which then
/// never exist in f32. The values are those [`linear_rows_bf16`] with the same finish gives,
/// rounded as the next product would round them. A is f32 rows, plain or normalized as they are
/// read (not rows already in bf16).
///
/// Panics where `available()` does not hold, when the lengths do not fit, or for a finish that
/// adds a matrix (only f32 outputs take one).
pub fn linear_rows_to_bf16(a: Lhs, b: &PackedB, bias: &[f32], finish: Finish, out: &mut Bf16Rows) {
    let m = a.rows();
    assert!(bias.len() == b.n, "amx::linear_rows_to_bf16: the bias is not n long");
    assert!(!matches!(a, Lhs::Bf16(_)), "amx::linear_rows_to_bf16: A must be f32 rows");
    assert!(!matches!(finish, Finish::Add(_)), "amx::linear_rows_to_bf16: a bf16 output adds no matrix");
    out.reset(m, b.n);
    debug_assert_eq!(out.kp, b.np);
    let dest = Dest::Bf16 { panels: Shared(out.data.as_mut_ptr()), kp: out.kp };
    // SAFETY: `out` holds m rows rounded up to 32 in panels of kp = b.np, and is borrowed
    // mutably for the call.
    unsafe { gemm_into(a, b, dest, Start::Bias(bias), finish, true) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amx_here() -> bool {
        checkable_here("the AMX kernel")
    }

    /// Keys and values packed from a qkv product's bf16 panels hold what packing them from the
    /// same values in f32 holds: for the second image's rows of a batch of two, a head past
    /// the first k-step, and a head of two k-steps.
    #[test]
    fn packings_from_bf16_panels_equal_packings_from_rows() {
        let (rows, k, tokens) = (128, 224, 64);
        // Values bf16 holds exactly, so that rounding the f32 rows changes none.
        let src: Vec<f32> =
            (0..rows * k).map(|i| from_bf16(to_bf16(((i * 7919) % 1013) as f32 * 0.01 - 5.0))).collect();
        let mut panels = Bf16Rows::default();
        panels.reset(rows, k);
        for i in 0..rows {
            panels.set_row(i, &src[i * k..][..k], 1.0);
        }
        for (row0, step0, steps) in [(64, 1, 1), (0, 3, 2), (64, 5, 2)] {
            let offset = row0 * k + step0 * K_STEP;
            let keys = PackedB::from_bf16_key_steps(&panels, row0, tokens, step0, steps);
            let want = PackedB::from_transposed_rows(&src, offset, k, tokens, steps * K_STEP, false);
            assert!(keys.data[..] == want.data[..], "keys at rows {row0}.., k-steps {step0}..+{steps}");
            let values = PackedB::from_bf16_value_steps(&panels, row0, tokens, step0, steps);
            let want = PackedB::from_rows(&src, offset, k, tokens, steps * K_STEP, false);
            assert!(values.data[..] == want.data[..], "values at rows {row0}.., k-steps {step0}..+{steps}");
        }
    }

    /// The product against f32 sums of the same bf16-rounded operands, at sizes that are and
    /// are not multiples of the tiles.
    #[test]
    fn products_match_f32_sums_of_the_rounded_operands() {
        if !amx_here() {
            return;
        }
        for (m, n, k) in [(32, 32, 32), (70, 45, 100), (1, 7, 3), (200, 96, 192), (64, 64, 600), (45, 40, 300)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 211) as f32 * 0.013 - 1.3).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 104729) % 199) as f32 * 0.011 - 1.1).collect();
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.5).collect();
            let packed = PackedB::from_weight(&w, n, k);
            let c =
                linear_rows_bf16(Lhs::F32 { rows: Rows::contiguous(&a, k), scale: 1.0 }, &packed, &bias, Finish::None);
            let mut worst = 0f32;
            for i in 0..m {
                for j in 0..n {
                    let mut s = bias[j] as f64;
                    for kk in 0..k {
                        s += from_bf16(to_bf16(a[i * k + kk])) as f64 * from_bf16(to_bf16(w[j * k + kk])) as f64;
                    }
                    worst = worst.max((s as f32 - c[i * n + j]).abs() / (1.0 + s.abs() as f32));
                }
            }
            assert!(worst < 1e-5, "{m} x {n} x {k}: off by {worst} (relative)");
        }
    }

    /// The rows of A rounded 32 at a time on AVX512_BF16 are the bits of the portable rounding
    /// (normal values), whole k-steps and a short last one, scaled or not.
    #[test]
    fn rows_of_a_round_as_the_portable_code() {
        for (k, scale) in [(64usize, 1.0f32), (100, 0.125), (7, 1.0), (96, 0.3)] {
            let src: Vec<f32> = (0..k).map(|j| ((j * 7919) % 211) as f32 * 0.0137 - 1.3).collect();
            let kp = k.div_ceil(K_STEP) * K_STEP;
            let (mut fast, mut portable) = (vec![7u16; BLOCK * kp], vec![7u16; BLOCK * kp]);
            write_panel_row(&mut fast, 5, &src, scale);
            write_panel_row_portable(&mut portable, 5, &src, scale);
            assert_eq!(fast, portable, "k {k}, scale {scale}");
        }
    }

    /// B packed from the rows of its transpose (keys: whole and partial 32-value chunks, 16 or
    /// fewer rows a group) holds the same bits as B packed from its own rows.
    #[test]
    fn transposed_rows_pack_as_the_rows_of_b() {
        for (k, n) in [(100usize, 45usize), (64, 32), (33, 70), (7, 3), (7, 40)] {
            let stride = k + 5;
            let src: Vec<f32> = (0..n * stride).map(|i| ((i * 7919) % 211) as f32 * 0.013 - 1.3).collect();
            let b: Vec<f32> = (0..k * n).map(|i| src[(i % n) * stride + 2 + i / n]).collect();
            let want = PackedB::from_rows(&b, 0, n, k, n, false);
            for parallel in [false, true] {
                let got = PackedB::from_transposed_rows(&src, 2, stride, n, k, parallel);
                assert!(got.data == want.data, "k {k}, n {n}");
            }
        }
    }

    /// Tasks share the row panels between the threads at least as evenly as tasks of
    /// PANELS_PER_TASK did (the most panels a thread can be left with, its tasks dealt out
    /// whole), never more than PANELS_PER_TASK a task; one thread keeps tasks of PANELS_PER_TASK.
    #[test]
    fn row_panels_are_shared_evenly_between_threads() {
        let most_a_thread = |panels: usize, threads: usize, each: usize| panels.div_ceil(each).div_ceil(threads) * each;
        assert_eq!(panels_per_task(12, 2, 384), 6); // `small`'s width: was a task of 8 and one of 4
        assert_eq!(panels_per_task(36, 2, 384), 6);
        assert_eq!(panels_per_task(48, 2, 384), 8);
        assert_eq!(panels_per_task(12, 1, 384), PANELS_PER_TASK);
        assert_eq!(panels_per_task(1, 2, 384), 1);
        assert_eq!(panels_per_task(0, 2, 384), 1);
        // sapiens-0.3b's fc2 (k = 4096): 8 panels would fill the second-level cache.
        assert_eq!(panels_per_task(96, 2, 4096), 4);
        assert_eq!(panels_per_task(96, 1, 4096), 4);
        assert_eq!(panels_per_task(96, 2, 1 << 20), 1);
        for kp in [32, 384, 1024, 4096, 8192] {
            let budget = (TASK_PANEL_BYTES / (BLOCK * kp * 2)).clamp(1, PANELS_PER_TASK);
            for threads in 1..=8 {
                for panels in 1..300 {
                    let each = panels_per_task(panels, threads, kp);
                    assert!(each <= budget, "{panels} panels of {kp}, {threads} threads: {each} a task");
                    assert!(
                        most_a_thread(panels, threads, each) <= most_a_thread(panels, threads, budget),
                        "{panels} panels of {kp}, {threads} threads: {each} a task leaves a thread more than needed"
                    );
                }
            }
        }
    }

    /// 16 rows of 16 words transposed in registers: word j of row i lands as word i of row j.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn words_transpose_in_registers() {
        if !avx512_bf16_available() {
            eprintln!("this CPU has no AVX512_BF16: the in-register transpose was not checked here");
            return;
        }
        use std::arch::x86_64::*;
        let words: Vec<u32> = (0..256).map(|i| i * 7 + 1).collect();
        // SAFETY: the CPU has AVX-512F (checked above, with AVX512_BF16); each row is 16 words.
        let out: Vec<u32> = unsafe {
            let rows: [__m512i; 16] = std::array::from_fn(|i| _mm512_loadu_si512(words[16 * i..].as_ptr().cast()));
            transpose_words_16x16(rows).iter().flat_map(|v| std::mem::transmute::<__m512i, [u32; 16]>(*v)).collect()
        };
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(out[16 * j + i], words[16 * i + j], "word {j} of row {i}");
            }
        }
    }

    /// A transpose filled 32 x 32 steps at a time (in registers, a short last step padded with
    /// zero rows; narrow panels value by value) holds the bits of the transposed rows set one
    /// by one.
    #[test]
    fn transposed_fill_matches_rows_set_one_by_one() {
        for (rows, cols) in [(100usize, 45usize), (64, 64), (33, 70), (32, 32), (7, 40)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 211) as f32 * 0.013 - 1.3).collect();
            let mut want = Bf16Rows::default();
            want.reset(cols, rows);
            for c in 0..cols {
                let column: Vec<f32> = (0..rows).map(|t| src[t * cols + c]).collect();
                want.set_row(c, &column, 1.0);
            }
            for parallel in [false, true] {
                let mut got = Bf16Rows::default();
                got.set_transposed(&src, rows, cols, parallel);
                assert!(got.data == want.data, "{rows} x {cols}, parallel {parallel}");
            }
        }
    }

    /// GELU, or a residual added, as each block finishes (full blocks and edge ones) gives the
    /// same bits as doing it to the plain output after.
    #[test]
    fn finishing_each_block_matches_finishing_after() {
        if !amx_here() {
            return;
        }
        for (m, n, k) in [(70, 45, 100), (64, 64, 64), (33, 97, 40)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 211) as f32 * 0.013 - 1.3).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 104729) % 199) as f32 * 0.011 - 1.1).collect();
            let residual: Vec<f32> = (0..m * n).map(|i| ((i * 31) % 101) as f32 * 0.7 - 30.0).collect();
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.05 - 1.0).collect();
            let packed = PackedB::from_weight(&w, n, k);
            let lhs = Lhs::F32 { rows: Rows::contiguous(&a, k), scale: 1.0 };
            let plain = linear_rows_bf16(lhs, &packed, &bias, Finish::None);
            let mut gelu_after = plain.clone();
            gelu_in_place(&mut gelu_after);
            assert_eq!(linear_rows_bf16(lhs, &packed, &bias, Finish::Gelu), gelu_after, "GELU, {m} x {n} x {k}");
            let added_after: Vec<f32> = plain.iter().zip(&residual).map(|(p, r)| p + r).collect();
            let added = linear_rows_bf16(lhs, &packed, &bias, Finish::Add(&residual));
            assert_eq!(added, added_after, "residual, {m} x {n} x {k}");
        }
    }

    /// The MLP's hidden layer written straight into bf16 panels is GELU of the f32 output
    /// rounded as the next product rounds it: that product gives the same bits either way, and
    /// the panels' padding (rows past m, columns past n) is zero.
    #[test]
    fn gelu_into_bf16_panels_feeds_the_next_product_as_f32_rows_would() {
        if !amx_here() {
            return;
        }
        for (m, hidden, k, n) in [(70, 45, 100, 20), (64, 64, 64, 64), (33, 97, 40, 35)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 211) as f32 * 0.013 - 1.3).collect();
            let w1: Vec<f32> = (0..hidden * k).map(|i| ((i * 104729) % 199) as f32 * 0.011 - 1.1).collect();
            let w2: Vec<f32> = (0..n * hidden).map(|i| ((i * 7907) % 193) as f32 * 0.009 - 0.9).collect();
            let b1: Vec<f32> = (0..hidden).map(|j| j as f32 * 0.05 - 1.0).collect();
            let b2: Vec<f32> = (0..n).map(|j| j as f32 * 0.1).collect();
            let (p1, p2) = (PackedB::from_weight(&w1, hidden, k), PackedB::from_weight(&w2, n, hidden));
            let x_rows = Lhs::F32 { rows: Rows::contiguous(&x, k), scale: 1.0 };
            let h = linear_rows_bf16(x_rows, &p1, &b1, Finish::Gelu);
            let want =
                linear_rows_bf16(Lhs::F32 { rows: Rows::contiguous(&h, hidden), scale: 1.0 }, &p2, &b2, Finish::None);
            let mut panels = Bf16Rows::default();
            linear_rows_to_bf16(
                Lhs::F32 { rows: Rows::contiguous(&x, k), scale: 1.0 },
                &p1,
                &b1,
                Finish::Gelu,
                &mut panels,
            );
            assert_eq!(
                linear_rows_bf16(Lhs::Bf16(&panels), &p2, &b2, Finish::None),
                want,
                "{m} x {hidden} x {k} x {n}"
            );
            let at = |i: usize, j: usize| {
                panels.data[(i / BLOCK) * BLOCK * panels.kp
                    + (j / K_STEP) * BLOCK * K_STEP
                    + (i % BLOCK) * K_STEP
                    + j % K_STEP]
            };
            let padded_rows = m.div_ceil(BLOCK) * BLOCK;
            assert!((0..padded_rows).all(|i| (hidden..panels.kp).all(|j| at(i, j) == 0)), "columns past n");
            assert!((m..padded_rows).all(|i| (0..panels.kp).all(|j| at(i, j) == 0)), "rows past m");
        }
    }

    /// Strided A and C, a scale, C overwritten (starting from garbage), B packed from strided
    /// rows both ways: the attention's use, on one thread and on many.
    #[test]
    fn strided_operands_and_overwrite_match_f32_sums() {
        if !amx_here() {
            return;
        }
        let (m, n, k, stride) = (45, 70, 12, 40);
        let src: Vec<f32> = (0..200 * stride).map(|i| ((i * 7919) % 211) as f32 * 0.013 - 1.3).collect();
        let round = |v: f32| from_bf16(to_bf16(v));
        let kt = PackedB::from_transposed_rows(&src, 3, stride, n, k, false); // B[kk][j] = src[3 + j s + kk]
        let kr = PackedB::from_rows(&src, 5, stride, k, n.min(stride - 5), true); // B[kk][j] = src[5 + kk s + j]
        for (b, at) in [
            (&kt, &(|kk: usize, j: usize| 3 + j * stride + kk) as &dyn Fn(usize, usize) -> usize),
            (&kr, &|kk: usize, j: usize| 5 + kk * stride + j),
        ] {
            for parallel in [false, true] {
                let a = Lhs::F32 { rows: Rows { data: &src, offset: 7, stride, rows: m }, scale: 0.5 };
                let c_stride = b.n + 3;
                let mut c = vec![f32::NAN; m * c_stride];
                // SAFETY: c holds m rows of c_stride >= n floats.
                unsafe { gemm(a, b, c.as_mut_ptr(), c_stride, Start::Zero, Finish::None, parallel) };
                // The same with A given in bf16 already.
                let mut a16 = Bf16Rows::default();
                a16.reset(m, k);
                let halved: Vec<f32> = src.iter().map(|v| 0.5 * v).collect();
                for i in 0..m {
                    a16.set_row(i, &halved[7 + i * stride..][..k], 1.0);
                }
                let mut c16 = vec![f32::NAN; m * c_stride];
                // SAFETY: as above.
                unsafe { gemm(Lhs::Bf16(&a16), b, c16.as_mut_ptr(), c_stride, Start::Zero, Finish::None, parallel) };
                assert!(c.iter().zip(&c16).all(|(x, y)| x == y || (x.is_nan() && y.is_nan())), "bf16 A differs");
                for i in 0..m {
                    for j in 0..b.n {
                        let want: f64 = (0..k)
                            .map(|kk| round(0.5 * src[7 + i * stride + kk]) as f64 * round(src[at(kk, j)]) as f64)
                            .sum();
                        let got = c[i * c_stride + j];
                        assert!((got as f64 - want).abs() < 1e-5 * (1.0 + want.abs()), "({i}, {j}): {got} vs {want}");
                    }
                    assert!(c[i * c_stride + b.n].is_nan(), "row {i}: written past its n columns");
                }
            }
        }
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0); // a tie rounds to even
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    }
}
