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

/// How documents are parsed. PDF parsing has no time or memory bound of its own (fuzzing found a
/// 1.4 KB file that loops forever, and a compressed stream can inflate to gigabytes), so the server
/// parses PDFs in a child process with limits; text and Markdown parse in process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentParser {
    InProcess,
    Sandboxed(SandboxLimits),
}

/// The child process that parses one PDF: `program PARSE_SUBCOMMAND NAME MEMORY_BYTES` reads the
/// file on standard input and writes the [`crate::ingest::ParsedDocument`] as JSON, or the
/// [`IngestError`] as JSON on standard error with exit code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxLimits {
    /// The `attune` binary.
    pub program: std::path::PathBuf,
    /// Address-space limit of the child (setrlimit RLIMIT_AS).
    pub memory_bytes: u64,
    /// Wall-clock limit; the child is killed after it.
    pub seconds: u64,
}

/// The hidden subcommand of `attune` that [`SandboxLimits`] runs.
pub const PARSE_SUBCOMMAND: &str = "__parse-document";

impl SandboxLimits {
    /// The limits `attune serve` uses: 2 GiB and 120 s.
    pub fn for_program(program: std::path::PathBuf) -> SandboxLimits {
        SandboxLimits { program, memory_bytes: 2 << 30, seconds: 120 }
    }
}

impl DocumentParser {
    /// Parses on the calling thread (blocking: call it off the async threads).
    pub fn parse(&self, name: &str, bytes: &[u8]) -> Result<crate::ingest::ParsedDocument, IngestError> {
        match self {
            DocumentParser::Sandboxed(limits) if DocumentKind::from_name(name) == Some(DocumentKind::Pdf) => {
                parse_in_child(limits, name, bytes)
            }
            _ => parse(name, bytes),
        }
    }
}

fn parse_in_child(
    limits: &SandboxLimits,
    name: &str,
    bytes: &[u8],
) -> Result<crate::ingest::ParsedDocument, IngestError> {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    let failed = |message: String| IngestError::Pdf { name: name.to_owned(), message };
    // The parser runs with glibc's defaults (its memory limit was measured with them), not with the
    // allocator settings this process may run with.
    let mut child = crate::memory::without_allocator_settings(&mut Command::new(&limits.program))
        .arg(PARSE_SUBCOMMAND)
        .arg(name)
        .arg(limits.memory_bytes.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot start the PDF parser {}: {e}", limits.program.display())))?;
    // Feed, and drain both outputs, on their own threads: the child may block on a full pipe.
    let mut stdin = child.stdin.take().expect("piped");
    let input = bytes.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let mut stderr = child.stderr.take().expect("piped");
    let error_reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut out);
        out
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(limits.seconds);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!(
                    "parsing it took longer than {} s (the file may be damaged or built to stall a parser)",
                    limits.seconds
                )));
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(10)),
            Err(e) => return Err(failed(format!("lost the PDF parser: {e}"))),
        }
    };
    let _ = feeder.join();
    let out = reader.join().unwrap_or_default();
    let errors = String::from_utf8_lossy(&error_reader.join().unwrap_or_default()).trim().to_owned();
    if status.success() {
        return serde_json::from_slice(&out).map_err(|e| failed(format!("the PDF parser's answer is unreadable: {e}")));
    }
    if status.code() == Some(2) {
        // The parser's own verdict (no text, unreadable PDF), exactly as the in-process parse gives it.
        return Err(serde_json::from_str::<IngestError>(&errors).unwrap_or_else(|_| failed(errors)));
    }
    tracing::warn!("the PDF parser for {name} ended with {status}: {errors}");
    Err(failed(format!(
        "parsing it needed more than {} MiB of memory or crashed the parser (the file may be damaged or a \
         decompression bomb)",
        limits.memory_bytes >> 20
    )))
}

/// The child's side: parse `bytes` as `name`; the document as JSON, or the error as JSON.
pub fn parse_for_parent(name: &str, bytes: &[u8]) -> Result<String, String> {
    match parse(name, bytes) {
        Ok(doc) => Ok(serde_json::to_string(&doc).expect("a parsed document serialises")),
        Err(error) => Err(serde_json::to_string(&error).expect("an ingest error serialises")),
    }
}

/// Ingests `bytes` as the file `name`.
pub async fn ingest_file(
    store: &Store,
    tokenizer: &Tokenizer,
    parser: &DocumentParser,
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
    let parser = parser.clone();
    let new = tokio::task::spawn_blocking(move || -> Result<NewDocument, IngestError> {
        let doc = parser.parse(&owned_name, &bytes)?;
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
