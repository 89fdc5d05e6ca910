//! The OpenAI-compatible API under `/v1`, behind the same token and Host/Origin rules as `/api`:
//! `POST /v1/chat/completions` (streamed as server-sent events or whole) answers the last user
//! message with a model pair's RAG chat — the same retrieval, prompt and generation as the chat
//! page — and returns the passages it used in an extra `attune.citations` field that OpenAI
//! clients ignore; `POST /v1/embeddings` embeds with a pair's retriever; `GET /v1/models` lists
//! the pairs (`base`, `run:ID`). Requests queue on the chat thread behind the web app's chat,
//! at most `MAX_API_REQUESTS` at a time; errors use OpenAI's shape (`error.message`, `type`,
//! `code`), which is the API's own error body.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedReceiver;

use attune_shared::{ChatOptions, ChatStats, Citation, JobStatus};

use super::AppState;
use super::error::{ApiJson, AppError};
use crate::engine::chat::{ApiSlot, ChatEvent, EmbedRequest, Lane, Question};
use crate::model::retriever::TextRole;

/// The longest question, as in the web app's chat.
pub const MAX_QUESTION_CHARS: usize = 4000;
/// Messages in one request (earlier turns beyond the prompt's few are dropped anyway).
const MAX_MESSAGES: usize = 64;
/// Texts in one embedding request, and characters in one text.
const MAX_EMBED_INPUTS: usize = 256;
const MAX_EMBED_CHARS: usize = 32_000;
/// Stop sequences, as OpenAI allows.
const MAX_STOP_SEQUENCES: usize = 4;
/// Passages retrieved when `attune.top_k` is not given.
const DEFAULT_TOP_K: usize = 5;

/// Routes relative to `/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/models", get(models))
        .route("/chat/completions", post(chat_completions))
        .route("/embeddings", post(embeddings))
        .method_not_allowed_fallback(super::api::method_not_allowed)
        .fallback(super::api::not_found)
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[derive(Debug, Serialize)]
struct ModelObject {
    id: String,
    object: &'static str,
    created: i64,
    owned_by: &'static str,
}

#[derive(Debug, Serialize)]
struct List<T> {
    object: &'static str,
    data: Vec<T>,
}

/// `GET /v1/models`: `base` and every succeeded run's pair.
async fn models(State(state): State<AppState>) -> Result<Json<List<ModelObject>>, AppError> {
    let mut data = vec![ModelObject { id: "base".into(), object: "model", created: 0, owned_by: "attune" }];
    for run in state.store().runs().await?.into_iter().filter(|r| r.status == JobStatus::Succeeded) {
        let created = chrono::DateTime::parse_from_rfc3339(&run.created_at).map_or(0, |t| t.timestamp());
        data.push(ModelObject { id: format!("run:{}", run.id), object: "model", created, owned_by: "attune" });
    }
    Ok(Json(List { object: "list", data }))
}

/// A message's `content`: a string, or OpenAI's list of parts (only text parts are read).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

