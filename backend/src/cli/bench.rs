//! `attune bench model|train|device|agree`: figures beside PyTorch's, and device-vs-CPU agreement.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use super::model_path;
use crate::{DEFAULT_GENERATOR, DEFAULT_RETRIEVER};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Retriever embeddings/s, generator prefill and decode tokens/s, and PyTorch's on the same work.
    Model(BenchModelArgs),
    /// Seconds per optimiser step in retriever and e2e mode, and PyTorch's on the same step.
    Train(BenchTrainArgs),
    /// Accelerator figures with given model folders (random weights allowed): embeddings/s,
    /// retriever and e2e optimiser steps, prefill and decode tokens/s; one JSON line.
    Device(Box<BenchDeviceArgs>),
    /// The local model's synthesis (kept triples/min, tokens/s) and evaluation answers (answers/s)
    /// decoded side by side, beside one prompt at a time, on a real PDF's passages.
    Synth(BenchSynthArgs),
    /// Does a device compute what the CPU computes? Tiny models from the folders' configs with
    /// seeded weights: embeddings, logits, the e2e loss and every LoRA gradient.
    Agree(BenchAgreeArgs),
}

#[derive(clap::Args, Debug)]
pub struct BenchDeviceArgs {
    /// Retriever folder (`default`: the default one in --models-dir).
    #[arg(long, default_value = "default")]
    retriever: String,
    /// Generator folder or GGUF (`default`: the default one in --models-dir).
    #[arg(long, default_value = "default")]
    generator: String,
    #[arg(long, default_value = "./models")]
    models_dir: PathBuf,
    #[arg(long, default_value = "auto")]
    device: String,
    /// auto (f32 on the CPU, bf16 on a GPU), f32, bf16 or f16. LoRA weights stay f32.
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// Seeded random weights in the shapes of the folders' config.json (no checkpoint needed).
    #[arg(long)]
    random_init: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// What to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "embed,retriever-step,e2e-step,decode")]
    parts: Vec<attune::bench::device::Part>,
    #[arg(long, default_value_t = 1024)]
    embed_texts: usize,
    #[arg(long, default_value_t = 128)]
    embed_batch: usize,
    #[arg(long, default_value_t = 64)]
    retriever_batch: usize,
    #[arg(long, default_value_t = 8)]
    e2e_batch: usize,
    #[arg(long, default_value_t = 4)]
    top_k: usize,
    #[arg(long, default_value_t = 32)]
    sequences_per_chunk: usize,
    /// Timed optimiser steps (after a warm-up step).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
}

#[derive(clap::Args, Debug)]
pub struct BenchAgreeArgs {
    /// A retriever folder whose config.json (a small one) and tokenizer.json shape the tiny model.
    #[arg(long)]
    retriever: PathBuf,
    /// A generator folder (Hugging Face config.json and tokenizer.json).
    #[arg(long)]
    generator: PathBuf,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Also write the rows as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct BenchSynthArgs {
    #[arg(long, default_value = "./models")]
    models_dir: PathBuf,
    #[arg(long, default_value = "../shared/data/pdf/biopython_tutorial_1.80.pdf")]
    pdf: PathBuf,
    /// The first passage synthesised from (0-based, in the order ingestion cuts them).
    #[arg(long, default_value_t = 300)]
    first_passage: usize,
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    passages: u32,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    questions_per_passage: u32,
    /// Questions with their gold passages (shared QA format) for the answer figure.
    #[arg(long, default_value = "../shared/data/qa/halueval_qa.jsonl")]
    qa: PathBuf,
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    answer_questions: u32,
    /// Skip the one-prompt-at-a-time comparison.
    #[arg(long)]
    no_comparison: bool,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct BenchModelArgs {
    #[arg(long, default_value = "./models")]
    models_dir: PathBuf,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Python with torch, transformers and sentence-transformers, for the reference figures.
    #[arg(long, default_value = "python3")]
    python: PathBuf,
    /// Skip the PyTorch reference.
    #[arg(long)]
    no_reference: bool,
    #[arg(long, default_value = "scripts/reference/bench_model.py")]
    reference_script: PathBuf,
    /// Also write the figures and ratios as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct BenchTrainArgs {
    #[arg(long, default_value = "./models")]
    models_dir: PathBuf,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Python with torch, transformers, sentence-transformers and peft, for the reference figures.
    #[arg(long, default_value = "python3")]
    python: PathBuf,
    /// Skip the PyTorch reference.
    #[arg(long)]
    no_reference: bool,
    #[arg(long, default_value = "scripts/reference/bench_train.py")]
    reference_script: PathBuf,
    /// The parts to run, each in a process of its own per side: retriever, e2e, generator,
    /// generator-checkpointed (activation checkpointing on both sides).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "retriever,e2e,generator,generator-checkpointed",
        value_parser = parse_part
    )]
    parts: Vec<attune::bench::train::Part>,
    /// Timed optimiser steps per part (after one warm-up step); the figure is their median.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    steps: u32,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run one part in this process and print its figures as one JSON line (what the parent runs).
    #[arg(long, hide = true, value_parser = parse_part)]
    part_only: Option<attune::bench::train::Part>,
}

fn parse_part(text: &str) -> Result<attune::bench::train::Part, String> {
    attune::bench::train::Part::parse(text).map_err(|e| e.to_string())
}

