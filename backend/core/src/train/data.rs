//! Training and evaluation data: (question, passage, answer) triples from CSV (DALM's columns by
//! default) or JSONL, or the shared QA format (`{id,question,passage,answer}` JSONL with
//! `.corpus.jsonl` and `.split.tsv` beside it); a deterministic train/test split by passage.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::error::{Result, TrainError};

/// One training example: a question, the passage that answers it, and the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Triple {
    pub question: String,
    pub passage: String,
    pub answer: String,
}

/// Column names of a triples CSV (DALM's by default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsvColumns {
    pub passage: String,
    pub question: String,
    pub answer: String,
}

impl Default for CsvColumns {
    fn default() -> Self {
        CsvColumns { passage: "Abstract".into(), question: "Question".into(), answer: "Answer".into() }
    }
}

/// A row that was left out, and why (rows are numbered from 1, the header not counted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub row: usize,
    pub reason: String,
}

/// How to split triples that come without a split file.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitOptions {
    /// Share of the distinct passages whose questions go to the test set.
    pub test_fraction: f64,
    pub seed: u64,
}

impl SplitOptions {
    /// The split a run with `hyper` makes.
    pub fn of(hyper: &attune_shared::Hyper) -> Self {
        SplitOptions { test_fraction: hyper.test_fraction, seed: hyper.seed }
    }
}

/// `Hyper::default()`'s split.
impl Default for SplitOptions {
    fn default() -> Self {
        SplitOptions::of(&attune_shared::Hyper::default())
    }
}

/// Where the train/test split came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitSource {
    /// The shared format's `.split.tsv`.
    SplitFile,
    /// Shared format without a split file: every row is in both sets.
    AllRows,
    /// Triples split by passage with [`SplitOptions`].
    ByPassage,
}

/// Triples split into train and test, and the corpus retrieval searches.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub train: Vec<Triple>,
    pub test: Vec<Triple>,
    /// Every distinct passage (the shared format's `.corpus.jsonl`, or every passage of the triples).
    pub corpus: Vec<String>,
    pub skipped: Vec<Skipped>,
    pub split_source: SplitSource,
}

impl Dataset {
    /// The rows of a split by name (`train` or `test`).
    pub fn split(&self, name: &str) -> Result<&[Triple]> {
        match name {
            "train" => Ok(&self.train),
            "test" => Ok(&self.test),
            other => Err(TrainError::Data(format!("unknown split {other:?}: expected train or test"))),
        }
    }
}

/// Loads `path`: the shared QA format when a `.corpus.jsonl` sits beside it, else a triples file
/// (`.csv`, or `.jsonl`/`.json` with one `{question, passage, answer}` object a line).
pub fn load_dataset(path: &Path, columns: &CsvColumns, split: SplitOptions) -> Result<Dataset> {
    if let Some(files) = SharedFiles::beside(path) {
        return load_shared(&files);
    }
    let (triples, skipped) = load_triples(path, columns)?;
    let corpus = distinct(triples.iter().map(|t| t.passage.as_str()));
    let (train, test) = split_by_passage(&triples, split)?;
    Ok(Dataset { train, test, corpus, skipped, split_source: SplitSource::ByPassage })
}

/// Characters that make a spreadsheet read a cell as a formula (OWASP's CSV injection list).
pub const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// A CSV cell as exported: a cell that would start a formula gets a leading `'`, which
/// spreadsheets show as text.
pub fn neutralise_formula(cell: &str) -> std::borrow::Cow<'_, str> {
    if cell.starts_with(FORMULA_STARTS) { format!("'{cell}").into() } else { cell.into() }
}

/// The inverse of [`neutralise_formula`], so an exported file imports as it was.
fn unquote_formula(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if rest.starts_with(FORMULA_STARTS) => rest,
        _ => cell,
    }
}

/// Reads a triples file; rows with an empty field (or unreadable JSON) are skipped and reported.
pub fn load_triples(path: &Path, columns: &CsvColumns) -> Result<(Vec<Triple>, Vec<Skipped>)> {
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let (triples, skipped) = match extension.as_str() {
        "csv" => read_csv(path, columns)?,
        "jsonl" | "json" | "ndjson" => read_jsonl(path)?,
        _ => {
            return Err(TrainError::Data(format!(
                "{}: unknown triples format (expected .csv or .jsonl)",
                path.display()
            )));
        }
    };
    if triples.is_empty() {
        let why = skipped.first().map(|s| format!(" (row {}: {})", s.row, s.reason)).unwrap_or_default();
        return Err(TrainError::Data(format!("{}: no usable triples{why}", path.display())));
    }
    Ok((triples, skipped))
}

