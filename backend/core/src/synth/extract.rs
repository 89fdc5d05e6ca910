//! Extractive answers: a passage cut into at most [`MAX_SPANS`] numbered sentences (Unicode
//! sentence boundaries, short neighbours joined), the prompt that asks which one answers a
//! question, and the reading of a reply that names one.

use unicode_segmentation::UnicodeSegmentation;

/// The most sentences a passage is offered as: one digit each, so a reply held to the numbers
/// offered is one token of any tokenizer that has the ten digits.
pub const MAX_SPANS: usize = 9;

/// A span shorter than this many words joins its neighbour (a heading, "Fig. 3.", a stray "1.").
const MIN_SPAN_WORDS: usize = 4;

/// What the LLM is asked; the numbered sentences, then the question (so that one passage's
/// questions share the prompt's prefix and a local model prefills it once).
pub const CHOOSE: &str = "Which sentence of the passage answers the question? Reply with the number of that \
sentence only.

Passage:
{{ sentences }}

Question: {{ question }}";

/// `passage` as at most [`MAX_SPANS`] consecutive spans of whole sentences, in order, covering
/// all its words: sentences under [`MIN_SPAN_WORDS`] words join the next one (the last, the one
/// before), then the shortest neighbouring pair is joined until few enough remain.
pub fn spans(passage: &str) -> Vec<String> {
    let mut spans: Vec<String> = Vec::new();
    let mut carry = String::new();
    for sentence in passage.unicode_sentences() {
        let sentence = sentence.split_whitespace().collect::<Vec<_>>().join(" ");
        if sentence.is_empty() {
            continue;
        }
        let joined = if carry.is_empty() { sentence } else { format!("{carry} {sentence}") };
        if joined.split_whitespace().count() < MIN_SPAN_WORDS {
            carry = joined;
        } else {
            spans.push(joined);
            carry.clear();
        }
    }
    if !carry.is_empty() {
        match spans.last_mut() {
            Some(last) => {
                last.push(' ');
                last.push_str(&carry);
            }
            None => spans.push(carry),
        }
    }
    while spans.len() > MAX_SPANS {
        let words = |s: &String| s.split_whitespace().count();
        let pair = (0..spans.len() - 1).min_by_key(|&i| words(&spans[i]) + words(&spans[i + 1])).unwrap_or(0);
        let second = spans.remove(pair + 1);
        spans[pair].push(' ');
        spans[pair].push_str(&second);
    }
    spans
}

/// The prompt asking which of `spans` answers `question`.
pub fn render(spans: &[String], question: &str) -> String {
    let sentences: Vec<String> = spans.iter().enumerate().map(|(i, s)| format!("{}. {s}", i + 1)).collect();
    CHOOSE.replace("{{ sentences }}", &sentences.join("\n")).replace("{{ question }}", question.trim())
}

/// The span a reply names: its first number, if it is one of the `offered` (counted from 1).
pub fn chosen(reply: &str, offered: usize) -> Option<usize> {
    let digits: String = reply.chars().skip_while(|c| !c.is_ascii_digit()).take_while(char::is_ascii_digit).collect();
    let number: usize = digits.parse().ok()?;
    (1..=offered).contains(&number).then(|| number - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_become_at_most_nine_spans_that_keep_every_word_in_order() {
        let passage = "The Eiffel Tower is in Paris. It was completed in 1889 for the World's Fair.  It is 330 \
                       metres tall. Fig. 3. Gustave Eiffel's company designed and built it.";
        let out = spans(passage);
        assert_eq!(
            out,
            [
                "The Eiffel Tower is in Paris.",
                "It was completed in 1889 for the World's Fair.",
                "It is 330 metres tall.",
                "Fig. 3. Gustave Eiffel's company designed and built it.",
            ]
        );
        let long: String = (1..=30).map(|i| format!("Sentence number {i} says a thing. ")).collect();
        let out = spans(&long);
        assert_eq!(out.len(), MAX_SPANS);
        let words = |t: &str| t.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(words(&out.join(" ")), words(&long), "all words, in order");
        assert_eq!(spans("Too short."), ["Too short."]);
        assert!(spans("   ").is_empty());
    }

    #[test]
    fn the_prompt_numbers_the_spans_and_replies_name_one_or_none() {
        let prompt = render(&["A cat sat.".to_owned(), "A dog ran.".to_owned()], " What ran? ");
        assert!(prompt.contains("1. A cat sat.\n2. A dog ran.\n\nQuestion: What ran?"), "{prompt}");
        assert_eq!(chosen("2", 2), Some(1));
        assert_eq!(chosen("Sentence 1.", 2), Some(0));
        assert_eq!(chosen("3", 2), None);
        assert_eq!(chosen("0", 2), None);
        assert_eq!(chosen("none of them", 2), None);
    }
}
