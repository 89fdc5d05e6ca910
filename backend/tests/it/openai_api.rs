//! The OpenAI-compatible `/v1` API over a real socket, with tiny random models standing in for
//! the default ones: the model list, a whole answer and the same answer streamed (role and
//! citations first, text, finish reason, `[DONE]`), stop sequences, embeddings (floats and
//! base64), errors in OpenAI's shape, and API requests queued behind the web app's chat.

use std::time::{Duration, Instant};

use attune_shared::{ClientMessage, ServerMessage};
use base64::Engine as _;
use serde_json::{Value, json};

use super::jobs_api::{Server, call, connect, document, send, start, tiny_models, until, upload};

fn v1(server: &Server, path: &str) -> String {
    format!("http://{}/v1{path}", server.addr)
}

/// A JSON POST: the status and the JSON body.
async fn post(client: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    call(client, "POST", url, Some(body)).await
}

fn question(text: &str, extra: Value) -> Value {
    let mut body = json!({"model": "base", "messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "What are glaciers?"},
        {"role": "assistant", "content": "Slow rivers of ice."},
        {"role": "user", "content": text}
    ], "max_tokens": 16});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

/// The `data:` payloads of a server-sent event stream, in order.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|line| line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")))
        .map(|d| d.trim().to_owned())
        .collect()
}

