//! Reference matter — tables of contents, indexes, bibliographies — recognised from a passage's
//! text alone, so synthesis skips it: asked about "Introduction . . . . 57", a small model writes
//! "…is 57" and a filter cannot tell that from a fact.

/// What kind of reference matter a passage is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceMatter {
    Contents,
    Index,
    Bibliography,
}

impl ReferenceMatter {
    pub fn as_str(self) -> &'static str {
        match self {
            ReferenceMatter::Contents => "table of contents",
            ReferenceMatter::Index => "index",
            ReferenceMatter::Bibliography => "bibliography",
        }
    }
}

/// Runs of three or more leader dots (". . ." or "....", a TOC's leaders).
fn dot_leaders(text: &str) -> usize {
    let mut leaders = 0;
    let mut dots = 0;
    let mut previous_was_dot = false;
    for c in text.chars() {
        match c {
            '.' | '…' | '·' => {
                dots += if c == '…' { 3 } else { 1 };
                previous_was_dot = true;
            }
            ' ' if previous_was_dot => {}
            _ => {
                if dots >= 4 {
                    leaders += 1;
                }
                dots = 0;
                previous_was_dot = false;
            }
        }
    }
    leaders + usize::from(dots >= 4)
}

/// Whether `word` is a page number or a page range ("57", "57,", "112–114").
fn page_number(word: &str) -> bool {
    let word = word.trim_end_matches([',', ';', '.']);
    !word.is_empty()
        && word.len() <= 9
        && word.chars().all(|c| c.is_ascii_digit() || matches!(c, '-' | '–'))
        && word.chars().next().is_some_and(|c| c.is_ascii_digit())
}

/// Whether `word` is a citation year: "(2019)", "2019.", "2019a,".
fn year(word: &str) -> bool {
    let word = word.trim_matches(|c: char| matches!(c, '(' | ')' | ',' | '.' | ';' | ':' | '[' | ']'));
    let digits: String = word.chars().take_while(char::is_ascii_digit).collect();
    digits.len() == 4 && word.len() <= 5 && matches!(digits.parse::<u32>(), Ok(1800..=2100))
}

/// The kind of reference matter `text` is, if it is any.
pub fn reference_matter(text: &str) -> Option<ReferenceMatter> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() < 8 {
        return None;
    }
    if dot_leaders(text) >= 3 {
        return Some(ReferenceMatter::Contents);
    }
    let lower = text.to_lowercase();
    let numbers = words.iter().filter(|w| page_number(w)).count();
    // An index: page numbers are half the words or more, in runs ("ties, 12, 45, 67"); prose
    // that lists numbers ("HPV 16, 18, 31, 33 …") stays well below (a PubMed abstract: a third).
    let runs = words.windows(2).filter(|w| page_number(w[0]) && page_number(w[1])).count();
    if numbers * 2 >= words.len() && runs * 4 >= words.len() {
        return Some(if lower.contains("contents") { ReferenceMatter::Contents } else { ReferenceMatter::Index });
    }
    let years = words.iter().filter(|w| year(w)).count();
    let markers = ["et al", "doi", "pp.", "vol.", "journal", "proceedings", "press", "http"]
        .iter()
        .map(|m| lower.matches(m).count())
        .sum::<usize>();
    if years >= 4 && markers >= 3 && years * 25 >= words.len() {
        return Some(ReferenceMatter::Bibliography);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_index_and_bibliography_are_recognised() {
        let contents = "Contents 1 Introduction . . . . . . . . 3 2 Survival curves . . . . . . . 7 \
                        2.1 Kaplan-Meier ........ 9 3 Cox models . . . . . . . . 57";
        assert_eq!(reference_matter(contents), Some(ReferenceMatter::Contents));
        let index = "Index aalen, 12, 45, 67 baseline hazard, 3, 9–11, 91 censoring, 2, 5, 88, 90 \
                     coxph, 14, 15, 16, 57 frailty, 33, 34 hazard ratio, 20, 21, 22";
        assert_eq!(reference_matter(index), Some(ReferenceMatter::Index));
        let bibliography = "References Andersen, P. K. and Gill, R. D. (1982). Cox's regression model for \
            counting processes. Annals of Statistics 10, 1100–1120. Grambsch, P. and Therneau, T. (1994). \
            Proportional hazards tests. Biometrika 81, 515–526. Therneau, T. et al. (2000). Modeling \
            Survival Data. Springer Press. doi:10.1007/978-1-4757-3294-8. Klein, J. (1992). Journal of \
            the American Statistical Association, vol. 87, pp. 23–30.";
        assert_eq!(reference_matter(bibliography), Some(ReferenceMatter::Bibliography));
    }

    #[test]
    fn prose_with_numbers_and_a_citation_is_not_reference_matter() {
        let prose = "The Cox model (Cox, 1972) estimates hazard ratios. In our data of 228 patients, \
                     165 died; the median survival was 310 days (95% CI 285 to 363). See section 3.2 for details.";
        assert_eq!(reference_matter(prose), None);
        let ellipsis = "He paused... then said: the fund returned 7% in 2019, 9% in 2020... and lost 3% in 2022.";
        // From PubMedQA: an abstract that lists HPV types.
        let listing = "Using polymerase chain reaction techniques, we evaluated the presence of HPV infection in human \
            breast milk collected from 21 HPV-positive and 11 HPV-negative mothers.\nOf the 32 studied human milk \
            specimens, no 'high-risk' HPV 16, 18, 31, 33, 35, 39, 45, 51, 52, 56, 58 or 58 DNA was detected.";
        assert_eq!(reference_matter(listing), None);
        assert_eq!(reference_matter(ellipsis), None);
        assert_eq!(reference_matter("Index"), None);
    }
}
