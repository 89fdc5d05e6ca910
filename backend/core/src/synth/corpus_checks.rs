//! The filters that look at the whole corpus, in the base retriever's embedding space:
//! round-trip consistency (a question is kept only if the retriever finds its own passage among
//! the top k of every passage, as PAQ, Promptagator and InPars filter) and near-duplicates (a
//! question whose embedding is as good as one kept before, for any passage, adds nothing).
//! They run on the questions before any answer is asked for, so what they drop costs no decoding.

use std::collections::HashMap;

use candle_core::Tensor;

use super::SynthError;
use super::filter::{FilterSettings, Rejection};
use crate::model::retriever::{Retriever, TextRole};
use crate::rag::index::{ExactIndex, IndexKey, VectorIndex};

/// Passages or questions embedded in one forward pass.
const EMBED_BATCH: usize = 32;

/// The corpus index and the questions kept so far, for [`CorpusChecks::check`].
pub struct CorpusChecks<'a> {
    retriever: &'a Retriever,
    /// Every distinct passage text once (under its first id); `None` when round trips are off.
    index: Option<ExactIndex>,
    /// Each passage id's first id with the same text: a question about a passage that occurs twice
    /// is answered by either copy.
    canonical: HashMap<i64, i64>,
    /// The kept questions' unit embeddings, one after another.
    kept: Vec<f32>,
    dim: usize,
    top_k: usize,
    max_similarity: f64,
}

