//! A training run as a job: its frozen copy of the approved triples (`triples.jsonl` in the run's
//! folder) through the trainer, every step recorded, checkpoints reported, resumed from the last
//! checkpoint when the run has one.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use attune_shared::{Hyper, JobStatus, LogLevel, NewRun, Run, TrainMode, TripleStatus};

use super::EngineError;
use super::job::{Control, EventSink, JobContext, JobEvent, device_label, finish_run, write_triples};
use crate::train::checkpoint::{self, TRIPLES_FILE};
use crate::train::config::{BaseModels, RunInputs, TrainConfig, load_split};
use crate::train::data::CsvColumns;
use crate::train::trainer::{Outcome, RunSetup, TrainEvent, Trainer};

/// The trainer's configuration for `run` in `dir`.
fn train_config(context: &JobContext, run: &Run, dir: &Path) -> Result<TrainConfig, EngineError> {
    let inputs = RunInputs {
        data: dir.join(TRIPLES_FILE),
        columns: CsvColumns::default(),
        retriever: context.model_dir(&run.retriever),
        generator: context.model_dir(&run.generator),
        device: context.device_spec.clone(),
        dtype: "auto".into(),
        corpus: None,
    };
    Ok(TrainConfig::from_hyper(&run.hyper, run.mode, inputs)?)
}

/// Counts the training and held-out examples `path` gives under `hyper`'s split.
fn count_split(path: &Path, hyper: &Hyper) -> Result<(u32, u32), EngineError> {
    let dataset = load_split(path, &CsvColumns::default(), hyper)?;
    Ok((dataset.train.len() as u32, dataset.test.len() as u32))
}

/// A staged copy of the approved triples; removed when dropped unless it was moved into its run.
struct Staged(PathBuf);

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| EngineError::Task(e.to_string()))?
}

/// How the approved triples would split under `hyper` (what Start would train and hold out).
pub async fn preview_split(context: &JobContext, hyper: &Hyper) -> Result<attune_shared::SplitPreview, EngineError> {
    let triples = context.store.all_triples(&[TripleStatus::Approved]).await?;
    let approved = triples.len() as u64;
    if triples.len() < 2 {
        return Ok(attune_shared::SplitPreview { approved, train: approved, held_out: 0 });
    }
    let path = std::env::temp_dir().join(format!("attune-split-{}.jsonl", rand::random::<u64>()));
    let staged = Staged(path.clone());
    let hyper = hyper.clone();
    let (train, held_out) = blocking(move || {
        write_triples(&path, &triples)?;
        count_split(&path, &hyper)
    })
    .await?;
    drop(staged);
    Ok(attune_shared::SplitPreview { approved, train: u64::from(train), held_out: u64::from(held_out) })
}

