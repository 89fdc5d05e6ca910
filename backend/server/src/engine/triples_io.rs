//! Triples out (CSV in DALM's columns `Abstract,Question,Answer` and the review's columns, JSONL,
//! Alpaca and ShareGPT JSONL, a Hugging Face dataset zip) and in (the trainer's readers: CSV and
//! JSONL).

use std::path::Path;

use attune_shared::{Triple, TripleOrigin};

use super::EngineError;
use crate::store::corpus::NewTripleRow;
use crate::train::data::{CsvColumns, Skipped, load_triples, neutralise_formula};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// DALM's columns first (`Abstract,Question,Answer`), then id, status, origin, document, pages.
    Csv,
    /// `{question, passage, answer, id, status, origin, document, page_start, page_end}` per line.
    Jsonl,
    /// Alpaca's `{instruction, input, output}`: the RAG instruction and question, the passage.
    Alpaca,
    /// ShareGPT's `{conversations: [{from, value}, …]}` with the RAG prompt as the human turn.
    ShareGpt,
    /// A zip that `datasets.load_dataset(path)` reads: `README.md` (a dataset card naming the
    /// file) and `data/train.jsonl` in the JSONL layout.
    HfDataset,
}

impl ExportFormat {
    pub const NAMES: &str = "csv, jsonl, alpaca, sharegpt or hf";

    pub fn from_name(name: &str) -> Option<ExportFormat> {
        match name {
            "csv" => Some(ExportFormat::Csv),
            "jsonl" => Some(ExportFormat::Jsonl),
            "alpaca" => Some(ExportFormat::Alpaca),
            "sharegpt" => Some(ExportFormat::ShareGpt),
            "hf" => Some(ExportFormat::HfDataset),
            _ => None,
        }
    }

    /// A format's name for a command line (the message names them all).
    pub fn parse(name: &str) -> Result<ExportFormat, String> {
        ExportFormat::from_name(name).ok_or_else(|| format!("`{name}` is not a triples format: {}", Self::NAMES))
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Jsonl | ExportFormat::Alpaca | ExportFormat::ShareGpt => "application/x-ndjson",
            ExportFormat::HfDataset => "application/zip",
        }
    }

    /// The downloaded file's name.
    pub fn file_name(self) -> &'static str {
        match self {
            ExportFormat::Csv => "triples.csv",
            ExportFormat::Jsonl => "triples.jsonl",
            ExportFormat::Alpaca => "triples.alpaca.jsonl",
            ExportFormat::ShareGpt => "triples.sharegpt.jsonl",
            ExportFormat::HfDataset => "triples-dataset.zip",
        }
    }
}

fn page_cell(page: Option<u32>) -> String {
    page.map(|p| p.to_string()).unwrap_or_default()
}

