//! The training loop: LoRA adapters on the models the mode trains, AdamW with a warmup+decay
//! schedule, gradient accumulation that sums every micro-batch's gradients, clipping, seeded data
//! order and dropout (the same seed gives the same run), checkpoints every N steps that a resumed
//! run continues from exactly, and a closed set of events for an observer that may cancel.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::data::{CsvColumns, SplitOptions, Triple};
use super::error::{Result, TrainError};
use super::optim::{AdamW, AdamWConfig, Decay, Schedule, clip_grad_norm};
#[cfg(test)]
use super::step::batch_loss;
use super::step::{LossConfig, Models, add_gradient, batch_gradients};
use crate::model::generator::Generator;
use crate::model::layers::{DropoutRng, Mode};
use crate::model::lora::{self, LoraConfig};
use crate::model::retriever::{Retriever, TextRole};

/// Everything that defines a run; saved as `config.json` in the run's folder, and read back by
/// `--resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The data file (triples or the shared QA format).
    pub data: PathBuf,
    #[serde(default)]
    pub columns: CsvColumns,
    #[serde(default)]
    pub split: SplitOptions,
    /// Use only the first N training rows.
    #[serde(default)]
    pub max_train_examples: Option<usize>,
    pub retriever: PathBuf,
    pub generator: PathBuf,
    pub device: String,
    #[serde(default = "default_dtype")]
    pub dtype: String,
    pub loss: LossConfig,
    pub epochs: usize,
    /// Stop after this many optimiser steps (the schedule spans them).
    pub max_steps: Option<usize>,
    /// Examples per micro-batch (the in-batch negatives of the contrastive loss).
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed into one optimiser step.
    pub grad_accum: usize,
    pub lr: f64,
    pub warmup_ratio: f64,
    pub decay: Decay,
    pub optimizer: AdamWConfig,
    /// Clip the global gradient norm to this (0: no clipping).
    pub max_grad_norm: f64,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f32,
    pub retriever_targets: Vec<String>,
    pub generator_targets: Vec<String>,
    /// Hard negatives per question, mined with the base retriever from the corpus (0: none).
    pub hard_negatives: usize,
    pub seed: u64,
    /// Save a checkpoint every N optimiser steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Compute the held-out loss every N steps (0: never).
    #[serde(default)]
    pub eval_every: usize,
}

fn default_dtype() -> String {
    "auto".into()
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: PathBuf::new(),
            columns: CsvColumns::default(),
            split: SplitOptions::default(),
            max_train_examples: None,
            retriever: PathBuf::from("models/all-MiniLM-L6-v2"),
            generator: PathBuf::from("models/SmolLM2-135M-Instruct"),
            device: "auto".into(),
            dtype: default_dtype(),
            loss: LossConfig::default(),
            epochs: 1,
            max_steps: None,
            batch_size: 16,
            grad_accum: 1,
            lr: 1e-4,
            warmup_ratio: 0.1,
            decay: Decay::Linear,
            optimizer: AdamWConfig::default(),
            max_grad_norm: 1.0,
            lora_r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            retriever_targets: vec!["query".into(), "key".into(), "value".into()],
            generator_targets: vec!["q_proj".into(), "k_proj".into(), "v_proj".into(), "o_proj".into()],
            hard_negatives: 0,
            seed: 0,
            checkpoint_every: 0,
            eval_every: 0,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(TrainError::Config(m.to_owned()));
        if self.batch_size == 0 {
            return bad("batch size must be at least 1");
        }
        if self.grad_accum == 0 {
            return bad("gradient accumulation must be at least 1");
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return bad("epochs must be at least 1");
        }
        if self.max_steps == Some(0) {
            return bad("max steps must be at least 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("the learning rate must be above 0");
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return bad("the warmup ratio must be within [0, 1]");
        }
        if self.lora_r == 0 {
            return bad("LoRA rank must be at least 1");
        }
        if self.loss.top_k == 0 {
            return bad("top-k must be at least 1");
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad("LoRA dropout must be within [0, 1)");
        }
        Ok(())
    }

    /// Optimiser steps in one pass over `examples` training examples.
    pub fn steps_per_epoch(&self, examples: usize) -> usize {
        examples.div_ceil(self.batch_size * self.grad_accum).max(1)
    }

    pub fn total_steps(&self, examples: usize) -> usize {
        let by_epochs = self.epochs.max(1) * self.steps_per_epoch(examples);
        self.max_steps.map_or(by_epochs, |m| if self.epochs == 0 { m } else { m.min(by_epochs) })
    }
}

