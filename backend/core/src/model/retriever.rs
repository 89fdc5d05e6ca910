//! The retriever: a BERT encoder, its tokenizer, and sentence-transformers' pooling and
//! normalisation, loaded from a Hugging Face-format folder. Turns texts into embeddings.

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::bert::EncoderInput;
use super::encoder::{Encoder, EncoderConfig};
use super::error::{ModelError, Result};
use super::layers::Mode;
use super::lora::{self, LoraConfig};
use super::random::{RandomWeights, WeightSource};

/// How token states become one vector per text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Average of the real (unpadded) tokens' states.
    Mean,
    /// The first token's (`[CLS]`) state.
    Cls,
}

/// What a retriever folder says about pooling, normalisation, length and prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrieverSettings {
    pub pooling: Pooling,
    /// Scale every embedding to unit length.
    pub normalize: bool,
    /// Longest input in tokens; longer texts are truncated.
    pub max_length: usize,
    /// Prepended to queries (e.g. BGE's instruction), when the model has one.
    pub query_prefix: Option<String>,
    /// Prepended to passages, when the model has one.
    pub passage_prefix: Option<String>,
}

impl RetrieverSettings {
    /// Reads `modules.json`, `1_Pooling/config.json` (or whichever folder modules.json names),
    /// `sentence_bert_config.json` and `config_sentence_transformers.json` when present.
    /// Without them: mean pooling, normalised, the model's maximum length.
    pub fn from_folder(dir: &Path, model_max_length: usize) -> Result<Self> {
        let mut settings = RetrieverSettings {
            pooling: Pooling::Mean,
            normalize: true,
            max_length: model_max_length,
            query_prefix: None,
            passage_prefix: None,
        };
        if let Some(modules) = read_json_if_present::<Vec<StModule>>(&dir.join("modules.json"))? {
            settings.normalize = modules.iter().any(|m| m.kind.ends_with(".Normalize"));
            if let Some(pooling) = modules.iter().find(|m| m.kind.ends_with(".Pooling")) {
                let path = dir.join(&pooling.path).join("config.json");
                if let Some(config) = read_json_if_present::<StPooling>(&path)? {
                    settings.pooling = config.pooling().ok_or_else(|| {
                        ModelError::Unsupported(format!("{}: only mean or CLS pooling is supported", path.display()))
                    })?;
                    if config.include_prompt == Some(false) && settings.pooling == Pooling::Mean {
                        return Err(ModelError::Unsupported(format!(
                            "{}: mean pooling that leaves out the prompt's tokens (include_prompt: false)",
                            path.display()
                        )));
                    }
                }
            }
        }
        // sentence-transformers before v6 keeps the length in sentence_bert_config.json, v6 in the
        // tokenizer's config.
        let st_length = read_json_if_present::<StBertConfig>(&dir.join("sentence_bert_config.json"))?
            .and_then(|st| st.max_seq_length);
        let tokenizer_length = read_json_if_present::<serde_json::Value>(&dir.join("tokenizer_config.json"))?
            .and_then(|t| t.get("model_max_length").and_then(serde_json::Value::as_u64))
            .map(|n| n as usize);
        if let Some(max) = st_length.or(tokenizer_length) {
            settings.max_length = max.min(model_max_length);
        }
        if let Some(st) = read_json_if_present::<StConfig>(&dir.join("config_sentence_transformers.json"))? {
            let prompt = |names: &[&str]| {
                names.iter().find_map(|n| st.prompts.get(*n).cloned()).filter(|p: &String| !p.is_empty())
            };
            settings.query_prefix = prompt(&["query"]);
            settings.passage_prefix = prompt(&["passage", "document", "corpus"]);
        }
        Ok(settings)
    }
}

