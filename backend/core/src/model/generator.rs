//! The generator: a Llama decoder with its tokenizer and chat template, and text generation with
//! a KV cache — greedy or sampled (temperature, top-p, seed), stopping on EOS, stop strings or a
//! token budget, streaming each piece of text to a callback that may stop it.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
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
    /// Constrained decoding: when not empty, only these tokens can be generated (every other
    /// token's logit is dropped before picking; end of sequence too unless listed).
    pub allowed_tokens: Vec<u32>,
    /// Constrained decoding of a list: see [`LineRule`].
    pub line_rule: Option<LineRule>,
}

/// A list held to its form while it is decoded: a line may end (a token holding `line_break`, or
/// the end of the sequence) only once it ends with `end` — "?" for questions — and has content,
/// and generation stops once `lines` such lines are complete. A llama.cpp-style grammar for
/// "n questions, one a line", as a token mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineRule {
    pub lines: usize,
    pub end: char,
    pub line_break: char,
}

impl LineRule {
    /// `lines` questions, one a line.
    pub fn questions(lines: usize) -> Self {
        LineRule { lines, end: '?', line_break: '\n' }
    }

    /// Whether `line` (after the last break) may end here.
    fn may_end(&self, line: &str) -> bool {
        line.trim_end().ends_with(self.end) && line.chars().any(char::is_alphanumeric)
    }

    /// [`LineRule::may_end`] of `line` followed by `more`, without joining them (this runs for
    /// every line-break token at every step); `line_has_words` is whether `line` has a word.
    fn may_end_after(&self, line: &str, line_has_words: bool, more: &str) -> bool {
        let tail = more.trim_end();
        let ends = if tail.is_empty() { line.trim_end().ends_with(self.end) } else { tail.ends_with(self.end) };
        ends && (line_has_words || more.chars().any(char::is_alphanumeric))
    }

