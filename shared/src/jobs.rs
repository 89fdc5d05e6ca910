//! Wire types of training runs, evaluations, the model list and chat (`/api/v1/runs`, `/evals`,
//! `/models`, and the chat messages on `/ws`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::JobStatus;

/// What a training run tunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainMode {
    /// Retriever and generator through one loss (contrastive + RAG-Sequence marginal likelihood).
    #[default]
    E2e,
    /// The retriever alone (in-batch contrastive).
    Retriever,
    /// The generator alone, on each question's gold passage.
    Generator,
}

impl TrainMode {
    pub const ALL: [TrainMode; 3] = [TrainMode::E2e, TrainMode::Retriever, TrainMode::Generator];

    pub fn as_str(self) -> &'static str {
        match self {
            TrainMode::E2e => "e2e",
            TrainMode::Retriever => "retriever",
            TrainMode::Generator => "generator",
        }
    }
    pub fn trains_retriever(self) -> bool {
        self != TrainMode::Generator
    }
    pub fn trains_generator(self) -> bool {
        self != TrainMode::Retriever
    }
}

/// How the learning rate decays after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    #[default]
    Linear,
    Cosine,
    Constant,
}

impl Decay {
    pub const ALL: [Decay; 3] = [Decay::Linear, Decay::Cosine, Decay::Constant];

    pub fn as_str(self) -> &'static str {
        match self {
            Decay::Linear => "linear",
            Decay::Cosine => "cosine",
            Decay::Constant => "constant",
        }
    }
}

/// How the generator's likelihood is marginalized over candidate passages in e2e mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Marginalization {
    /// One passage per whole answer: `p(a|q) = Σ_z p(z|q) Π_t p(a_t|q,z,a_<t)`.
    #[default]
    Sequence,
    /// A passage per answer token: `p(a|q) = Π_t Σ_z p(z|q) p(a_t|q,z,a_<t)`.
    Token,
}

impl Marginalization {
    pub const ALL: [Marginalization; 2] = [Marginalization::Sequence, Marginalization::Token];

    pub fn as_str(self) -> &'static str {
        match self {
            Marginalization::Sequence => "sequence",
            Marginalization::Token => "token",
        }
    }
}

/// Where each question's candidate passages come from in e2e mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Candidates {
    /// The top-k of the batch's passages: the other questions' gold passages.
    #[default]
    Batch,
    /// The top-k of the batch's passages and every question's hard negatives, which are its best
    /// passages of the whole corpus by the (refreshed) index: near-misses the generator must tell
    /// apart, as at inference.
    Corpus,
}

impl Candidates {
    pub const ALL: [Candidates; 2] = [Candidates::Batch, Candidates::Corpus];

    pub fn as_str(self) -> &'static str {
        match self {
            Candidates::Batch => "batch",
            Candidates::Corpus => "corpus",
        }
    }
}

/// The retriever's loss in e2e mode (retriever mode is always contrastive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RetrieverLoss {
    /// InfoNCE: the gold passage against the batch's others and the hard negatives.
    #[default]
    #[serde(rename = "contrastive")]
    Contrastive,
    /// LM-supervised retrieval (REPLUG-LSR, Atlas' perplexity distillation): the retriever's
    /// distribution over the candidates pulled towards the generator's (detached) likelihood of
    /// the answer given each; no gold passage needed.
    #[serde(rename = "lsr")]
    Lsr,
    /// Both, added.
    #[serde(rename = "contrastive+lsr")]
    ContrastiveLsr,
    /// EMDR²: `−log Σ_d p_R(d|q) · p_LM(a|q,d)` over the candidates with the generator's side
    /// detached — the marginal likelihood, as a loss of the retriever only.
    #[serde(rename = "emdr2")]
    Emdr,
    /// Contrastive and EMDR², added.
    #[serde(rename = "contrastive+emdr2")]
    ContrastiveEmdr,
}

