//! The training loop: LoRA adapters on the models the mode trains, AdamW with a warmup+decay
//! schedule, gradient accumulation that sums every micro-batch's gradients, clipping, seeded data
//! order and dropout (the same seed gives the same run), checkpoints every N steps that a resumed
//! run continues from exactly, and a closed set of events for an observer that may cancel.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use attune_shared::{StepPoint, TrainMode};
use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::checkpoint::{self, CheckpointState, OPTIMIZER_FILE};
use super::cloze;
pub use super::config::{BaseModels, Part, TrainConfig};
use super::data::Triple;
use super::error::{Result, TrainError};
use super::negatives::{self, Mining};
use super::optim::{AdamW, clip_grad_norm};
#[cfg(test)]
use super::step::batch_loss;
use super::step::{LossConfig, Models, add_gradient, batch_gradients};
use crate::model::generator::Generator;
use crate::model::layers::{DropoutRng, Mode};
use crate::model::lora::{self, HasLinears, LoraConfig};
use crate::model::retriever::Retriever;

/// What the trainer reports. Closed: the observer sees every kind of moment a run has.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TrainEvent {
    Started {
        total_steps: usize,
        steps_per_epoch: usize,
        /// Epochs the run takes: the setting, or more to reach `min_steps`.
        epochs: usize,
        examples: usize,
        /// Of `examples`, the inverse cloze pairs drawn from the corpus (`Hyper::cloze_pairs`).
        cloze_pairs: usize,
        /// Cloze pairs held out with the held-out triples (the triples' test fraction of them).
        held_out_cloze_pairs: usize,
        resumed_at: Option<usize>,
    },
    /// One optimiser step's figures, as the store, the wire and `log.jsonl` hold them.
    Step(StepPoint),
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
    /// With early stopping on: the run's adapters are those of the best held-out evaluation, at
    /// `step` (before `Finished`). `stopped_early`: the held-out loss stopped falling before the
    /// last step.
    KeptBest {
        step: usize,
        loss: f64,
        stopped_early: bool,
    },
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Finished { steps: usize, last: Option<StepPoint> },
    Cancelled { steps: usize, checkpoint: PathBuf },
}

/// Everything a run starts from.
pub struct RunSetup {
    pub config: TrainConfig,
    /// The run's folder (`config.json`, `log.jsonl`, `checkpoints/`, the adapters).
    pub out: PathBuf,
    pub models: BaseModels,
    pub train: Vec<Triple>,
    /// Triples whose loss the `Eval` events report.
    pub held_out: Vec<Triple>,
    /// Passages hard negatives are mined from, and inverse cloze pairs drawn from.
    pub corpus: Vec<String>,
    /// The checkpoint to continue from; `None`: a fresh run.
    pub resume: Option<PathBuf>,
}

/// A trained model's adapter: its variables and where it goes.
struct Adapter {
    part: Part,
    vars: VarMap,
}

/// A training run, ready to step.
pub struct Trainer {
    config: TrainConfig,
    loss: LossConfig,
    out: PathBuf,
    /// The triples, then the inverse cloze pairs.
    train: Vec<Triple>,
    /// Inverse cloze pairs at the end of `train`, and of `held_out`.
    cloze_pairs: (usize, usize),
    held_out: Vec<Triple>,
    retriever: Option<Retriever>,
    generator: Option<Generator>,
    adapters: Vec<Adapter>,
    optimizer: AdamW,
    /// Hard negatives by training example.
    negatives: Vec<Vec<String>>,
    /// How they are mined, when the run uses them.
    mining: Option<Mining>,
    /// Passages hard negatives are mined from (empty when the run uses none).
    corpus: Vec<String>,
    dropout: DropoutRng,
    step: usize,
    /// Held-out evaluations so far, (step, loss).
    evals: Vec<(usize, f64)>,
}

/// Attaches seeded LoRA adapters to `model` and names their variables for the optimiser.
fn attach(
    model: &mut impl HasLinears,
    config: &TrainConfig,
    part: Part,
    device: &Device,
    rng: &mut StdRng,
    params: &mut Vec<(String, Var)>,
) -> Result<Adapter> {
    let vars = lora::attach_trainable(model, &config.lora(part), device)?;
    seeded_init(&vars, rng)?;
    params.extend(named_vars(&vars, part.dir_name()));
    Ok(Adapter { part, vars })
}

/// What a run mines from the corpus: hard negatives for a retriever it trains, distractors for a
/// generator trained alone (RAFT); `None` when it needs neither.
pub fn mining_of(config: &TrainConfig) -> Option<Mining> {
    let hyper = &config.hyper;
    let per_question = config.mined_per_question();
    (per_question > 0).then_some(Mining {
        per_question,
        margin: hyper.hard_negative_margin,
        retrieval: hyper.mining_retrieval,
    })
}

/// The negatives mined at `step` for the triples of `train`, read back from `out` when saved
/// there. The inverse cloze pairs at its end (`cloze_pairs` of them) get none of their own and
/// learn from the batch's passages and the triples' negatives: a pair's question is a sentence cut
/// from its passage, and the passages nearest it are likely its neighbours in the same document
/// (false negatives). Mined for every example, 3 refreshed negatives lowered adapt's MRR@10 on the
/// HaluEval slice from 0.927 to 0.919 (bench/adapt-halueval-refreshed-negatives-cpu.json).
fn mine_for_triples(
    out: &Path,
    step: usize,
    retriever: &Retriever,
    train: &[Triple],
    cloze_pairs: usize,
    corpus: &[String],
    mining: Mining,
) -> Result<Vec<Vec<String>>> {
    let triples = &train[..train.len() - cloze_pairs];
    let mut mined = negatives::load_or_mine(out, step, retriever, triples, corpus, mining)?;
    mined.resize(train.len(), Vec::new());
    Ok(mined)
}

