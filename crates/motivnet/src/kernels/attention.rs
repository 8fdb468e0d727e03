//! Multi-head self-attention over a packed (B, N, 3D) qkv buffer, and its backward: each
//! (batch, head) pair reads its q, k and v in place through strides and writes its block of
//! the merged (B, N, D) output directly.

use std::cell::RefCell;

use gemm::Parallelism;
use rayon::prelude::*;

use super::amx::{self, Bf16Rows, PackedB, Rows};
use super::flash_attention_bf16::Queries;
use super::gemm::{matmul, threads_for_one_product, View, ViewMut, Write};
use super::KernelResult;
use super::{flash_attention, flash_attention_bf16, flash_attention_int8};

/// Shapes of one call, and where a (batch, head) pair's blocks start.
#[derive(Clone, Copy)]
struct Geometry {
    batch: usize,
    tokens: usize,
    dim: usize,
    heads: usize,
}

impl Geometry {
    /// The geometry of a (B, N, 3D) qkv slice, or an error (named for `op`) when the slice or
    /// the heads do not fit it.
    fn of(qkv: &[f32], (batch, tokens, dim): (usize, usize, usize), heads: usize, op: &str) -> KernelResult<Self> {
        if qkv.len() != batch * tokens * 3 * dim || heads == 0 || dim % heads != 0 {
            return Err(format!(
                "{op}: qkv holds {} values, expected {batch} x {tokens} x 3 x {dim} in {heads} heads",
                qkv.len()
            ));
        }
        Ok(Self { batch, tokens, dim, heads })
    }

    fn head_dim(&self) -> usize {
        self.dim / self.heads
    }

    fn pairs(&self) -> usize {
        self.batch * self.heads
    }

    /// Offset of q (part 0), k (1) or v (2) of `pair` in the (B, N, 3D) tensor.
    fn qkv_offset(&self, pair: usize, part: usize) -> usize {
        let (b, h) = (pair / self.heads, pair % self.heads);
        b * self.tokens * 3 * self.dim + part * self.dim + h * self.head_dim()
    }

    /// Offset of `pair`'s block in the merged (B, N, D) tensor.
    fn merged_offset(&self, pair: usize) -> usize {
        let (b, h) = (pair / self.heads, pair % self.heads);
        b * self.tokens * self.dim + h * self.head_dim()
    }

    /// An error (named for `op`) unless the attention's output and its gradient are both
    /// (B, N, D) for this geometry: what a backward reads beside the qkv.
    fn check_output(&self, out: &[f32], grad_out: &[f32], op: &str) -> KernelResult<()> {
        let (n, d) = (self.tokens, self.dim);
        if out.len() != self.batch * n * d || grad_out.len() != out.len() {
            return Err(format!("{op}: output and its gradient must be {} x {n} x {d}", self.batch));
        }
        Ok(())
    }

    fn scale(&self) -> f32 {
        1.0 / (self.head_dim() as f32).sqrt()
    }

    /// Pairs run in parallel with single-threaded products; when there are fewer pairs than
    /// threads, each product is threaded instead.
    fn inner_parallelism(&self) -> Parallelism {
        if self.pairs() >= rayon::current_num_threads() {
            Parallelism::None
        } else {
            threads_for_one_product()
        }
    }
}

/// Bytes of scores a task of the f32 attention holds when it keeps no probabilities: a pair's
/// query rows in blocks of this many scores (1024 rows at sapiens' 3072 tokens, a whole pair
/// below 1774 tokens). Each block's products pack the head's keys and values again, so blocks
/// small enough for the second-level cache (768 KiB) made sapiens-0.3b's f32 forward a fifth
/// slower; at this size it runs as fast as whole pairs did, on a third of their scratch.
const F32_SCORES_BYTES: usize = 12288 << 10;

/// Query rows a task of the bf16 attention takes: one of the AMX kernel's row panels, whose
/// scores, exponentials and output for a block of keys are about the first-level cache's size
/// ([`flash_attention_bf16`]).
const BF16_QUERY_ROWS: usize = 32;

thread_local! {
    /// Per-thread N x N buffers (scores, then their gradient), reused across calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-thread transposes in bf16 for the backward's AMX products, reused across calls.
    static BF16_TRANSPOSED: RefCell<Bf16Rows> = RefCell::new(Bf16Rows::default());
}

