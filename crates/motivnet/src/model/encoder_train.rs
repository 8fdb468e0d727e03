//! The encoder's training pass written out on the CPU: a forward that records what backward
//! needs, and the backward by hand.
//!
//! Through candle's autograd every op of the encoder is a graph node, and backward spends a
//! zero-filled tensor and an add on each gradient it hands to a node's input
//! (`GradStore::or_insert`), on top of the residual adds and their temporaries: about a tenth
//! of the `tiny` train step (docs/BENCHMARKS.md). Here the same kernels as the fused ops run
//! on plain buffers. Each residual add is folded into the Linear that ends its branch, the
//! residual stream's gradient is added to in place, and every parameter's gradient is
//! written once.
//!
//! The tokens leave as a leaf ([`Var`]) for the head: the head's own hand-written pass
//! (`head_train`) hands back their gradient, or, where the head runs on candle's graph, the
//! gradient candle computes for that leaf starts [`EncoderTape::backward`]. Only
//! `MotivNet::forward_train` uses this, on the CPU's fused path; `MotivNet::forward` and
//! other devices run the encoder as candle ops, and a test holds every encoder gradient of
//! this pass to that path's. Parameters are read, and gradients returned, by the block's
//! field names ([`BlockParams`]).

use candle_core::{Device, Tensor, Var};
use rayon::prelude::*;

use super::encoder::{Block, BlockParams, SapiensEncoder};
use super::products::Products;
use super::tape::{gradient_tensors, Read};
use crate::error::{input_err, Result};
use crate::kernels::gelu::{gelu_backward, gelu_forward};
use crate::kernels::layer_norm::{layer_norm_backward, layer_norm_forward};
use crate::ops::attention::KEEP_PROBABILITIES_BYTES;

const PASS: &str = "encoder training pass";

fn read(t: &Tensor) -> Read<'_> {
    Read::new(t, PASS)
}

/// Whether the hand-written pass can run this encoder on these images: the fused path
/// (CPU, f32) and contiguous tensors.
pub fn supported(encoder: &SapiensEncoder, images: &Tensor) -> bool {
    let params = EncoderParams::of(encoder);
    let all: Vec<&Tensor> = std::iter::once(images).chain(params.tensors()).collect();
    crate::ops::dispatch::fused(&all) && all.iter().all(|t| t.is_contiguous())
}

/// The encoder's parameters by role: the patch embedding, the position embedding, each
/// block's by field, the final norm.
struct EncoderParams {
    patch: (Tensor, Tensor),
    pos_embed: Tensor,
    blocks: Vec<BlockParams<Tensor>>,
    final_norm: (Tensor, Tensor),
}

impl EncoderParams {
    fn of(encoder: &SapiensEncoder) -> Self {
        Self {
            patch: (encoder.projection.weight.clone(), encoder.projection.bias.clone()),
            pos_embed: encoder.pos_embed.clone(),
            blocks: encoder.layers.iter().map(Block::parameters).collect(),
            final_norm: (encoder.ln1.weight.clone(), encoder.ln1.bias.clone()),
        }
    }

    fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        let pairs = self
            .blocks
            .iter()
            .flat_map(|b| [&b.ln1, &b.qkv, &b.proj, &b.ln2, &b.fc1, &b.fc2].into_iter().flat_map(|(w, b)| [w, b]));
        [&self.patch.0, &self.patch.1, &self.pos_embed]
            .into_iter()
            .chain(pairs)
            .chain([&self.final_norm.0, &self.final_norm.1])
    }
}

/// What backward needs of one block, all row-major with B x N rows.
struct BlockTape {
    /// The block's input (D wide), LN1 of it, the packed qkv (3D), the attention output (D)
    /// and, when small enough, the attention probabilities.
    x_in: Vec<f32>,
    normed1: Vec<f32>,
    qkv: Vec<f32>,
    attended: Vec<f32>,
    probabilities: Option<Vec<f32>>,
    /// After the attention branch's residual add (D), LN2 of it, fc1's output before and
    /// after GELU (hidden wide).
    x_mid: Vec<f32>,
    normed2: Vec<f32>,
    pre_gelu: Vec<f32>,
    hidden: Vec<f32>,
}

/// The record of one training forward, consumed by [`EncoderTape::backward`].
pub struct EncoderTape {
    params: EncoderParams,
    products: Products,
    heads: usize,
    eps: f32,
    /// (batch, tokens, embed dim, MLP hidden dim, patch row width 3 k k).
    dims: (usize, usize, usize, usize, usize),
    patches: Tensor,
    blocks: Vec<BlockTape>,
    /// The input of the final norm.
    x_last: Vec<f32>,
}

