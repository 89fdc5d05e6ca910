//! Cutting a document's text into passages of at most `max_tokens` tokens of the retriever's
//! tokenizer, overlapping by `overlap` tokens, on paragraph, sentence and word boundaries where
//! possible (text-splitter's semantic levels). Special tokens ([CLS], [SEP]) are not counted.

use serde::{Deserialize, Serialize};
use text_splitter::{ChunkConfig, TextSplitter};
use tokenizers::Tokenizer;

use super::{IngestError, ParsedDocument};

/// Passage size and overlap, in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSettings {
    pub max_tokens: usize,
    pub overlap: usize,
}

impl Default for ChunkSettings {
    fn default() -> Self {
        ChunkSettings { max_tokens: 256, overlap: 32 }
    }
}

/// One passage: its text and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Passage {
    /// Position in the document (0 first).
    pub ord: usize,
    pub text: String,
    /// Character offsets into the document's text: `text == doc.text[start..end]` in characters.
    pub char_start: usize,
    pub char_end: usize,
    /// 1-based pages the passage spans (PDF only).
    pub page_start: Option<u32>,
    pub page_end: Option<u32>,
    /// Tokens of the retriever's tokenizer (no special tokens).
    pub tokens: usize,
    /// The Markdown heading path it falls under.
    pub section: Option<String>,
}

/// A tokenizer counting exactly what the splitter will count: no truncation, no padding.
pub fn sizing_tokenizer(tokenizer: &Tokenizer) -> Tokenizer {
    let mut sizer = tokenizer.clone();
    let _ = sizer.with_truncation(None);
    sizer.with_padding(None);
    sizer
}

/// Cuts `doc` into passages.
pub fn chunk(
    name: &str,
    doc: &ParsedDocument,
    tokenizer: &Tokenizer,
    settings: ChunkSettings,
) -> Result<Vec<Passage>, IngestError> {
    if settings.max_tokens < 16 || settings.overlap >= settings.max_tokens {
        return Err(IngestError::Settings(format!(
            "passages of {} tokens overlapping by {}: need at least 16 tokens and an overlap below the size",
            settings.max_tokens, settings.overlap
        )));
    }
    let sizer = sizing_tokenizer(tokenizer);
    let config = ChunkConfig::new(settings.max_tokens)
        .with_overlap(settings.overlap)
        .map_err(|e| IngestError::Settings(e.to_string()))?
        .with_sizer(&sizer);
    let splitter = TextSplitter::new(config);
    let passages: Vec<Passage> = splitter
        .chunk_char_indices(&doc.text)
        .filter(|c| !c.chunk.trim().is_empty())
        .enumerate()
        .map(|(ord, c)| {
            let char_start = c.char_offset;
            let char_end = char_start + c.chunk.chars().count();
            let tokens = sizer.encode_fast(c.chunk, false).map(|e| e.get_ids().len()).unwrap_or(0);
            Passage {
                ord,
                text: c.chunk.to_owned(),
                char_start,
                char_end,
                page_start: doc.page_at(char_start),
                page_end: doc.page_at(char_end.saturating_sub(1)),
                tokens,
                section: doc.section_at(char_start).map(str::to_owned),
            }
        })
        .collect();
    if passages.is_empty() {
        return Err(IngestError::NoPassages { name: name.to_owned() });
    }
    Ok(passages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::parse::DocumentKind;
    use crate::train::test_models::tiny_tokenizer;

    fn document(text: &str, page_starts: Vec<usize>) -> ParsedDocument {
        ParsedDocument { kind: DocumentKind::Pdf, text: text.to_owned(), page_starts, sections: Vec::new() }
    }

    /// Sentences of the tiny vocabulary, in paragraphs longer than a passage (so passages end inside
    /// paragraphs, where text-splitter overlaps them), across three pages.
    fn long_document() -> ParsedDocument {
        let sentences = ["The cat sat on the mat.", "A dog ran in the park.", "What is the park?", "The dogs sat."];
        let mut text = String::new();
        let mut page_starts = vec![0];
        for i in 0..120 {
            if i % 12 == 0 && i > 0 {
                text.push_str("\n\n");
            }
            if i == 40 || i == 80 {
                page_starts.push(text.chars().count());
            }
            text.push_str(sentences[i % sentences.len()]);
            text.push(' ');
        }
        document(text.trim_end(), page_starts)
    }

    #[test]
    fn passages_respect_the_limit_cover_the_text_and_overlap() {
        let doc = long_document();
        let tokenizer = tiny_tokenizer();
        for settings in [ChunkSettings { max_tokens: 32, overlap: 8 }, ChunkSettings { max_tokens: 64, overlap: 0 }] {
            let passages = chunk("doc.pdf", &doc, &tokenizer, settings).unwrap();
            assert!(passages.len() > 5, "{settings:?}: {}", passages.len());
            let chars: Vec<char> = doc.text.chars().collect();
            for (i, p) in passages.iter().enumerate() {
                assert_eq!(p.ord, i);
                assert!(p.tokens <= settings.max_tokens && p.tokens > 0, "{p:?}");
                // Offsets point at the passage's own text.
                assert_eq!(chars[p.char_start..p.char_end].iter().collect::<String>(), p.text);
                assert!(p.page_start <= p.page_end);
            }
            // Together they cover every non-blank character, in order.
            let mut covered = vec![false; chars.len()];
            for p in &passages {
                covered[p.char_start..p.char_end].iter_mut().for_each(|c| *c = true);
            }
            assert!(chars.iter().zip(&covered).all(|(c, covered)| *covered || c.is_whitespace()));
            for pair in passages.windows(2) {
                assert!(pair[0].char_start < pair[1].char_start);
                if settings.overlap == 0 {
                    assert!(pair[0].char_end <= pair[1].char_start, "no overlap asked: {pair:?}");
                }
            }
            if settings.overlap > 0 {
                // Neighbours share text, and never more than the overlap allows.
                let shared: Vec<usize> = passages
                    .windows(2)
                    .map(|pair| {
                        let text: String =
                            chars[pair[1].char_start..pair[0].char_end.max(pair[1].char_start)].iter().collect();
                        tokenizer.encode(text, false).unwrap().get_ids().len()
                    })
                    .collect();
                // text-splitter overlaps passages that end inside a paragraph (by whole sentences
                // that fit the overlap), not those ending on a paragraph break.
                assert!(shared.iter().filter(|&&n| n > 0).count() * 2 > shared.len(), "most overlap: {shared:?}");
                assert!(shared.iter().all(|&n| n <= settings.overlap), "{shared:?}");
            }
            assert_eq!(passages.first().unwrap().page_start, Some(1));
            assert_eq!(passages.last().unwrap().page_end, Some(3));
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        let doc = long_document();
        let error = chunk("d", &doc, &tiny_tokenizer(), ChunkSettings { max_tokens: 32, overlap: 32 }).unwrap_err();
        assert!(error.to_string().contains("overlap below the size"), "{error}");
    }
}
