//! `attune ingest`, `attune synth` and `attune triples export|import`: the corpus from the command
//! line, on the same database `attune serve` uses.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, bail};
use attune::engine::ingest::{DocumentParser, Ingested, SandboxLimits, ingest_file};
use attune::engine::synth::SynthJob;
use attune::engine::triples_io::{self, ExportFormat};
use attune::ingest::ChunkSettings;
use attune::model::generator::Generator;
use attune::openai::{OpenAiLlm, OpenAiSettings};
use attune::store::Store;
use attune::store::corpus::SynthRunConfig;
use attune::synth::{FilterSettings, Llm, LocalLlm, prompt};
use attune_shared::{AnswerStyle, JudgeSettings, LlmChoice, TripleStatus};

use super::{model_path, progress_bar};

/// Files larger than this are refused (`--max-upload-mb`).
pub const DEFAULT_MAX_UPLOAD_MB: u64 = 50;

#[derive(clap::Args, Debug)]
pub struct IngestArgs {
    /// PDF, .txt or .md files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    #[arg(long, default_value = "./models")]
    models_dir: PathBuf,
    /// The retriever whose tokenizer measures passages.
    #[arg(long, default_value = "default")]
    retriever: String,
    /// Passage length in tokens (default: the project's settings, 256).
    #[arg(long)]
    chunk_tokens: Option<usize>,
    /// Tokens shared by consecutive passages (default: the project's settings, 32).
    #[arg(long)]
    chunk_overlap: Option<usize>,
    #[arg(long, default_value_t = DEFAULT_MAX_UPLOAD_MB)]
    max_upload_mb: u64,
}

/// The retriever's tokenizer, for chunking.
pub fn chunking_tokenizer(retriever: &str, models_dir: &std::path::Path) -> anyhow::Result<tokenizers::Tokenizer> {
    let path = model_path(retriever, models_dir, crate::DEFAULT_RETRIEVER).join("tokenizer.json");
    tokenizers::Tokenizer::from_file(&path)
        .map_err(|e| anyhow::anyhow!("cannot load {}: {e} (run `make models`?)", path.display()))
}

/// Ingests one file: what happened in words (the new document and its passages' lengths, or that
/// it was there already), or why it was not ingested (unreadable, unsupported, corrupt, no text).
/// The outer error is the store's.
pub async fn ingest_one(
    store: &Store,
    tokenizer: &tokenizers::Tokenizer,
    parser: &DocumentParser,
    path: &std::path::Path,
    settings: ChunkSettings,
    max_bytes: u64,
) -> anyhow::Result<Result<String, String>> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("document").to_owned();
    let started = Instant::now();
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => return Ok(Err(format!("{}: cannot read: {e}", path.display()))),
    };
    Ok(match ingest_file(store, tokenizer, parser, &name, bytes, settings, max_bytes).await {
        Ok(Ingested::New(document)) => {
            let passages = store.passages(document.id).await?;
            let mut tokens: Vec<u32> = passages.iter().map(|p| p.tokens).collect();
            tokens.sort_unstable();
            let at = |q: f64| tokens.get(((tokens.len().max(1) - 1) as f64 * q).round() as usize).copied().unwrap_or(0);
            Ok(format!(
                "{name}: document {} — {} passages{} in {:.1} s; tokens per passage min {} / median {} / p90 {} / max {}",
                document.id,
                document.passages,
                document.pages.map(|p| format!(" from {p} pages")).unwrap_or_default(),
                started.elapsed().as_secs_f64(),
                at(0.0),
                at(0.5),
                at(0.9),
                at(1.0),
            ))
        }
        Ok(Ingested::Duplicate(document)) => {
            Ok(format!("{name}: already ingested as document {} ({}); skipped", document.id, document.name))
        }
        Err(e) => Err(format!("{name}: {e}")),
    })
}

pub async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let store = Store::open(&args.data_dir).await?;
    let saved = store.settings().await?;
    let settings = ChunkSettings {
        max_tokens: args.chunk_tokens.unwrap_or(saved.chunk_tokens as usize),
        overlap: args.chunk_overlap.unwrap_or(saved.chunk_overlap as usize),
    };
    let tokenizer = chunking_tokenizer(&args.retriever, &args.models_dir)?;
    let parser = DocumentParser::Sandboxed(SandboxLimits::for_program(std::env::current_exe()?));
    let mut failures = 0;
    for path in &args.files {
        match ingest_one(&store, &tokenizer, &parser, path, settings, args.max_upload_mb * 1024 * 1024).await? {
            Ok(said) => println!("{said}"),
            Err(why) => {
                eprintln!("{why}");
                failures += 1;
            }
        }
    }
    store.close().await;
    if failures > 0 {
        bail!("{failures} of {} files were not ingested", args.files.len());
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LlmKind {
    Local,
    Openai,
}

/// How answers are got (`--answers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AnswersArg {
    /// The LLM writes each answer.
    Written,
    /// The LLM picks the passage's sentence that answers the question.
    Extractive,
}

