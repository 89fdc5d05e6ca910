//! REST handlers of training runs (create from approved triples, list, get, cancel, resume, metric
//! history), evaluations, uploaded test sets, presets and the model pairs one can chat with.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::Json;
use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

use attune_shared::{
    Eval, JobStatus, ModelKind, ModelPair, NewEval, NewRun, Preset, Run, StepPoint, TestSet, TestSetInfo,
};

use super::AppState;
use super::error::{ApiJson, AppError};
use crate::engine::chat::PairSpec;
use crate::engine::eval_job::{run_adapters, test_rows};
use crate::engine::job::JobEvent;
use crate::model::catalog::{self, DEFAULT_GENERATOR_NAME, DEFAULT_RETRIEVER_NAME};
use crate::store::jobs::QueuedJob;

fn not_found(what: &str, id: i64) -> AppError {
    AppError::NotFound(format!("no {what} with id {id}"))
}

fn invalid(code: &'static str, message: impl Into<String>) -> AppError {
    AppError::Invalid { code, message: message.into() }
}

pub async fn presets() -> Json<Vec<Preset>> {
    Json(attune_shared::presets())
}

/// `POST /train/split` with a run's settings: how many approved triples it would train on and
/// hold out.
pub async fn split(
    State(state): State<AppState>,
    ApiJson(hyper): ApiJson<attune_shared::Hyper>,
) -> Result<Json<attune_shared::SplitPreview>, AppError> {
    hyper.validate().map_err(|message| invalid("invalid_hyper", message))?;
    Ok(Json(crate::engine::train_job::preview_split(state.job_context(), &hyper).await?))
}

/// Checks that `name` is a model folder of `kind` in the models directory.
pub(super) fn check_model(state: &AppState, name: &str, kind: ModelKind) -> Result<(), AppError> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(invalid("unknown_model", format!("{name:?} is not a model folder name")));
    }
    let dir = state.config().models_dir.join(name);
    match catalog::describe(&dir) {
        Ok(info) if info.kind == kind => Ok(()),
        Ok(info) => Err(invalid("wrong_model_kind", format!("{name} is a {:?}, not a {kind:?}", info.kind))),
        Err(why) if !dir.exists() => Err(invalid(
            "unknown_model",
            format!("there is no model {name:?} in the models directory ({why}); see GET /api/v1/health for the list"),
        )),
        Err(why) => Err(invalid("unknown_model", format!("{name}: {why}"))),
    }
}

/// `POST /runs`: freezes the approved triples into the run's folder and queues the run.
pub async fn create_run(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<NewRun>,
) -> Result<impl IntoResponse, AppError> {
    let run = queue_training(&state, request).await?;
    Ok((StatusCode::ACCEPTED, Json(run)))
}

/// Checks `request` and queues its run on the approved triples.
pub(super) async fn queue_training(state: &AppState, mut request: NewRun) -> Result<Run, AppError> {
    request.hyper.validate().map_err(|message| invalid("invalid_hyper_parameters", message))?;
    let retriever = request.retriever.get_or_insert_with(|| DEFAULT_RETRIEVER_NAME.to_owned()).clone();
    let generator = request.generator.get_or_insert_with(|| DEFAULT_GENERATOR_NAME.to_owned()).clone();
    if request.mode.trains_retriever() || request.mode.trains_generator() {
        check_model(state, &retriever, ModelKind::Retriever)?;
        check_model(state, &generator, ModelKind::Generator)?;
    }
    let run = crate::engine::train_job::queue_run(state.job_context(), &request).await?;
    state.publish(JobEvent::Run(Box::new(run.clone())));
    state.queue().wake();
    Ok(run)
}

pub async fn list_runs(State(state): State<AppState>) -> Result<Json<Vec<Run>>, AppError> {
    Ok(Json(state.store().runs().await?))
}

