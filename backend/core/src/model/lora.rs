//! LoRA adapters in PEFT's layout: attach trainable low-rank updates to chosen linear layers,
//! save them as `adapter_model.safetensors` + `adapter_config.json` (loadable with Python's `peft`
//! onto the same base model), and load such adapters back.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::{Init, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::error::{ModelError, Result};
use super::layers::Dropout;
use super::linear::{Linear, LoraAdapter};

/// File names PEFT uses.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// PEFT's prefix in front of the base model's module paths.
const PEFT_PREFIX: &str = "base_model.model";

/// Models whose linear layers adapters can attach to, named by their Hugging Face module path.
pub trait HasLinears {
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)>;
}

/// The subset of PEFT's `LoraConfig` Attune reads and writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    #[serde(default = "peft_type_lora")]
    pub peft_type: String,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f32,
    /// Last path segments of the adapted modules, e.g. `query`, `q_proj`.
    pub target_modules: Vec<String>,
    #[serde(default = "bias_none")]
    pub bias: String,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub inference_mode: bool,
}

fn peft_type_lora() -> String {
    "LORA".to_owned()
}
fn bias_none() -> String {
    "none".to_owned()
}

impl LoraConfig {
    /// A config with PEFT's defaults for everything but rank, alpha, dropout and targets.
    pub fn new(r: usize, lora_alpha: f64, lora_dropout: f32, target_modules: &[&str]) -> Self {
        LoraConfig {
            peft_type: peft_type_lora(),
            r,
            lora_alpha,
            lora_dropout,
            target_modules: target_modules.iter().map(|m| m.to_string()).collect(),
            bias: bias_none(),
            fan_in_fan_out: false,
            use_rslora: false,
            use_dora: false,
            base_model_name_or_path: None,
            task_type: None,
            inference_mode: true,
        }
    }

    /// Defaults for the retriever: query, key and value projections (BERT's three, ModernBERT's
    /// fused one).
    pub fn retriever_default() -> Self {
        LoraConfig::new(8, 16.0, 0.1, &["query", "key", "value", "Wqkv"])
    }

    /// Defaults for the generator: the four attention projections.
    pub fn generator_default() -> Self {
        LoraConfig {
            task_type: Some("CAUSAL_LM".into()),
            ..LoraConfig::new(8, 16.0, 0.05, &["q_proj", "k_proj", "v_proj", "o_proj"])
        }
    }

    fn validate(&self) -> Result<()> {
        let unsupported = |what: &str| Err(ModelError::Unsupported(format!("LoRA adapter with {what}")));
        if self.peft_type != "LORA" {
            return unsupported(&format!("peft_type {:?}", self.peft_type));
        }
        if self.r == 0 {
            return unsupported("rank 0");
        }
        if self.bias != "none" {
            return unsupported(&format!("bias {:?}", self.bias));
        }
        if self.fan_in_fan_out || self.use_dora {
            return unsupported("fan_in_fan_out or DoRA");
        }
        Ok(())
    }

    /// The factor applied to `B A`: `alpha / r` (or `alpha / √r` with rsLoRA).
    pub fn scale(&self) -> f64 {
        if self.use_rslora { self.lora_alpha / (self.r as f64).sqrt() } else { self.lora_alpha / self.r as f64 }
    }
}