/// The answer style a new run gets: the flag's, or the default for its LLM.
pub fn answer_style(flag: Option<AnswersArg>, llm: &LlmChoice) -> AnswerStyle {
    match flag {
        Some(AnswersArg::Written) => AnswerStyle::Written,
        Some(AnswersArg::Extractive) => AnswerStyle::Extractive,
        None => AnswerStyle::default_for(llm),
    }
}

#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    #[arg(long, default_value = "./models")]
    models_dir: PathBuf,
    /// Only this document's passages.
    #[arg(long)]
    document: Option<i64>,
    /// Questions asked per passage (default: the project's settings, 3).
    #[arg(long)]
    questions_per_passage: Option<u32>,
    /// At most this many passages.
    #[arg(long)]
    limit: Option<u32>,
    /// Skip this many passages first (in document order).
    #[arg(long, default_value_t = 0)]
    offset: usize,
    #[arg(long, value_enum, default_value = "local")]
    llm: LlmKind,
    /// The local generator (with --llm local).
    #[arg(long, default_value = "default")]
    generator: String,
    /// Base URL of the OpenAI-compatible server, up to /v1 (with --llm openai). API key: ATTUNE_LLM_API_KEY.
    #[arg(long)]
    llm_base_url: Option<String>,
    #[arg(long)]
    llm_model: Option<String>,
    /// Continue an interrupted or cancelled run instead of starting one.
    #[arg(long)]
    resume: Option<i64>,
    /// Template files replacing the default prompts (minijinja: {{ passage }}, {{ n }}, {{ question }});
    /// for the questions also a built-in by name: `default`, or `few-shot` (two worked examples).
    #[arg(long)]
    questions_prompt: Option<PathBuf>,
    #[arg(long)]
    answer_prompt: Option<PathBuf>,
    /// How answers are got: written by the LLM, or the passage's sentence it picks (default:
    /// extractive with --llm local, written with --llm openai).
    #[arg(long, value_enum)]
    answers: Option<AnswersArg>,
    /// The base retriever the round-trip and near-duplicate filters embed with.
    #[arg(long, default_value = "default")]
    retriever: String,
    #[arg(long, default_value = "auto")]
    device: String,
    #[command(flatten)]
    filters: FilterArgs,
    /// Have the OpenAI-compatible server of --llm-base-url/--llm-model score each kept triple 1–5
    /// for groundedness and usefulness (LLM-as-judge), also with --llm local.
    #[arg(long)]
    judge: bool,
    /// With the judge: approve a triple at once when both its scores are at least this (1–5).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=5))]
    judge_approve_at: Option<u8>,
}

/// The filters' thresholds (a resumed run keeps its own).
#[derive(clap::Args, Debug)]
pub struct FilterArgs {
    /// Reject a question copying this many consecutive words of the passage.
    #[arg(long, default_value_t = FilterSettings::default().max_copied_words)]
    max_copied_words: usize,
    /// Keep an answer only if this share of its content words occurs in the passage.
    #[arg(long, default_value_t = FilterSettings::default().min_grounding)]
    min_grounding: f64,
    /// Reject answers longer than this many words.
    #[arg(long, default_value_t = FilterSettings::default().max_answer_words)]
    max_answer_words: usize,
    /// Reject an answer holding this share of the question's content words and at most one of its own.
    #[arg(long, default_value_t = FilterSettings::default().max_question_overlap)]
    max_question_overlap: f64,
    /// Keep a question only if the base retriever ranks its passage in its top this-many over the
    /// whole corpus (0: off).
    #[arg(long, default_value_t = FilterSettings::default().round_trip_top_k)]
    round_trip_top_k: u32,
    /// Reject a question this similar (cosine of embeddings) to one kept before (1: off).
    #[arg(long, default_value_t = FilterSettings::default().max_question_similarity)]
    max_question_similarity: f64,
}

impl FilterArgs {
    fn settings(&self) -> anyhow::Result<FilterSettings> {
        let settings = FilterSettings {
            max_copied_words: self.max_copied_words,
            min_grounding: self.min_grounding,
            max_answer_words: self.max_answer_words,
            max_question_overlap: self.max_question_overlap,
            round_trip_top_k: self.round_trip_top_k,
            max_question_similarity: self.max_question_similarity,
        };
        settings.validate().map_err(|message| anyhow::anyhow!("filters: {message}"))?;
        Ok(settings)
    }
}