impl Content {
    fn text(&self) -> Result<String, AppError> {
        match self {
            Content::Text(text) => Ok(text.clone()),
            Content::Parts(parts) => parts
                .iter()
                .map(|part| match (part.kind.as_str(), &part.text) {
                    ("text", Some(text)) => Ok(text.as_str()),
                    (kind, _) => Err(invalid("unsupported_content", format!("content parts of type {kind:?}"))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|texts| texts.join("\n")),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RequestMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(text) => vec![text],
            OneOrMany::Many(texts) => texts,
        }
    }
}

/// Attune's own request settings, in an extra field other servers ignore.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct AttuneOptions {
    /// Passages retrieved (the best one is in the prompt; all are returned as citations).
    top_k: Option<usize>,
    repetition_penalty: Option<f64>,
    /// `dense`, `bm25` or `hybrid` (the default).
    retrieval: Option<attune_shared::RetrievalMethod>,
}

/// The fields of OpenAI's request that Attune reads; the others (`top_p`, `user`, penalties,
/// ...) are accepted and ignored, as many servers do.
#[derive(Debug, Deserialize)]
struct ChatCompletionRequest {
    model: String,
    messages: Vec<RequestMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    stop: Option<OneOrMany>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    attune: AttuneOptions,
}

fn invalid(code: &'static str, message: String) -> AppError {
    AppError::Invalid { code, message }
}

/// The question (the last message, a user's), the earlier (user, assistant) turns, and the
/// generation settings, each checked.
struct ChatRequest {
    question: String,
    history: Vec<(String, String)>,
    options: ChatOptions,
    stop_sequences: Vec<String>,
    top_k: usize,
}

impl ChatCompletionRequest {
    fn check(self) -> Result<(String, bool, ChatRequest), AppError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(invalid("unsupported_n", "only one choice per request (n = 1)".into()));
        }
        if self.messages.is_empty() || self.messages.len() > MAX_MESSAGES {
            return Err(invalid("bad_messages", format!("send 1 to {MAX_MESSAGES} messages")));
        }
        let mut turns = Vec::new();
        for message in &self.messages {
            let text = message.content.as_ref().map(Content::text).transpose()?.unwrap_or_default();
            match message.role.as_str() {
                // The RAG prompt carries its own instructions.
                "system" | "developer" => {}
                "user" | "assistant" => turns.push((message.role.as_str(), text)),
                other => return Err(invalid("unsupported_role", format!("messages with role {other:?}"))),
            }
        }
        let Some(("user", question)) = turns.pop() else {
            return Err(invalid("bad_messages", "the last message must be the user's question".into()));
        };
        let question = question.trim().to_owned();
        if question.is_empty() {
            return Err(invalid("empty_question", "the last user message is empty".into()));
        }
        if question.chars().count() > MAX_QUESTION_CHARS {
            return Err(invalid("question_too_long", format!("questions are at most {MAX_QUESTION_CHARS} characters")));
        }
        // Each user turn answered by the assistant turn after it; unanswered ones are dropped.
        let history = turns
            .windows(2)
            .filter(|pair| pair[0].0 == "user" && pair[1].0 == "assistant")
            .map(|pair| (pair[0].1.clone(), pair[1].1.clone()))
            .collect();
        let defaults = ChatOptions::default();
        let options = ChatOptions {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            max_tokens: self.max_completion_tokens.or(self.max_tokens).unwrap_or(defaults.max_tokens),
            repetition_penalty: self.attune.repetition_penalty.unwrap_or(defaults.repetition_penalty),
            retrieval: self.attune.retrieval.unwrap_or(defaults.retrieval),
        };
        options.validate().map_err(|message| invalid("bad_options", message))?;
        let stop_sequences = self.stop.map(OneOrMany::into_vec).unwrap_or_default();
        if stop_sequences.len() > MAX_STOP_SEQUENCES || stop_sequences.iter().any(|s| s.is_empty() || s.len() > 200) {
            return Err(invalid(
                "bad_stop",
                format!("stop takes up to {MAX_STOP_SEQUENCES} non-empty strings of up to 200 bytes"),
            ));
        }
        let top_k = self.attune.top_k.unwrap_or(DEFAULT_TOP_K);
        if !(1..=20).contains(&top_k) {
            return Err(invalid("bad_top_k", format!("attune.top_k must be between 1 and 20 (got {top_k})")));
        }
        Ok((self.model, self.stream, ChatRequest { question, history, options, stop_sequences, top_k }))
    }
}

/// A failure the chat thread reported, as the error the caller gets.
fn engine_failure(code: &'static str, message: String) -> AppError {
    match code {
        "no_passages" => AppError::Conflict { code, message, current: None },
        _ => AppError::Internal(message),
    }
}

fn api_slot(state: &AppState) -> Result<ApiSlot, AppError> {
    state.chat().api_slot().ok_or_else(|| {
        AppError::TooManyRequests(format!(
            "{} API requests are already queued or running on the chat thread: retry when one has finished",
            crate::engine::chat::MAX_API_REQUESTS
        ))
    })
}

#[derive(Debug, Serialize)]
struct AttuneExtra {
    citations: Vec<Citation>,
    stats: Option<ChatStats>,
}

#[derive(Debug, Serialize)]
struct AssistantMessage {
    role: &'static str,
    content: String,
}

#[derive(Debug, Serialize)]
struct Choice {
    index: u32,
    message: AssistantMessage,
    finish_reason: &'static str,
}

#[derive(Debug, Serialize)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
}

