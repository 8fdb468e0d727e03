//! ML-Decoder head (Ridnik et al., "ML-Decoder: Scalable and Versatile Classification Head",
//! 2021), configured as the MotivNet reference does (docs/REFERENCE_MODEL.md, section 2).
//!
//! In: encoder tokens (B, N, D). Out: logits (B, num_classes).
//! Memory m = ReLU(embed_standart(tokens)) (B, N, E); K fixed queries (B, K, E) pass through
//! `layers` cross-attention decoder layers; a group fully-connected layer maps each query to
//! `factor` logits. Names follow the checkpoint under `decoder.decoder.`: `embed_standart`,
//! `query_embed`, `layers.{i}.{self_attn,linear1,linear2,norm1,norm2,norm3}`,
//! `duplicate_pooling`, `duplicate_pooling_bias`.
//!
//! [`MlDecoder::forward_explained`] also returns where each class looks: the last layer's
//! cross-attention weights over the tokens (see there for the definition).

use candle_core::{Module, Tensor};

use crate::config::HeadConfig;
use crate::error::{Error, Result};
use crate::nn::layers::{
    attend, attention, attention_probabilities, cut_graph_in_eval, dropout, merge_heads, relu, split_heads, LayerNorm,
    Linear, Mode,
};
use crate::nn::params::{torch_default_bound, Group, Init, InitScheme, ParamStore};

const LN_EPS: f64 = 1e-5;

/// `nn.MultiheadAttention` (batch second in the reference; the math is the same).
pub struct CrossAttention {
    pub in_proj_weight: Tensor,
    pub in_proj_bias: Tensor,
    pub out_proj: Linear,
    /// The query's projection (in_proj's rows 0..E) and the memory's (rows E..3E, keys and
    /// values in one product), made once over views of in_proj, which share its storage: a
    /// loaded or trained weight is seen, and their packings for the bf16 and int8 products are
    /// kept from call to call and remade when the parameters change, as every Linear's are.
    /// Made at each call, they packed their weights at every forward.
    pub(crate) q_proj: Linear,
    pub(crate) kv_proj: Linear,
    heads: usize,
    dropout: f64,
}

impl CrossAttention {
    fn new(store: &mut ParamStore, prefix: &str, e: usize, heads: usize, dropout: f64) -> Result<Self> {
        // PyTorch's _reset_parameters: Xavier-uniform in_proj, zero biases, Linear default out_proj weight.
        let xavier = Init::Uniform { bound: (6.0 / (e + 3 * e) as f64).sqrt() };
        let in_proj_weight = store.add(&format!("{prefix}.in_proj_weight"), (3 * e, e), xavier)?;
        let in_proj_bias = store.add(&format!("{prefix}.in_proj_bias"), 3 * e, Init::Zeros)?;
        let rows = |from: usize, len: usize| -> Result<Linear> {
            Ok(Linear::from_parts(in_proj_weight.narrow(0, from, len)?, in_proj_bias.narrow(0, from, len)?))
        };
        Ok(Self {
            q_proj: rows(0, e)?,
            kv_proj: rows(e, 2 * e)?,
            in_proj_weight,
            in_proj_bias,
            out_proj: Linear::new(store, &format!("{prefix}.out_proj"), e, e, torch_default_bound(e), Init::Zeros)?,
            heads,
            dropout,
        })
    }

    fn forward(&self, query: &Tensor, memory: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let (q, k, v) = self.project(query, memory)?;
        let out = attention(&q, &k, &v, self.dropout, mode)?;
        Ok(self.out_proj.forward(&merge_heads(&out)?)?)
    }

    /// As [`CrossAttention::forward`], with the attention weights averaged over heads,
    /// (B, Nq, Nk) in f32: what PyTorch returns with `need_weights=True,
    /// average_attn_weights=True`. Those are taken after the weights' dropout in train mode;
    /// these before it, so they match only where dropout is off (eval mode, or p = 0).
    fn forward_with_weights(&self, query: &Tensor, memory: &Tensor, mode: &mut Mode) -> Result<(Tensor, Tensor)> {
        let (q, k, v) = self.project(query, memory)?;
        let probs = attention_probabilities(&q, &k)?; // (B, heads, Nq, Nk)
        let out = attend(&probs, &v, self.dropout, mode)?;
        Ok((self.out_proj.forward(&merge_heads(&out)?)?, probs.mean(1)?))
    }

    /// Queries, keys and values split into heads, (B, heads, len, E / heads) each.
    fn project(&self, query: &Tensor, memory: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let e = self.out_proj.weight.dim(0)?;
        let q = split_heads(&self.q_proj.forward(query)?, self.heads)?;
        // Keys and values in one matmul over the (long) memory.
        let kv = self.kv_proj.forward(memory)?;
        let k = split_heads(&kv.narrow(2, 0, e)?, self.heads)?;
        let v = split_heads(&kv.narrow(2, e, e)?, self.heads)?;
        Ok((q, k, v))
    }
}

