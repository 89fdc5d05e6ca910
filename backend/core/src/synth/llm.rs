//! The LLMs that write triples: the [`Llm`] trait and the local generator (greedy, in its chat
//! template). The OpenAI-compatible server's client lives in the server crate (`attune-server`'s
//! `openai`), so this crate needs no HTTP stack.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::generator::{ChatMessage, GenerationConfig, Generator};

use super::SynthError;

/// Something that completes prompts (one user message each).
pub trait Llm: Send + Sync {
    /// The model's name, stored with each triple.
    fn name(&self) -> String;
    /// One completion per prompt, in order; the outer error fails them all.
    #[allow(clippy::type_complexity)]
    fn complete(&self, prompts: &[String], max_tokens: usize) -> Result<Vec<Result<String, SynthError>>, SynthError>;
    /// Passages whose prompts a synthesis run sends in one call: 1 (a server batches requests
    /// itself; each passage is then its own call, cancelled and resumed on its own).
    fn passages_per_call(&self) -> usize {
        1
    }
}

/// The local generator, greedy; the prompts of one call are decoded side by side.
pub struct LocalLlm {
    pub generator: Generator,
    pub name: String,
    /// Tokens generated so far, over every call (the synthesis benchmark's tokens per second).
    pub tokens_generated: AtomicU64,
}

impl LocalLlm {
    pub fn new(generator: Generator, name: String) -> Self {
        LocalLlm { generator, name, tokens_generated: AtomicU64::new(0) }
    }
}

impl Llm for LocalLlm {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn complete(&self, prompts: &[String], max_tokens: usize) -> Result<Vec<Result<String, SynthError>>, SynthError> {
        let mut ids = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            let text = if self.generator.has_chat_template() {
                self.generator.render_chat(&[ChatMessage::new("user", prompt)])?
            } else {
                format!("{prompt}\n\n")
            };
            ids.push(self.generator.encode(&text)?);
        }
        let config = GenerationConfig { max_new_tokens: max_tokens, ..GenerationConfig::default() };
        let generations = self.generator.generate_batch(&ids, &config)?;
        let tokens: usize = generations.iter().map(|g| g.tokens.len()).sum();
        self.tokens_generated.fetch_add(tokens as u64, Ordering::Relaxed);
        Ok(generations.into_iter().map(|g| Ok(g.text)).collect())
    }

    fn passages_per_call(&self) -> usize {
        super::BATCH_PASSAGES
    }
}