    /// The complete lines of `text`, and the byte where the last of the first `lines` ends.
    fn complete(&self, text: &str) -> (usize, Option<usize>) {
        let mut count = 0;
        let mut start = 0;
        for (at, c) in text.char_indices() {
            if c == self.line_break {
                if self.may_end(&text[start..at]) {
                    count += 1;
                    if count == self.lines {
                        return (count, Some(at));
                    }
                }
                start = at + c.len_utf8();
            }
        }
        (count, None)
    }
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
            allowed_tokens: Vec::new(),
            line_rule: None,
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

/// The tokens whose text holds a line break, each with its text before it.
type LineBreakTokens = std::sync::Arc<Vec<(u32, String)>>;

/// A loaded generator, ready to continue prompts.
pub struct Generator {
    model: Llama,
    tokenizer: Tokenizer,
    chat_template: Option<String>,
    template_tokens: TemplateTokens,
    eos_ids: Vec<u32>,
    device: Device,
    /// Per line-break character, the tokens whose text holds it, each with its text before it
    /// (read from the vocabulary on first use, for [`LineRule`]).
    line_breaks: std::sync::Mutex<std::collections::HashMap<char, LineBreakTokens>>,
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
        Generator {
            model,
            tokenizer,
            chat_template,
            template_tokens,
            eos_ids,
            device: device.clone(),
            line_breaks: Default::default(),
        }
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
            line_breaks: Default::default(),
        }
    }

    /// The tokens whose text holds `line_break`, each with its text before the first one.
    fn line_break_tokens(&self, line_break: char) -> Result<LineBreakTokens> {
        let mut cached = self.line_breaks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tokens) = cached.get(&line_break) {
            return Ok(tokens.clone());
        }
        let mut tokens = Vec::new();
        for id in 0..self.tokenizer.get_vocab_size(true) as u32 {
            let text = self.tokenizer.decode(&[id], false).map_err(|e| ModelError::Tokenize(e.to_string()))?;
            if let Some((before, _)) = text.split_once(line_break) {
                tokens.push((id, before.to_owned()));
            }
        }
        let tokens = std::sync::Arc::new(tokens);
        cached.insert(line_break, tokens.clone());
        Ok(tokens)
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
        let mut row = Continuation::new(config);
        let mut cache = KvCache::default();
        let mut input = Tensor::new(prompt_ids, &self.device)?.unsqueeze(0)?;
        let mut emitted = 0usize; // bytes of `text` already given to the callback
        let longest_stop = config.stop.iter().map(String::len).max().unwrap_or(0);
        while row.stop_reason.is_none() {
            let logits = self.model.next_token_logits(&input, &mut cache, None)?;
            let next = row.step(self, logits.get(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)?;
            if row.stop_reason.is_some() {
                break;
            }
            // Hold back an incomplete character and anything that may still become a stop string.
            let text = &row.text;
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
                    row.stop_reason = Some(StopReason::Cancelled);
                    break;
                }
            }
            input = Tensor::new(&[next], &self.device)?.unsqueeze(0)?;
        }
        let generation = row.finish();
        if generation.stop_reason != StopReason::Cancelled && generation.text.len() > emitted {
            let _ = on_text(&generation.text[emitted..]);
        }
        Ok(generation)
    }

    /// Continues every prompt of `prompts` with `config`, several at a time: the prompts are
    /// prefilled together (padded, the padding masked), consecutive prompts sharing a long prefix
    /// (one passage's questions) prefill it once, and all are decoded together, each stopping on
    /// its own. The same tokens as [`Generator::generate`] one prompt at a time (greedy, or
    /// sampled from the same seed), up to float rounding between batch shapes.
    pub fn generate_batch(&self, prompts: &[Vec<u32>], config: &GenerationConfig) -> Result<Vec<Generation>> {
        if prompts.iter().any(Vec::is_empty) {
            return Err(ModelError::Tokenize("a prompt is empty".to_owned()));
        }
        if prompts.len() == 1 || self.model.config().window().is_some() || config.max_new_tokens == 0 {
            // One prompt, or a windowed model (whose mask is by position): one at a time.
            return prompts.iter().map(|prompt| self.generate(prompt, config, |_| ControlFlow::Continue(()))).collect();
        }
        let (group_of, prefix) = shared_prefixes(prompts);
        let mut continuations: Vec<Continuation<'_>> = prompts.iter().map(|_| Continuation::new(config)).collect();
        let mut running = Running::default();
        let mut next = 0; // the first prompt not yet admitted
        while next < prompts.len() || !running.rows.is_empty() {
            // Admit whole prefix groups while rows are free (a group larger than the batch is split).
            let mut admitted = Vec::new();
            while next < prompts.len() {
                let end = (next..prompts.len()).find(|&e| group_of[e] != group_of[next]).unwrap_or(prompts.len());
                let free = MAX_BATCH_ROWS - running.rows.len() - admitted.len();
                // A group that does not fit waits for rows to free, unless half the rows are
                // free: then its first rows go now (their prefix is prefilled again for the
                // rest), rather than decoding a half-empty batch until every row has finished.
                let take = if end - next <= free {
                    end - next
                } else if (running.rows.is_empty() && admitted.is_empty()) || free >= MAX_BATCH_ROWS / 2 {
                    free
                } else {
                    0
                };
                if take == 0 {
                    break;
                }
                admitted.extend(next..next + take);
                next += take;
            }
            // Prefilled a few rows at a time: one pass over 64 HaluEval prompts took 1.7× as long as
            // four passes over 16 (2-core CPU), while decoding gains from every row it holds.
            for rows in admitted.chunks(PREFILL_ROWS) {
                let fresh = self.prefill(prompts, rows, &group_of, &prefix)?;
                running.merge(fresh)?;
            }
            running.step(self, &mut continuations)?;
        }
        Ok(continuations.into_iter().map(Continuation::finish).collect())
    }

    /// Prefills the prompts `rows` (consecutive; those of one group share its prefix), ready to
    /// decode: their cache, each row's visible columns and next position, and their logits.
    fn prefill(&self, prompts: &[Vec<u32>], rows: &[usize], group_of: &[usize], prefix: &[usize]) -> Result<Running> {
        let mut cache = KvCache::default();
        let mut visible: Vec<Vec<bool>> = vec![Vec::new(); rows.len()];
        // A group's prefix is prefilled once when every admitted prompt has one (a prompt of one
        // token has none: then all are prefilled whole).
        let shared = rows.iter().all(|&b| prefix[b] > 0);
        if shared {
            let mut firsts: Vec<usize> = Vec::new();
            let mut row_group = Vec::with_capacity(rows.len());
            for &b in rows {
                if firsts.last().is_none_or(|&f| group_of[f] != group_of[b]) {
                    firsts.push(b);
                }
                row_group.push(firsts.len() - 1);
            }
            let group_prefixes: Vec<&[u32]> = firsts.iter().map(|&b| &prompts[b][..prefix[b]]).collect();
            let (ids, group_visible) = padded(&group_prefixes, &self.device)?;
            self.model.hidden_states_at(&ids, &mut cache, flat(&group_visible), &vec![0; firsts.len()])?;
            cache.select_rows(&row_group)?;
            visible = row_group.iter().map(|&g| group_visible[g].clone()).collect();
        }
        let starts: Vec<usize> = rows.iter().map(|&b| if shared { prefix[b] } else { 0 }).collect();
        let suffixes: Vec<&[u32]> = rows.iter().zip(&starts).map(|(&b, &start)| &prompts[b][start..]).collect();
        let (ids, suffix_visible) = padded(&suffixes, &self.device)?;
        for (row, more) in visible.iter_mut().zip(&suffix_visible) {
            row.extend(more);
        }
        let hidden = self.model.hidden_states_at(&ids, &mut cache, flat(&visible), &starts)?;
        let last: Vec<Tensor> = suffixes
            .iter()
            .enumerate()
            .map(|(i, s)| hidden.narrow(0, i, 1)?.narrow(1, s.len() - 1, 1))
            .collect::<candle_core::Result<_>>()?;
        let logits = self.model.logits(&Tensor::cat(&last, 0)?.squeeze(1)?)?;
        let rows = rows
            .iter()
            .zip(visible)
            .zip(starts.iter().zip(&suffixes))
            .map(|((&prompt, visible), (&start, suffix))| RunningRow {
                prompt,
                visible,
                next_position: start + suffix.len(),
            })
            .collect();
        Ok(Running { cache, rows, logits: Some(logits) })
    }
}

