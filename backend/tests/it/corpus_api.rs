//! The corpus API end to end through `app(state)`: uploads of every format and every bad input,
//! duplicate documents, passages, triples (paging, filters, search, optimistic concurrency with
//! history, bulk actions), export → import round trip, deleting a document with triples, and a
//! synthesis run against a local stand-in for an OpenAI-compatible server (which fails its first
//! request, to exercise the retries). Needs the default retriever's tokenizer (`make models`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use attune::serve::{AppState, ServeConfig, app};

use super::common::{TestApp, call, get, workspace};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(workspace().join("backend/tests/fixtures").join(name)).unwrap()
}

async fn test_app(max_upload_bytes: u64) -> TestApp {
    let dirs = tempfile::tempdir().unwrap();
    let models = workspace().join("models");
    assert!(models.join("all-MiniLM-L6-v2/tokenizer.json").is_file(), "run `make models`");
    let mut config = ServeConfig::new(dirs.path().join("data"), models, dirs.path().join("dist"));
    config.max_upload_bytes = max_upload_bytes;
    let state = AppState::open(config).await.unwrap();
    TestApp { router: app(state), _dirs: dirs }
}

fn json_request(method: &str, uri: &str, body: Value) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// A multipart/form-data request with one field per file.
fn multipart(uri: &str, files: &[(&str, &[u8])]) -> Request<Body> {
    let boundary = "attune-test-boundary";
    let mut body = Vec::new();
    for (name, bytes) in files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Request::post(uri)
        .header(header::CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"))
        .body(Body::from(body))
        .unwrap()
}

fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.len() > 10), "body: {body}");
}

const MARKDOWN: &str = "# Guide\n\nCats sleep for most of the day and groom themselves often.\n\n## Dogs\n\n\
                        Dogs were domesticated first, and some herd sheep.";

