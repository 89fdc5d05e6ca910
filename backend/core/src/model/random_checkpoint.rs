//! A small but complete checkpoint of seeded random weights for a model folder holding only a
//! BERT or Llama `config.json` (and a tokenizer): tests and demos load it like a downloaded model.
//! Kept apart from `random.rs`, which the model loaders use, so no import runs in a circle.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder, var_builder::SimpleBackend};

use super::random::RandomWeights;

/// Hands out [`RandomWeights`] and remembers every tensor it handed out, so they can be saved.
struct Recording {
    weights: RandomWeights,
    seen: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Tensor>>>,
}

impl SimpleBackend for Recording {
    fn get(&self, shape: Shape, name: &str, hints: Init, dtype: DType, device: &Device) -> Result<Tensor> {
        let tensor = self.weights.get(shape, name, hints, dtype, device)?;
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned(), tensor.clone());
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        self.weights.get_unchecked(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.weights.contains_tensor(name)
    }
}

/// Writes `model.safetensors` of seeded random weights into a model folder that has a BERT or generator
/// `config.json` (and a tokenizer): a small but complete checkpoint for tests and demos, loadable
/// like any downloaded model.
pub fn save_random_checkpoint(dir: &std::path::Path, seed: u64) -> std::result::Result<(), super::ModelError> {
    use super::ModelError;
    let config_path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&config_path).map_err(|error| ModelError::Read { path: config_path.clone(), error })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|error| ModelError::Config { path: config_path.clone(), error })?;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let backend = Recording { weights: RandomWeights::new(seed), seen: seen.clone() };
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu);
    match value.get("model_type").and_then(|t| t.as_str()) {
        Some(model_type) if super::encoder::MODEL_TYPES.contains(&model_type) => {
            let cfg = super::encoder::EncoderConfig::from_json(&text).map_err(ModelError::Unsupported)?;
            super::encoder::Encoder::load(vb, &cfg)?;
        }
        Some(model_type) if super::llama::Family::of(model_type).is_some() => {
            let cfg: super::llama::Config = serde_json::from_value(value)
                .map_err(|error| ModelError::Config { path: config_path.clone(), error })?;
            cfg.validate()?;
            super::llama::Llama::load(vb, &cfg)?;
        }
        other => {
            return Err(ModelError::Unsupported(format!(
                "random checkpoints are made for bert and the generator families, not {other:?}"
            )));
        }
    }
    let tensors = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
    let path = dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &path)?;
    Ok(())
}