/// Runs `f` with this thread's scratch buffer grown to at least `len` floats. The buffer is
/// taken out of its cell while `f` runs: a threaded product inside `f` may have this thread
/// run another pair's task while it waits, and that task then gets a buffer of its own
/// instead of finding this one borrowed.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.with(|cell| cell.take());
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let out = f(&mut buf[..len]);
    SCRATCH.with(|cell| {
        // Keep the larger of the two when a nested task left one behind.
        if cell.borrow().len() < buf.len() {
            cell.replace(buf);
        }
    });
    out
}

/// A pointer that may cross into rayon tasks; each task writes only its own pair's block.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: the tasks write disjoint (batch, head) blocks; see the callers.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn rows(self, offset: usize, row_stride: usize) -> ViewMut {
        // SAFETY: callers pass offsets inside the buffer this pointer was taken from.
        ViewMut { ptr: unsafe { self.0.add(offset) }, row_stride: row_stride as isize, col_stride: 1 }
    }
}

/// Scores (n x n, row-major) = scale q k^T, then softmax over each row, in place.
///
/// # Safety
/// `qkv` holds the whole (B, N, 3D) tensor described by `g`.
unsafe fn probabilities(g: &Geometry, qkv: &[f32], pair: usize, p: &mut [f32], par: Parallelism) {
    let (n, hd, row) = (g.tokens, g.head_dim(), 3 * g.dim);
    let q = View::rows(qkv, g.qkv_offset(pair, 0), row);
    let k = View::rows(qkv, g.qkv_offset(pair, 1), row);
    matmul((n, n, hd), ViewMut::rows(p, 0, n), q, k.t(), g.scale(), Write::Overwrite, par);
    super::softmax::softmax_rows(p, n);
}

crate::simd_dispatch! {
    /// dS = P * (dP - delta) in place over `ds` (holding dP), n x n, with delta_i = do_i . o_i
    /// (the rows of do and o are `row_stride` apart, `hd` long): softmax's backward per row.
    fn score_grad(ds: &mut [f32], p: &[f32], n: usize, d_out: &[f32], out: &[f32], row_stride: usize, hd: usize) {
        for i in 0..n {
            let (go, o) = (&d_out[i * row_stride..][..hd], &out[i * row_stride..][..hd]);
            let delta = super::math::lane_sum([go, o], |[g, o]| g * o);
            let (ds, p) = (&mut ds[i * n..][..n], &p[i * n..][..n]);
            for j in 0..n {
                ds[j] = p[j] * (ds[j] - delta);
            }
        }
    }
}

/// The attention output (B, N, D) of a packed (B, N, 3D) qkv slice, and the probabilities of
/// every (batch, head) pair when `keep` asks for them.
pub fn attention_forward(
    qkv: &[f32],
    (batch, tokens, dim): (usize, usize, usize),
    heads: usize,
    keep: bool,
) -> KernelResult<(Vec<f32>, Option<Vec<f32>>)> {
    let g = Geometry::of(qkv, (batch, tokens, dim), heads, "self-attention")?;
    let (n, hd, d) = (g.tokens, g.head_dim(), g.dim);
    let par = g.inner_parallelism();
    let len = g.batch * n * d;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let shared = SharedOut(out.as_mut_ptr());
    let mut kept = if keep { vec![0f32; g.pairs() * n * n] } else { Vec::new() };
    let attend = |pair: usize, p: &mut [f32]| {
        // SAFETY: every view lies inside `qkv`, `p` or `out` (offsets from `g`), and
        // this pair's output block is written by this task alone.
        unsafe {
            probabilities(&g, qkv, pair, p, par);
            let v = View::rows(qkv, g.qkv_offset(pair, 2), 3 * d);
            let dst = shared.rows(g.merged_offset(pair), d);
            matmul((n, hd, n), dst, View::rows(p, 0, n), v, 1.0, Write::Overwrite, par);
        }
    };
    if keep {
        kept.par_chunks_mut((n * n).max(1)).enumerate().for_each(|(pair, p)| attend(pair, p));
    } else if n >= flash_attention::MIN_TOKENS && flash_attention::supported(hd) {
        attend_in_key_blocks(&g, qkv, shared);
    } else {
        // Nothing kept: a task is one block of query rows of one pair. A pair's whole n x n
        // scores at sapiens' 3072 tokens were 38 MB of scratch a thread.
        let block_rows = (F32_SCORES_BYTES / 4 / n.max(1)).max(16).min(n.max(1));
        let blocks = n.div_ceil(block_rows);
        (0..g.pairs() * blocks).into_par_iter().for_each(|task| {
            let (pair, r0) = (task / blocks, (task % blocks) * block_rows);
            let rows = block_rows.min(n - r0);
            with_scratch(rows * n, |p| {
                // SAFETY: every view lies inside `qkv`, `p` or `out` (offsets from `g`, these
                // rows r0..r0 + rows of the pair), and they are written by this task alone.
                unsafe {
                    let q = View::rows(qkv, g.qkv_offset(pair, 0) + r0 * 3 * d, 3 * d);
                    let k = View::rows(qkv, g.qkv_offset(pair, 1), 3 * d);
                    let scores = ViewMut::rows(p, 0, n);
                    matmul((rows, n, hd), scores, q, k.t(), g.scale(), Write::Overwrite, Parallelism::None);
                    super::softmax::softmax_rows(p, n);
                    let v = View::rows(qkv, g.qkv_offset(pair, 2), 3 * d);
                    let dst = shared.rows(g.merged_offset(pair) + r0 * d, d);
                    matmul((rows, hd, n), dst, View::rows(p, 0, n), v, 1.0, Write::Overwrite, Parallelism::None);
                }
            })
        });
    }
    // SAFETY: the pairs' blocks tile the (B, N, D) output: every element was written.
    unsafe { out.set_len(len) };
    Ok((out, keep.then_some(kept)))
}