/// Builds the LLM a run asks.
pub fn build_llm(choice: &LlmChoice, generator: &std::path::Path, device: &str) -> anyhow::Result<Box<dyn Llm>> {
    Ok(match choice {
        LlmChoice::Local => {
            let device = attune::model::device::select(device)?;
            let name = generator.file_name().and_then(|n| n.to_str()).unwrap_or("local").to_owned();
            Box::new(LocalLlm::new(Generator::load(generator, &device)?, name))
        }
        // The command line is the user's own choice of server: the key goes to it.
        LlmChoice::OpenAi { base_url, model } => {
            Box::new(OpenAiLlm::new(OpenAiSettings::new(base_url, model).with_key_for(Some(base_url)))?)
        }
    })
}

/// The LLM a new run asks, from the flags, and the model name it is stored under.
pub fn llm_choice(
    kind: LlmKind,
    base_url: &Option<String>,
    model: &Option<String>,
    generator: &std::path::Path,
) -> anyhow::Result<(LlmChoice, String)> {
    Ok(match kind {
        LlmKind::Local => {
            (LlmChoice::Local, generator.file_name().and_then(|n| n.to_str()).unwrap_or("local").to_owned())
        }
        LlmKind::Openai => {
            let (Some(base_url), Some(model)) = (base_url.clone(), model.clone()) else {
                bail!("--llm openai needs --llm-base-url and --llm-model");
            };
            (LlmChoice::OpenAi { base_url, model: model.clone() }, model)
        }
    })
}

/// Runs a synthesis run's pending passages with a progress bar; `cancel` stops it between calls.
/// The LLM's HTTP client runs its own runtime, so it is built (and dropped) off the async threads.
pub async fn run_synth_job(
    store: &Store,
    run: &attune_shared::SynthRun,
    generator: &std::path::Path,
    retriever: PathBuf,
    device: &str,
    cancel: Arc<AtomicBool>,
    judge: Option<LlmChoice>,
) -> anyhow::Result<attune_shared::SynthRun> {
    let judge = match (run.judge, judge) {
        (None, _) => None,
        (Some(settings), Some(server)) => Some((settings, server)),
        (Some(_), None) => {
            bail!("synthesis run {} asks an LLM judge: name its server (--llm-base-url, --llm-model)", run.id)
        }
    };
    let bar = progress_bar(
        run.passages_total,
        "{spinner} synthesising [{bar:30}] {pos}/{len} passages, {msg} ({elapsed}, eta {eta})",
    );
    bar.set_position(run.report.passages_done);
    let (choice, filters, device_spec, generator) =
        (run.llm.clone(), run.filters, device.to_owned(), generator.to_owned());
    let (run_id, store, runtime) = (run.id, store.clone(), tokio::runtime::Handle::current());
    let progress = bar.clone();
    let run = tokio::task::spawn_blocking(move || -> anyhow::Result<attune_shared::SynthRun> {
        let job = SynthJob {
            run_id,
            store,
            llm: build_llm(&choice, &generator, &device_spec)?,
            judge: match judge {
                Some((settings, server)) => Some((settings, build_llm(&server, &generator, &device_spec)?)),
                None => None,
            },
            filters,
            retriever,
            device: attune::model::device::select(&device_spec)?,
            cancel,
            runtime,
        };
        Ok(job.run(|run, _eta| {
            progress.set_position(run.report.passages_done);
            progress.set_message(format!("{} kept", run.report.kept));
        })?)
    })
    .await??;
    bar.finish_and_clear();
    Ok(run)
}

