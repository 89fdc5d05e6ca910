//! Rebuilds a Hugging Face `tokenizers::Tokenizer` from a GGUF file's tokenizer metadata
//! (byte-level BPE: tokens, merges, control tokens, the pre-tokenizer named by `tokenizer.ggml.pre`:
//! GPT-2's, SmolLM's, Qwen2's or Llama 3's).

use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::json;
use tokenizers::Tokenizer;

use super::error::{ModelError, Result};

/// llama.cpp's token type for control (special) tokens.
const TOKEN_TYPE_CONTROL: i32 = 3;

/// The split regexes of the `tokenizer.json` files llama.cpp names `qwen2` (Qwen2, 2.5, 3) and
/// `llama-bpe` (Llama 3.x): they differ only in digits, one at a time or up to three together.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer the GGUF metadata describes.
pub fn from_gguf(content: &Content) -> Result<Tokenizer> {
    let get = |key: &str| {
        content.metadata.get(key).ok_or_else(|| ModelError::Unsupported(format!("GGUF metadata has no {key}")))
    };
    let model = get("tokenizer.ggml.model")?.to_string()?.clone();
    if model != "gpt2" {
        return Err(ModelError::Unsupported(format!(
            "GGUF tokenizer model {model:?} (only byte-level BPE, \"gpt2\", is rebuilt; put a tokenizer.json beside the file)"
        )));
    }
    let pre = content.metadata.get("tokenizer.ggml.pre").map(|v| v.to_string().cloned()).transpose()?;
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre_tokenizer = match pre.as_deref() {
        Some("smollm") => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level
        ]}),
        None | Some("default") | Some("gpt2") => byte_level,
        Some(name @ ("qwen2" | "llama-bpe")) => {
            let split = if name == "qwen2" { QWEN2_SPLIT } else { LLAMA3_SPLIT };
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}
            ]})
        }
        Some(other) => {
            return Err(ModelError::Unsupported(format!("GGUF pre-tokenizer {other:?} is not rebuilt yet")));
        }
    };
    let tokens = strings(get("tokenizer.ggml.tokens")?)?;
    let merges = strings(get("tokenizer.ggml.merges")?)?;
    let types: Vec<i32> = match content.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v.to_vec()?.iter().map(|t| t.to_i32()).collect::<candle_core::Result<_>>()?,
        None => Vec::new(),
    };
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(id, token)| (token.clone(), json!(id))).collect();
    let added_tokens: Vec<serde_json::Value> = types
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == TOKEN_TYPE_CONTROL)
        .map(|(id, _)| {
            json!({"id": id, "content": tokens[id], "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    });
    Tokenizer::from_bytes(spec.to_string().as_bytes())
        .map_err(|e| ModelError::Unsupported(format!("cannot rebuild the GGUF tokenizer: {e}")))
}

fn strings(value: &Value) -> Result<Vec<String>> {
    Ok(value.to_vec()?.iter().map(|v| v.to_string().cloned()).collect::<candle_core::Result<_>>()?)
}