/// One block's forward on the rows `x`; returns its output and its tape.
fn block_forward(
    block: &Block,
    products: Products,
    x: Vec<f32>,
    (b, n, d, hidden_dim): (usize, usize, usize, usize),
    eps: f32,
) -> Result<(Vec<f32>, BlockTape)> {
    let w = read;
    let (ln1_w, ln1_b, ln2_w, ln2_b) =
        (w(&block.ln1.weight), w(&block.ln1.bias), w(&block.ln2.weight), w(&block.ln2.bias));
    let (qkv_w, qkv_b, proj_w, proj_b) =
        (w(&block.attn.qkv.weight), w(&block.attn.qkv.bias), w(&block.attn.proj.weight), w(&block.attn.proj.bias));
    let (fc1_w, fc1_b, fc2_w, fc2_b) =
        (w(&block.fc1.weight), w(&block.fc1.bias), w(&block.fc2.weight), w(&block.fc2.bias));
    let heads = block.attn.heads();

    let normed1 = layer_norm_forward(&x, ln1_w.values()?, ln1_b.values()?, eps);
    let qkv = products.linear(&normed1, qkv_w.values()?, qkv_b.values()?, d, None);
    let keep = b * heads * n * n * std::mem::size_of::<f32>() <= KEEP_PROBABILITIES_BYTES;
    let (attended, probabilities) = products.attention(&qkv, (b, n, d), heads, keep)?;
    let x_mid = products.linear(&attended, proj_w.values()?, proj_b.values()?, d, Some(&x));
    let normed2 = layer_norm_forward(&x_mid, ln2_w.values()?, ln2_b.values()?, eps);
    let pre_gelu = products.linear(&normed2, fc1_w.values()?, fc1_b.values()?, d, None);
    let hidden = gelu_forward(&pre_gelu);
    let x_out = products.linear(&hidden, fc2_w.values()?, fc2_b.values()?, hidden_dim, Some(&x_mid));
    let tape = BlockTape { x_in: x, normed1, qkv, attended, probabilities, x_mid, normed2, pre_gelu, hidden };
    Ok((x_out, tape))
}

/// Normalized images (B, 3, H, W) -> tokens (B, N, D) as a leaf for the head, and the tape.
/// The same arithmetic as [`SapiensEncoder::forward`] in train mode, with `products` in the
/// Linear layers.
pub fn forward(encoder: &SapiensEncoder, images: &Tensor, products: Products) -> Result<(Var, EncoderTape)> {
    let cfg = encoder.config();
    let patches = encoder.patch_rows(images)?;
    let (b, d, n) = (images.dim(0)?, cfg.embed_dim, cfg.num_patches());
    let patch_width = 3 * cfg.patch_size * cfg.patch_size;
    let eps = encoder.ln1.eps as f32;

    let mut x = {
        let (rows, pe_w, pe_b) = (read(&patches), read(&encoder.projection.weight), read(&encoder.projection.bias));
        let mut x = products.linear(rows.values()?, pe_w.values()?, pe_b.values()?, patch_width, None);
        let pos = read(&encoder.pos_embed);
        let pos = pos.values()?;
        if pos.len() != n * d {
            return Err(input_err!("pos_embed holds {} values, expected {n} x {d}", pos.len()));
        }
        x.par_chunks_mut((n * d).max(1)).for_each(|image| image.iter_mut().zip(pos).for_each(|(v, p)| *v += p));
        x
    };
    let mut blocks = Vec::with_capacity(encoder.layers.len());
    for block in &encoder.layers {
        let (out, tape) = block_forward(block, products, x, (b, n, d, cfg.mlp_hidden()), eps)?;
        blocks.push(tape);
        x = out;
    }
    let tokens = {
        let (ln_w, ln_b) = (read(&encoder.ln1.weight), read(&encoder.ln1.bias));
        layer_norm_forward(&x, ln_w.values()?, ln_b.values()?, eps)
    };
    let tokens = Var::from_tensor(&Tensor::from_vec(tokens, (b, n, d), &Device::Cpu)?)?;
    let heads = encoder.layers.first().map_or(1, |l| l.attn.heads());
    let tape = EncoderTape {
        params: EncoderParams::of(encoder),
        products,
        heads,
        eps,
        dims: (b, n, d, cfg.mlp_hidden(), patch_width),
        patches,
        blocks,
        x_last: x,
    };
    Ok((tokens, tape))
}

