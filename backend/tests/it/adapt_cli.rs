//! `attune adapt` end to end from the command line, with a stand-in OpenAI-compatible server for
//! synthesis and the default models for the rest: a folder of documents (one corrupt, one empty)
//! in, a trained retriever and a report out; a second call redoes nothing; a budget stops
//! synthesis at a passage boundary. Also `attune synth` with an OpenAI-compatible server.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use serde_json::{Value, json};

use super::common::workspace;

/// (a word only its passage has, the passage, the stand-in's question, its answer).
const TOPICS: [(&str, &str, &str, &str); 12] = [
    (
        "volcano",
        "The volcano near the village erupted in 1783 and covered the fields in ash. The villagers rebuilt their \
         houses of stone within ten years.",
        "When did the volcano near the village erupt?",
        "1783",
    ),
    (
        "bread",
        "Bread is baked from flour, water, yeast and salt in a hot oven.",
        "What is bread baked from?",
        "flour, water, yeast and salt",
    ),
    (
        "chess",
        "Chess is played on a board of sixty-four squares by two players.",
        "How many squares has a chess board?",
        "sixty-four squares",
    ),
    (
        "glacier",
        "The glacier retreated two kilometres up the valley during the last century.",
        "How far did the glacier retreat?",
        "two kilometres",
    ),
    (
        "violin",
        "A violin has four strings tuned in fifths and is played with a bow.",
        "How many strings has a violin?",
        "four strings",
    ),
    (
        "lighthouse",
        "The lighthouse on the cape was lit by oil lamps until 1920.",
        "What lit the lighthouse until 1920?",
        "oil lamps",
    ),
    (
        "honeybee",
        "A honeybee colony is led by a single queen that lays the eggs.",
        "Who lays the eggs in a honeybee colony?",
        "a single queen",
    ),
    (
        "telescope",
        "The telescope on the mountain has a mirror eight metres across.",
        "How wide is the telescope's mirror?",
        "eight metres across",
    ),
    (
        "coffee",
        "Coffee beans are the roasted seeds of berries from the coffee plant.",
        "What are coffee beans?",
        "the roasted seeds of berries",
    ),
    (
        "railway",
        "The railway across the desert was finished by a crew of nine hundred workers.",
        "How many workers finished the railway?",
        "nine hundred workers",
    ),
    (
        "penguin",
        "The emperor penguin keeps its egg warm on its feet through the winter.",
        "Where does the emperor penguin keep its egg?",
        "on its feet",
    ),
    (
        "marathon",
        "A marathon is a foot race of forty-two kilometres run on roads.",
        "How long is a marathon?",
        "forty-two kilometres",
    ),
];

/// Answers question prompts with the passage's question, answer prompts with its answer; counts
/// the calls, and the question prompts that show the few-shot prompt's worked examples.
async fn stand_in(delay_ms: u64) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let few_shot = Arc::new(AtomicUsize::new(0));
    let few_shot_counted = few_shot.clone();
    let router = Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let calls = counted.clone();
            let few_shot = few_shot_counted.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
                let prompt = body["messages"][0]["content"].as_str().unwrap_or_default().to_lowercase();
                let (_, _, question, answer) =
                    TOPICS.iter().find(|(word, ..)| prompt.contains(word)).copied().unwrap_or(("", "", "What?", "?"));
                let content = if prompt.contains("groundedness: n") {
                    "Groundedness: 5\nUsefulness: 4".to_owned()
                } else if prompt.contains("different questions") {
                    if prompt.contains("example 2\npassage:") && prompt.contains("now the passage to ask about") {
                        few_shot.fetch_add(1, Ordering::SeqCst);
                    }
                    format!("1. {question}")
                } else {
                    answer.to_owned()
                };
                axum::Json(json!({"choices": [{"message": {"role": "assistant", "content": content}}]}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}/v1"), calls, few_shot)
}

fn documents(dir: &Path) {
    std::fs::create_dir_all(dir.join("more")).unwrap();
    for (i, (word, passage, ..)) in TOPICS.iter().enumerate() {
        // Some in a sub-folder: folders are searched recursively.
        let folder = if i % 3 == 0 { dir.join("more") } else { dir.to_owned() };
        std::fs::write(folder.join(format!("{word}.txt")), passage).unwrap();
    }
    std::fs::write(dir.join("broken.pdf"), b"%PDF-1.4 this is not a PDF at all").unwrap();
    std::fs::write(dir.join("empty.txt"), b"").unwrap();
}

