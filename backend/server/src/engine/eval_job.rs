//! An evaluation as a job: the base models and each chosen run's tuned pair, on the same questions
//! (a run's held-out triples, or an uploaded QA file) against every passage in the store, with
//! retrieval metrics, answers and a per-question drill-down.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use attune_shared::{
    EvalItem, EvalReport, JobStatus, LogLevel, MethodScores, RetrievalMethod, Retrieved, Run, SystemAnswer,
    SystemScores, TestSet,
};

use super::EngineError;
use super::job::{Control, EventSink, JobContext, JobEvent};
use crate::eval::metrics::{exact_match, token_f1};
use crate::eval::run::{self, GenerationSettings};
use crate::model::catalog::{DEFAULT_GENERATOR_NAME, DEFAULT_RETRIEVER_NAME};
use crate::model::generator::Generator;
use crate::model::retriever::Retriever;
use crate::train::checkpoint::TRIPLES_FILE;
use crate::train::config::load_split;
use crate::train::data::{CsvColumns, SplitOptions, Triple, load_dataset};

/// Cut-offs of hit@k.
pub const KS: [usize; 4] = [1, 3, 5, 10];
/// Retrieved passages shown per question in the drill-down.
const SHOWN: usize = 5;

/// One system under evaluation: models and adapters.
struct System {
    label: String,
    run_id: Option<i64>,
    retriever: PathBuf,
    retriever_adapter: Option<PathBuf>,
    generator: PathBuf,
    generator_adapter: Option<PathBuf>,
}

/// The seed of every bootstrap interval (the same questions give the same interval).
const BOOTSTRAP_SEED: u64 = 20_260_101;

/// The adapters a run produced (a mode trains one or both).
pub fn run_adapters(context: &JobContext, run_id: i64) -> (Option<PathBuf>, Option<PathBuf>) {
    crate::model::export::RunModels::adapters_in(&context.run_dir(run_id))
}

pub fn run(context: &JobContext, sink: &EventSink, id: i64, control: &Control) {
    let result = evaluate(context, sink, id, control);
    let (status, report, error) = match result {
        Ok(Some(report)) => (JobStatus::Succeeded, Some(report), None),
        Ok(None) if control.stopping.load(Ordering::Relaxed) => {
            (JobStatus::Interrupted, None, Some("the server stopped during this evaluation; start it again".into()))
        }
        Ok(None) => (JobStatus::Cancelled, None, None),
        Err(e) => {
            tracing::error!(eval = id, "evaluation failed: {e}");
            (JobStatus::Failed, None, Some(e.to_string()))
        }
    };
    if let Some(message) = &error {
        sink(JobEvent::Log { job: format!("eval:{id}"), level: LogLevel::Error, message: message.clone() });
    }
    match context.runtime.block_on(context.store.finish_eval(id, status, report.as_ref(), error.as_deref())) {
        Ok(mut eval) => {
            // The report goes by REST; the event says it is there.
            if let Some(report) = &mut eval.report {
                report.items.clear();
            }
            sink(JobEvent::Eval(Box::new(eval)))
        }
        Err(e) => tracing::error!(eval = id, "cannot record the evaluation's end: {e}"),
    }
}

/// The questions of a test set: a run's held-out triples, or an uploaded file's (its test split
/// when it is the shared QA format, else every row).
pub fn test_rows(
    context: &JobContext,
    test_set: &TestSet,
    first_run: Option<&Run>,
    path: Option<&Path>,
) -> Result<Vec<Triple>, EngineError> {
    match test_set {
        TestSet::HeldOut => {
            let run =
                first_run.ok_or_else(|| EngineError::Invalid("a held-out test set needs a run: pick one".into()))?;
            let file = context.run_dir(run.id).join(TRIPLES_FILE);
            Ok(load_split(&file, &CsvColumns::default(), &run.hyper)?.test)
        }
        TestSet::Uploaded { .. } => {
            let path = path.ok_or_else(|| EngineError::Invalid("no such test set".into()))?;
            let dataset = load_dataset(path, &CsvColumns::default(), SplitOptions::default())?;
            Ok(match dataset.split_source {
                crate::train::data::SplitSource::ByPassage => dataset.train.into_iter().chain(dataset.test).collect(),
                _ => dataset.test,
            })
        }
    }
}

