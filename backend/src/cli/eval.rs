//! `attune eval`: retrieval metrics over the whole corpus and answer quality with retrieved
//! passages, for base models and, when adapters are given, tuned ones beside them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use attune::eval::metrics::AnswerMetrics;
use attune::eval::run::{self, GenerationSettings, RetrievalRun};
use attune::model::generator::Generator;
use attune::model::retriever::Retriever;
use attune::rag::prompt::PromptLimits;
use attune::train::data::{SplitOptions, Triple, load_dataset};

use super::{ColumnArgs, model_path, progress_bar};

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Triples or the shared QA format (its .corpus.jsonl is searched).
    #[arg(long)]
    data: PathBuf,
    /// Search this corpus instead (JSONL with a "text" field, or one passage a line); gold passages
    /// missing from it are added.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Which rows to evaluate: test or train.
    #[arg(long, default_value = "test")]
    split: String,
    /// Evaluate the first N questions only.
    #[arg(long)]
    max_questions: Option<usize>,
    #[arg(long, default_value = "default")]
    retriever: String,
    #[arg(long)]
    retriever_adapter: Option<PathBuf>,
    /// Also evaluate answers with this generator (`default` for the default one).
    #[arg(long)]
    generator: Option<String>,
    #[arg(long)]
    generator_adapter: Option<PathBuf>,
    #[arg(long, default_value = "./models")]
    models_dir: PathBuf,
    /// Cut-offs for hit@k and recall@k.
    #[arg(long, value_delimiter = ',', default_value = "1,3,5,10")]
    k: Vec<usize>,
    /// Retrieved passages in each generation prompt: each count given is measured (by default the
    /// best passage alone, and the top 3 as a reader with distractors gets them).
    #[arg(long, value_delimiter = ',', default_value = "1,3", value_parser = clap::value_parser!(u32).range(1..=20))]
    passages_per_prompt: Vec<u32>,
    /// Which ranking the generation prompts take their passages from: dense (the retriever), bm25,
    /// or hybrid (both, their normalised scores weighed). Retrieval metrics are reported for all three.
    #[arg(long, default_value = "dense", value_parser = ["dense", "bm25", "hybrid"])]
    retrieval: String,
    #[arg(long, default_value_t = 128)]
    max_passage_tokens: usize,
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// For triples without a split file (must match training's to hold the same rows out).
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    columns: ColumnArgs,
    /// With a retriever adapter: skip the base retriever's evaluation (and the base pairings).
    #[arg(long)]
    skip_base: bool,
    /// Print one JSON object with every metric instead of tables.
    #[arg(long)]
    json: bool,
    /// Write every prediction (question, answer, prediction, passages) to this JSONL file.
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// Write each question's rankings to this JSONL file: its gold passage and, for every dense run
    /// (`base`, `tuned`) and `bm25`, the top passages with their scores (corpus index, score), as
    /// hybrid retrieval fuses them.
    #[arg(long)]
    rankings: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, default_value = "auto")]
    dtype: String,
}

/// Answer quality of one (retriever, generator) pairing.
#[derive(Debug, Serialize)]
struct GenerationRow {
    retriever: &'static str,
    generator: &'static str,
    /// Retrieved passages in each prompt.
    passages: usize,
    #[serde(flatten)]
    metrics: AnswerMetrics,
}

#[derive(Debug, Serialize)]
struct Report {
    questions: usize,
    corpus: usize,
    /// The retriever as given (with its adapter, when there is one).
    retriever: BTreeMap<String, f64>,
    /// The base retriever, when an adapter was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    retriever_base: Option<BTreeMap<String, f64>>,
    /// BM25 over the same corpus.
    bm25: BTreeMap<String, f64>,
    /// The retriever as given fused with BM25 (hybrid retrieval).
    hybrid: BTreeMap<String, f64>,
    /// The base retriever fused with BM25, when an adapter was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    hybrid_base: Option<BTreeMap<String, f64>>,
    /// The system as given: its generator with its retriever's passages (the first count of
    /// `--passages-per-prompt`).
    #[serde(skip_serializing_if = "Option::is_none")]
    generator: Option<AnswerMetrics>,
    /// Every pairing evaluated (base/tuned retriever × base/tuned generator).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    generation: Vec<GenerationRow>,
}