impl RetrieverLoss {
    pub const ALL: [RetrieverLoss; 5] = [
        RetrieverLoss::Contrastive,
        RetrieverLoss::Lsr,
        RetrieverLoss::ContrastiveLsr,
        RetrieverLoss::Emdr,
        RetrieverLoss::ContrastiveEmdr,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetrieverLoss::Contrastive => "contrastive",
            RetrieverLoss::Lsr => "lsr",
            RetrieverLoss::ContrastiveLsr => "contrastive+lsr",
            RetrieverLoss::Emdr => "emdr2",
            RetrieverLoss::ContrastiveEmdr => "contrastive+emdr2",
        }
    }

    pub fn contrastive(self) -> bool {
        matches!(self, RetrieverLoss::Contrastive | RetrieverLoss::ContrastiveLsr | RetrieverLoss::ContrastiveEmdr)
    }

    pub fn lsr(self) -> bool {
        matches!(self, RetrieverLoss::Lsr | RetrieverLoss::ContrastiveLsr)
    }

    pub fn emdr(self) -> bool {
        matches!(self, RetrieverLoss::Emdr | RetrieverLoss::ContrastiveEmdr)
    }

    /// The loss learns from the generator's likelihoods (detached): it needs no gold passage.
    pub fn lm_supervised(self) -> bool {
        self.lsr() || self.emdr()
    }
}

/// `Display` and `FromStr` by the wire names, so a command line parses the same words the API takes.
macro_rules! named_enum {
    ($($name:ident),*) => {$(
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, String> {
                Self::ALL.into_iter().find(|v| v.as_str() == text).ok_or_else(|| {
                    let names: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                    format!("`{text}` is not one of {}", names.join(", "))
                })
            }
        }
    )*};
}

named_enum!(TrainMode, Decay, Marginalization, Candidates, RetrieverLoss, RetrievalMethod, AdaptStage);

/// Every setting of a training run but its data, models and device: the web app sends it, the
/// command line overrides its defaults flag by flag, and the trainer reads it. `Hyper::default()`
/// is the only table of default settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hyper {
    pub epochs: u32,
    /// Stop after this many optimiser steps (the schedule spans them); `None`: all epochs.
    pub max_steps: Option<u32>,
    /// More epochs than `epochs` when the triples are few: as many as make this many optimiser
    /// steps (at most 1000 epochs; `max_steps` still caps the run; 0: exactly `epochs`). Missing
    /// from stored settings (a run from before it existed): 0, as that run was planned.
    #[serde(default)]
    pub min_steps: u32,
    /// Stop when the held-out loss has not improved for this many evaluations in a row, and end
    /// with the adapters of the best evaluation rather than the last step's (0: neither). Missing
    /// from stored settings: 0.
    #[serde(default)]
    pub early_stopping_patience: u32,
    pub batch_size: u32,
    pub grad_accum: u32,
    pub lr: f64,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub lora_r: u32,
    pub lora_alpha: f64,
    pub lora_dropout: f32,
    pub top_k: u32,
    pub generator_weight: f64,
    pub scale: f64,
    pub max_passage_tokens: u32,
    pub max_answer_tokens: u32,
    pub test_fraction: f64,
    pub seed: u64,
    /// Save a checkpoint every N optimiser steps (0: only at the end).
    pub checkpoint_every: u32,
    /// Measure the held-out loss every N optimiser steps (0: never).
    pub eval_every: u32,
    pub decay: Decay,
    pub marginalization: Marginalization,
    /// Add the passage-to-question direction to the contrastive loss.
    pub symmetric: bool,
    /// Hard negatives per question, mined from the corpus with the base retriever (0: none).
    pub hard_negatives: u32,
    /// A mined passage is a negative only if it scores below the gold passage by this share of
    /// the gold's score (NV-Retriever's "95% of the positive" is 0.05): near-copies of the gold
    /// passage, and passages that answer the question as well, are false negatives. Missing from
    /// stored settings: 0, as that run mined.
    #[serde(default)]
    pub hard_negative_margin: f64,
    /// Mine the hard negatives again every N optimiser steps with the retriever as trained so far
    /// (its index over the corpus refreshed), so they stay hard as it learns (0: mined once, by
    /// the base retriever). Missing from stored settings: 0.
    #[serde(default)]
    pub refresh_negatives_every: u32,
    /// Which ranking of the corpus hard negatives and distractors are mined from: the retriever's
    /// (`dense`), BM25's (DPR's negatives: passages sharing the question's words) or both fused
    /// (`hybrid`). Missing from stored settings: `dense`.
    pub mining_retrieval: RetrievalMethod,
    /// Where e2e mode's candidate passages come from (`corpus` needs hard negatives). Missing from
    /// stored settings: `batch`.
    #[serde(default)]
    pub candidates: Candidates,
    /// The retriever's loss in e2e mode. Missing from stored settings: `contrastive`.
    #[serde(default)]
    pub retriever_loss: RetrieverLoss,
    /// β of the LM-supervised loss: the generator's log-likelihoods are divided by it before
    /// the softmax that the retriever is pulled towards (smaller: sharper).
    pub lsr_temperature: f64,
    /// RAFT's P: the chance that a question's gold passage is among its e2e candidates (1: always;
    /// below 1 the generator also learns to answer from near misses, and an LM-supervised loss
    /// ranks candidates without the gold one). Missing from stored settings: 1.
    pub oracle_fraction: f64,
    /// Generator mode: hard negatives mined from the corpus by the base retriever and put into each
    /// training prompt beside the gold passage (which is there with chance `oracle_fraction`), in
    /// random order, so the generator learns to answer from the right passage among near misses
    /// (RAFT). 0: the gold passage alone. Missing from stored settings: 0.
    pub distractors: u32,
    /// Retriever mode: inverse cloze pairs added to the triples (ORQA): up to N passages of the
    /// run's corpus each give one, a sentence as the question and the rest of the passage as its
    /// positive, so the retriever learns the documents' own words and names (other modes ignore
    /// it: a pair has no answer to generate). 0: none. Missing from stored settings: 0.
    pub cloze_pairs: u32,
    /// Train on the first N training rows only.
    pub max_train_examples: Option<u32>,
    /// Generator sequences (question × candidate passage) in one graph at a time: more is faster
    /// on a GPU, fewer needs less memory; gradients are the same either way.
    pub sequences_per_chunk: u32,
    /// Activation checkpointing for the generator: keep only each decoder layer's input and run
    /// the layer again in the backward pass. Far less memory for about a third more generator
    /// compute; gradients are the same.
    pub activation_checkpointing: bool,
    /// Linear layers of the retriever that get LoRA adapters (by the last part of their name;
    /// names a model does not have are skipped, so the default covers BERT's `query`, `key`,
    /// `value` and ModernBERT's fused `Wqkv`).
    pub retriever_targets: Vec<String>,
    /// Linear layers of the generator that get LoRA adapters.
    pub generator_targets: Vec<String>,
    /// Checkpoints kept in the run folder (older ones are deleted as new ones are written).
    pub keep_checkpoints: u32,
}

