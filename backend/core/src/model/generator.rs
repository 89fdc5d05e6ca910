//! The generator: a Llama decoder with its tokenizer and chat template, and text generation with
//! a KV cache — greedy or sampled (temperature, top-p, seed), stopping on EOS, stop strings or a
//! token budget, streaming each piece of text to a callback that may stop it.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::SeedableRng;
use rand::distr::{Distribution, weighted::WeightedIndex};
use rand::rngs::StdRng;
use serde::Serialize;
use tokenizers::Tokenizer;

use super::error::{ModelError, Result};
use super::gguf_tokenizer;
use super::llama::{self, KvCache, Llama};
use super::load_tokenizer_file;
use super::lora::{self, LoraConfig};
use super::random::WeightSource;

/// One turn of a conversation, as chat templates expect it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        ChatMessage { role: role.to_owned(), content: content.to_owned() }
    }
}

/// How to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    /// Nucleus sampling: keep the most likely tokens whose probabilities sum to `top_p`.
    pub top_p: f64,
    pub seed: u64,
    /// Generation stops before any of these strings; they are not part of the output.
    pub stop: Vec<String>,
    /// Above 1: the logits of tokens already generated are divided (positive) or multiplied
    /// (negative) by it, as CTRL and transformers' `repetition_penalty` do — over the answer's own
    /// tokens only, so copying words from the prompt's passages stays free. 1: off.
    pub repetition_penalty: f32,
    /// Stop when the output starts repeating itself ([`repeating_tail`]).
    pub stop_on_loop: bool,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
            repetition_penalty: 1.0,
            stop_on_loop: false,
        }
    }
}

/// Whether `tokens` ends in a loop: a run of 8 to 128 tokens twice in a row, or of 1 to 7 tokens
/// four times in a row (a sentence said again, or "the the the the").
pub fn repeating_tail(tokens: &[u32]) -> bool {
    let n = tokens.len();
    (1..=128usize).any(|period| {
        let times = if period >= 8 { 2 } else { 4 };
        let span = period * times;
        span <= n && {
            let tail = &tokens[n - span..];
            tail.chunks(period).all(|chunk| chunk == &tail[..period])
        }
    })
}