/// One optimiser step's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Steps done so far (1 after the first).
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    pub loss: f64,
    pub retriever_loss: Option<f64>,
    pub generator_loss: Option<f64>,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub tokens_per_second: f64,
    pub step_seconds: f64,
    pub eta_seconds: f64,
}

/// What the trainer reports. Closed: the observer sees every kind of moment a run has.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TrainEvent {
    Started {
        total_steps: usize,
        steps_per_epoch: usize,
        examples: usize,
        resumed_at: Option<usize>,
    },
    Step(StepReport),
    /// The loss on held-out triples (no dropout, no update).
    Eval {
        step: usize,
        loss: f64,
        retriever_loss: Option<f64>,
        generator_loss: Option<f64>,
        examples: usize,
    },
    Checkpoint {
        step: usize,
        path: PathBuf,
    },
    Finished {
        step: usize,
        output: PathBuf,
        seconds: f64,
    },
    Failed {
        step: usize,
        error: String,
    },
    Cancelled {
        step: usize,
        checkpoint: PathBuf,
    },
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Finished { steps: usize, last: Option<StepReport> },
    Cancelled { steps: usize, checkpoint: PathBuf },
}

/// The base models a run trains (adapters are attached here).
pub struct BaseModels {
    pub retriever: Option<Retriever>,
    pub generator: Option<Generator>,
}

/// A checkpoint's bookkeeping (`state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    /// Data order and dropout are derived from the seed and the step, so they need no saved state.
    seed: u64,
    rng: String,
}

const STATE_FILE: &str = "state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const CONFIG_FILE: &str = "config.json";
const LOG_FILE: &str = "log.jsonl";

/// The latest checkpoint under a run folder, or `dir` itself when it is a checkpoint.
pub fn latest_checkpoint(dir: &Path) -> Result<PathBuf> {
    if dir.join(STATE_FILE).is_file() {
        return Ok(dir.to_owned());
    }
    let checkpoints = dir.join("checkpoints");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&checkpoints)
        .map_err(|_| TrainError::Checkpoint { path: dir.to_owned(), message: "no checkpoints in this run".into() })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(STATE_FILE).is_file())
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| TrainError::Checkpoint { path: dir.to_owned(), message: "no checkpoints in this run".into() })
}

/// Reads a run's `config.json`.
pub fn read_config(run_dir: &Path) -> Result<TrainConfig> {
    let path = run_dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|error| TrainError::Io { path: path.clone(), error })?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint { path, message: e.to_string() })
}

/// A training run, ready to step.
pub struct Trainer {
    config: TrainConfig,
    out: PathBuf,
    train: Vec<Triple>,
    held_out: Vec<Triple>,
    retriever: Option<Retriever>,
    generator: Option<Generator>,
    retriever_vars: Option<VarMap>,
    generator_vars: Option<VarMap>,
    optimizer: AdamW,
    /// Hard negatives by training example.
    negatives: Vec<Vec<String>>,
    dropout: DropoutRng,
    step: usize,
}

