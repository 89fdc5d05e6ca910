//! Fused kernels with hand-written backward passes: a linear op on a frozen weight whose backward
//! computes only the input gradient, and CPU softmax / layer norm / RMS norm kernels that stay
//! differentiable (candle-nn's fused versions have no backward, so gradients would stop there).
//!
//! Backward passes recompute what they need from the op's inputs (normalisation statistics) or
//! use its output (softmax) instead of keeping intermediates alive, so a training graph holds one
//! tensor per op, not one per elementary step.

use attune_kernels::pointwise;
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, D, DType, Device, Layout, Module, Result, Shape, Storage,
    Tensor, WithDType,
};
use num_traits::{Float, NumCast, One, Zero};
use rayon::prelude::*;

/// `xs Wᵀ` where `W` is frozen: candle's matmul backward would also compute `gradᵀ xs` for the
/// weight (as much work as the forward pass, and memory for the result) even though nothing
/// uses it.
pub fn frozen_linear(xs: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let supported = matches!(xs.device(), Device::Cpu | Device::Cuda(_));
    if !xs.track_op() || weight.track_op() || !supported {
        // No gradient will flow through here (or the weight trains): the plain op is right.
        return candle_nn::Linear::new(weight.clone(), None).forward(xs);
    }
    let (out_dim, in_dim) = weight.dims2()?;
    let rows = xs.elem_count() / in_dim.max(1);
    let flat = xs.contiguous()?.reshape((rows, in_dim))?;
    // Either layout of the weight suits the matmul; an input-major one (`linear::input_major`) stays so.
    let weight =
        if weight.is_contiguous() || weight.t()?.is_contiguous() { weight.clone() } else { weight.contiguous()? };
    let out = flat.apply_op1(FrozenMatmul { weight })?;
    let mut dims = xs.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = out_dim;
    }
    out.reshape(dims)
}

struct FrozenMatmul {
    /// `(out, in)`, row-major or input-major.
    weight: Tensor,
}

impl FrozenMatmul {
    fn fwd<S: BackendStorage>(
        &self,
        xs: &S,
        xs_layout: &Layout,
        weight: &S,
        weight_layout: &Layout,
    ) -> Result<(S, Shape)> {
        let (m, k) = xs_layout.shape().dims2()?;
        let (n, weight_k) = weight_layout.shape().dims2()?;
        if k != weight_k {
            candle_core::bail!("frozen-matmul: input has {k} features, weight expects {weight_k}");
        }
        let transposed = weight_layout.transpose(0, 1)?;
        let out = xs.matmul(weight, (1, m, n, k), xs_layout, &transposed)?;
        Ok((out, Shape::from((m, n))))
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (weight, weight_layout) = self.weight.storage_and_layout();
        match &*weight {
            Storage::Cpu(weight) => self.fwd(storage, layout, weight, weight_layout),
            _ => candle_core::bail!("frozen-matmul: input on the CPU, weight elsewhere"),
        }
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let (weight, weight_layout) = self.weight.storage_and_layout();
        match &*weight {
            Storage::Cuda(weight) => self.fwd(storage, layout, weight, weight_layout),
            _ => candle_core::bail!("frozen-matmul: input on a GPU, weight elsewhere"),
        }
    }

    fn bwd(&self, _xs: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.weight)?))
    }
}

/// Whether `t` takes Attune's CPU kernels (`attune_kernels`, generic over f32 and f64): f32 or f64
/// on the CPU.
pub(crate) fn cpu_float(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// Whether the fused kernels (forward and backward) run on `device`: the CPU, and CUDA GPUs in a
/// build with the `cuda` feature (forward by candle-kernels' row-wise kernels, see `cuda_ops.rs`).
fn fused(device: &Device) -> bool {
    device.is_cpu() || (cfg!(feature = "cuda") && device.is_cuda())
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if fused(xs.device()) {
        xs.contiguous()?.apply_op1(SoftmaxLastDim)
    } else if xs.track_op() {
        candle_nn::ops::softmax(xs, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(&xs.contiguous()?)
    }
}

/// Layer normalisation over the last dimension: `(x - mean) / sqrt(var + eps) · weight + bias`.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if fused(xs.device()) {
        xs.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, LayerNorm { eps })
    } else if xs.track_op() || weight.track_op() || bias.track_op() {
        layer_norm_composed(xs, weight, bias, eps)
    } else {
        candle_nn::ops::layer_norm(&xs.contiguous()?, weight, bias, eps as f32)
    }
}

/// RMS normalisation over the last dimension, as Hugging Face's Llama does it: statistics in f32,
/// the normalised value cast back to the input's dtype, then scaled by `weight`.
pub fn rms_norm(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if fused(xs.device()) {
        xs.contiguous()?.apply_op2(&weight.contiguous()?, RmsNorm { eps })
    } else if xs.track_op() || weight.track_op() {
        rms_norm_composed(xs, weight, eps)
    } else {
        candle_nn::ops::rms_norm(&xs.contiguous()?, weight, eps as f32)
    }
}