impl Default for Hyper {
    fn default() -> Self {
        Hyper {
            epochs: 1,
            max_steps: None,
            min_steps: 100,
            early_stopping_patience: 3,
            batch_size: 16,
            grad_accum: 1,
            lr: 1e-4,
            warmup_ratio: 0.1,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            lora_r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            top_k: 4,
            generator_weight: 1.0,
            scale: 20.0,
            max_passage_tokens: 128,
            max_answer_tokens: 32,
            test_fraction: 0.2,
            seed: 0,
            checkpoint_every: 50,
            eval_every: 50,
            decay: Decay::Linear,
            marginalization: Marginalization::Sequence,
            symmetric: false,
            hard_negatives: 0,
            hard_negative_margin: 0.05,
            refresh_negatives_every: 0,
            mining_retrieval: RetrievalMethod::Dense,
            candidates: Candidates::Batch,
            retriever_loss: RetrieverLoss::Contrastive,
            lsr_temperature: 1.0,
            oracle_fraction: 1.0,
            distractors: 0,
            cloze_pairs: 0,
            max_train_examples: None,
            sequences_per_chunk: 8,
            activation_checkpointing: false,
            retriever_targets: ["query", "key", "value", "Wqkv"].map(String::from).to_vec(),
            generator_targets: ["q_proj", "k_proj", "v_proj", "o_proj"].map(String::from).to_vec(),
            keep_checkpoints: 3,
        }
    }
}

impl Hyper {
    /// `hyper` with the hard negatives the presets use: 3 per question, mined from the corpus and
    /// mined again every 50 steps. On HaluEval's real test questions over its whole corpus
    /// (`scripts/retrieval-loop-proof.py`, `bench/retrieval-loop-refreshed-halueval-cpu.json`)
    /// they lift the tuned retriever's hit@1 above in-batch negatives alone in each of 3 seeds.
    pub fn with_refreshed_negatives(hyper: Hyper) -> Hyper {
        Hyper { hard_negatives: 3, refresh_negatives_every: 50, ..hyper }
    }

