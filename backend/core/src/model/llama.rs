//! The decoder of every generator family Attune loads, written from differentiable ops: Llama
//! (2, 3.x with `llama3` rope scaling; SmolLM/SmolLM2, TinyLlama), Mistral (sliding-window
//! attention), Qwen2/Qwen2.5 (q/k/v biases) and Qwen3 (per-head q/k RMS norms, explicit head size).
//! RMSNorm, rotary position embeddings, grouped-query attention, SwiGLU, optionally tied
//! embeddings. Tensor names are Hugging Face's; GGUF files are renamed (and, for llama.cpp's
//! `llama` architecture, its q/k row permutation undone) on load so one forward serves both.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{Embedding, VarBuilder};
use serde::{Deserialize, Serialize};

use super::attention::{AttentionMask, attention};
use super::error::{ModelError, Result};
use super::layers::{DropoutRng, Mode, Positions, Rotary, rope_frequencies};
use super::linear::Linear;
use super::lora::HasLinears;
use super::random::{RandomWeights, WeightSource};

/// The architectures [`Llama`] implements, from `config.json`'s `model_type` (or GGUF's
/// `general.architecture`). Each differs from Llama only where its method says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Family {
    /// `model_type` values and the family each means (GGUF's architecture names are the same).
    const MODEL_TYPES: [(&'static str, Family); 4] =
        [("llama", Family::Llama), ("mistral", Family::Mistral), ("qwen2", Family::Qwen2), ("qwen3", Family::Qwen3)];

    pub fn of(model_type: &str) -> Option<Family> {
        Self::MODEL_TYPES.iter().find(|(name, _)| *name == model_type).map(|(_, family)| *family)
    }

    /// The family of a GGUF `general.architecture`: llama.cpp writes Mistral models as `llama`
    /// (without their window), so `mistral` is not one of its names.
    pub fn of_gguf(architecture: &str) -> Option<Family> {
        Self::of(architecture).filter(|family| *family != Family::Mistral)
    }

    pub fn model_type(self) -> &'static str {
        Self::MODEL_TYPES.iter().find(|(_, family)| *family == self).map_or("llama", |(name, _)| name)
    }

    /// Hugging Face's class name for `architectures`.
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
        }
    }
}

/// One token id or several (Llama 3.1 lists three end-of-turn ids).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

/// Rotary settings: transformers 5's `rope_parameters` or the older `rope_scaling` (whose
/// `type` is the older name of `rope_type`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct RopeParameters {
    #[serde(default, alias = "type", skip_serializing_if = "Option::is_none")]
    pub rope_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
}

/// `config.json` of a model of one of the [`Family`]s (or the same, read from GGUF metadata).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Config {
    /// `llama` when absent (older folders and Attune's own test configs leave it out).
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head size when it is not `hidden_size / num_attention_heads` (Qwen3, some Mistrals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeParameters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<RopeParameters>,
    /// Llama's biases on the four attention projections (Qwen2 has q/k/v biases whatever this says).
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    /// Mistral: a position attends to the last `sliding_window` positions only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Qwen's switch for its sliding window (off in every released Qwen2/2.5/3 model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    /// llama.cpp's `rope_freqs.weight` (a GGUF of a Llama 3.1+ model): each frequency's divisor,
    /// which stands for the `llama3` scaling settings GGUF metadata does not carry.
    #[serde(skip)]
    pub rope_freq_factors: Option<Vec<f32>>,
}

