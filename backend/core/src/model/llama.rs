//! A Llama-family decoder (Llama 2/3, SmolLM/SmolLM2, TinyLlama, Mistral without sliding window),
//! written from differentiable ops: RMSNorm, rotary position embeddings with the config's theta,
//! grouped-query attention, SwiGLU, tied embeddings. Tensor names are Hugging Face's; GGUF files are
//! renamed (and llama.cpp's q/k row permutation undone) on load so one forward serves both.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

use super::error::{ModelError, Result};
use super::layers::{Mode, softmax_last_dim};
use super::linear::Linear;
use super::lora::HasLinears;
use super::random::{RandomWeights, WeightSource};

/// `config.json` of a Llama-architecture model (or the same, read from GGUF metadata).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
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
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Reads the hyper-parameters from a GGUF file's `llama.*` metadata.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let get = |key: &str| {
            content.metadata.get(key).ok_or_else(|| ModelError::Unsupported(format!("GGUF metadata has no {key}")))
        };
        let usize_of = |key: &str| -> Result<usize> { Ok(get(key)?.to_u32()? as usize) };
        let architecture = get("general.architecture")?.to_string()?.clone();
        if architecture != "llama" {
            return Err(ModelError::Unsupported(format!("GGUF architecture {architecture:?}")));
        }
        let vocab_size = match content.metadata.get("llama.vocab_size") {
            Some(v) => v.to_u32()? as usize,
            None => get("tokenizer.ggml.tokens")?.to_vec()?.len(),
        };
        let optional_u32 = |key: &str| content.metadata.get(key).and_then(|v| v.to_u32().ok());
        Ok(Config {
            vocab_size,
            hidden_size: usize_of("llama.embedding_length")?,
            intermediate_size: usize_of("llama.feed_forward_length")?,
            num_hidden_layers: usize_of("llama.block_count")?,
            num_attention_heads: usize_of("llama.attention.head_count")?,
            num_key_value_heads: content
                .metadata
                .get("llama.attention.head_count_kv")
                .map(|v| v.to_u32().map(|n| n as usize))
                .transpose()?,
            rms_norm_eps: f64::from(get("llama.attention.layer_norm_rms_epsilon")?.to_f32()?),
            rope_theta: content
                .metadata
                .get("llama.rope.freq_base")
                .map(|v| v.to_f32())
                .transpose()?
                .map_or(10_000.0, f64::from),
            max_position_embeddings: usize_of("llama.context_length")?,
            tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
            bos_token_id: optional_u32("tokenizer.ggml.bos_token_id"),
            eos_token_id: optional_u32("tokenizer.ggml.eos_token_id"),
        })
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

