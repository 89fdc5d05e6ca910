//! `attune train`: fine-tune the retriever, the generator or both on triples, with a progress bar.

use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{Context, bail};

use attune::train::checkpoint;
use attune::train::config::{BaseModels, RunInputs, TrainConfig};
use attune::train::trainer::{Outcome, RunSetup, TrainEvent, Trainer};
use attune_shared::{Candidates, Decay, Hyper, Marginalization, RetrieverLoss, TrainMode};

use super::{ColumnArgs, model_path, progress_bar};

/// `Hyper::default()`, the only table of defaults: every flag below is an override of it.
fn defaults() -> Hyper {
    Hyper::default()
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Triples (CSV with --*-column names, or JSONL {question, passage, answer}) or the shared QA format.
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Folder for the run: config.json, log.jsonl, checkpoints/, and the adapters retriever/ and generator/.
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// e2e, retriever or generator.
    #[arg(long, default_value_t = TrainMode::default())]
    mode: TrainMode,
    /// Retriever folder, or `default`.
    #[arg(long, default_value = "default")]
    retriever: String,
    /// Generator folder or .gguf file, or `default`.
    #[arg(long, default_value = "default")]
    generator: String,
    #[arg(long, default_value = "./models")]
    models_dir: PathBuf,
    #[arg(long, default_value_t = defaults().epochs)]
    epochs: u32,
    /// Stop after N optimiser steps (the learning-rate schedule spans them).
    #[arg(long)]
    max_steps: Option<u32>,
    /// More epochs for a small set: as many as make N optimiser steps (at most 1000; 0: --epochs exactly).
    #[arg(long, default_value_t = defaults().min_steps)]
    min_steps: u32,
    /// Stop when the held-out loss has not improved for N evaluations in a row, and keep the
    /// adapters of the best one (0: run every step and keep the last).
    #[arg(long, default_value_t = defaults().early_stopping_patience)]
    early_stopping_patience: u32,
    /// Questions per micro-batch (also the in-batch negatives of the contrastive loss).
    #[arg(long, default_value_t = defaults().batch_size)]
    batch_size: u32,
    /// Micro-batches summed into one optimiser step.
    #[arg(long, default_value_t = defaults().grad_accum)]
    grad_accum: u32,
    #[arg(long, default_value_t = defaults().lr)]
    lr: f64,
    #[arg(long, default_value_t = defaults().warmup_ratio)]
    warmup_ratio: f64,
    /// linear, cosine or constant.
    #[arg(long, default_value_t = defaults().decay)]
    decay: Decay,
    #[arg(long, default_value_t = defaults().weight_decay)]
    weight_decay: f64,
    /// Clip the global gradient norm (0: off).
    #[arg(long, default_value_t = defaults().max_grad_norm)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = defaults().lora_r)]
    lora_r: u32,
    #[arg(long, default_value_t = defaults().lora_alpha)]
    lora_alpha: f64,
    #[arg(long, default_value_t = defaults().lora_dropout)]
    lora_dropout: f32,
    /// Candidate passages per question in e2e mode (gold always included).
    #[arg(long, default_value_t = defaults().top_k)]
    top_k: u32,
    /// Weight λ of the generator's loss: L = L_retriever + λ · L_generator.
    #[arg(long, default_value_t = defaults().generator_weight)]
    lambda: f64,
    /// sequence or token.
    #[arg(long, default_value_t = defaults().marginalization)]
    marginalization: Marginalization,
    /// e2e candidates: batch (the top-k of the batch's passages) or corpus (those and the hard
    /// negatives, each question's best passages of the whole corpus; needs --hard-negatives).
    #[arg(long, default_value_t = defaults().candidates)]
    candidates: Candidates,
    /// The retriever's loss in e2e mode: contrastive, lsr (towards the passages that make the
    /// generator's answer likelier, REPLUG-LSR), emdr2 (the marginal likelihood of the answer with
    /// the generator's side detached), contrastive+lsr or contrastive+emdr2.
    #[arg(long, default_value_t = defaults().retriever_loss)]
    retriever_loss: RetrieverLoss,
    /// β of the lsr loss: the generator's log-likelihoods are divided by it (smaller: sharper).
    #[arg(long, default_value_t = defaults().lsr_temperature)]
    lsr_temperature: f64,
    /// RAFT's P: the chance that a question's gold passage is among its e2e candidates (1: always).
    #[arg(long, default_value_t = defaults().oracle_fraction)]
    oracle_fraction: f64,
    /// Scale of the cosine similarities in the contrastive loss and in p(z|q).
    #[arg(long, default_value_t = defaults().scale)]
    scale: f64,
    /// Add the passage-to-question direction to the contrastive loss.
    #[arg(long)]
    symmetric: bool,
    /// Passages hard negatives are mined from (JSONL with a "text" field, or one passage a line);
    /// default: the data's corpus (the shared format's .corpus.jsonl, or every triple's passage).
    #[arg(long)]
    corpus: Option<PathBuf>,
    #[command(flatten)]
    negatives: NegativeArgs,
    #[arg(long, default_value_t = defaults().max_passage_tokens)]
    max_passage_tokens: u32,
    #[arg(long, default_value_t = defaults().max_answer_tokens)]
    max_answer_tokens: u32,
    /// Generator sequences (question × candidate passage) in one graph at a time: more is faster
    /// on a GPU, fewer needs less memory. Gradients are the same either way.
    #[arg(long, default_value_t = defaults().sequences_per_chunk)]
    sequences_per_chunk: u32,
    /// Keep only each generator layer's input and recompute the layer in the backward pass: far
    /// less memory, about a third more generator compute, the same gradients.
    #[arg(long)]
    activation_checkpointing: bool,
    #[arg(long, default_value_t = defaults().seed)]
    seed: u64,
    /// Save a checkpoint every N optimiser steps (0: only at the end).
    #[arg(long, default_value_t = defaults().checkpoint_every)]
    checkpoint_every: u32,
    /// Keep the newest N checkpoints; older ones are deleted.
    #[arg(long, default_value_t = defaults().keep_checkpoints)]
    keep_checkpoints: u32,
    /// Report the held-out loss every N steps (0: never).
    #[arg(long, default_value_t = defaults().eval_every)]
    eval_every: u32,
    /// For triples without a split file: the share of passages held out for testing.
    #[arg(long, default_value_t = defaults().test_fraction)]
    test_fraction: f64,
    /// Train on the first N training rows only.
    #[arg(long)]
    max_train_examples: Option<u32>,
    /// Retriever mode: add up to N inverse cloze pairs drawn from the corpus (--corpus, else the
    /// triples' passages): a sentence as the question, the rest of its passage as the positive.
    #[arg(long, default_value_t = defaults().cloze_pairs)]
    cloze_pairs: u32,
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

/// The hard-negative settings (`attune train` and `attune adapt` share them).
#[derive(Debug, Clone, clap::Args)]
pub struct NegativeArgs {
    /// Hard negatives per question, mined from the corpus by the retriever (0: in-batch negatives only).
    #[arg(long, default_value_t = defaults().hard_negatives)]
    pub hard_negatives: u32,
    /// A mined passage is a negative only when it scores below the gold passage by this share of
    /// the gold's score (near-copies and passages that answer as well are false negatives).
    #[arg(long, default_value_t = defaults().hard_negative_margin)]
    pub hard_negative_margin: f64,
    /// Mine the hard negatives again every N steps with the retriever as trained so far (0: once,
    /// with the base retriever). A multiple of --checkpoint-every keeps a resumed run exact.
    #[arg(long, alias = "refresh-index-every", default_value_t = defaults().refresh_negatives_every)]
    pub refresh_negatives_every: u32,
    /// Which ranking of the corpus negatives are mined from: dense (the retriever's), bm25 (passages
    /// sharing the question's words, as DPR's) or hybrid (both fused).
    #[arg(long, default_value_t = defaults().mining_retrieval)]
    pub mining_retrieval: attune_shared::RetrievalMethod,
    /// Generator mode: mined passages put into each training prompt beside the gold one, in random
    /// order (RAFT; the gold passage is there with chance --oracle-fraction). 0: the gold alone.
    #[arg(long, default_value_t = defaults().distractors)]
    pub distractors: u32,
}

impl NegativeArgs {
    /// `hyper` with these settings.
    pub fn apply(&self, hyper: Hyper) -> Hyper {
        Hyper {
            hard_negatives: self.hard_negatives,
            hard_negative_margin: self.hard_negative_margin,
            refresh_negatives_every: self.refresh_negatives_every,
            distractors: self.distractors,
            mining_retrieval: self.mining_retrieval,
            ..hyper
        }
    }
}

impl TrainArgs {
    /// The flags as overrides of `Hyper::default()`.
    fn hyper(&self) -> Hyper {
        Hyper {
            epochs: self.epochs,
            max_steps: self.max_steps,
            min_steps: self.min_steps,
            early_stopping_patience: self.early_stopping_patience,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            lr: self.lr,
            warmup_ratio: self.warmup_ratio,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            lora_r: self.lora_r,
            lora_alpha: self.lora_alpha,
            lora_dropout: self.lora_dropout,
            top_k: self.top_k,
            generator_weight: self.lambda,
            scale: self.scale,
            max_passage_tokens: self.max_passage_tokens,
            max_answer_tokens: self.max_answer_tokens,
            test_fraction: self.test_fraction,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            keep_checkpoints: self.keep_checkpoints,
            eval_every: self.eval_every,
            decay: self.decay,
            marginalization: self.marginalization,
            candidates: self.candidates,
            retriever_loss: self.retriever_loss,
            lsr_temperature: self.lsr_temperature,
            oracle_fraction: self.oracle_fraction,
            symmetric: self.symmetric,
            max_train_examples: self.max_train_examples,
            cloze_pairs: self.cloze_pairs,
            sequences_per_chunk: self.sequences_per_chunk,
            activation_checkpointing: self.activation_checkpointing,
            ..self.negatives.apply(defaults())
        }
    }

    fn config(&self) -> anyhow::Result<TrainConfig> {
        let Some(data) = &self.data else { bail!("--data is required") };
        let inputs = RunInputs {
            data: data.clone(),
            columns: self.columns.columns(),
            retriever: model_path(&self.retriever, &self.models_dir, crate::DEFAULT_RETRIEVER),
            generator: model_path(&self.generator, &self.models_dir, crate::DEFAULT_GENERATOR),
            device: self.device.clone(),
            dtype: self.dtype.clone(),
            corpus: self.corpus.clone(),
        };
        Ok(TrainConfig::from_hyper(&self.hyper(), self.mode, inputs)?)
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let (config, out, checkpoint) = match &args.resume {
        Some(dir) => {
            let checkpoint = checkpoint::latest_checkpoint(dir)?;
            let run_dir = checkpoint::run_folder_of(dir).context("a checkpoint outside a run folder")?;
            let config = checkpoint::read_config(&run_dir)?;
            eprintln!("resuming {} from {} (its saved settings apply)", run_dir.display(), checkpoint.display());
            (config, run_dir, Some(checkpoint))
        }
        None => {
            let out = args.out.clone().context("--out is required")?;
            if out.join(checkpoint::CONFIG_FILE).is_file() {
                bail!("{} already holds a run: continue it with --resume {0}, or choose another --out", out.display());
            }
            (args.config()?, out, None)
        }
    };
    config.validate()?;
    let dataset = config.load_data().with_context(|| format!("reading {}", config.data.display()))?;
    if !dataset.skipped.is_empty() {
        eprintln!("skipped {} rows of {}:", dataset.skipped.len(), config.data.display());
        for skipped in dataset.skipped.iter().take(5) {
            eprintln!("  row {}: {}", skipped.row, skipped.reason);
        }
    }
    let corpus = match &config.corpus {
        Some(path) => super::eval::read_corpus(path)?,
        None => dataset.corpus,
    };
    let (models, device) = BaseModels::load(&config)?;
    eprintln!(
        "training {:?} on {} examples ({} held out, corpus of {}) on {device:?}",
        config.mode,
        dataset.train.len(),
        dataset.test.len(),
        corpus.len()
    );
    let (epochs_set, min_steps) = (config.hyper.epochs, config.hyper.min_steps);
    let mut trainer = Trainer::new(RunSetup {
        config,
        out: out.clone(),
        models,
        train: dataset.train,
        held_out: dataset.test,
        corpus,
        resume: checkpoint,
    })?;
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
            TrainEvent::Started { total_steps, steps_per_epoch, epochs, examples, cloze_pairs, .. } => {
                bar.println(format!(
                    "{examples} examples{}, {steps_per_epoch} steps an epoch: {epochs} epochs, {total_steps} steps{}",
                    match cloze_pairs {
                        0 => String::new(),
                        n => format!(" ({n} of them inverse cloze pairs)"),
                    },
                    if *epochs > epochs_set as usize {
                        format!(" (more than --epochs {epochs_set}: --min-steps {min_steps})")
                    } else {
                        String::new()
                    }
                ))
            }
            TrainEvent::KeptBest { step, loss, stopped_early } => bar.println(format!(
                "{}kept the adapters of step {step}, the best held-out loss ({loss:.4})",
                if *stopped_early { "held-out loss stopped falling: stopped early and " } else { "" }
            )),
            TrainEvent::Finished { .. } | TrainEvent::Cancelled { .. } => {}
        }
        ControlFlow::Continue(())
    })?;
    bar.finish();
    if let Outcome::Finished { steps, last } = outcome {
        let loss = last.map(|r| format!(", last loss {:.4}", r.loss)).unwrap_or_default();
        eprintln!("done: {steps} steps{loss}");
        for part in [checkpoint::RETRIEVER_DIR, checkpoint::GENERATOR_DIR] {
            let dir = out.join(part);
            if dir.is_dir() {
                eprintln!("{part} adapter: {}", dir.display());
            }
        }
    }
    Ok(())
}
