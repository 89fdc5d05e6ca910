//! A linear layer that can carry a LoRA adapter: `y = x Wᵀ + b + scale · dropout(x) Aᵀ Bᵀ`.
//! The base weight stays frozen (a plain tensor, no gradient kept for it); only A and B train,
//! in their own precision (f32) whatever the base weight's.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::layers::{Dropout, Mode};
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
    pub fn forward_t(&self, xs: &Tensor, mode: Mode<'_>) -> candle_core::Result<Tensor> {
        let mut base = frozen_linear(xs, &self.weight)?;
        if let Some(bias) = &self.bias {
            base = base.broadcast_add(bias)?;
        }
        match &self.lora {
            None => Ok(base),
            Some(lora) => {
                // The low-rank path runs in the adapter's precision (f32 master weights even when
                // the frozen base is bf16); only its result is cast to the base's dtype.
                let dropped = lora.dropout.forward(&xs.to_dtype(lora.a.dtype())?, mode)?;
                let down = candle_nn::Linear::new(lora.a.clone(), None).forward(&dropped)?;
                let up = candle_nn::Linear::new(lora.b.clone(), None).forward(&down)?;
                let dtype = base.dtype();
                base + (up * lora.scale)?.to_dtype(dtype)?
            }
        }
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_t(xs, Mode::Inference)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

    use crate::model::layers::DropoutRng;

    use super::*;

    /// A bf16 base (the GPU default) with f32 adapter weights: the output keeps the base's dtype and
    /// the adapter's gradients come back in f32, matching an all-f32 layer closely.
    #[test]
    fn f32_adapter_on_a_bf16_base_trains_in_f32() -> candle_core::Result<()> {
        let device = Device::Cpu;
        let values =
            |n: usize, scale: f32| -> Vec<f32> { (0..n).map(|i| ((i * 37 % 17) as f32 - 8.0) * scale).collect() };
        let weight = Tensor::from_vec(values(6 * 8, 0.05), (6, 8), &device)?;
        let a = Var::from_tensor(&Tensor::from_vec(values(2 * 8, 0.1), (2, 8), &device)?)?;
        let b = Var::from_tensor(&Tensor::from_vec(values(6 * 2, 0.07), (6, 2), &device)?)?;
        let x = Var::from_tensor(&Tensor::from_vec(values(3 * 8, 0.2), (3, 8), &device)?)?;
        let run = |dtype: DType| -> candle_core::Result<(Tensor, Tensor, Tensor)> {
            let mut layer = Linear::new(weight.to_dtype(dtype)?, None);
            layer.set_lora(Some(LoraAdapter {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                scale: 2.0,
                dropout: Dropout::new(0.0),
            }));
            let out = layer.forward_t(&x.as_tensor().to_dtype(dtype)?, Mode::Train(&DropoutRng::new(0)))?;
            let grads = out.to_dtype(DType::F32)?.sqr()?.sum_all()?.backward()?;
            let ga = grads.get(&a).expect("lora_A gets a gradient").clone();
            let gb = grads.get(&b).expect("lora_B gets a gradient").clone();
            Ok((out, ga, gb))
        };
        let (out16, ga16, gb16) = run(DType::BF16)?;
        let (out32, ga32, gb32) = run(DType::F32)?;
        assert_eq!(out16.dtype(), DType::BF16);
        assert_eq!((ga16.dtype(), gb16.dtype()), (DType::F32, DType::F32));
        let relative = |x: &Tensor, y: &Tensor| -> candle_core::Result<f32> {
            let diff = (x.to_dtype(DType::F32)? - y)?.abs()?.max_all()?.to_scalar::<f32>()?;
            Ok(diff / y.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        assert!(relative(&out16, &out32)? < 0.02);
        assert!(relative(&ga16, &ga32)? < 0.02);
        assert!(relative(&gb16, &gb32)? < 0.02);
        Ok(())
    }
}