/// GELU with the exact (erf) form, `x · Φ(x)`. On the CPU a fused kernel with a fast erf
/// (`attune_kernels::pointwise::erf`, absolute error below 1.5e-7, the size of f32 rounding) and
/// its own backward `Φ(x) + x · φ(x)`; candle's version calls libm's scalar erf per element.
pub fn gelu_erf(xs: &Tensor) -> Result<Tensor> {
    if xs.device().is_cpu() && xs.dtype() != DType::F64 { xs.contiguous()?.apply_op1(GeluErf) } else { xs.gelu_erf() }
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        fn run<T: Element<Acc = f32>>(storage: &CpuStorage, layout: &Layout) -> Result<CpuStorage> {
            let src = contiguous::<T>(storage, layout, "gelu")?;
            let mut dst = vec![T::narrow(0.0); src.len()];
            dst.par_chunks_mut(4096).zip(src.par_chunks(4096)).for_each(|(dst, src)| {
                for (d, &x) in dst.iter_mut().zip(src) {
                    let x = x.widen();
                    *d = T::narrow(0.5 * x * (1.0 + pointwise::erf(x * std::f32::consts::FRAC_1_SQRT_2)));
                }
            });
            Ok(T::to_cpu_storage_owned(dst))
        }
        let out = match storage.dtype() {
            DType::F32 => run::<f32>(storage, layout)?,
            DType::BF16 => run::<half::bf16>(storage, layout)?,
            DType::F16 => run::<half::f16>(storage, layout)?,
            other => candle_core::bail!("gelu: unsupported dtype {other:?}"),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, xs: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if xs.dtype() == DType::F32 {
            return Ok(Some(xs.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &RowGradient::Gelu)?));
        }
        // d/dx x·Φ(x) = Φ(x) + x·φ(x), with φ(x) = exp(−x²/2)/√(2π).
        let dtype = xs.dtype();
        let x = xs.to_dtype(DType::F32)?;
        let cdf = ((x.affine(std::f64::consts::FRAC_1_SQRT_2, 0.0)?.erf()? + 1.0)? * 0.5)?;
        let pdf = ((x.sqr()? * -0.5)?.exp()? * (1.0 / (2.0 * std::f64::consts::PI).sqrt()))?;
        let derivative = (cdf + (x * pdf)?)?;
        Ok(Some((grad.to_dtype(DType::F32)? * derivative)?.to_dtype(dtype)?))
    }
}

/// Layer norm from elementary differentiable ops (the reference the fused kernel is tested against,
/// and the path on devices without a fused kernel).
pub fn layer_norm_composed(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = xs.dtype();
    let xs = xs.to_dtype(accumulator(dtype))?;
    let mean = xs.mean_keepdim(D::Minus1)?;
    let centered = xs.broadcast_sub(&mean)?;
    let variance = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(variance + eps)?.sqrt()?)?;
    normed.to_dtype(dtype)?.broadcast_mul(weight)?.broadcast_add(bias)
}

/// RMS norm from elementary differentiable ops.
pub fn rms_norm_composed(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = xs.dtype();
    let xs = xs.to_dtype(accumulator(dtype))?;
    let mean_square = xs.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xs.broadcast_div(&(mean_square + eps)?.sqrt()?)?;
    normed.to_dtype(dtype)?.broadcast_mul(weight)
}

/// The elements of a contiguous CPU tensor of `T` (for the custom ops outside this file).
pub(crate) fn cpu_slice<'a, T: WithDType>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [T]> {
    let data = storage.as_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: inputs must be contiguous"),
    }
}

/// A tensor's elements in row-major order, copied to the host (what a custom op's backward reads).
pub(crate) fn host_vec<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
    t.contiguous()?.flatten_all()?.to_vec1::<T>()
}

/// The dtype statistics are computed in: f64 stays f64, everything else uses f32.
fn accumulator(dtype: DType) -> DType {
    if dtype == DType::F64 { DType::F64 } else { DType::F32 }
}

/// A float element type of CPU storage and the type its arithmetic is done in.
trait Element: WithDType + Send + Sync {
    type Acc: Float + Send + Sync;
    fn widen(self) -> Self::Acc;
    fn narrow(value: Self::Acc) -> Self;
    fn slice(storage: &CpuStorage) -> Option<&[Self]>;
}

macro_rules! element {
    ($t:ty, $acc:ty, $variant:ident, $widen:expr, $narrow:expr) => {
        impl Element for $t {
            type Acc = $acc;
            fn widen(self) -> $acc {
                $widen(self)
            }
            fn narrow(value: $acc) -> $t {
                $narrow(value)
            }
            fn slice(storage: &CpuStorage) -> Option<&[$t]> {
                match storage {
                    CpuStorage::$variant(data) => Some(data),
                    _ => None,
                }
            }
        }
    };
}

