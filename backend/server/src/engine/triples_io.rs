//! Triples out (CSV in DALM's columns `Abstract,Question,Answer`, or JSONL
//! `{question, passage, answer}`) and in (the trainer's readers: the same formats).

use std::path::Path;

use attune_shared::{Triple, TripleOrigin};

use super::EngineError;
use crate::store::corpus::NewTripleRow;
use crate::train::data::{CsvColumns, Skipped, load_triples, neutralise_formula};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Jsonl,
}

impl ExportFormat {
    pub fn from_name(name: &str) -> Option<ExportFormat> {
        match name {
            "csv" => Some(ExportFormat::Csv),
            "jsonl" => Some(ExportFormat::Jsonl),
            _ => None,
        }
    }

    /// `csv` or `jsonl`, for a command line (the message names both).
    pub fn parse(name: &str) -> Result<ExportFormat, String> {
        ExportFormat::from_name(name).ok_or_else(|| format!("`{name}` is not a triples format: csv or jsonl"))
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Jsonl => "application/x-ndjson",
        }
    }
}

/// Writes triples in `format`.
pub fn export(triples: &[Triple], format: ExportFormat) -> Result<Vec<u8>, EngineError> {
    match format {
        ExportFormat::Csv => {
            let mut writer = csv::Writer::from_writer(Vec::new());
            let columns = CsvColumns::default();
            let failed = |e: csv::Error| EngineError::Failed(format!("cannot write CSV: {e}"));
            writer.write_record([&columns.passage, &columns.question, &columns.answer]).map_err(failed)?;
            for t in triples {
                // A cell starting with = + - @ would run as a formula in a spreadsheet.
                let cells = [&t.passage, &t.question, &t.answer].map(|c| neutralise_formula(c));
                writer.write_record(cells.iter().map(|c| c.as_ref())).map_err(failed)?;
            }
            writer.into_inner().map_err(|e| EngineError::Failed(format!("cannot write CSV: {e}")))
        }
        ExportFormat::Jsonl => {
            let mut out = Vec::new();
            for t in triples {
                let line = serde_json::json!({"question": t.question, "passage": t.passage, "answer": t.answer});
                out.extend_from_slice(line.to_string().as_bytes());
                out.push(b'\n');
            }
            Ok(out)
        }
    }
}

/// Reads a triples file (`.csv` with DALM's columns, or `.jsonl`) into rows to insert as imported.
pub fn import(path: &Path) -> Result<(Vec<NewTripleRow>, Vec<Skipped>), EngineError> {
    let (triples, skipped) =
        load_triples(path, &CsvColumns::default()).map_err(|e| EngineError::Invalid(e.to_string()))?;
    let rows = triples
        .into_iter()
        .map(|t| NewTripleRow {
            question: t.question,
            answer: t.answer,
            passage: t.passage,
            passage_id: None,
            document_id: None,
            origin: TripleOrigin::Imported,
            model: None,
            prompt: None,
            synth_run_id: None,
        })
        .collect();
    Ok((rows, skipped))
}