fn jsonl(triples: &[Triple], line: impl Fn(&Triple) -> serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    for t in triples {
        out.extend_from_slice(line(t).to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

fn full_record(t: &Triple) -> serde_json::Value {
    serde_json::json!({
        "question": t.question, "passage": t.passage, "answer": t.answer, "id": t.id,
        "status": t.status.as_str(), "origin": t.origin.as_str(), "document": t.document,
        "page_start": t.page_start, "page_end": t.page_end,
    })
}

/// The dataset card of an `hf` export: YAML front matter that points `datasets` at the file.
fn dataset_card(count: usize) -> String {
    format!(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train.jsonl\n\
         task_categories:\n- question-answering\n---\n\n# Attune triples\n\n{count} (question, passage, answer) \
         triples exported by Attune. Columns: question, passage, answer, id, status, origin, document, page_start, \
         page_end.\n\n```python\nfrom datasets import load_dataset\nds = load_dataset(\"path/to/unzipped/folder\")\n```\n"
    )
}

/// The bytes of `triples` in `format`.
pub fn export(triples: &[Triple], format: ExportFormat) -> Result<Vec<u8>, EngineError> {
    let instruction = crate::rag::prompt::INSTRUCTION;
    match format {
        ExportFormat::Csv => {
            let mut writer = csv::Writer::from_writer(Vec::new());
            let columns = CsvColumns::default();
            let failed = |e: csv::Error| EngineError::Failed(format!("cannot write CSV: {e}"));
            writer
                .write_record([
                    columns.passage.as_str(),
                    &columns.question,
                    &columns.answer,
                    "id",
                    "status",
                    "origin",
                    "document",
                    "page_start",
                    "page_end",
                ])
                .map_err(failed)?;
            for t in triples {
                // A cell starting with = + - @ would run as a formula in a spreadsheet.
                let text = [&t.passage, &t.question, &t.answer, t.document.as_deref().unwrap_or_default()]
                    .map(|c| neutralise_formula(c).into_owned());
                let [passage, question, answer, document] = text;
                let cells = [
                    passage,
                    question,
                    answer,
                    t.id.to_string(),
                    t.status.as_str().to_owned(),
                    t.origin.as_str().to_owned(),
                    document,
                    page_cell(t.page_start),
                    page_cell(t.page_end),
                ];
                writer.write_record(&cells).map_err(failed)?;
            }
            writer.into_inner().map_err(|e| EngineError::Failed(format!("cannot write CSV: {e}")))
        }
        ExportFormat::Jsonl => Ok(jsonl(triples, full_record)),
        ExportFormat::Alpaca => Ok(jsonl(triples, |t| {
            serde_json::json!({
                "instruction": format!("{instruction}\n\nQuestion: {}", t.question),
                "input": t.passage,
                "output": t.answer,
            })
        })),
        ExportFormat::ShareGpt => Ok(jsonl(triples, |t| {
            serde_json::json!({"conversations": [
                {"from": "human", "value": crate::rag::prompt::user_message(&t.question, &[t.passage.as_str()])},
                {"from": "gpt", "value": t.answer},
            ]})
        })),
        ExportFormat::HfDataset => {
            use std::io::Write;
            let failed = |e: zip::result::ZipError| EngineError::Failed(format!("cannot write the zip: {e}"));
            let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
            let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
            zip.start_file("README.md", options).map_err(failed)?;
            zip.write_all(dataset_card(triples.len()).as_bytes())
                .map_err(|e| EngineError::Failed(format!("cannot write the zip: {e}")))?;
            zip.start_file("data/train.jsonl", options).map_err(failed)?;
            zip.write_all(&jsonl(triples, full_record))
                .map_err(|e| EngineError::Failed(format!("cannot write the zip: {e}")))?;
            Ok(zip.finish().map_err(failed)?.into_inner())
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
            filter_reason: None,
            judge: None,
            approved: false,
        })
        .collect();
    Ok((rows, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn triple() -> Triple {
        serde_json::from_value(serde_json::json!({
            "id": 5, "question": "How long do cats sleep?", "answer": "fifteen hours", "passage": "Cats sleep fifteen hours.",
            "status": "approved", "origin": "synthetic", "version": 1, "created_at": "t", "updated_at": "t",
            "document": "=cats.pdf", "page_start": 2, "page_end": 3
        }))
        .unwrap()
    }

    #[test]
    fn every_format_carries_the_triple_and_its_source() {
        let t = [triple()];
        let csv = String::from_utf8(export(&t, ExportFormat::Csv).unwrap()).unwrap();
        assert_eq!(
            csv.lines().nth(1).unwrap(),
            "Cats sleep fifteen hours.,How long do cats sleep?,fifteen hours,5,approved,synthetic,'=cats.pdf,2,3"
        );
        let line = |format| -> serde_json::Value {
            serde_json::from_slice(export(&t, format).unwrap().split(|b| *b == b'\n').next().unwrap()).unwrap()
        };
        let full = line(ExportFormat::Jsonl);
        assert_eq!((full["id"].as_i64(), full["page_end"].as_u64()), (Some(5), Some(3)));
        let alpaca = line(ExportFormat::Alpaca);
        assert!(alpaca["instruction"].as_str().unwrap().ends_with("Question: How long do cats sleep?"));
        assert_eq!(
            (alpaca["input"].as_str(), alpaca["output"].as_str()),
            (Some("Cats sleep fifteen hours."), Some("fifteen hours"))
        );
        let sharegpt = line(ExportFormat::ShareGpt);
        let turns = sharegpt["conversations"].as_array().unwrap();
        assert_eq!(turns.iter().map(|t| t["from"].as_str().unwrap()).collect::<Vec<_>>(), ["human", "gpt"]);
        assert!(turns[0]["value"].as_str().unwrap().contains("Passage: Cats sleep"));
        // The dataset zip: a card that names the file, and the file.
        let zip = export(&t, ExportFormat::HfDataset).unwrap();
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
        let mut names: Vec<String> = archive.file_names().map(|n| n.unwrap().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["README.md", "data/train.jsonl"]);
        let mut card = String::new();
        std::io::Read::read_to_string(&mut archive.by_name("README.md").unwrap(), &mut card).unwrap();
        assert!(card.starts_with("---\nconfigs:") && card.contains("path: data/train.jsonl"), "{card}");
        assert_eq!(
            ExportFormat::parse("parquet").unwrap_err(),
            "`parquet` is not a triples format: csv, jsonl, alpaca, sharegpt or hf"
        );
    }
}
