//! `attune export-shape` (a generator's config, tokenizer and chat template without its weights) and
//! `attune tiny-models` (a tiny retriever and generator with seeded random weights): model folders
//! for tests, demos and `--random-init` runs.

use std::path::PathBuf;

use anyhow::Context;

use attune::model::generator::Generator;

use super::model_path;
use crate::{DEFAULT_GENERATOR, DEFAULT_RETRIEVER};

#[derive(clap::Args, Debug)]
pub struct ExportShapeArgs {
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
pub struct TinyModelsArgs {
    /// Where the default models (whose tokenizers the tiny ones take) are.
    #[arg(long, default_value = "./models")]
    models_dir: PathBuf,
    /// The folder to write the two models into.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn export_shape(args: ExportShapeArgs) -> anyhow::Result<()> {
    let path = model_path(&args.generator, &args.models_dir, DEFAULT_GENERATOR);
    let generator = Generator::load(&path, &attune::model::device::select("cpu")?)?;
    generator.save_shape(&args.out)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

pub fn tiny_models(args: TinyModelsArgs) -> anyhow::Result<()> {
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
    attune::model::random_checkpoint::save_random_checkpoint(&retriever, args.seed)?;

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
    attune::model::random_checkpoint::save_random_checkpoint(&generator, args.seed)?;
    eprintln!("wrote {} and {}", retriever.display(), generator.display());
    Ok(())
}