impl Trainer {
    /// Prepares a run in `setup.out`: attaches fresh, seeded adapters (or, with `resume`, the
    /// checkpoint's) and writes `config.json`.
    pub fn new(setup: RunSetup) -> Result<Self> {
        let RunSetup { config, out, models, mut train, mut held_out, corpus, resume } = setup;
        config.validate()?;
        if train.is_empty() {
            return Err(TrainError::Data("no training examples".into()));
        }
        // Drawn the same on a resume (same corpus, same seed), so the data order is too. A share
        // (the triples' test fraction) is held out beside the held-out triples, so the held-out
        // loss (and early stopping) weighs what the pairs teach as well.
        let mut cloze_pairs = match config.mode {
            TrainMode::Retriever => cloze::cloze_pairs(&corpus, config.hyper.cloze_pairs as usize, config.hyper.seed),
            _ => Vec::new(),
        };
        let held_out_pairs = (cloze_pairs.len() as f64 * config.hyper.test_fraction).round() as usize;
        held_out.extend(cloze_pairs.drain(..held_out_pairs));
        let cloze_pairs_count = cloze_pairs.len();
        train.extend(cloze_pairs);
        let BaseModels { mut retriever, mut generator } = models;
        let mode = config.mode;
        let loss = config.loss();
        std::fs::create_dir_all(&out).map_err(|error| TrainError::Io { path: out.clone(), error })?;
        let mut params = Vec::new();
        let mut adapters = Vec::new();
        let mut init_rng = StdRng::seed_from_u64(config.hyper.seed);
        let mut negatives = vec![Vec::new(); train.len()];
        let mining = mining_of(&config);
        // Generator mode mines its distractors once, with the base retriever.
        if let Some(mining) = mining
            && resume.is_none()
        {
            let r = retriever
                .as_mut()
                .ok_or_else(|| TrainError::Config("mining negatives needs a retriever: none was given".into()))?;
            r.set_max_length(loss.max_passage_tokens)?;
            negatives = mine_for_triples(&out, 0, r, &train, cloze_pairs_count, &corpus, mining)?;
        }
        if mode.trains_retriever() {
            let r = retriever
                .as_mut()
                .ok_or_else(|| TrainError::Config("this mode trains a retriever: none was given".into()))?;
            r.set_max_length(loss.max_passage_tokens)?;
            let device = r.model().device().clone();
            adapters.push(attach(r.model_mut(), &config, Part::Retriever, &device, &mut init_rng, &mut params)?);
        }
        if mode.trains_generator() {
            let g = generator
                .as_mut()
                .ok_or_else(|| TrainError::Config("this mode trains a generator: none was given".into()))?;
            let device = g.device().clone();
            adapters.push(attach(g.model_mut(), &config, Part::Generator, &device, &mut init_rng, &mut params)?);
        }
        let optimizer = AdamW::new(params, config.optimizer())?;
        let mut trainer = Trainer {
            dropout: DropoutRng::new(config.hyper.seed),
            loss,
            config,
            out,
            train,
            cloze_pairs: (cloze_pairs_count, held_out_pairs),
            held_out,
            retriever,
            generator,
            adapters,
            optimizer,
            negatives,
            corpus: if mining.is_some() { corpus } else { Vec::new() },
            mining,
            step: 0,
            evals: Vec::new(),
        };
        match resume {
            Some(checkpoint) => {
                trainer.restore_newest_good(&checkpoint)?;
                // The evaluations up to the checkpoint count; later ones are done again.
                let step = trainer.step;
                trainer.evals = checkpoint::read_evals(&trainer.out).into_iter().filter(|(s, _)| *s <= step).collect();
                trainer.resume_negatives()?;
            }
            None => {
                checkpoint::start_run_folder(&trainer.out, &trainer.config)?;
                checkpoint::clear_evals(&trainer.out)?;
            }
        }
        Ok(trainer)
    }

    pub fn step(&self) -> usize {
        self.step
    }

    /// The step whose retriever mined the negatives that step `step + 1` trains with: the last
    /// refresh at or before `step` (0: the base retriever's).
    fn mined_at(&self, step: usize) -> usize {
        match self.config.hyper.refresh_negatives_every as usize {
            // A retriever that does not train would mine the same again.
            _ if !self.config.mode.trains_retriever() => 0,
            0 => 0,
            every => step / every * every,
        }
    }

    /// A resumed run's negatives: the saved ones when they were mined at the refresh the
    /// checkpoint's step follows, else mined again by the checkpoint's retriever — the one that
    /// refresh used when refreshes fall on checkpoints, as they do when `refresh_negatives_every`
    /// is a multiple of `checkpoint_every` (then a resumed run trains as an unbroken one).
    fn resume_negatives(&mut self) -> Result<()> {
        let Some(mining) = self.mining else { return Ok(()) };
        let at = self.mined_at(self.step);
        let retriever = self.retriever.as_ref().ok_or_else(|| TrainError::Config("no retriever".into()))?;
        self.negatives =
            mine_for_triples(&self.out, at, retriever, &self.train, self.cloze_pairs.0, &self.corpus, mining)?;
        Ok(())
    }

