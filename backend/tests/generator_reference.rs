//! The real SmolLM2-135M-Instruct GGUF (fetched by `make test`'s set-up into models/) through
//! Attune's own Llama decoder, against transformers on the same file (dequantized to f32):
//! logits at every position and greedy continuations, from `tests/fixtures/smollm2_reference.json`
//! (written by scripts/reference/generator_fixtures.py).

use std::path::PathBuf;

use candle_core::{D, Device, Tensor};
use serde::Deserialize;

use attune::model::llama::{self, KvCache, Llama};

#[derive(Deserialize)]
struct Reference {
    vocab_sample: Vec<u32>,
    prompts: Vec<Prompt>,
}

#[derive(Deserialize)]
struct Prompt {
    text: String,
    ids: Vec<u32>,
    logits_at_sample: Vec<Vec<f32>>,
    argmax: Vec<u32>,
    greedy_continuation: Vec<u32>,
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn load() -> (Llama, Reference) {
    let dir = workspace().join("models/SmolLM2-135M-Instruct");
    assert!(dir.is_dir(), "{} is missing: run `make models`", dir.display());
    let model = llama::load(&dir, &Device::Cpu).unwrap();
    let fixture = workspace().join("backend/tests/fixtures/smollm2_reference.json");
    let reference: Reference = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    (model, reference)
}

/// Greedy decoding with the KV cache: the prompt in one pass, then one token at a time.
fn greedy(model: &Llama, prompt: &[u32], new_tokens: usize) -> Vec<u32> {
    let mut cache = KvCache::default();
    let mut input = Tensor::new(prompt, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let mut out = Vec::new();
    for _ in 0..new_tokens {
        let logits = model.forward(&input, &mut cache, None).unwrap();
        let last = logits.get(0).unwrap().get(logits.dim(1).unwrap() - 1).unwrap();
        let next = last.argmax(D::Minus1).unwrap().to_scalar::<u32>().unwrap();
        out.push(next);
        input = Tensor::new(&[next], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    }
    out
}

#[test]
fn smollm2_gguf_matches_transformers() {
    let (model, reference) = load();
    let cfg = model.config();
    assert_eq!((cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_kv_heads()), (30, 576, 9, 3));
    assert!(cfg.tie_word_embeddings);
    let sample = Tensor::new(reference.vocab_sample.as_slice(), &Device::Cpu).unwrap();
    let mut worst = 0.0f32;
    for prompt in &reference.prompts {
        let input = Tensor::new(prompt.ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = model.forward(&input, &mut KvCache::default(), None).unwrap().squeeze(0).unwrap();
        let argmax = logits.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap();
        assert_eq!(argmax, prompt.argmax, "argmax at every position of {:?}", prompt.text);
        let ours = logits.index_select(&sample, 1).unwrap().to_vec2::<f32>().unwrap();
        for (position, (row, expected)) in ours.iter().zip(&prompt.logits_at_sample).enumerate() {
            for (a, b) in row.iter().zip(expected) {
                let diff = (a - b).abs();
                worst = worst.max(diff);
                // Same dequantized weights; only f32 summation order differs. Logits are O(10) and the
                // measured worst difference is about 5e-5: 5e-4 leaves tenfold headroom.
                assert!(diff <= 5e-4, "{:?} position {position}: {a} vs {b}", prompt.text);
            }
        }
        let continuation = greedy(&model, &prompt.ids, prompt.greedy_continuation.len());
        assert_eq!(continuation, prompt.greedy_continuation, "greedy continuation of {:?}", prompt.text);
    }
    eprintln!("worst logit difference: {worst:e}");
}
