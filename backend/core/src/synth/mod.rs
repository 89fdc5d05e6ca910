//! Synthetic (question, passage, answer) triples: prompt templates the user can see and change,
//! an LLM (the local generator, or an OpenAI-compatible server), robust parsing of what it writes,
//! and filters that keep only answerable, grounded, non-copied questions — each counted.
//!
//! Synchronous, free of tokio, axum and sqlx: the job runner in `engine/` stores what this returns.

pub mod corpus_checks;
pub mod extract;
pub mod filter;
pub mod judge;
pub mod llm;
pub mod parse;
pub mod prompt;
pub mod reference;

use attune_shared::{AnswerStyle, FilterCounts, SynthPrompts};

pub use corpus_checks::CorpusChecks;
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
    #[error("the LLM returned {got} completions for {asked} prompts")]
    Replies { asked: usize, got: usize },
    #[error("the corpus index for the round-trip filter: {0}")]
    Index(#[from] crate::rag::index::IndexError),
}

/// Passages whose questions (then answers) go to the local model in one call: it decodes them
/// side by side, one row per passage while questions are written, then their answers (three a
/// passage) up to 64 rows at a time; a stopped run loses at most this many passages' work.
pub const BATCH_PASSAGES: usize = 16;

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

/// How a run asks for triples: its templates, questions per passage, answer style and filters.
#[derive(Debug, Clone, Copy)]
pub struct Asking<'a> {
    pub prompts: &'a SynthPrompts,
    pub questions_per_passage: u32,
    pub answers: AnswerStyle,
    pub filters: &'a FilterSettings,
}

/// Asks `llm` for questions about `passage`, then for an answer to each from the passage alone;
/// keeps the pairs that pass the filters. `known` holds questions already stored for the passage.
pub fn synthesize(
    llm: &dyn Llm,
    asking: &Asking<'_>,
    passage: &str,
    known: &[String],
) -> Result<PassageTriples, SynthError> {
    synthesize_batch(llm, asking, &[PassageInput { id: 0, text: passage, known }], None)?.remove(0)
}

/// `llm`'s completions of `prompts`, one per prompt.
#[allow(clippy::type_complexity)]
fn replies(
    llm: &dyn Llm,
    prompts: &[String],
    max_tokens: usize,
) -> Result<Vec<Result<String, SynthError>>, SynthError> {
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    let replies = llm.complete(prompts, max_tokens)?;
    if replies.len() != prompts.len() {
        return Err(SynthError::Replies { asked: prompts.len(), got: replies.len() });
    }
    Ok(replies)
}

/// A passage to write triples for, with the questions already stored for it.
#[derive(Debug, Clone, Copy)]
pub struct PassageInput<'a> {
    /// Its id in the corpus the [`CorpusChecks`] search (the round trip looks for it).
    pub id: i64,
    pub text: &'a str,
    pub known: &'a [String],
}

