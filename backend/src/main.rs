//! The `attune` command line: argument parsing and dispatch to `cli/` (`serve`, `embed`, `generate`,
//! `ingest`, `synth`, `triples`, `train`, `eval`, `bench`, `export-shape`, `tiny-models`).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod cli;

/// Process-wide tuning of the CPU math, done first thing in `main`, before any thread exists.
///
/// - Freed tensor buffers stay in the process for reuse, until a job ends (`main` has run itself
///   again with glibc's tunables, `attune::memory::reexec_with_allocator_settings`, which says why;
///   where that failed, `tune_allocator` does what `mallopt` can).
/// - candle runs matrix products on a rayon pool and element-wise ops on a second, spinning pool, each
///   as wide as the machine: twice as many busy threads as cores, and element-wise ops that wait on a
///   descheduled worker. Half the cores for the element-wise pool (`CANDLE_NUM_THREADS`, unless set)
///   made a generator training step twice as fast on 2 cores.
///
/// Returns false when the allocator keeps its defaults.
#[allow(unsafe_code)]
fn tune_runtime() -> bool {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        // SAFETY: no other thread exists yet to read the environment concurrently.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", (cores / 2).max(1).to_string()) };
    }
    attune::memory::tune_allocator()
}

/// Folder name of the default retriever inside the models directory.
pub(crate) const DEFAULT_RETRIEVER: &str = attune::model::catalog::DEFAULT_RETRIEVER_NAME;
/// Folder name of the default generator inside the models directory.
pub(crate) const DEFAULT_GENERATOR: &str = attune::model::catalog::DEFAULT_GENERATOR_NAME;

#[derive(Parser, Debug)]
#[command(name = "attune", version, about = "Adapt a retrieval-augmented generation system to your documents.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the web app and its API.
    Serve(cli::serve::ServeArgs),
    /// Embed texts with a retriever: one text per input line, one JSON array per output line.
    Embed(cli::model::EmbedArgs),
    /// Continue a prompt with a generator, streaming the text to standard output.
    Generate(cli::model::GenerateArgs),
    /// Parse documents (PDF, .txt, .md) into passages in the project's database.
    Ingest(cli::corpus::IngestArgs),
    /// Write synthetic question/answer triples for ingested passages with an LLM.
    Synth(Box<cli::corpus::SynthArgs>),
    /// Export or import triples.
    #[command(subcommand)]
    Triples(cli::corpus::TriplesCommand),
    /// Documents in, a tuned RAG pair and a report out: ingest, synthesize, train and evaluate in one
    /// resumable run folder.
    Adapt(Box<cli::adapt::AdaptArgs>),
    /// Fine-tune the retriever, the generator or both (LoRA) on question/passage/answer triples.
    Train(Box<cli::train::TrainArgs>),
    /// Retrieval metrics over the whole corpus and answer quality, base and tuned.
    Eval(Box<cli::eval::EvalArgs>),
    /// Export a run's tuned models: PEFT adapters, merged Hugging Face folders, or a merged GGUF generator.
    Export(cli::export::ExportArgs),
    /// Measure throughput beside PyTorch on this machine.
    #[command(subcommand)]
    Bench(cli::bench::BenchCommand),
    /// Write a generator's config.json, tokenizer and chat template without its weights, for
    /// `--random-init` runs on a machine that has no copy of the model.
    ExportShape(cli::fixtures::ExportShapeArgs),
    /// Write a tiny retriever and generator with the default models' tokenizers and seeded random
    /// weights (`tiny-retriever/`, `tiny-generator/`): fast stand-ins for tests and demos.
    TinyModels(cli::fixtures::TinyModelsArgs),
}

fn main() -> ExitCode {
    // The PDF-parsing child first: it keeps glibc's defaults, under which its memory limit holds.
    if let Some(code) = cli::sandbox::run_if_asked() {
        return code;
    }
    attune::memory::reexec_with_allocator_settings();
    let allocator_tuned = tune_runtime();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,pdf_extract=error")))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    if !allocator_tuned {
        tracing::debug!(
            "the allocator keeps its defaults (not glibc, GLIBC_TUNABLES set by hand, or a setting refused)"
        );
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => cli::serve::run(args).await,
            Command::Embed(args) => tokio::task::spawn_blocking(move || cli::model::embed(args)).await?,
            Command::Generate(args) => tokio::task::spawn_blocking(move || cli::model::generate(args)).await?,
            Command::Ingest(args) => cli::corpus::ingest(args).await,
            Command::Synth(args) => cli::corpus::synth(*args).await,
            Command::Adapt(args) => cli::adapt::run(*args).await,
            Command::Triples(command) => cli::corpus::triples(command).await,
            Command::Train(args) => tokio::task::spawn_blocking(move || cli::train::run(*args)).await?,
            Command::Eval(args) => tokio::task::spawn_blocking(move || cli::eval::run(*args)).await?,
            Command::Export(args) => tokio::task::spawn_blocking(move || cli::export::run(args)).await?,
            Command::Bench(command) => tokio::task::spawn_blocking(move || cli::bench::run(command)).await?,
            Command::ExportShape(args) => {
                tokio::task::spawn_blocking(move || cli::fixtures::export_shape(args)).await?
            }
            Command::TinyModels(args) => tokio::task::spawn_blocking(move || cli::fixtures::tiny_models(args)).await?,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain of causes, on one line, without a backtrace.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
