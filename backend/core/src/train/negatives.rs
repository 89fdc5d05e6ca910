//! Hard negatives: for each training question, the corpus passages the base retriever scores
//! highest that are not its gold passage; saved in the run's folder so a resumed run reuses them.

use std::path::Path;

use super::checkpoint::NEGATIVES_FILE;
use super::data::Triple;
use super::error::{Result, TrainError};
use crate::model::retriever::{Retriever, TextRole};

/// `per_question` hard negatives for each of `train`, read from `run_dir` when a run with the same
/// examples mined them already.
pub fn load_or_mine(
    run_dir: &Path,
    retriever: &Retriever,
    train: &[Triple],
    corpus: &[String],
    per_question: usize,
) -> Result<Vec<Vec<String>>> {
    let path = run_dir.join(NEGATIVES_FILE);
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(saved) = serde_json::from_str::<Vec<Vec<String>>>(&text)
        && saved.len() == train.len()
    {
        return Ok(saved);
    }
    let negatives = mine(retriever, train, corpus, per_question)?;
    let json = serde_json::to_string(&negatives).expect("strings serialize");
    std::fs::write(&path, json).map_err(|error| TrainError::Io { path, error })?;
    Ok(negatives)
}

/// The best-scoring `per_question` passages of `corpus` for each question, its gold one left out.
pub fn mine(
    retriever: &Retriever,
    train: &[Triple],
    corpus: &[String],
    per_question: usize,
) -> Result<Vec<Vec<String>>> {
    let texts: Vec<&str> = corpus.iter().map(String::as_str).collect();
    let passages = retriever.embed(&texts, TextRole::Passage, 32)?;
    let questions: Vec<&str> = train.iter().map(|t| t.question.as_str()).collect();
    let queries = retriever.embed(&questions, TextRole::Query, 32)?;
    let scores = queries.matmul(&passages.t()?)?.to_vec2::<f32>()?;
    let mut negatives = Vec::with_capacity(train.len());
    for (triple, row) in train.iter().zip(&scores) {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        negatives.push(
            order
                .into_iter()
                .filter(|&i| corpus[i] != triple.passage)
                .take(per_question)
                .map(|i| corpus[i].clone())
                .collect(),
        );
    }
    Ok(negatives)
}