/// [`synthesize`] for several passages at once: one call to `llm` for all their questions, one for
/// all their answers (a local model decodes each call's prompts side by side). The questions that
/// pass the text filters go through `corpus` (round trip, near-duplicates) before their answers
/// are asked for. One result per passage, in order; the outer error fails them all.
pub fn synthesize_batch(
    llm: &dyn Llm,
    asking: &Asking<'_>,
    passages: &[PassageInput<'_>],
    corpus: Option<&mut CorpusChecks<'_>>,
) -> Result<Vec<Result<PassageTriples, SynthError>>, SynthError> {
    let Asking { prompts, questions_per_passage: n, answers: style, filters } = *asking;
    let question_prompts = passages
        .iter()
        .map(|p| prompt::render_questions(&prompts.questions, p.text, n))
        .collect::<Result<Vec<_>, _>>()?;
    let raw_questions = llm.questions(&question_prompts, n as usize, 48 * n as usize + 32)?;
    if raw_questions.len() != question_prompts.len() {
        return Err(SynthError::Replies { asked: question_prompts.len(), got: raw_questions.len() });
    }
    let mut outs: Vec<Result<PassageTriples, SynthError>> = Vec::with_capacity(passages.len());
    // Per passage, the questions that passed, whose answers are asked for next.
    let mut candidates: Vec<Vec<String>> = Vec::with_capacity(passages.len());
    for (passage, raw) in passages.iter().zip(raw_questions) {
        let raw = match raw {
            Ok(raw) => raw,
            Err(error) => {
                outs.push(Err(error));
                candidates.push(Vec::new());
                continue;
            }
        };
        let mut out = PassageTriples::default();
        let questions = parse::questions(&raw);
        // Small models often write more than asked: the first `n` are considered (and counted).
        out.questions_seen = questions.len().min(n as usize) as u64;
        let mut seen: Vec<String> = passage.known.iter().map(|q| filter::normalise_question(q)).collect();
        let mut kept = Vec::new();
        for question in questions.into_iter().take(n as usize) {
            match filter::check_question(&question, passage.text, &seen, filters) {
                Ok(()) => {
                    seen.push(filter::normalise_question(&question));
                    kept.push(question);
                }
                Err(rejection) => {
                    rejection.count(&mut out.filtered);
                    if !question.trim().is_empty() {
                        out.dropped.push((question, String::new(), rejection));
                    }
                }
            }
        }
        outs.push(Ok(out));
        candidates.push(kept);
    }
    if let Some(corpus) = corpus {
        let asked: Vec<(i64, &str)> = passages
            .iter()
            .zip(&candidates)
            .flat_map(|(passage, questions)| questions.iter().map(|q| (passage.id, q.as_str())))
            .collect();
        let mut verdicts = corpus.check(&asked)?.into_iter();
        for (questions, out) in candidates.iter_mut().zip(outs.iter_mut()) {
            let checked: Vec<(String, Result<(), Rejection>)> =
                questions.drain(..).map(|q| (q, verdicts.next().unwrap_or(Ok(())))).collect();
            for (question, verdict) in checked {
                match (verdict, &mut *out) {
                    (Ok(()), _) => questions.push(question),
                    (Err(rejection), Ok(triples)) => {
                        rejection.count(&mut triples.filtered);
                        triples.dropped.push((question, String::new(), rejection));
                    }
                    (Err(_), Err(_)) => {}
                }
            }
        }
    }
    let answers = match style {
        AnswerStyle::Written => {
            let mut answer_prompts = Vec::new();
            for (passage, questions) in passages.iter().zip(&candidates) {
                for question in questions {
                    answer_prompts.push(prompt::render_answer(&prompts.answer, passage.text, question)?);
                }
            }
            replies(llm, &answer_prompts, 64)?.into_iter().map(|r| r.map(|text| parse::answer(&text))).collect()
        }
        AnswerStyle::Extractive => extractive_answers(llm, passages, &candidates)?,
    };
    let mut answers = answers.into_iter();
    for ((passage, questions), out) in passages.iter().zip(candidates).zip(outs.iter_mut()) {
        for (question, answer) in questions.into_iter().zip(answers.by_ref()) {
            let Ok(triples) = out else { continue };
            let answer = match answer {
                Ok(answer) => answer,
                Err(error) => {
                    *out = Err(error);
                    continue;
                }
            };
            match filter::check_answer_to(&answer, &question, passage.text, filters) {
                Ok(()) => triples.kept.push((question, answer)),
                Err(rejection) => {
                    rejection.count(&mut triples.filtered);
                    triples.dropped.push((question, answer, rejection));
                }
            }
        }
    }
    Ok(outs)
}

/// Each candidate question's answer as the sentence of its passage the LLM picks (empty when its
/// reply names none: the empty filter counts it), in order.
fn extractive_answers(
    llm: &dyn Llm,
    passages: &[PassageInput<'_>],
    candidates: &[Vec<String>],
) -> Result<Vec<Result<String, SynthError>>, SynthError> {
    let spans: Vec<Vec<String>> = passages.iter().map(|p| extract::spans(p.text)).collect();
    let mut asked = Vec::new();
    // Per question, its passage's spans.
    let mut offered: Vec<&[String]> = Vec::new();
    for (spans, questions) in spans.iter().zip(candidates) {
        for question in questions {
            asked.push((extract::render(spans, question), spans.len()));
            offered.push(spans);
        }
    }
    if asked.is_empty() {
        return Ok(Vec::new());
    }
    let chosen = llm.choose(&asked)?;
    if chosen.len() != asked.len() {
        return Err(SynthError::Replies { asked: asked.len(), got: chosen.len() });
    }
    Ok(chosen
        .into_iter()
        .zip(offered)
        .map(|(choice, spans)| choice.map(|i| i.and_then(|i| spans.get(i).cloned()).unwrap_or_default()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Answers from a script, recording the prompts it got.
    struct Scripted {
        replies: Mutex<Vec<String>>,
        prompts: Mutex<Vec<String>>,
        /// Prompts per call, in order.
        calls: Mutex<Vec<usize>>,
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
            self.calls.lock().unwrap().push(prompts.len());
            let mut replies = self.replies.lock().unwrap();
            Ok(prompts.iter().map(|_| Ok(replies.remove(0))).collect())
        }
    }

    fn written<'a>(prompts: &'a SynthPrompts, n: u32, filters: &'a FilterSettings) -> Asking<'a> {
        Asking { prompts, questions_per_passage: n, answers: AnswerStyle::Written, filters }
    }

    /// Extractive answers: one choice prompt per question listing the passage's sentences; the
    /// sentence named is the answer word for word, and a reply naming none drops the question.
    #[test]
    fn extractive_answers_are_the_sentences_the_llm_names() {
        let tower = "The Eiffel Tower was completed in 1889 for the World's Fair. It is 330 metres tall. \
                     Gustave Eiffel's company designed it.";
        let llm = Scripted {
            replies: Mutex::new(vec![
                "1. How tall is the Eiffel Tower?\n2. Who designed the Eiffel Tower?\n3. When was it finished?".into(),
                "2".into(),
                "Sentence 3".into(),
                "I do not know".into(),
            ]),
            prompts: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
        };
        let (prompts, filters) = (prompt::defaults(), FilterSettings::default());
        let asking = Asking { answers: AnswerStyle::Extractive, ..written(&prompts, 3, &filters) };
        let out = synthesize(&llm, &asking, tower, &[]).unwrap();
        assert_eq!(
            out.kept,
            [
                ("How tall is the Eiffel Tower?".to_owned(), "It is 330 metres tall.".to_owned()),
                ("Who designed the Eiffel Tower?".to_owned(), "Gustave Eiffel's company designed it.".to_owned()),
            ]
        );
        assert_eq!(out.filtered.empty, 1, "a reply naming no sentence");
        assert_eq!(*llm.calls.lock().unwrap(), [1, 3]);
        let sent = llm.prompts.lock().unwrap();
        assert!(sent[1].contains("1. The Eiffel Tower was completed in 1889 for the World's Fair.\n2. It is 330"));
        assert!(sent[1].ends_with("Question: How tall is the Eiffel Tower?"), "{}", sent[1]);
    }

    fn llm_again() -> Scripted {
        Scripted {
            replies: Mutex::new(vec![
                "1. Who designed it?\n2. How tall is it?\n3. Where is it?".into(),
                "Gustave Eiffel".into(),
                "330 metres".into(),
            ]),
            prompts: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
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
            calls: Mutex::new(Vec::new()),
        };
        let prompts = prompt::defaults();
        let filters = FilterSettings::default();
        let out = synthesize(&llm, &written(&prompts, 5, &filters), passage, &[]).unwrap();
        assert_eq!(
            out.kept,
            vec![
                ("When was the Eiffel Tower completed?".to_owned(), "1889".to_owned()),
                ("How tall is the Eiffel Tower?".to_owned(), "It is 330 metres tall.".to_owned()),
            ]
        );
        assert_eq!(out.questions_seen, 5);
        let three = synthesize(&llm_again(), &written(&prompts, 2, &filters), passage, &[]).unwrap();
        assert_eq!(three.questions_seen, 2, "only the first n questions count");
        assert_eq!(out.filtered.duplicate, 1);
        assert_eq!(out.filtered.not_a_question, 1);
        assert_eq!(out.filtered.copies_passage, 1);
        let sent = llm.prompts.lock().unwrap();
        assert!(sent[0].contains("5") && sent[0].contains("Gustave Eiffel"), "{}", sent[0]);
        assert!(sent[1].contains("When was the Eiffel Tower completed?"));
    }

    #[test]
    fn several_passages_take_one_call_for_questions_and_one_for_answers() {
        let tower = "The Eiffel Tower was completed in 1889 and is 330 metres tall.";
        let bridge = "The Golden Gate Bridge opened in 1937 and spans the Golden Gate strait.";
        let llm = Scripted {
            replies: Mutex::new(vec![
                "1. When was the Eiffel Tower completed?\n2. How tall is the Eiffel Tower?".into(),
                "1. When did the Golden Gate Bridge open?".into(),
                "1889".into(),
                "1937".into(),
            ]),
            prompts: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
        };
        let known = vec!["How tall is the Eiffel Tower?".to_owned()];
        let passages =
            [PassageInput { id: 1, text: tower, known: &known }, PassageInput { id: 2, text: bridge, known: &[] }];
        let filters = FilterSettings::default();
        let out = synthesize_batch(&llm, &written(&prompt::defaults(), 2, &filters), &passages, None).unwrap();
        assert_eq!(*llm.calls.lock().unwrap(), [2, 2], "two question prompts, then the two answers asked for");
        let tower_out = out[0].as_ref().unwrap();
        assert_eq!(tower_out.kept, [("When was the Eiffel Tower completed?".to_owned(), "1889".to_owned())]);
        assert_eq!(tower_out.filtered.duplicate, 1, "a question stored already is not asked again");
        let bridge_out = out[1].as_ref().unwrap();
        assert_eq!(bridge_out.kept, [("When did the Golden Gate Bridge open?".to_owned(), "1937".to_owned())]);
        let sent = llm.prompts.lock().unwrap();
        assert!(sent[2].contains("Eiffel") && sent[3].contains("Golden Gate"), "answers in passage order");
    }

    #[test]
    fn questions_the_corpus_checks_drop_get_no_answer_and_are_counted() {
        let (retriever, ..) = crate::train::test_models::tiny_models(candle_core::DType::F32, 7);
        let (cat, dog) = ("the cat sat on the mat.", "a dog ran in the park.");
        let corpus = [(1, cat), (2, dog), (3, "the dogs sat in a park.")];
        // Round trips off: the near-duplicate check alone, at a threshold only the same words reach.
        let filters = FilterSettings { round_trip_top_k: 0, max_question_similarity: 0.999_99, ..Default::default() };
        let mut checks = CorpusChecks::new(&retriever, &corpus, &[], &filters, &mut |_, _| {}).unwrap();
        let llm = Scripted {
            replies: Mutex::new(vec![
                "1. What sat on the mat?\n2. What is a cat?".into(),
                "1. What sat on the mat?\n2. What ran in the park?".into(),
                "the cat".into(),
                "it sat on the mat".into(),
                "a dog".into(),
            ]),
            prompts: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
        };
        let passages = [PassageInput { id: 1, text: cat, known: &[] }, PassageInput { id: 2, text: dog, known: &[] }];
        let prompts = prompt::defaults();
        let out = synthesize_batch(&llm, &written(&prompts, 2, &filters), &passages, Some(&mut checks)).unwrap();
        assert_eq!(*llm.calls.lock().unwrap(), [2, 3], "the near-duplicate is not sent for an answer");
        let second = out[1].as_ref().unwrap();
        assert_eq!(second.kept, [("What ran in the park?".to_owned(), "a dog".to_owned())]);
        assert_eq!(second.filtered.near_duplicate, 1);
        assert_eq!(second.dropped, [("What sat on the mat?".to_owned(), String::new(), Rejection::NearDuplicate)]);
        assert_eq!(out[0].as_ref().unwrap().kept.len(), 2);
    }
}