async fn adapt(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_attune"))
            .arg("adapt")
            .args(&args)
            .arg("--models-dir")
            .arg(workspace().join("models"))
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn args(docs: &Path, out: &Path, base_url: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--documents",
        docs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--llm",
        "openai",
        "--llm-base-url",
        base_url,
        "--llm-model",
        "stand-in",
        "--mode",
        "retriever",
        "--questions-per-passage",
        "1",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_in_a_tuned_retriever_and_a_report_out_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs");
    documents(&docs);
    // Four questions people asked, answers only (their passages are found by the answer), and one
    // the documents cannot answer.
    let test = dir.path().join("questions.jsonl");
    let mut lines: Vec<String> = [0, 2, 5, 9]
        .iter()
        .map(|&i| json!({"question": TOPICS[i].2.replace('?', " exactly?"), "answer": TOPICS[i].3}).to_string())
        .collect();
    lines.push(json!({"question": "Who wrote Hamlet?", "answer": "William Shakespeare"}).to_string());
    std::fs::write(&test, lines.join("\n")).unwrap();
    let (base_url, calls, _) = stand_in(0).await;
    let out = dir.path().join("run");
    let extra = ["--test", test.to_str().unwrap(), "--max-steps", "3"];
    let output = adapt(args(&docs, &out, &base_url, &extra)).await;
    assert!(output.status.success(), "{}", text(&output));
    let said = text(&output);
    assert!(said.contains("broken.pdf") && said.contains("empty.txt"), "corrupt and empty files are reported: {said}");

    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["corpus"]["documents"], 12, "{report}");
    assert_eq!(report["corpus"]["failed"].as_array().unwrap().len(), 2, "{report}");
    let synthesis = &report["synthesis"];
    assert_eq!(synthesis["passages_done"], 12, "{report}");
    // Every question finds its own passage (round trip) and none repeats another.
    assert_eq!(synthesis["kept"], 12, "{report}");
    assert_eq!(synthesis["approved"], 12, "{report}");
    // A question and an answer per passage.
    assert_eq!(calls.load(Ordering::SeqCst), 24);
    let training = &report["training"];
    assert_eq!(training["steps"], 3, "{report}");
    assert_eq!(training["mode"], "retriever");
    // The one passage of two sentences gives an inverse cloze pair beside the triples.
    assert_eq!(training["cloze_pairs"], 1, "{report}");
    assert!(out.join("train/retriever/adapter_model.safetensors").is_file());
    let evaluation = &report["evaluation"];
    assert_eq!((evaluation["questions"].as_u64(), evaluation["unmatched"].as_u64()), (Some(4), Some(1)), "{report}");
    for row in ["base", "tuned", "bm25"] {
        let mrr = evaluation["retrieval"][row]["mrr@10"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&mrr), "{row}: {report}");
    }
    assert_eq!(
        evaluation["answers"].as_object().unwrap().len(),
        2,
        "base and tuned retriever, base generator: {report}"
    );
    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(markdown.contains("## Evaluation") && markdown.contains("| bm25 |"), "{markdown}");
    assert!(markdown.contains("1 inverse cloze pairs from the passages"), "{markdown}");

    // A second call finds every stage done: no LLM call, no training.
    let again = adapt(args(&docs, &out, &base_url, &extra)).await;
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("training: done"), "{}", text(&again));
    assert_eq!(calls.load(Ordering::SeqCst), 24, "nothing was asked again");
    let second: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(second["training"], report["training"]);
    assert_eq!(second["evaluation"]["retrieval"], report["evaluation"]["retrieval"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_stops_synthesis_at_a_passage_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs");
    documents(&docs);
    // 400 ms a reply, two replies a passage: a budget of 3 s ends synthesis within the first passages.
    let (base_url, calls, _) = stand_in(400).await;
    let out = dir.path().join("run");
    let output = adapt(args(&docs, &out, &base_url, &["--budget-minutes", "0.05"])).await;
    let said = text(&output);
    assert!(!output.status.success(), "too few triples to train on: {said}");
    assert!(said.contains("the budget is spent") && said.contains("triples passed the filters"), "{said}");
    let asked = calls.load(Ordering::SeqCst);
    assert!((2..24).contains(&asked) && asked % 2 == 0, "whole passages only: {asked} calls");
    // Settings that cannot be used are refused before anything is done.
    for bad in ["0", "inf"] {
        let refused = adapt(args(&docs, &dir.path().join("other"), &base_url, &["--budget-minutes", bad])).await;
        assert!(!refused.status.success(), "{}", text(&refused));
        assert!(text(&refused).contains("--budget-minutes must be a number of minutes above 0"), "{}", text(&refused));
        assert!(!dir.path().join("other").exists(), "nothing was made");
    }
    // The budget is spent for good: a second call does not synthesise again.
    let again = adapt(args(&docs, &out, &base_url, &["--budget-minutes", "0.05"])).await;
    assert!(!again.status.success());
    assert_eq!(calls.load(Ordering::SeqCst), asked);
}

/// Before, `attune synth --llm openai` panicked at once: the HTTP client was built on an async thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synth_from_the_command_line_with_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs");
    documents(&docs);
    let data = dir.path().join("data");
    let files: Vec<String> =
        ["bread.txt", "chess.txt"].iter().map(|f| docs.join(f).to_str().unwrap().to_owned()).collect();
    let (base_url, calls, few_shot) = stand_in(0).await;
    let attune = |args: Vec<String>| {
        let data = data.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_attune"))
                .args(&args)
                .arg("--data-dir")
                .arg(&data)
                .arg("--models-dir")
                .arg(workspace().join("models"))
                .output()
                .unwrap()
        })
    };
    let ingest = attune([vec!["ingest".to_owned()], files].concat()).await.unwrap();
    assert!(ingest.status.success(), "{}", text(&ingest));
    let synth: Vec<String> = [
        "synth",
        "--llm",
        "openai",
        "--llm-base-url",
        &base_url,
        "--llm-model",
        "stand-in",
        "--questions-per-passage",
        "1",
        "--judge-approve-at",
        "4",
        "--questions-prompt",
        "few-shot",
    ]
    .map(String::from)
    .to_vec();
    let output = attune(synth).await.unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("2 passages, 2 questions, 2 kept"), "{}", text(&output));
    // Questions, answers, and the judge's scores (both at least 4: approved at once).
    assert!(
        text(&output).contains("judge: 2 scored, 2 approved by their scores, 0 left unscored"),
        "{}",
        text(&output)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    // `--questions-prompt few-shot` asked with the built-in worked examples.
    assert_eq!(few_shot.load(Ordering::SeqCst), 2);
    // A judge needs a server to ask.
    let refused = attune(["synth", "--judge"].map(String::from).to_vec()).await.unwrap();
    assert!(!refused.status.success());
    assert!(text(&refused).contains("--judge needs the server to ask"), "{}", text(&refused));
}