/// The attention of every pair through [`flash_attention`], into the (B, N, D) buffer behind
/// `out`. A task is a range of query rows of one pair and packs the pair's keys and values
/// itself, so pairs are split only as far as the threads need.
///
/// Needs `flash_attention::supported(head size)`; writes every element of the output.
fn attend_in_key_blocks(g: &Geometry, qkv: &[f32], out: SharedOut) {
    assert!(flash_attention::supported(g.head_dim()), "blocked attention called for a head of {} values", g.head_dim());
    // SAFETY: `supported` holds (asserted above).
    unsafe { run_in_key_blocks(g, qkv, out, flash_attention::attend) }
}

/// The tasks of [`attend_in_key_blocks`] with `attend` for each: the f32 or the int8 kernel.
///
/// # Safety
/// `attend` may be called for this geometry's head size (its kernel's `supported` holds).
unsafe fn run_in_key_blocks(
    g: &Geometry,
    qkv: &[f32],
    out: SharedOut,
    attend: unsafe fn(flash_attention::PairView, std::ops::Range<usize>, f32, flash_attention::OutRows),
) {
    let (n, hd, d) = (g.tokens, g.head_dim(), g.dim);
    let splits = (2 * rayon::current_num_threads()).div_ceil(g.pairs()).clamp(1, n.div_ceil(64).max(1));
    let rows_per_split = n.div_ceil(splits);
    (0..g.pairs() * splits).into_par_iter().for_each(|task| {
        let (pair, split) = (task / splits, task % splits);
        let rows = (split * rows_per_split).min(n)..((split + 1) * rows_per_split).min(n);
        if rows.is_empty() {
            return;
        }
        let view = flash_attention::PairView {
            qkv,
            q: g.qkv_offset(pair, 0),
            k: g.qkv_offset(pair, 1),
            v: g.qkv_offset(pair, 2),
            row_stride: 3 * d,
            tokens: n,
            head_dim: hd,
        };
        let dst = out.rows(g.merged_offset(pair) + rows.start * d, d).ptr;
        // SAFETY: `attend` takes this head size (the caller's promise); the pair lies inside
        // `qkv` (offsets from `g`), and these output rows of the pair are written by this task
        // alone.
        unsafe { attend(view, rows, g.scale(), flash_attention::OutRows { ptr: dst, stride: d }) };
    });
}

/// The attention output (B, N, D) as [`attention_forward`] gives it, with q k^T and the
/// weighted sum of v in integers on VNNI ([`flash_attention_int8`]), whatever the number of
/// tokens. Inference only: nothing is kept for a backward. Needs
/// `flash_attention_int8::supported(head size)`.
pub fn attention_forward_int8(
    qkv: &[f32],
    (batch, tokens, dim): (usize, usize, usize),
    heads: usize,
) -> KernelResult<Vec<f32>> {
    let g = Geometry::of(qkv, (batch, tokens, dim), heads, "self-attention")?;
    if !flash_attention_int8::supported(g.head_dim()) {
        return Err(format!("self-attention in int8: no kernel for a head of {} values on this CPU", g.head_dim()));
    }
    // SAFETY: `supported` holds (checked above).
    Ok(unsafe { output_in_key_blocks(&g, qkv, flash_attention_int8::attend) })
}

