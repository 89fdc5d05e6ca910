//! Inverse cloze pairs (ORQA's inverse cloze task): one sentence of a corpus passage is the
//! question and the rest of the passage its positive, so a retriever learns the corpus' own words
//! and names without any question written for it. A retriever-mode run adds them to its triples
//! (`Hyper::cloze_pairs`).

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::data::Triple;
use crate::synth::extract::spans;
use crate::synth::reference::reference_matter;

/// The share of pairs whose positive keeps the question's sentence (ORQA keeps it in 10%), so the
/// retriever still learns that a passage holding the very words matches.
const KEEP_SENTENCE: f64 = 0.1;

/// A sentence shorter than this many words says too little to be a question.
const MIN_QUESTION_WORDS: usize = 5;

/// Mixed into the run's seed so the pairs do not share the data order's random stream.
const SEED_SALT: u64 = 0x636c_6f7a_6521;

/// Up to `count` pairs from distinct passages of `corpus` drawn at random with `seed` (the same
/// corpus and seed give the same pairs, so a resumed run trains on what it started with). A
/// passage of fewer than two sentences, or without one of [`MIN_QUESTION_WORDS`] words, gives none,
/// as does reference matter (a table of contents, an index, a bibliography: synthesis skips it too).
/// Each pair's answer is its question's sentence (retriever mode never reads it).
pub fn cloze_pairs(corpus: &[String], count: usize, seed: u64) -> Vec<Triple> {
    let mut rng = StdRng::seed_from_u64(seed ^ SEED_SALT);
    let mut order: Vec<usize> = (0..corpus.len()).collect();
    order.shuffle(&mut rng);
    let mut pairs = Vec::with_capacity(count.min(corpus.len()));
    for index in order {
        if pairs.len() == count {
            break;
        }
        let passage = &corpus[index];
        if reference_matter(passage).is_some() {
            continue;
        }
        let sentences = spans(&unglue_sentences(passage));
        let askable: Vec<usize> =
            (0..sentences.len()).filter(|&i| sentences[i].split_whitespace().count() >= MIN_QUESTION_WORDS).collect();
        if sentences.len() < 2 || askable.is_empty() {
            continue;
        }
        let asked = askable[rng.random_range(0..askable.len())];
        let positive = if rng.random_bool(KEEP_SENTENCE) {
            passage.clone()
        } else {
            let rest: Vec<&str> =
                sentences.iter().enumerate().filter(|&(i, _)| i != asked).map(|(_, s)| s.as_str()).collect();
            rest.join(" ")
        };
        let question = sentences[asked].clone();
        pairs.push(Triple { answer: question.clone(), question, passage: positive });
    }
    pairs
}