element!(f32, f32, F32, |x| x, |x| x);
element!(f64, f64, F64, |x| x, |x| x);
element!(half::bf16, f32, BF16, half::bf16::to_f32, half::bf16::from_f32);
element!(half::f16, f32, F16, half::f16::to_f32, half::f16::from_f32);

/// Runs `$body` with `$t` bound to the element type of `$dtype`.
macro_rules! with_element {
    ($dtype:expr, $op:literal, |$t:ident| $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::F64 => {
                type $t = f64;
                $body
            }
            DType::BF16 => {
                type $t = half::bf16;
                $body
            }
            DType::F16 => {
                type $t = half::f16;
                $body
            }
            other => candle_core::bail!("{}: unsupported dtype {other:?}", $op),
        }
    };
}

/// The elements of a contiguous CPU tensor.
fn contiguous<'a, T: Element>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [T]> {
    let data = T::slice(storage).ok_or_else(|| candle_core::Error::Msg(format!("{op}: mixed dtypes")))?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

fn cast<A: NumCast>(value: f64) -> A {
    A::from(value).unwrap_or_else(|| unreachable!("f64 converts to every float type"))
}

struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        super::cuda_ops::softmax_last_dim(storage, layout)
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        fn run<T: Element>(storage: &CpuStorage, layout: &Layout) -> Result<CpuStorage> {
            let src = contiguous::<T>(storage, layout, "softmax")?;
            let width = layout.shape().dims().last().copied().unwrap_or(1).max(1);
            let mut dst = vec![T::narrow(<T as Element>::Acc::zero()); src.len()];
            dst.par_chunks_mut(width).zip(src.par_chunks(width)).for_each(|(dst, src)| {
                let max = src.iter().fold(T::Acc::neg_infinity(), |m, &x| m.max(x.widen()));
                let mut sum = T::Acc::zero();
                let mut exps: Vec<T::Acc> = Vec::with_capacity(width);
                for &x in src {
                    let e = (x.widen() - max).exp();
                    sum = sum + e;
                    exps.push(e);
                }
                let inv = T::Acc::one() / sum;
                for (d, e) in dst.iter_mut().zip(exps) {
                    *d = T::narrow(e * inv);
                }
            });
            Ok(T::to_cpu_storage_owned(dst))
        }
        let out = with_element!(storage.dtype(), "softmax", |T| run::<T>(storage, layout)?);
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _xs: &Tensor, probs: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if cpu_float(probs) {
            let width = probs.dim(D::Minus1)?;
            return Ok(Some(
                probs.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &RowGradient::Softmax { width })?,
            ));
        }
        // dx = y ⊙ (g − Σ g ⊙ y)
        let dtype = probs.dtype();
        let probs = probs.to_dtype(accumulator(dtype))?;
        let grad = grad.to_dtype(accumulator(dtype))?;
        let dot = (&grad * &probs)?.sum_keepdim(D::Minus1)?;
        Ok(Some((grad.broadcast_sub(&dot)? * probs)?.to_dtype(dtype)?))
    }
}

struct LayerNorm {
    eps: f64,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xs_layout: &Layout,
        weight: &CudaStorage,
        weight_layout: &Layout,
        bias: &CudaStorage,
        bias_layout: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        super::cuda_ops::layer_norm(xs, xs_layout, weight, weight_layout, bias, bias_layout, self.eps)
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let eps = self.eps;
        let run = |dtype| -> Result<CpuStorage> {
            with_element!(dtype, "layer-norm", |T| {
                let src = contiguous::<T>(xs, xs_layout, "layer-norm")?;
                let weight = contiguous::<T>(weight, weight_layout, "layer-norm")?;
                let bias = contiguous::<T>(bias, bias_layout, "layer-norm")?;
                let width = weight.len().max(1);
                if src.len() % width != 0 || bias.len() != weight.len() {
                    candle_core::bail!("layer-norm: weight/bias of {} do not match the input", weight.len());
                }
                let n: <T as Element>::Acc = cast(width as f64);
                let eps: <T as Element>::Acc = cast(eps);
                let mut dst = vec![T::narrow(<T as Element>::Acc::zero()); src.len()];
                dst.par_chunks_mut(width).zip(src.par_chunks(width)).for_each(|(dst, src)| {
                    let mean = src.iter().fold(<T as Element>::Acc::zero(), |s, &x| s + x.widen()) / n;
                    let variance = src.iter().fold(<T as Element>::Acc::zero(), |s, &x| {
                        let d = x.widen() - mean;
                        s + d * d
                    }) / n;
                    let rstd = (variance + eps).sqrt().recip();
                    for (((d, &x), &w), &b) in dst.iter_mut().zip(src).zip(weight).zip(bias) {
                        *d = T::narrow((x.widen() - mean) * rstd * w.widen() + b.widen());
                    }
                });
                Ok(T::to_cpu_storage_owned(dst))
            })
        };
        Ok((run(xs.dtype())?, xs_layout.shape().clone()))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let norm = pointwise::Norm { eps: self.eps, centred: true };
        let grad_x = norm_input_gradient(norm, xs, weight, grad)?;
        if !weight.track_op() && !bias.track_op() {
            // A frozen norm (LoRA training): its weight and bias gradients would go unused.
            return Ok((Some(grad_x), None, None));
        }
        let acc = accumulator(xs.dtype());
        let width = xs.dim(D::Minus1)?;
        let rows = xs.elem_count() / width.max(1);
        let x = xs.to_dtype(acc)?;
        let g = grad.to_dtype(acc)?.reshape((rows, width))?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let rstd = (centered.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?.recip()?;
        let normed = centered.broadcast_mul(&rstd)?.reshape((rows, width))?;
        let grad_weight = (&g * &normed)?.sum(0)?;
        let grad_bias = g.sum(0)?;
        Ok((Some(grad_x), Some(grad_weight.to_dtype(weight.dtype())?), Some(grad_bias.to_dtype(bias.dtype())?)))
    }
}

