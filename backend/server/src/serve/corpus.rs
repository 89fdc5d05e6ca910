//! REST handlers of the corpus: documents (multipart upload, list, get, delete, passages),
//! triples (paged listing with filters, create, get, update with optimistic concurrency, delete,
//! history, bulk actions, export and import) and synthesis runs (start, list, get, cancel, resume).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use attune_shared::{
    AnswerStyle, BulkAction, BulkResult, Document, ImportResult, JobStatus, LlmChoice, NewTriple, Passage,
    SynthPrompts, SynthRequest, SynthRun, Triple, TripleEdit, TripleMatch, TripleOrigin, TriplePage, TripleStatus,
    TripleUpdate, UploadOutcome, UploadResult,
};

use super::AppState;
use super::error::{ApiJson, AppError};
use crate::engine::EngineError;
use crate::engine::ingest::{Ingested, ingest_file};
use crate::engine::synth::SynthJob;
use crate::engine::triples_io::{self, ExportFormat};
use crate::ingest::ChunkSettings;
use crate::openai::{OpenAiLlm, OpenAiSettings, same_origin};
use crate::store::corpus::{NewTripleRow, SynthRunConfig, TripleFilter, TripleSort, TriplesOfDeleted};
use crate::synth::{Llm, LocalLlm, prompt};

fn not_found(what: &str, id: i64) -> AppError {
    AppError::NotFound(format!("no {what} with id {id}"))
}

/// `POST /documents`: every file field of the multipart body is ingested on its own.
pub async fn upload(State(state): State<AppState>, mut multipart: Multipart) -> Result<Response, AppError> {
    let settings = state.store().settings().await?;
    let chunk = ChunkSettings { max_tokens: settings.chunk_tokens as usize, overlap: settings.chunk_overlap as usize };
    let tokenizer = state.chunking_tokenizer()?;
    let mut files = Vec::new();
    let mut last_error = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(AppError::PayloadTooLarge(format!(
                    "the upload is over the limit of {} MB per request",
                    state.config().max_upload_bytes / (1024 * 1024)
                )));
            }
            Err(e) => return Err(AppError::BadRequest { code: "bad_multipart", message: e.body_text() }),
        };
        let Some(name) = field.file_name().map(str::to_owned) else { continue };
        let bytes =
            field.bytes().await.map_err(|e| AppError::BadRequest { code: "bad_multipart", message: e.body_text() })?;
        let outcome = match ingest_file(
            state.store(),
            &tokenizer,
            &state.config().document_parser,
            &name,
            bytes.to_vec(),
            chunk,
            state.config().max_upload_bytes,
        )
        .await
        {
            Ok(Ingested::New(document)) => UploadOutcome::Ingested { document },
            Ok(Ingested::Duplicate(document)) => UploadOutcome::Duplicate { document },
            Err(e) => {
                let error = AppError::from(e);
                let detail = error.detail();
                last_error = Some(error);
                UploadOutcome::Failed { name, error: detail }
            }
        };
        files.push(outcome);
    }
    if files.is_empty() {
        return Err(AppError::Invalid {
            code: "no_files",
            message: "the request holds no file: send multipart form fields with file names".into(),
        });
    }
    // One file that failed: its own status (413, 415, 422); several: each outcome in the body.
    if files.len() == 1
        && let Some(error) = last_error
    {
        return Err(error);
    }
    let status = if files.iter().any(|f| matches!(f, UploadOutcome::Ingested { .. })) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(UploadResult { files })).into_response())
}

pub async fn list_documents(State(state): State<AppState>) -> Result<Json<Vec<Document>>, AppError> {
    Ok(Json(state.store().documents().await?))
}

