//! Hard negatives: for each training question, the corpus passages the retriever scores highest
//! that are neither its gold passage nor within a margin of the gold passage's score (false
//! negatives); mined by the base retriever, or again every few steps by the retriever as trained
//! so far, and saved in the run's folder with the step they were mined at, so a resumed run
//! reuses them.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::checkpoint::NEGATIVES_FILE;
use super::data::Triple;
use super::error::{Result, TrainError};
use crate::model::retriever::{Retriever, TextRole};
use crate::rag::bm25::Bm25Index;
use crate::rag::hybrid::{self, FUSION_DEPTH};
use crate::rag::index::best_first;
use attune_shared::RetrievalMethod;

/// How negatives are mined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mining {
    /// Negatives per question.
    pub per_question: usize,
    /// A passage scoring above `gold − margin · |gold|` is not a negative.
    pub margin: f64,
    /// Which ranking of the corpus they are taken from, best first: the retriever's (dense),
    /// BM25's (DPR's negatives), or both fused. The margin always applies to the retriever's score.
    pub retrieval: RetrievalMethod,
}

/// The negatives of a run, and the optimiser step whose retriever mined them (0: the base one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mined {
    pub step: usize,
    pub negatives: Vec<Vec<String>>,
}

/// The negatives saved in `run_dir` when they were mined at `step` for `examples` questions.
pub fn load(run_dir: &Path, step: usize, examples: usize) -> Option<Vec<Vec<String>>> {
    let text = std::fs::read_to_string(run_dir.join(NEGATIVES_FILE)).ok()?;
    let saved = match serde_json::from_str::<Mined>(&text) {
        Ok(mined) => mined,
        // Runs from before refreshing existed saved the base retriever's negatives alone.
        Err(_) => Mined { step: 0, negatives: serde_json::from_str(&text).ok()? },
    };
    (saved.step == step && saved.negatives.len() == examples).then_some(saved.negatives)
}

/// Saves `mined` in `run_dir`, replacing what was there (written aside and renamed into place).
pub fn save(run_dir: &Path, mined: &Mined) -> Result<()> {
    let path = run_dir.join(NEGATIVES_FILE);
    let partial = run_dir.join(format!("{NEGATIVES_FILE}.partial"));
    let json = serde_json::to_string(mined).expect("strings serialize");
    std::fs::write(&partial, json).map_err(|error| TrainError::Io { path: partial.clone(), error })?;
    std::fs::rename(&partial, &path).map_err(|error| TrainError::Io { path, error })
}

/// The negatives mined at `step` for `train`: read from `run_dir` when a run with the same
/// examples mined them already at that step, else mined by `retriever` now and saved.
pub fn load_or_mine(
    run_dir: &Path,
    step: usize,
    retriever: &Retriever,
    train: &[Triple],
    corpus: &[String],
    mining: Mining,
) -> Result<Vec<Vec<String>>> {
    if let Some(saved) = load(run_dir, step, train.len()) {
        return Ok(saved);
    }
    let negatives = mine(retriever, train, corpus, mining)?;
    let mined = Mined { step, negatives };
    save(run_dir, &mined)?;
    Ok(mined.negatives)
}

/// The best-scoring `per_question` passages of `corpus` for each question, leaving out its gold
/// passage and every passage that scores within `margin` of it.
pub fn mine(retriever: &Retriever, train: &[Triple], corpus: &[String], mining: Mining) -> Result<Vec<Vec<String>>> {
    let texts: Vec<&str> = corpus.iter().map(String::as_str).collect();
    let passages = retriever.embed(&texts, TextRole::Passage, 32)?;
    let questions: Vec<&str> = train.iter().map(|t| t.question.as_str()).collect();
    let queries = retriever.embed(&questions, TextRole::Query, 32)?;
    let scores = queries.matmul(&passages.t()?)?.to_vec2::<f32>()?;
    // Each question's score of its gold passage: from the corpus row with its text, or embedded here.
    let row_of: HashMap<&str, usize> = texts.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let missing: Vec<usize> = (0..train.len()).filter(|&i| !row_of.contains_key(train[i].passage.as_str())).collect();
    let mut gold_scores: Vec<f32> = train
        .iter()
        .zip(&scores)
        .map(|(t, row)| row_of.get(t.passage.as_str()).map_or(f32::NAN, |&j| row[j]))
        .collect();
    if !missing.is_empty() {
        let texts: Vec<&str> = missing.iter().map(|&i| train[i].passage.as_str()).collect();
        let golds = retriever.embed(&texts, TextRole::Passage, 32)?;
        let picked = queries.index_select(&candle_core::Tensor::new(as_u32(&missing), queries.device())?, 0)?;
        let own = (picked * golds)?.sum(1)?.to_vec1::<f32>()?;
        for (&i, score) in missing.iter().zip(own) {
            gold_scores[i] = score;
        }
    }
    let lexical = match mining.retrieval {
        RetrievalMethod::Dense => None,
        _ => Some(Bm25Index::build(corpus).map_err(|e| TrainError::Data(e.to_string()))?),
    };
    let mut mined = Vec::with_capacity(train.len());
    for ((triple, row), gold) in train.iter().zip(&scores).zip(gold_scores) {
        let is_gold = |i: usize| corpus[i] == triple.passage;
        let picked: Vec<usize> = match &lexical {
            None => pick(row, gold, mining, is_gold).collect(),
            Some(index) => {
                let words =
                    index.search(&triple.question, FUSION_DEPTH).map_err(|e| TrainError::Data(e.to_string()))?;
                let order = match mining.retrieval {
                    RetrievalMethod::Hybrid => {
                        let dense = best_first((0..row.len()).collect(), row, FUSION_DEPTH);
                        let dense: Vec<(usize, f32)> = dense.into_iter().map(|i| (i, row[i])).collect();
                        hybrid::fuse(&dense, &words, FUSION_DEPTH).into_iter().map(|(i, _)| i).collect()
                    }
                    _ => words.into_iter().map(|(position, _)| position).collect(),
                };
                pick_in_order(order, row, gold, mining, is_gold)
            }
        };
        mined.push(picked.into_iter().map(|i| corpus[i].clone()).collect());
    }
    Ok(mined)
}

