//! Seeded random weights for any architecture we load (`--random-init`): a candle `VarBuilder`
//! backend that makes each requested tensor from (seed, name, shape), so a model needs only its
//! `config.json` and `tokenizer.json`. The same seed gives the same weights on every device (values
//! are made on the CPU, then moved), which is what GPU-vs-CPU agreement checks and GPU benchmarks
//! with real shapes but no checkpoint (no network there) need.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder, var_builder::SimpleBackend};
use rayon::prelude::*;

/// Where a model's weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightSource {
    /// The checkpoint files in the model's folder.
    #[default]
    Checkpoint,
    /// Seeded random values in the checkpoint's shapes (the folder needs only its config and tokenizer).
    Random { seed: u64 },
}

/// Random values in the spirit of a fresh Hugging Face model: norm scales 1, biases 0, every other
/// weight uniform with standard deviation `std` (0.02, the BERT and Llama `initializer_range`).
pub struct RandomWeights {
    seed: u64,
    std: f64,
}

impl RandomWeights {
    pub fn new(seed: u64) -> Self {
        RandomWeights { seed, std: 0.02 }
    }

    /// A `VarBuilder` handing out these weights.
    pub fn var_builder(seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(RandomWeights::new(seed)), dtype, device.clone())
    }

    /// The f32 tensor (on the CPU) this backend hands out for `name` and `shape`.
    pub fn tensor(&self, name: &str, shape: &Shape) -> Result<Tensor> {
        Tensor::from_vec(self.values(name, shape.elem_count()), shape.clone(), &Device::Cpu)
    }

    fn values(&self, name: &str, count: usize) -> Vec<f32> {
        let lower = name.to_lowercase();
        let is_norm = lower.contains("norm");
        if name.ends_with(".bias") || (is_norm && name.ends_with(".beta")) {
            return vec![0.0; count];
        }
        if is_norm {
            return vec![1.0; count];
        }
        // Uniform on [-a, a] has standard deviation a/√3.
        let half_width = (self.std * 3f64.sqrt()) as f32;
        let stream = self.seed ^ fnv1a(name);
        const CHUNK: usize = 1 << 16;
        let mut out = vec![0f32; count];
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(chunk, slots)| {
            let mut state = splitmix(stream.wrapping_add((chunk as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            for slot in slots {
                state = splitmix(state);
                // 24 random bits → [0, 1) → [-a, a].
                let unit = (state >> 40) as f32 / (1u32 << 24) as f32;
                *slot = (unit * 2.0 - 1.0) * half_width;
            }
        });
        out
    }
}

impl SimpleBackend for RandomWeights {
    fn get(&self, shape: Shape, name: &str, _hints: Init, dtype: DType, device: &Device) -> Result<Tensor> {
        self.tensor(name, &shape)?.to_dtype(dtype)?.to_device(device)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _device: &Device) -> Result<Tensor> {
        candle_core::bail!("random weights: {name} was asked for without a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        // Random weights exist for every name, except the alternative layout the retriever's loader
        // probes for ("bert."-prefixed encoders).
        !name.starts_with("bert.")
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights_and_hugging_face_like_statistics() {
        let a = RandomWeights::new(7);
        let b = RandomWeights::new(7);
        let c = RandomWeights::new(8);
        let shape = Shape::from((300, 500));
        let get = |w: &RandomWeights, name: &str| {
            w.get(shape.clone(), name, Init::Const(0.0), DType::F32, &Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let x = get(&a, "layers.0.q_proj.weight");
        assert_eq!(x, get(&b, "layers.0.q_proj.weight"));
        assert_ne!(x, get(&c, "layers.0.q_proj.weight"));
        assert_ne!(x, get(&a, "layers.0.k_proj.weight"));
        let mean = x.iter().map(|v| *v as f64).sum::<f64>() / x.len() as f64;
        let std = (x.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
        assert!(mean.abs() < 1e-3, "mean {mean}");
        assert!((std - 0.02).abs() < 1e-3, "std {std}");
        assert!(get(&a, "layers.0.input_layernorm.weight").iter().all(|v| *v == 1.0));
        assert!(get(&a, "encoder.layer.0.output.LayerNorm.bias").iter().all(|v| *v == 0.0));
        assert!(get(&a, "encoder.layer.0.output.dense.bias").iter().all(|v| *v == 0.0));
    }
}