pub async fn get_document(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<Document>, AppError> {
    state.store().document(id).await?.map(Json).ok_or_else(|| not_found("document", id))
}

#[derive(Debug, Deserialize)]
pub struct DeleteDocument {
    /// `keep` or `delete`; needed when the document has triples.
    triples: Option<String>,
}

pub async fn delete_document(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(query): Query<DeleteDocument>,
) -> Result<StatusCode, AppError> {
    let document = state.store().document(id).await?.ok_or_else(|| not_found("document", id))?;
    let count = document.triples.pending + document.triples.approved + document.triples.rejected;
    let action = match query.triples.as_deref() {
        Some("keep") => TriplesOfDeleted::Keep,
        Some("delete") => TriplesOfDeleted::Delete,
        Some(other) => {
            return Err(AppError::Invalid {
                code: "invalid_query",
                message: format!("triples={other:?}: expected keep or delete"),
            });
        }
        None if count == 0 => TriplesOfDeleted::Delete,
        None => {
            return Err(AppError::Conflict {
                code: "document_has_triples",
                message: format!(
                    "{count} triples ({} approved) come from {}: add ?triples=keep to keep them (with their passage text) \
                     or ?triples=delete to delete them too",
                    document.triples.approved, document.name
                ),
                current: None,
            });
        }
    };
    state.store().delete_document(id, action).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_passages(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<Vec<Passage>>, AppError> {
    state.store().document(id).await?.ok_or_else(|| not_found("document", id))?;
    Ok(Json(state.store().passages(id).await?))
}

#[derive(Debug, Deserialize, Default)]
pub struct TripleQuery {
    status: Option<String>,
    document_id: Option<i64>,
    origin: Option<String>,
    q: Option<String>,
    sort: Option<String>,
    page: Option<u32>,
    per_page: Option<u32>,
    /// Filtered candidates dropped for this reason only.
    reason: Option<String>,
}

fn filter_of(query: &TripleQuery) -> Result<TripleFilter, AppError> {
    let invalid = |message: String| AppError::Invalid { code: "invalid_query", message };
    let status =
        match query.status.as_deref() {
            None | Some("") | Some("all") => None,
            Some(s) => Some(TripleStatus::parse(s).ok_or_else(|| {
                invalid(format!("status={s:?}: expected pending, approved, rejected, filtered or all"))
            })?),
        };
    let origin = match query.origin.as_deref() {
        None | Some("") | Some("all") => None,
        Some(s) => Some(
            TripleOrigin::parse(s)
                .ok_or_else(|| invalid(format!("origin={s:?}: expected synthetic, imported or manual")))?,
        ),
    };
    let sort = match query.sort.as_deref() {
        None | Some("") | Some("oldest") => TripleSort::Oldest,
        Some("newest") => TripleSort::Newest,
        Some("updated") => TripleSort::RecentlyUpdated,
        Some("question") => TripleSort::Question,
        Some("judge") => TripleSort::Judge,
        Some(s) => return Err(invalid(format!("sort={s:?}: expected oldest, newest, updated, question or judge"))),
    };
    check_search(query.q.as_deref())?;
    let reason = check_reason(query.reason.as_deref())?;
    if let Some(page) = query.page
        && !(1..=MAX_PAGE).contains(&page)
    {
        return Err(invalid(format!("page={page}: pages are numbered 1 to {MAX_PAGE}")));
    }
    if let Some(per_page) = query.per_page
        && !(1..=MAX_PER_PAGE).contains(&per_page)
    {
        return Err(invalid(format!("per_page={per_page}: between 1 and {MAX_PER_PAGE}")));
    }
    Ok(TripleFilter {
        status,
        document_id: query.document_id,
        origin,
        search: query.q.clone(),
        sort,
        reason,
        synth_run: None,
    })
}

/// The longest filter reason a listing can ask for (the filters' own are far shorter).
const MAX_REASON_CHARS: usize = 200;

/// A reason to list filtered candidates by: empty means any.
fn check_reason(reason: Option<&str>) -> Result<Option<String>, AppError> {
    match reason.map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) if r.chars().count() > MAX_REASON_CHARS => Err(AppError::Invalid {
            code: "invalid_query",
            message: format!("reason: at most {MAX_REASON_CHARS} characters"),
        }),
        reason => Ok(reason.map(str::to_owned)),
    }
}

/// A search of at most [`MAX_SEARCH_WORDS`] words of at most [`MAX_SEARCH_WORD_CHARS`] each.
fn check_search(q: Option<&str>) -> Result<(), AppError> {
    let Some(q) = q else { return Ok(()) };
    let words: Vec<&str> = q.split_whitespace().collect();
    if words.len() > MAX_SEARCH_WORDS || words.iter().any(|w| w.chars().count() > MAX_SEARCH_WORD_CHARS) {
        return Err(AppError::Invalid {
            code: "invalid_query",
            message: format!(
                "q: search with at most {MAX_SEARCH_WORDS} words of at most {MAX_SEARCH_WORD_CHARS} characters each"
            ),
        });
    }
    Ok(())
}

/// Bounds of a triples query: each search word is three bound parameters (SQLite allows 32766).
const MAX_SEARCH_WORDS: usize = 16;
const MAX_SEARCH_WORD_CHARS: usize = 200;
const MAX_PAGE: u32 = 1_000_000;
const MAX_PER_PAGE: u32 = 500;

pub async fn list_triples(
    State(state): State<AppState>,
    Query(query): Query<TripleQuery>,
) -> Result<Json<TriplePage>, AppError> {
    let filter = filter_of(&query)?;
    Ok(Json(state.store().triples(&filter, query.page.unwrap_or(1), query.per_page.unwrap_or(50)).await?))
}

fn non_empty(field: &str, value: &str) -> Result<(), AppError> {
    if value.trim().is_empty() {
        return Err(AppError::Invalid { code: "empty_field", message: format!("the {field} must not be empty") });
    }
    Ok(())
}

pub async fn create_triple(
    State(state): State<AppState>,
    ApiJson(new): ApiJson<NewTriple>,
) -> Result<(StatusCode, Json<Triple>), AppError> {
    non_empty("question", &new.question)?;
    non_empty("answer", &new.answer)?;
    let passage = state.store().passage(new.passage_id).await?.ok_or_else(|| not_found("passage", new.passage_id))?;
    let row = NewTripleRow {
        question: new.question.trim().to_owned(),
        answer: new.answer.trim().to_owned(),
        passage: passage.text,
        passage_id: Some(passage.id),
        document_id: Some(passage.document_id),
        origin: TripleOrigin::Manual,
        model: None,
        prompt: None,
        synth_run_id: None,
        filter_reason: None,
        judge: None,
        approved: false,
    };
    let id = state.store().insert_triples(&[row]).await?[0];
    let triple = state.store().triple(id).await?.ok_or_else(|| not_found("triple", id))?;
    Ok((StatusCode::CREATED, Json(triple)))
}

pub async fn get_triple(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<Triple>, AppError> {
    state.store().triple(id).await?.map(Json).ok_or_else(|| not_found("triple", id))
}

pub async fn update_triple(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    ApiJson(update): ApiJson<TripleUpdate>,
) -> Result<Json<Triple>, AppError> {
    if let Some(question) = &update.question {
        non_empty("question", question)?;
    }
    if let Some(answer) = &update.answer {
        non_empty("answer", answer)?;
    }
    // A candidate dropped before it had an answer is kept only with one.
    if update.status.is_some_and(|s| s != TripleStatus::Filtered) && update.answer.is_none() {
        let current = state.store().triple(id).await?.ok_or_else(|| not_found("triple", id))?;
        if current.answer.trim().is_empty() {
            return Err(AppError::Invalid {
                code: "empty_field",
                message: "this candidate has no answer yet: write one before keeping it".into(),
            });
        }
    }
    Ok(Json(state.store().update_triple(id, &update).await?))
}

pub async fn delete_triple(State(state): State<AppState>, Path(id): Path<i64>) -> Result<StatusCode, AppError> {
    match state.store().delete_triples(&[id]).await? {
        0 => Err(not_found("triple", id)),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}

pub async fn triple_history(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Vec<TripleEdit>>, AppError> {
    state.store().triple(id).await?.ok_or_else(|| not_found("triple", id))?;
    Ok(Json(state.store().triple_history(id).await?))
}

pub async fn bulk(
    State(state): State<AppState>,
    ApiJson(action): ApiJson<BulkAction>,
) -> Result<Json<BulkResult>, AppError> {
    let matching = |m: &TripleMatch| TripleFilter {
        status: m.status,
        document_id: m.document_id,
        origin: m.origin,
        search: m.q.clone(),
        sort: TripleSort::Oldest,
        reason: m.reason.clone(),
        synth_run: None,
    };
    if let BulkAction::SetStatusMatching { matching: m, .. } | BulkAction::DeleteMatching { matching: m } = &action {
        check_search(m.q.as_deref())?;
        check_reason(m.reason.as_deref())?;
    }
    let changed = match action {
        BulkAction::SetStatus { ids, status } => state.store().set_status(&ids, status).await?,
        BulkAction::Delete { ids } => state.store().delete_triples(&ids).await?,
        BulkAction::SetStatusMatching { matching: m, status } => {
            let ids = state.store().triple_ids(&matching(&m)).await?;
            state.store().set_status(&ids, status).await?
        }
        BulkAction::DeleteMatching { matching: m } => {
            let ids = state.store().triple_ids(&matching(&m)).await?;
            state.store().delete_triples(&ids).await?
        }
    };
    Ok(Json(BulkResult { changed }))
}

#[derive(Debug, Deserialize)]
pub struct ExportQuery {
    /// `csv` (default), `jsonl`, `alpaca`, `sharegpt` or `hf`.
    format: Option<String>,
    /// `approved` (default), `pending`, `rejected`, `filtered` or `all` (all under review).
    status: Option<String>,
    /// The listing's other terms, so an export is what the page shows.
    document_id: Option<i64>,
    origin: Option<String>,
    q: Option<String>,
}

pub async fn export(State(state): State<AppState>, Query(query): Query<ExportQuery>) -> Result<Response, AppError> {
    let format_name = query.format.as_deref().unwrap_or("csv");
    let format = ExportFormat::from_name(format_name).ok_or_else(|| AppError::Invalid {
        code: "invalid_query",
        message: format!("format={format_name:?}: expected {}", ExportFormat::NAMES),
    })?;
    let listing = TripleQuery {
        status: Some(query.status.clone().unwrap_or_else(|| "approved".to_owned())),
        document_id: query.document_id,
        origin: query.origin.clone(),
        q: query.q.clone(),
        ..TripleQuery::default()
    };
    let filter = filter_of(&listing)?;
    let triples = state.store().matching_triples(&filter).await?;
    let bytes = triples_io::export(&triples, format)?;
    let file = format!("attachment; filename=\"{}\"", format.file_name());
    Ok(([(header::CONTENT_TYPE, format.content_type().to_owned()), (header::CONTENT_DISPOSITION, file)], bytes)
        .into_response())
}

/// `POST /triples/import`: one multipart file, `.csv` (DALM's columns) or `.jsonl`.
pub async fn import(State(state): State<AppState>, mut multipart: Multipart) -> Result<Json<ImportResult>, AppError> {
    let bad = |e: axum::extract::multipart::MultipartError| AppError::BadRequest {
        code: "bad_multipart",
        message: e.body_text(),
    };
    let field = multipart.next_field().await.map_err(bad)?.ok_or_else(|| AppError::Invalid {
        code: "no_files",
        message: "send the triples file as a multipart field".into(),
    })?;
    let name = field.file_name().unwrap_or("triples.csv").to_owned();
    let extension = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    if !["csv", "jsonl", "json", "ndjson"].contains(&extension.as_str()) {
        return Err(AppError::UnsupportedMediaType(format!("{name}: triples are imported from .csv or .jsonl files")));
    }
    let bytes: Bytes = field.bytes().await.map_err(bad)?;
    let dir = tempfile_dir()?;
    let path = dir.join(format!("import.{extension}"));
    std::fs::write(&path, &bytes).map_err(|e| AppError::Internal(format!("cannot stage the import: {e}")))?;
    let result = tokio::task::spawn_blocking(move || {
        let result = triples_io::import(&path);
        let _ = std::fs::remove_dir_all(path.parent().unwrap_or(&path));
        result
    })
    .await
    .map_err(|e| AppError::Internal(e.to_string()))?;
    let (rows, skipped) = result?;
    let ids = state.store().insert_triples(&rows).await?;
    Ok(Json(ImportResult {
        imported: ids.len() as u64,
        skipped: skipped.iter().map(|s| format!("row {}: {}", s.row, s.reason)).collect(),
    }))
}

fn tempfile_dir() -> Result<std::path::PathBuf, AppError> {
    let dir = std::env::temp_dir().join(format!("attune-import-{}-{}", std::process::id(), rand::random::<u64>()));
    std::fs::create_dir_all(&dir).map_err(|e| AppError::Internal(format!("cannot stage the import: {e}")))?;
    Ok(dir)
}

pub async fn default_prompts() -> Json<SynthPrompts> {
    Json(prompt::defaults())
}

pub async fn start_synth(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<SynthRequest>,
) -> Result<(StatusCode, Json<SynthRun>), AppError> {
    let run = begin_synth(&state, request).await?;
    Ok((StatusCode::ACCEPTED, Json(run)))
}

/// Checks `request`, stores its run and starts it on a thread of its own (the run is queued
/// behind others of the same LLM).
pub(super) async fn begin_synth(state: &AppState, request: SynthRequest) -> Result<SynthRun, AppError> {
    let settings = state.store().settings().await?;
    if request.few_shot && request.prompts.is_some() {
        return Err(AppError::Invalid {
            code: "invalid_body",
            message: "few_shot asks with the built-in worked-examples template: leave out custom prompts, or put \
                      examples in them"
                .into(),
        });
    }
    let mut prompts = request.prompts.unwrap_or_else(prompt::defaults);
    if request.few_shot {
        prompts.questions = prompt::QUESTIONS_FEW_SHOT.to_owned();
    }
    // Templates are the caller's code: checked off the async threads, with fuel and a deadline.
    let checked = prompts.clone();
    let validation = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::task::spawn_blocking(move || prompt::validate(&checked)),
    )
    .await
    .map_err(|_| AppError::Invalid {
        code: "invalid_prompts",
        message: "the templates take too long to render".into(),
    })?
    .map_err(|e| AppError::Internal(format!("template check failed: {e}")))?;
    validation.map_err(|e| AppError::Invalid { code: "invalid_prompts", message: e.to_string() })?;
    let llm = match request.llm {
        // The corpus goes to this server: only to the one the user configured in the settings.
        Some(LlmChoice::OpenAi { base_url, .. })
            if !settings.llm_base_url.as_deref().is_some_and(|configured| same_origin(configured, &base_url)) =>
        {
            return Err(AppError::Invalid {
                code: "llm_server_not_configured",
                message: format!(
                    "{base_url} is not the OpenAI-compatible server of the settings ({}): save it there \
                     first (PUT /api/v1/settings, llm_base_url), so passages and the API key go only where you \
                     chose",
                    settings.llm_base_url.as_deref().unwrap_or("none set")
                ),
            });
        }
        Some(llm) => llm,
        None => match (settings.llm_base_url.clone(), settings.llm_model.clone()) {
            (Some(base_url), Some(model)) => LlmChoice::OpenAi { base_url, model },
            _ => LlmChoice::Local,
        },
    };
    let mut passages = if request.passage_ids.is_empty() {
        if let Some(id) = request.document_id {
            state.store().document(id).await?.ok_or_else(|| not_found("document", id))?;
        }
        state.store().passage_ids(request.document_id).await?
    } else {
        request.passage_ids.clone()
    };
    if let Some(limit) = request.limit {
        passages.truncate(limit as usize);
    }
    if passages.is_empty() {
        return Err(AppError::Invalid {
            code: "no_passages",
            message: "there are no passages to synthesise from: upload documents first".into(),
        });
    }
    let questions = request.questions_per_passage.unwrap_or(settings.questions_per_passage);
    if !(1..=20).contains(&questions) {
        return Err(AppError::Invalid {
            code: "invalid_body",
            message: format!("questions_per_passage must be 1 to 20 (got {questions})"),
        });
    }
    let model = match &llm {
        LlmChoice::Local => crate::model::catalog::DEFAULT_GENERATOR_NAME.to_owned(),
        LlmChoice::OpenAi { model, .. } => model.clone(),
    };
    // The document the run is for: the one asked for, or the one all chosen passages share.
    // (Asked only for a selection of a size one page shows; SQLite binds at most 32766 values.)
    let document_id = match request.document_id {
        Some(id) => Some(id),
        None if passages.len() <= 1000 => state.store().document_of_passages(&passages).await?,
        None => None,
    };
    let filters = request.filters.unwrap_or_default();
    filters
        .validate()
        .map_err(|message| AppError::Invalid { code: "invalid_body", message: format!("filters: {message}") })?;
    let answers = request.answers.unwrap_or(AnswerStyle::default_for(&llm));
    if let Some(judge) = request.judge {
        judge
            .validate()
            .map_err(|message| AppError::Invalid { code: "invalid_body", message: format!("judge: {message}") })?;
        // The judge reads the passages: only the server the user configured gets them.
        if settings.llm_base_url.is_none() || settings.llm_model.is_none() {
            return Err(AppError::Invalid {
                code: "judge_needs_a_server",
                message: "the LLM judge is the OpenAI-compatible server of the settings: save its URL and model \
                          there first (PUT /api/v1/settings, llm_base_url and llm_model)"
                    .into(),
            });
        }
    }
    let config = SynthRunConfig {
        llm,
        model,
        questions_per_passage: questions,
        prompts,
        document_id,
        filters,
        answers,
        judge: request.judge,
    };
    let run = state.store().create_synth_run(&config, &passages).await?;
    spawn_synth(state, run.id)?;
    Ok(run)
}

/// Starts (or resumes) a run on a thread of its own.
pub(super) fn spawn_synth(state: &AppState, run_id: i64) -> Result<(), AppError> {
    let cancel = Arc::new(AtomicBool::new(false));
    {
        // Checked and taken under one lock: two concurrent resumes must not both start the run.
        let mut jobs = state.jobs().lock().unwrap_or_else(|e| e.into_inner());
        if jobs.contains_key(&run_id) {
            return Err(AppError::Conflict {
                code: "not_resumable",
                message: format!("synthesis run {run_id} is running already"),
                current: None,
            });
        }
        jobs.insert(run_id, cancel.clone());
    }
    let state_for_error = state.clone();
    let state = state.clone();
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name(format!("synth-{run_id}"))
        .spawn(move || {
            let monitor = state.synth_monitor().clone();
            let result = monitor.run(&format!("synthesis run {run_id}"), || -> Result<SynthRun, EngineError> {
                let mut run = runtime
                    .block_on(state.store().synth_run(run_id))?
                    .ok_or(EngineError::Invalid("no such run".into()))?;
                // Queued until its LLM is free: one run at a time per LLM, in order.
                runtime.block_on(state.store().set_synth_status(run_id, JobStatus::Queued, None))?;
                run.status = JobStatus::Queued;
                state.publisher().publish_synth(&run, None);
                let lane = crate::engine::synth::SynthLanes::lane_of(&run.llm);
                let Some(_turn) = state.synth_lanes().wait_turn(&lane, run_id, &cancel) else {
                    runtime.block_on(state.store().set_synth_status(run_id, JobStatus::Cancelled, None))?;
                    run.status = JobStatus::Cancelled;
                    state.publisher().publish_synth(&run, None);
                    return Ok(run);
                };
                let settings = runtime.block_on(state.store().settings())?;
                let configured = settings.llm_base_url.clone();
                let llm = build_llm(&state, &run.llm, configured.as_deref())?;
                // The judge is the server of the settings now (a resumed run follows a change).
                let judge = match (run.judge, settings.llm_base_url, settings.llm_model) {
                    (None, _, _) => None,
                    (Some(judge), Some(base_url), Some(model)) => {
                        let choice = LlmChoice::OpenAi { base_url, model };
                        Some((judge, build_llm(&state, &choice, configured.as_deref())?))
                    }
                    (Some(_), _, _) => {
                        return Err(EngineError::Invalid(
                            "this run asks an LLM judge, and the settings name no OpenAI-compatible server any more"
                                .into(),
                        ));
                    }
                };
                let device = crate::model::device::select(&state.config().device_spec)
                    .map_err(crate::synth::SynthError::Local)?;
                SynthJob {
                    run_id,
                    store: state.store().clone(),
                    llm,
                    judge,
                    filters: run.filters,
                    retriever: state.config().models_dir.join(crate::model::catalog::DEFAULT_RETRIEVER_NAME),
                    device,
                    cancel,
                    runtime: runtime.clone(),
                }
                .run(|run, eta| state.publisher().publish_synth(run, eta))
            });
            if let Err(error) = result {
                tracing::error!(run = run_id, "synthesis run failed: {error}");
                let _ = runtime.block_on(state.store().set_synth_status(
                    run_id,
                    JobStatus::Failed,
                    Some(&error.to_string()),
                ));
                if let Ok(Some(run)) = runtime.block_on(state.store().synth_run(run_id)) {
                    state.publisher().publish_synth(&run, None);
                }
            }
            state.jobs().lock().unwrap_or_else(|e| e.into_inner()).remove(&run_id);
            // The local model and its buffers are dropped: hand the memory back.
            crate::memory::release_freed();
        })
        .map_err(|e| {
            state_for_error.jobs().lock().unwrap_or_else(|e| e.into_inner()).remove(&run_id);
            AppError::Internal(format!("cannot start the synthesis thread: {e}"))
        })?;
    Ok(())
}

/// The run's LLM; the API key goes only to the `configured` server (the settings' one now).
fn build_llm(state: &AppState, choice: &LlmChoice, configured: Option<&str>) -> Result<Box<dyn Llm>, EngineError> {
    Ok(match choice {
        LlmChoice::Local => {
            let path = state.config().models_dir.join(crate::model::catalog::DEFAULT_GENERATOR_NAME);
            let device =
                crate::model::device::select(&state.config().device_spec).map_err(crate::synth::SynthError::Local)?;
            let generator =
                crate::model::generator::Generator::load(&path, &device).map_err(crate::synth::SynthError::Local)?;
            Box::new(LocalLlm::new(generator, crate::model::catalog::DEFAULT_GENERATOR_NAME.to_owned()))
        }
        LlmChoice::OpenAi { base_url, model } => {
            Box::new(OpenAiLlm::new(OpenAiSettings::new(base_url, model).with_key_for(configured))?)
        }
    })
}

pub async fn list_synth_runs(State(state): State<AppState>) -> Result<Json<Vec<SynthRun>>, AppError> {
    Ok(Json(state.store().synth_runs().await?))
}

pub async fn get_synth_run(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<SynthRun>, AppError> {
    state.store().synth_run(id).await?.map(Json).ok_or_else(|| not_found("synthesis run", id))
}

pub async fn cancel_synth_run(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<(StatusCode, Json<SynthRun>), AppError> {
    let run = state.store().synth_run(id).await?.ok_or_else(|| not_found("synthesis run", id))?;
    let flag = state.jobs().lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned();
    match flag {
        Some(flag) => {
            flag.store(true, Ordering::Relaxed);
            Ok((StatusCode::ACCEPTED, Json(run)))
        }
        None => Err(AppError::Conflict {
            code: "not_running",
            message: format!("synthesis run {id} is not running ({:?})", run.status),
            current: None,
        }),
    }
}

pub async fn resume_synth_run(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<(StatusCode, Json<SynthRun>), AppError> {
    let run = state.store().synth_run(id).await?.ok_or_else(|| not_found("synthesis run", id))?;
    // Whether it is running now is spawn_synth's to check, under the same lock that registers it.
    if run.status == JobStatus::Succeeded && run.report.failed_passages == 0 {
        return Err(AppError::Conflict {
            code: "not_resumable",
            message: format!("synthesis run {id} is {:?}: nothing to resume", run.status),
            current: None,
        });
    }
    spawn_synth(&state, id)?;
    Ok((StatusCode::ACCEPTED, Json(run)))
}
