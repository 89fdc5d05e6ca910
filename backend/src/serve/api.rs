//! REST handlers under `/api/v1`, and the JSON 404/405 for everything else under `/api`.

use axum::Json;
use axum::Router;
use axum::extract::{OriginalUri, State};
use axum::http::Method;
use axum::routing::get;

use attune_shared::{DatabaseHealth, Health, Settings};

use super::AppState;
use super::error::{ApiJson, AppError};
use crate::model::catalog;

/// Routes relative to `/api`.
pub fn router() -> Router<AppState> {
    let v1 = Router::new()
        .route("/health", get(health))
        .route("/settings", get(get_settings).put(put_settings))
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
    Ok(Json(Health { version: crate::VERSION.to_owned(), models, device: state.config().device.clone(), database }))
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

async fn not_found(method: Method, OriginalUri(uri): OriginalUri) -> AppError {
    AppError::NotFound(format!("no API route {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, OriginalUri(uri): OriginalUri) -> AppError {
    AppError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}