/// Applies the repetition penalty to `logits` for every token in `seen`.
pub fn penalise_repeats(logits: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut done = std::collections::HashSet::new();
    for &token in seen {
        if let Some(logit) = logits.get_mut(token as usize)
            && done.insert(token)
        {
            *logit = if *logit > 0.0 { *logit / penalty } else { *logit * penalty };
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndOfSequence,
    StopString,
    MaxNewTokens,
    /// The callback asked to stop.
    Cancelled,
    /// The output began repeating itself (with `stop_on_loop`).
    Repetition,
}

/// What [`Generator::generate`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub stop_reason: StopReason,
}

/// A loaded generator, ready to continue prompts.
pub struct Generator {
    model: Llama,
    tokenizer: Tokenizer,
    chat_template: Option<String>,
    template_tokens: TemplateTokens,
    eos_ids: Vec<u32>,
    device: Device,
}

impl Generator {
    /// Loads a GGUF file (or the first one in a folder), or a Hugging Face folder with
    /// `config.json`, safetensors and `tokenizer.json`, in the device's default precision.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_as(path, device, super::device::default_dtype(device))
    }

    /// [`Generator::load`] with the weights in `dtype`.
    pub fn load_as(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_with(path, device, dtype, WeightSource::Checkpoint)
    }

    /// [`Generator::load_as`] with the weights from `source`; random weights take a Hugging Face
    /// folder with `config.json` and `tokenizer.json`.
    pub fn load_with(path: &Path, device: &Device, dtype: DType, source: WeightSource) -> Result<Self> {
        match source {
            WeightSource::Checkpoint => Self::from_checkpoint(GeneratorCheckpoint::read(path, device)?, dtype, device),
            WeightSource::Random { .. } => {
                let model = llama::load_with(path, device, dtype, source)?;
                let tokenizer = load_tokenizer_file(&path.join("tokenizer.json"))?;
                let (chat_template, names) = read_tokenizer_config(path);
                Ok(Self::assemble(model, tokenizer, chat_template, names, device))
            }
        }
    }

    /// A generator of a checkpoint's weights in `dtype`.
    pub fn from_checkpoint(checkpoint: GeneratorCheckpoint, dtype: DType, device: &Device) -> Result<Self> {
        let GeneratorCheckpoint { config, tensors, tokenizer, chat_template, names, .. } = checkpoint;
        let model = Llama::load(VarBuilder::from_tensors(tensors, dtype, device), &config)?;
        Ok(Self::assemble(model, tokenizer, chat_template, names, device))
    }

    fn assemble(
        model: Llama,
        tokenizer: Tokenizer,
        chat_template: Option<String>,
        names: TokenNames,
        device: &Device,
    ) -> Self {
        let eos_ids = end_of_reply_ids(model.config(), &tokenizer, chat_template.as_deref());
        let template_tokens = template_tokens(model.config(), &tokenizer, &names, &eos_ids);
        Generator { model, tokenizer, chat_template, template_tokens, eos_ids, device: device.clone() }
    }

    /// Assembles a generator from parts (tests build tiny random ones this way).
    pub fn from_parts(
        model: Llama,
        tokenizer: Tokenizer,
        chat_template: Option<String>,
        eos_ids: Vec<u32>,
        device: &Device,
    ) -> Self {
        Generator {
            model,
            tokenizer,
            chat_template,
            template_tokens: TemplateTokens::default(),
            eos_ids,
            device: device.clone(),
        }
    }

    pub fn model(&self) -> &Llama {
        &self.model
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Token ids that end a reply; the first is the one training appends to answers.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Writes what `--random-init` needs to rebuild this generator's architecture elsewhere, without
    /// its weights: the Hugging Face files of [`write_hf_metadata`].
    pub fn save_shape(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|error| ModelError::Write { path: dir.to_owned(), error })?;
        let files = HfFiles {
            config: self.model.config(),
            tokenizer: &self.tokenizer,
            chat_template: self.chat_template.as_deref(),
            tokens: &self.template_tokens,
            eos_ids: &self.eos_ids,
            dtype: self.model.dtype(),
        };
        write_hf_metadata(dir, &files)
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    pub fn model_mut(&mut self) -> &mut Llama {
        &mut self.model
    }

    /// Loads a PEFT LoRA adapter onto the decoder.
    pub fn load_adapter(&mut self, dir: &Path) -> Result<LoraConfig> {
        lora::load(dir, &mut self.model, &self.device)
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids of `text` (special tokens written in the text are recognised; no BOS is added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode(text, false).map_err(|e| ModelError::Tokenize(e.to_string()))?.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| ModelError::Tokenize(e.to_string()))
    }

    /// Renders a conversation with the model's chat template, ready for the assistant's turn.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| ModelError::Unsupported("this model has no chat template".to_owned()))?;
        render_chat_template(template, messages, &self.template_tokens)
    }

    /// Continues `prompt_ids`. `on_text` receives each new piece of text as soon as it is
    /// complete (never half a UTF-8 character, never part of a stop string) and may stop.
    pub fn generate(
        &self,
        prompt_ids: &[u32],
        config: &GenerationConfig,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        if prompt_ids.is_empty() {
            return Err(ModelError::Tokenize("the prompt is empty".to_owned()));
        }
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut cache = KvCache::default();
        let mut input = Tensor::new(prompt_ids, &self.device)?.unsqueeze(0)?;
        let mut tokens = Vec::new();
        let mut emitted = 0usize; // bytes of `text` already given to the callback
        let longest_stop = config.stop.iter().map(String::len).max().unwrap_or(0);
        let mut stop_reason = StopReason::MaxNewTokens;
        let mut text = String::new();
        while tokens.len() < config.max_new_tokens {
            let mut last = self.model.next_token_logits(&input, &mut cache, None)?.get(0)?.to_dtype(DType::F32)?;
            if config.repetition_penalty != 1.0 && !tokens.is_empty() {
                let mut values = last.to_vec1::<f32>()?;
                penalise_repeats(&mut values, &tokens, config.repetition_penalty);
                last = Tensor::new(values, last.device())?;
            }
            let next = self.pick(&last, config, &mut rng)?;
            if self.eos_ids.contains(&next) {
                stop_reason = StopReason::EndOfSequence;
                break;
            }
            tokens.push(next);
            if config.stop_on_loop && repeating_tail(&tokens) {
                stop_reason = StopReason::Repetition;
                text = self.decode(&tokens)?;
                break;
            }
            text = self.decode(&tokens)?;
            if let Some(cut) = config.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(cut);
                stop_reason = StopReason::StopString;
                break;
            }
            // Hold back an incomplete character and anything that may still become a stop string.
            let mut ready = text.len().saturating_sub(longest_stop.saturating_sub(1));
            while !text.is_char_boundary(ready) {
                ready -= 1;
            }
            if text[..ready].ends_with('\u{fffd}') {
                ready = emitted.max(ready - '\u{fffd}'.len_utf8());
            }
            if ready > emitted {
                let piece = &text[emitted..ready];
                emitted = ready;
                if on_text(piece).is_break() {
                    stop_reason = StopReason::Cancelled;
                    break;
                }
            }
            input = Tensor::new(&[next], &self.device)?.unsqueeze(0)?;
        }
        if stop_reason != StopReason::Cancelled && text.len() > emitted {
            let _ = on_text(&text[emitted..]);
        }
        Ok(Generation { tokens, text, stop_reason })
    }

    fn pick(&self, logits: &Tensor, config: &GenerationConfig, rng: &mut StdRng) -> Result<u32> {
        if config.temperature <= 0.0 {
            return Ok(logits.argmax(D::Minus1)?.to_scalar::<u32>()?);
        }
        let probs = candle_nn::ops::softmax(&(logits / config.temperature)?, D::Minus1)?.to_vec1::<f32>()?;
        Ok(sample_top_p(&probs, config.top_p, rng))
    }
}

