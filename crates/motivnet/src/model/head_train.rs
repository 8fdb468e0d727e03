//! The head's training pass written out on the CPU, as the encoder's is (`encoder_train`): a
//! forward that records what backward needs, and the backward by hand.
//!
//! The head does a twentieth of a step's arithmetic, but on candle's autograd it took a third
//! of a `tiny` train step (docs/BENCHMARKS.md): dozens of small ops, each a graph node whose
//! backward fills a zeroed gradient and adds to it, and split-head copies in both directions.
//! Here the same kernels run on plain buffers: the cross-attention reads each head's columns
//! in place (`kernels::cross_attention`), every residual's gradient is added in place, and
//! every parameter's gradient is written once.
//!
//! The arithmetic is [`MlDecoder::forward`]'s in train mode, dropout included: the masks are
//! drawn through [`dropout_mask`] in the same order and shapes as there, so one seed gives
//! both paths the same masks, and a replay feeds them PyTorch's. The logits leave as a leaf
//! ([`Var`]) for the loss; the gradient candle computes for that leaf starts
//! [`HeadTape::backward`], whose token gradient starts the encoder's. Only
//! `MotivNet::forward_train` uses this, beside the encoder's pass; a test holds every head
//! gradient to candle's graph.
//!
//! The head trains in f32 under `precision: 'bf16'` too, its products on `gemm`. With its
//! keys-and-values projection and its embedding's backward on the AMX tiles (tried, not
//! kept), the demo's bf16 runs reached 90.3% and 83.4% test accuracy against 95.0% and 95.6%
//! with the head in f32 (docs/BENCHMARKS.md): rounding upstream of its ReLU gates flips some
//! of them, and the head's few query rows give each gate a large share of a gradient.

use candle_core::{Device, Tensor, Var};
use rayon::prelude::*;

use super::head::{DecoderLayer, MlDecoder};
use super::tape::{gradient_tensors, Read};
use crate::error::{input_err, Error, Result};
use crate::kernels::cross_attention::{
    cross_attention_backward, cross_attention_folded_forward, cross_attention_forward, CrossDims, KeyValueProjection,
};
use crate::kernels::layer_norm::{layer_norm_backward, layer_norm_forward};
use crate::kernels::linear::{input_grad, linear_rows, param_grads};
use crate::kernels::math::{relu_backward_in_place, relu_in_place};
use crate::nn::layers::{dropout_mask, Linear, Mode};

const PASS: &str = "head training pass";

fn read(t: &Tensor) -> Read<'_> {
    Read::new(t, PASS)
}

/// One decoder layer's parameters by field, as (weight, bias) pairs; `in_proj` is the
/// cross-attention's packed in-projection (queries, keys, values).
struct LayerParams<T> {
    in_proj: (T, T),
    out_proj: (T, T),
    linear1: (T, T),
    linear2: (T, T),
    norm1: (T, T),
    norm2: (T, T),
    norm3: (T, T),
}

impl<T> LayerParams<T> {
    fn into_pairs(self) -> [(T, T); 7] {
        [self.in_proj, self.out_proj, self.linear1, self.linear2, self.norm1, self.norm2, self.norm3]
    }
}

impl LayerParams<Tensor> {
    fn of(layer: &DecoderLayer) -> Self {
        let pair = |w: &Tensor, b: &Tensor| (w.clone(), b.clone());
        Self {
            in_proj: pair(&layer.self_attn.in_proj_weight, &layer.self_attn.in_proj_bias),
            out_proj: pair(&layer.self_attn.out_proj.weight, &layer.self_attn.out_proj.bias),
            linear1: pair(&layer.linear1.weight, &layer.linear1.bias),
            linear2: pair(&layer.linear2.weight, &layer.linear2.bias),
            norm1: pair(&layer.norm1.weight, &layer.norm1.bias),
            norm2: pair(&layer.norm2.weight, &layer.norm2.bias),
            norm3: pair(&layer.norm3.weight, &layer.norm3.bias),
        }
    }
}

/// The head's trainable parameters by role (the queries are frozen and read only).
struct HeadParams {
    embed: (Tensor, Tensor),
    layers: Vec<LayerParams<Tensor>>,
    pooling: (Tensor, Tensor),
}

impl HeadParams {
    fn of(head: &MlDecoder) -> Self {
        Self {
            embed: (head.embed_standart.weight.clone(), head.embed_standart.bias.clone()),
            layers: head.layers.iter().map(LayerParams::of).collect(),
            pooling: (head.duplicate_pooling.clone(), head.duplicate_pooling_bias.clone()),
        }
    }

