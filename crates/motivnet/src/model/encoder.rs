//! Sapiens ViT encoder (Khirodkar et al., "Sapiens: Foundation for Human Vision Models", 2024),
//! as the MotivNet reference uses it (docs/REFERENCE_MODEL.md, section 1).
//!
//! In: normalized images (B, 3, H, W). Out: tokens (B, N, D), N = grid_h x grid_w in row-major
//! (h, w) order, after the final LayerNorm; the reference's (B, D, grid_h, grid_w) feature map
//! is exactly these tokens transposed, and the head flattens it straight back.
//!
//! Names follow the checkpoint: `projection`, `pos_embed`, `layers.{i}.{ln1,attn.qkv,attn.proj,
//! ln2,ffn.layers.0.0,ffn.layers.1}`, `ln1` (final norm), under `pose_encoder.`.

use candle_core::{Module, Tensor};

use crate::config::EncoderConfig;
use crate::error::{input_err, Result};
use crate::nn::layers::{attention_branch_fused, cut_graph_unless, mlp_plus_fused, LayerNorm, Linear, Mode};
use crate::nn::params::{torch_default_bound, Group, Init, InitScheme, ParamStore};

const LN_EPS: f64 = 1e-6;

/// A Linear layer's weight and bias init under `scheme`.
fn linear_init(scheme: InitScheme, fan_in: usize) -> (Init, Init) {
    match scheme {
        InitScheme::Upstream => (torch_default_bound(fan_in), torch_default_bound(fan_in)),
        InitScheme::Vit => (Init::TruncNormal { std: 0.02 }, Init::Zeros),
    }
}

pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    heads: usize,
}

impl Attention {
    fn new(store: &mut ParamStore, prefix: &str, dim: usize, heads: usize, init: InitScheme) -> Result<Self> {
        let (w, b) = linear_init(init, dim);
        Ok(Self {
            qkv: Linear::new(store, &format!("{prefix}.qkv"), dim, 3 * dim, w, b)?,
            proj: Linear::new(store, &format!("{prefix}.proj"), dim, dim, w, b)?,
            heads,
        })
    }

    pub fn heads(&self) -> usize {
        self.heads
    }

    /// x + this attention of `ln`(x): the block's first branch with its residual, which the
    /// bf16 products add as the projection's blocks finish. The normalized tokens live only
    /// until qkv is made (under bf16 they are never made: qkv normalizes x's rows as it reads
    /// them; for bf16 inference at most shapes the whole branch is one op whose activations
    /// stay in bf16, [`attention_branch_fused`]).
    fn forward_plus(&self, ln: &LayerNorm, x: &Tensor, training: bool) -> Result<Tensor> {
        if let Some(y) = attention_branch_fused(ln, &self.qkv, &self.proj, self.heads, x, training)? {
            return Ok(y);
        }
        // The reference splits qkv as (B, N, 3, heads, hd); the fused op reads that layout.
        let qkv = cut_graph_unless(training, self.qkv.forward_normed(ln, x, training)?);
        let out = cut_graph_unless(training, crate::ops::attention::self_attention(&qkv, self.heads, training)?);
        drop(qkv);
        Ok(cut_graph_unless(training, self.proj.forward_plus(&out, x, training)?))
    }
}

/// One pre-norm transformer block. Its fields are the one schema of the block's parameters:
/// the graph forward, the hand-written training pass (`encoder_train`) and its gradients all
/// name them through these fields and [`Block::parameters`].
pub struct Block {
    pub ln1: LayerNorm,
    pub attn: Attention,
    pub ln2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
}

/// A value for each parameter of a [`Block`], by the block's field names.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockParams<T> {
    pub ln1: (T, T),
    pub qkv: (T, T),
    pub proj: (T, T),
    pub ln2: (T, T),
    pub fc1: (T, T),
    pub fc2: (T, T),
}

impl<T> BlockParams<T> {
    /// (weight, bias) pairs in the block's order.
    pub fn into_pairs(self) -> [(T, T); 6] {
        [self.ln1, self.qkv, self.proj, self.ln2, self.fc1, self.fc2]
    }
}

impl Block {
    /// The block's parameter tensors, by field.
    pub fn parameters(&self) -> BlockParams<Tensor> {
        let pair = |w: &Tensor, b: &Tensor| (w.clone(), b.clone());
        BlockParams {
            ln1: pair(&self.ln1.weight, &self.ln1.bias),
            qkv: pair(&self.attn.qkv.weight, &self.attn.qkv.bias),
            proj: pair(&self.attn.proj.weight, &self.attn.proj.bias),
            ln2: pair(&self.ln2.weight, &self.ln2.bias),
            fc1: pair(&self.fc1.weight, &self.fc1.bias),
            fc2: pair(&self.fc2.weight, &self.fc2.bias),
        }
    }

    fn new(store: &mut ParamStore, prefix: &str, cfg: &EncoderConfig, init: InitScheme) -> Result<Self> {
        let d = cfg.embed_dim;
        let hidden = cfg.mlp_hidden();
        let (w1, b1) = linear_init(init, d);
        let (w2, b2) = linear_init(init, hidden);
        Ok(Self {
            ln1: LayerNorm::new(store, &format!("{prefix}.ln1"), d, LN_EPS)?,
            attn: Attention::new(store, &format!("{prefix}.attn"), d, cfg.heads, init)?,
            ln2: LayerNorm::new(store, &format!("{prefix}.ln2"), d, LN_EPS)?,
            fc1: Linear::new(store, &format!("{prefix}.ffn.layers.0.0"), d, hidden, w1, b1)?,
            fc2: Linear::new(store, &format!("{prefix}.ffn.layers.1"), hidden, d, w2, b2)?,
        })
    }

