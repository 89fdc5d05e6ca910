//! The real SmolLM2-135M-Instruct GGUF (fetched by `make test`'s set-up into models/) through
//! Attune's own Llama decoder, against transformers on the same file (dequantized to f32):
//! logits at every position and greedy continuations, from `tests/fixtures/smollm2_reference.json`
//! (written by scripts/reference/generator_fixtures.py).

use candle_core::{D, Device, Tensor};
use serde::Deserialize;

use attune::model::llama::{self, KvCache, Llama};

use super::common::workspace;

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

fn load() -> (Llama, Reference) {
    let dir = workspace().join("models/SmolLM2-135M-Instruct");
    assert!(dir.is_dir(), "{} is missing: run `make models`", dir.display());
    let model = llama::load(&dir, &Device::Cpu).unwrap();
    let fixture = workspace().join("backend/tests/fixtures/smollm2_reference.json");
    let reference: Reference = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    (model, reference)
}

/// Greedy decoding with the KV cache: the prompt in one pass, then one token at a time.
pub(crate) fn greedy(model: &Llama, prompt: &[u32], new_tokens: usize) -> Vec<u32> {
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

/// bf16 weights (the GPU default; run here on the CPU): the next-token choice agrees with
/// transformers' f32 at nearly every position.
#[test]
fn smollm2_in_bf16_mostly_agrees_with_the_f32_reference() {
    let (_, reference) = load();
    let dir = workspace().join("models/SmolLM2-135M-Instruct");
    let model = llama::load_as(&dir, &Device::Cpu, candle_core::DType::BF16).unwrap();
    let (mut agree, mut total) = (0usize, 0usize);
    for prompt in &reference.prompts {
        let input = Tensor::new(prompt.ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = model.forward(&input, &mut KvCache::default(), None).unwrap().squeeze(0).unwrap();
        assert_eq!(logits.dtype(), candle_core::DType::BF16);
        let argmax = logits.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap();
        agree += argmax.iter().zip(&prompt.argmax).filter(|(a, b)| a == b).count();
        total += argmax.len();
    }
    eprintln!("bf16: argmax agrees at {agree} of {total} positions");
    // Near-ties flip under bf16 rounding; a broken bf16 path agrees almost nowhere.
    assert!(agree * 10 >= total * 9, "argmax agrees at only {agree} of {total} positions");
}

mod generator {
    use std::ops::ControlFlow;

    use super::*;
    use attune::model::generator::{ChatMessage, GenerationConfig, Generator, StopReason};

    #[derive(Deserialize)]
    struct Full {
        prompts: Vec<Prompt>,
        tokenizer: Vec<TokenizerCase>,
        chat: Vec<ChatCase>,
    }

    #[derive(Deserialize)]
    struct TokenizerCase {
        text: String,
        ids: Vec<u32>,
    }

    #[derive(Deserialize)]
    struct ChatCase {
        messages: Vec<Message>,
        rendered: String,
    }

    #[derive(Deserialize)]
    struct Message {
        role: String,
        content: String,
    }

    fn load_generator() -> (Generator, Full) {
        let dir = workspace().join("models/SmolLM2-135M-Instruct");
        let generator = Generator::load(&dir, &Device::Cpu).unwrap();
        let fixture = workspace().join("backend/tests/fixtures/smollm2_reference.json");
        (generator, serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap())
    }

    #[test]
    fn tokenizer_rebuilt_from_gguf_matches_transformers() {
        let (generator, reference) = load_generator();
        assert!(reference.tokenizer.len() >= 50);
        for case in &reference.tokenizer {
            assert_eq!(generator.encode(&case.text).unwrap(), case.ids, "ids of {:?}", case.text);
            // Decoding skips special tokens (generated text never shows them).
            let without_specials = case.text.replace("<|im_start|>", "").replace("<|im_end|>", "");
            assert_eq!(generator.decode(&case.ids).unwrap(), without_specials, "round trip of {:?}", case.text);
        }
    }

    #[test]
    fn chat_template_matches_transformers() {
        let (generator, reference) = load_generator();
        for case in &reference.chat {
            let messages: Vec<ChatMessage> =
                case.messages.iter().map(|m| ChatMessage::new(&m.role, &m.content)).collect();
            assert_eq!(generator.render_chat(&messages).unwrap(), case.rendered);
        }
    }

    #[test]
    fn greedy_generation_streams_the_reference_continuation() {
        let (generator, reference) = load_generator();
        let prompt = &reference.prompts[1];
        let config = GenerationConfig { max_new_tokens: prompt.greedy_continuation.len(), ..Default::default() };
        let mut streamed = String::new();
        let generation = generator
            .generate(&prompt.ids, &config, |piece| {
                streamed.push_str(piece);
                ControlFlow::Continue(())
            })
            .unwrap();
        let expected_tokens: Vec<u32> = prompt.greedy_continuation.iter().copied().take_while(|t| *t != 2).collect();
        assert_eq!(generation.tokens, expected_tokens);
        assert_eq!(generation.text, generator.decode(&expected_tokens).unwrap());
        assert_eq!(streamed, generation.text, "the streamed pieces add up to the text");
    }

    #[test]
    fn stop_strings_cancellation_and_seeded_sampling() {
        let (generator, reference) = load_generator();
        let prompt = &reference.prompts[0];
        let greedy = generator
            .generate(&prompt.ids, &GenerationConfig { max_new_tokens: 12, ..Default::default() }, |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
        let stop_at = greedy.text.trim_start().chars().take(3).collect::<String>();
        let stopped = generator
            .generate(
                &prompt.ids,
                &GenerationConfig { max_new_tokens: 12, stop: vec![stop_at.clone()], ..Default::default() },
                |_| ControlFlow::Continue(()),
            )
            .unwrap();
        assert_eq!(stopped.stop_reason, StopReason::StopString);
        assert!(!stopped.text.contains(&stop_at));

        let mut pieces = 0;
        let cancelled = generator
            .generate(&prompt.ids, &GenerationConfig { max_new_tokens: 12, ..Default::default() }, |_| {
                pieces += 1;
                if pieces == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
            })
            .unwrap();
        assert_eq!(cancelled.stop_reason, StopReason::Cancelled);
        assert!(cancelled.tokens.len() < 12);

        let sampled = |seed| {
            let config =
                GenerationConfig { max_new_tokens: 10, temperature: 1.0, top_p: 0.95, seed, ..Default::default() };
            generator.generate(&prompt.ids, &config, |_| ControlFlow::Continue(())).unwrap().tokens
        };
        assert_eq!(sampled(1), sampled(1), "same seed, same text");
        assert!((2..6).any(|seed| sampled(seed) != sampled(1)), "different seeds vary");
    }
}

#[test]
fn generate_command_streams_the_greedy_continuation() {
    let (model_dir, reference) = (workspace().join("models"), load().1);
    let prompt = &reference.prompts[0];
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_attune"))
        .args(["generate", "--model", "default", "--max-new-tokens", "8", "--temperature", "0", "--prompt"])
        .arg(&prompt.text)
        .arg("--models-dir")
        .arg(&model_dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let generator =
        attune::model::generator::Generator::load(&model_dir.join("SmolLM2-135M-Instruct"), &Device::Cpu).unwrap();
    let expected = generator.decode(&prompt.greedy_continuation[..8]).unwrap();
    assert_eq!(String::from_utf8(output.stdout).unwrap(), format!("{expected}\n"));
}