fn as_u32(indices: &[usize]) -> Vec<u32> {
    indices.iter().map(|&i| i as u32).collect()
}

/// The `per_question` best of `row`'s columns that are not `is_gold` and score at most
/// `gold − margin · |gold|`, best first.
fn pick(row: &[f32], gold: f32, mining: Mining, is_gold: impl Fn(usize) -> bool) -> impl Iterator<Item = usize> {
    let ceiling = gold as f64 - mining.margin * (gold as f64).abs();
    let below: Vec<usize> = (0..row.len()).filter(|&i| !is_gold(i) && row[i] as f64 <= ceiling).collect();
    best_first(below, row, mining.per_question).into_iter()
}

/// The first `per_question` columns of `order` (another ranking, best first) that are not
/// `is_gold` and whose retriever score in `row` is at most `gold − margin · |gold|`.
fn pick_in_order(
    order: Vec<usize>,
    row: &[f32],
    gold: f32,
    mining: Mining,
    is_gold: impl Fn(usize) -> bool,
) -> Vec<usize> {
    let ceiling = gold as f64 - mining.margin * (gold as f64).abs();
    order.into_iter().filter(|&i| !is_gold(i) && row[i] as f64 <= ceiling).take(mining.per_question).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negatives_are_the_best_below_the_margin_and_never_the_gold() {
        // Gold scores 0.8: with margin 0.05 the ceiling is 0.76, so 0.79 (a near-copy) is skipped.
        let row = [0.8f32, 0.79, 0.5, 0.76, 0.9, 0.1];
        let gold = |i: usize| i == 0;
        let mining = |per_question, margin| Mining { per_question, margin, retrieval: RetrievalMethod::Dense };
        let take = |per_question, margin| pick(&row, 0.8, mining(per_question, margin), gold).collect::<Vec<_>>();
        assert_eq!(take(3, 0.05), vec![3, 2, 5], "0.9 and 0.79 are above the ceiling, the gold left out");
        assert_eq!(take(2, 0.0), vec![1, 3], "no margin: the near-copy at 0.79 is a negative");
        assert_eq!(take(10, 0.0), vec![1, 3, 2, 5]);
        assert_eq!(take(1, 0.5), vec![5], "ceiling 0.4");
        // A negative gold score: the margin still lowers the ceiling.
        assert_eq!(pick(&[-0.2, -0.21, -0.3], -0.2, mining(2, 0.1), |i| i == 0).collect::<Vec<_>>(), vec![2]);
        // Another ranking's order (BM25's), with the same gold and margin rules on the retriever's scores.
        assert_eq!(pick_in_order(vec![4, 5, 1, 0, 2, 3], &row, 0.8, mining(2, 0.05), gold), vec![5, 2]);
        assert_eq!(pick_in_order(vec![4, 1, 0], &row, 0.8, mining(5, 0.0), gold), vec![1], "0.9 is above the gold");
    }

    /// BM25 mining takes the passages that share the question's words, where the tiny random
    /// retriever's own ranking knows nothing.
    #[test]
    fn bm25_mining_takes_the_passages_with_the_questions_words() {
        let (retriever, _, _, _) = crate::train::test_models::tiny_models(candle_core::DType::F32, 3);
        let corpus: Vec<String> =
            ["the cat sat on the mat .", "a zebra ran far .", "zebra stripes are black .", "the end ."]
                .map(String::from)
                .to_vec();
        let train =
            vec![Triple { question: "what is a zebra ?".into(), passage: corpus[1].clone(), answer: "x".into() }];
        for retrieval in [RetrievalMethod::Bm25, RetrievalMethod::Hybrid] {
            // A ceiling far above the gold's score: no passage is held back by the margin here.
            let mining = Mining { per_question: 1, margin: -1e9, retrieval };
            let mined = mine(&retriever, &train, &corpus, mining).unwrap();
            if retrieval == RetrievalMethod::Bm25 {
                assert_eq!(mined, vec![vec![corpus[2].clone()]], "the other zebra passage, never the gold one");
            } else {
                assert_eq!(mined[0].len(), 1);
                assert_ne!(mined[0][0], corpus[1], "never the gold one");
            }
        }
    }

    #[test]
    fn saved_negatives_count_only_for_their_step_and_examples() {
        let dir = tempfile::tempdir().unwrap();
        let negatives = vec![vec!["a".to_owned()], vec![]];
        save(dir.path(), &Mined { step: 50, negatives: negatives.clone() }).unwrap();
        assert_eq!(load(dir.path(), 50, 2), Some(negatives.clone()));
        assert_eq!(load(dir.path(), 0, 2), None, "mined at another step");
        assert_eq!(load(dir.path(), 50, 3), None, "for other examples");
        // The format before refreshing: the base retriever's, step 0.
        std::fs::write(dir.path().join(NEGATIVES_FILE), serde_json::to_string(&negatives).unwrap()).unwrap();
        assert_eq!(load(dir.path(), 0, 2), Some(negatives));
    }
}