/// The sequences being decoded side by side: their KV cache (one row each, columns padded to one
/// length), which columns each row sees, and the logits of each row's next token.
#[derive(Default)]
struct Running {
    cache: KvCache,
    rows: Vec<RunningRow>,
    logits: Option<Tensor>,
}

struct RunningRow {
    /// Index of its prompt.
    prompt: usize,
    visible: Vec<bool>,
    next_position: usize,
}

impl Running {
    /// Adds `fresh`'s rows after these (the shorter side's cache padded with columns no row sees).
    fn merge(&mut self, fresh: Running) -> Result<()> {
        if self.rows.is_empty() {
            *self = fresh;
            return Ok(());
        }
        let (old_len, new_len) = (self.cache.len(), fresh.cache.len());
        let columns = old_len.max(new_len);
        self.cache.append_rows(fresh.cache, columns)?;
        for row in &mut self.rows {
            row.visible.resize(columns, false);
        }
        self.rows.extend(fresh.rows.into_iter().map(|mut row| {
            row.visible.resize(columns, false);
            row
        }));
        self.logits = match (self.logits.take(), fresh.logits) {
            (Some(a), Some(b)) => Some(Tensor::cat(&[a, b], 0)?),
            (a, b) => a.or(b),
        };
        Ok(())
    }