/// `text` with a space after each sentence end that runs into the next sentence ("in 2014.The
/// band"), as text joined from several sources or pulled from a PDF often has: Unicode sentence
/// boundaries need the space. Only a lowercase letter, digit or closing quote or bracket, then
/// `.`, `!` or `?`, then a capital followed by a lowercase letter counts, so "U.S.A." stays
/// whole.
fn unglue_sentences(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() + 8);
    for (i, &c) in chars.iter().enumerate() {
        out.push(c);
        let ends = matches!(c, '.' | '!' | '?')
            && i > 0
            && (chars[i - 1].is_lowercase()
                || chars[i - 1].is_ascii_digit()
                || "\"')\u{201d}\u{2019}".contains(chars[i - 1]));
        let next_starts =
            chars.get(i + 1).is_some_and(|c| c.is_uppercase()) && chars.get(i + 2).is_some_and(|c| c.is_lowercase());
        if ends && next_starts {
            out.push(' ');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIBLIOGRAPHY: &str = "References Andersen, P. K. and Gill, R. D. (1982). Cox's regression model for \
        counting processes. Annals of Statistics 10, 1100–1120. Grambsch, P. and Therneau, T. (1994). \
        Proportional hazards tests. Biometrika 81, 515–526. Therneau, T. et al. (2000). Modeling Survival Data. \
        Springer Press. doi:10.1007/978-1-4757-3294-8. Klein, J. (1992). Journal of the American Statistical \
        Association, vol. 87, pp. 23–30.";

    fn corpus() -> Vec<String> {
        (0..50)
            .map(|i| {
                format!(
                    "Station {i} was opened in the year 19{i:02} by the railway. It serves the town of Place{i} and its \
                     harbour. Trains to the capital leave from platform {i} every hour."
                )
            })
            .chain(["One sentence only, with enough words in it.".to_owned(), "Too short. Both.".to_owned()])
            .chain([BIBLIOGRAPHY.to_owned()])
            .collect()
    }

    #[test]
    fn a_pair_asks_one_sentence_of_its_passage_and_mostly_leaves_it_out_of_the_positive() {
        let corpus = corpus();
        let pairs = cloze_pairs(&corpus, 1000, 7);
        // Every three-sentence passage gives one; the one-sentence and too-short passages and the
        // bibliography none.
        assert_eq!(pairs.len(), 50);
        assert!(reference_matter(BIBLIOGRAPHY).is_some() && spans(BIBLIOGRAPHY).len() > 2, "it would give one");
        let mut kept_whole = 0;
        let mut sources = Vec::new();
        for pair in &pairs {
            let source_index = corpus
                .iter()
                .position(|p| p.contains(&pair.question))
                .expect("the question is a sentence of a passage");
            sources.push(source_index);
            let source = &corpus[source_index];
            assert!(pair.question.split_whitespace().count() >= MIN_QUESTION_WORDS);
            assert_eq!(pair.answer, pair.question);
            if pair.passage == *source {
                kept_whole += 1;
            } else {
                assert!(!pair.passage.contains(&pair.question), "{pair:?}");
                // The rest of the passage: its other two sentences.
                assert_eq!(
                    pair.passage.split_whitespace().count() + pair.question.split_whitespace().count(),
                    source.split_whitespace().count()
                );
            }
        }
        assert!(kept_whole < 15, "about a tenth keep the sentence: {kept_whole} of 50");
        // Distinct passages: none asked twice.
        sources.sort();
        sources.dedup();
        assert_eq!(sources.len(), 50);
    }

    #[test]
    fn sentences_run_together_are_parted_and_abbreviations_are_not() {
        assert_eq!(
            unglue_sentences("It was released on 26 May 2014.The 1975 is the band's debut.Robbers is a song."),
            "It was released on 26 May 2014. The 1975 is the band's debut. Robbers is a song."
        );
        assert_eq!(unglue_sentences("a song by the band.\"Robbers\" is"), "a song by the band.\"Robbers\" is");
        assert_eq!(unglue_sentences("the band (\"The 1975\").Its debut"), "the band (\"The 1975\"). Its debut");
        assert_eq!(unglue_sentences("Born in the U.S.A. He sang.Then"), "Born in the U.S.A. He sang. Then");
        assert_eq!(unglue_sentences("see e.g.Smith"), "see e.g. Smith");
        // A passage run together still gives a pair.
        let glued =
            ["The station opened in the year 1901 by the railway.Trains to the capital leave every hour.".to_owned()];
        assert_eq!(cloze_pairs(&glued, 5, 1).len(), 1);
    }

    #[test]
    fn the_same_seed_gives_the_same_pairs_and_count_caps_them() {
        let corpus = corpus();
        assert_eq!(cloze_pairs(&corpus, 10, 3), cloze_pairs(&corpus, 10, 3));
        assert_ne!(cloze_pairs(&corpus, 10, 3), cloze_pairs(&corpus, 10, 4));
        assert_eq!(cloze_pairs(&corpus, 10, 3).len(), 10);
        assert!(cloze_pairs(&corpus, 0, 3).is_empty());
        assert!(cloze_pairs(&[], 10, 3).is_empty());
    }
}
