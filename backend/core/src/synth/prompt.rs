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

/// The longest template accepted, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 16 * 1024;
/// Template instructions one render may run: a template is text with a few substitutions, and a
/// loop of loops (`range(10**6)` twice) would otherwise run for hours on the server.
pub const TEMPLATE_FUEL: u64 = 50_000;
/// The longest rendered prompt beyond the passage and question it holds, in bytes.
pub const MAX_RENDERED_EXTRA_BYTES: usize = 64 * 1024;

fn render(template: &str, context: minijinja::Value, inputs_len: usize) -> Result<String, SynthError> {
    if template.len() > MAX_TEMPLATE_BYTES {
        return Err(SynthError::Template(format!(
            "a template may be at most {} KiB (this one is {} bytes)",
            MAX_TEMPLATE_BYTES / 1024,
            template.len()
        )));
    }
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_fuel(Some(TEMPLATE_FUEL));
    let rendered = env.render_str(template, context).map_err(|e| SynthError::Template(e.to_string()))?;
    if rendered.len() > inputs_len + MAX_RENDERED_EXTRA_BYTES {
        return Err(SynthError::Template(format!(
            "the template writes {} bytes around the passage; at most {} KiB",
            rendered.len() - inputs_len.min(rendered.len()),
            MAX_RENDERED_EXTRA_BYTES / 1024
        )));
    }
    Ok(rendered)
}

pub fn render_questions(template: &str, passage: &str, n: u32) -> Result<String, SynthError> {
    render(template, minijinja::context! { passage => passage.trim(), n => n }, passage.len())
}

pub fn render_answer(template: &str, passage: &str, question: &str) -> Result<String, SynthError> {
    render(
        template,
        minijinja::context! { passage => passage.trim(), question => question.trim() },
        passage.len() + question.len(),
    )
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

    /// Before the fuel limit this template ran ~10^12 iterations on a tokio worker.
    #[test]
    fn a_looping_or_huge_template_is_refused_fast() {
        let started = std::time::Instant::now();
        let looping = "{% for i in range(100000) %}{% for j in range(100000) %}{% for k in range(100000) %}x\
                       {% endfor %}{% endfor %}{% endfor %}{{ passage }}";
        let error = validate(&SynthPrompts { questions: looping.into(), answer: ANSWER.into() }).unwrap_err();
        assert!(error.to_string().contains("fuel"), "{error}");
        let wide = "{{ passage }}{{ 'x' * 1000000 }}";
        let error = validate(&SynthPrompts { questions: wide.into(), answer: ANSWER.into() }).unwrap_err();
        assert!(error.to_string().contains("around the passage"), "{error}");
        let long = format!("{{{{ passage }}}}{}", " ".repeat(MAX_TEMPLATE_BYTES));
        assert!(validate(&SynthPrompts { questions: long, answer: ANSWER.into() }).is_err());
        assert!(started.elapsed().as_secs_f64() < 1.0, "{:?}", started.elapsed());
    }
}