fn default_model_type() -> String {
    "llama".to_owned()
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_position_embeddings() -> usize {
    2048
}

impl Config {
    /// What this decoder cannot run, said before any weight is read.
    pub fn validate(&self) -> Result<()> {
        let unsupported = |what: String| Err(ModelError::Unsupported(what));
        let Some(family) = Family::of(&self.model_type) else {
            let known: Vec<&str> = Family::MODEL_TYPES.iter().map(|(name, _)| *name).collect();
            return unsupported(format!(
                "generator model_type {:?} (supported: {})",
                self.model_type,
                known.join(", ")
            ));
        };
        if matches!(family, Family::Qwen2 | Family::Qwen3) && self.use_sliding_window == Some(true) {
            return unsupported(format!("{} with use_sliding_window", self.model_type));
        }
        if self.num_attention_heads == 0 || !self.num_attention_heads.is_multiple_of(self.num_kv_heads().max(1)) {
            return unsupported(format!(
                "{} attention heads over {} key/value heads",
                self.num_attention_heads,
                self.num_kv_heads()
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return unsupported(format!("odd head size {}", self.head_dim()));
        }
        let rope = self.rope();
        match rope.rope_type.as_deref() {
            None | Some("default") | Some("linear") => {}
            Some("llama3") => {
                if rope.factor.is_none()
                    || rope.low_freq_factor.is_none()
                    || rope.high_freq_factor.is_none()
                    || rope.original_max_position_embeddings.is_none()
                {
                    return unsupported("llama3 rope scaling without all four of its settings".to_owned());
                }
            }
            Some(other) => return unsupported(format!("rope scaling {other:?} (supported: default, linear, llama3)")),
        }
        Ok(())
    }

    pub fn family(&self) -> Family {
        Family::of(&self.model_type).unwrap_or(Family::Llama)
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The rotary settings in force: `rope_parameters`, else `rope_scaling`, with the theta filled in.
    pub fn rope(&self) -> RopeParameters {
        let mut rope = self.rope_parameters.clone().or_else(|| self.rope_scaling.clone()).unwrap_or_default();
        rope.rope_theta = Some(rope.rope_theta.unwrap_or(self.rope_theta));
        rope
    }

    /// Biases on q, k, v (and o).
    fn qkv_bias(&self) -> bool {
        self.family() == Family::Qwen2 || self.attention_bias
    }

    /// The attention window, where the family has one.
    pub fn window(&self) -> Option<usize> {
        match self.family() {
            Family::Mistral => self.sliding_window,
            _ => None,
        }
    }

    /// Every end-of-sequence id the config names.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            None => Vec::new(),
            Some(TokenIds::One(id)) => vec![*id],
            Some(TokenIds::Many(ids)) => ids.clone(),
        }
    }

    /// The hyper-parameters as GGUF metadata (`general.architecture` and `<architecture>.*`), the
    /// inverse of [`Config::from_gguf`] (Qwen and Llama; a sliding window has no GGUF form). Rope
    /// scaling is not metadata in GGUF but a `rope_freqs` tensor: [`rope_freq_divisors`].
    pub fn to_gguf(&self) -> Result<Vec<(String, gguf_file::Value)>> {
        use gguf_file::Value;
        if self.window().is_some() {
            return Err(ModelError::Unsupported("a sliding window cannot be written as GGUF".into()));
        }
        let architecture = match self.family() {
            Family::Mistral => "llama",
            family => family.model_type(),
        };
        let u32_of = |n: usize| Value::U32(n as u32);
        let key = |name: &str| format!("{architecture}.{name}");
        let metadata = vec![
            ("general.architecture".to_owned(), Value::String(architecture.to_owned())),
            (key("vocab_size"), u32_of(self.vocab_size)),
            (key("context_length"), u32_of(self.max_position_embeddings)),
            (key("embedding_length"), u32_of(self.hidden_size)),
            (key("block_count"), u32_of(self.num_hidden_layers)),
            (key("feed_forward_length"), u32_of(self.intermediate_size)),
            (key("attention.head_count"), u32_of(self.num_attention_heads)),
            (key("attention.head_count_kv"), u32_of(self.num_kv_heads())),
            (key("attention.layer_norm_rms_epsilon"), Value::F32(self.rms_norm_eps as f32)),
            (key("attention.key_length"), u32_of(self.head_dim())),
            (key("attention.value_length"), u32_of(self.head_dim())),
            (key("rope.dimension_count"), u32_of(self.head_dim())),
            (key("rope.freq_base"), Value::F32(self.rope().rope_theta.unwrap_or(self.rope_theta) as f32)),
        ];
        Ok(metadata)
    }

    /// Reads the hyper-parameters from a GGUF file's `<architecture>.*` metadata.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let get = |key: &str| {
            content.metadata.get(key).ok_or_else(|| ModelError::Unsupported(format!("GGUF metadata has no {key}")))
        };
        let architecture = get("general.architecture")?.to_string()?.clone();
        let Some(family) = Family::of_gguf(&architecture) else {
            return Err(ModelError::Unsupported(format!("GGUF architecture {architecture:?}")));
        };
        let key = |name: &str| format!("{architecture}.{name}");
        let usize_of = |name: &str| -> Result<usize> { Ok(get(&key(name))?.to_u32()? as usize) };
        let optional_usize =
            |name: &str| content.metadata.get(&key(name)).map(|v| v.to_u32().map(|n| n as usize)).transpose();
        let vocab_size = match optional_usize("vocab_size")? {
            Some(n) => n,
            None => get("tokenizer.ggml.tokens")?.to_vec()?.len(),
        };
        let optional_u32 = |key: &str| content.metadata.get(key).and_then(|v| v.to_u32().ok());
        let hidden_size = usize_of("embedding_length")?;
        let num_attention_heads = usize_of("attention.head_count")?;
        let head_dim =
            optional_usize("attention.key_length")?.filter(|d| *d != hidden_size / num_attention_heads.max(1));
        let cfg = Config {
            model_type: family.model_type().to_owned(),
            vocab_size,
            hidden_size,
            intermediate_size: usize_of("feed_forward_length")?,
            num_hidden_layers: usize_of("block_count")?,
            num_attention_heads,
            num_key_value_heads: optional_usize("attention.head_count_kv")?,
            head_dim,
            rms_norm_eps: f64::from(get(&key("attention.layer_norm_rms_epsilon"))?.to_f32()?),
            rope_theta: content
                .metadata
                .get(&key("rope.freq_base"))
                .map(|v| v.to_f32())
                .transpose()?
                .map_or(10_000.0, f64::from),
            rope_scaling: None,
            rope_parameters: None,
            attention_bias: false,
            mlp_bias: false,
            sliding_window: None,
            use_sliding_window: None,
            max_position_embeddings: usize_of("context_length")?,
            tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
            bos_token_id: optional_u32("tokenizer.ggml.bos_token_id"),
            eos_token_id: optional_u32("tokenizer.ggml.eos_token_id").map(TokenIds::One),
            rope_freq_factors: None,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Root-mean-square normalisation with a learned scale.
#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn load(vb: VarBuilder<'_>, size: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(RmsNorm { weight: vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?, eps })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        super::ops::rms_norm(xs, &self.weight, self.eps)
    }
}

/// The rotary frequency of each pair of dimensions, `θ^(-2i/d)`, scaled as the config says
/// (transformers' `_compute_default_rope_parameters`, `_compute_linear_scaling_rope_parameters`,
/// `_compute_llama3_parameters`; a GGUF's `rope_freqs` divisors stand in for the llama3 settings).
fn inverse_frequencies(cfg: &Config) -> Vec<f32> {
    let rope = cfg.rope();
    let dim = cfg.head_dim();
    let theta = rope.rope_theta.unwrap_or(cfg.rope_theta);
    let base = rope_frequencies(theta, dim);
    let scaled: Vec<f64> = match (rope.rope_type.as_deref(), &cfg.rope_freq_factors) {
        (_, Some(divisors)) => base.iter().zip(divisors).map(|(f, d)| f / f64::from(*d)).collect(),
        (Some("linear"), None) => base.iter().map(|f| f / rope.factor.unwrap_or(1.0)).collect(),
        (Some("llama3"), None) => {
            // Settings checked by `Config::validate`.
            let factor = rope.factor.unwrap_or(1.0);
            let (low, high) = (rope.low_freq_factor.unwrap_or(1.0), rope.high_freq_factor.unwrap_or(4.0));
            let old_context = rope.original_max_position_embeddings.unwrap_or(8192) as f64;
            let (low_wavelen, high_wavelen) = (old_context / low, old_context / high);
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old_context / wavelen - low) / (high - low);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
        _ => base,
    };
    scaled.into_iter().map(|f| f as f32).collect()
}

/// llama.cpp's `rope_freqs.weight` for this config: each frequency's divisor (1 without scaling).
pub fn rope_freq_divisors(cfg: &Config) -> Vec<f32> {
    let theta = cfg.rope().rope_theta.unwrap_or(cfg.rope_theta);
    let unscaled =
        Config { rope_theta: theta, rope_scaling: None, rope_parameters: None, rope_freq_factors: None, ..cfg.clone() };
    inverse_frequencies(&unscaled).iter().zip(inverse_frequencies(cfg)).map(|(base, scaled)| base / scaled).collect()
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Qwen3: RMS norms over each head's queries and keys, before the rotation.
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(vb: VarBuilder<'_>, cfg: &Config) -> candle_core::Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim());
        let qkv_bias = cfg.qkv_bias();
        let (q_norm, k_norm) = if cfg.family() == Family::Qwen3 {
            (
                Some(RmsNorm::load(vb.pp("q_norm"), d, cfg.rms_norm_eps)?),
                Some(RmsNorm::load(vb.pp("k_norm"), d, cfg.rms_norm_eps)?),
            )
        } else {
            (None, None)
        };
        Ok(Attention {
            q_proj: Linear::load(vb.pp("q_proj"), h, cfg.num_attention_heads * d, qkv_bias)?,
            k_proj: Linear::load(vb.pp("k_proj"), h, cfg.num_kv_heads() * d, qkv_bias)?,
            v_proj: Linear::load(vb.pp("v_proj"), h, cfg.num_kv_heads() * d, qkv_bias)?,
            o_proj: Linear::load(vb.pp("o_proj"), cfg.num_attention_heads * d, h, cfg.attention_bias)?,
            q_norm,
            k_norm,
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_kv_heads(),
            head_dim: d,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        rotary: &Rotary,
        positions: Positions<'_>,
        mask: &AttentionMask,
        cache: &mut Option<LayerCache>,
        mode: Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        let (batch, seq_len, _) = xs.dims3()?;
        let heads = |t: Tensor, n: usize, norm: Option<&RmsNorm>| -> candle_core::Result<Tensor> {
            let mut t = t.reshape((batch, seq_len, n, self.head_dim))?;
            if let Some(norm) = norm {
                t = norm.forward(&t)?;
            }
            t.transpose(1, 2)?.contiguous()
        };
        let q = heads(self.q_proj.forward_t(xs, mode)?, self.num_heads, self.q_norm.as_ref())?;
        let k = heads(self.k_proj.forward_t(xs, mode)?, self.num_kv_heads, self.k_norm.as_ref())?;
        let (q, k) = (rotary.apply_at(&q, positions)?, rotary.apply_at(&k, positions)?);
        let v = heads(self.v_proj.forward_t(xs, mode)?, self.num_kv_heads, None)?;
        let (k, v) = LayerCache::extend(cache, k, v)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let out = attention(&q, &k, &v, scale, mask, 0.0, mode)?.transpose(1, 2)?.reshape((
            batch,
            seq_len,
            self.num_heads * self.head_dim,
        ))?;
        self.o_proj.forward_t(&out, mode)
    }
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn load(vb: VarBuilder<'_>, cfg: &Config) -> candle_core::Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Mlp {
            gate_proj: Linear::load(vb.pp("gate_proj"), h, i, cfg.mlp_bias)?,
            up_proj: Linear::load(vb.pp("up_proj"), h, i, cfg.mlp_bias)?,
            down_proj: Linear::load(vb.pp("down_proj"), i, h, cfg.mlp_bias)?,
        })
    }

    fn forward(&self, xs: &Tensor, mode: Mode<'_>) -> candle_core::Result<Tensor> {
        let gated = super::ops::swiglu(&self.gate_proj.forward_t(xs, mode)?, &self.up_proj.forward_t(xs, mode)?)?;
        self.down_proj.forward_t(&gated, mode)
    }
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn load(vb: VarBuilder<'_>, cfg: &Config) -> candle_core::Result<Self> {
        Ok(DecoderLayer {
            input_layernorm: RmsNorm::load(vb.pp("input_layernorm"), cfg.hidden_size, cfg.rms_norm_eps)?,
            self_attn: Attention::load(vb.pp("self_attn"), cfg)?,
            post_attention_layernorm: RmsNorm::load(
                vb.pp("post_attention_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
            mlp: Mlp::load(vb.pp("mlp"), cfg)?,
        })
    }

    fn forward(
        &self,
        hidden: &Tensor,
        rotary: &Rotary,
        positions: Positions<'_>,
        mask: &AttentionMask,
        cache: &mut Option<LayerCache>,
        mode: Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        let attended =
            self.self_attn.forward(&self.input_layernorm.forward(hidden)?, rotary, positions, mask, cache, mode)?;
        let hidden = (hidden + attended)?;
        &hidden + self.mlp.forward(&self.post_attention_layernorm.forward(&hidden)?, mode)?
    }
}

/// What activation checkpointing keeps of a forward pass through the decoder layers: each layer's
/// input (no graph), the mask, and each layer's dropout seed, so that running a layer again in the
/// backward pass drops the same elements.
pub struct LayerTape {
    inputs: Vec<Tensor>,
    seeds: Vec<Option<u64>>,
    mask: AttentionMask,
}

/// The last decoder layer's output as a leaf of the graph that follows it (final norm, logits,
/// loss), with the tape to carry that leaf's gradient back through the layers.
pub struct Checkpointed {
    pub leaf: Var,
    pub tape: LayerTape,
}

/// Keys and values of the positions seen so far, one entry per layer.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
}

/// One layer's keys and values `(batch, kv_heads, capacity, head_dim)`, the first `len` positions
/// real. Decoding writes each new position into the spare columns in place; copying the whole
/// cache into a longer one on every step (as `cat` does) cost a fifth of a 64-row decoding step.
pub struct LayerCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

/// Spare positions a layer's cache grows by when it is full (a step that outgrows it copies it).
const CACHE_GROWTH: usize = 32;

impl LayerCache {
    /// Appends `k` and `v` `(batch, kv_heads, seq, head_dim)` to `cache` (a fresh one holds them
    /// as they are) and gives the keys and values of every position so far, as views of the cache.
    /// Tensors on a gradient's path are concatenated instead (writing in place would change what
    /// the backward pass reads), and so are those the fused CPU attention does not read where they
    /// lie (other devices and dtypes, unmeasured there).
    fn extend(cache: &mut Option<LayerCache>, k: Tensor, v: Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let seq = k.dim(2)?;
        let Some(mut layer) = cache.take() else {
            *cache = Some(LayerCache { k: k.clone(), v: v.clone(), len: seq });
            return Ok((k, v));
        };
        let len = layer.len + seq;
        let on_a_gradient_path = [&k, &v, &layer.k, &layer.v].iter().any(|t| t.track_op());
        if on_a_gradient_path || !super::ops::cpu_float(&k) {
            let past = |t: &Tensor| t.narrow(2, 0, layer.len);
            let (k, v) = (Tensor::cat(&[&past(&layer.k)?, &k], 2)?, Tensor::cat(&[&past(&layer.v)?, &v], 2)?);
            *cache = Some(LayerCache { k: k.clone(), v: v.clone(), len });
            return Ok((k, v));
        }
        if len > layer.capacity() {
            layer.k = with_spare_columns(&layer.k, layer.len, len + CACHE_GROWTH)?;
            layer.v = with_spare_columns(&layer.v, layer.len, len + CACHE_GROWTH)?;
        }
        layer.k.slice_set(&k.contiguous()?, 2, layer.len)?;
        layer.v.slice_set(&v.contiguous()?, 2, layer.len)?;
        layer.len = len;
        let views = (layer.k.narrow(2, 0, len)?, layer.v.narrow(2, 0, len)?);
        *cache = Some(layer);
        Ok(views)
    }

    fn capacity(&self) -> usize {
        self.k.dim(2).unwrap_or(0)
    }
}

/// The first `len` positions of `t` `(batch, heads, positions, head_dim)`, then zero columns up to
/// `capacity` positions.
fn with_spare_columns(t: &Tensor, len: usize, capacity: usize) -> candle_core::Result<Tensor> {
    let (batch, heads, _, head_dim) = t.dims4()?;
    let spare = Tensor::zeros((batch, heads, capacity - len, head_dim), t.dtype(), t.device())?;
    Tensor::cat(&[&t.narrow(2, 0, len)?, &spare], 2)
}

impl KvCache {
    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |layer| layer.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `other`'s sequences after these, both padded with zero columns to `columns`
    /// positions (which the caller's mask must hide), with spare columns to decode into.
    pub fn append_rows(&mut self, other: KvCache, columns: usize) -> candle_core::Result<()> {
        let capacity = columns + CACHE_GROWTH;
        for (mine, theirs) in self.layers.iter_mut().zip(other.layers) {
            if let (Some(layer), Some(other)) = (mine.take(), theirs) {
                let both = |a: &Tensor, b: &Tensor| {
                    let padded =
                        [with_spare_columns(a, layer.len, capacity)?, with_spare_columns(b, other.len, capacity)?];
                    Tensor::cat(&padded, 0)
                };
                *mine = Some(LayerCache { k: both(&layer.k, &other.k)?, v: both(&layer.v, &other.v)?, len: columns });
            }
        }
        Ok(())
    }

    /// Keeps the sequences `rows` (in that order, a row may repeat) of a batched cache.
    pub fn select_rows(&mut self, rows: &[usize]) -> candle_core::Result<()> {
        let Some(first) = self.layers.iter().flatten().next() else { return Ok(()) };
        let index = Tensor::from_vec(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), rows.len(), first.k.device())?;
        for layer in self.layers.iter_mut().flatten() {
            layer.k = layer.k.index_select(&index, 0)?;
            layer.v = layer.v.index_select(&index, 0)?;
        }
        Ok(())
    }
}

impl HasLinears for Llama {
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            let attn = &mut layer.self_attn;
            out.push((format!("{p}.self_attn.q_proj"), &mut attn.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &mut attn.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &mut attn.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &mut attn.o_proj));
            out.push((format!("{p}.mlp.gate_proj"), &mut layer.mlp.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), &mut layer.mlp.up_proj));
            out.push((format!("{p}.mlp.down_proj"), &mut layer.mlp.down_proj));
        }
        out
    }
}