    /// `training`: whether backward will follow (the fused ops then keep what it needs). The
    /// block takes `x` so that in eval it is freed once the attention's residual is added.
    fn forward(&self, x: Tensor, training: bool) -> Result<Tensor> {
        let attended = self.attn.forward_plus(&self.ln1, &x, training)?;
        // The block's input is let go before the MLP (a shadowing `let` would keep it alive).
        drop(x);
        let x = attended;
        if let Some(out) = mlp_plus_fused(&self.ln2, &self.fc1, &self.fc2, &x, training)? {
            return Ok(out);
        }
        let normed = cut_graph_unless(training, self.ln2.forward(&x)?);
        // Exact (erf) GELU as PyTorch's nn.GELU() (candle's gelu() is the tanh approximation),
        // fused into fc1 on the CPU.
        let hidden = cut_graph_unless(training, self.fc1.forward_gelu(&normed, training)?);
        drop(normed);
        let h = cut_graph_unless(training, self.fc2.forward(&hidden)?);
        drop(hidden);
        Ok((x + h)?)
    }
}

pub struct SapiensEncoder {
    /// Conv2d(3, D, k, stride k, padding p) weight (D, 3, k, k) and bias (D).
    pub projection: Linear,
    pub pos_embed: Tensor,
    pub layers: Vec<Block>,
    pub ln1: LayerNorm,
    cfg: EncoderConfig,
}

impl SapiensEncoder {
    /// A fresh encoder. Its parameters are placed in the encoder's optimizer group at their
    /// depth: 0 for the patch and position embeddings, i + 1 for block i, depth + 1 for the
    /// final norm (what layer-wise learning-rate decay reads).
    pub fn new(store: &mut ParamStore, prefix: &str, cfg: &EncoderConfig, init: InitScheme) -> Result<Self> {
        let (d, k) = (cfg.embed_dim, cfg.patch_size);
        store.place(Group::Encoder, Some(0));
        // The patch conv keeps PyTorch's default init under both schemes.
        let bound = torch_default_bound(3 * k * k);
        let weight = store.add(&format!("{prefix}.projection.weight"), (d, 3, k, k), bound)?;
        let bias = store.add(&format!("{prefix}.projection.bias"), d, bound)?;
        let pos_init = match init {
            InitScheme::Upstream => Init::Zeros,
            InitScheme::Vit => Init::TruncNormal { std: 0.02 },
        };
        let pos_embed = store.add_no_decay(&format!("{prefix}.pos_embed"), (1, cfg.num_patches(), d), pos_init)?;
        let layers = (0..cfg.depth)
            .map(|i| {
                store.place(Group::Encoder, Some(i + 1));
                Block::new(store, &format!("{prefix}.layers.{i}"), cfg, init)
            })
            .collect::<Result<Vec<_>>>()?;
        store.place(Group::Encoder, Some(cfg.depth + 1));
        let ln1 = LayerNorm::new(store, &format!("{prefix}.ln1"), d, LN_EPS)?;
        Ok(Self { projection: Linear::from_parts(weight, bias), pos_embed, layers, ln1, cfg: cfg.clone() })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    /// Every Linear layer with a weight of its own: the patch embedding, then each block's.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let blocks = self.layers.iter_mut().flat_map(|b| [&mut b.attn.qkv, &mut b.attn.proj, &mut b.fc1, &mut b.fc2]);
        std::iter::once(&mut self.projection).chain(blocks).collect()
    }

    /// Normalized images (B, 3, H, W) -> tokens (B, N, D).
    pub fn forward(&self, images: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let tokens = self.patch_embed(images)?;
        // In eval the sum records no graph, and the tokens (and through their graph the patch
        // rows) are let go here: held to the end, they were sapiens-0.3b's 21 MiB for all 24 blocks.
        let pos_embed = self.pos_embed.to_dtype(tokens.dtype())?;
        let mut x = crate::nn::layers::cut_graph_in_eval(tokens.broadcast_add(&pos_embed)?, mode);
        drop(tokens);
        for layer in &self.layers {
            x = crate::nn::layers::cut_graph_in_eval(layer.forward(x, mode.is_train())?, mode);
        }
        Ok(self.ln1.forward(&x)?)
    }

    /// Images (B, 3, H, W) at the input size, checked, -> the patch embedding's matmul rows
    /// (B, N, 3 k k).
    pub fn patch_rows(&self, images: &Tensor) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (_, c, h, w) = images.dims4()?;
        if c != 3 || h != cfg.input_height || w != cfg.input_width {
            return Err(input_err!(
                "input batch is {c} x {h} x {w} (channels x height x width), expected 3 x {} x {}",
                cfg.input_height,
                cfg.input_width
            ));
        }
        Ok(crate::ops::patches::patch_rows(images, cfg.patch_size, cfg.patch_padding, cfg.grid())?)
    }

    /// The stride-k, kernel-k convolution as one matmul: zero-pad (and crop) the image to
    /// exactly the pixels the conv reads, cut it into k x k patches, multiply by the flattened
    /// kernel. candle's conv2d backward is slow and breaks on uneven remainders (docs/ARCHITECTURE.md).
    fn patch_embed(&self, images: &Tensor) -> Result<Tensor> {
        // The (D, 3, k, k) kernel multiplies as (D, 3 k k), the order patch_rows lays out.
        Ok(self.projection.forward(&self.patch_rows(images)?)?)
    }
}