/// OpenAI's error shape: `error.message`, `error.type`, `error.code`.
fn assert_openai_error(body: &Value, kind: &str, code: &str) {
    let error = &body["error"];
    assert_eq!(error["type"], kind, "{body}");
    assert_eq!(error["code"], code, "{body}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_clients_get_answers_streams_embeddings_and_errors_in_their_shape() {
    let dir = tempfile::tempdir().unwrap();
    let models = tiny_models(dir.path());
    let data = dir.path().join("data");
    let server = start(&data, &models).await;
    let client = reqwest::Client::new();

    let models_list: Value = client.get(v1(&server, "/models")).send().await.unwrap().json().await.unwrap();
    assert_eq!(models_list["object"], "list");
    assert_eq!(models_list["data"][0]["id"], "base", "{models_list}");

    // Before any document: a clear error, not a hang.
    let (status, body) = post(&client, &v1(&server, "/chat/completions"), question("Hi?", json!({}))).await;
    assert_eq!(status, 409, "{body}");
    assert_openai_error(&body, "invalid_request_error", "no_passages");
    let (status, body) = upload(&client, &server.url("/documents"), "earth.txt", document()).await;
    assert_eq!(status, 201, "{body}");

    // A whole answer, greedy.
    let ask = question("How do glaciers change?", json!({"attune": {"top_k": 3}}));
    let (status, whole) = post(&client, &v1(&server, "/chat/completions"), ask.clone()).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    assert!(whole["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &whole["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let text = choice["message"]["content"].as_str().unwrap().to_owned();
    assert!(!text.is_empty());
    let usage = &whole["usage"];
    let completion_tokens = usage["completion_tokens"].as_u64().unwrap();
    assert!((1..=16).contains(&completion_tokens), "{usage}");
    assert!(usage["prompt_tokens"].as_u64() > Some(10), "the prompt holds the passage: {usage}");
    assert_eq!(usage["total_tokens"].as_u64(), Some(usage["prompt_tokens"].as_u64().unwrap() + completion_tokens));
    let finish = choice["finish_reason"].as_str().unwrap();
    assert_eq!(finish == "length", completion_tokens == 16, "{whole}");
    let citations = whole["attune"]["citations"].as_array().unwrap();
    assert_eq!(citations.len(), 3, "{whole}");
    assert!(citations.iter().all(|c| c["passage_id"].is_i64() && c["document"] == "earth.txt"), "{citations:?}");

    // The same question streamed: the same text, in OpenAI's chunk order.
    let mut streamed_ask = ask.clone();
    streamed_ask["stream"] = json!(true);
    let response = client.post(v1(&server, "/chat/completions")).json(&streamed_ask).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let events = sse_data(&response.text().await.unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["attune"]["citations"].as_array().map(Vec::len), Some(3));
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], finish);
    let middle = &chunks[1..chunks.len() - 1];
    assert!(middle.iter().all(|c| c["choices"][0]["finish_reason"].is_null()));
    let joined: String = middle.iter().map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap()).collect();
    assert_eq!(joined, text, "streamed and whole answers are the same greedy text");

    // A stop sequence ends the answer before it.
    if let Some((cut, _)) = text.char_indices().nth(text.chars().count() / 2).filter(|(i, _)| *i > 0) {
        let stop: String = text[cut..].chars().take(3).collect();
        let expected = &text[..text.find(&stop).unwrap()];
        let (status, stopped) = post(
            &client,
            &v1(&server, "/chat/completions"),
            question("How do glaciers change?", json!({"attune": {"top_k": 3}, "stop": [stop.clone()]})),
        )
        .await;
        assert_eq!(status, 200, "{stopped}");
        assert_eq!(stopped["choices"][0]["message"]["content"], expected, "stop {stop:?} in {text:?}");
        assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    }

    // Embeddings: one normalised row per input; base64 is the same floats, little-endian.
    let inputs = json!({"model": "base", "input": ["glaciers", "How do rivers form?"]});
    let (status, floats) = post(&client, &v1(&server, "/embeddings"), inputs.clone()).await;
    assert_eq!(status, 200, "{floats}");
    assert_eq!(floats["object"], "list");
    let rows: Vec<Vec<f32>> = floats["data"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["index"], i);
            d["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
        })
        .collect();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    assert_ne!(rows[0], rows[1]);
    assert!(floats["usage"]["prompt_tokens"].as_u64() > Some(4), "{floats}");
    let mut b64 = inputs.clone();
    b64["encoding_format"] = json!("base64");
    let (_, encoded) = post(&client, &v1(&server, "/embeddings"), b64).await;
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(encoded["data"][1]["embedding"].as_str().unwrap()).unwrap();
    let decoded: Vec<f32> = bytes.chunks(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    assert_eq!(decoded, rows[1]);

    // Errors in OpenAI's shape.
    let mut unknown = ask.clone();
    unknown["model"] = json!("run:404");
    let (status, body) = post(&client, &v1(&server, "/chat/completions"), unknown).await;
    assert_eq!(status, 404, "{body}");
    assert_openai_error(&body, "not_found_error", "not_found");
    let ends_with_assistant =
        json!({"model": "base", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]});
    let (status, body) = post(&client, &v1(&server, "/chat/completions"), ends_with_assistant).await;
    assert_eq!(status, 422, "{body}");
    assert_openai_error(&body, "invalid_request_error", "bad_messages");
    let (status, body) =
        post(&client, &v1(&server, "/chat/completions"), question("Hi?", json!({"temperature": 7}))).await;
    assert_eq!(status, 422, "{body}");
    assert_openai_error(&body, "invalid_request_error", "bad_options");
    let sparse = question("Hi?", json!({"attune": {"retrieval": "sparse"}}));
    let (status, body) = post(&client, &v1(&server, "/chat/completions"), sparse).await;
    assert!((400..500).contains(&status), "{status} {body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("sparse")), "{body}");
    let lexical = question("Tell me about volcanoes.", json!({"attune": {"retrieval": "bm25", "top_k": 1}}));
    let (status, body) = post(&client, &v1(&server, "/chat/completions"), lexical).await;
    assert_eq!(status, 200, "{body}");
    let cited = body["attune"]["citations"][0]["text"].as_str().unwrap_or_default();
    assert!(cited.contains("volcanoes"), "BM25 cites a passage with the rare word: {body}");
    let (status, body) = post(&client, &v1(&server, "/chat/completions"), question("Hi?", json!({"n": 2}))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("unsupported_n")), "{body}");
    let (status, body) = post(&client, &v1(&server, "/embeddings"), json!({"model": "base", "input": []})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("bad_input")), "{body}");
    let response = client
        .post(v1(&server, "/chat/completions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_openai_error(&response.json().await.unwrap(), "invalid_request_error", "malformed_json");
    let response = client.get(v1(&server, "/completions")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    // Another site's page cannot call it (the same Origin rule as /api).
    let response = client
        .post(v1(&server, "/chat/completions"))
        .header("origin", "https://elsewhere.example")
        .json(&ask)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    // API traffic queues behind the web app's chat: with three long API answers queued, a
    // question from the chat page is answered before the last of them.
    let mut socket = connect(&server).await;
    let long =
        question("Tell me everything about rivers.", json!({"max_tokens": 500, "attune": {"repetition_penalty": 2.0}}));
    let started = Instant::now();
    let api: Vec<_> = (0..3)
        .map(|_| {
            let (client, url, body) = (client.clone(), v1(&server, "/chat/completions"), long.clone());
            tokio::spawn(async move {
                let (status, body) = post(&client, &url, body).await;
                assert_eq!(status, 200, "{body}");
                started.elapsed()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(
        &mut socket,
        ClientMessage::ChatAsk {
            chat_id: "page".into(),
            request_id: 1,
            model: "base".into(),
            question: "Do glaciers move?".into(),
            top_k: Some(3),
            options: attune_shared::ChatOptions { max_tokens: 4, ..Default::default() },
        },
    )
    .await;
    let seen =
        until(&mut socket, |m| matches!(m, ServerMessage::ChatDone { .. } | ServerMessage::ChatError { .. })).await;
    assert!(matches!(seen.last(), Some(ServerMessage::ChatDone { .. })), "{:?}", seen.last());
    let page_answered = started.elapsed();
    let mut api_done = Vec::new();
    for task in api {
        api_done.push(task.await.unwrap());
    }
    let last_api = api_done.iter().max().unwrap();
    assert!(page_answered < *last_api, "the page waited {page_answered:?}; API answers finished at {api_done:?}");
    drop(socket);
    server.stop().await;
}