    /// Checks ranges types cannot; the message names the setting and its field. The one validation
    /// of a run's settings: the API, the command line and the trainer all call it.
    pub fn validate(&self) -> Result<(), String> {
        let checks: [(bool, &str); 30] = [
            ((1..=1000).contains(&self.epochs), "epochs must be between 1 and 1000"),
            (
                self.max_steps.is_none_or(|s| (1..=10_000_000).contains(&s)),
                "max steps (max_steps) must be between 1 and 10000000",
            ),
            (self.min_steps <= 10_000_000, "min steps (min_steps) must be between 0 and 10000000"),
            (self.early_stopping_patience <= 1000, "early_stopping_patience must be between 0 and 1000"),
            ((1..=4096).contains(&self.batch_size), "batch size (batch_size) must be between 1 and 4096"),
            ((1..=1024).contains(&self.grad_accum), "gradient accumulation (grad_accum) must be between 1 and 1024"),
            (self.lr > 0.0 && self.lr < 1.0, "the learning rate (lr) must be above 0 and below 1"),
            ((0.0..1.0).contains(&self.warmup_ratio), "the warmup ratio (warmup_ratio) must be in [0, 1)"),
            ((0.0..1.0).contains(&self.weight_decay), "weight decay (weight_decay) must be in [0, 1)"),
            ((0.0..=1e4).contains(&self.max_grad_norm), "max_grad_norm must be between 0 and 10000"),
            ((1..=256).contains(&self.lora_r), "LoRA rank (lora_r) must be between 1 and 256"),
            (self.lora_alpha > 0.0 && self.lora_alpha <= 4096.0, "lora_alpha must be above 0 and at most 4096"),
            ((0.0..1.0).contains(&self.lora_dropout), "LoRA dropout (lora_dropout) must be in [0, 1)"),
            ((1..=64).contains(&self.top_k), "top-k (top_k) must be between 1 and 64"),
            ((0.0..=100.0).contains(&self.generator_weight), "generator_weight must be between 0 and 100"),
            // exp(scale · cos) must stay far from f32's overflow: 1000 keeps every logit finite.
            (self.scale > 0.0 && self.scale <= 1000.0, "scale must be above 0 and at most 1000"),
            ((8..=4096).contains(&self.max_passage_tokens), "max_passage_tokens must be between 8 and 4096"),
            ((1..=1024).contains(&self.max_answer_tokens), "max_answer_tokens must be between 1 and 1024"),
            (self.test_fraction > 0.0 && self.test_fraction < 1.0, "test_fraction must be between 0 and 1"),
            (self.hard_negatives <= 64, "hard_negatives must be at most 64"),
            ((0.0..1.0).contains(&self.hard_negative_margin), "hard_negative_margin must be in [0, 1)"),
            (self.refresh_negatives_every <= 10_000_000, "refresh_negatives_every must be at most 10000000"),
            (
                self.candidates != Candidates::Corpus || self.hard_negatives > 0,
                "corpus candidates (candidates) need hard negatives (hard_negatives of 1 or more)",
            ),
            (
                self.lsr_temperature > 0.0 && self.lsr_temperature <= 100.0,
                "lsr_temperature must be above 0 and at most 100",
            ),
            ((0.0..=1.0).contains(&self.oracle_fraction), "oracle_fraction must be between 0 and 1"),
            (self.distractors <= 16, "distractors must be at most 16"),
            (self.cloze_pairs <= 1_000_000, "cloze_pairs must be at most 1000000"),
            ((1..=4096).contains(&self.sequences_per_chunk), "sequences_per_chunk must be between 1 and 4096"),
            (self.max_train_examples.is_none_or(|n| n >= 1), "max_train_examples must be at least 1"),
            ((1..=1000).contains(&self.keep_checkpoints), "keep_checkpoints must be between 1 and 1000"),
        ];
        if let Some((_, message)) = checks.iter().find(|(ok, _)| !ok) {
            return Err((*message).to_owned());
        }
        for (targets, model) in [(&self.retriever_targets, "retriever"), (&self.generator_targets, "generator")] {
            if targets.is_empty() || targets.iter().any(|t| t.trim().is_empty()) {
                return Err(format!("{model}_targets must name at least one layer, none empty"));
            }
        }
        Ok(())
    }
}

/// A named set of hyper-parameters (`GET /api/v1/train/presets`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preset {
    /// `quick`, `standard` or `gpu`.
    pub id: String,
    pub label: String,
    pub description: String,
    pub hyper: Hyper,
}