pub async fn synth(args: SynthArgs) -> anyhow::Result<()> {
    if (args.judge || args.judge_approve_at.is_some()) && (args.llm_base_url.is_none() || args.llm_model.is_none()) {
        bail!("--judge needs the server to ask: --llm-base-url and --llm-model");
    }
    let store = Store::open(&args.data_dir).await?;
    let saved = store.settings().await?;
    let generator = model_path(&args.generator, &args.models_dir, crate::DEFAULT_GENERATOR);
    let run = match args.resume {
        Some(id) => store.synth_run(id).await?.with_context(|| format!("no synthesis run {id}"))?,
        None => {
            let (llm, model) = llm_choice(args.llm, &args.llm_base_url, &args.llm_model, &generator)?;
            let mut prompts = prompt::defaults();
            if let Some(path) = &args.questions_prompt {
                prompts.questions = match path.to_str().and_then(prompt::named_questions_prompt) {
                    Some(built_in) if !path.exists() => built_in.to_owned(),
                    _ => std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?,
                };
            }
            if let Some(path) = &args.answer_prompt {
                prompts.answer = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
            }
            prompt::validate(&prompts)?;
            let mut passages = store.passage_ids(args.document).await?;
            passages.drain(..args.offset.min(passages.len()));
            if let Some(limit) = args.limit {
                passages.truncate(limit as usize);
            }
            if passages.is_empty() {
                bail!("no passages to synthesise from: ingest documents first (attune ingest FILES)");
            }
            let answers = answer_style(args.answers, &llm);
            let config = SynthRunConfig {
                llm,
                model,
                questions_per_passage: args.questions_per_passage.unwrap_or(saved.questions_per_passage),
                prompts,
                document_id: None,
                filters: args.filters.settings()?,
                answers,
                judge: (args.judge || args.judge_approve_at.is_some())
                    .then_some(JudgeSettings { approve_at: args.judge_approve_at }),
            };
            store.create_synth_run(&config, &passages).await?
        }
    };
    let retriever = model_path(&args.retriever, &args.models_dir, crate::DEFAULT_RETRIEVER);
    // The judge is the server the flags name (also for a resumed run that asked for one).
    let judge = match (run.judge, &args.llm_base_url, &args.llm_model) {
        (Some(_), Some(base_url), Some(model)) => {
            Some(LlmChoice::OpenAi { base_url: base_url.clone(), model: model.clone() })
        }
        (Some(_), _, _) => bail!("--judge needs the server to ask: --llm-base-url and --llm-model"),
        (None, _, _) => None,
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let run = run_synth_job(&store, &run, &generator, retriever, &args.device, cancel, judge).await?;
    let r = &run.report;
    let filtered: Vec<String> = r.filtered.reasons().iter().map(|(n, what)| format!("{n} {what}")).collect();
    println!(
        "synthesis run {}: {:?}; {} passages, {} questions, {} kept; filtered: {}; {} passages failed; \
         {:.1} min ({:.1} kept triples/min)",
        run.id,
        run.status,
        r.passages_done,
        r.questions_seen,
        r.kept,
        filtered.join(", "),
        r.failed_passages,
        r.seconds / 60.0,
        r.kept as f64 / (r.seconds / 60.0).max(1e-9),
    );
    if run.judge.is_some() {
        println!(
            "judge: {} scored, {} approved by their scores, {} left unscored",
            r.judged, r.judge_approved, r.judge_failed
        );
    }
    if let Some(error) = &run.error {
        eprintln!("{error}");
    }
    store.close().await;
    Ok(())
}

#[derive(clap::Subcommand, Debug)]
pub enum TriplesCommand {
    /// Write triples as CSV (DALM's columns Abstract,Question,Answer) or JSONL.
    Export(ExportArgs),
    /// Add triples from a CSV (DALM's columns) or JSONL file, as imported and pending review.
    Import(ImportArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusChoice {
    Approved,
    Pending,
    Rejected,
    /// The candidates the filters dropped, with their reasons.
    Filtered,
    All,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// csv or jsonl.
    #[arg(long, value_parser = ExportFormat::parse)]
    format: ExportFormat,
    #[arg(long, value_enum, default_value = "approved")]
    status: StatusChoice,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    file: PathBuf,
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
}

pub async fn triples(command: TriplesCommand) -> anyhow::Result<()> {
    match command {
        TriplesCommand::Export(args) => {
            let store = Store::open(&args.data_dir).await?;
            let statuses: &[TripleStatus] = match args.status {
                StatusChoice::Approved => &[TripleStatus::Approved],
                StatusChoice::Pending => &[TripleStatus::Pending],
                StatusChoice::Rejected => &[TripleStatus::Rejected],
                StatusChoice::Filtered => &[TripleStatus::Filtered],
                StatusChoice::All => &[],
            };
            let triples = store.all_triples(statuses).await?;
            let bytes = triples_io::export(&triples, args.format)?;
            std::fs::write(&args.out, bytes).with_context(|| format!("cannot write {}", args.out.display()))?;
            println!("wrote {} triples to {}", triples.len(), args.out.display());
            store.close().await;
        }
        TriplesCommand::Import(args) => {
            let store = Store::open(&args.data_dir).await?;
            let (rows, skipped) = triples_io::import(&args.file)?;
            for s in &skipped {
                eprintln!("row {}: {}", s.row, s.reason);
            }
            let ids = store.insert_triples(&rows).await?;
            println!("imported {} triples ({} rows skipped)", ids.len(), skipped.len());
            store.close().await;
        }
    }
    Ok(())
}
