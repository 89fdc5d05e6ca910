//! Running an evaluation: exact search of every question against the whole corpus (one matrix
//! product per chunk of questions) for the retrieval metrics, then greedy answers from the
//! generator with the top retrieved passages in the prompt, kept aligned with their questions.

use std::collections::{HashMap, HashSet};

use candle_core::Tensor;
use serde::Serialize;

use super::error::{EvalError, Result};
use super::metrics::{AnswerMetrics, RetrievalMetrics};
use crate::model::generator::{GenerationConfig, Generator, MAX_BATCH_ROWS};
use crate::model::retriever::{Retriever, TextRole};
use crate::rag::hybrid::FUSION_DEPTH;
use crate::rag::index::best_first;
use crate::rag::prompt::{self, PromptLimits};
use crate::train::data::Triple;

/// Rankings are kept this deep (MRR@10 and nDCG@10 need 10).
const RANKING_DEPTH: usize = 10;

/// Progress of a long evaluation: (done, total) of the current phase, named.
pub type Progress<'a> = &'a mut dyn FnMut(&str, usize, usize);

/// Retrieval metrics and each question's ranking (corpus indices, best first).
#[derive(Debug, Clone)]
pub struct RetrievalRun {
    pub metrics: RetrievalMetrics,
    pub rankings: Vec<Vec<usize>>,
    /// Each question's [`FUSION_DEPTH`] best passages with their scores (cosine similarity, BM25
    /// score or fused score), for fusing with another ranking.
    pub candidates: Vec<Vec<(usize, f32)>>,
}

impl RetrievalRun {
    /// Metrics of `candidates` (best first, at least [`RANKING_DEPTH`] deep where the corpus allows).
    fn of(candidates: Vec<Vec<(usize, f32)>>, gold: &[usize], ks: &[usize]) -> Self {
        let depth = ks.iter().copied().max().unwrap_or(1).max(RANKING_DEPTH);
        let rankings: Vec<Vec<usize>> =
            candidates.iter().map(|c| c.iter().map(|&(passage, _)| passage).take(depth).collect()).collect();
        let relevant: Vec<HashSet<usize>> = gold.iter().map(|&g| HashSet::from([g])).collect();
        RetrievalRun { metrics: RetrievalMetrics::compute(&rankings, &relevant, ks), rankings, candidates }
    }
}

/// Index of each question's gold passage in `corpus` (which must hold them all).
pub fn gold_indices(corpus: &[String], rows: &[Triple]) -> Result<Vec<usize>> {
    let index: HashMap<&str, usize> = corpus.iter().enumerate().map(|(i, p)| (p.as_str(), i)).collect();
    rows.iter()
        .map(|t| {
            index
                .get(t.passage.as_str())
                .copied()
                .ok_or_else(|| EvalError::Data(format!("the gold passage of {:?} is not in the corpus", t.question)))
        })
        .collect()
}

/// Embeds the corpus and the questions and ranks the whole corpus for each question.
pub fn evaluate_retrieval(
    retriever: &Retriever,
    corpus: &[String],
    rows: &[Triple],
    ks: &[usize],
    progress: Progress<'_>,
) -> Result<RetrievalRun> {
    let gold = gold_indices(corpus, rows)?;
    let passages = embed_in_batches(retriever, corpus, TextRole::Passage, "embedding the corpus", progress)?;
    let questions: Vec<String> = rows.iter().map(|t| t.question.clone()).collect();
    let queries = embed_in_batches(retriever, &questions, TextRole::Query, "embedding the questions", progress)?;
    let depth = ks.iter().copied().max().unwrap_or(1).max(FUSION_DEPTH);
    Ok(RetrievalRun::of(rank(&queries, &passages, depth)?, &gold, ks))
}

/// BM25 over the whole corpus for each question (tantivy), ranked as [`evaluate_retrieval`] ranks.
pub fn evaluate_bm25(corpus: &[String], rows: &[Triple], ks: &[usize], progress: Progress<'_>) -> Result<RetrievalRun> {
    let gold = gold_indices(corpus, rows)?;
    progress("indexing the corpus for BM25", 0, rows.len());
    let index = crate::rag::bm25::Bm25Index::build(corpus).map_err(|e| EvalError::Data(e.to_string()))?;
    let depth = ks.iter().copied().max().unwrap_or(1).max(FUSION_DEPTH);
    let mut candidates = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let hits = index.search(&row.question, depth).map_err(|e| EvalError::Data(e.to_string()))?;
        candidates.push(hits);
        if i % 64 == 0 {
            progress("searching with BM25", i, rows.len());
        }
    }
    Ok(RetrievalRun::of(candidates, &gold, ks))
}

/// Hybrid retrieval: the two runs' candidates fused ([`crate::rag::hybrid::fuse`]).
pub fn fuse(
    dense: &RetrievalRun,
    lexical: &RetrievalRun,
    corpus: &[String],
    rows: &[Triple],
    ks: &[usize],
) -> Result<RetrievalRun> {
    let gold = gold_indices(corpus, rows)?;
    let candidates = dense
        .candidates
        .iter()
        .zip(&lexical.candidates)
        .map(|(dense, lexical)| crate::rag::hybrid::fuse(dense, lexical, FUSION_DEPTH))
        .collect();
    Ok(RetrievalRun::of(candidates, &gold, ks))
}