/// Attaches adapters to every linear layer whose last path segment is a target, taking A and B
/// from `vb` (rooted where PEFT's names start). Returns how many layers were adapted.
pub fn attach(model: &mut impl HasLinears, config: &LoraConfig, vb: VarBuilder<'_>) -> Result<usize> {
    config.validate()?;
    let root = vb.pp(PEFT_PREFIX);
    let mut adapted = 0;
    for (path, linear) in model.linears_mut() {
        let module = path.rsplit('.').next().unwrap_or_default();
        if !config.target_modules.iter().any(|t| t == module) {
            continue;
        }
        let (in_dim, out_dim) = linear.dims()?;
        let at = root.pp(&path);
        // PEFT's initialisation: A Kaiming-uniform, B zero, so an untrained adapter changes nothing.
        let a =
            at.pp("lora_A").get_with_hints((config.r, in_dim), "weight", candle_nn::init::DEFAULT_KAIMING_UNIFORM)?;
        let b = at.pp("lora_B").get_with_hints((out_dim, config.r), "weight", Init::Const(0.0))?;
        linear.set_lora(Some(LoraAdapter { a, b, scale: config.scale(), dropout: Dropout::new(config.lora_dropout) }));
        adapted += 1;
    }
    if adapted == 0 {
        return Err(ModelError::Unsupported(format!(
            "no linear layer matches target_modules {:?}",
            config.target_modules
        )));
    }
    Ok(adapted)
}

/// Fresh trainable adapters: their variables live in the returned map (save it with [`save`]).
pub fn attach_trainable(model: &mut impl HasLinears, config: &LoraConfig, device: &Device) -> Result<VarMap> {
    let varmap = VarMap::new();
    attach(model, config, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    Ok(varmap)
}

/// Writes the adapters in `varmap` to `dir` in PEFT's layout.
pub fn save(dir: &Path, varmap: &VarMap, config: &LoraConfig) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|error| ModelError::Read { path: dir.to_owned(), error })?;
    varmap.save(dir.join(ADAPTER_WEIGHTS))?;
    let json = serde_json::to_string_pretty(config)
        .map_err(|error| ModelError::Config { path: dir.join(ADAPTER_CONFIG), error })?;
    std::fs::write(dir.join(ADAPTER_CONFIG), json)
        .map_err(|error| ModelError::Read { path: dir.join(ADAPTER_CONFIG), error })?;
    Ok(())
}

/// Loads a PEFT LoRA adapter from `dir` onto `model`; every tensor in the file must find its layer.
pub fn load(dir: &Path, model: &mut impl HasLinears, device: &Device) -> Result<LoraConfig> {
    let config_path = dir.join(ADAPTER_CONFIG);
    let text =
        std::fs::read_to_string(&config_path).map_err(|error| ModelError::Read { path: config_path.clone(), error })?;
    let config: LoraConfig =
        serde_json::from_str(&text).map_err(|error| ModelError::Config { path: config_path.clone(), error })?;
    let tensors = candle_core::safetensors::load(dir.join(ADAPTER_WEIGHTS), device)?;
    let in_file = tensors.len();
    let adapted = attach(model, &config, VarBuilder::from_tensors(tensors, DType::F32, device))?;
    if adapted * 2 != in_file {
        return Err(ModelError::Unsupported(format!(
            "{}: {in_file} tensors but {adapted} matching layers (an adapter for another model?)",
            dir.display()
        )));
    }
    Ok(config)
}