    /// The tensors a pass reads as values: every one, or without `linear_weights` (inference
    /// under bf16, whose Linear products run from their packings and whose weights may have
    /// been let go) all but the Linear layers' weights; `in_proj` is a plain parameter, read
    /// either way.
    fn tensors(&self, linear_weights: bool) -> impl Iterator<Item = &Tensor> {
        let layers = self.layers.iter().flat_map(move |l| {
            let linears = [&l.out_proj, &l.linear1, &l.linear2]
                .into_iter()
                .flat_map(move |(w, b)| [linear_weights.then_some(w), Some(b)]);
            let plain = [&l.in_proj, &l.norm1, &l.norm2, &l.norm3].into_iter().flat_map(|(w, b)| [Some(w), Some(b)]);
            linears.chain(plain).flatten()
        });
        let embed = [linear_weights.then_some(&self.embed.0), Some(&self.embed.1)].into_iter().flatten();
        embed.chain(layers).chain([&self.pooling.0, &self.pooling.1])
    }
}

/// Whether the hand-written pass can run this head on these tokens: the fused path (CPU,
/// f32) and contiguous tensors.
pub fn supported(head: &MlDecoder, tokens: &Tensor) -> bool {
    reads_plain_values(head, tokens, true)
}

/// Whether every tensor the pass reads (with or without the Linear layers' weights) is on the
/// fused path and contiguous.
fn reads_plain_values(head: &MlDecoder, tokens: &Tensor, linear_weights: bool) -> bool {
    let params = HeadParams::of(head);
    let read: Vec<&Tensor> = [tokens, &head.query_embed].into_iter().chain(params.tensors(linear_weights)).collect();
    crate::ops::dispatch::fused(&read) && read.iter().all(|t| t.is_contiguous())
}

/// The sizes of a pass: B images, N tokens of D values, K queries of E values, the
/// feed-forward width, the attention heads, and the logits' classes and group factor.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    tokens: usize,
    token_dim: usize,
    queries: usize,
    embed: usize,
    feedforward: usize,
    heads: usize,
    classes: usize,
    factor: usize,
}

impl Dims {
    fn attention(&self) -> CrossDims {
        CrossDims { batch: self.batch, queries: self.queries, keys: self.tokens, embed: self.embed, heads: self.heads }
    }

    /// Query rows, B x K.
    fn rows(&self) -> usize {
        self.batch * self.queries
    }
}

/// What backward needs of one decoder layer. Masks are the factors dropout multiplied by
/// (0 or 1/(1-p)); `None` where nothing was dropped.
struct LayerTape {
    /// The first norm's input t + dropout(t), its mask and its output (B K x E).
    u1: Vec<f32>,
    m1: Option<Vec<f32>>,
    t1: Vec<f32>,
    /// The projected queries (B K x E), keys and values (B N x 2E), the probabilities
    /// (B, heads, K, N) and their mask, the attention's merged output (B K x E).
    q: Vec<f32>,
    kv: Vec<f32>,
    probs: Vec<f32>,
    m2: Option<Vec<f32>>,
    attended: Vec<f32>,
    /// The second norm's input and its mask over the attention branch, and its output.
    u2: Vec<f32>,
    m3: Option<Vec<f32>>,
    t2: Vec<f32>,
    /// What entered linear2: linear1's output after ReLU and dropout (B K x feedforward), and
    /// the dropout's mask. It also gates ReLU's backward: where it is dropped the gradient is
    /// zero whatever the gate, and where it is kept it is positive exactly where ReLU's input
    /// was.
    m4: Option<Vec<f32>>,
    hidden: Vec<f32>,
    /// The third norm's input and its mask over the feed-forward branch.
    u3: Vec<f32>,
    m5: Option<Vec<f32>>,
}

/// The record of one training forward, consumed by [`HeadTape::backward`].
pub struct HeadTape {
    params: HeadParams,
    dims: Dims,
    eps: f32,
    tokens: Tensor,
    /// ReLU(embed_standart(tokens)), the memory every layer attends over (B N x E).
    memory: Vec<f32>,
    layers: Vec<LayerTape>,
    /// The last layer's output, pooled into the logits (B K x E).
    last: Vec<f32>,
}

/// `x + x * m`, or `x + x` without a mask: the decoder layer's quirk of adding its input to
/// a dropout of itself.
fn plus_dropped(x: &[f32], mask: Option<&[f32]>) -> Vec<f32> {
    match mask {
        Some(m) => x.iter().zip(m).map(|(&v, &m)| v + v * m).collect(),
        None => x.iter().map(|&v| v + v).collect(),
    }
}