/// Embeds `texts` in batches of similar length (sorted by length, so little padding is computed),
/// returning rows in the original order.
fn embed_in_batches(
    retriever: &Retriever,
    texts: &[String],
    role: TextRole,
    phase: &str,
    progress: Progress<'_>,
) -> Result<Tensor> {
    if texts.is_empty() {
        return Err(EvalError::Data(format!("nothing to embed ({phase})")));
    }
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(texts[i].len()));
    let mut parts = Vec::new();
    let mut done = 0;
    progress(phase, 0, texts.len());
    for chunk in order.chunks(32) {
        let refs: Vec<&str> = chunk.iter().map(|&i| texts[i].as_str()).collect();
        parts.push(retriever.embed(&refs, role, 32)?);
        done += chunk.len();
        progress(phase, done, texts.len());
    }
    let sorted = Tensor::cat(&parts, 0)?;
    // Row `order[j]` of the result is row `j` of `sorted`: invert the permutation.
    let mut inverse = vec![0u32; order.len()];
    for (j, &i) in order.iter().enumerate() {
        inverse[i] = j as u32;
    }
    Ok(sorted.index_select(&Tensor::new(inverse, sorted.device())?, 0)?)
}

/// The `depth` best passages for each query (by dot product of normalised embeddings).
pub fn rank(queries: &Tensor, passages: &Tensor, depth: usize) -> Result<Vec<Vec<(usize, f32)>>> {
    let mut rankings = Vec::with_capacity(queries.dim(0)?);
    let count = queries.dim(0)?;
    let mut start = 0;
    while start < count {
        let len = 256.min(count - start);
        let scores = queries.narrow(0, start, len)?.matmul(&passages.t()?)?.to_vec2::<f32>()?;
        for row in scores {
            let order = best_first((0..row.len()).collect(), &row, depth);
            rankings.push(order.into_iter().map(|passage| (passage, row[passage])).collect());
        }
        start += len;
    }
    Ok(rankings)
}

/// One question's generated answer.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub question: String,
    pub answer: String,
    pub prediction: String,
    /// Corpus indices of the passages in the prompt.
    pub passages: Vec<usize>,
}

/// Answer metrics and the predictions behind them.
#[derive(Debug, Clone)]
pub struct GenerationRun {
    pub metrics: AnswerMetrics,
    pub predictions: Vec<Prediction>,
}

/// Batches of questions one `generate_batch` call is given (progress is reported between calls).
const CALLS_OF_BATCHES: usize = 4;

/// How answers are generated for evaluation.
#[derive(Debug, Clone, Copy)]
pub struct GenerationSettings {
    /// Retrieved passages put into each prompt.
    pub passages_per_prompt: usize,
    pub limits: PromptLimits,
    pub max_new_tokens: usize,
    /// Questions answered side by side (1: one at a time).
    pub batch_rows: usize,
}

impl Default for GenerationSettings {
    fn default() -> Self {
        GenerationSettings {
            passages_per_prompt: 1,
            limits: PromptLimits::default(),
            max_new_tokens: 32,
            batch_rows: MAX_BATCH_ROWS,
        }
    }
}