    /// Picks every row's next token from its logits, lets the finished rows go, and runs the others
    /// one position on.
    fn step(&mut self, generator: &Generator, continuations: &mut [Continuation<'_>]) -> Result<()> {
        let Some(logits) = self.logits.take() else { return Ok(()) };
        let values = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut picked = Vec::with_capacity(self.rows.len());
        for (row, row_logits) in self.rows.iter().zip(values) {
            picked.push(continuations[row.prompt].step(generator, row_logits)?);
        }
        let still: Vec<usize> =
            (0..self.rows.len()).filter(|&i| continuations[self.rows[i].prompt].stop_reason.is_none()).collect();
        if still.is_empty() {
            *self = Running::default();
            return Ok(());
        }
        if still.len() < self.rows.len() {
            self.cache.select_rows(&still)?;
            let mut rows = std::mem::take(&mut self.rows).into_iter().map(Some).collect::<Vec<_>>();
            self.rows = still.iter().filter_map(|&i| rows[i].take()).collect();
            picked = still.iter().map(|&i| picked[i]).collect();
        }
        let mut mask = Vec::new();
        let mut positions = Vec::with_capacity(self.rows.len());
        for row in &mut self.rows {
            row.visible.push(true);
            mask.extend(&row.visible);
            positions.push(row.next_position);
            row.next_position += 1;
        }
        let ids = Tensor::from_vec(picked, (self.rows.len(), 1), &generator.device)?;
        let hidden = generator.model.hidden_states_at(&ids, &mut self.cache, mask, &positions)?;
        self.logits = Some(generator.model.logits(&hidden.squeeze(1)?)?);
        Ok(())
    }
}

/// The most prompts [`Generator::generate_batch`] decodes side by side (more wait for the next
/// batch). A decoding step reads every weight once for all its rows: 64 HaluEval answers decoded
/// 64 rows at a time took about 70% of the time 16 rows at a time took (2-core CPU).
pub const MAX_BATCH_ROWS: usize = 64;

/// The most prompts prefilled in one pass.
const PREFILL_ROWS: usize = 16;

/// The fewest tokens consecutive prompts must share for their prefix to be prefilled once.
const MIN_SHARED_PREFIX: usize = 32;

/// Groups consecutive prompts that share at least [`MIN_SHARED_PREFIX`] tokens with their group's
/// first: each prompt's group, and how many of its tokens are the group's shared prefix (every
/// prompt keeps one token of its own; a prompt alone is all prefix but its last token).
fn shared_prefixes(prompts: &[Vec<u32>]) -> (Vec<usize>, Vec<usize>) {
    let common = |a: &[u32], b: &[u32]| a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let mut group_of = Vec::with_capacity(prompts.len());
    let mut prefix = vec![0; prompts.len()];
    let (mut first, mut group) = (0, 0);
    for b in 0..prompts.len() {
        if b > first && common(&prompts[first], &prompts[b]) < MIN_SHARED_PREFIX {
            first = b;
            group += 1;
        }
        group_of.push(group);
    }
    let mut b = 0;
    while b < prompts.len() {
        let end = (b..prompts.len()).find(|&e| group_of[e] != group_of[b]).unwrap_or(prompts.len());
        let shared = (b..end).map(|e| common(&prompts[b], &prompts[e])).min().unwrap_or(0);
        let own = (b..end).map(|e| prompts[e].len() - 1).min().unwrap_or(0);
        prefix[b..end].iter_mut().for_each(|p| *p = shared.min(own));
        b = end;
    }
    (group_of, prefix)
}

/// Token rows right-padded to one length (`(rows, longest)` ids) and which entries are real.
fn padded(rows: &[&[u32]], device: &Device) -> Result<(Tensor, Vec<Vec<bool>>)> {
    let longest = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * longest);
    let mut visible = Vec::with_capacity(rows.len());
    for row in rows {
        ids.extend(row.iter().copied().chain(std::iter::repeat_n(0, longest - row.len())));
        visible.push((0..longest).map(|j| j < row.len()).collect());
    }
    Ok((Tensor::from_vec(ids, (rows.len(), longest), device)?, visible))
}

fn flat(rows: &[Vec<bool>]) -> Vec<bool> {
    rows.iter().flatten().copied().collect()
}

/// One sequence being generated: its tokens and text so far, and why it stopped once it has.
/// One place for the rules both [`Generator::generate`] and [`Generator::generate_batch`] follow.
struct Continuation<'c> {
    config: &'c GenerationConfig,
    rng: StdRng,
    tokens: Vec<u32>,
    text: String,
    stop_reason: Option<StopReason>,
}

impl<'c> Continuation<'c> {
    fn new(config: &'c GenerationConfig) -> Self {
        let stop_reason = (config.max_new_tokens == 0).then_some(StopReason::MaxNewTokens);
        Continuation {
            config,
            rng: StdRng::seed_from_u64(config.seed),
            tokens: Vec::new(),
            text: String::new(),
            stop_reason,
        }
    }