/// `residual + x * m` (`residual + x` without a mask).
fn residual_plus_dropped(residual: &[f32], x: &[f32], mask: Option<&[f32]>) -> Vec<f32> {
    match mask {
        Some(m) => residual.iter().zip(x).zip(m).map(|((&r, &v), &m)| r + v * m).collect(),
        None => residual.iter().zip(x).map(|(&r, &v)| r + v).collect(),
    }
}

/// `x * m` in place (nothing without a mask).
fn apply_mask(x: &mut [f32], mask: Option<&[f32]>) {
    if let Some(m) = mask {
        x.par_chunks_mut(crate::kernels::CHUNK)
            .zip(m.par_chunks(crate::kernels::CHUNK))
            .for_each(|(x, m)| x.iter_mut().zip(m).for_each(|(v, m)| *v *= m));
    }
}

fn add_into(acc: &mut [f32], x: &[f32]) {
    acc.iter_mut().zip(x).for_each(|(a, v)| *a += v);
}

/// x W^T + b over rows of `in_dim` values: on the tiles from `packed`'s bf16 packing where
/// given (inference under `precision: 'bf16'`, whose weights may live only as that packing),
/// else from the f32 weight and bias of `params`.
fn product(packed: Option<&Linear>, x: &[f32], params: &(Tensor, Tensor), in_dim: usize) -> Result<Vec<f32>> {
    match packed {
        Some(linear) => Ok(linear.forward_rows_bf16(x)?),
        None => {
            let (w, b) = (read(&params.0), read(&params.1));
            Ok(linear_rows(x, w.values()?, b.values()?, in_dim, None))
        }
    }
}

/// One decoder layer's forward from its input `t` (B K x E); returns its output and tape. Its
/// Linear products run from `packed`'s layers' bf16 packings where given (inference).
fn layer_forward(
    params: &LayerParams<Tensor>,
    packed: Option<&DecoderLayer>,
    t: &[f32],
    memory: &[f32],
    dims: Dims,
    (p, eps): (f64, f32),
    mode: &mut Mode,
) -> Result<(Vec<f32>, LayerTape)> {
    let Dims { batch: b, queries: k, embed: e, feedforward: ff, heads, tokens: n, .. } = dims;
    let norm = |pair: &(Tensor, Tensor), x: &[f32]| -> Result<Vec<f32>> {
        let (w, b) = (read(&pair.0), read(&pair.1));
        Ok(layer_norm_forward(x, w.values()?, b.values()?, eps))
    };

    // The masks in the order the composed layer draws them (`DecoderLayer::forward`).
    let m1 = dropout_mask(&[b, k, e], p, mode)?;
    let u1 = plus_dropped(t, m1.as_deref());
    let t1 = norm(&params.norm1, &u1)?;
    let (in_w, in_b) = (read(&params.in_proj.0), read(&params.in_proj.1));
    // The in-projection's rows: the queries' E, then the keys' and values' 2E.
    let ((wq, wkv), (bq, bkv)) = (in_w.values()?.split_at(e * e), in_b.values()?.split_at(e));
    let q = match packed {
        Some(layer) => layer.self_attn.q_proj.forward_rows_bf16(&t1)?,
        None => linear_rows(&t1, wq, bq, e, None),
    };
    let m2 = dropout_mask(&[b, heads, k, n], p, mode)?;
    let (kv, (attended, probs)) = if mode.is_train() || packed.is_some() {
        let kv = match packed {
            Some(layer) => layer.self_attn.kv_proj.forward_rows_bf16(memory)?,
            None => linear_rows(memory, wkv, bkv, e, None),
        };
        let forward = cross_attention_forward(&q, &kv, dims.attention(), m2.as_deref()).map_err(Error::Internal)?;
        (kv, forward)
    } else {
        // f32 inference: the memory's keys and values are never made (nothing backpropagates
        // to them; the tape's are left empty), the projection runs on the queries and the
        // weighted memories instead, a sixth of the multiply-adds or less (the `tiny` f32
        // forward 6% faster). On the tiles projecting the memory is faster still.
        let ((wk, wv), (bk, bv)) = (wkv.split_at(e * e), bkv.split_at(e));
        let projection = KeyValueProjection { wk, bk, wv, bv };
        let forward =
            cross_attention_folded_forward(&q, memory, projection, dims.attention()).map_err(Error::Internal)?;
        (Vec::new(), forward)
    };
    let a = product(packed.map(|l| &l.self_attn.out_proj), &attended, &params.out_proj, e)?;
    let m3 = dropout_mask(&[b, k, e], p, mode)?;
    let u2 = residual_plus_dropped(&t1, &a, m3.as_deref());
    let t2 = norm(&params.norm2, &u2)?;
    let mut hidden = product(packed.map(|l| &l.linear1), &t2, &params.linear1, e)?;
    relu_in_place(&mut hidden);
    let m4 = dropout_mask(&[b, k, ff], p, mode)?;
    apply_mask(&mut hidden, m4.as_deref());
    let f = product(packed.map(|l| &l.linear2), &hidden, &params.linear2, ff)?;
    let m5 = dropout_mask(&[b, k, e], p, mode)?;
    let u3 = residual_plus_dropped(&t2, &f, m5.as_deref());
    let out = norm(&params.norm3, &u3)?;
    let tape = LayerTape { u1, m1, t1, q, kv, probs, m2, attended, u2, m3, t2, m4, hidden, u3, m5 };
    Ok((out, tape))
}