/// The (B, N, D) output of [`run_in_key_blocks`] with `attend`, in a buffer of its own.
///
/// # Safety
/// As [`run_in_key_blocks`].
unsafe fn output_in_key_blocks(
    g: &Geometry,
    qkv: &[f32],
    attend: unsafe fn(flash_attention::PairView, std::ops::Range<usize>, f32, flash_attention::OutRows),
) -> Vec<f32> {
    let len = g.batch * g.tokens * g.dim;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    // SAFETY: the caller's promise.
    unsafe { run_in_key_blocks(g, qkv, SharedOut(out.as_mut_ptr()), attend) };
    // SAFETY: the tasks tile the output: every element was written.
    unsafe { out.set_len(len) };
    out
}

/// [`attention_forward`]'s output through [`flash_attention`] whatever the number of tokens,
/// for the tests that hold it to the exact softmax.
#[cfg(test)]
pub(crate) fn attention_forward_in_key_blocks(
    qkv: &[f32],
    (batch, tokens, dim): (usize, usize, usize),
    heads: usize,
) -> Vec<f32> {
    let g = Geometry::of(qkv, (batch, tokens, dim), heads, "self-attention").unwrap();
    assert!(flash_attention::supported(g.head_dim()), "blocked attention called for a head of {} values", g.head_dim());
    // SAFETY: `supported` holds (asserted above).
    unsafe { output_in_key_blocks(&g, qkv, flash_attention::attend) }
}

/// The attention output (B, N, D) as [`attention_forward`] gives it, with q k^T and p v on
/// AMX tiles, a block of keys at a time ([`flash_attention_bf16`]): q (scaled first, exactly
/// for a power-of-four head size), k, the probabilities and v rounded to bf16; the sums and the
/// softmax in f32. Inference only: nothing is kept for a backward. Needs `amx::available()`.
pub fn attention_forward_bf16(
    qkv: &[f32],
    (batch, tokens, dim): (usize, usize, usize),
    heads: usize,
) -> KernelResult<Vec<f32>> {
    let g = Geometry::of(qkv, (batch, tokens, dim), heads, "self-attention")?;
    let (n, hd, d) = (g.tokens, g.head_dim(), g.dim);
    let len = g.batch * n * d;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let shared = SharedOut(out.as_mut_ptr());
    // Each pair's keys and values packed once, for all of its query blocks.
    let packed: Vec<(PackedB, PackedB)> = (0..g.pairs())
        .into_par_iter()
        .map(|pair| {
            let keys = PackedB::from_transposed_rows(qkv, g.qkv_offset(pair, 1), 3 * d, n, hd, false);
            let values = PackedB::from_rows(qkv, g.qkv_offset(pair, 2), 3 * d, n, hd, false);
            (keys, values)
        })
        .collect();
    let blocks = n.div_ceil(BF16_QUERY_ROWS);
    (0..g.pairs() * blocks).into_par_iter().for_each(|task| {
        let (pair, r0) = (task / blocks, (task % blocks) * BF16_QUERY_ROWS);
        let rows = BF16_QUERY_ROWS.min(n - r0);
        let (keys, values) = &packed[pair];
        let queries = Rows { data: qkv, offset: g.qkv_offset(pair, 0) + r0 * 3 * d, stride: 3 * d, rows };
        // SAFETY: `available` holds (this function's precondition); these rows of the pair's
        // output block (hd wide, d apart, from its merged offset) lie inside `out` and are
        // written by this task alone.
        unsafe {
            let dst = shared.rows(g.merged_offset(pair) + r0 * d, d).ptr;
            let out = flash_attention_bf16::Output::Rows { ptr: dst, stride: d };
            flash_attention_bf16::attend(Queries::Rows(queries), g.scale(), keys, values, out);
        }
    });
    // SAFETY: the pairs' blocks tile the (B, N, D) output: every element was written.
    unsafe { out.set_len(len) };
    Ok(out)
}