/// The presets the web app offers.
pub fn presets() -> Vec<Preset> {
    vec![
        Preset {
            id: "quick".into(),
            label: "Quick (CPU)".into(),
            description: "A few small steps to check that everything works; minutes on a laptop.".into(),
            hyper: Hyper {
                epochs: 3,
                max_steps: Some(6),
                batch_size: 4,
                lr: 3e-4,
                top_k: 2,
                max_passage_tokens: 96,
                max_answer_tokens: 24,
                checkpoint_every: 2,
                eval_every: 2,
                ..Hyper::default()
            },
        },
        Preset {
            id: "standard".into(),
            label: "Standard".into(),
            description: "One pass over the approved triples, more for a small set (at least 100 steps), stopping \
                          early when the held-out loss stops falling; each question also gets 3 hard negatives \
                          from the documents' passages, mined again every 50 steps by the retriever as it \
                          learns (steps take longer; it ranked more real questions' passages first)."
                .into(),
            hyper: Hyper::with_refreshed_negatives(Hyper::default()),
        },
        Preset {
            id: "gpu".into(),
            label: "GPU".into(),
            description: "Larger batches and three epochs, for a CUDA device.".into(),
            hyper: Hyper {
                epochs: 3,
                batch_size: 32,
                lr: 2e-4,
                lora_r: 16,
                lora_alpha: 32.0,
                max_passage_tokens: 256,
                checkpoint_every: 100,
                eval_every: 100,
                ..Hyper::with_refreshed_negatives(Hyper::default())
            },
        },
    ]
}

/// `POST /api/v1/runs`: a training run on the approved triples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRun {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub mode: TrainMode,
    /// Retriever folder name in the models directory; `None`: the default one.
    #[serde(default)]
    pub retriever: Option<String>,
    /// Generator folder name; `None`: the default one.
    #[serde(default)]
    pub generator: Option<String>,
    /// The preset the hyper-parameters started from (recorded for display).
    #[serde(default)]
    pub preset: Option<String>,
    #[serde(default)]
    pub hyper: Hyper,
}

/// One optimiser step's figures, as charts plot them.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StepPoint {
    pub step: u32,
    pub total_steps: u32,
    pub epoch: u32,
    pub loss: f64,
    pub retriever_loss: Option<f64>,
    pub generator_loss: Option<f64>,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_second: f64,
    pub step_seconds: f64,
    pub eta_seconds: f64,
    /// The held-out loss, on the steps where it was measured.
    #[serde(default)]
    pub eval_loss: Option<f64>,
    /// Seconds spent mining the hard negatives again (the corpus index refreshed with the
    /// retriever as trained so far) before this step, on the steps where that happened.
    #[serde(default)]
    pub refresh_seconds: Option<f64>,
}

/// A training run (`GET /api/v1/runs/:id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: i64,
    pub name: String,
    pub status: JobStatus,
    pub mode: TrainMode,
    pub retriever: String,
    pub generator: String,
    #[serde(default)]
    pub preset: Option<String>,
    pub hyper: Hyper,
    /// Approved triples the run trains on, and how many of them are held out for evaluation.
    pub examples: u32,
    pub held_out: u32,
    pub step: u32,
    pub total_steps: u32,
    /// The latest step's figures.
    #[serde(default)]
    pub last: Option<StepPoint>,
    /// Held-out loss at the end, when measured.
    #[serde(default)]
    pub eval_loss: Option<f64>,
    /// Latest checkpoint folder on the server.
    #[serde(default)]
    pub checkpoint: Option<String>,
    /// Device and memory in use, e.g. `cpu · 1.2 GB`.
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    pub created_at: String,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
}

/// Which questions an evaluation asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TestSet {
    /// The approved triples the (first) run held out from training.
    HeldOut,
    /// A QA file uploaded with `POST /api/v1/test-sets`.
    Uploaded { id: i64 },
}

/// `POST /api/v1/evals`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEval {
    /// Tuned runs to compare with the base models (one or two); empty: the base models alone.
    #[serde(default)]
    pub runs: Vec<i64>,
    pub test_set: TestSet,
    /// Also generate answers (EM, F1); slower.
    #[serde(default = "yes")]
    pub answers: bool,
    #[serde(default)]
    pub max_questions: Option<u32>,
}

fn yes() -> bool {
    true
}

/// An uploaded test file (`POST /api/v1/test-sets`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestSetInfo {
    pub id: i64,
    pub name: String,
    pub questions: u32,
    /// Passages the file brings that the store lacks (added to the searched corpus).
    pub passages: u32,
}

