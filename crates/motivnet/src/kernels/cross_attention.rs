//! Multi-head cross-attention of a few queries over many keys (the ML-Decoder head's), with
//! dropout on the probabilities, and its backward, over row-major slices.
//!
//! The queries q are B x K rows of E values, the keys and values one packed projection kv of
//! B x N rows of 2E (the keys, then the values), E = heads x hd. Head h reads columns
//! h hd .. (h + 1) hd of a query, a key and a value where they lie, so no split or merge copy
//! is made, and the output comes back merged, B x K rows of E. The probabilities are
//! (B, heads, K, N), the layout of the dropout mask over them.
//!
//! With K a handful of queries (one per class group) every product here is small: the loops
//! run per image on rayon's threads, each over one head's columns.

use rayon::prelude::*;

use gemm::Parallelism;

use super::gemm::{matmul, threads_for_one_product, View, ViewMut, Write};
use super::math::lane_sum;
use super::softmax::softmax_rows;
use super::KernelResult;

/// The sizes of one cross-attention: B images, K queries and N keys each, E = heads x hd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrossDims {
    pub batch: usize,
    pub queries: usize,
    pub keys: usize,
    pub embed: usize,
    pub heads: usize,
}

impl CrossDims {
    fn head_dim(&self) -> usize {
        self.embed / self.heads.max(1)
    }

    /// The scale the queries are multiplied by before the scores, 1/sqrt(hd), rounded to f32
    /// as a tensor times a float is.
    fn scale(&self) -> f32 {
        (1.0 / (self.head_dim() as f64).sqrt()) as f32
    }

    fn probabilities(&self) -> usize {
        self.batch * self.heads * self.queries * self.keys
    }

    /// Checks every buffer's length against the sizes: the loops index without bounds checks'
    /// help in meaning, so a mismatch is reported here, by name.
    fn check(&self, q: &[f32], kv: &[f32], mask: Option<&[f32]>) -> KernelResult<()> {
        let CrossDims { batch, queries, keys, embed, heads } = *self;
        if heads == 0 || !embed.is_multiple_of(heads) {
            return Err(format!("cross-attention: embedding {embed} does not split into {heads} heads"));
        }
        if q.len() != batch * queries * embed {
            return Err(format!("cross-attention: {} query values, expected {batch} x {queries} x {embed}", q.len()));
        }
        if kv.len() != batch * keys * 2 * embed {
            return Err(format!(
                "cross-attention: {} key and value values, expected {batch} x {keys} x {}",
                kv.len(),
                2 * embed
            ));
        }
        if let Some(mask) = mask {
            if mask.len() != self.probabilities() {
                return Err(format!(
                    "cross-attention: a dropout mask of {} values over {} probabilities",
                    mask.len(),
                    self.probabilities()
                ));
            }
        }
        Ok(())
    }
}

/// a . b over a's length, in the lanes of [`lane_sum`] (a plain float sum adds in order and
/// stays scalar).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    lane_sum([a, b], |[x, y]| x * y)
}

/// The attention's output (B x K rows of E, heads merged) and its probabilities
/// softmax(q k^T / sqrt(hd)) (B, heads, K, N), before dropout. With a mask (the kept values
/// already scaled by 1/(1-p)), the output multiplies the values by the probabilities times
/// the mask.
pub fn cross_attention_forward(
    q: &[f32],
    kv: &[f32],
    dims: CrossDims,
    mask: Option<&[f32]>,
) -> KernelResult<(Vec<f32>, Vec<f32>)> {
    dims.check(q, kv, mask)?;
    let CrossDims { queries, keys, embed, heads, .. } = dims;
    let per_image = heads * queries * keys;
    let mut out = vec![0f32; q.len()];
    let mut probs = vec![0f32; dims.probabilities()];
    out.par_chunks_mut((queries * embed).max(1)).zip(probs.par_chunks_mut(per_image.max(1))).enumerate().for_each(
        |(image, (out, probs))| {
            let q = &q[image * queries * embed..][..queries * embed];
            let kv = &kv[image * keys * 2 * embed..][..keys * 2 * embed];
            let mask = mask.map(|m| &m[image * per_image..][..per_image]);
            image_forward(q, kv, mask, out, probs, dims);
        },
    );
    Ok((out, probs))
}

