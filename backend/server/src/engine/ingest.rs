//! One file in: size limit, duplicate check by SHA-256, parsing and chunking on a blocking thread,
//! then the document and all its passages in one transaction.

use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use attune_shared::Document;

use super::EngineError;
use crate::ingest::{ChunkSettings, DocumentKind, IngestError, chunk, parse};
use crate::store::Store;
use crate::store::corpus::{NewDocument, NewPassage};

/// What became of one file.
#[derive(Debug, Clone)]
pub enum Ingested {
    New(Document),
    /// The same bytes were ingested before: that document.
    Duplicate(Document),
}

/// Ingests `bytes` as the file `name`.
pub async fn ingest_file(
    store: &Store,
    tokenizer: &Tokenizer,
    name: &str,
    bytes: Vec<u8>,
    settings: ChunkSettings,
    max_bytes: u64,
) -> Result<Ingested, EngineError> {
    if bytes.len() as u64 > max_bytes {
        return Err(EngineError::TooLarge { name: name.to_owned(), size: bytes.len() as u64, limit: max_bytes });
    }
    if DocumentKind::from_name(name).is_none() {
        return Err(IngestError::Unsupported { name: name.to_owned() }.into());
    }
    let sha256 = format!("{:x}", Sha256::digest(&bytes));
    if let Some(existing) = store.document_by_sha256(&sha256).await? {
        return Ok(Ingested::Duplicate(existing));
    }
    let tokenizer = tokenizer.clone();
    let owned_name = name.to_owned();
    let size = bytes.len() as u64;
    let new = tokio::task::spawn_blocking(move || -> Result<NewDocument, IngestError> {
        let doc = parse(&owned_name, &bytes)?;
        let passages = chunk(&owned_name, &doc, &tokenizer, settings)?;
        Ok(NewDocument {
            name: owned_name,
            kind: doc.kind.as_str().to_owned(),
            sha256,
            bytes: size,
            pages: doc.pages().map(|p| p as u32),
            chunk_tokens: settings.max_tokens as u32,
            chunk_overlap: settings.overlap as u32,
            passages: passages
                .into_iter()
                .map(|p| NewPassage {
                    text: p.text,
                    char_start: p.char_start as u64,
                    char_end: p.char_end as u64,
                    page_start: p.page_start,
                    page_end: p.page_end,
                    tokens: p.tokens as u32,
                    section: p.section,
                })
                .collect(),
        })
    })
    .await
    .map_err(|e| EngineError::Task(e.to_string()))??;
    Ok(Ingested::New(store.insert_document(&new).await?))
}
