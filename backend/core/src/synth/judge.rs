//! LLM-as-judge: a kept triple scored 1–5 for groundedness (does the passage state the answer?)
//! and usefulness (would a reader of such documents ask it, and does it stand on its own?) by an
//! LLM — the settings' OpenAI-compatible server — the prompt it gets, and the reading of its reply.

use attune_shared::JudgeScores;

use super::{Llm, SynthError};

/// What the judge is asked about one triple.
pub const JUDGE: &str = "You check question-answer pairs written about a passage.

Passage:
{passage}

Question: {question}
Answer: {answer}

Score the pair from 1 (poor) to 5 (excellent) on two things:
- Groundedness: does the passage state the answer, so that the answer is correct for the question?
- Usefulness: would someone reading documents like this one ask the question, and does it make sense \
without the passage at hand?

Reply in exactly this form and nothing else:
Groundedness: N
Usefulness: N";

/// The longest reply read (the two lines, with room for a model's preamble).
const REPLY_TOKENS: usize = 24;

pub fn render(passage: &str, question: &str, answer: &str) -> String {
    // One pass over the template: a passage holding "{question}" is not substituted again.
    let mut out = String::with_capacity(JUDGE.len() + passage.len() + question.len() + answer.len());
    let mut rest = JUDGE;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let (value, name_len) =
            [("{passage}", passage.trim()), ("{question}", question.trim()), ("{answer}", answer.trim())]
                .into_iter()
                .find(|(name, _)| tail.starts_with(name))
                .map(|(name, value)| (value, name.len()))
                .unwrap_or(("{", 1));
        out.push_str(value);
        rest = &tail[name_len..];
    }
    out.push_str(rest);
    out
}

/// The two scores in a reply ("Groundedness: 4", "usefulness - 5/5", "**Groundedness**: 3"), or
/// `None` unless both are there, each 1 to 5.
pub fn scores(reply: &str) -> Option<JudgeScores> {
    let score_after = |label: &str| -> Option<u8> {
        let lower = reply.to_lowercase();
        let at = lower.find(label)? + label.len();
        let digit = lower[at..].chars().find(|c| c.is_ascii_digit() || *c == '\n')?;
        let score = digit.to_digit(10)? as u8;
        (1..=5).contains(&score).then_some(score)
    };
    Some(JudgeScores { grounded: score_after("groundedness")?, useful: score_after("usefulness")? })
}

/// The judge's scores of each (passage, question, answer), in order: `None` for one whose call
/// failed or whose reply has no readable scores. Fails only when the whole call does.
pub fn judge(llm: &dyn Llm, triples: &[(&str, &str, &str)]) -> Result<Vec<Option<JudgeScores>>, SynthError> {
    if triples.is_empty() {
        return Ok(Vec::new());
    }
    let prompts: Vec<String> = triples.iter().map(|(p, q, a)| render(p, q, a)).collect();
    let replies = llm.complete(&prompts, REPLY_TOKENS)?;
    if replies.len() != prompts.len() {
        return Err(SynthError::Replies { asked: prompts.len(), got: replies.len() });
    }
    Ok(replies.into_iter().map(|reply| reply.ok().and_then(|text| scores(&text))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_read_from_the_forms_models_write_and_nothing_else() {
        let both = |g, u| Some(JudgeScores { grounded: g, useful: u });
        assert_eq!(scores("Groundedness: 4\nUsefulness: 5"), both(4, 5));
        assert_eq!(scores("**Groundedness**: 3/5\n**Usefulness** - 2/5"), both(3, 2));
        assert_eq!(scores("Sure.\ngroundedness 5\nusefulness: 1"), both(5, 1));
        assert_eq!(scores("Groundedness: 4"), None, "both scores or none");
        assert_eq!(scores("Groundedness: 7\nUsefulness: 5"), None, "out of range");
        assert_eq!(scores("Groundedness:\nUsefulness: 5"), None, "a label without its score");
        assert_eq!(scores("I cannot judge this."), None);
    }

    #[test]
    fn the_prompt_holds_the_triple_once_each_whatever_its_text() {
        let prompt = render(" A passage about {question} marks. ", "Why {answer}?", "Because.");
        assert!(prompt.contains("Passage:\nA passage about {question} marks.\n"), "{prompt}");
        assert!(prompt.contains("Question: Why {answer}?\nAnswer: Because.\n"), "{prompt}");
    }

    struct Replies(Vec<Result<String, SynthError>>);

    impl Llm for Replies {
        fn name(&self) -> String {
            "judge".into()
        }
        fn complete(&self, prompts: &[String], _: usize) -> Result<Vec<Result<String, SynthError>>, SynthError> {
            assert!(prompts.iter().all(|p| p.contains("Groundedness: N")));
            Ok(self
                .0
                .iter()
                .map(|r| match r {
                    Ok(text) => Ok(text.clone()),
                    Err(_) => Err(SynthError::Server { url: "u".into(), message: "503".into() }),
                })
                .collect())
        }
    }

    #[test]
    fn a_failed_call_or_an_unreadable_reply_leaves_that_triple_unscored() {
        let llm = Replies(vec![
            Ok("Groundedness: 5\nUsefulness: 4".into()),
            Err(SynthError::Template(String::new())),
            Ok("no idea".into()),
        ]);
        let triple = ("p", "q?", "a");
        let scored = judge(&llm, &[triple, triple, triple]).unwrap();
        assert_eq!(scored, [Some(JudgeScores { grounded: 5, useful: 4 }), None, None]);
        assert!(judge(&Replies(vec![]), &[]).unwrap().is_empty());
        assert!(matches!(judge(&Replies(vec![]), &[triple]), Err(SynthError::Replies { asked: 1, got: 0 })));
    }
}
