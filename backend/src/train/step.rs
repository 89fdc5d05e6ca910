//! The loss of one batch in each training mode: the retriever's in-batch contrastive loss, the
//! generator's NLL marginalized over the retriever's top-k candidates from the batch (RAG-Sequence
//! or RAG-Token), or the generator's plain NLL with the gold passage.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::data::Triple;
use super::error::{Result, TrainError};
use super::loss::{self, Contrastive};
use crate::model::generator::Generator;
use crate::model::layers::Mode;
use crate::model::retriever::{Retriever, TextRole};
use crate::rag::prompt::{self, PromptLimits};

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TrainMode {
    /// Retriever and generator through one loss: contrastive + λ · marginalized NLL.
    E2e,
    /// The retriever alone, contrastive loss only.
    Retriever,
    /// The generator alone, plain NLL of the answer given the gold passage.
    Generator,
}

impl TrainMode {
    pub fn trains_retriever(self) -> bool {
        matches!(self, TrainMode::E2e | TrainMode::Retriever)
    }

    pub fn trains_generator(self) -> bool {
        matches!(self, TrainMode::E2e | TrainMode::Generator)
    }
}

/// How the generator's likelihood is marginalized over candidate passages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Marginalization {
    /// One passage per whole answer: `p(a|q) = Σ_z p(z|q) Π_t p(a_t|q,z,a_<t)`.
    Sequence,
    /// A passage per answer token: `p(a|q) = Π_t Σ_z p(z|q) p(a_t|q,z,a_<t)`.
    Token,
}

/// Settings of the batch loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    pub mode: TrainMode,
    pub contrastive: Contrastive,
    /// Candidate passages per question in e2e mode (the gold one always among them).
    pub top_k: usize,
    /// λ in `L = L_retriever + λ · L_generator`.
    pub generator_weight: f64,
    pub marginalization: Marginalization,
    pub max_passage_tokens: usize,
    pub max_answer_tokens: usize,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            mode: TrainMode::E2e,
            contrastive: Contrastive::default(),
            top_k: 4,
            generator_weight: 1.0,
            marginalization: Marginalization::Sequence,
            max_passage_tokens: 128,
            max_answer_tokens: 32,
        }
    }
}

impl LossConfig {
    fn limits(&self) -> PromptLimits {
        PromptLimits { max_passage_tokens: self.max_passage_tokens, max_answer_tokens: self.max_answer_tokens }
    }
}

/// The models a batch loss runs through (the ones its mode needs).
#[derive(Clone, Copy)]
pub struct Models<'a> {
    pub retriever: Option<&'a Retriever>,
    pub generator: Option<&'a Generator>,
}

/// A batch's loss (a scalar tensor to differentiate) and its parts as numbers.
pub struct BatchLoss {
    pub total: Tensor,
    pub retriever: Option<f64>,
    pub generator: Option<f64>,
    /// Tokens the models processed (for throughput).
    pub tokens: usize,
}