/// One system's figures in an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemScores {
    /// `base`, or the run's name.
    pub label: String,
    #[serde(default)]
    pub run_id: Option<i64>,
    /// hit@1/3/5/10, mrr@10, ndcg@10, recall@k by name.
    pub retrieval: BTreeMap<String, f64>,
    #[serde(default)]
    pub exact_match: Option<f64>,
    #[serde(default)]
    pub f1: Option<f64>,
    /// 95% bootstrap interval (over questions) of each metric above, by the same names (`em`, `f1`
    /// for the answers').
    #[serde(default)]
    pub intervals: BTreeMap<String, [f64; 2]>,
}

/// A retrieved passage in the drill-down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retrieved {
    pub text: String,
    pub gold: bool,
}

/// One system's answer to one question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemAnswer {
    pub retrieved: Vec<Retrieved>,
    /// 1-based rank of the gold passage within the first 10; `None`: not found.
    #[serde(default)]
    pub gold_rank: Option<u32>,
    #[serde(default)]
    pub prediction: Option<String>,
    #[serde(default)]
    pub f1: Option<f64>,
}

/// One question of an evaluation, across systems (same order as `EvalReport::systems`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalItem {
    pub question: String,
    pub answer: String,
    pub systems: Vec<SystemAnswer>,
}

/// The result of an evaluation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EvalReport {
    pub questions: u32,
    pub corpus: u32,
    pub systems: Vec<SystemScores>,
    pub items: Vec<EvalItem>,
    /// Retrieval of each system by each method (dense, BM25, hybrid) on the same questions.
    pub methods: Vec<MethodScores>,
}

/// Retrieval metrics of one system ranked by one method (BM25 needs no model: its `system` is
/// empty).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MethodScores {
    pub system: String,
    pub method: RetrievalMethod,
    /// hit@k, mrr@10, ndcg@10 by name, as in [`SystemScores::retrieval`].
    pub retrieval: BTreeMap<String, f64>,
}

/// An evaluation job (`GET /api/v1/evals/:id`); `report` once it succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Eval {
    pub id: i64,
    pub status: JobStatus,
    pub request: NewEval,
    /// Phase and counts while it runs, e.g. `embedding passages` 300/1239.
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub done: u64,
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub report: Option<EvalReport>,
    #[serde(default)]
    pub error: Option<String>,
    pub created_at: String,
    #[serde(default)]
    pub finished_at: Option<String>,
}

/// `POST /api/v1/adapt`: the whole workflow as one job — questions from the documents' passages
/// (what passes the filters is approved), a training run on the approved triples, and an
/// evaluation of base against tuned on the triples the run holds out (BM25 beside them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptRequest {
    /// One document's passages; `None`: every document's.
    #[serde(default)]
    pub document_id: Option<i64>,
    /// Questions asked per passage; the settings' number otherwise.
    #[serde(default)]
    pub questions_per_passage: Option<u32>,
    /// Ask about at most this many passages, spread evenly over the chosen ones.
    #[serde(default)]
    pub limit: Option<u32>,
    /// What the run trains; [`ADAPT_DEFAULT_MODE`] when left out.
    #[serde(default = "adapt_default_mode")]
    pub mode: TrainMode,
    /// Stop training after this many optimiser steps; otherwise the defaults choose (enough epochs
    /// for [`Hyper::min_steps`] steps, early stopping on the held-out loss).
    #[serde(default)]
    pub max_steps: Option<u32>,
    /// Also generate answers in the evaluation (EM, F1); slower.
    #[serde(default)]
    pub answers: bool,
}

/// What an adapt job trains unless told: the retriever, the mode whose gain on real questions is
/// measured (README) and that takes minutes, not hours, on a CPU.
pub const ADAPT_DEFAULT_MODE: TrainMode = TrainMode::Retriever;

fn adapt_default_mode() -> TrainMode {
    ADAPT_DEFAULT_MODE
}

/// Inverse cloze pairs an adapt run in retriever mode adds to its synthetic triples
/// ([`Hyper::cloze_pairs`]): on HaluEval they moved the retriever where the local model's questions
/// did not (README).
pub const ADAPT_CLOZE_PAIRS: u32 = 1000;

/// The settings an adapt run trains with: the defaults (epochs for [`Hyper::min_steps`] steps,
/// early stopping) with [`ADAPT_CLOZE_PAIRS`], stopped after `max_steps` if given.
pub fn adapt_hyper(max_steps: Option<u32>) -> Hyper {
    Hyper { max_steps, cloze_pairs: ADAPT_CLOZE_PAIRS, ..Hyper::default() }
}

/// Fewer approved triples than this are not worth a training run (`attune adapt` and the web
/// app's adapt job stop before training then).
pub const ADAPT_MIN_TRIPLES: usize = 8;

