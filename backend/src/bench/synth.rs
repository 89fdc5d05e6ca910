//! `attune bench synth`: the local model's throughput on synthesis and on evaluation's answers,
//! one prompt at a time (how Attune generated before batching) beside side by side, in one process
//! on the same passages and questions: kept triples per minute, tokens per second, and whether the
//! two ways wrote the same text. Synthesis runs with extractive answers (the local model's default)
//! and with written ones; on real questions with their gold passages, how often each way's answer
//! holds the gold answer, beside the sentence sharing most words with the question; and the questions
//! decoded free, and asked with the few-shot prompt (two worked examples), each beside the default.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use attune_shared::{AnswerStyle, FilterCounts, SynthPrompts};
use serde::Serialize;

use crate::eval::run::{GenerationSettings, evaluate_generation};
use crate::ingest::{ChunkSettings, chunk, parse};
use crate::model::catalog;
use crate::model::generator::{Generator, MAX_BATCH_ROWS};
use crate::synth::{
    Asking, BATCH_PASSAGES, FilterSettings, Llm, LocalLlm, PassageInput, SynthError, extract, filter, prompt,
    reference_matter, synthesize_batch,
};
use crate::train::data::{CsvColumns, Triple, load_triples};
use candle_core::Device;

/// What to measure on.
#[derive(Debug, Clone)]
pub struct SynthBenchConfig {
    pub models_dir: PathBuf,
    /// The document whose passages are synthesised from (chunked as ingestion does, 256 tokens).
    pub pdf: PathBuf,
    /// The passages `first..first + count` of it.
    pub first: usize,
    pub count: usize,
    pub questions_per_passage: u32,
    /// Questions in the shared QA format (`{"id","question","passage","answer"}` lines) for the
    /// answer figure: the first `answer_questions` of them, each with its gold passage.
    pub qa: PathBuf,
    pub answer_questions: usize,
    /// Also run one prompt at a time (the comparison; it takes most of the time).
    pub one_at_a_time: bool,
}

/// One way of synthesising the passages.
#[derive(Debug, Clone, Serialize)]
pub struct SynthFigures {
    pub mode: &'static str,
    pub passages: usize,
    /// Tables of contents, indexes and bibliographies: not sent to the model.
    pub skipped_passages: usize,
    pub candidates: u64,
    pub kept: u64,
    pub seconds: f64,
    pub kept_per_minute: f64,
    pub tokens_generated: u64,
    pub tokens_per_second: f64,
    pub filtered: FilterCounts,
    /// Kept questions that are one of the few-shot prompt's example questions word for word (the
    /// text filters keep them; the round trip drops most in a real run).
    pub copied_examples: u64,
    /// The kept (question, answer) pairs, for comparing the two ways.
    #[serde(skip)]
    pub triples: Vec<(String, String)>,
}

/// One way of answering the evaluation questions.
#[derive(Debug, Clone, Serialize)]
pub struct AnswerFigures {
    pub mode: &'static str,
    pub questions: usize,
    pub seconds: f64,
    pub answers_per_second: f64,
    #[serde(skip)]
    pub predictions: Vec<String>,
}

/// How often one way's answers to real questions hold the gold answer (given the gold passage).
#[derive(Debug, Clone, Serialize)]
pub struct AnswerQuality {
    pub way: &'static str,
    pub questions: usize,
    /// Share of answers that contain the gold answer (lower-cased words, in order).
    pub holds_gold_answer: f64,
    /// Mean token F1 against the gold answer.
    pub f1: f64,
    /// Mean words per answer.
    pub words: f64,
}

