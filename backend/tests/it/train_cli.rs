//! `attune train` and `attune eval` end to end on the real default models: a few steps of each
//! mode on 24 HaluEval triples (`tests/fixtures/halueval_24.csv`), adapters in PEFT's layout, an
//! evaluation report in JSON, resuming, and clear failures on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::common::workspace;

fn fixture() -> PathBuf {
    workspace().join("backend/tests/fixtures/halueval_24.csv")
}

fn attune(args: &[&str]) -> Output {
    let models = workspace().join("models");
    assert!(models.join("all-MiniLM-L6-v2").is_dir(), "{} is missing: run `make models`", models.display());
    Command::new(env!("CARGO_BIN_EXE_attune")).args(args).arg("--models-dir").arg(&models).output().unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn retriever_mode_trains_evaluates_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let data = fixture();
    let common = ["--data", path(&data), "--mode", "retriever", "--batch-size", "4", "--max-passage-tokens", "64"];
    let mut args = vec!["train", "--out", path(&out), "--max-steps", "4", "--checkpoint-every", "2"];
    args.extend(common);
    let output = attune(&args);
    assert!(output.status.success(), "{}", text(&output));
    assert!(out.join("retriever/adapter_model.safetensors").is_file());
    assert!(out.join("retriever/adapter_config.json").is_file());
    assert!(!out.join("generator").exists(), "retriever mode trains no generator");
    assert!(out.join("checkpoints/step-000002/optimizer.safetensors").is_file());
    assert_eq!(std::fs::read_to_string(out.join("log.jsonl")).unwrap().lines().count(), 4);

    // A finished run is not silently overwritten...
    let again = attune(&args);
    assert!(!again.status.success());
    assert!(text(&again).contains("--resume"), "{}", text(&again));
    // ...and resuming it has nothing left to do but finish again at the same step.
    let resumed = attune(&["train", "--resume", path(&out)]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(text(&resumed).contains("done: 4 steps"), "{}", text(&resumed));

    let adapter = out.join("retriever");
    let rankings = dir.path().join("rankings.jsonl");
    let eval = attune(&[
        "eval",
        "--data",
        path(&data),
        "--retriever-adapter",
        path(&adapter),
        "--k",
        "1,3",
        "--rankings",
        path(&rankings),
        "--json",
    ]);
    assert!(eval.status.success(), "{}", text(&eval));
    let report: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    // The rankings file: one line a question, each ranking best first with its scores, and the
    // metrics the report gives follow from it.
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&rankings).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len() as u64, report["questions"].as_u64().unwrap());
    for name in ["base", "tuned", "bm25"] {
        let mut first = 0;
        for line in &lines {
            assert!(line["question"].is_string(), "{line}");
            let ranking = line[name].as_array().unwrap_or_else(|| panic!("no {name}: {line}"));
            let scores: Vec<f64> = ranking.iter().map(|c| c[1].as_f64().unwrap()).collect();
            assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{name} best first: {scores:?}");
            first += usize::from(ranking.first().map(|c| &c[0]) == Some(&line["gold"]));
        }
        let key = match name {
            "base" => "retriever_base",
            "tuned" => "retriever",
            _ => "bm25",
        };
        let hit1 = report[key]["hit@1"].as_f64().unwrap();
        assert!((first as f64 / lines.len() as f64 - hit1).abs() < 1e-9, "{name}: {first} first, hit@1 {hit1}");
    }
    for key in ["hit@1", "hit@3", "recall@3", "mrr@10", "ndcg@10"] {
        let value = report["retriever"][key].as_f64().unwrap_or_else(|| panic!("no {key}: {report}"));
        assert!((0.0..=1.0).contains(&value));
        assert!(report["retriever_base"][key].is_number());
        for lexical in ["bm25", "hybrid", "hybrid_base"] {
            let value = report[lexical][key].as_f64().unwrap_or_else(|| panic!("no {lexical} {key}: {report}"));
            assert!((0.0..=1.0).contains(&value));
        }
    }
    // HaluEval's questions share rare words (names) with their passages: BM25 finds most of them.
    assert!(report["bm25"]["hit@3"].as_f64() >= Some(0.5), "{report}");
    assert!(report["questions"].as_u64().unwrap() > 0);
    // The whole corpus is searched: every distinct passage of the file, not only the test split's.
    assert!(report["corpus"].as_u64().unwrap() > report["questions"].as_u64().unwrap());
}

