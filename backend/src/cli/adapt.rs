//! `attune adapt`: documents in, a tuned RAG pair and a report out. Ingest → synthesize (what
//! passes the filters is approved) → train → evaluate, in one run folder; each stage is
//! resumable, so a second call skips what is done and continues what was interrupted.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use attune::engine::ingest::{DocumentParser, SandboxLimits};
use attune::eval::locate::GoldLocator;
use attune::eval::metrics::AnswerMetrics;
use attune::eval::run::{self, GenerationSettings};
use attune::ingest::ChunkSettings;
use attune::model::generator::Generator;
use attune::model::retriever::Retriever;
use attune::store::Store;
use attune::store::corpus::{SynthRunConfig, TripleFilter};
use attune::synth::{FilterSettings, prompt};
use attune::train::checkpoint;
use attune::train::config::{BaseModels, RunInputs, TrainConfig};
use attune::train::data::{CsvColumns, SplitOptions, Triple, is_shared_format, load_dataset};
use attune::train::trainer::{Outcome, RunSetup, TrainEvent, Trainer};
use attune_shared::{Hyper, JobStatus, StepPoint, TrainMode, TripleOrigin, TripleStatus};

use super::corpus::{
    AnswersArg, DEFAULT_MAX_UPLOAD_MB, LlmKind, answer_style, chunking_tokenizer, ingest_one, llm_choice, run_synth_job,
};
use super::{model_path, progress_bar};

use attune_shared::ADAPT_MIN_TRIPLES as MIN_TRIPLES;
/// The run folder's record of its stages.
const STATE_FILE: &str = "adapt.json";
const TRIPLES_FILE: &str = "triples.jsonl";
const TRAIN_DIR: &str = "train";
const DATA_DIR: &str = "data";
const REPORT_JSON: &str = "report.json";
const REPORT_MD: &str = "report.md";

#[derive(clap::Args, Debug)]
pub struct AdaptArgs {
    /// The documents: PDF, .txt or .md files, or folders of them (searched recursively).
    #[arg(long, required = true, num_args = 1..)]
    documents: Vec<PathBuf>,
    /// The run folder: its database (data/), triples, training run (train/) and report; a second
    /// call continues it.
    #[arg(long)]
    out: PathBuf,
    /// Questions people asked, to evaluate on: the shared QA format (its test split) or JSONL
    /// {question, answer[, passage]}; each gold passage is found among the documents' passages by
    /// its text (or, without one, as the passage holding the answer).
    #[arg(long)]
    test: Option<PathBuf>,
    /// Evaluate the first N test questions only.
    #[arg(long)]
    max_test_questions: Option<usize>,
    /// Evaluate retrieval only, not the generator's answers.
    #[arg(long)]
    skip_answers: bool,
    #[arg(long, value_enum, default_value = "local")]
    llm: LlmKind,
    /// Base URL of the OpenAI-compatible server, up to /v1 (with --llm openai). API key: ATTUNE_LLM_API_KEY.
    #[arg(long)]
    llm_base_url: Option<String>,
    #[arg(long)]
    llm_model: Option<String>,
    /// e2e, retriever or generator (default: the retriever, whose gain is measured and which
    /// trains in minutes on a CPU).
    #[arg(long, default_value_t = attune_shared::ADAPT_DEFAULT_MODE)]
    mode: TrainMode,
    /// Stop synthesis after this many minutes (all calls together) at a passage boundary, and
    /// train on what is there.
    #[arg(long)]
    budget_minutes: Option<f64>,
    /// Synthesize from at most N passages, spread evenly over the documents.
    #[arg(long)]
    max_passages: Option<usize>,
    #[arg(long, default_value_t = 3)]
    questions_per_passage: u32,
    /// How answers are got: written by the LLM, or the passage's sentence it picks (default:
    /// extractive with --llm local, written with --llm openai).
    #[arg(long, value_enum)]
    answers: Option<AnswersArg>,
    /// Stop training after N optimiser steps (otherwise: enough epochs for 100 steps at least, and
    /// early stopping on the held-out loss).
    #[arg(long)]
    max_steps: Option<u32>,
    /// Retriever mode: add up to N inverse cloze pairs drawn from the documents' passages (a
    /// sentence as the question, the rest of its passage as the positive) to the synthetic triples
    /// (0: the triples alone).
    #[arg(long, default_value_t = attune_shared::ADAPT_CLOZE_PAIRS)]
    cloze_pairs: u32,
    #[command(flatten)]
    pub negatives: super::train::NegativeArgs,
    /// The seed of the training run (data order, adapters, dropout).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "./models")]
    models_dir: PathBuf,
    #[arg(long, default_value = "auto")]
    device: String,
}