fn read_error(path: &Path, error: std::io::Error) -> TrainError {
    TrainError::Io { path: path.to_owned(), error }
}

/// A triple from raw fields, or why it cannot be one.
fn triple(question: &str, passage: &str, answer: &str) -> std::result::Result<Triple, String> {
    let empty: Vec<&str> = [("question", question), ("passage", passage), ("answer", answer)]
        .iter()
        .filter(|(_, v)| v.trim().is_empty())
        .map(|(n, _)| *n)
        .collect();
    if !empty.is_empty() {
        return Err(format!("empty {}", empty.join(", ")));
    }
    Ok(Triple { question: question.trim().into(), passage: passage.trim().into(), answer: answer.trim().into() })
}

fn read_csv(path: &Path, columns: &CsvColumns) -> Result<(Vec<Triple>, Vec<Skipped>)> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
    let headers = reader.headers().map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?.clone();
    let index = |name: &str| {
        headers.iter().position(|h| h.trim() == name).ok_or_else(|| {
            let found: Vec<&str> = headers.iter().collect();
            TrainError::Data(format!("{}: no column {name:?} (columns: {})", path.display(), found.join(", ")))
        })
    };
    let (q, p, a) = (index(&columns.question)?, index(&columns.passage)?, index(&columns.answer)?);
    let mut triples = Vec::new();
    let mut skipped = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let row = i + 1;
        match record {
            Ok(record) => {
                let field = |n: usize| unquote_formula(record.get(n).unwrap_or(""));
                match triple(field(q), field(p), field(a)) {
                    Ok(t) => triples.push(t),
                    Err(reason) => skipped.push(Skipped { row, reason }),
                }
            }
            Err(e) => skipped.push(Skipped { row, reason: e.to_string() }),
        }
    }
    Ok((triples, skipped))
}

#[derive(Deserialize)]
struct JsonTriple {
    #[serde(default)]
    question: Option<String>,
    #[serde(default)]
    passage: Option<String>,
    #[serde(default)]
    answer: Option<String>,
}

fn read_jsonl(path: &Path) -> Result<(Vec<Triple>, Vec<Skipped>)> {
    let text = fs::read_to_string(path).map_err(|e| read_error(path, e))?;
    let mut triples = Vec::new();
    let mut skipped = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = i + 1;
        match serde_json::from_str::<JsonTriple>(line) {
            Ok(t) => {
                let field = |f: &Option<String>| f.clone().unwrap_or_default();
                match triple(&field(&t.question), &field(&t.passage), &field(&t.answer)) {
                    Ok(t) => triples.push(t),
                    Err(reason) => skipped.push(Skipped { row, reason }),
                }
            }
            Err(e) => skipped.push(Skipped { row, reason: format!("not a JSON object: {e}") }),
        }
    }
    Ok((triples, skipped))
}

/// Distinct strings in first-seen order.
fn distinct<'a>(items: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut seen = HashSet::new();
    items.filter(|s| seen.insert(*s)).map(str::to_owned).collect()
}

/// Splits triples by passage (no passage on both sides): the distinct passages are shuffled with
/// the seed and the first `test_fraction` of them (at least one, when there are two or more and
/// the fraction is above 0) go to test.
pub fn split_by_passage(triples: &[Triple], options: SplitOptions) -> Result<(Vec<Triple>, Vec<Triple>)> {
    if !(0.0..1.0).contains(&options.test_fraction) {
        return Err(TrainError::Data(format!("test fraction {} is outside [0, 1)", options.test_fraction)));
    }
    let mut passages = distinct(triples.iter().map(|t| t.passage.as_str()));
    passages.shuffle(&mut StdRng::seed_from_u64(options.seed));
    let mut test_count = (passages.len() as f64 * options.test_fraction).round() as usize;
    if options.test_fraction > 0.0 && passages.len() >= 2 {
        test_count = test_count.clamp(1, passages.len() - 1);
    }
    let test_passages: HashSet<&str> = passages[..test_count].iter().map(String::as_str).collect();
    let (test, train) = triples.iter().cloned().partition(|t| test_passages.contains(t.passage.as_str()));
    Ok((train, test))
}

/// Whether `path` is a file of the shared QA format (`x.jsonl` with `x.corpus.jsonl` beside it).
pub fn is_shared_format(path: &Path) -> bool {
    SharedFiles::beside(path).is_some()
}

/// The files of the shared QA format.
struct SharedFiles {
    rows: PathBuf,
    corpus: PathBuf,
    split: PathBuf,
}

