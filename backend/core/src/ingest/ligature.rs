//! Repairing the f-ligatures a PDF's fonts lost: Unicode's ligature characters (U+FB00–FB06)
//! become their letters, and the code points TeX fonts put ligatures at — T1 (Cork) 0x1B–0x1F,
//! which an extractor falling back to PDFDocEncoding shows as ˙ ˝ ˛ ˚ ˜, and OT1 0x0B–0x0F, which
//! it shows as control characters — become ff, fi, fl, ffi, ffl where they stand inside a word.
//!
//! Which letters a glyph stands for is read from the document itself: a word with the glyph votes
//! for every expansion that turns it into a word the document also spells with plain letters
//! ("e˙ect" and "effect"); each glyph takes the expansion with the most votes, and TeX's layout
//! when no word votes. A glyph alone between spaces is left as it is (a real accent or tilde).

use std::collections::{HashMap, HashSet};

/// The letters of Unicode's Latin ligatures, U+FB00 to U+FB06.
fn unicode_ligature(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{FB00}' => "ff",
        '\u{FB01}' => "fi",
        '\u{FB02}' => "fl",
        '\u{FB03}' => "ffi",
        '\u{FB04}' => "ffl",
        '\u{FB05}' | '\u{FB06}' => "st",
        _ => return None,
    })
}

/// The ligatures TeX fonts encode at a code point the extractor did not map, with TeX's layout
/// for it: T1 0x1B–0x1F as PDFDocEncoding writes them, and OT1 0x0B–0x0F as raw codes.
fn tex_ligature(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{02D9}' | '\u{000B}' => "ff",
        '\u{02DD}' | '\u{000C}' => "fi",
        '\u{02DB}' | '\u{000D}' => "fl",
        '\u{02DA}' | '\u{000E}' => "ffi",
        '\u{02DC}' | '\u{000F}' => "ffl",
        _ => return None,
    })
}

const EXPANSIONS: [&str; 5] = ["ff", "fi", "fl", "ffi", "ffl"];

/// What [`repair`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LigatureReport {
    /// Ligature characters and TeX ligature glyphs replaced by letters.
    pub replaced: usize,
}

/// `text` with Unicode's ligature characters as letters, and how many there were (all a text
/// file gets: its control characters are its own, not a TeX font's codes).
pub fn unicode_ligatures(text: &str) -> (String, usize) {
    let mut out = String::with_capacity(text.len());
    let mut replaced = 0;
    for c in text.chars() {
        match unicode_ligature(c) {
            Some(letters) => {
                replaced += 1;
                out.push_str(letters);
            }
            None => out.push(c),
        }
    }
    (out, replaced)
}

/// A word as the repair sees it: letters, digits and the glyphs.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || tex_ligature(c).is_some()
}

fn split_words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !is_word_char(c)).filter(|w| !w.is_empty())
}

/// Whether the glyph at `index` (a char index into `chars`) touches a letter.
fn touches_letter(chars: &[char], index: usize) -> bool {
    let letter = |i: Option<usize>| i.and_then(|i| chars.get(i)).is_some_and(|c| c.is_alphabetic());
    letter(index.checked_sub(1)) || letter(Some(index + 1))
}