/// The sizes of a pass of `head` over `tokens` (B, N, D).
fn dims_of(head: &MlDecoder, tokens: &Tensor) -> Result<Dims> {
    let cfg = head.config();
    let (batch, n, token_dim) = tokens.dims3()?;
    let (queries, embed) = head.query_embed.dims2()?;
    Ok(Dims {
        batch,
        tokens: n,
        token_dim,
        queries,
        embed,
        feedforward: cfg.feedforward,
        heads: cfg.heads,
        classes: cfg.num_classes,
        factor: cfg.duplicate_factor(),
    })
}

/// The LayerNorms' epsilon (the layers share it).
fn eps_of(head: &MlDecoder) -> f32 {
    head.layers.first().map_or(1e-5, |l| l.norm1.eps as f32)
}

/// ReLU(embed_standart(tokens)): the memory every layer attends over (B N x E); the product
/// from `packed`'s bf16 packing where given.
fn memory_of(params: &HeadParams, packed: Option<&Linear>, tokens: &Tensor, dims: Dims) -> Result<Vec<f32>> {
    let x = read(tokens);
    let mut memory = product(packed, x.values()?, &params.embed, dims.token_dim)?;
    relu_in_place(&mut memory);
    Ok(memory)
}

/// The query embeddings repeated for each image: the first layer's input (B K x E).
fn first_input(head: &MlDecoder, dims: Dims) -> Result<Vec<f32>> {
    Ok(read(&head.query_embed).values()?.repeat(dims.batch))
}

/// The logits (B x classes) from the last layer's output.
fn logits_of(params: &HeadParams, t: &[f32], dims: Dims) -> Result<Vec<f32>> {
    let (w, b) = (read(&params.pooling.0), read(&params.pooling.1));
    Ok(pool_forward(t, w.values()?, b.values()?, dims))
}

/// Tokens (B, N, D) -> train-mode logits (B, classes) as a leaf for the loss, and the tape.
pub fn forward(head: &MlDecoder, tokens: &Tensor, mode: &mut Mode) -> Result<(Var, HeadTape)> {
    if !mode.is_train() {
        return Err(Error::Internal("the head's training pass needs a train mode".into()));
    }
    let dims = dims_of(head, tokens)?;
    let (params, eps, dropout) = (HeadParams::of(head), eps_of(head), head.config().dropout);
    let memory = memory_of(&params, None, tokens, dims)?;
    let mut t = first_input(head, dims)?;
    let mut layers = Vec::with_capacity(params.layers.len());
    for layer in &params.layers {
        let (out, tape) = layer_forward(layer, None, &t, &memory, dims, (dropout, eps), mode)?;
        layers.push(tape);
        t = out;
    }
    let logits = logits_of(&params, &t, dims)?;
    let logits = Var::from_tensor(&Tensor::from_vec(logits, (dims.batch, dims.classes), &Device::Cpu)?)?;
    let tape = HeadTape { params, dims, eps, tokens: tokens.clone(), memory, layers, last: t };
    Ok((logits, tape))
}

/// Whether inference may take [`predict`] for this head on these tokens: [`supported`]; under
/// `precision: 'bf16'` (the products on the tiles from the Linear layers' packings, whose f32
/// weights may have been let go) the same for every tensor but those weights. Under int8 the
/// head takes the f32 pass: its weights stay f32 (`MotivNet::keep_linear_weights_packed_only`
/// keeps them).
pub fn predicts(head: &MlDecoder, tokens: &Tensor) -> bool {
    reads_plain_values(head, tokens, !crate::ops::dispatch::bf16_matmuls_on())
}