#[test]
fn e2e_and_generator_modes_train_both_adapters_and_eval_answers() {
    let dir = tempfile::tempdir().unwrap();
    let data = fixture();
    for mode in ["e2e", "generator"] {
        let out = dir.path().join(mode);
        let output = attune(&[
            "train",
            "--data",
            path(&data),
            "--out",
            path(&out),
            "--mode",
            mode,
            "--batch-size",
            "2",
            "--top-k",
            "2",
            "--max-steps",
            "1",
            "--max-passage-tokens",
            "48",
            "--max-answer-tokens",
            "8",
        ]);
        assert!(output.status.success(), "{mode}: {}", text(&output));
        assert!(out.join("generator/adapter_model.safetensors").is_file(), "{mode}");
        assert_eq!(out.join("retriever").is_dir(), mode == "e2e");
        let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
        let step: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
        assert!(step["generator_loss"].as_f64().unwrap() > 0.0, "{step}");
        assert_eq!(step["retriever_loss"].is_number(), mode == "e2e", "{step}");
    }
    let out = dir.path().join("e2e");
    let eval = attune(&[
        "eval",
        "--data",
        path(&data),
        "--max-questions",
        "2",
        "--retriever-adapter",
        path(&out.join("retriever")),
        "--generator",
        "default",
        "--generator-adapter",
        path(&out.join("generator")),
        "--max-new-tokens",
        "8",
        "--max-passage-tokens",
        "48",
        "--json",
    ]);
    assert!(eval.status.success(), "{}", text(&eval));
    let report: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    let rows = report["generation"].as_array().unwrap();
    // Base generator with the base and the tuned retriever, then the tuned generator with the tuned
    // one; each with the best passage alone and with the top 3 in the prompt.
    let pairs: Vec<(String, String, u64)> = rows
        .iter()
        .map(|r| {
            let name = |key: &str| r[key].as_str().unwrap().to_owned();
            (name("retriever"), name("generator"), r["passages"].as_u64().unwrap())
        })
        .collect();
    let expected: Vec<(String, String, u64)> = [("base", "base"), ("tuned", "base"), ("tuned", "tuned")]
        .into_iter()
        .flat_map(|(r, g)| [1, 3].map(|n| (r.to_owned(), g.to_owned(), n)))
        .collect();
    assert_eq!(pairs, expected);
    for row in rows {
        assert_eq!(row["questions"], 2);
        assert!((0.0..=1.0).contains(&row["f1"].as_f64().unwrap()));
    }
    assert!(report["generator"]["exact_match"].is_number());
}

/// Hard negatives from a corpus file, mined again every 2 steps by the retriever being trained:
/// the log says which steps followed a refresh, the run folder keeps the latest negatives with
/// their step (none of them a question's own passage), and the run resumes from its checkpoint.
#[test]
fn retriever_mode_mines_refreshed_hard_negatives_from_a_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let data = fixture();
    // The corpus: the fixture's passages (read back from its CSV) and two others.
    let mut reader = csv::Reader::from_path(&data).unwrap();
    let mut passages: Vec<String> = reader.records().map(|r| r.unwrap()[0].to_owned()).collect();
    passages.extend(["The Eiffel Tower is in Paris.".to_owned(), "Mount Everest is in Nepal.".to_owned()]);
    let corpus = dir.path().join("corpus.jsonl");
    let lines: String = passages.iter().map(|p| serde_json::json!({ "text": p }).to_string() + "\n").collect();
    std::fs::write(&corpus, lines).unwrap();
    let output = attune(&[
        "train",
        "--data",
        path(&data),
        "--out",
        path(&out),
        "--mode",
        "retriever",
        "--batch-size",
        "4",
        "--max-passage-tokens",
        "64",
        "--max-steps",
        "5",
        "--checkpoint-every",
        "2",
        "--corpus",
        path(&corpus),
        "--hard-negatives",
        "2",
        "--refresh-negatives-every",
        "2",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains(&format!("corpus of {}", passages.len())), "{}", text(&output));
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    let refreshed: Vec<u64> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|p| p["refresh_seconds"].as_f64().is_some_and(|s| s > 0.0))
        .map(|p| p["step"].as_u64().unwrap())
        .collect();
    assert_eq!(refreshed, vec![3, 5], "mined again after steps 2 and 4");
    let mined: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("hard_negatives.json")).unwrap()).unwrap();
    assert_eq!(mined["step"], 4);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["corpus"].as_str(), Some(path(&corpus)), "the corpus is part of the run's settings");
    let negatives = mined["negatives"].as_array().unwrap();
    assert!(!negatives.is_empty());
    for list in negatives {
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.iter().all(|n| passages.contains(&n.as_str().unwrap().to_owned())));
    }
    let resumed = attune(&["train", "--resume", path(&out.join("checkpoints/step-000004"))]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(text(&resumed).contains("done: 5 steps"), "{}", text(&resumed));
}

#[test]
fn bad_input_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = fixture();
    let out = dir.path().join("x");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["train", "--data", "/nonexistent.csv", "--out", path(&out)], "/nonexistent.csv"),
        (vec!["train", "--data", path(&data), "--out", path(&out), "--question-column", "Q"], "no column \"Q\""),
        (vec!["train", "--data", path(&data), "--out", path(&out), "--batch-size", "0"], "batch size"),
        (vec!["train", "--resume", "/nonexistent-run"], "no checkpoints"),
        (vec!["train", "--data", path(&data), "--out", path(&out), "--candidates", "corpus"], "need hard negatives"),
        (
            vec!["train", "--data", path(&data), "--out", path(&out), "--hard-negative-margin", "1.5"],
            "hard_negative_margin",
        ),
        (vec!["train", "--data", path(&data), "--out", path(&out), "--candidates", "everything"], "batch, corpus"),
        (
            vec!["train", "--data", path(&data), "--out", path(&out), "--corpus", "/nonexistent.jsonl"],
            "/nonexistent.jsonl",
        ),
        (vec!["eval", "--data", path(&data), "--split", "dev"], "unknown split"),
    ];
    for (args, expected) in cases {
        let output = attune(&args);
        assert!(!output.status.success(), "{args:?} succeeded");
        let message = String::from_utf8_lossy(&output.stderr);
        assert!(message.contains(expected), "{args:?}: {message}");
        assert!(!message.contains("panicked"), "{args:?}: {message}");
    }
}