fn evaluate(
    context: &JobContext,
    sink: &EventSink,
    id: i64,
    control: &Control,
) -> Result<Option<EvalReport>, EngineError> {
    let eval =
        context.runtime.block_on(context.store.eval(id))?.ok_or(EngineError::Invalid(format!("no evaluation {id}")))?;
    let request = eval.request.clone();
    let mut runs = Vec::new();
    for run_id in &request.runs {
        runs.push(
            context
                .runtime
                .block_on(context.store.run(*run_id))?
                .ok_or(EngineError::Invalid(format!("no run {run_id}")))?,
        );
    }
    let test_path = match &request.test_set {
        TestSet::Uploaded { id } => {
            context.runtime.block_on(context.store.test_set(*id))?.map(|(_, path)| PathBuf::from(path))
        }
        TestSet::HeldOut => None,
    };
    let mut rows = test_rows(context, &request.test_set, runs.first(), test_path.as_deref())?;
    if let Some(max) = request.max_questions {
        rows.truncate(max as usize);
    }
    if rows.is_empty() {
        return Err(EngineError::Invalid("the test set has no questions".into()));
    }
    // Every passage in the store, plus gold passages the store lacks.
    let mut corpus: Vec<String> =
        context.runtime.block_on(context.store.indexed_passages())?.into_iter().map(|p| p.text).collect();
    let mut known: HashSet<String> = corpus.iter().cloned().collect();
    for row in &rows {
        if known.insert(row.passage.clone()) {
            corpus.push(row.passage.clone());
        }
    }
    let (base_retriever, base_generator) = match runs.first() {
        Some(run) => (run.retriever.clone(), run.generator.clone()),
        None => (DEFAULT_RETRIEVER_NAME.to_owned(), DEFAULT_GENERATOR_NAME.to_owned()),
    };
    let mut systems = vec![System {
        label: "base".into(),
        run_id: None,
        retriever: context.model_dir(&base_retriever),
        retriever_adapter: None,
        generator: context.model_dir(&base_generator),
        generator_adapter: None,
    }];
    for run in &runs {
        let (retriever_adapter, generator_adapter) = run_adapters(context, run.id);
        if retriever_adapter.is_none() && generator_adapter.is_none() {
            return Err(EngineError::Invalid(format!(
                "run {} ({}) has no adapters yet: it has not finished",
                run.id, run.name
            )));
        }
        systems.push(System {
            label: run.name.clone(),
            run_id: Some(run.id),
            retriever: context.model_dir(&run.retriever),
            retriever_adapter,
            generator: context.model_dir(&run.generator),
            generator_adapter,
        });
    }
    let device = crate::model::device::select(&context.device_spec).map_err(|e| EngineError::Failed(e.to_string()))?;
    let dtype = crate::model::device::select_dtype("auto", &device).map_err(|e| EngineError::Failed(e.to_string()))?;
    fn fail(e: &dyn std::fmt::Display) -> EngineError {
        EngineError::Failed(e.to_string())
    }

    let mut last_report = Instant::now();
    let mut scores = Vec::new();
    let mut answers_by_system: Vec<Vec<SystemAnswer>> = Vec::new();
    let gold = run::gold_indices(&corpus, &rows).map_err(|e| fail(&e))?;
    // BM25 needs no model: one ranking for every system, fused with each one's dense ranking.
    let lexical =
        run::evaluate_bm25(&corpus, &rows, &KS, &mut |_: &str, _: usize, _: usize| {}).map_err(|e| fail(&e))?;
    let mut methods =
        vec![MethodScores { system: String::new(), method: RetrievalMethod::Bm25, retrieval: lexical.metrics.flat() }];
    for (index, system) in systems.iter().enumerate() {
        let mut progress = |phase: &str, done: usize, total: usize| {
            if last_report.elapsed().as_secs_f64() < 0.5 && done < total {
                return;
            }
            last_report = Instant::now();
            let phase = format!("{} (system {} of {}): {phase}", system.label, index + 1, systems.len());
            if context.runtime.block_on(context.store.set_eval_progress(id, &phase, done as u64, total as u64)).is_ok()
                && let Ok(Some(eval)) = context.runtime.block_on(context.store.eval(id))
            {
                sink(JobEvent::Eval(Box::new(eval)));
            }
        };
        if control.should_stop() {
            return Ok(None);
        }
        let mut retriever = Retriever::load_as(&system.retriever, &device, dtype).map_err(|e| fail(&e))?;
        if let Some(adapter) = &system.retriever_adapter {
            retriever.load_adapter(adapter).map_err(|e| fail(&e))?;
        }
        let retrieval =
            run::evaluate_retrieval(&retriever, &corpus, &rows, &KS, &mut progress).map_err(|e| fail(&e))?;
        drop(retriever);
        let hybrid = run::fuse(&retrieval, &lexical, &corpus, &rows, &KS).map_err(|e| fail(&e))?;
        for (method, run) in [(RetrievalMethod::Dense, &retrieval), (RetrievalMethod::Hybrid, &hybrid)] {
            methods.push(MethodScores { system: system.label.clone(), method, retrieval: run.metrics.flat() });
        }
        let mut answers: Vec<SystemAnswer> = retrieval
            .rankings
            .iter()
            .zip(&gold)
            .map(|(ranking, &gold)| SystemAnswer {
                retrieved: ranking
                    .iter()
                    .take(SHOWN)
                    .map(|&i| Retrieved { text: corpus[i].clone(), gold: i == gold })
                    .collect(),
                gold_rank: ranking.iter().take(10).position(|&i| i == gold).map(|r| r as u32 + 1),
                prediction: None,
                f1: None,
            })
            .collect();
        let relevant: Vec<std::collections::HashSet<usize>> =
            gold.iter().map(|&g| std::collections::HashSet::from([g])).collect();
        let mut system_scores = SystemScores {
            label: system.label.clone(),
            run_id: system.run_id,
            retrieval: retrieval.metrics.flat(),
            exact_match: None,
            f1: None,
            intervals: crate::eval::metrics::bootstrap_retrieval(
                &retrieval.rankings,
                &relevant,
                &KS,
                crate::eval::metrics::BOOTSTRAP_RESAMPLES,
                BOOTSTRAP_SEED,
            ),
        };
        if request.answers {
            if control.should_stop() {
                return Ok(None);
            }
            let mut generator = Generator::load_as(&system.generator, &device, dtype).map_err(|e| fail(&e))?;
            if let Some(adapter) = &system.generator_adapter {
                generator.load_adapter(adapter).map_err(|e| fail(&e))?;
            }
            let settings = GenerationSettings::default();
            let generation =
                run::evaluate_generation(&generator, &corpus, &rows, &retrieval.rankings, settings, &mut progress)
                    .map_err(|e| fail(&e))?;
            for (answer, prediction) in answers.iter_mut().zip(&generation.predictions) {
                answer.f1 = Some(token_f1(&prediction.prediction, &prediction.answer));
                answer.prediction = Some(prediction.prediction.clone());
            }
            system_scores.exact_match = Some(generation.metrics.exact_match);
            system_scores.f1 = Some(generation.metrics.f1);
            let per_question = |score: fn(&str, &str) -> f64| -> Vec<f64> {
                generation.predictions.iter().map(|p| score(&p.prediction, &p.answer)).collect()
            };
            let resamples = crate::eval::metrics::BOOTSTRAP_RESAMPLES;
            for (name, score) in [("em", exact_match as fn(&str, &str) -> f64), ("f1", token_f1)] {
                let interval = crate::eval::metrics::bootstrap_mean(&per_question(score), resamples, BOOTSTRAP_SEED);
                system_scores.intervals.insert(name.to_owned(), interval);
            }
        }
        scores.push(system_scores);
        answers_by_system.push(answers);
    }
    let items = rows
        .iter()
        .enumerate()
        .map(|(q, row)| EvalItem {
            question: row.question.clone(),
            answer: row.answer.clone(),
            systems: answers_by_system.iter().map(|answers| answers[q].clone()).collect(),
        })
        .collect();
    Ok(Some(EvalReport { questions: rows.len() as u32, corpus: corpus.len() as u32, systems: scores, items, methods }))
}
