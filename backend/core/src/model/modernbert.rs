//! A ModernBERT encoder (rotary positions, pre-norm layers without biases, a gated GELU MLP, and
//! global attention every `global_attn_every_n_layers` layers with a sliding window between),
//! written from differentiable ops like `bert.rs`. Tensor names (`vb.pp`) equal Hugging Face's.

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

use super::bert::EncoderInput;
use super::layers::{Dropout, LayerNorm, Mode, Rotary, rope_frequencies, softmax_last_dim};
use super::linear::Linear;
use super::lora::HasLinears;

/// One rotary setting of transformers 5's `rope_parameters` (per layer type).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RopeTheta {
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RopeByLayerType {
    pub full_attention: Option<RopeTheta>,
    pub sliding_attention: Option<RopeTheta>,
}

/// `config.json` of a ModernBERT model; fields not listed are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub norm_bias: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_local_attention")]
    pub local_attention: usize,
    #[serde(default = "default_global_every")]
    pub global_attn_every_n_layers: usize,
    /// Older configs: the two thetas at the top level.
    #[serde(default = "default_global_theta")]
    pub global_rope_theta: f64,
    #[serde(default = "default_local_theta")]
    pub local_rope_theta: f64,
    /// transformers 5: `{"full_attention": {...}, "sliding_attention": {...}}`.
    #[serde(default)]
    pub rope_parameters: Option<RopeByLayerType>,
    #[serde(default = "default_activation")]
    pub hidden_activation: String,
    #[serde(default)]
    pub embedding_dropout: f32,
    #[serde(default)]
    pub attention_dropout: f32,
    #[serde(default)]
    pub mlp_dropout: f32,
    #[serde(default)]
    pub pad_token_id: u32,
}

fn default_norm_eps() -> f64 {
    1e-5
}
fn default_local_attention() -> usize {
    128
}
fn default_global_every() -> usize {
    3
}
fn default_global_theta() -> f64 {
    160_000.0
}
fn default_local_theta() -> f64 {
    10_000.0
}
fn default_activation() -> String {
    "gelu".into()
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.global_attn_every_n_layers == 0 {
            return Err("global_attn_every_n_layers must be at least 1".into());
        }
        if !matches!(self.hidden_activation.as_str(), "gelu" | "gelu_python") {
            return Err(format!("hidden_activation {:?} (only gelu is supported)", self.hidden_activation));
        }
        let rope_types = self.rope_parameters.iter().flat_map(|r| [&r.full_attention, &r.sliding_attention]);
        if let Some(kind) = rope_types.flatten().filter_map(|r| r.rope_type.as_deref()).find(|t| *t != "default") {
            return Err(format!("rope_type {kind:?} (only default)"));
        }
        Ok(())
    }

    /// Whether layer `i` attends globally (the others see a window).
    fn is_global(&self, layer: usize) -> bool {
        layer.is_multiple_of(self.global_attn_every_n_layers)
    }

    fn theta(&self, global: bool) -> f64 {
        let from_parameters = self.rope_parameters.as_ref().and_then(|r| {
            if global { r.full_attention.as_ref() } else { r.sliding_attention.as_ref() }.map(|t| t.rope_theta)
        });
        from_parameters.unwrap_or(if global { self.global_rope_theta } else { self.local_rope_theta })
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

fn layer_norm(vb: VarBuilder<'_>, cfg: &Config) -> candle_core::Result<LayerNorm> {
    if cfg.norm_bias {
        LayerNorm::load(vb, cfg.hidden_size, cfg.norm_eps)
    } else {
        LayerNorm::load_without_bias(vb, cfg.hidden_size, cfg.norm_eps)
    }
}

struct Attention {
    wqkv: Linear,
    wo: Linear,
    num_heads: usize,
    head_dim: usize,
    dropout: Dropout,
}

impl Attention {
    fn load(vb: VarBuilder<'_>, cfg: &Config) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        Ok(Attention {
            wqkv: Linear::load(vb.pp("Wqkv"), h, 3 * h, cfg.attention_bias)?,
            wo: Linear::load(vb.pp("Wo"), h, h, cfg.attention_bias)?,
            num_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            dropout: Dropout::new(cfg.attention_dropout),
        })
    }

    fn forward(&self, xs: &Tensor, rotary: &Rotary, mask_bias: &Tensor, mode: Mode<'_>) -> candle_core::Result<Tensor> {
        let (batch, seq_len, hidden) = xs.dims3()?;
        // (batch, seq, 3, heads, head_dim): q, k, v.
        let qkv = self.wqkv.forward_t(xs, mode)?.reshape((batch, seq_len, 3, self.num_heads, self.head_dim))?;
        let part = |i: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous()
        };
        let (q, k, v) = (rotary.apply(&part(0)?, 0)?, rotary.apply(&part(1)?, 0)?, part(2)?);
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask_bias)?;
        let probs = self.dropout.forward(&softmax_last_dim(&scores)?, mode)?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((batch, seq_len, hidden))?;
        self.wo.forward_t(&out, mode)
    }
}