/// Precomputed rotary tables, `(max_positions, head_dim)` each.
#[derive(Debug, Clone)]
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    fn new(cfg: &Config, device: &Device) -> candle_core::Result<Self> {
        let half = cfg.head_dim() / 2;
        let inv_freq: Vec<f32> =
            (0..half).map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.head_dim() as f64) as f32).collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let positions =
            Tensor::arange(0u32, cfg.max_position_embeddings as u32, device)?.to_dtype(DType::F32)?.unsqueeze(1)?;
        let angles = positions.broadcast_mul(&inv_freq)?;
        let angles = Tensor::cat(&[&angles, &angles], 1)?;
        Ok(Rotary { cos: angles.cos()?, sin: angles.sin()? })
    }

    /// Rotates `(batch, heads, seq, head_dim)` states at positions `offset..offset + seq`.
    fn apply(&self, xs: &Tensor, offset: usize) -> candle_core::Result<Tensor> {
        let (_, _, seq_len, head_dim) = xs.dims4()?;
        let cos = self.cos.narrow(0, offset, seq_len)?.to_dtype(xs.dtype())?;
        let sin = self.sin.narrow(0, offset, seq_len)?.to_dtype(xs.dtype())?;
        let half = head_dim / 2;
        let rotated =
            Tensor::cat(&[&xs.narrow(D::Minus1, half, half)?.neg()?, &xs.narrow(D::Minus1, 0, half)?], D::Minus1)?;
        xs.broadcast_mul(&cos)?.broadcast_add(&rotated.broadcast_mul(&sin)?)
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(vb: VarBuilder<'_>, cfg: &Config) -> candle_core::Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim());
        Ok(Attention {
            q_proj: Linear::load(vb.pp("q_proj"), h, cfg.num_attention_heads * d, false)?,
            k_proj: Linear::load(vb.pp("k_proj"), h, cfg.num_kv_heads() * d, false)?,
            v_proj: Linear::load(vb.pp("v_proj"), h, cfg.num_kv_heads() * d, false)?,
            o_proj: Linear::load(vb.pp("o_proj"), cfg.num_attention_heads * d, h, false)?,
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_kv_heads(),
            head_dim: d,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        rotary: &Rotary,
        offset: usize,
        mask: Option<&Tensor>,
        cache: &mut Option<(Tensor, Tensor)>,
        mode: Mode<'_>,
    ) -> candle_core::Result<Tensor> {
        let (batch, seq_len, _) = xs.dims3()?;
        let heads = |t: Tensor, n: usize| -> candle_core::Result<Tensor> {
            t.reshape((batch, seq_len, n, self.head_dim))?.transpose(1, 2)?.contiguous()
        };
        let q = rotary.apply(&heads(self.q_proj.forward_t(xs, mode)?, self.num_heads)?, offset)?;
        let k = rotary.apply(&heads(self.k_proj.forward_t(xs, mode)?, self.num_kv_heads)?, offset)?;
        let v = heads(self.v_proj.forward_t(xs, mode)?, self.num_kv_heads)?;
        let (k, v) = match cache.take() {
            Some((past_k, past_v)) => (Tensor::cat(&[&past_k, &k], 2)?, Tensor::cat(&[&past_v, &v], 2)?),
            None => (k, v),
        };
        *cache = Some((k.clone(), v.clone()));
        let repeat = self.num_heads / self.num_kv_heads;
        let (k, v) = (repeat_kv(&k, repeat)?, repeat_kv(&v, repeat)?);
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = softmax_last_dim(&scores)?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((batch, seq_len, self.num_heads * self.head_dim))?;
        self.o_proj.forward_t(&out, mode)
    }
}

/// `(batch, kv_heads, seq, d)` → `(batch, kv_heads * n, seq, d)`, each kv head repeated `n` times.
fn repeat_kv(xs: &Tensor, n: usize) -> candle_core::Result<Tensor> {
    if n == 1 {
        return Ok(xs.clone());
    }
    let (batch, kv_heads, seq_len, head_dim) = xs.dims4()?;
    xs.unsqueeze(2)?.broadcast_as((batch, kv_heads, n, seq_len, head_dim))?.reshape((
        batch,
        kv_heads * n,
        seq_len,
        head_dim,
    ))
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
            gate_proj: Linear::load(vb.pp("gate_proj"), h, i, false)?,
            up_proj: Linear::load(vb.pp("up_proj"), h, i, false)?,
            down_proj: Linear::load(vb.pp("down_proj"), i, h, false)?,
        })
    }

    fn forward(&self, xs: &Tensor, mode: Mode<'_>) -> candle_core::Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate_proj.forward_t(xs, mode)?)?;
        self.down_proj.forward_t(&(gate * self.up_proj.forward_t(xs, mode)?)?, mode)
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
}

/// Keys and values of the positions seen so far, one entry per layer.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |(k, _)| k.dim(2).unwrap_or(0))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
            rotary: Rotary::new(cfg, vb.device())?,
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
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
        let (_batch, seq_len) = input_ids.dims2()?;
        let offset = cache.len();
        if cache.layers.is_empty() {
            cache.layers = (0..self.layers.len()).map(|_| None).collect();
        }
        let mut hidden = self.embed_tokens.forward(input_ids)?;
        let mask = attention_mask(seq_len, offset, padding_mask, hidden.device(), hidden.dtype())?;
        for (layer, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let attended = layer.self_attn.forward(
                &layer.input_layernorm.forward(&hidden)?,
                &self.rotary,
                offset,
                mask.as_ref(),
                layer_cache,
                mode,
            )?;
            hidden = (hidden + attended)?;
            hidden = (&hidden + layer.mlp.forward(&layer.post_attention_layernorm.forward(&hidden)?, mode)?)?;
        }
        self.norm.forward(&hidden)
    }

    /// Logits `(…, vocab)` from final hidden states `(…, hidden)`.
    pub fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        self.lm_head.forward(hidden)
    }
}

/// Additive mask `(batch or 1, 1, seq, offset + seq)`: causal, plus padded keys hidden.
/// `None` when a single new token attends to everything before it.
fn attention_mask(
    seq_len: usize,
    offset: usize,
    padding_mask: Option<&Tensor>,
    device: &Device,
    dtype: DType,
) -> candle_core::Result<Option<Tensor>> {
    if seq_len == 1 && padding_mask.is_none() {
        return Ok(None);
    }
    let total = offset + seq_len;
    let causal: Vec<f32> =
        (0..seq_len).flat_map(|i| (0..total).map(move |j| if j > offset + i { -1e9 } else { 0.0 })).collect();
    let mut mask = Tensor::from_vec(causal, (1, 1, seq_len, total), device)?;
    if let Some(padding) = padding_mask {
        let (batch, keys) = padding.dims2()?;
        if keys != total {
            candle_core::bail!("padding mask covers {keys} positions, expected {total}");
        }
        let hidden_keys = ((padding.to_dtype(DType::F32)? - 1.0)? * 1e9)?.reshape((batch, 1, 1, total))?;
        mask = mask.broadcast_add(&hidden_keys)?;
    }
    Ok(Some(mask.to_dtype(dtype)?))
}