#[tokio::test]
async fn uploads_of_every_format_and_every_bad_input() {
    let app = test_app(64 * 1024).await;
    // Several files at once: each gets its outcome.
    let pdf = fixture("two_pages.pdf");
    let (status, body) = call(
        &app,
        multipart(
            "/api/v1/documents",
            &[("pets.pdf", &pdf), ("guide.md", MARKDOWN.as_bytes()), ("notes.txt", b"Plain notes about parrots.")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let files = body["files"].as_array().unwrap();
    assert!(files.iter().all(|f| f["outcome"] == "ingested"), "{body}");
    assert_eq!(files[0]["document"]["kind"], "pdf");
    assert_eq!(files[0]["document"]["pages"], 2);
    assert_eq!(files[1]["document"]["kind"], "markdown");

    // Passages keep pages (PDF) and sections (Markdown); offsets point into the text.
    let pdf_id = files[0]["document"]["id"].as_i64().unwrap();
    let (_, passages) = call(&app, get(&format!("/api/v1/documents/{pdf_id}/passages"))).await;
    let passages = passages.as_array().unwrap();
    assert!(!passages.is_empty());
    assert_eq!(passages[0]["page_start"], 1);
    assert_eq!(passages.last().unwrap()["page_end"], 2);
    assert!(passages.iter().any(|p| p["text"].as_str().unwrap().contains("Basenji")));
    let md_id = files[1]["document"]["id"].as_i64().unwrap();
    let (_, md_passages) = call(&app, get(&format!("/api/v1/documents/{md_id}/passages"))).await;
    assert_eq!(md_passages[0]["section"], "Guide");

    // The same bytes again: a duplicate, nothing stored twice.
    let (status, body) = call(&app, multipart("/api/v1/documents", &[("again.pdf", &pdf)])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["files"][0]["outcome"], "duplicate");
    assert_eq!(body["files"][0]["document"]["id"], pdf_id);
    let (_, documents) = call(&app, get("/api/v1/documents")).await;
    assert_eq!(documents.as_array().unwrap().len(), 3);

    // Each bad input alone: its own status and a message.
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        ("slides.pptx", b"PK\x03\x04".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        ("empty.txt", b"   \n".to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "empty_file"),
        ("latin1.txt", b"caf\xe9".to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "not_utf8"),
        ("scanned.pdf", fixture("scanned.pdf"), StatusCode::UNPROCESSABLE_ENTITY, "no_text_in_pdf"),
        ("broken.pdf", b"%PDF-1.4 garbage".to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "unreadable_pdf"),
        ("big.txt", "word ".repeat(20_000).into_bytes(), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
    ];
    for (name, bytes, expected, code) in cases {
        let (status, body) = call(&app, multipart("/api/v1/documents", &[(name, &bytes)])).await;
        assert_eq!(status, expected, "{name}: {body}");
        assert_error(&body, code);
    }
    let (_, body) = call(&app, get("/api/v1/documents/999")).await;
    assert_error(&body, "not_found");
    // Nothing of the failed uploads was stored.
    let (_, documents) = call(&app, get("/api/v1/documents")).await;
    assert_eq!(documents.as_array().unwrap().len(), 3);
}

fn jsonl(rows: &[(&str, &str, &str)]) -> Vec<u8> {
    rows.iter()
        .map(|(q, p, a)| json!({"question": q, "passage": p, "answer": a}).to_string() + "\n")
        .collect::<String>()
        .into_bytes()
}

#[tokio::test]
async fn triples_review_concurrency_bulk_export_and_import() {
    let app = test_app(1 << 20).await;
    let rows: Vec<(String, String, String)> = (0..12)
        .map(|i| {
            (
                format!("Question {i} about \"quotes\", commas?"),
                format!("Passage {i},\nwith a line break."),
                format!("answer {i}"),
            )
        })
        .collect();
    let refs: Vec<(&str, &str, &str)> = rows.iter().map(|(q, p, a)| (q.as_str(), p.as_str(), a.as_str())).collect();
    let (status, body) = call(&app, multipart("/api/v1/triples/import", &[("triples.jsonl", &jsonl(&refs))])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["imported"], 12);

    // Pages, counts, search.
    let (_, page) = call(&app, get("/api/v1/triples?per_page=5&page=3")).await;
    assert_eq!(page["total"], 12);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["counts"]["pending"], 12);
    let (_, found) = call(&app, get("/api/v1/triples?q=Question%2011")).await;
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(found["items"][0]["origin"], "imported");

    // Optimistic concurrency: an update at the read version wins, a stale one gets 409 with the current triple.
    let triple = &page["items"][0];
    let id = triple["id"].as_i64().unwrap();
    let (status, updated) =
        call(&app, json_request("PATCH", &format!("/api/v1/triples/{id}"), json!({"version": 1, "answer": "fixed"})))
            .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["answer"], "fixed");
    let (status, conflict) = call(
        &app,
        json_request("PATCH", &format!("/api/v1/triples/{id}"), json!({"version": 1, "question": "stale edit?"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error(&conflict, "version_conflict");
    assert_eq!(conflict["current"]["answer"], "fixed");
    assert_eq!(conflict["current"]["version"], 2);
    let (status, body) =
        call(&app, json_request("PATCH", &format!("/api/v1/triples/{id}"), json!({"version": 2, "question": "  "})))
            .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (_, history) = call(&app, get(&format!("/api/v1/triples/{id}/history"))).await;
    assert_eq!(history.as_array().unwrap().len(), 1);
    assert_eq!(history[0]["answer"], "answer 10", "{history}");

    // Bulk status, then counts by status.
    let ids: Vec<i64> = found["items"].as_array().unwrap().iter().map(|t| t["id"].as_i64().unwrap()).collect();
    let mut approve: Vec<i64> = (1..=5).collect();
    approve.extend(&ids);
    let (_, result) = call(
        &app,
        json_request(
            "POST",
            "/api/v1/triples/bulk",
            json!({"action": "set_status", "ids": approve, "status": "approved"}),
        ),
    )
    .await;
    assert_eq!(result["changed"], 6);
    let (_, result) = call(
        &app,
        json_request("POST", "/api/v1/triples/bulk", json!({"action": "set_status", "ids": [6], "status": "rejected"})),
    )
    .await;
    assert_eq!(result["changed"], 1);
    let (_, approved) = call(&app, get("/api/v1/triples?status=approved")).await;
    assert_eq!(approved["total"], 6);
    assert_eq!(approved["counts"], json!({"pending": 5, "approved": 6, "rejected": 1, "filtered": 0}));
    let (_, result) =
        call(&app, json_request("POST", "/api/v1/triples/bulk", json!({"action": "delete", "ids": [7, 8, 999]}))).await;
    assert_eq!(result["changed"], 2);

    // Export (approved only by default) → import elsewhere → the same triples.
    for format in ["csv", "jsonl"] {
        let response =
            app.router.clone().oneshot(get(&format!("/api/v1/triples/export?format={format}"))).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let exported = response.into_body().collect().await.unwrap().to_bytes().to_vec();
        if format == "csv" {
            // DALM's columns first, then the review's.
            assert!(
                exported.starts_with(b"Abstract,Question,Answer,id,status,origin,document,page_start,page_end\n"),
                "{}",
                String::from_utf8_lossy(&exported)
            );
        }
        let other = test_app(1 << 20).await;
        let (status, body) =
            call(&other, multipart("/api/v1/triples/import", &[(&format!("t.{format}"), &exported)])).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["imported"], 6);
        let (_, original) = call(&app, get("/api/v1/triples?status=approved&per_page=100")).await;
        let (_, copy) = call(&other, get("/api/v1/triples?per_page=100")).await;
        let fields = |page: &Value| -> Vec<(String, String, String)> {
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| (t["question"].to_string(), t["passage"].to_string(), t["answer"].to_string()))
                .collect()
        };
        assert_eq!(fields(&original), fields(&copy), "{format} round trip");
    }
    let (status, body) = call(&app, get("/api/v1/triples/export?format=xml")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) = call(&app, multipart("/api/v1/triples/import", &[("t.xlsx", b"nope")])).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

/// How the stand-in LLM server behaves.
#[derive(Clone, Default)]
struct StandIn {
    calls: Arc<AtomicUsize>,
    /// Requests from this one on fail with 400 (not retried); 0: never.
    fail_from: Arc<AtomicUsize>,
    /// Milliseconds each reply takes.
    delay_ms: u64,
    /// The reply to question prompts, in place of the cat questions.
    questions: Option<&'static str>,
}

/// A stand-in OpenAI-compatible server: questions for question prompts, answers taken from the
/// passage for answer prompts; its first request fails with 503.
async fn stand_in_llm() -> (String, Arc<AtomicUsize>) {
    let stand_in = StandIn::default();
    let calls = stand_in.calls.clone();
    (stand_in_server(stand_in).await, calls)
}

async fn stand_in_server(stand_in: StandIn) -> String {
    let router = Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let stand_in = stand_in.clone();
            async move {
                let call = stand_in.calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(stand_in.delay_ms)).await;
                if call == 0 {
                    return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"error": "warming up"})));
                }
                let fail_from = stand_in.fail_from.load(Ordering::SeqCst);
                if fail_from > 0 && call >= fail_from {
                    return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "context length exceeded"})));
                }
                assert_eq!(body["model"], "stand-in-7b");
                let prompt = body["messages"][0]["content"].as_str().unwrap_or_default();
                let judged = judge_reply(prompt);
                let content = if let Some(reply) = &judged {
                    reply.as_str()
                } else if let (true, Some(questions)) = (prompt.contains("different questions"), stand_in.questions) {
                    questions
                } else if prompt.contains("different questions") {
                    "Sure, here they are:\n1. How long does a domestic cat sleep?\n2) What do cats groom themselves with?\n\
                     3. Cats are small carnivorous mammals that people keep as pets?"
                } else if prompt.contains("How long") {
                    "Answer: about fifteen hours a day"
                } else {
                    "Rust compilers and borrow checkers"
                };
                (StatusCode::OK, axum::Json(json!({"choices": [{"message": {"role": "assistant", "content": content}}]})))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}/v1")
}