pub async fn get_run(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<Run>, AppError> {
    state.store().run(id).await?.map(Json).ok_or_else(|| not_found("run", id))
}

pub async fn run_metrics(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<Vec<StepPoint>>, AppError> {
    state.store().run(id).await?.ok_or_else(|| not_found("run", id))?;
    Ok(Json(state.store().run_metrics(id).await?))
}

/// `POST /runs/:id/cancel`: a queued run is cancelled at once; a running one at its next step
/// (after saving a checkpoint), reported over the WebSocket.
pub async fn cancel_run(State(state): State<AppState>, Path(id): Path<i64>) -> Result<impl IntoResponse, AppError> {
    // Compare-and-set, so a cancel that lands while the worker claims the run is never lost:
    // either the run was still queued (cancelled here) or it is running (the worker stops it).
    if let Some(run) = state.store().cancel_queued_run(id).await? {
        state.publish(JobEvent::Run(Box::new(run.clone())));
        return Ok((StatusCode::OK, Json(run)));
    }
    let run = state.store().run(id).await?.ok_or_else(|| not_found("run", id))?;
    match run.status {
        JobStatus::Running if state.queue().cancel(QueuedJob::Run(id)) => Ok((StatusCode::ACCEPTED, Json(run))),
        status => Err(AppError::Conflict {
            code: "not_running",
            message: format!("run {id} is {status:?}, not queued or running: nothing to cancel"),
            current: None,
        }),
    }
}

/// `POST /runs/:id/export`: the run's tuned models as PEFT adapters, merged Hugging Face folders
/// or a GGUF generator, written under `<data-dir>/exports/` (on a blocking thread: merging and
/// quantizing are heavy); 409 `already_exported` for an export that exists.
pub async fn export_run(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    ApiJson(request): ApiJson<attune_shared::NewExport>,
) -> Result<(StatusCode, Json<attune_shared::Export>), AppError> {
    use crate::model::export::{ExportFormat, RunModels};
    let format = ExportFormat::parse(&request.format, request.quant.as_deref())
        .map_err(|message| invalid("invalid_export", message))?;
    let folder = format.name();
    let pair = resolve_pair(&state, &format!("run:{id}")).await.map_err(pair_refused)?;
    let models = RunModels {
        retriever: pair.retriever,
        retriever_adapter: pair.retriever_adapter,
        generator: pair.generator,
        generator_adapter: pair.generator_adapter,
    };
    let dir = state.config().data_dir.join("exports").join(format!("run-{id}-{folder}"));
    if dir.exists() {
        return Err(AppError::Conflict {
            code: "already_exported",
            message: format!("run {id} is exported as {folder} already, in {}", dir.display()),
            current: None,
        });
    }
    let out = dir.clone();
    let written = tokio::task::spawn_blocking(move || crate::model::export::export_run(&models, format, &out))
        .await
        .map_err(|e| AppError::Internal(format!("the export panicked: {e}")))?
        .map_err(|e| invalid("invalid_export", e.to_string()))?;
    let files = written
        .into_iter()
        .flat_map(|(folder, files)| {
            files
                .into_iter()
                .map(move |f| attune_shared::ExportedFile { name: format!("{folder}/{}", f.name), bytes: f.bytes })
        })
        .collect();
    let export = attune_shared::Export { run_id: id, format: folder, dir: dir.display().to_string(), files };
    Ok((StatusCode::CREATED, Json(export)))
}

/// `POST /evals/:id/cancel`: a queued evaluation is cancelled at once, a running one stops at its
/// next question.
pub async fn cancel_eval(State(state): State<AppState>, Path(id): Path<i64>) -> Result<impl IntoResponse, AppError> {
    if let Some(eval) = state.store().cancel_queued_eval(id).await? {
        state.publish(JobEvent::Eval(Box::new(eval.clone())));
        return Ok((StatusCode::OK, Json(eval)));
    }
    let eval = state.store().eval(id).await?.ok_or_else(|| not_found("evaluation", id))?;
    match eval.status {
        JobStatus::Running if state.queue().cancel(QueuedJob::Eval(id)) => Ok((StatusCode::ACCEPTED, Json(eval))),
        status => Err(AppError::Conflict {
            code: "not_running",
            message: format!("evaluation {id} is {status:?}, not queued or running: nothing to cancel"),
            current: None,
        }),
    }
}

/// `POST /runs/:id/resume`: queues an interrupted, cancelled or failed run again; it continues from
/// its last checkpoint (or starts over when it has none).
pub async fn resume_run(State(state): State<AppState>, Path(id): Path<i64>) -> Result<impl IntoResponse, AppError> {
    let run = requeue_run(&state, id).await?;
    Ok((StatusCode::ACCEPTED, Json(run)))
}

/// Queues an interrupted, cancelled or failed run again (it resumes from its last checkpoint).
pub(super) async fn requeue_run(state: &AppState, id: i64) -> Result<Run, AppError> {
    let run = state.store().run(id).await?.ok_or_else(|| not_found("run", id))?;
    if !matches!(run.status, JobStatus::Interrupted | JobStatus::Cancelled | JobStatus::Failed) {
        return Err(AppError::Conflict {
            code: "not_resumable",
            message: format!("run {id} is {:?}: only interrupted, cancelled or failed runs resume", run.status),
            current: None,
        });
    }
    let run = state.store().set_run_status(id, JobStatus::Queued, None).await?;
    state.publish(JobEvent::Run(Box::new(run.clone())));
    state.queue().wake();
    Ok(run)
}

/// `POST /evals`.
pub async fn create_eval(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<NewEval>,
) -> Result<impl IntoResponse, AppError> {
    let eval = queue_evaluation(&state, request).await?;
    Ok((StatusCode::ACCEPTED, Json(eval)))
}

/// Checks `request` (its runs have succeeded, its test set has questions) and queues it.
pub(super) async fn queue_evaluation(state: &AppState, request: NewEval) -> Result<Eval, AppError> {
    if request.runs.len() > 2 {
        return Err(invalid("too_many_runs", "compare at most two runs with the base models"));
    }
    let mut first = None;
    for &id in &request.runs {
        let run =
            state.store().run(id).await?.ok_or_else(|| invalid("unknown_run", format!("there is no run {id}")))?;
        if run.status != JobStatus::Succeeded {
            return Err(invalid(
                "run_not_finished",
                format!("run {id} ({}) is {:?}: evaluate it once it has succeeded", run.name, run.status),
            ));
        }
        first.get_or_insert(run);
    }
    let path = match &request.test_set {
        TestSet::HeldOut if first.is_none() => {
            return Err(invalid(
                "held_out_needs_a_run",
                "held-out triples belong to a run: pick a run, or upload a test set",
            ));
        }
        TestSet::HeldOut => None,
        TestSet::Uploaded { id } => {
            let (_, path) = state
                .store()
                .test_set(*id)
                .await?
                .ok_or_else(|| invalid("unknown_test_set", format!("there is no test set {id}")))?;
            Some(PathBuf::from(path))
        }
    };
    let context = state.job_context().clone();
    let test_set = request.test_set.clone();
    let rows = tokio::task::spawn_blocking(move || test_rows(&context, &test_set, first.as_ref(), path.as_deref()))
        .await
        .map_err(|e| AppError::Internal(e.to_string()))??;
    if rows.is_empty() {
        return Err(invalid(
            "empty_test_set",
            "the test set has no questions (a run with too few triples holds none out)",
        ));
    }
    let eval = state.store().insert_eval(&request).await?;
    state.publish(JobEvent::Eval(Box::new(eval.clone())));
    state.queue().wake();
    Ok(eval)
}

pub async fn list_evals(State(state): State<AppState>) -> Result<Json<Vec<Eval>>, AppError> {
    Ok(Json(state.store().evals().await?))
}

pub async fn get_eval(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<Eval>, AppError> {
    state.store().eval(id).await?.map(Json).ok_or_else(|| not_found("evaluation", id))
}

/// `POST /test-sets`: a QA file (`.jsonl` of {question, passage, answer}, the shared format's
/// question file included, or a triples `.csv`).
pub async fn upload_test_set(
    State(state): State<AppState>,
    mut multipart: Multipart,
) -> Result<impl IntoResponse, AppError> {
    let bad = |e: axum::extract::multipart::MultipartError| AppError::BadRequest {
        code: "bad_multipart",
        message: e.body_text(),
    };
    let field = multipart
        .next_field()
        .await
        .map_err(bad)?
        .ok_or_else(|| invalid("no_files", "send the QA file as a multipart field"))?;
    let name = field.file_name().unwrap_or("test.jsonl").to_owned();
    let extension = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    if !["csv", "jsonl", "json"].contains(&extension.as_str()) {
        return Err(AppError::UnsupportedMediaType(format!("{name}: test sets are .jsonl or .csv files")));
    }
    let bytes = field.bytes().await.map_err(bad)?;
    let dir = state.config().data_dir.join("test_sets");
    std::fs::create_dir_all(&dir).map_err(|e| AppError::Internal(format!("cannot create {}: {e}", dir.display())))?;
    let path = dir.join(format!("{}.{extension}", rand::random::<u64>()));
    std::fs::write(&path, &bytes).map_err(|e| AppError::Internal(format!("cannot store the test set: {e}")))?;
    let context = state.job_context().clone();
    let staged = path.clone();
    let rows =
        tokio::task::spawn_blocking(move || test_rows(&context, &TestSet::Uploaded { id: 0 }, None, Some(&staged)))
            .await
            .map_err(|e| AppError::Internal(e.to_string()))?;
    let rows = match rows {
        Ok(rows) if !rows.is_empty() => rows,
        Ok(_) => {
            let _ = std::fs::remove_file(&path);
            return Err(invalid("empty_test_set", format!("{name} has no usable rows")));
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(invalid("bad_test_set", format!("{name}: {e}")));
        }
    };
    let known: std::collections::HashSet<String> =
        state.store().indexed_passages().await?.into_iter().map(|p| p.text).collect();
    let new: std::collections::HashSet<&str> =
        rows.iter().map(|r| r.passage.as_str()).filter(|p| !known.contains(*p)).collect();
    let info =
        state.store().insert_test_set(&name, &path.display().to_string(), rows.len() as u32, new.len() as u32).await?;
    Ok((StatusCode::CREATED, Json::<TestSetInfo>(info)))
}

/// `GET /models`: the base pair and each succeeded run's tuned pair, with the figures of the latest
/// evaluation that included them.
pub async fn list_models(State(state): State<AppState>) -> Result<Json<Vec<ModelPair>>, AppError> {
    let evals = state.store().evals().await?;
    let latest = |run_id: Option<i64>| -> BTreeMap<String, f64> {
        let Some(scores) = evals
            .iter()
            .filter(|e| e.status == JobStatus::Succeeded)
            .find_map(|e| e.report.as_ref()?.systems.iter().find(|s| s.run_id == run_id))
        else {
            return BTreeMap::new();
        };
        let mut metrics: BTreeMap<String, f64> = scores
            .retrieval
            .iter()
            .filter(|(k, _)| ["hit@1", "hit@5", "mrr@10", "ndcg@10"].contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        metrics.extend(scores.exact_match.map(|v| ("em".to_owned(), v)));
        metrics.extend(scores.f1.map(|v| ("f1".to_owned(), v)));
        metrics
    };
    let mut pairs = vec![ModelPair {
        id: "base".into(),
        label: "Base models".into(),
        retriever: DEFAULT_RETRIEVER_NAME.into(),
        generator: DEFAULT_GENERATOR_NAME.into(),
        retriever_adapter: None,
        generator_adapter: None,
        run_id: None,
        metrics: latest(None),
    }];
    for run in state.store().runs().await?.into_iter().filter(|r| r.status == JobStatus::Succeeded) {
        let (retriever_adapter, generator_adapter) = run_adapters(state.job_context(), run.id);
        pairs.push(ModelPair {
            id: format!("run:{}", run.id),
            label: format!("{} (tuned)", run.name),
            retriever: run.retriever.clone(),
            generator: run.generator.clone(),
            retriever_adapter: retriever_adapter.map(|p| p.display().to_string()),
            generator_adapter: generator_adapter.map(|p| p.display().to_string()),
            run_id: Some(run.id),
            metrics: latest(Some(run.id)),
        });
    }
    Ok(Json(pairs))
}

/// The models behind a pair id of `GET /api/v1/models`.
/// A pair id [`resolve_pair`] refused, as the HTTP error: 404 for an unknown one, 409 for a run
/// that has not succeeded.
pub(super) fn pair_refused((code, message): (&'static str, String)) -> AppError {
    match code {
        "unknown_model" => AppError::NotFound(message),
        "store" => AppError::Internal(message),
        _ => AppError::Conflict { code, message, current: None },
    }
}

pub(super) async fn resolve_pair(state: &AppState, id: &str) -> Result<PairSpec, (&'static str, String)> {
    let models = &state.config().models_dir;
    if id == "base" {
        return Ok(PairSpec {
            id: id.to_owned(),
            retriever: models.join(DEFAULT_RETRIEVER_NAME),
            retriever_adapter: None,
            generator: models.join(DEFAULT_GENERATOR_NAME),
            generator_adapter: None,
        });
    }
    let unknown = || ("unknown_model", format!("no model pair {id:?}: use an id from GET /api/v1/models"));
    let run_id: i64 = id.strip_prefix("run:").and_then(|n| n.parse().ok()).ok_or_else(unknown)?;
    let run = state.store().run(run_id).await.map_err(|e| ("store", e.to_string()))?.ok_or_else(unknown)?;
    if run.status != JobStatus::Succeeded {
        return Err((
            "run_not_finished",
            format!("run {run_id} is {:?}: chat with it once it has succeeded", run.status),
        ));
    }
    let (retriever_adapter, generator_adapter) = run_adapters(state.job_context(), run_id);
    Ok(PairSpec {
        id: id.to_owned(),
        retriever: models.join(&run.retriever),
        retriever_adapter,
        generator: models.join(&run.generator),
        generator_adapter,
    })
}