impl Trainer {
    /// Prepares a run in `out`: attaches fresh, seeded adapters (or, with `resume`, the
    /// checkpoint's) and writes `config.json`. `held_out` triples give the `Eval` events' loss.
    pub fn new(
        config: TrainConfig,
        out: &Path,
        models: BaseModels,
        train: Vec<Triple>,
        held_out: Vec<Triple>,
        corpus: &[String],
        resume: Option<&Path>,
    ) -> Result<Self> {
        config.validate()?;
        if train.is_empty() {
            return Err(TrainError::Data("no training examples".into()));
        }
        let BaseModels { mut retriever, mut generator } = models;
        let mode = config.loss.mode;
        if mode.trains_retriever() && retriever.is_none() {
            return Err(TrainError::Config("this mode trains a retriever: none was given".into()));
        }
        if mode.trains_generator() && generator.is_none() {
            return Err(TrainError::Config("this mode trains a generator: none was given".into()));
        }
        std::fs::create_dir_all(out).map_err(|error| TrainError::Io { path: out.to_owned(), error })?;
        let negatives = match (&retriever, config.hard_negatives) {
            (Some(r), n) if n > 0 && mode.trains_retriever() => load_or_mine_negatives(out, r, &train, corpus, n)?,
            _ => vec![Vec::new(); train.len()],
        };
        let mut params = Vec::new();
        let mut retriever_vars = None;
        let mut generator_vars = None;
        let mut init_rng = StdRng::seed_from_u64(config.seed);
        if mode.trains_retriever() {
            let r = retriever.as_mut().expect("checked above");
            r.set_max_length(config.loss.max_passage_tokens)?;
            let lora_config = lora_config(&config, Part::Retriever);
            let device = r.model().device().clone();
            let vars = lora::attach_trainable(r.model_mut(), &lora_config, &device)?;
            seeded_init(&vars, &mut init_rng)?;
            params.extend(named_vars(&vars, "retriever"));
            retriever_vars = Some(vars);
        }
        if mode.trains_generator() {
            let g = generator.as_mut().expect("checked above");
            let lora_config = lora_config(&config, Part::Generator);
            let device = g.device().clone();
            let vars = lora::attach_trainable(g.model_mut(), &lora_config, &device)?;
            seeded_init(&vars, &mut init_rng)?;
            params.extend(named_vars(&vars, "generator"));
            generator_vars = Some(vars);
        }
        let optimizer = AdamW::new(params, config.optimizer)?;
        let mut trainer = Trainer {
            dropout: DropoutRng::new(config.seed),
            config,
            out: out.to_owned(),
            train,
            held_out,
            retriever,
            generator,
            retriever_vars,
            generator_vars,
            optimizer,
            negatives,
            step: 0,
        };
        match resume {
            Some(checkpoint) => trainer.restore(checkpoint)?,
            None => {
                let json = serde_json::to_string_pretty(&trainer.config).expect("config serializes");
                let path = out.join(CONFIG_FILE);
                std::fs::write(&path, json).map_err(|error| TrainError::Io { path, error })?;
                let log = out.join(LOG_FILE);
                std::fs::write(&log, "").map_err(|error| TrainError::Io { path: log, error })?;
            }
        }
        Ok(trainer)
    }

    pub fn step(&self) -> usize {
        self.step
    }

    pub fn total_steps(&self) -> usize {
        self.config.total_steps(self.train.len())
    }

    pub fn retriever(&self) -> Option<&Retriever> {
        self.retriever.as_ref()
    }

    pub fn generator(&self) -> Option<&Generator> {
        self.generator.as_ref()
    }

    /// Runs to the end (or until the observer breaks), reporting every step.
    pub fn run(&mut self, observer: &mut dyn FnMut(&TrainEvent) -> ControlFlow<()>) -> Result<Outcome> {
        match self.run_inner(observer) {
            Ok(outcome) => Ok(outcome),
            Err(error) => {
                let _ = observer(&TrainEvent::Failed { step: self.step, error: error.to_string() });
                Err(error)
            }
        }
    }

    fn run_inner(&mut self, observer: &mut dyn FnMut(&TrainEvent) -> ControlFlow<()>) -> Result<Outcome> {
        let started = Instant::now();
        let total = self.total_steps();
        let steps_per_epoch = self.config.steps_per_epoch(self.train.len());
        let resumed_at = (self.step > 0).then_some(self.step);
        let mut cancel = observer(&TrainEvent::Started {
            total_steps: total,
            steps_per_epoch,
            examples: self.train.len(),
            resumed_at,
        })
        .is_break();
        let mut last = None;
        let mut step_times = Vec::new();
        while self.step < total && !cancel {
            let report = self.train_step(total, &step_times)?;
            step_times.push(report.step_seconds);
            self.append_log(&report)?;
            cancel |= observer(&TrainEvent::Step(report.clone())).is_break();
            last = Some(report);
            if self.config.eval_every > 0 && self.step % self.config.eval_every == 0 && !self.held_out.is_empty() {
                let event = self.held_out_loss()?;
                cancel |= observer(&event).is_break();
            }
            let every = self.config.checkpoint_every;
            if every > 0 && self.step % every == 0 && self.step < total {
                let path = self.save_checkpoint()?;
                cancel |= observer(&TrainEvent::Checkpoint { step: self.step, path }).is_break();
            }
        }
        if cancel && self.step < total {
            let checkpoint = self.save_checkpoint()?;
            let _ = observer(&TrainEvent::Cancelled { step: self.step, checkpoint: checkpoint.clone() });
            return Ok(Outcome::Cancelled { steps: self.step, checkpoint });
        }
        let path = self.save_checkpoint()?;
        let _ = observer(&TrainEvent::Checkpoint { step: self.step, path });
        self.save_adapters(&self.out.clone())?;
        let _ = observer(&TrainEvent::Finished {
            step: self.step,
            output: self.out.clone(),
            seconds: started.elapsed().as_secs_f64(),
        });
        Ok(Outcome::Finished { steps: self.step, last })
    }

