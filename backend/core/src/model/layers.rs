//! Building blocks shared by the encoder and decoder: layer norm, dropout and softmax, all of
//! them differentiable (candle-nn's fused layer norm and softmax have no backward pass; ours do).

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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

    /// Loads `weight` alone (ModernBERT's norms have no bias): the bias is a constant zero.
    pub fn load_without_bias(vb: VarBuilder<'_>, size: usize, eps: f64) -> candle_core::Result<Self> {
        let weight = vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?;
        let bias = Tensor::zeros(size, weight.dtype(), weight.device())?;
        Ok(LayerNorm { weight, bias, eps })
    }

    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        ops::layer_norm(xs, &self.weight, &self.bias, self.eps)
    }
}

/// Unscaled rotary frequencies `θ^(-2i/d)`, one per pair of dimensions.
pub fn rope_frequencies(theta: f64, head_dim: usize) -> Vec<f64> {
    (0..head_dim / 2).map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)).collect()
}

/// Precomputed rotary tables, `(max_positions, head_dim)` each, in the "rotate half" form of
/// Hugging Face's Llama, Qwen and ModernBERT code.
#[derive(Debug, Clone)]
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    /// Tables for `positions` positions from each pair's inverse frequency.
    pub fn new(inverse_frequencies: Vec<f32>, positions: usize, device: &Device) -> candle_core::Result<Self> {
        let half = inverse_frequencies.len();
        let inv_freq = Tensor::from_vec(inverse_frequencies, (1, half), device)?;
        let steps = Tensor::arange(0u32, positions as u32, device)?.to_dtype(DType::F32)?.unsqueeze(1)?;
        let angles = steps.broadcast_mul(&inv_freq)?;
        let angles = Tensor::cat(&[&angles, &angles], 1)?;
        Ok(Rotary { cos: angles.cos()?, sin: angles.sin()? })
    }

    /// Rotates `(batch, heads, seq, head_dim)` states at positions `offset..offset + seq`.
    pub fn apply(&self, xs: &Tensor, offset: usize) -> candle_core::Result<Tensor> {
        let (_, _, seq_len, _) = xs.dims4()?;
        let cos = self.cos.narrow(0, offset, seq_len)?.to_dtype(xs.dtype())?;
        let sin = self.sin.narrow(0, offset, seq_len)?.to_dtype(xs.dtype())?;
        super::ops::rotate_half(xs, &cos, &sin)
    }

    /// [`Rotary::apply`] at `positions`: every row from one offset, or each row from its own
    /// (rows that share one are rotated together).
    pub fn apply_at(&self, xs: &Tensor, positions: Positions<'_>) -> candle_core::Result<Tensor> {
        let starts = match positions {
            Positions::From(offset) => return self.apply(xs, offset),
            Positions::PerRow(starts) => starts,
        };
        if starts.len() != xs.dim(0)? {
            candle_core::bail!("rotary: {} row positions for a batch of {}", starts.len(), xs.dim(0)?);
        }
        let mut pieces = Vec::new();
        let mut first = 0;
        while first < starts.len() {
            let run = starts[first..].iter().take_while(|&&s| s == starts[first]).count();
            pieces.push(self.apply(&xs.narrow(0, first, run)?, starts[first])?);
            first += run;
        }
        if pieces.len() == 1 { Ok(pieces.remove(0)) } else { Tensor::cat(&pieces, 0) }
    }
}

/// Where the new tokens of a forward pass sit in their sequences.
#[derive(Debug, Clone, Copy)]
pub enum Positions<'a> {
    /// Every row's tokens at `offset..offset + seq` (one prompt, or prompts padded together).
    From(usize),
    /// Row `b`'s tokens at `starts[b]..starts[b] + seq` (sequences of different lengths decoded
    /// together, their KV caches side by side with padding between).
    PerRow(&'a [usize]),
}

/// The random source of dropout masks. Seeded (candle's CPU generator cannot be), so a training
/// run repeats exactly and resumes exactly: the trainer reseeds it from the run's seed and step.
#[derive(Debug)]
pub struct DropoutRng(Mutex<DropoutState>);

#[derive(Debug)]
struct DropoutState {
    rng: StdRng,
    /// Whether an accelerator's generator was seeded from `rng` since the last reseed. Seeding
    /// there builds a new generator (milliseconds), so it happens once per reseed, not per mask.
    device_seeded: bool,
}

impl DropoutRng {
    pub fn new(seed: u64) -> Self {
        DropoutRng(Mutex::new(DropoutState { rng: StdRng::seed_from_u64(seed), device_seeded: false }))
    }

    pub fn reseed(&self, seed: u64) {
        *self.lock() = DropoutState { rng: StdRng::seed_from_u64(seed), device_seeded: false };
    }

    /// A seed for a mask drawn elsewhere (the fused attention kernel's counter-based generator).
    pub fn next_seed(&self) -> u64 {
        self.lock().rng.random::<u64>()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DropoutState> {
        // A panic while drawing numbers leaves a usable generator behind.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How a forward pass runs: inference (no dropout), or training with dropout masks drawn from `rng`.
/// Gradients flow either way; this only switches dropout.
#[derive(Debug, Clone, Copy)]
pub enum Mode<'a> {
    Inference,
    Train(&'a DropoutRng),
}

impl Mode<'_> {
    pub fn is_train(&self) -> bool {
        matches!(self, Mode::Train(_))
    }

    /// In training, a seed for a generator of one layer's own: each decoder layer draws its masks
    /// from `DropoutRng::new(seed)`, so that running it again (activation checkpointing) from the
    /// same seed drops the same elements.
    pub fn layer_seed(&self) -> Option<u64> {
        match self {
            Mode::Train(rng) => Some(rng.next_seed()),
            Mode::Inference => None,
        }
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

    pub fn probability(&self) -> f32 {
        self.probability
    }

    pub fn forward(&self, xs: &Tensor, mode: Mode<'_>) -> candle_core::Result<Tensor> {
        let Mode::Train(rng) = mode else { return Ok(xs.clone()) };
        if self.probability <= 0.0 {
            return Ok(xs.clone());
        }
        let keep = 1.0 - self.probability;
        let scale = 1.0 / keep;
        if !xs.device().is_cpu() {
            // On an accelerator the mask is drawn there (uploading a mask per call would cost more
            // than the layer), by its generator seeded from ours once per reseed: masks are still
            // determined by the run's seed and the order of the calls.
            let mut state = rng.lock();
            if !state.device_seeded {
                let seed = state.rng.random::<u64>();
                xs.device().set_seed(seed)?;
                state.device_seeded = true;
            }
            let uniform = Tensor::rand(0f32, 1f32, xs.shape(), xs.device())?;
            let mask = (uniform.lt(keep as f64)?.to_dtype(xs.dtype())? * scale as f64)?;
            return xs * mask;
        }
        if matches!(xs.dtype(), DType::F32 | DType::F64) {
            let draw = attune_kernels::attention::Dropout { probability: self.probability, seed: rng.next_seed() };
            return ops::hashed_dropout(xs, draw);
        }
        let mask: Vec<f32> = {
            let mut state = rng.lock();
            (0..xs.elem_count()).map(|_| if state.rng.random::<f32>() < keep { scale } else { 0.0 }).collect()
        };
        let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
        xs * mask
    }
}

/// Softmax over the last dimension: a fused kernel with a backward pass on the CPU.
pub fn softmax_last_dim(xs: &Tensor) -> candle_core::Result<Tensor> {
    ops::softmax_last_dim(xs)
}