/// Folds every attached adapter into its base weight.
pub fn merge(model: &mut impl HasLinears) -> Result<()> {
    for (_, linear) in model.linears_mut() {
        linear.merge_lora()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{Tensor, Var};

    use super::*;
    use crate::model::bert::{BertModel, EncoderInput};
    use crate::model::layers::{DropoutRng, Mode};
    use crate::model::test_util::max_abs_diff;
    use crate::train::test_models::tiny_config;

    /// Random base weights for a tiny BERT, as plain tensors (frozen, as when loaded from a checkpoint).
    fn base_tensors() -> HashMap<String, Tensor> {
        let random = VarMap::new();
        BertModel::load(VarBuilder::from_varmap(&random, DType::F32, &Device::Cpu), &tiny_config()).unwrap();
        let data = random.data().lock().unwrap();
        data.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect()
    }

    fn bert_from(tensors: &HashMap<String, Tensor>) -> BertModel {
        BertModel::load(VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu), &tiny_config()).unwrap()
    }

    fn frozen_bert() -> BertModel {
        bert_from(&base_tensors())
    }

    fn input() -> EncoderInput {
        let dev = &Device::Cpu;
        EncoderInput {
            input_ids: Tensor::new(&[[2u32, 4, 5, 6, 3], [2, 10, 11, 3, 0]], dev).unwrap(),
            token_type_ids: Tensor::zeros((2, 5), DType::U32, dev).unwrap(),
            attention_mask: Tensor::new(&[[1f32, 1., 1., 1., 1.], [1., 1., 1., 1., 0.]], dev).unwrap(),
        }
    }

    /// Gives every B a random value, as training would, so the adapter changes the output.
    fn randomise_b(varmap: &VarMap) {
        for (name, var) in varmap.data().lock().unwrap().iter() {
            if name.contains("lora_B") {
                var.set(&Tensor::randn(0f32, 0.5, var.shape(), &Device::Cpu).unwrap()).unwrap();
            }
        }
    }

    #[test]
    fn fresh_adapter_changes_nothing_and_only_adapters_train() {
        let mut model = frozen_bert();
        let before = model.forward(&input(), Mode::Inference).unwrap();
        let config = LoraConfig::new(4, 8.0, 0.0, &["query", "value"]);
        let varmap = attach_trainable(&mut model, &config, &Device::Cpu).unwrap();
        // B starts at zero. (Before: fused kernels; after: the differentiable ones, since the adapters
        // are variables; same math, other rounding.)
        let unchanged = max_abs_diff(&before, &model.forward(&input(), Mode::Inference).unwrap());
        assert!(unchanged < 1e-5, "a fresh adapter changed the output by {unchanged}");

        randomise_b(&varmap);
        let loss = model.forward(&input(), Mode::Train(&DropoutRng::new(0))).unwrap().sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let vars: Vec<Var> = varmap.all_vars();
        assert_eq!(vars.len(), 2 * 2 * tiny_config().num_hidden_layers, "A and B for query and value per layer");
        for var in &vars {
            let g = grads.get(var).expect("adapter gradient").abs().unwrap().sum_all().unwrap();
            assert!(g.to_scalar::<f32>().unwrap() > 0.0);
        }
    }

    #[test]
    fn merged_adapter_gives_the_same_output() {
        let mut model = frozen_bert();
        let varmap =
            attach_trainable(&mut model, &LoraConfig::new(4, 8.0, 0.0, &["query", "key", "value"]), &Device::Cpu)
                .unwrap();
        randomise_b(&varmap);
        let adapted = model.forward(&input(), Mode::Inference).unwrap();
        merge(&mut model).unwrap();
        assert!(model.linears_mut().iter().all(|(_, l)| l.lora().is_none()));
        let diff = max_abs_diff(&adapted, &model.forward(&input(), Mode::Inference).unwrap());
        // Folding B·A into W changes f32 rounding through every layer: observed up to 1.5e-5 on O(1)
        // outputs over 100 random draws, while the adapter itself moves them by O(0.1).
        assert!(diff < 1e-4, "merging changed the output by {diff}");
    }

    #[test]
    fn save_then_load_restores_the_adapter_in_pefts_layout() {
        let base = base_tensors();
        let mut model = bert_from(&base);
        let config = LoraConfig::new(2, 4.0, 0.0, &["value"]);
        let varmap = attach_trainable(&mut model, &config, &Device::Cpu).unwrap();
        randomise_b(&varmap);
        let adapted = model.forward(&input(), Mode::Inference).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &varmap, &config).unwrap();

        let mut names: Vec<String> = candle_core::safetensors::load(dir.path().join(ADAPTER_WEIGHTS), &Device::Cpu)
            .unwrap()
            .into_keys()
            .collect();
        names.sort();
        assert_eq!(names.len(), 2 * tiny_config().num_hidden_layers);
        assert_eq!(names[0], "base_model.model.encoder.layer.0.attention.self.value.lora_A.weight");
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(ADAPTER_CONFIG)).unwrap()).unwrap();
        assert_eq!((written["peft_type"].as_str(), written["r"].as_u64()), (Some("LORA"), Some(2)));

        let mut reloaded = bert_from(&base);
        assert_eq!(load(dir.path(), &mut reloaded, &Device::Cpu).unwrap(), config);
        // Trainable (differentiable kernels) against loaded (fused kernels): same math, other rounding.
        assert!(max_abs_diff(&adapted, &reloaded.forward(&input(), Mode::Inference).unwrap()) < 1e-5);
    }

    #[test]
    fn rejects_adapters_for_another_model_or_kind() {
        let mut model = frozen_bert();
        let dir = tempfile::tempdir().unwrap();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        vb.get((4, 16), "base_model.model.encoder.layer.9.attention.self.value.lora_A.weight").unwrap();
        vb.get((16, 4), "base_model.model.encoder.layer.9.attention.self.value.lora_B.weight").unwrap();
        save(dir.path(), &varmap, &LoraConfig::new(4, 8.0, 0.0, &["q_proj"])).unwrap();
        let error = load(dir.path(), &mut model, &Device::Cpu).unwrap_err().to_string();
        assert!(error.contains("q_proj"), "{error}");

        let dora = LoraConfig { use_dora: true, ..LoraConfig::new(4, 8.0, 0.0, &["value"]) };
        assert!(attach(&mut model, &dora, VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu)).is_err());
    }

    #[test]
    fn adapter_gradients_match_finite_differences() {
        // Everything in f64 so central differences are accurate to ~1e-8.
        let random = VarMap::new();
        BertModel::load(VarBuilder::from_varmap(&random, DType::F64, &Device::Cpu), &tiny_config()).unwrap();
        let base: HashMap<String, Tensor> =
            random.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect();
        let mut model =
            BertModel::load(VarBuilder::from_tensors(base, DType::F64, &Device::Cpu), &tiny_config()).unwrap();
        let varmap = VarMap::new();
        let config = LoraConfig::new(2, 4.0, 0.0, &["query", "value"]);
        attach(&mut model, &config, VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu)).unwrap();
        for (name, var) in varmap.data().lock().unwrap().iter() {
            if name.contains("lora_B") {
                var.set(&Tensor::randn(0f64, 0.5, var.shape(), &Device::Cpu).unwrap()).unwrap();
            }
        }
        let weights = Tensor::randn(0f64, 1.0, (2, 16), &Device::Cpu).unwrap();
        let loss = |m: &BertModel| -> Tensor {
            let hidden = m.forward(&input(), Mode::Inference).unwrap();
            let pooled =
                crate::model::retriever::pool(&hidden, &input().attention_mask, crate::model::retriever::Pooling::Mean)
                    .unwrap();
            (pooled * &weights).unwrap().sum_all().unwrap()
        };
        let grads = loss(&model).backward().unwrap();
        let h = 1e-5;
        let mut checked = 0;
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let analytic = grads.get(var).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let original = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for index in [0, original.len() / 2, original.len() - 1] {
                let at = |delta: f64| {
                    let mut values = original.clone();
                    values[index] += delta;
                    var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap()).unwrap();
                    loss(&model).to_scalar::<f64>().unwrap()
                };
                let numeric = (at(h) - at(-h)) / (2.0 * h);
                var.set(&Tensor::from_vec(original.clone(), var.shape(), &Device::Cpu).unwrap()).unwrap();
                // candle's f64 erf (in GELU) is an approximation good to ~1e-7, which shows in central
                // differences; a wrong gradient (missing scale, wrong transpose) is off by O(1) relative.
                let tolerance = 1e-5 + 1e-3 * numeric.abs();
                assert!(
                    (numeric - analytic[index]).abs() <= tolerance,
                    "{name}[{index}]: numeric {numeric} vs analytic {}",
                    analytic[index]
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 3 * 2 * 2 * tiny_config().num_hidden_layers);
    }
}