/// One JSON line per question: its text, gold passage (corpus index) and each ranking's candidates.
fn write_rankings(
    path: &Path,
    rows: &[Triple],
    corpus: &[String],
    dense: &[(&'static str, RetrievalRun)],
    bm25: &RetrievalRun,
) -> anyhow::Result<()> {
    let gold = run::gold_indices(corpus, rows)?;
    let mut lines = String::new();
    for (i, (row, gold)) in rows.iter().zip(gold).enumerate() {
        let mut line = serde_json::json!({"question": row.question, "gold": gold, "bm25": bm25.candidates[i]});
        for (name, run) in dense {
            line[*name] = serde_json::json!(run.candidates[i]);
        }
        lines += &format!("{line}\n");
    }
    std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))
}

/// A dense run's name fused with BM25.
fn hybrid_name(dense: &str) -> &'static str {
    match dense {
        "tuned" => "tuned+bm25",
        _ => "base+bm25",
    }
}

pub(crate) fn read_corpus(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl");
    let mut corpus = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        if jsonl {
            let value: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{} line {}", path.display(), i + 1))?;
            let text = value
                .get("text")
                .and_then(|t| t.as_str())
                .with_context(|| format!("{} line {}: no \"text\"", path.display(), i + 1))?;
            corpus.push(text.to_owned());
        } else {
            corpus.push(line.to_owned());
        }
    }
    Ok(corpus)
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let columns = args.columns.columns();
    let split = SplitOptions { test_fraction: args.test_fraction, seed: args.seed };
    let dataset =
        load_dataset(&args.data, &columns, split).with_context(|| format!("reading {}", args.data.display()))?;
    let mut rows: Vec<Triple> = dataset.split(&args.split)?.to_vec();
    if let Some(max) = args.max_questions {
        rows.truncate(max);
    }
    anyhow::ensure!(!rows.is_empty(), "no {} rows to evaluate in {}", args.split, args.data.display());
    let mut corpus = match &args.corpus {
        Some(path) => read_corpus(path)?,
        None => dataset.corpus.clone(),
    };
    let known: std::collections::HashSet<String> = corpus.iter().cloned().collect();
    let mut added = std::collections::HashSet::new();
    for row in &rows {
        if !known.contains(&row.passage) && added.insert(row.passage.clone()) {
            corpus.push(row.passage.clone());
        }
    }
    let device = attune::model::device::select(&args.device)?;
    let dtype = attune::model::device::select_dtype(&args.dtype, &device)?;
    let retriever_path = model_path(&args.retriever, &args.models_dir, crate::DEFAULT_RETRIEVER);
    let mut retriever = Retriever::load_as(&retriever_path, &device, dtype)
        .with_context(|| format!("loading the retriever {}", retriever_path.display()))?;

    let bar = progress_bar(0, "{spinner} {msg} {wide_bar} {pos}/{len}");
    let mut progress = |phase: &str, done: usize, total: usize| {
        bar.set_message(phase.to_owned());
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let mut runs: Vec<(&'static str, RetrievalRun)> = Vec::new();
    if let Some(adapter) = &args.retriever_adapter {
        if !args.skip_base {
            runs.push(("base", run::evaluate_retrieval(&retriever, &corpus, &rows, &args.k, &mut progress)?));
        }
        retriever.load_adapter(adapter).with_context(|| format!("loading the adapter {}", adapter.display()))?;
        runs.push(("tuned", run::evaluate_retrieval(&retriever, &corpus, &rows, &args.k, &mut progress)?));
    } else {
        runs.push(("base", run::evaluate_retrieval(&retriever, &corpus, &rows, &args.k, &mut progress)?));
    }
    // BM25, and each dense run fused with it.
    let bm25 = run::evaluate_bm25(&corpus, &rows, &args.k, &mut progress)?;
    if let Some(path) = &args.rankings {
        write_rankings(path, &rows, &corpus, &runs, &bm25)?;
    }
    let dense_names: Vec<&'static str> = runs.iter().map(|(n, _)| *n).collect();
    for name in &dense_names {
        let dense = &runs.iter().find(|(n, _)| n == name).expect("listed above").1;
        let hybrid = run::fuse(dense, &bm25, &corpus, &rows, &args.k)?;
        runs.push((hybrid_name(name), hybrid));
    }
    runs.push(("bm25", bm25));
    let feeding = |retriever: &'static str| -> &'static str {
        match args.retrieval.as_str() {
            "bm25" => "bm25",
            "hybrid" => hybrid_name(retriever),
            _ => retriever,
        }
    };
    let mut generation = Vec::new();
    let mut system = None;
    let mut all_predictions = Vec::new();
    if let Some(generator) = &args.generator {
        let path = model_path(generator, &args.models_dir, crate::DEFAULT_GENERATOR);
        let mut generator = Generator::load_as(&path, &device, dtype)
            .with_context(|| format!("loading the generator {}", path.display()))?;
        let mut evaluate = |generator: &Generator,
                            retriever_name: &'static str,
                            generator_name: &'static str|
         -> anyhow::Result<AnswerMetrics> {
            let retriever_name = feeding(retriever_name);
            let rankings = &runs.iter().find(|(n, _)| *n == retriever_name).expect("evaluated above").1.rankings;
            let mut first = None;
            for &passages in &args.passages_per_prompt {
                let settings = GenerationSettings {
                    passages_per_prompt: passages as usize,
                    limits: PromptLimits { max_passage_tokens: args.max_passage_tokens, ..PromptLimits::default() },
                    max_new_tokens: args.max_new_tokens,
                    ..GenerationSettings::default()
                };
                let result = run::evaluate_generation(generator, &corpus, &rows, rankings, settings, &mut progress)?;
                for p in &result.predictions {
                    all_predictions.push(serde_json::json!({
                        "retriever": retriever_name, "generator": generator_name, "passages": passages, "prediction": p
                    }));
                }
                generation.push(GenerationRow {
                    retriever: retriever_name,
                    generator: generator_name,
                    passages: passages as usize,
                    metrics: result.metrics,
                });
                first.get_or_insert(result.metrics);
            }
            Ok(first.expect("clap gives one count at least"))
        };
        let final_retriever = *dense_names.last().expect("one run at least");
        // The base generator with every retriever; then the tuned generator with the final retriever.
        let mut last = None;
        for name in &dense_names {
            last = Some(evaluate(&generator, name, "base")?);
        }
        if let Some(adapter) = &args.generator_adapter {
            generator.load_adapter(adapter).with_context(|| format!("loading the adapter {}", adapter.display()))?;
            last = Some(evaluate(&generator, final_retriever, "tuned")?);
        }
        system = last;
    }
    bar.finish_and_clear();
    if let Some(path) = &args.predictions {
        let lines: String = all_predictions.iter().map(|p| format!("{p}\n")).collect();
        std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    let metrics = |name: &str| runs.iter().find(|(n, _)| *n == name).map(|(_, r)| r.metrics.flat());
    let given = *dense_names.last().expect("one run at least");
    let report = Report {
        questions: rows.len(),
        corpus: corpus.len(),
        retriever: metrics(given).unwrap_or_default(),
        retriever_base: metrics("base").filter(|_| dense_names.len() > 1),
        bm25: metrics("bm25").unwrap_or_default(),
        hybrid: metrics(hybrid_name(given)).unwrap_or_default(),
        hybrid_base: metrics(hybrid_name("base")).filter(|_| dense_names.len() > 1),
        generator: system,
        generation,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "{} questions ({} split of {}), corpus of {} passages",
        report.questions,
        args.split,
        args.data.display(),
        report.corpus
    );
    println!();
    let names: Vec<&String> = report.retriever.keys().collect();
    print!("{:<12}", "retriever");
    for name in &names {
        print!("{name:>11}");
    }
    println!();
    for (label, run) in &runs {
        print!("{label:<12}");
        for (_, value) in run.metrics.flat() {
            print!("{value:>11.4}");
        }
        println!();
    }
    if !report.generation.is_empty() {
        println!();
        println!("{:<10}{:<10}{:>9}{:>8}{:>8}", "retriever", "generator", "passages", "EM", "F1");
        for row in &report.generation {
            println!(
                "{:<10}{:<10}{:>9}{:>8.4}{:>8.4}",
                row.retriever, row.generator, row.passages, row.metrics.exact_match, row.metrics.f1
            );
        }
    }
    Ok(())
}