crate::simd_dispatch! {
    /// [`cross_attention_forward`] for one image: its K query rows, N key-value rows, and its
    /// part of the mask, output and probabilities.
    fn image_forward(q: &[f32], kv: &[f32], mask: Option<&[f32]>, out: &mut [f32], probs: &mut [f32], dims: CrossDims) {
        let CrossDims { queries, keys, embed, heads, .. } = dims;
        let (hd, scale) = (dims.head_dim(), dims.scale());
        let mut dropped = vec![0f32; queries * keys];
        for h in 0..heads {
            let p = &mut probs[h * queries * keys..][..queries * keys];
            // SAFETY: the views address this image's K x hd queries and N x hd keys of head h
            // (rows E and 2E apart) and its K x N probabilities, all inside the slices.
            unsafe {
                matmul(
                    (queries, keys, hd),
                    ViewMut::rows(p, 0, keys),
                    View::rows(q, h * hd, embed),
                    View::rows(kv, h * hd, 2 * embed).t(),
                    scale,
                    Write::Overwrite,
                    Parallelism::None,
                );
            }
            softmax_rows(p, keys);
            let weights: &[f32] = match mask {
                Some(m) => {
                    let m = &m[h * queries * keys..][..queries * keys];
                    dropped.iter_mut().zip(p.iter().zip(m)).for_each(|(d, (p, m))| *d = p * m);
                    &dropped
                }
                None => p,
            };
            // SAFETY: K x N weights, head h's N x hd values and its K x hd output columns.
            unsafe {
                matmul(
                    (queries, hd, keys),
                    ViewMut::rows(out, h * hd, embed),
                    View::rows(weights, 0, keys),
                    View::rows(kv, embed + h * hd, 2 * embed),
                    1.0,
                    Write::Overwrite,
                    Parallelism::None,
                );
            }
        }
    }
}

/// The in-projection's rows for the keys and the values, with their biases: what turns the
/// memory into keys and values, k = Wk m + bk and v = Wv m + bv (each E x E, row-major).
#[derive(Clone, Copy)]
pub struct KeyValueProjection<'a> {
    pub wk: &'a [f32],
    pub bk: &'a [f32],
    pub wv: &'a [f32],
    pub bv: &'a [f32],
}

/// [`cross_attention_forward`] without the keys and values: the same output and probabilities
/// (before dropout, for inference) from the queries q (B x K rows of E) and the memory (B x N
/// rows of E) the keys and values would be projected from. Per head h, with Wk_h and Wv_h the
/// projection's hd rows of that head and s = 1/sqrt(hd):
///   scores = s q_h . (Wk_h m + bk_h) = (s Wk_h^T q_h) . m + s q_h . bk_h
///   output = sum_j p_j (Wv_h m_j + bv_h) = Wv_h (sum_j p_j m_j) + bv_h   (the p_j sum to 1)
/// so the projection runs on each head's K queries and K weighted memories, where projecting
/// the memory took N x E x 2E multiply-adds an image: with K = 8 queries of 8 heads against
/// `small`'s 768 tokens of 384, a sixth of them. Equal to projecting first up to the order of
/// the sums (a test holds it within 1e-5).
pub fn cross_attention_folded_forward(
    q: &[f32],
    memory: &[f32],
    projection: KeyValueProjection,
    dims: CrossDims,
) -> KernelResult<(Vec<f32>, Vec<f32>)> {
    let CrossDims { batch, queries, keys, embed, heads } = dims;
    if heads == 0 || !embed.is_multiple_of(heads) {
        return Err(format!("cross-attention: embedding {embed} does not split into {heads} heads"));
    }
    if q.len() != batch * queries * embed || memory.len() != batch * keys * embed {
        return Err(format!(
            "cross-attention: {} query and {} memory values, expected {batch} x {queries} x {embed} and {batch} x {keys} x {embed}",
            q.len(),
            memory.len()
        ));
    }
    let KeyValueProjection { wk, bk, wv, bv } = projection;
    if [wk.len(), wv.len()] != [embed * embed; 2] || [bk.len(), bv.len()] != [embed; 2] {
        return Err(format!("cross-attention: a key or value projection is not {embed} x {embed} with {embed} biases"));
    }
    let per_image = heads * queries * keys;
    let mut out = vec![0f32; q.len()];
    let mut probs = vec![0f32; dims.probabilities()];
    // Images on the threads; where there are fewer images than threads, each image's products
    // take the threads instead.
    let inner = if batch >= rayon::current_num_threads() { Parallelism::None } else { threads_for_one_product() };
    out.par_chunks_mut((queries * embed).max(1)).zip(probs.par_chunks_mut(per_image.max(1))).enumerate().for_each(
        |(image, (out, probs))| {
            let q = &q[image * queries * embed..][..queries * embed];
            let memory = &memory[image * keys * embed..][..keys * embed];
            image_folded_forward(q, memory, projection, out, probs, dims, inner);
        },
    );
    Ok((out, probs))
}

