//! The `attune` command line: `attune serve` runs the web app and its API; `attune embed` embeds texts;
//! `attune generate` continues a prompt; `attune train` fine-tunes; `attune eval` measures.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use attune::model::generator::{ChatMessage, GenerationConfig, Generator};
use attune::model::retriever::{Retriever, TextRole};
use attune::serve::{ServeConfig, serve};

mod cli;

/// Process-wide tuning of the CPU math, done first thing in `main`, before any thread exists.
///
/// - Freed tensor buffers stay in the process for reuse. By default glibc gives every large buffer
///   (tensors mostly are) back to the kernel on free, and each new one is paid again in page faults
///   and page zeroing: a quarter of a training step's time.
/// - candle runs matrix products on a rayon pool and element-wise ops on a second, spinning pool, each
///   as wide as the machine: twice as many busy threads as cores, and element-wise ops that wait on a
///   descheduled worker. Half the cores for the element-wise pool (`CANDLE_NUM_THREADS`, unless set)
///   made a generator training step twice as fast on 2 cores.
#[allow(unsafe_code)]
fn tune_runtime() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        // SAFETY: no other thread exists yet to read the environment concurrently.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", (cores / 2).max(1).to_string()) };
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes glibc's allocator; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
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
    Serve(ServeArgs),
    /// Embed texts with a retriever: one text per input line, one JSON array per output line.
    Embed(EmbedArgs),
    /// Continue a prompt with a generator, streaming the text to standard output.
    Generate(GenerateArgs),
    /// Parse documents (PDF, .txt, .md) into passages in the project's database.
    Ingest(cli::corpus::IngestArgs),
    /// Write synthetic question/answer triples for ingested passages with an LLM.
    Synth(Box<cli::corpus::SynthArgs>),
    /// Export or import triples.
    #[command(subcommand)]
    Triples(cli::corpus::TriplesCommand),
    /// Fine-tune the retriever, the generator or both (LoRA) on question/passage/answer triples.
    Train(Box<cli::train::TrainArgs>),
    /// Retrieval metrics over the whole corpus and answer quality, base and tuned.
    Eval(Box<cli::eval::EvalArgs>),
    /// Measure throughput beside PyTorch on this machine.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Write a generator's config.json, tokenizer and chat template without its weights, for
    /// `--random-init` runs on a machine that has no copy of the model.
    ExportShape(ExportShapeArgs),
    /// Write a tiny retriever and generator with the default models' tokenizers and seeded random
    /// weights (`tiny-retriever/`, `tiny-generator/`): fast stand-ins for tests and demos.
    TinyModels(TinyModelsArgs),
}

#[derive(clap::Args, Debug)]
struct TinyModelsArgs {
    /// Where the default models (whose tokenizers the tiny ones take) are.
    #[arg(long, default_value = "./models")]
    models_dir: PathBuf,
    /// The folder to write the two models into.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Retriever embeddings/s, generator prefill and decode tokens/s, and PyTorch's on the same work.
    Model(BenchModelArgs),
    /// Seconds per optimiser step in retriever and e2e mode, and PyTorch's on the same step.
    Train(BenchTrainArgs),
    /// Accelerator figures with given model folders (random weights allowed): embeddings/s,
    /// retriever and e2e optimiser steps, prefill and decode tokens/s; one JSON line.
    Device(Box<BenchDeviceArgs>),
    /// Does a device compute what the CPU computes? Tiny models from the folders' configs with
    /// seeded weights: embeddings, logits, the e2e loss and every LoRA gradient.
    Agree(BenchAgreeArgs),
}