/// The decoder with its language-model head.
pub struct Llama {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: Rotary,
    config: Config,
}

impl Llama {
    /// Loads from `vb` with Hugging Face names (`model.*`, `lm_head`).
    pub fn load(vb: VarBuilder<'_>, cfg: &Config) -> candle_core::Result<Self> {
        let embed_tokens = candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("model").pp("embed_tokens"))?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::new(embed_tokens.embeddings().clone(), None)
        } else {
            Linear::load(vb.pp("lm_head"), cfg.hidden_size, cfg.vocab_size, false)?
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(vb.pp("model").pp("layers").pp(i), cfg))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Llama {
            embed_tokens,
            layers,
            norm: RmsNorm::load(vb.pp("model").pp("norm"), cfg.hidden_size, cfg.rms_norm_eps)?,
            lm_head,
            rotary: Rotary::new(inverse_frequencies(cfg), cfg.max_position_embeddings, vb.device())?,
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The precision of the weights.
    pub fn dtype(&self) -> DType {
        self.embed_tokens.embeddings().dtype()
    }

    /// Logits `(batch, seq, vocab)` for `input_ids` `(batch, seq)` following the cached positions
    /// (pass a fresh cache for a whole sequence). `padding_mask` `(batch, seq)`, 1 for real tokens,
    /// hides left or right padding from attention.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        cache: &mut KvCache,
        padding_mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        self.forward_t(input_ids, cache, padding_mask, Mode::Inference)
    }

    /// Logits `(batch, vocab)` for the token after the last of `input_ids`, what generation picks
    /// from: the vocabulary projection of that position only (transformers' `generate` does the
    /// same, `logits_to_keep=1`); for a 121-token prompt of SmolLM2 the other positions' logits
    /// are a fifth of the prefill's work.
    pub fn next_token_logits(
        &self,
        input_ids: &Tensor,
        cache: &mut KvCache,
        padding_mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let hidden = self.hidden_states_t(input_ids, cache, padding_mask, Mode::Inference)?;
        let last = hidden.dim(1)?.checked_sub(1).ok_or_else(|| candle_core::Error::Msg("no input tokens".into()))?;
        self.logits(&hidden.narrow(1, last, 1)?.squeeze(1)?)
    }

    /// [`Llama::forward`] with `train` turning adapter dropout on.
    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        cache: &mut KvCache,
        padding_mask: Option<&Tensor>,
        mode: Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        self.logits(&self.hidden_states_t(input_ids, cache, padding_mask, mode)?)
    }

    /// The final (normalised) hidden states `(batch, seq, hidden)`: training computes logits only
    /// where a loss needs them (the answer tokens), since the vocabulary projection is the most
    /// expensive matmul of a small model.
    pub fn hidden_states_t(
        &self,
        input_ids: &Tensor,
        cache: &mut KvCache,
        padding_mask: Option<&Tensor>,
        mode: Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        let mask = self.mask(padding_mask)?;
        let offset = cache.len();
        self.run_layers(input_ids, cache, &mask, Positions::From(offset), mode)
    }

    /// Final hidden states `(batch, seq, hidden)` of sequences of different lengths side by side
    /// (inference): row `b`'s new tokens sit at positions `starts[b]..`, and `key_visible`
    /// `(batch, cached + seq)` row-major says which columns of the cache and the new tokens are
    /// real for each row (false for the padding between). The columns are causal by where they
    /// sit in the cache; a windowed model (Mistral) would need them by position and is refused.
    pub fn hidden_states_at(
        &self,
        input_ids: &Tensor,
        cache: &mut KvCache,
        key_visible: Vec<bool>,
        starts: &[usize],
    ) -> candle_core::Result<Tensor> {
        if self.config.window().is_some() {
            candle_core::bail!("sequences side by side need a model without a sliding window");
        }
        let mask = AttentionMask::causal(None, Some(key_visible));
        self.run_layers(input_ids, cache, &mask, Positions::PerRow(starts), Mode::Inference)
    }

    fn run_layers(
        &self,
        input_ids: &Tensor,
        cache: &mut KvCache,
        mask: &AttentionMask,
        positions: Positions<'_>,
        mode: Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        input_ids.dims2()?; // (batch, seq)
        if cache.layers.is_empty() {
            cache.layers = (0..self.layers.len()).map(|_| None).collect();
        }
        let mut hidden = self.embed_tokens.forward(input_ids)?;
        // On the CPU each layer draws its dropout from a generator of its own, as the checkpointed
        // pass does, so both give the same numbers. An accelerator's generator is reseeded per
        // `DropoutRng` (milliseconds each): there the layers share the caller's.
        let per_layer = input_ids.device().is_cpu();
        for (layer, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let rng = if per_layer { mode.layer_seed().map(DropoutRng::new) } else { None };
            let layer_mode = rng.as_ref().map_or(mode, Mode::Train);
            hidden = layer.forward(&hidden, &self.rotary, positions, mask, layer_cache, layer_mode)?;
        }
        self.norm.forward(&hidden)
    }

    fn mask(&self, padding_mask: Option<&Tensor>) -> candle_core::Result<AttentionMask> {
        // (`attention` refuses a padding mask that does not cover the cached and new positions.)
        let key_visible = padding_mask.map(AttentionMask::key_visible_from).transpose()?;
        Ok(AttentionMask::causal(self.config.window(), key_visible))
    }

    /// [`Llama::hidden_states_t`] of whole sequences with activation checkpointing: the decoder
    /// layers run without keeping their graphs, and the final norm is applied to a leaf standing
    /// for the last layer's output. After the backward pass of what was computed from the result,
    /// [`Llama::backward_layers`] carries the leaf's gradient through the layers.
    pub fn hidden_states_checkpointed(
        &self,
        input_ids: &Tensor,
        padding_mask: Option<&Tensor>,
        mode: Mode<'_>,
    ) -> candle_core::Result<(Tensor, Checkpointed)> {
        input_ids.dims2()?;
        let mask = self.mask(padding_mask)?;
        let mut hidden = self.embed_tokens.forward(input_ids)?.detach();
        let (mut inputs, mut seeds) = (Vec::with_capacity(self.layers.len()), Vec::with_capacity(self.layers.len()));
        for layer in &self.layers {
            let seed = mode.layer_seed();
            let rng = seed.map(DropoutRng::new);
            let layer_mode = rng.as_ref().map_or(Mode::Inference, Mode::Train);
            let output =
                layer.forward(&hidden, &self.rotary, Positions::From(0), &mask, &mut None, layer_mode)?.detach();
            inputs.push(std::mem::replace(&mut hidden, output));
            seeds.push(seed);
        }
        let leaf = Var::from_tensor(&hidden)?;
        let normed = self.norm.forward(leaf.as_tensor())?;
        Ok((normed, Checkpointed { leaf, tape: LayerTape { inputs, seeds, mask } }))
    }

    /// The backward pass through the decoder layers of [`Llama::hidden_states_checkpointed`]:
    /// `grad` is the gradient its leaf received; each layer runs again from its kept input (same
    /// dropout) and `on_gradients` gets each layer's gradient store (its adapters' gradients).
    pub fn backward_layers<E: From<candle_core::Error>>(
        &self,
        tape: LayerTape,
        grad: &Tensor,
        mut on_gradients: impl FnMut(&GradStore) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let mut grad = grad.clone();
        let layers = self.layers.iter().zip(tape.inputs).zip(tape.seeds).enumerate().rev();
        for (i, ((layer, input), seed)) in layers {
            // The first layer's input is the (frozen) embeddings: no gradient to compute there.
            let var = if i > 0 { Some(Var::from_tensor(&input)?) } else { None };
            let rng = seed.map(DropoutRng::new);
            let mode = rng.as_ref().map_or(Mode::Inference, Mode::Train);
            let start = var.as_ref().map_or(&input, |v| v.as_tensor());
            let output = layer.forward(start, &self.rotary, Positions::From(0), &tape.mask, &mut None, mode)?;
            let store = (output * &grad)?.sum_all()?.backward()?;
            on_gradients(&store)?;
            if let Some(var) = var {
                match store.get(&var) {
                    Some(g) => grad = g.clone(),
                    None => {
                        let message = "activation checkpointing: no gradient reached a layer's input";
                        return Err(candle_core::Error::Msg(message.into()).into());
                    }
                }
            }
        }
        Ok(())
    }

    /// Logits `(…, vocab)` from final hidden states `(…, hidden)`.
    pub fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        self.lm_head.forward(hidden)
    }
}