/// Tokens (B, N, D) -> eval-mode logits (B, classes), and with `maps` the last layer's
/// cross-attention weights averaged over its heads (B, K, N), as
/// [`MlDecoder::forward_explained`] defines them. The training pass's forward without dropout
/// and without its tape: each layer's record is dropped once the next layer has its input.
/// On candle's ops the head took about a fifth of a `tiny` forward (docs/BENCHMARKS.md).
/// Inside `bf16_matmuls` its Linear products run on the tiles from their packings, the values
/// candle's ops give them there; the rest stays f32.
pub fn predict(head: &MlDecoder, tokens: &Tensor, maps: bool) -> Result<(Tensor, Option<Tensor>)> {
    let dims = dims_of(head, tokens)?;
    let (params, eps) = (HeadParams::of(head), eps_of(head));
    let packed = crate::ops::dispatch::bf16_matmuls_on();
    let memory = memory_of(&params, packed.then_some(&head.embed_standart), tokens, dims)?;
    let mut t = first_input(head, dims)?;
    let mut last_probs = None;
    for (i, (layer, decoder_layer)) in params.layers.iter().zip(&head.layers).enumerate() {
        let packings = packed.then_some(decoder_layer);
        let (out, tape) = layer_forward(layer, packings, &t, &memory, dims, (0.0, eps), &mut Mode::Eval)?;
        if maps && i + 1 == params.layers.len() {
            last_probs = Some(tape.probs);
        }
        t = out;
    }
    let logits = Tensor::from_vec(logits_of(&params, &t, dims)?, (dims.batch, dims.classes), &Device::Cpu)?;
    let maps = match last_probs {
        Some(probs) => Some(Tensor::from_vec(
            mean_over_heads(&probs, dims),
            (dims.batch, dims.queries, dims.tokens),
            &Device::Cpu,
        )?),
        None => None,
    };
    Ok((logits, maps))
}

/// Probabilities (B, heads, K, N) -> their mean over the heads (B, K, N).
fn mean_over_heads(probs: &[f32], dims: Dims) -> Vec<f32> {
    let Dims { queries: k, tokens: n, heads, .. } = dims;
    let per_head = k * n;
    let scale = 1.0 / heads as f32;
    probs
        .chunks(heads * per_head)
        .flat_map(|image| {
            let mut sums = vec![0f32; per_head];
            image.chunks(per_head).for_each(|head| add_into(&mut sums, head));
            sums.iter_mut().for_each(|v| *v *= scale);
            sums
        })
        .collect()
}

/// The group fully-connected layer: logits[b, c] = t[b, c / f, :] . P[c / f, :, c % f] +
/// bias[c], P (K, E, f), for the classes c < C (the last group's outputs past C are unused).
fn pool_forward(t: &[f32], pooling: &[f32], bias: &[f32], dims: Dims) -> Vec<f32> {
    let Dims { batch, queries: k, embed: e, classes, factor: f, .. } = dims;
    let mut logits = vec![0f32; batch * classes];
    for (image, row) in logits.chunks_mut(classes).enumerate() {
        for (c, logit) in row.iter_mut().enumerate() {
            let (group, j) = (c / f, c % f);
            let query = &t[(image * k + group) * e..][..e];
            let column = pooling[group * e * f..][..e * f].iter().skip(j).step_by(f);
            *logit = query.iter().zip(column).map(|(a, b)| a * b).sum::<f32>() + bias[c];
        }
    }
    logits
}

/// The group fully-connected layer's gradients: of its input t (B K x E), of P (K, E, f)
/// and of the bias (C), from the logits' gradient g (B x C).
fn pool_backward(t: &[f32], pooling: &[f32], g: &[f32], dims: Dims) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Dims { batch, queries: k, embed: e, classes, factor: f, .. } = dims;
    let mut d_t = vec![0f32; batch * k * e];
    let mut d_pool = vec![0f32; k * e * f];
    let mut d_bias = vec![0f32; classes];
    for image in 0..batch {
        for c in 0..classes {
            let (group, j) = (c / f, c % f);
            let grad = g[image * classes + c];
            d_bias[c] += grad;
            let query = &t[(image * k + group) * e..][..e];
            let d_query = &mut d_t[(image * k + group) * e..][..e];
            let weights = &pooling[group * e * f..][..e * f];
            let d_weights = &mut d_pool[group * e * f..][..e * f];
            for i in 0..e {
                d_query[i] += grad * weights[i * f + j];
                d_weights[i * f + j] += grad * query[i];
            }
        }
    }
    (d_t, d_pool, d_bias)
}

