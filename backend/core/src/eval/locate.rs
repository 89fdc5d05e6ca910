//! Finding a test question's gold passage in a corpus that was chunked from documents, by text:
//! the documents' passages rarely equal the gold passage character for character (other chunk
//! boundaries, normalised whitespace, a repaired ligature), so the gold is the passage that
//! overlaps it most — or, for a question that comes with an answer only, the passage that holds
//! the answer and shares most words with the question.

use std::collections::HashSet;

use super::metrics::normalize_answer;

/// A passage must share at least this share of the smaller word set to be the gold passage.
pub const MIN_OVERLAP: f64 = 0.6;

fn word_set(text: &str) -> HashSet<String> {
    normalize_answer(text).split_whitespace().map(str::to_owned).collect()
}

/// The corpus, ready for [`GoldLocator::locate`].
pub struct GoldLocator<'a> {
    corpus: &'a [String],
    words: Vec<HashSet<String>>,
    /// Each passage normalised, with a space at both ends (so a phrase matches whole words).
    normalised: Vec<String>,
}

impl<'a> GoldLocator<'a> {
    pub fn new(corpus: &'a [String]) -> Self {
        GoldLocator {
            corpus,
            words: corpus.iter().map(|p| word_set(p)).collect(),
            normalised: corpus.iter().map(|p| format!(" {} ", normalize_answer(p))).collect(),
        }
    }

    fn holds_answer(&self, index: usize, answer: &str) -> bool {
        let answer = normalize_answer(answer);
        !answer.is_empty() && self.normalised[index].contains(&format!(" {answer} "))
    }

    /// The index of `question`'s gold passage: the passage equal to `gold` or, failing that, the one
    /// whose words overlap `gold`'s most (at least [`MIN_OVERLAP`] of the smaller set; passages that
    /// hold `answer` first). Without `gold`: the passage holding `answer` that shares most words
    /// with `question`. `None` when no passage qualifies.
    pub fn locate(&self, question: &str, gold: Option<&str>, answer: &str) -> Option<usize> {
        match gold {
            Some(gold) => {
                if let Some(exact) = self.corpus.iter().position(|p| p == gold) {
                    return Some(exact);
                }
                let gold_words = word_set(gold);
                if gold_words.is_empty() {
                    return None;
                }
                let scored = self.words.iter().enumerate().filter_map(|(i, words)| {
                    let shared = words.intersection(&gold_words).count();
                    let overlap = shared as f64 / words.len().min(gold_words.len()).max(1) as f64;
                    (overlap >= MIN_OVERLAP).then_some((self.holds_answer(i, answer), overlap, i))
                });
                scored
                    .max_by(|a, b| (a.0, a.1).partial_cmp(&(b.0, b.1)).expect("finite").then(b.2.cmp(&a.2)))
                    .map(|s| s.2)
            }
            None => {
                let question_words = word_set(question);
                (0..self.corpus.len())
                    .filter(|&i| self.holds_answer(i, answer))
                    .map(|i| (self.words[i].intersection(&question_words).count(), i))
                    .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
                    .map(|(_, i)| i)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<String> {
        [
            "Cats sleep about fifteen hours a day. They groom themselves often.",
            "The Eiffel Tower was completed in 1889 for the World's Fair.",
            "It is 330 metres tall and was designed by Gustave Eiffel's company.",
            "Dogs were domesticated first; some herd sheep, others guard houses.",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn gold_passages_are_found_by_their_text_or_by_the_answer() {
        let corpus = corpus();
        let locator = GoldLocator::new(&corpus);
        // The same text.
        assert_eq!(locator.locate("q", Some(&corpus[3]), "sheep"), Some(3));
        // A gold passage chunked in two: the chunk holding the answer.
        let tower = "The Eiffel Tower was completed in 1889 for the World's Fair. It is 330 metres tall and was \
                     designed by Gustave Eiffel's company.";
        assert_eq!(locator.locate("How tall is it?", Some(tower), "330 metres"), Some(2));
        assert_eq!(locator.locate("When was it completed?", Some(tower), "1889"), Some(1));
        // Other whitespace and case are the same passage.
        assert_eq!(
            locator.locate("q", Some("cats  sleep about fifteen hours a day. they groom themselves often"), "x"),
            Some(0)
        );
        // A passage the corpus does not hold.
        assert_eq!(locator.locate("q", Some("Bread is baked from flour, water, yeast and salt."), "flour"), None);
        // No gold passage: the one holding the answer, closest to the question.
        assert_eq!(locator.locate("Who designed the Eiffel Tower?", None, "Gustave Eiffel's company"), Some(2));
        assert_eq!(locator.locate("What do some dogs herd?", None, "sheep"), Some(3));
        // Whole words only, and no passage holds it.
        assert_eq!(locator.locate("q", None, "heep"), None);
        assert_eq!(locator.locate("q", None, ""), None);
    }
}