impl Default for AdaptRequest {
    fn default() -> Self {
        AdaptRequest {
            document_id: None,
            questions_per_passage: None,
            limit: None,
            mode: ADAPT_DEFAULT_MODE,
            max_steps: None,
            answers: false,
        }
    }
}

/// Where an adapt job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdaptStage {
    #[default]
    Synthesis,
    Training,
    Evaluation,
    Done,
}

impl AdaptStage {
    pub const ALL: [AdaptStage; 4] =
        [AdaptStage::Synthesis, AdaptStage::Training, AdaptStage::Evaluation, AdaptStage::Done];

    pub fn as_str(self) -> &'static str {
        match self {
            AdaptStage::Synthesis => "synthesis",
            AdaptStage::Training => "training",
            AdaptStage::Evaluation => "evaluation",
            AdaptStage::Done => "done",
        }
    }
}

/// An adapt job (`GET /api/v1/adapt/:id`): its stage and the jobs each stage started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptJob {
    pub id: i64,
    pub status: JobStatus,
    pub stage: AdaptStage,
    pub request: AdaptRequest,
    /// The synthesis run of the first stage.
    #[serde(default)]
    pub synth_run: Option<i64>,
    /// Triples approved for training when synthesis ended (the run's kept ones and those approved
    /// before).
    #[serde(default)]
    pub approved: Option<u64>,
    /// The training run.
    #[serde(default)]
    pub run: Option<i64>,
    /// The evaluation of base against tuned.
    #[serde(default)]
    pub eval: Option<i64>,
    /// Why it failed, or what a finished job could not do (no held-out triples to evaluate on).
    #[serde(default)]
    pub message: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// `POST /api/v1/runs/{id}/export`: `format` is `peft`, `merged` or `gguf`; `quant` (GGUF only)
/// `f32`, `f16` (the default), `q8_0` or `q4_k`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NewExport {
    pub format: String,
    pub quant: Option<String>,
}

/// One file an export wrote.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ExportedFile {
    /// Relative to `Export::dir`.
    pub name: String,
    pub bytes: u64,
}

/// A finished export: where it is on the server's disk and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Export {
    pub run_id: i64,
    pub format: String,
    pub dir: String,
    pub files: Vec<ExportedFile>,
}

/// A retriever + generator pair one can chat with or evaluate (`GET /api/v1/models`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelPair {
    /// `base`, or `run:ID`.
    pub id: String,
    pub label: String,
    pub retriever: String,
    pub generator: String,
    #[serde(default)]
    pub retriever_adapter: Option<String>,
    #[serde(default)]
    pub generator_adapter: Option<String>,
    #[serde(default)]
    pub run_id: Option<i64>,
    /// Headline figures of the latest evaluation that included it (`hit@1`, `mrr@10`, `f1`, …).
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

/// A passage the chat retrieved for a question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Citation {
    pub passage_id: i64,
    pub document_id: i64,
    pub document: String,
    #[serde(default)]
    pub page_start: Option<u32>,
    #[serde(default)]
    pub page_end: Option<u32>,
    /// Cosine similarity to the question.
    pub score: f32,
    pub text: String,
}

/// Figures of one answer.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatStats {
    pub retrieval_ms: f64,
    /// From the question's arrival to the first streamed token (retrieval and prefill included).
    pub first_token_ms: f64,
    pub tokens: u32,
    /// Tokens of the prompt (instructions, passage, earlier turns, question).
    pub prompt_tokens: u32,
    /// Decoding speed: the tokens after the first over the time since the first.
    pub tokens_per_second: f64,
    /// The answer reached the token limit (it may end mid-sentence).
    pub hit_cap: bool,
    /// Generation stopped because the answer began repeating itself.
    pub stopped_repeating: bool,
}

/// How chat answers are generated; sent with each question (every field has its default).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatOptions {
    /// 0: greedy (the same answer every time); higher: more varied.
    pub temperature: f64,
    /// The longest answer, in tokens.
    pub max_tokens: u32,
    /// Above 1 makes tokens already in the answer less likely (1: off).
    pub repetition_penalty: f64,
    /// How passages are found for the question.
    pub retrieval: RetrievalMethod,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            temperature: 0.0,
            max_tokens: 256,
            repetition_penalty: 1.15,
            retrieval: RetrievalMethod::default(),
        }
    }
}