/// Whether [`attention_forward_bf16_panels`] takes this shape: the batch's tokens fill whole
/// panels (so each query block is one panel's rows, of one image) and a head fills whole
/// k-steps. Every preset's shape but sapiens-0.6b's and 2b's heads (80 and 60 values).
pub fn bf16_panels_supported(tokens: usize, head_dim: usize) -> bool {
    tokens.is_multiple_of(BF16_QUERY_ROWS) && head_dim.is_multiple_of(amx::K_STEP)
}

/// [`attention_forward_bf16`] from q, k and v already rounded to bf16 in a qkv product's panels
/// (B x N rows of 3D, [`amx::linear_rows_to_bf16`]) into `out`'s panels (B x N rows of D), the
/// projection's left operand: neither the qkv activations nor the attention's output exist in
/// f32. Each query block reads its q where it lies (its scale joins the scores'), each pair's
/// keys and values are packed from bf16; the values are those of the f32 route for a head whose
/// scale is a power of two (a head of 64 values: 1/8), which rounds q times the scale, each
/// product's operands and the output as this does. Needs `amx::available()` and
/// [`bf16_panels_supported`].
pub fn attention_forward_bf16_panels(
    qkv: &Bf16Rows,
    (batch, tokens, dim): (usize, usize, usize),
    heads: usize,
    out: &mut Bf16Rows,
) -> KernelResult<()> {
    const NAME: &str = "self-attention (bf16 panels)";
    if qkv.rows() != batch * tokens || qkv.k() != 3 * dim || heads == 0 || dim % heads != 0 {
        return Err(format!(
            "{NAME}: qkv holds {} rows of {}, expected {batch} x {tokens} rows of 3 x {dim} in {heads} heads",
            qkv.rows(),
            qkv.k()
        ));
    }
    let hd = dim / heads;
    if !bf16_panels_supported(tokens, hd) {
        return Err(format!("{NAME}: {tokens} tokens and heads of {hd} values do not fill whole panels"));
    }
    let (head_steps, scale) = (hd / amx::K_STEP, 1.0 / (hd as f32).sqrt());
    // The k-step where head h's q (0), k (1) or v (2) starts in a qkv row.
    let step_of = |part: usize, h: usize| (part * dim + h * hd) / amx::K_STEP;
    let pairs = batch * heads;
    let packed: Vec<(PackedB, PackedB)> = (0..pairs)
        .into_par_iter()
        .map(|pair| {
            let (row0, h) = ((pair / heads) * tokens, pair % heads);
            let keys = PackedB::from_bf16_key_steps(qkv, row0, tokens, step_of(1, h), head_steps);
            let values = PackedB::from_bf16_value_steps(qkv, row0, tokens, step_of(2, h), head_steps);
            (keys, values)
        })
        .collect();
    out.reset(batch * tokens, dim);
    let (qkv_layout, out_layout) = (qkv.layout(), out.layout());
    let (panels, dst) = (qkv.values(), super::Shared(out.values_mut_ptr()));
    let blocks = tokens / BF16_QUERY_ROWS;
    (0..pairs * blocks).into_par_iter().for_each(|task| {
        let (pair, block) = (task / blocks, task % blocks);
        let (row0, h) = ((pair / heads) * tokens + block * BF16_QUERY_ROWS, pair % heads);
        let (keys, values) = &packed[pair];
        let steps = &panels[qkv_layout.step_offset(row0, step_of(0, h))..][..head_steps * amx::BLOCK * amx::K_STEP];
        let queries = Queries::Panel { steps, rows: BF16_QUERY_ROWS };
        // SAFETY: `available` holds (this function's precondition); head h's k-steps of the
        // panel at row0 lie inside `out` (reset to B x N rows of D above) and are written by
        // this task alone.
        unsafe {
            let at = dst.at(out_layout.step_offset(row0, h * head_steps));
            flash_attention_bf16::attend(queries, scale, keys, values, flash_attention_bf16::Output::Panel(at));
        }
    });
    Ok(())
}