    /// Mines the negatives again with the retriever as trained so far when step `self.step + 1`
    /// starts a refresh interval; the seconds it took, when it did.
    fn refresh_negatives(&mut self) -> Result<Option<f64>> {
        let Some(mining) = self.mining else { return Ok(None) };
        let at = self.mined_at(self.step);
        if at == 0 || at != self.step {
            return Ok(None);
        }
        let started = Instant::now();
        let retriever = self.retriever.as_ref().ok_or_else(|| TrainError::Config("no retriever".into()))?;
        self.negatives =
            mine_for_triples(&self.out, at, retriever, &self.train, self.cloze_pairs.0, &self.corpus, mining)?;
        Ok(Some(started.elapsed().as_secs_f64()))
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
            epochs: self.config.epochs(self.train.len()),
            examples: self.train.len(),
            cloze_pairs: self.cloze_pairs.0,
            held_out_cloze_pairs: self.cloze_pairs.1,
            resumed_at,
        })
        .is_break();
        let mut last = None;
        let mut step_times = Vec::new();
        let (eval_every, checkpoint_every) =
            (self.config.hyper.eval_every as usize, self.config.hyper.checkpoint_every as usize);
        let evaluates = eval_every > 0 && !self.held_out.is_empty();
        let mut stopped_early = false;
        while self.step < total && !cancel && !stopped_early {
            let point = self.train_step(total, &step_times)?;
            step_times.push(point.step_seconds);
            checkpoint::append_log(&self.out, &point)?;
            cancel |= observer(&TrainEvent::Step(point)).is_break();
            last = Some(point);
            if evaluates && self.step.is_multiple_of(eval_every) {
                let event = self.held_out_loss()?;
                cancel |= observer(&event).is_break();
                stopped_early = self.record_eval(&event)?;
            }
            if checkpoint_every > 0 && self.step.is_multiple_of(checkpoint_every) && self.step < total && !stopped_early
            {
                let path = self.save_checkpoint()?;
                cancel |= observer(&TrainEvent::Checkpoint { step: self.step, path }).is_break();
            }
        }
        if cancel && self.step < total {
            let checkpoint = self.save_checkpoint()?;
            let _ = observer(&TrainEvent::Cancelled { step: self.step, checkpoint: checkpoint.clone() });
            return Ok(Outcome::Cancelled { steps: self.step, checkpoint });
        }
        let patience = self.config.hyper.early_stopping_patience;
        if patience > 0 && evaluates && self.evals.last().is_some_and(|(step, _)| *step != self.step) {
            // The last step's adapters compete with the best so far.
            let event = self.held_out_loss()?;
            let _ = observer(&event);
            self.record_eval(&event)?;
        }
        let path = self.save_checkpoint()?;
        let _ = observer(&TrainEvent::Checkpoint { step: self.step, path });
        let best_dir = self.out.join(checkpoint::BEST_DIR);
        // `best/` holds that evaluation's adapters unless a resumed run has not yet reached it again.
        let best = self.best_eval().filter(|(step, _)| {
            patience > 0 && (*step == self.step || checkpoint::best_step(&self.out) == Some(*step))
        });
        match best {
            Some((step, loss)) => {
                if step == self.step {
                    self.save_adapters(&self.out)?;
                } else {
                    let parts: Vec<&str> = self.adapters.iter().map(|a| a.part.dir_name()).collect();
                    checkpoint::copy_adapters(&best_dir, &self.out, &parts)?;
                }
                let _ = observer(&TrainEvent::KeptBest { step, loss, stopped_early });
            }
            None => self.save_adapters(&self.out)?,
        }
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
        order.shuffle(&mut StdRng::seed_from_u64(mix(self.config.hyper.seed, epoch as u64, 0x0da7a)));
        let (size, accum) = (self.config.batch_size(), self.config.grad_accum());
        (0..accum)
            .map(|m| {
                let start = (within * accum + m) * size;
                order[start.min(n)..(start + size).min(n)].to_vec()
            })
            .filter(|b| !b.is_empty())
            .collect()
    }

    fn train_step(&mut self, total: usize, step_times: &[f64]) -> Result<StepPoint> {
        let refresh_seconds = self.refresh_negatives()?;
        let started = Instant::now();
        let micro_batches = self.micro_batches(self.step);
        let examples: usize = micro_batches.iter().map(Vec::len).sum();
        let params: Vec<Var> = self.optimizer.params().iter().map(|(_, v)| v.clone()).collect();
        let mut grads: Vec<Option<Tensor>> = vec![None; params.len()];
        let (mut loss, mut retriever_loss, mut generator_loss, mut tokens) = (0.0, None, None, 0usize);
        let models = Models { retriever: self.retriever.as_ref(), generator: self.generator.as_ref() };
        let seed = self.config.hyper.seed;
        for (m, indices) in micro_batches.iter().enumerate() {
            self.dropout.reseed(mix(seed, self.step as u64, m as u64));
            let batch: Vec<Triple> = indices.iter().map(|&i| self.train[i].clone()).collect();
            let negatives: Vec<Vec<String>> = indices.iter().map(|&i| self.negatives[i].clone()).collect();
            // Each micro-batch's mean loss weighs by its share of the step's examples, so the
            // summed gradients are those of the mean over all of them.
            let share = indices.len() as f64 / examples as f64;
            let out =
                batch_gradients(models, &batch, &negatives, &self.loss, Mode::Train(&self.dropout), share, &params)?;
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
        let grad_norm = clip_grad_norm(&mut grads, self.config.hyper.max_grad_norm)?;
        // One bad step would write NaN into every weight (and every later checkpoint).
        for (what, value) in [("loss", loss), ("gradient norm", grad_norm)] {
            if !value.is_finite() {
                return Err(TrainError::NonFinite { step: self.step + 1, what, value });
            }
        }
        let lr = self.config.schedule(total).lr(self.step);
        self.optimizer.step(&grads, lr)?;
        self.step += 1;
        let seconds = started.elapsed().as_secs_f64();
        let recent: Vec<f64> = step_times.iter().rev().take(20).copied().chain(std::iter::once(seconds)).collect();
        let mean = recent.iter().sum::<f64>() / recent.len() as f64;
        Ok(StepPoint {
            step: self.step as u32,
            total_steps: total as u32,
            epoch: ((self.step - 1) / self.config.steps_per_epoch(self.train.len())) as u32,
            loss,
            retriever_loss,
            generator_loss,
            lr,
            grad_norm,
            tokens_per_second: tokens as f64 / seconds.max(1e-9),
            step_seconds: seconds,
            eta_seconds: mean * total.saturating_sub(self.step) as f64,
            eval_loss: None,
            refresh_seconds,
        })
    }

    /// The lowest held-out loss so far and its step (the earliest of equals).
    fn best_eval(&self) -> Option<(usize, f64)> {
        self.evals.iter().copied().reduce(|best, e| if e.1 < best.1 { e } else { best })
    }

    /// Records an evaluation (and, with early stopping on, the adapters of a new best); whether
    /// the run should stop: `early_stopping_patience` evaluations in a row without a new best.
    fn record_eval(&mut self, event: &TrainEvent) -> Result<bool> {
        let TrainEvent::Eval { step, loss, .. } = *event else { return Ok(false) };
        let before = self.best_eval();
        self.evals.push((step, loss));
        checkpoint::write_evals(&self.out, &self.evals)?;
        let patience = self.config.hyper.early_stopping_patience as usize;
        if patience == 0 {
            return Ok(false);
        }
        if before.is_none_or(|(_, best)| loss < best) {
            checkpoint::write_best(&self.out, step, |dir| self.save_adapters(dir))?;
            return Ok(false);
        }
        let (best_step, _) = self.best_eval().expect("one evaluation at least");
        Ok(self.evals.iter().filter(|(s, _)| *s > best_step).count() >= patience)
    }

    /// The loss on (up to 64) held-out triples, without dropout or update.
    fn held_out_loss(&self) -> Result<TrainEvent> {
        let models = Models { retriever: self.retriever.as_ref(), generator: self.generator.as_ref() };
        let examples: Vec<Triple> = self.held_out.iter().take(64).cloned().collect();
        let (mut loss, mut retriever_loss, mut generator_loss) = (0.0, None, None);
        for chunk in examples.chunks(self.config.batch_size()) {
            let out = batch_gradients(models, chunk, &[], &self.loss, Mode::Inference, 1.0, &[])?;
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

    /// Adapters in PEFT's layout: `<dir>/retriever/` and `<dir>/generator/`.
    fn save_adapters(&self, dir: &Path) -> Result<()> {
        for adapter in &self.adapters {
            let config: LoraConfig = self.config.lora(adapter.part);
            lora::save(&dir.join(adapter.part.dir_name()), &adapter.vars, &config)?;
        }
        Ok(())
    }

    /// Writes `checkpoints/step-NNNNNN/`: adapters, optimiser moments, step.
    fn save_checkpoint(&self) -> Result<PathBuf> {
        let state = CheckpointState {
            step: self.step,
            seed: self.config.hyper.seed,
            rng: "data order and dropout masks are derived from (seed, step); adapters start from (seed)".into(),
        };
        let path = checkpoint::write_checkpoint(&self.out, &state, |dir| {
            self.save_adapters(dir)?;
            candle_core::safetensors::save(&self.optimizer.state(), dir.join(OPTIMIZER_FILE))?;
            Ok(())
        })?;
        checkpoint::prune_checkpoints(&self.out, self.config.hyper.keep_checkpoints as usize)?;
        Ok(path)
    }

    /// Restores `checkpoint` or, when it does not load, the newest older one that does.
    fn restore_newest_good(&mut self, checkpoint: &Path) -> Result<()> {
        let mut first_error = None;
        for candidate in checkpoint::resume_candidates(checkpoint) {
            match self.restore(&candidate) {
                Ok(()) => {
                    if let Some(error) = &first_error {
                        tracing::warn!("resumed from {} instead: {error}", candidate.display());
                    }
                    return Ok(());
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        Err(first_error.expect("at least the checkpoint itself was tried"))
    }

    /// Loads a checkpoint's adapters and optimiser state, and continues from its step.
    fn restore(&mut self, checkpoint: &Path) -> Result<()> {
        let state = checkpoint::read_state(checkpoint, self.config.hyper.seed)?;
        let bad = |message: String| TrainError::Checkpoint { path: checkpoint.to_owned(), message };
        for adapter in &mut self.adapters {
            let name = adapter.part.dir_name();
            let file = checkpoint.join(name).join(lora::ADAPTER_WEIGHTS);
            adapter.vars.load(&file).map_err(|e| bad(format!("{name} adapter: {e}")))?;
        }
        let device = self.optimizer.params().first().map(|(_, v)| v.device().clone()).unwrap_or(Device::Cpu);
        let moments = candle_core::safetensors::load(checkpoint.join(OPTIMIZER_FILE), &device)?;
        self.optimizer.load_state(&moments, state.step)?;
        self.step = state.step;
        checkpoint::truncate_log(&self.out, state.step)
    }
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
        let out = batch_loss(models, chunk, &[], &trainer.loss, Mode::Inference).unwrap();
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

    use attune_shared::Hyper;

    use super::*;
    use crate::train::checkpoint::{LOG_FILE, latest_checkpoint, read_config};
    use crate::train::config::RunInputs;
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
        config_with(mode, |_| {})
    }

    fn config_with(mode: TrainMode, change: impl FnOnce(&mut Hyper)) -> TrainConfig {
        let hyper = Hyper {
            top_k: 2,
            marginalization: Marginalization::Sequence,
            batch_size: 3,
            epochs: 3,
            lr: 5e-3,
            lora_r: 2,
            lora_alpha: 4.0,
            lora_dropout: 0.1,
            retriever_targets: vec!["query".into(), "value".into()],
            generator_targets: vec!["q_proj".into(), "v_proj".into()],
            seed: 11,
            checkpoint_every: 0,
            eval_every: 0,
            min_steps: 0,
            early_stopping_patience: 0,
            ..Hyper::default()
        };
        let inputs = RunInputs::new(PathBuf::new(), Path::new("models"));
        let mut config = TrainConfig::from_hyper(&hyper, mode, inputs).unwrap();
        // Changed after the validation, so the trainer's own refusal can be tested too.
        change(&mut config.hyper);
        config
    }

    fn setup(
        config: TrainConfig,
        out: &Path,
        models: BaseModels,
        train: Vec<Triple>,
        held_out: Vec<Triple>,
    ) -> RunSetup {
        RunSetup { config, out: out.to_owned(), models, train, held_out, corpus: Vec::new(), resume: None }
    }

    fn trainer(config: TrainConfig, out: &Path, resume: Option<&Path>) -> Trainer {
        let (retriever, generator, _, _) = tiny_models(DType::F32, 5);
        let models = BaseModels { retriever: Some(retriever), generator: Some(generator) };
        let setup =
            RunSetup { resume: resume.map(Path::to_owned), ..setup(config, out, models, triples(10), triples(4)) };
        Trainer::new(setup).unwrap()
    }

    fn losses(events: &[TrainEvent]) -> Vec<f64> {
        events.iter().filter_map(|e| if let TrainEvent::Step(r) = e { Some(r.loss) } else { None }).collect()
    }

    #[test]
    fn e2e_training_reduces_the_loss_and_writes_peft_adapters() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = trainer(config_with(TrainMode::E2e, |h| h.epochs = 8), dir.path(), None);
        let mut events = Vec::new();
        let outcome = t.run(&mut |e| {
            events.push(e.clone());
            ControlFlow::Continue(())
        });
        let Ok(Outcome::Finished { steps, .. }) = outcome else { panic!("{outcome:?}") };
        assert_eq!(steps, 8 * 4, "10 examples in batches of 3: 4 steps an epoch");
        let l = losses(&events);
        // An epoch's summed loss (4 steps), first against the mean of the last three: one epoch of
        // 10 examples with dropout on swings by ±5%.
        let (first, last) = (l[..4].iter().sum::<f64>(), l[l.len() - 12..].iter().sum::<f64>() / 3.0);
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
            let mut t =
                trainer(config_with(TrainMode::E2e, |h| (h.seed, h.max_steps) = (seed, Some(4))), dir.path(), None);
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

    /// Before, a NaN step was stored (as JSON null, which then failed every read of the run) and
    /// the NaN weights were checkpointed; now the run fails at that step and the checkpoint stays.
    #[test]
    fn a_non_finite_step_stops_the_run_and_keeps_the_last_good_checkpoint() {
        let base = config_with(TrainMode::E2e, |h| {
            (h.max_steps, h.epochs, h.checkpoint_every) = (Some(6), 5, 2);
        });
        let dir = tempfile::tempdir().unwrap();
        let mut first = trainer(base.clone(), dir.path(), None);
        let outcome = first
            .run(&mut |e| {
                if matches!(e, TrainEvent::Checkpoint { step: 2, .. }) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
        assert!(matches!(outcome, Outcome::Cancelled { steps: 2, .. }), "{outcome:?}");
        drop(first);
        let good = latest_checkpoint(dir.path()).unwrap();
        let mut poisoned = trainer(base.clone(), dir.path(), Some(&good));
        let (_, var) = &poisoned.optimizer.params()[0];
        var.set(&(var.as_tensor() * f64::NAN).unwrap()).unwrap();
        let mut events = Vec::new();
        let error = poisoned
            .run(&mut |e| {
                events.push(e.clone());
                ControlFlow::Continue(())
            })
            .unwrap_err();
        assert!(matches!(error, TrainError::NonFinite { step: 3, .. }), "{error}");
        assert!(error.to_string().contains("step 3"), "{error}");
        assert!(losses(&events).is_empty(), "no step was reported: {events:?}");
        assert!(matches!(events.last(), Some(TrainEvent::Failed { step: 2, .. })), "{events:?}");
        // The newest checkpoint is still step 2's, and it resumes.
        assert_eq!(latest_checkpoint(dir.path()).unwrap(), good);
        let resumed = trainer(base, dir.path(), Some(&good));
        assert_eq!(resumed.step(), 2);
    }

    /// A torn newest checkpoint (power loss) resumes from the one before; old ones are pruned.
    #[test]
    fn a_torn_checkpoint_falls_back_and_only_the_newest_are_kept() {
        let base = config_with(TrainMode::Retriever, |h| {
            (h.max_steps, h.epochs, h.checkpoint_every, h.keep_checkpoints) = (Some(8), 5, 1, 3);
        });
        let dir = tempfile::tempdir().unwrap();
        let mut first = trainer(base.clone(), dir.path(), None);
        first
            .run(&mut |e| {
                if matches!(e, TrainEvent::Checkpoint { step: 6, .. }) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
        drop(first);
        let kept: Vec<String> = checkpoint::checkpoints(dir.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(kept, ["step-000004", "step-000005", "step-000006"]);
        let newest = latest_checkpoint(dir.path()).unwrap();
        let weights = newest.join(Part::Retriever.dir_name()).join(lora::ADAPTER_WEIGHTS);
        let torn = std::fs::read(&weights).unwrap();
        std::fs::write(&weights, &torn[..torn.len() / 2]).unwrap();
        let resumed = trainer(base, dir.path(), Some(&newest));
        assert_eq!(resumed.step(), 5);
    }

    /// Held out: the training questions with each other's passages, so learning the training pairs
    /// raises the held-out loss. The run stops `patience` evaluations after its best one and ends
    /// with that evaluation's adapters, not the last step's.
    #[test]
    fn early_stopping_ends_with_the_best_evaluations_adapters() {
        let config = config_with(TrainMode::Retriever, |h| {
            (h.epochs, h.eval_every, h.early_stopping_patience) = (40, 1, 2);
        });
        let (questions, passages) =
            (["what is the cat ?", "what ran in the park ?"], ["the cat sat on the mat .", "a dog ran in the park ."]);
        let triple = |q: usize, p: usize| Triple {
            question: questions[q].into(),
            passage: passages[p].into(),
            answer: "the cat".into(),
        };
        let train: Vec<Triple> = (0..6).map(|i| triple(i % 2, i % 2)).collect();
        let held_out = vec![triple(0, 1), triple(1, 0)];
        let (retriever, ..) = tiny_models(DType::F32, 5);
        let models = BaseModels { retriever: Some(retriever), generator: None };
        let dir = tempfile::tempdir().unwrap();
        let mut trainer = Trainer::new(setup(config, dir.path(), models, train, held_out)).unwrap();
        let total = trainer.total_steps();
        let mut events = Vec::new();
        let outcome = trainer
            .run(&mut |e| {
                events.push(e.clone());
                ControlFlow::Continue(())
            })
            .unwrap();
        let evals: Vec<(usize, f64)> = events
            .iter()
            .filter_map(|e| if let TrainEvent::Eval { step, loss, .. } = e { Some((*step, *loss)) } else { None })
            .collect();
        let best = evals.iter().copied().reduce(|b, e| if e.1 < b.1 { e } else { b }).unwrap();
        let kept = events.iter().find_map(|e| match e {
            TrainEvent::KeptBest { step, loss, stopped_early } => Some((*step, *loss, *stopped_early)),
            _ => None,
        });
        assert_eq!(kept, Some((best.0, best.1, true)), "{evals:?}");
        let Outcome::Finished { steps, .. } = outcome else { panic!("{outcome:?}") };
        assert!(steps < total, "stopped early: {steps} of {total} steps");
        assert_eq!(steps, best.0 + 2, "two evaluations without a better loss: {evals:?}");
        assert_eq!(checkpoint::read_evals(dir.path()), evals, "the evaluations are recorded for a resume");
        let weights =
            |folder: &Path| std::fs::read(folder.join(checkpoint::RETRIEVER_DIR).join(lora::ADAPTER_WEIGHTS)).unwrap();
        assert_eq!(weights(dir.path()), weights(&dir.path().join(checkpoint::BEST_DIR)));
        let last = latest_checkpoint(dir.path()).unwrap();
        assert_ne!(weights(dir.path()), weights(&last), "the last step's adapters are not the run's");
    }

    /// 10 steps straight, and 5 + cancel + resume + 5, end at the same loss (and weights).
    #[test]
    fn a_resumed_run_continues_exactly() {
        let base = config_with(TrainMode::E2e, |h| {
            (h.max_steps, h.epochs, h.checkpoint_every) = (Some(10), 5, 5);
        });
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

    /// Negatives mined again every 2 steps by the retriever as trained: the steps after a refresh
    /// say how long it took, the run folder keeps the latest with its step, and a run stopped at a
    /// checkpoint before a refresh resumes exactly as the unbroken run went on.
    #[test]
    fn refreshed_negatives_are_logged_saved_and_resume_exactly() {
        let base = config_with(TrainMode::Retriever, |h| {
            (h.max_steps, h.epochs, h.checkpoint_every) = (Some(6), 5, 2);
            (h.hard_negatives, h.refresh_negatives_every, h.hard_negative_margin) = (2, 2, 0.0);
        });
        let corpus: Vec<String> = ["the cat sat on the mat .", "a dog ran in the park .", "the dogs sat in the park ."]
            .into_iter()
            .chain(["a bird sat on the mat .", "the park is green .", "cats and dogs ran ."])
            .map(String::from)
            .collect();
        let make = |config: TrainConfig, out: &Path, resume: Option<&Path>| {
            // The base retriever (its own adapter too) mines the first negatives before the run's
            // seeded adapters replace it: the same each time, as tiny models are.
            let (retriever, _, _, _) = tiny_models(DType::F32, 5);
            let models = BaseModels { retriever: Some(retriever), generator: None };
            let setup = RunSetup {
                corpus: corpus.clone(),
                resume: resume.map(Path::to_owned),
                ..setup(config, out, models, triples(10), triples(4))
            };
            Trainer::new(setup).unwrap()
        };
        let steps = |events: &[TrainEvent]| -> Vec<StepPoint> {
            events.iter().filter_map(|e| if let TrainEvent::Step(p) = e { Some(*p) } else { None }).collect()
        };
        let straight_dir = tempfile::tempdir().unwrap();
        let mut straight_events = Vec::new();
        make(base.clone(), straight_dir.path(), None)
            .run(&mut |e| {
                straight_events.push(e.clone());
                ControlFlow::Continue(())
            })
            .unwrap();
        let refreshed: Vec<u32> =
            steps(&straight_events).iter().filter(|p| p.refresh_seconds.is_some()).map(|p| p.step).collect();
        assert_eq!(refreshed, vec![3, 5], "mined again before steps 3 and 5 (after 2 and 4 steps)");
        let saved = negatives::load(straight_dir.path(), 4, 10).expect("the step-4 negatives are saved");
        let train = triples(10);
        assert!(saved.iter().any(|n| !n.is_empty()), "{saved:?}");
        for (negatives, triple) in saved.iter().zip(&train) {
            // Passages scoring above the gold one are left out (likely false negatives).
            assert!(negatives.len() <= 2);
            assert!(negatives.iter().all(|n| n != &triple.passage && corpus.contains(n)), "{negatives:?}");
        }

        let dir = tempfile::tempdir().unwrap();
        let mut first_events = Vec::new();
        let outcome = make(base.clone(), dir.path(), None)
            .run(&mut |e| {
                first_events.push(e.clone());
                if matches!(e, TrainEvent::Checkpoint { step: 4, .. }) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
        assert!(matches!(outcome, Outcome::Cancelled { steps: 4, .. }), "{outcome:?}");
        assert!(negatives::load(dir.path(), 2, 10).is_some(), "stopped before the step-4 refresh");
        let checkpoint = latest_checkpoint(dir.path()).unwrap();
        let mut resumed_events = Vec::new();
        make(read_config(dir.path()).unwrap(), dir.path(), Some(&checkpoint))
            .run(&mut |e| {
                resumed_events.push(e.clone());
                ControlFlow::Continue(())
            })
            .unwrap();
        let mut joined = losses(&first_events);
        joined.extend(losses(&resumed_events));
        assert_eq!(joined, losses(&straight_events), "same losses step by step");
        assert_eq!(negatives::load(dir.path(), 4, 10), Some(saved), "the same step-4 negatives");
    }

    /// Retriever mode adds the inverse cloze pairs drawn from the corpus to its triples (and
    /// trains on them: other losses); e2e mode, which would have to generate their answers, does not.
    #[test]
    fn retriever_mode_trains_on_cloze_pairs_from_the_corpus_and_e2e_mode_ignores_them() {
        let corpus: Vec<String> = [
            "The cat sat on the mat. A dog ran in the park. The dogs sat in the park.",
            "A bird sat on the mat. The park is green. Cats and dogs ran in the park.",
            "The dogs ran on the mat. A cat sat in the park. The bird is green.",
            "A single sentence of no use here.",
        ]
        .map(String::from)
        .to_vec();
        let run = |mode: TrainMode, cloze_pairs: u32| {
            let config = config_with(mode, |h| {
                (h.max_steps, h.epochs, h.batch_size, h.eval_every) = (Some(2), 1, 4, 2);
                h.cloze_pairs = cloze_pairs;
            });
            let (retriever, generator, _, _) = tiny_models(DType::F32, 5);
            let models = BaseModels { retriever: Some(retriever), generator: Some(generator) };
            let dir = tempfile::tempdir().unwrap();
            let setup =
                RunSetup { corpus: corpus.clone(), ..setup(config, dir.path(), models, triples(6), triples(2)) };
            let mut events = Vec::new();
            Trainer::new(setup)
                .unwrap()
                .run(&mut |e| {
                    events.push(e.clone());
                    ControlFlow::Continue(())
                })
                .unwrap();
            let started = events.iter().find_map(|e| match e {
                TrainEvent::Started { examples, cloze_pairs, steps_per_epoch, .. } => {
                    Some((*examples, *cloze_pairs, *steps_per_epoch))
                }
                _ => None,
            });
            let held_out = events.iter().find_map(|e| match e {
                TrainEvent::Eval { examples, .. } => Some(*examples),
                _ => None,
            });
            (started.unwrap(), held_out.unwrap(), losses(&events))
        };
        let (plain, plain_held_out, plain_losses) = run(TrainMode::Retriever, 0);
        assert_eq!((plain, plain_held_out), ((6, 0, 2), 2));
        // Three passages of several sentences: three pairs at most, however many are asked for; a
        // fifth of them (one) is held out beside the held-out triples.
        let (with_cloze, cloze_held_out, cloze_losses) = run(TrainMode::Retriever, 10);
        assert_eq!((with_cloze, cloze_held_out), ((8, 2, 2), 3));
        assert_ne!(plain_losses, cloze_losses);
        let (e2e, e2e_held_out, _) = run(TrainMode::E2e, 10);
        assert_eq!((e2e, e2e_held_out), ((6, 0, 2), 2));
    }

    /// With inverse cloze pairs and hard negatives, the triples get mined negatives (saved for
    /// them alone) and the pairs none of their own.
    #[test]
    fn hard_negatives_are_mined_for_the_triples_and_not_for_the_cloze_pairs() {
        let corpus: Vec<String> = [
            "The cat sat on the mat. A dog ran in the park. The dogs sat in the park.",
            "A bird sat on the mat. The park is green. Cats and dogs ran in the park.",
            "The dogs ran on the mat. A cat sat in the park. The bird is green.",
            "the cat sat on the mat .",
            "a dog ran in the park .",
        ]
        .map(String::from)
        .to_vec();
        let config = config_with(TrainMode::Retriever, |h| {
            (h.max_steps, h.epochs, h.batch_size) = (Some(1), 1, 4);
            (h.cloze_pairs, h.hard_negatives, h.hard_negative_margin) = (10, 2, 0.0);
        });
        let (retriever, _, _, _) = tiny_models(DType::F32, 5);
        let models = BaseModels { retriever: Some(retriever), generator: None };
        let dir = tempfile::tempdir().unwrap();
        let setup = RunSetup { corpus, ..setup(config, dir.path(), models, triples(6), triples(2)) };
        let trainer = Trainer::new(setup).unwrap();
        let (triple_count, pair_count) = (6, trainer.cloze_pairs.0);
        assert_eq!(pair_count, 2);
        assert_eq!(trainer.negatives.len(), triple_count + pair_count);
        assert!(trainer.negatives[..triple_count].iter().any(|n| !n.is_empty()), "{:?}", trainer.negatives);
        assert!(trainer.negatives[triple_count..].iter().all(Vec::is_empty), "{:?}", trainer.negatives);
        let saved = negatives::load(dir.path(), 0, triple_count);
        assert_eq!(saved.as_deref(), Some(&trainer.negatives[..triple_count]));
    }

    /// Generator mode with distractors (RAFT) mines them once with the base retriever, never
    /// trains that retriever, and trains on other prompts than the gold passage alone.
    #[test]
    fn generator_mode_mines_distractors_once_and_trains_only_the_generator() {
        let corpus: Vec<String> = ["the cat sat on the mat .", "a dog ran in the park .", "the dogs sat in the park ."]
            .into_iter()
            .chain(["a bird sat on the mat .", "the park is green .", "cats and dogs ran ."])
            .map(String::from)
            .collect();
        let run = |distractors: u32| {
            let config = config_with(TrainMode::Generator, |h| {
                (h.max_steps, h.epochs, h.refresh_negatives_every) = (Some(3), 3, 1);
                (h.distractors, h.hard_negative_margin) = (distractors, 0.0);
            });
            let (retriever, generator, _, _) = tiny_models(DType::F32, 5);
            let models = BaseModels { retriever: Some(retriever), generator: Some(generator) };
            let dir = tempfile::tempdir().unwrap();
            let setup =
                RunSetup { corpus: corpus.clone(), ..setup(config, dir.path(), models, triples(10), triples(4)) };
            let mut events = Vec::new();
            let trainer = Trainer::new(setup).unwrap();
            assert_eq!(trainer.adapters.len(), 1, "the generator's adapter alone");
            let mut trainer = trainer;
            trainer
                .run(&mut |e| {
                    events.push(e.clone());
                    ControlFlow::Continue(())
                })
                .unwrap();
            let refreshes =
                events.iter().filter(|e| matches!(e, TrainEvent::Step(p) if p.refresh_seconds.is_some())).count();
            assert_eq!(refreshes, 0, "an untrained retriever is not asked again");
            (losses(&events), negatives::load(dir.path(), 0, 10))
        };
        let (plain, none) = run(0);
        assert!(none.is_none(), "no distractors: nothing mined");
        let (raft, mined) = run(2);
        let mined = mined.expect("the distractors are saved");
        assert!(mined.iter().any(|n| !n.is_empty()) && mined.iter().all(|n| n.len() <= 2), "{mined:?}");
        assert_ne!(plain, raft, "other prompts, other losses");
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
        let t = trainer(config_with(TrainMode::Retriever, |h| (h.grad_accum, h.batch_size) = (2, 2)), dir.path(), None);
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
            (config_with(TrainMode::E2e, |h| h.batch_size = 0), "batch size"),
            (config_with(TrainMode::E2e, |h| h.lr = 0.0), "learning rate"),
            (config_with(TrainMode::E2e, |h| h.max_steps = Some(0)), "max steps"),
        ] {
            let (retriever, generator, _, _) = tiny_models(DType::F32, 5);
            let models = BaseModels { retriever: Some(retriever), generator: Some(generator) };
            let error = Trainer::new(setup(config, dir.path(), models, triples(4), vec![])).err().unwrap();
            assert!(error.to_string().contains(message), "{error}");
        }
        let models = BaseModels { retriever: None, generator: None };
        let error = Trainer::new(setup(config(TrainMode::E2e), dir.path(), models, triples(4), vec![])).err().unwrap();
        assert!(error.to_string().contains("none was given"), "{error}");
    }
}