/// Samples an index from `probs`, keeping only the smallest set of most likely entries whose
/// probabilities reach `top_p`.
pub fn sample_top_p(probs: &[f32], top_p: f64, rng: &mut StdRng) -> u32 {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let mut kept = Vec::new();
    let mut total = 0.0f64;
    for &i in &order {
        kept.push(i);
        total += f64::from(probs[i]);
        if total >= top_p {
            break;
        }
    }
    let weights: Vec<f32> = kept.iter().map(|&i| probs[i]).collect();
    match WeightedIndex::new(&weights) {
        Ok(dist) => kept[dist.sample(rng)] as u32,
        Err(_) => order[0] as u32,
    }
}

/// The special-token strings a chat template may write (`bos_token`, `eos_token`), as
/// transformers passes them to `apply_chat_template`; empty when the model has none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateTokens {
    pub bos: String,
    pub eos: String,
}

/// Budget of template instructions per rendering: the templates of real models need a few
/// thousand for a long conversation; a template from a model folder cannot loop for ever.
const CHAT_TEMPLATE_FUEL: u64 = 2_000_000;

/// Renders a Hugging Face (Jinja) chat template for `messages`, with the generation prompt, in
/// the environment transformers gives templates: Python's string methods (`startswith`,
/// `split`, `strip`, ...), `tojson`, `raise_exception` and `strftime_now` (UTC).
pub fn render_chat_template(template: &str, messages: &[ChatMessage], tokens: &TemplateTokens) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_fuel(Some(CHAT_TEMPLATE_FUEL));
    env.add_function("raise_exception", |message: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
    });
    env.add_function("strftime_now", |format: String| -> std::result::Result<String, minijinja::Error> {
        let mut out = String::new();
        std::fmt::write(&mut out, format_args!("{}", chrono::Utc::now().format(&format))).map_err(|_| {
            minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, format!("bad strftime format {format:?}"))
        })?;
        Ok(out)
    });
    env.add_template("chat", template).map_err(|e| ModelError::Unsupported(format!("chat template: {e}")))?;
    let tmpl = env.get_template("chat").map_err(|e| ModelError::Unsupported(format!("chat template: {e}")))?;
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => true,
        bos_token => tokens.bos,
        eos_token => tokens.eos,
    })
    .map_err(|e| ModelError::Unsupported(format!("chat template: {e}")))
}

/// A generator checkpoint as read from disk: its config, every tensor under Hugging Face names
/// (dequantized to f32 from a GGUF file), the tokenizer, the chat template and the special-token
/// names. [`Generator::load`] builds on it; the exporter writes it back out, merged.
pub struct GeneratorCheckpoint {
    pub config: llama::Config,
    pub tensors: HashMap<String, Tensor>,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    names: TokenNames,
    /// The GGUF file's metadata, when the checkpoint is one (its `tokenizer.*` keys are what a
    /// GGUF export copies).
    pub gguf_metadata: Option<HashMap<String, gguf_file::Value>>,
}