/// Freezes the approved triples into a new run's folder and queues the run (`request` already
/// names its models). The files are written, counted and moved on a blocking thread; the run is
/// not taken from the queue before its folder and triples are in place.
pub async fn queue_run(context: &JobContext, request: &NewRun) -> Result<Run, EngineError> {
    let triples = context.store.all_triples(&[TripleStatus::Approved]).await?;
    if triples.len() < 2 {
        return Err(EngineError::NotEnoughTriples(format!(
            "training needs at least 2 approved triples ({} approved): review some first",
            triples.len()
        )));
    }
    let runs_dir = context.runs_dir();
    let staged = Staged(runs_dir.join(format!(".pending-{}.jsonl", rand::random::<u64>())));
    let (path, hyper) = (staged.0.clone(), request.hyper.clone());
    let (examples, held_out) = blocking(move || {
        std::fs::create_dir_all(&runs_dir)
            .map_err(|e| EngineError::Failed(format!("cannot create {}: {e}", runs_dir.display())))?;
        write_triples(&path, &triples)?;
        count_split(&path, &hyper)
    })
    .await?;
    if examples == 0 {
        return Err(EngineError::NotEnoughTriples(
            "every approved triple was held out: approve triples of more passages".into(),
        ));
    }
    let name = request.name.clone().filter(|n| !n.trim().is_empty());
    let count = context.store.runs().await?.len() + 1;
    let name = name.unwrap_or_else(|| format!("{} run {count}", request.mode.as_str()));
    let run = context.store.insert_run(&name, request, "", examples, held_out).await?;
    let dir = context.run_dir(run.id);
    let (from, to) = (staged.0.clone(), dir.clone());
    let moved = blocking(move || {
        std::fs::create_dir_all(&to)
            .and_then(|()| std::fs::rename(&from, to.join(TRIPLES_FILE)))
            .map_err(|e| EngineError::Failed(format!("cannot prepare {}: {e}", to.display())))
    })
    .await;
    if let Err(error) = moved {
        context.store.set_run_status(run.id, JobStatus::Failed, Some(&error.to_string())).await?;
        return Err(error);
    }
    context.store.set_run_dir(run.id, &dir.display().to_string()).await?;
    Ok(run)
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
    let config = train_config(context, &run, &dir)?;
    let resume = checkpoint::latest_checkpoint(&dir).ok();
    let started = context.runtime.block_on(context.store.set_run_status(id, JobStatus::Running, None))?;
    sink(JobEvent::Run(Box::new(started)));
    let dataset = config.load_data()?;
    // Hard negatives, distractors and cloze pairs come from every passage of the documents, not
    // only those with triples; with no documents (triples imported alone), from the triples' own
    // passages, as on the command line.
    let from_documents = crate::train::trainer::mining_of(&config).is_some()
        || (config.mode == TrainMode::Retriever && config.hyper.cloze_pairs > 0);
    let corpus = match from_documents {
        false => dataset.corpus,
        true => {
            let documents: Vec<String> =
                context.runtime.block_on(context.store.indexed_passages())?.into_iter().map(|p| p.text).collect();
            if documents.is_empty() { dataset.corpus } else { documents }
        }
    };
    let (models, device) = BaseModels::load(&config)?;
    let (hyper_epochs, min_steps) = (config.hyper.epochs, config.hyper.min_steps);
    let mut trainer = Trainer::new(RunSetup {
        config,
        out: dir.clone(),
        models,
        train: dataset.train,
        held_out: dataset.test,
        corpus,
        resume,
    })?;
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
    // The run as stored, sent again when its device or held-out loss changes, so pages that
    // watch it show them live.
    let announce = |sink: &EventSink| {
        if let Ok(Some(run)) = context.runtime.block_on(context.store.run(id)) {
            sink(JobEvent::Run(Box::new(run)));
        }
    };
    let mut device_announced = false;
    let mut last_point = None::<attune_shared::StepPoint>;
    let outcome = trainer.run(&mut |event| {
        let result = match event {
            TrainEvent::Step(point) => {
                let point = *point;
                // Memory is read at most once a second.
                let device = (last_label.elapsed().as_secs_f64() >= 1.0 || point.step == 1).then(|| {
                    last_label = Instant::now();
                    device_label(&device)
                });
                let stored =
                    context.runtime.block_on(context.store.record_step(id, &point, device.as_deref().or(Some(&label))));
                if !device_announced && stored.is_ok() {
                    device_announced = true;
                    announce(sink);
                }
                last_point = Some(point);
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
                let stored = context.runtime.block_on(context.store.set_run_eval_loss(id, *step as u32, *loss));
                if stored.is_ok() {
                    announce(sink);
                    // The step's point again, with its held-out loss, for the live chart.
                    if let Some(mut point) = last_point.filter(|p| p.step as usize == *step) {
                        point.eval_loss = Some(*loss);
                        sink(JobEvent::Step { run_id: id, point });
                    }
                }
                stored
            }
            TrainEvent::Started {
                total_steps,
                steps_per_epoch,
                epochs,
                examples,
                cloze_pairs,
                held_out_cloze_pairs,
                resumed_at,
            } => {
                // The step the trainer restored, which is the checkpoint it resumed from.
                let at = resumed_at.map(|s| format!(", resumed from the checkpoint at step {s}")).unwrap_or_default();
                let chosen = match *epochs > hyper_epochs as usize {
                    true => format!(" (more than the {hyper_epochs} set, to reach {min_steps} steps)"),
                    false => String::new(),
                };
                let cloze = match cloze_pairs {
                    0 => String::new(),
                    n => format!(
                        " ({n} of them inverse cloze pairs from the documents' passages, {held_out_cloze_pairs} more \
                         held out)"
                    ),
                };
                log(
                    LogLevel::Info,
                    format!(
                        "training on {examples} examples{cloze}, {steps_per_epoch} steps an epoch: {epochs} \
                         epochs{chosen}, {total_steps} steps{at}"
                    ),
                );
                Ok(())
            }
            TrainEvent::KeptBest { step, loss, stopped_early } => {
                let early = if *stopped_early { "the held-out loss stopped falling: stopped early; " } else { "" };
                log(
                    LogLevel::Info,
                    format!("{early}kept the adapters of step {step}, the best held-out loss ({loss:.4})"),
                );
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
    })?;
    if let Some(e) = store_error {
        return Err(e.into());
    }
    Ok(outcome)
}
