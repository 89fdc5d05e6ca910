//! The LLMs that write triples: the [`Llm`] trait and the local generator (greedy, in its chat
//! template). The OpenAI-compatible server's client lives in the server crate (`attune-server`'s
//! `openai`), so this crate needs no HTTP stack.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::generator::{ChatMessage, GenerationConfig, Generator, LineRule};

/// Whether the local model's questions are decoded held to "one question a line" by default.
pub const CONSTRAINED_QUESTIONS: bool = true;

use super::SynthError;

/// Something that completes prompts (one user message each).
pub trait Llm: Send + Sync {
    /// The model's name, stored with each triple.
    fn name(&self) -> String;
    /// One completion per prompt, in order; the outer error fails them all.
    #[allow(clippy::type_complexity)]
    fn complete(&self, prompts: &[String], max_tokens: usize) -> Result<Vec<Result<String, SynthError>>, SynthError>;
    /// For each (prompt, n), which of the n numbered options the LLM picks (from 0), or `None`
    /// when its reply names none of them. A server is asked for a short completion and its first
    /// number read; the local model's reply is held to the numbers offered.
    #[allow(clippy::type_complexity)]
    fn choose(&self, prompts: &[(String, usize)]) -> Result<Vec<Result<Option<usize>, SynthError>>, SynthError> {
        let texts: Vec<String> = prompts.iter().map(|(prompt, _)| prompt.clone()).collect();
        read_choices(self.complete(&texts, 8)?, prompts)
    }
    /// Completions of question prompts asking for `n` questions each: [`Llm::complete`], which a
    /// local model decodes held to `n` lines that each end with "?" (constrained decoding).
    #[allow(clippy::type_complexity)]
    fn questions(
        &self,
        prompts: &[String],
        _n: usize,
        max_tokens: usize,
    ) -> Result<Vec<Result<String, SynthError>>, SynthError> {
        self.complete(prompts, max_tokens)
    }
    /// Passages whose prompts a synthesis run sends in one call: 1 (a server batches requests
    /// itself; each passage is then its own call, cancelled and resumed on its own).
    fn passages_per_call(&self) -> usize {
        1
    }
}

/// The option each free reply names (its first number among those offered).
#[allow(clippy::type_complexity)]
fn read_choices(
    replies: Vec<Result<String, SynthError>>,
    prompts: &[(String, usize)],
) -> Result<Vec<Result<Option<usize>, SynthError>>, SynthError> {
    Ok(replies
        .into_iter()
        .zip(prompts)
        .map(|(reply, (_, offered))| reply.map(|text| super::extract::chosen(&text, *offered)))
        .collect())
}

/// The local generator, greedy; the prompts of one call are decoded side by side.
pub struct LocalLlm {
    pub generator: Generator,
    pub name: String,
    /// Tokens generated so far, over every call (the synthesis benchmark's tokens per second).
    pub tokens_generated: AtomicU64,
    /// Questions are decoded held to the list's form ([`LineRule`]).
    pub constrained_questions: bool,
}

impl LocalLlm {
    pub fn new(generator: Generator, name: String) -> Self {
        LocalLlm { generator, name, tokens_generated: AtomicU64::new(0), constrained_questions: CONSTRAINED_QUESTIONS }
    }

    /// Token ids of `prompts`, each as one user message in the chat template (or as plain text).
    fn prompt_ids(&self, prompts: impl Iterator<Item = impl AsRef<str>>) -> Result<Vec<Vec<u32>>, SynthError> {
        let mut ids = Vec::new();
        for prompt in prompts {
            let prompt = prompt.as_ref();
            let text = if self.generator.has_chat_template() {
                self.generator.render_chat(&[ChatMessage::new("user", prompt)])?
            } else {
                format!("{prompt}\n\n")
            };
            ids.push(self.generator.encode(&text)?);
        }
        Ok(ids)
    }

    /// Completions of `prompts` decoded side by side with `config`.
    #[allow(clippy::type_complexity)]
    fn decode(
        &self,
        prompts: &[String],
        config: GenerationConfig,
    ) -> Result<Vec<Result<String, SynthError>>, SynthError> {
        let ids = self.prompt_ids(prompts.iter())?;
        let generations = self.generator.generate_batch(&ids, &config)?;
        let tokens: usize = generations.iter().map(|g| g.tokens.len()).sum();
        self.tokens_generated.fetch_add(tokens as u64, Ordering::Relaxed);
        Ok(generations.into_iter().map(|g| Ok(g.text)).collect())
    }

    /// The token of each number 1..=n, if each is one token.
    fn number_tokens(&self, n: usize) -> Result<Option<Vec<u32>>, SynthError> {
        let mut tokens = Vec::with_capacity(n);
        for number in 1..=n {
            match self.generator.encode(&number.to_string())?.as_slice() {
                [token] => tokens.push(*token),
                _ => return Ok(None),
            }
        }
        Ok(Some(tokens))
    }
}

impl Llm for LocalLlm {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn complete(&self, prompts: &[String], max_tokens: usize) -> Result<Vec<Result<String, SynthError>>, SynthError> {
        self.decode(prompts, GenerationConfig { max_new_tokens: max_tokens, ..GenerationConfig::default() })
    }

    fn questions(
        &self,
        prompts: &[String],
        n: usize,
        max_tokens: usize,
    ) -> Result<Vec<Result<String, SynthError>>, SynthError> {
        let line_rule = self.constrained_questions.then(|| LineRule::questions(n));
        self.decode(prompts, GenerationConfig { max_new_tokens: max_tokens, line_rule, ..GenerationConfig::default() })
    }

    /// One token each, held to the numbers offered: prompts offering as many options go side by
    /// side (the prefill is the work; nothing is decoded after the one token).
    fn choose(&self, prompts: &[(String, usize)]) -> Result<Vec<Result<Option<usize>, SynthError>>, SynthError> {
        let mut out: Vec<Result<Option<usize>, SynthError>> = prompts.iter().map(|_| Ok(None)).collect();
        let mut counts: Vec<usize> = prompts.iter().map(|(_, n)| *n).filter(|&n| n > 0).collect();
        counts.sort_unstable();
        counts.dedup();
        for n in counts {
            let rows: Vec<usize> = (0..prompts.len()).filter(|&i| prompts[i].1 == n).collect();
            let Some(numbers) = self.number_tokens(n)? else {
                // A tokenizer without one token per digit: read a short free reply instead.
                let asked: Vec<(String, usize)> = rows.iter().map(|&i| prompts[i].clone()).collect();
                let texts: Vec<String> = asked.iter().map(|(prompt, _)| prompt.clone()).collect();
                for (&i, choice) in rows.iter().zip(read_choices(self.complete(&texts, 8)?, &asked)?) {
                    out[i] = choice;
                }
                continue;
            };
            let ids = self.prompt_ids(rows.iter().map(|&i| prompts[i].0.as_str()))?;
            let config = GenerationConfig { max_new_tokens: 1, allowed_tokens: numbers.clone(), ..Default::default() };
            let generations = self.generator.generate_batch(&ids, &config)?;
            self.tokens_generated.fetch_add(generations.len() as u64, Ordering::Relaxed);
            for (&i, generation) in rows.iter().zip(generations) {
                out[i] = Ok(generation.tokens.first().and_then(|t| numbers.iter().position(|n| n == t)));
            }
        }
        Ok(out)
    }

    fn passages_per_call(&self) -> usize {
        super::BATCH_PASSAGES
    }
}