/// Greedy answers to `rows` with each question's top passages from `rankings`; predictions are
/// paired with the answer of the same row, never reordered.
pub fn evaluate_generation(
    generator: &Generator,
    corpus: &[String],
    rows: &[Triple],
    rankings: &[Vec<usize>],
    settings: GenerationSettings,
    progress: Progress<'_>,
) -> Result<GenerationRun> {
    if rankings.len() != rows.len() {
        return Err(EvalError::Data(format!("{} rankings for {} questions", rankings.len(), rows.len())));
    }
    let config =
        GenerationConfig { max_new_tokens: settings.max_new_tokens, stop: vec!["\n".into()], ..Default::default() };
    progress("generating answers", 0, rows.len());
    let mut prompts = Vec::with_capacity(rows.len());
    let mut chosen_passages = Vec::with_capacity(rows.len());
    for (row, ranking) in rows.iter().zip(rankings) {
        let chosen: Vec<usize> = ranking.iter().take(settings.passages_per_prompt.max(1)).copied().collect();
        let passages: Vec<&str> = chosen.iter().map(|&c| corpus[c].as_str()).collect();
        let text = prompt::prompt_text(generator, &row.question, &passages, settings.limits)?;
        prompts.push(generator.encode(&text)?);
        chosen_passages.push(chosen);
    }
    // Several questions decoded side by side (on a CPU a step of many rows costs little more than
    // one), longest prompts first so that those prefilled together pad little; each call holds
    // several batches' worth, so a finished row's place goes to the next question at once.
    let side_by_side = settings.batch_rows.clamp(1, MAX_BATCH_ROWS);
    let mut order: Vec<usize> = (0..rows.len()).collect();
    if side_by_side > 1 {
        order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].len()));
    }
    let per_call = if side_by_side > 1 { side_by_side * CALLS_OF_BATCHES } else { 1 };
    let mut texts: Vec<Option<String>> = vec![None; rows.len()];
    let mut done = 0;
    for call in order.chunks(per_call) {
        let asked: Vec<Vec<u32>> = call.iter().map(|&i| prompts[i].clone()).collect();
        // One prompt a call (one at a time) is generated alone.
        let generations = generator.generate_batch(&asked, &config)?;
        for (&i, generation) in call.iter().zip(generations) {
            texts[i] = Some(generation.text.trim().to_owned());
        }
        done += call.len();
        progress("generating answers", done, rows.len());
    }
    let predictions: Vec<Prediction> = rows
        .iter()
        .zip(chosen_passages)
        .zip(texts)
        .map(|((row, chosen), text)| Prediction {
            question: row.question.clone(),
            answer: row.answer.clone(),
            prediction: text.unwrap_or_default(),
            passages: chosen,
        })
        .collect();
    let pairs: Vec<(String, String)> = predictions.iter().map(|p| (p.prediction.clone(), p.answer.clone())).collect();
    Ok(GenerationRun { metrics: AnswerMetrics::compute(&pairs), predictions })
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// Side by side, longest prompts first and several batches per call, each answer still goes
    /// to its own question, and each is the one a question answered alone gets.
    #[test]
    fn answers_side_by_side_are_those_one_at_a_time_in_the_questions_order() {
        let words = ["the cat sat on the mat", "a dog ran in the park", "the cats sat", "what is a mat"];
        let corpus: Vec<String> = (0..40).map(|i| words[i % 4].repeat(1 + i % 7)).collect();
        let rows: Vec<Triple> = (0..40)
            .map(|i| Triple {
                question: format!("what is {} ?", words[(i * 3) % 4]),
                passage: corpus[i].clone(),
                answer: "the mat".into(),
            })
            .collect();
        let rankings: Vec<Vec<usize>> = (0..40).map(|i| vec![i, (i + 1) % 40]).collect();
        // Several random models: one whose answers all look alike (all ended at once) proves
        // nothing about the order, so at least one must answer different questions differently.
        let mut told_apart = false;
        for seed in 4..8 {
            let (_, generator, _, _) = crate::train::test_models::tiny_models(candle_core::DType::F32, seed);
            let answer = |batch_rows| {
                let settings = GenerationSettings { batch_rows, max_new_tokens: 6, ..GenerationSettings::default() };
                evaluate_generation(&generator, &corpus, &rows, &rankings, settings, &mut |_, _, _| {}).unwrap()
            };
            let (together, alone) = (answer(MAX_BATCH_ROWS), answer(1));
            assert_eq!(together.predictions.len(), rows.len());
            for (t, a) in together.predictions.iter().zip(&alone.predictions) {
                assert_eq!((&t.question, &t.prediction, &t.passages), (&a.question, &a.prediction, &a.passages));
            }
            let distinct: HashSet<&str> = alone.predictions.iter().map(|p| p.prediction.as_str()).collect();
            told_apart |= distinct.len() > 1;
        }
        assert!(told_apart, "different prompts, different answers");
    }

    #[test]
    fn ranking_is_exact_and_best_first() {
        let q = Tensor::new(&[[1.0f32, 0.0], [0.0, 1.0]], &Device::Cpu).unwrap();
        let p = Tensor::new(&[[0.1f32, 0.9], [0.9, 0.1], [0.5, 0.5], [1.0, 0.0]], &Device::Cpu).unwrap();
        let ranked = rank(&q, &p, 3).unwrap();
        let ids: Vec<Vec<usize>> = ranked.iter().map(|r| r.iter().map(|c| c.0).collect()).collect();
        assert_eq!(ids, vec![vec![3, 1, 2], vec![0, 2, 1]]);
        assert_eq!(ranked[0].iter().map(|c| c.1).collect::<Vec<_>>(), [1.0, 0.9, 0.5], "each with its score");
        assert_eq!(rank(&q, &p, 10).unwrap()[0].len(), 4, "never deeper than the corpus");
    }

    #[test]
    fn retrieval_on_a_tiny_model_finds_exact_copies() {
        let (retriever, _, _, _) = crate::train::test_models::tiny_models(candle_core::DType::F32, 9);
        let corpus: Vec<String> =
            ["the cat sat on the mat .", "a dog ran in the park .", "what is the park ?"].map(String::from).to_vec();
        // Questions identical to a passage: with the same prefix-free encoding, their own passage ranks first.
        let rows: Vec<Triple> =
            corpus.iter().map(|p| Triple { question: p.clone(), passage: p.clone(), answer: "x".into() }).collect();
        let run = evaluate_retrieval(&retriever, &corpus, &rows, &[1, 3], &mut |_, _, _| {}).unwrap();
        assert_eq!(run.metrics.hit[&1], 1.0);
        assert_eq!(run.metrics.mrr_at_10, 1.0);
        let missing = vec![Triple { question: "q".into(), passage: "not there".into(), answer: "a".into() }];
        assert!(evaluate_retrieval(&retriever, &corpus, &missing, &[1], &mut |_, _, _| {}).is_err());
    }
}
