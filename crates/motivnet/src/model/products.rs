//! How the encoder's hand-written training pass multiplies: f32 products, or bf16 operands
//! with f32 sums on the CPU's AMX tiles. (The head's pass stays f32: see `head_train`.)

use crate::error::{Error, Result};
use crate::kernels::attention::{
    attention_backward, attention_backward_bf16, attention_forward, attention_forward_bf16,
};
use crate::kernels::{linear, linear_bf16};

/// How the pass multiplies in its Linear layers (the patch embedding, qkv, the projections,
/// the MLPs) and its attention, forward and backward: f32 products (`gemm`), or operands
/// rounded to bf16 with f32 sums on the CPU's AMX tiles or AVX512_BF16's dot products
/// (`precision: 'bf16'`; see
/// [`crate::kernels::linear_bf16`] and `attention_backward_bf16`). The softmax and its
/// backward, LayerNorm, GELU, the residuals and every gradient are f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Products {
    F32,
    Bf16,
}

impl Products {
    /// x W^T + b [+ residual] over rows of in_dim values.
    pub fn linear(self, x: &[f32], w: &[f32], b: &[f32], in_dim: usize, residual: Option<&[f32]>) -> Vec<f32> {
        match self {
            Products::F32 => linear::linear_rows(x, w, b, in_dim, residual),
            Products::Bf16 => linear_bf16::linear_rows(x, w, b, in_dim, residual),
        }
    }

    /// dW and db of a Linear (W: out x in) from its input x and output gradient dy, dims
    /// (rows, in, out).
    pub fn param_grads(self, x: &[f32], dy: &[f32], dims: (usize, usize, usize)) -> (Vec<f32>, Vec<f32>) {
        match self {
            Products::F32 => linear::param_grads(x, dy, dims),
            Products::Bf16 => linear_bf16::param_grads(x, dy, dims),
        }
    }

    /// dx = dy W (rows x in) of a Linear (W: out x in), dims (rows, in, out).
    pub fn input_grad(self, dy: &[f32], w: &[f32], dims: (usize, usize, usize)) -> Vec<f32> {
        match self {
            Products::F32 => linear::input_grad(dy, w, dims),
            Products::Bf16 => linear_bf16::input_grad(dy, w, dims),
        }
    }

    /// The self-attention's output over the packed qkv, and its probabilities when `keep` asks
    /// for them and the f32 products run (the bf16 backward recomputes its own).
    pub fn attention(
        self,
        qkv: &[f32],
        dims: (usize, usize, usize),
        heads: usize,
        keep: bool,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        match self {
            Products::F32 => attention_forward(qkv, dims, heads, keep).map_err(Error::Internal),
            Products::Bf16 => Ok((attention_forward_bf16(qkv, dims, heads).map_err(Error::Internal)?, None)),
        }
    }

    /// The gradient of the packed qkv from the attention's output and its gradient.
    pub fn attention_backward(
        self,
        qkv: &[f32],
        out: &[f32],
        d_out: &[f32],
        dims: (usize, usize, usize),
        heads: usize,
        kept: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        match self {
            Products::F32 => attention_backward(qkv, out, d_out, dims, heads, kept),
            Products::Bf16 => attention_backward_bf16(qkv, out, d_out, dims, heads),
        }
        .map_err(Error::Internal)
    }

    /// All three gradients of a Linear: dx (rows x in), dW and db.
    pub fn linear_backward(
        self,
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        dims: (usize, usize, usize),
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (dw, db) = self.param_grads(x, dy, dims);
        (self.input_grad(dy, w, dims), dw, db)
    }
}