/// The gradient (B, N, 3D) of the packed qkv from the attention output o, its gradient do
/// and, when the forward kept them, the probabilities (recomputed otherwise).
pub fn attention_backward(
    qkv: &[f32],
    out: &[f32],
    grad_out: &[f32],
    (batch, tokens, dim): (usize, usize, usize),
    heads: usize,
    kept: Option<&[f32]>,
) -> KernelResult<Vec<f32>> {
    const NAME: &str = "fused-self-attention-grad";
    let g = Geometry::of(qkv, (batch, tokens, dim), heads, NAME)?;
    g.check_output(out, grad_out, NAME)?;
    let (n, hd, d) = (g.tokens, g.head_dim(), g.dim);
    if let Some(kept) = kept {
        if kept.len() != g.pairs() * n * n {
            return Err(format!("{NAME}: kept probabilities do not fit the input"));
        }
    }
    let par = g.inner_parallelism();
    let mut grad: Vec<f32> = Vec::with_capacity(qkv.len());
    let shared = SharedOut(grad.as_mut_ptr());
    (0..g.pairs()).into_par_iter().for_each(|pair| {
        let kept = kept.map(|all| &all[pair * n * n..][..n * n]);
        let scratch_len = if kept.is_some() { n * n } else { 2 * n * n };
        with_scratch(scratch_len, |scratch| {
            let (ds, recomputed) = scratch.split_at_mut(n * n);
            let merged = g.merged_offset(pair);
            let d_out = View::rows(grad_out, merged, d);
            let p: &[f32] = match kept {
                Some(p) => p,
                None => {
                    // SAFETY: `qkv` is the whole tensor `g` describes.
                    unsafe { probabilities(&g, qkv, pair, recomputed, par) };
                    recomputed
                }
            };
            // SAFETY: every view lies inside `qkv`, `out`, `grad_out`, the scratch or
            // `grad` (offsets from `g`); this pair's blocks of `grad` are written by this
            // task alone.
            unsafe {
                let v = View::rows(qkv, g.qkv_offset(pair, 2), 3 * d);
                matmul((n, n, hd), ViewMut::rows(ds, 0, n), d_out, v.t(), 1.0, Write::Overwrite, par);
            }
            score_grad(ds, p, n, &grad_out[merged..], &out[merged..], d, hd);
            let (ds, p) = (View::rows(ds, 0, n), View::rows(p, 0, n));
            let q = View::rows(qkv, g.qkv_offset(pair, 0), 3 * d);
            let k = View::rows(qkv, g.qkv_offset(pair, 1), 3 * d);
            // SAFETY: as above.
            unsafe {
                let dq = shared.rows(g.qkv_offset(pair, 0), 3 * d);
                matmul((n, hd, n), dq, ds, k, g.scale(), Write::Overwrite, par);
                let dk = shared.rows(g.qkv_offset(pair, 1), 3 * d);
                matmul((n, hd, n), dk, ds.t(), q, g.scale(), Write::Overwrite, par);
                let dv = shared.rows(g.qkv_offset(pair, 2), 3 * d);
                matmul((n, hd, n), dv, p.t(), d_out, 1.0, Write::Overwrite, par);
            }
        })
    });
    // SAFETY: the pairs' dq, dk and dv blocks tile the (B, N, 3D) gradient.
    unsafe { grad.set_len(qkv.len()) };
    Ok(grad)
}