/// [`cross_attention_folded_forward`] for one image: its K query rows and N memory rows, and its
/// output and probabilities (heads x K rows of N).
fn image_folded_forward(
    q: &[f32],
    memory: &[f32],
    KeyValueProjection { wk, bk, wv, bv }: KeyValueProjection,
    out: &mut [f32],
    probs: &mut [f32],
    dims: CrossDims,
    parallelism: Parallelism,
) {
    let CrossDims { queries, keys, embed, heads, .. } = dims;
    let (hd, scale, rows) = (dims.head_dim(), dims.scale(), heads * queries);
    // Each head's queries taken back through its key projection (heads x K rows of E), and
    // the score each query gives the key bias, the same for every key.
    let mut folded = vec![0f32; rows * embed];
    let mut offsets = vec![0f32; rows];
    for h in 0..heads {
        // SAFETY: K x hd queries of head h (rows E apart), its hd x E key projection rows, and
        // K x E rows of `folded`, all inside their slices.
        unsafe {
            matmul(
                (queries, embed, hd),
                ViewMut::rows(&mut folded, h * queries * embed, embed),
                View::rows(q, h * hd, embed),
                View::rows(wk, h * hd * embed, embed),
                scale,
                Write::Overwrite,
                Parallelism::None,
            );
        }
        for k in 0..queries {
            offsets[h * queries + k] = scale * dot(&q[k * embed + h * hd..][..hd], &bk[h * hd..][..hd]);
        }
    }
    // SAFETY: heads x K rows of E against N memory rows of E, into heads x K rows of N.
    unsafe {
        matmul(
            (rows, keys, embed),
            ViewMut::rows(probs, 0, keys),
            View::rows(&folded, 0, embed),
            View::rows(memory, 0, embed).t(),
            1.0,
            Write::Overwrite,
            parallelism,
        );
    }
    for (row, offset) in probs.chunks_mut(keys.max(1)).zip(&offsets) {
        row.iter_mut().for_each(|s| *s += offset);
    }
    softmax_rows(probs, keys);
    // Each head's weighted sum of the memory (heads x K rows of E), `folded` reused.
    // SAFETY: heads x K rows of N weights times N memory rows of E.
    unsafe {
        matmul(
            (rows, embed, keys),
            ViewMut::rows(&mut folded, 0, embed),
            View::rows(probs, 0, keys),
            View::rows(memory, 0, embed),
            1.0,
            Write::Overwrite,
            parallelism,
        );
    }
    for h in 0..heads {
        // SAFETY: K x E weighted memories of head h times the transpose of its hd x E value
        // projection rows, into its K x hd output columns (rows E apart).
        unsafe {
            matmul(
                (queries, hd, embed),
                ViewMut::rows(out, h * hd, embed),
                View::rows(&folded, h * queries * embed, embed),
                View::rows(wv, h * hd * embed, embed).t(),
                1.0,
                Write::Overwrite,
                Parallelism::None,
            );
        }
        for k in 0..queries {
            out[k * embed + h * hd..][..hd].iter_mut().zip(&bv[h * hd..][..hd]).for_each(|(o, b)| *o += b);
        }
    }
}