/// Reads every tensor of a GGUF file, dequantized to f32, under Hugging Face names, with the
/// q/k rows llama.cpp's converter permuted (its `llama` architecture only) put back in order.
/// Returns the config and the file's metadata (tokenizer, chat template) too.
pub fn load_gguf(path: &Path, device: &Device) -> Result<(Config, HashMap<String, Tensor>, gguf_file::Content)> {
    let mut file = fs::File::open(path).map_err(|error| ModelError::Read { path: path.to_owned(), error })?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| ModelError::Unsupported(format!("{} is not a readable GGUF file: {e}", path.display())))?;
    let mut cfg = Config::from_gguf(&content)?;
    let permuted = cfg.family() == Family::Llama;
    let mut tensors = HashMap::new();
    for name in content.tensor_infos.keys() {
        if name == "rope_freqs.weight" {
            let divisors = content.tensor(&mut file, name, device)?.dequantize(device)?;
            cfg.rope_freq_factors = Some(divisors.flatten_all()?.to_vec1::<f32>()?);
            continue;
        }
        let Some(hf_name) = hf_name(name) else {
            return Err(ModelError::Unsupported(format!("{}: unknown GGUF tensor {name}", path.display())));
        };
        let mut tensor = content.tensor(&mut file, name, device)?.dequantize(device)?;
        if permuted && name.ends_with("attn_q.weight") {
            tensor = unpermute_rows(&tensor, cfg.num_attention_heads)?;
        } else if permuted && name.ends_with("attn_k.weight") {
            tensor = unpermute_rows(&tensor, cfg.num_kv_heads())?;
        }
        tensors.insert(hf_name, tensor);
    }
    if cfg.rope_freq_factors.as_ref().is_some_and(|f| f.len() != cfg.head_dim() / 2) {
        return Err(ModelError::Unsupported(format!("{}: rope_freqs does not match the head size", path.display())));
    }
    Ok((cfg, tensors, content))
}