impl HeadTape {
    /// From the gradient of the logits (B, classes), every head parameter's gradient as
    /// (parameter, gradient) pairs, and the gradient of the tokens (B, N, D).
    pub fn backward(self, d_logits: &Tensor) -> Result<(Vec<(Tensor, Tensor)>, Tensor)> {
        let HeadTape { params, dims, eps, tokens, memory, layers, last } = self;
        let Dims { batch: b, tokens: n, token_dim: d, embed: e, feedforward: ff, classes, .. } = dims;
        if d_logits.dims() != [b, classes] {
            return Err(input_err!("head backward: logit gradient {:?}, expected [{b}, {classes}]", d_logits.dims()));
        }
        let g = d_logits.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let (mut dt, d_pool, d_pool_bias) = {
            let w = read(&params.pooling.0);
            pool_backward(&last, w.values()?, &g, dims)
        };
        drop(last);

        let rows = dims.rows();
        let mut d_memory = vec![0f32; b * n * e];
        let mut layer_grads = Vec::with_capacity(layers.len());
        for (tape, weights) in layers.into_iter().zip(&params.layers).rev() {
            let (in_w, out_w, w1, w2) = (
                read(&weights.in_proj.0),
                read(&weights.out_proj.0),
                read(&weights.linear1.0),
                read(&weights.linear2.0),
            );
            let (n1, n2, n3) = (read(&weights.norm1.0), read(&weights.norm2.0), read(&weights.norm3.0));
            let (wq, wkv) = in_w.values()?.split_at(e * e);

            // norm3 of t2 + dropout(linear2(dropout(ReLU(linear1(t2))))).
            let mut d_u3 = vec![0f32; rows * e];
            let norm3 = layer_norm_backward(&mut d_u3, false, &tape.u3, &dt, n3.values()?, eps);
            let mut d_f = d_u3.clone();
            apply_mask(&mut d_f, tape.m5.as_deref());
            let mut d_hidden = input_grad(&d_f, w2.values()?, (rows, ff, e));
            let linear2 = param_grads(&tape.hidden, &d_f, (rows, ff, e));
            drop(d_f);
            // Through dropout, then ReLU (gated by what entered linear2; see `LayerTape`).
            apply_mask(&mut d_hidden, tape.m4.as_deref());
            relu_backward_in_place(&tape.hidden, &mut d_hidden);
            let mut d_t2 = input_grad(&d_hidden, w1.values()?, (rows, e, ff));
            let linear1 = param_grads(&tape.t2, &d_hidden, (rows, e, ff));
            drop(d_hidden);
            add_into(&mut d_t2, &d_u3);
            drop(d_u3);

            // norm2 of t1 + dropout(attention(t1, memory)).
            let mut d_u2 = vec![0f32; rows * e];
            let norm2 = layer_norm_backward(&mut d_u2, false, &tape.u2, &d_t2, n2.values()?, eps);
            drop(d_t2);
            let mut d_a = d_u2.clone();
            apply_mask(&mut d_a, tape.m3.as_deref());
            let d_attended = input_grad(&d_a, out_w.values()?, (rows, e, e));
            let out_proj = param_grads(&tape.attended, &d_a, (rows, e, e));
            drop(d_a);
            let (dq, dkv) = cross_attention_backward(
                &tape.q,
                &tape.kv,
                &tape.probs,
                tape.m2.as_deref(),
                &d_attended,
                dims.attention(),
            )
            .map_err(Error::Internal)?;
            let mut d_t1 = input_grad(&dq, wq, (rows, e, e));
            let (dwq, dbq) = param_grads(&tape.t1, &dq, (rows, e, e));
            add_into(&mut d_memory, &input_grad(&dkv, wkv, (b * n, e, 2 * e)));
            let (dwkv, dbkv) = param_grads(&memory, &dkv, (b * n, e, 2 * e));
            add_into(&mut d_t1, &d_u2);
            drop(d_u2);

            // norm1 of t + dropout(t): t's gradient is the input gradient times (1 + mask).
            let mut d_u1 = vec![0f32; rows * e];
            let norm1 = layer_norm_backward(&mut d_u1, false, &tape.u1, &d_t1, n1.values()?, eps);
            dt = plus_dropped(&d_u1, tape.m1.as_deref());

            let split = |both: Vec<f32>| (both[..e].to_vec(), both[e..].to_vec());
            layer_grads.push(LayerParams {
                in_proj: ([dwq, dwkv].concat(), [dbq, dbkv].concat()),
                out_proj,
                linear1,
                linear2,
                norm1: split(norm1),
                norm2: split(norm2),
                norm3: split(norm3),
            });
        }
        layer_grads.reverse();

        // The memory is ReLU(embed_standart(tokens)): its value is positive exactly where
        // the pre-activation was.
        relu_backward_in_place(&memory, &mut d_memory);
        drop(memory);
        let (d_tokens, embed) = {
            let (x, w) = (read(&tokens), read(&params.embed.0));
            let dims = (b * n, d, e);
            (input_grad(&d_memory, w.values()?, dims), param_grads(x.values()?, &d_memory, dims))
        };

        let mut pairs: Vec<(Tensor, Vec<f32>)> = vec![(params.embed.0, embed.0), (params.embed.1, embed.1)];
        for (weights, grads) in params.layers.into_iter().zip(layer_grads) {
            for ((w, b), (dw, db)) in weights.into_pairs().into_iter().zip(grads.into_pairs()) {
                pairs.extend([(w, dw), (b, db)]);
            }
        }
        pairs.extend([(params.pooling.0, d_pool), (params.pooling.1, d_pool_bias)]);
        let d_tokens = Tensor::from_vec(d_tokens, (b, n, d), &Device::Cpu)?;
        Ok((gradient_tensors(pairs, PASS)?, d_tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::model::MotivNet;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn relative(a: &Tensor, b: &Tensor) -> f32 {
        let max = |t: &Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        max(&(a - b).unwrap()) / max(b).max(1e-6)
    }

    /// `tiny` with a head of 2 layers, 7 classes in 3 groups (so the last group pools past the
    /// classes), 4 heads of 12 values.
    fn uneven_groups_config() -> ModelConfig {
        let mut config = ModelConfig::preset("tiny").unwrap();
        config.head.num_classes = 7;
        config.head.groups = Some(3);
        config.head.embed_dim = 48;
        config.head.heads = 4;
        config.head.feedforward = 64;
        config
    }

    /// The hand-written pass against candle's graph of [`MlDecoder::forward`] on the head of
    /// [`uneven_groups_config`], with dropout drawn from one seed and without: the logits, every
    /// head gradient and the tokens' gradient.
    #[test]
    fn matches_the_candle_graph_in_logits_and_every_gradient() {
        let dev = Device::Cpu;
        let mut config = uneven_groups_config();
        for dropout in [0.0, 0.3] {
            config.head.dropout = dropout;
            let model = MotivNet::new(&config, &dev, 3).unwrap();
            let tokens = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 10, 192), &dev).unwrap()).unwrap();
            assert!(supported(&model.head, tokens.as_tensor()));
            let composed =
                model.head.forward(tokens.as_tensor(), &mut Mode::Train(&mut ChaCha8Rng::seed_from_u64(9))).unwrap();
            let (logits, tape) =
                forward(&model.head, tokens.as_tensor(), &mut Mode::Train(&mut ChaCha8Rng::seed_from_u64(9))).unwrap();
            let d = relative(logits.as_tensor(), &composed);
            assert!(d < 1e-5, "dropout {dropout}: logits differ by {d}");

            // Any loss of the logits will do: a fixed random projection.
            let up = Tensor::randn(0f32, 1.0, composed.shape(), &dev).unwrap();
            let expected = (&composed * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let (got, d_tokens) = tape.backward(&up).unwrap();
            let trainable = model.params.trainable().filter(|p| p.name.starts_with(crate::keys::DECODER)).count();
            assert_eq!(got.len(), trainable, "one gradient per trainable head parameter");
            for (param, grad) in &got {
                let name = model.params.iter().find(|p| p.var.as_tensor().id() == param.id()).unwrap().name.clone();
                let want = expected.get(param).unwrap_or_else(|| panic!("{name}: no gradient on the candle path"));
                let d = relative(grad, want);
                assert!(d < 1e-4, "dropout {dropout}: {name} differs by {d} (relative to its largest value)");
            }
            let d = relative(&d_tokens, expected.get(tokens.as_tensor()).unwrap());
            assert!(d < 1e-4, "dropout {dropout}: the tokens' gradient differs by {d}");
        }
    }

    /// Inside `bf16_matmuls` inference's pass runs the head's Linear products on the tiles from
    /// their packings, as candle's ops there do (the same products): logits and maps within
    /// 1e-5 of candle's (which strided tokens keep the head on), and apart from f32's.
    #[test]
    fn predicts_in_bf16_as_candles_ops_do() {
        if !crate::kernels::amx::checkable_here("the head's bf16 pass") {
            return;
        }
        let dev = Device::Cpu;
        let model = MotivNet::new(&uneven_groups_config(), &dev, 3).unwrap();
        let strided = Tensor::randn(0f32, 1.0, (10, 3, 192), &dev).unwrap().transpose(0, 1).unwrap();
        let tokens = strided.contiguous().unwrap();
        let explained = |t: &Tensor| crate::ops::dispatch::bf16_matmuls(|| model.head.forward_explained(t)).unwrap();
        assert!(crate::ops::dispatch::bf16_matmuls(|| predicts(&model.head, &tokens)));
        assert!(
            !crate::ops::dispatch::bf16_matmuls(|| predicts(&model.head, &strided)),
            "strided tokens take candle's ops"
        );
        let ((logits, maps), (want_logits, want_maps)) = (explained(&tokens), explained(&strided));
        let d = relative(&logits, &want_logits);
        assert!(d < 1e-5, "logits differ by {d}");
        let d = relative(&maps, &want_maps);
        assert!(d < 1e-5, "attention maps differ by {d}");
        let f32_logits = model.head.forward(&tokens, &mut Mode::Eval).unwrap();
        let d = relative(&logits, &f32_logits);
        assert!(d > 0.0 && d < 0.03, "bf16 logits differ from f32's by {d}");
    }

    /// Inference's pass against candle's ops (the composed path) on the same head, dropout set
    /// (eval must ignore it): the logits, the last layer's head-averaged attention maps, and
    /// explaining leaving the logits exactly as the plain forward gives them.
    #[test]
    fn predicts_as_candles_ops_do_with_and_without_maps() {
        let dev = Device::Cpu;
        let mut config = uneven_groups_config();
        config.head.dropout = 0.3;
        let model = MotivNet::new(&config, &dev, 3).unwrap();
        let tokens = Tensor::randn(0f32, 1.0, (3, 10, 192), &dev).unwrap();
        assert!(predicts(&model.head, &tokens));
        let composed = |f: &dyn Fn() -> Result<Tensor>| crate::ops::dispatch::composed(f).unwrap();
        let want = composed(&|| model.head.forward(&tokens, &mut Mode::Eval));
        let got = model.head.forward(&tokens, &mut Mode::Eval).unwrap();
        let d = relative(&got, &want);
        assert!(d < 1e-5, "logits differ by {d}");

        let want_maps = composed(&|| Ok(model.head.forward_explained(&tokens)?.1));
        let (explained, maps) = model.head.forward_explained(&tokens).unwrap();
        assert_eq!(maps.dims(), want_maps.dims());
        let d = relative(&maps, &want_maps);
        assert!(d < 1e-5, "attention maps differ by {d}");
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values(&explained), values(&got), "explaining changes the logits");
    }

