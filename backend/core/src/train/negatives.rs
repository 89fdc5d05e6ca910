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

/// How negatives are mined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mining {
    /// Negatives per question.
    pub per_question: usize,
    /// A passage scoring above `gold − margin · |gold|` is not a negative.
    pub margin: f64,
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
    Ok(train
        .iter()
        .zip(&scores)
        .zip(gold_scores)
        .map(|((triple, row), gold)| {
            pick(row, gold, mining, |i| corpus[i] == triple.passage).map(|i| corpus[i].clone())
        })
        .map(Iterator::collect)
        .collect())
}

fn as_u32(indices: &[usize]) -> Vec<u32> {
    indices.iter().map(|&i| i as u32).collect()
}

/// The `per_question` best of `row`'s columns that are not `is_gold` and score at most
/// `gold − margin · |gold|`, best first.
fn pick(row: &[f32], gold: f32, mining: Mining, is_gold: impl Fn(usize) -> bool) -> impl Iterator<Item = usize> {
    let ceiling = gold as f64 - mining.margin * (gold as f64).abs();
    let mut order: Vec<usize> = (0..row.len()).filter(|&i| !is_gold(i) && row[i] as f64 <= ceiling).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    order.truncate(mining.per_question);
    order.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negatives_are_the_best_below_the_margin_and_never_the_gold() {
        // Gold scores 0.8: with margin 0.05 the ceiling is 0.76, so 0.79 (a near-copy) is skipped.
        let row = [0.8f32, 0.79, 0.5, 0.76, 0.9, 0.1];
        let gold = |i: usize| i == 0;
        let take = |per_question, margin| pick(&row, 0.8, Mining { per_question, margin }, gold).collect::<Vec<_>>();
        assert_eq!(take(3, 0.05), vec![3, 2, 5], "0.9 and 0.79 are above the ceiling, the gold left out");
        assert_eq!(take(2, 0.0), vec![1, 3], "no margin: the near-copy at 0.79 is a negative");
        assert_eq!(take(10, 0.0), vec![1, 3, 2, 5]);
        assert_eq!(take(1, 0.5), vec![5], "ceiling 0.4");
        // A negative gold score: the margin still lowers the ceiling.
        assert_eq!(
            pick(&[-0.2, -0.21, -0.3], -0.2, Mining { per_question: 2, margin: 0.1 }, |i| i == 0).collect::<Vec<_>>(),
            vec![2]
        );
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
