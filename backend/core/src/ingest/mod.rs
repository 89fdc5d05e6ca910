//! Documents in: PDF, plain text and Markdown parsed to text (keeping page boundaries and section
//! headings), then cut into passages by tokens of the retriever's tokenizer.
//!
//! Synchronous and free of tokio, axum and sqlx: callers store what this returns.

pub mod chunk;
pub mod ligature;
pub mod parse;

pub use chunk::{ChunkSettings, Passage, chunk};
pub use parse::{DocumentKind, ParsedDocument, parse};

/// Why a file could not become passages. Every variant names the file and says what to do.
/// Serialisable, so the sandboxed PDF parser's child hands the parent the very error it met.
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum IngestError {
    #[error(
        "{name}: unsupported file type; Attune reads .pdf, .txt and .md documents (triples: .csv and .jsonl through import)"
    )]
    Unsupported { name: String },
    #[error("{name} is empty")]
    Empty { name: String },
    #[error(
        "{name} is not UTF-8 text (the first invalid byte is at offset {offset}); save it as UTF-8 and upload it again"
    )]
    Encoding { name: String, offset: usize },
    #[error(
        "{name}: this PDF has no extractable text in its {pages} page(s), so it is probably scanned images; \
         run OCR on it first (for example with ocrmypdf) and upload the result"
    )]
    NoText { name: String, pages: usize },
    #[error("{name}: cannot read this PDF: {message}")]
    Pdf { name: String, message: String },
    #[error("{name} has no text to cut into passages")]
    NoPassages { name: String },
    #[error("chunk settings: {0}")]
    Settings(String),
}