#[derive(Deserialize)]
struct StModule {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

/// `1_Pooling/config.json`: sentence-transformers before v6 writes one boolean per mode, v6 and
/// later one `pooling_mode` string (and `include_prompt`).
#[derive(Deserialize)]
struct StPooling {
    #[serde(default)]
    pooling_mode: Option<String>,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    include_prompt: Option<bool>,
}

impl StPooling {
    fn pooling(&self) -> Option<Pooling> {
        if let Some(mode) = &self.pooling_mode {
            return match mode.as_str() {
                "cls" => Some(Pooling::Cls),
                "mean" => Some(Pooling::Mean),
                _ => None,
            };
        }
        let others = self.pooling_mode_max_tokens || self.pooling_mode_mean_sqrt_len_tokens;
        match (self.pooling_mode_cls_token, self.pooling_mode_mean_tokens, others) {
            (true, false, false) => Some(Pooling::Cls),
            (false, true, false) => Some(Pooling::Mean),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct StBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct StConfig {
    #[serde(default)]
    prompts: std::collections::HashMap<String, String>,
}

fn read_json_if_present<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read_to_string(path) {
        Ok(text) => {
            serde_json::from_str(&text).map(Some).map_err(|error| ModelError::Config { path: path.to_owned(), error })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(ModelError::Read { path: path.to_owned(), error }),
    }
}

/// Whether a text is a question (gets the query prefix) or a passage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextRole {
    Query,
    Passage,
}

/// A loaded retriever, ready to embed texts.
pub struct Retriever {
    model: Encoder,
    tokenizer: Tokenizer,
    settings: RetrieverSettings,
    hidden_size: usize,
}

impl Retriever {
    /// Loads `config.json`, `model.safetensors` (or `pytorch_model.bin`) and `tokenizer.json` from `dir`,
    /// in the device's default precision.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_as(dir, device, super::device::default_dtype(device))
    }

    /// [`Retriever::load`] with the weights in `dtype` (embeddings still come out in f32).
    pub fn load_as(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_with(dir, device, dtype, WeightSource::Checkpoint)
    }

    /// [`Retriever::load_as`] with the weights from `source`: the folder's checkpoint, or seeded
    /// random values (then the folder needs only `config.json` and `tokenizer.json`).
    pub fn load_with(dir: &Path, device: &Device, dtype: DType, source: WeightSource) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text =
            fs::read_to_string(&config_path).map_err(|error| ModelError::Read { path: config_path.clone(), error })?;
        let cfg = EncoderConfig::from_json(&text)
            .map_err(|e| ModelError::Unsupported(format!("{}: {e}", config_path.display())))?;
        let vb = match source {
            WeightSource::Checkpoint => weights(dir, device, dtype)?,
            WeightSource::Random { seed } => RandomWeights::var_builder(seed, dtype, device),
        };
        // Task checkpoints (BertForMaskedLM and friends) keep the encoder under a prefix.
        let (prefix, probe) = cfg.task_prefix();
        let vb = if vb.contains_tensor(&format!("{prefix}.{probe}")) { vb.pp(prefix) } else { vb };
        let model = Encoder::load(vb, &cfg)?;
        let settings = RetrieverSettings::from_folder(dir, cfg.max_length())?;
        let tokenizer = load_tokenizer(&dir.join("tokenizer.json"), &settings, cfg.pad_token_id())?;
        Ok(Retriever { model, tokenizer, settings, hidden_size: cfg.hidden_size() })
    }

    /// Assembles a retriever from parts (tests build tiny random ones this way).
    pub fn from_parts(
        model: impl Into<Encoder>,
        tokenizer: Tokenizer,
        settings: RetrieverSettings,
        hidden_size: usize,
    ) -> Self {
        Retriever { model: model.into(), tokenizer, settings, hidden_size }
    }

