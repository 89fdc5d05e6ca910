//! AdamW (decoupled weight decay, as PyTorch's), the learning-rate schedule (linear warmup, then
//! linear or cosine decay), and gradient-norm clipping. The optimiser's moments are plain tensors
//! so a checkpoint can save them and a resumed run continue exactly.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::error::{Result, TrainError};

/// AdamW's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamWConfig {
    /// PyTorch's betas and epsilon with `weight_decay` (a run setting; the others are not).
    pub fn with_weight_decay(weight_decay: f64) -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay }
    }
}

pub use attune_shared::Decay;

/// Learning rate at each optimiser step: linear warmup from 0 to `peak` over `warmup_steps`, then
/// `decay` towards 0 at `total_steps`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub peak: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub decay: Decay,
}

impl Schedule {
    /// The learning rate for optimiser step `step` (counted from 0).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        match self.decay {
            Decay::Constant => self.peak,
            Decay::Linear => self.peak * (1.0 - progress),
            Decay::Cosine => self.peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

/// AdamW over named variables.
pub struct AdamW {
    params: Vec<(String, Var)>,
    first_moments: Vec<Tensor>,
    second_moments: Vec<Tensor>,
    steps_taken: usize,
    config: AdamWConfig,
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let zeros = |v: &Var| v.as_tensor().zeros_like().and_then(|z| z.to_dtype(DType::F32));
        let first_moments = params.iter().map(|(_, v)| zeros(v)).collect::<candle_core::Result<Vec<_>>>()?;
        let second_moments = params.iter().map(|(_, v)| zeros(v)).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(AdamW { params, first_moments, second_moments, steps_taken: 0, config })
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    pub fn steps_taken(&self) -> usize {
        self.steps_taken
    }

    /// One update with `grads[i]` for `params[i]`; a variable with no gradient (`None`) is left
    /// unchanged, weight decay included.
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        assert_eq!(grads.len(), self.params.len());
        self.steps_taken += 1;
        let t = self.steps_taken as i32;
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.config;
        let correction1 = 1.0 - beta1.powi(t);
        let correction2 = 1.0 - beta2.powi(t);
        for (i, grad) in grads.iter().enumerate() {
            let Some(grad) = grad else { continue };
            let (_, var) = &self.params[i];
            let grad = grad.to_dtype(DType::F32)?;
            let m = ((&self.first_moments[i] * beta1)? + (&grad * (1.0 - beta1))?)?;
            let v = ((&self.second_moments[i] * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
            let update = ((&m / correction1)? / ((&v / correction2)?.sqrt()? + eps)?)?;
            let value = var.as_tensor().to_dtype(DType::F32)?;
            let decayed = (&value * (1.0 - lr * weight_decay))?;
            let next = (decayed - (update * lr)?)?;
            var.set(&next.to_dtype(var.dtype())?)?;
            self.first_moments[i] = m;
            self.second_moments[i] = v;
        }
        Ok(())
    }

    /// The moments, by `m.<name>` / `v.<name>`, for a checkpoint.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut state = HashMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            state.insert(format!("m.{name}"), self.first_moments[i].clone());
            state.insert(format!("v.{name}"), self.second_moments[i].clone());
        }
        state
    }

    /// Restores [`AdamW::state`] and the number of steps taken.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, steps_taken: usize) -> Result<()> {
        let device = self.params.first().map(|(_, v)| v.device().clone());
        for (i, (name, var)) in self.params.iter().enumerate() {
            let get = |key: String| -> Result<Tensor> {
                let t = state.get(&key).ok_or_else(|| TrainError::Data(format!("optimiser state lacks {key}")))?;
                if t.dims() != var.dims() {
                    return Err(TrainError::Data(format!("optimiser state {key} has shape {:?}", t.dims())));
                }
                Ok(t.to_device(device.as_ref().unwrap_or(&candle_core::Device::Cpu))?)
            };
            self.first_moments[i] = get(format!("m.{name}"))?;
            self.second_moments[i] = get(format!("v.{name}"))?;
        }
        self.steps_taken = steps_taken;
        Ok(())
    }
}

/// Scales `grads` so their global L2 norm is at most `max_norm` (when `max_norm` > 0); returns the
/// norm before clipping.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let mut total = 0.0f64;
    for grad in grads.iter().flatten() {
        total += grad.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
    }
    let norm = total.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let factor = max_norm / (norm + 1e-6);
        for grad in grads.iter_mut().flatten() {
            *grad = (&*grad * factor)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        let linear = Schedule { peak: 1.0, warmup_steps: 4, total_steps: 14, decay: Decay::Linear };
        assert_eq!(linear.lr(0), 0.25);
        assert_eq!(linear.lr(3), 1.0);
        assert_eq!(linear.lr(4), 1.0);
        assert!((linear.lr(9) - 0.5).abs() < 1e-12);
        assert_eq!(linear.lr(14), 0.0);
        let cosine = Schedule { decay: Decay::Cosine, ..linear };
        assert!((cosine.lr(9) - 0.5).abs() < 1e-12);
        assert!(cosine.lr(6) > linear.lr(6), "cosine stays high longer");
        let constant = Schedule { decay: Decay::Constant, warmup_steps: 0, ..linear };
        assert_eq!(constant.lr(13), 1.0);
    }

    /// Two steps checked against PyTorch's AdamW formula, written out by hand.
    #[test]
    fn adamw_matches_the_formula() {
        let var = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let config = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 };
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], config).unwrap();
        let (lr, g) = (0.1f64, [0.5f64, -1.0]);
        let mut p = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for t in 1..=2 {
            let grad = Tensor::new(&[g[0] as f32, g[1] as f32], &Device::Cpu).unwrap();
            opt.step(&[Some(grad)], lr).unwrap();
            for i in 0..2 {
                p[i] *= 1.0 - lr * 0.1;
                m[i] = 0.9 * m[i] + 0.1 * g[i];
                v[i] = 0.99 * v[i] + 0.01 * g[i] * g[i];
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.99f64.powi(t));
                p[i] -= lr * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got = var.as_tensor().to_vec1::<f32>().unwrap();
        for i in 0..2 {
            assert!((got[i] as f64 - p[i]).abs() < 1e-6, "{} vs {}", got[i], p[i]);
        }
        // State round trip: a restored optimiser continues identically.
        let mut restored = AdamW::new(vec![("w".into(), Var::from_tensor(var.as_tensor()).unwrap())], config).unwrap();
        restored.load_state(&opt.state(), opt.steps_taken()).unwrap();
        let grad = Tensor::new(&[0.3f32, 0.3], &Device::Cpu).unwrap();
        opt.step(&[Some(grad.clone())], lr).unwrap();
        restored.step(&[Some(grad)], lr).unwrap();
        assert_eq!(
            opt.params()[0].1.as_tensor().to_vec1::<f32>().unwrap(),
            restored.params()[0].1.as_tensor().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut grads = vec![
            Some(Tensor::new(&[3.0f32], &Device::Cpu).unwrap()),
            None,
            Some(Tensor::new(&[4.0f32], &Device::Cpu).unwrap()),
        ];
        let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        let after = clip_grad_norm(&mut grads, 0.0).unwrap();
        assert!((after - 1.0).abs() < 1e-5);
    }
}
