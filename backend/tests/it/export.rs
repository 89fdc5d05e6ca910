//! `attune export` on a run trained for a few steps with tiny random models (the default models'
//! tokenizers): merged retriever and generator folders give what base + adapter give (and not what
//! the base alone gives), the GGUF export reads back to the same greedy text at f32 and close
//! logits at f16 and q8_0, PEFT export copies the adapters, and bad requests fail clearly.

use std::path::Path;
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};

use attune::model::generator::{GenerationConfig, Generator};
use attune::model::llama::{self, KvCache, Llama};
use attune::model::retriever::{Retriever, TextRole};

use super::common::workspace;
use super::jobs_api::tiny_models;

fn attune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attune")).args(args).output().unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

fn logits(model: &Llama, ids: &[u32]) -> Tensor {
    let input = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    model.forward(&input, &mut KvCache::default(), None).unwrap()
}

fn greedy(generator: &Generator, prompt: &str) -> String {
    let ids = generator.encode(prompt).unwrap();
    let config = GenerationConfig { max_new_tokens: 12, ..Default::default() };
    generator.generate(&ids, &config, |_| std::ops::ControlFlow::Continue(())).unwrap().text
}

#[test]
fn a_run_exports_as_merged_folders_gguf_and_peft_adapters() {
    let dir = tempfile::tempdir().unwrap();
    let models = tiny_models(dir.path());
    let (retriever, generator) = (models.join("all-MiniLM-L6-v2"), models.join("SmolLM2-135M-Instruct"));
    let run = dir.path().join("run");
    let data = workspace().join("backend/tests/fixtures/halueval_24.csv");
    // A large learning rate, so that the adapters move the models far enough to tell apart.
    let trained = attune(&[
        "train",
        "--data",
        s(&data),
        "--out",
        s(&run),
        "--retriever",
        s(&retriever),
        "--generator",
        s(&generator),
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--top-k",
        "2",
        "--lr",
        "0.05",
        "--max-passage-tokens",
        "48",
        "--max-answer-tokens",
        "12",
    ]);
    assert!(trained.status.success(), "{}", text(&trained));

    // Merged folders.
    let merged = dir.path().join("merged");
    let output = attune(&["export", s(&run), "--format", "merged", "--out", s(&merged)]);
    assert!(output.status.success(), "{}", text(&output));
    for file in [
        "retriever/model.safetensors",
        "retriever/tokenizer.json",
        "retriever/modules.json",
        "generator/model.safetensors",
        "generator/config.json",
        "generator/generation_config.json",
        "generator/tokenizer.json",
        "generator/tokenizer_config.json",
    ] {
        assert!(merged.join(file).is_file(), "{file} missing: {}", text(&output));
    }
    let cpu = Device::Cpu;
    let sentences = ["How do glaciers change?", "Paris is the capital of France."];
    let embed = |r: &Retriever| r.embed(&sentences, TextRole::Passage, 4).unwrap();
    let mut adapted = Retriever::load_as(&retriever, &cpu, DType::F32).unwrap();
    adapted.load_adapter(&run.join("retriever")).unwrap();
    let base = embed(&Retriever::load_as(&retriever, &cpu, DType::F32).unwrap());
    let merged_retriever = embed(&Retriever::load_as(&merged.join("retriever"), &cpu, DType::F32).unwrap());
    let diff = max_diff(&merged_retriever, &embed(&adapted));
    assert!(diff < 1e-5, "merged retriever differs from base + adapter by {diff}");
    assert!(max_diff(&merged_retriever, &base) > 1e-3, "the adapter changed nothing: the check would be empty");

    let ids = [1u32, 504, 2143, 314, 3575, 30, 2];
    let mut base_llama = llama::load_as(&generator, &cpu, DType::F32).unwrap();
    let base_logits = logits(&base_llama, &ids);
    attune::model::lora::load(&run.join("generator"), &mut base_llama, &cpu).unwrap();
    let adapted_logits = logits(&base_llama, &ids);
    let merged_generator = llama::load_as(&merged.join("generator"), &cpu, DType::F32).unwrap();
    let merged_logits = logits(&merged_generator, &ids);
    let diff = max_diff(&merged_logits, &adapted_logits);
    assert!(diff < 1e-4, "merged generator differs from base + adapter by {diff}");
    assert!(max_diff(&merged_logits, &base_logits) > 1e-3, "the adapter changed nothing");

    // GGUF: f32 reads back to the merged model's greedy text; f16 and q8_0 to close logits.
    let merged_gen = Generator::load_as(&merged.join("generator"), &cpu, DType::F32).unwrap();
    let prompts =
        ["The capital of France is", "Glaciers are", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"];
    // Measured: 0, 1.4e-4 and 2.6e-3 on these logits; about sevenfold headroom.
    for (quant, tolerance) in [("f32", 1e-5f32), ("f16", 1e-3), ("q8_0", 2e-2)] {
        let out = dir.path().join(format!("gguf-{quant}"));
        let output = attune(&["export", s(&run), "--format", "gguf", "--quant", quant, "--out", s(&out)]);
        assert!(output.status.success(), "{}", text(&output));
        assert!(out.join("generator/Modelfile").is_file());
        assert!(!out.join("retriever").exists(), "GGUF holds the generator only");
        let from_gguf = Generator::load_as(&out.join("generator/model.gguf"), &cpu, DType::F32).unwrap();
        assert_eq!(from_gguf.eos_ids(), merged_gen.eos_ids(), "{quant}: end-of-reply ids");
        assert_eq!(from_gguf.encode(prompts[2]).unwrap(), merged_gen.encode(prompts[2]).unwrap(), "{quant}: tokenizer");
        let diff = max_diff(&logits(from_gguf.model(), &ids), &merged_logits);
        eprintln!("{quant}: GGUF logits differ from the merged model's by {diff}");
        assert!(diff <= tolerance, "{quant}: GGUF logits differ from the merged model's by {diff}");
        if quant == "f32" {
            for prompt in prompts {
                assert_eq!(greedy(&from_gguf, prompt), greedy(&merged_gen, prompt), "greedy on {prompt:?}");
            }
            let modelfile = std::fs::read_to_string(out.join("generator/Modelfile")).unwrap();
            assert!(modelfile.contains("FROM ./model.gguf") && modelfile.contains("<|im_start|>"), "{modelfile}");
            assert!(modelfile.contains(attune::rag::prompt::INSTRUCTION), "{modelfile}");
        }
    }

    // PEFT: the adapters as they are.
    let peft = dir.path().join("peft");
    let output = attune(&["export", s(&run), "--format", "peft", "--out", s(&peft)]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        std::fs::read(peft.join("generator/adapter_model.safetensors")).unwrap(),
        std::fs::read(run.join("generator/adapter_model.safetensors")).unwrap()
    );

    // Bad requests: a message and a non-zero exit, and nothing overwritten.
    let again = attune(&["export", s(&run), "--format", "merged", "--out", s(&merged)]);
    assert!(!again.status.success() && text(&again).contains("exists already"), "{}", text(&again));
    let bad_quant =
        attune(&["export", s(&run), "--format", "gguf", "--quant", "q3", "--out", s(&dir.path().join("x"))]);
    assert!(!bad_quant.status.success() && text(&bad_quant).contains("q4_k"), "{}", text(&bad_quant));
    let not_a_run = attune(&["export", s(dir.path()), "--format", "peft", "--out", s(&dir.path().join("y"))]);
    assert!(!not_a_run.status.success() && text(&not_a_run).contains("not a run folder"), "{}", text(&not_a_run));
    assert!(!dir.path().join("x").exists() && !dir.path().join("y").exists());
}
