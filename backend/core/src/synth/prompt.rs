//! The two prompt templates (minijinja): `{{ passage }}` and `{{ n }}` for the questions,
//! `{{ passage }}` and `{{ question }}` for each answer. Users see and change them; each run
//! stores the ones it used.

use attune_shared::SynthPrompts;

use super::SynthError;

pub const QUESTIONS: &str = "Read the passage below and write {{ n }} different questions that the passage answers. \
Each question must make sense on its own, without the passage at hand. Write one question per line, numbered \
1 to {{ n }}, each ending with a question mark. Do not write the answers.

Passage:
{{ passage }}";

pub const ANSWER: &str = "Answer the question using only the passage. Reply with the answer alone: a few words \
or one short sentence, taken from the passage.

Passage:
{{ passage }}

Question: {{ question }}";

pub fn defaults() -> SynthPrompts {
    SynthPrompts { questions: QUESTIONS.to_owned(), answer: ANSWER.to_owned() }
}

fn render(template: &str, context: minijinja::Value) -> Result<String, SynthError> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.render_str(template, context).map_err(|e| SynthError::Template(e.to_string()))
}

pub fn render_questions(template: &str, passage: &str, n: u32) -> Result<String, SynthError> {
    render(template, minijinja::context! { passage => passage.trim(), n => n })
}

pub fn render_answer(template: &str, passage: &str, question: &str) -> Result<String, SynthError> {
    render(template, minijinja::context! { passage => passage.trim(), question => question.trim() })
}

/// Checks a pair of templates: they render, and each uses the passage.
pub fn validate(prompts: &SynthPrompts) -> Result<(), SynthError> {
    let questions = render_questions(&prompts.questions, "PASSAGE-MARK", 3)?;
    let answer = render_answer(&prompts.answer, "PASSAGE-MARK", "QUESTION-MARK")?;
    if !questions.contains("PASSAGE-MARK") || !answer.contains("PASSAGE-MARK") {
        return Err(SynthError::Template("both templates must use {{ passage }}".into()));
    }
    if !answer.contains("QUESTION-MARK") {
        return Err(SynthError::Template("the answer template must use {{ question }}".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_render_and_bad_templates_are_explained() {
        validate(&defaults()).unwrap();
        let text = render_questions(QUESTIONS, "  Some passage.  ", 4).unwrap();
        assert!(text.contains("write 4 different questions") && text.ends_with("Some passage."));
        let broken = SynthPrompts { questions: "{{ passage ".into(), answer: ANSWER.into() };
        assert!(matches!(validate(&broken), Err(SynthError::Template(_))));
        let unknown = SynthPrompts { questions: "{{ passage }} {{ nope }}".into(), answer: ANSWER.into() };
        assert!(validate(&unknown).is_err());
        let no_question = SynthPrompts { questions: QUESTIONS.into(), answer: "{{ passage }}".into() };
        assert!(validate(&no_question).unwrap_err().to_string().contains("{{ question }}"));
    }
}