pub fn run_bench_model(args: BenchModelArgs) -> anyhow::Result<()> {
    let device = attune::model::device::select(&args.device)?;
    eprintln!("measuring attune on {device:?} ...");
    let ours = attune::bench::model::measure(&args.models_dir, &device)?;
    let config = attune::bench::model::BenchConfig {
        models_dir: args.models_dir,
        python: (!args.no_reference).then_some(args.python),
        reference_script: args.reference_script,
    };
    let reference = if config.python.is_some() {
        eprintln!("measuring the PyTorch reference ...");
        match attune::bench::model::measure_reference(&config) {
            Ok(reference) => Some(reference),
            Err(e) => {
                eprintln!("no PyTorch figures: {e:#}");
                None
            }
        }
    } else {
        None
    };
    print!("{}", attune::bench::model::report(&ours, reference.as_ref()));
    if let Some(path) = &args.json {
        let figures = attune::bench::model::ModelFigures::new(ours, reference);
        std::fs::write(path, serde_json::to_string_pretty(&figures)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

pub fn run_bench_train(args: BenchTrainArgs) -> anyhow::Result<()> {
    use attune::bench::train::{PartFigures, PartResult, measure_part, measure_reference};
    let steps = args.steps as usize;
    if let Some(part) = args.part_only {
        let device = attune::model::device::select(&args.device)?;
        let figures = measure_part(part, steps, &args.models_dir, &device)?;
        println!("{}", serde_json::to_string(&figures)?);
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let mut results = Vec::new();
    for part in args.parts {
        // One process per part and side: the peak resident size is the part's own, and the two
        // sides never hold their models at once (e2e mode on both does not fit a 24 GB machine).
        let pytorch = if args.no_reference {
            None
        } else {
            eprintln!("{}: measuring the PyTorch reference ...", part.name());
            match measure_reference(&args.python, &args.reference_script, &args.models_dir, part, steps) {
                Ok(figures) => Some(figures),
                Err(e) => {
                    eprintln!("no PyTorch figures: {e:#}");
                    None
                }
            }
        };
        eprintln!("{}: measuring attune's trainer on {} ...", part.name(), args.device);
        let output = std::process::Command::new(&exe)
            .args(["bench", "train", "--part-only", part.name(), "--steps", &steps.to_string(), "--device"])
            .arg(&args.device)
            .arg("--models-dir")
            .arg(&args.models_dir)
            .stderr(std::process::Stdio::inherit())
            .output()?;
        anyhow::ensure!(output.status.success(), "the {} part failed ({})", part.name(), output.status);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_default();
        let attune: PartFigures = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("the {} part printed no figures ({e}): {stdout}", part.name()))?;
        results.push(PartResult::new(part, attune, pytorch));
    }
    print!("{}", attune::bench::train::report(&results));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)? + "\n")?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

pub fn run_bench_synth(args: BenchSynthArgs) -> anyhow::Result<()> {
    let config = attune::bench::synth::SynthBenchConfig {
        models_dir: args.models_dir,
        pdf: args.pdf,
        first: args.first_passage,
        count: args.passages as usize,
        questions_per_passage: args.questions_per_passage,
        qa: args.qa,
        answer_questions: args.answer_questions as usize,
        one_at_a_time: !args.no_comparison,
    };
    let bench = attune::bench::synth::measure(&config)?;
    print!("{}", attune::bench::synth::report(&bench));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&bench)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

pub fn run_bench_device(args: BenchDeviceArgs) -> anyhow::Result<()> {
    let device = attune::model::device::select(&args.device)?;
    let config = attune::bench::device::DeviceBenchConfig {
        retriever: model_path(&args.retriever, &args.models_dir, DEFAULT_RETRIEVER),
        generator: model_path(&args.generator, &args.models_dir, DEFAULT_GENERATOR),
        weights: if args.random_init {
            attune::model::random::WeightSource::Random { seed: args.seed }
        } else {
            attune::model::random::WeightSource::Checkpoint
        },
        dtype: attune::model::device::select_dtype(&args.dtype, &device)?,
        parts: args.parts,
        embed_texts: args.embed_texts,
        embed_batch: args.embed_batch,
        retriever_batch: args.retriever_batch,
        e2e_batch: args.e2e_batch,
        top_k: args.top_k,
        sequences_per_chunk: args.sequences_per_chunk,
        steps: args.steps,
        new_tokens: args.new_tokens,
    };
    let figures = attune::bench::device::measure(&config, &device)?;
    println!("{}", serde_json::to_string(&figures)?);
    Ok(())
}

pub fn run_bench_agree(args: BenchAgreeArgs) -> anyhow::Result<()> {
    let device = attune::model::device::select(&args.device)?;
    let rows = attune::bench::agree::agree(&args.retriever, &args.generator, &device)?;
    print!("{}", attune::bench::agree::agreement_report(&rows));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let failed = rows.iter().filter(|r| !r.pass).count();
    anyhow::ensure!(failed == 0, "{failed} of {} comparisons are outside their tolerance", rows.len());
    Ok(())
}

/// Runs one `attune bench` command.
pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Model(args) => run_bench_model(args),
        BenchCommand::Synth(args) => run_bench_synth(args),
        BenchCommand::Train(args) => run_bench_train(args),
        BenchCommand::Device(args) => run_bench_device(*args),
        BenchCommand::Agree(args) => run_bench_agree(args),
    }
}