/// Reads every tensor of a GGUF file, dequantized to f32, under Hugging Face names, with the
/// q/k rows llama.cpp's converter permuted put back in order. Returns the config and the file's
/// metadata (tokenizer, chat template) too.
pub fn load_gguf(path: &Path, device: &Device) -> Result<(Config, HashMap<String, Tensor>, gguf_file::Content)> {
    let mut file = fs::File::open(path).map_err(|error| ModelError::Read { path: path.to_owned(), error })?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| ModelError::Unsupported(format!("{} is not a readable GGUF file: {e}", path.display())))?;
    let cfg = Config::from_gguf(&content)?;
    let mut tensors = HashMap::new();
    for name in content.tensor_infos.keys() {
        let Some(hf_name) = hf_name(name) else {
            // e.g. `rope_freqs`: derived from the config instead.
            continue;
        };
        let mut tensor = content.tensor(&mut file, name, device)?.dequantize(device)?;
        if name.ends_with("attn_q.weight") {
            tensor = unpermute_rows(&tensor, cfg.num_attention_heads)?;
        } else if name.ends_with("attn_k.weight") {
            tensor = unpermute_rows(&tensor, cfg.num_kv_heads())?;
        }
        tensors.insert(hf_name, tensor);
    }
    Ok((cfg, tensors, content))
}

/// Hugging Face's name for a llama.cpp tensor name.
fn hf_name(gguf_name: &str) -> Option<String> {
    let fixed = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_owned());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let part = match part {
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{part}"))
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
    serde_json::from_str(&text).map_err(|error| ModelError::Config { path: config_path, error })
}

/// [`load_as`] with the weights from `source`; random weights need a Hugging Face folder's
/// `config.json` (not a GGUF file).
pub fn load_with(path: &Path, device: &Device, dtype: DType, source: WeightSource) -> Result<Llama> {
    if let WeightSource::Random { seed } = source {
        let cfg = read_config(path)?;
        return Ok(Llama::load(RandomWeights::var_builder(seed, dtype, device), &cfg)?);
    }
    if let Some(gguf) = super::gguf_file_at(path) {
        let (cfg, tensors, _) = load_gguf(&gguf, device)?;
        return Ok(Llama::load(VarBuilder::from_tensors(tensors, dtype, device), &cfg)?);
    }
    let cfg = read_config(path)?;
    let files = super::files_with_extension(path, "safetensors");
    if files.is_empty() {
        return Err(ModelError::Unsupported(format!("{}: no .safetensors or .gguf file", path.display())));
    }
    let mut tensors = HashMap::new();
    for file in files {
        tensors.extend(candle_core::safetensors::load(&file, device)?);
    }
    Ok(Llama::load(VarBuilder::from_tensors(tensors, dtype, device), &cfg)?)
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
        let tokens = [3u32, 17, 5, 29, 11, 2, 38, 7];
        let full = model.forward(&ids(&tokens), &mut KvCache::default(), None).unwrap();
        // Prompt of 3, then one token at a time, then the last 2 together.
        let mut cache = KvCache::default();
        let mut parts = vec![model.forward(&ids(&tokens[..3]), &mut cache, None).unwrap()];
        for t in &tokens[3..6] {
            parts.push(model.forward(&ids(&[*t]), &mut cache, None).unwrap());
        }
        parts.push(model.forward(&ids(&tokens[6..]), &mut cache, None).unwrap());
        assert_eq!(cache.len(), tokens.len());
        let incremental = Tensor::cat(&parts, 1).unwrap();
        // Same kernels, other matrix shapes: f32 rounding only (seen up to ~1e-5 on O(1) logits).
        let diff = max_abs_diff(&full, &incremental);
        assert!(diff < 1e-4, "incremental decoding differs by {diff}");
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
        let (model, varmap) = tiny_model();
        let logits = model.forward(&ids(&[3, 17, 5, 29, 11]), &mut KvCache::default(), None).unwrap();
        let targets = Tensor::new(&[17u32, 5, 29, 11, 2], &Device::Cpu).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits.squeeze(0).unwrap(), &targets).unwrap();
        let grads = loss.backward().unwrap();
        let vars: Vec<Var> = varmap.all_vars();
        assert_eq!(vars.len(), 1 + 1 + 2 * 9, "embeddings, final norm, 9 tensors per layer (lm_head tied)");
        for var in &vars {
            let grad = grads.get(var).unwrap_or_else(|| panic!("no gradient for a {:?} parameter", var.shape()));
            let magnitude = grad.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(magnitude > 0.0, "zero gradient for a {:?} parameter", var.shape());
        }
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
    }

    #[test]
    fn gguf_names_map_to_hugging_face_names() {
        assert_eq!(hf_name("blk.12.attn_q.weight").as_deref(), Some("model.layers.12.self_attn.q_proj.weight"));
        assert_eq!(hf_name("blk.0.ffn_norm.weight").as_deref(), Some("model.layers.0.post_attention_layernorm.weight"));
        assert_eq!(hf_name("token_embd.weight").as_deref(), Some("model.embed_tokens.weight"));
        assert_eq!(hf_name("rope_freqs.weight"), None);
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
