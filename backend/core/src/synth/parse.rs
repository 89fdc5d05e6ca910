//! Reading what an LLM wrote: a list of questions (numbered, bulleted, prefixed "Q1:" or
//! "Question 2 -", wrapped in quotes or bold, preceded by chatter) and a bare answer.

/// The questions in `text`, in order, cleaned of list markers and decoration.
pub fn questions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = strip_marker(line.trim());
        // Empty, or numbering debris without a word ("1.1.1.", "1-10").
        if !line.chars().any(char::is_alphabetic) {
            continue;
        }
        let lower = line.to_lowercase();
        // Chatter around the list ("Here are 3 questions:", "Sure!").
        if line.ends_with(':') || (!line.contains('?') && (lower.starts_with("here ") || lower.starts_with("sure"))) {
            continue;
        }
        // Several questions on one line.
        let mut rest = line;
        let mut found = false;
        while let Some(end) = rest.find('?') {
            let question = clean(&rest[..=end]);
            if question.len() > 1 {
                out.push(question);
                found = true;
            }
            rest = strip_marker(rest[end + 1..].trim());
        }
        let rest = clean(rest);
        if (!found || !rest.is_empty() && looks_like_question(&rest))
            && !rest.is_empty()
            && !lower.starts_with("answer")
        {
            out.push(rest);
        }
    }
    out
}

/// An answer without a leading "Answer:" label, quotes or markup.
pub fn answer(text: &str) -> String {
    let mut text = text.trim();
    // The first non-empty paragraph: models add explanations after a blank line.
    if let Some((first, _)) = text.split_once("\n\n") {
        text = first.trim();
    }
    for label in ["answer:", "a:", "the answer is:", "response:"] {
        if text.to_lowercase().starts_with(label) {
            text = text[label.len()..].trim();
        }
    }
    clean(text)
}

fn looks_like_question(text: &str) -> bool {
    let first = text.split_whitespace().next().unwrap_or("").to_lowercase();
    ["what", "who", "when", "where", "why", "how", "which", "is", "are", "does", "do", "can", "in"]
        .contains(&first.as_str())
}

/// Drops list markers: "1.", "2)", "-", "*", "•", "Q1:", "Question 3 -", "(4)".
fn strip_marker(line: &str) -> &str {
    let mut line = line.trim_start_matches(['-', '*', '•', '·', '>', ' ']);
    let lower = line.to_lowercase();
    for prefix in ["question", "q"] {
        if lower.starts_with(prefix) {
            let after = &line[prefix.len()..];
            let digits = after.trim_start().trim_start_matches(|c: char| c.is_ascii_digit());
            if digits.len() < after.trim_start().len() || after.starts_with(':') {
                line = digits.trim_start_matches([':', '.', ')', '-', ' ']);
                break;
            }
        }
    }
    let trimmed = line.trim_start_matches('(');
    let after_digits = trimmed.trim_start_matches(|c: char| c.is_ascii_digit());
    if after_digits.len() < trimmed.len() && after_digits.starts_with(['.', ')', ':']) {
        line = after_digits[1..].trim_start();
    }
    line.trim()
}

/// Drops wrapping quotes, bold/italic markers, leading stray symbols (`= "` of a code line) and
/// surrounding whitespace; collapses spaces.
fn clean(text: &str) -> String {
    let text = text.trim().trim_start_matches(|c: char| !c.is_alphanumeric() && !"(¿[\"“'".contains(c));
    let text = text.trim().trim_matches(['"', '“', '”', '\'', '*', '_', '`']).trim();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_in_many_styles() {
        let text = "Here are 3 questions about the passage:\n\n1. What is Biopython?\n2) Who maintains it?\n\
                    - **Which file formats does it read?**\nQ4: How is it installed?\nQuestion 5 - Why use it?\n\
                    (6) \"Where is the tutorial?\"";
        assert_eq!(
            questions(text),
            vec![
                "What is Biopython?",
                "Who maintains it?",
                "Which file formats does it read?",
                "How is it installed?",
                "Why use it?",
                "Where is the tutorial?",
            ]
        );
    }

    #[test]
    fn several_on_a_line_and_statements_kept_for_the_filters() {
        assert_eq!(questions("1. What is X? 2. Who made X?"), vec!["What is X?", "Who made X?"]);
        // A line without "?" is still returned: the not-a-question filter counts it.
        assert_eq!(questions("1. Describe the method"), vec!["Describe the method"]);
        // A stray code prefix the local model copied from a passage.
        assert_eq!(
            questions("= \"What is the sequence of the Alpha sequence?"),
            vec!["What is the sequence of the Alpha sequence?"]
        );
        assert!(questions("").is_empty());
        assert!(questions("Sure! Here you go:").is_empty());
    }

    /// Real outputs of the local model (SmolLM2-135M-Instruct, greedy) for the default questions
    /// prompt on three passages of the Biopython tutorial; captured with `attune generate --chat`.
    #[test]
    fn real_outputs_of_the_local_model() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/smollm2_question_outputs.jsonl");
        let outputs: Vec<String> = std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["output"].as_str().unwrap().to_owned())
            .collect();
        // A list of "Question: …" lines between debris ("1. 1.1.1.1.", "Answer:").
        let first = questions(&outputs[0]);
        assert!(first.len() >= 3, "{first:?}");
        // (The last one was cut off by the token limit: no "?", so the filters count it.)
        assert!(
            first.iter().all(|q| q.starts_with("What is the best way to write alignments using Bio.AlignIO")),
            "{first:?}"
        );
        assert_eq!(first[0], "What is the best way to write alignments using Bio.AlignIO?");
        // A stray "Q10-1-10" line, then one question.
        assert_eq!(questions(&outputs[1]), vec!["What is the difference between aegis and dgsl?"]);
        // No questions at all, only an explanation with code: every line is a statement the
        // not-a-question filter will count.
        let third = questions(&outputs[2]);
        assert!(!third.is_empty() && third.iter().all(|q| !q.ends_with('?')), "{third:?}");
    }

    #[test]
    fn answers_lose_labels_and_decoration() {
        assert_eq!(answer("Answer: 1889"), "1889");
        assert_eq!(answer("  \"330 metres\"  "), "330 metres");
        assert_eq!(answer("**Gustave Eiffel**\n\nThe passage says the company designed it."), "Gustave Eiffel");
        assert_eq!(answer("The answer is: in Paris"), "in Paris");
        assert_eq!(answer(""), "");
    }
}