/// Everything the bench prints, as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct SynthBench {
    pub pdf: String,
    pub passages: String,
    pub questions_per_passage: u32,
    pub threads: usize,
    pub synthesis: Vec<SynthFigures>,
    pub answers: Vec<AnswerFigures>,
    pub answer_quality: Vec<AnswerQuality>,
    /// Side by side over one at a time, in kept triples per minute and answers per second (for
    /// synthesis: the default, extractive, over written answers one at a time as before).
    pub synthesis_speedup: Option<f64>,
    pub answer_speedup: Option<f64>,
    /// Whether both ways kept the same triples (written answers) and wrote the same answers
    /// (greedy decoding).
    pub same_triples: Option<bool>,
    pub same_answers: Option<bool>,
}

/// The row of the questions decoded without the list's form held.
const FREE_QUESTIONS: &str = "extractive, side by side, questions decoded free";
/// The row of the questions asked with the few-shot prompt (two worked examples).
const FEW_SHOT_QUESTIONS: &str = "extractive, side by side, questions prompt with worked examples";

/// The local model one prompt at a time, as [`LocalLlm`] worked before it decoded side by side.
struct OneAtATime<'a>(&'a LocalLlm);

impl Llm for OneAtATime<'_> {
    fn name(&self) -> String {
        self.0.name()
    }

    fn complete(&self, prompts: &[String], max_tokens: usize) -> Result<Vec<Result<String, SynthError>>, SynthError> {
        one_by_one(prompts, |prompt| self.0.complete(prompt, max_tokens))
    }

    /// Held to the list's form as side by side is, so that both ways can write the same triples.
    fn questions(
        &self,
        prompts: &[String],
        n: usize,
        max_tokens: usize,
    ) -> Result<Vec<Result<String, SynthError>>, SynthError> {
        one_by_one(prompts, |prompt| self.0.questions(prompt, n, max_tokens))
    }

    fn choose(&self, prompts: &[(String, usize)]) -> Result<Vec<Result<Option<usize>, SynthError>>, SynthError> {
        one_by_one(prompts, |prompt| self.0.choose(prompt))
    }
}

/// `ask` called with one prompt at a time, the replies in order.
fn one_by_one<P, R>(
    prompts: &[P],
    mut ask: impl FnMut(&[P]) -> Result<Vec<R>, SynthError>,
) -> Result<Vec<R>, SynthError> {
    let mut out = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        out.extend(ask(std::slice::from_ref(prompt))?);
    }
    Ok(out)
}

/// The passages `first..first + count` of `pdf`, chunked as ingestion chunks them.
pub fn passages_of(
    pdf: &Path,
    tokenizer: &tokenizers::Tokenizer,
    first: usize,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let bytes = std::fs::read(pdf).with_context(|| format!("cannot read {}", pdf.display()))?;
    let name = pdf.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let doc = parse(&name, &bytes)?;
    let passages = chunk(&name, &doc, tokenizer, ChunkSettings::default())?;
    anyhow::ensure!(
        passages.len() >= first + count,
        "{} has {} passages; passages {first}..{} asked for",
        pdf.display(),
        passages.len(),
        first + count
    );
    Ok(passages.into_iter().skip(first).take(count).map(|p| p.text).collect())
}

