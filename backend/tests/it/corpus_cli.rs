//! `attune ingest`, `attune triples import|export` and `attune synth`'s argument checks from the
//! command line, on a temporary data directory (the default retriever's tokenizer measures passages).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::common::workspace;

fn fixture(name: &str) -> PathBuf {
    workspace().join("backend/tests/fixtures").join(name)
}

fn attune(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attune"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .current_dir(workspace())
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn ingest_import_export_and_clear_failures() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let markdown = dir.path().join("guide.md");
    std::fs::write(&markdown, "# Guide\n\nCats sleep a lot.\n\n## Dogs\n\nDogs herd sheep.").unwrap();
    let pdf = fixture("two_pages.pdf");
    let output = attune(&data, &["ingest", pdf.to_str().unwrap(), markdown.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("two_pages.pdf: document 1") && stdout.contains("from 2 pages"), "{stdout}");
    assert!(stdout.contains("guide.md: document 2"), "{stdout}");

    let output = attune(&data, &["ingest", pdf.to_str().unwrap()]);
    assert!(output.status.success());
    assert!(text(&output).contains("already ingested as document 1"), "{}", text(&output));

    let bad = dir.path().join("slides.pptx");
    std::fs::write(&bad, b"PK").unwrap();
    let output = attune(&data, &["ingest", bad.to_str().unwrap(), fixture("scanned.pdf").to_str().unwrap()]);
    assert!(!output.status.success());
    let message = text(&output);
    assert!(message.contains("unsupported file type") && message.contains("OCR"), "{message}");
    assert!(message.contains("2 of 2 files were not ingested"), "{message}");

    let output = attune(&data, &["triples", "import", fixture("halueval_24.csv").to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("imported 24 triples"), "{}", text(&output));
    let all = dir.path().join("all.jsonl");
    let output =
        attune(&data, &["triples", "export", "--format", "jsonl", "--status", "all", "--out", all.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(std::fs::read_to_string(&all).unwrap().lines().count(), 24);
    // Approved only by default: none are approved yet.
    let approved = dir.path().join("approved.csv");
    let output = attune(&data, &["triples", "export", "--format", "csv", "--out", approved.to_str().unwrap()]);
    assert!(output.status.success());
    assert_eq!(
        std::fs::read_to_string(&approved).unwrap(),
        "Abstract,Question,Answer,id,status,origin,document,page_start,page_end\n"
    );

    let output = attune(&data, &["synth", "--llm", "openai"]);
    assert!(!output.status.success());
    assert!(text(&output).contains("--llm-base-url and --llm-model"), "{}", text(&output));
}
