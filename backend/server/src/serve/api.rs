//! REST handlers under `/api/v1`, and the JSON 404/405 for everything else under `/api`.

use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::{OriginalUri, State};
use axum::http::Method;
use axum::routing::{get, post};

use attune_shared::{DatabaseHealth, Health, Settings};

use super::AppState;
use super::adapt;
use super::corpus;
use super::error::{ApiJson, AppError};
use super::runs;
use crate::model::catalog;

/// Routes relative to `/api`; uploads may carry several files of up to `max_upload_bytes` each.
pub fn router(max_upload_bytes: u64) -> Router<AppState> {
    let uploads = DefaultBodyLimit::max((max_upload_bytes as usize).saturating_mul(4).saturating_add(1 << 20));
    let v1 = Router::new()
        .route("/health", get(health))
        .route("/settings", get(get_settings).put(put_settings))
        .route("/documents", get(corpus::list_documents).post(corpus::upload).layer(uploads))
        .route("/documents/{id}", get(corpus::get_document).delete(corpus::delete_document))
        .route("/documents/{id}/passages", get(corpus::list_passages))
        .route("/triples", get(corpus::list_triples).post(corpus::create_triple))
        .route("/triples/bulk", post(corpus::bulk))
        .route("/triples/export", get(corpus::export))
        .route("/triples/import", post(corpus::import).layer(uploads))
        .route("/triples/{id}", get(corpus::get_triple).patch(corpus::update_triple).delete(corpus::delete_triple))
        .route("/triples/{id}/history", get(corpus::triple_history))
        .route("/synth/prompts", get(corpus::default_prompts))
        .route("/synth/runs", get(corpus::list_synth_runs).post(corpus::start_synth))
        .route("/synth/runs/{id}", get(corpus::get_synth_run))
        .route("/synth/runs/{id}/cancel", post(corpus::cancel_synth_run))
        .route("/synth/runs/{id}/resume", post(corpus::resume_synth_run))
        .route("/train/presets", get(runs::presets))
        .route("/train/split", post(runs::split))
        .route("/runs", get(runs::list_runs).post(runs::create_run))
        .route("/runs/{id}", get(runs::get_run))
        .route("/runs/{id}/metrics", get(runs::run_metrics))
        .route("/runs/{id}/cancel", post(runs::cancel_run))
        .route("/runs/{id}/resume", post(runs::resume_run))
        .route("/runs/{id}/export", post(runs::export_run))
        .route("/evals", get(runs::list_evals).post(runs::create_eval))
        .route("/evals/{id}", get(runs::get_eval))
        .route("/evals/{id}/cancel", post(runs::cancel_eval))
        .route(
            "/test-sets",
            post(runs::upload_test_set)
                .layer(DefaultBodyLimit::max((max_upload_bytes as usize).saturating_add(1 << 20))),
        )
        .route("/models", get(runs::list_models))
        .route("/adapt", get(adapt::list).post(adapt::start))
        .route("/adapt/{id}", get(adapt::get))
        .route("/adapt/{id}/cancel", post(adapt::cancel))
        .route("/adapt/{id}/resume", post(adapt::resume))
        .method_not_allowed_fallback(method_not_allowed);
    Router::new().nest("/v1", v1).fallback(not_found)
}

async fn health(State(state): State<AppState>) -> Result<Json<Health>, AppError> {
    let models_dir = state.config().models_dir.clone();
    let models = tokio::task::spawn_blocking(move || catalog::scan(&models_dir))
        .await
        .map_err(|e| AppError::Internal(format!("model scan panicked: {e}")))??;
    let database = match state.store().schema_version().await {
        Ok(schema_version) => DatabaseHealth { ok: true, schema_version },
        Err(e) => {
            tracing::error!("database health check failed: {e}");
            DatabaseHealth { ok: false, schema_version: 0 }
        }
    };
    let mut threads = vec![state.queue().health(), state.chat().health()];
    threads.extend(state.synth_health());
    Ok(Json(Health {
        version: crate::VERSION.to_owned(),
        models,
        device: state.config().device.clone(),
        database,
        threads,
    }))
}

async fn get_settings(State(state): State<AppState>) -> Result<Json<Settings>, AppError> {
    Ok(Json(state.store().settings().await?))
}

async fn put_settings(
    State(state): State<AppState>,
    ApiJson(settings): ApiJson<Settings>,
) -> Result<Json<Settings>, AppError> {
    settings.validate().map_err(|message| AppError::Invalid { code: "invalid_settings", message })?;
    state.store().save_settings(&settings).await?;
    Ok(Json(settings))
}

pub(super) async fn not_found(method: Method, OriginalUri(uri): OriginalUri) -> AppError {
    AppError::NotFound(format!("no API route {method} {}", uri.path()))
}

pub(super) async fn method_not_allowed(method: Method, OriginalUri(uri): OriginalUri) -> AppError {
    AppError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}
