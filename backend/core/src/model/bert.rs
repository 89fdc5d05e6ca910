//! A BERT encoder (the retriever's backbone) written from differentiable ops, so it can be
//! fine-tuned: every parameter receives a gradient, and dropout is real in training mode. The
//! same encoder is RoBERTa and XLM-RoBERTa (multilingual-e5, bge-m3), whose positions count from
//! the padding index. Tensor names (`vb.pp`) equal Hugging Face checkpoint names.

use candle_core::{Device, Module, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

use super::attention::{AttentionMask, attention};
use super::layers::{Dropout, LayerNorm, Mode};
use super::linear::Linear;
use super::lora::HasLinears;

/// The activation in BERT's feed-forward block (`hidden_act` in `config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum HiddenAct {
    /// Exact GELU (with the error function), BERT's default.
    #[serde(rename = "gelu")]
    Gelu,
    /// GELU with the tanh approximation.
    #[serde(alias = "gelu_new", alias = "gelu_pytorch_tanh", rename = "gelu_approximate")]
    GeluApproximate,
    #[serde(rename = "relu")]
    Relu,
}

/// `config.json` of a BERT-architecture model; fields not listed are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Config {
    /// `bert` (the default), `roberta` or `xlm-roberta`.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: HiddenAct,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f32,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f32,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_model_type() -> String {
    "bert".into()
}
fn default_hidden_act() -> HiddenAct {
    HiddenAct::Gelu
}
fn default_type_vocab_size() -> usize {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_dropout() -> f32 {
    0.1
}

impl Config {
    /// RoBERTa's positions: real tokens count up from `pad_token_id + 1`, padding sits at
    /// `pad_token_id` (transformers' `create_position_ids_from_input_ids`).
    pub fn positions_from_padding(&self) -> bool {
        matches!(self.model_type.as_str(), "roberta" | "xlm-roberta")
    }

    /// The longest input: RoBERTa's first `pad_token_id + 1` positions are never used.
    pub fn max_length(&self) -> usize {
        if self.positions_from_padding() {
            self.max_position_embeddings.saturating_sub(self.pad_token_id as usize + 1)
        } else {
            self.max_position_embeddings
        }
    }

    /// Checks what this encoder supports.
    pub fn validate(&self) -> Result<(), String> {
        if !matches!(self.model_type.as_str(), "bert" | "roberta" | "xlm-roberta") {
            return Err(format!("model_type {:?} is not a BERT-family encoder", self.model_type));
        }
        if let Some(kind) = &self.position_embedding_type
            && kind != "absolute"
        {
            return Err(format!("position_embedding_type {kind:?} (only \"absolute\" is supported)"));
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }
}

/// Token ids of a batch, padded to one length, with their attention mask.
#[derive(Debug, Clone)]
pub struct EncoderInput {
    /// `(batch, seq)` u32 token ids.
    pub input_ids: Tensor,
    /// `(batch, seq)` u32 segment ids.
    pub token_type_ids: Tensor,
    /// `(batch, seq)` f32: 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor,
}

struct BertEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
    dropout: Dropout,
    /// RoBERTa: the padding index positions count from.
    padding_index: Option<u32>,
}

impl BertEmbeddings {
    fn load(vb: VarBuilder<'_>, cfg: &Config) -> candle_core::Result<Self> {
        Ok(BertEmbeddings {
            word_embeddings: candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("word_embeddings"))?,
            position_embeddings: candle_nn::embedding(
                cfg.max_position_embeddings,
                cfg.hidden_size,
                vb.pp("position_embeddings"),
            )?,
            token_type_embeddings: candle_nn::embedding(
                cfg.type_vocab_size,
                cfg.hidden_size,
                vb.pp("token_type_embeddings"),
            )?,
            layer_norm: LayerNorm::load(vb.pp("LayerNorm"), cfg.hidden_size, cfg.layer_norm_eps)?,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
            padding_index: cfg.positions_from_padding().then_some(cfg.pad_token_id),
        })
    }

    fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor, mode: Mode<'_>) -> candle_core::Result<Tensor> {
        let (batch, seq_len) = input_ids.dims2()?;
        let positions = match self.padding_index {
            None => Tensor::arange(0u32, seq_len as u32, input_ids.device())?,
            Some(pad) => {
                let rows = input_ids.to_vec2::<u32>()?;
                let positions: Vec<u32> = rows
                    .iter()
                    .flat_map(|row| {
                        let mut seen = 0;
                        row.iter().map(move |&id| {
                            if id == pad {
                                pad
                            } else {
                                seen += 1;
                                pad + seen
                            }
                        })
                    })
                    .collect();
                Tensor::from_vec(positions, (batch, seq_len), input_ids.device())?
            }
        };
        let words = self.word_embeddings.forward(input_ids)?;
        let types = self.token_type_embeddings.forward(token_type_ids)?;
        let positions = self.position_embeddings.forward(&positions)?;
        let embeddings = (words + types)?.broadcast_add(&positions)?;
        self.dropout.forward(&self.layer_norm.forward(&embeddings)?, mode)
    }
}

struct BertSelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    num_heads: usize,
    head_dim: usize,
    /// Attention dropout, applied inside the fused attention kernel.
    dropout_probability: f32,
}

