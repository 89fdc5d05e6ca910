//! The loss of one batch in each training mode: the retriever's in-batch contrastive loss, the
//! generator's NLL marginalized over the retriever's top-k candidates from the batch (RAG-Sequence
//! or RAG-Token), or the generator's plain NLL with the gold passage.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use attune_shared::Hyper;
pub use attune_shared::{Candidates, Marginalization, RetrieverLoss, TrainMode};

use super::data::Triple;
use super::error::{Result, TrainError};
use super::loss::{self, Contrastive};
use crate::model::generator::Generator;
use crate::model::layers::Mode;
use crate::model::llama::Checkpointed;
use crate::model::retriever::{Retriever, TextRole};
use crate::rag::prompt::{self, PromptLimits};

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
    /// Generator sequences held in one graph at a time (memory against speed: a GPU wants more).
    pub sequences_per_chunk: usize,
    /// Recompute the generator's layers in the backward pass instead of keeping their activations.
    pub checkpoint_layers: bool,
    /// Where e2e candidates come from: the batch's passages, or those and the hard negatives.
    pub candidates: Candidates,
    /// The retriever's loss in e2e mode.
    pub retriever_loss: RetrieverLoss,
    /// β of the LM-supervised loss.
    pub lsr_temperature: f64,
    /// RAFT's P: the chance that a question's gold passage is among its candidates (e2e) or in
    /// its prompt (generator mode with distractors).
    pub oracle_fraction: f64,
    /// Generator mode: hard negatives put into each prompt beside the gold passage (RAFT; 0: the
    /// gold passage alone).
    pub distractors: usize,
}

impl LossConfig {
    /// The batch loss's settings of a run in `mode` with `hyper` (the one mapping).
    pub fn new(mode: TrainMode, hyper: &Hyper) -> Self {
        LossConfig {
            mode,
            contrastive: Contrastive { scale: hyper.scale, symmetric: hyper.symmetric },
            top_k: hyper.top_k as usize,
            generator_weight: hyper.generator_weight,
            marginalization: hyper.marginalization,
            max_passage_tokens: hyper.max_passage_tokens as usize,
            max_answer_tokens: hyper.max_answer_tokens as usize,
            sequences_per_chunk: hyper.sequences_per_chunk as usize,
            checkpoint_layers: hyper.activation_checkpointing,
            candidates: hyper.candidates,
            retriever_loss: hyper.retriever_loss,
            lsr_temperature: hyper.lsr_temperature,
            oracle_fraction: hyper.oracle_fraction,
            distractors: hyper.distractors as usize,
        }
    }
}