    /// Picks the next token from the vocabulary's `logits` and takes it (or stops); returns it.
    fn step(&mut self, generator: &Generator, mut logits: Vec<f32>) -> Result<u32> {
        let config = self.config;
        penalise_repeats(&mut logits, &self.tokens, config.repetition_penalty);
        if !config.allowed_tokens.is_empty() {
            let mut held = vec![f32::NEG_INFINITY; logits.len()];
            for &token in &config.allowed_tokens {
                if let Some(&logit) = logits.get(token as usize) {
                    held[token as usize] = logit;
                }
            }
            logits = held;
        }
        if let Some(rule) = config.line_rule {
            // A line ends only once it is a whole item of the list.
            let line = self.text.rsplit(rule.line_break).next().unwrap_or("");
            let line_has_words = line.chars().any(char::is_alphanumeric);
            for (token, before) in generator.line_break_tokens(rule.line_break)?.iter() {
                if !rule.may_end_after(line, line_has_words, before)
                    && let Some(logit) = logits.get_mut(*token as usize)
                {
                    *logit = f32::NEG_INFINITY;
                }
            }
            if !rule.may_end(line) && !line.trim().is_empty() {
                for &eos in &generator.eos_ids {
                    if let Some(logit) = logits.get_mut(eos as usize) {
                        *logit = f32::NEG_INFINITY;
                    }
                }
            }
        }
        let next = pick(&logits, config, &mut self.rng);
        if generator.eos_ids.contains(&next) {
            self.stop_reason = Some(StopReason::EndOfSequence);
            return Ok(next);
        }
        self.tokens.push(next);
        self.text = generator.decode(&self.tokens)?;
        let listed = config.line_rule.and_then(|rule| rule.complete(&self.text).1);
        if let Some(cut) = listed {
            self.text.truncate(cut);
            self.stop_reason = Some(StopReason::StopString);
        } else if config.stop_on_loop && repeating_tail(&self.tokens) {
            self.stop_reason = Some(StopReason::Repetition);
        } else if let Some(cut) = config.stop.iter().filter_map(|s| self.text.find(s.as_str())).min() {
            self.text.truncate(cut);
            self.stop_reason = Some(StopReason::StopString);
        } else if self.tokens.len() >= config.max_new_tokens {
            self.stop_reason = Some(StopReason::MaxNewTokens);
        }
        Ok(next)
    }

    fn finish(self) -> Generation {
        Generation {
            tokens: self.tokens,
            text: self.text,
            stop_reason: self.stop_reason.unwrap_or(StopReason::MaxNewTokens),
        }
    }
}