/// [`attention_backward`] with its products on AMX tiles, as a train step under bf16 runs it:
/// each product rounds its operands to bf16 and sums in f32 (scores = scale q k^T,
/// dP = do v^T, dq = scale dS k, dk = scale dS^T q, dv = P^T do); the softmax, its backward
/// (dS = P (dP - delta)) and every gradient are f32. The probabilities are recomputed from q and
/// k, never kept. Needs `amx::available()`.
pub fn attention_backward_bf16(
    qkv: &[f32],
    out: &[f32],
    grad_out: &[f32],
    (batch, tokens, dim): (usize, usize, usize),
    heads: usize,
) -> KernelResult<Vec<f32>> {
    const NAME: &str = "fused-self-attention-grad (bf16)";
    let g = Geometry::of(qkv, (batch, tokens, dim), heads, NAME)?;
    g.check_output(out, grad_out, NAME)?;
    let (n, hd, d) = (g.tokens, g.head_dim(), g.dim);
    let mut grad: Vec<f32> = Vec::with_capacity(qkv.len());
    let shared = SharedOut(grad.as_mut_ptr());
    let row = 3 * d;
    (0..g.pairs()).into_par_iter().for_each(|pair| {
        let (q_at, k_at, v_at, merged) =
            (g.qkv_offset(pair, 0), g.qkv_offset(pair, 1), g.qkv_offset(pair, 2), g.merged_offset(pair));
        let mut transposed = BF16_TRANSPOSED.with(|cell| cell.take());
        with_scratch(2 * n * n, |scratch| {
            let (p, ds) = scratch.split_at_mut(n * n);
            // SAFETY (each product below): its output is n rows of the scratch (n apart) or of
            // this pair's block of `grad` (hd wide, 3D apart from the pair's offsets), written by
            // this task alone.
            unsafe {
                let keys_t = PackedB::from_transposed_rows(qkv, k_at, row, n, hd, false);
                let queries =
                    amx::Lhs::F32 { rows: Rows { data: qkv, offset: q_at, stride: row, rows: n }, scale: g.scale() };
                amx::gemm(queries, &keys_t, p.as_mut_ptr(), n, amx::Start::Zero, amx::Finish::None, false);
                super::softmax::softmax_rows(p, n);
                let values_t = PackedB::from_transposed_rows(qkv, v_at, row, n, hd, false);
                let d_out =
                    amx::Lhs::F32 { rows: Rows { data: grad_out, offset: merged, stride: d, rows: n }, scale: 1.0 };
                amx::gemm(d_out, &values_t, ds.as_mut_ptr(), n, amx::Start::Zero, amx::Finish::None, false);
            }
            score_grad(ds, p, n, &grad_out[merged..], &out[merged..], d, hd);
            // SAFETY: as above.
            unsafe {
                let keys = PackedB::from_rows(qkv, k_at, row, n, hd, false);
                let ds_rows = amx::Lhs::F32 { rows: Rows::contiguous(ds, n), scale: g.scale() };
                let dq = shared.rows(q_at, row).ptr;
                amx::gemm(ds_rows, &keys, dq, row, amx::Start::Zero, amx::Finish::None, false);

                transposed.set_transposed(ds, n, n, false);
                let queries = PackedB::from_rows(qkv, q_at, row, n, hd, false);
                let dk = shared.rows(k_at, row).ptr;
                amx::gemm(amx::Lhs::Bf16(&transposed), &queries, dk, row, amx::Start::Zero, amx::Finish::None, false);
                for i in 0..n {
                    std::slice::from_raw_parts_mut(dk.add(i * row), hd).iter_mut().for_each(|v| *v *= g.scale());
                }

                transposed.set_transposed(p, n, n, false);
                let d_out = PackedB::from_rows(grad_out, merged, d, n, hd, false);
                let dv = shared.rows(v_at, row).ptr;
                amx::gemm(amx::Lhs::Bf16(&transposed), &d_out, dv, row, amx::Start::Zero, amx::Finish::None, false);
            }
        });
        BF16_TRANSPOSED.with(|cell| cell.replace(transposed));
    });
    // SAFETY: the pairs' dq, dk and dv blocks tile the (B, N, 3D) gradient.
    unsafe { grad.set_len(qkv.len()) };
    Ok(grad)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bf16 backward against the f32 one on shapes that are not multiples of the tiles:
    /// dq, dk and dv within bf16's precision (relative to each part's largest value), and not
    /// the same values.
    #[test]
    fn bf16_backward_follows_the_f32_backward() {
        if !amx::checkable_here("the bf16 attention backward") {
            return;
        }
        let (b, n, d, heads) = (2, 70, 48, 3);
        let value = |seed: usize, i: usize| ((i * seed) % 199) as f32 * 0.01 - 1.0;
        let qkv: Vec<f32> = (0..b * n * 3 * d).map(|i| value(7919, i)).collect();
        let d_out: Vec<f32> = (0..b * n * d).map(|i| value(104_729, i)).collect();
        let (out, _) = attention_forward(&qkv, (b, n, d), heads, false).unwrap();
        let want = attention_backward(&qkv, &out, &d_out, (b, n, d), heads, None).unwrap();
        let got = attention_backward_bf16(&qkv, &out, &d_out, (b, n, d), heads).unwrap();
        for (part, name) in ["dq", "dk", "dv"].iter().enumerate() {
            let pick = |g: &[f32]| -> Vec<f32> {
                g.chunks(3 * d).flat_map(|row| row[part * d..(part + 1) * d].to_vec()).collect()
            };
            let (got, want) = (pick(&got), pick(&want));
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst > 0.0 && worst < 2e-2 * scale, "{name}: off by {worst} (largest value {scale})");
        }
    }
}