/// The gradient of a normalisation's input (`attune_kernels::pointwise::Norm`): one pass per row
/// on the CPU in f32/f64; elsewhere composed, `rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂))` with
/// `ĝ = g ⊙ weight`, without the `mean(ĝ)` term for RMS norm.
fn norm_input_gradient(norm: pointwise::Norm, xs: &Tensor, weight: &Tensor, grad: &Tensor) -> Result<Tensor> {
    if cpu_float(xs) && weight.dtype() == xs.dtype() {
        let (xs, weight, grad) = (xs.contiguous()?, weight.contiguous()?, grad.contiguous()?);
        return xs.apply_op3_no_bwd(&weight, &grad, &NormGradient(norm));
    }
    let acc = accumulator(xs.dtype());
    let x = xs.to_dtype(acc)?;
    let centered = if norm.centred { x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)? } else { x };
    let rstd = (centered.sqr()?.mean_keepdim(D::Minus1)? + norm.eps)?.sqrt()?.recip()?;
    let normed = centered.broadcast_mul(&rstd)?;
    let grad_normed = grad.to_dtype(acc)?.broadcast_mul(&weight.to_dtype(acc)?)?;
    let projection = (&grad_normed * &normed)?.mean_keepdim(D::Minus1)?;
    let mut grad_x = (&grad_normed - normed.broadcast_mul(&projection)?)?;
    if norm.centred {
        grad_x = grad_x.broadcast_sub(&grad_normed.mean_keepdim(D::Minus1)?)?;
    }
    grad_x.broadcast_mul(&rstd)?.to_dtype(xs.dtype())
}

/// Backward passes computed by `attune_kernels::pointwise` from two inputs: GELU's (input, output
/// gradient; f32) and softmax's (output, output gradient; f32/f64).
enum RowGradient {
    Gelu,
    Softmax { width: usize },
}

impl CustomOp2 for RowGradient {
    fn name(&self) -> &'static str {
        "row-gradient"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        a_layout: &Layout,
        g: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let check = |element: DType| -> Result<()> {
            let (values, grads) = (a_layout.shape().elem_count(), g_layout.shape().elem_count());
            if values != grads || g.dtype() != element {
                candle_core::bail!("row-gradient: {values} values, {grads} gradients of {:?}", g.dtype());
            }
            Ok(())
        };
        let out = match (self, a.dtype()) {
            (RowGradient::Gelu, DType::F32) => {
                check(DType::F32)?;
                let (x, g) = (cpu_slice::<f32>(a, a_layout, "gelu")?, cpu_slice::<f32>(g, g_layout, "gelu")?);
                CpuStorage::F32(pointwise::gelu_erf_backward(x, g))
            }
            (RowGradient::Softmax { width }, DType::F32) => {
                check(DType::F32)?;
                let (y, g) = (cpu_slice::<f32>(a, a_layout, "softmax")?, cpu_slice::<f32>(g, g_layout, "softmax")?);
                CpuStorage::F32(pointwise::softmax_backward(y, g, *width))
            }
            (RowGradient::Softmax { width }, DType::F64) => {
                check(DType::F64)?;
                let (y, g) = (cpu_slice::<f64>(a, a_layout, "softmax")?, cpu_slice::<f64>(g, g_layout, "softmax")?);
                CpuStorage::F64(pointwise::softmax_backward(y, g, *width))
            }
            (_, other) => candle_core::bail!("row-gradient: unsupported dtype {other:?}"),
        };
        Ok((out, a_layout.shape().clone()))
    }
}

/// A normalisation's input gradient from (input, weight, output gradient).
struct NormGradient(pointwise::Norm);