/// The next token from `logits`: the first most likely (greedy), or sampled at the temperature
/// from the top-p nucleus.
fn pick(logits: &[f32], config: &GenerationConfig, rng: &mut StdRng) -> u32 {
    if config.temperature <= 0.0 {
        let mut best = 0;
        for (i, &value) in logits.iter().enumerate() {
            if value > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let scaled: Vec<f64> = logits.iter().map(|&l| f64::from(l) / config.temperature).collect();
    let top = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = scaled.iter().map(|&l| (l - top).exp()).collect();
    let total: f64 = exps.iter().sum();
    let probs: Vec<f32> = exps.iter().map(|&e| (e / total) as f32).collect();
    sample_top_p(&probs, config.top_p, rng)
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
    fn consecutive_prompts_sharing_a_long_prefix_are_grouped() {
        let passage: Vec<u32> = (0..40).collect();
        let with = |tail: &[u32]| passage.iter().chain(tail).copied().collect::<Vec<u32>>();
        let prompts = vec![with(&[50, 51]), with(&[52]), (100..140).collect(), with(&[53, 54, 55]), passage.clone()];
        let (groups, prefix) = shared_prefixes(&prompts);
        assert_eq!(groups, [0, 0, 1, 2, 2]);
        // The first two share the passage; a prompt alone keeps its last token; the last group's
        // second prompt is the passage itself, so the shared prefix leaves it one token.
        assert_eq!(prefix, [40, 40, 39, 39, 39]);
    }

    /// Two rows side by side, one joining while the other runs: each row's logits are those of
    /// its sequence alone, whichever cache was padded to the other's length.
    #[test]
    fn rows_joined_mid_run_see_only_their_own_columns() {
        let (_, generator, _, _) = crate::train::test_models::tiny_models(DType::F32, 11);
        let alone = |tokens: &[u32]| -> Vec<f32> {
            let ids = Tensor::new(tokens, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let logits = generator.model.next_token_logits(&ids, &mut KvCache::default(), None).unwrap();
            logits.get(0).unwrap().to_vec1::<f32>().unwrap()
        };
        let close = |a: &[f32], b: &[f32], what: &str| {
            let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(diff < 1e-4, "{what}: differs by {diff}");
        };
        for order in [[0usize, 1], [1, 0]] {
            let prompts: Vec<Vec<u32>> = vec![(0..40).map(|i| 4 + i % 15).collect(), vec![5, 6, 7]];
            let (groups, prefix) = shared_prefixes(&prompts);
            let config = GenerationConfig { max_new_tokens: 8, ..GenerationConfig::default() };
            let mut continuations: Vec<Continuation<'_>> = prompts.iter().map(|_| Continuation::new(&config)).collect();
            let mut running = generator.prefill(&prompts, &[order[0]], &groups, &prefix).unwrap();
            running.step(&generator, &mut continuations).unwrap();
            running.merge(generator.prefill(&prompts, &[order[1]], &groups, &prefix).unwrap()).unwrap();
            for _ in 0..3 {
                running.step(&generator, &mut continuations).unwrap();
                let logits = running.logits.as_ref().unwrap().to_vec2::<f32>().unwrap();
                for (row, logits) in running.rows.iter().zip(&logits) {
                    let mut tokens = prompts[row.prompt].clone();
                    tokens.extend(&continuations[row.prompt].tokens);
                    close(
                        logits,
                        &alone(&tokens),
                        &format!("prompt {} after {:?}", row.prompt, continuations[row.prompt].tokens),
                    );
                }
            }
        }
    }

    #[test]
    fn batched_generation_gives_what_one_prompt_at_a_time_gives() {
        let (_, generator, _, _) = crate::train::test_models::tiny_models(DType::F32, 11);
        let passage: Vec<u32> = (0..36).map(|i| 4 + (i * 7 % 15)).collect();
        let with = |tail: &[u32]| passage.iter().chain(tail).copied().collect::<Vec<u32>>();
        // Two questions about one passage (its prefix prefilled once), a short prompt, and
        // prompts of other lengths, so rows stop at different steps.
        let mut prompts =
            vec![with(&[15, 16, 5]), with(&[15, 10, 11, 12, 13]), vec![9, 5, 6], with(&[17]), (4..18).collect()];
        // More prompts than rows: later ones join the batch as earlier ones finish.
        // Short ones and long ones, so that either side of a merge can be the shorter.
        let rows = MAX_BATCH_ROWS as u32;
        prompts.extend((0..rows - 2).map(|i| {
            let len = if i % 3 == 0 { 70 + i % 30 } else { 3 + i % 7 };
            (0..len).map(|j| 4 + (i * 5 + j * 3) % 15).collect::<Vec<u32>>()
        }));
        // A group of one passage's questions larger than the batch, after the others: its first
        // rows join as soon as half the rows are free, the rest later, the prefix again for them.
        prompts.extend((0..rows + 4).map(|i| with(&[5 + i % 9, 6 + i % 5, 4 + i % 3])));
        assert!(prompts.len() > MAX_BATCH_ROWS);
        let configs = [
            GenerationConfig { max_new_tokens: 14, ..GenerationConfig::default() },
            GenerationConfig {
                max_new_tokens: 20,
                repetition_penalty: 1.3,
                stop_on_loop: true,
                stop: vec!["park".into()],
                ..GenerationConfig::default()
            },
            GenerationConfig {
                max_new_tokens: 12,
                temperature: 0.9,
                top_p: 0.9,
                seed: 5,
                ..GenerationConfig::default()
            },
            GenerationConfig { max_new_tokens: 3, allowed_tokens: vec![6, 9, 13], ..GenerationConfig::default() },
            GenerationConfig {
                max_new_tokens: 16,
                line_rule: Some(LineRule { lines: 2, end: '?', line_break: '.' }),
                ..GenerationConfig::default()
            },
        ];
        // With trainable adapters (the cache concatenated, as on a gradient's path) and with them
        // merged into frozen weights (each new position written into the cache's spare columns).
        let mut merged = crate::train::test_models::tiny_models(DType::F32, 11).1;
        crate::model::lora::merge(merged.model_mut()).unwrap();
        let mut stops = std::collections::HashSet::new();
        for (generator, config) in [&generator, &merged].into_iter().flat_map(|g| configs.iter().map(move |c| (g, c))) {
            let batch = generator.generate_batch(&prompts, config).unwrap();
            for (prompt, batched) in prompts.iter().zip(&batch) {
                let alone = generator.generate(prompt, config, |_| ControlFlow::Continue(())).unwrap();
                assert_eq!(&alone, batched, "prompt {prompt:?} with {config:?}");
                stops.insert(format!("{:?}", alone.stop_reason));
            }
        }
        assert!(stops.len() >= 2, "the rows stopped for different reasons: {stops:?}");
    }

    /// A list held to its form: no line ends before it ends with the rule's mark, and decoding stops
    /// once the lines asked for are complete — where free decoding of the same prompts breaks lines
    /// anywhere.
    #[test]
    fn a_line_rule_ends_lines_only_after_their_mark_and_stops_at_the_count() {
        let (_, generator, _, _) = crate::train::test_models::tiny_models(DType::F32, 7);
        // "." is the line break here (the tiny vocabulary has no newline), "?" the mark.
        let rule = LineRule { lines: 2, end: '?', line_break: '.' };
        let (mut broke_freely, mut held_lines) = (false, 0);
        for seed in 0..16u32 {
            // Sampled hot, so that the tiny model writes both marks and breaks.
            let free =
                GenerationConfig { max_new_tokens: 40, temperature: 1.5, seed: seed.into(), ..Default::default() };
            let held = GenerationConfig { line_rule: Some(rule), ..free.clone() };
            let prompt: Vec<u32> = (0..6).map(|i| 4 + (seed * 5 + i * 3) % 15).collect();
            let generation = generator.generate(&prompt, &held, |_| ControlFlow::Continue(())).unwrap();
            held_lines += rule.complete(&format!("{}.", generation.text)).0;
            let lines: Vec<&str> = generation.text.split('.').collect();
            for line in &lines[..lines.len() - 1] {
                assert!(line.trim_end().ends_with('?'), "{:?} ends a line early", generation.text);
            }
            if generation.stop_reason == StopReason::StopString {
                assert_eq!(lines.len(), 2, "stopped at the second complete line: {:?}", generation.text);
            }
            let alone = generator.generate(&prompt, &free, |_| ControlFlow::Continue(())).unwrap();
            broke_freely |= alone.text.split('.').rev().skip(1).any(|l| !l.trim_end().ends_with('?'));
        }
        assert!(broke_freely, "the rule held something the free model would not have done");
        assert!(held_lines > 0, "held, the model still wrote whole lines");
        for (line, more) in
            [("1. Why", "?"), ("1. Why?", "  "), ("1. Why? ", ""), ("", "?"), ("", " A?"), ("1. A", " b")]
        {
            let joined = format!("{line}{more}");
            let has_words = line.chars().any(char::is_alphanumeric);
            assert_eq!(rule.may_end_after(line, has_words, more), rule.may_end(&joined), "{joined:?}");
        }
        let rule = LineRule::questions(3);
        assert_eq!(rule.complete("1. A?\nnot one\n2. B?\n3. C?\n4. D?"), (3, Some(25)));
        assert_eq!(rule.complete("?\n1. A?"), (0, None), "a bare mark is no line");
    }

    /// Constrained decoding: only the allowed tokens come out, and each is the most likely of them.
    #[test]
    fn allowed_tokens_hold_the_output_to_the_best_of_them() {
        let (_, generator, _, _) = crate::train::test_models::tiny_models(DType::F32, 3);
        let prompt: Vec<u32> = vec![4, 8, 15, 16];
        let mut cache = KvCache::default();
        let input = Tensor::new(prompt.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits: Vec<f32> =
            generator.model.next_token_logits(&input, &mut cache, None).unwrap().get(0).unwrap().to_vec1().unwrap();
        // The free choice (which may be the end of the sequence: then it emits no token).
        let free = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap() as u32;
        // Two tokens that are neither the free choice nor an end: the better of the two comes out.
        let others: Vec<u32> =
            (4..logits.len() as u32).filter(|&t| t != free && !generator.eos_ids().contains(&t)).take(2).collect();
        let best = *others.iter().max_by(|&&a, &&b| logits[a as usize].total_cmp(&logits[b as usize])).unwrap();
        let config = GenerationConfig { max_new_tokens: 1, allowed_tokens: others.clone(), ..Default::default() };
        let held = generator.generate(&prompt, &config, |_| ControlFlow::Continue(())).unwrap();
        assert_eq!(held.tokens, [best], "free choice {free}, allowed {others:?}");
        let batch = generator.generate_batch(&[prompt.clone(), vec![5, 6, 7]], &config).unwrap();
        assert_eq!(batch[0].tokens, [best]);
        assert!(others.contains(&batch[1].tokens[0]));
    }

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
