//! Exports a tuned model with its LoRA adapter folded into the base weights (`W + scale·B·A`):
//! the retriever and the generator as Hugging Face folders — what transformers,
//! sentence-transformers, vLLM and text-embeddings-inference load — and the generator also as one
//! GGUF file (llama.cpp, Ollama) at f32, f16, q8_0 or q4_k, with an Ollama `Modelfile`. Every
//! export is written into a temporary folder beside `out` and renamed into place, so a failed
//! export leaves nothing half-written, and an existing `out` is never overwritten.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::error::{ModelError, Result};
use super::generator::GeneratorCheckpoint;
use super::llama::{self, Family, Llama};
use super::lora::{self, HasLinears};
use super::retriever::Retriever;

/// Hugging Face's shard size: checkpoints above it are split into `model-0000K-of-0000N` files.
pub const SHARD_BYTES: u64 = 5_000_000_000;

/// What a GGUF export stores its 2-D weights as. Norms, biases and rope factors stay f32 (as
/// llama.cpp's converter keeps them); a weight whose rows the block size does not divide falls
/// back to q8_0 (from q4_k), then f16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufQuant {
    F32,
    F16,
    Q8_0,
    /// The 4-bit K-quant (`Q4_K`) for every 2-D weight (llama.cpp's Q4_K_S, not the mixed Q4_K_M).
    Q4K,
}