/// What the run folder records of its stages (`adapt.json`).
#[derive(Debug, Default, Serialize, Deserialize)]
struct AdaptState {
    synth_run: Option<i64>,
    /// Synthesis has ended: every passage done, or the budget spent.
    synth_done: bool,
    stopped_by_budget: bool,
    /// Set when training has finished.
    training: Option<TrainingSummary>,
}

impl AdaptState {
    fn load(out: &Path) -> anyhow::Result<Self> {
        let path = out.join(STATE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AdaptState::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, out: &Path) -> anyhow::Result<()> {
        write_atomically(&out.join(STATE_FILE), serde_json::to_string_pretty(self)?.as_bytes())
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))
}

#[derive(Debug, Clone, Serialize)]
struct CorpusSummary {
    documents: usize,
    passages: usize,
    /// Files that were not ingested, each with why.
    failed: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
struct SynthesisSummary {
    passages_asked: u64,
    passages_done: u64,
    /// Tables of contents, indexes and bibliographies, never sent to the LLM.
    skipped_passages: u64,
    questions: u64,
    kept: u64,
    approved: usize,
    dropped: BTreeMap<String, u64>,
    seconds: f64,
    stopped_by_budget: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainingSummary {
    mode: String,
    triples: usize,
    train_examples: usize,
    /// Inverse cloze pairs trained on beside the `train_examples` triples.
    #[serde(default)]
    cloze_pairs: usize,
    /// Inverse cloze pairs held out beside the `held_out` triples.
    #[serde(default)]
    held_out_cloze_pairs: usize,
    held_out: usize,
    epochs: usize,
    steps_per_epoch: usize,
    planned_steps: usize,
    steps: usize,
    first_loss: Option<f64>,
    last_loss: Option<f64>,
    /// Held-out losses, (step, loss).
    evals: Vec<(usize, f64)>,
    /// The evaluation whose adapters the run kept.
    kept_step: Option<usize>,
    stopped_early: bool,
    seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
struct EvaluationSummary {
    test: String,
    questions: usize,
    /// Test questions whose gold passage is not among the documents' passages.
    unmatched: usize,
    corpus: usize,
    /// `base`, `tuned`, `bm25` → metric → value.
    retrieval: BTreeMap<String, BTreeMap<String, f64>>,
    /// `retriever+generator` → EM / F1.
    answers: BTreeMap<String, AnswerMetrics>,
}

#[derive(Debug, Clone, Serialize)]
struct AdaptReport {
    corpus: CorpusSummary,
    synthesis: SynthesisSummary,
    training: TrainingSummary,
    evaluation: Option<EvaluationSummary>,
}

/// Every file under the given paths (folders searched recursively, hidden entries skipped), sorted.
fn document_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() { walk(&path, found)? } else { found.push(path) }
        }
        Ok(())
    }
    let mut found = Vec::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut found)?;
        } else if path.exists() {
            found.push(path.clone());
        } else {
            bail!("{}: no such file or folder", path.display());
        }
    }
    Ok(found)
}

/// Every `total / n`-th of `total` passage positions: `n` spread evenly.
fn spread(total: usize, n: usize) -> Vec<usize> {
    if n >= total {
        return (0..total).collect();
    }
    (0..n).map(|i| i * total / n).collect()
}

