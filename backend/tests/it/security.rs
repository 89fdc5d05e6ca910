//! The server as a hostile web page or caller meets it: foreign Host names and cross-origin writes
//! are refused with 403 in the error format, and the token stays out of debug output.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};

use crate::common::{TestApp, call, get};
use attune::serve::{AppState, ServeConfig, app, origin::HostRules};

async fn test_app(allowed: &[&str]) -> TestApp {
    let dirs = tempfile::tempdir().unwrap();
    let config = ServeConfig {
        host_rules: HostRules::new(&allowed.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap(),
        ..ServeConfig::new(dirs.path().join("data"), dirs.path().join("models"), dirs.path().join("dist"))
    };
    TestApp { router: app(AppState::open(config).await.unwrap()), _dirs: dirs }
}

fn with(request: Request<Body>, name: header::HeaderName, value: &str) -> Request<Body> {
    let mut request = request;
    request.headers_mut().insert(name, value.parse().unwrap());
    request
}

#[tokio::test]
async fn only_loopback_names_and_allowed_hosts_are_answered() {
    let app = test_app(&["box.lan"]).await;
    for host in ["127.0.0.1:8080", "localhost:8080", "[::1]:8080", "box.lan:8080"] {
        let (status, body) = call(&app, with(get("/api/v1/settings"), header::HOST, host)).await;
        assert_eq!(status, StatusCode::OK, "{host}: {body}");
    }
    for host in ["attacker.example:8080", "127.0.0.1.nip.example:8080"] {
        for path in ["/api/v1/settings", "/documents", "/ws"] {
            let (status, body) = call(&app, with(get(path), header::HOST, host)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{host}{path}");
            assert_eq!(body["error"]["code"], "host_not_allowed");
        }
    }
}

#[tokio::test]
async fn writes_from_another_origin_are_refused_and_same_origin_ones_pass() {
    let app = test_app(&[]).await;
    // Body-less and multipart POSTs need no CORS preflight: the server itself must refuse them.
    let writes = || {
        [
            Request::post("/api/v1/runs/1/cancel").body(Body::empty()).unwrap(),
            Request::post("/api/v1/synth/runs/1/resume").body(Body::empty()).unwrap(),
            Request::post("/api/v1/triples/import")
                .header(header::CONTENT_TYPE, "multipart/form-data; boundary=x")
                .body(Body::from("--x--\r\n"))
                .unwrap(),
            Request::put("/api/v1/settings").header(header::CONTENT_TYPE, "text/plain").body(Body::from("{}")).unwrap(),
            Request::delete("/api/v1/documents/1").body(Body::empty()).unwrap(),
        ]
    };
    for request in writes() {
        let path = request.uri().path().to_owned();
        let request = with(with(request, header::HOST, "127.0.0.1:8080"), header::ORIGIN, "http://evil.example");
        let (status, body) = call(&app, request).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert_eq!(body["error"]["code"], "cross_origin");
    }
    for request in writes() {
        let path = request.uri().path().to_owned();
        let request = with(with(request, header::HOST, "127.0.0.1:8080"), header::ORIGIN, "http://127.0.0.1:8080");
        let (status, _) = call(&app, request).await;
        assert_ne!(status, StatusCode::FORBIDDEN, "{path}");
    }
    // Reads carry no state change; a page cannot read the answer without CORS anyway.
    let read =
        with(with(get("/api/v1/settings"), header::HOST, "127.0.0.1:8080"), header::ORIGIN, "http://evil.example");
    assert_eq!(call(&app, read).await.0, StatusCode::OK);
}

#[test]
fn the_token_is_not_in_debug_output() {
    let config =
        ServeConfig { token: Some("s3cret-token-x".into()), ..ServeConfig::new("d".into(), "m".into(), "x".into()) };
    let printed = format!("{config:?}");
    assert!(!printed.contains("s3cret-token-x"), "{printed}");
    assert!(printed.contains("redacted"), "{printed}");
}
