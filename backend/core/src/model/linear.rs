//! A linear layer that can carry a LoRA adapter: `y = x Wᵀ + b + scale · dropout(x) Aᵀ Bᵀ`.
//! The base weight stays frozen (a plain tensor, no gradient kept for it); only A and B train,
//! in their own precision (f32) whatever the base weight's. On the CPU the adapter's update is one
//! fused op (`attune_kernels::lora`).

use attune_kernels::attention::{Dropout, Scalar};
use attune_kernels::lora::LowRank;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Module, Shape, Storage, Tensor, WithDType};
use candle_nn::VarBuilder;

use super::layers::Mode;
use super::ops::{cpu_float, cpu_slice, frozen_linear, host_vec};

/// Low-rank update of a linear layer (PEFT's `lora_A`, `lora_B`).
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// `(rank, in)`.
    pub a: Tensor,
    /// `(out, rank)`.
    pub b: Tensor,
    pub scale: f64,
    pub dropout: super::layers::Dropout,
}

#[derive(Debug, Clone)]
pub struct Linear {
    /// `(out, in)`; on the CPU a loaded weight is stored input-major (see [`input_major`]).
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
        Ok(Linear::new(input_major(inner.weight().clone())?, inner.bias().cloned()))
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
            self.weight = input_major((self.weight.detach() + delta.to_dtype(self.weight.dtype())?)?.detach())?;
        }
        Ok(())
    }

    /// Whether the frozen product and the adapter's update of `xs` are one fused CPU op.
    fn fuses_whole_layer(&self, xs: &Tensor) -> bool {
        self.lora.as_ref().is_some_and(|lora| lora.fuses(xs))
            && xs.dtype() == self.weight.dtype()
            && !self.weight.track_op()
    }

    /// The forward pass; `train` turns the adapter's dropout on.
    pub fn forward_t(&self, xs: &Tensor, mode: Mode<'_>) -> candle_core::Result<Tensor> {
        let out = match &self.lora {
            None => frozen_linear(xs, &self.weight)?,
            Some(lora) if self.fuses_whole_layer(xs) => lora.fused(xs, Some(&self.weight), mode)?,
            Some(lora) => {
                let base = frozen_linear(xs, &self.weight)?;
                let dtype = base.dtype();
                (base + lora.update(xs, mode)?.to_dtype(dtype)?)?
            }
        };
        match &self.bias {
            Some(bias) => out.broadcast_add(bias),
            None => Ok(out),
        }
    }
}

/// A frozen `(out, in)` weight on the CPU, stored input-major: the same tensor, over an `(in, out)`
/// buffer. Elsewhere (or for a variable) the weight as it is.
///
/// Why: candle's CPU matmul (the `gemm` crate) reads `x Wᵀ` as the column-major `W xᵀ`, where a
/// row-major `W` is packed into column panels element by element, on every call. For a short
/// input (a prompt's prefill, 121 tokens of SmolLM2) that gather cost as much as a third of the
/// product; an input-major `W` is already column-major and needs no transposing pack. Measured:
/// prefill 15% faster; decode and training steps (long inputs, over which the pack is spread) the
/// same within noise.
pub fn input_major(weight: Tensor) -> candle_core::Result<Tensor> {
    if !weight.device().is_cpu() || weight.is_variable() || weight.rank() != 2 || weight.t()?.is_contiguous() {
        return Ok(weight);
    }
    weight.t()?.contiguous()?.t()
}

impl LoraAdapter {
    /// `scale · dropout(x) Aᵀ Bᵀ`, in the adapter's precision (f32 master weights even when the
    /// frozen base is bf16; the caller casts the result to the base's dtype). On the CPU, when `x`
    /// has the adapter's dtype (f32, f64), one fused op whose backward recomputes the low-rank
    /// product and the dropout mask instead of keeping four intermediates per layer.
    pub fn update(&self, xs: &Tensor, mode: Mode<'_>) -> candle_core::Result<Tensor> {
        if self.fuses(xs) {
            return self.fused(xs, None, mode);
        }
        // The dropout layer draws its mask on the device (a mask built here would be uploaded per call).
        let dropped = self.dropout.forward(&xs.to_dtype(self.a.dtype())?, mode)?;
        let down = candle_nn::Linear::new(self.a.clone(), None).forward(&dropped)?;
        let up = candle_nn::Linear::new(self.b.clone(), None).forward(&down)?;
        up * self.scale
    }

    /// Whether the fused CPU op computes this adapter's update of `xs`.
    fn fuses(&self, xs: &Tensor) -> bool {
        cpu_float(xs) && xs.dtype() == self.a.dtype()
    }