impl GgufQuant {
    pub const NAMES: [(&'static str, GgufQuant); 4] =
        [("f32", GgufQuant::F32), ("f16", GgufQuant::F16), ("q8_0", GgufQuant::Q8_0), ("q4_k", GgufQuant::Q4K)];

    pub fn parse(name: &str) -> Option<GgufQuant> {
        Self::NAMES.iter().find(|(n, _)| *n == name).map(|(_, q)| *q)
    }

    pub fn name(self) -> &'static str {
        Self::NAMES.iter().find(|(_, q)| *q == self).map_or("f16", |(n, _)| n)
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_*`).
    fn file_type(self) -> u32 {
        match self {
            GgufQuant::F32 => 0,
            GgufQuant::F16 => 1,
            GgufQuant::Q8_0 => 7,
            GgufQuant::Q4K => 14,
        }
    }
}

/// One file an export wrote, relative to its folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    pub name: String,
    pub bytes: u64,
}

fn write_error(path: &Path) -> impl Fn(std::io::Error) -> ModelError + '_ {
    move |error| ModelError::Write { path: path.to_owned(), error }
}

/// Runs `fill` on a fresh temporary folder beside `out`, then renames it to `out`; `out` must not
/// exist yet. Returns the files written, sorted.
fn into_new_folder(out: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<Vec<WrittenFile>> {
    if out.exists() {
        return Err(ModelError::Unsupported(format!("{} exists already: export into a new folder", out.display())));
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(write_error(parent))?;
    let staging = tempfile::Builder::new().prefix(".export-").tempdir_in(parent).map_err(write_error(parent))?;
    fill(staging.path())?;
    let files = list_files(staging.path())?;
    let staged = staging.keep();
    fs::rename(&staged, out).map_err(write_error(out))?;
    Ok(files)
}

fn list_files(dir: &Path) -> Result<Vec<WrittenFile>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(folder) = pending.pop() {
        for entry in fs::read_dir(&folder).map_err(|error| ModelError::Read { path: folder.clone(), error })? {
            let entry = entry.map_err(|error| ModelError::Read { path: folder.clone(), error })?;
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
                let name = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
                files.push(WrittenFile { name, bytes });
            }
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// Writes `tensors` as `model.safetensors`, or as shards of at most `shard_bytes` with
/// `model.safetensors.index.json`, Hugging Face's layout.
pub fn write_safetensors(dir: &Path, tensors: &HashMap<String, Tensor>, shard_bytes: u64) -> Result<()> {
    let size = |t: &Tensor| (t.elem_count() * t.dtype().size_in_bytes()) as u64;
    let total: u64 = tensors.values().map(size).sum();
    if total <= shard_bytes {
        let path = dir.join("model.safetensors");
        return Ok(candle_core::safetensors::save(tensors, &path)?);
    }
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut shards: Vec<Vec<&String>> = vec![Vec::new()];
    let mut filled = 0u64;
    for name in names {
        let bytes = size(&tensors[name]);
        if filled > 0 && filled + bytes > shard_bytes {
            shards.push(Vec::new());
            filled = 0;
        }
        shards.last_mut().expect("one shard at least").push(name);
        filled += bytes;
    }
    let count = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
        let part: HashMap<String, Tensor> =
            shard.iter().map(|name| ((*name).clone(), tensors[*name].clone())).collect();
        candle_core::safetensors::save(&part, dir.join(&file))?;
        for name in shard {
            weight_map.insert((*name).clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    let path = dir.join("model.safetensors.index.json");
    fs::write(&path, serde_json::to_string_pretty(&index).unwrap_or_default()).map_err(write_error(&path))
}

/// The dtype most of `tensors` have (what a merged checkpoint is written in).
fn common_dtype(tensors: &HashMap<String, Tensor>) -> DType {
    let mut counts: HashMap<DType, usize> = HashMap::new();
    for tensor in tensors.values() {
        *counts.entry(tensor.dtype()).or_default() += 1;
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map_or(DType::F32, |(dtype, _)| dtype)
}

/// The generator's tensors with the adapter folded in, under Hugging Face names, in f32.
fn merged_generator_tensors(
    checkpoint: &GeneratorCheckpoint,
    adapter: Option<&Path>,
) -> Result<HashMap<String, Tensor>> {
    let device = Device::Cpu;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, tensor) in &checkpoint.tensors {
        tensors.insert(name.clone(), tensor.to_dtype(DType::F32)?);
    }
    let mut model = Llama::load(VarBuilder::from_tensors(tensors.clone(), DType::F32, &device), &checkpoint.config)?;
    if let Some(adapter) = adapter {
        lora::load(adapter, &mut model, &device)?;
        lora::merge(&mut model)?;
    }
    for (path, linear) in model.linears_mut() {
        tensors.insert(format!("{path}.weight"), linear.weight().clone());
    }
    if checkpoint.config.tie_word_embeddings {
        tensors.remove("lm_head.weight");
    }
    Ok(tensors)
}

/// The merged generator as a Hugging Face folder: `config.json`, `generation_config.json`,
/// safetensors (sharded at [`SHARD_BYTES`]), `tokenizer.json` and `tokenizer_config.json` (with
/// the chat template; for a GGUF base, both rebuilt from its metadata).
pub fn merged_generator(base: &Path, adapter: Option<&Path>, out: &Path) -> Result<Vec<WrittenFile>> {
    let checkpoint = GeneratorCheckpoint::read(base, &Device::Cpu)?;
    if checkpoint.config.rope_freq_factors.is_some() {
        return Err(ModelError::Unsupported(
            "this GGUF's rope scaling (its rope_freqs tensor) has no exact config.json form: export from the \
             model's Hugging Face folder instead"
                .into(),
        ));
    }
    let dtype = common_dtype(&checkpoint.tensors);
    let tensors = merged_generator_tensors(&checkpoint, adapter)?;
    let tensors: HashMap<String, Tensor> =
        tensors.into_iter().map(|(k, t)| Ok((k, t.to_dtype(dtype)?))).collect::<Result<_>>()?;
    into_new_folder(out, |dir| {
        write_safetensors(dir, &tensors, SHARD_BYTES)?;
        super::generator::write_hf_files(dir, &checkpoint, dtype)
    })
}

/// The merged retriever as a sentence-transformers folder: the base folder's configuration,
/// tokenizer and module files (pooling, normalisation, prompts) as they are, and
/// `model.safetensors` with the adapter folded in.
pub fn merged_retriever(base: &Path, adapter: Option<&Path>, out: &Path) -> Result<Vec<WrittenFile>> {
    let device = Device::Cpu;
    let mut tensors: HashMap<String, Tensor> = retriever_tensors(base)?;
    let dtype = common_dtype(&tensors);
    let mut retriever = Retriever::load_as(base, &device, DType::F32)?;
    if let Some(adapter) = adapter {
        retriever.load_adapter(adapter)?;
        lora::merge(retriever.model_mut())?;
    }
    let config_path = base.join("config.json");
    let text =
        fs::read_to_string(&config_path).map_err(|error| ModelError::Read { path: config_path.clone(), error })?;
    let cfg = super::encoder::EncoderConfig::from_json(&text).map_err(ModelError::Unsupported)?;
    let (task, probe) = cfg.task_prefix();
    let prefix = if tensors.contains_key(&format!("{task}.{probe}")) { format!("{task}.") } else { String::new() };
    for (path, linear) in retriever.model_mut().linears_mut() {
        let name = format!("{prefix}{path}.weight");
        if !tensors.contains_key(&name) {
            return Err(ModelError::Unsupported(format!("{}: the checkpoint has no {name}", base.display())));
        }
        tensors.insert(name, linear.weight().to_dtype(dtype)?);
    }
    into_new_folder(out, |dir| {
        copy_side_files(base, dir)?;
        write_safetensors(dir, &tensors, SHARD_BYTES)
    })
}

fn retriever_tensors(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let safetensors = dir.join("model.safetensors");
    if safetensors.is_file() {
        return Ok(candle_core::safetensors::load(&safetensors, &Device::Cpu)?);
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.is_file() {
        return Ok(candle_core::pickle::read_all(&bin)?.into_iter().collect());
    }
    Err(ModelError::Unsupported(format!("{}: no model.safetensors or pytorch_model.bin", dir.display())))
}

/// Weight files a model folder may hold, none of which a merged export copies.
const WEIGHT_EXTENSIONS: [&str; 8] = ["safetensors", "bin", "pt", "pth", "onnx", "h5", "msgpack", "gguf"];

/// Copies `from`'s files (and those of its sub-folders, one level: `1_Pooling/` and the like),
/// but no weights and no `model.safetensors.index.json`.
fn copy_side_files(from: &Path, to: &Path) -> Result<()> {
    let read = |dir: &Path| fs::read_dir(dir).map_err(|error| ModelError::Read { path: dir.to_owned(), error });
    for entry in read(from)?.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let target = to.join(&name);
        if path.is_dir() {
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let mut made = false;
            for inner in read(&path)?.flatten() {
                if inner.path().is_file() && !is_weight_file(&inner.path()) {
                    if !made {
                        fs::create_dir_all(&target).map_err(write_error(&target))?;
                        made = true;
                    }
                    fs::copy(inner.path(), target.join(inner.file_name())).map_err(write_error(&target))?;
                }
            }
        } else if !is_weight_file(&path) {
            fs::copy(&path, &target).map_err(write_error(&target))?;
        }
    }
    Ok(())
}

fn is_weight_file(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    name.ends_with(".index.json")
        || path.extension().is_some_and(|e| WEIGHT_EXTENSIONS.contains(&e.to_string_lossy().as_ref()))
}

/// The merged generator as one GGUF file (`model.gguf`) with a `Modelfile` for Ollama beside it.
/// Tensors are named and (for the `llama` architecture) row-permuted as llama.cpp's converter
/// does; the tokenizer metadata is the base GGUF's own, or rebuilt from `tokenizer.json`.
pub fn gguf_generator(base: &Path, adapter: Option<&Path>, out: &Path, quant: GgufQuant) -> Result<Vec<WrittenFile>> {
    let checkpoint = GeneratorCheckpoint::read(base, &Device::Cpu)?;
    let cfg = &checkpoint.config;
    let tensors = merged_generator_tensors(&checkpoint, adapter)?;
    let mut metadata = cfg.to_gguf()?;
    let name = base.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    metadata.push(("general.name".into(), gguf_file::Value::String(format!("{name} (tuned by Attune)"))));
    metadata.push(("general.file_type".into(), gguf_file::Value::U32(quant.file_type())));
    metadata.extend(tokenizer_metadata(&checkpoint)?);
    let mut keys: Vec<&str> = metadata.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    if let Some(pair) = keys.windows(2).find(|pair| pair[0] == pair[1]) {
        // llama.cpp and Python's reader refuse a file that says one key twice.
        return Err(ModelError::Unsupported(format!("internal error: GGUF metadata names {} twice", pair[0])));
    }
    let mut quantized: Vec<(String, QTensor)> = Vec::new();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let permuted = cfg.family() == Family::Llama || cfg.family() == Family::Mistral;
    for hf in names {
        let gguf =
            llama::gguf_name(hf).ok_or_else(|| ModelError::Unsupported(format!("no GGUF name for the tensor {hf}")))?;
        let mut tensor = tensors[hf].clone();
        if permuted && gguf.ends_with("attn_q.weight") {
            tensor = llama::permute_rows(&tensor, cfg.num_attention_heads)?;
        } else if permuted && gguf.ends_with("attn_k.weight") {
            tensor = llama::permute_rows(&tensor, cfg.num_kv_heads())?;
        }
        quantized.push((gguf, quantize(&tensor, quant)?));
    }
    let scaled = cfg.rope().rope_type.as_deref().is_some_and(|t| t != "default") || cfg.rope_freq_factors.is_some();
    if scaled {
        let divisors = llama::rope_freq_divisors(cfg);
        let n = divisors.len();
        quantized.push((
            "rope_freqs.weight".into(),
            QTensor::quantize(&Tensor::from_vec(divisors, n, &Device::Cpu)?, GgmlDType::F32)?,
        ));
    }
    let modelfile = modelfile(checkpoint.chat_template.as_deref(), &checkpoint);
    into_new_folder(out, |dir| {
        let path = dir.join("model.gguf");
        let mut file = fs::File::create(&path).map_err(write_error(&path))?;
        let metadata_refs: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensor_refs: Vec<(&str, &QTensor)> = quantized.iter().map(|(k, t)| (k.as_str(), t)).collect();
        gguf_file::write(&mut file, &metadata_refs, &tensor_refs)?;
        file.sync_all().map_err(write_error(&path))?;
        let path = dir.join("Modelfile");
        fs::write(&path, modelfile).map_err(write_error(&path))
    })
}

/// A weight in the export's precision: 1-D tensors in f32, 2-D ones in `quant` where the block
/// size divides their rows, else q8_0 (for q4_k), else f16.
fn quantize(tensor: &Tensor, quant: GgufQuant) -> Result<QTensor> {
    let row = tensor.dims().last().copied().unwrap_or(0);
    let fits = |dtype: GgmlDType| row.is_multiple_of(dtype.block_size());
    let dtype = match quant {
        _ if tensor.rank() < 2 => GgmlDType::F32,
        GgufQuant::F32 => GgmlDType::F32,
        GgufQuant::F16 => GgmlDType::F16,
        GgufQuant::Q8_0 if fits(GgmlDType::Q8_0) => GgmlDType::Q8_0,
        GgufQuant::Q4K if fits(GgmlDType::Q4K) => GgmlDType::Q4K,
        GgufQuant::Q4K if fits(GgmlDType::Q8_0) => GgmlDType::Q8_0,
        GgufQuant::Q8_0 | GgufQuant::Q4K => GgmlDType::F16,
    };
    Ok(QTensor::quantize(tensor, dtype)?)
}

/// `tokenizer.*` metadata: the base GGUF's own, or rebuilt from `tokenizer.json`, with the chat
/// template and the end-of-reply id.
fn tokenizer_metadata(checkpoint: &GeneratorCheckpoint) -> Result<Vec<(String, gguf_file::Value)>> {
    use gguf_file::Value;
    let mut metadata: Vec<(String, Value)> = match &checkpoint.gguf_metadata {
        Some(source) => {
            let mut copied: Vec<(String, Value)> = source
                .iter()
                .filter(|(k, _)| k.starts_with("tokenizer."))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            copied.sort_by(|a, b| a.0.cmp(&b.0));
            copied
        }
        None => super::gguf_tokenizer::to_gguf(&checkpoint.tokenizer)?,
    };
    let has = |metadata: &[(String, Value)], key: &str| metadata.iter().any(|(k, _)| k == key);
    if !has(&metadata, "tokenizer.ggml.bos_token_id")
        && let Some(bos) = checkpoint.config.bos_token_id
    {
        metadata.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(bos)));
    }
    if !has(&metadata, "tokenizer.ggml.eos_token_id")
        && let Some(eos) = checkpoint.end_of_reply_ids().first()
    {
        metadata.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(*eos)));
    }
    if !has(&metadata, "tokenizer.chat_template")
        && let Some(template) = &checkpoint.chat_template
    {
        metadata.push(("tokenizer.chat_template".into(), Value::String(template.clone())));
    }
    Ok(metadata)
}

/// An Ollama `Modelfile` for `model.gguf`: the chat template in Ollama's Go template syntax (for
/// ChatML and Llama 3 templates; for others Ollama reads the GGUF's own), Attune's RAG
/// instruction as the system prompt, the end-of-turn stop tokens, greedy decoding.
fn modelfile(chat_template: Option<&str>, checkpoint: &GeneratorCheckpoint) -> String {
    const CHATML: &str = "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n";
    const LLAMA3: &str = "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n";
    let mut text = String::from(
        "# Ollama: `ollama create NAME -f Modelfile`, then `ollama run NAME`.\n\
         # Attune trained this model on prompts of the form\n\
         #   Answer the question using the passage. Reply with the answer only.\\n\\nPassage: ...\\n\\nQuestion: ...\n\
         # as the user's message; send the retrieved passage and the question the same way.\n\
         FROM ./model.gguf\n",
    );
    let template = chat_template.unwrap_or_default();
    if template.contains("<|im_start|>") {
        text.push_str(&format!("TEMPLATE \"\"\"{CHATML}\"\"\"\n"));
    } else if template.contains("<|start_header_id|>") {
        text.push_str(&format!("TEMPLATE \"\"\"{LLAMA3}\"\"\"\n"));
    }
    text.push_str(&format!("SYSTEM \"\"\"{}\"\"\"\n", crate::rag::prompt::INSTRUCTION));
    for id in checkpoint.end_of_reply_ids() {
        if let Some(token) = checkpoint.tokenizer.id_to_token(id) {
            text.push_str(&format!("PARAMETER stop \"{token}\"\n"));
        }
    }
    text.push_str("PARAMETER temperature 0\n");
    text
}

/// What `attune export` writes for a run: each tuned model, in the chosen format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// The adapters as they are (PEFT's layout), for `peft.PeftModel.from_pretrained`.
    Peft,
    /// Base and adapter folded into one Hugging Face folder per model.
    Merged,
    /// The merged generator as GGUF, with a `Modelfile`.
    Gguf(GgufQuant),
}

impl ExportFormat {
    /// `peft`, `merged`, or `gguf` at `quant` (f16 when none is given); a quant with another
    /// format is refused.
    pub fn parse(format: &str, quant: Option<&str>) -> std::result::Result<ExportFormat, String> {
        match (format, quant) {
            ("peft", None) => Ok(ExportFormat::Peft),
            ("merged", None) => Ok(ExportFormat::Merged),
            ("gguf", quant) => {
                let name = quant.unwrap_or("f16");
                GgufQuant::parse(name).map(ExportFormat::Gguf).ok_or_else(|| {
                    let names: Vec<&str> = GgufQuant::NAMES.iter().map(|(n, _)| *n).collect();
                    format!("quant {name:?}: one of {}", names.join(", "))
                })
            }
            ("peft" | "merged", Some(_)) => Err("quant applies to the gguf format only".into()),
            (other, _) => Err(format!("format {other:?}: peft, merged or gguf")),
        }
    }

    /// `peft`, `merged` or `gguf-<quant>`: how folders of this export are named.
    pub fn name(self) -> String {
        match self {
            ExportFormat::Peft => "peft".into(),
            ExportFormat::Merged => "merged".into(),
            ExportFormat::Gguf(quant) => format!("gguf-{}", quant.name()),
        }
    }
}

/// A run's models: each base, and its adapter when the run trained one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunModels {
    pub retriever: PathBuf,
    pub retriever_adapter: Option<PathBuf>,
    pub generator: PathBuf,
    pub generator_adapter: Option<PathBuf>,
}

impl RunModels {
    /// The adapters a run folder holds: `retriever/` and `generator/`, each when it has an
    /// `adapter_config.json` (a retriever-only run has no generator adapter).
    pub fn adapters_in(run_dir: &Path) -> (Option<PathBuf>, Option<PathBuf>) {
        use crate::train::checkpoint::{GENERATOR_DIR, RETRIEVER_DIR};
        let found = |part: &str| Some(run_dir.join(part)).filter(|d| d.join(lora::ADAPTER_CONFIG).is_file());
        (found(RETRIEVER_DIR), found(GENERATOR_DIR))
    }

    /// A run folder's models: the bases its `config.json` names and the adapters it holds.
    pub fn of_run_folder(run_dir: &Path) -> Result<RunModels> {
        let config = crate::train::checkpoint::read_config(run_dir)
            .map_err(|e| ModelError::Unsupported(format!("{} is not a run folder: {e}", run_dir.display())))?;
        let (retriever_adapter, generator_adapter) = Self::adapters_in(run_dir);
        Ok(RunModels { retriever: config.retriever, retriever_adapter, generator: config.generator, generator_adapter })
    }
}

/// Exports a run's tuned models into `out` (`retriever/`, `generator/`, or `generator/` with
/// `model.gguf`): only the models the run trained. Returns each folder with its files.
pub fn export_run(models: &RunModels, format: ExportFormat, out: &Path) -> Result<Vec<(String, Vec<WrittenFile>)>> {
    if models.retriever_adapter.is_none() && models.generator_adapter.is_none() {
        return Err(ModelError::Unsupported("the run has no adapter to export (has it finished?)".into()));
    }
    if out.exists() {
        return Err(ModelError::Unsupported(format!("{} exists already: export into a new folder", out.display())));
    }
    let mut written = Vec::new();
    if let Some(adapter) = &models.retriever_adapter {
        let dir = out.join(crate::train::checkpoint::RETRIEVER_DIR);
        let files = match format {
            ExportFormat::Peft => copy_adapter(adapter, &dir)?,
            ExportFormat::Merged => merged_retriever(&models.retriever, Some(adapter), &dir)?,
            // llama.cpp has no use for a BERT retriever: GGUF exports the generator only.
            ExportFormat::Gguf(_) => Vec::new(),
        };
        if !files.is_empty() {
            written.push((crate::train::checkpoint::RETRIEVER_DIR.to_owned(), files));
        }
    }
    if let Some(adapter) = &models.generator_adapter {
        let dir = out.join(crate::train::checkpoint::GENERATOR_DIR);
        let files = match format {
            ExportFormat::Peft => copy_adapter(adapter, &dir)?,
            ExportFormat::Merged => merged_generator(&models.generator, Some(adapter), &dir)?,
            ExportFormat::Gguf(quant) => gguf_generator(&models.generator, Some(adapter), &dir, quant)?,
        };
        written.push((crate::train::checkpoint::GENERATOR_DIR.to_owned(), files));
    }
    if written.is_empty() {
        return Err(ModelError::Unsupported(
            "GGUF holds a generator, and this run tuned only the retriever: export it as merged or peft".into(),
        ));
    }
    Ok(written)
}

fn copy_adapter(adapter: &Path, out: &Path) -> Result<Vec<WrittenFile>> {
    into_new_folder(out, |dir| {
        for name in [lora::ADAPTER_CONFIG, lora::ADAPTER_WEIGHTS] {
            let target = dir.join(name);
            fs::copy(adapter.join(name), &target).map_err(write_error(&target))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_checkpoints_are_sharded_with_an_index_that_names_every_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let tensors: HashMap<String, Tensor> =
            (0..5).map(|i| (format!("t{i}"), Tensor::full(i as f32, (10, 10), &Device::Cpu).unwrap())).collect();
        // 400 bytes a tensor, 1000 a shard: two tensors per shard, three shards.
        write_safetensors(dir.path(), &tensors, 1000).unwrap();
        let index: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.path().join("model.safetensors.index.json")).unwrap())
                .unwrap();
        assert_eq!(index["metadata"]["total_size"], 2000);
        let map = index["weight_map"].as_object().unwrap();
        assert_eq!(map.len(), 5);
        let mut seen = HashMap::new();
        for (name, file) in map {
            let shard = candle_core::safetensors::load(dir.path().join(file.as_str().unwrap()), &Device::Cpu).unwrap();
            assert!(shard.contains_key(name));
            *seen.entry(file.as_str().unwrap().to_owned()).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen.contains_key("model-00003-of-00003.safetensors"));
        let small = tempfile::tempdir().unwrap();
        write_safetensors(small.path(), &tensors, SHARD_BYTES).unwrap();
        assert!(small.path().join("model.safetensors").is_file());
    }

    #[test]
    fn an_export_never_overwrites_and_a_failed_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let failed = into_new_folder(&out, |staging| {
            fs::write(staging.join("half"), "x").unwrap();
            Err(ModelError::Unsupported("boom".into()))
        });
        assert!(failed.is_err());
        assert!(!out.exists());
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        into_new_folder(&out, |staging| {
            fs::write(staging.join("a"), "1").unwrap();
            Ok(())
        })
        .unwrap();
        assert!(into_new_folder(&out, |_| Ok(())).is_err(), "an existing folder is kept");
        assert_eq!(fs::read_to_string(out.join("a")).unwrap(), "1");
    }

    #[test]
    fn weights_keep_their_precision_rules() {
        let wide = Tensor::ones((4, 256), DType::F32, &Device::Cpu).unwrap();
        let narrow = Tensor::ones((4, 64), DType::F32, &Device::Cpu).unwrap();
        let odd = Tensor::ones((4, 30), DType::F32, &Device::Cpu).unwrap();
        let norm = Tensor::ones(48, DType::F32, &Device::Cpu).unwrap();
        let dtype = |t: &Tensor, q| quantize(t, q).unwrap().dtype();
        assert_eq!(dtype(&wide, GgufQuant::Q4K), GgmlDType::Q4K);
        assert_eq!(dtype(&narrow, GgufQuant::Q4K), GgmlDType::Q8_0, "rows of 64 do not fill a K-quant block");
        assert_eq!(dtype(&odd, GgufQuant::Q8_0), GgmlDType::F16);
        assert_eq!(dtype(&narrow, GgufQuant::F16), GgmlDType::F16);
        assert_eq!(dtype(&wide, GgufQuant::F32), GgmlDType::F32);
        assert_eq!(dtype(&norm, GgufQuant::Q8_0), GgmlDType::F32, "norms stay f32");
        for (name, quant) in GgufQuant::NAMES {
            assert_eq!(GgufQuant::parse(name), Some(quant));
            assert_eq!(quant.name(), name);
        }
    }
}
