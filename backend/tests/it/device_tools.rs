//! The tools `scripts/gpu-check.sh` runs, end to end on the CPU with the real default models'
//! configs and tokenizers: `attune export-shape` (a generator without its weights), `attune bench
//! device --random-init` (every part, tiny sizes) and `attune bench agree`.

use std::path::Path;
use std::process::{Command, Output};

use super::common::workspace;

fn attune(args: &[&str]) -> Output {
    let models = workspace().join("models");
    assert!(models.join("all-MiniLM-L6-v2").is_dir(), "{} is missing: run `make models`", models.display());
    Command::new(env!("CARGO_BIN_EXE_attune")).args(args).output().unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A copy of `from` with its config.json's fields changed.
fn derive(from: &Path, to: &Path, changes: serde_json::Value) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let name = entry.file_name();
        let name = name.to_str().unwrap();
        if name.ends_with(".json") {
            std::fs::copy(entry.path(), to.join(name)).unwrap();
        }
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(from.join("config.json")).unwrap()).unwrap();
    for (key, value) in changes.as_object().unwrap() {
        config[key] = value.clone();
    }
    std::fs::write(to.join("config.json"), config.to_string()).unwrap();
}

#[test]
fn shapes_random_weights_benchmarks_and_agreement_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let models = workspace().join("models");
    let smollm2 = dir.path().join("smollm2");
    let output = attune(&["export-shape", "--models-dir", path(&models), "--out", path(&smollm2)]);
    assert!(output.status.success(), "{}", text(&output));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(smollm2.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["hidden_size"], 576);
    assert_eq!(config["num_hidden_layers"], 30);
    assert_eq!(config["model_type"], "llama");
    let tokenizer_config = std::fs::read_to_string(smollm2.join("tokenizer_config.json")).unwrap();
    assert!(tokenizer_config.contains("<|im_start|>"), "the chat template travels: {tokenizer_config}");
    assert!(std::fs::metadata(smollm2.join("tokenizer.json")).unwrap().len() > 100_000);
    assert!(!smollm2.join("model.safetensors").exists());

    // Tiny dimensions, the real tokenizers.
    let tiny_llama = dir.path().join("tiny-llama");
    derive(
        &smollm2,
        &tiny_llama,
        serde_json::json!({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "num_key_value_heads": 2}),
    );
    let tiny_bert = dir.path().join("tiny-bert");
    derive(
        &models.join("all-MiniLM-L6-v2"),
        &tiny_bert,
        serde_json::json!({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 4}),
    );
    let output = attune(&[
        "bench",
        "device",
        "--random-init",
        "--device",
        "cpu",
        "--retriever",
        path(&tiny_bert),
        "--generator",
        path(&tiny_llama),
        "--embed-texts",
        "16",
        "--embed-batch",
        "8",
        "--retriever-batch",
        "4",
        "--e2e-batch",
        "2",
        "--top-k",
        "2",
        "--steps",
        "1",
        "--new-tokens",
        "4",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let figures: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    for key in ["embeddings_per_s", "retriever_step_s", "e2e_step_s", "prefill_tokens_per_s", "decode_tokens_per_s"] {
        assert!(figures[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {figures}");
    }
    assert!(figures["e2e_step_tokens"].as_f64().unwrap() > figures["retriever_step_tokens"].as_f64().unwrap() / 4.0);

    let json = dir.path().join("agree.json");
    let output = attune(&[
        "bench",
        "agree",
        "--device",
        "cpu",
        "--retriever",
        path(&tiny_bert),
        "--generator",
        path(&tiny_llama),
        "--json",
        path(&json),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let rows: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rows.len(), 8, "f32 and bf16 rows");
    assert!(rows.iter().all(|r| r["pass"] == true), "{rows:?}");

    // A GGUF cannot be built with random weights (it has no config.json).
    let output = attune(&[
        "bench",
        "device",
        "--random-init",
        "--device",
        "cpu",
        "--retriever",
        path(&tiny_bert),
        "--generator",
        path(&models.join("SmolLM2-135M-Instruct")),
        "--parts",
        "decode",
    ]);
    assert!(!output.status.success());
    assert!(text(&output).contains("config.json"), "{}", text(&output));
}