    /// The fused op: the update alone, or with `base` (a frozen `(out, in)` weight) the whole
    /// `x Wᵀ + update` as one tensor, so that a training step keeps one output per linear layer
    /// where the frozen product, the update and their sum were three.
    fn fused(&self, xs: &Tensor, base: Option<&Tensor>, mode: Mode<'_>) -> candle_core::Result<Tensor> {
        let draw = match mode {
            Mode::Train(rng) if self.dropout.probability() > 0.0 => {
                Some(Dropout { probability: self.dropout.probability(), seed: rng.next_seed() })
            }
            _ => None,
        };
        let (rank, input) = self.a.dims2()?;
        let output = self.b.dim(0)?;
        let rows = xs.elem_count() / input.max(1);
        let op = LowRankUpdate {
            kernel: LowRank { rows, input, output, rank, scale: self.scale, dropout: draw },
            base: base.cloned(),
        };
        let out =
            xs.contiguous()?.reshape((rows, input))?.apply_op3(&self.a.contiguous()?, &self.b.contiguous()?, op)?;
        let mut dims = xs.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = output;
        }
        out.reshape(dims)
    }
}

/// The fused LoRA update on the CPU (`attune_kernels::lora`), added to `x Wᵀ` when `base` holds
/// the frozen `W` (row-major or input-major).
struct LowRankUpdate {
    kernel: LowRank,
    base: Option<Tensor>,
}

impl CustomOp3 for LowRankUpdate {
    fn name(&self) -> &'static str {
        if self.base.is_some() { "lora-linear" } else { "lora-update" }
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        a: &CpuStorage,
        a_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        fn run<T: Scalar + WithDType>(
            kernel: &LowRank,
            inputs: [(&CpuStorage, &Layout); 3],
            base: Option<CpuStorage>,
        ) -> candle_core::Result<CpuStorage> {
            let [x, a, b] = inputs.map(|(storage, layout)| cpu_slice::<T>(storage, layout, "lora"));
            let (x, a, b) = (x?, a?, b?);
            let out = match base {
                None => kernel.forward(x, a, b),
                Some(base) => {
                    let mut out = owned_vec::<T>(base)?;
                    kernel.add_forward(x, a, b, &mut out);
                    out
                }
            };
            Ok(T::to_cpu_storage_owned(out))
        }
        let base = match &self.base {
            None => None,
            Some(weight) => {
                let (weight, weight_layout) = weight.storage_and_layout();
                let Storage::Cpu(weight) = &*weight else {
                    candle_core::bail!("lora: input on the CPU, frozen weight elsewhere")
                };
                let LowRank { rows, input, output, .. } = self.kernel;
                Some(x.matmul(weight, (1, rows, output, input), x_layout, &weight_layout.transpose(0, 1)?)?)
            }
        };
        let inputs = [(x, x_layout), (a, a_layout), (b, b_layout)];
        let out = match x.dtype() {
            DType::F32 => run::<f32>(&self.kernel, inputs, base)?,
            DType::F64 => run::<f64>(&self.kernel, inputs, base)?,
            other => candle_core::bail!("lora: unsupported dtype {other:?}"),
        };
        Ok((out, Shape::from((self.kernel.rows, self.kernel.output))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        fn run<T: Scalar + WithDType>(
            kernel: &LowRank,
            [x, a, b, grad]: [&Tensor; 4],
        ) -> candle_core::Result<[Tensor; 3]> {
            let (dx, da, db) = kernel.backward::<T>(&host_vec(x)?, &host_vec(a)?, &host_vec(b)?, &host_vec(grad)?);
            Ok([Tensor::new(dx, x.device())?, Tensor::new(da, x.device())?, Tensor::new(db, x.device())?])
        }
        let [dx, da, db] = match x.dtype() {
            DType::F32 => run::<f32>(&self.kernel, [x, a, b, grad])?,
            DType::F64 => run::<f64>(&self.kernel, [x, a, b, grad])?,
            other => candle_core::bail!("lora: unsupported dtype {other:?}"),
        };
        let dx = match &self.base {
            Some(weight) => (grad.matmul(weight)? + dx.reshape(x.shape())?)?,
            None => dx.reshape(x.shape())?,
        };
        Ok((Some(dx), Some(da.reshape(a.shape())?), Some(db.reshape(b.shape())?)))
    }
}

/// The elements of CPU storage of `T`s, moved out.
fn owned_vec<T: WithDType>(storage: CpuStorage) -> candle_core::Result<Vec<T>> {
    let elements: Box<dyn std::any::Any> = match storage {
        CpuStorage::F32(values) => Box::new(values),
        CpuStorage::F64(values) => Box::new(values),
        other => candle_core::bail!("lora: unsupported dtype {:?}", other.dtype()),
    };
    elements
        .downcast::<Vec<T>>()
        .map(|values| *values)
        .map_err(|_| candle_core::Error::Msg("lora: mixed dtypes".into()))
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
    /// The dropout mask the fused op applies to `xs` (viewed as `(rows, input)`), materialised: `1 /
    /// (1 - p)` where kept, 0 where dropped. (What the tests' composed ops apply.)
    fn dropout_mask(draw: Dropout, xs: &Tensor) -> candle_core::Result<Tensor> {
        let input = xs.dims().last().copied().unwrap_or(1).max(1);
        let rows = xs.elem_count() / input;
        let values: Vec<f64> = (0..rows * input)
            .map(|n| if draw.keeps(0, rows, input, n / input, n % input) { draw.scale() } else { 0.0 })
            .collect();
        Tensor::from_vec(values, xs.shape(), xs.device())?.to_dtype(xs.dtype())
    }

    /// The frozen weight beside the adapter in a test: none (the update alone), or `W` `(5, 12)`
    /// stored row-major or input-major.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Base {
        None,
        RowMajor,
        InputMajor,
    }

