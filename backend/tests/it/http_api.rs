//! The REST shell through `app(state)` with `tower::ServiceExt::oneshot`: health, settings,
//! the JSON error format, and the bearer token.

use std::path::Path;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::Value;

use attune::serve::{AppState, ServeConfig, app};
use attune_shared::ComputeDevice;

use super::common::{TestApp, call, get};

async fn test_app(token: Option<&str>) -> TestApp {
    test_app_on(token, ComputeDevice::Cpu).await
}

async fn test_app_on(token: Option<&str>, device: ComputeDevice) -> TestApp {
    let dirs = tempfile::tempdir().unwrap();
    let models = dirs.path().join("models");
    std::fs::create_dir_all(models.join("tiny-bert")).unwrap();
    std::fs::write(models.join("tiny-bert/config.json"), r#"{"model_type":"bert"}"#).unwrap();
    std::fs::write(models.join("tiny-bert/model.safetensors"), b"").unwrap();
    let config = ServeConfig {
        token: token.map(str::to_owned),
        device,
        ..ServeConfig::new(dirs.path().join("data"), models, dirs.path().join("dist"))
    };
    let state = AppState::open(config).await.unwrap();
    TestApp { router: app(state), _dirs: dirs }
}

fn put_json(uri: &str, body: &str) -> Request<Body> {
    Request::put(uri).header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_owned())).unwrap()
}

fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "body: {body}");
}

#[tokio::test]
async fn health_reports_version_models_device_and_database() {
    let app = test_app(None).await;
    let (status, body) = call(&app, get("/api/v1/health")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["device"]["type"], "cpu");
    assert_eq!(body["database"]["ok"], true);
    assert_eq!(body["database"]["schema_version"], 6);
    let models = body["models"].as_array().unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(models[0]["name"], "tiny-bert");
    assert_eq!(models[0]["kind"], "retriever");
    assert!(Path::new(models[0]["path"].as_str().unwrap()).is_absolute());
}

#[tokio::test]
async fn health_reports_the_configured_device() {
    let app = test_app_on(None, ComputeDevice::Cuda { ordinal: 3 }).await;
    let (_, body) = call(&app, get("/api/v1/health")).await;
    assert_eq!((body["device"]["type"].as_str(), body["device"]["ordinal"].as_u64()), (Some("cuda"), Some(3)));
}

