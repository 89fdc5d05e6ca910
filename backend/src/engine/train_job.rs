//! A training run as a job: its frozen copy of the approved triples (`triples.jsonl` in the run's
//! folder) through the trainer, every step recorded, checkpoints reported, resumed from the last
//! checkpoint when the run has one.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use attune_shared::{Hyper, JobStatus, LogLevel, Run, StepPoint, TrainMode};

use super::EngineError;
use super::jobs::{Control, EventSink, JobContext, JobEvent, device_label, finish_run};
use crate::model::generator::Generator;
use crate::model::retriever::Retriever;
use crate::train::data::{CsvColumns, SplitOptions, load_dataset};
use crate::train::loss::Contrastive;
use crate::train::optim::{AdamWConfig, Decay};
use crate::train::step::{LossConfig, Marginalization};
use crate::train::trainer::{self, BaseModels, Outcome, TrainConfig, TrainEvent, Trainer};

/// File of a run's triples inside its folder.
pub const TRIPLES_FILE: &str = "triples.jsonl";

/// The trainer's configuration for `run` in `dir`.
pub fn train_config(context: &JobContext, run: &Run, dir: &Path) -> TrainConfig {
    let h: &Hyper = &run.hyper;
    let defaults = TrainConfig::default();
    TrainConfig {
        data: dir.join(TRIPLES_FILE),
        columns: CsvColumns::default(),
        split: SplitOptions { test_fraction: h.test_fraction, seed: h.seed },
        max_train_examples: None,
        retriever: context.model_dir(&run.retriever),
        generator: context.model_dir(&run.generator),
        device: context.device_spec.clone(),
        dtype: "auto".into(),
        loss: LossConfig {
            mode: match run.mode {
                TrainMode::E2e => crate::train::step::TrainMode::E2e,
                TrainMode::Retriever => crate::train::step::TrainMode::Retriever,
                TrainMode::Generator => crate::train::step::TrainMode::Generator,
            },
            contrastive: Contrastive { scale: h.scale, symmetric: false },
            top_k: h.top_k as usize,
            generator_weight: h.generator_weight,
            marginalization: Marginalization::Sequence,
            max_passage_tokens: h.max_passage_tokens as usize,
            max_answer_tokens: h.max_answer_tokens as usize,
            sequences_per_chunk: crate::train::step::SEQUENCES_PER_CHUNK,
        },
        epochs: h.epochs as usize,
        max_steps: h.max_steps.map(|s| s as usize),
        batch_size: h.batch_size as usize,
        grad_accum: h.grad_accum as usize,
        lr: h.lr,
        warmup_ratio: h.warmup_ratio,
        decay: Decay::Linear,
        optimizer: AdamWConfig { weight_decay: h.weight_decay, ..AdamWConfig::default() },
        max_grad_norm: h.max_grad_norm,
        lora_r: h.lora_r as usize,
        lora_alpha: h.lora_alpha,
        lora_dropout: h.lora_dropout,
        retriever_targets: defaults.retriever_targets,
        generator_targets: defaults.generator_targets,
        hard_negatives: 0,
        seed: h.seed,
        checkpoint_every: h.checkpoint_every as usize,
        eval_every: h.checkpoint_every as usize,
    }
}

/// Counts the training and held-out examples `path` gives under `hyper`'s split.
pub fn count_split(path: &Path, hyper: &Hyper) -> Result<(u32, u32), EngineError> {
    let dataset = load_dataset(
        path,
        &CsvColumns::default(),
        SplitOptions { test_fraction: hyper.test_fraction, seed: hyper.seed },
    )
    .map_err(|e| EngineError::Invalid(e.to_string()))?;
    Ok((dataset.train.len() as u32, dataset.test.len() as u32))
}

fn point(report: &trainer::StepReport) -> StepPoint {
    StepPoint {
        step: report.step as u32,
        total_steps: report.total_steps as u32,
        epoch: report.epoch as u32,
        loss: report.loss,
        retriever_loss: report.retriever_loss,
        generator_loss: report.generator_loss,
        lr: report.lr,
        grad_norm: report.grad_norm,
        tokens_per_second: report.tokens_per_second,
        step_seconds: report.step_seconds,
        eta_seconds: report.eta_seconds,
    }
}

/// Runs (or resumes) run `id` to its end; every outcome is recorded in the store.
pub fn run(context: &JobContext, sink: &EventSink, id: i64, control: &Control) {
    let log = |level, message: String| sink(JobEvent::Log { job: format!("run:{id}"), level, message });
    let result = train(context, sink, id, control, &log);
    let stopping = control.stopping.load(Ordering::Relaxed);
    match result {
        Ok(Outcome::Finished { steps, .. }) => {
            log(LogLevel::Info, format!("finished after {steps} steps"));
            finish_run(context, sink, id, JobStatus::Succeeded, None);
        }
        Ok(Outcome::Cancelled { steps, checkpoint }) if stopping => {
            log(
                LogLevel::Warn,
                format!("stopped with the server at step {steps}; checkpoint {}", checkpoint.display()),
            );
            let message = "the server stopped while this run trained; resume it from its last checkpoint";
            finish_run(context, sink, id, JobStatus::Interrupted, Some(message));
        }
        Ok(Outcome::Cancelled { steps, .. }) => {
            log(LogLevel::Info, format!("cancelled at step {steps}"));
            finish_run(context, sink, id, JobStatus::Cancelled, None);
        }
        Err(error) => {
            let message = error.to_string();
            tracing::error!(run = id, "training run failed: {message}");
            log(LogLevel::Error, message.clone());
            finish_run(context, sink, id, JobStatus::Failed, Some(&message));
        }
    }
}

