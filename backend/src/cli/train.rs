//! `attune train`: fine-tune the retriever, the generator or both on triples, with a progress bar.

use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{Context, bail};

use attune::model::generator::Generator;
use attune::model::retriever::Retriever;
use attune::train::data::{SplitOptions, load_dataset};
use attune::train::loss::Contrastive;
use attune::train::optim::{AdamWConfig, Decay};
use attune::train::step::{LossConfig, Marginalization, TrainMode};
use attune::train::trainer::{self, BaseModels, Outcome, TrainConfig, TrainEvent, Trainer};

use super::{ColumnArgs, model_path, progress_bar};

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Triples (CSV with --*-column names, or JSONL {question, passage, answer}) or the shared QA format.
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Folder for the run: config.json, log.jsonl, checkpoints/, and the adapters retriever/ and generator/.
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "e2e")]
    mode: TrainMode,
    /// Retriever folder, or `default`.
    #[arg(long, default_value = "default")]
    retriever: String,
    /// Generator folder or .gguf file, or `default`.
    #[arg(long, default_value = "default")]
    generator: String,
    #[arg(long, default_value = "./models")]
    models_dir: PathBuf,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Stop after N optimiser steps (the learning-rate schedule spans them).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Questions per micro-batch (also the in-batch negatives of the contrastive loss).
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Micro-batches summed into one optimiser step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    #[arg(long, default_value_t = 0.1)]
    warmup_ratio: f64,
    #[arg(long, value_enum, default_value = "linear")]
    decay: Decay,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Clip the global gradient norm (0: off).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = 8)]
    lora_r: usize,
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    #[arg(long, default_value_t = 0.05)]
    lora_dropout: f32,
    /// Candidate passages per question in e2e mode (gold always included).
    #[arg(long, default_value_t = 4)]
    top_k: usize,
    /// Weight λ of the generator's loss: L = L_retriever + λ · L_generator.
    #[arg(long, default_value_t = 1.0)]
    lambda: f64,
    #[arg(long, value_enum, default_value = "sequence")]
    marginalization: Marginalization,
    /// Scale of the cosine similarities in the contrastive loss and in p(z|q).
    #[arg(long, default_value_t = 20.0)]
    scale: f64,
    /// Add the passage-to-question direction to the contrastive loss.
    #[arg(long)]
    symmetric: bool,
    /// Hard negatives per question, mined from the corpus with the base retriever.
    #[arg(long, default_value_t = 0)]
    hard_negatives: usize,
    #[arg(long, default_value_t = 128)]
    max_passage_tokens: usize,
    #[arg(long, default_value_t = 32)]
    max_answer_tokens: usize,
    /// Generator sequences (question × candidate passage) in one graph at a time: more is faster
    /// on a GPU, fewer needs less memory. Gradients are the same either way.
    #[arg(long, default_value_t = attune::train::step::SEQUENCES_PER_CHUNK)]
    sequences_per_chunk: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Save a checkpoint every N optimiser steps (0: only at the end).
    #[arg(long, default_value_t = 50)]
    checkpoint_every: usize,
    /// Report the held-out loss every N steps (0: never).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// For triples without a split file: the share of passages held out for testing.
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    /// Train on the first N training rows only.
    #[arg(long)]
    max_train_examples: Option<usize>,
    #[command(flatten)]
    columns: ColumnArgs,
    /// Continue a run (its folder, or one of its checkpoints) exactly where it stopped.
    #[arg(long)]
    resume: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, default_value = "auto")]
    dtype: String,
}

