//! Parsing an uploaded file into text: PDF through pdf-extract (one text per page, page starts
//! kept), plain text (UTF-8, or UTF-16 with a byte-order mark), Markdown through pulldown-cmark
//! (structure stripped to paragraphs, headings kept as their own lines and as section context).

use pulldown_cmark::{Event, HeadingLevel, Parser, Tag, TagEnd};
use serde::{Deserialize, Serialize};

use super::IngestError;

/// What kind of document a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentKind {
    Pdf,
    Text,
    Markdown,
}

impl DocumentKind {
    /// The kind a file name says (by extension), if Attune reads it as a document.
    pub fn from_name(name: &str) -> Option<DocumentKind> {
        let extension = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase())?;
        match extension.as_str() {
            "pdf" => Some(DocumentKind::Pdf),
            "txt" | "text" => Some(DocumentKind::Text),
            "md" | "markdown" => Some(DocumentKind::Markdown),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DocumentKind::Pdf => "pdf",
            DocumentKind::Text => "text",
            DocumentKind::Markdown => "markdown",
        }
    }
}

/// A document's text with where its pages and sections start (character offsets into `text`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParsedDocument {
    pub kind: DocumentKind,
    pub text: String,
    /// Character offset at which each page starts (PDF only; page 1 first).
    pub page_starts: Vec<usize>,
    /// `(character offset, heading path)` where each Markdown section starts, in order.
    pub sections: Vec<(usize, String)>,
}

impl ParsedDocument {
    /// The 1-based page holding character `offset` (PDF only).
    pub fn page_at(&self, offset: usize) -> Option<u32> {
        if self.page_starts.is_empty() {
            return None;
        }
        let index = self.page_starts.partition_point(|&start| start <= offset).max(1) - 1;
        Some(index as u32 + 1)
    }

    /// The heading path of the section holding character `offset` (Markdown only).
    pub fn section_at(&self, offset: usize) -> Option<&str> {
        let index = self.sections.partition_point(|(start, _)| *start <= offset);
        index.checked_sub(1).map(|i| self.sections[i].1.as_str())
    }

    pub fn pages(&self) -> Option<usize> {
        (!self.page_starts.is_empty()).then_some(self.page_starts.len())
    }
}

/// Parses `bytes` as the document `name` says it is.
pub fn parse(name: &str, bytes: &[u8]) -> Result<ParsedDocument, IngestError> {
    let kind = DocumentKind::from_name(name).ok_or_else(|| IngestError::Unsupported { name: name.to_owned() })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(IngestError::Empty { name: name.to_owned() });
    }
    match kind {
        DocumentKind::Pdf => parse_pdf(name, bytes),
        DocumentKind::Text => {
            let text = normalise(&plain_letters(decode(name, bytes)?));
            if text.trim().is_empty() {
                return Err(IngestError::Empty { name: name.to_owned() });
            }
            Ok(ParsedDocument { kind, text, page_starts: Vec::new(), sections: Vec::new() })
        }
        DocumentKind::Markdown => {
            let (text, sections) = markdown_to_text(&plain_letters(decode(name, bytes)?));
            if text.trim().is_empty() {
                return Err(IngestError::Empty { name: name.to_owned() });
            }
            Ok(ParsedDocument { kind, text, page_starts: Vec::new(), sections })
        }
    }
}

/// UTF-8 (a byte-order mark dropped), or UTF-16 when it starts with one.
fn decode(name: &str, bytes: &[u8]) -> Result<String, IngestError> {
    let utf16 = |little: bool| {
        let units: Vec<u16> = bytes[2..]
            .chunks_exact(2)
            .map(|p| if little { u16::from_le_bytes([p[0], p[1]]) } else { u16::from_be_bytes([p[0], p[1]]) })
            .collect();
        String::from_utf16(&units).map_err(|_| IngestError::Encoding { name: name.to_owned(), offset: 0 })
    };
    match bytes {
        [0xFF, 0xFE, ..] => utf16(true),
        [0xFE, 0xFF, ..] => utf16(false),
        _ => {
            let body = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
            std::str::from_utf8(body)
                .map(str::to_owned)
                .map_err(|e| IngestError::Encoding { name: name.to_owned(), offset: e.valid_up_to() })
        }
    }
}

/// The text with Unicode's ligature characters as letters.
fn plain_letters(text: String) -> String {
    super::ligature::unicode_ligatures(&text).0
}