    pub fn settings(&self) -> &RetrieverSettings {
        &self.settings
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    pub fn model(&self) -> &Encoder {
        &self.model
    }

    /// Truncates inputs to `max_length` tokens from now on (at most the model's own maximum).
    pub fn set_max_length(&mut self, max_length: usize) -> Result<()> {
        let pad_id = self.tokenizer.get_padding().map_or(0, |p| p.pad_id);
        self.settings.max_length = max_length.min(self.settings.max_length);
        configure_tokenizer(&mut self.tokenizer, self.settings.max_length, pad_id)
            .map_err(|message| ModelError::Tokenizer { path: PathBuf::from("tokenizer.json"), message })
    }

    pub fn model_mut(&mut self) -> &mut Encoder {
        &mut self.model
    }

    /// Loads a PEFT LoRA adapter (`adapter_config.json` + `adapter_model.safetensors`) onto the encoder.
    pub fn load_adapter(&mut self, dir: &Path) -> Result<LoraConfig> {
        let device = self.model.device().clone();
        lora::load(dir, &mut self.model, &device)
    }

    /// Tokenizes a batch (with the role's prefix), padded to its longest text.
    pub fn tokenize(&self, texts: &[&str], role: TextRole) -> Result<EncoderInput> {
        let prefix = match role {
            TextRole::Query => self.settings.query_prefix.as_deref(),
            TextRole::Passage => self.settings.passage_prefix.as_deref(),
        };
        let inputs: Vec<String> = texts.iter().map(|t| format!("{}{t}", prefix.unwrap_or(""))).collect();
        let encodings = self.tokenizer.encode_batch(inputs, true).map_err(|e| ModelError::Tokenize(e.to_string()))?;
        let batch = encodings.len();
        let seq_len = encodings.iter().map(|e| e.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch * seq_len);
        let mut types = Vec::with_capacity(batch * seq_len);
        let mut mask = Vec::with_capacity(batch * seq_len);
        for encoding in &encodings {
            ids.extend_from_slice(encoding.get_ids());
            types.extend_from_slice(encoding.get_type_ids());
            mask.extend(encoding.get_attention_mask().iter().map(|&m| m as f32));
        }
        let device = self.model.device();
        Ok(EncoderInput {
            input_ids: Tensor::from_vec(ids, (batch, seq_len), device)?,
            token_type_ids: Tensor::from_vec(types, (batch, seq_len), device)?,
            attention_mask: Tensor::from_vec(mask, (batch, seq_len), device)?,
        })
    }

    /// Pooled (and, if the model says so, normalised) embeddings, `(batch, hidden)`.
    /// `train` turns dropout on; gradients flow through either way.
    pub fn forward(&self, input: &EncoderInput, mode: Mode<'_>) -> Result<Tensor> {
        // Pooling and normalisation in f32 (f64 stays f64) whatever the weights' precision.
        let hidden = self.model.forward(input, mode)?;
        let hidden = if hidden.dtype() == DType::F64 { hidden } else { hidden.to_dtype(DType::F32)? };
        let pooled = pool(&hidden, &input.attention_mask, self.settings.pooling)?;
        Ok(if self.settings.normalize { l2_normalize(&pooled)? } else { pooled })
    }

    /// Embeds texts in batches of `batch_size`, without dropout: `(texts.len(), hidden)` f32.
    pub fn embed(&self, texts: &[&str], role: TextRole, batch_size: usize) -> Result<Tensor> {
        let mut parts = Vec::new();
        for chunk in texts.chunks(batch_size.max(1)) {
            let input = self.tokenize(chunk, role)?;
            // Detached: with trainable adapters attached (hard negatives mined again mid-run), each
            // part would otherwise keep its whole graph of activations alive until the end.
            parts.push(self.forward(&input, Mode::Inference)?.to_dtype(DType::F32)?.detach());
        }
        if parts.is_empty() {
            return Ok(Tensor::zeros((0, self.hidden_size), DType::F32, self.model.device())?);
        }
        Ok(Tensor::cat(&parts, 0)?)
    }
}

/// Pools `(batch, seq, hidden)` states into `(batch, hidden)` using the `(batch, seq)` mask.
pub fn pool(hidden: &Tensor, attention_mask: &Tensor, pooling: Pooling) -> candle_core::Result<Tensor> {
    match pooling {
        Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1),
        Pooling::Mean => {
            let mask = attention_mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
            let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
            summed.broadcast_div(&counts)
        }
    }
}

/// Scales each row to unit Euclidean length (rows of zeros stay zero).
pub fn l2_normalize(xs: &Tensor) -> candle_core::Result<Tensor> {
    let norms = xs.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    xs.broadcast_div(&norms)
}

fn weights(dir: &Path, device: &Device, dtype: DType) -> Result<VarBuilder<'static>> {
    let safetensors = dir.join("model.safetensors");
    if safetensors.is_file() {
        let tensors = candle_core::safetensors::load(&safetensors, device)?;
        return Ok(VarBuilder::from_tensors(tensors, dtype, device));
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.is_file() {
        return Ok(VarBuilder::from_pth(&bin, dtype, device)?);
    }
    Err(ModelError::Unsupported(format!("{}: no model.safetensors or pytorch_model.bin", dir.display())))
}

/// Loads `tokenizer.json`, truncating to the retriever's maximum length and padding to the
/// longest text of each batch (whatever the file itself says).
fn load_tokenizer(path: &PathBuf, settings: &RetrieverSettings, pad_id: u32) -> Result<Tokenizer> {
    let mut tokenizer =
        Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer { path: path.clone(), message: e.to_string() })?;
    configure_tokenizer(&mut tokenizer, settings.max_length, pad_id)
        .map_err(|message| ModelError::Tokenizer { path: path.clone(), message })?;
    Ok(tokenizer)
}