impl BertSelfAttention {
    fn load(vb: VarBuilder<'_>, cfg: &Config) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        Ok(BertSelfAttention {
            query: Linear::load(vb.pp("query"), h, h, true)?,
            key: Linear::load(vb.pp("key"), h, h, true)?,
            value: Linear::load(vb.pp("value"), h, h, true)?,
            num_heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
            dropout_probability: cfg.attention_probs_dropout_prob,
        })
    }

    /// `mask`: which keys are padding.
    fn forward(&self, xs: &Tensor, mask: &AttentionMask, mode: Mode<'_>) -> candle_core::Result<Tensor> {
        let (batch, seq_len, hidden) = xs.dims3()?;
        let split_heads = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((batch, seq_len, self.num_heads, self.head_dim))?.transpose(1, 2)?.contiguous()
        };
        let q = split_heads(self.query.forward_t(xs, mode)?)?;
        let k = split_heads(self.key.forward_t(xs, mode)?)?;
        let v = split_heads(self.value.forward_t(xs, mode)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let attended = attention(&q, &k, &v, scale, mask, self.dropout_probability, mode)?;
        attended.transpose(1, 2)?.reshape((batch, seq_len, hidden))
    }
}

/// A dense layer, dropout, then layer norm over the residual sum (BERT's "output" blocks).
struct DenseResidualNorm {
    dense: Linear,
    layer_norm: LayerNorm,
    dropout: Dropout,
}

impl DenseResidualNorm {
    fn load(vb: VarBuilder<'_>, cfg: &Config, in_dim: usize) -> candle_core::Result<Self> {
        Ok(DenseResidualNorm {
            dense: Linear::load(vb.pp("dense"), in_dim, cfg.hidden_size, true)?,
            layer_norm: LayerNorm::load(vb.pp("LayerNorm"), cfg.hidden_size, cfg.layer_norm_eps)?,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
        })
    }

    fn forward(&self, xs: &Tensor, residual: &Tensor, mode: Mode<'_>) -> candle_core::Result<Tensor> {
        let projected = self.dropout.forward(&self.dense.forward_t(xs, mode)?, mode)?;
        self.layer_norm.forward(&(projected + residual)?)
    }
}

struct BertLayer {
    attention: BertSelfAttention,
    attention_output: DenseResidualNorm,
    intermediate: Linear,
    activation: HiddenAct,
    output: DenseResidualNorm,
}

impl BertLayer {
    fn load(vb: VarBuilder<'_>, cfg: &Config) -> candle_core::Result<Self> {
        Ok(BertLayer {
            attention: BertSelfAttention::load(vb.pp("attention").pp("self"), cfg)?,
            attention_output: DenseResidualNorm::load(vb.pp("attention").pp("output"), cfg, cfg.hidden_size)?,
            intermediate: Linear::load(
                vb.pp("intermediate").pp("dense"),
                cfg.hidden_size,
                cfg.intermediate_size,
                true,
            )?,
            activation: cfg.hidden_act,
            output: DenseResidualNorm::load(vb.pp("output"), cfg, cfg.intermediate_size)?,
        })
    }

    fn forward(&self, xs: &Tensor, mask: &AttentionMask, mode: Mode<'_>) -> candle_core::Result<Tensor> {
        let attended = self.attention.forward(xs, mask, mode)?;
        let attended = self.attention_output.forward(&attended, xs, mode)?;
        let intermediate = self.intermediate.forward_t(&attended, mode)?;
        let intermediate = match self.activation {
            HiddenAct::Gelu => super::ops::gelu_erf(&intermediate)?,
            HiddenAct::GeluApproximate => intermediate.gelu()?,
            HiddenAct::Relu => intermediate.relu()?,
        };
        self.output.forward(&intermediate, &attended, mode)
    }
}

impl HasLinears for BertModel {
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("encoder.layer.{i}");
            out.push((format!("{p}.attention.self.query"), &mut layer.attention.query));
            out.push((format!("{p}.attention.self.key"), &mut layer.attention.key));
            out.push((format!("{p}.attention.self.value"), &mut layer.attention.value));
            out.push((format!("{p}.attention.output.dense"), &mut layer.attention_output.dense));
            out.push((format!("{p}.intermediate.dense"), &mut layer.intermediate));
            out.push((format!("{p}.output.dense"), &mut layer.output.dense));
        }
        out
    }
}

/// The BERT encoder: embeddings, then `num_hidden_layers` transformer layers. (The pooler is
/// not loaded: retrievers pool the hidden states themselves.)
pub struct BertModel {
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
    device: Device,
}

impl BertModel {
    /// Loads from `vb` rooted at the checkpoint's BERT prefix (`""` or `"bert"`).
    pub fn load(vb: VarBuilder<'_>, cfg: &Config) -> candle_core::Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let embeddings = BertEmbeddings::load(vb.pp("embeddings"), cfg)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| BertLayer::load(vb.pp("encoder").pp("layer").pp(i), cfg))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(BertModel { embeddings, layers, device: vb.device().clone() })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Last hidden states, `(batch, seq, hidden)`. `train` turns dropout on.
    pub fn forward(&self, input: &EncoderInput, mode: Mode<'_>) -> candle_core::Result<Tensor> {
        let mut hidden = self.embeddings.forward(&input.input_ids, &input.token_type_ids, mode)?;
        let mask = AttentionMask::padding(Some(AttentionMask::key_visible_from(&input.attention_mask)?));
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &mask, mode)?;
        }
        Ok(hidden)
    }
}