impl GeneratorCheckpoint {
    /// Reads a GGUF file (or the first one in a folder), or a Hugging Face folder with
    /// `config.json`, safetensors and `tokenizer.json`.
    pub fn read(path: &Path, device: &Device) -> Result<Self> {
        match super::gguf_file_at(path) {
            Some(file) => {
                let (config, tensors, content) = llama::load_gguf(&file, device)?;
                let tokenizer = match path.is_dir().then(|| path.join("tokenizer.json")).filter(|p| p.is_file()) {
                    Some(json) => load_tokenizer_file(&json)?,
                    None => gguf_tokenizer::from_gguf(&content)?,
                };
                let chat_template =
                    content.metadata.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned();
                let names = TokenNames::default();
                Ok(GeneratorCheckpoint {
                    config,
                    tensors,
                    tokenizer,
                    chat_template,
                    names,
                    gguf_metadata: Some(content.metadata),
                })
            }
            None => {
                let (config, tensors) = llama::read_hf_folder(path, device)?;
                let tokenizer = load_tokenizer_file(&path.join("tokenizer.json"))?;
                let (chat_template, names) = read_tokenizer_config(path);
                Ok(GeneratorCheckpoint { config, tensors, tokenizer, chat_template, names, gguf_metadata: None })
            }
        }
    }

    /// The ids that end a reply, as the generator uses them.
    pub fn end_of_reply_ids(&self) -> Vec<u32> {
        end_of_reply_ids(&self.config, &self.tokenizer, self.chat_template.as_deref())
    }

    /// `bos_token` and `eos_token` as the chat template sees them.
    pub fn template_tokens(&self) -> TemplateTokens {
        template_tokens(&self.config, &self.tokenizer, &self.names, &self.end_of_reply_ids())
    }
}

/// The config's end-of-sequence ids, then the end-of-turn markers the chat template uses (or, with
/// neither, the first marker the vocabulary has): the first is the one training appends to answers.
fn end_of_reply_ids(config: &llama::Config, tokenizer: &Tokenizer, chat_template: Option<&str>) -> Vec<u32> {
    let mut eos_ids: Vec<u32> = config.eos_token_ids();
    for marker in ["<|im_end|>", "<|eot_id|>", "<|eom_id|>", "</s>", "<|endoftext|>"] {
        if let Some(id) = tokenizer.token_to_id(marker)
            && !eos_ids.contains(&id)
            && (chat_template.is_some_and(|t| t.contains(marker)) || eos_ids.is_empty())
        {
            eos_ids.push(id);
        }
    }
    eos_ids
}

fn template_tokens(
    config: &llama::Config,
    tokenizer: &Tokenizer,
    names: &TokenNames,
    eos_ids: &[u32],
) -> TemplateTokens {
    let token = |name: &Option<String>, id: Option<u32>| {
        name.clone().or_else(|| id.and_then(|id| tokenizer.id_to_token(id))).unwrap_or_default()
    };
    TemplateTokens { bos: token(&names.bos, config.bos_token_id), eos: token(&names.eos, eos_ids.first().copied()) }
}

/// What a Hugging Face generator folder says beside its weights.
pub struct HfFiles<'a> {
    pub config: &'a llama::Config,
    pub tokenizer: &'a Tokenizer,
    pub chat_template: Option<&'a str>,
    pub tokens: &'a TemplateTokens,
    pub eos_ids: &'a [u32],
    pub dtype: DType,
}

/// Writes a Hugging Face generator folder's `config.json` (of the model's family),
/// `generation_config.json`, `tokenizer.json` and `tokenizer_config.json` (the chat template and
/// the special tokens), as transformers reads them.
pub fn write_hf_metadata(dir: &Path, files: &HfFiles<'_>) -> Result<()> {
    let write = |name: &str, value: serde_json::Value| {
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap_or_default())
            .map_err(|error| ModelError::Write { path, error })
    };
    let dtype = match files.dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    };
    let mut config = serde_json::to_value(files.config).unwrap_or_default();
    if let Some(object) = config.as_object_mut() {
        object.insert("architectures".into(), serde_json::json!([files.config.family().architecture()]));
        object.insert("torch_dtype".into(), dtype.into());
        object.insert("eos_token_id".into(), serde_json::json!(files.eos_ids));
    }
    write("config.json", config)?;
    write(
        "generation_config.json",
        serde_json::json!({ "bos_token_id": files.config.bos_token_id, "eos_token_id": files.eos_ids, "do_sample": false }),
    )?;
    let tokenizer = files
        .tokenizer
        .to_string(false)
        .map_err(|e| ModelError::Tokenize(format!("cannot serialise the tokenizer: {e}")))?;
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, tokenizer).map_err(|error| ModelError::Write { path, error })?;
    let name = |token: &str| (!token.is_empty()).then(|| token.to_owned());
    write(
        "tokenizer_config.json",
        serde_json::json!({
            "chat_template": files.chat_template,
            "bos_token": name(&files.tokens.bos),
            "eos_token": name(&files.tokens.eos),
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": false,
            "model_max_length": files.config.max_position_embeddings,
        }),
    )
}

