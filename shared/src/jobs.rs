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

/// Every hyper-parameter a run takes from the web app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hyper {
    pub epochs: u32,
    /// Stop after this many optimiser steps (the schedule spans them); `None`: all epochs.
    pub max_steps: Option<u32>,
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
    pub checkpoint_every: u32,
}

impl Default for Hyper {
    fn default() -> Self {
        Hyper {
            epochs: 1,
            max_steps: None,
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
        }
    }
}

impl Hyper {
    /// Checks ranges types cannot; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let checks: [(bool, &str); 14] = [
            ((1..=1000).contains(&self.epochs), "epochs must be between 1 and 1000"),
            (self.max_steps.is_none_or(|s| s >= 1), "max_steps must be at least 1"),
            ((1..=4096).contains(&self.batch_size), "batch_size must be between 1 and 4096"),
            ((1..=1024).contains(&self.grad_accum), "grad_accum must be between 1 and 1024"),
            (self.lr > 0.0 && self.lr < 1.0, "lr must be above 0 and below 1"),
            ((0.0..1.0).contains(&self.warmup_ratio), "warmup_ratio must be in [0, 1)"),
            ((0.0..1.0).contains(&self.weight_decay), "weight_decay must be in [0, 1)"),
            ((1..=256).contains(&self.lora_r), "lora_r must be between 1 and 256"),
            ((0.0..1.0).contains(&self.lora_dropout), "lora_dropout must be in [0, 1)"),
            ((1..=64).contains(&self.top_k), "top_k must be between 1 and 64"),
            (self.scale > 0.0, "scale must be positive"),
            ((8..=4096).contains(&self.max_passage_tokens), "max_passage_tokens must be between 8 and 4096"),
            ((1..=1024).contains(&self.max_answer_tokens), "max_answer_tokens must be between 1 and 1024"),
            (self.test_fraction > 0.0 && self.test_fraction < 1.0, "test_fraction must be between 0 and 1"),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err((*message).to_owned()),
            None if self.lora_alpha <= 0.0 || self.max_grad_norm < 0.0 || self.generator_weight < 0.0 => {
                Err("lora_alpha must be positive; max_grad_norm and generator_weight not negative".to_owned())
            }
            None => Ok(()),
        }
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
                ..Hyper::default()
            },
        },
        Preset {
            id: "standard".into(),
            label: "Standard".into(),
            description: "One pass over the approved triples; the default of `attune train`.".into(),
            hyper: Hyper::default(),
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
                ..Hyper::default()
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
    /// Decoding speed: the tokens after the first over the time since the first.
    pub tokens_per_second: f64,
}