/// `Hyper::default()`'s loss settings in e2e mode.
impl Default for LossConfig {
    fn default() -> Self {
        LossConfig::new(TrainMode::E2e, &Hyper::default())
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

/// The loss of `batch`. `negatives` holds each question's hard negatives (in the batch's order;
/// missing rows have none): extra negatives of the contrastive term, corpus candidates in e2e
/// mode, distractors in generator mode.
pub fn batch_loss(
    models: Models<'_>,
    batch: &[Triple],
    negatives: &[Vec<String>],
    config: &LossConfig,
    mode: Mode<'_>,
) -> Result<BatchLoss> {
    if batch.is_empty() {
        return Err(TrainError::Config("empty batch".into()));
    }
    let hard_negatives: Vec<String> = negatives.iter().flatten().cloned().collect();
    let hard_negatives = hard_negatives.as_slice();
    // One graph from the loss to every parameter, for whoever differentiates it.
    let config = &LossConfig { checkpoint_layers: false, ..*config };
    match config.mode {
        TrainMode::Generator => {
            let generator = models.generator.ok_or_else(|| TrainError::Config("this mode needs a generator".into()))?;
            let contexts = generator_contexts(batch, negatives, config);
            let AnswerLogProbs { log_probs, mask, tokens, .. } =
                answer_log_probs(generator, batch, &contexts, config.limits(), mode, false)?;
            // One candidate, prior 1: the plain NLL of the answer.
            let sequence = (log_probs * &mask)?.sum(1)?;
            let generator_loss = sequence.neg()?.mean_all()?;
            let value = scalar(&generator_loss)?;
            Ok(BatchLoss { total: generator_loss, retriever: None, generator: Some(value), tokens })
        }
        TrainMode::Retriever | TrainMode::E2e => {
            let retriever = models.retriever.ok_or_else(|| TrainError::Config("this mode needs a retriever".into()))?;
            let (encoded, retriever_loss) = contrastive(retriever, batch, hard_negatives, config, mode)?;
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
            let retriever_loss = e2e_retriever_loss(
                retriever_loss,
                &generator_loss.candidate_scores,
                &generator_loss.sequence_log_probs,
                config,
            )?;
            let retriever_value = scalar(&retriever_loss)?;
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

/// The retriever's loss in e2e mode: the contrastive loss, an LM-supervised one over the
/// candidates (LSR or EMDR², `scores` `(b, k)` against the generator's detached
/// `sequence_log_probs`), or the contrastive loss and one of them.
fn e2e_retriever_loss(
    contrastive: Tensor,
    scores: &Tensor,
    sequence_log_probs: &Tensor,
    config: &LossConfig,
) -> Result<Tensor> {
    let choice = config.retriever_loss;
    let supervised = if choice.lsr() {
        Some(loss::lsr_loss(scores, sequence_log_probs, config.lsr_temperature)?.mean_all()?)
    } else if choice.emdr() {
        Some(loss::emdr_loss(scores, sequence_log_probs)?.mean_all()?)
    } else {
        None
    };
    Ok(match (choice.contrastive(), supervised) {
        (true, Some(supervised)) => (contrastive + supervised)?,
        (false, Some(supervised)) => supervised,
        _ => contrastive,
    })
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// The batch through the retriever, and its contrastive loss.
fn contrastive(
    retriever: &Retriever,
    batch: &[Triple],
    hard_negatives: &[String],
    config: &LossConfig,
    mode: Mode<'_>,
) -> Result<(EncodedBatch, Tensor)> {
    let encoded = encode_batch(retriever, batch, hard_negatives, mode)?;
    let loss = loss::contrastive_loss(
        &encoded.queries,
        &encoded.positives_and_negatives()?,
        &encoded.keys,
        config.contrastive,
    )?;
    Ok((encoded, loss))
}

/// The batch through the retriever: queries, each distinct passage once, extra negatives.
struct EncodedBatch {
    /// `(b, d)`.
    queries: Tensor,
    /// `(u, d)`: the batch's distinct passages.
    passages: Tensor,
    /// `(h, d)`: extra negatives, when there are any.
    negatives: Option<Tensor>,
    /// Their texts.
    negative_texts: Vec<String>,
    /// Index into `passages` of each query's gold passage.
    gold: Vec<usize>,
    /// Text identity of each column of [`EncodedBatch::positives_and_negatives`].
    keys: Vec<u64>,
    /// The distinct passages' texts.
    distinct: Vec<String>,
    /// A hash of the batch's questions: the seed of its draws (see `oracle_draws`).
    draw_seed: u64,
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
    let negative_texts = hard_negatives.to_vec();
    let draw_seed = draw_seed(batch);
    Ok(EncodedBatch { queries, passages, negatives, negative_texts, gold, keys, distinct, draw_seed, tokens })
}

struct GeneratorLoss {
    loss: Tensor,
    tokens: usize,
    /// `(b, k)`, differentiable.
    candidate_scores: Tensor,
    /// `(b, k)`, detached.
    sequence_log_probs: Tensor,
}

/// The passages e2e candidates are picked from, each text once: the batch's distinct passages
/// (so a question's gold passage keeps its index), then — with corpus candidates — the hard
/// negatives that are none of them.
struct CandidatePool {
    /// `(p, d)`.
    embeddings: Tensor,
    texts: Vec<String>,
}

impl CandidatePool {
    fn of(encoded: &EncodedBatch, config: &LossConfig) -> Result<Self> {
        let mut texts = encoded.distinct.clone();
        let (Candidates::Corpus, Some(negatives)) = (config.candidates, &encoded.negatives) else {
            return Ok(CandidatePool { embeddings: encoded.passages.clone(), texts });
        };
        let mut seen: std::collections::HashSet<&str> = encoded.distinct.iter().map(String::as_str).collect();
        let mut rows: Vec<u32> = (0..encoded.distinct.len() as u32).collect();
        for (j, text) in encoded.negative_texts.iter().enumerate() {
            if seen.insert(text.as_str()) {
                rows.push((encoded.distinct.len() + j) as u32);
                texts.push(text.clone());
            }
        }
        let all = Tensor::cat(&[&encoded.passages, negatives], 0)?;
        let embeddings = all.index_select(&Tensor::new(rows, all.device())?, 0)?;
        Ok(CandidatePool { embeddings, texts })
    }
}

/// Each question's candidates (the top-k of the pool's passages by retriever score, the gold one
/// always among them), their differentiable scores `(b, k)`, and the pool's texts.
fn candidates(encoded: &EncodedBatch, config: &LossConfig) -> Result<(Tensor, Vec<Vec<usize>>, Vec<String>)> {
    if config.top_k == 0 {
        return Err(TrainError::Config("top-k must be at least 1".into()));
    }
    let pool = CandidatePool::of(encoded, config)?;
    let scores = (encoded.queries.matmul(&pool.embeddings.t()?)? * config.contrastive.scale)?;
    let values = scores.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let k = config.top_k.min(pool.texts.len());
    let with_gold = oracle_draws(encoded, config.oracle_fraction);
    // Without its gold passage a question needs k others in the pool.
    let k = if with_gold.iter().all(|&g| g) { k } else { k.min(pool.texts.len() - 1).max(1) };
    let candidates: Vec<Vec<usize>> = values
        .iter()
        .zip(&encoded.gold)
        .zip(&with_gold)
        .map(|((row, &gold), &keep)| match keep || pool.texts.len() == 1 {
            true => top_k_with_gold(row, k, gold),
            false => top_k_without(row, k, gold),
        })
        .collect();
    let index: Vec<u32> = candidates.iter().flatten().map(|&c| c as u32).collect();
    let index = Tensor::from_vec(index, (encoded.gold.len(), k), scores.device())?;
    Ok((scores.gather(&index, 1)?, candidates, pool.texts))
}

/// The seed of a batch's random draws: FNV-1a over its questions, stable across runs and
/// platforms (unlike std's hasher), so a resumed or chunked step draws the same.
fn draw_seed(batch: &[Triple]) -> u64 {
    batch
        .iter()
        .flat_map(|t| t.question.bytes().chain([0]))
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Generator mode's one prompt per question: the gold passage alone, or with distractors (RAFT)
/// up to `config.distractors` of the question's hard negatives and, with chance P, the gold
/// passage, in an order drawn from the batch's seed (a question without negatives keeps its gold).
fn generator_contexts<'a>(
    batch: &'a [Triple],
    negatives: &'a [Vec<String>],
    config: &LossConfig,
) -> Vec<Vec<Vec<&'a str>>> {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(draw_seed(batch) ^ 0x5241_4654);
    batch
        .iter()
        .enumerate()
        .map(|(i, triple)| {
            let gold = triple.passage.as_str();
            let distractors: Vec<&str> = negatives
                .get(i)
                .map(|n| n.iter().map(String::as_str).filter(|&p| p != gold).take(config.distractors).collect())
                .unwrap_or_default();
            if distractors.is_empty() {
                return vec![vec![gold]];
            }
            let mut passages = distractors;
            if rng.random::<f64>() < config.oracle_fraction {
                passages.push(gold);
            }
            passages.shuffle(&mut rng);
            vec![passages]
        })
        .collect()
}

/// For each question, whether its gold passage is among its candidates: always at P = 1, else a
/// draw with chance P seeded by the batch's questions (the same batch draws the same, so a resumed
/// or chunked step computes the same loss; the next epoch's batches draw anew).
fn oracle_draws(encoded: &EncodedBatch, oracle_fraction: f64) -> Vec<bool> {
    if oracle_fraction >= 1.0 {
        return vec![true; encoded.gold.len()];
    }
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(encoded.draw_seed);
    encoded.gold.iter().map(|_| rng.random::<f64>() < oracle_fraction).collect()
}

/// The `k` best columns of `row` other than `excluded`, best first.
fn top_k_without(row: &[f32], k: usize, excluded: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..row.len()).filter(|&j| j != excluded).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// The marginalized NLL `(n,)` of `questions` given their candidates' scores `(n, k)`.
fn marginalized_nll(
    generator: &Generator,
    questions: &[Triple],
    passages: &[&str],
    candidates: &[Vec<usize>],
    candidate_scores: &Tensor,
    config: &LossConfig,
    mode: Mode<'_>,
) -> Result<Marginal> {
    let (n, k) = candidate_scores.dims2()?;
    let checkpoint = config.checkpoint_layers;
    let contexts: Vec<Vec<Vec<&str>>> =
        candidates.iter().map(|c| c.iter().map(|&i| vec![passages[i]]).collect()).collect();
    let AnswerLogProbs { log_probs, mask, tokens, checkpointed } =
        answer_log_probs(generator, questions, &contexts, config.limits(), mode, checkpoint)?;
    let answer_len = log_probs.dim(1)?;
    let sequence = (&log_probs * &mask)?.sum(1)?.reshape((n, k))?;
    let sequence_log_probs = sequence.detach();
    let nll = match config.marginalization {
        Marginalization::Sequence => loss::rag_sequence_nll(candidate_scores, &sequence)?,
        Marginalization::Token => {
            let per_token = log_probs.reshape((n, k, answer_len))?;
            // Every candidate of a question shares its answer tokens: the first one's mask serves.
            let mask = mask.reshape((n, k, answer_len))?.narrow(1, 0, 1)?.squeeze(1)?;
            loss::rag_token_nll(candidate_scores, &per_token, &mask)?
        }
    };
    Ok(Marginal { nll, sequence_log_probs, tokens, checkpointed })
}

/// [`marginalized_nll`]'s result.
struct Marginal {
    /// `(n,)`.
    nll: Tensor,
    /// `(n, k)`: the answer's log-likelihood given each candidate, detached.
    sequence_log_probs: Tensor,
    tokens: usize,
    checkpointed: Option<Checkpointed>,
}

/// RAG marginalized NLL over the whole batch in one graph: `p(z|q)` is the softmax of the (scaled)
/// scores over each question's candidates, so the generator's likelihoods train the retriever too.
fn marginalized_loss(
    generator: &Generator,
    batch: &[Triple],
    encoded: &EncodedBatch,
    config: &LossConfig,
    mode: Mode<'_>,
) -> Result<GeneratorLoss> {
    let (candidate_scores, candidates, pool) = candidates(encoded, config)?;
    let passages: Vec<&str> = pool.iter().map(String::as_str).collect();
    let Marginal { nll, sequence_log_probs, tokens, .. } =
        marginalized_nll(generator, batch, &passages, &candidates, &candidate_scores, config, mode)?;
    Ok(GeneratorLoss { loss: nll.mean_all()?, tokens, candidate_scores, sequence_log_probs })
}

/// A batch's loss figures and the gradients of `weight` × its loss for each of `params`.
pub struct BatchGradients {
    pub loss: f64,
    pub retriever: Option<f64>,
    pub generator: Option<f64>,
    pub tokens: usize,
    pub grads: Vec<Option<Tensor>>,
}

/// Adds `g` to the running sum in `slot` (which starts empty).
pub fn add_gradient(slot: &mut Option<Tensor>, g: &Tensor) -> Result<()> {
    *slot = Some(match slot.take() {
        Some(sum) => (sum + g)?,
        None => g.clone(),
    });
    Ok(())
}

/// Adds each of `params`' gradients in `store` to `grads`.
fn accumulate(grads: &mut [Option<Tensor>], store: &candle_core::backprop::GradStore, params: &[Var]) -> Result<()> {
    for (slot, var) in grads.iter_mut().zip(params) {
        if let Some(g) = store.get(var) {
            add_gradient(slot, g)?;
        }
    }
    Ok(())
}

/// The backward pass of `loss`, its parameters' gradients added to `grads`; with activation
/// checkpointing (`checkpointed`), carried on through the generator's layers from the gradient its
/// leaf received. Returns the pass's gradient store.
fn backward_into(
    loss: &Tensor,
    checkpointed: Option<Checkpointed>,
    generator: &Generator,
    grads: &mut [Option<Tensor>],
    params: &[Var],
) -> Result<candle_core::backprop::GradStore> {
    let store = loss.backward()?;
    accumulate(grads, &store, params)?;
    if let Some(Checkpointed { leaf, tape }) = checkpointed
        && let Some(grad) = store.get(&leaf)
    {
        generator.model().backward_layers(tape, grad, |layer| accumulate(grads, layer, params))?;
    }
    Ok(store)
}

/// The gradients of `weight` × [`batch_loss`] — the same numbers — with the generator's graph built
/// a few questions at a time (at most `config.sequences_per_chunk` sequences, or one question), so memory
/// stays bounded whatever the batch size and top-k. In e2e mode the generator's gradient with
/// respect to the candidate scores is gathered chunk by chunk on a detached copy of the scores, then
/// sent through the retriever in one backward pass with the contrastive loss (gradient caching).
pub fn batch_gradients(
    models: Models<'_>,
    batch: &[Triple],
    negatives: &[Vec<String>],
    config: &LossConfig,
    mode: Mode<'_>,
    weight: f64,
    params: &[Var],
) -> Result<BatchGradients> {
    if batch.is_empty() {
        return Err(TrainError::Config("empty batch".into()));
    }
    let hard_negatives: Vec<String> = negatives.iter().flatten().cloned().collect();
    let hard_negatives = hard_negatives.as_slice();
    let mut grads: Vec<Option<Tensor>> = vec![None; params.len()];
    // No parameters: the loss alone (held-out evaluation), without backward passes.
    let backward = !params.is_empty();
    let config = &LossConfig { checkpoint_layers: config.checkpoint_layers && backward, ..*config };
    let b = batch.len() as f64;
    match config.mode {
        TrainMode::Retriever => {
            let out = batch_loss(models, batch, negatives, config, mode)?;
            if backward {
                accumulate(&mut grads, &(&out.total * weight)?.backward()?, params)?;
            }
            Ok(BatchGradients {
                loss: scalar(&out.total)?,
                retriever: out.retriever,
                generator: None,
                tokens: out.tokens,
                grads,
            })
        }
        TrainMode::Generator => {
            let generator = models.generator.ok_or_else(|| TrainError::Config("this mode needs a generator".into()))?;
            let (mut total, mut tokens) = (0.0, 0);
            // The whole batch's contexts first: their draws depend on the batch, not the chunk.
            let contexts = generator_contexts(batch, negatives, config);
            let per_chunk = config.sequences_per_chunk.max(1);
            for (chunk, contexts) in batch.chunks(per_chunk).zip(contexts.chunks(per_chunk)) {
                let checkpoint = config.checkpoint_layers;
                let answers = answer_log_probs(generator, chunk, contexts, config.limits(), mode, checkpoint)?;
                let sum = (answers.log_probs * &answers.mask)?.sum_all()?.neg()?;
                let part = (sum / b)?;
                total += scalar(&part)?;
                tokens += answers.tokens;
                if backward {
                    backward_into(&(&part * weight)?, answers.checkpointed, generator, &mut grads, params)?;
                }
            }
            Ok(BatchGradients { loss: total, retriever: None, generator: Some(total), tokens, grads })
        }
        TrainMode::E2e => {
            let retriever = models.retriever.ok_or_else(|| TrainError::Config("this mode needs a retriever".into()))?;
            let generator = models.generator.ok_or_else(|| TrainError::Config("e2e mode needs a generator".into()))?;
            let (encoded, retriever_loss) = contrastive(retriever, batch, hard_negatives, config, mode)?;
            let (candidate_scores, candidates, pool) = candidates(&encoded, config)?;
            let k = candidate_scores.dim(1)?;
            let passages: Vec<&str> = pool.iter().map(String::as_str).collect();
            let mut sequence_log_probs = Vec::new();
            // The generator's part, a few questions at a time, against a detached copy of the scores.
            let detached = Var::from_tensor(&candidate_scores.detach())?;
            let mut score_grads: Option<Tensor> = None;
            let (mut generator_total, mut tokens) = (0.0, encoded.tokens);
            let per_chunk = (config.sequences_per_chunk / k).max(1);
            let mut start = 0;
            while start < batch.len() {
                let len = per_chunk.min(batch.len() - start);
                let scores = detached.as_tensor().narrow(0, start, len)?;
                let Marginal { nll, sequence_log_probs: likelihoods, tokens: n, checkpointed } = marginalized_nll(
                    generator,
                    &batch[start..start + len],
                    &passages,
                    &candidates[start..start + len],
                    &scores,
                    config,
                    mode,
                )?;
                let part = (nll.sum_all()? / b)?;
                generator_total += scalar(&part)?;
                tokens += n;
                start += len;
                sequence_log_probs.push(likelihoods);
                if !backward {
                    continue;
                }
                let weighted = (&part * (weight * config.generator_weight))?;
                let store = backward_into(&weighted, checkpointed, generator, &mut grads, params)?;
                if let Some(g) = store.get(&detached) {
                    add_gradient(&mut score_grads, g)?;
                }
            }
            let retriever_loss =
                e2e_retriever_loss(retriever_loss, &candidate_scores, &Tensor::cat(&sequence_log_probs, 0)?, config)?;
            // One pass through the retriever: its own loss, plus the generator's pull on the scores.
            let mut surrogate = (&retriever_loss * weight)?;
            if let Some(g) = score_grads {
                surrogate = (surrogate + (candidate_scores * g.detach())?.sum_all()?)?;
            }
            if backward {
                accumulate(&mut grads, &surrogate.backward()?, params)?;
            }
            let retriever_value = scalar(&retriever_loss)?;
            Ok(BatchGradients {
                loss: retriever_value + config.generator_weight * generator_total,
                retriever: Some(retriever_value),
                generator: Some(generator_total),
                tokens,
                grads,
            })
        }
    }
}

/// The `k` best-scoring indices of `row` (best first), with `gold` replacing the last if absent.
pub fn top_k_with_gold(row: &[f32], k: usize, gold: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    let mut top: Vec<usize> = order.into_iter().take(k).collect();
    if !top.contains(&gold)
        && let Some(last) = top.last_mut()
    {
        *last = gold;
    }
    top
}

/// Log-probabilities of each question's answer tokens given each of its contexts (the passages
/// of one prompt: a candidate alone in e2e mode): `(Σ contexts, t)` rows in question-major order,
/// with the `(Σ contexts, t)` mask of real answer tokens. Sequences are right-padded, so causal
/// attention never sees the padding. With `checkpoint`, the generator's layers keep no
/// activations (see `backward_into`).
fn answer_log_probs(
    generator: &Generator,
    batch: &[Triple],
    contexts: &[Vec<Vec<&str>>],
    limits: PromptLimits,
    mode: Mode<'_>,
    checkpoint: bool,
) -> Result<AnswerLogProbs> {
    let mut sequences = Vec::new();
    for (triple, contexts) in batch.iter().zip(contexts) {
        for passages in contexts {
            let (prompt, answer) =
                prompt::encode_example(generator, &triple.question, passages, &triple.answer, limits)?;
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
    let (hidden, checkpointed) = if checkpoint {
        let (hidden, checkpointed) = model.hidden_states_checkpointed(&input, None, mode)?;
        (hidden, Some(checkpointed))
    } else {
        (model.hidden_states_t(&input, &mut crate::model::llama::KvCache::default(), None, mode)?, None)
    };
    let hidden_size = hidden.dim(2)?;
    let picked = hidden.reshape((n * longest, hidden_size))?.index_select(&Tensor::new(positions, device)?, 0)?;
    let logits = model.logits(&picked)?.reshape((n, answer_len, ()))?;
    let targets = Tensor::from_vec(targets, (n, answer_len), device)?;
    let log_probs = loss::token_log_probs(&logits, &targets)?;
    let mask = Tensor::from_vec(mask, (n, answer_len), device)?.to_dtype(log_probs.dtype())?;
    Ok(AnswerLogProbs { log_probs, mask, tokens, checkpointed })
}

/// What [`answer_log_probs`] gives.
struct AnswerLogProbs {
    log_probs: Tensor,
    mask: Tensor,
    tokens: usize,
    /// With activation checkpointing, what the backward pass needs to go through the layers.
    checkpointed: Option<Checkpointed>,
}

#[cfg(test)]
mod tests {
    use candle_core::Var;
    use candle_nn::VarMap;

    use super::*;
    use crate::train::test_models::{tiny_models, tiny_models_with_dropout};

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

    /// The chunked gradients (generator a few questions at a time, retriever through cached score
    /// gradients) equal one big graph's, in every mode and marginalization.
    #[test]
    fn chunked_gradients_equal_the_whole_batch_graph() {
        let (retriever, generator, retriever_vars, generator_vars) = tiny_models(DType::F64, 6);
        let models = Models { retriever: Some(&retriever), generator: Some(&generator) };
        let params: Vec<Var> = vars(&retriever_vars).into_iter().chain(vars(&generator_vars)).map(|(_, v)| v).collect();
        // 12 questions, top-k 3: chunks of 2 questions (8 sequences at most), 6 backward passes.
        let batch: Vec<Triple> = triples().into_iter().cycle().take(12).collect();
        let negatives = ["a bird flew over the park .", "the mat sat on the cat .", "a dog ran in the park ."]
            .map(String::from)
            .to_vec();
        let (batch_pool, corpus_pool) = (Candidates::Batch, Candidates::Corpus);
        for (mode, marginalization, candidates, retriever_loss) in [
            (TrainMode::E2e, Marginalization::Sequence, batch_pool, RetrieverLoss::Contrastive),
            (TrainMode::E2e, Marginalization::Token, batch_pool, RetrieverLoss::Contrastive),
            (TrainMode::E2e, Marginalization::Sequence, corpus_pool, RetrieverLoss::ContrastiveLsr),
            (TrainMode::E2e, Marginalization::Token, corpus_pool, RetrieverLoss::Lsr),
            (TrainMode::E2e, Marginalization::Sequence, corpus_pool, RetrieverLoss::ContrastiveEmdr),
            (TrainMode::Generator, Marginalization::Sequence, batch_pool, RetrieverLoss::Contrastive),
            // Generator mode with "corpus" here: RAFT, two of each question's negatives in its prompt.
            (TrainMode::Generator, Marginalization::Sequence, corpus_pool, RetrieverLoss::Contrastive),
            (TrainMode::Retriever, Marginalization::Sequence, batch_pool, RetrieverLoss::Contrastive),
        ] {
            let raft = mode == TrainMode::Generator && candidates == corpus_pool;
            let config = LossConfig {
                mode,
                distractors: if raft { 2 } else { 0 },
                top_k: 3,
                marginalization,
                generator_weight: 0.7,
                candidates,
                retriever_loss,
                lsr_temperature: 0.5,
                // Some gold passages left out of the candidates: the same draws chunk by chunk.
                oracle_fraction: if retriever_loss.emdr() || raft { 0.5 } else { 1.0 },
                ..Default::default()
            };
            let negatives: Vec<Vec<String>> = match candidates == corpus_pool {
                true if raft => (0..batch.len()).map(|i| negatives[i % 3..].to_vec()).collect(),
                true => vec![negatives.clone()],
                false => vec![],
            };
            let negatives = negatives.as_slice();
            let whole = batch_loss(models, &batch, negatives, &config, Mode::Inference).unwrap();
            let store = (&whole.total * 0.5).unwrap().backward().unwrap();
            let chunked = batch_gradients(models, &batch, negatives, &config, Mode::Inference, 0.5, &params).unwrap();
            assert!((chunked.loss - whole.total.to_scalar::<f64>().unwrap()).abs() < 1e-10, "{mode:?}");
            let mut compared = 0;
            for (var, grad) in params.iter().zip(&chunked.grads) {
                match (store.get(var), grad) {
                    (Some(a), Some(b)) => {
                        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
                        assert!(diff < 1e-10, "{mode:?} {marginalization:?}: gradients differ by {diff}");
                        compared += 1;
                    }
                    (None, None) => {}
                    (a, b) => panic!("{mode:?}: one side lacks a gradient ({} vs {})", a.is_some(), b.is_some()),
                }
            }
            assert!(compared >= 8, "{mode:?}: compared {compared}");
        }
    }

    /// Activation checkpointing changes where the generator's activations live, not the numbers:
    /// in training mode with adapter dropout, the loss and every gradient equal the plain pass's.
    #[test]
    fn activation_checkpointing_gives_the_same_gradients() {
        let (retriever, generator, retriever_vars, generator_vars) = tiny_models_with_dropout(DType::F64, 6, 0.3);
        let models = Models { retriever: Some(&retriever), generator: Some(&generator) };
        let params: Vec<Var> = vars(&retriever_vars).into_iter().chain(vars(&generator_vars)).map(|(_, v)| v).collect();
        let batch: Vec<Triple> = triples().into_iter().cycle().take(6).collect();
        for mode in [TrainMode::E2e, TrainMode::Generator] {
            let run = |checkpoint_layers: bool| {
                let config = LossConfig { mode, top_k: 3, checkpoint_layers, ..Default::default() };
                let rng = crate::model::layers::DropoutRng::new(5);
                batch_gradients(models, &batch, &[], &config, Mode::Train(&rng), 0.5, &params).unwrap()
            };
            let (plain, checkpointed) = (run(false), run(true));
            assert!(
                (plain.loss - checkpointed.loss).abs() < 1e-12,
                "{mode:?}: {} vs {}",
                plain.loss,
                checkpointed.loss
            );
            let mut compared = 0;
            for (a, b) in plain.grads.iter().zip(&checkpointed.grads) {
                match (a, b) {
                    (Some(a), Some(b)) => {
                        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
                        assert!(diff < 1e-12, "{mode:?}: gradients differ by {diff}");
                        compared += 1;
                    }
                    (None, None) => {}
                    _ => panic!("{mode:?}: one side lacks a gradient"),
                }
            }
            assert!(compared >= 4, "{mode:?}: compared {compared}");
        }
        // Dropout is on: another seed gives another loss (so the equality above is not trivial).
        let config = LossConfig { mode: TrainMode::Generator, checkpoint_layers: true, ..Default::default() };
        let losses: Vec<f64> = [5, 6]
            .map(|seed| {
                let rng = crate::model::layers::DropoutRng::new(seed);
                batch_gradients(models, &batch, &[], &config, Mode::Train(&rng), 0.5, &params).unwrap().loss
            })
            .to_vec();
        assert!((losses[0] - losses[1]).abs() > 1e-9, "{losses:?}");
    }

    /// Corpus candidates: the pool is the batch's passages and then its hard negatives, each text
    /// once; a question's candidates may be any of them, its gold one always among them.
    #[test]
    fn corpus_candidates_add_the_hard_negatives_to_the_pool() {
        let (retriever, _, _, _) = tiny_models(DType::F64, 7);
        let negatives = ["a bird flew over the park .", "the cat sat on the mat .", "a bird flew over the park ."]
            .map(String::from)
            .to_vec();
        let encoded = encode_batch(&retriever, &triples(), &negatives, Mode::Inference).unwrap();
        let batch_config = LossConfig { top_k: 10, ..Default::default() };
        let (_, batch_candidates, batch_pool) = candidates(&encoded, &batch_config).unwrap();
        assert_eq!(batch_pool, encoded.distinct, "batch candidates: the batch's passages alone");
        assert!(batch_candidates.iter().all(|c| c.len() == 3));
        let corpus_config = LossConfig { candidates: Candidates::Corpus, ..batch_config };
        let (scores, candidates, pool) = candidates(&encoded, &corpus_config).unwrap();
        let mut expected = encoded.distinct.clone();
        expected.push("a bird flew over the park .".into());
        assert_eq!(pool, expected, "the new negative once; the one equal to a gold passage not again");
        assert_eq!(scores.dims2().unwrap(), (4, 4));
        for (c, &gold) in candidates.iter().zip(&encoded.gold) {
            assert!(c.contains(&gold) && c.contains(&3), "{c:?}");
        }
        // The differentiable scores are the pool's: query · passage × scale.
        let query = encoded.queries.get(0).unwrap();
        let bird = retriever.embed(&["a bird flew over the park ."], TextRole::Passage, 1).unwrap().get(0).unwrap();
        let expected =
            (query * bird.to_dtype(DType::F64).unwrap()).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
                * corpus_config.contrastive.scale;
        let column = candidates[0].iter().position(|&c| c == 3).unwrap();
        let got = scores.get(0).unwrap().get(column).unwrap().to_scalar::<f64>().unwrap();
        assert!((got - expected).abs() < 1e-4, "{got} vs {expected}");
    }

    #[test]
    fn an_oracle_fraction_below_one_leaves_some_gold_passages_out() {
        let (retriever, _, _, _) = tiny_models(DType::F64, 7);
        let batch: Vec<Triple> = (0..40)
            .map(|i| Triple {
                question: format!("question {i} about the park ?"),
                passage: format!("passage {i} : a dog ran in the park ."),
                answer: "a dog".into(),
            })
            .collect();
        let encoded = encode_batch(&retriever, &batch, &[], Mode::Inference).unwrap();
        let gold_in = |fraction: f64| {
            let config = LossConfig { top_k: 3, oracle_fraction: fraction, ..Default::default() };
            let (scores, candidates, _) = candidates(&encoded, &config).unwrap();
            assert_eq!(scores.dims2().unwrap(), (40, 3));
            assert!(candidates.iter().all(|c| c.len() == 3));
            candidates.iter().zip(&encoded.gold).filter(|(c, g)| c.contains(g)).count()
        };
        assert_eq!(gold_in(1.0), 40, "P = 1: always");
        assert_eq!(gold_in(0.0), 0, "P = 0: never, and k others fill the place");
        let half = gold_in(0.5);
        assert!((10..=30).contains(&half), "P = 1/2: about half of 40, got {half}");
        assert_eq!(gold_in(0.5), half, "the same batch draws the same");
        assert_eq!(top_k_without(&[0.1, 0.9, 0.5, 0.7], 2, 1), vec![3, 2]);
    }

    #[test]
    fn raft_prompts_mix_the_gold_passage_among_distractors() {
        let batch: Vec<Triple> = (0..40)
            .map(|i| Triple { question: format!("q{i} ?"), passage: format!("gold {i}"), answer: "a".into() })
            .collect();
        let negatives: Vec<Vec<String>> = (0..40)
            .map(|i| match i {
                0 => vec![],
                1 => vec![format!("gold {i}"), "n1".into(), "n2".into(), "n3".into()],
                _ => vec!["n1".into(), "n2".into(), "n3".into()],
            })
            .collect();
        let contexts = |distractors, oracle_fraction| {
            let config = LossConfig { mode: TrainMode::Generator, distractors, oracle_fraction, ..Default::default() };
            generator_contexts(&batch, &negatives, &config)
        };
        let plain = contexts(0, 0.5);
        assert!(
            plain.iter().zip(&batch).all(|(c, t)| c == &vec![vec![t.passage.as_str()]]),
            "no distractors: gold alone"
        );
        let always = contexts(2, 1.0);
        assert_eq!(always[0], vec![vec!["gold 0"]], "no negatives: gold alone");
        for (i, context) in always.iter().enumerate().skip(1) {
            let passages = &context[0];
            assert_eq!(passages.len(), 3, "{passages:?}");
            assert_eq!(passages.iter().filter(|p| **p == format!("gold {i}")).count(), 1, "gold once: {passages:?}");
            assert!(!passages.contains(&"n3"), "two distractors, the best two");
        }
        let first_places = always.iter().skip(1).filter(|c| c[0][0].starts_with("gold")).count();
        assert!(
            (3..=25).contains(&first_places),
            "the gold passage's place is drawn: first {first_places} times of 39"
        );
        let never = contexts(2, 0.0);
        assert!(never.iter().skip(1).all(|c| c[0].iter().all(|p| !p.starts_with("gold"))), "P = 0: distractors only");
        let half = contexts(2, 0.5).iter().skip(1).filter(|c| c[0].iter().any(|p| p.starts_with("gold"))).count();
        assert!((10..=30).contains(&half), "P = 1/2: about half of 39, got {half}");
        assert_eq!(contexts(2, 0.5), contexts(2, 0.5), "the same batch draws the same");
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
        let negatives = ["a bird flew over the park .".to_owned()];
        for (marginalization, candidates, retriever_loss) in [
            (Marginalization::Sequence, Candidates::Batch, RetrieverLoss::Contrastive),
            (Marginalization::Token, Candidates::Batch, RetrieverLoss::Contrastive),
            (Marginalization::Sequence, Candidates::Corpus, RetrieverLoss::ContrastiveLsr),
            (Marginalization::Token, Candidates::Corpus, RetrieverLoss::Emdr),
        ] {
            let config = LossConfig {
                top_k: 2,
                marginalization,
                contrastive: Contrastive { scale: 5.0, symmetric: true },
                candidates,
                retriever_loss,
                ..Default::default()
            };
            let negatives: Vec<Vec<String>> =
                if candidates == Candidates::Corpus { vec![negatives.to_vec()] } else { vec![] };
            let negatives = negatives.as_slice();
            let loss = || batch_loss(models, &triples(), negatives, &config, Mode::Inference).unwrap();
            let out = loss();
            assert!(out.retriever.unwrap() > 0.0 && out.generator.unwrap() > 0.0);
            let grads = out.total.backward().unwrap();
            let mut checked = 0;
            // The lsr loss's target is the generator's likelihood, detached by design: finite
            // differences on the generator's weights would move that target, so only the
            // retriever's weights are checked with it.
            let generator_checked = if retriever_loss.lm_supervised() { Vec::new() } else { vars(&generator_vars) };
            for (name, var) in vars(&retriever_vars).into_iter().chain(generator_checked) {
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
            assert!(checked >= if retriever_loss.lm_supervised() { 4 } else { 16 }, "checked {checked} entries");
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
        let harder = batch_loss(models, &triples(), &[negatives], &config, Mode::Inference).unwrap().retriever.unwrap();
        assert!(harder > plain, "{harder} vs {plain}");
        // A "negative" equal to a gold passage is masked for its questions: the loss is unchanged.
        let same = vec!["the cat sat on the mat .".to_owned()];
        let masked = batch_loss(models, &triples(), &[same], &config, Mode::Inference).unwrap().retriever.unwrap();
        assert!(masked > plain - 1e-9, "masked for questions 0 and 2, a negative for the others");
    }
}