    /// Replayed masks are taken in the composed head's order and shapes: a replay of masks
    /// recorded for the composed head runs, and uses every one.
    #[test]
    fn replays_masks_in_the_composed_heads_order() {
        let dev = Device::Cpu;
        let mut config = ModelConfig::preset("tiny").unwrap();
        config.head.embed_dim = 16;
        config.head.heads = 2;
        config.head.feedforward = 24;
        let model = MotivNet::new(&config, &dev, 3).unwrap();
        let (b, n, k, e, h, ff) = (2, 5, config.head.num_groups(), 16, 2, 24);
        let shapes = [vec![b, k, e], vec![b, h, k, n], vec![b, k, e], vec![b, k, ff], vec![b, k, e]];
        let masks: Vec<Tensor> = (0..config.head.layers)
            .flat_map(|_| shapes.iter())
            .map(|s| Tensor::ones(s.as_slice(), candle_core::DType::F32, &dev).unwrap())
            .collect();
        let mut recorded = crate::nn::layers::RecordedMasks::new(masks);
        let tokens = Tensor::randn(0f32, 1.0, (b, n, 192), &dev).unwrap();
        forward(&model.head, &tokens, &mut Mode::Replay(&mut recorded)).unwrap();
        assert_eq!(recorded.remaining(), 0);
    }

    #[test]
    fn a_logit_gradient_of_the_wrong_shape_is_refused() {
        let dev = Device::Cpu;
        let model = MotivNet::new(&ModelConfig::preset("tiny").unwrap(), &dev, 5).unwrap();
        let tokens = Tensor::zeros((2, 4, 192), candle_core::DType::F32, &dev).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (_, tape) = forward(&model.head, &tokens, &mut Mode::Train(&mut rng)).unwrap();
        let wrong = Tensor::zeros((2, 5), candle_core::DType::F32, &dev).unwrap();
        let err = tape.backward(&wrong).unwrap_err().to_string();
        assert!(err.contains("logit gradient [2, 5], expected [2, 8]"), "{err}");
    }
}
