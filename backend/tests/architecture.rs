//! Checks the invariants ARCHITECTURE.md states as absences, by reading the sources
//! (in the manner of rust-analyzer's tidy tests), so they cannot silently erode.

use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return files };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Lines of `files` that mention any of `needles` (comments included: they name the same thing).
fn offending(files: &[PathBuf], needles: &[&str]) -> Vec<String> {
    let mut hits = Vec::new();
    for file in files {
        let text = fs::read_to_string(file).unwrap();
        for (number, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            if needles.iter().any(|n| line.contains(n)) {
                hits.push(format!("{}:{}: {}", file.display(), number + 1, line.trim()));
            }
        }
    }
    hits
}

#[test]
fn compute_modules_do_not_depend_on_tokio_axum_or_sqlx() {
    let src = workspace().join("backend/src");
    let files: Vec<PathBuf> =
        ["model", "train", "eval", "ingest", "synth"].iter().flat_map(|m| rust_files(&src.join(m))).collect();
    assert!(!files.is_empty());
    let hits = offending(&files, &["tokio", "axum", "sqlx"]);
    assert!(
        hits.is_empty(),
        "model/, train/, eval/, ingest/, synth/ must stay free of async and storage:\n{}",
        hits.join("\n")
    );
}

#[test]
fn only_store_issues_sql() {
    let src = workspace().join("backend/src");
    let files: Vec<PathBuf> = rust_files(&src).into_iter().filter(|f| !f.starts_with(src.join("store"))).collect();
    let hits = offending(&files, &["sqlx::query", "sqlx::migrate", "SELECT ", "INSERT ", "UPDATE ", "DELETE FROM"]);
    assert!(hits.is_empty(), "SQL outside store/:\n{}", hits.join("\n"));
}

#[test]
fn only_serve_and_shared_know_the_wire_format() {
    let src = workspace().join("backend/src");
    let files: Vec<PathBuf> =
        rust_files(&src).into_iter().filter(|f| !f.starts_with(src.join("serve")) && !f.ends_with("main.rs")).collect();
    let hits = offending(&files, &["axum", "\"/api", "/ws\"", "ServerMessage", "ClientMessage", "ErrorBody"]);
    assert!(hits.is_empty(), "wire format outside serve/:\n{}", hits.join("\n"));
}

#[test]
fn shared_depends_on_serde_only() {
    let manifest = fs::read_to_string(workspace().join("shared/Cargo.toml")).unwrap();
    let deps = manifest.split("[dependencies]").nth(1).unwrap().split("\n[").next().unwrap();
    let names: Vec<&str> =
        deps.lines().filter_map(|l| l.split(['=', '.']).next()).map(str::trim).filter(|n| !n.is_empty()).collect();
    assert_eq!(names, ["serde"], "shared/ may depend on serde only");
}

#[test]
fn every_source_file_says_what_it_is_for() {
    let root = workspace();
    let files: Vec<PathBuf> = ["backend/src", "backend/tests", "shared/src", "frontend/src", "frontend/tests"]
        .iter()
        .flat_map(|d| rust_files(&root.join(d)))
        .collect();
    let missing: Vec<String> = files
        .iter()
        .filter(|f| !fs::read_to_string(f).unwrap().starts_with("//!"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(missing.is_empty(), "files without a leading //! line:\n{}", missing.join("\n"));
}

#[test]
fn unsafe_code_lives_only_in_the_binarys_runtime_tuning_and_the_cuda_kernel_launches() {
    let root = workspace();
    let files: Vec<PathBuf> = ["backend/src", "shared/src", "frontend/src"]
        .iter()
        .flat_map(|d| rust_files(&root.join(d)))
        .filter(|f| !f.ends_with("backend/src/main.rs") && !f.ends_with("backend/src/model/cuda_ops.rs"))
        .collect();
    let hits = offending(&files, &["unsafe", "allow(unsafe_code)"]);
    assert!(hits.is_empty(), "unsafe outside main.rs's tune_runtime and model/cuda_ops.rs:\n{}", hits.join("\n"));
    let main = fs::read_to_string(root.join("backend/src/main.rs")).unwrap();
    assert_eq!(main.matches("#[allow(unsafe_code)]").count(), 1, "one function may use unsafe");
}
