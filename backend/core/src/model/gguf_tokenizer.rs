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

/// llama.cpp's token types.
const TOKEN_TYPE_NORMAL: i32 = 1;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The `tokenizer.ggml.*` metadata of a byte-level BPE tokenizer whose pre-tokenizer is one
/// [`from_gguf`] rebuilds (GPT-2's, SmolLM's, Qwen2's, Llama 3's): the inverse of [`from_gguf`].
pub fn to_gguf(tokenizer: &Tokenizer) -> Result<Vec<(String, Value)>> {
    let unsupported = |what: String| ModelError::Unsupported(format!("cannot write this tokenizer as GGUF: {what}"));
    let text = tokenizer.to_string(false).map_err(|e| unsupported(e.to_string()))?;
    let spec: serde_json::Value = serde_json::from_str(&text).map_err(|e| unsupported(e.to_string()))?;
    let model = &spec["model"];
    if model["type"] != "BPE" {
        return Err(unsupported(format!("its model is {}, not byte-level BPE", model["type"])));
    }
    let pre = pre_tokenizer_name(&spec["pre_tokenizer"])
        .ok_or_else(|| unsupported(format!("pre-tokenizer {} is not one GGUF names", spec["pre_tokenizer"])))?;
    let mut tokens: Vec<Option<(String, i32)>> = Vec::new();
    let mut put = |id: usize, token: &str, kind: i32| {
        if tokens.len() <= id {
            tokens.resize(id + 1, None);
        }
        tokens[id] = Some((token.to_owned(), kind));
    };
    for (token, id) in model["vocab"].as_object().ok_or_else(|| unsupported("no vocabulary".into()))? {
        put(id.as_u64().unwrap_or(u64::MAX) as usize, token, TOKEN_TYPE_NORMAL);
    }
    for added in spec["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) else { continue };
        let kind = if added["special"].as_bool() == Some(true) { TOKEN_TYPE_CONTROL } else { TOKEN_TYPE_USER_DEFINED };
        put(id as usize, content, kind);
    }
    let tokens: Vec<(String, i32)> = tokens
        .into_iter()
        .enumerate()
        .map(|(id, token)| token.ok_or_else(|| unsupported(format!("no token has id {id}"))))
        .collect::<Result<_>>()?;
    // Merges are "a b" strings, or ["a", "b"] pairs in newer files.
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|merge| match merge {
            serde_json::Value::String(pair) => Ok(Value::String(pair.clone())),
            serde_json::Value::Array(pair) if pair.len() == 2 => {
                Ok(Value::String(format!("{} {}", pair[0].as_str().unwrap_or(""), pair[1].as_str().unwrap_or(""))))
            }
            other => Err(unsupported(format!("merge {other}"))),
        })
        .collect::<Result<_>>()?;
    if merges.is_empty() {
        return Err(unsupported("it has no merges".into()));
    }
    Ok(vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens.iter().map(|(t, _)| Value::String(t.clone())).collect())),
        ("tokenizer.ggml.token_type".into(), Value::Array(tokens.iter().map(|(_, k)| Value::I32(*k)).collect())),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
    ])
}

/// llama.cpp's name for a `tokenizer.json` pre-tokenizer, for the ones [`from_gguf`] rebuilds.
fn pre_tokenizer_name(pre: &serde_json::Value) -> Option<&'static str> {
    let kind = |v: &serde_json::Value| v["type"].as_str().unwrap_or_default().to_owned();
    if kind(pre) == "ByteLevel" && pre["use_regex"].as_bool() != Some(false) {
        return Some("gpt2");
    }
    let parts = pre["pretokenizers"].as_array()?;
    match parts.as_slice() {
        [digits, byte_level]
            if kind(digits) == "Digits"
                && digits["individual_digits"].as_bool() == Some(true)
                && kind(byte_level) == "ByteLevel" =>
        {
            Some("smollm")
        }
        [split, byte_level] if kind(split) == "Split" && kind(byte_level) == "ByteLevel" => {
            match split["pattern"]["Regex"].as_str()? {
                QWEN2_SPLIT => Some("qwen2"),
                LLAMA3_SPLIT => Some("llama-bpe"),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF `Content` holding only `metadata`.
    fn content(metadata: Vec<(String, Value)>) -> Content {
        Content {
            magic: candle_core::quantized::gguf_file::VersionedMagic::GgufV3,
            metadata: metadata.into_iter().collect(),
            tensor_infos: Default::default(),
            tensor_data_offset: 0,
        }
    }

    #[test]
    fn a_tokenizer_written_as_gguf_reads_back_the_same_for_every_pre_tokenizer() {
        let base = |pre: &str| {
            content(vec![
                ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
                ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
                (
                    "tokenizer.ggml.tokens".into(),
                    Value::Array(
                        ["a", "b", "ab", "Ġ", "1", "2", "<|im_end|>"].map(|t| Value::String(t.into())).to_vec(),
                    ),
                ),
                ("tokenizer.ggml.token_type".into(), Value::Array([1, 1, 1, 1, 1, 1, 3].map(Value::I32).to_vec())),
                ("tokenizer.ggml.merges".into(), Value::Array(vec![Value::String("a b".into())])),
            ])
        };
        for pre in ["gpt2", "smollm", "qwen2", "llama-bpe"] {
            let tokenizer = from_gguf(&base(pre)).unwrap();
            let written = to_gguf(&tokenizer).unwrap();
            let again = from_gguf(&content(written.clone())).unwrap();
            assert_eq!(
                written.iter().find(|(k, _)| k == "tokenizer.ggml.pre").map(|(_, v)| v.to_string().unwrap().as_str()),
                Some(pre)
            );
            for text in ["ab ab", "a12 b<|im_end|>", "ba"] {
                assert_eq!(
                    tokenizer.encode(text, false).unwrap().get_ids(),
                    again.encode(text, false).unwrap().get_ids(),
                    "{pre}: {text:?}"
                );
            }
        }
    }
}