impl CustomOp3 for NormGradient {
    fn name(&self) -> &'static str {
        "norm-gradient"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        g: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn run<T: attune_kernels::attention::Scalar + WithDType>(
            norm: pointwise::Norm,
            [x, w, g]: [(&CpuStorage, &Layout); 3],
        ) -> Result<CpuStorage> {
            let [x, w, g] = [x, w, g].map(|(storage, layout)| cpu_slice::<T>(storage, layout, "norm-gradient"));
            let (x, w, g) = (x?, w?, g?);
            if x.len() != g.len() || w.is_empty() || x.len() % w.len() != 0 {
                candle_core::bail!("norm-gradient: {} inputs, {} gradients, rows of {}", x.len(), g.len(), w.len());
            }
            Ok(T::to_cpu_storage_owned(norm.input_gradient(x, w, g)))
        }
        let inputs = [(x, x_layout), (w, w_layout), (g, g_layout)];
        let out = match x.dtype() {
            DType::F32 => run::<f32>(self.0, inputs)?,
            DType::F64 => run::<f64>(self.0, inputs)?,
            other => candle_core::bail!("norm-gradient: unsupported dtype {other:?}"),
        };
        Ok((out, x_layout.shape().clone()))
    }
}

/// Inverted dropout with a mask hashed from `draw`'s seed and each element's position (f32/f64 on
/// the CPU): drawn in parallel, never stored, and redrawn for the backward pass.
pub(crate) fn hashed_dropout(xs: &Tensor, draw: attune_kernels::attention::Dropout) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(HashedDropout(draw))
}

struct HashedDropout(attune_kernels::attention::Dropout);

impl CustomOp1 for HashedDropout {
    fn name(&self) -> &'static str {
        "hashed-dropout"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match storage.dtype() {
            DType::F32 => CpuStorage::F32(pointwise::dropout(cpu_slice::<f32>(storage, layout, "dropout")?, self.0)),
            DType::F64 => CpuStorage::F64(pointwise::dropout(cpu_slice::<f64>(storage, layout, "dropout")?, self.0)),
            other => candle_core::bail!("dropout: unsupported dtype {other:?}"),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _xs: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&HashedDropout(self.0))?))
    }
}

/// Rotary embedding in the "rotate half" form, `xs ⊙ cos + rotate_half(xs) ⊙ sin`, of
/// `(batch, heads, seq, head_dim)` states with tables `(seq, head_dim)`. On the CPU (f32/f64) one
/// op whose backward is the inverse rotation, where the composed form keeps five tensors per call
/// for its backward (candle's fused `rope` has none).
pub(crate) fn rotate_half(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !cpu_float(xs) {
        return rotate_half_composed(xs, cos, sin);
    }
    let (cos, sin) = (cos.to_dtype(xs.dtype())?.contiguous()?, sin.to_dtype(xs.dtype())?.contiguous()?);
    xs.contiguous()?.apply_op1(RotateHalf { cos, sin, inverse: false })
}

fn rotate_half_composed(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = xs.dim(D::Minus1)? / 2;
    let rotated =
        Tensor::cat(&[&xs.narrow(D::Minus1, half, half)?.neg()?, &xs.narrow(D::Minus1, 0, half)?], D::Minus1)?;
    xs.broadcast_mul(&cos.to_dtype(xs.dtype())?)?.broadcast_add(&rotated.broadcast_mul(&sin.to_dtype(xs.dtype())?)?)
}

struct RotateHalf {
    cos: Tensor,
    sin: Tensor,
    inverse: bool,
}

impl CustomOp1 for RotateHalf {
    fn name(&self) -> &'static str {
        "rotate-half"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        fn run<T: attune_kernels::attention::Scalar + WithDType>(
            op: &RotateHalf,
            storage: &CpuStorage,
            layout: &Layout,
        ) -> Result<CpuStorage> {
            let width = layout.shape().dims().last().copied().unwrap_or(1);
            let (x, cos, sin) =
                (cpu_slice::<T>(storage, layout, "rope")?, host_vec::<T>(&op.cos)?, host_vec::<T>(&op.sin)?);
            if cos.len() != sin.len() || cos.is_empty() || !x.len().is_multiple_of(cos.len()) {
                candle_core::bail!("rope: tables of {} values for {:?} states", cos.len(), layout.shape());
            }
            Ok(T::to_cpu_storage_owned(pointwise::rotate_half(x, &cos, &sin, width, op.inverse)))
        }
        let out = match storage.dtype() {
            DType::F32 => run::<f32>(self, storage, layout)?,
            DType::F64 => run::<f64>(self, storage, layout)?,
            other => candle_core::bail!("rope: unsupported dtype {other:?}"),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _xs: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let inverse = RotateHalf { cos: self.cos.clone(), sin: self.sin.clone(), inverse: !self.inverse };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&inverse)?))
    }
}

