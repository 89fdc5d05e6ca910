//! A linear layer that can carry a LoRA adapter: `y = x Wᵀ + b + scale · dropout(x) Aᵀ Bᵀ`.
//! The base weight stays frozen (a plain tensor, no gradient kept for it); only A and B train.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::layers::Dropout;
use super::ops::frozen_linear;

/// Low-rank update of a linear layer (PEFT's `lora_A`, `lora_B`).
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// `(rank, in)`.
    pub a: Tensor,
    /// `(out, rank)`.
    pub b: Tensor,
    pub scale: f64,
    pub dropout: Dropout,
}

#[derive(Debug, Clone)]
pub struct Linear {
    /// `(out, in)`.
    weight: Tensor,
    bias: Option<Tensor>,
    lora: Option<LoraAdapter>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias, lora: None }
    }

    /// Loads `weight` (and `bias` when `with_bias`) of shape `(out, in)` from `vb`.
    pub fn load(vb: VarBuilder<'_>, in_dim: usize, out_dim: usize, with_bias: bool) -> candle_core::Result<Self> {
        let inner = if with_bias {
            candle_nn::linear(in_dim, out_dim, vb)?
        } else {
            candle_nn::linear_no_bias(in_dim, out_dim, vb)?
        };
        Ok(Linear::new(inner.weight().clone(), inner.bias().cloned()))
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// `(in, out)` dimensions.
    pub fn dims(&self) -> candle_core::Result<(usize, usize)> {
        let (out_dim, in_dim) = self.weight.dims2()?;
        Ok((in_dim, out_dim))
    }

    pub fn lora(&self) -> Option<&LoraAdapter> {
        self.lora.as_ref()
    }

    pub fn set_lora(&mut self, lora: Option<LoraAdapter>) {
        self.lora = lora;
    }

    /// Folds the adapter into the weight (`W += scale · B A`) for fast inference.
    pub fn merge_lora(&mut self) -> candle_core::Result<()> {
        if let Some(lora) = self.lora.take() {
            let delta = (lora.b.matmul(&lora.a)? * lora.scale)?;
            self.weight = (self.weight.detach() + delta.to_dtype(self.weight.dtype())?)?.detach();
        }
        Ok(())
    }

    /// The forward pass; `train` turns the adapter's dropout on.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut base = frozen_linear(xs, &self.weight)?;
        if let Some(bias) = &self.bias {
            base = base.broadcast_add(bias)?;
        }
        match &self.lora {
            None => Ok(base),
            Some(lora) => {
                let dropped = lora.dropout.forward(xs, train)?;
                let down = candle_nn::Linear::new(lora.a.clone(), None).forward(&dropped)?;
                let up = candle_nn::Linear::new(lora.b.clone(), None).forward(&down)?;
                base + (up * lora.scale)?
            }
        }
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_t(xs, false)
    }
}