impl TrainArgs {
    fn config(&self) -> anyhow::Result<TrainConfig> {
        let Some(data) = &self.data else { bail!("--data is required") };
        Ok(TrainConfig {
            data: data.clone(),
            columns: self.columns.columns(),
            split: SplitOptions { test_fraction: self.test_fraction, seed: self.seed },
            max_train_examples: self.max_train_examples,
            retriever: model_path(&self.retriever, &self.models_dir, crate::DEFAULT_RETRIEVER),
            generator: model_path(&self.generator, &self.models_dir, crate::DEFAULT_GENERATOR),
            device: self.device.clone(),
            dtype: self.dtype.clone(),
            loss: LossConfig {
                mode: self.mode,
                contrastive: Contrastive { scale: self.scale, symmetric: self.symmetric },
                top_k: self.top_k,
                generator_weight: self.lambda,
                marginalization: self.marginalization,
                max_passage_tokens: self.max_passage_tokens,
                max_answer_tokens: self.max_answer_tokens,
                sequences_per_chunk: self.sequences_per_chunk,
            },
            epochs: self.epochs,
            max_steps: self.max_steps,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            lr: self.lr,
            warmup_ratio: self.warmup_ratio,
            decay: self.decay,
            optimizer: AdamWConfig { weight_decay: self.weight_decay, ..AdamWConfig::default() },
            max_grad_norm: self.max_grad_norm,
            lora_r: self.lora_r,
            lora_alpha: self.lora_alpha,
            lora_dropout: self.lora_dropout,
            retriever_targets: TrainConfig::default().retriever_targets,
            generator_targets: TrainConfig::default().generator_targets,
            hard_negatives: self.hard_negatives,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            eval_every: self.eval_every,
        })
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let (config, out, checkpoint) = match &args.resume {
        Some(dir) => {
            let checkpoint = trainer::latest_checkpoint(dir)?;
            let run_dir = if dir.join("config.json").is_file() {
                dir.clone()
            } else {
                checkpoint
                    .parent()
                    .and_then(|p| p.parent())
                    .map(PathBuf::from)
                    .context("a checkpoint outside a run folder")?
            };
            let config = trainer::read_config(&run_dir)?;
            eprintln!("resuming {} from {} (its saved settings apply)", run_dir.display(), checkpoint.display());
            (config, run_dir, Some(checkpoint))
        }
        None => {
            let out = args.out.clone().context("--out is required")?;
            if out.join("config.json").is_file() {
                bail!("{} already holds a run: continue it with --resume {0}, or choose another --out", out.display());
            }
            (args.config()?, out, None)
        }
    };
    config.validate()?;
    let dataset = load_dataset(&config.data, &config.columns, config.split)
        .with_context(|| format!("reading {}", config.data.display()))?;
    if !dataset.skipped.is_empty() {
        eprintln!("skipped {} rows of {}:", dataset.skipped.len(), config.data.display());
        for skipped in dataset.skipped.iter().take(5) {
            eprintln!("  row {}: {}", skipped.row, skipped.reason);
        }
    }
    let mut train = dataset.train.clone();
    if let Some(max) = config.max_train_examples {
        train.truncate(max);
    }
    let device = attune::model::device::select(&config.device)?;
    let dtype = attune::model::device::select_dtype(&config.dtype, &device)?;
    let mode = config.loss.mode;
    let retriever = match mode.trains_retriever() {
        true => Some(
            Retriever::load_as(&config.retriever, &device, dtype)
                .with_context(|| format!("loading the retriever {}", config.retriever.display()))?,
        ),
        false => None,
    };
    let generator = match mode.trains_generator() {
        true => Some(
            Generator::load_as(&config.generator, &device, dtype)
                .with_context(|| format!("loading the generator {}", config.generator.display()))?,
        ),
        false => None,
    };
    eprintln!(
        "training {mode:?} on {} examples ({} held out, corpus of {}) on {device:?}",
        train.len(),
        dataset.test.len(),
        dataset.corpus.len()
    );
    let mut trainer = Trainer::new(
        config.clone(),
        &out,
        BaseModels { retriever, generator },
        train,
        dataset.test.clone(),
        &dataset.corpus,
        checkpoint.as_deref(),
    )?;
    let bar = progress_bar(
        trainer.total_steps() as u64,
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} steps, ETA {eta} · {msg}",
    );
    bar.set_position(trainer.step() as u64);
    let outcome = trainer.run(&mut |event| {
        match event {
            TrainEvent::Step(report) => {
                bar.set_position(report.step as u64);
                let parts = match (report.retriever_loss, report.generator_loss) {
                    (Some(r), Some(g)) => format!(" (retriever {r:.4}, generator {g:.4})"),
                    _ => String::new(),
                };
                bar.set_message(format!(
                    "loss {:.4}{parts} · lr {:.2e} · {:.0} tok/s",
                    report.loss, report.lr, report.tokens_per_second
                ));
            }
            TrainEvent::Eval { step, loss, .. } => bar.println(format!("step {step}: held-out loss {loss:.4}")),
            TrainEvent::Checkpoint { path, .. } => bar.println(format!("checkpoint {}", path.display())),
            TrainEvent::Failed { step, error } => bar.println(format!("failed at step {step}: {error}")),
            TrainEvent::Started { .. } | TrainEvent::Finished { .. } | TrainEvent::Cancelled { .. } => {}
        }
        ControlFlow::Continue(())
    })?;
    bar.finish();
    if let Outcome::Finished { steps, last } = outcome {
        let loss = last.map(|r| format!(", last loss {:.4}", r.loss)).unwrap_or_default();
        eprintln!("done: {steps} steps{loss}");
        for part in ["retriever", "generator"] {
            let dir = out.join(part);
            if dir.is_dir() {
                eprintln!("{part} adapter: {}", dir.display());
            }
        }
    }
    Ok(())
}