    /// The training examples of optimiser step `step`, as micro-batches (indices into `train`).
    fn micro_batches(&self, step: usize) -> Vec<Vec<usize>> {
        let n = self.train.len();
        let per_epoch = self.config.steps_per_epoch(n);
        let (epoch, within) = (step / per_epoch, step % per_epoch);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut StdRng::seed_from_u64(mix(self.config.seed, epoch as u64, 0x0da7a)));
        let size = self.config.batch_size;
        (0..self.config.grad_accum)
            .map(|m| {
                let start = (within * self.config.grad_accum + m) * size;
                order[start.min(n)..(start + size).min(n)].to_vec()
            })
            .filter(|b| !b.is_empty())
            .collect()
    }

    fn train_step(&mut self, total: usize, step_times: &[f64]) -> Result<StepReport> {
        let started = Instant::now();
        let micro_batches = self.micro_batches(self.step);
        let examples: usize = micro_batches.iter().map(Vec::len).sum();
        let params: Vec<Var> = self.optimizer.params().iter().map(|(_, v)| v.clone()).collect();
        let mut grads: Vec<Option<Tensor>> = vec![None; params.len()];
        let (mut loss, mut retriever_loss, mut generator_loss, mut tokens) = (0.0, None, None, 0usize);
        let models = Models { retriever: self.retriever.as_ref(), generator: self.generator.as_ref() };
        for (m, indices) in micro_batches.iter().enumerate() {
            self.dropout.reseed(mix(self.config.seed, self.step as u64, m as u64));
            let batch: Vec<Triple> = indices.iter().map(|&i| self.train[i].clone()).collect();
            let negatives: Vec<String> = indices.iter().flat_map(|&i| self.negatives[i].iter().cloned()).collect();
            // Each micro-batch's mean loss weighs by its share of the step's examples, so the
            // summed gradients are those of the mean over all of them.
            let share = indices.len() as f64 / examples as f64;
            let out = batch_gradients(
                models,
                &batch,
                &negatives,
                &self.config.loss,
                Mode::Train(&self.dropout),
                share,
                &params,
            )?;
            for (slot, g) in grads.iter_mut().zip(&out.grads) {
                if let Some(g) = g {
                    add_gradient(slot, g)?;
                }
            }
            loss += share * out.loss;
            if let Some(r) = out.retriever {
                *retriever_loss.get_or_insert(0.0) += share * r;
            }
            if let Some(g) = out.generator {
                *generator_loss.get_or_insert(0.0) += share * g;
            }
            tokens += out.tokens;
        }
        let grad_norm = clip_grad_norm(&mut grads, self.config.max_grad_norm)?;
        let lr = self.schedule(total).lr(self.step);
        self.optimizer.step(&grads, lr)?;
        self.step += 1;
        let seconds = started.elapsed().as_secs_f64();
        let recent: Vec<f64> = step_times.iter().rev().take(20).copied().chain(std::iter::once(seconds)).collect();
        let mean = recent.iter().sum::<f64>() / recent.len() as f64;
        Ok(StepReport {
            step: self.step,
            total_steps: total,
            epoch: (self.step - 1) / self.config.steps_per_epoch(self.train.len()),
            loss,
            retriever_loss,
            generator_loss,
            lr,
            grad_norm,
            tokens_per_second: tokens as f64 / seconds.max(1e-9),
            step_seconds: seconds,
            eta_seconds: mean * total.saturating_sub(self.step) as f64,
        })
    }

    fn schedule(&self, total: usize) -> Schedule {
        Schedule {
            peak: self.config.lr,
            warmup_steps: (total as f64 * self.config.warmup_ratio).round() as usize,
            total_steps: total,
            decay: self.config.decay,
        }
    }

    /// The loss on (up to 64) held-out triples, without dropout or update.
    fn held_out_loss(&self) -> Result<TrainEvent> {
        let models = Models { retriever: self.retriever.as_ref(), generator: self.generator.as_ref() };
        let examples: Vec<Triple> = self.held_out.iter().take(64).cloned().collect();
        let (mut loss, mut retriever_loss, mut generator_loss) = (0.0, None, None);
        let chunks: Vec<&[Triple]> = examples.chunks(self.config.batch_size).collect();
        for chunk in &chunks {
            let out = batch_gradients(models, chunk, &[], &self.config.loss, Mode::Inference, 1.0, &[])?;
            let share = chunk.len() as f64 / examples.len() as f64;
            loss += share * out.loss;
            if let Some(r) = out.retriever {
                *retriever_loss.get_or_insert(0.0) += share * r;
            }
            if let Some(g) = out.generator {
                *generator_loss.get_or_insert(0.0) += share * g;
            }
        }
        Ok(TrainEvent::Eval { step: self.step, loss, retriever_loss, generator_loss, examples: examples.len() })
    }

    fn append_log(&self, report: &StepReport) -> Result<()> {
        use std::io::Write;
        let path = self.out.join(LOG_FILE);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|error| TrainError::Io { path: path.clone(), error })?;
        writeln!(file, "{}", serde_json::to_string(report).expect("report serializes"))
            .map_err(|error| TrainError::Io { path, error })
    }

    /// Adapters in PEFT's layout: `<dir>/retriever/` and `<dir>/generator/`.
    fn save_adapters(&self, dir: &Path) -> Result<()> {
        if let Some(vars) = &self.retriever_vars {
            lora::save(&dir.join("retriever"), vars, &lora_config(&self.config, Part::Retriever))?;
        }
        if let Some(vars) = &self.generator_vars {
            lora::save(&dir.join("generator"), vars, &lora_config(&self.config, Part::Generator))?;
        }
        Ok(())
    }

    /// Writes `checkpoints/step-NNNNNN/`: adapters, optimiser moments, step. Written to a temporary
    /// folder and renamed, so a crash mid-write never leaves a half checkpoint that looks whole.
    fn save_checkpoint(&self) -> Result<PathBuf> {
        let root = self.out.join("checkpoints");
        let dir = root.join(format!("step-{:06}", self.step));
        let partial = root.join(format!(".partial-step-{:06}", self.step));
        let io = |path: &Path, error| TrainError::Io { path: path.to_owned(), error };
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(|e| io(&partial, e))?;
        }
        std::fs::create_dir_all(&partial).map_err(|e| io(&partial, e))?;
        self.save_adapters(&partial)?;
        candle_core::safetensors::save(&self.optimizer.state(), partial.join(OPTIMIZER_FILE))?;
        let state = CheckpointState {
            step: self.step,
            seed: self.config.seed,
            rng: "data order and dropout masks are derived from (seed, step); adapters start from (seed)".into(),
        };
        let state_path = partial.join(STATE_FILE);
        std::fs::write(&state_path, serde_json::to_string_pretty(&state).expect("state serializes"))
            .map_err(|e| io(&state_path, e))?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
        }
        std::fs::rename(&partial, &dir).map_err(|e| io(&dir, e))?;
        Ok(dir)
    }

    /// Loads a checkpoint's adapters and optimiser state, and continues from its step.
    fn restore(&mut self, checkpoint: &Path) -> Result<()> {
        let bad = |message: String| TrainError::Checkpoint { path: checkpoint.to_owned(), message };
        let text = std::fs::read_to_string(checkpoint.join(STATE_FILE)).map_err(|e| bad(e.to_string()))?;
        let state: CheckpointState = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if state.seed != self.config.seed {
            return Err(bad(format!("written with seed {}, this run has seed {}", state.seed, self.config.seed)));
        }
        for (vars, name) in [(&mut self.retriever_vars, "retriever"), (&mut self.generator_vars, "generator")] {
            if let Some(vars) = vars {
                let file = checkpoint.join(name).join(lora::ADAPTER_WEIGHTS);
                vars.load(&file).map_err(|e| bad(format!("{name} adapter: {e}")))?;
            }
        }
        let device =
            self.optimizer.params().first().map(|(_, v)| v.device().clone()).unwrap_or(candle_core::Device::Cpu);
        let moments = candle_core::safetensors::load(checkpoint.join(OPTIMIZER_FILE), &device)?;
        self.optimizer.load_state(&moments, state.step)?;
        self.step = state.step;
        // The log keeps only the steps up to the checkpoint.
        let log = self.out.join(LOG_FILE);
        if let Ok(text) = std::fs::read_to_string(&log) {
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| serde_json::from_str::<StepReport>(l).is_ok_and(|r| r.step <= state.step))
                .collect();
            let mut joined = kept.join("\n");
            if !joined.is_empty() {
                joined.push('\n');
            }
            std::fs::write(&log, joined).map_err(|error| TrainError::Io { path: log.clone(), error })?;
        }
        Ok(())
    }
}