    /// Output and gradients (x, A, B) of the adapter's update, or of the whole layer with a frozen
    /// weight, fused or composed.
    fn update_and_grads(fused: bool, dtype: DType, dropout: f32, base: Base) -> candle_core::Result<Vec<Tensor>> {
        let device = Device::Cpu;
        let values =
            |n: usize, scale: f64| -> Vec<f64> { (0..n).map(|i| ((i * 37 % 17) as f64 - 8.0) * scale).collect() };
        let tensor =
            |n: usize, scale: f64, shape: &[usize]| Tensor::from_vec(values(n, scale), shape, &device)?.to_dtype(dtype);
        // 70 rows: more than one of the kernel's 64-row blocks.
        let x = Var::from_tensor(&tensor(2 * 35 * 12, 0.2, &[2, 35, 12])?)?;
        let a = Var::from_tensor(&tensor(3 * 12, 0.1, &[3, 12])?)?;
        let b = Var::from_tensor(&tensor(5 * 3, 0.07, &[5, 3])?)?;
        let lora = LoraAdapter {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: 1.7,
            dropout: super::super::layers::Dropout::new(dropout),
        };
        let rng = DropoutRng::new(5);
        let weight = tensor(5 * 12, 0.11, &[5, 12])?;
        let out = if fused {
            match base {
                Base::None => lora.update(x.as_tensor(), Mode::Train(&rng))?,
                Base::RowMajor | Base::InputMajor => {
                    let weight = if base == Base::InputMajor { input_major(weight)? } else { weight };
                    assert_eq!(weight.t()?.is_contiguous(), base == Base::InputMajor);
                    let mut layer = Linear::new(weight, None);
                    layer.set_lora(Some(lora));
                    let out = layer.forward_t(x.as_tensor(), Mode::Train(&rng))?;
                    assert!(layer.fuses_whole_layer(x.as_tensor()), "the layer is one fused op, not a sum");
                    out
                }
            }
        } else {
            // The composed path, as a GPU or a bf16 input would take it, with the same mask.
            let draw = (dropout > 0.0).then(|| Dropout { probability: dropout, seed: DropoutRng::new(5).next_seed() });
            let dropped = match draw {
                Some(draw) => (x.as_tensor() * dropout_mask(draw, x.as_tensor())?)?,
                None => x.as_tensor().clone(),
            };
            let update = (dropped.broadcast_matmul(&a.as_tensor().t()?)?.broadcast_matmul(&b.as_tensor().t()?)? * 1.7)?;
            match base {
                Base::None => update,
                Base::RowMajor | Base::InputMajor => (x.as_tensor().broadcast_matmul(&weight.t()?)? + update)?,
            }
        };
        let projection = tensor(2 * 35 * 5, 0.3, &[2, 35, 5])?;
        let grads = (&out * &projection)?.sum_all()?.backward()?;
        let mut all = vec![out];
        for v in [&x, &a, &b] {
            all.push(grads.get(v).expect("a gradient").clone());
        }
        Ok(all)
    }

    #[test]
    fn the_fused_lora_update_and_layer_match_the_composed_ops_forward_and_backward() -> candle_core::Result<()> {
        for (dtype, tolerance) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            for (dropout, base) in
                [0.0, 0.3].into_iter().flat_map(|p| [Base::None, Base::RowMajor, Base::InputMajor].map(|b| (p, b)))
            {
                let fused = update_and_grads(true, dtype, dropout, base)?;
                let composed = update_and_grads(false, dtype, dropout, base)?;
                for (what, (f, c)) in ["output", "dx", "dA", "dB"].iter().zip(fused.iter().zip(&composed)) {
                    assert_eq!(f.dims(), c.dims(), "{what}");
                    // Relative to the largest value (sums over 70 rows reach ~10).
                    let largest = c.abs()?.to_dtype(DType::F64)?.max_all()?.to_scalar::<f64>()?;
                    let diff = (f - c)?.abs()?.to_dtype(DType::F64)?.max_all()?.to_scalar::<f64>()? / largest.max(1.0);
                    assert!(
                        diff <= tolerance,
                        "{dtype:?}, dropout {dropout}, {base:?}: {what} differs by {diff} (relative)"
                    );
                    assert!(f.abs()?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()? > 0.0, "{what} is zero");
                }
            }
        }
        Ok(())
    }

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
                dropout: super::super::layers::Dropout::new(0.0),
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