/// SwiGLU, `silu(gate) ⊙ up`. On the CPU (f32/f64) one op that keeps only its inputs and recomputes
/// the sigmoid in the backward pass, where the composed form keeps `silu(gate)` as well.
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !cpu_float(gate) || gate.dtype() != up.dtype() || gate.shape() != up.shape() {
        return candle_nn::ops::silu(gate)? * up;
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        gate: &CpuStorage,
        gate_layout: &Layout,
        up: &CpuStorage,
        up_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn run<T: attune_kernels::attention::Scalar + WithDType>(
            [(gate, gate_layout), (up, up_layout)]: [(&CpuStorage, &Layout); 2],
        ) -> Result<CpuStorage> {
            let (gate, up) = (cpu_slice::<T>(gate, gate_layout, "swiglu")?, cpu_slice::<T>(up, up_layout, "swiglu")?);
            Ok(T::to_cpu_storage_owned(pointwise::swiglu(gate, up)))
        }
        let inputs = [(gate, gate_layout), (up, up_layout)];
        let out = match gate.dtype() {
            DType::F32 => run::<f32>(inputs)?,
            DType::F64 => run::<f64>(inputs)?,
            other => candle_core::bail!("swiglu: unsupported dtype {other:?}"),
        };
        Ok((out, gate_layout.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        fn run<T: attune_kernels::attention::Scalar + WithDType>(
            [gate, up, grad]: [&Tensor; 3],
        ) -> Result<(Tensor, Tensor)> {
            let (d_gate, d_up) =
                pointwise::swiglu_backward(&host_vec::<T>(gate)?, &host_vec::<T>(up)?, &host_vec::<T>(grad)?);
            let device = gate.device();
            Ok((Tensor::from_vec(d_gate, gate.shape(), device)?, Tensor::from_vec(d_up, up.shape(), device)?))
        }
        let (d_gate, d_up) = match gate.dtype() {
            DType::F32 => run::<f32>([gate, up, grad])?,
            DType::F64 => run::<f64>([gate, up, grad])?,
            other => candle_core::bail!("swiglu: unsupported dtype {other:?}"),
        };
        Ok((Some(d_gate), Some(d_up)))
    }
}

struct RmsNorm {
    eps: f64,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xs_layout: &Layout,
        weight: &CudaStorage,
        weight_layout: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        super::cuda_ops::rms_norm(xs, xs_layout, weight, weight_layout, self.eps)
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let eps = self.eps;
        let run = |dtype| -> Result<CpuStorage> {
            with_element!(dtype, "rms-norm", |T| {
                let src = contiguous::<T>(xs, xs_layout, "rms-norm")?;
                let weight = contiguous::<T>(weight, weight_layout, "rms-norm")?;
                let width = weight.len().max(1);
                if src.len() % width != 0 {
                    candle_core::bail!("rms-norm: weight of {} does not match the input", weight.len());
                }
                let n: <T as Element>::Acc = cast(width as f64);
                let eps: <T as Element>::Acc = cast(eps);
                let mut dst = vec![T::narrow(<T as Element>::Acc::zero()); src.len()];
                dst.par_chunks_mut(width).zip(src.par_chunks(width)).for_each(|(dst, src)| {
                    let mean_square = src.iter().fold(<T as Element>::Acc::zero(), |s, &x| {
                        let x = x.widen();
                        s + x * x
                    }) / n;
                    let rstd = (mean_square + eps).sqrt().recip();
                    for ((d, &x), &w) in dst.iter_mut().zip(src).zip(weight) {
                        // Rounded to the input dtype before the scale, as transformers does.
                        *d = T::narrow(T::narrow(x.widen() * rstd).widen() * w.widen());
                    }
                });
                Ok(T::to_cpu_storage_owned(dst))
            })
        };
        Ok((run(xs.dtype())?, xs_layout.shape().clone()))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let norm = pointwise::Norm { eps: self.eps, centred: false };
        let grad_x = norm_input_gradient(norm, xs, weight, grad)?;
        if !weight.track_op() {
            return Ok((Some(grad_x), None));
        }
        let acc = accumulator(xs.dtype());
        let width = xs.dim(D::Minus1)?;
        let rows = xs.elem_count() / width.max(1);
        let x = xs.to_dtype(acc)?;
        let rstd = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?.recip()?;
        let normed = x.broadcast_mul(&rstd)?.reshape((rows, width))?;
        let grad_weight = (grad.to_dtype(acc)?.reshape((rows, width))? * normed)?.sum(0)?;
        Ok((Some(grad_x), Some(grad_weight.to_dtype(weight.dtype())?)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use super::*;
    use crate::model::test_util::max_abs_diff;

    /// Values and gradients (for `x`, and for each of `params`) of `f`, through a random
    /// projection of its output so every output element carries a different gradient.
    fn value_and_grads(
        f: impl Fn(&Tensor, &[Tensor]) -> Result<Tensor>,
        x: &Var,
        params: &[Var],
        projection: &Tensor,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let inputs: Vec<Tensor> = params.iter().map(|p| p.as_tensor().clone()).collect();
        let out = f(x.as_tensor(), &inputs)?;
        let loss = (&out * projection.to_dtype(out.dtype())?)?.sum_all()?;
        let grads = loss.backward()?;
        let mut all = vec![grads.get(x).expect("x gets a gradient").clone()];
        for p in params {
            all.push(grads.get(p).expect("every parameter gets a gradient").clone());
        }
        Ok((out, all))
    }

    /// Seeded normal(0.3, 1.1) values (candle's CPU generator cannot be seeded).
    fn random(shape: &[usize], dtype: DType, seed: u64) -> Result<Tensor> {
        use rand::SeedableRng;
        use rand_distr::Distribution;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let normal = rand_distr::Normal::new(0.3f32, 1.1).expect("valid normal");
        let count = shape.iter().product();
        let values: Vec<f32> = (0..count).map(|_| normal.sample(&mut rng)).collect();
        Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(dtype)
    }

    /// Compares a fused op with its composed reference: outputs and every gradient.
    fn check(
        fused: impl Fn(&Tensor, &[Tensor]) -> Result<Tensor>,
        composed: impl Fn(&Tensor, &[Tensor]) -> Result<Tensor>,
        param_shapes: &[&[usize]],
        dtype: DType,
        tolerance: f32,
    ) -> Result<()> {
        let shape = [3, 5, 16];
        let x = Var::from_tensor(&random(&shape, dtype, 1)?)?;
        let params: Vec<Var> = param_shapes
            .iter()
            .enumerate()
            .map(|(i, s)| Var::from_tensor(&random(s, dtype, 10 + i as u64)?))
            .collect::<Result<_>>()?;
        let projection = random(&shape, dtype, 99)?;
        let (out_f, grads_f) = value_and_grads(fused, &x, &params, &projection)?;
        let (out_c, grads_c) = value_and_grads(composed, &x, &params, &projection)?;
        let diff = max_abs_diff(&out_f.to_dtype(DType::F32)?, &out_c.to_dtype(DType::F32)?);
        assert!(diff <= tolerance, "{dtype:?} outputs differ by {diff}");
        for (i, (gf, gc)) in grads_f.iter().zip(&grads_c).enumerate() {
            assert_eq!(gf.dims(), gc.dims());
            let diff = max_abs_diff(&gf.to_dtype(DType::F32)?, &gc.to_dtype(DType::F32)?);
            assert!(diff <= tolerance, "{dtype:?} gradient {i} differs by {diff}");
            assert!(gf.to_dtype(DType::F32)?.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0, "gradient {i} is zero");
        }
        Ok(())
    }

    /// [`check`] in f64 (to 1e-12) and in f32 (to `f32_tolerance`).
    fn check_f64_and_f32(
        fused: impl Fn(&Tensor, &[Tensor]) -> Result<Tensor>,
        composed: impl Fn(&Tensor, &[Tensor]) -> Result<Tensor>,
        param_shapes: &[&[usize]],
        f32_tolerance: f32,
    ) -> Result<()> {
        for (dtype, tolerance) in [(DType::F64, 1e-12), (DType::F32, f32_tolerance)] {
            check(&fused, &composed, param_shapes, dtype, tolerance)?;
        }
        Ok(())
    }

    #[test]
    fn fused_softmax_matches_composed_ops_forward_and_backward() -> Result<()> {
        check_f64_and_f32(
            |x, _| softmax_last_dim(&(x * 3.0)?),
            |x, _| candle_nn::ops::softmax(&(x * 3.0)?, D::Minus1),
            &[],
            1e-6,
        )
    }

    #[test]
    fn fused_layer_norm_matches_composed_ops_forward_and_backward() -> Result<()> {
        check_f64_and_f32(
            |x, p| layer_norm(x, &p[0], &p[1], 1e-5),
            |x, p| layer_norm_composed(x, &p[0], &p[1], 1e-5),
            &[&[16], &[16]],
            1e-5,
        )
    }

    #[test]
    fn fused_rms_norm_matches_composed_ops_forward_and_backward() -> Result<()> {
        check_f64_and_f32(|x, p| rms_norm(x, &p[0], 1e-6), |x, p| rms_norm_composed(x, &p[0], 1e-6), &[&[16]], 1e-5)
    }

    #[test]
    fn fused_rotary_embedding_matches_composed_ops_forward_and_backward() -> Result<()> {
        // Tables whose halves differ (a model's repeat them), so that a transposition slip shows.
        let (cos, sin) = (random(&[5, 16], DType::F32, 3)?, random(&[5, 16], DType::F32, 4)?);
        let heads = |x: &Tensor| x.reshape((3, 1, 5, 16));
        check_f64_and_f32(
            |x, _| rotate_half(&heads(x)?, &cos, &sin)?.reshape((3, 5, 16)),
            |x, _| rotate_half_composed(&heads(x)?, &cos, &sin)?.reshape((3, 5, 16)),
            &[],
            1e-5,
        )
    }

    #[test]
    fn fused_swiglu_matches_composed_ops_forward_and_backward() -> Result<()> {
        check_f64_and_f32(|x, p| swiglu(x, &p[0]), |x, p| candle_nn::ops::silu(x)? * &p[0], &[&[3, 5, 16]], 1e-5)
    }

    #[test]
    fn fused_gelu_matches_candles_forward_and_backward() -> Result<()> {
        check(|x, _| gelu_erf(&(x * 2.0)?), |x, _| (x * 2.0)?.gelu_erf(), &[], DType::F32, 2e-6)?;
        // The fast erf itself, across its range, against candle's (libm's) erf.
        let xs: Vec<f32> = (-800..=800).map(|i| i as f32 / 100.0).collect();
        let exact = Tensor::new(xs.as_slice(), &Device::Cpu)?.erf()?.to_vec1::<f32>()?;
        let worst = xs.iter().zip(&exact).map(|(&x, &e)| (pointwise::erf(x) - e).abs()).fold(0.0f32, f32::max);
        assert!(worst < 3e-7, "fast erf off by {worst}");
        Ok(())
    }

    #[test]
    fn hashed_dropout_matches_its_mask_applied_by_hand_forward_and_backward() -> Result<()> {
        for dtype in [DType::F64, DType::F32] {
            let draw = attune_kernels::attention::Dropout { probability: 0.3, seed: 11 };
            let shape = [3, 5, 16];
            let mask: Vec<f64> =
                (0..3 * 5 * 16).map(|i| if draw.keeps_index(i as u64) { draw.scale() } else { 0.0 }).collect();
            let mask = Tensor::from_vec(mask, &shape, &Device::Cpu)?.to_dtype(dtype)?;
            check(|x, _| hashed_dropout(&(x * 2.0)?, draw), |x, _| (x * 2.0)? * &mask, &[], dtype, 1e-6)?;
            let dropped = mask.eq(0.0)?.to_dtype(DType::F32)?.mean_all()?.to_scalar::<f32>()?;
            assert!((0.1..0.5).contains(&dropped), "{dtype:?}: {dropped} dropped");
        }
        Ok(())
    }

    #[test]
    fn fused_kernels_in_bf16_stay_close_to_f32() -> Result<()> {
        let x = random(&[4, 7, 32], DType::F32, 3)?;
        let w = random(&[32], DType::F32, 4)?;
        let b = random(&[32], DType::F32, 5)?;
        let bf = |t: &Tensor| t.to_dtype(DType::BF16);
        let pairs = [
            (softmax_last_dim(&x)?, softmax_last_dim(&bf(&x)?)?),
            (layer_norm(&x, &w, &b, 1e-5)?, layer_norm(&bf(&x)?, &bf(&w)?, &bf(&b)?, 1e-5)?),
            (rms_norm(&x, &w, 1e-6)?, rms_norm(&bf(&x)?, &bf(&w)?, 1e-6)?),
        ];
        for (i, (full, half)) in pairs.iter().enumerate() {
            assert_eq!(half.dtype(), DType::BF16);
            let diff = max_abs_diff(full, &half.to_dtype(DType::F32)?);
            // bf16 keeps 8 significant bits: relative error 2^-8 of values up to ~4.
            assert!(diff < 0.05, "kernel {i}: bf16 differs from f32 by {diff}");
        }
        Ok(())
    }

    #[test]
    fn frozen_linear_gives_the_input_gradient_and_no_weight_gradient() -> Result<()> {
        for (dtype, tolerance) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let weight = random(&[8, 16], dtype, 7)?;
            let x = Var::from_tensor(&random(&[3, 5, 16], dtype, 8)?)?;
            let projection = random(&[3, 5, 8], dtype, 9)?;
            // Something computed from a variable, so the op is on the gradient path.
            let input = (x.as_tensor() * 2.0)?;
            let fused = frozen_linear(&input, &weight)?;
            let plain = input.broadcast_matmul(&weight.t()?)?;
            assert_eq!(fused.dims(), &[3, 5, 8]);
            assert!(max_abs_diff(&fused.to_dtype(DType::F32)?, &plain.to_dtype(DType::F32)?) <= tolerance);
            let grads_fused = (&fused * &projection)?.sum_all()?.backward()?;
            let grads_plain = (&plain * &projection)?.sum_all()?.backward()?;
            let gx = grads_fused.get(&x).expect("input gradient");
            let diff = max_abs_diff(&gx.to_dtype(DType::F32)?, &grads_plain.get(&x).unwrap().to_dtype(DType::F32)?);
            assert!(diff <= tolerance, "{dtype:?} input gradients differ by {diff}");
            // candle's matmul also computes a gradient for (the transpose of) the frozen weight:
            // one more entry in its gradient store. The fused op computes none.
            let computed = |g: &candle_core::backprop::GradStore| g.get_ids().count();
            assert_eq!(computed(&grads_plain), computed(&grads_fused) + 1, "{dtype:?}");
        }
        Ok(())
    }
}
