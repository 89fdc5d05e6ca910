//! Synthetic (question, passage, answer) triples: prompt templates the user can see and change,
//! an LLM (the local generator, or an OpenAI-compatible server), robust parsing of what it writes,
//! and filters that keep only answerable, grounded, non-copied questions — each counted.
//!
//! Synchronous, free of tokio, axum and sqlx: the job runner in `engine/` stores what this returns.

pub mod filter;
pub mod llm;
pub mod parse;
pub mod prompt;
pub mod reference;

use attune_shared::{FilterCounts, SynthPrompts};

pub use filter::{FilterSettings, Rejection};
pub use llm::{Llm, LocalLlm};
pub use reference::{ReferenceMatter, reference_matter};

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("prompt template: {0}")]
    Template(String),
    #[error("the local model failed: {0}")]
    Local(#[from] crate::model::ModelError),
    #[error("the LLM server at {url}: {message}")]
    Server { url: String, message: String },
}

/// What one passage gave.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PassageTriples {
    /// Kept (question, answer) pairs.
    pub kept: Vec<(String, String)>,
    pub questions_seen: u64,
    pub filtered: FilterCounts,
    /// What the filters dropped, each with why: (question, answer — empty when the question was
    /// dropped before one was asked for, rejection).
    pub dropped: Vec<(String, String, Rejection)>,
}

/// Asks `llm` for `n` questions about `passage`, then for an answer to each from the passage alone;
/// keeps the pairs that pass the filters. `known` holds questions already stored for the passage.
pub fn synthesize(
    llm: &dyn Llm,
    prompts: &SynthPrompts,
    passage: &str,
    n: u32,
    known: &[String],
    filters: &FilterSettings,
) -> Result<PassageTriples, SynthError> {
    let mut out = PassageTriples::default();
    let questions_prompt = prompt::render_questions(&prompts.questions, passage, n)?;
    let raw = llm.complete(&[questions_prompt], 48 * n as usize + 32)?.remove(0)?;
    let questions = parse::questions(&raw);
    // Small models often write more than asked: the first `n` are considered (and counted).
    out.questions_seen = questions.len().min(n as usize) as u64;
    let mut seen: Vec<String> = known.iter().map(|q| filter::normalise_question(q)).collect();
    let mut candidates = Vec::new();
    for question in questions.into_iter().take(n as usize) {
        match filter::check_question(&question, passage, &seen, filters) {
            Ok(()) => {
                seen.push(filter::normalise_question(&question));
                candidates.push(question);
            }
            Err(rejection) => {
                rejection.count(&mut out.filtered);
                if !question.trim().is_empty() {
                    out.dropped.push((question, String::new(), rejection));
                }
            }
        }
    }
    let answer_prompts =
        candidates.iter().map(|q| prompt::render_answer(&prompts.answer, passage, q)).collect::<Result<Vec<_>, _>>()?;
    let answers = llm.complete(&answer_prompts, 64)?;
    for (question, answer) in candidates.into_iter().zip(answers) {
        let answer = parse::answer(&answer?);
        match filter::check_answer(&answer, passage, filters) {
            Ok(()) => out.kept.push((question, answer)),
            Err(rejection) => {
                rejection.count(&mut out.filtered);
                out.dropped.push((question, answer, rejection));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Answers from a script, recording the prompts it got.
    struct Scripted {
        replies: Mutex<Vec<String>>,
        prompts: Mutex<Vec<String>>,
    }

    impl Llm for Scripted {
        fn name(&self) -> String {
            "scripted".into()
        }

        fn complete(
            &self,
            prompts: &[String],
            _max_tokens: usize,
        ) -> Result<Vec<Result<String, SynthError>>, SynthError> {
            self.prompts.lock().unwrap().extend(prompts.iter().cloned());
            let mut replies = self.replies.lock().unwrap();
            Ok(prompts.iter().map(|_| Ok(replies.remove(0))).collect())
        }
    }

    fn llm_again() -> Scripted {
        Scripted {
            replies: Mutex::new(vec![
                "1. Who designed it?\n2. How tall is it?\n3. Where is it?".into(),
                "Gustave Eiffel".into(),
                "330 metres".into(),
            ]),
            prompts: Mutex::new(Vec::new()),
        }
    }

    #[test]
    fn questions_then_answers_filtered_and_counted() {
        let passage = "The Eiffel Tower was completed in 1889 for the World's Fair in Paris. It is 330 metres tall \
                       and was designed by the engineering company of Gustave Eiffel.";
        let llm = Scripted {
            replies: Mutex::new(vec![
                "Here are the questions:\n1. When was the Eiffel Tower completed?\n2) How tall is the Eiffel Tower?\n\
                 3. When was the Eiffel Tower completed?\n4. Describe the tower\n5. The Eiffel Tower was completed in 1889 for the World's Fair in Paris?"
                    .into(),
                "Answer: 1889".into(),
                "It is 330 metres tall.".into(),
            ]),
            prompts: Mutex::new(Vec::new()),
        };
        let prompts = prompt::defaults();
        let out = synthesize(&llm, &prompts, passage, 5, &[], &FilterSettings::default()).unwrap();
        assert_eq!(
            out.kept,
            vec![
                ("When was the Eiffel Tower completed?".to_owned(), "1889".to_owned()),
                ("How tall is the Eiffel Tower?".to_owned(), "It is 330 metres tall.".to_owned()),
            ]
        );
        assert_eq!(out.questions_seen, 5);
        let three = synthesize(&llm_again(), &prompts, passage, 2, &[], &FilterSettings::default()).unwrap();
        assert_eq!(three.questions_seen, 2, "only the first n questions count");
        assert_eq!(out.filtered.duplicate, 1);
        assert_eq!(out.filtered.not_a_question, 1);
        assert_eq!(out.filtered.copies_passage, 1);
        let sent = llm.prompts.lock().unwrap();
        assert!(sent[0].contains("5") && sent[0].contains("Gustave Eiffel"), "{}", sent[0]);
        assert!(sent[1].contains("When was the Eiffel Tower completed?"));
    }
}