/// The stand-in judge's reply to a judge prompt: about "house N", groundedness 5, 4, 3, 5, 4 and
/// usefulness 4, and no scores for house 5.
fn judge_reply(prompt: &str) -> Option<String> {
    if !prompt.contains("Groundedness: N") {
        return None;
    }
    let house: u32 = prompt.split("house ").nth(1)?.split_whitespace().next()?.parse().ok()?;
    Some(match house {
        5 => "I cannot tell.".to_owned(),
        n => format!("Groundedness: {}\nUsefulness: 4", 5 - n % 3),
    })
}

/// Waits until the run leaves `running`/`queued` (or `until` holds), returning it.
async fn wait_for_run(app: &TestApp, run_id: i64, until: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..400 {
        let (_, run) = call(app, get(&format!("/api/v1/synth/runs/{run_id}"))).await;
        if until(&run) {
            return run;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("synthesis run {run_id} did not get there");
}

fn finished(run: &Value) -> bool {
    run["status"] != "running" && run["status"] != "queued"
}

/// A document cut into several small passages.
async fn several_passages(app: &TestApp) -> (i64, u64) {
    let (status, body) = call(
        app,
        json_request(
            "PUT",
            "/api/v1/settings",
            json!({"chunk_tokens": 16, "chunk_overlap": 0, "questions_per_passage": 3}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let text = (0..6)
        .map(|i| format!("Cats of house {i} sleep for about fifteen hours a day."))
        .collect::<Vec<_>>()
        .join("\n\n");
    let (status, body) = call(app, multipart("/api/v1/documents", &[("cats.txt", text.as_bytes())])).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let document = &body["files"][0]["document"];
    (document["id"].as_i64().unwrap(), document["passages"].as_u64().unwrap())
}

/// Saves `base_url` as the settings' OpenAI-compatible server (a run may only use that one).
async fn configure_llm(app: &TestApp, base_url: &str) {
    let (_, mut settings) = call(app, get("/api/v1/settings")).await;
    settings["llm_base_url"] = json!(base_url);
    settings["llm_model"] = json!("stand-in-7b");
    let (status, body) = call(app, json_request("PUT", "/api/v1/settings", settings)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A run with the text filters only: the stand-in asks every passage the same questions, which
/// the near-duplicate filter would drop after the first passage.
async fn start_run(app: &TestApp, document: i64, base_url: &str) -> i64 {
    start_run_with(app, document, base_url, json!({"round_trip_top_k": 0, "max_question_similarity": 1.0})).await
}

async fn start_run_with(app: &TestApp, document: i64, base_url: &str, filters: Value) -> i64 {
    configure_llm(app, base_url).await;
    let (status, body) = call(
        app,
        json_request(
            "POST",
            "/api/v1/synth/runs",
            json!({"document_id": document, "llm": {"type": "open_ai", "base_url": base_url, "model": "stand-in-7b"},
                   "filters": filters}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["id"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn questions_another_passage_answers_and_near_duplicates_are_dropped_before_their_answers() {
    let app = test_app(1 << 20).await;
    let mut documents = Vec::new();
    for (name, text) in [
        ("cats.txt", "Cats sleep about fifteen hours a day and groom themselves often with their tongues."),
        ("ships.txt", "The old ship sailed north through the winter storms until it reached the harbour of Oslo."),
        ("bread.txt", "Bread is baked from flour, water, yeast and salt in a very hot oven."),
    ] {
        let (status, body) = call(&app, multipart("/api/v1/documents", &[(name, text.as_bytes())])).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        documents.push(body["files"][0]["document"]["id"].as_i64().unwrap());
    }
    let stand_in = StandIn {
        questions: Some(
            "1. How long do cats sleep each day?\n2. How long do cats sleep every day?\n\
             3. Which harbour did the old ship reach?",
        ),
        ..StandIn::default()
    };
    let calls = stand_in.calls.clone();
    let base_url = stand_in_server(stand_in).await;
    // The defaults but a round trip to the top 1: with three passages the top 3 holds them all.
    let run_id = start_run_with(&app, documents[0], &base_url, json!({"round_trip_top_k": 1})).await;
    let run = wait_for_run(&app, run_id, finished).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let report = &run["report"];
    assert_eq!(report["kept"], 1, "{report}");
    assert_eq!(report["filtered"]["near_duplicate"], 1, "{report}");
    assert_eq!(report["filtered"]["not_retrieved"], 1, "{report}");
    // The 503, the questions, and one answer: the dropped questions were never answered.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let (_, dropped) = call(&app, get(&format!("/api/v1/triples?status=filtered&document_id={}", documents[0]))).await;
    let reason = |question: &str| {
        dropped["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["question"] == question)
            .map(|t| t["filter_reason"].clone())
    };
    assert_eq!(reason("How long do cats sleep every day?"), Some(json!("nearly the same question was kept already")));
    assert_eq!(
        reason("Which harbour did the old ship reach?"),
        Some(json!("the base retriever does not find its passage among the top results"))
    );
    // A second run finds the kept question stored: asked again in other words, it is a near-duplicate.
    let stand_in = StandIn { questions: Some("1. How long do cats sleep each day, roughly?"), ..StandIn::default() };
    let base_url = stand_in_server(stand_in).await;
    let again = start_run_with(&app, documents[0], &base_url, json!({})).await;
    let again = wait_for_run(&app, again, finished).await;
    assert_eq!(again["report"]["filtered"]["near_duplicate"], 1, "{again}");
    assert_eq!(again["report"]["kept"], 0, "{again}");
    // Thresholds out of range are refused.
    let (status, body) = call(
        &app,
        json_request(
            "POST",
            "/api/v1/synth/runs",
            json!({"document_id": documents[0], "filters": {"max_question_similarity": 1.5}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_body", "{body}");
}

async fn triples_per_passage(app: &TestApp, document: i64) -> Vec<u64> {
    let (_, passages) = call(app, get(&format!("/api/v1/documents/{document}/passages"))).await;
    let (_, triples) = call(app, get(&format!("/api/v1/triples?document_id={document}&per_page=500"))).await;
    passages
        .as_array()
        .unwrap()
        .iter()
        .map(|p| triples["items"].as_array().unwrap().iter().filter(|t| t["passage_id"] == p["id"]).count() as u64)
        .collect()
}

/// Before, any URL in the request received the passages (and the API key).
#[tokio::test]
async fn a_run_may_only_use_the_configured_llm_server() {
    let app = test_app(1 << 20).await;
    let (document, _) = several_passages(&app).await;
    let request = |url: &str| {
        json_request(
            "POST",
            "/api/v1/synth/runs",
            json!({"document_id": document, "llm": {"type": "open_ai", "base_url": url, "model": "m"}}),
        )
    };
    let (status, body) = call(&app, request("http://attacker.example/v1")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "llm_server_not_configured");
    configure_llm(&app, "http://127.0.0.1:9/v1").await;
    let (status, body) = call(&app, request("http://attacker.example/v1")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = call(&app, request("http://127.0.0.1:9/v1")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_resumes_where_it_stopped() {
    let app = test_app(1 << 20).await;
    let (document, passages) = several_passages(&app).await;
    assert!(passages >= 4, "{passages}");
    // The 503, then two passages of 4 calls each (questions, three answers), then every request fails.
    let stand_in = StandIn { fail_from: Arc::new(AtomicUsize::new(9)), ..StandIn::default() };
    let base_url = stand_in_server(stand_in.clone()).await;
    let run_id = start_run(&app, document, &base_url).await;
    let run = wait_for_run(&app, run_id, finished).await;
    assert_eq!(run["report"]["passages_done"], 2, "{run}");
    assert_eq!(run["report"]["failed_passages"], passages - 2, "{run}");
    // The status is the client's to see; the server's own words stay in the log.
    let error = run["error"].as_str().unwrap();
    assert!(error.contains("HTTP 400") && !error.contains("context length exceeded"), "{run}");

    stand_in.fail_from.store(0, Ordering::SeqCst);
    // Eight resumes at once: one starts the run, the others are told it is running (before, each
    // passed the check before any had registered, and the run ran several times at once).
    let resumes = (0..8).map(|_| {
        let router = app.router.clone();
        tokio::spawn(async move {
            let request = json_request("POST", &format!("/api/v1/synth/runs/{run_id}/resume"), json!({}));
            call_router(&router, request).await.0
        })
    });
    let mut statuses = Vec::new();
    for resume in resumes.collect::<Vec<_>>() {
        statuses.push(resume.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::ACCEPTED).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| matches!(*s, StatusCode::ACCEPTED | StatusCode::CONFLICT)), "{statuses:?}");
    let run = wait_for_run(&app, run_id, |r| finished(r) && r["report"]["passages_done"] == passages).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    // Done passages were skipped: one kept triple per passage, none twice.
    assert_eq!(triples_per_passage(&app, document).await, vec![1; passages as usize]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_cancelled_between_passages_and_progress_reaches_the_websocket() {
    use futures_util::StreamExt;
    let dirs = tempfile::tempdir().unwrap();
    let config = ServeConfig::new(dirs.path().join("data"), workspace().join("models"), dirs.path().join("dist"));
    let state = AppState::open(config).await.unwrap();
    let app = TestApp { router: app(state.clone()), _dirs: dirs };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = attune::serve::app(state);
    tokio::spawn(async move { axum::serve(listener, served).await.unwrap() });
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.unwrap();
    socket.next().await.unwrap().unwrap(); // hello

    let (document, passages) = several_passages(&app).await;
    let base_url = stand_in_server(StandIn { delay_ms: 40, ..StandIn::default() }).await;
    let run_id = start_run(&app, document, &base_url).await;
    wait_for_run(&app, run_id, |r| r["report"]["passages_done"].as_u64().unwrap_or(0) >= 1).await;
    let (status, body) =
        call(&app, json_request("POST", &format!("/api/v1/synth/runs/{run_id}/cancel"), json!({}))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let run = wait_for_run(&app, run_id, finished).await;
    assert_eq!(run["status"], "cancelled", "{run}");
    let done = run["report"]["passages_done"].as_u64().unwrap();
    assert!(done >= 1 && done < passages, "{run}");

    // The WebSocket saw the run start, progress with an ETA, and stop.
    let mut seen = Vec::new();
    while let Ok(Some(Ok(message))) = tokio::time::timeout(std::time::Duration::from_millis(500), socket.next()).await {
        let message: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
        if message["type"] == "synth_progress" {
            seen.push(message);
        }
    }
    // Queued first (its LLM may be busy with another run), then running.
    assert_eq!(seen.first().unwrap()["run"]["status"], "queued");
    assert!(seen.iter().any(|m| m["run"]["status"] == "running"), "{seen:?}");
    assert!(
        seen.iter().any(|m| m["eta_seconds"].as_f64().is_some() && m["run"]["report"]["passages_done"] == 1),
        "{seen:?}"
    );
    assert_eq!(seen.last().unwrap()["run"]["status"], "cancelled");

    // Resuming finishes the rest.
    let (status, _) = call(&app, json_request("POST", &format!("/api/v1/synth/runs/{run_id}/resume"), json!({}))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let run = wait_for_run(&app, run_id, |r| finished(r) && r["report"]["passages_done"] == passages).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(triples_per_passage(&app, document).await, vec![1; passages as usize]);
}

#[tokio::test]
async fn runs_left_running_by_a_stopped_server_are_interrupted() {
    let dirs = tempfile::tempdir().unwrap();
    let config = ServeConfig::new(dirs.path().join("data"), workspace().join("models"), dirs.path().join("dist"));
    let state = AppState::open(config.clone()).await.unwrap();
    let run_config = attune::store::corpus::SynthRunConfig {
        llm: attune_shared::LlmChoice::Local,
        model: "m".into(),
        questions_per_passage: 3,
        prompts: attune::synth::prompt::defaults(),
        document_id: None,
        filters: attune_shared::FilterSettings::default(),
        answers: attune_shared::AnswerStyle::Written,
        judge: None,
    };
    let run = state.store().create_synth_run(&run_config, &[]).await.unwrap();
    state.store().set_synth_status(run.id, attune_shared::JobStatus::Running, None).await.unwrap();
    state.store().close().await;
    drop(state);
    let app = TestApp { router: app(AppState::open(config).await.unwrap()), _dirs: dirs };
    let (_, run) = call(&app, get(&format!("/api/v1/synth/runs/{}", run.id))).await;
    assert_eq!(run["status"], "interrupted", "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthesis_with_an_openai_compatible_server_then_documents_with_triples() {
    let app = test_app(1 << 20).await;
    let (status, body) = call(&app, multipart("/api/v1/documents", &[("pets.pdf", &fixture("two_pages.pdf"))])).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let document = body["files"][0]["document"]["id"].as_i64().unwrap();
    let (base_url, calls) = stand_in_llm().await;
    let run_id = start_run(&app, document, &base_url).await;
    let run = wait_for_run(&app, run_id, finished).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let report = &run["report"];
    // Per passage: 3 questions; the copied one is filtered, one answer is ungrounded, one is kept.
    let passages = report["passages_done"].as_u64().unwrap();
    assert!(passages >= 1);
    assert_eq!(report["kept"], passages, "{report}");
    assert_eq!(report["filtered"]["copies_passage"], passages, "{report}");
    assert_eq!(report["filtered"]["ungrounded"], passages, "{report}");
    assert!(calls.load(Ordering::SeqCst) > 1 + 3 * passages as usize - 1, "the 503 was retried");

    let (_, triples) = call(&app, get(&format!("/api/v1/triples?document_id={document}"))).await;
    let first = &triples["items"][0];
    assert_eq!(first["question"], "How long does a domestic cat sleep?");
    assert_eq!(first["answer"], "about fifteen hours a day");
    assert_eq!(first["origin"], "synthetic");
    assert_eq!(first["model"], "stand-in-7b");
    assert!(first["prompt"].as_str().unwrap().contains("different questions"));
    assert_eq!(first["document"], "pets.pdf");
    assert_eq!(run["document_id"], document, "the run remembers its document");

    // What the filters dropped is kept aside with why: not under review, not exported, not in
    // "all"; a person can keep one (back to pending) once it has an answer.
    let (_, dropped) = call(&app, get(&format!("/api/v1/triples?status=filtered&document_id={document}"))).await;
    assert_eq!(dropped["total"], 2 * passages, "{dropped}");
    assert_eq!(triples["counts"]["filtered"], 2 * passages, "{triples}");
    assert_eq!(triples["total"], passages, "\"all\" is what is under review");
    let items = dropped["items"].as_array().unwrap();
    let ungrounded = items.iter().find(|t| t["answer"] == "Rust compilers and borrow checkers").expect("{dropped}");
    assert_eq!(ungrounded["filter_reason"], "the answer's words are not in the passage");
    let copied = items.iter().find(|t| t["answer"] == "").expect("the copied question, never answered");
    assert_eq!(copied["filter_reason"], "copies a long span of the passage");
    // "Dropped because …": the reasons with their counts, and the listing by one of them.
    let reasons: Vec<(String, u64)> = dropped["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["reason"].as_str().unwrap().to_owned(), r["count"].as_u64().unwrap()))
        .collect();
    let mut expected = vec![
        ("copies a long span of the passage".to_owned(), passages),
        ("the answer's words are not in the passage".to_owned(), passages),
    ];
    expected.sort();
    assert_eq!(reasons, expected, "{dropped}");
    let url = format!(
        "/api/v1/triples?status=filtered&document_id={document}&reason=copies%20a%20long%20span%20of%20the%20passage"
    );
    let (_, by_reason) = call(&app, get(&url)).await;
    assert_eq!(by_reason["total"], passages, "{by_reason}");
    assert!(by_reason["items"].as_array().unwrap().iter().all(|t| t["filter_reason"] == copied["filter_reason"]));
    assert_eq!(by_reason["reasons"], dropped["reasons"], "the choice stays whole while one is picked");
    let (status, _) = call(&app, get(&format!("/api/v1/triples?reason={}", "x".repeat(201)))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "an overlong reason is refused");
    let keep = |t: &Value| {
        json_request(
            "PATCH",
            &format!("/api/v1/triples/{}", t["id"]),
            json!({"version": t["version"], "status": "pending"}),
        )
    };
    let (status, body) = call(&app, keep(copied)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "an answerless candidate is not kept: {body}");
    let bulk = json!({"action": "set_status", "ids": [copied["id"]], "status": "approved"});
    let (_, body) = call(&app, json_request("POST", "/api/v1/triples/bulk", bulk)).await;
    assert_eq!(body["changed"], 0, "not by a bulk approval either: {body}");
    let (status, body) = call(&app, keep(ungrounded)).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("pending")), "{body}");
    let response = app.router.clone().oneshot(get("/api/v1/triples/export?format=jsonl&status=all")).await.unwrap();
    let exported = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert_eq!(exported.lines().count() as u64, passages + 1, "all under review, the rescued one too");
    assert!(!exported.contains("\"filtered\""), "{exported}");

    // A table of contents is skipped, never sent to the LLM.
    let contents = "Contents\n1 Introduction . . . . . . . . 3\n2 Survival curves . . . . . . . 7\n\
                    2.1 Kaplan-Meier . . . . . . . . 9\n3 Cox models . . . . . . . . . 57\n";
    let (_, body) = call(&app, multipart("/api/v1/documents", &[("contents.txt", contents.as_bytes())])).await;
    let toc = body["files"][0]["document"]["id"].as_i64().unwrap();
    let (_, listed) = call(&app, get(&format!("/api/v1/documents/{toc}/passages"))).await;
    assert_eq!(listed[0]["reference_matter"], "table of contents", "{listed}");
    let before = calls.load(Ordering::SeqCst);
    let toc_run = start_run(&app, toc, &base_url).await;
    let toc_run = wait_for_run(&app, toc_run, finished).await;
    assert_eq!(toc_run["report"]["skipped_passages"], 1, "{toc_run}");
    assert_eq!(calls.load(Ordering::SeqCst), before, "the LLM was not asked about a table of contents");

    // A finished run cannot be resumed or cancelled.
    let (status, body) =
        call(&app, json_request("POST", &format!("/api/v1/synth/runs/{run_id}/cancel"), json!({}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // Deleting the document asks what to do with its triples.
    let (status, body) =
        call(&app, Request::delete(format!("/api/v1/documents/{document}")).body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error(&body, "document_has_triples");
    let (status, _) =
        call(&app, Request::delete(format!("/api/v1/documents/{document}?triples=keep")).body(Body::empty()).unwrap())
            .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, kept) = call(&app, get("/api/v1/triples")).await;
    assert_eq!(kept["total"], passages + 1, "triples stay, with their passage text (the rescued one too)");
    assert!(kept["items"][0]["passage"].as_str().unwrap().contains("cat"));
    assert_eq!(kept["items"][0]["document_id"], Value::Null);
}

/// Concurrent edits of one triple and bulk changes of all: each edit is 200 or 409, never 500
/// (a deferred transaction that upgraded to a write lock met SQLITE_BUSY, which no timeout waits out).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_edits_answer_200_or_409_never_500() {
    let app = test_app(1 << 20).await;
    let rows: Vec<(String, String, String)> =
        (0..30).map(|i| (format!("Question {i}?"), format!("Passage {i}."), format!("answer {i}"))).collect();
    let refs: Vec<(&str, &str, &str)> = rows.iter().map(|(q, p, a)| (q.as_str(), p.as_str(), a.as_str())).collect();
    let (status, body) = call(&app, multipart("/api/v1/triples/import", &[("triples.jsonl", &jsonl(&refs))])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, page) = call(&app, get("/api/v1/triples?per_page=100")).await;
    let ids: Vec<i64> = page["items"].as_array().unwrap().iter().map(|t| t["id"].as_i64().unwrap()).collect();
    for round in 0..5 {
        let mut tasks = Vec::new();
        for (n, &id) in ids.iter().enumerate() {
            let router = app.router.clone();
            tasks.push(tokio::spawn(async move {
                let (_, triple) = call_router(&router, get(&format!("/api/v1/triples/{id}"))).await;
                let version = triple["version"].as_i64().unwrap();
                let edit = json!({"version": version, "answer": format!("edit {round} {n}")});
                let mut statuses = Vec::new();
                for _ in 0..3 {
                    let request = json_request("PATCH", &format!("/api/v1/triples/{id}"), edit.clone());
                    statuses.push(call_router(&router, request).await.0);
                }
                statuses
            }));
            let router = app.router.clone();
            let ids = ids.clone();
            let status = if n % 2 == 0 { "approved" } else { "pending" };
            tasks.push(tokio::spawn(async move {
                let request = json_request(
                    "POST",
                    "/api/v1/triples/bulk",
                    json!({"action": "set_status", "ids": ids, "status": status}),
                );
                vec![call_router(&router, request).await.0]
            }));
        }
        for task in tasks {
            for status in task.await.unwrap() {
                assert!(matches!(status, StatusCode::OK | StatusCode::CONFLICT), "round {round}: {status}");
            }
        }
    }
}

async fn call_router(router: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Before: page 4294967295 overflowed `(page - 1) * per_page` (a panic in debug builds), 2,000
/// search words exceeded SQLite's variable limit (500), and a cell `=HYPERLINK(…)` went into the
/// CSV export as a live formula.
#[tokio::test]
async fn paging_search_and_csv_cells_are_bounded() {
    let app = test_app(1 << 20).await;
    let refs = [("=HYPERLINK(\"http://x.example\",\"click\")?", "+1 passage", "@SUM(A1)")];
    let (status, body) = call(&app, multipart("/api/v1/triples/import", &[("t.jsonl", &jsonl(&refs))])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for uri in
        ["/api/v1/triples?page=4294967295&per_page=500", "/api/v1/triples?page=0", "/api/v1/triples?per_page=501"]
    {
        let (status, body) = call(&app, get(uri)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{uri}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query");
    }
    let many = vec!["w"; 2000].join("%20");
    let (status, body) = call(&app, get(&format!("/api/v1/triples?q={many}"))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) = call(&app, get("/api/v1/triples?page=1000000&q=a%20b")).await;
    assert_eq!(status, StatusCode::OK);

    let response = app.router.clone().oneshot(get("/api/v1/triples/export?format=csv&status=pending")).await.unwrap();
    let csv = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let cells: Vec<String> =
        csv::Reader::from_reader(csv.as_bytes()).records().next().unwrap().unwrap().iter().map(str::to_owned).collect();
    // The text cells (passage, question, answer) are neutralised; id, status and origin follow.
    assert!(cells[..3].iter().all(|c| c.starts_with('\'')), "{cells:?}");
    assert_eq!(cells[4..6], ["pending", "imported"], "{cells:?}");
    // And it imports back as it was.
    let (_, body) = call(&app, multipart("/api/v1/triples/import", &[("back.csv", csv.as_bytes())])).await;
    assert_eq!(body["imported"], 1, "{body}");
    let (_, page) = call(&app, get("/api/v1/triples?sort=newest&per_page=1")).await;
    assert_eq!(page["items"][0]["question"], refs[0].0);
}

/// A PDF whose one page's content stream inflates to `inflated` bytes of spaces (a few MB on disk).
fn decompression_bomb(inflated: usize) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..inflated / chunk.len() {
        encoder.write_all(&chunk).unwrap();
    }
    let stream = encoder.finish().unwrap();
    let mut pdf = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    let objects: Vec<Vec<u8>> = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>".to_vec(),
        [
            format!("<< /Length {} /Filter /FlateDecode >>\nstream\n", stream.len()).into_bytes(),
            stream,
            b"\nendstream".to_vec(),
        ]
        .concat(),
    ];
    for (i, body) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.extend(format!("{} 0 obj\n", i + 1).into_bytes());
        pdf.extend(body);
        pdf.extend(b"\nendobj\n");
    }
    let xref = pdf.len();
    pdf.extend(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).into_bytes());
    for offset in offsets {
        pdf.extend(format!("{offset:010} 00000 n \n").into_bytes());
    }
    pdf.extend(
        format!("trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1).into_bytes(),
    );
    pdf
}

/// Before, PDFs parsed in the server's process without limits: a 1.4 KB file found by fuzzing
/// looped forever on a blocking thread, and a bomb's stream inflated into the server's memory.
/// Now they get 422 within the limits and the server goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pdfs_get_422_and_the_server_stays_up() {
    use attune::engine::ingest::{DocumentParser, SandboxLimits};
    let dirs = tempfile::tempdir().unwrap();
    let limits = SandboxLimits { program: env!("CARGO_BIN_EXE_attune").into(), memory_bytes: 768 << 20, seconds: 5 };
    let config = ServeConfig {
        document_parser: DocumentParser::Sandboxed(limits),
        ..ServeConfig::new(dirs.path().join("data"), workspace().join("models"), dirs.path().join("dist"))
    };
    let app = TestApp { router: app(AppState::open(config).await.unwrap()), _dirs: dirs };
    let started = std::time::Instant::now();
    let (status, body) =
        call(&app, multipart("/api/v1/documents", &[("stalls.pdf", &fixture("stalls_parser.pdf"))])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("longer than 5 s"), "{body}");
    assert!(started.elapsed().as_secs() < 15, "{:?}", started.elapsed());

    let bomb = decompression_bomb(1 << 30);
    assert!(bomb.len() < 8 << 20, "{}", bomb.len());
    let (status, body) = call(&app, multipart("/api/v1/documents", &[("bomb.pdf", &bomb)])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "unreadable_pdf", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("memory"), "{body}");

    // A good PDF parses in the child as it did in process, with its pages; a scan is still a scan.
    let (status, body) =
        call(&app, multipart("/api/v1/documents", &[("two_pages.pdf", &fixture("two_pages.pdf"))])).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["files"][0]["document"]["pages"], 2, "{body}");
    let (status, body) = call(&app, multipart("/api/v1/documents", &[("scanned.pdf", &fixture("scanned.pdf"))])).await;
    assert_eq!(body["error"]["code"], "no_text_in_pdf", "{status} {body}");
    assert_eq!(call(&app, get("/api/v1/health")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_looping_prompt_template_is_refused_within_a_second() {
    let app = test_app(1 << 20).await;
    let (document, _) = several_passages(&app).await;
    let looping = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}{{ passage }}";
    let started = std::time::Instant::now();
    let (status, body) = call(
        &app,
        json_request(
            "POST",
            "/api/v1/synth/runs",
            json!({"document_id": document, "prompts": {"questions": looping, "answer": "{{ passage }} {{ question }}"}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_prompts");
    assert!(started.elapsed().as_secs_f64() < 1.0, "{:?}", started.elapsed());
}

async fn wait_for_adapt(app: &TestApp, id: i64) -> Value {
    // Synthesis, 2 training steps of the real retriever and an evaluation: well under 5 minutes.
    for _ in 0..1200 {
        let (_, job) = call(app, get(&format!("/api/v1/adapt/{id}"))).await;
        if job["status"] != "running" {
            return job;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    panic!("adapt job {id} did not end");
}

/// "Adapt automatically": questions (from the stand-in server), approval of what passed, then a
/// training run and an evaluation of base against tuned, one after the other as one job that
/// says where it stands and which jobs its stages are. Too few approved triples stop it before
/// training with why; once there are enough, resuming it goes on from its stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapt_automatically_runs_questions_training_and_evaluation_as_one_job() {
    let app = test_app(1 << 20).await;
    let (status, body) = call(&app, json_request("POST", "/api/v1/adapt", json!({}))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("no_passages")),
        "{body}"
    );
    let (document, _) = several_passages(&app).await;
    let (base_url, _) = stand_in_llm().await;
    configure_llm(&app, &base_url).await;
    for (request, code) in [
        (json!({"document_id": 999}), "not_found"),
        (json!({"limit": 0}), "invalid_body"),
        (json!({"max_steps": 0}), "invalid_hyper_parameters"),
        (json!({"mode": "sideways"}), "invalid_body"),
    ] {
        let (status, body) = call(&app, json_request("POST", "/api/v1/adapt", request.clone())).await;
        assert!(status.is_client_error(), "{request}: {status} {body}");
        assert_eq!(body["error"]["code"], code, "{request}: {body}");
    }
    let (status, job) =
        call(&app, json_request("POST", "/api/v1/adapt", json!({"document_id": document, "max_steps": 2}))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!((job["stage"].as_str(), job["request"]["mode"].as_str()), (Some("synthesis"), Some("retriever")));
    let id = job["id"].as_i64().unwrap();
    let synth_run = job["synth_run"].as_i64().expect("the synthesis run it started");

    // The stand-in asks every passage the same questions: the near-duplicate filter keeps few.
    let job = wait_for_adapt(&app, id).await;
    assert_eq!((job["status"].as_str(), job["stage"].as_str()), (Some("failed"), Some("synthesis")), "{job}");
    let approved = job["approved"].as_u64().unwrap();
    assert!(approved < 8, "{job}");
    assert!(job["message"].as_str().unwrap().contains("at least 8 are needed to train"), "{job}");
    let (_, run) = call(&app, get(&format!("/api/v1/synth/runs/{synth_run}"))).await;
    assert_eq!(run["report"]["kept"], approved, "what passed the filters was approved: {run}");
    let (_, listed) = call(&app, get(&format!("/api/v1/triples?status=approved&document_id={document}"))).await;
    assert_eq!(listed["total"], approved);

    // Enough triples written by hand, approved: resuming goes on to training and evaluation.
    let (_, passages) = call(&app, get(&format!("/api/v1/documents/{document}/passages"))).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let passage = &passages[i % passages.as_array().unwrap().len()];
        let triple = json!({"passage_id": passage["id"], "question": format!("How long do the cats of house {i} sleep?"),
                            "answer": "about fifteen hours a day"});
        let (status, body) = call(&app, json_request("POST", "/api/v1/triples", triple)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.push(body["id"].clone());
    }
    let (_, result) = call(
        &app,
        json_request("POST", "/api/v1/triples/bulk", json!({"action": "set_status", "ids": ids, "status": "approved"})),
    )
    .await;
    assert_eq!(result["changed"], 12);
    let (status, resumed) = call(&app, json_request("POST", &format!("/api/v1/adapt/{id}/resume"), json!({}))).await;
    assert_eq!((status, resumed["status"].as_str()), (StatusCode::ACCEPTED, Some("running")), "{resumed}");
    let job = wait_for_adapt(&app, id).await;
    assert_eq!((job["status"].as_str(), job["stage"].as_str()), (Some("succeeded"), Some("done")), "{job}");
    assert_eq!(job["approved"].as_u64(), Some(approved + 12), "{job}");
    let (_, run) = call(&app, get(&format!("/api/v1/runs/{}", job["run"]))).await;
    assert_eq!(
        (run["status"].as_str(), run["mode"].as_str(), run["step"].as_u64()),
        (Some("succeeded"), Some("retriever"), Some(2)),
        "{run}"
    );
    assert_eq!(run["name"], format!("adapt-{id}"));
    // In retriever mode the documents' passages give inverse cloze pairs beside the triples.
    assert_eq!(run["hyper"]["cloze_pairs"], attune_shared::ADAPT_CLOZE_PAIRS, "{run}");
    let (_, eval) = call(&app, get(&format!("/api/v1/evals/{}", job["eval"]))).await;
    assert_eq!(eval["status"], "succeeded", "{eval}");
    assert_eq!(eval["request"]["runs"], json!([job["run"]]));
    let methods = eval["report"]["methods"].as_array().unwrap();
    assert!(methods.iter().any(|m| m["method"] == "bm25"), "BM25 beside base and tuned: {eval}");
    assert_eq!(methods.len(), 5, "BM25, then dense and hybrid for base and tuned: {eval}");

    // A finished job neither resumes nor cancels; the listing has it.
    let (status, body) = call(&app, json_request("POST", &format!("/api/v1/adapt/{id}/resume"), json!({}))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("not_resumable")), "{body}");
    let (status, body) = call(&app, json_request("POST", &format!("/api/v1/adapt/{id}/cancel"), json!({}))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("not_running")), "{body}");
    let (_, listed) = call(&app, get("/api/v1/adapt")).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    let (status, _) = call(&app, get("/api/v1/adapt/77")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// LLM-as-judge: each kept triple scored by the settings' server, shown with the triple, sortable
/// best first, and approved at once when both scores reach the run's threshold; a reply without
/// scores leaves its triple pending and unscored, counted in the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judge_scores_kept_triples_and_approves_the_best() {
    let app = test_app(1 << 20).await;
    let (document, passages) = several_passages(&app).await;
    assert_eq!(passages, 6);
    let text_filters = json!({"round_trip_top_k": 0, "max_question_similarity": 1.0});
    let ask = |judge: Value| json!({"document_id": document, "llm": {"type": "local"}, "filters": text_filters.clone(), "judge": judge});
    let (status, body) = call(&app, json_request("POST", "/api/v1/synth/runs", ask(json!({})))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("judge_needs_a_server"))
    );
    let (base_url, _) = stand_in_llm().await;
    configure_llm(&app, &base_url).await;
    let (status, body) = call(&app, json_request("POST", "/api/v1/synth/runs", ask(json!({"approve_at": 9})))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_body")));

    // The built-in worked-examples template (few-shot) is not combined with custom templates.
    let (_, defaults) = call(&app, get("/api/v1/synth/prompts")).await;
    let both = json!({"document_id": document, "llm": {"type": "open_ai", "base_url": base_url, "model": "stand-in-7b"},
                      "filters": text_filters, "few_shot": true, "prompts": defaults});
    let (status, body) = call(&app, json_request("POST", "/api/v1/synth/runs", both)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_body")));
    assert!(body["error"]["message"].as_str().unwrap().contains("few_shot"), "{body}");

    let request = json!({"document_id": document, "llm": {"type": "open_ai", "base_url": base_url, "model": "stand-in-7b"},
                         "filters": text_filters, "judge": {"approve_at": 4}, "few_shot": true});
    let (status, run) = call(&app, json_request("POST", "/api/v1/synth/runs", request)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    assert_eq!(run["judge"], json!({"approve_at": 4}));
    let asked = run["prompts"]["questions"].as_str().unwrap();
    assert!(
        asked.contains("Example {{ loop.index }}") && asked != defaults["questions"],
        "the run stores the few-shot template"
    );
    assert_eq!(run["prompts"]["answer"], defaults["answer"]);
    let run = wait_for_run(&app, run["id"].as_i64().unwrap(), finished).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let report = &run["report"];
    assert_eq!((report["kept"].as_u64(), report["judged"].as_u64()), (Some(6), Some(5)), "{report}");
    assert_eq!((report["judge_approved"].as_u64(), report["judge_failed"].as_u64()), (Some(4), Some(1)), "{report}");

    let (_, page) = call(&app, get(&format!("/api/v1/triples?document_id={document}&sort=judge"))).await;
    let scored: Vec<(String, Value, String)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let house = t["passage"].as_str().unwrap().split("house ").nth(1).unwrap()[..1].to_owned();
            (house, t["judge"].clone(), t["status"].as_str().unwrap().to_owned())
        })
        .collect();
    let expected =
        [("0", 5, "approved"), ("3", 5, "approved"), ("1", 4, "approved"), ("4", 4, "approved"), ("2", 3, "pending")];
    for ((house, judge, status), (want_house, grounded, want_status)) in scored.iter().zip(expected) {
        assert_eq!((house.as_str(), status.as_str()), (want_house, want_status), "{scored:?}");
        assert_eq!(*judge, json!({"grounded": grounded, "useful": 4}), "{scored:?}");
    }
    assert_eq!(scored.len(), 6);
    assert_eq!(
        (scored[5].0.as_str(), &scored[5].1, scored[5].2.as_str()),
        ("5", &Value::Null, "pending"),
        "unscored last"
    );
    let (status, body) = call(&app, get("/api/v1/triples?sort=best")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_query")));
}
