//! The filters a synthetic question and its answer pass to be kept; each rejection is counted in
//! the run's report. Words are compared lower-cased and stripped of punctuation.

use attune_shared::FilterCounts;
pub use attune_shared::FilterSettings;

/// Why a question or answer was thrown away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Empty,
    Duplicate,
    NotAQuestion,
    CopiesPassage,
    Ungrounded,
    AnswerTooLong,
    RestatesQuestion,
    /// Round trip: the base retriever does not find the question's passage in its top k.
    NotRetrieved,
    /// Nearly the same question, by embedding, as one kept before for any passage.
    NearDuplicate,
}

impl Rejection {
    /// Why, in words (a filtered candidate's reason).
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::Empty => "empty question or answer",
            Rejection::Duplicate => "the same question was asked already",
            Rejection::NotAQuestion => "not a question (no question mark)",
            Rejection::CopiesPassage => "copies a long span of the passage",
            Rejection::Ungrounded => "the answer's words are not in the passage",
            Rejection::AnswerTooLong => "the answer is too long",
            Rejection::RestatesQuestion => "the answer only restates the question",
            Rejection::NotRetrieved => "the base retriever does not find its passage among the top results",
            Rejection::NearDuplicate => "nearly the same question was kept already",
        }
    }

    pub fn count(self, counts: &mut FilterCounts) {
        let slot = match self {
            Rejection::Empty => &mut counts.empty,
            Rejection::Duplicate => &mut counts.duplicate,
            Rejection::NotAQuestion => &mut counts.not_a_question,
            Rejection::CopiesPassage => &mut counts.copies_passage,
            Rejection::Ungrounded => &mut counts.ungrounded,
            Rejection::AnswerTooLong => &mut counts.answer_too_long,
            Rejection::RestatesQuestion => &mut counts.restates_question,
            Rejection::NotRetrieved => &mut counts.not_retrieved,
            Rejection::NearDuplicate => &mut counts.near_duplicate,
        };
        *slot += 1;
    }
}

/// Lower-case words without punctuation.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

/// The form two questions are compared in for duplicates.
pub fn normalise_question(question: &str) -> String {
    words(question).join(" ")
}

const STOP_WORDS: &[&str] = &[
    "a", "an", "the", "of", "in", "on", "at", "to", "for", "by", "with", "and", "or", "is", "are", "was", "were", "be",
    "it", "its", "this", "that", "as", "from", "which", "who", "what", "their", "they", "he", "she", "has", "have",
    "had", "not", "can", "also", "into", "than", "then", "there", "these", "those", "such",
];

/// The longest run of consecutive words `a` shares with `b`.
fn longest_shared_run(a: &[String], b: &[String]) -> usize {
    let mut best = 0;
    let mut previous = vec![0usize; b.len() + 1];
    for x in a {
        let mut current = vec![0usize; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            if x == y {
                current[j + 1] = previous[j] + 1;
                best = best.max(current[j + 1]);
            }
        }
        previous = current;
    }
    best
}

/// Checks a question against the passage and the questions already kept (normalised).
pub fn check_question(
    question: &str,
    passage: &str,
    seen: &[String],
    settings: &FilterSettings,
) -> Result<(), Rejection> {
    let question = question.trim();
    let question_words = words(question);
    if question_words.is_empty() {
        return Err(Rejection::Empty);
    }
    if !question.ends_with('?') {
        return Err(Rejection::NotAQuestion);
    }
    if seen.contains(&question_words.join(" ")) {
        return Err(Rejection::Duplicate);
    }
    if longest_shared_run(&question_words, &words(passage)) >= settings.max_copied_words {
        return Err(Rejection::CopiesPassage);
    }
    Ok(())
}

/// Question words that carry no content when an answer is compared with its question.
const QUESTION_WORDS: &[&str] = &["how", "why", "when", "where", "which", "whom", "whose", "does", "do", "did"];

fn content_words(text: &str) -> Vec<String> {
    words(text)
        .into_iter()
        .filter(|w| !STOP_WORDS.contains(&w.as_str()) && !QUESTION_WORDS.contains(&w.as_str()))
        .collect()
}

/// Whether `answer` only says `question` again: it holds most of the question's content words
/// and adds at most one of its own ("What is the role of X?" — "The role of X is X's role").
/// An answer picked from a choice the question offers adds its own words or covers few of the
/// question's ("Which came first, A or B?" — "A").
fn restates(answer: &str, question: &str, settings: &FilterSettings) -> bool {
    let asked: std::collections::HashSet<String> = content_words(question).into_iter().collect();
    if asked.is_empty() {
        return false;
    }
    let said: std::collections::HashSet<String> = content_words(answer).into_iter().collect();
    let covered = asked.iter().filter(|w| said.contains(*w)).count();
    let own = said.iter().filter(|w| !asked.contains(*w)).count();
    covered as f64 >= settings.max_question_overlap * asked.len() as f64 && own <= 1
}