impl<'a> CorpusChecks<'a> {
    /// Embeds `corpus` (every passage a question may be answered from: id, text) when round trips
    /// are on, and `earlier` (questions kept before: stored triples) for near-duplicates;
    /// `progress(done, total)` while the passages are embedded.
    pub fn new(
        retriever: &'a Retriever,
        corpus: &[(i64, &str)],
        earlier: &[&str],
        settings: &FilterSettings,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, SynthError> {
        let mut first_of_text: HashMap<&str, i64> = HashMap::new();
        let mut canonical = HashMap::with_capacity(corpus.len());
        let mut distinct = Vec::new();
        for &(id, text) in corpus {
            let first = *first_of_text.entry(text).or_insert_with(|| {
                distinct.push((id, text));
                id
            });
            canonical.insert(id, first);
        }
        let index = match settings.round_trip_top_k {
            0 => None,
            _ => {
                let key = IndexKey { retriever: "synthesis".into(), revision: 0 };
                Some(ExactIndex::build(key, retriever, &distinct, EMBED_BATCH, progress)?)
            }
        };
        let mut checks = CorpusChecks {
            retriever,
            index,
            canonical,
            kept: Vec::new(),
            dim: retriever.hidden_size(),
            top_k: settings.round_trip_top_k as usize,
            max_similarity: settings.max_question_similarity,
        };
        if checks.checks_near_duplicates() {
            for rows in checks.unit_embeddings(earlier)? {
                checks.kept.extend(rows);
            }
        }
        Ok(checks)
    }

    fn checks_near_duplicates(&self) -> bool {
        self.max_similarity < 1.0
    }

    /// Questions' embeddings, each scaled to length 1 (cosine is then a dot product).
    fn unit_embeddings(&self, questions: &[&str]) -> Result<Vec<Vec<f32>>, SynthError> {
        if questions.is_empty() {
            return Ok(Vec::new());
        }
        let embedded = self.retriever.embed(questions, TextRole::Query, EMBED_BATCH)?;
        let rows = embedded.to_vec2::<f32>().map_err(crate::model::ModelError::from)?;
        Ok(rows
            .into_iter()
            .map(|mut row| {
                let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                row.iter_mut().for_each(|x| *x /= norm);
                row
            })
            .collect())
    }

    /// The highest cosine similarity of `unit` to a kept question.
    fn nearest_kept(&self, unit: &[f32]) -> f64 {
        self.kept
            .chunks_exact(self.dim)
            .map(|kept| kept.iter().zip(unit).map(|(a, b)| a * b).sum::<f32>())
            .fold(f32::NEG_INFINITY, f32::max) as f64
    }

    /// Checks questions in order, each `(its passage's id, text)`: a question that passes is
    /// kept from then on, so the next ones (in this call too) are compared with it. A passage id
    /// the corpus does not hold is not round-tripped.
    pub fn check(&mut self, questions: &[(i64, &str)]) -> Result<Vec<Result<(), Rejection>>, SynthError> {
        let texts: Vec<&str> = questions.iter().map(|(_, q)| *q).collect();
        let units = self.unit_embeddings(&texts)?;
        let mut results = Vec::with_capacity(questions.len());
        for ((source, _), unit) in questions.iter().zip(units) {
            let result = self.check_one(*source, &unit)?;
            if result.is_ok() && self.checks_near_duplicates() {
                self.kept.extend_from_slice(&unit);
            }
            results.push(result);
        }
        Ok(results)
    }

    fn check_one(&self, source: i64, unit: &[f32]) -> Result<Result<(), Rejection>, SynthError> {
        if self.checks_near_duplicates() && self.nearest_kept(unit) >= self.max_similarity {
            return Ok(Err(Rejection::NearDuplicate));
        }
        if let (Some(index), Some(own)) = (&self.index, self.canonical.get(&source)) {
            let query = Tensor::new(unit, self.retriever.model().device()).map_err(crate::model::ModelError::from)?;
            let hits = index.search(&query, self.top_k)?;
            if !hits.iter().any(|hit| self.canonical.get(&hit.id) == Some(own)) {
                return Ok(Err(Rejection::NotRetrieved));
            }
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::test_models::tiny_models;
    use candle_core::DType;

    // In the tiny models' vocabulary.
    const CORPUS: [&str; 5] = [
        "the cat sat on the mat.",
        "a dog ran in the park.",
        "the dogs sat in a park.",
        "a cat ran on a mat.",
        "a dog ran in the park.",
    ];

    fn corpus() -> Vec<(i64, &'static str)> {
        CORPUS.iter().enumerate().map(|(i, t)| (100 + i as i64, *t)).collect()
    }

    fn cosine(retriever: &Retriever, a: &str, b: &str) -> f64 {
        let checks = CorpusChecks::new(retriever, &[], &[], &FilterSettings::default(), &mut |_, _| {}).unwrap();
        let units = checks.unit_embeddings(&[a, b]).unwrap();
        units[0].iter().zip(&units[1]).map(|(x, y)| x * y).sum::<f32>() as f64
    }

    #[test]
    fn round_trip_keeps_a_question_whose_passage_the_retriever_ranks_in_the_top_k() {
        let (retriever, ..) = tiny_models(DType::F32, 5);
        let settings = FilterSettings { round_trip_top_k: 1, max_question_similarity: 1.0, ..Default::default() };
        let mut checks = CorpusChecks::new(&retriever, &corpus(), &[], &settings, &mut |_, _| {}).unwrap();
        // A passage's own text ranks it first; asked as another passage's question it does not.
        let results = checks
            .check(&[
                (100, CORPUS[0]),
                (102, CORPUS[0]),
                (103, CORPUS[3]),
                // Passages 101 and 104 are the same text: either copy is the question's passage.
                (104, CORPUS[1]),
                (101, CORPUS[1]),
                // Not in the corpus: not round-tripped.
                (999, CORPUS[2]),
            ])
            .unwrap();
        assert_eq!(results, [Ok(()), Err(Rejection::NotRetrieved), Ok(()), Ok(()), Ok(()), Ok(())]);
        // With k as large as the corpus every question finds its passage.
        let everything = FilterSettings { round_trip_top_k: 5, ..settings };
        let mut checks = CorpusChecks::new(&retriever, &corpus(), &[], &everything, &mut |_, _| {}).unwrap();
        assert_eq!(checks.check(&[(102, CORPUS[0])]).unwrap(), [Ok(())]);
    }

    #[test]
    fn near_duplicates_of_kept_and_earlier_questions_are_dropped() {
        let (retriever, ..) = tiny_models(DType::F32, 6);
        let (first, second) = ("what sat on the mat?", "what is a dog in the park?");
        let apart = cosine(&retriever, first, second);
        assert!(apart < 0.999, "two different questions must not embed alike: {apart}");
        // A threshold just above the two questions' similarity tells them apart.
        let settings =
            FilterSettings { round_trip_top_k: 0, max_question_similarity: (apart + 1.0) / 2.0, ..Default::default() };
        let mut checks = CorpusChecks::new(&retriever, &corpus(), &[], &settings, &mut |_, _| {}).unwrap();
        assert!(checks.index.is_none(), "no round trips: the corpus is not embedded");
        let results = checks.check(&[(100, first), (103, second), (101, first)]).unwrap();
        assert_eq!(results, [Ok(()), Ok(()), Err(Rejection::NearDuplicate)]);
        assert_eq!(checks.check(&[(102, second)]).unwrap(), [Err(Rejection::NearDuplicate)]);
        // Questions stored before count as kept.
        let mut seeded = CorpusChecks::new(&retriever, &[], &[second], &settings, &mut |_, _| {}).unwrap();
        assert_eq!(seeded.check(&[(100, second), (100, first)]).unwrap(), [Err(Rejection::NearDuplicate), Ok(())]);
        // A threshold below their similarity makes the second a near-duplicate of the first.
        let strict = FilterSettings { max_question_similarity: apart - 1e-3, ..settings };
        let mut checks = CorpusChecks::new(&retriever, &[], &[], &strict, &mut |_, _| {}).unwrap();
        assert_eq!(checks.check(&[(100, first), (103, second)]).unwrap(), [Ok(()), Err(Rejection::NearDuplicate)]);
        // At 1 nothing is compared.
        let off = FilterSettings { max_question_similarity: 1.0, ..settings };
        let mut checks = CorpusChecks::new(&retriever, &[], &[first], &off, &mut |_, _| {}).unwrap();
        assert_eq!(checks.check(&[(100, first), (100, first)]).unwrap(), [Ok(()), Ok(())]);
    }
}
