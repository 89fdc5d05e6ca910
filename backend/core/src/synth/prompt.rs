//! The two prompt templates (minijinja): `{{ passage }}` and `{{ n }}` for the questions,
//! `{{ passage }}` and `{{ question }}` for each answer. Users see and change them; each run
//! stores the ones it used. A questions prompt with two worked examples (few-shot) is built in beside the default.

use attune_shared::SynthPrompts;

use super::SynthError;

/// The questions prompt (zero-shot: the task and the passage).
pub const QUESTIONS: &str = "Read the passage below and write {{ n }} different questions that the passage answers. \
Each question must make sense on its own, without the passage at hand. Write one question per line, numbered \
1 to {{ n }}, each ending with a question mark. Do not write the answers.

Passage:
{{ passage }}";

/// The questions prompt with two worked examples (few-shot): the task, two passages each with its
/// questions (as many as asked for, numbered as the reply must be), then the passage. The examples
/// come first, so every passage's prompt shares them as a prefix, prefilled once per batch. Not
/// the default: the default local model (SmolLM2-135M) copies the examples' questions instead of
/// asking about its passage (`attune bench synth` counts them); a larger model or a server may
/// gain from it (`attune synth --questions-prompt few-shot`).
pub const QUESTIONS_FEW_SHOT: &str = r#"Read a passage and write {{ n }} different questions that the passage answers. Each question must make sense on its own, without the passage at hand: name the thing it asks about. Write one question per line, numbered 1 to {{ n }}, each ending with a question mark. Do not write the answers.
{%- set examples = [
  ["Metformin is the first-line drug for type 2 diabetes. It lowers blood glucose mainly by reducing glucose production in the liver, and unlike sulfonylureas it rarely causes hypoglycaemia when taken alone. Its most common side effects are nausea and diarrhoea, which are reduced by starting at a low dose taken with meals.",
   ["Which drug is the first-line treatment for type 2 diabetes?",
    "How does metformin lower blood glucose?",
    "Does metformin taken alone often cause hypoglycaemia?",
    "What are the most common side effects of metformin?",
    "How can the digestive side effects of metformin be reduced?"]],
  ["The pip install command installs Python packages from a package index. Adding --upgrade replaces an installed package with its newest version, and --user installs into the home directory, which needs no administrator rights. A requirements file lists one package per line and is installed with pip install -r followed by the file name.",
   ["Which command installs Python packages from a package index?",
    "Which pip option replaces an installed package with its newest version?",
    "How can pip install a package without administrator rights?",
    "What does a pip requirements file list?",
    "How is a requirements file installed with pip?"]]
] %}
{%- for text, questions in examples %}

Example {{ loop.index }}
Passage:
{{ text }}
Questions:
{%- for question in questions[:n] %}
{{ loop.index }}. {{ question }}
{%- endfor %}
{%- endfor %}

Now the passage to ask about.
Passage:
{{ passage }}"#;

/// The built-in questions prompts by name (what `--questions-prompt` accepts besides a file).
pub fn named_questions_prompt(name: &str) -> Option<&'static str> {
    match name {
        "default" => Some(QUESTIONS),
        "few-shot" => Some(QUESTIONS_FEW_SHOT),
        _ => None,
    }
}

/// The questions the few-shot prompt's worked examples ask (normalised as duplicates are
/// compared), for counting replies that copy them.
pub fn few_shot_example_questions() -> Vec<String> {
    let rendered = render_questions(QUESTIONS_FEW_SHOT, "", 20).unwrap_or_default();
    let examples = rendered.split("Now the passage").next().unwrap_or("");
    examples
        .lines()
        .filter(|line| line.starts_with(|c: char| c.is_ascii_digit()) && line.ends_with('?'))
        .flat_map(super::parse::questions)
        .map(|q| super::filter::normalise_question(&q))
        .collect()
}

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

    /// The few-shot prompt's worked examples show as many questions as asked for (up to the five each has), in the
    /// numbered form the reply must take and [`super::super::parse::questions`] reads.
    #[test]
    fn the_examples_show_n_numbered_questions_the_parser_reads() {
        for n in [1, 3, 5, 8] {
            let text = render_questions(QUESTIONS_FEW_SHOT, "THE PASSAGE", n).unwrap();
            let (examples, rest) = text.split_once("Now the passage").unwrap();
            assert!(rest.ends_with("Passage:\nTHE PASSAGE"), "{rest:?}");
            assert!(examples.contains(&format!("write {n} different questions")));
            let blocks: Vec<&str> = examples.split("Questions:\n").skip(1).collect();
            assert_eq!(blocks.len(), 2, "two examples: {examples}");
            for block in blocks {
                let listed = block.split("\n\n").next().unwrap();
                let questions = crate::synth::parse::questions(listed);
                assert_eq!(questions.len(), (n as usize).min(5), "{listed:?}");
                assert!(listed.starts_with("1. ") && questions.iter().all(|q| q.ends_with('?')), "{listed:?}");
            }
        }
        let zero_shot = render_questions(QUESTIONS, "THE PASSAGE", 3).unwrap();
        assert!(zero_shot.contains("write 3 different questions") && !zero_shot.contains("Example"));
        let copied = few_shot_example_questions();
        assert_eq!(copied.len(), 10, "{copied:?}");
        assert!(copied.contains(&crate::synth::filter::normalise_question("How does metformin lower blood glucose?")));
        assert_eq!(named_questions_prompt("few-shot"), Some(QUESTIONS_FEW_SHOT));
        assert_eq!(named_questions_prompt("default"), Some(QUESTIONS));
        assert_eq!(named_questions_prompt("./my-prompt.txt"), None);
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
