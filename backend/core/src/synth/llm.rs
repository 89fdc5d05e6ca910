//! The LLMs that write triples: the [`Llm`] trait and the local generator (greedy, in its chat
//! template). The OpenAI-compatible server's client lives in the server crate (`attune-server`'s
//! `openai`), so this crate needs no HTTP stack.

use crate::model::generator::{ChatMessage, GenerationConfig, Generator};

use super::SynthError;

/// Something that completes prompts (one user message each).
pub trait Llm: Send + Sync {
    /// The model's name, stored with each triple.
    fn name(&self) -> String;
    /// One completion per prompt, in order; the outer error fails them all.
    #[allow(clippy::type_complexity)]
    fn complete(&self, prompts: &[String], max_tokens: usize) -> Result<Vec<Result<String, SynthError>>, SynthError>;
}

/// The local generator, greedy.
pub struct LocalLlm {
    pub generator: Generator,
    pub name: String,
}

impl Llm for LocalLlm {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn complete(&self, prompts: &[String], max_tokens: usize) -> Result<Vec<Result<String, SynthError>>, SynthError> {
        Ok(prompts
            .iter()
            .map(|prompt| {
                let text = if self.generator.has_chat_template() {
                    self.generator.render_chat(&[ChatMessage::new("user", prompt)])?
                } else {
                    format!("{prompt}\n\n")
                };
                let ids = self.generator.encode(&text)?;
                let config = GenerationConfig { max_new_tokens: max_tokens, ..GenerationConfig::default() };
                Ok(self.generator.generate(&ids, &config, |_| std::ops::ControlFlow::Continue(()))?.text)
            })
            .collect())
    }
}