/// The Hugging Face files of a checkpoint (its merged weights written beside them), in `dtype`.
pub fn write_hf_files(dir: &Path, checkpoint: &GeneratorCheckpoint, dtype: DType) -> Result<()> {
    let eos_ids = checkpoint.end_of_reply_ids();
    let tokens = checkpoint.template_tokens();
    let files = HfFiles {
        config: &checkpoint.config,
        tokenizer: &checkpoint.tokenizer,
        chat_template: checkpoint.chat_template.as_deref(),
        tokens: &tokens,
        eos_ids: &eos_ids,
        dtype,
    };
    write_hf_metadata(dir, &files)
}

/// `bos_token` and `eos_token` as a folder's `tokenizer_config.json` names them.
#[derive(Debug, Default)]
struct TokenNames {
    bos: Option<String>,
    eos: Option<String>,
}

/// `chat_template` and the special-token names from `tokenizer_config.json`, when the folder has
/// one. (Token names are strings there, or `{"content": ...}` objects in older files.)
fn read_tokenizer_config(dir: &Path) -> (Option<String>, TokenNames) {
    let Some(config) = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
    else {
        return (None, TokenNames::default());
    };
    let name = |key: &str| {
        let value = config.get(key)?;
        value.as_str().or_else(|| value.get("content").and_then(|c| c.as_str())).map(str::to_owned)
    };
    let template = config.get("chat_template").and_then(|t| t.as_str()).map(str::to_owned);
    (template, TokenNames { bos: name("bos_token"), eos: name("eos_token") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_is_a_long_run_said_twice_or_a_short_one_four_times() {
        let sentence: Vec<u32> = (10..22).collect();
        let mut tokens: Vec<u32> = vec![1, 2, 3];
        tokens.extend(&sentence);
        assert!(!repeating_tail(&tokens));
        tokens.extend(&sentence);
        assert!(repeating_tail(&tokens), "a 12-token sentence said twice");
        assert!(!repeating_tail(&[5, 6, 5, 6, 5, 6]), "a short run three times is still speech");
        assert!(repeating_tail(&[5, 6, 5, 6, 5, 6, 5, 6]));
        assert!(repeating_tail(&[9, 9, 9, 9]));
        assert!(!repeating_tail(&[1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 9]));
    }

    #[test]
    fn the_repetition_penalty_lowers_seen_tokens_once_each() {
        let mut logits = vec![2.0, -1.0, 3.0, 0.5];
        penalise_repeats(&mut logits, &[0, 1, 0], 2.0);
        assert_eq!(logits, vec![1.0, -2.0, 3.0, 0.5], "positive divided, negative multiplied, once per token");
        let mut same = vec![2.0, -1.0];
        penalise_repeats(&mut same, &[0, 1, 7], 1.0);
        assert_eq!(same, vec![2.0, -1.0]);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let probs = [0.05f32, 0.6, 0.3, 0.05];
        let mut rng = StdRng::seed_from_u64(7);
        let picks: Vec<u32> = (0..500).map(|_| sample_top_p(&probs, 0.85, &mut rng)).collect();
        assert!(picks.iter().all(|p| *p == 1 || *p == 2), "only the two most likely tokens reach 0.85");
        assert!(picks.contains(&1) && picks.contains(&2));
        let mut rng = StdRng::seed_from_u64(7);
        assert!((0..50).all(|_| sample_top_p(&probs, 0.1, &mut rng) == 1));
    }

    #[test]
    fn chat_template_renders_roles_and_generation_prompt() {
        let template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
        let none = TemplateTokens::default();
        let rendered = render_chat_template(template, &[ChatMessage::new("user", "hi")], &none).unwrap();
        assert_eq!(rendered, "<user>hi\n<assistant>");
        let failing = "{{ raise_exception('roles must alternate') }}";
        let error = render_chat_template(failing, &[], &none).unwrap_err().to_string();
        assert!(error.contains("roles must alternate"), "{error}");
        let endless = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
        assert!(render_chat_template(endless, &[], &none).is_err(), "a template's work is bounded");
    }
}