#[derive(Debug, Serialize)]
struct ChatCompletion {
    id: String,
    object: &'static str,
    created: i64,
    model: String,
    choices: Vec<Choice>,
    usage: Usage,
    attune: AttuneExtra,
}

#[derive(Debug, Default, Serialize)]
struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
}

#[derive(Debug, Serialize)]
struct ChunkChoice {
    index: u32,
    delta: Delta,
    finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct ChatCompletionChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attune: Option<AttuneExtra>,
}

/// OpenAI's `finish_reason` for how generation ended.
fn finish_reason(stats: &ChatStats) -> &'static str {
    if stats.hit_cap { "length" } else { "stop" }
}

/// What a running answer has said so far; the receiver of the chat thread's events with it.
struct Answer {
    id: String,
    model: String,
    created: i64,
    events: UnboundedReceiver<ChatEvent>,
    /// Held until the answer is complete (or its stream is dropped).
    _slot: ApiSlot,
    /// Set when the caller goes away, so the thread stops generating.
    stop: Arc<AtomicBool>,
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Answer {
    /// The retrieved passages (the first event that matters), or the failure that came instead.
    async fn citations(&mut self) -> Result<Vec<Citation>, AppError> {
        loop {
            match self.events.recv().await {
                Some(ChatEvent::IndexProgress { .. }) => continue,
                Some(ChatEvent::Passages(citations)) => return Ok(citations),
                Some(ChatEvent::Error { code, message }) => return Err(engine_failure(code, message)),
                Some(other) => {
                    return Err(AppError::Internal(format!("the chat thread answered out of order: {other:?}")));
                }
                None => return Err(AppError::Internal("the chat thread dropped the question".into())),
            }
        }
    }

    fn chunk(&self, delta: Delta, finish_reason: Option<&'static str>, attune: Option<AttuneExtra>) -> Event {
        let chunk = ChatCompletionChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: vec![ChunkChoice { index: 0, delta, finish_reason }],
            attune,
        };
        Event::default().data(serde_json::to_string(&chunk).expect("chunks serialise"))
    }
}

/// `POST /v1/chat/completions`.
async fn chat_completions(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ChatCompletionRequest>,
) -> Result<Response, AppError> {
    let (model, stream, request) = request.check()?;
    let pair = super::runs::resolve_pair(&state, &model).await.map_err(super::runs::pair_refused)?;
    let slot = api_slot(&state)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
    state.chat().ask(
        Lane::Api,
        Question {
            pair,
            question: request.question,
            history: request.history,
            top_k: request.top_k,
            options: request.options,
            stop_sequences: request.stop_sequences,
            stop: stop.clone(),
            events,
        },
    )?;
    let id = format!("chatcmpl-{:016x}", rand::random::<u64>());
    let mut answer = Answer { id, model, created: unix_now(), events: receiver, _slot: slot, stop };
    // Failures before the first token (unknown index, no passages, a model that does not load)
    // are still HTTP errors; after it, a stream can only end with an error event.
    let citations = answer.citations().await?;
    if stream { Ok(stream_answer(answer, citations).into_response()) } else { whole_answer(answer, citations).await }
}

async fn whole_answer(mut answer: Answer, citations: Vec<Citation>) -> Result<Response, AppError> {
    loop {
        match answer.events.recv().await {
            Some(ChatEvent::Token(_) | ChatEvent::IndexProgress { .. } | ChatEvent::Passages(_)) => {}
            Some(ChatEvent::Done { answer: text, stats, .. }) => {
                let completion = ChatCompletion {
                    id: answer.id.clone(),
                    object: "chat.completion",
                    created: answer.created,
                    model: answer.model.clone(),
                    choices: vec![Choice {
                        index: 0,
                        message: AssistantMessage { role: "assistant", content: text },
                        finish_reason: finish_reason(&stats),
                    }],
                    usage: Usage {
                        prompt_tokens: stats.prompt_tokens,
                        completion_tokens: stats.tokens,
                        total_tokens: stats.prompt_tokens + stats.tokens,
                    },
                    attune: AttuneExtra { citations, stats: Some(stats) },
                };
                return Ok(Json(completion).into_response());
            }
            Some(ChatEvent::Error { code, message }) => return Err(engine_failure(code, message)),
            None => return Err(AppError::Internal("the chat thread dropped the question".into())),
        }
    }
}