impl EncoderTape {
    /// From the gradient of the tokens (B, N, D), every encoder parameter's gradient, as
    /// (parameter, gradient) pairs.
    /// Each block's record is freed as soon as its backward is done.
    pub fn backward(self, d_tokens: &Tensor) -> Result<Vec<(Tensor, Tensor)>> {
        let EncoderTape { params, products, heads, eps, dims, patches, blocks, x_last } = self;
        let (b, n, d, hidden_dim, patch_width) = dims;
        let rows = b * n;
        if d_tokens.dims() != [b, n, d] {
            return Err(input_err!("encoder backward: token gradient {:?}, expected [{b}, {n}, {d}]", d_tokens.dims()));
        }
        let d_tokens = d_tokens.contiguous()?;

        let mut dx = vec![0f32; rows * d];
        let final_norm = {
            let (g, ln_w) = (read(&d_tokens), read(&params.final_norm.0));
            layer_norm_backward(&mut dx, false, &x_last, g.values()?, ln_w.values()?, eps)
        };
        drop(x_last);

        // Blocks, last first.
        let mut block_grads: Vec<BlockParams<Vec<f32>>> = Vec::with_capacity(blocks.len());
        for (tape, weights) in blocks.into_iter().zip(&params.blocks).rev() {
            let (ln1_w, qkv_w, proj_w, ln2_w, fc1_w, fc2_w) = (
                read(&weights.ln1.0),
                read(&weights.qkv.0),
                read(&weights.proj.0),
                read(&weights.ln2.0),
                read(&weights.fc1.0),
                read(&weights.fc2.0),
            );

            let (d_hidden, d_fc2_w, d_fc2_b) =
                products.linear_backward(&tape.hidden, fc2_w.values()?, &dx, (rows, hidden_dim, d));
            let d_pre = gelu_backward(&tape.pre_gelu, &d_hidden);
            drop(d_hidden);
            let (d_normed2, d_fc1_w, d_fc1_b) =
                products.linear_backward(&tape.normed2, fc1_w.values()?, &d_pre, (rows, d, hidden_dim));
            drop(d_pre);
            // The residual passes dx through; LN2's input gradient adds to it.
            let ln2 = layer_norm_backward(&mut dx, true, &tape.x_mid, &d_normed2, ln2_w.values()?, eps);
            let (d_attended, d_proj_w, d_proj_b) =
                products.linear_backward(&tape.attended, proj_w.values()?, &dx, (rows, d, d));
            let kept = tape.probabilities.as_deref();
            let d_qkv = products.attention_backward(&tape.qkv, &tape.attended, &d_attended, (b, n, d), heads, kept)?;
            let (d_normed1, d_qkv_w, d_qkv_b) =
                products.linear_backward(&tape.normed1, qkv_w.values()?, &d_qkv, (rows, d, 3 * d));
            let ln1 = layer_norm_backward(&mut dx, true, &tape.x_in, &d_normed1, ln1_w.values()?, eps);
            let split = |both: Vec<f32>| (both[..d].to_vec(), both[d..].to_vec());
            block_grads.push(BlockParams {
                ln1: split(ln1),
                qkv: (d_qkv_w, d_qkv_b),
                proj: (d_proj_w, d_proj_b),
                ln2: split(ln2),
                fc1: (d_fc1_w, d_fc1_b),
                fc2: (d_fc2_w, d_fc2_b),
            });
        }
        block_grads.reverse();

        // Patch embedding and position embedding: dx is now the gradient of their sum.
        let patches = read(&patches);
        let (d_pe_w, d_pe_b) = products.param_grads(patches.values()?, &dx, (rows, patch_width, d));
        let mut d_pos = vec![0f32; n * d];
        for image in dx.chunks(n * d) {
            d_pos.par_chunks_mut(4096).zip(image.par_chunks(4096)).for_each(|(acc, g)| {
                acc.iter_mut().zip(g).for_each(|(a, v)| *a += v);
            });
        }

        // Every parameter with its gradient, by role.
        let mut pairs: Vec<(Tensor, Vec<f32>)> = vec![
            (params.patch.0, d_pe_w),
            (params.patch.1, d_pe_b),
            (params.pos_embed, d_pos),
            (params.final_norm.0, final_norm[..d].to_vec()),
            (params.final_norm.1, final_norm[d..].to_vec()),
        ];
        for (weights, grads) in params.blocks.into_iter().zip(block_grads) {
            for ((w, b), (dw, db)) in weights.into_pairs().into_iter().zip(grads.into_pairs()) {
                pairs.extend([(w, dw), (b, db)]);
            }
        }
        gradient_tensors(pairs, PASS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::model::MotivNet;
    use crate::nn::layers::Mode;

    /// The hand-written pass against candle's graph on the `tiny` preset (3 heads, 4 blocks):
    /// the tokens, and every encoder gradient of the same loss.
    #[test]
    fn matches_the_candle_graph_in_tokens_and_every_gradient() {
        let dev = Device::Cpu;
        let model = MotivNet::new(&ModelConfig::preset("tiny").unwrap(), &dev, 5).unwrap();
        let images = Tensor::randn(0f32, 1.0, (2, 3, 256, 192), &dev).unwrap();
        assert!(supported(&model.encoder, &images));
        let mut rng = rand::SeedableRng::seed_from_u64(1);
        let composed = model.encoder.forward(&images, &mut Mode::Train(&mut rng)).unwrap();
        let (tokens, tape) = forward(&model.encoder, &images, Products::F32).unwrap();
        let diff = |a: &Tensor, b: &Tensor| {
            let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1e-6);
            let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            d / scale
        };
        assert!(diff(tokens.as_tensor(), &composed) < 1e-5, "tokens differ by {}", diff(tokens.as_tensor(), &composed));

        // Any loss of the tokens will do: a fixed random projection.
        let up = Tensor::randn(0f32, 1.0, composed.shape(), &dev).unwrap();
        let expected = (&composed * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let d_tokens = (&up * 1.0).unwrap();
        let got = tape.backward(&d_tokens).unwrap();
        assert_eq!(got.len(), model.params.iter().filter(|p| p.name.starts_with(crate::keys::ENCODER)).count());
        for (param, grad) in &got {
            let name = model.params.iter().find(|p| p.var.as_tensor().id() == param.id()).unwrap().name.clone();
            let want = expected.get(param).unwrap_or_else(|| panic!("{name}: no gradient on the candle path"));
            assert_eq!(grad.dims(), param.dims(), "{name}");
            assert!(diff(grad, want) < 1e-4, "{name} differs by {} (relative to its largest value)", diff(grad, want));
        }
    }

    /// The pass with bf16 products against the f32 pass on the `tiny` preset: the tokens and
    /// every encoder gradient within bf16's precision (its operands keep 8 bits of mantissa),
    /// and not the same values (the products did run in bf16).
    #[test]
    fn bf16_products_follow_the_f32_pass_to_bf16_precision() {
        if !crate::kernels::amx::checkable_here("the bf16 training pass") {
            return;
        }
        let dev = Device::Cpu;
        let model = MotivNet::new(&ModelConfig::preset("tiny").unwrap(), &dev, 5).unwrap();
        let images = Tensor::randn(0f32, 1.0, (2, 3, 256, 192), &dev).unwrap();
        let (t32, tape32) = forward(&model.encoder, &images, Products::F32).unwrap();
        let (t16, tape16) = forward(&model.encoder, &images, Products::Bf16).unwrap();
        let relative = |a: &Tensor, b: &Tensor| {
            let max = |t: &Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            max(&(a - b).unwrap()) / max(b).max(1e-6)
        };
        let tokens = relative(t16.as_tensor(), t32.as_tensor());
        assert!(tokens > 0.0 && tokens < 2e-2, "tokens differ by {tokens} of their largest value");

        let up = Tensor::randn(0f32, 1.0, t32.as_tensor().shape(), &dev).unwrap();
        let (g32, g16) = (tape32.backward(&up).unwrap(), tape16.backward(&up).unwrap());
        let mut worst = (0f32, String::new());
        for ((param, a), (_, b)) in g16.iter().zip(&g32) {
            let name = model.params.iter().find(|p| p.var.as_tensor().id() == param.id()).unwrap().name.clone();
            let d = relative(a, b);
            assert!(d < 2e-2, "{name}: the bf16 gradient differs by {d} of the f32 one's largest value");
            if d > worst.0 {
                worst = (d, name);
            }
        }
        assert!(worst.0 > 0.0, "every gradient is the f32 pass's: the products did not run in bf16");
        eprintln!("largest gradient difference: {} ({})", worst.0, worst.1);
    }

    #[test]
    fn a_token_gradient_of_the_wrong_shape_is_refused() {
        let dev = Device::Cpu;
        let model = MotivNet::new(&ModelConfig::preset("tiny").unwrap(), &dev, 5).unwrap();
        let images = Tensor::zeros((1, 3, 256, 192), candle_core::DType::F32, &dev).unwrap();
        let (_, tape) = forward(&model.encoder, &images, Products::F32).unwrap();
        let wrong = Tensor::zeros((1, 10, 192), candle_core::DType::F32, &dev).unwrap();
        let err = tape.backward(&wrong).unwrap_err().to_string();
        assert!(err.contains("token gradient [1, 10, 192]"), "{err}");
    }
}