/// Checks an answer to `question`: present, short enough, grounded in the passage, and more
/// than the question said again.
pub fn check_answer_to(
    answer: &str,
    question: &str,
    passage: &str,
    settings: &FilterSettings,
) -> Result<(), Rejection> {
    check_answer(answer, passage, settings)?;
    if restates(answer, question, settings) {
        return Err(Rejection::RestatesQuestion);
    }
    Ok(())
}

/// Checks an answer: present, short enough, and grounded in the passage.
pub fn check_answer(answer: &str, passage: &str, settings: &FilterSettings) -> Result<(), Rejection> {
    let answer_words = words(answer);
    // Nothing, or only a lead-in to an answer that never came ("The output is:").
    if answer_words.is_empty() || answer.trim_end().ends_with(':') {
        return Err(Rejection::Empty);
    }
    if answer_words.len() > settings.max_answer_words {
        return Err(Rejection::AnswerTooLong);
    }
    let passage_words: std::collections::HashSet<String> = words(passage).into_iter().collect();
    let content: Vec<&String> = answer_words.iter().filter(|w| !STOP_WORDS.contains(&w.as_str())).collect();
    let considered: Vec<&String> = if content.is_empty() { answer_words.iter().collect() } else { content };
    let grounded = considered.iter().filter(|w| passage_words.contains(w.as_str())).count();
    if (grounded as f64) < settings.min_grounding * considered.len() as f64 {
        return Err(Rejection::Ungrounded);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSAGE: &str = "Biopython is a set of freely available tools for biological computation written in Python \
                           by an international team of developers. It reads FASTA and GenBank files.";

    const PASSAGE_SEQIO: &str = "Bio.SeqIO is the role of Biopython's sequence input and output interface: it \
                                 reads FASTA and GenBank files.";

    #[test]
    fn questions() {
        let s = FilterSettings::default();
        assert_eq!(check_question("Who wrote Biopython?", PASSAGE, &[], &s), Ok(()));
        assert_eq!(check_question("  ", PASSAGE, &[], &s), Err(Rejection::Empty));
        assert_eq!(check_question("Explain Biopython", PASSAGE, &[], &s), Err(Rejection::NotAQuestion));
        let seen = vec![normalise_question("Who wrote Biopython?")];
        assert_eq!(check_question("who wrote  biopython ?", PASSAGE, &seen, &s), Err(Rejection::Duplicate));
        let copy = "Is Biopython a set of freely available tools for biological computation written in Python?";
        assert_eq!(check_question(copy, PASSAGE, &[], &s), Err(Rejection::CopiesPassage));
        // Nine shared words are allowed with the default of ten.
        let nine = "Is it a set of freely available tools for biological work?";
        assert_eq!(check_question(nine, PASSAGE, &[], &s), Ok(()));
    }

    #[test]
    fn answers() {
        let s = FilterSettings::default();
        assert_eq!(check_answer("FASTA and GenBank files", PASSAGE, &s), Ok(()));
        assert_eq!(check_answer("", PASSAGE, &s), Err(Rejection::Empty));
        assert_eq!(check_answer("The FASTA files are:", PASSAGE, &s), Err(Rejection::Empty));
        assert_eq!(check_answer("Rust and Haskell compilers", PASSAGE, &s), Err(Rejection::Ungrounded));
        let long = "an international team ".repeat(15);
        assert_eq!(check_answer(&long, PASSAGE, &s), Err(Rejection::AnswerTooLong));
        // Said again: the question's words and nothing of its own.
        let question = "What is the role of Bio.SeqIO in Biopython?";
        let restated = "The role of Bio.SeqIO in Biopython is the role of Bio.SeqIO.";
        assert_eq!(check_answer_to(restated, question, PASSAGE_SEQIO, &s), Err(Rejection::RestatesQuestion));
        assert_eq!(check_answer_to("It reads FASTA and GenBank files", question, PASSAGE_SEQIO, &s), Ok(()));
        // A choice the question offers is an answer, not a restatement.
        let choice = "Which files does Bio.SeqIO read, FASTA or PDB files?";
        assert_eq!(check_answer_to("FASTA files", choice, PASSAGE_SEQIO, &s), Ok(()));
        let mut counts = FilterCounts::default();
        Rejection::RestatesQuestion.count(&mut counts);
        assert_eq!(counts.restates_question, 1);
        Rejection::Ungrounded.count(&mut counts);
        Rejection::Ungrounded.count(&mut counts);
        Rejection::Duplicate.count(&mut counts);
        assert_eq!((counts.ungrounded, counts.duplicate, counts.empty), (2, 1, 0));
    }
}