/// Sets truncation to `max_length` and padding to each batch's longest text.
pub fn configure_tokenizer(tokenizer: &mut Tokenizer, max_length: usize, pad_id: u32) -> Result<(), String> {
    let pad_token = tokenizer.id_to_token(pad_id).unwrap_or_else(|| "[PAD]".to_owned());
    tokenizer
        .with_truncation(Some(TruncationParams { max_length, ..Default::default() }))
        .map_err(|e| e.to_string())?;
    tokenizer.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        pad_id,
        pad_token,
        ..Default::default()
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::model::bert::BertModel;
    use crate::model::layers::DropoutRng;
    use candle_core::{D, Var};
    use candle_nn::VarMap;

    use super::*;
    use crate::model::test_util::max_abs_diff;
    use crate::train::test_models::{WORDS, tiny_config, tiny_tokenizer};

    fn tiny_retriever(pooling: Pooling) -> (Retriever, VarMap) {
        let cfg = tiny_config();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = BertModel::load(vb, &cfg).unwrap();
        let mut tokenizer = tiny_tokenizer();
        configure_tokenizer(&mut tokenizer, cfg.max_position_embeddings, 0).unwrap();
        let settings = RetrieverSettings {
            pooling,
            normalize: true,
            max_length: cfg.max_position_embeddings,
            query_prefix: None,
            passage_prefix: None,
        };
        (Retriever::from_parts(model, tokenizer, settings, cfg.hidden_size), varmap)
    }

    #[test]
    fn a_text_alone_equals_the_same_text_in_a_padded_batch() {
        for pooling in [Pooling::Mean, Pooling::Cls] {
            let (retriever, _) = tiny_retriever(pooling);
            let texts = ["the cat sat on the mat .", "a dog", "what is the park ? the dogs ran in the park ."];
            let batch = retriever.embed(&texts, TextRole::Passage, 8).unwrap();
            assert_eq!(batch.dims(), &[3, 16]);
            for (i, text) in texts.iter().enumerate() {
                let alone = retriever.embed(&[text], TextRole::Passage, 1).unwrap();
                let diff = max_abs_diff(&alone.squeeze(0).unwrap(), &batch.get(i).unwrap());
                assert!(diff <= 1e-5, "{pooling:?} text {i}: {diff}");
            }
            let norms = batch.sqr().unwrap().sum(D::Minus1).unwrap().to_vec1::<f32>().unwrap();
            assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");
        }
    }

    #[test]
    fn every_parameter_receives_a_gradient() {
        let (retriever, varmap) = tiny_retriever(Pooling::Mean);
        let input = retriever.tokenize(&["the cat sat on the mat .", "a dog ran"], TextRole::Query).unwrap();
        let embeddings = retriever.forward(&input, Mode::Train(&DropoutRng::new(0))).unwrap();
        let weights = Tensor::randn(0f32, 1.0, embeddings.shape(), &Device::Cpu).unwrap();
        let loss = (embeddings * weights).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let vars: Vec<Var> = varmap.all_vars();
        assert_eq!(vars.len(), 3 + 2 + 2 * 16, "embeddings (3 tables + norm) and 16 tensors per layer");
        for var in &vars {
            let grad = grads.get(var).unwrap_or_else(|| panic!("no gradient for a {:?} parameter", var.shape()));
            let magnitude = grad.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(magnitude > 0.0, "zero gradient for a {:?} parameter", var.shape());
        }
    }

    #[test]
    fn dropout_is_real_in_training_and_off_in_inference() {
        let (retriever, _) = tiny_retriever(Pooling::Mean);
        let input = retriever.tokenize(&["the cat sat on the mat ."], TextRole::Passage).unwrap();
        let eval_a = retriever.forward(&input, Mode::Inference).unwrap();
        let eval_b = retriever.forward(&input, Mode::Inference).unwrap();
        assert_eq!(max_abs_diff(&eval_a, &eval_b), 0.0);
        let rng = DropoutRng::new(0);
        let train_a = retriever.forward(&input, Mode::Train(&rng)).unwrap();
        let train_b = retriever.forward(&input, Mode::Train(&rng)).unwrap();
        assert!(max_abs_diff(&train_a, &train_b) > 1e-4, "dropout changed nothing");
        assert!(max_abs_diff(&train_a, &eval_a) > 1e-4, "dropout changed nothing");
        // Seeded: the same seed draws the same masks (runs repeat and resume exactly).
        rng.reseed(0);
        let again = retriever.forward(&input, Mode::Train(&rng)).unwrap();
        assert_eq!(max_abs_diff(&train_a, &again), 0.0);
    }

    #[test]
    fn loads_a_folder_with_cls_pooling_prefixes_and_a_bert_prefix() {
        let cfg = tiny_config();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let original = BertModel::load(vb.pp("bert"), &cfg).unwrap();
        let dir = tempfile::tempdir().unwrap();
        varmap.save(dir.path().join("model.safetensors")).unwrap();
        fs::write(
            dir.path().join("config.json"),
            serde_json::to_string(&serde_json::json!({
                "model_type": "bert", "vocab_size": WORDS.len(), "hidden_size": 16, "num_hidden_layers": 2,
                "num_attention_heads": 4, "intermediate_size": 32, "max_position_embeddings": 32
            }))
            .unwrap(),
        )
        .unwrap();
        tiny_tokenizer().save(dir.path().join("tokenizer.json"), false).unwrap();
        fs::write(
            dir.path().join("modules.json"),
            r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
               {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#,
        )
        .unwrap();
        fs::create_dir_all(dir.path().join("1_Pooling")).unwrap();
        fs::write(
            dir.path().join("1_Pooling/config.json"),
            r#"{"pooling_mode_cls_token":true,"pooling_mode_mean_tokens":false}"#,
        )
        .unwrap();
        fs::write(dir.path().join("sentence_bert_config.json"), r#"{"max_seq_length":8}"#).unwrap();
        fs::write(dir.path().join("config_sentence_transformers.json"), r#"{"prompts":{"query":"what is "}}"#).unwrap();

        let loaded = Retriever::load(dir.path(), &Device::Cpu).unwrap();
        let settings = loaded.settings();
        assert_eq!(settings.pooling, Pooling::Cls);
        assert!(!settings.normalize, "no Normalize module listed");
        assert_eq!(settings.max_length, 8);
        assert_eq!(settings.query_prefix.as_deref(), Some("what is "));

        let query = loaded.tokenize(&["the cat"], TextRole::Query).unwrap();
        assert_eq!(query.input_ids.to_vec2::<u32>().unwrap(), vec![vec![2, 15, 16, 4, 5, 3]]);
        let long = loaded.tokenize(&["the cat sat on the mat on the mat"], TextRole::Passage).unwrap();
        assert_eq!(long.input_ids.dims(), &[1, 8], "truncated to max_seq_length");

        // Same weights, same states: the loaded encoder is the saved one.
        let input = loaded.tokenize(&["a dog ran in the park"], TextRole::Passage).unwrap();
        let expected = original.forward(&input, Mode::Inference).unwrap();
        let actual = loaded.model().forward(&input, Mode::Inference).unwrap();
        // Random (variable) weights take the differentiable kernels, loaded ones the fused: same math.
        assert!(max_abs_diff(&expected, &actual) < 1e-5);
    }
}
