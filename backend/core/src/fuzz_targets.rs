//! The inputs an attacker or an unlucky user controls, as functions of raw bytes: what the fuzzers
//! (`fuzz/`, `cargo fuzz`) drive and what the regression test replays in `make test`. Each must
//! return (with an error or a value), never panic, hang or abort. (The WebSocket decoder is the
//! server's: `attune_server::serve::decode_client_message`.)

use std::io::Cursor;

use crate::model::gguf_tokenizer;
use crate::{ingest, synth, train};

/// A document upload: the first byte picks the kind (PDF, text, Markdown), the rest is the file.
pub fn document(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else { return };
    let name = ["upload.pdf", "upload.txt", "upload.md"][usize::from(kind) % 3];
    if let Ok(parsed) = ingest::parse(name, bytes) {
        let _ = parsed.pages();
        let _ = parsed.section_at(parsed.text.len() / 2);
    }
}

/// What an LLM answered to the question and answer prompts.
pub fn synthesis_output(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for question in synth::parse::questions(&text) {
        assert!(!question.trim().is_empty(), "an empty question came out of {text:?}");
    }
    let _ = synth::parse::answer(&text);
}

/// An imported triples file: the first byte picks CSV or JSONL, the rest is the file.
pub fn triples_file(data: &[u8], scratch: &std::path::Path) {
    let Some((&kind, bytes)) = data.split_first() else { return };
    let path = scratch.join(if kind % 2 == 0 { "triples.csv" } else { "triples.jsonl" });
    if std::fs::write(&path, bytes).is_ok() {
        let _ = train::data::load_triples(&path, &train::data::CsvColumns::default());
    }
}

/// A GGUF file's header and metadata, then the tokenizer rebuilt from them.
pub fn gguf_metadata(data: &[u8]) {
    if let Ok(content) = candle_core::quantized::gguf_file::Content::read(&mut Cursor::new(data)) {
        let _ = gguf_tokenizer::from_gguf(&content);
    }
}