struct Mlp {
    wi: Linear,
    wo: Linear,
    intermediate: usize,
    dropout: Dropout,
}

impl Mlp {
    fn load(vb: VarBuilder<'_>, cfg: &Config) -> candle_core::Result<Self> {
        Ok(Mlp {
            wi: Linear::load(vb.pp("Wi"), cfg.hidden_size, 2 * cfg.intermediate_size, cfg.mlp_bias)?,
            wo: Linear::load(vb.pp("Wo"), cfg.intermediate_size, cfg.hidden_size, cfg.mlp_bias)?,
            intermediate: cfg.intermediate_size,
            dropout: Dropout::new(cfg.mlp_dropout),
        })
    }

    /// `Wo(gelu(input) · gate)` with `input, gate = Wi(x)` split in two.
    fn forward(&self, xs: &Tensor, mode: Mode<'_>) -> candle_core::Result<Tensor> {
        let both = self.wi.forward_t(xs, mode)?;
        let input = both.narrow(D::Minus1, 0, self.intermediate)?;
        let gate = both.narrow(D::Minus1, self.intermediate, self.intermediate)?;
        let gated = (super::ops::gelu_erf(&input.contiguous()?)? * gate)?;
        self.wo.forward_t(&self.dropout.forward(&gated, mode)?, mode)
    }
}

struct Layer {
    /// Layer 0 has none (the embeddings' norm comes just before it).
    attn_norm: Option<LayerNorm>,
    attn: Attention,
    mlp_norm: LayerNorm,
    mlp: Mlp,
    global: bool,
}

impl Layer {
    fn load(vb: VarBuilder<'_>, cfg: &Config, index: usize) -> candle_core::Result<Self> {
        Ok(Layer {
            attn_norm: if index == 0 { None } else { Some(layer_norm(vb.pp("attn_norm"), cfg)?) },
            attn: Attention::load(vb.pp("attn"), cfg)?,
            mlp_norm: layer_norm(vb.pp("mlp_norm"), cfg)?,
            mlp: Mlp::load(vb.pp("mlp"), cfg)?,
            global: cfg.is_global(index),
        })
    }
}

impl HasLinears for ModernBertModel {
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            out.push((format!("layers.{i}.attn.Wqkv"), &mut layer.attn.wqkv));
            out.push((format!("layers.{i}.attn.Wo"), &mut layer.attn.wo));
            out.push((format!("layers.{i}.mlp.Wi"), &mut layer.mlp.wi));
            out.push((format!("layers.{i}.mlp.Wo"), &mut layer.mlp.wo));
        }
        out
    }
}

/// The ModernBERT encoder: embeddings and their norm, the layers, the final norm.
pub struct ModernBertModel {
    tok_embeddings: Embedding,
    embeddings_norm: LayerNorm,
    embedding_dropout: Dropout,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    global_rotary: Rotary,
    local_rotary: Rotary,
    /// Each side of a sliding-window layer's window (`local_attention / 2`).
    half_window: usize,
    device: Device,
}

