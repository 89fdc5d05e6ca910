//! Tiny random retriever and generator with LoRA adapters attached (base weights frozen), and a tiny
//! WordPiece tokenizer and BERT config, built in code for unit tests (of this crate, and of others
//! through the `testing` feature).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::model::bert::BertModel;
use crate::model::bert::Config;
use crate::model::generator::Generator;
use crate::model::llama::{self, Llama};
use crate::model::lora::{self, LoraConfig};
use crate::model::retriever::{Pooling, Retriever, RetrieverSettings, configure_tokenizer};
use tokenizers::Tokenizer;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;

pub const WORDS: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "in", "park", "##s",
    "what", "is", "?", ".",
];

/// A BERT WordPiece tokenizer over a tiny vocabulary.
pub fn tiny_tokenizer() -> Tokenizer {
    let dir = tempfile::tempdir().unwrap();
    let vocab = dir.path().join("vocab.txt");
    std::fs::write(&vocab, WORDS.join("\n")).unwrap();
    let model = WordPiece::from_file(&vocab.display().to_string()).unk_token("[UNK]".into()).build().unwrap();
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_normalizer(Some(BertNormalizer::default()));
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer.with_post_processor(Some(BertProcessing::new(("[SEP]".into(), 3), ("[CLS]".into(), 2))));
    tokenizer
}

pub fn tiny_config() -> Config {
    serde_json::from_value(serde_json::json!({
        "vocab_size": WORDS.len(), "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 32, "max_position_embeddings": 32, "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1
    }))
    .unwrap()
}

/// Deterministic pseudo-random values in [-scale, scale] (candle's CPU generator cannot be seeded).
struct Lcg(u64);

impl Lcg {
    fn values(&mut self, count: usize, scale: f64) -> Vec<f64> {
        (0..count)
            .map(|_| {
                self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
            })
            .collect()
    }
}

/// Frozen, seeded weights in the shapes of a randomly initialised model (norms keep their
/// constant initialisation).
fn frozen(varmap: &VarMap, rng: &mut Lcg, dtype: DType) -> HashMap<String, Tensor> {
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let var = &data[name];
            let tensor = if name.to_lowercase().contains("norm") {
                var.as_tensor().detach()
            } else {
                let values = rng.values(var.elem_count(), 0.3);
                Tensor::from_vec(values, var.shape(), var.device()).unwrap().to_dtype(dtype).unwrap()
            };
            (name.clone(), tensor)
        })
        .collect()
}

fn llama_config() -> llama::Config {
    serde_json::from_value(serde_json::json!({
        "vocab_size": 19, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 128, "tie_word_embeddings": true
    }))
    .unwrap()
}

/// A tiny retriever and generator (sharing a 19-word vocabulary) with adapters, every weight drawn
/// from `seed` (the same models each time); `lora_B` is random so the adapters matter from the
/// start. Returns the adapters' variables too.
pub fn tiny_models(dtype: DType, seed: u64) -> (Retriever, Generator, VarMap, VarMap) {
    tiny_models_with_dropout(dtype, seed, 0.0)
}

/// [`tiny_models`] whose generator adapters drop their input with `lora_dropout` in training.
pub fn tiny_models_with_dropout(dtype: DType, seed: u64, lora_dropout: f32) -> (Retriever, Generator, VarMap, VarMap) {
    let device = Device::Cpu;
    let mut rng = Lcg(seed);
    let random = VarMap::new();
    BertModel::load(VarBuilder::from_varmap(&random, dtype, &device), &tiny_config()).unwrap();
    let mut bert =
        BertModel::load(VarBuilder::from_tensors(frozen(&random, &mut rng, dtype), dtype, &device), &tiny_config())
            .unwrap();
    let retriever_vars = VarMap::new();
    lora::attach(
        &mut bert,
        &LoraConfig::new(2, 4.0, 0.0, &["query", "value"]),
        VarBuilder::from_varmap(&retriever_vars, dtype, &device),
    )
    .unwrap();
    let mut tokenizer = tiny_tokenizer();
    configure_tokenizer(&mut tokenizer, 32, 0).unwrap();
    let settings = RetrieverSettings {
        pooling: Pooling::Mean,
        normalize: true,
        max_length: 32,
        query_prefix: None,
        passage_prefix: None,
    };
    let retriever = Retriever::from_parts(bert, tokenizer, settings, 16);

    let random = VarMap::new();
    Llama::load(VarBuilder::from_varmap(&random, dtype, &device), &llama_config()).unwrap();
    let mut decoder =
        Llama::load(VarBuilder::from_tensors(frozen(&random, &mut rng, dtype), dtype, &device), &llama_config())
            .unwrap();
    let generator_vars = VarMap::new();
    lora::attach(
        &mut decoder,
        &LoraConfig::new(2, 4.0, lora_dropout, &["q_proj", "v_proj"]),
        VarBuilder::from_varmap(&generator_vars, dtype, &device),
    )
    .unwrap();
    let generator = Generator::from_parts(decoder, tiny_tokenizer(), None, vec![3], &device);

    for varmap in [&retriever_vars, &generator_vars] {
        let data = varmap.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        // Both factors from the seed: candle draws `lora_A` from its own generator, which cannot be
        // seeded, so a model built twice would differ. `lora_A` at about its Kaiming bound (fan-in 16).
        for name in names.into_iter().filter(|n| n.contains("lora_")) {
            let var = &data[name];
            let scale = if name.contains("lora_B") { 0.4 } else { 0.6 };
            let values = rng.values(var.elem_count(), scale);
            var.set(&Tensor::from_vec(values, var.shape(), &device).unwrap().to_dtype(dtype).unwrap()).unwrap();
        }
    }
    (retriever, generator, retriever_vars, generator_vars)
}

/// Folders holding only a `config.json` and `tokenizer.json` (the tiny vocabulary) for a tiny
/// BERT retriever and a tiny Llama generator, as `--random-init` takes them. Returns the temporary
/// directory that owns them and the two folders.
pub fn tiny_shapes() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let retriever = dir.path().join("tiny-bert");
    let generator = dir.path().join("tiny-llama");
    let mut bert = serde_json::to_value(serde_json::json!({
        "vocab_size": 19, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 32, "max_position_embeddings": 512, "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1
    }))
    .unwrap();
    let mut llama = serde_json::json!({
        "vocab_size": 19, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 1024, "tie_word_embeddings": true
    });
    for (folder, config) in [(&retriever, &mut bert), (&generator, &mut llama)] {
        std::fs::create_dir_all(folder).unwrap();
        std::fs::write(folder.join("config.json"), config.to_string()).unwrap();
        tiny_tokenizer().save(folder.join("tokenizer.json"), false).unwrap();
    }
    (dir, retriever, generator)
}
