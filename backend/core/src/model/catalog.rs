//! Finds usable model folders under the models directory and says what each one is.
//!
//! A folder is a retriever when its `config.json` names an encoder `model_type` (BERT, RoBERTa,
//! XLM-RoBERTa, ModernBERT), and a
//! generator when its `config.json` names one of the generator families (`llama::Family`) or it
//! holds a GGUF file whose `general.architecture` is one of them. Anything else is skipped with a log line.

/// Folder name of the default retriever inside the models directory.
pub const DEFAULT_RETRIEVER_NAME: &str = "all-MiniLM-L6-v2";
/// Folder name of the default generator inside the models directory.
pub const DEFAULT_GENERATOR_NAME: &str = "SmolLM2-135M-Instruct";

use std::fs;
use std::path::{Path, PathBuf};

use attune_shared::{ModelInfo, ModelKind, WeightFormat};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read models directory {path}: {error}")]
    ReadDir { path: PathBuf, error: std::io::Error },
}

/// Lists the supported model folders directly under `models_dir`, sorted by name.
/// A missing directory is an empty catalog, not an error.
pub fn scan(models_dir: &Path) -> Result<Vec<ModelInfo>, CatalogError> {
    let entries = match fs::read_dir(models_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(CatalogError::ReadDir { path: models_dir.to_owned(), error }),
    };
    let mut models = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() || entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        match describe(&path) {
            Ok(info) => models.push(info),
            Err(why) => tracing::debug!(folder = %path.display(), "not a usable model folder: {why}"),
        }
    }
    models.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(models)
}

/// Says what the model folder at `dir` is, or why it is not one Attune can use.
pub fn describe(dir: &Path) -> Result<ModelInfo, String> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let path = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned()).display().to_string();

    if let Some(gguf) = super::files_with_extension(dir, "gguf").into_iter().next() {
        let architecture = gguf_architecture(&gguf)?;
        if super::llama::Family::of_gguf(&architecture).is_none() {
            return Err(format!("GGUF architecture {architecture:?} is not supported"));
        }
        return Ok(ModelInfo {
            name,
            path,
            kind: ModelKind::Generator,
            format: WeightFormat::Gguf,
            architecture: Some(architecture),
        });
    }

    let config = fs::read_to_string(dir.join("config.json")).map_err(|e| format!("no readable config.json: {e}"))?;
    let config: serde_json::Value =
        serde_json::from_str(&config).map_err(|e| format!("config.json is not JSON: {e}"))?;
    let model_type =
        config.get("model_type").and_then(|v| v.as_str()).ok_or("config.json has no model_type")?.to_owned();
    let kind = if super::encoder::MODEL_TYPES.contains(&model_type.as_str()) {
        ModelKind::Retriever
    } else if super::llama::Family::of(&model_type).is_some() {
        ModelKind::Generator
    } else {
        return Err(format!("model_type {model_type:?} is not supported"));
    };
    let format = if !super::files_with_extension(dir, "safetensors").is_empty() {
        WeightFormat::Safetensors
    } else if dir.join("pytorch_model.bin").is_file() {
        WeightFormat::PytorchBin
    } else {
        return Err("no model.safetensors or pytorch_model.bin".to_owned());
    };
    Ok(ModelInfo { name, path, kind, format, architecture: Some(model_type) })
}

/// Reads `general.architecture` from a GGUF file's header (metadata only, no tensor data).
fn gguf_architecture(file: &Path) -> Result<String, String> {
    let mut reader = fs::File::open(file).map_err(|e| format!("cannot open {}: {e}", file.display()))?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut reader)
        .map_err(|e| format!("{} is not a readable GGUF file: {e}", file.display()))?;
    let architecture = content
        .metadata
        .get("general.architecture")
        .ok_or_else(|| format!("{} has no general.architecture", file.display()))?;
    architecture.to_string().cloned().map_err(|e| format!("general.architecture is not a string: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, contents: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    #[test]
    fn finds_bert_retriever_and_llama_generator_and_skips_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("bge-small/config.json"), br#"{"model_type":"bert"}"#);
        write(&dir.path().join("bge-small/model.safetensors"), b"");
        write(&dir.path().join("tiny-llama/config.json"), br#"{"model_type":"llama"}"#);
        write(&dir.path().join("tiny-llama/pytorch_model.bin"), b"");
        write(&dir.path().join("qwen/config.json"), br#"{"model_type":"qwen3"}"#);
        write(&dir.path().join("qwen/model.safetensors"), b"");
        write(&dir.path().join("t5/config.json"), br#"{"model_type":"t5"}"#);
        write(&dir.path().join("t5/model.safetensors"), b"");
        write(&dir.path().join("no-weights/config.json"), br#"{"model_type":"bert"}"#);
        write(&dir.path().join("broken.gguf/x.gguf"), b"not gguf");
        write(&dir.path().join(".hidden/config.json"), br#"{"model_type":"bert"}"#);

        let models = scan(dir.path()).unwrap();
        let summary: Vec<_> = models.iter().map(|m| (m.name.as_str(), m.kind, m.format)).collect();
        assert_eq!(
            summary,
            vec![
                ("bge-small", ModelKind::Retriever, WeightFormat::Safetensors),
                ("qwen", ModelKind::Generator, WeightFormat::Safetensors),
                ("tiny-llama", ModelKind::Generator, WeightFormat::PytorchBin),
            ]
        );
    }

    #[test]
    fn missing_directory_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(scan(&dir.path().join("absent")).unwrap().is_empty());
    }

    #[test]
    fn reads_architecture_from_gguf_header() {
        use candle_core::quantized::gguf_file::{Value, write};
        let dir = tempfile::tempdir().unwrap();
        let model_dir = dir.path().join("tiny-gguf");
        fs::create_dir_all(&model_dir).unwrap();
        let mut file = fs::File::create(model_dir.join("tiny.gguf")).unwrap();
        let arch = Value::String("llama".into());
        write(&mut file, &[("general.architecture", &arch)], &[]).unwrap();
        drop(file);
        let info = describe(&model_dir).unwrap();
        assert_eq!(
            (info.kind, info.format, info.architecture.as_deref()),
            (ModelKind::Generator, WeightFormat::Gguf, Some("llama"))
        );

        let mut file = fs::File::create(model_dir.join("tiny.gguf")).unwrap();
        let arch = Value::String("gpt2".into());
        write(&mut file, &[("general.architecture", &arch)], &[]).unwrap();
        drop(file);
        assert!(describe(&model_dir).unwrap_err().contains("gpt2"));
    }
}