impl ModernBertModel {
    pub fn load(vb: VarBuilder<'_>, cfg: &Config) -> candle_core::Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let device = vb.device().clone();
        let rotary = |theta: f64| {
            let frequencies = rope_frequencies(theta, cfg.head_dim()).into_iter().map(|f| f as f32).collect();
            Rotary::new(frequencies, cfg.max_position_embeddings, &device)
        };
        Ok(ModernBertModel {
            tok_embeddings: candle_nn::embedding(
                cfg.vocab_size,
                cfg.hidden_size,
                vb.pp("embeddings").pp("tok_embeddings"),
            )?,
            embeddings_norm: layer_norm(vb.pp("embeddings").pp("norm"), cfg)?,
            embedding_dropout: Dropout::new(cfg.embedding_dropout),
            layers: (0..cfg.num_hidden_layers)
                .map(|i| Layer::load(vb.pp("layers").pp(i), cfg, i))
                .collect::<candle_core::Result<Vec<_>>>()?,
            final_norm: layer_norm(vb.pp("final_norm"), cfg)?,
            global_rotary: rotary(cfg.theta(true))?,
            local_rotary: rotary(cfg.theta(false))?,
            half_window: cfg.local_attention / 2,
            device,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Last hidden states, `(batch, seq, hidden)`.
    pub fn forward(&self, input: &EncoderInput, mode: Mode<'_>) -> candle_core::Result<Tensor> {
        let embedded = self.embeddings_norm.forward(&self.tok_embeddings.forward(&input.input_ids)?)?;
        let mut hidden = self.embedding_dropout.forward(&embedded, mode)?;
        let (_, seq_len) = input.input_ids.dims2()?;
        let padding = ((input.attention_mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?.unsqueeze(1)?.unsqueeze(1)?;
        let global_mask = padding.to_dtype(hidden.dtype())?;
        let far: Vec<f32> = (0..seq_len)
            .flat_map(|i| (0..seq_len).map(move |j| if i.abs_diff(j) > self.half_window { -1e9 } else { 0.0 }))
            .collect();
        let far = Tensor::from_vec(far, (1, 1, seq_len, seq_len), &self.device)?;
        let local_mask = padding.broadcast_add(&far)?.to_dtype(hidden.dtype())?;
        for layer in &self.layers {
            let (rotary, mask) =
                if layer.global { (&self.global_rotary, &global_mask) } else { (&self.local_rotary, &local_mask) };
            let normed = match &layer.attn_norm {
                Some(norm) => norm.forward(&hidden)?,
                None => hidden.clone(),
            };
            hidden = (&hidden + layer.attn.forward(&normed, rotary, mask, mode)?)?;
            hidden = (&hidden + layer.mlp.forward(&layer.mlp_norm.forward(&hidden)?, mode)?)?;
        }
        self.final_norm.forward(&hidden)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Var;
    use candle_nn::VarMap;

    use super::*;

    fn tiny_config() -> Config {
        serde_json::from_value(serde_json::json!({
            "vocab_size": 40, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 3,
            "num_attention_heads": 4, "max_position_embeddings": 32, "local_attention": 2,
            "global_attn_every_n_layers": 2
        }))
        .unwrap()
    }

    fn input(ids: &[[u32; 6]; 2], mask: &[[f32; 6]; 2]) -> EncoderInput {
        let cpu = Device::Cpu;
        EncoderInput {
            input_ids: Tensor::new(ids, &cpu).unwrap(),
            token_type_ids: Tensor::zeros((2, 6), DType::U32, &cpu).unwrap(),
            attention_mask: Tensor::new(mask, &cpu).unwrap(),
        }
    }

    #[test]
    fn every_parameter_receives_a_gradient_and_padding_is_invisible() {
        let varmap = VarMap::new();
        let model =
            ModernBertModel::load(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu), &tiny_config()).unwrap();
        let full = [[1.0f32; 6]; 2];
        let hidden =
            model.forward(&input(&[[3, 7, 9, 11, 2, 5], [4, 8, 12, 16, 20, 24]], &full), Mode::Inference).unwrap();
        let grads = hidden.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let vars: Vec<Var> = varmap.all_vars();
        // Embeddings and their norm, the final norm; per layer Wqkv, Wo, Wi, Wo, mlp_norm (+ attn_norm after layer 0).
        assert_eq!(vars.len(), 3 + 3 * 5 + 2);
        for var in &vars {
            let grad = grads.get(var).unwrap_or_else(|| panic!("no gradient for a {:?} parameter", var.shape()));
            assert!(grad.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
        }
        // Right padding changes nothing at the real positions.
        let short = model
            .forward(
                &input(&[[3, 7, 9, 0, 0, 0], [4, 8, 12, 16, 20, 24]], &[[1., 1., 1., 0., 0., 0.], [1.0; 6]]),
                Mode::Inference,
            )
            .unwrap();
        let alone = {
            let cpu = Device::Cpu;
            let one = EncoderInput {
                input_ids: Tensor::new(&[[3u32, 7, 9]], &cpu).unwrap(),
                token_type_ids: Tensor::zeros((1, 3), DType::U32, &cpu).unwrap(),
                attention_mask: Tensor::new(&[[1f32, 1., 1.]], &cpu).unwrap(),
            };
            model.forward(&one, Mode::Inference).unwrap()
        };
        let padded = short.narrow(0, 0, 1).unwrap().narrow(1, 0, 3).unwrap();
        let diff = (padded - alone).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "padding changed the real positions by {diff}");
    }
}