/// The loss of `batch` (with optional extra negative passages for the contrastive term).
pub fn batch_loss(
    models: Models<'_>,
    batch: &[Triple],
    hard_negatives: &[String],
    config: &LossConfig,
    mode: Mode<'_>,
) -> Result<BatchLoss> {
    if batch.is_empty() {
        return Err(TrainError::Config("empty batch".into()));
    }
    match config.mode {
        TrainMode::Generator => {
            let generator = models.generator.ok_or_else(|| TrainError::Config("this mode needs a generator".into()))?;
            let candidates: Vec<Vec<usize>> = (0..batch.len()).map(|i| vec![i]).collect();
            let passages: Vec<&str> = batch.iter().map(|t| t.passage.as_str()).collect();
            let (log_probs, mask, tokens) =
                answer_log_probs(generator, batch, &passages, &candidates, config.limits(), mode)?;
            // One candidate, prior 1: the plain NLL of the answer.
            let sequence = (log_probs * &mask)?.sum(1)?;
            let generator_loss = sequence.neg()?.mean_all()?;
            let value = scalar(&generator_loss)?;
            Ok(BatchLoss { total: generator_loss, retriever: None, generator: Some(value), tokens })
        }
        TrainMode::Retriever | TrainMode::E2e => {
            let retriever = models.retriever.ok_or_else(|| TrainError::Config("this mode needs a retriever".into()))?;
            let encoded = encode_batch(retriever, batch, hard_negatives, mode)?;
            let retriever_loss = loss::contrastive_loss(
                &encoded.queries,
                &encoded.positives_and_negatives()?,
                &encoded.keys,
                config.contrastive,
            )?;
            let retriever_value = scalar(&retriever_loss)?;
            if config.mode == TrainMode::Retriever {
                return Ok(BatchLoss {
                    total: retriever_loss,
                    retriever: Some(retriever_value),
                    generator: None,
                    tokens: encoded.tokens,
                });
            }
            let generator = models.generator.ok_or_else(|| TrainError::Config("e2e mode needs a generator".into()))?;
            let generator_loss = marginalized_loss(generator, batch, &encoded, config, mode)?;
            let generator_value = scalar(&generator_loss.loss)?;
            let total = (retriever_loss + (generator_loss.loss * config.generator_weight)?)?;
            Ok(BatchLoss {
                total,
                retriever: Some(retriever_value),
                generator: Some(generator_value),
                tokens: encoded.tokens + generator_loss.tokens,
            })
        }
    }
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// The batch through the retriever: queries, each distinct passage once, extra negatives.
struct EncodedBatch {
    /// `(b, d)`.
    queries: Tensor,
    /// `(u, d)`: the batch's distinct passages.
    passages: Tensor,
    /// `(h, d)`: extra negatives, when there are any.
    negatives: Option<Tensor>,
    /// Index into `passages` of each query's gold passage.
    gold: Vec<usize>,
    /// Text identity of each column of [`EncodedBatch::positives_and_negatives`].
    keys: Vec<u64>,
    /// The distinct passages' texts.
    distinct: Vec<String>,
    tokens: usize,
}

impl EncodedBatch {
    /// `(b + h, d)`: row i is query i's positive, then the extra negatives.
    fn positives_and_negatives(&self) -> Result<Tensor> {
        let index = Tensor::new(self.gold.iter().map(|&g| g as u32).collect::<Vec<_>>(), self.passages.device())?;
        let positives = self.passages.index_select(&index, 0)?;
        Ok(match &self.negatives {
            Some(negatives) => Tensor::cat(&[&positives, negatives], 0)?,
            None => positives,
        })
    }
}

fn encode_batch(
    retriever: &Retriever,
    batch: &[Triple],
    hard_negatives: &[String],
    mode: Mode<'_>,
) -> Result<EncodedBatch> {
    let mut index_of: HashMap<&str, usize> = HashMap::new();
    let mut distinct: Vec<String> = Vec::new();
    let mut gold = Vec::with_capacity(batch.len());
    for triple in batch {
        let next = distinct.len();
        let index = *index_of.entry(triple.passage.as_str()).or_insert(next);
        if index == next {
            distinct.push(triple.passage.clone());
        }
        gold.push(index);
    }
    let questions: Vec<&str> = batch.iter().map(|t| t.question.as_str()).collect();
    let query_input = retriever.tokenize(&questions, TextRole::Query)?;
    let passage_texts: Vec<&str> = distinct.iter().map(String::as_str).collect();
    let passage_input = retriever.tokenize(&passage_texts, TextRole::Passage)?;
    let mut tokens = query_input.input_ids.elem_count() + passage_input.input_ids.elem_count();
    let queries = retriever.forward(&query_input, mode)?;
    let passages = retriever.forward(&passage_input, mode)?;
    let mut keys: Vec<u64> = gold.iter().map(|&g| g as u64).collect();
    let negatives = if hard_negatives.is_empty() {
        None
    } else {
        // A "negative" that is some question's gold passage keeps that passage's key, so it is
        // masked for that question rather than pushed away.
        for (h, text) in hard_negatives.iter().enumerate() {
            keys.push(index_of.get(text.as_str()).map_or((distinct.len() + h) as u64, |&i| i as u64));
        }
        let texts: Vec<&str> = hard_negatives.iter().map(String::as_str).collect();
        let input = retriever.tokenize(&texts, TextRole::Passage)?;
        tokens += input.input_ids.elem_count();
        Some(retriever.forward(&input, mode)?)
    };
    Ok(EncodedBatch { queries, passages, negatives, gold, keys, distinct, tokens })
}

struct GeneratorLoss {
    loss: Tensor,
    tokens: usize,
}

/// RAG marginalized NLL: each question's candidates are the top-k of the batch's passages by
/// retriever score, the gold passage always among them; `p(z|q)` is the softmax of the (scaled)
/// scores over the candidates, so the generator's likelihoods train the retriever too.
fn marginalized_loss(
    generator: &Generator,
    batch: &[Triple],
    encoded: &EncodedBatch,
    config: &LossConfig,
    mode: Mode<'_>,
) -> Result<GeneratorLoss> {
    if config.top_k == 0 {
        return Err(TrainError::Config("top-k must be at least 1".into()));
    }
    let scores = (encoded.queries.matmul(&encoded.passages.t()?)? * config.contrastive.scale)?;
    let values = scores.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let k = config.top_k.min(encoded.distinct.len());
    let candidates: Vec<Vec<usize>> =
        values.iter().zip(&encoded.gold).map(|(row, &gold)| top_k_with_gold(row, k, gold)).collect();
    let index: Vec<u32> = candidates.iter().flatten().map(|&c| c as u32).collect();
    let index = Tensor::from_vec(index, (batch.len(), k), scores.device())?;
    let candidate_scores = scores.gather(&index, 1)?;
    let passages: Vec<&str> = encoded.distinct.iter().map(String::as_str).collect();
    let (log_probs, mask, tokens) = answer_log_probs(generator, batch, &passages, &candidates, config.limits(), mode)?;
    let answer_len = log_probs.dim(1)?;
    let nll = match config.marginalization {
        Marginalization::Sequence => {
            let sequence = (log_probs * &mask)?.sum(1)?.reshape((batch.len(), k))?;
            loss::rag_sequence_nll(&candidate_scores, &sequence)?
        }
        Marginalization::Token => {
            let per_token = log_probs.reshape((batch.len(), k, answer_len))?;
            // Every candidate of a question shares its answer tokens: the first one's mask serves.
            let mask = mask.reshape((batch.len(), k, answer_len))?.narrow(1, 0, 1)?.squeeze(1)?;
            loss::rag_token_nll(&candidate_scores, &per_token, &mask)?
        }
    };
    Ok(GeneratorLoss { loss: nll.mean_all()?, tokens })
}

/// The `k` best-scoring indices of `row` (best first), with `gold` replacing the last if absent.
pub fn top_k_with_gold(row: &[f32], k: usize, gold: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    let mut top: Vec<usize> = order.into_iter().take(k).collect();
    if !top.contains(&gold) {
        if let Some(last) = top.last_mut() {
            *last = gold;
        }
    }
    top
}

/// Log-probabilities of each question's answer tokens given each of its candidate passages:
/// `(Σ candidates, t)` rows in question-major order, with the `(Σ candidates, t)` mask of real
/// answer tokens. Sequences are right-padded, so causal attention never sees the padding.
fn answer_log_probs(
    generator: &Generator,
    batch: &[Triple],
    passages: &[&str],
    candidates: &[Vec<usize>],
    limits: PromptLimits,
    mode: Mode<'_>,
) -> Result<(Tensor, Tensor, usize)> {
    let mut sequences = Vec::new();
    for (triple, candidates) in batch.iter().zip(candidates) {
        for &c in candidates {
            let (prompt, answer) =
                prompt::encode_example(generator, &triple.question, passages[c], &triple.answer, limits)?;
            sequences.push((prompt, answer));
        }
    }
    let longest = sequences.iter().map(|(p, a)| p.len() + a.len()).max().unwrap_or(1);
    let answer_len = sequences.iter().map(|(_, a)| a.len()).max().unwrap_or(1).max(1);
    let n = sequences.len();
    let mut ids = vec![0u32; n * longest];
    let mut positions = vec![0u32; n * answer_len];
    let mut targets = vec![0u32; n * answer_len];
    let mut mask = vec![0f32; n * answer_len];
    let mut tokens = 0;
    for (s, (prompt, answer)) in sequences.iter().enumerate() {
        let row = &mut ids[s * longest..(s + 1) * longest];
        row[..prompt.len()].copy_from_slice(prompt);
        row[prompt.len()..prompt.len() + answer.len()].copy_from_slice(answer);
        tokens += prompt.len() + answer.len();
        for (t, &token) in answer.iter().enumerate() {
            // The state at the previous position predicts answer token t.
            positions[s * answer_len + t] = (s * longest + prompt.len() + t - 1) as u32;
            targets[s * answer_len + t] = token;
            mask[s * answer_len + t] = 1.0;
        }
    }
    let device = generator.device();
    let input = Tensor::from_vec(ids, (n, longest), device)?;
    let model = generator.model();
    let hidden = model.hidden_states_t(&input, &mut crate::model::llama::KvCache::default(), None, mode)?;
    let hidden_size = hidden.dim(2)?;
    let picked = hidden.reshape((n * longest, hidden_size))?.index_select(&Tensor::new(positions, device)?, 0)?;
    let logits = model.logits(&picked)?.reshape((n, answer_len, ()))?;
    let targets = Tensor::from_vec(targets, (n, answer_len), device)?;
    let log_probs = loss::token_log_probs(&logits, &targets)?;
    let mask = Tensor::from_vec(mask, (n, answer_len), device)?.to_dtype(log_probs.dtype())?;
    Ok((log_probs, mask, tokens))
}

#[cfg(test)]
mod tests {
    use candle_core::Var;
    use candle_nn::VarMap;

    use super::*;
    use crate::train::test_models::tiny_models;

    fn triples() -> Vec<Triple> {
        let t = |q: &str, p: &str, a: &str| Triple { question: q.into(), passage: p.into(), answer: a.into() };
        vec![
            t("what is the cat ?", "the cat sat on the mat .", "the mat"),
            t("what ran in the park ?", "a dog ran in the park .", "a dog"),
            t("what sat on the mat ?", "the cat sat on the mat .", "the cat"),
            t("what is in the park ?", "the dogs ran in the park .", "dogs"),
        ]
    }

    fn vars(varmap: &VarMap) -> Vec<(String, Var)> {
        let data = varmap.data().lock().unwrap();
        let mut all: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    #[test]
    fn top_k_always_holds_the_gold_passage() {
        assert_eq!(top_k_with_gold(&[0.1, 0.9, 0.5, 0.7], 2, 1), vec![1, 3]);
        assert_eq!(top_k_with_gold(&[0.1, 0.9, 0.5, 0.7], 2, 0), vec![1, 0]);
        assert_eq!(top_k_with_gold(&[0.3, 0.3], 1, 1), vec![1]);
    }

    /// The e2e loss (contrastive + RAG-Sequence, and RAG-Token) against central differences on
    /// adapter weights of both models, everything in f64.
    #[test]
    fn e2e_loss_gradients_match_finite_differences() {
        let (retriever, generator, retriever_vars, generator_vars) = tiny_models(DType::F64, 1);
        let models = Models { retriever: Some(&retriever), generator: Some(&generator) };
        for marginalization in [Marginalization::Sequence, Marginalization::Token] {
            let config = LossConfig {
                top_k: 2,
                marginalization,
                contrastive: Contrastive { scale: 5.0, symmetric: true },
                ..Default::default()
            };
            let loss = || batch_loss(models, &triples(), &[], &config, Mode::Inference).unwrap();
            let out = loss();
            assert!(out.retriever.unwrap() > 0.0 && out.generator.unwrap() > 0.0);
            let grads = out.total.backward().unwrap();
            let mut checked = 0;
            for (name, var) in vars(&retriever_vars).into_iter().chain(vars(&generator_vars)) {
                let analytic = grads.get(&var).unwrap_or_else(|| panic!("{name} got no gradient"));
                let analytic = analytic.flatten_all().unwrap().to_vec1::<f64>().unwrap();
                assert!(analytic.iter().any(|g| g.abs() > 1e-9), "{name}: zero gradient");
                let original = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
                for index in [0, original.len() - 1] {
                    let at = |delta: f64| {
                        let mut values = original.clone();
                        values[index] += delta;
                        var.set(&Tensor::from_vec(values, var.shape(), &candle_core::Device::Cpu).unwrap()).unwrap();
                        loss().total.to_scalar::<f64>().unwrap()
                    };
                    let h = 1e-5;
                    let numeric = (at(h) - at(-h)) / (2.0 * h);
                    var.set(&Tensor::from_vec(original.clone(), var.shape(), &candle_core::Device::Cpu).unwrap())
                        .unwrap();
                    // candle's f64 erf (BERT's GELU) is good to ~1e-7, which shows in differences.
                    let tolerance = 1e-5 + 1e-3 * numeric.abs();
                    assert!(
                        (numeric - analytic[index]).abs() <= tolerance,
                        "{marginalization:?} {name}[{index}]: numeric {numeric} vs analytic {}",
                        analytic[index]
                    );
                    checked += 1;
                }
            }
            assert!(checked >= 16, "checked {checked} entries");
        }
    }

    /// The generator's loss reaches the retriever through p(z|q): e2e gradients on the retriever's
    /// adapters differ from the contrastive loss's alone.
    #[test]
    fn the_generator_loss_trains_the_retriever_too() {
        let (retriever, generator, retriever_vars, _) = tiny_models(DType::F64, 2);
        let models = Models { retriever: Some(&retriever), generator: Some(&generator) };
        let grads_for = |mode: TrainMode| {
            let config = LossConfig { mode, top_k: 3, ..Default::default() };
            let grads =
                batch_loss(models, &triples(), &[], &config, Mode::Inference).unwrap().total.backward().unwrap();
            let (_, var) = &vars(&retriever_vars)[0];
            grads.get(var).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
        };
        let e2e = grads_for(TrainMode::E2e);
        let contrastive_only = grads_for(TrainMode::Retriever);
        let difference: f64 = e2e.iter().zip(&contrastive_only).map(|(a, b)| (a - b).abs()).sum();
        assert!(difference > 1e-8, "the generator's loss did not reach the retriever");
    }

    /// Generator mode is the plain NLL of the answer given the gold passage: with top-k 1 and the
    /// gold passage the only candidate, e2e's generator term is the same number.
    #[test]
    fn generator_mode_equals_marginalization_over_the_gold_passage_alone() {
        let (retriever, generator, _, _) = tiny_models(DType::F64, 3);
        let models = Models { retriever: Some(&retriever), generator: Some(&generator) };
        let plain = LossConfig { mode: TrainMode::Generator, ..Default::default() };
        let one = LossConfig { mode: TrainMode::E2e, top_k: 1, ..Default::default() };
        let a = batch_loss(models, &triples(), &[], &plain, Mode::Inference).unwrap().generator.unwrap();
        let b = batch_loss(models, &triples(), &[], &one, Mode::Inference).unwrap().generator.unwrap();
        assert!((a - b).abs() < 1e-10, "{a} vs {b}");
        assert!(a > 0.0);
    }

    #[test]
    fn hard_negatives_raise_the_contrastive_loss() {
        let (retriever, _, _, _) = tiny_models(DType::F64, 4);
        let models = Models { retriever: Some(&retriever), generator: None };
        let config = LossConfig { mode: TrainMode::Retriever, ..Default::default() };
        let plain = batch_loss(models, &triples(), &[], &config, Mode::Inference).unwrap().retriever.unwrap();
        let negatives = vec!["the mat sat on the cat .".to_owned()];
        let harder = batch_loss(models, &triples(), &negatives, &config, Mode::Inference).unwrap().retriever.unwrap();
        assert!(harder > plain, "{harder} vs {plain}");
        // A "negative" equal to a gold passage is masked for its questions: the loss is unchanged.
        let same = vec!["the cat sat on the mat .".to_owned()];
        let masked = batch_loss(models, &triples(), &same, &config, Mode::Inference).unwrap().retriever.unwrap();
        assert!(masked > plain - 1e-9, "masked for questions 0 and 2, a negative for the others");
    }
}