fn train(
    context: &JobContext,
    sink: &EventSink,
    id: i64,
    control: &Control,
    log: &dyn Fn(LogLevel, String),
) -> Result<Outcome, EngineError> {
    let run: Run =
        context.runtime.block_on(context.store.run(id))?.ok_or(EngineError::Invalid(format!("no run {id}")))?;
    let dir = context.run_dir(id);
    let config = train_config(context, &run, &dir);
    let failed = |e: crate::train::TrainError| EngineError::Invalid(e.to_string());
    let resume = trainer::latest_checkpoint(&dir).ok();
    let started = context.runtime.block_on(context.store.set_run_status(id, JobStatus::Running, None))?;
    sink(JobEvent::Run(Box::new(started)));
    let dataset = load_dataset(&config.data, &config.columns, config.split).map_err(failed)?;
    let device = crate::model::device::select(&config.device).map_err(|e| EngineError::Invalid(e.to_string()))?;
    let dtype =
        crate::model::device::select_dtype(&config.dtype, &device).map_err(|e| EngineError::Invalid(e.to_string()))?;
    let load_error = |what: &str, path: &Path, e: crate::model::ModelError| {
        EngineError::Invalid(format!("cannot load the {what} {}: {e}", path.display()))
    };
    let retriever = match run.mode.trains_retriever() {
        true => Some(
            Retriever::load_as(&config.retriever, &device, dtype)
                .map_err(|e| load_error("retriever", &config.retriever, e))?,
        ),
        false => None,
    };
    let generator = match run.mode.trains_generator() {
        true => Some(
            Generator::load_as(&config.generator, &device, dtype)
                .map_err(|e| load_error("generator", &config.generator, e))?,
        ),
        false => None,
    };
    if let Some(checkpoint) = &resume {
        log(LogLevel::Info, format!("resuming from {}", checkpoint.display()));
    }
    let mut trainer = Trainer::new(
        config,
        &dir,
        BaseModels { retriever, generator },
        dataset.train.clone(),
        dataset.test.clone(),
        &dataset.corpus,
        resume.as_deref(),
    )
    .map_err(failed)?;
    // Steps after the checkpoint are redone, so their old figures go.
    context.runtime.block_on(context.store.truncate_run_metrics(id, trainer.step() as u32))?;
    context.runtime.block_on(context.store.set_run_progress(
        id,
        trainer.step() as u32,
        trainer.total_steps() as u32,
    ))?;
    let label = device_label(&device);
    let mut last_label = Instant::now();
    let mut store_error = None;
    let outcome = trainer
        .run(&mut |event| {
            let result = match event {
                TrainEvent::Step(report) => {
                    let point = point(report);
                    // Memory is read at most once a second.
                    let device = (last_label.elapsed().as_secs_f64() >= 1.0 || report.step == 1).then(|| {
                        last_label = Instant::now();
                        device_label(&device)
                    });
                    let stored = context.runtime.block_on(context.store.record_step(
                        id,
                        &point,
                        device.as_deref().or(Some(&label)),
                    ));
                    sink(JobEvent::Step { run_id: id, point });
                    stored
                }
                TrainEvent::Checkpoint { step, path } => {
                    let path = path.display().to_string();
                    let stored = context.runtime.block_on(context.store.set_run_checkpoint(id, &path));
                    sink(JobEvent::Checkpoint { run_id: id, step: *step as u32, path });
                    stored
                }
                TrainEvent::Eval { step, loss, .. } => {
                    log(LogLevel::Info, format!("step {step}: held-out loss {loss:.4}"));
                    context.runtime.block_on(context.store.set_run_eval_loss(id, *loss))
                }
                TrainEvent::Started { total_steps, examples, resumed_at, .. } => {
                    let at = resumed_at.map(|s| format!(", from step {s}")).unwrap_or_default();
                    log(LogLevel::Info, format!("training on {examples} examples, {total_steps} steps{at}"));
                    Ok(())
                }
                TrainEvent::Failed { step, error } => {
                    log(LogLevel::Error, format!("failed at step {step}: {error}"));
                    Ok(())
                }
                TrainEvent::Finished { .. } | TrainEvent::Cancelled { .. } => Ok(()),
            };
            if let Err(e) = result {
                // Losing the database means losing the run's record: stop at a checkpoint.
                store_error = Some(e);
                return ControlFlow::Break(());
            }
            if control.should_stop() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })
        .map_err(failed)?;
    if let Some(e) = store_error {
        return Err(e.into());
    }
    Ok(outcome)
}