/// ML-Decoder's `TransformerDecoderLayerOptimal`: no self-attention, and the query is added to
/// (a dropout of) itself before the first norm; the reference keeps that quirk, so do we.
pub struct DecoderLayer {
    pub self_attn: CrossAttention,
    pub linear1: Linear,
    pub linear2: Linear,
    pub norm1: LayerNorm,
    pub norm2: LayerNorm,
    pub norm3: LayerNorm,
    dropout: f64,
}

impl DecoderLayer {
    fn new(store: &mut ParamStore, prefix: &str, cfg: &HeadConfig) -> Result<Self> {
        let (e, ff) = (cfg.embed_dim, cfg.feedforward);
        Ok(Self {
            self_attn: CrossAttention::new(store, &format!("{prefix}.self_attn"), e, cfg.heads, cfg.dropout)?,
            linear1: Linear::new(
                store,
                &format!("{prefix}.linear1"),
                e,
                ff,
                torch_default_bound(e),
                torch_default_bound(e),
            )?,
            linear2: Linear::new(
                store,
                &format!("{prefix}.linear2"),
                ff,
                e,
                torch_default_bound(ff),
                torch_default_bound(ff),
            )?,
            norm1: LayerNorm::new(store, &format!("{prefix}.norm1"), e, LN_EPS)?,
            norm2: LayerNorm::new(store, &format!("{prefix}.norm2"), e, LN_EPS)?,
            norm3: LayerNorm::new(store, &format!("{prefix}.norm3"), e, LN_EPS)?,
            dropout: cfg.dropout,
        })
    }

    /// The layer's output, and with `weights` its cross-attention weights averaged over heads
    /// (B, K, N) f32 (see [`CrossAttention::forward_with_weights`]).
    fn forward(&self, t: &Tensor, memory: &Tensor, mode: &mut Mode, weights: bool) -> Result<(Tensor, Option<Tensor>)> {
        let p = self.dropout;
        let t = self.norm1.forward(&(t + dropout(t, p, mode)?)?)?;
        let (a, w) = if weights {
            let (a, w) = self.self_attn.forward_with_weights(&t, memory, mode)?;
            (a, Some(w))
        } else {
            (self.self_attn.forward(&t, memory, mode)?, None)
        };
        let t = self.norm2.forward(&(&t + dropout(&a, p, mode)?)?)?;
        let hidden = dropout(&relu(&self.linear1.forward(&t)?)?, p, mode)?;
        let f = dropout(&self.linear2.forward(&hidden)?, p, mode)?;
        Ok((self.norm3.forward(&(&t + f)?)?, w))
    }
}

pub struct MlDecoder {
    pub embed_standart: Linear,
    /// Fixed queries (K, E): loaded and saved, never trained (requires_grad false upstream).
    pub query_embed: Tensor,
    pub layers: Vec<DecoderLayer>,
    /// Group fully-connected weights (K, E, factor) and bias (num_classes).
    pub duplicate_pooling: Tensor,
    pub duplicate_pooling_bias: Tensor,
    cfg: HeadConfig,
}