#[derive(clap::Args, Debug)]
struct BenchDeviceArgs {
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
    parts: Vec<attune::bench_gpu::Part>,
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
struct BenchAgreeArgs {
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
struct ExportShapeArgs {
    /// Generator folder or GGUF file (`default`: the default one in --models-dir).
    #[arg(long, default_value = "default")]
    generator: String,
    #[arg(long, default_value = "./models")]
    models_dir: PathBuf,
    /// The folder to write.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args, Debug)]
struct BenchModelArgs {
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
}

#[derive(clap::Args, Debug)]
struct BenchTrainArgs {
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
}

/// Which model to load, where, and with which adapter (shared by embed and generate).
#[derive(clap::Args, Debug)]
struct ModelArgs {
    /// Model folder (Hugging Face format) or `.gguf` file, or `default` for the default model of this kind.
    #[arg(long, default_value = "default")]
    model: String,
    /// Directory `default` is looked up in.
    #[arg(long, default_value = "./models")]
    models_dir: PathBuf,
    /// Where to run: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Precision of the weights: auto (f32 on the CPU, bf16 on a GPU), f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// A LoRA adapter (PEFT layout) to apply to the model.
    #[arg(long)]
    adapter: Option<PathBuf>,
}

impl ModelArgs {
    /// The model's path: `default_folder` inside the models directory for `default`.
    fn path(&self, default_folder: &str) -> PathBuf {
        if self.model == "default" { self.models_dir.join(default_folder) } else { PathBuf::from(&self.model) }
    }