/// The gradients of the queries (B x K rows of E) and of the packed keys and values (B x N
/// rows of 2E) from the output's gradient `d_out` (B x K rows of E), given the forward's
/// probabilities (before dropout) and its mask.
pub fn cross_attention_backward(
    q: &[f32],
    kv: &[f32],
    probs: &[f32],
    mask: Option<&[f32]>,
    d_out: &[f32],
    dims: CrossDims,
) -> KernelResult<(Vec<f32>, Vec<f32>)> {
    dims.check(q, kv, mask)?;
    if probs.len() != dims.probabilities() || d_out.len() != q.len() {
        return Err(format!(
            "cross-attention backward: {} probabilities and {} output gradients, expected {} and {}",
            probs.len(),
            d_out.len(),
            dims.probabilities(),
            q.len()
        ));
    }
    let CrossDims { queries, keys, embed, heads, .. } = dims;
    let per_image = heads * queries * keys;
    let mut dq = vec![0f32; q.len()];
    let mut dkv = vec![0f32; kv.len()];
    dq.par_chunks_mut((queries * embed).max(1))
        .zip(dkv.par_chunks_mut((keys * 2 * embed).max(1)))
        .enumerate()
        .for_each(|(image, (dq, dkv))| {
            let q = &q[image * queries * embed..][..queries * embed];
            let kv = &kv[image * keys * 2 * embed..][..keys * 2 * embed];
            let d_out = &d_out[image * queries * embed..][..queries * embed];
            let probs = &probs[image * per_image..][..per_image];
            let mask = mask.map(|m| &m[image * per_image..][..per_image]);
            image_backward(q, kv, probs, mask, d_out, dq, dkv, dims);
        });
    Ok((dq, dkv))
}