/// The model a run's adapter belongs to.
#[derive(Clone, Copy)]
enum Part {
    Retriever,
    Generator,
}

/// The run's LoRA settings for one model, naming its base model as PEFT does.
fn lora_config(config: &TrainConfig, part: Part) -> LoraConfig {
    let (targets, base) = match part {
        Part::Retriever => (&config.retriever_targets, &config.retriever),
        Part::Generator => (&config.generator_targets, &config.generator),
    };
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    let mut lora_config = LoraConfig::new(config.lora_r, config.lora_alpha, config.lora_dropout, &targets);
    lora_config.base_model_name_or_path = Some(base.display().to_string());
    lora_config
}

/// A seed for (run seed, a, b): splitmix-style, so nearby steps get unrelated streams.
fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut z = seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// PEFT's initialisation, seeded: `lora_A` uniform in ±1/√fan_in (Kaiming-uniform with a = √5),
/// `lora_B` zero, so a fresh adapter changes nothing.
fn seeded_init(vars: &VarMap, rng: &mut StdRng) -> Result<()> {
    let data = vars.data().lock().map_err(|_| TrainError::Config("adapter variables poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let values: Vec<f32> = if name.contains("lora_A") {
            let fan_in = var.dims().last().copied().unwrap_or(1) as f32;
            let bound = 1.0 / fan_in.sqrt();
            (0..var.elem_count()).map(|_| rng.random_range(-bound..bound)).collect()
        } else {
            vec![0.0; var.elem_count()]
        };
        let tensor = Tensor::from_vec(values, var.shape(), var.device())?.to_dtype(var.dtype())?;
        var.set(&tensor)?;
    }
    Ok(())
}

