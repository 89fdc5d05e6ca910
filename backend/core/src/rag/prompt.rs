//! The RAG prompt: the instruction, the retrieved passage(s) and the question, rendered with the
//! generator's chat template when it has one (SmolLM2's ChatML), or as plain text
//! (`…\n\nAnswer:`) when it has none. Training, evaluation and chat all build prompts here, so a
//! model is tuned on exactly what it is later asked.

use crate::model::ModelError;
use crate::model::generator::{ChatMessage, Generator};

/// What the model is told to do.
pub const INSTRUCTION: &str = "Answer the question using the passage. Reply with the answer only.";

/// Length limits in generator tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptLimits {
    /// Each passage is cut to this many tokens.
    pub max_passage_tokens: usize,
    /// Answers are cut to this many tokens (the end-of-reply token included).
    pub max_answer_tokens: usize,
}

impl Default for PromptLimits {
    fn default() -> Self {
        PromptLimits { max_passage_tokens: 128, max_answer_tokens: 32 }
    }
}

/// The user's turn: instruction, passages, question.
pub fn user_message(question: &str, passages: &[&str]) -> String {
    let mut text = String::from(INSTRUCTION);
    match passages {
        [one] => text.push_str(&format!("\n\nPassage: {}", one.trim())),
        many => {
            for (i, passage) in many.iter().enumerate() {
                text.push_str(&format!("\n\nPassage {}: {}", i + 1, passage.trim()));
            }
        }
    }
    text.push_str(&format!("\n\nQuestion: {}", question.trim()));
    text
}

/// Cuts `passage` to at most `max_tokens` of the generator's tokens.
pub fn truncate_passage(generator: &Generator, passage: &str, max_tokens: usize) -> Result<String, ModelError> {
    let ids = generator.encode(passage)?;
    if ids.len() <= max_tokens {
        return Ok(passage.to_owned());
    }
    generator.decode(&ids[..max_tokens])
}

/// The prompt text, ending where the answer begins.
pub fn prompt_text(
    generator: &Generator,
    question: &str,
    passages: &[&str],
    limits: PromptLimits,
) -> Result<String, ModelError> {
    chat_prompt(generator, &[], question, passages, limits)
}

/// A chat turn's prompt: the earlier turns (question, answer) as they were asked, then this
/// question with its passages in the same form training used. Plain-text models get the turns as
/// `Question:`/`Answer:` lines.
pub fn chat_prompt(
    generator: &Generator,
    history: &[(String, String)],
    question: &str,
    passages: &[&str],
    limits: PromptLimits,
) -> Result<String, ModelError> {
    let cut: Vec<String> =
        passages.iter().map(|p| truncate_passage(generator, p, limits.max_passage_tokens)).collect::<Result<_, _>>()?;
    let cut: Vec<&str> = cut.iter().map(String::as_str).collect();
    let message = user_message(question, &cut);
    if generator.has_chat_template() {
        let mut messages = Vec::new();
        for (q, a) in history {
            messages.push(ChatMessage::new("user", q));
            messages.push(ChatMessage::new("assistant", a));
        }
        messages.push(ChatMessage::new("user", &message));
        generator.render_chat(&messages)
    } else {
        let earlier: String = history.iter().map(|(q, a)| format!("Question: {q}\nAnswer: {a}\n\n")).collect();
        Ok(format!("{earlier}{message}\n\nAnswer:"))
    }
}

/// Token ids of a training example: the prompt (its passages in the order given), and the answer
/// followed by the end-of-reply token (cut to `max_answer_tokens`). Plain-text prompts get a
/// space before the answer.
pub fn encode_example(
    generator: &Generator,
    question: &str,
    passages: &[&str],
    answer: &str,
    limits: PromptLimits,
) -> Result<(Vec<u32>, Vec<u32>), ModelError> {
    let prompt = generator.encode(&prompt_text(generator, question, passages, limits)?)?;
    let answer_text =
        if generator.has_chat_template() { answer.trim().to_owned() } else { format!(" {}", answer.trim()) };
    let mut answer_ids = generator.encode(&answer_text)?;
    answer_ids.extend(generator.eos_ids().first());
    answer_ids.truncate(limits.max_answer_tokens.max(1));
    Ok((prompt, answer_ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_or_several_passages() {
        assert_eq!(
            user_message(" Why? ", &["Because."]),
            format!("{INSTRUCTION}\n\nPassage: Because.\n\nQuestion: Why?")
        );
        let two = user_message("Q?", &["A", "B"]);
        assert!(two.ends_with("Passage 1: A\n\nPassage 2: B\n\nQuestion: Q?"), "{two}");
    }
}
