//! `attune embed` (one JSON vector per input line) and `attune generate` (a streamed continuation):
//! the model core from the command line.

use std::path::PathBuf;

use anyhow::Context;

use attune::model::generator::{ChatMessage, GenerationConfig, Generator};
use attune::model::retriever::{Retriever, TextRole};

use crate::{DEFAULT_GENERATOR, DEFAULT_RETRIEVER};

/// Which model to load, where, and with which adapter (shared by embed and generate).
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
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
pub struct GenerateArgs {
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
    /// Above 1 makes tokens already generated less likely (1: off; chat uses 1.15).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Stop when the output starts repeating itself (a sentence twice in a row).
    #[arg(long)]
    stop_on_loop: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
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

pub fn embed(args: EmbedArgs) -> anyhow::Result<()> {
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

pub fn generate(args: GenerateArgs) -> anyhow::Result<()> {
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
        repetition_penalty: args.repetition_penalty,
        stop_on_loop: args.stop_on_loop,
        allowed_tokens: Vec::new(),
        line_rule: None,
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