crate::simd_dispatch! {
    /// [`cross_attention_backward`] for one image.
    #[allow(clippy::too_many_arguments)]
    fn image_backward(
        q: &[f32],
        kv: &[f32],
        probs: &[f32],
        mask: Option<&[f32]>,
        d_out: &[f32],
        dq: &mut [f32],
        dkv: &mut [f32],
        dims: CrossDims,
    ) {
        let CrossDims { queries, keys, embed, heads, .. } = dims;
        let (hd, scale) = (dims.head_dim(), dims.scale());
        let (mut dropped, mut d_scores) = (vec![0f32; queries * keys], vec![0f32; queries * keys]);
        for h in 0..heads {
            let p = &probs[h * queries * keys..][..queries * keys];
            let m = mask.map(|m| &m[h * queries * keys..][..queries * keys]);
            let weights: &[f32] = match m {
                Some(m) => {
                    dropped.iter_mut().zip(p.iter().zip(m)).for_each(|(d, (p, m))| *d = p * m);
                    &dropped
                }
                None => p,
            };
            // SAFETY (all four products): the views address this image's K x hd rows of q
            // and d_out and N x hd rows of kv and dkv in head h's columns (rows E and 2E
            // apart), and K x N scratch; each destination is written by one product alone.
            unsafe {
                // Through the product with v: dv = (p m)^T g, and the weights' gradient g v^T.
                matmul(
                    (keys, hd, queries),
                    ViewMut::rows(dkv, embed + h * hd, 2 * embed),
                    View::rows(weights, 0, keys).t(),
                    View::rows(d_out, h * hd, embed),
                    1.0,
                    Write::Overwrite,
                    Parallelism::None,
                );
                matmul(
                    (queries, keys, hd),
                    ViewMut::rows(&mut d_scores, 0, keys),
                    View::rows(d_out, h * hd, embed),
                    View::rows(kv, embed + h * hd, 2 * embed).t(),
                    1.0,
                    Write::Overwrite,
                    Parallelism::None,
                );
            }
            if let Some(m) = m {
                d_scores.iter_mut().zip(m).for_each(|(d, m)| *d *= m);
            }
            // Through the softmax: ds = p (dp - sum(p dp)), row by row.
            for (ds, p) in d_scores.chunks_mut(keys).zip(p.chunks(keys)) {
                let total = dot(p, ds);
                ds.iter_mut().zip(p).for_each(|(d, &p)| *d = p * (*d - total));
            }
            // Through the scores s (q k^T), s the scale: dq = s ds k, dk = s ds^T q.
            unsafe {
                matmul(
                    (queries, hd, keys),
                    ViewMut::rows(dq, h * hd, embed),
                    View::rows(&d_scores, 0, keys),
                    View::rows(kv, h * hd, 2 * embed),
                    scale,
                    Write::Overwrite,
                    Parallelism::None,
                );
                matmul(
                    (keys, hd, queries),
                    ViewMut::rows(dkv, h * hd, 2 * embed),
                    View::rows(&d_scores, 0, keys).t(),
                    View::rows(q, h * hd, embed),
                    scale,
                    Write::Overwrite,
                    Parallelism::None,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor, Var};

    /// The attention without keys and values against projecting the memory first: the same
    /// output and probabilities within 1e-5 of their largest values, for one image (its products
    /// threaded) and for several (the images threaded), with non-zero key and value biases.
    #[test]
    fn folding_the_projection_into_queries_and_weighted_memories_changes_nothing() {
        let value = |i: usize, m: usize, scale: f32| ((i * m) % 97) as f32 / 97.0 * scale - scale / 2.0;
        for dims in [
            CrossDims { batch: 1, queries: 8, keys: 50, embed: 48, heads: 4 },
            CrossDims { batch: 5, queries: 3, keys: 20, embed: 12, heads: 3 },
        ] {
            let CrossDims { batch: b, queries: k, keys: n, embed: e, .. } = dims;
            let q: Vec<f32> = (0..b * k * e).map(|i| value(i, 31, 2.0)).collect();
            let memory: Vec<f32> = (0..b * n * e).map(|i| value(i, 17, 2.0)).collect();
            let (wk, wv): (Vec<f32>, Vec<f32>) =
                ((0..e * e).map(|i| value(i, 13, 0.6)).collect(), (0..e * e).map(|i| value(i, 7, 0.6)).collect());
            let (bk, bv): (Vec<f32>, Vec<f32>) =
                ((0..e).map(|i| value(i, 5, 1.0)).collect(), (0..e).map(|i| value(i, 3, 1.0)).collect());
            // kv = memory [Wk; Wv]^T + [bk; bv], row by row.
            let mut kv = vec![0f32; b * n * 2 * e];
            for (row, m) in kv.chunks_mut(2 * e).zip(memory.chunks(e)) {
                for (j, out) in row.iter_mut().enumerate() {
                    let (w, bias) =
                        if j < e { (&wk[j * e..][..e], bk[j]) } else { (&wv[(j - e) * e..][..e], bv[j - e]) };
                    *out = bias + w.iter().zip(m).map(|(w, m)| w * m).sum::<f32>();
                }
            }
            let (want_out, want_probs) = cross_attention_forward(&q, &kv, dims, None).unwrap();
            let projection = KeyValueProjection { wk: &wk, bk: &bk, wv: &wv, bv: &bv };
            let (out, probs) = cross_attention_folded_forward(&q, &memory, projection, dims).unwrap();
            let worst = |a: &[f32], b: &[f32]| {
                let largest = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / largest
            };
            assert!(worst(&out, &want_out) < 1e-5, "{dims:?}: outputs differ by {}", worst(&out, &want_out));
            assert!(
                worst(&probs, &want_probs) < 1e-5,
                "{dims:?}: probabilities differ by {}",
                worst(&probs, &want_probs)
            );
        }
        let dims = CrossDims { batch: 1, queries: 2, keys: 3, embed: 4, heads: 2 };
        let projection = KeyValueProjection { wk: &[0.0; 16], bk: &[0.0; 4], wv: &[0.0; 15], bv: &[0.0; 4] };
        let err = cross_attention_folded_forward(&[0.0; 8], &[0.0; 12], projection, dims).unwrap_err();
        assert!(err.contains("4 x 4"), "a short value projection is named: {err}");
    }

    /// The kernel against candle's ops over split heads, forward and backward, with a mask.
    #[test]
    fn matches_candle_ops_with_and_without_dropout() {
        let dev = Device::Cpu;
        let dims = CrossDims { batch: 2, queries: 3, keys: 11, embed: 12, heads: 3 };
        let (b, k, n, e, h) = (dims.batch, dims.queries, dims.keys, dims.embed, dims.heads);
        let hd = e / h;
        let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, k, e), &dev).unwrap()).unwrap();
        let kv = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, n, 2 * e), &dev).unwrap()).unwrap();
        let mask_values: Vec<f32> =
            (0..dims.probabilities()).map(|i| if i % 7 == 3 { 0.0 } else { 1.0 / 0.9 }).collect();
        let up = Tensor::randn(0f32, 1.0, (b, k, e), &dev).unwrap();
        for mask in [None, Some(mask_values.as_slice())] {
            let split = |x: &Tensor, len: usize| x.reshape((b, len, h, hd)).unwrap().transpose(1, 2).unwrap();
            let qh = split(q.as_tensor(), k);
            let kh = split(&kv.as_tensor().narrow(2, 0, e).unwrap(), n).contiguous().unwrap();
            let vh = split(&kv.as_tensor().narrow(2, e, e).unwrap(), n).contiguous().unwrap();
            let scores =
                (qh * (1.0 / (hd as f64).sqrt())).unwrap().contiguous().unwrap().matmul(&kh.t().unwrap()).unwrap();
            let probs = crate::nn::layers::softmax(&scores).unwrap();
            let weights = match mask {
                Some(m) => (&probs * Tensor::from_slice(m, probs.shape(), &dev).unwrap()).unwrap(),
                None => probs.clone(),
            };
            let out = weights.matmul(&vh).unwrap().transpose(1, 2).unwrap().reshape((b, k, e)).unwrap();
            let grads = (&out * &up).unwrap().sum_all().unwrap().backward().unwrap();

            let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (q_v, kv_v) = (values(q.as_tensor()), values(kv.as_tensor()));
            let (got_out, got_probs) = cross_attention_forward(&q_v, &kv_v, dims, mask).unwrap();
            let (dq, dkv) = cross_attention_backward(&q_v, &kv_v, &got_probs, mask, &values(&up), dims).unwrap();
            let close = |a: &[f32], b: &[f32], what: &str| {
                let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                assert!(worst < 1e-5, "{what} differs by {worst} (mask: {})", mask.is_some());
            };
            close(&got_out, &values(&out), "output");
            close(&got_probs, &values(&probs), "probabilities");
            close(&dq, &values(grads.get(q.as_tensor()).unwrap()), "dq");
            close(&dkv, &values(grads.get(kv.as_tensor()).unwrap()), "dkv");
        }
    }

    #[test]
    fn buffers_that_do_not_fit_are_refused_by_name() {
        let dims = CrossDims { batch: 1, queries: 2, keys: 3, embed: 4, heads: 2 };
        let (q, kv) = (vec![0f32; 8], vec![0f32; 24]);
        assert!(cross_attention_forward(&q, &kv, dims, None).is_ok());
        let err = cross_attention_forward(&q[..7], &kv, dims, None).unwrap_err();
        assert!(err.contains("7 query values"), "{err}");
        let err = cross_attention_forward(&q, &kv, dims, Some(&[1.0; 5])).unwrap_err();
        assert!(err.contains("mask of 5 values over 12"), "{err}");
        let err = cross_attention_forward(&q, &kv, CrossDims { heads: 3, ..dims }, None).unwrap_err();
        assert!(err.contains("does not split into 3 heads"), "{err}");
    }
}