/// The answer as server-sent events: a first chunk with the role and the citations, one chunk
/// per piece of text, a last one with the finish reason, then `[DONE]`. A failure mid-answer is
/// an event with OpenAI's error body, then the end.
fn stream_answer(answer: Answer, citations: Vec<Citation>) -> impl IntoResponse {
    let first = answer.chunk(
        Delta { role: Some("assistant"), content: None },
        None,
        Some(AttuneExtra { citations, stats: None }),
    );
    let stream = futures_util::stream::unfold((answer, Some(first), false), |(mut answer, first, ended)| async move {
        if let Some(first) = first {
            return Some((Ok::<_, Infallible>(first), (answer, None, false)));
        }
        if ended {
            return None;
        }
        let event = loop {
            match answer.events.recv().await {
                Some(ChatEvent::Token(text)) => {
                    break answer.chunk(Delta { role: None, content: Some(text) }, None, None);
                }
                Some(ChatEvent::IndexProgress { .. } | ChatEvent::Passages(_)) => continue,
                Some(ChatEvent::Done { stats, .. }) => {
                    let last = answer.chunk(
                        Delta::default(),
                        Some(finish_reason(&stats)),
                        Some(AttuneExtra { citations: Vec::new(), stats: Some(stats) }),
                    );
                    // The chunk now; `[DONE]` on the next poll.
                    return Some((Ok(last), (answer, Some(Event::default().data("[DONE]")), true)));
                }
                Some(ChatEvent::Error { code, message }) => {
                    let body =
                        attune_shared::ErrorBody { error: engine_failure(code, message).detail(), current: None };
                    break Event::default().data(serde_json::to_string(&body).expect("errors serialise"));
                }
                None => return None,
            }
        };
        Some((Ok(event), (answer, None, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[derive(Debug, Deserialize)]
struct EmbeddingRequest {
    model: String,
    input: OneOrMany,
    #[serde(default)]
    encoding_format: Option<String>,
    /// `passage` (the default) or `query`: the retriever's prefix for that role, where it has one.
    #[serde(default)]
    input_type: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Vector {
    Floats(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize)]
struct EmbeddingObject {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

#[derive(Debug, Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

#[derive(Debug, Serialize)]
struct EmbeddingList {
    object: &'static str,
    data: Vec<EmbeddingObject>,
    model: String,
    usage: EmbeddingUsage,
}

/// `POST /v1/embeddings`.
async fn embeddings(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<EmbeddingRequest>,
) -> Result<Json<EmbeddingList>, AppError> {
    let texts = request.input.into_vec();
    if texts.is_empty() || texts.len() > MAX_EMBED_INPUTS {
        return Err(invalid("bad_input", format!("send 1 to {MAX_EMBED_INPUTS} texts")));
    }
    if texts.iter().any(|t| t.is_empty() || t.chars().count() > MAX_EMBED_CHARS) {
        return Err(invalid("bad_input", format!("each text must be 1 to {MAX_EMBED_CHARS} characters")));
    }
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(invalid("bad_encoding_format", format!("encoding_format {other:?}: float or base64")));
        }
    };
    let role = match request.input_type.as_deref() {
        None | Some("passage") | Some("document") => TextRole::Passage,
        Some("query") => TextRole::Query,
        Some(other) => return Err(invalid("bad_input_type", format!("input_type {other:?}: query or passage"))),
    };
    let pair = super::runs::resolve_pair(&state, &request.model).await.map_err(super::runs::pair_refused)?;
    let _slot = api_slot(&state)?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    state.chat().embed(
        Lane::Api,
        EmbedRequest { retriever: pair.retriever, retriever_adapter: pair.retriever_adapter, texts, role, reply },
    )?;
    let embedded = answer
        .await
        .map_err(|_| AppError::Internal("the chat thread dropped the request".into()))?
        .map_err(|(code, message)| engine_failure(code, message))?;
    let data = embedded
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Vector::Floats(vector)
            };
            EmbeddingObject { object: "embedding", index, embedding }
        })
        .collect();
    Ok(Json(EmbeddingList {
        object: "list",
        data,
        model: request.model,
        usage: EmbeddingUsage { prompt_tokens: embedded.tokens, total_tokens: embedded.tokens },
    }))
}