pub async fn run(args: AdaptArgs) -> anyhow::Result<()> {
    if args.budget_minutes.is_some_and(|m| !(m > 0.0 && m.is_finite())) {
        bail!("--budget-minutes must be a number of minutes above 0");
    }
    if !(1..=20).contains(&args.questions_per_passage) {
        bail!("--questions-per-passage must be 1 to 20");
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut state = AdaptState::load(&args.out)?;
    let store = Store::open(&args.out.join(DATA_DIR)).await?;
    let corpus = ingest_stage(&args, &store).await?;
    let synthesis = synth_stage(&args, &store, &mut state).await?;
    let training = match &state.training {
        Some(done) => {
            eprintln!(
                "training: done ({} steps); delete {} to train again",
                done.steps,
                args.out.join(STATE_FILE).display()
            );
            done.clone()
        }
        None => {
            let approved = store.all_triples(&[TripleStatus::Approved]).await?;
            let (out, mode, models_dir, device) =
                (args.out.clone(), args.mode, args.models_dir.clone(), args.device.clone());
            let hyper = args.negatives.apply(Hyper {
                seed: args.seed,
                cloze_pairs: args.cloze_pairs,
                ..attune_shared::adapt_hyper(args.max_steps)
            });
            let triples: Vec<Triple> = approved
                .iter()
                .map(|t| Triple { question: t.question.clone(), passage: t.passage.clone(), answer: t.answer.clone() })
                .collect();
            // Hard negatives and cloze pairs come from every passage of the documents, not only
            // those with triples.
            let passages: Vec<String> = store.indexed_passages().await?.into_iter().map(|p| p.text).collect();
            let summary = tokio::task::spawn_blocking(move || {
                train_stage(&out, &triples, passages, mode, &hyper, &models_dir, &device)
            })
            .await??;
            state.training = Some(summary.clone());
            state.save(&args.out)?;
            summary
        }
    };
    let evaluation = match &args.test {
        Some(test) => {
            let passages: Vec<String> = store.indexed_passages().await?.into_iter().map(|p| p.text).collect();
            let (test, out, mode) = (test.clone(), args.out.clone(), args.mode);
            let (max_questions, skip_answers, models_dir, device) =
                (args.max_test_questions, args.skip_answers, args.models_dir.clone(), args.device.clone());
            Some(
                tokio::task::spawn_blocking(move || {
                    evaluate_stage(&test, passages, &out, mode, max_questions, skip_answers, &models_dir, &device)
                })
                .await??,
            )
        }
        None => None,
    };
    store.close().await;
    let report = AdaptReport { corpus, synthesis, training, evaluation };
    write_atomically(&args.out.join(REPORT_JSON), serde_json::to_string_pretty(&report)?.as_bytes())?;
    let markdown = report_markdown(&report);
    write_atomically(&args.out.join(REPORT_MD), markdown.as_bytes())?;
    println!("{markdown}");
    eprintln!("report: {} and {}", args.out.join(REPORT_MD).display(), args.out.join(REPORT_JSON).display());
    Ok(())
}

async fn ingest_stage(args: &AdaptArgs, store: &Store) -> anyhow::Result<CorpusSummary> {
    let files = document_files(&args.documents)?;
    if files.is_empty() {
        bail!(
            "no documents in {}",
            args.documents.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    let saved = store.settings().await?;
    let settings = ChunkSettings { max_tokens: saved.chunk_tokens as usize, overlap: saved.chunk_overlap as usize };
    let tokenizer = chunking_tokenizer("default", &args.models_dir)?;
    let parser = DocumentParser::Sandboxed(SandboxLimits::for_program(std::env::current_exe()?));
    let bar = progress_bar(files.len() as u64, "{spinner} ingesting [{bar:30}] {pos}/{len} files ({elapsed}) {msg}");
    let mut failed = Vec::new();
    for path in &files {
        bar.set_message(path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        match ingest_one(store, &tokenizer, &parser, path, settings, DEFAULT_MAX_UPLOAD_MB * 1024 * 1024).await? {
            Ok(said) if !said.contains("already ingested") => bar.println(said),
            Ok(_) => {}
            Err(why) => {
                bar.println(format!("skipped {why}"));
                failed.push(why);
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let documents = store.documents().await?;
    let passages = store.passage_ids(None).await?.len();
    if passages == 0 {
        bail!("no passages: none of the {} files gave text ({})", files.len(), failed.join("; "));
    }
    eprintln!(
        "corpus: {} documents, {passages} passages{}",
        documents.len(),
        if failed.is_empty() { String::new() } else { format!("; {} files skipped", failed.len()) }
    );
    Ok(CorpusSummary { documents: documents.len(), passages, failed })
}

async fn synth_stage(args: &AdaptArgs, store: &Store, state: &mut AdaptState) -> anyhow::Result<SynthesisSummary> {
    let generator = model_path("default", &args.models_dir, crate::DEFAULT_GENERATOR);
    let mut run = match state.synth_run {
        Some(id) => {
            store.synth_run(id).await?.with_context(|| format!("synthesis run {id} is missing from the run folder"))?
        }
        None => {
            let (llm, model) = llm_choice(args.llm, &args.llm_base_url, &args.llm_model, &generator)?;
            let all = store.passage_ids(None).await?;
            let chosen: Vec<i64> =
                spread(all.len(), args.max_passages.unwrap_or(all.len())).into_iter().map(|i| all[i]).collect();
            let answers = answer_style(args.answers, &llm);
            let config = SynthRunConfig {
                llm,
                model,
                questions_per_passage: args.questions_per_passage,
                prompts: prompt::defaults(),
                document_id: None,
                filters: FilterSettings::default(),
                answers,
                judge: None,
            };
            let run = store.create_synth_run(&config, &chosen).await?;
            state.synth_run = Some(run.id);
            state.save(&args.out)?;
            run
        }
    };
    if state.synth_done {
        eprintln!("synthesis: done ({} kept)", run.report.kept);
    } else {
        let left = args.budget_minutes.map(|m| m * 60.0 - run.report.seconds);
        if left.is_some_and(|s| s <= 0.0) {
            state.stopped_by_budget = true;
        } else {
            let cancel = Arc::new(AtomicBool::new(false));
            let finished = Arc::new(AtomicBool::new(false));
            let budget_spent = Arc::new(AtomicBool::new(false));
            if let Some(seconds) = left {
                let (cancel, finished, spent) = (cancel.clone(), finished.clone(), budget_spent.clone());
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
                    while Instant::now() < deadline {
                        if finished.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    spent.store(true, Ordering::Relaxed);
                    cancel.store(true, Ordering::Relaxed);
                });
            }
            let retriever = model_path("default", &args.models_dir, crate::DEFAULT_RETRIEVER);
            run = run_synth_job(store, &run, &generator, retriever, &args.device, cancel, None).await?;
            finished.store(true, Ordering::Relaxed);
            if run.report.failed_passages > 0 {
                bail!(
                    "{} passages failed ({}); every finished passage is stored: run the same command again to retry them",
                    run.report.failed_passages,
                    run.error.as_deref().unwrap_or("the LLM failed")
                );
            }
            state.stopped_by_budget = budget_spent.load(Ordering::Relaxed) && run.status == JobStatus::Cancelled;
        }
        state.synth_done = true;
        state.save(&args.out)?;
        let r = &run.report;
        eprintln!(
            "synthesis: {} of {} passages, {} questions, {} kept in {:.1} min{}",
            r.passages_done,
            run.passages_total,
            r.questions_seen,
            r.kept,
            r.seconds / 60.0,
            if state.stopped_by_budget { " (the budget is spent: training on what is there)" } else { "" }
        );
    }
    // What passed the filters is approved: review is optional here.
    let pending = TripleFilter {
        status: Some(TripleStatus::Pending),
        origin: Some(TripleOrigin::Synthetic),
        ..TripleFilter::default()
    };
    let ids = store.triple_ids(&pending).await?;
    store.set_status(&ids, TripleStatus::Approved).await?;
    let approved = store.all_triples(&[TripleStatus::Approved]).await?.len();
    let r = &run.report;
    Ok(SynthesisSummary {
        passages_asked: run.passages_total,
        passages_done: r.passages_done,
        skipped_passages: r.skipped_passages,
        questions: r.questions_seen,
        kept: r.kept,
        approved,
        dropped: r.filtered.reasons().iter().filter(|(n, _)| *n > 0).map(|(n, what)| (what.to_string(), *n)).collect(),
        seconds: r.seconds,
        stopped_by_budget: state.stopped_by_budget,
    })
}

fn train_stage(
    out: &Path,
    triples: &[Triple],
    passages: Vec<String>,
    mode: TrainMode,
    hyper: &Hyper,
    models_dir: &Path,
    device: &str,
) -> anyhow::Result<TrainingSummary> {
    if triples.len() < MIN_TRIPLES {
        bail!(
            "only {} triples passed the filters ({MIN_TRIPLES} at least are needed to train): add documents, or allow \
             more passages (--max-passages) or time (--budget-minutes) in a new run folder",
            triples.len()
        );
    }
    let run_dir = out.join(TRAIN_DIR);
    let data = out.join(TRIPLES_FILE);
    let resume =
        run_dir.join(checkpoint::CONFIG_FILE).is_file().then(|| checkpoint::latest_checkpoint(&run_dir).ok()).flatten();
    let config = match &resume {
        // The data and settings the run started with.
        Some(_) => checkpoint::read_config(&run_dir)?,
        None => {
            let lines: String =
                triples.iter().map(|t| serde_json::to_string(t).map(|l| l + "\n")).collect::<Result<_, _>>()?;
            write_atomically(&data, lines.as_bytes())?;
            let inputs = RunInputs { device: device.to_owned(), ..RunInputs::new(data.clone(), models_dir) };
            TrainConfig::from_hyper(hyper, mode, inputs)?
        }
    };
    let dataset = config.load_data().with_context(|| format!("reading {}", config.data.display()))?;
    let (models, _device) = BaseModels::load(&config)?;
    let (train_examples, held_out) = (dataset.train.len(), dataset.test.len());
    let mut trainer = Trainer::new(RunSetup {
        config: config.clone(),
        out: run_dir.clone(),
        models,
        train: dataset.train,
        held_out: dataset.test,
        corpus: passages,
        resume,
    })?;
    let bar = progress_bar(
        trainer.total_steps() as u64,
        "{spinner} training [{bar:30}] {pos}/{len} steps ({elapsed}, eta {eta}) {msg}",
    );
    bar.set_position(trainer.step() as u64);
    let started = Instant::now();
    let (mut epochs, mut steps_per_epoch, mut kept_step, mut stopped_early) = (0, 0, None, false);
    let (mut cloze_pairs, mut held_out_cloze_pairs, mut planned_steps) = (0, 0, trainer.total_steps());
    let outcome = trainer.run(&mut |event| {
        match event {
            TrainEvent::Started {
                epochs: e,
                steps_per_epoch: s,
                total_steps,
                cloze_pairs: c,
                held_out_cloze_pairs: h,
                ..
            } => {
                (epochs, steps_per_epoch, cloze_pairs, held_out_cloze_pairs, planned_steps) =
                    (*e, *s, *c, *h, *total_steps);
                let cloze = match c {
                    0 => String::new(),
                    c => format!(" and {c} inverse cloze pairs ({h} more held out)"),
                };
                bar.println(format!(
                    "training {mode} on {train_examples} triples{cloze} ({held_out} held out): {s} steps an epoch, {e} \
                     epochs, {total_steps} steps at most"
                ));
            }
            TrainEvent::Step(point) => {
                bar.set_position(point.step as u64);
                bar.set_message(format!("loss {:.4}", point.loss));
            }
            TrainEvent::Eval { step, loss, .. } => bar.println(format!("step {step}: held-out loss {loss:.4}")),
            TrainEvent::KeptBest { step, loss, stopped_early: early } => {
                (kept_step, stopped_early) = (Some(*step), *early);
                bar.println(format!(
                    "{}kept the adapters of step {step} (held-out loss {loss:.4})",
                    if *early { "the held-out loss stopped falling: stopped early; " } else { "" }
                ));
            }
            _ => {}
        }
        ControlFlow::Continue(())
    })?;
    bar.finish_and_clear();
    let Outcome::Finished { steps, .. } = outcome else { bail!("training stopped before its end") };
    let log = std::fs::read_to_string(run_dir.join(checkpoint::LOG_FILE)).unwrap_or_default();
    let points: Vec<StepPoint> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    Ok(TrainingSummary {
        mode: mode.to_string(),
        triples: triples.len(),
        train_examples,
        cloze_pairs,
        held_out_cloze_pairs,
        held_out,
        epochs,
        steps_per_epoch,
        planned_steps,
        steps,
        first_loss: points.first().map(|p| p.loss),
        last_loss: points.last().map(|p| p.loss),
        evals: checkpoint::read_evals(&run_dir),
        kept_step,
        stopped_early,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Test questions with their gold passages, when the file has them.
fn read_test(path: &Path) -> anyhow::Result<Vec<(String, Option<String>, String)>> {
    if is_shared_format(path) {
        let dataset = load_dataset(path, &CsvColumns::default(), SplitOptions::default())
            .with_context(|| format!("reading {}", path.display()))?;
        return Ok(dataset.test.into_iter().map(|t| (t.question, Some(t.passage), t.answer)).collect());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
        let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let (Some(question), Some(answer)) = (field("question"), field("answer")) else {
            bail!("{} line {}: needs \"question\" and \"answer\"", path.display(), i + 1);
        };
        rows.push((question, field("passage"), answer));
    }
    Ok(rows)
}

#[allow(clippy::too_many_arguments)]
fn evaluate_stage(
    test: &Path,
    corpus: Vec<String>,
    out: &Path,
    mode: TrainMode,
    max_questions: Option<usize>,
    skip_answers: bool,
    models_dir: &Path,
    device: &str,
) -> anyhow::Result<EvaluationSummary> {
    let mut asked = read_test(test)?;
    if let Some(max) = max_questions {
        asked.truncate(max);
    }
    let locator = GoldLocator::new(&corpus);
    let rows: Vec<Triple> = asked
        .iter()
        .filter_map(|(question, gold, answer)| {
            locator.locate(question, gold.as_deref(), answer).map(|i| Triple {
                question: question.clone(),
                passage: corpus[i].clone(),
                answer: answer.clone(),
            })
        })
        .collect();
    let unmatched = asked.len() - rows.len();
    if rows.is_empty() {
        bail!("none of the {} test questions has its gold passage among the documents' passages", asked.len());
    }
    let device = attune::model::device::select(device)?;
    let ks = [1, 5, 10];
    let bar = progress_bar(0, "{spinner} evaluating: {msg} [{bar:30}] {pos}/{len}");
    let mut progress = |phase: &str, done: usize, total: usize| {
        bar.set_message(phase.to_owned());
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let mut retriever = Retriever::load(&models_dir.join(crate::DEFAULT_RETRIEVER), &device)?;
    let base = run::evaluate_retrieval(&retriever, &corpus, &rows, &ks, &mut progress)?;
    let adapters = |part: &str| Some(out.join(TRAIN_DIR).join(part)).filter(|d| d.is_dir());
    let tuned = match adapters(checkpoint::RETRIEVER_DIR) {
        Some(adapter) if mode.trains_retriever() => {
            retriever.load_adapter(&adapter)?;
            Some(run::evaluate_retrieval(&retriever, &corpus, &rows, &ks, &mut progress)?)
        }
        _ => None,
    };
    let bm25 = run::evaluate_bm25(&corpus, &rows, &ks, &mut progress)?;
    let mut retrieval = BTreeMap::new();
    retrieval.insert("base".to_owned(), base.metrics.flat());
    if let Some(tuned) = &tuned {
        retrieval.insert("tuned".to_owned(), tuned.metrics.flat());
    }
    retrieval.insert("bm25".to_owned(), bm25.metrics.flat());
    let mut answers = BTreeMap::new();
    if !skip_answers {
        let mut generator = Generator::load(&models_dir.join(crate::DEFAULT_GENERATOR), &device)?;
        let settings = GenerationSettings::default();
        answers.insert(
            "base retriever + base generator".to_owned(),
            run::evaluate_generation(&generator, &corpus, &rows, &base.rankings, settings, &mut progress)?.metrics,
        );
        let final_rankings = tuned.as_ref().map_or(&base.rankings, |t| &t.rankings);
        if tuned.is_some() {
            answers.insert(
                "tuned retriever + base generator".to_owned(),
                run::evaluate_generation(&generator, &corpus, &rows, final_rankings, settings, &mut progress)?.metrics,
            );
        }
        if let Some(adapter) = adapters(checkpoint::GENERATOR_DIR).filter(|_| mode.trains_generator()) {
            generator.load_adapter(&adapter)?;
            let name =
                if tuned.is_some() { "tuned retriever + tuned generator" } else { "base retriever + tuned generator" };
            answers.insert(
                name.to_owned(),
                run::evaluate_generation(&generator, &corpus, &rows, final_rankings, settings, &mut progress)?.metrics,
            );
        }
    }
    bar.finish_and_clear();
    Ok(EvaluationSummary {
        test: test.display().to_string(),
        questions: rows.len(),
        unmatched,
        corpus: corpus.len(),
        retrieval,
        answers,
    })
}

fn report_markdown(report: &AdaptReport) -> String {
    let mut md = String::from("# Attune adapt report\n\n");
    let c = &report.corpus;
    md += &format!("## Corpus\n\n{} documents, {} passages.", c.documents, c.passages);
    if !c.failed.is_empty() {
        md += &format!(" Skipped {} files:\n\n", c.failed.len());
        for why in &c.failed {
            md += &format!("- {why}\n");
        }
    }
    let s = &report.synthesis;
    md += &format!(
        "\n\n## Synthesis\n\n{} of {} passages done ({} tables of contents, indexes or bibliographies skipped) in {:.1} \
         min{}: {} questions, **{} kept** and approved ({} approved triples in all).\n\n",
        s.passages_done,
        s.passages_asked,
        s.skipped_passages,
        s.seconds / 60.0,
        if s.stopped_by_budget { ", stopped by the budget" } else { "" },
        s.questions,
        s.kept,
        s.approved
    );
    if !s.dropped.is_empty() {
        md += "| dropped because | candidates |\n|---|---|\n";
        let mut dropped: Vec<(&String, &u64)> = s.dropped.iter().collect();
        dropped.sort_by_key(|(_, n)| std::cmp::Reverse(**n));
        for (why, n) in dropped {
            md += &format!("| {why} | {n} |\n");
        }
    }
    let t = &report.training;
    let loss = |l: Option<f64>| l.map(|l| format!("{l:.4}")).unwrap_or_else(|| "–".into());
    md += &format!(
        "\n## Training\n\n{} on {} triples ({} train, {} held out){}: {} epochs of {} steps, {} of {} steps run in \
         {:.1} min; training loss {} → {}.",
        t.mode,
        t.triples,
        t.train_examples,
        t.held_out,
        match t.cloze_pairs {
            0 => String::new(),
            n => format!(" and {n} inverse cloze pairs from the passages ({} more held out)", t.held_out_cloze_pairs),
        },
        t.epochs,
        t.steps_per_epoch,
        t.steps,
        t.planned_steps,
        t.seconds / 60.0,
        loss(t.first_loss),
        loss(t.last_loss)
    );
    if let (Some(step), Some(best)) = (t.kept_step, t.evals.iter().find(|(s, _)| Some(*s) == t.kept_step)) {
        md += &format!(
            " Held-out loss {}; the adapters kept are step {step}'s ({:.4}){}.",
            t.evals.iter().map(|(s, l)| format!("{l:.4} at {s}")).collect::<Vec<_>>().join(", "),
            best.1,
            if t.stopped_early { ", where it stopped falling (early stop)" } else { "" }
        );
    }
    md += "\n";
    if let Some(e) = &report.evaluation {
        md += &format!(
            "\n## Evaluation\n\n{} real questions from {} over all {} passages{}.\n\n",
            e.questions,
            e.test,
            e.corpus,
            if e.unmatched > 0 {
                format!(" ({} more had no gold passage among them)", e.unmatched)
            } else {
                String::new()
            }
        );
        md += "| retrieval | hit@1 | hit@5 | hit@10 | MRR@10 | nDCG@10 |\n|---|---|---|---|---|---|\n";
        for (name, m) in &e.retrieval {
            let get = |k: &str| m.get(k).map(|v| format!("{v:.4}")).unwrap_or_default();
            md += &format!(
                "| {name} | {} | {} | {} | {} | {} |\n",
                get("hit@1"),
                get("hit@5"),
                get("hit@10"),
                get("mrr@10"),
                get("ndcg@10")
            );
        }
        if !e.answers.is_empty() {
            md += "\n| answers (top-1 passage) | EM | F1 |\n|---|---|---|\n";
            for (name, m) in &e.answers {
                md += &format!("| {name} | {:.4} | {:.4} |\n", m.exact_match, m.f1);
            }
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passages_are_spread_over_the_corpus() {
        assert_eq!(spread(10, 3), [0, 3, 6]);
        assert_eq!(spread(3, 10), [0, 1, 2]);
        assert_eq!(spread(5, 0), Vec::<usize>::new());
    }
}