fn named_vars(vars: &VarMap, prefix: &str) -> Vec<(String, Var)> {
    let data = vars.data().lock().expect("adapter variables");
    let mut named: Vec<(String, Var)> = data.iter().map(|(k, v)| (format!("{prefix}.{k}"), v.clone())).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// Hard negatives per training example: the best-scoring corpus passages (by the base retriever)
/// that are not the example's gold passage. Saved as `hard_negatives.json` so a resumed run
/// reuses them rather than mining again.
fn load_or_mine_negatives(
    out: &Path,
    retriever: &Retriever,
    train: &[Triple],
    corpus: &[String],
    per_question: usize,
) -> Result<Vec<Vec<String>>> {
    let path = out.join("hard_negatives.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(saved) = serde_json::from_str::<Vec<Vec<String>>>(&text) {
            if saved.len() == train.len() {
                return Ok(saved);
            }
        }
    }
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
    let json = serde_json::to_string(&negatives).expect("strings serialize");
    std::fs::write(&path, json).map_err(|error| TrainError::Io { path, error })?;
    Ok(negatives)
}

/// Gradients summed over micro-batches, for tests: the mean-loss gradient of `batch` split into
/// `accum` micro-batches (exposed so the accumulation can be checked against one big batch).
#[cfg(test)]
fn accumulated_gradients(trainer: &Trainer, batch: &[Triple], accum: usize) -> Vec<Tensor> {
    use std::collections::HashMap;
    let params: Vec<Var> = trainer.optimizer.params().iter().map(|(_, v)| v.clone()).collect();
    let models = Models { retriever: trainer.retriever.as_ref(), generator: trainer.generator.as_ref() };
    let mut sums: HashMap<usize, Tensor> = HashMap::new();
    let size = batch.len().div_ceil(accum);
    for chunk in batch.chunks(size) {
        let out = batch_loss(models, chunk, &[], &trainer.config.loss, Mode::Inference).unwrap();
        let share = chunk.len() as f64 / batch.len() as f64;
        let store = (&out.total * share).unwrap().backward().unwrap();
        for (i, var) in params.iter().enumerate() {
            let g = store.get(var).unwrap().clone();
            let next = match sums.remove(&i) {
                Some(sum) => (sum + g).unwrap(),
                None => g,
            };
            sums.insert(i, next);
        }
    }
    (0..params.len()).map(|i| sums.remove(&i).unwrap()).collect()
}

