//! `/ws` over a real socket on port 0: hello with the protocol version, ping/pong, bad
//! messages answered with an error, token in the query, and a clean close on shutdown.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use attune::serve::{ServeConfig, ServeError, serve};
use attune_shared::{ClientMessage, PROTOCOL_VERSION, ServerMessage};

struct Running {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
    _dirs: tempfile::TempDir,
}

async fn start(token: Option<&str>) -> Running {
    let dirs = tempfile::tempdir().unwrap();
    let config = ServeConfig {
        token: token.map(str::to_owned),
        ..ServeConfig::new(dirs.path().join("data"), dirs.path().join("models"), dirs.path().join("dist"))
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, config, async move {
        let _ = stopped.await;
    }));
    Running { addr, stop: Some(stop), task, _dirs: dirs }
}

async fn next_message<S>(socket: &mut S) -> ServerMessage
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let frame = tokio::time::timeout(Duration::from_secs(5), socket.next()).await.expect("a message within 5 s");
    match frame.expect("socket open").expect("no socket error") {
        Message::Text(text) => serde_json::from_str(&text).expect("a ServerMessage"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

#[tokio::test]
async fn hello_then_ping_pong_then_clean_shutdown() {
    let mut server = start(None).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr)).await.unwrap();

    match next_message(&mut socket).await {
        ServerMessage::Hello { protocol_version, server_version } => {
            assert_eq!(protocol_version, PROTOCOL_VERSION);
            assert_eq!(server_version, env!("CARGO_PKG_VERSION"));
        }
        other => panic!("first message must be hello, got {other:?}"),
    }

    let ping = serde_json::to_string(&ClientMessage::Ping { nonce: 42 }).unwrap();
    socket.send(Message::text(ping)).await.unwrap();
    assert_eq!(next_message(&mut socket).await, ServerMessage::Pong { nonce: 42 });

    socket.send(Message::text(r#"{"type":"launch_rockets"}"#)).await.unwrap();
    match next_message(&mut socket).await {
        ServerMessage::Error { code, .. } => assert_eq!(code, "bad_message"),
        other => panic!("expected an error, got {other:?}"),
    }

    // Shutting down closes the open socket (code 1001) and the server task ends.
    server.stop.take().unwrap().send(()).unwrap();
    let closing = tokio::time::timeout(Duration::from_secs(5), socket.next()).await.unwrap();
    match closing {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a close frame, got {other:?}"),
    }
    tokio::time::timeout(Duration::from_secs(5), server.task).await.expect("server stops").unwrap().unwrap();
}

#[tokio::test]
async fn websocket_with_token_needs_it() {
    let server = start(Some("ws-token-123")).await;
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }

    let (mut by_query, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?token=ws-token-123", server.addr)).await.unwrap();
    assert!(matches!(next_message(&mut by_query).await, ServerMessage::Hello { .. }));

    let mut request = format!("ws://{}/ws", server.addr).into_client_request().unwrap();
    request.headers_mut().insert("Authorization", "Bearer ws-token-123".parse().unwrap());
    let (mut by_header, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert!(matches!(next_message(&mut by_header).await, ServerMessage::Hello { .. }));
}

#[tokio::test]
async fn serve_refuses_open_address_without_token() {
    let dirs = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let config = ServeConfig {
        token: None,
        ..ServeConfig::new(dirs.path().join("data"), dirs.path().join("models"), dirs.path().join("dist"))
    };
    let result = serve(listener, config, std::future::pending()).await;
    assert!(matches!(result, Err(ServeError::TokenRequired { .. })), "{result:?}");
    assert!(!dirs.path().join("data").exists(), "nothing is created when refusing to start");
}

/// Before the origin check, any page could open the socket and read job events and passages.
#[tokio::test]
async fn a_page_from_another_origin_cannot_open_the_socket() {
    let server = start(None).await;
    for origin in ["http://evil.example", "null", "http://localhost:3000"] {
        let mut request = format!("ws://{}/ws", server.addr).into_client_request().unwrap();
        request.headers_mut().insert("Origin", origin.parse().unwrap());
        match tokio_tungstenite::connect_async(request).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 403, "{origin}")
            }
            other => panic!("{origin}: expected 403, got {other:?}"),
        }
    }
    let mut same = format!("ws://{}/ws", server.addr).into_client_request().unwrap();
    same.headers_mut().insert("Origin", format!("http://{}", server.addr).parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(same).await.unwrap();
    assert!(matches!(next_message(&mut socket).await, ServerMessage::Hello { .. }));
}

/// A rebinding page reaches 127.0.0.1 under its own name: the Host header gives it away.
#[tokio::test]
async fn a_foreign_host_name_gets_403_over_the_socket() {
    let server = start(None).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/v1/settings", server.addr);
    let refused =
        client.get(&url).header("Host", format!("rebind.example:{}", server.addr.port())).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "host_not_allowed");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
}

/// Wrong tokens from one address are answered 429 after ten, so a token cannot be guessed.
#[tokio::test]
async fn wrong_tokens_are_rate_limited_per_peer() {
    let server = start(Some("right-token-1")).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/v1/settings", server.addr);
    // A page opened without its token asks a dozen times with none: refused, not counted as
    // guesses (the page then opened with the token must work).
    for _ in 0..3 * attune::serve::auth::MAX_FAILED_ATTEMPTS {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    }
    assert_eq!(client.get(&url).bearer_auth("right-token-1").send().await.unwrap().status(), 200);
    for attempt in 0..attune::serve::auth::MAX_FAILED_ATTEMPTS {
        let response = client.get(&url).bearer_auth(format!("guess-{attempt:04}")).send().await.unwrap();
        assert_eq!(response.status(), 401);
    }
    let limited = client.get(&url).bearer_auth("guess-last").send().await.unwrap();
    assert_eq!(limited.status(), 429);
    let body: serde_json::Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_attempts");
    // Even the right token waits out the window: the limit is on the peer, not the guess.
    assert_eq!(client.get(&url).bearer_auth("right-token-1").send().await.unwrap().status(), 429);
}