impl MlDecoder {
    /// A fresh head; under [`InitScheme::Upstream`] every decoder layer starts as a copy of the
    /// first, as `nn.TransformerDecoder(layer, num_layers)` deep-copies its one layer.
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        cfg: &HeadConfig,
        in_dim: usize,
        init: InitScheme,
    ) -> Result<Self> {
        let (e, k, f) = (cfg.embed_dim, cfg.num_groups(), cfg.duplicate_factor());
        store.place(Group::Decoder, None);
        let bound = torch_default_bound(in_dim);
        let embed_standart = Linear::new(store, &format!("{prefix}.embed_standart"), in_dim, e, bound, bound)?;
        let query_embed =
            store.add_frozen(&format!("{prefix}.query_embed.weight"), (k, e), Init::Normal { std: 1.0 })?;
        let layers = (0..cfg.layers)
            .map(|i| DecoderLayer::new(store, &format!("{prefix}.layers.{i}"), cfg))
            .collect::<Result<Vec<_>>>()?;
        if init == InitScheme::Upstream {
            for i in 1..cfg.layers {
                store.copy_module(&format!("{prefix}.layers.0."), &format!("{prefix}.layers.{i}."))?;
            }
        }
        // Xavier-normal on (K, E, f): fan_in = E * f, fan_out = K * f.
        let xavier = Init::Normal { std: (2.0 / ((e * f + k * f) as f64)).sqrt() };
        let duplicate_pooling = store.add(&format!("{prefix}.duplicate_pooling"), (k, e, f), xavier)?;
        let duplicate_pooling_bias =
            store.add(&format!("{prefix}.duplicate_pooling_bias"), cfg.num_classes, Init::Zeros)?;
        Ok(Self { embed_standart, query_embed, layers, duplicate_pooling, duplicate_pooling_bias, cfg: cfg.clone() })
    }

    pub fn config(&self) -> &HeadConfig {
        &self.cfg
    }

    /// Every Linear layer with a weight of its own: the embedding, then each decoder layer's
    /// (the cross-attention's in-projection is a plain parameter, sliced as it is used).
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let layers = self.layers.iter_mut().flat_map(|l| [&mut l.self_attn.out_proj, &mut l.linear1, &mut l.linear2]);
        std::iter::once(&mut self.embed_standart).chain(layers).collect()
    }

    /// Tokens (B, N, D) -> logits (B, num_classes).
    pub fn forward(&self, tokens: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        Ok(self.run(tokens, mode, false)?.0)
    }

    /// Eval-mode logits (B, num_classes), the same as [`MlDecoder::forward`]'s, and where each
    /// class looks: (B, num_classes, N) f32, each row summing to 1 over the N tokens.
    ///
    /// Definition: the attention weights of the last decoder layer's cross-attention
    /// (`self_attn`, queries over the memory made from the tokens), softmax(q k^T /
    /// sqrt(d_head)) averaged over heads, as PyTorch's `nn.MultiheadAttention` returns them
    /// with `need_weights=True, average_attn_weights=True`. That gives one map per query group
    /// (B, K, N); class c takes the map of the query its logit is pooled from, group c / factor
    /// (logits[:, k * factor + j], factor = [`HeadConfig::duplicate_factor`]), so classes of one
    /// group share a map. The last layer's, because its queries are the ones pooled into the
    /// logits. In f32 under bf16 compute (the softmax's own precision there).
    pub fn forward_explained(&self, tokens: &Tensor) -> Result<(Tensor, Tensor)> {
        let (logits, weights) = self.run(tokens, &mut Mode::Eval, true)?;
        let weights = weights.ok_or_else(|| {
            Error::Config("the head has no decoder layers (head.layers is 0): no cross-attention to explain".into())
        })?;
        Ok((logits, self.class_maps(&weights.detach())?))
    }

    /// Per-group maps (B, K, N) -> per-class maps (B, num_classes, N): class c gets group
    /// c / factor's, the query logit c is pooled from.
    fn class_maps(&self, groups: &Tensor) -> Result<Tensor> {
        let factor = self.cfg.duplicate_factor();
        if factor == 1 {
            return Ok(groups.clone()); // then K = num_classes, one query a class
        }
        let group_of: Vec<u32> = (0..self.cfg.num_classes).map(|c| (c / factor) as u32).collect();
        let index = Tensor::from_vec(group_of, self.cfg.num_classes, groups.device())?;
        Ok(groups.index_select(&index, 1)?)
    }

    /// The logits, and with `weights` the last layer's head-averaged cross-attention
    /// weights (B, K, N) (None when there are no layers). Only that layer computes them, so
    /// the plain forward pays nothing for the maps.
    ///
    /// In eval on the fused CPU path the head runs as the hand-written pass on plain buffers
    /// (`head_train::predict`), with or without the maps, so explaining leaves the logits as
    /// they are.
    fn run(&self, tokens: &Tensor, mode: &mut Mode, weights: bool) -> Result<(Tensor, Option<Tensor>)> {
        if !mode.is_train() && super::head_train::predicts(self, tokens) {
            return super::head_train::predict(self, tokens, weights);
        }
        let b = tokens.dim(0)?;
        let memory = relu(&self.embed_standart.forward(tokens)?)?;
        let (k, e) = self.query_embed.dims2()?;
        // detach(): shares the storage (so loading new queries is seen) but cuts backward.
        let queries = self.query_embed.detach().to_dtype(memory.dtype())?;
        let mut t = queries.unsqueeze(0)?.broadcast_as((b, k, e))?.contiguous()?;
        let mut last_weights = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let (out, w) = layer.forward(&t, &memory, mode, weights && i + 1 == self.layers.len())?;
            t = cut_graph_in_eval(out, mode);
            last_weights = w;
        }
        // logits[:, k*f + j] = t[:, k, :] . duplicate_pooling[k, :, j]: one batched matmul over K.
        let pooling = self.duplicate_pooling.to_dtype(t.dtype())?;
        let per_group = t.transpose(0, 1)?.contiguous()?.matmul(&pooling)?; // (K, B, f)
        let flat = per_group.transpose(0, 1)?.reshape((b, k * self.cfg.duplicate_factor()))?;
        let logits = flat
            .narrow(1, 0, self.cfg.num_classes)?
            .broadcast_add(&self.duplicate_pooling_bias.to_dtype(t.dtype())?)?;
        Ok((logits, last_weights))
    }
}