    /// The device and precision to load the model with.
    fn placement(&self) -> anyhow::Result<(candle_core::Device, candle_core::DType)> {
        let device = attune::model::device::select(&self.device)?;
        let dtype = attune::model::device::select_dtype(&self.dtype, &device)?;
        Ok((device, dtype))
    }
}

#[derive(clap::Args, Debug)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt (or, with --chat, the user's message).
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// 0 means greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling threshold (with a temperature above 0).
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
}

#[derive(clap::Args, Debug)]
struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// File with one text per line; standard input when absent.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Embed the texts as queries (applies the model's query prefix, if it has one).
    #[arg(long)]
    query: bool,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to listen on. Anything but loopback requires --token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Directory for the database, uploads, checkpoints and indexes.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Directory holding one folder per model (as `make run` fetches them).
    #[arg(long, default_value = "./models")]
    models_dir: PathBuf,
    /// The built web app (Trunk's output).
    #[arg(long, default_value = "./dist")]
    dist_dir: PathBuf,
    /// Where model math runs: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Largest file accepted by uploads, in MB.
    #[arg(long, default_value_t = cli::corpus::DEFAULT_MAX_UPLOAD_MB)]
    max_upload_mb: u64,
    /// Bearer token required on /api and /ws (at least 8 URL-safe characters).
    #[arg(long, env = "ATTUNE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

fn main() -> ExitCode {
    tune_runtime();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,pdf_extract=error")))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
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
            Command::Serve(args) => run_serve(args).await,
            Command::Embed(args) => tokio::task::spawn_blocking(move || run_embed(args)).await?,
            Command::Generate(args) => tokio::task::spawn_blocking(move || run_generate(args)).await?,
            Command::Ingest(args) => cli::corpus::ingest(args).await,
            Command::Synth(args) => cli::corpus::synth(*args).await,
            Command::Triples(command) => cli::corpus::triples(command).await,
            Command::Train(args) => tokio::task::spawn_blocking(move || cli::train::run(*args)).await?,
            Command::Eval(args) => tokio::task::spawn_blocking(move || cli::eval::run(*args)).await?,
            Command::Bench(BenchCommand::Model(args)) => {
                tokio::task::spawn_blocking(move || run_bench_model(args)).await?
            }
            Command::Bench(BenchCommand::Train(args)) => {
                tokio::task::spawn_blocking(move || run_bench_train(args)).await?
            }
            Command::Bench(BenchCommand::Device(args)) => {
                tokio::task::spawn_blocking(move || run_bench_device(*args)).await?
            }
            Command::Bench(BenchCommand::Agree(args)) => {
                tokio::task::spawn_blocking(move || run_bench_agree(args)).await?
            }
            Command::ExportShape(args) => tokio::task::spawn_blocking(move || run_export_shape(args)).await?,
            Command::TinyModels(args) => tokio::task::spawn_blocking(move || run_tiny_models(args)).await?,
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

async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = ServeConfig {
        data_dir: args.data_dir,
        models_dir: args.models_dir,
        dist_dir: args.dist_dir,
        token: args.token,
        device: attune::model::describe_device(&attune::model::device::select(&args.device)?),
        device_spec: args.device.clone(),
        max_upload_bytes: args.max_upload_mb * 1024 * 1024,
    };
    // Check before binding, so a refused configuration never opens a socket.
    config.check_for(args.addr)?;
    let listener =
        tokio::net::TcpListener::bind(args.addr).await.with_context(|| format!("cannot listen on {}", args.addr))?;
    serve(listener, config, shutdown_signal()).await?;
    Ok(())
}

fn run_embed(args: EmbedArgs) -> anyhow::Result<()> {
    use std::io::{BufRead, Write};

    let dir = args.model.path(DEFAULT_RETRIEVER);
    let (device, dtype) = args.model.placement()?;
    let mut retriever = Retriever::load_as(&dir, &device, dtype)
        .with_context(|| format!("cannot load the retriever in {}", dir.display()))?;
    if let Some(adapter) = &args.model.adapter {
        retriever.load_adapter(adapter).with_context(|| format!("cannot load the adapter in {}", adapter.display()))?;
    }
    let reader: Box<dyn BufRead> = match &args.input {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let role = if args.query { TextRole::Query } else { TextRole::Passage };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut batch = Vec::with_capacity(args.batch_size);
    let mut lines = reader.lines();
    loop {
        let line = lines.next().transpose().context("cannot read the input")?;
        let done = line.is_none();
        batch.extend(line);
        if batch.len() == args.batch_size.max(1) || (done && !batch.is_empty()) {
            let texts: Vec<&str> = batch.iter().map(String::as_str).collect();
            let embeddings = retriever.embed(&texts, role, texts.len())?.to_vec2::<f32>()?;
            for embedding in embeddings {
                serde_json::to_writer(&mut out, &embedding)?;
                out.write_all(b"\n")?;
            }
            batch.clear();
        }
        if done {
            break;
        }
    }
    out.flush()?;
    Ok(())
}

fn run_generate(args: GenerateArgs) -> anyhow::Result<()> {
    use std::io::Write;
    use std::ops::ControlFlow;

    let path = args.model.path(DEFAULT_GENERATOR);
    let (device, dtype) = args.model.placement()?;
    let mut generator = Generator::load_as(&path, &device, dtype)
        .with_context(|| format!("cannot load the generator {}", path.display()))?;
    if let Some(adapter) = &args.model.adapter {
        generator.load_adapter(adapter).with_context(|| format!("cannot load the adapter in {}", adapter.display()))?;
    }
    let prompt =
        if args.chat { generator.render_chat(&[ChatMessage::new("user", &args.prompt)])? } else { args.prompt.clone() };
    let ids = generator.encode(&prompt)?;
    let config = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        stop: args.stop,
    };
    let mut out = std::io::stdout().lock();
    let mut write_error = None;
    generator.generate(&ids, &config, |piece| match out.write_all(piece.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ControlFlow::Continue(()),
        Err(e) => {
            write_error = Some(e);
            ControlFlow::Break(())
        }
    })?;
    if let Some(e) = write_error {
        return Err(e).context("cannot write to standard output");
    }
    writeln!(out)?;
    Ok(())
}

fn run_bench_model(args: BenchModelArgs) -> anyhow::Result<()> {
    let device = attune::model::device::select(&args.device)?;
    eprintln!("measuring attune on {device:?} ...");
    let ours = attune::bench::measure(&args.models_dir, &device)?;
    let config = attune::bench::BenchConfig {
        models_dir: args.models_dir,
        python: (!args.no_reference).then_some(args.python),
        reference_script: args.reference_script,
    };
    let reference = if config.python.is_some() {
        eprintln!("measuring the PyTorch reference ...");
        match attune::bench::measure_reference(&config) {
            Ok(reference) => Some(reference),
            Err(e) => {
                eprintln!("no PyTorch figures: {e:#}");
                None
            }
        }
    } else {
        None
    };
    print!("{}", attune::bench::report(&ours, reference.as_ref()));
    Ok(())
}

fn run_bench_train(args: BenchTrainArgs) -> anyhow::Result<()> {
    let device = attune::model::device::select(&args.device)?;
    // The reference runs first, in its own process: this one keeps the memory its own steps freed
    // (see tune_runtime), and both at once do not fit a 24 GB machine in e2e mode.
    let reference = if args.no_reference {
        None
    } else {
        eprintln!("measuring the PyTorch reference ...");
        match attune::bench_train::measure_reference(&args.python, &args.reference_script, &args.models_dir) {
            Ok(reference) => Some(reference),
            Err(e) => {
                eprintln!("no PyTorch figures: {e:#}");
                None
            }
        }
    };
    eprintln!("measuring attune's trainer on {device:?} ...");
    let ours = attune::bench_train::measure(&args.models_dir, &device)?;
    print!("{}", attune::bench_train::report(&ours, reference.as_ref()));
    Ok(())
}

fn run_bench_device(args: BenchDeviceArgs) -> anyhow::Result<()> {
    let device = attune::model::device::select(&args.device)?;
    let config = attune::bench_gpu::DeviceBenchConfig {
        retriever: cli::model_path(&args.retriever, &args.models_dir, DEFAULT_RETRIEVER),
        generator: cli::model_path(&args.generator, &args.models_dir, DEFAULT_GENERATOR),
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
    let figures = attune::bench_gpu::measure(&config, &device)?;
    println!("{}", serde_json::to_string(&figures)?);
    Ok(())
}

fn run_bench_agree(args: BenchAgreeArgs) -> anyhow::Result<()> {
    let device = attune::model::device::select(&args.device)?;
    let rows = attune::bench_gpu::agree(&args.retriever, &args.generator, &device)?;
    print!("{}", attune::bench_gpu::agreement_report(&rows));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let failed = rows.iter().filter(|r| !r.pass).count();
    anyhow::ensure!(failed == 0, "{failed} of {} comparisons are outside their tolerance", rows.len());
    Ok(())
}

fn run_export_shape(args: ExportShapeArgs) -> anyhow::Result<()> {
    let path = cli::model_path(&args.generator, &args.models_dir, DEFAULT_GENERATOR);
    let generator = Generator::load(&path, &attune::model::device::select("cpu")?)?;
    generator.save_shape(&args.out)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn run_tiny_models(args: TinyModelsArgs) -> anyhow::Result<()> {
    let retriever = args.out.join("tiny-retriever");
    let generator = args.out.join("tiny-generator");
    let source = args.models_dir.join(DEFAULT_RETRIEVER);
    std::fs::create_dir_all(&retriever).with_context(|| format!("cannot create {}", retriever.display()))?;
    for file in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "modules.json",
        "sentence_bert_config.json",
    ] {
        if source.join(file).is_file() {
            std::fs::copy(source.join(file), retriever.join(file))
                .with_context(|| format!("cannot copy {file} from {}", source.display()))?;
        }
    }
    if source.join("1_Pooling/config.json").is_file() {
        std::fs::create_dir_all(retriever.join("1_Pooling"))?;
        std::fs::copy(source.join("1_Pooling/config.json"), retriever.join("1_Pooling/config.json"))?;
    }
    let base: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(source.join("config.json"))
            .with_context(|| format!("reading {}", source.display()))?,
    )?;
    let bert = serde_json::json!({
        "model_type": "bert", "architectures": ["BertModel"], "vocab_size": base["vocab_size"],
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
        "max_position_embeddings": 512, "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "pad_token_id": 0
    });
    std::fs::write(retriever.join("config.json"), serde_json::to_string_pretty(&bert)?)?;
    attune::model::random::save_random_checkpoint(&retriever, args.seed)?;

    let path = args.models_dir.join(DEFAULT_GENERATOR);
    let default = Generator::load(&path, &attune::model::device::select("cpu")?)
        .with_context(|| format!("loading {}", path.display()))?;
    default.save_shape(&generator)?;
    let config_path = generator.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path)?)?;
    for (key, value) in [
        ("hidden_size", 32),
        ("intermediate_size", 64),
        ("num_hidden_layers", 2),
        ("num_attention_heads", 4),
        ("num_key_value_heads", 2),
    ] {
        config[key] = value.into();
    }
    std::fs::write(&config_path, serde_json::to_string_pretty(&config)?)?;
    attune::model::random::save_random_checkpoint(&generator, args.seed)?;
    eprintln!("wrote {} and {}", retriever.display(), generator.display());
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