/// llama.cpp's names of the tensors outside the layers, and Hugging Face's.
const GGUF_GLOBAL_TENSORS: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// llama.cpp's names of a layer's modules (`blk.N.<name>.weight|bias`), and Hugging Face's
/// (`model.layers.N.<name>.weight|bias`).
const GGUF_LAYER_MODULES: [(&str, &str); 11] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

/// Hugging Face's name for a llama.cpp tensor name.
fn hf_name(gguf_name: &str) -> Option<String> {
    if let Some((_, hf)) = GGUF_GLOBAL_TENSORS.iter().find(|(gguf, _)| *gguf == gguf_name) {
        return Some((*hf).to_owned());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    if !matches!(kind, "weight" | "bias") {
        return None;
    }
    let (_, hf) = GGUF_LAYER_MODULES.iter().find(|(gguf, _)| *gguf == module)?;
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// llama.cpp's name for a Hugging Face tensor name (the inverse of [`hf_name`]).
pub fn gguf_name(hf_name: &str) -> Option<String> {
    if let Some((gguf, _)) = GGUF_GLOBAL_TENSORS.iter().find(|(_, hf)| *hf == hf_name) {
        return Some((*gguf).to_owned());
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    if !matches!(kind, "weight" | "bias") {
        return None;
    }
    let (gguf, _) = GGUF_LAYER_MODULES.iter().find(|(_, hf)| *hf == module)?;
    Some(format!("blk.{layer}.{gguf}.{kind}"))
}

/// llama.cpp's rotary row permutation of a `(heads * head_dim, in)` q or k weight, for the
/// `llama` architecture (its rope rotates interleaved pairs, Hugging Face's the two halves).
pub fn permute_rows(weight: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = weight.dims2()?;
    weight.reshape((heads, 2, rows / heads / 2, cols))?.transpose(1, 2)?.reshape((rows, cols))
}

/// Undoes llama.cpp's rotary row permutation of a `(heads * head_dim, in)` q or k weight.
fn unpermute_rows(weight: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = weight.dims2()?;
    weight.reshape((heads, rows / heads / 2, 2, cols))?.transpose(1, 2)?.reshape((rows, cols))
}

/// Loads a generator from a GGUF file or a Hugging Face folder (`config.json` + safetensors), in
/// the device's default precision.
pub fn load(path: &Path, device: &Device) -> Result<Llama> {
    load_as(path, device, super::device::default_dtype(device))
}

/// [`load`] with the weights in `dtype`.
pub fn load_as(path: &Path, device: &Device, dtype: DType) -> Result<Llama> {
    load_with(path, device, dtype, WeightSource::Checkpoint)
}

/// A Hugging Face folder's `config.json`.
fn read_config(path: &Path) -> Result<Config> {
    let config_path = path.join("config.json");
    let text =
        fs::read_to_string(&config_path).map_err(|error| ModelError::Read { path: config_path.clone(), error })?;
    let cfg: Config = serde_json::from_str(&text).map_err(|error| ModelError::Config { path: config_path, error })?;
    cfg.validate()?;
    Ok(cfg)
}

/// [`load_as`] with the weights from `source`; random weights need a Hugging Face folder's
/// `config.json` (not a GGUF file).
pub fn load_with(path: &Path, device: &Device, dtype: DType, source: WeightSource) -> Result<Llama> {
    if let WeightSource::Random { seed } = source {
        let cfg = read_config(path)?;
        return Ok(Llama::load(RandomWeights::var_builder(seed, dtype, device), &cfg)?);
    }
    let (cfg, tensors) = match super::gguf_file_at(path) {
        Some(gguf) => {
            let (cfg, tensors, _) = load_gguf(&gguf, device)?;
            (cfg, tensors)
        }
        None => read_hf_folder(path, device)?,
    };
    Ok(Llama::load(VarBuilder::from_tensors(tensors, dtype, device), &cfg)?)
}

/// A Hugging Face folder's `config.json` and every tensor of its safetensors files.
pub fn read_hf_folder(path: &Path, device: &Device) -> Result<(Config, HashMap<String, Tensor>)> {
    let cfg = read_config(path)?;
    let files = super::files_with_extension(path, "safetensors");
    if files.is_empty() {
        return Err(ModelError::Unsupported(format!("{}: no .safetensors or .gguf file", path.display())));
    }
    let mut tensors = HashMap::new();
    for file in files {
        tensors.extend(candle_core::safetensors::load(&file, device)?);
    }
    Ok((cfg, tensors))
}

#[cfg(test)]
mod tests {
    use candle_core::Var;
    use candle_nn::VarMap;

    use super::*;
    use crate::model::test_util::max_abs_diff;

    fn tiny_config() -> Config {
        serde_json::from_value(serde_json::json!({
            "vocab_size": 40, "hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 2,
            "num_attention_heads": 6, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "max_position_embeddings": 64, "tie_word_embeddings": true
        }))
        .unwrap()
    }

    fn tiny_model() -> (Llama, VarMap) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        (Llama::load(vb, &tiny_config()).unwrap(), varmap)
    }

    fn ids(values: &[u32]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
    }

    #[test]
    fn incremental_decoding_equals_the_full_forward() {
        let (model, _) = tiny_model();
        // Long enough for the cache to grow twice: past the prompt, then past its spare columns.
        let tokens: Vec<u32> = (0..3 + CACHE_GROWTH as u32 + 20).map(|i| (3 + i * 17) % 40).collect();
        assert!(tokens.len() <= 64, "within the tiny model's positions");
        let full = model.forward(&ids(&tokens), &mut KvCache::default(), None).unwrap();
        // Prompt of 3, then one token at a time, then the last 2 together.
        let mut cache = KvCache::default();
        let mut parts = vec![model.forward(&ids(&tokens[..3]), &mut cache, None).unwrap()];
        let last_two = tokens.len() - 2;
        for t in &tokens[3..last_two] {
            parts.push(model.forward(&ids(&[*t]), &mut cache, None).unwrap());
        }
        parts.push(model.forward(&ids(&tokens[last_two..]), &mut cache, None).unwrap());
        assert_eq!(cache.len(), tokens.len());
        let incremental = Tensor::cat(&parts, 1).unwrap();
        // Same kernels, other matrix shapes: f32 rounding only (seen up to ~1e-5 on O(1) logits).
        let diff = max_abs_diff(&full, &incremental);
        assert!(diff < 1e-4, "incremental decoding differs by {diff}");
    }

    /// The same with frozen weights: decoding writes into the cache's spare columns in place
    /// (trainable weights, as above, concatenate), and a grown cache keeps what it held.
    #[test]
    fn decoding_into_spare_cache_columns_equals_the_full_forward() {
        let (_, varmap) = tiny_model();
        let frozen: std::collections::HashMap<String, Tensor> =
            varmap.data().lock().unwrap().iter().map(|(name, var)| (name.clone(), var.as_tensor().detach())).collect();
        let model = Llama::load(VarBuilder::from_tensors(frozen, DType::F32, &Device::Cpu), &tiny_config()).unwrap();
        let tokens: Vec<u32> = (0..3 + CACHE_GROWTH as u32 + 20).map(|i| (5 + i * 13) % 40).collect();
        let full = model.forward(&ids(&tokens), &mut KvCache::default(), None).unwrap();
        let mut cache = KvCache::default();
        let mut parts = vec![model.forward(&ids(&tokens[..3]), &mut cache, None).unwrap()];
        for t in &tokens[3..] {
            parts.push(model.forward(&ids(&[*t]), &mut cache, None).unwrap());
            let layer = cache.layers[0].as_ref().unwrap();
            assert!(layer.capacity() > layer.len || layer.len == 3 + CACHE_GROWTH + 1, "spare columns");
        }
        assert_eq!(cache.len(), tokens.len());
        let diff = max_abs_diff(&full, &Tensor::cat(&parts, 1).unwrap());
        assert!(diff < 1e-4, "decoding into spare columns differs by {diff}");
    }

    #[test]
    fn causal_mask_hides_the_future() {
        let (model, _) = tiny_model();
        let a = model.forward(&ids(&[3, 17, 5, 29]), &mut KvCache::default(), None).unwrap();
        let b = model.forward(&ids(&[3, 17, 9, 1]), &mut KvCache::default(), None).unwrap();
        // Positions 0 and 1 cannot see the tokens that differ.
        assert!(max_abs_diff(&a.narrow(1, 0, 2).unwrap(), &b.narrow(1, 0, 2).unwrap()) < 1e-6);
        assert!(max_abs_diff(&a.narrow(1, 2, 2).unwrap(), &b.narrow(1, 2, 2).unwrap()) > 1e-4);
    }

    #[test]
    fn right_padding_is_invisible_to_real_tokens() {
        let (model, _) = tiny_model();
        let alone = model.forward(&ids(&[3, 17, 5]), &mut KvCache::default(), None).unwrap();
        let batch = Tensor::new(&[[3u32, 17, 5, 0, 0], [8, 9, 10, 11, 12]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1f32, 1., 1., 0., 0.], [1., 1., 1., 1., 1.]], &Device::Cpu).unwrap();
        let padded = model.forward(&batch, &mut KvCache::default(), Some(&mask)).unwrap();
        let first = padded.narrow(0, 0, 1).unwrap().narrow(1, 0, 3).unwrap();
        assert!(max_abs_diff(&alone, &first) < 1e-5);
    }

    #[test]
    fn every_parameter_receives_a_gradient() {
        // Per layer: Llama's 9 tensors; Qwen2 adds the q/k/v biases, Qwen3 the q/k norms; Mistral's
        // window (2 here, over 5 positions) must not cut any parameter off.
        for (model_type, per_layer) in [("llama", 9), ("mistral", 9), ("qwen2", 12), ("qwen3", 11)] {
            let mut cfg = tiny_config();
            cfg.model_type = model_type.into();
            cfg.sliding_window = Some(2);
            cfg.validate().unwrap();
            let varmap = VarMap::new();
            let model = Llama::load(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu), &cfg).unwrap();
            let logits = model.forward(&ids(&[3, 17, 5, 29, 11]), &mut KvCache::default(), None).unwrap();
            let targets = Tensor::new(&[17u32, 5, 29, 11, 2], &Device::Cpu).unwrap();
            let loss = candle_nn::loss::cross_entropy(&logits.squeeze(0).unwrap(), &targets).unwrap();
            let grads = loss.backward().unwrap();
            let vars: Vec<Var> = varmap.all_vars();
            assert_eq!(
                vars.len(),
                1 + 1 + 2 * per_layer,
                "{model_type}: embeddings, final norm, per layer (lm_head tied)"
            );
            for var in &vars {
                let grad = grads
                    .get(var)
                    .unwrap_or_else(|| panic!("{model_type}: no gradient for a {:?} parameter", var.shape()));
                let magnitude = grad.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(magnitude > 0.0, "{model_type}: zero gradient for a {:?} parameter", var.shape());
            }
        }
    }

    #[test]
    fn llama3_scaling_divides_low_frequencies_and_smooths_the_middle() {
        let mut cfg = tiny_config();
        cfg.head_dim = Some(8);
        cfg.rope_parameters = Some(RopeParameters {
            rope_type: Some("llama3".into()),
            rope_theta: Some(10_000.0),
            factor: Some(8.0),
            low_freq_factor: Some(1.0),
            high_freq_factor: Some(4.0),
            original_max_position_embeddings: Some(16),
        });
        cfg.validate().unwrap();
        // transformers 5.24's `_compute_llama3_parameters` on the same settings.
        let expected = [0.57606f32, 0.0125, 0.00125, 0.000125];
        for (ours, theirs) in inverse_frequencies(&cfg).iter().zip(expected) {
            assert!((ours - theirs).abs() <= 1e-5 * theirs.max(1.0), "{ours} vs {theirs}");
        }
        cfg.rope_parameters.as_mut().unwrap().factor = None;
        assert!(cfg.validate().is_err(), "llama3 scaling needs all its settings");
    }

    #[test]
    fn unknown_families_and_scalings_are_refused_before_any_weight_is_read() {
        let mut cfg = tiny_config();
        cfg.model_type = "gpt2".into();
        assert!(cfg.validate().unwrap_err().to_string().contains("gpt2"));
        let mut cfg = tiny_config();
        cfg.rope_scaling = Some(RopeParameters { rope_type: Some("yarn".into()), ..Default::default() });
        assert!(cfg.validate().unwrap_err().to_string().contains("yarn"));
        let mut cfg = tiny_config();
        cfg.model_type = "qwen2".into();
        cfg.use_sliding_window = Some(true);
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // llama.cpp: reshape (heads, 2, head_dim/2, in), swap axes 1 and 2.
        let (heads, head_dim, cols) = (3, 4, 5);
        let original = Tensor::arange(0f32, (heads * head_dim * cols) as f32, &Device::Cpu)
            .unwrap()
            .reshape((heads * head_dim, cols))
            .unwrap();
        let permuted = original
            .reshape((heads, 2, head_dim / 2, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((heads * head_dim, cols))
            .unwrap();
        assert!(max_abs_diff(&permuted, &original) > 0.0);
        assert_eq!(max_abs_diff(&unpermute_rows(&permuted, heads).unwrap(), &original), 0.0);
        assert_eq!(max_abs_diff(&permute_rows(&original, heads).unwrap(), &permuted), 0.0);
    }

    #[test]
    fn gguf_names_map_to_hugging_face_names() {
        assert_eq!(hf_name("blk.12.attn_q.weight").as_deref(), Some("model.layers.12.self_attn.q_proj.weight"));
        assert_eq!(hf_name("blk.0.ffn_norm.weight").as_deref(), Some("model.layers.0.post_attention_layernorm.weight"));
        assert_eq!(hf_name("token_embd.weight").as_deref(), Some("model.embed_tokens.weight"));
        assert_eq!(hf_name("blk.3.attn_q.bias").as_deref(), Some("model.layers.3.self_attn.q_proj.bias"));
        assert_eq!(hf_name("blk.1.attn_k_norm.weight").as_deref(), Some("model.layers.1.self_attn.k_norm.weight"));
        assert_eq!(hf_name("rope_freqs.weight"), None);
        assert_eq!(hf_name("blk.0.attn_q.scales"), None);
        for name in ["model.layers.7.self_attn.k_norm.weight", "model.layers.0.mlp.down_proj.weight", "lm_head.weight"]
        {
            assert_eq!(hf_name(&gguf_name(name).unwrap()).as_deref(), Some(name), "{name} round trip");
        }
        assert_eq!(gguf_name("model.rotary_emb.inv_freq"), None);
    }

    #[test]
    fn loads_a_hugging_face_folder() {
        let (model, varmap) = tiny_model();
        let dir = tempfile::tempdir().unwrap();
        varmap.save(dir.path().join("model.safetensors")).unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::json!({
                "model_type": "llama", "vocab_size": 40, "hidden_size": 24, "intermediate_size": 48,
                "num_hidden_layers": 2, "num_attention_heads": 6, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
                "max_position_embeddings": 64, "tie_word_embeddings": true
            })
            .to_string(),
        )
        .unwrap();
        let loaded = load(dir.path(), &Device::Cpu).unwrap();
        let tokens = ids(&[3, 17, 5, 29]);
        let expected = model.forward(&tokens, &mut KvCache::default(), None).unwrap();
        let actual = loaded.forward(&tokens, &mut KvCache::default(), None).unwrap();
        // Variables take the differentiable kernels, loaded tensors the fused ones: same math, other
        // f32 rounding (up to ~1e-5 on these logits); a wrong or missing tensor would be off by O(1).
        let diff = max_abs_diff(&expected, &actual);
        assert!(diff < 1e-4, "loaded model differs by {diff}");
        assert!(load(&dir.path().join("missing"), &Device::Cpu).is_err());
    }
}
