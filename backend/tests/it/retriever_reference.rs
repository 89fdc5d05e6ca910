//! The real all-MiniLM-L6-v2 (fetched by `make test`'s set-up into models/) against what
//! sentence-transformers computes: tokenizer ids, mean-pooled states and normalised embeddings,
//! from `tests/fixtures/minilm_reference.json` (written by scripts/reference/retriever_fixtures.py).

use std::path::PathBuf;

use candle_core::Device;
use serde::Deserialize;

use attune::model::retriever::{Pooling, Retriever, TextRole};

use super::common::workspace;

#[derive(Deserialize)]
struct Reference {
    max_seq_length: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    mean_pooled: Vec<f32>,
    embedding: Vec<f32>,
}

fn load() -> (Retriever, Reference) {
    let dir = workspace().join("models/all-MiniLM-L6-v2");
    assert!(dir.join("model.safetensors").is_file(), "{} is missing: run `make models`", dir.display());
    let retriever = Retriever::load(&dir, &Device::Cpu).unwrap();
    let fixture = workspace().join("backend/tests/fixtures/minilm_reference.json");
    let reference: Reference = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    (retriever, reference)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn minilm_matches_sentence_transformers() {
    let (retriever, reference) = load();
    let settings = retriever.settings();
    assert_eq!(settings.pooling, Pooling::Mean);
    assert!(settings.normalize);
    assert_eq!(settings.max_length, reference.max_seq_length);
    assert!(reference.cases.len() >= 32);

    let texts: Vec<&str> = reference.cases.iter().map(|c| c.text.as_str()).collect();
    // Tokenizer: identical ids (checked one at a time, without padding).
    for case in &reference.cases {
        let input = retriever.tokenize(&[case.text.as_str()], TextRole::Passage).unwrap();
        let ids = input.input_ids.squeeze(0).unwrap().to_vec1::<u32>().unwrap();
        assert_eq!(ids, case.ids, "token ids of {:?}", case.text);
    }

    // Embeddings, batched with padding (batches of 8, as the reference encoded them).
    let embeddings = retriever.embed(&texts, TextRole::Passage, 8).unwrap().to_vec2::<f32>().unwrap();
    let mut worst = 0.0f32;
    for (case, ours) in reference.cases.iter().zip(&embeddings) {
        let diff = max_abs_diff(ours, &case.embedding);
        assert!(diff <= 1e-4, "embedding of {:?} differs by {diff}", case.text);
        worst = worst.max(diff);
    }
    eprintln!("worst embedding difference: {worst:e}");

    // Before normalisation too, so a normalisation bug cannot hide a pooling one.
    for case in reference.cases.iter().take(8) {
        let input = retriever.tokenize(&[case.text.as_str()], TextRole::Passage).unwrap();
        let hidden = retriever.model().forward(&input, attune::model::layers::Mode::Inference).unwrap();
        let pooled = attune::model::retriever::pool(&hidden, &input.attention_mask, Pooling::Mean).unwrap();
        let pooled = pooled.squeeze(0).unwrap().to_vec1::<f32>().unwrap();
        let diff = max_abs_diff(&pooled, &case.mean_pooled);
        assert!(diff <= 1e-4, "mean-pooled state of {:?} differs by {diff}", case.text);
    }
}

#[test]
fn embed_command_prints_one_json_array_per_line() {
    let (_, reference) = load();
    let cases: Vec<&Case> =
        reference.cases.iter().filter(|c| !c.text.is_empty() && !c.text.contains('\n')).take(5).collect();
    let input: String = cases.iter().map(|c| format!("{}\n", c.text)).collect();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_attune"))
        .args(["embed", "--model", "default", "--batch-size", "2", "--models-dir"])
        .arg(workspace().join("models"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let lines: Vec<Vec<f32>> =
        String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), cases.len());
    for (case, line) in cases.iter().zip(&lines) {
        assert!(max_abs_diff(line, &case.embedding) <= 1e-4, "{:?}", case.text);
    }
}

#[test]
fn embed_command_fails_clearly_on_a_missing_model() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_attune"))
        .args(["embed", "--model", "/nonexistent/retriever"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/retriever"), "{stderr}");
}

mod lora {
    use super::*;
    use attune::model::lora::{self, LoraConfig};

    #[derive(Deserialize)]
    struct LoraReference {
        sentences: Vec<String>,
        embeddings: Vec<Vec<f32>>,
    }

    fn fixture_dir() -> PathBuf {
        workspace().join("backend/tests/fixtures/minilm_lora")
    }

    #[test]
    fn adapter_written_by_peft_gives_pefts_embeddings() {
        let (mut retriever, _) = load();
        let config = retriever.load_adapter(&fixture_dir()).unwrap();
        assert_eq!((config.r, config.target_modules.len()), (4, 2));
        let reference: LoraReference =
            serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("reference.json")).unwrap()).unwrap();
        let texts: Vec<&str> = reference.sentences.iter().map(String::as_str).collect();
        let ours = retriever.embed(&texts, TextRole::Passage, 8).unwrap().to_vec2::<f32>().unwrap();
        for ((text, a), b) in texts.iter().zip(&ours).zip(&reference.embeddings) {
            assert!(max_abs_diff(a, b) <= 1e-4, "{text:?}: {}", max_abs_diff(a, b));
        }
        // The adapter really changes the embeddings (so the comparison above means something).
        let (base, _) = load();
        let plain = base.embed(&texts, TextRole::Passage, 8).unwrap().to_vec2::<f32>().unwrap();
        assert!(max_abs_diff(&plain[0], &ours[0]) > 1e-3);
    }

    #[test]
    fn adapter_written_by_attune_has_pefts_tensor_names_and_shapes() {
        let (mut retriever, _) = load();
        let mut config = LoraConfig::new(4, 8.0, 0.0, &["query", "value"]);
        config.base_model_name_or_path = Some("all-MiniLM-L6-v2".into());
        let varmap = lora::attach_trainable(retriever.model_mut(), &config, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        lora::save(dir.path(), &varmap, &config).unwrap();
        let shapes = |path: PathBuf| -> Vec<(String, Vec<usize>)> {
            let mut v: Vec<_> = candle_core::safetensors::load(path, &Device::Cpu)
                .unwrap()
                .into_iter()
                .map(|(k, t)| (k, t.dims().to_vec()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(shapes(dir.path().join(lora::ADAPTER_WEIGHTS)), shapes(fixture_dir().join(lora::ADAPTER_WEIGHTS)));
    }
}

/// bf16 weights (the GPU default; run here on the CPU): embeddings stay close to the f32 reference
/// and rank texts the same way.
#[test]
fn minilm_in_bf16_stays_close_to_the_reference() {
    let (_, reference) = load();
    let dir = workspace().join("models/all-MiniLM-L6-v2");
    let retriever = Retriever::load_as(&dir, &Device::Cpu, candle_core::DType::BF16).unwrap();
    let texts: Vec<&str> = reference.cases.iter().map(|c| c.text.as_str()).collect();
    let ours = retriever.embed(&texts, TextRole::Passage, 8).unwrap().to_vec2::<f32>().unwrap();
    let mut worst = 1.0f32;
    for (case, embedding) in reference.cases.iter().zip(&ours) {
        // Both unit vectors: the dot product is the cosine similarity.
        let cosine: f32 = embedding.iter().zip(&case.embedding).map(|(a, b)| a * b).sum();
        worst = worst.min(cosine);
    }
    eprintln!("bf16: lowest cosine similarity to the f32 reference {worst}");
    // bf16 keeps 8 significant bits; six layers of it cost well under 1% of the direction.
    assert!(worst >= 0.99, "lowest cosine similarity {worst}");
}

/// A BGE-style retriever (CLS pooling, a query instruction) saved as `pytorch_model.bin` with the
/// pooling config sentence-transformers 6 writes, against sentence-transformers' own embeddings
/// (`tests/fixtures/tiny_bge`, written by scripts/reference/bge_style_fixture.py).
#[test]
fn bge_style_pickle_checkpoint_matches_sentence_transformers() {
    #[derive(Deserialize)]
    struct Embedded {
        text: String,
        embedding: Vec<f32>,
    }
    #[derive(Deserialize)]
    struct TinyReference {
        query_prompt: String,
        queries: Vec<Embedded>,
        passages: Vec<Embedded>,
    }
    let dir = workspace().join("backend/tests/fixtures/tiny_bge");
    assert!(dir.join("pytorch_model.bin").is_file() && !dir.join("model.safetensors").exists());
    let reference: TinyReference =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let retriever = Retriever::load(&dir, &Device::Cpu).unwrap();
    let settings = retriever.settings();
    assert_eq!(settings.pooling, Pooling::Cls);
    assert!(settings.normalize);
    assert_eq!(settings.query_prefix.as_deref(), Some(reference.query_prompt.as_str()));
    assert_eq!(settings.passage_prefix, None, "an empty document prompt is no prefix");
    for (role, cases) in [(TextRole::Query, &reference.queries), (TextRole::Passage, &reference.passages)] {
        let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
        let ours = retriever.embed(&texts, role, 4).unwrap().to_vec2::<f32>().unwrap();
        for (case, embedding) in cases.iter().zip(&ours) {
            let diff = max_abs_diff(embedding, &case.embedding);
            assert!(diff <= 1e-5, "{role:?} {:?} differs by {diff}", case.text);
        }
    }
    // The prefix matters: a query embedded as a passage is a different vector.
    let plain = retriever.embed(&[reference.queries[0].text.as_str()], TextRole::Passage, 1).unwrap();
    let plain = plain.to_vec2::<f32>().unwrap();
    assert!(max_abs_diff(&plain[0], &reference.queries[0].embedding) > 1e-3);
}
