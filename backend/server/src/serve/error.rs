//! `AppError`: every failure an HTTP handler can return, mapped to a status and the JSON
//! error body `{"error": {"code", "message"}}` in exactly one place.

use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use attune_shared::{ErrorBody, ErrorDetail};

use crate::engine::EngineError;
use crate::ingest::IngestError;
use crate::model::catalog::CatalogError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request is malformed (bad JSON syntax, missing upgrade headers, ...).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// The request is well-formed but its content is not acceptable.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("this server requires a bearer token: send `Authorization: Bearer <token>`")]
    Unauthorized,
    /// The caller may not do this at all (another site's page, a host name not this server's).
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// Too many failed attempts from one peer; try again later.
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The request conflicts with the current state (a stale version, a document with triples).
    #[error("{message}")]
    Conflict { code: &'static str, message: String, current: Option<Box<attune_shared::Triple>> },
    /// The default models are not in the models directory.
    #[error("{0}")]
    ModelsMissing(String),
    /// A bug or an unexpected failure on the server's side.
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

impl From<StoreError> for AppError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(what) => AppError::NotFound(format!("no such {what}")),
            StoreError::Conflict(current) => AppError::Conflict {
                code: "version_conflict",
                message: format!(
                    "this triple was changed since you read it (it is now at version {}); the response holds the \
                     current version: merge your change into it and save again",
                    current.version
                ),
                current: Some(current),
            },
            other => AppError::Store(other),
        }
    }
}

impl From<IngestError> for AppError {
    fn from(error: IngestError) -> Self {
        let message = error.to_string();
        match error {
            IngestError::Unsupported { .. } => AppError::UnsupportedMediaType(message),
            IngestError::Empty { .. } => AppError::Invalid { code: "empty_file", message },
            IngestError::Encoding { .. } => AppError::Invalid { code: "not_utf8", message },
            IngestError::NoText { .. } => AppError::Invalid { code: "no_text_in_pdf", message },
            IngestError::Pdf { .. } => AppError::Invalid { code: "unreadable_pdf", message },
            IngestError::NoPassages { .. } => AppError::Invalid { code: "no_passages", message },
            IngestError::Settings(_) => AppError::Invalid { code: "invalid_settings", message },
        }
    }
}

impl From<EngineError> for AppError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::Ingest(e) => e.into(),
            EngineError::Store(e) => e.into(),
            EngineError::TooLarge { .. } => AppError::PayloadTooLarge(error.to_string()),
            EngineError::Invalid(message) => AppError::Invalid { code: "invalid_input", message },
            EngineError::NotEnoughTriples(message) => AppError::Invalid { code: "not_enough_triples", message },
            EngineError::Failed(message) => AppError::Internal(message),
            EngineError::Synth(e) => AppError::Invalid { code: "synthesis_failed", message: e.to_string() },
            EngineError::Task(message) => AppError::Internal(message),
        }
    }
}

impl AppError {
    /// The HTTP status for each kind of error.
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            AppError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
            AppError::Forbidden { .. } => StatusCode::FORBIDDEN,
            AppError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            AppError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::Conflict { .. } => StatusCode::CONFLICT,
            AppError::ModelsMissing(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) | AppError::Store(_) | AppError::Catalog(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable code of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::BadRequest { code, .. }
            | AppError::Invalid { code, .. }
            | AppError::Conflict { code, .. }
            | AppError::Forbidden { code, .. } => code,
            AppError::TooManyRequests(_) => "too_many_attempts",
            AppError::ModelsMissing(_) => "models_missing",
            AppError::NotFound(_) => "not_found",
            AppError::Unauthorized => "unauthorized",
            AppError::MethodNotAllowed(_) => "method_not_allowed",
            AppError::UnsupportedMediaType(_) => "unsupported_media_type",
            AppError::PayloadTooLarge(_) => "payload_too_large",
            AppError::Internal(_) => "internal_error",
            AppError::Store(_) => "database_error",
            AppError::Catalog(_) => "models_unreadable",
        }
    }
}

impl AppError {
    /// The error body's detail: code, message, and OpenAI's class for the status.
    pub fn detail(&self) -> ErrorDetail {
        let status = self.status();
        let kind = match status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        };
        ErrorDetail { code: self.code().to_owned(), message: self.to_string(), kind: kind.to_owned() }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let current = match &self {
            AppError::Conflict { current, .. } => current.clone(),
            _ => None,
        };
        let body = ErrorBody { error: self.detail(), current };
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<JsonRejection> for AppError {
    fn from(rejection: JsonRejection) -> Self {
        let message = rejection.body_text();
        match rejection {
            JsonRejection::JsonDataError(_) => AppError::Invalid { code: "invalid_body", message },
            JsonRejection::JsonSyntaxError(_) => AppError::BadRequest { code: "malformed_json", message },
            JsonRejection::MissingJsonContentType(_) => AppError::UnsupportedMediaType(message),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => AppError::PayloadTooLarge(message),
            _ => AppError::BadRequest { code: "unreadable_body", message },
        }
    }
}

/// A JSON request body whose rejections are [`AppError`]s (so they use the error format).
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(AppError))]
pub struct ApiJson<T>(pub T);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callers_mistakes_are_4xx_and_the_servers_failures_5xx() {
        let cases = [
            (EngineError::Invalid("bad file".into()), 422, "invalid_input"),
            (EngineError::NotEnoughTriples("approve some".into()), 422, "not_enough_triples"),
            (EngineError::Failed("cannot write /data/runs".into()), 500, "internal_error"),
            (EngineError::Task("panicked".into()), 500, "internal_error"),
        ];
        for (error, status, code) in cases {
            let app: AppError = error.into();
            assert_eq!((app.status().as_u16(), app.code()), (status, code), "{app}");
        }
    }

    #[test]
    fn a_training_error_is_the_callers_only_when_the_data_or_settings_are_bad() {
        use crate::train::TrainError;
        let data: EngineError = TrainError::Data("no rows".into()).into();
        assert!(matches!(data, EngineError::Invalid(_)));
        let load = TrainError::Load { what: "retriever".into(), path: "m".into(), message: "missing".into() };
        assert!(matches!(EngineError::from(load), EngineError::Failed(_)));
    }

    #[test]
    fn the_conflict_message_reads_as_one_sentence() {
        let triple: attune_shared::Triple = serde_json::from_value(serde_json::json!({
            "id": 1, "question": "Q?", "answer": "a", "passage": "p", "status": "pending", "origin": "manual",
            "version": 3, "document_id": 1, "passage_id": 1, "created_at": "", "updated_at": ""
        }))
        .unwrap();
        let message = AppError::from(StoreError::Conflict(Box::new(triple))).to_string();
        assert!(!message.contains("  "), "{message}");
        assert!(message.contains("version 3"), "{message}");
    }
}
