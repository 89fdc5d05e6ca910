//! Helpers the integration tests share: the workspace root, and an app driven in-process with
//! `tower::ServiceExt::oneshot`.

use std::path::PathBuf;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// The repository's root (the models, fixtures and sources are found from here).
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The app's router and the temporary folders it lives in.
pub struct TestApp {
    pub router: Router,
    pub _dirs: tempfile::TempDir,
}

/// Sends `request`; the answer's status and body (JSON, or the text as a JSON string).
pub async fn call(app: &TestApp, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, body)
}

pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}