/// Repairs every page of one document together (the vocabulary that decides is the whole
/// document's); returns the pages in the same order.
pub fn repair(pages: &[String]) -> (Vec<String>, LigatureReport) {
    let mut report = LigatureReport::default();
    // Unicode's ligatures first: they say what they are.
    let pages: Vec<String> = pages
        .iter()
        .map(|page| {
            let (letters, replaced) = unicode_ligatures(page);
            report.replaced += replaced;
            letters
        })
        .collect();
    if !pages.iter().any(|page| page.chars().any(|c| tex_ligature(c).is_some())) {
        return (pages, report);
    }
    // Words spelled with plain letters, lower-cased.
    let vocabulary: HashSet<String> = pages
        .iter()
        .flat_map(|page| split_words(page))
        .filter(|w| !w.chars().any(|c| tex_ligature(c).is_some()))
        .map(str::to_lowercase)
        .collect();
    let mut votes: HashMap<char, [usize; EXPANSIONS.len()]> = HashMap::new();
    for word in pages.iter().flat_map(|page| split_words(page)) {
        let glyphs: HashSet<char> = word.chars().filter(|c| tex_ligature(*c).is_some()).collect();
        for glyph in glyphs {
            let lower = word.to_lowercase();
            for (slot, letters) in EXPANSIONS.iter().enumerate() {
                let candidate = lower.replace(glyph, letters);
                if !candidate.chars().any(|c| tex_ligature(c).is_some()) && vocabulary.contains(&candidate) {
                    votes.entry(glyph).or_default()[slot] += 1;
                }
            }
        }
    }
    let chosen = |glyph: char| -> &'static str {
        match votes.get(&glyph) {
            Some(counts) if counts.iter().any(|&n| n > 0) => {
                let default = tex_ligature(glyph).unwrap_or("fi");
                // The most votes; a tie goes to TeX's layout.
                let best =
                    (0..EXPANSIONS.len()).max_by_key(|&i| (counts[i], EXPANSIONS[i] == default)).unwrap_or_default();
                EXPANSIONS[best]
            }
            _ => tex_ligature(glyph).unwrap_or("fi"),
        }
    };
    let pages = pages
        .iter()
        .map(|page| {
            let chars: Vec<char> = page.chars().collect();
            let mut out = String::with_capacity(page.len());
            for (i, &c) in chars.iter().enumerate() {
                if tex_ligature(c).is_some() && touches_letter(&chars, i) {
                    report.replaced += 1;
                    out.push_str(chosen(c));
                } else {
                    out.push(c);
                }
            }
            out
        })
        .collect();
    (pages, report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> String {
        repair(&[text.to_owned()]).0.remove(0)
    }

    #[test]
    fn unicode_ligatures_become_letters() {
        let (pages, report) = repair(&["e\u{FB00}ect of \u{FB01}sh, \u{FB02}ow, o\u{FB03}ce".to_owned()]);
        assert_eq!(pages[0], "effect of fish, flow, office");
        assert_eq!(report.replaced, 4);
    }

    #[test]
    fn tex_glyphs_inside_words_become_their_ligatures() {
        // T1 as PDFDocEncoding shows it: ˙ ff, ˝ fi, ˛ fl, ˚ ffi; no plain spelling to vote.
        assert_eq!(
            one("the e˙ect of the ˝t on the coe˚cient. In˛uence"),
            "the effect of the fit on the coefficient. Influence"
        );
        // OT1's raw codes.
        assert_eq!(one("Surv\u{000C}t and e\u{000B}ect"), "Survfit and effect");
        // Alone between spaces: an accent, kept.
        assert_eq!(one("a ˜ b and ˙ c"), "a ˜ b and ˙ c");
    }

    #[test]
    fn the_document_votes_for_what_a_glyph_means() {
        // A font whose ˝ stands for "ff": "e˝ect" and "o˝er" are spelled elsewhere with ff.
        let pages = vec!["The e˝ect was small; we o˝er a di˝erent one.".to_owned(), "effect and offer".to_owned()];
        let (repaired, report) = repair(&pages);
        assert_eq!(repaired[0], "The effect was small; we offer a different one.");
        assert_eq!(repaired[1], pages[1]);
        assert_eq!(report.replaced, 3);
        // Words the document spells with fi vote for fi (TeX's layout for ˝).
        let (repaired, _) = repair(&["Surv˝t and the ˝t.".to_owned(), "survfit(formula)".to_owned()]);
        assert_eq!(repaired[0], "Survfit and the fit.");
    }

    #[test]
    fn text_without_glyphs_is_untouched() {
        let text = "Plain text with accents: café, naïve, and a tilde ~.";
        let (pages, report) = repair(&[text.to_owned()]);
        assert_eq!(pages[0], text);
        assert_eq!(report.replaced, 0);
    }
}
