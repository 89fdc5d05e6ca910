//! The retriever's encoder, of whichever family its `config.json` names: BERT, RoBERTa and
//! XLM-RoBERTa (`bert.rs`), or ModernBERT (`modernbert.rs`).

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use super::bert::{self, BertModel, EncoderInput};
use super::layers::Mode;
use super::linear::Linear;
use super::lora::HasLinears;
use super::modernbert::{self, ModernBertModel};

/// `model_type` values of the encoders Attune loads.
pub const MODEL_TYPES: [&str; 4] = ["bert", "roberta", "xlm-roberta", "modernbert"];

/// An encoder's `config.json`, by family.
#[derive(Debug, Clone, PartialEq)]
pub enum EncoderConfig {
    Bert(bert::Config),
    ModernBert(modernbert::Config),
}

impl EncoderConfig {
    /// Parses and checks a `config.json` (a missing `model_type` is BERT).
    pub fn from_json(text: &str) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let model_type = value.get("model_type").and_then(|t| t.as_str()).unwrap_or("bert").to_owned();
        let config = match model_type.as_str() {
            "modernbert" => EncoderConfig::ModernBert(serde_json::from_value(value).map_err(|e| e.to_string())?),
            "bert" | "roberta" | "xlm-roberta" => {
                EncoderConfig::Bert(serde_json::from_value(value).map_err(|e| e.to_string())?)
            }
            other => return Err(format!("encoder model_type {other:?} (supported: {})", MODEL_TYPES.join(", "))),
        };
        match &config {
            EncoderConfig::Bert(cfg) => cfg.validate()?,
            EncoderConfig::ModernBert(cfg) => cfg.validate()?,
        }
        Ok(config)
    }

    pub fn hidden_size(&self) -> usize {
        match self {
            EncoderConfig::Bert(cfg) => cfg.hidden_size,
            EncoderConfig::ModernBert(cfg) => cfg.hidden_size,
        }
    }

    /// The longest input, in tokens.
    pub fn max_length(&self) -> usize {
        match self {
            EncoderConfig::Bert(cfg) => cfg.max_length(),
            EncoderConfig::ModernBert(cfg) => cfg.max_position_embeddings,
        }
    }

    pub fn pad_token_id(&self) -> u32 {
        match self {
            EncoderConfig::Bert(cfg) => cfg.pad_token_id,
            EncoderConfig::ModernBert(cfg) => cfg.pad_token_id,
        }
    }

    /// Where a task model's checkpoint (`…ForMaskedLM` and the like) keeps the encoder, probed
    /// by its first tensor's name.
    pub fn task_prefix(&self) -> (&'static str, &'static str) {
        match self {
            EncoderConfig::Bert(cfg) if cfg.positions_from_padding() => {
                ("roberta", "embeddings.word_embeddings.weight")
            }
            EncoderConfig::Bert(_) => ("bert", "embeddings.word_embeddings.weight"),
            EncoderConfig::ModernBert(_) => ("model", "embeddings.tok_embeddings.weight"),
        }
    }
}

/// A loaded encoder.
pub enum Encoder {
    Bert(BertModel),
    ModernBert(ModernBertModel),
}

impl Encoder {
    /// Loads from `vb` rooted where the encoder's tensors start.
    pub fn load(vb: VarBuilder<'_>, cfg: &EncoderConfig) -> candle_core::Result<Self> {
        Ok(match cfg {
            EncoderConfig::Bert(cfg) => Encoder::Bert(BertModel::load(vb, cfg)?),
            EncoderConfig::ModernBert(cfg) => Encoder::ModernBert(ModernBertModel::load(vb, cfg)?),
        })
    }

    pub fn device(&self) -> &Device {
        match self {
            Encoder::Bert(model) => model.device(),
            Encoder::ModernBert(model) => model.device(),
        }
    }

    /// Last hidden states, `(batch, seq, hidden)`.
    pub fn forward(&self, input: &EncoderInput, mode: Mode<'_>) -> candle_core::Result<Tensor> {
        match self {
            Encoder::Bert(model) => model.forward(input, mode),
            Encoder::ModernBert(model) => model.forward(input, mode),
        }
    }
}

impl From<BertModel> for Encoder {
    fn from(model: BertModel) -> Self {
        Encoder::Bert(model)
    }
}

impl HasLinears for Encoder {
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        match self {
            Encoder::Bert(model) => model.linears_mut(),
            Encoder::ModernBert(model) => model.linears_mut(),
        }
    }
}
