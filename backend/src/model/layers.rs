//! Building blocks shared by the encoder and decoder: layer norm, dropout and softmax, all of
//! them differentiable (candle-nn's fused layer norm and softmax have no backward pass; ours do).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::ops;

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
        ops::layer_norm(xs, &self.weight, &self.bias, self.eps)
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

/// Softmax over the last dimension: a fused kernel with a backward pass on the CPU.
pub fn softmax_last_dim(xs: &Tensor) -> candle_core::Result<Tensor> {
    ops::softmax_last_dim(xs)
}