fn synthesize_all(
    llm: &dyn Llm,
    local: &LocalLlm,
    (mode, answers, questions_prompt): (&'static str, AnswerStyle, &str),
    passages: &[String],
    per_passage: u32,
    passages_per_call: usize,
) -> anyhow::Result<SynthFigures> {
    let prompts = SynthPrompts { questions: questions_prompt.to_owned(), ..prompt::defaults() };
    // The text filters (the corpus filters do no decoding: they are not what this measures, and
    // the figures stay comparable with the first ones).
    let filters = FilterSettings { round_trip_top_k: 0, max_question_similarity: 1.0, ..FilterSettings::default() };
    let asked: Vec<&String> = passages.iter().filter(|p| reference_matter(p).is_none()).collect();
    let bar =
        crate::progress_bar(asked.len() as u64, &format!("{mode}: {{bar:30}} {{pos}}/{{len}} passages ({{elapsed}})"));
    let tokens_before = local.tokens_generated.load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let mut figures = SynthFigures {
        mode,
        passages: passages.len(),
        skipped_passages: passages.len() - asked.len(),
        candidates: 0,
        kept: 0,
        seconds: 0.0,
        kept_per_minute: 0.0,
        tokens_generated: 0,
        tokens_per_second: 0.0,
        filtered: FilterCounts::default(),
        copied_examples: 0,
        triples: Vec::new(),
    };
    for batch in asked.chunks(passages_per_call) {
        let inputs: Vec<PassageInput<'_>> =
            batch.iter().enumerate().map(|(id, text)| PassageInput { id: id as i64, text, known: &[] }).collect();
        let asking = Asking { prompts: &prompts, questions_per_passage: per_passage, answers, filters: &filters };
        for result in synthesize_batch(llm, &asking, &inputs, None)? {
            let out = result?;
            figures.candidates += out.questions_seen;
            figures.kept += out.kept.len() as u64;
            figures.filtered.add(&out.filtered);
            figures.triples.extend(out.kept);
        }
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    let examples = prompt::few_shot_example_questions();
    figures.copied_examples =
        figures.triples.iter().filter(|(q, _)| examples.contains(&filter::normalise_question(q))).count() as u64;
    figures.seconds = started.elapsed().as_secs_f64();
    figures.kept_per_minute = figures.kept as f64 / (figures.seconds / 60.0);
    figures.tokens_generated = local.tokens_generated.load(std::sync::atomic::Ordering::Relaxed) - tokens_before;
    figures.tokens_per_second = figures.tokens_generated as f64 / figures.seconds;
    Ok(figures)
}

/// The first `count` questions of a QA file, each with its gold passage (read as training reads
/// triples files).
fn questions_of(qa: &Path, count: usize) -> anyhow::Result<Vec<Triple>> {
    let (triples, _) = load_triples(qa, &CsvColumns::default())?;
    Ok(triples.into_iter().take(count).collect())
}

fn answer_all(
    generator: &Generator,
    mode: &'static str,
    rows: &[Triple],
    batch_rows: usize,
) -> anyhow::Result<AnswerFigures> {
    let corpus: Vec<String> = rows.iter().map(|r| r.passage.clone()).collect();
    let rankings: Vec<Vec<usize>> = (0..rows.len()).map(|i| vec![i]).collect();
    let settings = GenerationSettings { batch_rows, ..GenerationSettings::default() };
    let bar =
        crate::progress_bar(rows.len() as u64, &format!("{mode}: {{bar:30}} {{pos}}/{{len}} answers ({{elapsed}})"));
    let started = Instant::now();
    let run = evaluate_generation(generator, &corpus, rows, &rankings, settings, &mut |_, done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    Ok(AnswerFigures {
        mode,
        questions: rows.len(),
        seconds,
        answers_per_second: rows.len() as f64 / seconds,
        predictions: run.predictions.into_iter().map(|p| p.prediction).collect(),
    })
}

/// Whether `answer` holds `gold`'s words in order, and its token F1 against `gold`.
fn score(answer: &str, gold: &str) -> (bool, f64) {
    let (said, wanted) = (filter::words(answer), filter::words(gold));
    let holds = !wanted.is_empty() && said.windows(wanted.len()).any(|w| w == wanted.as_slice());
    (holds, crate::eval::metrics::token_f1(answer, gold))
}

fn quality(way: &'static str, answers: &[String], rows: &[Triple]) -> AnswerQuality {
    let scores: Vec<(bool, f64)> = answers.iter().zip(rows).map(|(a, r)| score(a, &r.answer)).collect();
    let n = rows.len().max(1) as f64;
    AnswerQuality {
        way,
        questions: rows.len(),
        holds_gold_answer: scores.iter().filter(|s| s.0).count() as f64 / n,
        f1: scores.iter().map(|s| s.1).sum::<f64>() / n,
        words: answers.iter().map(|a| a.split_whitespace().count()).sum::<usize>() as f64 / n,
    }
}

/// Each way of answering the real questions from their gold passages: the sentence the local model
/// picks (extractive), the answer it writes (the answer template), and the sentence sharing most
/// content words with the question (no model).
fn answer_quality(local: &LocalLlm, rows: &[Triple]) -> anyhow::Result<Vec<AnswerQuality>> {
    let spans: Vec<Vec<String>> = rows.iter().map(|r| extract::spans(&r.passage)).collect();
    let asked: Vec<(String, usize)> =
        rows.iter().zip(&spans).map(|(r, s)| (extract::render(s, &r.question), s.len())).collect();
    let picked: Vec<String> = local
        .choose(&asked)?
        .into_iter()
        .zip(&spans)
        .map(|(choice, s)| Ok(choice?.and_then(|i| s.get(i).cloned()).unwrap_or_default()))
        .collect::<Result<_, SynthError>>()?;
    let prompts: Vec<String> = rows
        .iter()
        .map(|r| prompt::render_answer(prompt::ANSWER, &r.passage, &r.question))
        .collect::<Result<_, _>>()?;
    let written: Vec<String> = local
        .complete(&prompts, 64)?
        .into_iter()
        .map(|reply| Ok(crate::synth::parse::answer(&reply?)))
        .collect::<Result<_, SynthError>>()?;
    let overlap: Vec<String> = rows
        .iter()
        .zip(&spans)
        .map(|(r, s)| {
            let asked: std::collections::HashSet<String> = filter::words(&r.question).into_iter().collect();
            let shared = |span: &String| filter::words(span).iter().filter(|w| asked.contains(*w)).count();
            s.iter().max_by_key(|span| shared(span)).cloned().unwrap_or_default()
        })
        .collect();
    Ok(vec![
        quality("extractive (the model picks a sentence)", &picked, rows),
        quality("written (the model writes)", &written, rows),
        quality("the sentence sharing most words with the question", &overlap, rows),
    ])
}

/// Runs the bench on the CPU.
pub fn measure(config: &SynthBenchConfig) -> anyhow::Result<SynthBench> {
    let device = Device::Cpu;
    let retriever_dir = config.models_dir.join(catalog::DEFAULT_RETRIEVER_NAME);
    let tokenizer = tokenizers::Tokenizer::from_file(retriever_dir.join("tokenizer.json"))
        .map_err(|e| anyhow::anyhow!("the retriever's tokenizer in {}: {e}", retriever_dir.display()))?;
    let passages = passages_of(&config.pdf, &tokenizer, config.first, config.count)?;
    let generator_path = config.models_dir.join(catalog::DEFAULT_GENERATOR_NAME);
    let generator = Generator::load(&generator_path, &device)
        .with_context(|| format!("loading the generator {}", generator_path.display()))?;
    let mut local = LocalLlm::new(generator, catalog::DEFAULT_GENERATOR_NAME.to_owned());
    let n = config.questions_per_passage;
    let extractive = ("extractive, side by side", AnswerStyle::Extractive, prompt::QUESTIONS);
    let written = ("written, side by side", AnswerStyle::Written, prompt::QUESTIONS);
    let mut synthesis = vec![
        synthesize_all(&local, &local, extractive, &passages, n, BATCH_PASSAGES)?,
        synthesize_all(&local, &local, written, &passages, n, BATCH_PASSAGES)?,
    ];
    if config.one_at_a_time {
        let before = ("written, one at a time", AnswerStyle::Written, prompt::QUESTIONS);
        synthesis.push(synthesize_all(&OneAtATime(&local), &local, before, &passages, n, 1)?);
    }
    // The questions decoded free (as before the list's form held them), the rest the same.
    local.constrained_questions = false;
    let free = (FREE_QUESTIONS, AnswerStyle::Extractive, prompt::QUESTIONS);
    synthesis.push(synthesize_all(&local, &local, free, &passages, n, BATCH_PASSAGES)?);
    local.constrained_questions = crate::synth::llm::CONSTRAINED_QUESTIONS;
    let few_shot = (FEW_SHOT_QUESTIONS, AnswerStyle::Extractive, prompt::QUESTIONS_FEW_SHOT);
    synthesis.push(synthesize_all(&local, &local, few_shot, &passages, n, BATCH_PASSAGES)?);
    let rows = questions_of(&config.qa, config.answer_questions)?;
    let answer_quality = answer_quality(&local, &rows)?;
    let mut answers = vec![answer_all(&local.generator, "side by side", &rows, MAX_BATCH_ROWS)?];
    if config.one_at_a_time {
        answers.push(answer_all(&local.generator, "one at a time", &rows, 1)?);
    }
    let pair = |a: f64, b: Option<f64>| b.map(|b| a / b);
    // Written answers one prompt at a time: its pace, and whether it kept what side by side kept.
    let one_at_a_time = synthesis
        .iter()
        .find(|s| s.mode == "written, one at a time")
        .map(|s| (s.kept_per_minute, s.triples == synthesis[1].triples));
    Ok(SynthBench {
        pdf: config.pdf.display().to_string(),
        passages: format!("{}–{}", config.first, config.first + config.count - 1),
        questions_per_passage: n,
        threads: candle_core::utils::get_num_threads(),
        synthesis_speedup: pair(synthesis[0].kept_per_minute, one_at_a_time.map(|s| s.0)),
        answer_speedup: pair(answers[0].answers_per_second, answers.get(1).map(|a| a.answers_per_second)),
        same_triples: one_at_a_time.map(|s| s.1),
        same_answers: answers.get(1).map(|a| a.predictions == answers[0].predictions),
        synthesis,
        answers,
        answer_quality,
    })
}

/// The figures as a table.
pub fn report(bench: &SynthBench) -> String {
    let mut out = format!(
        "synthesis from {} passages {} ({} questions each), {} threads\n\n",
        bench.pdf, bench.passages, bench.questions_per_passage, bench.threads
    );
    out += "| way | passages asked | candidates | kept | of them copying an example | seconds | kept/min | tokens | \
            tokens/s |\n|---|---|---|---|---|---|---|---|---|\n";
    for s in &bench.synthesis {
        out += &format!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.2} | {} | {:.1} |\n",
            s.mode,
            s.passages - s.skipped_passages,
            s.candidates,
            s.kept,
            s.copied_examples,
            s.seconds,
            s.kept_per_minute,
            s.tokens_generated,
            s.tokens_per_second
        );
    }
    out += "\n| answers | questions | seconds | answers/s |\n|---|---|---|---|\n";
    for a in &bench.answers {
        out += &format!("| {} | {} | {:.1} | {:.2} |\n", a.mode, a.questions, a.seconds, a.answers_per_second);
    }
    out += "\n| answers to real questions, from the gold passage | questions | hold the gold answer | F1 | words |\n\
            |---|---|---|---|---|\n";
    for q in &bench.answer_quality {
        out +=
            &format!("| {} | {} | {:.3} | {:.3} | {:.1} |\n", q.way, q.questions, q.holds_gold_answer, q.f1, q.words);
    }
    if let (Some(s), Some(a)) = (bench.synthesis_speedup, bench.answer_speedup) {
        out += &format!(
            "\nsynthesis, extractive side by side / written one at a time: {s:.2}× kept/min; answers side by \
             side / one at a time: {a:.2}× answers/s; same triples (written): {}, same answers: {}\n",
            bench.same_triples.unwrap_or(false),
            bench.same_answers.unwrap_or(false)
        );
    }
    for s in bench.synthesis.iter().filter(|s| s.mode != "written, one at a time") {
        let filtered: Vec<String> = s.filtered.reasons().iter().map(|(n, what)| format!("{n} {what}")).collect();
        out += &format!("filtered ({}): {}\n", s.mode, filtered.join(", "));
    }
    out
}
