//! Tiny random retriever and generator with LoRA adapters attached (base weights frozen), built in
//! code for the trainer's unit tests.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::model::bert::BertModel;
use crate::model::generator::Generator;
use crate::model::llama::{self, Llama};
use crate::model::lora::{self, LoraConfig};
use crate::model::retriever::tests::{tiny_config, tiny_tokenizer};
use crate::model::retriever::{Pooling, Retriever, RetrieverSettings, configure_tokenizer};

/// Frozen copies of a model's randomly initialised weights.
fn frozen(varmap: &VarMap) -> HashMap<String, Tensor> {
    varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect()
}

fn llama_config() -> llama::Config {
    serde_json::from_value(serde_json::json!({
        "vocab_size": 19, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 128, "tie_word_embeddings": true
    }))
    .unwrap()
}

/// A tiny retriever and generator (sharing a 19-word vocabulary) with adapters; `lora_B` is
/// random so the adapters matter from the start. Returns the adapters' variables too.
pub fn tiny_models(dtype: DType, seed: u64) -> (Retriever, Generator, VarMap, VarMap) {
    let device = Device::Cpu;
    let random = VarMap::new();
    BertModel::load(VarBuilder::from_varmap(&random, dtype, &device), &tiny_config()).unwrap();
    let mut bert = BertModel::load(VarBuilder::from_tensors(frozen(&random), dtype, &device), &tiny_config()).unwrap();
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
    let mut decoder = Llama::load(VarBuilder::from_tensors(frozen(&random), dtype, &device), &llama_config()).unwrap();
    let generator_vars = VarMap::new();
    lora::attach(
        &mut decoder,
        &LoraConfig::new(2, 4.0, 0.0, &["q_proj", "v_proj"]),
        VarBuilder::from_varmap(&generator_vars, dtype, &device),
    )
    .unwrap();
    let generator = Generator::from_parts(decoder, tiny_tokenizer(), None, vec![3], &device);

    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    for varmap in [&retriever_vars, &generator_vars] {
        let data = varmap.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names.into_iter().filter(|n| n.contains("lora_B")) {
            let var = &data[name];
            let values: Vec<f64> = (0..var.elem_count())
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.8
                })
                .collect();
            var.set(&Tensor::from_vec(values, var.shape(), &device).unwrap().to_dtype(dtype).unwrap()).unwrap();
        }
    }
    (retriever, generator, retriever_vars, generator_vars)
}