#[cfg(test)]
mod tests {
    use candle_core::DType;

    use super::*;
    use crate::train::step::{Marginalization, TrainMode};
    use crate::train::test_models::tiny_models;

    fn triples(n: usize) -> Vec<Triple> {
        let passages = ["the cat sat on the mat .", "a dog ran in the park .", "the dogs sat in the park ."];
        let questions =
            ["what is the cat ?", "what ran in the park ?", "what sat on the mat ?", "what is in the park ?"];
        let answers = ["the mat", "a dog", "the cat", "dogs"];
        (0..n)
            .map(|i| Triple {
                question: questions[i % 4].into(),
                passage: passages[i % 3].into(),
                answer: answers[(i + 1) % 4].into(),
            })
            .collect()
    }

    fn config(mode: TrainMode) -> TrainConfig {
        TrainConfig {
            loss: LossConfig { mode, top_k: 2, marginalization: Marginalization::Sequence, ..Default::default() },
            batch_size: 3,
            epochs: 3,
            lr: 5e-3,
            lora_r: 2,
            lora_alpha: 4.0,
            lora_dropout: 0.1,
            retriever_targets: vec!["query".into(), "value".into()],
            generator_targets: vec!["q_proj".into(), "v_proj".into()],
            seed: 11,
            ..Default::default()
        }
    }

    fn trainer(config: TrainConfig, out: &Path, resume: Option<&Path>) -> Trainer {
        let (retriever, generator, _, _) = tiny_models(DType::F32, 5);
        let models = BaseModels { retriever: Some(retriever), generator: Some(generator) };
        Trainer::new(config, out, models, triples(10), triples(4), &[], resume).unwrap()
    }

    fn losses(events: &[TrainEvent]) -> Vec<f64> {
        events.iter().filter_map(|e| if let TrainEvent::Step(r) = e { Some(r.loss) } else { None }).collect()
    }