impl SharedFiles {
    /// `x.jsonl` with `x.corpus.jsonl` beside it.
    fn beside(path: &Path) -> Option<SharedFiles> {
        let name = path.file_name()?.to_str()?;
        let stem = name.strip_suffix(".jsonl")?;
        if stem.ends_with(".corpus") {
            return None;
        }
        let corpus = path.with_file_name(format!("{stem}.corpus.jsonl"));
        corpus.is_file().then(|| SharedFiles {
            rows: path.to_owned(),
            corpus,
            split: path.with_file_name(format!("{stem}.split.tsv")),
        })
    }
}

#[derive(Deserialize)]
struct SharedRow {
    id: String,
    #[serde(flatten)]
    triple: JsonTriple,
}

#[derive(Deserialize)]
struct CorpusRow {
    text: String,
}

fn load_shared(files: &SharedFiles) -> Result<Dataset> {
    let text = fs::read_to_string(&files.rows).map_err(|e| read_error(&files.rows, e))?;
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let row = i + 1;
        match serde_json::from_str::<SharedRow>(line) {
            Ok(r) => {
                let field = |f: &Option<String>| f.clone().unwrap_or_default();
                match triple(&field(&r.triple.question), &field(&r.triple.passage), &field(&r.triple.answer)) {
                    Ok(t) => rows.push((r.id, t)),
                    Err(reason) => skipped.push(Skipped { row, reason }),
                }
            }
            Err(e) => skipped.push(Skipped { row, reason: format!("not a question row: {e}") }),
        }
    }
    let corpus_text = fs::read_to_string(&files.corpus).map_err(|e| read_error(&files.corpus, e))?;
    let mut corpus = Vec::new();
    for (i, line) in corpus_text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let row: CorpusRow = serde_json::from_str(line)
            .map_err(|e| TrainError::Data(format!("{} line {}: {e}", files.corpus.display(), i + 1)))?;
        // Trimmed like the rows' passages, so the two match.
        corpus.push(row.text.trim().to_owned());
    }
    // Every gold passage must be searchable, even if the corpus file forgot one.
    let known: HashSet<String> = corpus.iter().cloned().collect();
    let missing = distinct(rows.iter().map(|(_, t)| t.passage.as_str()).filter(|p| !known.contains(*p)));
    corpus.extend(missing);
    let corpus = distinct(corpus.iter().map(String::as_str));

    let (train, test, split_source) = if files.split.is_file() {
        let split_text = fs::read_to_string(&files.split).map_err(|e| read_error(&files.split, e))?;
        let split: HashMap<&str, &str> = split_text
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once('\t'))
            .map(|(id, s)| (id.trim(), s.trim()))
            .collect();
        let pick = |name: &str| -> Vec<Triple> {
            rows.iter().filter(|(id, _)| split.get(id.as_str()) == Some(&name)).map(|(_, t)| t.clone()).collect()
        };
        (pick("train"), pick("test"), SplitSource::SplitFile)
    } else {
        let all: Vec<Triple> = rows.iter().map(|(_, t)| t.clone()).collect();
        (all.clone(), all, SplitSource::AllRows)
    };
    Ok(Dataset { train, test, corpus, skipped, split_source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_neutralised_and_read_back() {
        for cell in ["=HYPERLINK(\"http://x\")", "+1", "-2 degrees", "@SUM(A1)", "\tx", "plain", "'quoted"] {
            let out = neutralise_formula(cell);
            assert!(!out.starts_with(FORMULA_STARTS), "{out}");
            assert_eq!(unquote_formula(&out), cell);
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn csv_with_quotes_newlines_and_empty_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "t.csv",
            "Abstract,Question,Answer,Extra\n\
             \"A passage, with a comma\nand a newline.\",What has a comma?,\"The \"\"passage\"\"\",x\n\
             Second passage.,,An answer,y\n\
             Third passage.,Short row?\n\
             Fourth passage.,Is it fine?,Yes,z\n",
        );
        let (triples, skipped) = load_triples(&path, &CsvColumns::default()).unwrap();
        assert_eq!(triples.len(), 2);
        assert_eq!(triples[0].passage, "A passage, with a comma\nand a newline.");
        assert_eq!(triples[0].answer, "The \"passage\"");
        assert_eq!(
            skipped,
            vec![
                Skipped { row: 2, reason: "empty question".into() },
                Skipped { row: 3, reason: "empty answer".into() },
            ]
        );
    }

    #[test]
    fn csv_with_other_column_names_and_a_missing_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "t.csv", "ctx,q,a\nP,Q?,A\n");
        let columns = CsvColumns { passage: "ctx".into(), question: "q".into(), answer: "a".into() };
        assert_eq!(load_triples(&path, &columns).unwrap().0.len(), 1);
        let error = load_triples(&path, &CsvColumns::default()).unwrap_err().to_string();
        assert!(error.contains("no column \"Question\"") && error.contains("ctx, q, a"), "{error}");
    }

    #[test]
    fn jsonl_skips_bad_lines_and_unknown_formats_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "t.jsonl",
            "{\"question\":\"Q?\",\"passage\":\"P\",\"answer\":\"A\"}\n\nnot json\n{\"question\":\"Q2?\",\"passage\":\"P\"}\n",
        );
        let (triples, skipped) = load_triples(&path, &CsvColumns::default()).unwrap();
        assert_eq!(triples.len(), 1);
        assert_eq!(skipped.iter().map(|s| s.row).collect::<Vec<_>>(), vec![3, 4]);
        let bad = write(dir.path(), "t.txt", "hello");
        assert!(load_triples(&bad, &CsvColumns::default()).unwrap_err().to_string().contains("unknown triples format"));
        let empty = write(dir.path(), "e.jsonl", "{\"question\":\"\",\"passage\":\"P\",\"answer\":\"A\"}\n");
        let error = load_triples(&empty, &CsvColumns::default()).unwrap_err().to_string();
        assert!(error.contains("no usable triples (row 1: empty question)"), "{error}");
    }

    #[test]
    fn split_by_passage_is_deterministic_and_never_shares_a_passage() {
        let triples: Vec<Triple> = (0..50)
            .map(|i| Triple { question: format!("q{i}?"), passage: format!("p{}", i % 20), answer: "a".into() })
            .collect();
        let options = SplitOptions { test_fraction: 0.25, seed: 3 };
        let (train, test) = split_by_passage(&triples, options).unwrap();
        assert_eq!(train.len() + test.len(), 50);
        let train_passages: HashSet<&str> = train.iter().map(|t| t.passage.as_str()).collect();
        let test_passages: HashSet<&str> = test.iter().map(|t| t.passage.as_str()).collect();
        assert!(train_passages.is_disjoint(&test_passages));
        assert_eq!(test_passages.len(), 5, "a quarter of 20 passages");
        assert_eq!(split_by_passage(&triples, options).unwrap(), (train.clone(), test.clone()));
        let other = split_by_passage(&triples, SplitOptions { seed: 4, ..options }).unwrap();
        assert_ne!(other.1, test, "another seed, another split");
        assert!(split_by_passage(&triples, SplitOptions { test_fraction: 1.5, seed: 0 }).is_err());
    }

    #[test]
    fn shared_format_uses_the_split_file_and_the_whole_corpus() {
        let dir = tempfile::tempdir().unwrap();
        let rows = write(
            dir.path(),
            "ds.jsonl",
            "{\"id\":\"a\",\"question\":\"Qa?\",\"passage\":\"Pa\",\"answer\":\"A\"}\n\
             {\"id\":\"b\",\"question\":\"Qb?\",\"passage\":\"Pb\",\"answer\":\"B\"}\n\
             {\"id\":\"c\",\"question\":\"Qc?\",\"passage\":\"Pc\",\"answer\":\"C\"}\n",
        );
        write(dir.path(), "ds.corpus.jsonl", "{\"id\":\"p1\",\"text\":\"Pa\"}\n{\"id\":\"p2\",\"text\":\"Pz\"}\n");
        let dataset = load_dataset(&rows, &CsvColumns::default(), SplitOptions::default()).unwrap();
        assert_eq!(dataset.split_source, SplitSource::AllRows);
        assert_eq!((dataset.train.len(), dataset.test.len()), (3, 3));
        // The corpus file's passages, plus the gold passages it lacked.
        assert_eq!(dataset.corpus, vec!["Pa", "Pz", "Pb", "Pc"]);
        write(dir.path(), "ds.split.tsv", "query-id\tsplit\na\ttrain\nb\ttest\nc\ttrain\n");
        let dataset = load_dataset(&rows, &CsvColumns::default(), SplitOptions::default()).unwrap();
        assert_eq!(dataset.split_source, SplitSource::SplitFile);
        assert_eq!(dataset.train.iter().map(|t| t.answer.as_str()).collect::<Vec<_>>(), vec!["A", "C"]);
        assert_eq!(dataset.split("test").unwrap()[0].question, "Qb?");
        assert!(dataset.split("dev").is_err());
    }
}
