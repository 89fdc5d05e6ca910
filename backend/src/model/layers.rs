//! Building blocks shared by the encoder and decoder, written from differentiable candle ops
//! (candle-nn's fused layer norm and softmax have no backward pass).

use candle_core::{D, Tensor};
use candle_nn::VarBuilder;

/// Layer normalisation over the last dimension, with weight and bias.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias` of size `size` from `vb`.
    pub fn load(vb: VarBuilder<'_>, size: usize, eps: f64) -> candle_core::Result<Self> {
        let weight = vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(size, "bias", candle_nn::Init::Const(0.0))?;
        Ok(LayerNorm { weight, bias, eps })
    }

    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        if !needs_gradient(&[xs, &self.weight, &self.bias]) && fused_dtype(xs) {
            // Nothing to differentiate: candle's fused kernel is several times faster.
            return candle_nn::ops::layer_norm(&xs.contiguous()?, &self.weight, &self.bias, self.eps as f32);
        }
        let hidden = xs.dim(D::Minus1)? as f64;
        let mean = (xs.sum_keepdim(D::Minus1)? / hidden)?;
        let centered = xs.broadcast_sub(&mean)?;
        let variance = (centered.sqr()?.sum_keepdim(D::Minus1)? / hidden)?;
        let normed = centered.broadcast_div(&(variance + self.eps)?.sqrt()?)?;
        normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

/// Inverted dropout that is active only in training mode.
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    probability: f32,
}

impl Dropout {
    pub fn new(probability: f32) -> Self {
        Dropout { probability }
    }

    pub fn forward(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if train && self.probability > 0.0 { candle_nn::ops::dropout(xs, self.probability) } else { Ok(xs.clone()) }
    }
}

/// Softmax over the last dimension (max-subtracted for stability): differentiable when a
/// gradient will be asked of it, candle's fused kernel otherwise.
pub fn softmax_last_dim(xs: &Tensor) -> candle_core::Result<Tensor> {
    if needs_gradient(&[xs]) {
        candle_nn::ops::softmax(xs, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(&xs.contiguous()?)
    }
}

/// Whether candle's fused kernels handle this dtype (they do not take f64).
pub fn fused_dtype(xs: &Tensor) -> bool {
    xs.dtype() != candle_core::DType::F64
}

/// Whether any of `tensors` is a variable or was computed from one, i.e. whether backward
/// through an op on them must work. (candle's fused norm and softmax kernels have no backward.)
pub fn needs_gradient(tensors: &[&Tensor]) -> bool {
    tensors.iter().any(|t| t.track_op())
}