    #[test]
    fn e2e_training_reduces_the_loss_and_writes_peft_adapters() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = trainer(TrainConfig { epochs: 8, ..config(TrainMode::E2e) }, dir.path(), None);
        let mut events = Vec::new();
        let outcome = t.run(&mut |e| {
            events.push(e.clone());
            ControlFlow::Continue(())
        });
        let Ok(Outcome::Finished { steps, .. }) = outcome else { panic!("{outcome:?}") };
        assert_eq!(steps, 8 * 4, "10 examples in batches of 3: 4 steps an epoch");
        let l = losses(&events);
        let (first, last) = (l[..4].iter().sum::<f64>(), l[l.len() - 4..].iter().sum::<f64>());
        assert!(last < first * 0.9, "loss went from {first} to {last}");
        assert!(matches!(events.first(), Some(TrainEvent::Started { total_steps: 32, .. })));
        assert!(matches!(events.last(), Some(TrainEvent::Finished { step: 32, .. })));
        for part in ["retriever", "generator"] {
            assert!(dir.path().join(part).join(lora::ADAPTER_WEIGHTS).is_file());
            assert!(dir.path().join(part).join(lora::ADAPTER_CONFIG).is_file());
        }
        let log = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        assert_eq!(log.lines().count(), 32);
        assert_eq!(read_config(dir.path()).unwrap(), t.config);
    }

    #[test]
    fn the_same_seed_gives_the_same_run_and_another_seed_another() {
        let run = |seed: u64| {
            let dir = tempfile::tempdir().unwrap();
            let mut t = trainer(TrainConfig { seed, max_steps: Some(4), ..config(TrainMode::E2e) }, dir.path(), None);
            let mut events = Vec::new();
            t.run(&mut |e| {
                events.push(e.clone());
                ControlFlow::Continue(())
            })
            .unwrap();
            losses(&events)
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    /// 10 steps straight, and 5 + cancel + resume + 5, end at the same loss (and weights).
    #[test]
    fn a_resumed_run_continues_exactly() {
        let base = TrainConfig { max_steps: Some(10), epochs: 5, checkpoint_every: 5, ..config(TrainMode::E2e) };
        let straight_dir = tempfile::tempdir().unwrap();
        let mut straight = trainer(base.clone(), straight_dir.path(), None);
        let mut straight_events = Vec::new();
        straight
            .run(&mut |e| {
                straight_events.push(e.clone());
                ControlFlow::Continue(())
            })
            .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let mut first = trainer(base.clone(), dir.path(), None);
        let mut first_events = Vec::new();
        let outcome = first
            .run(&mut |e| {
                first_events.push(e.clone());
                if matches!(e, TrainEvent::Checkpoint { step: 5, .. }) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
        assert!(matches!(outcome, Outcome::Cancelled { steps: 5, .. }), "{outcome:?}");
        drop(first);
        let checkpoint = latest_checkpoint(dir.path()).unwrap();
        assert!(checkpoint.ends_with("step-000005"));
        let mut resumed = trainer(read_config(dir.path()).unwrap(), dir.path(), Some(&checkpoint));
        assert_eq!(resumed.step(), 5);
        let mut resumed_events = Vec::new();
        resumed
            .run(&mut |e| {
                resumed_events.push(e.clone());
                ControlFlow::Continue(())
            })
            .unwrap();
        assert!(matches!(resumed_events.first(), Some(TrainEvent::Started { resumed_at: Some(5), .. })));
        let mut joined = losses(&first_events);
        joined.extend(losses(&resumed_events));
        assert_eq!(joined, losses(&straight_events), "same losses step by step");
        let weights = |dir: &Path| {
            candle_core::safetensors::load(dir.join("generator").join(lora::ADAPTER_WEIGHTS), &candle_core::Device::Cpu)
                .unwrap()
        };
        let (a, b) = (weights(straight_dir.path()), weights(dir.path()));
        for (name, tensor) in &a {
            let diff = (tensor - &b[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(diff, 0.0, "{name}");
        }
        let log = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        assert_eq!(log.lines().count(), 10, "the log has each step once");
    }

    /// Accumulating 3 micro-batches gives the gradient of the whole batch's mean loss (generator
    /// mode: examples are independent, so the two must agree exactly up to rounding).
    #[test]
    fn gradient_accumulation_really_accumulates() {
        let dir = tempfile::tempdir().unwrap();
        let t = trainer(config(TrainMode::Generator), dir.path(), None);
        // Make B non-zero so every adapter weight has a gradient.
        for (_, var) in t.optimizer.params() {
            let values: Vec<f32> = (0..var.elem_count()).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.05).collect();
            var.set(&Tensor::from_vec(values, var.shape(), var.device()).unwrap()).unwrap();
        }
        let batch = triples(6);
        let whole = accumulated_gradients(&t, &batch, 1);
        let accumulated = accumulated_gradients(&t, &batch, 3);
        for (a, b) in whole.iter().zip(&accumulated) {
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let scale = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff <= 1e-5 * scale.max(1.0), "{diff} (scale {scale})");
        }
        // Only one micro-batch's worth would be a third of it: clearly different.
        let one_third = accumulated_gradients(&t, &batch[..2], 1);
        let diff = (&whole[0] - &one_third[0]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff > 1e-6);
    }

    #[test]
    fn every_micro_batch_of_an_epoch_is_seen_once() {
        let dir = tempfile::tempdir().unwrap();
        let t = trainer(TrainConfig { grad_accum: 2, batch_size: 2, ..config(TrainMode::Retriever) }, dir.path(), None);
        // 10 examples, 4 per step: 3 steps an epoch, the last with one micro-batch of 2.
        let mut seen: Vec<usize> = (0..3).flat_map(|s| t.micro_batches(s)).flatten().collect();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(t.micro_batches(2).len(), 1);
        assert_ne!(t.micro_batches(0), t.micro_batches(3), "each epoch is shuffled anew");
    }

    #[test]
    fn bad_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (config, message) in [
            (TrainConfig { batch_size: 0, ..config(TrainMode::E2e) }, "batch size"),
            (TrainConfig { lr: 0.0, ..config(TrainMode::E2e) }, "learning rate"),
            (TrainConfig { max_steps: Some(0), ..config(TrainMode::E2e) }, "max steps"),
        ] {
            let (retriever, generator, _, _) = tiny_models(DType::F32, 5);
            let models = BaseModels { retriever: Some(retriever), generator: Some(generator) };
            let error = Trainer::new(config, dir.path(), models, triples(4), vec![], &[], None).err().unwrap();
            assert!(error.to_string().contains(message), "{error}");
        }
        let models = BaseModels { retriever: None, generator: None };
        let error =
            Trainer::new(config(TrainMode::E2e), dir.path(), models, triples(4), vec![], &[], None).err().unwrap();
        assert!(error.to_string().contains("none was given"), "{error}");
    }
}