/// Unix line ends, no trailing spaces, at most one blank line in a row, no control characters.
fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank_run = 0;
    for line in text.replace("\r\n", "\n").replace('\r', "\n").split('\n') {
        let line: String = line.chars().map(|c| if c.is_control() && c != '\t' { ' ' } else { c }).collect::<String>();
        let line = line.trim_end();
        if line.trim().is_empty() {
            blank_run += 1;
            if blank_run > 1 || out.is_empty() {
                continue;
            }
            out.push('\n');
        } else {
            blank_run = 0;
            out.push_str(line);
            out.push('\n');
        }
    }
    out.trim_end().to_owned()
}

fn parse_pdf(name: &str, bytes: &[u8]) -> Result<ParsedDocument, IngestError> {
    // pdf-extract panics on some malformed files; a panic is a bad file, not a crash.
    let pages = std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem_by_pages(bytes))
        .map_err(|_| IngestError::Pdf { name: name.to_owned(), message: "the PDF parser failed on it".into() })?
        .map_err(|e| IngestError::Pdf { name: name.to_owned(), message: e.to_string() })?;
    // Ligatures repaired before `normalise`, which would turn OT1's raw codes into spaces.
    let (pages, _) = super::ligature::repair(&pages);
    let mut text = String::new();
    let mut page_starts = Vec::with_capacity(pages.len());
    let mut chars = 0;
    for page in &pages {
        if !text.is_empty() {
            text.push_str("\n\n");
            chars += 2;
        }
        page_starts.push(chars);
        let page = normalise(page);
        chars += page.chars().count();
        text.push_str(&page);
    }
    let letters = text.chars().filter(|c| c.is_alphanumeric()).count();
    if letters < 16 * pages.len().max(1) && letters < 200 {
        return Err(IngestError::NoText { name: name.to_owned(), pages: pages.len() });
    }
    Ok(ParsedDocument { kind: DocumentKind::Pdf, text, page_starts, sections: Vec::new() })
}