/// How passages are ranked for a question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetrievalMethod {
    /// The retriever's embeddings (cosine similarity).
    Dense,
    /// Words shared with the question (BM25).
    Bm25,
    /// Both rankings fused (their normalised scores weighed): the default, as on both real QA sets
    /// it puts more gold passages first than either ranking alone (README, "Status").
    #[default]
    Hybrid,
}

impl RetrievalMethod {
    pub const ALL: [RetrievalMethod; 3] = [RetrievalMethod::Dense, RetrievalMethod::Bm25, RetrievalMethod::Hybrid];

    /// The name on the wire and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            RetrievalMethod::Dense => "dense",
            RetrievalMethod::Bm25 => "bm25",
            RetrievalMethod::Hybrid => "hybrid",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }
}

impl ChatOptions {
    /// The limits, checked once for the web app and the server.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(format!("temperature must be 0 to 2 (got {})", self.temperature));
        }
        if !(1..=2048).contains(&self.max_tokens) {
            return Err(format!("max_tokens must be 1 to 2048 (got {})", self.max_tokens));
        }
        if !(1.0..=2.0).contains(&self.repetition_penalty) {
            return Err(format!("repetition_penalty must be 1 to 2 (got {})", self.repetition_penalty));
        }
        Ok(())
    }
}

/// `GET /api/v1/train/split`: how the approved triples would be split for a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SplitPreview {
    pub approved: u64,
    pub train: u64,
    pub held_out: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_options_default_and_bounds() {
        assert!(ChatOptions::default().validate().is_ok());
        let old: ChatOptions = serde_json::from_str("{}").unwrap();
        assert_eq!(old, ChatOptions::default(), "an older client's question gets the defaults");
        for bad in [
            ChatOptions { temperature: 3.0, ..ChatOptions::default() },
            ChatOptions { max_tokens: 0, ..ChatOptions::default() },
            ChatOptions { repetition_penalty: 0.5, ..ChatOptions::default() },
            ChatOptions { repetition_penalty: f64::NAN, ..ChatOptions::default() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn retrieval_methods_have_one_name_each_way() {
        for method in RetrievalMethod::ALL {
            assert_eq!(RetrievalMethod::from_name(method.as_str()), Some(method));
            assert_eq!(serde_json::to_value(method).unwrap(), method.as_str());
        }
        assert_eq!(RetrievalMethod::from_name("sparse"), None);
        let options: ChatOptions = serde_json::from_str(r#"{"retrieval":"bm25"}"#).unwrap();
        assert_eq!(options.retrieval, RetrievalMethod::Bm25);
        assert!(serde_json::from_str::<ChatOptions>(r#"{"retrieval":"sparse"}"#).is_err());
    }

    #[test]
    fn every_preset_validates_and_the_longer_ones_refresh_their_hard_negatives() {
        let presets = presets();
        assert_eq!(presets.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["quick", "standard", "gpu"]);
        for preset in &presets {
            assert_eq!(preset.hyper.validate(), Ok(()), "{}", preset.id);
            let refreshed = (preset.hyper.hard_negatives, preset.hyper.refresh_negatives_every);
            let expected = if preset.id == "quick" { (0, 0) } else { (3, 50) };
            assert_eq!(refreshed, expected, "{}", preset.id);
        }
    }

    /// Before the upper bounds, `scale: 1e30` passed and its first step was NaN.
    #[test]
    fn every_number_is_bounded_above_and_below() {
        assert!(Hyper::default().validate().is_ok());
        type Change = fn(&mut Hyper);
        let cases: [(&str, Change); 11] = [
            ("oracle_fraction", |h| h.oracle_fraction = 1.5),
            ("oracle_fraction", |h| h.oracle_fraction = f64::NAN),
            ("scale", |h| h.scale = 1e30),
            ("scale", |h| h.scale = f64::NAN),
            ("lora_alpha", |h| h.lora_alpha = f64::INFINITY),
            ("generator_weight", |h| h.generator_weight = 1e12),
            ("max_grad_norm", |h| h.max_grad_norm = f64::NAN),
            ("lr", |h| h.lr = f64::NAN),
            ("warmup_ratio", |h| h.warmup_ratio = -0.5),
            ("max_steps", |h| h.max_steps = Some(u32::MAX)),
            ("batch_size", |h| h.batch_size = 0),
        ];
        for (field, change) in cases {
            let mut hyper = Hyper::default();
            change(&mut hyper);
            let error = hyper.validate().unwrap_err();
            assert!(error.contains(field), "{field}: {error}");
        }
    }
}