#[tokio::test]
async fn settings_round_trip_and_validation() {
    let app = test_app(None).await;
    let (status, body) = call(&app, get("/api/v1/settings")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["chunk_tokens"], 256);

    let (status, body) = call(&app, put_json("/api/v1/settings", r#"{"chunk_tokens":128,"chunk_overlap":16}"#)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = call(&app, get("/api/v1/settings")).await;
    assert_eq!((body["chunk_tokens"].as_u64(), body["chunk_overlap"].as_u64()), (Some(128), Some(16)));

    // Valid JSON, invalid values: 422, and nothing stored.
    let (status, body) = call(&app, put_json("/api/v1/settings", r#"{"chunk_tokens":64,"chunk_overlap":64}"#)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&body, "invalid_settings");
    let (_, body) = call(&app, get("/api/v1/settings")).await;
    assert_eq!(body["chunk_tokens"], 128);
}

#[tokio::test]
async fn bad_json_gets_the_error_format() {
    let app = test_app(None).await;
    let (status, body) = call(&app, put_json("/api/v1/settings", r#"{"chunk_tokens": 12"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, "malformed_json");

    let (status, body) = call(&app, put_json("/api/v1/settings", r#"{"chunk_tokens":"many"}"#)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&body, "invalid_body");

    let (status, body) = call(&app, put_json("/api/v1/settings", r#"{"chunk_tokenz":12}"#)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&body, "invalid_body");

    let no_type = Request::put("/api/v1/settings").body(Body::from("{}")).unwrap();
    let (status, body) = call(&app, no_type).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_error(&body, "unsupported_media_type");
}

#[tokio::test]
async fn unknown_api_route_and_wrong_method_get_the_error_format() {
    let app = test_app(None).await;
    for uri in ["/api/v1/nope", "/api/nope", "/api/v2/health", "/api"] {
        let (status, body) = call(&app, get(uri)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        assert_error(&body, "not_found");
    }
    let (status, body) = call(&app, get("/api/v1/nope")).await;
    assert!(body["error"]["message"].as_str().unwrap().contains("/api/v1/nope"), "{status} {body}");

    let delete = Request::delete("/api/v1/health").body(Body::empty()).unwrap();
    let (status, body) = call(&app, delete).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_error(&body, "method_not_allowed");
}

#[tokio::test]
async fn missing_frontend_is_explained_not_a_blank_404() {
    let app = test_app(None).await;
    let (status, body) = call(&app, get("/documents")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.as_str().unwrap().contains("make run"));
}

#[tokio::test]
async fn frontend_routes_fall_back_to_index_html() {
    let dirs = tempfile::tempdir().unwrap();
    let dist = dirs.path().join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    std::fs::write(dist.join("index.html"), "<!doctype html><title>shell</title>").unwrap();
    std::fs::write(dist.join("app.css"), "body{}").unwrap();
    let config =
        ServeConfig { token: None, ..ServeConfig::new(dirs.path().join("data"), dirs.path().join("models"), dist) };
    let router = app(AppState::open(config).await.unwrap());
    let test = TestApp { router, _dirs: dirs };
    let (status, body) = call(&test, get("/app.css")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, Some("body{}")));
    let (status, body) = call(&test, get("/triples")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.as_str().unwrap().contains("<title>shell</title>"));
    // The API still answers in JSON, never with the page.
    let (status, body) = call(&test, get("/api/v1/missing")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, "not_found");
}

#[tokio::test]
async fn token_guards_api_and_ws_but_not_the_page() {
    let app = test_app(Some("s3cret-token")).await;
    let (status, body) = call(&app, get("/api/v1/health")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error(&body, "unauthorized");

    let wrong = Request::get("/api/v1/health").header(header::AUTHORIZATION, "Bearer s3cret-tokem").body(Body::empty());
    assert_eq!(call(&app, wrong.unwrap()).await.0, StatusCode::UNAUTHORIZED);

    let right = Request::get("/api/v1/health").header(header::AUTHORIZATION, "Bearer s3cret-token").body(Body::empty());
    assert_eq!(call(&app, right.unwrap()).await.0, StatusCode::OK);

    // Unknown API routes do not reveal themselves to unauthenticated callers.
    assert_eq!(call(&app, get("/api/v1/nope")).await.0, StatusCode::UNAUTHORIZED);

    // The query parameter is accepted on /ws only.
    assert_eq!(call(&app, get("/api/v1/health?token=s3cret-token")).await.0, StatusCode::UNAUTHORIZED);
    let (status, _) = call(&app, get("/ws")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = call(&app, get("/ws?token=s3cret-token")).await;
    // Authorised, but not an upgrade request: the WS handler itself answers.
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, "websocket_upgrade_required");

    // The page itself (which asks for the token) is not guarded.
    assert_eq!(call(&app, get("/documents")).await.0, StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn off_loopback_requires_a_strong_token() {
    let mut config = ServeConfig { token: None, ..ServeConfig::new("data".into(), "models".into(), "dist".into()) };
    assert!(config.check_for("127.0.0.1:8080".parse().unwrap()).is_ok());
    assert!(config.check_for("[::1]:8080".parse().unwrap()).is_ok());
    let refused = config.check_for("0.0.0.0:8080".parse().unwrap()).unwrap_err();
    assert!(refused.to_string().contains("--token"), "{refused}");
    assert!(config.check_for("192.168.1.5:8080".parse().unwrap()).is_err());
    config.token = Some("short".into());
    assert!(config.check_for("0.0.0.0:8080".parse().unwrap()).is_err());
    config.token = Some("long-enough-token".into());
    assert!(config.check_for("0.0.0.0:8080".parse().unwrap()).is_ok());
}