/// Markdown to plain text: blocks become paragraphs, list items lines starting "- ", code kept
/// verbatim, links and images by their text; headings stay as lines and start sections.
fn markdown_to_text(source: &str) -> (String, Vec<(usize, String)>) {
    let mut text = String::new();
    let mut chars = 0usize;
    let mut sections = Vec::new();
    let mut path: Vec<(HeadingLevel, String)> = Vec::new();
    let mut heading: Option<(HeadingLevel, String)> = None;
    let push = |text: &mut String, chars: &mut usize, piece: &str| {
        text.push_str(piece);
        *chars += piece.chars().count();
    };
    let block_break = |text: &mut String, chars: &mut usize| {
        let trailing = text.chars().rev().take_while(|c| *c == '\n').count();
        if !text.is_empty() && trailing < 2 {
            let add = "\n".repeat(2 - trailing);
            text.push_str(&add);
            *chars += add.len();
        }
    };
    for event in Parser::new(source) {
        match event {
            Event::Start(Tag::Heading { level, .. }) => {
                block_break(&mut text, &mut chars);
                heading = Some((level, String::new()));
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some((level, title)) = heading.take() {
                    let title = title.trim().to_owned();
                    path.retain(|(l, _)| *l < level);
                    path.push((level, title.clone()));
                    sections.push((chars, path.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>().join(" › ")));
                    push(&mut text, &mut chars, &title);
                    block_break(&mut text, &mut chars);
                }
            }
            Event::Start(Tag::Paragraph | Tag::CodeBlock(_) | Tag::BlockQuote(_) | Tag::Table(_)) => {
                block_break(&mut text, &mut chars)
            }
            Event::End(TagEnd::Paragraph | TagEnd::CodeBlock | TagEnd::BlockQuote(_) | TagEnd::Table) => {
                block_break(&mut text, &mut chars)
            }
            Event::Start(Tag::Item) => {
                if !text.is_empty() && !text.ends_with('\n') {
                    push(&mut text, &mut chars, "\n");
                }
                push(&mut text, &mut chars, "- ");
            }
            Event::End(TagEnd::Item | TagEnd::TableRow | TagEnd::TableHead) if !text.ends_with('\n') => {
                push(&mut text, &mut chars, "\n");
            }
            Event::End(TagEnd::TableCell) => push(&mut text, &mut chars, " | "),
            Event::Text(t) | Event::Code(t) => match &mut heading {
                Some((_, title)) => title.push_str(&t),
                None => push(&mut text, &mut chars, &t),
            },
            Event::SoftBreak | Event::HardBreak => match &mut heading {
                Some((_, title)) => title.push(' '),
                None => push(&mut text, &mut chars, "\n"),
            },
            _ => {}
        }
    }
    let trimmed = text.trim_end().len();
    text.truncate(trimmed);
    (text, sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_extension() {
        assert_eq!(DocumentKind::from_name("a.PDF"), Some(DocumentKind::Pdf));
        assert_eq!(DocumentKind::from_name("notes.md"), Some(DocumentKind::Markdown));
        assert_eq!(DocumentKind::from_name("x.txt"), Some(DocumentKind::Text));
        assert_eq!(DocumentKind::from_name("x.docx"), None);
        assert_eq!(DocumentKind::from_name("README"), None);
    }

    #[test]
    fn text_is_decoded_and_normalised() {
        let doc = parse("a.txt", b"\xEF\xBB\xBFFirst line  \r\nsecond\r\n\r\n\r\n\r\nthird\x07").unwrap();
        assert_eq!(doc.text, "First line\nsecond\n\nthird");
        let utf16: Vec<u8> =
            [0xFF, 0xFE].into_iter().chain("héllo".encode_utf16().flat_map(u16::to_le_bytes)).collect();
        assert_eq!(parse("b.txt", &utf16).unwrap().text, "héllo");
    }

    #[test]
    fn bad_text_inputs_say_what_is_wrong() {
        let error = parse("latin1.txt", b"caf\xE9 au lait").unwrap_err();
        assert!(matches!(error, IngestError::Encoding { offset: 3, .. }), "{error}");
        assert!(error.to_string().contains("not UTF-8"));
        assert!(matches!(parse("empty.txt", b"  \n\t").unwrap_err(), IngestError::Empty { .. }));
        assert!(matches!(parse("slides.pptx", b"PK..").unwrap_err(), IngestError::Unsupported { .. }));
        assert!(matches!(parse("broken.pdf", b"%PDF-1.4 not really").unwrap_err(), IngestError::Pdf { .. }));
    }

    #[test]
    fn markdown_keeps_headings_as_text_and_sections() {
        let source = "# Guide\n\nIntro *text* with a [link](http://x).\n\n## Install\n\n- one\n- two\n\n```\ncode here\n```\n\n## Use\n\nRun it.";
        let doc = parse("guide.md", source.as_bytes()).unwrap();
        assert_eq!(
            doc.text,
            "Guide\n\nIntro text with a link.\n\nInstall\n\n- one\n- two\n\ncode here\n\nUse\n\nRun it."
        );
        let offset_of = |needle: &str| doc.text[..doc.text.find(needle).unwrap()].chars().count();
        assert_eq!(doc.section_at(offset_of("Intro")), Some("Guide"));
        assert_eq!(doc.section_at(offset_of("- two")), Some("Guide › Install"));
        assert_eq!(doc.section_at(offset_of("Run it")), Some("Guide › Use"));
        assert_eq!(doc.section_at(0), Some("Guide"));
    }

    /// `tex_ligatures.pdf` (written by `backend/tests/fixtures/make_pdf_fixtures.py`): prose in a
    /// T1-encoded TeX font without /Encoding or /ToUnicode, code in Courier.
    #[test]
    fn tex_ligatures_in_a_pdf_come_out_as_letters() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tex_ligatures.pdf");
        let bytes = std::fs::read(path).unwrap();
        let raw = pdf_extract::extract_text_from_mem_by_pages(&bytes).unwrap().concat();
        assert!(raw.contains("e\u{02D9}ect") && raw.contains("\u{02DD}tted"), "the fixture shows the damage: {raw}");
        let doc = parse("vignette.pdf", &bytes).unwrap();
        for glyph in ['\u{02D9}', '\u{02DA}', '\u{02DB}', '\u{02DC}', '\u{02DD}'] {
            assert!(!doc.text.contains(glyph), "{glyph:?} left in {}", doc.text);
        }
        for word in ["fitted", "effect", "coefficient", "influence", "survfit", "offset", "different", "baffling"] {
            assert!(doc.text.to_lowercase().contains(word), "{word} missing from {}", doc.text);
        }
        assert_eq!(doc.pages(), Some(2));
    }

    #[test]
    fn pages_by_offset() {
        let doc = ParsedDocument {
            kind: DocumentKind::Pdf,
            text: "aaaa\n\nbbbb\n\ncccc".into(),
            page_starts: vec![0, 6, 12],
            sections: Vec::new(),
        };
        assert_eq!(doc.page_at(0), Some(1));
        assert_eq!(doc.page_at(5), Some(1));
        assert_eq!(doc.page_at(6), Some(2));
        assert_eq!(doc.page_at(15), Some(3));
    }
}
